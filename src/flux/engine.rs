//! The engine: files through the hub, candle on a dedicated thread.
//!
//! Requests queue to one worker thread that owns the loaded models, so candle
//! never runs on a tokio worker and models load once. The files arrive first,
//! through [`HubClient`], in one concurrent batch.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use candle_core::DType;
use futures::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, OnceCell};

use super::config::ConfigSource;
use super::device::DeviceChoice;
use super::files::{ModelDescription, ModelFiles, TextEncoders, FLUX_SCHNELL};
use super::loaded::{LocalFiles, LocalModel, Resident};
use super::memory::{self, MemoryBudget, ModelSize, Sizing, VaeDecode, Workload};
use super::pipeline;
use super::prompt_cache::PromptCache;
use super::quant::{Quant, QuantChoice, QuantPlan, T5Quant};
use super::request::{Component, GenerateEvent, GenerateRequest};
use super::weights::{load_failure, Named};
use super::FluxError;
use crate::hub::{FetchedFile, HubClient, HubError, HubEvent, HubFile, HubModel};

/// How the engine runs.
#[derive(Clone, Debug, Default)]
pub struct EngineOptions {
    pub device: DeviceChoice,
    /// Default: bf16 on GPUs, f32 on the CPU.
    pub dtype: Option<DType>,
    pub text_encoders: TextEncoders,
    /// Keep only the tokenizers resident; load T5, CLIP, the transformer and
    /// the VAE's decoder in turn on every request, each freed before the next.
    pub low_memory: bool,
    /// The transformer's weights: `auto` (the default) picks the largest
    /// that fits the device's memory.
    pub quant: QuantChoice,
    /// T5's weights; by default the type nearest the transformer's.
    pub t5_quant: Option<T5Quant>,
    /// Plan `auto` for this many bytes instead of measuring free memory.
    pub memory_budget: Option<u64>,
}

impl EngineOptions {
    /// The dtype to run in: the one asked for, else the device's default.
    /// bf16 on the CPU is refused here, before anything is fetched: candle's
    /// CPU matmul has no bf16 kernel for the VAE's convolutions, so it would
    /// fail only after the whole denoising.
    pub fn resolved_dtype(&self) -> Result<DType, FluxError> {
        let dtype = self.dtype.unwrap_or_else(|| self.device.default_dtype());
        if dtype == DType::BF16 && self.device == DeviceChoice::Cpu {
            return Err(FluxError::Dtype(
                "bf16 is not supported on the CPU (candle's CPU convolutions have no bf16 matmul): use f32, or a GGUF --quant for less memory".into(),
            ));
        }
        Ok(dtype)
    }
}

/// The image size `auto` plans for when no request has come yet (`prepare`).
pub const PLANNED_SIDE: u32 = 1024;

/// Where loading stands, for readiness reports (`/readyz` sends it as it is).
pub use crate::protocol::Phase;

/// Bytes of one file so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FileProgress {
    pub done: u64,
    pub total: u64,
}

/// A snapshot of the engine's state.
#[derive(Clone, Debug, Serialize)]
pub struct EngineStatus {
    pub phase: Phase,
    /// Keyed `repo/path`.
    pub files: BTreeMap<String, FileProgress>,
    pub error: Option<String>,
    /// The weights chosen, and why; once the plan is made.
    pub weights: Option<QuantPlan>,
    /// The memory requests are checked against; once the plan is made.
    pub memory: Option<MemoryReport>,
    /// After a failed start that a later attempt may mend (the Hub
    /// unreachable, say): which attempt failed last, and when the next begins.
    pub retry: Option<NextAttempt>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct NextAttempt {
    /// Attempts made so far.
    pub failed: u32,
    pub at: SystemTime,
}

/// How [`FluxSchnell::prepare_until_ready`] waits between attempts: from
/// `first`, doubling, up to `max`.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    pub first: Duration,
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            first: Duration::from_secs(2),
            max: Duration::from_secs(60),
        }
    }
}

/// Whether a failed start may mend itself, and how many attempts it gets:
/// the network, the Hub's servers and a full disk may mend, so they get as
/// many as it takes; an answer that is wrong in itself (a checksum
/// mismatch, no byte ranges) only a few, since each attempt may fetch
/// gigabytes again; a missing licence, a wrong name, a bad config or a
/// model too large for the device none.
fn attempts_allowed(e: &FluxError) -> Option<u32> {
    fn hub(e: &HubError) -> Option<u32> {
        match e {
            HubError::Transfer { .. }
            | HubError::Http { .. }
            | HubError::Io { .. }
            | HubError::DiskFull { .. } => Some(u32::MAX),
            HubError::Protocol { .. } | HubError::Integrity { .. } => Some(3),
            HubError::Many(errors) => errors.iter().filter_map(hub).max(),
            _ => None,
        }
    }
    match e {
        FluxError::Hub(e) => hub(e),
        _ => None,
    }
}

