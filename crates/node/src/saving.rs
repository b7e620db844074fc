//! A miner's state saved beside its window, so that neither training nor the window's
//! protocol waits for the disk, and nothing is copied.
//!
//! Right after the outer step, the optimizer's moments are lent tensor by tensor (see
//! [`templar_engine::AdamW::lend_moments`]) and the error feedback is moved to a thread that
//! writes them while the payload is uploaded, the peers' payloads are gathered and — once the
//! aggregate is applied — the next window trains: a step waits only for moments not yet written,
//! and the error feedback is not needed before the next outer step. After the apply a second
//! thread waits for the first, writes the new base model (which nothing changes until the next
//! aggregate: [`crate::replica::Replica`] refuses to change a base a save still reads) and
//! commits the generation. Until the commit the previous generation stays current, so a crash at
//! any moment loses at most the save in flight.

use serde::Serialize;
use templar_engine::{DEFAULT_SHARD_BYTES, save_lent_moments};

use crate::error::NodeError;
use crate::replica::{Replica, save_base};
use crate::state::{Background, Staging, StateDir, write_f32s};

pub const ERROR_FEEDBACK_FILE: &str = "error_feedback.bin";

/// A miner's save in flight, and the error feedback it holds until it is done.
#[derive(Default)]
pub enum Saving {
    #[default]
    Idle,
    /// The first stage: the moments and the error feedback.
    TrainingState(Background<TrainingStateSaved>),
    /// The first stage, then the base and the commit.
    Weights(Background<WeightsSaved>),
}

/// What the first stage hands on: the error feedback, whatever happened to the write (a failed
/// save must not cost the miner its error feedback), and the staged generation with the error
/// feedback's digest.
pub struct TrainingStateSaved {
    error_feedback: Vec<Vec<f32>>,
    written: Result<(Staging, String), NodeError>,
}

/// What the second stage hands back.
pub struct WeightsSaved {
    error_feedback: Vec<Vec<f32>>,
    committed: Result<(), NodeError>,
}

impl Saving {
    /// First stage of generation `generation`: lends the replica's optimizer moments and moves
    /// the error feedback to a thread that writes them. Waits for any earlier save first.
    pub fn begin(
        &mut self,
        state: &StateDir,
        generation: u64,
        replica: &mut Replica,
        error_feedback: &mut Vec<Vec<f32>>,
    ) -> Result<(), NodeError> {
        self.finish(error_feedback)?;
        let staging = state.begin(generation)?;
        let moments = replica.lend_moments();
        let buffers = std::mem::take(error_feedback);
        let names = replica.parameter_names();
        let work = move || {
            let written = staging.fill(|dir| {
                if let Some(moments) = moments {
                    save_lent_moments(dir, moments, &names)?;
                }
                write_f32s(&dir.join(ERROR_FEEDBACK_FILE), &buffers)
            });
            Ok(TrainingStateSaved {
                error_feedback: buffers,
                written: written.map(|digest| (staging, digest)),
            })
        };
        *self = Saving::TrainingState(Background::spawn("saving the training state", work)?);
        Ok(())
    }

    /// Second stage, without waiting for the first: a thread waits for it, writes the replica's
    /// base and `record(error feedback digest)`, and commits. Nothing to do when no first stage
    /// runs.
    pub fn commit_with_weights<T: Serialize + Send + 'static>(
        &mut self,
        replica: &Replica,
        record: impl FnOnce(String) -> T + Send + 'static,
    ) -> Result<(), NodeError> {
        let first = match std::mem::take(self) {
            Saving::TrainingState(first) => first,
            other => {
                *self = other;
                return Ok(());
            }
        };
        let base = replica.shared_base();
        let config = replica.model.config.clone();
        let work = move || {
            let saved = first.wait()?;
            let committed = saved.written.and_then(|(staging, digest)| {
                staging.fill(|dir| save_base(dir, &config, &base, DEFAULT_SHARD_BYTES))?;
                staging.commit(&record(digest))
            });
            Ok(WeightsSaved {
                error_feedback: saved.error_feedback,
                committed,
            })
        };
        *self = Saving::Weights(Background::spawn("saving the weights", work)?);
        Ok(())
    }

    /// Waits for the second stage if it runs, which reads the base: before the base changes.
    pub fn finish_weights(&mut self, error_feedback: &mut Vec<Vec<f32>>) -> Result<(), NodeError> {
        match std::mem::take(self) {
            Saving::Weights(work) => {
                let saved = work.wait()?;
                *error_feedback = saved.error_feedback;
                saved.committed
            }
            other => {
                *self = other;
                Ok(())
            }
        }
    }

    /// Waits for any save in flight and takes the error feedback back: before the outer step.
    /// A first stage without its second is abandoned: its generation never becomes current.
    pub fn finish(&mut self, error_feedback: &mut Vec<Vec<f32>>) -> Result<(), NodeError> {
        match std::mem::take(self) {
            Saving::Idle => Ok(()),
            Saving::TrainingState(work) => {
                let saved = work.wait()?;
                *error_feedback = saved.error_feedback;
                saved.written.map(drop)
            }
            weights @ Saving::Weights(_) => {
                *self = weights;
                self.finish_weights(error_feedback)
            }
        }
    }
}

/// Writes `replica`'s base into `staging` and commits it with `record`, on a thread that reads
/// the base without a copy: the replica refuses to change its base until the thread is done.
pub fn commit_weights<T: Serialize + Send + 'static>(
    staging: Staging,
    replica: &Replica,
    record: T,
) -> Result<Background<()>, NodeError> {
    let base = replica.shared_base();
    let config = replica.model.config.clone();
    let work = move || {
        staging.fill(|dir| save_base(dir, &config, &base, DEFAULT_SHARD_BYTES))?;
        staging.commit(&record)
    };
    Background::spawn("saving the weights", work)
}
