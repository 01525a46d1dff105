//! What a caller asks for and what comes back while it is made.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::FluxError;
use crate::hub::HubEvent;

use crate::limits::{check_seed, check_side, check_steps, MAX_SEED};
pub use crate::limits::{DEFAULT_STEPS, MAX_SIDE, MAX_STEPS, MIN_SIDE};

/// One text-to-image request.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GenerateRequest {
    pub prompt: String,
    #[serde(default = "default_side")]
    pub width: u32,
    #[serde(default = "default_side")]
    pub height: u32,
    #[serde(default = "default_steps")]
    pub steps: u32,
    /// Random when absent; always reported back.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Accepted for compatibility and ignored: schnell is guidance-distilled.
    #[serde(default)]
    pub guidance: Option<f64>,
}

fn default_side() -> u32 {
    1024
}
fn default_steps() -> u32 {
    DEFAULT_STEPS
}

impl GenerateRequest {
    pub fn new(prompt: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            width: default_side(),
            height: default_side(),
            steps: default_steps(),
            seed: None,
            guidance: None,
        }
    }

    pub fn size(mut self, width: u32, height: u32) -> Self {
        self.width = width;
        self.height = height;
        self
    }

    pub fn steps(mut self, steps: u32) -> Self {
        self.steps = steps;
        self
    }

    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Checks every field; the error names the field and what would be valid.
    pub fn validate(&self) -> Result<(), FluxError> {
        for (field, value) in [("width", self.width), ("height", self.height)] {
            check_side(field, value)
                .map_err(|reason| FluxError::InvalidRequest { field, reason })?;
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
        Ok(())
    }
}

/// A random seed, at most [`MAX_SEED`], so that a JavaScript client reads
/// back exactly the seed that made its image.
pub fn random_seed() -> u64 {
    rand::random::<u64>() & MAX_SEED
}

/// Which model part is being loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Component {
    T5,
    Clip,
    Transformer,
    Vae,
}

/// A small RGB image (the latent decoded cheaply), row-major, 3 bytes a pixel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preview {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
}

/// A finished image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
}

/// Where the time went.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Timings {
    /// Loading weights for this request (zero once they are resident).
    pub load: Duration,
    pub text_encoding: Duration,
    pub steps: Vec<Duration>,
    pub vae_decode: Duration,
    pub total: Duration,
}

/// What a generation reports, in order: downloads and loading (first request
/// only), warnings, one `Step` per transformer pass, then `Done`. A failure
/// arrives as `Failed`; the stream never just stops.
#[derive(Clone, Debug)]
pub enum GenerateEvent {
    Download(HubEvent),
    Loading {
        component: Component,
    },
    Warning {
        message: String,
    },
    Step {
        index: u32,
        total: u32,
        preview: Preview,
    },
    Done {
        image: Image,
        seed: u64,
        timings: Timings,
    },
    Failed {
        error: std::sync::Arc<FluxError>,
    },
}

fn encode(
    width: u32,
    height: u32,
    rgb: &[u8],
    format: image::ImageFormat,
) -> Result<Vec<u8>, FluxError> {
    let buffer = image::RgbImage::from_raw(width, height, rgb.to_vec()).ok_or_else(|| {
        FluxError::Compute {
            stage: "image encoding",
            reason: format!(
                "{} bytes do not make a {width}×{height} RGB image",
                rgb.len()
            ),
        }
    })?;
    let mut out = std::io::Cursor::new(Vec::new());
    buffer
        .write_to(&mut out, format)
        .map_err(|e| FluxError::Compute {
            stage: "image encoding",
            reason: e.to_string(),
        })?;
    Ok(out.into_inner())
}

impl Image {
    pub fn to_png(&self) -> Result<Vec<u8>, FluxError> {
        encode(self.width, self.height, &self.rgb, image::ImageFormat::Png)
    }

    pub fn to_jpeg(&self) -> Result<Vec<u8>, FluxError> {
        encode(self.width, self.height, &self.rgb, image::ImageFormat::Jpeg)
    }
}

impl Preview {
    pub fn to_png(&self) -> Result<Vec<u8>, FluxError> {
        encode(self.width, self.height, &self.rgb, image::ImageFormat::Png)
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
