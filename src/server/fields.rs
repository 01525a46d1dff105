//! The request's fields, by name: parsing them from JSON or a form into
//! [`ImagesRequest`], with the field at fault named in errors.

use super::api_error::ApiError;
use crate::protocol::ImagesRequest;

/// The request's fields OpenAI's clients send, as `ApiError`'s `param`.
const FIELDS: [&str; 17] = [
    "prompt",
    "model",
    "n",
    "size",
    "response_format",
    "output_format",
    "output_compression",
    "stream",
    "partial_images",
    "quality",
    "background",
    "moderation",
    "style",
    "user",
    "seed",
    "steps",
    "strength",
];

/// A field's name as `ApiError`'s `param`, if it is one of the request's.
pub(super) fn field_param(name: &str) -> Option<&'static str> {
    FIELDS.iter().copied().find(|f| *f == name)
}

/// The request from its fields, JSON's or a form's. The error names the
/// field at fault (`n: invalid type: string "two", expected u32`), and
/// `param` says it too.
pub(super) fn parse<'de, D: serde::Deserializer<'de, Error = serde_json::Error>>(
    fields: D,
) -> Result<ImagesRequest, ApiError> {
    serde_path_to_error::deserialize(fields).map_err(|e| {
        let path = e.path().to_string();
        // Broken JSON is nobody's field, though the path says where it broke.
        let param = field_param(&path).filter(|_| e.inner().is_data());
        let message = match param {
            Some(field) => format!("`{field}`: {}", e.inner()),
            None => format!(
                "the body is not valid JSON for this endpoint: {}",
                e.inner()
            ),
        };
        ApiError::invalid(param, message)
    })
}
