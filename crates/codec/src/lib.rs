//! SparseLoCo pseudo-gradient codec on plain `f32` buffers.
//!
//! A miner calls [`compress`] with its error-feedback buffers and pseudo-gradient, then [`encode`]s
//! the [`Payload`]. Every node [`decode`]s the peers' bytes against the model's [`Schema`] —
//! which rejects anything malformed with a [`DecodeError`] naming the tensor and the problem —
//! and [`aggregate`]s them into one dense update.
//!
//! No tensors, no I/O: the engine hands out named flat buffers, storage moves bytes.

pub mod aggregate;
mod bits;
mod codes;
pub mod compress;
pub mod config;
pub mod dct;
pub mod error;
pub mod index;
pub mod payload;
pub mod plan;
pub mod quant;
pub mod schema;
pub mod topk;
pub mod wire;

pub use aggregate::{aggregate, aggregate_tensor};
pub use compress::{compress, compress_tensor, compress_tensor_in_pieces};
pub use config::{CodecConfig, ErrorFeedback, IndexCoding, Transform, ValueCoding};
pub use error::{AggregateError, CompressError, DecodeError, PlanError};
pub use payload::{Payload, Quantized, SparseTensor, Values};
pub use plan::ChunkPlan;
pub use schema::{Schema, TensorSpec};
pub use wire::{assemble, decode, decode_keeping, encode, encode_record};
