//! schnell's images API inside a program of your own: an engine, the
//! router (`/v1/images/generations`, `/readyz`, …) and the accept loop with
//! its connection cap and graceful stop.
//!
//! ```sh
//! cargo run --release --example embed_server -- --serve   # until Ctrl-C, on 127.0.0.1:8080
//! cargo run --release --example embed_server              # one request to itself, then stop
//! ```
//!
//! Without `--serve` it binds a free port, waits until the model is ready,
//! asks itself for one image over HTTP, prints the answer's size and stops
//! the server gracefully: what CI runs, on the test mirror's random-weight
//! tiny models (`HF_ENDPOINT`), whose images are noise.

// Native only: it builds for wasm32 too (`cargo check --target
// wasm32-unknown-unknown --all-targets`), where it does nothing.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    #[cfg(not(target_arch = "wasm32"))]
    native::main()?;
    Ok(())
}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::time::Duration;

    use schnell::flux::{EngineOptions, FluxSchnell, RetryPolicy, FLUX_SCHNELL};
    use schnell::hub::{HubClient, HubClientBuilder};
    use schnell::listen::{serve, shutdown_signal, ServeOptions};
    use schnell::protocol::{ImagesResponse, Phase, Readiness};
    use schnell::server::{router, ServerConfig};
    use tokio::net::TcpListener;

    #[tokio::main]
    pub async fn main() -> Result<(), Box<dyn std::error::Error>> {
        let keep_serving = std::env::args().any(|a| a == "--serve");
        let hub: HubClient = HubClientBuilder::from_env().build()?;
        let cache = hub.cache_dir().to_path_buf();
        let engine = FluxSchnell::new(hub, EngineOptions::default());
        // Downloads and loads in the background; `/readyz` says how far.
        let preparing = engine.clone();
        tokio::spawn(async move { preparing.prepare_until_ready(RetryPolicy::default()).await });

        let config = ServerConfig::default().hub_cache(cache);
        let app = router(engine, &FLUX_SCHNELL, config).await?;
        let addr = if keep_serving {
            "127.0.0.1:8080"
        } else {
            "127.0.0.1:0"
        };
        let listener = TcpListener::bind(addr).await?;
        let url = format!("http://{}", listener.local_addr()?);
        println!("serving on {url}");

        if keep_serving {
            serve(listener, app, ServeOptions::default(), shutdown_signal()).await?;
            return Ok(());
        }
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, app, ServeOptions::default(), async {
            let _ = stopped.await;
        }));
        let answer = ask_for_one_image(&url).await;
        let _ = stop.send(());
        server.await??;
        let answer = answer?;
        println!(
            "one image: {} bytes of base64, seed {:?}",
            answer.data[0].b64_json.as_ref().map_or(0, String::len),
            answer.data[0].seed
        );
        Ok(())
    }

    /// Waits for `/readyz` (at most ten minutes), then posts one small
    /// generation.
    async fn ask_for_one_image(url: &str) -> Result<ImagesResponse, Box<dyn std::error::Error>> {
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
        loop {
            if tokio::time::Instant::now() > deadline {
                return Err("the model was not ready within ten minutes".into());
            }
            let ready: Readiness = client
                .get(format!("{url}/readyz"))
                .send()
                .await?
                .json()
                .await?;
            match ready.phase {
                Phase::Ready => break,
                Phase::Failed => return Err(format!("the model failed to load: {ready:?}").into()),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let body = serde_json::json!({ "prompt": "a red fox", "size": "256x256", "seed": 7 });
        let response = client
            .post(format!("{url}/v1/images/generations"))
            .json(&body)
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(format!("{}: {}", response.status(), response.text().await?).into());
        }
        Ok(response.json().await?)
    }
}
