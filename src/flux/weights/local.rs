//! A model's files once fetched: where each one is on disk, and what the
//! transformer's and T5's files hold.

use crate::flux::weights::named::Named;
use crate::flux::weights::quant::{Quant, T5Quant};

/// Every file of a model, on disk.
#[derive(Clone, Debug)]
pub struct LocalFiles {
    pub transformer: Named,
    pub transformer_config: Named,
    pub vae: Named,
    pub vae_config: Named,
    pub t5_config: Named,
    pub t5_weights: Vec<Named>,
    pub t5_tokenizer: Named,
    pub clip_config: Named,
    pub clip_weights: Named,
    pub clip_tokenizer: Named,
    /// What the transformer's and T5's files hold.
    pub quant: Quant,
    pub t5_quant: T5Quant,
}
