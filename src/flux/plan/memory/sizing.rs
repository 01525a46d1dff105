//! What the engine planned for, and what a request needs under it: batch size, tiled decoding, the largest image.

use crate::flux::error::FluxError;
use crate::flux::weights::quant::{Quant, T5Quant};

use super::budget::*;
use super::estimate::*;

/// What the engine planned for: the model, the weights, and the memory
/// measured before anything loaded. Requests are checked against it.
#[derive(Clone, Debug)]
pub struct Sizing {
    /// The model's sizes.
    pub size: ModelSize,
    /// The weights chosen for the transformer and T5.
    pub plan: (Quant, T5Quant),
    /// What the plan was made for.
    pub work: Workload,
    /// The memory measured (or given) before anything loaded.
    pub budget: MemoryBudget,
}

impl Sizing {
    /// The estimated peak for `batch` `width`×`height` images in each pass
    /// (an edit's, with `edit`).
    pub fn need(&self, width: u32, height: u32, tiled_vae: bool, edit: bool, batch: u32) -> u64 {
        let work = Workload {
            width,
            height,
            tiled_vae,
            edit,
            batch,
            ..self.work
        };
        estimate_peak(&self.size, self.plan, &work)
    }

    /// The most a request may need: the budget, or what the planned size
    /// needs if that is more (an explicit `--quant` may plan beyond the
    /// budget; requests up to the planned size then run as asked).
    pub fn limit(&self) -> u64 {
        self.budget
            .bytes
            .max(self.need(self.work.width, self.work.height, false, false, 1))
    }

    /// How an image will be decoded: whole if it fits, else in tiles if
    /// that fits; an image that fits neither way is refused, before it runs.
    pub fn check(&self, width: u32, height: u32, edit: bool) -> Result<VaeDecode, FluxError> {
        if let Some(decode) = self.fits(width, height, edit) {
            return Ok(decode);
        }
        let need = self.need(width, height, true, edit, 1);
        let largest = match self.largest_square() {
            Some(side) => format!("the largest square image that fits is {side}×{side}"),
            None => "no image size fits".into(),
        };
        Err(FluxError::TooLarge {
            width,
            height,
            reason: format!(
                "it needs about {}, more than the {} limit ({} when the model was planned); {largest}",
                gb(need),
                gb(self.limit()),
                self.budget.source,
            ),
        })
    }

    /// The largest side (a multiple of 16) of a square image that fits,
    /// decoded in tiles if need be.
    pub fn largest_square(&self) -> Option<u32> {
        (crate::limits::MIN_SIDE..=crate::limits::MAX_SIDE)
            .step_by(16)
            .take_while(|&side| self.fits(side, side, false).is_some())
            .last()
    }

    /// How many of `n` images may share each transformer pass: as many as
    /// fit, decoded as `decode` says (at least one: that one was checked).
    pub fn batch(&self, width: u32, height: u32, edit: bool, n: u32, decode: VaeDecode) -> u32 {
        let tiled = decode == VaeDecode::Tiled;
        (1..=n.max(1))
            .rev()
            .find(|&b| self.need(width, height, tiled, edit, b) <= self.limit())
            .unwrap_or(1)
    }

    pub(super) fn fits(&self, width: u32, height: u32, edit: bool) -> Option<VaeDecode> {
        let limit = self.limit();
        if self.need(width, height, false, edit, 1) <= limit {
            Some(VaeDecode::Whole)
        } else if self.need(width, height, true, edit, 1) <= limit {
            Some(VaeDecode::Tiled)
        } else {
            None
        }
    }
}

/// How the VAE decodes one image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VaeDecode {
    /// In one piece.
    Whole,
    /// In overlapping tiles, when the whole would not fit.
    Tiled,
}
