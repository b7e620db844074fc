//! `templar bench train`: inner-loop training throughput of a preset, optionally side by side with the
//! identical model in eager PyTorch (`bench/reference_train.py`) on the same libtorch.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args as ClapArgs;
use serde::{Deserialize, Serialize};
use templar_engine::{Batch, DeviceChoice, Llama, Preset, Trainer, describe};

use super::synthetic::splitmix;

#[derive(ClapArgs)]
pub struct Args {
    /// Built-in preset (tiny, 150m, 1b, 8b, 70b) or a preset TOML file.
    #[arg(long, default_value = "tiny")]
    preset: String,
    /// Timed optimizer steps.
    #[arg(long, default_value_t = 20)]
    steps: u64,
    /// Untimed steps first (allocator and kernel warm-up).
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// Intra-op threads (default: all cores).
    #[arg(long)]
    threads: Option<i32>,
    #[arg(long, default_value = "auto")]
    device: String,
    /// Also run bench/reference_train.py (PyTorch) on the same preset and report the ratio.
    #[arg(long)]
    reference: bool,
    /// Also train on this many ranks (processes: Gloo on the CPU, the threads split among them;
    /// NCCL on CUDA, one GPU each) and report the scaling efficiency and the largest loss
    /// difference against the one-process run.
    #[arg(long, default_value_t = 1)]
    ranks: usize,
    /// What the ranks shard: the optimizer's state and gradients, or the weights too (`full`:
    /// each layer gathered just before use). Reports each rank's share of the weights.
    #[arg(long, value_enum, default_value = "optimizer")]
    shard: super::ranks::Shard,
    /// With `--shard full`: keep the weights' and moments' spans in (pinned) host memory, and
    /// step there.
    #[arg(long)]
    offload: bool,
    /// One rank of a `--ranks` run: `RANK` and the rendezvous folder (set by the parent).
    #[arg(long, hide = true, requires = "store")]
    rank: Option<usize>,
    #[arg(long, hide = true)]
    store: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct Figures {
    implementation: String,
    threads: i32,
    parameter_count: u64,
    tokens_per_s: f64,
    peak_rss_mb: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    peak_device_mb: Option<f64>,
}

#[derive(Serialize)]
struct Report {
    preset: String,
    device: String,
    batch_size: usize,
    seq_len: usize,
    steps: u64,
    parameter_count: u64,
    tokens_per_s: f64,
    peak_rss_mb: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pytorch: Option<Figures>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ratio_to_pytorch: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ranks: Option<super::ranks::RanksReport>,
}

pub fn run(args: Args) -> Result<()> {
    let preset = Preset::load(&args.preset)?;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as i32));
    templar_engine::set_threads(threads);
    let device = args.device.parse::<DeviceChoice>()?.resolve()?;
    if args.offload && args.shard != super::ranks::Shard::Full {
        bail!("--offload moves the spans of fully sharded parameters: add --shard full");
    }
    let batches = batches(&preset, args.warmup + args.steps)?;
    if let (Some(rank), Some(store)) = (args.rank, &args.store) {
        let place = super::ranks::Place {
            rank,
            world: args.ranks,
            shard: args.shard,
            offload: args.offload,
            device,
        };
        return super::ranks::run_rank(&preset, &batches, args.warmup, place, store);
    }
    let (model, train) = (&preset.model, &preset.train);
    let mut trainer = Trainer::new(Llama::new(model, 0, device)?, train.clone())?;
    let (warmup, timed) = batches.split_at(args.warmup as usize);
    for b in warmup {
        trainer.train_step(b)?;
    }
    let (tokens_per_s, losses) = time_steps(&mut trainer, timed)?;
    let mut report = Report {
        preset: args.preset.clone(),
        device: describe(device),
        batch_size: train.batch_size,
        seq_len: train.seq_len,
        steps: args.steps,
        parameter_count: model.parameter_count(),
        tokens_per_s,
        peak_rss_mb: peak_rss_mb(),
        pytorch: None,
        ratio_to_pytorch: None,
        ranks: None,
    };
    if args.reference {
        let figures = run_reference(&preset, &args, threads, device)?;
        report.ratio_to_pytorch = Some(tokens_per_s / figures.tokens_per_s);
        report.pytorch = Some(figures);
    }
    // Fully sharded, one rank is worth running too: its gathers and steps are the path.
    if args.ranks > 1 || args.shard == super::ranks::Shard::Full {
        let per_rank = (threads / args.ranks as i32).max(1);
        let ranked = super::ranks::run_ranks(&args_for_ranks(&args), args.ranks, per_rank)?;
        // The one process timed again after the ranks (the same steps' cost: the shapes are
        // the same), so that a machine that slows or speeds up meanwhile favours neither side.
        let (after, _) = time_steps(&mut trainer, timed)?;
        report.ranks = Some(super::ranks::RanksReport::compare(
            (ranked, args.shard),
            per_rank,
            ((tokens_per_s + after) / 2.0, &losses),
            4 * model.parameter_count() as i64,
        ));
    }
    print(&report, args.json)
}

/// Trains `timed`; returns tokens per second and each step's loss.
fn time_steps(trainer: &mut Trainer, timed: &[Batch]) -> Result<(f64, Vec<f64>)> {
    time(timed, |b| Ok(trainer.train_step(b)?.loss))
}

