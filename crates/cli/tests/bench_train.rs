//! `templar bench train --ranks N --shard full`: the fully sharded ranks against one process, at
//! the command line.
#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn fully_sharded_ranks_keep_a_share_of_the_weights_and_train_as_one_process() {
    let output = Command::new(env!("CARGO_BIN_EXE_templar"))
        .args([
            "bench", "train", "--preset", "tiny", "--device", "cpu", "--json",
        ])
        .args([
            "--ranks", "2", "--shard", "full", "--steps", "2", "--warmup", "1",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let ranks = &report["ranks"];
    assert_eq!(ranks["shard"], "full");
    assert!(ranks["max_loss_diff"].as_f64().unwrap() <= 1e-4, "{ranks}");
    // Each rank keeps half of the weights (tiny's spans have no padding at 2 ranks).
    assert_eq!(ranks["param_bytes_ratio"].as_f64().unwrap(), 0.5, "{ranks}");
    let total = ranks["param_bytes_total"].as_i64().unwrap();
    assert_eq!(total, 4 * report["parameter_count"].as_i64().unwrap());
    let moments: i64 = ranks["moment_values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_i64().unwrap())
        .sum();
    assert_eq!(4 * moments, total);
}
