//! The chain a localnet runs on, as the orchestrator sees it: its own LocalChain file (the
//! default), or a real subtensor runtime that chopsticks executes (`--chain chopsticks`), whose
//! blocks the orchestrator produces at the chain's block time.

use std::ffi::OsString;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use templar_chain::local::Holding;
use templar_chain::subtensor::dev::{BlockMode, Chopsticks, DevRpc, installed_chopsticks};
use templar_chain::{Chain, ChainResult, LocalChain, Metagraph, RAO_PER_TAO, Subtensor};
use templar_node::Role;
use templar_protocol::{AccountId, Keypair};

pub enum NetChain {
    Embedded(LocalChain),
    Chopsticks(Box<Chopsticked>),
}

/// A chopsticks process, a connection to it, and the task that produces its blocks. Fields drop
/// in order: the block producer stops before the connection and the process go.
pub struct Chopsticked {
    pacer: tokio::task::JoinHandle<ChainResult<()>>,
    chain: Arc<Subtensor>,
    dev: Arc<DevRpc>,
    _node: Chopsticks,
    runtime: tokio::runtime::Runtime,
}

impl Drop for Chopsticked {
    fn drop(&mut self) {
        self.pacer.abort();
    }
}

impl Chopsticked {
    /// Starts chopsticks on `spec` (logging to `log`) and begins producing blocks.
    pub fn start(spec: &Path, netuid: u16, log: &Path) -> Result<Chopsticked> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        eprintln!(
            "starting chopsticks on {} (logs in {})",
            spec.display(),
            log.display()
        );
        // Its own process group, like the nodes: Ctrl-C goes to the orchestrator, which keeps
        // the chain running while the nodes finish their window.
        let node = Chopsticks::start_with(
            &installed_chopsticks(),
            spec,
            BlockMode::Manual,
            log,
            super::fleet::detach,
        )?;
        let (chain, dev) = runtime.block_on(async {
            let dev = DevRpc::connect(&node.url).await?;
            // Nothing makes blocks yet: produce one so the chain's clock starts from now.
            dev.time_travel(templar_node::node::now_ms()).await?;
            dev.new_blocks(1).await?;
            let chain = Subtensor::connect(&node.url, netuid).await?;
            ChainResult::Ok((Arc::new(chain), Arc::new(dev)))
        })?;
        let pacer = {
            let (chain, dev) = (chain.clone(), dev.clone());
            runtime.spawn(async move { dev.keep_pace(&chain).await })
        };
        Ok(Chopsticked {
            pacer,
            chain,
            dev,
            _node: node,
            runtime,
        })
    }

    /// Makes the subnet a local network's: an epoch per window, weights allowed every half
    /// window, alpha priced at one TAO (so validators' stake counts), and the owner funded.
    pub fn configure(&self, blocks_per_window: u64, owner: &AccountId) -> Result<()> {
        let netuid = self.chain.netuid();
        self.runtime.block_on(async {
            let dev = &self.dev;
            let set = |entry: &'static str, value: serde_json::Value| {
                dev.set_subnet_value(netuid, entry, value)
            };
            set(
                "Tempo",
                serde_json::json!(blocks_per_window.saturating_sub(1).max(1)),
            )
            .await?;
            set(
                "WeightsSetRateLimit",
                serde_json::json!((blocks_per_window / 2).max(1)),
            )
            .await?;
            set("SubnetTAO", serde_json::json!(1_000_000 * RAO_PER_TAO)).await?;
            set("SubnetAlphaIn", serde_json::json!(1_000_000 * RAO_PER_TAO)).await?;
            dev.fund(owner, 1_000 * RAO_PER_TAO).await
        })?;
        Ok(())
    }

    pub fn block_time_ms(&self) -> u64 {
        self.chain.block_time_ms()
    }
}

