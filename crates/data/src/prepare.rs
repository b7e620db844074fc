//! `templar data prepare`: text files → fixed-length token samples in shards, a held-out split and a
//! manifest. The output folder is built beside the target and swapped in whole, so a crash never
//! leaves a half-written dataset behind a valid manifest.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;

use crate::corpus::{InputFile, input_files, read_documents};
use crate::error::DataError;
use crate::manifest::{
    FORMAT_VERSION, MANIFEST_FILE, Manifest, ShardManifest, SplitManifest, TokenWidth,
};
use crate::shard::{Dataset, Split};
use crate::tokenizer::{Encoded, Tokenizer, TokenizerSpec};

#[derive(Debug, Clone)]
pub struct PrepareOptions {
    pub input: PathBuf,
    pub out: PathBuf,
    pub tokenizer: TokenizerSpec,
    /// Tokens per sample.
    pub seq_len: usize,
    /// Share of documents (chosen by content hash) held out for validation.
    pub validation_fraction: f64,
    /// Samples per shard file.
    pub shard_samples: u64,
    pub progress: bool,
}

impl PrepareOptions {
    pub fn new(input: PathBuf, out: PathBuf, tokenizer: TokenizerSpec, seq_len: usize) -> Self {
        Self {
            input,
            out,
            tokenizer,
            seq_len,
            validation_fraction: 0.02,
            shard_samples: 1 << 18,
            progress: false,
        }
    }

    fn check(&self) -> Result<(), DataError> {
        if self.seq_len < 2 {
            return Err(DataError::InvalidOption(format!(
                "--seq-len must be at least 2, got {}",
                self.seq_len
            )));
        }
        if !(0.0..1.0).contains(&self.validation_fraction) {
            return Err(DataError::InvalidOption(format!(
                "--validation-fraction must be in [0, 1), got {}",
                self.validation_fraction
            )));
        }
        if self.shard_samples == 0 {
            return Err(DataError::InvalidOption(
                "--shard-samples must be positive".into(),
            ));
        }
        Ok(())
    }
}

#[derive(Debug)]
pub enum PrepareOutcome {
    Prepared(Manifest),
    /// The folder already holds this exact preparation; nothing was written.
    UpToDate(Manifest),
}

/// Text per tokenization batch: large enough to keep every core busy, small enough to bound memory.
const BATCH_TEXT_BYTES: usize = 8 << 20;

pub fn prepare(options: &PrepareOptions) -> Result<PrepareOutcome, DataError> {
    options.check()?;
    let files = input_files(&options.input)?;
    let tokenizer = Tokenizer::load(&options.tokenizer)?;
    let content_hash = content_hash(options, &tokenizer, &files)?;
    if let Some(manifest) = up_to_date(&options.out, &content_hash) {
        return Ok(PrepareOutcome::UpToDate(manifest));
    }
    refuse_foreign_folder(&options.out)?;

    let staging = sibling(&options.out, "staging")?;
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging).map_err(|e| DataError::io(&staging, e))?;
    let width = TokenWidth::for_vocab(tokenizer.vocab_size());
    let mut train = SplitWriter::new(&staging, Split::Train, options, width);
    let mut validation = SplitWriter::new(&staging, Split::Validation, options, width);

    let total_bytes = files
        .iter()
        .map(|f| fs::metadata(&f.path).map_or(0, |m| m.len()))
        .sum();
    let progress = progress_bar(options.progress, total_bytes);
    let (mut documents, mut text_bytes) = (0u64, 0u64);
    for batch in batches(&files) {
        let batch = batch?;
        let encoded: Vec<Result<Encoded, DataError>> = batch
            .texts
            .par_iter()
            .map(|t| tokenizer.encode(t))
            .collect();
        for (text, encoded) in batch.texts.iter().zip(encoded) {
            let split = if is_validation(text, options.validation_fraction) {
                &mut validation
            } else {
                &mut train
            };
            split.push_document(&encoded?, tokenizer.end_of_text())?;
            documents += 1;
            text_bytes += text.len() as u64;
        }
        progress.inc(batch.file_bytes);
    }
    progress.finish_and_clear();

    let (train, train_dropped) = train.finish()?;
    let (validation, validation_dropped) = validation.finish()?;
    check_not_empty(&train, &validation, options)?;
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        tokenizer: tokenizer.id().to_string(),
        vocab_size: tokenizer.vocab_size(),
        end_of_text: tokenizer.end_of_text(),
        token_width: width,
        seq_len: options.seq_len,
        validation_fraction: options.validation_fraction,
        content_hash,
        documents,
        text_bytes,
        dropped_tokens: train_dropped + validation_dropped,
        train,
        validation,
    };
    write_manifest(&staging, &manifest)?;
    swap_into_place(&staging, &options.out)?;
    Ok(PrepareOutcome::Prepared(manifest))
}

fn check_not_empty(
    train: &SplitManifest,
    validation: &SplitManifest,
    options: &PrepareOptions,
) -> Result<(), DataError> {
    if train.samples == 0 {
        return Err(DataError::EmptySplit {
            split: "train",
            seq_len: options.seq_len,
            hint: "; add text or lower --seq-len",
        });
    }
    if options.validation_fraction > 0.0 && validation.samples == 0 {
        return Err(DataError::EmptySplit {
            split: "validation",
            seq_len: options.seq_len,
            hint: "; raise --validation-fraction or add more documents",
        });
    }
    Ok(())
}

