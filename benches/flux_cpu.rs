//! FLUX on the CPU with a mid-size random model (768 wide, 2 double and 4
//! single blocks; T5-small-sized encoder; CLIP-L text model; the real VAE),
//! through the engine exactly as `schnell generate` runs it.
//!
//! `cargo bench --bench flux_cpu` reports, at 256², 512² and 1024²: time per
//! step, text encoding, VAE decode and the process's peak RSS. Under
//! `cargo test` it runs once at tiny sizes so the code stays working.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use futures::StreamExt;
use schnell::dev::{write_models, Size, WriteOptions};
use schnell::flux::{
    EngineOptions, FluxSchnell, GenerateEvent, GenerateRequest, Quant, QuantChoice, Timings,
};
use schnell::hub::HubClientBuilder;

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let size = if full { Size::Bench } else { Size::Tiny };
    if let Some(dir) = std::env::var_os("SCHNELL_BENCH_WRITE_MODELS") {
        let options = WriteOptions::for_size(size, Some(vec![Quant::None]));
        write_models(std::path::Path::new(&dir), &options).unwrap();
        return;
    }
    let sides: &[u32] = if full { &[256, 512, 1024] } else { &[256] };
    let steps = 4;

    // The random weights are made in a child process, so that this process's
    // peak RSS is the engine's alone.
    let models = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(std::env::args().skip(1))
        .env("SCHNELL_BENCH_WRITE_MODELS", models.path())
        .status()
        .unwrap();
    assert!(status.success(), "writing the models failed");
    let hub = support::TestHub::start(models.path());
    let cache = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let results: Vec<(u32, Timings)> = rt.block_on(async {
        let client = HubClientBuilder::new(cache.path())
            .endpoint(&hub.endpoint)
            .build()
            .unwrap();
        let engine = FluxSchnell::new(
            client,
            EngineOptions {
                quant: QuantChoice::Fixed(Quant::None),
                ..Default::default()
            },
        );
        engine.prepare().await.unwrap();
        let mut results = Vec::new();
        for &side in sides {
            // A warm-up run, then the measured one.
            for round in 0..2 {
                let request = GenerateRequest::new("a red fox in the snow, detailed photo")
                    .size(side, side)
                    .steps(steps)
                    .seed(1);
                let mut events = std::pin::pin!(engine.generate(request));
                while let Some(event) = events.next().await {
                    match event {
                        GenerateEvent::Done { timings, .. } if round == 1 => {
                            results.push((side, timings))
                        }
                        GenerateEvent::Failed { error } => panic!("{error}"),
                        _ => {}
                    }
                }
            }
        }
        results
    });

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("model: {:?}", WriteOptions::for_size(size, None).sizes);
    println!(
        "threads: {}",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("| size | per step | text encoding | VAE decode | total ({steps} steps) |");
    println!("|---|---|---|---|---|");
    for (side, t) in &results {
        let per_step = t.steps.iter().sum::<Duration>() / t.steps.len() as u32;
        println!(
            "| {side}² | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms |",
            ms(per_step),
            ms(t.text_encoding),
            ms(t.vae_decode),
            ms(t.total)
        );
    }
    if let [(_, a), (_, b), (_, c)] = &results[..] {
        let step = |t: &Timings| ms(t.steps.iter().sum::<Duration>()) / t.steps.len() as f64;
        println!(
            "per-step growth: 256²→512² ×{:.1}, 512²→1024² ×{:.1} (4× the pixels each)",
            step(b) / step(a),
            step(c) / step(b)
        );
    }
    println!("peak RSS: {}", peak_rss());
}

/// `VmHWM` from /proc: the most resident memory this process has used.
fn peak_rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM"))
                .map(|l| l.trim_start_matches("VmHWM:").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}
