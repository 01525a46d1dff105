//! `schnell --version` and `schnell devices`: the back ends built in.

use std::process::Command;

use crate::run::BIN;

#[test]
fn version_and_devices_name_the_back_ends_built_in() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    let version = String::from_utf8(out.stdout).unwrap();
    let expected = if cfg!(feature = "cuda") {
        "back ends: cpu, cuda"
    } else {
        "back ends: cpu"
    };
    assert!(version.contains(expected), "{version}");

    let out = Command::new(BIN).arg("devices").output().unwrap();
    let listed = String::from_utf8(out.stdout).unwrap();
    assert!(listed.contains("cpu: compiled in\n  cpu: "), "{listed}");
    // The kernel set chosen at run time is named.
    assert!(
        [
            "kernels: AVX-512",
            "kernels: AVX2 with FMA",
            "kernels: SSE2",
            "kernels: NEON"
        ]
        .iter()
        .any(|k| listed.contains(k)),
        "{listed}"
    );
    // So is the design of the products with GGUF weights: 8 bits where
    // the CPU has AVX-512 VNNI, unless the environment asks for f32.
    #[cfg(target_arch = "x86_64")]
    let vnni = {
        use std::arch::is_x86_feature_detected as has;
        has!("avx512f")
            && has!("avx512bw")
            && has!("avx512vl")
            && has!("avx512vnni")
            && has!("f16c")
    };
    #[cfg(not(target_arch = "x86_64"))]
    let vnni = false;
    let design = match vnni {
        true => "(GGUF weights in 8-bit products (AVX-512 VNNI))",
        false => "(GGUF weights dequantized to f32 a panel at a time)",
    };
    assert!(listed.contains(design), "{listed}");
    let out = Command::new(BIN)
        .arg("devices")
        .env("SCHNELL_CPU_QUANTIZED_PRODUCT", "f32")
        .output()
        .unwrap();
    let f32_listed = String::from_utf8(out.stdout).unwrap();
    assert!(
        f32_listed.contains("(GGUF weights dequantized to f32 a panel at a time)"),
        "{f32_listed}"
    );
    assert!(
        listed.contains("metal: not compiled in (macOS only"),
        "{listed}"
    );
    if !cfg!(feature = "cuda") {
        assert!(out.status.success());
        assert!(
            listed.contains("cuda: not compiled in (scripts/build-cuda.sh"),
            "{listed}"
        );
    }
}
