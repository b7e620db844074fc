//! Everything a localnet needs before its nodes start, made idempotent so that running
//! `templar localnet` again on the same folder resumes the network: the demo data, the
//! network's configuration, wallets, the chain, registrations and stake. Each step is
//! skipped when its result exists. (A chopsticks chain lives only as long as its run, so a
//! network on one cannot be resumed.)

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use templar_chain::wallet::{Wallet, generate_key};
use templar_chain::{Genesis, Hyperparameters, LocalChain, RAO_PER_TAO};
use templar_data::{Manifest, PrepareOptions, TokenizerSpec, prepare};
use templar_engine::Preset;
use templar_node::behavior::Behavior;
use templar_node::{NetworkConfig, Role};
use templar_protocol::Keypair;

use super::net_chain::{Chopsticked, NetChain};

/// Where a localnet keeps its parts, all under one folder.
#[derive(Clone)]
pub struct Layout {
    pub dir: PathBuf,
}

pub const WALLET: &str = "localnet";

impl Layout {
    pub fn wallets(&self) -> PathBuf {
        self.dir.join("wallets")
    }
    pub fn chain(&self) -> PathBuf {
        self.dir.join("chain.sqlite")
    }
    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }
    pub fn config(&self) -> PathBuf {
        self.dir.join("network.toml")
    }
    pub fn storage(&self, hotkey: &str) -> PathBuf {
        self.dir.join("storage").join(hotkey)
    }
    pub fn state(&self, hotkey: &str) -> PathBuf {
        self.dir.join("state").join(hotkey)
    }
    pub fn events(&self, node: &str) -> PathBuf {
        self.dir.join("events").join(format!("{node}.jsonl"))
    }
    pub fn log(&self, node: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{node}.log"))
    }
    pub fn runs(&self) -> PathBuf {
        self.dir.join("runs.jsonl")
    }
}

/// One node of the localnet: its role and hotkey name (`v1`, `m1`, …).
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    pub role: Role,
    pub hotkey: String,
    /// An attack this miner runs (`--scenario adversarial` only).
    pub behavior: Option<Behavior>,
}

impl Member {
    /// It registers once the network runs, not with the others (`takeover`).
    pub fn registers_late(&self) -> bool {
        self.behavior.is_some_and(|b| b.registers_late())
    }

    /// The name the node reports its events under (as `templar miner|validator` names it).
    pub fn name(&self) -> String {
        format!("{}-{}", self.role.name(), self.hotkey)
    }
}

pub fn members(validators: usize, miners: usize) -> Vec<Member> {
    let validators = (1..=validators).map(|i| Member {
        role: Role::Validator,
        hotkey: format!("v{i}"),
        behavior: None,
    });
    let miners = (1..=miners).map(|i| Member {
        role: Role::Miner,
        hotkey: format!("m{i}"),
        behavior: None,
    });
    validators.chain(miners).collect()
}

/// Settings that shape a new network; an existing one keeps its own.
pub struct NewNetwork {
    pub preset: String,
    /// The LocalChain's block time (a chopsticks chain has its runtime's).
    pub block_time_ms: u64,
    pub window_secs: u64,
    pub inner_steps: u32,
    pub corpus: PathBuf,
    pub chain: ChainChoice,
    /// The LocalChain takes weights by commit-reveal (a chopsticks chain has its runtime's rule).
    pub commit_reveal: bool,
}

/// Where the network's chain comes from.
#[derive(Clone, Debug)]
pub enum ChainChoice {
    /// A LocalChain file in the folder.
    Embedded,
    /// A subtensor runtime from this chain spec, run by chopsticks, on this subnet.
    Chopsticks { spec: PathBuf, netuid: u16 },
}

pub struct Prepared {
    pub config: NetworkConfig,
    pub chain: NetChain,
    /// The folder already held a network.
    pub resumed: bool,
}

