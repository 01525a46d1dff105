//! One image from a prompt, as a stream of events: downloads, loading, each
//! step with a preview, then the image. Dropping the stream cancels the
//! request at its next step.
//!
//! ```sh
//! HF_TOKEN=hf_... cargo run --release --example generate_stream -- "a red fox in the snow" fox.png
//! ```
//!
//! CI points it at the test mirror's random-weight tiny models (`HF_ENDPOINT`,
//! `HF_HUB_CACHE`), whose images are noise.

// Native only: it builds for wasm32 too (`cargo check --target
// wasm32-unknown-unknown --all-targets`), where it does nothing.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    #[cfg(not(target_arch = "wasm32"))]
    native::main()?;
    Ok(())
}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use futures::StreamExt;
    use schnell::flux::{EngineOptions, FluxSchnell, GenerateEvent, GenerateRequest};
    use schnell::hub::{HubClient, HubEvent};

    #[tokio::main]
    pub async fn main() -> Result<(), Box<dyn std::error::Error>> {
        let mut args = std::env::args().skip(1);
        let prompt = args
            .next()
            .unwrap_or_else(|| "a red fox in the snow".into());
        let out = args.next().unwrap_or_else(|| "image.png".into());

        let engine = FluxSchnell::new(HubClient::from_env()?, EngineOptions::default());
        let request = GenerateRequest::new(prompt).size(256, 256).seed(7);
        let mut events = std::pin::pin!(engine.generate(request));
        let mut saved = false;
        while let Some(event) = events.next().await {
            match event {
                GenerateEvent::Download(HubEvent::Finished { file, size, .. }) => {
                    println!("downloaded {file} ({size} bytes)")
                }
                GenerateEvent::Loading { component } => println!("loading {component:?}"),
                GenerateEvent::Warning { message } => println!("warning: {message}"),
                GenerateEvent::Step {
                    index,
                    total,
                    preview,
                } => println!(
                    "step {index}/{total} (a {}×{} preview)",
                    preview.width, preview.height
                ),
                GenerateEvent::Done { image, seed, .. } => {
                    std::fs::write(&out, image.to_png()?)?;
                    println!("{out}: {}×{} from seed {seed}", image.width, image.height);
                    saved = true;
                }
                GenerateEvent::Failed { error } => return Err(error.into()),
                _ => {}
            }
        }
        if !saved {
            return Err("the stream ended without an image".into());
        }
        Ok(())
    }
}
