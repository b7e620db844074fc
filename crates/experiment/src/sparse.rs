//! The sparse methods, which exchange the codec's encoded payloads: DeMo every step, SparseLoCo
//! every `inner_steps` steps. Payloads go through `encode` and `decode` as on the network, so the
//! bytes counted are the bytes a node would upload.

use templar_codec::aggregate::merge_tensor;
use templar_codec::payload::{bf16_to_f32, f32_to_bf16};
use templar_codec::{
    CodecConfig, ErrorFeedback, IndexCoding, Payload, Schema, SparseTensor, TensorSpec, Transform,
    ValueCoding, aggregate, compress, decode, encode,
};
use templar_engine::{ModelConfig, learning_rate, parameter_shapes};

use crate::dense::pseudo_gradient;
use crate::error::ExperimentError;
use crate::outer::{descend, sign_step};
use crate::run::{Study, Tracker, read, write};

/// The codec schema of the study's model.
fn schema(model: &ModelConfig, config: CodecConfig) -> Result<Schema, ExperimentError> {
    let specs = parameter_shapes(model)
        .into_iter()
        .map(|(name, shape)| {
            let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
            TensorSpec::new(name, &shape)
        })
        .collect();
    Schema::new(specs, config).map_err(ExperimentError::codec)
}

/// Zeroed buffers, one per schema tensor.
fn zeros(schema: &Schema) -> Vec<Vec<f32>> {
    (0..schema.len())
        .map(|i| vec![0f32; schema.plan(i).numel()])
        .collect()
}

/// Compresses with `error_feedback`, encodes, and decodes what a peer would receive.
fn send(
    schema: &Schema,
    error_feedback: &mut [Vec<f32>],
    delta: &[Vec<f32>],
) -> Result<(Payload, u64), ExperimentError> {
    let payload = compress(schema, error_feedback, delta).map_err(ExperimentError::codec)?;
    let bytes = encode(schema, &payload, IndexCoding::Rice);
    let received = decode(schema, &bytes).map_err(ExperimentError::codec)?;
    Ok((received, bytes.len() as u64))
}

/// What storing the error feedback as bf16 until the next exchange leaves of it (round to
/// nearest even, as the codec's bf16 values).
fn round_to_bf16(error_feedback: &mut [Vec<f32>]) {
    for value in error_feedback.iter_mut().flatten() {
        *value = bf16_to_f32(f32_to_bf16(*value));
    }
}