/// Runs `step` (which returns the loss) on each of `timed`; tokens per second and the losses.
pub(super) fn time(
    timed: &[Batch],
    mut step: impl FnMut(&Batch) -> Result<f64>,
) -> Result<(f64, Vec<f64>)> {
    let start = Instant::now();
    let mut losses = Vec::with_capacity(timed.len());
    for b in timed {
        losses.push(step(b)?);
    }
    let tokens: usize = timed
        .iter()
        .map(|b| b.rows() * b.input_ids.size()[1] as usize)
        .sum();
    Ok((tokens as f64 / start.elapsed().as_secs_f64(), losses))
}

/// The flags every rank process is started with.
fn args_for_ranks(args: &Args) -> Vec<String> {
    vec![
        "--preset".into(),
        args.preset.clone(),
        "--steps".into(),
        args.steps.to_string(),
        "--warmup".into(),
        args.warmup.to_string(),
        "--device".into(),
        args.device.clone(),
        "--shard".into(),
        match args.shard {
            super::ranks::Shard::Optimizer => "optimizer".into(),
            super::ranks::Shard::Full => "full".into(),
        },
    ]
    .into_iter()
    .chain(args.offload.then(|| "--offload".to_string()))
    .collect()
}

/// Deterministic random token batches of the preset's shape: the same for every process.
pub(super) fn batches(preset: &Preset, count: u64) -> Result<Vec<Batch>> {
    let (model, train) = (&preset.model, &preset.train);
    let batch_tokens = train.batch_size * train.seq_len;
    let mut state = 0x5eed_u64;
    (0..count)
        .map(|_| {
            let tokens: Vec<i64> = (0..batch_tokens)
                .map(|_| (splitmix(&mut state) % model.vocab_size as u64) as i64)
                .collect();
            Ok(Batch::from_tokens(
                &tokens,
                train.batch_size,
                train.seq_len,
                model.vocab_size,
            )?)
        })
        .collect()
}

fn print(report: &Report, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
        return Ok(());
    }
    println!(
        "preset {} on {}: {} parameters, batch {} x seq {}, {} timed steps",
        report.preset,
        report.device,
        report.parameter_count,
        report.batch_size,
        report.seq_len,
        report.steps
    );
    println!(
        "templar  {:>10.0} tokens/s   peak RSS {:>7.0} MB",
        report.tokens_per_s, report.peak_rss_mb
    );
    if let Some(ranks) = &report.ranks {
        println!(
            "{} ranks {:>10.0} tokens/s   scaling efficiency {:.3}   largest loss difference {:.2e}",
            ranks.ranks, ranks.tokens_per_s, ranks.scaling_efficiency, ranks.max_loss_diff
        );
        println!(
            "         sharding {:?}: param_bytes_per_rank / param_bytes_total {:.3}   \
             largest gathered at once {:.1} MB   peak RSS per rank {} MB",
            ranks.shard,
            ranks.param_bytes_ratio,
            ranks.peak_gathered_bytes as f64 / 1e6,
            ranks
                .peak_rss_mb
                .iter()
                .map(|mb| format!("{mb:.0}"))
                .collect::<Vec<_>>()
                .join(" / ")
        );
    }
    if let (Some(p), Some(ratio)) = (&report.pytorch, report.ratio_to_pytorch) {
        println!(
            "pytorch  {:>10.0} tokens/s   peak RSS {:>7.0} MB",
            p.tokens_per_s, p.peak_rss_mb
        );
        println!("ratio    {ratio:.3}x PyTorch's tokens/s");
    }
    Ok(())
}

fn run_reference(
    preset: &Preset,
    args: &Args,
    threads: i32,
    device: templar_engine::Device,
) -> Result<Figures> {
    let device = match device {
        templar_engine::Device::Cuda(index) => format!("cuda:{index}"),
        _ => "cpu".to_string(),
    };
    let script = reference_script()?;
    let preset_file =
        std::env::temp_dir().join(format!("templar-bench-preset-{}.toml", std::process::id()));
    std::fs::write(&preset_file, toml::to_string(preset)?)?;
    let output = Command::new("python3")
        .arg(&script)
        .args(["--preset-file", &preset_file.to_string_lossy(), "--json"])
        .args([
            "--steps",
            &args.steps.to_string(),
            "--warmup",
            &args.warmup.to_string(),
        ])
        .args(["--threads", &threads.to_string()])
        .args(["--device", &device])
        .env("PYTHONPATH", torch_site_packages()?)
        .env("PYTHONWARNINGS", "ignore")
        .output()
        .context("running python3 for the PyTorch reference")?;
    let _ = std::fs::remove_file(&preset_file);
    if !output.status.success() {
        bail!(
            "{} failed:\n{}",
            script.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("reading the reference's output {line:?}"))
}

/// bench/reference_train.py, looked up from the working directory, then from the source tree.
fn reference_script() -> Result<PathBuf> {
    let candidates = [
        PathBuf::from("bench/reference_train.py"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/reference_train.py"),
    ];
    candidates
        .into_iter()
        .find(|p| p.exists())
        .context("bench/reference_train.py not found; run from the templar checkout")
}

/// The folder holding the `torch` package templar links (the wheel's site-packages).
fn torch_site_packages() -> Result<PathBuf> {
    let libtorch = std::env::var_os("LIBTORCH")
        .map(PathBuf::from)
        .or_else(|| option_env!("TEMPLAR_LIBTORCH_DIR").map(PathBuf::from))
        .context("cannot tell where torch is installed; run scripts/setup or set LIBTORCH")?;
    let libtorch = libtorch.canonicalize().unwrap_or(libtorch);
    libtorch
        .parent()
        .map(Path::to_path_buf)
        .context("LIBTORCH has no parent folder")
}

/// High-water mark of this process's resident memory.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib * 1024.0 / 1e6)
}
