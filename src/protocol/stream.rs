//! The server-sent events of a streamed request. Each event's SSE name is
//! its `type`, as OpenAI sends them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::images::{OutputFormat, Size, StageTimings, Usage};
use super::status::ErrorDetail;

/// A partial image: the latent after a step, decoded cheaply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PartialImage {
    /// The preview, a PNG file in base64.
    pub b64_json: String,
    /// When the event was made, in Unix seconds.
    pub created_at: u64,
    /// The final image's size, as `"WIDTHxHEIGHT"`.
    pub size: Size,
    /// The request's `quality`, echoed (`"auto"` when it was absent).
    pub quality: String,
    /// Always `"opaque"`, whatever was asked.
    pub background: String,
    /// Always png.
    pub output_format: OutputFormat,
    /// From 0.
    pub partial_image_index: u32,
    /// Extension: the step it follows (from 1) and how many there are.
    pub step: u32,
    /// Extension: how many denoising steps the image takes in all.
    pub total_steps: u32,
    /// Extension: `step` / `total_steps`, above 0 and at most 1.
    pub progress: f64,
    /// Extension: the preview's own size (smaller than `size`).
    pub preview_size: Size,
}

/// The finished image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CompletedImage {
    /// The image file in `output_format`, base64.
    pub b64_json: String,
    /// When the event was made, in Unix seconds.
    pub created_at: u64,
    /// The image's size, as `"WIDTHxHEIGHT"`.
    pub size: Size,
    /// The request's `quality`, echoed (`"auto"` when it was absent).
    pub quality: String,
    /// Always `"opaque"`, whatever was asked.
    pub background: String,
    /// The image's file format, as the request asked (png by default).
    pub output_format: OutputFormat,
    /// Token counts for this image.
    pub usage: Usage,
    /// Extension.
    pub seed: u64,
    /// Extension.
    pub timings: StageTimings,
}

/// One event of a stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type")]
pub enum StreamEvent {
    /// `image_generation.partial_image`: a preview of the image being
    /// generated, after a step.
    #[serde(rename = "image_generation.partial_image")]
    Partial(PartialImage),
    /// `image_generation.completed`: the finished image; the stream then ends.
    #[serde(rename = "image_generation.completed")]
    Completed(CompletedImage),
    /// The same two for `/v1/images/edits`, under OpenAI's names for them.
    #[serde(rename = "image_edit.partial_image")]
    EditPartial(PartialImage),
    /// `image_edit.completed`: the finished edited image; the stream then
    /// ends.
    #[serde(rename = "image_edit.completed")]
    EditCompleted(CompletedImage),
    /// Extension: something the client should know (a truncated prompt, an
    /// ignored field).
    #[serde(rename = "warning")]
    Warning {
        /// What happened, for people to read.
        message: String,
    },
    /// The generation failed; the stream ends.
    #[serde(rename = "error")]
    Error {
        /// What failed, in OpenAI's error shape.
        error: ErrorDetail,
    },
}

impl StreamEvent {
    /// The SSE event name: the `type`.
    pub fn name(&self) -> &'static str {
        match self {
            StreamEvent::Partial(_) => "image_generation.partial_image",
            StreamEvent::Completed(_) => "image_generation.completed",
            StreamEvent::EditPartial(_) => "image_edit.partial_image",
            StreamEvent::EditCompleted(_) => "image_edit.completed",
            StreamEvent::Warning { .. } => "warning",
            StreamEvent::Error { .. } => "error",
        }
    }

    /// A partial image under the endpoint's name for it.
    pub fn partial(edit: bool, image: PartialImage) -> Self {
        if edit {
            StreamEvent::EditPartial(image)
        } else {
            StreamEvent::Partial(image)
        }
    }

    /// The finished image under the endpoint's name for it.
    pub fn completed(edit: bool, image: CompletedImage) -> Self {
        if edit {
            StreamEvent::EditCompleted(image)
        } else {
            StreamEvent::Completed(image)
        }
    }

    /// The SSE data line.
    pub fn data(&self) -> String {
        serde_json::to_string(self).expect("stream events always serialise")
    }

    /// Reads one event from its SSE name and data. `Ok(None)` for an event
    /// this version does not know (newer servers may add some); an error,
    /// naming the event and what is wrong with it, for a known one that
    /// does not parse or whose name and `type` disagree.
    pub fn parse(name: &str, data: &str) -> Result<Option<Self>, String> {
        let known = [
            "image_generation.partial_image",
            "image_generation.completed",
            "image_edit.partial_image",
            "image_edit.completed",
            "warning",
            "error",
        ];
        if !known.contains(&name) {
            return Ok(None);
        }
        let event: StreamEvent = serde_json::from_str(data)
            .map_err(|e| format!("the server's {name} event does not parse: {e}"))?;
        if event.name() != name {
            return Err(format!(
                "the server sent a {name} event of type {}",
                event.name()
            ));
        }
        Ok(Some(event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partial() -> StreamEvent {
        StreamEvent::Partial(PartialImage {
            b64_json: "AAA=".into(),
            created_at: 1,
            size: Size::Pixels {
                width: 512,
                height: 512,
            },
            quality: "auto".into(),
            background: "opaque".into(),
            output_format: OutputFormat::Png,
            partial_image_index: 0,
            step: 2,
            total_steps: 4,
            progress: 0.5,
            preview_size: Size::Pixels {
                width: 64,
                height: 64,
            },
        })
    }

    #[test]
    fn events_round_trip_under_their_names() {
        let event = partial();
        assert_eq!(event.name(), "image_generation.partial_image");
        let data = event.data();
        assert!(
            data.contains(r#""type":"image_generation.partial_image""#),
            "{data}"
        );
        assert_eq!(StreamEvent::parse(event.name(), &data), Ok(Some(event)));
        assert_eq!(StreamEvent::parse("image_edit.whatever", "{}"), Ok(None));
        let StreamEvent::Partial(image) = partial() else {
            unreachable!()
        };
        let edit = StreamEvent::partial(true, image);
        assert_eq!(edit.name(), "image_edit.partial_image");
        assert!(edit.data().contains(r#""type":"image_edit.partial_image""#));
        assert_eq!(
            StreamEvent::parse(edit.name(), &edit.data()),
            Ok(Some(edit))
        );
        let err = StreamEvent::parse(
            "image_generation.completed",
            r#"{"type":"image_generation.completed","b64_json":"x"}"#,
        )
        .unwrap_err();
        assert!(err.contains("image_generation.completed"), "{err}");
        let mismatch = StreamEvent::parse("error", &partial().data()).unwrap_err();
        assert!(mismatch.contains("of type"), "{mismatch}");
        let failed = StreamEvent::parse(
            "error",
            r#"{"type":"error","error":{"message":"out of memory","type":"server_error","param":null,"code":null}}"#,
        )
        .unwrap()
        .unwrap();
        assert!(matches!(failed, StreamEvent::Error { error } if error.message == "out of memory"));
    }
}
