//! The `templar wallet` and `templar chain` commands, end to end through the binary.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

fn templar(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_templar"))
        .args(args)
        .env("BT_WALLET_PATH", dir.join("wallets"))
        .env("TEMPLAR_CHAIN", dir.join("chain.sqlite"))
        .env_remove("RUST_BACKTRACE")
        .env_remove("TEMPLAR_COLDKEY_PASSWORD")
        .output()
        .unwrap()
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = templar(dir, args);
    assert!(
        out.status.success(),
        "templar {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json(dir: &Path, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&ok(dir, args)).unwrap()
}

#[test]
fn create_wallets_init_a_chain_register_and_read_the_metagraph() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(
        d,
        &[
            "wallet",
            "create",
            "--wallet",
            "owner",
            "--no-password",
            "--quiet",
        ],
    );
    let created = json(
        d,
        &[
            "wallet", "create", "--wallet", "owner", "--hotkey", "m1", "--quiet", "--json",
        ],
    );
    let owner = json(d, &["wallet", "show", "--wallet", "owner", "--json"]);
    let coldkey = owner["coldkey"].as_str().unwrap().to_string();
    let miner_hotkey = owner["hotkeys"]["m1"].as_str().unwrap().to_string();
    assert_eq!(created["wallet"], "owner");
    assert_eq!(created["created"][0]["kind"], "hotkey");
    assert_eq!(
        created["created"][0]["account"].as_str(),
        Some(miner_hotkey.as_str())
    );
    let listed = json(d, &["wallet", "list", "--json"]);
    assert_eq!(listed["wallets"][0]["name"], "owner");
    assert_eq!(
        listed["wallets"][0]["coldkey"].as_str(),
        Some(coldkey.as_str())
    );
    let hotkeys = listed["wallets"][0]["hotkeys"].as_array().unwrap();
    assert!(
        hotkeys
            .iter()
            .any(|h| h["name"] == "m1" && h["account"].as_str() == Some(miner_hotkey.as_str())),
        "{listed}"
    );

    let refused = templar(d, &["wallet", "create", "--wallet", "locked", "--quiet"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--no-password"));

    let chain = json(
        d,
        &[
            "chain",
            "init",
            "--block-time-ms",
            "100",
            "--fund",
            &format!("{coldkey}=10"),
            "--json",
        ],
    );
    assert_eq!(chain["block_time_ms"], 100);
    let again = templar(d, &["chain", "init"]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let registered = json(
        d,
        &[
            "chain", "register", "--wallet", "owner", "--hotkey", "m1", "--json",
        ],
    );
    assert_eq!(registered["uid"], 0);
    assert_eq!(registered["hotkey"].as_str(), Some(miner_hotkey.as_str()));
    let staked = json(
        d,
        &[
            "chain", "stake", "--wallet", "owner", "--hotkey", "m1", "--amount", "2.5", "--json",
        ],
    );
    assert_eq!(staked["staked_rao"], 2_500_000_000u64);
    let twice = templar(
        d,
        &["chain", "register", "--wallet", "owner", "--hotkey", "m1"],
    );
    assert!(String::from_utf8_lossy(&twice.stderr).contains("already registered as uid 0"));

    let status = json(d, &["chain", "status", "--json"]);
    let neuron = &status["neurons"][0];
    assert_eq!(neuron["uid"], 0);
    assert_eq!(neuron["hotkey"].as_str().unwrap(), miner_hotkey);
    assert_eq!(neuron["coldkey"].as_str().unwrap(), coldkey);
    assert_eq!(neuron["stake"].as_u64().unwrap(), 2_500_000_000);
    for field in [
        "incentive",
        "dividends",
        "emission",
        "last_update",
        "commitment",
    ] {
        assert!(neuron.get(field).is_some(), "{field} missing from {neuron}");
    }
}

#[test]
fn missing_chain_and_wallet_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let out = templar(dir.path(), &["chain", "status"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("templar chain init"));
    let out = templar(dir.path(), &["wallet", "show"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("templar wallet create"));
}

/// A btcli user's flags (`--wallet.name`, `--wallet.hotkey`, `--wallet.path`,
/// `--subtensor.network`) and environment (`BT_WALLET_*`, `BT_SUBTENSOR_NETWORK`) work as they do
/// there.
#[test]
fn a_btcli_users_flags_and_environment_work() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let elsewhere = d.join("elsewhere");
    let elsewhere = elsewhere.to_str().unwrap();
    ok(
        d,
        &[
            "wallet",
            "create",
            "--wallet.path",
            elsewhere,
            "--wallet.name",
            "owner",
            "--wallet.hotkey",
            "m1",
            "--no-password",
            "--quiet",
        ],
    );
    let by_env = Command::new(env!("CARGO_BIN_EXE_templar"))
        .args(["wallet", "show", "--json"])
        .env("BT_WALLET_PATH", elsewhere)
        .env("BT_WALLET_NAME", "owner")
        .env("BT_WALLET_HOTKEY", "m1")
        .output()
        .unwrap();
    assert!(by_env.status.success(), "{by_env:?}");
    let shown: serde_json::Value = serde_json::from_slice(&by_env.stdout).unwrap();
    assert!(shown["hotkeys"]["m1"].is_string(), "{shown}");

    let chain = d.join("bt-chain.sqlite");
    let chain = chain.to_str().unwrap();
    ok(d, &["chain", "init", "--subtensor.network", chain]);
    let status = Command::new(env!("CARGO_BIN_EXE_templar"))
        .args(["chain", "status", "--json"])
        .env_remove("TEMPLAR_CHAIN")
        .env("BT_SUBTENSOR_NETWORK", chain)
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["netuid"], 3);
}

#[test]
fn data_prepare_and_network_init_print_json_for_scripts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = d.join("text");
    std::fs::create_dir(&text).unwrap();
    for (i, words) in ["the whale", "a ship at sea", "call me Ishmael"]
        .iter()
        .enumerate()
    {
        std::fs::write(text.join(format!("{i}.txt")), words.repeat(40)).unwrap();
    }
    let prepared = json(
        d,
        &[
            "data",
            "prepare",
            "--input",
            text.to_str().unwrap(),
            "--seq-len",
            "16",
            "--out",
            d.join("data").to_str().unwrap(),
            "--validation-fraction",
            "0",
            "--json",
        ],
    );
    assert_eq!(prepared["outcome"], "prepared");
    assert_eq!(prepared["documents"], 3);
    assert_eq!(prepared["seq_len"], 16);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("data/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(prepared["content_hash"], manifest["content_hash"]);
    let network = json(
        d,
        &[
            "network",
            "init",
            "--data-dir",
            d.join("data").to_str().unwrap(),
            "--out",
            d.join("network.toml").to_str().unwrap(),
            "--json",
        ],
    );
    let id = network["network_id"].as_str().unwrap();
    assert!(
        !id.is_empty() && id.chars().all(|c| c.is_ascii_hexdigit()),
        "{network}"
    );
    assert!(d.join("network.toml").is_file());
}
