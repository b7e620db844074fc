//! The dataset manifest: what a prepared folder holds and how it was made. Readers trust nothing else.
//!
//! Layout of a prepared folder:
//! ```text
//! manifest.json                    this structure, written last
//! train-00000.tokens               samples back to back, `seq_len` little-endian u16/u32 tokens each
//! train-00000.bytes                one little-endian u32 per sample: text bytes behind its target tokens
//! validation-00000.tokens / .bytes the held-out split, same format
//! ```

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::DataError;

pub const MANIFEST_FILE: &str = "manifest.json";
pub const FORMAT_VERSION: u32 = 1;

/// How wide each stored token is: u16 when the vocabulary fits, else u32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenWidth {
    U16,
    U32,
}

impl TokenWidth {
    pub fn for_vocab(vocab_size: u32) -> Self {
        if vocab_size <= 1 << 16 {
            Self::U16
        } else {
            Self::U32
        }
    }

    pub fn bytes(self) -> usize {
        match self {
            Self::U16 => 2,
            Self::U32 => 4,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    /// `bytes`, `gpt2`, `cl100k` or `hf:<blake3 of tokenizer.json>`.
    pub tokenizer: String,
    pub vocab_size: u32,
    pub end_of_text: u32,
    pub token_width: TokenWidth,
    /// Tokens per sample. A sample trains `seq_len - 1` predictions: token i+1 from tokens 0..=i.
    pub seq_len: usize,
    pub validation_fraction: f64,
    /// blake3 over the preparation options and every input file; equal hashes mean re-running is a no-op.
    pub content_hash: String,
    pub documents: u64,
    pub text_bytes: u64,
    /// Tokens at the end of each split that did not fill a whole sample.
    pub dropped_tokens: u64,
    pub train: SplitManifest,
    pub validation: SplitManifest,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitManifest {
    pub samples: u64,
    pub tokens: u64,
    /// Sum over samples of the text bytes behind their target tokens (the denominator of bits per byte).
    pub target_bytes: u64,
    pub shards: Vec<ShardManifest>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardManifest {
    pub tokens_file: String,
    pub bytes_file: String,
    pub samples: u64,
    pub tokens_blake3: String,
    pub bytes_blake3: String,
}

impl Manifest {
    pub fn read(dir: &Path) -> Result<Self, DataError> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => DataError::NotPrepared {
                dir: dir.to_path_buf(),
            },
            _ => DataError::io(&path, e),
        })?;
        let manifest: Self = serde_json::from_str(&text).map_err(|e| DataError::BadManifest {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if manifest.format_version != FORMAT_VERSION {
            return Err(DataError::BadManifest {
                path,
                reason: format!(
                    "format version {} (this build reads {FORMAT_VERSION})",
                    manifest.format_version
                ),
            });
        }
        Ok(manifest)
    }
}
