//! Miner behaviours for **test and research networks only**: ways a miner can try to be paid
//! without contributing, or can break, so that a network's scoring and gather can be shown to
//! hold against them (`templar localnet --scenario adversarial`, docs/robustness.md).
//!
//! This module is the pure part: parsing a behaviour and building or damaging payloads. The
//! miner's window loop decides when each runs (see `crate::adversary`).

use std::fmt;
use std::str::FromStr;

use templar_codec::{Payload, Schema, SparseTensor, Values, compress};

use crate::gauntlet::selection::mix;

/// How a miner behaves. Everything but [`Behavior::Honest`] is an attack.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Behavior {
    #[default]
    Honest,
    /// Honest, with less compute: trains this share of the inner steps (in (0, 1]) and
    /// publishes what it learnt. Not an attack; a heterogeneous honest set is made of these.
    PartTime(f32),
    /// No training; random indices and values at the norm of last window's median payload.
    Noise,
    /// No training; every kept value is zero.
    Zeros,
    /// Trains honestly, then multiplies the update by the factor.
    Scaled(f32),
    /// Republishes another miner's payload for the same window as its own (with its own receipt).
    Copycat(u16),
    /// Copies `fraction` of another miner's kept indices and values per chunk; the rest is noise.
    PartialCopy { victim: u16, fraction: f64 },
    /// Trains once, then resends that payload every window (with fresh receipts).
    Replay,
    /// Trains honestly on another uid's assignment (default: its own uid + 1) and claims its own.
    OtherData(Option<u16>),
    /// No training; publishes the direction of last window's public aggregate.
    Lazy,
    /// Trains honestly and uploads after the upload slot has closed.
    Late,
    /// A valid payload with random bytes flipped.
    Malformed,
    /// A well-formed payload whose values are NaN.
    Nan,
    /// A payload larger than the network's limit.
    Oversize,
    /// Trains the first half of its inner steps on its assignment and the rest on the random
    /// samples it predicts it will be judged on, from public values (the window, as the
    /// evaluation's seed was before validators drew it); claims the whole assignment.
    EvalOverfit,
    /// Trains honestly until the chain pays it, then publishes nothing more while staying
    /// registered: paid for work it no longer does.
    InactiveAfterPaid,
    /// Takes a peer's payload of the current window as soon as it appears and uploads it as its
    /// own; once the slot has closed, republishes the peer's key as its own.
    EarlyCopy(u16),
    /// No training; noise at a twentieth of last window's median norm. A few of these
    /// (`sybil-low-norm:K`, uploading is free) drag a median over every upload down until honest
    /// payloads look like norm outliers.
    LowNorm,
    /// Registers a fresh hotkey onto a uid the chain has paid once that uid is the next a
    /// registration replaces (its holder went quiet), then publishes noise at last window's
    /// median norm: paid, if validators keep records by uid alone, on the record the uid earned
    /// (see [`crate::adversary::take_over`]).
    Takeover,
}

/// How much smaller than the median a low-norm sybil's payload is.
pub const LOW_NORM_FACTOR: f64 = 0.05;

/// Low-norm sybils in the scenario's attack set (`sybil-low-norm:K`).
pub const LOW_NORM_SYBILS: usize = 3;

impl Behavior {
    /// Whether the behaviour runs the inner steps this window (`windows_run`: windows this
    /// process has run so far).
    pub fn trains(&self, windows_run: u64) -> bool {
        match self {
            Behavior::Honest
            | Behavior::PartTime(_)
            | Behavior::Scaled(_)
            | Behavior::OtherData(_)
            | Behavior::EvalOverfit
            | Behavior::InactiveAfterPaid
            | Behavior::Late => true,
            Behavior::Replay => windows_run == 0,
            _ => false,
        }
    }

    /// Honest work, all of it or a share ([`Behavior::PartTime`]): not an attack.
    pub fn is_honest(&self) -> bool {
        matches!(self, Behavior::Honest | Behavior::PartTime(_))
    }

    /// Joins a running network instead of registering with the others (`takeover` registers
    /// when a paid uid comes up for replacement).
    pub fn registers_late(&self) -> bool {
        *self == Behavior::Takeover
    }

    /// The share of the window's inner steps this miner trains.
    pub fn step_share(&self) -> f32 {
        match self {
            Behavior::PartTime(share) => *share,
            _ => 1.0,
        }
    }