/// SparseLoCo as templar's miners run it: `inner_steps` AdamW steps, `Δ = θ_shared − θ_local`
/// through error feedback, top-k per chunk and 2-bit values; the median-norm-clipped mean over
/// choosers, applied as `θ ← θ − lr · aggregate` (a non-finite tensor is skipped, as on a node).
///
/// With `delay`, windows overlap as an honest one-process miner runs them (docs/node.md,
/// "Overlapped windows"): each replica starts the next round at once from its guess
/// `θ_shared − lr · own` and takes `delay` steps before the round's aggregate arrives; then the
/// guess is taken back and the aggregate carried into its live weights, and the round goes on.
pub(crate) fn sparseloco(
    study: &Study,
    inner_steps: u64,
    topk: usize,
    delay: Option<u64>,
    tracker: &mut Tracker,
) -> Result<(), ExperimentError> {
    let (replicas, rows) = (study.settings.replicas, study.settings.batch_size);
    let o = &study.settings.outer;
    let config = CodecConfig {
        target_chunk: o.chunk,
        topk,
        values: if o.quantizer_bins == 256 {
            ValueCoding::EIGHT_BIT
        } else {
            ValueCoding::TWO_BIT
        },
        error_feedback: ErrorFeedback {
            beta: o.error_feedback_beta,
            lr: 1.0,
        },
        ..CodecConfig::default()
    };
    let schema = schema(&study.preset.model, config)?;
    let mut trainers = (0..replicas)
        .map(|_| study.trainer(rows))
        .collect::<Result<Vec<_>, _>>()?;
    let mut error_feedback: Vec<Vec<Vec<f32>>> = (0..replicas).map(|_| zeros(&schema)).collect();
    let mut shared = read(&trainers[0])?;
    let mut update = zeros(&schema);
    // Overlapped, no replica holds the shared weights between rounds: a model of its own is
    // evaluated.
    let mut agreed = match delay {
        Some(_) => Some(study.trainer(rows)?),
        None => None,
    };
    let mut pending: Option<Vec<Vec<Vec<f32>>>> = None;
    tracker.synced(0, &trainers[0].model)?;
    for round in 0..study.rounds(inner_steps) {
        let steps = study.round_steps(round, inner_steps);
        let early = match (&pending, delay) {
            (Some(_), Some(delay)) => delay.min(steps.end - steps.start),
            _ => 0,
        };
        let train = |trainers: &mut [templar_engine::Trainer],
                     range: std::ops::Range<u64>,
                     tracker: &mut Tracker|
         -> Result<(), ExperimentError> {
            for (replica, trainer) in trainers.iter_mut().enumerate() {
                for step in range.clone() {
                    let batch = study.data.train_batch(replica, step, rows)?;
                    tracker.record_loss(trainer.train_step(&batch)?.loss);
                }
            }
            Ok(())
        };
        train(&mut trainers, steps.start..steps.start + early, tracker)?;
        if let Some(guesses) = pending.take() {
            // The last round's aggregate arrives under the live weights.
            let before = shared.clone();
            apply(&mut shared, &update, o.sparseloco_lr);
            for (trainer, guess) in trainers.iter_mut().zip(&guesses) {
                let mut live = read(trainer)?;
                carry(&mut live, &before, &shared, guess, o.sparseloco_lr);
                write(trainer, &live)?;
            }
            if let Some(agreed) = agreed.as_mut() {
                write(agreed, &shared)?;
                tracker.synced(steps.start, &agreed.model)?;
            }
        }
        train(&mut trainers, steps.start + early..steps.end, tracker)?;
        let mut received = Vec::with_capacity(replicas);
        let mut sizes = Vec::with_capacity(replicas);
        for (replica, trainer) in trainers.iter().enumerate() {
            let delta = pseudo_gradient(&shared, &read(trainer)?);
            let (payload, size) = send(&schema, &mut error_feedback[replica], &delta)?;
            if o.error_feedback_bf16 {
                round_to_bf16(&mut error_feedback[replica]);
            }
            received.push(payload);
            sizes.push(size);
        }
        let peers: Vec<&Payload> = received.iter().collect();
        aggregate(&schema, &peers, &mut update).map_err(ExperimentError::codec)?;
        tracker.payload_exchange(&sizes);
        if delay.is_some() && steps.end < study.steps() {
            // Each replica goes on from its guess: the shared weights moved by its own update.
            let mut guesses = Vec::with_capacity(replicas);
            for (trainer, own) in trainers.iter_mut().zip(&received) {
                let guess = alone(&schema, own)?;
                let mut live = shared.clone();
                for (buffer, tensor) in live.iter_mut().zip(&guess) {
                    descend(&mut buffer.data, tensor, o.sparseloco_lr);
                }
                write(trainer, &live)?;
                guesses.push(guess);
            }
            pending = Some(guesses);
            continue;
        }
        apply(&mut shared, &update, o.sparseloco_lr);
        for trainer in &mut trainers {
            write(trainer, &shared)?;
        }
        tracker.synced(steps.end, &trainers[0].model)?;
    }
    Ok(())
}

/// `θ ← θ − lr · update`, a tensor whose update is not finite skipped, as on a node.
fn apply(shared: &mut [templar_engine::NamedBuffer], update: &[Vec<f32>], lr: f32) {
    for (buffer, tensor) in shared.iter_mut().zip(update) {
        if tensor.iter().all(|v| v.is_finite()) {
            descend(&mut buffer.data, tensor, lr);
        }
    }
}

/// `live += lr · guess + (after − before)`: the guess taken back, the shared change carried.
fn carry(
    live: &mut [templar_engine::NamedBuffer],
    before: &[templar_engine::NamedBuffer],
    after: &[templar_engine::NamedBuffer],
    guess: &[Vec<f32>],
    lr: f32,
) {
    for (((live, before), after), guess) in live.iter_mut().zip(before).zip(after).zip(guess) {
        for (((value, b), a), g) in live
            .data
            .iter_mut()
            .zip(&before.data)
            .zip(&after.data)
            .zip(guess)
        {
            *value += lr * g + (a - b);
        }
    }
}

