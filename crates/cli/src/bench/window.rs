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
use templar_engine::{DeviceChoice, Preset};
use templar_node::config::NetworkConfig;
use templar_node::data::Data;
use templar_node::replica::{Replica, memory_plan};
use templar_node::saving::{Saving, commit_weights};
use templar_node::state::StateDir;
use templar_storage::{Store, StoreConfig};

use super::synthetic::{Distribution, fill};

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
    /// Recompute each layer's activations in the backward pass (the preset's setting otherwise).
    #[arg(long)]
    recompute: bool,
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Run one role in this process (what the benchmark starts itself with).
    #[arg(long, hide = true)]
    role: Option<String>,
    /// The validator's payloads, made by the parent process so that the validator's memory is
    /// a validator's.
    #[arg(long, hide = true)]
    payloads_from: Option<PathBuf>,
}

/// What one role's window measured.
#[derive(Debug, Serialize, Deserialize)]
struct RoleFigures {
    role: String,
    /// The window's own peak, up to starting its state save's last stage: what the targets judge.
    window_peak_rss_mb: f64,
    /// The process's peak, a miner's next window training beside the save included.
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
    /// Peak resident MB at the end of each phase.
    peak_after: Vec<(String, f64)>,
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
    /// A role's figures, or `null` where the role does not fit this machine (see `refused`).
    miner: Option<RoleFigures>,
    validator: Option<RoleFigures>,
    /// Why a role did not run: the memory planner's refusal, before anything was allocated.
    refused: Vec<String>,
    /// Targets judged on `peak_rss_mb − baseline_rss_mb`: what the window itself costs.
    miner_target_met: Option<bool>,
    validator_target_met: Option<bool>,
    /// (outer step + the time the window waits for its state save) / train: target < 0.10.
    /// The save's writing overlaps the upload, the gather and the next window's training, which
    /// the miner runs too (`train_beside_save`; `background_save_rest` is what was left of the
    /// save after it).
    outer_and_persist_share: Option<f64>,
    /// The next window's training beside the save / this window's: what the overlap costs.
    train_beside_save_ratio: Option<f64>,
}

