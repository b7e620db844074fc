//! Per-miner records and the per-window update: ratings from relative improvement, the binary
//! moving average (did the miner train on its own data?), and slashing. Sync is recorded, not
//! scored (see [`MinerRecord::sync`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use templar_protocol::AccountId;

use super::openskill::{self, Rating};
use crate::config::GauntletSettings;

/// What the validator knows about one miner, persisted across restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MinerRecord {
    pub rating: Rating,
    /// Moving average of ±1: +1 when the update helped on the miner's own data more than on
    /// random data.
    pub binary_ma: f64,
    /// 1 when the base the miner claims is the validator's model, falling to 0 at
    /// `sync_max_steps_behind`. A claim: copying the public manifest's fingerprint makes it 1
    /// whatever the miner trained on, so it is reported but weighs nothing; an update trained on
    /// a stale base shows in the improvement it brings, which is measured.
    pub sync: f64,
    /// What weights are computed from.
    pub final_score: f64,
    /// Windows since last evaluated, plus one: the weight in the fair sample.
    pub fairness: u64,
    pub last_payload_window: Option<u64>,
    /// Consecutive windows without a usable payload.
    pub inactive_windows: u64,
    pub evaluations: u64,
    /// Last window's relative improvement on random data, for reports.
    pub last_score: Option<f64>,
    /// Moving average of the relative improvement on random data (the first evaluation sets it):
    /// how much the miner's updates actually help, which decides whether it is paid at all (see
    /// `weights`).
    #[serde(default)]
    pub score_ma: Option<f64>,
    /// A slower moving average of the same improvement: how much the miner contributes, which
    /// its pay is proportional to (see `weights`). Slower than `score_ma`, so that identical
    /// miners are paid alike whatever the noise of single evaluations.
    #[serde(default)]
    pub contribution_ma: Option<f64>,
    /// Moving average of 1 for a window with a usable payload and 0 for one without (a read
    /// failure on the validator's side counts neither way): pay is contribution times
    /// availability, so a miner that uploads one window in three is paid about a third, and an
    /// honest one recovers from a missed window within a few.
    #[serde(default = "fully_available")]
    pub availability: f64,
    /// The hotkey the uid had when this record was made: a uid registered anew by another
    /// hotkey starts from a fresh record (see [`forget_replaced`]).
    #[serde(default)]
    pub hotkey: Option<AccountId>,
}

impl MinerRecord {
    /// A miner seen for the first time.
    pub fn new(settings: &GauntletSettings) -> MinerRecord {
        MinerRecord {
            binary_ma: settings.binary_ma_initial,
            ..MinerRecord::default()
        }
    }
}

impl Default for MinerRecord {
    fn default() -> Self {
        MinerRecord {
            rating: Rating::default(),
            binary_ma: 0.0,
            sync: 1.0,
            final_score: 0.0,
            fairness: 1,
            last_payload_window: None,
            inactive_windows: 0,
            evaluations: 0,
            last_score: None,
            score_ma: None,
            contribution_ma: None,
            availability: fully_available(),
            hotkey: None,
        }
    }
}

/// Drops the records of uids now held by another hotkey than the one each was made for: a new
/// registrant must not inherit (or be slashed by) the history of the uid it took over. Records
/// from before hotkeys were kept take the current hotkey.
pub fn forget_replaced(ledger: &mut Ledger, holders: &BTreeMap<u16, AccountId>) {
    for (uid, hotkey) in holders {
        let Some(record) = ledger.get_mut(uid) else {
            continue;
        };
        match record.hotkey {
            Some(had) if had != *hotkey => {
                ledger.remove(uid);
            }
            Some(_) => {}
            None => record.hotkey = Some(*hotkey),
        }
    }
}

fn fully_available() -> f64 {
    1.0
}

/// Every miner's record, by uid.
pub type Ledger = BTreeMap<u16, MinerRecord>;

/// How a miner's payload for the window fared in the gather.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PayloadStatus {
    /// Verified and decoded; `steps_behind` compares its base model with the validator's history
    /// (`None`: not found in it).
    Usable {
        steps_behind: Option<u64>,
    },
    Missing,
    /// Storage failed when the validator read it: the miner's bucket, or the validator's side
    /// of the connection. It decays like a missing payload but does not count towards starting
    /// over, which a passing outage would otherwise cost an honest miner.
    Unreadable,
    /// Uploaded outside the slot.
    Mistimed,
    /// Forged, malformed, wrong data receipt or undecodable.
    Invalid,
}

