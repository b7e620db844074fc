//! Training over Gloo ranks against training in one process: ranks are real processes (the test
//! binary starts copies of itself through the `rank` test, which does nothing unless
//! `TEMPLAR_SHARDED_RANK` is set) meeting in a file store.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use templar_dist::{GroupOptions, Member, ProcessGroup, Store, rendezvous};
use templar_engine::{
    Batch, Device, FullyShardedTrainer, Llama, Preset, ShardedTrainer, TrainConfig, Trainer,
    load_model, load_optimizer,
};

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
    start_ranks_with(scenario, world, dir, &[])
}

/// [`start_ranks`] with more environment variables.
fn start_ranks_with(
    scenario: &str,
    world: usize,
    dir: &Path,
    vars: &[(&str, &str)],
) -> Vec<std::process::Child> {
    let exe = std::env::current_exe().unwrap();
    (0..world)
        .map(|rank| {
            Command::new(&exe)
                .envs(vars.iter().copied())
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

/// Waits for every rank to succeed; returns what each printed.
fn outputs(children: Vec<std::process::Child>) -> Vec<String> {
    children
        .into_iter()
        .enumerate()
        .map(|(rank, child)| {
            let output = child.wait_with_output().unwrap();
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            assert!(
                output.status.success(),
                "rank {rank}: {text}{}",
                String::from_utf8_lossy(&output.stderr)
            );
            text
        })
        .collect()
}

/// What a rank printed after `tag`.
fn printed(text: &str, tag: &str) -> String {
    text.lines()
        .find_map(|l| l.split_once(tag).map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("no {tag} printed: {text}"))
        .to_string()
}

/// The f32 values a rank wrote to `name` in `dir`.
fn read_f32s(dir: &Path, name: &str) -> Vec<f32> {
    let bytes = std::fs::read(dir.join(name)).unwrap();
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn write_f32s(path: &Path, values: &[f32]) {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, bytes).unwrap();
}

/// Runs `world` ranks; returns their losses, moment counts and final weights, by rank.
fn run_ranks(world: usize, dir: &Path) -> (Vec<Vec<f64>>, Vec<i64>, Vec<Vec<f32>>) {
    let texts = outputs(start_ranks("train", world, dir));
    let losses = texts
        .iter()
        .map(|t| serde_json::from_str(&printed(t, "LOSSES ")).unwrap())
        .collect();
    let moments = texts
        .iter()
        .map(|t| printed(t, "MOMENTS ").parse().unwrap())
        .collect();
    let weights = (0..world)
        .map(|rank| read_f32s(dir, &format!("weights-{rank}.bin")))
        .collect();
    (losses, moments, weights)
}

fn worst_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

fn assert_losses_match(got: &[f64], want: &[f64], what: &str) {
    assert_losses_within(got, want, 1e-5, what);
}

fn assert_losses_within(got: &[f64], want: &[f64], tolerance: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (step, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tolerance,
            "{what}, step {step}: loss {g} against {w}"
        );
    }
}

/// The one-process reference for the fully sharded runs: losses of `steps` steps from seed 0,
/// and the weights after `checkpoint_after` of them.
fn one_process(tied: bool, steps: u64, checkpoint_after: u64) -> (Vec<f64>, Vec<f32>) {
    let (mut preset, config) = setup();
    preset.model.tie_word_embeddings = tied;
    let model = Llama::new(&preset.model, 0, Device::Cpu).unwrap();
    let mut trainer = Trainer::new(model, config.clone()).unwrap();
    let mut at_checkpoint = Vec::new();
    let losses = (0..steps)
        .map(|s| {
            if s == checkpoint_after {
                at_checkpoint = weights(&trainer.model);
            }
            let batch = batch(s, &preset, &config);
            trainer.train_step(&batch).unwrap().loss
        })
        .collect();
    (losses, at_checkpoint)
}

#[test]
fn fully_sharded_ranks_train_save_and_reshard_as_one_process_does() {
    tch::set_num_threads(1);
    let (preset, config) = setup();
    let (expected, expected_weights) = one_process(true, STEPS + 2, STEPS);
    let parameters = preset.model.parameter_count() as i64;
    // 4 ranks train from the seed and save.
    let four = tempfile::tempdir().unwrap();
    let checkpoint = four.path().join("checkpoint");
    // A file where rank 0 is first asked to save: it cannot lay out the checkpoint's files.
    std::fs::write(four.path().join("blocked"), b"").unwrap();
    let vars = [("TEMPLAR_SHARDED_CHECKPOINT", checkpoint.to_str().unwrap())];
    let texts = outputs(start_ranks_with("full", 4, four.path(), &vars));
    // Every rank learnt of the failed save, and they stayed in step: the save after it worked.
    assert!(
        printed(&texts[0], "SAVE_REFUSED ").contains("blocked"),
        "{}",
        texts[0]
    );
    for text in &texts[1..] {
        assert!(
            printed(text, "SAVE_REFUSED ").contains("another rank failed to create the checkpoint"),
            "{text}"
        );
    }
    for (rank, text) in texts.iter().enumerate() {
        let losses: Vec<f64> = serde_json::from_str(&printed(text, "LOSSES ")).unwrap();
        assert_losses_match(
            &losses,
            &expected[..STEPS as usize],
            &format!("rank {rank} of 4"),
        );
        let held: f64 = printed(text, "PARAM_BYTES ").parse().unwrap();
        let share = held / (4 * parameters) as f64;
        assert!(share <= 0.26, "rank {rank} holds {share:.3} of the weights");
        let worst = worst_difference(
            &read_f32s(four.path(), &format!("weights-{rank}.bin")),
            &expected_weights,
        );
        assert!(
            worst <= 1e-5,
            "rank {rank} of 4: weights differ by up to {worst}"
        );
    }
    let moments: Vec<i64> = texts
        .iter()
        .map(|t| printed(t, "MOMENTS ").parse().unwrap())
        .collect();
    assert_eq!(moments.iter().sum::<i64>(), parameters, "{moments:?}");
    let saved = read_f32s(four.path(), "weights-0.bin");
    // Each rank read whole exactly the tensors it owns, with the trained values; set back from
    // their owners, the spans hold the initial weights bit for bit.
    let mut owned: Vec<(usize, Vec<f32>)> = (0..4)
        .flat_map(|rank| {
            let text = std::fs::read_to_string(four.path().join(format!("owned-{rank}.json")));
            let tensors: Vec<(usize, Vec<f32>)> = serde_json::from_str(&text.unwrap()).unwrap();
            assert!(tensors.iter().all(|(i, _)| i % 4 == rank), "rank {rank}");
            tensors
        })
        .collect();
    owned.sort_by_key(|(i, _)| *i);
    assert_eq!(owned.len(), preset.model.num_hidden_layers * 9 + 2);
    let owned: Vec<f32> = owned.into_iter().flat_map(|(_, v)| v).collect();
    assert_eq!(owned, saved, "the owned tensors are the weights");
    let mut initial = weights(&Llama::new(&preset.model, 0, Device::Cpu).unwrap());
    initial[0] = -0.0;
    let bits = |values: &[f32]| values.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    for rank in 0..4 {
        let reset = read_f32s(four.path(), &format!("reset-{rank}.bin"));
        assert!(
            bits(&reset) == bits(&initial),
            "rank {rank}: the spans set from owners are not the initial weights bit for bit"
        );
    }
    // 2 ranks load what 4 saved, hold the same weights bit for bit, and take the next steps as
    // one process does (the moments came through too).
    let two = tempfile::tempdir().unwrap();
    let texts = outputs(start_ranks_with("full-load", 2, two.path(), &vars));
    for (rank, text) in texts.iter().enumerate() {
        assert_eq!(
            read_f32s(two.path(), &format!("loaded-{rank}.bin")),
            saved,
            "rank {rank} of 2"
        );
        let losses: Vec<f64> = serde_json::from_str(&printed(text, "LOSSES ")).unwrap();
        assert_losses_match(
            &losses,
            &expected[STEPS as usize..],
            &format!("rank {rank} of 2"),
        );
    }
    // One process loads it as its own checkpoint.
    let mut model = load_model(&checkpoint, Device::Cpu).unwrap();
    assert_eq!(weights(&model), saved, "one process");
    let mut optimizer = templar_engine::AdamW::new(&model.params, &config).unwrap();
    load_optimizer(&checkpoint, &mut optimizer, &model.params).unwrap();
    // The ranks, each writing its own spans, wrote the very bytes one process writes.
    let again = four.path().join("one-process");
    templar_engine::save_model(&again, &model).unwrap();
    templar_engine::save_optimizer(&again, &optimizer, model.params.names()).unwrap();
    let mut files: Vec<_> = std::fs::read_dir(&checkpoint)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    files.sort();
    let mut theirs: Vec<_> = std::fs::read_dir(&again)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    theirs.sort();
    assert_eq!(files, theirs, "the files of the save");
    for name in &files {
        let bytes = |dir: &Path| std::fs::read(dir.join(name)).unwrap();
        assert!(bytes(&checkpoint) == bytes(&again), "{name:?} differs");
    }
    let next: Vec<f64> = (STEPS..STEPS + 2)
        .map(|s| {
            let batch = batch(s, &preset, &config);
            templar_engine::train_step(&mut model, &mut optimizer, &config, &batch)
                .unwrap()
                .loss
        })
        .collect();
    assert_losses_match(&next, &expected[STEPS as usize..], "one process");
}

#[test]
fn a_ranked_node_s_state_resumes_fully_sharded_on_another_number_of_ranks() {
    tch::set_num_threads(1);
    let (expected, _) = one_process(true, STEPS + 2, STEPS);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let vars = [("TEMPLAR_SHARDED_CHECKPOINT", state.to_str().unwrap())];
    // 2 ranks of ZeRO-2 (whole weights, moments in buckets) save; 4 fully sharded ranks resume.
    outputs(start_ranks_with("train", 2, dir.path(), &vars));
    let four = tempfile::tempdir().unwrap();
    for (rank, text) in outputs(start_ranks_with("full-load", 4, four.path(), &vars))
        .iter()
        .enumerate()
    {
        let losses: Vec<f64> = serde_json::from_str(&printed(text, "LOSSES ")).unwrap();
        assert_losses_match(
            &losses,
            &expected[STEPS as usize..],
            &format!("rank {rank} of 4"),
        );
    }
}

#[test]
fn fully_sharded_ranks_with_their_own_head_train_as_one_process_does() {
    tch::set_num_threads(1);
    let (expected, _) = one_process(false, STEPS, 0);
    let dir = tempfile::tempdir().unwrap();
    let vars = [("TEMPLAR_SHARDED_UNTIED", "1")];
    for (rank, text) in outputs(start_ranks_with("full", 2, dir.path(), &vars))
        .iter()
        .enumerate()
    {
        let losses: Vec<f64> = serde_json::from_str(&printed(text, "LOSSES ")).unwrap();
        assert_losses_match(&losses, &expected, &format!("rank {rank} of 2"));
    }
    // Gathered in bf16, as on CUDA: the weights the layers see are rounded to bf16, so the
    // losses move by that rounding (about 2e-4 here), no more.
    let dir = tempfile::tempdir().unwrap();
    let vars = [
        ("TEMPLAR_SHARDED_UNTIED", "1"),
        ("TEMPLAR_SHARDED_WIRE", "bf16"),
    ];
    for (rank, text) in outputs(start_ranks_with("full", 2, dir.path(), &vars))
        .iter()
        .enumerate()
    {
        let losses: Vec<f64> = serde_json::from_str(&printed(text, "LOSSES ")).unwrap();
        assert_losses_within(&losses, &expected, 2e-3, &format!("bf16, rank {rank} of 2"));
        assert!(
            losses.iter().zip(&expected).any(|(g, w)| g != w),
            "bf16 changed nothing"
        );
    }
}

/// One rank of the fully sharded scenarios: `full` trains [`STEPS`] steps from seed 0 and saves
/// into `TEMPLAR_SHARDED_CHECKPOINT` when it is set; `full-load` loads from there and takes two
/// more steps (the second's loss shows the loaded moments' part in the first's update).
fn fully_sharded_rank(scenario: &str, group: ProcessGroup, dir: &Path) {
    let (mut preset, config) = setup();
    preset.model.tie_word_embeddings = std::env::var("TEMPLAR_SHARDED_UNTIED").is_err();
    let (rank, world) = (group.rank(), group.world());
    let checkpoint = std::env::var("TEMPLAR_SHARDED_CHECKPOINT").ok();
    let (mut trainer, steps) = if scenario == "full-load" {
        let from = Path::new(checkpoint.as_deref().unwrap());
        let mut trainer =
            FullyShardedTrainer::load(from, config.clone(), group, Device::Cpu).unwrap();
        let loaded: Vec<f32> = trainer
            .gather_weights()
            .unwrap()
            .into_iter()
            .flat_map(|b| b.data)
            .collect();
        write_f32s(&dir.join(format!("loaded-{rank}.bin")), &loaded);
        (trainer, STEPS..STEPS + 2)
    } else {
        let mut trainer =
            FullyShardedTrainer::new(&preset.model, 0, config.clone(), group, Device::Cpu).unwrap();
        if std::env::var("TEMPLAR_SHARDED_WIRE").is_ok_and(|w| w == "bf16") {
            trainer = trainer.with_wire_kind(tch::Kind::BFloat16);
        }
        (trainer, 0..STEPS)
    };
    let losses: Vec<f64> = steps
        .map(|s| {
            trainer
                .train_step(&batch(s, &preset, &config))
                .unwrap()
                .loss
        })
        .collect();
    println!("LOSSES {}", serde_json::to_string(&losses).unwrap());
    println!("MOMENTS {}", trainer.moment_values());
    println!("PARAM_BYTES {}", trainer.param_bytes());
    let weights: Vec<f32> = trainer
        .gather_weights()
        .unwrap()
        .into_iter()
        .flat_map(|b| b.data)
        .collect();
    write_f32s(&dir.join(format!("weights-{rank}.bin")), &weights);
    let blocked = dir.join("blocked");
    if blocked.exists() {
        let refused = trainer.save(&blocked.join("checkpoint")).unwrap_err();
        println!("SAVE_REFUSED {refused}");
    }
    if let (Some(to), "full") = (checkpoint, scenario) {
        trainer.save(Path::new(&to)).unwrap();
    }
    // The outer step's moves: each rank reads the tensors it owns (round robin), whole, and
    // writes the spans back from owners — here the initial weights, each owner making its own.
    let owns = |i: usize| i % world == rank;
    let numels: Vec<usize> = templar_engine::parameter_shapes(&preset.model)
        .iter()
        .map(|(_, shape)| shape.iter().product::<i64>() as usize)
        .collect();
    let mut owned = Vec::new();
    trainer
        .visit_owned(owns, |i, whole| {
            let mut values = vec![0f32; numels[i]];
            whole.read_range(0, &mut values)?;
            owned.push((i, values));
            Ok(())
        })
        .unwrap();
    let json = serde_json::to_string(&owned).unwrap();
    std::fs::write(dir.join(format!("owned-{rank}.json")), json).unwrap();
    let std = preset.model.initializer_range;
    let names: Vec<String> = templar_engine::parameter_shapes(&preset.model)
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    trainer
        .set_from_owned(owns, |i, start, out| {
            templar_engine::fill_initial_range(&names[i], std, 0, i as u64, start, out);
            if (i, start) == (0, 0) {
                // A −0 survives the sums.
                out[0] = -0.0;
            }
            Ok(())
        })
        .unwrap();
    let reset: Vec<f32> = trainer
        .gather_weights()
        .unwrap()
        .into_iter()
        .flat_map(|b| b.data)
        .collect();
    write_f32s(&dir.join(format!("reset-{rank}.bin")), &reset);
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
            let worst = worst_difference(weights, &expected_weights);
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
    let scenario = std::env::var("TEMPLAR_SHARDED_SCENARIO").unwrap();
    if scenario.starts_with("full") {
        return fully_sharded_rank(&scenario, group, &dir);
    }
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
    if scenario == "dies" {
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
    write_f32s(
        &dir.join(format!("weights-{rank}.bin")),
        &weights(&trainer.model),
    );
    // A ranked node's state: rank 0's weights, every rank's moments.
    if let Ok(to) = std::env::var("TEMPLAR_SHARDED_CHECKPOINT") {
        let to = Path::new(&to);
        std::fs::create_dir_all(to).unwrap();
        if rank == 0 {
            templar_engine::save_model(to, &trainer.model).unwrap();
        }
        trainer.optimizer.save_moments(to).unwrap();
    }
}
