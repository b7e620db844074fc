//! The study's data: a prepared dataset, the same per-(replica, step) samples for every method,
//! and a fixed validation set.

use std::path::Path;

use templar_data::{Dataset, Sampler, Split};
use templar_engine::Batch;

use crate::error::ExperimentError;

/// Validation samples evaluated per forward pass.
const EVAL_ROWS: usize = 16;

pub struct StudyData {
    dataset: Dataset,
    sampler: Sampler,
    vocab_size: usize,
    validation: Vec<(Batch, u64)>,
}

impl StudyData {
    /// Opens the dataset prepared in `dir`; `validation_samples` held-out samples, drawn once by
    /// `seed`, are the validation set of every run.
    pub fn open(
        dir: &Path,
        vocab_size: usize,
        seed: u64,
        validation_samples: usize,
    ) -> Result<StudyData, ExperimentError> {
        let dataset = Dataset::open(dir)?;
        let train = dataset.split(Split::Train).len();
        let sampler = Sampler::new(seed, train).ok_or_else(|| {
            ExperimentError::Settings(format!("the training split in {} is empty", dir.display()))
        })?;
        let held_out = dataset.split(Split::Validation);
        let count = (validation_samples as u64).min(held_out.len());
        if count == 0 {
            return Err(ExperimentError::Settings(format!(
                "the dataset in {} has no validation samples; prepare it with a validation fraction above 0",
                dir.display()
            )));
        }
        // Spread over the held-out documents rather than the first few of them.
        let ids = Sampler::new(seed, held_out.len())
            .map(|s| s.random(0, count as usize))
            .unwrap_or_default();
        let mut validation = Vec::new();
        for rows in ids.chunks(EVAL_ROWS) {
            validation.push(batch(&dataset, Split::Validation, rows, vocab_size)?);
        }
        Ok(StudyData {
            dataset,
            sampler,
            vocab_size,
            validation,
        })
    }

    pub fn seq_len(&self) -> usize {
        self.dataset.split(Split::Train).seq_len()
    }

    pub fn validation(&self) -> &[(Batch, u64)] {
        &self.validation
    }

    /// The `rows` samples replica `replica` trains on at optimizer step `step`: the same for every
    /// method, and disjoint between the replicas of one step.
    pub fn train_batch(
        &self,
        replica: usize,
        step: u64,
        rows: usize,
    ) -> Result<Batch, ExperimentError> {
        let ids = self.sampler.assignment(replica as u16, step, rows);
        Ok(batch(&self.dataset, Split::Train, &ids, self.vocab_size)?.0)
    }

    /// Every replica's batch of `step` as one batch (what data-parallel training averages over).
    pub fn union_batch(
        &self,
        replicas: usize,
        step: u64,
        rows: usize,
    ) -> Result<Batch, ExperimentError> {
        let ids = self.sampler.assignment(0, step, rows * replicas);
        Ok(batch(&self.dataset, Split::Train, &ids, self.vocab_size)?.0)
    }
}

fn batch(
    dataset: &Dataset,
    split: Split,
    ids: &[u64],
    vocab_size: usize,
) -> Result<(Batch, u64), ExperimentError> {
    let reader = dataset.split(split);
    let mut tokens = Vec::new();
    let bytes = reader.read_samples(ids, &mut tokens)?;
    let batch = Batch::from_tokens(&tokens, ids.len(), reader.seq_len(), vocab_size)?;
    Ok((batch, bytes))
}
