//! Hub files through `huggingface_file`: one file, then several at once.
//! The same call works in the browser (over `fetch` and the Cache API).
//!
//! ```sh
//! cargo run --example fetch_files
//! ```
//!
//! Files land in the standard Hugging Face cache (`HF_HUB_CACHE`), where
//! Python's `huggingface_hub` finds them too; a second run makes no request
//! for them. CI points it at the test mirror (`HF_ENDPOINT`).

// Native only: it builds for wasm32 too (`cargo check --target
// wasm32-unknown-unknown --all-targets`), where it does nothing.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    #[cfg(not(target_arch = "wasm32"))]
    native::main()?;
    Ok(())
}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use schnell::flux::FLUX_REPO;
    use schnell::hub::{huggingface_file, huggingface_files, HubFile};

    #[tokio::main]
    pub async fn main() -> Result<(), Box<dyn std::error::Error>> {
        // One file: its path in the cache, and its bytes when wanted.
        let config = huggingface_file(&HubFile::new(FLUX_REPO, "vae/config.json")).await?;
        let text = config.bytes().await?;
        println!("{} ({} bytes)", config.path().display(), text.len());

        // Several, concurrently; the results come in the order asked.
        let files = huggingface_files(&[
            HubFile::new(FLUX_REPO, "tokenizer_2/tokenizer.json"),
            HubFile::new(FLUX_REPO, "transformer/config.json"),
            HubFile::new(FLUX_REPO, "text_encoder/config.json"),
        ])
        .await?;
        for file in &files {
            println!("{} -> {}", file.file, file.path().display());
        }
        Ok(())
    }
}
