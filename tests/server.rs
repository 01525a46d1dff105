//! `schnell serve` over real HTTP on 127.0.0.1, with tiny models behind the mirror.
#![cfg(not(target_arch = "wasm32"))]

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::StatusCode;
use schnell::server::ServerConfig;
use serde_json::{json, Value};
use support::server::{parse_sse, png_size, ready, request, start, HF_TOKEN};
use support::tiny_models;

#[tokio::test]
async fn generations_answer_in_openai_shape() {
    let s = ready(ServerConfig::default()).await;
    let r = s.post(request("256x320", 7)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert!(body["created"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    assert_eq!(body["data"][0]["seed"], 7);
    assert_eq!(
        png_size(body["data"][0]["b64_json"].as_str().unwrap()),
        (256, 320)
    );

    // n images with consecutive seeds.
    let body: Value = s
        .post(json!({ "prompt": "x", "size": "256x256", "steps": 1, "n": 2, "seed": 10 }))
        .await
        .json()
        .await
        .unwrap();
    let seeds: Vec<u64> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["seed"].as_u64().unwrap())
        .collect();
    assert_eq!(seeds, [10, 11]);

    // By URL, as JPEG.
    let body: Value = s
        .post(json!({ "prompt": "x", "size": "256x256", "steps": 1, "response_format": "url", "output_format": "jpeg" }))
        .await
        .json()
        .await
        .unwrap();
    let url = body["data"][0]["url"].as_str().unwrap();
    assert!(url.starts_with(&s.url) && url.ends_with(".jpeg"), "{url}");
    let image = s.http.get(url).send().await.unwrap();
    assert_eq!(image.headers()["content-type"], "image/jpeg");
    let bytes = image.bytes().await.unwrap();
    assert_eq!(&bytes[..3], &[0xff, 0xd8, 0xff], "not a JPEG");
    assert_eq!(
        s.get("/v1/images/00000000000000000000000000000000.png")
            .await
            .status(),
        StatusCode::NOT_FOUND
    );

    let models: Value = s.get("/v1/models").await.json().await.unwrap();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "flux-schnell");
}

#[tokio::test]
async fn a_streamed_generation_sends_each_step_then_the_image() {
    let s = ready(ServerConfig::default()).await;
    let mut body = request("256x256", 3);
    body["stream"] = json!(true);
    body["steps"] = json!(3);
    let r = s.post(body).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let events = parse_sse(&r.text().await.unwrap());
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "image_generation.partial_image",
            "image_generation.partial_image",
            "image_generation.partial_image",
            "image_generation.completed"
        ]
    );
    for (i, (_, data)) in events[..3].iter().enumerate() {
        assert_eq!(data["partial_image_index"], i);
        assert_eq!(data["step"], i + 1);
        assert_eq!(data["total_steps"], 3);
        assert_eq!(png_size(data["b64_json"].as_str().unwrap()), (32, 32));
    }
    let done = &events[3].1;
    assert_eq!(done["seed"], 3);
    assert_eq!(png_size(done["b64_json"].as_str().unwrap()), (256, 256));
}

