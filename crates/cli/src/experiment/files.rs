//! The study's folder: prepared data, one file per finished run (so an interrupted study resumes),
//! and the report as JSON, Markdown and SVG plots. Every file is written atomically.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use templar_data::{Manifest, PrepareOptions, TokenizerSpec, prepare};
use templar_engine::{Preset, write_atomic};
use templar_experiment::{Method, Report, RunResult, Settings};

use templar_charts::{Chart, Series};

/// What a finished run must share with the study for it to be reused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunKey {
    pub preset: Preset,
    pub settings: Settings,
}

#[derive(Serialize, Deserialize)]
struct SavedRun {
    key: RunKey,
    result: RunResult,
}

/// `out/data`, prepared from `corpus` with the preset's tokenizer and sample length on first use.
pub fn prepare_data(out: &Path, corpus: &Path, preset: &Preset) -> Result<PathBuf> {
    let dir = out.join("data");
    if let Ok(manifest) = Manifest::read(&dir) {
        super::check_seq_len(manifest.seq_len, preset, &dir)?;
        return Ok(dir);
    }
    if !corpus.is_dir() {
        bail!(
            "the corpus is missing at {}: run scripts/setup to install the demo corpus, or pass \
             --corpus with a folder of .txt/.jsonl files",
            corpus.display()
        );
    }
    let tokenizer: TokenizerSpec = preset
        .train
        .tokenizer
        .parse()
        .map_err(|e| anyhow::anyhow!("the preset's tokenizer: {e}"))?;
    eprintln!(
        "preparing data from {} into {}",
        corpus.display(),
        dir.display()
    );
    let mut options = PrepareOptions::new(
        corpus.to_path_buf(),
        dir.clone(),
        tokenizer,
        preset.train.seq_len,
    );
    options.progress = true;
    prepare(&options)?;
    Ok(dir)
}

fn run_file(out: &Path, method: Method) -> PathBuf {
    out.join("runs")
        .join(format!("{}.json", method.to_string().replace(':', "-")))
}

/// The run saved earlier under the same preset and settings, if any.
pub fn finished_run(out: &Path, key: &RunKey, method: Method) -> Result<Option<RunResult>> {
    let path = run_file(out, method);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    match serde_json::from_str::<SavedRun>(&text) {
        Ok(saved) if saved.key == *key && saved.result.method == method => Ok(Some(saved.result)),
        Ok(_) => {
            eprintln!(
                "{method}: {} has other settings; running it again",
                path.display()
            );
            Ok(None)
        }
        Err(e) => {
            eprintln!(
                "{method}: {} is unreadable ({e}); running it again",
                path.display()
            );
            Ok(None)
        }
    }
}

pub fn save_run(out: &Path, key: &RunKey, result: &RunResult) -> Result<()> {
    let path = run_file(out, result.method);
    let saved = SavedRun {
        key: key.clone(),
        result: result.clone(),
    };
    write(&path, serde_json::to_string_pretty(&saved)?.as_bytes())
}

/// `convergence.json`, `convergence.md` and the two plots.
pub fn write_report(out: &Path, report: &Report) -> Result<()> {
    write(
        &out.join("convergence.json"),
        serde_json::to_string_pretty(report)?.as_bytes(),
    )?;
    write(
        &out.join("bpb-vs-tokens.svg"),
        curve_chart(report, false).as_bytes(),
    )?;
    write(
        &out.join("bpb-vs-bytes.svg"),
        curve_chart(report, true).as_bytes(),
    )?;
    write(&out.join("convergence.md"), markdown(report).as_bytes())
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    Ok(write_atomic(path, bytes)?)
}

/// Validation BpB of every run against tokens trained, or against bytes sent (log scale).
fn curve_chart(report: &Report, by_bytes: bool) -> String {
    let series = report
        .runs
        .iter()
        .map(|run| Series {
            name: run.name.clone(),
            points: run
                .curve
                .iter()
                .map(|p| {
                    let x = if by_bytes { p.bytes_sent } else { p.tokens };
                    (x as f64, p.bpb)
                })
                .collect(),
            dashed: run.method == Method::Ddp,
        })
        .collect();
    let (title, x_label) = if by_bytes {
        ("Validation BpB vs bytes sent", "bytes sent per replica")
    } else {
        ("Validation BpB vs tokens", "training tokens (all replicas)")
    };
    Chart {
        title: title.into(),
        x_label: x_label.into(),
        y_label: "bits per byte".into(),
        series,
        log_x: by_bytes,
        log_y: false,
    }
    .to_svg()
}

fn markdown(report: &Report) -> String {
    let s = &report.settings;
    let command: Vec<String> = std::env::args().collect();
    format!(
        "# Convergence study\n\n\
         `{}`\n\n\
         Preset `{}` ({} parameters); {} replicas × {} samples × {} tokens per step; {} tokens per \
         run ({} steps per replica); seed {}; validation on {} held-out samples.\n\n\
         {}\n\
         ![BpB vs tokens](bpb-vs-tokens.svg)\n\n\
         ![BpB vs bytes sent](bpb-vs-bytes.svg)\n",
        command.join(" "),
        report.preset,
        report.parameters,
        s.replicas,
        s.batch_size,
        report.seq_len,
        s.tokens,
        report.steps_per_replica,
        s.seed,
        s.validation_samples,
        report.to_markdown()
    )
}
