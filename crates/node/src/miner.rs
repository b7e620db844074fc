//! The miner: each window, train on its own assignment, publish a compressed pseudo-gradient,
//! then gather the peer set's payloads and apply the same aggregate as everyone else.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use templar_chain::Chain;
use templar_codec::{Payload, encode};
use templar_data::DataReceipt;
use templar_dist::ProcessGroup;
use templar_engine::memory::Role;
use templar_engine::{Device, Placement, learning_rate};
use templar_protocol::{Kind, SlotCheck, UploadSlot};

use crate::adversary::Adversary;
use crate::behavior::Behavior;
use crate::catchup::{self, Position};
use crate::error::NodeError;
use crate::events::{Event, Part, Phase};
use crate::fingerprint::Fingerprint;
use crate::message::{GradientHeader, WindowManifest};
use crate::miner_replica::MinerReplica;
use crate::node::{Node, Verdict, WindowPeers, aggregate_inputs, sleep_until_ms};
use crate::ranks::{
    FullyShardedReplica, SavedBy, TensorOwner, load_node_state, read_error_feedback,
};
use crate::replica::{LiveWeights, NetworkReplica, Replica};
use crate::reveal::Reveal;
use crate::saving::Saving;
use crate::state::StateDir;
use crate::trainer::{self, Held, Progress, Steps, Training, step_margin_ms};

/// Where a miner resuming from `saved` stands, announced.
fn resumed<C>(node: &Node<C>, saved: &MinerState, digest: String) -> Position {
    node.events.emit(Event::Resumed {
        window: saved.last_window,
        state_blake3: digest,
    });
    Position {
        last_window: saved.last_window,
        global_step: saved.global_step,
    }
}

/// Says so when a state saved over one number of ranks is resumed over another.
fn log_relayout(saved: &SavedBy, ranks: usize) {
    let saved_ranks = saved.ranks().unwrap_or(1);
    if saved_ranks != ranks {
        tracing::info!(
            saved_ranks,
            ranks,
            "resuming a state saved over another number of ranks: the moments and error feedback \
             are laid out anew"
        );
    }
}

/// What a miner persists besides its model and optimizer.
#[derive(Debug, Serialize, Deserialize)]
struct MinerState {
    last_window: Option<u64>,
    global_step: u64,
    error_feedback_blake3: String,
    /// The ranks the node spanned (absent: one process); its training state is one file per
    /// rank then, and resuming needs as many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ranks: Option<usize>,
    /// Whether those ranks trained fully sharded: their moments are then one file, as one
    /// process writes them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    fully_sharded: bool,
}

impl MinerState {
    fn saved_by(&self, dir: &std::path::Path) -> Result<SavedBy, NodeError> {
        Ok(match (self.ranks, self.fully_sharded) {
            (Some(ranks), false) => SavedBy::Ranks(ranks),
            (Some(ranks), true) => SavedBy::FullyShardedRanks(ranks),
            (None, false) => SavedBy::OneProcess {
                error_feedback_blake3: self.error_feedback_blake3.clone(),
            },
            (None, true) => {
                return Err(NodeError::State {
                    path: dir.to_path_buf(),
                    reason: "its record says it was saved fully sharded but not by how many ranks"
                        .into(),
                });
            }
        })
    }
}

/// When to stop: on request, or after a given window.
pub struct Stop {
    pub requested: tokio::sync::watch::Receiver<bool>,
    pub after_window: Option<u64>,
}

impl Stop {
    pub(crate) fn now(&self, window: u64) -> bool {
        *self.requested.borrow() || self.after_window.is_some_and(|last| window > last)
    }
}

/// A window this miner has trained (or skipped) and published, whose aggregate is still to
/// gather and apply.
pub(crate) struct Pending {
    window: u64,
    peers: WindowPeers,
    slot: UploadSlot,
    reveal: Option<Reveal>,
    /// This miner's own update, when the live weights hold it as a guess of the aggregate.
    own: Option<Payload>,
}

/// A pending window's payloads, gathered, with the manifest of the window before it.
struct Collected {
    window: u64,
    peers: WindowPeers,
    verdicts: BTreeMap<u16, Verdict>,
    manifest: Option<WindowManifest>,
}

