//! Norm outliers: every miner runs the same inner steps with the same optimizer, so honest
//! payloads of one window have norms of one order of magnitude. A payload far above the
//! window's median in most tensors was scaled up on purpose; the aggregate clips it to the
//! median anyway, and the Gauntlet zeroes its score so that inflating an update never pays.

use templar_codec::Payload;
use templar_codec::aggregate::lower_median;

/// Per tensor, the lower median of the payloads' norms (what the aggregate clips to); empty
/// without payloads.
pub fn median_norms(payloads: &[&Payload]) -> Vec<f64> {
    let Some(first) = payloads.first() else {
        return Vec::new();
    };
    (0..first.tensors.len())
        .map(|i| {
            let norms: Vec<f64> = payloads
                .iter()
                .filter_map(|p| Some(p.tensors.get(i)?.values.norm()))
                .collect();
            lower_median(&norms)
        })
        .collect()
}

/// Per tensor, the larger of the lower medians of `all` payloads' norms and of `reference`'s:
/// what judged updates are clipped to and outliers measured against. Sybils uploading tiny
/// updates can drag the first down and a paid peer training little the second, but neither
/// both: the larger stands for the honest majority of one of them.
pub fn reference_norms(all: &[&Payload], reference: &[&Payload]) -> Vec<f64> {
    let mut medians = median_norms(all);
    for (median, of_reference) in medians.iter_mut().zip(median_norms(reference)) {
        *median = median.max(of_reference);
    }
    medians
}

/// Uploads whose norm is above `ratio` × [`reference_norms`] in more than half of the tensors
/// that have a positive median, with the median of their per-tensor ratios; ascending uid.
/// `reference` is a set an attacker cannot stuff by uploading (the window's paid peers).
pub fn norm_outliers(
    payloads: &[(u16, &Payload)],
    reference: &[&Payload],
    ratio: f64,
) -> Vec<(u16, f64)> {
    let all: Vec<&Payload> = payloads.iter().map(|(_, p)| *p).collect();
    let medians = reference_norms(&all, reference);
    let mut found = Vec::new();
    for (uid, payload) in payloads {
        let mut ratios: Vec<f64> = payload
            .tensors
            .iter()
            .zip(&medians)
            .filter(|(_, m)| **m > 0.0)
            .map(|(t, m)| t.values.norm() / m)
            .collect();
        if ratios.is_empty() {
            continue;
        }
        let above = ratios.iter().filter(|r| **r > ratio).count();
        if above * 2 > ratios.len() {
            ratios.sort_by(f64::total_cmp);
            found.push((*uid, ratios[(ratios.len() - 1) / 2]));
        }
    }
    found.sort_by_key(|(uid, _)| *uid);
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use templar_codec::{Payload, SparseTensor, Values};

    /// A payload whose tensors hold one value each: its norm.
    fn payload(norms: &[f32]) -> Payload {
        Payload {
            tensors: norms
                .iter()
                .map(|&n| SparseTensor {
                    indices: vec![0],
                    values: Values::F32(vec![n]),
                })
                .collect(),
        }
    }

    #[test]
    fn only_a_payload_above_the_ratio_in_most_tensors_is_an_outlier() {
        let honest = [payload(&[1.0, 2.0, 3.0]), payload(&[1.2, 1.8, 3.3])];
        let scaled = payload(&[10.0, 20.0, 30.0]);
        let spiky = payload(&[10.0, 2.0, 3.0]); // one tensor out of three: not enough
        let zeros = payload(&[0.0, 0.0, 0.0]);
        let all = [
            (1, &honest[0]),
            (2, &honest[1]),
            (3, &scaled),
            (4, &spiky),
            (5, &zeros),
        ];
        // Lower medians: [1.2, 2.0, 3.0]; uid 3's ratios 8.3, 10, 10 → median 10.
        let found = norm_outliers(&all, &[], 5.0);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, 3);
        assert!((found[0].1 - 10.0).abs() < 1e-6, "{found:?}");
        assert!(norm_outliers(&[], &[], 5.0).is_empty());
    }

    #[test]
    fn low_norm_sybils_do_not_make_honest_veterans_outliers() {
        let honest = [payload(&[1.0, 2.0]), payload(&[1.2, 1.8])];
        let sybil = payload(&[0.1, 0.1]);
        let mut all = vec![(1, &honest[0]), (2, &honest[1])];
        all.extend((10..15).map(|uid| (uid, &sybil)));
        // Over every upload the lower median is the sybils' 0.1: the honest are 10–20× above it.
        let stuffed = norm_outliers(&all, &[], 5.0);
        assert_eq!(stuffed.iter().map(|(u, _)| *u).collect::<Vec<_>>(), [1, 2]);
        // Over the paid peers (the honest two), medians [1.0, 1.8]: nobody is 5× above.
        let reference = [&honest[0], &honest[1]];
        assert!(norm_outliers(&all, &reference, 5.0).is_empty());
    }

    #[test]
    fn a_paid_peer_training_little_does_not_make_the_others_outliers() {
        let honest = [
            payload(&[1.0, 2.0]),
            payload(&[1.2, 1.8]),
            payload(&[0.9, 2.1]),
        ];
        let tiny = payload(&[0.05, 0.05]);
        let all = [
            (1, &honest[0]),
            (2, &honest[1]),
            (3, &honest[2]),
            (4, &tiny),
        ];
        // The peers are the tiny one and one honest: their lower median is the tiny 0.05, but
        // every upload's is [0.9, 1.8], the larger, and nobody is 5× above that.
        let peers = [&tiny, &honest[0]];
        let medians = reference_norms(&[&tiny, &honest[0], &honest[1], &honest[2]], &peers);
        assert!((medians[0] - 0.9).abs() < 1e-6 && (medians[1] - 1.8).abs() < 1e-6);
        assert!(norm_outliers(&all, &peers, 5.0).is_empty());
    }
}
