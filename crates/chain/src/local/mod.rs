//! `LocalChain`: the embedded chain for one machine.
//!
//! One SQLite file holds a subnet's whole state. Several processes share it safely: every state
//! change is a signed extrinsic applied in an immediate (write-locking) transaction, so writers
//! queue instead of overwriting each other. Blocks advance with wall time from the genesis time
//! at a fixed block time; epochs (Yuma consensus) run every `tempo` blocks and are applied
//! lazily, in order, before any later extrinsic, so each epoch sees exactly the state of its block.

mod epoch;
pub mod extrinsic;
mod schema;
mod state;
mod weights;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};
use templar_protocol::{AccountId, Keypair};

use crate::chain::{Chain, ChainResult};
use crate::commit_reveal::{self, PendingFile, PendingReveal, PendingReveals, Reveal};
use crate::types::{BlockInfo, ChainError, Hyperparameters, Metagraph, Neuron};
pub use extrinsic::{Call, SignedExtrinsic};

/// How a LocalChain starts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Genesis {
    pub netuid: u16,
    /// Milliseconds since the Unix epoch of block 0.
    pub genesis_ms: u64,
    pub block_time_ms: u64,
    pub hyperparameters: Hyperparameters,
    /// Initial balances (rao).
    pub balances: Vec<(AccountId, u64)>,
}

impl Genesis {
    /// A genesis starting now.
    pub fn now(netuid: u16, block_time_ms: u64, hyperparameters: Hyperparameters) -> Genesis {
        Genesis {
            netuid,
            genesis_ms: now_ms(),
            block_time_ms,
            hyperparameters,
            balances: Vec::new(),
        }
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct Inner {
    path: PathBuf,
    db: Mutex<Connection>,
    genesis: Genesis,
    genesis_id: [u8; 32],
    /// This process's weights commits awaiting their reveal (commit-reveal subnets).
    reveals: Mutex<PendingReveals>,
}

/// Where and how an extrinsic was applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Included {
    pub block: u64,
    /// The uid a registration got.
    pub uid: Option<u16>,
}

/// A handle on a LocalChain file; cheap to clone.
#[derive(Clone)]
pub struct LocalChain {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LocalChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LocalChain({})", self.inner.path.display())
    }
}

fn genesis_json(genesis: &Genesis) -> Result<String, ChainError> {
    serde_json::to_string(genesis).map_err(|e| ChainError::Corrupt(e.to_string()))
}

