//! `GET /metrics`, in OpenMetrics text (which Prometheus scrapes): requests
//! by status, the queue, per-stage time histograms, images made and the
//! model's bytes downloaded. Behind the API key when one is set.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::errors::ApiError;
use super::AppState;
use crate::flux::Timings;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: u16,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)] // the label values, as they are written
enum Stage {
    load,
    text_encoding,
    vae_encode,
    step,
    vae_decode,
    total,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabel {
    stage: Stage,
}

/// Seconds from 10 ms to about 11 minutes, doubling: a tiny model's step on
/// a GPU to the real model's VAE decode on a CPU.
#[derive(Clone)]
struct StageBuckets;

impl MetricConstructor<Histogram> for StageBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(0.01, 2.0, 17))
    }
}

/// What the server counts; the rest is read from the engine when scraped.
pub struct Metrics {
    registry: Registry,
    requests: Family<StatusLabel, Counter>,
    stages: Family<StageLabel, Histogram, StageBuckets>,
    images: Counter,
    queue_in_use: Gauge,
    queue_max: Gauge,
    downloaded: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("schnell");
        let requests = Family::<StatusLabel, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by status",
            requests.clone(),
        );
        let stages = Family::new_with_constructor(StageBuckets);
        registry.register(
            "stage_seconds",
            "Time per stage of each image the server made (step: each denoising step)",
            stages.clone(),
        );
        let images = Counter::default();
        registry.register("images", "Images the server made", images.clone());
        let queue_in_use = Gauge::default();
        registry.register(
            "queue_requests",
            "Requests admitted: running and waiting",
            queue_in_use.clone(),
        );
        let queue_max = Gauge::default();
        registry.register(
            "queue_capacity",
            "Requests admitted at most (--max-queue)",
            queue_max.clone(),
        );
        let downloaded = Gauge::default();
        registry.register(
            "model_downloaded_bytes",
            "Bytes of the model's files downloaded or found in the cache",
            downloaded.clone(),
        );
        Self {
            registry,
            requests,
            stages,
            images,
            queue_in_use,
            queue_max,
            downloaded,
        }
    }
}

impl Metrics {
    /// One finished image's stages.
    pub fn image_done(&self, timings: &Timings) {
        self.images.inc();
        let observe = |stage: Stage, d: Duration| {
            self.stages
                .get_or_create(&StageLabel { stage })
                .observe(d.as_secs_f64())
        };
        // A batch's later images share the first's stages: counted once.
        if !timings.shared_passes {
            observe(Stage::load, timings.load);
            observe(Stage::text_encoding, timings.text_encoding);
            if !timings.vae_encode.is_zero() {
                observe(Stage::vae_encode, timings.vae_encode);
            }
            for step in &timings.steps {
                observe(Stage::step, *step);
            }
        }
        observe(Stage::vae_decode, timings.vae_decode);
        observe(Stage::total, timings.total);
    }
}

/// Counts every answer by its status (middleware on the whole router).
pub async fn count_requests(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let response = next.run(request).await;
    let status = response.status().as_u16();
    state
        .metrics
        .requests
        .get_or_create(&StatusLabel { status })
        .inc();
    response
}

/// `GET /metrics`.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let m = &state.metrics;
    let in_use = state.max_queue - state.queue.available_permits();
    m.queue_in_use.set(in_use as i64);
    m.queue_max.set(state.max_queue as i64);
    let done: u64 = state.engine.status().files.values().map(|f| f.done).sum();
    m.downloaded.set(i64::try_from(done).unwrap_or(i64::MAX));
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &m.registry) {
        return ApiError::internal(format!("encoding the metrics: {e}")).into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
