//! Streamed generations: an event per step, partial images spread over the steps, and an error event when a shutdown cuts one.

use std::time::Duration;

use futures::StreamExt;
use reqwest::StatusCode;
use schnell::protocol::StreamEvent;
use schnell::server::{ServeOptions, ServerConfig};
use serde_json::json;

use crate::support::server::{png_size, ready, request, start_with, stream_events};
use crate::support::tiny_models;

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
    let events = stream_events(&r.text().await.unwrap());
    let names: Vec<&str> = events.iter().map(StreamEvent::name).collect();
    assert_eq!(
        names,
        [
            "image_generation.partial_image",
            "image_generation.partial_image",
            "image_generation.partial_image",
            "image_generation.completed"
        ]
    );
    for (i, event) in events[..3].iter().enumerate() {
        let StreamEvent::Partial(partial) = event else {
            panic!("{event:?}");
        };
        assert_eq!(partial.partial_image_index as usize, i);
        assert_eq!(partial.step as usize, i + 1);
        assert_eq!(partial.total_steps, 3);
        assert_eq!(png_size(&partial.b64_json), (32, 32));
    }
    let StreamEvent::Completed(done) = &events[3] else {
        panic!("{:?}", events[3]);
    };
    assert_eq!(done.usage.output_tokens, 16 * 16);
    assert_eq!(done.seed, 3);
    assert_eq!(png_size(&done.b64_json), (256, 256));
}

#[tokio::test]
async fn partial_images_are_spread_over_the_steps() {
    let s = ready(ServerConfig::default()).await;
    let streamed = |partials: Option<u32>| {
        let mut body = request("256x256", 3);
        body["stream"] = json!(true);
        body["steps"] = json!(4);
        if let Some(p) = partials {
            body["partial_images"] = json!(p);
        }
        s.post(body)
    };
    for (partials, steps) in [
        (Some(2), vec![2, 3]),
        (Some(0), vec![]),
        (None, vec![1, 2, 3, 4]),
    ] {
        let events = stream_events(&streamed(partials).await.text().await.unwrap());
        let (done, partial) = events.split_last().unwrap();
        assert!(matches!(done, StreamEvent::Completed(_)), "{done:?}");
        let seen: Vec<u32> = partial
            .iter()
            .enumerate()
            .map(|(i, event)| {
                let StreamEvent::Partial(data) = event else {
                    panic!("{event:?}");
                };
                assert_eq!(data.partial_image_index as usize, i, "{data:?}");
                data.step
            })
            .collect();
        assert_eq!(seen, steps, "partial_images {partials:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_by_the_shutdown_says_so_in_an_error_event() {
    // No grace at all: the stream in flight is over as soon as the server stops.
    let mut s = start_with(
        tiny_models(),
        ServerConfig::default(),
        ServeOptions::default().shutdown_grace(Duration::ZERO),
        true,
        |_| {},
    )
    .await;
    let mut body = request("256x256", 1);
    body["stream"] = json!(true);
    body["steps"] = json!(50);
    let r = s.post(body).await;
    assert_eq!(r.status(), StatusCode::OK);
    let mut chunks = r.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("partial_image") {
        seen.push_str(std::str::from_utf8(&chunks.next().await.unwrap().unwrap()).unwrap());
    }
    let stopped = s.shut_down();
    while let Some(chunk) = chunks.next().await {
        seen.push_str(
            std::str::from_utf8(&chunk.expect("the stream was cut without its last event"))
                .unwrap(),
        );
    }
    let events = stream_events(&seen);
    let Some(StreamEvent::Error { error }) = events.last() else {
        panic!("the stream ended without an error event: {seen}");
    };
    assert_eq!(error.code.as_deref(), Some("shutting_down"), "{error:?}");
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, StreamEvent::Completed(_))),
        "{seen}"
    );
    tokio::time::timeout(Duration::from_secs(20), stopped)
        .await
        .expect("the server did not stop")
        .unwrap()
        .unwrap();
}