impl LocalChain {
    /// Creates a new chain file; the file appears complete or not at all.
    pub fn create(path: &Path, genesis: &Genesis) -> Result<LocalChain, ChainError> {
        if path.exists() {
            return Err(ChainError::AlreadyExists(path.display().to_string()));
        }
        if genesis.block_time_ms == 0 || genesis.hyperparameters.tempo == 0 {
            return Err(ChainError::Corrupt(
                "block time and tempo must be positive".into(),
            ));
        }
        let staging = path.with_extension(format!("creating-{}", std::process::id()));
        let _ = std::fs::remove_file(&staging);
        {
            let mut db = Connection::open(&staging)?;
            db.execute_batch(schema::SCHEMA)?;
            let tx = db.transaction()?;
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('genesis', ?1)",
                [genesis_json(genesis)?],
            )?;
            for (account, rao) in &genesis.balances {
                state::credit(&tx, account, i128::from(*rao))?;
            }
            tx.commit()?;
        }
        std::fs::rename(&staging, path).map_err(|e| {
            ChainError::Database(format!(
                "cannot move the new chain into {}: {e}",
                path.display()
            ))
        })?;
        LocalChain::open(path)
    }

    pub fn open(path: &Path) -> Result<LocalChain, ChainError> {
        if !path.exists() {
            return Err(ChainError::NotInitialized(path.display().to_string()));
        }
        let db = schema::connect(path)?;
        db.execute_batch(schema::SCHEMA)?;
        db.execute_batch(schema::BACKFILL)?;
        let json: String = db
            .query_row("SELECT value FROM meta WHERE key = 'genesis'", [], |r| {
                r.get(0)
            })
            .optional()?
            .ok_or_else(|| ChainError::Corrupt(format!("{} has no genesis", path.display())))?;
        let genesis: Genesis =
            serde_json::from_str(&json).map_err(|e| ChainError::Corrupt(e.to_string()))?;
        Ok(LocalChain {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                db: Mutex::new(db),
                genesis_id: *blake3::hash(json.as_bytes()).as_bytes(),
                genesis,
                reveals: Mutex::new(PendingReveals::default()),
            }),
        })
    }

    pub fn genesis(&self) -> &Genesis {
        &self.inner.genesis
    }

    /// Signatures of this chain's extrinsics commit to this id.
    pub fn genesis_id(&self) -> &[u8; 32] {
        &self.inner.genesis_id
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub fn block_now(&self) -> BlockInfo {
        let g = &self.inner.genesis;
        let number = now_ms().saturating_sub(g.genesis_ms) / g.block_time_ms;
        BlockInfo {
            number,
            timestamp_ms: self.timestamp_of(number),
        }
    }

    pub fn timestamp_of(&self, block: u64) -> u64 {
        let g = &self.inner.genesis;
        g.genesis_ms + block.saturating_mul(g.block_time_ms)
    }

    /// Runs `work` in a write transaction after applying every epoch due by now.
    fn write<T>(
        &self,
        work: impl FnOnce(&Connection, u64) -> Result<T, ChainError>,
    ) -> Result<T, ChainError> {
        let mut db = self
            .inner
            .db
            .lock()
            .map_err(|_| ChainError::Database("connection lock poisoned".into()))?;
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let block = self.block_now().number;
        self.catch_up(&tx, block)?;
        let value = work(&tx, block)?;
        tx.commit()?;
        Ok(value)
    }

    fn catch_up(&self, db: &Connection, block: u64) -> Result<(), ChainError> {
        let hp = &self.inner.genesis.hyperparameters;
        let last: u64 = db
            .query_row("SELECT value FROM meta WHERE key = 'last_epoch'", [], |r| {
                r.get::<_, String>(0)
            })
            .optional()?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut next = (last / hp.tempo + 1) * hp.tempo;
        if next > block {
            return Ok(());
        }
        while next <= block {
            epoch::epoch_at(db, hp, next)?;
            next += hp.tempo;
        }
        db.execute(
            "INSERT INTO meta (key, value) VALUES ('last_epoch', ?1)
             ON CONFLICT(key) DO UPDATE SET value = ?1",
            [(next - hp.tempo).to_string()],
        )?;
        Ok(())
    }

    /// Verifies and applies a signed extrinsic.
    pub fn submit_signed(&self, extrinsic: &SignedExtrinsic) -> Result<Included, ChainError> {
        extrinsic.verify(&self.inner.genesis_id)?;
        let hp = self.inner.genesis.hyperparameters.clone();
        let netuid = self.inner.genesis.netuid;
        self.write(|db, block| {
            let expected = state::nonce(db, &extrinsic.signer)?;
            if extrinsic.nonce != expected {
                return Err(ChainError::BadNonce {
                    signer: extrinsic.signer,
                    expected,
                    got: extrinsic.nonce,
                });
            }
            let uid = state::apply(db, &hp, netuid, block, &extrinsic.signer, &extrinsic.call)?;
            state::bump_nonce(db, &extrinsic.signer)?;
            db.execute(
                "INSERT INTO extrinsics (block, signer, nonce, call) VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![
                    block as i64,
                    extrinsic.signer.as_bytes(),
                    extrinsic.nonce as i64,
                    serde_json::to_string(&extrinsic.call).unwrap_or_default()
                ],
            )?;
            Ok(Included { block, uid })
        })
    }

    /// Signs `call` with `signer` at its current nonce and submits it; retries once when another
    /// process used the same nonce in between.
    pub fn submit(&self, signer: &Keypair, call: Call) -> Result<Included, ChainError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let nonce = self.nonce(&signer.account())?;
            let extrinsic =
                SignedExtrinsic::sign(signer, &self.inner.genesis_id, nonce, call.clone());
            match self.submit_signed(&extrinsic) {
                Err(ChainError::BadNonce { .. }) if attempts < 5 => continue,
                other => return other,
            }
        }
    }

    pub fn nonce(&self, account: &AccountId) -> Result<u64, ChainError> {
        self.write(|db, _| state::nonce(db, account))
    }

    pub fn balance(&self, account: &AccountId) -> Result<u64, ChainError> {
        self.write(|db, _| state::balance(db, account))
    }

    /// The subnet now, after every epoch due.
    pub fn metagraph_now(&self) -> Result<Metagraph, ChainError> {
        let netuid = self.inner.genesis.netuid;
        self.write(|db, block| {
            let mut statement = db.prepare(
                "SELECT n.uid, n.hotkey, n.coldkey, n.validator_permit, n.rank, n.trust,
                        n.consensus, n.incentive, n.dividends, n.validator_trust, n.emission,
                        n.registered_at, n.last_update, c.data,
                        (SELECT COALESCE(SUM(s.amount), 0) FROM stakes s WHERE s.hotkey = n.hotkey)
                 FROM neurons n LEFT JOIN commitments c ON c.hotkey = n.hotkey ORDER BY n.uid",
            )?;
            let neurons = statement
                .query_map([], neuron_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Metagraph {
                netuid,
                block,
                neurons,
            })
        })
    }

    /// The subnet as it stood at the end of block `block`: the hotkey holding each uid then
    /// (a uid pruned since shows its holder of that time), the results of the last epoch at or
    /// before it (none for a holder registered since that epoch: a newcomer inherits no
    /// incentive, as on Bittensor; an epoch runs before its block's extrinsics), and each
    /// hotkey's latest commitment by then. Stake and `last_update` are
    /// today's (they do not decide peer sets; a pruned holder's `last_update` is its
    /// registration).
    pub fn metagraph_as_of(&self, block: u64) -> Result<Metagraph, ChainError> {
        let netuid = self.inner.genesis.netuid;
        self.write(|db, now| {
            if block > now {
                return Err(ChainError::FutureBlock { block, head: now });
            }
            let mut statement = db.prepare(
                "SELECT r.uid, r.hotkey, r.coldkey, COALESCE(e.validator_permit, 0),
                        COALESCE(e.rank, 0), COALESCE(e.trust, 0), COALESCE(e.consensus, 0),
                        COALESCE(e.incentive, 0), COALESCE(e.dividends, 0),
                        COALESCE(e.validator_trust, 0), COALESCE(e.emission, 0),
                        r.registered_at, COALESCE(n.last_update, r.registered_at),
                        (SELECT c.data FROM commitment_history c
                         WHERE c.hotkey = r.hotkey AND c.block <= ?1
                         ORDER BY c.block DESC LIMIT 1),
                        (SELECT COALESCE(SUM(s.amount), 0) FROM stakes s WHERE s.hotkey = r.hotkey)
                 FROM registrations r
                 LEFT JOIN neurons n ON n.uid = r.uid AND n.hotkey = r.hotkey
                 LEFT JOIN epoch_history e ON e.uid = r.uid AND e.block > r.registered_at
                     AND e.block = (SELECT MAX(h.block) FROM epoch_history h WHERE h.block <= ?1)
                 WHERE r.registered_at <= ?1 AND (r.pruned_at IS NULL OR r.pruned_at > ?1)
                 ORDER BY r.uid",
            )?;
            let neurons = statement
                .query_map([block as i64], neuron_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Metagraph {
                netuid,
                block,
                neurons,
            })
        })
    }

    /// Who held which uid from which block, and until which block when a registration replaced
    /// it; oldest first.
    pub fn holdings(&self) -> Result<Vec<Holding>, ChainError> {
        self.write(|db, _| {
            let mut statement = db.prepare(
                "SELECT uid, hotkey, registered_at, pruned_at FROM registrations
                 ORDER BY registered_at, uid",
            )?;
            let rows = statement.query_map([], |r| {
                Ok(Holding {
                    uid: r.get(0)?,
                    hotkey: account_column(r, 1)?,
                    registered_at: r.get::<_, i64>(2)? as u64,
                    replaced_at: r.get::<_, Option<i64>>(3)?.map(|b| b as u64),
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// The extrinsics `signer` got applied, oldest first, with their blocks: what an operator
    /// (or a test) checks a node did on the chain by.
    pub fn extrinsics_by(&self, signer: &AccountId) -> Result<Vec<(u64, Call)>, ChainError> {
        self.write(|db, _| {
            let mut statement =
                db.prepare("SELECT block, call FROM extrinsics WHERE signer = ?1 ORDER BY id")?;
            let rows = statement.query_map([signer.as_bytes()], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?))
            })?;
            let mut calls = Vec::new();
            for row in rows {
                let (block, json) = row?;
                let call = serde_json::from_str(&json)
                    .map_err(|e| ChainError::Corrupt(format!("extrinsic of block {block}: {e}")))?;
                calls.push((block, call));
            }
            Ok(calls)
        })
    }

    /// Keeps this process's weight commits awaiting their reveal in `path` across restarts, and
    /// takes up those a previous run left there that the chain still holds. Returns how many.
    pub fn keep_reveals_in(&self, path: PathBuf) -> usize {
        let file = PendingFile {
            path,
            netuid: self.inner.genesis.netuid,
        };
        let Ok(mut pending) = self.reveals() else {
            return 0;
        };
        pending.keep_in(file);
        // A crash between a commit and its record left the block it was expected in: the
        // chain's own record says where it landed, or that it never did.
        let netuid = self.inner.genesis.netuid;
        let landed = |entry: &PendingReveal| {
            let hotkey = AccountId::from_ss58(&entry.hotkey).ok()?;
            let hash = entry.reveal.commit_hash(hotkey.as_bytes(), netuid);
            self.write(|db, _| weights::committed_at(db, &hotkey, &hash))
                .ok()
                .flatten()
        };
        pending.reconcile(landed);
        if let Err(error) = pending.store() {
            tracing::warn!(%error, "recording the weight commits left to reveal");
        }
        pending.len()
    }

    fn reveals(&self) -> Result<std::sync::MutexGuard<'_, PendingReveals>, ChainError> {
        self.inner
            .reveals
            .lock()
            .map_err(|_| ChainError::Database("pending reveals lock poisoned".into()))
    }

    /// Reveals what is due, then commits `reveal`'s weights: recorded before the commit is sent,
    /// so that a crash in between still finds its salt.
    fn commit_weights(&self, hotkey: &Keypair, mut reveal: Reveal) -> Result<(), ChainError> {
        let mut pending = self.reveals()?;
        self.reveal_from(&mut pending, hotkey)?;
        let netuid = self.inner.genesis.netuid;
        let commit_hash = reveal.commit_hash(hotkey.account().as_bytes(), netuid);
        reveal.committed_at = self.block_now().number;
        pending.record(&hotkey.account(), reveal)?;
        let committed = self.submit(hotkey, Call::CommitWeights { commit_hash });
        pending.settle_last(committed.as_ref().ok().map(|included| included.block))?;
        committed.map(drop)
    }

    fn reveal_due(&self, hotkey: &Keypair) -> Result<usize, ChainError> {
        let mut pending = self.reveals()?;
        if pending.is_empty() {
            return Ok(0);
        }
        self.reveal_from(&mut pending, hotkey)
    }

    /// Reveals from `pending` what is due now, keeps what failed for a passing reason, and
    /// stores what is left; returns how many were revealed.
    fn reveal_from(
        &self,
        pending: &mut PendingReveals,
        hotkey: &Keypair,
    ) -> Result<usize, ChainError> {
        let hp = &self.inner.genesis.hyperparameters;
        let timing = weights::timing(hp, self.inner.genesis.netuid);
        let head = self.block_now().number;
        let mut revealed = 0;
        for entry in pending.take_due(&hotkey.account(), head, timing) {
            let call = Call::RevealWeights {
                uids: entry.reveal.uids.clone(),
                weights: entry.reveal.weights.clone(),
                salt: entry.reveal.salt.clone(),
                version_key: entry.reveal.version_key,
            };
            let outcome = self.submit(hotkey, call).map(|included| included.block);
            revealed += usize::from(pending.settle_reveal(entry, outcome));
        }
        pending.store()?;
        Ok(revealed)
    }

    /// [`LocalChain::submit`] on a blocking thread, so SQLite's waits never stall the runtime.
    async fn submit_in_background(
        &self,
        signer: &Keypair,
        call: Call,
    ) -> Result<Included, ChainError> {
        let signer = signer.clone();
        self.blocking(move |chain| chain.submit(&signer, call))
            .await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(LocalChain) -> Result<T, ChainError> + Send + 'static,
    ) -> Result<T, ChainError> {
        let chain = self.clone();
        tokio::task::spawn_blocking(move || work(chain))
            .await
            .map_err(|e| ChainError::Database(format!("chain task failed: {e}")))?
    }
}

/// One hotkey's hold on a uid.
#[derive(Clone, Debug, PartialEq)]
pub struct Holding {
    pub uid: u16,
    pub hotkey: AccountId,
    pub registered_at: u64,
    /// The block whose registration replaced it; `None` while it holds the uid.
    pub replaced_at: Option<u64>,
}

impl Holding {
    /// Whether it held the uid at the end of `block`.
    pub fn holds_at(&self, block: u64) -> bool {
        held_at(self.registered_at, self.replaced_at, block)
    }
}

/// Whether a hold on a uid from `registered_at`, replaced at `replaced_at` (if it was), covers
/// the end of `block`: a registration counts from its own block, a replacement from its own.
pub fn held_at(registered_at: u64, replaced_at: Option<u64>, block: u64) -> bool {
    registered_at <= block && replaced_at.is_none_or(|r| r > block)
}

/// A 32-byte account column; anything else is a corrupt database.
fn account_column(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<AccountId> {
    let bytes: Vec<u8> = row.get(index)?;
    let array: [u8; 32] = bytes.try_into().map_err(|_| {
        rusqlite::Error::FromSqlConversionFailure(
            index,
            rusqlite::types::Type::Blob,
            "an account is not 32 bytes".into(),
        )
    })?;
    Ok(AccountId(array))
}

/// One row of the metagraph query in `metagraph_now`.
fn neuron_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Neuron> {
    Ok(Neuron {
        uid: r.get(0)?,
        hotkey: account_column(r, 1)?,
        coldkey: account_column(r, 2)?,
        validator_permit: r.get(3)?,
        rank: r.get(4)?,
        trust: r.get(5)?,
        consensus: r.get(6)?,
        incentive: r.get(7)?,
        dividends: r.get(8)?,
        validator_trust: r.get(9)?,
        emission: r.get::<_, i64>(10)? as u64,
        registered_at: r.get::<_, i64>(11)? as u64,
        last_update: r.get::<_, i64>(12)? as u64,
        commitment: r.get(13)?,
        stake: r.get::<_, i64>(14)? as u64,
    })
}

impl Chain for LocalChain {
    fn netuid(&self) -> u16 {
        self.inner.genesis.netuid
    }

    async fn block(&self) -> ChainResult<BlockInfo> {
        Ok(self.block_now())
    }

    async fn block_timestamp(&self, number: u64) -> ChainResult<u64> {
        Ok(self.timestamp_of(number))
    }

    async fn wait_for_block(&self, number: u64) -> ChainResult<BlockInfo> {
        let due = self.timestamp_of(number);
        let now = now_ms();
        if due > now {
            tokio::time::sleep(Duration::from_millis(due - now)).await;
        }
        Ok(self.block_now())
    }

    async fn hyperparameters(&self) -> ChainResult<Hyperparameters> {
        Ok(self.inner.genesis.hyperparameters.clone())
    }

    async fn metagraph(&self) -> ChainResult<Metagraph> {
        self.blocking(|chain| chain.metagraph_now()).await
    }

    async fn metagraph_at(&self, block: u64) -> ChainResult<Metagraph> {
        self.blocking(move |chain| chain.metagraph_as_of(block))
            .await
    }

    async fn register(&self, coldkey: &Keypair, hotkey: &AccountId) -> ChainResult<u16> {
        let included = self
            .submit_in_background(coldkey, Call::BurnedRegister { hotkey: *hotkey })
            .await?;
        included
            .uid
            .ok_or_else(|| ChainError::Corrupt("registration returned no uid".into()))
    }

    async fn add_stake(&self, coldkey: &Keypair, hotkey: &AccountId, rao: u64) -> ChainResult<()> {
        let call = Call::AddStake {
            hotkey: *hotkey,
            amount: rao,
        };
        self.submit_in_background(coldkey, call).await.map(|_| ())
    }

    async fn commit(&self, hotkey: &Keypair, data: &[u8]) -> ChainResult<()> {
        let call = Call::Commit {
            data: data.to_vec(),
        };
        self.submit_in_background(hotkey, call).await.map(|_| ())
    }

    async fn set_weights(
        &self,
        hotkey: &Keypair,
        uids: &[u16],
        weights: &[u16],
        version_key: u64,
    ) -> ChainResult<()> {
        if self
            .inner
            .genesis
            .hyperparameters
            .commit_reveal_weights_enabled
        {
            let hotkey = hotkey.clone();
            let reveal = Reveal {
                uids: uids.to_vec(),
                weights: weights.to_vec(),
                salt: commit_reveal::salt()?,
                version_key,
                committed_at: 0,
            };
            return self
                .blocking(move |chain| chain.commit_weights(&hotkey, reveal))
                .await;
        }
        let call = Call::SetWeights {
            uids: uids.to_vec(),
            weights: weights.to_vec(),
            version_key,
        };
        self.submit_in_background(hotkey, call).await.map(|_| ())
    }

    async fn reveal_due_weights(&self, hotkey: &Keypair) -> ChainResult<usize> {
        let hotkey = hotkey.clone();
        self.blocking(move |chain| chain.reveal_due(&hotkey)).await
    }
}