    /// Every behaviour the adversarial scenario runs, one of each, against the given victim uid.
    /// `inactive-after-paid` comes first: registered before the other attackers, it is the uid
    /// a full subnet replaces first once it stops earning, which is what `takeover` waits for.
    /// `takeover` is last, and is not registered with the others (it registers when due).
    pub fn attackers(victim: u16) -> Vec<Behavior> {
        let mut attackers = vec![
            Behavior::InactiveAfterPaid,
            Behavior::Noise,
            Behavior::Zeros,
            Behavior::Scaled(10.0),
            Behavior::Copycat(victim),
            Behavior::PartialCopy {
                victim,
                fraction: 0.5,
            },
            Behavior::Replay,
            Behavior::OtherData(None),
            Behavior::Lazy,
            Behavior::Late,
            Behavior::Malformed,
            Behavior::Nan,
            Behavior::Oversize,
            Behavior::EvalOverfit,
            Behavior::EarlyCopy(victim),
        ];
        attackers.extend([Behavior::LowNorm; LOW_NORM_SYBILS]);
        attackers.push(Behavior::Takeover);
        attackers
    }

    /// The samples this miner's inner steps run on, given its `assignment` and the samples it
    /// predicts a validator will judge it on: its assignment unless it overfits the evaluation.
    pub fn training_samples(
        &self,
        assignment: &[u64],
        predicted: &[u64],
        batch: usize,
    ) -> Vec<u64> {
        if *self != Behavior::EvalOverfit || predicted.is_empty() {
            return assignment.to_vec();
        }
        let kept = assignment.len() / batch / 2 * batch;
        let mut samples = assignment[..kept].to_vec();
        samples.extend(predicted.iter().cycle().take(assignment.len() - kept));
        samples
    }
}

impl fmt::Display for Behavior {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Behavior::Honest => write!(f, "honest"),
            Behavior::PartTime(share) => write!(f, "part-time:{share}"),
            Behavior::Noise => write!(f, "noise"),
            Behavior::Zeros => write!(f, "zeros"),
            Behavior::Scaled(x) => write!(f, "scaled:{x}"),
            Behavior::Copycat(uid) => write!(f, "copycat:{uid}"),
            Behavior::PartialCopy { victim, fraction } => {
                write!(f, "partial-copy:{victim}:{fraction}")
            }
            Behavior::Replay => write!(f, "replay"),
            Behavior::OtherData(None) => write!(f, "other-data"),
            Behavior::OtherData(Some(uid)) => write!(f, "other-data:{uid}"),
            Behavior::Lazy => write!(f, "lazy"),
            Behavior::Late => write!(f, "late"),
            Behavior::Malformed => write!(f, "malformed"),
            Behavior::Nan => write!(f, "nan"),
            Behavior::Oversize => write!(f, "oversize"),
            Behavior::EvalOverfit => write!(f, "eval-overfit"),
            Behavior::InactiveAfterPaid => write!(f, "inactive-after-paid"),
            Behavior::EarlyCopy(uid) => write!(f, "early-copy:{uid}"),
            Behavior::LowNorm => write!(f, "low-norm"),
            Behavior::Takeover => write!(f, "takeover"),
        }
    }
}

const USAGE: &str = "honest, part-time:F, noise, zeros, scaled:X, copycat:UID, partial-copy:UID:F, replay, \
                     other-data[:UID], lazy, late, malformed, nan, oversize, eval-overfit, \
                     inactive-after-paid, early-copy:UID, low-norm or takeover";

impl FromStr for Behavior {
    type Err = String;

