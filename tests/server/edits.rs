//! `POST /v1/images/edits`: strength, masks, and the errors that name the part at fault.

use reqwest::StatusCode;
use schnell::protocol::{ErrorBody, ImagesResponse, StreamEvent};
use schnell::server::ServerConfig;
use serde_json::json;

use crate::support::server::{png_pixels, png_size, ready, request, rgba_png, stream_events};

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
            let text = r.text().await.unwrap();
            assert_eq!(status, StatusCode::OK, "{text}");
            serde_json::from_str::<ImagesResponse>(&text).unwrap()
        }
    };
    // Without a size, the image's own; the answer in OpenAI's shape, with
    // the encoder's time among the timings.
    let body = edit("5", "1", None).await;
    assert_eq!(body.size.to_string(), "320x256");
    assert_eq!(body.data[0].seed, 5);
    assert_eq!(body.usage.output_tokens, (320 / 16) * (256 / 16));
    assert!(body.data[0].timings.vae_encode_ms > 0, "{body:?}");
    let image = |body: &ImagesResponse| png_pixels(body.data[0].b64_json.as_deref().unwrap());
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
    let events = stream_events(&r.text().await.unwrap());
    let names: Vec<&str> = events.iter().map(StreamEvent::name).collect();
    assert_eq!(names, ["image_edit.partial_image", "image_edit.completed"]);
    let StreamEvent::EditCompleted(done) = &events[1] else {
        panic!("{:?}", events[1]);
    };
    assert_eq!(png_size(&done.b64_json), (256, 256));
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
        let body: ErrorBody = r.json().await.unwrap();
        (body.error.param.unwrap_or_default(), body.error.message)
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
    // JSON is not an edit (415), and strength is not a generation's.
    let r = s
        .http
        .post(format!("{}/v1/images/edits", s.url))
        .json(&json!({ "prompt": "a fox" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let body: ErrorBody = r.json().await.unwrap();
    assert!(
        body.error.message.contains("multipart/form-data"),
        "{body:?}"
    );
    let mut body = request("256x256", 1);
    body["strength"] = json!(0.5);
    let (param, _) = refused(s.post(body).await).await;
    assert_eq!(param, "strength");
    // An upload beyond the limit is refused as it arrives, and frees its place.
    let huge = vec![0u8; schnell::server::MAX_EDIT_BODY + 1];
    let r = s.edit(&[prompt], &[("image", &huge)]).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: ErrorBody = r.json().await.unwrap();
    assert!(body.error.message.contains("50 MiB"), "{body:?}");
    s.queue_drains().await;
}
