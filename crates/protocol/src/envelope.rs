//! Signed envelopes: the wrapper around every object a node publishes.
//!
//! Layout (little-endian), documented in `docs/storage.md`:
//!
//! | bytes | field |
//! |---|---|
//! | 4 | magic `TPLE` |
//! | 2 | protocol version |
//! | 1 | kind |
//! | 1 | flags (0) |
//! | 16 | network id |
//! | 8 | window |
//! | 2 | uid |
//! | 32 | hotkey (sr25519 public key) |
//! | 8 | payload length |
//! | 32 | blake3 of the payload |
//! | 64 | sr25519 signature of the 106 bytes above, context `templar-envelope` |
//! | n | payload |
//!
//! The signature binds the payload (through its hash) to one network, window, uid and hotkey, so a
//! payload cannot be replayed into another window, claimed by another uid, or altered in flight.

use crate::keys::{AccountId, Keypair, Signature, verify};
use crate::network::{Network, PROTOCOL_VERSION};

pub const MAGIC: [u8; 4] = *b"TPLE";
pub const HEADER_LEN: usize = 106;
pub const SIGNATURE_LEN: usize = 64;
/// Bytes an envelope adds to its payload.
pub const OVERHEAD: usize = HEADER_LEN + SIGNATURE_LEN;
pub const SIGNING_CONTEXT: &[u8] = b"templar-envelope";

/// What an object is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    Gradient = 1,
    Manifest = 2,
    Checkpoint = 3,
    /// The key that opens a sealed gradient, revealed after the upload slot (see `seal`).
    PayloadKey = 4,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Kind> {
        match byte {
            1 => Some(Kind::Gradient),
            2 => Some(Kind::Manifest),
            3 => Some(Kind::Checkpoint),
            4 => Some(Kind::PayloadKey),
            _ => None,
        }
    }
}

/// The signed fields of an envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: u16,
    pub kind: Kind,
    pub network_id: [u8; 16],
    pub window: u64,
    pub uid: u16,
    pub hotkey: AccountId,
    pub payload_len: u64,
    pub payload_hash: [u8; 32],
}

/// What a reader expects an object to be, from the key it read and the chain's view of the uid.
#[derive(Clone, Debug)]
pub struct Expected<'a> {
    pub network: &'a Network,
    pub kind: Kind,
    pub window: u64,
    pub uid: u16,
    /// The hotkey the chain has registered at `uid`.
    pub hotkey: AccountId,
    pub max_payload_len: u64,
}

/// Why an envelope was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("malformed envelope: {0}")]
    Malformed(String),
    #[error("bad signature: {0}")]
    BadSignature(&'static str),
    #[error("signed for window {found}, expected {expected}")]
    WrongWindow { found: u64, expected: u64 },
}

fn malformed(reason: impl Into<String>) -> EnvelopeError {
    EnvelopeError::Malformed(reason.into())
}

/// Wraps `payload` in an envelope signed by `keypair`.
pub fn seal(
    keypair: &Keypair,
    network: &Network,
    kind: Kind,
    window: u64,
    uid: u16,
    payload: &[u8],
) -> Vec<u8> {
    let header = Header {
        version: PROTOCOL_VERSION,
        kind,
        network_id: network.id(),
        window,
        uid,
        hotkey: keypair.account(),
        payload_len: payload.len() as u64,
        payload_hash: *blake3::hash(payload).as_bytes(),
    };
    let header_bytes = header.encode();
    let signature = keypair.sign(SIGNING_CONTEXT, &header_bytes);
    let mut out = Vec::with_capacity(OVERHEAD + payload.len());
    out.extend_from_slice(&header_bytes);
    out.extend_from_slice(&signature.0);
    out.extend_from_slice(payload);
    out
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        let mut at = 0;
        let mut put = |bytes: &[u8]| {
            out[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        };
        put(&MAGIC);
        put(&self.version.to_le_bytes());
        put(&[self.kind as u8, 0]);
        put(&self.network_id);
        put(&self.window.to_le_bytes());
        put(&self.uid.to_le_bytes());
        put(self.hotkey.as_bytes());
        put(&self.payload_len.to_le_bytes());
        put(&self.payload_hash);
        out
    }

    /// Decodes the fixed header; never reads past `bytes` and never allocates.
    pub fn decode(bytes: &[u8]) -> Result<Header, EnvelopeError> {
        let header: &[u8; HEADER_LEN] = bytes
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| malformed(format!("{} bytes, shorter than a header", bytes.len())))?;
        let field = |from: usize, len: usize| &header[from..from + len];
        let array = |from: usize| -> [u8; 8] {
            let mut a = [0u8; 8];
            a.copy_from_slice(field(from, 8));
            a
        };
        if field(0, 4) != MAGIC {
            return Err(malformed("not a templar envelope (bad magic)"));
        }
        let version = u16::from_le_bytes([header[4], header[5]]);
        if version != PROTOCOL_VERSION {
            return Err(malformed(format!(
                "protocol version {version}, this node speaks {PROTOCOL_VERSION}"
            )));
        }
        let kind = Kind::from_byte(header[6])
            .ok_or_else(|| malformed(format!("unknown kind {}", header[6])))?;
        if header[7] != 0 {
            return Err(malformed(format!("unknown flags {:#x}", header[7])));
        }
        let mut network_id = [0u8; 16];
        network_id.copy_from_slice(field(8, 16));
        let mut hotkey = [0u8; 32];
        hotkey.copy_from_slice(field(34, 32));
        let mut payload_hash = [0u8; 32];
        payload_hash.copy_from_slice(field(74, 32));
        Ok(Header {
            version,
            kind,
            network_id,
            window: u64::from_le_bytes(array(24)),
            uid: u16::from_le_bytes([header[32], header[33]]),
            hotkey: AccountId(hotkey),
            payload_len: u64::from_le_bytes(array(66)),
            payload_hash,
        })
    }
}