/// Losses measured on one miner's update (before and after applying it).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub own_before: f64,
    pub own_after: f64,
    pub random_before: f64,
    pub random_after: f64,
    /// Another miner's update measured the same way on this miner's own data: the loss on the
    /// own data and on the random data after applying it. `None` when only one miner was judged.
    #[serde(default)]
    pub control: Option<Control>,
}

/// The losses after applying another miner's update (see [`Evaluation::indicator`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Control {
    pub own_after: f64,
    pub random_after: f64,
}

impl Evaluation {
    /// Relative improvement on random data: the miner's score.
    pub fn score(&self) -> f64 {
        relative_improvement(self.random_before, self.random_after)
    }

    /// How much more the update helped the miner's own data than random data.
    pub fn own_advantage(&self) -> f64 {
        relative_improvement(self.own_before, self.own_after) - self.score()
    }

    /// The own-data advantage another miner's update shows on this miner's own data.
    pub fn control_advantage(&self) -> Option<f64> {
        let control = self.control?;
        Some(
            relative_improvement(self.own_before, control.own_after)
                - relative_improvement(self.random_before, control.random_after),
        )
    }

    /// +1 when the update shows it was trained on the miner's own data, else −1.
    ///
    /// Upstream compares the own-data improvement with the random-data improvement. Both sets
    /// are a handful of samples, so early in training which one responds more to *any* update
    /// depends mostly on their content, and honest miners draw −1 about half the time. With a
    /// control, the same own data is also measured under another miner's update: the content
    /// effect appears on both sides and cancels, and what remains is what the miner's update
    /// learnt from those very samples.
    pub fn indicator(&self) -> f64 {
        if self.own_advantage() > self.control_advantage().unwrap_or(0.0) {
            1.0
        } else {
            -1.0
        }
    }
}

/// `(before − after) / before`, 0 when that is undefined.
pub fn relative_improvement(before: f64, after: f64) -> f64 {
    if before > 0.0 && before.is_finite() && after.is_finite() {
        (before - after) / before
    } else {
        0.0
    }
}

/// `(1 − min(s, max)/max)^2.5`; unknown distance counts as `max`.
pub fn sync_score(steps_behind: Option<u64>, max: u64) -> f64 {
    let Some(steps) = steps_behind else {
        return 0.0;
    };
    if max == 0 {
        return if steps == 0 { 1.0 } else { 0.0 };
    }
    (1.0 - steps.min(max) as f64 / max as f64).powf(2.5)
}

/// `ln(1 + e^x)`: equal to the ordinal once it is comfortably positive, small but positive for a
/// new or uncertain miner (whose μ − 3σ starts at 0), so an honest newcomer earns a little rather
/// than nothing and a slash multiplier always lowers a score.
pub fn skill(ordinal: f64) -> f64 {
    if ordinal > 30.0 {
        ordinal
    } else {
        ordinal.exp().ln_1p()
    }
}

/// One window's findings for the update.
#[derive(Debug, Clone, Default)]
pub struct WindowInput {
    /// Every miner that could have contributed, with its payload status.
    pub statuses: BTreeMap<u16, PayloadStatus>,
    /// The evaluated miners' measurements.
    pub evaluations: BTreeMap<u16, Evaluation>,
    /// Miners whose usable payload was flagged this window (a copy of another's, or an
    /// inflated norm): they lose their score and moving average.
    pub flagged: Vec<u16>,
    /// The hotkey holding each candidate uid in this window.
    pub hotkeys: BTreeMap<u16, AccountId>,
}

