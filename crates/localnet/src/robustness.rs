//! What the adversarial scenario measured, from the two networks' folders: each miner's share
//! of miner incentive, how the validator treated its payloads, and the model's bits per byte
//! against the all-honest network — judged against the goals in docs/robustness.md.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::ops::RangeInclusive;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use templar_node::events::{Event, Flag};

use super::history::EventLine;
use super::report::Report;
use super::scenario::BEHAVIORS_FILE;
use super::setup::Layout;
use super::tail::EventFile;
use templar_protocol::WindowClock;

/// Attacks whose every payload must be rejected, with a reason.
const MALFORMED: [&str; 3] = ["malformed", "nan", "oversize"];
const HONEST_SHARE_GOAL: f64 = 0.95;
const ATTACKER_SHARE_GOAL: f64 = 0.01;
const BPB_GOAL: f64 = 0.01;
/// Identical honest miners' shares may differ by this factor at most.
const IDENTICAL_SPREAD_GOAL: f64 = 1.2;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    /// The command that reproduces the scenario.
    pub command: String,
    /// The windows the adversarial network ran, and the first one counted as settled.
    pub first_window: u64,
    pub last_window: u64,
    pub settled_from: u64,
    pub miners: Vec<MinerOutcome>,
    /// Honest miners' share (part-time ones included) of all miner incentive over the settled
    /// windows.
    pub honest_share: f64,
    /// The attacks run, by behaviour (`low-norm` once per sybil).
    #[serde(default)]
    pub attacks: Vec<String>,
    /// The largest share any one attacker held over the settled windows.
    #[serde(default)]
    pub max_attacker_share: f64,
    /// The honest miners by compute: identical full-time ones, then part-time ones.
    #[serde(default)]
    pub heterogeneous: Vec<ComputeShare>,
    pub bpb: BpbComparison,
    pub goals: Vec<Goal>,
}

