//! What the cli's integration tests share: the `templar` binary run in a test's folder, and a small
//! LocalChain network (a funded owner, a registered miner hotkey `m1`, a prepared slice of the demo
//! corpus and a tiny model's network.toml) to run nodes on.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Where scripts/setup installed what the tests need.
pub fn cache() -> PathBuf {
    std::env::var_os("TEMPLAR_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/templar"))
}

/// The binary under test, run in `dir` with that folder's wallets and LocalChain.
pub fn templar(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_templar"));
    command
        .args(args)
        .current_dir(dir)
        .env("BT_WALLET_PATH", dir.join("wallets"))
        .env("TEMPLAR_CHAIN", dir.join("chain.sqlite"))
        .env_remove("TEMPLAR_METRICS_ADDR");
    command
}

/// Runs `templar args` in `dir` and returns its stdout; fails the test when it fails.
pub fn ok(dir: &Path, args: &[&str]) -> String {
    let out: Output = templar(dir, args).output().unwrap();
    assert!(
        out.status.success(),
        "templar {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A small slice of the demo corpus: a few hundred documents are enough for a tiny model.
pub fn small_corpus(dir: &Path) -> PathBuf {
    let input = dir.join("corpus");
    std::fs::create_dir_all(&input).unwrap();
    let source = std::fs::File::open(cache().join("corpus/text/sotu.jsonl")).unwrap();
    let lines: Vec<String> = std::io::BufReader::new(source)
        .lines()
        .take(40)
        .map(Result::unwrap)
        .collect();
    std::fs::write(input.join("sotu.jsonl"), lines.join("\n")).unwrap();
    input
}

/// A LocalChain network in `d` whose blocks come every `block_time_ms` and whose windows last
/// `blocks_per_window` blocks: the owner's coldkey funded, hotkey `m1` registered, the corpus
/// prepared into `data/` and a tiny model's `network.toml`.
pub fn a_network(d: &Path, block_time_ms: u64, blocks_per_window: u64) {
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
    ok(
        d,
        &[
            "wallet", "create", "--wallet", "owner", "--hotkey", "m1", "--quiet",
        ],
    );
    let owner: serde_json::Value =
        serde_json::from_str(&ok(d, &["wallet", "show", "--wallet", "owner", "--json"])).unwrap();
    let coldkey = owner["coldkey"].as_str().unwrap();
    let block_time = block_time_ms.to_string();
    let funding = format!("{coldkey}=1000");
    ok(
        d,
        &[
            "chain",
            "init",
            "--block-time-ms",
            &block_time,
            "--fund",
            &funding,
        ],
    );
    ok(
        d,
        &["chain", "register", "--wallet", "owner", "--hotkey", "m1"],
    );
    let input = small_corpus(d);
    ok(
        d,
        &[
            "data",
            "prepare",
            "--input",
            input.to_str().unwrap(),
            "--seq-len",
            "64",
            "--validation-fraction",
            "0.2",
            "--out",
            "data",
        ],
    );
    let blocks = blocks_per_window.to_string();
    ok(
        d,
        &[
            "network",
            "init",
            "--preset",
            "tiny",
            "--data-dir",
            "data",
            "--blocks-per-window",
            &blocks,
            "--inner-steps",
            "2",
            "--upload-grace-ms",
            "500",
        ],
    );
}