/// Applies one window to the ledger.
pub fn update(ledger: &mut Ledger, window: u64, input: &WindowInput, settings: &GauntletSettings) {
    forget_replaced(ledger, &input.hotkeys);
    for (&uid, &status) in &input.statuses {
        let record = ledger.entry(uid).or_insert_with(|| MinerRecord {
            hotkey: input.hotkeys.get(&uid).copied(),
            ..MinerRecord::new(settings)
        });
        match status {
            PayloadStatus::Usable { steps_behind } => {
                record.last_payload_window = Some(window);
                record.inactive_windows = 0;
                record.sync = sync_score(steps_behind, settings.sync_max_steps_behind);
                record.availability = available(record.availability, true, settings);
            }
            PayloadStatus::Missing | PayloadStatus::Mistimed => {
                record.inactive_windows += 1;
                decay(record, settings.missing_slash);
                record.availability = available(record.availability, false, settings);
            }
            PayloadStatus::Unreadable => decay(record, settings.missing_slash),
            PayloadStatus::Invalid => {
                record.inactive_windows += 1;
                decay(record, settings.missing_slash);
                record.availability = available(record.availability, false, settings);
                record.final_score = 0.0;
            }
        }
        if record.inactive_windows >= settings.inactivity_windows {
            start_over(record, settings);
        }
    }
    // A known miner that is no candidate this window (its commitment gone or unreadable) is
    // absent too, so that stepping out of the candidates cannot freeze a record. A window that
    // scored nobody (the validator's own outage) has no statuses and changes nobody.
    if !input.statuses.is_empty() {
        for (uid, record) in ledger.iter_mut() {
            if !input.statuses.contains_key(uid) {
                record.inactive_windows += 1;
                decay(record, settings.missing_slash);
                record.availability = available(record.availability, false, settings);
                if record.inactive_windows >= settings.inactivity_windows {
                    start_over(record, settings);
                }
            }
        }
    }
    // A flagged payload's measurement says nothing about the miner's own work: it is not rated,
    // and the miner's averages of what it contributes are cleared.
    let mut rated = input.clone();
    rated
        .evaluations
        .retain(|uid, _| !input.flagged.contains(uid));
    rate(ledger, &rated, settings);
    for (&uid, record) in ledger.iter_mut() {
        if input.evaluations.contains_key(&uid) {
            record.fairness = 1;
        } else if input.statuses.contains_key(&uid) {
            record.fairness += 1;
        }
    }
    for uid in &input.flagged {
        let record = ledger.entry(*uid).or_default();
        record.binary_ma = 0.0;
        record.final_score = 0.0;
        record.score_ma = Some(0.0);
        record.contribution_ma = Some(0.0);
    }
}

/// The availability average after one more window, with or without a usable payload.
fn available(availability: f64, usable: bool, settings: &GauntletSettings) -> f64 {
    let alpha = settings.score_ma_alpha;
    (1.0 - alpha) * availability + if usable { alpha } else { 0.0 }
}

/// What an absent window costs: the score, the moving average of the improvement it brings and
/// the own-data average shrink by `slash`. Only positive values shrink: slashing a negative
/// average towards zero would raise it.
fn decay(record: &mut MinerRecord, slash: f64) {
    let shrink = |value: f64| if value > 0.0 { value * slash } else { value };
    record.binary_ma = shrink(record.binary_ma);
    record.final_score = shrink(record.final_score);
    record.score_ma = record.score_ma.map(shrink);
}

/// After `inactivity_windows` windows in a row without a usable payload a miner starts over:
/// what it earned before is no longer paid (its weight is zero until it is evaluated again), and
/// its rating and averages are a newcomer's at best. Standing only goes down: a miner below a
/// newcomer (flagged, or caught not training on its own data) keeps its lower rating and
/// average, so that idling is no way to wipe a slash. Its place in the fair sample and its
/// hotkey are kept.
fn start_over(record: &mut MinerRecord, settings: &GauntletSettings) {
    let fresh = MinerRecord::new(settings);
    let rating = if record.rating.ordinal() < fresh.rating.ordinal() {
        record.rating
    } else {
        fresh.rating
    };
    *record = MinerRecord {
        rating,
        binary_ma: record.binary_ma.min(fresh.binary_ma),
        fairness: record.fairness,
        last_payload_window: record.last_payload_window,
        inactive_windows: record.inactive_windows,
        hotkey: record.hotkey,
        ..fresh
    };
}

