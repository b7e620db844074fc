//! What a localnet shows while it runs: a live terminal dashboard, or plain log lines when
//! stdout is not a terminal.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use ratatui::Frame;
use ratatui::crossterm::event::{self, Event as TermEvent, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style, Stylize};
use ratatui::symbols::Marker;
use ratatui::text::Line;
use ratatui::widgets::{Axis, Block, Chart, Dataset, GraphType, Paragraph, Row, Table};
use templar_node::Role;
use templar_node::events::{Event, Phase};

use super::history::{EventLine, History, human_bytes, window_of};

/// Everything a frame shows.
pub struct Snapshot<'a> {
    pub dir: &'a PathBuf,
    pub history: &'a History,
    /// Node names in display order.
    pub names: &'a [String],
    pub exits: &'a BTreeMap<String, Option<i32>>,
    pub block: u64,
    pub window: u64,
    pub blocks_per_window: u64,
    pub until: Option<u64>,
    pub elapsed: Duration,
    pub stopping: bool,
    /// The chain's incentive now, by uid.
    pub incentives: &'a BTreeMap<u16, f64>,
}

/// The terminal, in the alternate screen until dropped.
pub struct Dashboard {
    terminal: ratatui::DefaultTerminal,
}

impl Dashboard {
    pub fn start() -> Result<Dashboard> {
        Ok(Dashboard {
            terminal: ratatui::try_init()?,
        })
    }

    pub fn draw(&mut self, snapshot: &Snapshot) -> Result<()> {
        self.terminal.draw(|frame| render(frame, snapshot))?;
        Ok(())
    }

    /// Whether the user asked to stop (q, Esc or Ctrl-C) since the last call.
    pub fn stop_pressed(&self) -> Result<bool> {
        let mut pressed = false;
        while event::poll(Duration::ZERO)? {
            if let TermEvent::Key(key) = event::read()? {
                let ctrl_c =
                    key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL);
                pressed |= key.kind == KeyEventKind::Press
                    && (ctrl_c || matches!(key.code, KeyCode::Char('q') | KeyCode::Esc));
            }
        }
        Ok(pressed)
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

pub fn render(frame: &mut Frame, s: &Snapshot) {
    let miners = s.history.latest(|m| m.payload_bytes).len().max(1);
    let [header, nodes, miner_area, bottom] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Length(s.names.len() as u16 + 3),
        Constraint::Length(miners as u16 + 3),
        Constraint::Min(8),
    ])
    .areas(frame.area());
    frame.render_widget(header_widget(s), header);
    frame.render_widget(nodes_table(s), nodes);
    frame.render_widget(miners_table(s), miner_area);
    let [chart, side] =
        Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(bottom);
    render_bpb(frame, s, chart);
    let [traffic, notices] =
        Layout::vertical([Constraint::Length(8), Constraint::Min(3)]).areas(side);
    frame.render_widget(traffic_table(s), traffic);
    let lines: Vec<Line> = s
        .history
        .notices
        .iter()
        .map(|n| Line::from(n.as_str()))
        .collect();
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" Notices ")),
        notices,
    );
}

fn header_widget<'a>(s: &Snapshot) -> Paragraph<'a> {
    let into = s.block % s.blocks_per_window.max(1) + 1;
    let until = s
        .until
        .map_or("until stopped".to_string(), |u| format!("until window {u}"));
    let state = if s.stopping {
        "stopping: nodes finish their window".to_string()
    } else {
        "q or Ctrl-C stops".to_string()
    };
    let secs = s.elapsed.as_secs();
    Paragraph::new(Line::from(vec![
        "templar localnet ".bold(),
        format!(
            "· block {} · window {} ({into}/{}) · {until} · {:02}:{:02} · {state}",
            s.block,
            s.window,
            s.blocks_per_window,
            secs / 60,
            secs % 60
        )
        .into(),
    ]))
    .block(Block::bordered().title(format!(" {} ", s.dir.display())))
}

fn nodes_table<'a>(s: &Snapshot) -> Table<'a> {
    let rows = s.names.iter().map(|name| {
        let status = s.history.nodes.get(name);
        let phase = match s.exits.get(name) {
            Some(Some(0)) => "exited".to_string(),
            Some(Some(code)) => format!("FAILED ({code})"),
            Some(None) => "killed".to_string(),
            None => status
                .and_then(|st| st.phase)
                .map_or("starting".into(), phase_name),
        };
        Row::new(vec![
            name.clone(),
            status
                .and_then(|st| st.uid)
                .map_or("–".into(), |u| u.to_string()),
            status
                .and_then(|st| st.window)
                .map_or("–".into(), |w| w.to_string()),
            phase,
            status.map(|st| st.last.clone()).unwrap_or_default(),
        ])
    });
    Table::new(
        rows,
        [
            Constraint::Length(14),
            Constraint::Length(4),
            Constraint::Length(7),
            Constraint::Length(12),
            Constraint::Min(20),
        ],
    )
    .header(Row::new(["node", "uid", "window", "phase", "latest"]).bold())
    .block(Block::bordered().title(" Nodes "))
}

