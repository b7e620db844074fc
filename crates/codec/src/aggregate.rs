//! Everyone's side: many peers' payloads into one dense update, bit-identical on every machine.
//!
//! Per tensor: each peer's values are scaled by `min(1, median/(‖v‖₂ + 1e-8))` where `median` is
//! the lower median of the peers' norms; every coordinate gets the mean over the peers that kept
//! it (0 where none did). Peers are processed in the order given — callers order them by uid —
//! and each coordinate's sum runs over peers in that order whatever the thread count, so the
//! result does not depend on the machine.

use rayon::prelude::*;

use crate::config::Transform;
use crate::dct::Dct2;
use crate::error::AggregateError;
use crate::payload::{Payload, SparseTensor, Values, bf16_to_f32};
use crate::plan::ChunkPlan;
use crate::schema::Schema;

/// Added to a peer's norm before dividing, as upstream, so a zero update clips to zero.
pub const NORM_EPSILON: f64 = 1e-8;

/// Aggregates `peers` into `out[i]`, the dense update of schema tensor `i` (overwritten).
pub fn aggregate<O>(
    schema: &Schema,
    peers: &[&Payload],
    out: &mut [O],
) -> Result<(), AggregateError>
where
    O: AsMut<[f32]> + Send,
{
    if out.len() != schema.len() {
        return Err(AggregateError::OutputCount {
            expected: schema.len(),
            found: out.len(),
        });
    }
    for (p, peer) in peers.iter().enumerate() {
        if peer.tensors.len() != schema.len() {
            return Err(AggregateError::PeerMismatch {
                peer: p,
                tensor: String::new(),
            });
        }
    }
    out.par_iter_mut().enumerate().try_for_each(|(i, o)| {
        let tensors: Vec<&SparseTensor> = peers.iter().map(|p| &p.tensors[i]).collect();
        aggregate_tensor(schema, i, &tensors, o.as_mut())
    })
}

/// One tensor of [`aggregate`].
pub fn aggregate_tensor(
    schema: &Schema,
    i: usize,
    peers: &[&SparseTensor],
    out: &mut [f32],
) -> Result<(), AggregateError> {
    let norms: Vec<f64> = peers.par_iter().map(|t| t.values.norm()).collect();
    let median = lower_median(&norms);
    let scales: Vec<f32> = norms.iter().map(|&n| clip_scale(n, median)).collect();
    merge_tensor(schema, i, peers, &scales, out)
}

/// The lower median: element `⌊(n−1)/2⌋` in ascending order; 0 for no peers.
pub fn lower_median(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v[(v.len() - 1) / 2]
}

/// `min(1, median/(norm + ε))`.
pub fn clip_scale(norm: f64, median: f64) -> f32 {
    (median / (norm + NORM_EPSILON)).min(1.0) as f32
}

/// Mean over choosers of `scales[p] · value` for every coordinate, written densely into `out`.
pub fn merge_tensor(
    schema: &Schema,
    i: usize,
    peers: &[&SparseTensor],
    scales: &[f32],
    out: &mut [f32],
) -> Result<(), AggregateError> {
    let plan = schema.plan(i);
    let tensor = || schema.spec(i).name.clone();
    if out.len() != plan.numel() {
        return Err(AggregateError::Length {
            tensor: tensor(),
            expected: plan.numel(),
            found: out.len(),
        });
    }
    let mut prepared = Vec::with_capacity(peers.len());
    for (p, (t, &scale)) in peers.iter().zip(scales).enumerate() {
        prepared.push(
            PeerValues::new(t, scale, plan).ok_or(AggregateError::PeerMismatch {
                peer: p,
                tensor: tensor(),
            })?,
        );
    }
    let transform = schema.config().transform;
    out.par_chunks_mut(plan.band_len())
        .enumerate()
        .for_each_init(
            || Accumulator::new(plan, transform),
            |acc, (band, out_band)| merge_band(plan, &prepared, band, out_band, acc),
        );
    Ok(())
}

/// A peer's tensor ready to scatter: indices and a way to read its scaled values.
struct PeerValues<'a> {
    indices: &'a [u16],
    values: Scaled<'a>,
}

enum Scaled<'a> {
    /// Quantized: `levels[code]` already includes shift and the clip scale.
    Levels {
        codes: &'a [u8],
        levels: Vec<f32>,
    },
    Dense(Vec<f32>),
}

