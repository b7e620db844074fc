//! Training over Gloo ranks against training in one process: ranks are real processes (the test
//! binary starts copies of itself through the `rank` test, which does nothing unless
//! `TEMPLAR_SHARDED_RANK` is set) meeting in a file store.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use templar_dist::{GroupOptions, Member, ProcessGroup, Store, rendezvous};
use templar_engine::{Batch, Device, Llama, Preset, ShardedTrainer, TrainConfig, Trainer};

const STEPS: u64 = 3;

fn setup() -> (Preset, TrainConfig) {
    let preset = Preset::load("tiny").unwrap();
    let mut config = preset.train.clone();
    config.batch_size = 4;
    config.micro_batch_size = 1;
    config.seq_len = 32;
    config.warmup_steps = 1;
    // Clipping on, and active from the first step (a fresh model's gradient norm is above 0.5).
    config.grad_clip = 0.5;
    (preset, config)
}

/// The same batches for every process: deterministic tokens.
fn batch(step: u64, preset: &Preset, config: &TrainConfig) -> Batch {
    let mut state = 0x5eed ^ step.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let tokens: Vec<i64> = (0..config.batch_size * config.seq_len)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 33) % preset.model.vocab_size as u64) as i64
        })
        .collect();
    Batch::from_tokens(
        &tokens,
        config.batch_size,
        config.seq_len,
        preset.model.vocab_size,
    )
    .unwrap()
}

fn weights(model: &Llama) -> Vec<f32> {
    let mut all = Vec::new();
    for (index, shape) in model.params.shapes().iter().enumerate() {
        let mut values = vec![0f32; shape.iter().product()];
        model.params.read_one(index, &mut values).unwrap();
        all.extend(values);
    }
    all
}

/// Buckets for `world` ranks: the default (one bucket for `tiny`) at 2, small ones at 4, so that
/// tensors are cut across buckets and ranks. At 4 the ranks also start from different weights
/// and take rank 0's.
fn bucket_values(world: usize) -> i64 {
    if world == 4 {
        100_000
    } else {
        templar_engine::BUCKET_VALUES
    }
}

/// Starts `world` ranks of `scenario` meeting in `dir`.
fn start_ranks(scenario: &str, world: usize, dir: &Path) -> Vec<std::process::Child> {
    let exe = std::env::current_exe().unwrap();
    (0..world)
        .map(|rank| {
            Command::new(&exe)
                .args(["--exact", "rank", "--nocapture", "--test-threads=1"])
                .env("TEMPLAR_SHARDED_RANK", rank.to_string())
                .env("TEMPLAR_SHARDED_WORLD", world.to_string())
                .env("TEMPLAR_SHARDED_BUCKET", bucket_values(world).to_string())
                .env("TEMPLAR_SHARDED_DIR", dir)
                .env("TEMPLAR_SHARDED_SCENARIO", scenario)
                .env("OMP_NUM_THREADS", "1")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect()
}

/// Runs `world` ranks; returns their losses, moment counts and final weights, by rank.
fn run_ranks(world: usize, dir: &Path) -> (Vec<Vec<f64>>, Vec<i64>, Vec<Vec<f32>>) {
    let children = start_ranks("train", world, dir);
    let mut losses = Vec::new();
    let mut moments = Vec::new();
    for (rank, child) in children.into_iter().enumerate() {
        let output = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "rank {rank}: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let line = |tag: &str| {
            text.lines()
                .find_map(|l| l.split_once(tag).map(|(_, rest)| rest))
                .unwrap_or_else(|| panic!("rank {rank} printed no {tag}: {text}"))
                .to_string()
        };
        losses.push(serde_json::from_str(&line("LOSSES ")).unwrap());
        moments.push(line("MOMENTS ").parse().unwrap());
    }
    let weights = (0..world)
        .map(|rank| {
            let bytes = std::fs::read(dir.join(format!("weights-{rank}.bin"))).unwrap();
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        })
        .collect();
    (losses, moments, weights)
}

#[test]
fn gloo_ranks_train_as_one_process_does() {
    tch::set_num_threads(1);
    let (preset, config) = setup();
    let model = Llama::new(&preset.model, 0, Device::Cpu).unwrap();
    let parameters = preset.model.parameter_count() as i64;
    let mut trainer = Trainer::new(model, config.clone()).unwrap();
    let expected: Vec<f64> = (0..STEPS)
        .map(|s| {
            trainer
                .train_step(&batch(s, &preset, &config))
                .unwrap()
                .loss
        })
        .collect();
    let expected_weights = weights(&trainer.model);
    for world in [2, 4] {
        let dir = tempfile::tempdir().unwrap();
        let (losses, moments, weights) = run_ranks(world, dir.path());
        for (rank, rank_losses) in losses.iter().enumerate() {
            for (step, (got, want)) in rank_losses.iter().zip(&expected).enumerate() {
                assert!(
                    (got - want).abs() <= 1e-5,
                    "{world} ranks, rank {rank}, step {step}: loss {got} against {want}"
                );
            }
        }
        // Each rank's moments are a world-th of the whole, and together exactly the whole.
        assert_eq!(moments.iter().sum::<i64>(), parameters, "{moments:?}");
        let share = parameters as f64 / world as f64;
        assert!(
            moments.iter().all(|&m| (m as f64) < share * 1.01),
            "{moments:?}"
        );
        for (rank, weights) in weights.iter().enumerate() {
            let worst = weights
                .iter()
                .zip(&expected_weights)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                worst <= 1e-5,
                "{world} ranks, rank {rank}: weights differ by up to {worst}"
            );
        }
    }
}

