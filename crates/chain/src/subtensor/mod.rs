//! Bittensor's chain (subtensor) behind the [`Chain`] trait.
//!
//! Everything goes through JSON-RPC with the runtime's metadata read at connect time and
//! followed across runtime upgrades: calls and storage are dynamic, so a new runtime never
//! breaks the build, and a changed type is an error that names it. The connection reconnects
//! with exponential backoff; a request made while it is down waits for it.

mod calls;
pub mod dev;
mod errors;
mod neurons;
mod reads;
mod retry;
mod values;
mod writes;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use subxt::backend::legacy::LegacyRpcMethods;
use subxt::backend::rpc::RpcClient;
use subxt::backend::rpc::reconnecting_rpc_client::{ExponentialBackoff, RpcClient as Reconnecting};
use subxt::{OnlineClient, PolkadotConfig};
use templar_protocol::{AccountId, Keypair};
use tokio::sync::Mutex;

use crate::chain::{Chain, ChainResult};
pub use crate::commit_reveal::Reveal;
use crate::commit_reveal::{PendingFile, PendingReveals};
use crate::types::{BlockInfo, ChainError, Hyperparameters, MAX_COMMITMENT_LEN, Metagraph, Neuron};
use calls::{COMMITMENTS, SUBTENSOR};
use errors::rpc;

/// Bittensor mainnet.
pub const FINNEY: &str = "wss://entrypoint-finney.opentensor.ai:443";
/// Bittensor's public testnet.
pub const TESTNET: &str = "wss://test.finney.opentensor.ai:443";
/// A subtensor node (or chopsticks) on this machine.
pub const LOCAL: &str = "ws://127.0.0.1:9944";

/// The websocket URL for `finney`, `test`, `local` or a `ws://`/`wss://` URL; `None` otherwise.
pub fn endpoint(name: &str) -> Option<String> {
    match name {
        "finney" => Some(FINNEY.into()),
        "test" | "testnet" => Some(TESTNET.into()),
        "local" => Some(LOCAL.into()),
        url if url.starts_with("ws://") || url.starts_with("wss://") => Some(url.into()),
        _ => None,
    }
}

/// How long the first connection may take before `connect` gives up with an error.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Reconnection attempts after a lost connection, ending at 30 s apart (about 15 minutes in
/// all); after that requests fail and the node stops with the error.
const RECONNECT_ATTEMPTS: usize = 40;
/// Bittensor's block time, when the runtime does not say.
const DEFAULT_BLOCK_TIME_MS: u64 = 12_000;

/// A subnet on a subtensor chain.
pub struct Subtensor {
    url: String,
    netuid: u16,
    client: OnlineClient<PolkadotConfig>,
    rpc: LegacyRpcMethods<PolkadotConfig>,
    block_time_ms: u64,
    /// Weights committed on a commit-reveal subnet and not yet revealed, kept across restarts
    /// once [`Subtensor::keep_reveals_in`] names a file.
    reveals: Mutex<PendingReveals>,
    updater: tokio::task::JoinHandle<()>,
}

impl Drop for Subtensor {
    fn drop(&mut self) {
        self.updater.abort();
    }
}

