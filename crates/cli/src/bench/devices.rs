//! `bench devices`: the same miner window on the CPU and on another device (CUDA, in bf16), and
//! how far apart the updates their payloads decode to are. The CPU in f32 is the reference the
//! network was built and tested on; a GPU miner must publish the same update up to bf16's
//! rounding, or its payloads would be judged as another model's.

use anyhow::{Result, bail};
use clap::Args as ClapArgs;
use serde::Serialize;
use templar_engine::memory::Role;
use templar_engine::{Device, DeviceChoice, Preset, describe};
use templar_node::NetworkConfig;
use templar_node::replica::Replica;

#[derive(ClapArgs)]
pub struct Args {
    /// Built-in preset or a preset TOML file.
    #[arg(long, default_value = "tiny")]
    preset: String,
    /// Inner steps of the window.
    #[arg(long, default_value_t = 4)]
    steps: u64,
    /// The device compared with the CPU.
    #[arg(long, default_value = "auto")]
    device: String,
    /// The smallest cosine similarity of the two updates that passes (a first bound, to be
    /// tightened from measured runs: bf16 moves some top-k picks and quantized values).
    #[arg(long, default_value_t = 0.9)]
    min_cosine: f64,
    #[arg(long)]
    json: bool,
}

/// One device's window.
#[derive(Debug, Serialize)]
pub struct Window {
    pub device: String,
    pub mean_loss: f64,
    /// The decoded update, tensor by tensor.
    #[serde(skip)]
    pub update: Vec<Vec<f32>>,
    /// Kept positions, tensor by tensor, and how many each chunk keeps.
    #[serde(skip)]
    pub kept: Vec<(Vec<u16>, usize)>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub preset: String,
    pub steps: u64,
    pub cpu: Window,
    pub other: Window,
    /// Cosine similarity of the two decoded updates (1: the same direction).
    pub cosine: f64,
    /// ‖other − cpu‖ / ‖cpu‖ over the decoded updates.
    pub relative_difference: f64,
    /// Kept positions the two payloads share, over those of the CPU's.
    pub kept_overlap: f64,
    pub passed: bool,
}

pub fn run(args: Args) -> Result<()> {
    let preset = Preset::load(&args.preset)?;
    let device = args.device.parse::<DeviceChoice>()?.resolve()?;
    let batches = super::train::batches(&preset, args.steps)?;
    let config = NetworkConfig::defaults("bench-devices", preset, "unused");
    let cpu = window(&config, Device::Cpu, &batches)?;
    let other = window(&config, device, &batches)?;
    let report = compare(args.preset.clone(), args.steps, cpu, other, args.min_cosine);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} on {} against the CPU: cosine {:.4}, relative difference {:.4}, kept positions \
             shared {:.3}, mean loss {:.4} against {:.4}",
            report.preset,
            report.other.device,
            report.cosine,
            report.relative_difference,
            report.kept_overlap,
            report.other.mean_loss,
            report.cpu.mean_loss
        );
    }
    if !report.passed {
        bail!(
            "the {} update is too far from the CPU's: cosine {:.4} < {}",
            report.other.device,
            report.cosine,
            args.min_cosine
        );
    }
    Ok(())
}

/// Trains the network's initial model on `batches`, takes the outer step with fresh error
/// feedback and decodes the payload's update.
fn window(
    config: &NetworkConfig,
    device: Device,
    batches: &[templar_engine::Batch],
) -> Result<Window> {
    let mut replica = Replica::new(config, device, Role::Miner)?;
    let mut loss = 0.0;
    for batch in batches {
        loss += replica.train_step(batch)?.loss;
    }
    let numels: Vec<usize> = replica.base().iter().map(Vec::len).collect();
    let mut error_feedback = replica.owner().error_feedback(numels);
    let payload = replica.outer_step(&mut error_feedback)?;
    let update = replica.aggregate(&[&payload])?;
    Ok(Window {
        device: describe(device),
        mean_loss: loss / batches.len().max(1) as f64,
        update,
        kept: payload
            .tensors
            .into_iter()
            .enumerate()
            .map(|(i, t)| (t.indices, replica.schema.plan(i).k))
            .collect(),
    })
}

/// The figures of two windows' updates.
pub fn compare(preset: String, steps: u64, cpu: Window, other: Window, min_cosine: f64) -> Report {
    let (mut dot, mut cpu_sq, mut other_sq, mut diff_sq) = (0f64, 0f64, 0f64, 0f64);
    for (a, b) in cpu
        .update
        .iter()
        .flatten()
        .zip(other.update.iter().flatten())
    {
        let (a, b) = (f64::from(*a), f64::from(*b));
        dot += a * b;
        cpu_sq += a * a;
        other_sq += b * b;
        diff_sq += (a - b) * (a - b);
    }
    let cosine = dot / (cpu_sq.sqrt() * other_sq.sqrt()).max(f64::MIN_POSITIVE);
    let relative_difference = diff_sq.sqrt() / cpu_sq.sqrt().max(f64::MIN_POSITIVE);
    // Positions are within a chunk: compare the chunks' sets of kept positions.
    let (mut shared, mut total) = (0usize, 0usize);
    for ((a, k), (b, _)) in cpu.kept.iter().zip(&other.kept) {
        for (x, y) in a.chunks((*k).max(1)).zip(b.chunks((*k).max(1))) {
            let set: std::collections::HashSet<u16> = x.iter().copied().collect();
            shared += y.iter().filter(|p| set.contains(p)).count();
            total += x.len();
        }
    }
    Report {
        preset,
        steps,
        cosine,
        relative_difference,
        kept_overlap: shared as f64 / total.max(1) as f64,
        passed: cosine >= min_cosine,
        cpu,
        other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(update: Vec<Vec<f32>>, kept: Vec<u16>) -> Window {
        Window {
            device: String::new(),
            mean_loss: 0.0,
            update,
            kept: vec![(kept, 2)],
        }
    }

    #[test]
    fn updates_compare_by_direction_size_and_kept_positions() {
        let same = compare(
            "tiny".into(),
            1,
            window(vec![vec![3.0, 4.0]], vec![0, 1, 2, 3]),
            window(vec![vec![3.0, 4.0]], vec![1, 0, 3, 2]),
            0.99,
        );
        assert_eq!((same.cosine, same.relative_difference), (1.0, 0.0));
        // Chunks of 2 kept positions: {0, 1} against {1, 0}, {2, 3} against {2, 3}.
        assert_eq!(same.kept_overlap, 1.0);
        assert!(same.passed);
        // [3, 4] against [4, 3]: cosine 24/25, difference √2 / 5; chunks {0, 1} against
        // {1, 5} and {2, 3} against {2, 3}: 3 of 4 positions shared.
        let apart = compare(
            "tiny".into(),
            1,
            window(vec![vec![3.0, 4.0]], vec![0, 1, 2, 3]),
            window(vec![vec![4.0, 3.0]], vec![1, 5, 2, 3]),
            0.99,
        );
        assert!((apart.cosine - 0.96).abs() < 1e-12);
        assert!((apart.relative_difference - 2f64.sqrt() / 5.0).abs() < 1e-12);
        assert_eq!(apart.kept_overlap, 0.75);
        assert!(!apart.passed);
    }
}
