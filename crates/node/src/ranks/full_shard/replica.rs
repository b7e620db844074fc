//! A miner's replica on one rank of a fully sharded node: no rank ever holds the whole model.
//! The live weights are the [`FullyShardedTrainer`]'s spans; the network model (the base) is
//! held by its tensors' owners, each rank keeping whole only the tensors it owns (the round
//! robin of [`TensorOwner`]), and its error feedback likewise. Rank 0 drives the node and sends
//! the other ranks the same commands a ZeRO-2 node does; every operation then runs on every
//! rank, each on its shards, and every rank learns whether all succeeded.

use std::path::Path;

use templar_codec::{IndexCoding, Payload, Schema, decode, decode_keeping};
use templar_dist::ProcessGroup;
use templar_engine::memory::check_fits;
use templar_engine::{Batch, FullyShardedTrainer, Placement, StepStats, fill_initial_values};

use super::{
    apply_aggregate_on_shards, fingerprint_on_shards, outer_step_on_shards, owner_of, put_back,
};
use crate::config::NetworkConfig;
use crate::error::NodeError;
use crate::fingerprint::Fingerprint;
use crate::ranks::command::{Command, Records, WireBatch, apply_message};
use crate::ranks::follow::{SavedBy, absolute, read_error_feedback, write_error_feedback};
use crate::ranks::{TensorOwner, agree, agree_on, receive, tell, tell_message};
use crate::replica::{NetworkReplica, check_peers, full_shard_memory_plan, schema_for};
use crate::undo::ApplyUndo;

/// One rank's share of a fully sharded miner's replica.
pub struct FullyShardedReplica {
    trainer: FullyShardedTrainer,
    /// The network model's tensors this rank owns, whole; the others' buffers are empty.
    base: Vec<Vec<f32>>,
    base_fingerprint: Fingerprint,
    pub schema: Schema,
    coding: IndexCoding,
    outer_lr: f32,
    /// The initial model's seed and standard deviation (for a reset).
    init: (u64, f64),
    /// What the last apply changed in this rank's tensors (see [`crate::undo`]).
    last_apply: Option<ApplyUndo>,
}

impl FullyShardedReplica {
    /// The network's initial model on this rank of a node spanning `group`, its spans in
    /// `placement`: checked first against the fully sharded plan of one rank's memory, and the
    /// batch against the ranks. Every rank makes only its own spans and tensors.
    pub fn new(
        config: &NetworkConfig,
        placement: Placement,
        mut group: ProcessGroup,
    ) -> Result<FullyShardedReplica, NodeError> {
        let world = group.world();
        let rows = config.model.train.batch_size;
        if !rows.is_multiple_of(world) {
            return Err(NodeError::Config(format!(
                "a batch of {rows} samples does not split evenly over {world} ranks: choose \
                 --ranks to divide the network's batch size"
            )));
        }
        let gathered = config.gather.peer_count + config.gather.reserve_count;
        let plan = full_shard_memory_plan(config, placement, gathered, world);
        // Every rank checks before any allocates: a rank that checked after another had taken
        // its memory would refuse a node that fits.
        let fits = check_fits(&plan, placement.compute).map_err(NodeError::from);
        agree_on(&mut group, fits, "checking the node fits this machine")?;
        let model = &config.model.model;
        let trainer = FullyShardedTrainer::new(
            model,
            config.init_seed,
            config.model.train.clone(),
            group,
            placement,
        )?;
        let schema = schema_for(config)?;
        // Whole buffers for the tensors this rank owns, as its error feedback has.
        let base = owner_of(&trainer).error_feedback_of(&schema);
        let mut replica = FullyShardedReplica {
            trainer,
            base,
            base_fingerprint: Fingerprint([0; 32]),
            schema,
            coding: config.codec.index_coding,
            outer_lr: config.training.outer_lr,
            init: (config.init_seed, model.initializer_range),
            last_apply: None,
        };
        tracing::info!(
            rank = replica.trainer.rank(),
            world,
            weight_bytes = replica.trainer.param_bytes(),
            offload = placement.offload,
            "fully sharded: this rank keeps its spans of the weights and moments, and whole \
             only the network model's tensors it owns"
        );
        replica.fill_initial_base();
        replica.base_fingerprint = replica
            .trainer
            .with_group(|group| fingerprint_on_shards(group, &replica.schema, &replica.base))?;
        Ok(replica)
    }

