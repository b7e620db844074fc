//! Chopsticks, which runs a real subtensor runtime without a network (from a chain spec such as
//! `raonet.json`, or forked from a live chain), and its development RPCs: funding accounts,
//! changing storage (a subnet's hyperparameters, say) and producing blocks on a chain that has
//! no block author. For tests and local networks; a real node refuses these calls.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use subxt::backend::rpc::RpcClient;
use subxt::ext::subxt_rpcs::client::RpcParams;
use templar_protocol::AccountId;

use super::Subtensor;
use super::errors::rpc;
use crate::chain::{Chain, ChainResult};
use crate::types::ChainError;

/// The chopsticks version `scripts/setup` installs.
pub const CHOPSTICKS_VERSION: &str = "1.5.1";

/// Where `scripts/setup` installs chopsticks: `$TEMPLAR_CACHE` or `~/.cache/templar`.
pub fn installed_chopsticks() -> PathBuf {
    let cache = std::env::var_os("TEMPLAR_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/templar")
        });
    cache.join(format!(
        "chopsticks-{CHOPSTICKS_VERSION}/node_modules/.bin/chopsticks"
    ))
}

/// When chopsticks builds blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockMode {
    /// A block for each transaction, at once: fast tests.
    Instant,
    /// Only on `dev_newBlock`; transactions wait in the pool for it, as on a chain with a block
    /// author (with [`DevRpc::keep_pace`], chain time then follows the wall clock exactly).
    Manual,
}

/// A recorded chain fixture (`raonet.json`, `finney-spec393.scale`): under
/// `$TEMPLAR_CHAIN_FIXTURES`, else in the nearest `shared/chain-fixtures` beside the checkout or
/// one of its parents. `None` when it is nowhere; `scripts/test` then skips the tests that need it.
pub fn chain_fixture(name: &str) -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("TEMPLAR_CHAIN_FIXTURES") {
        return Some(PathBuf::from(dir).join(name)).filter(|p| p.exists());
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|dir| dir.join("shared/chain-fixtures").join(name))
        .find(|path| path.exists())
}

/// A chopsticks process serving one chain on a free local port; killed when dropped.
pub struct Chopsticks {
    pub url: String,
    port: u16,
    command: Command,
    child: Child,
    log: PathBuf,
    /// How many times it was started (each start logs one "RPC listening").
    starts: usize,
}

impl Chopsticks {
    /// Starts `executable` on the chain spec `genesis`, with its output in `log`; returns once it
    /// accepts connections.
    pub fn start(
        executable: &Path,
        genesis: &Path,
        mode: BlockMode,
        log: &Path,
    ) -> ChainResult<Chopsticks> {
        Self::start_with(executable, genesis, mode, log, |_| {})
    }

    /// [`Chopsticks::start`], with `prepare` adjusting the process before it starts (its own
    /// process group, say, so that a terminal's Ctrl-C reaches only its supervisor).
    pub fn start_with(
        executable: &Path,
        genesis: &Path,
        mode: BlockMode,
        log: &Path,
        prepare: impl FnOnce(&mut Command),
    ) -> ChainResult<Chopsticks> {
        let failed = |why: String| ChainError::Rpc(format!("starting chopsticks: {why}"));
        if !executable.exists() {
            return Err(failed(format!(
                "{} is not installed: run scripts/setup (it needs the npm registry)",
                executable.display()
            )));
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map_err(|e| failed(format!("no free port: {e}")))?
            .port();
        let out =
            std::fs::File::create(log).map_err(|e| failed(format!("{}: {e}", log.display())))?;
        let err = out.try_clone().map_err(|e| failed(e.to_string()))?;
        let mut command = Command::new(executable);
        command
            .arg("--genesis")
            .arg(genesis)
            .args(["--host", "127.0.0.1", "--build-block-mode"])
            .arg(match mode {
                BlockMode::Instant => "Instant",
                BlockMode::Manual => "Manual",
            })
            .arg(format!("--port={port}"))
            .current_dir(log.parent().unwrap_or(Path::new(".")))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        prepare(&mut command);
        let child = command
            .spawn()
            .map_err(|e| failed(format!("{}: {e}", executable.display())))?;
        let mut node = Chopsticks {
            url: format!("ws://127.0.0.1:{port}"),
            port,
            command,
            child,
            log: log.to_path_buf(),
            starts: 1,
        };
        node.wait_until_listening()?;
        Ok(node)
    }

    /// Kills the process and starts it again on the same port: a fresh chain from the same
    /// spec, behind the same URL (what a client sees when its node restarts).
    pub fn restart(&mut self) -> ChainResult<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = self
            .command
            .spawn()
            .map_err(|e| ChainError::Rpc(format!("restarting chopsticks: {e}")))?;
        self.starts += 1;
        self.wait_until_listening()
    }

