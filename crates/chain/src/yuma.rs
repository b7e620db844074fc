//! Yuma consensus: how a subnet's validators' weights become incentive, dividends and emission.
//!
//! Follows the semantics of subtensor's `epoch` (Yuma with bonds):
//! 1. Active stake: stake of neurons seen within the activity cutoff, normalised to sum 1.
//! 2. Weights: rows of validators without a permit are dropped, self-weights are dropped,
//!    weights set before a target re-registered are dropped, rows normalised to sum 1.
//! 3. Consensus per miner: the highest weight that validators holding at least `kappa` of the
//!    active stake give it (a stake-weighted quantile).
//! 4. Weights are clipped to consensus; ranks are stake-weighted sums of clipped weights;
//!    incentive is ranks normalised; trust is ranks over unclipped ranks; validator trust is
//!    the row sum of a validator's clipped weights.
//! 5. Bonds: ΔB = clipped weights × stake, column-normalised; B = α·ΔB + (1−α)·B_prev,
//!    column-normalised, with α = 1 − bonds_moving_average.
//! 6. Dividends D = B·incentive, normalised; emission = E/2·incentive + E/2·dividends
//!    (all by active stake when nobody earned anything).
//!
//! Arithmetic is `f64` rather than subtensor's I32F32 fixed point: results agree to about 1e-9.

