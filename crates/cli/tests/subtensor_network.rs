//! A miner and a validator as operators run them on Bittensor, on a real subtensor runtime
//! (`raonet.json`) that chopsticks executes offline, its blocks produced at the chain's pace:
//! wallets, registration, stake, data and network config through the `templar` commands, then
//! both nodes through several windows. The validator must evaluate the miner in at least two
//! windows and its weights must reach the chain.
//!
//! Needs chopsticks (`scripts/setup`); `scripts/test` skips it, and says so, when npm could not
//! install it.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use templar_chain::subtensor::dev::{BlockMode, Chopsticks, DevRpc, installed_chopsticks};
use templar_chain::wallet::Wallet;
use templar_chain::{Chain, RAO_PER_TAO, Subtensor};

const NETUID: &str = "1";
const BLOCKS_PER_WINDOW: u64 = 10;
const WINDOWS: u64 = 3;

fn templar(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_templar"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let output = templar(args);
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "templar {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn corpus() -> PathBuf {
    let cache = std::env::var_os("TEMPLAR_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/templar"));
    cache.join("corpus/text")
}

/// The Gauntlet settings of `templar localnet`, so that two CPU processes keep up with
/// 30-second windows.
fn tune(config: &Path) {
    let mut doc: toml::Table = toml::from_str(&std::fs::read_to_string(config).unwrap()).unwrap();
    let gauntlet = doc["gauntlet"].as_table_mut().unwrap();
    gauntlet.insert("eval_samples".into(), 16.into());
    gauntlet.insert("validation_samples".into(), 32.into());
    gauntlet.insert("windows_per_weights".into(), 1.into());
    gauntlet.insert("binary_ma_initial".into(), 1.0.into());
    std::fs::write(config, toml::to_string(&doc).unwrap()).unwrap();
}

