//! Orthonormal DCT-II along each chunk axis, and its inverse (the transpose).

use std::f64::consts::PI;

/// Orthonormal DCT-II matrix of size `n`: `basis[k·n + i] = α_k cos(π(2i+1)k / 2n)`.
#[derive(Debug, Clone)]
pub struct Dct {
    n: usize,
    basis: Vec<f32>,
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
        Dct { n, basis }
    }

    fn forward(&self, x: &[f32], y: &mut [f32]) {
        for (k, out) in y.iter_mut().enumerate() {
            let row = &self.basis[k * self.n..(k + 1) * self.n];
            *out = row.iter().zip(x).map(|(b, v)| b * v).sum();
        }
    }

    fn inverse(&self, y: &[f32], x: &mut [f32]) {
        x.fill(0.0);
        for (k, &c) in y.iter().enumerate() {
            let row = &self.basis[k * self.n..(k + 1) * self.n];
            for (out, b) in x.iter_mut().zip(row) {
                *out += b * c;
            }
        }
    }
}

/// Separable 2-D transform of a `rows × cols` chunk stored row-major.
#[derive(Debug, Clone)]
pub struct Dct2 {
    rows: Dct,
    cols: Dct,
    line_in: Vec<f32>,
    line_out: Vec<f32>,
}

impl Dct2 {
    pub fn new(rows: usize, cols: usize) -> Dct2 {
        Dct2 {
            rows: Dct::new(rows),
            cols: Dct::new(cols),
            line_in: vec![0.0; rows.max(cols)],
            line_out: vec![0.0; rows.max(cols)],
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
        if w > 1 {
            for row in chunk.chunks_exact_mut(w) {
                self.line_in[..w].copy_from_slice(row);
                transform(&self.cols, &self.line_in[..w], row, inverse);
            }
        }
        if h > 1 {
            for j in 0..w {
                for i in 0..h {
                    self.line_in[i] = chunk[i * w + j];
                }
                transform(
                    &self.rows,
                    &self.line_in[..h],
                    &mut self.line_out[..h],
                    inverse,
                );
                for i in 0..h {
                    chunk[i * w + j] = self.line_out[i];
                }
            }
        }
    }
}

fn transform(dct: &Dct, x: &[f32], y: &mut [f32], inverse: bool) {
    if inverse {
        dct.inverse(x, y)
    } else {
        dct.forward(x, y)
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