pub fn run(args: Args) -> Result<()> {
    match args.role.as_deref() {
        Some("miner") => return print_json(&run_role(&args, Role::Miner)?),
        Some("validator") => return print_json(&run_role(&args, Role::Validator)?),
        Some(other) => bail!("unknown role {other:?}: miner or validator"),
        None => {}
    }
    let preset = Preset::load(&args.preset)?;
    data(&args, true)?;
    let mut refused = Vec::new();
    let mut outcome = |role: &str, result: Result<RoleFigures>| match result {
        Ok(figures) => Ok(Some(figures)),
        Err(error) if error.to_string().contains("not enough memory") => {
            refused.push(format!("{role}: {error}"));
            Ok(None)
        }
        Err(error) => Err(error),
    };
    let miner = outcome("miner", child(&args, "miner", None))?;
    let scratch = Scratch::new()?;
    write_synthetic_payloads(&args, &scratch.0)?;
    let validator = outcome("validator", child(&args, "validator", Some(&scratch.0)))?;
    drop(scratch);
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
        miner_target_met: miner.as_ref().map(|m| {
            m.window_peak_rss_mb - m.baseline_rss_mb <= m.training_state_mb + 1.3 * m.model_f32_mb
        }),
        validator_target_met: validator
            .as_ref()
            .map(|v| v.window_peak_rss_mb - v.baseline_rss_mb <= 2.3 * v.model_f32_mb),
        outer_and_persist_share: miner.as_ref().map(|m| {
            (phase(m, "outer_step") + phase(m, "persist_start") + phase(m, "persist"))
                / phase(m, "train").max(1e-9)
        }),
        train_beside_save_ratio: miner
            .as_ref()
            .map(|m| phase(m, "train_beside_save") / phase(m, "train").max(1e-9)),
        miner,
        validator,
        refused,
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

fn child(args: &Args, role: &str, payloads: Option<&Path>) -> Result<RoleFigures> {
    let exe = std::env::current_exe().context("cannot find the templar binary")?;
    let mut command = Command::new(exe);
    command.args(["bench", "window", "--role", role, "--preset", &args.preset]);
    if let Some(dir) = payloads {
        command.arg("--payloads-from").arg(dir);
    }
    let output = command
        .args(["--inner-steps", &args.inner_steps.to_string()])
        .args(["--batch", &args.batch.to_string()])
        .args(["--seq-len", &args.seq_len.to_string()])
        .args(["--payloads", &args.payloads.to_string()])
        .args(args.recompute.then_some("--recompute"))
        .args(["--device", &args.device])
        .stderr(std::process::Stdio::piped())
        .output()
        .with_context(|| format!("starting the {role} window"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let reason = stderr
            .lines()
            .find(|l| l.starts_with("Error: "))
            .map_or("", |l| l.trim_start_matches("Error: "));
        bail!("the {role} window failed ({}): {reason}", output.status);
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
    for line in &report.refused {
        println!("  refused before allocating: {line}");
    }
    for f in [&report.miner, &report.validator].into_iter().flatten() {
        println!(
            "  {:<9} peak RSS {:>6.0} MB in the window, {:.0} MB to the end, {:.0} MB before the window  (training state {:.0} MB, model f32 {:.0} MB, planned host {:.0} MB)",
            f.role,
            f.window_peak_rss_mb,
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
        let peaks: Vec<String> = f
            .peak_after
            .iter()
            .map(|(name, mb)| format!("{name} {mb:.0}"))
            .collect();
        println!("            peak MB after: {}", peaks.join(", "));
        println!(
            "            device→host {:.0} MB, host→device {:.0} MB, payload {:.2} MB",
            f.bytes_device_to_host as f64 / 1e6,
            f.bytes_host_to_device as f64 / 1e6,
            f.payload_bytes as f64 / 1e6
        );
    }
    let show = |met: Option<bool>| met.map_or("not run".to_string(), |m| m.to_string());
    println!(
        "  beyond the baseline: miner ≤ training state + 1.3 × model: {}; validator ≤ 2.3 × model: {}; \
         (outer step + persist) / train = {}; training beside the save / alone = {}",
        show(report.miner_target_met),
        show(report.validator_target_met),
        ratio(report.outer_and_persist_share),
        ratio(report.train_beside_save_ratio),
    );
}

fn ratio(value: Option<f64>) -> String {
    value.map_or("not run".to_string(), |s| format!("{s:.3}"))
}

/// The benchmark's network: the preset at the requested batch and sequence length.
fn network(args: &Args, manifest_hash: &str) -> Result<NetworkConfig> {
    let mut preset = Preset::load(&args.preset)?;
    preset.train.seq_len = args.seq_len;
    preset.train.batch_size = args.batch;
    preset.train.micro_batch_size = args.batch;
    preset.train.recompute_activations |= args.recompute;
    let mut config = NetworkConfig::defaults("bench-window", preset, manifest_hash);
    config.training.inner_steps = args.inner_steps;
    config.gauntlet.eval_samples = args.batch;
    Ok(config)
}

/// The demo corpus prepared with the preset's tokenizer (kept between runs). The parent prepares
/// it; a role's process only opens it, as a node does, so the tokenizer is not in its memory.
fn data(args: &Args, prepare_it: bool) -> Result<(PathBuf, String)> {
    let preset = Preset::load(&args.preset)?;
    let out = std::env::temp_dir().join(format!(
        "templar-bench-window-{}-{}",
        preset.train.tokenizer, args.seq_len
    ));
    if prepare_it {
        let cache = std::env::var_os("TEMPLAR_CACHE")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/templar")))
            .context("neither TEMPLAR_CACHE nor HOME is set")?;
        let corpus = cache.join("corpus/text");
        if !corpus.is_dir() {
            bail!("{} is missing: run scripts/setup", corpus.display());
        }
        let tokenizer: TokenizerSpec = preset.train.tokenizer.parse()?;
        let mut options = PrepareOptions::new(corpus, out.clone(), tokenizer, args.seq_len);
        options.validation_fraction = 0.02;
        prepare(&options)?;
    }
    let manifest = templar_data::Manifest::read(&out)?;
    Ok((out, manifest.content_hash))
}

/// Seconds per phase, and the peak resident memory when each phase ended (which phase set the
/// peak is where to look for savings).
struct Phases(Vec<(String, f64)>, Vec<(String, f64)>, Instant);

impl Phases {
    fn start() -> Phases {
        Phases(Vec::new(), Vec::new(), Instant::now())
    }

    fn mark(&mut self, name: &str) {
        self.0
            .push((name.to_string(), self.2.elapsed().as_secs_f64()));
        self.1.push((name.to_string(), rss_mb("VmHWM:")));
        self.2 = Instant::now();
    }
}

fn run_role(args: &Args, role: Role) -> Result<RoleFigures> {
    let baseline_rss_mb = rss_mb("VmRSS:");
    let device = args.device.parse::<DeviceChoice>()?.resolve()?;
    let (dir, hash) = data(args, false)?;
    let config = network(args, &hash)?;
    let data = Data::open(&dir, &config)?;
    let scratch = Scratch::new()?;
    let store = Store::open(&StoreConfig::new(format!(
        "file://{}",
        scratch.0.join("objects").display()
    )))?;
    let state = StateDir::new(scratch.0.join("state"));
    let mut phases = Phases::start();
    let mut replica = Replica::new(&config, device, role)?;
    phases.mark("init");
    let mut error_feedback: Vec<Vec<f32>> = Vec::new();
    let mut saving = Saving::default();
    let payloads = match role {
        Role::Miner => {
            // Resident, as a miner's error feedback is after its first window (fresh zeros
            // would not count until written).
            error_feedback = replica.base().iter().map(|b| vec![0.0; b.len()]).collect();
            for buffer in &mut error_feedback {
                for value in buffer.iter_mut().step_by(1024) {
                    // SAFETY: a valid, aligned f32 of the buffer; volatile so that writing the
                    // zero it already holds is not optimised away.
                    unsafe { std::ptr::write_volatile(value, 0.0) };
                }
            }
            let mut window = MinerWindow {
                config: &config,
                data: &data,
                replica: &mut replica,
                error_feedback: &mut error_feedback,
                phases: &mut phases,
            };
            window.train_and_compress(&store, &state, &mut saving)?
        }
        Role::Validator => read_payloads(args)?,
    };
    let payload_bytes = payloads.first().map_or(0, Vec::len) as u64;
    let decoded: Vec<Payload> = {
        use rayon::prelude::*;
        payloads
            .par_iter()
            .map(|bytes| decode(&replica.schema, bytes))
            .collect::<Result<_, _>>()?
    };
    // A node keeps the decoded payloads, not their bytes.
    let gathered = payloads.len();
    drop(payloads);
    phases.mark("decode");
    let refs: Vec<&Payload> = decoded.iter().collect();
    if role == Role::Validator {
        judge(&config, &data, &mut replica, &refs)?;
        phases.mark("judge");
    }
    saving.finish_weights()?;
    replica.apply_aggregate(&refs)?;
    phases.mark("aggregate_apply");
    drop(refs);
    drop(decoded);
    // What the window waits for: starting the save's last stage, which writes the base (the
    // miner's first stage overlapped the upload, decode and apply). The miner then trains the
    // next window beside it, as a node does.
    match role {
        Role::Miner => {
            saving.commit_with_weights(&replica, |digest| digest)?;
            phases.mark("persist");
            let mut window = MinerWindow {
                config: &config,
                data: &data,
                replica: &mut replica,
                error_feedback: &mut error_feedback,
                phases: &mut phases,
            };
            window.train("train_beside_save")?;
            saving.finish(&mut error_feedback)?;
        }
        Role::Validator => {
            let staging = state.begin(1)?;
            let weights = commit_weights(staging, &replica, ())?;
            phases.mark("persist");
            weights.wait()?;
        }
    }
    phases.mark("background_save_rest");
    let plan = memory_plan(&config, role, device, gathered);
    let mb = |b: u64| b as f64 / 1e6;
    let transfers = replica.transfers();
    let window_peak_rss_mb = phases
        .1
        .iter()
        .find(|(name, _)| name == "persist")
        .map_or(0.0, |(_, mb)| *mb);
    Ok(RoleFigures {
        role: format!("{role:?}").to_lowercase(),
        window_peak_rss_mb,
        peak_rss_mb: rss_mb("VmHWM:"),
        baseline_rss_mb,
        training_state_mb: mb(plan.training_state_bytes()),
        model_f32_mb: mb(plan.parameters * 4),
        planned_host_mb: mb(plan.bytes(templar_engine::memory::Place::Host)),
        seconds: phases.0,
        peak_after: phases.1,
        bytes_device_to_host: transfers.0,
        bytes_host_to_device: transfers.1,
        payload_bytes,
    })
}

/// A miner's window up to its payload, and the next window's training.
struct MinerWindow<'a> {
    config: &'a NetworkConfig,
    data: &'a Data,
    replica: &'a mut Replica,
    error_feedback: &'a mut Vec<Vec<f32>>,
    phases: &'a mut Phases,
}

impl MinerWindow<'_> {
    /// Inner steps on the miner's assignment, as phase `phase`.
    fn train(&mut self, phase: &str) -> Result<()> {
        for ids in self
            .data
            .assignment(0, 1)
            .chunks_exact(self.data.batch_size)
        {
            let (batch, _) = self.data.batch(Split::Train, ids)?;
            self.replica.train_step(&batch)?;
        }
        self.phases.mark(phase);
        Ok(())
    }

    /// Inner steps on the miner's assignment, the outer step, the state save's first stage
    /// started, encoding and publishing; returns the payloads it then aggregates (its own,
    /// standing for every peer's).
    fn train_and_compress(
        &mut self,
        store: &Store,
        state: &StateDir,
        saving: &mut Saving,
    ) -> Result<Vec<Vec<u8>>> {
        self.train("train")?;
        let payload = self.replica.outer_step(self.error_feedback)?;
        self.phases.mark("outer_step");
        saving.begin(state, 1, self.replica, self.error_feedback)?;
        self.phases.mark("persist_start");
        let bytes = encode(
            &self.replica.schema,
            &payload,
            self.config.codec.index_coding,
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(store.put("bench/gradient.bin", bytes.clone().into()))?;
        self.phases.mark("publish");
        let peers = self.config.gather.peer_count.clamp(1, 4);
        Ok(vec![bytes; peers])
    }
}

/// The parent's part of the validator's window: `--payloads` synthetic payloads as files.
fn write_synthetic_payloads(args: &Args, dir: &Path) -> Result<()> {
    let (_, hash) = data(args, false)?;
    let config = network(args, &hash)?;
    let schema = templar_node::replica::schema_for(&config)?;
    for (p, bytes) in synthetic_payloads(&schema, args.payloads, config.codec.index_coding)?
        .into_iter()
        .enumerate()
    {
        let path = dir.join(format!("payload-{p}.bin"));
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn read_payloads(args: &Args) -> Result<Vec<Vec<u8>>> {
    let dir = args
        .payloads_from
        .as_deref()
        .context("the validator's window needs --payloads-from")?;
    (0..args.payloads)
        .map(|p| {
            let path = dir.join(format!("payload-{p}.bin"));
            std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
        })
        .collect()
}

/// Payloads of a plausible size and spread, compressed tensor by tensor from synthetic
/// pseudo-gradients (a validator's process holds no miner).
fn synthetic_payloads(
    schema: &templar_codec::Schema,
    count: usize,
    coding: templar_codec::IndexCoding,
) -> Result<Vec<Vec<u8>>> {
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
        replica.apply_one(payload, payloads, 0, scale)?;
        replica.evaluate(&batch, bytes)?;
        replica.restore()?;
    }
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
