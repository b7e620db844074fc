//! The model every node holds, and the operations that must be identical on every replica:
//! the outer step, aggregating payloads and applying them.
//!
//! A replica keeps the live weights on its device (what trains and what evaluation measures) and
//! one copy in host memory: the network's model after the last applied window, the *base*. Outside
//! training and judging the two are equal bit for bit. Every whole-model operation — the
//! pseudo-gradient, error feedback and compression, applying an aggregate, judging one miner's
//! update and undoing it, the fingerprint, checkpoints — runs one tensor at a time against the
//! base, so a window costs the training state, one copy of the weights and a few tensors of
//! scratch, never several copies of the model. The base lives on the host, not the device,
//! because the codec runs on the host and the device's memory is the scarcer: a GPU keeps it for
//! weights, gradients, moments and activations, and the base crosses the bus twice a window.

use std::path::Path;
use std::sync::Arc;

use rayon::prelude::*;

use templar_codec::aggregate::{clip_scale, clip_scales, merge_bands};
use templar_codec::quant::Rule;
use templar_codec::{
    CompressError, IndexCoding, Payload, Schema, SparseTensor, TensorSpec, aggregate,
    compress_tensor_in_pieces, decode,
};
use templar_dist::ProcessGroup;
use templar_engine::fit::check_fits_or_suggest;
use templar_engine::memory::{MemoryPlan, Role, WindowShape, full_shard_plan};
use templar_engine::{
    AdamW, BUCKET_VALUES, Batch, Device, Evaluation, Llama, ModelConfig, MomentsLoan, NamedBuffer,
    Placement, ShardedAdamW, StepStats, TrainConfig, fill_initial_values, load_optimizer,
    load_optimizer_from_ranks, model_entries, open_weights, parameter_shapes, save_optimizer,
    save_weights, train_step,
};

use crate::config::NetworkConfig;
use crate::error::NodeError;
use crate::fingerprint::{Fingerprint, TensorRef};
use crate::gauntlet::norms::reference_norms;
use crate::ranks::{Command, Ranks, TensorOwner, WireBatch, apply_message, candidates_message};
use crate::undo::{ApplyUndo, changes_at_most};

/// The inner optimizer of a miner: one process's AdamW, or a rank's share of a sharded one.
pub enum InnerOptimizer {
    Local(AdamW),
    Sharded(ShardedAdamW),
}

/// What an apply does to the live weights (see [`Replica::apply_aggregate_to`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveWeights {
    /// Put back to the new base: nothing trained since the outer step.
    Reset,
    /// Moved by the base's change: the steps taken since the outer step are kept.
    Carried,
}

/// The base model as a background save holds it.
pub type SharedBase = Arc<Vec<Vec<f32>>>;

pub struct Replica {
    /// The live weights.
    pub model: Llama,
    /// The network's model after the last applied window, one host buffer per parameter. Shared
    /// read-only with a background save of the weights; changing it waits for none (see
    /// [`Replica::base_mut`]).
    base: SharedBase,
    base_fingerprint: Fingerprint,
    /// The inner optimizer: miners only; a validator never trains.
    optimizer: Option<InnerOptimizer>,
    role: Role,
    /// The node's other ranks, when it spans several (see [`crate::ranks`]).
    ranks: Option<Ranks>,
    /// How this node encodes its payloads' indices.
    pub(crate) coding: IndexCoding,
    train: TrainConfig,
    pub schema: Schema,
    pub outer_lr: f32,
    /// Bytes copied device → host and host → device so far.
    transfers: (u64, u64),
    /// What the last apply changed: the model before it can be had back exactly
    /// ([`Replica::revert_last_apply`]). Any other change of the base drops it.
    last_apply: Option<ApplyUndo>,
}

/// The codec schema of the network's model: every parameter, in protocol order.
pub fn schema_for(config: &NetworkConfig) -> Result<Schema, NodeError> {
    let specs = parameter_shapes(&config.model.model)
        .into_iter()
        .map(|(name, shape)| {
            let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
            TensorSpec::new(name, &shape)
        })
        .collect();
    Schema::new(specs, config.codec).map_err(|e| NodeError::Codec(e.to_string()))
}

/// What one gathered payload holds in memory: its wire bytes and its decoded form.
pub fn payload_memory(schema: &Schema) -> u64 {
    (schema.max_payload_bytes() + schema.decoded_payload_bytes()) as u64
}

/// What a window of `role` needs for the network's model on `device`, holding `payloads`
/// gathered payloads at once (a miner its peers and reserves; a validator every candidate).
pub fn memory_plan(
    config: &NetworkConfig,
    role: Role,
    device: Device,
    payloads: usize,
) -> MemoryPlan {
    ranked_memory_plan(config, role, device, payloads, 1)
}

/// [`memory_plan`] for one rank of a node of `ranks` ranks on one machine.
pub fn ranked_memory_plan(
    config: &NetworkConfig,
    role: Role,
    device: Device,
    payloads: usize,
    ranks: usize,
) -> MemoryPlan {
    let shape = window_shape(config, device, payloads, ranks);
    MemoryPlan::new(&config.model.model, role, shape)
}

/// [`memory_plan`] for one rank of a fully sharded miner of `ranks` ranks on one machine
/// ([`templar_engine::memory::full_shard_plan`]), its spans placed as `placement` says.
pub fn full_shard_memory_plan(
    config: &NetworkConfig,
    placement: Placement,
    payloads: usize,
    ranks: usize,
) -> MemoryPlan {
    let shape = window_shape(config, placement.compute, payloads, ranks);
    full_shard_plan(&config.model.model, shape, placement.offload)
}

/// What following the network asks of a node's model, however its ranks hold it: loading a
/// checkpoint, applying a window's aggregate, and the fingerprint of the result (see
/// [`crate::catchup`]).
pub trait NetworkReplica {
    fn load_weights(&mut self, dir: &Path) -> Result<(), NodeError>;
    fn apply_aggregate(&mut self, payloads: &[&Payload]) -> Result<(), NodeError>;
    fn fingerprint(&self) -> Fingerprint;
    /// Takes the last apply back, exactly; false when no record of it is kept (a validator,
    /// or the base changed otherwise since: loaded, reset, or already reverted).
    fn revert_last_apply(&mut self) -> Result<bool, NodeError>;
}

