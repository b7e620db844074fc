//! Index codings. Inside each chunk, kept positions are strictly ascending.
//!
//! **Rice** (compact): per chunk, gaps `g₀ = i₀`, `gⱼ = iⱼ − iⱼ₋₁ − 1`, each written as
//! `g >> b` zero bits, a one bit, then the low `b` bits of `g` (low bit first). `b` is chosen per
//! tensor to minimise the size. At k = 64 of 4096 this costs ≈7.5 bits per index, close to the
//! log₂ C(4096, 64)/64 ≈ 7.4-bit floor.
//!
//! **Packed12** (upstream's layout): indices in order, pairs `(a, b)` packed into 3 bytes
//! `[a & 0xFF, (a >> 8) & 0xF | (b & 0xF) << 4, (b >> 4) & 0xFF]`; an odd count pads `b = 0`.

use crate::bits::{BitReader, BitWriter, peek_at};
use crate::error::DecodeError;
use crate::plan::ChunkPlan;

pub const MAX_RICE_PARAM: u32 = 16;

/// Rice encoding with the best parameter; returns `(parameter, bytes)`.
pub fn encode_rice(plan: &ChunkPlan, indices: &[u16]) -> (u8, Vec<u8>) {
    let b = best_rice_param(plan, indices);
    let mask = (1u32 << b) - 1;
    let mut w = BitWriter::with_capacity(indices.len() * (b as usize + 2) / 8);
    for chunk in indices.chunks(plan.k.max(1)) {
        let mut base = 0u32;
        for &i in chunk {
            let g = i as u32 - base;
            w.zeros((g >> b) as u64);
            w.write(1, 1);
            w.write(g & mask, b);
            base = i as u32 + 1;
        }
    }
    (b as u8, w.finish())
}

/// Size in bits of the Rice coding with parameter `b`.
fn rice_bits(indices: &[u16], k: usize, b: u32) -> u64 {
    let mut quotients = 0u64;
    for chunk in indices.chunks(k.max(1)) {
        let mut base = 0u32;
        for &i in chunk {
            quotients += ((i as u32 - base) >> b) as u64;
            base = i as u32 + 1;
        }
    }
    indices.len() as u64 * (b as u64 + 1) + quotients
}

/// Best parameter near log₂ of the mean gap, or the one [`rice_max_bits`] assumes if that is better,
/// so the output never exceeds the bound the receiver enforces.
fn best_rice_param(plan: &ChunkPlan, indices: &[u16]) -> u32 {
    if indices.is_empty() {
        return 0;
    }
    let gap_total: u64 = indices
        .chunks(plan.k.max(1))
        .map(|c| c.last().map_or(0, |&l| l as u64 + 1 - c.len() as u64))
        .sum();
    let mean = gap_total / indices.len() as u64;
    let guess = (u64::BITS - mean.leading_zeros()).min(MAX_RICE_PARAM);
    let window = guess.saturating_sub(2)..=(guess + 1).min(MAX_RICE_PARAM);
    window
        .chain(std::iter::once(bound_param(plan)))
        .min_by_key(|&b| (rice_bits(indices, plan.k, b), b))
        .unwrap_or(0)
}

/// Worst-case bits of an optimally parametrised Rice section: every chunk's gaps sum to less
/// than its length, so `b` costs at most `kept·(b+1) + chunks·(chunk_len >> b)` bits.
pub fn rice_max_bits(plan: &ChunkPlan) -> usize {
    worst_case_bits(plan, bound_param(plan))
}

fn worst_case_bits(plan: &ChunkPlan, b: u32) -> usize {
    plan.kept() * (b as usize + 1) + plan.chunks() * (plan.chunk_len() >> b)
}

fn bound_param(plan: &ChunkPlan) -> u32 {
    (0..=MAX_RICE_PARAM)
        .min_by_key(|&b| worst_case_bits(plan, b))
        .unwrap_or(0)
}

