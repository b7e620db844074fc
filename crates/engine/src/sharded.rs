//! One inner-optimizer step over the ranks of a process group, with gradients and optimizer
//! state sharded (ZeRO stage 2): each rank computes the gradient of its own rows of the batch;
//! the gradients, laid end to end in buckets (see `buckets`), are reduce-scattered a bucket at a
//! time, so that each rank holds the sum over ranks of one contiguous span of each bucket; the
//! global gradient norm is summed across ranks; each rank updates its spans with its own AdamW
//! moments (a world-th of the whole) and the updated spans are all-gathered into every rank's
//! weights. The arithmetic is the single process's up to the order
//! in which gradients are summed.

use tch::{Device, Kind, Tensor};
use templar_dist::{ProcessGroup, ReduceOp};

use crate::buckets::{BUCKET_VALUES, Bucket, Placed, Segment, buckets};
use crate::config::TrainConfig;
use crate::error::EngineError;
use crate::model::Llama;
use crate::optim::{Hyper, STEP_PIECE, Schedule, StepConstants, learning_rate};
use crate::train::{Batch, StepStats, accumulate_gradients};

/// A model trained by one rank of a process group; every rank holds the whole model and the
/// same batches, and trains on its share of each.
pub struct ShardedTrainer {
    pub model: Llama,
    pub optimizer: ShardedAdamW,
    pub group: ProcessGroup,
}

impl ShardedTrainer {
    /// Every rank must start from the same weights (the same seed, or a checkpoint; or see
    /// [`ShardedTrainer::broadcast_weights`]).
    pub fn new(
        model: Llama,
        config: TrainConfig,
        group: ProcessGroup,
    ) -> Result<Self, EngineError> {
        Self::with_bucket_values(model, config, group, BUCKET_VALUES)
    }

    /// [`ShardedTrainer::new`] with buckets of at most `bucket_values` values (tests use small
    /// ones, to cut tensors across ranks and buckets).
    pub fn with_bucket_values(
        model: Llama,
        config: TrainConfig,
        group: ProcessGroup,
        bucket_values: i64,
    ) -> Result<Self, EngineError> {
        let optimizer = ShardedAdamW::with_bucket_values(&model, config, &group, bucket_values)?;
        Ok(ShardedTrainer {
            model,
            optimizer,
            group,
        })
    }

    pub fn train_step(&mut self, batch: &Batch) -> Result<StepStats, EngineError> {
        self.optimizer
            .train_step(&mut self.model, &mut self.group, batch)
    }

    pub fn broadcast_weights(&mut self) -> Result<(), EngineError> {
        self.optimizer
            .broadcast_weights(&self.model, &mut self.group)
    }

    pub fn moment_values(&self) -> i64 {
        self.optimizer.moment_values()
    }
}

/// What decides a rank's buckets: the tensors' sizes in order, the rank, the world size and
/// the most values a bucket holds.
pub(crate) struct Layout {
    pub numels: Vec<i64>,
    pub rank: usize,
    pub world: usize,
    pub bucket_values: i64,
}

/// AdamW over the ranks of a process group, for a model and a group held apart (a node keeps its
/// optimizer beside its replica's weights, and uses the group for more than training): gradients
/// reduce-scattered, moments sharded, weights gathered. Every call must get the same group.
pub struct ShardedAdamW {
    config: TrainConfig,
    rank: usize,
    world: usize,
    /// Values updated at once.
    piece: i64,
    pub(crate) buckets: Vec<Bucket>,
    /// The tensors' sizes and the bucket size the buckets were made from: what it takes to lay
    /// them out for another world size (loading moments saved by another number of ranks).
    pub(crate) numels: Vec<i64>,
    pub(crate) bucket_values: i64,
    /// Per bucket, this rank's span of it: the summed gradient, then the AdamW moments.
    pub(crate) gradients: Vec<Tensor>,
    pub(crate) exp_avg: Vec<Tensor>,
    pub(crate) exp_avg_sq: Vec<Tensor>,
    /// A whole (padded) bucket, reused by every bucket: gradients in, weights gathered out.
    pub(crate) scratch: Tensor,
    steps: u64,
    schedule: Schedule,
    /// Set when a step failed after its first collective: the ranks may now disagree (some
    /// tensors stepped, others not), so no further step is taken on this group.
    broken: bool,
}

impl ShardedAdamW {
    /// State for `model`'s tensors, in buckets of at most `bucket_values` values.
    pub fn with_bucket_values(
        model: &Llama,
        config: TrainConfig,
        group: &ProcessGroup,
        bucket_values: i64,
    ) -> Result<Self, EngineError> {
        let numels: Vec<i64> = model
            .params
            .tensors
            .iter()
            .map(|t| t.numel() as i64)
            .collect();
        let layout = Layout {
            numels,
            rank: group.rank(),
            world: group.world(),
            bucket_values,
        };
        Self::for_layout(layout, config, model.device())
    }

