//! templar's miner and validator.
//!
//! Both run the same window loop over the same pieces: a [`node::Node`] (identity, chain, storage,
//! data, clock, gather), a [`replica::Replica`] (the model and the outer step every replica
//! applies identically), local [`state`] that survives crashes, and [`catchup`] for nodes that
//! fell behind. The validator judges miners with the pure [`gauntlet`] and [`peers`] logic.

pub mod adversary;
pub mod behavior;
pub mod catchup;
pub mod checkpoint;
pub mod commitment;
pub mod config;
pub mod data;
pub mod error;
pub mod events;
pub mod fingerprint;
pub mod gauntlet;
pub mod message;
pub mod metrics;
pub mod miner;
pub mod miner_replica;
pub mod node;
pub mod peers;
pub mod progress;
pub mod ranks;
pub mod replica;
mod reveal;
pub mod saving;
pub mod state;
mod trainer;
pub mod undo;
pub mod validator;

pub use commitment::{Commitment, Role};
pub use config::NetworkConfig;
pub use error::NodeError;
pub use events::{Event, EventSink};
pub use fingerprint::Fingerprint;
pub use miner::Miner;
pub use validator::Validator;
