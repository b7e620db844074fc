//! From final scores to on-chain weights: miners whose updates help at least `min_score_ratio`
//! as much as the best one's (moving averages of the improvement on random data) are ranked by
//! final score, the top `peer_count` share `gather_share` on a
//! linear ramp from `top_ratio` down to 1, the next `reserve_count` share the rest with geometric
//! decay (each capped at half the smallest gather weight), and an optional burn uid takes
//! `burn_rate` of everything.

use super::score::{Ledger, MinerRecord};
use crate::config::{GatherSettings, GauntletSettings};

/// Weights (summing to 1) by uid, ascending; empty when nobody has earned anything and nothing
/// is burned.
pub fn weights(ledger: &Ledger, gather: &GatherSettings, g: &GauntletSettings) -> Vec<(u16, f64)> {
    let scored = ledger
        .iter()
        .filter(|(_, r)| r.final_score > 0.0 && r.final_score.is_finite())
        .filter(|(uid, _)| Some(**uid) != g.burn_uid);
    let helped = |r: &MinerRecord| r.score_ma.filter(|s| s.is_finite()).unwrap_or(0.0);
    let best = scored.clone().map(|(_, r)| helped(r)).fold(0.0, f64::max);
    let mut ranked: Vec<(u16, f64)> = scored
        .filter(|(_, r)| best > 0.0 && helped(r) >= g.min_score_ratio * best)
        .map(|(&uid, r)| (uid, r.final_score))
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let gathered = ranked.len().min(gather.peer_count);
    let reserves = (ranked.len() - gathered).min(gather.reserve_count);
    let mut out: Vec<(u16, f64)> = Vec::new();
    let ramp = |i: usize| {
        if gathered < 2 {
            g.gather_top_ratio
        } else {
            g.gather_top_ratio + (1.0 - g.gather_top_ratio) * i as f64 / (gathered - 1) as f64
        }
    };
    let ramp_sum: f64 = (0..gathered).map(ramp).sum();
    for (i, (uid, _)) in ranked.iter().take(gathered).enumerate() {
        out.push((*uid, g.gather_share * ramp(i) / ramp_sum));
    }
    let smallest = out.iter().map(|(_, w)| *w).fold(f64::INFINITY, f64::min);
    let decay_sum: f64 = (0..reserves).map(|j| g.reserve_decay.powi(j as i32)).sum();
    for (j, (uid, _)) in ranked.iter().skip(gathered).take(reserves).enumerate() {
        let share = (1.0 - g.gather_share) * g.reserve_decay.powi(j as i32) / decay_sum;
        out.push((*uid, share.min(smallest / 2.0)));
    }
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

    #[test]
    fn ramp_reserve_cap_and_normalisation_by_hand() {
        let (gather, g) = settings();
        // Ranked 5 (3.0), 1 (2.0), 9 (1.0); 4 has nothing.
        let l = ledger(&[(1, 2.0), (4, 0.0), (5, 3.0), (9, 1.0)]);
        // Ramp [2, 1]/3 · 0.75 = 0.5, 0.25; reserve 0.25 capped at 0.125; total 0.875.
        let w = weights(&l, &gather, &g);
        let expect = [(1, 0.25 / 0.875), (5, 0.5 / 0.875), (9, 0.125 / 0.875)];
        assert_eq!(w.len(), 3);
        for ((uid, weight), (e_uid, e_weight)) in w.iter().zip(expect) {
            assert_eq!(*uid, e_uid);
            assert!((weight - e_weight).abs() < 1e-12, "{w:?}");
        }
        let (uids, values) = to_u16(&w);
        assert_eq!(uids, vec![1, 5, 9]);
        assert_eq!(values, vec![32768, 65535, 16384]);
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
        let w = weights(&l, &gather, &g);
        // Ramp [2, 1]/3 · 0.75 over 5 then 1, normalised: 2/3 and 1/3.
        assert_eq!(w.iter().map(|(u, _)| *u).collect::<Vec<_>>(), vec![1, 5]);
        assert!((w[0].1 - 1.0 / 3.0).abs() < 1e-12 && (w[1].1 - 2.0 / 3.0).abs() < 1e-12);
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
