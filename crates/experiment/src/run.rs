//! One run of the study: a method trained on the shared budget, with its validation curve and the
//! bytes each replica exchanged.

use std::time::Instant;

use serde::{Deserialize, Serialize};
use templar_engine::{Device, Llama, NamedBuffer, Preset, TrainConfig, Trainer};

use crate::data::StudyData;
use crate::error::ExperimentError;
use crate::method::Method;
use crate::settings::Settings;
use crate::{dense, sparse};

/// One point of a run's curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// Training tokens consumed so far, all replicas together.
    pub tokens: u64,
    /// Bytes each replica has sent so far.
    pub bytes_sent: u64,
    /// Validation bits per byte of the shared model.
    pub bpb: f64,
    /// Mean training loss (nats) of the steps since the previous point; absent at the start.
    pub train_loss: Option<f64>,
}

/// Smallest and largest payload one replica sent in one exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadRange {
    pub min: u64,
    pub max: u64,
}

/// What one run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// The run's name, as on the command line (`sparseloco:30:64`).
    pub name: String,
    pub method: Method,
    /// Optimizer steps each replica took.
    pub steps: u64,
    /// Exchanges between the replicas.
    pub exchanges: u64,
    pub tokens: u64,
    pub final_bpb: f64,
    /// Bytes each replica sent, in total (the mean over replicas).
    pub bytes_sent: u64,
    /// Bytes each replica received, in total (the mean over replicas).
    pub bytes_received: u64,
    /// Encoded payload sizes, for the methods that send the codec's payloads.
    pub payload_bytes: Option<PayloadRange>,
    pub curve: Vec<CurvePoint>,
    pub seconds: f64,
}

impl RunResult {
    /// The mean training loss of the first and of the last stretch between evaluations.
    pub fn train_loss_first_last(&self) -> Option<(f64, f64)> {
        let mut losses = self.curve.iter().filter_map(|p| p.train_loss);
        let first = losses.next()?;
        Some((first, losses.next_back().unwrap_or(first)))
    }
}

/// Everything the runs of one study share.
pub struct Study<'a> {
    pub preset: &'a Preset,
    pub data: &'a StudyData,
    pub settings: &'a Settings,
    pub device: Device,
}

impl Study<'_> {
    /// Optimizer steps per replica in every run.
    pub fn steps(&self) -> u64 {
        self.settings.steps(self.data.seq_len())
    }

    pub fn run(&self, method: Method) -> Result<RunResult, ExperimentError> {
        self.run_reporting(method, &|_, _| {})
    }

    /// [`Study::run`], calling `progress(steps_done, steps)` whenever the replicas agree on the
    /// model (every step for data-parallel, every exchange for the others).
    pub fn run_reporting(
        &self,
        method: Method,
        progress: &dyn Fn(u64, u64),
    ) -> Result<RunResult, ExperimentError> {
        let started = Instant::now();
        let mut tracker = Tracker::new(self, method, progress);
        match method {
            Method::Ddp => dense::ddp(self, &mut tracker)?,
            Method::Diloco { inner_steps } => dense::diloco(self, inner_steps, &mut tracker)?,
            Method::Demo { topk } => sparse::demo(self, topk, &mut tracker)?,
            Method::SparseLoco { inner_steps, topk } => {
                sparse::sparseloco(self, inner_steps, topk, None, &mut tracker)?
            }
            Method::Overlapped {
                inner_steps,
                topk,
                delay,
            } => sparse::sparseloco(self, inner_steps, topk, Some(delay), &mut tracker)?,
        }
        Ok(tracker.finish(method, started.elapsed().as_secs_f64()))
    }

    /// The preset's inner-optimizer settings for `rows` samples per step, with the schedule spread
    /// over this study's steps.
    pub(crate) fn train_config(&self, rows: usize) -> TrainConfig {
        let mut config = self.preset.train.clone();
        let steps = self.steps();
        config.batch_size = rows;
        config.micro_batch_size = self.settings.batch_size.min(rows);
        config.total_steps = steps;
        config.warmup_steps = config.warmup_steps.min((steps / 5).max(1));
        config
    }

    /// A trainer on the study's initial weights (the same for every run).
    pub(crate) fn trainer(&self, rows: usize) -> Result<Trainer, ExperimentError> {
        let model = Llama::new(&self.preset.model, self.settings.seed, self.device)?;
        Ok(Trainer::new(model, self.train_config(rows))?)
    }

    /// Steps of exchange `round` for a method exchanging every `inner_steps` steps.
    pub(crate) fn round_steps(&self, round: u64, inner_steps: u64) -> std::ops::Range<u64> {
        let start = round * inner_steps;
        start..(start + inner_steps).min(self.steps())
    }

    pub(crate) fn rounds(&self, inner_steps: u64) -> u64 {
        self.steps().div_ceil(inner_steps)
    }
}

