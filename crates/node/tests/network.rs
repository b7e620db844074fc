//! An in-process network on real parts — a LocalChain file, file storage, libtorch training on
//! Moby-Dick — with three miners and a validator, one miner killed and restarted mid-run, and a
//! forged payload planted under a miner's key.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use templar_chain::{Chain, Genesis, Hyperparameters, LocalChain, RAO_PER_TAO};
use templar_data::{PrepareOptions, TokenizerSpec, prepare};
use templar_engine::{Device, Preset};
use templar_node::config::NetworkConfig;
use templar_node::data::Data;
use templar_node::miner::Stop;
use templar_node::{Commitment, Event, EventSink, Fingerprint, Miner, Role, Validator, node::Node};
use templar_protocol::{Keypair, Kind};
use templar_storage::{Store, StoreConfig};

const BLOCK_MS: u64 = 250;
const BLOCKS_PER_WINDOW: u64 = 16;

type Log = Arc<Mutex<Vec<(String, Event)>>>;

fn cache() -> PathBuf {
    std::env::var_os("TEMPLAR_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/templar"))
}

fn prepare_data(dir: &Path, seq_len: usize) -> (PathBuf, String) {
    let corpus = cache().join("corpus/text/moby-dick.jsonl");
    assert!(
        corpus.exists(),
        "{} is missing: run scripts/setup",
        corpus.display()
    );
    let input = dir.join("text");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::copy(&corpus, input.join("moby-dick.jsonl")).unwrap();
    let out = dir.join("data");
    let mut options = PrepareOptions::new(input, out.clone(), TokenizerSpec::Bytes, seq_len);
    options.validation_fraction = 0.02;
    prepare(&options).unwrap();
    let manifest = templar_data::Manifest::read(&out).unwrap();
    (out, manifest.content_hash)
}

fn network_config(manifest_hash: &str) -> NetworkConfig {
    let mut preset = Preset::load("tiny").unwrap();
    preset.model.hidden_size = 128;
    preset.model.intermediate_size = 256;
    preset.model.num_hidden_layers = 2;
    preset.train.seq_len = 64;
    preset.train.batch_size = 8;
    preset.train.micro_batch_size = 8;
    preset.train.lr = 3e-3;
    preset.train.warmup_steps = 5;
    let mut config = NetworkConfig::defaults("testnet", preset, manifest_hash);
    config.window.blocks_per_window = BLOCKS_PER_WINDOW;
    config.window.upload_grace_ms = 1000;
    config.window.clock_skew_ms = 250;
    config.training.inner_steps = 8;
    config.training.outer_lr = 1.0;
    config.gauntlet.eval_samples = 8;
    // Eight windows of a tiny model are too few for the own-data indicator to rise above noise
    // (docs/localnet.md): miners start trusted so that this test checks weights and consensus,
    // not a coin flip. The indicator itself is unit-tested in gauntlet::score.
    config.gauntlet.binary_ma_initial = 1.0;
    config.gauntlet.binary_ma_alpha = 0.1;
    config.gauntlet.windows_per_weights = 1;
    config.gauntlet.validation_samples = 64;
    config.checkpoints.every = 3;
    config
}

struct Net {
    dir: tempfile::TempDir,
    chain: LocalChain,
    config: NetworkConfig,
    data_dir: PathBuf,
    coldkey: Keypair,
    log: Log,
}

impl Net {
    async fn new() -> Net {
        let dir = tempfile::tempdir().unwrap();
        let (data_dir, hash) = prepare_data(dir.path(), 64);
        let config = network_config(&hash);
        let coldkey = Keypair::from_seed(&[1; 32]).unwrap();
        let hyperparameters = Hyperparameters {
            tempo: BLOCKS_PER_WINDOW,
            weights_rate_limit: 1,
            immunity_period: 0,
            ..Hyperparameters::default()
        };
        let mut genesis = Genesis::now(3, BLOCK_MS, hyperparameters);
        genesis.balances = vec![(coldkey.account(), 1000 * RAO_PER_TAO)];
        let chain = LocalChain::create(&dir.path().join("chain.sqlite"), &genesis).unwrap();
        Net {
            dir,
            chain,
            config,
            data_dir,
            coldkey,
            log: Arc::default(),
        }
    }

