//! Weights on a LocalChain: set directly, or committed as a hash and revealed later where the
//! subnet enables commit-reveal, checked the way subtensor checks them.

use rusqlite::{Connection, OptionalExtension, params};
use templar_protocol::AccountId;

use super::state::{registered_uid, uid_stakes, validator_permits};
use crate::commit_reveal::{Reveal, RevealTiming};
use crate::types::{ChainError, Hyperparameters};

/// Commits a hotkey may have awaiting their reveal, as on subtensor.
pub const MAX_UNREVEALED_COMMITS: usize = 10;

/// Weights as a validator proposes them.
pub struct Proposed<'a> {
    pub uids: &'a [u16],
    pub weights: &'a [u16],
    pub version_key: u64,
}

/// `set_weights`: refused on a commit-reveal subnet, where weights are committed instead.
pub fn set_directly(
    db: &Connection,
    hp: &Hyperparameters,
    block: u64,
    hotkey: &AccountId,
    proposed: &Proposed<'_>,
) -> Result<(), ChainError> {
    if hp.commit_reveal_weights_enabled {
        return Err(ChainError::CommitRevealEnabled);
    }
    let uid = check(db, hp, hotkey, proposed)?;
    check_rate_limit(db, hp, uid, block)?;
    store(db, uid, proposed)?;
    touch(db, uid, block)
}

/// `commit_weights`: rate-limited like `set_weights`, and it counts as the uid's update (as on
/// subtensor, the reveal does not).
pub fn commit(
    db: &Connection,
    hp: &Hyperparameters,
    netuid: u16,
    block: u64,
    hotkey: &AccountId,
    commit_hash: &[u8; 32],
) -> Result<(), ChainError> {
    if !hp.commit_reveal_weights_enabled {
        return Err(ChainError::CommitRevealDisabled);
    }
    let uid = registered_uid(db, hotkey)?;
    check_rate_limit(db, hp, uid, block)?;
    let timing = timing(hp, netuid);
    let mut unrevealed = 0;
    for committed_at in commit_blocks(db, hotkey)? {
        if timing.is_expired(committed_at, block) {
            db.execute(
                "DELETE FROM weight_commits WHERE hotkey = ?1 AND block = ?2",
                params![hotkey.as_bytes(), committed_at as i64],
            )?;
        } else {
            unrevealed += 1;
        }
    }
    if unrevealed >= MAX_UNREVEALED_COMMITS {
        return Err(ChainError::TooManyUnrevealedCommits(uid));
    }
    db.execute(
        "INSERT INTO weight_commits (hotkey, hash, block) VALUES (?1, ?2, ?3)
         ON CONFLICT(hotkey, hash) DO UPDATE SET block = ?3",
        params![hotkey.as_bytes(), commit_hash.as_slice(), block as i64],
    )?;
    touch(db, uid, block)
}

/// `reveal_weights`: the weights take effect if they, the salt and the version key hash to one
/// of the hotkey's commits, in the epoch the commit comes due.
pub fn reveal(
    db: &Connection,
    hp: &Hyperparameters,
    netuid: u16,
    block: u64,
    hotkey: &AccountId,
    proposed: &Proposed<'_>,
    salt: &[u16],
) -> Result<(), ChainError> {
    if !hp.commit_reveal_weights_enabled {
        return Err(ChainError::CommitRevealDisabled);
    }
    let uid = registered_uid(db, hotkey)?;
    let hash = Reveal {
        uids: proposed.uids.to_vec(),
        weights: proposed.weights.to_vec(),
        salt: salt.to_vec(),
        version_key: proposed.version_key,
        committed_at: 0,
    }
    .commit_hash(hotkey.as_bytes(), netuid);
    let committed_at = committed_at(db, hotkey, &hash)?.ok_or(ChainError::NoWeightCommit(uid))?;
    let timing = timing(hp, netuid);
    if timing.is_expired(committed_at, block) {
        return Err(ChainError::WeightCommitExpired { uid, committed_at });
    }
    if !timing.is_due(committed_at, block) {
        return Err(ChainError::RevealTooEarly {
            uid,
            committed_at,
            due_from: timing.first_block_due(committed_at),
        });
    }
    check(db, hp, hotkey, proposed)?;
    store(db, uid, proposed)?;
    db.execute(
        "DELETE FROM weight_commits WHERE hotkey = ?1 AND hash = ?2",
        params![hotkey.as_bytes(), hash.as_slice()],
    )?;
    Ok(())
}

