//! A validator's randomness for one window: a VRF of its hotkey over (network, window).
//!
//! What a validator judges a window on (which miners, which of their samples, which random
//! samples) must be unknown to miners until the upload slot has closed, or a miner fits exactly
//! those samples. Anything built from public values (the network seed, the window, the
//! validator's uid) can be computed in advance by anyone. The VRF output can be computed only
//! with the validator's secret key, and it is one value per (network, window): the validator
//! cannot grind for a draw that favours a miner. It publishes the output and its proof with the
//! window's manifest, after the slot, and anyone can check them against the hotkey.

use std::fmt;

use schnorrkel::vrf::{VRFPreOut, VRFProof, VRFSigningTranscript};
use schnorrkel::{PublicKey, signing_context};

use crate::keys::{AccountId, Keypair, decode_hex, encode_hex};
use crate::network::Network;

/// The signing context of draws, so a draw is never valid as anything else.
pub const DRAW_CONTEXT: &[u8] = b"templar-window-draw";

/// Bytes of a draw on the wire: the VRF pre-output (32) and the proof (64).
pub const DRAW_LEN: usize = 96;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DrawError {
    #[error("the draw is not {DRAW_LEN} bytes of hex")]
    Malformed,
    #[error("the draw's proof does not verify against hotkey {0} for window {1}")]
    Forged(AccountId, u64),
}

/// A draw as published: the VRF output and its proof.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Draw(pub [u8; DRAW_LEN]);

/// What a verified draw yields: 32 bytes nobody could know before the validator published them.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Randomness([u8; 32]);

impl Randomness {
    /// A 64-bit seed for one use of the randomness; different purposes give independent seeds.
    pub fn seed(&self, purpose: &str) -> u64 {
        let mut hasher = blake3::Hasher::new_derive_key("templar window draw seed");
        hasher.update(&self.0);
        hasher.update(purpose.as_bytes());
        let mut seed = [0u8; 8];
        seed.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
        u64::from_le_bytes(seed)
    }
}

impl fmt::Debug for Randomness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Randomness(0x{}…)", encode_hex(&self.0[..8]))
    }
}

/// The signing context of private draws, which are never published.
const PRIVATE_CONTEXT: &[u8] = b"templar-private-window-draw";

fn transcript(network: &Network, window: u64) -> impl VRFSigningTranscript {
    transcript_in(DRAW_CONTEXT, network, window)
}

fn transcript_in(context: &[u8], network: &Network, window: u64) -> impl VRFSigningTranscript {
    let mut message = Vec::with_capacity(24);
    message.extend_from_slice(&network.id());
    message.extend_from_slice(&window.to_le_bytes());
    signing_context(context).bytes(&message)
}

const RANDOMNESS_CONTEXT: &[u8] = b"templar-window-randomness";

impl Keypair {
    /// This key's draw for `window` of `network`, and the randomness it yields. The output is
    /// the same every time; only the proof's nonce differs.
    pub fn draw(&self, network: &Network, window: u64) -> (Draw, Randomness) {
        let (inout, proof, _) = self.inner().vrf_sign(transcript(network, window));
        let mut bytes = [0u8; DRAW_LEN];
        bytes[..32].copy_from_slice(&inout.to_preout().to_bytes());
        bytes[32..].copy_from_slice(&proof.to_bytes());
        (
            Draw(bytes),
            Randomness(inout.make_bytes::<[u8; 32]>(RANDOMNESS_CONTEXT)),
        )
    }
}

impl Keypair {
    /// Randomness for `window` that only this key computes and that is never published: for
    /// choices that must stay secret after the window too (the published draw becomes public
    /// with the manifest).
    pub fn private_randomness(&self, network: &Network, window: u64) -> Randomness {
        let (inout, _, _) = self
            .inner()
            .vrf_sign(transcript_in(PRIVATE_CONTEXT, network, window));
        Randomness(inout.make_bytes::<[u8; 32]>(RANDOMNESS_CONTEXT))
    }
}