    fn storage_url(&self, name: &str) -> String {
        format!(
            "file://{}",
            self.dir.path().join("storage").join(name).display()
        )
    }

    /// Registers (and for validators stakes) a hotkey and commits its storage location.
    async fn join(&self, name: &str, seed: u8, role: Role) -> Node<LocalChain> {
        let hotkey = Keypair::from_seed(&[seed; 32]).unwrap();
        let uid = self
            .chain
            .register(&self.coldkey, &hotkey.account())
            .await
            .unwrap();
        if role == Role::Validator {
            self.chain
                .add_stake(&self.coldkey, &hotkey.account(), 100 * RAO_PER_TAO)
                .await
                .unwrap();
        }
        let node = self.node(name, hotkey, uid);
        let announced = node
            .announce(role, &Commitment::new(role, self.storage_url(name)))
            .await;
        assert_eq!(announced.unwrap(), uid);
        node
    }

    fn node(&self, name: &str, hotkey: Keypair, uid: u16) -> Node<LocalChain> {
        let url = self.storage_url(name);
        std::fs::create_dir_all(url.trim_start_matches("file://")).unwrap();
        let store = Store::open(&StoreConfig::new(url)).unwrap();
        let data = Data::open(&self.data_dir, &self.config).unwrap();
        let log = self.log.clone();
        let sink = EventSink::new(
            name,
            Arc::new(move |who: &str, e: &Event| log.lock().unwrap().push((who.into(), e.clone()))),
        );
        Node::new(
            self.config.clone(),
            self.chain.clone(),
            hotkey,
            uid,
            store,
            data,
            sink,
            true,
        )
        .unwrap()
    }

    fn state_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join("state").join(name)
    }

    fn window_now(&self) -> u64 {
        self.chain.block_now().number / BLOCKS_PER_WINDOW
    }

    fn events(&self) -> Vec<(String, Event)> {
        self.log.lock().unwrap().clone()
    }
}

fn stop_after(window: u64) -> Stop {
    let (_, requested) = tokio::sync::watch::channel(false);
    Stop {
        requested,
        after_window: Some(window),
    }
}

