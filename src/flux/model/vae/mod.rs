//! The VAE's decoder, owned so that its mid-block attention is bounded in
//! memory (`crate::flux::model::attention`) and a decode can stop between blocks when its
//! client has gone; and its encoder (image edits), owned for the same
//! bounded attention.
//!
//! On the CPU in f32 it is `crate::flux::model::vae::cpu`'s channels-last decoder, several
//! times faster there than candle's layers. Elsewhere it is the decoder half
//! of candle-transformers 0.11's `models/flux/autoencoder.rs` (MIT or
//! Apache-2.0, by the candle authors), line for line; in F32 it computes
//! what candle's does (pinned below). The encoder is likewise
//! `crate::flux::model::vae::cpu`'s on the CPU in f32, elsewhere that file's encoder half,
//! line for line. The config type is candle's.

mod candle;
mod codec;
pub mod cpu;
#[cfg(test)]
mod tests;
mod tiles;

pub use codec::{Decoder, Encoder};
pub use tiles::TILE;
