//! OpenSkill's Plackett–Luce rating update (Weng & Lin 2011, algorithm 4) for one-player teams:
//! the players of one window are ranked by score and their (μ, σ) move accordingly.

use serde::{Deserialize, Serialize};

/// μ₀ = 25 and σ₀ = 25/3, as OpenSkill and upstream Templar.
pub const MU0: f64 = 25.0;
pub const SIGMA0: f64 = 25.0 / 3.0;
/// Lower bound on the factor σ² shrinks by in one update.
const KAPPA: f64 = 1e-4;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rating {
    pub mu: f64,
    pub sigma: f64,
}

impl Default for Rating {
    fn default() -> Self {
        Rating {
            mu: MU0,
            sigma: SIGMA0,
        }
    }
}

impl Rating {
    /// The conservative skill estimate μ − 3σ.
    pub fn ordinal(&self) -> f64 {
        self.mu - 3.0 * self.sigma
    }
}

/// Updates `ratings` after one match in which `ranks[i]` is player i's place (lower is better;
/// equal ranks tie). `beta` is the performance noise, `tau` the per-match drift added to σ.
pub fn rate(ratings: &mut [Rating], ranks: &[usize], beta: f64, tau: f64) {
    let n = ratings.len().min(ranks.len());
    if n < 2 {
        return;
    }
    for r in ratings.iter_mut() {
        r.sigma = (r.sigma * r.sigma + tau * tau).sqrt();
    }
    let c = ratings[..n]
        .iter()
        .map(|r| r.sigma * r.sigma + beta * beta)
        .sum::<f64>()
        .sqrt();
    let strength: Vec<f64> = ratings[..n].iter().map(|r| (r.mu / c).exp()).collect();
    // For each q: the strengths of everyone placed at or below q, and how many share q's place.
    let sum_q: Vec<f64> = (0..n)
        .map(|q| {
            (0..n)
                .filter(|&i| ranks[i] >= ranks[q])
                .map(|i| strength[i])
                .sum()
        })
        .collect();
    let ties: Vec<f64> = (0..n)
        .map(|q| (0..n).filter(|&i| ranks[i] == ranks[q]).count() as f64)
        .collect();
    let updated: Vec<Rating> = (0..n)
        .map(|i| {
            let (mut omega, mut delta) = (0.0, 0.0);
            for q in (0..n).filter(|&q| ranks[q] <= ranks[i]) {
                let p = strength[i] / sum_q[q];
                omega += (if q == i { 1.0 - p } else { -p }) / ties[q];
                delta += p * (1.0 - p) / ties[q];
            }
            let r = ratings[i];
            let variance = r.sigma * r.sigma;
            let gamma = r.sigma / c;
            let shrink = (1.0 - variance / (c * c) * gamma * delta).max(KAPPA);
            Rating {
                mu: r.mu + variance / c * omega,
                sigma: r.sigma * shrink.sqrt(),
            }
        })
        .collect();
    ratings[..n].copy_from_slice(&updated);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_one_on_one_win_matches_openskill() {
        // OpenSkill's Plackett–Luce with default β = 25/6: winner (27.6352, 8.0655),
        // loser (22.3648, 8.0655). By hand: c² = 2(σ₀² + β²) = 173.61, so c = 13.176;
        // equal strengths give p = 1/2, Ω = ±1/2, μ = 25 ± σ₀²/c · 1/2 = 25 ± 2.6352.
        let mut ratings = [Rating::default(), Rating::default()];
        rate(&mut ratings, &[0, 1], 25.0 / 6.0, 0.0);
        assert!((ratings[0].mu - 27.635231).abs() < 1e-5, "{ratings:?}");
        assert!((ratings[1].mu - 22.364769).abs() < 1e-5);
        for r in ratings {
            assert!((r.sigma - 8.065506).abs() < 1e-5, "{r:?}");
        }
    }

    #[test]
    fn order_matters_and_ties_split_evenly() {
        let mut ratings = [Rating::default(); 3];
        rate(&mut ratings, &[2, 0, 1], 7.0, 0.1);
        assert!(ratings[1].mu > ratings[2].mu && ratings[2].mu > ratings[0].mu);
        assert!(ratings[1].ordinal() > ratings[0].ordinal());
        let mut tied = [Rating::default(); 2];
        rate(&mut tied, &[0, 0], 7.0, 0.0);
        assert!((tied[0].mu - 25.0).abs() < 1e-12 && (tied[1].mu - 25.0).abs() < 1e-12);
        assert!(tied[0].sigma < SIGMA0);
    }

    #[test]
    fn a_lone_player_only_drifts_nothing() {
        let mut one = [Rating::default()];
        rate(&mut one, &[0], 7.0, 0.1);
        assert_eq!(one[0], Rating::default());
    }
}
