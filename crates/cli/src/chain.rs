//! `templar chain …`: create a LocalChain, and read or write any chain (a LocalChain file or a
//! subtensor such as Bittensor's finney).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use templar_chain::{
    AnyChain, Chain, ChainTarget, Genesis, Hyperparameters, LocalChain, Metagraph, RAO_PER_TAO, tao,
};
use templar_protocol::AccountId;
use templar_protocol::keys::encode_hex;

use crate::output::Format;
use crate::wallet::WalletArgs;

/// Which chain and subnet a command uses.
#[derive(Args, Clone)]
pub struct ChainPath {
    /// The chain: a LocalChain file, or a subtensor (finney, test, local, ws://…, wss://…)
    /// [default: $BT_SUBTENSOR_NETWORK, else localchain.sqlite]. Also --subtensor.network and
    /// --subtensor.chain_endpoint, as btcli.
    #[arg(
        long = "chain",
        visible_aliases = ["subtensor.network", "subtensor.chain_endpoint"],
        env = "TEMPLAR_CHAIN"
    )]
    given: Option<String>,
    /// The subnet (required on a subtensor; a LocalChain knows its own).
    #[arg(long, env = "TEMPLAR_NETUID")]
    pub netuid: Option<u16>,
}

/// The chain when neither --chain nor an environment variable names one.
const DEFAULT_CHAIN: &str = "localchain.sqlite";

impl ChainPath {
    /// The chain as given: the flag, `TEMPLAR_CHAIN`, btcli's `BT_SUBTENSOR_NETWORK`, or the
    /// LocalChain file in this folder.
    pub fn name(&self) -> String {
        self.given
            .clone()
            .or_else(|| std::env::var("BT_SUBTENSOR_NETWORK").ok())
            .unwrap_or_else(|| DEFAULT_CHAIN.to_string())
    }

    pub fn target(&self) -> ChainTarget {
        ChainTarget::parse(&self.name())
    }

    pub async fn open(&self) -> Result<AnyChain> {
        Ok(AnyChain::open(&self.target(), self.netuid).await?)
    }
}

