//! Which samples a miner trains on: (seed, uid, window) → sample indices, the same on every platform.
//!
//! For each window the sampler draws a pseudo-random permutation π of `0..N` (N = samples in the
//! split): a balanced Feistel network over the smallest even number of bits that covers N, with
//! cycle-walking to stay inside `0..N`. Its round function is SplitMix64's finaliser over the key,
//! the round number and the half-block, so it is pure integer arithmetic with no platform-dependent
//! parts. Miner `uid` gets positions `uid·n .. uid·n + n` of π (mod N), so different uids in one
//! window receive disjoint samples whenever `(max uid + 1) · n ≤ N`, and any node can recompute any
//! miner's assignment in O(n) without materialising the permutation.

/// Feistel rounds: four make a pseudo-random permutation from a pseudo-random function; two more are margin.
const ROUNDS: u64 = 6;

/// Deterministic sample assignment over a split of `len` samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sampler {
    seed: u64,
    len: u64,
}

impl Sampler {
    /// `len` must be positive (an empty split has nothing to assign).
    pub fn new(seed: u64, len: u64) -> Option<Self> {
        (len > 0).then_some(Self { seed, len })
    }

    /// The `count` samples miner `uid` trains on in `window`.
    pub fn assignment(&self, uid: u16, window: u64, count: usize) -> Vec<u64> {
        let permutation = Permutation::new(self.len, key(self.seed, window, 0x6d696e6572)); // "miner"
        let start = u64::from(uid).wrapping_mul(count as u64);
        (0..count as u64)
            .map(|j| permutation.apply(start.wrapping_add(j) % self.len))
            .collect()
    }

    /// `count` samples independent of every miner's assignment order: what a validator evaluates
    /// as "random data". `draw` must be unknown to miners until their uploads are in (a
    /// validator's window draw): from public values alone, a miner could fit these very samples.
    pub fn random(&self, draw: u64, count: usize) -> Vec<u64> {
        let permutation = Permutation::new(self.len, key(self.seed, draw, 0x72616e646f6d)); // "random"
        (0..count as u64)
            .map(|j| permutation.apply(j % self.len))
            .collect()
    }
}

fn key(seed: u64, window: u64, purpose: u64) -> u64 {
    mix(mix(mix(seed) ^ window) ^ purpose)
}

/// SplitMix64's finaliser: a bijective 64-bit mixer.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

struct Permutation {
    len: u64,
    key: u64,
    half_bits: u32,
    mask: u64,
}

impl Permutation {
    fn new(len: u64, key: u64) -> Self {
        let bits = (64 - (len - 1).leading_zeros()).max(2);
        let half_bits = bits.div_ceil(2);
        Self {
            len,
            key,
            half_bits,
            mask: (1u64 << half_bits) - 1,
        }
    }

    /// π(x) for x < len: walk the Feistel bijection on the covering domain until it lands inside.
    fn apply(&self, x: u64) -> u64 {
        let mut y = self.feistel(x);
        while y >= self.len {
            y = self.feistel(y);
        }
        y
    }

    fn feistel(&self, x: u64) -> u64 {
        let (mut left, mut right) = (x >> self.half_bits, x & self.mask);
        for round in 0..ROUNDS {
            let f = mix(self.key ^ round.wrapping_mul(0xa076_1d64_78bd_642f) ^ right) & self.mask;
            (left, right) = (right, left ^ f);
        }
        (left << self.half_bits) | right
    }
}

/// Digest of the sample ids a miner actually trained on, in training order: carried in its payload
/// so a validator can check it trained on its own assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DataReceipt(pub [u8; 32]);

impl DataReceipt {
    pub fn of(sample_ids: &[u64]) -> Self {
        let mut hasher = blake3::Hasher::new_derive_key("templar data receipt v1");
        for id in sample_ids {
            hasher.update(&id.to_le_bytes());
        }
        Self(*hasher.finalize().as_bytes())
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn permutation_is_a_bijection_for_awkward_sizes() {
        for len in [1u64, 2, 3, 5, 17, 1000, 4097] {
            let permutation = Permutation::new(len, 42);
            let image: HashSet<u64> = (0..len).map(|x| permutation.apply(x)).collect();
            assert_eq!(image.len() as u64, len, "len {len}");
            assert!(image.iter().all(|&y| y < len));
        }
    }

    #[test]
    fn assignments_are_pinned_across_platforms() {
        // Pinned values: a change here changes which data every miner trains on (a protocol change).
        let sampler = Sampler::new(7, 1000).unwrap();
        assert_eq!(sampler.assignment(3, 11, 4), PINNED_ASSIGNMENT);
    }
    const PINNED_ASSIGNMENT: [u64; 4] = [271, 842, 299, 415];

    #[test]
    fn uids_in_one_window_get_disjoint_samples_while_data_allows() {
        let sampler = Sampler::new(1, 1000).unwrap();
        let mut seen = HashSet::new();
        for uid in 0..10 {
            for id in sampler.assignment(uid, 5, 100) {
                assert!(seen.insert(id), "sample {id} assigned twice");
            }
        }
        assert_eq!(seen.len(), 1000);
    }

    #[test]
    fn windows_and_seeds_change_the_assignment() {
        let sampler = Sampler::new(1, 1 << 20).unwrap();
        let a = sampler.assignment(0, 1, 16);
        assert_ne!(a, sampler.assignment(0, 2, 16));
        assert_ne!(a, Sampler::new(2, 1 << 20).unwrap().assignment(0, 1, 16));
        assert_eq!(a, sampler.assignment(0, 1, 16));
    }

    #[test]
    fn receipt_depends_on_ids_and_order() {
        let a = DataReceipt::of(&[1, 2, 3]);
        assert_eq!(a, DataReceipt::of(&[1, 2, 3]));
        assert_ne!(a, DataReceipt::of(&[1, 3, 2]));
        assert_eq!(a.to_hex().len(), 64);
    }
}
