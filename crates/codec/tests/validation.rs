//! Every way a payload can be malformed is a typed error naming the problem, never a panic.
#![allow(clippy::unwrap_used)] // test helpers: a failure should stop the test

mod common;

use common::encoded;
use proptest::prelude::*;
use templar_codec::{
    CodecConfig, DecodeError, IndexCoding, Schema, TensorSpec, ValueCoding, decode, decode_keeping,
};

// Byte offsets inside a payload of the single tensor "w" [8, 16] (see docs/wire-format.md).
const TENSOR_COUNT: usize = 8;
const NAME: usize = 14;
const RANK: usize = 15;
const DIM0: usize = 16;
const K: usize = 32;
const TRANSFORM: usize = 36;
const INDEX_TAG: usize = 37;
const RICE_PARAM: usize = 38;
const VALUE_TAG: usize = 39;
const N_BINS: usize = 40;
const SHIFT: usize = 42;
const SCALE: usize = 46;
const LOOKUP: usize = 50;
/// First byte after the lookup table (4 bins): the index section length.
const INDEX_LEN: usize = 66;
const INDEX: usize = 70;

fn schema_with(values: ValueCoding) -> Schema {
    let config = CodecConfig {
        target_chunk: 4,
        topk: 4,
        values,
        ..CodecConfig::default()
    };
    Schema::new(vec![TensorSpec::new("w", &[8, 16])], config).unwrap()
}

fn schema() -> Schema {
    schema_with(ValueCoding::TWO_BIT)
}

fn valid(coding: IndexCoding) -> Vec<u8> {
    encoded(&schema(), 1, coding)
}

/// Rewrites bytes at `at` and recomputes the checksum, so the decoder looks past it.
fn patched(mut bytes: Vec<u8>, at: usize, new: &[u8]) -> Vec<u8> {
    bytes[at..at + new.len()].copy_from_slice(new);
    reseal(bytes)
}

fn reseal(mut bytes: Vec<u8>) -> Vec<u8> {
    let body = bytes.len() - 4;
    let crc = crc32fast::hash(&bytes[..body]);
    bytes[body..].copy_from_slice(&crc.to_le_bytes());
    bytes
}

fn err(bytes: &[u8]) -> DecodeError {
    decode(&schema(), bytes).expect_err("must be rejected")
}

#[test]
fn the_offsets_above_match_the_encoder() {
    let b = valid(IndexCoding::Packed12);
    assert_eq!(&b[NAME..NAME + 1], b"w");
    assert_eq!(b[RANK], 2);
    assert_eq!(u32::from_le_bytes(b[K..K + 4].try_into().unwrap()), 4);
    assert_eq!(
        u16::from_le_bytes(b[N_BINS..N_BINS + 2].try_into().unwrap()),
        4
    );
    assert_eq!(
        u32::from_le_bytes(b[INDEX_LEN..INDEX_LEN + 4].try_into().unwrap()),
        48
    );
    assert!(decode(&schema(), &b).is_ok());
}

#[test]
fn whole_payload_problems() {
    let b = valid(IndexCoding::Rice);
    let limit = schema().max_payload_bytes();
    assert!(matches!(
        err(&vec![0; limit + 1]),
        DecodeError::Oversize { .. }
    ));
    assert!(matches!(err(&b[..3]), DecodeError::Truncated { .. }));
    assert!(matches!(
        err(&patched(b.clone(), 0, b"XXXX")),
        DecodeError::BadMagic
    ));
    assert!(matches!(
        err(&patched(b.clone(), 4, &[9, 0])),
        DecodeError::UnsupportedVersion { found: 9, .. }
    ));
    let mut flipped = b.clone();
    flipped[SHIFT] ^= 1;
    assert!(matches!(err(&flipped), DecodeError::Checksum { .. }));
    assert!(matches!(
        err(&patched(b.clone(), 6, &[1, 0])),
        DecodeError::UnknownTag {
            field: "header flags",
            ..
        }
    ));
    assert!(matches!(
        err(&patched(b.clone(), TENSOR_COUNT, &[2, 0, 0, 0])),
        DecodeError::TensorCount { .. }
    ));
    let mut cut = b[..SCALE].to_vec();
    cut.extend_from_slice(&[0; 4]);
    assert!(matches!(err(&reseal(cut)), DecodeError::Truncated { tensor, .. } if tensor == "w"));
    assert!(matches!(
        err(&patched(b.clone(), TENSOR_COUNT, &[0, 0, 0, 0])),
        DecodeError::TensorCount { .. }
    ));
    let mut longer = b[..b.len() - 4].to_vec();
    longer.extend_from_slice(&[0; 5]);
    let e = err(&reseal(longer));
    assert!(
        matches!(e, DecodeError::TrailingBytes { extra: 1 }),
        "{e:?}"
    );
}