/// One honest miner's compute and pay.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComputeShare {
    pub name: String,
    /// Share of the inner steps it trains.
    pub steps: f64,
    pub share: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MinerOutcome {
    pub name: String,
    pub uid: u16,
    pub behavior: String,
    /// Share of all miner incentive over the settled windows, and over the whole run.
    pub share: f64,
    pub share_whole_run: f64,
    /// What the chain paid it (miners start without stake).
    pub stake_tao: f64,
    pub uploads: u64,
    /// The validator's gather outcomes for its payloads (`ok`, `undecodable`, `missing`, …).
    pub outcomes: BTreeMap<String, u64>,
    /// The first reason the validator gave for rejecting one of its payloads.
    pub rejection_reason: Option<String>,
    /// Windows its usable payload was flagged, by kind (`copy`, `norm_outlier`).
    pub flags: BTreeMap<String, u64>,
    /// Its payloads' median largest index overlap with another payload of the same window.
    pub overlap: Option<f64>,
    pub evaluations: u64,
    pub mean_score: Option<f64>,
    /// The first window in which the validator penalised it, and how.
    pub first_penalty: Option<Penalty>,
    /// The window from which its weight stayed zero to the end of the run.
    pub zeroed_from: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Penalty {
    pub window: u64,
    pub what: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BpbComparison {
    /// Validation bits per byte after the last window of each network.
    pub adversarial: f64,
    pub honest: f64,
    /// `(adversarial − honest) / honest`.
    pub relative: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Goal {
    pub name: String,
    pub measured: String,
    pub met: bool,
}

/// What the validator said about one miner over the run.
#[derive(Debug, Default)]
struct Judgement {
    outcomes: BTreeMap<String, u64>,
    rejections: Vec<(u64, String, String)>,
    flags: Vec<(u64, Flag)>,
    overlaps: Vec<f64>,
    scores: Vec<f64>,
    /// Window → (weight, moving average, sync).
    weights: BTreeMap<u64, (f64, f64, f64)>,
}

pub fn analyse(dir: &Path, command: String) -> Result<Outcome> {
    let armed = Layout {
        dir: dir.join("adversarial"),
    };
    let honest = Layout {
        dir: dir.join("honest"),
    };
    let report = read_report(&armed)?;
    let behaviors: BTreeMap<String, String> = read_json(&armed.dir.join(BEHAVIORS_FILE))?;
    let run = report
        .runs
        .last()
        .context("the adversarial network recorded no run")?;
    let (first, last) = (
        run.first_window,
        run.until_window.unwrap_or(run.first_window),
    );
    let settled_from = first + (last - first).div_ceil(2);
    let config = templar_node::NetworkConfig::load(&armed.config())?;
    let holders = Holders {
        clock: WindowClock::new(config.window.blocks_per_window)
            .context("network.toml has no window length")?,
        report: &report,
    };
    let judgements = judgements(&armed, first..=last, &holders)?;
    let incentives = holders.by_name(incentives(&report, first..=last));
    let settled = shares(&incentives, settled_from..=last);
    let whole = shares(&incentives, first..=last);
    let mut miners = Vec::new();
    for node in report.nodes.iter().filter(|n| n.role == "miner") {
        let judgement = judgements.get(&node.name);
        let behavior = behaviors
            .get(&node.name)
            .cloned()
            .unwrap_or_else(|| "honest".into());
        miners.push(MinerOutcome {
            name: node.name.clone(),
            uid: node.uid,
            behavior,
            share: settled.get(&node.name).copied().unwrap_or(0.0),
            share_whole_run: whole.get(&node.name).copied().unwrap_or(0.0),
            stake_tao: node.stake_tao,
            uploads: uploads(&armed, &node.name, first..=last)?,
            outcomes: judgement.map(|j| j.outcomes.clone()).unwrap_or_default(),
            rejection_reason: judgement
                .and_then(|j| j.rejections.first())
                .map(|(_, outcome, reason)| format!("{outcome}: {reason}")),
            flags: judgement.map(flag_counts).unwrap_or_default(),
            overlap: judgement.and_then(|j| median(&j.overlaps)),
            evaluations: judgement.map_or(0, |j| j.scores.len() as u64),
            mean_score: judgement
                .filter(|j| !j.scores.is_empty())
                .map(|j| j.scores.iter().sum::<f64>() / j.scores.len() as f64),
            first_penalty: judgement.and_then(first_penalty),
            zeroed_from: judgement.and_then(|j| zeroed_from(&j.weights, first..=last)),
        });
    }
    let honest_share = honest_share(&miners);
    let bpb = BpbComparison::new(final_bpb(&report)?, final_bpb(&read_report(&honest)?)?);
    let heterogeneous = heterogeneous(&miners);
    let mut goals = goals(&miners, honest_share, &bpb, &heterogeneous);
    goals.push(took_part(&behaviors, &miners));
    let attackers = miners.iter().filter(|m| !is_honest(&m.behavior));
    Ok(Outcome {
        command,
        first_window: first,
        last_window: last,
        settled_from,
        attacks: attackers.clone().map(|m| m.behavior.clone()).collect(),
        max_attacker_share: attackers.map(|m| m.share).fold(0.0, f64::max),
        heterogeneous,
        miners,
        honest_share,
        bpb,
        goals,
    })
}

impl BpbComparison {
    fn new(adversarial: f64, honest: f64) -> BpbComparison {
        BpbComparison {
            adversarial,
            honest,
            relative: (adversarial - honest) / honest,
        }
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn read_report(layout: &Layout) -> Result<Report> {
    read_json(&layout.dir.join("report.json"))
}

/// Bits per byte after the last validated window of the network's last run.
fn final_bpb(report: &Report) -> Result<f64> {
    let until = report.runs.last().and_then(|r| r.until_window);
    report
        .windows
        .iter()
        .filter(|w| until.is_none_or(|u| w.window <= u))
        .filter_map(|w| w.bits_per_byte)
        .next_back()
        .with_context(|| format!("{} validated no window", report.network))
}

/// Window → uid → the chain's incentive at the window's end.
fn incentives(report: &Report, windows: RangeInclusive<u64>) -> BTreeMap<u64, BTreeMap<u16, f64>> {
    report
        .windows
        .iter()
        .filter(|w| windows.contains(&w.window))
        .map(|w| {
            let paid = w
                .miners
                .iter()
                .filter_map(|(&uid, m)| Some((uid, m.incentive?)))
                .collect();
            (w.window, paid)
        })
        .collect()
}

/// Which miner held a uid in a window: a uid can change hands during a run (`takeover`).
struct Holders<'a> {
    clock: WindowClock,
    report: &'a Report,
}

impl Holders<'_> {
    /// The name of the node that held `uid` at the end of `window`, as the chain's incentive
    /// for the window is read.
    fn of(&self, uid: u16, window: u64) -> Option<&str> {
        self.at(uid, self.clock.end_block(window))
    }

    /// The name of the node the validator judged as `uid` in `window`: the holder as of the
    /// block before the window, which the window's peer set is derived from.
    fn judged(&self, uid: u16, window: u64) -> Option<&str> {
        self.at(uid, self.clock.first_block(window).saturating_sub(1))
    }

    fn at(&self, uid: u16, block: u64) -> Option<&str> {
        self.report
            .nodes
            .iter()
            .find(|n| n.uid == uid && n.holds_at(block))
            .map(|n| n.name.as_str())
    }

    /// Per window, each uid's incentive credited to the node that held it.
    fn by_name(
        &self,
        incentives: BTreeMap<u64, BTreeMap<u16, f64>>,
    ) -> BTreeMap<u64, BTreeMap<String, f64>> {
        incentives
            .into_iter()
            .map(|(window, paid)| {
                let named = paid
                    .into_iter()
                    .filter_map(|(uid, x)| Some((self.of(uid, window)?.to_string(), x)))
                    .collect();
                (window, named)
            })
            .collect()
    }
}

/// Each miner's incentive summed over `windows`, over everyone's (all zero when nobody was paid).
pub fn shares<K: Ord + Clone>(
    incentives: &BTreeMap<u64, BTreeMap<K, f64>>,
    windows: RangeInclusive<u64>,
) -> BTreeMap<K, f64> {
    let mut sums: BTreeMap<K, f64> = BTreeMap::new();
    for (_, paid) in incentives.range(windows) {
        for (miner, &incentive) in paid {
            *sums.entry(miner.clone()).or_default() += incentive.max(0.0);
        }
    }
    let total: f64 = sums.values().sum();
    sums.values_mut()
        .for_each(|s| *s = if total > 0.0 { *s / total } else { 0.0 });
    sums
}

/// The first window from which the weight stayed zero through `windows`' end (a window with no
/// score counts as zero).
pub fn zeroed_from(
    weights: &BTreeMap<u64, (f64, f64, f64)>,
    windows: RangeInclusive<u64>,
) -> Option<u64> {
    let weight = |w: u64| weights.get(&w).map_or(0.0, |s| s.0);
    let end = *windows.end();
    if weight(end) > 0.0 {
        return None;
    }
    let mut from = end;
    while from > *windows.start() && weight(from - 1) <= 0.0 {
        from -= 1;
    }
    Some(from)
}

fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len().checked_sub(1)? / 2).copied()
}

fn flag_counts(judgement: &Judgement) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for (_, flag) in &judgement.flags {
        let kind = match flag {
            Flag::Copy { .. } => "copy",
            Flag::NormOutlier { .. } => "norm_outlier",
            Flag::Repeat { .. } => "repeat",
        };
        *counts.entry(kind.to_string()).or_default() += 1;
    }
    counts
}