pub fn prepare_network(layout: &Layout, members: &[Member], new: &NewNetwork) -> Result<Prepared> {
    std::fs::create_dir_all(&layout.dir)
        .with_context(|| format!("creating {}", layout.dir.display()))?;
    let resumed = layout.config().exists();
    check_resumable(layout, &new.chain, resumed)?;
    let chopsticks = match &new.chain {
        ChainChoice::Embedded => None,
        ChainChoice::Chopsticks { spec, netuid } => {
            std::fs::create_dir_all(layout.dir.join("logs"))?;
            Some(Chopsticked::start(
                spec,
                *netuid,
                &layout.log("chopsticks"),
            )?)
        }
    };
    let block_time_ms = chopsticks
        .as_ref()
        .map_or(new.block_time_ms, Chopsticked::block_time_ms);
    let blocks_per_window = (new.window_secs * 1000 / block_time_ms).max(2);
    let config = if resumed {
        let config = NetworkConfig::load(&layout.config())?;
        check_data(layout, &config)?;
        config
    } else {
        let preset = Preset::load(&new.preset)?;
        let manifest = prepare_data(layout, &new.corpus, &preset)?;
        let config = localnet_config(preset, &manifest, blocks_per_window, new.inner_steps);
        config.write(&layout.config())?;
        config
    };
    let coldkey = wallets(layout, members)?;
    // A member that takes a uid over registers while the network runs, into a subnet the
    // others fill: only a full subnet replaces anyone.
    let at_start: Vec<&Member> = members.iter().filter(|m| !m.registers_late()).collect();
    let full_at = (at_start.len() < members.len()).then_some(at_start.len() as u16);
    let chain = match chopsticks {
        Some(_) if full_at.is_some() => {
            bail!("takeover needs a subnet the localnet fills itself: run it on the embedded chain")
        }
        Some(node) => {
            node.configure(config.window.blocks_per_window, &coldkey.account())?;
            NetChain::Chopsticks(Box::new(node))
        }
        None => NetChain::Embedded(local_chain(layout, &config, new, &coldkey, full_at)?),
    };
    let wallet = Wallet::new(layout.wallets(), WALLET);
    let hotkeys = at_start
        .iter()
        .map(|m| Ok((m.role, wallet.hotkey(&m.hotkey)?.account())))
        .collect::<Result<Vec<_>>>()?;
    chain.register(&hotkeys, &coldkey)?;
    for folder in ["events", "logs", "storage", "state"] {
        std::fs::create_dir_all(layout.dir.join(folder))?;
    }
    Ok(Prepared {
        config,
        chain,
        resumed,
    })
}

/// A network on chopsticks cannot be resumed (its chain ended with its run), and a folder's
/// network stays on the chain it started on.
fn check_resumable(layout: &Layout, chain: &ChainChoice, resumed: bool) -> Result<()> {
    if !resumed {
        return Ok(());
    }
    match chain {
        ChainChoice::Chopsticks { .. } => bail!(
            "{} already holds a network; a chopsticks chain lives only as long as its run, so it cannot be \
             resumed: choose a new --dir (or remove this one)",
            layout.dir.display()
        ),
        ChainChoice::Embedded if !layout.chain().exists() => bail!(
            "{} holds a network that ran on chopsticks, whose chain is gone: choose a new --dir \
             (or remove this one)",
            layout.dir.display()
        ),
        ChainChoice::Embedded => Ok(()),
    }
}

/// The network's settings: the preset, with a window and a Gauntlet tuned so that a laptop sees
/// the model improve and the ratings move within minutes.
fn localnet_config(
    preset: Preset,
    manifest: &Manifest,
    blocks_per_window: u64,
    inner_steps: u32,
) -> NetworkConfig {
    let mut config = NetworkConfig::defaults("localnet", preset, &manifest.content_hash);
    config.model.train.seq_len = manifest.seq_len;
    config.window.blocks_per_window = blocks_per_window;
    config.window.upload_grace_ms = 2_000;
    config.window.clock_skew_ms = 500;
    config.training.inner_steps = inner_steps.max(1);
    config.gauntlet.eval_samples = 16;
    // At this scale an honest update's own-data advantage is below measurement noise (see
    // docs/localnet.md): miners start trusted and a run of −1 indicators takes it away.
    config.gauntlet.binary_ma_initial = 1.0;
    config.gauntlet.binary_ma_alpha = 0.1;
    config.gauntlet.windows_per_weights = 1;
    config.gauntlet.validation_samples = 32;
    config.checkpoints.every = 5;
    config
}

