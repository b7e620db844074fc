//! The miner: each window, train on its own assignment, publish a compressed pseudo-gradient,
//! then gather the peer set's payloads and apply the same aggregate as everyone else.

use std::path::PathBuf;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use templar_chain::Chain;
use templar_codec::{Payload, encode};
use templar_data::{DataReceipt, Split};
use templar_dist::ProcessGroup;
use templar_engine::memory::Role;
use templar_engine::{Device, Placement};
use templar_protocol::{Kind, SlotCheck};

use crate::adversary::Adversary;
use crate::behavior::Behavior;
use crate::catchup::{self, Position};
use crate::error::NodeError;
use crate::events::{Event, Part, Phase};
use crate::fingerprint::Fingerprint;
use crate::message::GradientHeader;
use crate::miner_replica::MinerReplica;
use crate::node::{Node, aggregate_inputs, now_ms};
use crate::ranks::{
    FullyShardedReplica, SavedBy, TensorOwner, load_node_state, read_error_feedback,
};
use crate::replica::{NetworkReplica, Replica};
use crate::saving::Saving;
use crate::state::StateDir;

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

pub struct Miner<C> {
    pub(crate) node: Node<C>,
    pub(crate) replica: MinerReplica,
    error_feedback: Vec<Vec<f32>>,
    state: StateDir,
    pub(crate) position: Position,
    /// Running estimate of one inner step, for stopping before the deadline.
    step_seconds: f64,
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
            replica,
            error_feedback,
            state,
            position,
            step_seconds: 0.0,
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
    pub async fn run(mut self, stop: Stop) -> Result<(), NodeError> {
        let current = self
            .node
            .clock
            .window_of(self.node.chain.block().await?.number);
        self.catch_up_or_wait(current).await?;
        let mut window = current;
        while !stop.now(window) {
            self.run_window(window).await?;
            let head = self
                .node
                .clock
                .window_of(self.node.chain.block().await?.number);
            // Windows that went by while this one ran (a slow step, a suspended process) are
            // applied before the next is trained: never train on a model that skipped windows.
            if head > window + 1 {
                self.finish_saving()?;
                self.catch_up_or_wait(head).await?;
            }
            window = head.max(window + 1);
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
            catchup::catch_up(&self.node, &mut self.replica, self.position, previous).await?;
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

    async fn run_window(&mut self, window: u64) -> Result<(), NodeError> {
        if self.behind {
            self.catch_up_or_wait(window).await?;
            if self.behind {
                // A payload trained on a model that skipped windows helps nobody, and applying
                // on top of it only moves further away: wait for a catch-up that gets there.
                self.node.events.emit(Event::Skipped {
                    window,
                    reason: format!(
                        "behind the network (the model holds window {}): waiting for a \
                         catch-up to get past the windows it could not replay",
                        self.position
                            .last_window
                            .map_or("none".into(), |w| w.to_string())
                    ),
                });
                return Ok(());
            }
        }
        let peers = self.node.window_peers(window).await?;
        let slot = self.node.slot(window).await?;
        let starts = self
            .node
            .chain
            .block_timestamp(self.node.clock.first_block(window))
            .await?;
        let train_until = self
            .node
            .chain
            .block_timestamp(self.node.clock.end_block(window))
            .await?;
        self.node.phase(window, Phase::Training);
        let span = train_until.saturating_sub(starts);
        let contribution = if self.behavior.is_honest() {
            self.train(window, self.node.uid, train_until, span)?
                .map(|(header, payload)| header.encode(&self.encode(&payload)))
                .ok_or_else(|| "no time left to train before the window ended".to_string())
        } else {
            self.misbehave(window, &peers, slot, train_until, span)
                .await?
        };
        if self
            .last_saved
            .is_none_or(|saved| window >= saved + self.state_every)
        {
            self.save_training_state(window)?;
        }
        let mut reveal = None;
        match contribution {
            Ok(message) => {
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
                // The key goes out even when the upload reported a failure: the object may
                // have landed (a failed check after the write), and a key without a payload
                // reveals nothing.
                reveal = Some(key);
                // Storage that stays down past the retries costs this window's contribution,
                // not the process: the miner still follows the network's aggregate.
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
            }
            Err(reason) => self.node.events.emit(Event::Skipped { window, reason }),
        }
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
            if let Some(key) = reveal {
                self.reveal(window, key, &peers, slot).await;
            }
        };
        let ((), verdicts) = tokio::join!(
            revealing,
            self.node.gather(window, &uids, &peers, Some(slot))
        );
        let (chosen, gathered) = aggregate_inputs(&peers.set, &verdicts);
        self.node.report(window, &verdicts, &chosen);
        let payloads: Vec<_> = gathered.iter().map(|g| &g.payload).collect();
        if !self.behavior.is_honest() {
            self.observe(&verdicts, &payloads)?;
        }
        self.saving.finish_weights()?;
        // The validators' manifest of the window before is out by now: a model that differs
        // from it is mended before this window's aggregate goes on top.
        self.check_sync(window).await?;
        if self.behind {
            // The redo or rebuild could not finish: this window is applied by the catch-up that
            // brings the model back.
            return Ok(());
        }
        self.replica.apply_aggregate(&payloads)?;
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
        Ok(())
    }

    /// Compares the model after the window before `window` with the manifest the validator with
    /// the most stake published for it. On a mismatch (this miner gathered another set: a read
    /// failed, a payload came late) it takes that window's apply back and redoes it from the
    /// manifest's included set: one window of work. Without a record of the apply, or when the
    /// redo applies a model other than the manifest's, it is rebuilt from the checkpoint and
    /// manifests; when the payloads cannot be read now, the miner is behind from the window
    /// before (see [`Miner::fall_behind`]).
    async fn check_sync(&mut self, window: u64) -> Result<(), NodeError> {
        let Some((previous_window, ours)) = self.previous.filter(|(w, _)| *w + 1 == window) else {
            return Ok(());
        };
        let Some((_, manifest)) = catchup::followed_manifest(&self.node, previous_window).await
        else {
            return Ok(());
        };
        if manifest.fingerprint == ours {
            return Ok(());
        }
        self.node.events.emit(Event::OutOfSync {
            window: previous_window,
            ours,
            manifest: manifest.fingerprint,
        });
        if !self.replica.revert_last_apply()? {
            // No record of the apply (the miner has applied nothing since it started).
            return self.rebuild(previous_window).await;
        }
        match self.redo(&manifest).await {
            Ok(()) => {
                self.position.global_step = manifest.global_step;
                self.resynced(previous_window, false);
                Ok(())
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
                Ok(())
            }
            Err(error) if error.is_transient() => {
                tracing::warn!(%error, window = previous_window, "redoing the window from its manifest failed: rebuilding");
                self.rebuild(previous_window).await
            }
            Err(error) => Err(error),
        }
    }

    /// Applies the manifest's aggregate in place of the apply just taken back.
    async fn redo(&mut self, manifest: &crate::message::WindowManifest) -> Result<(), NodeError> {
        let peers = self.node.window_peers(manifest.window).await?;
        catchup::apply_manifest(&self.node, &mut self.replica, &peers, manifest).await?;
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
        match catchup::catch_up(&self.node, &mut self.replica, start, window).await {
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
    pub(crate) fn train(
        &mut self,
        window: u64,
        data_uid: u16,
        train_until: u64,
        window_ms: u64,
    ) -> Result<Option<(GradientHeader, Payload)>, NodeError> {
        let data = &self.node.data;
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
        let started = Instant::now();
        let (mut steps, mut loss_sum, mut lr) = (0u32, 0.0, 0.0);
        // The inner schedule follows the network, not this miner's own step count: a newcomer,
        // a miner that caught up and one whose last window was cut short all train at the
        // rate of everyone else.
        self.replica.set_schedule_step(network_schedule_step(
            self.position.global_step,
            &self.node.config,
        ));
        // A part-time miner (a test behaviour) stops after its share of the inner steps.
        let step_cap =
            ((assignment.len() / data.batch_size) as f32 * self.behavior.step_share()).ceil();
        for ids in trained_on
            .chunks_exact(data.batch_size)
            .take(step_cap.max(1.0) as usize)
        {
            if now_ms() as f64 + self.step_seconds * 1500.0 > train_until as f64 {
                break;
            }
            let step_started = Instant::now();
            let (batch, _) = data.batch(Split::Train, ids)?;
            let stats = self.replica.train_step(&batch)?;
            loss_sum += stats.loss;
            if steps == 0 {
                // The window's rate: where the network's schedule stands, the same on every node
                // (later steps depend on how many this machine fits in).
                lr = stats.lr;
            }
            steps += 1;
            self.step_seconds = next_step_estimate(self.step_seconds, step_started.elapsed());
        }
        let train_seconds = started.elapsed().as_secs_f64();
        if steps == 0 {
            return Ok(None);
        }
        let window_ms = window_ms as f64;
        self.node.events.emit(Event::Trained {
            window,
            steps,
            samples: steps * data.batch_size as u32,
            mean_loss: loss_sum / f64::from(steps),
            lr,
            train_seconds,
            compute_share: if window_ms > 0.0 {
                train_seconds * 1000.0 / window_ms
            } else {
                0.0
            },
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
        match &mut self.replica {
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
        match &mut self.replica {
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

/// The running estimate of one inner step after one that took `took`. One step counts for at
/// most twice the estimate: a process suspended mid-step (a closed laptop, a preempted VM) must
/// not make the estimate so large that no window ever has time for a step again, and a machine
/// that really slowed down still moves the estimate up by half each step.
fn next_step_estimate(estimate: f64, took: std::time::Duration) -> f64 {
    let seconds = took.as_secs_f64();
    if estimate == 0.0 {
        return seconds;
    }
    0.7 * estimate + 0.3 * seconds.min(2.0 * estimate)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
}
