//! Data for templar: offline tokenizers, `templar data prepare` (text → fixed-length samples in
//! memory-mapped shards with a manifest), the deterministic per-(uid, window) sampler and data receipts.

mod corpus;
mod error;
mod manifest;
mod prepare;
mod sampler;
mod shard;
mod tokenizer;

pub use corpus::demo_corpus_dir;
pub use error::DataError;
pub use manifest::{Manifest, ShardManifest, SplitManifest, TokenWidth};
pub use prepare::{PrepareOptions, PrepareOutcome, prepare};
pub use sampler::{DataReceipt, Sampler};
pub use shard::{Dataset, Split, SplitReader};
pub use tokenizer::{Encoded, Tokenizer, TokenizerSpec};