    /// Which tensors this rank owns.
    pub fn owner(&self) -> TensorOwner {
        owner_of(&self.trainer)
    }

    /// Error feedback for this rank: zeros for its tensors, empty for the others.
    pub fn fresh_error_feedback(&self) -> Vec<Vec<f32>> {
        self.owner().error_feedback_of(&self.schema)
    }

    /// The fingerprint of the network model, the same on every rank.
    pub fn fingerprint(&self) -> Fingerprint {
        self.base_fingerprint
    }

    /// One inner step on `batch`, every rank training on its share of the rows.
    pub fn train_step(&mut self, batch: &Batch) -> Result<StepStats, NodeError> {
        let schedule_step = self.trainer.schedule_step();
        self.tell(|| Command::Train {
            batch: WireBatch::of(batch),
            schedule_step,
        })?;
        Ok(self.trainer.train_step(batch)?)
    }

    /// Puts the inner learning-rate schedule at `position` for the next step.
    pub fn set_schedule_step(&mut self, position: u64) {
        self.trainer.set_schedule_step(position);
    }

    /// The outer step ([`outer_step_on_shards`]): the payload on rank 0, `None` elsewhere.
    pub fn outer_step(
        &mut self,
        error_feedback: &mut [Vec<f32>],
    ) -> Result<Option<Payload>, NodeError> {
        self.tell(|| Command::OuterStep)?;
        let bytes = outer_step_on_shards(
            &mut self.trainer,
            &self.schema,
            self.coding,
            &self.base,
            error_feedback,
        )?;
        bytes
            .map(|bytes| {
                decode(&self.schema, &bytes).map_err(|e| {
                    NodeError::Ranks(format!(
                        "the payload the ranks assembled does not decode: {e}"
                    ))
                })
            })
            .transpose()
    }

    /// `θ ← θ − outer_lr · aggregate(payloads)` ([`apply_aggregate_on_shards`]); payloads in
    /// ascending uid order. Nothing to do for none, as in one process.
    pub fn apply_aggregate(&mut self, payloads: &[&Payload]) -> Result<(), NodeError> {
        if payloads.is_empty() {
            // Nothing changes, and taking nothing back is exact too.
            self.last_apply = Some(ApplyUndo::default());
            return Ok(());
        }
        self.last_apply = None;
        // Checked before the other ranks are told: they would apply what this rank refuses.
        check_peers(&self.schema, payloads)?;
        let (schema, coding) = (&self.schema, self.coding);
        self.trainer
            .with_group(|group| tell_message(group, || apply_message(schema, payloads, coding)))?;
        let mut undo = ApplyUndo::default();
        self.base_fingerprint = apply_aggregate_on_shards(
            &mut self.trainer,
            &self.schema,
            self.outer_lr,
            &mut self.base,
            payloads,
            &mut undo,
        )?;
        self.last_apply = Some(undo);
        Ok(())
    }

    /// Takes the last apply back, exactly, on every rank (each its own tensors); false, changing
    /// nothing, when no record is kept (the base was loaded or reset since, or already reverted).
    pub fn revert_last_apply(&mut self) -> Result<bool, NodeError> {
        let Some(undo) = self.last_apply.take() else {
            return Ok(false);
        };
        if undo == ApplyUndo::default() {
            // An apply of nothing: the other ranks were not told of it.
            return Ok(true);
        }
        self.tell(|| Command::Revert)?;
        self.revert_here(Some(undo))?;
        Ok(true)
    }

    /// This rank's part of a revert (`undo`: its record, if it kept one).
    fn revert_here(&mut self, undo: Option<ApplyUndo>) -> Result<(), NodeError> {
        let reverted = match undo {
            Some(undo) => {
                undo.revert(&mut self.base);
                Ok(())
            }
            None => Err(NodeError::Ranks(
                "rank 0 asked to take back an apply this rank has no record of".into(),
            )),
        };
        self.settle_base(reverted, "taking the last apply back")
    }