pub fn decode_rice(
    plan: &ChunkPlan,
    bytes: &[u8],
    b: u8,
    tensor: &str,
) -> Result<Vec<u16>, DecodeError> {
    if b as u32 > MAX_RICE_PARAM {
        return Err(DecodeError::RiceParameter {
            tensor: tensor.into(),
            param: b,
        });
    }
    let limit = rice_max_bits(plan).div_ceil(8);
    if bytes.len() > limit {
        return Err(section_length(
            tensor,
            format!("at most {limit}"),
            bytes.len(),
        ));
    }
    let total = bytes.len() as u64 * 8;
    let mut out = vec![0u16; plan.kept()];
    let end = match read_gaps(bytes, b as u32, plan.chunk_len() as u32, plan.k, &mut out) {
        GapsEnd::Done(end) if end <= total => end,
        GapsEnd::OutOfRange { chunk, index, at } if at <= total => {
            return Err(DecodeError::IndexOutOfRange {
                tensor: tensor.into(),
                chunk,
                index: index as usize,
                chunk_len: plan.chunk_len(),
            });
        }
        _ => return Err(truncated(tensor, bytes.len())),
    };
    let used = end.div_ceil(8) as usize;
    if used != bytes.len() {
        return Err(section_length(tensor, format!("{used}"), bytes.len()));
    }
    if !BitReader::at(bytes, end).padding_is_zero() {
        return Err(DecodeError::Padding {
            tensor: tensor.into(),
            section: "index",
        });
    }
    Ok(out)
}

/// Where [`read_gaps`] stopped. Positions are in bits and may lie past the end of the stream,
/// which reads as zero bits: the caller tells truncation from a bad index by them.
enum GapsEnd {
    Done(u64),
    OutOfRange { chunk: usize, index: u32, at: u64 },
    Overrun,
}

/// The window is also reloaded every few gaps, whether or not the next one fits: four gaps
/// (≈30 bits at k = 64 of 4096) nearly always fit in what a reload gives, so the check for a
/// gap that does not fit is almost never taken, and a branch taken every fourth gap is one the
/// predictor learns. Reloading only when a gap did not fit was a misprediction every seven gaps,
/// which cost more than the reloads (≈13 against ≈16 ms for 20 peers on one core).
const REFILL_EVERY: usize = 4;

/// Fills `out` (`k` per chunk) from a Rice stream. Gaps are read out of a 64-bit window held in
/// a register, reloaded every [`REFILL_EVERY`] gaps or when the next gap runs past what is left
/// of it. Loading afresh for every gap put a memory load on the critical path of each one. State
/// lives in locals, not a struct, so it stays in registers.
fn read_gaps(bytes: &[u8], b: u32, chunk_len: u32, k: usize, out: &mut [u16]) -> GapsEnd {
    let total = bytes.len() as u64 * 8;
    let mask = (1u64 << b) - 1;
    // The window at `pos`, and how many of its bits are stream bits: at most 63, so consuming
    // all of them never shifts a u64 by 64.
    let reload = |pos: u64| (peek_at(bytes, pos), 63 - (pos % 8) as u32);
    let mut pos = 0u64;
    let (mut window, mut left) = reload(pos);
    for (chunk, dst) in out.chunks_exact_mut(k.max(1)).enumerate() {
        let mut base = 0u32;
        for (j, slot) in dst.iter_mut().enumerate() {
            if j % REFILL_EVERY == 0 {
                (window, left) = reload(pos);
            }
            let mut zeros = window.trailing_zeros();
            if zeros + 1 + b > left {
                (window, left) = reload(pos);
                zeros = window.trailing_zeros();
            }
            let gap = if zeros + 1 + b <= left {
                let need = zeros + 1 + b;
                let low = (window >> (zeros + 1)) & mask;
                window >>= need;
                left -= need;
                pos += need as u64;
                (zeros << b) | low as u32
            } else {
                let gap;
                (gap, pos) = long_gap(bytes, pos, b, chunk_len);
                (window, left) = reload(pos);
                gap
            };
            let i = base.saturating_add(gap);
            if i >= chunk_len {
                return GapsEnd::OutOfRange {
                    chunk,
                    index: i,
                    at: pos,
                };
            }
            *slot = i as u16;
            base = i + 1;
        }
        // Past the end only zero bits are read, so checking once a chunk is enough.
        if pos > total {
            return GapsEnd::Overrun;
        }
    }
    GapsEnd::Done(pos)
}

