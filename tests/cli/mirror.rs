//! `schnell mirror` serving a folder that `schnell fetch` reads.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::run::{fetch, BIN};

#[test]
fn mirror_serves_a_folder_to_fetch() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("acme/tiny")).unwrap();
    std::fs::write(dir.path().join("acme/tiny/config.json"), b"{\"a\":1}").unwrap();
    let mut mirror = Command::new(BIN)
        .args([
            "mirror",
            "--dir",
            dir.path().to_str().unwrap(),
            "--addr",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(mirror.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let endpoint = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {first:?}"))
        .to_string();

    let cache = tempfile::tempdir().unwrap();
    let out = fetch(&endpoint, cache.path(), &["config.json"]);
    mirror.kill().unwrap();
    let _ = mirror.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("config.json"));
}
