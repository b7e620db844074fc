//! `templar localnet --scenario faults` as a user runs it, on short windows: one miner's read of
//! a peer failing for a window, a miner killed with SIGKILL mid-window and restarted, the
//! validator stopped with SIGTERM while a weight commit awaits its reveal and restarted, a
//! payload truncated in storage, a miner suspended for three windows, a peer deleting everything
//! it published, a miner joining in window 20. Every measured outcome must meet its goal.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use serde_json::Value;

#[test]
fn a_network_rides_out_kills_a_newcomer_and_a_truncated_payload() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_templar"))
        .args(["localnet", "--scenario", "faults", "--plain"])
        .args(["--window-secs", "10"])
        .arg("--dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report = std::fs::read_to_string(dir.path().join("faults.md")).unwrap_or_default();
    assert!(
        output.status.success(),
        "{}\n{report}\n{stdout}\n{stderr}",
        output.status
    );
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("faults.json")).unwrap())
            .unwrap();
    let outcomes = json["outcomes"].as_array().unwrap();
    assert_eq!(outcomes.len(), 8, "{report}");
    for outcome in outcomes {
        assert_eq!(outcome["met"], true, "{report}");
        if outcome.get("full_rebuilds").is_some() {
            assert_eq!(outcome["full_rebuilds"], 0, "{report}");
        }
    }
    let happened = json["happened"].as_array().unwrap();
    assert_eq!(happened.len(), 10, "every step of the script ran: {report}");
    println!("{report}");
}
