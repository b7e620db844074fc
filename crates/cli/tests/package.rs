//! The release as an operator receives it: `scripts/package` makes the CPU tarball of the binary
//! under test, and the tarball, unpacked in a new folder, runs a miner's window with an empty
//! environment, loading libtorch from the package and nothing from this checkout or its cache.
#![allow(clippy::unwrap_used)]
// The test packages the binary under test as the CPU variant; a `cuda` build would be the 3.6 GB
// CUDA one (scripts/gpu-check is where that one runs).
#![cfg(not(feature = "cuda"))]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{a_network, cache, ok};

const BLOCK_TIME_MS: u64 = 500;
const BLOCKS_PER_WINDOW: u64 = 8;

fn checkout() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `scripts/package` of the binary under test into `out`: the tarball's path.
fn package(out: &Path) -> PathBuf {
    let binary = env!("CARGO_BIN_EXE_templar");
    let status = Command::new(checkout().join("scripts/package"))
        .args(["--binary", binary, "--fast", "--out"])
        .arg(out)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "scripts/package failed: {status}");
    let tarballs: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.to_string_lossy().ends_with("-cpu-linux-x86_64.tar.gz"))
        .collect();
    assert_eq!(
        tarballs.len(),
        1,
        "one CPU tarball in {out:?}: {tarballs:?}"
    );
    tarballs[0].clone()
}

fn run(command: &mut Command) -> String {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?}: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The libraries a process of `binary` initialised, as the dynamic loader reports them.
fn loaded_libraries(binary: &Path) -> Vec<String> {
    let output = Command::new("env")
        .args(["-i", "LD_DEBUG=libs"])
        .arg(binary)
        .arg("--version")
        .output()
        .unwrap();
    assert!(output.status.success());
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter_map(|line| {
            line.split_once("calling init: ")
                .map(|(_, path)| path.trim().to_string())
        })
        .collect()
}

#[test]
fn the_cpu_release_unpacked_elsewhere_runs_a_miner_window_with_an_empty_environment() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tarball = package(&d.join("out"));
    run(Command::new("sha256sum")
        .arg("--check")
        .arg(tarball.with_extension("gz.sha256").file_name().unwrap())
        .current_dir(d.join("out")));
    let unpacked = d.join("opt");
    std::fs::create_dir(&unpacked).unwrap();
    run(Command::new("tar")
        .arg("-xzf")
        .arg(&tarball)
        .args(["--strip-components=1", "-C"])
        .arg(&unpacked));
    let binary = unpacked.join("bin/templar");

    let version = run(Command::new("env").arg("-i").arg(&binary).arg("--version"));
    assert!(
        version.starts_with("templar ") && version.trim_end().ends_with(", cpu)"),
        "{version}"
    );
    let libraries = loaded_libraries(&binary);
    let torch: Vec<&String> = libraries
        .iter()
        .filter(|path| path.contains("libtorch") || path.contains("libc10"))
        .collect();
    assert!(!torch.is_empty(), "no libtorch among {libraries:?}");
    let root = unpacked.canonicalize().unwrap();
    for path in &torch {
        let real = Path::new(path.as_str()).canonicalize().unwrap();
        assert!(
            real.starts_with(&root),
            "{path} is loaded from outside the package"
        );
    }
    assert!(
        !libraries.iter().any(|path| path.contains("libtorch_cuda")),
        "the CPU release loads libtorch_cuda: {libraries:?}"
    );
    for carried in [
        "share/templar/templar@.service",
        "share/templar/operating.md",
    ] {
        assert!(unpacked.join(carried).is_file(), "{carried} missing");
    }

    // A network made with the checkout's binary; the packaged one mines in it, told everything
    // by flags, with no HOME, PATH or LIBTORCH.
    let net = d.join("net");
    std::fs::create_dir(&net).unwrap();
    a_network(&net, BLOCK_TIME_MS, BLOCKS_PER_WINDOW);
    ok(&net, &["chain", "status"]);
    let started = Instant::now();
    let mut miner = Command::new("env");
    miner
        .arg("-i")
        .arg(&binary)
        .args([
            "miner", "--wallet", "owner", "--hotkey", "m1", "--device", "cpu",
        ])
        .args(["--windows", "1", "--events", "events.jsonl"])
        .arg("--wallets-dir")
        .arg(net.join("wallets"))
        .arg("--chain")
        .arg(net.join("chain.sqlite"))
        .arg("--storage")
        .arg(format!("file://{}", net.join("store").display()))
        .args(["--data-dir", "data", "--state-dir", "state"])
        .current_dir(&net);
    run(&mut miner);
    assert!(started.elapsed() < Duration::from_secs(300));
    // One line an event: {"node": …, "at_ms": …, "event": {"event": kind, …}}.
    let events = std::fs::read_to_string(net.join("events.jsonl")).unwrap();
    let kinds: Vec<String> = events
        .lines()
        .map(|line| {
            let event: serde_json::Value = serde_json::from_str(line).unwrap();
            event["event"]["event"].as_str().unwrap().to_string()
        })
        .collect();
    for kind in ["trained", "uploaded", "applied"] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "no {kind} event: {kinds:?}"
        );
    }
}

/// deploy/'s files as the tools that read them do: hadolint on the Dockerfile, and
/// `systemd-analyze verify` on the unit (an instance of it, its ExecStart pointed at the binary
/// under test, since verify also checks that the command exists).
#[test]
fn deploy_files_pass_their_linters() {
    let linters = cache().join("deploy-linters");
    let deploy = checkout().join("deploy");
    run(Command::new(linters.join("hadolint/bin/hadolint")).arg(deploy.join("Dockerfile")));

    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(deploy.join("templar@.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/opt/templar/bin/templar "),
        "{unit}"
    );
    let unit = unit.replace("/opt/templar/bin/templar", env!("CARGO_BIN_EXE_templar"));
    std::fs::write(dir.path().join("templar@.service"), unit).unwrap();
    let output = Command::new(linters.join("systemd-analyze"))
        .args(["verify", "--man=no"])
        .arg(dir.path().join("templar@m1.service"))
        .output()
        .unwrap();
    let complaints = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && !complaints.contains("templar@"),
        "systemd-analyze verify: {complaints}"
    );
}