/// A document goes to validation when its content hash, read as a fraction of 2^64, is below the
/// requested share: stable under reordering or adding other files.
fn is_validation(text: &str, fraction: f64) -> bool {
    let hash = blake3::hash(text.as_bytes());
    let mut head = [0u8; 8];
    head.copy_from_slice(&hash.as_bytes()[..8]);
    (u64::from_le_bytes(head) as f64) < fraction * 2f64.powi(64)
}

fn content_hash(
    options: &PrepareOptions,
    tokenizer: &Tokenizer,
    files: &[InputFile],
) -> Result<String, DataError> {
    let mut hasher = blake3::Hasher::new_derive_key("templar data prepare v1");
    let header = format!(
        "format={FORMAT_VERSION};tokenizer={};seq_len={};validation={};shard_samples={}",
        tokenizer.id(),
        options.seq_len,
        options.validation_fraction,
        options.shard_samples
    );
    hasher.update(&(header.len() as u64).to_le_bytes());
    hasher.update(header.as_bytes());
    for file in files {
        let bytes = fs::read(&file.path).map_err(|e| DataError::io(&file.path, e))?;
        hasher.update(&(file.relative.len() as u64).to_le_bytes());
        hasher.update(file.relative.as_bytes());
        hasher.update(blake3::hash(&bytes).as_bytes());
    }
    Ok(hasher.finalize().to_hex().to_string())
}

fn up_to_date(out: &Path, content_hash: &str) -> Option<Manifest> {
    let dataset = Dataset::open(out).ok()?;
    (dataset.manifest.content_hash == content_hash).then_some(dataset.manifest)
}

/// Replacing a folder deletes what was in it: only do that to a folder we prepared before.
fn refuse_foreign_folder(out: &Path) -> Result<(), DataError> {
    let Ok(mut entries) = fs::read_dir(out) else {
        return Ok(());
    };
    if entries.next().is_some() && !out.join(MANIFEST_FILE).exists() {
        return Err(DataError::InvalidOption(format!(
            "--out {} is a non-empty folder that is not a prepared dataset; choose a new or empty folder",
            out.display()
        )));
    }
    Ok(())
}

fn sibling(out: &Path, what: &str) -> Result<PathBuf, DataError> {
    let name = out.file_name().ok_or_else(|| {
        DataError::InvalidOption(format!("--out {} has no folder name", out.display()))
    })?;
    Ok(out.with_file_name(format!(
        ".{}.{what}-{}",
        name.to_string_lossy(),
        std::process::id()
    )))
}

fn swap_into_place(staging: &Path, out: &Path) -> Result<(), DataError> {
    let old = sibling(out, "old")?;
    if out.exists() {
        fs::rename(out, &old).map_err(|e| DataError::io(out, e))?;
    }
    fs::rename(staging, out).map_err(|e| DataError::io(out, e))?;
    if old.exists() {
        fs::remove_dir_all(&old).map_err(|e| DataError::io(&old, e))?;
    }
    Ok(())
}

fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), DataError> {
    let path = dir.join(MANIFEST_FILE);
    let json = serde_json::to_string_pretty(manifest).map_err(|e| DataError::BadManifest {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    fs::write(&path, json).map_err(|e| DataError::io(&path, e))
}

fn progress_bar(enabled: bool, total: u64) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(
        "tokenizing {bar:40} {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
    ) {
        bar.set_style(style);
    }
    bar
}

struct Batch {
    texts: Vec<String>,
    file_bytes: u64,
}

/// Groups documents into batches of about [`BATCH_TEXT_BYTES`], in file order.
fn batches(files: &[InputFile]) -> impl Iterator<Item = Result<Batch, DataError>> + '_ {
    let mut next_file = 0;
    std::iter::from_fn(move || {
        let mut batch = Batch {
            texts: Vec::new(),
            file_bytes: 0,
        };
        let mut size = 0;
        while next_file < files.len() && size < BATCH_TEXT_BYTES {
            let file = &files[next_file];
            next_file += 1;
            match read_documents(file) {
                Ok(texts) => {
                    let bytes: usize = texts.iter().map(String::len).sum();
                    size += bytes;
                    batch.file_bytes += fs::metadata(&file.path).map_or(bytes as u64, |m| m.len());
                    batch.texts.extend(texts);
                }
                Err(error) => return Some(Err(error)),
            }
        }
        (size > 0 || batch.file_bytes > 0).then_some(Ok(batch))
    })
}

/// Cuts one split's token stream into samples and writes them to shards.
struct SplitWriter {
    dir: PathBuf,
    split: Split,
    seq_len: usize,
    width: TokenWidth,
    shard_samples: u64,
    pending_tokens: Vec<u32>,
    pending_bytes: Vec<u32>,
    shard: Option<ShardWriter>,
    manifest: SplitManifest,
}

