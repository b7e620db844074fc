//! Tensor-wide value quantization with a lookup table of bin means.
//!
//! Both quantizers centre the kept values on their mean (`shift`), take
//! `σ = ‖c‖₂/√(n−1)` and `scale = range·σ/n_bins`, assign each value a code, and store for
//! each bin the mean of the centred values that fell in it. Decoding is `lookup[code] + shift`,
//! so the receiver never needs to know which rule assigned the codes.
//!
//! - [`Rule::Symmetric`] (ours): mid-rise, `code = clamp(⌊c/scale⌋ + n_bins/2, 0, n_bins−1)`. Bins
//!   are mirror images around the mean and no level sits at zero — right for top-k values, which
//!   are by construction far from zero.
//! - [`Rule::Upstream`]: Templar's mid-tread `code = clamp(round(c/scale + n_bins/2))`, whose levels
//!   are asymmetric (`{−2,−1,0,+1}·scale` at 2 bits) and whose zero level is nearly unused.
//!
//! `templar bench quantizer` compares the two; `docs/codec.md` records the result.

use rayon::prelude::*;

use crate::payload::Quantized;

/// Scale bounds a receiver accepts; the sender clamps into them.
pub const MIN_SCALE: f32 = 1e-12;
pub const MAX_SCALE: f32 = 1e4;

const BLOCK: usize = 1 << 15;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    Symmetric,
    Upstream,
}

/// Quantizes `values` into `n_bins` (even, 2..=256) codes.
pub fn quantize(values: &[f32], n_bins: u16, range: f32, rule: Rule) -> Quantized {
    let (shift, sigma) = mean_and_std(values);
    let scale = scale_for(sigma, range, n_bins);
    let mut codes = vec![0u8; values.len()];
    let partials: Vec<BinSums> = values
        .par_chunks(BLOCK)
        .zip(codes.par_chunks_mut(BLOCK))
        .map(|(v, c)| assign_block(v, c, shift, scale, n_bins, rule))
        .collect();
    let mut total = BinSums::new(n_bins);
    for p in &partials {
        total.add(p);
    }
    Quantized {
        shift,
        scale,
        lookup: total.means(),
        codes,
    }
}

/// `range·σ/n_bins`, falling back to 1 when σ is zero or not finite, clamped to the accepted bounds.
pub fn scale_for(sigma: f64, range: f32, n_bins: u16) -> f32 {
    let scale = (range as f64 * sigma / n_bins as f64) as f32;
    if scale.is_finite() && scale > 0.0 {
        scale.clamp(MIN_SCALE, MAX_SCALE)
    } else {
        1.0
    }
}

/// Mean and sample standard deviation, summed in f64 over fixed blocks in a fixed order.
pub fn mean_and_std(values: &[f32]) -> (f32, f64) {
    let n = values.len();
    if n == 0 {
        return (0.0, 0.0);
    }
    let sum: f64 = block_sums(values, |x| x as f64);
    let mean = sum / n as f64;
    let shift = mean as f32;
    let sq: f64 = block_sums(values, |x| {
        let c = (x - shift) as f64;
        c * c
    });
    let sigma = if n > 1 {
        (sq / (n - 1) as f64).sqrt()
    } else {
        0.0
    };
    (shift, sigma)
}

fn block_sums(values: &[f32], f: impl Fn(f32) -> f64 + Sync) -> f64 {
    let partials: Vec<f64> = values
        .par_chunks(BLOCK)
        .map(|b| b.iter().map(|&x| f(x)).sum::<f64>())
        .collect();
    partials.iter().sum()
}

#[inline]
pub fn code_of(c: f32, scale: f32, n_bins: u16, rule: Rule) -> u8 {
    let half = (n_bins / 2) as f32;
    let top = (n_bins - 1) as f32;
    let q = match rule {
        Rule::Symmetric => (c / scale).floor() + half,
        Rule::Upstream => (c / scale + half).round(),
    };
    q.clamp(0.0, top) as u8
}