fn first_penalty(judgement: &Judgement) -> Option<Penalty> {
    let rejected = judgement
        .rejections
        .first()
        .map(|(w, outcome, _)| (*w, format!("payload rejected ({outcome})")));
    let copied = judgement
        .flags
        .first()
        .map(|(w, flag)| (*w, format!("flagged: {flag}")));
    let zeroed = judgement
        .weights
        .iter()
        .find(|(_, (weight, _, _))| *weight <= 0.0)
        .map(|(w, (_, moving_average, sync))| {
            let why = if *sync <= 0.0 {
                "weight zero: out of sync"
            } else if *moving_average <= 0.0 {
                "weight zero: its updates did not fit its own data"
            } else {
                "weight zero"
            };
            (*w, why.to_string())
        });
    [rejected, copied, zeroed]
        .into_iter()
        .flatten()
        .min_by_key(|(w, _)| *w)
        .map(|(window, what)| Penalty { window, what })
}

/// The validator's gathers, copy flags, evaluations and scores, per miner.
/// What the validator did with each miner's payloads, by miner name.
fn judgements(
    layout: &Layout,
    windows: RangeInclusive<u64>,
    holders: &Holders<'_>,
) -> Result<BTreeMap<String, Judgement>> {
    let mut found: BTreeMap<String, Judgement> = BTreeMap::new();
    for line in validator_lines(layout)? {
        match line.event {
            Event::Gathered { window, peers, .. } if windows.contains(&window) => {
                for peer in peers {
                    let Some(judgement) = entry(&mut found, holders, peer.uid, window) else {
                        continue;
                    };
                    *judgement.outcomes.entry(peer.outcome.clone()).or_default() += 1;
                    if peer.outcome != "ok" {
                        judgement
                            .rejections
                            .push((window, peer.outcome, peer.reason));
                    }
                }
            }
            Event::Overlaps {
                window, largest, ..
            } if windows.contains(&window) => {
                for (uid, overlap) in largest {
                    if let Some(judgement) = entry(&mut found, holders, uid, window) {
                        judgement.overlaps.push(overlap);
                    }
                }
            }
            Event::Flagged {
                window,
                miner,
                flag,
            } if windows.contains(&window) => {
                if let Some(judgement) = entry(&mut found, holders, miner, window) {
                    judgement.flags.push((window, flag));
                }
            }
            Event::Evaluated {
                window,
                miner,
                score,
                ..
            } if windows.contains(&window) => {
                if let Some(judgement) = entry(&mut found, holders, miner, window) {
                    judgement.scores.push(score);
                }
            }
            Event::Scores { window, miners } if windows.contains(&window) => {
                for m in miners {
                    if let Some(judgement) = entry(&mut found, holders, m.uid, window) {
                        judgement
                            .weights
                            .insert(window, (m.weight, m.binary_ma, m.sync));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(found)
}

/// The judgement of the miner that held `uid` in `window`.
fn entry<'a>(
    found: &'a mut BTreeMap<String, Judgement>,
    holders: &Holders<'_>,
    uid: u16,
    window: u64,
) -> Option<&'a mut Judgement> {
    let name = holders.judged(uid, window)?;
    Some(found.entry(name.to_string()).or_default())
}

/// The event lines of the network's first validator.
fn validator_lines(layout: &Layout) -> Result<Vec<EventLine>> {
    let path = layout.events("validator-v1");
    if !path.exists() {
        bail!("{} is missing: the validator never ran", path.display());
    }
    Ok(EventFile::new(path).read_new()?)
}

fn uploads(layout: &Layout, node: &str, windows: RangeInclusive<u64>) -> Result<u64> {
    let lines = EventFile::new(layout.events(node)).read_new()?;
    Ok(lines
        .iter()
        .filter(|l| matches!(l.event, Event::Uploaded { window, .. } if windows.contains(&window)))
        .count() as u64)
}

/// Honest work, all of it or a share of the inner steps.
fn is_honest(behavior: &str) -> bool {
    behavior == "honest" || behavior.starts_with("part-time:")
}

/// The share of the inner steps a behaviour trains, for honest ones.
fn steps_of(behavior: &str) -> Option<f64> {
    match behavior.strip_prefix("part-time:") {
        Some(share) => share.parse().ok(),
        None => (behavior == "honest").then_some(1.0),
    }
}

/// The honest miners' share of all miner incentive.
fn honest_share(miners: &[MinerOutcome]) -> f64 {
    miners
        .iter()
        .filter(|m| is_honest(&m.behavior))
        .map(|m| m.share)
        .sum()
}

/// Honest miners by compute, most first (names break ties).
fn heterogeneous(miners: &[MinerOutcome]) -> Vec<ComputeShare> {
    let mut shares: Vec<ComputeShare> = miners
        .iter()
        .filter_map(|m| {
            Some(ComputeShare {
                name: m.name.clone(),
                steps: steps_of(&m.behavior)?,
                share: m.share,
            })
        })
        .collect();
    shares.sort_by(|a, b| b.steps.total_cmp(&a.steps).then(a.name.cmp(&b.name)));
    shares
}

/// Whether pay follows compute: every miner with less compute is paid something, and less than
/// every miner with more.
fn ordered_by_compute(shares: &[ComputeShare]) -> bool {
    shares.iter().all(|a| {
        a.share > 0.0
            && shares
                .iter()
                .filter(|b| b.steps > a.steps)
                .all(|b| b.share > a.share)
    })
}

/// An attack that never ran (a `takeover` that found no uid to take, say) proves nothing: the
/// run misses a goal rather than pass with it.
fn took_part(behaviors: &BTreeMap<String, String>, miners: &[MinerOutcome]) -> Goal {
    let absent: Vec<String> = behaviors
        .iter()
        .filter(|(name, behavior)| !is_honest(behavior) && !miners.iter().any(|m| &m.name == *name))
        .map(|(name, behavior)| format!("{name} ({behavior})"))
        .collect();
    Goal {
        name: "every attack took part".into(),
        measured: if absent.is_empty() {
            "all of them".into()
        } else {
            format!("never registered: {}", absent.join(", "))
        },
        met: absent.is_empty(),
    }
}

fn goals(
    miners: &[MinerOutcome],
    honest_share: f64,
    bpb: &BpbComparison,
    heterogeneous: &[ComputeShare],
) -> Vec<Goal> {
    let attackers: Vec<&MinerOutcome> = miners.iter().filter(|m| !is_honest(&m.behavior)).collect();
    let top_attacker = attackers.iter().max_by(|a, b| a.share.total_cmp(&b.share));
    let identical: Vec<f64> = heterogeneous
        .iter()
        .filter(|c| c.steps == 1.0)
        .map(|c| c.share)
        .collect();
    let (least, most) = identical
        .iter()
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), s| {
            (lo.min(*s), hi.max(*s))
        });
    let mut goals = vec![
        Goal {
            name: format!(
                "honest miners hold at least {:.0}% of miner incentive",
                HONEST_SHARE_GOAL * 100.0
            ),
            measured: format!("{:.1}%", honest_share * 100.0),
            met: honest_share >= HONEST_SHARE_GOAL,
        },
        Goal {
            name: format!(
                "no attacker holds more than {:.0}% of miner incentive",
                ATTACKER_SHARE_GOAL * 100.0
            ),
            measured: match top_attacker {
                Some(top) => format!("top attacker {} {:.2}%", top.behavior, top.share * 100.0),
                None => "no attackers".into(),
            },
            met: top_attacker.is_none_or(|top| top.share <= ATTACKER_SHARE_GOAL),
        },
        Goal {
            name: format!(
                "identical honest miners paid within {:.0}% of each other",
                (IDENTICAL_SPREAD_GOAL - 1.0) * 100.0
            ),
            measured: format!("{:.2}% to {:.2}%", least * 100.0, most * 100.0),
            met: !identical.is_empty() && most <= IDENTICAL_SPREAD_GOAL * least,
        },
        Goal {
            name: "honest miners paid in the order of their compute, none nothing".into(),
            measured: heterogeneous
                .iter()
                .map(|c| format!("{} ({}× steps) {:.2}%", c.name, c.steps, c.share * 100.0))
                .collect::<Vec<_>>()
                .join(", "),
            met: ordered_by_compute(heterogeneous),
        },
        Goal {
            name: format!(
                "validation BpB within {:.0}% of the all-honest run",
                BPB_GOAL * 100.0
            ),
            measured: format!(
                "{:.4} vs {:.4} ({:+.2}%)",
                bpb.adversarial,
                bpb.honest,
                bpb.relative * 100.0
            ),
            met: bpb.relative <= BPB_GOAL,
        },
    ];
    let malformed: Vec<&&MinerOutcome> = attackers
        .iter()
        .filter(|m| MALFORMED.iter().any(|k| m.behavior.starts_with(k)))
        .collect();
    if !malformed.is_empty() {
        let uploads: u64 = malformed.iter().map(|m| m.uploads).sum();
        let accepted: u64 = malformed
            .iter()
            .map(|m| m.outcomes.get("ok").copied().unwrap_or(0))
            .sum();
        let explained = malformed.iter().all(|m| m.rejection_reason.is_some());
        goals.push(Goal {
            name: "every malformed payload rejected with its reason logged".into(),
            measured: format!(
                "{accepted} of {uploads} malformed, NaN or oversize payloads accepted"
            ),
            met: accepted == 0 && explained && uploads > 0,
        });
    }
    goals
}

fn flags(counts: &BTreeMap<String, u64>) -> String {
    if counts.is_empty() {
        return "–".into();
    }
    let parts: Vec<String> = counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
    parts.join(", ")
}

/// `robustness.json` and `robustness.md` in `dir`.
pub fn write(dir: &Path, outcome: &Outcome) -> Result<()> {
    templar_engine::write_atomic(
        &dir.join("robustness.json"),
        serde_json::to_string_pretty(outcome)?.as_bytes(),
    )?;
    templar_engine::write_atomic(&dir.join("robustness.md"), markdown(outcome).as_bytes())?;
    Ok(())
}

/// A goal's "met" cell in a Markdown table.
pub fn met_mark(met: bool) -> &'static str {
    if met { "yes" } else { "**no**" }
}