/// A gap whose unary run is longer than the window: only in sparse or hostile streams. Out of
/// line, so the common path keeps its state in registers. Returns the gap and the position
/// after it.
#[cold]
#[inline(never)]
fn long_gap(bytes: &[u8], pos: u64, b: u32, chunk_len: u32) -> (u32, u64) {
    let mut r = BitReader::at(bytes, pos);
    let gap = read_rice(&mut r, b, chunk_len);
    (gap, r.position())
}

/// One Rice-coded gap; gives up (returning `chunk_len`) once the gap can no longer fit.
#[inline]
fn read_rice(r: &mut BitReader, b: u32, chunk_len: u32) -> u32 {
    let w = r.peek();
    let zeros = w.trailing_zeros();
    if zeros + 1 + b <= 57 {
        r.skip(zeros + 1 + b);
        let low = ((w >> (zeros + 1)) & ((1u64 << b) - 1)) as u32;
        return (zeros << b) | low;
    }
    let mut q = 0u32;
    loop {
        let w = r.peek() & ((1u64 << 56) - 1);
        if w != 0 {
            let z = w.trailing_zeros();
            q += z;
            r.skip(z + 1);
            break;
        }
        q += 56;
        r.skip(56);
        if (q << b) >= chunk_len || r.overrun() {
            return chunk_len;
        }
    }
    let low = r.read(b);
    (q.checked_shl(b).unwrap_or(u32::MAX)).saturating_add(low)
}

fn truncated(tensor: &str, available: usize) -> DecodeError {
    DecodeError::Truncated {
        tensor: tensor.into(),
        needed: 1,
        available,
    }
}

fn section_length(tensor: &str, expected: String, found: usize) -> DecodeError {
    DecodeError::SectionLength {
        tensor: tensor.into(),
        section: "index",
        expected,
        found,
    }
}

/// Whether every index fits in 12 bits.
pub fn packed12_fits(plan: &ChunkPlan) -> bool {
    plan.chunk_len() <= 1 << 12
}

pub fn encode_packed12(indices: &[u16]) -> Vec<u8> {
    let mut out = Vec::with_capacity(indices.len().div_ceil(2) * 3);
    for pair in indices.chunks(2) {
        let a = pair[0];
        let b = pair.get(1).copied().unwrap_or(0);
        out.extend_from_slice(&[
            (a & 0xFF) as u8,
            ((a >> 8) & 0xF | (b & 0xF) << 4) as u8,
            (b >> 4) as u8,
        ]);
    }
    out
}

pub fn decode_packed12(
    plan: &ChunkPlan,
    bytes: &[u8],
    tensor: &str,
) -> Result<Vec<u16>, DecodeError> {
    let n = plan.kept();
    let expected = n.div_ceil(2) * 3;
    if bytes.len() != expected {
        return Err(section_length(tensor, expected.to_string(), bytes.len()));
    }
    let mut out = Vec::with_capacity(n + 1);
    for t in bytes.chunks_exact(3) {
        out.push(t[0] as u16 | ((t[1] as u16 & 0xF) << 8));
        out.push((t[1] >> 4) as u16 | (t[2] as u16) << 4);
    }
    if out.len() > n && out.pop() != Some(0) {
        return Err(DecodeError::Padding {
            tensor: tensor.into(),
            section: "index",
        });
    }
    check_ascending(plan, &out, tensor)?;
    Ok(out)
}