/// Checks an envelope against what the reader expects and returns its header and payload.
///
/// Authenticity is settled first (signature by the expected hotkey, payload hash), so nothing an
/// unauthenticated sender wrote earns a more specific verdict than `BadSignature` or `Malformed`.
pub fn open<'a>(
    bytes: &'a [u8],
    expected: &Expected<'_>,
) -> Result<(Header, &'a [u8]), EnvelopeError> {
    let header = Header::decode(bytes)?;
    let payload = bytes.get(OVERHEAD..).unwrap_or_default();
    if header.payload_len <= expected.max_payload_len && header.payload_len != payload.len() as u64
    {
        return Err(malformed(format!(
            "declares a {}-byte payload but carries {}",
            header.payload_len,
            payload.len()
        )));
    }
    let header = authentic_head(bytes, expected)?;
    if blake3::hash(payload).as_bytes() != &header.payload_hash {
        return Err(EnvelopeError::BadSignature(
            "payload differs from the one that was signed",
        ));
    }
    identify(header, expected).map(|header| (header, payload))
}

/// Checks the signed head of an envelope (its first [`OVERHEAD`] bytes; the payload may follow
/// or not) against what the reader expects: the hash it returns pins the payload the object
/// held when it was read, whatever is uploaded there later.
pub fn open_head(bytes: &[u8], expected: &Expected<'_>) -> Result<Header, EnvelopeError> {
    identify(authentic_head(bytes, expected)?, expected)
}

/// The header, once its signature by the expected hotkey verifies and its declared length is
/// within the limit.
fn authentic_head(bytes: &[u8], expected: &Expected<'_>) -> Result<Header, EnvelopeError> {
    let header = Header::decode(bytes)?;
    let signature_bytes: [u8; SIGNATURE_LEN] = bytes
        .get(HEADER_LEN..OVERHEAD)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| malformed("truncated before the signature ends"))?;
    if header.payload_len > expected.max_payload_len {
        return Err(malformed(format!(
            "declares a {}-byte payload, limit {}",
            header.payload_len, expected.max_payload_len
        )));
    }
    if header.hotkey != expected.hotkey {
        return Err(EnvelopeError::BadSignature(
            "signed by a hotkey other than the one registered for this uid",
        ));
    }
    if !verify(
        &header.hotkey,
        SIGNING_CONTEXT,
        &bytes[..HEADER_LEN],
        &Signature(signature_bytes),
    ) {
        return Err(EnvelopeError::BadSignature("signature does not verify"));
    }
    Ok(header)
}

