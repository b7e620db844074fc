//! The network a node belongs to: a short name that appears in object keys and, hashed, in every
//! signed envelope, so objects of one network can never be taken for another's.

use std::fmt;

/// The protocol version; a bump partitions the network (it is part of keys and envelopes).
pub const PROTOCOL_VERSION: u16 = 1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "network name {0:?} is invalid: use 1 to 32 characters of a-z, 0-9 and '-', starting with a letter"
)]
pub struct BadNetworkName(pub String);

/// A validated network name such as `localnet` or `templar-mainnet`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Network {
    name: String,
    id: [u8; 16],
}

impl Network {
    pub fn new(name: &str) -> Result<Network, BadNetworkName> {
        let valid = (1..=32).contains(&name.len())
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !valid {
            return Err(BadNetworkName(name.to_string()));
        }
        Ok(Network::with_id(name, blake3::hash(name.as_bytes())))
    }

    /// The network `name` running the configuration whose digest is `config_digest`: the id
    /// covers both, so a node with a different configuration file is told so by every envelope it
    /// opens instead of silently training another model.
    pub fn with_config(name: &str, config_digest: &[u8; 32]) -> Result<Network, BadNetworkName> {
        let base = Network::new(name)?;
        let mut hasher = blake3::Hasher::new_derive_key("templar network id v1");
        hasher.update(name.as_bytes());
        hasher.update(config_digest);
        Ok(Network::with_id(&base.name, hasher.finalize()))
    }

    fn with_id(name: &str, digest: blake3::Hash) -> Network {
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest.as_bytes()[..16]);
        Network {
            name: name.to_string(),
            id,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The 16-byte identifier carried by envelopes: the first half of blake3(name).
    pub fn id(&self) -> [u8; 16] {
        self.id
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl fmt::Debug for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Network({})", self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(Network::new("localnet").is_ok());
        assert!(Network::new("templar-3").is_ok());
        for bad in ["", "Local", "3net", "a/b", "a b", &"x".repeat(33)] {
            assert!(Network::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ids_differ_between_networks() {
        let a = Network::new("alpha").map(|n| n.id());
        let b = Network::new("beta").map(|n| n.id());
        assert_ne!(a, b);
    }

    #[test]
    fn the_configuration_changes_the_id_but_not_the_name() {
        let plain = Network::new("alpha").map(|n| n.id());
        let one = Network::with_config("alpha", &[1; 32]);
        let two = Network::with_config("alpha", &[2; 32]);
        assert_eq!(one.as_ref().map(Network::name), Ok("alpha"));
        assert_ne!(one.as_ref().map(Network::id), two.as_ref().map(Network::id));
        assert_ne!(one.map(|n| n.id()), plain);
        assert!(Network::with_config("Bad", &[0; 32]).is_err());
    }
}
