//! `POST /v1/images/generations` and `/v1/images/edits`: the request, its
//! checks, and the answer.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The most images one request may ask for (`n`), as OpenAI allows.
pub const MAX_IMAGES: u32 = 10;
/// The most partial images a streamed request may ask for, as OpenAI allows.
pub const MAX_PARTIAL_IMAGES: u32 = 3;

/// `size`: `"auto"` (1024×1024 here) or `"WIDTHxHEIGHT"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    /// `"auto"`: 1024×1024 for a generation; for an edit, the input image's
    /// proportions with the longer side at most 1024.
    Auto,
    /// `"WIDTHxHEIGHT"`: an explicit size in pixels.
    Pixels {
        /// The width in pixels.
        width: u32,
        /// The height in pixels.
        height: u32,
    },
}

impl Size {
    /// The side `"auto"` stands for.
    pub const AUTO_SIDE: u32 = 1024;

    /// The width and height in pixels, `"auto"` counting as
    /// [`Self::AUTO_SIDE`] square.
    pub fn pixels(self) -> (u32, u32) {
        match self {
            Size::Auto => (Self::AUTO_SIDE, Self::AUTO_SIDE),
            Size::Pixels { width, height } => (width, height),
        }
    }
}

impl FromStr for Size {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            return Ok(Size::Auto);
        }
        s.split_once('x')
            .and_then(|(w, h)| {
                Some(Size::Pixels {
                    width: w.trim().parse().ok()?,
                    height: h.trim().parse().ok()?,
                })
            })
            .ok_or_else(|| {
                format!(
                    "`size` must be \"auto\" or \"WIDTHxHEIGHT\", such as \"1024x1024\", not {s:?}"
                )
            })
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Size::Auto => f.write_str("auto"),
            Size::Pixels { width, height } => write!(f, "{width}x{height}"),
        }
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl JsonSchema for Size {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Size".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^(auto|[0-9]+x[0-9]+)$",
            "description": "\"auto\" (1024x1024) or \"WIDTHxHEIGHT\", each a multiple of 16 from 256 to 2048",
        })
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// `response_format`: the image inline or by URL.
///
/// - `"b64_json"` (the default): each image inline, base64, in `b64_json`.
/// - `"url"`: each image kept by the server for a while and linked from `url`.
// Variants are documented above: docs on them would turn the schema's
// plain string enum into a oneOf (schemars), which some client generators
// read worse.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum ResponseFormat {
    #[default]
    B64Json,
    Url,
}

/// `output_format`.
///
/// - `"png"` (the default): lossless PNG; `output_compression` is ignored.
/// - `"jpeg"` (`"jpg"` is read too): JPEG at `output_compression` quality.
/// - `"webp"`: WebP, lossless at `output_compression` 100 (the default).
// Variants are documented above: docs on them would turn the schema's
// plain string enum into a oneOf (schemars), which some client generators
// read worse.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum OutputFormat {
    #[default]
    Png,
    #[serde(alias = "jpg")]
    Jpeg,
    Webp,
}

impl OutputFormat {
    /// The format's name on the wire, also the file extension of images
    /// served by URL: `"png"`, `"jpeg"` or `"webp"`.
    pub fn name(self) -> &'static str {
        match self {
            OutputFormat::Png => "png",
            OutputFormat::Jpeg => "jpeg",
            OutputFormat::Webp => "webp",
        }
    }

    /// The MIME type of an image in this format, such as `"image/png"`.
    pub fn content_type(self) -> &'static str {
        match self {
            OutputFormat::Png => "image/png",
            OutputFormat::Jpeg => "image/jpeg",
            OutputFormat::Webp => "image/webp",
        }
    }
}

