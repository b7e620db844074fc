//! `templar localnet`: a whole network on one machine — a LocalChain (or a real subtensor
//! runtime under chopsticks), file storage, the demo data, a validator and miners, each node its
//! own OS process — watched live on a dashboard and summed up in a report. Running it again on
//! the same folder resumes the network.

mod dashboard;
mod faults;
pub mod fleet;
mod history;
mod net_chain;
mod report;
mod robustness;
mod scenario;
mod setup;
mod tail;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use templar_chain::LocalChain;
use templar_chain::wallet::Wallet;
use templar_node::{NetworkConfig, Role};
use templar_protocol::WindowClock;

use dashboard::{Dashboard, Snapshot, plain_line};
use fleet::Fleet;
use history::History;
use net_chain::NetChain;
use report::{NodeEntry, RunRecord};
use setup::{ChainChoice, Layout, Member, NewNetwork, WALLET};
use tail::EventFile;

const BLOCK_TIME_MS: u64 = 500;
const TICK: Duration = Duration::from_millis(250);

#[derive(Args, Clone)]
pub struct LocalnetArgs {
    #[arg(long, default_value_t = 3)]
    miners: usize,
    #[arg(long, default_value_t = 1)]
    validators: usize,
    /// Stop after this many windows past the one in progress (default: run until Ctrl-C).
    #[arg(long)]
    windows: Option<u64>,
    /// The network's folder: chain, wallets, data, storage, node state, logs and the report.
    /// Running again with the same folder resumes the network.
    #[arg(long, default_value = "localnet")]
    dir: PathBuf,
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Model preset of a new network (an existing network keeps its own).
    #[arg(long, default_value = "tiny")]
    preset: String,
    /// Seconds per window of a new network [default: 20; with --scenario adversarial 60, as
    /// twenty-five nodes share the machine].
    #[arg(long)]
    window_secs: Option<u64>,
    /// Inner steps per window of a new network [default: 16, sized so that three miners and a
    /// validator sharing two cores keep their trainers busy through a 20-second window; with
    /// --scenario 8, the number their recorded results were measured at]. A miner whose steps
    /// run out before the window ends shows it as a compute share under 1.
    #[arg(long)]
    inner_steps: Option<u32>,
    /// Text for a new network's data: a folder of .txt/.jsonl files
    /// [default: the demo corpus scripts/setup installs].
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Plain log lines instead of the dashboard, even on a terminal.
    #[arg(long)]
    plain: bool,
    /// Only rebuild the report from what the folder holds (for example after the orchestrator
    /// was killed); starts no nodes.
    #[arg(long)]
    report_only: bool,
    /// Every honest miner spans this many ranks (`templar miner --ranks`): processes of its
    /// own that share the machine's cores, with gradients, moments and the outer step sharded.
    #[arg(long, default_value_t = 1)]
    miner_ranks: usize,
    /// The first this many honest miners shard their model fully over their --miner-ranks ranks
    /// (`templar miner --shard full`): no rank holds the whole model (one rank keeps its
    /// training state in spans and gathers a layer at a time).
    #[arg(long, default_value_t = 0)]
    full_shard_miners: usize,
    /// Every validator spans this many ranks (`templar validator --ranks`), each measuring its
    /// share of every evaluation.
    #[arg(long, default_value_t = 1)]
    validator_ranks: usize,
    /// The chain: `embedded` (a LocalChain file in the folder) or `chopsticks` (a real subtensor
    /// runtime, from --chain-spec, run offline by chopsticks; scripts/setup installs it).
    #[arg(long, value_enum, default_value = "embedded")]
    chain: ChainKind,
    /// With --chain chopsticks: a raw subtensor chain spec that includes the runtime (such as
    /// subtensor's scripts/specs/raonet.json).
    #[arg(long, required_if_eq("chain", "chopsticks"))]
    chain_spec: Option<PathBuf>,
    /// With --chain chopsticks: the subnet the network runs on.
    #[arg(long, default_value_t = 1)]
    netuid: u16,
    /// The embedded chain takes weights by commit-reveal, as Bittensor subnets that enable it
    /// do: validators commit a hash of their weights and reveal them an epoch later (`--scenario
    /// faults` always does). Only when the network is created.
    #[arg(long)]
    commit_reveal: bool,
    /// Run a scripted experiment instead of one network: `adversarial` runs --miners honest
    /// miners beside one miner per attack (in DIR/adversarial) and the same honest miners alone
    /// (in DIR/honest), then writes DIR/robustness.json and DIR/robustness.md; `faults` runs one
    /// network through a failed read, a miner killed with SIGKILL and restarted, the validator
    /// stopped with SIGTERM while a weight commit awaits its reveal and restarted, a corrupted
    /// object, a miner suspended for three windows, a peer deleting everything it published, and
    /// a miner joining in window 20, then writes DIR/faults.json and DIR/faults.md.
    #[arg(long, value_enum)]
    scenario: Option<Scenario>,
    /// With --scenario adversarial: the attacks, comma-separated [default: all of
    /// inactive-after-paid, noise, zeros, scaled, copycat, partial-copy, replay, other-data,
    /// lazy, late, malformed, nan, oversize, eval-overfit, early-copy, low-norm (three sybils)
    /// and takeover].
    #[arg(long, value_delimiter = ',')]
    attacks: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    Adversarial,
    Faults,
}

