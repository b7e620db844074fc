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
    /// Set when a step failed after its first collective: the ranks may now disagree (some
    /// tensors stepped, others not), so no further step is taken on this group.
    broken: bool,
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
            broken: false,
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
        if self.broken {
            return Err(EngineError::Batch(
                "an earlier step failed part-way on these ranks: rebuild the group and reload the \
                 last saved state"
                    .into(),
            ));
        }
        let (rank, world) = (self.rank(), self.world());
        let rows = batch.rows();
        if !rows.is_multiple_of(world) {
            return Err(EngineError::Batch(format!(
                "a batch of {rows} samples does not split evenly over {world} ranks"
            )));
        }
        let mine = batch.rows_slice(rank * rows / world, rows / world)?;
        let predicted = batch.predicted_positions()?;
        let local = accumulate_gradients(&mut self.model, &self.config, &mine, predicted);
        // Every rank learns whether every rank got this far, so that one rank's failure (out of
        // memory, say) stops them all at once instead of leaving the others waiting in the next
        // collective until the group's timeout.
        let all_ok = self
            .all_ranks_agree(local.is_ok())
            .inspect_err(|_| self.broken = true)?;
        let local_loss = local?;
        if !all_ok {
            return Err(EngineError::Batch(
                "another rank failed to compute its gradient; see that rank's error".into(),
            ));
        }
        let stepped = self.step_after_gradients(local_loss, predicted, rows, batch);
        self.broken = stepped.is_err();
        stepped
    }

    fn step_after_gradients(
        &mut self,
        local_loss: f64,
        predicted: i64,
        rows: usize,
        batch: &Batch,
    ) -> Result<StepStats, EngineError> {
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

    /// Whether `ok` holds on every rank (a minimum across ranks).
    fn all_ranks_agree(&mut self, ok: bool) -> Result<bool, EngineError> {
        let mut flag = Tensor::f_from_slice(&[i64::from(ok)])?.f_to_device(self.model.device())?;
        self.group.all_reduce(&mut flag, ReduceOp::Min)?;
        Ok(i64::try_from(flag.f_sum(Kind::Int64)?)? == 1)
    }

    /// Each tensor's gradient summed across ranks, of which this rank keeps its shard; `None`
    /// for a tensor without a gradient (the same on every rank: all hold the same model), which
    /// the step leaves alone as the single-process AdamW does — its collectives still run.
    fn scatter_gradients(&mut self) -> Result<Vec<Option<Tensor>>, EngineError> {
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
            shards.push(
                grad.defined()
                    .then(|| summed.f_narrow(0, 0, shard.len))
                    .transpose()?,
            );
        }
        Ok(shards)
    }

    /// The norm of the whole gradient: each rank's sum of squares over its shards, summed.
    fn global_norm(&mut self, gradients: &[Option<Tensor>]) -> Result<f64, EngineError> {
        let mut squares = Tensor::f_zeros([1], (Kind::Double, self.model.device()))?;
        for g in gradients.iter().flatten() {
            let part = g.f_square()?.f_sum(Kind::Double)?;
            squares = squares.f_add(&part)?;
        }
        self.group.all_reduce(&mut squares, ReduceOp::Sum)?;
        Ok(f64::try_from(squares.f_sqrt()?.f_sum(Kind::Double)?)?)
    }

    /// Clips, steps this rank's shards, and gathers every rank's shards into every rank's weights.
    fn update_and_gather(
        &mut self,
        mut gradients: Vec<Option<Tensor>>,
        grad_norm: f64,
        lr: f64,
    ) -> Result<(), EngineError> {
        let clip = self.config.grad_clip;
        // As torch's clamp_max: a NaN norm makes a NaN coefficient, not an unclipped step.
        let coef = clip / (grad_norm + 1e-6);
        let scale = clip > 0.0 && (coef < 1.0 || coef.is_nan());
        let constants = StepConstants::new(Hyper::of(&self.config), self.steps, lr);
        let world = self.world() as i64;
        for (index, param) in self.model.params.tensors.iter().enumerate() {
            let shard = self.shards[index];
            let flat = param.f_view([-1])?;
            let mut mine = flat.f_narrow(0, shard.start, shard.len)?;
            if let (true, Some(grad)) = (shard.len > 0, &mut gradients[index]) {
                if scale {
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