impl NetworkReplica for Replica {
    fn load_weights(&mut self, dir: &Path) -> Result<(), NodeError> {
        Replica::load_weights(self, dir)
    }

    fn apply_aggregate(&mut self, payloads: &[&Payload]) -> Result<(), NodeError> {
        Replica::apply_aggregate(self, payloads)
    }

    fn fingerprint(&self) -> Fingerprint {
        self.base_fingerprint
    }

    fn revert_last_apply(&mut self) -> Result<bool, NodeError> {
        Replica::revert_last_apply(self)
    }
}

/// The window shape the network's configuration runs at on `device`, over `ranks` ranks.
fn window_shape(
    config: &NetworkConfig,
    device: Device,
    payloads: usize,
    ranks: usize,
) -> WindowShape {
    let (payload_bytes, payload_decoded_bytes, payload_values) =
        schema_for(config).map_or((0, 0, 0), |s| {
            (
                payload_memory(&s),
                s.decoded_payload_bytes() as u64,
                // With DCT coefficients an apply may change every value of a touched chunk:
                // no bound but the model.
                if s.config().transform == templar_codec::Transform::Dct {
                    u64::MAX
                } else {
                    s.payload_values() as u64
                },
            )
        });
    WindowShape {
        micro_batch: config.model.train.micro_batch_size,
        seq_len: config.model.train.seq_len,
        payloads,
        payload_bytes,
        payload_decoded_bytes,
        payload_values,
        device_is_host: device == Device::Cpu,
        recompute: config.model.train.recompute_activations,
        codec_threads: templar_engine::memory::codec_threads(),
        ranks,
    }
}

impl Replica {
    /// The network's initial model (the same on every node: seeded by the configuration).
    pub fn new(config: &NetworkConfig, device: Device, role: Role) -> Result<Replica, NodeError> {
        let mut replica = Replica::allocate(config, device, role, 1)?;
        replica.reset(config)?;
        Ok(replica)
    }

    /// A replica whose weights come from the checkpoint folder `dir`: no initial values are
    /// generated.
    pub fn resume(
        config: &NetworkConfig,
        device: Device,
        role: Role,
        dir: &Path,
    ) -> Result<Replica, NodeError> {
        let mut replica = Replica::allocate(config, device, role, 1)?;
        replica.load_weights(dir)?;
        Ok(replica)
    }

    /// The network's initial model as one rank of a node spanning `group`: checked against
    /// one rank's share of the memory (its ranks share the host), and a miner's optimizer is
    /// this rank's share of a sharded one from the start (a whole one would not fit where
    /// sharding is needed).
    pub fn new_ranked(
        config: &NetworkConfig,
        device: Device,
        role: Role,
        group: ProcessGroup,
    ) -> Result<Replica, NodeError> {
        let world = group.world();
        let rows = config.model.train.batch_size;
        if role == Role::Miner && !rows.is_multiple_of(world) {
            return Err(NodeError::Config(format!(
                "a batch of {rows} samples does not split evenly over {world} ranks: choose \
                 --ranks to divide the network's batch size"
            )));
        }
        let mut replica = Replica::allocate(config, device, role, world)?;
        replica.reset(config)?;
        replica.join_ranks(group)?;
        Ok(replica)
    }

    /// Zero weights of the right shapes, after checking the role fits this machine as one of
    /// `ranks` ranks.
    fn allocate(
        config: &NetworkConfig,
        device: Device,
        role: Role,
        ranks: usize,
    ) -> Result<Replica, NodeError> {
        // Checked with the peer set's payloads: a validator gathers more, as many as there are
        // candidates, which the chain decides later.
        let gathered = config.gather.peer_count + config.gather.reserve_count;
        let shape = window_shape(config, device, gathered, ranks);
        let (model, train) = (&config.model.model, &config.model.train);
        check_fits_or_suggest(model, train, role, shape, device)?;
        let model = Llama::zeros(&config.model.model, device)?;
        let schema = schema_for(config)?;
        let base: SharedBase = Arc::new(
            (0..schema.len())
                .map(|i| vec![0f32; schema.plan(i).numel()])
                .collect(),
        );
        // Over ranks, a miner's optimizer comes with the group (`join_ranks`).
        let optimizer = match role {
            Role::Miner if ranks == 1 => Some(InnerOptimizer::Local(AdamW::new(
                &model.params,
                &config.model.train,
            )?)),
            Role::Miner | Role::Validator => None,
        };
        Ok(Replica {
            model,
            base,
            base_fingerprint: Fingerprint([0; 32]),
            optimizer,
            role,
            ranks: None,
            coding: config.codec.index_coding,
            train: config.model.train.clone(),
            schema,
            outer_lr: config.training.outer_lr,
            transfers: (0, 0),
            last_apply: None,
        })
    }

    /// Replaces the model with the checkpoint in `dir`, tensor by tensor.
    /// Over a node's ranks every rank loads it, and returns once all have (the folder may be
    /// a download removed after).
    pub fn load_weights(&mut self, dir: &Path) -> Result<(), NodeError> {
        if self.ranks.is_some() {
            let dir = crate::ranks::absolute(dir)?;
            self.tell_followers(|| Command::Load(dir.clone()))?;
            let loaded = self.load_weights_here(&dir);
            match &mut self.ranks {
                Some(ranks) => ranks.agree_on(loaded, "loading the weights")?,
                None => loaded?,
            }
            return self.check_ranks_agree("loading the weights");
        }
        self.load_weights_here(dir)
    }

    fn load_weights_here(&mut self, dir: &Path) -> Result<(), NodeError> {
        let (config, files) = open_weights(dir)?;
        if config != self.model.config {
            return Err(NodeError::State {
                path: dir.to_path_buf(),
                reason: "the checkpoint is of another model shape than the network's".into(),
            });
        }
        // Every tensor is checked before the first is read, so a bad file leaves the model as it was.
        files.check(&model_entries(&config))?;
        self.last_apply = None;
        let base = base_mut(&mut self.base)?;
        for (i, tensor) in base.iter_mut().enumerate() {
            let spec = self.schema.spec(i);
            files.read_into(&spec.name, &spec.shape, tensor)?;
            send(&mut self.model, &mut self.transfers.1, i, tensor)?;
        }
        self.base_fingerprint = self.compute_fingerprint();
        Ok(())
    }