    /// On a rank other than 0: applies the payloads rank 0 sent, every tensor of each checked
    /// but only this rank's kept (it applies no others), the message dropped once decoded. A payload this rank refuses fails the step on every rank, at the agreement on
    /// the aggregate's inputs rank 0 is waiting in.
    fn apply_encoded(&mut self, encoded: Records) -> Result<(), NodeError> {
        let owner = self.owner();
        let decoded = encoded
            .iter()
            .map(|bytes| decode_keeping(&self.schema, bytes, |i| owner.owns(i)))
            .collect::<Result<Vec<_>, _>>();
        // The message goes before the step: from here on, a rank holds its tensors alone.
        drop(encoded);
        match decoded {
            Ok(payloads) => self.apply_aggregate(&payloads.iter().collect::<Vec<_>>()),
            Err(error) => {
                let reason = format!("rank 0 sent a bad payload: {error}");
                let failure = Some(reason.clone());
                self.trainer
                    .with_group(|group| agree(group, failure, "the aggregate's inputs"))?;
                Err(NodeError::Ranks(reason))
            }
        }
    }

    /// Replaces the model with the checkpoint in `dir` (the ranks share its disk): each rank
    /// reads its tensors, and the live spans are set from them.
    pub fn load_weights(&mut self, dir: &Path) -> Result<(), NodeError> {
        let dir = absolute(dir)?;
        self.tell(|| Command::Load(dir.clone()))?;
        self.last_apply = None;
        let read = self.read_base(&dir);
        self.settle_base(read, "loading the weights")
    }

    /// Back to the network's initial model (the moments are kept, as in one process).
    pub fn reset(&mut self) -> Result<(), NodeError> {
        self.tell(|| Command::Reset)?;
        self.last_apply = None;
        self.fill_initial_base();
        self.settle_base(Ok(()), "resetting the model")
    }

    /// Every rank's training state into `dir` (the node's state folder, which the ranks share):
    /// the weights and moments as one process writes them ([`FullyShardedTrainer::save`]: any
    /// number of ranks, or one process, resumes them), and each rank's error feedback beside its
    /// digest. Returns this rank's error feedback digest once every rank has written.
    pub fn save_state(
        &mut self,
        error_feedback: &[Vec<f32>],
        dir: &Path,
    ) -> Result<String, NodeError> {
        let dir = absolute(dir)?;
        self.tell(|| Command::SaveState(dir.clone()))?;
        self.trainer.save(&dir)?;
        let written = write_error_feedback(&dir, self.owner(), error_feedback);
        self.trainer
            .with_group(|group| agree_on(group, written, "saving the ranks' error feedback"))
    }

    /// Every rank's training state from `dir`, saved as `saved` says (by one process, a ZeRO-2
    /// node or a fully sharded one, of any number of ranks): the weights, this rank's moments
    /// and its tensors' error feedback.
    pub fn load_state(
        &mut self,
        error_feedback: &mut Vec<Vec<f32>>,
        dir: &Path,
        saved: &SavedBy,
    ) -> Result<(), NodeError> {
        let dir = absolute(dir)?;
        self.tell(|| Command::LoadState {
            dir: dir.clone(),
            saved: saved.clone(),
        })?;
        self.last_apply = None;
        let read = self.read_base(&dir);
        self.settle_base(read, "loading the saved weights")?;
        let numels: Vec<usize> = (0..self.schema.len())
            .map(|i| self.schema.plan(i).numel())
            .collect();
        let owner = self.owner();
        let loaded = self
            .trainer
            .load_moments(&dir)
            .map_err(NodeError::from)
            .and_then(|()| read_error_feedback(&dir, &numels, owner, saved));
        *error_feedback = self
            .trainer
            .with_group(|group| agree_on(group, loaded, "loading the ranks' training state"))?;
        Ok(())
    }

    /// On rank 0, once the node has finished cleanly: the other ranks stop.
    pub fn release(&mut self) -> Result<(), NodeError> {
        self.tell(|| Command::Stop)
    }

