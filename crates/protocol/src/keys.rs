//! sr25519 keys as Bittensor uses them: 32-byte public keys shown as SS58 addresses (prefix 42),
//! key pairs expanded from a 32-byte mini secret ("secret seed") the way Substrate does.

use std::fmt;
use std::str::FromStr;

use blake2::{Blake2b512, Digest};
use schnorrkel::{ExpansionMode, MiniSecretKey};

/// The SS58 address prefix of Bittensor (and of generic Substrate chains).
pub const SS58_PREFIX: u8 = 42;

/// The signing context Substrate uses for sr25519, so that a signature by a hotkey means the same
/// thing here and on a Substrate chain.
pub const SUBSTRATE_CONTEXT: &[u8] = b"substrate";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("{0:?} is not a valid SS58 address: {1}")]
    BadAddress(String, &'static str),
    #[error("an sr25519 secret seed must be 32 bytes, got {0}")]
    BadSeedLength(usize),
    #[error("an sr25519 secret key must be 64 bytes (key and nonce), got {0}")]
    BadSecretKey(usize),
    #[error("{0} bytes are not a valid sr25519 public key")]
    BadPublicKey(usize),
}

/// A 32-byte sr25519 public key: the identity of a hotkey or a coldkey.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId(pub [u8; 32]);

impl AccountId {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_ss58(&self) -> String {
        let mut raw = Vec::with_capacity(35);
        raw.push(SS58_PREFIX);
        raw.extend_from_slice(&self.0);
        let checksum = ss58_checksum(&raw);
        raw.extend_from_slice(&checksum[..2]);
        bs58::encode(raw).into_string()
    }

    pub fn from_ss58(address: &str) -> Result<AccountId, KeyError> {
        let bad = |why| KeyError::BadAddress(address.to_string(), why);
        let raw = bs58::decode(address)
            .into_vec()
            .map_err(|_| bad("not base58"))?;
        if raw.len() != 35 {
            return Err(bad("wrong length for a 32-byte account"));
        }
        if raw[0] != SS58_PREFIX {
            return Err(bad("network prefix is not 42 (Bittensor)"));
        }
        let checksum = ss58_checksum(&raw[..33]);
        if raw[33..] != checksum[..2] {
            return Err(bad("checksum mismatch"));
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(&raw[1..33]);
        Ok(AccountId(key))
    }

    /// Parses `0x`-prefixed or bare hex of 32 bytes.
    pub fn from_hex(text: &str) -> Option<AccountId> {
        let bytes = decode_hex(text.strip_prefix("0x").unwrap_or(text))?;
        Some(AccountId(bytes.try_into().ok()?))
    }

    pub fn to_hex(&self) -> String {
        format!("0x{}", encode_hex(&self.0))
    }
}

fn ss58_checksum(prefixed: &[u8]) -> [u8; 64] {
    let mut hasher = Blake2b512::new();
    hasher.update(b"SS58PRE");
    hasher.update(prefixed);
    hasher.finalize().into()
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_ss58())
    }
}

impl fmt::Debug for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccountId({})", self.to_ss58())
    }
}

impl FromStr for AccountId {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AccountId::from_ss58(s)
    }
}

impl serde::Serialize for AccountId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_ss58())
    }
}

impl<'de> serde::Deserialize<'de> for AccountId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        AccountId::from_ss58(&text).map_err(serde::de::Error::custom)
    }
}

/// A 64-byte sr25519 signature.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature(0x{}…)", encode_hex(&self.0[..8]))
    }
}

/// An sr25519 key pair that can sign; the secret never appears in `Debug` output.
#[derive(Clone)]
pub struct Keypair {
    inner: schnorrkel::Keypair,
    seed: Option<[u8; 32]>,
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keypair({})", self.account())
    }
}

impl Keypair {
    /// Expands a 32-byte mini secret the way Substrate's `sr25519::Pair::from_seed` does.
    pub fn from_seed(seed: &[u8]) -> Result<Keypair, KeyError> {
        let mini =
            MiniSecretKey::from_bytes(seed).map_err(|_| KeyError::BadSeedLength(seed.len()))?;
        let mut kept = [0u8; 32];
        kept.copy_from_slice(seed);
        Ok(Keypair {
            inner: mini.expand_to_keypair(ExpansionMode::Ed25519),
            seed: Some(kept),
        })
    }

