//! One inner-optimizer step over the ranks of a process group, with gradients and optimizer
//! state sharded (ZeRO stage 2): each rank computes the gradient of its own rows of the batch;
//! each tensor's gradient is reduce-scattered, so that each rank holds the sum over ranks of one
//! contiguous shard of it; the global gradient norm is summed across ranks; each rank updates its
//! shards with its own AdamW moments (a world-th of the whole) and the updated shards are
//! all-gathered into every rank's weights. The arithmetic is the single process's up to the order
//! in which gradients are summed.

use tch::{Kind, Tensor};
use templar_dist::{ProcessGroup, ReduceOp};

use crate::config::TrainConfig;
use crate::error::EngineError;
use crate::model::Llama;
use crate::optim::{Hyper, StepConstants, learning_rate};
use crate::train::{Batch, StepStats, accumulate_gradients};

/// The part of a tensor of `numel` values that `rank` of `world` owns: the tensor, padded to a
/// multiple of `world`, cut into `world` spans of equal length; the last owners' spans may hold
/// fewer real values, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// First owned value.
    pub start: i64,
    /// Owned values (0 when the tensor is smaller than the rank's span start).
    pub len: i64,
    /// Every rank's span: ⌈numel / world⌉.
    pub span: i64,
}

impl Shard {
    pub fn of(numel: i64, rank: usize, world: usize) -> Shard {
        let world = world.max(1) as i64;
        let span = (numel + world - 1) / world;
        let start = (rank as i64 * span).min(numel);
        Shard {
            start,
            len: (numel - start).clamp(0, span),
            span,
        }
    }
}

/// A model trained by one rank of a process group; every rank holds the whole model and the
/// same batches, and trains on its share of each.
pub struct ShardedTrainer {
    pub model: Llama,
    pub config: TrainConfig,
    group: ProcessGroup,
    shards: Vec<Shard>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    steps: u64,
}

impl ShardedTrainer {
    /// Every rank must start from the same weights (the same seed, or a checkpoint).
    pub fn new(
        model: Llama,
        config: TrainConfig,
        group: ProcessGroup,
    ) -> Result<Self, EngineError> {
        let (rank, world) = (group.rank(), group.world());
        let shards: Vec<Shard> = model
            .params
            .tensors
            .iter()
            .map(|t| Shard::of(t.numel() as i64, rank, world))
            .collect();
        let zeros = || -> Result<Vec<Tensor>, EngineError> {
            shards
                .iter()
                .map(|s| Ok(Tensor::f_zeros([s.len], (Kind::Float, model.device()))?))
                .collect()
        };
        Ok(ShardedTrainer {
            exp_avg: zeros()?,
            exp_avg_sq: zeros()?,
            shards,
            model,
            config,
            group,
            steps: 0,
        })
    }

    pub fn rank(&self) -> usize {
        self.group.rank()
    }

    pub fn world(&self) -> usize {
        self.group.world()
    }

    /// Values of AdamW state this rank holds per moment: about a world-th of the parameters.
    pub fn moment_values(&self) -> i64 {
        self.shards.iter().map(|s| s.len).sum()
    }

    /// One optimizer step over `batch`, the whole batch as every rank sees it: this rank trains
    /// on its world-th of the rows (the row count must divide evenly). Every rank returns the
    /// same statistics, for the whole batch.
    pub fn train_step(&mut self, batch: &Batch) -> Result<StepStats, EngineError> {
        let (rank, world) = (self.rank(), self.world());
        let rows = batch.rows();
        if !rows.is_multiple_of(world) {
            return Err(EngineError::Batch(format!(
                "a batch of {rows} samples does not split evenly over {world} ranks"
            )));
        }
        let mine = batch.rows_slice(rank * rows / world, rows / world)?;
        let predicted = batch.predicted_positions()?;
        let local_loss = accumulate_gradients(&mut self.model, &self.config, &mine, predicted)?;
        let gradients = tch::no_grad(|| self.scatter_gradients())?;
        let grad_norm = tch::no_grad(|| self.global_norm(&gradients))?;
        let lr = learning_rate(&self.config, self.steps);
        self.steps += 1;
        tch::no_grad(|| self.update_and_gather(gradients, grad_norm, lr))?;
        let loss = self.sum_across_ranks(local_loss)? / predicted as f64;
        Ok(StepStats {
            loss,
            grad_norm,
            lr,
            tokens: rows * batch.input_ids.size()[1] as usize,
        })
    }

