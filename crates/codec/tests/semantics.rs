//! Error feedback and aggregation checked against numbers worked by hand.
#![allow(clippy::unwrap_used)] // test helpers: a failure should stop the test

mod common;

use common::{config, payload, specs, values};
use templar_codec::{
    CodecConfig, ErrorFeedback, Payload, Schema, SparseTensor, TensorSpec, Transform, ValueCoding,
    Values, aggregate, compress,
};

fn f32_schema(shape: &[usize], target_chunk: usize, topk: usize, ef: ErrorFeedback) -> Schema {
    let config = CodecConfig {
        target_chunk,
        topk,
        values: ValueCoding::F32,
        error_feedback: ef,
        ..CodecConfig::default()
    };
    Schema::new(vec![TensorSpec::new("v", shape)], config).unwrap()
}

#[test]
fn error_feedback_by_hand() {
    // e = 0.5·[1, −1, 0.5, 0] + 2·[0.25, 1, −2, 0.1] = [1, 1.5, −3.75, 0.2]; top-2: positions 1 and 2.
    let schema = f32_schema(&[4], 4, 2, ErrorFeedback { beta: 0.5, lr: 2.0 });
    let mut e = vec![vec![1.0, -1.0, 0.5, 0.0]];
    let p = compress(&schema, &mut e, &[vec![0.25f32, 1.0, -2.0, 0.1]]).unwrap();
    assert_eq!(p.tensors[0].indices, vec![1, 2]);
    assert_eq!(p.tensors[0].values, Values::F32(vec![1.5, -3.75]));
    // What was sent leaves the buffer; the rest stays for the next window.
    assert_eq!(e[0], vec![1.0, 0.0, 0.0, 0.2f32]);
}

#[test]
fn error_feedback_keeps_exactly_what_was_not_sent() {
    for values_coding in [
        ValueCoding::TWO_BIT,
        ValueCoding::EIGHT_BIT,
        ValueCoding::Bf16,
    ] {
        let schema = Schema::new(specs(), config(values_coding)).unwrap();
        let ef = schema.config().error_feedback;
        let e0: Vec<Vec<f32>> = (0..schema.len())
            .map(|i| values(schema.plan(i).numel(), 40 + i as u64))
            .collect();
        let delta: Vec<Vec<f32>> = (0..schema.len())
            .map(|i| values(schema.plan(i).numel(), 80 + i as u64))
            .collect();
        let mut e = e0.clone();
        let p = compress(&schema, &mut e, &delta).unwrap();
        for i in 0..schema.len() {
            let plan = schema.plan(i);
            let mut expected: Vec<f32> = e0[i]
                .iter()
                .zip(&delta[i])
                .map(|(&x, &d)| ef.beta * x + ef.lr * d)
                .collect();
            let sent = p.tensors[i].values.to_f32();
            for (t, (&pos, &v)) in p.tensors[i].indices.iter().zip(&sent).enumerate() {
                let chunk = t / plan.k;
                let (band, in_band) = (
                    chunk / plan.chunks_per_band(),
                    chunk % plan.chunks_per_band(),
                );
                expected[band * plan.band_len() + plan.offset_in_band(in_band, pos as usize)] -= v;
            }
            assert_eq!(e[i], expected, "{values_coding:?} tensor {i}");
        }
    }
}

#[test]
fn non_finite_pseudo_gradients_are_refused() {
    let schema = f32_schema(&[4], 4, 2, ErrorFeedback::default());
    let err = compress(
        &schema,
        &mut [vec![0.0; 4]],
        &[vec![0.0, f32::NAN, 0.0, 0.0]],
    )
    .unwrap_err();
    assert!(err.to_string().contains("NaN"), "{err}");
}

fn sparse(indices: Vec<u16>, values: Vec<f32>) -> Payload {
    Payload {
        tensors: vec![SparseTensor {
            indices,
            values: Values::F32(values),
        }],
    }
}