    fn from_str(text: &str) -> Result<Behavior, String> {
        let bad = |why: &str| format!("behaviour {text:?}: {why}; expected one of {USAGE}");
        let uid = |s: &str| s.parse::<u16>().map_err(|_| bad("the uid is not a number"));
        let parts: Vec<&str> = text.trim().split(':').collect();
        let behavior = match parts.as_slice() {
            ["honest"] => Behavior::Honest,
            ["part-time", share] => match share.parse::<f32>() {
                Ok(x) if x > 0.0 && x <= 1.0 => Behavior::PartTime(x),
                _ => return Err(bad("the share of inner steps must be a number in (0, 1]")),
            },
            ["noise"] => Behavior::Noise,
            ["zeros"] => Behavior::Zeros,
            ["scaled", x] => match x.parse::<f32>() {
                Ok(x) if x.is_finite() => Behavior::Scaled(x),
                _ => return Err(bad("the factor is not a finite number")),
            },
            ["copycat", victim] => Behavior::Copycat(uid(victim)?),
            ["partial-copy", victim, fraction] => match fraction.parse::<f64>() {
                Ok(f) if (0.0..=1.0).contains(&f) => Behavior::PartialCopy {
                    victim: uid(victim)?,
                    fraction: f,
                },
                _ => return Err(bad("the fraction must be a number in [0, 1]")),
            },
            ["replay"] => Behavior::Replay,
            ["other-data"] => Behavior::OtherData(None),
            ["other-data", victim] => Behavior::OtherData(Some(uid(victim)?)),
            ["lazy"] => Behavior::Lazy,
            ["late"] => Behavior::Late,
            ["malformed"] => Behavior::Malformed,
            ["nan"] => Behavior::Nan,
            ["oversize"] => Behavior::Oversize,
            ["eval-overfit"] => Behavior::EvalOverfit,
            ["inactive-after-paid"] => Behavior::InactiveAfterPaid,
            ["early-copy", victim] => Behavior::EarlyCopy(uid(victim)?),
            ["low-norm"] => Behavior::LowNorm,
            ["takeover"] => Behavior::Takeover,
            _ => return Err(bad("unknown behaviour or wrong number of parts")),
        };
        Ok(behavior)
    }
}

/// A small deterministic generator (splitmix64), so an attack is reproducible from its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in `[0, n)` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in `(0, 1]`.
    fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f32 {
        let (u, v) = (self.unit(), self.unit());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }
}

/// The L2 norm of each tensor's kept values.
pub fn tensor_norms(payload: &Payload) -> Vec<f64> {
    payload.tensors.iter().map(|t| t.values.norm()).collect()
}

/// Multiplies every kept value of `tensor` by `factor`.
pub fn scale_tensor(tensor: &mut SparseTensor, factor: f32) {
    match &mut tensor.values {
        Values::Quantized(q) => {
            q.shift *= factor;
            q.scale *= factor;
            q.lookup.iter_mut().for_each(|l| *l *= factor);
        }
        Values::F32(values) => values.iter_mut().for_each(|v| *v *= factor),
        Values::Bf16(values) => values.iter_mut().for_each(|v| {
            let x = f32::from_bits(u32::from(*v) << 16) * factor;
            *v = (x.to_bits() >> 16) as u16;
        }),
    }
}

/// Scales each tensor so that its norm is `targets[i]` (tensors with no norm stay as they are).
pub fn rescale_to(payload: &mut Payload, targets: &[f64]) {
    for (tensor, &target) in payload.tensors.iter_mut().zip(targets) {
        let norm = tensor.values.norm();
        if norm > 0.0 && target.is_finite() {
            scale_tensor(tensor, (target / norm) as f32);
        }
    }
}

/// The codec's payload for a dense update, compressed without error feedback.
pub fn compress_fresh(schema: &Schema, dense: &[Vec<f32>]) -> Result<Payload, String> {
    let mut feedback: Vec<Vec<f32>> = dense.iter().map(|d| vec![0.0; d.len()]).collect();
    compress(schema, &mut feedback, dense).map_err(|e| e.to_string())
}

/// A payload of zeros: the codec's own encoding of an empty update.
pub fn zero_payload(schema: &Schema) -> Result<Payload, String> {
    let dense: Vec<Vec<f32>> = (0..schema.len())
        .map(|i| vec![0.0; schema.plan(i).numel()])
        .collect();
    compress_fresh(schema, &dense)
}

/// Gaussian noise through the codec: random kept positions and values, norm to be set by the
/// caller ([`rescale_to`]).
pub fn noise_payload(schema: &Schema, rng: &mut Rng) -> Result<Payload, String> {
    let dense: Vec<Vec<f32>> = (0..schema.len())
        .map(|i| (0..schema.plan(i).numel()).map(|_| rng.normal()).collect())
        .collect();
    compress_fresh(schema, &dense)
}

/// `fraction` of each chunk's kept entries taken from `victim` (indices and values), the rest
/// from `filler` at positions the victim did not keep. Both payloads must fit `schema`; only
/// quantized tensors are mixed (others are taken from `filler` whole).
pub fn partial_copy(
    schema: &Schema,
    victim: &Payload,
    filler: &Payload,
    fraction: f64,
    rng: &mut Rng,
) -> Payload {
    let tensors = victim
        .tensors
        .iter()
        .zip(&filler.tensors)
        .enumerate()
        .map(|(i, (v, f))| {
            let plan = schema.plan(i);
            let k = plan.kept() / plan.chunks().max(1);
            match (&v.values, &f.values) {
                (Values::Quantized(vq), Values::Quantized(fq)) if k > 0 && k < plan.chunk_len() => {
                    mix_tensor(v, vq, fq, k, plan.chunk_len(), fraction, rng)
                }
                _ => f.clone(),
            }
        })
        .collect();
    Payload { tensors }
}