    /// Each tensor's gradient summed across ranks, of which this rank keeps its shard.
    fn scatter_gradients(&mut self) -> Result<Vec<Tensor>, EngineError> {
        let world = self.world() as i64;
        let mut shards = Vec::with_capacity(self.shards.len());
        for (param, shard) in self.model.params.tensors.iter().zip(&self.shards) {
            let numel = param.numel() as i64;
            let grad = param.grad();
            let padded = Tensor::f_zeros([shard.span * world], (Kind::Float, param.device()))?;
            if grad.defined() {
                padded
                    .f_narrow(0, 0, numel)?
                    .f_copy_(&grad.f_reshape([-1])?)?;
            }
            let mut summed = Tensor::f_zeros([shard.span], (Kind::Float, param.device()))?;
            self.group
                .reduce_scatter(&mut summed, &padded, ReduceOp::Sum)?;
            shards.push(summed.f_narrow(0, 0, shard.len)?);
        }
        Ok(shards)
    }

    /// The norm of the whole gradient: each rank's sum of squares over its shards, summed.
    fn global_norm(&mut self, gradients: &[Tensor]) -> Result<f64, EngineError> {
        let mut squares = Tensor::f_zeros([1], (Kind::Double, self.model.device()))?;
        for g in gradients {
            let part = g.f_square()?.f_sum(Kind::Double)?;
            squares = squares.f_add(&part)?;
        }
        self.group.all_reduce(&mut squares, ReduceOp::Sum)?;
        Ok(f64::try_from(squares.f_sqrt()?.f_sum(Kind::Double)?)?)
    }

    /// Clips, steps this rank's shards, and gathers every rank's shards into every rank's weights.
    fn update_and_gather(
        &mut self,
        mut gradients: Vec<Tensor>,
        grad_norm: f64,
        lr: f64,
    ) -> Result<(), EngineError> {
        let clip = self.config.grad_clip;
        let coef = if clip > 0.0 {
            (clip / (grad_norm + 1e-6)).min(1.0)
        } else {
            1.0
        };
        let constants = StepConstants::new(Hyper::of(&self.config), self.steps, lr);
        let world = self.world() as i64;
        for (index, param) in self.model.params.tensors.iter().enumerate() {
            let shard = self.shards[index];
            let flat = param.f_view([-1])?;
            let mut mine = flat.f_narrow(0, shard.start, shard.len)?;
            if shard.len > 0 {
                let grad = &mut gradients[index];
                if coef < 1.0 {
                    let _ = grad.f_mul_scalar_(coef as f32 as f64)?;
                }
                constants.update(
                    &mut mine,
                    grad,
                    &mut self.exp_avg[index],
                    &mut self.exp_avg_sq[index],
                )?;
            }
            let contribution = Tensor::f_zeros([shard.span], (Kind::Float, param.device()))?;
            contribution.f_narrow(0, 0, shard.len)?.f_copy_(&mine)?;
            let mut gathered =
                Tensor::f_zeros([shard.span * world], (Kind::Float, param.device()))?;
            self.group.all_gather(&mut gathered, &contribution)?;
            let numel = flat.numel() as i64;
            flat.shallow_clone()
                .f_copy_(&gathered.f_narrow(0, 0, numel)?)?;
        }
        Ok(())
    }

    fn sum_across_ranks(&mut self, value: f64) -> Result<f64, EngineError> {
        let mut total = Tensor::f_from_slice(&[value])?.f_to_device(self.model.device())?;
        self.group.all_reduce(&mut total, ReduceOp::Sum)?;
        Ok(f64::try_from(total.f_sum(Kind::Double)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::Shard;

    #[test]
    fn shards_cover_a_tensor_once_in_rank_order() {
        // 10 values over 4 ranks: spans of 3, the last rank holds the one value left.
        let shards: Vec<Shard> = (0..4).map(|r| Shard::of(10, r, 4)).collect();
        let spans: Vec<(i64, i64)> = shards.iter().map(|s| (s.start, s.len)).collect();
        assert_eq!(spans, vec![(0, 3), (3, 3), (6, 3), (9, 1)]);
        // 2 values over 4 ranks: the last two own nothing.
        let small: Vec<i64> = (0..4).map(|r| Shard::of(2, r, 4).len).collect();
        assert_eq!(small, vec![1, 1, 0, 0]);
        assert_eq!(
            Shard::of(8, 0, 1),
            Shard {
                start: 0,
                len: 8,
                span: 8
            }
        );
    }
}
