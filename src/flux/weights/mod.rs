//! The model's files and what they hold: which files a model needs
//! (safetensors or GGUF), their configs, and reading them (memory maps, GGUF
//! parsing and city96's tensor names).

pub mod config;
pub mod files;
pub mod gguf;
pub mod local;
pub mod named;
pub mod quant;
pub mod tokenizers;