    /// Back to the network's initial model (keeping the optimizer's state).
    pub fn reset(&mut self, config: &NetworkConfig) -> Result<(), NodeError> {
        base_mut(&mut self.base)?;
        self.tell_followers(|| Command::Reset)?;
        let std = config.model.model.initializer_range;
        self.last_apply = None;
        let base = base_mut(&mut self.base)?;
        for (i, tensor) in base.iter_mut().enumerate() {
            let name = &self.schema.spec(i).name;
            fill_initial_values(name, std, config.init_seed, i as u64, tensor);
            send(&mut self.model, &mut self.transfers.1, i, tensor)?;
        }
        self.base_fingerprint = self.compute_fingerprint();
        self.check_ranks_agree("resetting the model")
    }

    /// The base model, tensor by tensor in protocol order.
    pub fn base(&self) -> &[Vec<f32>] {
        &self.base
    }

    /// The base model for a background save: no copy; the replica's next change of the base
    /// (applying an aggregate, loading, resetting) refuses until the save has let go of it.
    pub fn shared_base(&self) -> SharedBase {
        Arc::clone(&self.base)
    }

    /// The inner optimizer's moments, lent to a background save (none for a validator):
    /// training goes on, each step waiting only for moments not yet written.
    pub fn lend_moments(&mut self) -> Option<MomentsLoan> {
        match self.optimizer.as_mut()? {
            InnerOptimizer::Local(adamw) => Some(adamw.lend_moments()),
            InnerOptimizer::Sharded(_) => None,
        }
    }

    /// The parameters' names in protocol order.
    pub fn parameter_names(&self) -> Vec<String> {
        self.model.params.names().to_vec()
    }

    /// A whole copy of the base model: for tests and attack behaviours, never the node's path.
    pub fn read(&self) -> Vec<NamedBuffer> {
        self.base
            .iter()
            .enumerate()
            .map(|(i, data)| NamedBuffer {
                name: self.schema.spec(i).name.clone(),
                shape: self.schema.spec(i).shape.clone(),
                data: data.clone(),
            })
            .collect()
    }

    /// The fingerprint of the base model.
    pub fn fingerprint(&self) -> Fingerprint {
        self.base_fingerprint
    }

    fn compute_fingerprint(&self) -> Fingerprint {
        let tensors: Vec<TensorRef<'_>> = self
            .base
            .iter()
            .enumerate()
            .map(|(i, data)| TensorRef {
                name: &self.schema.spec(i).name,
                shape: &self.schema.spec(i).shape,
                data,
            })
            .collect();
        Fingerprint::of_tensors(&tensors)
    }

    /// One inner step on the live weights (miners only); over a node's ranks, each trains on
    /// its share of the batch's rows.
    pub fn train_step(&mut self, batch: &Batch) -> Result<StepStats, NodeError> {
        let schedule_step = match &self.optimizer {
            Some(InnerOptimizer::Local(adamw)) => adamw.schedule_step(),
            Some(InnerOptimizer::Sharded(sharded)) => sharded.schedule_step(),
            None => 0,
        };
        self.tell_followers(|| Command::Train {
            batch: WireBatch::of(batch),
            schedule_step,
        })?;
        let optimizer = self.optimizer.as_mut().ok_or_else(|| {
            NodeError::Config(
                "this replica has no optimizer: it is a validator's, which never trains".into(),
            )
        })?;
        Ok(match (optimizer, &mut self.ranks) {
            (InnerOptimizer::Local(adamw), _) => {
                train_step(&mut self.model, adamw, &self.train, batch)?
            }
            (InnerOptimizer::Sharded(sharded), Some(ranks)) => {
                sharded.train_step(&mut self.model, &mut ranks.group, batch)?
            }
            (InnerOptimizer::Sharded(_), None) => {
                return Err(NodeError::Config(
                    "a sharded optimizer without its ranks".into(),
                ));
            }
        })
    }

    /// Puts the inner learning-rate schedule at `position` for the next step (a miner anchors
    /// it to the network's global step each window); each step advances it by one.
    pub fn set_schedule_step(&mut self, position: u64) {
        match &mut self.optimizer {
            Some(InnerOptimizer::Local(adamw)) => adamw.set_schedule_step(position),
            Some(InnerOptimizer::Sharded(sharded)) => sharded.set_schedule_step(position),
            None => {}
        }
    }

    /// Optimizer steps taken.
    pub fn optimizer_steps(&self) -> u64 {
        match &self.optimizer {
            Some(InnerOptimizer::Local(adamw)) => adamw.steps(),
            Some(InnerOptimizer::Sharded(sharded)) => sharded.steps(),
            None => 0,
        }
    }

    /// The outer step of a miner, one tensor at a time: the pseudo-gradient `base − live` goes
    /// through error feedback and the codec, and the live tensor is put back to the base. On a
    /// codec failure the error feedback is reset and every tensor is still restored.
    ///
    /// Over a node's ranks, each rank compresses the tensors it owns with its own error feedback
    /// (the others' buffers are empty) and rank 0 returns the assembled payload
    /// ([`crate::ranks::outer_step`]).
    pub fn outer_step(&mut self, error_feedback: &mut [Vec<f32>]) -> Result<Payload, NodeError> {
        if self.ranks.is_some() {
            self.tell_followers(|| Command::OuterStep)?;
            let bytes = crate::ranks::outer_step(self, error_feedback)?.ok_or_else(|| {
                NodeError::Ranks("only rank 0 takes the outer step for the node".into())
            })?;
            return decode(&self.schema, &bytes).map_err(|e| {
                NodeError::Ranks(format!(
                    "the payload the ranks assembled does not decode: {e}"
                ))
            });
        }
        let tensors = self.outer_step_owned(error_feedback, TensorOwner::ALONE)?;
        Ok(Payload {
            tensors: tensors.into_iter().map(|(_, t)| t).collect(),
        })
    }

