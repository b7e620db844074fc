//! Training over the ranks of a process group with the parameters themselves sharded (ZeRO
//! stage 3, FSDP's semantics): no rank ever holds the whole model. The tensors are grouped in
//! units — the embedding, each decoder layer, the final norm with the head — and each unit is one
//! bucket (see `buckets`) of which every rank keeps one span of f32 master weights, with its
//! AdamW moments and summed gradient. A micro-batch gathers each unit just before its forward,
//! frees it after, and gathers it again for its backward (the backward recomputes each layer from
//! its saved input, as [`Llama::backward_loss_sum_recomputing`] does), reduce-scattering the
//! unit's gradients into the spans as soon as they are made. The optimizer then steps the spans;
//! nothing is gathered after a step. A rank holds its spans (a world-th of the parameters, the
//! moments and the gradients) and, for a moment, one or two units whole.
//!
//! The arithmetic is the one process's (the same gradients, summed in another order), so losses
//! and weights match [`crate::Trainer`]'s to float rounding: the tests hold them to 1e-5.

use std::ops::Range;
use std::path::Path;

use tch::{Device, Kind, Tensor};
use templar_dist::{ProcessGroup, ReduceOp};

use crate::buckets::{BUCKET_VALUES, Bucket, unit_buckets};
use crate::checkpoint::{
    OPTIMIZER_FILE, OPTIMIZER_STEM, model_entries, moments_layout, open_weights, weights_layout,
    write_config,
};
use crate::config::{ModelConfig, TrainConfig};
use crate::error::EngineError;
use crate::init::fill_initial_range;
use crate::model::{Llama, backward_with};
use crate::optim::learning_rate;
use crate::params::{NamedBuffer, ParameterReader, parameter_shapes, read_range_into};
use crate::sharded::{Layout, ShardedAdamW};
use crate::sharded_state::saved_world;
use crate::tensor_files::{DEFAULT_SHARD_BYTES, ShardLayout, index_name};
use crate::train::{Batch, StepStats};

/// Values moved between a file or generator and a span at once.
const PIECE: usize = 1 << 20;

/// Where a fully sharded trainer computes, and whether it keeps its spans — the f32 weights, the
/// AdamW moments and the summed gradients, 16 bytes a parameter over the world — in host memory
/// instead (pinned, on CUDA): the device then holds only the units gathered, one span of
/// gradients in flight and the activations, and each step moves the gradients to the host, steps
/// there, and each gather moves a span to the device.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    pub compute: Device,
    pub offload: bool,
}

impl From<Device> for Placement {
    fn from(compute: Device) -> Self {
        Placement {
            compute,
            offload: false,
        }
    }
}

impl Placement {
    /// Where the spans live.
    fn state(self) -> Device {
        if self.offload {
            Device::Cpu
        } else {
            self.compute
        }
    }

    /// A span of `values` zeros where the spans live (pinned when they cross to a GPU, so the
    /// copies run at the link's full speed).
    fn span(self, values: i64) -> Result<Tensor, EngineError> {
        let span = Tensor::f_zeros([values], (Kind::Float, self.state()))?;
        Ok(if self.offload && self.compute.is_cuda() {
            span.f_pin_memory(self.compute)?
        } else {
            span
        })
    }
}

/// A model trained by one rank of a process group with its parameters sharded: every rank
/// holds a world-th of the weights, and trains on its share of each batch's rows.
pub struct FullyShardedTrainer {
    /// The model's computation, its parameters empty placeholders but for the units gathered.
    model: Llama,
    /// One bucket per unit: the moments and summed gradients of this rank's spans.
    optimizer: ShardedAdamW,
    /// Per unit, this rank's span of the f32 weights.
    master: Vec<Tensor>,
    units: Vec<Range<usize>>,
    shapes: Vec<Vec<i64>>,
    gathered: Vec<bool>,
    /// The kind weights are gathered in: bf16 on CUDA (half the bytes of f32 on the wire, and
    /// what autocast computes in anyway), f32 on the CPU.
    wire: Kind,
    /// One span, which a unit's gradients are reduce-scattered into before they are added.
    received: Tensor,
    placement: Placement,
    group: ProcessGroup,
    /// Values of units gathered now, and at most since the trainer was made.
    gathered_values: i64,
    peak_gathered_values: i64,
    /// Set when a step failed part-way: the ranks may disagree, so no further step is taken.
    broken: bool,
    /// Values moved between the host and a span at once.
    piece: usize,
}

