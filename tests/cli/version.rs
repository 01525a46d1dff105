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