/// The body of `POST /v1/images/generations`. Unknown fields are ignored,
/// as OpenAI-compatible servers commonly do.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ImagesRequest {
    /// The text describing the image wanted: required and not blank (the
    /// model reads at most 256 T5 tokens of it).
    #[serde(default)]
    pub prompt: String,
    /// The model to use: this server's model id or its Hugging Face
    /// repository; absent means the server's model, anything else is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// 1 to [`MAX_IMAGES`]; the seeds count up from the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    /// The images' size; absent means `"auto"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Size>,
    /// How the images are returned; absent means `"b64_json"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    /// The images' file format; absent means `"png"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_format: Option<OutputFormat>,
    /// 0–100 for jpeg and webp (100: webp's lossless); ignored for png.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_compression: Option<u8>,
    /// Whether to answer with server-sent events (partial images, then the
    /// final one) rather than one JSON body; false when absent. Needs `n` = 1.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
    /// With `stream`: 0 to [`MAX_PARTIAL_IMAGES`] partial images, spread
    /// over the steps (see [`partial_steps`]); absent, one per step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial_images: Option<u32>,
    /// Accepted without effect (see [`super::IGNORED_FIELDS_NOTE`]); echoed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<String>,
    /// Accepted without effect: the images are opaque, and say so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub background: Option<String>,
    /// OpenAI's content-moderation level (`"auto"` or `"low"`); accepted
    /// without effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moderation: Option<String>,
    /// OpenAI's DALL·E 3 style (`"vivid"` or `"natural"`); accepted without
    /// effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub style: Option<String>,
    /// An identifier for the end user, as in OpenAI's API; accepted without
    /// effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Extension: the first image's seed, at most 2^53 − 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Extension: denoising steps (4 by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<u32>,
    /// Extension, edits only: how much of the image to repaint, above 0 to
    /// 1 (0.8 by default): the noise level its latent is brought to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strength: Option<f64>,
}

/// A field at fault, by its name on the wire, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    /// The field's name on the wire, which the error answer gives as `param`.
    pub field: &'static str,
    /// Why the field was refused, for the error answer's `message`.
    pub message: String,
}

impl Invalid {
    fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

impl ImagesRequest {
    /// Checks what this layer knows the range of; sizes, steps and seeds
    /// are the engine's to check (`crate::limits`).
    pub fn check(&self) -> Result<(), Invalid> {
        if self.prompt.trim().is_empty() {
            return Err(Invalid::new(
                "prompt",
                "`prompt` is required and must not be empty",
            ));
        }
        let n = self.image_count();
        if !(1..=MAX_IMAGES).contains(&n) {
            return Err(Invalid::new(
                "n",
                format!("`n` must be 1 to {MAX_IMAGES}, not {n}"),
            ));
        }
        if self.stream && n != 1 {
            return Err(Invalid::new(
                "n",
                "streaming makes one image: use n = 1 with stream = true",
            ));
        }
        if let Some(p) = self.partial_images.filter(|&p| p > MAX_PARTIAL_IMAGES) {
            return Err(Invalid::new(
                "partial_images",
                format!("`partial_images` must be 0 to {MAX_PARTIAL_IMAGES}, not {p}"),
            ));
        }
        if let Some(c) = self.output_compression.filter(|&c| c > 100) {
            return Err(Invalid::new(
                "output_compression",
                format!("`output_compression` must be 0 to 100, not {c}"),
            ));
        }
        Ok(())
    }

    /// How many images are asked for: `n`, or 1 when it is absent.
    pub fn image_count(&self) -> u32 {
        self.n.unwrap_or(1)
    }

    /// The width and height asked for, in pixels: `size`, with absent or
    /// `"auto"` counting as 1024×1024.
    pub fn pixels(&self) -> (u32, u32) {
        self.size.unwrap_or(Size::Auto).pixels()
    }