impl LocalnetArgs {
    fn inner_steps(&self) -> u32 {
        self.inner_steps
            .unwrap_or(if self.scenario.is_some() { 8 } else { 16 })
    }

    fn window_secs(&self) -> u64 {
        self.window_secs.unwrap_or(match self.scenario {
            Some(Scenario::Adversarial) => 60,
            Some(Scenario::Faults) | None => 20,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ChainKind {
    Embedded,
    Chopsticks,
}

/// Runs `templar localnet` as `args` say. Each node is a process of the running executable
/// (`std::env::current_exe`), so this is called from the `templar` binary.
pub fn run(args: LocalnetArgs) -> Result<()> {
    check_args(&args)?;
    if let Some(scenario) = args.scenario {
        return scenario::run(&args, scenario);
    }
    if args.report_only && !args.dir.join("network.toml").exists() {
        bail!(
            "{} holds no localnet (no network.toml): run `templar localnet --dir {}` first",
            args.dir.display(),
            args.dir.display()
        );
    }
    if args.report_only {
        let dir = args.dir.canonicalize()?;
        let _lock = lock(&dir)?;
        return report_only(&Layout { dir });
    }
    let members = setup::members(args.validators, args.miners);
    run_network(&args, &args.dir, members, &[], None)
}

/// Runs one network in `dir` for `args.windows`: sets it up (or resumes it), starts `members`
/// as processes, follows them, and writes the report. `attacks`: behaviours (by name) the
/// members named `a1`, `a2`, … take, aimed at the first honest miner (see [`scenario`]).
fn run_network(
    args: &LocalnetArgs,
    dir: &Path,
    mut members: Vec<Member>,
    attacks: &[String],
    mut script: Option<&mut faults::Script>,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let layout = Layout { dir: dir.clone() };
    let _lock = lock(&dir)?;
    let chain = match (args.chain, &args.chain_spec) {
        (ChainKind::Chopsticks, Some(spec)) => ChainChoice::Chopsticks {
            spec: spec
                .canonicalize()
                .with_context(|| format!("the chain spec {}", spec.display()))?,
            netuid: args.netuid,
        },
        _ => ChainChoice::Embedded,
    };
    let new = NewNetwork {
        preset: args.preset.clone(),
        block_time_ms: BLOCK_TIME_MS,
        window_secs: args.window_secs(),
        inner_steps: args.inner_steps(),
        corpus: args
            .corpus
            .clone()
            .unwrap_or_else(templar_data::demo_corpus_dir),
        chain,
        commit_reveal: args.commit_reveal || script.is_some(),
    };
    let prepared = setup::prepare_network(&layout, &members, &new)?;
    if !attacks.is_empty() {
        scenario::arm(&layout, &prepared.chain, &mut members, attacks)?;
    }
    let clock = WindowClock::new(prepared.config.window.blocks_per_window)
        .context("network.toml: window.blocks_per_window must be positive")?;
    let first_window = clock.window_of(prepared.chain.head()?);
    let until = args.windows.map(|n| first_window + n);
    if prepared.resumed {
        eprintln!(
            "resuming the network in {} at window {first_window}",
            dir.display()
        );
    }
    let started_ms = templar_node::node::now_ms();
    let mut fleet = Fleet::default();
    let mut commands = BTreeMap::new();
    let ranks_of = |member: &Member| match (member.role, &member.behavior) {
        (Role::Miner, None) => args.miner_ranks,
        (Role::Validator, _) => args.validator_ranks,
        _ => 1,
    };
    let processes = members.iter().map(ranks_of).sum();
    let mut honest_miners = 0;
    for member in &members {
        let mut node_args = node_args(&layout, member, &args.device, until, processes);
        if ranks_of(member) > 1 {
            node_args.extend(["--ranks".into(), ranks_of(member).to_string().into()]);
        }
        if member.role == Role::Miner && member.behavior.is_none() {
            honest_miners += 1;
            if honest_miners <= args.full_shard_miners {
                node_args.extend(["--shard".into(), "full".into()]);
            }
        }
        if let Some(behavior) = &member.behavior {
            node_args.extend(["--behavior".into(), behavior.to_string().into()]);
        }
        node_args.extend(prepared.chain.node_args(&layout.chain()));
        if let Some(script) = script.as_deref_mut() {
            let uid_of = |hotkey: &str| uid_of(&prepared.chain, &layout, hotkey);
            node_args.extend(script.node_args(&member.name(), first_window, &uid_of)?);
        }
        if script.as_ref().is_some_and(|s| s.deferred(&member.name())) {
            commands.insert(member.name(), node_args);
            continue;
        }
        fleet.spawn(&member.name(), &node_args, &layout.log(&member.name()))?;
    }
    if let Some(script) = script.as_deref_mut() {
        script.prepare(&layout, &prepared.config, first_window, commands)?;
    }
    let watch = Watch {
        layout: &layout,
        config: &prepared.config,
        chain: &prepared.chain,
        clock,
        names: members.iter().map(Member::name).collect(),
        until,
        started_ms,
    };
    let live = !args.plain && std::io::stdout().is_terminal();
    let (history, interrupted) = watch.run(&mut fleet, live, script)?;
    finish(&watch, history, &fleet, first_window, interrupted, &members)
}

fn check_args(args: &LocalnetArgs) -> Result<()> {
    for (flag, ranks) in [
        ("--miner-ranks", args.miner_ranks),
        ("--validator-ranks", args.validator_ranks),
    ] {
        if !(1..=8).contains(&ranks) {
            bail!("{flag} {ranks} is out of range: use 1 to 8");
        }
    }
    if args.full_shard_miners > args.miners {
        bail!(
            "--full-shard-miners {} is more than the {} miners: use at most --miners",
            args.full_shard_miners,
            args.miners
        );
    }
    if !(1..=64).contains(&args.miners) {
        bail!("--miners {} is out of range: use 1 to 64", args.miners);
    }
    if !(1..=8).contains(&args.validators) {
        bail!(
            "--validators {} is out of range: use 1 to 8",
            args.validators
        );
    }
    if args.windows == Some(0) {
        bail!("--windows 0 would run nothing: use 1 or more, or leave it out to run until Ctrl-C");
    }
    if args.window_secs() < 5 {
        bail!(
            "--window-secs {} is too short to train and upload: use 5 or more",
            args.window_secs()
        );
    }
    Ok(())
}

/// Holds an exclusive lock on the folder while this localnet runs.
fn lock(dir: &Path) -> Result<std::fs::File> {
    let path = dir.join("localnet.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "another templar localnet is running on {}: stop it first, or choose another --dir",
            dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).context(format!("locking {}", path.display()))
        }
    }
}

/// The command line of one node, but for its chain options (`NetChain::node_args`).
/// The uid the localnet's hotkey `hotkey` holds on the chain now.
fn uid_of(chain: &NetChain, layout: &Layout, hotkey: &str) -> Result<u16> {
    let account = Wallet::new(layout.wallets(), WALLET)
        .hotkey(hotkey)?
        .account();
    chain
        .metagraph_now()?
        .neurons
        .iter()
        .find(|n| n.hotkey == account)
        .map(|n| n.uid)
        .with_context(|| format!("{hotkey} is not registered"))
}

fn node_args(
    layout: &Layout,
    member: &Member,
    device: &str,
    until: Option<u64>,
    nodes: usize,
) -> Vec<OsString> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (cores / nodes).max(1);
    let mut args: Vec<OsString> = vec![
        member.role.name().into(),
        "--config".into(),
        layout.config().into(),
        "--wallets-dir".into(),
        layout.wallets().into(),
        "--wallet".into(),
        WALLET.into(),
        "--hotkey".into(),
        member.hotkey.clone().into(),
        "--storage".into(),
        format!("file://{}", layout.storage(&member.hotkey).display()).into(),
        "--data-dir".into(),
        layout.data().into(),
        "--state-dir".into(),
        layout.state(&member.hotkey).into(),
        "--device".into(),
        device.into(),
        "--threads".into(),
        threads.to_string().into(),
        "--events".into(),
        layout.events(&member.name()).into(),
    ];
    if let Some(until) = until {
        args.extend(["--until-window".into(), until.to_string().into()]);
    }
    args
}

/// The orchestrator's view while the nodes run.
struct Watch<'a> {
    layout: &'a Layout,
    config: &'a NetworkConfig,
    chain: &'a NetChain,
    clock: WindowClock,
    names: Vec<String>,
    until: Option<u64>,
    started_ms: u64,
}

