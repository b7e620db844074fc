//! One inner-optimizer step: micro-batches with gradient accumulation, global grad-norm clipping,
//! AdamW on the scheduled learning rate; bf16 autocast on CUDA, f32 on CPU.

use tch::{Device, Kind, Tensor};

use crate::config::TrainConfig;
use crate::error::EngineError;
use crate::model::{IGNORE_INDEX, Llama};
use crate::optim::{AdamW, learning_rate};

/// Token ids `[batch, seq]` with labels aligned to them (the loss shifts); kept on the CPU until used.
pub struct Batch {
    pub input_ids: Tensor,
    pub labels: Tensor,
}

impl Batch {
    /// A batch of `rows` samples of `seq` tokens, labels equal to the inputs. Token ids come from disk
    /// or the network, so each one is checked against the vocabulary before libtorch sees it.
    pub fn from_tokens(
        tokens: &[i64],
        rows: usize,
        seq: usize,
        vocab_size: usize,
    ) -> Result<Self, EngineError> {
        if rows == 0 || seq < 2 || tokens.len() != rows * seq {
            return Err(EngineError::Batch(format!(
                "{} tokens do not form {rows} samples of {seq} (need at least 2 tokens per sample)",
                tokens.len()
            )));
        }
        if let Some(bad) = tokens.iter().find(|&&t| t < 0 || t as usize >= vocab_size) {
            return Err(EngineError::Batch(format!(
                "token id {bad} is outside the model's vocabulary of {vocab_size}; was the data prepared with another tokenizer?"
            )));
        }
        let input_ids = Tensor::f_from_slice(tokens)?.f_view([rows as i64, seq as i64])?;
        Ok(Self {
            labels: input_ids.shallow_clone(),
            input_ids,
        })
    }

    /// Replaces the labels; positions set to [`IGNORE_INDEX`] do not count in the loss.
    pub fn with_labels(mut self, labels: &[i64]) -> Result<Self, EngineError> {
        self.labels = Tensor::f_from_slice(labels)?.f_view(self.input_ids.size().as_slice())?;
        Ok(self)
    }

    pub fn rows(&self) -> usize {
        self.input_ids.size()[0] as usize
    }

    /// Tokens per sample.
    pub fn seq_len(&self) -> usize {
        self.input_ids.size().get(1).copied().unwrap_or(0) as usize
    }

    /// The token ids and the labels, row after row: what [`Batch::from_tokens`] and
    /// [`Batch::with_labels`] rebuild the batch from (to hand it to another process).
    pub fn to_tokens(&self) -> Result<(Vec<i64>, Vec<i64>), EngineError> {
        let flat = |t: &Tensor| -> Result<Vec<i64>, EngineError> {
            Ok(Vec::<i64>::try_from(
                &t.f_reshape([-1])?.f_to_device(Device::Cpu)?,
            )?)
        };
        Ok((flat(&self.input_ids)?, flat(&self.labels)?))
    }

    pub(crate) fn predicted_positions(&self) -> Result<i64, EngineError> {
        let seq = self.labels.size()[1];
        let targets = self.labels.f_narrow(1, 1, seq - 1)?;
        Ok(i64::try_from(
            targets.f_ne(IGNORE_INDEX)?.f_sum(Kind::Int64)?,
        )?)
    }

    /// Rows `start..start + len` as a batch of their own (views, no copy).
    pub fn rows_slice(&self, start: usize, len: usize) -> Result<Batch, EngineError> {
        let cut = |t: &Tensor| t.f_narrow(0, start as i64, len as i64);
        Ok(Batch {
            input_ids: cut(&self.input_ids)?,
            labels: cut(&self.labels)?,
        })
    }

    pub(crate) fn rows_range(
        &self,
        start: usize,
        len: usize,
        device: Device,
    ) -> Result<(Tensor, Tensor), EngineError> {
        let cut = |t: &Tensor| t.f_narrow(0, start as i64, len as i64)?.f_to_device(device);
        Ok((cut(&self.input_ids)?, cut(&self.labels)?))
    }
}

/// What one optimizer step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// Mean loss over the batch's predicted positions, in nats.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub lr: f64,
    pub tokens: usize,
}

/// What one gradient pass measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gradients {
    /// Mean loss over the batch's predicted positions, in nats.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub tokens: usize,
}

/// A model with its inner optimizer.
pub struct Trainer {
    pub model: Llama,
    pub optimizer: AdamW,
    pub config: TrainConfig,
}

