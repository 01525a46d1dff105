//! A test Hub for the browser tests: `schnell mirror` plus the test layer's
//! counters at `/__stats` (and `/__reset`), and `/__fail?file=PATH&n=N`
//! (`&retry_after=S`), which makes the next N requests for PATH answer 503. Writes a few files into DIR,
//! prints its URL, and serves until killed. Test tooling only.
//!
//! `cargo run --example test_mirror -- DIR`

// Native tooling: it builds for wasm32 too (`cargo check --target
// wasm32-unknown-unknown --all-targets`), where it does nothing.
fn main() {
    #[cfg(not(target_arch = "wasm32"))]
    native::main();
}

#[cfg(not(target_arch = "wasm32"))]
#[path = "../tests/support/mod.rs"]
mod support;

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use super::support;

    pub fn main() {
        let dir =
            std::path::PathBuf::from(std::env::args().nth(1).expect("usage: test_mirror DIR"));
        let repo = dir.join("acme/tiny");
        std::fs::create_dir_all(repo.join("tokenizer")).unwrap();
        std::fs::write(repo.join("config.json"), b"{\"hidden_size\": 8}\n").unwrap();
        support::write_random(&repo.join("tokenizer/tokenizer.json"), 40_000, 1);
        support::write_random(&repo.join("model.safetensors"), 300_000, 2);
        // For the retry tests, which make the mirror answer 503 for it (`/__fail`).
        std::fs::create_dir_all(repo.join("retry")).unwrap();
        std::fs::write(repo.join("retry/flaky.json"), b"{\"flaky\": true}\n").unwrap();
        // The tiny models' tokenizers, for token counting in the browser.
        schnell::dev::write_tiny_models(&dir).unwrap();
        let hub = support::TestHub::start(&dir);
        println!("{}", hub.endpoint);
        loop {
            std::thread::park();
        }
    }
}