/// What the watch loop keeps between ticks.
#[derive(Default)]
struct Progress {
    history: History,
    exits: BTreeMap<String, Option<i32>>,
    incentives: BTreeMap<u16, f64>,
    stops_handled: usize,
    /// When nodes asked to stop are killed.
    deadline: Option<Instant>,
    last_chain_read: Option<Instant>,
}

impl Watch<'_> {
    /// Follows the nodes until all have exited; returns what they reported and whether the
    /// user stopped them.
    fn run(
        &self,
        fleet: &mut Fleet,
        live: bool,
        mut script: Option<&mut faults::Script>,
    ) -> Result<(History, bool)> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let stops = Arc::new(AtomicUsize::new(0));
        let counter = stops.clone();
        runtime.spawn(async move {
            while tokio::signal::ctrl_c().await.is_ok() {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        });
        let mut files: Vec<EventFile> = self
            .names
            .iter()
            .map(|n| EventFile::new(self.layout.events(n)))
            .collect();
        let mut dashboard = if live {
            Some(Dashboard::start()?)
        } else {
            None
        };
        if !live {
            self.announce();
        }
        let started = Instant::now();
        let mut progress = Progress::default();
        loop {
            if let Some(dashboard) = &dashboard
                && dashboard.stop_pressed()?
            {
                stops.fetch_add(1, Ordering::SeqCst);
            }
            self.handle_stops(stops.load(Ordering::SeqCst), &mut progress, fleet, live);
            reap(fleet, &mut progress.exits, live);
            for file in &mut files {
                for line in file.read_new()? {
                    if !live
                        && line.at_ms >= self.started_ms
                        && let Some(text) = plain_line(&line)
                    {
                        println!("{text}");
                    }
                    progress.history.apply(&line);
                }
            }
            if let Some(script) = script.as_deref_mut()
                && let Ok(head) = self.chain.head()
            {
                script.tick(fleet, &progress.history, head)?;
            }
            if fleet.running() == 0 {
                // A step that waits on the nodes (a commit to be pending, a window applied)
                // can no longer come due.
                if let Some(script) = script.as_deref()
                    && !script.finished()
                {
                    eprintln!(
                        "the fault script ended with steps that never came due: {:?}",
                        script.not_done()
                    );
                }
                break;
            }
            self.refresh_incentives(&mut progress);
            if let Some(dashboard) = &mut dashboard
                && let Ok(block) = self.chain.head()
            {
                dashboard.draw(&Snapshot {
                    dir: &self.layout.dir,
                    history: &progress.history,
                    names: &self.names,
                    exits: &progress.exits,
                    block,
                    window: self.clock.window_of(block),
                    blocks_per_window: self.clock.blocks_per_window(),
                    until: self.until,
                    elapsed: started.elapsed(),
                    stopping: progress.stops_handled > 0,
                    incentives: &progress.incentives,
                })?;
            }
            std::thread::sleep(TICK);
        }
        drop(dashboard);
        Ok((progress.history, progress.stops_handled > 0))
    }

    /// Forwards each new stop request to the nodes; kills them once the deadline passes.
    fn handle_stops(
        &self,
        requested: usize,
        progress: &mut Progress,
        fleet: &mut Fleet,
        live: bool,
    ) {
        if requested > progress.stops_handled {
            progress.stops_handled = requested;
            fleet.interrupt();
            if progress.deadline.is_none() {
                let window_ms = self.clock.blocks_per_window() * self.chain.block_time_ms();
                let grace =
                    Duration::from_millis(2 * window_ms + self.config.window.upload_grace_ms);
                progress.deadline = Some(Instant::now() + grace + Duration::from_secs(30));
                if !live {
                    eprintln!(
                        "stopping: each node finishes its window (Ctrl-C again to abandon it)"
                    );
                }
            }
        }
        if progress.deadline.is_some_and(|d| Instant::now() > d) {
            fleet.kill();
        }
    }

    fn refresh_incentives(&self, progress: &mut Progress) {
        if progress
            .last_chain_read
            .is_some_and(|t| t.elapsed() < Duration::from_secs(2))
        {
            return;
        }
        progress.last_chain_read = Some(Instant::now());
        if let Ok(metagraph) = self.chain.metagraph_now() {
            progress.incentives = metagraph
                .neurons
                .iter()
                .map(|n| (n.uid, n.incentive))
                .collect();
        }
    }

    fn announce(&self) {
        let seconds = self.clock.blocks_per_window() * self.chain.block_time_ms() / 1000;
        let until = self
            .until
            .map_or("until Ctrl-C".into(), |u| format!("until window {u}"));
        println!(
            "templar localnet in {}: {} nodes, {seconds}-second windows, {until}; node logs in {}",
            self.layout.dir.display(),
            self.names.len(),
            self.layout.dir.join("logs").display()
        );
    }
}

