//! Wallets in Bittensor's layout, so existing Bittensor keys work unchanged:
//!
//! ```text
//! ~/.bittensor/wallets/NAME/coldkey          coldkey keyfile ($NACL-encrypted, or plain JSON with --no-password)
//! ~/.bittensor/wallets/NAME/coldkeypub.txt   the coldkey's public part (JSON)
//! ~/.bittensor/wallets/NAME/hotkeys/HOTKEY   hotkey keyfile (plain JSON, as Bittensor writes it)
//! ```
//!
//! A keyfile is JSON with `accountId`, `publicKey`, `privateKey`, `secretPhrase`, `secretSeed`
//! and `ss58Address`. Encryption is Bittensor's: `$NACL` + 24-byte nonce + NaCl secretbox,
//! keyed by Argon2i (libsodium's "sensitive" limits: 8 passes, 512 MiB) over Bittensor's fixed salt.

use std::path::{Path, PathBuf};

use argon2::{Algorithm, Argon2, Params, Version};
use serde::{Deserialize, Serialize};
use templar_protocol::keys::{decode_hex, encode_hex};
use templar_protocol::{AccountId, Keypair};
use xsalsa20poly1305::XSalsa20Poly1305;
use xsalsa20poly1305::aead::{Aead, KeyInit};

const NACL_MAGIC: &[u8] = b"$NACL";
const NACL_SALT: &[u8; 16] = b"\x13q\x83\xdf\xf1Z\t\xbc\x9c\x90\xb5Q\x879\xe9\xb1";
const ARGON2_PASSES: u32 = 8;
const ARGON2_MEMORY_KIB: u32 = 512 * 1024;
const NONCE_LEN: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum WalletError {
    #[error("{0} does not exist: create it with `templar wallet create`")]
    Missing(PathBuf),
    #[error("{0} already exists; refusing to overwrite a key")]
    Exists(PathBuf),
    #[error("{path}: {reason}")]
    BadKeyfile { path: PathBuf, reason: String },
    #[error("{0} is encrypted: a password is needed")]
    PasswordNeeded(PathBuf),
    #[error("{0}: wrong password (or a damaged keyfile)")]
    WrongPassword(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The JSON inside a keyfile, with Bittensor's field names.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeyfileJson {
    account_id: Option<String>,
    public_key: Option<String>,
    private_key: Option<String>,
    secret_phrase: Option<String>,
    secret_seed: Option<String>,
    ss58_address: Option<String>,
}

/// A new key with the mnemonic it came from.
pub struct NewKey {
    pub keypair: Keypair,
    pub mnemonic: String,
}

/// Creates a key from a fresh 12-word mnemonic, as `btcli wallet create` does.
pub fn generate_key() -> NewKey {
    let mut entropy = [0u8; 16];
    // getrandom fails only when the OS has no entropy source at all.
    getrandom::fill(&mut entropy).unwrap_or_else(|e| panic!("no OS randomness: {e}"));
    let mnemonic = bip39::Mnemonic::from_entropy(&entropy)
        .unwrap_or_else(|_| unreachable!("16 bytes are valid BIP-39 entropy"));
    let text = mnemonic.to_string();
    NewKey {
        keypair: keypair_from_mnemonic(&text).unwrap_or_else(|_| unreachable!()),
        mnemonic: text,
    }
}

/// The key Substrate (and so Bittensor) derives from a BIP-39 mnemonic, with no password.
pub fn keypair_from_mnemonic(phrase: &str) -> Result<Keypair, String> {
    let mnemonic = bip39::Mnemonic::parse(phrase).map_err(|e| format!("invalid mnemonic: {e}"))?;
    let seed = substrate_bip39::seed_from_entropy(&mnemonic.to_entropy(), "")
        .map_err(|e| format!("invalid mnemonic entropy: {e:?}"))?;
    Keypair::from_seed(&seed[..32]).map_err(|e| e.to_string())
}

fn keyfile_json(keypair: &Keypair, mnemonic: Option<&str>, public_only: bool) -> KeyfileJson {
    let account = keypair.account();
    let secret = |value: String| (!public_only).then_some(value);
    KeyfileJson {
        account_id: Some(account.to_hex()),
        public_key: Some(account.to_hex()),
        private_key: secret(format!("0x{}", encode_hex(&keypair.secret_key_bytes()))),
        secret_phrase: mnemonic.and_then(|m| secret(m.to_string())),
        secret_seed: keypair
            .seed()
            .and_then(|s| secret(format!("0x{}", encode_hex(s)))),
        ss58_address: Some(account.to_ss58()),
    }
}

fn derive_key(password: &str) -> [u8; 32] {
    let params = Params::new(ARGON2_MEMORY_KIB, ARGON2_PASSES, 1, Some(32))
        .unwrap_or_else(|_| unreachable!("constant Argon2 parameters are valid"));
    let mut key = [0u8; 32];
    Argon2::new(Algorithm::Argon2i, Version::V0x13, params)
        .hash_password_into(password.as_bytes(), NACL_SALT, &mut key)
        .unwrap_or_else(|_| unreachable!("constant salt and output length are valid"));
    key
}

/// Encrypts keyfile bytes the way Bittensor does (`$NACL` format).
pub fn encrypt(data: &[u8], password: &str) -> Vec<u8> {
    let cipher = XSalsa20Poly1305::new(&derive_key(password).into());
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).unwrap_or_else(|e| panic!("no OS randomness: {e}"));
    let sealed = cipher
        .encrypt(&nonce.into(), data)
        .unwrap_or_else(|_| unreachable!("secretbox encryption cannot fail"));
    [NACL_MAGIC, &nonce, &sealed].concat()
}

