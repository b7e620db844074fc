//! `bench train --ranks N`: the same steps on N Gloo ranks (processes of this binary, the
//! threads split among them), against the one-process run in the parent.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use templar_dist::{GroupOptions, Member, ProcessGroup, Store, rendezvous};
use templar_engine::{Batch, Device, Llama, Preset, ShardedTrainer};

/// What one rank measured (printed by rank processes as one JSON line).
#[derive(Debug, Serialize, Deserialize)]
pub struct RankFigures {
    pub tokens_per_s: f64,
    pub losses: Vec<f64>,
    pub moment_values: i64,
}

#[derive(Debug, Serialize)]
pub struct RanksReport {
    pub ranks: usize,
    pub threads_per_rank: i32,
    pub tokens_per_s: f64,
    /// Tokens/s on the ranks over tokens/s of one process with the same threads in all.
    pub scaling_efficiency: f64,
    /// The largest difference of a timed step's loss from the one-process run's.
    pub max_loss_diff: f64,
    /// AdamW values each rank holds per moment.
    pub moment_values: Vec<i64>,
}

impl RanksReport {
    pub fn compare(
        ranks: Vec<RankFigures>,
        threads_per_rank: i32,
        one_process: f64,
        losses: &[f64],
    ) -> RanksReport {
        let max_loss_diff = ranks
            .iter()
            .flat_map(|r| r.losses.iter().zip(losses).map(|(a, b)| (a - b).abs()))
            .fold(0.0, f64::max);
        // Every rank waits for the slowest at each step: rank 0's rate is the group's.
        let tokens_per_s = ranks.first().map_or(0.0, |r| r.tokens_per_s);
        RanksReport {
            ranks: ranks.len(),
            threads_per_rank,
            tokens_per_s,
            scaling_efficiency: tokens_per_s / one_process,
            max_loss_diff,
            moment_values: ranks.iter().map(|r| r.moment_values).collect(),
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
    rank: usize,
    world: usize,
    dir: &Path,
) -> Result<()> {
    let timeout = Duration::from_secs(120);
    let store = Store::file(&dir.join("store"), timeout)?;
    let fingerprint = format!("{} {}", env!("CARGO_PKG_VERSION"), toml::to_string(preset)?);
    rendezvous(&store, &Member::new(rank, world, fingerprint), timeout)?;
    let options = GroupOptions {
        timeout,
        // One Gloo worker thread: the ranks already share the cores with their training threads.
        threads: 1,
    };
    let group = ProcessGroup::gloo(&store, rank, world, &options)?;
    let model = Llama::new(&preset.model, 0, Device::Cpu)?;
    let mut trainer = ShardedTrainer::new(model, preset.train.clone(), group)?;
    let (warm, timed) = batches.split_at(warmup as usize);
    for b in warm {
        trainer.train_step(b)?;
    }
    let (tokens_per_s, losses) = super::train::time(timed, |b| Ok(trainer.train_step(b)?.loss))?;
    let figures = RankFigures {
        tokens_per_s,
        losses,
        moment_values: trainer.moment_values(),
    };
    println!("{}", serde_json::to_string(&figures)?);
    Ok(())
}