#[derive(Subcommand)]
pub enum ChainCommand {
    /// Create a LocalChain file with a subnet and initial balances (a subtensor has its own genesis).
    Init(InitArgs),
    /// Print the block and the metagraph.
    Status {
        #[command(flatten)]
        chain: ChainPath,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Register the wallet's hotkey, burning the registration cost from the coldkey. On a
    /// subtensor the cost is shown and confirmed first.
    Register {
        #[command(flatten)]
        chain: ChainPath,
        #[command(flatten)]
        wallet: WalletArgs,
        #[command(flatten)]
        prompt: Prompt,
        #[command(flatten)]
        format: Format,
    },
    /// Stake TAO from the coldkey's balance on the wallet's hotkey. On a subtensor the amount
    /// is shown and confirmed first.
    Stake {
        #[command(flatten)]
        chain: ChainPath,
        #[command(flatten)]
        wallet: WalletArgs,
        /// TAO to stake.
        #[arg(long)]
        amount: f64,
        #[command(flatten)]
        prompt: Prompt,
        #[command(flatten)]
        format: Format,
    },
    /// Set the hotkey's weights.
    Weights {
        #[command(flatten)]
        chain: ChainPath,
        #[command(flatten)]
        wallet: WalletArgs,
        /// Target uids, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        uids: Vec<u16>,
        /// Non-negative weights, comma-separated, one per uid (scaled so the largest is 65535).
        #[arg(long, value_delimiter = ',', required = true)]
        weights: Vec<f64>,
        #[arg(long, default_value_t = 0)]
        version_key: u64,
        #[command(flatten)]
        format: Format,
    },
}

/// The subnet a new LocalChain hosts unless `--netuid` says otherwise (Templar's on Bittensor).
const DEFAULT_NETUID: u16 = 3;

#[derive(Args)]
pub struct InitArgs {
    #[command(flatten)]
    chain: ChainPath,
    /// Milliseconds per block (Bittensor: 12000).
    #[arg(long, default_value_t = 12_000)]
    block_time_ms: u64,
    /// Hyperparameters TOML file (Bittensor names; unspecified ones keep their defaults).
    #[arg(long)]
    hyperparameters: Option<PathBuf>,
    /// Initial balance, ADDRESS=TAO; repeatable.
    #[arg(long, value_parser = parse_funding)]
    fund: Vec<(AccountId, u64)>,
    #[command(flatten)]
    format: Format,
}

fn parse_funding(text: &str) -> Result<(AccountId, u64), String> {
    let (address, amount) = text
        .split_once('=')
        .ok_or("expected ADDRESS=TAO, for example 5Grw…utQY=1000")?;
    let account = AccountId::from_ss58(address).map_err(|e| e.to_string())?;
    Ok((
        account,
        tao_to_rao(amount.parse().map_err(|_| "TAO must be a number")?)?,
    ))
}

fn tao_to_rao(amount: f64) -> Result<u64, String> {
    if !(amount.is_finite() && amount > 0.0) {
        return Err(format!("{amount} is not a positive amount of TAO"));
    }
    Ok((amount * RAO_PER_TAO as f64).round() as u64)
}

pub fn run(command: ChainCommand) -> Result<()> {
    if let ChainCommand::Init(args) = command {
        return init(args);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_on_chain(command))
}

async fn run_on_chain(command: ChainCommand) -> Result<()> {
    match command {
        ChainCommand::Init(args) => init(args),
        ChainCommand::Status { chain, json } => status(&chain, json).await,
        ChainCommand::Register {
            chain: target,
            wallet,
            prompt,
            format,
        } => {
            let hotkey = wallet.hotkey()?.account();
            let chain = target.open().await?;
            if prompt.needed(&target) {
                let burn = chain.hyperparameters().await?.burn;
                ask_to_spend(&format!(
                    "registering hotkey {hotkey} on netuid {} of {} burns {} TAO from the \
                     coldkey of wallet {}",
                    chain.netuid(),
                    target.name(),
                    tao(burn),
                    wallet.wallet
                ))?;
            }
            let coldkey = wallet.coldkey()?;
            let uid = chain.register(&coldkey, &hotkey).await?;
            format.print(
                &serde_json::json!({"hotkey": hotkey.to_string(), "uid": uid, "netuid": chain.netuid()}),
                || format!("registered {hotkey} as uid {uid}"),
            )
        }
        ChainCommand::Stake {
            chain: target,
            wallet,
            amount,
            prompt,
            format,
        } => {
            let hotkey = wallet.hotkey()?.account();
            let amount = tao_to_rao(amount).map_err(anyhow::Error::msg)?;
            let chain = target.open().await?;
            if prompt.needed(&target) {
                ask_to_spend(&format!(
                    "staking {} TAO from the coldkey of wallet {} on hotkey {hotkey} (netuid {} \
                     of {})",
                    tao(amount),
                    wallet.wallet,
                    chain.netuid(),
                    target.name()
                ))?;
            }
            let coldkey = wallet.coldkey()?;
            chain.add_stake(&coldkey, &hotkey, amount).await?;
            format.print(
                &serde_json::json!({"hotkey": hotkey.to_string(), "staked_rao": amount}),
                || format!("staked {} TAO on {hotkey}", tao(amount)),
            )
        }
        ChainCommand::Weights {
            chain,
            wallet,
            uids,
            weights,
            version_key,
            format,
        } => {
            if uids.len() != weights.len() {
                bail!(
                    "{} uids but {} weights: give one weight per uid",
                    uids.len(),
                    weights.len()
                );
            }
            let weights = scale_weights(&weights)?;
            let hotkey = wallet.hotkey()?;
            let chain = chain.open().await?;
            if chain.hyperparameters().await?.commit_reveal_weights_enabled {
                bail!(
                    "this subnet takes weights by commit-reveal: a commit made here would be \
                     lost with its salt when this command exits; run a validator \
                     (templar validator), which commits and reveals them itself"
                );
            }
            chain
                .set_weights(&hotkey, &uids, &weights, version_key)
                .await?;
            format.print(
                &serde_json::json!({"uids": uids, "weights": weights, "version_key": version_key}),
                || format!("weights set: {uids:?} -> {weights:?}"),
            )
        }
    }
}

/// Whether spending TAO is confirmed first.
#[derive(Args, Clone)]
pub struct Prompt {
    /// Spend without asking (for scripts). Without it, a command that spends TAO on a subtensor
    /// shows the cost and asks on the terminal, and refuses when there is no terminal.
    #[arg(long, env = "TEMPLAR_NO_PROMPT", value_parser = clap::builder::BoolishValueParser::new())]
    no_prompt: bool,
}

impl Prompt {
    /// Whether spending on `chain` is asked first: on a subtensor without --no-prompt (a
    /// LocalChain's TAO is a test chain's, worth nothing). The cost is read only then.
    fn needed(&self, chain: &ChainPath) -> bool {
        !self.no_prompt && !matches!(chain.target(), ChainTarget::Local(_))
    }
}

/// Shows `spending` and asks to go ahead; refused without a terminal to ask on.
fn ask_to_spend(spending: &str) -> Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        bail!(
            "{spending}: there is no terminal to confirm it on (stdin is not a terminal); \
             pass --no-prompt to go ahead without being asked"
        );
    }
    eprint!("{spending}.\ngo ahead? [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if !matches!(answer.trim().to_lowercase().as_str(), "y" | "yes") {
        bail!("not confirmed: nothing was spent");
    }
    Ok(())
}

/// Scales weights so the largest becomes 65535, as Bittensor's clients do.
fn scale_weights(weights: &[f64]) -> Result<Vec<u16>> {
    if weights.iter().any(|w| !w.is_finite() || *w < 0.0) {
        bail!("weights must be finite and non-negative");
    }
    let max = weights.iter().cloned().fold(0.0, f64::max);
    if max == 0.0 {
        bail!("at least one weight must be positive");
    }
    Ok(weights
        .iter()
        .map(|w| (w / max * f64::from(u16::MAX)).round() as u16)
        .collect())
}

