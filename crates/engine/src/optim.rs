//! The inner optimizer: AdamW with decoupled weight decay, and its learning-rate schedule.

use std::sync::{Arc, Condvar, Mutex, PoisonError};

use tch::Tensor;

use crate::config::TrainConfig;
use crate::error::EngineError;
use crate::params::Parameters;

/// Linear warm-up to `lr` over `warmup_steps`, then cosine decay to `lr · eta_min_factor` at
/// `total_steps`, constant afterwards. `step` counts optimizer steps already taken (the first step is 0).
pub fn learning_rate(config: &TrainConfig, step: u64) -> f64 {
    if step < config.warmup_steps {
        return config.lr * (step + 1) as f64 / config.warmup_steps as f64;
    }
    let floor = config.lr * config.eta_min_factor;
    let span = config
        .total_steps
        .saturating_sub(config.warmup_steps)
        .max(1);
    let progress = ((step - config.warmup_steps) as f64 / span as f64).min(1.0);
    floor + (config.lr - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// Where the learning-rate schedule stands for the next step. By default that is the
/// optimizer's own step count; a node anchors it to the network's position instead (its global
/// step times the inner steps of a window), so that a newcomer or a node that caught up trains at
/// the network's rate rather than restarting its warm-up, and a window cut short does not hold
/// the schedule back. AdamW's bias correction keeps counting the optimizer's own steps: it is
/// about how many updates the moments have seen.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Schedule {
    /// The position set, and the optimizer's step count when it was set.
    anchor: Option<(u64, u64)>,
}

impl Schedule {
    pub(crate) fn position(&self, steps: u64) -> u64 {
        match self.anchor {
            Some((position, steps_then)) => position + steps.saturating_sub(steps_then),
            None => steps,
        }
    }

    pub(crate) fn set(&mut self, position: u64, steps: u64) {
        self.anchor = Some((position, steps));
    }
}

/// AdamW's moments, one pair per parameter in protocol order, and the number of steps taken.
/// The update is PyTorch's single-tensor AdamW: decay, moment updates, bias-corrected step.
pub struct AdamW {
    pub(crate) exp_avg: Vec<Tensor>,
    pub(crate) exp_avg_sq: Vec<Tensor>,
    pub(crate) step: u64,
    schedule: Schedule,
    betas: [f64; 2],
    eps: f64,
    weight_decay: f64,
    /// Values of a tensor updated at once.
    piece: i64,
    /// How far the reader of the moments last lent has got (see [`AdamW::lend_moments`]).
    lent: Option<Arc<Returns>>,
}

impl AdamW {
    pub fn new(params: &Parameters, config: &TrainConfig) -> Result<Self, EngineError> {
        let zeros = || -> Result<Vec<Tensor>, EngineError> {
            params
                .tensors
                .iter()
                .map(|t| Ok(t.f_zeros_like()?.set_requires_grad(false)))
                .collect()
        };
        Ok(Self {
            exp_avg: zeros()?,
            exp_avg_sq: zeros()?,
            step: 0,
            schedule: Schedule::default(),
            betas: config.betas,
            eps: config.eps,
            weight_decay: config.weight_decay,
            piece: STEP_PIECE,
            lent: None,
        })
    }

    /// Updates `values` values of a tensor at a time (at least one) instead of 4 Mi: the same
    /// results, for tests.
    pub fn with_step_piece(mut self, values: i64) -> Self {
        self.piece = values.max(1);
        self
    }

    pub(crate) fn hyper(&self) -> Hyper {
        Hyper {
            betas: self.betas,
            eps: self.eps,
            weight_decay: self.weight_decay,
        }
    }

    /// Optimizer steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// The learning-rate schedule's position for the next step ([`Schedule`]).
    pub fn schedule_step(&self) -> u64 {
        self.schedule.position(self.step)
    }

    /// Puts the schedule at `position` for the next step; each step advances it by one.
    pub fn set_schedule_step(&mut self, position: u64) {
        self.schedule.set(position, self.step);
    }

    /// The moments as they are now, for a reader on another thread (a background save) that
    /// reads them tensor by tensor in protocol order. Nothing is copied: until the reader is past
    /// tensor `i`, a step waits before it changes `i`'s moments — and as a step takes the tensors
    /// in the same order, after a forward and backward pass, training overlaps the reading.
    /// The loan must be read on another thread: a step or [`crate::load_optimizer`] on the
    /// thread that holds it would wait for it forever.
    pub fn lend_moments(&mut self) -> MomentsLoan {
        self.wait_for_loan();
        let returns = Arc::new(Returns::default());
        self.lent = Some(Arc::clone(&returns));
        MomentsLoan {
            exp_avg: self.exp_avg.iter().map(Tensor::shallow_clone).collect(),
            exp_avg_sq: self.exp_avg_sq.iter().map(Tensor::shallow_clone).collect(),
            step: self.step,
            returns,
        }
    }

    /// Waits until the moments last lent are all given back.
    pub fn wait_for_loan(&mut self) {
        if let Some(returns) = self.lent.take() {
            returns.wait_for(usize::MAX - 1);
        }
    }

    /// One AdamW step at learning rate `lr` using the gradients stored on the parameters.
    pub fn step(&mut self, params: &mut Parameters, lr: f64) -> Result<(), EngineError> {
        self.step += 1;
        let constants = StepConstants::new(self.hyper(), self.step, lr);
        tch::no_grad(|| -> Result<(), EngineError> {
            for (index, param) in params.tensors.iter_mut().enumerate() {
                let grad = param.grad();
                if !grad.defined() {
                    continue;
                }
                if let Some(returns) = &self.lent {
                    returns.wait_for(index);
                }
                let tensors = [
                    param.shallow_clone(),
                    grad,
                    self.exp_avg[index].shallow_clone(),
                    self.exp_avg_sq[index].shallow_clone(),
                ];
                // Piece by piece: the update's temporaries are a piece's size, not the largest
                // tensor's (three of them: at 8B, 6 GB for the embedding). Elementwise, so the
                // values are the same.
                let numel = param.numel() as i64;
                for start in (0..numel).step_by(self.piece as usize) {
                    let len = self.piece.min(numel - start);
                    let [mut p, g, mut m, mut v] = pieces(&tensors, start, len)?;
                    constants.update(&mut p, &g, &mut m, &mut v)?;
                }
            }
            Ok(())
        })?;
        if self.lent.as_ref().is_some_and(|r| r.all_returned()) {
            self.lent = None;
        }
        Ok(())
    }
}

/// An optimizer's moments lent by [`AdamW::lend_moments`]: shallow handles on the same storage.
/// The reader gives tensors back in order with [`MomentsLoan::give_back_before`]; whatever it
/// has not given back returns when the loan is dropped, so a reader that fails or panics never
/// leaves training waiting.
pub struct MomentsLoan {
    pub(crate) exp_avg: Vec<Tensor>,
    pub(crate) exp_avg_sq: Vec<Tensor>,
    pub(crate) step: u64,
    returns: Arc<Returns>,
}

impl MomentsLoan {
    /// Hands tensors `0..index` back: the reader will not read their moments again.
    pub(crate) fn give_back_before(&self, index: usize) {
        self.returns.advance(index);
    }
}

impl Drop for MomentsLoan {
    fn drop(&mut self) {
        self.returns.advance(usize::MAX);
    }
}

/// How many tensors of a loan, counted from the first, are given back.
#[derive(Default)]
struct Returns {
    before: Mutex<usize>,
    changed: Condvar,
}

impl Returns {
    fn advance(&self, index: usize) {
        let mut before = self.before.lock().unwrap_or_else(PoisonError::into_inner);
        if index > *before {
            *before = index;
            self.changed.notify_all();
        }
    }

    /// Blocks until tensor `index` is given back.
    fn wait_for(&self, index: usize) {
        let mut before = self.before.lock().unwrap_or_else(PoisonError::into_inner);
        while *before <= index {
            before = self
                .changed
                .wait(before)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn all_returned(&self) -> bool {
        *self.before.lock().unwrap_or_else(PoisonError::into_inner) == usize::MAX
    }
}

/// Values of a tensor updated at once by [`AdamW::step`].
pub(crate) const STEP_PIECE: i64 = 1 << 22;

/// Flat views `start..start + len` of each tensor (the parameter, its gradient, its moments).
fn pieces(tensors: &[Tensor; 4], start: i64, len: i64) -> Result<[Tensor; 4], EngineError> {
    let view = |t: &Tensor| -> Result<Tensor, EngineError> {
        Ok(t.f_view([-1])?.f_narrow(0, start, len)?)
    };
    Ok([
        view(&tensors[0])?,
        view(&tensors[1])?,
        view(&tensors[2])?,
        view(&tensors[3])?,
    ])
}

/// AdamW's settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hyper {
    pub betas: [f64; 2],
    pub eps: f64,
    pub weight_decay: f64,
}

impl Hyper {
    pub(crate) fn of(config: &TrainConfig) -> Hyper {
        Hyper {
            betas: config.betas,
            eps: config.eps,
            weight_decay: config.weight_decay,
        }
    }
}

/// One step's scalars.
pub(crate) struct StepConstants {
    decay: f64,
    beta1: f64,
    beta2: f64,
    bias_correction2_sqrt: f64,
    eps: f64,
    step_size: f64,
}

impl StepConstants {
    /// The scalars of step number `step` (counted from 1) at learning rate `lr`.
    pub(crate) fn new(hyper: Hyper, step: u64, lr: f64) -> StepConstants {
        let [beta1, beta2] = hyper.betas;
        StepConstants {
            decay: 1.0 - lr * hyper.weight_decay,
            beta1,
            beta2,
            bias_correction2_sqrt: (1.0 - beta2.powi(step as i32)).sqrt(),
            eps: hyper.eps,
            step_size: lr / (1.0 - beta1.powi(step as i32)),
        }
    }

    /// PyTorch's single-tensor AdamW on one piece: decay, moment updates, bias-corrected step.
    pub(crate) fn update(
        &self,
        param: &mut Tensor,
        grad: &Tensor,
        exp_avg: &mut Tensor,
        exp_avg_sq: &mut Tensor,
    ) -> Result<(), EngineError> {
        let _ = param.f_mul_scalar_(self.decay)?;
        let _ = exp_avg.f_lerp_(grad, 1.0 - self.beta1)?;
        let _ = exp_avg_sq.f_mul_scalar_(self.beta2)?;
        let _ = exp_avg_sq.f_add_(&grad.f_mul(grad)?.f_mul_scalar(1.0 - self.beta2)?)?;
        let denom = exp_avg_sq
            .f_sqrt()?
            .f_div_scalar(self.bias_correction2_sqrt)?
            .f_add_scalar(self.eps)?;
        let _ = param.f_sub_(&exp_avg.f_div(&denom)?.f_mul_scalar(self.step_size)?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_schedule_anchored_to_the_network_advances_with_each_step() {
        let mut schedule = Schedule::default();
        assert_eq!(
            schedule.position(7),
            7,
            "unanchored: the optimizer's own steps"
        );
        // The network is at global step 4 of 30-step windows; this optimizer has taken 2 steps.
        schedule.set(120, 2);
        assert_eq!(schedule.position(2), 120);
        assert_eq!(schedule.position(5), 123);
        // A window cut short: the next one is anchored afresh, not from where the steps ended.
        schedule.set(150, 5);
        assert_eq!(schedule.position(5), 150);
    }

    use super::*;

    fn config() -> TrainConfig {
        crate::config::Preset::load("tiny").unwrap().train
    }

    #[test]
    fn warm_up_is_linear_and_decay_ends_at_the_floor() {
        let mut c = config();
        c.lr = 1.0;
        c.warmup_steps = 4;
        c.total_steps = 14;
        c.eta_min_factor = 0.1;
        assert_eq!(learning_rate(&c, 0), 0.25);
        assert_eq!(learning_rate(&c, 3), 1.0);
        assert_eq!(learning_rate(&c, 4), 1.0);
        // Half way through the decay: 0.1 + 0.9 · 0.5 · (1 + cos(π/2)) = 0.55.
        assert!((learning_rate(&c, 9) - 0.55).abs() < 1e-12);
        assert!((learning_rate(&c, 14) - 0.1).abs() < 1e-12);
        assert!((learning_rate(&c, 1000) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn first_step_matches_hand_computation() {
        // With zero moments, step 1 gives m = (1-β1)g, v = (1-β2)g², and the bias corrections cancel:
        // θ ← θ(1 − lr·wd) − lr · g / (|g| + eps) ≈ θ(1 − lr·wd) − lr · sign(g).
        let mut c = config();
        c.weight_decay = 0.5;
        let param = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let loss = (&param * Tensor::from_slice(&[3.0f32, -4.0])).sum(tch::Kind::Float);
        loss.backward();
        let mut params = Parameters {
            names: vec!["p".into()],
            tensors: vec![param],
        };
        let mut adam = AdamW::new(&params, &c).unwrap();
        adam.step(&mut params, 0.1).unwrap();
        let mut out = [0f32; 2];
        params.read_one(0, &mut out).unwrap();
        assert!((out[0] - (1.0 * 0.95 - 0.1)).abs() < 1e-6, "{out:?}");
        assert!((out[1] - (-2.0 * 0.95 + 0.1)).abs() < 1e-6, "{out:?}");
    }
}
