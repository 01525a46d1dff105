//! `GET /openapi.json`: the API as an OpenAPI 3.0 document, its schemas
//! generated from `crate::protocol`'s types (schemars), so the document
//! cannot drift from what the server sends.

use axum::Json;
use schemars::generate::SchemaSettings;
use serde_json::{json, Value};

use super::api_error::byte_size;
use super::limits::{MAX_BODY, MAX_EDIT_BODY};
use crate::protocol::{
    ErrorBody, ImagesRequest, ImagesResponse, ModelList, Readiness, StreamEvent,
};

/// The whole document (built per request: it is small, and rarely asked for).
pub fn document() -> Value {
    let mut generator = SchemaSettings::openapi3().into_generator();
    let request = generator.subschema_for::<ImagesRequest>();
    let response = generator.subschema_for::<ImagesResponse>();
    let event = generator.subschema_for::<StreamEvent>();
    let error = generator.subschema_for::<ErrorBody>();
    let readiness = generator.subschema_for::<Readiness>();
    let models = generator.subschema_for::<ModelList>();
    let schemas = generator.take_definitions(true);
    let json_body = |schema: &schemars::Schema| json!({ "application/json": { "schema": schema } });
    let failure = |what: &str| json!({ "description": what, "content": json_body(&error) });
    let secured = json!([{ "bearer": [] }]);
    // An edit: the same fields as a form, with the image and mask as files.
    let edit_form = json!({ "multipart/form-data": { "schema": { "allOf": [request, {
        "type": "object",
        "required": ["image", "prompt"],
        "properties": {
            "image": { "type": "string", "format": "binary", "description": format!(
                "The image to edit: png, jpeg or webp, at most {side}×{side} pixels (one `image[]` part is read the same). Without `size`, or with \"auto\", the answer keeps its proportions, the longer side at most 1024",
                side = crate::flux::MAX_INPUT_SIDE,
            )},
            "mask": { "type": "string", "format": "binary", "description":
                "Where to repaint, the image's size: its transparent pixels (alpha 0), or without an alpha channel its white ones. Without a mask, the whole image is repainted to `strength`" },
        },
    }]}}});
    // The two image endpoints answer alike: images, or a stream of events.
    let images_answer = |events: &str, bad: &str, limit: usize, media_type: &str| {
        json!({
            "200": {
                "description": format!("The images; with `stream`, server-sent events{events} whose names are their `type`"),
                "content": {
                    "application/json": { "schema": response },
                    "text/event-stream": { "schema": event },
                },
            },
            "400": failure(&format!("{bad} is invalid (`param` names it), or the image would not fit in memory")),
            "401": failure("The API key is missing or wrong"),
            "403": failure("Sent by another site's web page (`Origin` not allowed)"),
            "408": failure("The body arrived too late or too slowly"),
            "413": failure(&format!("The body is larger than {}", byte_size(limit))),
            "415": failure(&format!("The body is not `{media_type}`")),
            "421": failure("The `Host` is not a name this server answers to"),
            "429": failure("The queue is full: try again after `Retry-After`"),
            "503": failure("The model is not ready yet, or the server is shutting down"),
        })
    };
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "schnell",
            "version": env!("CARGO_PKG_VERSION"),
            "description": format!(
                "FLUX.1-schnell behind OpenAI's Images API. {}.",
                crate::protocol::IGNORED_FIELDS_NOTE
            ),
        },
        "paths": {
            "/v1/images/generations": { "post": {
                "summary": "Make images from a prompt",
                "security": secured,
                "requestBody": { "required": true, "content": json_body(&request) },
                "responses": images_answer("", "A field", MAX_BODY, "application/json"),
            }},
            "/v1/images/edits": { "post": {
                "summary": "Edit an image from a prompt (image-to-image; inpainting with a mask)",
                "security": secured,
                "requestBody": { "required": true, "content": edit_form },
                "responses": images_answer(
                    " (`image_edit.partial_image`, `image_edit.completed`)",
                    "A field or file",
                    MAX_EDIT_BODY,
                    "multipart/form-data",
                ),
            }},
            "/v1/models": { "get": {
                "summary": "The model this server runs",
                "security": secured,
                "responses": { "200": { "description": "One model", "content": json_body(&models) } },
            }},
            "/v1/images/{file}": { "get": {
                "summary": "An image made with `response_format: \"url\"`; its random name is the capability",
                "parameters": [{ "name": "file", "in": "path", "required": true, "schema": { "type": "string", "pattern": "^[0-9a-f]{32}\\.(png|jpeg|webp)$" } }],
                "responses": {
                    "200": { "description": "The image", "content": {
                        "image/png": {}, "image/jpeg": {}, "image/webp": {},
                    }},
                    "404": failure("No such image, or it has expired"),
                },
            }},
            "/readyz": { "get": {
                "summary": "Whether the model is ready, and how far loading is",
                "responses": {
                    "200": { "description": "Ready", "content": json_body(&readiness) },
                    "503": { "description": "Not ready yet, or loading failed", "content": json_body(&readiness) },
                },
            }},
            "/healthz": { "get": {
                "summary": "The process answers",
                "responses": { "200": { "description": "Always", "content": { "application/json": { "schema": {
                    "type": "object", "properties": { "status": { "type": "string", "enum": ["ok"] } },
                }}}}},
            }},
            "/metrics": { "get": {
                "summary": "Counters and histograms for Prometheus",
                "security": secured,
                "responses": { "200": { "description": "OpenMetrics text", "content": {
                    "application/openmetrics-text": { "schema": { "type": "string" } },
                }}},
            }},
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": { "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "`--api-key`, when the server was started with one",
            }},
        },
    })
}

