//! `templar experiment convergence`: the convergence study (crate `templar-experiment`) driven from
//! the command line, with its data prepared on first use, finished runs kept so an interrupted
//! study resumes, and a report with plots.

mod files;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use templar_engine::{DeviceChoice, Preset};
use templar_experiment::{Method, OuterSettings, Report, Settings, Study, StudyData};

#[derive(Subcommand)]
pub enum ExperimentCommand {
    /// Does SparseLoCo learn as well as data-parallel training? Trains a preset under ddp, DiLoCo,
    /// DeMo and SparseLoCo on one token budget, seed and data order, and reports validation bits
    /// per byte against bytes sent.
    Convergence(ConvergenceArgs),
}

#[derive(Args)]
pub struct ConvergenceArgs {
    /// Built-in preset or a preset TOML file.
    #[arg(long, default_value = "tiny")]
    preset: String,
    #[arg(long, default_value_t = 4)]
    replicas: usize,
    /// Training tokens of each run, all replicas together [default: 600000, or 4000000 with --sweep].
    #[arg(long)]
    tokens: Option<u64>,
    /// Samples each replica trains on per step.
    #[arg(long, default_value_t = 2)]
    batch_size: usize,
    /// Runs to make, comma-separated: ddp, diloco:H, demo:K, sparseloco:H:K, or overlapped:H:K:D
    /// (sparseloco:H:K with overlapped windows, each round's aggregate arriving D steps into the
    /// next) [default: ddp, demo:32, diloco:10, diloco:30, sparseloco:10:32, sparseloco:10:64,
    /// sparseloco:30:64, overlapped:10:32:2].
    #[arg(long, value_delimiter = ',', conflicts_with = "sweep")]
    runs: Vec<Method>,
    /// Every setting of the study: sparseloco over H ∈ {10, 30, 50} × k ∈ {32, 64, 128}, diloco
    /// at each H, ddp and demo (the long run; hours on two cores).
    #[arg(long)]
    sweep: bool,
    /// Seeds the initial weights and the data order of every run.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Validation evaluations along each run.
    #[arg(long, default_value_t = 12)]
    eval_points: usize,
    /// Held-out samples evaluated each time.
    #[arg(long, default_value_t = 64)]
    validation_samples: usize,
    /// SparseLoCo's outer learning rate.
    #[arg(long, default_value_t = OuterSettings::default().sparseloco_lr)]
    sparseloco_lr: f32,
    /// SparseLoCo's error-feedback decay β.
    #[arg(long, default_value_t = OuterSettings::default().error_feedback_beta)]
    error_feedback_beta: f32,
    /// Keep SparseLoCo's error feedback in bf16 between exchanges (half the memory of f32).
    #[arg(long)]
    error_feedback_bf16: bool,
    /// DiLoCo's outer Nesterov learning rate.
    #[arg(long, default_value_t = OuterSettings::default().diloco_lr)]
    diloco_lr: f32,
    /// DiLoCo's outer Nesterov momentum.
    #[arg(long, default_value_t = OuterSettings::default().diloco_momentum)]
    diloco_momentum: f32,
    /// SparseLoCo's quantizer levels: 4 (2-bit values) or 256 (8-bit).
    #[arg(long, default_value_t = OuterSettings::default().quantizer_bins)]
    quantizer_bins: u16,
    /// Upper bound on each chunk side of the sparse codecs (k counts per chunk).
    #[arg(long, default_value_t = OuterSettings::default().chunk)]
    chunk: usize,
    /// DeMo's momentum decay.
    #[arg(long, default_value_t = OuterSettings::default().demo_decay)]
    demo_decay: f32,
    /// Folder of .txt/.jsonl files to train on [default: the demo corpus scripts/setup installs].
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Where the data, each finished run, the report and the plots go. A rerun with the same
    /// settings reuses the runs already finished there.
    #[arg(long, default_value = "convergence")]
    out: PathBuf,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[arg(long, default_value = "auto")]
    device: String,
    /// Intra-op threads (default: all cores).
    #[arg(long)]
    threads: Option<i32>,
}

pub fn run(command: ExperimentCommand) -> Result<()> {
    match command {
        ExperimentCommand::Convergence(args) => convergence(args),
    }
}

