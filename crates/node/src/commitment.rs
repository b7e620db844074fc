//! What a node commits on chain (at most 128 bytes): its role and where others read its objects.
//!
//! Binary, versioned, type-length-value, so that a Cloudflare R2 location with read credentials
//! fits with room for a bucket name: `[version=1][role]` then fields `[tag][len][bytes]`. A tag
//! with bit 7 set holds a lowercase-hex string packed two characters per byte (R2 account ids and
//! keys are hex). Only *read* credentials belong here: a commitment is public.

use templar_storage::{S3Settings, StoreConfig};

use crate::error::NodeError;

const VERSION: u8 = 1;
const HEX: u8 = 0x80;
const URL: u8 = 1;
const ENDPOINT: u8 = 2;
const R2_ACCOUNT: u8 = 3;
const REGION: u8 = 4;
const ACCESS_KEY_ID: u8 = 5;
const SECRET_ACCESS_KEY: u8 = 6;

/// Commitments are at most this long on Bittensor.
pub const MAX_LEN: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Miner = 1,
    Validator = 2,
}

impl Role {
    /// `miner` or `validator`: the subcommand, and the first part of a node's event name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Miner => "miner",
            Role::Validator => "validator",
        }
    }
}

/// A node's published storage location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commitment {
    pub role: Role,
    /// `s3://bucket[/prefix]` or `file:///dir` (the latter only meaningful on one machine).
    pub url: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

impl Commitment {
    pub fn new(role: Role, url: impl Into<String>) -> Commitment {
        Commitment {
            role,
            url: url.into(),
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
        }
    }

    pub fn encode(&self) -> Result<Vec<u8>, NodeError> {
        let mut out = vec![VERSION, self.role as u8];
        put(&mut out, URL, &self.url)?;
        match self.endpoint.as_deref().and_then(r2_account) {
            Some(account) => put(&mut out, R2_ACCOUNT, account)?,
            None => put_opt(&mut out, ENDPOINT, &self.endpoint)?,
        }
        put_opt(&mut out, REGION, &self.region)?;
        put_opt(&mut out, ACCESS_KEY_ID, &self.access_key_id)?;
        put_opt(&mut out, SECRET_ACCESS_KEY, &self.secret_access_key)?;
        if out.len() > MAX_LEN {
            return Err(NodeError::Commitment(format!(
                "the storage location needs {} bytes on chain, more than the {MAX_LEN} allowed: \
                 use a shorter bucket name or prefix, or leave the read credentials out (readers \
                 then use their own)",
                out.len()
            )));
        }
        Ok(out)
    }

    /// Parses a peer's commitment; anything unexpected is an error naming the problem.
    pub fn decode(bytes: &[u8]) -> Result<Commitment, String> {
        let [version, role, body @ ..] = bytes else {
            return Err("shorter than its 2-byte header".into());
        };
        let mut rest: &[u8] = body;
        if *version != VERSION {
            return Err(format!(
                "version {version}, this node reads version {VERSION}"
            ));
        }
        let role = match role {
            1 => Role::Miner,
            2 => Role::Validator,
            other => return Err(format!("unknown role {other}")),
        };
        let mut commitment = Commitment::new(role, "");
        while let &[tag, len, ref tail @ ..] = rest {
            let len = usize::from(len);
            let value = tail
                .get(..len)
                .ok_or_else(|| format!("field {tag} runs past the end"))?;
            rest = &tail[len..];
            let text = if tag & HEX != 0 {
                value.iter().map(|b| format!("{b:02x}")).collect()
            } else {
                String::from_utf8(value.to_vec())
                    .map_err(|_| format!("field {tag} is not UTF-8"))?
            };
            let slot = match tag & !HEX {
                URL => {
                    commitment.url = text;
                    continue;
                }
                ENDPOINT => &mut commitment.endpoint,
                R2_ACCOUNT => {
                    commitment.endpoint = Some(format!("https://{text}.r2.cloudflarestorage.com"));
                    commitment.region.get_or_insert_with(|| "auto".into());
                    continue;
                }
                REGION => &mut commitment.region,
                ACCESS_KEY_ID => &mut commitment.access_key_id,
                SECRET_ACCESS_KEY => &mut commitment.secret_access_key,
                other => return Err(format!("unknown field {other}")),
            };
            *slot = Some(text);
        }
        if !rest.is_empty() {
            return Err("a truncated field at the end".into());
        }
        if commitment.url.is_empty() {
            return Err("no storage URL".into());
        }
        Ok(commitment)
    }