#[test]
fn a_rank_that_dies_mid_run_stops_the_others_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let children = start_ranks("dies", 2, dir.path());
    let outputs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let survivor = String::from_utf8_lossy(&outputs[0].stdout).into_owned();
    assert!(
        outputs[0].status.success(),
        "rank 0: {survivor}{}",
        String::from_utf8_lossy(&outputs[0].stderr)
    );
    // The next step fails on a lost peer or the group's timeout, not a hang or an abort; the
    // step after it is refused: the ranks may disagree now.
    assert!(
        survivor.contains("FAILED between ranks:"),
        "rank 0 did not see its peer go: {survivor}"
    );
    assert!(
        survivor.contains("REFUSED") && survivor.contains("rebuild the group"),
        "{survivor}"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
}

/// One rank of [`run_ranks`] or [`start_ranks`]; nothing outside of one.
#[test]
fn rank() {
    let Ok(rank) = std::env::var("TEMPLAR_SHARDED_RANK") else {
        return;
    };
    tch::set_num_threads(1);
    let rank: usize = rank.parse().unwrap();
    let world: usize = std::env::var("TEMPLAR_SHARDED_WORLD")
        .unwrap()
        .parse()
        .unwrap();
    let dir = std::path::PathBuf::from(std::env::var("TEMPLAR_SHARDED_DIR").unwrap());
    let timeout = Duration::from_secs(30);
    let store = Store::file(&dir.join("store"), timeout).unwrap();
    rendezvous(&store, &Member::new(rank, world, "sharded test"), timeout).unwrap();
    let options = GroupOptions {
        timeout,
        threads: 1,
    };
    let group = ProcessGroup::gloo(&store, rank, world, &options).unwrap();
    let (preset, config) = setup();
    // At 4 ranks every rank but the first starts from other weights, and takes rank 0's.
    let seed = if world == 4 { rank as u64 } else { 0 };
    let model = Llama::new(&preset.model, seed, Device::Cpu).unwrap();
    let bucket: i64 = std::env::var("TEMPLAR_SHARDED_BUCKET")
        .unwrap()
        .parse()
        .unwrap();
    let mut trainer =
        ShardedTrainer::with_bucket_values(model, config.clone(), group, bucket).unwrap();
    if std::env::var("TEMPLAR_SHARDED_SCENARIO").unwrap() == "dies" {
        trainer.train_step(&batch(0, &preset, &config)).unwrap();
        if rank == 1 {
            // Gone without a word between steps, as a killed process would be.
            std::process::exit(0);
        }
        let lost = trainer.train_step(&batch(1, &preset, &config)).unwrap_err();
        println!("FAILED {lost}");
        let refused = trainer.train_step(&batch(2, &preset, &config)).unwrap_err();
        println!("REFUSED {refused}");
        return;
    }
    if world == 4 {
        trainer.broadcast_weights().unwrap();
        // Segments updated in pieces, as the embedding's are at 8B.
        trainer.optimizer.set_step_piece(1000);
    }
    let losses: Vec<f64> = (0..STEPS)
        .map(|s| {
            trainer
                .train_step(&batch(s, &preset, &config))
                .unwrap()
                .loss
        })
        .collect();
    println!("LOSSES {}", serde_json::to_string(&losses).unwrap());
    println!("MOMENTS {}", trainer.moment_values());
    let bytes: Vec<u8> = weights(&trainer.model)
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    std::fs::write(dir.join(format!("weights-{rank}.bin")), bytes).unwrap();
}
