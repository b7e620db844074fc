use std::time::Duration;

/// What can go wrong between ranks. A rank that dies or hangs surfaces as [`DistError::PeerLost`]
/// or [`DistError::Timeout`] on the others, never as an abort.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    #[error(
        "the rendezvous timed out after {waited:?}: rank(s) {missing:?} of {world} never arrived \
         (did their processes start, and do they use the same store?)"
    )]
    RendezvousTimeout {
        missing: Vec<usize>,
        world: usize,
        waited: Duration,
    },
    #[error(
        "rank {rank} does not belong with rank {peer}: its {what} is {mine}, rank {peer}'s is {theirs} \
         (start every rank from the same binary and configuration, with the same --ranks)"
    )]
    Mismatch {
        rank: usize,
        peer: usize,
        what: &'static str,
        mine: String,
        theirs: String,
    },
    #[error(
        "rank {rank} was claimed by two processes: {claimed_by} and {me} (each rank must start once)"
    )]
    DuplicateRank {
        rank: usize,
        claimed_by: String,
        me: String,
    },
    #[error("rank {rank} refused the rendezvous: {reason}")]
    Refused { rank: String, reason: String },
    #[error("rank {rank} is outside a world of {world}")]
    RankOutOfRange { rank: usize, world: usize },
    #[error("a peer rank is gone: {0}")]
    PeerLost(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("the rendezvous store failed: {0}")]
    Store(String),
    #[error("the network between ranks failed: {0}")]
    Network(String),
    #[error("the collective backend failed: {0}")]
    Backend(String),
    #[error("invalid collective: {0}")]
    Invalid(String),
    #[error("libtorch: {0}")]
    Torch(String),
    #[error("c10d: {0}")]
    Other(String),
    #[error("the rendezvous record {key} is unreadable: {reason}")]
    Record { key: String, reason: String },
}

pub type Result<T> = std::result::Result<T, DistError>;

impl From<tch::TchError> for DistError {
    fn from(error: tch::TchError) -> Self {
        DistError::Torch(error.to_string())
    }
}
