//! Top-k by magnitude inside one chunk, in linear time.
//!
//! Magnitudes are compared through their IEEE-754 bit patterns with the sign bit cleared
//! (`key`): for finite floats the integer order equals the magnitude order. The winner set is
//! the k smallest `(−key, position)` pairs — larger magnitude first, ties to the lower position —
//! a total order, so every machine picks the same set.
//!
//! A strided sample of ≤ 256 keys gives a threshold a little below the expected k-th largest;
//! one pass collects the keys at or above it, and only those are ranked. The threshold only
//! decides how much work is done, never the result: if it proves too high, the pass is redone
//! from zero.

/// Keys sampled to estimate the threshold.
const SAMPLES: usize = 256;

#[inline]
pub fn magnitude_key(x: f32) -> u32 {
    x.to_bits() & 0x7FFF_FFFF
}

/// Reusable scratch space for [`Selector::select`].
#[derive(Default)]
pub struct Selector {
    sample: Vec<u32>,
    candidates: Vec<(u32, u16)>,
    ranks: Vec<u64>,
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
        let mut threshold = self.estimate_threshold(keys, k);
        let mut above = self.collect(keys, threshold);
        if self.candidates.len() < k {
            threshold = 0;
            above = self.collect(keys, threshold);
        }
        if above < k {
            // Everything strictly above the threshold wins; ties at it go to the lowest positions.
            let mut ties = k - above;
            for &(key, p) in &self.candidates {
                if key > threshold {
                    out.push(p);
                } else if ties > 0 {
                    ties -= 1;
                    out.push(p);
                }
            }
            return;
        }
        self.ranks.clear();
        self.ranks.extend(
            self.candidates
                .iter()
                .filter(|&&(key, _)| key > threshold)
                .map(|&(key, p)| rank(key, p as usize)),
        );
        let (_, &mut cutoff, _) = self.ranks.select_nth_unstable(k - 1);
        out.extend(
            self.candidates
                .iter()
                .filter(|&&(key, p)| rank(key, p as usize) <= cutoff)
                .map(|&(_, p)| p),
        );
    }

    /// A key that about `1.5·k + 4·stride` keys reach: enough that fewer than k is rare.
    fn estimate_threshold(&mut self, keys: &[u32], k: usize) -> u32 {
        let stride = keys.len() / SAMPLES;
        if stride <= 1 {
            return 0;
        }
        self.sample.clear();
        self.sample.extend(keys.iter().step_by(stride).copied());
        let expected = k * self.sample.len() / keys.len();
        let r = (expected + expected / 2 + 4).min(self.sample.len());
        let (_, &mut t, _) = self.sample.select_nth_unstable_by(r - 1, |a, b| b.cmp(a));
        t
    }

    /// Collects, in position order, every key ≥ `threshold`; returns how many are strictly above.
    fn collect(&mut self, keys: &[u32], threshold: u32) -> usize {
        self.candidates.clear();
        let mut above = 0;
        for (p, &key) in keys.iter().enumerate() {
            if key >= threshold {
                self.candidates.push((key, p as u16));
                above += (key > threshold) as usize;
            }
        }
        above
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
    fn values_far_below_the_largest_are_still_ranked_exactly() {
        // One value 2^40 times the rest: the others all fall below the histogram window.
        let mut v: Vec<f32> = (0..300).map(|i| (i % 17) as f32 * 1e-9).collect();
        v[123] = 1e4;
        assert_eq!(select(&v, 8), select_by_sorting(&v, 8));
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
