//! Every codec option survives encode → decode unchanged, and compression is deterministic.
#![allow(clippy::unwrap_used)] // test helpers: a failure should stop the test

mod common;

use common::{config, encoded, payload, specs};
use templar_codec::{
    CodecConfig, IndexCoding, Schema, Transform, ValueCoding, assemble, decode, decode_keeping,
    encode, encode_record,
};

fn options() -> Vec<CodecConfig> {
    let mut out = Vec::new();
    for values in [
        ValueCoding::TWO_BIT,
        ValueCoding::EIGHT_BIT,
        ValueCoding::F32,
        ValueCoding::Bf16,
    ] {
        for transform in [Transform::None, Transform::Dct] {
            out.push(CodecConfig {
                transform,
                ..config(values)
            });
        }
    }
    out
}

#[test]
fn every_option_round_trips() {
    for cfg in options() {
        let schema = Schema::new(specs(), cfg).unwrap();
        let p = payload(&schema, 3);
        for coding in [IndexCoding::Rice, IndexCoding::Packed12] {
            let bytes = encode(&schema, &p, coding);
            assert!(bytes.len() <= schema.max_payload_bytes());
            let back =
                decode(&schema, &bytes).unwrap_or_else(|e| panic!("{cfg:?} {coding:?}: {e}"));
            assert_eq!(back, p, "{cfg:?} {coding:?}");
        }
    }
}

#[test]
fn a_rank_keeps_only_its_tensors() {
    let schema = Schema::new(specs(), config(ValueCoding::TWO_BIT)).unwrap();
    let p = payload(&schema, 5);
    let bytes = encode(&schema, &p, IndexCoding::Rice);
    let mine = |i: usize| i % 2 == 1;
    let kept = decode_keeping(&schema, &bytes, mine).unwrap();
    assert_eq!(kept.tensors.len(), schema.len());
    for (i, (kept, whole)) in kept.tensors.iter().zip(&p.tensors).enumerate() {
        if mine(i) {
            assert_eq!(kept, whole, "tensor {i}");
        } else {
            assert!(
                kept.indices.is_empty() && kept.values.is_empty(),
                "tensor {i}"
            );
        }
    }
}

#[test]
fn records_encoded_apart_assemble_into_the_same_bytes() {
    for cfg in options() {
        let schema = Schema::new(specs(), cfg).unwrap();
        let p = payload(&schema, 7);
        for coding in [IndexCoding::Rice, IndexCoding::Packed12] {
            let records: Vec<Vec<u8>> = (0..schema.len())
                .map(|i| encode_record(&schema, i, &p.tensors[i], coding))
                .collect();
            let borrowed: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
            let bytes = assemble(&schema, &borrowed).unwrap();
            assert_eq!(bytes, encode(&schema, &p, coding), "{cfg:?} {coding:?}");
        }
    }
    // A record short is refused, not assembled into a payload every peer would reject.
    let schema = Schema::new(specs(), config(ValueCoding::TWO_BIT)).unwrap();
    let err = assemble(&schema, &[]).unwrap_err();
    assert!(err.to_string().contains('0'), "{err}");
}

#[test]
fn packed12_layout_is_12_bits_per_index() {
    let schema = Schema::new(specs(), config(ValueCoding::TWO_BIT)).unwrap();
    let p = payload(&schema, 5);
    let rice = encode(&schema, &p, IndexCoding::Rice).len();
    let packed = encode(&schema, &p, IndexCoding::Packed12).len();
    let kept: usize = (0..schema.len()).map(|i| schema.plan(i).kept()).sum();
    let packed_index_bytes: usize = (0..schema.len())
        .map(|i| schema.plan(i).kept().div_ceil(2) * 3)
        .sum();
    assert!(
        packed >= packed_index_bytes && rice < packed,
        "rice {rice} packed {packed} kept {kept}"
    );
}

#[test]
fn two_bit_codes_are_packed_four_per_byte() {
    let schema = Schema::new(specs(), config(ValueCoding::TWO_BIT)).unwrap();
    let p = payload(&schema, 6);
    let two = encode(&schema, &p, IndexCoding::Rice).len();
    let schema8 = Schema::new(specs(), config(ValueCoding::EIGHT_BIT)).unwrap();
    let eight = encoded(&schema8, 6, IndexCoding::Rice).len();
    let kept: usize = (0..schema.len()).map(|i| schema.plan(i).kept()).sum();
    // 8-bit codes cost 6 more bits per value, plus 252 more lookup entries per tensor.
    let extra_lookup = 4 * 252 * schema.len();
    assert_eq!(eight - two, kept * 6 / 8 + extra_lookup + rounding(&schema));
}

/// Each tensor's 2-bit section rounds up to a whole byte.
fn rounding(schema: &Schema) -> usize {
    (0..schema.len())
        .map(|i| {
            let k = schema.plan(i).kept();
            k - (k * 2).div_ceil(8) - (k * 6) / 8
        })
        .sum()
}

#[test]
fn compression_is_the_same_on_one_thread_and_many() {
    let schema = Schema::new(specs(), config(ValueCoding::TWO_BIT)).unwrap();
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let four = rayon::ThreadPoolBuilder::new()
        .num_threads(4)
        .build()
        .unwrap();
    let a = one.install(|| encoded(&schema, 9, IndexCoding::Rice));
    let b = four.install(|| encoded(&schema, 9, IndexCoding::Rice));
    assert_eq!(a, b);
}

#[test]
fn bits_per_param_at_production_settings() {
    // 64 of 4096 per chunk, 2-bit values, Rice indices: well under upstream's 0.3125 and 0.219.
    let schema = Schema::new(
        vec![templar_codec::TensorSpec::new("w", &[512, 512])],
        CodecConfig::default(),
    )
    .unwrap();
    let bytes = encoded(&schema, 1, IndexCoding::Rice);
    let bits = bytes.len() as f64 * 8.0 / (512.0 * 512.0);
    assert!(bits <= 0.16, "{bits} bits/param");
    let packed = encoded(&schema, 1, IndexCoding::Packed12);
    let bits12 = packed.len() as f64 * 8.0 / (512.0 * 512.0);
    // 14 bits per kept value plus ~80 bytes of headers.
    assert!(
        (0.21875..0.222).contains(&bits12),
        "{bits12} bits/param with 12-bit indices"
    );
}
