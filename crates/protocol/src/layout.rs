//! Object keys. Every key starts with `{network}/v{protocol version}/`, so networks and protocol
//! versions never read each other's objects even in one bucket; windows are zero-padded so that
//! a listing is in window order.
//!
//! | object | key |
//! |---|---|
//! | gradient | `{network}/v1/gradient/{window:010}/{uid:05}.tpl` |
//! | payload key | `{network}/v1/payload-key/{window:010}/{uid:05}.tpl` |
//! | manifest | `{network}/v1/manifest/{window:010}/{uid:05}.tpl` |
//! | checkpoint file | `{network}/v1/checkpoint/{window:010}/{file}` |
//! | checkpoint pointer | `{network}/v1/checkpoint/latest` |

use crate::envelope::Kind;
use crate::network::{Network, PROTOCOL_VERSION};

/// The prefix of every key of `network` at this protocol version.
pub fn network_prefix(network: &Network) -> String {
    format!("{}/v{}", network.name(), PROTOCOL_VERSION)
}

fn kind_dir(kind: Kind) -> &'static str {
    match kind {
        Kind::Gradient => "gradient",
        Kind::Manifest => "manifest",
        Kind::Checkpoint => "checkpoint",
        Kind::PayloadKey => "payload-key",
    }
}

/// The prefix under which all objects of `kind` live, window by window.
pub fn kind_prefix(network: &Network, kind: Kind) -> String {
    format!("{}/{}", network_prefix(network), kind_dir(kind))
}

/// The key of the signed object a uid publishes for a window.
pub fn object_key(network: &Network, kind: Kind, window: u64, uid: u16) -> String {
    format!("{}/{window:010}/{uid:05}.tpl", kind_prefix(network, kind))
}

pub fn checkpoint_file_key(network: &Network, window: u64, file: &str) -> String {
    format!(
        "{}/{window:010}/{file}",
        kind_prefix(network, Kind::Checkpoint)
    )
}

pub fn checkpoint_latest_key(network: &Network) -> String {
    format!("{}/latest", kind_prefix(network, Kind::Checkpoint))
}

/// Reads `(window, uid)` back from a key made by [`object_key`]; `None` for any other key.
pub fn parse_object_key(network: &Network, kind: Kind, key: &str) -> Option<(u64, u16)> {
    let rest = key
        .strip_prefix(&kind_prefix(network, kind))?
        .strip_prefix('/')?;
    let (window, file) = rest.split_once('/')?;
    let uid = file.strip_suffix(".tpl")?;
    if window.len() != 10 || uid.len() != 5 {
        return None;
    }
    Some((window.parse().ok()?, uid.parse().ok()?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keys_are_documented_and_parse_back() {
        let net = Network::new("localnet").unwrap();
        let key = object_key(&net, Kind::Gradient, 42, 7);
        assert_eq!(key, "localnet/v1/gradient/0000000042/00007.tpl");
        assert_eq!(parse_object_key(&net, Kind::Gradient, &key), Some((42, 7)));
        assert_eq!(parse_object_key(&net, Kind::Manifest, &key), None);
        assert_eq!(
            parse_object_key(&net, Kind::Gradient, "localnet/v1/gradient/42/7.tpl"),
            None
        );
        assert_eq!(checkpoint_latest_key(&net), "localnet/v1/checkpoint/latest");
        assert_eq!(
            checkpoint_file_key(&net, 3, "model.safetensors"),
            "localnet/v1/checkpoint/0000000003/model.safetensors"
        );
    }

    #[test]
    fn window_order_is_listing_order() {
        let net = Network::new("n").unwrap();
        let a = object_key(&net, Kind::Gradient, 9, 1);
        let b = object_key(&net, Kind::Gradient, 10, 1);
        assert!(a < b);
    }
}