impl FullyShardedTrainer {
    /// The weights `seed` gives ([`Llama::new`]'s), of which this rank makes and keeps only its
    /// spans: no tensor is ever made whole.
    pub fn new(
        config: &ModelConfig,
        seed: u64,
        train: TrainConfig,
        group: ProcessGroup,
        placement: impl Into<Placement>,
    ) -> Result<Self, EngineError> {
        let mut trainer = Self::empty(config, train, group, placement.into())?;
        let names = trainer.model.params.names.clone();
        let std = config.initializer_range;
        trainer.fill_master(|tensor, start, out| {
            fill_initial_range(&names[tensor], std, seed, tensor as u64, start, out);
            Ok(())
        })?;
        Ok(trainer)
    }

    /// Loads what [`FullyShardedTrainer::save`] (or one process's [`crate::save_model`] and
    /// [`crate::save_optimizer`], or a ranked node's weights and per-rank moments,
    /// [`ShardedAdamW::save_moments`]) wrote in `dir`, whatever the number of ranks that saved
    /// it: each rank reads only its spans. Fresh moments, with a warning, when `dir` holds no
    /// optimizer state.
    pub fn load(
        dir: &Path,
        train: TrainConfig,
        group: ProcessGroup,
        placement: impl Into<Placement>,
    ) -> Result<Self, EngineError> {
        let (config, files) = open_weights(dir)?;
        let entries = model_entries(&config);
        files.check(&entries)?;
        let mut trainer = Self::empty(&config, train, group, placement.into())?;
        trainer.fill_master(|tensor, start, out| {
            let entry = &entries[tensor];
            files.read_range_into(&entry.name, &entry.shape, start, out)
        })?;
        trainer.read_moments(dir)?;
        Ok(trainer)
    }

    /// Replaces this rank's moments and step count with those saved in `dir`, laid out as
    /// [`FullyShardedTrainer::load`] reads them (the weights are the caller's to set, with
    /// [`FullyShardedTrainer::set_from_owned`]). A folder without optimizer state leaves them
    /// as they are, with a warning. Reads files only: every rank must learn whether the others
    /// read theirs.
    pub fn load_moments(&mut self, dir: &Path) -> Result<(), EngineError> {
        self.refuse_if_broken()?;
        self.read_moments(dir)
    }

    fn read_moments(&mut self, dir: &Path) -> Result<(), EngineError> {
        let has_moments =
            dir.join(OPTIMIZER_FILE).exists() || dir.join(index_name(OPTIMIZER_STEM)).exists();
        if has_moments {
            let names = self.model.params.names.clone();
            let shapes: Vec<Vec<usize>> = self
                .shapes
                .iter()
                .map(|s| s.iter().map(|&d| d as usize).collect())
                .collect();
            self.optimizer.load_moments_of(dir, &names, &shapes)?;
        } else if let Some(world) = saved_world(dir)? {
            // A ranked node's state (ZeRO-2, buckets of BUCKET_VALUES): each of this rank's
            // spans read from the files of the ranks that held its values.
            self.optimizer
                .load_moments_laid_out(dir, world, BUCKET_VALUES)?;
        } else {
            tracing::warn!(
                "{} holds weights but no optimizer state: the moments stay as they are (a new \
                 trainer's start fresh, at step 0)",
                dir.display()
            );
        }
        Ok(())
    }

