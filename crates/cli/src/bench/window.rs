//! `templar bench window`: one real miner window and one validator window, each in a process of
//! its own so that each role's peak resident memory is its own, with seconds per phase and the
//! bytes copied between device and host. The window runs the node's own code — the replica, the
//! codec, the data and file storage — without a chain or a clock: it measures cost, not timing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args as ClapArgs;
use serde::{Deserialize, Serialize};
use templar_codec::quant::Rule;
use templar_codec::{Payload, compress_tensor, decode, encode};
use templar_data::{PrepareOptions, Split, TokenizerSpec, prepare};
use templar_engine::memory::Role;
use templar_engine::{DEFAULT_SHARD_BYTES, DeviceChoice, Preset};
use templar_node::config::NetworkConfig;
use templar_node::data::Data;
use templar_node::replica::{Replica, memory_plan};
use templar_node::state::write_f32s;
use templar_storage::{Store, StoreConfig};

use super::synthetic::{Distribution, fill};
use super::train::peak_rss_mb;

#[derive(ClapArgs, Clone)]
pub struct Args {
    /// Built-in preset (tiny, 150m, 1b, 8b, 70b) or a preset TOML file.
    #[arg(long, default_value = "150m")]
    preset: String,
    /// Inner optimizer steps of the miner's window.
    #[arg(long, default_value_t = 2)]
    inner_steps: u32,
    /// Samples per step (overrides the preset's batch and micro-batch).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Tokens per sample (overrides the preset's sequence length).
    #[arg(long, default_value_t = 512)]
    seq_len: usize,
    /// Payloads the validator judges (and the miner aggregates).
    #[arg(long, default_value_t = 4)]
    payloads: usize,
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Run one role in this process (what the benchmark starts itself with).
    #[arg(long, hide = true)]
    role: Option<String>,
}

/// What one role's window measured.
#[derive(Debug, Serialize, Deserialize)]
struct RoleFigures {
    role: String,
    peak_rss_mb: f64,
    /// Resident memory before the window allocated anything: libtorch's libraries and the
    /// runtime, the same for every model.
    baseline_rss_mb: f64,
    /// Weights, gradients and optimizer state: AdamW moments and error feedback for a miner.
    training_state_mb: f64,
    model_f32_mb: f64,
    /// The memory planner's host figure for this window.
    planned_host_mb: f64,
    /// Seconds per phase, in order.
    seconds: Vec<(String, f64)>,
    bytes_device_to_host: u64,
    bytes_host_to_device: u64,
    payload_bytes: u64,
}

#[derive(Serialize)]
struct Report {
    preset: String,
    parameter_count: u64,
    inner_steps: u32,
    batch: usize,
    seq_len: usize,
    miner: RoleFigures,
    validator: RoleFigures,
    /// Targets judged on `peak_rss_mb − baseline_rss_mb`: what the window itself costs.
    miner_target_met: bool,
    validator_target_met: bool,
    /// (outer step + persist) / train: target < 0.10.
    outer_and_persist_share: f64,
}

pub fn run(args: Args) -> Result<()> {
    match args.role.as_deref() {
        Some("miner") => return print_json(&run_role(&args, Role::Miner)?),
        Some("validator") => return print_json(&run_role(&args, Role::Validator)?),
        Some(other) => bail!("unknown role {other:?}: miner or validator"),
        None => {}
    }
    let preset = Preset::load(&args.preset)?;
    let miner = child(&args, "miner")?;
    let validator = child(&args, "validator")?;
    let phase = |f: &RoleFigures, name: &str| {
        f.seconds
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0.0, |(_, s)| *s)
    };
    let report = Report {
        preset: args.preset.clone(),
        parameter_count: preset.model.parameter_count(),
        inner_steps: args.inner_steps,
        batch: args.batch,
        seq_len: args.seq_len,
        miner_target_met: miner.peak_rss_mb - miner.baseline_rss_mb
            <= miner.training_state_mb + 1.3 * miner.model_f32_mb,
        validator_target_met: validator.peak_rss_mb - validator.baseline_rss_mb
            <= 2.3 * validator.model_f32_mb,
        outer_and_persist_share: (phase(&miner, "outer_step") + phase(&miner, "persist"))
            / phase(&miner, "train").max(1e-9),
        miner,
        validator,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

fn print_json(figures: &RoleFigures) -> Result<()> {
    println!("{}", serde_json::to_string(figures)?);
    Ok(())
}

fn child(args: &Args, role: &str) -> Result<RoleFigures> {
    let exe = std::env::current_exe().context("cannot find the templar binary")?;
    let output = Command::new(exe)
        .args(["bench", "window", "--role", role, "--preset", &args.preset])
        .args(["--inner-steps", &args.inner_steps.to_string()])
        .args(["--batch", &args.batch.to_string()])
        .args(["--seq-len", &args.seq_len.to_string()])
        .args(["--payloads", &args.payloads.to_string()])
        .args(["--device", &args.device])
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("starting the {role} window"))?;
    if !output.status.success() {
        bail!("the {role} window failed ({})", output.status);
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("the {role} window printed {text:?}"))
}