impl NetChain {
    /// Registers every member's hotkey not yet registered and stakes validators that have no
    /// stake, all paid by `coldkey`.
    /// A member that held a uid once and was replaced (a resumed network whose uid was taken
    /// over) is not registered again: in a full subnet it would replace someone else.
    pub fn register(&self, members: &[(Role, AccountId)], coldkey: &Keypair) -> Result<()> {
        let holdings = self.holdings()?;
        let replaced = |hotkey: &AccountId| {
            let mut held = holdings.iter().filter(|h| h.hotkey == *hotkey).peekable();
            held.peek().is_some() && held.all(|h| h.replaced_at.is_some())
        };
        let members: Vec<(Role, AccountId)> = members
            .iter()
            .filter(|(_, hotkey)| !replaced(hotkey))
            .copied()
            .collect();
        let members = members.as_slice();
        match self {
            NetChain::Embedded(chain) => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(register(chain, members, coldkey)),
            NetChain::Chopsticks(node) => {
                node.runtime
                    .block_on(register(node.chain.as_ref(), members, coldkey))
            }
        }
    }

    pub fn head(&self) -> Result<u64> {
        match self {
            NetChain::Embedded(chain) => Ok(chain.block_now().number),
            NetChain::Chopsticks(node) => Ok(node.runtime.block_on(node.chain.block())?.number),
        }
    }

    pub fn block_time_ms(&self) -> u64 {
        match self {
            NetChain::Embedded(chain) => chain.genesis().block_time_ms,
            NetChain::Chopsticks(node) => node.block_time_ms(),
        }
    }

    pub fn metagraph_now(&self) -> Result<Metagraph> {
        match self {
            NetChain::Embedded(chain) => Ok(chain.metagraph_now()?),
            NetChain::Chopsticks(node) => Ok(node.runtime.block_on(node.chain.metagraph())?),
        }
    }

    /// Who held which uid over the run. A chopsticks chain is asked for today's holders only
    /// (a localnet on it registers no one while it runs).
    pub fn holdings(&self) -> Result<Vec<Holding>> {
        match self {
            NetChain::Embedded(chain) => Ok(chain.holdings()?),
            NetChain::Chopsticks(_) => Ok(self
                .metagraph_now()?
                .neurons
                .iter()
                .map(|n| Holding {
                    uid: n.uid,
                    hotkey: n.hotkey,
                    registered_at: n.registered_at,
                    replaced_at: None,
                })
                .collect()),
        }
    }

    /// The subnet as of the end of `block` (which must exist).
    pub fn metagraph_as_of(&self, block: u64) -> Result<Metagraph> {
        match self {
            NetChain::Embedded(chain) => Ok(chain.metagraph_as_of(block)?),
            NetChain::Chopsticks(node) => {
                Ok(node.runtime.block_on(node.chain.metagraph_at(block))?)
            }
        }
    }

    /// The `--chain` options of a node on this chain.
    pub fn node_args(&self, file: &Path) -> Vec<OsString> {
        match self {
            NetChain::Embedded(_) => vec!["--chain".into(), file.into()],
            NetChain::Chopsticks(node) => vec![
                "--chain".into(),
                node.chain.url().into(),
                "--netuid".into(),
                node.chain.netuid().to_string().into(),
            ],
        }
    }
}

async fn register<C: Chain>(
    chain: &C,
    members: &[(Role, AccountId)],
    coldkey: &Keypair,
) -> Result<()> {
    let metagraph = chain.metagraph().await?;
    for (role, hotkey) in members {
        let staked = match metagraph.uid_of(hotkey) {
            Some(uid) => metagraph.neuron(uid).is_some_and(|n| n.stake > 0),
            None => {
                chain
                    .register(coldkey, hotkey)
                    .await
                    .with_context(|| format!("registering {hotkey}"))?;
                false
            }
        };
        if *role == Role::Validator && !staked {
            chain
                .add_stake(coldkey, hotkey, 100 * RAO_PER_TAO)
                .await
                .with_context(|| format!("staking on {hotkey}"))?;
        }
    }
    Ok(())
}