    fn empty(
        config: &ModelConfig,
        train: TrainConfig,
        group: ProcessGroup,
        placement: Placement,
    ) -> Result<Self, EngineError> {
        let device = placement.compute;
        if group.device() != device {
            return Err(EngineError::Config(format!(
                "a process group on {:?} cannot gather for training on {device:?}: make the \
                 group on the device that computes",
                group.device()
            )));
        }
        let model = Llama::skeleton(config, device)?;
        let shapes: Vec<Vec<i64>> = parameter_shapes(config)
            .into_iter()
            .map(|(_, shape)| shape)
            .collect();
        let numels: Vec<i64> = shapes.iter().map(|s| s.iter().product()).collect();
        let units = units(model.params.names());
        let (rank, world) = (group.rank(), group.world());
        let buckets = unit_buckets(&numels, &units, rank, world);
        let master = buckets
            .iter()
            .map(|b| placement.span(b.span))
            .collect::<Result<Vec<_>, _>>()?;
        let largest_span = buckets.iter().map(|b| b.span).max().unwrap_or(0);
        let layout = Layout {
            numels,
            rank,
            world,
            bucket_values: i64::MAX,
        };
        Ok(FullyShardedTrainer {
            optimizer: ShardedAdamW::for_buckets(
                buckets,
                layout,
                train,
                (placement.state(), device),
            )?,
            master,
            gathered: vec![false; units.len()],
            units,
            shapes,
            wire: if device.is_cuda() {
                Kind::BFloat16
            } else {
                Kind::Float
            },
            received: Tensor::f_zeros([largest_span], (Kind::Float, device))?,
            placement,
            model,
            group,
            gathered_values: 0,
            peak_gathered_values: 0,
            broken: false,
            piece: PIECE,
        })
    }

    /// Moves at most `values` values between the host and a span at once (tests use small
    /// pieces, to cut tensors).
    pub fn set_piece(&mut self, values: usize) {
        self.piece = values.max(1);
    }

    /// Gathers weights in `kind` (f32 or bf16) rather than the device's default.
    pub fn with_wire_kind(mut self, kind: Kind) -> Self {
        self.wire = kind;
        self
    }

    /// Writes each of this rank's spans from `read(tensor, start, out)`, which gives values
    /// `start..start + out.len()` of a tensor, a piece at a time.
    fn fill_master(
        &mut self,
        mut read: impl FnMut(usize, usize, &mut [f32]) -> Result<(), EngineError>,
    ) -> Result<(), EngineError> {
        let mut values = Vec::new();
        for (bucket, span) in self.optimizer.buckets.iter().zip(&self.master) {
            for segment in &bucket.owned {
                for piece in (0..segment.len).step_by(PIECE) {
                    let len = (PIECE as i64).min(segment.len - piece);
                    values.resize(len as usize, 0.0);
                    read(
                        segment.tensor,
                        (segment.in_tensor + piece) as usize,
                        &mut values,
                    )?;
                    span.f_narrow(0, segment.in_span + piece, len)?
                        .f_copy_(&Tensor::f_from_slice(&values)?)?;
                }
            }
        }
        Ok(())
    }

    pub fn config(&self) -> &ModelConfig {
        &self.model.config
    }

    pub fn rank(&self) -> usize {
        self.group.rank()
    }

    pub fn world(&self) -> usize {
        self.group.world()
    }

    /// Bytes of weights this rank keeps: its f32 spans.
    pub fn param_bytes(&self) -> i64 {
        4 * self.master.iter().map(|s| s.numel() as i64).sum::<i64>()
    }

    /// Bytes of f32 weights held whole at once, at most, while training: the units gathered
    /// together (a layer, with the embedding too when the head is the embedding).
    pub fn peak_gathered_bytes(&self) -> i64 {
        4 * self.peak_gathered_values
    }

    /// Values of AdamW state this rank holds per moment.
    pub fn moment_values(&self) -> i64 {
        self.optimizer.moment_values()
    }

    /// Optimizer steps taken.
    pub fn steps(&self) -> u64 {
        self.optimizer.steps()
    }

    /// The learning-rate schedule's position for the next step.
    pub fn schedule_step(&self) -> u64 {
        self.optimizer.schedule_step()
    }

