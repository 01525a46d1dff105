//! Streamed generations: an event per step, partial images spread over the steps.

use reqwest::StatusCode;
use schnell::protocol::StreamEvent;
use schnell::server::ServerConfig;
use serde_json::json;

use crate::support::server::{png_size, ready, request, stream_events};

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
