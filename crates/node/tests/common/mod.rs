//! What the in-process network tests share: real parts — a LocalChain file, file storage,
//! libtorch training on Moby-Dick — on a model small enough for a 2-core machine.
#![allow(clippy::unwrap_used, dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use templar_chain::{Chain, Genesis, Hyperparameters, LocalChain, RAO_PER_TAO};
use templar_data::{PrepareOptions, TokenizerSpec, prepare};
use templar_engine::Preset;
use templar_node::config::NetworkConfig;
use templar_node::data::Data;
use templar_node::miner::Stop;
use templar_node::{Commitment, Event, EventSink, Fingerprint, Role, node::Node};
use templar_protocol::Keypair;
use templar_storage::{Store, StoreConfig};

pub const BLOCK_MS: u64 = 250;
pub const BLOCKS_PER_WINDOW: u64 = 16;

pub type Log = Arc<Mutex<Vec<(String, Event)>>>;

pub fn cache() -> PathBuf {
    std::env::var_os("TEMPLAR_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/templar"))
}

pub fn prepare_data(dir: &Path, seq_len: usize) -> (PathBuf, String) {
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

pub fn network_config(manifest_hash: &str) -> NetworkConfig {
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

pub struct Net {
    pub dir: tempfile::TempDir,
    pub chain: LocalChain,
    pub config: NetworkConfig,
    pub data_dir: PathBuf,
    pub coldkey: Keypair,
    pub log: Log,
}

impl Net {
    pub async fn new() -> Net {
        Net::with_max_uids(Hyperparameters::default().max_uids).await
    }

    /// A network whose subnet holds at most `max_uids`: once full, a registration replaces
    /// the weakest uid.
    pub async fn with_max_uids(max_uids: u16) -> Net {
        let dir = tempfile::tempdir().unwrap();
        let (data_dir, hash) = prepare_data(dir.path(), 64);
        let config = network_config(&hash);
        let coldkey = Keypair::from_seed(&[1; 32]).unwrap();
        let hyperparameters = Hyperparameters {
            tempo: BLOCKS_PER_WINDOW,
            weights_rate_limit: 1,
            immunity_period: 0,
            max_uids,
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

    pub fn storage_url(&self, name: &str) -> String {
        format!(
            "file://{}",
            self.dir.path().join("storage").join(name).display()
        )
    }

    /// Registers (and for validators stakes) a hotkey and commits its storage location.
    pub async fn join(&self, name: &str, seed: u8, role: Role) -> Node<LocalChain> {
        let url = self.storage_url(name);
        std::fs::create_dir_all(url.trim_start_matches("file://")).unwrap();
        self.join_on(name, seed, Commitment::new(role, url)).await
    }

    /// [`Net::join`] publishing where `commitment` says (an S3 bucket, say).
    pub async fn join_on(&self, name: &str, seed: u8, commitment: Commitment) -> Node<LocalChain> {
        let role = commitment.role;
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
        let node = self.node_on(name, hotkey, uid, &commitment.store_config());
        assert_eq!(node.announce(role, &commitment).await.unwrap(), uid);
        node
    }

    pub fn node(&self, name: &str, hotkey: Keypair, uid: u16) -> Node<LocalChain> {
        let url = self.storage_url(name);
        std::fs::create_dir_all(url.trim_start_matches("file://")).unwrap();
        self.node_on(name, hotkey, uid, &StoreConfig::new(url))
    }

    pub fn node_on(
        &self,
        name: &str,
        hotkey: Keypair,
        uid: u16,
        store: &StoreConfig,
    ) -> Node<LocalChain> {
        let store = Store::open(store).unwrap();
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

    pub fn state_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join("state").join(name)
    }

    /// Waits for the next window to begin and returns it, so that every commitment made so
    /// far is in that window's chain state.
    pub async fn next_window(&self) -> u64 {
        let start = self.window_now() + 1;
        self.chain
            .wait_for_block(start * BLOCKS_PER_WINDOW)
            .await
            .unwrap();
        start
    }

    pub fn window_now(&self) -> u64 {
        self.chain.block_now().number / BLOCKS_PER_WINDOW
    }

    pub fn events(&self) -> Vec<(String, Event)> {
        self.log.lock().unwrap().clone()
    }
}

pub fn stop_after(window: u64) -> Stop {
    let (_, requested) = tokio::sync::watch::channel(false);
    Stop {
        requested,
        after_window: Some(window),
    }
}

/// Runs a node on its own thread and runtime, as `templar miner` runs it in its own process
/// (libtorch tensors are not `Sync`, so a node's future stays on one thread).
pub fn spawn<F, Fut>(work: F) -> JoinHandle<()>
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

/// The fingerprint each node reported after each window it applied, by window.
pub fn applied_models(events: &[(String, Event)]) -> BTreeMap<u64, BTreeMap<String, Fingerprint>> {
    let mut models: BTreeMap<u64, BTreeMap<String, Fingerprint>> = BTreeMap::new();
    for (who, event) in events {
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
    models
}

/// The events node `who` emitted, in order.
pub fn events_of<'a>(events: &'a [(String, Event)], who: &str) -> Vec<&'a Event> {
    events
        .iter()
        .filter(|(name, _)| name == who)
        .map(|(_, e)| e)
        .collect()
}
