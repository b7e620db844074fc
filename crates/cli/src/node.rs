//! `templar miner`, `templar validator` and `templar network init`: running nodes of a network.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use templar_chain::{AnyChain, Chain, ChainTarget};
use templar_data::Manifest;
use templar_engine::{DeviceChoice, Preset};
use templar_node::behavior::Behavior;
use templar_node::data::Data;
use templar_node::metrics::Metrics;
use templar_node::miner::Stop;
use templar_node::node::{Node, now_ms};
use templar_node::{Commitment, Event, EventSink, Miner, NetworkConfig, Role, Validator};
use templar_storage::{S3Settings, Store, StoreConfig};

use crate::chain::ChainPath;
use crate::wallet::WalletArgs;

impl NodeArgs {
    #[cfg(test)]
    pub fn wallet(&self) -> &WalletArgs {
        &self.wallet
    }

    #[cfg(test)]
    pub fn chain(&self) -> &ChainPath {
        &self.chain
    }

    fn sharding(&self) -> crate::ranks::Sharding {
        crate::ranks::Sharding {
            shard: self.shard,
            offload: self.offload,
        }
    }
}

/// Options every node takes.
#[derive(Args, Clone)]
pub struct NodeArgs {
    /// The network's agreed configuration.
    #[arg(long, env = "TEMPLAR_CONFIG", default_value = "network.toml")]
    config: PathBuf,
    #[command(flatten)]
    wallet: WalletArgs,
    /// Where this node publishes: s3://bucket[/prefix] (credentials from AWS_* variables) or file:///dir.
    #[arg(long, env = "TEMPLAR_STORAGE")]
    storage: String,
    /// S3 endpoint, for R2 or a self-hosted server (default: AWS_ENDPOINT_URL or AWS).
    #[arg(long, env = "TEMPLAR_STORAGE_ENDPOINT")]
    storage_endpoint: Option<String>,
    #[arg(long, env = "TEMPLAR_STORAGE_REGION")]
    storage_region: Option<String>,
    /// A read-only key others use to fetch this node's objects; committed on chain, so public.
    #[arg(
        long,
        env = "TEMPLAR_READ_ACCESS_KEY_ID",
        requires = "read_secret_access_key"
    )]
    read_access_key_id: Option<String>,
    #[arg(long, env = "TEMPLAR_READ_SECRET_ACCESS_KEY")]
    read_secret_access_key: Option<String>,
    #[command(flatten)]
    chain: ChainPath,
    /// The prepared dataset (`templar data prepare`).
    #[arg(long, env = "TEMPLAR_DATA_DIR")]
    data_dir: PathBuf,
    /// Local state (model, optimizer, error feedback, scores) [default: templar-state/<wallet>-<hotkey>].
    #[arg(long, env = "TEMPLAR_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// A miner saves its local state every this many windows, beside the window (the save
    /// overlaps the upload, the gather and the next window's training). A restart resumes from
    /// the last save and catches up on the network's windows since; a larger value spares the
    /// disk a model, two moments and the error feedback per window (≈128 GB at 8B). A validator
    /// saves every window: its record holds the scores.
    #[arg(long, env = "TEMPLAR_STATE_EVERY", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    state_every: u64,
    /// A miner trains each window only once the window before is gathered and applied, instead
    /// of training on while it is (the default, for one process): the device then idles through
    /// every upload, slot and gather. For comparison (docs/node.md, "Overlapped windows").
    #[arg(long, env = "TEMPLAR_SEQUENTIAL_WINDOWS")]
    sequential_windows: bool,
    /// auto (CUDA when there is one), cpu, cuda or cuda:N.
    #[arg(long, env = "TEMPLAR_DEVICE", default_value = "auto")]
    device: String,
    /// Intra-op threads per process (default: all cores, divided among the ranks).
    #[arg(long, env = "TEMPLAR_THREADS")]
    threads: Option<i32>,
    /// Span this many ranks of this machine, one process each: on CUDA rank r trains on GPU r
    /// (NCCL), on the CPU the ranks share its cores (Gloo). Each rank trains on its share of
    /// every batch with gradients and AdamW moments sharded and compresses its share of the
    /// tensors (a validator: measures its share of every evaluation); rank 0 alone talks to
    /// chain and storage.
    #[arg(long, env = "TEMPLAR_RANKS", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    ranks: u64,
    /// How long ranks wait for one another. Other ranks wait for rank 0's next command through
    /// a window's quiet phases (upload, waiting, gathering), so keep it above a window's length.
    #[arg(long, env = "TEMPLAR_RANK_TIMEOUT_S", default_value_t = 3600)]
    rank_timeout_s: u64,
    /// What a miner's ranks shard: `optimizer` (ZeRO-2: the gradients and AdamW moments; every
    /// rank holds the whole weights) or `full` (ZeRO-3 / FSDP: the weights too, each layer
    /// gathered just before it is used and freed after, so no rank ever holds the whole model;
    /// `templar model info --full-shard` says what fits).
    #[arg(long, env = "TEMPLAR_SHARD", value_enum, default_value = "optimizer")]
    shard: crate::ranks::Shard,
    /// With `--shard full`: keep each rank's f32 weights and AdamW moments in (pinned) host
    /// memory and step there; the device then holds only the layers gathered and the
    /// activations.
    #[arg(long, env = "TEMPLAR_OFFLOAD", value_parser = clap::builder::BoolishValueParser::new())]
    offload: bool,
    /// Set by the launcher of `--ranks`: this process is that rank.
    #[arg(long, hide = true, requires = "rank_store")]
    rank: Option<usize>,
    /// Set by the launcher of `--ranks`: the ranks' rendezvous store.
    #[arg(long, hide = true)]
    rank_store: Option<PathBuf>,
    /// Stop after this many windows (default: run until Ctrl-C).
    #[arg(long, env = "TEMPLAR_WINDOWS", conflicts_with = "until_window")]
    windows: Option<u64>,
    /// Stop after finishing this window (what `templar localnet` uses, so that every node of
    /// a network stops at the same window).
    #[arg(long, env = "TEMPLAR_UNTIL_WINDOW")]
    until_window: Option<u64>,
    /// Also append every event as a JSON line to this file.
    #[arg(long, env = "TEMPLAR_EVENTS")]
    events: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics and a health check at /healthz, which
    /// fails (503) once two windows pass without a completed one. For example 127.0.0.1:9616.
    #[arg(long, env = "TEMPLAR_METRICS_ADDR", value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// TEST AND RESEARCH NETWORKS ONLY (refused on finney): make this miner attack the network
    /// on purpose — noise, zeros, scaled:X, copycat:UID, partial-copy:UID:F, replay,
    /// other-data[:UID], lazy, late, malformed, nan or oversize. See docs/robustness.md.
    #[arg(long, env = "TEMPLAR_BEHAVIOR", value_name = "BEHAVIOR")]
    behavior: Option<Behavior>,
    /// TEST AND RESEARCH NETWORKS ONLY (refused on finney): this node's live gather of WINDOW
    /// fails to read UID's payload, as if that peer's bucket had not answered (a fault
    /// scenario; repeat for more). Later reads of it succeed.
    #[arg(long, value_name = "WINDOW:UID", hide = true)]
    fail_read: Vec<templar_node::node::FailedRead>,
}