/// Every chunk's indices in range and strictly ascending (which also rules out duplicates).
fn check_ascending(plan: &ChunkPlan, indices: &[u16], tensor: &str) -> Result<(), DecodeError> {
    let chunk_len = plan.chunk_len();
    for (chunk, idx) in indices.chunks(plan.k.max(1)).enumerate() {
        let mut prev: Option<u16> = None;
        for &i in idx {
            if i as usize >= chunk_len {
                return Err(DecodeError::IndexOutOfRange {
                    tensor: tensor.into(),
                    chunk,
                    index: i as usize,
                    chunk_len,
                });
            }
            if let Some(p) = prev {
                if i == p {
                    return Err(DecodeError::DuplicateIndex {
                        tensor: tensor.into(),
                        chunk,
                        index: i as usize,
                    });
                }
                if i < p {
                    return Err(DecodeError::Unsorted {
                        tensor: tensor.into(),
                        chunk,
                    });
                }
            }
            prev = Some(i);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(chunk_len: usize, k: usize, chunks: usize) -> ChunkPlan {
        ChunkPlan {
            rows: 1,
            cols: chunk_len * chunks,
            chunk_rows: 1,
            chunk_cols: chunk_len,
            k,
        }
    }

    #[test]
    fn packed12_layout_by_hand() {
        // a = 0xABC, b = 0x123 → [0xBC, 0xA | 0x3<<4, 0x12]
        assert_eq!(encode_packed12(&[0xABC, 0x123]), vec![0xBC, 0x3A, 0x12]);
        // odd count pads b = 0
        assert_eq!(encode_packed12(&[0xFFF]), vec![0xFF, 0x0F, 0x00]);
        let p = plan(4096, 2, 1);
        assert_eq!(
            decode_packed12(&p, &[0x23, 0xC1, 0xAB], "t").unwrap(),
            vec![0x123, 0xABC]
        );
    }

    #[test]
    fn rice_layout_by_hand() {
        // chunk of 16, k 2, indices [2, 9]: gaps 2 and 6. Mean gap 4 → candidates around b = 3.
        let p = plan(16, 2, 1);
        let (b, bytes) = encode_rice(&p, &[2, 9]);
        // b = 1 costs 3 + 5 bits, b = 3 costs 4 + 4, b = 2 costs 3 + 4: best b = 2.
        // gap 2: stop bit 1, low bits 0,1; gap 6: one zero, stop bit 1, low bits 0,1.
        // Stream from bit 0: 1,0,1, 0,1,0,1 → 0b0101_0101.
        assert_eq!(bytes, vec![0b0101_0101]);
        assert_eq!(decode_rice(&p, &bytes, b, "t").unwrap(), vec![2, 9]);
    }

    #[test]
    fn rice_round_trips_extremes() {
        let p = plan(4096, 64, 3);
        let mut idx: Vec<u16> = (0..64).collect(); // all gaps zero
        idx.extend((4032..4096).map(|i| i as u16)); // one huge first gap
        idx.extend((0..64).map(|i| i * 64 + 63)); // regular
        let (b, bytes) = encode_rice(&p, &idx);
        assert!(bytes.len() <= rice_max_bits(&p).div_ceil(8));
        assert_eq!(decode_rice(&p, &bytes, b, "t").unwrap(), idx);
    }

    #[test]
    fn compact_coding_beats_8_bits_at_64_of_4096() {
        // Evenly spread worst-ish case: gaps all 63.
        let p = plan(4096, 64, 1);
        let idx: Vec<u16> = (0..64).map(|i| i * 64 + 63).collect();
        let (_, bytes) = encode_rice(&p, &idx);
        assert!(bytes.len() * 8 <= 64 * 8, "{} bits", bytes.len() * 8);
    }

    #[test]
    fn hostile_rice_streams_are_errors() {
        let p = plan(64, 2, 1);
        // all zero bits: the unary run never ends → out of range or truncated
        assert!(decode_rice(&p, &[0u8; 4], 0, "t").is_err());
        // b = 17 is refused outright
        assert!(matches!(
            decode_rice(&p, &[0xFF], 17, "t"),
            Err(DecodeError::RiceParameter { .. })
        ));
        // gap 0 then 70 with b = 6: index 71 ≥ 64
        let mut w = BitWriter::with_capacity(4);
        w.write(1, 1);
        w.write(0, 6);
        w.zeros(1);
        w.write(1, 1);
        w.write(6, 6);
        let bytes = w.finish();
        assert!(matches!(
            decode_rice(&p, &bytes, 6, "t"),
            Err(DecodeError::IndexOutOfRange { index: 71, .. })
        ));
    }

    /// Bit by bit, the format's definition: `Some(indices)` exactly when the stream is valid.
    fn reference_rice(p: &ChunkPlan, bytes: &[u8], b: u32) -> Option<Vec<u16>> {
        let total = bytes.len() as u64 * 8;
        let bit = |at: u64| at < total && bytes[(at / 8) as usize] >> (at % 8) & 1 == 1;
        let mut at = 0u64;
        let mut out = Vec::new();
        for _ in 0..p.chunks() {
            let mut base = 0u64;
            for _ in 0..p.k {
                let mut q = 0u64;
                while !bit(at) {
                    q += 1;
                    at += 1;
                    if at > total {
                        return None;
                    }
                }
                at += 1;
                let low = (0..b as u64)
                    .map(|j| (bit(at + j) as u64) << j)
                    .sum::<u64>();
                at += b as u64;
                let i = base + (q << b) + low;
                if i >= p.chunk_len() as u64 || at > total {
                    return None;
                }
                out.push(i as u16);
                base = i + 1;
            }
        }
        let padding_zero = (at..total).all(|j| !bit(j));
        (at.div_ceil(8) == bytes.len() as u64 && padding_zero).then_some(out)
    }

    proptest::proptest! {
        #[test]
        fn windowed_rice_decoder_matches_the_definition(
            chunk_log in 2u32..13,
            k in 1usize..40,
            chunks in 1usize..4,
            seed in proptest::prelude::any::<u64>(),
            flips in proptest::collection::vec(proptest::prelude::any::<(usize, u8)>(), 0..3),
            param_shift in -2i32..3,
        ) {
            let chunk_len = 1usize << chunk_log;
            let k = k.min(chunk_len);
            let p = plan(chunk_len, k, chunks);
            // k distinct positions per chunk from a small LCG, sorted.
            let mut state = seed | 1;
            let mut idx = Vec::new();
            for _ in 0..chunks {
                let mut set = std::collections::BTreeSet::new();
                while set.len() < k {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    set.insert(((state >> 33) as usize % chunk_len) as u16);
                }
                idx.extend(set);
            }
            let (b, mut bytes) = encode_rice(&p, &idx);
            let b = (b as i32 + param_shift).clamp(0, MAX_RICE_PARAM as i32) as u32;
            for (at, mask) in &flips {
                if !bytes.is_empty() {
                    let n = bytes.len();
                    bytes[at % n] ^= mask;
                }
            }
            let fast = decode_rice(&p, &bytes, b as u8, "t").ok();
            proptest::prop_assert_eq!(fast, reference_rice(&p, &bytes, b));
        }
    }

    #[test]
    fn packed12_rejects_duplicates_disorder_and_range() {
        let p = plan(100, 2, 1);
        let dup = encode_packed12(&[5, 5]);
        assert!(matches!(
            decode_packed12(&p, &dup, "t"),
            Err(DecodeError::DuplicateIndex { index: 5, .. })
        ));
        let unsorted = encode_packed12(&[7, 5]);
        assert!(matches!(
            decode_packed12(&p, &unsorted, "t"),
            Err(DecodeError::Unsorted { .. })
        ));
        let far = encode_packed12(&[5, 100]);
        assert!(matches!(
            decode_packed12(&p, &far, "t"),
            Err(DecodeError::IndexOutOfRange { index: 100, .. })
        ));
        assert!(matches!(
            decode_packed12(&p, &far[..2], "t"),
            Err(DecodeError::SectionLength { .. })
        ));
    }
}
