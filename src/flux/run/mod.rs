//! Running the model: the engine thread and its status, the models it keeps
//! loaded, the denoising pipeline, edits, previews and the prompt cache.

pub mod edit;
pub mod engine;
pub mod loaded;
pub mod pipeline;
pub mod preview;
pub mod prompt_cache;