/// What `/readyz` says of memory: the limit, where it came from, and the
/// largest square image that fits under it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MemoryReport {
    pub limit_bytes: u64,
    pub source: String,
    /// The estimate for a 1024×1024 image.
    pub need_1024_bytes: u64,
    pub largest_square: Option<u32>,
}

impl MemoryReport {
    fn of(sizing: &Sizing) -> Self {
        Self {
            limit_bytes: sizing.limit(),
            source: sizing.budget.source.clone(),
            need_1024_bytes: sizing.need(1024, 1024, false, false, 1),
            largest_square: sizing.largest_square(),
        }
    }
}

/// Counters, for tests and metrics.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Times the models were loaded.
    pub loads: AtomicU64,
    /// Transformer passes run.
    pub steps: AtomicU64,
    /// Images finished.
    pub images: AtomicU64,
    /// Requests stopped because their client went away.
    pub cancelled: AtomicU64,
}

/// FLUX.1-schnell, ready to be asked for images. Cheap to clone.
#[derive(Clone)]
pub struct FluxSchnell {
    inner: Arc<Inner>,
}

struct Inner {
    hub: HubClient,
    model: &'static ModelDescription,
    options: EngineOptions,
    jobs: std_mpsc::Sender<Job>,
    shared: Arc<Shared>,
    plan: OnceCell<(QuantPlan, Sizing)>,
    local: OnceCell<Arc<LocalFiles>>,
}

/// What the worker and the async side both see.
struct Shared {
    status: Mutex<EngineStatus>,
    stats: EngineStats,
}

impl Shared {
    fn set_phase(&self, phase: Phase, error: Option<String>) {
        let mut status = self.status.lock().expect("not poisoned");
        status.phase = phase;
        status.error = error;
    }

    fn on_download(&self, event: &HubEvent) {
        let mut status = self.status.lock().expect("not poisoned");
        let key = |f: &HubFile| format!("{}/{}", f.repo, f.path);
        let entry = status.files.entry(key(event.file())).or_default();
        match event {
            HubEvent::Queued { size, .. } => entry.total = *size,
            HubEvent::Started {
                size, resumed_from, ..
            } => {
                *entry = FileProgress {
                    done: *resumed_from,
                    total: *size,
                }
            }
            HubEvent::Advanced { bytes, .. } => entry.done += bytes,
            HubEvent::Finished { size, .. } | HubEvent::Cached { size, .. } => {
                *entry = FileProgress {
                    done: *size,
                    total: *size,
                }
            }
            HubEvent::Retrying { .. } => {}
        }
    }
}

enum Job {
    Load {
        local: Arc<LocalFiles>,
        reply: oneshot::Sender<Result<(), Arc<FluxError>>>,
    },
    Generate {
        local: Arc<LocalFiles>,
        request: GenerateRequest,
        /// One per image.
        seeds: Vec<u64>,
        /// Whole, or in tiles where the whole would not fit.
        decode: VaeDecode,
        /// Images in each transformer pass, as many as fit.
        batch: usize,
        events: mpsc::UnboundedSender<GenerateEvent>,
    },
}

impl Job {
    fn local(&self) -> &Arc<LocalFiles> {
        match self {
            Job::Load { local, .. } | Job::Generate { local, .. } => local,
        }
    }

    fn emit(&self, event: GenerateEvent) -> bool {
        match self {
            Job::Load { .. } => true,
            Job::Generate { events, .. } => events.send(event).is_ok(),
        }
    }

    fn fail(self, error: Arc<FluxError>) {
        match self {
            Job::Load { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            Job::Generate { events, .. } => {
                let _ = events.send(GenerateEvent::Failed { error });
            }
        }
    }
}

impl FluxSchnell {
    /// An engine for FLUX.1-schnell fetching through `hub`. Nothing is
    /// downloaded or loaded until [`FluxSchnell::prepare`] or the first request.
    pub fn new(hub: HubClient, options: EngineOptions) -> Self {
        Self::for_model(&FLUX_SCHNELL, hub, options)
    }

