//! Applying verified extrinsics to the database, inside the caller's transaction.

use rusqlite::{Connection, OptionalExtension, params};
use templar_protocol::AccountId;

use super::extrinsic::Call;
use super::weights::{self, Proposed};
use crate::types::{ChainError, Hyperparameters, MAX_COMMITMENT_LEN};

pub fn account_id(bytes: Vec<u8>) -> Result<AccountId, ChainError> {
    let array: [u8; 32] = bytes
        .try_into()
        .map_err(|_| ChainError::Corrupt("an account is not 32 bytes".into()))?;
    Ok(AccountId(array))
}

/// `(balance, nonce)` of an account; an account never seen has both at zero.
fn account_row(db: &Connection, account: &AccountId) -> Result<(u64, u64), ChainError> {
    let row: Option<(i64, i64)> = db
        .query_row(
            "SELECT balance, nonce FROM accounts WHERE account = ?1",
            [account.as_bytes()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let (balance, nonce) = row.unwrap_or((0, 0));
    Ok((balance as u64, nonce as u64))
}

pub fn balance(db: &Connection, account: &AccountId) -> Result<u64, ChainError> {
    Ok(account_row(db, account)?.0)
}

pub fn nonce(db: &Connection, account: &AccountId) -> Result<u64, ChainError> {
    Ok(account_row(db, account)?.1)
}

pub fn bump_nonce(db: &Connection, account: &AccountId) -> Result<(), ChainError> {
    db.execute(
        "INSERT INTO accounts (account, nonce) VALUES (?1, 1)
         ON CONFLICT(account) DO UPDATE SET nonce = nonce + 1",
        [account.as_bytes()],
    )?;
    Ok(())
}

/// Adds `delta` (may be negative) to a balance, refusing to go below zero.
pub fn credit(db: &Connection, account: &AccountId, delta: i128) -> Result<(), ChainError> {
    let available = balance(db, account)?;
    let updated = i128::from(available) + delta;
    if updated < 0 {
        return Err(ChainError::InsufficientBalance {
            account: *account,
            needed: (-delta) as u64,
            available,
        });
    }
    db.execute(
        "INSERT INTO accounts (account, balance) VALUES (?1, ?2)
         ON CONFLICT(account) DO UPDATE SET balance = ?2",
        params![account.as_bytes(), updated as i64],
    )?;
    Ok(())
}

pub fn uid_of(db: &Connection, hotkey: &AccountId) -> Result<Option<u16>, ChainError> {
    Ok(db
        .query_row(
            "SELECT uid FROM neurons WHERE hotkey = ?1",
            [hotkey.as_bytes()],
            |r| r.get(0),
        )
        .optional()?)
}

pub fn registered_uid(db: &Connection, hotkey: &AccountId) -> Result<u16, ChainError> {
    uid_of(db, hotkey)?.ok_or(ChainError::NotRegistered(*hotkey))
}

pub fn add_stake(
    db: &Connection,
    hotkey: &AccountId,
    coldkey: &AccountId,
    delta: i128,
) -> Result<(), ChainError> {
    let current: i64 = db
        .query_row(
            "SELECT amount FROM stakes WHERE hotkey = ?1 AND coldkey = ?2",
            [hotkey.as_bytes(), coldkey.as_bytes()],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0);
    let updated = i128::from(current) + delta;
    if updated < 0 {
        return Err(ChainError::InsufficientStake {
            account: *coldkey,
            hotkey: *hotkey,
            needed: (-delta) as u64,
            available: current as u64,
        });
    }
    db.execute(
        "INSERT INTO stakes (hotkey, coldkey, amount) VALUES (?1, ?2, ?3)
         ON CONFLICT(hotkey, coldkey) DO UPDATE SET amount = ?3",
        params![hotkey.as_bytes(), coldkey.as_bytes(), updated as i64],
    )?;
    Ok(())
}

/// Per uid (ascending), whether it holds a validator permit: the `max_validators` largest
/// stakes (ties to the lower uid) that reach `min_validator_stake`. Permits follow stake at
/// once rather than at the next epoch, so a new validator is heard without waiting a tempo.
pub fn validator_permits(
    db: &Connection,
    hp: &Hyperparameters,
) -> Result<Vec<(u16, bool)>, ChainError> {
    let mut stakes = uid_stakes(db)?;
    let mut order: Vec<usize> = (0..stakes.len()).collect();
    order.sort_by(|&a, &b| {
        stakes[b]
            .1
            .cmp(&stakes[a].1)
            .then(stakes[a].0.cmp(&stakes[b].0))
    });
    let mut permits = vec![false; stakes.len()];
    for &i in order.iter().take(usize::from(hp.max_validators)) {
        permits[i] = stakes[i].1 >= hp.min_validator_stake;
    }
    Ok(stakes
        .drain(..)
        .zip(permits)
        .map(|((uid, _), p)| (uid, p))
        .collect())
}

/// `(uid, stake)` for every registered uid, ascending.
pub fn uid_stakes(db: &Connection) -> Result<Vec<(u16, u64)>, ChainError> {
    let mut statement = db.prepare(
        "SELECT n.uid, COALESCE(SUM(s.amount), 0) FROM neurons n
         LEFT JOIN stakes s ON s.hotkey = n.hotkey GROUP BY n.uid ORDER BY n.uid",
    )?;
    let rows = statement.query_map([], |r| {
        Ok((r.get::<_, u16>(0)?, r.get::<_, i64>(1)? as u64))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Applies one verified call by `signer` at `block`; returns the uid a registration got.
pub fn apply(
    db: &Connection,
    hp: &Hyperparameters,
    netuid: u16,
    block: u64,
    signer: &AccountId,
    call: &Call,
) -> Result<Option<u16>, ChainError> {
    match call {
        Call::Transfer { dest, amount } => {
            positive(*amount)?;
            credit(db, signer, -i128::from(*amount))?;
            credit(db, dest, i128::from(*amount))?;
        }
        Call::BurnedRegister { hotkey } => {
            return register(db, hp, block, signer, hotkey).map(Some);
        }
        Call::AddStake { hotkey, amount } => {
            positive(*amount)?;
            registered_uid(db, hotkey)?;
            credit(db, signer, -i128::from(*amount))?;
            add_stake(db, hotkey, signer, i128::from(*amount))?;
        }
        Call::RemoveStake { hotkey, amount } => {
            positive(*amount)?;
            add_stake(db, hotkey, signer, -i128::from(*amount))?;
            credit(db, signer, i128::from(*amount))?;
        }
        Call::SetWeights {
            uids,
            weights,
            version_key,
        } => {
            let proposed = Proposed {
                uids,
                weights,
                version_key: *version_key,
            };
            weights::set_directly(db, hp, block, signer, &proposed)?;
        }
        Call::CommitWeights { commit_hash } => {
            weights::commit(db, hp, netuid, block, signer, commit_hash)?;
        }
        Call::RevealWeights {
            uids,
            weights,
            salt,
            version_key,
        } => {
            let proposed = Proposed {
                uids,
                weights,
                version_key: *version_key,
            };
            weights::reveal(db, hp, netuid, block, signer, &proposed, salt)?;
        }
        Call::Commit { data } => {
            if data.len() > MAX_COMMITMENT_LEN {
                return Err(ChainError::CommitmentTooLong(data.len()));
            }
            registered_uid(db, signer)?;
            db.execute(
                "INSERT INTO commitments (hotkey, data, block) VALUES (?1, ?2, ?3)
                 ON CONFLICT(hotkey) DO UPDATE SET data = ?2, block = ?3",
                params![signer.as_bytes(), data, block as i64],
            )?;
            db.execute(
                "INSERT INTO commitment_history (hotkey, block, data) VALUES (?1, ?2, ?3)
                 ON CONFLICT(hotkey, block) DO UPDATE SET data = ?3",
                params![signer.as_bytes(), block as i64, data],
            )?;
        }
    }
    Ok(None)
}

fn positive(amount: u64) -> Result<(), ChainError> {
    if amount == 0 {
        Err(ChainError::ZeroAmount)
    } else {
        Ok(())
    }
}

fn register(
    db: &Connection,
    hp: &Hyperparameters,
    block: u64,
    coldkey: &AccountId,
    hotkey: &AccountId,
) -> Result<u16, ChainError> {
    if let Some(uid) = uid_of(db, hotkey)? {
        return Err(ChainError::AlreadyRegistered(*hotkey, uid));
    }
    credit(db, coldkey, -i128::from(hp.burn))?;
    let uid = match free_uid(db, hp)? {
        Some(uid) => uid,
        None => prune(db, hp, block)?,
    };
    let row = params![uid, hotkey.as_bytes(), coldkey.as_bytes(), block as i64];
    db.execute(
        "INSERT INTO neurons (uid, hotkey, coldkey, registered_at, last_update)
         VALUES (?1, ?2, ?3, ?4, ?4)",
        row,
    )?;
    db.execute(
        "INSERT INTO registrations (uid, hotkey, coldkey, registered_at) VALUES (?1, ?2, ?3, ?4)",
        row,
    )?;
    Ok(uid)
}

fn free_uid(db: &Connection, hp: &Hyperparameters) -> Result<Option<u16>, ChainError> {
    let taken: Vec<u16> = db
        .prepare("SELECT uid FROM neurons ORDER BY uid")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok((0..hp.max_uids).find(|uid| taken.binary_search(uid).is_err()))
}

/// Frees the uid with the lowest last emission among those past their immunity period
/// (ties to the lowest uid), as Bittensor replaces its weakest neuron.
fn prune(db: &Connection, hp: &Hyperparameters, block: u64) -> Result<u16, ChainError> {
    let cutoff = block.saturating_sub(hp.immunity_period) as i64;
    let uid: Option<u16> = db
        .query_row(
            "SELECT uid FROM neurons WHERE registered_at < ?1 ORDER BY emission, uid LIMIT 1",
            [cutoff],
            |r| r.get(0),
        )
        .optional()?;
    let uid = uid.ok_or(ChainError::SubnetFull(hp.max_uids))?;
    // Its weight commits go with it: a hotkey registered again starts with none.
    db.execute(
        "DELETE FROM weight_commits WHERE hotkey = (SELECT hotkey FROM neurons WHERE uid = ?1)",
        [uid],
    )?;
    db.execute(
        "UPDATE registrations SET pruned_at = ?2 WHERE uid = ?1 AND pruned_at IS NULL",
        params![uid, block as i64],
    )?;
    db.execute("DELETE FROM neurons WHERE uid = ?1", [uid])?;
    db.execute("DELETE FROM weights WHERE uid = ?1 OR target = ?1", [uid])?;
    db.execute("DELETE FROM bonds WHERE uid = ?1 OR target = ?1", [uid])?;
    Ok(uid)
}