/// The block `hotkey`'s commit of `hash` landed in, if it awaits its reveal.
pub fn committed_at(
    db: &Connection,
    hotkey: &AccountId,
    hash: &[u8; 32],
) -> Result<Option<u64>, ChainError> {
    let block: Option<i64> = db
        .query_row(
            "SELECT block FROM weight_commits WHERE hotkey = ?1 AND hash = ?2",
            params![hotkey.as_bytes(), hash.as_slice()],
            |r| r.get(0),
        )
        .optional()?;
    Ok(block.map(|b| b as u64))
}

pub fn timing(hp: &Hyperparameters, netuid: u16) -> RevealTiming {
    RevealTiming {
        netuid,
        tempo: hp.tempo,
        reveal_period: hp.commit_reveal_period,
    }
}

fn commit_blocks(db: &Connection, hotkey: &AccountId) -> Result<Vec<u64>, ChainError> {
    let mut statement = db.prepare("SELECT block FROM weight_commits WHERE hotkey = ?1")?;
    let rows = statement.query_map([hotkey.as_bytes()], |r| r.get::<_, i64>(0))?;
    Ok(rows
        .map(|r| r.map(|b| b as u64))
        .collect::<Result<_, _>>()?)
}

/// What any weights must satisfy: a registered signer, a current version key, one weight per
/// uid, registered targets each once, and a validator permit unless the signer weights only
/// itself. Returns the signer's uid.
fn check(
    db: &Connection,
    hp: &Hyperparameters,
    hotkey: &AccountId,
    proposed: &Proposed<'_>,
) -> Result<u16, ChainError> {
    let uid = registered_uid(db, hotkey)?;
    let version_key = proposed.version_key;
    if version_key < hp.weights_version {
        return Err(ChainError::BadWeights(format!(
            "version key {version_key} is older than the subnet's {}",
            hp.weights_version
        )));
    }
    if proposed.uids.len() != proposed.weights.len() {
        return Err(ChainError::BadWeights(format!(
            "{} uids but {} weights",
            proposed.uids.len(),
            proposed.weights.len()
        )));
    }
    let registered: Vec<u16> = uid_stakes(db)?.into_iter().map(|(u, _)| u).collect();
    let mut seen = std::collections::HashSet::new();
    for target in proposed.uids {
        if !seen.insert(*target) {
            return Err(ChainError::BadWeights(format!(
                "uid {target} appears twice"
            )));
        }
        if registered.binary_search(target).is_err() {
            return Err(ChainError::BadWeights(format!(
                "uid {target} is not registered"
            )));
        }
    }
    let only_self = proposed.uids.iter().all(|t| *t == uid);
    let permitted = validator_permits(db, hp)?
        .into_iter()
        .any(|(u, p)| u == uid && p);
    if !only_self && !permitted {
        return Err(ChainError::NoValidatorPermit(uid));
    }
    Ok(uid)
}

fn check_rate_limit(
    db: &Connection,
    hp: &Hyperparameters,
    uid: u16,
    block: u64,
) -> Result<(), ChainError> {
    let last_update: i64 = db.query_row(
        "SELECT last_update FROM neurons WHERE uid = ?1",
        [uid],
        |r| r.get(0),
    )?;
    let next_allowed = last_update as u64 + hp.weights_rate_limit;
    if block < next_allowed {
        return Err(ChainError::WeightsTooFast {
            uid,
            last_update: last_update as u64,
            next_allowed,
        });
    }
    Ok(())
}

fn store(db: &Connection, uid: u16, proposed: &Proposed<'_>) -> Result<(), ChainError> {
    db.execute("DELETE FROM weights WHERE uid = ?1", [uid])?;
    for (target, weight) in proposed.uids.iter().zip(proposed.weights) {
        db.execute(
            "INSERT INTO weights (uid, target, weight) VALUES (?1, ?2, ?3)",
            params![uid, target, weight],
        )?;
    }
    Ok(())
}

fn touch(db: &Connection, uid: u16, block: u64) -> Result<(), ChainError> {
    db.execute(
        "UPDATE neurons SET last_update = ?2 WHERE uid = ?1",
        params![uid, block as i64],
    )?;
    Ok(())
}