    /// What the answer says of `quality`: the request's, else `"auto"`.
    pub fn quality_echo(&self) -> String {
        self.quality.clone().unwrap_or_else(|| "auto".into())
    }
}

/// The steps (from 1) after which a stream sends a partial image: one per
/// step when the request did not say; else `partial_images` of them spread
/// evenly, none at the last step when there are enough steps before it
/// (the final image follows it), and at most one per step (OpenAI, too, may
/// send fewer partials than asked when the image is done sooner).
pub fn partial_steps(steps: u32, partial_images: Option<u32>) -> Vec<u32> {
    match partial_images {
        None => (1..=steps).collect(),
        Some(p) if p >= steps => (1..=steps).collect(),
        Some(p) => (1..=p).map(|k| (k * steps).div_ceil(p + 1)).collect(),
    }
}

/// Milliseconds each stage of one image took (extension).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StageTimings {
    /// Loading weights for this request (0 once they are resident).
    pub load_ms: u64,
    /// The prompt through T5 and CLIP, in ms (0 when the prompt cache had it).
    pub text_encoding_ms: u64,
    /// An edit's image through the VAE's encoder (0 for a generation).
    #[serde(default)]
    pub vae_encode_ms: u64,
    /// Each denoising step (one transformer pass), in ms, in order.
    pub steps_ms: Vec<u64>,
    /// The final latent through the VAE's decoder, in ms.
    pub vae_decode_ms: u64,
    /// From the request's start to the finished image, in ms.
    pub total_ms: u64,
}

/// Token counts in OpenAI's shape. Input: the prompt's T5 tokens (what the
/// model reads, at most 256). Output: the image's latent patches, 16×16
/// pixels each (what the transformer computes), for every image.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Usage {
    /// Tokens read: the prompt's T5 tokens.
    pub input_tokens: u64,
    /// `input_tokens` by kind.
    pub input_tokens_details: InputTokensDetails,
    /// Tokens made: 16×16-pixel latent patches, over all the images.
    pub output_tokens: u64,
    /// All image tokens here.
    pub output_tokens_details: OutputTokensDetails,
    /// `input_tokens` plus `output_tokens`.
    pub total_tokens: u64,
}

/// The input tokens by kind, as OpenAI splits them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct InputTokensDetails {
    /// The prompt's T5 tokens: all of `input_tokens`.
    pub text_tokens: u64,
    /// Tokens for input images: always 0 (an edit's image is not counted).
    pub image_tokens: u64,
}

/// The output tokens by kind, as OpenAI splits them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OutputTokensDetails {
    /// The images' latent patches: all of `output_tokens`.
    pub image_tokens: u64,
    /// Tokens of text made: always 0.
    pub text_tokens: u64,
}

impl Usage {
    /// For `images` images of `width`×`height` from a prompt of `text_tokens`.
    pub fn new(text_tokens: u64, images: u64, (width, height): (u32, u32)) -> Self {
        let output_tokens = images * u64::from(width / 16) * u64::from(height / 16);
        Self {
            input_tokens: text_tokens,
            input_tokens_details: InputTokensDetails {
                text_tokens,
                image_tokens: 0,
            },
            output_tokens,
            output_tokens_details: OutputTokensDetails {
                image_tokens: output_tokens,
                text_tokens: 0,
            },
            total_tokens: text_tokens + output_tokens,
        }
    }
}

/// One image of an answer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ImageData {
    /// The image file in `output_format`, base64; absent when
    /// `response_format` was `"url"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b64_json: Option<String>,
    /// Where to fetch the image file, for a limited time (a path on this server
    /// unless it runs with `--public-url`); absent unless `response_format` was `"url"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Extension: the seed that made it.
    pub seed: u64,
    /// Extension.
    pub timings: StageTimings,
}

