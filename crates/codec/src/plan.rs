//! Chunk plan: how a tensor is cut into chunks and how many values each chunk keeps.
//!
//! Every tensor is viewed as a matrix `rows × cols` (a 1-D tensor of length N is `1 × N`).
//! Each axis is cut into pieces of the largest divisor of its length that is ≤ `target_chunk`,
//! so a chunk holds `chunk_rows · chunk_cols` values. Chunks are numbered row-major over the
//! chunk grid; inside a chunk, position `i·chunk_cols + j` is row `i`, column `j`.

use crate::error::PlanError;

/// The largest index a chunk may have, bounded by the u16 indices used in memory.
pub const MAX_CHUNK_LEN: usize = 1 << 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkPlan {
    pub rows: usize,
    pub cols: usize,
    pub chunk_rows: usize,
    pub chunk_cols: usize,
    /// Values kept per chunk.
    pub k: usize,
}

impl ChunkPlan {
    /// Plans a tensor of `shape` (rank 1 or 2; rank 0 counts as a single value).
    pub fn new(shape: &[usize], target_chunk: usize, topk: usize) -> Result<ChunkPlan, PlanError> {
        let (rows, cols) = match *shape {
            [] => (1, 1),
            [n] => (1, n),
            [r, c] => (r, c),
            _ => return Err(PlanError::UnsupportedRank(shape.len())),
        };
        if rows == 0 || cols == 0 {
            return Err(PlanError::Empty);
        }
        if target_chunk == 0 {
            return Err(PlanError::ZeroTargetChunk);
        }
        let chunk_rows = largest_divisor_at_most(rows, target_chunk);
        let chunk_cols = largest_divisor_at_most(cols, target_chunk);
        let chunk_len = chunk_rows * chunk_cols;
        if chunk_len > MAX_CHUNK_LEN {
            return Err(PlanError::ChunkTooLarge(chunk_len));
        }
        Ok(ChunkPlan {
            rows,
            cols,
            chunk_rows,
            chunk_cols,
            k: kept_per_chunk(topk, chunk_len),
        })
    }

    pub fn chunk_len(&self) -> usize {
        self.chunk_rows * self.chunk_cols
    }

    pub fn chunks_per_band(&self) -> usize {
        self.cols / self.chunk_cols
    }

    /// A band is one row of chunks: `chunk_rows` whole tensor rows, contiguous in memory.
    pub fn bands(&self) -> usize {
        self.rows / self.chunk_rows
    }

    pub fn band_len(&self) -> usize {
        self.chunk_rows * self.cols
    }

    pub fn chunks(&self) -> usize {
        self.bands() * self.chunks_per_band()
    }

    pub fn numel(&self) -> usize {
        self.rows * self.cols
    }

    /// Values kept over the whole tensor.
    pub fn kept(&self) -> usize {
        self.chunks() * self.k
    }

    /// Offset inside a band of position `pos` of the band's chunk number `chunk_in_band`.
    #[inline]
    pub fn offset_in_band(&self, chunk_in_band: usize, pos: usize) -> usize {
        let (i, j) = (pos / self.chunk_cols, pos % self.chunk_cols);
        i * self.cols + chunk_in_band * self.chunk_cols + j
    }

    /// `offset_in_band(c, pos) − c·chunk_cols` for every position: the same for every chunk,
    /// so hot loops look offsets up instead of dividing.
    pub fn position_offsets(&self) -> Vec<u32> {
        (0..self.chunk_len())
            .map(|p| self.offset_in_band(0, p) as u32)
            .collect()
    }
}

/// `k` made even (pairs pack into whole bytes) and clamped to `[2, chunk_len]`;
/// a chunk of a single value keeps that value.
pub fn kept_per_chunk(topk: usize, chunk_len: usize) -> usize {
    if chunk_len < 2 {
        return chunk_len;
    }
    let k = topk.clamp(2, chunk_len);
    k - k % 2
}

fn largest_divisor_at_most(n: usize, bound: usize) -> usize {
    (1..=bound.min(n))
        .rev()
        .find(|d| n.is_multiple_of(*d))
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn square_matrix_gets_64_by_64_chunks() {
        let p = ChunkPlan::new(&[4096, 4096], 64, 64).unwrap();
        assert_eq!((p.chunk_rows, p.chunk_cols, p.k), (64, 64, 64));
        assert_eq!(p.chunks(), 64 * 64);
        assert_eq!(p.kept(), 4096 * 64);
    }

    #[test]
    fn chunk_side_is_largest_divisor_not_above_target() {
        // 96 = 2^5·3: divisors ≤ 64 are …, 32, 48; 100: …, 50.
        let p = ChunkPlan::new(&[96, 100], 64, 64).unwrap();
        assert_eq!((p.chunk_rows, p.chunk_cols), (48, 50));
        // A prime dimension larger than the target can only be cut into single values.
        let p = ChunkPlan::new(&[67, 8], 64, 64).unwrap();
        assert_eq!((p.chunk_rows, p.chunk_cols), (1, 8));
    }

    #[test]
    fn one_dimensional_tensors_are_a_single_row() {
        let p = ChunkPlan::new(&[256], 64, 64).unwrap();
        assert_eq!(
            (p.rows, p.cols, p.chunk_rows, p.chunk_cols),
            (1, 256, 1, 64)
        );
        assert_eq!(p.k, 64, "norm weights go dense, as upstream");
        assert_eq!(p.chunks(), 4);
    }

    #[test]
    fn k_is_even_and_clamped() {
        assert_eq!(kept_per_chunk(64, 7), 6);
        assert_eq!(kept_per_chunk(0, 4096), 2);
        assert_eq!(kept_per_chunk(33, 4096), 32);
        assert_eq!(kept_per_chunk(64, 1), 1);
    }

    #[test]
    fn offsets_follow_the_documented_layout() {
        let p = ChunkPlan::new(&[4, 6], 2, 2).unwrap(); // chunks 2×2, 3 per band
        // chunk 1 of a band, position 3 = row 1, col 1 → band offset 1·6 + 1·2 + 1.
        assert_eq!(p.offset_in_band(1, 3), 9);
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert_eq!(
            ChunkPlan::new(&[2, 2, 2], 64, 64),
            Err(PlanError::UnsupportedRank(3))
        );
        assert_eq!(ChunkPlan::new(&[0, 5], 64, 64), Err(PlanError::Empty));
        assert!(matches!(
            ChunkPlan::new(&[1024, 1024], 512, 64),
            Err(PlanError::ChunkTooLarge(_))
        ));
    }
}