    /// Puts the learning-rate schedule at `position` for the next step (as
    /// [`crate::AdamW::set_schedule_step`]).
    pub fn set_schedule_step(&mut self, position: u64) {
        self.optimizer.set_schedule_step(position);
    }

    /// One optimizer step over `batch`, the whole batch as every rank sees it: this rank trains
    /// on its world-th of the rows. Every rank returns the same statistics.
    pub fn train_step(&mut self, batch: &Batch) -> Result<StepStats, EngineError> {
        self.refuse_if_broken()?;
        let (rank, world) = (self.rank(), self.world());
        let rows = batch.rows();
        if !rows.is_multiple_of(world) {
            return Err(EngineError::Batch(format!(
                "a batch of {rows} samples does not split evenly over {world} ranks"
            )));
        }
        let predicted = batch.predicted_positions()?;
        if predicted == 0 {
            return Err(EngineError::Batch(
                "every label is ignored; nothing to train on".into(),
            ));
        }
        let longest = self.model.config.max_position_embeddings;
        if batch.seq_len() > longest {
            return Err(EngineError::Batch(format!(
                "sequence length {} exceeds max_position_embeddings {longest}",
                batch.seq_len()
            )));
        }
        let mine = batch.rows_slice(rank * rows / world, rows / world)?;
        let stepped = self.step(&mine, predicted);
        if stepped.is_err() {
            // What was gathered when it failed goes; the ranks may now disagree.
            self.broken = true;
            for unit in 0..self.units.len() {
                self.release(unit);
            }
        }
        let (loss, grad_norm, lr) = stepped?;
        Ok(StepStats {
            loss: loss / predicted as f64,
            grad_norm,
            lr,
            tokens: rows * batch.seq_len(),
        })
    }

