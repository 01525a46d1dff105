//! The wire format of `schnell serve`, typed once for both ends: the server
//! (`crate::server`) writes these and the browser client (`crate::web`)
//! reads them, so neither spells a field name by hand. Target-neutral: plain
//! serde types, built for wasm32 too.
//!
//! OpenAI's Images API is followed field for field where it has the field;
//! schnell's extensions (`seed`, `steps`, `strength`, per-image `timings`,
//! the stream's progress fields) are marked as such.

mod images;
mod status;
mod stream;

pub use images::{
    partial_steps, ImageData, ImagesRequest, ImagesResponse, InputTokensDetails, Invalid,
    OutputFormat, OutputTokensDetails, ResponseFormat, Size, StageTimings, Usage, MAX_IMAGES,
    MAX_PARTIAL_IMAGES,
};
pub(crate) use status::human_bytes;
pub use status::{
    ErrorBody, ErrorDetail, Model, ModelList, Phase, Queue, Readiness, Retry, Tokenizers,
};
pub use stream::{CompletedImage, PartialImage, StreamEvent};

/// What the server says about `quality`, `background`, `moderation` and
/// `style`: accepted for OpenAI's clients, and without effect.
pub const IGNORED_FIELDS_NOTE: &str = "`quality`, `background`, `moderation`, `style` and \
`user` are accepted and have no effect: FLUX.1-schnell makes opaque images, at one quality";
