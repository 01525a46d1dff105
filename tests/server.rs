//! `schnell serve` over real HTTP on 127.0.0.1, with tiny models behind the mirror.
#![cfg(not(target_arch = "wasm32"))]

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::StreamExt;
use reqwest::StatusCode;
use schnell::server::{ServeOptions, ServerConfig};
use serde_json::{json, Value};
use support::server::{
    parse_sse, png_pixels, png_size, ready, request, rgba_png, start, start_with, HF_TOKEN,
};
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
    let typed: schnell::protocol::ImagesResponse = serde_json::from_value(body.clone()).unwrap();
    assert_eq!(typed.data[0].seed, 7);

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
    assert_eq!(body["usage"]["output_tokens"], 2 * 16 * 16);

    // Ten, OpenAI's most; WebP, lossy below 100; fields without effect echoed
    // or accepted.
    let body: Value = s
        .post(json!({
            "prompt": "x", "size": "256x256", "steps": 1, "n": 10, "output_format": "webp",
            "output_compression": 40, "quality": "high", "background": "transparent",
            "moderation": "low", "style": "vivid", "user": "u-1"
        }))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["data"].as_array().unwrap().len(), 10, "{body}");
    assert_eq!(
        (&body["quality"], &body["background"]),
        (&json!("high"), &json!("opaque"))
    );
    let webp = base64::engine::general_purpose::STANDARD
        .decode(body["data"][0]["b64_json"].as_str().unwrap())
        .unwrap();
    assert_eq!((&webp[..4], &webp[8..12]), (&b"RIFF"[..], &b"WEBP"[..]));
    assert_eq!(body["output_format"], "webp");

    // By URL, as JPEG.
    let body: Value = s
        .post(json!({ "prompt": "x", "size": "256x256", "steps": 1, "response_format": "url", "output_format": "jpeg" }))
        .await
        .json()
        .await
        .unwrap();
    // Relative without --public-url: never built from the client's Host.
    let url = body["data"][0]["url"].as_str().unwrap();
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

/// The mean absolute difference of two images' pixels in columns `cols`.
fn mean_diff(a: &image::RgbImage, b: &image::RgbImage, cols: std::ops::Range<u32>) -> f64 {
    let (mut sum, mut n) = (0f64, 0f64);
    for y in 0..a.height() {
        for x in cols.clone() {
            for c in 0..3 {
                sum += (f64::from(a.get_pixel(x, y)[c]) - f64::from(b.get_pixel(x, y)[c])).abs();
                n += 1.0;
            }
        }
    }
    sum / n
}

