//! The bounded queue: concurrent requests complete or get 429, and a client that leaves frees its place and stops its job.

use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::StatusCode;
use schnell::protocol::{ErrorBody, ImagesResponse};
use schnell::server::ServerConfig;
use serde_json::json;

use crate::support::server::{png_size, ready, request};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_requests_complete_or_get_429() {
    let s = ready(ServerConfig::default().max_queue(3)).await;
    let responses = futures::future::join_all((0..20).map(|i| s.post(request("256x256", i)))).await;
    let (mut ok, mut busy) = (0, 0);
    for r in responses {
        match r.status() {
            StatusCode::OK => {
                let body: ImagesResponse = r.json().await.unwrap();
                assert_eq!(
                    png_size(body.data[0].b64_json.as_deref().unwrap()),
                    (256, 256)
                );
                ok += 1;
            }
            StatusCode::TOO_MANY_REQUESTS => {
                assert!(r.headers().contains_key("retry-after"));
                let body: ErrorBody = r.json().await.unwrap();
                assert_eq!(body.error.code.as_deref(), Some("queue_full"));
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
    let s = ready(ServerConfig::default().max_queue(1)).await;
    // Streaming: leave after the first step.
    let mut body = request("256x256", 1);
    body["stream"] = json!(true);
    body["steps"] = json!(50);
    let r = s.post(body).await;
    leave_after_the_first_step(r).await;
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
    let images = s.engine.stats().images;
    // One step, then a decode at 1024² that takes seconds: leave as soon as
    // the step's preview arrives, while the engine decodes.
    let mut body = request("1024x1024", 1);
    body["stream"] = json!(true);
    body["steps"] = json!(1);
    let r = s.post(body).await;
    leave_after_the_first_step(r).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let stats = loop {
        let stats = s.engine.stats();
        if stats.cancelled > 0 || stats.images > images {
            break stats;
        }
        assert!(
            Instant::now() < deadline,
            "the job neither finished nor stopped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(stats.cancelled, 1, "the decode ran to the end");
    assert_eq!(stats.images, images);
}

/// Reads a streamed answer up to its first step's event, then hangs up.
async fn leave_after_the_first_step(r: reqwest::Response) {
    let mut chunks = r.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("partial_image") {
        seen.push_str(std::str::from_utf8(&chunks.next().await.unwrap().unwrap()).unwrap());
    }
}
