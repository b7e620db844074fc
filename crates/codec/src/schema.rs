//! The model's tensors as the codec sees them: names, shapes and chunk plans, in the fixed
//! order the engine hands out flat buffers. Payloads are validated against a schema.

use std::collections::HashMap;

use crate::config::{CodecConfig, ValueCoding};
use crate::error::{CompressError, PlanError};
use crate::index::rice_max_bits;
use crate::plan::ChunkPlan;

/// Tensor names longer than this are rejected on the wire.
pub const MAX_NAME_LEN: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

impl TensorSpec {
    pub fn new(name: impl Into<String>, shape: &[usize]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            shape: shape.to_vec(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Schema {
    config: CodecConfig,
    specs: Vec<TensorSpec>,
    plans: Vec<ChunkPlan>,
    by_name: HashMap<String, usize>,
}

impl Schema {
    pub fn new(specs: Vec<TensorSpec>, config: CodecConfig) -> Result<Schema, CompressError> {
        validate_config(&config)?;
        let mut plans = Vec::with_capacity(specs.len());
        let mut by_name = HashMap::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            let plan_error = |source: PlanError| CompressError::Plan {
                tensor: spec.name.clone(),
                source,
            };
            if spec.name.is_empty() || spec.name.len() > MAX_NAME_LEN {
                return Err(CompressError::Config(format!(
                    "tensor name `{}` must be 1..={MAX_NAME_LEN} bytes",
                    spec.name
                )));
            }
            if spec.shape.iter().any(|&d| d > u32::MAX as usize) {
                return Err(plan_error(PlanError::ChunkTooLarge(usize::MAX)));
            }
            plans.push(
                ChunkPlan::new(&spec.shape, config.target_chunk, config.topk)
                    .map_err(plan_error)?,
            );
            if by_name.insert(spec.name.clone(), i).is_some() {
                return Err(CompressError::Config(format!(
                    "tensor `{}` listed twice",
                    spec.name
                )));
            }
        }
        Ok(Schema {
            config,
            specs,
            plans,
            by_name,
        })
    }

    pub fn config(&self) -> &CodecConfig {
        &self.config
    }

    pub fn len(&self) -> usize {
        self.specs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }

    pub fn spec(&self, i: usize) -> &TensorSpec {
        &self.specs[i]
    }

    pub fn plan(&self, i: usize) -> &ChunkPlan {
        &self.plans[i]
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    pub fn numel(&self) -> usize {
        self.plans.iter().map(ChunkPlan::numel).sum()
    }

    /// Upper bound on the encoded size of a valid payload; larger ones are rejected unread.
    /// Bytes one payload holds in memory once decoded, besides its wire bytes: a `u16` index and
    /// the value (a code byte, or the float) of every kept coordinate.
    pub fn decoded_payload_bytes(&self) -> usize {
        let value = match self.config.values {
            ValueCoding::Quantized { .. } => 1,
            ValueCoding::F32 => 4,
            ValueCoding::Bf16 => 2,
        };
        self.plans.iter().map(|p| p.kept() * (2 + value)).sum()
    }

    /// Values one payload carries, over every tensor.
    pub fn payload_values(&self) -> usize {
        self.plans.iter().map(|p| p.kept()).sum()
    }

    pub fn max_payload_bytes(&self) -> usize {
        let per_tensor: usize = (0..self.len()).map(|i| self.max_tensor_bytes(i)).sum();
        crate::wire::HEADER_LEN + crate::wire::TRAILER_LEN + per_tensor
    }

    fn max_tensor_bytes(&self, i: usize) -> usize {
        let plan = &self.plans[i];
        let fixed = 2 + self.specs[i].name.len() + 1 + 4 * self.specs[i].shape.len() + 12 + 4 + 8;
        let quant = match self.config.values {
            ValueCoding::Quantized { n_bins, .. } => 10 + 4 * n_bins as usize,
            _ => 0,
        };
        let index = max_index_bytes(plan);
        fixed + quant + index + value_bytes(self.config.values, plan.kept())
    }
}

/// Largest index section a valid payload may carry for this plan.
pub fn max_index_bytes(plan: &ChunkPlan) -> usize {
    let packed12 = plan.kept().div_ceil(2) * 3;
    let rice = rice_max_bits(plan).div_ceil(8);
    packed12.max(rice)
}

/// Exact size of the value section.
pub fn value_bytes(coding: ValueCoding, kept: usize) -> usize {
    match coding {
        ValueCoding::Quantized { n_bins, .. } => {
            (kept * bits_per_code(n_bins) as usize).div_ceil(8)
        }
        ValueCoding::F32 => 4 * kept,
        ValueCoding::Bf16 => 2 * kept,
    }
}

/// Bits needed to write codes `0..n_bins`.
pub fn bits_per_code(n_bins: u16) -> u32 {
    (u16::BITS - (n_bins.max(2) - 1).leading_zeros()).max(1)
}

fn validate_config(config: &CodecConfig) -> Result<(), CompressError> {
    if let ValueCoding::Quantized { n_bins, range } = config.values {
        if !(2..=256).contains(&n_bins) || n_bins % 2 != 0 {
            return Err(CompressError::BadBins(n_bins));
        }
        if !(range.is_finite() && range > 0.0) {
            return Err(CompressError::Config(format!(
                "quantizer range must be a positive number of standard deviations, got {range}"
            )));
        }
    }
    let ef = config.error_feedback;
    if !(ef.beta.is_finite() && (0.0..=1.0).contains(&ef.beta) && ef.lr.is_finite()) {
        return Err(CompressError::Config(format!(
            "error feedback needs 0 ≤ beta ≤ 1 and a finite lr, got beta {} lr {}",
            ef.beta, ef.lr
        )));
    }
    if config.target_chunk == 0 || config.topk == 0 {
        return Err(CompressError::Config(
            "target_chunk and topk must be at least 1".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_per_code_covers_the_bins() {
        assert_eq!(bits_per_code(2), 1);
        assert_eq!(bits_per_code(4), 2);
        assert_eq!(bits_per_code(6), 3);
        assert_eq!(bits_per_code(16), 4);
        assert_eq!(bits_per_code(256), 8);
    }

    #[test]
    fn duplicate_names_and_odd_bins_are_refused() {
        let specs = vec![TensorSpec::new("a", &[4]), TensorSpec::new("a", &[4])];
        assert!(Schema::new(specs, CodecConfig::default()).is_err());
        let config = CodecConfig {
            values: ValueCoding::Quantized {
                n_bins: 3,
                range: 4.0,
            },
            ..CodecConfig::default()
        };
        assert_eq!(
            Schema::new(vec![TensorSpec::new("a", &[4])], config).unwrap_err(),
            CompressError::BadBins(3)
        );
    }
}