impl Subtensor {
    /// Connects to the chain at `url` and checks that subnet `netuid` exists.
    pub async fn connect(url: &str, netuid: u16) -> ChainResult<Subtensor> {
        let backoff = ExponentialBackoff::from_millis(250)
            .max_delay(Duration::from_secs(30))
            .take(RECONNECT_ATTEMPTS);
        let connecting = Reconnecting::builder()
            .retry_policy(backoff)
            .request_timeout(Duration::from_secs(120))
            .build(url);
        let reconnecting = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| {
                ChainError::Rpc(format!(
                    "no answer from {url} within {} s: is the node running and the URL right?",
                    CONNECT_TIMEOUT.as_secs()
                ))
            })?
            .map_err(|e| ChainError::Rpc(format!("cannot connect to {url}: {e}")))?;
        let rpc_client = RpcClient::new(reconnecting);
        let client = OnlineClient::<PolkadotConfig>::from_rpc_client(rpc_client.clone())
            .await
            .map_err(|e| rpc(url, e))?;
        // Follow runtime upgrades for as long as the connection lives; the subscription ends
        // when the connection drops, so it is made again once it is back.
        let updating = client.clone();
        let updater = tokio::spawn(async move {
            loop {
                if let Err(error) = updating.updater().perform_runtime_updates().await {
                    tracing::warn!(%error, "following runtime upgrades; resubscribing");
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        });
        let block_time_ms = block_time_ms(&client);
        let chain = Subtensor {
            url: url.to_string(),
            netuid,
            rpc: LegacyRpcMethods::new(rpc_client),
            client,
            block_time_ms,
            reveals: Mutex::new(PendingReveals::default()),
            updater,
        };
        let (_, head) = chain.head().await?;
        if !chain.read_bool(head, SUBTENSOR, "NetworksAdded").await? {
            return Err(ChainError::NoSubnet {
                chain: url.to_string(),
                netuid,
            });
        }
        Ok(chain)
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Keeps weights committed and not yet revealed in `path` (beside the validator's state), and
    /// takes up those a previous run left there: they are revealed when due, as if the process had
    /// never stopped. Returns how many were taken up.
    pub fn keep_reveals_in(&mut self, path: PathBuf) -> usize {
        let netuid = self.netuid;
        self.reveals.get_mut().keep_in(PendingFile { path, netuid })
    }

    /// Milliseconds between blocks, from the runtime's constants.
    pub fn block_time_ms(&self) -> u64 {
        self.block_time_ms
    }
}

/// The block time from the runtime's constants (Aura's slot duration, or twice Timestamp's
/// minimum period).
fn block_time_ms(client: &OnlineClient<PolkadotConfig>) -> u64 {
    let constant = |pallet: &str, name: &str| {
        client
            .constants()
            .at(&subxt::dynamic::constant(pallet, name))
            .ok()
            .and_then(|thunk| thunk.to_value().ok())
            .and_then(|value| values::number(&value))
            .and_then(|n| u64::try_from(n).ok())
            .filter(|&n| n > 0)
    };
    constant("Aura", "SlotDuration")
        .or_else(|| constant("Timestamp", "MinimumPeriod").map(|p| 2 * p))
        .unwrap_or(DEFAULT_BLOCK_TIME_MS)
}

fn fraction(part: u16) -> f64 {
    f64::from(part) / f64::from(u16::MAX)
}

impl Chain for Subtensor {
    fn netuid(&self) -> u16 {
        self.netuid
    }

    async fn block(&self) -> ChainResult<BlockInfo> {
        let (number, hash) = self.head().await?;
        Ok(BlockInfo {
            number,
            timestamp_ms: self.timestamp_at(hash).await?,
        })
    }

    async fn block_timestamp(&self, number: u64) -> ChainResult<u64> {
        let (head, hash) = self.head().await?;
        if number > head {
            // Future blocks: the head's time plus one block time per block to come.
            let now = self.timestamp_at(hash).await?;
            return Ok(now + (number - head) * self.block_time_ms);
        }
        self.timestamp_at(self.hash_of(number).await?).await
    }

    async fn wait_for_block(&self, number: u64) -> ChainResult<BlockInfo> {
        let mut backoff = Duration::from_millis(500);
        loop {
            let head = self.block().await?;
            if head.number >= number {
                return Ok(head);
            }
            match self.client.blocks().subscribe_best().await {
                Ok(mut blocks) => {
                    while let Some(block) = blocks.next().await {
                        match block {
                            Ok(block) if u64::from(block.number()) >= number => {
                                return self.block().await;
                            }
                            Ok(_) => backoff = Duration::from_millis(500),
                            Err(error) => {
                                tracing::warn!(%error, "block subscription interrupted; resubscribing");
                                break;
                            }
                        }
                    }
                }
                Err(error) => tracing::warn!(%error, "subscribing to blocks"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    async fn hyperparameters(&self) -> ChainResult<Hyperparameters> {
        let (_, at) = self.head().await?;
        let number = |entry: &'static str| self.read_number(at, SUBTENSOR, entry);
        let kappa = number("Kappa").await?;
        let bonds = number("BondsMovingAverage").await?;
        Ok(Hyperparameters {
            tempo: number("Tempo").await?,
            weights_rate_limit: number("WeightsSetRateLimit").await?,
            activity_cutoff: number("ActivityCutoff").await?,
            max_uids: u16::try_from(number("MaxAllowedUids").await?).unwrap_or(u16::MAX),
            max_validators: u16::try_from(number("MaxAllowedValidators").await?)
                .unwrap_or(u16::MAX),
            min_validator_stake: self.global_number(at, "StakeThreshold").await,
            burn: number("Burn").await?,
            immunity_period: number("ImmunityPeriod").await?,
            kappa: kappa as f64 / f64::from(u16::MAX),
            // Subtensor stores the bonds moving average in millionths.
            bonds_moving_average: bonds as f64 / 1e6,
            emission_per_block: self.global_number(at, "BlockEmission").await,
            weights_version: number("WeightsVersionKey").await?,
            commit_reveal_weights_enabled: self
                .read_bool(at, SUBTENSOR, "CommitRevealWeightsEnabled")
                .await?,
            commit_reveal_period: number("RevealPeriodEpochs").await?,
        })
    }

    async fn metagraph(&self) -> ChainResult<Metagraph> {
        let (head, _) = self.head().await?;
        self.metagraph_at(head).await
    }

    async fn metagraph_at(&self, block: u64) -> ChainResult<Metagraph> {
        let (head, _) = self.head().await?;
        if block > head {
            return Err(ChainError::FutureBlock { block, head });
        }
        let at = self.hash_of(block).await?;
        let (method, args) = &neurons::neurons_lite_call(self.netuid);
        let raw = retry::read(method, || {
            self.client
                .runtime_api()
                .at(at)
                .call_raw(method, Some(args))
        })
        .await
        .map_err(|e| rpc(&self.url, e))?;
        let rows =
            neurons::decode_neurons(&self.client.metadata(), &raw).map_err(ChainError::Decode)?;
        // Keys end with the raw account (Twox64Concat) or the raw uid (Identity).
        let mut commitments = HashMap::new();
        for (key, value) in self.iter_subnet(at, COMMITMENTS, "CommitmentOf").await? {
            if let (Some(account), Some(bytes)) =
                (key.last_chunk::<32>(), neurons::commitment_bytes(&value))
            {
                commitments.insert(*account, bytes);
            }
        }
        let mut registered = HashMap::new();
        for (key, value) in self
            .iter_subnet(at, SUBTENSOR, "BlockAtRegistration")
            .await?
        {
            if let (Some(uid), Some(block)) = (key.last_chunk::<2>(), values::number(&value)) {
                registered.insert(u16::from_le_bytes(*uid), u64::try_from(block).unwrap_or(0));
            }
        }
        let hotkeys: Vec<[u8; 32]> = rows.iter().map(|row| row.hotkey).collect();
        let stakes = self.subnet_stakes(at, &hotkeys).await?;
        let mut neurons: Vec<Neuron> = rows
            .into_iter()
            .map(|row| Neuron {
                uid: row.uid,
                hotkey: AccountId(row.hotkey),
                coldkey: AccountId(row.coldkey),
                stake: stakes
                    .as_ref()
                    .and_then(|s| s.get(&row.hotkey).copied())
                    .unwrap_or(row.stake),
                validator_permit: row.validator_permit,
                rank: fraction(row.rank),
                trust: fraction(row.trust),
                consensus: fraction(row.consensus),
                incentive: fraction(row.incentive),
                dividends: fraction(row.dividends),
                validator_trust: fraction(row.validator_trust),
                emission: row.emission,
                registered_at: registered.get(&row.uid).copied().unwrap_or(0),
                last_update: row.last_update,
                commitment: commitments.remove(&row.hotkey),
            })
            .collect();
        neurons.sort_by_key(|n| n.uid);
        Ok(Metagraph {
            netuid: self.netuid,
            block,
            neurons,
        })
    }

    async fn register(&self, coldkey: &Keypair, hotkey: &AccountId) -> ChainResult<u16> {
        if let Some(uid) = self.metagraph().await?.uid_of(hotkey) {
            return Err(ChainError::AlreadyRegistered(*hotkey, uid));
        }
        let payload = self.metadata_call(|m| calls::burned_register(m, self.netuid, hotkey.0))?;
        self.submit(coldkey, "burned_register", payload).await?;
        self.metagraph()
            .await?
            .uid_of(hotkey)
            .ok_or(ChainError::NotRegistered(*hotkey))
    }

    async fn add_stake(&self, coldkey: &Keypair, hotkey: &AccountId, rao: u64) -> ChainResult<()> {
        if rao == 0 {
            return Err(ChainError::ZeroAmount);
        }
        let payload = self.metadata_call(|m| calls::add_stake(m, self.netuid, hotkey.0, rao))?;
        self.submit(coldkey, "add_stake", payload).await.map(drop)
    }

    async fn commit(&self, hotkey: &Keypair, data: &[u8]) -> ChainResult<()> {
        if data.len() > MAX_COMMITMENT_LEN {
            return Err(ChainError::CommitmentTooLong(data.len()));
        }
        let payload = self.metadata_call(|m| calls::set_commitment(m, self.netuid, data))?;
        self.submit(hotkey, "set_commitment", payload)
            .await
            .map(drop)
    }

    async fn reveal_due_weights(&self, hotkey: &Keypair) -> ChainResult<usize> {
        self.reveal_due(hotkey).await
    }

    async fn set_weights(
        &self,
        hotkey: &Keypair,
        uids: &[u16],
        weights: &[u16],
        version_key: u64,
    ) -> ChainResult<()> {
        if uids.len() != weights.len() {
            return Err(ChainError::BadWeights(format!(
                "{} uids but {} weights",
                uids.len(),
                weights.len()
            )));
        }
        let (_, at) = self.head().await?;
        if self
            .read_bool(at, SUBTENSOR, "CommitRevealWeightsEnabled")
            .await?
        {
            return self
                .commit_weights(hotkey, uids, weights, version_key)
                .await;
        }
        let payload =
            self.metadata_call(|m| calls::set_weights(m, self.netuid, uids, weights, version_key))?;
        self.submit(hotkey, "set_weights", payload).await.map(drop)
    }
}
