//! The extrinsics templar sends to subtensor, built as dynamic calls.
//!
//! Arguments are matched to the call's fields by name, in the order the runtime's metadata
//! lists them: an argument a runtime does not take is left out (older runtimes' `add_stake` has
//! no `netuid`), and a field nobody supplied is a clear error instead of a wrong encoding.

use subxt::Metadata;
use subxt::ext::scale_value::{Composite, Value};
use subxt::tx::DynamicPayload;

use crate::commit_reveal::Reveal;

pub const SUBTENSOR: &str = "SubtensorModule";
pub const COMMITMENTS: &str = "Commitments";

/// A call of `pallet` with `args` in the order the metadata gives its fields.
pub fn call(
    metadata: &Metadata,
    pallet: &str,
    name: &str,
    args: Vec<(&str, Value)>,
) -> Result<DynamicPayload, String> {
    let variant = metadata
        .pallet_by_name(pallet)
        .and_then(|p| p.call_variant_by_name(name))
        .ok_or_else(|| format!("the runtime has no call {pallet}.{name}"))?;
    let mut args = args;
    let mut ordered = Vec::with_capacity(variant.fields.len());
    for field in &variant.fields {
        let field_name = field.name.as_deref().unwrap_or_default();
        let at = args
            .iter()
            .position(|(arg, _)| *arg == field_name)
            .ok_or_else(|| {
                format!(
                    "{pallet}.{name} takes {field_name:?}, which templar does not know how to fill"
                )
            })?;
        let (_, value) = args.swap_remove(at);
        ordered.push((field_name.to_string(), value));
    }
    Ok(subxt::dynamic::tx(pallet, name, Composite::named(ordered)))
}

fn u16s(values: &[u16]) -> Value {
    Value::unnamed_composite(values.iter().map(|&v| Value::u128(v.into())))
}

pub fn set_weights(
    metadata: &Metadata,
    netuid: u16,
    uids: &[u16],
    weights: &[u16],
    version_key: u64,
) -> Result<DynamicPayload, String> {
    call(
        metadata,
        SUBTENSOR,
        "set_weights",
        vec![
            ("netuid", Value::u128(netuid.into())),
            ("dests", u16s(uids)),
            ("weights", u16s(weights)),
            ("version_key", Value::u128(version_key.into())),
        ],
    )
}

pub fn commit_weights(
    metadata: &Metadata,
    netuid: u16,
    hash: [u8; 32],
) -> Result<DynamicPayload, String> {
    call(
        metadata,
        SUBTENSOR,
        "commit_weights",
        vec![
            ("netuid", Value::u128(netuid.into())),
            ("commit_hash", Value::from_bytes(hash)),
        ],
    )
}

pub fn reveal_weights(
    metadata: &Metadata,
    reveal: &Reveal,
    netuid: u16,
) -> Result<DynamicPayload, String> {
    call(
        metadata,
        SUBTENSOR,
        "reveal_weights",
        vec![
            ("netuid", Value::u128(netuid.into())),
            ("uids", u16s(&reveal.uids)),
            ("values", u16s(&reveal.weights)),
            ("salt", u16s(&reveal.salt)),
            ("version_key", Value::u128(reveal.version_key.into())),
        ],
    )
}

/// `Commitments.set_commitment` with one `RawN` field holding `data` (at most 128 bytes).
pub fn set_commitment(
    metadata: &Metadata,
    netuid: u16,
    data: &[u8],
) -> Result<DynamicPayload, String> {
    let raw = Value::variant(
        format!("Raw{}", data.len()),
        Composite::unnamed([Value::from_bytes(data)]),
    );
    call(
        metadata,
        COMMITMENTS,
        "set_commitment",
        vec![
            ("netuid", Value::u128(netuid.into())),
            (
                "info",
                Value::named_composite([("fields", Value::unnamed_composite([raw]))]),
            ),
        ],
    )
}

pub fn burned_register(
    metadata: &Metadata,
    netuid: u16,
    hotkey: [u8; 32],
) -> Result<DynamicPayload, String> {
    call(
        metadata,
        SUBTENSOR,
        "burned_register",
        vec![
            ("netuid", Value::u128(netuid.into())),
            ("hotkey", Value::from_bytes(hotkey)),
        ],
    )
}

pub fn add_stake(
    metadata: &Metadata,
    netuid: u16,
    hotkey: [u8; 32],
    rao: u64,
) -> Result<DynamicPayload, String> {
    let mut args = vec![
        ("hotkey", Value::from_bytes(hotkey)),
        ("amount_staked", Value::u128(rao.into())),
    ];
    let takes_netuid = metadata
        .pallet_by_name(SUBTENSOR)
        .and_then(|p| p.call_variant_by_name("add_stake"))
        .is_some_and(|v| v.fields.iter().any(|f| f.name.as_deref() == Some("netuid")));
    if takes_netuid {
        args.push(("netuid", Value::u128(netuid.into())));
    }
    call(metadata, SUBTENSOR, "add_stake", args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subtensor::neurons::tests::finney_metadata;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn call_data(payload: &DynamicPayload, metadata: &Metadata) -> String {
        hex(&subxt::ext::subxt_core::tx::call_data(payload, metadata).expect("encodes"))
    }

    // The golden values are those listed in shared/chain-fixtures/README.md.
    #[test]
    fn finney_set_weights_matches_the_recorded_call_data() {
        let metadata = finney_metadata();
        let payload = set_weights(&metadata, 3, &[0, 1], &[65535, 32768], 1).expect("call");
        assert_eq!(
            call_data(&payload, &metadata),
            "07000300080000010008ffff00800100000000000000"
        );
    }

    #[test]
    fn finney_set_commitment_matches_the_recorded_call_data() {
        let metadata = finney_metadata();
        let payload = set_commitment(&metadata, 3, b"hello").expect("call");
        assert_eq!(call_data(&payload, &metadata), "12000300040668656c6c6f");
    }

    #[test]
    fn finney_register_and_stake_encode_their_accounts() {
        let metadata = finney_metadata();
        let hotkey = [0xAB; 32];
        let register = call_data(
            &burned_register(&metadata, 3, hotkey).expect("call"),
            &metadata,
        );
        assert!(
            register.ends_with(&format!("0300{}", hex(&hotkey))),
            "{register}"
        );
        // Finney's add_stake takes (hotkey, netuid, amount_staked).
        let stake = call_data(
            &add_stake(&metadata, 3, hotkey, 5).expect("call"),
            &metadata,
        );
        assert!(
            stake.ends_with(&format!("{}03000500000000000000", hex(&hotkey))),
            "{stake}"
        );
    }

    #[test]
    fn finney_unknown_calls_and_unfilled_fields_are_named() {
        let metadata = finney_metadata();
        let missing = call(
            &metadata,
            SUBTENSOR,
            "set_weights",
            vec![("netuid", Value::u128(3))],
        );
        assert!(missing.expect_err("dests missing").contains("\"dests\""));
        let unknown = call(&metadata, SUBTENSOR, "no_such_call", vec![]);
        assert!(
            unknown
                .expect_err("unknown")
                .contains("SubtensorModule.no_such_call")
        );
    }
}
