//! A miner's state saved beside its window, in two stages, so that training never waits for the
//! disk and nothing is copied.
//!
//! Right after the outer step, the optimizer and the error feedback — which nothing touches
//! until the next window trains — are lent to a thread that writes them while the payload is
//! uploaded and the peers' payloads are gathered. Once the aggregate is applied they come back,
//! and a second thread writes the new base model (which nothing changes until the next
//! aggregate: [`crate::replica::Replica`] refuses to change a base a save still reads) and
//! commits the generation while the next window trains. Until the commit the previous generation
//! stays current, so a crash at any moment loses at most the save in flight.

use serde::Serialize;
use templar_engine::{AdamW, DEFAULT_SHARD_BYTES, save_optimizer};

use crate::error::NodeError;
use crate::replica::{Replica, save_base};
use crate::state::{Background, Staging, StateDir, write_f32s};

pub const ERROR_FEEDBACK_FILE: &str = "error_feedback.bin";

#[derive(Default)]
pub enum Saving {
    #[default]
    Idle,
    TrainingState(Background<TrainingStateSaved>),
    Weights(Background<()>),
}

/// What the first stage hands back: what it borrowed, whatever happened to the write (a failed
/// save must not cost the miner its optimizer), and the staged generation with the error
/// feedback's digest.
pub struct TrainingStateSaved {
    optimizer: Option<AdamW>,
    error_feedback: Vec<Vec<f32>>,
    written: Result<(Staging, String), NodeError>,
}

impl Saving {
    /// First stage of generation `generation`: lends the replica's optimizer and the error
    /// feedback to a thread that writes them. Waits for any earlier save first.
    pub fn begin(
        &mut self,
        state: &StateDir,
        generation: u64,
        replica: &mut Replica,
        error_feedback: &mut Vec<Vec<f32>>,
    ) -> Result<(), NodeError> {
        self.finish(replica, error_feedback)?;
        let staging = state.begin(generation)?;
        let optimizer = replica.lend_optimizer();
        let buffers = std::mem::take(error_feedback);
        let names = replica.parameter_names();
        let work = move || {
            let written = staging.fill(|dir| {
                if let Some(optimizer) = &optimizer {
                    save_optimizer(dir, optimizer, &names)?;
                }
                write_f32s(&dir.join(ERROR_FEEDBACK_FILE), &buffers)
            });
            Ok(TrainingStateSaved {
                optimizer,
                error_feedback: buffers,
                written: written.map(|digest| (staging, digest)),
            })
        };
        *self = Saving::TrainingState(Background::spawn("saving the training state", work)?);
        Ok(())
    }

    /// Second stage: takes the optimizer and error feedback back, then a thread writes the
    /// replica's base and `record(error feedback digest)` and commits. Nothing to do when no
    /// first stage runs.
    pub fn commit_with_weights<T: Serialize + Send + 'static>(
        &mut self,
        replica: &mut Replica,
        error_feedback: &mut Vec<Vec<f32>>,
        record: impl FnOnce(String) -> T,
    ) -> Result<(), NodeError> {
        let Some((staging, digest)) = self.finish_training_state(replica, error_feedback)? else {
            return Ok(());
        };
        *self = Saving::Weights(commit_weights(staging, replica, record(digest))?);
        Ok(())
    }

    /// Waits for the second stage if it runs: before the base changes.
    pub fn finish_weights(&mut self) -> Result<(), NodeError> {
        match std::mem::take(self) {
            Saving::Weights(work) => work.wait(),
            other => {
                *self = other;
                Ok(())
            }
        }
    }

    /// Waits for any save in flight and puts back what it borrowed. A first stage without its
    /// second is abandoned: its generation never becomes current.
    pub fn finish(
        &mut self,
        replica: &mut Replica,
        error_feedback: &mut Vec<Vec<f32>>,
    ) -> Result<(), NodeError> {
        self.finish_training_state(replica, error_feedback)?;
        self.finish_weights()
    }

    fn finish_training_state(
        &mut self,
        replica: &mut Replica,
        error_feedback: &mut Vec<Vec<f32>>,
    ) -> Result<Option<(Staging, String)>, NodeError> {
        let work = match std::mem::take(self) {
            Saving::TrainingState(work) => work,
            other => {
                *self = other;
                return Ok(None);
            }
        };
        let saved = work.wait()?;
        if let Some(optimizer) = saved.optimizer {
            replica.return_optimizer(optimizer);
        }
        *error_feedback = saved.error_feedback;
        saved.written.map(Some)
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
