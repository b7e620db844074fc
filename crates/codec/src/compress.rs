//! The miner's side: error feedback, top-k per chunk, value coding, and subtracting what was sent.

use rayon::prelude::*;

use crate::config::{Transform, ValueCoding};
use crate::dct::Dct2;
use crate::error::CompressError;
use crate::payload::{Payload, SparseTensor, Values, f32_to_bf16};
use crate::plan::ChunkPlan;
use crate::quant::{self, Rule};
use crate::schema::Schema;
use crate::topk::{Selector, magnitude_key};

/// Compresses every tensor of the schema: for each, `e = β·e + lr·Δ`, keep the top-k of `e`
/// per chunk, code the kept values, then `e −= decoded(kept)` so `e` holds exactly what was not
/// sent. `error_feedback[i]` and `delta[i]` are the flat buffers of schema tensor `i`.
///
/// On [`CompressError::NonFinite`] the error-feedback buffers are in an unspecified state and
/// must be reset before the next window.
pub fn compress<E, D>(
    schema: &Schema,
    error_feedback: &mut [E],
    delta: &[D],
) -> Result<Payload, CompressError>
where
    E: AsMut<[f32]> + Send,
    D: AsRef<[f32]> + Sync,
{
    if error_feedback.len() != schema.len() || delta.len() != schema.len() {
        return Err(CompressError::Config(format!(
            "{} error-feedback and {} delta buffers for {} tensors",
            error_feedback.len(),
            delta.len(),
            schema.len()
        )));
    }
    let tensors = error_feedback
        .par_iter_mut()
        .zip(delta.par_iter())
        .enumerate()
        .map(|(i, (e, d))| compress_tensor(schema, i, e.as_mut(), d.as_ref(), Rule::Symmetric))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Payload { tensors })
}

/// One tensor of [`compress`], with an explicit quantizer rule (for comparisons).
pub fn compress_tensor(
    schema: &Schema,
    i: usize,
    error_feedback: &mut [f32],
    delta: &[f32],
    rule: Rule,
) -> Result<SparseTensor, CompressError> {
    let plan = schema.plan(i);
    let name = &schema.spec(i).name;
    for found in [error_feedback.len(), delta.len()] {
        if found != plan.numel() {
            return Err(CompressError::Length {
                tensor: name.clone(),
                expected: plan.numel(),
                found,
            });
        }
    }
    let bands = select_bands(schema, i, error_feedback, delta);
    finish_tensor(schema, i, error_feedback, bands, rule)
}

/// [`compress_tensor`] with the pseudo-gradient given a piece at a time, so that a miner never
/// holds a whole tensor of it (the embedding: 2 GB at 8B): `fill_delta(first_band, out)` writes
/// the pseudo-gradient of the whole bands `first_band..` that fit `out` (a band is `chunk_rows`
/// whole rows). Pieces hold `piece_values` values, rounded down to whole bands (at least one).
/// The result and the error feedback are bit-identical to [`compress_tensor`]'s.
pub fn compress_tensor_in_pieces(
    schema: &Schema,
    i: usize,
    error_feedback: &mut [f32],
    piece_values: usize,
    rule: Rule,
    mut fill_delta: impl FnMut(usize, &mut [f32]) -> Result<(), String>,
) -> Result<SparseTensor, CompressError> {
    let plan = schema.plan(i);
    if error_feedback.len() != plan.numel() {
        return Err(CompressError::Length {
            tensor: schema.spec(i).name.clone(),
            expected: plan.numel(),
            found: error_feedback.len(),
        });
    }
    let band_len = plan.band_len();
    let per_piece = (piece_values / band_len).max(1);
    let mut delta = Vec::new();
    let mut bands = Vec::with_capacity(plan.bands());
    for first in (0..plan.bands()).step_by(per_piece) {
        let count = per_piece.min(plan.bands() - first);
        delta.resize(count * band_len, 0.0);
        fill_delta(first, &mut delta).map_err(|reason| CompressError::Delta {
            tensor: schema.spec(i).name.clone(),
            reason,
        })?;
        let range = first * band_len..(first + count) * band_len;
        bands.extend(select_bands(schema, i, &mut error_feedback[range], &delta));
    }
    finish_tensor(schema, i, error_feedback, bands, rule)
}

/// Error feedback and top-k of whole bands: `error_feedback` and `delta` hold the same bands.
fn select_bands(
    schema: &Schema,
    i: usize,
    error_feedback: &mut [f32],
    delta: &[f32],
) -> Vec<Selected> {
    let plan = schema.plan(i);
    let config = schema.config();
    let (beta, lr) = (config.error_feedback.beta, config.error_feedback.lr);
    let transform = config.transform;
    let band_len = plan.band_len();
    error_feedback
        .par_chunks_mut(band_len)
        .zip(delta.par_chunks(band_len))
        .map_init(
            || BandScratch::new(plan, transform),
            |s, (e, d)| select_band(plan, s, e, d, beta, lr),
        )
        .collect()
}

