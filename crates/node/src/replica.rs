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

use templar_codec::aggregate::{clip_scale, lower_median, merge_tensor};
use templar_codec::quant::Rule;
use templar_codec::{Payload, Schema, SparseTensor, TensorSpec, aggregate, compress_tensor};
use templar_engine::memory::{MemoryPlan, Role, WindowShape, check_fits};
use templar_engine::{
    AdamW, Batch, Device, Evaluation, Llama, NamedBuffer, StepStats, TrainConfig,
    fill_initial_values, load_optimizer, model_entries, open_weights, parameter_shapes,
    save_optimizer, save_weights, train_step,
};

use crate::config::NetworkConfig;
use crate::error::NodeError;
use crate::fingerprint::{Fingerprint, TensorRef};

pub struct Replica {
    /// The live weights.
    pub model: Llama,
    /// The network's model after the last applied window, one host buffer per parameter.
    base: Vec<Vec<f32>>,
    base_fingerprint: Fingerprint,
    /// The inner optimizer: miners only; a validator never trains.
    optimizer: Option<AdamW>,
    train: TrainConfig,
    pub schema: Schema,
    pub outer_lr: f32,
    /// One tensor of scratch, reused.
    scratch: Vec<f32>,
    /// Bytes copied device → host and host → device so far.
    transfers: (u64, u64),
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

/// What a window of `role` needs for the network's model on `device`, holding `payloads`
/// gathered payloads at once (a miner its peers and reserves; a validator every candidate).
pub fn memory_plan(
    config: &NetworkConfig,
    role: Role,
    device: Device,
    payloads: usize,
) -> MemoryPlan {
    let payload_bytes = schema_for(config).map_or(0, |s| s.max_payload_bytes() as u64);
    let shape = WindowShape {
        micro_batch: config.model.train.micro_batch_size,
        seq_len: config.model.train.seq_len,
        payloads,
        payload_bytes,
        device_is_host: device == Device::Cpu,
    };
    MemoryPlan::new(&config.model.model, role, shape)
}

impl Replica {
    /// The network's initial model (the same on every node: seeded by the configuration).
    pub fn new(config: &NetworkConfig, device: Device, role: Role) -> Result<Replica, NodeError> {
        let mut replica = Replica::allocate(config, device, role)?;
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
        let mut replica = Replica::allocate(config, device, role)?;
        replica.load_weights(dir)?;
        Ok(replica)
    }

    /// Zero weights of the right shapes, after checking the role fits this machine.
    fn allocate(config: &NetworkConfig, device: Device, role: Role) -> Result<Replica, NodeError> {
        // Checked with the peer set's payloads: a validator gathers more, as many as there are
        // candidates, which the chain decides later.
        let gathered = config.gather.peer_count + config.gather.reserve_count;
        check_fits(&memory_plan(config, role, device, gathered), device)?;
        let model = Llama::zeros(&config.model.model, device)?;
        let schema = schema_for(config)?;
        let base: Vec<Vec<f32>> = (0..schema.len())
            .map(|i| vec![0f32; schema.plan(i).numel()])
            .collect();
        let optimizer = match role {
            Role::Miner => Some(AdamW::new(&model.params, &config.model.train)?),
            Role::Validator => None,
        };
        Ok(Replica {
            model,
            base,
            base_fingerprint: Fingerprint([0; 32]),
            optimizer,
            train: config.model.train.clone(),
            schema,
            outer_lr: config.training.outer_lr,
            scratch: Vec::new(),
            transfers: (0, 0),
        })
    }

    /// Replaces the model with the checkpoint in `dir`, tensor by tensor.
    pub fn load_weights(&mut self, dir: &Path) -> Result<(), NodeError> {
        let (config, files) = open_weights(dir)?;
        if config != self.model.config {
            return Err(NodeError::State {
                path: dir.to_path_buf(),
                reason: "the checkpoint is of another model shape than the network's".into(),
            });
        }
        // Every tensor is checked before the first is read, so a bad file leaves the model as it was.
        files.check(&model_entries(&config))?;
        for i in 0..self.base.len() {
            let spec = self.schema.spec(i);
            files.read_into(&spec.name, &spec.shape, &mut self.base[i])?;
            self.send_base(i)?;
        }
        self.base_fingerprint = self.compute_fingerprint();
        Ok(())
    }

    /// Back to the network's initial model (keeping the optimizer's state).
    pub fn reset(&mut self, config: &NetworkConfig) -> Result<(), NodeError> {
        let std = config.model.model.initializer_range;
        for i in 0..self.base.len() {
            let name = &self.schema.spec(i).name;
            fill_initial_values(name, std, config.init_seed, i as u64, &mut self.base[i]);
            self.send_base(i)?;
        }
        self.base_fingerprint = self.compute_fingerprint();
        Ok(())
    }