impl SplitWriter {
    fn new(dir: &Path, split: Split, options: &PrepareOptions, width: TokenWidth) -> Self {
        Self {
            dir: dir.to_path_buf(),
            split,
            seq_len: options.seq_len,
            width,
            shard_samples: options.shard_samples,
            pending_tokens: Vec::new(),
            pending_bytes: Vec::new(),
            shard: None,
            manifest: SplitManifest {
                samples: 0,
                tokens: 0,
                target_bytes: 0,
                shards: Vec::new(),
            },
        }
    }

    fn push_document(&mut self, encoded: &Encoded, end_of_text: u32) -> Result<(), DataError> {
        self.pending_tokens.extend_from_slice(&encoded.tokens);
        self.pending_tokens.push(end_of_text);
        self.pending_bytes.extend_from_slice(&encoded.byte_counts);
        self.pending_bytes.push(0);
        let whole = self.pending_tokens.len() / self.seq_len * self.seq_len;
        for start in (0..whole).step_by(self.seq_len) {
            let end = start + self.seq_len;
            // Token 0 of a sample is only context; the bytes of tokens 1.. are what the loss predicts.
            let target_bytes: u32 = self.pending_bytes[start + 1..end].iter().sum();
            self.write_sample(start, target_bytes)?;
        }
        self.pending_tokens.drain(..whole);
        self.pending_bytes.drain(..whole);
        Ok(())
    }

    fn write_sample(&mut self, start: usize, target_bytes: u32) -> Result<(), DataError> {
        if self
            .shard
            .as_ref()
            .is_none_or(|s| s.samples == self.shard_samples)
        {
            self.close_shard()?;
            let index = self.manifest.shards.len();
            self.shard = Some(ShardWriter::create(&self.dir, self.split, index)?);
        }
        let tokens = &self.pending_tokens[start..start + self.seq_len];
        let width = self.width;
        let shard = self
            .shard
            .as_mut()
            .ok_or_else(|| DataError::InvalidOption("no open shard".into()))?;
        shard.write_sample(tokens, target_bytes, width)?;
        self.manifest.samples += 1;
        self.manifest.tokens += self.seq_len as u64;
        self.manifest.target_bytes += u64::from(target_bytes);
        Ok(())
    }

    fn close_shard(&mut self) -> Result<(), DataError> {
        if let Some(shard) = self.shard.take() {
            self.manifest.shards.push(shard.finish()?);
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(SplitManifest, u64), DataError> {
        self.close_shard()?;
        Ok((self.manifest, self.pending_tokens.len() as u64))
    }
}

struct ShardWriter {
    tokens: HashedFile,
    bytes: HashedFile,
    samples: u64,
}

impl ShardWriter {
    fn create(dir: &Path, split: Split, index: usize) -> Result<Self, DataError> {
        let stem = format!("{}-{index:05}", split.name());
        Ok(Self {
            tokens: HashedFile::create(dir, format!("{stem}.tokens"))?,
            bytes: HashedFile::create(dir, format!("{stem}.bytes"))?,
            samples: 0,
        })
    }

    fn write_sample(
        &mut self,
        tokens: &[u32],
        target_bytes: u32,
        width: TokenWidth,
    ) -> Result<(), DataError> {
        let mut raw = Vec::with_capacity(tokens.len() * width.bytes());
        for &token in tokens {
            match width {
                // Tokens are below the vocabulary size, which selected this width.
                TokenWidth::U16 => raw.extend_from_slice(&(token as u16).to_le_bytes()),
                TokenWidth::U32 => raw.extend_from_slice(&token.to_le_bytes()),
            }
        }
        self.tokens.write(&raw)?;
        self.bytes.write(&target_bytes.to_le_bytes())?;
        self.samples += 1;
        Ok(())
    }

    fn finish(self) -> Result<ShardManifest, DataError> {
        let (tokens_file, tokens_blake3) = self.tokens.finish()?;
        let (bytes_file, bytes_blake3) = self.bytes.finish()?;
        Ok(ShardManifest {
            tokens_file,
            bytes_file,
            samples: self.samples,
            tokens_blake3,
            bytes_blake3,
        })
    }
}

struct HashedFile {
    name: String,
    path: PathBuf,
    writer: BufWriter<fs::File>,
    hasher: blake3::Hasher,
}

impl HashedFile {
    fn create(dir: &Path, name: String) -> Result<Self, DataError> {
        let path = dir.join(&name);
        let file = fs::File::create(&path).map_err(|e| DataError::io(&path, e))?;
        Ok(Self {
            name,
            path,
            writer: BufWriter::with_capacity(1 << 20, file),
            hasher: blake3::Hasher::new(),
        })
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), DataError> {
        self.hasher.update(bytes);
        self.writer
            .write_all(bytes)
            .map_err(|e| DataError::io(&self.path, e))
    }

    fn finish(self) -> Result<(String, String), DataError> {
        let file = self
            .writer
            .into_inner()
            .map_err(|e| DataError::io(&self.path, e.into_error()))?;
        file.sync_all().map_err(|e| DataError::io(&self.path, e))?;
        Ok((self.name, self.hasher.finalize().to_hex().to_string()))
    }
}