#[test]
fn aggregation_by_hand() {
    // 8 values in 2 chunks of 4, 2 kept per chunk.
    let schema = f32_schema(&[8], 4, 2, ErrorFeedback::default());
    let a = sparse(vec![0, 1, 0, 3], vec![3.0, 4.0, 0.0, 0.0]); // norm 5
    let b = sparse(vec![1, 2, 1, 2], vec![1.0, 1.0, 1.0, 1.0]); // norm 2
    let c = sparse(vec![0, 3, 2, 3], vec![2.0, 2.0, 2.0, -2.0]); // norm 4
    // Lower median of [5, 2, 4] is 4: a is scaled by 0.8, b and c are left alone.
    // chunk 0: pos 0 = mean(2.4, 2) = 2.2; pos 1 = mean(3.2, 1) = 2.1; pos 2 = 1; pos 3 = 2
    // chunk 1: pos 0 = 0 (a kept a zero); pos 1 = 1; pos 2 = mean(1, 2) = 1.5; pos 3 = mean(0, −2) = −1
    let mut out = vec![vec![9.0f32; 8]];
    aggregate(&schema, &[&a, &b, &c], &mut out).unwrap();
    let expected = [2.2, 2.1, 1.0, 2.0, 0.0, 1.0, 1.5, -1.0];
    for (x, e) in out[0].iter().zip(expected) {
        assert!((x - e).abs() < 1e-6, "{:?}", out[0]);
    }
}

#[test]
fn aggregation_places_chunk_positions_in_the_matrix() {
    // 2×4 matrix in 2×2 chunks: position p of chunk c is row p/2, column 2c + p%2.
    let schema = f32_schema(&[2, 4], 2, 2, ErrorFeedback::default());
    let p = sparse(vec![1, 2, 0, 3], vec![5.0, 6.0, 7.0, 8.0]);
    let mut out = vec![vec![0f32; 8]];
    aggregate(&schema, &[&p], &mut out).unwrap();
    assert_eq!(out[0], vec![0.0, 5.0, 7.0, 0.0, 6.0, 0.0, 0.0, 8.0]);
}

#[test]
fn no_peers_means_no_update() {
    let schema = f32_schema(&[8], 4, 2, ErrorFeedback::default());
    let mut out = vec![vec![1f32; 8]];
    aggregate(&schema, &[], &mut out).unwrap();
    assert_eq!(out[0], vec![0.0; 8]);
}

#[test]
fn one_peer_aggregates_to_what_it_sent() {
    for transform in [Transform::None, Transform::Dct] {
        let cfg = CodecConfig {
            transform,
            ..config(ValueCoding::TWO_BIT)
        };
        let schema = Schema::new(specs(), cfg).unwrap();
        let delta: Vec<Vec<f32>> = (0..schema.len())
            .map(|i| values(schema.plan(i).numel(), 7 + i as u64))
            .collect();
        let mut e: Vec<Vec<f32>> = delta.iter().map(|d| vec![0.0; d.len()]).collect();
        let p = compress(&schema, &mut e, &delta).unwrap();
        let mut out: Vec<Vec<f32>> = delta.iter().map(|d| vec![0.0; d.len()]).collect();
        aggregate(&schema, &[&p], &mut out).unwrap();
        let lr = schema.config().error_feedback.lr;
        for i in 0..schema.len() {
            // sent = e_updated − e_after, with e_updated = lr·Δ from a zero buffer
            for ((&g, &d), &rest) in out[i].iter().zip(&delta[i]).zip(&e[i]) {
                assert!(
                    (g - (lr * d - rest)).abs() < 1e-5,
                    "{transform:?} tensor {i}: {g} vs {}",
                    lr * d - rest
                );
            }
        }
    }
}

#[test]
fn aggregation_is_bit_identical_on_any_thread_count() {
    let schema = Schema::new(specs(), config(ValueCoding::TWO_BIT)).unwrap();
    let peers: Vec<Payload> = (0..5).map(|s| payload(&schema, 100 + s)).collect();
    let refs: Vec<&Payload> = peers.iter().collect();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let mut out: Vec<Vec<f32>> = (0..schema.len())
            .map(|i| vec![0.0; schema.plan(i).numel()])
            .collect();
        pool.install(|| aggregate(&schema, &refs, &mut out))
            .unwrap();
        out.iter()
            .flatten()
            .map(|x| x.to_bits())
            .collect::<Vec<u32>>()
    };
    assert_eq!(run(1), run(3));
}

