//! The rows of a subnet's metagraph, from `NeuronInfoRuntimeApi.get_neurons_lite`, and the
//! storage commitments beside them.
//!
//! Recent runtimes describe the call's output type in their metadata, and rows are read by field
//! name. Older runtimes (such as the one in `raonet.json`) return an opaque `Vec<u8>`; its
//! content is decoded with the `NeuronInfoLite` layout those runtimes shipped.

use subxt::Metadata;
use subxt::ext::codec::{Compact, Decode, Encode};
use subxt::ext::scale_value::Value;

use super::values::{account, boolean, bytes, field, items, number, variant};

/// One row of `get_neurons_lite`: what a [`crate::Neuron`] needs beyond registration block and
/// commitment. Scores are u16 fractions of 65535, stake and emission in rao (or alpha).
#[derive(Clone, Debug, PartialEq)]
pub struct NeuronRow {
    pub hotkey: [u8; 32],
    pub coldkey: [u8; 32],
    pub uid: u16,
    pub stake: u64,
    pub rank: u16,
    pub emission: u64,
    pub incentive: u16,
    pub consensus: u16,
    pub trust: u16,
    pub validator_trust: u16,
    pub dividends: u16,
    pub last_update: u64,
    pub validator_permit: bool,
}

pub const NEURON_API: &str = "NeuronInfoRuntimeApi";
pub const NEURONS_LITE: &str = "get_neurons_lite";

/// The runtime-API call's name and SCALE-encoded arguments for the subnet's rows.
pub fn neurons_lite_call(netuid: u16) -> (String, Vec<u8>) {
    (format!("{NEURON_API}_{NEURONS_LITE}"), netuid.encode())
}

/// Decodes the SCALE bytes `get_neurons_lite` returned, by the output type `metadata` gives.
pub fn decode_neurons(metadata: &Metadata, mut raw: &[u8]) -> Result<Vec<NeuronRow>, String> {
    let output = metadata
        .runtime_api_trait_by_name(NEURON_API)
        .and_then(|api| api.method_by_name(NEURONS_LITE))
        .ok_or("the runtime has no NeuronInfoRuntimeApi.get_neurons_lite")?
        .output_ty();
    let value = subxt::ext::scale_value::scale::decode_as_type(&mut raw, output, metadata.types())
        .map_err(|e| format!("get_neurons_lite output: {e}"))?;
    match bytes(&value) {
        Some(opaque) if opaque.is_empty() => Ok(Vec::new()),
        Some(opaque) => decode_opaque(&opaque),
        None => items(&value)
            .ok_or("get_neurons_lite did not return a list")?
            .into_iter()
            .map(row_from_value)
            .collect(),
    }
}

fn row_from_value(value: &Value<u32>) -> Result<NeuronRow, String> {
    let get =
        |name: &str| field(value, name).ok_or_else(|| format!("NeuronInfoLite has no {name}"));
    let small = |name: &str| -> Result<u16, String> {
        number(get(name)?)
            .and_then(|n| u16::try_from(n).ok())
            .ok_or_else(|| format!("NeuronInfoLite.{name} is not a u16"))
    };
    let large = |name: &str| -> Result<u64, String> {
        number(get(name)?)
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| format!("NeuronInfoLite.{name} is not a u64"))
    };
    let key = |name: &str| {
        account(get(name)?).ok_or_else(|| format!("NeuronInfoLite.{name} is not an account"))
    };
    let stake = items(get("stake")?)
        .ok_or("NeuronInfoLite.stake is not a list")?
        .into_iter()
        .map(|pair| items(pair).and_then(|pair| pair.get(1).copied().and_then(number)))
        .try_fold(0u64, |total, amount| {
            let amount = amount.and_then(|a| u64::try_from(a).ok())?;
            Some(total.saturating_add(amount))
        })
        .ok_or("NeuronInfoLite.stake is not a list of (account, amount)")?;
    Ok(NeuronRow {
        hotkey: key("hotkey")?,
        coldkey: key("coldkey")?,
        uid: small("uid")?,
        stake,
        rank: small("rank")?,
        emission: large("emission")?,
        incentive: small("incentive")?,
        consensus: small("consensus")?,
        trust: small("trust")?,
        validator_trust: small("validator_trust")?,
        dividends: small("dividends")?,
        last_update: large("last_update")?,
        validator_permit: boolean(get("validator_permit")?)
            .ok_or("NeuronInfoLite.validator_permit is not a bool")?,
    })
}

