//! What nodes report while they run: for logs, the localnet dashboard and reports. Every event is
//! also logged through `tracing`.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::commitment::Role;
use crate::fingerprint::Fingerprint;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    CatchingUp,
    Training,
    Uploading,
    Waiting,
    Gathering,
    Evaluating,
    Publishing,
}

impl Phase {
    pub const ALL: [Phase; 7] = [
        Phase::CatchingUp,
        Phase::Training,
        Phase::Uploading,
        Phase::Waiting,
        Phase::Gathering,
        Phase::Evaluating,
        Phase::Publishing,
    ];

    /// The phase as its events write it (`catching_up`, `training`, …).
    pub fn name(self) -> &'static str {
        match self {
            Phase::CatchingUp => "catching_up",
            Phase::Training => "training",
            Phase::Uploading => "uploading",
            Phase::Waiting => "waiting",
            Phase::Gathering => "gathering",
            Phase::Evaluating => "evaluating",
            Phase::Publishing => "publishing",
        }
    }
}

/// One peer's payload as a node saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerReport {
    pub uid: u16,
    /// `ok`, `missing`, `too_early`, `too_late`, `bad_signature`, `wrong_window`, `malformed`,
    /// `bad_receipt`, `undecodable` or `storage_error`.
    pub outcome: String,
    pub reason: String,
    pub bytes: u64,
}

/// Why a usable payload was penalised.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Flag {
    /// It shares `overlap` of its kept indices with a payload uploaded earlier in the window.
    Copy { overlap: f64 },
    /// Its norm is `ratio` times the window's median (see `gauntlet::norms`).
    NormOutlier { ratio: f64 },
    /// It shares `overlap` of its kept indices with a payload of an earlier window (its own
    /// replayed, or another miner's): a stale update.
    Repeat { overlap: f64 },
}

impl std::fmt::Display for Flag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Flag::Copy { overlap } => {
                write!(
                    f,
                    "copies an earlier upload ({:.0}% index overlap)",
                    overlap * 100.0
                )
            }
            Flag::NormOutlier { ratio } => write!(f, "norm {ratio:.1}× the window's median"),
            Flag::Repeat { overlap } => write!(
                f,
                "repeats a payload of an earlier window ({:.0}% index overlap)",
                overlap * 100.0
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The node is registered and about to run its first window.
    Started {
        role: Role,
        uid: u16,
        window: u64,
    },
    /// The node loaded its saved state: the last window it completed, and the blake3 of the
    /// state record it loaded (to compare with what was on disk when it stopped).
    Resumed {
        window: Option<u64>,
        state_blake3: String,
    },
    Phase {
        window: u64,
        phase: Phase,
    },
    Trained {
        window: u64,
        steps: u32,
        samples: u32,
        mean_loss: f64,
        /// The inner learning rate of the window's first step: where the schedule stands,
        /// which follows the network's global step, so every node in step reports the same.
        /// Absent from events written before it was recorded.
        #[serde(default)]
        lr: f64,
        /// Seconds spent in inner steps, and that over the window's length.
        train_seconds: f64,
        compute_share: f64,
    },
    Uploaded {
        window: u64,
        bytes: u64,
        uploaded_ms: u64,
        in_slot: bool,
    },
    Skipped {
        window: u64,
        reason: String,
    },
    Gathered {
        window: u64,
        peers: Vec<PeerReport>,
        included: Vec<u16>,
    },
    Applied {
        window: u64,
        global_step: u64,
        fingerprint: Fingerprint,
    },
    Evaluated {
        window: u64,
        miner: u16,
        score: f64,
        indicator: f64,
        /// How much more the update improved the miner's own samples than random ones, and the
        /// same for another miner's update on those samples (the indicator compares the two).
        own_advantage: f64,
        control_advantage: Option<f64>,
    },
    /// Each usable payload's largest index overlap with another of the window: (uid, overlap),
    /// ascending uid. (A list, not a map: integer map keys do not survive a tagged enum in JSON.)
    Overlaps {
        window: u64,
        largest: Vec<(u16, f64)>,
        /// The same with payloads of the last windows (see `Flag::Repeat`).
        #[serde(default)]
        largest_earlier: Vec<(u16, f64)>,
    },
    /// The validator zeroed a miner's score and moving average for a usable payload.
    Flagged {
        window: u64,
        miner: u16,
        flag: Flag,
    },
    Scores {
        window: u64,
        miners: Vec<MinerScore>,
    },
    WeightsSet {
        window: u64,
        uids: Vec<u16>,
        weights: Vec<u16>,
    },
    Validation {
        window: u64,
        loss: f64,
        bits_per_byte: f64,
    },
    ManifestPublished {
        window: u64,
    },
    CheckpointPublished {
        window: u64,
    },
    CaughtUp {
        from: Option<u64>,
        to: u64,
        replayed: u64,
        checkpoint: Option<u64>,
    },
    OutOfSync {
        window: u64,
        ours: Fingerprint,
        manifest: Fingerprint,
    },
    /// The model of `window` is the manifest's again after an [`Event::OutOfSync`]: redone from
    /// the manifest's included set (one window of work), or rebuilt from the checkpoint.
    Resynced {
        window: u64,
        full_rebuild: bool,
    },
    /// A chain or storage operation failed and the node went on without it (after the store's
    /// own retries); failures that end the node are its exit error instead.
    Failed {
        part: Part,
        /// What the node was doing, in a few words ("setting weights").
        action: String,
        error: String,
    },
}

