//! A node's Prometheus metrics and health, folded from its [`Event`]s.
//!
//! Pure: [`Metrics::observe`] takes each event with the time it was seen, [`Metrics::render`]
//! writes the text exposition format and [`Metrics::health`] says whether the node is still
//! completing windows. Serving them over HTTP is the binary's job.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::commitment::Role;
use crate::events::{Event, Flag, Phase};

/// How many windows without a completed one make a node unhealthy.
pub const STALLED_AFTER_WINDOWS: u64 = 2;

/// What a node has done, as its metrics show it.
#[derive(Debug, Clone)]
pub struct Metrics {
    role: Role,
    version: String,
    window_ms: u64,
    started_ms: u64,
    uid: Option<u16>,
    window: Option<u64>,
    phase: Option<Phase>,
    /// The last completed window (applied, or reached by catch-up) and when.
    completed: Option<(u64, u64)>,
    windows_completed: u64,
    global_step: Option<u64>,
    train_loss: Option<f64>,
    learning_rate: Option<f64>,
    compute_share: Option<f64>,
    validation: Option<(f64, f64)>,
    uploads: BTreeMap<bool, u64>,
    upload_bytes: u64,
    download_bytes: u64,
    payloads: BTreeMap<String, u64>,
    peers: Option<(usize, usize)>,
    skipped: u64,
    weights_set: u64,
    flags: BTreeMap<&'static str, u64>,
    errors: BTreeMap<&'static str, u64>,
    out_of_sync: u64,
    /// Resyncs by how: redone from the manifest, or a full rebuild.
    resyncs: [u64; 2],
    catch_ups: u64,
}

/// Whether the node is completing windows, and the reason when it is not.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    pub healthy: bool,
    pub seconds_since_progress: f64,
    pub detail: String,
}

impl Metrics {
    /// Metrics of a node that started at `started_ms`, on a network whose windows last
    /// `window_ms`.
    pub fn new(role: Role, version: &str, window_ms: u64, started_ms: u64) -> Metrics {
        Metrics {
            role,
            version: version.to_string(),
            window_ms,
            started_ms,
            uid: None,
            window: None,
            phase: None,
            completed: None,
            windows_completed: 0,
            global_step: None,
            train_loss: None,
            learning_rate: None,
            compute_share: None,
            validation: None,
            uploads: [(true, 0), (false, 0)].into(),
            upload_bytes: 0,
            download_bytes: 0,
            payloads: [("ok".to_string(), 0)].into(),
            peers: None,
            skipped: 0,
            weights_set: 0,
            flags: [("copy", 0), ("norm_outlier", 0)].into(),
            errors: [("chain", 0), ("storage", 0)].into(),
            out_of_sync: 0,
            resyncs: [0; 2],
            catch_ups: 0,
        }
    }

    /// Counts `event`, seen at `now_ms`.
    pub fn observe(&mut self, event: &Event, now_ms: u64) {
        if let Some(window) = event.window() {
            self.window = Some(self.window.map_or(window, |w| w.max(window)));
        }
        match event {
            Event::Started { uid, .. } => self.uid = Some(*uid),
            Event::Phase { phase, .. } => self.phase = Some(*phase),
            Event::Trained {
                mean_loss,
                lr,
                compute_share,
                ..
            } => {
                self.train_loss = Some(*mean_loss);
                self.learning_rate = Some(*lr);
                self.compute_share = Some(*compute_share);
            }
            Event::Uploaded { bytes, in_slot, .. } => {
                *self.uploads.entry(*in_slot).or_default() += 1;
                self.upload_bytes += bytes;
            }
            Event::Skipped { .. } => self.skipped += 1,
            Event::Gathered {
                peers, included, ..
            } => {
                for peer in peers {
                    *self.payloads.entry(peer.outcome.clone()).or_default() += 1;
                    self.download_bytes += peer.bytes;
                    if peer.outcome == "storage_error" {
                        *self.errors.entry("storage").or_default() += 1;
                    }
                }
                self.peers = Some((peers.len(), included.len()));
            }
            Event::Applied {
                window,
                global_step,
                ..
            } => {
                self.complete(*window, now_ms);
                self.global_step = Some(*global_step);
            }
            Event::CaughtUp { to, .. } => {
                self.catch_ups += 1;
                self.complete(*to, now_ms);
            }
            Event::Validation {
                loss,
                bits_per_byte,
                ..
            } => self.validation = Some((*loss, *bits_per_byte)),
            Event::WeightsSet { .. } => self.weights_set += 1,
            Event::Flagged { flag, .. } => {
                let kind = match flag {
                    Flag::Copy { .. } => "copy",
                    Flag::NormOutlier { .. } => "norm_outlier",
                    Flag::Repeat { .. } => "repeat",
                };
                *self.flags.entry(kind).or_default() += 1;
            }
            Event::OutOfSync { .. } => self.out_of_sync += 1,
            Event::Resynced { full_rebuild, .. } => self.resyncs[usize::from(*full_rebuild)] += 1,
            Event::Failed { part, .. } => *self.errors.entry(part.name()).or_default() += 1,
            Event::Resumed { .. }
            | Event::Evaluated { .. }
            | Event::Overlaps { .. }
            | Event::Scores { .. }
            | Event::ManifestPublished { .. }
            | Event::CheckpointPublished { .. } => {}
        }
    }

