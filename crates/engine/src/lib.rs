//! The training engine on libtorch: the LLaMA model, AdamW with its schedule, training over the
//! ranks of a process group with sharded gradients and moments, evaluation in bits per byte, flat
//! `f32` parameter access for the codec, and Hugging Face-compatible checkpoints.

mod buckets;
mod checkpoint;
mod config;
mod device;
mod error;
mod eval;
pub mod fit;
mod full_shard;
mod init;
pub mod memory;
mod model;
mod optim;
mod params;
mod sharded;
mod sharded_state;
pub mod tensor_files;
mod train;

pub use buckets::{BUCKET_VALUES, Bucket, Placed, Segment, buckets};
pub use checkpoint::{
    CONFIG_FILE, MODEL_FILE, MODEL_STEM, OPTIMIZER_FILE, OPTIMIZER_STEM, load_model,
    load_optimizer, model_entries, open_weights, save_lent_moments, save_model, save_optimizer,
    save_weights, write_atomic,
};
pub use config::{ModelConfig, Preset, TrainConfig};
pub use device::{CUDA_BUILD, DeviceChoice, describe, set_threads};
pub use error::EngineError;
pub use eval::Evaluation;
pub use full_shard::{FullyShardedTrainer, Placement};
pub use init::{fill_initial_range, fill_initial_values};
pub use model::{IGNORE_INDEX, Llama};
pub use optim::{AdamW, MomentsLoan, learning_rate};
pub use params::{NamedBuffer, ParameterReader, Parameters, parameter_shapes};
pub use sharded::{ShardedAdamW, ShardedTrainer};
pub use sharded_state::{load_optimizer_from_ranks, moments_path};
pub use tch::Device;
pub use tensor_files::{DEFAULT_SHARD_BYTES, TensorEntry, TensorFiles};
pub use train::{Batch, Gradients, StepStats, Trainer, train_step};
