//! The model fingerprint: blake3 over every parameter's name, shape and `f32` bits in protocol
//! order. Replicas are bit-identical by construction, so equal fingerprints mean equal models.

use rayon::prelude::*;
use templar_engine::NamedBuffer;

/// Values hashed per `update` call (bounded scratch, large enough to keep blake3 fast).
const CHUNK: usize = 1 << 14;

#[derive(Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Fingerprint(#[serde(with = "hex32")] pub [u8; 32]);

/// One tensor as the fingerprint sees it: name, shape and values, borrowed.
#[derive(Clone, Copy)]
pub struct TensorRef<'a> {
    pub name: &'a str,
    pub shape: &'a [usize],
    pub data: &'a [f32],
}

impl Fingerprint {
    pub fn of(buffers: &[NamedBuffer]) -> Fingerprint {
        let views: Vec<TensorRef<'_>> = buffers
            .iter()
            .map(|b| TensorRef {
                name: &b.name,
                shape: &b.shape,
                data: &b.data,
            })
            .collect();
        Fingerprint::of_tensors(&views)
    }

    /// The fingerprint of tensors held anywhere, without copying them.
    pub fn of_tensors(tensors: &[TensorRef<'_>]) -> Fingerprint {
        let hashes: Vec<[u8; 32]> = tensors.par_iter().map(|t| tensor_hash(t.data)).collect();
        let described = tensors
            .iter()
            .zip(&hashes)
            .map(|(t, h)| (t.name, t.shape, h));
        Fingerprint::combine(described)
    }

    /// The fingerprint from each tensor's name, shape and [`tensor_hash`], in protocol order:
    /// what [`Fingerprint::of_tensors`] gives, for tensors whose hashes were made apart (by the
    /// ranks that hold them).
    pub fn combine<'a>(
        tensors: impl IntoIterator<Item = (&'a str, &'a [usize], &'a [u8; 32])>,
    ) -> Fingerprint {
        let mut hasher = blake3::Hasher::new_derive_key("templar model fingerprint v1");
        for (name, shape, hash) in tensors {
            hasher.update(&(name.len() as u64).to_le_bytes());
            hasher.update(name.as_bytes());
            hasher.update(&(shape.len() as u64).to_le_bytes());
            for dim in shape {
                hasher.update(&(*dim as u64).to_le_bytes());
            }
            hasher.update(hash);
        }
        Fingerprint(*hasher.finalize().as_bytes())
    }

    /// The first 8 bytes in hex, for logs.
    pub fn short(&self) -> String {
        hex32::encode(&self.0)[..16].to_string()
    }
}

/// One tensor's values hashed: blake3 over their little-endian `f32` bits.
pub fn tensor_hash(data: &[f32]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    let mut bytes = Vec::with_capacity(CHUNK * 4);
    for chunk in data.chunks(CHUNK) {
        bytes.clear();
        bytes.extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
        hasher.update(&bytes);
    }
    *hasher.finalize().as_bytes()
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fingerprint({})", self.short())
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex32::encode(&self.0))
    }
}

/// 32-byte arrays as lowercase hex in JSON.
pub mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn encode(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn decode(text: &str) -> Option<[u8; 32]> {
        if text.len() != 64 || !text.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(out)
    }

    pub fn serialize<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        decode(&text).ok_or_else(|| serde::de::Error::custom("expected 64 hex characters"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer(name: &str, data: Vec<f32>) -> NamedBuffer {
        NamedBuffer {
            name: name.into(),
            shape: vec![data.len()],
            data,
        }
    }

    #[test]
    fn any_bit_name_or_shape_change_changes_it() {
        let base = vec![buffer("a", vec![1.0, 2.0]), buffer("b", vec![3.0])];
        let fp = Fingerprint::of(&base);
        assert_eq!(fp, Fingerprint::of(&base.clone()));
        let mut flipped = base.clone();
        flipped[1].data[0] = f32::from_bits(3f32.to_bits() ^ 1);
        assert_ne!(fp, Fingerprint::of(&flipped));
        let mut renamed = base.clone();
        renamed[0].name = "c".into();
        assert_ne!(fp, Fingerprint::of(&renamed));
        let mut reshaped = base;
        reshaped[0].shape = vec![2, 1];
        assert_ne!(fp, Fingerprint::of(&reshaped));
        assert_eq!(hex32::decode(&fp.to_string()), Some(fp.0));
        assert_eq!(hex32::decode("zz"), None);
    }
}
