//! Writing to the chain: signing and submitting extrinsics, and weights by commit-reveal.

use subxt::PolkadotConfig;
use subxt::config::Header;
use subxt::tx::{DynamicPayload, Signer, TxStatus};
use subxt::utils::{AccountId32, MultiSignature};
use templar_protocol::Keypair;
use templar_protocol::keys::SUBSTRATE_CONTEXT;

use super::Subtensor;
use super::calls::{self, SUBTENSOR};
use super::errors::{refused, rpc};
use crate::chain::ChainResult;
use crate::commit_reveal::{self, PendingReveals, Reveal, RevealTiming};
use crate::types::ChainError;

impl Subtensor {
    /// Signs `payload` with `key`, submits it, and waits until it is in a block; returns the
    /// block's number. A refusal (from the pool or the runtime) is decoded into its reason.
    pub(super) async fn submit(
        &self,
        key: &Keypair,
        what: &str,
        payload: DynamicPayload,
    ) -> ChainResult<u64> {
        let signer = KeySigner(key);
        let mut progress = self
            .client
            .tx()
            .sign_and_submit_then_watch_default(&payload, &signer)
            .await
            .map_err(|e| refused(what, &key.account(), e))?;
        while let Some(status) = progress.next().await {
            match status.map_err(|e| refused(what, &key.account(), e))? {
                TxStatus::InBestBlock(in_block) | TxStatus::InFinalizedBlock(in_block) => {
                    in_block
                        .wait_for_success()
                        .await
                        .map_err(|e| refused(what, &key.account(), e))?;
                    let header = self
                        .rpc
                        .chain_get_header(Some(in_block.block_hash()))
                        .await
                        .map_err(|e| rpc(&self.url, e))?;
                    return Ok(header.map_or(0, |h| h.number().into()));
                }
                TxStatus::Error { message }
                | TxStatus::Invalid { message }
                | TxStatus::Dropped { message } => {
                    return Err(ChainError::Refused {
                        call: what.to_string(),
                        error: "transaction not included".into(),
                        reason: message,
                    });
                }
                _ => {}
            }
        }
        Err(ChainError::Rpc(format!(
            "{}: the status of {what} stopped arriving before it was included",
            self.url
        )))
    }

    pub(super) fn metadata_call(
        &self,
        build: impl FnOnce(&subxt::Metadata) -> Result<DynamicPayload, String>,
    ) -> ChainResult<DynamicPayload> {
        build(&self.client.metadata()).map_err(ChainError::Unsupported)
    }

    /// Commit-reveal subnets: reveal what is due, then commit these weights.
    pub(super) async fn commit_weights(
        &self,
        hotkey: &Keypair,
        uids: &[u16],
        weights: &[u16],
        version_key: u64,
    ) -> ChainResult<()> {
        let (head, at) = self.head().await?;
        let timing = self.reveal_timing(at).await?;
        let mut pending = self.reveals.lock().await;
        self.reveal_from(&mut pending, hotkey, head, timing).await?;
        let reveal = Reveal {
            uids: uids.to_vec(),
            weights: weights.to_vec(),
            salt: commit_reveal::salt()?,
            version_key,
            committed_at: head + 1,
        };
        let hash = reveal.commit_hash(hotkey.account().as_bytes(), self.netuid);
        let payload = self.metadata_call(|m| calls::commit_weights(m, self.netuid, hash))?;
        pending.record(&hotkey.account(), reveal)?;
        let committed = self.submit(hotkey, "commit_weights", payload).await;
        pending.settle_last(committed.as_ref().ok().copied())?;
        committed.map(drop)
    }

    /// Reveals the pending commits that are due now and drops the expired ones; returns how many
    /// were revealed.
    pub(super) async fn reveal_due(&self, hotkey: &Keypair) -> ChainResult<usize> {
        let mut pending = self.reveals.lock().await;
        if pending.is_empty() {
            return Ok(0);
        }
        let (head, at) = self.head().await?;
        let timing = self.reveal_timing(at).await?;
        self.reveal_from(&mut pending, hotkey, head, timing).await
    }

    async fn reveal_timing(&self, at: subxt::utils::H256) -> ChainResult<RevealTiming> {
        Ok(RevealTiming {
            netuid: self.netuid,
            tempo: self.read_number(at, SUBTENSOR, "Tempo").await?,
            reveal_period: self
                .read_number(at, SUBTENSOR, "RevealPeriodEpochs")
                .await?,
        })
    }

    /// Reveals from `pending` what is due at `head` and stores what is left; returns how many
    /// were revealed.
    async fn reveal_from(
        &self,
        pending: &mut PendingReveals,
        hotkey: &Keypair,
        head: u64,
        timing: RevealTiming,
    ) -> ChainResult<usize> {
        let mut revealed = 0;
        for entry in pending.take_due(&hotkey.account(), head, timing) {
            let outcome = self.reveal_one(hotkey, &entry.reveal).await;
            revealed += usize::from(pending.settle_reveal(entry, outcome));
        }
        pending.store()?;
        Ok(revealed)
    }

    async fn reveal_one(&self, hotkey: &Keypair, reveal: &Reveal) -> ChainResult<u64> {
        let payload = self.metadata_call(|m| calls::reveal_weights(m, reveal, self.netuid))?;
        self.submit(hotkey, "reveal_weights", payload).await
    }
}

/// A templar key signing extrinsics the way a Substrate sr25519 signer does.
struct KeySigner<'a>(&'a Keypair);

impl Signer<PolkadotConfig> for KeySigner<'_> {
    fn account_id(&self) -> AccountId32 {
        AccountId32(self.0.account().0)
    }

    fn sign(&self, payload: &[u8]) -> MultiSignature {
        MultiSignature::Sr25519(self.0.sign(SUBSTRATE_CONTEXT, payload).0)
    }
}
