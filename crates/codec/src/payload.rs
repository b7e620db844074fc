//! A payload in memory: for each tensor of the schema, the kept positions and their values.

/// Kept values of one tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    Quantized(Quantized),
    F32(Vec<f32>),
    /// bfloat16 bit patterns.
    Bf16(Vec<u16>),
}

/// Quantized values: value `t` decodes to `lookup[codes[t]] + shift`.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantized {
    pub shift: f32,
    /// Bin width used to assign codes; carried for inspection, not needed to decode.
    pub scale: f32,
    /// Mean of the centred values that fell in each bin (0 for an empty bin).
    pub lookup: Vec<f32>,
    pub codes: Vec<u8>,
}

impl Quantized {
    pub fn n_bins(&self) -> u16 {
        self.lookup.len() as u16
    }

    /// `lookup + shift`, multiplied by `factor`: what each code stands for.
    pub fn levels(&self, factor: f32) -> Vec<f32> {
        self.lookup
            .iter()
            .map(|&l| (l + self.shift) * factor)
            .collect()
    }
}

impl Values {
    pub fn len(&self) -> usize {
        match self {
            Values::Quantized(q) => q.codes.len(),
            Values::F32(v) => v.len(),
            Values::Bf16(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All values decoded to f32, in order.
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            Values::Quantized(q) => {
                let levels = q.levels(1.0);
                q.codes.iter().map(|&c| levels[c as usize]).collect()
            }
            Values::F32(v) => v.clone(),
            Values::Bf16(v) => v.iter().map(|&b| bf16_to_f32(b)).collect(),
        }
    }

    /// L2 norm of the decoded values, accumulated in f64 in a fixed order.
    pub fn norm(&self) -> f64 {
        match self {
            Values::Quantized(q) => {
                let counts = count_codes(&q.codes, q.lookup.len());
                let levels = q.levels(1.0);
                let sum: f64 = counts
                    .iter()
                    .zip(&levels)
                    .map(|(&n, &l)| n as f64 * (l as f64).powi(2))
                    .sum();
                sum.sqrt()
            }
            Values::F32(v) => v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt(),
            Values::Bf16(v) => v
                .iter()
                .map(|&b| (bf16_to_f32(b) as f64).powi(2))
                .sum::<f64>()
                .sqrt(),
        }
    }
}

/// How many times each code `0..n_bins` occurs. Few bins: per bin, byte-wide compare-and-add
/// over blocks of 255 (so a u8 counter cannot wrap), which vectorises; many bins: four
/// interleaved histograms, so repeated codes do not stall on each other's stores.
pub fn count_codes(codes: &[u8], n_bins: usize) -> Vec<u64> {
    if n_bins <= 16 {
        let mut counts = vec![0u64; n_bins];
        for block in codes.chunks(255) {
            for (b, count) in counts.iter_mut().enumerate() {
                let hits = block.iter().fold(0u8, |acc, &c| acc + (c == b as u8) as u8);
                *count += hits as u64;
            }
        }
        return counts;
    }
    let mut lanes = [[0u64; 256]; 4];
    let mut quads = codes.chunks_exact(4);
    for q in quads.by_ref() {
        for (lane, &c) in lanes.iter_mut().zip(q) {
            lane[c as usize] += 1;
        }
    }
    for &c in quads.remainder() {
        lanes[0][c as usize] += 1;
    }
    (0..n_bins)
        .map(|b| lanes.iter().map(|l| l[b]).sum())
        .collect()
}

/// One tensor's kept entries: `indices` are chunk-major (`k` per chunk), ascending inside a chunk,
/// and index positions inside the chunk (see [`crate::plan`]).
#[derive(Debug, Clone, PartialEq)]
pub struct SparseTensor {
    pub indices: Vec<u16>,
    pub values: Values,
}

/// A whole pseudo-gradient: one [`SparseTensor`] per schema tensor, in schema order.
#[derive(Debug, Clone, PartialEq)]
pub struct Payload {
    pub tensors: Vec<SparseTensor>,
}

pub fn f32_to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounding = 0x7FFF + ((bits >> 16) & 1);
    (bits.wrapping_add(rounding) >> 16) as u16
}

pub fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(f32_to_bf16(1.0), 0x3F80);
        // 1 + 2^-8 is exactly halfway between bf16 1.0 and 1.0078125: ties go to even (1.0).
        assert_eq!(f32_to_bf16(1.0 + 1.0 / 256.0), 0x3F80);
        // 1 + 3·2^-8 is halfway between 0x3F81 and 0x3F82: ties go to even (0x3F82).
        assert_eq!(f32_to_bf16(1.0 + 3.0 / 256.0), 0x3F82);
        assert_eq!(bf16_to_f32(0xC000), -2.0);
    }

    #[test]
    fn quantized_norm_counts_each_code() {
        let v = Values::Quantized(Quantized {
            shift: 1.0,
            scale: 1.0,
            lookup: vec![-3.0, 2.0],
            codes: vec![0, 1, 1],
        });
        // levels -2 and 3: sqrt(4 + 9 + 9)
        assert!((v.norm() - 22f64.sqrt()).abs() < 1e-12);
        assert_eq!(v.to_f32(), vec![-2.0, 3.0, 3.0]);
    }
}