/// Follows a run: losses, bytes, and validation at evenly spaced steps.
pub(crate) struct Tracker<'a> {
    data: &'a StudyData,
    progress: &'a dyn Fn(u64, u64),
    method: Method,
    replicas: u64,
    steps: u64,
    tokens_per_step: u64,
    eval_every: u64,
    next_eval: u64,
    steps_done: u64,
    sent: u64,
    received: u64,
    exchanges: u64,
    payloads: Option<PayloadRange>,
    loss_sum: f64,
    loss_count: u64,
    curve: Vec<CurvePoint>,
}

impl<'a> Tracker<'a> {
    fn new(study: &Study<'a>, method: Method, progress: &'a dyn Fn(u64, u64)) -> Tracker<'a> {
        let s = study.settings;
        let steps = study.steps();
        Tracker {
            data: study.data,
            progress,
            method,
            replicas: s.replicas as u64,
            steps,
            tokens_per_step: (s.replicas * s.batch_size * study.data.seq_len()) as u64,
            eval_every: (steps / s.eval_points.max(1) as u64).max(1),
            next_eval: 0,
            steps_done: 0,
            sent: 0,
            received: 0,
            exchanges: 0,
            payloads: None,
            loss_sum: 0.0,
            loss_count: 0,
            curve: Vec::new(),
        }
    }

    pub(crate) fn record_loss(&mut self, loss: f64) {
        self.loss_sum += loss;
        self.loss_count += 1;
    }

    /// One exchange in which each replica sent the same `sent` bytes and received `received`.
    pub(crate) fn dense_exchange(&mut self, bytes: u64) {
        self.sent += bytes * self.replicas;
        self.received += bytes * self.replicas;
        self.exchanges += 1;
    }

    /// One exchange of the codec's payloads, `sizes[r]` bytes from replica `r`: each replica
    /// uploads its own once and downloads every other one.
    pub(crate) fn payload_exchange(&mut self, sizes: &[u64]) {
        let total: u64 = sizes.iter().sum();
        for &size in sizes {
            self.sent += size;
            self.received += total - size;
            let range = self.payloads.get_or_insert(PayloadRange {
                min: size,
                max: size,
            });
            range.min = range.min.min(size);
            range.max = range.max.max(size);
        }
        self.exchanges += 1;
    }

    /// Called with the shared model whenever the replicas agree on it (after an exchange, or before
    /// the first step); evaluates it when an evaluation is due.
    pub(crate) fn synced(&mut self, steps_done: u64, model: &Llama) -> Result<(), ExperimentError> {
        self.steps_done = steps_done;
        (self.progress)(steps_done, self.steps);
        if steps_done < self.next_eval && steps_done < self.steps {
            return Ok(());
        }
        let bpb = evaluate(self.data, model)?;
        let train_loss = (self.loss_count > 0).then(|| self.loss_sum / self.loss_count as f64);
        self.loss_sum = 0.0;
        self.loss_count = 0;
        let point = CurvePoint {
            tokens: steps_done * self.tokens_per_step,
            bytes_sent: self.sent / self.replicas,
            bpb,
            train_loss,
        };
        tracing::info!(
            run = %self.method,
            step = steps_done,
            of = self.steps,
            bpb = format!("{bpb:.4}"),
            train_loss = train_loss.map(|l| format!("{l:.4}")),
            "evaluated"
        );
        self.curve.push(point);
        while self.next_eval <= steps_done {
            self.next_eval += self.eval_every;
        }
        Ok(())
    }

    fn finish(self, method: Method, seconds: f64) -> RunResult {
        RunResult {
            name: method.to_string(),
            method,
            steps: self.steps_done,
            exchanges: self.exchanges,
            tokens: self.steps_done * self.tokens_per_step,
            final_bpb: self.curve.last().map_or(f64::NAN, |p| p.bpb),
            bytes_sent: self.sent / self.replicas,
            bytes_received: self.received / self.replicas,
            payload_bytes: self.payloads,
            curve: self.curve,
            seconds,
        }
    }
}

/// Validation bits per byte of `model` on the study's held-out set.
pub fn evaluate(data: &StudyData, model: &Llama) -> Result<f64, ExperimentError> {
    let mut total = templar_engine::Evaluation::default();
    for (batch, bytes) in data.validation() {
        total.add(model.evaluate(batch, *bytes)?);
    }
    Ok(total.bits_per_byte())
}

/// The model's weights as flat buffers, and back.
pub(crate) fn read(trainer: &Trainer) -> Result<Vec<NamedBuffer>, ExperimentError> {
    Ok(trainer.model.params.read()?)
}

pub(crate) fn write(trainer: &mut Trainer, weights: &[NamedBuffer]) -> Result<(), ExperimentError> {
    Ok(trainer.model.params.write(weights)?)
}
