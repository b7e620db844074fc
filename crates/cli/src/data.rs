//! `templar data …`: preparing training data.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use templar_data::{PrepareOptions, PrepareOutcome, TokenizerSpec, prepare};

use crate::output::Format;

#[derive(Subcommand)]
pub enum DataCommand {
    /// Tokenize .txt / .jsonl text into fixed-length sample shards with a validation split and a manifest.
    Prepare(PrepareArgs),
}

#[derive(Args)]
pub struct PrepareArgs {
    /// Folder of .txt files (one document each) and .jsonl files (one {"text": ...} document per line).
    #[arg(long)]
    input: PathBuf,
    /// bytes, gpt2, cl100k, or the path of a Hugging Face tokenizer.json.
    #[arg(long, default_value = "bytes")]
    tokenizer: TokenizerSpec,
    /// Tokens per sample.
    #[arg(long)]
    seq_len: usize,
    /// Output folder (created; replaced only if it holds an earlier preparation).
    #[arg(long)]
    out: PathBuf,
    /// Share of documents held out for validation, chosen by content hash.
    #[arg(long, default_value_t = 0.02)]
    validation_fraction: f64,
    /// Samples per shard file.
    #[arg(long, default_value_t = 1 << 18)]
    shard_samples: u64,
    #[command(flatten)]
    format: Format,
}

pub fn run(command: DataCommand) -> Result<()> {
    match command {
        DataCommand::Prepare(args) => run_prepare(args),
    }
}

fn run_prepare(args: PrepareArgs) -> Result<()> {
    let mut options =
        PrepareOptions::new(args.input, args.out.clone(), args.tokenizer, args.seq_len);
    options.validation_fraction = args.validation_fraction;
    options.shard_samples = args.shard_samples;
    options.progress = true;
    let (outcome, verb, manifest) = match prepare(&options)? {
        PrepareOutcome::Prepared(m) => ("prepared", "prepared", m),
        PrepareOutcome::UpToDate(m) => ("up_to_date", "already up to date", m),
    };
    let value = serde_json::json!({
        "out": args.out.display().to_string(),
        "outcome": outcome,
        "documents": manifest.documents,
        "train_samples": manifest.train.samples,
        "validation_samples": manifest.validation.samples,
        "seq_len": manifest.seq_len,
        "tokenizer": manifest.tokenizer,
        "dropped_tokens": manifest.dropped_tokens,
        "content_hash": manifest.content_hash,
    });
    args.format.print(&value, || {
        format!(
            "{}: {verb} — {} documents, {} train + {} validation samples of {} {} tokens ({} dropped), content {}",
            args.out.display(),
            manifest.documents,
            manifest.train.samples,
            manifest.validation.samples,
            manifest.seq_len,
            manifest.tokenizer,
            manifest.dropped_tokens,
            &manifest.content_hash[..16]
        )
    })
}