    pub fn for_model(
        model: &'static ModelDescription,
        hub: HubClient,
        options: EngineOptions,
    ) -> Self {
        let shared = Arc::new(Shared {
            status: Mutex::new(EngineStatus {
                phase: Phase::Idle,
                files: BTreeMap::new(),
                error: None,
                weights: None,
                memory: None,
                retry: None,
            }),
            stats: EngineStats::default(),
        });
        let (jobs, queue) = std_mpsc::channel();
        let worker_shared = shared.clone();
        let worker_options = options.clone();
        std::thread::Builder::new()
            .name("schnell-candle".into())
            .spawn(move || worker(queue, worker_options, worker_shared))
            .expect("spawn the candle thread");
        Self {
            inner: Arc::new(Inner {
                hub,
                model,
                options,
                jobs,
                shared,
                plan: OnceCell::new(),
                local: OnceCell::new(),
            }),
        }
    }

    /// The tokenizer files (T5's, CLIP's): the same whatever the weights.
    pub fn tokenizer_files(&self) -> (HubFile, HubFile) {
        let files = self.safetensors_files();
        (files.t5_tokenizer, files.clip_tokenizer)
    }

    /// Every repository this engine may fetch from.
    pub fn repos(&self) -> Vec<String> {
        self.inner.model.repos(self.inner.options.text_encoders)
    }

    fn safetensors_files(&self) -> ModelFiles {
        self.inner
            .model
            .files(self.inner.options.text_encoders, Quant::None, T5Quant::None)
    }

    /// Which weights to run, decided once: as `quant` says, or for `auto`
    /// the largest that fits the device's memory at `width`×`height`. Fetches
    /// the (small) config files first: the estimate is computed from them.
    pub async fn plan(&self, width: u32, height: u32) -> Result<QuantPlan, Arc<FluxError>> {
        let shared = &self.inner.shared;
        let (plan, sizing) = self
            .inner
            .plan
            .get_or_try_init(|| self.make_plan(width, height))
            .await
            .map_err(|e| {
                shared.set_phase(Phase::Failed, Some(e.to_string()));
                Arc::new(e)
            })?;
        let mut status = shared.status.lock().expect("not poisoned");
        status.weights = Some(plan.clone());
        status.memory = Some(MemoryReport::of(sizing));
        Ok(plan.clone())
    }

    /// Refuses an image (an edit's, with `edit`) that would not fit in
    /// memory, as `generate` would, so that a server can answer before it
    /// starts a stream. Before the model is planned every size passes.
    pub fn check_size(&self, width: u32, height: u32, edit: bool) -> Result<(), FluxError> {
        self.check_fits(width, height, edit).map(drop)
    }

    /// How a request's image will be decoded, or its refusal if it would
    /// not fit in memory either way.
    fn check_fits(&self, width: u32, height: u32, edit: bool) -> Result<VaeDecode, FluxError> {
        match self.inner.plan.get() {
            Some((_, sizing)) => sizing.check(width, height, edit),
            None => Ok(VaeDecode::Whole),
        }
    }

    /// How many of a request's images share each transformer pass.
    fn batch_size(&self, request: &GenerateRequest, decode: VaeDecode) -> usize {
        match self.inner.plan.get() {
            Some((_, sizing)) => sizing.batch(
                request.width,
                request.height,
                request.init.is_some(),
                request.n,
                decode,
            ) as usize,
            None => 1,
        }
    }

    async fn make_plan(&self, width: u32, height: u32) -> Result<(QuantPlan, Sizing), FluxError> {
        let options = &self.inner.options;
        let configs = self.safetensors_files();
        let wanted = [
            configs.transformer_config,
            configs.t5_config,
            configs.clip_config,
            configs.vae_config,
        ];
        let fetched = ModelHub(self.inner.hub.clone())
            .huggingface_files(&wanted)
            .await?;
        let mut json = Vec::new();
        for f in &fetched {
            json.push((ConfigSource(f.file.to_string()), f.bytes().await?));
        }
        let [a, b, c, d] = &json[..] else {
            unreachable!("four files asked, four answered")
        };
        let size =
            ModelSize::from_configs([(&a.0, &a.1), (&b.0, &b.1), (&c.0, &c.1), (&d.0, &d.1)])?;
        let work = Workload {
            dtype: options.resolved_dtype()?,
            width,
            height,
            low_memory: options.low_memory,
            cpu: options.device == DeviceChoice::Cpu,
            tiled_vae: false,
            edit: false,
            batch: 1,
        };
        let budget = match options.memory_budget {
            Some(bytes) => MemoryBudget {
                bytes,
                source: "--memory-budget".into(),
            },
            None => {
                let device = options.device;
                tokio::task::spawn_blocking(move || MemoryBudget::measure(device))
                    .await
                    .map_err(|e| FluxError::Device(e.to_string()))??
            }
        };
        let plan = match options.quant {
            QuantChoice::Fixed(quant) => memory::fixed(&size, &work, quant, options.t5_quant),
            QuantChoice::Auto => memory::choose(&size, &work, &budget, options.t5_quant)?,
        };
        tracing::info!(
            transformer = %plan.transformer,
            t5 = %plan.t5,
            reason = %plan.reason,
            "weights chosen"
        );
        let sizing = Sizing {
            size,
            plan: (plan.transformer, plan.t5),
            work,
            budget,
        };
        Ok((plan, sizing))
    }

