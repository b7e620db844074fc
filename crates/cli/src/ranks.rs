//! `templar miner --ranks N`: one node over N rank processes of this machine. The command the
//! operator runs is the launcher: it starts N copies of itself, one per rank (on CUDA, rank r on
//! GPU r), meeting in a rendezvous folder, and stops them all when one fails. Rank 0 is the node
//! (chain, storage, data); the others follow its commands (`templar_node::ranks::follow`).

use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use templar_dist::{GroupOptions, Member, ProcessGroup, Store, rendezvous};
use templar_engine::memory::Role;
use templar_engine::{Device, DeviceChoice};
use templar_node::NetworkConfig;

/// What the ranks shard: the optimizer's state and the gradients (ZeRO-2; every rank holds the
/// whole weights), or the weights too (ZeRO-3 / FSDP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Shard {
    Optimizer,
    Full,
}

/// Starts the rank processes and waits for them. Each rank runs in a process group of its own:
/// a Ctrl-C (or SIGTERM) reaches the launcher alone, which passes it to rank 0 as a Ctrl-C;
/// rank 0 finishes its window and then stops the others. A third one stops every rank at once.
pub fn launch(world: usize) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("templar-ranks-")
        .tempdir()
        .context("creating the ranks' rendezvous folder")?;
    let exe = std::env::current_exe().context("cannot find the templar binary")?;
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let mut children: Vec<Child> = Vec::with_capacity(world);
    for rank in 0..world {
        let mut command = Command::new(&exe);
        command
            .args(&args)
            .args(["--rank", &rank.to_string()])
            .arg("--rank-store")
            .arg(dir.path().join("store"))
            // NCCL surfaces a lost peer as an error only with these (see docs/dist.md).
            .env("TORCH_NCCL_BLOCKING_WAIT", "1")
            .env("TORCH_NCCL_ASYNC_ERROR_HANDLING", "2")
            .env("TORCH_NCCL_ENABLE_MONITORING", "0");
        // Each rank in a process group of its own, ended with the launcher: a Ctrl-C reaches
        // the launcher alone, which passes it to rank 0.
        templar_localnet::fleet::detach(&mut command);
        match command.spawn() {
            Ok(child) => children.push(child),
            Err(error) => {
                stop(&mut children);
                return Err(error).context(format!("starting rank {rank}"));
            }
        }
    }
    // The launcher outlives a Ctrl-C or a SIGTERM, to pass it on and report how the ranks ended.
    // SAFETY: the handler only adds to an atomic, which is async-signal-safe.
    unsafe {
        let handler = on_interrupt as *const () as libc::sighandler_t;
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
    let waited = wait_all(&mut children);
    if waited.is_err() {
        stop(&mut children);
    }
    waited
}

static INTERRUPTS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTS.fetch_add(1, Ordering::SeqCst);
}

/// Rank 0 finishes its window and stops the others (a second Ctrl-C abandons the window).
fn interrupt(leader: &Child) {
    if let Ok(pid) = i32::try_from(leader.id()) {
        // SAFETY: kill(2) only sends a signal; the pid is our own unreaped child.
        unsafe { libc::kill(pid, libc::SIGINT) };
    }
}

