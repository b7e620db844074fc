//! Everything the nodes reported, folded into the state of each node and a record per window:
//! what the dashboard shows and what the report is made of. Pure: events in, state out.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use templar_node::Role;
use templar_node::events::{Event, Phase};

/// One line of a node's `--events` file.
#[derive(Debug, Clone, Deserialize)]
pub struct EventLine {
    pub node: String,
    pub at_ms: u64,
    pub event: Event,
}

/// What the dashboard shows of one node.
#[derive(Debug, Clone, Default)]
pub struct NodeStatus {
    pub role: Option<Role>,
    pub uid: Option<u16>,
    pub window: Option<u64>,
    pub phase: Option<Phase>,
    /// The latest thing worth a glance ("trained 6 steps, loss 3.41").
    pub last: String,
    pub updated_ms: u64,
}

/// One miner in one window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MinerWindow {
    /// The Gauntlet's score when this window evaluated the miner.
    pub score: Option<f64>,
    pub final_score: Option<f64>,
    /// OpenSkill ordinal.
    pub rating: Option<f64>,
    /// The weight the validator computed (normalised).
    pub weight: Option<f64>,
    /// The chain's incentive for the miner at the end of the window.
    pub incentive: Option<f64>,
    pub payload_bytes: Option<u64>,
    /// Share of the window spent in inner steps.
    pub compute_share: Option<f64>,
    pub train_steps: Option<u32>,
    pub train_loss: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WindowRecord {
    pub window: u64,
    pub validation_loss: Option<f64>,
    pub bits_per_byte: Option<f64>,
    /// The uids whose payloads the validator aggregated.
    pub included: Vec<u16>,
    pub global_step: Option<u64>,
    /// Payload bytes uploaded by all miners, and bytes all nodes downloaded.
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub miners: BTreeMap<u16, MinerWindow>,
}

/// How many notices the dashboard keeps.
const NOTICES: usize = 8;

#[derive(Debug, Default)]
pub struct History {
    pub nodes: BTreeMap<String, NodeStatus>,
    pub windows: BTreeMap<u64, WindowRecord>,
    /// Recent things that went wrong or were unusual, newest last.
    pub notices: VecDeque<String>,
}

impl History {
    pub fn apply(&mut self, line: &EventLine) {
        let status = self.nodes.entry(line.node.clone()).or_default();
        status.updated_ms = line.at_ms;
        let window = window_of(&line.event);
        status.window = Some(status.window.map_or(window, |w| w.max(window)));
        let role = status.role;
        let uid = status.uid;
        match &line.event {
            Event::Started { role, uid, window } => {
                status.role = Some(*role);
                status.uid = Some(*uid);
                status.last = format!("started at window {window}");
            }
            Event::Phase { phase, .. } => status.phase = Some(*phase),
            Event::Resumed { window, .. } => {
                status.last = match window {
                    Some(w) => format!("resumed from its state after window {w}"),
                    None => "resumed from its state".into(),
                };
            }
            Event::Trained {
                window,
                steps,
                mean_loss,
                compute_share,
                ..
            } => {
                status.last = format!("trained {steps} steps, loss {mean_loss:.3}");
                if let Some(uid) = uid {
                    let miner = self.miner(*window, uid);
                    miner.train_steps = Some(*steps);
                    miner.train_loss = Some(*mean_loss);
                    miner.compute_share = Some(*compute_share);
                }
            }
            Event::Uploaded {
                window,
                bytes,
                in_slot,
                ..
            } => {
                status.last = format!("uploaded {}", human_bytes(*bytes));
                if !in_slot {
                    self.notice(&line.node, *window, "uploaded outside the slot".into());
                }
                self.record(*window).bytes_sent += bytes;
                if let Some(uid) = uid {
                    self.miner(*window, uid).payload_bytes = Some(*bytes);
                }
            }
            Event::Skipped { window, reason } => {
                status.last = format!("skipped: {reason}");
                self.notice(&line.node, *window, format!("skipped: {reason}"));
            }
            Event::Gathered {
                window,
                peers,
                included,
            } => {
                let accepted = peers.iter().filter(|p| p.outcome == "ok").count();
                status.last = format!("gathered {accepted}/{} payloads", peers.len());
                let received: u64 = peers.iter().map(|p| p.bytes).sum();
                let rejected: Vec<String> = peers
                    .iter()
                    .filter(|p| p.outcome != "ok")
                    .map(|p| format!("uid {} {}", p.uid, p.outcome))
                    .collect();
                let record = self.record(*window);
                record.bytes_received += received;
                if role == Some(Role::Validator) {
                    record.included = included.clone();
                    if !rejected.is_empty() {
                        self.notice(&line.node, *window, rejected.join(", "));
                    }
                }
            }
            Event::Applied {
                window,
                global_step,
                ..
            } => {
                if role == Some(Role::Validator) {
                    self.record(*window).global_step = Some(*global_step);
                }
            }
            Event::Evaluated {
                window,
                miner,
                score,
                ..
            } => {
                status.last = format!("evaluated uid {miner}: {score:+.4}");
                self.miner(*window, *miner).score = Some(*score);
            }
            Event::Scores { window, miners } => {
                for score in miners {
                    let miner = self.miner(*window, score.uid);
                    miner.final_score = Some(score.final_score);
                    miner.rating = Some(score.ordinal);
                    miner.weight = Some(score.weight);
                }
            }
            Event::Flagged {
                window,
                miner,
                flag,
            } => {
                self.notice(&line.node, *window, format!("uid {miner} flagged: {flag}"));
            }
            Event::WeightsSet { uids, .. } => {
                status.last = format!("set weights on {} uids", uids.len());
            }
            Event::Validation {
                window,
                loss,
                bits_per_byte,
            } => {
                status.last = format!("validation BpB {bits_per_byte:.3}");
                let record = self.record(*window);
                record.validation_loss = Some(*loss);
                record.bits_per_byte = Some(*bits_per_byte);
            }
            Event::ManifestPublished { .. } | Event::Overlaps { .. } => {}
            Event::CheckpointPublished { window } => {
                status.last = format!("published the checkpoint of window {window}");
            }
            Event::CaughtUp {
                to,
                replayed,
                checkpoint,
                ..
            } => {
                let from = checkpoint.map_or(String::new(), |c| format!(" from checkpoint {c}"));
                let text = format!("caught up to window {to}{from}, {replayed} replayed");
                status.last = text.clone();
                self.notice(&line.node, *to, text);
            }
            Event::Failed {
                part,
                action,
                error,
            } => {
                let text = format!("{} failed {action}: {error}", part.name());
                let window = status.window.unwrap_or(0);
                status.last = text.clone();
                self.notice(&line.node, window, text);
            }
            Event::OutOfSync { window, .. } => {
                self.notice(
                    &line.node,
                    *window,
                    "model out of sync: redoing the window".into(),
                );
            }
            Event::Resynced {
                window,
                full_rebuild,
            } => {
                let how = if *full_rebuild {
                    "rebuilt from the checkpoint"
                } else {
                    "window redone from the manifest"
                };
                self.notice(&line.node, *window, format!("back in sync: {how}"));
            }
        }
    }

