//! Publishing and reading signed objects.

use bytes::Bytes;
use templar_protocol::envelope::{self, EnvelopeError, OVERHEAD};
use templar_protocol::{Expected, Header, Keypair, Kind, Network, SlotCheck, UploadSlot, layout};

use crate::error::StorageError;
use crate::store::{ObjectInfo, Store};

/// A signed object that passed every check.
#[derive(Clone, Debug)]
pub struct Verified {
    pub header: Header,
    /// The payload alone, without the envelope (shares the downloaded buffer).
    pub payload: Bytes,
    pub uploaded_ms: u64,
}

/// The verdict on one peer's object. Only [`ReadOutcome::Ok`] may be used; every other case
/// says why not, so callers can log it and score it.
#[derive(Clone, Debug)]
pub enum ReadOutcome {
    Ok(Verified),
    Missing,
    TooEarly { uploaded_ms: u64, opens_ms: u64 },
    TooLate { uploaded_ms: u64, closes_ms: u64 },
    BadSignature(&'static str),
    WrongWindow { found: u64, expected: u64 },
    Malformed(String),
}

impl ReadOutcome {
    /// A short name for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ReadOutcome::Ok(_) => "ok",
            ReadOutcome::Missing => "missing",
            ReadOutcome::TooEarly { .. } => "too_early",
            ReadOutcome::TooLate { .. } => "too_late",
            ReadOutcome::BadSignature(_) => "bad_signature",
            ReadOutcome::WrongWindow { .. } => "wrong_window",
            ReadOutcome::Malformed(_) => "malformed",
        }
    }
}

impl From<EnvelopeError> for ReadOutcome {
    fn from(error: EnvelopeError) -> Self {
        match error {
            EnvelopeError::Malformed(reason) => ReadOutcome::Malformed(reason),
            EnvelopeError::BadSignature(reason) => ReadOutcome::BadSignature(reason),
            EnvelopeError::WrongWindow { found, expected } => {
                ReadOutcome::WrongWindow { found, expected }
            }
        }
    }
}

/// The signed head of an object, or why it cannot be used.
pub type HeadOutcome = Result<Header, ReadOutcome>;

impl Store {
    /// Reads and checks only the signed head of the object `expected` describes (one small
    /// ranged request). Its payload hash pins what the object holds at this moment: a gatherer
    /// pins every peer's object when the upload slot closes, before any payload key is revealed,
    /// and later refuses any other payload there, whatever upload time its server claims.
    pub async fn read_head(&self, expected: &Expected<'_>) -> Result<HeadOutcome, StorageError> {
        let key = layout::object_key(
            expected.network,
            expected.kind,
            expected.window,
            expected.uid,
        );
        let bytes = match self.get_prefix(&key, OVERHEAD as u64).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Ok(Err(ReadOutcome::Missing)),
            // An empty object has no range to read: servers refuse the request.
            Err(error) => match self.head(&key).await? {
                Some(info) if info.size < OVERHEAD as u64 => {
                    return Ok(Err(ReadOutcome::Malformed(format!(
                        "object is {} bytes, shorter than an envelope's head",
                        info.size
                    ))));
                }
                _ => return Err(error),
            },
        };
        Ok(envelope::open_head(&bytes, expected).map_err(ReadOutcome::from))
    }

    /// Seals `payload` for (`window`, `uid`) with the node's hotkey, stores it under its
    /// documented key, and returns what the server recorded (its upload time included, so the
    /// node can tell whether it made its slot).
    pub async fn publish(
        &self,
        hotkey: &Keypair,
        network: &Network,
        kind: Kind,
        window: u64,
        uid: u16,
        payload: &[u8],
    ) -> Result<ObjectInfo, StorageError> {
        let key = layout::object_key(network, kind, window, uid);
        let sealed = envelope::seal(hotkey, network, kind, window, uid, payload);
        let size = sealed.len() as u64;
        self.put(&key, Bytes::from(sealed)).await?;
        Ok(self.head(&key).await?.unwrap_or(ObjectInfo {
            key,
            size,
            uploaded_ms: 0,
        }))
    }

    /// Reads the object `expected` describes and checks it: size bound before download, then
    /// signature, identity and window, then upload time against `slot` when one is given.
    /// `Err` only when storage itself failed; a bad object is an outcome, not an error.
    pub async fn read_signed(
        &self,
        expected: &Expected<'_>,
        slot: Option<UploadSlot>,
    ) -> Result<ReadOutcome, StorageError> {
        let key = layout::object_key(
            expected.network,
            expected.kind,
            expected.window,
            expected.uid,
        );
        let limit = expected.max_payload_len.saturating_add(OVERHEAD as u64);
        let fetched = match self.get(&key, limit).await {
            Ok(Some(fetched)) => fetched,
            Ok(None) => return Ok(ReadOutcome::Missing),
            Err(StorageError::TooLarge { size, limit, .. }) => {
                return Ok(ReadOutcome::Malformed(format!(
                    "object is {size} bytes, more than the {limit}-byte limit"
                )));
            }
            Err(error) => return Err(error),
        };
        let header = match envelope::open(&fetched.bytes, expected) {
            Ok((header, _)) => header,
            Err(error) => return Ok(error.into()),
        };
        if let Some(slot) = slot {
            match slot.check(fetched.uploaded_ms) {
                SlotCheck::Early => {
                    return Ok(ReadOutcome::TooEarly {
                        uploaded_ms: fetched.uploaded_ms,
                        opens_ms: slot.opens_ms,
                    });
                }
                SlotCheck::Late => {
                    return Ok(ReadOutcome::TooLate {
                        uploaded_ms: fetched.uploaded_ms,
                        closes_ms: slot.closes_ms,
                    });
                }
                SlotCheck::InTime => {}
            }
        }
        Ok(ReadOutcome::Ok(Verified {
            header,
            payload: fetched.bytes.slice(OVERHEAD..),
            uploaded_ms: fetched.uploaded_ms,
        }))
    }

    /// Deletes this uid's own objects of `kind` from windows before `keep_from`; returns how
    /// many were deleted. Other uids' objects are never touched.
    pub async fn clean_up(
        &self,
        network: &Network,
        kind: Kind,
        uid: u16,
        keep_from: u64,
    ) -> Result<usize, StorageError> {
        let prefix = layout::kind_prefix(network, kind);
        let mut deleted = 0;
        for object in self.list(&prefix).await? {
            let Some((window, owner)) = layout::parse_object_key(network, kind, &object.key) else {
                continue;
            };
            if owner == uid && window < keep_from {
                self.delete(&object.key).await?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}