/// A few lines for the terminal.
pub fn summary(outcome: &Outcome) -> String {
    let mut text = String::new();
    for goal in &outcome.goals {
        let mark = if goal.met { "met" } else { "MISSED" };
        let _ = writeln!(text, "{mark:>6}  {}: {}", goal.name, goal.measured);
    }
    text
}

pub fn markdown(outcome: &Outcome) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "```sh\n{}\n```\n", outcome.command);
    let _ = writeln!(
        md,
        "Windows {}–{}; shares are of all miner incentive over the settled windows {}–{} \
         (and over the whole run). other-data and eval-overfit train honestly on data that is \
         not (all) their own: only the own-data indicator catches them, slowly on a model this \
         small.\n",
        outcome.first_window, outcome.last_window, outcome.settled_from, outcome.last_window
    );
    md.push_str(
        "| miner | uid | behaviour | share | whole run | paid (TAO) | payloads: validator's outcomes | flagged | overlap | mean score | first penalty | weight zero from |\n",
    );
    md.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for m in &outcome.miners {
        let outcomes: Vec<String> = m.outcomes.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.2}% | {:.2}% | {:.3} | {} uploaded; {} | {} | {} | {} | {} | {} |",
            m.name,
            m.uid,
            m.behavior,
            m.share * 100.0,
            m.share_whole_run * 100.0,
            m.stake_tao,
            m.uploads,
            outcomes.join(", "),
            flags(&m.flags),
            m.overlap
                .map_or("–".into(), |o| format!("{:.0}%", o * 100.0)),
            m.mean_score.map_or("–".into(), |s| format!("{s:+.4}")),
            m.first_penalty
                .as_ref()
                .map_or("–".into(), |p| format!("w{}: {}", p.window, p.what)),
            m.zeroed_from.map_or("–".into(), |w| format!("w{w}")),
        );
    }
    let _ = writeln!(
        md,
        "\nValidation bits per byte after the last window: {:.4} with the attackers, {:.4} for \
         the same honest miners alone ({:+.2}%).\n",
        outcome.bpb.adversarial,
        outcome.bpb.honest,
        outcome.bpb.relative * 100.0
    );
    md.push_str("| goal | measured | met |\n|---|---|---|\n");
    for goal in &outcome.goals {
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            goal.name,
            goal.measured,
            met_mark(goal.met)
        );
    }
    let reasons: Vec<String> = outcome
        .miners
        .iter()
        .filter_map(|m| {
            Some(format!(
                "- {} ({}): {}",
                m.name,
                m.behavior,
                m.rejection_reason.as_ref()?
            ))
        })
        .collect();
    if !reasons.is_empty() {
        md.push_str("\nFirst rejection reason the validator logged, per miner:\n\n");
        md.push_str(&reasons.join("\n"));
        md.push('\n');
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_sum_incentive_over_the_windows_by_hand() {
        let mut incentives = BTreeMap::new();
        incentives.insert(1, BTreeMap::from([(1, 0.5), (2, 0.5)]));
        incentives.insert(2, BTreeMap::from([(1, 0.9), (2, 0.1)]));
        incentives.insert(3, BTreeMap::from([(1, 0.6), (2, 0.0), (3, 0.4)]));
        // Windows 2–3: uid 1 has 1.5, uid 2 0.1, uid 3 0.4, of 2.0.
        let s = shares(&incentives, 2..=3);
        assert!((s[&1] - 0.75).abs() < 1e-12);
        assert!((s[&2] - 0.05).abs() < 1e-12);
        assert!((s[&3] - 0.2).abs() < 1e-12);
        assert!(shares::<u16>(&BTreeMap::new(), 0..=5).is_empty());
    }

    #[test]
    fn a_uid_that_changed_hands_pays_each_holder_for_its_own_windows() {
        let node = |name: &str, registered_at, replaced_at| super::super::report::NodeEntry {
            name: name.into(),
            role: "miner".into(),
            uid: 6,
            hotkey: String::new(),
            incentive: 0.0,
            stake_tao: 0.0,
            registered_at,
            replaced_at,
        };
        let report = Report {
            network: "localnet".into(),
            network_id: String::new(),
            parameters: 0,
            dense_fp32_bytes: 0,
            nodes: vec![node("a1", 0, Some(40)), node("a19", 40, None)],
            runs: Vec::new(),
            windows: Vec::new(),
            median_compute_share: Default::default(),
        };
        let holders = Holders {
            clock: WindowClock::new(10).unwrap(),
            report: &report,
        };
        // Window 2 ends at block 30, held by a1; window 3 ends at block 40, where a19's
        // registration replaced a1.
        assert_eq!(holders.of(6, 2), Some("a1"));
        assert_eq!(holders.of(6, 3), Some("a19"));
        assert_eq!(holders.of(7, 3), None);
        // Window 4's peer set is as of block 39, still a1's: a19 is judged from window 5.
        assert_eq!(holders.judged(6, 4), Some("a1"));
        assert_eq!(holders.judged(6, 5), Some("a19"));
        let incentives = BTreeMap::from([
            (2, BTreeMap::from([(6, 0.3), (1, 0.7)])),
            (3, BTreeMap::from([(6, 0.1)])),
        ]);
        let named = holders.by_name(incentives);
        assert_eq!(named[&2], BTreeMap::from([("a1".to_string(), 0.3)]));
        assert_eq!(named[&3], BTreeMap::from([("a19".to_string(), 0.1)]));
    }

    #[test]
    fn an_attack_that_never_registered_misses_a_goal() {
        let behaviors = BTreeMap::from([
            ("miner-m1".to_string(), "honest".to_string()),
            ("miner-a1".to_string(), "noise".to_string()),
            ("miner-a2".to_string(), "takeover".to_string()),
        ]);
        let ran = |name: &str| MinerOutcome {
            name: name.into(),
            ..MinerOutcome::default()
        };
        let all = [ran("miner-m1"), ran("miner-a1"), ran("miner-a2")];
        assert!(took_part(&behaviors, &all).met);
        let goal = took_part(&behaviors, &all[..2]);
        assert!(!goal.met);
        assert_eq!(goal.measured, "never registered: miner-a2 (takeover)");
    }

    #[test]
    fn zeroed_from_is_where_the_final_run_of_zeros_begins() {
        let weights: BTreeMap<u64, (f64, f64, f64)> = [(1, 0.2), (2, 0.0), (3, 0.1), (4, 0.0)]
            .into_iter()
            .map(|(w, x)| (w, (x, 1.0, 1.0)))
            .collect();
        // Window 5 has no score: zero. The zeros run 4–5.
        assert_eq!(zeroed_from(&weights, 1..=5), Some(4));
        assert_eq!(zeroed_from(&weights, 1..=3), None);
        assert_eq!(zeroed_from(&BTreeMap::new(), 2..=4), Some(2));
    }

    #[test]
    fn the_first_penalty_is_the_earliest_of_rejection_copy_flag_and_zero_weight() {
        let mut judgement = Judgement::default();
        assert_eq!(first_penalty(&judgement), None);
        judgement.weights.insert(5, (0.0, -0.1, 1.0));
        judgement.flags.push((7, Flag::Copy { overlap: 1.0 }));
        let penalty = first_penalty(&judgement).unwrap_or_else(|| unreachable!());
        assert_eq!(penalty.window, 5);
        assert!(penalty.what.contains("own data"), "{}", penalty.what);
        judgement
            .rejections
            .push((3, "undecodable".into(), "checksum".into()));
        let penalty = first_penalty(&judgement).unwrap_or_else(|| unreachable!());
        assert_eq!(
            (penalty.window, penalty.what.as_str()),
            (3, "payload rejected (undecodable)")
        );
    }

    #[test]
    fn pay_follows_compute_only_when_ordered_and_none_is_zero() {
        let miner = |name: &str, behavior: &str, share: f64| MinerOutcome {
            name: name.into(),
            uid: 0,
            behavior: behavior.into(),
            share,
            share_whole_run: share,
            stake_tao: 0.0,
            uploads: 0,
            outcomes: BTreeMap::new(),
            rejection_reason: None,
            flags: BTreeMap::new(),
            overlap: None,
            evaluations: 0,
            mean_score: None,
            first_penalty: None,
            zeroed_from: None,
        };
        let mut miners = vec![
            miner("h2", "part-time:0.25", 0.05),
            miner("m1", "honest", 0.30),
            miner("a1", "noise", 0.0),
            miner("h1", "part-time:0.5", 0.15),
            miner("m2", "honest", 0.28),
        ];
        let shares = heterogeneous(&miners);
        let names: Vec<&str> = shares.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["m1", "m2", "h1", "h2"]);
        assert!(ordered_by_compute(&shares));
        assert!((honest_share(&miners) - 0.78).abs() < 1e-12);
        // Half the compute paid more than a full-time miner: not ordered.
        miners[3].share = 0.29;
        assert!(!ordered_by_compute(&heterogeneous(&miners)));
        // A part-time miner paid nothing: not ordered either.
        miners[3].share = 0.15;
        miners[0].share = 0.0;
        assert!(!ordered_by_compute(&heterogeneous(&miners)));
    }
}
