//! Chopsticks' development RPCs: funding accounts, changing storage (a subnet's
//! hyperparameters, say) and producing blocks on a chain that has no block author. For tests and
//! local networks on a forked or offline subtensor; a real node refuses these calls.

use serde_json::json;
use subxt::backend::rpc::RpcClient;
use subxt::ext::subxt_rpcs::client::RpcParams;
use templar_protocol::AccountId;

use super::errors::rpc;
use crate::chain::ChainResult;

pub struct DevRpc {
    url: String,
    client: RpcClient,
}

impl DevRpc {
    pub async fn connect(url: &str) -> ChainResult<DevRpc> {
        let client = RpcClient::from_insecure_url(url)
            .await
            .map_err(|e| rpc(url, e))?;
        Ok(DevRpc {
            url: url.to_string(),
            client,
        })
    }

    async fn call(&self, method: &str, param: serde_json::Value) -> ChainResult<()> {
        let mut params = RpcParams::new();
        params.push(param).map_err(|e| rpc(&self.url, e))?;
        self.client
            .request::<serde_json::Value>(method, params)
            .await
            .map_err(|e| rpc(&self.url, format!("{method}: {e}")))?;
        Ok(())
    }

    /// Writes storage, in chopsticks' JSON form: `{"Pallet": {"Entry": value or [[keys, value]…]}}`.
    pub async fn set_storage(&self, changes: serde_json::Value) -> ChainResult<()> {
        self.call("dev_setStorage", changes).await
    }

    /// Gives `account` a free balance of `rao`.
    pub async fn fund(&self, account: &AccountId, rao: u64) -> ChainResult<()> {
        self.set_storage(json!({
            "System": { "Account": [[[account.to_ss58()], {
                "providers": 1,
                "data": { "free": rao.to_string() }
            }]] }
        }))
        .await
    }

    /// Sets a subnet's storage value `SubtensorModule.<entry>(netuid)` (a hyperparameter).
    pub async fn set_subnet_value(
        &self,
        netuid: u16,
        entry: &str,
        value: serde_json::Value,
    ) -> ChainResult<()> {
        self.set_storage(json!({ "SubtensorModule": { entry: [[[netuid], value]] } }))
            .await
    }

    /// Produces `count` blocks.
    pub async fn new_blocks(&self, count: u32) -> ChainResult<()> {
        self.call("dev_newBlock", json!({ "count": count })).await
    }
}