#[tokio::test]
async fn edits_start_from_the_image_to_their_strength_and_keep_what_the_mask_keeps() {
    let s = ready(ServerConfig::default()).await;
    let input = rgba_png(320, 256, |x, y| [(x % 256) as u8, (y % 256) as u8, 90, 255]);
    let edit = |seed: &'static str, strength: &'static str, mask: Option<Vec<u8>>| {
        let (s, input) = (&s, &input);
        async move {
            let mut files: Vec<(&str, &[u8])> = vec![("image", input)];
            if let Some(mask) = &mask {
                files.push(("mask", mask));
            }
            let text = [
                ("prompt", "a red fox in the snow"),
                ("seed", seed),
                ("steps", "2"),
                ("strength", strength),
            ];
            let r = s.edit(&text, &files).await;
            let status = r.status();
            let body: Value = r.json().await.unwrap();
            assert_eq!(status, StatusCode::OK, "{body}");
            body
        }
    };
    // Without a size, the image's own; the answer in OpenAI's shape, with
    // the encoder's time among the timings.
    let body = edit("5", "1", None).await;
    assert_eq!(body["size"], "320x256");
    assert_eq!(body["data"][0]["seed"], 5);
    assert_eq!(body["usage"]["output_tokens"], (320 / 16) * (256 / 16));
    assert!(
        body["data"][0]["timings"]["vae_encode_ms"]
            .as_u64()
            .unwrap()
            > 0,
        "{body}"
    );
    let image = |body: &Value| png_pixels(body["data"][0]["b64_json"].as_str().unwrap());
    let strong = (image(&body), image(&edit("6", "1", None).await));
    assert_eq!(strong.0.dimensions(), (320, 256));
    let again = image(&edit("5", "1", None).await);
    assert_eq!(strong.0, again, "an edit is reproducible from its seed");
    // Strength is how far the noise goes: barely noised, the seed hardly
    // matters; fully noised, it decides everything.
    let weak = (
        image(&edit("5", "0.01", None).await),
        image(&edit("6", "0.01", None).await),
    );
    let (weak_spread, strong_spread) = (
        mean_diff(&weak.0, &weak.1, 0..320),
        mean_diff(&strong.0, &strong.1, 0..320),
    );
    assert!(
        weak_spread < 0.3 * strong_spread,
        "strength 0.01 varies {weak_spread:.2} levels by seed, strength 1 {strong_spread:.2}"
    );
    // A mask transparent on the left repaints the left only: the right
    // (beyond the VAE's reach across the border) is the same whatever the seed.
    let mask = rgba_png(320, 256, |x, _| [0, 0, 0, if x < 160 { 0 } else { 255 }]);
    let masked = (
        image(&edit("5", "1", Some(mask.clone())).await),
        image(&edit("6", "1", Some(mask)).await),
    );
    let repainted = mean_diff(&masked.0, &masked.1, 0..128);
    let kept = mean_diff(&masked.0, &masked.1, 224..320);
    assert!(
        kept < 0.2 * repainted,
        "the kept side varies {kept:.2} levels by seed, the repainted side {repainted:.2}"
    );

    // A stream uses the edit's event names.
    let r = s
        .edit(
            &[
                ("prompt", "a fox"),
                ("stream", "true"),
                ("partial_images", "1"),
                ("steps", "2"),
                ("size", "256x256"),
            ],
            &[("image[]", &input)],
        )
        .await;
    let events = parse_sse(&r.text().await.unwrap());
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["image_edit.partial_image", "image_edit.completed"]);
    assert_eq!(
        png_size(events[1].1["b64_json"].as_str().unwrap()),
        (256, 256)
    );
}

#[tokio::test]
async fn bad_edits_get_400_naming_the_part_at_fault() {
    let s = ready(ServerConfig::default()).await;
    let input = rgba_png(256, 256, |x, y| [x as u8, y as u8, 0, 255]);
    let small_mask = rgba_png(128, 128, |_, _| [0, 0, 0, 0]);
    // Beyond the decoder's side limit: refused before any pixel is decoded.
    let too_wide = rgba_png(schnell::flux::MAX_INPUT_SIDE + 1, 1, |_, _| [0; 4]);
    let refused = |r: reqwest::Response| async move {
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let body: Value = r.json().await.unwrap();
        (
            body["error"]["param"].as_str().unwrap_or("").to_string(),
            body["error"]["message"].as_str().unwrap().to_string(),
        )
    };
    let prompt = ("prompt", "a fox");
    for (text, files, param, says) in [
        (vec![prompt], vec![], "image", "required"),
        (
            vec![prompt],
            vec![("image", &b"GIF89a"[..])],
            "image",
            "png, jpeg or webp",
        ),
        (
            vec![prompt],
            vec![("image", &input[..20])],
            "image",
            "cannot be decoded",
        ),
        (
            vec![prompt],
            vec![("image", &input[..]), ("image", &input[..])],
            "image",
            "sent 2",
        ),
        (
            vec![prompt],
            vec![("image", &input[..]), ("mask", &small_mask[..])],
            "mask",
            "128×128",
        ),
        (
            vec![prompt, ("strength", "0")],
            vec![("image", &input[..])],
            "strength",
            "(0, 1]",
        ),
        (
            vec![prompt, ("n", "two")],
            vec![("image", &input[..])],
            "n",
            "invalid type",
        ),
        (vec![], vec![("image", &input[..])], "prompt", "required"),
        (
            vec![prompt],
            vec![("image", &too_wide[..])],
            "image",
            "larger than 4096×4096",
        ),
    ] {
        let (got, message) = refused(s.edit(&text, &files).await).await;
        assert_eq!(got, param, "{message}");
        assert!(message.contains(says), "{param}: {message}");
    }
    // JSON is not an edit, and strength is not a generation's.
    let r = s
        .http
        .post(format!("{}/v1/images/edits", s.url))
        .json(&json!({ "prompt": "a fox" }))
        .send()
        .await
        .unwrap();
    let (_, message) = refused(r).await;
    assert!(message.contains("multipart/form-data"), "{message}");
    let mut body = request("256x256", 1);
    body["strength"] = json!(0.5);
    let (param, _) = refused(s.post(body).await).await;
    assert_eq!(param, "strength");
    // An upload beyond the limit is refused as it arrives, and frees its place.
    let huge = vec![0u8; schnell::server::MAX_EDIT_BODY + 1];
    let r = s.edit(&[prompt], &[("image", &huge)]).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("50 MiB"),
        "{body}"
    );
    s.queue_drains().await;
}

