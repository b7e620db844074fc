//! Model and training configuration: presets embedded as TOML, parameter counts and memory needs.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::EngineError;

/// A LLaMA decoder's shape, with Hugging Face `LlamaConfig` field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub tie_word_embeddings: bool,
    pub initializer_range: f64,
}

/// Inner-loop training settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// The tokenizer the preset expects its data prepared with.
    pub tokenizer: String,
    pub seq_len: usize,
    /// Samples per optimizer step.
    pub batch_size: usize,
    /// Samples per forward/backward pass; gradients accumulate over `batch_size / micro_batch_size` passes.
    pub micro_batch_size: usize,
    pub lr: f64,
    pub betas: [f64; 2],
    pub eps: f64,
    pub weight_decay: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
    /// The cosine decay ends at `lr · eta_min_factor`.
    pub eta_min_factor: f64,
    /// Global gradient-norm bound; 0 disables clipping.
    pub grad_clip: f64,
    /// Keep only each layer's input for the backward pass and run the layer's forward again
    /// there: one more forward pass, for all but one layer's activations. The gradients are
    /// the same either way.
    #[serde(default)]
    pub recompute_activations: bool,
}

/// A named model shape with the training settings it is meant to be used with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    pub model: ModelConfig,
    pub train: TrainConfig,
}

const PRESETS: [(&str, &str); 5] = [
    ("tiny", include_str!("../presets/tiny.toml")),
    ("150m", include_str!("../presets/150m.toml")),
    ("1b", include_str!("../presets/1b.toml")),
    ("8b", include_str!("../presets/8b.toml")),
    ("70b", include_str!("../presets/70b.toml")),
];

impl Preset {
    pub fn names() -> impl Iterator<Item = &'static str> {
        PRESETS.iter().map(|(name, _)| *name)
    }

    /// A built-in preset by name, or a TOML file by path.
    pub fn load(name_or_path: &str) -> Result<Self, EngineError> {
        if let Some((_, text)) = PRESETS.iter().find(|(name, _)| *name == name_or_path) {
            return Self::parse(text, name_or_path);
        }
        let path = Path::new(name_or_path);
        if !path.exists() {
            return Err(EngineError::Config(format!(
                "unknown preset {name_or_path:?}: use one of {} or the path of a TOML file",
                Self::names().collect::<Vec<_>>().join(", ")
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| EngineError::io(path, e))?;
        Self::parse(&text, name_or_path)
    }

    pub fn parse(text: &str, origin: &str) -> Result<Self, EngineError> {
        let preset: Self =
            toml::from_str(text).map_err(|e| EngineError::Config(format!("{origin}: {e}")))?;
        preset
            .model
            .check()
            .map_err(|e| EngineError::Config(format!("{origin}: {e}")))?;
        preset
            .train
            .check()
            .map_err(|e| EngineError::Config(format!("{origin}: {e}")))?;
        Ok(preset)
    }
}

impl ModelConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    pub fn kv_dim(&self) -> usize {
        self.head_dim() * self.num_key_value_heads
    }

    fn check(&self) -> Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be positive"));
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err("hidden_size must be a multiple of num_attention_heads".into());
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err("num_attention_heads must be a multiple of num_key_value_heads".into());
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err("the head dimension (hidden_size / num_attention_heads) must be even for rotary embeddings".into());
        }
        Ok(())
    }

    /// Exact number of trainable parameters.
    pub fn parameter_count(&self) -> u64 {
        crate::params::parameter_shapes(self)
            .iter()
            .map(|(_, shape)| shape.iter().product::<i64>() as u64)
            .sum()
    }

    /// Bytes needed to train in f32 with AdamW: weights, gradients and two moments (16 bytes per
    /// parameter), plus the miner's error-feedback buffer and a copy of the weights (8 more).
    /// Activations come on top and depend on the micro-batch.
    pub fn training_state_bytes(&self) -> u64 {
        self.parameter_count() * 24
    }
}

impl TrainConfig {
    fn check(&self) -> Result<(), String> {
        if self.seq_len < 2 {
            return Err("seq_len must be at least 2".into());
        }
        if self.micro_batch_size == 0 || !self.batch_size.is_multiple_of(self.micro_batch_size) {
            return Err("batch_size must be a positive multiple of micro_batch_size".into());
        }
        if !(self.lr > 0.0 && self.eps > 0.0 && self.weight_decay >= 0.0 && self.grad_clip >= 0.0) {
            return Err(
                "lr and eps must be positive, weight_decay and grad_clip non-negative".into(),
            );
        }
        if !self.betas.iter().all(|b| (0.0..1.0).contains(b)) {
            return Err("betas must lie in [0, 1)".into());
        }
        if !(0.0..=1.0).contains(&self.eta_min_factor) {
            return Err("eta_min_factor must lie in [0, 1]".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_parses() {
        for name in Preset::names() {
            Preset::load(name).unwrap();
        }
    }

    #[test]
    fn parameter_counts_match_known_models() {
        // LLaMA-3 8B has 8 030 261 248 parameters, LLaMA-3 70B 70 553 706 496.
        assert_eq!(
            Preset::load("8b").unwrap().model.parameter_count(),
            8_030_261_248
        );
        assert_eq!(
            Preset::load("70b").unwrap().model.parameter_count(),
            70_553_706_496
        );
    }

    #[test]
    fn tiny_is_a_few_million_parameters() {
        let count = Preset::load("tiny").unwrap().model.parameter_count();
        assert!((2_000_000..6_000_000).contains(&count), "{count}");
    }

    #[test]
    fn bad_presets_name_the_problem() {
        let error = Preset::load("nope").unwrap_err().to_string();
        assert!(error.contains("tiny"), "{error}");
        let text = include_str!("../presets/tiny.toml")
            .replace("num_key_value_heads = 2", "num_key_value_heads = 3");
        let error = Preset::parse(&text, "x.toml").unwrap_err().to_string();
        assert!(error.contains("num_key_value_heads"), "{error}");
    }
}