    /// After a collective failed part-way, the ranks may be in different collectives: nothing
    /// more is done on this group.
    fn refuse_if_broken(&self) -> Result<(), EngineError> {
        if self.broken {
            return Err(EngineError::Batch(
                "an earlier step or save failed part-way on these ranks: rebuild the group and \
                 reload the last saved state"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Gradients of this rank's rows `mine` summed into the spans, then the step: the summed
    /// loss, the gradient's norm and the learning rate.
    fn step(&mut self, mine: &Batch, predicted: i64) -> Result<(f64, f64, f64), EngineError> {
        tch::no_grad(|| {
            for summed in &mut self.optimizer.gradients {
                let _ = summed.f_zero_()?;
            }
            Ok::<_, EngineError>(())
        })?;
        let device = self.model.device();
        let micro = self.optimizer.config().micro_batch_size.max(1);
        let mut local_loss = 0.0;
        for start in (0..mine.rows()).step_by(micro) {
            let len = micro.min(mine.rows() - start);
            let (input_ids, labels) = mine.rows_range(start, len, device)?;
            local_loss += self.micro_batch(&input_ids, &labels, predicted as f64)?;
        }
        let every = vec![true; self.shapes.len()];
        let (squares, loss) = tch::no_grad(|| {
            self.optimizer
                .sum_across_ranks(&mut self.group, &every, local_loss, device)
        })?;
        let grad_norm = squares.sqrt();
        let lr = learning_rate(self.optimizer.config(), self.optimizer.schedule_step());
        self.optimizer.set_steps(self.optimizer.steps() + 1);
        let master = &self.master;
        tch::no_grad(|| {
            self.optimizer
                .step_owned(&every, grad_norm, lr, |unit, segment| {
                    Ok(master[unit].f_narrow(0, segment.in_span, segment.len)?)
                })
        })?;
        Ok((loss, grad_norm, lr))
    }

    /// One micro-batch's gradients, each unit's reduce-scattered into the spans as soon as it
    /// is complete; returns this micro-batch's summed loss.
    fn micro_batch(
        &mut self,
        input_ids: &Tensor,
        labels: &Tensor,
        divisor: f64,
    ) -> Result<f64, EngineError> {
        let autocast = self.model.device().is_cuda();
        let (embedding, head) = (0, self.units.len() - 1);
        let layers = self.units.len() - 2;
        // A tied head is the embedding: kept gathered until the embedding's gradient is done.
        let tied = self.model.config.tie_word_embeddings;
        self.gather(embedding)?;
        let embedded = self.model.embed_for_training(input_ids, autocast)?;
        let rotary = self.model.rotary(input_ids)?;
        if !tied {
            self.release(embedding);
        }
        let mut inputs = Vec::with_capacity(layers);
        let mut x = embedded.f_detach()?;
        for layer in 0..layers {
            self.gather(layer + 1)?;
            let next = tch::no_grad(|| {
                tch::autocast(autocast, || self.model.run_layer(layer, &x, &rotary))
            })?;
            self.release(layer + 1);
            inputs.push(std::mem::replace(&mut x, next));
        }
        let last = x.set_requires_grad(true);
        self.gather(head)?;
        let (loss, _) = self.model.backward_head(&last, labels, divisor, autocast)?;
        self.scatter_gradients(head)?;
        self.release(head);
        let mut grad = last.grad();
        for layer in (0..layers).rev() {
            let Some(saved) = inputs.pop() else { break };
            let input = if layer == 0 {
                embedded.shallow_clone()
            } else {
                saved.f_detach()?.set_requires_grad(true)
            };
            drop(saved);
            self.gather(layer + 1)?;
            let output = tch::autocast(autocast, || self.model.run_layer(layer, &input, &rotary))?;
            backward_with(&output, &grad)?;
            drop(output);
            if layer > 0 {
                grad = input.grad();
            }
            self.scatter_gradients(layer + 1)?;
            self.release(layer + 1);
        }
        self.gather(embedding)?;
        self.model.backward_embedding(input_ids, &embedded)?;
        self.scatter_gradients(embedding)?;
        self.release(embedding);
        Ok(loss)
    }

    /// Makes `unit`'s tensors whole on this rank (f32, as the model computes), from every
    /// rank's span, unless they are already.
    fn gather(&mut self, unit: usize) -> Result<(), EngineError> {
        if self.gathered[unit] {
            return Ok(());
        }
        let bucket = &self.optimizer.buckets[unit];
        let mine = &self.master[unit];
        let whole = gather_whole(&mut self.group, bucket, mine, (self.wire, self.placement))?;
        for placed in &bucket.tensors {
            let shape = self.shapes[placed.tensor].as_slice();
            self.model.params.tensors[placed.tensor] = whole
                .f_narrow(0, placed.offset, placed.numel)?
                .f_view(shape)?
                .f_detach()?
                .set_requires_grad(true);
        }
        self.gathered[unit] = true;
        self.gathered_values += bucket.numel;
        self.peak_gathered_values = self.peak_gathered_values.max(self.gathered_values);
        Ok(())
    }

    /// Drops `unit`'s whole tensors and their gradients.
    fn release(&mut self, unit: usize) {
        if !self.gathered[unit] {
            return;
        }
        // The whole buffer goes with its last view.
        for tensor in self.units[unit].clone() {
            self.model.params.tensors[tensor] = Tensor::new();
        }
        self.gathered[unit] = false;
        self.gathered_values -= self.optimizer.buckets[unit].numel;
    }

    /// Sums `unit`'s gradients across ranks into this rank's span of them.
    fn scatter_gradients(&mut self, unit: usize) -> Result<(), EngineError> {
        let world = self.world();
        let bucket = &self.optimizer.buckets[unit];
        let whole = self
            .optimizer
            .scratch
            .f_narrow(0, 0, bucket.padded(world))?;
        tch::no_grad(|| -> Result<(), EngineError> {
            for placed in &bucket.tensors {
                let mut slot = whole.f_narrow(0, placed.offset, placed.numel)?;
                let grad = self.model.params.tensors[placed.tensor].grad();
                if grad.defined() {
                    slot.f_copy_(&grad.f_reshape([-1])?)?;
                } else {
                    let _ = slot.f_zero_()?;
                }
            }
            let padding = bucket.padded(world) - bucket.numel;
            let _ = whole.f_narrow(0, bucket.numel, padding)?.f_zero_()?;
            let mut received = self.received.f_narrow(0, 0, bucket.span)?;
            self.group
                .reduce_scatter(&mut received, &whole, ReduceOp::Sum)?;
            let received = received.f_to_device(self.placement.state())?;
            let _ = self.optimizer.gradients[unit].f_add_(&received)?;
            Ok(())
        })
    }

    /// The outer step's read: every tensor that `owns` picks on this rank, whole, without the
    /// model ever being whole on any rank. Each unit is gathered on every rank in turn (every
    /// rank calls this, each with its own `owns`) and `visit(i, whole)` sees this rank's tensors
    /// of it (read them with [`ParameterReader::read_range`]); the unit goes before the next is
    /// gathered. A rank's failing `visit` does not stop the gathers (the ranks stay in step);
    /// every rank then returns an error. A failure of the gathers themselves marks the trainer
    /// broken.
    pub fn visit_owned(
        &mut self,
        owns: impl Fn(usize) -> bool,
        mut visit: impl FnMut(usize, &ParameterReader) -> Result<(), EngineError>,
    ) -> Result<(), EngineError> {
        self.refuse_if_broken()?;
        let mut visited = Ok(());
        let gathered = (0..self.units.len()).try_for_each(|unit| {
            let bucket = &self.optimizer.buckets[unit];
            let mine = &self.master[unit];
            let whole = gather_whole(&mut self.group, bucket, mine, (Kind::Float, self.placement))?;
            for placed in bucket.tensors.iter().filter(|p| owns(p.tensor)) {
                if visited.is_ok() {
                    let tensor = whole.f_narrow(0, placed.offset, placed.numel)?;
                    visited = visit(placed.tensor, &ParameterReader(tensor));
                }
            }
            Ok::<_, EngineError>(())
        });
        self.broken |= gathered.is_err();
        gathered?;
        self.agree(visited, "visit its tensors")
    }

    /// The outer step's write: this rank's spans set from the tensors their owners hold, each
    /// written by `fill(i, start, out)` (values `start..start + out.len()` of tensor `i`) on the
    /// rank that `owns` it. A unit at a time: owners lay their tensors out, every other value is
    /// zero bits, and the reduce-scatter sums the values' bits as integers, so that each value
    /// is its owner's bit for bit whatever it is (−0, a NaN's payload, a subnormal) and whatever
    /// the backend does with floats. The moments are left as they are. Any failure, a rank's
    /// `fill` included, leaves the spans unknown: the trainer is then broken (reload a state).
    pub fn set_from_owned(
        &mut self,
        owns: impl Fn(usize) -> bool,
        mut fill: impl FnMut(usize, usize, &mut [f32]) -> Result<(), EngineError>,
    ) -> Result<(), EngineError> {
        self.refuse_if_broken()?;
        let world = self.world();
        let mut filled = Ok(());
        let mut values = Vec::new();
        let piece = self.piece;
        let scattered = (0..self.units.len()).try_for_each(|unit| {
            let bucket = &self.optimizer.buckets[unit];
            let mut whole = self
                .optimizer
                .scratch
                .f_narrow(0, 0, bucket.padded(world))?;
            let _ = tch::no_grad(|| whole.f_zero_())?;
            for placed in bucket.tensors.iter().filter(|p| owns(p.tensor)) {
                for start in (0..placed.numel).step_by(piece) {
                    let len = (piece as i64).min(placed.numel - start);
                    values.resize(len as usize, 0.0);
                    if filled.is_ok() {
                        filled = fill(placed.tensor, start as usize, &mut values);
                    }
                    let at = placed.offset + start;
                    let source = Tensor::f_from_slice(&values)?.f_to_device(whole.device())?;
                    tch::no_grad(|| whole.f_narrow(0, at, len)?.f_copy_(&source))?;
                }
            }
            let received = self.received.f_narrow(0, 0, bucket.span)?;
            tch::no_grad(|| {
                let mut bits = received.f_view_dtype(Kind::Int)?;
                let sent = whole.f_view_dtype(Kind::Int)?;
                self.group.reduce_scatter(&mut bits, &sent, ReduceOp::Sum)?;
                Ok::<_, EngineError>(self.master[unit].f_copy_(&received)?)
            })
        });
        let agreed = scattered.and_then(|()| self.agree(filled, "fill its tensors"));
        self.broken |= agreed.is_err();
        agreed
    }

    /// Runs `work` on the group (the node's own collectives beside training); a failure marks
    /// the trainer broken, as the ranks may now be in different collectives.
    pub fn with_group<T, E: From<EngineError>>(
        &mut self,
        work: impl FnOnce(&mut ProcessGroup) -> Result<T, E>,
    ) -> Result<T, E> {
        self.refuse_if_broken()?;
        let done = work(&mut self.group);
        self.broken |= done.is_err();
        done
    }

    /// `done` on every rank, or an error on every rank naming what failed.
    fn agree(&mut self, done: Result<(), EngineError>, what: &str) -> Result<(), EngineError> {
        let device = self.model.device();
        let all_ok = self
            .optimizer
            .all_ranks_agree(&mut self.group, done.is_ok(), device)
            .inspect_err(|_| self.broken = true)?;
        done?;
        if !all_ok {
            return Err(EngineError::Batch(format!(
                "another rank failed to {what}; see that rank's error"
            )));
        }
        Ok(())
    }

    /// A whole copy of every tensor on every rank, one unit gathered at a time: for tests, and
    /// for models small enough to hold whole. Every rank calls it.
    pub fn gather_weights(&mut self) -> Result<Vec<NamedBuffer>, EngineError> {
        self.refuse_if_broken()?;
        let gathered = self.gather_all_weights();
        self.broken = gathered.is_err();
        gathered
    }

    fn gather_all_weights(&mut self) -> Result<Vec<NamedBuffer>, EngineError> {
        let mut buffers = Vec::with_capacity(self.shapes.len());
        for unit in 0..self.units.len() {
            let bucket = &self.optimizer.buckets[unit];
            let mine = &self.master[unit];
            let whole = gather_whole(&mut self.group, bucket, mine, (Kind::Float, self.placement))?;
            for placed in &bucket.tensors {
                let mut data = vec![0f32; placed.numel as usize];
                read_range_into(
                    &whole.f_narrow(0, placed.offset, placed.numel)?,
                    0,
                    &mut data,
                )?;
                buffers.push(NamedBuffer {
                    name: self.model.params.names[placed.tensor].clone(),
                    shape: self.shapes[placed.tensor]
                        .iter()
                        .map(|&d| d as usize)
                        .collect(),
                    data,
                });
            }
        }
        Ok(buffers)
    }

    /// Writes the model (`config.json` and safetensors shards, as one process's
    /// [`crate::save_model`]) and the optimizer (as [`crate::save_optimizer`]) into `dir`, which
    /// every rank sees: rank 0 lays out the files, every rank writes its own spans into them at
    /// their offsets and syncs them, and rank 0 then publishes them. No value crosses between
    /// ranks, and the ranks write side by side. What is written is what one process writes, so
    /// any number of ranks, or one process, or a Hugging Face reader, loads it. Every rank
    /// learns whether every step succeeded. The files are put in place one by one at the end:
    /// save into a fresh folder that becomes current only once the save succeeded (as the
    /// node's state generations do). A failed save leaves no temporary file behind.
    pub fn save(&mut self, dir: &Path) -> Result<(), EngineError> {
        self.refuse_if_broken()?;
        let shapes: Vec<Vec<usize>> = self
            .shapes
            .iter()
            .map(|s| s.iter().map(|&d| d as usize).collect())
            .collect();
        let steps = self.optimizer.steps();
        let weights = weights_layout(&self.model.config, DEFAULT_SHARD_BYTES);
        let moments = moments_layout(&self.model.params.names, &shapes, steps);
        let leads = self.rank() == 0;
        let created = if leads {
            weights.create(dir).and_then(|()| moments.create(dir))
        } else {
            Ok(())
        };
        let laid_out = self
            .agree(created, "create the checkpoint's files")
            .and_then(|()| {
                let written = self.write_spans(dir, &weights, &moments);
                self.agree(written, "write its spans of the checkpoint")
            });
        if let Err(failed) = laid_out {
            if leads {
                weights.discard(dir);
                moments.discard(dir);
            }
            return Err(failed);
        }
        let published = if leads {
            weights
                .publish(dir)
                .and_then(|_| moments.publish(dir))
                .and_then(|_| write_config(dir, &self.model.config))
                .map(drop)
        } else {
            Ok(())
        };
        self.agree(published, "publish the checkpoint")
    }

    /// This rank's spans of the weights and both moments, a piece at a time, into the files
    /// `weights` and `moments` lay out in `dir` (a bucket's padding is no tensor's, and is not
    /// written).
    fn write_spans(
        &self,
        dir: &Path,
        weights: &ShardLayout,
        moments: &ShardLayout,
    ) -> Result<(), EngineError> {
        let mut writers = [weights.writer(dir)?, moments.writer(dir)?];
        let optimizer = &self.optimizer;
        let sets = [
            (&self.master, 0, 1, 0),
            (&optimizer.exp_avg, 1, 2, 0),
            (&optimizer.exp_avg_sq, 1, 2, 1),
        ];
        let mut values = Vec::new();
        for (spans, writer, stride, which) in sets {
            for (bucket, span) in optimizer.buckets.iter().zip(spans) {
                for segment in &bucket.owned {
                    for piece in (0..segment.len).step_by(self.piece) {
                        let len = (self.piece as i64).min(segment.len - piece);
                        values.resize(len as usize, 0.0);
                        read_range_into(span, (segment.in_span + piece) as usize, &mut values)?;
                        let entry = stride * segment.tensor + which;
                        let start = (segment.in_tensor + piece) as usize;
                        writers[writer].write(entry, start, &values)?;
                    }
                }
            }
        }
        let [weights, moments] = writers;
        weights.sync()?;
        moments.sync()
    }
}

/// The tensors' units, by name: the embedding, each decoder layer (`model.layers.{i}.…`), and
/// what follows (the final norm, and the head when it is not tied); consecutive tensors of one
/// unit.
pub(crate) fn units(names: &[String]) -> Vec<Range<usize>> {
    let unit_of = |name: &str| -> String {
        match name.strip_prefix("model.layers.") {
            Some(rest) => format!("layer {}", rest.split('.').next().unwrap_or("")),
            None if name == "model.embed_tokens.weight" => "embedding".into(),
            None => "head".into(),
        }
    };
    let mut units: Vec<Range<usize>> = Vec::new();
    let mut last = None;
    for (index, name) in names.iter().enumerate() {
        let unit = unit_of(name);
        match units.last_mut() {
            Some(range) if last.as_ref() == Some(&unit) => range.end = index + 1,
            _ => units.push(index..index + 1),
        }
        last = Some(unit);
    }
    units
}

/// A unit's bucket whole on the compute device, from every rank's span `mine`, sent in `wire`
/// and returned in f32.
fn gather_whole(
    group: &mut ProcessGroup,
    bucket: &Bucket,
    mine: &Tensor,
    (wire, placement): (Kind, Placement),
) -> Result<Tensor, EngineError> {
    let device = placement.compute;
    let mut whole = Tensor::f_empty([bucket.padded(group.world())], (wire, device))?;
    let mine = mine.f_to_device(device)?.f_to_kind(wire)?;
    tch::no_grad(|| group.all_gather(&mut whole, &mine))?;
    Ok(whole.f_to_kind(Kind::Float)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_the_embedding_each_layer_and_the_rest() {
        let names: Vec<String> = [
            "model.embed_tokens.weight",
            "model.layers.0.a",
            "model.layers.0.b",
            "model.layers.1.a",
            "model.layers.10.a",
            "model.norm.weight",
            "lm_head.weight",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(units(&names), vec![0..1, 1..3, 3..4, 4..5, 5..7]);
    }
}
