//! When subtensor accepts the reveal of a weights commit: in exactly the epoch `reveal_period`
//! epochs after the commit's, where epochs are counted per subnet as
//! `(block + netuid + 1) / (tempo + 1)` (so that subnets' epochs are staggered).

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
}

/// A fresh random salt, so that a commit hash does not give the weights away.
pub fn salt() -> Vec<u16> {
    let mut bytes = [0u8; 16];
    // Without OS randomness the salt is still unique per call; only its secrecy suffers.
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes = nanos.to_le_bytes();
    }
    bytes
        .chunks_exact(2)
        .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }

    #[test]
    fn salts_differ() {
        assert_eq!(salt().len(), 8);
        assert_ne!(salt(), salt());
    }
}
