//! FLUX.1-schnell end to end on tiny random-weight models served by the mirror.
//! The images are noise; what is tested is the pipeline around them.
#![cfg(not(target_arch = "wasm32"))]

mod support;

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use schnell::flux::{
    Component, EngineOptions, FluxSchnell, GenerateEvent, GenerateRequest, Image, InitImage,
    TextEncoders,
};
use schnell::hub::HubClientBuilder;
use support::{tiny_copy, tiny_models, TestHub};

struct Setup {
    hub: TestHub,
    _cache: tempfile::TempDir,
    engine: FluxSchnell,
}

fn setup_with(dir: &Path, options: EngineOptions, token: Option<&str>) -> Setup {
    let hub = TestHub::start(dir);
    let cache = tempfile::tempdir().unwrap();
    let client = HubClientBuilder::new(cache.path())
        .endpoint(&hub.endpoint)
        .token(token.map(str::to_string))
        .retries(1, Duration::from_millis(5), Duration::from_millis(10))
        .build()
        .unwrap();
    Setup {
        hub,
        _cache: cache,
        engine: FluxSchnell::new(client, options),
    }
}

fn setup(encoders: TextEncoders) -> Setup {
    setup_with(
        tiny_models(),
        EngineOptions::default().text_encoders(encoders),
        None,
    )
}

fn small(prompt: &str, seed: u64) -> GenerateRequest {
    GenerateRequest::new(prompt)
        .size(256, 320)
        .steps(2)
        .seed(seed)
}

async fn run(engine: &FluxSchnell, request: GenerateRequest) -> Vec<GenerateEvent> {
    engine.generate(request).collect().await
}

fn done(events: &[GenerateEvent]) -> (&Image, u64) {
    match events.last() {
        Some(GenerateEvent::Done { image, seed, .. }) => (image, *seed),
        Some(GenerateEvent::Failed { error }) => panic!("generation failed: {error}"),
        other => panic!("the stream ended without Done: {other:?}"),
    }
}