pub struct Miner<C> {
    pub(crate) node: Node<C>,
    /// Lent to the training thread while it trains (see [`crate::trainer`]).
    pub(crate) replica: Held<MinerReplica>,
    error_feedback: Vec<Vec<f32>>,
    state: StateDir,
    pub(crate) position: Position,
    /// Running estimate of one inner step, for stopping before the deadline.
    step_seconds: f64,
    /// When the trainer last stopped: a window's compute share is its busy time over the time
    /// since.
    trainer_stopped: Option<Instant>,
    /// Train the next window while this one is gathered and applied (see [`Miner::run`]).
    overlap: bool,
    /// The model after the previous window, to compare with the validators' manifest.
    previous: Option<(u64, Fingerprint)>,
    /// Honest, or an attack on a test network (see [`crate::behavior`]).
    pub(crate) behavior: Behavior,
    pub(crate) adversary: Adversary,
    /// A state generation is saved every this many windows.
    state_every: u64,
    last_saved: Option<u64>,
    saving: Saving,
    /// A fully sharded node's state save, due once the window's aggregate is applied (its
    /// ranks write together, at once: nothing is lent to a background save).
    sharded_save_due: Option<u64>,
    /// The model is known not to be the network's (a catch-up stopped short, a redo or rebuild
    /// could not finish): the miner trains and applies nothing until a catch-up gets it there.
    behind: bool,
}

impl<C: Chain> Miner<C> {
    /// A miner resuming from `state_dir` if it holds a saved state, else from the initial model.
    pub fn new(node: Node<C>, device: Device, state_dir: PathBuf) -> Result<Miner<C>, NodeError> {
        let state = StateDir::new(state_dir);
        let saved = state.load_digested::<MinerState>()?;
        let mut replica = match &saved {
            Some((_, dir, _)) => Replica::resume(&node.config, device, Role::Miner, dir)?,
            None => Replica::new(&node.config, device, Role::Miner)?,
        };
        let mut error_feedback: Vec<Vec<f32>> = (0..replica.schema.len())
            .map(|i| vec![0.0; replica.schema.plan(i).numel()])
            .collect();
        let mut position = Position {
            last_window: None,
            global_step: 0,
        };
        if let Some((saved, dir, digest)) = saved {
            let saved_by = saved.saved_by(&dir)?;
            log_relayout(&saved_by, 1);
            replica.load_optimizer_saved_by(&dir, saved_by.moments_ranks())?;
            let numels: Vec<usize> = error_feedback.iter().map(Vec::len).collect();
            error_feedback = read_error_feedback(&dir, &numels, TensorOwner::ALONE, &saved_by)?;
            position = resumed(&node, &saved, digest);
        }
        Ok(Miner::assemble(
            node,
            MinerReplica::Whole(replica),
            error_feedback,
            state,
            position,
        ))
    }

    /// Rank 0 of a miner spanning the ranks of `group`: the others follow it
    /// ([`crate::ranks::follow`]). Resumes from `state_dir` if it holds a saved state, whether
    /// one process or a node of as many or another number of ranks saved it (its moments and
    /// error feedback are then laid out anew over these ranks).
    pub fn new_ranked(
        node: Node<C>,
        device: Device,
        state_dir: PathBuf,
        group: ProcessGroup,
    ) -> Result<Miner<C>, NodeError> {
        let world = group.world();
        let state = StateDir::new(state_dir);
        let saved = state.load_digested::<MinerState>()?;
        // Every rank starts from the initial model, then loads the saved one together.
        let mut replica = Replica::new_ranked(&node.config, device, Role::Miner, group)?;
        let numels = replica.base().iter().map(Vec::len).collect::<Vec<_>>();
        let mut error_feedback = replica.owner().error_feedback(numels);
        let mut position = Position {
            last_window: None,
            global_step: 0,
        };
        if let Some((saved, dir, digest)) = saved {
            replica.load_weights(&dir)?;
            let saved_by = saved.saved_by(&dir)?;
            log_relayout(&saved_by, world);
            load_node_state(&mut replica, &mut error_feedback, &dir, &saved_by)?;
            position = resumed(&node, &saved, digest);
        }
        Ok(Miner::assemble(
            node,
            MinerReplica::Whole(replica),
            error_feedback,
            state,
            position,
        ))
    }

