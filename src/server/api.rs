//! `/v1`'s handlers: OpenAI's Images API (`POST /v1/images/generations`
//! and `/v1/images/edits`), the images it serves by URL, `GET /v1/models`,
//! and JSON errors for unknown paths and methods.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio::sync::OwnedSemaphorePermit;

use super::answer::images;
use super::api_error::ApiError;
use super::body::{declared_length_fits, read_body};
use super::events::stream;
use super::fields::{field_error, parse};
use super::form;
use super::request::{admit, check, fits, parse_json, ready, Checked};
use super::site::content_type_is;
use super::state::AppState;
use crate::flux::{Image, InitImage, Mask};
use crate::listen::GraceOver;
use crate::protocol::{Model, ModelList};

/// `POST /v1/images/generations`: a JSON body, answered whole or streamed.
pub async fn generations(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let grace_over = GraceOver::of(&parts.extensions);
    let checked = async {
        // Browsers send other types from any page without asking first.
        content_type_is(&parts.headers, "application/json")?;
        declared_length_fits(&parts.headers, state.body.max)?;
        let body = read_body(body, state.body).await?;
        let checked = check(&state, parse_json(&body)?, None)?;
        ready(&state)?;
        fits(&state, &checked)?;
        Ok::<_, ApiError>(checked)
    };
    let checked = match checked.await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let permit = match admit(&state) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    respond(state, checked, permit, grace_over).await
}

/// `POST /v1/images/edits`: FLUX image-to-image, inpainting with a mask.
pub async fn edits(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let grace_over = GraceOver::of(&parts.extensions);
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    // A few bodies (each up to [`MAX_EDIT_BODY`](super::MAX_EDIT_BODY)) are
    // read and decoded at once, beside the queue, so that slow uploads never
    // hold its places; and a few for each client (see `uploads`).
    let upload = match content_type_is(&parts.headers, "multipart/form-data")
        .and_then(|()| declared_length_fits(&parts.headers, state.upload.max))
        .and_then(|()| ready(&state))
        .and_then(|()| state.uploads.take(peer))
    {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let checked = async {
        let body = read_body(body, state.upload).await?;
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let form = form::parse(content_type, body).await?;
        let parsed = parse(serde_json::Value::Object(form.fields)).map_err(field_error)?;
        let strength = parsed
            .strength
            .map_or(crate::flux::DEFAULT_STRENGTH, |s| s as f32);
        // Decoding a large upload takes a while: off the runtime's threads.
        // The upload's place goes with it, so a client that leaves meanwhile
        // does not let more decodes start than there are places.
        let init = tokio::task::spawn_blocking(move || {
            let _upload = upload;
            let image = Image::decode(&form.image)
                .map_err(|reason| ApiError::invalid(Some("image"), format!("`image` {reason}")))?;
            let mask = form
                .mask
                .map(|bytes| Mask::decode(&bytes))
                .transpose()
                .map_err(|reason| ApiError::invalid(Some("mask"), format!("`mask` {reason}")))?;
            InitImage::new(image, mask, strength).map_err(|e| ApiError::from_flux(&e))
        })
        .await
        .map_err(|e| ApiError::internal(format!("decoding the image: {e}")))??;
        let checked = check(&state, parsed, Some(init))?;
        fits(&state, &checked)?;
        Ok::<_, ApiError>(checked)
    };
    let checked = match checked.await {
        Ok(checked) => checked,
        Err(e) => return e.into_response(),
    };
    match admit(&state) {
        Ok(permit) => respond(state, checked, permit, grace_over).await,
        Err(e) => e.into_response(),
    }
}

/// Runs a checked request that holds its queue place: the images in one
/// answer, or a stream of events. Either says so when the server's shutdown
/// grace runs out first (`grace_over`), rather than just closing.
async fn respond(
    state: Arc<AppState>,
    checked: Checked,
    permit: OwnedSemaphorePermit,
    grace_over: impl Future<Output = ()> + Send + 'static,
) -> Response {
    if checked.wire.stream {
        return stream(state, checked, permit, grace_over).into_response();
    }
    tokio::select! {
        // A finished answer is sent, even as the grace runs out.
        biased;
        answer = images(state, checked, permit) => answer,
        () = grace_over => ApiError::shutting_down().into_response(),
    }
}

/// `GET /v1/images/{id}.{png|jpeg}`: an image made with `response_format: "url"`.
pub async fn image(State(state): State<Arc<AppState>>, Path(file): Path<String>) -> Response {
    match state.images.get(&file).await {
        Some((bytes, content_type)) => {
            ([(header::CONTENT_TYPE, content_type)], bytes).into_response()
        }
        None => ApiError::not_found(format!(
            "no image {file:?}: it never existed or has expired"
        ))
        .into_response(),
    }
}

/// Any other path under `/v1`.
pub async fn unknown(method: Method, uri: Uri) -> Response {
    ApiError::not_found(format!("no such endpoint: {method} {}", uri.path())).into_response()
}

/// A known path with another method.
pub async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    ApiError::refused(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} does not answer {method}", uri.path()),
    )
    .into_response()
}

/// `GET /v1/models`.
pub async fn models(State(state): State<Arc<AppState>>) -> Json<ModelList> {
    Json(ModelList {
        object: "list".into(),
        data: vec![Model {
            id: state.model.id.to_string(),
            object: "model".into(),
            created: state.started,
            owned_by: "black-forest-labs".into(),
            hub_repo: state.model.key.to_string(),
        }],
    })
}