    pub fn status(&self) -> EngineStatus {
        self.inner
            .shared
            .status
            .lock()
            .expect("not poisoned")
            .clone()
    }

    pub fn stats(&self) -> &EngineStats {
        &self.inner.shared.stats
    }

    /// [`FluxSchnell::prepare`], tried again after failures that may mend
    /// themselves (see `attempts_allowed`), with backoff, until it succeeds;
    /// `status().retry` says when the next attempt is. Other failures end it.
    pub async fn prepare_until_ready(&self, policy: RetryPolicy) -> Result<(), Arc<FluxError>> {
        let mut delay = policy.first;
        let mut failed = 0;
        loop {
            let result = self.prepare().await;
            let retry = match &result {
                Err(e) if attempts_allowed(e).is_some_and(|n| failed + 1 < n) => {
                    failed += 1;
                    Some(NextAttempt {
                        failed,
                        at: SystemTime::now() + delay,
                    })
                }
                _ => None,
            };
            self.inner.shared.status.lock().expect("not poisoned").retry = retry;
            let Some(next) = retry else {
                return result;
            };
            if let Err(e) = &result {
                tracing::warn!(error = %e, attempt = next.failed, retry_in = ?delay, "the model could not be prepared; trying again");
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(policy.max);
        }
    }

    /// Downloads every file (once) and loads the models (once).
    pub async fn prepare(&self) -> Result<(), Arc<FluxError>> {
        let local = self.local_files(None, (PLANNED_SIDE, PLANNED_SIDE)).await?;
        let (reply, answer) = oneshot::channel();
        self.inner
            .jobs
            .send(Job::Load { local, reply })
            .map_err(|_| Arc::new(FluxError::EngineStopped))?;
        answer
            .await
            .map_err(|_| Arc::new(FluxError::EngineStopped))?
    }

    /// Makes the request's `n` images. The stream reports downloads and
    /// loading (the first time), warnings, every step with a preview (of each
    /// batch's first image), then a `Done` per image in order, or `Failed`.
    /// Dropping the stream cancels the request at the next step.
    pub fn generate(
        &self,
        request: GenerateRequest,
    ) -> impl Stream<Item = GenerateEvent> + Send + 'static {
        let (events, rx) = mpsc::unbounded_channel();
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(e) = request.validate() {
                let _ = events.send(GenerateEvent::Failed { error: Arc::new(e) });
                return;
            }
            let size = (request.width, request.height);
            let local = match this.local_files(Some(&events), size).await {
                Ok(local) => local,
                Err(error) => {
                    let _ = events.send(GenerateEvent::Failed { error });
                    return;
                }
            };
            let edit = request.init.is_some();
            let decode = match this.check_fits(request.width, request.height, edit) {
                Ok(decode) => decode,
                Err(e) => {
                    let _ = events.send(GenerateEvent::Failed { error: Arc::new(e) });
                    return;
                }
            };
            let job = Job::Generate {
                local,
                seeds: request.seeds(),
                batch: this.batch_size(&request, decode),
                request,
                decode,
                events,
            };
            if let Err(std_mpsc::SendError(job)) = this.inner.jobs.send(job) {
                job.fail(Arc::new(FluxError::EngineStopped));
            }
        });
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) })
    }

    /// The local copies of every file, fetched concurrently the first time,
    /// once the plan (made for `size` if not yet made) has chosen them.
    async fn local_files(
        &self,
        events: Option<&mpsc::UnboundedSender<GenerateEvent>>,
        size: (u32, u32),
    ) -> Result<Arc<LocalFiles>, Arc<FluxError>> {
        if let Some(local) = self.inner.local.get() {
            return Ok(local.clone());
        }
        let plan = self.plan(size.0, size.1).await?;
        let files =
            self.inner
                .model
                .files(self.inner.options.text_encoders, plan.transformer, plan.t5);
        let shared = self.inner.shared.clone();
        let forward = events.cloned();
        let hub = self.inner.hub.with_events(Arc::new(move |event: HubEvent| {
            shared.on_download(&event);
            if let Some(tx) = &forward {
                let _ = tx.send(GenerateEvent::Download(event));
            }
        }));
        let shared = &self.inner.shared;
        if matches!(
            shared.status.lock().expect("not poisoned").phase,
            Phase::Idle | Phase::Failed
        ) {
            shared.set_phase(Phase::Downloading, None);
        }
        let result = fetch_local(&ModelHub(hub), &files).await;
        match result {
            Ok(local) => {
                // A concurrent first request may have set it already: same files.
                let local = Arc::new(local);
                let _ = self.inner.local.set(local.clone());
                Ok(local)
            }
            Err(e) => {
                shared.set_phase(Phase::Failed, Some(e.to_string()));
                Err(Arc::new(e))
            }
        }
    }
}