fn print_report(report: &Report) {
    println!(
        "templar bench window: preset {} ({} parameters), {} inner steps of {} × {} tokens",
        report.preset, report.parameter_count, report.inner_steps, report.batch, report.seq_len
    );
    for f in [&report.miner, &report.validator] {
        println!(
            "  {:<9} peak RSS {:>8.0} MB, {:.0} MB of it before the window  (training state {:.0} MB, model f32 {:.0} MB, planned host {:.0} MB)",
            f.role,
            f.peak_rss_mb,
            f.baseline_rss_mb,
            f.training_state_mb,
            f.model_f32_mb,
            f.planned_host_mb
        );
        let phases: Vec<String> = f
            .seconds
            .iter()
            .map(|(name, s)| format!("{name} {s:.2}s"))
            .collect();
        println!("            {}", phases.join(", "));
        println!(
            "            device→host {:.0} MB, host→device {:.0} MB, payload {:.2} MB",
            f.bytes_device_to_host as f64 / 1e6,
            f.bytes_host_to_device as f64 / 1e6,
            f.payload_bytes as f64 / 1e6
        );
    }
    println!(
        "  beyond the baseline: miner ≤ training state + 1.3 × model: {}; validator ≤ 2.3 × model: {}; \
         (outer step + persist) / train = {:.3}",
        report.miner_target_met, report.validator_target_met, report.outer_and_persist_share
    );
}

/// The benchmark's network: the preset at the requested batch and sequence length.
fn network(args: &Args, manifest_hash: &str) -> Result<NetworkConfig> {
    let mut preset = Preset::load(&args.preset)?;
    preset.train.seq_len = args.seq_len;
    preset.train.batch_size = args.batch;
    preset.train.micro_batch_size = args.batch;
    let mut config = NetworkConfig::defaults("bench-window", preset, manifest_hash);
    config.training.inner_steps = args.inner_steps;
    config.gauntlet.eval_samples = args.batch;
    Ok(config)
}

/// The demo corpus prepared with the preset's tokenizer (kept between runs).
fn data(args: &Args) -> Result<(PathBuf, String)> {
    let preset = Preset::load(&args.preset)?;
    let cache = std::env::var_os("TEMPLAR_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/templar")))
        .context("neither TEMPLAR_CACHE nor HOME is set")?;
    let corpus = cache.join("corpus/text");
    if !corpus.is_dir() {
        bail!("{} is missing: run scripts/setup", corpus.display());
    }
    let tokenizer: TokenizerSpec = preset.train.tokenizer.parse()?;
    let out = std::env::temp_dir().join(format!(
        "templar-bench-window-{}-{}",
        preset.train.tokenizer, args.seq_len
    ));
    let mut options = PrepareOptions::new(corpus, out.clone(), tokenizer, args.seq_len);
    options.validation_fraction = 0.02;
    prepare(&options)?;
    let manifest = templar_data::Manifest::read(&out)?;
    Ok((out, manifest.content_hash))
}

struct Phases(Vec<(String, f64)>, Instant);

impl Phases {
    fn start() -> Phases {
        Phases(Vec::new(), Instant::now())
    }

    fn mark(&mut self, name: &str) {
        self.0
            .push((name.to_string(), self.1.elapsed().as_secs_f64()));
        self.1 = Instant::now();
    }
}

fn run_role(args: &Args, role: Role) -> Result<RoleFigures> {
    let baseline_rss_mb = rss_mb("VmRSS:");
    let device = args.device.parse::<DeviceChoice>()?.resolve()?;
    let (dir, hash) = data(args)?;
    let config = network(args, &hash)?;
    let data = Data::open(&dir, &config)?;
    let scratch = Scratch::new()?;
    let store = Store::open(&StoreConfig::new(format!(
        "file://{}",
        scratch.0.join("objects").display()
    )))?;
    let mut phases = Phases::start();
    let mut replica = Replica::new(&config, device, role)?;
    phases.mark("init");
    let mut error_feedback = None;
    let (payload_bytes, payloads) = match role {
        Role::Miner => {
            let output = miner_window(&config, &data, &mut replica, &store, &mut phases)?;
            error_feedback = Some(output.error_feedback);
            (output.payload_bytes, output.gathered)
        }
        Role::Validator => {
            let coding = config.codec.index_coding;
            let payloads = synthetic_payloads(&replica, args.payloads, coding)?;
            phases.mark("make_payloads");
            (payloads.first().map_or(0, Vec::len) as u64, payloads)
        }
    };
    let decoded: Vec<Payload> = {
        use rayon::prelude::*;
        payloads
            .par_iter()
            .map(|bytes| decode(&replica.schema, bytes))
            .collect::<Result<_, _>>()?
    };
    phases.mark("decode");
    let refs: Vec<&Payload> = decoded.iter().collect();
    if role == Role::Validator {
        judge(&config, &data, &mut replica, &refs)?;
        phases.mark("judge");
    }
    replica.apply_aggregate(&refs)?;
    phases.mark("aggregate_apply");
    persist(&replica, error_feedback.as_deref(), &scratch.0, &mut phases)?;
    let plan = memory_plan(&config, role, device, payloads.len());
    let mb = |b: u64| b as f64 / 1e6;
    let transfers = replica.transfers();
    Ok(RoleFigures {
        role: format!("{role:?}").to_lowercase(),
        peak_rss_mb: peak_rss_mb(),
        baseline_rss_mb,
        training_state_mb: mb(plan.training_state_bytes()),
        model_f32_mb: mb(plan.parameters * 4),
        planned_host_mb: mb(plan.bytes(templar_engine::memory::Place::Host)),
        seconds: phases.0,
        bytes_device_to_host: transfers.0,
        bytes_host_to_device: transfers.1,
        payload_bytes,
    })
}

