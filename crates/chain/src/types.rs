//! What a chain tells a node, in Bittensor's terms.

use serde::{Deserialize, Serialize};
use templar_protocol::AccountId;

/// 1 TAO = 10⁹ rao; balances and stake are counted in rao.
pub const RAO_PER_TAO: u64 = 1_000_000_000;

/// Formats rao as TAO with nine decimals.
pub fn tao(rao: u64) -> String {
    format!("{}.{:09}", rao / RAO_PER_TAO, rao % RAO_PER_TAO)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct BlockInfo {
    pub number: u64,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
}

/// A subnet's rules (a subset of Bittensor's hyperparameters, same names).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Hyperparameters {
    /// Blocks between epochs.
    pub tempo: u64,
    /// Blocks a uid must wait between two `set_weights` (counted from its registration for the first).
    pub weights_rate_limit: u64,
    /// A uid whose weights are older than this many blocks is inactive in an epoch.
    pub activity_cutoff: u64,
    pub max_uids: u16,
    /// Validator permits go to at most this many uids, by stake.
    pub max_validators: u16,
    /// Stake (rao) needed for a validator permit.
    pub min_validator_stake: u64,
    /// Registration cost (rao), burned from the coldkey.
    pub burn: u64,
    /// Blocks after registration during which a uid cannot be replaced.
    pub immunity_period: u64,
    pub kappa: f64,
    pub bonds_moving_average: f64,
    /// Rao emitted to the subnet per block, paid out at each epoch.
    pub emission_per_block: u64,
    /// `set_weights` calls must carry at least this version key.
    pub weights_version: u64,
    /// Weights are committed as a hash and revealed later (Bittensor's commit-reveal).
    pub commit_reveal_weights_enabled: bool,
    /// Epochs from a commit to its reveal (subtensor's `RevealPeriodEpochs`).
    pub commit_reveal_period: u64,
}

impl Default for Hyperparameters {
    fn default() -> Self {
        Hyperparameters {
            tempo: 360,
            weights_rate_limit: 100,
            activity_cutoff: 5000,
            max_uids: 256,
            max_validators: 64,
            min_validator_stake: 0,
            burn: RAO_PER_TAO,
            immunity_period: 5000,
            kappa: 0.5,
            bonds_moving_average: 0.9,
            emission_per_block: RAO_PER_TAO,
            weights_version: 0,
            commit_reveal_weights_enabled: false,
            commit_reveal_period: 1,
        }
    }
}

/// One uid of the subnet.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Neuron {
    pub uid: u16,
    pub hotkey: AccountId,
    pub coldkey: AccountId,
    /// Total stake on the hotkey, rao.
    pub stake: u64,
    pub validator_permit: bool,
    pub rank: f64,
    pub trust: f64,
    pub consensus: f64,
    pub incentive: f64,
    pub dividends: f64,
    pub validator_trust: f64,
    /// Rao earned at the last epoch.
    pub emission: u64,
    pub registered_at: u64,
    pub last_update: u64,
    /// Raw bytes committed by the hotkey (for example its storage location).
    pub commitment: Option<Vec<u8>>,
}

/// The subnet as of one block.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Metagraph {
    pub netuid: u16,
    pub block: u64,
    pub neurons: Vec<Neuron>,
}

impl Metagraph {
    pub fn uid_of(&self, hotkey: &AccountId) -> Option<u16> {
        self.neurons
            .iter()
            .find(|n| &n.hotkey == hotkey)
            .map(|n| n.uid)
    }

    pub fn neuron(&self, uid: u16) -> Option<&Neuron> {
        self.neurons.iter().find(|n| n.uid == uid)
    }

    /// The uid a registration at `block` replaces once the subnet is full: the lowest emission
    /// among uids past their immunity period, ties to the lowest uid (LocalChain's rule; see
    /// `LocalChain`'s registration). Anyone can compute it from public state, which is why a
    /// validator must not let a uid's record outlive its hotkey.
    pub fn next_to_prune(&self, immunity_period: u64, block: u64) -> Option<u16> {
        let cutoff = block.saturating_sub(immunity_period);
        self.neurons
            .iter()
            .filter(|n| n.registered_at < cutoff)
            .min_by_key(|n| (n.emission, n.uid))
            .map(|n| n.uid)
    }
}

