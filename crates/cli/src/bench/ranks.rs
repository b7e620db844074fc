//! `bench train --ranks N`: the same steps on N Gloo ranks (processes of this binary, the
//! threads split among them), against the one-process run in the parent.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use templar_dist::{GroupOptions, Member, ProcessGroup, Store, rendezvous};
use templar_engine::{
    Batch, Device, FullyShardedTrainer, Llama, Placement, Preset, ShardedTrainer,
};

/// What one rank measured (printed by rank processes as one JSON line).
#[derive(Debug, Serialize, Deserialize)]
pub struct RankFigures {
    pub tokens_per_s: f64,
    pub losses: Vec<f64>,
    pub moment_values: i64,
    /// Bytes of weights the rank keeps between steps.
    pub param_bytes: i64,
    /// Bytes of f32 weights it held whole at once, at most, while training (`--shard full`).
    pub peak_gathered_bytes: i64,
    /// The rank process's peak resident memory.
    pub peak_rss_mb: f64,
}

/// Who a rank process is and how it trains.
pub struct Place {
    pub rank: usize,
    pub world: usize,
    pub shard: Shard,
    pub offload: bool,
    /// The parent's device: a CUDA rank takes the GPU of its own index.
    pub device: Device,
}

pub use crate::ranks::Shard;

#[derive(Debug, Serialize)]
pub struct RanksReport {
    pub ranks: usize,
    pub shard: Shard,
    pub threads_per_rank: i32,
    pub tokens_per_s: f64,
    /// Tokens/s on the ranks over tokens/s of one process with the same threads in all.
    pub scaling_efficiency: f64,
    /// The largest difference of a timed step's loss from the one-process run's.
    pub max_loss_diff: f64,
    /// AdamW values each rank holds per moment.
    pub moment_values: Vec<i64>,
    /// Bytes of weights each rank keeps between steps, and the whole model's f32 bytes.
    pub param_bytes_per_rank: Vec<i64>,
    pub param_bytes_total: i64,
    /// The most any rank keeps over the whole: about 1 / ranks fully sharded, 1 otherwise.
    pub param_bytes_ratio: f64,
    /// Bytes of f32 weights a rank held whole at once, at most (the units gathered together).
    pub peak_gathered_bytes: i64,
    /// Each rank process's peak resident memory.
    pub peak_rss_mb: Vec<f64>,
}

impl RanksReport {
    pub fn compare(
        (ranks, shard): (Vec<RankFigures>, Shard),
        threads_per_rank: i32,
        (one_process, losses): (f64, &[f64]),
        param_bytes_total: i64,
    ) -> RanksReport {
        let param_bytes_per_rank: Vec<i64> = ranks.iter().map(|r| r.param_bytes).collect();
        let most = param_bytes_per_rank.iter().copied().max().unwrap_or(0);
        let max_loss_diff = ranks
            .iter()
            .flat_map(|r| r.losses.iter().zip(losses).map(|(a, b)| (a - b).abs()))
            .fold(0.0, f64::max);
        // Every rank waits for the slowest at each step: rank 0's rate is the group's.
        let tokens_per_s = ranks.first().map_or(0.0, |r| r.tokens_per_s);
        RanksReport {
            ranks: ranks.len(),
            shard,
            threads_per_rank,
            tokens_per_s,
            scaling_efficiency: tokens_per_s / one_process,
            max_loss_diff,
            moment_values: ranks.iter().map(|r| r.moment_values).collect(),
            param_bytes_ratio: most as f64 / param_bytes_total.max(1) as f64,
            param_bytes_per_rank,
            param_bytes_total,
            peak_gathered_bytes: ranks
                .iter()
                .map(|r| r.peak_gathered_bytes)
                .max()
                .unwrap_or(0),
            peak_rss_mb: ranks.iter().map(|r| r.peak_rss_mb).collect(),
        }
    }
}