#[tokio::test]
async fn size_auto_is_1024_square() {
    let s = ready(ServerConfig::default()).await;
    let body: Value = s
        .post(json!({ "prompt": "x", "size": "auto", "steps": 1 }))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["size"], "1024x1024", "{body}");
    assert_eq!(
        png_size(body["data"][0]["b64_json"].as_str().unwrap()),
        (1024, 1024)
    );
}

#[tokio::test]
async fn metrics_count_requests_stages_and_images() {
    let s = ready(ServerConfig::default()).await;
    assert_eq!(s.post(request("256x256", 1)).await.status(), StatusCode::OK);
    // Two images in one batch: one pass a step for both.
    let two = json!({ "prompt": "x", "size": "256x256", "steps": 1, "n": 2 });
    assert_eq!(s.post(two).await.status(), StatusCode::OK);
    let bad = s.post(json!({ "prompt": "x", "n": 99 })).await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let r = s.get("/metrics").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = r.text().await.unwrap();
    let value = |line_start: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(line_start))
            .unwrap_or_else(|| panic!("no {line_start} in\n{text}"))
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(value("schnell_http_requests_total{status=\"400\"}"), 1.0);
    assert!(value("schnell_http_requests_total{status=\"200\"}") >= 1.0);
    assert_eq!(value("schnell_images_total"), 3.0);
    // Two steps of one image and the batch's one, in the step histogram;
    // a decode per image.
    assert_eq!(value("schnell_stage_seconds_count{stage=\"step\"}"), 3.0);
    assert_eq!(
        value("schnell_stage_seconds_count{stage=\"vae_decode\"}"),
        3.0
    );
    assert_eq!(value("schnell_queue_capacity"), 16.0);
    assert!(value("schnell_model_downloaded_bytes") > 0.0);
    assert!(text.trim_end().ends_with("# EOF"), "{text}");

    // Behind the key, when there is one.
    let keyed = ready(ServerConfig {
        api_key: Some("sk-metrics".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(
        keyed.get("/metrics").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let with_key = keyed
        .http
        .get(format!("{}/metrics", keyed.url))
        .bearer_auth("sk-metrics")
        .send()
        .await
        .unwrap();
    assert_eq!(with_key.status(), StatusCode::OK);
}

#[tokio::test]
async fn openapi_json_describes_what_the_server_sends() {
    let s = ready(ServerConfig {
        api_key: Some("sk-doc".into()),
        ..Default::default()
    })
    .await;
    // Public: it is the API's documentation.
    let r = s.get("/openapi.json").await;
    assert_eq!(r.status(), StatusCode::OK);
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.0.3");
    let generations = &doc["paths"]["/v1/images/generations"]["post"];
    assert_eq!(
        generations["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/ImagesRequest"
    );
    let schemas = &doc["components"]["schemas"];
    let keys = |v: &Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    // A real answer has only properties the document gives it, and every
    // one it requires.
    let fits = |value: &Value, schema: &str| {
        let properties = keys(&schemas[schema]["properties"]);
        let sent = keys(value);
        assert!(
            sent.iter().all(|k| properties.contains(k)),
            "{schema}: {sent:?} against {properties:?}"
        );
        for required in schemas[schema]["required"].as_array().unwrap() {
            assert!(
                sent.contains(&required.as_str().unwrap().to_string()),
                "{schema} requires {required}"
            );
        }
    };
    let answer: Value = s
        .http
        .post(format!("{}/v1/images/generations", s.url))
        .bearer_auth("sk-doc")
        .json(&request("256x256", 2))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    fits(&answer, "ImagesResponse");
    fits(&answer["data"][0], "ImageData");
    fits(&answer["usage"], "Usage");
    let readyz: Value = s.get("/readyz").await.json().await.unwrap();
    fits(&readyz, "Readiness");
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
            s.post(json!({ "prompt": "x", "n": 11 })).await,
            Some("n"),
            "1 to 10",
        ),
        (
            s.post(json!({ "prompt": "x", "n": 0 })).await,
            Some("n"),
            "1 to 10",
        ),
        (
            s.post(json!({ "prompt": "x", "n": "two" })).await,
            Some("n"),
            "`n`: invalid type",
        ),
        (
            s.post(json!({ "prompt": "x", "stream": true, "partial_images": 4 }))
                .await,
            Some("partial_images"),
            "0 to 3",
        ),
        (
            s.post(json!({ "prompt": "x", "output_compression": 101 }))
                .await,
            Some("output_compression"),
            "0 to 100",
        ),
        (
            s.post(json!({ "prompt": "x", "output_format": "gif" }))
                .await,
            Some("output_format"),
            "webp",
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

#[tokio::test]
async fn seeds_stay_within_what_javascript_reads_exactly() {
    let s = ready(ServerConfig::default()).await;
    let max = schnell::limits::MAX_SEED;
    // Drawn: a random u64 would be above 2^53 - 1 but once in 2048.
    let body: Value = s
        .post(json!({ "prompt": "x", "size": "256x256", "steps": 1, "n": 3 }))
        .await
        .json()
        .await
        .unwrap();
    for item in body["data"].as_array().unwrap() {
        assert!(item["seed"].as_u64().unwrap() <= max, "{item}");
    }
    // Asked for: refused beyond, naming the field.
    let r = s
        .post(json!({ "prompt": "x", "size": "256x256", "seed": 10921885008857042145u64 }))
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["param"], "seed", "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("2^53"),
        "{body}"
    );
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
    leave_after_the_first_step(r).await;
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
    let status = failed_readyz(&s, Duration::from_secs(30)).await;
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

/// Whether the server has closed `stream`, waiting up to `within`.
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {} // a response: keep reading
            }
        }
    };
    tokio::time::timeout(within, read).await.is_ok()
}

/// Whether the server has closed `stream` already (no waiting).
fn closed_now(stream: &tokio::net::TcpStream) -> bool {
    let mut buf = [0u8; 1];
    match stream.try_read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

/// Writes `bytes` one at a time, 100 ms apart, until the server closes the
/// connection (or 60 s pass).
fn trickle(
    mut stream: tokio::net::TcpStream,
    head: &'static str,
    then: u8,
) -> tokio::task::JoinHandle<()> {
    use tokio::io::AsyncWriteExt;
    tokio::spawn(async move {
        if stream.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        for _ in 0..600 {
            if stream.write_all(&[then]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_its_response_is_cut_off() {
    let s = start_with(
        tiny_models(),
        ServerConfig::default(),
        ServeOptions {
            idle_timeout: Duration::from_millis(500),
            ..Default::default()
        },
        true,
        |_| {},
    )
    .await;
    // A 7.6 MB file, more than the kernel buffers while nobody reads.
    let path = "/hub/black-forest-labs/FLUX.1-schnell/resolve/main/flux1-schnell.safetensors";
    let size = std::fs::metadata(
        tiny_models().join("black-forest-labs/FLUX.1-schnell/flux1-schnell.safetensors"),
    )
    .unwrap()
    .len() as usize;
    let mut stalled = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    {
        use tokio::io::AsyncWriteExt;
        stalled
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
    }
    // Not reading, for several times the timeout (the timeout is what is tested).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let health = s.get("/healthz").await;
    assert_eq!(health.status(), StatusCode::OK);
    // Now reading: what the kernel had buffered, then the end, well short
    // of the whole file.
    let mut got = 0;
    let drained = tokio::time::timeout(Duration::from_secs(20), async {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match stalled.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got += n,
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the stalled connection stayed open");
    assert!(got < size, "the whole file arrived ({got} of {size} bytes)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let s = start_with(
        tiny_models(),
        ServerConfig::default(),
        ServeOptions {
            idle_timeout: Duration::from_secs(1),
            ..Default::default()
        },
        false,
        |_| {},
    )
    .await;
    // Never a byte sent.
    let mut silent = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    // One request, then quiet: keep-alive ends too.
    let mut kept = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut seen = Vec::new();
        while !String::from_utf8_lossy(&seen).contains("\"ok\"") {
            let mut buf = [0u8; 1024];
            let n = kept.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before answering");
            seen.extend_from_slice(&buf[..n]);
        }
        assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"));
    }
    assert!(
        closed_within(&mut silent, Duration::from_secs(20)).await,
        "a silent connection stayed open"
    );
    assert!(
        closed_within(&mut kept, Duration::from_secs(20)).await,
        "an idle keep-alive connection stayed open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_trickling_headers_or_a_body_are_cut_off() {
    let s = start_with(
        tiny_models(),
        ServerConfig {
            body_timeout: Duration::from_secs(1),
            ..Default::default()
        },
        ServeOptions {
            header_timeout: Duration::from_secs(1),
            // Long: what closes the slow ones is not the idle timeout.
            idle_timeout: Duration::from_secs(120),
            ..Default::default()
        },
        false,
        |_| {},
    )
    .await;
    let idle = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let mut slow_head = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let writer = trickle(
        slow_head.try_clone_for_test(),
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ",
        b'a',
    );
    assert!(
        closed_within(&mut slow_head, Duration::from_secs(20)).await,
        "a client trickling its headers kept its connection"
    );
    writer.abort();
    assert!(
        !closed_now(&idle),
        "the idle connection was closed too soon"
    );

    // A body one byte at a time: 408 once the body timeout is over.
    let slow_body = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let (mut read, write) = slow_body.into_split();
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let mut write = write;
        let head = "POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n";
        if write.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        for _ in 0..600 {
            if write.write_all(b" ").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut answer = Vec::new();
    let got = tokio::time::timeout(Duration::from_secs(20), async {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 1024];
        while let Ok(n) = read.read(&mut buf).await {
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    writer.abort();
    assert!(
        got.is_ok(),
        "a client trickling its body kept its connection"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 408") && answer.contains("request_timeout"),
        "{answer}"
    );
}

/// For the tests: a second handle on one socket, for a writer task while
/// the test reads.
trait TryCloneForTest {
    fn try_clone_for_test(&self) -> tokio::net::TcpStream;
}

impl TryCloneForTest for tokio::net::TcpStream {
    fn try_clone_for_test(&self) -> tokio::net::TcpStream {
        use std::os::fd::{AsFd, FromRawFd, IntoRawFd};
        let fd = self.as_fd().try_clone_to_owned().unwrap().into_raw_fd();
        // SAFETY: a fresh duplicate descriptor, owned by the new stream only.
        let std = unsafe { std::net::TcpStream::from_raw_fd(fd) };
        std.set_nonblocking(true).unwrap();
        tokio::net::TcpStream::from_std(std).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_idle_connections_make_room() {
    let s = start_with(
        tiny_models(),
        ServerConfig::default(),
        ServeOptions {
            max_connections: 4,
            idle_timeout: Duration::from_secs(120),
            ..Default::default()
        },
        false,
        |_| {},
    )
    .await;
    let mut idle = Vec::new();
    for _ in 0..10 {
        idle.push(tokio::net::TcpStream::connect(s.addr).await.unwrap());
    }
    // Far fewer places than connections, all idle: a new client still gets in.
    let health = tokio::time::timeout(Duration::from_secs(20), s.get("/healthz"))
        .await
        .expect("/healthz got no answer with every connection taken");
    assert_eq!(health.status(), StatusCode::OK);
    // 11 connections, 4 places: the 7 idle the longest were closed.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let closed: Vec<bool> = idle.iter().map(closed_now).collect();
        let count = closed.iter().filter(|c| **c).count();
        if count >= 7 {
            assert!(closed[..7].iter().all(|c| *c), "{closed:?}");
            assert!(!closed[9], "the newest idle connection was closed first");
            break;
        }
        assert!(Instant::now() < deadline, "only {count} closed: {closed:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_on_slow_clients_beyond_the_grace_period() {
    let mut s = start_with(
        tiny_models(),
        ServerConfig::default(),
        ServeOptions {
            shutdown_grace: Duration::from_secs(1),
            ..Default::default()
        },
        false,
        |_| {},
    )
    .await;
    let head = trickle(
        tokio::net::TcpStream::connect(s.addr).await.unwrap(),
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ",
        b'a',
    );
    let body = trickle(
        tokio::net::TcpStream::connect(s.addr).await.unwrap(),
        "POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n",
        b' ',
    );
    // Both were accepted before this one was answered.
    assert_eq!(s.get("/healthz").await.status(), StatusCode::OK);
    let stopped = s.shut_down();
    let done = tokio::time::timeout(Duration::from_secs(15), stopped).await;
    head.abort();
    body.abort();
    done.expect("shutdown waited on slow clients")
        .unwrap()
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(s.addr).await.is_err(),
        "still accepting after shutdown"
    );
}

#[tokio::test]
async fn an_empty_api_key_is_refused_not_ignored() {
    let cache = tempfile::tempdir().unwrap();
    for (key, needle) in [("", "empty"), ("  ", "empty"), (" sk-1", "whitespace")] {
        let client = schnell::hub::HubClientBuilder::new(cache.path())
            .endpoint("http://127.0.0.1:9")
            .build()
            .unwrap();
        let engine = schnell::flux::FluxSchnell::new(client, Default::default());
        let result = schnell::server::router(
            engine,
            &schnell::flux::FLUX_SCHNELL,
            ServerConfig {
                api_key: Some(key.into()),
                hub_cache: cache.path().into(),
                ..Default::default()
            },
        )
        .await;
        let Err(error) = result else {
            panic!("{key:?}: an unusable key was accepted");
        };
        let error = error.to_string();
        assert!(error.contains(needle), "{key:?}: {error}");
    }
}

#[tokio::test]
async fn with_a_key_the_hub_gives_weights_only_to_key_holders() {
    let s = ready(ServerConfig {
        api_key: Some("sk-hub-key".into()),
        ..Default::default()
    })
    .await;
    let status: Value = s.get("/readyz").await.json().await.unwrap();
    let hub_url = |repo: &str, path: &str| format!("{}/hub/{repo}/resolve/main/{path}", s.url);
    // What the page reads: the tokenizers and configs, without the key.
    for which in ["t5", "clip"] {
        let t = &status["tokenizers"][which];
        let url = hub_url(t["repo"].as_str().unwrap(), t["path"].as_str().unwrap());
        let r = s.http.get(&url).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{url}");
    }
    let flux = "black-forest-labs/FLUX.1-schnell";
    let config = s
        .http
        .get(hub_url(flux, "transformer/config.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(config.status(), StatusCode::OK);
    // The weights need it, by GET or HEAD, and nothing says what exists.
    for path in [
        "ae.safetensors",
        "flux1-schnell.safetensors",
        "no-such-file.bin",
    ] {
        for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
            let r = s
                .http
                .request(method.clone(), hub_url(flux, path))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
            let r = s
                .http
                .request(method.clone(), hub_url(flux, path))
                .bearer_auth("sk-wrong")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
        }
    }
    let r = s
        .http
        .get(hub_url(flux, "ae.safetensors"))
        .header("authorization", "bearer sk-hub-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let served = r.bytes().await.unwrap();
    let original = std::fs::read(tiny_models().join(flux).join("ae.safetensors")).unwrap();
    assert_eq!(served, original);

    // The scheme is case-insensitive on /v1 too (RFC 7235).
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let r = s
            .http
            .get(format!("{}/v1/models", s.url))
            .header("authorization", format!("{scheme} sk-hub-key"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{scheme}");
    }
}

#[tokio::test]
async fn image_urls_use_the_public_url_when_set() {
    let s = ready(ServerConfig {
        public_url: Some("https://images.example.com/schnell/".into()),
        ..Default::default()
    })
    .await;
    let r = s
        .http
        .post(format!("{}/v1/images/generations", s.url))
        .header("host", "evil.example")
        .json(&json!({ "prompt": "x", "size": "256x256", "steps": 1, "response_format": "url" }))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    let url = body["data"][0]["url"].as_str().unwrap();
    let path = url
        .strip_prefix("https://images.example.com/schnell/v1/images/")
        .unwrap_or_else(|| panic!("{url}"));
    assert_eq!(
        s.get(&format!("/v1/images/{path}")).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_web_page_stays_inside_dist_and_unknown_api_paths_are_json_404s() {
    let outer = tempfile::tempdir().unwrap();
    let dist = outer.path().join("dist");
    std::fs::create_dir_all(dist.join("assets")).unwrap();
    std::fs::write(dist.join("index.html"), "<html>the page</html>").unwrap();
    std::fs::write(dist.join("assets/app.js"), "let app;").unwrap();
    std::fs::write(outer.path().join("secret.txt"), "top secret").unwrap();
    std::os::unix::fs::symlink(outer.path().join("secret.txt"), dist.join("passwd")).unwrap();
    std::os::unix::fs::symlink(outer.path(), dist.join("up")).unwrap();
    std::os::unix::fs::symlink(dist.join("assets/app.js"), dist.join("alias.js")).unwrap();
    let s = ready(ServerConfig {
        dist: dist.clone(),
        ..Default::default()
    })
    .await;

    let server = &s;
    let text = |path: &'static str| async move {
        let r = server.get(path).await;
        (r.status(), r.text().await.unwrap())
    };
    assert_eq!(text("/").await.1, "<html>the page</html>");
    assert_eq!(text("/assets/app.js").await.1, "let app;");
    // A link that stays inside is followed.
    assert_eq!(text("/alias.js").await.1, "let app;");
    // The page routes itself: unknown paths get it.
    assert_eq!(text("/history/3").await.1, "<html>the page</html>");
    for path in [
        "/passwd",
        "/up/secret.txt",
        "/up/dist/../secret.txt",
        "/%2e%2e/secret.txt",
    ] {
        let (status, body) = text(path).await;
        assert!(!body.contains("top secret"), "{path}: {status} {body}");
    }

    // Unknown API paths answer in the API's shape, not with the page.
    for path in ["/v1/nope", "/v1", "/v1/images/generations/extra"] {
        let r = s.get(path).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_found", "{path}");
    }
    let r = s.get("/v1/images/generations").await;
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");
}

#[tokio::test]
async fn readyz_and_errors_never_show_local_paths() {
    let models = support::tiny_copy();
    std::fs::write(
        models
            .path()
            .join("black-forest-labs/FLUX.1-schnell/ae.safetensors"),
        b"this is not a safetensors file",
    )
    .unwrap();
    let s = start_with(
        models.path(),
        ServerConfig::default(),
        ServeOptions::default(),
        false,
        |_| {},
    )
    .await;
    let status = failed_readyz(&s, Duration::from_secs(60)).await;
    let error = status["error"].as_str().unwrap().to_string();
    assert!(error.contains("ae.safetensors"), "{error}");
    let body = s.post(request("256x256", 1)).await.text().await.unwrap();
    assert!(body.contains("ae.safetensors"), "{body}");
    let cache = s.cache.to_str().unwrap();
    let temp = std::env::temp_dir();
    for text in [error.as_str(), body.as_str()] {
        assert!(
            !text.contains(cache) && !text.contains(temp.to_str().unwrap()),
            "a local path: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_dir_is_shared_by_replicas_capped_and_never_left() {
    let images = tempfile::tempdir().unwrap();
    let config = || ServerConfig {
        image_dir: Some(images.path().to_path_buf()),
        // Room for one image only: each new one evicts the one before.
        image_dir_max: 1,
        ..Default::default()
    };
    let (a, b) = tokio::join!(ready(config()), ready(config()));
    async fn make(s: &support::server::TestServer) -> String {
        let body: Value = s
            .post(json!({ "prompt": "x", "size": "256x256", "steps": 1, "response_format": "url" }))
            .await
            .json()
            .await
            .unwrap();
        body["data"][0]["url"].as_str().unwrap().to_string()
    }
    let first = make(&a).await;
    // Made on one replica, served by the other.
    let from_a = a.get(&first).await;
    assert_eq!(from_a.status(), StatusCode::OK);
    let from_b = b.get(&first).await;
    assert_eq!(from_b.status(), StatusCode::OK);
    assert_eq!(from_b.headers()["content-type"], "image/png");
    assert_eq!(from_a.bytes().await.unwrap(), from_b.bytes().await.unwrap());

    // Over the cap, the oldest goes, for every replica.
    let second = make(&b).await;
    for s in [&a, &b] {
        assert_eq!(s.get(&first).await.status(), StatusCode::NOT_FOUND);
        assert_eq!(s.get(&second).await.status(), StatusCode::OK);
    }
    let names: Vec<String> = std::fs::read_dir(images.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, [second.rsplit('/').next().unwrap()], "{names:?}");

    // No name from a request reaches outside the folder.
    std::fs::write(images.path().parent().unwrap().join("outside.png"), b"no").ok();
    let id = second.rsplit('/').next().unwrap().trim_end_matches(".png");
    for path in [
        "/v1/images/..%2Foutside.png".to_string(),
        "/v1/images/..%2F..%2Fetc%2Fpasswd".to_string(),
        format!("/v1/images/{}.png", id.to_uppercase()),
        format!("/v1/images/{id}.gif"),
        format!("/v1/images/{id}"),
    ] {
        let r = a.get(&path).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
    }
}

/// Reads a streamed answer up to its first step's event, then hangs up.
async fn leave_after_the_first_step(r: reqwest::Response) {
    let mut chunks = r.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("partial_image") {
        seen.push_str(std::str::from_utf8(&chunks.next().await.unwrap().unwrap()).unwrap());
    }
}

/// `/readyz` once it reports the start failed (polled until `within`).
async fn failed_readyz(s: &support::server::TestServer, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let status: Value = s.get("/readyz").await.json().await.unwrap();
        if status["phase"] == "failed" {
            return status;
        }
        assert!(Instant::now() < deadline, "never failed: {status}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
