//! `--metrics-addr` as an operator uses it: a real Prometheus server (Debian's, unpacked by
//! `scripts/setup`) scrapes a miner of two ranks and reads back its window; `/healthz` answers
//! 200 while it completes windows and 503 once a rank hangs (stopped with SIGSTOP) and two
//! windows pass without one.
//!
//! Needs prometheus (`scripts/setup`); `scripts/test` skips it, and says so, when apt-get could
//! not fetch it.
#![allow(clippy::unwrap_used)]

mod common;

use common::{a_network, cache, templar};

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BLOCK_TIME_MS: u64 = 500;
const BLOCKS_PER_WINDOW: u64 = 8;
const WINDOW: Duration = Duration::from_millis(BLOCK_TIME_MS * BLOCKS_PER_WINDOW);

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// One HTTP/1.0 GET: the status code and the body, or `None` when nothing answers yet.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// Processes killed when the test ends, however it ends: our children, and their children
/// by pid.
#[derive(Default)]
struct Reaper {
    children: Vec<Child>,
    pids: Vec<u32>,
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in &self.pids {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The launcher's child that runs rank `rank`.
fn rank_pid(launcher: u32, rank: usize) -> Option<u32> {
    let children =
        std::fs::read_to_string(format!("/proc/{launcher}/task/{launcher}/children")).ok()?;
    children.split_whitespace().find_map(|pid| {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_rank = args
            .windows(2)
            .any(|w| w[0] == b"--rank" && w[1] == rank.to_string().as_bytes());
        is_rank.then(|| pid.parse().ok()).flatten()
    })
}

/// The value Prometheus holds for `query`, once it has one.
fn prometheus_value(port: u16, query: &str) -> Option<f64> {
    let (status, body) = get(port, &format!("/api/v1/query?query={query}"))?;
    if status != 200 {
        return None;
    }
    let answer: serde_json::Value = serde_json::from_str(&body).ok()?;
    answer["data"]["result"][0]["value"][1]
        .as_str()?
        .parse()
        .ok()
}

fn wait_for<T>(what: &str, limit: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn start_prometheus(d: &Path, target: u16, port: u16) -> Child {
    let config = d.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - \
             job_name: templar\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(d.join("prometheus.log")).unwrap();
    Command::new(cache().join("prometheus/usr/bin/prometheus"))
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", d.join("tsdb").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("prometheus from scripts/setup")
}

#[test]
fn prometheus_scrapes_a_node_and_healthz_sees_it_stall() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    a_network(d, BLOCK_TIME_MS, BLOCKS_PER_WINDOW);
    let metrics_port = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let log = std::fs::File::create(d.join("miner.log")).unwrap();
    let miner = templar(
        d,
        &[
            "miner",
            "--wallet",
            "owner",
            "--hotkey",
            "m1",
            "--storage",
            &format!("file://{}", d.join("store").display()),
            "--data-dir",
            "data",
            "--device",
            "cpu",
            "--ranks",
            "2",
            "--metrics-addr",
            &metrics_addr,
        ],
    )
    .stdout(Stdio::null())
    .stderr(log)
    .spawn()
    .unwrap();
    let launcher = miner.id();
    let mut reaper = Reaper::default();
    reaper.children.push(miner);
    let prometheus_port = free_port();
    reaper
        .children
        .push(start_prometheus(d, metrics_port, prometheus_port));
    let rank1 = wait_for("rank 1 started", Duration::from_secs(30), || {
        rank_pid(launcher, 1)
    });
    reaper.pids.push(rank1);
    if let Some(rank0) = rank_pid(launcher, 0) {
        reaper.pids.push(rank0);
    }

    // Prometheus holds the node's completed windows.
    let completed = wait_for(
        "Prometheus scraping a completed window",
        Duration::from_secs(120),
        || prometheus_value(prometheus_port, "templar_last_completed_window"),
    );
    let windows = prometheus_value(prometheus_port, "templar_windows_completed_total").unwrap();
    assert!(windows >= 1.0, "window {completed}, {windows} completed");
    let up = wait_for("the scrape's up", Duration::from_secs(10), || {
        prometheus_value(prometheus_port, "up")
    });
    assert_eq!(up, 1.0);
    let (status, body) = get(metrics_port, "/healthz").unwrap();
    assert_eq!(status, 200, "{body}");
    let (_, metrics) = get(metrics_port, "/metrics").unwrap();
    assert!(
        metrics.contains(r#"templar_node_info{role="miner",uid="0""#),
        "{metrics}"
    );
    assert!(metrics.contains("templar_upload_bytes_total"), "{metrics}");

    // A hung rank holds rank 0 in its next collective: no window completes, yet the metrics
    // thread still answers, and says so.
    let stopped = Command::new("kill")
        .args(["-STOP", &rank1.to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let stalled_at = Instant::now();
    let body = wait_for(
        "/healthz failing",
        4 * WINDOW + Duration::from_secs(30),
        || match get(metrics_port, "/healthz") {
            Some((503, body)) => Some(body),
            _ => None,
        },
    );
    assert!(
        stalled_at.elapsed() >= WINDOW,
        "unhealthy after {:?}, before a window passed: {body}",
        stalled_at.elapsed()
    );
    assert!(body.starts_with("stalled"), "{body}");
    let (_, metrics) = get(metrics_port, "/metrics").unwrap();
    assert!(metrics.contains("templar_healthy 0"), "{metrics}");
    drop(reaper);
}
