//! Top-k by magnitude inside one chunk, in linear time.
//!
//! Magnitudes are compared through their IEEE-754 bit patterns with the sign bit cleared
//! (`key`): for finite floats the integer order equals the magnitude order. A histogram on the
//! top 10 bits of the key (exponent and 2 mantissa bits) finds the bucket holding the k-th
//! largest; only that bucket's entries are ranked exactly. The winner set is the k smallest
//! `(−key, position)` pairs: larger magnitude first, ties to the lower position — a total
//! order, so every machine picks the same set.

const BUCKET_SHIFT: u32 = 21;
const BUCKETS: usize = 1 << (31 - BUCKET_SHIFT);

#[inline]
pub fn magnitude_key(x: f32) -> u32 {
    x.to_bits() & 0x7FFF_FFFF
}

/// Reusable scratch space for [`Selector::select`].
pub struct Selector {
    histogram: Vec<u32>,
    candidates: Vec<u64>,
}

impl Default for Selector {
    fn default() -> Self {
        Selector {
            histogram: vec![0; BUCKETS],
            candidates: Vec::new(),
        }
    }
}

impl Selector {
    /// Appends to `out`, ascending, the positions of the `k` largest keys (ties: lower position).
    pub fn select(&mut self, keys: &[u32], k: usize, out: &mut Vec<u16>) {
        let n = keys.len();
        debug_assert!(n <= 1 << 16);
        if k >= n {
            out.extend((0..n).map(|p| p as u16));
            return;
        }
        if k == 0 {
            return;
        }
        let (boundary, above) = self.boundary_bucket(keys, k);
        let cutoff = self.kth_rank(keys, boundary, k - above);
        let start = out.len();
        out.resize(start + n, 0);
        let dst = &mut out[start..];
        let mut kept = 0;
        for (p, &key) in keys.iter().enumerate() {
            dst[kept] = p as u16;
            kept += (rank(key, p) <= cutoff) as usize;
        }
        debug_assert_eq!(kept, k);
        out.truncate(start + kept);
    }

    /// The bucket that holds the k-th largest key, and how many keys lie in higher buckets.
    fn boundary_bucket(&mut self, keys: &[u32], k: usize) -> (u32, usize) {
        self.histogram.fill(0);
        for &key in keys {
            self.histogram[(key >> BUCKET_SHIFT) as usize] += 1;
        }
        let mut above = 0usize;
        for b in (0..BUCKETS).rev() {
            let here = self.histogram[b] as usize;
            if above + here >= k {
                return (b as u32, above);
            }
            above += here;
        }
        unreachable!("k < keys.len() so some bucket reaches k")
    }

    /// Rank (see [`rank`]) of the `need`-th best entry of bucket `boundary`.
    fn kth_rank(&mut self, keys: &[u32], boundary: u32, need: usize) -> u64 {
        self.candidates.clear();
        for (p, &key) in keys.iter().enumerate() {
            if key >> BUCKET_SHIFT == boundary {
                self.candidates.push(rank(key, p));
            }
        }
        let (_, nth, _) = self.candidates.select_nth_unstable(need - 1);
        *nth
    }
}

/// Smaller is better: magnitude descending, then position ascending.
#[inline]
fn rank(key: u32, position: usize) -> u64 {
    (((!key) as u64) << 32) | position as u64
}

/// Obviously-correct reference: sort everything. For tests.
pub fn select_by_sorting(values: &[f32], k: usize) -> Vec<u16> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[b].abs().total_cmp(&values[a].abs()).then(a.cmp(&b)));
    let mut chosen: Vec<u16> = order.into_iter().take(k).map(|p| p as u16).collect();
    chosen.sort_unstable();
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn select(values: &[f32], k: usize) -> Vec<u16> {
        let keys: Vec<u32> = values.iter().map(|&x| magnitude_key(x)).collect();
        let mut out = Vec::new();
        Selector::default().select(&keys, k, &mut out);
        out
    }

    #[test]
    fn picks_largest_magnitudes_by_hand() {
        let v = [0.1, -5.0, 2.0, 0.0, -2.5, 3.0];
        assert_eq!(select(&v, 2), vec![1, 5]);
        assert_eq!(select(&v, 4), vec![1, 2, 4, 5]);
    }

    #[test]
    fn ties_go_to_the_lower_position() {
        let v = [1.0, -1.0, 1.0, 1.0, 0.5];
        assert_eq!(select(&v, 2), vec![0, 1]);
        assert_eq!(select(&[0.0; 4096], 64), (0..64).collect::<Vec<u16>>());
    }

    #[test]
    fn k_at_least_len_keeps_everything() {
        assert_eq!(select(&[3.0, 1.0], 2), vec![0, 1]);
        assert_eq!(select(&[3.0, 1.0], 5), vec![0, 1]);
    }

    proptest! {
        #[test]
        fn matches_sorting(values in prop::collection::vec(-1e3f32..1e3, 1..600), k in 1usize..80) {
            prop_assert_eq!(select(&values, k), select_by_sorting(&values, k));
        }

        #[test]
        fn matches_sorting_with_many_ties(raw in prop::collection::vec(-4i8..4, 1..300), k in 1usize..40) {
            let values: Vec<f32> = raw.iter().map(|&x| x as f32 * 0.25).collect();
            prop_assert_eq!(select(&values, k), select_by_sorting(&values, k));
        }
    }
}
