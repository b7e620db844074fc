//! Deterministic synthetic pseudo-gradients for benchmarks.

use rayon::prelude::*;

/// SplitMix64: tiny, fast, and the same on every platform.
pub fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn uniform(state: &mut u64) -> f64 {
    ((splitmix(state) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Distribution {
    /// Standard normal.
    Gaussian,
    /// Laplace (heavier tails, closer to real pseudo-gradients).
    Laplace,
}

/// Fills `out` with `scale`-sized samples; block `b` is seeded from `(seed, b)` so the result
/// does not depend on the thread count.
pub fn fill(out: &mut [f32], seed: u64, scale: f32, dist: Distribution) {
    out.par_chunks_mut(1 << 16)
        .enumerate()
        .for_each(|(b, block)| {
            let mut state = seed ^ (b as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
            for pair in block.chunks_mut(2) {
                let (u1, u2) = (uniform(&mut state), uniform(&mut state));
                let (a, b) = match dist {
                    Distribution::Gaussian => {
                        let r = (-2.0 * u1.ln()).sqrt();
                        let t = std::f64::consts::TAU * u2;
                        (r * t.cos(), r * t.sin())
                    }
                    Distribution::Laplace => (laplace(u1), laplace(u2)),
                };
                pair[0] = a as f32 * scale;
                if let Some(x) = pair.get_mut(1) {
                    *x = b as f32 * scale;
                }
            }
        });
}

fn laplace(u: f64) -> f64 {
    if u < 0.5 {
        (2.0 * u).ln()
    } else {
        -(2.0 * (1.0 - u)).ln()
    }
}
