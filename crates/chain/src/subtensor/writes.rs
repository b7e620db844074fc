//! Writing to the chain: signing and submitting extrinsics, and weights by commit-reveal.

use subxt::PolkadotConfig;
use subxt::config::Header;
use subxt::tx::{DynamicPayload, Signer, TxStatus};
use subxt::utils::{AccountId32, MultiSignature};
use templar_protocol::Keypair;
use templar_protocol::keys::SUBSTRATE_CONTEXT;

use super::Subtensor;
use super::calls::{self, Reveal, SUBTENSOR};
use super::errors::{refused, rpc};
use super::reveal::{self, RevealTiming};
use crate::chain::ChainResult;
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
        let timing = RevealTiming {
            netuid: self.netuid,
            tempo: self.read_number(at, SUBTENSOR, "Tempo").await?,
            reveal_period: self
                .read_number(at, SUBTENSOR, "RevealPeriodEpochs")
                .await?,
        };
        let mut pending = self.reveals.lock().await;
        let mut kept = Vec::new();
        for reveal in pending.drain(..) {
            if timing.is_expired(reveal.committed_at, head) {
                tracing::warn!(
                    committed_at = reveal.committed_at,
                    "weights commit expired before it could be revealed"
                );
            } else if !timing.is_due(reveal.committed_at, head) {
                kept.push(reveal);
            } else {
                let payload =
                    self.metadata_call(|m| calls::reveal_weights(m, &reveal, self.netuid))?;
                match self.submit(hotkey, "reveal_weights", payload).await {
                    Ok(block) => tracing::info!(
                        block,
                        committed_at = reveal.committed_at,
                        "revealed weights"
                    ),
                    Err(error) => tracing::warn!(%error, "revealing weights"),
                }
            }
        }
        let mut reveal = Reveal {
            uids: uids.to_vec(),
            weights: weights.to_vec(),
            salt: reveal::salt(),
            version_key,
            committed_at: 0,
        };
        let hash = reveal.commit_hash(hotkey.account().as_bytes(), self.netuid);
        let payload = self.metadata_call(|m| calls::commit_weights(m, self.netuid, hash))?;
        reveal.committed_at = self.submit(hotkey, "commit_weights", payload).await?;
        kept.push(reveal);
        *pending = kept;
        Ok(())
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
