//! What a generation gives back: the events of its stream, its previews and
//! finished images (encoded on demand), and its timings.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::flux::error::FluxError;
use crate::hub::HubEvent;
use crate::protocol::OutputFormat;

/// Which model part is being loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Component {
    /// The T5-XXL text encoder.
    T5,
    /// The CLIP-L text encoder.
    Clip,
    /// The FLUX transformer.
    Transformer,
    /// The VAE's decoder.
    Vae,
    /// The VAE's encoder, for edits only.
    VaeEncoder,
}

/// A small RGB image (the latent decoded cheaply), row-major, 3 bytes a pixel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preview {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Row-major RGB, 3 bytes a pixel.
    pub rgb: Vec<u8>,
}

/// A finished image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Row-major RGB, 3 bytes a pixel.
    pub rgb: Vec<u8>,
}

/// Where the time went.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Timings {
    /// Loading weights for this request (zero once they are resident).
    pub load: Duration,
    /// T5 and CLIP (zero when the prompt cache had them).
    pub text_encoding: Duration,
    /// An edit's image through the VAE's encoder (zero otherwise).
    pub vae_encode: Duration,
    /// Each transformer pass.
    pub steps: Vec<Duration>,
    /// The VAE's decode.
    pub vae_decode: Duration,
    /// From the request's start to the image.
    pub total: Duration,
    /// One of a batch's images after its first: its load, encodings and
    /// steps are the first's, shared (metrics count them once).
    pub shared_passes: bool,
}

/// What a generation reports, in order: downloads and loading (first request
/// only), warnings, one `Step` per transformer pass, then `Done`. A failure
/// arrives as `Failed`; the stream never just stops.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum GenerateEvent {
    /// A model file's download progressed (first request only).
    Download(HubEvent),
    /// A part of the model is being loaded.
    Loading {
        /// Which part.
        component: Component,
    },
    /// Something the caller should know, such as a prompt cut to fit.
    Warning {
        /// The warning, worded for the user.
        message: String,
    },
    /// A transformer pass is done, with a preview of the batch's first image.
    Step {
        /// Passes done so far, from 1.
        index: u32,
        /// Passes in all (the request's steps).
        total: u32,
        /// The latent, decoded cheaply.
        preview: Preview,
    },
    /// An image is finished; one per image asked for, in order.
    Done {
        /// The image.
        image: Image,
        /// The seed that made it.
        seed: u64,
        /// Where the time went.
        timings: Timings,
        /// The prompt's tokens T5 read (at most 256), for usage reports.
        prompt_tokens: usize,
    },
    /// The generation failed; nothing follows.
    Failed {
        /// What went wrong.
        error: Arc<FluxError>,
    },
}

/// One finished image of a one-shot call, with what the `Done` event that
/// carried it said.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Generated {
    /// The image.
    pub image: Image,
    /// The seed that made it.
    pub seed: u64,
    /// Where the time went.
    pub timings: Timings,
    /// The prompt's tokens T5 read (at most 256), for usage reports.
    pub prompt_tokens: usize,
}

/// Every image of a request, in order, and the warnings given on the way
/// (a prompt cut to fit its encoders, for one).
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Generation {
    /// One per image asked for, in the order of their seeds.
    pub images: Vec<Generated>,
    /// Each `Warning` event's message.
    pub warnings: Vec<String>,
}

impl Generation {
    /// Drains a generation's stream to its end: the images of its `Done`
    /// events, or the error of its `Failed`. `on_event` sees every event
    /// first (downloads, loading, steps), for progress. A stream that ends
    /// with fewer than `expected` images and no failure (the engine's thread
    /// went away) is [`FluxError::EngineStopped`].
    pub async fn collect(
        events: impl futures::Stream<Item = GenerateEvent>,
        expected: usize,
        mut on_event: impl FnMut(&GenerateEvent),
    ) -> Result<Self, Arc<FluxError>> {
        use futures::StreamExt;
        let mut events = std::pin::pin!(events);
        let mut generation = Generation::default();
        while let Some(event) = events.next().await {
            on_event(&event);
            match event {
                GenerateEvent::Done {
                    image,
                    seed,
                    timings,
                    prompt_tokens,
                } => generation.images.push(Generated {
                    image,
                    seed,
                    timings,
                    prompt_tokens,
                }),
                GenerateEvent::Warning { message } => generation.warnings.push(message),
                GenerateEvent::Failed { error } => return Err(error),
                _ => {}
            }
        }
        if generation.images.len() < expected.max(1) {
            return Err(Arc::new(FluxError::EngineStopped));
        }
        Ok(generation)
    }
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
    /// The image as a PNG file.
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
    /// The preview as a PNG file.
    pub fn to_png(&self) -> Result<Vec<u8>, FluxError> {
        encode(self.width, self.height, &self.rgb, image::ImageFormat::Png)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(seed: u64) -> GenerateEvent {
        GenerateEvent::Done {
            image: Image {
                width: 1,
                height: 1,
                rgb: vec![seed as u8; 3],
            },
            seed,
            timings: Timings::default(),
            prompt_tokens: 3,
        }
    }

    fn collect(events: Vec<GenerateEvent>, expected: usize) -> Result<Generation, Arc<FluxError>> {
        let mut seen = 0;
        let result = futures::executor::block_on(Generation::collect(
            futures::stream::iter(events.clone()),
            expected,
            |_| seen += 1,
        ));
        assert_eq!(seen, events.len(), "on_event sees every event");
        result
    }

    #[test]
    fn collect_keeps_every_image_in_order_and_the_warnings() {
        let warning = GenerateEvent::Warning {
            message: "cut".into(),
        };
        let made = collect(vec![warning, done(7), done(8)], 2).unwrap();
        let seeds: Vec<u64> = made.images.iter().map(|g| g.seed).collect();
        assert_eq!(seeds, [7, 8]);
        assert_eq!(made.images[1].image.rgb, [8; 3]);
        assert_eq!(made.images[0].prompt_tokens, 3);
        assert_eq!(made.warnings, ["cut"]);
    }

    #[test]
    fn collect_fails_on_failed_and_on_a_stream_cut_short() {
        let failed = GenerateEvent::Failed {
            error: Arc::new(FluxError::Cancelled),
        };
        let err = collect(vec![done(1), failed], 2).unwrap_err();
        assert!(matches!(*err, FluxError::Cancelled), "{err}");
        for (events, expected) in [(vec![], 1), (vec![done(1)], 2)] {
            let err = collect(events, expected).unwrap_err();
            assert!(matches!(*err, FluxError::EngineStopped), "{err}");
        }
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
}