    /// Rank 0 of a fully sharded miner spanning the ranks of `group`, its spans placed as
    /// `placement` says: no rank holds the whole model (see [`FullyShardedReplica`]); the
    /// others follow it ([`crate::ranks::follow_on_shards`]). Resumes from `state_dir` if it
    /// holds a saved state, whoever saved it: one process, a ZeRO-2 node or a fully sharded
    /// one, of any number of ranks.
    pub fn new_fully_sharded(
        node: Node<C>,
        placement: Placement,
        state_dir: PathBuf,
        group: ProcessGroup,
    ) -> Result<Miner<C>, NodeError> {
        let world = group.world();
        // The replica first: every rank makes it together, whatever rank 0 then finds.
        let mut replica = FullyShardedReplica::new(&node.config, placement, group)?;
        let state = StateDir::new(state_dir);
        let saved = state.load_digested::<MinerState>()?;
        let mut error_feedback = replica.fresh_error_feedback();
        let mut position = Position {
            last_window: None,
            global_step: 0,
        };
        if let Some((saved, dir, digest)) = saved {
            let saved_by = saved.saved_by(&dir)?;
            log_relayout(&saved_by, world);
            replica.load_state(&mut error_feedback, &dir, &saved_by)?;
            position = resumed(&node, &saved, digest);
        }
        Ok(Miner::assemble(
            node,
            MinerReplica::FullySharded(replica),
            error_feedback,
            state,
            position,
        ))
    }

    fn assemble(
        node: Node<C>,
        replica: MinerReplica,
        error_feedback: Vec<Vec<f32>>,
        state: StateDir,
        position: Position,
    ) -> Miner<C> {
        Miner {
            node,
            replica: Held::new(replica),
            error_feedback,
            state,
            position,
            step_seconds: 0.0,
            trainer_stopped: None,
            overlap: true,
            previous: None,
            behavior: Behavior::Honest,
            adversary: Adversary::default(),
            state_every: 1,
            last_saved: None,
            saving: Saving::default(),
            sharded_save_due: None,
            behind: false,
        }
    }

    /// Saves the local state every `windows` windows instead of every window (at least 1). A
    /// restart resumes from the last save and catches up on the network's windows since.
    pub fn with_state_every(mut self, windows: u64) -> Miner<C> {
        self.state_every = windows.max(1);
        self
    }

    /// Trains each window only once the window before is applied (`false`), instead of
    /// overlapping them: for comparison, and for a host that cannot spare the memory of a
    /// training thread beside the gather.
    pub fn with_overlap(mut self, overlap: bool) -> Miner<C> {
        self.overlap = overlap;
        self
    }

    /// Makes this miner misbehave: for test and research networks only (one process only).
    pub fn with_behavior(mut self, behavior: Behavior) -> Miner<C> {
        if !behavior.is_honest() {
            tracing::warn!(%behavior, "this miner attacks the network on purpose (a test behaviour)");
        }
        self.behavior = behavior;
        self
    }

    pub fn position(&self) -> Position {
        self.position
    }

    /// Runs windows until `stop`; every completed window is persisted.
    ///
    /// An honest one-process miner overlaps windows: once its payload of a window is out, it
    /// trains the next while that window is gathered and applied under its live weights (see
    /// [`crate::trainer`]). Other miners finish each window before training the next.
    pub async fn run(mut self, stop: Stop) -> Result<(), NodeError> {
        let current = self
            .node
            .clock
            .window_of(self.node.chain.block().await?.number);
        self.catch_up_or_wait(current).await?;
        let mut window = current;
        let mut pending = None;
        while !stop.now(window) {
            pending = self.run_window(window, pending).await?;
            let head = self
                .node
                .clock
                .window_of(self.node.chain.block().await?.number);
            // Windows that went by while this one ran (a slow step, a suspended process) are
            // applied before the next is trained: never train on a model that skipped windows.
            if head > window + 1 {
                if let Some(pending) = pending.take() {
                    self.finish_window(pending).await?;
                }
                self.finish_saving()?;
                self.catch_up_or_wait(head).await?;
            }
            window = head.max(window + 1);
        }
        if let Some(pending) = pending.take() {
            self.finish_window(pending).await?;
        }
        self.finish_saving()?;
        self.replica.release_ranks()
    }

