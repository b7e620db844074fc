//! Weights by commit-reveal, as Bittensor takes them on subnets that enable it: a validator
//! commits a hash of its weights and a secret salt, and reveals them a set number of epochs later,
//! so that nobody can copy its weights in the meantime. Both chains use this: subtensor checks the
//! reveals, and LocalChain checks them the same way.
//!
//! A reveal is accepted in exactly the epoch `reveal_period` epochs after the commit's, where
//! epochs are counted per subnet as `(block + netuid + 1) / (tempo + 1)` (so that subnets' epochs
//! are staggered).

mod pending;

use subxt::config::Hasher;
use subxt::config::substrate::BlakeTwo256;
use subxt::ext::codec::Encode;

pub use pending::{PendingFile, PendingReveal, PendingReveals};

use crate::types::ChainError;

/// Weights committed now and revealed later (subnets with commit-reveal enabled).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Reveal {
    pub uids: Vec<u16>,
    pub weights: Vec<u16>,
    pub salt: Vec<u16>,
    pub version_key: u64,
    /// The block the commit landed in.
    pub committed_at: u64,
}

impl Reveal {
    /// The hash subtensor checks a reveal against:
    /// `BlakeTwo256(SCALE(who, netuid, uids, values, salt, version_key))`.
    pub fn commit_hash(&self, who: &[u8; 32], netuid: u16) -> [u8; 32] {
        let encoded = (
            who,
            netuid,
            &self.uids,
            &self.weights,
            &self.salt,
            self.version_key,
        )
            .encode();
        BlakeTwo256.hash(&encoded).0
    }
}

#[derive(Clone, Copy, Debug)]
pub struct RevealTiming {
    pub netuid: u16,
    pub tempo: u64,
    pub reveal_period: u64,
}

impl RevealTiming {
    pub fn epoch(&self, block: u64) -> u64 {
        (block + u64::from(self.netuid) + 1) / (self.tempo + 1)
    }

    pub fn is_due(&self, committed_at: u64, now: u64) -> bool {
        self.epoch(now) == self.epoch(committed_at) + self.reveal_period
    }

    pub fn is_expired(&self, committed_at: u64, now: u64) -> bool {
        self.epoch(now) > self.epoch(committed_at) + self.reveal_period
    }

    /// The first block in which a commit of block `committed_at` can be revealed.
    pub fn first_block_due(&self, committed_at: u64) -> u64 {
        let epoch = self.epoch(committed_at) + self.reveal_period;
        (epoch * (self.tempo + 1)).saturating_sub(u64::from(self.netuid) + 1)
    }
}

/// A fresh random salt, so that a commit hash does not give the weights away. Without the
/// operating system's randomness there is no secret salt, and committing would publish weights
/// anyone could guess back from the hash: an error instead.
pub fn salt() -> Result<Vec<u16>, ChainError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| ChainError::NoRandomness(e.to_string()))?;
    Ok(bytes
        .chunks_exact(2)
        .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn commit_hash_is_blake2_256_of_the_scale_tuple() {
        let reveal = Reveal {
            uids: vec![0, 1],
            weights: vec![65535, 32768],
            salt: vec![1, 2, 3],
            version_key: 7,
            committed_at: 0,
        };
        // SCALE of (who, netuid=3, uids, values, salt, version_key=7), hashed with BLAKE2b-256
        // by Python's hashlib (the runtime's BlakeTwo256).
        assert_eq!(
            hex(&reveal.commit_hash(&[1u8; 32], 3)),
            "95ba5b435c78bfbdd1cd83c90248c2f7a848d847360f18d1cf79425a6a880146"
        );
    }

    #[test]
    fn reveals_are_due_one_period_after_the_commit_epoch() {
        // netuid 3, tempo 9: epochs change where block + 4 is a multiple of 10, at 6, 16, 26…
        let timing = RevealTiming {
            netuid: 3,
            tempo: 9,
            reveal_period: 1,
        };
        assert_eq!(timing.epoch(5), 0);
        assert_eq!(timing.epoch(6), 1);
        assert_eq!(timing.epoch(15), 1);
        assert_eq!(timing.epoch(16), 2);
        // Committed at block 7 (epoch 1): revealable in blocks 16..=25 (epoch 2).
        assert!(!timing.is_due(7, 15));
        assert!(timing.is_due(7, 16));
        assert!(timing.is_due(7, 25));
        assert!(!timing.is_due(7, 26));
        assert!(!timing.is_expired(7, 25));
        assert!(timing.is_expired(7, 26));
        assert_eq!(timing.first_block_due(7), 16);
        assert_eq!(timing.first_block_due(16), 26);
    }

    #[test]
    fn salts_differ() {
        let (a, b) = (salt().unwrap(), salt().unwrap());
        assert_eq!(a.len(), 8);
        assert_ne!(a, b);
    }
}
