//! Peer sets: which miners' payloads make a window's aggregate. A pure function of the chain as it
//! stood when the window began, so every node computes the same set with no leader.

use templar_chain::Metagraph;

use crate::commitment::{Commitment, Role};
use crate::config::GatherSettings;

/// A miner that may be gathered: its uid and where it publishes.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub uid: u16,
    pub hotkey: templar_protocol::AccountId,
    pub commitment: Commitment,
    pub incentive: f64,
}

/// The peers of one window, in priority order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PeerSet {
    pub peers: Vec<u16>,
    /// Used in order to replace peers whose payload is missing or bad.
    pub reserves: Vec<u16>,
}

/// Every registered miner with a readable commitment, by uid.
pub fn candidates(metagraph: &Metagraph) -> Vec<Candidate> {
    metagraph
        .neurons
        .iter()
        .filter_map(|n| {
            let commitment = Commitment::decode(n.commitment.as_deref()?).ok()?;
            (commitment.role == Role::Miner).then(|| Candidate {
                uid: n.uid,
                hotkey: n.hotkey,
                commitment,
                incentive: if n.incentive.is_finite() {
                    n.incentive
                } else {
                    0.0
                },
            })
        })
        .collect()
}

/// Miners ordered by incentive (highest first, ties by uid); before anyone has incentive that is
/// simply uid order. The first `peer_count` are peers, the next `reserve_count` reserves.
///
/// Once anyone has incentive, miners without any are left out: the validators have judged them
/// and paid them nothing, so their payloads do not shape the model (they are still evaluated,
/// and join the set when they earn). Upstream padded the set with unpaid miners, which let a
/// miner publishing noise or zeros into every aggregate of a small network.
pub fn peer_set(candidates: &[Candidate], settings: &GatherSettings) -> PeerSet {
    let anyone_paid = candidates.iter().any(|c| c.incentive > 0.0);
    let mut ordered: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| !anyone_paid || c.incentive > 0.0)
        .collect();
    ordered.sort_by(|a, b| b.incentive.total_cmp(&a.incentive).then(a.uid.cmp(&b.uid)));
    let mut uids = ordered.iter().map(|c| c.uid);
    let peers = uids.by_ref().take(settings.peer_count).collect();
    let reserves = uids.take(settings.reserve_count).collect();
    PeerSet { peers, reserves }
}

/// The uids whose payloads enter the aggregate, ascending: every accepted peer, then accepted
/// reserves in order for as many peers as were rejected.
pub fn included(set: &PeerSet, accepted: impl Fn(u16) -> bool) -> Vec<u16> {
    let mut chosen: Vec<u16> = set.peers.iter().copied().filter(|&u| accepted(u)).collect();
    let missing = set.peers.len() - chosen.len();
    chosen.extend(
        set.reserves
            .iter()
            .copied()
            .filter(|&u| accepted(u))
            .take(missing),
    );
    chosen.sort_unstable();
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use templar_protocol::AccountId;

    fn candidate(uid: u16, incentive: f64) -> Candidate {
        Candidate {
            uid,
            hotkey: AccountId([uid as u8; 32]),
            commitment: Commitment::new(Role::Miner, "file:///x"),
            incentive,
        }
    }

    fn settings(peer_count: usize, reserve_count: usize) -> GatherSettings {
        GatherSettings {
            peer_count,
            reserve_count,
        }
    }

    #[test]
    fn bootstrap_is_uid_order() {
        let all = [candidate(5, 0.0), candidate(2, 0.0), candidate(9, 0.0)];
        let set = peer_set(&all, &settings(2, 5));
        assert_eq!(set.peers, vec![2, 5]);
        assert_eq!(set.reserves, vec![9]);
    }

    #[test]
    fn incentive_ranks_and_ties_fall_back_to_uid() {
        let all = [
            candidate(1, 0.1),
            candidate(2, 0.5),
            candidate(3, 0.1),
            candidate(4, 0.0),
            candidate(7, f64::NAN.max(0.3)),
        ];
        let set = peer_set(&all, &settings(3, 1));
        assert_eq!(set.peers, vec![2, 7, 1]);
        assert_eq!(set.reserves, vec![3]);
    }

    #[test]
    fn once_anyone_is_paid_unpaid_miners_are_left_out() {
        let all = [candidate(1, 0.0), candidate(2, 0.6), candidate(3, 0.4)];
        let set = peer_set(&all, &settings(2, 5));
        assert_eq!(set.peers, vec![2, 3]);
        assert!(set.reserves.is_empty());
    }

    #[test]
    fn rejected_peers_are_replaced_by_accepted_reserves_in_order() {
        let set = PeerSet {
            peers: vec![8, 3, 5],
            reserves: vec![9, 1, 2],
        };
        // 3 rejected, reserve 9 rejected too: 1 replaces 3.
        let chosen = included(&set, |u| u != 3 && u != 9);
        assert_eq!(chosen, vec![1, 5, 8]);
        assert_eq!(included(&set, |_| true), vec![3, 5, 8]);
        assert_eq!(included(&set, |_| false), Vec::<u16>::new());
    }
}