    /// [`Replica::outer_step`] for one rank of a node: only the tensors `owner` owns are
    /// compressed (each with its index), and only their error feedback is held (the others'
    /// buffers are empty); every live tensor is put back to the base. The tensors compressed are
    /// bit for bit those of the whole outer step.
    pub fn outer_step_owned(
        &mut self,
        error_feedback: &mut [Vec<f32>],
        owner: TensorOwner,
    ) -> Result<Vec<(usize, SparseTensor)>, NodeError> {
        if error_feedback.len() != self.base.len() {
            return Err(NodeError::Codec(format!(
                "{} error-feedback buffers for {} tensors",
                error_feedback.len(),
                self.base.len()
            )));
        }
        // Training is over for the window: its gradients are not needed until the next one.
        self.model.params.release_gradients()?;
        // Tensors in parallel, each on its own pieces of scratch: the results, and the error
        // feedback, are those of taking them one after another. One group of tensors per codec
        // thread, each group's taken in turn, so that at most a tensor per group is open at
        // once however the codec's own parallel loops steal work (the planner counts that).
        let (schema, base) = (&self.schema, &self.base);
        let groups = balanced_groups(
            self.model.params.readers(),
            error_feedback.iter_mut(),
            |i| owner.owns(i),
            templar_engine::memory::codec_threads(),
        );
        let mut compressed: Vec<(usize, Result<SparseTensor, CompressError>)> = groups
            .into_par_iter()
            .flat_map_iter(|group| {
                group.into_iter().map(|(i, live, feedback)| {
                    let fill = pseudo_gradient(schema, i, &live, &base[i]);
                    let tensor = compress_tensor_in_pieces(
                        schema,
                        i,
                        feedback,
                        MERGE_PIECE,
                        Rule::Symmetric,
                        fill,
                    );
                    (i, tensor)
                })
            })
            .collect();
        compressed.sort_by_key(|(i, _)| *i);
        self.transfers.0 += 4 * self.base.iter().map(|b| b.len() as u64).sum::<u64>();
        for i in 0..self.base.len() {
            self.send_base(i)?;
        }
        compressed
            .into_iter()
            .map(|(i, t)| t.map(|t| (i, t)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| {
                error_feedback.iter_mut().for_each(|e| e.fill(0.0));
                NodeError::Codec(format!("{error}; error feedback was reset"))
            })
    }

    /// `θ ← θ − outer_lr · aggregate(payloads)`; payloads in ascending uid order. A tensor whose
    /// aggregate is not finite is left unchanged (the same decision on every replica). The live
    /// weights become the new base.
    pub fn apply_aggregate(&mut self, payloads: &[&Payload]) -> Result<(), NodeError> {
        self.apply_aggregate_to(payloads, LiveWeights::Reset)
    }

    /// [`Replica::apply_aggregate`], saying what becomes of the live weights: with
    /// [`LiveWeights::Carried`] they move by exactly the base's change, a piece at a time, so the
    /// inner steps taken since the last outer step are kept on top of the new base (a miner
    /// training the next window while this one's aggregate was gathered). One process only: the
    /// ranks of a node are never asked to carry.
    pub fn apply_aggregate_to(
        &mut self,
        payloads: &[&Payload],
        live: LiveWeights,
    ) -> Result<(), NodeError> {
        let carry = live == LiveWeights::Carried;
        if carry && self.ranks.is_some() {
            return Err(NodeError::Config(
                "a node over ranks applies an aggregate between windows only: overlapped \
                 training needs one process"
                    .into(),
            ));
        }
        if payloads.is_empty() {
            // Nothing changes, and taking nothing back is exact too.
            self.last_apply = Some(ApplyUndo::default());
            return Ok(());
        }
        // Checked before the other ranks are told: they would apply what this rank refuses.
        check_peers(&self.schema, payloads)?;
        base_mut(&mut self.base)?;
        let (schema, coding) = (&self.schema, self.coding);
        if let Some(ranks) = &mut self.ranks {
            ranks.tell_message(|| apply_message(schema, payloads, coding))?;
        }
        let base = base_mut(&mut self.base)?;
        let mut undo = ApplyUndo::default();
        self.last_apply = None;
        // Pieces of scratch for the call, not kept: a miner trains next, at its peak.
        let (mut scratch, mut before, mut carried) = (Vec::new(), Vec::new(), Vec::new());
        for (i, tensor) in base.iter_mut().enumerate() {
            let peers: Vec<&SparseTensor> = payloads.iter().map(|p| &p.tensors[i]).collect();
            let scales = clip_scales(&peers);
            let lr = self.outer_lr;
            let record = undo.tensor(i, tensor, changes_at_most(&self.schema, &peers));
            let (model, moved) = (&mut self.model, &mut self.transfers);
            merge_in_pieces(
                &self.schema,
                &mut scratch,
                i,
                &peers,
                &scales,
                |range, update| {
                    if carry {
                        before.clear();
                        before.extend_from_slice(&tensor[range.clone()]);
                    }
                    record.subtract_scaled(range.start, &mut tensor[range.clone()], update, lr);
                    if carry {
                        carried.resize(range.len(), 0.0);
                        model.params.read_range(i, range.start, &mut carried)?;
                        moved.0 += 4 * range.len() as u64;
                        carry_live(&mut carried, &before, &tensor[range.clone()]);
                        model.params.write_range(i, range.start, &carried)?;
                        moved.1 += 4 * range.len() as u64;
                    }
                    Ok(())
                },
            )?;
            if !carry {
                send(&mut self.model, &mut self.transfers.1, i, tensor)?;
            }
        }
        self.base_fingerprint = self.compute_fingerprint();
        self.last_apply = Some(undo);
        self.check_ranks_agree("applying the aggregate")
    }

    /// Takes the last [`Replica::apply_aggregate`] back, exactly, on every rank: the model is
    /// again what it was before it (fingerprint included). False, changing nothing, when no
    /// record is kept: nothing applied yet, or the base changed otherwise since.
    pub fn revert_last_apply(&mut self) -> Result<bool, NodeError> {
        if self.last_apply.is_none() {
            return Ok(false);
        }
        // Before the record is taken: a base still lent to a save must not lose it.
        base_mut(&mut self.base)?;
        let Some(undo) = self.last_apply.take() else {
            return Ok(false);
        };
        if undo == ApplyUndo::default() {
            // An apply of nothing: the other ranks were not told of it, and keep their record
            // of the apply before, which nothing will ask them to revert.
            return Ok(true);
        }
        self.tell_followers(|| Command::Revert)?;
        let reverted = self.revert_here(undo);
        match &mut self.ranks {
            Some(ranks) => ranks.agree_on(reverted, "taking the last apply back")?,
            None => reverted?,
        }
        self.check_ranks_agree("taking the last apply back")?;
        Ok(true)
    }

    /// On a rank other than 0: the revert rank 0 asked for.
    pub(crate) fn revert_as_follower(&mut self) -> Result<(), NodeError> {
        let undo = self.last_apply.take().ok_or_else(|| {
            NodeError::Ranks("rank 0 asked to take back an apply this rank has no record of".into())
        });
        let reverted = undo.and_then(|undo| self.revert_here(undo));
        match &mut self.ranks {
            Some(ranks) => ranks.agree_on(reverted, "taking the last apply back")?,
            None => reverted?,
        }
        self.check_ranks_agree("taking the last apply back")
    }

    fn revert_here(&mut self, undo: ApplyUndo) -> Result<(), NodeError> {
        let base = base_mut(&mut self.base)?;
        for i in undo.revert(base) {
            send(&mut self.model, &mut self.transfers.1, i, &base[i])?;
        }
        self.base_fingerprint = self.compute_fingerprint();
        Ok(())
    }

    /// The dense aggregate of `payloads` (ascending uid order), with any tensor that is not
    /// finite zeroed. A whole-model buffer: for attack behaviours on test networks only.
    pub fn aggregate(&self, payloads: &[&Payload]) -> Result<Vec<Vec<f32>>, NodeError> {
        let mut update: Vec<Vec<f32>> = self.base.iter().map(|b| vec![0f32; b.len()]).collect();
        aggregate(&self.schema, payloads, &mut update)
            .map_err(|e| NodeError::Codec(e.to_string()))?;
        for tensor in &mut update {
            if tensor.iter().any(|v| !v.is_finite()) {
                tensor.fill(0.0);
            }
        }
        Ok(update)
    }

    /// Live weights `← base − scale · g`, where `g` is one peer's update clipped, tensor by tensor,
    /// to the reference norm of `all` gathered payloads and of the first `reference` of them
    /// (the paid peers'; see [`reference_norms`]): what a validator measures. Undo with
    /// [`Replica::restore`].
    ///
    /// Over a node's ranks, `all` must be what [`Replica::share_candidates`] handed the other
    /// ranks, and `peer` one of them.
    pub fn apply_one(
        &mut self,
        peer: &Payload,
        all: &[&Payload],
        reference: usize,
        scale: f32,
    ) -> Result<(), NodeError> {
        if self.leads_ranks() {
            let index = all
                .iter()
                .position(|p| std::ptr::eq(*p, peer))
                .ok_or_else(|| {
                    NodeError::Ranks("the judged payload is not one of the candidates".into())
                })?;
            check_peers(&self.schema, all)?;
            self.tell_followers(|| Command::ApplyOne {
                index,
                reference,
                scale,
            })?;
        }
        check_peers(&self.schema, std::slice::from_ref(&peer))?;
        check_peers(&self.schema, all)?;
        let medians = reference_norms(all, all.get(..reference).unwrap_or(&[]));
        let mut scratch = Vec::new();
        for (i, tensor) in peer.tensors.iter().enumerate() {
            let clip = clip_scale(tensor.values.norm(), medians[i]);
            let base = &self.base[i];
            let (model, sent) = (&mut self.model, &mut self.transfers.1);
            // The update becomes the updated values in place, a piece at a time.
            let applied = merge_in_pieces(
                &self.schema,
                &mut scratch,
                i,
                &[tensor],
                &[clip],
                |range, update| {
                    subtracted_from(&base[range.clone()], update, scale);
                    model.params.write_range(i, range.start, update)?;
                    *sent += 4 * update.len() as u64;
                    Ok(())
                },
            )?;
            if !applied {
                send(model, sent, i, base)?;
            }
        }
        Ok(())
    }

    /// Live weights `+= scale · own`, where `own` is this miner's payload as the aggregate would
    /// count it alone, a piece at a time. A miner that trains the next window before this one's
    /// aggregate is in starts from `base − outer_lr · own` (`scale = −outer_lr`): its best
    /// guess of where the network moves, so that the steps taken meanwhile do not redo the
    /// window's progress; the guess is taken back (`scale = outer_lr`) before the aggregate is
    /// applied under the live weights. Live weights are this miner's own: nothing here needs to
    /// match another replica. One process only.
    pub fn add_to_live(&mut self, own: &Payload, scale: f32) -> Result<(), NodeError> {
        if self.ranks.is_some() {
            return Err(NodeError::Config(
                "a node over ranks never trains on across an apply".into(),
            ));
        }
        check_peers(&self.schema, std::slice::from_ref(&own))?;
        let (mut scratch, mut live) = (Vec::new(), Vec::new());
        for (i, tensor) in own.tensors.iter().enumerate() {
            let (model, moved) = (&mut self.model, &mut self.transfers);
            merge_in_pieces(
                &self.schema,
                &mut scratch,
                i,
                &[tensor],
                &[1.0],
                |range, update| {
                    live.resize(range.len(), 0.0);
                    model.params.read_range(i, range.start, &mut live)?;
                    for (value, delta) in live.iter_mut().zip(update.iter()) {
                        *value += scale * delta;
                    }
                    model.params.write_range(i, range.start, &live)?;
                    moved.0 += 4 * range.len() as u64;
                    moved.1 += 4 * range.len() as u64;
                    Ok(())
                },
            )?;
        }
        Ok(())
    }

    /// Live weights back to the base, tensor by tensor.
    pub fn restore(&mut self) -> Result<(), NodeError> {
        self.tell_followers(|| Command::Restore)?;
        for i in 0..self.base.len() {
            self.send_base(i)?;
        }
        Ok(())
    }

    /// Live tensor `i` ← base tensor `i`.
    fn send_base(&mut self, i: usize) -> Result<(), NodeError> {
        send(&mut self.model, &mut self.transfers.1, i, &self.base[i])
    }

    /// Bytes copied (device → host, host → device) by this replica so far.
    pub fn transfers(&self) -> (u64, u64) {
        self.transfers
    }

    /// Loss totals of `batch` on the live weights, a micro-batch at a time.
    /// Over a node's ranks each rank measures its share of the rows and the totals are summed
    /// across ranks: every rank returns the whole batch's.
    pub fn evaluate(&mut self, batch: &Batch, bytes: u64) -> Result<Evaluation, NodeError> {
        let micro = self.train.micro_batch_size;
        let Some(ranks) = &mut self.ranks else {
            return Ok(self.model.evaluate_in(batch, bytes, micro)?);
        };
        ranks.tell(|| Command::Evaluate(WireBatch::of(batch), bytes))?;
        let (start, len) = ranks.owner.rows(batch.rows());
        let mine = if len == 0 {
            Ok(Evaluation::default())
        } else {
            batch
                .rows_slice(start, len)
                .and_then(|part| self.model.evaluate_in(&part, 0, micro))
        };
        // Every rank takes part in the sum, even one whose share failed: the others would wait.
        let mut totals = match &mine {
            Ok(measured) => [measured.loss_sum, measured.tokens as f64, 0.0],
            Err(_) => [0.0, 0.0, 1.0],
        };
        ranks
            .group
            .all_reduce_f64s(&mut totals, templar_dist::ReduceOp::Sum)
            .map_err(|e| NodeError::Ranks(format!("summing an evaluation: {e}")))?;
        mine?;
        if totals[2] > 0.0 {
            return Err(NodeError::Ranks(
                "another rank failed to evaluate its share; see its error".into(),
            ));
        }
        Ok(Evaluation {
            loss_sum: totals[0],
            tokens: totals[1] as u64,
            bytes,
        })
    }

    /// Over a node's ranks, hands the other ranks the payloads a validator is about to judge
    /// ([`Replica::apply_one`] clips each against them); nothing in one process.
    pub fn share_candidates(&mut self, all: &[&Payload]) -> Result<(), NodeError> {
        let (schema, coding) = (&self.schema, self.coding);
        match &mut self.ranks {
            Some(ranks) => ranks.tell_message(|| candidates_message(schema, all, coding)),
            None => Ok(()),
        }
    }

    fn leads_ranks(&self) -> bool {
        self.ranks.as_ref().is_some_and(|r| r.owner.rank == 0)
    }

    /// Writes the base model into `dir` as a Hugging Face checkpoint, sharded at
    /// `max_shard_bytes`; returns the files written.
    pub fn save_weights(&self, dir: &Path, max_shard_bytes: u64) -> Result<Vec<String>, NodeError> {
        save_base(dir, &self.model.config, &self.base, max_shard_bytes)
    }

    /// Writes the inner optimizer's state into `dir` (nothing for a validator).
    pub fn save_optimizer(&self, dir: &Path) -> Result<(), NodeError> {
        match &self.optimizer {
            Some(InnerOptimizer::Local(adamw)) => {
                save_optimizer(dir, adamw, self.model.params.names())?;
            }
            Some(InnerOptimizer::Sharded(sharded)) => {
                sharded.save_moments(dir)?;
            }
            None => {}
        }
        Ok(())
    }

    pub fn load_optimizer(&mut self, dir: &Path) -> Result<(), NodeError> {
        let saved_ranks = self.ranks.as_ref().map(|r| r.owner.world);
        self.load_optimizer_saved_by(dir, saved_ranks)
    }

    /// Reads the inner optimizer's state that one process (`saved_ranks` none) or a node of
    /// `saved_ranks` ranks wrote into `dir`, whatever this replica's ranks: each rank gathers
    /// its share of the moments from the saved files.
    pub fn load_optimizer_saved_by(
        &mut self,
        dir: &Path,
        saved_ranks: Option<usize>,
    ) -> Result<(), NodeError> {
        let params = &self.model.params;
        match (&mut self.optimizer, saved_ranks) {
            (Some(InnerOptimizer::Local(adamw)), None) => load_optimizer(dir, adamw, params)?,
            (Some(InnerOptimizer::Local(adamw)), Some(ranks)) => {
                load_optimizer_from_ranks(dir, adamw, params, ranks, BUCKET_VALUES)?
            }
            (Some(InnerOptimizer::Sharded(sharded)), None) => {
                sharded.load_moments_from_whole(dir, params)?
            }
            (Some(InnerOptimizer::Sharded(sharded)), Some(ranks)) => {
                sharded.load_moments_resharded(dir, ranks)?
            }
            (None, _) => {}
        }
        Ok(())
    }

    /// Makes this replica one rank of a node spanning `group` (see [`crate::ranks`]). Every
    /// rank must hold the same model (checked by fingerprint), and a miner's optimizer becomes
    /// this rank's share of a sharded one, with fresh moments (load saved ones after joining).
    pub fn join_ranks(&mut self, mut group: ProcessGroup) -> Result<(), NodeError> {
        let mine = self.fingerprint().0;
        let all = group
            .all_gather_bytes(&mine)
            .map_err(|e| NodeError::Ranks(format!("comparing the ranks' models: {e}")))?;
        if let Some(rank) = all.iter().position(|theirs| theirs[..] != mine[..]) {
            return Err(NodeError::Ranks(format!(
                "rank {rank} holds another model than rank {}: start every rank from the same \
                 configuration and state folder",
                group.rank()
            )));
        }
        if self.role == Role::Miner {
            // A whole optimizer (one trained before joining) goes before the share is made.
            self.optimizer = None;
            let sharded = ShardedAdamW::with_bucket_values(
                &self.model,
                self.train.clone(),
                &group,
                BUCKET_VALUES,
            )?;
            self.optimizer = Some(InnerOptimizer::Sharded(sharded));
        }
        self.ranks = Some(Ranks::new(group));
        Ok(())
    }

    /// On rank 0, tells the other ranks to stop, once the node has finished cleanly, and
    /// leaves the group. Not on an error: the other ranks may be inside an operation whose
    /// collectives a stop would not match; rank 0's process ending (the launcher then stops
    /// them) is the signal.
    pub fn release_ranks(&mut self) -> Result<(), NodeError> {
        if let Some(mut ranks) = self.ranks.take() {
            ranks.tell(|| Command::Stop)?;
        }
        Ok(())
    }

    /// Over a node's ranks, after a change of the base: every rank's fingerprint against rank
    /// 0's, so that replicas that drifted apart stop the node instead of training apart.
    fn check_ranks_agree(&mut self, what: &str) -> Result<(), NodeError> {
        let Some(ranks) = &mut self.ranks else {
            return Ok(());
        };
        let mine = self.base_fingerprint.0;
        let all = ranks
            .group
            .all_gather_bytes(&mine)
            .map_err(|e| NodeError::Ranks(format!("{what}: comparing the ranks' models: {e}")))?;
        match all.iter().position(|theirs| theirs[..] != all[0][..]) {
            Some(rank) => Err(NodeError::Ranks(format!(
                "{what}: rank {rank} holds another model than rank 0"
            ))),
            None => Ok(()),
        }
    }

    /// Whether this replica is one rank of a node over several.
    pub fn is_ranked(&self) -> bool {
        self.ranks.is_some()
    }

    /// Which tensors this replica compresses in the outer step.
    pub fn owner(&self) -> TensorOwner {
        self.ranks.as_ref().map_or(TensorOwner::ALONE, |r| r.owner)
    }

    /// The node's ranks, for the operations they take together.
    pub(crate) fn ranks_mut(&mut self) -> Option<&mut Ranks> {
        self.ranks.as_mut()
    }

    /// On rank 0 of a node over ranks, sends the others `command` (made only then).
    fn tell_followers(&mut self, command: impl FnOnce() -> Command) -> Result<(), NodeError> {
        match &mut self.ranks {
            Some(ranks) => ranks.tell(command),
            None => Ok(()),
        }
    }
}

/// Writes a base model into `dir` as a Hugging Face checkpoint, sharded at `max_shard_bytes`;
/// returns the files written. Needs no replica, so a background save can run it.
pub fn save_base(
    dir: &Path,
    config: &ModelConfig,
    base: &[Vec<f32>],
    max_shard_bytes: u64,
) -> Result<Vec<String>, NodeError> {
    Ok(save_weights(
        dir,
        config,
        max_shard_bytes,
        |i, start, out| {
            out.copy_from_slice(&base[i][start..start + out.len()]);
            Ok(())
        },
    )?)
}

/// The base for changing it; refused while a background save still reads it (the save must be
/// waited for first: changing the base under it would write a model that never existed).
fn base_mut(base: &mut SharedBase) -> Result<&mut Vec<Vec<f32>>, NodeError> {
    Arc::get_mut(base).ok_or_else(|| {
        NodeError::Config(
            "the base model is still being saved in the background; wait for the save before \
             changing it"
                .into(),
        )
    })
}

/// The tensors of `owned` in `threads` groups of about equal size, the largest placed first, each with its
/// live values' reader and its error feedback.
fn balanced_groups<'a, R>(
    readers: Vec<R>,
    error_feedback: impl Iterator<Item = &'a mut Vec<f32>>,
    owned: impl Fn(usize) -> bool,
    threads: usize,
) -> Vec<Vec<(usize, R, &'a mut Vec<f32>)>> {
    let mut tensors: Vec<_> = readers
        .into_iter()
        .zip(error_feedback)
        .enumerate()
        .filter(|(i, _)| owned(*i))
        .map(|(i, (live, feedback))| (i, live, feedback))
        .collect();
    tensors.sort_by_key(|(i, _, feedback)| (std::cmp::Reverse(feedback.len()), *i));
    let mut groups: Vec<(usize, Vec<_>)> = (0..threads.max(1)).map(|_| (0, Vec::new())).collect();
    for tensor in tensors {
        if let Some((load, group)) = groups.iter_mut().min_by_key(|(load, _)| *load) {
            *load += tensor.2.len();
            group.push(tensor);
        }
    }
    groups.into_iter().map(|(_, group)| group).collect()
}

