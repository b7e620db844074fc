//! The report a localnet leaves in its folder: `report.json` (every window of every run so far),
//! three charts as SVG and `report.html`, which shows them together.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use templar_node::NetworkConfig;
use templar_protocol::WindowClock;

use super::history::{History, WindowRecord, human_bytes};
use super::net_chain::NetChain;
use templar_charts::{Chart, Series, escape};

/// One invocation of `templar localnet`, appended to `runs.jsonl` when it ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub started_ms: u64,
    pub ended_ms: u64,
    /// The window in progress when the nodes started, and the last one they were asked to run.
    pub first_window: u64,
    pub until_window: Option<u64>,
    /// Ended by Ctrl-C rather than by `--windows`.
    pub interrupted: bool,
    /// Each node's exit code (`None`: killed by a signal).
    pub exits: BTreeMap<String, Option<i32>>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct NodeEntry {
    pub name: String,
    pub role: String,
    pub uid: u16,
    pub hotkey: String,
    /// The chain's incentive when the report was written.
    pub incentive: f64,
    pub stake_tao: f64,
    /// The block it registered at, and the one whose registration replaced it (a uid can
    /// change hands during a run: `takeover`).
    #[serde(default)]
    pub registered_at: u64,
    #[serde(default)]
    pub replaced_at: Option<u64>,
}

impl NodeEntry {
    /// Whether the node held its uid at the end of `block`.
    pub fn holds_at(&self, block: u64) -> bool {
        templar_chain::local::held_at(self.registered_at, self.replaced_at, block)
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    pub network: String,
    pub network_id: String,
    pub parameters: u64,
    /// What one miner would send per window without compression: every parameter as f32.
    pub dense_fp32_bytes: u64,
    pub nodes: Vec<NodeEntry>,
    pub runs: Vec<RunRecord>,
    pub windows: Vec<WindowRecord>,
    /// uid → the miner's median compute share over the windows it trained.
    #[serde(default)]
    pub median_compute_share: std::collections::BTreeMap<u16, f64>,
}

/// Fills in each window's incentives from the chain (as of the window's last block) and builds
/// the report.
pub fn build(
    history: &mut History,
    config: &NetworkConfig,
    chain: &NetChain,
    nodes: Vec<NodeEntry>,
    runs: Vec<RunRecord>,
) -> Result<Report> {
    let clock = WindowClock::new(config.window.blocks_per_window)
        .context("network.toml has no window length")?;
    let head = chain.head()?;
    // A uid that changed hands is one entry here: the chain answers for its holder of the time.
    let miners: std::collections::BTreeSet<u16> = nodes
        .iter()
        .filter(|n| n.role == "miner")
        .map(|n| n.uid)
        .collect();
    let windows: Vec<u64> = history.windows.keys().copied().collect();
    for window in windows {
        let end = clock.end_block(window);
        if end > head {
            continue;
        }
        let metagraph = chain.metagraph_as_of(end)?;
        let incentives: Vec<(u16, f64)> = miners
            .iter()
            .filter_map(|uid| Some((*uid, metagraph.neuron(*uid)?.incentive)))
            .collect();
        history.set_incentives(window, &incentives);
    }
    let parameters = config.model.model.parameter_count();
    Ok(Report {
        network: config.name.clone(),
        network_id: config.network()?.to_string(),
        parameters,
        dense_fp32_bytes: parameters * 4,
        nodes,
        runs,
        windows: history.windows.values().cloned().collect(),
        median_compute_share: history.median_compute_share(),
    })
}

pub fn read_runs(path: &Path) -> Result<Vec<RunRecord>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("{}: {l}", path.display())))
        .collect()
}

pub fn append_run(path: &Path, run: &RunRecord) -> Result<()> {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    writeln!(file, "{}", serde_json::to_string(run)?)?;
    file.sync_all()?;
    Ok(())
}