/// Records nodes that exited since the last tick (and, in plain mode, says which failed).
fn reap(fleet: &mut Fleet, exits: &mut BTreeMap<String, Option<i32>>, live: bool) {
    for member in fleet.poll() {
        let code = member.code();
        if !live && code != Some(0) {
            eprintln!(
                "{} exited with {code:?}; its log: {}",
                member.name,
                member.log.display()
            );
        }
        exits.insert(member.name.clone(), code);
    }
}

fn finish(
    watch: &Watch,
    history: History,
    fleet: &Fleet,
    first_window: u64,
    interrupted: bool,
    members: &[Member],
) -> Result<()> {
    let exits: BTreeMap<String, Option<i32>> = fleet
        .members
        .iter()
        .map(|m| (m.name.clone(), m.code()))
        .collect();
    report::append_run(
        &watch.layout.runs(),
        &RunRecord {
            started_ms: watch.started_ms,
            ended_ms: templar_node::node::now_ms(),
            first_window,
            until_window: watch.until,
            interrupted,
            exits,
        },
    )?;
    write_report(watch.layout, watch.config, watch.chain, history, members)?;
    let failed: Vec<String> = fleet
        .members
        .iter()
        .filter(|m| m.code() != Some(0))
        .map(|m| format!("{} (exit {:?}, log {})", m.name, m.code(), m.log.display()))
        .collect();
    if !failed.is_empty() {
        bail!("these nodes did not exit cleanly: {}", failed.join("; "));
    }
    Ok(())
}

