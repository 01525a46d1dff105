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

/// The request from its fields, a JSON body's or a form's. The error names
/// the field at fault, whatever its type (`n: invalid type: string "two",
/// expected u32`), and `param` says it too.
pub(super) fn parse<'de, D: serde::Deserializer<'de, Error = serde_json::Error>>(
    fields: D,
) -> Result<ImagesRequest, FieldError> {
    serde_path_to_error::deserialize(fields)
}

/// Why fields did not make a request, and where.
pub(super) type FieldError = serde_path_to_error::Error<serde_json::Error>;

/// A [`FieldError`] as a 400 naming the field.
pub(super) fn field_error(e: FieldError) -> ApiError {
    let field = match e.path().iter().next() {
        Some(serde_path_to_error::Segment::Map { key }) => Some(key.clone()),
        _ => None,
    };
    let message = match &field {
        Some(_) => format!("`{}`: {}", e.path(), e.inner()),
        None => format!(
            "the body is not a JSON object of this endpoint's fields: {}",
            e.inner()
        ),
    };
    ApiError::invalid(field.as_deref().and_then(field_param), message)
}
