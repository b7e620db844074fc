//! From the ledger to on-chain weights. Pay follows contribution: a miner is paid in proportion
//! to how much its updates help the model (`score_ma`, the moving average of its relative
//! improvement on random data), not by its place in a ranking.
//!
//! Who is paid at all: miners with a positive final score (rated, not flagged, shown to train on
//! their own data) whose updates help at least `min_score_ratio` as much as the best one's. They
//! are ranked by final score; the top `peer_count` share `gather_share`, the next `reserve_count`
//! share the rest (each capped at half the median peer's weight), and an optional burn uid takes
//! `burn_rate` of everything. A share is also proportional to the miner's availability (how
//! regularly it delivers a usable payload).
//!
//! Upstream splits by rank on a ramp from `gather_top_ratio` down to 1. Ranks turn score
//! differences at the level of measurement noise into a 2× pay gap between identical miners
//! (0.40, 0.22 and 0.31 of the incentive for three identical honest miners on the localnet), and
//! pay a miner that contributes a quarter of the best as much as one that contributes nearly
//! all of it, as long as it ranks second.

use super::score::{Ledger, MinerRecord};
use crate::config::{GatherSettings, GauntletSettings};

/// How much a miner's updates help lately: the fast moving average of its improvement on random
/// data, 0 when unknown or not finite. It decides whether a miner is paid at all.
fn helped(record: &MinerRecord) -> f64 {
    record
        .score_ma
        .filter(|s| s.is_finite())
        .unwrap_or(0.0)
        .max(0.0)
}

/// What a paid miner's share is proportional to: the slow moving average of the same
/// improvement (the fast one for records from before it was kept), times how regularly it
/// delivers a usable payload.
fn contribution(record: &MinerRecord) -> f64 {
    let helps = record
        .contribution_ma
        .or(record.score_ma)
        .filter(|s| s.is_finite())
        .unwrap_or(0.0)
        .max(0.0);
    let available = if record.availability.is_finite() {
        record.availability.clamp(0.0, 1.0)
    } else {
        0.0
    };
    helps * available
}

