//! Streamed generations: an event per step, partial images spread over the steps.

use reqwest::StatusCode;
use schnell::server::ServerConfig;
use serde_json::json;

use crate::support::server::{parse_sse, png_size, ready, request};

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
    assert_eq!(events[3].1["usage"]["output_tokens"], 16 * 16);
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
        let events = parse_sse(&streamed(partials).await.text().await.unwrap());
        let (done, partial) = events.split_last().unwrap();
        assert_eq!(done.0, "image_generation.completed");
        let seen: Vec<u64> = partial
            .iter()
            .enumerate()
            .map(|(i, (name, data))| {
                assert_eq!(name, "image_generation.partial_image");
                assert_eq!(data["partial_image_index"], i, "{data}");
                data["step"].as_u64().unwrap()
            })
            .collect();
        assert_eq!(seen, steps, "partial_images {partials:?}");
    }
}