impl<'a> PeerValues<'a> {
    fn new(t: &'a SparseTensor, scale: f32, plan: &ChunkPlan) -> Option<PeerValues<'a>> {
        if t.indices.len() != plan.kept() || t.values.len() != plan.kept() {
            return None;
        }
        let values = match &t.values {
            Values::Quantized(q) => Scaled::Levels {
                codes: &q.codes,
                levels: q.levels(scale),
            },
            Values::F32(v) => Scaled::Dense(v.iter().map(|&x| x * scale).collect()),
            Values::Bf16(v) => Scaled::Dense(v.iter().map(|&x| bf16_to_f32(x) * scale).collect()),
        };
        // max() over bytes vectorises; any() with its early exit does not.
        if let Scaled::Levels { codes, levels } = &values
            && codes.iter().copied().max().unwrap_or(0) as usize >= levels.len()
        {
            return None;
        }
        Some(PeerValues {
            indices: &t.indices,
            values,
        })
    }
}

/// Accumulators for a group of consecutive chunks, sized to stay in the core's L2 cache.
/// Merging a group peer by peer reads each peer's entries sequentially; chunk by chunk, the
/// reads would hop between 2·peers streams, more than hardware prefetchers follow.
struct Accumulator {
    group: usize,
    sum: Vec<f32>,
    count: Vec<f32>,
    dct: Option<Dct2>,
}

const GROUP_BYTES: usize = 256 << 10;

impl Accumulator {
    fn new(plan: &ChunkPlan, transform: Transform) -> Accumulator {
        let group = (GROUP_BYTES / (8 * plan.chunk_len())).clamp(1, plan.chunks_per_band());
        Accumulator {
            group,
            sum: vec![0.0; group * plan.chunk_len()],
            count: vec![0.0; group * plan.chunk_len()],
            dct: (transform == Transform::Dct).then(|| Dct2::new(plan.chunk_rows, plan.chunk_cols)),
        }
    }