/// `Vec<NeuronInfoLite>` in the layout of runtimes whose API output is opaque.
fn decode_opaque(mut input: &[u8]) -> Result<Vec<NeuronRow>, String> {
    let input = &mut input;
    let count = Compact::<u32>::decode(input).map_err(|e| e.to_string())?.0;
    let rows = (0..count)
        .map(|_| opaque_row(input))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("opaque NeuronInfoLite: {e}"))?;
    if !input.is_empty() {
        return Err(format!(
            "opaque NeuronInfoLite list has {} bytes left over",
            input.len()
        ));
    }
    Ok(rows)
}

/// AxonInfo: block u64, version u32, ip u128, port u16, ip_type, protocol, two placeholders u8.
const AXON_INFO_LEN: usize = 8 + 4 + 16 + 2 + 4;
/// PrometheusInfo: block u64, version u32, ip u128, port u16, ip_type u8.
const PROMETHEUS_INFO_LEN: usize = 8 + 4 + 16 + 2 + 1;

fn opaque_row(input: &mut &[u8]) -> Result<NeuronRow, subxt::ext::codec::Error> {
    let hotkey = <[u8; 32]>::decode(input)?;
    let coldkey = <[u8; 32]>::decode(input)?;
    let uid = Compact::<u16>::decode(input)?.0;
    let _netuid = Compact::<u16>::decode(input)?;
    let _active = bool::decode(input)?;
    skip(input, AXON_INFO_LEN + PROMETHEUS_INFO_LEN)?;
    let stake = Vec::<([u8; 32], Compact<u64>)>::decode(input)?
        .iter()
        .fold(0u64, |total, (_, amount)| total.saturating_add(amount.0));
    let rank = Compact::<u16>::decode(input)?.0;
    let emission = Compact::<u64>::decode(input)?.0;
    let incentive = Compact::<u16>::decode(input)?.0;
    let consensus = Compact::<u16>::decode(input)?.0;
    let trust = Compact::<u16>::decode(input)?.0;
    let validator_trust = Compact::<u16>::decode(input)?.0;
    let dividends = Compact::<u16>::decode(input)?.0;
    let last_update = Compact::<u64>::decode(input)?.0;
    let validator_permit = bool::decode(input)?;
    let _pruning_score = Compact::<u16>::decode(input)?;
    Ok(NeuronRow {
        hotkey,
        coldkey,
        uid,
        stake,
        rank,
        emission,
        incentive,
        consensus,
        trust,
        validator_trust,
        dividends,
        last_update,
        validator_permit,
    })
}

fn skip(input: &mut &[u8], len: usize) -> Result<(), subxt::ext::codec::Error> {
    if input.len() < len {
        return Err("not enough data".into());
    }
    *input = &input[len..];
    Ok(())
}