impl Event {
    /// The window an event is about (for a catch-up, the window it reached); `None` for a
    /// failure, and for a resumed node that had completed none.
    pub fn window(&self) -> Option<u64> {
        match self {
            Event::Started { window, .. }
            | Event::Phase { window, .. }
            | Event::Trained { window, .. }
            | Event::Uploaded { window, .. }
            | Event::Skipped { window, .. }
            | Event::Gathered { window, .. }
            | Event::Applied { window, .. }
            | Event::Evaluated { window, .. }
            | Event::Overlaps { window, .. }
            | Event::Flagged { window, .. }
            | Event::Scores { window, .. }
            | Event::WeightsSet { window, .. }
            | Event::Validation { window, .. }
            | Event::ManifestPublished { window }
            | Event::CheckpointPublished { window }
            | Event::OutOfSync { window, .. }
            | Event::Resynced { window, .. } => Some(*window),
            Event::CaughtUp { to, .. } => Some(*to),
            Event::Resumed { window, .. } => *window,
            Event::Failed { .. } => None,
        }
    }
}

/// The outside service a [`Event::Failed`] was about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    Chain,
    Storage,
}

impl Part {
    pub fn name(self) -> &'static str {
        match self {
            Part::Chain => "chain",
            Part::Storage => "storage",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MinerScore {
    pub uid: u16,
    pub final_score: f64,
    pub ordinal: f64,
    pub binary_ma: f64,
    pub sync: f64,
    pub last_score: Option<f64>,
    pub weight: f64,
}

/// A receiver of events: the emitting node's name and the event.
pub type Listener = Arc<dyn Fn(&str, &Event) + Send + Sync>;

/// Where a node's events go, tagged with who emitted them.
#[derive(Clone)]
pub struct EventSink {
    who: String,
    sink: Option<Listener>,
}

impl EventSink {
    /// Events only logged.
    pub fn log_only(who: impl Into<String>) -> EventSink {
        EventSink {
            who: who.into(),
            sink: None,
        }
    }

    pub fn new(who: impl Into<String>, sink: Listener) -> EventSink {
        EventSink {
            who: who.into(),
            sink: Some(sink),
        }
    }

    pub fn who(&self) -> &str {
        &self.who
    }

    pub fn emit(&self, event: Event) {
        match &event {
            Event::Phase { .. } | Event::Overlaps { .. } => {
                tracing::debug!(node = %self.who, ?event)
            }
            Event::Skipped { .. }
            | Event::OutOfSync { .. }
            | Event::Flagged { .. }
            | Event::Failed { .. } => {
                tracing::warn!(node = %self.who, ?event)
            }
            _ => tracing::info!(node = %self.who, ?event),
        }
        if let Some(sink) = &self.sink {
            sink(&self.who, &event);
        }
    }
}