fn phase_name(phase: Phase) -> String {
    phase.name().replace('_', " ")
}

fn miners_table<'a>(s: &Snapshot) -> Table<'a> {
    let h = s.history;
    let scores = h.latest(|m| m.score);
    let ratings = h.latest(|m| m.rating);
    let weights = h.latest(|m| m.weight);
    let bytes = h.latest(|m| m.payload_bytes);
    let share = h.latest(|m| m.compute_share);
    let uids: Vec<u16> = h
        .nodes
        .values()
        .filter(|n| n.role == Some(Role::Miner))
        .filter_map(|n| n.uid)
        .collect();
    let number = |map: &BTreeMap<u16, f64>, uid: u16, digits: usize| {
        map.get(&uid)
            .map_or("–".into(), |v| format!("{v:.digits$}"))
    };
    let rows = uids.into_iter().map(|uid| {
        Row::new(vec![
            uid.to_string(),
            number(&scores, uid, 4),
            number(&ratings, uid, 2),
            number(&weights, uid, 3),
            number(s.incentives, uid, 3),
            bytes.get(&uid).map_or("–".into(), |b| human_bytes(*b)),
            share
                .get(&uid)
                .map_or("–".into(), |v| format!("{:.0}%", v * 100.0)),
        ])
    });
    Table::new(rows, [Constraint::Length(10); 7])
        .header(
            Row::new([
                "miner uid",
                "last score",
                "rating",
                "weight",
                "incentive",
                "payload",
                "training",
            ])
            .bold(),
        )
        .block(Block::bordered().title(" Miners "))
}

fn render_bpb(frame: &mut Frame, s: &Snapshot, area: Rect) {
    let points: Vec<(f64, f64)> = s
        .history
        .bits_per_byte()
        .into_iter()
        .map(|(w, b)| (w as f64, b))
        .collect();
    let title = match (points.first(), points.last()) {
        (Some(first), Some(last)) => format!(" Validation BpB: {:.3} → {:.3} ", first.1, last.1),
        _ => " Validation BpB: waiting for the first window ".into(),
    };
    let (x0, x1) = bounds(points.iter().map(|p| p.0));
    let (y0, y1) = bounds(points.iter().map(|p| p.1));
    let dataset = Dataset::default()
        .marker(Marker::Braille)
        .graph_type(GraphType::Line)
        .style(Style::new().fg(Color::Cyan))
        .data(&points);
    let chart = Chart::new(vec![dataset])
        .block(Block::bordered().title(title))
        .x_axis(
            Axis::default()
                .bounds([x0, x1])
                .labels([format!("{x0:.0}"), format!("{x1:.0}")]),
        )
        .y_axis(
            Axis::default()
                .bounds([y0, y1])
                .labels([format!("{y0:.2}"), format!("{y1:.2}")]),
        );
    frame.render_widget(chart, area);
}

fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() {
        (0.0, 1.0)
    } else if hi - lo < 1e-9 {
        (lo - 0.5, hi + 0.5)
    } else {
        (lo, hi)
    }
}

fn traffic_table<'a>(s: &Snapshot) -> Table<'a> {
    let rows: Vec<Row> = s
        .history
        .windows
        .values()
        .rev()
        .filter(|r| r.bytes_sent + r.bytes_received > 0)
        .take(5)
        .map(|r| {
            Row::new(vec![
                r.window.to_string(),
                human_bytes(r.bytes_sent),
                human_bytes(r.bytes_received),
                r.included.len().to_string(),
            ])
        })
        .collect();
    Table::new(rows, [Constraint::Length(10); 4])
        .header(Row::new(["window", "sent", "received", "included"]).bold())
        .block(Block::bordered().title(" Traffic "))
}