/// Writes `report.json`, the charts and `report.html` into `dir`, each atomically.
pub fn write(report: &Report, dir: &Path) -> Result<()> {
    write_atomic(
        &dir.join("report.json"),
        &serde_json::to_string_pretty(report)?,
    )?;
    let charts = charts(report);
    for (file, chart) in &charts {
        write_atomic(&dir.join(file), chart)?;
    }
    write_atomic(&dir.join("report.html"), &html(report, &charts))?;
    Ok(())
}

fn write_atomic(path: &Path, text: &str) -> Result<()> {
    Ok(templar_engine::write_atomic(path, text.as_bytes())?)
}

fn miner_names(report: &Report) -> BTreeMap<u16, String> {
    report
        .nodes
        .iter()
        .filter(|n| n.role == "miner")
        .map(|n| (n.uid, format!("uid {} ({})", n.uid, n.name)))
        .collect()
}

/// (window, value) points, with a NaN wherever windows are skipped (the network was stopped), so
/// that the chart shows a gap instead of a line across it.
fn points(windows: impl Iterator<Item = (u64, f64)>) -> Vec<(f64, f64)> {
    let mut points = Vec::new();
    let mut previous: Option<u64> = None;
    for (window, value) in windows {
        if previous.is_some_and(|p| window > p + 1) {
            points.push((window as f64 - 0.5, f64::NAN));
        }
        points.push((window as f64, value));
        previous = Some(window);
    }
    points
}

fn per_miner(report: &Report, field: impl Fn(&WindowRecord, u16) -> Option<f64>) -> Vec<Series> {
    miner_names(report)
        .into_iter()
        .map(|(uid, name)| Series {
            name,
            points: points(
                report
                    .windows
                    .iter()
                    .filter_map(|w| Some((w.window, field(w, uid)?))),
            ),
            dashed: false,
        })
        .collect()
}

pub fn charts(report: &Report) -> Vec<(&'static str, String)> {
    let bpb = Chart {
        title: "Validation bits per byte".into(),
        x_label: "window".into(),
        y_label: "bits per byte".into(),
        series: vec![Series {
            name: "validation".into(),
            points: points(
                report
                    .windows
                    .iter()
                    .filter_map(|w| Some((w.window, w.bits_per_byte?))),
            ),
            dashed: false,
        }],
        log_x: false,
        log_y: false,
    };
    let incentive = Chart {
        title: "Incentive per miner (from the chain)".into(),
        x_label: "window".into(),
        y_label: "incentive".into(),
        series: per_miner(report, |w, uid| w.miners.get(&uid)?.incentive),
        log_x: false,
        log_y: false,
    };
    let mut bytes_series = per_miner(report, |w, uid| {
        Some(w.miners.get(&uid)?.payload_bytes? as f64)
    });
    let windows: Vec<f64> = report.windows.iter().map(|w| w.window as f64).collect();
    if let (Some(first), Some(last)) = (windows.first(), windows.last()) {
        bytes_series.push(Series {
            name: "dense fp32".into(),
            points: vec![
                (*first, report.dense_fp32_bytes as f64),
                (*last, report.dense_fp32_bytes as f64),
            ],
            dashed: true,
        });
    }
    let sizes: Vec<u64> = report
        .windows
        .iter()
        .flat_map(|w| w.miners.values().filter_map(|m| m.payload_bytes))
        .collect();
    let title = match sizes.iter().sum::<u64>().checked_div(sizes.len() as u64) {
        Some(mean) if mean > 0 => format!(
            "Bytes per payload: {} against {} dense ({:.0}× smaller)",
            human_bytes(mean),
            human_bytes(report.dense_fp32_bytes),
            report.dense_fp32_bytes as f64 / mean as f64
        ),
        _ => "Bytes per payload".into(),
    };
    let bytes = Chart {
        title,
        x_label: "window".into(),
        y_label: "bytes".into(),
        series: bytes_series,
        log_x: false,
        log_y: true,
    };
    vec![
        ("bpb.svg", bpb.to_svg()),
        ("incentive.svg", incentive.to_svg()),
        ("bytes.svg", bytes.to_svg()),
    ]
}

