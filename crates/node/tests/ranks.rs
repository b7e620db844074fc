//! A node over Gloo ranks against one process. Ranks are real processes (the test binary starts
//! copies of itself through the `rank` test, which does nothing unless `TEMPLAR_RANKS_SCENARIO`
//! is set) meeting in a file store; rank 0 drives its replica as a miner would, and the others
//! follow its commands ([`ranks::follow`]).
//!
//! - `exact`: every rank trains the same batches before joining, so that the live weights are
//!   the same bits, and the outer step alone is compared: payload bytes and error feedback
//!   identical to one process at 2 and 4 ranks.
//! - `node`: two windows of sharded training, outer step and apply; the state saved after the
//!   first. With `TEMPLAR_RANKS_KILL`, rank 1 is killed during the second window's training.
//! - `resume`: fresh ranks load that state and take the second window again.
//! - `judge`: a validator over ranks judges two miners' payloads (each applied alone, measured,
//!   undone) and applies their aggregate, against one process.
//! - `full-shard`: two outer steps of a fully sharded node (no rank holds the whole model) from
//!   live weights one process trained, each followed by applying the payloads so far: payload
//!   bytes, error feedback, and the fingerprints after each identical to one process at 2 and
//!   4 ranks.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use templar_codec::{Payload, encode};
use templar_dist::{GroupOptions, Member, ProcessGroup, Store, rendezvous};
use templar_engine::memory::Role;
use templar_engine::{Batch, Device, FullyShardedTrainer, Placement, Preset};
use templar_node::config::NetworkConfig;
use templar_node::fingerprint::Fingerprint;
use templar_node::ranks::{self, FullyShardedReplica, SavedBy, TensorOwner};
use templar_node::replica::Replica;
use templar_node::saving::ERROR_FEEDBACK_FILE;
use templar_node::state::write_f32s;
use templar_node::undo::ApplyUndo;

fn config() -> NetworkConfig {
    NetworkConfig::defaults("ranks-test", Preset::load("tiny").unwrap(), "unused")
}

/// Four rows, so that 2 and 4 ranks each take a whole share.
fn batch(config: &NetworkConfig, seed: u64) -> Batch {
    let (rows, seq) = (4, 32);
    let vocab = config.model.model.vocab_size as u64;
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5eed;
    let tokens: Vec<i64> = (0..rows * seq)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) % vocab) as i64
        })
        .collect();
    Batch::from_tokens(&tokens, rows, seq, vocab as usize).unwrap()
}

/// Two inner steps of window `window`; their losses.
fn train_window(replica: &mut Replica, config: &NetworkConfig, window: u64) -> Vec<f64> {
    (0..2)
        .map(|step| {
            replica
                .train_step(&batch(config, window * 10 + step))
                .unwrap()
                .loss
        })
        .collect()
}

fn numels(replica: &Replica) -> Vec<usize> {
    replica.base().iter().map(Vec::len).collect()
}

fn f32_bytes(values: impl IntoIterator<Item = f32>) -> Vec<u8> {
    values.into_iter().flat_map(f32::to_le_bytes).collect()
}

fn owned_bytes(ef: &[Vec<f32>], owner: TensorOwner) -> Vec<u8> {
    f32_bytes(
        ef.iter()
            .enumerate()
            .filter(|(i, _)| owner.owns(*i))
            .flat_map(|(_, e)| e.iter().copied()),
    )
}

