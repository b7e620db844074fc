//! Research runs on templar's own code. The convergence study trains the same model on the same
//! token budget, seed and data order while its replicas communicate in four ways — data-parallel
//! AdamW, DiLoCo, DeMo and SparseLoCo (templar's codec) — and measures validation bits per byte
//! against the bytes each replica sent. Replicas run in one process, one after another: the study
//! needs the codec and the engine, not the network.

mod data;
mod dense;
mod error;
mod method;
mod outer;
mod report;
mod run;
mod settings;
mod sparse;

pub use data::StudyData;
pub use error::ExperimentError;
pub use method::Method;
pub use outer::{Nesterov, descend, mean_into, ring_allreduce_bytes, sign_step};
pub use report::{Goal, Report};
pub use run::{CurvePoint, PayloadRange, RunResult, Study, evaluate};
pub use settings::{OuterSettings, Settings};