pub fn is_encrypted(data: &[u8]) -> bool {
    data.starts_with(NACL_MAGIC)
}

fn decrypt(path: &Path, data: &[u8], password: &str) -> Result<Vec<u8>, WalletError> {
    let body = &data[NACL_MAGIC.len()..];
    if body.len() < NONCE_LEN {
        return Err(WalletError::BadKeyfile {
            path: path.to_path_buf(),
            reason: "encrypted keyfile is truncated".into(),
        });
    }
    let (nonce, sealed) = body.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().unwrap_or([0; NONCE_LEN]);
    XSalsa20Poly1305::new(&derive_key(password).into())
        .decrypt(&nonce.into(), sealed)
        .map_err(|_| WalletError::WrongPassword(path.to_path_buf()))
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), WalletError> {
    let io = |source| WalletError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let staging = path.with_extension("partial");
    std::fs::write(&staging, data).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    std::fs::rename(&staging, path).map_err(io)
}

fn parse_keyfile(path: &Path, data: &[u8]) -> Result<KeyfileJson, WalletError> {
    serde_json::from_slice(data).map_err(|e| WalletError::BadKeyfile {
        path: path.to_path_buf(),
        reason: format!("not a Bittensor keyfile: {e}"),
    })
}

fn keypair_from_json(path: &Path, json: &KeyfileJson) -> Result<Keypair, WalletError> {
    let bad = |reason: &str| WalletError::BadKeyfile {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let hex = |field: &Option<String>| {
        field
            .as_deref()
            .and_then(|t| decode_hex(t.strip_prefix("0x").unwrap_or(t)))
    };
    let keypair = if let Some(seed) = hex(&json.secret_seed) {
        Keypair::from_seed(&seed).map_err(|e| bad(&e.to_string()))?
    } else if let Some(secret) = hex(&json.private_key) {
        Keypair::from_secret_key(&secret).map_err(|e| bad(&e.to_string()))?
    } else {
        return Err(bad("has no secretSeed or privateKey"));
    };
    if let Some(address) = &json.ss58_address
        && AccountId::from_ss58(address).ok() != Some(keypair.account())
    {
        return Err(bad("ss58Address does not match the secret key"));
    }
    Ok(keypair)
}

/// A named wallet under a wallets directory.
#[derive(Clone, Debug)]
pub struct Wallet {
    pub root: PathBuf,
    pub name: String,
}

/// `$BT_WALLET_PATH`, else `~/.bittensor/wallets`, as Bittensor resolves it.
pub fn default_wallets_dir() -> PathBuf {
    if let Ok(path) = std::env::var("BT_WALLET_PATH") {
        return PathBuf::from(path);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
    PathBuf::from(home).join(".bittensor/wallets")
}

impl Wallet {
    pub fn new(root: impl Into<PathBuf>, name: &str) -> Wallet {
        Wallet {
            root: root.into(),
            name: name.to_string(),
        }
    }

    pub fn dir(&self) -> PathBuf {
        self.root.join(&self.name)
    }

    pub fn coldkey_path(&self) -> PathBuf {
        self.dir().join("coldkey")
    }

    pub fn coldkeypub_path(&self) -> PathBuf {
        self.dir().join("coldkeypub.txt")
    }

    pub fn hotkey_path(&self, hotkey: &str) -> PathBuf {
        self.dir().join("hotkeys").join(hotkey)
    }

    /// Writes a coldkey (encrypted unless `password` is `None`) and its public file.
    pub fn create_coldkey(&self, key: &NewKey, password: Option<&str>) -> Result<(), WalletError> {
        let path = self.coldkey_path();
        if path.exists() {
            return Err(WalletError::Exists(path));
        }
        let json = serde_json::to_vec(&keyfile_json(&key.keypair, Some(&key.mnemonic), false))
            .unwrap_or_default();
        let data = match password {
            Some(password) => encrypt(&json, password),
            None => json,
        };
        write_private(&path, &data)?;
        let public =
            serde_json::to_vec(&keyfile_json(&key.keypair, None, true)).unwrap_or_default();
        write_private(&self.coldkeypub_path(), &public)
    }

    /// Writes a hotkey keyfile (unencrypted, as Bittensor stores hotkeys).
    pub fn create_hotkey(&self, hotkey: &str, key: &NewKey) -> Result<(), WalletError> {
        let path = self.hotkey_path(hotkey);
        if path.exists() {
            return Err(WalletError::Exists(path));
        }
        let json = serde_json::to_vec(&keyfile_json(&key.keypair, Some(&key.mnemonic), false))
            .unwrap_or_default();
        write_private(&path, &json)
    }

    fn read(path: &Path) -> Result<Vec<u8>, WalletError> {
        std::fs::read(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => WalletError::Missing(path.to_path_buf()),
            _ => WalletError::Io {
                path: path.to_path_buf(),
                source,
            },
        })
    }

    /// Loads the coldkey; `password` is asked for only when the keyfile is encrypted.
    pub fn coldkey(
        &self,
        password: impl FnOnce() -> Option<String>,
    ) -> Result<Keypair, WalletError> {
        let path = self.coldkey_path();
        load_keyfile(&path, &Self::read(&path)?, password)
    }

    /// The coldkey's public key, without any password.
    pub fn coldkey_account(&self) -> Result<AccountId, WalletError> {
        let path = self.coldkeypub_path();
        let json = parse_keyfile(&path, &Self::read(&path)?)?;
        json.ss58_address
            .as_deref()
            .and_then(|a| AccountId::from_ss58(a).ok())
            .ok_or_else(|| WalletError::BadKeyfile {
                path,
                reason: "no valid ss58Address".into(),
            })
    }

    pub fn hotkey(&self, hotkey: &str) -> Result<Keypair, WalletError> {
        let path = self.hotkey_path(hotkey);
        load_keyfile(&path, &Self::read(&path)?, || None)
    }

    /// Names of this wallet's hotkeys, sorted.
    pub fn hotkey_names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir().join("hotkeys"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.ends_with(".partial"))
            .collect();
        names.sort();
        names
    }
}

