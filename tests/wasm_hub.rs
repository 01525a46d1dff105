//! `huggingface_file` in a real browser: fetch + the Cache API, against the
//! test mirror that `scripts/test.sh` starts (`examples/test_mirror.rs`), whose
//! URL arrives at build time in `SCHNELL_TEST_MIRROR`. The tests that need it
//! are `#[ignore]`d, so a plain `cargo test --target wasm32-unknown-unknown`
//! reports them as not run; `scripts/test.sh` runs them with
//! `--include-ignored`. Run without the URL, they fail saying how to run them.
#![cfg(target_arch = "wasm32")]

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use schnell::hub::{HubClient, HubClientBuilder, HubError, HubEvent, HubFile, NotFoundKind};
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

const MIRROR: &str = match option_env!("SCHNELL_TEST_MIRROR") {
    Some(url) => url,
    None => "",
};

/// Fails the test, saying how to run it, when it was built without the mirror.
fn require_mirror() {
    assert!(
        !MIRROR.is_empty(),
        "no test mirror: start `cargo run --example test_mirror -- DIR` and build the tests with SCHNELL_TEST_MIRROR=<its URL> (scripts/test.sh does both)"
    );
}

async fn get_json(url: &str) -> serde_json::Value {
    let window = web_sys::window().unwrap();
    let response: web_sys::Response = JsFuture::from(window.fetch_with_str(url))
        .await
        .unwrap()
        .unchecked_into();
    let text = JsFuture::from(response.text().unwrap()).await.unwrap();
    serde_json::from_str(&text.as_string().unwrap()).unwrap()
}

/// Requests the mirror has seen for one file.
async fn requests_for(path: &str) -> u64 {
    get_json(&format!("{MIRROR}/__stats")).await["by_file"][path]
        .as_u64()
        .unwrap_or(0)
}

/// Makes the mirror answer 503 to the next `n` requests for `path`.
async fn fail(path: &str, n: usize, retry_after: Option<&str>) {
    let mut url = format!("{MIRROR}/__fail?file={path}&n={n}");
    if let Some(seconds) = retry_after {
        url.push_str(&format!("&retry_after={seconds}"));
    }
    get_json(&url).await;
}

async fn client(cache: &str) -> (HubClient, Rc<RefCell<Vec<HubEvent>>>) {
    let events = Rc::new(RefCell::new(Vec::new()));
    let sink = events.clone();
    let client = HubClientBuilder::new()
        .endpoint(MIRROR)
        .cache_name(cache)
        .on_event(Rc::new(move |e| sink.borrow_mut().push(e)))
        .build()
        .unwrap();
    client.clear_cache().await.unwrap();
    (client, events)
}

#[wasm_bindgen_test]
#[ignore = "needs the test mirror (scripts/test.sh runs it)"]
async fn a_miss_fetches_and_a_hit_makes_no_request() {
    require_mirror();
    let (client, events) = client("test-miss-hit").await;
    let file = HubFile::new("acme/tiny", "config.json");
    let before = requests_for("config.json").await;
    let first = client.file(&file).await.unwrap();
    assert!(!first.from_cache());
    assert_eq!(&first.bytes().await.unwrap()[..], b"{\"hidden_size\": 8}\n");
    assert_eq!(requests_for("config.json").await, before + 1);

    let second = client.file(&file).await.unwrap();
    assert!(second.from_cache());
    assert_eq!(second.bytes().await.unwrap(), first.bytes().await.unwrap());
    assert_eq!(
        requests_for("config.json").await,
        before + 1,
        "a cache hit made a request"
    );
    assert!(events
        .borrow()
        .iter()
        .any(|e| matches!(e, HubEvent::Cached { .. })));

    let urls = client.cached_urls().await.unwrap();
    assert_eq!(urls, vec![file.resolve_url(MIRROR)]);
    assert!(client.clear_cache().await.unwrap());
    assert!(client.cached_urls().await.unwrap().is_empty());
}

#[wasm_bindgen_test]
#[ignore = "needs the test mirror (scripts/test.sh runs it)"]
async fn progress_events_count_every_byte() {
    require_mirror();
    let (client, events) = client("test-progress").await;
    let fetched = client
        .file(&HubFile::new("acme/tiny", "model.safetensors"))
        .await
        .unwrap();
    assert_eq!(fetched.size(), 300_000);
    let events = events.borrow();
    let started = events.iter().find_map(|e| match e {
        HubEvent::Started { size, .. } => Some(*size),
        _ => None,
    });
    assert_eq!(started, Some(300_000));
    let advanced: u64 = events
        .iter()
        .map(|e| match e {
            HubEvent::Advanced { bytes, .. } => *bytes,
            _ => 0,
        })
        .sum();
    assert_eq!(advanced, 300_000);
    assert!(matches!(
        events.last(),
        Some(HubEvent::Finished { size: 300_000, .. })
    ));
}

/// The error for `repo`/`path` is a 404 of this kind, naming both.
async fn assert_not_found(client: &HubClient, repo: &str, path: &str, expected: NotFoundKind) {
    let err = client.file(&HubFile::new(repo, path)).await.unwrap_err();
    assert!(
        matches!(err, HubError::NotFound { kind, .. } if kind == expected),
        "{err}"
    );
    let msg = err.to_string();
    assert!(msg.contains(path) && msg.contains(repo), "{msg}");
}

#[wasm_bindgen_test]
#[ignore = "needs the test mirror (scripts/test.sh runs it)"]
async fn a_404_names_the_repo_and_file() {
    require_mirror();
    let (client, _) = client("test-404").await;
    assert_not_found(&client, "acme/tiny", "missing.json", NotFoundKind::Entry).await;
    assert_not_found(&client, "acme/none", "config.json", NotFoundKind::Repo).await;
}

