//! The server's metrics, in the Prometheus project's client: requests by
//! status, the queue, per-stage time histograms, images made and the
//! model's bytes downloaded. Served by `metrics_routes`.

use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

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
    stored_images: Gauge,
    prompt_cache: Gauge,
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
        let stored_images = Gauge::default();
        registry.register(
            "stored_images_bytes",
            "Bytes of response_format url images held in memory (0 with --image-dir)",
            stored_images.clone(),
        );
        let prompt_cache = Gauge::default();
        registry.register(
            "prompt_cache_bytes",
            "Bytes of text encoder outputs kept for recent prompts",
            prompt_cache.clone(),
        );
        Self {
            registry,
            requests,
            stages,
            images,
            queue_in_use,
            queue_max,
            downloaded,
            stored_images,
            prompt_cache,
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

/// The gauges' values, read when `/metrics` is asked for.
pub struct Readings {
    /// The queue's places in use.
    pub queue_in_use: u64,
    /// The queue's places.
    pub queue_max: u64,
    /// The model's bytes downloaded or found.
    pub downloaded: u64,
    /// Bytes of images held in memory.
    pub stored_images: u64,
    /// Bytes of the engine's prompt cache.
    pub prompt_cache: u64,
}

impl Metrics {
    /// Counts an answer with `status`.
    pub fn count_answer(&self, status: u16) {
        self.requests.get_or_create(&StatusLabel { status }).inc();
    }

    /// The metrics in OpenMetrics' text format, with the gauges as read now.
    pub fn render(&self, now: &Readings) -> Result<String, std::fmt::Error> {
        let set = |gauge: &Gauge, value: u64| gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
        set(&self.queue_in_use, now.queue_in_use);
        set(&self.queue_max, now.queue_max);
        set(&self.downloaded, now.downloaded);
        set(&self.stored_images, now.stored_images);
        set(&self.prompt_cache, now.prompt_cache);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}
