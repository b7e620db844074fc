//! The outer step of a node whose training is fully sharded ([`FullyShardedTrainer`]), where no
//! rank holds the whole model: each rank holds only the network model's tensors it owns (the
//! round robin of [`TensorOwner`]) and their error feedback. The live tensors a rank owns are
//! gathered to it whole, a unit at a time; it compresses them as one process would; rank 0
//! assembles the payload from every rank's records; and every rank's spans of the live weights
//! are then set back to the network model from the tensors' owners. The payload's bytes and the
//! error feedback are one process's, whatever the number of ranks.

use templar_codec::quant::Rule;
use templar_codec::{IndexCoding, Schema, SparseTensor, assemble, compress_tensor_in_pieces};
use templar_engine::FullyShardedTrainer;

use super::{TensorOwner, failure_frame, first_failure, frame, unframe};
use crate::error::NodeError;

/// Values of a pseudo-gradient made at once (whole bands, as the one-process outer step).
const PIECE: usize = 1 << 22;

/// The outer step of one rank of a fully sharded node: `base` holds the network model's tensors
/// this rank owns (the others empty), as does `error_feedback`. Returns the payload's bytes on
/// rank 0 (`None` elsewhere). The live weights are put back to the base. A codec failure on any
/// rank fails the step on every rank, naming it, and every rank resets its error feedback.
pub fn outer_step_on_shards(
    trainer: &mut FullyShardedTrainer,
    schema: &Schema,
    coding: IndexCoding,
    base: &[Vec<f32>],
    error_feedback: &mut [Vec<f32>],
) -> Result<Option<Vec<u8>>, NodeError> {
    let owner = TensorOwner {
        rank: trainer.rank(),
        world: trainer.world(),
    };
    check_owned(schema, owner, base, "network model")?;
    check_owned(schema, owner, error_feedback, "error-feedback")?;
    let mut compressed: Vec<(usize, SparseTensor)> = Vec::new();
    let mut failure: Option<String> = None;
    trainer.visit_owned(
        |i| owner.owns(i),
        |i, live| {
            if failure.is_some() {
                return Ok(());
            }
            // The pseudo-gradient `base − live`, a piece of the live tensor at a time.
            let band = schema.plan(i).band_len();
            let fill = |first_band: usize, out: &mut [f32]| {
                let start = first_band * band;
                live.read_range(start, out).map_err(|e| e.to_string())?;
                for (live, base) in out.iter_mut().zip(&base[i][start..]) {
                    *live = base - *live;
                }
                Ok(())
            };
            let feedback = &mut error_feedback[i];
            match compress_tensor_in_pieces(schema, i, feedback, PIECE, Rule::Symmetric, fill) {
                Ok(tensor) => compressed.push((i, tensor)),
                Err(error) => failure = Some(error.to_string()),
            }
            Ok(())
        },
    )?;
    let frame = match &failure {
        None => frame(schema, coding, &compressed),
        Some(reason) => failure_frame(reason),
    };
    let frames = trainer
        .group_mut()
        .all_gather_bytes(&frame)
        .map_err(|e| NodeError::Ranks(format!("gathering the outer step's tensors: {e}")))?;
    // Every live tensor goes back to the base, whatever the codec did (as in one process).
    trainer.set_from_owned(
        |i| owner.owns(i),
        |i, start, out| {
            out.copy_from_slice(&base[i][start..start + out.len()]);
            Ok(())
        },
    )?;
    if let Some(failed) = first_failure(&frames) {
        error_feedback.iter_mut().for_each(|e| e.fill(0.0));
        return Err(NodeError::Codec(format!(
            "{failed}; error feedback was reset"
        )));
    }
    if owner.rank != 0 {
        return Ok(None);
    }
    let records = unframe(&frames, schema.len())?;
    let bytes = assemble(schema, &records)
        .map_err(|e| NodeError::Ranks(format!("assembling the payload: {e}")))?;
    Ok(Some(bytes))
}

/// `buffers` holds a whole tensor for each tensor `owner` owns and nothing for the others.
fn check_owned(
    schema: &Schema,
    owner: TensorOwner,
    buffers: &[Vec<f32>],
    what: &str,
) -> Result<(), NodeError> {
    if buffers.len() != schema.len() {
        return Err(NodeError::Codec(format!(
            "{} {what} buffers for {} tensors",
            buffers.len(),
            schema.len()
        )));
    }
    for (i, buffer) in buffers.iter().enumerate() {
        let expected = if owner.owns(i) {
            schema.plan(i).numel()
        } else {
            0
        };
        if buffer.len() != expected {
            return Err(NodeError::Codec(format!(
                "rank {} of {}: the {what} buffer of tensor {i} holds {} values, not {expected}",
                owner.rank,
                owner.world,
                buffer.len()
            )));
        }
    }
    Ok(())
}