/// One tensor of [`partial_copy`]: the victim's lookup table, its codes for the copied
/// entries, random codes for the others.
fn mix_tensor(
    victim: &SparseTensor,
    values: &templar_codec::Quantized,
    filler: &templar_codec::Quantized,
    k: usize,
    chunk_len: usize,
    fraction: f64,
    rng: &mut Rng,
) -> SparseTensor {
    let copied = ((k as f64) * fraction).round() as usize;
    let n_bins = values.lookup.len().max(1);
    let mut indices = Vec::with_capacity(victim.indices.len());
    let mut codes = Vec::with_capacity(victim.indices.len());
    for (chunk, own) in victim.indices.chunks(k).enumerate() {
        let mut entries: Vec<(u16, u8)> = Vec::with_capacity(k);
        let mut taken = vec![false; chunk_len];
        let mut order: Vec<usize> = (0..own.len()).collect();
        for slot in 0..copied.min(own.len()) {
            let pick = slot + rng.below(own.len() - slot);
            order.swap(slot, pick);
            let index = own[order[slot]];
            taken[index as usize] = true;
            entries.push((index, values.codes[chunk * k + order[slot]]));
        }
        while entries.len() < k {
            let index = rng.below(chunk_len);
            if !taken[index] && !own.contains(&(index as u16)) {
                taken[index] = true;
                let code = filler.codes.get(chunk * k + entries.len()).copied();
                let code = code.unwrap_or(0) as usize % n_bins;
                entries.push((index as u16, code as u8));
            }
        }
        entries.sort_unstable_by_key(|(index, _)| *index);
        indices.extend(entries.iter().map(|(index, _)| *index));
        codes.extend(entries.iter().map(|(_, code)| *code));
    }
    SparseTensor {
        indices,
        values: Values::Quantized(templar_codec::Quantized {
            codes,
            ..values.clone()
        }),
    }
}

/// Makes every value of the first tensor NaN while keeping the payload well-formed.
pub fn poison(payload: &mut Payload) {
    if let Some(tensor) = payload.tensors.first_mut() {
        match &mut tensor.values {
            Values::Quantized(q) => q.lookup.iter_mut().for_each(|l| *l = f32::NAN),
            Values::F32(values) => values.iter_mut().for_each(|v| *v = f32::NAN),
            Values::Bf16(values) => values.iter_mut().for_each(|v| *v = 0x7fc0),
        }
    }
}

/// Flips one to eight random bytes of `message` at or after `from`.
pub fn corrupt(message: &mut [u8], from: usize, rng: &mut Rng) {
    if message.len() <= from {
        return;
    }
    let flips = 1 + rng.below(8);
    for _ in 0..flips {
        let at = from + rng.below(message.len() - from);
        message[at] ^= 1 + rng.below(255) as u8;
    }
}