fn assign_block(
    values: &[f32],
    codes: &mut [u8],
    shift: f32,
    scale: f32,
    n_bins: u16,
    rule: Rule,
) -> BinSums {
    let mut sums = BinSums::new(n_bins);
    for (&v, code) in values.iter().zip(codes.iter_mut()) {
        let c = v - shift;
        let q = code_of(c, scale, n_bins, rule);
        *code = q;
        sums.sum[q as usize] += c as f64;
        sums.count[q as usize] += 1;
    }
    sums
}

struct BinSums {
    sum: Vec<f64>,
    count: Vec<u64>,
}

impl BinSums {
    fn new(n_bins: u16) -> BinSums {
        BinSums {
            sum: vec![0.0; n_bins as usize],
            count: vec![0; n_bins as usize],
        }
    }

    fn add(&mut self, other: &BinSums) {
        for (a, b) in self.sum.iter_mut().zip(&other.sum) {
            *a += b;
        }
        for (a, b) in self.count.iter_mut().zip(&other.count) {
            *a += b;
        }
    }

    fn means(&self) -> Vec<f32> {
        self.sum
            .iter()
            .zip(&self.count)
            .map(|(&s, &n)| if n == 0 { 0.0 } else { (s / n as f64) as f32 })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symmetric_two_bit_by_hand() {
        // values: mean 0.5; centred c = [-3.5, -1.5, 0.5, 4.5]; Σc² = 12.25+2.25+0.25+20.25 = 35
        // σ = √(35/3) = 3.4157…; range 4, 4 bins → scale = σ = 3.4157…
        // ⌊c/scale⌋ + 2 = [⌊-1.02⌋+2, ⌊-0.44⌋+2, ⌊0.15⌋+2, ⌊1.32⌋+2] = [0, 1, 2, 3]
        let q = quantize(&[-3.0, -1.0, 1.0, 5.0], 4, 4.0, Rule::Symmetric);
        assert_eq!(q.shift, 0.5);
        assert!((q.scale as f64 - (35f64 / 3.0).sqrt()).abs() < 1e-6);
        assert_eq!(q.codes, vec![0, 1, 2, 3]);
        assert_eq!(q.lookup, vec![-3.5, -1.5, 0.5, 4.5]);
    }

    #[test]
    fn upstream_rule_by_hand() {
        // same data, range 6 → scale = 1.5σ = 5.1235…; round(c/scale + 2) = round([1.32, 1.71, 2.10, 2.88]) = [1, 2, 2, 3]
        let q = quantize(&[-3.0, -1.0, 1.0, 5.0], 4, 6.0, Rule::Upstream);
        assert_eq!(q.codes, vec![1, 2, 2, 3]);
        // bin 0 empty → 0; bin 2 mean of -1.5 and 0.5 = -0.5
        assert_eq!(q.lookup, vec![0.0, -3.5, -0.5, 4.5]);
    }

    #[test]
    fn symmetric_bins_mirror_around_the_mean() {
        let v: Vec<f32> = (1..=100).flat_map(|i| [i as f32, -(i as f32)]).collect();
        let q = quantize(&v, 4, 4.0, Rule::Symmetric);
        assert_eq!(q.shift, 0.0);
        assert_eq!(q.lookup[0], -q.lookup[3]);
        assert_eq!(q.lookup[1], -q.lookup[2]);
    }

    #[test]
    fn constant_values_fall_back_to_unit_scale() {
        let q = quantize(&[2.0; 10], 4, 4.0, Rule::Symmetric);
        assert_eq!((q.shift, q.scale), (2.0, 1.0));
        assert_eq!(q.levels(1.0)[q.codes[0] as usize], 2.0);
    }

    #[test]
    fn codes_are_clamped_to_the_bins() {
        assert_eq!(code_of(1e9, 1.0, 4, Rule::Symmetric), 3);
        assert_eq!(code_of(-1e9, 1.0, 4, Rule::Symmetric), 0);
        assert_eq!(code_of(-1e9, 1.0, 256, Rule::Upstream), 0);
        assert_eq!(code_of(1e9, 1.0, 256, Rule::Upstream), 255);
    }
}
