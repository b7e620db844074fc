//! The outer step over a node's ranks against one process: the same payload bytes, error
//! feedback and applied model (fingerprint) at 1, 2 and 4 Gloo ranks, window after window. Ranks
//! are real processes (the test binary starts copies of itself through the `rank` test, which
//! does nothing unless `TEMPLAR_RANKS_RANK` is set) meeting in a file store. Every rank trains the
//! same batches here, so that their live weights are the same bits and the outer step alone is
//! under test.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use templar_codec::{decode, encode};
use templar_dist::{GroupOptions, Member, ProcessGroup, Store, rendezvous};
use templar_engine::memory::Role;
use templar_engine::{Batch, Device, Preset};
use templar_node::config::NetworkConfig;
use templar_node::ranks::{self, TensorOwner};
use templar_node::replica::Replica;

const WINDOWS: u64 = 2;

fn config() -> NetworkConfig {
    NetworkConfig::defaults("ranks-test", Preset::load("tiny").unwrap(), "unused")
}

fn batch(config: &NetworkConfig, seed: u64) -> Batch {
    let (rows, seq) = (2, 32);
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

fn train_window(replica: &mut Replica, config: &NetworkConfig, window: u64) {
    for step in 0..2 {
        replica
            .train_step(&batch(config, window * 10 + step))
            .unwrap();
    }
}

fn numels(replica: &Replica) -> Vec<usize> {
    replica.base().iter().map(Vec::len).collect()
}

fn f32_bytes(values: impl IntoIterator<Item = f32>) -> Vec<u8> {
    values.into_iter().flat_map(f32::to_le_bytes).collect()
}

/// What one process makes: each window's payload bytes, then the error feedback and the
/// fingerprint after the last window.
struct Outcome {
    payloads: Vec<Vec<u8>>,
    error_feedback: Vec<Vec<f32>>,
    fingerprint: String,
}

fn one_process() -> Outcome {
    templar_engine::set_threads(1);
    let config = config();
    let mut replica = Replica::new(&config, Device::Cpu, Role::Miner).unwrap();
    let mut ef = TensorOwner::ALONE.error_feedback(numels(&replica));
    let mut payloads = Vec::new();
    for window in 0..WINDOWS {
        train_window(&mut replica, &config, window);
        let payload = replica.outer_step(&mut ef).unwrap();
        payloads.push(encode(&replica.schema, &payload, config.codec.index_coding));
        replica.apply_aggregate(&[&payload]).unwrap();
    }
    Outcome {
        payloads,
        error_feedback: ef,
        fingerprint: replica.fingerprint().to_string(),
    }
}

fn run_ranks(world: usize, dir: &Path) {
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..world)
        .map(|rank| {
            Command::new(&exe)
                .args(["--exact", "rank", "--nocapture", "--test-threads=1"])
                .env("TEMPLAR_RANKS_RANK", rank.to_string())
                .env("TEMPLAR_RANKS_WORLD", world.to_string())
                .env("TEMPLAR_RANKS_DIR", dir)
                .env("OMP_NUM_THREADS", "1")
                .env("RAYON_NUM_THREADS", "1")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (rank, child) in children.into_iter().enumerate() {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "rank {rank}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn ranks_make_the_payload_one_process_makes() {
    let alone = one_process();
    for world in [2, 4] {
        let dir = tempfile::tempdir().unwrap();
        run_ranks(world, dir.path());
        let read = |name: String| std::fs::read(dir.path().join(name)).unwrap();
        for (window, expected) in alone.payloads.iter().enumerate() {
            let got = read(format!("payload-{window}.bin"));
            assert!(
                &got == expected,
                "{world} ranks, window {window}: payload bytes differ"
            );
        }
        for rank in 0..world {
            let owner = TensorOwner { rank, world };
            let owned = alone
                .error_feedback
                .iter()
                .enumerate()
                .filter(|(i, _)| owner.owns(*i))
                .flat_map(|(_, e)| e.iter().copied());
            assert!(
                read(format!("ef-{rank}.bin")) == f32_bytes(owned),
                "{world} ranks, rank {rank}: error feedback differs"
            );
            let fingerprint = String::from_utf8(read(format!("fingerprint-{rank}"))).unwrap();
            assert_eq!(fingerprint, alone.fingerprint, "{world} ranks, rank {rank}");
        }
    }
}

/// One rank of [`run_ranks`]; nothing outside of one.
#[test]
fn rank() {
    let Ok(rank) = std::env::var("TEMPLAR_RANKS_RANK") else {
        return;
    };
    templar_engine::set_threads(1);
    let rank: usize = rank.parse().unwrap();
    let world: usize = std::env::var("TEMPLAR_RANKS_WORLD")
        .unwrap()
        .parse()
        .unwrap();
    let dir = std::path::PathBuf::from(std::env::var("TEMPLAR_RANKS_DIR").unwrap());
    let timeout = Duration::from_secs(60);
    let store = Store::file(&dir.join("store"), timeout).unwrap();
    rendezvous(&store, &Member::new(rank, world, "ranks test"), timeout).unwrap();
    let options = GroupOptions {
        timeout,
        threads: 1,
    };
    let mut group = ProcessGroup::gloo(&store, rank, world, &options).unwrap();
    let config = config();
    let mut replica = Replica::new(&config, Device::Cpu, Role::Miner).unwrap();
    let owner = TensorOwner::of(&group);
    let mut ef = owner.error_feedback(numels(&replica));
    for window in 0..WINDOWS {
        train_window(&mut replica, &config, window);
        let made = ranks::outer_step(&mut replica, &mut ef, &mut group, config.codec.index_coding)
            .unwrap();
        // Rank 0 has the payload (it would upload it); every rank applies it, as it would
        // apply the gathered peers' payloads.
        assert_eq!(made.is_some(), rank == 0);
        let mut bytes = made.unwrap_or_default();
        group.broadcast_bytes(&mut bytes, 0).unwrap();
        if rank == 0 {
            std::fs::write(dir.join(format!("payload-{window}.bin")), &bytes).unwrap();
        }
        let payload = decode(&replica.schema, &bytes).unwrap();
        replica.apply_aggregate(&[&payload]).unwrap();
    }
    let mine = ef
        .iter()
        .enumerate()
        .filter(|(i, _)| owner.owns(*i))
        .flat_map(|(_, e)| e.iter().copied());
    std::fs::write(dir.join(format!("ef-{rank}.bin")), f32_bytes(mine)).unwrap();
    // Buffers of tensors another rank owns stay empty: a world-th of the error feedback.
    assert!(
        ef.iter()
            .enumerate()
            .all(|(i, e)| owner.owns(i) || e.is_empty())
    );
    std::fs::write(
        dir.join(format!("fingerprint-{rank}")),
        replica.fingerprint().to_string(),
    )
    .unwrap();
}