/// `message` padded with zeros to `limit + extra` bytes.
pub fn pad_beyond(message: &mut Vec<u8>, limit: usize, extra: usize) {
    if message.len() <= limit + extra {
        message.resize(limit + extra, 0);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use templar_codec::{CodecConfig, TensorSpec, decode, encode};

    fn schema() -> Schema {
        let specs = vec![
            TensorSpec::new("a", &[128, 128]),
            TensorSpec::new("norm", &[128]),
        ];
        Schema::new(specs, CodecConfig::default()).unwrap()
    }

    #[test]
    fn every_behaviour_round_trips_through_its_name() {
        let mut all = Behavior::attackers(3);
        all.extend([
            Behavior::Honest,
            Behavior::OtherData(Some(9)),
            Behavior::PartTime(0.25),
        ]);
        for behavior in all {
            assert_eq!(behavior.to_string().parse::<Behavior>(), Ok(behavior));
        }
        for bad in [
            "",
            "scaled",
            "scaled:inf",
            "copycat:x",
            "partial-copy:1:2",
            "part-time:0",
            "part-time:1.5",
            "fly",
        ] {
            let error = bad.parse::<Behavior>().unwrap_err();
            assert!(error.contains("expected one of"), "{error}");
        }
    }

    #[test]
    fn eval_overfit_spends_the_second_half_of_its_steps_on_its_prediction() {
        let assignment: Vec<u64> = (0..10).collect();
        let predicted = [100, 101, 102];
        // Batches of 2: 5 steps, the first 2 on the assignment, the other 3 on the prediction.
        assert_eq!(
            Behavior::EvalOverfit.training_samples(&assignment, &predicted, 2),
            vec![0, 1, 2, 3, 100, 101, 102, 100, 101, 102]
        );
        assert_eq!(
            Behavior::Honest.training_samples(&assignment, &predicted, 2),
            assignment
        );
        assert_eq!(
            Behavior::EvalOverfit.training_samples(&assignment, &[], 2),
            assignment
        );
    }

    #[test]
    fn only_training_behaviours_train_and_replay_trains_once() {
        assert!(Behavior::Honest.trains(5));
        assert!(Behavior::PartTime(0.5).is_honest() && Behavior::PartTime(0.5).step_share() == 0.5);
        assert_eq!(Behavior::Honest.step_share(), 1.0);
        assert!(Behavior::Late.trains(5));
        assert!(Behavior::Replay.trains(0) && !Behavior::Replay.trains(1));
        assert!(!Behavior::Noise.trains(0) && !Behavior::Copycat(1).trains(0));
    }

    #[test]
    fn noise_is_decodable_and_takes_the_target_norm() {
        let schema = schema();
        let mut payload = noise_payload(&schema, &mut Rng::new(1)).unwrap();
        rescale_to(&mut payload, &[3.0, 0.5]);
        let norms = tensor_norms(&payload);
        assert!(
            (norms[0] - 3.0).abs() < 1e-3 && (norms[1] - 0.5).abs() < 1e-3,
            "{norms:?}"
        );
        let bytes = encode(&schema, &payload, schema.config().index_coding);
        assert_eq!(tensor_norms(&decode(&schema, &bytes).unwrap()), norms);
    }

    #[test]
    fn medians_are_the_lower_middle_norm_per_tensor() {
        let schema = schema();
        let payloads: Vec<Payload> = [1.0, 4.0, 2.0, 8.0]
            .iter()
            .map(|&n| {
                let mut p = noise_payload(&schema, &mut Rng::new(n as u64)).unwrap();
                rescale_to(&mut p, &[n, n]);
                p
            })
            .collect();
        let refs: Vec<&Payload> = payloads.iter().collect();
        let medians = crate::gauntlet::norms::median_norms(&refs);
        assert!((medians[0] - 2.0).abs() < 1e-3, "{medians:?}");
    }

    #[test]
    fn a_partial_copy_shares_the_given_fraction_of_indices() {
        let schema = schema();
        let victim = noise_payload(&schema, &mut Rng::new(7)).unwrap();
        let filler = noise_payload(&schema, &mut Rng::new(8)).unwrap();
        let copy = partial_copy(&schema, &victim, &filler, 0.5, &mut Rng::new(9));
        let overlap = crate::gauntlet::overlap::index_overlap(&schema, &victim, &copy);
        assert!((0.45..=0.55).contains(&overlap), "overlap {overlap}");
        let bytes = encode(&schema, &copy, schema.config().index_coding);
        decode(&schema, &bytes).unwrap();
        let whole = partial_copy(&schema, &victim, &filler, 1.0, &mut Rng::new(9));
        let overlap = crate::gauntlet::overlap::index_overlap(&schema, &victim, &whole);
        assert!((overlap - 1.0).abs() < 1e-12, "overlap {overlap}");
    }

    #[test]
    fn poisoned_corrupted_and_padded_payloads_are_rejected_by_the_decoder() {
        let schema = schema();
        let coding = schema.config().index_coding;
        let mut payload = zero_payload(&schema).unwrap();
        let clean = encode(&schema, &payload, coding);
        decode(&schema, &clean).unwrap();
        let mut rng = Rng::new(3);
        for _ in 0..50 {
            let mut bytes = clean.clone();
            corrupt(&mut bytes, 0, &mut rng);
            assert!(decode(&schema, &bytes).is_err());
        }
        let mut long = clean.clone();
        pad_beyond(&mut long, schema.max_payload_bytes(), 1);
        assert!(decode(&schema, &long).is_err());
        poison(&mut payload);
        let error = decode(&schema, &encode(&schema, &payload, coding)).unwrap_err();
        assert!(error.to_string().contains("finite"), "{error}");
    }
}
