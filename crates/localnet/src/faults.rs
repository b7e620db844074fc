//! `--scenario faults`: one network (in DIR/faults, on a commit-reveal chain) taken through
//! failures of real machines on a script — one miner's read of a peer failing for a window, a
//! miner killed with SIGKILL mid-window and started again, the validator stopped with SIGTERM
//! while a weight commit awaits its reveal and started again, a payload truncated in storage, a
//! miner suspended for three windows, a peer deleting everything it published, a miner joining in
//! window 20 — each outcome measured from what the nodes reported and what the chain recorded,
//! into DIR/faults.json and DIR/faults.md (see docs/robustness.md).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use templar_chain::LocalChain;
use templar_chain::commit_reveal::{PendingFile, PendingReveal};
use templar_chain::local::Call;
use templar_node::events::Event;
use templar_node::state::StateDir;
use templar_node::{Fingerprint, NetworkConfig, Role};
use templar_protocol::{Kind, WindowClock};

use super::fleet::Fleet;
use super::history::{EventLine, History};
use super::scenario::finished;
use super::setup::{Layout, Member, members};
use super::tail::EventFile;
use super::{LocalnetArgs, run_network};

/// Long enough for a newcomer in window [`LATE_WINDOW`] to train two windows.
pub const DEFAULT_WINDOWS: u64 = 23;
const LATE_WINDOW: u64 = 20;
/// Every payload [`DELETES`] published up to this window is deleted once all have applied it.
const DELETED_UP_TO: u64 = 18;
const VALIDATOR: &str = "validator-v1";
const KILLED: &str = "miner-m1";
const TRUNCATED: &str = "miner-m2";
const LATE: &str = "miner-m3";
/// Its live gather of window [`FAILED_READ_WINDOW`] cannot read [`KILLED`]'s payload.
const FAILS_A_READ: &str = TRUNCATED;
const FAILED_READ_WINDOW: u64 = 1;
/// Suspended (SIGSTOP) for three windows, late in the run.
const SUSPENDED: &str = KILLED;
/// Deletes every payload it published, after the network aggregated them.
const DELETES: &str = TRUNCATED;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    KillMiner,
    RestartMiner,
    StopValidator,
    RestartValidator,
    DeletePayloads,
    StartLateMiner,
    TruncatePayload,
    FailRead,
    SuspendMiner,
    ResumeMiner,
}

/// One step of the script: `action` once the chain reaches `window` (counted from the run's
/// first) and `quarter` quarters of a window into it, so that "mid-window" holds for any window
/// length; a truncation waits for the miner's upload instead.
struct Step {
    action: Action,
    window: u64,
    quarter: u64,
    done: bool,
}

/// What the script did, and when.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Happened {
    action: Action,
    window: u64,
    block: u64,
    at_ms: u64,
    detail: String,
}

/// The fault script the localnet orchestrator runs tick by tick.
pub struct Script {
    steps: Vec<Step>,
    layout: Option<Layout>,
    config: Option<NetworkConfig>,
    clock: Option<WindowClock>,
    first_window: u64,
    commands: BTreeMap<String, Vec<OsString>>,
    happened: Vec<Happened>,
    /// The validator's saved state as it was on disk once it had stopped.
    stopped_state: Option<(String, serde_json::Value)>,
    /// Its weight commits awaiting their reveal when it stopped, and how it exited.
    stopped_pending: Vec<PendingReveal>,
    stopped_exit: Option<Option<i32>>,
    /// How many payloads the deletion removed.
    deleted: usize,
}

impl Script {
    fn new() -> Script {
        let step = |action, window, quarter| Step {
            action,
            window,
            quarter,
            done: false,
        };
        Script {
            steps: vec![
                step(Action::KillMiner, 2, 2),
                step(Action::RestartMiner, 3, 1),
                // Once a commit awaits its reveal; started again once it has exited.
                step(Action::StopValidator, 5, 2),
                step(Action::RestartValidator, 6, 1),
                step(Action::TruncatePayload, 8, 0),
                // Three windows of a process that holds its memory and does nothing, then goes
                // on: it must apply the windows it missed before it trains again.
                step(Action::SuspendMiner, 9, 1),
                step(Action::ResumeMiner, 12, 1),
                // Once every node applied window DELETED_UP_TO.
                step(Action::DeletePayloads, DELETED_UP_TO + 1, 2),
                step(Action::StartLateMiner, LATE_WINDOW, 1),
            ],
            layout: None,
            config: None,
            clock: None,
            first_window: 0,
            commands: BTreeMap::new(),
            happened: Vec::new(),
            stopped_state: None,
            stopped_pending: Vec::new(),
            stopped_exit: None,
            deleted: 0,
        }
    }