    /// Sets the chain's incentive for each miner as of the end of `window`.
    pub fn set_incentives(&mut self, window: u64, incentives: &[(u16, f64)]) {
        for (uid, incentive) in incentives {
            self.miner(window, *uid).incentive = Some(*incentive);
        }
    }

    /// (window, bits per byte) of every validated window, in order.
    pub fn bits_per_byte(&self) -> Vec<(u64, f64)> {
        self.windows
            .values()
            .filter_map(|r| Some((r.window, r.bits_per_byte?)))
            .collect()
    }

    /// Each miner's median compute share over the windows it trained: the fraction of its wall
    /// time its trainer was busy (docs/node.md, "Overlapped windows").
    pub fn median_compute_share(&self) -> BTreeMap<u16, f64> {
        let mut shares: BTreeMap<u16, Vec<f64>> = BTreeMap::new();
        for record in self.windows.values() {
            for (uid, miner) in &record.miners {
                if let Some(share) = miner.compute_share {
                    shares.entry(*uid).or_default().push(share);
                }
            }
        }
        shares
            .into_iter()
            .map(|(uid, mut values)| {
                values.sort_by(f64::total_cmp);
                let middle = values.len() / 2;
                let median = if values.len() % 2 == 1 {
                    values[middle]
                } else {
                    (values[middle - 1] + values[middle]) / 2.0
                };
                (uid, median)
            })
            .collect()
    }

    /// The newest value of `field` for each miner.
    pub fn latest<T: Copy>(&self, field: impl Fn(&MinerWindow) -> Option<T>) -> BTreeMap<u16, T> {
        let mut latest = BTreeMap::new();
        for record in self.windows.values() {
            for (uid, miner) in &record.miners {
                if let Some(value) = field(miner) {
                    latest.insert(*uid, value);
                }
            }
        }
        latest
    }

    fn record(&mut self, window: u64) -> &mut WindowRecord {
        self.windows.entry(window).or_insert_with(|| WindowRecord {
            window,
            ..WindowRecord::default()
        })
    }

    fn miner(&mut self, window: u64, uid: u16) -> &mut MinerWindow {
        self.record(window).miners.entry(uid).or_default()
    }

    fn notice(&mut self, node: &str, window: u64, text: String) {
        if self.notices.len() == NOTICES {
            self.notices.pop_front();
        }
        self.notices.push_back(format!("w{window} {node}: {text}"));
    }
}

/// The window an event is about (for a catch-up, the window it reached; 0 for none).
pub fn window_of(event: &Event) -> u64 {
    event.window().unwrap_or(0)
}

