//! A miner's state saved beside its window, so that neither training nor the window's
//! protocol waits for the disk, and nothing is copied.
//!
//! Right after the outer step, the optimizer's moments are lent tensor by tensor (see
//! [`templar_engine::AdamW::lend_moments`]) and the error feedback is lent to a thread that
//! writes them while the payload is uploaded, the peers' payloads are gathered and — once the
//! aggregate is applied — the next window trains: a step waits only for moments not yet read,
//! and the error feedback is wanted back only at the next outer step. After the apply a second
//! thread takes the first stage's staged generation, writes the new base model (which nothing
//! changes until the next aggregate: [`crate::replica::Replica`] refuses to change a base a save
//! still reads) and commits it. Until the commit the previous generation stays current, so a
//! crash at any moment loses at most the save in flight; a save that fails or panics loses no
//! state of the running miner.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use templar_engine::{DEFAULT_SHARD_BYTES, save_lent_moments};

use crate::error::NodeError;
use crate::ranks::save_node_state;
use crate::replica::{Replica, save_base};
use crate::state::{Background, Staging, StateDir, write_f32s};

pub const ERROR_FEEDBACK_FILE: &str = "error_feedback.bin";

/// A miner's save in flight, in two stages that end at different points of the window.
#[derive(Default)]
pub struct Saving {
    training_state: Option<TrainingStateSave>,
    weights: Option<Background<()>>,
}

/// The first stage: the moments and the error feedback being written.
struct TrainingStateSave {
    work: Background<()>,
    /// Lent, not moved: whatever becomes of the thread (a panic, a failed start) the buffers
    /// come back.
    error_feedback: Arc<Mutex<Vec<Vec<f32>>>>,
    /// The staged generation and the error feedback's digest, until the second stage takes it.
    staged: Option<Receiver<Staged>>,
}

type Staged = Result<(Staging, String), NodeError>;

impl Saving {
    /// First stage of generation `generation`: lends the replica's optimizer moments and the
    /// error feedback to a thread that writes them. Waits for any earlier save first.
    pub fn begin(
        &mut self,
        state: &StateDir,
        generation: u64,
        replica: &mut Replica,
        error_feedback: &mut Vec<Vec<f32>>,
    ) -> Result<(), NodeError> {
        self.finish(error_feedback)?;
        let staging = state.begin(generation)?;
        if replica.is_ranked() {
            return self.begin_ranked(staging, replica, error_feedback);
        }
        let moments = replica.lend_moments();
        let names = replica.parameter_names();
        let lent = Arc::new(Mutex::new(std::mem::take(error_feedback)));
        let (send, staged) = sync_channel(1);
        let buffers = Arc::clone(&lent);
        let work = move || {
            let buffers = buffers.lock().unwrap_or_else(PoisonError::into_inner);
            let written = catch_unwind(AssertUnwindSafe(|| {
                staging.fill(|dir| {
                    if let Some(moments) = moments {
                        save_lent_moments(dir, moments, &names)?;
                    }
                    write_f32s(&dir.join(ERROR_FEEDBACK_FILE), &buffers)
                })
            }))
            .unwrap_or_else(|_| Err(stopped("writing the training state panicked")));
            // No second stage to take it: the generation is abandoned.
            let _ = send.send(written.map(|digest| (staging, digest)));
            Ok(())
        };
        self.hold_first_stage(
            "saving the training state",
            work,
            lent,
            staged,
            error_feedback,
        )
    }

    /// The first stage over a node's ranks: every rank writes its own moments and error
    /// feedback into the staged generation, now (the ranks' next step waits for the slowest
    /// writer anyway); the second stage then goes on as for one process.
    fn begin_ranked(
        &mut self,
        staging: Staging,
        replica: &mut Replica,
        error_feedback: &mut Vec<Vec<f32>>,
    ) -> Result<(), NodeError> {
        let digest = staging.fill(|dir| save_node_state(replica, error_feedback, dir))?;
        let (send, staged) = sync_channel(1);
        let _ = send.send(Ok((staging, digest)));
        let lent = Arc::new(Mutex::new(std::mem::take(error_feedback)));
        let done = || Ok(());
        self.hold_first_stage(
            "the ranks' training state",
            done,
            lent,
            staged,
            error_feedback,
        )
    }

