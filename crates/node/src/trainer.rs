//! A miner's inner steps on a thread of their own, so that the window's protocol — uploading,
//! waiting out the slot, gathering and applying the window before — goes on while the device
//! trains (docs/node.md, "Overlapped windows").
//!
//! The replica is moved to the thread and comes back when the thread stops: at the deadline,
//! when the steps run out, or when the miner pauses it to apply an aggregate under the live
//! weights. Nothing else touches the model meanwhile, so nothing is locked.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use templar_data::Split;

use crate::data::Data;
use crate::error::NodeError;
use crate::miner_replica::MinerReplica;
use crate::node::now_ms;

/// What the miner holds while no training thread does. The thread takes the value and always
/// hands it back before the miner goes on ([`Training::pause`], [`Training::finish`]): a
/// thread that ends without it ends the miner, so no code runs with the value missing.
pub(crate) struct Held<T>(Option<T>);

impl<T> Held<T> {
    pub fn new(value: T) -> Held<T> {
        Held(Some(value))
    }

    pub fn lend(&mut self) -> T {
        self.0.take().expect(LENT)
    }

    pub fn put_back(&mut self, value: T) {
        self.0 = Some(value);
    }
}

const LENT: &str = "the miner used its replica while a training thread held it";

impl<T> std::ops::Deref for Held<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.0.as_ref().expect(LENT)
    }
}

impl<T> std::ops::DerefMut for Held<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.0.as_mut().expect(LENT)
    }
}

/// The steps still to take in a window: one batch of sample ids each.
pub(crate) struct Steps {
    pub batches: Vec<Vec<u64>>,
    /// Chain time (ms) by which the last step must have ended.
    pub until_ms: u64,
    /// The running estimate of one step, in seconds (0 before the first).
    pub step_seconds: f64,
}

/// What a stretch of steps did.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Progress {
    pub steps: u32,
    pub loss_sum: f64,
    /// Time spent in steps, batch reading included: what the trainer was busy.
    pub busy: Duration,
    pub step_seconds: f64,
}

impl Progress {
    /// This stretch followed by `later`.
    pub fn then(self, later: Progress) -> Progress {
        Progress {
            steps: self.steps + later.steps,
            loss_sum: self.loss_sum + later.loss_sum,
            busy: self.busy + later.busy,
            step_seconds: later.step_seconds,
        }
    }
}

/// Inner steps running on their own thread.
pub(crate) struct Training {
    task: tokio::task::JoinHandle<(MinerReplica, Result<Progress, NodeError>)>,
    pause: Arc<AtomicBool>,
}

impl Training {
    /// Takes `steps` on `replica` from `data`, each only while it should end before the deadline.
    pub fn start(replica: MinerReplica, data: Arc<Data>, steps: Steps) -> Training {
        let pause = Arc::new(AtomicBool::new(false));
        let asked = Arc::clone(&pause);
        let task = tokio::task::spawn_blocking(move || {
            let mut replica = replica;
            let done = run(&mut replica, &data, steps, &asked);
            (replica, done)
        });
        Training { task, pause }
    }

    /// Stops after the step in progress; the replica and what was done.
    pub async fn pause(self) -> Result<(MinerReplica, Result<Progress, NodeError>), NodeError> {
        self.pause.store(true, Ordering::Relaxed);
        self.finish().await
    }

    /// Waits for the steps to run out or the deadline.
    pub async fn finish(self) -> Result<(MinerReplica, Result<Progress, NodeError>), NodeError> {
        self.task.await.map_err(|error| {
            NodeError::Config(format!(
                "the training thread ended without handing the model back ({error}): the miner \
                 stops; restarting it resumes from its last saved state"
            ))
        })
    }
}

