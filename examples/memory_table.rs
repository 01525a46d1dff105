//! The memory budget of every weight type for the real FLUX.1-schnell,
//! computed from its configs (tests/fixtures) as `--quant auto` computes it:
//! file sizes, what the loaded weights take, and the peak planned for a GPU
//! (bf16 CLIP and VAE) and for this machine's CPU (f32; candle's repacked
//! copies of some types depend on its instruction set), at 1024×1024.
//!
//! `cargo run --release --example memory_table`

// Native tooling: it builds for wasm32 too (`cargo check --target
// wasm32-unknown-unknown --all-targets`), where it does nothing.
fn main() {
    #[cfg(not(target_arch = "wasm32"))]
    native::main();
}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use candle_core::DType;
    use schnell::flux::memory::{estimate_peak, ModelSize, Workload, REAL_CONFIGS};
    use schnell::flux::{ConfigSource, Quant, T5Quant};

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

    pub fn main() {
        let read = |p: &str| std::fs::read(format!("{FIXTURES}/{p}")).expect("fixture");
        let files = REAL_CONFIGS.map(|p| (ConfigSource(p.into()), read(p)));
        let [a, b, c, d] = &files;
        let size =
            ModelSize::from_configs([(&a.0, &a.1), (&b.0, &b.1), (&c.0, &c.1), (&d.0, &d.1)])
                .expect("the real configs parse");
        let gb = |b: u64| format!("{:.2}", b as f64 / 1e9);
        println!("| --quant | transformer file GB | T5 type | T5 file GB | transformer loaded GB | T5 loaded GB | GPU peak 1024² (bf16) GB | GPU peak, --low-memory GB | CPU peak 1024² (f32) GB | CPU peak, --low-memory GB |");
        println!("|---|---|---|---|---|---|---|---|---|---|");
        for quant in Quant::all() {
            let t5 = T5Quant::nearest(quant);
            let peak = |dtype, low_memory, cpu| {
                gb(estimate_peak(
                    &size,
                    (quant, t5),
                    &Workload {
                        dtype,
                        width: 1024,
                        height: 1024,
                        low_memory,
                        cpu,
                        tiled_vae: false,
                        edit: false,
                        batch: 1,
                    },
                ))
            };
            // GGUF files: tensor data plus city96's 54,048-byte header.
            let flux_file = size
                .flux
                .gguf_bytes(quant)
                .map_or_else(|| "23.78 (bf16)".into(), |b| gb(b + 54_048));
            let t5_file = t5
                .real_file_bytes()
                .map_or_else(|| "9.52 (bf16)".into(), gb);
            println!(
                "| {quant} | {flux_file} | {t5} | {t5_file} | {} | {} | {} | {} | {} | {} |",
                gb(size.flux.resident_bytes(quant, DType::BF16)),
                gb(size.t5.resident_bytes(t5, DType::BF16)),
                peak(DType::BF16, false, false),
                peak(DType::BF16, true, false),
                peak(DType::F32, false, true),
                peak(DType::F32, true, true),
            );
        }
    }
}
