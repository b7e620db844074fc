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
    merge_tensor(schema, i, peers, &clip_scales(peers), out)
}

/// Each peer's clip scale for one tensor: its norm clipped to the peers' lower median.
pub fn clip_scales(peers: &[&SparseTensor]) -> Vec<f32> {
    let norms: Vec<f64> = peers.par_iter().map(|t| t.values.norm()).collect();
    let median = lower_median(&norms);
    norms.iter().map(|&n| clip_scale(n, median)).collect()
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
    let numel = schema.plan(i).numel();
    if out.len() != numel {
        return Err(AggregateError::Length {
            tensor: schema.spec(i).name.clone(),
            expected: numel,
            found: out.len(),
        });
    }
    merge_bands(schema, i, peers, scales, 0, out)
}

/// [`merge_tensor`] for whole bands only — `out.len() / band_len` of them from band
/// `first_band` on, where a band is `chunk_rows` whole rows, contiguous in memory — so that a
/// large tensor can be merged a piece at a time with a piece of scratch. The values are those
/// [`merge_tensor`] writes at the same place.
pub fn merge_bands(
    schema: &Schema,
    i: usize,
    peers: &[&SparseTensor],
    scales: &[f32],
    first_band: usize,
    out: &mut [f32],
) -> Result<(), AggregateError> {
    let plan = schema.plan(i);
    let tensor = || schema.spec(i).name.clone();
    let band_len = plan.band_len();
    let bands = out.len() / band_len;
    if !out.len().is_multiple_of(band_len) || first_band + bands > plan.bands() {
        return Err(AggregateError::Length {
            tensor: tensor(),
            expected: band_len * (plan.bands() - first_band.min(plan.bands())),
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
    out.par_chunks_mut(band_len).enumerate().for_each_init(
        || Accumulator::new(plan, transform),
        |acc, (band, out_band)| merge_band(plan, &prepared, first_band + band, out_band, acc),
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
    /// `[sum, count]` per coordinate: side by side, adding a peer's value touches one cache
    /// line, where separate sum and count arrays touched two.
    cells: Vec<Cell>,
    /// One chunk's means, for the inverse DCT, which needs them contiguous.
    scratch: Vec<f32>,
    dct: Option<Dct2>,
}

type Cell = [f32; 2];

const GROUP_BYTES: usize = 256 << 10;

impl Accumulator {
    fn new(plan: &ChunkPlan, transform: Transform) -> Accumulator {
        let cell = std::mem::size_of::<Cell>();
        let group = (GROUP_BYTES / (cell * plan.chunk_len())).clamp(1, plan.chunks_per_band());
        let dct =
            (transform == Transform::Dct).then(|| Dct2::new(plan.chunk_rows, plan.chunk_cols));
        Accumulator {
            group,
            cells: vec![[0.0; 2]; group * plan.chunk_len()],
            scratch: if dct.is_some() {
                vec![0.0; plan.chunk_len()]
            } else {
                Vec::new()
            },
            dct,
        }
    }

    /// Adds one peer's entries for `chunks` consecutive chunks starting at entry `at`.
    fn scatter(&mut self, peer: &PeerValues, at: usize, k: usize, chunks: usize, chunk_len: usize) {
        for (g, cells) in self
            .cells
            .chunks_exact_mut(chunk_len)
            .take(chunks)
            .enumerate()
        {
            let at = at + g * k;
            let idx = &peer.indices[at..at + k];
            match &peer.values {
                Scaled::Levels { codes, levels } => {
                    for (&p, &q) in idx.iter().zip(&codes[at..at + k]) {
                        let cell = &mut cells[p as usize];
                        cell[0] += levels[q as usize];
                        cell[1] += 1.0;
                    }
                }
                Scaled::Dense(v) => {
                    for (&p, &x) in idx.iter().zip(&v[at..at + k]) {
                        let cell = &mut cells[p as usize];
                        cell[0] += x;
                        cell[1] += 1.0;
                    }
                }
            }
        }
    }

    /// Replaces a chunk's cells by `[inverse DCT of the means, 1]`.
    fn inverse_dct(&mut self, g: usize, len: usize) {
        let Some(dct) = self.dct.as_mut() else {
            return;
        };
        let cells = &mut self.cells[g * len..(g + 1) * len];
        for (x, &[sum, count]) in self.scratch.iter_mut().zip(cells.iter()) {
            *x = sum / count.max(1.0);
        }
        dct.inverse(&mut self.scratch);
        for (cell, &x) in cells.iter_mut().zip(&self.scratch) {
            *cell = [x, 1.0];
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
            acc.inverse_dct(g, len);
            // Means, written row by row as whole cache lines; the accumulator is cleared on the way.
            let c = first + g;
            let cells = &mut acc.cells[g * len..(g + 1) * len];
            for (i, row) in cells.chunks_exact_mut(w).enumerate() {
                let at = i * plan.cols + c * w;
                write_means(&mut out[at..at + w], row);
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    streaming::fence();
}

/// `out = sum / max(count, 1)` (0 where no peer chose the coordinate), clearing the cells in the
/// same pass: clearing them with `fill` afterwards called memset for every 64-value row, which
/// cost more than the means.
#[inline]
fn write_means(out: &mut [f32], cells: &mut [Cell]) {
    let n = out.len().min(cells.len());
    let (out, cells) = (&mut out[..n], &mut cells[..n]);
    #[cfg(target_arch = "x86_64")]
    if n.is_multiple_of(4) && (out.as_ptr() as usize).is_multiple_of(16) {
        streaming::write_means(out, cells);
        return;
    }
    portable_means(out, cells);
}

fn portable_means(out: &mut [f32], cells: &mut [Cell]) {
    for (o, cell) in out.iter_mut().zip(cells) {
        let [sum, count] = *cell;
        *o = sum / if count > 1.0 { count } else { 1.0 };
        *cell = [0.0; 2];
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
        _mm_shuffle_ps, _mm_storeu_ps, _mm_stream_ps,
    };

    use super::Cell;

    /// As the portable loop; `out` must be 16-byte aligned, and as long as `cells`, a multiple
    /// of 4.
    pub(super) fn write_means(out: &mut [f32], cells: &mut [Cell]) {
        let n = out.len();
        assert!(cells.len() == n && n.is_multiple_of(4));
        assert!((out.as_ptr() as usize).is_multiple_of(16));
        let cells = cells.as_flattened_mut();
        for i in (0..n).step_by(4) {
            // SAFETY: cells holds 2n floats and 2i + 8 ≤ 2n; i + 4 ≤ n for `out`, whose element
            // i is 16-byte aligned because `out` is and i is a multiple of 4 floats.
            unsafe {
                let front = _mm_loadu_ps(cells.as_ptr().add(2 * i));
                let back = _mm_loadu_ps(cells.as_ptr().add(2 * i + 4));
                // [s0 c0 s1 c1], [s2 c2 s3 c3] → [s0 s1 s2 s3] and [c0 c1 c2 c3].
                let sums = _mm_shuffle_ps::<0b10_00_10_00>(front, back);
                let counts = _mm_shuffle_ps::<0b11_01_11_01>(front, back);
                let counts = _mm_max_ps(counts, _mm_set1_ps(1.0));
                _mm_stream_ps(out.as_mut_ptr().add(i), _mm_div_ps(sums, counts));
                _mm_storeu_ps(cells.as_mut_ptr().add(2 * i), _mm_setzero_ps());
                _mm_storeu_ps(cells.as_mut_ptr().add(2 * i + 4), _mm_setzero_ps());
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
        let cells: Vec<Cell> = (0..n)
            .map(|i| [(i as f32 * 0.37).sin() * 1e-3, (i * 7 % 6) as f32])
            .collect();
        let (mut c1, mut c2) = (cells.clone(), cells);
        let (mut portable, mut streamed) = (vec![9.0f32; n], vec![9.0f32; n]);
        portable_means(&mut portable, &mut c1);
        // A Vec of this size is at least 16-byte aligned with every allocator Rust ships for.
        assert!((streamed.as_ptr() as usize).is_multiple_of(16));
        streaming::write_means(&mut streamed, &mut c2);
        streaming::fence();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&portable), bits(&streamed));
        assert!(c1.iter().chain(&c2).all(|&c| c == [0.0; 2]));
        // Coordinate 3: count 3·7 mod 6 = 3, a true division.
        assert_eq!(portable[3], (3.0f32 * 0.37).sin() * 1e-3 / 3.0);
        // Coordinate 0: count 0, so the (zero) sum is written as it is.
        assert_eq!(portable[0], 0.0);
    }

    #[test]
    fn clip_scale_only_shrinks() {
        assert_eq!(clip_scale(1.0, 2.0), 1.0);
        assert!((clip_scale(4.0, 2.0) - 0.5).abs() < 1e-7);
        assert_eq!(clip_scale(0.0, 0.0), 0.0);
    }
}
