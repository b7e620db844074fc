//! What one study holds fixed across its runs.

use serde::{Deserialize, Serialize};

/// Settings shared by every run of a study, so that runs differ only in how replicas communicate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// Replicas (data-parallel workers, or miners).
    pub replicas: usize,
    /// Training tokens of each run, all replicas together.
    pub tokens: u64,
    /// Samples each replica trains on per optimizer step.
    pub batch_size: usize,
    /// Seeds the model's initial weights and the data order; the same for every run.
    pub seed: u64,
    /// Validation evaluations along each run (the curve's resolution).
    pub eval_points: usize,
    /// Held-out samples in the validation set.
    pub validation_samples: usize,
    pub outer: OuterSettings,
}

/// The outer optimizers' and codecs' settings. Fields missing from a saved run take their defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OuterSettings {
    /// DiLoCo's outer Nesterov learning rate and momentum (the DiLoCo paper's 0.7 and 0.9).
    pub diloco_lr: f32,
    pub diloco_momentum: f32,
    /// SparseLoCo's `θ ← θ − lr · aggregate`.
    pub sparseloco_lr: f32,
    /// SparseLoCo's error-feedback decay β in `e = β·e + Δ`.
    pub error_feedback_beta: f32,
    /// DeMo's momentum decay (its `compression_decay`).
    pub demo_decay: f32,
    /// Upper bound on each chunk side: 64 makes the 4096-value chunks that k counts against.
    pub chunk: usize,
    /// SparseLoCo's quantizer levels: 4 (2-bit values, the network's setting) or 256 (8-bit).
    pub quantizer_bins: u16,
    /// Keeps SparseLoCo's error feedback in bf16 between exchanges (2 bytes a parameter instead
    /// of 4), as a node would store it; each exchange still accumulates and compresses in f32.
    pub error_feedback_bf16: bool,
}

impl Default for OuterSettings {
    fn default() -> Self {
        OuterSettings {
            diloco_lr: 0.7,
            diloco_momentum: 0.9,
            sparseloco_lr: 1.0,
            error_feedback_beta: 0.95,
            demo_decay: 0.999,
            chunk: 64,
            quantizer_bins: 4,
            error_feedback_bf16: false,
        }
    }
}

impl Settings {
    /// The quick study: 4 replicas of 2 samples per step, 600 000 tokens per run.
    pub fn quick() -> Settings {
        Settings {
            replicas: 4,
            tokens: 600_000,
            batch_size: 2,
            seed: 0,
            eval_points: 12,
            validation_samples: 64,
            outer: OuterSettings::default(),
        }
    }

    /// Optimizer steps each replica takes: the token budget over the tokens of one step of all
    /// replicas, at least one.
    pub fn steps(&self, seq_len: usize) -> u64 {
        let per_step = (self.replicas * self.batch_size * seq_len).max(1) as u64;
        (self.tokens / per_step).max(1)
    }

    pub fn check(&self) -> Result<(), String> {
        if self.replicas == 0 || self.replicas > usize::from(u16::MAX) {
            return Err(format!(
                "--replicas must be between 1 and 65535, got {}",
                self.replicas
            ));
        }
        if self.batch_size == 0 {
            return Err("--batch-size must be at least 1".into());
        }
        if self.validation_samples == 0 {
            return Err("--validation-samples must be at least 1".into());
        }
        let o = &self.outer;
        let positive = [o.diloco_lr, o.sparseloco_lr];
        if !positive.iter().all(|v| v.is_finite() && *v > 0.0) {
            return Err("outer learning rates must be positive numbers".into());
        }
        let unit = [o.diloco_momentum, o.error_feedback_beta, o.demo_decay];
        if !unit.iter().all(|v| (0.0..1.0).contains(v)) {
            return Err("momentum and decay factors must lie in [0, 1)".into());
        }
        if o.chunk < 2 {
            return Err(format!("--chunk must be at least 2, got {}", o.chunk));
        }
        if ![4, 256].contains(&o.quantizer_bins) {
            return Err(format!(
                "--quantizer-bins must be 4 (2-bit values) or 256 (8-bit), got {}",
                o.quantizer_bins
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_divide_the_budget_among_replicas() {
        let settings = Settings::quick();
        // 600 000 tokens / (4 replicas · 2 samples · 256 tokens) = 292.97 → 292 steps.
        assert_eq!(settings.steps(256), 292);
        let tiny_budget = Settings {
            tokens: 10,
            ..Settings::quick()
        };
        assert_eq!(tiny_budget.steps(256), 1);
    }

    #[test]
    fn bad_settings_are_named() {
        let mut settings = Settings::quick();
        settings.outer.error_feedback_beta = 1.0;
        assert!(settings.check().unwrap_err().contains("decay"));
        settings = Settings {
            replicas: 0,
            ..Settings::quick()
        };
        assert!(settings.check().unwrap_err().contains("--replicas"));
    }
}