/// 1536 → "1.5 KB" (decimal units, as network traffic is usually counted).
pub use templar_node::progress::bytes as human_bytes;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use templar_node::events::{MinerScore, PeerReport};

    fn line(node: &str, event: Event) -> EventLine {
        EventLine {
            node: node.into(),
            at_ms: 1,
            event,
        }
    }

    fn started(history: &mut History) {
        history.apply(&line(
            "validator-v1",
            Event::Started {
                role: Role::Validator,
                uid: 0,
                window: 5,
            },
        ));
        history.apply(&line(
            "miner-m1",
            Event::Started {
                role: Role::Miner,
                uid: 1,
                window: 5,
            },
        ));
    }

    #[test]
    fn miner_events_land_under_the_miners_uid() {
        let mut history = History::default();
        started(&mut history);
        history.apply(&line(
            "miner-m1",
            Event::Trained {
                window: 6,
                steps: 4,
                samples: 32,
                mean_loss: 3.5,
                lr: 1e-3,
                train_seconds: 5.0,
                compute_share: 0.5,
            },
        ));
        history.apply(&line(
            "miner-m1",
            Event::Uploaded {
                window: 6,
                bytes: 1500,
                uploaded_ms: 1,
                in_slot: true,
            },
        ));
        let miner = &history.windows[&6].miners[&1];
        assert_eq!(miner.train_steps, Some(4));
        assert_eq!(miner.compute_share, Some(0.5));
        assert_eq!(miner.payload_bytes, Some(1500));
        assert_eq!(history.windows[&6].bytes_sent, 1500);
        assert_eq!(history.nodes["miner-m1"].last, "uploaded 1.5 KB");
        assert_eq!(history.nodes["miner-m1"].window, Some(6));
    }

    #[test]
    fn the_validator_decides_inclusion_and_scores() {
        let mut history = History::default();
        started(&mut history);
        let peers = vec![
            PeerReport {
                uid: 1,
                outcome: "ok".into(),
                reason: String::new(),
                bytes: 100,
            },
            PeerReport {
                uid: 2,
                outcome: "missing".into(),
                reason: "no object".into(),
                bytes: 0,
            },
        ];
        history.apply(&line(
            "validator-v1",
            Event::Gathered {
                window: 6,
                peers: peers.clone(),
                included: vec![1],
            },
        ));
        // A miner's gather counts as traffic, not as the network's inclusion.
        history.apply(&line(
            "miner-m1",
            Event::Gathered {
                window: 6,
                peers,
                included: vec![1, 2],
            },
        ));
        history.apply(&line(
            "validator-v1",
            Event::Scores {
                window: 6,
                miners: vec![MinerScore {
                    uid: 1,
                    final_score: 0.4,
                    ordinal: 2.5,
                    binary_ma: 0.3,
                    sync: 1.0,
                    last_score: Some(0.01),
                    weight: 1.0,
                }],
            },
        ));
        history.apply(&line(
            "validator-v1",
            Event::Validation {
                window: 6,
                loss: 2.0,
                bits_per_byte: 2.9,
            },
        ));
        history.set_incentives(6, &[(1, 0.75)]);
        let record = &history.windows[&6];
        assert_eq!(record.included, vec![1]);
        assert_eq!(record.bytes_received, 200);
        assert_eq!(record.miners[&1].rating, Some(2.5));
        assert_eq!(record.miners[&1].incentive, Some(0.75));
        assert_eq!(history.bits_per_byte(), vec![(6, 2.9)]);
        assert_eq!(history.notices.len(), 1);
        assert!(history.notices[0].contains("uid 2 missing"));
    }

    #[test]
    fn the_median_compute_share_is_per_miner() {
        let mut history = History::default();
        // uid 1: 0.5, 0.9, 0.95 → 0.9; uid 2: 0.8, 1.0 → 0.9 (the middle two averaged).
        for (window, uid, share) in [
            (1, 1, 0.5),
            (2, 1, 0.9),
            (3, 1, 0.95),
            (1, 2, 0.8),
            (2, 2, 1.0),
        ] {
            history.miner(window, uid).compute_share = Some(share);
        }
        history.miner(4, 1).train_steps = Some(3);
        let medians = history.median_compute_share();
        assert_eq!(medians.len(), 2);
        assert!((medians[&1] - 0.9).abs() < 1e-12);
        assert!((medians[&2] - 0.9).abs() < 1e-12);
    }

    #[test]
    fn latest_takes_the_newest_window_with_a_value() {
        let mut history = History::default();
        history.set_incentives(3, &[(1, 0.2), (2, 0.8)]);
        history.set_incentives(4, &[(1, 0.5)]);
        let latest = history.latest(|m| m.incentive);
        assert_eq!(latest[&1], 0.5);
        assert_eq!(latest[&2], 0.8);
    }

    #[test]
    fn event_lines_parse_from_the_nodes_json() {
        let text = r#"{"node":"miner-m1","at_ms":7,"event":{"event":"uploaded","window":3,"bytes":10,"uploaded_ms":5,"in_slot":true}}"#;
        let parsed: EventLine = serde_json::from_str(text).unwrap();
        assert_eq!(parsed.node, "miner-m1");
        assert!(matches!(parsed.event, Event::Uploaded { bytes: 10, .. }));
    }

    #[test]
    fn bytes_read_as_people_count_them() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1000), "1.0 KB");
        assert_eq!(human_bytes(2_500_000), "2.5 MB");
    }
}