    /// Members started by the script rather than with the others.
    pub fn deferred(&self, name: &str) -> bool {
        name == LATE
    }

    /// Options the script gives member `name` when it starts (`uid_of`: a localnet hotkey's
    /// uid): the read [`FAILS_A_READ`] fails, recorded as a step of the script.
    pub fn node_args(
        &mut self,
        name: &str,
        first_window: u64,
        uid_of: &dyn Fn(&str) -> Result<u16>,
    ) -> Result<Vec<OsString>> {
        if name != FAILS_A_READ {
            return Ok(Vec::new());
        }
        let window = first_window + FAILED_READ_WINDOW;
        let peer = KILLED.trim_start_matches("miner-");
        let uid = uid_of(peer)?;
        self.happened.push(Happened {
            action: Action::FailRead,
            window,
            block: 0,
            at_ms: templar_node::node::now_ms(),
            detail: format!(
                "{name}'s live gather of window {window} fails to read uid {uid} ({KILLED})"
            ),
        });
        Ok(vec!["--fail-read".into(), format!("{window}:{uid}").into()])
    }

    pub fn prepare(
        &mut self,
        layout: &Layout,
        config: &NetworkConfig,
        first_window: u64,
        commands: BTreeMap<String, Vec<OsString>>,
    ) -> Result<()> {
        let clock = WindowClock::new(config.window.blocks_per_window)
            .context("network.toml: window.blocks_per_window must be positive")?;
        self.layout = Some(layout.clone());
        self.config = Some(config.clone());
        self.clock = Some(clock);
        self.first_window = first_window;
        self.commands = commands;
        Ok(())
    }

    pub fn finished(&self) -> bool {
        self.steps.iter().all(|s| s.done)
    }

    /// The steps that never came due (the report then lacks their outcomes).
    pub fn not_done(&self) -> Vec<Action> {
        self.steps
            .iter()
            .filter(|s| !s.done)
            .map(|s| s.action)
            .collect()
    }

    /// Runs every step that is due.
    pub fn tick(&mut self, fleet: &mut Fleet, history: &History, head: u64) -> Result<()> {
        let Some(clock) = self.clock else {
            return Ok(());
        };
        for i in 0..self.steps.len() {
            let step = &self.steps[i];
            if step.done {
                continue;
            }
            let window = self.first_window + step.window;
            let reached =
                head >= clock.first_block(window) + step.quarter * clock.blocks_per_window() / 4;
            let due = match step.action {
                Action::TruncatePayload => uploaded(history, TRUNCATED, window),
                Action::StopValidator => reached && !self.pending_reveals()?.is_empty(),
                Action::RestartValidator => reached && fleet.exit_code(VALIDATOR).is_some(),
                Action::DeletePayloads => {
                    let layout = self
                        .layout
                        .as_ref()
                        .context("the script was not prepared")?;
                    reached && applied_by_all(layout, self.first_window + DELETED_UP_TO)?
                }
                _ => reached,
            };
            if !due {
                continue;
            }
            let action = step.action;
            let detail = self.perform(action, fleet, window)?;
            eprintln!("fault script, window {window}: {action:?}: {detail}");
            self.happened.push(Happened {
                action,
                window,
                block: head,
                at_ms: templar_node::node::now_ms(),
                detail,
            });
            self.steps[i].done = true;
        }
        Ok(())
    }

    fn perform(&mut self, action: Action, fleet: &mut Fleet, window: u64) -> Result<String> {
        let layout = self.layout.clone().context("the script was not prepared")?;
        match action {
            Action::KillMiner => fleet.sigkill(KILLED).map(|()| format!("SIGKILL {KILLED}")),
            Action::RestartMiner => fleet
                .respawn(KILLED)
                .map(|()| format!("restarted {KILLED}")),
            Action::StopValidator => fleet
                .terminate(VALIDATOR)
                .map(|()| format!("SIGTERM {VALIDATOR}")),
            Action::RestartValidator => {
                let state = StateDir::new(layout.state("v1"));
                let saved = state.load_digested::<serde_json::Value>()?;
                let (value, _, digest) = saved.context("the validator had saved no state")?;
                self.stopped_state = Some((digest.clone(), value));
                self.stopped_pending = self.pending_reveals()?;
                self.stopped_exit = fleet.exit_code(VALIDATOR);
                fleet.respawn(VALIDATOR)?;
                Ok(format!(
                    "{VALIDATOR} had exited with {:?}, its saved state {digest}, {} weight \
                     commit(s) awaiting their reveal (committed at blocks {:?}); restarted",
                    self.stopped_exit.flatten(),
                    self.stopped_pending.len(),
                    self.stopped_pending
                        .iter()
                        .map(|p| p.reveal.committed_at)
                        .collect::<Vec<_>>()
                ))
            }
            Action::DeletePayloads => self.delete_payloads(&layout),
            Action::StartLateMiner => {
                let command = self
                    .commands
                    .get(LATE)
                    .context("no command for the late miner")?;
                fleet.spawn(LATE, command, &layout.log(LATE))?;
                Ok(format!("started {LATE}, registered since the beginning"))
            }
            Action::TruncatePayload => self.truncate(&layout, window),
            Action::SuspendMiner => fleet
                .suspend(SUSPENDED)
                .map(|()| format!("SIGSTOP {SUSPENDED}")),
            Action::ResumeMiner => fleet
                .resume(SUSPENDED)
                .map(|()| format!("SIGCONT {SUSPENDED}")),
            Action::FailRead => Ok("set when the miner started".into()),
        }
    }