/// Writes the report of everything the nodes reported so far and prints where it is.
fn write_report(
    layout: &Layout,
    config: &NetworkConfig,
    chain: &NetChain,
    mut history: History,
    members: &[Member],
) -> Result<()> {
    let nodes = node_entries(layout, chain, members)?;
    let runs = report::read_runs(&layout.runs())?;
    let report = report::build(&mut history, config, chain, nodes, runs)?;
    report::write(&report, &layout.dir)?;
    let bpb = history.bits_per_byte();
    if let (Some(first), Some(last)) = (bpb.first(), bpb.last()) {
        println!(
            "validation bits per byte: {:.3} (window {}) → {:.3} (window {})",
            first.1, first.0, last.1, last.0
        );
    }
    let shares = history.median_compute_share();
    if !shares.is_empty() {
        let listed: Vec<String> = shares
            .iter()
            .map(|(uid, share)| format!("uid {uid} {share:.2}"))
            .collect();
        println!(
            "compute share, median per miner (the time its trainer was busy): {}",
            listed.join(", ")
        );
    }
    println!(
        "report: {} (data in report.json)",
        layout.dir.join("report.html").display()
    );
    Ok(())
}

/// `--report-only`: the report from the folder's event files, without starting nodes.
fn report_only(layout: &Layout) -> Result<()> {
    let config = NetworkConfig::load(&layout.config())?;
    if !layout.chain().exists() {
        bail!(
            "{} ran on chopsticks, whose chain ended with its run: the report written then stands \
             and cannot be rebuilt",
            layout.dir.display()
        );
    }
    let chain = NetChain::Embedded(LocalChain::open(&layout.chain())?);
    let members = members_with_events(layout)?;
    let mut history = History::default();
    for member in &members {
        for line in EventFile::new(layout.events(&member.name())).read_new()? {
            history.apply(&line);
        }
    }
    write_report(layout, &config, &chain, history, &members)
}

