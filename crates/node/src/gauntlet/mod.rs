//! The Gauntlet: how a validator judges miners. Everything here is pure — numbers in, decisions
//! out — and tested with hand-worked cases; the validator feeds it what it measured.

pub mod norms;
pub mod openskill;
pub mod overlap;
pub mod score;
pub mod selection;
pub mod weights;

pub use openskill::Rating;
pub use score::{Evaluation, Ledger, MinerRecord, PayloadStatus, WindowInput};