/// The raw bytes of a `Commitments.CommitmentOf` value: its `RawN` fields, concatenated.
pub fn commitment_bytes<T>(registration: &Value<T>) -> Option<Vec<u8>> {
    let mut fields = items(field(field(registration, "info")?, "fields")?)?;
    // `fields` is a BoundedVec, which some runtimes describe as a wrapper around the list.
    if let [only] = fields.as_slice()
        && variant(only).is_none()
    {
        fields = items(only)?;
    }
    let mut out = Vec::new();
    for data in fields {
        let (name, values) = variant(data)?;
        if name.starts_with("Raw") {
            out.extend(bytes(values.first()?)?);
        }
    }
    Some(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use subxt::ext::scale_value::Composite;

    use super::*;

    pub fn finney_metadata() -> Metadata {
        let path = crate::subtensor::dev::chain_fixture("finney-spec393.scale")
            .expect("the recorded chain fixture finney-spec393.scale (shared/chain-fixtures, or $TEMPLAR_CHAIN_FIXTURES)");
        let raw = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Metadata::decode(&mut raw.as_slice()).expect("finney metadata decodes")
    }

    fn row(uid: u16) -> NeuronRow {
        NeuronRow {
            hotkey: [uid as u8 + 1; 32],
            coldkey: [0xC0; 32],
            uid,
            stake: 0,
            rank: 11,
            emission: 1_000_000_007,
            incentive: 65535,
            consensus: 3,
            trust: 4,
            validator_trust: 5,
            dividends: 6,
            last_update: 123_456,
            validator_permit: uid == 0,
        }
    }

    /// The wire layout of `Vec<NeuronInfoLite>`, written out by hand.
    fn encode(rows: &[(NeuronRow, Vec<u64>)]) -> Vec<u8> {
        let mut out = Compact(rows.len() as u32).encode();
        for (row, stakes) in rows {
            out.extend(row.hotkey);
            out.extend(row.coldkey);
            out.extend(Compact(row.uid).encode());
            out.extend(Compact(3u16).encode());
            out.push(1);
            out.extend([0u8; AXON_INFO_LEN + PROMETHEUS_INFO_LEN]);
            let stake: Vec<([u8; 32], Compact<u64>)> =
                stakes.iter().map(|&s| ([0xC0; 32], Compact(s))).collect();
            out.extend(stake.encode());
            out.extend(Compact(row.rank).encode());
            out.extend(Compact(row.emission).encode());
            for n in [
                row.incentive,
                row.consensus,
                row.trust,
                row.validator_trust,
                row.dividends,
            ] {
                out.extend(Compact(n).encode());
            }
            out.extend(Compact(row.last_update).encode());
            out.push(row.validator_permit as u8);
            out.extend(Compact(9u16).encode());
        }
        out
    }

    #[test]
    fn finney_typed_and_opaque_outputs_decode_to_the_same_rows() {
        let mut first = row(0);
        first.stake = 300 + 45;
        let second = row(1);
        let wire = encode(&[(first.clone(), vec![300, 45]), (second.clone(), vec![])]);
        // Finney describes the output type: read by field name.
        let typed = decode_neurons(&finney_metadata(), &wire).expect("typed");
        assert_eq!(typed, vec![first.clone(), second.clone()]);
        // An older runtime wraps the same bytes in an opaque Vec<u8>.
        let opaque = decode_opaque(&wire).expect("opaque");
        assert_eq!(opaque, vec![first, second]);
    }

    #[test]
    fn finney_the_runtime_api_call_matches_the_recorded_arguments() {
        // shared/chain-fixtures/README.md: get_neurons_lite(3) argument bytes → 0x0300.
        let (method, args) = neurons_lite_call(3);
        assert_eq!(method, "NeuronInfoRuntimeApi_get_neurons_lite");
        assert_eq!(args, [0x03, 0x00]);
        // And finney's metadata agrees on the argument's type.
        let metadata = finney_metadata();
        let api = metadata.runtime_api_trait_by_name(NEURON_API).expect("api");
        let method = api.method_by_name(NEURONS_LITE).expect("method");
        let inputs: Vec<_> = method.inputs().map(|i| i.name.clone()).collect();
        assert_eq!(inputs, ["netuid"]);
    }

    #[test]
    fn truncated_rows_are_refused() {
        let wire = encode(&[(row(0), vec![1])]);
        let error = decode_opaque(&wire[..wire.len() - 1]).expect_err("truncated");
        assert!(error.contains("NeuronInfoLite"), "{error}");
        let mut long = wire.clone();
        long.push(0);
        assert!(
            decode_opaque(&long)
                .expect_err("trailing")
                .contains("left over")
        );
    }

    #[test]
    fn commitments_are_their_raw_fields() {
        let raw = |text: &[u8]| {
            Value::variant(
                format!("Raw{}", text.len()),
                Composite::unnamed([Value::from_bytes(text)]),
            )
        };
        let registration = Value::named_composite([
            ("deposit", Value::u128(0)),
            ("block", Value::u128(7)),
            (
                "info",
                Value::named_composite([(
                    "fields",
                    Value::unnamed_composite([raw(b"s3://"), raw(b"bucket")]),
                )]),
            ),
        ]);
        assert_eq!(
            commitment_bytes(&registration),
            Some(b"s3://bucket".to_vec())
        );
        let bounded = Value::named_composite([(
            "info",
            Value::named_composite([(
                "fields",
                Value::unnamed_composite([Value::unnamed_composite([raw(b"s3://x")])]),
            )]),
        )]);
        assert_eq!(commitment_bytes(&bounded), Some(b"s3://x".to_vec()));
        assert_eq!(commitment_bytes(&Value::u128(1)), None);
    }
}
