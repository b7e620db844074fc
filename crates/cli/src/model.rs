//! `templar model info`: what a preset is and what it needs, without allocating it.

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use templar_engine::Preset;
use templar_engine::fit::{Candidate, FitReport, Machine, find_fit, find_full_shard_fit, settings};
use templar_engine::memory::{MemoryPlan, Place, Role, WindowShape, full_shard_plan};

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Parameter count and memory needs of presets (all built-in ones unless --preset is given).
    Info(InfoArgs),
}

#[derive(Args)]
pub struct InfoArgs {
    /// Built-in preset name or preset TOML file.
    #[arg(long)]
    preset: Option<String>,
    /// Plan one window of this role, buffer by buffer: miner or validator.
    #[arg(long)]
    role: Option<String>,
    /// The device the plan is for: cpu (the device is the host) or cuda.
    #[arg(long, default_value = "cuda")]
    device: String,
    /// Payloads held by a gather (a miner's peers and reserves; a validator's candidates).
    #[arg(long, default_value_t = 20)]
    payloads: usize,
    /// Plan one rank of a node spanning this many ranks (`templar miner --ranks`); the host's
    /// total is then every rank's.
    #[arg(long, default_value_t = 1)]
    ranks: usize,
    /// Check the role against devices of this much memory (GiB, 2³⁰ bytes), trying the preset's
    /// window shape first and then cheaper options (recomputing activations, smaller
    /// micro-batches); needs --role.
    #[arg(long)]
    device_memory_gb: Option<f64>,
    /// With --device-memory-gb: the host's memory for every rank together (GiB); unchecked if
    /// not given.
    #[arg(long)]
    host_memory_gb: Option<f64>,
    /// Plan a miner fully sharded over --ranks (its training: `templar bench train --shard
    /// full`; the node does not run one yet): its buffers, or with
    /// --device-memory-gb whether it fits, its spans on the device or offloaded.
    #[arg(long)]
    full_shard: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(command: ModelCommand) -> Result<()> {
    let ModelCommand::Info(args) = command;
    let fitting = args.device_memory_gb.is_some() || args.host_memory_gb.is_some();
    if args.role.is_none() && fitting {
        bail!(
            "--device-memory-gb and --host-memory-gb check one role: add --role miner or --role \
             validator"
        );
    }
    if let Some(role) = &args.role {
        return plan(&args, role);
    }
    let names: Vec<String> = match args.preset {
        Some(name) => vec![name],
        None => Preset::names().map(String::from).collect(),
    };
    println!(
        "{:<8} {:>16} {:>7} {:>7} {:>5} {:>12} {:>13}",
        "preset", "parameters", "hidden", "layers", "kv", "weights GiB", "training GiB"
    );
    for name in names {
        let model = Preset::load(&name)?.model;
        println!(
            "{:<8} {:>16} {:>7} {:>7} {:>5} {:>12.2} {:>13.2}",
            name,
            model.parameter_count(),
            model.hidden_size,
            model.num_hidden_layers,
            model.num_key_value_heads,
            gib(model.parameter_count() * 4),
            gib(model.training_state_bytes()),
        );
    }
    println!(
        "training GiB: f32 weights, gradients, AdamW moments, error feedback and the network model's copy; \
         activations extra (see --role)"
    );
    Ok(())
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

fn plan(args: &InfoArgs, role: &str) -> Result<()> {
    let role = match role {
        "miner" => Role::Miner,
        "validator" => Role::Validator,
        other => bail!("unknown role {other:?}: use miner or validator"),
    };
    let device_is_host = match args.device.as_str() {
        "cpu" => true,
        "cuda" => false,
        other => bail!("unknown device {other:?}: use cpu or cuda"),
    };
    let name = args.preset.as_deref().unwrap_or("tiny");
    let preset = Preset::load(name)?;
    let (payload_bytes, payload_decoded_bytes, payload_values) = payload_bound(&preset);
    let shape = WindowShape {
        payloads: args.payloads,
        payload_bytes,
        payload_decoded_bytes,
        payload_values,
        ranks: args.ranks.max(1),
        ..WindowShape::of_train(&preset.train, device_is_host)
    };
    if args.full_shard && role != Role::Miner {
        bail!("--full-shard plans a miner's training: use --role miner");
    }
    if args.device_memory_gb.is_some() || args.host_memory_gb.is_some() {
        return fit(args, name, &preset, role, shape);
    }
    let plan = if args.full_shard {
        full_shard_plan(&preset.model, shape, false)
    } else {
        MemoryPlan::new(&preset.model, role, shape)
    };
    if args.json {
        let value = serde_json::json!({
            "preset": name,
            "plan": plan,
            "device_bytes": plan.bytes(Place::Device),
            "host_bytes": plan.bytes(Place::Host) * plan.ranks,
            "disk_bytes": plan.bytes(Place::Disk),
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!(
        "{name}: one {role:?} window at micro-batch {} × {} tokens, {} payloads gathered{}",
        shape.micro_batch,
        shape.seq_len,
        shape.payloads,
        if shape.ranks > 1 {
            format!(", one rank of {} (host total: all ranks)", shape.ranks)
        } else {
            String::new()
        }
    );
    for item in &plan.items {
        println!(
            "  {:<42} {:<7} {:>10.2} GiB",
            item.what,
            format!("{:?}", item.place).to_lowercase(),
            gib(item.bytes)
        );
    }
    for place in [Place::Device, Place::Host, Place::Disk] {
        // The ranks share the host (and, with a CPU device, hold everything there).
        let shared = if place == Place::Host { plan.ranks } else { 1 };
        println!(
            "  {:<42} {:<7} {:>10.2} GiB",
            "total",
            format!("{place:?}").to_lowercase(),
            gib(plan.bytes(place) * shared)
        );
    }
    Ok(())
}

fn fit(args: &InfoArgs, name: &str, preset: &Preset, role: Role, shape: WindowShape) -> Result<()> {
    if shape.device_is_host && args.device_memory_gb.is_some() {
        bail!("on a CPU the device is the host: give its memory as --host-memory-gb");
    }
    let bytes = |gib: f64| -> Result<u64> {
        if !(gib.is_finite() && gib > 0.0) {
            bail!("memory sizes are positive numbers of GiB, not {gib}");
        }
        Ok((gib * (1u64 << 30) as f64) as u64)
    };
    let machine = Machine {
        device_bytes: args.device_memory_gb.map(bytes).transpose()?,
        host_bytes: args.host_memory_gb.map(bytes).transpose()?,
    };
    let report = find_fit(&preset.model, &preset.train, role, shape, machine);
    // A miner over ranks whose node does not fit: whether its training would, fully sharded.
    let full = (role == Role::Miner && report.chosen.is_none() && shape.ranks > 1
        || args.full_shard)
        .then(|| find_full_shard_fit(&preset.model, &preset.train, shape, machine));
    if let (Some(full), false) = (&full, args.json || !args.full_shard) {
        print_full_shard(full);
        if full.chosen.is_none() {
            bail!(
                "{name}'s training does not fit fully sharded over {} rank(s)",
                full.ranks
            );
        }
        return Ok(());
    }
    if args.json {
        let value = serde_json::json!({
            "preset": name,
            "machine": machine,
            "fit": report,
            "full_shard": full,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let unchecked = || "unchecked".to_string();
    println!(
        "{name}: a {role:?} over {} rank(s); each device {}, the host {}",
        report.ranks,
        args.device_memory_gb
            .map_or_else(unchecked, |g| format!("{g} GiB")),
        args.host_memory_gb
            .map_or_else(unchecked, |h| format!("{h} GiB")),
    );
    print_candidates(&report, ("recompute", |c| c.shape.recompute), "chosen");
    match (report.chosen, &report.reason) {
        (Some(i), _) => {
            let c = &report.candidates[i];
            println!(
                "fits: set {} ({} passes per inner step on each rank)",
                settings(role, &c.shape),
                c.passes_per_step
            );
            Ok(())
        }
        (None, reason) => {
            if let Some(full) = &full {
                print_full_shard(full);
            }
            bail!(
                "{name} does not fit as a {role:?} over {} rank(s): {}",
                report.ranks,
                reason.as_deref().unwrap_or("no candidate fits")
            )
        }
    }
}

/// A fully sharded miner's candidates, with the command that runs one.
fn print_full_shard(report: &FitReport) {
    println!(
        "a fully sharded miner over {0} ranks (`templar miner --ranks {0} --shard full`, with \
         `--offload` where the row says so):",
        report.ranks
    );
    print_candidates(report, ("offload", |c| c.offload), "first to fit");
    if let Some(reason) = &report.reason {
        println!("  {reason}");
    }
}

/// The candidates one to a row: the option that tells them apart (`option`: its column's name
/// and value), the micro-batch, the passes and the memory, the chosen one marked with `mark`.
fn print_candidates(report: &FitReport, option: (&str, fn(&Candidate) -> bool), mark: &str) {
    let (name, value) = option;
    println!(
        "  {:<10} {:>11} {:>12} {:>16} {:>14}  fits",
        name, "micro-batch", "passes/step", "device GiB/rank", "host GiB (all)"
    );
    for (i, c) in report.candidates.iter().enumerate() {
        println!(
            "  {:<10} {:>11} {:>12} {:>16.1} {:>14.1}  {}{}",
            value(c),
            c.shape.micro_batch,
            c.passes_per_step,
            gib(c.device_bytes),
            gib(c.host_bytes),
            if c.fits() { "yes" } else { "no" },
            if report.chosen == Some(i) {
                format!("  ← {mark}")
            } else {
                String::new()
            }
        );
    }
}

/// What the largest payload the default codec can send for the preset's model holds in
/// memory, of that its decoded form, and the values it carries.
fn payload_bound(preset: &Preset) -> (u64, u64, u64) {
    let config = templar_node::NetworkConfig::defaults("plan", preset.clone(), "unused");
    templar_node::replica::schema_for(&config).map_or((0, 0, 0), |s| {
        (
            templar_node::replica::payload_memory(&s),
            s.decoded_payload_bytes() as u64,
            s.payload_values() as u64,
        )
    })
}
