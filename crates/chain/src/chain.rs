//! The interface nodes use, shaped after Bittensor so that the subtensor backend fits behind it.

use std::future::Future;

use templar_protocol::{AccountId, Keypair};

use crate::types::{BlockInfo, ChainError, Hyperparameters, Metagraph};

pub type ChainResult<T> = Result<T, ChainError>;

/// A subnet on a chain: identities, stake, commitments, weights and the block clock.
///
/// State changes are signed by the key Bittensor would require: registration and staking by
/// the coldkey, weights and commitments by the hotkey.
pub trait Chain: Send + Sync {
    fn netuid(&self) -> u16;

    /// The current head block and its timestamp.
    fn block(&self) -> impl Future<Output = ChainResult<BlockInfo>> + Send;

    /// The timestamp of block `number` (in the past or the future, for a chain with a fixed block time).
    fn block_timestamp(&self, number: u64) -> impl Future<Output = ChainResult<u64>> + Send;

    /// Returns once block `number` exists.
    fn wait_for_block(&self, number: u64) -> impl Future<Output = ChainResult<BlockInfo>> + Send;

    fn hyperparameters(&self) -> impl Future<Output = ChainResult<Hyperparameters>> + Send;

    fn metagraph(&self) -> impl Future<Output = ChainResult<Metagraph>> + Send;

    /// The subnet as it stood at the end of block `block`, which must exist. Everything a peer set
    /// is derived from (registrations, commitments, epoch results) is as of that block, so every
    /// node that asks about the same block gets the same answer however late it asks.
    fn metagraph_at(&self, block: u64) -> impl Future<Output = ChainResult<Metagraph>> + Send;

    /// Registers `hotkey` under `coldkey`, burning the registration cost; returns its uid.
    fn register(
        &self,
        coldkey: &Keypair,
        hotkey: &AccountId,
    ) -> impl Future<Output = ChainResult<u16>> + Send;

    /// Moves `rao` from the coldkey's balance to stake on `hotkey`.
    fn add_stake(
        &self,
        coldkey: &Keypair,
        hotkey: &AccountId,
        rao: u64,
    ) -> impl Future<Output = ChainResult<()>> + Send;

    /// Publishes up to 128 raw bytes (for example a storage location) for the hotkey.
    fn commit(&self, hotkey: &Keypair, data: &[u8])
    -> impl Future<Output = ChainResult<()>> + Send;

    /// Sets the hotkey's weights on `uids`; refused when faster than the rate limit.
    fn set_weights(
        &self,
        hotkey: &Keypair,
        uids: &[u16],
        weights: &[u16],
        version_key: u64,
    ) -> impl Future<Output = ChainResult<()>> + Send;

    /// Reveals the hotkey's weight commits that are due now (commit-reveal subnets) and drops the
    /// expired ones; returns how many were revealed. A chain without commit-reveal has none.
    fn reveal_due_weights(
        &self,
        _hotkey: &Keypair,
    ) -> impl Future<Output = ChainResult<usize>> + Send {
        std::future::ready(Ok(0))
    }
}
