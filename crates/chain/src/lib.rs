//! templar's chain layer.
//!
//! Nodes learn identities (uid ↔ hotkey ↔ coldkey), stake, storage commitments and the block
//! clock from a chain, and validators set weights on it. [`Chain`] is the interface, shaped
//! after Bittensor; [`LocalChain`] is the embedded default (one SQLite file, signed extrinsics,
//! Yuma epochs); [`Subtensor`] is Bittensor itself (finney, testnet or a local subtensor); [`yuma`] is consensus as a pure function; [`wallet`] reads and writes keys in
//! Bittensor's wallet layout.

mod any;
mod chain;
pub mod commit_reveal;
pub mod local;
pub mod subtensor;
mod types;
pub mod wallet;
pub mod yuma;

pub use any::{AnyChain, ChainTarget};
pub use chain::{Chain, ChainResult};
pub use local::{Genesis, LocalChain};
pub use subtensor::Subtensor;
pub use types::{
    BlockInfo, ChainError, Hyperparameters, MAX_COMMITMENT_LEN, Metagraph, Neuron, RAO_PER_TAO, tao,
};
