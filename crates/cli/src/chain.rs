//! `templar chain …`: a LocalChain file (the embedded chain).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use templar_chain::local::Call;
use templar_chain::{Genesis, Hyperparameters, LocalChain, Metagraph, RAO_PER_TAO, tao};
use templar_protocol::AccountId;
use templar_protocol::keys::encode_hex;

use crate::wallet::WalletArgs;

#[derive(Args, Clone)]
pub struct ChainPath {
    /// The LocalChain database file.
    #[arg(long, env = "TEMPLAR_CHAIN", default_value = "localchain.sqlite")]
    chain: PathBuf,
}

impl ChainPath {
    fn open(&self) -> Result<LocalChain> {
        Ok(LocalChain::open(&self.chain)?)
    }
}

#[derive(Subcommand)]
pub enum ChainCommand {
    /// Create a LocalChain file with a subnet and initial balances.
    Init(InitArgs),
    /// Print the block and the metagraph.
    Status {
        #[command(flatten)]
        chain: ChainPath,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Register the wallet's hotkey, burning the registration cost from the coldkey.
    Register {
        #[command(flatten)]
        chain: ChainPath,
        #[command(flatten)]
        wallet: WalletArgs,
    },
    /// Stake TAO from the coldkey's balance on the wallet's hotkey.
    Stake {
        #[command(flatten)]
        chain: ChainPath,
        #[command(flatten)]
        wallet: WalletArgs,
        /// TAO to stake.
        #[arg(long)]
        amount: f64,
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
    },
}

#[derive(Args)]
pub struct InitArgs {
    #[command(flatten)]
    chain: ChainPath,
    #[arg(long, default_value_t = 3)]
    netuid: u16,
    /// Milliseconds per block (Bittensor: 12000).
    #[arg(long, default_value_t = 12_000)]
    block_time_ms: u64,
    /// Hyperparameters TOML file (Bittensor names; unspecified ones keep their defaults).
    #[arg(long)]
    hyperparameters: Option<PathBuf>,
    /// Initial balance, ADDRESS=TAO; repeatable.
    #[arg(long, value_parser = parse_funding)]
    fund: Vec<(AccountId, u64)>,
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
    match command {
        ChainCommand::Init(args) => init(args),
        ChainCommand::Status { chain, json } => status(&chain.open()?, json),
        ChainCommand::Register { chain, wallet } => {
            let chain = chain.open()?;
            let hotkey = wallet.hotkey()?.account();
            let uid = chain.submit(&wallet.coldkey()?, Call::BurnedRegister { hotkey })?;
            println!("registered {hotkey} as uid {}", uid.unwrap_or_default());
            Ok(())
        }
        ChainCommand::Stake {
            chain,
            wallet,
            amount,
        } => {
            let chain = chain.open()?;
            let hotkey = wallet.hotkey()?.account();
            let amount = tao_to_rao(amount).map_err(anyhow::Error::msg)?;
            chain.submit(&wallet.coldkey()?, Call::AddStake { hotkey, amount })?;
            println!("staked {} TAO on {hotkey}", tao(amount));
            Ok(())
        }
        ChainCommand::Weights {
            chain,
            wallet,
            uids,
            weights,
            version_key,
        } => {
            let weights = scale_weights(&weights)?;
            let call = Call::SetWeights {
                uids: uids.clone(),
                weights: weights.clone(),
                version_key,
            };
            chain.open()?.submit(&wallet.hotkey()?, call)?;
            println!("weights set: {uids:?} -> {weights:?}");
            Ok(())
        }
    }
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
    let mut genesis = Genesis::now(args.netuid, args.block_time_ms, hyperparameters);
    genesis.balances = args.fund;
    let chain = LocalChain::create(&args.chain.chain, &genesis)?;
    println!(
        "created LocalChain {} (netuid {}, {} ms blocks, tempo {})",
        chain.path().display(),
        genesis.netuid,
        genesis.block_time_ms,
        genesis.hyperparameters.tempo
    );
    Ok(())
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

fn status(chain: &LocalChain, json: bool) -> Result<()> {
    let metagraph = chain.metagraph_now()?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&metagraph_json(chain, &metagraph))?
        );
        return Ok(());
    }
    let block = chain.block_now();
    println!(
        "{}  block {}  netuid {}  {} uids",
        chain.path().display(),
        block.number,
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

fn metagraph_json(chain: &LocalChain, metagraph: &Metagraph) -> serde_json::Value {
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
        "timestamp_ms": chain.timestamp_of(metagraph.block),
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