fn convergence(args: ConvergenceArgs) -> Result<()> {
    let settings = settings(&args);
    settings.check().map_err(anyhow::Error::msg)?;
    let methods = methods(&args);
    let preset = Preset::load(&args.preset)?;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as i32));
    templar_engine::set_threads(threads);
    let device = args.device.parse::<DeviceChoice>()?.resolve()?;
    let corpus = args
        .corpus
        .clone()
        .unwrap_or_else(templar_data::demo_corpus_dir);
    let data_dir = files::prepare_data(&args.out, &corpus, &preset)?;
    let data = StudyData::open(
        &data_dir,
        preset.model.vocab_size,
        settings.seed,
        settings.validation_samples,
    )?;
    let study = Study {
        preset: &preset,
        data: &data,
        settings: &settings,
        device,
    };
    eprintln!(
        "{} runs of {} tokens each: {} replicas × {} samples × {} tokens per step, {} steps per replica",
        methods.len(),
        settings.tokens,
        settings.replicas,
        settings.batch_size,
        data.seq_len(),
        study.steps()
    );
    let mut runs = Vec::with_capacity(methods.len());
    for method in methods {
        let key = files::RunKey {
            preset: preset.clone(),
            settings: settings.clone(),
        };
        if let Some(done) = files::finished_run(&args.out, &key, method)? {
            eprintln!(
                "{method}: finished earlier, final BpB {:.4}",
                done.final_bpb
            );
            runs.push(done);
            continue;
        }
        let bar = progress_bar(&method.to_string(), study.steps());
        let result = study
            .run_reporting(method, &|done, _| bar.set_position(done))
            .with_context(|| format!("run {method}"))?;
        bar.finish_and_clear();
        eprintln!(
            "{method}: final BpB {:.4} in {:.0} s",
            result.final_bpb, result.seconds
        );
        files::save_run(&args.out, &key, &result)?;
        runs.push(result);
    }
    let report = Report::new(
        &args.preset,
        preset.model.parameter_count(),
        data.seq_len(),
        &settings,
        runs,
    );
    files::write_report(&args.out, &report)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.to_markdown());
        println!("report, plots and JSON in {}", args.out.display());
    }
    Ok(())
}

fn settings(args: &ConvergenceArgs) -> Settings {
    let quick = Settings::quick();
    Settings {
        replicas: args.replicas,
        tokens: args
            .tokens
            .unwrap_or(if args.sweep { 4_000_000 } else { quick.tokens }),
        batch_size: args.batch_size,
        seed: args.seed,
        eval_points: args.eval_points,
        validation_samples: args.validation_samples,
        outer: OuterSettings {
            diloco_lr: args.diloco_lr,
            diloco_momentum: args.diloco_momentum,
            sparseloco_lr: args.sparseloco_lr,
            error_feedback_beta: args.error_feedback_beta,
            demo_decay: args.demo_decay,
            chunk: args.chunk,
            quantizer_bins: args.quantizer_bins,
            error_feedback_bf16: args.error_feedback_bf16,
        },
    }
}

fn methods(args: &ConvergenceArgs) -> Vec<Method> {
    if args.sweep {
        Method::sweep()
    } else if args.runs.is_empty() {
        Method::quick()
    } else {
        let mut methods = args.runs.clone();
        methods.dedup();
        methods
    }
}

/// Refuses a preset whose data would not fit the corpus it was prepared from.
pub(crate) fn check_seq_len(
    found: usize,
    preset: &Preset,
    data_dir: &std::path::Path,
) -> Result<()> {
    if found != preset.train.seq_len {
        bail!(
            "the data in {} has {found}-token samples and the preset trains on {}: remove that folder \
             to prepare it again",
            data_dir.display(),
            preset.train.seq_len
        );
    }
    Ok(())
}

/// A run's steps on stderr, drawn only when stderr is a terminal.
fn progress_bar(run: &str, steps: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(steps);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{prefix}: training {bar:40} {pos}/{len} steps ({elapsed}, {eta} left)",
    ) {
        bar.set_style(style);
    }
    bar.set_prefix(run.to_string());
    bar
}
