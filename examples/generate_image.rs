//! One image from a prompt, in one call: `FluxSchnell::generate_image`.
//!
//! ```sh
//! HF_TOKEN=hf_... cargo run --release --example generate_image -- "a red fox in the snow" fox.png
//! ```
//!
//! The engine fetches what it needs from the Hub (`HF_ENDPOINT`, `HF_HUB_CACHE`
//! and `HF_TOKEN` are honoured, as by `schnell generate`); CI points it at the
//! test mirror's random-weight tiny models, whose images are noise.

// Native only: it builds for wasm32 too (`cargo check --target
// wasm32-unknown-unknown --all-targets`), where it does nothing.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    #[cfg(not(target_arch = "wasm32"))]
    native::main()?;
    Ok(())
}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use schnell::flux::{EngineOptions, FluxSchnell, GenerateRequest};
    use schnell::hub::HubClient;

    #[tokio::main]
    pub async fn main() -> Result<(), Box<dyn std::error::Error>> {
        let mut args = std::env::args().skip(1);
        let prompt = args
            .next()
            .unwrap_or_else(|| "a red fox in the snow".into());
        let out = args.next().unwrap_or_else(|| "image.png".into());

        let engine = FluxSchnell::new(HubClient::from_env()?, EngineOptions::default());
        let request = GenerateRequest::new(prompt).size(256, 256).seed(7);
        let made = engine.generate_image(request).await?;
        std::fs::write(&out, made.image.to_png()?)?;
        println!(
            "{out}: {}×{} from seed {}, {} prompt tokens, {:.1} s",
            made.image.width,
            made.image.height,
            made.seed,
            made.prompt_tokens,
            made.timings.total.as_secs_f64()
        );
        Ok(())
    }
}