    /// [`Miner::catch_up_before`]; when the windows cannot be had now (storage or the chain
    /// down, a payload gone with no checkpoint past it yet), the miner reports it and is
    /// `behind` until a later try gets there. Only what needs an operator ends the miner.
    async fn catch_up_or_wait(&mut self, window: u64) -> Result<(), NodeError> {
        match self.catch_up_before(window).await {
            Ok(()) => Ok(()),
            Err(error) if error.is_transient() => {
                self.node.failed(
                    part_of(&error),
                    "catching up on the windows that went by",
                    &error,
                );
                // The catch-up may have replayed some windows before it failed: only a rebuild
                // knows where the model stands.
                self.fall_behind(Position {
                    last_window: None,
                    global_step: 0,
                });
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    /// Brings the replica up to the end of the window before `window` when it is behind it:
    /// waits for that window's slot to close, then replays the network's windows since. A
    /// catch-up that stops short leaves the miner `behind`.
    async fn catch_up_before(&mut self, window: u64) -> Result<(), NodeError> {
        let behind = self.behind || self.position.last_window.is_none_or(|w| w + 1 < window);
        if window == 0 || !behind {
            return Ok(());
        }
        let previous = window - 1;
        let slot = self.node.slot(previous).await?;
        self.node
            .wait_until(self.node.clock.end_block(previous), slot.closes_ms)
            .await?;
        if self.behind && self.position.last_window.is_none() {
            // Where a failed rebuild left it: from the network's initial model again.
            self.replica.reset(&self.node.config)?;
        }
        self.position =
            catchup::catch_up(&self.node, &mut *self.replica, self.position, previous).await?;
        // A fresh network has nothing to catch up on: the initial model is its model.
        let reached = self.position.last_window.is_none_or(|w| w == previous);
        self.behind = !reached;
        if reached {
            self.previous = None;
        }
        Ok(())
    }

    /// The model is not the network's and stands at `position`.
    fn fall_behind(&mut self, position: Position) {
        self.position = position;
        self.behind = true;
        self.previous = None;
    }

    /// Trains and publishes `window`, applying `pending` (the window before, when this miner
    /// overlaps windows) while it trains. Returns the window whose aggregate is still to apply.
    async fn run_window(
        &mut self,
        window: u64,
        pending: Option<Pending>,
    ) -> Result<Option<Pending>, NodeError> {
        let pending = match pending {
            Some(pending) if !self.overlaps() => {
                self.finish_window(pending).await?;
                None
            }
            pending => pending,
        };
        if self.behind {
            self.catch_up_or_wait(window).await?;
            if self.behind {
                // A payload trained on a model that skipped windows helps nobody, and applying
                // on top of it only moves further away: wait for a catch-up that gets there.
                self.skip_behind(window);
                return Ok(None);
            }
        }
        let train_until = self
            .node
            .chain
            .block_timestamp(self.node.clock.end_block(window))
            .await?;
        self.node.phase(window, Phase::Training);
        let mut own = None;
        let (contribution, peers, slot) = if self.behavior.is_honest() {
            // Training needs neither the window's peers nor its slot, which are known only once
            // the window has begun: an overlapping miner starts as soon as its last payload is
            // out, but not before the last window's steps would have had to stop. A miner whose
            // steps leave part of a window idle would otherwise train ever further ahead of the
            // aggregates it builds on.
            if pending.is_some() {
                let begins = self
                    .node
                    .chain
                    .block_timestamp(self.node.clock.first_block(window))
                    .await?;
                sleep_until_ms(begins.saturating_sub(step_margin_ms(self.step_seconds))).await;
            }
            let trained = self
                .train(window, self.node.uid, train_until, pending)
                .await?;
            let peers = self.node.window_peers(window).await?;
            let slot = self.node.slot(window).await?;
            let contribution = match trained {
                Some((header, payload)) => {
                    let message = header.encode(&self.encode(&payload));
                    own = Some(payload);
                    Ok(message)
                }
                None => Err("no time left to train before the window ended".to_string()),
            };
            (contribution, peers, slot)
        } else {
            let peers = self.node.window_peers(window).await?;
            let slot = self.node.slot(window).await?;
            let contribution = self.misbehave(window, &peers, slot, train_until).await?;
            (contribution, peers, slot)
        };
        if self.behind {
            // Applying the window before found the model out of sync and could not mend it.
            self.skip_behind(window);
            return Ok(None);
        }
        if self
            .last_saved
            .is_none_or(|saved| window >= saved + self.state_every)
        {
            self.save_training_state(window)?;
        }
        let reveal = match contribution {
            Ok(message) => Some(self.upload(window, slot, message).await),
            Err(reason) => {
                self.node.events.emit(Event::Skipped { window, reason });
                None
            }
        };
        let mut pending = Pending {
            window,
            peers,
            slot,
            reveal,
            own: None,
        };
        if !self.overlaps() {
            self.finish_window(pending).await?;
            return Ok(None);
        }
        // The next window trains from where this miner guesses the network goes: its own
        // update applied alone. The guess is taken back when the aggregate is applied.
        if let Some(own) = own {
            self.replica
                .add_to_live(&own, -self.node.config.training.outer_lr)?;
            pending.own = Some(own);
        }
        Ok(Some(pending))
    }

    /// Whether this miner trains the next window while the last is gathered and applied.
    fn overlaps(&self) -> bool {
        self.overlap && self.behavior.is_honest() && self.replica.carries_live_weights()
    }

    fn skip_behind(&self, window: u64) {
        self.node.events.emit(Event::Skipped {
            window,
            reason: format!(
                "behind the network (the model holds window {}): waiting for a catch-up to get \
                 past the windows it could not replay",
                self.position
                    .last_window
                    .map_or("none".into(), |w| w.to_string())
            ),
        });
    }

    /// Seals and uploads this window's message; what to reveal once the slot has closed.
    async fn upload(&mut self, window: u64, slot: UploadSlot, message: Vec<u8>) -> Reveal {
        self.node.phase(window, Phase::Uploading);
        let (sealed, key) = self.seal(window, message);
        let published = self
            .node
            .store
            .publish(
                &self.node.hotkey,
                &self.node.network,
                Kind::Gradient,
                window,
                self.node.uid,
                &sealed,
            )
            .await;
        // Storage that stays down past the retries costs this window's contribution, not the
        // process: the miner still follows the network's aggregate.
        match published {
            Ok(info) => self.node.events.emit(Event::Uploaded {
                window,
                bytes: info.size,
                uploaded_ms: info.uploaded_ms,
                in_slot: slot.check(info.uploaded_ms) == SlotCheck::InTime,
            }),
            Err(error) => {
                self.node
                    .failed(Part::Storage, "uploading the payload", &error);
                self.node.events.emit(Event::Skipped {
                    window,
                    reason: format!("the upload failed: {error}"),
                })
            }
        }
        // The key goes out even when the upload reported a failure: the object may have
        // landed (a failed check after the write), and a key without a payload reveals nothing.
        key
    }

    /// Gathers and applies `pending` with nothing training meanwhile.
    async fn finish_window(&mut self, pending: Pending) -> Result<(), NodeError> {
        let guessed = pending.own.is_some();
        let collected = self.collect(pending).await?;
        self.settle(collected, LiveWeights::Reset).await?;
        if guessed {
            // Nothing trains on from here: the live weights start the next window at the base.
            self.replica.restore()?;
        }
        Ok(())
    }

    /// Waits for `pending`'s slot to close, reveals this miner's key while pinning everyone's
    /// payloads, gathers them, and reads the validators' manifest of the window before. Needs
    /// no model: a miner overlapping windows trains meanwhile.
    async fn collect(&self, pending: Pending) -> Result<Collected, NodeError> {
        let Pending {
            window,
            peers,
            slot,
            reveal,
            own: _,
        } = pending;
        self.node.phase(window, Phase::Waiting);
        self.node
            .wait_until(self.node.clock.end_block(window), slot.closes_ms)
            .await?;
        self.node.phase(window, Phase::Gathering);
        let uids: Vec<u16> = peers
            .set
            .peers
            .iter()
            .chain(&peers.set.reserves)
            .copied()
            .collect();
        // The key to this miner's payload goes out while the gather pins everyone's payloads and
        // waits for their keys.
        let revealing = async {
            if let Some(reveal) = reveal {
                self.reveal(window, reveal, &peers, slot).await;
            }
        };
        let ((), verdicts) = tokio::join!(
            revealing,
            self.node.gather(window, &uids, &peers, Some(slot))
        );
        let (chosen, _) = aggregate_inputs(&peers.set, &verdicts);
        self.node.report(window, &verdicts, &chosen);
        // The validators' manifest of the window before is out by now.
        let manifest = match self.previous.filter(|(w, _)| *w + 1 == window) {
            Some((previous, _)) => catchup::followed_manifest(&self.node, previous)
                .await
                .map(|(_, manifest)| manifest),
            None => None,
        };
        Ok(Collected {
            window,
            peers,
            verdicts,
            manifest,
        })
    }

    /// Applies a gathered window: first mends a model that differs from the validators'
    /// manifest of the window before, then applies this window's aggregate, saves and cleans up.
    /// True when the base changed by more than the aggregate (a redo or a rebuild, or the miner
    /// fell behind): live weights trained on the old base are then worth nothing.
    async fn settle(&mut self, collected: Collected, live: LiveWeights) -> Result<bool, NodeError> {
        let Collected {
            window,
            peers,
            verdicts,
            manifest,
        } = collected;
        let (_, gathered) = aggregate_inputs(&peers.set, &verdicts);
        let payloads: Vec<_> = gathered.iter().map(|g| &g.payload).collect();
        if !self.behavior.is_honest() {
            self.observe(&verdicts, &payloads)?;
        }
        self.saving.finish_weights()?;
        let mended = match manifest {
            Some(manifest) => self.check_sync(manifest).await?,
            None => false,
        };
        if self.behind {
            // The redo or rebuild could not finish: this window is applied by the catch-up that
            // brings the model back.
            return Ok(true);
        }
        // Live weights that trained on a model just mended are put back to it, not carried.
        let live = if mended { LiveWeights::Reset } else { live };
        self.replica.apply_aggregate_to(&payloads, live)?;
        if !payloads.is_empty() {
            self.position.global_step += 1;
        }
        self.position.last_window = Some(window);
        let fingerprint = self.replica.fingerprint();
        self.previous = Some((window, fingerprint));
        self.node.events.emit(Event::Applied {
            window,
            global_step: self.position.global_step,
            fingerprint,
        });
        self.save_weights()?;
        let retention = self.node.config.checkpoints.payload_retention;
        for kind in [Kind::Gradient, Kind::PayloadKey] {
            if let Err(error) = self
                .node
                .store
                .clean_up(
                    &self.node.network,
                    kind,
                    self.node.uid,
                    window.saturating_sub(retention),
                )
                .await
            {
                self.node
                    .failed(Part::Storage, "deleting old payloads", &error);
            }
        }
        Ok(mended)
    }

    /// Compares the model after the window before with `manifest`, that window's manifest from
    /// the validator with the most stake. On a mismatch (this miner gathered another set: a read
    /// failed, a payload came late) it takes that window's apply back and redoes it from the
    /// manifest's included set: one window of work. Without a record of the apply, or when the
    /// redo applies a model other than the manifest's, it is rebuilt from the checkpoint and
    /// manifests; when the payloads cannot be read now, the miner is behind from the window
    /// before (see [`Miner::fall_behind`]). True when the model was mended (or left behind).
    async fn check_sync(&mut self, manifest: WindowManifest) -> Result<bool, NodeError> {
        let Some((previous_window, ours)) = self.previous.filter(|(w, _)| *w == manifest.window)
        else {
            return Ok(false);
        };
        if manifest.fingerprint == ours {
            return Ok(false);
        }
        self.node.events.emit(Event::OutOfSync {
            window: previous_window,
            ours,
            manifest: manifest.fingerprint,
        });
        if !self.replica.revert_last_apply()? {
            // No record of the apply (the miner has applied nothing since it started).
            self.rebuild(previous_window).await?;
            return Ok(true);
        }
        match self.redo(&manifest).await {
            Ok(()) => {
                self.position.global_step = manifest.global_step;
                self.resynced(previous_window, false);
                Ok(true)
            }
            Err(error @ (NodeError::PayloadGone { .. } | NodeError::Chain(_)))
                if error.is_transient() =>
            {
                // Nothing was applied: the model is the one before that window, and a catch-up
                // replays it once its payloads can be read.
                self.node.failed(
                    part_of(&error),
                    &format!("redoing window {previous_window} from its manifest"),
                    &error,
                );
                let stepped = u64::from(!manifest.included.is_empty());
                self.fall_behind(Position {
                    last_window: previous_window.checked_sub(1),
                    global_step: manifest.global_step.saturating_sub(stepped),
                });
                Ok(true)
            }
            Err(error) if error.is_transient() => {
                tracing::warn!(%error, window = previous_window, "redoing the window from its manifest failed: rebuilding");
                self.rebuild(previous_window).await?;
                Ok(true)
            }
            Err(error) => Err(error),
        }
    }

    /// Applies the manifest's aggregate in place of the apply just taken back.
    async fn redo(&mut self, manifest: &WindowManifest) -> Result<(), NodeError> {
        let peers = self.node.window_peers(manifest.window).await?;
        catchup::apply_manifest(&self.node, &mut *self.replica, &peers, manifest).await?;
        Ok(())
    }

    /// The model from the network's initial one, the checkpoint and the manifests up to
    /// `window`. When they cannot be read now, the miner reports it and is `behind` until a
    /// later window's catch-up gets there.
    async fn rebuild(&mut self, window: u64) -> Result<(), NodeError> {
        self.replica.reset(&self.node.config)?;
        let start = Position {
            last_window: None,
            global_step: 0,
        };
        match catchup::catch_up(&self.node, &mut *self.replica, start, window).await {
            Ok(at) if at.last_window == Some(window) => {
                self.position = at;
                self.resynced(window, true);
            }
            // Short of `window`: a payload is gone and no checkpoint covers it yet (the
            // catch-up said so). Later windows try again from there.
            Ok(at) => self.fall_behind(at),
            Err(error) if error.is_transient() => {
                self.node.failed(
                    part_of(&error),
                    "rebuilding the model from the checkpoint",
                    &error,
                );
                self.fall_behind(start);
            }
            Err(error) => return Err(error),
        }
        Ok(())
    }

    fn resynced(&mut self, window: u64, full_rebuild: bool) {
        self.previous = Some((window, self.replica.fingerprint()));
        self.node.events.emit(Event::Resynced {
            window,
            full_rebuild,
        });
    }

    /// Inner steps on the assignment of `data_uid` (this miner's own, but for an attack) for
    /// this window until done or `train_until` (chain ms) is near; then the pseudo-gradient
    /// through error feedback and the codec. `None`: nothing trained.
    ///
    /// With `pending`, the window before is gathered and applied while the steps run: the
    /// trainer pauses for the apply, which moves the live weights with the base, and goes on.
    pub(crate) async fn train(
        &mut self,
        window: u64,
        data_uid: u16,
        train_until: u64,
        pending: Option<Pending>,
    ) -> Result<Option<(GradientHeader, Payload)>, NodeError> {
        let data = Arc::clone(&self.node.data);
        let assignment = data.assignment(data_uid, window);
        // An attack (test networks only): half the steps on the samples it predicts it will be
        // judged on, from public values. A validator's draw makes the prediction wrong.
        let predicted = match self.behavior {
            Behavior::EvalOverfit => data
                .sampler
                .random(window, self.node.config.gauntlet.eval_samples),
            _ => Vec::new(),
        };
        let trained_on = self
            .behavior
            .training_samples(&assignment, &predicted, data.batch_size);
        // A part-time miner (a test behaviour) stops after its share of the inner steps.
        let step_cap =
            ((assignment.len() / data.batch_size) as f32 * self.behavior.step_share()).ceil();
        let batches: Vec<Vec<u64>> = trained_on
            .chunks_exact(data.batch_size)
            .take(step_cap.max(1.0) as usize)
            .map(<[u64]>::to_vec)
            .collect();
        // The inner schedule follows the network, not this miner's own step count: a newcomer,
        // a miner that caught up and one whose last window was cut short all train at the
        // rate of everyone else. The pending window's outer step counts already.
        let ahead = u64::from(pending.is_some());
        self.replica.set_schedule_step(network_schedule_step(
            self.position.global_step + ahead,
            &self.node.config,
        ));
        let cycle_began = self.trainer_stopped.unwrap_or_else(Instant::now);
        let mut busy = Duration::ZERO;
        let mut progress = Progress {
            step_seconds: self.step_seconds,
            ..Progress::default()
        };
        if let Some(mut pending) = pending {
            let guess = pending.own.take();
            let training = self.start_training(&batches, train_until, progress.step_seconds);
            let collected = self.collect(pending).await;
            let paused = self.take_back(training.pause().await?)?;
            busy += paused.busy;
            progress = progress.then(paused);
            if let Some(guess) = guess {
                // The guess of where the network went makes way for where it went.
                self.replica
                    .add_to_live(&guess, self.node.config.training.outer_lr)?;
            }
            if self.settle(collected?, LiveWeights::Carried).await? {
                // The steps trained on a model that was not the network's: start over on the
                // mended one, with what time is left.
                self.replica.restore()?;
                progress = Progress {
                    step_seconds: progress.step_seconds,
                    ..Progress::default()
                };
            }
            if self.behind {
                self.trainer_stopped = Some(Instant::now());
                return Ok(None);
            }
            // The steps to come take the rates they would have taken one window after another,
            // whatever the guess was (an empty aggregate does not move the global step).
            self.replica.set_schedule_step(
                network_schedule_step(self.position.global_step, &self.node.config)
                    + u64::from(progress.steps),
            );
        }
        let rest = batches.get(progress.steps as usize..).unwrap_or_default();
        let training = self.start_training(rest, train_until, progress.step_seconds);
        let finished = self.take_back(training.finish().await?)?;
        busy += finished.busy;
        progress = progress.then(finished);
        let stopped = Instant::now();
        self.trainer_stopped = Some(stopped);
        self.step_seconds = progress.step_seconds;
        if progress.steps == 0 {
            return Ok(None);
        }
        let steps = progress.steps;
        self.node.events.emit(Event::Trained {
            window,
            steps,
            samples: steps * data.batch_size as u32,
            mean_loss: progress.loss_sum / f64::from(steps),
            // The window's rate: where the network's schedule stands, the same on every node
            // (later steps depend on how many this machine fits in).
            lr: learning_rate(
                &self.node.config.model.train,
                network_schedule_step(self.position.global_step, &self.node.config),
            ),
            train_seconds: busy.as_secs_f64(),
            compute_share: trainer::compute_share(busy, cycle_began, stopped),
        });
        let base_fingerprint = self.replica.fingerprint();
        // The last window's save holds the error feedback until it is written.
        self.saving
            .finish_training_state(&mut self.error_feedback)?;
        let payload = self.replica.outer_step(&mut self.error_feedback)?;
        let samples = steps as usize * data.batch_size;
        let header = GradientHeader {
            receipt: DataReceipt::of(&assignment[..samples]).0,
            samples: samples as u32,
            base_window: self.position.last_window.unwrap_or(u64::MAX),
            base_fingerprint,
        };
        Ok(Some((header, payload)))
    }

    /// Lends the replica to a training thread for `batches`.
    fn start_training(
        &mut self,
        batches: &[Vec<u64>],
        until_ms: u64,
        step_seconds: f64,
    ) -> Training {
        Training::start(
            self.replica.lend(),
            Arc::clone(&self.node.data),
            Steps {
                batches: batches.to_vec(),
                until_ms,
                step_seconds,
            },
        )
    }

    /// The replica back from a training thread, and what it did.
    fn take_back(
        &mut self,
        (replica, done): (MinerReplica, Result<Progress, NodeError>),
    ) -> Result<Progress, NodeError> {
        self.replica.put_back(replica);
        done
    }

    /// The payload's bytes on the wire.
    pub(crate) fn encode(&self, payload: &Payload) -> Vec<u8> {
        encode(
            self.replica.schema(),
            payload,
            self.node.config.codec.index_coding,
        )
    }

    /// The first stage of a state save: this window's optimizer moments and error feedback.
    fn save_training_state(&mut self, window: u64) -> Result<(), NodeError> {
        self.finish_saving()?;
        self.last_saved = Some(window);
        match &mut *self.replica {
            MinerReplica::Whole(replica) => {
                self.saving
                    .begin(&self.state, window, replica, &mut self.error_feedback)
            }
            MinerReplica::FullySharded(_) => {
                self.sharded_save_due = Some(window);
                Ok(())
            }
        }
    }

    /// The second stage: the applied base and the record, then the commit. A fully sharded
    /// node saves the whole generation now: the weights are the applied base, and the moments
    /// and error feedback have not changed since the outer step.
    fn save_weights(&mut self) -> Result<(), NodeError> {
        let position = self.position;
        let world = self.replica.owner().world;
        let record = move |digest, fully_sharded| MinerState {
            last_window: position.last_window,
            global_step: position.global_step,
            error_feedback_blake3: digest,
            // A fully sharded node writes per-rank error feedback even alone.
            ranks: (world > 1 || fully_sharded).then_some(world),
            fully_sharded,
        };
        match &mut *self.replica {
            MinerReplica::Whole(replica) => self
                .saving
                .commit_with_weights(replica, move |digest| record(digest, false)),
            MinerReplica::FullySharded(replica) => {
                let Some(generation) = self.sharded_save_due.take() else {
                    return Ok(());
                };
                let staging = self.state.begin(generation)?;
                let error_feedback = &self.error_feedback;
                let digest = staging.fill(|dir| replica.save_state(error_feedback, dir))?;
                staging.commit(&record(digest, true))
            }
        }
    }

    fn finish_saving(&mut self) -> Result<(), NodeError> {
        self.saving.finish(&mut self.error_feedback)
    }
}

/// The outside service a transient failure of following the network was about.
fn part_of(error: &NodeError) -> Part {
    match error {
        NodeError::Chain(_) => Part::Chain,
        _ => Part::Storage,
    }
}

/// Where the inner learning-rate schedule stands at the start of a window: the network's global
/// step (the outer steps taken) times the inner steps of a window, the same for every node.
pub fn network_schedule_step(global_step: u64, config: &crate::NetworkConfig) -> u64 {
    global_step * u64::from(config.training.inner_steps)
}
