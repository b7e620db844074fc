//! Signed extrinsics: every state change of a LocalChain is a call signed by the key that
//! Bittensor would require, with a per-account nonce against replay.

use serde::{Deserialize, Serialize};
use templar_protocol::keys::verify;
use templar_protocol::{AccountId, Keypair, Signature};

use crate::types::ChainError;

pub const SIGNING_CONTEXT: &[u8] = b"templar-localchain-extrinsic";

/// A state change. The signer is the origin: the coldkey for balance, registration and stake,
/// the hotkey for weights and commitments.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Call {
    Transfer {
        dest: AccountId,
        amount: u64,
    },
    BurnedRegister {
        hotkey: AccountId,
    },
    AddStake {
        hotkey: AccountId,
        amount: u64,
    },
    RemoveStake {
        hotkey: AccountId,
        amount: u64,
    },
    SetWeights {
        uids: Vec<u16>,
        weights: Vec<u16>,
        version_key: u64,
    },
    Commit {
        data: Vec<u8>,
    },
    /// A hash of weights to reveal later (commit-reveal subnets): see
    /// [`crate::commit_reveal::Reveal::commit_hash`].
    CommitWeights {
        commit_hash: [u8; 32],
    },
    /// The weights, salt and version key behind one of the signer's commits.
    RevealWeights {
        uids: Vec<u16>,
        weights: Vec<u16>,
        salt: Vec<u16>,
        version_key: u64,
    },
}

#[derive(Clone, Debug)]
pub struct SignedExtrinsic {
    pub signer: AccountId,
    pub nonce: u64,
    pub call: Call,
    pub signature: Signature,
}

/// The bytes a signer signs: the chain's genesis id (so an extrinsic of one chain is worthless
/// on another), the nonce, and the call.
pub fn signing_message(genesis_id: &[u8; 32], nonce: u64, call: &Call) -> Vec<u8> {
    let mut message = genesis_id.to_vec();
    message.extend_from_slice(&nonce.to_le_bytes());
    // serde_json of this enum is deterministic: fields in declaration order, no maps.
    message.extend_from_slice(&serde_json::to_vec(call).unwrap_or_default());
    message
}

impl SignedExtrinsic {
    pub fn sign(keypair: &Keypair, genesis_id: &[u8; 32], nonce: u64, call: Call) -> Self {
        let signature = keypair.sign(SIGNING_CONTEXT, &signing_message(genesis_id, nonce, &call));
        SignedExtrinsic {
            signer: keypair.account(),
            nonce,
            call,
            signature,
        }
    }

    pub fn verify(&self, genesis_id: &[u8; 32]) -> Result<(), ChainError> {
        let message = signing_message(genesis_id, self.nonce, &self.call);
        if verify(&self.signer, SIGNING_CONTEXT, &message, &self.signature) {
            Ok(())
        } else {
            Err(ChainError::BadSignature(self.signer))
        }
    }
}
