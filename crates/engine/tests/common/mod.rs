#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;

use templar_engine::{Batch, Device, Llama, ModelConfig, Preset, TrainConfig, Trainer};

/// A model small enough for quick tests: the tiny preset's shape with two layers.
pub fn small() -> (ModelConfig, TrainConfig) {
    let preset = Preset::load("tiny").unwrap();
    let mut model = preset.model;
    model.num_hidden_layers = 2;
    model.hidden_size = 64;
    model.intermediate_size = 128;
    let mut train = preset.train;
    train.seq_len = 16;
    train.batch_size = 4;
    train.micro_batch_size = 2;
    train.warmup_steps = 2;
    (model, train)
}

pub fn trainer(seed: u64) -> Trainer {
    let (model, train) = small();
    Trainer::new(Llama::new(&model, seed, Device::Cpu).unwrap(), train).unwrap()
}

/// A deterministic batch for step `step`.
pub fn batch(step: u64, config: &ModelConfig, train: &TrainConfig) -> Batch {
    let count = train.batch_size * train.seq_len;
    let tokens: Vec<i64> = (0..count as u64)
        .map(|i| ((i * 7 + step * 13 + (i / 5) * (i % 3)) % config.vocab_size as u64) as i64)
        .collect();
    Batch::from_tokens(&tokens, train.batch_size, train.seq_len, config.vocab_size).unwrap()
}

pub fn bits(trainer: &Trainer) -> Vec<Vec<u32>> {
    trainer
        .model
        .params
        .read()
        .unwrap()
        .into_iter()
        .map(|b| b.data.iter().map(|v| v.to_bits()).collect())
        .collect()
}

/// Where scripts/setup caches torch, transformers and the corpus.
pub fn cache() -> PathBuf {
    std::env::var_os("TEMPLAR_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/templar"))
}
