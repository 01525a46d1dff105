//! The engine: files through the hub, candle on a dedicated thread.
//!
//! Requests queue to one worker thread that owns the loaded models, so candle
//! never runs on a tokio worker and models load once. The files arrive first,
//! through [`HubClient`], in one concurrent batch.

use std::collections::BTreeMap;
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::SystemTime;

use futures::Stream;
use tokio::sync::{mpsc, oneshot, OnceCell};

use crate::flux::error::FluxError;
use crate::flux::plan::choice::{QuantChoice, QuantPlan};
use crate::flux::plan::device::DeviceChoice;
use crate::flux::plan::memory::{self, MemoryBudget, ModelSize, Sizing, VaeDecode, Workload};
use crate::flux::request::generate::GenerateRequest;
use crate::flux::request::output::GenerateEvent;
use crate::flux::weights::config::ConfigSource;
use crate::flux::weights::files::{ModelDescription, ModelFiles, FLUX_SCHNELL};
use crate::flux::weights::local::LocalFiles;
use crate::flux::weights::quant::{Quant, T5Quant};
use crate::hub::{HubClient, HubError, HubEvent, HubFile, HubModel};

mod fetch;
mod one_shot;
mod options;
mod status;
mod trim;
mod worker;

use fetch::{fetch_local, ModelHub};
use options::attempts_allowed;
pub use options::{EngineOptions, RetryPolicy, PLANNED_SIDE};
use status::{Counters, Shared};
pub use status::{EngineStats, EngineStatus, FileProgress, MemoryReport, NextAttempt, Phase};
use worker::{worker, Job};

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

impl FluxSchnell {
    /// An engine for FLUX.1-schnell fetching through `hub`. Nothing is
    /// downloaded or loaded until [`FluxSchnell::prepare`] or the first request.
    pub fn new(hub: HubClient, options: EngineOptions) -> Self {
        Self::for_model(&FLUX_SCHNELL, hub, options)
    }

    /// An engine for `model` (one of [`MODELS`](crate::flux::MODELS)) fetching through `hub`.
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
            stats: Counters::default(),
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

    /// A snapshot of the engine's state: phase, downloads, weights, memory.
    pub fn status(&self) -> EngineStatus {
        self.inner
            .shared
            .status
            .lock()
            .expect("not poisoned")
            .clone()
    }

    /// The engine's counters now.
    pub fn stats(&self) -> EngineStats {
        self.inner.shared.stats.snapshot()
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

impl HubModel for FluxSchnell {
    fn hub(&self) -> Result<HubClient, HubError> {
        Ok(self.inner.hub.clone())
    }
}