#[derive(Subcommand)]
pub enum NetworkCommand {
    /// Write a network.toml with defaults for a preset and a prepared dataset.
    Init {
        #[arg(long, default_value = "templar")]
        name: String,
        /// Built-in preset or a preset TOML file.
        #[arg(long, default_value = "tiny")]
        preset: String,
        /// The prepared dataset whose content hash the network agrees on.
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, default_value = "network.toml")]
        out: PathBuf,
        #[arg(long)]
        blocks_per_window: Option<u64>,
        #[arg(long)]
        inner_steps: Option<u32>,
        /// How long after a window's end uploads are still accepted (default 60 s, for 25-minute
        /// windows; use a few seconds for short local windows).
        #[arg(long)]
        upload_grace_ms: Option<u64>,
        /// Tolerated storage-versus-chain clock difference (default 10 s).
        #[arg(long)]
        clock_skew_ms: Option<u64>,
        #[command(flatten)]
        format: crate::output::Format,
    },
}

pub fn run_network(command: NetworkCommand) -> Result<()> {
    let NetworkCommand::Init {
        name,
        preset,
        data_dir,
        out,
        blocks_per_window,
        inner_steps,
        upload_grace_ms,
        clock_skew_ms,
        format,
    } = command;
    if out.exists() {
        bail!(
            "{} exists; remove it or choose another --out",
            out.display()
        );
    }
    let manifest = Manifest::read(&data_dir)?;
    let mut config = NetworkConfig::defaults(&name, Preset::load(&preset)?, &manifest.content_hash);
    config.model.train.seq_len = manifest.seq_len;
    if let Some(blocks) = blocks_per_window {
        config.window.blocks_per_window = blocks;
    }
    if let Some(steps) = inner_steps {
        config.training.inner_steps = steps;
    }
    if let Some(ms) = upload_grace_ms {
        config.window.upload_grace_ms = ms;
    }
    if let Some(ms) = clock_skew_ms {
        config.window.clock_skew_ms = ms;
    }
    config.write(&out)?;
    let id = hex(&config.network()?.id());
    format.print(
        &serde_json::json!({"path": out.display().to_string(), "network_id": id}),
        || format!("wrote {} (network id {id})", out.display()),
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn run(role: Role, args: NodeArgs) -> Result<()> {
    let world = args.ranks as usize;
    if (world > 1 || args.shard == crate::ranks::Shard::Full) && args.behavior.is_some() {
        bail!("--behavior runs on one process holding the whole model: drop --ranks and --shard");
    }
    let sharding = args.sharding();
    check_sharding(role, sharding)?;
    let threads = args.threads.unwrap_or_else(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cores / world).max(1) as i32
    });
    templar_engine::set_threads(threads);
    if world > 1 {
        match (args.rank, &args.rank_store) {
            (None, _) => return crate::ranks::launch(world),
            (Some(rank), Some(store)) if rank > 0 => {
                let config = NetworkConfig::load(&args.config)?;
                let device = args.device.parse::<DeviceChoice>()?.resolve()?;
                let timeout = std::time::Duration::from_secs(args.rank_timeout_s);
                let replica_role = match role {
                    Role::Miner => templar_engine::memory::Role::Miner,
                    Role::Validator => templar_engine::memory::Role::Validator,
                };
                return crate::ranks::follow(
                    &config,
                    (device, sharding),
                    replica_role,
                    (rank, world),
                    store,
                    timeout,
                );
            }
            _ => {}
        }
    }
    // One node per process on one thread: libtorch does the parallel work.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_node(role, args))
}

