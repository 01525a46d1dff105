//! The candle thread: jobs in order, models loaded on the first, panics turned into errors.

use crate::flux::error::FluxError;
use crate::flux::plan::memory::VaeDecode;
use crate::flux::request::generate::GenerateRequest;
use crate::flux::request::output::{Component, GenerateEvent};
use crate::flux::run::loaded::{LocalModel, Resident};
use crate::flux::run::pipeline;
use crate::flux::run::prompt_cache::PromptCache;
use crate::flux::weights::local::LocalFiles;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

use super::options::EngineOptions;
use super::status::{Phase, Shared};
use super::trim::release_free_memory;

pub(super) enum Job {
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
    pub(super) fn local(&self) -> &Arc<LocalFiles> {
        match self {
            Job::Load { local, .. } | Job::Generate { local, .. } => local,
        }
    }

    pub(super) fn emit(&self, event: GenerateEvent) -> bool {
        match self {
            Job::Load { .. } => true,
            Job::Generate { events, .. } => events.send(event).is_ok(),
        }
    }

    pub(super) fn fail(self, error: Arc<FluxError>) {
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
pub(super) type Loaded = (LocalModel, Resident);

/// The candle thread: loads on the first job, then runs jobs in order.
pub(super) fn worker(queue: std_mpsc::Receiver<Job>, options: EngineOptions, shared: Arc<Shared>) {
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
                if let Some((_, resident)) = &loaded {
                    let bytes = resident.prompts.bytes() as u64;
                    shared
                        .stats
                        .prompt_cache_bytes
                        .store(bytes, Ordering::Relaxed);
                }
                // The CPU layers' per-thread scratch too (a dequantized
                // panel, a decode's tiles), then the allocator's free pages.
                crate::flux::model::cpu_ops::release_scratch();
                release_free_memory();
            }
        }
    }
}

pub(super) fn panicked(stage: &'static str, panic: Box<dyn std::any::Any + Send>) -> FluxError {
    let reason = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into());
    FluxError::Compute { stage, reason }
}

pub(super) fn load(
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