/// The header, once it names what the reader asked for: network, kind, uid and window.
fn identify(header: Header, expected: &Expected<'_>) -> Result<Header, EnvelopeError> {
    if header.network_id != expected.network.id() {
        return Err(malformed(format!(
            "belongs to another network than {} (or one running a different network.toml)",
            expected.network
        )));
    }
    if header.kind != expected.kind {
        return Err(malformed(format!(
            "is a {:?}, expected a {:?}",
            header.kind, expected.kind
        )));
    }
    if header.uid != expected.uid {
        return Err(malformed(format!(
            "signed for uid {}, stored under uid {}",
            header.uid, expected.uid
        )));
    }
    if header.window != expected.window {
        return Err(EnvelopeError::WrongWindow {
            found: header.window,
            expected: expected.window,
        });
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    struct Fixture {
        keypair: Keypair,
        network: Network,
    }

    impl Fixture {
        fn new() -> Fixture {
            Fixture {
                keypair: Keypair::from_seed(&[7u8; 32]).unwrap(),
                network: Network::new("testnet").unwrap(),
            }
        }

        fn expected(&self) -> Expected<'_> {
            Expected {
                network: &self.network,
                kind: Kind::Gradient,
                window: 12,
                uid: 3,
                hotkey: self.keypair.account(),
                max_payload_len: 1 << 20,
            }
        }

        fn sealed(&self, payload: &[u8]) -> Vec<u8> {
            seal(&self.keypair, &self.network, Kind::Gradient, 12, 3, payload)
        }
    }

    #[test]
    fn round_trip() {
        let f = Fixture::new();
        let sealed = f.sealed(b"payload");
        assert_eq!(sealed.len(), OVERHEAD + 7);
        let (header, payload) = open(&sealed, &f.expected()).unwrap();
        assert_eq!(payload, b"payload");
        assert_eq!((header.window, header.uid), (12, 3));
    }

    #[test]
    fn each_mismatch_has_its_verdict() {
        let f = Fixture::new();
        let sealed = f.sealed(b"payload");
        let other = Keypair::from_seed(&[8u8; 32]).unwrap();
        type Verdict = fn(&EnvelopeError) -> bool;
        let cases: Vec<(Expected<'_>, Verdict)> = vec![
            (
                Expected {
                    window: 13,
                    ..f.expected()
                },
                |e| {
                    matches!(
                        e,
                        EnvelopeError::WrongWindow {
                            found: 12,
                            expected: 13
                        }
                    )
                },
            ),
            (
                Expected {
                    hotkey: other.account(),
                    ..f.expected()
                },
                |e| matches!(e, EnvelopeError::BadSignature(_)),
            ),
            (
                Expected {
                    uid: 4,
                    ..f.expected()
                },
                |e| matches!(e, EnvelopeError::Malformed(r) if r.contains("uid")),
            ),
            (
                Expected {
                    kind: Kind::Manifest,
                    ..f.expected()
                },
                |e| matches!(e, EnvelopeError::Malformed(_)),
            ),
            (
                Expected {
                    max_payload_len: 3,
                    ..f.expected()
                },
                |e| matches!(e, EnvelopeError::Malformed(r) if r.contains("limit")),
            ),
        ];
        for (expected, verdict) in cases {
            let err = open(&sealed, &expected).unwrap_err();
            assert!(verdict(&err), "{err:?}");
        }
        let elsewhere = Network::new("othernet").unwrap();
        let err = open(
            &sealed,
            &Expected {
                network: &elsewhere,
                ..f.expected()
            },
        )
        .unwrap_err();
        assert!(matches!(err, EnvelopeError::Malformed(r) if r.contains("network")));
    }

    #[test]
    fn tampering_breaks_the_signature() {
        let f = Fixture::new();
        let sealed = f.sealed(b"payload");
        let mut payload_changed = sealed.clone();
        *payload_changed.last_mut().unwrap() ^= 1;
        assert!(matches!(
            open(&payload_changed, &f.expected()),
            Err(EnvelopeError::BadSignature(_))
        ));
        let mut window_changed = sealed.clone();
        window_changed[24] ^= 1;
        assert!(matches!(
            open(&window_changed, &f.expected()),
            Err(EnvelopeError::BadSignature(_))
        ));
        let forged = seal(
            &Keypair::generate(),
            &f.network,
            Kind::Gradient,
            12,
            3,
            b"payload",
        );
        let mut claimed = forged.clone();
        claimed[34..66].copy_from_slice(f.keypair.account().as_bytes());
        assert!(matches!(
            open(&claimed, &f.expected()),
            Err(EnvelopeError::BadSignature("signature does not verify"))
        ));
    }

    #[test]
    fn truncation_and_garbage_are_malformed() {
        let f = Fixture::new();
        let sealed = f.sealed(b"payload");
        for cut in [0, 3, HEADER_LEN - 1, HEADER_LEN + 10, sealed.len() - 1] {
            assert!(matches!(
                open(&sealed[..cut], &f.expected()),
                Err(EnvelopeError::Malformed(_))
            ));
        }
    }

    proptest! {
        #[test]
        fn hostile_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let f = Fixture::new();
            let _ = open(&bytes, &f.expected());
        }

        #[test]
        fn hostile_headers_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..300)) {
            let f = Fixture::new();
            let mut bytes = MAGIC.to_vec();
            bytes.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
            bytes.extend_from_slice(&tail);
            let _ = open(&bytes, &f.expected());
        }
    }
}