#[test]
fn tensor_identity_problems() {
    let b = valid(IndexCoding::Rice);
    assert!(
        matches!(err(&patched(b.clone(), NAME, b"x")), DecodeError::UnknownTensor { tensor } if tensor == "x")
    );
    assert!(matches!(
        err(&patched(b.clone(), NAME, &[0xFF])),
        DecodeError::BadName
    ));
    assert!(matches!(
        err(&patched(b.clone(), NAME - 2, &[0, 0])),
        DecodeError::BadName
    ));
    assert!(matches!(
        err(&patched(b.clone(), DIM0, &[9, 0, 0, 0])),
        DecodeError::Shape { .. }
    ));
    assert!(matches!(
        err(&patched(b.clone(), RANK, &[3])),
        DecodeError::Shape { .. }
    ));
    // Two copies of the same tensor in a two-tensor schema.
    let two = Schema::new(
        vec![
            TensorSpec::new("w", &[8, 16]),
            TensorSpec::new("u", &[8, 16]),
        ],
        schema().config().to_owned(),
    )
    .unwrap();
    let one = valid(IndexCoding::Rice);
    let record = &one[12..one.len() - 4];
    let mut dup = one[..12].to_vec();
    dup[TENSOR_COUNT] = 2;
    dup.extend_from_slice(record);
    dup.extend_from_slice(record);
    dup.extend_from_slice(&[0; 4]);
    assert!(matches!(
        decode(&two, &reseal(dup)),
        Err(DecodeError::DuplicateTensor { .. })
    ));
}

#[test]
fn settings_that_differ_from_the_network() {
    let b = valid(IndexCoding::Rice);
    let setting = |bytes: Vec<u8>| match err(&bytes) {
        DecodeError::Setting { field, .. } => field,
        other => panic!("{other}"),
    };
    assert_eq!(setting(patched(b.clone(), K, &[6, 0, 0, 0])), "k");
    assert_eq!(
        setting(patched(b.clone(), K - 4, &[2, 0, 0, 0])),
        "chunk columns"
    );
    assert_eq!(setting(patched(b.clone(), TRANSFORM, &[1])), "transform");
    assert_eq!(setting(patched(b.clone(), VALUE_TAG, &[1])), "value coding");
    assert_eq!(
        setting(patched(b.clone(), N_BINS, &[8, 0])),
        "number of bins"
    );
    assert!(matches!(
        err(&patched(b.clone(), VALUE_TAG, &[7])),
        DecodeError::UnknownTag {
            field: "value coding",
            ..
        }
    ));
    assert!(matches!(
        err(&patched(b.clone(), INDEX_TAG, &[7])),
        DecodeError::UnknownTag {
            field: "index coding",
            ..
        }
    ));
}

#[test]
fn bad_quantizer_parameters() {
    let b = valid(IndexCoding::Rice);
    let nan = f32::NAN.to_le_bytes();
    assert!(matches!(
        err(&patched(b.clone(), SHIFT, &nan)),
        DecodeError::NonFinite { field: "shift", .. }
    ));
    assert!(matches!(
        err(&patched(b.clone(), SCALE, &nan)),
        DecodeError::NonFinite { field: "scale", .. }
    ));
    let inf = f32::INFINITY.to_le_bytes();
    assert!(matches!(
        err(&patched(b.clone(), LOOKUP + 4, &inf)),
        DecodeError::NonFinite {
            field: "lookup table",
            ..
        }
    ));
    let huge = 1e6f32.to_le_bytes();
    assert!(matches!(
        err(&patched(b.clone(), SCALE, &huge)),
        DecodeError::ScaleOutOfBounds { .. }
    ));
    let tiny = 1e-20f32.to_le_bytes();
    assert!(matches!(
        err(&patched(b.clone(), SCALE, &tiny)),
        DecodeError::ScaleOutOfBounds { .. }
    ));
    // shift + lookup overflows to infinity
    let big = f32::MAX.to_le_bytes();
    let both = patched(patched(b.clone(), SHIFT, &big), LOOKUP + 12, &big);
    assert!(matches!(err(&both), DecodeError::NonFinite { .. }));
}

