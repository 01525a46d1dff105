use crate::hub::HubError;

/// Everything that can go wrong making an image. File problems name the file.
#[derive(Debug, thiserror::Error)]
pub enum FluxError {
    #[error("invalid request: `{field}` {reason}")]
    InvalidRequest { field: &'static str, reason: String },

    #[error(transparent)]
    Hub(#[from] HubError),

    #[error("{file}: {}{reason}", if field.is_empty() { String::new() } else { format!("field `{field}`: ") })]
    Config {
        file: String,
        field: String,
        reason: String,
    },

    #[error("{file}: cannot load: {reason}")]
    Load { file: String, reason: String },

    #[error("device: {0}")]
    Device(String),

    #[error("dtype: {0}")]
    Dtype(String),

    #[error("memory: {0}")]
    Memory(String),

    #[error("{stage} failed: {reason}")]
    Compute { stage: &'static str, reason: String },

    #[error("the request was cancelled")]
    Cancelled,

    #[error("the generation engine has stopped")]
    EngineStopped,
}

impl FluxError {
    pub(crate) fn compute(stage: &'static str) -> impl FnOnce(candle_core::Error) -> FluxError {
        move |e| FluxError::Compute {
            stage,
            reason: e.to_string(),
        }
    }
}