fn prepare_data(layout: &Layout, corpus: &Path, preset: &Preset) -> Result<Manifest> {
    if let Ok(manifest) = Manifest::read(&layout.data()) {
        return Ok(manifest);
    }
    if !corpus.is_dir() {
        bail!(
            "the demo corpus is missing at {}: run scripts/setup (scripts/templar localnet runs it for you), \
             or pass --corpus with a folder of .txt/.jsonl files",
            corpus.display()
        );
    }
    let tokenizer: TokenizerSpec = preset
        .train
        .tokenizer
        .parse()
        .map_err(|e| anyhow::anyhow!("the preset's tokenizer: {e}"))?;
    eprintln!("preparing the demo data from {}", corpus.display());
    let mut options = PrepareOptions::new(
        corpus.to_path_buf(),
        layout.data(),
        tokenizer,
        preset.train.seq_len,
    );
    options.progress = true;
    prepare(&options)?;
    Ok(Manifest::read(&layout.data())?)
}

fn check_data(layout: &Layout, config: &NetworkConfig) -> Result<()> {
    let manifest = Manifest::read(&layout.data()).with_context(|| {
        format!(
            "{} holds a network but its data is missing or damaged; remove the folder to start a new network",
            layout.dir.display()
        )
    })?;
    if manifest.content_hash != config.data.manifest_hash {
        bail!(
            "{} was prepared from other text than {} expects; remove {} to start a new network",
            layout.data().display(),
            layout.config().display(),
            layout.dir.display()
        );
    }
    Ok(())
}

/// The owner's coldkey (unencrypted: a local demo) and a hotkey per node, created when missing.
fn wallets(layout: &Layout, members: &[Member]) -> Result<Keypair> {
    let wallet = Wallet::new(layout.wallets(), WALLET);
    if !wallet.coldkey_path().exists() {
        wallet.create_coldkey(&generate_key(), None)?;
    }
    for member in members {
        if !wallet.hotkey_path(&member.hotkey).exists() {
            wallet.create_hotkey(&member.hotkey, &generate_key())?;
        }
    }
    Ok(wallet.coldkey(|| None)?)
}

fn local_chain(
    layout: &Layout,
    config: &NetworkConfig,
    new: &NewNetwork,
    coldkey: &Keypair,
    max_uids: Option<u16>,
) -> Result<LocalChain> {
    let path = layout.chain();
    if path.exists() {
        return Ok(LocalChain::open(&path)?);
    }
    let blocks = config.window.blocks_per_window;
    let hyperparameters = Hyperparameters {
        // One epoch per window, so incentive follows the validator's weights window by window.
        tempo: blocks,
        weights_rate_limit: (blocks / 2).max(1),
        immunity_period: 0,
        commit_reveal_weights_enabled: new.commit_reveal,
        max_uids: max_uids.unwrap_or(Hyperparameters::default().max_uids),
        ..Hyperparameters::default()
    };
    let mut genesis = Genesis::now(3, new.block_time_ms, hyperparameters);
    genesis.balances = vec![(coldkey.account(), 1_000 * RAO_PER_TAO)];
    Ok(LocalChain::create(&path, &genesis)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validators_come_first_and_names_match_the_nodes() {
        let members = members(1, 2);
        let names: Vec<String> = members.iter().map(Member::name).collect();
        assert_eq!(names, ["validator-v1", "miner-m1", "miner-m2"]);
    }
}