    /// The validator's weight commits awaiting their reveal, as its state folder holds them.
    fn pending_reveals(&self) -> Result<Vec<PendingReveal>> {
        let layout = self
            .layout
            .as_ref()
            .context("the script was not prepared")?;
        let netuid = LocalChain::open(&layout.chain())?.genesis().netuid;
        let path = layout
            .state("v1")
            .join(format!("pending-reveals-{netuid}.json"));
        PendingFile { path, netuid }
            .read()
            .map_err(|reason| anyhow::anyhow!("the validator's pending reveals: {reason}"))
    }

    /// Deletes every payload [`DELETES`] published up to window [`DELETED_UP_TO`], as a peer
    /// leaving the network and emptying its bucket does.
    fn delete_payloads(&mut self, layout: &Layout) -> Result<String> {
        let config = self
            .config
            .as_ref()
            .context("the script was not prepared")?;
        let network = config.network()?;
        let uid = uid_of_files(layout, DELETES)?;
        let last = self.first_window + DELETED_UP_TO;
        let mut deleted = 0;
        for window in 0..=last {
            let key = templar_protocol::layout::object_key(&network, Kind::Gradient, window, uid);
            let path = layout
                .storage(DELETES.trim_start_matches("miner-"))
                .join(key);
            match std::fs::remove_file(&path) {
                Ok(()) => deleted += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("deleting {}", path.display())),
            }
        }
        self.deleted = deleted;
        Ok(format!(
            "{DELETES} deleted its {deleted} payload(s) of windows up to {last}"
        ))
    }

    /// Cuts the miner's signed payload of `window` in storage to half its length.
    fn truncate(&self, layout: &Layout, window: u64) -> Result<String> {
        let config = self
            .config
            .as_ref()
            .context("the script was not prepared")?;
        let network = config.network()?;
        let uid = uid_of_files(layout, TRUNCATED)?;
        let key = templar_protocol::layout::object_key(&network, Kind::Gradient, window, uid);
        let path = layout.storage("m2").join(key);
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        std::fs::write(&path, &bytes[..bytes.len() / 2])
            .with_context(|| format!("truncating {}", path.display()))?;
        Ok(format!(
            "truncated {} from {} to {} bytes",
            path.display(),
            bytes.len(),
            bytes.len() / 2
        ))
    }
}

/// Whether `node` reported an upload for `window`.
fn uploaded(history: &History, node: &str, window: u64) -> bool {
    let Some(uid) = history.nodes.get(node).and_then(|n| n.uid) else {
        return false;
    };
    history
        .windows
        .get(&window)
        .and_then(|w| w.miners.get(&uid))
        .is_some_and(|m| m.payload_bytes.is_some())
}