/// One payload as the aggregate would count it alone.
fn alone(schema: &Schema, own: &Payload) -> Result<Vec<Vec<f32>>, ExperimentError> {
    let mut out = zeros(schema);
    for (i, buffer) in out.iter_mut().enumerate() {
        merge_tensor(schema, i, &[&own.tensors[i]], &[1.0], buffer)
            .map_err(ExperimentError::codec)?;
    }
    Ok(out)
}

/// DeMo: no inner optimizer. Every step each replica folds its gradient into its momentum
/// (`m = decay·m + g`), sends the top-k DCT coefficients per chunk and keeps the rest; everyone
/// steps `lr` against the sign of the mean over choosers, after decoupled weight decay. Values go
/// as bf16, as DeMo sends them from the GPU.
pub(crate) fn demo(
    study: &Study,
    topk: usize,
    tracker: &mut Tracker,
) -> Result<(), ExperimentError> {
    let (replicas, rows) = (study.settings.replicas, study.settings.batch_size);
    let o = &study.settings.outer;
    let config = CodecConfig {
        target_chunk: o.chunk,
        topk,
        transform: Transform::Dct,
        values: ValueCoding::Bf16,
        error_feedback: ErrorFeedback {
            beta: o.demo_decay,
            lr: 1.0,
        },
        ..CodecConfig::default()
    };
    let schema = schema(&study.preset.model, config)?;
    let mut trainer = study.trainer(rows)?;
    let weight_decay = trainer.config.weight_decay as f32;
    let mut momentum: Vec<Vec<Vec<f32>>> = (0..replicas).map(|_| zeros(&schema)).collect();
    let mut gradient = zeros(&schema);
    let mut update = zeros(&schema);
    let everyone = vec![1.0f32; replicas];
    tracker.synced(0, &trainer.model)?;
    for step in 0..study.steps() {
        let mut received = Vec::with_capacity(replicas);
        let mut sizes = Vec::with_capacity(replicas);
        for (replica, momentum) in momentum.iter_mut().enumerate() {
            let batch = study.data.train_batch(replica, step, rows)?;
            tracker.record_loss(trainer.compute_gradients(&batch)?.loss);
            for (i, g) in gradient.iter_mut().enumerate() {
                trainer.model.params.read_gradient(i, g)?;
            }
            let (payload, size) = send(&schema, momentum, &gradient)?;
            received.push(payload);
            sizes.push(size);
        }
        for (i, out) in update.iter_mut().enumerate() {
            let peers: Vec<&SparseTensor> = received.iter().map(|p| &p.tensors[i]).collect();
            merge_tensor(&schema, i, &peers, &everyone, out).map_err(ExperimentError::codec)?;
        }
        let lr = learning_rate(&trainer.config, step) as f32;
        let mut weights = read(&trainer)?;
        for (buffer, tensor) in weights.iter_mut().zip(&update) {
            sign_step(&mut buffer.data, tensor, lr, weight_decay);
        }
        write(&mut trainer, &weights)?;
        tracker.payload_exchange(&sizes);
        tracker.synced(step + 1, &trainer.model)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::round_to_bf16;

    #[test]
    fn error_feedback_rounds_to_the_nearest_bf16() {
        // bf16 keeps 7 significand bits: near 1 its values are 2⁻⁷ apart. 1 + 2⁻⁸ lies halfway
        // and goes to the even neighbour 1; 1 + 3·2⁻⁸ lies halfway and goes up to the even
        // 1 + 2⁻⁶; 1 + 2⁻⁹ goes to the nearer 1.
        let p = |e: i32| 2f32.powi(e);
        let mut buffers = vec![
            vec![1.0 + p(-7), 1.0 + p(-8)],
            vec![1.0 + 3.0 * p(-8), 1.0 + p(-9)],
        ];
        round_to_bf16(&mut buffers);
        assert_eq!(
            buffers,
            vec![vec![1.0 + p(-7), 1.0], vec![1.0 + p(-6), 1.0]]
        );
    }
}