/// The plain-output line for an event worth a line, if it is one.
pub fn plain_line(line: &EventLine) -> Option<String> {
    let text = match &line.event {
        Event::Started { uid, window, .. } => format!("started as uid {uid} in window {window}"),
        Event::Resumed { window, .. } => {
            format!("resumed from its saved state (window {window:?})")
        }
        Event::Trained {
            steps, mean_loss, ..
        } => format!("trained {steps} steps, loss {mean_loss:.3}"),
        Event::Uploaded { bytes, in_slot, .. } => format!(
            "uploaded {}{}",
            human_bytes(*bytes),
            if *in_slot { "" } else { " (outside the slot)" }
        ),
        Event::Skipped { reason, .. } => format!("skipped: {reason}"),
        Event::Gathered {
            peers, included, ..
        } => format!(
            "gathered {}/{} payloads, aggregated {:?}",
            peers.iter().filter(|p| p.outcome == "ok").count(),
            peers.len(),
            included
        ),
        Event::WeightsSet { uids, weights, .. } => format!("set weights {uids:?} → {weights:?}"),
        Event::Validation {
            loss,
            bits_per_byte,
            ..
        } => format!("validation loss {loss:.4}, {bits_per_byte:.4} bits per byte"),
        Event::CheckpointPublished { .. } => "published a checkpoint".into(),
        Event::CaughtUp {
            to,
            replayed,
            checkpoint,
            ..
        } => format!("caught up to window {to} ({replayed} replayed, checkpoint {checkpoint:?})"),
        Event::OutOfSync { .. } => "model out of sync with the manifest: redoing the window".into(),
        Event::Resynced {
            full_rebuild: true, ..
        } => "back in sync: rebuilt from the checkpoint".into(),
        Event::Resynced { .. } => "back in sync: window redone from the manifest".into(),
        Event::Flagged { miner, flag, .. } => format!("uid {miner} flagged: {flag}"),
        Event::Failed {
            part,
            action,
            error,
        } => format!("{} failed {action}: {error}", part.name()),
        Event::Phase { .. }
        | Event::Applied { .. }
        | Event::Evaluated { .. }
        | Event::Scores { .. }
        | Event::Overlaps { .. }
        | Event::ManifestPublished { .. } => return None,
    };
    let window = window_of(&line.event);
    Some(format!("[window {window}] {}: {text}", line.node))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    use super::*;

    #[test]
    fn a_frame_shows_nodes_miners_and_progress() {
        let mut history = History::default();
        let events = [
            (
                "validator-v1",
                Event::Started {
                    role: Role::Validator,
                    uid: 0,
                    window: 3,
                },
            ),
            (
                "miner-m1",
                Event::Started {
                    role: Role::Miner,
                    uid: 1,
                    window: 3,
                },
            ),
            (
                "miner-m1",
                Event::Uploaded {
                    window: 3,
                    bytes: 91_000,
                    uploaded_ms: 1,
                    in_slot: true,
                },
            ),
            (
                "validator-v1",
                Event::Validation {
                    window: 3,
                    loss: 5.0,
                    bits_per_byte: 7.5,
                },
            ),
            (
                "validator-v1",
                Event::Validation {
                    window: 4,
                    loss: 4.0,
                    bits_per_byte: 6.25,
                },
            ),
        ];
        for (node, event) in events {
            history.apply(&EventLine {
                node: node.into(),
                at_ms: 0,
                event,
            });
        }
        let names = vec!["validator-v1".to_string(), "miner-m1".to_string()];
        let dir = PathBuf::from("/tmp/net");
        let snapshot = Snapshot {
            dir: &dir,
            history: &history,
            names: &names,
            exits: &BTreeMap::from([("validator-v1".to_string(), Some(0))]),
            block: 85,
            window: 4,
            blocks_per_window: 20,
            until: Some(6),
            elapsed: Duration::from_secs(75),
            stopping: false,
            incentives: &BTreeMap::from([(1, 0.5)]),
        };
        let mut terminal = Terminal::new(TestBackend::new(140, 40)).unwrap();
        terminal.draw(|frame| render(frame, &snapshot)).unwrap();
        let text: String = terminal
            .backend()
            .buffer()
            .content()
            .iter()
            .map(|cell| cell.symbol())
            .collect();
        for expected in [
            "block 85",
            "window 4 (6/20)",
            "until window 6",
            "01:15",
            "miner-m1",
            "exited",
            "uploaded 91.0 KB",
            "0.500",
            "7.500 → 6.250",
        ] {
            assert!(
                text.contains(expected),
                "{expected:?} missing from the frame"
            );
        }
    }

    #[test]
    fn plain_lines_name_the_window_and_node() {
        let line = EventLine {
            node: "miner-m1".into(),
            at_ms: 0,
            event: Event::Uploaded {
                window: 9,
                bytes: 2_000,
                uploaded_ms: 0,
                in_slot: false,
            },
        };
        assert_eq!(
            plain_line(&line).unwrap(),
            "[window 9] miner-m1: uploaded 2.0 KB (outside the slot)"
        );
    }
}