/// Whether the validator and the miners that started with it reported applying `window`.
fn applied_by_all(layout: &Layout, window: u64) -> Result<bool> {
    for node in [VALIDATOR, KILLED, TRUNCATED] {
        let events = lines(layout, node)?;
        if !applied(&events).keys().any(|w| *w >= window) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The uid a node reported when it started.
fn uid_of_files(layout: &Layout, node: &str) -> Result<u16> {
    lines(layout, node)?
        .iter()
        .find_map(|l| match l.event {
            Event::Started { uid, .. } => Some(uid),
            _ => None,
        })
        .with_context(|| format!("{node} never started"))
}

fn lines(layout: &Layout, node: &str) -> Result<Vec<EventLine>> {
    Ok(EventFile::new(layout.events(node)).read_new()?)
}

/// What the scenario measured.
#[derive(Debug, Serialize, Deserialize)]
pub struct FaultsReport {
    pub command: String,
    pub happened: Vec<Happened>,
    pub outcomes: Vec<Outcome>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Outcome {
    pub fault: String,
    pub expected: String,
    pub measured: String,
    pub met: bool,
    /// Windows from the fault's end until the node held the validator's model again (1: the
    /// first window it applied after it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub windows_to_sync: Option<u64>,
    /// Models rebuilt from a checkpoint since the fault (a newcomer's first load not counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_rebuilds: Option<u64>,
    /// The inner learning rate the node trained at first after the fault, and what another
    /// miner trained at in that window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learning_rate: Option<LearningRate>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LearningRate {
    pub window: u64,
    pub node: f64,
    pub network: Option<f64>,
}

impl LearningRate {
    fn matches(&self) -> bool {
        self.network == Some(self.node)
    }

    fn describe(&self) -> String {
        format!(
            "trained at learning rate {:.3e} in window {} (another miner: {})",
            self.node,
            self.window,
            self.network
                .map_or("none trained".into(), |lr| format!("{lr:.3e}"))
        )
    }
}

pub fn run(args: &LocalnetArgs) -> Result<()> {
    let windows = args.windows.unwrap_or(DEFAULT_WINDOWS);
    let dir = args.dir.join("faults");
    let mut script = Script::new();
    if finished(&dir)? && dir.join("faults-script.json").exists() {
        eprintln!("the fault network in {} has run: reusing it", dir.display());
    } else {
        if dir.exists() {
            eprintln!("removing the unfinished fault network in {}", dir.display());
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        let mut members = members(1, 2);
        members.push(Member {
            role: Role::Miner,
            hotkey: "m3".into(),
            behavior: None,
        });
        let run_args = LocalnetArgs {
            windows: Some(windows),
            ..args.clone()
        };
        run_network(&run_args, &dir, members, &[], Some(&mut script))?;
        let record = serde_json::json!({
            "happened": script.happened,
            "validator_state_at_stop": script.stopped_state,
            "validator_pending_at_stop": script.stopped_pending,
            "validator_exit_at_stop": script.stopped_exit,
            "deleted_payloads": script.deleted,
        });
        templar_engine::write_atomic(
            &dir.join("faults-script.json"),
            &serde_json::to_vec_pretty(&record)?,
        )?;
    }
    let command = format!(
        "templar localnet --scenario faults --windows {windows} --window-secs {}",
        args.window_secs()
    );
    let report = analyse(&dir, command)?;
    templar_engine::write_atomic(
        &args.dir.join("faults.json"),
        &serde_json::to_vec_pretty(&report)?,
    )?;
    templar_engine::write_atomic(&args.dir.join("faults.md"), markdown(&report).as_bytes())?;
    for outcome in &report.outcomes {
        let mark = if outcome.met { "met" } else { "MISSED" };
        println!("{mark:>6}  {}: {}", outcome.fault, outcome.measured);
    }
    if report.outcomes.iter().any(|o| !o.met) {
        bail!(
            "fault outcomes missed (see {})",
            args.dir.join("faults.md").display()
        );
    }
    Ok(())
}

/// The saved script record: what happened, and the validator as it was once it had stopped.
#[derive(Deserialize)]
struct Record {
    happened: Vec<Happened>,
    validator_state_at_stop: Option<(String, serde_json::Value)>,
    #[serde(default)]
    validator_pending_at_stop: Vec<PendingReveal>,
    validator_exit_at_stop: Option<Option<i32>>,
    #[serde(default)]
    deleted_payloads: usize,
}

fn analyse(dir: &Path, command: String) -> Result<FaultsReport> {
    let layout = Layout { dir: dir.into() };
    let text = std::fs::read_to_string(dir.join("faults-script.json"))?;
    let record: Record = serde_json::from_str(&text)?;
    let when = |action: Action| record.happened.iter().find(|h| h.action == action);
    let validator = lines(&layout, VALIDATOR)?;
    let models = applied(&validator);
    let mut outcomes = Vec::new();
    if let (Some(kill), Some(restart)) = (when(Action::KillMiner), when(Action::RestartMiner)) {
        outcomes.push(rejoined(
            &layout,
            KILLED,
            &models,
            restart.window,
            &format!("a miner killed with SIGKILL in window {}", kill.window),
            false,
        )?);
    }
    if let (Some(stop), Some(restart)) =
        (when(Action::StopValidator), when(Action::RestartValidator))
    {
        outcomes.push(validator_resumed(&validator, stop, restart, &record)?);
        outcomes.push(commits_revealed(&layout, &validator, restart, &record)?);
    }
    if let Some(deleted) = when(Action::DeletePayloads) {
        outcomes.push(payloads_deleted(
            &layout,
            &models,
            deleted,
            record.deleted_payloads,
        )?);
    }
    if let Some(start) = when(Action::StartLateMiner) {
        outcomes.push(rejoined(
            &layout,
            LATE,
            &models,
            start.window,
            &format!("a new miner joining in window {}", start.window),
            true,
        )?);
    }
    if let Some(cut) = when(Action::TruncatePayload) {
        outcomes.push(truncated(&layout, &validator, cut)?);
    }
    if let Some(failed) = when(Action::FailRead) {
        outcomes.push(read_failed(&layout, &validator, &models, failed)?);
    }
    if let (Some(stop), Some(resume)) = (when(Action::SuspendMiner), when(Action::ResumeMiner)) {
        outcomes.push(suspended(&layout, &models, stop, resume)?);
    }
    Ok(FaultsReport {
        command,
        happened: record.happened,
        outcomes,
    })
}

/// The validator's model fingerprint after each window.
fn applied(events: &[EventLine]) -> BTreeMap<u64, Fingerprint> {
    events
        .iter()
        .filter_map(|l| match l.event {
            Event::Applied {
                window,
                fingerprint,
                ..
            } => Some((window, fingerprint)),
            _ => None,
        })
        .collect()
}

/// A miner (re)started in `from` must hold the validator's model within two windows.
fn rejoined(
    layout: &Layout,
    node: &str,
    models: &BTreeMap<u64, Fingerprint>,
    from: u64,
    fault: &str,
    needs_checkpoint: bool,
) -> Result<Outcome> {
    let events = lines(layout, node)?;
    let resumed = events.iter().rev().find_map(|l| match &l.event {
        Event::Resumed { window, .. } => Some(*window),
        _ => None,
    });
    let caught_up = events.iter().rev().find_map(|l| match &l.event {
        Event::CaughtUp {
            replayed,
            checkpoint,
            ..
        } => Some((*replayed, *checkpoint)),
        _ => None,
    });
    let in_sync = back_in_sync(&events, models, from);
    let state = |w: Option<u64>| w.map_or("before any window".into(), |w| format!("of window {w}"));
    let how = match (resumed, caught_up) {
        (Some(w), Some((n, _))) => {
            format!(
                "resumed from its state {}, replayed {n} window(s)",
                state(w)
            )
        }
        (Some(w), None) => format!("resumed from its state {}", state(w)),
        (None, Some((n, Some(c)))) => {
            format!("caught up from the checkpoint of window {c}, replayed {n} window(s)")
        }
        (None, Some((n, None))) => format!("caught up from the start, replayed {n} window(s)"),
        (None, None) => "started without catching up".into(),
    };
    let (measured, met) = match in_sync {
        Some(w) => (
            format!(
                "{how}; same model fingerprint as the validator after window {w}, {} window(s) \
                 after it started",
                w - from + 1
            ),
            w < from + 2
                && if needs_checkpoint {
                    caught_up.is_some_and(|(_, c)| c.is_some())
                } else {
                    resumed.is_some()
                },
        ),
        None => (format!("{how}; never matched the validator's model"), false),
    };
    let expected = if needs_checkpoint {
        "catches up from the checkpoint and manifests, and holds the network's model within 2 \
         windows"
    } else {
        "resumes from its state, and holds the network's model within 2 windows"
    };
    let learning_rate = first_learning_rate(layout, node, &events, from)?;
    // A newcomer's loads until it first holds the network's model are how it joins.
    let joined_ms = match (needs_checkpoint, in_sync) {
        (true, Some(w)) => applied_at(&events, w),
        _ => 0,
    };
    let rebuilds = full_rebuilds(&events, joined_ms);
    let lr_met = learning_rate.is_some_and(|lr| lr.matches());
    Ok(Outcome {
        fault: fault.to_string(),
        expected: format!("{expected}, at the network's learning rate, without a full rebuild"),
        measured: format!(
            "{measured}; {}; {rebuilds} full rebuild(s)",
            learning_rate.map_or("never trained".into(), |lr| lr.describe())
        ),
        met: met && lr_met && rebuilds == 0,
        windows_to_sync: in_sync.map(|w| w + 1 - from),
        full_rebuilds: Some(rebuilds),
        learning_rate,
    })
}

/// Models rebuilt from a checkpoint after `after_ms`: an out-of-sync node's rebuild, or a
/// catch-up that loaded a checkpoint over a model of the node's own.
fn full_rebuilds(events: &[EventLine], after_ms: u64) -> u64 {
    events
        .iter()
        .filter(|l| l.at_ms >= after_ms)
        .filter(|l| match &l.event {
            Event::Resynced { full_rebuild, .. } => *full_rebuild,
            Event::CaughtUp {
                from: Some(_),
                checkpoint: Some(_),
                ..
            } => true,
            _ => false,
        })
        .count() as u64
}

/// When `events`' node reported applying `window`.
fn applied_at(events: &[EventLine], window: u64) -> u64 {
    events
        .iter()
        .find(|l| matches!(l.event, Event::Applied { window: w, .. } if w == window))
        .map_or(0, |l| l.at_ms)
}

/// The first window `node` trained in from `from` on, at what rate, and what the other honest
/// miners trained at in that window.
fn first_learning_rate(
    layout: &Layout,
    node: &str,
    events: &[EventLine],
    from: u64,
) -> Result<Option<LearningRate>> {
    let Some((window, lr)) = events.iter().find_map(|l| match l.event {
        Event::Trained { window, lr, .. } if window >= from => Some((window, lr)),
        _ => None,
    }) else {
        return Ok(None);
    };
    let mut network = None;
    for other in [KILLED, TRUNCATED, LATE].into_iter().filter(|o| *o != node) {
        network = network.or(lines(layout, other)?.iter().find_map(|l| match l.event {
            Event::Trained { window: w, lr, .. } if w == window => Some(lr),
            _ => None,
        }));
    }
    Ok(Some(LearningRate {
        window,
        node: lr,
        network,
    }))
}

/// The first window from `from` on after which `events`' node held the validator's model.
fn back_in_sync(
    events: &[EventLine],
    models: &BTreeMap<u64, Fingerprint>,
    from: u64,
) -> Option<u64> {
    applied(events)
        .into_iter()
        .find(|(w, f)| *w >= from && models.get(w) == Some(f))
        .map(|(w, _)| w)
}

/// One miner's live gather missed a peer's payload the validator aggregated: it must notice at
/// the next manifest and redo that window, holding the network's model again after the next
/// window, without a rebuild.
fn read_failed(
    layout: &Layout,
    validator: &[EventLine],
    models: &BTreeMap<u64, Fingerprint>,
    failed: &Happened,
) -> Result<Outcome> {
    let window = failed.window;
    let peer = uid_of_files(layout, KILLED)?;
    let events = lines(layout, FAILS_A_READ)?;
    let aggregated = validator.iter().any(|l| {
        matches!(&l.event, Event::Gathered { window: w, included, .. }
            if *w == window && included.contains(&peer))
    });
    let redone = events.iter().any(
        |l| matches!(l.event, Event::Resynced { window: w, full_rebuild: false } if w == window),
    );
    let rebuilds = full_rebuilds(&events, 0);
    let in_sync = back_in_sync(&events, models, window + 1);
    let measured = format!(
        "uid {peer} {} by the validator; {}; same model as the validator after window {}; \
         {rebuilds} full rebuild(s)",
        if aggregated {
            "aggregated"
        } else {
            "NOT aggregated"
        },
        if redone {
            format!("out of sync after window {window}, redone from its manifest")
        } else {
            "never redid the window".into()
        },
        in_sync.map_or("–".into(), |w| w.to_string()),
    );
    Ok(Outcome {
        fault: format!("{FAILS_A_READ}'s read of {KILLED}'s payload failing in window {window}"),
        expected: "the window redone from the manifest: the network's model again after the next \
                   window, no full rebuild"
            .into(),
        measured,
        met: aggregated && redone && in_sync == Some(window + 1) && rebuilds == 0,
        windows_to_sync: in_sync.map(|w| w - window),
        full_rebuilds: Some(rebuilds),
        learning_rate: None,
    })
}

/// A miner suspended for windows and let go on: it applies the windows it missed before it
/// trains, holds the network's model within 2 windows, at the network's learning rate, without a
/// rebuild.
fn suspended(
    layout: &Layout,
    models: &BTreeMap<u64, Fingerprint>,
    stop: &Happened,
    resume: &Happened,
) -> Result<Outcome> {
    let events = lines(layout, SUSPENDED)?;
    let from = resume.window;
    let in_sync = back_in_sync(&events, models, from);
    let rebuilds = full_rebuilds(&events, stop.at_ms);
    let learning_rate = first_learning_rate(layout, SUSPENDED, &events, from)?;
    let caught_up = events
        .iter()
        .any(|l| l.at_ms >= resume.at_ms && matches!(l.event, Event::CaughtUp { .. }));
    let measured = format!(
        "suspended in window {}, let go on in window {from}; {}; same model as the validator \
         after window {}; {}; {rebuilds} full rebuild(s)",
        stop.window,
        if caught_up {
            "applied the windows it missed"
        } else {
            "did not catch up"
        },
        in_sync.map_or("–".into(), |w| w.to_string()),
        learning_rate.map_or("never trained".into(), |lr| lr.describe()),
    );
    Ok(Outcome {
        fault: format!(
            "a miner suspended (SIGSTOP) for {} windows",
            from - stop.window
        ),
        expected: "applies the windows it missed before training; the network's model within 2 \
                   windows, at the network's learning rate, no full rebuild"
            .into(),
        measured,
        met: caught_up
            && in_sync.is_some_and(|w| w < from + 2)
            && learning_rate.is_some_and(|lr| lr.matches())
            && rebuilds == 0,
        windows_to_sync: in_sync.map(|w| w + 1 - from),
        full_rebuilds: Some(rebuilds),
        learning_rate,
    })
}

/// The validator stopped cleanly on SIGTERM, and restarted from exactly the state on disk once
/// it had stopped, which holds the scores it reported for its last window.
fn validator_resumed(
    events: &[EventLine],
    stop: &Happened,
    restart: &Happened,
    record: &Record,
) -> Result<Outcome> {
    let (digest, state) = record
        .validator_state_at_stop
        .as_ref()
        .context("no validator state recorded at the stop")?;
    let loaded = events.iter().find_map(|l| match &l.event {
        Event::Resumed {
            window,
            state_blake3,
        } if l.at_ms > restart.at_ms => Some((*window, state_blake3.clone())),
        _ => None,
    });
    let saved_window = state["last_window"].as_u64();
    let reported = events.iter().rev().find_map(|l| match &l.event {
        Event::Scores { window, miners }
            if l.at_ms < restart.at_ms && Some(*window) == saved_window =>
        {
            Some(miners.clone())
        }
        _ => None,
    });
    let mut mismatches = Vec::new();
    for miner in reported.iter().flatten() {
        let saved = &state["ledger"][miner.uid.to_string()];
        let same = saved["final_score"].as_f64() == Some(miner.final_score)
            && saved["binary_ma"].as_f64() == Some(miner.binary_ma)
            && saved["sync"].as_f64() == Some(miner.sync);
        if !same {
            mismatches.push(miner.uid);
        }
    }
    let identical = loaded.as_ref().is_some_and(|(_, d)| d == digest);
    let exit = record.validator_exit_at_stop.flatten();
    let measured = format!(
        "SIGTERM in window {}, exited with {}; restarted from its state of window {} ({}), {} \
         miners' scores equal to those it reported before the stop{}",
        stop.window,
        exit.map_or("a signal".into(), |c| format!("code {c}")),
        loaded
            .as_ref()
            .and_then(|(w, _)| *w)
            .map_or("–".into(), |w| w.to_string()),
        if identical {
            "byte-identical to the state on disk at the stop"
        } else {
            "NOT the state on disk at the stop"
        },
        reported.as_ref().map_or(0, Vec::len) - mismatches.len(),
        if mismatches.is_empty() {
            String::new()
        } else {
            format!("; different for uids {mismatches:?}")
        }
    );
    Ok(Outcome {
        fault: "the validator stopped with SIGTERM and restarted".into(),
        expected: "a clean exit (code 0); ratings, averages and counters identical to before the \
                   stop"
            .into(),
        measured,
        met: exit == Some(0) && identical && reported.is_some() && mismatches.is_empty(),
        ..Outcome::default()
    })
}

/// Every weight commit awaiting its reveal when the validator stopped was revealed on the chain
/// by the restarted validator (a reveal with the commit's salt, which the chain accepts only
/// in the commit's reveal epoch and only if it hashes to the commit).
fn commits_revealed(
    layout: &Layout,
    validator: &[EventLine],
    restart: &Happened,
    record: &Record,
) -> Result<Outcome> {
    let pending = &record.validator_pending_at_stop;
    let chain = LocalChain::open(&layout.chain())?;
    let uid = validator
        .iter()
        .find_map(|l| match l.event {
            Event::Started { uid, .. } => Some(uid),
            _ => None,
        })
        .context("the validator never started")?;
    let hotkey = chain
        .metagraph_now()?
        .neuron(uid)
        .map(|n| n.hotkey)
        .context("the validator's uid is not registered")?;
    let reveals: Vec<(u64, Vec<u16>)> = chain
        .extrinsics_by(&hotkey)?
        .into_iter()
        .filter_map(|(block, call)| match call {
            Call::RevealWeights { salt, .. } if block >= restart.block => Some((block, salt)),
            _ => None,
        })
        .collect();
    let revealed: Vec<(u64, u64)> = pending
        .iter()
        .filter_map(|p| {
            reveals
                .iter()
                .find(|(_, salt)| *salt == p.reveal.salt)
                .map(|(block, _)| (p.reveal.committed_at, *block))
        })
        .collect();
    let measured = if pending.is_empty() {
        "no commit was pending when the validator stopped".to_string()
    } else {
        format!(
            "{} commit(s) pending at the stop (blocks {:?}); revealed after the restart: {}",
            pending.len(),
            pending
                .iter()
                .map(|p| p.reveal.committed_at)
                .collect::<Vec<_>>(),
            if revealed.is_empty() {
                "none".to_string()
            } else {
                revealed
                    .iter()
                    .map(|(c, r)| format!("block {c}'s in block {r}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        )
    };
    Ok(Outcome {
        fault: "a weight commit awaiting its reveal when the validator stopped".into(),
        expected: "revealed by the restarted validator, in its reveal epoch".into(),
        measured,
        met: !pending.is_empty() && revealed.len() == pending.len(),
        ..Outcome::default()
    })
}

/// After a peer deleted what it published, every node goes on: each holds the validator's model
/// after its last window, and every process ends cleanly.
fn payloads_deleted(
    layout: &Layout,
    models: &BTreeMap<u64, Fingerprint>,
    deleted: &Happened,
    count: usize,
) -> Result<Outcome> {
    let runs = super::report::read_runs(&layout.runs())?;
    let exits = runs.last().map(|r| r.exits.clone()).unwrap_or_default();
    let failed: Vec<String> = exits
        .iter()
        .filter(|(_, code)| **code != Some(0))
        .map(|(name, code)| format!("{name} ({code:?})"))
        .collect();
    let mut apart = Vec::new();
    let mut last_windows = Vec::new();
    let mut replays_stopped = Vec::new();
    for node in [VALIDATOR, KILLED, TRUNCATED, LATE] {
        let events = lines(layout, node)?;
        let stopped = events.iter().filter(|l| l.at_ms >= deleted.at_ms).any(
            |l| matches!(&l.event, Event::Failed { action, .. } if action.starts_with("replaying")),
        );
        if stopped {
            replays_stopped.push(node);
        }
        let last = applied(&events).into_iter().next_back();
        match last {
            Some((w, f)) if w > deleted.window && models.get(&w) == Some(&f) => {
                last_windows.push(w);
            }
            _ => apart.push(node),
        }
    }
    let measured = format!(
        "{}; {}; every node's last model {}; {}",
        deleted.detail,
        if replays_stopped.is_empty() {
            "no node had to replay the deleted windows".to_string()
        } else {
            format!(
                "the catch-up of {} met a deleted payload and went on from a later checkpoint",
                replays_stopped.join(", ")
            )
        },
        if apart.is_empty() {
            format!(
                "equal to the validator's (after window {})",
                last_windows.iter().min().copied().unwrap_or_default()
            )
        } else {
            format!("NOT the validator's for {apart:?}")
        },
        if failed.is_empty() {
            format!("all {} processes ended with code 0", exits.len())
        } else {
            format!("ended with an error: {}", failed.join(", "))
        }
    );
    Ok(Outcome {
        fault: format!(
            "a peer deleting every payload it published, up to window {}",
            deleted.window.saturating_sub(1)
        ),
        expected: "no node stops or falls apart: the network's model at the end, every process \
                   ends with code 0"
            .into(),
        measured,
        met: count > 0 && apart.is_empty() && failed.is_empty() && !exits.is_empty(),
        ..Outcome::default()
    })
}

/// The truncated payload was rejected with a reason and the window went on without it.
fn truncated(layout: &Layout, validator: &[EventLine], cut: &Happened) -> Result<Outcome> {
    let uid = uid_of_files(layout, TRUNCATED)?;
    let gathered = validator.iter().find_map(|l| match &l.event {
        Event::Gathered {
            window,
            peers,
            included,
        } if *window == cut.window => Some((peers.clone(), included.clone())),
        _ => None,
    });
    let validated = validator
        .iter()
        .any(|l| matches!(l.event, Event::Validation { window, .. } if window == cut.window));
    let (measured, met) = match gathered {
        Some((peers, included)) => {
            let verdict = peers.iter().find(|p| p.uid == uid);
            let rejected = verdict.is_some_and(|p| p.outcome != "ok" && !p.reason.is_empty());
            (
                format!(
                    "{}; the window aggregated {included:?} and was validated: {validated}",
                    verdict.map_or("no verdict".into(), |p| format!(
                        "rejected as {}: {}",
                        p.outcome, p.reason
                    ))
                ),
                rejected && validated && !included.contains(&uid),
            )
        }
        None => ("the validator never gathered that window".into(), false),
    };
    Ok(Outcome {
        fault: format!("a payload truncated in storage (window {})", cut.window),
        expected: "rejected with a reason, the window proceeds".into(),
        measured,
        met,
        ..Outcome::default()
    })
}

fn markdown(report: &FaultsReport) -> String {
    let mut md = format!("```sh\n{}\n```\n\n", report.command);
    md.push_str("| fault | expected | measured | met |\n|---|---|---|---|\n");
    for o in &report.outcomes {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            o.fault,
            o.expected,
            o.measured,
            super::robustness::met_mark(o.met)
        );
    }
    md.push_str("\nWhat the script did:\n\n");
    for h in &report.happened {
        let _ = writeln!(
            md,
            "- window {} (block {}): {:?} — {}",
            h.window, h.block, h.action, h.detail
        );
    }
    md
}
