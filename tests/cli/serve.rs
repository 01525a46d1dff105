//! `schnell serve` as a process: key checks, file descriptors, SIGTERM and Ctrl-C.

use std::process::{Command, Stdio};

use crate::run::{exits_within, signal, spawn_serve, BIN};
use crate::support::TestHub;

#[test]
fn serve_refuses_an_empty_api_key() {
    let cache = tempfile::tempdir().unwrap();
    let cases: [(&[&str], Option<&str>); 4] = [
        (&["--api-key", ""], None),
        (&["--api-key", "   "], None),
        (&[], Some("")),
        (&[], Some(" \t")),
    ];
    for (args, env) in cases {
        let mut cmd = Command::new(BIN);
        cmd.args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--endpoint",
            "http://127.0.0.1:9",
        ])
        .args(args)
        .env("HF_HUB_CACHE", cache.path())
        .env_remove("SCHNELL_API_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        if let Some(value) = env {
            cmd.env("SCHNELL_API_KEY", value);
        }
        let mut child = cmd.spawn().unwrap();
        let status = exits_within(&mut child, std::time::Duration::from_secs(20));
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        let status = status.unwrap_or_else(|| panic!("{args:?} {env:?}: served without a key"));
        assert!(!status.success(), "{args:?} {env:?}");
        assert!(
            stderr.contains("API key is empty") && stderr.contains("SCHNELL_API_KEY"),
            "{args:?} {env:?}: {stderr}"
        );
    }
}

#[tokio::test]
async fn serve_answers_health_checks_with_more_idle_connections_than_file_descriptors() {
    use std::os::unix::process::CommandExt;
    let cache = tempfile::tempdir().unwrap();
    let log = cache.path().join("serve.log");
    let (mut child, url) = spawn_serve(
        &["--endpoint", "http://127.0.0.1:9"],
        cache.path(),
        &log,
        |cmd| {
            // SAFETY: only setrlimit, which is async-signal-safe, runs in the child.
            unsafe {
                cmd.pre_exec(|| {
                    let limit = libc::rlimit {
                        rlim_cur: 256,
                        rlim_max: 256,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        },
    );
    let addr = url.trim_start_matches("http://").to_string();
    let idle: Vec<std::net::TcpStream> = (0..300)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    let health = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(20))
        .build()
        .unwrap()
        .get(format!("{url}/healthz"))
        .send()
        .await;
    drop(idle);
    let _ = child.kill();
    let _ = child.wait();
    let health = health.unwrap_or_else(|e| {
        panic!(
            "/healthz failed: {e}\n{}",
            std::fs::read_to_string(&log).unwrap()
        )
    });
    assert_eq!(health.status(), reqwest::StatusCode::OK);
}

#[tokio::test]
async fn sigterm_lets_a_running_stream_finish_then_exits_0() {
    let hub = TestHub::start(crate::support::tiny_models());
    let cache = tempfile::tempdir().unwrap();
    let log = cache.path().join("serve.log");
    // A long grace: on a busy machine the stream must not be cut for time.
    let args = [
        "--endpoint",
        &hub.endpoint,
        "--shutdown-grace",
        "120s",
        "--allowed-host",
        "studio.lan",
    ];
    let (mut child, url) = spawn_serve(&args, cache.path(), &log, |_| {});
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while http
        .get(format!("{url}/readyz"))
        .send()
        .await
        .unwrap()
        .status()
        != 200
    {
        assert!(std::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The flag reaches the server: that name is answered, others are not.
    for (host, status) in [("studio.lan", 200), ("attacker.example", 421)] {
        let r = http
            .get(format!("{url}/v1/models"))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{host}");
    }
    // About 3 s of steps on the tiny model in a debug build.
    let steps = 12;
    let response = http
        .post(format!("{url}/v1/images/generations"))
        .json(&serde_json::json!({
            "prompt": "a red fox", "size": "256x256", "steps": steps, "seed": 1, "stream": true
        }))
        .send()
        .await
        .unwrap();
    let mut chunks = futures::StreamExt::boxed(response.bytes_stream());
    let mut text = String::new();
    while !text.contains("partial_image") {
        let chunk = futures::StreamExt::next(&mut chunks)
            .await
            .unwrap()
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }

    signal(&child, libc::SIGTERM);
    // New connections are refused at once…
    let addr = url.trim_start_matches("http://").to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(&addr).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "still accepting after SIGTERM"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // …while the stream in flight runs to its end…
    while let Some(chunk) = futures::StreamExt::next(&mut chunks).await {
        text.push_str(std::str::from_utf8(&chunk.expect("the stream was cut")).unwrap());
    }
    let events = crate::support::server::parse_sse(&text);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), steps + 1, "{names:?}");
    assert_eq!(names.last(), Some(&"image_generation.completed"));
    // …and then the process exits 0.
    let status = exits_within(&mut child, std::time::Duration::from_secs(30));
    let log = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{status:?}\n{log}");
    assert!(log.contains("SIGTERM"), "{log}");
}

#[tokio::test]
async fn ctrl_c_is_not_held_up_by_a_slow_client() {
    use std::io::Write;
    let cache = tempfile::tempdir().unwrap();
    let log = cache.path().join("serve.log");
    let (mut child, url) = spawn_serve(
        &["--endpoint", "http://127.0.0.1:9", "--shutdown-grace", "1s"],
        cache.path(),
        &log,
        |_| {},
    );
    let addr = url.trim_start_matches("http://").to_string();
    // One byte of headers a second, for as long as the connection lasts.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut slow = std::net::TcpStream::connect(&addr).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .unwrap();
    let trickling = stop.clone();
    let client = std::thread::spawn(move || {
        while !trickling.load(std::sync::atomic::Ordering::Relaxed) {
            if slow.write_all(b"a").is_err() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    });
    // The slow client was accepted before this one was answered.
    let health = reqwest::get(format!("{url}/healthz")).await.unwrap();
    assert_eq!(health.status(), reqwest::StatusCode::OK);

    signal(&child, libc::SIGINT);
    let status = exits_within(&mut child, std::time::Duration::from_secs(15));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    client.join().unwrap();
    let log = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{status:?}\n{log}");
}