/// Values a merge or the outer step holds in scratch at once: a whole-model operation costs a
/// few MB of scratch, not the largest tensor (the embedding: 2 GB at 8B).
const MERGE_PIECE: usize = 1 << 22;

/// Merges `peers`' tensor `i` (with their clip `scales`) a piece of whole bands at a time into
/// `scratch`, handing each piece to `apply` with its range of the tensor's values. A tensor whose
/// merge is not finite anywhere gets no `apply` at all (returns false): with more than one
/// piece, a first pass looks before anything is applied, so the decision is the whole tensor's.
pub(crate) fn merge_in_pieces(
    schema: &Schema,
    scratch: &mut Vec<f32>,
    i: usize,
    peers: &[&SparseTensor],
    scales: &[f32],
    apply: impl FnMut(std::ops::Range<usize>, &mut [f32]) -> Result<(), NodeError>,
) -> Result<bool, NodeError> {
    merge_in_pieces_of(MERGE_PIECE, schema, scratch, i, peers, scales, apply)
}

fn merge_in_pieces_of(
    piece: usize,
    schema: &Schema,
    scratch: &mut Vec<f32>,
    i: usize,
    peers: &[&SparseTensor],
    scales: &[f32],
    mut apply: impl FnMut(std::ops::Range<usize>, &mut [f32]) -> Result<(), NodeError>,
) -> Result<bool, NodeError> {
    let plan = schema.plan(i);
    let band = plan.band_len();
    let per_piece = (piece / band).max(1);
    let pieces: Vec<(usize, std::ops::Range<usize>)> = (0..plan.bands())
        .step_by(per_piece)
        .map(|first| {
            let bands = per_piece.min(plan.bands() - first);
            (first, first * band..(first + bands) * band)
        })
        .collect();
    let merge = |first: usize, len: usize, scratch: &mut Vec<f32>| {
        scratch.resize(len, 0.0);
        merge_bands(schema, i, peers, scales, first, scratch)
            .map_err(|e| NodeError::Codec(e.to_string()))
    };
    if pieces.len() > 1 {
        for (first, range) in &pieces {
            merge(*first, range.len(), scratch)?;
            if !scratch.iter().all(|v| v.is_finite()) {
                return Ok(false);
            }
        }
    }
    for (first, range) in pieces {
        merge(first, range.len(), scratch)?;
        if !scratch.iter().all(|v| v.is_finite()) {
            return Ok(false);
        }
        apply(range, scratch)?;
    }
    Ok(true)
}

