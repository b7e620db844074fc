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
    /// A payload a manifest lists cannot be had as it was aggregated: its miner deleted it (or
    /// its storage does not answer), or it changed.
    #[error(
        "window {window}: the payload of uid {uid} is gone or differs from the manifest ({reason})"
    )]
    PayloadGone {
        window: u64,
        uid: u16,
        reason: String,
    },
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

    /// Whether starting the node again, unchanged, may get past this: a chain or storage
    /// outage, a rank lost, a catch-up source not there yet. Configuration, keys, unreadable
    /// local state and a full disk need an operator first.
    pub fn is_transient(&self) -> bool {
        match self {
            NodeError::Chain(error) => error.is_transient(),
            NodeError::Storage(error) => error.is_transient(),
            NodeError::Ranks(_) | NodeError::CatchUp(_) | NodeError::PayloadGone { .. } => true,
            NodeError::Io { .. } => !self.is_disk_full(),
            NodeError::Config(_)
            | NodeError::Engine(_)
            | NodeError::Data(_)
            | NodeError::Codec(_)
            | NodeError::State { .. }
            | NodeError::Commitment(_)
            | NodeError::NotRegistered(_)
            | NodeError::DiskFull { .. } => false,
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> NodeError {
        NodeError::Io {
            path: path.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_are_transient_and_setup_is_not() {
        let rpc = NodeError::Chain(templar_chain::ChainError::Rpc("connection reset".into()));
        assert!(rpc.is_transient());
        assert!(NodeError::Ranks("rank 1 stopped".into()).is_transient());
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(NodeError::io("/state", io).is_transient());
        let full = std::io::Error::new(std::io::ErrorKind::StorageFull, "no space");
        assert!(!NodeError::io("/state", full).is_transient());
        assert!(!NodeError::NotRegistered("5Grw…".into()).is_transient());
        assert!(!NodeError::Config("bad".into()).is_transient());
        let subnet = templar_chain::ChainError::NetuidRequired("finney".into());
        assert!(!NodeError::Chain(subnet).is_transient());
    }
}