/// Codes the kept values of every band and subtracts what is sent from the error feedback.
fn finish_tensor(
    schema: &Schema,
    i: usize,
    error_feedback: &mut [f32],
    bands: Vec<Selected>,
    rule: Rule,
) -> Result<SparseTensor, CompressError> {
    let plan = schema.plan(i);
    let config = schema.config();
    if bands.iter().any(|b| b.non_finite) {
        return Err(CompressError::NonFinite {
            tensor: schema.spec(i).name.clone(),
        });
    }
    let kept = plan.kept();
    let mut indices = Vec::with_capacity(kept);
    let mut raw = Vec::with_capacity(kept);
    for b in bands {
        indices.extend_from_slice(&b.indices);
        raw.extend_from_slice(&b.values);
    }
    let values = code_values(config.values, &raw, rule);
    let sent = values.to_f32();
    subtract_sent(plan, config.transform, error_feedback, &indices, &sent);
    Ok(SparseTensor { indices, values })
}

fn code_values(coding: ValueCoding, raw: &[f32], rule: Rule) -> Values {
    match coding {
        ValueCoding::Quantized { n_bins, range } => {
            Values::Quantized(quant::quantize(raw, n_bins, range, rule))
        }
        ValueCoding::F32 => Values::F32(raw.to_vec()),
        ValueCoding::Bf16 => Values::Bf16(raw.iter().map(|&x| f32_to_bf16(x)).collect()),
    }
}

struct Selected {
    indices: Vec<u16>,
    values: Vec<f32>,
    non_finite: bool,
}

struct BandScratch {
    chunk: Vec<f32>,
    keys: Vec<u32>,
    selector: Selector,
    dct: Option<Dct2>,
}

impl BandScratch {
    fn new(plan: &ChunkPlan, transform: Transform) -> BandScratch {
        BandScratch {
            chunk: vec![0.0; plan.chunk_len()],
            keys: vec![0; plan.chunk_len()],
            selector: Selector::default(),
            dct: (transform == Transform::Dct).then(|| Dct2::new(plan.chunk_rows, plan.chunk_cols)),
        }
    }
}

/// Error-feedback update and top-k for every chunk of one band, in one pass over memory.
fn select_band(
    plan: &ChunkPlan,
    s: &mut BandScratch,
    e: &mut [f32],
    d: &[f32],
    beta: f32,
    lr: f32,
) -> Selected {
    let (w, cols) = (plan.chunk_cols, plan.cols);
    let per_band = plan.chunks_per_band();
    let mut out = Selected {
        indices: Vec::with_capacity(per_band * plan.k),
        values: Vec::with_capacity(per_band * plan.k),
        non_finite: false,
    };
    let mut max_key = 0u32;
    for c in 0..per_band {
        for i in 0..plan.chunk_rows {
            let at = i * cols + c * w;
            let (e_row, d_row) = (&mut e[at..at + w], &d[at..at + w]);
            let dst = &mut s.chunk[i * w..(i + 1) * w];
            for ((x, &g), out) in e_row.iter_mut().zip(d_row).zip(dst.iter_mut()) {
                *x = beta * *x + lr * g;
                *out = *x;
            }
        }
        if let Some(dct) = s.dct.as_mut() {
            dct.forward(&mut s.chunk);
        }
        for (k, &x) in s.keys.iter_mut().zip(&s.chunk) {
            *k = magnitude_key(x);
            max_key = max_key.max(*k);
        }
        let start = out.indices.len();
        s.selector.select(&s.keys, plan.k, &mut out.indices);
        out.values
            .extend(out.indices[start..].iter().map(|&p| s.chunk[p as usize]));
    }
    out.non_finite = max_key >= f32::INFINITY.to_bits();
    out
}

/// `e −= decoded(sent)`: at the kept positions, or through the inverse DCT of the kept coefficients.
fn subtract_sent(
    plan: &ChunkPlan,
    transform: Transform,
    e: &mut [f32],
    indices: &[u16],
    sent: &[f32],
) {
    let per_band = plan.chunks_per_band() * plan.k;
    let offsets = plan.position_offsets();
    e.par_chunks_mut(plan.band_len())
        .zip(indices.par_chunks(per_band).zip(sent.par_chunks(per_band)))
        .for_each_init(
            || {
                (transform == Transform::Dct).then(|| {
                    (
                        Dct2::new(plan.chunk_rows, plan.chunk_cols),
                        vec![0.0; plan.chunk_len()],
                    )
                })
            },
            |dct, (band, (idx, val))| {
                let k = plan.k.max(1);
                for (c, (ci, cv)) in idx.chunks(k).zip(val.chunks(k)).enumerate() {
                    let chunk = &mut band[c * plan.chunk_cols..];
                    match dct {
                        None => {
                            for (&p, &v) in ci.iter().zip(cv) {
                                chunk[offsets[p as usize] as usize] -= v;
                            }
                        }
                        Some((dct, buf)) => {
                            buf.fill(0.0);
                            for (&p, &v) in ci.iter().zip(cv) {
                                buf[p as usize] = v;
                            }
                            dct.inverse(buf);
                            for (&offset, &v) in offsets.iter().zip(buf.iter()) {
                                chunk[offset as usize] -= v;
                            }
                        }
                    }
                }
            },
        );
}