/// The index of a sharded checkpoint.
#[derive(Deserialize)]
struct ShardIndex {
    weight_map: HashMap<String, String>,
}

/// The engine's client, reporting to this request: model code fetches
/// through [`HubModel`] and never touches the client itself.
struct ModelHub(HubClient);

impl HubModel for ModelHub {
    fn hub(&self) -> Result<HubClient, HubError> {
        Ok(self.0.clone())
    }
}

impl HubModel for FluxSchnell {
    fn hub(&self) -> Result<HubClient, HubError> {
        Ok(self.inner.hub.clone())
    }
}

/// Every file of the model, in one concurrent batch.
async fn fetch_local(model: &impl HubModel, files: &ModelFiles) -> Result<LocalFiles, FluxError> {
    let fetched = model.huggingface_files(&files.all()).await?;
    let by_file: HashMap<&HubFile, &FetchedFile> = fetched.iter().map(|f| (&f.file, f)).collect();
    let named = |f: &HubFile| Named::from(by_file[f]);

    let t5_weights = match &files.t5_index {
        None => files.t5_weights.iter().map(named).collect(),
        Some(index) => {
            // The shards the index names: usually those already fetched.
            let index_file = by_file[index];
            let bytes = index_file.bytes().await?;
            let parsed: ShardIndex = serde_json::from_slice(&bytes).map_err(|e| {
                load_failure(
                    &[Named::from(index_file)],
                    format!("not a safetensors index: {e}"),
                )
            })?;
            let dir = index.path.rsplit_once('/').map_or("", |(d, _)| d);
            let shards: BTreeSet<HubFile> = parsed
                .weight_map
                .values()
                .map(|name| {
                    let path = if dir.is_empty() {
                        name.clone()
                    } else {
                        format!("{dir}/{name}")
                    };
                    HubFile::new(&index.repo, path).at_revision(&index.revision)
                })
                .collect();
            let shards: Vec<HubFile> = shards.into_iter().collect();
            model
                .huggingface_files(&shards)
                .await?
                .iter()
                .map(Named::from)
                .collect()
        }
    };
    Ok(LocalFiles {
        transformer: named(&files.transformer),
        transformer_config: named(&files.transformer_config),
        vae: named(&files.vae),
        vae_config: named(&files.vae_config),
        t5_config: named(&files.t5_config),
        t5_weights,
        t5_tokenizer: named(&files.t5_tokenizer),
        clip_config: named(&files.clip_config),
        clip_weights: named(&files.clip_weights),
        clip_tokenizer: named(&files.clip_tokenizer),
        quant: files.quant,
        t5_quant: files.t5_quant,
    })
}

type Loaded = (LocalModel, Resident);

