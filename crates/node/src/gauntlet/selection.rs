//! Which miners a validator evaluates this window: a weighted sample without replacement where a
//! miner's weight is its fairness counter (windows since it was last evaluated), so nobody is
//! starved and nobody can predict being skipped.

/// What each seed of a validator's window draw ([`templar_protocol::Randomness::seed`]) is for.
pub const JUDGED_MINERS: &str = "judged miners";
pub const RANDOM_SAMPLES: &str = "random samples";
pub const OWN_SAMPLES: &str = "own samples";
pub const RECALLED_CHUNKS: &str = "recalled chunks";

/// Picks up to `count` of `pool` (uid, fairness ≥ 1), by Efraimidis–Spirakis keys `u^(1/w)` with
/// `u` drawn from `seed` and the uid. Returned ascending.
pub fn fair_sample(pool: &[(u16, u64)], count: usize, seed: u64) -> Vec<u16> {
    let mut keyed: Vec<(f64, u16)> = pool
        .iter()
        .map(|&(uid, fairness)| {
            let u = unit(mix(seed ^ mix(u64::from(uid))));
            (u.powf(1.0 / fairness.max(1) as f64), uid)
        })
        .collect();
    keyed.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut chosen: Vec<u16> = keyed.into_iter().take(count).map(|(_, uid)| uid).collect();
    chosen.sort_unstable();
    chosen
}

/// A uniform number in (0, 1) from 53 random bits.
fn unit(x: u64) -> f64 {
    ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

/// SplitMix64's finaliser.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_pools_are_taken_whole_and_results_are_reproducible() {
        let pool = [(3, 1), (1, 5), (2, 2)];
        assert_eq!(fair_sample(&pool, 10, 42), vec![1, 2, 3]);
        assert_eq!(fair_sample(&pool, 2, 42), fair_sample(&pool, 2, 42));
        assert_eq!(fair_sample(&pool, 0, 42), Vec::<u16>::new());
    }

    #[test]
    fn long_waiting_miners_are_picked_more_often() {
        let pool = [(1, 1), (2, 1), (3, 10)];
        let picks = (0..2000u64)
            .filter(|&seed| fair_sample(&pool, 1, seed).contains(&3))
            .count();
        // Weight 10 among 10 + 1 + 1: about 10/12 of draws in the limit, well above 1/3.
        assert!(picks > 1400, "{picks}");
    }
}
