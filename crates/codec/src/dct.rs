//! Orthonormal DCT-II along each chunk axis, and its inverse (the transpose).

use std::f64::consts::PI;

/// Orthonormal DCT-II matrix of size `n`: `basis[k·n + i] = α_k cos(π(2i+1)k / 2n)`, and its
/// transpose, which is the inverse.
#[derive(Debug, Clone)]
pub struct Dct {
    n: usize,
    basis: Vec<f32>,
    transposed: Vec<f32>,
}

impl Dct {
    pub fn new(n: usize) -> Dct {
        let mut basis = Vec::with_capacity(n * n);
        for k in 0..n {
            let alpha = if k == 0 {
                (1.0 / n as f64).sqrt()
            } else {
                (2.0 / n as f64).sqrt()
            };
            for i in 0..n {
                basis.push(
                    (alpha * (PI * (2 * i + 1) as f64 * k as f64 / (2 * n) as f64).cos()) as f32,
                );
            }
        }
        let transposed = (0..n * n).map(|t| basis[(t % n) * n + t / n]).collect();
        Dct {
            n,
            basis,
            transposed,
        }
    }

    /// The matrix that maps input to output, row-major: the basis forward, its transpose back.
    fn matrix(&self, inverse: bool) -> &[f32] {
        if inverse {
            &self.transposed
        } else {
            &self.basis
        }
    }
}

/// Separable 2-D transform of a `rows × cols` chunk stored row-major.
///
/// Both passes are written as sums of scaled rows (`out[a, :] += m · in[b, :]`), so the inner
/// loops run along contiguous memory with independent outputs and vectorise. As dot products,
/// each output was one serial chain of additions, and the column pass gathered strided columns:
/// the transform was twenty times slower. Every output still sums its terms in one fixed order,
/// so the result is the same on every machine.
#[derive(Debug, Clone)]
pub struct Dct2 {
    rows: Dct,
    cols: Dct,
    scratch: Vec<f32>,
}

impl Dct2 {
    pub fn new(rows: usize, cols: usize) -> Dct2 {
        Dct2 {
            rows: Dct::new(rows),
            cols: Dct::new(cols),
            scratch: vec![0.0; rows * cols],
        }
    }

    pub fn forward(&mut self, chunk: &mut [f32]) {
        self.apply(chunk, false);
    }

    pub fn inverse(&mut self, chunk: &mut [f32]) {
        self.apply(chunk, true);
    }

    fn apply(&mut self, chunk: &mut [f32], inverse: bool) {
        let (h, w) = (self.rows.n, self.cols.n);
        let scratch = &mut self.scratch[..h * w];
        // Along each row: out[r, a] = Σ_b M[a, b]·in[r, b] = Σ_b in[r, b]·Mᵀ[b, a]. The transpose
        // of the forward matrix is the inverse one, and the other way round.
        let row_mix = self.cols.matrix(!inverse);
        for (src, dst) in chunk.chunks_exact(w).zip(scratch.chunks_exact_mut(w)) {
            weighted_rows(dst, src, row_mix, w);
        }
        // Along each column: out[a, :] = Σ_b M[a, b]·in[b, :].
        let col_mix = self.rows.matrix(inverse);
        for (weights, dst) in col_mix.chunks_exact(h).zip(chunk.chunks_exact_mut(w)) {
            weighted_rows(dst, weights, scratch, w);
        }
    }
}

/// Columns handled at once: sixteen sums stay in registers across the whole sum.
const BLOCK: usize = 16;

/// `dst[j] = Σ_b weights[b]·rows[b·stride + j]`, each sum taken over b in order.
///
/// Blocks of [`BLOCK`] outputs are summed in registers and stored once. Adding each weighted
/// row into `dst` in memory instead stored and reloaded every output once per term.
fn weighted_rows(dst: &mut [f32], weights: &[f32], rows: &[f32], stride: usize) {
    let mut start = 0;
    for block in dst.chunks_mut(BLOCK) {
        let lines = rows.get(start..).unwrap_or(&[]).chunks(stride);
        let done = <&mut [f32; BLOCK]>::try_from(&mut *block)
            .is_ok_and(|full| weighted_block(full, weights, lines.clone()));
        if !done {
            weighted_tail(block, weights, lines);
        }
        start += BLOCK;
    }
}