    /// Loads a 64-byte expanded secret key (scalar and nonce), as in a keyfile's `privateKey`.
    pub fn from_secret_key(secret: &[u8]) -> Result<Keypair, KeyError> {
        let key = schnorrkel::SecretKey::from_bytes(secret)
            .map_err(|_| KeyError::BadSecretKey(secret.len()))?;
        Ok(Keypair {
            inner: key.to_keypair(),
            seed: None,
        })
    }

    /// A fresh random key pair and its seed.
    pub fn generate() -> Keypair {
        let mini = MiniSecretKey::generate();
        // A MiniSecretKey always has exactly 32 bytes, so this cannot fail.
        Keypair::from_seed(mini.as_bytes()).unwrap_or_else(|_| unreachable!())
    }

    pub fn account(&self) -> AccountId {
        AccountId(self.inner.public.to_bytes())
    }

    pub fn seed(&self) -> Option<&[u8; 32]> {
        self.seed.as_ref()
    }

    pub(crate) fn inner(&self) -> &schnorrkel::Keypair {
        &self.inner
    }

    pub fn secret_key_bytes(&self) -> [u8; 64] {
        self.inner.secret.to_bytes()
    }

    /// Signs `message` under `context`; different contexts keep one kind of signed message from
    /// being replayed as another.
    pub fn sign(&self, context: &[u8], message: &[u8]) -> Signature {
        Signature(self.inner.sign_simple(context, message).to_bytes())
    }
}

/// Whether `signature` is `account`'s signature of `message` under `context`.
pub fn verify(account: &AccountId, context: &[u8], message: &[u8], signature: &Signature) -> bool {
    let Ok(public) = schnorrkel::PublicKey::from_bytes(&account.0) else {
        return false;
    };
    let Ok(signature) = schnorrkel::Signature::from_bytes(&signature.0) else {
        return false;
    };
    public.verify_simple(context, message, &signature).is_ok()
}

pub fn encode_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[(byte >> 4) as usize] as char);
        out.push(DIGITS[(byte & 15) as usize] as char);
    }
    out
}

pub fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn alice_address_matches_substrate() {
        let alice = AccountId::from_hex(
            "0xd43593c715fdd31c61141abd04a99fd6822c8558854ccde39a5684e7a56da27d",
        )
        .unwrap();
        assert_eq!(
            alice.to_ss58(),
            "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"
        );
        assert_eq!(AccountId::from_ss58(&alice.to_ss58()).unwrap(), alice);
    }

    #[test]
    fn seed_expands_like_substrate() {
        // sp-core's sr25519 `seeded_pair_should_work` vector.
        let pair = Keypair::from_seed(b"12345678901234567890123456789012").unwrap();
        assert_eq!(
            pair.account().to_hex(),
            "0x741c08a06f41c596608f6774259bd9043304adfa5d3eea62760bd9be97634d63"
        );
    }

    #[test]
    fn bad_addresses_are_named() {
        let alice = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY";
        let mut corrupted = alice.to_string();
        corrupted.replace_range(10..11, "b");
        assert!(matches!(
            AccountId::from_ss58(&corrupted),
            Err(KeyError::BadAddress(_, "checksum mismatch"))
        ));
        assert!(AccountId::from_ss58("0OIl").is_err());
        assert!(AccountId::from_ss58("5Grw").is_err());
    }

    #[test]
    fn signatures_verify_only_for_their_key_context_and_message() {
        let pair = Keypair::generate();
        let other = Keypair::generate();
        let signature = pair.sign(b"ctx", b"hello");
        assert!(verify(&pair.account(), b"ctx", b"hello", &signature));
        assert!(!verify(&other.account(), b"ctx", b"hello", &signature));
        assert!(!verify(&pair.account(), b"other", b"hello", &signature));
        assert!(!verify(&pair.account(), b"ctx", b"hellO", &signature));
        assert!(!verify(
            &pair.account(),
            b"ctx",
            b"hello",
            &Signature([0; 64])
        ));
    }

    #[test]
    fn secret_key_round_trip_keeps_the_account() {
        let pair = Keypair::generate();
        let again = Keypair::from_secret_key(&pair.secret_key_bytes()).unwrap();
        assert_eq!(again.account(), pair.account());
    }
}
