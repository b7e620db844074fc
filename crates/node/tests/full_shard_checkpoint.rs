//! A fully sharded trainer's checkpoint through object storage: saved by its ranks, published
//! file by file with a signed descriptor, found through `latest`, downloaded and verified, and
//! loaded by another trainer as the model the descriptor names.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use templar_dist::{GroupOptions, ProcessGroup, Store as RankStore};
use templar_engine::{Batch, Device, FullyShardedTrainer, Preset, TrainConfig};
use templar_node::checkpoint::{self, Published};
use templar_node::fingerprint::Fingerprint;
use templar_protocol::{Keypair, Network};
use templar_storage::{Store, StoreConfig};

/// A group of one rank meeting in `dir` (the ranks' arithmetic is tested elsewhere; this is the
/// files' way through storage).
fn group(dir: &Path) -> ProcessGroup {
    let timeout = Duration::from_secs(30);
    std::fs::create_dir_all(dir).unwrap();
    let store = RankStore::file(&dir.join("rendezvous"), timeout).unwrap();
    let options = GroupOptions {
        timeout,
        threads: 1,
    };
    ProcessGroup::gloo(&store, 0, 1, &options).unwrap()
}

fn train_config() -> TrainConfig {
    let mut train = Preset::load("tiny").unwrap().train;
    (train.batch_size, train.micro_batch_size, train.seq_len) = (2, 1, 16);
    train
}

fn live(trainer: &mut FullyShardedTrainer) -> Fingerprint {
    Fingerprint::of(&trainer.gather_weights().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fully_sharded_checkpoint_goes_through_storage_and_loads_as_its_descriptor_says() {
    let dir = tempfile::tempdir().unwrap();
    let model = Preset::load("tiny").unwrap().model;
    let train = train_config();
    let mut trainer = FullyShardedTrainer::new(
        &model,
        3,
        train.clone(),
        group(&dir.path().join("a")),
        Device::Cpu,
    )
    .unwrap();
    let tokens: Vec<i64> = (0..32).map(|t| (t * 7 % 300) as i64).collect();
    let batch = Batch::from_tokens(&tokens, 2, 16, model.vocab_size).unwrap();
    trainer.train_step(&batch).unwrap();
    let saved = dir.path().join("saved");
    trainer.save(&saved).unwrap();
    let fingerprint = live(&mut trainer);

    let url = format!("file://{}", dir.path().join("storage").display());
    std::fs::create_dir_all(dir.path().join("storage")).unwrap();
    let store = Store::open(&StoreConfig::new(url)).unwrap();
    let network = Network::new("shards").unwrap();
    let hotkey = Keypair::from_seed(&[7; 32]).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&saved)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let of = Published {
        window: 5,
        global_step: 1,
        fingerprint,
    };
    checkpoint::publish_files(&store, &network, (&hotkey, 2), &saved, &names, of)
        .await
        .unwrap();

    let found = checkpoint::latest(&store, &network, 2, hotkey.account())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((found.window, found.fingerprint), (5, fingerprint));
    let fetched = dir.path().join("fetched");
    std::fs::create_dir_all(&fetched).unwrap();
    checkpoint::download(&store, &network, &found, &fetched)
        .await
        .unwrap();
    let mut loaded =
        FullyShardedTrainer::load(&fetched, train, group(&dir.path().join("b")), Device::Cpu)
            .unwrap();
    assert_eq!(live(&mut loaded), found.fingerprint);
    assert_eq!(loaded.steps(), 1, "the optimizer's step count came through");

    // A file changed in storage is refused by the download, naming it.
    let key_dir = dir.path().join("storage");
    let stored = find(&key_dir, "optimizer.safetensors");
    let mut bytes = std::fs::read(&stored).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&stored, bytes).unwrap();
    let refetched = dir.path().join("refetched");
    std::fs::create_dir_all(&refetched).unwrap();
    let refused = checkpoint::download(&store, &network, &found, &refetched)
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("optimizer.safetensors"), "{refused}");
}

/// The path of the stored object whose key ends with `name`.
fn find(dir: &Path, name: &str) -> std::path::PathBuf {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            let found = find(&path, name);
            if found.exists() {
                return found;
            }
        } else if path.to_string_lossy().ends_with(name) {
            return path;
        }
    }
    dir.join("missing")
}
