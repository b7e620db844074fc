//! What can stop a node. Bad peers are never errors (they are outcomes with reasons); these are
//! the node's own failures: configuration, chain, storage, engine, data and local state.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Chain(#[from] templar_chain::ChainError),
    #[error(transparent)]
    Storage(#[from] templar_storage::StorageError),
    #[error(transparent)]
    Engine(#[from] templar_engine::EngineError),
    #[error(transparent)]
    Data(#[from] templar_data::DataError),
    #[error("codec: {0}")]
    Codec(String),
    #[error("between the node's ranks: {0}")]
    Ranks(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "local state in {path} is unreadable: {reason}; move it aside to start this node afresh"
    )]
    State { path: PathBuf, reason: String },
    #[error("{0}")]
    Commitment(String),
    #[error(
        "the hotkey {0} is not registered on this subnet: register it first (templar chain register)"
    )]
    NotRegistered(String),
    #[error("catch-up failed: {0}")]
    CatchUp(String),
    #[error(
        "the disk is full ({detail}): free space on the disk holding {path} and start the node \
         again; {kept}"
    )]
    DiskFull {
        path: PathBuf,
        detail: String,
        kept: String,
    },
}

impl NodeError {
    /// Whether an I/O error somewhere in the chain of causes is "no space left on device".
    pub fn is_disk_full(&self) -> bool {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(error) = cause {
            if let Some(io) = error.downcast_ref::<std::io::Error>()
                && io.kind() == std::io::ErrorKind::StorageFull
            {
                return true;
            }
            cause = error.source();
        }
        false
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> NodeError {
        NodeError::Io {
            path: path.into(),
            source,
        }
    }
}