/// Everything an epoch reads. Matrices are dense `n × n`, indexed `[validator][target]`.
#[derive(Clone, Debug)]
pub struct EpochInput {
    pub stake: Vec<f64>,
    pub active: Vec<bool>,
    pub validator_permit: Vec<bool>,
    /// Raw weights as set on chain (any non-negative scale; rows are normalised here).
    pub weights: Vec<Vec<f64>>,
    /// Block at which each row of weights was set.
    pub last_update: Vec<u64>,
    /// Block at which each uid was (re-)registered.
    pub registered_at: Vec<u64>,
    /// Previous epoch's bonds.
    pub bonds: Vec<Vec<f64>>,
    pub kappa: f64,
    pub bonds_moving_average: f64,
    /// What this epoch pays out in total.
    pub emission: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct EpochOutput {
    pub active_stake: Vec<f64>,
    pub consensus: Vec<f64>,
    pub rank: Vec<f64>,
    pub trust: Vec<f64>,
    pub incentive: Vec<f64>,
    pub validator_trust: Vec<f64>,
    pub bonds: Vec<Vec<f64>>,
    pub dividends: Vec<f64>,
    pub emission: Vec<f64>,
}

fn normalized(values: &[f64]) -> Vec<f64> {
    let sum: f64 = values.iter().sum();
    if sum > 0.0 {
        values.iter().map(|v| v / sum).collect()
    } else {
        vec![0.0; values.len()]
    }
}

fn normalize_columns(matrix: &mut [Vec<f64>]) {
    let n = matrix.first().map_or(0, Vec::len);
    for j in 0..n {
        let sum: f64 = matrix.iter().map(|row| row[j]).sum();
        if sum > 0.0 {
            matrix.iter_mut().for_each(|row| row[j] /= sum);
        }
    }
}

/// The highest value `c` in `column` such that the entries `≥ c` hold at least `kappa` of the
/// total of `stake` (entries with no stake do not vote).
pub fn stake_weighted_quantile(column: &[f64], stake: &[f64], kappa: f64) -> f64 {
    let total: f64 = stake.iter().sum();
    if total <= 0.0 {
        return 0.0;
    }
    let mut votes: Vec<(f64, f64)> = column
        .iter()
        .zip(stake)
        .filter(|(_, s)| **s > 0.0)
        .map(|(w, s)| (*w, *s))
        .collect();
    votes.sort_by(|a, b| b.0.total_cmp(&a.0));
    let needed = kappa * total - 1e-12;
    let mut supporting = 0.0;
    for (value, stake) in votes {
        supporting += stake;
        if supporting >= needed {
            return value;
        }
    }
    0.0
}

/// Masks and row-normalises the weights (step 2).
fn effective_weights(input: &EpochInput) -> Vec<Vec<f64>> {
    let n = input.stake.len();
    (0..n)
        .map(|i| {
            let row: Vec<f64> = (0..n)
                .map(|j| {
                    let keep = input.validator_permit[i]
                        && i != j
                        && input.last_update[i] > input.registered_at[j];
                    if keep {
                        input.weights[i][j].max(0.0)
                    } else {
                        0.0
                    }
                })
                .collect();
            normalized(&row)
        })
        .collect()
}

pub fn run_epoch(input: &EpochInput) -> EpochOutput {
    let n = input.stake.len();
    let masked_stake: Vec<f64> = (0..n)
        .map(|i| if input.active[i] { input.stake[i] } else { 0.0 })
        .collect();
    let active_stake = normalized(&masked_stake);
    let weights = effective_weights(input);
    let column = |m: &[Vec<f64>], j: usize| m.iter().map(|row| row[j]).collect::<Vec<_>>();
    let weighted_sum =
        |m: &[Vec<f64>], j: usize| (0..n).map(|i| active_stake[i] * m[i][j]).sum::<f64>();

    let consensus: Vec<f64> = (0..n)
        .map(|j| stake_weighted_quantile(&column(&weights, j), &active_stake, input.kappa))
        .collect();
    let clipped: Vec<Vec<f64>> = weights
        .iter()
        .map(|row| row.iter().zip(&consensus).map(|(w, c)| w.min(*c)).collect())
        .collect();
    let prerank: Vec<f64> = (0..n).map(|j| weighted_sum(&weights, j)).collect();
    let rank: Vec<f64> = (0..n).map(|j| weighted_sum(&clipped, j)).collect();
    let trust = rank
        .iter()
        .zip(&prerank)
        .map(|(r, p)| if *p > 0.0 { r / p } else { 0.0 })
        .collect();
    let incentive = normalized(&rank);
    let validator_trust = clipped.iter().map(|row| row.iter().sum()).collect();

    let mut delta: Vec<Vec<f64>> = clipped
        .iter()
        .zip(&active_stake)
        .map(|(row, s)| row.iter().map(|w| w * s).collect())
        .collect();
    normalize_columns(&mut delta);
    let mut previous = input.bonds.clone();
    normalize_columns(&mut previous);
    let alpha = 1.0 - input.bonds_moving_average;
    let mut bonds: Vec<Vec<f64>> = delta
        .iter()
        .zip(&previous)
        .map(|(d, b)| {
            d.iter()
                .zip(b)
                .map(|(d, b)| alpha * d + (1.0 - alpha) * b)
                .collect()
        })
        .collect();
    normalize_columns(&mut bonds);

    let dividends = normalized(
        &bonds
            .iter()
            .map(|row| row.iter().zip(&incentive).map(|(b, i)| b * i).sum())
            .collect::<Vec<f64>>(),
    );
    let mut emission: Vec<f64> = (0..n)
        .map(|i| input.emission * (incentive[i] + dividends[i]) / 2.0)
        .collect();
    if emission.iter().sum::<f64>() <= 0.0 {
        emission = active_stake.iter().map(|s| s * input.emission).collect();
    }
    EpochOutput {
        active_stake,
        consensus,
        rank,
        trust,
        incentive,
        validator_trust,
        bonds,
        dividends,
        emission,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three validators (uids 0–2, stake 50/30/20) and four miners (uids 3–6, no stake).
    /// Validators 0 and 1 agree on [0.4, 0.3, 0.2, 0.1]; validator 2 pushes miner 6 with
    /// [0.1, 0.1, 0.1, 0.7].
    fn three_validators_four_miners() -> EpochInput {
        let n = 7;
        let mut weights = vec![vec![0.0; n]; n];
        weights[0][3..7].copy_from_slice(&[4.0, 3.0, 2.0, 1.0]);
        weights[1][3..7].copy_from_slice(&[40.0, 30.0, 20.0, 10.0]);
        weights[2][3..7].copy_from_slice(&[1.0, 1.0, 1.0, 7.0]);
        EpochInput {
            stake: vec![50.0, 30.0, 20.0, 0.0, 0.0, 0.0, 0.0],
            active: vec![true; n],
            validator_permit: vec![true, true, true, false, false, false, false],
            weights,
            last_update: vec![10; n],
            registered_at: vec![0; n],
            bonds: vec![vec![0.0; n]; n],
            kappa: 0.5,
            bonds_moving_average: 0.9,
            emission: 1000.0,
        }
    }

    fn assert_close(actual: &[f64], expected: &[f64]) {
        assert_eq!(actual.len(), expected.len());
        for (a, e) in actual.iter().zip(expected) {
            assert!((a - e).abs() < 1e-9, "{actual:?} != {expected:?}");
        }
    }

    #[test]
    fn quantile_is_the_weight_the_majority_of_stake_supports() {
        // Worked: sorted high to low, 0.7 holds 0.2 of the stake (< 0.5), 0.1 reaches 1.0.
        assert_eq!(
            stake_weighted_quantile(&[0.1, 0.1, 0.7], &[0.5, 0.3, 0.2], 0.5),
            0.1
        );
        assert_eq!(
            stake_weighted_quantile(&[0.4, 0.4, 0.1], &[0.5, 0.3, 0.2], 0.5),
            0.4
        );
        // Exactly kappa of the stake is enough.
        assert_eq!(stake_weighted_quantile(&[0.9, 0.1], &[0.5, 0.5], 0.5), 0.9);
        assert_eq!(stake_weighted_quantile(&[0.9, 0.1], &[0.0, 0.0], 0.5), 0.0);
    }

    #[test]
    fn hand_worked_first_epoch() {
        let out = run_epoch(&three_validators_four_miners());
        // Consensus: miners 3–5 keep the majority's weights; miner 6 gets 0.1 (only 20 % of
        // the stake says 0.7).
        assert_close(&out.consensus, &[0.0, 0.0, 0.0, 0.4, 0.3, 0.2, 0.1]);
        // Validator 2 is clipped to [0.1, 0.1, 0.1, 0.1]: trust 0.4; the others keep 1.0.
        assert_close(&out.validator_trust, &[1.0, 1.0, 0.4, 0.0, 0.0, 0.0, 0.0]);
        // Ranks: miner 3 = 0.5·0.4 + 0.3·0.4 + 0.2·0.1 = 0.34; then 0.26, 0.18, 0.10 (sum 0.88).
        assert_close(&out.rank, &[0.0, 0.0, 0.0, 0.34, 0.26, 0.18, 0.10]);
        let incentive = [
            0.0,
            0.0,
            0.0,
            0.34 / 0.88,
            0.26 / 0.88,
            0.18 / 0.88,
            0.10 / 0.88,
        ];
        assert_close(&out.incentive, &incentive);
        // Trust of miner 6: clipped rank 0.10 over unclipped 0.5·0.1 + 0.3·0.1 + 0.2·0.7 = 0.22.
        assert!((out.trust[6] - 0.10 / 0.22).abs() < 1e-9);
        // First epoch: bonds are the column-normalised stake·clipped weight, so validator i's
        // dividend is stake_i · validator_trust_i / Σ ranks: 0.5/0.88, 0.3/0.88, 0.08/0.88.
        let dividends = [0.5 / 0.88, 0.3 / 0.88, 0.08 / 0.88, 0.0, 0.0, 0.0, 0.0];
        assert_close(&out.dividends, &dividends);
        let emission: Vec<f64> = (0..7)
            .map(|i| 500.0 * incentive[i] + 500.0 * dividends[i])
            .collect();
        assert_close(&out.emission, &emission);
        assert!((out.emission.iter().sum::<f64>() - 1000.0).abs() < 1e-9);
    }

    #[test]
    fn bonds_move_by_the_moving_average() {
        let mut input = three_validators_four_miners();
        input.bonds = run_epoch(&input).bonds;
        // Validator 2 now agrees with the others. Miner 3: the old bonds were 0.2/0.34,
        // 0.12/0.34, 0.02/0.34 and ΔB is 0.2/0.4, 0.12/0.4, 0.08/0.4 (clipped weight 0.4 each).
        // Miner 6: old bonds and ΔB are both 0.5/0.3/0.2 (everyone's clipped weight is 0.1).
        input.weights[2][3..7].copy_from_slice(&[4.0, 3.0, 2.0, 1.0]);
        let out = run_epoch(&input);
        let expected_v2 = 0.1 * (0.08 / 0.4) + 0.9 * (0.02 / 0.34);
        assert!(
            (out.bonds[2][3] - expected_v2).abs() < 1e-9,
            "{}",
            out.bonds[2][3]
        );
        let expected_v0 = 0.1 * (0.2 / 0.4) + 0.9 * (0.2 / 0.34);
        assert!((out.bonds[0][3] - expected_v0).abs() < 1e-9);
        assert!((out.bonds[2][6] - 0.2).abs() < 1e-9);
    }

    #[test]
    fn inactive_validators_lose_their_stake_in_the_epoch() {
        let mut input = three_validators_four_miners();
        input.active[0] = false;
        let out = run_epoch(&input);
        // Active stake 0.6/0.4: ranks 0.6·[.4 .3 .2 .1] + 0.4·[.1 .1 .1 .1] = [.28 .22 .16 .10].
        let r = [0.28, 0.22, 0.16, 0.10];
        let incentive: Vec<f64> = r.iter().map(|x| x / 0.76).collect();
        assert_close(&out.incentive[3..], &incentive);
        assert_eq!(out.dividends[0], 0.0);
    }

    #[test]
    fn validators_without_a_permit_are_not_heard() {
        let mut input = three_validators_four_miners();
        input.validator_permit[2] = false;
        let out = run_epoch(&input);
        // Validators 0 and 1 hold 0.8 of the stake and agree: their weights are the consensus.
        assert_close(&out.incentive[3..], &[0.4, 0.3, 0.2, 0.1]);
        assert_close(&out.dividends[..3], &[0.625, 0.375, 0.0]);
    }

    #[test]
    fn weights_older_than_a_registration_are_dropped() {
        let mut input = three_validators_four_miners();
        input.registered_at[6] = 20; // miner 6 re-registered after every weight was set
        let out = run_epoch(&input);
        assert_eq!(out.incentive[6], 0.0);
        assert_eq!(out.rank[6], 0.0);
    }

    #[test]
    fn without_any_weights_emission_follows_stake() {
        let mut input = three_validators_four_miners();
        input.weights = vec![vec![0.0; 7]; 7];
        let out = run_epoch(&input);
        assert_close(&out.emission, &[500.0, 300.0, 200.0, 0.0, 0.0, 0.0, 0.0]);
    }
}
