//! `schnell fetch` mending the cache: `--verify` repairs damaged files, and a killed fetch resumes with only the missing ranges.

use std::process::{Command, Stdio};

use crate::run::{fetch, BIN};
use crate::support::{write_random, TestHub};

/// Flips one byte of a file in place: same size, wrong content.
fn damage(path: &std::path::Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn fetch_verify_hashes_the_cache_and_repairs_what_is_damaged() {
    let dir = tempfile::tempdir().unwrap();
    write_random(&dir.path().join("acme/tiny/model.safetensors"), 300_000, 7);
    std::fs::write(dir.path().join("acme/tiny/config.json"), b"{\"a\": 1}\n").unwrap();
    let hub = TestHub::start(dir.path());
    let cache = tempfile::tempdir().unwrap();
    let names = ["model.safetensors", "config.json"];
    let out = fetch(&hub.endpoint, cache.path(), &names);
    assert!(out.status.success());
    let landed: Vec<std::path::PathBuf> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split('\t').nth(1).unwrap().into())
        .collect();
    for path in &landed {
        damage(&std::fs::canonicalize(path).unwrap());
    }

    let verify = |cache: &std::path::Path| {
        Command::new(BIN)
            .args(["fetch", "--verify", "--endpoint", &hub.endpoint])
            .args(["--repo", "acme/tiny", "--file"])
            .args(names)
            .env("HF_HUB_CACHE", cache)
            .env_remove("HF_HUB_OFFLINE")
            .env_remove("HF_ENDPOINT")
            .output()
            .unwrap()
    };
    let out = verify(cache.path());
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    for (line, name) in lines.iter().zip(names) {
        assert!(
            line.starts_with(name) && line.contains("repaired"),
            "{line}"
        );
        let path = line.split('\t').nth(1).unwrap();
        assert_eq!(
            std::fs::read(path).unwrap(),
            std::fs::read(dir.path().join("acme/tiny").join(name)).unwrap()
        );
    }

    // Whole again: verified, nothing downloaded.
    hub.stats.reset();
    let out = verify(cache.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(stdout.lines().all(|l| l.ends_with("verified")), "{stdout}");
    assert_eq!(hub.stats.requests(), 0);
}

/// The byte intervals a partial download holds: its range record and the
/// complete prefix in its trailer, merged.
fn partial_holds(cache: &std::path::Path, size: u64) -> Option<Vec<(u64, u64)>> {
    let find = |suffix: &str| {
        walkdir::WalkDir::new(cache)
            .into_iter()
            .filter_map(Result::ok)
            .find(|e| e.file_name().to_string_lossy().ends_with(suffix))
            .map(|e| e.into_path())
    };
    let record = std::fs::read_to_string(find(".ranges.part")?).ok()?;
    let partial = std::fs::read(find(".sync.part")?).ok()?;
    let trailer: [u8; 8] = partial.get(size as usize..)?.try_into().ok()?;
    let mut have = vec![(0, u64::from_le_bytes(trailer))];
    for line in record.lines().skip(1) {
        let (s, e) = line.split_once(' ')?;
        have.push((s.parse().ok()?, e.parse().ok()?));
    }
    have.sort();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (s, e) in have.into_iter().filter(|(s, e)| s < e) {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    Some(merged)
}

#[test]
fn a_fetch_killed_midway_fetches_only_the_missing_ranges_when_run_again() {
    let size: u64 = 24 << 20;
    let dir = tempfile::tempdir().unwrap();
    let name = "model.safetensors";
    write_random(&dir.path().join("acme/tiny").join(name), size as usize, 11);
    let hub = TestHub::start(dir.path());
    // Several ranges at once, slowly: they finish out of order.
    hub.faults.throttle(2e6, std::time::Duration::ZERO);
    let cache = tempfile::tempdir().unwrap();
    let spawn = || {
        Command::new(BIN)
            .args(["fetch", "--endpoint", &hub.endpoint, "--repo", "acme/tiny"])
            .args(["--file", name])
            .env("HF_HUB_CACHE", cache.path())
            .env_remove("HF_HUB_OFFLINE")
            .env_remove("HF_ENDPOINT")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };

    let mut first = spawn();
    // Wait (polling the files it writes) until what it recorded lies in
    // several pieces, past a hole: a complete prefix alone would lose them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let held = partial_holds(cache.path(), size).unwrap_or_default();
        let bytes: u64 = held.iter().map(|(s, e)| e - s).sum();
        if held.len() >= 2 && bytes >= size / 4 {
            break;
        }
        assert!(first.try_wait().unwrap().is_none(), "the fetch ended early");
        assert!(
            std::time::Instant::now() < deadline,
            "never got far: {held:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    first.kill().unwrap(); // SIGKILL: nothing is cleaned up or saved.
    first.wait().unwrap();
    let held = partial_holds(cache.path(), size).unwrap();
    let prefix = held.first().filter(|r| r.0 == 0).map_or(0, |r| r.1);
    let kept: u64 = held.iter().map(|(s, e)| e - s).sum();
    assert!(kept > prefix, "only a prefix was kept: {held:?}");
    let gaps: Vec<(u64, u64)> = std::iter::once(0)
        .chain(held.iter().map(|r| r.1))
        .zip(held.iter().map(|r| r.0).chain(std::iter::once(size)))
        .filter(|(s, e)| s < e)
        .collect();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(hub.stats.quiescent());
    hub.stats.reset();
    let second = spawn().wait_with_output().unwrap();
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let path = String::from_utf8_lossy(&second.stdout)
        .split('\t')
        .nth(1)
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(
        std::fs::read(path).unwrap(),
        std::fs::read(dir.path().join("acme/tiny").join(name)).unwrap()
    );
    // Every byte asked for again lies in a gap of what was kept.
    let asked = hub.stats.body_ranges();
    assert!(!asked.is_empty());
    for (s, e) in &asked {
        assert!(
            gaps.iter().any(|(gs, ge)| gs <= s && e <= ge),
            "asked again for bytes {s}..{e}, which were kept ({held:?})"
        );
    }
    assert!(hub.stats.sent(name) >= size - kept);
}
