//! Quantized (GGUF) weights end to end on tiny random-weight files that have
//! city96's names and per-tensor types, served by the mirror. The images are
//! noise; what is tested is that every type loads and runs, that a seed gives
//! one image, that quantized images stay near full precision, and that a
//! broken file is named.
#![cfg(not(target_arch = "wasm32"))]

mod support;

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use schnell::flux::{
    EngineOptions, FluxSchnell, GenerateEvent, GenerateRequest, Image, Phase, Quant, QuantChoice,
    T5Quant, FLUX_GGUF_REPO, T5_GGUF_REPO,
};
use schnell::hub::HubClientBuilder;
use support::{tiny_copy, tiny_models, TestHub};

struct Setup {
    _hub: TestHub,
    _cache: tempfile::TempDir,
    engine: FluxSchnell,
}

fn setup_in(dir: &Path, options: EngineOptions) -> Setup {
    let hub = TestHub::start(dir);
    let cache = tempfile::tempdir().unwrap();
    let client = HubClientBuilder::new(cache.path())
        .endpoint(&hub.endpoint)
        .retries(1, Duration::from_millis(5), Duration::from_millis(10))
        .build()
        .unwrap();
    Setup {
        _hub: hub,
        _cache: cache,
        engine: FluxSchnell::new(client, options),
    }
}

fn with(quant: Quant, t5: Option<T5Quant>) -> EngineOptions {
    EngineOptions::default()
        .quant(QuantChoice::Fixed(quant))
        .t5_quant(t5)
}

fn small(seed: u64) -> GenerateRequest {
    GenerateRequest::new("a red fox in the snow")
        .size(256, 256)
        .steps(2)
        .seed(seed)
}

async fn outcome(engine: &FluxSchnell, request: GenerateRequest) -> Result<Image, String> {
    let events: Vec<GenerateEvent> = engine.generate(request).collect().await;
    match events.last() {
        Some(GenerateEvent::Done { image, .. }) => Ok(image.clone()),
        Some(GenerateEvent::Failed { error }) => Err(error.to_string()),
        other => panic!("the stream ended without an outcome: {other:?}"),
    }
}

async fn image(engine: &FluxSchnell, seed: u64) -> Image {
    outcome(engine, small(seed))
        .await
        .unwrap_or_else(|e| panic!("generation failed: {e}"))
}

/// Peak signal-to-noise ratio of two 8-bit images, in dB.
fn psnr(a: &Image, b: &Image) -> f64 {
    assert_eq!((a.width, a.height), (b.width, b.height));
    let mse = a
        .rgb
        .iter()
        .zip(&b.rgb)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum::<f64>()
        / a.rgb.len() as f64;
    10.0 * (255.0f64.powi(2) / mse.max(1e-12)).log10()
}

#[tokio::test]
async fn every_transformer_type_generates_with_its_default_t5() {
    for quant in Quant::GGUF {
        let s = setup_in(tiny_models(), with(quant, None));
        let img = image(&s.engine, 3).await;
        assert_eq!((img.width, img.height), (256, 256), "{quant}");
        let status = s.engine.status();
        let weights = status.weights.expect("the plan is recorded");
        assert_eq!(weights.transformer, quant);
        assert_eq!(weights.t5, T5Quant::nearest(quant));
        assert!(weights.reason.contains("as asked"), "{}", weights.reason);
        // The GGUF files came through the hub.
        assert!(
            status
                .files
                .keys()
                .any(|k| k.starts_with(FLUX_GGUF_REPO) && k.ends_with(".gguf")),
            "{quant}: {:?}",
            status.files.keys()
        );
    }
}

#[tokio::test]
async fn every_t5_type_generates() {
    for t5 in T5Quant::GGUF {
        let s = setup_in(tiny_models(), with(Quant::Q8_0, Some(t5)));
        let img = image(&s.engine, 3).await;
        assert_eq!((img.width, img.height), (256, 256), "{t5}");
        let files = s.engine.status().files;
        let wanted = format!("{T5_GGUF_REPO}/{}", t5.file().unwrap().path);
        assert!(files.contains_key(&wanted), "{t5}: {:?}", files.keys());
    }
}

