//! Running the binary: `fetch`, `serve` in the background, waiting for an
//! exit, and signals.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_schnell");

/// `schnell fetch --repo acme/tiny --file FILES…` from `endpoint` into `cache`.
pub fn fetch(endpoint: &str, cache: &std::path::Path, files: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args([
            "fetch",
            "--endpoint",
            endpoint,
            "--repo",
            "acme/tiny",
            "--file",
        ])
        .args(files)
        .env("HF_HUB_CACHE", cache)
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_ENDPOINT")
        .output()
        .unwrap()
}

/// `schnell serve` on a free port; its URL, once it listens. Output goes to
/// `log`.
pub fn spawn_serve(
    args: &[&str],
    cache: &std::path::Path,
    log: &std::path::Path,
    configure: impl FnOnce(&mut Command),
) -> (std::process::Child, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--addr", "127.0.0.1:0", "--dist"])
        .arg(cache.join("no-dist"))
        .args(args)
        .env("HF_HUB_CACHE", cache)
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_ENDPOINT")
        .env_remove("SCHNELL_API_KEY")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap());
    configure(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| {
            panic!(
                "no address in {first:?}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            )
        })
        .to_string();
    (child, url)
}

/// The exit status, if the process ends within `within`; else kills it.
pub fn exits_within(
    child: &mut std::process::Child,
    within: std::time::Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Sends `signal` to `child`.
pub fn signal(child: &std::process::Child, signal: libc::c_int) {
    // SAFETY: a signal to our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0);
}