/// `GET /openapi.json`: public, as the API's documentation.
pub async fn openapi() -> Json<Value> {
    Json(document())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{
        CompletedImage, ImageData, OutputFormat, PartialImage, Size, StageTimings, Usage,
    };

    /// The properties a schema lists, resolving its `$ref`.
    fn properties(doc: &Value, name: &str) -> Vec<String> {
        let schema = &doc["components"]["schemas"][name];
        let mut keys: Vec<String> = schema["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("{name} has no properties: {schema}"))
            .keys()
            .cloned()
            .collect();
        keys.sort();
        keys
    }

    fn keys(value: &impl serde::Serialize) -> Vec<String> {
        let mut keys: Vec<String> = serde_json::to_value(value)
            .unwrap()
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        keys.sort();
        keys
    }

    #[test]
    fn the_schemas_describe_what_is_sent() {
        let doc = document();
        let size = Size::Pixels {
            width: 256,
            height: 256,
        };
        let response = ImagesResponse {
            created: 1,
            data: vec![ImageData {
                b64_json: Some("AA==".into()),
                url: Some("/v1/images/x.png".into()),
                seed: 1,
                timings: StageTimings::default(),
            }],
            background: "opaque".into(),
            output_format: OutputFormat::Png,
            quality: "auto".into(),
            size,
            usage: Usage::new(1, 1, (256, 256)),
            model: "flux-schnell".into(),
        };
        assert_eq!(properties(&doc, "ImagesResponse"), keys(&response));
        assert_eq!(properties(&doc, "ImageData"), keys(&response.data[0]));
        assert_eq!(properties(&doc, "Usage"), keys(&response.usage));
        // Every field a client may send, each described.
        let request: ImagesRequest = serde_json::from_value(json!({
            "prompt": "x", "model": "m", "n": 1, "size": "auto", "response_format": "url",
            "output_format": "webp", "output_compression": 50, "stream": true,
            "partial_images": 2, "quality": "high", "background": "auto", "moderation": "low",
            "style": "vivid", "user": "u", "seed": 1, "steps": 4, "strength": 0.5
        }))
        .unwrap();
        assert_eq!(properties(&doc, "ImagesRequest"), keys(&request));
        assert_eq!(
            doc["components"]["schemas"]["Size"]["type"], "string",
            "sizes are strings"
        );
        // The stream's events: each variant's fields, and its `type`.
        let partial = StreamEvent::Partial(PartialImage {
            b64_json: String::new(),
            created_at: 0,
            size,
            quality: String::new(),
            background: String::new(),
            output_format: OutputFormat::Png,
            partial_image_index: 0,
            step: 1,
            total_steps: 1,
            progress: 1.0,
            preview_size: size,
        });
        let completed = StreamEvent::Completed(CompletedImage {
            b64_json: String::new(),
            created_at: 0,
            size,
            quality: String::new(),
            background: String::new(),
            output_format: OutputFormat::Png,
            usage: Usage::default(),
            seed: 0,
            timings: StageTimings::default(),
        });
        let variants = doc["components"]["schemas"]["StreamEvent"]["oneOf"]
            .as_array()
            .expect("one schema per event");
        // A variant's properties: its own (`type`) and those of the schemas
        // it refers to with `allOf`.
        let variant_keys = |v: &Value| {
            let mut k: Vec<String> = v["properties"]
                .as_object()
                .map(|p| p.keys().cloned().collect())
                .unwrap_or_default();
            for part in v["allOf"].as_array().into_iter().flatten() {
                let name = part["$ref"]
                    .as_str()
                    .and_then(|r| r.strip_prefix("#/components/schemas/"))
                    .expect("a reference to a component");
                k.extend(properties(&doc, name));
            }
            k.sort();
            k
        };
        let edit_events = match (&partial, &completed) {
            (StreamEvent::Partial(p), StreamEvent::Completed(c)) => [
                StreamEvent::partial(true, p.clone()),
                StreamEvent::completed(true, c.clone()),
            ],
            _ => unreachable!(),
        };
        for event in [partial, completed].into_iter().chain(edit_events) {
            let sent = keys(&event);
            let described = variants.iter().any(|v| {
                variant_keys(v) == sent && v["properties"]["type"]["enum"][0] == event.name()
            });
            assert!(
                described,
                "{} is not described as sent: {sent:?}",
                event.name()
            );
        }
        for path in [
            "/v1/images/generations",
            "/v1/images/edits",
            "/v1/models",
            "/readyz",
            "/metrics",
        ] {
            assert!(doc["paths"].get(path).is_some(), "{path}");
        }
    }
}