    fn complete(&mut self, window: u64, now_ms: u64) {
        self.windows_completed += 1;
        self.completed = Some((window, now_ms));
    }

    /// Seconds since the last completed window, or since the node started when none has.
    fn seconds_since_progress(&self, now_ms: u64) -> f64 {
        let since = self.completed.map_or(self.started_ms, |(_, at)| at);
        now_ms.saturating_sub(since) as f64 / 1000.0
    }

    /// Unhealthy once [`STALLED_AFTER_WINDOWS`] windows have passed without a completed one.
    pub fn health(&self, now_ms: u64) -> Health {
        let seconds = self.seconds_since_progress(now_ms);
        let limit = (STALLED_AFTER_WINDOWS * self.window_ms) as f64 / 1000.0;
        let last = match self.completed {
            Some((window, _)) => format!("window {window}"),
            None => "no window yet (since it started)".to_string(),
        };
        Health {
            healthy: seconds <= limit,
            seconds_since_progress: seconds,
            detail: format!(
                "last completed: {last}, {seconds:.0} s ago; unhealthy after {limit:.0} s \
                 ({STALLED_AFTER_WINDOWS} windows)"
            ),
        }
    }

    /// The metrics in Prometheus' text exposition format (version 0.0.4).
    pub fn render(&self, now_ms: u64) -> String {
        let mut out = Exposition::default();
        let uid = self.uid.map_or(String::new(), |uid| uid.to_string());
        out.gauge(
            "templar_node_info",
            "The node: its role, uid and version (always 1).",
            &[(
                &[
                    ("role", self.role.name()),
                    ("uid", &uid),
                    ("version", &self.version),
                ][..],
                1.0,
            )],
        );
        out.scalar_gauge(
            "templar_window",
            "The latest window the node worked on.",
            self.window.map(|w| w as f64),
        );
        // Every phase, one 1 and the others 0.
        let phases: Vec<(&str, f64)> = Phase::ALL
            .iter()
            .map(|p| (p.name(), f64::from(u8::from(self.phase == Some(*p)))))
            .collect();
        out.labelled(
            "templar_phase",
            "gauge",
            "1 for the phase the node is in.",
            "phase",
            &phases,
        );
        out.scalar_gauge(
            "templar_last_completed_window",
            "The last window the node applied or caught up to.",
            self.completed.map(|(w, _)| w as f64),
        );
        out.counter(
            "templar_windows_completed_total",
            "Windows applied or reached by catch-up.",
            self.windows_completed as f64,
        );
        out.scalar_gauge(
            "templar_seconds_since_last_completed_window",
            "Seconds since the last completed window (since the start when none has).",
            Some(self.seconds_since_progress(now_ms)),
        );
        let health = self.health(now_ms);
        out.scalar_gauge(
            "templar_healthy",
            "1 while the node completes windows (what /healthz answers).",
            Some(f64::from(u8::from(health.healthy))),
        );
        out.scalar_gauge(
            "templar_global_step",
            "Outer steps the network has taken, as this node counts them.",
            self.global_step.map(|s| s as f64),
        );
        out.scalar_gauge(
            "templar_train_loss",
            "Mean training loss of the miner's last window.",
            self.train_loss,
        );
        out.scalar_gauge(
            "templar_inner_learning_rate",
            "Inner learning rate of the miner's last step (the schedule follows the global step).",
            self.learning_rate,
        );
        out.scalar_gauge(
            "templar_compute_share",
            "Share of the miner's last window spent training.",
            self.compute_share,
        );
        out.scalar_gauge(
            "templar_validation_loss",
            "The validator's loss on the validation split.",
            self.validation.map(|(loss, _)| loss),
        );
        out.scalar_gauge(
            "templar_validation_bits_per_byte",
            "The validator's bits per byte on the validation split.",
            self.validation.map(|(_, bpb)| bpb),
        );
        let uploads: Vec<(&str, f64)> = self
            .uploads
            .iter()
            .map(|(in_slot, n)| (if *in_slot { "true" } else { "false" }, *n as f64))
            .collect();
        out.labelled(
            "templar_uploads_total",
            "counter",
            "Payloads uploaded, by whether they landed in the upload slot.",
            "in_slot",
            &uploads,
        );
        out.counter(
            "templar_upload_bytes_total",
            "Bytes of payloads uploaded.",
            self.upload_bytes as f64,
        );
        out.counter(
            "templar_download_bytes_total",
            "Bytes of peers' payloads gathered.",
            self.download_bytes as f64,
        );
        let payloads: Vec<(&str, f64)> = self
            .payloads
            .iter()
            .map(|(outcome, n)| (outcome.as_str(), *n as f64))
            .collect();
        out.labelled(
            "templar_payloads_total",
            "counter",
            "Peers' payloads gathered, by outcome (ok, missing, too_late, malformed, ...).",
            "outcome",
            &payloads,
        );
        out.scalar_gauge(
            "templar_peers",
            "Peers the node gathered from in its last window.",
            self.peers.map(|(n, _)| n as f64),
        );
        out.scalar_gauge(
            "templar_peers_included",
            "Peers whose payloads entered the last window's aggregate.",
            self.peers.map(|(_, n)| n as f64),
        );
        out.counter(
            "templar_windows_skipped_total",
            "Windows the miner contributed nothing to (the reason is in the log).",
            self.skipped as f64,
        );
        out.counter(
            "templar_weights_set_total",
            "Times the validator set weights on the chain.",
            self.weights_set as f64,
        );
        let flags: Vec<(&str, f64)> = self.flags.iter().map(|(k, n)| (*k, *n as f64)).collect();
        out.labelled(
            "templar_flags_total",
            "counter",
            "Payloads the validator penalised, by kind.",
            "kind",
            &flags,
        );
        let errors: Vec<(&str, f64)> = self.errors.iter().map(|(k, n)| (*k, *n as f64)).collect();
        out.labelled(
            "templar_errors_total",
            "counter",
            "Chain and storage operations that failed and were gone on without (peers' \
             unreadable payloads count as storage errors).",
            "part",
            &errors,
        );
        out.counter(
            "templar_out_of_sync_total",
            "Windows whose model did not match the manifest.",
            self.out_of_sync as f64,
        );
        out.labelled(
            "templar_resyncs_total",
            "counter",
            "Times the model was brought back to the manifest's: by redoing the last window \
             (redo) or from the checkpoint (rebuild).",
            "how",
            &[
                ("redo", self.resyncs[0] as f64),
                ("rebuild", self.resyncs[1] as f64),
            ],
        );
        out.counter(
            "templar_catch_ups_total",
            "Times the node caught up with the network.",
            self.catch_ups as f64,
        );
        out.text
    }
}