    /// State for tensors of `layout.numels` as `layout.rank` of `layout.world` holds them.
    pub(crate) fn for_layout(
        layout: Layout,
        config: TrainConfig,
        device: Device,
    ) -> Result<Self, EngineError> {
        let layout = Layout {
            bucket_values: layout.bucket_values.max(1),
            ..layout
        };
        let buckets = buckets(
            &layout.numels,
            layout.rank,
            layout.world,
            layout.bucket_values,
        );
        Self::for_buckets(buckets, layout, config, (device, device))
    }

    /// State for `buckets` of the tensors `layout` describes (kept, to lay the tensors out for
    /// another world size), its spans on `device` and its scratch on `scratch_device` (where
    /// gradients are made).
    pub(crate) fn for_buckets(
        buckets: Vec<Bucket>,
        layout: Layout,
        config: TrainConfig,
        (device, scratch_device): (Device, Device),
    ) -> Result<Self, EngineError> {
        let Layout {
            numels,
            rank,
            world,
            bucket_values,
        } = layout;
        let options = (Kind::Float, device);
        let spans = || -> Result<Vec<Tensor>, EngineError> {
            buckets
                .iter()
                .map(|b| Ok(Tensor::f_zeros([b.span], options)?))
                .collect()
        };
        let largest = buckets.iter().map(|b| b.padded(world)).max().unwrap_or(0);
        Ok(ShardedAdamW {
            gradients: spans()?,
            exp_avg: spans()?,
            exp_avg_sq: spans()?,
            scratch: Tensor::f_zeros([largest], (Kind::Float, scratch_device))?,
            buckets,
            numels,
            bucket_values,
            config,
            rank,
            world,
            piece: STEP_PIECE,
            steps: 0,
            schedule: Schedule::default(),
            broken: false,
        })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub(crate) fn config(&self) -> &TrainConfig {
        &self.config
    }

    pub fn world(&self) -> usize {
        self.world
    }

    /// Updates at most `values` values at once (tests use small pieces, to cut segments).
    pub fn set_step_piece(&mut self, values: i64) {
        self.piece = values.max(1);
    }

    /// Optimizer steps taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    pub(crate) fn set_steps(&mut self, steps: u64) {
        self.steps = steps;
    }

    /// The learning-rate schedule's position for the next step (as [`AdamW::schedule_step`]).
    pub fn schedule_step(&self) -> u64 {
        self.schedule.position(self.steps)
    }

    /// Puts the schedule at `position` for the next step; each step advances it by one.
    pub fn set_schedule_step(&mut self, position: u64) {
        self.schedule.set(position, self.steps);
    }

    /// The first moments' spans, then the second's, bucket by bucket.
    pub(crate) fn moments(&self) -> impl Iterator<Item = &Tensor> {
        self.exp_avg.iter().chain(&self.exp_avg_sq)
    }

    pub(crate) fn moments_mut(&mut self) -> impl Iterator<Item = &mut Tensor> {
        self.exp_avg.iter_mut().chain(&mut self.exp_avg_sq)
    }

    /// Makes every rank's weights rank 0's, bucket by bucket through the scratch: ranks that
    /// loaded or initialised their models apart start the same. Every rank calls it.
    pub fn broadcast_weights(
        &mut self,
        model: &Llama,
        group: &mut ProcessGroup,
    ) -> Result<(), EngineError> {
        self.check_group(group)?;
        tch::no_grad(|| {
            let params = &model.params.tensors;
            for bucket in &self.buckets {
                let mut whole = self.scratch.f_narrow(0, 0, bucket.numel)?;
                for placed in &bucket.tensors {
                    whole
                        .f_narrow(0, placed.offset, placed.numel)?
                        .f_copy_(&piece_of(&params[placed.tensor], placed)?)?;
                }
                group.broadcast(&mut whole, 0)?;
                unpack(&whole, bucket, params)?;
            }
            Ok(())
        })
    }

    fn check_group(&self, group: &ProcessGroup) -> Result<(), EngineError> {
        if (group.rank(), group.world()) != (self.rank, self.world) {
            return Err(EngineError::Config(format!(
                "this optimizer is rank {} of {}, not rank {} of {}",
                self.rank,
                self.world,
                group.rank(),
                group.world()
            )));
        }
        Ok(())
    }

    /// Values of AdamW state this rank holds per moment: about a world-th of the parameters.
    pub fn moment_values(&self) -> i64 {
        self.buckets.iter().map(Bucket::owned_values).sum()
    }