    /// How to open this location for reading.
    pub fn store_config(&self) -> StoreConfig {
        StoreConfig {
            s3: S3Settings {
                endpoint: self.endpoint.clone(),
                region: self.region.clone(),
                access_key_id: self.access_key_id.clone(),
                secret_access_key: self.secret_access_key.clone(),
                ..S3Settings::default()
            },
            ..StoreConfig::new(self.url.clone())
        }
    }
}

fn r2_account(endpoint: &str) -> Option<&str> {
    let account = endpoint
        .strip_prefix("https://")?
        .strip_suffix(".r2.cloudflarestorage.com")?;
    is_packable_hex(account).then_some(account)
}

fn is_packable_hex(s: &str) -> bool {
    !s.is_empty()
        && s.len().is_multiple_of(2)
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn put_opt(out: &mut Vec<u8>, tag: u8, value: &Option<String>) -> Result<(), NodeError> {
    match value {
        Some(v) => put(out, tag, v),
        None => Ok(()),
    }
}

fn put(out: &mut Vec<u8>, tag: u8, value: &str) -> Result<(), NodeError> {
    let (tag, bytes) = if is_packable_hex(value) {
        let packed = (0..value.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&value[i..i + 2], 16).unwrap_or(0))
            .collect();
        (tag | HEX, packed)
    } else {
        (tag, value.as_bytes().to_vec())
    };
    let len = u8::try_from(bytes.len()).map_err(|_| {
        NodeError::Commitment(format!("a {}-byte field cannot be committed", bytes.len()))
    })?;
    out.extend([tag, len]);
    out.extend(bytes);
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_r2_location_with_read_keys_fits_and_round_trips() {
        let hex = |n: usize| "0123456789abcdef".repeat(8)[..n].to_string();
        let commitment = Commitment {
            role: Role::Miner,
            url: "s3://templar-miner-gradients-01".into(),
            endpoint: Some(format!("https://{}.r2.cloudflarestorage.com", hex(32))),
            region: None,
            access_key_id: Some(hex(32)),
            secret_access_key: Some(hex(64)),
        };
        let bytes = commitment.encode().unwrap();
        // 2 header + (2 + 31) url + (2 + 16) account + (2 + 16) key id + (2 + 32) secret.
        assert_eq!(bytes.len(), 105);
        let back = Commitment::decode(&bytes).unwrap();
        assert_eq!(back.region.as_deref(), Some("auto"));
        assert_eq!(
            Commitment {
                region: None,
                ..back
            },
            commitment
        );
    }

    #[test]
    fn a_plain_location_round_trips() {
        let commitment = Commitment::new(Role::Validator, "file:///tmp/x");
        let bytes = commitment.encode().unwrap();
        assert_eq!(&bytes[..2], &[1, 2]);
        assert_eq!(Commitment::decode(&bytes).unwrap(), commitment);
    }

    #[test]
    fn too_long_locations_are_refused_with_advice() {
        let commitment = Commitment::new(Role::Miner, format!("s3://{}", "b".repeat(130)));
        let err = commitment.encode().unwrap_err().to_string();
        assert!(err.contains("shorter bucket name"), "{err}");
    }

    #[test]
    fn hostile_bytes_are_reasons_not_panics() {
        for (bytes, reason) in [
            (&[][..], "header"),
            (&[2, 1][..], "version"),
            (&[1, 9][..], "role"),
            (&[1, 1, 1, 5, b'a'][..], "past the end"),
            (&[1, 1, 1, 1, 0xff][..], "UTF-8"),
            (&[1, 1, 42, 0][..], "unknown field"),
            (&[1, 1][..], "no storage URL"),
            (&[1, 1, 1, 1, b'a', 7][..], "truncated"),
        ] {
            let err = Commitment::decode(bytes).unwrap_err();
            assert!(err.contains(reason), "{bytes:?}: {err}");
        }
    }
}
