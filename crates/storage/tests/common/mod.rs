//! A real S3-protocol server (s3s-fs, installed by `scripts/setup`) on 127.0.0.1 for tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use templar_storage::{S3Settings, StoreConfig};

pub const BUCKET: &str = "templar-test";
const ACCESS_KEY: &str = "templar-test-key";
const SECRET_KEY: &str = "templar-test-secret";

fn s3s_fs_binary() -> PathBuf {
    if let Ok(path) = std::env::var("TEMPLAR_S3S_FS") {
        return PathBuf::from(path);
    }
    let cache = std::env::var("TEMPLAR_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/templar"));
    let binary = cache.join("s3s-fs-0.14.1/bin/s3s-fs");
    assert!(
        binary.exists(),
        "{} is missing: run scripts/setup to build the S3 test server",
        binary.display()
    );
    binary
}

/// An s3s-fs process serving one bucket from a temporary directory; killed on drop.
pub struct S3Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    root: tempfile::TempDir,
}

impl S3Server {
    pub fn start() -> S3Server {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = S3Server {
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            root,
        };
        server.resume();
        server
    }

    /// Starts the server process (again) on the same port and data directory.
    pub fn resume(&mut self) {
        let child = Command::new(s3s_fs_binary())
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &self.addr.port().to_string(),
            ])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(self.root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(self.addr).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn config(&self) -> StoreConfig {
        let mut config = StoreConfig::new(format!("s3://{BUCKET}"));
        config.s3 = S3Settings {
            endpoint: Some(format!("http://{}", self.addr)),
            region: Some("us-east-1".into()),
            access_key_id: Some(ACCESS_KEY.into()),
            secret_access_key: Some(SECRET_KEY.into()),
            session_token: None,
            path_style: Some(true),
        };
        config
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
