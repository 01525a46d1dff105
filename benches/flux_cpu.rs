//! FLUX on the CPU with a mid-size random model (768 wide, 2 double and 4
//! single blocks; T5-small-sized encoder; CLIP-L text model; the real VAE),
//! through the engine exactly as `schnell generate` runs it.
//!
//! `cargo bench --bench flux_cpu` reports, at 256², 512² and 1024²: time per
//! step, text encoding, VAE decode (medians over `SCHNELL_BENCH_RUNS`
//! generations, 3 by default, after one warm-up) and the process's peak RSS.
//! `SCHNELL_BENCH_SIDES=256,512` picks the sizes. Then, at the first size,
//! the prompt cache (a new prompt against a repeated one) and batching
//! (one request for `n` = 4 images against four requests for one, each
//! round a new prompt), and an edit's VAE encode at each size, after the
//! peak RSS is taken.
//!
//! With `SCHNELL_BENCH_PYTHON` (a Python with torch and diffusers, such as
//! the venv `scripts/cpu-peer-bench.sh` makes), the same run then times
//! diffusers' transformer step and VAE decode on the same files
//! (`scripts/cpu_peer_bench.py`) and prints both sides and their ratio.
//!
//! Under `cargo test` it runs once at tiny sizes so the code stays working.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use schnell::dev::{write_models, Size, WriteOptions};
use schnell::flux::{
    EngineOptions, FluxSchnell, GenerateEvent, GenerateRequest, Image, InitImage, Quant,
    QuantChoice, Timings,
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
    let sides: Vec<u32> = match std::env::var("SCHNELL_BENCH_SIDES") {
        Ok(list) => list
            .split(',')
            .map(|s| s.trim().parse().expect("SCHNELL_BENCH_SIDES: e.g. 256,512"))
            .collect(),
        Err(_) if full => vec![256, 512, 1024],
        Err(_) => vec![256],
    };
    let runs: usize = match std::env::var("SCHNELL_BENCH_RUNS") {
        Ok(n) => n.parse().expect("SCHNELL_BENCH_RUNS: a count"),
        Err(_) if full => 3,
        Err(_) => 1,
    };
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
    type Runs = Vec<Timings>;
    let engine = rt.block_on(async {
        let client = HubClientBuilder::new(cache.path())
            .endpoint(&hub.endpoint)
            .build()
            .unwrap();
        let engine = FluxSchnell::new(
            client,
            EngineOptions::default().quant(QuantChoice::Fixed(Quant::None)),
        );
        engine.prepare().await.unwrap();
        engine
    });
    // `n` images of one request (edits of `init` if given); each image's timings.
    let generate_with = |prompt: String, side: u32, seed: u64, n: u32, init: Option<Image>| {
        let mut request = GenerateRequest::new(prompt);
        if let Some(image) = init {
            let init = InitImage::new(image, None, schnell::flux::DEFAULT_STRENGTH).unwrap();
            request = request.edit(init);
        }
        let request = request.size(side, side).steps(steps).seed(seed).images(n);
        let mut events = Box::pin(engine.generate(request));
        async move {
            let mut done = Vec::new();
            while let Some(event) = events.next().await {
                match event {
                    GenerateEvent::Done { timings, .. } => done.push(timings),
                    GenerateEvent::Failed { error } => panic!("{error}"),
                    _ => {}
                }
            }
            assert_eq!(done.len(), n as usize, "the engine stopped");
            done
        }
    };
    let generate_n =
        |prompt: String, side: u32, seed: u64, n: u32| generate_with(prompt, side, seed, n, None);
    let generate = |prompt: String, side: u32, seed: u64| {
        let images = generate_n(prompt, side, seed, 1);
        async move { images.await.remove(0) }
    };
    let results: (Vec<(u32, Runs)>, (Runs, Runs)) = rt.block_on(async {
        let mut results = Vec::new();
        for &side in &sides {
            // A warm-up run, then the measured ones; each its own prompt, so
            // that the prompt cache does not skip the text encoders.
            let mut measured = Vec::new();
            for round in 0..=runs {
                let prompt =
                    format!("a red fox in the snow, detailed photo, {side} px, take {round}");
                let timings = generate(prompt, side, 1).await;
                if round > 0 {
                    measured.push(timings);
                }
            }
            results.push((side, measured));
        }
        // The prompt cache, at the first size: a new prompt, then the same
        // prompt with the next seed (a seed sweep, or `n` > 1).
        let mut cache = (Vec::new(), Vec::new());
        for round in 0..runs {
            let prompt = format!("a lighthouse at dusk, oil painting, variant {round}");
            cache.0.push(generate(prompt.clone(), sides[0], 1).await);
            cache.1.push(generate(prompt, sides[0], 2).await);
        }
        (results, cache)
    });
    let (results, (new_prompts, repeated)) = results;
    let peak = peak_rss();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    // Batching, at the first size: one request for 4 images, against four
    // requests for 1 (whose prompt is encoded once, then cached); the wall
    // time of each, and of its transformer passes, a new prompt each round.
    let steps_ms = |t: &Timings| t.steps.iter().map(|d| ms(*d)).sum::<f64>();
    type Measured = Vec<(f64, f64)>;
    let (batched, one_by_one): (Measured, Measured) = rt.block_on(async {
        let (mut batched, mut one_by_one) = (Vec::new(), Vec::new());
        for round in 0..=runs {
            let prompt = format!("a harbour in fog, watercolour, batch {round}");
            let t = Instant::now();
            let images = generate_n(prompt.clone(), sides[0], 1, 4).await;
            // The batch's passes, shared by its images.
            let together = (ms(t.elapsed()), steps_ms(&images[0]));
            let (t, mut passes) = (Instant::now(), 0.0);
            for seed in 1..=4 {
                let image = generate(format!("{prompt}, one by one"), sides[0], seed).await;
                passes += steps_ms(&image);
            }
            if round > 0 {
                batched.push(together);
                one_by_one.push((ms(t.elapsed()), passes));
            }
        }
        (batched, one_by_one)
    });
    // An edit's VAE encode, at each size.
    let encodes: Vec<(u32, f64, f64)> = rt.block_on(async {
        let mut encodes = Vec::new();
        for &side in &sides {
            let image = Image {
                width: side,
                height: side,
                rgb: (0..side * side * 3).map(|i| (i % 251) as u8).collect(),
            };
            let (mut times, mut loads) = (Vec::new(), Vec::new());
            for round in 0..=runs {
                let prompt = format!("the same harbour at night {round}");
                let timings = generate_with(prompt, side, 1, 1, Some(image.clone())).await;
                if round > 0 {
                    times.push(ms(timings[0].vae_encode));
                    // The encoder, loaded for each edit.
                    loads.push(ms(timings[0].load));
                }
            }
            encodes.push((side, median(times.into_iter()), median(loads.into_iter())));
        }
        encodes
    });
    println!("model: {:?}", WriteOptions::for_size(size, None).sizes);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("threads: {threads}; medians of {runs} run(s) after a warm-up");
    println!("| size | per step | text encoding | VAE decode | total ({steps} steps) |");
    println!("|---|---|---|---|---|");
    // Per size: the median step (of every step of every run) and VAE decode.
    let mut ours = Vec::new();
    for (side, runs) in &results {
        let step = median(runs.iter().flat_map(|t| t.steps.iter().map(|d| ms(*d))));
        let vae = median(runs.iter().map(|t| ms(t.vae_decode)));
        println!(
            "| {side}² | {step:.0} ms | {:.0} ms | {vae:.0} ms | {:.0} ms |",
            median(runs.iter().map(|t| ms(t.text_encoding))),
            median(runs.iter().map(|t| ms(t.total)))
        );
        ours.push((*side, step, vae));
    }
    if let [(_, a, _), (_, b, _), (_, c, _)] = &ours[..] {
        println!(
            "per-step growth: 256²→512² ×{:.1}, 512²→1024² ×{:.1} (4× the pixels each)",
            b / a,
            c / b
        );
    }
    println!("peak RSS: {peak}");
    for (what, runs) in [
        ("a new prompt", &new_prompts),
        ("the same prompt, next seed", &repeated),
    ] {
        println!(
            "prompt cache, {}²: {what}: text encoding {:.0} ms, total {:.0} ms",
            sides[0],
            median(runs.iter().map(|t| ms(t.text_encoding))),
            median(runs.iter().map(|t| ms(t.total)))
        );
    }

    let wall = |m: &Measured| median(m.iter().map(|p| p.0));
    let passes = |m: &Measured| median(m.iter().map(|p| p.1));
    println!(
        "batching, {}²: n=4 in one request {:.0} ms, four n=1 requests {:.0} ms ({:.2}× the time); \
         their transformer passes {:.0} ms and {:.0} ms ({:.2}×)",
        sides[0],
        wall(&batched),
        wall(&one_by_one),
        wall(&batched) / wall(&one_by_one),
        passes(&batched),
        passes(&one_by_one),
        passes(&batched) / passes(&one_by_one),
    );
    for (side, encode, load) in encodes {
        println!(
            "an edit's VAE encode, {side}²: {encode:.0} ms (and {load:.0} ms loading the encoder)"
        );
    }
    println!("peak RSS after the batches and edits: {}", peak_rss());

    if let Some(python) = std::env::var_os("SCHNELL_BENCH_PYTHON") {
        peer(&python, models.path(), &ours, runs, threads);
    }
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// diffusers' transformer step and VAE decode on the same files, sizes and
/// threads (`scripts/cpu_peer_bench.py`), beside ours: `(side, step ms, VAE
/// ms)`.
fn peer(
    python: &std::ffi::OsStr,
    models: &std::path::Path,
    ours: &[(u32, f64, f64)],
    runs: usize,
    threads: usize,
) {
    let sides: Vec<String> = ours.iter().map(|(s, ..)| s.to_string()).collect();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cpu_peer_bench.py");
    let output = std::process::Command::new(python)
        .arg(script)
        .arg("--models")
        .arg(models)
        .args([
            "--sides",
            &sides.join(","),
            "--runs",
            &runs.max(1).to_string(),
        ])
        .args(["--threads", &threads.to_string()])
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("running the Python peer");
    assert!(output.status.success(), "the Python peer failed");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().expect("the peer printed nothing");
    let theirs: serde_json::Value = serde_json::from_str(last).expect("the peer's JSON line");
    println!(
        "\nside by side: diffusers {} on torch {}, {} threads, f32 (ratio = schnell / PyTorch)",
        theirs["diffusers"], theirs["torch"], theirs["threads"]
    );
    println!("| size | step: schnell | step: PyTorch | ratio | VAE decode: schnell | VAE decode: PyTorch | ratio |");
    println!("|---|---|---|---|---|---|---|");
    for (side, step, vae) in ours {
        let row = theirs["results"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["side"] == *side))
            .expect("the peer's row for this size");
        let their_step = row["step_median_s"].as_f64().expect("step_median_s") * 1e3;
        let their_vae = row["vae_median_s"].as_f64().expect("vae_median_s") * 1e3;
        println!(
            "| {side}² | {step:.0} ms | {their_step:.0} ms | {:.2}× | {vae:.0} ms | {their_vae:.0} ms | {:.2}× |",
            step / their_step,
            vae / their_vae
        );
    }
    println!(
        "PyTorch's peak RSS: {} kB (whole process; {} kB once loaded)",
        theirs["peak_rss_kib"], theirs["loaded_rss_kib"]
    );
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