#[tokio::test]
async fn bad_requests_get_400_with_a_useful_message() {
    let s = ready(ServerConfig::default()).await;
    let send_raw = |body: &'static str| {
        s.http
            .post(format!("{}/v1/images/generations", s.url))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let cases: Vec<(reqwest::Response, Option<&str>, &str)> = vec![
        (send_raw("{\"prompt\": ").await.unwrap(), None, "JSON"),
        (send_raw("").await.unwrap(), None, "empty"),
        (
            s.post(json!({ "prompt": "x", "size": "1000x1000" })).await,
            Some("size"),
            "1008",
        ),
        (
            s.post(json!({ "prompt": "x", "size": "big" })).await,
            Some("size"),
            "WIDTHxHEIGHT",
        ),
        (
            s.post(json!({ "prompt": "x", "n": 5 })).await,
            Some("n"),
            "1 to 4",
        ),
        (
            s.post(json!({ "prompt": "x", "n": 0 })).await,
            Some("n"),
            "1 to 4",
        ),
        (
            s.post(json!({ "size": "256x256" })).await,
            Some("prompt"),
            "required",
        ),
        (
            s.post(json!({ "prompt": "x", "model": "dall-e-3" })).await,
            Some("model"),
            "flux-schnell",
        ),
        (
            s.post(json!({ "prompt": "x", "response_format": "gif" }))
                .await,
            Some("response_format"),
            "b64_json",
        ),
        (
            s.post(json!({ "prompt": "x", "steps": 99 })).await,
            Some("steps"),
            "50",
        ),
    ];
    for (response, param, needle) in cases {
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body: Value = response.json().await.unwrap();
        let error = &body["error"];
        assert_eq!(error["type"], "invalid_request_error");
        assert_eq!(error["param"].as_str(), param, "{body}");
        assert!(
            error["message"].as_str().unwrap().contains(needle),
            "{needle}: {body}"
        );
    }
    let huge = json!({ "prompt": "x".repeat(100_000) });
    let r = s.post(huge).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = r.json().await.unwrap();
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("64 KiB"));
    assert_eq!(s.steps_run(), 0, "a bad request reached the engine");
}

