//! The CPU's two designs for products with GGUF weights, side by side on
//! FLUX's shapes, for every type city96's files hold: f32 panels (gemm)
//! and 8-bit inputs and panels (AVX-512 VNNI). Random weights (noise).
//!
//! `cargo bench --bench quantized_products` (all types and shapes), or
//! with arguments: `-- q4_0,q8_0 512,1280` (types, input rows). Under
//! `cargo test` (no `--bench`) it is a smoke test: every type once on a
//! small shape, failing if the 8-bit product is more than 2% from the f32
//! panels'.

use candle_core::quantized::GgmlDType;
use schnell::dev::{ProductCase, QuantizedProduct};

/// `(n, k)` of the transformer's products: a double block's qkv, its
/// MLP's two layers, and a single block's `linear2`.
const SHAPES: [(usize, usize); 4] = [(9216, 3072), (12288, 3072), (3072, 12288), (3072, 15360)];

const TYPES: [(&str, GgmlDType); 10] = [
    ("q8_0", GgmlDType::Q8_0),
    ("q6_k", GgmlDType::Q6K),
    ("q5_k", GgmlDType::Q5K),
    ("q5_1", GgmlDType::Q5_1),
    ("q5_0", GgmlDType::Q5_0),
    ("q4_k", GgmlDType::Q4K),
    ("q4_1", GgmlDType::Q4_1),
    ("q4_0", GgmlDType::Q4_0),
    ("q3_k", GgmlDType::Q3K),
    ("q2_k", GgmlDType::Q2K),
];

fn main() -> schnell::dev::DevResult<()> {
    if !std::env::args().any(|a| a == "--bench") {
        return smoke();
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let types: Vec<_> = match args.first() {
        Some(list) => TYPES
            .iter()
            .filter(|(name, _)| list.split(',').any(|t| t == *name))
            .collect(),
        None => TYPES.iter().collect(),
    };
    let rows: Vec<usize> = match args.get(1) {
        Some(list) => list.split(',').map(str::parse).collect::<Result<_, _>>()?,
        None => vec![512, 1280],
    };
    println!("type  rows  n × k          f32 panels  8-bit (VNNI)  ratio  8-bit's relative error");
    for (name, dtype) in types {
        for &m in &rows {
            for &(n, k) in &SHAPES {
                let case = ProductCase::new(*dtype, m, n, k)?;
                let f32_panels = case.time(QuantizedProduct::F32Panels, 3)?;
                let int8 = case.time(QuantizedProduct::Int8, 3)?;
                println!(
                    "{name:5} {m:5} {n:5} × {k:5}  {:6.1} GF/s  {:6.1} GF/s   {:5.2}  {:.1e}",
                    f32_panels.gflops,
                    int8.gflops,
                    f32_panels.seconds / int8.seconds,
                    int8.relative_error
                );
            }
        }
    }
    Ok(())
}

/// Every type once, 48 rows (tiles and a tail) by 80 columns (a partial
/// group) by 512 (two K-quant superblocks).
fn smoke() -> schnell::dev::DevResult<()> {
    for (name, dtype) in TYPES {
        let case = ProductCase::new(dtype, 48, 80, 512)?;
        let int8 = case.time(QuantizedProduct::Int8, 1)?;
        println!(
            "{name}: 8 bits {:.1e} from the f32 panels",
            int8.relative_error
        );
        if int8.relative_error.is_nan() || int8.relative_error >= 2e-2 {
            return Err(format!(
                "{name}: the 8-bit product is {:.1e} from the f32 panels'",
                int8.relative_error
            )
            .into());
        }
    }
    Ok(())
}
