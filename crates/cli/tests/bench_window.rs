//! The memory planner against the truth: `templar bench window` runs a real miner window and a
//! real validator window of the 150m preset, each in a process of its own, and the planner's host
//! figure must be within 15% of each process's measured peak resident memory.
#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn the_planner_predicts_peak_memory_of_a_150m_window_within_15_percent() {
    let output = Command::new(env!("CARGO_BIN_EXE_templar"))
        .args([
            "bench",
            "window",
            "--preset",
            "150m",
            "--payloads",
            "2",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "bench window failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    for role in ["miner", "validator"] {
        let figures = &report[role];
        let peak = figures["peak_rss_mb"].as_f64().unwrap();
        let planned = figures["planned_host_mb"].as_f64().unwrap();
        let error = (planned - peak).abs() / peak;
        assert!(
            error <= 0.15,
            "{role}: planned {planned:.0} MB, measured peak {peak:.0} MB ({:.0}% off)",
            error * 100.0
        );
    }
    // A validator keeps no optimizer: its training state is its weights alone.
    let validator = &report["validator"];
    assert_eq!(
        validator["training_state_mb"].as_f64(),
        validator["model_f32_mb"].as_f64()
    );
}