/// Writes `data` into live tensor `i`, counting the bytes sent to the device.
fn send(model: &mut Llama, sent: &mut u64, i: usize, data: &[f32]) -> Result<(), NodeError> {
    model.params.write_one(i, data)?;
    *sent += 4 * data.len() as u64;
    Ok(())
}

/// The pseudo-gradient `base − live` of tensor `i`, a piece of the live tensor at a time: for
/// [`compress_tensor_in_pieces`], which asks for whole bands from `first_band` on.
pub(crate) fn pseudo_gradient<'a>(
    schema: &Schema,
    i: usize,
    live: &'a templar_engine::ParameterReader,
    base: &'a [f32],
) -> impl FnMut(usize, &mut [f32]) -> Result<(), String> + 'a {
    let band = schema.plan(i).band_len();
    move |first_band, out| {
        let start = first_band * band;
        live.read_range(start, out).map_err(|e| e.to_string())?;
        for (live, base) in out.iter_mut().zip(&base[start..]) {
            *live = base - *live;
        }
        Ok(())
    }
}

/// `live[j] += after[j] − before[j]`: a live piece moved by its base's change.
fn carry_live(live: &mut [f32], before: &[f32], after: &[f32]) {
    for ((live, before), after) in live.iter_mut().zip(before).zip(after) {
        *live += after - before;
    }
}