fn init(args: InitArgs) -> Result<()> {
    let hyperparameters = match &args.hyperparameters {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
        }
        None => Hyperparameters::default(),
    };
    let mut genesis = Genesis::now(
        args.chain.netuid.unwrap_or(DEFAULT_NETUID),
        args.block_time_ms,
        hyperparameters,
    );
    genesis.balances = args.fund;
    let ChainTarget::Local(path) = args.chain.target() else {
        bail!(
            "{} is a subtensor, which has its own genesis: init creates LocalChain files only",
            args.chain.name()
        );
    };
    let chain = LocalChain::create(&path, &genesis)?;
    let value = serde_json::json!({
        "path": chain.path().display().to_string(),
        "netuid": genesis.netuid,
        "block_time_ms": genesis.block_time_ms,
        "tempo": genesis.hyperparameters.tempo,
    });
    args.format.print(&value, || {
        format!(
            "created LocalChain {} (netuid {}, {} ms blocks, tempo {})",
            chain.path().display(),
            genesis.netuid,
            genesis.block_time_ms,
            genesis.hyperparameters.tempo
        )
    })
}

/// A node's commitment as "role url" (read credentials are not shown), else text or hex.
fn commitment_text(data: &[u8]) -> String {
    if let Ok(commitment) = templar_node::Commitment::decode(data) {
        return format!("{} {}", commitment.role.name(), commitment.url);
    }
    match std::str::from_utf8(data) {
        Ok(text) if !text.chars().any(char::is_control) => text.to_string(),
        _ => format!("0x{}", encode_hex(data)),
    }
}

async fn status(target: &ChainPath, json: bool) -> Result<()> {
    let chain = target.open().await?;
    let metagraph = chain.metagraph().await?;
    if json {
        let timestamp_ms = chain.block_timestamp(metagraph.block).await?;
        println!(
            "{}",
            serde_json::to_string_pretty(&metagraph_json(timestamp_ms, &metagraph))?
        );
        return Ok(());
    }
    println!(
        "{}  block {}  netuid {}  {} uids",
        target.target(),
        metagraph.block,
        metagraph.netuid,
        metagraph.neurons.len()
    );
    println!(
        "{:>4}  {:<48}  {:>16}  {:>1}  {:>8}  {:>8}  {:>12}  {:>8}  commitment",
        "uid", "hotkey", "stake (TAO)", "V", "incent.", "divid.", "emission", "updated"
    );
    for n in &metagraph.neurons {
        println!(
            "{:>4}  {:<48}  {:>16}  {:>1}  {:>8.5}  {:>8.5}  {:>12}  {:>8}  {}",
            n.uid,
            n.hotkey.to_string(),
            tao(n.stake),
            if n.validator_permit { "*" } else { "" },
            n.incentive,
            n.dividends,
            n.emission,
            n.last_update,
            n.commitment
                .as_deref()
                .map(commitment_text)
                .unwrap_or_default()
        );
    }
    Ok(())
}

fn metagraph_json(timestamp_ms: u64, metagraph: &Metagraph) -> serde_json::Value {
    let neurons: Vec<serde_json::Value> = metagraph
        .neurons
        .iter()
        .map(|n| {
            serde_json::json!({
                "uid": n.uid,
                "hotkey": n.hotkey.to_string(),
                "coldkey": n.coldkey.to_string(),
                "stake": n.stake,
                "validator_permit": n.validator_permit,
                "rank": n.rank,
                "trust": n.trust,
                "consensus": n.consensus,
                "incentive": n.incentive,
                "dividends": n.dividends,
                "validator_trust": n.validator_trust,
                "emission": n.emission,
                "registered_at": n.registered_at,
                "last_update": n.last_update,
                "commitment": n.commitment.as_deref().map(commitment_text),
            })
        })
        .collect();
    serde_json::json!({
        "netuid": metagraph.netuid,
        "block": metagraph.block,
        "timestamp_ms": timestamp_ms,
        "stake_unit": "rao",
        "neurons": neurons,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn weights_scale_to_u16_max() {
        assert_eq!(scale_weights(&[0.75, 0.25]).unwrap(), vec![65535, 21845]);
        assert!(scale_weights(&[0.0]).is_err());
        assert!(scale_weights(&[-1.0, 1.0]).is_err());
    }

    #[test]
    fn funding_parses_address_and_tao() {
        let (account, rao) =
            parse_funding("5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY=1.5").unwrap();
        assert_eq!(
            account.to_ss58(),
            "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"
        );
        assert_eq!(rao, 1_500_000_000);
        assert!(parse_funding("nope").is_err());
        assert!(parse_funding("5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY=-1").is_err());
    }
}
