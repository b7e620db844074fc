//! Typed errors. A decode error names the tensor and what was wrong with it, so a node can
//! log why it dropped a peer's payload.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PlanError {
    #[error("tensors of rank {0} are not supported (only 1-D and 2-D)")]
    UnsupportedRank(usize),
    #[error("tensor has no elements")]
    Empty,
    #[error("target_chunk must be at least 1")]
    ZeroTargetChunk,
    #[error(
        "chunk of {0} values exceeds the 65536-value limit of 16-bit indices; lower target_chunk"
    )]
    ChunkTooLarge(usize),
}

#[derive(Debug, Clone, PartialEq, Error)]
pub enum CompressError {
    #[error("tensor `{tensor}`: {source}")]
    Plan { tensor: String, source: PlanError },
    #[error("tensor `{tensor}`: buffer of {found} values, shape needs {expected}")]
    Length {
        tensor: String,
        expected: usize,
        found: usize,
    },
    #[error(
        "tensor `{tensor}`: error feedback holds NaN or infinity after adding the pseudo-gradient; \
         the buffer must be reset before the next window"
    )]
    NonFinite { tensor: String },
    #[error("quantizer needs an even number of bins between 2 and 256, got {0}")]
    BadBins(u16),
    #[error("codec settings: {0}")]
    Config(String),
    #[error("tensor `{tensor}`: the pseudo-gradient could not be read: {reason}")]
    Delta { tensor: String, reason: String },
}

/// Why an untrusted payload was rejected. `tensor` is empty for whole-payload problems.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum DecodeError {
    #[error("payload of {len} bytes exceeds the {limit}-byte limit for this model")]
    Oversize { len: usize, limit: usize },
    #[error(
        "payload truncated{}: needed {needed} more bytes, {available} left",
        at(tensor)
    )]
    Truncated {
        tensor: String,
        needed: usize,
        available: usize,
    },
    #[error("not a templar payload (bad magic bytes)")]
    BadMagic,
    #[error("payload format version {found}, this node reads version {supported}")]
    UnsupportedVersion { found: u16, supported: u16 },
    #[error("payload checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum { stored: u32, computed: u32 },
    #[error("{extra} unexpected bytes after the last tensor")]
    TrailingBytes { extra: usize },
    #[error("payload holds {found} tensors, the model has {expected}")]
    TensorCount { expected: usize, found: usize },
    #[error("tensor name is not UTF-8 or too long")]
    BadName,
    #[error("unknown tensor `{tensor}`")]
    UnknownTensor { tensor: String },
    #[error("tensor `{tensor}` appears twice")]
    DuplicateTensor { tensor: String },
    #[error("tensor `{tensor}`: shape {found:?}, the model has {expected:?}")]
    Shape {
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tensor `{tensor}`: {field} is {found}, the network uses {expected}")]
    Setting {
        tensor: String,
        field: &'static str,
        expected: String,
        found: String,
    },
    #[error("tensor `{tensor}`: unknown {field} tag {tag}")]
    UnknownTag {
        tensor: String,
        field: &'static str,
        tag: u8,
    },
    #[error("tensor `{tensor}`: {section} section is {found} bytes, expected {expected}")]
    SectionLength {
        tensor: String,
        section: &'static str,
        expected: String,
        found: usize,
    },
    #[error(
        "tensor `{tensor}`: index {index} in chunk {chunk} is out of range (chunk has {chunk_len} values)"
    )]
    IndexOutOfRange {
        tensor: String,
        chunk: usize,
        index: usize,
        chunk_len: usize,
    },
    #[error("tensor `{tensor}`: indices of chunk {chunk} are not in ascending order")]
    Unsorted { tensor: String, chunk: usize },
    #[error("tensor `{tensor}`: index {index} appears twice in chunk {chunk}")]
    DuplicateIndex {
        tensor: String,
        chunk: usize,
        index: usize,
    },
    #[error(
        "tensor `{tensor}`: value code {code} at position {position} is not below the {n_bins} bins"
    )]
    CodeOutOfRange {
        tensor: String,
        position: usize,
        code: u8,
        n_bins: u16,
    },
    #[error("tensor `{tensor}`: {field} is NaN or infinite")]
    NonFinite { tensor: String, field: &'static str },
    #[error("tensor `{tensor}`: quantizer scale {scale} outside [{min}, {max}]")]
    ScaleOutOfBounds {
        tensor: String,
        scale: f32,
        min: f32,
        max: f32,
    },
    #[error("tensor `{tensor}`: Rice parameter {param} is above 16")]
    RiceParameter { tensor: String, param: u8 },
    #[error("tensor `{tensor}`: nonzero padding bits in the {section} section")]
    Padding {
        tensor: String,
        section: &'static str,
    },
}

fn at(tensor: &str) -> String {
    if tensor.is_empty() {
        String::new()
    } else {
        format!(" in tensor `{tensor}`")
    }
}

/// Problems with the peers handed to aggregation: the caller's bug, not a peer's fault,
/// since every payload passed validation against the same schema first.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AggregateError {
    #[error("tensor `{tensor}`: output buffer of {found} values, shape needs {expected}")]
    Length {
        tensor: String,
        expected: usize,
        found: usize,
    },
    #[error("peer {peer} does not match the schema at tensor `{tensor}`")]
    PeerMismatch { peer: usize, tensor: String },
    #[error("{found} output buffers for {expected} tensors")]
    OutputCount { expected: usize, found: usize },
}