/// Merging a tensor a few bands at a time writes exactly what merging it whole writes, with or
/// without the DCT.
#[test]
fn merging_band_by_band_equals_merging_whole_tensors() {
    use templar_codec::aggregate::{clip_scales, merge_bands, merge_tensor};
    for transform in [Transform::None, Transform::Dct] {
        let mut codec = config(ValueCoding::TWO_BIT);
        codec.transform = transform;
        let schema = Schema::new(specs(), codec).unwrap();
        let peers: Vec<Payload> = (0..3).map(|s| payload(&schema, 40 + s)).collect();
        for i in 0..schema.len() {
            let tensors: Vec<&SparseTensor> = peers.iter().map(|p| &p.tensors[i]).collect();
            let scales = clip_scales(&tensors);
            let plan = schema.plan(i);
            let mut whole = vec![0.0; plan.numel()];
            merge_tensor(&schema, i, &tensors, &scales, &mut whole).unwrap();
            let mut pieces = vec![f32::NAN; plan.numel()];
            let band = plan.band_len();
            for (b, piece) in pieces.chunks_mut(2 * band).enumerate() {
                merge_bands(&schema, i, &tensors, &scales, 2 * b, piece).unwrap();
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&whole), bits(&pieces), "tensor {i}, {transform:?}");
        }
        // A piece that is not whole bands, or runs past the tensor, is refused.
        let tensors: Vec<&SparseTensor> = peers.iter().map(|p| &p.tensors[0]).collect();
        let band = schema.plan(0).band_len();
        let mut odd = vec![0.0; band + 1];
        assert!(merge_bands(&schema, 0, &tensors, &[1.0; 3], 0, &mut odd).is_err());
        let mut past = vec![0.0; 2 * band];
        let last = schema.plan(0).bands() - 1;
        assert!(merge_bands(&schema, 0, &tensors, &[1.0; 3], last, &mut past).is_err());
    }
}

/// Compressing with the pseudo-gradient given a few bands at a time gives the payload and the
/// error feedback of compressing it whole, with or without the DCT; a piece that cannot be read
/// is an error that names the tensor.
#[test]
fn compressing_in_pieces_equals_compressing_whole_tensors() {
    use templar_codec::quant::Rule;
    use templar_codec::{compress_tensor, compress_tensor_in_pieces, encode};
    for transform in [Transform::None, Transform::Dct] {
        let mut codec = config(ValueCoding::TWO_BIT);
        codec.transform = transform;
        let schema = Schema::new(specs(), codec).unwrap();
        for i in 0..schema.len() {
            let plan = schema.plan(i);
            let delta = values(plan.numel(), 7 + i as u64);
            let start = values(plan.numel(), 70 + i as u64);
            let (mut whole_ef, mut pieced_ef) = (start.clone(), start);
            let whole =
                compress_tensor(&schema, i, &mut whole_ef, &delta, Rule::Symmetric).unwrap();
            let band = plan.band_len();
            let pieced = compress_tensor_in_pieces(
                &schema,
                i,
                &mut pieced_ef,
                2 * band + 1,
                Rule::Symmetric,
                |first, out| {
                    out.copy_from_slice(&delta[first * band..first * band + out.len()]);
                    Ok(())
                },
            )
            .unwrap();
            let one = |t| Payload { tensors: vec![t] };
            let single = Schema::new(vec![schema.spec(i).clone()], codec).unwrap();
            assert_eq!(
                encode(&single, &one(whole), codec.index_coding),
                encode(&single, &one(pieced), codec.index_coding),
                "tensor {i}, {transform:?}"
            );
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&whole_ef),
                bits(&pieced_ef),
                "error feedback of tensor {i}"
            );
        }
    }
    let schema = Schema::new(specs(), config(ValueCoding::TWO_BIT)).unwrap();
    let mut ef = vec![0.0; schema.plan(0).numel()];
    let error = compress_tensor_in_pieces(&schema, 0, &mut ef, 64, Rule::Symmetric, |_, _| {
        Err("the device is gone".into())
    })
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("up_proj") && error.contains("the device is gone"),
        "{error}"
    );
}