/// Commitments are at most this many raw bytes, as on Bittensor.
pub const MAX_COMMITMENT_LEN: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("{0} is not registered on this subnet: register it first (templar chain register)")]
    NotRegistered(AccountId),
    #[error("{0} is already registered as uid {1}")]
    AlreadyRegistered(AccountId, u16),
    #[error("{account} has {available} rao, {needed} needed")]
    InsufficientBalance {
        account: AccountId,
        needed: u64,
        available: u64,
    },
    #[error("{account} has only {available} rao staked on {hotkey}, {needed} requested")]
    InsufficientStake {
        account: AccountId,
        hotkey: AccountId,
        needed: u64,
        available: u64,
    },
    #[error(
        "setting weights too fast: uid {uid} last set them at block {last_update}, the rate limit allows the next call at block {next_allowed}"
    )]
    WeightsTooFast {
        uid: u16,
        last_update: u64,
        next_allowed: u64,
    },
    #[error("invalid weights: {0}")]
    BadWeights(String),
    #[error(
        "this subnet takes weights by commit-reveal only: commit them and reveal them later (a templar validator does both)"
    )]
    CommitRevealEnabled,
    #[error("this subnet takes weights directly (set_weights); commit-reveal is not enabled")]
    CommitRevealDisabled,
    #[error(
        "uid {0} revealed weights that match none of its commits: the uids, weights, salt or version key differ from what was committed"
    )]
    NoWeightCommit(u16),
    #[error(
        "uid {uid}'s weights commit of block {committed_at} can be revealed from block {due_from}, not yet"
    )]
    RevealTooEarly {
        uid: u16,
        committed_at: u64,
        due_from: u64,
    },
    #[error(
        "uid {uid}'s weights commit of block {committed_at} expired: its reveal period is over"
    )]
    WeightCommitExpired { uid: u16, committed_at: u64 },
    #[error(
        "uid {0} has too many weight commits awaiting their reveal; reveal them before committing more"
    )]
    TooManyUnrevealedCommits(u16),
    #[error("cannot draw a secret salt for a weights commit from the operating system: {0}")]
    NoRandomness(String),
    #[error("uid {0} has no validator permit (not enough stake to be a validator)")]
    NoValidatorPermit(u16),
    #[error("commitment is {0} bytes; at most {MAX_COMMITMENT_LEN} are allowed")]
    CommitmentTooLong(usize),
    #[error(
        "the extrinsic's signature does not verify for signer {0}: it was not signed by that key"
    )]
    BadSignature(AccountId),
    #[error("stale or replayed extrinsic from {signer}: nonce {got}, expected {expected}")]
    BadNonce {
        signer: AccountId,
        expected: u64,
        got: u64,
    },
    #[error("the subnet is full ({0} uids) and every uid is still immune")]
    SubnetFull(u16),
    #[error("amount must be positive")]
    ZeroAmount,
    #[error("no chain at {0}: create one with `templar chain init`")]
    NotInitialized(String),
    #[error("a chain already exists at {0}")]
    AlreadyExists(String),
    #[error("block {block} does not exist yet (the head is block {head})")]
    FutureBlock { block: u64, head: u64 },
    #[error("chain database: {0}")]
    Database(String),
    #[error("chain state is corrupt: {0}")]
    Corrupt(String),
    #[error("chain connection: {0}")]
    Rpc(String),
    #[error("the chain refused {call}: {error}{}", if reason.is_empty() { String::new() } else { format!(" ({reason})") })]
    Refused {
        call: String,
        error: String,
        reason: String,
    },
    #[error("the chain's runtime does not support what templar needs: {0}")]
    Unsupported(String),
    #[error("could not read the chain's answer: {0}")]
    Decode(String),
    #[error("{0} is a subtensor: say which subnet with --netuid")]
    NetuidRequired(String),
    #[error("{chain} has no subnet {netuid}: check --netuid")]
    NoSubnet { chain: String, netuid: u16 },
    #[error("keeping the pending weight reveals in {path}: {reason}")]
    PendingReveals {
        path: std::path::PathBuf,
        reason: String,
    },
}

impl ChainError {
    /// Whether the same call may succeed later with nothing changed: a lost connection, a busy
    /// database, a block or nonce not there yet, a rate limit. The others need an operator
    /// (a key to register, a subnet to name, a balance to fund).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ChainError::Rpc(_)
                | ChainError::Database(_)
                | ChainError::FutureBlock { .. }
                | ChainError::BadNonce { .. }
                | ChainError::WeightsTooFast { .. }
                | ChainError::RevealTooEarly { .. }
        )
    }
}

impl From<rusqlite::Error> for ChainError {
    fn from(error: rusqlite::Error) -> Self {
        ChainError::Database(error.to_string())
    }
}