fn start(scenario: &str, world: usize, dir: &Path, kill: bool) -> Vec<Child> {
    let exe = std::env::current_exe().unwrap();
    let store = dir.join(format!("store-{scenario}-{world}"));
    (0..world)
        .map(|rank| {
            let mut command = Command::new(&exe);
            command
                .args(["--exact", "rank", "--nocapture", "--test-threads=1"])
                .env("TEMPLAR_RANKS_SCENARIO", scenario)
                .env("TEMPLAR_RANKS_RANK", rank.to_string())
                .env("TEMPLAR_RANKS_WORLD", world.to_string())
                .env("TEMPLAR_RANKS_DIR", dir)
                .env("TEMPLAR_RANKS_STORE", &store)
                .env("OMP_NUM_THREADS", "1")
                .env("RAYON_NUM_THREADS", "1")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            if kill {
                command.env("TEMPLAR_RANKS_KILL", "1");
            }
            command.spawn().unwrap()
        })
        .collect()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn run(scenario: &str, world: usize, dir: &Path) {
    for (rank, child) in start(scenario, world, dir, false).into_iter().enumerate() {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{scenario}, rank {rank}: {}",
            text(&output)
        );
    }
}

fn read(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn the_outer_step_over_ranks_makes_one_process_payload() {
    templar_engine::set_threads(1);
    let config = config();
    let mut replica = Replica::new(&config, Device::Cpu, Role::Miner).unwrap();
    let mut ef = TensorOwner::ALONE.error_feedback(numels(&replica));
    train_window(&mut replica, &config, 0);
    let payload = replica.outer_step(&mut ef).unwrap();
    let expected = encode(&replica.schema, &payload, config.codec.index_coding);
    for world in [2, 4] {
        let dir = tempfile::tempdir().unwrap();
        run("exact", world, dir.path());
        assert!(
            read(dir.path(), "payload.bin") == expected,
            "{world} ranks: payload bytes differ"
        );
        for rank in 0..world {
            let owner = TensorOwner { rank, world };
            assert!(
                read(dir.path(), &format!("ef-{rank}.bin")) == owned_bytes(&ef, owner),
                "{world} ranks, rank {rank}: error feedback differs"
            );
        }
    }
}

#[test]
fn a_fully_sharded_outer_step_makes_one_process_payload() {
    templar_engine::set_threads(1);
    let config = config();
    let coding = config.codec.index_coding;
    let mut replica = Replica::new(&config, Device::Cpu, Role::Miner).unwrap();
    let mut ef = TensorOwner::ALONE.error_feedback(numels(&replica));
    train_window(&mut replica, &config, 0);
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    for dir in &dirs {
        // The live weights the ranks start from: one process's, so that the bits are the same.
        templar_engine::save_model(&dir.path().join("live"), &replica.model).unwrap();
    }
    // Two windows: the first payload applied alone; the second, made from the error feedback
    // the first left (the live weights are the base by then), applied with the first.
    let first = replica.outer_step(&mut ef).unwrap();
    let put_back = replica.fingerprint().to_string();
    replica.apply_aggregate(&[&first]).unwrap();
    let applied_1 = replica.fingerprint().to_string();
    let second = replica.outer_step(&mut ef).unwrap();
    replica.apply_aggregate(&[&first, &second]).unwrap();
    let applied_2 = replica.fingerprint().to_string();
    assert_ne!(applied_1, put_back);
    assert_ne!(applied_2, applied_1);
    let payloads = [&first, &second].map(|p| encode(&replica.schema, p, coding));
    for (world, dir) in [2, 4].into_iter().zip(&dirs) {
        run("full-shard", world, dir.path());
        for (k, expected) in payloads.iter().enumerate() {
            let got = read(dir.path(), &format!("payload-{}.bin", k + 1));
            assert!(got == *expected, "{world} ranks: payload {} differs", k + 1);
        }
        for rank in 0..world {
            let owner = TensorOwner { rank, world };
            assert!(
                read(dir.path(), &format!("ef-{rank}.bin")) == owned_bytes(&ef, owner),
                "{world} ranks, rank {rank}: error feedback differs"
            );
            // The live weights put back, then the model after each apply: the fingerprint made
            // from the owners' hashes and that of the live spans gathered.
            for (name, expected) in [
                ("put-back-live", &put_back),
                ("applied-1", &applied_1),
                ("applied-1-live", &applied_1),
                ("applied-2", &applied_2),
                ("reverted-2", &applied_1),
                ("applied-2-live", &applied_2),
            ] {
                let got = read(dir.path(), &format!("{name}.rank-{rank}"));
                let got = String::from_utf8(got).unwrap();
                assert_eq!(&got, expected, "{world} ranks, {name}, rank {rank}");
            }
        }
    }
}

#[test]
fn a_rank_of_a_fully_sharded_node_that_refuses_its_inputs_fails_the_step_on_every_rank() {
    let dir = tempfile::tempdir().unwrap();
    let replica = Replica::new(&config(), Device::Cpu, Role::Miner).unwrap();
    templar_engine::save_model(&dir.path().join("live"), &replica.model).unwrap();
    let started = Instant::now();
    for (rank, child) in start("full-shard-bad", 2, dir.path(), false)
        .into_iter()
        .enumerate()
    {
        let output = child.wait_with_output().unwrap();
        let said = text(&output);
        assert!(output.status.success(), "rank {rank}: {said}");
        assert!(
            said.contains("REFUSED") && said.contains("rank 1 of 2: the error-feedback buffer"),
            "rank {rank}: {said}"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(30));
}

/// One rank of `full-shard`: the live weights from `live/`, spans only; the base the replica's
/// initial model, of which the rank keeps the tensors it owns.
fn full_shard_rank(config: &NetworkConfig, group: ProcessGroup, dir: &Path) {
    let fresh = Replica::new(config, Device::Cpu, Role::Miner).unwrap();
    let owner = TensorOwner::of(&group);
    let rank = owner.rank;
    let mut base: Vec<Vec<f32>> = fresh
        .base()
        .iter()
        .enumerate()
        .map(|(i, t)| if owner.owns(i) { t.clone() } else { Vec::new() })
        .collect();
    let mut ef = owner.error_feedback(numels(&fresh));
    let train = config.model.train.clone();
    let live = dir.join("live");
    let mut trainer = FullyShardedTrainer::load(&live, train, group, Device::Cpu).unwrap();
    // Tensors cut into pieces when they are put back.
    trainer.set_piece(1000);
    let (schema, coding, lr) = (&fresh.schema, config.codec.index_coding, fresh.outer_lr);
    if std::env::var("TEMPLAR_RANKS_SCENARIO").is_ok_and(|s| s == "full-shard-bad") {
        // Rank 1's error feedback is of another layout: every rank refuses, none waits.
        if rank == 1 {
            ef[1].pop();
        }
        let refused = ranks::outer_step_on_shards(&mut trainer, schema, coding, &base, &mut ef);
        println!("REFUSED {}", refused.unwrap_err());
        return;
    }
    let write = |name: &str, text: String| {
        std::fs::write(dir.join(format!("{name}.rank-{rank}")), text).unwrap();
    };
    let mut payloads = Vec::new();
    for window in 1..=2 {
        let bytes = ranks::outer_step_on_shards(&mut trainer, schema, coding, &base, &mut ef);
        let mut bytes = bytes.unwrap().unwrap_or_default();
        if rank == 0 {
            std::fs::write(dir.join(format!("payload-{window}.bin")), &bytes).unwrap();
        }
        if window == 1 {
            write("put-back-live", live_fingerprint(&mut trainer));
        }
        // Every rank gets rank 0's payload, as a node's leader hands round its gather.
        trainer
            .with_group(|group| {
                group
                    .broadcast_bytes(&mut bytes, 0)
                    .map_err(templar_engine::EngineError::from)
            })
            .unwrap();
        payloads.push(templar_codec::decode(schema, &bytes).unwrap());
        let peers: Vec<&Payload> = payloads.iter().collect();
        let mut undo = ApplyUndo::default();
        let apply =
            |trainer: &mut FullyShardedTrainer, base: &mut [Vec<f32>], undo: &mut ApplyUndo| {
                ranks::apply_aggregate_on_shards(trainer, schema, lr, base, &peers, undo)
            };
        let applied = apply(&mut trainer, &mut base, &mut undo);
        write(&format!("applied-{window}"), applied.unwrap().to_string());
        if window == 2 {
            // Taken back, each rank its own tensors, the model is again the first window's;
            // applied again, the second's.
            undo.revert(&mut base);
            let reverted = trainer
                .with_group(|group| ranks::fingerprint_on_shards(group, schema, &base))
                .unwrap();
            write("reverted-2", reverted.to_string());
            let mut again = ApplyUndo::default();
            apply(&mut trainer, &mut base, &mut again).unwrap();
        }
        write(
            &format!("applied-{window}-live"),
            live_fingerprint(&mut trainer),
        );
    }
    std::fs::write(dir.join(format!("ef-{rank}.bin")), owned_bytes(&ef, owner)).unwrap();
}

/// The fingerprint of a fully sharded trainer's live weights, gathered whole (a test's check).
fn live_fingerprint(trainer: &mut FullyShardedTrainer) -> String {
    Fingerprint::of(&trainer.gather_weights().unwrap()).to_string()
}

#[test]
fn a_killed_rank_stops_the_node_which_resumes_from_its_saved_state() {
    templar_engine::set_threads(1);
    // One process, for the first window's losses.
    let config = config();
    let mut alone = Replica::new(&config, Device::Cpu, Role::Miner).unwrap();
    let alone_losses = train_window(&mut alone, &config, 0);

    // Uninterrupted: two windows on two ranks.
    let whole = tempfile::tempdir().unwrap();
    run("node", 2, whole.path());
    let losses: Vec<f64> = serde_json::from_slice(&read(whole.path(), "losses-0.json")).unwrap();
    for (got, want) in losses.iter().zip(&alone_losses) {
        assert!((got - want).abs() <= 1e-5, "loss {got} against {want}");
    }
    let after_two = read(whole.path(), "fingerprint-1");
    // Every rank holds the same model after each window.
    assert_eq!(read(whole.path(), "fingerprint-1.rank-1"), after_two);

    // Rank 1 killed in the second window: rank 0 stops with an error that says a rank is gone
    // (or, had it stalled instead, that the ranks timed out).
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut children = start("node", 2, dir.path(), true);
    let marker = dir.path().join("window-1-started");
    while !marker.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "window 1 never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    children[1].kill().unwrap();
    let mut children = children.into_iter();
    let leader = children.next().unwrap().wait_with_output().unwrap();
    let _ = children.next().unwrap().wait();
    let said = text(&leader);
    assert!(!leader.status.success(), "rank 0 went on: {said}");
    assert!(
        said.contains("a peer rank is gone") || said.contains("timed out"),
        "{said}"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_eq!(
        read(dir.path(), "fingerprint-0"),
        read(whole.path(), "fingerprint-0")
    );

    // Fresh ranks resume from the state saved after the first window, and the second window
    // ends on the uninterrupted run's model, bit for bit.
    run("resume", 2, dir.path());
    assert_eq!(read(dir.path(), "fingerprint-1"), after_two);
    assert_eq!(read(dir.path(), "fingerprint-1.rank-1"), after_two);

    // Four ranks resume the state two saved: every tensor's error feedback is found (the
    // payload it makes is two ranks' byte for byte) and training goes on.
    run("reshard-2", 2, dir.path());
    run("reshard-4", 4, dir.path());
    let payload = read(dir.path(), "payload-reshard-2.bin");
    assert!(!payload.is_empty());
    assert_eq!(read(dir.path(), "payload-reshard-4.bin"), payload);
}

/// One process's outer step, encoded.
fn outer_step_bytes(replica: &mut Replica, ef: &mut [Vec<f32>], config: &NetworkConfig) -> Vec<u8> {
    let payload = replica.outer_step(ef).unwrap();
    encode(&replica.schema, &payload, config.codec.index_coding)
}

/// A miner's state crosses between one process and ranks both ways: what one process saved,
/// two ranks load, and what they save, one process loads; each then makes the payload the other
/// would have made from the same state (the outer step taken at once, so that the payload is
/// the error feedback's alone).
#[test]
fn a_state_crosses_between_one_process_and_ranks() {
    templar_engine::set_threads(1);
    let config = config();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state-one");
    std::fs::create_dir_all(&state).unwrap();
    // One process trains a window and keeps its error feedback, and saves as a miner does.
    let mut alone = Replica::new(&config, Device::Cpu, Role::Miner).unwrap();
    let mut ef: Vec<Vec<f32>> = numels(&alone).into_iter().map(|n| vec![0.0; n]).collect();
    window_of(&mut alone, &config, &mut ef, 0, dir.path());
    train_window(&mut alone, &config, 1);
    alone.outer_step(&mut ef).unwrap();
    alone.save_weights(&state, u64::MAX).unwrap();
    alone.save_optimizer(&state).unwrap();
    let digest = write_f32s(&state.join(ERROR_FEEDBACK_FILE), &ef).unwrap();
    std::fs::write(dir.path().join("ef-digest"), &digest).unwrap();
    let expected = outer_step_bytes(&mut alone, &mut ef, &config);

    run("from-one", 2, dir.path());
    assert_eq!(read(dir.path(), "payload-from-one.bin"), expected);

    // One process resumes what the two ranks saved.
    let saved = dir.path().join("state-ranks");
    let mut back = Replica::resume(&config, Device::Cpu, Role::Miner, &saved).unwrap();
    back.load_optimizer_saved_by(&saved, Some(2)).unwrap();
    let all = numels(&back);
    let mut ef =
        ranks::read_error_feedback(&saved, &all, TensorOwner::ALONE, &SavedBy::Ranks(2)).unwrap();
    assert_eq!(
        outer_step_bytes(&mut back, &mut ef, &config),
        read(dir.path(), "payload-after-save.bin")
    );
    // And trains on with the moments gathered from the ranks' files.
    let losses = train_window(&mut back, &config, 2);

    // The same through a fully sharded node, of two ranks and of one: it loads what one
    // process saved and makes its payload; one process resumes what it saved, makes its next
    // payload, and trains on with the very moments the ZeRO-2 ranks carried.
    for world in [2, 1] {
        run("from-one-full", world, dir.path());
        let read = |name: &str| read(dir.path(), &format!("{name}-{world}"));
        assert_eq!(read("payload-full-from-one"), expected, "{world} ranks");
        let saved = dir.path().join(format!("state-full-{world}"));
        let by = SavedBy::FullyShardedRanks(world);
        let mut full = Replica::resume(&config, Device::Cpu, Role::Miner, &saved).unwrap();
        full.load_optimizer_saved_by(&saved, by.moments_ranks())
            .unwrap();
        let mut ef = ranks::read_error_feedback(&saved, &all, TensorOwner::ALONE, &by).unwrap();
        let bytes = read("payload-after-full-save");
        assert_eq!(outer_step_bytes(&mut full, &mut ef, &config), bytes);
        assert_eq!(train_window(&mut full, &config, 2), losses, "{world} ranks");
        // The ranks applied that payload as one process does.
        let mut applied = Replica::resume(&config, Device::Cpu, Role::Miner, &saved).unwrap();
        let payload = templar_codec::decode(&applied.schema, &bytes).unwrap();
        applied.apply_aggregate(&[&payload]).unwrap();
        let fingerprint = String::from_utf8(read("fingerprint-full-applied")).unwrap();
        assert_eq!(applied.fingerprint().to_string(), fingerprint);
    }
}

/// One rank of `from-one-full`: a fully sharded node (rank 0 drives it, the others follow its
/// commands) loads the state one process saved, takes the outer step at once, saves its own
/// state and takes the outer step again.
fn full_shard_state_rank(config: &NetworkConfig, group: ProcessGroup, dir: &Path) {
    let (rank, world) = (group.rank(), group.world());
    let mut replica =
        FullyShardedReplica::new(config, Placement::from(Device::Cpu), group).unwrap();
    let mut ef = replica.fresh_error_feedback();
    if rank != 0 {
        ranks::follow_on_shards(&mut replica, config, &mut ef).unwrap();
        return;
    }
    let digest = String::from_utf8(read(dir, "ef-digest")).unwrap();
    let saved = SavedBy::OneProcess {
        error_feedback_blake3: digest,
    };
    replica
        .load_state(&mut ef, &dir.join("state-one"), &saved)
        .unwrap();
    let named = |name: &str| dir.join(format!("{name}-{world}"));
    let outer_step = |replica: &mut FullyShardedReplica, ef: &mut [Vec<f32>], name: &str| {
        let payload = replica.outer_step(ef).unwrap().unwrap();
        let bytes = encode(&replica.schema, &payload, config.codec.index_coding);
        std::fs::write(named(name), bytes).unwrap();
    };
    outer_step(&mut replica, &mut ef, "payload-full-from-one");
    let state = named("state-full");
    std::fs::create_dir_all(&state).unwrap();
    replica.save_state(&ef, &state).unwrap();
    outer_step(&mut replica, &mut ef, "payload-after-full-save");
    // Applied by the ranks, each keeping only its own tensors of the payload.
    let bytes = std::fs::read(named("payload-after-full-save")).unwrap();
    let payload = templar_codec::decode(&replica.schema, &bytes).unwrap();
    replica.apply_aggregate(&[&payload]).unwrap();
    let fingerprint = replica.fingerprint().to_string();
    std::fs::write(named("fingerprint-full-applied"), fingerprint).unwrap();
    replica.release().unwrap();
}

/// Two miners' payloads from the initial model (one process each, different batches).
fn miners_payloads(config: &NetworkConfig) -> Vec<templar_codec::Payload> {
    (0..2)
        .map(|miner| {
            let mut replica = Replica::new(config, Device::Cpu, Role::Miner).unwrap();
            train_window(&mut replica, config, 100 + miner);
            let mut ef = TensorOwner::ALONE.error_feedback(numels(&replica));
            replica.outer_step(&mut ef).unwrap()
        })
        .collect()
}

/// What a validator measures of `payloads`: the loss of a batch before, with each applied
/// alone and after restoring, then the fingerprint once their aggregate is applied.
fn judge(replica: &mut Replica, config: &NetworkConfig) -> (Vec<f64>, String) {
    let payloads = miners_payloads(config);
    let all: Vec<&templar_codec::Payload> = payloads.iter().collect();
    let probe = batch(config, 7);
    let mut losses = vec![replica.evaluate(&probe, 1000).unwrap().mean_loss()];
    replica.share_candidates(&all).unwrap();
    for (i, peer) in all.iter().enumerate() {
        // Clipped to the first candidate's norms, or to every candidate's.
        replica.apply_one(peer, &all, i % 2, 0.5).unwrap();
        losses.push(replica.evaluate(&probe, 1000).unwrap().mean_loss());
        replica.restore().unwrap();
    }
    losses.push(replica.evaluate(&probe, 1000).unwrap().mean_loss());
    replica.apply_aggregate(&all).unwrap();
    (losses, replica.fingerprint().to_string())
}

#[test]
fn a_validator_over_ranks_measures_what_one_process_does() {
    templar_engine::set_threads(1);
    let config = config();
    let mut alone = Replica::new(&config, Device::Cpu, Role::Validator).unwrap();
    let (expected, fingerprint) = judge(&mut alone, &config);
    let dir = tempfile::tempdir().unwrap();
    run("judge", 3, dir.path());
    let losses: Vec<f64> = serde_json::from_slice(&read(dir.path(), "judged.json")).unwrap();
    assert_eq!(losses.len(), expected.len());
    for (got, want) in losses.iter().zip(&expected) {
        // Each rank's share is a separate f32 forward pass, its total summed in another order.
        assert!(
            (got - want).abs() <= 1e-6 * want.abs(),
            "{got} against {want}"
        );
    }
    // Each update changed the loss, and restoring undid it.
    assert!(expected[1] != expected[0] && expected[2] != expected[0]);
    assert_eq!(expected[3], expected[0]);
    for rank in 0..3 {
        let name = if rank == 0 {
            "fingerprint-judged".to_string()
        } else {
            format!("fingerprint-0.rank-{rank}")
        };
        assert_eq!(
            String::from_utf8(read(dir.path(), &name)).unwrap(),
            fingerprint
        );
    }
}

/// One rank of a scenario; nothing outside of one.
#[test]
fn rank() {
    let Ok(scenario) = std::env::var("TEMPLAR_RANKS_SCENARIO") else {
        return;
    };
    templar_engine::set_threads(1);
    let var = |name: &str| std::env::var(name).unwrap();
    let (rank, world): (usize, usize) = (
        var("TEMPLAR_RANKS_RANK").parse().unwrap(),
        var("TEMPLAR_RANKS_WORLD").parse().unwrap(),
    );
    let dir = PathBuf::from(var("TEMPLAR_RANKS_DIR"));
    let timeout = Duration::from_secs(60);
    let store = Store::file(Path::new(&var("TEMPLAR_RANKS_STORE")), timeout).unwrap();
    rendezvous(&store, &Member::new(rank, world, "ranks test"), timeout).unwrap();
    let options = GroupOptions {
        timeout,
        threads: 1,
    };
    let group = ProcessGroup::gloo(&store, rank, world, &options).unwrap();
    let config = config();
    if scenario == "from-one-full" {
        return full_shard_state_rank(&config, group, &dir);
    }
    if scenario.starts_with("full-shard") {
        return full_shard_rank(&config, group, &dir);
    }
    let role = if scenario == "judge" {
        Role::Validator
    } else {
        Role::Miner
    };
    let mut replica = if scenario == "exact" {
        // Trained alone first, so that every rank's live weights are the same bits.
        let mut replica = Replica::new(&config, Device::Cpu, Role::Miner).unwrap();
        train_window(&mut replica, &config, 0);
        replica.join_ranks(group).unwrap();
        replica
    } else {
        Replica::new_ranked(&config, Device::Cpu, role, group).unwrap()
    };
    let owner = replica.owner();
    let mut ef = owner.error_feedback(numels(&replica));
    if rank != 0 {
        ranks::follow(&mut replica, &config, &mut ef).unwrap();
        let fingerprint = replica.fingerprint().to_string();
        let name = format!("fingerprint-{}.rank-{rank}", last_window(&scenario));
        std::fs::write(dir.join(name), fingerprint).unwrap();
        std::fs::write(dir.join(format!("ef-{rank}.bin")), owned_bytes(&ef, owner)).unwrap();
        return;
    }
    match scenario.as_str() {
        "exact" => {
            let payload = replica.outer_step(&mut ef).unwrap();
            let bytes = encode(&replica.schema, &payload, config.codec.index_coding);
            std::fs::write(dir.join("payload.bin"), bytes).unwrap();
        }
        "node" => {
            for window in 0..2 {
                if window == 1 {
                    std::fs::write(dir.join("window-1-started"), b"").unwrap();
                    if std::env::var("TEMPLAR_RANKS_KILL").is_ok() {
                        // Steps until the killed rank is missed.
                        for step in 0.. {
                            if let Err(error) = replica.train_step(&batch(&config, 10 + step)) {
                                eprintln!("STOPPED {error}");
                                std::process::exit(1);
                            }
                        }
                    }
                }
                let losses = window_of(&mut replica, &config, &mut ef, window, &dir);
                std::fs::write(
                    dir.join(format!("losses-{window}.json")),
                    serde_json::to_vec(&losses).unwrap(),
                )
                .unwrap();
                if window == 0 {
                    let state = dir.join("state");
                    std::fs::create_dir_all(&state).unwrap();
                    replica.save_weights(&state, u64::MAX).unwrap();
                    ranks::save_node_state(&mut replica, &ef, &state).unwrap();
                }
            }
        }
        "judge" => {
            let (losses, fingerprint) = judge(&mut replica, &config);
            std::fs::write(
                dir.join("judged.json"),
                serde_json::to_vec(&losses).unwrap(),
            )
            .unwrap();
            std::fs::write(dir.join("fingerprint-judged"), fingerprint).unwrap();
        }
        "resume" => {
            let state = dir.join("state");
            replica.load_weights(&state).unwrap();
            ranks::load_node_state(&mut replica, &mut ef, &state, &SavedBy::Ranks(2)).unwrap();
            window_of(&mut replica, &config, &mut ef, 1, &dir);
        }
        "from-one" => {
            // The state one process saved, loaded by these ranks: the outer step at once, then
            // their own state saved, and the outer step again.
            let state = dir.join("state-one");
            let digest = String::from_utf8(read(&dir, "ef-digest")).unwrap();
            replica.load_weights(&state).unwrap();
            let saved = SavedBy::OneProcess {
                error_feedback_blake3: digest,
            };
            ranks::load_node_state(&mut replica, &mut ef, &state, &saved).unwrap();
            let payload = replica.outer_step(&mut ef).unwrap();
            let bytes = encode(&replica.schema, &payload, config.codec.index_coding);
            std::fs::write(dir.join("payload-from-one.bin"), bytes).unwrap();
            let state = dir.join("state-ranks");
            std::fs::create_dir_all(&state).unwrap();
            replica.save_weights(&state, u64::MAX).unwrap();
            ranks::save_node_state(&mut replica, &ef, &state).unwrap();
            let payload = replica.outer_step(&mut ef).unwrap();
            let bytes = encode(&replica.schema, &payload, config.codec.index_coding);
            std::fs::write(dir.join("payload-after-save.bin"), bytes).unwrap();
        }
        "reshard-2" | "reshard-4" => {
            // The state two ranks saved, loaded by this many; the outer step at once, so that
            // the payload is the error feedback's alone (the live weights are the base).
            let state = dir.join("state");
            replica.load_weights(&state).unwrap();
            ranks::load_node_state(&mut replica, &mut ef, &state, &SavedBy::Ranks(2)).unwrap();
            let payload = replica.outer_step(&mut ef).unwrap();
            let bytes = encode(&replica.schema, &payload, config.codec.index_coding);
            std::fs::write(dir.join(format!("payload-{scenario}.bin")), bytes).unwrap();
            // Training goes on with the moments laid out anew.
            train_window(&mut replica, &config, 1);
        }
        other => panic!("unknown scenario {other}"),
    }
    std::fs::write(dir.join(format!("ef-{rank}.bin")), owned_bytes(&ef, owner)).unwrap();
    replica.release_ranks().unwrap();
}

fn last_window(scenario: &str) -> u64 {
    u64::from(!matches!(scenario, "exact" | "judge"))
}

/// One window on rank 0: training, the outer step over the ranks, applying the payload (as the
/// only peer's); the fingerprint after it is written to `fingerprint-{window}`.
fn window_of(
    replica: &mut Replica,
    config: &NetworkConfig,
    ef: &mut [Vec<f32>],
    window: u64,
    dir: &Path,
) -> Vec<f64> {
    let losses = train_window(replica, config, window);
    let payload = replica.outer_step(ef).unwrap();
    let before = replica.fingerprint();
    replica.apply_aggregate(&[&payload]).unwrap();
    let applied = replica.fingerprint();
    // Taken back on every rank (which must agree) and applied again: the same model.
    assert!(replica.revert_last_apply().unwrap());
    assert_eq!(replica.fingerprint(), before);
    assert!(!replica.revert_last_apply().unwrap(), "reverted twice");
    replica.apply_aggregate(&[&payload]).unwrap();
    assert_eq!(replica.fingerprint(), applied);
    let fingerprint = replica.fingerprint().to_string();
    std::fs::write(dir.join(format!("fingerprint-{window}")), fingerprint).unwrap();
    losses
}
