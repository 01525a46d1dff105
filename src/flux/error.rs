use crate::hub::HubError;

/// Everything that can go wrong making an image. File problems name the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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

    /// A request that would not fit in memory, refused before it runs.
    #[error("{width}×{height} is too large for this server's memory: {reason}")]
    TooLarge {
        width: u32,
        height: u32,
        reason: String,
    },

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
            reason: candle_message(&e),
        }
    }
}

/// A candle error's message without the backtrace candle attaches when
/// `RUST_BACKTRACE` is set: messages reach clients, backtraces stay out.
pub(crate) fn candle_message(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => candle_message(inner),
        candle_core::Error::Context { inner, context } => {
            format!("{context}: {}", candle_message(inner))
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_leave_candles_backtraces_out() {
        let e = candle_core::Error::Msg("shapes differ".into());
        let with_trace = candle_core::Error::WithBacktrace {
            inner: Box::new(e),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        };
        assert!(with_trace.to_string().lines().count() > 1);
        let error = FluxError::compute("denoising")(with_trace.context("step 2"));
        assert_eq!(error.to_string(), "denoising failed: step 2: shapes differ");
    }
}