    /// On rank 0, sends the other ranks `command`; nothing elsewhere.
    fn tell(&mut self, command: impl FnOnce() -> Command) -> Result<(), NodeError> {
        self.trainer.with_group(|group| tell(group, command))
    }

    fn receive(&mut self) -> Result<Command, NodeError> {
        self.trainer.with_group(receive)
    }

    fn fill_initial_base(&mut self) {
        let (seed, std) = self.init;
        let owner = self.owner();
        for (i, tensor) in self.base.iter_mut().enumerate() {
            if owner.owns(i) {
                let name = &self.schema.spec(i).name;
                fill_initial_values(name, std, seed, i as u64, tensor);
            }
        }
    }

    /// This rank's tensors from the checkpoint in `dir`, every one checked before the first is
    /// read.
    fn read_base(&mut self, dir: &Path) -> Result<(), NodeError> {
        let (config, files) = templar_engine::open_weights(dir)?;
        if config != *self.trainer.config() {
            return Err(NodeError::State {
                path: dir.to_path_buf(),
                reason: "the checkpoint is of another model shape than the network's".into(),
            });
        }
        files.check(&templar_engine::model_entries(&config))?;
        let owner = self.owner();
        for (i, tensor) in self.base.iter_mut().enumerate() {
            if owner.owns(i) {
                let spec = self.schema.spec(i);
                files.read_into(&spec.name, &spec.shape, tensor)?;
            }
        }
        Ok(())
    }

    /// After every rank changed its tensors of the base (`changed`: this rank's outcome): all
    /// learn whether all did, the live spans are set from the base, and the fingerprint made.
    fn settle_base(&mut self, changed: Result<(), NodeError>, what: &str) -> Result<(), NodeError> {
        self.trainer
            .with_group(|group| agree_on(group, changed, what))?;
        let owner = self.owner();
        put_back(&mut self.trainer, owner, &self.base)?;
        self.base_fingerprint = self
            .trainer
            .with_group(|group| fingerprint_on_shards(group, &self.schema, &self.base))?;
        Ok(())
    }
}

impl NetworkReplica for FullyShardedReplica {
    fn load_weights(&mut self, dir: &Path) -> Result<(), NodeError> {
        FullyShardedReplica::load_weights(self, dir)
    }

    fn apply_aggregate(&mut self, payloads: &[&Payload]) -> Result<(), NodeError> {
        FullyShardedReplica::apply_aggregate(self, payloads)
    }

    fn fingerprint(&self) -> Fingerprint {
        self.base_fingerprint
    }

    fn revert_last_apply(&mut self) -> Result<bool, NodeError> {
        FullyShardedReplica::revert_last_apply(self)
    }
}

/// A rank other than 0 of a fully sharded miner: carries out rank 0's commands with its own
/// share of the error feedback, until rank 0 stops (or is lost: an error).
pub fn follow_on_shards(
    replica: &mut FullyShardedReplica,
    config: &NetworkConfig,
    error_feedback: &mut Vec<Vec<f32>>,
) -> Result<(), NodeError> {
    let vocab = config.model.model.vocab_size;
    loop {
        match replica.receive()? {
            Command::Train {
                batch,
                schedule_step,
            } => {
                replica.set_schedule_step(schedule_step);
                replica.train_step(&batch.batch(vocab)?)?;
            }
            Command::OuterStep => {
                replica.outer_step(error_feedback)?;
            }
            Command::Apply(encoded) => replica.apply_encoded(encoded)?,
            Command::Load(dir) => replica.load_weights(&dir)?,
            Command::Reset => replica.reset()?,
            Command::Revert => {
                let undo = replica.last_apply.take();
                replica.revert_here(undo)?;
            }
            Command::SaveState(dir) => {
                replica.save_state(error_feedback, &dir)?;
            }
            Command::LoadState { dir, saved } => {
                replica.load_state(error_feedback, &dir, &saved)?;
            }
            Command::Stop => return Ok(()),
            other => {
                return Err(NodeError::Ranks(format!(
                    "rank 0 sent the command {}, which a fully sharded miner does not take: \
                     only miners run fully sharded",
                    other.name()
                )));
            }
        }
    }
}
