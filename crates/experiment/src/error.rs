use thiserror::Error;

#[derive(Debug, Error)]
pub enum ExperimentError {
    #[error(transparent)]
    Engine(#[from] templar_engine::EngineError),
    #[error(transparent)]
    Data(#[from] templar_data::DataError),
    #[error("codec: {0}")]
    Codec(String),
    #[error("{0}")]
    Settings(String),
}

impl ExperimentError {
    pub(crate) fn codec(error: impl std::fmt::Display) -> Self {
        ExperimentError::Codec(error.to_string())
    }
}