/// What a miner's window leaves for the rest of the benchmark.
struct MinerOutput {
    error_feedback: Vec<Vec<f32>>,
    payload_bytes: u64,
    /// The payloads it aggregates: its own, standing for every peer's.
    gathered: Vec<Vec<u8>>,
}

/// Inner steps on the miner's assignment, the outer step, encoding and publishing; returns the
/// error feedback, the payload's size and the payloads it then aggregates (its own, standing for
/// every peer's).
fn miner_window(
    config: &NetworkConfig,
    data: &Data,
    replica: &mut Replica,
    store: &Store,
    phases: &mut Phases,
) -> Result<MinerOutput> {
    let mut error_feedback: Vec<Vec<f32>> =
        replica.base().iter().map(|b| vec![0.0; b.len()]).collect();
    for ids in data.assignment(0, 1).chunks_exact(data.batch_size) {
        let (batch, _) = data.batch(Split::Train, ids)?;
        replica.train_step(&batch)?;
    }
    phases.mark("train");
    let payload = replica.outer_step(&mut error_feedback)?;
    let bytes = encode(&replica.schema, &payload, config.codec.index_coding);
    phases.mark("outer_step");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(store.put("bench/gradient.bin", bytes.clone().into()))?;
    phases.mark("publish");
    let size = bytes.len() as u64;
    let peers = config.gather.peer_count.clamp(1, 4);
    Ok(MinerOutput {
        error_feedback,
        payload_bytes: size,
        gathered: vec![bytes; peers],
    })
}

/// Payloads of a plausible size and spread, compressed tensor by tensor from synthetic
/// pseudo-gradients (a validator's process holds no miner).
fn synthetic_payloads(
    replica: &Replica,
    count: usize,
    coding: templar_codec::IndexCoding,
) -> Result<Vec<Vec<u8>>> {
    let schema = &replica.schema;
    (0..count)
        .map(|p| {
            let mut tensors = Vec::with_capacity(schema.len());
            for i in 0..schema.len() {
                let n = schema.plan(i).numel();
                let mut delta = vec![0f32; n];
                fill(
                    &mut delta,
                    (p * 1000 + i) as u64,
                    1e-3,
                    Distribution::Laplace,
                );
                let mut ef = vec![0f32; n];
                tensors.push(compress_tensor(
                    schema,
                    i,
                    &mut ef,
                    &delta,
                    Rule::Symmetric,
                )?);
            }
            let payload = Payload { tensors };
            Ok(encode(schema, &payload, coding))
        })
        .collect()
}

/// Each payload applied alone, measured on `eval_samples` samples, and undone.
fn judge(
    config: &NetworkConfig,
    data: &Data,
    replica: &mut Replica,
    payloads: &[&Payload],
) -> Result<()> {
    let ids = data.sampler.random(1, config.gauntlet.eval_samples);
    let (batch, bytes) = data.batch(Split::Train, &ids)?;
    let scale = replica.outer_lr * config.gauntlet.eval_lr_factor;
    replica.evaluate(&batch, bytes)?;
    for payload in payloads {
        replica.apply_one(payload, payloads, scale)?;
        replica.evaluate(&batch, bytes)?;
        replica.restore()?;
    }
    Ok(())
}

/// What the node writes into a state generation: weights, and for a miner its optimizer and
/// error feedback.
fn persist(
    replica: &Replica,
    error_feedback: Option<&[Vec<f32>]>,
    dir: &Path,
    phases: &mut Phases,
) -> Result<()> {
    let state = dir.join("state");
    replica.save_weights(&state, DEFAULT_SHARD_BYTES)?;
    replica.save_optimizer(&state)?;
    if let Some(buffers) = error_feedback {
        write_f32s(&state.join("error_feedback.bin"), buffers)?;
    }
    phases.mark("persist");
    Ok(())
}

/// A `/proc/self/status` figure in MB (0 where there is none).
fn rss_mb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with(field))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(0.0, |kib| kib * 1024.0 / 1e6)
}

/// A folder for the run's objects and state, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Scratch> {
        let dir = std::env::temp_dir().join(format!("templar-bench-window-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