    /// Keeps the first stage's `work` (started on a thread of its own), the lent error
    /// feedback and the staged generation; if the thread cannot start, the error feedback comes
    /// back at once.
    fn hold_first_stage(
        &mut self,
        what: &str,
        work: impl FnOnce() -> Result<(), NodeError> + Send + 'static,
        lent: Arc<Mutex<Vec<Vec<f32>>>>,
        staged: Receiver<Staged>,
        error_feedback: &mut Vec<Vec<f32>>,
    ) -> Result<(), NodeError> {
        match Background::spawn(what, work) {
            Ok(work) => {
                self.training_state = Some(TrainingStateSave {
                    work,
                    error_feedback: lent,
                    staged: Some(staged),
                });
                Ok(())
            }
            Err(error) => {
                *error_feedback = take_back(&lent);
                Err(error)
            }
        }
    }

    /// Second stage, without waiting for the first: a thread takes the generation it staged,
    /// writes the replica's base and `record(error feedback digest)`, and commits. Nothing to do
    /// when no first stage runs.
    pub fn commit_with_weights<T: Serialize + Send + 'static>(
        &mut self,
        replica: &Replica,
        record: impl FnOnce(String) -> T + Send + 'static,
    ) -> Result<(), NodeError> {
        let Some(staged) = self
            .training_state
            .as_mut()
            .and_then(|first| first.staged.take())
        else {
            return Ok(());
        };
        self.finish_weights()?;
        let base = replica.shared_base();
        let config = replica.model.config.clone();
        let work = move || {
            let (staging, digest) = staged
                .recv()
                .map_err(|_| stopped("the training state's save stopped"))??;
            staging.fill(|dir| save_base(dir, &config, &base, DEFAULT_SHARD_BYTES))?;
            staging.commit(&record(digest))
        };
        self.weights = Some(Background::spawn("saving the weights", work)?);
        Ok(())
    }

    /// Waits for the first stage and takes the error feedback back: before the outer step.
    /// A first stage without its second is abandoned: its generation never becomes current.
    pub fn finish_training_state(
        &mut self,
        error_feedback: &mut Vec<Vec<f32>>,
    ) -> Result<(), NodeError> {
        let Some(first) = self.training_state.take() else {
            return Ok(());
        };
        let joined = first.work.wait();
        *error_feedback = take_back(&first.error_feedback);
        joined?;
        match first.staged.map(|staged| staged.recv()) {
            Some(Ok(Err(error))) => Err(error),
            _ => Ok(()),
        }
    }

    /// Waits for the second stage, which reads the base: before the base changes.
    pub fn finish_weights(&mut self) -> Result<(), NodeError> {
        self.weights.take().map_or(Ok(()), Background::wait)
    }

    /// Waits for both stages, reporting the first failure once both are done.
    pub fn finish(&mut self, error_feedback: &mut Vec<Vec<f32>>) -> Result<(), NodeError> {
        let first = self.finish_training_state(error_feedback);
        let second = self.finish_weights();
        first.and(second)
    }
}

fn take_back(lent: &Mutex<Vec<Vec<f32>>>) -> Vec<Vec<f32>> {
    std::mem::take(&mut *lent.lock().unwrap_or_else(PoisonError::into_inner))
}

fn stopped(reason: &str) -> NodeError {
    NodeError::State {
        path: PathBuf::new(),
        reason: reason.into(),
    }
}

/// Writes `replica`'s base into `staging` and commits it with `record`, on a thread that reads
/// the base without a copy: the replica refuses to change its base until the thread is done.
pub fn commit_weights<T: Serialize + Send + 'static>(
    staging: Staging,
    replica: &Replica,
    record: T,
) -> Result<Background<()>, NodeError> {
    let base = replica.shared_base();
    let config = replica.model.config.clone();
    let work = move || {
        staging.fill(|dir| save_base(dir, &config, &base, DEFAULT_SHARD_BYTES))?;
        staging.commit(&record)
    };
    Background::spawn("saving the weights", work)
}