fn load_keyfile(
    path: &Path,
    data: &[u8],
    password: impl FnOnce() -> Option<String>,
) -> Result<Keypair, WalletError> {
    let plain = if is_encrypted(data) {
        let password = password().ok_or_else(|| WalletError::PasswordNeeded(path.to_path_buf()))?;
        decrypt(path, data, &password)?
    } else {
        data.to_vec()
    };
    keypair_from_json(path, &parse_keyfile(path, &plain)?)
}

/// The wallets under `root`, sorted by name.
pub fn list_wallets(root: &Path) -> Vec<Wallet> {
    let mut wallets: Vec<Wallet> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .map(|name| Wallet::new(root, &name))
        .collect();
    wallets.sort_by(|a, b| a.name.cmp(&b.name));
    wallets
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn mnemonic_derivation_matches_substrate() {
        // Substrate's development phrase; its root key is a published test vector.
        let dev = "bottom drive obey lake curtain smoke basket hold race lonely fit walk";
        let pair = keypair_from_mnemonic(dev).unwrap();
        assert_eq!(
            pair.account().to_hex(),
            "0x46ebddef8cd9bb167dc30878d7113b7e168e6f0646beffd77d69d39bad76b47a"
        );
        assert!(keypair_from_mnemonic("not a mnemonic").is_err());
    }

    #[test]
    fn plain_wallet_round_trip_and_no_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let wallet = Wallet::new(dir.path(), "alice");
        let cold = generate_key();
        let hot = generate_key();
        wallet.create_coldkey(&cold, None).unwrap();
        wallet.create_hotkey("default", &hot).unwrap();
        assert_eq!(
            wallet.coldkey(|| None).unwrap().account(),
            cold.keypair.account()
        );
        assert_eq!(wallet.coldkey_account().unwrap(), cold.keypair.account());
        assert_eq!(
            wallet.hotkey("default").unwrap().account(),
            hot.keypair.account()
        );
        assert_eq!(wallet.hotkey_names(), vec!["default".to_string()]);
        assert!(matches!(
            wallet.create_hotkey("default", &generate_key()),
            Err(WalletError::Exists(_))
        ));
        assert!(matches!(
            wallet.hotkey("missing"),
            Err(WalletError::Missing(_))
        ));
        let text = std::fs::read_to_string(wallet.hotkey_path("default")).unwrap();
        for field in [
            "accountId",
            "publicKey",
            "privateKey",
            "secretPhrase",
            "secretSeed",
            "ss58Address",
        ] {
            assert!(text.contains(field), "{field} missing from {text}");
        }
    }

    #[test]
    fn encrypted_coldkey_needs_the_right_password() {
        let dir = tempfile::tempdir().unwrap();
        let wallet = Wallet::new(dir.path(), "bob");
        let cold = generate_key();
        wallet.create_coldkey(&cold, Some("correct horse")).unwrap();
        let raw = std::fs::read(wallet.coldkey_path()).unwrap();
        assert!(raw.starts_with(b"$NACL"));
        assert!(matches!(
            wallet.coldkey(|| None),
            Err(WalletError::PasswordNeeded(_))
        ));
        assert!(matches!(
            wallet.coldkey(|| Some("wrong".into())),
            Err(WalletError::WrongPassword(_))
        ));
        let loaded = wallet.coldkey(|| Some("correct horse".into())).unwrap();
        assert_eq!(loaded.account(), cold.keypair.account());
    }

    #[test]
    fn keyfiles_with_only_a_private_key_load() {
        let dir = tempfile::tempdir().unwrap();
        let key = generate_key();
        let mut json = keyfile_json(&key.keypair, None, false);
        json.secret_seed = None;
        let path = dir.path().join("hk");
        std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
        let loaded = load_keyfile(&path, &std::fs::read(&path).unwrap(), || None).unwrap();
        assert_eq!(loaded.account(), key.keypair.account());
        std::fs::write(&path, b"{\"ss58Address\": \"x\"}").unwrap();
        assert!(load_keyfile(&path, &std::fs::read(&path).unwrap(), || None).is_err());
    }
}