impl Draw {
    /// The randomness of `signer`'s draw for `window`, once its proof checks out.
    pub fn verify(
        &self,
        signer: &AccountId,
        network: &Network,
        window: u64,
    ) -> Result<Randomness, DrawError> {
        let forged = || DrawError::Forged(*signer, window);
        let public = PublicKey::from_bytes(signer.as_bytes()).map_err(|_| forged())?;
        let output = VRFPreOut::from_bytes(&self.0[..32]).map_err(|_| forged())?;
        let proof = VRFProof::from_bytes(&self.0[32..]).map_err(|_| forged())?;
        let (inout, _) = public
            .vrf_verify(transcript(network, window), &output, &proof)
            .map_err(|_| forged())?;
        Ok(Randomness(inout.make_bytes::<[u8; 32]>(RANDOMNESS_CONTEXT)))
    }

    pub fn to_hex(&self) -> String {
        encode_hex(&self.0)
    }

    pub fn from_hex(text: &str) -> Result<Draw, DrawError> {
        let bytes =
            decode_hex(text.strip_prefix("0x").unwrap_or(text)).ok_or(DrawError::Malformed)?;
        Ok(Draw(bytes.try_into().map_err(|_| DrawError::Malformed)?))
    }
}

impl fmt::Debug for Draw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Draw(0x{}…)", encode_hex(&self.0[..8]))
    }
}

impl serde::Serialize for Draw {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for Draw {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Draw, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(d)?;
        Draw::from_hex(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn key(byte: u8) -> Keypair {
        Keypair::from_seed(&[byte; 32]).unwrap()
    }

    #[test]
    fn a_draw_is_one_value_per_window_and_checks_out_for_its_key_only() {
        let network = Network::new("draws").unwrap();
        let validator = key(1);
        let (draw, randomness) = validator.draw(&network, 7);
        // Drawn again, the proof differs but the randomness does not: nothing to grind.
        let (again, same) = validator.draw(&network, 7);
        assert_eq!(same, randomness);
        assert_eq!(draw.0[..32], again.0[..32]);
        assert_eq!(
            draw.verify(&validator.account(), &network, 7),
            Ok(randomness)
        );
        assert_eq!(again.verify(&validator.account(), &network, 7), Ok(same));
        // Another window, network or key gives other randomness, and the draw does not verify
        // for them.
        assert_ne!(validator.draw(&network, 8).1, randomness);
        let other_network = Network::new("other").unwrap();
        assert_ne!(validator.draw(&other_network, 7).1, randomness);
        assert_ne!(key(2).draw(&network, 7).1, randomness);
        // The private randomness is another value, stable, and not derivable from the draw.
        let private = validator.private_randomness(&network, 7);
        assert_eq!(private, validator.private_randomness(&network, 7));
        assert_ne!(private, randomness);
        let forged = Err(DrawError::Forged(validator.account(), 8));
        assert_eq!(draw.verify(&validator.account(), &network, 8), forged);
        assert!(
            draw.verify(&validator.account(), &other_network, 7)
                .is_err()
        );
        assert!(draw.verify(&key(2).account(), &network, 7).is_err());
        // A flipped bit anywhere is refused.
        for i in [0, 31, 32, 95] {
            let mut bent = draw;
            bent.0[i] ^= 1;
            assert!(
                bent.verify(&validator.account(), &network, 7).is_err(),
                "{i}"
            );
        }
    }

    #[test]
    fn seeds_differ_by_purpose_and_draws_round_trip_as_hex() {
        let network = Network::new("draws").unwrap();
        let (draw, randomness) = key(3).draw(&network, 1);
        assert_ne!(randomness.seed("miners"), randomness.seed("samples"));
        assert_eq!(randomness.seed("miners"), randomness.seed("miners"));
        assert_eq!(Draw::from_hex(&draw.to_hex()), Ok(draw));
        assert_eq!(Draw::from_hex("0x12"), Err(DrawError::Malformed));
        assert_eq!(Draw::from_hex("zz"), Err(DrawError::Malformed));
    }
}
