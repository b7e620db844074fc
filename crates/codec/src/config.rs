//! Codec settings every node of a network must agree on.

use serde::{Deserialize, Serialize};

/// Per-chunk transform applied before top-k selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Transform {
    /// Select directly among the values (SparseLoCo's production setting).
    #[default]
    None,
    /// Orthonormal DCT-II along each chunk axis (DeMo-style).
    Dct,
}

/// How kept indices are written on the wire. Both codings decode to the same indices,
/// so a receiver accepts either; the sender picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum IndexCoding {
    /// Upstream Templar's layout: 12 bits per index, pairs packed into 3 bytes.
    Packed12,
    /// Gaps between sorted indices, Rice-coded with a per-tensor parameter.
    #[default]
    Rice,
}

/// How kept values are written on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum ValueCoding {
    /// `n_bins` levels (2 bits for 4 bins, 8 bits for 256) over the whole tensor, with a
    /// lookup table of bin means. `range` is the clamp width in standard deviations.
    Quantized { n_bins: u16, range: f32 },
    /// Unquantized IEEE-754 single precision.
    F32,
    /// Unquantized bfloat16 (round to nearest even).
    Bf16,
}

impl ValueCoding {
    /// 2-bit values, the production setting (see `docs/codec.md` for the choice of `range`).
    pub const TWO_BIT: ValueCoding = ValueCoding::Quantized {
        n_bins: 4,
        range: DEFAULT_RANGE_2BIT,
    };
    /// 8-bit values.
    pub const EIGHT_BIT: ValueCoding = ValueCoding::Quantized {
        n_bins: 256,
        range: DEFAULT_RANGE_8BIT,
    };
}

impl Default for ValueCoding {
    fn default() -> Self {
        ValueCoding::TWO_BIT
    }
}

/// Clamp width (in σ of the kept values) of the 2-bit symmetric quantizer: the inner bin
/// edges sit at ±range·σ/4. Chosen by `templar bench quantizer`; see `docs/codec.md`.
pub const DEFAULT_RANGE_2BIT: f32 = 4.0;
/// Clamp width of the 8-bit quantizer: the outer levels cover ±3σ (measured better than ±4σ).
pub const DEFAULT_RANGE_8BIT: f32 = 6.0;

/// Error-feedback update `e = beta·e + lr·Δ`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ErrorFeedback {
    pub beta: f32,
    pub lr: f32,
}

impl Default for ErrorFeedback {
    fn default() -> Self {
        ErrorFeedback {
            beta: 0.95,
            lr: 1.0,
        }
    }
}

/// Everything that decides what a payload means. Part of the network's agreed configuration.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CodecConfig {
    /// Upper bound on each chunk side; the actual side is the largest divisor of the dimension ≤ this.
    pub target_chunk: usize,
    /// Values kept per chunk (made even and clamped to the chunk length).
    pub topk: usize,
    pub transform: Transform,
    pub index_coding: IndexCoding,
    pub values: ValueCoding,
    pub error_feedback: ErrorFeedback,
}

impl Default for CodecConfig {
    fn default() -> Self {
        CodecConfig {
            target_chunk: 64,
            topk: 64,
            transform: Transform::None,
            index_coding: IndexCoding::Rice,
            values: ValueCoding::TWO_BIT,
            error_feedback: ErrorFeedback::default(),
        }
    }
}
