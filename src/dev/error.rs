//! The writer's one error type.

/// The writer's errors: I/O, candle, tokenizers and serialisation alike.
pub type DevResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;