#[tokio::test]
async fn an_api_key_guards_v1() {
    let s = ready(ServerConfig {
        api_key: Some("sk-test-key".into()),
        ..Default::default()
    })
    .await;
    let with = |key: Option<&str>| {
        let mut r = s.http.get(format!("{}/v1/models", s.url));
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        r.send()
    };
    for key in [
        None,
        Some("sk-wrong"),
        Some("sk-test-ke"),
        Some("sk-test-key-"),
    ] {
        let r = with(key).await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{key:?}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_api_key");
    }
    assert_eq!(
        with(Some("sk-test-key")).await.unwrap().status(),
        StatusCode::OK
    );
    let r = s
        .http
        .post(format!("{}/v1/images/generations", s.url))
        .json(&request("256x256", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(s.get("/healthz").await.status(), StatusCode::OK);
    assert_eq!(s.get("/readyz").await.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_requests_complete_or_get_429() {
    let s = ready(ServerConfig {
        max_queue: 3,
        ..Default::default()
    })
    .await;
    let responses = futures::future::join_all((0..20).map(|i| s.post(request("256x256", i)))).await;
    let (mut ok, mut busy) = (0, 0);
    for r in responses {
        match r.status() {
            StatusCode::OK => {
                let body: Value = r.json().await.unwrap();
                assert_eq!(
                    png_size(body["data"][0]["b64_json"].as_str().unwrap()),
                    (256, 256)
                );
                ok += 1;
            }
            StatusCode::TOO_MANY_REQUESTS => {
                assert!(r.headers().contains_key("retry-after"));
                let body: Value = r.json().await.unwrap();
                assert_eq!(body["error"]["code"], "queue_full");
                busy += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(ok + busy, 20);
    assert!(ok >= 3, "only {ok} completed");
    assert!(busy > 0, "a queue of 3 took 20 requests at once");
    assert_eq!(s.get("/healthz").await.status(), StatusCode::OK);
    s.queue_drains().await;
    assert_eq!(
        s.post(request("256x256", 99)).await.status(),
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnecting_cancels_the_job_and_frees_the_queue() {
    let s = ready(ServerConfig {
        max_queue: 1,
        ..Default::default()
    })
    .await;
    // Streaming: leave after the first step.
    let mut body = request("256x256", 1);
    body["stream"] = json!(true);
    body["steps"] = json!(50);
    let r = s.post(body).await;
    let mut chunks = r.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("partial_image") {
        seen.push_str(std::str::from_utf8(&chunks.next().await.unwrap().unwrap()).unwrap());
    }
    drop(chunks);
    s.queue_drains().await;
    let before = s.steps_run();
    assert_eq!(s.post(request("256x256", 2)).await.status(), StatusCode::OK);
    assert!(before < 50, "the abandoned stream ran all {before} steps");

    // Not streaming: the client gives up while the image is being made.
    let start_steps = s.steps_run();
    let post = s.post(json!({ "prompt": "x", "size": "256x256", "steps": 50, "seed": 3 }));
    let waiter = async {
        while s.steps_run() == start_steps {
            tokio::task::yield_now().await;
        }
    };
    tokio::select! {
        _ = post => panic!("a 50-step request finished before its first step was counted"),
        _ = waiter => {}
    }
    s.queue_drains().await;
    let ran = s.steps_run() - start_steps;
    assert_eq!(s.post(request("256x256", 4)).await.status(), StatusCode::OK);
    assert!(ran < 50, "the abandoned request ran all {ran} steps");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_during_the_vae_decode_stops_it() {
    let s = ready(ServerConfig::default()).await;
    let stats = s.engine.stats();
    let images = stats.images.load(Ordering::SeqCst);
    // One step, then a decode at 1024² that takes seconds: leave as soon as
    // the step's preview arrives, while the engine decodes.
    let mut body = request("1024x1024", 1);
    body["stream"] = json!(true);
    body["steps"] = json!(1);
    let r = s.post(body).await;
    let mut chunks = r.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("partial_image") {
        seen.push_str(std::str::from_utf8(&chunks.next().await.unwrap().unwrap()).unwrap());
    }
    drop(chunks);
    let deadline = Instant::now() + Duration::from_secs(120);
    while stats.cancelled.load(Ordering::SeqCst) == 0
        && stats.images.load(Ordering::SeqCst) == images
    {
        assert!(
            Instant::now() < deadline,
            "the job neither finished nor stopped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        stats.cancelled.load(Ordering::SeqCst),
        1,
        "the decode ran to the end"
    );
    assert_eq!(stats.images.load(Ordering::SeqCst), images);
}

#[tokio::test]
async fn the_hub_serves_only_this_models_files_and_never_the_token() {
    let s = ready(ServerConfig::default()).await;
    let r = s
        .get("/hub/black-forest-labs/FLUX.1-schnell/resolve/main/transformer/config.json")
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers().contains_key("x-repo-commit"));
    let served = r.bytes().await.unwrap();
    let original = std::fs::read(
        tiny_models().join("black-forest-labs/FLUX.1-schnell/transformer/config.json"),
    )
    .unwrap();
    assert_eq!(served, original);
    let r = s
        .get("/hub/openai/clip-vit-large-patch14/resolve/main/tokenizer.json")
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = s.get("/hub/acme/other/resolve/main/config.json").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(r.headers()["x-error-code"], "RepoNotFound");

    // The page without a build says how to make one.
    let page = s.get("/").await.text().await.unwrap();
    assert!(page.contains("trunk build --release"), "{page}");

    for path in ["/readyz", "/v1/models", "/healthz"] {
        let text = s.get(path).await.text().await.unwrap();
        assert!(!text.contains(HF_TOKEN), "{path} shows the token");
    }
}

#[tokio::test]
async fn a_failed_download_shows_in_readyz_without_the_token() {
    // The mirror wants another token: 403, as the Hub answers for a gated repo.
    let s = start(ServerConfig::default(), false, |hub| {
        *hub.faults.require_token.lock().unwrap() = Some("hf_other".into())
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let status: Value = s.get("/readyz").await.json().await.unwrap();
        if status["phase"] == "failed" {
            break status;
        }
        assert!(Instant::now() < deadline, "never failed: {status}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let error = status["error"].as_str().unwrap();
    assert!(
        error.contains("403") && error.contains("licence"),
        "{error}"
    );
    let body = s.post(request("256x256", 1)).await.text().await.unwrap();
    assert!(body.contains("failed to load"), "{body}");
    assert!(!format!("{status}{body}").contains(HF_TOKEN));
    assert!(s.hub.stats.requests() > 0);
}
