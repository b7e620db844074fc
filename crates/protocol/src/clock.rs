//! Block and window arithmetic, and the upload slot of a window.
//!
//! Time always comes from the chain: a window's slot is built from block timestamps that every
//! node reads from the chain, never from a local clock (upstream Templar drifted when nodes
//! derived it locally).

/// Maps blocks to windows: `window = block / blocks_per_window`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowClock {
    blocks_per_window: u64,
}

impl WindowClock {
    /// `None` when `blocks_per_window` is zero.
    pub fn new(blocks_per_window: u64) -> Option<WindowClock> {
        (blocks_per_window > 0).then_some(WindowClock { blocks_per_window })
    }

    pub fn blocks_per_window(&self) -> u64 {
        self.blocks_per_window
    }

    pub fn window_of(&self, block: u64) -> u64 {
        block / self.blocks_per_window
    }

    pub fn first_block(&self, window: u64) -> u64 {
        window.saturating_mul(self.blocks_per_window)
    }

    /// The first block of the next window, where window `window` ends.
    pub fn end_block(&self, window: u64) -> u64 {
        self.first_block(window.saturating_add(1))
    }
}

/// When an object for a window may arrive, in milliseconds of chain time (Unix epoch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UploadSlot {
    pub opens_ms: u64,
    pub closes_ms: u64,
}

/// Where an upload time falls relative to its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotCheck {
    Early,
    InTime,
    Late,
}

impl UploadSlot {
    /// The slot of a window whose first block has timestamp `window_start_ms` and whose end
    /// (first block of the next window) has timestamp `window_end_ms`: from the start of the
    /// window to `grace_ms` after its end. `skew_ms` widens both edges to absorb the difference
    /// between the storage server's clock and chain time.
    pub fn for_window(
        window_start_ms: u64,
        window_end_ms: u64,
        grace_ms: u64,
        skew_ms: u64,
    ) -> Self {
        UploadSlot {
            opens_ms: window_start_ms.saturating_sub(skew_ms),
            closes_ms: window_end_ms
                .saturating_add(grace_ms)
                .saturating_add(skew_ms),
        }
    }

    pub fn check(&self, uploaded_ms: u64) -> SlotCheck {
        if uploaded_ms < self.opens_ms {
            SlotCheck::Early
        } else if uploaded_ms > self.closes_ms {
            SlotCheck::Late
        } else {
            SlotCheck::InTime
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn windows_partition_blocks() {
        let clock = WindowClock::new(10).unwrap();
        assert_eq!(clock.window_of(0), 0);
        assert_eq!(clock.window_of(9), 0);
        assert_eq!(clock.window_of(10), 1);
        assert_eq!(clock.first_block(3), 30);
        assert_eq!(clock.end_block(3), 40);
        assert!(WindowClock::new(0).is_none());
    }

    #[test]
    fn slot_edges_are_inclusive_and_widened_by_skew() {
        let slot = UploadSlot::for_window(1_000, 13_000, 5_000, 500);
        assert_eq!(
            slot,
            UploadSlot {
                opens_ms: 500,
                closes_ms: 18_500
            }
        );
        assert_eq!(slot.check(499), SlotCheck::Early);
        assert_eq!(slot.check(500), SlotCheck::InTime);
        assert_eq!(slot.check(18_500), SlotCheck::InTime);
        assert_eq!(slot.check(18_501), SlotCheck::Late);
    }
}