    /// Adds one peer's entries for `chunks` consecutive chunks starting at entry `at`.
    fn scatter(&mut self, peer: &PeerValues, at: usize, k: usize, chunks: usize, chunk_len: usize) {
        let sums = self.sum.chunks_exact_mut(chunk_len);
        let counts = self.count.chunks_exact_mut(chunk_len);
        for (g, (sum, count)) in sums.zip(counts).take(chunks).enumerate() {
            let at = at + g * k;
            let idx = &peer.indices[at..at + k];
            match &peer.values {
                Scaled::Levels { codes, levels } => {
                    for (&p, &q) in idx.iter().zip(&codes[at..at + k]) {
                        sum[p as usize] += levels[q as usize];
                        count[p as usize] += 1.0;
                    }
                }
                Scaled::Dense(v) => {
                    for (&p, &x) in idx.iter().zip(&v[at..at + k]) {
                        sum[p as usize] += x;
                        count[p as usize] += 1.0;
                    }
                }
            }
        }
    }
}

fn merge_band(
    plan: &ChunkPlan,
    peers: &[PeerValues],
    band: usize,
    out: &mut [f32],
    acc: &mut Accumulator,
) {
    let (k, w, len) = (plan.k, plan.chunk_cols, plan.chunk_len());
    let per_band = plan.chunks_per_band();
    for first in (0..per_band).step_by(acc.group) {
        let chunks = acc.group.min(per_band - first);
        let at = (band * per_band + first) * k;
        for peer in peers {
            acc.scatter(peer, at, k, chunks, len);
        }
        for g in 0..chunks {
            let sum = &mut acc.sum[g * len..(g + 1) * len];
            let count = &mut acc.count[g * len..(g + 1) * len];
            if let Some(dct) = acc.dct.as_mut() {
                for (s, n) in sum.iter_mut().zip(count.iter_mut()) {
                    *s /= n.max(1.0);
                    *n = 1.0;
                }
                dct.inverse(sum);
            }
            // Means, written row by row as whole cache lines; the accumulator is cleared on the way.
            let c = first + g;
            for (i, (sum, count)) in sum
                .chunks_exact_mut(w)
                .zip(count.chunks_exact_mut(w))
                .enumerate()
            {
                let at = i * plan.cols + c * w;
                write_means(&mut out[at..at + w], sum, count);
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    streaming::fence();
}

/// `out = sum / max(count, 1)` (0 where no peer chose the coordinate), clearing `sum` and `count`
/// in the same pass: clearing them with `fill` afterwards called memset twice for every 64-value
/// row, which cost more than the means.
#[inline]
fn write_means(out: &mut [f32], sum: &mut [f32], count: &mut [f32]) {
    let n = out.len().min(sum.len()).min(count.len());
    let (out, sum, count) = (&mut out[..n], &mut sum[..n], &mut count[..n]);
    #[cfg(target_arch = "x86_64")]
    if n.is_multiple_of(4) && (out.as_ptr() as usize).is_multiple_of(16) {
        streaming::write_means(out, sum, count);
        return;
    }
    portable_means(out, sum, count);
}

fn portable_means(out: &mut [f32], sum: &mut [f32], count: &mut [f32]) {
    let n = out.len().min(sum.len()).min(count.len());
    for i in 0..n {
        let c = count[i];
        out[i] = sum[i] / if c > 1.0 { c } else { 1.0 };
        sum[i] = 0.0;
        count[i] = 0.0;
    }
}

/// The dense output is written once and not read again here, so its stores bypass the cache:
/// ordinary stores first read every output line from memory, which made writing the 64 MB update
/// of a 4096×4096 tensor a third of the merge. SSE is part of x86-64, so no run-time detection is
/// needed; division is exact in any width, so the result is bit-identical to the portable loop.
#[cfg(target_arch = "x86_64")]
mod streaming {
    use std::arch::x86_64::{
        _mm_div_ps, _mm_loadu_ps, _mm_max_ps, _mm_set1_ps, _mm_setzero_ps, _mm_sfence,
        _mm_storeu_ps, _mm_stream_ps,
    };

    /// As the portable loop; `out` must be 16-byte aligned and all three of one length, a
    /// multiple of 4.
    pub(super) fn write_means(out: &mut [f32], sum: &mut [f32], count: &mut [f32]) {
        let n = out.len();
        assert!(sum.len() == n && count.len() == n && n.is_multiple_of(4));
        assert!((out.as_ptr() as usize).is_multiple_of(16));
        for i in (0..n).step_by(4) {
            // SAFETY: i + 4 ≤ n for all three slices (asserted above), and `out + i` is 16-byte
            // aligned because `out` is and i is a multiple of 4 floats.
            unsafe {
                let s = _mm_loadu_ps(sum.as_ptr().add(i));
                let c = _mm_max_ps(_mm_loadu_ps(count.as_ptr().add(i)), _mm_set1_ps(1.0));
                _mm_stream_ps(out.as_mut_ptr().add(i), _mm_div_ps(s, c));
                _mm_storeu_ps(sum.as_mut_ptr().add(i), _mm_setzero_ps());
                _mm_storeu_ps(count.as_mut_ptr().add(i), _mm_setzero_ps());
            }
        }
    }

    /// Orders the streamed stores before whatever this thread writes next, such as the flag
    /// that tells another thread the work is done.
    pub(super) fn fence() {
        // SAFETY: sfence has no preconditions.
        unsafe { _mm_sfence() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_median_by_hand() {
        assert_eq!(lower_median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(lower_median(&[4.0, 1.0, 3.0, 2.0]), 2.0);
        assert_eq!(lower_median(&[5.0]), 5.0);
        assert_eq!(lower_median(&[]), 0.0);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn streamed_means_are_bit_identical_to_the_portable_loop() {
        let n = 4096;
        let sum: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() * 1e-3).collect();
        let count: Vec<f32> = (0..n).map(|i| (i * 7 % 6) as f32).collect();
        let (mut s1, mut c1, mut s2, mut c2) = (sum.clone(), count.clone(), sum, count);
        let (mut portable, mut streamed) = (vec![9.0f32; n], vec![9.0f32; n]);
        portable_means(&mut portable, &mut s1, &mut c1);
        // A Vec of this size is at least 16-byte aligned with every allocator Rust ships for.
        assert!((streamed.as_ptr() as usize).is_multiple_of(16));
        streaming::write_means(&mut streamed, &mut s2, &mut c2);
        streaming::fence();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&portable), bits(&streamed));
        assert!(
            s1.iter()
                .chain(&c1)
                .chain(&s2)
                .chain(&c2)
                .all(|&x| x == 0.0)
        );
        assert_eq!(portable[3], sum3_over_3());
    }

    /// Coordinate 3 above: count (3·7 mod 6) = 3, a true division.
    fn sum3_over_3() -> f32 {
        (3.0f32 * 0.37).sin() * 1e-3 / 3.0
    }

    #[test]
    fn clip_scale_only_shrinks() {
        assert_eq!(clip_scale(1.0, 2.0), 1.0);
        assert!((clip_scale(4.0, 2.0) - 0.5).abs() < 1e-7);
        assert_eq!(clip_scale(0.0, 0.0), 0.0);
    }
}