async fn run_node(role: Role, args: NodeArgs) -> Result<()> {
    let behavior = args.behavior.unwrap_or_default();
    if !behavior.is_honest() {
        if role != Role::Miner {
            bail!("--behavior is a miner option: validators cannot be told to misbehave");
        }
        if args.chain.target() == ChainTarget::parse("finney") {
            bail!("--behavior {behavior} is for test networks: it is refused on finney");
        }
    }
    if !args.fail_read.is_empty() && args.chain.target() == ChainTarget::parse("finney") {
        bail!("--fail-read is for test networks: it is refused on finney");
    }
    let config = NetworkConfig::load(&args.config)?;
    let device = args.device.parse::<DeviceChoice>()?.resolve()?;
    // Rank 0 of a node over ranks meets the others before anything else; a fully sharded
    // miner of one rank makes a group of its own (its store lives as long as the node).
    let timeout = std::time::Duration::from_secs(args.rank_timeout_s);
    let alone = (args.ranks == 1 && args.shard == crate::ranks::Shard::Full)
        .then(|| tempfile::Builder::new().prefix("templar-rank-").tempdir())
        .transpose()
        .context("creating the rank's store folder")?;
    let ranked = match (args.rank, &args.rank_store, &alone) {
        (Some(rank), Some(store), _) => {
            let world = args.ranks as usize;
            Some(crate::ranks::join(
                &config, device, rank, world, store, timeout,
            )?)
        }
        (_, _, Some(dir)) => Some(crate::ranks::join(
            &config,
            device,
            0,
            1,
            &dir.path().join("store"),
            timeout,
        )?),
        _ => None,
    };
    let device = ranked.as_ref().map_or(device, |(device, _)| *device);
    let hotkey = args.wallet.hotkey()?;
    let mut chain = args.chain.open().await?;
    let state_dir = args.state_dir.clone().unwrap_or_else(|| {
        PathBuf::from("templar-state")
            .join(format!("{}-{}", args.wallet.wallet, args.wallet.hotkey))
    });
    if role == Role::Validator {
        // Weight commits awaiting their reveal outlive a restart (commit-reveal subnets).
        // One file per subnet: a state folder reused on another subnet keeps both.
        let netuid = chain.netuid();
        chain.keep_reveals_in(state_dir.join(format!("pending-reveals-{netuid}.json")));
    }
    let store_config = StoreConfig {
        s3: S3Settings {
            endpoint: args.storage_endpoint.clone(),
            region: args.storage_region.clone(),
            ..S3Settings::default()
        },
        ..StoreConfig::new(args.storage.clone())
    };
    let store = Store::open(&store_config)?;
    let data = Data::open(&args.data_dir, &config)?;
    let name = format!("{}-{}", role.name(), args.wallet.hotkey);
    let metrics = match args.metrics_addr {
        Some(addr) => {
            let window_ms = window_ms(&chain, config.window.blocks_per_window).await?;
            let metrics = Metrics::new(role, crate::VERSION, window_ms, now_ms());
            let metrics = Arc::new(Mutex::new(metrics));
            crate::metrics::serve(addr, metrics.clone())?;
            Some(metrics)
        }
        None => None,
    };
    let events = sink(&name, args.events.as_deref(), metrics)?;
    let local = !args.storage.starts_with("s3://");
    let mut node = Node::new(config, chain, hotkey, 0, store, data, events, local)?
        .with_failed_reads(args.fail_read.clone());
    let commitment = Commitment {
        role,
        url: args.storage.clone(),
        endpoint: args.storage_endpoint.clone(),
        region: args.storage_region.clone(),
        access_key_id: args.read_access_key_id.clone(),
        secret_access_key: args.read_secret_access_key.clone(),
    };
    if behavior == Behavior::Takeover {
        let coldkey = args.wallet.coldkey()?;
        let give_up = args
            .until_window
            .map(|w| (w + 1) * node.config.window.blocks_per_window);
        let taken = templar_node::adversary::take_over(
            &node.chain,
            &coldkey,
            &node.hotkey.account(),
            give_up,
        )
        .await?;
        if taken.is_none() {
            tracing::info!("no paid uid came up for replacement before the last window: stopping");
            return Ok(());
        }
    }
    node.uid = node.announce(role, &commitment).await?;
    let window = node.clock.window_of(node.chain.block().await?.number);
    let (stop_tx, requested) = tokio::sync::watch::channel(false);
    let stop = Stop {
        requested,
        after_window: args
            .until_window
            .or(args.windows.map(|n| window + n.max(1) - 1)),
    };
    let mut signals = StopSignals::new()?;
    tokio::spawn(async move {
        if let Some(name) = signals.next().await {
            tracing::warn!("{name}: finishing the current window (a second one aborts it)");
            let _ = stop_tx.send(true);
            if let Some(name) = signals.next().await {
                tracing::warn!("{name} again: stopping now, mid-window");
                std::process::exit(130);
            }
        }
    });
    tracing::info!(uid = node.uid, network = %node.network, "starting {}", role.name());
    node.events.emit(Event::Started {
        role,
        uid: node.uid,
        window,
    });
    match role {
        Role::Miner => {
            let miner = match ranked {
                Some((_, group)) if args.shard == crate::ranks::Shard::Full => {
                    let placement = args.sharding().placement(device);
                    Miner::new_fully_sharded(node, placement, state_dir, group)?
                }
                Some((_, group)) => Miner::new_ranked(node, device, state_dir, group)?,
                None => Miner::new(node, device, state_dir)?.with_behavior(behavior),
            };
            miner
                .with_state_every(args.state_every)
                .with_overlap(!args.sequential_windows)
                .run(stop)
                .await?
        }
        Role::Validator => {
            let validator = match ranked {
                Some((_, group)) => Validator::new_ranked(node, device, state_dir, group)?,
                None => Validator::new(node, device, state_dir)?,
            };
            validator.run(stop).await?
        }
    }
    Ok(())
}