    /// One optimizer step over `batch`, the whole batch as every rank sees it: this rank trains
    /// on its world-th of the rows (the row count must divide evenly). Every rank returns the
    /// same statistics, for the whole batch.
    pub fn train_step(
        &mut self,
        model: &mut Llama,
        group: &mut ProcessGroup,
        batch: &Batch,
    ) -> Result<StepStats, EngineError> {
        self.check_group(group)?;
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
        let local = accumulate_gradients(model, &self.config, &mine, predicted);
        // Every rank learns whether every rank got this far, so that one rank's failure (out of
        // memory, say) stops them all at once instead of leaving the others waiting in the next
        // collective until the group's timeout.
        let all_ok = self
            .all_ranks_agree(group, local.is_ok(), model.device())
            .inspect_err(|_| self.broken = true)?;
        let local_loss = local?;
        if !all_ok {
            return Err(EngineError::Batch(
                "another rank failed to compute its gradient; see that rank's error".into(),
            ));
        }
        let stepped = self.step_after_gradients(model, group, local_loss, predicted, rows, batch);
        self.broken = stepped.is_err();
        stepped
    }

    fn step_after_gradients(
        &mut self,
        model: &Llama,
        group: &mut ProcessGroup,
        local_loss: f64,
        predicted: i64,
        rows: usize,
        batch: &Batch,
    ) -> Result<StepStats, EngineError> {
        let stepped = stepped_tensors(model);
        tch::no_grad(|| self.scatter_gradients(model, group, &stepped))?;
        // The norm's squares and the loss summed across ranks in one collective.
        let (squares, loss) =
            tch::no_grad(|| self.sum_across_ranks(group, &stepped, local_loss, model.device()))?;
        let grad_norm = squares.sqrt();
        let lr = learning_rate(&self.config, self.schedule_step());
        self.steps += 1;
        tch::no_grad(|| self.update_and_gather(model, group, &stepped, grad_norm, lr))?;
        Ok(StepStats {
            loss: loss / predicted as f64,
            grad_norm,
            lr,
            tokens: rows * batch.input_ids.size()[1] as usize,
        })
    }

    /// Whether `ok` holds on every rank (a minimum across ranks).
    pub(crate) fn all_ranks_agree(
        &self,
        group: &mut ProcessGroup,
        ok: bool,
        device: Device,
    ) -> Result<bool, EngineError> {
        let mut flag = Tensor::f_from_slice(&[i64::from(ok)])?.f_to_device(device)?;
        group.all_reduce(&mut flag, ReduceOp::Min)?;
        Ok(i64::try_from(flag.f_sum(Kind::Int64)?)? == 1)
    }

    /// Each bucket's gradients summed across ranks, of which this rank keeps its span.
    fn scatter_gradients(
        &mut self,
        model: &Llama,
        group: &mut ProcessGroup,
        stepped: &[bool],
    ) -> Result<(), EngineError> {
        let world = self.world;
        for (bucket, summed) in self.buckets.iter().zip(&mut self.gradients) {
            let whole = self.scratch.f_narrow(0, 0, bucket.padded(world))?;
            for placed in &bucket.tensors {
                let slot = whole.f_narrow(0, placed.offset, placed.numel)?;
                let param = &model.params.tensors[placed.tensor];
                if stepped[placed.tensor] {
                    slot.shallow_clone()
                        .f_copy_(&piece_of(&param.grad().f_contiguous()?, placed)?)?;
                } else {
                    let _ = slot.shallow_clone().f_zero_()?;
                }
            }
            let padding = bucket.padded(world) - bucket.numel;
            let _ = whole.f_narrow(0, bucket.numel, padding)?.f_zero_()?;
            group.reduce_scatter(summed, &whole, ReduceOp::Sum)?;
        }
        Ok(())
    }

    /// The whole gradient's sum of squares and the whole batch's loss: this rank's shares of
    /// both, summed across ranks.
    pub(crate) fn sum_across_ranks(
        &self,
        group: &mut ProcessGroup,
        stepped: &[bool],
        local_loss: f64,
        device: Device,
    ) -> Result<(f64, f64), EngineError> {
        // Summed where the spans are (the host, when they are offloaded), sent from `device`.
        let spans_device = self.gradients.first().map_or(device, Tensor::device);
        let mut squares = Tensor::f_zeros([1], (Kind::Double, spans_device))?;
        for (bucket, summed) in self.buckets.iter().zip(&self.gradients) {
            for segment in bucket.owned.iter().filter(|s| stepped[s.tensor]) {
                let part = summed.f_narrow(0, segment.in_span, segment.len)?;
                squares = squares.f_add(&part.f_square()?.f_sum(Kind::Double)?)?;
            }
        }
        let squares = squares.f_to_device(device)?;
        let loss = Tensor::f_from_slice(&[local_loss])?.f_to_device(device)?;
        let mut both = Tensor::f_cat(&[squares, loss], 0)?;
        group.all_reduce(&mut both, ReduceOp::Sum)?;
        let both = Vec::<f64>::try_from(&both.f_to_device(Device::Cpu)?)?;
        Ok((both[0], both[1]))
    }