/// `values[j] −= scale · update[j]`, one multiply and one subtract per value (never fused), so
/// every replica gets bit-identical weights whatever its instruction set.
pub(crate) fn subtract_scaled(values: &mut [f32], update: &[f32], scale: f32) {
    for (value, delta) in values.iter_mut().zip(update) {
        let step = scale * delta;
        *value -= step;
    }
}

/// `update[j] ← values[j] − scale · update[j]`: [`subtract_scaled`]'s arithmetic, written over
/// the update.
fn subtracted_from(values: &[f32], update: &mut [f32], scale: f32) {
    for (delta, value) in update.iter_mut().zip(values) {
        let step = scale * *delta;
        *delta = value - step;
    }
}

pub(crate) fn check_peers(schema: &Schema, payloads: &[&Payload]) -> Result<(), NodeError> {
    match payloads
        .iter()
        .position(|p| p.tensors.len() != schema.len())
    {
        Some(p) => Err(NodeError::Codec(format!(
            "payload {p} has {} tensors, the model {}",
            payloads[p].tensors.len(),
            schema.len()
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use templar_codec::aggregate::merge_tensor;
    use templar_codec::{CodecConfig, Values, compress_tensor};

    fn schema() -> Schema {
        let config = CodecConfig {
            target_chunk: 4,
            topk: 2,
            ..CodecConfig::default()
        };
        Schema::new(vec![TensorSpec::new("w", &[12, 8])], config).unwrap()
    }

    fn payload(schema: &Schema, seed: u32) -> Payload {
        let n = schema.plan(0).numel();
        let delta: Vec<f32> = (0..n)
            .map(|j| ((j as u32).wrapping_mul(2_654_435_761) ^ seed) % 1000)
            .map(|v| v as f32 / 500.0 - 1.0)
            .collect();
        let mut ef = vec![0.0; n];
        let tensor = compress_tensor(schema, 0, &mut ef, &delta, Rule::Symmetric).unwrap();
        Payload {
            tensors: vec![tensor],
        }
    }

    #[test]
    fn pieces_apply_what_the_whole_merge_gives_and_a_bad_tensor_not_at_all() {
        let schema = schema();
        let payloads = [payload(&schema, 1), payload(&schema, 2)];
        let peers: Vec<&SparseTensor> = payloads.iter().map(|p| &p.tensors[0]).collect();
        let scales = clip_scales(&peers);
        let mut whole = vec![0.0; 96];
        merge_tensor(&schema, 0, &peers, &scales, &mut whole).unwrap();
        // Bands of 4 rows × 8 = 32 values: pieces of one band each, three of them.
        let mut pieced = vec![f32::NAN; 96];
        let mut calls = 0;
        let mut scratch = Vec::new();
        let applied = merge_in_pieces_of(32, &schema, &mut scratch, 0, &peers, &scales, |r, u| {
            pieced[r].copy_from_slice(u);
            calls += 1;
            Ok(())
        })
        .unwrap();
        assert!(applied);
        assert_eq!(calls, 3);
        assert_eq!(scratch.len(), 32, "scratch is one piece, not the tensor");
        assert_eq!(whole, pieced);

        // A value that is not finite in the last piece stops every piece, the first included.
        let mut bad = payloads[1].clone();
        let mut values = bad.tensors[0].values.to_f32();
        *values.last_mut().unwrap() = f32::INFINITY;
        bad.tensors[0].values = Values::F32(values);
        let peers = [&payloads[0].tensors[0], &bad.tensors[0]];
        let mut calls = 0;
        let applied =
            merge_in_pieces_of(32, &schema, &mut scratch, 0, &peers, &[1.0, 1.0], |_, _| {
                calls += 1;
                Ok(())
            })
            .unwrap();
        assert!(!applied);
        assert_eq!(calls, 0);
    }

    /// Greedy by size, largest first: lengths 10, 3, 8, 1 on two threads give {10, 1} and
    /// {8, 3}, eleven values each; a group keeps each tensor's own index and error feedback.
    #[test]
    fn tensors_are_grouped_by_size_for_the_codec_threads() {
        let mut feedback: Vec<Vec<f32>> = [10, 3, 8, 1].iter().map(|&n| vec![0.0; n]).collect();
        let readers = vec!['a', 'b', 'c', 'd'];
        let groups = balanced_groups(readers, feedback.iter_mut(), |_| true, 2);
        let shape: Vec<Vec<(usize, char, usize)>> = groups
            .iter()
            .map(|g| g.iter().map(|(i, r, f)| (*i, *r, f.len())).collect())
            .collect();
        assert_eq!(
            shape,
            vec![
                vec![(0, 'a', 10), (3, 'd', 1)],
                vec![(2, 'c', 8), (1, 'b', 3)]
            ]
        );
        assert_eq!(
            balanced_groups(vec!['a'], feedback.iter_mut(), |_| true, 0).len(),
            1
        );
    }
}