/// The text exposition format, metric by metric.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let _ = write!(self.text, "{name}");
        if !labels.is_empty() {
            let pairs: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let _ = write!(self.text, "{{{}}}", pairs.join(","));
        }
        let _ = writeln!(self.text, " {}", number(value));
    }

    /// A gauge without labels; left out until it has a value, as Prometheus expects of a
    /// value not known yet.
    fn scalar_gauge(&mut self, name: &str, help: &str, value: Option<f64>) {
        if let Some(value) = value {
            self.header(name, "gauge", help);
            self.sample(name, &[], value);
        }
    }

    fn counter(&mut self, name: &str, help: &str, value: f64) {
        self.header(name, "counter", help);
        self.sample(name, &[], value);
    }

    fn gauge(&mut self, name: &str, help: &str, samples: &[(&[(&str, &str)], f64)]) {
        self.header(name, "gauge", help);
        for (labels, value) in samples {
            self.sample(name, labels, *value);
        }
    }

    fn labelled(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        label: &str,
        values: &[(&str, f64)],
    ) {
        self.header(name, kind, help);
        for (value_label, value) in values {
            self.sample(name, &[(label, value_label)], *value);
        }
    }
}

/// Label values escape backslash, quote and newline.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{value}")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::events::{Part, PeerReport};
    use crate::fingerprint::Fingerprint;

    const WINDOW_MS: u64 = 30_000;

    /// The value of the sample `line` (name and labels exactly as written).
    fn value(text: &str, line: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(line)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {line} in\n{text}"))
            .parse()
            .unwrap()
    }

    fn peer(uid: u16, outcome: &str, bytes: u64) -> PeerReport {
        PeerReport {
            uid,
            outcome: outcome.into(),
            reason: String::new(),
            bytes,
        }
    }

    fn miner_window(metrics: &mut Metrics, window: u64, at_ms: u64) {
        metrics.observe(
            &Event::Phase {
                window,
                phase: Phase::Training,
            },
            at_ms,
        );
        metrics.observe(
            &Event::Trained {
                window,
                steps: 4,
                samples: 32,
                mean_loss: 5.5 - window as f64 / 10.0,
                lr: 3e-4,
                train_seconds: 12.0,
                compute_share: 0.4,
            },
            at_ms,
        );
        metrics.observe(
            &Event::Uploaded {
                window,
                bytes: 1000,
                uploaded_ms: at_ms,
                in_slot: window != 3,
            },
            at_ms,
        );
        metrics.observe(
            &Event::Gathered {
                window,
                peers: vec![
                    peer(1, "ok", 1000),
                    peer(2, "ok", 900),
                    peer(3, "too_late", 0),
                ],
                included: vec![1, 2],
            },
            at_ms,
        );
        metrics.observe(
            &Event::Applied {
                window,
                global_step: window,
                fingerprint: Fingerprint([0; 32]),
            },
            at_ms + 1000,
        );
    }

    #[test]
    fn a_miners_windows_add_up() {
        let mut metrics = Metrics::new(Role::Miner, "0.1.0 (commit abc)", WINDOW_MS, 0);
        metrics.observe(
            &Event::Started {
                role: Role::Miner,
                uid: 1,
                window: 2,
            },
            0,
        );
        miner_window(&mut metrics, 2, 10_000);
        miner_window(&mut metrics, 3, 40_000);
        metrics.observe(
            &Event::Phase {
                window: 4,
                phase: Phase::Gathering,
            },
            70_000,
        );
        metrics.observe(
            &Event::Failed {
                part: Part::Storage,
                action: "deleting old payloads".into(),
                error: "timeout".into(),
            },
            70_000,
        );
        let text = metrics.render(71_000);
        assert_eq!(
            value(
                &text,
                r#"templar_node_info{role="miner",uid="1",version="0.1.0 (commit abc)"}"#
            ),
            1.0
        );
        assert_eq!(value(&text, "templar_window"), 4.0);
        assert_eq!(value(&text, r#"templar_phase{phase="gathering"}"#), 1.0);
        assert_eq!(value(&text, r#"templar_phase{phase="training"}"#), 0.0);
        assert_eq!(value(&text, "templar_last_completed_window"), 3.0);
        assert_eq!(value(&text, "templar_windows_completed_total"), 2.0);
        assert_eq!(
            value(&text, "templar_seconds_since_last_completed_window"),
            30.0
        );
        assert_eq!(value(&text, "templar_global_step"), 3.0);
        assert_eq!(value(&text, "templar_train_loss"), 5.2);
        assert_eq!(value(&text, "templar_inner_learning_rate"), 3e-4);
        assert_eq!(value(&text, "templar_compute_share"), 0.4);
        assert_eq!(
            value(&text, r#"templar_uploads_total{in_slot="true"}"#),
            1.0
        );
        assert_eq!(
            value(&text, r#"templar_uploads_total{in_slot="false"}"#),
            1.0
        );
        assert_eq!(value(&text, "templar_upload_bytes_total"), 2000.0);
        assert_eq!(value(&text, "templar_download_bytes_total"), 3800.0);
        assert_eq!(value(&text, r#"templar_payloads_total{outcome="ok"}"#), 4.0);
        assert_eq!(
            value(&text, r#"templar_payloads_total{outcome="too_late"}"#),
            2.0
        );
        assert_eq!(value(&text, "templar_peers"), 3.0);
        assert_eq!(value(&text, "templar_peers_included"), 2.0);
        assert_eq!(value(&text, r#"templar_errors_total{part="storage"}"#), 1.0);
        assert_eq!(value(&text, r#"templar_errors_total{part="chain"}"#), 0.0);
        assert_eq!(value(&text, "templar_healthy"), 1.0);
        // A miner has no validation figures: they are left out, not reported as 0.
        assert!(!text.contains("templar_validation_bits_per_byte"), "{text}");
        // Every sample has its TYPE line before it.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} has no TYPE"
            );
        }
    }

    #[test]
    fn a_validators_judging_shows() {
        let mut metrics = Metrics::new(Role::Validator, "v", WINDOW_MS, 0);
        metrics.observe(
            &Event::Validation {
                window: 5,
                loss: 4.0,
                bits_per_byte: 1.25,
            },
            1,
        );
        metrics.observe(
            &Event::WeightsSet {
                window: 5,
                uids: vec![1],
                weights: vec![65535],
            },
            1,
        );
        metrics.observe(
            &Event::Flagged {
                window: 5,
                miner: 2,
                flag: Flag::Copy { overlap: 0.9 },
            },
            1,
        );
        metrics.observe(
            &Event::Failed {
                part: Part::Chain,
                action: "setting weights".into(),
                error: "x".into(),
            },
            1,
        );
        metrics.observe(
            &Event::Gathered {
                window: 5,
                peers: vec![peer(4, "storage_error", 0)],
                included: vec![],
            },
            1,
        );
        let text = metrics.render(2);
        assert_eq!(value(&text, "templar_validation_bits_per_byte"), 1.25);
        assert_eq!(value(&text, "templar_validation_loss"), 4.0);
        assert_eq!(value(&text, "templar_weights_set_total"), 1.0);
        assert_eq!(value(&text, r#"templar_flags_total{kind="copy"}"#), 1.0);
        assert_eq!(value(&text, r#"templar_errors_total{part="chain"}"#), 1.0);
        assert_eq!(value(&text, r#"templar_errors_total{part="storage"}"#), 1.0);
        assert_eq!(
            value(
                &text,
                r#"templar_node_info{role="validator",uid="",version="v"}"#
            ),
            1.0
        );
    }

    #[test]
    fn a_node_that_stops_completing_windows_turns_unhealthy() {
        let mut metrics = Metrics::new(Role::Miner, "v", WINDOW_MS, 1_000);
        // Two windows from the start are allowed for the first.
        assert!(metrics.health(61_000).healthy);
        assert!(!metrics.health(61_001).healthy);
        miner_window(&mut metrics, 7, 99_000);
        let health = metrics.health(100_000 + 2 * WINDOW_MS);
        assert!(health.healthy, "{health:?}");
        let health = metrics.health(100_001 + 2 * WINDOW_MS);
        assert!(!health.healthy);
        assert!(health.detail.contains("window 7"), "{}", health.detail);
        assert_eq!(
            value(&metrics.render(100_001 + 2 * WINDOW_MS), "templar_healthy"),
            0.0
        );
        // Catching up counts as progress.
        metrics.observe(
            &Event::CaughtUp {
                from: Some(7),
                to: 12,
                replayed: 5,
                checkpoint: None,
            },
            200_000,
        );
        assert!(metrics.health(200_000 + WINDOW_MS).healthy);
        assert_eq!(
            value(&metrics.render(200_000), "templar_last_completed_window"),
            12.0
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(f64::NEG_INFINITY), "-Inf");
        assert_eq!(number(2.5), "2.5");
    }
}
