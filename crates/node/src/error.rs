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
}

impl NodeError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> NodeError {
        NodeError::Io {
            path: path.into(),
            source,
        }
    }
}
