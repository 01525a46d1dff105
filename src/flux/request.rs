//! What a caller asks for and what comes back while it is made.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::FluxError;
use crate::hub::HubEvent;
use crate::protocol::{OutputFormat, MAX_IMAGES};

use super::init_image::InitImage;
use crate::limits::{check_seed, check_side, check_steps, check_strength, MAX_SEED};
pub use crate::limits::{DEFAULT_STEPS, DEFAULT_STRENGTH, MAX_SIDE, MAX_STEPS, MIN_SIDE};

/// One request: text-to-image, or an edit of [`GenerateRequest::init`].
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

/// Which model part is being loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Component {
    T5,
    Clip,
    Transformer,
    Vae,
    /// The VAE's encoder, for edits only.
    VaeEncoder,
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
    /// An edit's image through the VAE's encoder (zero otherwise).
    pub vae_encode: Duration,
    pub steps: Vec<Duration>,
    pub vae_decode: Duration,
    pub total: Duration,
    /// One of a batch's images after its first: its load, encodings and
    /// steps are the first's, shared (metrics count them once).
    pub shared_passes: bool,
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
        /// The prompt's tokens T5 read (at most 256), for usage reports.
        prompt_tokens: usize,
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

    /// The image as `format`, at `quality` 0–100 for jpeg and webp (100, the
    /// default as in OpenAI's API: webp's lossless; png ignores it).
    pub fn encode(&self, format: OutputFormat, quality: Option<u8>) -> Result<Vec<u8>, FluxError> {
        let quality = quality.unwrap_or(100).min(100);
        let failed = |reason: String| FluxError::Compute {
            stage: "image encoding",
            reason,
        };
        let expected = self.width as usize * self.height as usize * 3;
        if self.rgb.len() != expected {
            return Err(failed(format!(
                "{} bytes do not make a {}×{} RGB image",
                self.rgb.len(),
                self.width,
                self.height
            )));
        }
        match format {
            OutputFormat::Png => self.to_png(),
            OutputFormat::Jpeg => {
                let mut out = Vec::new();
                image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality.max(1))
                    .encode(
                        &self.rgb,
                        self.width,
                        self.height,
                        image::ExtendedColorType::Rgb8,
                    )
                    .map_err(|e| failed(e.to_string()))?;
                Ok(out)
            }
            OutputFormat::Webp => {
                let encoder = webp::Encoder::from_rgb(&self.rgb, self.width, self.height);
                encoder
                    .encode_simple(quality == 100, f32::from(quality))
                    .map(|bytes| bytes.to_vec())
                    .map_err(|e| failed(format!("webp: {e:?}")))
            }
        }
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
    fn images_encode_in_every_output_format() {
        let (width, height) = (48, 32);
        // Noise over a gradient: lossless formats cannot shrink it much.
        let mut state = 0x2545_f491_u32;
        let rgb: Vec<u8> = (0..width * height * 3)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                ((i / 3 % width) * 4 + state % 32) as u8
            })
            .collect();
        let image = Image { width, height, rgb };
        let png = image.encode(OutputFormat::Png, Some(10)).unwrap();
        let decoded = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(decoded.into_raw(), image.rgb, "png is lossless");
        let jpeg = image.encode(OutputFormat::Jpeg, Some(50)).unwrap();
        let decoded = image::load_from_memory(&jpeg).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (width, height));
        assert!(jpeg.len() < image.encode(OutputFormat::Jpeg, None).unwrap().len());
        // webp: 100 (the default) is lossless, less is lossy and smaller.
        let lossless = image.encode(OutputFormat::Webp, None).unwrap();
        assert_eq!(&lossless[..4], b"RIFF");
        assert_eq!(&lossless[8..12], b"WEBP");
        let back = webp::Decoder::new(&lossless).decode().unwrap();
        assert_eq!((back.width(), back.height()), (width, height));
        assert_eq!(&*back, &image.rgb[..], "webp at 100 is lossless");
        let lossy = image.encode(OutputFormat::Webp, Some(30)).unwrap();
        assert!(lossy.len() < lossless.len());
        let broken = Image {
            width: 5,
            height: 5,
            rgb: vec![0; 3],
        };
        assert!(broken.encode(OutputFormat::Webp, None).is_err());
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
