//! `POST /v1/images/generations` answered whole: its shape, sizes and seeds.

use base64::Engine as _;
use reqwest::StatusCode;
use schnell::protocol::{ErrorBody, ImagesResponse, ModelList, OutputFormat};
use schnell::server::ServerConfig;
use serde_json::{json, Value};

use crate::support::server::{png_size, ready, request};

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
    // OpenAI's echoes, its usage, and each image's timings (an extension).
    assert_eq!(
        (
            &body["size"],
            &body["output_format"],
            &body["background"],
            &body["quality"]
        ),
        (
            &json!("256x320"),
            &json!("png"),
            &json!("opaque"),
            &json!("auto")
        )
    );
    let usage = &body["usage"];
    let text_tokens = usage["input_tokens_details"]["text_tokens"]
        .as_u64()
        .unwrap();
    assert!(text_tokens > 1, "{usage}");
    assert_eq!(usage["input_tokens"], text_tokens);
    assert_eq!(usage["output_tokens"], (256 / 16) * (320 / 16));
    assert_eq!(usage["total_tokens"], text_tokens + (256 / 16) * (320 / 16));
    let timings = &body["data"][0]["timings"];
    assert_eq!(
        timings["steps_ms"].as_array().unwrap().len(),
        2,
        "{timings}"
    );
    assert!(timings["total_ms"].as_u64().unwrap() >= timings["vae_decode_ms"].as_u64().unwrap());
    // The typed answer reads it back whole.
    let typed: ImagesResponse = serde_json::from_value(body.clone()).unwrap();
    assert_eq!(typed.data[0].seed, 7);

    // n images with consecutive seeds.
    let body: ImagesResponse = s
        .post(json!({ "prompt": "x", "size": "256x256", "steps": 1, "n": 2, "seed": 10 }))
        .await
        .json()
        .await
        .unwrap();
    let seeds: Vec<u64> = body.data.iter().map(|d| d.seed).collect();
    assert_eq!(seeds, [10, 11]);
    assert_eq!(body.usage.output_tokens, 2 * 16 * 16);

    // Ten, OpenAI's most; WebP, lossy below 100; fields without effect echoed
    // or accepted.
    let body: ImagesResponse = s
        .post(json!({
            "prompt": "x", "size": "256x256", "steps": 1, "n": 10, "output_format": "webp",
            "output_compression": 40, "quality": "high", "background": "transparent",
            "moderation": "low", "style": "vivid", "user": "u-1"
        }))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body.data.len(), 10, "{body:?}");
    assert_eq!(
        (body.quality.as_str(), body.background.as_str()),
        ("high", "opaque")
    );
    let webp = base64::engine::general_purpose::STANDARD
        .decode(body.data[0].b64_json.as_deref().unwrap())
        .unwrap();
    assert_eq!((&webp[..4], &webp[8..12]), (&b"RIFF"[..], &b"WEBP"[..]));
    assert_eq!(body.output_format, OutputFormat::Webp);

    // By URL, as JPEG.
    let body: ImagesResponse = s
        .post(json!({ "prompt": "x", "size": "256x256", "steps": 1, "response_format": "url", "output_format": "jpeg" }))
        .await
        .json()
        .await
        .unwrap();
    // Relative without --public-url: never built from the client's Host.
    let url = body.data[0].url.as_deref().unwrap();
    assert!(
        url.starts_with("/v1/images/") && url.ends_with(".jpeg"),
        "{url}"
    );
    let image = s.get(url).await;
    assert_eq!(image.headers()["content-type"], "image/jpeg");
    let bytes = image.bytes().await.unwrap();
    assert_eq!(&bytes[..3], &[0xff, 0xd8, 0xff], "not a JPEG");
    assert_eq!(
        s.get("/v1/images/00000000000000000000000000000000.png")
            .await
            .status(),
        StatusCode::NOT_FOUND
    );

    let models: ModelList = s.get("/v1/models").await.json().await.unwrap();
    assert_eq!(models.object, "list");
    assert_eq!(models.data[0].id, "flux-schnell");
}

#[tokio::test]
async fn size_auto_is_1024_square() {
    let s = ready(ServerConfig::default()).await;
    let body: ImagesResponse = s
        .post(json!({ "prompt": "x", "size": "auto", "steps": 1 }))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body.size.to_string(), "1024x1024", "{body:?}");
    assert_eq!(
        png_size(body.data[0].b64_json.as_deref().unwrap()),
        (1024, 1024)
    );
}

#[tokio::test]
async fn seeds_stay_within_what_javascript_reads_exactly() {
    let s = ready(ServerConfig::default()).await;
    let max = schnell::limits::MAX_SEED;
    // Drawn: a random u64 would be above 2^53 - 1 but once in 2048.
    let body: ImagesResponse = s
        .post(json!({ "prompt": "x", "size": "256x256", "steps": 1, "n": 3 }))
        .await
        .json()
        .await
        .unwrap();
    for item in &body.data {
        assert!(item.seed <= max, "{item:?}");
    }
    // Asked for: refused beyond, naming the field.
    let r = s
        .post(json!({ "prompt": "x", "size": "256x256", "seed": 10921885008857042145u64 }))
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: ErrorBody = r.json().await.unwrap();
    assert_eq!(body.error.param.as_deref(), Some("seed"), "{body:?}");
    assert!(body.error.message.contains("2^53"), "{body:?}");
}