#[tokio::test]
async fn a_gguf_transformer_beside_a_safetensors_t5_and_the_other_way() {
    let s = setup_in(tiny_models(), with(Quant::Q4_0, Some(T5Quant::None)));
    image(&s.engine, 5).await;
    let s = setup_in(tiny_models(), with(Quant::None, Some(T5Quant::Q4KS)));
    image(&s.engine, 5).await;
}

#[tokio::test]
async fn a_seed_gives_one_image_and_quantized_images_stay_near_full_precision() {
    let full = setup_in(tiny_models(), with(Quant::None, None));
    let q8 = setup_in(tiny_models(), with(Quant::Q8_0, None));
    let q4 = setup_in(tiny_models(), with(Quant::Q4_0, None));
    let reference = image(&full.engine, 21).await;
    let a = image(&q4.engine, 21).await;
    let b = image(&q4.engine, 21).await;
    assert_eq!(a.rgb, b.rgb, "the same seed must give the same image");
    let other = image(&q4.engine, 22).await;
    assert_ne!(a.rgb, other.rgb, "another seed must give another image");

    let q8_psnr = psnr(&image(&q8.engine, 21).await, &reference);
    let q4_psnr = psnr(&a, &reference);
    // Another seed's image against the reference: what "unrelated" scores.
    let unrelated = psnr(&other, &reference);
    println!(
        "PSNR against none, seed 21: q8_0 {q8_psnr:.1} dB, q4_0 {q4_psnr:.1} dB (another seed: {unrelated:.1} dB)"
    );
    assert!(q8_psnr > 30.0, "q8_0: {q8_psnr:.1} dB");
    assert!(
        q4_psnr > unrelated + 5.0,
        "q4_0: {q4_psnr:.1} dB, unrelated {unrelated:.1} dB"
    );
    assert!(
        q8_psnr > q4_psnr,
        "q8_0 {q8_psnr:.1} dB, q4_0 {q4_psnr:.1} dB"
    );
}

#[tokio::test]
async fn a_file_of_the_wrong_type_is_named_with_a_tensor() {
    let dir = tiny_copy();
    let repo = dir.path().join(FLUX_GGUF_REPO);
    // A Q8_0 file where the Q4_0 file should be.
    std::fs::copy(
        repo.join("flux1-schnell-Q8_0.gguf"),
        repo.join("flux1-schnell-Q4_0.gguf"),
    )
    .unwrap();
    let s = setup_in(dir.path(), with(Quant::Q4_0, Some(T5Quant::Q4KS)));
    let err = outcome(&s.engine, small(1)).await.unwrap_err();
    assert!(
        err.contains("flux1-schnell-Q4_0.gguf")
            && err.contains("_blocks.")
            && err.contains("Q8_0")
            && err.contains("Q4_0"),
        "{err}"
    );
    assert_eq!(s.engine.status().phase, Phase::Failed);

    // Not a GGUF file at all.
    std::fs::write(
        repo.join("flux1-schnell-Q5_0.gguf"),
        b"<html>not found</html>",
    )
    .unwrap();
    let s = setup_in(dir.path(), with(Quant::Q5_0, None));
    let err = outcome(&s.engine, small(1)).await.unwrap_err();
    assert!(
        err.contains("flux1-schnell-Q5_0.gguf") && err.contains("GGUF"),
        "{err}"
    );
}