impl Trainer {
    pub fn new(model: Llama, config: TrainConfig) -> Result<Self, EngineError> {
        let optimizer = AdamW::new(&model.params, &config)?;
        Ok(Self {
            model,
            optimizer,
            config,
        })
    }

    /// One optimizer step over `batch`, split into micro-batches of `micro_batch_size` samples.
    pub fn train_step(&mut self, batch: &Batch) -> Result<StepStats, EngineError> {
        train_step(&mut self.model, &mut self.optimizer, &self.config, batch)
    }

    /// The clipped gradient of the batch's mean loss, left on the parameters (read it with
    /// [`Parameters::read_gradient`](crate::Parameters::read_gradient)); no optimizer step. For
    /// optimizers that live outside the engine, such as a DeMo-style sign step.
    pub fn compute_gradients(&mut self, batch: &Batch) -> Result<Gradients, EngineError> {
        compute_gradients(&mut self.model, &self.config, batch)
    }
}

/// [`Trainer::train_step`] on a model and optimizer held apart (a node keeps its optimizer only
/// when it trains).
pub fn train_step(
    model: &mut Llama,
    optimizer: &mut AdamW,
    config: &TrainConfig,
    batch: &Batch,
) -> Result<StepStats, EngineError> {
    let gradients = compute_gradients(model, config, batch)?;
    let lr = learning_rate(config, optimizer.schedule_step());
    optimizer.step(&mut model.params, lr)?;
    Ok(StepStats {
        loss: gradients.loss,
        grad_norm: gradients.grad_norm,
        lr,
        tokens: gradients.tokens,
    })
}

fn compute_gradients(
    model: &mut Llama,
    config: &TrainConfig,
    batch: &Batch,
) -> Result<Gradients, EngineError> {
    let predicted = batch.predicted_positions()?;
    let loss_sum = accumulate_gradients(model, config, batch, predicted)?;
    let grad_norm = clip_gradients(model, config.grad_clip)?;
    Ok(Gradients {
        loss: loss_sum / predicted as f64,
        grad_norm,
        tokens: batch.rows() * batch.input_ids.size()[1] as usize,
    })
}

/// Zeroes the gradients, then accumulates those of `batch`'s summed loss over `divisor`
/// positions, a micro-batch at a time; returns the summed loss. Each micro-batch's loss is
/// divided by the count of a whole batch, so the accumulated gradient is exactly that of its
/// mean however the batch is split — across micro-batches, or across ranks that each hold some
/// of its rows.
pub(crate) fn accumulate_gradients(
    model: &mut Llama,
    config: &TrainConfig,
    batch: &Batch,
    divisor: i64,
) -> Result<f64, EngineError> {
    let device = model.device();
    model.params.zero_gradients()?;
    if divisor == 0 {
        return Err(EngineError::Batch(
            "every label is ignored; nothing to train on".into(),
        ));
    }
    let micro = config.micro_batch_size.max(1);
    let mut loss_sum = 0.0;
    for start in (0..batch.rows()).step_by(micro) {
        let len = micro.min(batch.rows() - start);
        let (input_ids, labels) = batch.rows_range(start, len, device)?;
        let (divisor, autocast) = (divisor as f64, device.is_cuda());
        loss_sum += if config.recompute_activations {
            model.backward_loss_sum_recomputing(&input_ids, &labels, divisor, autocast)?
        } else {
            model.backward_loss_sum(&input_ids, &labels, divisor, autocast)?
        }
        .0;
    }
    Ok(loss_sum)
}

/// Scales all gradients by `min(1, clip / (norm + 1e-6))`, as `torch.nn.utils.clip_grad_norm_`.
fn clip_gradients(model: &mut Llama, grad_clip: f64) -> Result<f64, EngineError> {
    let grads: Vec<Tensor> = model
        .params
        .tensors
        .iter()
        .map(Tensor::grad)
        .filter(Tensor::defined)
        .collect();
    if grads.is_empty() {
        return Ok(0.0);
    }
    let norms = grads
        .iter()
        .map(|g| g.f_norm())
        .collect::<Result<Vec<_>, _>>()?;
    let total = Tensor::f_stack(&norms, 0)?.f_norm()?;
    let total_value = f64::try_from(&total)?;
    if grad_clip > 0.0 {
        let coef = total
            .f_add_scalar(1e-6)?
            .f_reciprocal()?
            .f_mul_scalar(grad_clip)?
            .f_clamp_max(1.0)?;
        tch::no_grad(|| -> Result<(), EngineError> {
            for mut grad in grads {
                let _ = grad.f_mul_(&coef)?;
            }
            Ok(())
        })?;
    }
    Ok(total_value)
}
