//! Deterministic initial weights, generated in Rust so that they do not depend on libtorch's RNG,
//! device or version: matrices ~ N(0, initializer_range²), norm weights = 1 (as Hugging Face LLaMA).

use rayon::prelude::*;

/// Initial values of parameter `index` (named `name`, shaped `shape`) for `seed`.
#[cfg(test)]
pub fn initial_values(name: &str, shape: &[i64], std: f64, seed: u64, index: u64) -> Vec<f32> {
    let count: usize = shape.iter().map(|&d| d as usize).product();
    let mut values = vec![0f32; count];
    fill_initial_values(name, std, seed, index, &mut values);
    values
}

/// [`initial_values`] written into `out`, on all cores. The generator is a counter (value pair
/// `k` is drawn from states `2k+1` and `2k+2` after the tensor's start), so any stretch can be
/// computed on its own and the result does not depend on the thread count.
pub fn fill_initial_values(name: &str, std: f64, seed: u64, index: u64, out: &mut [f32]) {
    fill_initial_range(name, std, seed, index, 0, out);
}

/// Values `first..first + out.len()` of [`fill_initial_values`]'s, without the rest: a rank of a
/// fully sharded trainer makes only its spans.
pub fn fill_initial_range(
    name: &str,
    std: f64,
    seed: u64,
    index: u64,
    first: usize,
    out: &mut [f32],
) {
    if name.ends_with("norm.weight") {
        out.fill(1.0);
        return;
    }
    let start = mix(seed ^ mix(index.wrapping_add(0x7465_6d70_6c61_7221)));
    // Box–Muller: two uniforms in (0, 1] give two independent standard normals.
    let pair = |k: u64| -> (f32, f32) {
        let mut state = start.wrapping_add(k.wrapping_mul(2).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let u1 = unit(next(&mut state));
        let u2 = unit(next(&mut state));
        let radius = (-2.0 * u1.ln()).sqrt() * std;
        let angle = std::f64::consts::TAU * u2;
        ((radius * angle.cos()) as f32, (radius * angle.sin()) as f32)
    };
    const STRETCH: usize = 1 << 16;
    out.par_chunks_mut(STRETCH)
        .enumerate()
        .for_each(|(c, stretch)| {
            let offset = first + c * STRETCH;
            let mut at = 0;
            while at < stretch.len() {
                let (even, odd) = pair(((offset + at) / 2) as u64);
                if (offset + at) % 2 == 1 {
                    stretch[at] = odd;
                    at += 1;
                    continue;
                }
                stretch[at] = even;
                if let Some(second) = stretch.get_mut(at + 1) {
                    *second = odd;
                }
                at += 2;
            }
        });
}

fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    mix(*state)
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Maps 64 random bits to (0, 1], never 0 so the logarithm stays finite.
fn unit(bits: u64) -> f64 {
    ((bits >> 11) + 1) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_range_is_the_whole_tensor_s_values_there() {
        let whole = initial_values("w", &[3, 70_001], 0.02, 7, 3);
        for (first, len) in [
            (0, 5),
            (1, 4),
            (70_000, 3),
            (65_535, 65_538),
            (131_073, 78_930),
        ] {
            let mut part = vec![0f32; len];
            fill_initial_range("w", 0.02, 7, 3, first, &mut part);
            assert_eq!(part, whole[first..first + len], "{first}..+{len}");
        }
    }

    #[test]
    fn values_have_the_requested_spread_and_are_reproducible() {
        let values = initial_values("w", &[256, 256], 0.02, 1, 0);
        let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / values.len() as f64;
        let var = values
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / values.len() as f64;
        assert!(mean.abs() < 1e-3, "{mean}");
        assert!((var.sqrt() - 0.02).abs() < 5e-4, "{}", var.sqrt());
        assert_eq!(values, initial_values("w", &[256, 256], 0.02, 1, 0));
        assert_ne!(values, initial_values("w", &[256, 256], 0.02, 2, 0));
    }

    #[test]
    fn parallel_stretches_match_one_sequential_stream() {
        // The original generator, one value pair after another from one running state.
        let reference = |count: usize| {
            let mut state = mix(3 ^ mix(5u64.wrapping_add(0x7465_6d70_6c61_7221)));
            let mut values = Vec::new();
            while values.len() < count {
                let u1 = unit(next(&mut state));
                let u2 = unit(next(&mut state));
                let radius = (-2.0 * u1.ln()).sqrt() * 0.02;
                let angle = std::f64::consts::TAU * u2;
                values.push((radius * angle.cos()) as f32);
                values.push((radius * angle.sin()) as f32);
            }
            values.truncate(count);
            values
        };
        for count in [1, 7, (1 << 16) + 3, 3 * (1 << 16)] {
            assert_eq!(
                initial_values("w", &[count as i64], 0.02, 3, 5),
                reference(count)
            );
        }
    }

    #[test]
    fn norms_start_at_one() {
        assert_eq!(
            initial_values("model.norm.weight", &[4], 0.02, 1, 9),
            vec![1.0; 4]
        );
    }
}
