//! `schnell serve` with the tiny model: the HTTP overhead per request against
//! calling the library directly, and throughput under 8 concurrent clients.
//!
//! `cargo bench --bench server_http`; under `cargo test` it runs a few
//! requests only. The tiny model's images are noise: this measures the server.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use schnell::flux::{EngineOptions, FluxSchnell, GenerateEvent, GenerateRequest, FLUX_SCHNELL};
use schnell::hub::HubClientBuilder;
use schnell::server::{self, ServerConfig};
use serde_json::json;

const SIDE: u32 = 256;
const STEPS: u32 = 4;

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (rounds, per_client) = if full { (30, 8) } else { (2, 1) };
    let clients = 8;

    let hub = support::TestHub::start(support::tiny_models());
    let cache = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = HubClientBuilder::new(cache.path()).endpoint(&hub.endpoint).build().unwrap();
        let engine = FluxSchnell::new(client, EngineOptions::default());
        engine.prepare().await.unwrap();
        let app = server::router(
            engine.clone(),
            &FLUX_SCHNELL,
            ServerConfig::default()
                .max_queue(64)
                .hub_cache(cache.path().to_path_buf())
                .dist(cache.path().join("no-dist")),
        )
        .await
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/images/generations", listener.local_addr().unwrap());
        tokio::spawn(schnell::listen::serve(
            listener,
            app,
            schnell::listen::ServeOptions::default(),
            std::future::pending(),
        ));
        let http = reqwest::Client::new();
        let body = |seed: u64| json!({ "prompt": "a red fox in the snow", "size": format!("{SIDE}x{SIDE}"), "steps": STEPS, "seed": seed });

        // Warm up both paths.
        library(&engine, 0).await;
        post(&http, &url, body(0)).await;

        // Each request's own engine time (the `timings.total` the engine
        // reports) is taken off its latency, so that the noise of the
        // generation itself cancels out. The two paths alternate.
        let (mut lib, mut web) = (Vec::new(), Vec::new());
        let (mut lib_total, mut web_total) = (Vec::new(), Vec::new());
        for i in 0..rounds {
            let t = Instant::now();
            let engine_time = library(&engine, i).await;
            lib_total.push(t.elapsed());
            lib.push(t.elapsed().saturating_sub(engine_time));
            let t = Instant::now();
            let engine_time = post(&http, &url, body(i)).await.expect("a request failed");
            web_total.push(t.elapsed());
            web.push(t.elapsed().saturating_sub(engine_time));
        }
        let median = |v: &mut Vec<Duration>| {
            v.sort();
            v[v.len() / 2]
        };
        println!("{SIDE}x{SIDE}, {STEPS} steps, tiny model, {rounds} rounds each (medians):");
        println!("| path | latency | beyond the engine's own time |");
        println!("|---|---|---|");
        println!(
            "| library: `FluxSchnell::generate` to `Done` (raw RGB) | {:.1} ms | {:.2} ms |",
            ms(median(&mut lib_total)),
            ms(median(&mut lib))
        );
        println!(
            "| HTTP: `POST /v1/images/generations`, PNG in `b64_json` | {:.1} ms | {:.2} ms |",
            ms(median(&mut web_total)),
            ms(median(&mut web))
        );

        let t = Instant::now();
        let total = clients * per_client;
        let sequential = {
            for i in 0..total {
                library(&engine, 1000 + i as u64).await;
            }
            t.elapsed()
        };
        let t = Instant::now();
        let answers = futures::future::join_all((0..clients).map(|c| {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let mut codes = Vec::new();
                for i in 0..per_client {
                    codes.push(post(&http, &url, body((c * 100 + i) as u64)).await);
                }
                codes
            }
        }))
        .await;
        let concurrent = t.elapsed();
        assert!(answers.iter().flatten().all(Option::is_some), "a request failed");
        println!("| throughput | images/s |");
        println!("|---|---|");
        println!("| library, one after another ({total} images) | {:.2} |", total as f64 / sequential.as_secs_f64());
        println!("| HTTP, {clients} concurrent clients ({total} images) | {:.2} |", total as f64 / concurrent.as_secs_f64());
    });
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One image through the library; returns the engine's own time for it.
async fn library(engine: &FluxSchnell, seed: u64) -> Duration {
    let request = GenerateRequest::new("a red fox in the snow")
        .size(SIDE, SIDE)
        .steps(STEPS)
        .seed(seed);
    let mut events = std::pin::pin!(engine.generate(request));
    while let Some(event) = events.next().await {
        match event {
            GenerateEvent::Done { timings, .. } => return timings.total,
            GenerateEvent::Failed { error } => panic!("{error}"),
            _ => {}
        }
    }
    panic!("no Done");
}

/// One image over HTTP; returns the engine's own time as the server reports it.
/// One image over HTTP; returns the engine's own time as the server reports it.
async fn post(http: &reqwest::Client, url: &str, body: serde_json::Value) -> Option<Duration> {
    let r = http.post(url).json(&body).send().await.unwrap();
    if !r.status().is_success() {
        return None;
    }
    let answer: schnell::protocol::ImagesResponse = r.json().await.unwrap();
    Some(Duration::from_millis(answer.data.first()?.timings.total_ms))
}
