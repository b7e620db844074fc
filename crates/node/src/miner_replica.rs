//! The replica a miner trains: one process's, or a ZeRO-2 rank's, holding the whole model
//! ([`Replica`]); or a fully sharded rank's, holding its shards only ([`FullyShardedReplica`]).
//! The window is the same for both; only where the model lives, and how a state is saved,
//! differ.

use std::path::Path;

use templar_codec::{Payload, Schema};
use templar_engine::{Batch, StepStats};

use crate::config::NetworkConfig;
use crate::error::NodeError;
use crate::fingerprint::Fingerprint;
use crate::ranks::{FullyShardedReplica, TensorOwner};
use crate::replica::{LiveWeights, NetworkReplica, Replica};

pub enum MinerReplica {
    /// The whole model on this process: one process, or a rank of a ZeRO-2 node.
    Whole(Replica),
    /// One rank's shards of a fully sharded node.
    FullySharded(FullyShardedReplica),
}

impl MinerReplica {
    pub fn schema(&self) -> &Schema {
        match self {
            MinerReplica::Whole(replica) => &replica.schema,
            MinerReplica::FullySharded(replica) => &replica.schema,
        }
    }

    /// Which tensors this rank compresses in the outer step.
    pub fn owner(&self) -> TensorOwner {
        match self {
            MinerReplica::Whole(replica) => replica.owner(),
            MinerReplica::FullySharded(replica) => replica.owner(),
        }
    }

    pub fn train_step(&mut self, batch: &Batch) -> Result<StepStats, NodeError> {
        match self {
            MinerReplica::Whole(replica) => replica.train_step(batch),
            MinerReplica::FullySharded(replica) => replica.train_step(batch),
        }
    }

    /// Puts the inner learning-rate schedule at `position` for the next step, on every rank.
    pub fn set_schedule_step(&mut self, position: u64) {
        match self {
            MinerReplica::Whole(replica) => replica.set_schedule_step(position),
            MinerReplica::FullySharded(replica) => replica.set_schedule_step(position),
        }
    }

    /// The outer step; the miner runs on rank 0, which gets the node's payload.
    pub fn outer_step(&mut self, error_feedback: &mut [Vec<f32>]) -> Result<Payload, NodeError> {
        match self {
            MinerReplica::Whole(replica) => replica.outer_step(error_feedback),
            MinerReplica::FullySharded(replica) => {
                replica.outer_step(error_feedback)?.ok_or_else(|| {
                    NodeError::Ranks("only rank 0 takes the outer step for the node".into())
                })
            }
        }
    }

    /// Whether this replica can train on while an aggregate is applied under it
    /// ([`LiveWeights::Carried`]): one process holding the whole model.
    pub fn carries_live_weights(&self) -> bool {
        matches!(self, MinerReplica::Whole(replica) if !replica.is_ranked())
    }

    /// [`NetworkReplica::apply_aggregate`], saying what becomes of the live weights.
    pub fn apply_aggregate_to(
        &mut self,
        payloads: &[&Payload],
        live: LiveWeights,
    ) -> Result<(), NodeError> {
        match (self, live) {
            (MinerReplica::Whole(replica), _) => replica.apply_aggregate_to(payloads, live),
            (MinerReplica::FullySharded(replica), LiveWeights::Reset) => {
                replica.apply_aggregate(payloads)
            }
            (MinerReplica::FullySharded(_), LiveWeights::Carried) => Err(NodeError::Config(
                "a fully sharded node applies an aggregate between windows only".into(),
            )),
        }
    }

    /// Live weights `+= scale · own` (see [`Replica::add_to_live`]).
    pub fn add_to_live(&mut self, own: &Payload, scale: f32) -> Result<(), NodeError> {
        match self {
            MinerReplica::Whole(replica) => replica.add_to_live(own, scale),
            MinerReplica::FullySharded(_) => Err(NodeError::Config(
                "a fully sharded node never trains on across an apply".into(),
            )),
        }
    }

    /// Live weights back to the base: the steps taken since the outer step are dropped.
    pub fn restore(&mut self) -> Result<(), NodeError> {
        match self {
            MinerReplica::Whole(replica) => replica.restore(),
            MinerReplica::FullySharded(_) => Err(NodeError::Config(
                "a fully sharded node never trains on across an apply: nothing to restore".into(),
            )),
        }
    }

    /// Back to the network's initial model.
    pub fn reset(&mut self, config: &NetworkConfig) -> Result<(), NodeError> {
        match self {
            MinerReplica::Whole(replica) => replica.reset(config),
            MinerReplica::FullySharded(replica) => replica.reset(),
        }
    }

    /// On rank 0 of a node over ranks, once it has finished cleanly: the others stop.
    pub fn release_ranks(&mut self) -> Result<(), NodeError> {
        match self {
            MinerReplica::Whole(replica) => replica.release_ranks(),
            MinerReplica::FullySharded(replica) => replica.release(),
        }
    }

    /// The whole replica, for what only one holding the whole model does (the test
    /// behaviours); a clear refusal on a fully sharded node.
    pub fn whole(&self) -> Result<&Replica, NodeError> {
        match self {
            MinerReplica::Whole(replica) => Ok(replica),
            MinerReplica::FullySharded(_) => Err(NodeError::Config(
                "a fully sharded miner holds no whole model: this needs one process".into(),
            )),
        }
    }
}

impl NetworkReplica for MinerReplica {
    fn load_weights(&mut self, dir: &Path) -> Result<(), NodeError> {
        match self {
            MinerReplica::Whole(replica) => replica.load_weights(dir),
            MinerReplica::FullySharded(replica) => replica.load_weights(dir),
        }
    }

    fn apply_aggregate(&mut self, payloads: &[&Payload]) -> Result<(), NodeError> {
        match self {
            MinerReplica::Whole(replica) => replica.apply_aggregate(payloads),
            MinerReplica::FullySharded(replica) => replica.apply_aggregate(payloads),
        }
    }

    fn fingerprint(&self) -> Fingerprint {
        match self {
            MinerReplica::Whole(replica) => replica.fingerprint(),
            MinerReplica::FullySharded(replica) => replica.fingerprint(),
        }
    }

    fn revert_last_apply(&mut self) -> Result<bool, NodeError> {
        match self {
            MinerReplica::Whole(replica) => replica.revert_last_apply(),
            MinerReplica::FullySharded(replica) => replica.revert_last_apply(),
        }
    }
}