    fn wait_until_listening(&mut self) -> ChainResult<()> {
        let port = self.port;
        let deadline = Instant::now() + Duration::from_secs(180);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(self.failure(&format!("chopsticks exited ({status})")));
            }
            let said_so = std::fs::read_to_string(&self.log)
                .is_ok_and(|l| l.matches("RPC listening").count() >= self.starts);
            if said_so && TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Err(self.failure("chopsticks did not listen within 180 s"))
    }

    fn failure(&self, what: &str) -> ChainError {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        ChainError::Rpc(format!(
            "{what}; the end of {}:\n{}",
            self.log.display(),
            tail.join("\n")
        ))
    }
}

impl Drop for Chopsticks {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct DevRpc {
    url: String,
    client: RpcClient,
}

impl DevRpc {
    pub async fn connect(url: &str) -> ChainResult<DevRpc> {
        let client = RpcClient::from_insecure_url(url)
            .await
            .map_err(|e| rpc(url, e))?;
        Ok(DevRpc {
            url: url.to_string(),
            client,
        })
    }

    async fn call(&self, method: &str, param: serde_json::Value) -> ChainResult<()> {
        let mut params = RpcParams::new();
        params.push(param).map_err(|e| rpc(&self.url, e))?;
        self.client
            .request::<serde_json::Value>(method, params)
            .await
            .map_err(|e| rpc(&self.url, format!("{method}: {e}")))?;
        Ok(())
    }

    /// Writes storage, in chopsticks' JSON form: `{"Pallet": {"Entry": value or [[keys, value]…]}}`.
    pub async fn set_storage(&self, changes: serde_json::Value) -> ChainResult<()> {
        self.call("dev_setStorage", changes).await
    }

    /// Gives `account` a free balance of `rao`.
    pub async fn fund(&self, account: &AccountId, rao: u64) -> ChainResult<()> {
        self.set_storage(json!({
            "System": { "Account": [[[account.to_ss58()], {
                "providers": 1,
                "data": { "free": rao.to_string() }
            }]] }
        }))
        .await
    }

    /// Sets a subnet's storage value `SubtensorModule.<entry>(netuid)` (a hyperparameter).
    pub async fn set_subnet_value(
        &self,
        netuid: u16,
        entry: &str,
        value: serde_json::Value,
    ) -> ChainResult<()> {
        self.set_storage(json!({ "SubtensorModule": { entry: [[[netuid], value]] } }))
            .await
    }

    /// Produces `count` blocks.
    pub async fn new_blocks(&self, count: u32) -> ChainResult<()> {
        self.call("dev_newBlock", json!({ "count": count })).await
    }

    /// Sets the chain's clock: the next block is stamped one block time after `ms`.
    pub async fn time_travel(&self, ms: u64) -> ChainResult<()> {
        self.call("dev_timeTravel", json!(ms)).await
    }

    /// Produces blocks forever, each when the wall clock reaches its timestamp, as a chain with
    /// a block author would; a chain that fell behind the wall clock jumps to it. Nodes compare
    /// chain time with their own clocks (upload deadlines), so a chain that runs ahead or behind
    /// would make honest uploads look early or late.
    pub async fn keep_pace(&self, chain: &Subtensor) -> ChainResult<()> {
        let block_time = chain.block_time_ms();
        loop {
            let head = chain.block().await?;
            let next = head.timestamp_ms + block_time;
            let now = now_ms();
            if next > now {
                tokio::time::sleep(Duration::from_millis(next - now)).await;
            } else {
                self.time_travel(now - block_time).await?;
            }
            self.new_blocks(1).await?;
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
