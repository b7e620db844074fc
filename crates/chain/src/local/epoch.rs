//! Running Yuma epochs on the database.

use rusqlite::{Connection, params};

use super::state::{account_id, add_stake, uid_stakes, validator_permits};
use crate::types::{ChainError, Hyperparameters};
use crate::yuma::{EpochInput, run_epoch};

/// Runs the epoch at `block` over the uids registered then, and pays its emission as stake to
/// each hotkey (credited to the hotkey's owning coldkey).
pub fn epoch_at(db: &Connection, hp: &Hyperparameters, block: u64) -> Result<(), ChainError> {
    let stakes = uid_stakes(db)?;
    if stakes.is_empty() {
        return Ok(());
    }
    let n = usize::from(stakes.iter().map(|(u, _)| *u).max().unwrap_or(0)) + 1;
    let mut input = EpochInput {
        stake: vec![0.0; n],
        active: vec![false; n],
        validator_permit: vec![false; n],
        weights: vec![vec![0.0; n]; n],
        last_update: vec![0; n],
        registered_at: vec![u64::MAX; n],
        bonds: vec![vec![0.0; n]; n],
        kappa: hp.kappa,
        bonds_moving_average: hp.bonds_moving_average,
        emission: (hp.emission_per_block * hp.tempo) as f64,
    };
    for (uid, stake) in &stakes {
        input.stake[usize::from(*uid)] = *stake as f64;
    }
    for (uid, permit) in validator_permits(db, hp)? {
        input.validator_permit[usize::from(uid)] = permit;
    }
    let mut neurons = db.prepare("SELECT uid, registered_at, last_update FROM neurons")?;
    for row in neurons.query_map([], |r| {
        Ok((
            r.get::<_, u16>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })? {
        let (uid, registered_at, last_update) = row?;
        let i = usize::from(uid);
        input.registered_at[i] = registered_at as u64;
        input.last_update[i] = last_update as u64;
        input.active[i] = block.saturating_sub(last_update as u64) <= hp.activity_cutoff;
    }
    let load = |sql: &str, into: &mut Vec<Vec<f64>>| -> Result<(), ChainError> {
        let mut statement = db.prepare(sql)?;
        for row in statement.query_map([], |r| {
            Ok((
                r.get::<_, u16>(0)?,
                r.get::<_, u16>(1)?,
                r.get::<_, f64>(2)?,
            ))
        })? {
            let (i, j, value) = row?;
            if let Some(cell) = into
                .get_mut(usize::from(i))
                .and_then(|r| r.get_mut(usize::from(j)))
            {
                *cell = value;
            }
        }
        Ok(())
    };
    load(
        "SELECT uid, target, CAST(weight AS REAL) FROM weights",
        &mut input.weights,
    )?;
    load("SELECT uid, target, bond FROM bonds", &mut input.bonds)?;

    let out = run_epoch(&input);
    store(db, block, &stakes, &input, &out)
}

/// Writes the epoch's results onto the neurons, into the history `metagraph_at` reads, and pays
/// emission as stake.
fn store(
    db: &Connection,
    block: u64,
    stakes: &[(u16, u64)],
    input: &EpochInput,
    out: &crate::yuma::EpochOutput,
) -> Result<(), ChainError> {
    db.execute("DELETE FROM bonds", [])?;
    for (uid, _) in stakes {
        let i = usize::from(*uid);
        for (j, bond) in out.bonds[i].iter().enumerate() {
            if *bond > 0.0 {
                db.execute(
                    "INSERT INTO bonds (uid, target, bond) VALUES (?1, ?2, ?3)",
                    params![uid, j as i64, bond],
                )?;
            }
        }
        let emission = out.emission[i].max(0.0).floor() as u64;
        db.execute(
            "UPDATE neurons SET validator_permit = ?2, rank = ?3, trust = ?4, consensus = ?5,
             incentive = ?6, dividends = ?7, validator_trust = ?8, emission = ?9 WHERE uid = ?1",
            params![
                uid,
                input.validator_permit[i],
                out.rank[i],
                out.trust[i],
                out.consensus[i],
                out.incentive[i],
                out.dividends[i],
                out.validator_trust[i],
                emission as i64
            ],
        )?;
        db.execute(
            "INSERT OR REPLACE INTO epoch_history (block, uid, validator_permit, rank, trust,
             consensus, incentive, dividends, validator_trust, emission)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                block as i64,
                uid,
                input.validator_permit[i],
                out.rank[i],
                out.trust[i],
                out.consensus[i],
                out.incentive[i],
                out.dividends[i],
                out.validator_trust[i],
                emission as i64
            ],
        )?;
        if emission > 0 {
            let (hotkey, coldkey): (Vec<u8>, Vec<u8>) = db.query_row(
                "SELECT hotkey, coldkey FROM neurons WHERE uid = ?1",
                [uid],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            add_stake(
                db,
                &account_id(hotkey)?,
                &account_id(coldkey)?,
                i128::from(emission),
            )?;
        }
    }
    Ok(())
}