#[tokio::test]
async fn a_renamed_tensor_is_named_with_its_file() {
    let dir = tiny_copy();
    let flux_file = dir
        .path()
        .join(FLUX_GGUF_REPO)
        .join("flux1-schnell-Q4_0.gguf");
    schnell::dev::rename_gguf_tensors(&flux_file, |name| {
        (name == "img_in.weight").then(|| "img_in.renamed".to_string())
    })
    .unwrap();
    let s = setup_in(dir.path(), with(Quant::Q4_0, Some(T5Quant::None)));
    let err = outcome(&s.engine, small(1)).await.unwrap_err();
    assert!(
        err.contains("flux1-schnell-Q4_0.gguf") && err.contains("img_in.weight"),
        "{err}"
    );

    let t5_file = dir
        .path()
        .join(T5_GGUF_REPO)
        .join("t5-v1_1-xxl-encoder-Q4_K_S.gguf");
    schnell::dev::rename_gguf_tensors(&t5_file, |name| {
        (name == "enc.blk.1.attn_k.weight").then(|| "enc.blk.1.attn_key.weight".to_string())
    })
    .unwrap();
    let s = setup_in(dir.path(), with(Quant::Q8_0, Some(T5Quant::Q4KS)));
    let err = outcome(&s.engine, small(1)).await.unwrap_err();
    assert!(
        err.contains("t5-v1_1-xxl-encoder-Q4_K_S.gguf") && err.contains("enc.blk.1.attn_k.weight"),
        "{err}"
    );
}

#[tokio::test]
async fn auto_picks_by_the_memory_budget_and_an_explicit_type_wins() {
    // The tiny model's needs, planned for 256×256: a budget far above them
    // runs full precision; none at all fails before any weight is fetched.
    let roomy = EngineOptions::default().memory_budget(Some(64 << 30));
    let s = setup_in(tiny_models(), roomy);
    image(&s.engine, 1).await;
    let weights = s.engine.status().weights.unwrap();
    assert_eq!(weights.transformer, Quant::None);
    assert!(
        weights.reason.contains("auto") && weights.reason.contains("--memory-budget"),
        "{}",
        weights.reason
    );

    let starved = EngineOptions::default().memory_budget(Some(1 << 20));
    let s = setup_in(tiny_models(), starved);
    let err = outcome(&s.engine, small(1)).await.unwrap_err();
    assert!(
        err.contains("no weights fit") && err.contains("--memory-budget"),
        "{err}"
    );
    assert!(
        !s.engine.status().files.keys().any(|k| k.ends_with(".gguf")),
        "nothing is downloaded for a plan that failed"
    );

    let explicit = with(Quant::Q2K, None).memory_budget(Some(1 << 20));
    let s = setup_in(tiny_models(), explicit);
    image(&s.engine, 1).await;
    assert_eq!(s.engine.status().weights.unwrap().transformer, Quant::Q2K);
}

/// Counts the bytes each thread has allocated and not yet freed, and the
/// peak of that, so that a test can bound what one call of its own takes
/// while the other tests run beside it. (Frees from another thread count
/// against that thread; the call measured here frees its own.)
mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    pub struct Counting;

    thread_local! {
        static LIVE: Cell<isize> = const { Cell::new(0) };
        static PEAK: Cell<isize> = const { Cell::new(0) };
    }

    fn add(bytes: isize) {
        // `try_with`: not during the thread's teardown.
        let _ = LIVE.try_with(|live| {
            let now = live.get() + bytes;
            live.set(now);
            let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
        });
    }

    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            add(layout.size() as isize);
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            add(-(layout.size() as isize));
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            add(new_size as isize - layout.size() as isize);
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    /// The most this thread held at once during `f`, above what it held
    /// before.
    pub fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
        let start = LIVE.with(Cell::get);
        PEAK.with(|peak| peak.set(start));
        let out = f();
        (out, (PEAK.with(Cell::get) - start).max(0) as usize)
    }
}

#[global_allocator]
static ALLOCATOR: counting::Counting = counting::Counting;

/// `schnell dev random-models --size real` records the real architecture's
/// constructor; it once made every weight real (the CPU repack of the linear
/// layers) and was killed at 24 GB.
#[test]
fn recording_the_real_transformer_makes_no_weight() {
    let sizes = schnell::dev::ModelSizes::real();
    let (parameters, peak) =
        counting::peak_during(|| schnell::dev::transformer_parameters(&sizes).unwrap());
    // FLUX.1-schnell: 11.9 billion parameters (the Hub, in shared/reference/gguf.md).
    assert!(
        (11_800_000_000..12_000_000_000).contains(&parameters),
        "{parameters} parameters: not the real architecture"
    );
    assert!(
        peak < 64 << 20,
        "recording took {} MB at its peak",
        peak >> 20
    );
}
