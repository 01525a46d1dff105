//! `/v1/images/edits`' multipart body, as OpenAI's clients send it: the
//! image as a file part (`image`, or one `image[]`), an optional `mask`
//! file, and every other field as text, typed here by the field it fills so
//! that the same request type and checks serve both endpoints.

use axum::body::Bytes;
use serde_json::{Map, Value};

use super::api_error::ApiError;
use super::fields::field_param;
use super::limits::MAX_BODY;

/// An edit's parts, not yet checked.
pub struct EditForm {
    /// The text fields, typed as JSON would carry them.
    pub fields: Map<String, Value>,
    /// The image to edit, as uploaded.
    pub image: Bytes,
    /// The mask, as uploaded: transparent where to repaint.
    pub mask: Option<Bytes>,
}

/// The fields whose text is a number or a boolean on the wire; the rest
/// are strings. A text that does not parse stays a string, so the request's
/// type check names the field (`n: invalid type: string "two"`).
const TYPED: [&str; 7] = [
    "n",
    "output_compression",
    "partial_images",
    "seed",
    "steps",
    "strength",
    "stream",
];

/// The most parts a form may have, and the longest a text part may be (a
/// generation's whole body may be no longer).
const MAX_PARTS: usize = 64;
const MAX_TEXT: usize = MAX_BODY;

fn unreadable(e: multer::Error) -> ApiError {
    ApiError::invalid(None, format!("the multipart body cannot be read: {e}"))
}

/// Splits a whole multipart body (already read, within its size limit).
pub async fn parse(content_type: Option<&str>, body: Bytes) -> Result<EditForm, ApiError> {
    let boundary = content_type
        .and_then(|ct| multer::parse_boundary(ct).ok())
        .ok_or_else(|| {
            ApiError::invalid(
                None,
                "send an edit as multipart/form-data, with the image as a file part `image` and the `prompt` as text, as OpenAI's clients do",
            )
        })?;
    let whole = futures::stream::once(async move { Ok::<_, std::convert::Infallible>(body) });
    let mut multipart = multer::Multipart::new(whole, boundary);
    let (mut images, mut mask, mut fields) = (Vec::new(), None, Map::new());
    let mut parts = 0;
    while let Some(field) = multipart.next_field().await.map_err(unreadable)? {
        parts += 1;
        if parts > MAX_PARTS {
            return Err(ApiError::invalid(
                None,
                format!("the form has more than {MAX_PARTS} parts"),
            ));
        }
        let name = field.name().unwrap_or_default().to_string();
        match name.as_str() {
            "image" | "image[]" => images.push(field.bytes().await.map_err(unreadable)?),
            "mask" if mask.is_some() => {
                return Err(ApiError::invalid(
                    Some("mask"),
                    "send one `mask`: it masks the one image",
                ))
            }
            "mask" => mask = Some(field.bytes().await.map_err(unreadable)?),
            _ => {
                let text = field.text().await.map_err(unreadable)?;
                if text.len() > MAX_TEXT {
                    return Err(ApiError::invalid(
                        field_param(&name),
                        format!("`{name}` is longer than {} KiB", MAX_TEXT >> 10),
                    ));
                }
                let value = if TYPED.contains(&name.as_str()) {
                    serde_json::from_str(text.trim()).unwrap_or(Value::String(text))
                } else {
                    Value::String(text)
                };
                fields.insert(name, value);
            }
        }
    }
    let image = match images.len() {
        1 => images.pop().expect("one"),
        0 => {
            return Err(ApiError::invalid(
                Some("image"),
                "`image` is required: the image to edit, as a file part",
            ))
        }
        n => {
            return Err(ApiError::invalid(
                Some("image"),
                format!("FLUX.1-schnell edits one image at a time; this request sent {n}"),
            ))
        }
    };
    Ok(EditForm {
        fields,
        image,
        mask,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(parts: &[(&str, Option<&str>, &[u8])]) -> (String, Bytes) {
        let mut out = Vec::new();
        for (name, file, data) in parts {
            out.extend_from_slice(b"--XyZ\r\n");
            let disposition = match file {
                Some(f) => format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: image/png\r\n\r\n"),
                None => format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n"),
            };
            out.extend_from_slice(disposition.as_bytes());
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"--XyZ--\r\n");
        ("multipart/form-data; boundary=XyZ".into(), out.into())
    }

    #[tokio::test]
    async fn fields_are_typed_by_name_and_one_image_is_taken() {
        let (ct, b) = body(&[
            ("prompt", None, b"a fox"),
            ("n", None, b"2"),
            ("stream", None, b"true"),
            ("strength", None, b"0.5"),
            ("size", None, b"512x512"),
            ("steps", None, b"two"),
            ("image[]", Some("in.png"), b"\x89PNG..."),
            ("mask", Some("mask.png"), b"MASK"),
        ]);
        let form = parse(Some(&ct), b).await.unwrap();
        assert_eq!(form.fields["prompt"], "a fox");
        assert_eq!(form.fields["n"], 2);
        assert_eq!(form.fields["stream"], true);
        assert_eq!(form.fields["strength"], 0.5);
        assert_eq!(form.fields["size"], "512x512");
        assert_eq!(
            form.fields["steps"], "two",
            "left for the type check to name"
        );
        assert_eq!(&form.image[..], b"\x89PNG...");
        assert_eq!(form.mask.as_deref(), Some(&b"MASK"[..]));

        let (ct, b) = body(&[("prompt", None, b"a fox")]);
        let e = parse(Some(&ct), b).await.err().unwrap();
        assert_eq!(e.param, Some("image"));
        let (ct, b) = body(&[("image", Some("a"), b"1"), ("image", Some("b"), b"2")]);
        let e = parse(Some(&ct), b).await.err().unwrap();
        assert!(e.message.contains("sent 2"), "{}", e.message);
        let (ct, b) = body(&[("mask", Some("a"), b"1"), ("mask", Some("b"), b"2")]);
        let e = parse(Some(&ct), b).await.err().unwrap();
        assert_eq!(e.param, Some("mask"));
        let long = vec![b'a'; MAX_TEXT + 1];
        let (ct, b) = body(&[("prompt", None, &long)]);
        let e = parse(Some(&ct), b).await.err().unwrap();
        assert_eq!(
            (e.param, e.message.contains("64 KiB")),
            (Some("prompt"), true)
        );
        let many: Vec<(&str, Option<&str>, &[u8])> = vec![("x", None, b"1"); MAX_PARTS + 1];
        let (ct, b) = body(&many);
        let e = parse(Some(&ct), b).await.err().unwrap();
        assert!(e.message.contains("more than 64 parts"), "{}", e.message);
        let e = parse(Some("application/json"), Bytes::from_static(b"{}"))
            .await
            .err()
            .unwrap();
        assert!(e.message.contains("multipart/form-data"), "{}", e.message);
    }
}
