//! `schnell serve` in-process on 127.0.0.1, with tiny models behind the mirror.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use schnell::flux::{EngineOptions, FluxSchnell, FLUX_SCHNELL};
use schnell::hub::HubClientBuilder;
use schnell::server::{self, ServeOptions, ServerConfig};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::hub::TestHub;
use super::models::tiny_models;

pub const HF_TOKEN: &str = "hf_server_secret_token";

pub struct TestServer {
    pub url: String,
    pub addr: SocketAddr,
    pub engine: FluxSchnell,
    pub hub: TestHub,
    pub http: reqwest::Client,
    /// The Hugging Face cache the server fills and serves at /hub.
    pub cache: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    served: Option<JoinHandle<std::io::Result<()>>>,
    _cache: tempfile::TempDir,
}

/// A server on a free port. With `prepare`, returns once the model is ready;
/// otherwise loading goes on in the background.
pub async fn start(
    config: ServerConfig,
    prepare: bool,
    configure_hub: impl FnOnce(&TestHub),
) -> TestServer {
    start_full(
        tiny_models(),
        EngineOptions::default(),
        config,
        ServeOptions::default(),
        prepare,
        configure_hub,
    )
    .await
}

/// [`start`], with the models from `models` and the connection options given.
pub async fn start_with(
    models: &Path,
    config: ServerConfig,
    options: ServeOptions,
    prepare: bool,
    configure_hub: impl FnOnce(&TestHub),
) -> TestServer {
    start_full(
        models,
        EngineOptions::default(),
        config,
        options,
        prepare,
        configure_hub,
    )
    .await
}

/// [`start`], with the engine's options given.
pub async fn start_with_engine(
    engine: EngineOptions,
    config: ServerConfig,
    prepare: bool,
    configure_hub: impl FnOnce(&TestHub),
) -> TestServer {
    start_full(
        tiny_models(),
        engine,
        config,
        ServeOptions::default(),
        prepare,
        configure_hub,
    )
    .await
}

async fn start_full(
    models: &Path,
    engine_options: EngineOptions,
    config: ServerConfig,
    options: ServeOptions,
    prepare: bool,
    configure_hub: impl FnOnce(&TestHub),
) -> TestServer {
    let hub = TestHub::start(models);
    configure_hub(&hub);
    let cache = tempfile::tempdir().unwrap();
    // The cache lives in a subfolder, so that a test can use the tempdir for more.
    let hub_cache = cache.path().join("hub");
    let client = HubClientBuilder::new(&hub_cache)
        .endpoint(&hub.endpoint)
        .token(Some(HF_TOKEN.into()))
        .retries(1, Duration::from_millis(5), Duration::from_millis(10))
        .build()
        .unwrap();
    let engine = FluxSchnell::new(client, engine_options);
    let dist = if config.dist == ServerConfig::default().dist {
        cache.path().join("no-dist")
    } else {
        config.dist.clone()
    };
    let app = server::router(
        engine.clone(),
        &FLUX_SCHNELL,
        config.hub_cache(hub_cache.clone()).dist(dist),
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let url = format!("http://{addr}");
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(server::serve(listener, app, options, async {
        let _ = stopped.await;
    }));
    if prepare {
        engine.prepare().await.unwrap();
    } else {
        let background = engine.clone();
        tokio::spawn(async move { background.prepare().await });
    }
    TestServer {
        url,
        addr,
        engine,
        hub,
        http: reqwest::Client::new(),
        cache: hub_cache,
        stop: Some(stop),
        served: Some(served),
        _cache: cache,
    }
}

pub async fn ready(config: ServerConfig) -> TestServer {
    start(config, true, |_| {}).await
}

impl TestServer {
    /// Starts a graceful shutdown; the handle ends when the server has stopped.
    pub fn shut_down(&mut self) -> JoinHandle<std::io::Result<()>> {
        let _ = self.stop.take().expect("shut down once").send(());
        self.served.take().expect("shut down once")
    }

    pub async fn post(&self, body: Value) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/images/generations", self.url))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// `POST /v1/images/edits` with a multipart body, as OpenAI's clients
    /// send one: the text fields, then the files (each `(field, bytes)`).
    pub async fn edit(&self, text: &[(&str, &str)], files: &[(&str, &[u8])]) -> reqwest::Response {
        self.edit_with(&self.http, &[], text, files).await
    }

    /// [`TestServer::edit`] from `http`, with `headers` added.
    pub async fn edit_with(
        &self,
        http: &reqwest::Client,
        headers: &[(&str, &str)],
        text: &[(&str, &str)],
        files: &[(&str, &[u8])],
    ) -> reqwest::Response {
        const BOUNDARY: &str = "schnell-test-boundary";
        let mut body = Vec::new();
        for (name, value) in text {
            body.extend_from_slice(
                format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
                    .as_bytes(),
            );
        }
        for (name, bytes) in files {
            body.extend_from_slice(
                format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}.png\"\r\nContent-Type: image/png\r\n\r\n")
                    .as_bytes(),
            );
            body.extend_from_slice(bytes);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
        let mut request = http.post(format!("{}/v1/images/edits", self.url)).header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        );
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(body).send().await.unwrap()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap()
    }

    /// Waits until no request holds a queue place (the server noticed a
    /// disconnect, say), checking /readyz; fails after 20 s.
    pub async fn queue_drains(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status: Value = self.get("/readyz").await.json().await.unwrap();
            if status["queue"]["in_use"] == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the queue never drained: {status}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn steps_run(&self) -> u64 {
        self.engine.stats().steps
    }
}

