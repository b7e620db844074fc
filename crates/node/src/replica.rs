//! The model every node holds, and the operations that must be identical on every replica:
//! aggregating payloads and applying them.

use templar_codec::aggregate::{clip_scale, lower_median, merge_tensor};
use templar_codec::{Payload, Schema, SparseTensor, TensorSpec, aggregate};
use templar_engine::{Batch, Device, Evaluation, Llama, NamedBuffer, Trainer, parameter_shapes};

use crate::config::NetworkConfig;
use crate::error::NodeError;
use crate::fingerprint::Fingerprint;

pub struct Replica {
    pub trainer: Trainer,
    pub schema: Schema,
    pub outer_lr: f32,
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

impl Replica {
    /// The network's initial model (the same on every node: seeded by the configuration).
    pub fn new(config: &NetworkConfig, device: Device) -> Result<Replica, NodeError> {
        let model = Llama::new(&config.model.model, config.init_seed, device)?;
        Ok(Replica {
            trainer: Trainer::new(model, config.model.train.clone())?,
            schema: schema_for(config)?,
            outer_lr: config.training.outer_lr,
        })
    }

    pub fn read(&self) -> Result<Vec<NamedBuffer>, NodeError> {
        Ok(self.trainer.model.params.read()?)
    }

    pub fn write(&mut self, buffers: &[NamedBuffer]) -> Result<(), NodeError> {
        Ok(self.trainer.model.params.write(buffers)?)
    }

    pub fn fingerprint(&self) -> Result<Fingerprint, NodeError> {
        Ok(Fingerprint::of(&self.read()?))
    }

    /// `θ ← θ − outer_lr · aggregate(payloads)`; payloads in ascending uid order. A tensor whose
    /// aggregate is not finite is left unchanged (the same decision on every replica).
    pub fn apply_aggregate(&mut self, payloads: &[&Payload]) -> Result<(), NodeError> {
        if payloads.is_empty() {
            return Ok(());
        }
        let update = self.aggregate(payloads)?;
        let refs: Vec<&[f32]> = update.iter().map(Vec::as_slice).collect();
        Ok(self
            .trainer
            .model
            .params
            .apply_update(&refs, self.outer_lr)?)
    }

    /// The dense aggregate of `payloads` (ascending uid order), with any tensor that is not
    /// finite zeroed.
    pub fn aggregate(&self, payloads: &[&Payload]) -> Result<Vec<Vec<f32>>, NodeError> {
        let mut update: Vec<Vec<f32>> = (0..self.schema.len())
            .map(|i| vec![0f32; self.schema.plan(i).numel()])
            .collect();
        aggregate(&self.schema, payloads, &mut update)
            .map_err(|e| NodeError::Codec(e.to_string()))?;
        for tensor in &mut update {
            if tensor.iter().any(|v| !v.is_finite()) {
                tensor.fill(0.0);
            }
        }
        Ok(update)
    }

    /// `θ ← θ − scale · g` where `g` is one peer's update clipped, tensor by tensor, to the lower
    /// median norm of `all` gathered payloads (what a validator measures).
    pub fn apply_one(
        &mut self,
        peer: &Payload,
        all: &[&Payload],
        scale: f32,
    ) -> Result<(), NodeError> {
        let mut update = Vec::with_capacity(self.schema.len());
        for (i, tensor) in peer.tensors.iter().enumerate() {
            let norms: Vec<f64> = all.iter().map(|p| p.tensors[i].values.norm()).collect();
            let clip = clip_scale(tensor.values.norm(), lower_median(&norms));
            let mut dense = vec![0f32; self.schema.plan(i).numel()];
            let peers: [&SparseTensor; 1] = [tensor];
            merge_tensor(&self.schema, i, &peers, &[clip], &mut dense)
                .map_err(|e| NodeError::Codec(e.to_string()))?;
            if dense.iter().any(|v| !v.is_finite()) {
                dense.fill(0.0);
            }
            update.push(dense);
        }
        let refs: Vec<&[f32]> = update.iter().map(Vec::as_slice).collect();
        Ok(self.trainer.model.params.apply_update(&refs, scale)?)
    }

    pub fn evaluate(&self, batch: &Batch, bytes: u64) -> Result<Evaluation, NodeError> {
        Ok(self.trainer.model.evaluate(batch, bytes)?)
    }
}