/// Runs a node on its own thread and runtime, as `templar miner` runs it in its own process
/// (libtorch tensors are not `Sync`, so a node's future stays on one thread).
fn spawn<F, Fut>(work: F) -> JoinHandle<()>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), templar_node::NodeError>>,
{
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(work()).unwrap();
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_miners_and_a_validator_train_in_sync() {
    templar_engine::set_threads(1);
    let net = Net::new().await;
    let validator = net.join("validator", 10, Role::Validator).await;
    let validator_uid = validator.uid;
    let mut miners = Vec::new();
    for (i, seed) in [11u8, 12, 13].into_iter().enumerate() {
        miners.push(net.join(&format!("miner-{i}"), seed, Role::Miner).await);
    }
    let miner_uids: Vec<u16> = miners.iter().map(|m| m.uid).collect();
    // Start at a fresh window so every commitment is in the first window's chain state.
    let start = net.window_now() + 1;
    net.chain
        .wait_for_block(start * BLOCKS_PER_WINDOW)
        .await
        .unwrap();
    let last = start + 7;
    let (restarted, down_from, back_at) = (miner_uids[1], start + 2, start + 5);

    let validator = Validator::new(validator, Device::Cpu, net.state_dir("validator")).unwrap();
    let mut threads = vec![spawn(move || validator.run(stop_after(last)))];
    for (i, node) in miners.into_iter().enumerate() {
        let until = if node.uid == restarted {
            down_from - 1
        } else {
            last
        };
        let miner = Miner::new(node, Device::Cpu, net.state_dir(&format!("miner-{i}"))).unwrap();
        threads.push(spawn(move || miner.run(stop_after(until))));
    }

    // While miner 1 is down, a key that is not registered plants a payload under its uid.
    net.chain
        .wait_for_block((down_from + 1) * BLOCKS_PER_WINDOW + 2)
        .await
        .unwrap();
    let forger = Keypair::from_seed(&[66; 32]).unwrap();
    let forged_store = Store::open(&StoreConfig::new(net.storage_url("miner-1"))).unwrap();
    forged_store
        .publish(
            &forger,
            &net.config.network().unwrap(),
            Kind::Gradient,
            down_from + 1,
            restarted,
            b"forged",
        )
        .await
        .unwrap();

    // Bring miner 1 back from its saved state.
    net.chain
        .wait_for_block(back_at * BLOCKS_PER_WINDOW)
        .await
        .unwrap();
    let node = net.node("miner-1", Keypair::from_seed(&[12; 32]).unwrap(), restarted);
    let miner = Miner::new(node, Device::Cpu, net.state_dir("miner-1")).unwrap();
    assert_eq!(
        miner.position().last_window,
        Some(down_from - 1),
        "resumes from its saved state"
    );
    threads.push(spawn(move || miner.run(stop_after(last))));
    for thread in threads {
        thread.join().unwrap();
    }

    let events = net.events();
    // Every node that applied a window holds the same model afterwards.
    let mut models: BTreeMap<u64, BTreeMap<String, Fingerprint>> = BTreeMap::new();
    for (who, event) in &events {
        if let Event::Applied {
            window,
            fingerprint,
            ..
        } = event
        {
            models
                .entry(*window)
                .or_default()
                .insert(who.clone(), *fingerprint);
        }
    }
    for (window, by_node) in &models {
        let first = by_node.values().next().unwrap();
        assert!(
            by_node.values().all(|f| f == first),
            "window {window}: {by_node:?}"
        );
    }
    assert!(
        !events
            .iter()
            .any(|(_, e)| matches!(e, Event::OutOfSync { .. })),
        "every miner matched the validator's manifests"
    );
    let applied_by = |who: &str| models.values().filter(|m| m.contains_key(who)).count();
    assert_eq!(applied_by("validator"), 8);
    assert!(
        applied_by("miner-1") >= 4,
        "the restarted miner is back in step"
    );

    // The restarted miner caught up, then contributed again.
    assert!(
        events
            .iter()
            .any(|(who, e)| who == "miner-1" && matches!(e, Event::CaughtUp { .. }))
    );
    let included_at = |window: u64| {
        events.iter().find_map(|(who, e)| match e {
            Event::Gathered {
                window: w,
                included,
                ..
            } if who == "validator" && *w == window => Some(included.clone()),
            _ => None,
        })
    };
    assert_eq!(
        included_at(last).unwrap(),
        miner_uids,
        "everyone contributes at the end"
    );

    // The forged payload was refused for its signature and left out of the aggregate.
    let forged = events.iter().find_map(|(who, e)| match e {
        Event::Gathered {
            window,
            peers,
            included,
        } if who == "validator" && *window == down_from + 1 => {
            Some((peers.clone(), included.clone()))
        }
        _ => None,
    });
    let (peers, included) = forged.unwrap();
    let report = peers.iter().find(|p| p.uid == restarted).unwrap();
    assert_eq!(report.outcome, "bad_signature", "{report:?}");
    assert!(!included.contains(&restarted));

    // The model learned: validation bits per byte fell.
    let bpb: Vec<f64> = events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Validation { bits_per_byte, .. } => Some(*bits_per_byte),
            _ => None,
        })
        .collect();
    assert!(bpb.last().unwrap() < bpb.first().unwrap(), "{bpb:?}");

    // Weights reached the chain and its consensus pays every honest miner.
    let last_weights = events.iter().rev().find_map(|(_, e)| match e {
        Event::WeightsSet { uids, weights, .. } => Some((uids.clone(), weights.clone())),
        _ => None,
    });
    let (uids, weights) = last_weights.unwrap();
    assert_eq!(uids, miner_uids);
    assert!(weights.iter().all(|&w| w > 0), "{weights:?}");
    let head = net.chain.block().await.unwrap().number;
    net.chain
        .wait_for_block((head / BLOCKS_PER_WINDOW + 1) * BLOCKS_PER_WINDOW + 1)
        .await
        .unwrap();
    let metagraph = net.chain.metagraph().await.unwrap();
    for uid in &miner_uids {
        let incentive = metagraph.neuron(*uid).unwrap().incentive;
        assert!(incentive > 0.0, "uid {uid} incentive {incentive}");
    }
    assert!(metagraph.neuron(validator_uid).unwrap().dividends > 0.0);
    println!("bits per byte by window: {bpb:?}");
}
