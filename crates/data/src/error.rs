use std::path::{Path, PathBuf};

/// Everything that can go wrong preparing or reading data; each variant names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "{dir} holds no prepared dataset (no manifest.json): prepare it with \
         `templar data prepare --out {dir}`, or point at the folder that holds one"
    )]
    NotPrepared { dir: PathBuf },
    #[error("cannot load tokenizer {path}: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    #[error("tokenizer failed on a document: {reason}")]
    Encode { reason: String },
    #[error(
        "{path} line {line}: {reason} (each line must be a JSON object with a string field \"text\")"
    )]
    BadJsonLine {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{path} is not valid UTF-8 text: {reason}")]
    NotUtf8 { path: PathBuf, reason: String },
    #[error("no .txt or .jsonl files under {dir}; point --input at a folder of text")]
    NoInput { dir: PathBuf },
    #[error(
        "the {split} split is empty: the input has too little text for --seq-len {seq_len}{hint}"
    )]
    EmptySplit {
        split: &'static str,
        seq_len: usize,
        hint: &'static str,
    },
    #[error("invalid option: {0}")]
    InvalidOption(String),
    #[error("{path}: bad manifest: {reason}; re-run `templar data prepare`")]
    BadManifest { path: PathBuf, reason: String },
    #[error(
        "{path}: expected {expected} bytes, found {found}; the dataset is incomplete or changed, re-run `templar data prepare`"
    )]
    ShardSize {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("{path}: content hash does not match the manifest; re-run `templar data prepare`")]
    ShardHash { path: PathBuf },
    #[error("sample {index} is out of range: the {split} split has {len} samples")]
    SampleOutOfRange {
        split: &'static str,
        index: u64,
        len: u64,
    },
}

impl DataError {
    pub(crate) fn io(path: &Path, error: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            error,
        }
    }
}