/// The answer to a request that was not streamed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ImagesResponse {
    /// When the answer was made, in Unix seconds.
    pub created: u64,
    /// The `n` images, in order of their seeds.
    pub data: Vec<ImageData>,
    /// Always `"opaque"`, whatever was asked.
    pub background: String,
    /// The images' file format.
    pub output_format: OutputFormat,
    /// The request's `quality`, echoed (`"auto"` when it was absent).
    pub quality: String,
    /// The images' size in pixels, as `"WIDTHxHEIGHT"` (never `"auto"`).
    pub size: Size,
    /// Token counts for the whole request, all images together.
    pub usage: Usage,
    /// Extension: the model that made them.
    pub model: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_and_write_as_openai_spells_them() {
        let size: Size = serde_json::from_str("\"512x768\"").unwrap();
        assert_eq!(size.pixels(), (512, 768));
        assert_eq!(serde_json::to_string(&size).unwrap(), "\"512x768\"");
        assert_eq!(
            serde_json::from_str::<Size>("\"auto\"").unwrap().pixels(),
            (1024, 1024)
        );
        let err = serde_json::from_str::<Size>("\"big\"").unwrap_err();
        assert!(err.to_string().contains("WIDTHxHEIGHT"), "{err}");
    }

    #[test]
    fn a_request_is_checked_field_by_field() {
        let ok: ImagesRequest = serde_json::from_str(
            r#"{"prompt": "a fox", "output_format": "jpg", "quality": "high", "user": "u1"}"#,
        )
        .unwrap();
        assert_eq!(ok.check(), Ok(()));
        assert_eq!(ok.output_format, Some(OutputFormat::Jpeg));
        assert_eq!(ok.quality_echo(), "high");
        assert_eq!(ok.pixels(), (1024, 1024));
        let with = |json: &str| {
            let mut request: ImagesRequest = serde_json::from_str(json).unwrap();
            request.prompt = "a fox".into();
            request.check().map_err(|e| e.field)
        };
        assert_eq!(with(r#"{"n": 10}"#), Ok(()));
        assert_eq!(with(r#"{"n": 11}"#), Err("n"));
        assert_eq!(with(r#"{"n": 0}"#), Err("n"));
        assert_eq!(with(r#"{"n": 2, "stream": true}"#), Err("n"));
        assert_eq!(with(r#"{"stream": true, "partial_images": 3}"#), Ok(()));
        assert_eq!(
            with(r#"{"stream": true, "partial_images": 4}"#),
            Err("partial_images")
        );
        assert_eq!(
            with(r#"{"output_compression": 101}"#),
            Err("output_compression")
        );
        assert_eq!(
            with(r#"{"prompt": " "}"#),
            Ok(()),
            "the prompt was set above"
        );
        let empty: ImagesRequest = serde_json::from_str(r#"{"prompt": " "}"#).unwrap();
        assert_eq!(empty.check().unwrap_err().field, "prompt");
        assert!(serde_json::from_str::<ImagesRequest>(r#"{"output_format": "gif"}"#).is_err());
    }

    #[test]
    fn partial_images_are_spread_over_the_steps() {
        assert_eq!(partial_steps(4, None), [1, 2, 3, 4]);
        assert_eq!(partial_steps(4, Some(0)), [] as [u32; 0]);
        assert_eq!(partial_steps(4, Some(1)), [2]);
        assert_eq!(partial_steps(4, Some(2)), [2, 3]);
        assert_eq!(partial_steps(4, Some(3)), [1, 2, 3]);
        assert_eq!(partial_steps(20, Some(3)), [5, 10, 15]);
        // Fewer steps than partials: one per step.
        assert_eq!(partial_steps(2, Some(3)), [1, 2]);
        for steps in 1..=50 {
            for p in 0..=MAX_PARTIAL_IMAGES {
                let at = partial_steps(steps, Some(p));
                assert_eq!(at.len() as u32, p.min(steps), "{steps} steps, {p}");
                assert!(at.windows(2).all(|w| w[0] < w[1]));
                assert!(at.iter().all(|&s| (1..=steps).contains(&s)));
                if p < steps {
                    assert!(!at.contains(&steps), "{steps} steps, {p}: {at:?}");
                }
            }
        }
    }

    #[test]
    fn usage_counts_prompt_tokens_and_latent_patches() {
        let usage = Usage::new(12, 2, (512, 256));
        assert_eq!(usage.output_tokens, 2 * 32 * 16);
        assert_eq!(usage.total_tokens, 12 + 1024);
        assert_eq!(usage.input_tokens_details.text_tokens, 12);
    }
}
