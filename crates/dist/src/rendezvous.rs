//! Before any collective: every rank announces itself in the store, waits for the others, and
//! refuses to go on with ranks that are not its kind (another world size, another binary or
//! configuration) or with a rank claimed twice. A collective between such ranks would not fail:
//! it would silently combine tensors that do not correspond.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::{DistError, Result, Store};

const WORLD_KEY: &str = "templar/rendezvous/world";
/// Set by a rank that refuses the others, so that they stop waiting for it.
const REFUSED_KEY: &str = "templar/rendezvous/refused";
const POLL: Duration = Duration::from_millis(20);

/// One rank's announcement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub rank: usize,
    pub world: usize,
    /// Whatever must be equal across the ranks of a node: a digest of the binary's version and
    /// the node's configuration, chosen by the caller.
    pub fingerprint: String,
    /// Which process this is, to name a rank started twice.
    pub process: String,
}

impl Member {
    pub fn new(rank: usize, world: usize, fingerprint: impl Into<String>) -> Member {
        Member {
            rank,
            world,
            fingerprint: fingerprint.into(),
            process: process_identity(),
        }
    }
}

/// This process, told apart from any other that could share the store: its pid (not unique
/// across PID namespaces sharing a volume) with the time it asked, to the nanosecond.
fn process_identity() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("process {} ({nanos})", std::process::id())
}

/// Announces `me` in `store`, waits up to `timeout` for all `me.world` ranks, and returns them in
/// rank order once each is known to belong with `me`.
pub fn rendezvous(store: &Store, me: &Member, timeout: Duration) -> Result<Vec<Member>> {
    if me.rank >= me.world {
        return Err(DistError::RankOutOfRange {
            rank: me.rank,
            world: me.world,
        });
    }
    let joined = join(store, me, timeout);
    if let Err(error @ (DistError::Mismatch { .. } | DistError::DuplicateRank { .. })) = &joined {
        // Best effort: the others learn of it at once rather than after the timeout.
        let _ = store.set(
            REFUSED_KEY,
            encode_refusal(me.rank, &error.to_string()).as_bytes(),
        );
    }
    joined
}

fn join(store: &Store, me: &Member, timeout: Duration) -> Result<Vec<Member>> {
    let mine = encode(me);
    // The first rank to arrive fixes the world size; a rank started with another one is refused
    // at once instead of waiting for ranks that will never come.
    let first = decode(store.compare_set(WORLD_KEY, b"", &mine)?, None)?;
    check_members(me, std::slice::from_ref(&first))?;
    let key = member_key(me.rank);
    let claimed = store.compare_set(&key, b"", &mine)?;
    if claimed != mine {
        let other = decode(claimed, Some(me.rank))?;
        return Err(DistError::DuplicateRank {
            rank: me.rank,
            claimed_by: other.process,
            me: me.process.clone(),
        });
    }
    wait_for_all(store, me.world, timeout)?;
    let members = (0..me.world)
        .map(|rank| decode(store.get(&member_key(rank))?, Some(rank)))
        .collect::<Result<Vec<_>>>()?;
    check_members(me, &members)?;
    Ok(members)
}

/// Refuses the first member that does not belong with `me`: another world size or fingerprint,
/// or a record under the wrong rank.
pub fn check_members(me: &Member, members: &[Member]) -> Result<()> {
    for other in members {
        let mismatch = |what: &'static str, mine: String, theirs: String| DistError::Mismatch {
            rank: me.rank,
            peer: other.rank,
            what,
            mine,
            theirs,
        };
        if other.world != me.world {
            return Err(mismatch(
                "world size",
                me.world.to_string(),
                other.world.to_string(),
            ));
        }
        if other.fingerprint != me.fingerprint {
            return Err(mismatch(
                "build and configuration",
                me.fingerprint.clone(),
                other.fingerprint.clone(),
            ));
        }
    }
    Ok(())
}

fn wait_for_all(store: &Store, world: usize, timeout: Duration) -> Result<()> {
    let started = Instant::now();
    loop {
        let mut missing = Vec::new();
        for rank in 0..world {
            if !store.contains(&member_key(rank))? {
                missing.push(rank);
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        if store.contains(REFUSED_KEY)? {
            let refusal = String::from_utf8_lossy(&store.get(REFUSED_KEY)?).into_owned();
            let (rank, reason) = refusal.split_once(": ").unwrap_or(("?", &refusal));
            return Err(DistError::Refused {
                rank: rank.to_string(),
                reason: reason.to_string(),
            });
        }
        if started.elapsed() >= timeout {
            return Err(DistError::RendezvousTimeout {
                missing,
                world,
                waited: started.elapsed(),
            });
        }
        std::thread::sleep(POLL);
    }
}

fn encode_refusal(rank: usize, reason: &str) -> String {
    format!("{rank}: {reason}")
}

fn member_key(rank: usize) -> String {
    format!("templar/rendezvous/rank/{rank}")
}

fn encode(member: &Member) -> Vec<u8> {
    // A plain struct of strings and integers always serialises.
    serde_json::to_vec(member).unwrap_or_default()
}

/// A member record read from the store: the first arrival's (`rank` None) or `rank`'s.
fn decode(bytes: Vec<u8>, rank: Option<usize>) -> Result<Member> {
    let key = rank.map_or(WORLD_KEY.to_string(), member_key);
    let member: Member = serde_json::from_slice(&bytes).map_err(|e| DistError::Record {
        key: key.clone(),
        reason: e.to_string(),
    })?;
    if let Some(rank) = rank
        && member.rank != rank
    {
        return Err(DistError::Record {
            key,
            reason: format!("it names rank {}", member.rank),
        });
    }
    Ok(member)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_of_another_world_or_build_are_named() {
        let me = Member::new(0, 2, "abc");
        assert!(check_members(&me, &[me.clone(), Member::new(1, 2, "abc")]).is_ok());
        let other_world = check_members(&me, &[Member::new(1, 3, "abc")]).unwrap_err();
        assert!(matches!(
            other_world,
            DistError::Mismatch {
                peer: 1,
                what: "world size",
                ..
            }
        ));
        let other_build = check_members(&me, &[Member::new(1, 2, "abd")]).unwrap_err();
        assert!(other_build.to_string().contains("build and configuration"));
        assert!(other_build.to_string().contains("abd"));
    }

    #[test]
    fn a_record_under_the_wrong_rank_is_refused() {
        let bytes = encode(&Member::new(1, 2, "abc"));
        assert!(decode(bytes.clone(), Some(1)).is_ok());
        assert!(matches!(
            decode(bytes, Some(0)),
            Err(DistError::Record { .. })
        ));
        assert!(decode(b"{not json".to_vec(), Some(0)).is_err());
    }
}
