//! What nodes publish inside signed envelopes: a miner's gradient message and a validator's
//! window manifest. Both are parsed as untrusted input, with a reason for every rejection.

use serde::{Deserialize, Serialize};
use templar_protocol::Draw;

use crate::fingerprint::{Fingerprint, hex32};

const GRADIENT_MAGIC: &[u8; 4] = b"TPLG";
const GRADIENT_VERSION: u8 = 1;
/// magic, version, receipt, samples, base window, base fingerprint.
pub const GRADIENT_HEADER_LEN: usize = 4 + 1 + 32 + 4 + 8 + 32;

/// A miner's contribution for one window: the codec payload and what it was trained from and on.
#[derive(Debug, Clone, PartialEq)]
pub struct GradientHeader {
    /// Digest of the sample ids trained on, in order (see `templar_data::DataReceipt`).
    pub receipt: [u8; 32],
    /// How many samples of its assignment the miner trained on (a prefix of it).
    pub samples: u32,
    /// The window whose aggregate the miner's starting model included last (`u64::MAX`: none).
    pub base_window: u64,
    /// Fingerprint of the model the miner trained from: validators compare it with their own
    /// history to measure how far behind the miner is.
    pub base_fingerprint: Fingerprint,
}

impl GradientHeader {
    pub fn encode(&self, codec_bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(GRADIENT_HEADER_LEN + codec_bytes.len());
        out.extend_from_slice(GRADIENT_MAGIC);
        out.push(GRADIENT_VERSION);
        out.extend_from_slice(&self.receipt);
        out.extend_from_slice(&self.samples.to_le_bytes());
        out.extend_from_slice(&self.base_window.to_le_bytes());
        out.extend_from_slice(&self.base_fingerprint.0);
        out.extend_from_slice(codec_bytes);
        out
    }

    /// Splits a message into its header and the codec bytes.
    pub fn decode(bytes: &[u8]) -> Result<(GradientHeader, &[u8]), String> {
        if bytes.len() < GRADIENT_HEADER_LEN {
            return Err(format!(
                "{} bytes, shorter than the {GRADIENT_HEADER_LEN}-byte gradient header",
                bytes.len()
            ));
        }
        if &bytes[..4] != GRADIENT_MAGIC {
            return Err("not a gradient message (bad magic)".into());
        }
        if bytes[4] != GRADIENT_VERSION {
            return Err(format!("gradient message version {}", bytes[4]));
        }
        let array = |at: usize| -> [u8; 32] {
            let mut out = [0u8; 32];
            out.copy_from_slice(&bytes[at..at + 32]);
            out
        };
        let mut samples = [0u8; 4];
        samples.copy_from_slice(&bytes[37..41]);
        let mut base_window = [0u8; 8];
        base_window.copy_from_slice(&bytes[41..49]);
        let header = GradientHeader {
            receipt: array(5),
            samples: u32::from_le_bytes(samples),
            base_window: u64::from_le_bytes(base_window),
            base_fingerprint: Fingerprint(array(49)),
        };
        Ok((header, &bytes[GRADIENT_HEADER_LEN..]))
    }
}

/// One included contribution: which miner and the blake3 of its exact gradient message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Included {
    pub uid: u16,
    #[serde(with = "hex32")]
    pub hash: [u8; 32],
}

/// A validator's record of one window: what it aggregated and the model that resulted. Late
/// nodes replay windows from manifests and compare fingerprints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowManifest {
    pub window: u64,
    /// The validator's draw for the window: what it chose which miners and samples to judge
    /// by, published only now that the slot has closed, and checked by every reader against the
    /// validator's hotkey.
    pub draw: Draw,
    /// In aggregation order (ascending uid).
    pub included: Vec<Included>,
    /// The model after applying this window's aggregate.
    pub fingerprint: Fingerprint,
    /// Windows whose aggregates the model includes.
    pub global_step: u64,
    /// The newest checkpoint this validator had published when it wrote the manifest.
    pub checkpoint_window: Option<u64>,
}

/// Manifests are small; anything larger is refused before parsing.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;

impl WindowManifest {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<WindowManifest, String> {
        let manifest: WindowManifest =
            serde_json::from_slice(bytes).map_err(|e| format!("unreadable manifest: {e}"))?;
        if !manifest.included.windows(2).all(|w| w[0].uid < w[1].uid) {
            return Err("manifest uids are not strictly ascending".into());
        }
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn gradient_header_round_trips_and_rejects_garbage() {
        let header = GradientHeader {
            receipt: [7; 32],
            samples: 24,
            base_window: 41,
            base_fingerprint: Fingerprint([9; 32]),
        };
        let bytes = header.encode(b"codec");
        assert_eq!(bytes.len(), GRADIENT_HEADER_LEN + 5);
        let (back, rest) = GradientHeader::decode(&bytes).unwrap();
        assert_eq!((back, rest), (header, &b"codec"[..]));
        assert!(
            GradientHeader::decode(&bytes[..10])
                .unwrap_err()
                .contains("shorter")
        );
        let mut bad = bytes.clone();
        bad[0] = b'X';
        assert!(GradientHeader::decode(&bad).unwrap_err().contains("magic"));
        bad = bytes;
        bad[4] = 9;
        assert!(
            GradientHeader::decode(&bad)
                .unwrap_err()
                .contains("version")
        );
    }

    #[test]
    fn manifests_round_trip_and_unordered_ones_are_refused() {
        let manifest = WindowManifest {
            window: 3,
            draw: Draw([6; templar_protocol::draw::DRAW_LEN]),
            included: vec![
                Included {
                    uid: 1,
                    hash: [1; 32],
                },
                Included {
                    uid: 4,
                    hash: [2; 32],
                },
            ],
            fingerprint: Fingerprint([5; 32]),
            global_step: 3,
            checkpoint_window: None,
        };
        let back = WindowManifest::decode(&manifest.encode()).unwrap();
        assert_eq!(back, manifest);
        let mut swapped = manifest;
        swapped.included.swap(0, 1);
        assert!(WindowManifest::decode(&swapped.encode()).is_err());
        assert!(WindowManifest::decode(b"{").is_err());
    }
}
