//! Starts chopsticks on a free port with the recorded `raonet.json` subtensor runtime.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Chopsticks {
    pub url: String,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// The chopsticks `scripts/setup` installs.
fn executable() -> PathBuf {
    let cache = std::env::var_os("TEMPLAR_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/templar")
        });
    let path = cache.join("chopsticks-1.5.1/node_modules/.bin/chopsticks");
    assert!(
        path.exists(),
        "chopsticks is not installed at {}: run scripts/setup (scripts/test skips these tests, and says so, when npm cannot install it)",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Chopsticks {
    pub fn start() -> Chopsticks {
        let genesis = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/chain-fixtures/raonet.json"
        );
        assert!(
            PathBuf::from(genesis).exists(),
            "{genesis} is missing (the shared chain fixtures)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("chopsticks.log");
        let port = free_port();
        let out = std::fs::File::create(&log).expect("log file");
        let child = Command::new(executable())
            .args([
                "--genesis",
                genesis,
                "--host",
                "127.0.0.1",
                "--build-block-mode",
                "Instant",
            ])
            .arg(format!("--port={port}"))
            .current_dir(dir.path())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .expect("start chopsticks");
        let node = Chopsticks {
            url: format!("ws://127.0.0.1:{port}"),
            child,
            log,
            _dir: dir,
        };
        node.wait_until_listening(port);
        node
    }

    fn wait_until_listening(&self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(180);
        while Instant::now() < deadline {
            let listening =
                std::fs::read_to_string(&self.log).is_ok_and(|l| l.contains("RPC listening"));
            if listening && TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        panic!("chopsticks did not start within 180 s; its log:\n{log}");
    }
}

impl Drop for Chopsticks {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
