//! Sealed payloads: a miner's gradient message encrypted under a key of its own, which it reveals
//! only after the upload slot has closed.
//!
//! Read credentials are public and object keys predictable, so during the slot anyone can read a
//! peer's payload and upload it as their own. Deciding afterwards who copied from upload times
//! trusts clocks the copier may control (its own storage server). Sealed, a payload says nothing
//! until its key is out, and by then every gatherer has pinned what each miner had uploaded (the
//! envelope's signed hash, read when the slot closed): a copy made from a revealed payload comes
//! too late, whatever time its server claims.
//!
//! ChaCha20-Poly1305 with the (network, window, uid) the payload is published under as
//! associated data: a sealed payload re-uploaded under another uid, window or network does not
//! open, even with the right key.

use chacha20poly1305::aead::{Aead, KeyInit, OsRng, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

use crate::network::Network;

pub const KEY_LEN: usize = 32;
/// Bytes sealing adds to a message (the authentication tag).
pub const TAG_LEN: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("a payload key is {KEY_LEN} bytes, got {0}")]
    BadKey(usize),
    #[error(
        "the sealed payload does not open with the revealed key (for uid {uid}, window {window}): \
         altered, or sealed by someone else"
    )]
    DoesNotOpen { uid: u16, window: u64 },
}

/// One window's secret of one miner: fresh for every payload.
#[derive(Clone, PartialEq, Eq)]
pub struct PayloadKey([u8; KEY_LEN]);

impl std::fmt::Debug for PayloadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PayloadKey(…)")
    }
}

impl PayloadKey {
    /// A key from the operating system's randomness.
    pub fn generate() -> PayloadKey {
        PayloadKey(ChaCha20Poly1305::generate_key(&mut OsRng).into())
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<PayloadKey, SealError> {
        Ok(PayloadKey(
            bytes
                .try_into()
                .map_err(|_| SealError::BadKey(bytes.len()))?,
        ))
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

/// Where a payload is published: its associated data and nonce. A key seals one payload, so the
/// nonce need not be secret or random; deriving it from the place keeps a reused key from
/// reusing a nonce across windows.
fn place(network: &Network, window: u64, uid: u16) -> ([u8; 26], [u8; 12]) {
    let mut aad = [0u8; 26];
    aad[..16].copy_from_slice(&network.id());
    aad[16..24].copy_from_slice(&window.to_le_bytes());
    aad[24..].copy_from_slice(&uid.to_le_bytes());
    let mut nonce = [0u8; 12];
    nonce[..8].copy_from_slice(&window.to_le_bytes());
    nonce[8..10].copy_from_slice(&uid.to_le_bytes());
    (aad, nonce)
}

/// `message` sealed under `key` for publication by `uid` in `window` of `network`.
pub fn seal(key: &PayloadKey, network: &Network, window: u64, uid: u16, message: &[u8]) -> Vec<u8> {
    let (aad, nonce) = place(network, window, uid);
    let cipher = ChaCha20Poly1305::new(Key::from_slice(&key.0));
    // Encryption fails only for messages beyond ChaCha20's 256 GiB block counter.
    cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: message,
                aad: &aad,
            },
        )
        .unwrap_or_default()
}

/// The message `sealed` holds, if it was sealed under `key` for this very place.
pub fn open(
    key: &PayloadKey,
    network: &Network,
    window: u64,
    uid: u16,
    sealed: &[u8],
) -> Result<Vec<u8>, SealError> {
    let (aad, nonce) = place(network, window, uid);
    let cipher = ChaCha20Poly1305::new(Key::from_slice(&key.0));
    cipher
        .decrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: sealed,
                aad: &aad,
            },
        )
        .map_err(|_| SealError::DoesNotOpen { uid, window })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_sealed_payload_opens_only_with_its_key_in_its_place() {
        let network = Network::new("seals").unwrap();
        let key = PayloadKey::generate();
        let message = b"gradient message".to_vec();
        let sealed = seal(&key, &network, 7, 3, &message);
        assert_eq!(sealed.len(), message.len() + TAG_LEN);
        assert!(!sealed.windows(8).any(|w| w == &message[..8]), "not hidden");
        assert_eq!(open(&key, &network, 7, 3, &sealed).unwrap(), message);
        let refused = Err(SealError::DoesNotOpen { uid: 4, window: 7 });
        // Another uid (a copier re-uploading it), window or network: refused.
        assert_eq!(open(&key, &network, 7, 4, &sealed), refused);
        assert!(open(&key, &network, 8, 3, &sealed).is_err());
        assert!(open(&key, &Network::new("other").unwrap(), 7, 3, &sealed).is_err());
        // Another key, or a flipped bit: refused.
        assert!(open(&PayloadKey::generate(), &network, 7, 3, &sealed).is_err());
        let mut bent = sealed.clone();
        bent[0] ^= 1;
        assert!(open(&key, &network, 7, 3, &bent).is_err());
        assert!(open(&key, &network, 7, 3, &sealed[..10]).is_err());
    }

    #[test]
    fn keys_are_fresh_and_read_back() {
        let key = PayloadKey::generate();
        assert_ne!(key, PayloadKey::generate());
        assert_eq!(PayloadKey::from_bytes(key.as_bytes()), Ok(key));
        assert_eq!(PayloadKey::from_bytes(&[1; 5]), Err(SealError::BadKey(5)));
    }
}
