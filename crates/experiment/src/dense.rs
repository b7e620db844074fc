//! The dense baselines: data-parallel AdamW and DiLoCo, both exchanging fp32 buffers by all-reduce.

use templar_engine::NamedBuffer;

use crate::error::ExperimentError;
use crate::outer::{Nesterov, mean_into, ring_allreduce_bytes};
use crate::run::{Study, Tracker, read, write};

/// Bytes of one dense fp32 exchange of the whole model, per replica.
fn allreduce_bytes(study: &Study) -> u64 {
    ring_allreduce_bytes(
        4 * study.preset.model.parameter_count(),
        study.settings.replicas as u64,
    )
}

/// One model stepping on the union of the replicas' batches: its gradient is the mean of the
/// replicas' gradients, as an all-reduce of each step's gradient would give.
pub(crate) fn ddp(study: &Study, tracker: &mut Tracker) -> Result<(), ExperimentError> {
    let (replicas, rows) = (study.settings.replicas, study.settings.batch_size);
    let mut trainer = study.trainer(replicas * rows)?;
    tracker.synced(0, &trainer.model)?;
    for step in 0..study.steps() {
        let batch = study.data.union_batch(replicas, step, rows)?;
        tracker.record_loss(trainer.train_step(&batch)?.loss);
        tracker.dense_exchange(allreduce_bytes(study));
        tracker.synced(step + 1, &trainer.model)?;
    }
    Ok(())
}

/// `inner_steps` AdamW steps per replica from the shared weights, then the mean pseudo-gradient
/// through outer Nesterov; every replica keeps its own AdamW moments across rounds.
pub(crate) fn diloco(
    study: &Study,
    inner_steps: u64,
    tracker: &mut Tracker,
) -> Result<(), ExperimentError> {
    let (replicas, rows) = (study.settings.replicas, study.settings.batch_size);
    let mut trainers = (0..replicas)
        .map(|_| study.trainer(rows))
        .collect::<Result<Vec<_>, _>>()?;
    let mut shared = read(&trainers[0])?;
    let o = &study.settings.outer;
    let mut outer: Vec<Nesterov> = shared
        .iter()
        .map(|b| Nesterov::new(o.diloco_lr, o.diloco_momentum, b.data.len()))
        .collect();
    tracker.synced(0, &trainers[0].model)?;
    for round in 0..study.rounds(inner_steps) {
        let steps = study.round_steps(round, inner_steps);
        let mut deltas = Vec::with_capacity(replicas);
        for (replica, trainer) in trainers.iter_mut().enumerate() {
            for step in steps.clone() {
                let batch = study.data.train_batch(replica, step, rows)?;
                tracker.record_loss(trainer.train_step(&batch)?.loss);
            }
            deltas.push(pseudo_gradient(&shared, &read(trainer)?));
        }
        for (i, (buffer, outer)) in shared.iter_mut().zip(&mut outer).enumerate() {
            let mut mean = vec![0f32; buffer.data.len()];
            let inputs: Vec<&[f32]> = deltas.iter().map(|d| d[i].as_slice()).collect();
            mean_into(&mut mean, &inputs);
            outer.step(&mut buffer.data, &mean);
        }
        for trainer in &mut trainers {
            write(trainer, &shared)?;
        }
        tracker.dense_exchange(allreduce_bytes(study));
        tracker.synced(steps.end, &trainers[0].model)?;
    }
    Ok(())
}

/// `Δ = θ_shared − θ_local` per tensor: the direction the outer step descends.
pub(crate) fn pseudo_gradient(shared: &[NamedBuffer], local: &[NamedBuffer]) -> Vec<Vec<f32>> {
    shared
        .iter()
        .zip(local)
        .map(|(s, l)| s.data.iter().zip(&l.data).map(|(a, b)| a - b).collect())
        .collect()
}
