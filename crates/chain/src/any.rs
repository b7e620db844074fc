//! One chain type for binaries that take `--chain`: a LocalChain file or a subtensor endpoint.

use std::fmt;
use std::path::PathBuf;

use templar_protocol::{AccountId, Keypair};

use crate::chain::{Chain, ChainResult};
use crate::local::LocalChain;
use crate::subtensor::{self, Subtensor};
use crate::types::{BlockInfo, ChainError, Hyperparameters, Metagraph};

/// What `--chain` names: `finney`, `test`, `local` or a `ws://`/`wss://` URL is a subtensor;
/// anything else is the path of a LocalChain file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChainTarget {
    Local(PathBuf),
    Subtensor(String),
}

impl ChainTarget {
    pub fn parse(text: &str) -> ChainTarget {
        match subtensor::endpoint(text) {
            Some(url) => ChainTarget::Subtensor(url),
            None => ChainTarget::Local(PathBuf::from(text)),
        }
    }
}

impl fmt::Display for ChainTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChainTarget::Local(path) => write!(f, "{}", path.display()),
            ChainTarget::Subtensor(url) => f.write_str(url),
        }
    }
}

pub enum AnyChain {
    Local(LocalChain),
    Subtensor(Box<Subtensor>),
}

impl AnyChain {
    /// Keeps weight commits awaiting their reveal in `path` across restarts (on commit-reveal
    /// subnets). Returns how many a previous run left there.
    pub fn keep_reveals_in(&mut self, path: std::path::PathBuf) -> usize {
        match self {
            AnyChain::Local(chain) => chain.keep_reveals_in(path),
            AnyChain::Subtensor(chain) => chain.keep_reveals_in(path),
        }
    }

    /// Opens the chain `target` names. A subtensor needs the subnet's `netuid`; a LocalChain
    /// knows its own, and a given `netuid` must match it.
    pub async fn open(target: &ChainTarget, netuid: Option<u16>) -> ChainResult<AnyChain> {
        match target {
            ChainTarget::Local(path) => {
                let chain = LocalChain::open(path)?;
                match netuid {
                    Some(netuid) if netuid != chain.netuid() => Err(ChainError::NoSubnet {
                        chain: path.display().to_string(),
                        netuid,
                    }),
                    _ => Ok(AnyChain::Local(chain)),
                }
            }
            ChainTarget::Subtensor(url) => {
                let netuid = netuid.ok_or_else(|| ChainError::NetuidRequired(url.clone()))?;
                Ok(AnyChain::Subtensor(Box::new(
                    Subtensor::connect(url, netuid).await?,
                )))
            }
        }
    }
}

macro_rules! each {
    ($self:ident, $chain:ident => $call:expr) => {
        match $self {
            AnyChain::Local($chain) => $call,
            AnyChain::Subtensor($chain) => $call,
        }
    };
}

impl Chain for AnyChain {
    fn netuid(&self) -> u16 {
        each!(self, chain => chain.netuid())
    }

    async fn block(&self) -> ChainResult<BlockInfo> {
        each!(self, chain => chain.block().await)
    }

    async fn block_timestamp(&self, number: u64) -> ChainResult<u64> {
        each!(self, chain => chain.block_timestamp(number).await)
    }

    async fn wait_for_block(&self, number: u64) -> ChainResult<BlockInfo> {
        each!(self, chain => chain.wait_for_block(number).await)
    }

    async fn hyperparameters(&self) -> ChainResult<Hyperparameters> {
        each!(self, chain => chain.hyperparameters().await)
    }

    async fn metagraph(&self) -> ChainResult<Metagraph> {
        each!(self, chain => chain.metagraph().await)
    }

    async fn metagraph_at(&self, block: u64) -> ChainResult<Metagraph> {
        each!(self, chain => chain.metagraph_at(block).await)
    }

    async fn register(&self, coldkey: &Keypair, hotkey: &AccountId) -> ChainResult<u16> {
        each!(self, chain => chain.register(coldkey, hotkey).await)
    }

    async fn add_stake(&self, coldkey: &Keypair, hotkey: &AccountId, rao: u64) -> ChainResult<()> {
        each!(self, chain => chain.add_stake(coldkey, hotkey, rao).await)
    }

    async fn commit(&self, hotkey: &Keypair, data: &[u8]) -> ChainResult<()> {
        each!(self, chain => chain.commit(hotkey, data).await)
    }

    async fn set_weights(
        &self,
        hotkey: &Keypair,
        uids: &[u16],
        weights: &[u16],
        version_key: u64,
    ) -> ChainResult<()> {
        each!(self, chain => chain.set_weights(hotkey, uids, weights, version_key).await)
    }

    async fn reveal_due_weights(&self, hotkey: &Keypair) -> ChainResult<usize> {
        each!(self, chain => chain.reveal_due_weights(hotkey).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_urls_are_subtensors_and_the_rest_are_files() {
        assert_eq!(
            ChainTarget::parse("finney"),
            ChainTarget::Subtensor(subtensor::FINNEY.into())
        );
        assert_eq!(
            ChainTarget::parse("test"),
            ChainTarget::Subtensor(subtensor::TESTNET.into())
        );
        assert_eq!(
            ChainTarget::parse("local"),
            ChainTarget::Subtensor(subtensor::LOCAL.into())
        );
        assert_eq!(
            ChainTarget::parse("wss://example.org:443"),
            ChainTarget::Subtensor("wss://example.org:443".into())
        );
        assert_eq!(
            ChainTarget::parse("localchain.sqlite"),
            ChainTarget::Local("localchain.sqlite".into())
        );
        // A file that happens to be called like a network is reached by its path.
        assert_eq!(
            ChainTarget::parse("./finney"),
            ChainTarget::Local("./finney".into())
        );
    }
}
