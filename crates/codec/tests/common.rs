//! Shared helpers for the codec's integration tests.
#![allow(dead_code)]

use templar_codec::{CodecConfig, IndexCoding, Payload, Schema, TensorSpec, ValueCoding, compress};

/// Deterministic pseudo-random values in [-1, 1).
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// A small model: a matrix, an odd-shaped matrix, a vector and a scalar.
pub fn specs() -> Vec<TensorSpec> {
    vec![
        TensorSpec::new("model.layers.0.mlp.up_proj.weight", &[64, 96]),
        TensorSpec::new("model.layers.0.self_attn.q_proj.weight", &[30, 21]),
        TensorSpec::new("model.norm.weight", &[40]),
        TensorSpec::new("scalar", &[]),
    ]
}

pub fn config(values: ValueCoding) -> CodecConfig {
    CodecConfig {
        target_chunk: 16,
        topk: 8,
        values,
        ..CodecConfig::default()
    }
}

/// Compresses one fresh pseudo-gradient for every tensor of `schema`.
pub fn payload(schema: &Schema, seed: u64) -> Payload {
    let mut ef: Vec<Vec<f32>> = (0..schema.len())
        .map(|i| vec![0.0; schema.plan(i).numel()])
        .collect();
    let delta: Vec<Vec<f32>> = (0..schema.len())
        .map(|i| values(schema.plan(i).numel(), seed + i as u64))
        .collect();
    compress(schema, &mut ef, &delta).expect("compress")
}

pub fn encoded(schema: &Schema, seed: u64, coding: IndexCoding) -> Vec<u8> {
    templar_codec::encode(schema, &payload(schema, seed), coding)
}