fn failure(events: &[GenerateEvent]) -> String {
    match events.last() {
        Some(GenerateEvent::Failed { error }) => error.to_string(),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test]
async fn both_text_encoder_sets_make_a_png_of_the_requested_size() {
    for encoders in [TextEncoders::FluxRepo, TextEncoders::Original] {
        let s = setup(encoders);
        let events = run(&s.engine, small("a red fox in the snow", 7)).await;
        let (image, seed) = done(&events);
        assert_eq!(seed, 7);
        let png = image.to_png().unwrap();
        let decoded = image::load_from_memory_with_format(&png, image::ImageFormat::Png).unwrap();
        assert_eq!(
            (decoded.width(), decoded.height()),
            (256, 320),
            "{encoders}"
        );
        // Every file came through the hub, in one batch, from the mirror.
        assert!(s.hub.stats.requests() > 0);
        assert!(
            events
                .iter()
                .any(|e| matches!(e, GenerateEvent::Download(_))),
            "no download events"
        );
    }
}

#[tokio::test]
async fn the_same_seed_gives_the_same_png_and_another_seed_another_image() {
    let s = setup(TextEncoders::FluxRepo);
    let png = |events: Vec<GenerateEvent>| done(&events).0.to_png().unwrap();
    let a = png(run(&s.engine, small("a cat", 42)).await);
    let b = png(run(&s.engine, small("a cat", 42)).await);
    let c = png(run(&s.engine, small("a cat", 43)).await);
    assert_eq!(a, b, "same seed, different bytes");
    assert_ne!(a, c, "different seeds, same image");

    // A random seed is reported back, and reproduces the image.
    let mut random = small("a cat", 0);
    random.seed = None;
    let events = run(&s.engine, random.clone()).await;
    let (image, seed) = done(&events);
    random.seed = Some(seed);
    let again = run(&s.engine, random).await;
    assert_eq!(image, done(&again).0);
    assert_eq!(s.engine.stats().loads, 1, "models load once");
}

#[tokio::test]
async fn n_images_share_each_pass_and_match_the_same_seeds_one_by_one() {
    let s = setup(TextEncoders::FluxRepo);
    let steps_run = || s.engine.stats().steps;
    let singles: Vec<Image> = {
        let mut images = Vec::new();
        for seed in 30..33 {
            images.push(
                done(&run(&s.engine, small("a lighthouse", seed)).await)
                    .0
                    .clone(),
            );
        }
        images
    };
    let before = steps_run();
    let events = run(&s.engine, small("a lighthouse", 30).images(3)).await;
    // Plenty of memory for three tiny images: one batch, two passes.
    assert_eq!(steps_run() - before, 2, "one pass per step for the batch");
    let batched: Vec<(&Image, u64)> = events
        .iter()
        .filter_map(|e| match e {
            GenerateEvent::Done { image, seed, .. } => Some((image, *seed)),
            _ => None,
        })
        .collect();
    assert_eq!(
        batched.iter().map(|(_, seed)| *seed).collect::<Vec<_>>(),
        [30, 31, 32]
    );
    for ((image, seed), single) in batched.iter().zip(&singles) {
        // The same computation in one larger product: at most rounding apart.
        let worst = image
            .rgb
            .iter()
            .zip(&single.rgb)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        assert!(worst <= 2, "seed {seed}: off by {worst} levels");
    }
    assert_ne!(batched[0].0, batched[1].0, "each image its own noise");
}

#[tokio::test]
async fn the_one_shot_calls_give_what_the_stream_gives() {
    let s = setup(TextEncoders::FluxRepo);
    let streamed = run(&s.engine, small("a red fox", 5).images(2)).await;
    let images: Vec<(&Image, u64)> = streamed
        .iter()
        .filter_map(|e| match e {
            GenerateEvent::Done { image, seed, .. } => Some((image, *seed)),
            _ => None,
        })
        .collect();
    assert_eq!(images.len(), 2, "{streamed:?}");

    let made = s
        .engine
        .generate_images(small("a red fox", 5).images(2))
        .await
        .unwrap();
    assert_eq!(made.images.len(), 2);
    for (one_shot, (image, seed)) in made.images.iter().zip(&images) {
        assert_eq!(one_shot.seed, *seed);
        assert_eq!(&one_shot.image, *image);
        assert!(one_shot.prompt_tokens > 0 && one_shot.timings.total > Duration::ZERO);
    }

    // One image, whatever `n` says: the first seed's, as the stream makes
    // it alone (a batch's images differ from it by rounding).
    let one = s
        .engine
        .generate_image(small("a red fox", 5).images(3))
        .await
        .unwrap();
    let alone = run(&s.engine, small("a red fox", 5)).await;
    assert_eq!((&one.image, one.seed), done(&alone));

    let err = s
        .engine
        .generate_image(small("a red fox", 5).size(250, 256))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("width"), "{err}");
}

#[tokio::test]
async fn steps_arrive_one_by_one_before_done() {
    let s = setup(TextEncoders::FluxRepo);
    let events = run(&s.engine, small("a lighthouse at night", 1).steps(4)).await;
    let steps: Vec<(u32, u32, u32, u32)> = events
        .iter()
        .filter_map(|e| match e {
            GenerateEvent::Step {
                index,
                total,
                preview,
            } => Some((*index, *total, preview.width, preview.height)),
            _ => None,
        })
        .collect();
    assert_eq!(steps, (1..=4).map(|i| (i, 4, 32, 40)).collect::<Vec<_>>());
    let last_step = events
        .iter()
        .rposition(|e| matches!(e, GenerateEvent::Step { .. }))
        .unwrap();
    assert_eq!(last_step, events.len() - 2, "Done follows the last step");
    done(&events);
}

#[tokio::test]
async fn dropping_the_stream_cancels_between_steps() {
    let s = setup(TextEncoders::FluxRepo);
    let mut stream = Box::pin(s.engine.generate(small("a slow one", 3).steps(50)));
    while let Some(event) = stream.next().await {
        if matches!(event, GenerateEvent::Step { .. }) {
            break;
        }
    }
    drop(stream);
    // Jobs run in order: once this one is done, the cancelled one has stopped.
    let after = run(&s.engine, small("next", 4)).await;
    done(&after);
    let steps = s.engine.stats().steps;
    assert!(steps < 50, "the cancelled request ran {} steps", steps - 2);
}