/// Ranks the evaluated miners by score, updates their ratings, moving averages and final scores.
fn rate(ledger: &mut Ledger, input: &WindowInput, settings: &GauntletSettings) {
    let evaluated: Vec<(u16, Evaluation)> =
        input.evaluations.iter().map(|(&u, &e)| (u, e)).collect();
    let mut order: Vec<usize> = (0..evaluated.len()).collect();
    order.sort_by(|&a, &b| {
        evaluated[b]
            .1
            .score()
            .total_cmp(&evaluated[a].1.score())
            .then(evaluated[a].0.cmp(&evaluated[b].0))
    });
    let mut ranks = vec![0; evaluated.len()];
    for (place, &i) in order.iter().enumerate() {
        ranks[i] = place;
    }
    let mut ratings: Vec<Rating> = evaluated
        .iter()
        .map(|(uid, _)| ledger.entry(*uid).or_default().rating)
        .collect();
    openskill::rate(
        &mut ratings,
        &ranks,
        settings.openskill_beta,
        settings.openskill_tau,
    );
    let alpha = settings.binary_ma_alpha;
    // A first evaluation seeds the slow average with at most the window's median score: one
    // lucky draw of samples must not set what a newcomer is paid for dozens of windows.
    let mut scores: Vec<f64> = evaluated.iter().map(|(_, e)| e.score()).collect();
    scores.sort_by(f64::total_cmp);
    let median = scores.get(scores.len().saturating_sub(1) / 2).copied();
    for ((uid, evaluation), rating) in evaluated.iter().zip(ratings) {
        let record = ledger.entry(*uid).or_default();
        record.rating = rating;
        record.binary_ma = (1.0 - alpha) * record.binary_ma + alpha * evaluation.indicator();
        record.evaluations += 1;
        record.last_score = Some(evaluation.score());
        let score = evaluation.score();
        let towards = |average: f64, alpha: f64| (1.0 - alpha) * average + alpha * score;
        let fast = record.score_ma;
        record.score_ma = Some(fast.map_or(score, |f| towards(f, settings.score_ma_alpha)));
        // Records from before the slow average was kept go on from their fast one.
        record.contribution_ma = Some(match record.contribution_ma.or(fast) {
            Some(slow) => towards(slow, settings.contribution_ma_alpha),
            None => median.map_or(score, |m| score.min(m)),
        });
        record.final_score = skill(rating.ordinal()) * record.binary_ma.max(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NetworkConfig;

    fn config() -> NetworkConfig {
        let preset = templar_engine::Preset::load("tiny");
        NetworkConfig::defaults("t", preset.unwrap_or_else(|_| unreachable!()), "h")
    }

    fn settings() -> GauntletSettings {
        let mut g = config().gauntlet;
        g.binary_ma_alpha = 0.5;
        g
    }

    fn eval(own: (f64, f64), random: (f64, f64)) -> Evaluation {
        Evaluation {
            control: None,
            own_before: own.0,
            own_after: own.1,
            random_before: random.0,
            random_after: random.1,
        }
    }

    #[test]
    fn improvements_and_indicator_by_hand() {
        let e = eval((4.0, 3.0), (5.0, 4.5));
        assert!((e.score() - 0.1).abs() < 1e-12);
        assert_eq!(e.indicator(), 1.0); // 25% on own data beats 10% on random data
        assert_eq!(eval((4.0, 3.9), (5.0, 4.5)).indicator(), -1.0);
        assert_eq!(relative_improvement(0.0, 1.0), 0.0);
        assert_eq!(relative_improvement(f64::NAN, 1.0), 0.0);
    }

    #[test]
    fn new_miners_start_from_the_configured_moving_average() {
        let mut s = settings();
        s.binary_ma_initial = 1.0;
        let mut ledger = Ledger::new();
        let mut input = WindowInput::default();
        input.statuses.insert(
            1,
            PayloadStatus::Usable {
                steps_behind: Some(0),
            },
        );
        input.evaluations.insert(1, eval((4.0, 3.99), (5.0, 4.9))); // indicator −1
        update(&mut ledger, 1, &input, &s);
        assert_eq!(ledger[&1].binary_ma, 0.0); // 0.5·1 + 0.5·(−1)
    }

    #[test]
    fn a_control_cancels_how_much_the_own_data_responds_to_any_update() {
        // Own data improves 25% against 10% on random data: an advantage of 0.15 ...
        let mut e = eval((4.0, 3.0), (5.0, 4.5));
        // ... but another miner's update does even better there (own 30%, random 10%): the
        // samples are just easy to improve, so the advantage says nothing about training.
        e.control = Some(Control {
            own_after: 2.8,
            random_after: 4.5,
        });
        assert_eq!(e.indicator(), -1.0);
        // Against a control that gains only 15% on the own data (advantage 0.05), 0.15 wins.
        e.control = Some(Control {
            own_after: 3.4,
            random_after: 4.5,
        });
        assert_eq!(e.indicator(), 1.0);
        // Content that responds less than random data to any update no longer hides training:
        // own 8% vs random 10% is −0.02, above the control's 2% vs 10% = −0.08.
        let mut e = eval((5.0, 4.6), (5.0, 4.5));
        assert_eq!(e.indicator(), -1.0);
        e.control = Some(Control {
            own_after: 4.9,
            random_after: 4.5,
        });
        assert_eq!(e.indicator(), 1.0);
    }

    #[test]
    fn sync_score_by_hand() {
        assert_eq!(sync_score(Some(0), 3), 1.0);
        // (1 − 1/3)^2.5 = 0.3629
        assert!((sync_score(Some(1), 3) - (2.0f64 / 3.0).powf(2.5)).abs() < 1e-12);
        assert_eq!(sync_score(Some(5), 3), 0.0);
        assert_eq!(sync_score(None, 3), 0.0);
    }

    #[test]
    fn skill_is_positive_and_tracks_large_ordinals() {
        assert!((skill(0.0) - 2f64.ln()).abs() < 1e-12);
        assert!(skill(-20.0) > 0.0 && skill(-20.0) < 1e-8);
        assert_eq!(skill(40.0), 40.0);
        assert!(skill(1.0) < skill(2.0));
    }

    #[test]
    fn a_window_rates_winners_above_losers_and_slashes_the_absent() {
        let s = settings();
        let mut ledger = Ledger::new();
        let mut input = WindowInput::default();
        for uid in [1, 2] {
            input.statuses.insert(
                uid,
                PayloadStatus::Usable {
                    steps_behind: Some(0),
                },
            );
        }
        input.statuses.insert(3, PayloadStatus::Missing);
        input.evaluations.insert(1, eval((4.0, 3.0), (5.0, 4.0))); // score 0.2, indicator +1
        input.evaluations.insert(2, eval((4.0, 3.99), (5.0, 4.9))); // score 0.02 beats 0.0025: −1
        update(&mut ledger, 7, &input, &s);
        let (one, two, three) = (&ledger[&1], &ledger[&2], &ledger[&3]);
        assert!(one.rating.mu > two.rating.mu);
        assert_eq!(one.binary_ma, 0.5); // 0.5·0 + 0.5·(+1)
        assert_eq!(two.binary_ma, -0.5);
        assert!(one.final_score > 0.0);
        assert_eq!(two.final_score, 0.0); // negative moving average earns nothing
        assert_eq!(three.inactive_windows, 1);
        assert_eq!((one.fairness, three.fairness), (1, 2));
        assert_eq!(one.last_payload_window, Some(7));

        // Next window miner 1 is missing: ×0.75 on both its score and its average.
        let before = ledger[&1].final_score;
        let mut next = WindowInput::default();
        next.statuses.insert(1, PayloadStatus::Missing);
        update(&mut ledger, 8, &next, &s);
        assert!((ledger[&1].final_score - 0.75 * before).abs() < 1e-12);
        assert!((ledger[&1].binary_ma - 0.375).abs() < 1e-12);
    }

    #[test]
    fn the_base_a_miner_claims_is_reported_and_weighs_nothing() {
        let s = settings();
        let mut ledger = Ledger::new();
        let mut input = WindowInput::default();
        // The same measured update from two miners, one claiming the current base and one a base
        // too old to know: only the measurement counts.
        for (uid, steps_behind) in [(1, Some(0)), (2, None)] {
            input
                .statuses
                .insert(uid, PayloadStatus::Usable { steps_behind });
            input.evaluations.insert(uid, eval((4.0, 3.0), (5.0, 4.0)));
        }
        update(&mut ledger, 3, &input, &s);
        assert_eq!((ledger[&1].sync, ledger[&2].sync), (1.0, 0.0));
        assert!(ledger[&1].final_score > 0.0);
        assert_eq!(ledger[&1].binary_ma, ledger[&2].binary_ma);
        // Tied scores rank by uid, so the ratings differ a little; the claim adds nothing.
        let (one, two) = (&ledger[&1], &ledger[&2]);
        let expected = |r: &MinerRecord| skill(r.rating.ordinal()) * r.binary_ma.max(0.0);
        assert_eq!(one.final_score, expected(one));
        assert_eq!(two.final_score, expected(two));
    }

    #[test]
    fn invalid_payloads_zero_the_score_and_copiers_lose_everything() {
        let s = settings();
        let mut ledger = Ledger::new();
        ledger.insert(
            4,
            MinerRecord {
                final_score: 3.0,
                binary_ma: 0.5,
                ..MinerRecord::default()
            },
        );
        ledger.insert(5, ledger[&4].clone());
        let mut input = WindowInput::default();
        input.statuses.insert(4, PayloadStatus::Invalid);
        input.statuses.insert(
            5,
            PayloadStatus::Usable {
                steps_behind: Some(9),
            },
        );
        input.flagged.push(5);
        update(&mut ledger, 1, &input, &s);
        assert_eq!(ledger[&4].final_score, 0.0);
        assert_eq!(ledger[&5].final_score, 0.0);
        assert_eq!(ledger[&5].binary_ma, 0.0);
        assert_eq!(ledger[&5].sync, 0.0);
    }

    #[test]
    fn a_flagged_payload_is_not_rated_and_clears_what_the_miner_contributed() {
        let s = settings();
        let mut ledger = Ledger::new();
        ledger.insert(
            5,
            MinerRecord {
                score_ma: Some(0.02),
                contribution_ma: Some(0.02),
                ..MinerRecord::default()
            },
        );
        let mut input = WindowInput::default();
        let usable = PayloadStatus::Usable {
            steps_behind: Some(0),
        };
        input.statuses.insert(5, usable);
        // It copied the best payload of the window: a fine score, not its own.
        input.evaluations.insert(5, eval((4.0, 3.0), (5.0, 4.0)));
        input.flagged.push(5);
        update(&mut ledger, 1, &input, &s);
        let record = &ledger[&5];
        assert_eq!(
            (record.score_ma, record.contribution_ma),
            (Some(0.0), Some(0.0))
        );
        assert_eq!((record.evaluations, record.last_score), (0, None));
    }

    #[test]
    fn a_first_evaluation_counts_at_most_the_median_and_absence_costs_availability() {
        let mut s = settings();
        s.score_ma_alpha = 0.5;
        let mut ledger = Ledger::new();
        let mut input = WindowInput::default();
        let usable = PayloadStatus::Usable {
            steps_behind: Some(0),
        };
        // Scores 0.1, 0.2 and a lucky 0.5: the median is 0.2.
        for (uid, after) in [(1, 4.5), (2, 4.0), (3, 2.5)] {
            input.statuses.insert(uid, usable);
            input
                .evaluations
                .insert(uid, eval((4.0, 3.0), (5.0, after)));
        }
        update(&mut ledger, 1, &input, &s);
        let slow = |l: &Ledger, uid| l[&uid].contribution_ma.unwrap();
        assert!((slow(&ledger, 1) - 0.1).abs() < 1e-12);
        assert!((slow(&ledger, 2) - 0.2).abs() < 1e-12);
        assert!((slow(&ledger, 3) - 0.2).abs() < 1e-12); // not 0.5
        assert_eq!(ledger[&3].score_ma, Some(0.5)); // the fast one takes it whole
        // Next window 1 is missing (availability 0.5 at alpha 0.5), 2's read failed on the
        // validator's side (unchanged), 3 delivered (still 1). The slow average is untouched.
        let mut input = WindowInput::default();
        input.statuses.insert(1, PayloadStatus::Missing);
        input.statuses.insert(2, PayloadStatus::Unreadable);
        input.statuses.insert(3, usable);
        update(&mut ledger, 2, &input, &s);
        let availability = |uid| ledger[&uid].availability;
        assert_eq!(
            (availability(1), availability(2), availability(3)),
            (0.5, 1.0, 1.0)
        );
        assert!((slow(&ledger, 1) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn long_inactivity_starts_a_miner_over_and_its_weight_is_zero() {
        let s = settings();
        let mut ledger = Ledger::new();
        let paid = MinerRecord {
            rating: Rating {
                mu: 40.0,
                sigma: 2.0,
            },
            final_score: 3.0,
            binary_ma: 0.8,
            score_ma: Some(0.1),
            hotkey: Some(AccountId([7; 32])),
            ..MinerRecord::default()
        };
        ledger.insert(1, paid.clone());
        let mut input = WindowInput::default();
        input.statuses.insert(1, PayloadStatus::Missing);
        for window in 0..s.inactivity_windows - 1 {
            update(&mut ledger, window, &input, &s);
        }
        // Two windows missing: 3 × 0.75² = 1.6875, still paid.
        assert!((ledger[&1].final_score - 1.6875).abs() < 1e-12);
        update(&mut ledger, s.inactivity_windows, &input, &s);
        let record = &ledger[&1];
        assert_eq!(
            record.final_score, 0.0,
            "nothing is paid for a miner that left"
        );
        assert_eq!(record.rating, Rating::default());
        assert_eq!(record.score_ma, None);
        assert_eq!(record.binary_ma, s.binary_ma_initial);
        assert_eq!(record.inactive_windows, s.inactivity_windows);
        assert_eq!(record.hotkey, paid.hotkey);
        let gather = config().gather;
        assert!(super::super::weights::weights(&ledger, &gather, &s).is_empty());
    }

    #[test]
    fn idling_wipes_no_slash_and_an_unreadable_bucket_only_decays() {
        let s = settings();
        let slashed = MinerRecord {
            rating: Rating {
                mu: 10.0,
                sigma: 5.0,
            },
            binary_ma: -0.5,
            final_score: 0.0,
            ..MinerRecord::default()
        };
        let paid = MinerRecord {
            final_score: 2.0,
            binary_ma: 0.6,
            score_ma: Some(0.2),
            ..MinerRecord::default()
        };
        let mut ledger = Ledger::from([(1, slashed.clone()), (2, paid), (3, slashed.clone())]);
        let mut input = WindowInput::default();
        input.statuses.insert(1, PayloadStatus::Missing);
        input.statuses.insert(2, PayloadStatus::Unreadable);
        // uid 3 is no candidate at all (its commitment is gone): absent as well.
        input.statuses.insert(4, PayloadStatus::Missing);
        for window in 0..s.inactivity_windows {
            update(&mut ledger, window, &input, &s);
        }
        for uid in [1, 3] {
            let record = &ledger[&uid];
            assert_eq!(record.inactive_windows, s.inactivity_windows, "uid {uid}");
            assert_eq!(record.binary_ma, -0.5, "a negative average is not raised");
            assert_eq!(
                record.rating, slashed.rating,
                "a rating below a newcomer's stays"
            );
        }
        // Three unreadable windows: 2 × 0.75³ = 0.84375, 0.2 × 0.75³ = 0.084375, no reset.
        let unreadable = &ledger[&2];
        assert_eq!(unreadable.inactive_windows, 0);
        assert!((unreadable.final_score - 0.84375).abs() < 1e-12);
        assert!((unreadable.score_ma.unwrap() - 0.084375).abs() < 1e-12);
    }

    #[test]
    fn a_uid_taken_over_by_another_hotkey_starts_from_a_fresh_record() {
        let (old, new) = (AccountId([1; 32]), AccountId([2; 32]));
        let mut ledger = Ledger::new();
        let record = |hotkey| MinerRecord {
            final_score: 2.0,
            hotkey,
            ..MinerRecord::default()
        };
        ledger.insert(4, record(Some(old)));
        ledger.insert(5, record(Some(old)));
        ledger.insert(6, record(None));
        let holders = BTreeMap::from([(4, new), (5, old), (6, new), (9, new)]);
        forget_replaced(&mut ledger, &holders);
        assert!(
            !ledger.contains_key(&4),
            "the new registrant inherits nothing"
        );
        assert_eq!(
            ledger[&5].final_score, 2.0,
            "the same hotkey keeps its record"
        );
        assert_eq!(
            ledger[&6].hotkey,
            Some(new),
            "a record from before hotkeys were kept takes the holder's"
        );
        assert!(!ledger.contains_key(&9));
    }
}