/// One full block; false (having written nothing) if a line is too short to hold it.
#[inline]
fn weighted_block<'a>(
    block: &mut [f32; BLOCK],
    weights: &[f32],
    lines: impl Iterator<Item = &'a [f32]>,
) -> bool {
    let mut acc = [0.0f32; BLOCK];
    for (&c, line) in weights.iter().zip(lines) {
        let Some(line) = line.first_chunk::<BLOCK>() else {
            return false;
        };
        for (a, &x) in acc.iter_mut().zip(line) {
            *a += c * x;
        }
    }
    *block = acc;
    true
}

fn weighted_tail<'a>(block: &mut [f32], weights: &[f32], lines: impl Iterator<Item = &'a [f32]>) {
    block.fill(0.0);
    for (&c, line) in weights.iter().zip(lines) {
        for (a, &x) in block.iter_mut().zip(line) {
            *a += c * x;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dc_coefficient_of_a_constant_by_hand() {
        // Orthonormal DCT of [1,1,1,1]: DC = 4·(1/√4) = 2, the rest 0.
        let mut c = vec![1.0f32; 4];
        Dct2::new(1, 4).forward(&mut c);
        assert!((c[0] - 2.0).abs() < 1e-6);
        assert!(c[1..].iter().all(|x| x.abs() < 1e-6));
    }

    #[test]
    fn matches_the_definition_on_a_non_square_chunk() {
        // Y[k, l] = Σ_i Σ_j C_h[k, i]·C_w[l, j]·X[i, j], computed in f64 from the formula.
        // 20 columns: one register block of 16 and a tail of 4.
        let (h, w) = (5, 20);
        let c = |n: usize, k: usize, i: usize| {
            let alpha = if k == 0 {
                1.0 / n as f64
            } else {
                2.0 / n as f64
            }
            .sqrt();
            alpha * (PI * (2 * i + 1) as f64 * k as f64 / (2 * n) as f64).cos()
        };
        let x: Vec<f32> = (0..h * w).map(|t| (t as f32 * 0.7).sin()).collect();
        let mut y = x.clone();
        let mut d = Dct2::new(h, w);
        d.forward(&mut y);
        for k in 0..h {
            for l in 0..w {
                let want: f64 = (0..h)
                    .flat_map(|i| (0..w).map(move |j| (i, j)))
                    .map(|(i, j)| c(h, k, i) * c(w, l, j) * x[i * w + j] as f64)
                    .sum();
                assert!((y[k * w + l] as f64 - want).abs() < 1e-5, "({k}, {l})");
            }
        }
        d.inverse(&mut y);
        assert!(x.iter().zip(&y).all(|(a, b)| (a - b).abs() < 1e-5));
    }

    #[test]
    fn round_trip_is_within_1e_5_relative() {
        let (h, w) = (64, 64);
        let orig: Vec<f32> = (0..h * w)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 37.0)
            .collect();
        let mut c = orig.clone();
        let mut d = Dct2::new(h, w);
        d.forward(&mut c);
        let energy: f32 = orig.iter().map(|x| x * x).sum();
        let energy_t: f32 = c.iter().map(|x| x * x).sum();
        assert!(
            ((energy - energy_t) / energy).abs() < 1e-5,
            "orthonormal transforms keep energy"
        );
        d.inverse(&mut c);
        let err: f32 = orig
            .iter()
            .zip(&c)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f32>()
            .sqrt();
        assert!(
            err / energy.sqrt() < 1e-5,
            "relative error {}",
            err / energy.sqrt()
        );
    }
}
