//! What a caller asks for and what comes back while it is made.

use serde::{Deserialize, Serialize};

use crate::flux::error::FluxError;
use crate::protocol::MAX_IMAGES;

use crate::flux::request::init_image::InitImage;
use crate::limits::{check_seed, check_side, check_steps, check_strength, MAX_SEED};
pub use crate::limits::{DEFAULT_STEPS, DEFAULT_STRENGTH, MAX_SIDE, MAX_STEPS, MIN_SIDE};

/// One request: text-to-image, or an edit of [`GenerateRequest::init`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GenerateRequest {
    /// What to draw.
    pub prompt: String,
    /// Width in pixels: a multiple of 16 from [`MIN_SIDE`] to [`MAX_SIDE`].
    #[serde(default = "default_side")]
    pub width: u32,
    /// Height in pixels, as the width.
    #[serde(default = "default_side")]
    pub height: u32,
    /// Transformer passes, 1 to [`MAX_STEPS`] (schnell is made for 4).
    #[serde(default = "default_steps")]
    pub steps: u32,
    /// Random when absent; always reported back.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Accepted for compatibility and ignored: schnell is guidance-distilled.
    #[serde(default)]
    pub guidance: Option<f64>,
    /// Images to make, 1 to [`MAX_IMAGES`], their seeds counting up from the
    /// first; as many at a time in each transformer pass as memory allows.
    #[serde(default = "one")]
    pub n: u32,
    /// An image to edit (image-to-image); none for text-to-image.
    #[serde(skip)]
    pub init: Option<InitImage>,
}

fn default_side() -> u32 {
    1024
}
fn default_steps() -> u32 {
    DEFAULT_STEPS
}
fn one() -> u32 {
    1
}

impl GenerateRequest {
    /// A text-to-image request with the defaults: 1024×1024, 4 steps, a random seed, one image.
    pub fn new(prompt: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            width: default_side(),
            height: default_side(),
            steps: default_steps(),
            seed: None,
            guidance: None,
            n: 1,
            init: None,
        }
    }

    /// An edit of `init`'s image, at the size [`crate::limits::edit_size`]
    /// picks for it (change it with [`GenerateRequest::size`] after).
    pub fn edit(mut self, init: InitImage) -> Self {
        (self.width, self.height) = crate::limits::edit_size(init.image.width, init.image.height);
        self.init = Some(init);
        self
    }

    /// The image's size in pixels.
    pub fn size(mut self, width: u32, height: u32) -> Self {
        self.width = width;
        self.height = height;
        self
    }

    /// The number of transformer passes.
    pub fn steps(mut self, steps: u32) -> Self {
        self.steps = steps;
        self
    }

    /// The seed of the first image (the others count up from it).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// `n` images, seeds counting up from the first.
    pub fn images(mut self, n: u32) -> Self {
        self.n = n;
        self
    }

    /// Checks every field; the error names the field and what would be valid.
    pub fn validate(&self) -> Result<(), FluxError> {
        for (field, value) in [("width", self.width), ("height", self.height)] {
            check_side(field, value)
                .map_err(|reason| FluxError::InvalidRequest { field, reason })?;
        }
        if !(1..=MAX_IMAGES).contains(&self.n) {
            return Err(FluxError::InvalidRequest {
                field: "n",
                reason: format!("{} is outside 1 to {MAX_IMAGES}", self.n),
            });
        }
        check_steps(self.steps).map_err(|reason| FluxError::InvalidRequest {
            field: "steps",
            reason,
        })?;
        if let Some(seed) = self.seed {
            check_seed(seed).map_err(|reason| FluxError::InvalidRequest {
                field: "seed",
                reason,
            })?;
        }
        if self.prompt.trim().is_empty() {
            return Err(FluxError::InvalidRequest {
                field: "prompt",
                reason: "is empty".into(),
            });
        }
        if let Some(init) = &self.init {
            check_strength(init.strength).map_err(|reason| FluxError::InvalidRequest {
                field: "strength",
                reason,
            })?;
            let image = &init.image;
            if image.width == 0
                || image.height == 0
                || image.rgb.len() != image.width as usize * image.height as usize * 3
            {
                return Err(FluxError::InvalidRequest {
                    field: "image",
                    reason: format!(
                        "{} bytes are not a {}×{} RGB image",
                        image.rgb.len(),
                        image.width,
                        image.height
                    ),
                });
            }
            if let Some(mask) = &init.mask {
                if (mask.width, mask.height) != (image.width, image.height)
                    || mask.repaint.len() != mask.width as usize * mask.height as usize
                {
                    return Err(FluxError::InvalidRequest {
                        field: "mask",
                        reason: format!(
                            "is {}×{}, but the image is {}×{}: they must be the same size",
                            mask.width, mask.height, image.width, image.height
                        ),
                    });
                }
            }
        }
        Ok(())
    }
}

/// A random seed, at most [`MAX_SEED`], so that a JavaScript client reads
/// back exactly the seed that made its image.
pub fn random_seed() -> u64 {
    rand::random::<u64>() & MAX_SEED
}

impl GenerateRequest {
    /// Each image's seed: the request's (else a random one), counting up.
    pub fn seeds(&self) -> Vec<u64> {
        let first = self.seed.unwrap_or_else(random_seed);
        std::iter::successors(Some(first), |&s| Some(crate::limits::next_seed(s)))
            .take(self.n as usize)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_must_be_multiples_of_16_in_range() {
        let ok = GenerateRequest::new("a cat").size(512, 768);
        ok.validate().unwrap();
        let err = GenerateRequest::new("a cat")
            .size(1000, 512)
            .validate()
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("width") && msg.contains("1008"), "{msg}");
        let err = GenerateRequest::new("a cat")
            .size(512, 4096)
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("2048"));
        let err = GenerateRequest::new("a cat")
            .size(128, 512)
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("256"));
    }

    #[test]
    fn steps_are_bounded() {
        assert!(GenerateRequest::new("x").steps(0).validate().is_err());
        assert!(GenerateRequest::new("x").steps(51).validate().is_err());
        GenerateRequest::new("x").steps(50).validate().unwrap();
        let err = GenerateRequest::new("x").steps(0).validate().unwrap_err();
        assert!(err.to_string().contains("steps"));
    }
}