#[test]
fn bad_indices() {
    // 8 chunks of 16 values, 4 kept each: 32 indices, 48 bytes packed.
    let b = valid(IndexCoding::Packed12);
    let with = |indices: &[u16]| {
        let mut all = indices.to_vec();
        while all.len() < 32 {
            all.extend_from_slice(&[0, 1, 2, 3]);
        }
        patched(
            b.clone(),
            INDEX,
            &templar_codec::index::encode_packed12(&all),
        )
    };
    // A rank that keeps none of the tensors still validates them all.
    let kept_none = decode_keeping(&schema(), &with(&[0, 1, 2, 16]), |_| false);
    assert!(matches!(
        kept_none,
        Err(DecodeError::IndexOutOfRange { index: 16, .. })
    ));
    assert!(matches!(
        err(&with(&[0, 1, 2, 16])),
        DecodeError::IndexOutOfRange {
            index: 16,
            chunk: 0,
            ..
        }
    ));
    assert!(matches!(
        err(&with(&[0, 1, 2, 3, 4, 5, 5, 6])),
        DecodeError::DuplicateIndex {
            index: 5,
            chunk: 1,
            ..
        }
    ));
    assert!(matches!(
        err(&with(&[3, 1, 2, 4])),
        DecodeError::Unsorted { chunk: 0, .. }
    ));
    assert!(matches!(
        err(&patched(b.clone(), INDEX_LEN, &[47, 0, 0, 0])),
        DecodeError::SectionLength { .. }
    ));
    let rice = valid(IndexCoding::Rice);
    assert!(matches!(
        err(&patched(rice.clone(), RICE_PARAM, &[17])),
        DecodeError::RiceParameter { param: 17, .. }
    ));
    // A one-byte-longer index section is a length mismatch or stray bytes, never accepted.
    assert!(
        err(&patched(rice.clone(), INDEX_LEN, &[rice[INDEX_LEN] + 1]))
            .to_string()
            .contains("tensor `w`")
    );
}

#[test]
fn bad_values() {
    // 6 bins in 3 bits: codes 6 and 7 do not exist.
    let six = schema_with(ValueCoding::Quantized {
        n_bins: 6,
        range: 4.0,
    });
    let b = encoded(&six, 2, IndexCoding::Packed12);
    let values_at = b.len() - 4 - (32 * 3usize).div_ceil(8);
    let bad = patched(b.clone(), values_at, &[0b0000_0111]);
    assert!(matches!(
        decode(&six, &bad),
        Err(DecodeError::CodeOutOfRange {
            code: 7,
            position: 0,
            ..
        })
    ));
    // f32 values: NaN is refused.
    let f = schema_with(ValueCoding::F32);
    let b = encoded(&f, 2, IndexCoding::Packed12);
    let at = b.len() - 4 - 4;
    assert!(matches!(
        decode(&f, &patched(b, at, &f32::NAN.to_le_bytes())),
        Err(DecodeError::NonFinite {
            field: "values",
            ..
        })
    ));
    // bf16 infinity is refused.
    let h = schema_with(ValueCoding::Bf16);
    let b = encoded(&h, 2, IndexCoding::Packed12);
    let at = b.len() - 4 - 2;
    assert!(matches!(
        decode(&h, &patched(b, at, &[0x80, 0x7F])),
        Err(DecodeError::NonFinite { .. })
    ));
    // Nonzero padding after the last code: 12 codes of 3 bits leave 4 spare bits.
    let config = CodecConfig {
        target_chunk: 4,
        topk: 4,
        ..*six.config()
    };
    let odd = Schema::new(vec![TensorSpec::new("w", &[4, 12])], config).unwrap();
    let b = encoded(&odd, 2, IndexCoding::Packed12);
    let last = b.len() - 5;
    let mut dirty = b.clone();
    dirty[last] |= 0x80;
    assert!(matches!(
        decode(&odd, &reseal(dirty)),
        Err(DecodeError::Padding {
            section: "value",
            ..
        })
    ));
}

#[test]
fn errors_name_the_tensor() {
    let b = valid(IndexCoding::Rice);
    let msg = err(&patched(b, SCALE, &f32::NAN.to_le_bytes())).to_string();
    assert_eq!(msg, "tensor `w`: scale is NaN or infinite");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = decode(&schema(), &bytes);
        let _ = decode(&schema(), &reseal_if_possible(bytes));
    }

    #[test]
    fn corrupted_payloads_never_panic(
        coding in prop::sample::select(vec![IndexCoding::Rice, IndexCoding::Packed12]),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut b = valid(coding);
        for (at, byte) in edits {
            let i = at.index(b.len());
            b[i] = byte;
        }
        if truncate {
            b.truncate(cut.index(b.len()));
        }
        let _ = decode(&schema(), &b);
        let resealed = reseal_if_possible(b);
        if let Ok(p) = decode(&schema(), &resealed) {
            // Whatever is accepted is safe to aggregate.
            let mut out = vec![vec![0f32; 128]];
            templar_codec::aggregate(&schema(), &[&p], &mut out).unwrap();
            prop_assert!(out[0].iter().all(|x| x.is_finite()));
        }
    }
}

fn reseal_if_possible(bytes: Vec<u8>) -> Vec<u8> {
    if bytes.len() >= 16 {
        reseal(bytes)
    } else {
        bytes
    }
}