pub fn request(size: &str, seed: u64) -> Value {
    json!({ "prompt": "a red fox in the snow", "size": size, "steps": 2, "seed": seed })
}

/// An RGBA PNG, each pixel from `pixel(x, y)`.
pub fn rgba_png(width: u32, height: u32, pixel: impl Fn(u32, u32) -> [u8; 4]) -> Vec<u8> {
    let image = image::RgbaImage::from_fn(width, height, |x, y| image::Rgba(pixel(x, y)));
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A base64 PNG's pixels, RGB.
pub fn png_pixels(b64: &str) -> image::RgbImage {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
        .unwrap()
        .to_rgb8()
}

pub fn png_size(b64: &str) -> (u32, u32) {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let img = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png).unwrap();
    (img.width(), img.height())
}

/// Server-sent events, read by the browser client's parser, as (event
/// name, JSON data). Panics on an event that is not one of
/// `schnell::protocol::StreamEvent`'s or does not parse as one.
pub fn parse_sse(text: &str) -> Vec<(String, Value)> {
    schnell::web::sse::SseParser::new()
        .feed(text.as_bytes())
        .into_iter()
        .map(|event| {
            match schnell::protocol::StreamEvent::parse(&event.event, &event.data) {
                Ok(Some(_)) => {}
                Ok(None) => panic!("an unknown event {:?}: {}", event.event, event.data),
                Err(e) => panic!("{e}: {}", event.data),
            }
            let data = serde_json::from_str(&event.data).expect("checked above");
            (event.event, data)
        })
        .collect()
}

/// Server-sent events, read by the browser client's parser, as the typed
/// events of `schnell::protocol::StreamEvent`. Panics on an unknown event.
pub fn stream_events(text: &str) -> Vec<schnell::protocol::StreamEvent> {
    schnell::web::sse::SseParser::new()
        .feed(text.as_bytes())
        .into_iter()
        .map(
            |event| match schnell::protocol::StreamEvent::parse(&event.event, &event.data) {
                Ok(Some(typed)) => typed,
                Ok(None) => panic!("an unknown event {:?}: {}", event.event, event.data),
                Err(e) => panic!("{e}: {}", event.data),
            },
        )
        .collect()
}