#[wasm_bindgen_test]
#[ignore = "needs the test mirror (scripts/test.sh runs it)"]
async fn concurrent_calls_for_one_file_make_one_fetch() {
    require_mirror();
    let (client, _) = client("test-dedup").await;
    let file = HubFile::new("acme/tiny", "tokenizer/tokenizer.json");
    let before = requests_for("tokenizer/tokenizer.json").await;
    let (a, b, c) = futures::join!(client.file(&file), client.file(&file), client.file(&file));
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    assert_eq!(a.size(), 40_000);
    assert_eq!(a.bytes().await.unwrap(), b.bytes().await.unwrap());
    assert_eq!(b.bytes().await.unwrap(), c.bytes().await.unwrap());
    assert_eq!(requests_for("tokenizer/tokenizer.json").await, before + 1);
}

#[wasm_bindgen_test]
async fn an_unreachable_endpoint_is_a_network_error() {
    let client = HubClientBuilder::new()
        .endpoint("http://127.0.0.1:9")
        .cache_name("test-offline")
        .retries(1, Duration::from_millis(1), Duration::from_millis(1))
        .build()
        .unwrap();
    let err = client
        .file(&HubFile::new("acme/tiny", "config.json"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, HubError::Transfer { attempts: 2, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("network error"), "{err}");
}

#[wasm_bindgen_test]
#[ignore = "needs the test mirror (scripts/test.sh runs it)"]
async fn token_counts_use_tokenizers_fetched_through_the_hub() {
    require_mirror();
    use schnell::tokens::{TokenCounter, CLIP_LIMIT};
    let (client, _) = client("test-tokens").await;
    let files = client
        .files(&[
            HubFile::new(
                "black-forest-labs/FLUX.1-schnell",
                "tokenizer_2/tokenizer.json",
            ),
            HubFile::new("openai/clip-vit-large-patch14", "tokenizer.json"),
        ])
        .await
        .unwrap();
    let counter = TokenCounter::from_json(
        &files[0].bytes().await.unwrap(),
        &files[1].bytes().await.unwrap(),
    )
    .unwrap();
    let short = counter.count("a red fox").unwrap();
    // T5 appends </s>; CLIP wraps in start and end tokens. These words are whole tokens.
    assert_eq!((short.t5, short.clip), (4, 5));
    assert_eq!((short.t5_dropped, short.clip_dropped), (None, None));

    // 90 words: CLIP keeps its start token and 75 words, so the 76th is the
    // first dropped (as in the native test of the same tokenizers).
    let long = counter.count(&"a red fox ".repeat(30)).unwrap();
    assert_eq!((long.t5, long.clip), (92, 92));
    assert!(long.clip > CLIP_LIMIT);
    let dropped = long.clip_dropped.expect("past CLIP's limit");
    assert!(dropped.starts_with("a red fox"), "{dropped}");
    assert_eq!(dropped.split_whitespace().count(), 90 - 75);
    assert_eq!(long.t5_dropped, None);

    // A second load of the same files comes from the Cache API.
    let again = client
        .file(&HubFile::new(
            "openai/clip-vit-large-patch14",
            "tokenizer.json",
        ))
        .await
        .unwrap();
    assert!(again.from_cache());
}

#[wasm_bindgen_test]
#[ignore = "needs the test mirror (scripts/test.sh runs it)"]
async fn transient_503s_are_retried_honouring_retry_after() {
    require_mirror();
    // The default policy, as the page uses it.
    let (client, events) = client("test-retry").await;
    let path = "retry/flaky.json";
    fail(path, 2, Some("1")).await;
    let before = requests_for(path).await;
    let fetched = client.file(&HubFile::new("acme/tiny", path)).await.unwrap();
    assert_eq!(&fetched.bytes().await.unwrap()[..], b"{\"flaky\": true}\n");
    // The mirror answered 503 twice, then 200: three requests, no more.
    assert_eq!(requests_for(path).await, before + 3);
    let retries: Vec<(u64, String)> = events
        .borrow()
        .iter()
        .filter_map(|e| match e {
            HubEvent::Retrying {
                delay_ms, reason, ..
            } => Some((*delay_ms, reason.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(retries.len(), 2, "{retries:?}");
    for (delay_ms, reason) in &retries {
        assert!(reason.contains("503"), "{reason}");
        assert!(
            *delay_ms >= 1000,
            "Retry-After: 1 not honoured: {delay_ms} ms"
        );
    }
}

#[wasm_bindgen_test]
#[ignore = "needs the test mirror (scripts/test.sh runs it)"]
async fn retries_are_bounded_and_a_404_is_final() {
    require_mirror();
    let client = HubClientBuilder::new()
        .endpoint(MIRROR)
        .cache_name("test-retry-bounded")
        .retries(2, Duration::from_millis(1), Duration::from_millis(5))
        .build()
        .unwrap();
    client.clear_cache().await.unwrap();
    let path = "retry/down.json";
    fail(path, 100, None).await;
    let before = requests_for(path).await;
    let err = client
        .file(&HubFile::new("acme/tiny", path))
        .await
        .unwrap_err();
    fail(path, 0, None).await;
    assert!(
        matches!(err, HubError::Transfer { attempts: 3, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("503") && err.to_string().contains(path));
    assert_eq!(requests_for(path).await, before + 3);

    let before = requests_for("missing.json").await;
    assert_not_found(&client, "acme/tiny", "missing.json", NotFoundKind::Entry).await;
    assert_eq!(
        requests_for("missing.json").await,
        before + 1,
        "a 404 was retried"
    );
}
