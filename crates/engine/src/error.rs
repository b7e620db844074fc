use std::path::{Path, PathBuf};

/// Engine failures; each names what was wrong and, where it helps, what to do.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("configuration: {0}")]
    Config(String),
    #[error("parameter layout mismatch: {0}")]
    Layout(String),
    #[error("{path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    #[error("batch: {0}")]
    Batch(String),
    #[error("not enough memory: {0}")]
    Memory(String),
    #[error("between ranks: {0}")]
    Distributed(#[from] templar_dist::DistError),
}

impl EngineError {
    pub(crate) fn io(path: &Path, error: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            error,
        }
    }

    pub(crate) fn checkpoint(path: &Path, reason: impl Into<String>) -> Self {
        Self::Checkpoint {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}