/// The nodes that left an events file (`validator-v1.jsonl`, `miner-m2.jsonl`, …).
fn members_with_events(layout: &Layout) -> Result<Vec<Member>> {
    let dir = layout.dir.join("events");
    let entries = std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?;
    let mut members = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let role = match stem.split_once('-') {
            Some(("validator", hotkey)) => (Role::Validator, hotkey),
            Some(("miner", hotkey)) => (Role::Miner, hotkey),
            _ => continue,
        };
        members.push(Member {
            role: role.0,
            hotkey: role.1.to_string(),
            behavior: None,
        });
    }
    members.sort_by_key(|m| (m.role == Role::Miner, m.hotkey.clone()));
    Ok(members)
}

fn node_entries(layout: &Layout, chain: &NetChain, members: &[Member]) -> Result<Vec<NodeEntry>> {
    let metagraph = chain.metagraph_now()?;
    let holdings = chain.holdings()?;
    let wallet = Wallet::new(layout.wallets(), WALLET);
    let mut entries = Vec::new();
    for member in members {
        let hotkey = wallet.hotkey(&member.hotkey)?.account();
        // Its latest hold on a uid: a member replaced during the run is reported with the uid it
        // held, a member that never registered is left out.
        let Some(holding) = holdings.iter().rev().find(|h| h.hotkey == hotkey) else {
            continue;
        };
        // A replaced holder is read as of its last block: its stake (what it was paid) stays
        // with its hotkey.
        let last = match holding.replaced_at {
            Some(block) => Some(chain.metagraph_as_of(block.saturating_sub(1))?),
            None => None,
        };
        let neuron = last
            .as_ref()
            .unwrap_or(&metagraph)
            .neuron(holding.uid)
            .filter(|n| n.hotkey == hotkey);
        let incentive = neuron
            .filter(|_| holding.replaced_at.is_none())
            .map_or(0.0, |n| n.incentive);
        entries.push(NodeEntry {
            name: member.name(),
            role: member.role.name().into(),
            uid: holding.uid,
            hotkey: hotkey.to_string(),
            incentive,
            stake_tao: neuron.map_or(0.0, |n| n.stake as f64 / templar_chain::RAO_PER_TAO as f64),
            registered_at: holding.registered_at,
            replaced_at: holding.replaced_at,
        });
    }
    Ok(entries)
}
