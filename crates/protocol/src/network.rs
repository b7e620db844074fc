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
        let digest = blake3::hash(name.as_bytes());
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest.as_bytes()[..16]);
        Ok(Network {
            name: name.to_string(),
            id,
        })
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
}
