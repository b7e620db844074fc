//! The node's view of the dataset: the agreed manifest, the sampler, and batches of samples.

use std::path::Path;

use templar_data::{Dataset, Manifest, Sampler, Split};
use templar_engine::Batch;

use crate::config::NetworkConfig;
use crate::error::NodeError;

pub struct Data {
    pub dataset: Dataset,
    pub sampler: Sampler,
    pub vocab_size: usize,
    /// Samples per optimizer step.
    pub batch_size: usize,
    /// Samples a miner is assigned per window: `inner_steps · batch_size`.
    pub per_window: usize,
}

impl Data {
    /// Opens the prepared dataset in `dir` and checks it is the one the network agreed on.
    pub fn open(dir: &Path, config: &NetworkConfig) -> Result<Data, NodeError> {
        let manifest = Manifest::read(dir)?;
        if manifest.content_hash != config.data.manifest_hash {
            return Err(NodeError::Config(format!(
                "the data in {} (content hash {}) is not this network's ({}): prepare the \
                 network's corpus with `templar data prepare` or point --data-dir at it",
                dir.display(),
                manifest.content_hash,
                config.data.manifest_hash
            )));
        }
        let train = &config.model.train;
        if manifest.seq_len != train.seq_len {
            return Err(NodeError::Config(format!(
                "the data in {} has {}-token samples, the model trains on {}",
                dir.display(),
                manifest.seq_len,
                train.seq_len
            )));
        }
        let dataset = Dataset::open(dir)?;
        let samples = dataset.split(Split::Train).len();
        let sampler = Sampler::new(config.data.sampler_seed, samples).ok_or_else(|| {
            NodeError::Config(format!("the training split in {} is empty", dir.display()))
        })?;
        Ok(Data {
            dataset,
            sampler,
            vocab_size: config.model.model.vocab_size,
            batch_size: train.batch_size,
            per_window: config.training.inner_steps as usize * train.batch_size,
        })
    }

    /// The samples miner `uid` is assigned in `window`, in training order.
    pub fn assignment(&self, uid: u16, window: u64) -> Vec<u64> {
        self.sampler.assignment(uid, window, self.per_window)
    }

    /// A batch of the given samples and the text bytes behind its predicted tokens.
    pub fn batch(&self, split: Split, ids: &[u64]) -> Result<(Batch, u64), NodeError> {
        let reader = self.dataset.split(split);
        let mut tokens = Vec::new();
        let bytes = reader.read_samples(ids, &mut tokens)?;
        let batch = Batch::from_tokens(&tokens, ids.len(), reader.seq_len(), self.vocab_size)?;
        Ok((batch, bytes))
    }
}
