//! subxt's errors, turned into [`ChainError`]s that say what the chain refused and why.

use subxt::error::{DispatchError, Error, RpcError, TransactionError};
use templar_protocol::AccountId;

use crate::types::ChainError;

/// A transport failure talking to `url`.
pub fn rpc(url: &str, error: impl std::fmt::Display) -> ChainError {
    ChainError::Rpc(format!("{url}: {error}"))
}

/// Why the chain did not carry out `call`, sent by `signer`.
pub fn refused(call: &str, signer: &AccountId, error: Error) -> ChainError {
    let refused = |error: String, reason: String| ChainError::Refused {
        call: call.to_string(),
        error,
        reason,
    };
    match error {
        Error::Runtime(DispatchError::Module(module)) => {
            let Ok(details) = module.details() else {
                return refused(module.to_string(), String::new());
            };
            let name = details.variant.name.as_str();
            if NOT_REGISTERED.contains(&name) {
                return ChainError::NotRegistered(*signer);
            }
            refused(
                format!("{}::{name}", details.pallet.name()),
                hint(name).map_or_else(|| details.variant.docs.join(" "), str::to_string),
            )
        }
        Error::Runtime(other) => refused(other.to_string(), String::new()),
        Error::Transaction(
            TransactionError::Invalid(message) | TransactionError::Dropped(message),
        ) => refused("transaction not accepted".into(), message),
        // The pool refuses a transaction at submission with an RPC error (1010: invalid,
        // 1014: priority too low, …); its message is the reason.
        Error::Rpc(RpcError::ClientError(inner)) => {
            let message = inner.to_string();
            if message.contains("Invalid Transaction") || message.contains("1010") {
                return refused("invalid transaction".into(), message);
            }
            ChainError::Rpc(message)
        }
        other => ChainError::Rpc(other.to_string()),
    }
}

const NOT_REGISTERED: &[&str] = &[
    "HotKeyNotRegisteredInSubNet",
    "HotKeyNotRegisteredInNetwork",
    "NotRegistered",
    "HotKeyAccountNotExists",
];

/// What to do about the errors an operator meets most, beyond the runtime's own docs.
fn hint(error: &str) -> Option<&'static str> {
    Some(match error {
        "SettingWeightsTooFast" => {
            "weights were set less than weights_rate_limit blocks ago; the next window's call will go through"
        }
        "CommitRevealEnabled" => "this subnet takes weights by commit-reveal only",
        "NotEnoughBalanceToStake" | "NotEnoughBalanceToPayRegistration" | "NotEnoughBalance" => {
            "the coldkey's free balance is too low; fund it and retry"
        }
        "HotKeyAlreadyRegisteredInSubNet" => "this hotkey already has a uid on the subnet",
        "TooManyRegistrationsThisBlock" | "TooManyRegistrationsThisInterval" => {
            "the subnet's registration limit is reached for now; retry in a few blocks"
        }
        "NotEnoughStakeToSetWeights" => "the hotkey needs more stake to set weights",
        "NeuronNoValidatorPermit" => {
            "the hotkey has no validator permit: it needs more stake than the subnet's other validators"
        }
        "IncorrectWeightVersionKey" => {
            "the network's weights version is newer than this templar; upgrade"
        }
        "SubNetworkDoesNotExist" | "SubnetNotExists" => "no subnet has this netuid",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operators_get_a_hint_for_common_refusals() {
        assert!(hint("SettingWeightsTooFast").is_some_and(|h| h.contains("rate_limit")));
        assert!(hint("SomethingNew").is_none());
        let error = refused(
            "set_weights",
            &AccountId([1; 32]),
            Error::Transaction(TransactionError::Invalid("Custom error: 3".into())),
        );
        let text = error.to_string();
        assert!(
            text.contains("set_weights") && text.contains("Custom error: 3"),
            "{text}"
        );
    }
}