fn html(report: &Report, charts: &[(&str, String)]) -> String {
    let mut page = String::new();
    let _ = write!(
        page,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>templar localnet report</title>\
         <style>body{{font-family:sans-serif;margin:2em;max-width:1500px}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}th{{background:#f3f3f3}}\
         .charts{{display:flex;flex-wrap:wrap;gap:1em}}</style></head><body>\
         <h1>templar localnet: {}</h1><p>network id <code>{}</code> · {} parameters · {} windows in {} run(s)</p>",
        escape(&report.network),
        escape(&report.network_id),
        report.parameters,
        report.windows.len(),
        report.runs.len()
    );
    page.push_str("<div class=\"charts\">");
    for (_, svg) in charts {
        page.push_str(svg);
    }
    page.push_str("</div><h2>Nodes</h2><table><tr><th>name</th><th>role</th><th>uid</th><th>incentive</th><th>stake (TAO)</th><th>payloads</th><th>mean payload</th><th>compression vs fp32</th></tr>");
    for node in &report.nodes {
        let sizes: Vec<u64> = report
            .windows
            .iter()
            .filter_map(|w| w.miners.get(&node.uid)?.payload_bytes)
            .filter(|_| node.role == "miner")
            .collect();
        let mean = (!sizes.is_empty()).then(|| sizes.iter().sum::<u64>() / sizes.len() as u64);
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.3}</td><td>{:.1}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&node.name),
            node.role,
            node.uid,
            node.incentive,
            node.stake_tao,
            sizes.len(),
            mean.map_or("–".into(), human_bytes),
            mean.map_or("–".into(), |m| format!(
                "{:.0}×",
                report.dense_fp32_bytes as f64 / m.max(1) as f64
            )),
        );
    }
    page.push_str(
        "</table><p>Every number here is in <code>report.json</code>.</p></body></html>\n",
    );
    page
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::MinerWindow;

    fn report() -> Report {
        let window = |w: u64, bpb: f64, bytes: u64| WindowRecord {
            window: w,
            bits_per_byte: Some(bpb),
            miners: BTreeMap::from([(
                1,
                MinerWindow {
                    payload_bytes: Some(bytes),
                    incentive: Some(1.0),
                    ..MinerWindow::default()
                },
            )]),
            ..WindowRecord::default()
        };
        Report {
            network: "localnet".into(),
            network_id: "localnet-abcd".into(),
            parameters: 1000,
            dense_fp32_bytes: 4000,
            nodes: vec![NodeEntry {
                name: "miner-m1".into(),
                role: "miner".into(),
                uid: 1,
                hotkey: "5F…".into(),
                incentive: 1.0,
                stake_tao: 0.0,
                registered_at: 0,
                replaced_at: None,
            }],
            runs: Vec::new(),
            windows: vec![window(4, 8.0, 100), window(5, 6.0, 300)],
            median_compute_share: Default::default(),
        }
    }

    #[test]
    fn the_page_holds_every_chart_and_the_compression() {
        let report = report();
        let charts = charts(&report);
        assert_eq!(charts.len(), 3);
        let page = html(&report, &charts);
        assert_eq!(page.matches("<svg").count(), 3);
        // Mean payload 200 bytes against 4000 dense.
        assert!(page.contains("<td>200 B</td><td>20×</td>"));
    }

    #[test]
    fn skipped_windows_leave_a_gap() {
        let p = points([(1, 5.0), (2, 4.0), (7, 3.0)].into_iter());
        assert_eq!(p.len(), 4);
        assert!(p[2].1.is_nan());
        assert_eq!(p[3], (7.0, 3.0));
    }

    #[test]
    fn runs_round_trip_through_their_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("runs.jsonl");
        assert!(read_runs(&path).unwrap_or_default().is_empty());
        let run = RunRecord {
            started_ms: 1,
            ended_ms: 2,
            first_window: 3,
            until_window: Some(6),
            interrupted: false,
            exits: BTreeMap::from([("miner-m1".to_string(), Some(0))]),
        };
        append_run(&path, &run).unwrap_or_else(|e| panic!("{e}"));
        append_run(&path, &run).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            read_runs(&path).unwrap_or_else(|e| panic!("{e}")),
            vec![run.clone(), run]
        );
    }
}