    /// Clips, steps this rank's pieces, and gathers every rank's span of each bucket into every
    /// rank's weights.
    fn update_and_gather(
        &mut self,
        model: &Llama,
        group: &mut ProcessGroup,
        stepped: &[bool],
        grad_norm: f64,
        lr: f64,
    ) -> Result<(), EngineError> {
        let params = &model.params.tensors;
        self.step_owned(stepped, grad_norm, lr, |_, segment| {
            owned_weights(params, segment)
        })?;
        let world = self.world;
        for (bucket, contribution) in self.buckets.iter().zip(&self.gradients) {
            // This rank's span of the bucket, updated, is written over its summed gradient (used
            // by now; the padding is zero on every rank), so that the gather needs no buffer of
            // its own.
            for segment in &bucket.owned {
                contribution
                    .f_narrow(0, segment.in_span, segment.len)?
                    .f_copy_(&owned_weights(params, segment)?)?;
            }
            let mut whole = self.scratch.f_narrow(0, 0, bucket.padded(world))?;
            group.all_gather(&mut whole, contribution)?;
            unpack(&whole, bucket, params)?;
        }
        Ok(())
    }

    /// Clips the summed gradients by `grad_norm` and steps this rank's pieces of the tensors
    /// that `stepped`: `weights(bucket, segment)` is a flat view of the weights a segment holds.
    pub(crate) fn step_owned(
        &mut self,
        stepped: &[bool],
        grad_norm: f64,
        lr: f64,
        mut weights: impl FnMut(usize, &Segment) -> Result<Tensor, EngineError>,
    ) -> Result<(), EngineError> {
        let clip = self.config.grad_clip;
        // As torch's clamp_max: a NaN norm makes a NaN coefficient, not an unclipped step.
        let coef = clip / (grad_norm + 1e-6);
        let scale = clip > 0.0 && (coef < 1.0 || coef.is_nan());
        let constants = StepConstants::new(Hyper::of(&self.config), self.steps, lr);
        for (index, bucket) in self.buckets.iter().enumerate() {
            let summed = &mut self.gradients[index];
            if scale {
                let _ = summed.f_mul_scalar_(coef as f32 as f64)?;
            }
            for segment in bucket.owned.iter().filter(|s| stepped[s.tensor]) {
                let flat = weights(index, segment)?;
                // A piece at a time, as the one-process AdamW steps: the update's temporaries
                // stay a few MB however large the segment (the embedding's, at 8B).
                for start in (0..segment.len).step_by(self.piece as usize) {
                    let len = self.piece.min(segment.len - start);
                    let in_span = segment.in_span + start;
                    constants.update(
                        &mut flat.f_narrow(0, start, len)?,
                        &summed.f_narrow(0, in_span, len)?,
                        &mut self.exp_avg[index].f_narrow(0, in_span, len)?,
                        &mut self.exp_avg_sq[index].f_narrow(0, in_span, len)?,
                    )?;
                }
            }
        }
        Ok(())
    }
}

/// The weights of `segment`, as a flat view of its tensor.
fn owned_weights(params: &[Tensor], segment: &Segment) -> Result<Tensor, EngineError> {
    Ok(params[segment.tensor]
        .f_view([-1])?
        .f_narrow(0, segment.in_tensor, segment.len)?)
}

/// Which tensors have a gradient: the same on every rank (all hold the same model). A tensor
/// without one is left alone, as the single-process AdamW does; its collectives still run.
fn stepped_tensors(model: &Llama) -> Vec<bool> {
    let tensors = &model.params.tensors;
    tensors.iter().map(|t| t.grad().defined()).collect()
}

/// The piece of `tensor` (a parameter or its gradient, contiguous) that `placed` puts in a
/// bucket, as a flat view of it.
fn piece_of(tensor: &Tensor, placed: &Placed) -> Result<Tensor, EngineError> {
    Ok(tensor
        .f_view([-1])?
        .f_narrow(0, placed.in_tensor, placed.numel)?)
}

/// A whole bucket's values back into the tensors it holds pieces of.
fn unpack(whole: &Tensor, bucket: &Bucket, params: &[Tensor]) -> Result<(), EngineError> {
    for placed in &bucket.tensors {
        piece_of(&params[placed.tensor], placed)?.f_copy_(&whole.f_narrow(
            0,
            placed.offset,
            placed.numel,
        )?)?;
    }
    Ok(())
}
