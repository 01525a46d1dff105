//! Reading a request body whole, within a size and a time limit.

use std::time::Duration;

use axum::body::{Body, Bytes};
use bytes::BytesMut;
use futures::StreamExt;

use super::api_error::ApiError;

/// The whole body, at most `limit` bytes, within `timeout`: a client
/// trickling its body cannot hold a connection (or a shutdown) open.
pub(super) async fn read_body(
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ApiError> {
    let read = async {
        let mut stream = body.into_data_stream();
        let mut buf = BytesMut::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::invalid(None, format!("the request body could not be read: {e}"))
            })?;
            if buf.len() + chunk.len() > limit {
                return Err(ApiError::too_large(limit));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or_else(|_| Err(ApiError::body_timeout(timeout)))
}
