//! What every handler sees: the engine, the queue, the image store.

use std::sync::Arc;
use tokio::sync::Semaphore;

use super::api_error::ApiError;
use super::body::BodyLimits;
use super::metrics::Metrics;
use super::redact::Redactor;
use super::store::ImageStore;
use super::uploads::UploadPlaces;
use crate::flux::{FluxSchnell, ModelDescription};

/// What every handler sees.
pub struct AppState {
    pub(super) engine: FluxSchnell,
    pub(super) model: &'static ModelDescription,
    pub(super) queue: Arc<Semaphore>,
    pub(super) max_queue: usize,
    pub(super) api_key: Option<String>,
    pub(super) images: ImageStore,
    pub(super) public_url: Option<String>,
    /// Takes local paths out of what clients see.
    pub(super) redact: Redactor,
    /// What a generation's body must keep to.
    pub(super) body: BodyLimits,
    /// What an edit's body must keep to.
    pub(super) upload: BodyLimits,
    /// The places for edits' bodies.
    pub(super) uploads: Arc<UploadPlaces>,
    pub(super) started: u64,
    pub(super) metrics: Metrics,
}

impl AppState {
    /// What a failed generation tells the client, without local paths.
    pub(super) fn flux_error(&self, e: &crate::flux::FluxError) -> ApiError {
        let mut error = ApiError::from_flux(e);
        error.message = self.redact.apply(&error.message);
        error
    }
}
