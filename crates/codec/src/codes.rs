//! Dense packing of value codes: `bits` bits each, little-endian by bit (4 per byte at 2 bits).

use crate::bits::{BitReader, BitWriter};
use crate::error::DecodeError;

pub fn pack(codes: &[u8], bits: u32) -> Vec<u8> {
    match bits {
        8 => codes.to_vec(),
        2 => codes
            .chunks(4)
            .map(|c| {
                c.iter()
                    .enumerate()
                    .fold(0u8, |acc, (i, &q)| acc | (q << (2 * i)))
            })
            .collect(),
        _ => {
            let mut w = BitWriter::with_capacity((codes.len() * bits as usize).div_ceil(8));
            for &q in codes {
                w.write(q as u32, bits);
            }
            w.finish()
        }
    }
}

/// Unpacks `n` codes and checks each is below `n_bins` and that padding bits are zero.
/// The caller has checked `bytes.len() == ⌈n·bits/8⌉`.
pub fn unpack(
    bytes: &[u8],
    n: usize,
    bits: u32,
    n_bins: u16,
    tensor: &str,
) -> Result<Vec<u8>, DecodeError> {
    let codes = match bits {
        8 => bytes.to_vec(),
        2 => {
            // Four codes a byte, spread into a u32 at once: pushing them one by one checked the
            // vector's capacity for every code.
            let mut out = vec![0u8; bytes.len() * 4];
            for (quad, &b) in out.chunks_exact_mut(4).zip(bytes) {
                let b = b as u32;
                let spread = (b & 3) | (b >> 2 & 3) << 8 | (b >> 4 & 3) << 16 | (b >> 6) << 24;
                quad.copy_from_slice(&spread.to_le_bytes());
            }
            if out[n..].iter().any(|&q| q != 0) {
                return Err(padding(tensor));
            }
            out.truncate(n);
            out
        }
        _ => {
            let mut r = BitReader::new(bytes);
            let out: Vec<u8> = (0..n).map(|_| r.read(bits) as u8).collect();
            if !r.padding_is_zero() {
                return Err(padding(tensor));
            }
            out
        }
    };
    if (n_bins as u32) < 1 << bits
        && let Some(position) = codes.iter().position(|&q| q as u16 >= n_bins)
    {
        return Err(DecodeError::CodeOutOfRange {
            tensor: tensor.into(),
            position,
            code: codes[position],
            n_bins,
        });
    }
    Ok(codes)
}

fn padding(tensor: &str) -> DecodeError {
    DecodeError::Padding {
        tensor: tensor.into(),
        section: "value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_bit_codes_pack_four_per_byte() {
        assert_eq!(pack(&[1, 2, 3, 0, 3], 2), vec![0b00_11_10_01, 0b11]);
        assert_eq!(
            unpack(&[0b00_11_10_01, 0b11], 5, 2, 4, "t").unwrap(),
            vec![1, 2, 3, 0, 3]
        );
    }

    #[test]
    fn odd_widths_round_trip() {
        let codes: Vec<u8> = (0..37).map(|i| (i * 5 % 6) as u8).collect();
        let bytes = pack(&codes, 3);
        assert_eq!(bytes.len(), (37 * 3usize).div_ceil(8));
        assert_eq!(unpack(&bytes, 37, 3, 6, "t").unwrap(), codes);
    }

    #[test]
    fn codes_beyond_the_bins_and_dirty_padding_are_errors() {
        // 6 bins in 3 bits: code 7 is invalid
        let bytes = pack(&[1, 7], 3);
        assert!(matches!(
            unpack(&bytes, 2, 3, 6, "t"),
            Err(DecodeError::CodeOutOfRange {
                position: 1,
                code: 7,
                ..
            })
        ));
        assert!(matches!(
            unpack(&[0b1100_0000], 3, 2, 4, "t"),
            Err(DecodeError::Padding { .. })
        ));
    }
}
