//! Evaluation: mean loss and bits per byte on held-out samples.

use crate::error::EngineError;
use crate::model::Llama;
use crate::train::Batch;

/// Totals over evaluated samples.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Evaluation {
    /// Sum of next-token losses, in nats.
    pub loss_sum: f64,
    /// Predicted positions.
    pub tokens: u64,
    /// UTF-8 bytes of text behind the predicted tokens.
    pub bytes: u64,
}

impl Evaluation {
    pub fn mean_loss(&self) -> f64 {
        if self.tokens == 0 {
            f64::NAN
        } else {
            self.loss_sum / self.tokens as f64
        }
    }

    /// Total nats / (ln 2 · total bytes): the tokenizer-independent measure of compression.
    pub fn bits_per_byte(&self) -> f64 {
        if self.bytes == 0 {
            f64::NAN
        } else {
            self.loss_sum / (std::f64::consts::LN_2 * self.bytes as f64)
        }
    }

    pub fn add(&mut self, other: Evaluation) {
        self.loss_sum += other.loss_sum;
        self.tokens += other.tokens;
        self.bytes += other.bytes;
    }
}

impl Llama {
    /// Loss totals of `batch`, whose predicted tokens stand for `bytes` bytes of text. No gradients.
    pub fn evaluate(&self, batch: &Batch, bytes: u64) -> Result<Evaluation, EngineError> {
        let device = self.device();
        let input_ids = batch.input_ids.f_to_device(device)?;
        let labels = batch.labels.f_to_device(device)?;
        let (loss, tokens) = tch::no_grad(|| {
            tch::autocast(device.is_cuda(), || self.loss_sum(&input_ids, &labels))
        })?;
        Ok(Evaluation {
            loss_sum: f64::try_from(&loss)?,
            tokens: tokens as u64,
            bytes,
        })
    }

    /// [`Llama::evaluate`] `micro_batch` samples at a time, so memory follows the micro-batch, not
    /// the number of samples; the totals are the same sums.
    pub fn evaluate_in(
        &self,
        batch: &Batch,
        bytes: u64,
        micro_batch: usize,
    ) -> Result<Evaluation, EngineError> {
        let rows = batch.rows();
        let micro = micro_batch.max(1);
        if rows <= micro {
            return self.evaluate(batch, bytes);
        }
        let mut total = Evaluation {
            bytes,
            ..Evaluation::default()
        };
        for start in (0..rows).step_by(micro) {
            let part = batch.rows_slice(start, micro.min(rows - start))?;
            let measured = self.evaluate(&part, 0)?;
            total.loss_sum += measured.loss_sum;
            total.tokens += measured.tokens;
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_per_byte_on_a_hand_computed_case() {
        // 10 tokens at ln 4 nats each = 10·ln 4 nats = 20 bits, over 5 bytes: 4 bits per byte.
        let evaluation = Evaluation {
            loss_sum: 10.0 * 4f64.ln(),
            tokens: 10,
            bytes: 5,
        };
        assert!((evaluation.bits_per_byte() - 4.0).abs() < 1e-12);
        assert!((evaluation.mean_loss() - 4f64.ln()).abs() < 1e-12);
    }
}