/// Ctrl-C (SIGINT) and SIGTERM, which docker, systemd and pm2 send to stop a service: both
/// ask the node to finish its window and stop.
struct StopSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn new() -> Result<StopSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(StopSignals {
            interrupt: signal(SignalKind::interrupt()).context("listening for Ctrl-C")?,
            terminate: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
        })
    }

    /// The next stop signal's name; `None` once neither can arrive any more.
    async fn next(&mut self) -> Option<&'static str> {
        tokio::select! {
            Some(()) = self.interrupt.recv() => Some("Ctrl-C"),
            Some(()) = self.terminate.recv() => Some("SIGTERM"),
            else => None,
        }
    }
}

/// Refuses what the ranks cannot do: full sharding is a miner's (over any number of ranks: one
/// rank with its spans offloaded trains a model larger than its device), and offloading moves
/// fully sharded spans.
fn check_sharding(role: Role, sharding: crate::ranks::Sharding) -> Result<()> {
    use crate::ranks::Shard;
    if sharding.offload && sharding.shard != Shard::Full {
        bail!(
            "--offload (or TEMPLAR_OFFLOAD) moves the spans of fully sharded parameters: add \
             --shard full"
        );
    }
    if sharding.shard == Shard::Full && role != Role::Miner {
        bail!(
            "--shard full (or TEMPLAR_SHARD=full) is a miner's: a validator judges with the \
             whole model on each rank; drop it for the validator"
        );
    }
    Ok(())
}