    /// The base model, tensor by tensor in protocol order.
    pub fn base(&self) -> &[Vec<f32>] {
        &self.base
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

    /// One inner step on the live weights (miners only).
    pub fn train_step(&mut self, batch: &Batch) -> Result<StepStats, NodeError> {
        let optimizer = self
            .optimizer
            .as_mut()
            .ok_or_else(|| NodeError::Config("a validator's replica has no optimizer".into()))?;
        Ok(train_step(&mut self.model, optimizer, &self.train, batch)?)
    }

    /// Optimizer steps taken.
    pub fn optimizer_steps(&self) -> u64 {
        self.optimizer.as_ref().map_or(0, AdamW::steps)
    }

    /// The outer step of a miner, one tensor at a time: the pseudo-gradient `base − live` goes
    /// through error feedback and the codec, and the live tensor is put back to the base. On a
    /// codec failure the error feedback is reset and every tensor is still restored.
    pub fn outer_step(&mut self, error_feedback: &mut [Vec<f32>]) -> Result<Payload, NodeError> {
        if error_feedback.len() != self.base.len() {
            return Err(NodeError::Codec(format!(
                "{} error-feedback buffers for {} tensors",
                error_feedback.len(),
                self.base.len()
            )));
        }
        let mut tensors = Vec::with_capacity(self.base.len());
        let mut failure = None;
        for (i, feedback) in error_feedback.iter_mut().enumerate() {
            if failure.is_none() {
                self.scratch.resize(self.base[i].len(), 0.0);
                self.model.params.read_one(i, &mut self.scratch)?;
                self.transfers.0 += 4 * self.scratch.len() as u64;
                for (live, base) in self.scratch.iter_mut().zip(&self.base[i]) {
                    *live = base - *live;
                }
                match compress_tensor(&self.schema, i, feedback, &self.scratch, Rule::Symmetric) {
                    Ok(tensor) => tensors.push(tensor),
                    Err(error) => failure = Some(error),
                }
            }
            self.send_base(i)?;
        }
        if let Some(error) = failure {
            error_feedback.iter_mut().for_each(|e| e.fill(0.0));
            return Err(NodeError::Codec(format!(
                "{error}; error feedback was reset"
            )));
        }
        Ok(Payload { tensors })
    }

    /// `θ ← θ − outer_lr · aggregate(payloads)`; payloads in ascending uid order. A tensor whose
    /// aggregate is not finite is left unchanged (the same decision on every replica).
    pub fn apply_aggregate(&mut self, payloads: &[&Payload]) -> Result<(), NodeError> {
        if payloads.is_empty() {
            return Ok(());
        }
        check_peers(&self.schema, payloads)?;
        for i in 0..self.base.len() {
            self.scratch.resize(self.base[i].len(), 0.0);
            let tensors: Vec<&SparseTensor> = payloads.iter().map(|p| &p.tensors[i]).collect();
            templar_codec::aggregate_tensor(&self.schema, i, &tensors, &mut self.scratch)
                .map_err(|e| NodeError::Codec(e.to_string()))?;
            if self.scratch.iter().all(|v| v.is_finite()) {
                subtract_scaled(&mut self.base[i], &self.scratch, self.outer_lr);
            }
            self.send_base(i)?;
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
    /// to the lower median norm of `all` gathered payloads (what a validator measures). Undo with
    /// [`Replica::restore`].
    pub fn apply_one(
        &mut self,
        peer: &Payload,
        all: &[&Payload],
        scale: f32,
    ) -> Result<(), NodeError> {
        check_peers(&self.schema, std::slice::from_ref(&peer))?;
        check_peers(&self.schema, all)?;
        let mut updated = Vec::new();
        for (i, tensor) in peer.tensors.iter().enumerate() {
            let norms: Vec<f64> = all.iter().map(|p| p.tensors[i].values.norm()).collect();
            let clip = clip_scale(tensor.values.norm(), lower_median(&norms));
            self.scratch.resize(self.base[i].len(), 0.0);
            let peers: [&SparseTensor; 1] = [tensor];
            merge_tensor(&self.schema, i, &peers, &[clip], &mut self.scratch)
                .map_err(|e| NodeError::Codec(e.to_string()))?;
            updated.clear();
            updated.extend_from_slice(&self.base[i]);
            if self.scratch.iter().all(|v| v.is_finite()) {
                subtract_scaled(&mut updated, &self.scratch, scale);
            }
            send(&mut self.model, &mut self.transfers.1, i, &updated)?;
        }
        Ok(())
    }

    /// Live weights back to the base, tensor by tensor.
    pub fn restore(&mut self) -> Result<(), NodeError> {
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
    pub fn evaluate(&self, batch: &Batch, bytes: u64) -> Result<Evaluation, NodeError> {
        Ok(self
            .model
            .evaluate_in(batch, bytes, self.train.micro_batch_size)?)
    }

    /// Writes the base model into `dir` as a Hugging Face checkpoint, sharded at
    /// `max_shard_bytes`; returns the files written.
    pub fn save_weights(&self, dir: &Path, max_shard_bytes: u64) -> Result<Vec<String>, NodeError> {
        Ok(save_weights(
            dir,
            &self.model.config,
            max_shard_bytes,
            |i, out| {
                out.copy_from_slice(&self.base[i]);
                Ok(())
            },
        )?)
    }

    /// Writes the inner optimizer's state into `dir` (nothing for a validator).
    pub fn save_optimizer(&self, dir: &Path) -> Result<(), NodeError> {
        if let Some(optimizer) = &self.optimizer {
            save_optimizer(dir, optimizer, &self.model.params)?;
        }
        Ok(())
    }

    pub fn load_optimizer(&mut self, dir: &Path) -> Result<(), NodeError> {
        if let Some(optimizer) = &mut self.optimizer {
            load_optimizer(dir, optimizer, &self.model.params)?;
        }
        Ok(())
    }
}

/// Writes `data` into live tensor `i`, counting the bytes sent to the device.
fn send(model: &mut Llama, sent: &mut u64, i: usize, data: &[f32]) -> Result<(), NodeError> {
    model.params.write_one(i, data)?;
    *sent += 4 * data.len() as u64;
    Ok(())
}

/// `values[j] −= scale · update[j]`, one multiply and one subtract per value (never fused), so
/// every replica gets bit-identical weights whatever its instruction set.
fn subtract_scaled(values: &mut [f32], update: &[f32], scale: f32) {
    for (value, delta) in values.iter_mut().zip(update) {
        let step = scale * delta;
        *value -= step;
    }
}

fn check_peers(schema: &Schema, payloads: &[&Payload]) -> Result<(), NodeError> {
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