struct Node {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn events(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .map(|line| line["event"].clone())
        .collect()
}

#[test]
fn chopsticks_a_miner_and_a_validator_run_on_subtensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    let genesis =
        templar_chain::subtensor::dev::chain_fixture("raonet.json")
        .expect("the recorded chain fixture raonet.json (shared/chain-fixtures, or $TEMPLAR_CHAIN_FIXTURES)");
    let chopsticks = Chopsticks::start(
        &installed_chopsticks(),
        &genesis,
        BlockMode::Instant,
        &dir.path().join("chopsticks.log"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let url = chopsticks.url.clone();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dev = Arc::new(runtime.block_on(DevRpc::connect(&url)).unwrap());

    // An epoch per window, weights allowed every block, and alpha priced at one TAO.
    runtime.block_on(async {
        let netuid = NETUID.parse().unwrap();
        dev.set_subnet_value(netuid, "Tempo", serde_json::json!(BLOCKS_PER_WINDOW - 1))
            .await
            .unwrap();
        dev.set_subnet_value(netuid, "WeightsSetRateLimit", serde_json::json!(1))
            .await
            .unwrap();
        dev.set_subnet_value(
            netuid,
            "SubnetAlphaIn",
            serde_json::json!(11_000_000_000u64),
        )
        .await
        .unwrap();
        dev.new_blocks(1).await.unwrap();
    });

    let wallets = path("wallets");
    let wallet = ["--wallets-dir", wallets.as_str(), "--wallet", "net"];
    let on_chain = ["--chain", url.as_str(), "--netuid", NETUID];
    for hotkey in ["v1", "m1"] {
        ok(&[
            &["wallet", "create"],
            &wallet[..],
            &["--hotkey", hotkey, "--no-password", "--quiet"],
        ]
        .concat());
    }
    let coldkey = Wallet::new(&wallets, "net").coldkey_account().unwrap();
    runtime
        .block_on(dev.fund(&coldkey, 1_000 * RAO_PER_TAO))
        .unwrap();
    // Spending on a real chain is confirmed; with no terminal to ask on, it is refused.
    let unconfirmed = templar(
        &[
            &["chain", "register"],
            &on_chain[..],
            &wallet[..],
            &["--hotkey", "v1"],
        ]
        .concat(),
    );
    let stderr = String::from_utf8_lossy(&unconfirmed.stderr);
    assert!(!unconfirmed.status.success(), "{stderr}");
    assert!(
        stderr.contains("burns") && stderr.contains("TAO") && stderr.contains("--no-prompt"),
        "{stderr}"
    );
    for hotkey in ["v1", "m1"] {
        let out = ok(&[
            &["chain", "register"],
            &on_chain[..],
            &wallet[..],
            &["--hotkey", hotkey, "--no-prompt"],
        ]
        .concat());
        assert!(out.contains("registered"), "{out}");
    }
    let unconfirmed = templar(
        &[
            &["chain", "stake"],
            &on_chain[..],
            &wallet[..],
            &["--hotkey", "v1", "--amount", "100"],
        ]
        .concat(),
    );
    let stderr = String::from_utf8_lossy(&unconfirmed.stderr);
    assert!(
        stderr.contains("staking 100.000000000 TAO") && stderr.contains("--no-prompt"),
        "{stderr}"
    );
    ok(&[
        &["chain", "stake"],
        &on_chain[..],
        &wallet[..],
        &["--hotkey", "v1", "--amount", "100", "--no-prompt"],
    ]
    .concat());
    let status = ok(&[&["chain", "status"], &on_chain[..]].concat());
    assert!(status.contains("3 uids"), "{status}");

    let data = path("data");
    let config = path("network.toml");
    ok(&[
        "data",
        "prepare",
        "--input",
        &corpus().display().to_string(),
        "--seq-len",
        "256",
        "--out",
        &data,
    ]);
    ok(&[
        "network",
        "init",
        "--preset",
        "tiny",
        "--data-dir",
        &data,
        "--out",
        &config,
        "--blocks-per-window",
        &BLOCKS_PER_WINDOW.to_string(),
        "--inner-steps",
        "4",
        "--upload-grace-ms",
        "2000",
        "--clock-skew-ms",
        "1500",
    ]);
    tune(Path::new(&config));

    // From here on the chain makes blocks at its own pace, as a real one would.
    let chain = runtime
        .block_on(Subtensor::connect(&url, NETUID.parse().unwrap()))
        .unwrap();
    let start = runtime.block_on(chain.block()).unwrap().number;
    let until = start / BLOCKS_PER_WINDOW + WINDOWS;
    let pacer = {
        let dev = dev.clone();
        let pacing = runtime
            .block_on(Subtensor::connect(&url, NETUID.parse().unwrap()))
            .unwrap();
        runtime.spawn(async move { dev.keep_pace(&pacing).await })
    };

    let mut nodes: Vec<Node> = [("validator", "v1"), ("miner", "m1")]
        .into_iter()
        .map(|(role, hotkey)| {
            let name = if role == "validator" {
                "validator"
            } else {
                "miner"
            };
            let log = dir.path().join(format!("{name}.log"));
            let child = Command::new(env!("CARGO_BIN_EXE_templar"))
                .args([role, "--config", &config, "--data-dir", &data])
                .args(on_chain)
                .args(wallet)
                .args(["--hotkey", hotkey, "--device", "cpu", "--threads", "1"])
                .args([
                    "--storage",
                    &format!("file://{}", path(&format!("storage/{hotkey}"))),
                ])
                .args(["--state-dir", &path(&format!("state/{hotkey}"))])
                .args(["--events", &path(&format!("{name}.events"))])
                .args(["--until-window", &until.to_string()])
                .stdout(std::fs::File::create(&log).unwrap())
                .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
                .spawn()
                .unwrap();
            Node { name, child, log }
        })
        .collect();

    let deadline = Instant::now() + Duration::from_secs(60 + 60 * WINDOWS);
    let mut exits = Vec::new();
    while exits.len() < nodes.len() {
        assert!(
            !pacer.is_finished(),
            "block production stopped: {:?}",
            runtime.block_on(pacer)
        );
        for node in &mut nodes {
            if exits.iter().any(|(name, _)| *name == node.name) {
                continue;
            }
            if let Some(status) = node.child.try_wait().unwrap() {
                exits.push((node.name, status));
            }
        }
        if Instant::now() > deadline {
            for node in &nodes {
                let err =
                    std::fs::read_to_string(node.log.with_extension("err")).unwrap_or_default();
                let tail: Vec<&str> = err.lines().rev().take(25).collect();
                eprintln!("--- {} (newest first)\n{}", node.name, tail.join("\n"));
            }
            panic!("the nodes did not finish window {until} in time; exits so far: {exits:?}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    pacer.abort();
    for (name, status) in &exits {
        if !status.success() {
            let node = nodes.iter().find(|n| n.name == *name).unwrap();
            let err = std::fs::read_to_string(node.log.with_extension("err")).unwrap_or_default();
            panic!("{name} exited with {status}:\n{err}");
        }
    }

    let metagraph = runtime.block_on(chain.metagraph()).unwrap();
    let validator = metagraph
        .neurons
        .iter()
        .find(|n| n.stake > 0 && n.uid != 0)
        .unwrap();
    let miner = metagraph
        .neurons
        .iter()
        .find(|n| n.uid != 0 && n.uid != validator.uid)
        .unwrap();
    assert!(
        miner.commitment.is_some(),
        "the miner's storage location is on chain"
    );
    let validator_log =
        std::fs::read_to_string(dir.path().join("validator.err")).unwrap_or_default();
    let validator_events = events(Path::new(&path("validator.events")));
    let evaluated: std::collections::BTreeSet<u64> = validator_events
        .iter()
        .filter(|e| e["event"] == "evaluated" && e["miner"] == miner.uid)
        .filter_map(|e| e["window"].as_u64())
        .collect();
    assert!(
        evaluated.len() >= 2,
        "the miner was evaluated in windows {evaluated:?}"
    );
    assert!(
        validator_events.iter().any(|e| e["event"] == "weights_set"),
        "the validator set no weights; its log:\n{validator_log}"
    );
    assert!(
        validator.last_update > start,
        "the validator's weights reached the chain (last update {}, start {start})",
        validator.last_update
    );
    let miner_events = events(Path::new(&path("miner.events")));
    let uploads = miner_events
        .iter()
        .filter(|e| e["event"] == "uploaded")
        .count();
    assert!(uploads >= 2, "the miner uploaded {uploads} times");
}
