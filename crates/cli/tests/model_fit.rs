//! `templar model info --device-memory-gb`: the fit planner at the command line.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

/// `templar model info` with `args` (words split at spaces).
fn info(args: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_templar"))
        .args(["model", "info"])
        .args(args.split_whitespace())
        .output()
        .unwrap()
}

#[test]
fn an_8b_miner_over_8_ranks_fits_an_h200_and_a_70b_one_does_not() {
    let fits = info("--preset 8b --role miner --ranks 8 --device-memory-gb 139 --json");
    assert!(
        fits.status.success(),
        "{}",
        String::from_utf8_lossy(&fits.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&fits.stdout).unwrap();
    let chosen = report["fit"]["chosen"].as_u64().unwrap() as usize;
    let candidate = &report["fit"]["candidates"][chosen];
    assert_eq!(candidate["fits_device"], true);
    assert!(candidate["device_bytes"].as_u64().unwrap() <= 139 << 30);

    let refused = info("--preset 70b --role miner --ranks 8 --device-memory-gb 139");
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("no number of ranks fits until parameters are sharded"),
        "{said}"
    );
    // Fully sharded, its training fits once the spans are offloaded to the host.
    let table = String::from_utf8_lossy(&refused.stdout);
    assert!(
        table.contains("a fully sharded miner over 8 ranks"),
        "{table}"
    );
    let chosen = table.lines().find(|l| l.contains("first to fit")).unwrap();
    assert!(chosen.trim_start().starts_with("true"), "{table}");
    // Asked for, the fully sharded plan is shown for a model whose node fits too.
    let asked = info("--preset 150m --role miner --ranks 4 --full-shard --device-memory-gb 16");
    assert!(asked.status.success());
    let table = String::from_utf8_lossy(&asked.stdout);
    assert!(
        table.contains("a fully sharded miner over 4 ranks"),
        "{table}"
    );
    let json = info("--preset 70b --role miner --ranks 8 --device-memory-gb 139 --json");
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let full = &report["full_shard"];
    let chosen = &full["candidates"][full["chosen"].as_u64().unwrap() as usize];
    assert_eq!(chosen["offload"], true);
    assert!(chosen["device_bytes"].as_u64().unwrap() <= 139 << 30);

    let cpu = info("--preset 8b --role miner --device cpu --device-memory-gb 139");
    assert!(!cpu.status.success());
    assert!(String::from_utf8_lossy(&cpu.stderr).contains("--host-memory-gb"));

    let no_role = info("--preset 8b --device-memory-gb 139");
    assert!(!no_role.status.success());
    assert!(String::from_utf8_lossy(&no_role.stderr).contains("add --role"));
}
