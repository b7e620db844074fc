//! The arithmetic between exchanges, on flat `f32` buffers: averaging, the outer optimizers and
//! the byte count of a dense all-reduce. Pure functions, checked against numbers worked by hand.

/// `out = mean(inputs)`, summed in the order given so every run is bit-reproducible.
pub fn mean_into(out: &mut [f32], inputs: &[&[f32]]) {
    out.fill(0.0);
    for input in inputs {
        for (o, &x) in out.iter_mut().zip(*input) {
            *o += x;
        }
    }
    let scale = 1.0 / inputs.len().max(1) as f32;
    for o in out.iter_mut() {
        *o *= scale;
    }
}

/// `θ ← θ − scale · update`.
pub fn descend(theta: &mut [f32], update: &[f32], scale: f32) {
    for (t, &u) in theta.iter_mut().zip(update) {
        *t -= scale * u;
    }
}

/// SGD with Nesterov momentum as PyTorch computes it (dampening 0): `b ← μ·b + g`,
/// `θ ← θ − lr·(g + μ·b)`. DiLoCo's outer optimizer, with `g` the mean pseudo-gradient.
#[derive(Debug, Clone)]
pub struct Nesterov {
    pub lr: f32,
    pub momentum: f32,
    buffer: Vec<f32>,
}

impl Nesterov {
    pub fn new(lr: f32, momentum: f32, len: usize) -> Nesterov {
        Nesterov {
            lr,
            momentum,
            buffer: vec![0.0; len],
        }
    }

    pub fn step(&mut self, theta: &mut [f32], gradient: &[f32]) {
        let (lr, mu) = (self.lr, self.momentum);
        for ((t, b), &g) in theta.iter_mut().zip(&mut self.buffer).zip(gradient) {
            *b = mu * *b + g;
            *t -= lr * (g + mu * *b);
        }
    }
}

/// DeMo's update: decoupled weight decay, then a step of `lr` against the sign of the aggregate
/// (0 where the aggregate is 0).
pub fn sign_step(theta: &mut [f32], aggregate: &[f32], lr: f32, weight_decay: f32) {
    let keep = 1.0 - lr * weight_decay;
    for (t, &a) in theta.iter_mut().zip(aggregate) {
        let sign = if a > 0.0 {
            1.0
        } else if a < 0.0 {
            -1.0
        } else {
            0.0
        };
        *t = *t * keep - lr * sign;
    }
}

/// Bytes each of `replicas` nodes sends in a ring all-reduce of a `bytes`-long buffer: a
/// reduce-scatter and an all-gather of `replicas − 1` steps each, one `1/replicas` slice per step.
pub fn ring_allreduce_bytes(bytes: u64, replicas: u64) -> u64 {
    if replicas < 2 {
        return 0;
    }
    2 * (replicas - 1) * bytes.div_ceil(replicas)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_of_three_buffers() {
        let mut out = [9.0; 2];
        mean_into(&mut out, &[&[1.0, -3.0], &[2.0, 0.0], &[3.0, 6.0]]);
        assert_eq!(out, [2.0, 1.0]);
    }

    #[test]
    fn nesterov_matches_two_steps_by_hand() {
        // lr 0.5, μ 0.9. Step 1, g = 1: b = 1, θ = 1 − 0.5·(1 + 0.9) = 0.05.
        // Step 2, g = 2: b = 0.9 + 2 = 2.9, θ = 0.05 − 0.5·(2 + 2.61) = −2.255.
        let mut outer = Nesterov::new(0.5, 0.9, 1);
        let mut theta = [1.0];
        outer.step(&mut theta, &[1.0]);
        assert!((theta[0] - 0.05).abs() < 1e-6, "{theta:?}");
        outer.step(&mut theta, &[2.0]);
        assert!((theta[0] + 2.255).abs() < 1e-6, "{theta:?}");
    }

    #[test]
    fn sign_step_decays_then_steps_against_the_sign() {
        // lr 0.1, wd 0.5: θ·0.95 − 0.1·sign(a).
        let mut theta = [2.0, 2.0, 2.0];
        sign_step(&mut theta, &[3.0, -0.01, 0.0], 0.1, 0.5);
        for (got, want) in theta.iter().zip([1.8, 2.0, 1.9]) {
            assert!((got - want).abs() < 1e-6, "{theta:?}");
        }
    }

    #[test]
    fn ring_allreduce_sends_twice_the_buffer_less_one_slice() {
        assert_eq!(ring_allreduce_bytes(400, 4), 600);
        assert_eq!(ring_allreduce_bytes(10, 3), 16); // slices of ⌈10/3⌉ = 4
        assert_eq!(ring_allreduce_bytes(400, 1), 0);
    }

    #[test]
    fn descend_scales_the_update() {
        let mut theta = [1.0, 1.0];
        descend(&mut theta, &[2.0, -4.0], 0.25);
        assert_eq!(theta, [0.5, 2.0]);
    }
}
