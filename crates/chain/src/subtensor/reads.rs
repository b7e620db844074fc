//! Reading the chain: blocks, storage and the subnet's maps, each read retried across a dropped
//! connection.

use std::collections::HashMap;

use subxt::config::Header;
use subxt::dynamic::Value;
use subxt::utils::H256;

use super::calls::SUBTENSOR;
use super::errors::rpc;
use super::{Subtensor, retry, values};
use crate::chain::ChainResult;
use crate::types::ChainError;

impl Subtensor {
    /// The best block's number and hash.
    pub(super) async fn head(&self) -> ChainResult<(u64, H256)> {
        let header = retry::read("the best block", || self.rpc.chain_get_header(None))
            .await
            .map_err(|e| rpc(&self.url, e))?
            .ok_or_else(|| ChainError::Rpc(format!("{} has no best block", self.url)))?;
        let hash = header.hash_with(self.client.hasher());
        Ok((header.number().into(), hash))
    }

    pub(super) async fn hash_of(&self, number: u64) -> ChainResult<H256> {
        let block = u32::try_from(number).map_err(|_| ChainError::FutureBlock {
            block: number,
            head: u32::MAX.into(),
        })?;
        retry::read("a block hash", || {
            self.rpc.chain_get_block_hash(Some(block.into()))
        })
        .await
        .map_err(|e| rpc(&self.url, e))?
        .ok_or_else(|| {
            ChainError::Rpc(format!(
                "{} does not know block {number} (pruned?)",
                self.url
            ))
        })
    }

    /// A storage value of the subnet (keyed by netuid), or the type's default when unset.
    pub(super) async fn read(
        &self,
        at: H256,
        pallet: &str,
        entry: &str,
    ) -> ChainResult<Value<u32>> {
        self.read_keyed(at, pallet, entry, vec![Value::u128(self.netuid.into())])
            .await
    }

    pub(super) async fn read_keyed(
        &self,
        at: H256,
        pallet: &str,
        entry: &str,
        keys: Vec<Value>,
    ) -> ChainResult<Value<u32>> {
        let address = &subxt::dynamic::storage(pallet, entry, keys);
        let thunk = retry::read(entry, || async move {
            self.client.storage().at(at).fetch_or_default(address).await
        })
        .await
        .map_err(|e| self.read_error(pallet, entry, e))?;
        thunk
            .to_value()
            .map_err(|e| ChainError::Decode(format!("{pallet}.{entry}: {e}")))
    }

    pub(super) async fn read_number(
        &self,
        at: H256,
        pallet: &str,
        entry: &str,
    ) -> ChainResult<u64> {
        let value = self.read(at, pallet, entry).await?;
        values::number(&value)
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| ChainError::Decode(format!("{pallet}.{entry} is not a number: {value}")))
    }

    /// A subtensor value not keyed by subnet; 0 where the runtime has no such item.
    pub(super) async fn global_number(&self, at: H256, entry: &str) -> u64 {
        self.read_keyed(at, SUBTENSOR, entry, Vec::new())
            .await
            .ok()
            .and_then(|v| values::number(&v))
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0)
    }

    pub(super) async fn read_bool(&self, at: H256, pallet: &str, entry: &str) -> ChainResult<bool> {
        let value = self.read(at, pallet, entry).await?;
        values::boolean(&value)
            .ok_or_else(|| ChainError::Decode(format!("{pallet}.{entry} is not a bool: {value}")))
    }

    pub(super) async fn timestamp_at(&self, at: H256) -> ChainResult<u64> {
        let value = self.read_keyed(at, "Timestamp", "Now", Vec::new()).await?;
        values::number(&value)
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| ChainError::Decode(format!("Timestamp.Now is not a number: {value}")))
    }

    /// Every `(key, value)` of a map under the subnet's netuid.
    pub(super) async fn iter_subnet(
        &self,
        at: H256,
        pallet: &str,
        entry: &str,
    ) -> ChainResult<Vec<(Vec<u8>, Value<u32>)>> {
        let netuid = self.netuid;
        let pairs = retry::read(entry, || async move {
            let address = subxt::dynamic::storage(pallet, entry, vec![Value::u128(netuid.into())]);
            let mut stream = self.client.storage().at(at).iter(address).await?;
            let mut pairs = Vec::new();
            while let Some(pair) = stream.next().await {
                let pair = pair?;
                pairs.push((pair.key_bytes, pair.value));
            }
            Ok(pairs)
        })
        .await
        .map_err(|e| self.read_error(pallet, entry, e))?;
        pairs
            .into_iter()
            .map(|(key, value)| {
                let value = value
                    .to_value()
                    .map_err(|e| ChainError::Decode(format!("{pallet}.{entry}: {e}")))?;
                Ok((key, value))
            })
            .collect()
    }

    /// A failed storage read: the connection's fault, or an answer templar cannot read.
    pub(super) fn read_error(&self, pallet: &str, entry: &str, error: subxt::Error) -> ChainError {
        match error {
            subxt::Error::Rpc(_) | subxt::Error::Io(_) => {
                rpc(&self.url, format!("{pallet}.{entry}: {error}"))
            }
            other => ChainError::Decode(format!("{pallet}.{entry}: {other}")),
        }
    }

    /// Each hotkey's stake on this subnet (`TotalHotkeyAlpha`), on runtimes with per-subnet
    /// stake; `None` on older ones, whose `NeuronInfoLite.stake` is the stake. (Some runtimes
    /// of the transition still fill `NeuronInfoLite.stake` from the old, now empty, map.)
    pub(super) async fn subnet_stakes(
        &self,
        at: H256,
        hotkeys: &[[u8; 32]],
    ) -> ChainResult<Option<HashMap<[u8; 32], u64>>> {
        let has_alpha = self
            .client
            .metadata()
            .pallet_by_name(SUBTENSOR)
            .and_then(|p| p.storage())
            .is_some_and(|s| s.entry_by_name("TotalHotkeyAlpha").is_some());
        if !has_alpha {
            return Ok(None);
        }
        let reads = hotkeys.iter().map(|hotkey| async move {
            let keys = vec![Value::from_bytes(hotkey), Value::u128(self.netuid.into())];
            let value = self
                .read_keyed(at, SUBTENSOR, "TotalHotkeyAlpha", keys)
                .await?;
            let stake = values::number(&value)
                .and_then(|n| u64::try_from(n).ok())
                .ok_or_else(|| {
                    ChainError::Decode(format!("TotalHotkeyAlpha is not a number: {value}"))
                })?;
            Ok::<_, ChainError>((*hotkey, stake))
        });
        let stakes = subxt::ext::futures::future::try_join_all(reads).await?;
        Ok(Some(stakes.into_iter().collect()))
    }
}