/// The candle thread: loads on the first job, then runs jobs in order.
fn worker(queue: std_mpsc::Receiver<Job>, options: EngineOptions, shared: Arc<Shared>) {
    let mut loaded: Option<Loaded> = None;
    while let Ok(job) = queue.recv() {
        if let Job::Generate { events, .. } = &job {
            if events.is_closed() {
                // Cancelled while it waited in the queue.
                continue;
            }
        }
        let mut load_time = None;
        if loaded.is_none() {
            shared.set_phase(Phase::Loading, None);
            let started = Instant::now();
            let attempt = std::panic::catch_unwind(AssertUnwindSafe(|| {
                load(job.local(), &options, &mut |c| {
                    job.emit(GenerateEvent::Loading { component: c })
                })
            }))
            .unwrap_or_else(|panic| Err(panicked("loading", panic)));
            match attempt {
                Ok(models) => {
                    shared.stats.loads.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(elapsed = ?started.elapsed(), "models loaded");
                    load_time = Some(started.elapsed());
                    shared.set_phase(Phase::Ready, None);
                    loaded = Some(models);
                }
                Err(e) => {
                    // Everyone waiting gets this error; a later request tries again.
                    tracing::error!(error = %e, "loading failed");
                    shared.set_phase(Phase::Failed, Some(e.to_string()));
                    let e = Arc::new(e);
                    job.fail(e.clone());
                    while let Ok(waiting) = queue.try_recv() {
                        waiting.fail(e.clone());
                    }
                    continue;
                }
            }
        }
        let (model, resident) = loaded.as_mut().expect("loaded above");
        match job {
            Job::Load { reply, .. } => {
                let _ = reply.send(Ok(()));
            }
            Job::Generate {
                request,
                seeds,
                decode,
                batch,
                events,
                ..
            } => {
                let mut poisoned = false;
                // An edit's image, encoded by the first batch for the rest.
                let mut encoded = None;
                for seeds in seeds.chunks(batch.max(1)) {
                    let mut emit = |event: GenerateEvent| events.send(event).is_ok();
                    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        pipeline::generate(
                            model,
                            resident,
                            &request,
                            (seeds, decode),
                            &mut encoded,
                            pipeline::Hooks {
                                emit: &mut emit,
                                on_step: &mut || {
                                    shared.stats.steps.fetch_add(1, Ordering::Relaxed);
                                },
                                cancelled: &|| events.is_closed(),
                            },
                        )
                    }));
                    let result = result.unwrap_or_else(|panic| {
                        poisoned = true;
                        Err(panicked("generation", panic))
                    });
                    match result {
                        Ok((images, prompt_tokens)) => {
                            for ((image, mut timings), &seed) in images.into_iter().zip(seeds) {
                                // This image waited for the models to load: count it.
                                if let Some(load) = load_time.take() {
                                    timings.load += load;
                                    timings.total += load;
                                }
                                shared.stats.images.fetch_add(1, Ordering::Relaxed);
                                let _ = events.send(GenerateEvent::Done {
                                    image,
                                    seed,
                                    timings,
                                    prompt_tokens,
                                });
                            }
                        }
                        Err(e) => {
                            if let FluxError::Cancelled = e {
                                shared.stats.cancelled.fetch_add(1, Ordering::Relaxed);
                                tracing::info!("request cancelled");
                            } else {
                                let _ = events.send(GenerateEvent::Failed { error: Arc::new(e) });
                            }
                            break;
                        }
                    }
                }
                if poisoned {
                    // After a panic the models may be in any state: load
                    // them again next time.
                    loaded = None;
                }
            }
        }
    }
}

fn panicked(stage: &'static str, panic: Box<dyn std::any::Any + Send>) -> FluxError {
    let reason = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into());
    FluxError::Compute { stage, reason }
}

fn load(
    local: &LocalFiles,
    options: &EngineOptions,
    emit: &mut dyn FnMut(Component) -> bool,
) -> Result<Loaded, FluxError> {
    let dtype = options.resolved_dtype()?;
    let device = options.device.open()?;
    let model = LocalModel::open(local.clone(), device, dtype)?;
    let tokenizers = model.tokenizers()?;
    emit(Component::Clip);
    let clip = model.load_clip()?;
    emit(Component::Vae);
    let decoder = model.load_decoder()?;
    // In low-memory mode CLIP and the VAE were loaded only to check their
    // files now rather than at the first request; they are loaded again
    // when needed.
    let (clip, decoder, t5, flux) = if options.low_memory {
        (None, None, None, None)
    } else {
        emit(Component::T5);
        let t5 = model.load_t5()?;
        emit(Component::Transformer);
        (
            Some(clip),
            Some(decoder),
            Some(t5),
            Some(model.load_flux()?),
        )
    };
    Ok((
        model,
        Resident {
            tokenizers,
            clip,
            decoder,
            t5,
            flux,
            prompts: PromptCache::default(),
        },
    ))
}