/// Weights (summing to 1) by uid, ascending; empty when nobody has earned anything and nothing
/// is burned.
pub fn weights(ledger: &Ledger, gather: &GatherSettings, g: &GauntletSettings) -> Vec<(u16, f64)> {
    let scored = ledger
        .iter()
        .filter(|(_, r)| r.final_score > 0.0 && r.final_score.is_finite())
        .filter(|(uid, _)| Some(**uid) != g.burn_uid);
    let best = scored.clone().map(|(_, r)| helped(r)).fold(0.0, f64::max);
    let mut ranked: Vec<(u16, f64, f64)> = scored
        .filter(|(_, r)| helped(r) > 0.0 && helped(r) >= g.min_score_ratio * best)
        .filter(|(_, r)| contribution(r) > 0.0)
        .map(|(&uid, r)| (uid, r.final_score, contribution(r)))
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let gathered = ranked.len().min(gather.peer_count);
    let reserves = (ranked.len() - gathered).min(gather.reserve_count);
    let share_of = |group: &[(u16, f64, f64)], pot: f64| -> Vec<(u16, f64)> {
        let total: f64 = group.iter().map(|(_, _, c)| c).sum();
        group
            .iter()
            .map(|&(uid, _, c)| (uid, pot * c / total))
            .collect()
    };
    let mut out = share_of(&ranked[..gathered], g.gather_share);
    // A reserve earns at most half of what the median peer does: against the smallest peer,
    // one peer with a tiny contribution (a newcomer, a sybil) would cap every reserve.
    let mut peer_weights: Vec<f64> = out.iter().map(|(_, w)| *w).collect();
    peer_weights.sort_by(f64::total_cmp);
    let median_peer = peer_weights
        .get(peer_weights.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(0.0);
    let reserve_pot = 1.0 - g.gather_share;
    out.extend(
        share_of(&ranked[gathered..gathered + reserves], reserve_pot)
            .into_iter()
            .map(|(uid, w)| (uid, w.min(median_peer / 2.0))),
    );
    let burn = g.burn_uid.map(|uid| (uid, g.burn_rate));
    let total: f64 = out.iter().map(|(_, w)| w).sum();
    let miners_share = if burn.is_some() {
        1.0 - g.burn_rate
    } else {
        1.0
    };
    if total > 0.0 {
        for (_, w) in &mut out {
            *w *= miners_share / total;
        }
    }
    match burn {
        Some((uid, _)) if total <= 0.0 => out.push((uid, 1.0)),
        Some((uid, rate)) if rate > 0.0 => out.push((uid, rate)),
        _ => {}
    }
    out.sort_by_key(|(uid, _)| *uid);
    out
}

/// Weights as the chain takes them: u16 with the largest at 65535.
pub fn to_u16(weights: &[(u16, f64)]) -> (Vec<u16>, Vec<u16>) {
    let max = weights.iter().map(|(_, w)| *w).fold(0.0, f64::max);
    if max <= 0.0 {
        return (Vec::new(), Vec::new());
    }
    weights
        .iter()
        .map(|&(uid, w)| (uid, (w / max * f64::from(u16::MAX)).round() as u16))
        .filter(|(_, w)| *w > 0)
        .unzip()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NetworkConfig;

    fn settings() -> (GatherSettings, GauntletSettings) {
        let preset = templar_engine::Preset::load("tiny").unwrap_or_else(|_| unreachable!());
        let config = NetworkConfig::defaults("t", preset, "h");
        (
            GatherSettings {
                peer_count: 2,
                reserve_count: 1,
            },
            config.gauntlet,
        )
    }

    /// Miners with these final scores, whose updates all help equally.
    fn ledger(scores: &[(u16, f64)]) -> Ledger {
        scores
            .iter()
            .map(|&(uid, s)| {
                (
                    uid,
                    MinerRecord {
                        final_score: s,
                        score_ma: Some(0.01),
                        ..MinerRecord::default()
                    },
                )
            })
            .collect()
    }

    fn assert_weights(got: &[(u16, f64)], expect: &[(u16, f64)]) {
        assert_eq!(got.len(), expect.len(), "{got:?}");
        for ((uid, weight), (e_uid, e_weight)) in got.iter().zip(expect) {
            assert_eq!(uid, e_uid, "{got:?}");
            assert!((weight - e_weight).abs() < 1e-12, "{got:?}");
        }
    }

    #[test]
    fn shares_follow_contribution_with_the_reserve_cap_by_hand() {
        let (gather, g) = settings();
        // Ranked by final score 5 (3.0), 1 (2.0), 9 (1.0); 4 has nothing.
        let mut l = ledger(&[(1, 2.0), (4, 0.0), (5, 3.0), (9, 1.0)]);
        for (uid, helped) in [(1, 0.01), (5, 0.03), (9, 0.02)] {
            l.get_mut(&uid).unwrap().score_ma = Some(helped);
        }
        // Peers 5 and 1 share 0.75 as 3 : 1 → 0.5625, 0.1875; reserve 9 takes the other 0.25,
        // capped at half the (lower) median peer's, 0.09375; total 0.84375.
        let w = weights(&l, &gather, &g);
        assert_weights(&w, &[(1, 2.0 / 9.0), (5, 2.0 / 3.0), (9, 1.0 / 9.0)]);
        let (uids, values) = to_u16(&w);
        assert_eq!(uids, vec![1, 5, 9]);
        assert_eq!(values, vec![21845, 65535, 10923]);
    }

    #[test]
    fn availability_scales_pay_and_reserves_are_capped_by_the_median_peer() {
        let (mut gather, g) = settings();
        gather.peer_count = 3;
        // Peers 1, 2, 3 by final score, reserve 4; 3 helps a quarter as much as the others.
        let mut l = ledger(&[(1, 4.0), (2, 3.0), (3, 2.0), (4, 1.0)]);
        l.get_mut(&3).unwrap().score_ma = Some(0.0025);
        // Peers 4 : 4 : 1 of 0.75 → 1/3, 1/3, 1/12; the reserve's 0.25 capped at half the
        // median peer's, 1/6 (half the smallest would be 1/24); total 11/12.
        let w = weights(&l, &gather, &g);
        assert_weights(
            &w,
            &[
                (1, 4.0 / 11.0),
                (2, 4.0 / 11.0),
                (3, 1.0 / 11.0),
                (4, 2.0 / 11.0),
            ],
        );
        // 2 delivered half the time: peers 4 : 2 : 1 → 3/7, 3/14, 3/28; the reserve capped at
        // 3/28; total 6/7.
        l.get_mut(&2).unwrap().availability = 0.5;
        let w = weights(&l, &gather, &g);
        assert_weights(&w, &[(1, 0.5), (2, 0.25), (3, 0.125), (4, 0.125)]);
    }

    #[test]
    fn equal_contributions_are_paid_equally_whatever_their_rank() {
        let (mut gather, g) = settings();
        gather.peer_count = 3;
        // Ranks 3, 2, 1 by final score (a noise-level gap in ratings); the same help.
        let w = weights(&ledger(&[(1, 2.0), (2, 2.1), (3, 2.2)]), &gather, &g);
        assert_weights(&w, &[(1, 1.0 / 3.0), (2, 1.0 / 3.0), (3, 1.0 / 3.0)]);
    }

    #[test]
    fn miners_whose_updates_barely_help_earn_nothing_whatever_their_rank() {
        let (gather, mut g) = settings();
        g.min_score_ratio = 0.05;
        let mut l = ledger(&[(1, 0.5), (5, 1.0), (9, 3.0), (12, 2.0)]);
        // 9 ranks first, but its updates improve the loss by 0.0004 against 5's 0.01: under 5%.
        l.get_mut(&9).unwrap().score_ma = Some(0.0004);
        // 12 was never evaluated; 1 at 0.006 passes.
        l.get_mut(&12).unwrap().score_ma = None;
        l.get_mut(&1).unwrap().score_ma = Some(0.006);
        // 5 and 1 share as 0.01 : 0.006.
        let w = weights(&l, &gather, &g);
        assert_weights(&w, &[(1, 0.375), (5, 0.625)]);
        // With no floor at all, a miner that has not helped is still paid nothing.
        g.min_score_ratio = 0.0;
        l.get_mut(&9).unwrap().score_ma = Some(0.0);
        assert_weights(&weights(&l, &gather, &g), &[(1, 0.375), (5, 0.625)]);
        // Nobody helping: nothing is paid.
        for record in l.values_mut() {
            record.score_ma = Some(-0.001);
        }
        assert!(weights(&l, &gather, &g).is_empty());
    }

    #[test]
    fn burn_takes_its_rate_and_everything_when_nobody_earned() {
        let (gather, mut g) = settings();
        g.burn_uid = Some(0);
        g.burn_rate = 0.5;
        let w = weights(&ledger(&[(3, 1.0)]), &gather, &g);
        assert_eq!(w, vec![(0, 0.5), (3, 0.5)]);
        assert_eq!(weights(&ledger(&[(3, 0.0)]), &gather, &g), vec![(0, 1.0)]);
        g.burn_uid = None;
        assert!(weights(&ledger(&[(3, 0.0)]), &gather, &g).is_empty());
    }
}