/// The steps, in order, until they run out, the next would end past the deadline, or a pause.
fn run(
    replica: &mut MinerReplica,
    data: &Data,
    steps: Steps,
    pause: &AtomicBool,
) -> Result<Progress, NodeError> {
    let mut progress = Progress {
        step_seconds: steps.step_seconds,
        ..Progress::default()
    };
    for ids in &steps.batches {
        if pause.load(Ordering::Relaxed)
            || now_ms() + step_margin_ms(progress.step_seconds) > steps.until_ms
        {
            break;
        }
        let started = Instant::now();
        let (batch, _) = data.batch(Split::Train, ids)?;
        let stats = replica.train_step(&batch)?;
        let took = started.elapsed();
        progress.steps += 1;
        progress.loss_sum += stats.loss;
        progress.busy += took;
        progress.step_seconds = next_step_estimate(progress.step_seconds, took);
    }
    Ok(progress)
}

/// How long before a deadline the last step must start: one and a half steps' estimate.
pub(crate) fn step_margin_ms(step_seconds: f64) -> u64 {
    (step_seconds * 1500.0) as u64
}

/// The running estimate of one inner step after one that took `took`. One step counts for at
/// most twice the estimate: a process suspended mid-step (a closed laptop, a preempted VM) must
/// not make the estimate so large that no window ever has time for a step again, and a machine
/// that really slowed down still moves the estimate up by half each step.
pub(crate) fn next_step_estimate(estimate: f64, took: Duration) -> f64 {
    let seconds = took.as_secs_f64();
    if estimate == 0.0 {
        return seconds;
    }
    0.7 * estimate + 0.3 * seconds.min(2.0 * estimate)
}

/// The share of wall time the trainer was busy: `busy` out of the time from `since` (when the
/// trainer last stopped) to `now`; 0 when no time passed.
pub(crate) fn compute_share(busy: Duration, since: Instant, now: Instant) -> f64 {
    let wall = now.saturating_duration_since(since).as_secs_f64();
    if wall > 0.0 {
        (busy.as_secs_f64() / wall).min(1.0)
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stalled_step_does_not_starve_the_windows_after_it() {
        // The first step sets the estimate; then 0.7·1 + 0.3·1.5 = 1.15.
        let first = next_step_estimate(0.0, Duration::from_secs(1));
        assert_eq!(first, 1.0);
        assert!((next_step_estimate(first, Duration::from_millis(1500)) - 1.15).abs() < 1e-12);
        // A step that took 30 s while the process was suspended counts as 2 s: 0.7 + 0.6 = 1.3.
        assert!((next_step_estimate(first, Duration::from_secs(30)) - 1.3).abs() < 1e-12);
        // A machine that really slowed to 10 s a step gets there within a dozen steps.
        let mut estimate = first;
        for _ in 0..12 {
            estimate = next_step_estimate(estimate, Duration::from_secs(10));
        }
        assert!(estimate > 9.0, "{estimate}");
    }

    #[test]
    fn the_compute_share_is_busy_time_over_wall_time() {
        let since = Instant::now();
        let now = since + Duration::from_secs(20);
        // 18 s of steps in a 20-s cycle.
        assert!((compute_share(Duration::from_secs(18), since, now) - 0.9).abs() < 1e-12);
        // Busy time measured on another clock never makes it more than 1.
        assert_eq!(compute_share(Duration::from_secs(21), since, now), 1.0);
        assert_eq!(compute_share(Duration::from_secs(1), now, now), 0.0);
    }

    #[test]
    fn stretches_add_up() {
        let first = Progress {
            steps: 3,
            loss_sum: 9.0,
            busy: Duration::from_secs(3),
            step_seconds: 1.0,
        };
        let later = Progress {
            steps: 2,
            loss_sum: 4.0,
            busy: Duration::from_secs(2),
            step_seconds: 1.2,
        };
        let both = first.then(later);
        assert_eq!(both.steps, 5);
        assert_eq!(both.loss_sum, 13.0);
        assert_eq!(both.busy, Duration::from_secs(5));
        assert_eq!(both.step_seconds, 1.2);
    }
}