/// Starts `world` rank processes of `bench train` meeting in a fresh folder, and collects what
/// they measured. Their output goes to files in that folder, so that a rank that writes a lot
/// never blocks on a full pipe while the parent waits for another; if one fails, the others are
/// stopped.
pub fn run_ranks(flags: &[String], world: usize, per_rank: i32) -> Result<Vec<RankFigures>> {
    let dir = tempfile::tempdir().context("creating the rendezvous folder")?;
    let exe = std::env::current_exe().context("cannot find the templar binary")?;
    let mut children = Vec::with_capacity(world);
    for rank in 0..world {
        let log = |stream: &str| -> Result<std::fs::File> {
            let path = dir.path().join(format!("rank-{rank}.{stream}"));
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))
        };
        let child = Command::new(&exe)
            .args(["bench", "train", "--json"])
            .args(flags)
            .args(["--ranks", &world.to_string(), "--rank", &rank.to_string()])
            .arg("--store")
            .arg(dir.path())
            .args(["--threads", &per_rank.to_string()])
            .env("OMP_NUM_THREADS", per_rank.to_string())
            .stdout(Stdio::from(log("out")?))
            .stderr(Stdio::from(log("err")?))
            .spawn()
            .with_context(|| format!("starting rank {rank}"));
        match child {
            Ok(child) => children.push(child),
            Err(error) => {
                stop(&mut children);
                return Err(error);
            }
        }
    }
    let mut figures = Vec::with_capacity(world);
    for rank in 0..world {
        let status = children[rank].wait()?;
        let read = |stream: &str| {
            std::fs::read_to_string(dir.path().join(format!("rank-{rank}.{stream}")))
                .unwrap_or_default()
        };
        if !status.success() {
            stop(&mut children);
            bail!("rank {rank} failed ({status}): {}", read("err").trim());
        }
        let stdout = read("out");
        let line = stdout.lines().last().unwrap_or_default();
        figures.push(
            serde_json::from_str(line)
                .with_context(|| format!("reading rank {rank}'s figures {line:?}"))?,
        );
    }
    Ok(figures)
}

/// Ends and reaps the rank processes still running.
fn stop(children: &mut [std::process::Child]) {
    for child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// One rank: joins the group, trains the warm-up and the timed steps on its share of each batch,
/// and prints its figures.
pub fn run_rank(
    preset: &Preset,
    batches: &[Batch],
    warmup: u64,
    place: Place,
    dir: &Path,
) -> Result<()> {
    let Place {
        rank,
        world,
        shard,
        offload,
        device,
    } = place;
    let device = match device {
        Device::Cuda(_) => Device::Cuda(rank),
        other => other,
    };
    let timeout = Duration::from_secs(120);
    let store = Store::file(&dir.join("store"), timeout)?;
    let fingerprint = format!("{} {}", env!("CARGO_PKG_VERSION"), toml::to_string(preset)?);
    rendezvous(&store, &Member::new(rank, world, fingerprint), timeout)?;
    let options = GroupOptions {
        timeout,
        // One Gloo worker thread: the ranks already share the cores with their training threads.
        threads: 1,
    };
    let group = ProcessGroup::on_device(&store, rank, world, device, &options)?;
    let (warm, timed) = batches.split_at(warmup as usize);
    let train = preset.train.clone();
    let figures = match shard {
        Shard::Optimizer => {
            let model = Llama::new(&preset.model, 0, device)?;
            let mut trainer = ShardedTrainer::new(model, train, group)?;
            let (tokens_per_s, losses) = train_timed(warm, timed, |b| trainer.train_step(b))?;
            RankFigures {
                tokens_per_s,
                losses,
                moment_values: trainer.moment_values(),
                param_bytes: 4 * preset.model.parameter_count() as i64,
                peak_gathered_bytes: 0,
                peak_rss_mb: super::train::peak_rss_mb(),
            }
        }
        Shard::Full => {
            let placement = Placement {
                compute: device,
                offload,
            };
            let mut trainer = FullyShardedTrainer::new(&preset.model, 0, train, group, placement)?;
            let (tokens_per_s, losses) = train_timed(warm, timed, |b| trainer.train_step(b))?;
            RankFigures {
                tokens_per_s,
                losses,
                moment_values: trainer.moment_values(),
                param_bytes: trainer.param_bytes(),
                peak_gathered_bytes: trainer.peak_gathered_bytes(),
                peak_rss_mb: super::train::peak_rss_mb(),
            }
        }
    };
    println!("{}", serde_json::to_string(&figures)?);
    Ok(())
}

/// Trains the warm-up steps, then times the others: tokens per second and their losses.
fn train_timed(
    warm: &[Batch],
    timed: &[Batch],
    mut step: impl FnMut(&Batch) -> Result<templar_engine::StepStats, templar_engine::EngineError>,
) -> Result<(f64, Vec<f64>)> {
    for b in warm {
        step(b)?;
    }
    super::train::time(timed, |b| Ok(step(b)?.loss))
}