/// Waits until every rank has ended; the first failure stops the rest.
fn wait_all(children: &mut [Child]) -> Result<()> {
    let mut ended: Vec<Option<ExitStatus>> = vec![None; children.len()];
    let mut leader_done: Option<Instant> = None;
    let mut passed_on = 0;
    loop {
        let interrupts = INTERRUPTS.load(Ordering::SeqCst);
        if interrupts >= 3 {
            stop(children);
            bail!("stopped every rank at once (a third interrupt)");
        }
        if interrupts > passed_on && ended[0].is_none() {
            tracing::warn!("interrupted: rank 0 finishes the current window, then the ranks stop");
            interrupt(&children[0]);
            passed_on = interrupts;
        }
        for (rank, child) in children.iter_mut().enumerate() {
            if ended[rank].is_none() {
                ended[rank] = child.try_wait()?;
            }
        }
        if let Some((rank, status)) = ended
            .iter()
            .enumerate()
            .find_map(|(rank, s)| s.filter(|s| !s.success()).map(|s| (rank, s)))
        {
            stop(children);
            return Err(RankStopped { rank, status }.into());
        }
        if ended.iter().all(Option::is_some) {
            return Ok(());
        }
        // Rank 0 tells the others to stop as it ends; give them a moment.
        if ended[0].is_some() {
            let since = *leader_done.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(60) {
                stop(children);
                bail!("rank 0 ended but other ranks did not stop within a minute");
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A rank ended with an error, which ended the node; the launcher exits as that rank did.
#[derive(Debug)]
pub struct RankStopped {
    rank: usize,
    status: ExitStatus,
}

impl RankStopped {
    /// The rank's own exit code; a rank killed by a signal is a transient failure.
    pub fn exit_code(&self) -> i32 {
        self.status.code().unwrap_or(crate::EXIT_TRANSIENT)
    }
}

impl std::fmt::Display for RankStopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rank {} of the node stopped ({}), so the node stopped; its error is above. Start \
             it again: it resumes from its last saved state",
            self.rank, self.status
        )
    }
}

impl std::error::Error for RankStopped {}

fn stop(children: &mut [Child]) {
    for child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// This process's rank of the node: the device it trains on (rank r on GPU r under CUDA) and
/// its process group, once every rank has arrived and matches.
pub fn join(
    config: &NetworkConfig,
    device: Device,
    rank: usize,
    world: usize,
    store: &Path,
    timeout: Duration,
) -> Result<(Device, ProcessGroup)> {
    let store = Store::file(store, timeout)?;
    let network = config.network()?.id();
    let fingerprint = format!(
        "templar {} network {}",
        crate::VERSION,
        network
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    rendezvous(&store, &Member::new(rank, world, fingerprint), timeout)?;
    let options = GroupOptions {
        timeout,
        threads: 2,
    };
    let device = match device {
        // One rank keeps the device it was given; over several, rank r trains on GPU r.
        Device::Cuda(_) if world > 1 => DeviceChoice::Cuda(rank).resolve().with_context(|| {
            format!("rank {rank} of {world} trains on GPU {rank}: one GPU per rank")
        })?,
        other => other,
    };
    let group = ProcessGroup::on_device(&store, rank, world, device, &options)?;
    Ok((device, group))
}

/// A rank other than 0: its replica (a miner's or a validator's, as `role`; a miner's fully
/// sharded when `sharding` says so) follows rank 0's until rank 0 stops.
pub fn follow(
    config: &NetworkConfig,
    (device, sharding): (Device, Sharding),
    role: Role,
    (rank, world): (usize, usize),
    store: &Path,
    timeout: Duration,
) -> Result<()> {
    let (device, group) = join(config, device, rank, world, store, timeout)?;
    if sharding.shard == Shard::Full {
        let placement = sharding.placement(device);
        let mut replica = templar_node::ranks::FullyShardedReplica::new(config, placement, group)?;
        let mut error_feedback = replica.fresh_error_feedback();
        templar_node::ranks::follow_on_shards(&mut replica, config, &mut error_feedback)?;
        tracing::info!(rank, "rank 0 stopped; this rank stops too");
        return Ok(());
    }
    let mut replica = templar_node::replica::Replica::new_ranked(config, device, role, group)?;
    let numels: Vec<usize> = replica.base().iter().map(Vec::len).collect();
    let mut error_feedback = replica.owner().error_feedback(numels);
    templar_node::ranks::follow(&mut replica, config, &mut error_feedback)?;
    tracing::info!(rank, "rank 0 stopped; this rank stops too");
    Ok(())
}

/// How a node's ranks share the model: what they shard, and whether fully sharded spans live
/// in host memory.
#[derive(Debug, Clone, Copy)]
pub struct Sharding {
    pub shard: Shard,
    pub offload: bool,
}

impl Sharding {
    /// Where a fully sharded rank computing on `device` keeps its spans.
    pub fn placement(self, device: Device) -> templar_engine::Placement {
        if self.offload && device == Device::Cpu {
            tracing::warn!("--offload changes nothing on the CPU: the spans are in host memory");
        }
        templar_engine::Placement {
            compute: device,
            offload: self.offload,
        }
    }
}
