use crate::hub::HubError;

/// Everything that can go wrong making an image. File problems name the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FluxError {
    /// A request's field is out of range or malformed.
    #[error("invalid request: `{field}` {reason}")]
    InvalidRequest {
        /// The field at fault, as the request names it.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// A file could not be fetched from the Hub or the cache.
    #[error(transparent)]
    Hub(#[from] HubError),

    /// A config file is malformed or does not fit the model.
    #[error("{file}: {}{reason}", if field.is_empty() { String::new() } else { format!("field `{field}`: ") })]
    Config {
        /// The file, as `repo/path`.
        file: String,
        /// The key at fault; empty when the file as a whole is.
        field: String,
        /// What is wrong.
        reason: String,
    },

    /// A weight file could not be read or does not hold what the model needs.
    #[error("{file}: cannot load: {reason}")]
    Load {
        /// The file, with the command that verifies it where it may be damaged.
        file: String,
        /// What is wrong (a missing tensor, a wrong shape or dtype, …).
        reason: String,
    },

    /// The device cannot be opened or is not compiled in.
    #[error("device: {0}")]
    Device(String),

    /// The dtype cannot run on the device.
    #[error("dtype: {0}")]
    Dtype(String),

    /// No choice of weights fits the device's memory.
    #[error("memory: {0}")]
    Memory(String),

    /// A request that would not fit in memory, refused before it runs.
    #[error("{width}×{height} is too large for this server's memory: {reason}")]
    TooLarge {
        /// The requested width in pixels.
        width: u32,
        /// The requested height in pixels.
        height: u32,
        /// The memory figures behind the refusal.
        reason: String,
    },

    /// candle failed while running the model.
    #[error("{stage} failed: {reason}")]
    Compute {
        /// The stage that failed (text encoding, denoising, VAE decoding, …).
        stage: &'static str,
        /// candle's message.
        reason: String,
    },

    /// The request's client went away and it was stopped.
    #[error("the request was cancelled")]
    Cancelled,

    /// The engine's thread is gone (it panicked, or the engine was dropped).
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
