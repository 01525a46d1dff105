//! `schnell fetch`: where files land, the environment it reads, and one download for two processes.

use std::process::{Command, Stdio};

use crate::run::{fetch, BIN};
use crate::support::{write_random, TestHub};

#[test]
fn fetch_prints_where_each_file_landed() {
    let dir = tempfile::tempdir().unwrap();
    write_random(&dir.path().join("acme/tiny/model.safetensors"), 300_000, 7);
    std::fs::write(dir.path().join("acme/tiny/config.json"), b"{}").unwrap();
    let hub = TestHub::start(dir.path());
    let cache = tempfile::tempdir().unwrap();

    let out = fetch(
        &hub.endpoint,
        cache.path(),
        &["model.safetensors", "config.json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    for (line, name) in lines.iter().zip(["model.safetensors", "config.json"]) {
        let path = line.split('\t').nth(1).unwrap();
        assert!(path.starts_with(cache.path().to_str().unwrap()) && path.ends_with(name));
        assert_eq!(
            std::fs::read(path).unwrap(),
            std::fs::read(dir.path().join("acme/tiny").join(name)).unwrap()
        );
    }

    // One missing file: a non-zero exit that names it.
    let out = fetch(
        &hub.endpoint,
        cache.path(),
        &["config.json", "missing.json"],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("missing.json") && stderr.contains("acme/tiny"),
        "{stderr}"
    );
}

#[test]
fn fetch_reads_endpoint_home_and_token_file_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("acme/tiny")).unwrap();
    std::fs::write(dir.path().join("acme/tiny/config.json"), b"{}").unwrap();
    let hub = TestHub::start(dir.path());
    *hub.faults.require_token.lock().unwrap() = Some("hf_from_file".into());
    let home = tempfile::tempdir().unwrap();
    let run = |token_file: Option<&str>, token_env: Option<&str>| {
        if let Some(t) = token_file {
            std::fs::write(home.path().join("token"), format!("{t}\n")).unwrap();
        }
        let mut cmd = Command::new(BIN);
        cmd.args(["fetch", "--repo", "acme/tiny", "--file", "config.json"])
            .env("HF_HOME", home.path())
            .env("HF_ENDPOINT", &hub.endpoint)
            .env_remove("HF_HUB_CACHE")
            .env_remove("HF_TOKEN")
            .env_remove("HF_HUB_OFFLINE");
        if let Some(t) = token_env {
            cmd.env("HF_TOKEN", t);
        }
        cmd.output().unwrap()
    };

    let out = run(None, None);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("HF_TOKEN") && stderr.contains("licence"),
        "{stderr}"
    );

    let out = run(None, Some("hf_secret_wrong"));
    assert!(!out.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        all.contains("403") && !all.contains("hf_secret_wrong"),
        "{all}"
    );

    let out = run(Some("hf_from_file"), None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let expected = home.path().join("hub/models--acme--tiny/snapshots");
    assert!(stdout.contains(expected.to_str().unwrap()), "{stdout}");
    assert!(!stdout.contains("hf_from_file"));
}

#[test]
fn two_processes_fetching_one_file_download_it_once() {
    let dir = tempfile::tempdir().unwrap();
    write_random(&dir.path().join("acme/tiny/model.safetensors"), 3 << 20, 3);
    let hub = TestHub::start(dir.path());
    // Slow enough that the second process starts while the first downloads.
    hub.faults.throttle(1.5e6, std::time::Duration::ZERO);
    let cache = tempfile::tempdir().unwrap();
    let spawn = || {
        Command::new(BIN)
            .args([
                "fetch",
                "--endpoint",
                &hub.endpoint,
                "--repo",
                "acme/tiny",
                "--file",
                "model.safetensors",
            ])
            .env("HF_HUB_CACHE", cache.path())
            .env_remove("HF_HUB_OFFLINE")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    for out in [&a, &b] {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Neither found it cached when it looked, so both were fetching at once…
    for out in [&a, &b] {
        assert!(String::from_utf8_lossy(&out.stdout).contains("downloaded"));
    }
    // …and the second waited on the first's lock instead of downloading
    // again: once, give or take what was in flight on a connection whose
    // range another one took over at the end.
    let sent = hub.stats.sent("model.safetensors");
    assert!(
        (3 << 20..2 * (3 << 20)).contains(&sent),
        "the content was sent twice: {sent} bytes"
    );
    let path = |o: &std::process::Output| {
        String::from_utf8_lossy(&o.stdout)
            .split('\t')
            .nth(1)
            .unwrap()
            .to_string()
    };
    assert_eq!(path(&a), path(&b));
}