/// How long a window lasts on `chain`, from the timestamps of the next window's blocks (fixed
/// ahead of the head on a chain with a set block time).
async fn window_ms(chain: &AnyChain, blocks_per_window: u64) -> Result<u64> {
    let next = chain.block().await?.number + 1;
    let start = chain.block_timestamp(next).await?;
    let end = chain.block_timestamp(next + blocks_per_window).await?;
    Ok(end.saturating_sub(start).max(1))
}

/// Events go to the log, as JSON lines to `path` when given, and into `metrics` when served.
fn sink(
    name: &str,
    path: Option<&Path>,
    metrics: Option<crate::metrics::SharedMetrics>,
) -> Result<EventSink> {
    if path.is_none() && metrics.is_none() {
        return Ok(EventSink::log_only(name));
    }
    let file = path
        .map(|path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening the events file {}", path.display()))
        })
        .transpose()?
        .map(Mutex::new);
    Ok(EventSink::new(
        name,
        Arc::new(move |who: &str, event: &Event| {
            let at_ms = now_ms();
            if let Some(metrics) = &metrics {
                crate::metrics::lock(metrics).observe(event, at_ms);
            }
            if let Some(file) = &file {
                let line = serde_json::json!({ "node": who, "at_ms": at_ms, "event": event });
                if let Ok(mut file) = file.lock() {
                    let _ = writeln!(file, "{line}");
                }
            }
        }),
    ))
}