#[tokio::test]
async fn bad_sizes_and_step_counts_are_clear_errors() {
    let s = setup(TextEncoders::FluxRepo);
    let msg = failure(&run(&s.engine, GenerateRequest::new("x").size(1000, 512)).await);
    assert!(msg.contains("width") && msg.contains("1008"), "{msg}");
    let msg = failure(&run(&s.engine, GenerateRequest::new("x").size(512, 512).steps(0)).await);
    assert!(msg.contains("steps"), "{msg}");
    assert_eq!(
        s.hub.stats.requests(),
        0,
        "an invalid request fetched files"
    );
}

#[tokio::test]
async fn a_missing_weight_file_is_named() {
    let dir = tiny_copy();
    std::fs::remove_file(
        dir.path()
            .join("black-forest-labs/FLUX.1-schnell/ae.safetensors"),
    )
    .unwrap();
    let s = setup_with(dir.path(), EngineOptions::default(), None);
    let msg = failure(&run(&s.engine, small("x", 1)).await);
    assert!(
        msg.contains("ae.safetensors") && msg.contains("404"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_corrupt_weight_file_is_named() {
    let dir = tiny_copy();
    let ae = dir
        .path()
        .join("black-forest-labs/FLUX.1-schnell/ae.safetensors");
    std::fs::write(&ae, b"this is not a safetensors file").unwrap();
    let s = setup_with(dir.path(), EngineOptions::default(), None);
    let msg = failure(&run(&s.engine, small("x", 1)).await);
    assert!(
        msg.contains("ae.safetensors") && msg.contains("safetensors file"),
        "{msg}"
    );
    // It says what to run to check and repair the cached file.
    assert!(
        msg.contains(
            "schnell fetch --verify --repo black-forest-labs/FLUX.1-schnell --revision main \
             --file ae.safetensors"
        ),
        "{msg}"
    );

    // Weights whose tensors do not fit the config are named too.
    let dir = tiny_copy();
    let flux = dir
        .path()
        .join("black-forest-labs/FLUX.1-schnell/flux1-schnell.safetensors");
    std::fs::copy(
        dir.path()
            .join("black-forest-labs/FLUX.1-schnell/text_encoder/model.safetensors"),
        &flux,
    )
    .unwrap();
    let s = setup_with(dir.path(), EngineOptions::default(), None);
    let msg = failure(&run(&s.engine, small("x", 1)).await);
    assert!(msg.contains("flux1-schnell.safetensors"), "{msg}");
}

#[tokio::test]
async fn a_gated_repo_without_a_token_asks_for_the_licence() {
    let s = setup(TextEncoders::FluxRepo);
    *s.hub.faults.require_token.lock().unwrap() = Some("hf_accepted".into());
    let msg = failure(&run(&s.engine, small("x", 1)).await);
    assert!(
        msg.contains("licence") && msg.contains("HF_TOKEN") && msg.contains("FLUX.1-schnell"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_long_prompt_is_truncated_with_a_warning() {
    let s = setup(TextEncoders::FluxRepo);
    let prompt = "a quiet forest with a river at night ".repeat(20);
    let events = run(&s.engine, small(&prompt, 5)).await;
    let warnings: Vec<&String> = events
        .iter()
        .filter_map(|e| match e {
            GenerateEvent::Warning { message } => Some(message),
            _ => None,
        })
        .collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("CLIP") && w.contains("77")),
        "{warnings:?}"
    );
    done(&events);
}

#[tokio::test]
async fn two_first_requests_at_once_load_the_models_once() {
    let s = setup(TextEncoders::Original);
    let (a, b) = tokio::join!(
        run(&s.engine, small("one", 1)),
        run(&s.engine, small("two", 2))
    );
    done(&a);
    done(&b);
    assert_eq!(s.engine.stats().loads, 1);
}

#[tokio::test]
async fn low_memory_mode_makes_the_same_image() {
    let resident = setup(TextEncoders::FluxRepo);
    let frugal = setup_with(
        tiny_models(),
        EngineOptions::default().low_memory(true),
        None,
    );
    let a = run(&resident.engine, small("a castle", 9)).await;
    let b = run(&frugal.engine, small("a castle", 9)).await;
    assert_eq!(done(&a).0, done(&b).0);
    // After the first request (which also checked the files at start-up),
    // every request loads each part it needs in turn and nothing stays; a
    // prompt seen before needs no encoder (its encodings are cached).
    let loaded = |events: &[GenerateEvent]| -> Vec<Component> {
        events
            .iter()
            .filter_map(|e| match e {
                GenerateEvent::Loading { component } => Some(*component),
                _ => None,
            })
            .collect()
    };
    let again = run(&frugal.engine, small("a castle", 9)).await;
    assert_eq!(done(&again).0, done(&a).0);
    assert_eq!(loaded(&again), [Component::Transformer, Component::Vae]);
    let other = run(&frugal.engine, small("a moat", 9)).await;
    assert_eq!(
        loaded(&other),
        [
            Component::T5,
            Component::Clip,
            Component::Transformer,
            Component::Vae
        ]
    );

    // An edit: the same image both ways. The encoder loads for each edit
    // and is freed after it, in either mode.
    let edit = || {
        let init = InitImage::new(done(&a).0.clone(), None, 0.6).unwrap();
        small("a castle", 9).edit(init)
    };
    let first = run(&resident.engine, edit()).await;
    assert_eq!(loaded(&first), [Component::VaeEncoder]);
    let second = run(&resident.engine, edit()).await;
    assert_eq!(loaded(&second), [Component::VaeEncoder]);
    let frugal_edit = run(&frugal.engine, edit()).await;
    assert_eq!(
        loaded(&frugal_edit),
        [
            Component::VaeEncoder,
            Component::Transformer,
            Component::Vae
        ]
    );
    assert_eq!(done(&first).0, done(&frugal_edit).0);
    assert_eq!(done(&first).0, done(&second).0);
    assert_ne!(done(&first).0, done(&a).0, "an edit changes the image");
    assert_eq!(
        (done(&first).0.width, done(&first).0.height),
        (256, 320),
        "the image's own size"
    );
}

#[tokio::test]
async fn a_repeated_prompt_is_encoded_once() {
    let s = setup(TextEncoders::FluxRepo);
    let text_encoding = |events: &[GenerateEvent]| match events.last() {
        Some(GenerateEvent::Done { timings, .. }) => timings.text_encoding,
        other => panic!("no image: {other:?}"),
    };
    let first = run(&s.engine, small("a red fox", 1)).await;
    let between = run(&s.engine, small("a blue jay", 1)).await;
    let repeated = run(&s.engine, small("a red fox", 1)).await;
    // The cached encodings are that prompt's: the same image, bit for bit.
    assert_eq!(done(&repeated).0, done(&first).0);
    assert_ne!(done(&between).0, done(&first).0);
    assert!(text_encoding(&first) > Duration::ZERO);
    assert_eq!(
        text_encoding(&repeated),
        Duration::ZERO,
        "T5 and CLIP ran again"
    );
    // A new seed for the same prompt (a seed sweep) needs no encoding either.
    let sweep = run(&s.engine, small("a red fox", 2)).await;
    assert_eq!(text_encoding(&sweep), Duration::ZERO);
    assert_ne!(done(&sweep).0, done(&first).0);
}

#[tokio::test]
async fn a_failed_load_reaches_every_waiting_request() {
    let dir = tiny_copy();
    let config = dir
        .path()
        .join("black-forest-labs/FLUX.1-schnell/transformer/config.json");
    std::fs::write(
        &config,
        br#"{"attention_head_dim": 16, "num_attention_heads": 2}"#,
    )
    .unwrap();
    let s = setup_with(dir.path(), EngineOptions::default(), None);
    let (a, b) = tokio::join!(
        run(&s.engine, small("one", 1)),
        run(&s.engine, small("two", 2))
    );
    for events in [a, b] {
        let msg = failure(&events);
        assert!(
            msg.contains("transformer/config.json") && msg.contains("num_layers"),
            "{msg}"
        );
    }
    let status = s.engine.status();
    assert_eq!(status.phase, schnell::flux::Phase::Failed);
}
