//! Edits' uploads under slow or greedy clients: a few clients trickling
//! bodies cannot lock everyone else out, a body under the minimum rate is
//! cut, and a body declared too long is refused before it is sent.

use std::time::Duration;

use reqwest::StatusCode;
use schnell::server::{ServerConfig, MAX_UPLOADS, MAX_UPLOADS_PER_CLIENT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::server::{ready, rgba_png, TestServer};

/// An edit's head, its body declared 100 000 bytes long.
const SLOW_EDIT: &str = "POST /v1/images/edits HTTP/1.1\r\nHost: localhost\r\nContent-Type: multipart/form-data; boundary=x\r\nContent-Length: 100000\r\n\r\n";

/// A client (from 127.0.0.1) that sends an edit's head, then a byte a
/// second; the task ends with what the server answered, if anything.
fn trickling_edit(s: &TestServer) -> tokio::task::JoinHandle<String> {
    let addr = s.addr;
    tokio::spawn(async move {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut read, mut write) = stream.into_split();
        write.write_all(SLOW_EDIT.as_bytes()).await.unwrap();
        let writer = tokio::spawn(async move {
            for _ in 0..100 {
                if write.write_all(b"-").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        // Until the server closes, or has sent a whole error (a JSON object).
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = read.read(&mut buf).await {
            answer.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&answer);
            if text
                .split_once("\r\n\r\n")
                .is_some_and(|(_, body)| body.ends_with('}'))
            {
                break;
            }
        }
        writer.abort();
        String::from_utf8_lossy(&answer).into_owned()
    })
}

/// A client from another address (127.0.0.2: the whole of 127/8 is this
/// machine), as another machine would be.
#[cfg(target_os = "linux")]
fn other_client() -> reqwest::Client {
    reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap()
}

// Another loopback address as another client: all of 127/8 is Linux's
// loopback, only 127.0.0.1 is macOS's.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickling_uploads_do_not_lock_out_another_clients_edit() {
    // The minimum rate's grace is long here: what lets the other client in
    // is the per-client share, not the cut.
    let s = ready(ServerConfig::default().min_body_rate_grace(Duration::from_secs(60))).await;
    let slow: Vec<_> = (0..MAX_UPLOADS).map(|_| trickling_edit(&s)).collect();
    // All but one client's share are refused at once; that share holds its places.
    let mut holding = slow;
    for _ in 0..MAX_UPLOADS - MAX_UPLOADS_PER_CLIENT {
        let (answer, _, rest) = futures::future::select_all(holding).await;
        let answer = answer.unwrap();
        assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
        assert!(answer.contains("this client"), "{answer}");
        holding = rest;
    }
    assert_eq!(holding.len(), MAX_UPLOADS_PER_CLIENT);

    // Another client's edit goes through while they trickle.
    let png = rgba_png(64, 64, |x, y| [x as u8, y as u8, 7, 255]);
    let r = s
        .edit_with(
            &other_client(),
            &[],
            &[("prompt", "a fox"), ("size", "256x256"), ("steps", "1")],
            &[("image", &png)],
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    assert!(
        holding.iter().all(|t| !t.is_finished()),
        "the trickling uploads were cut: not what let it in"
    );
    for task in holding {
        task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_under_the_minimum_rate_is_cut_and_frees_its_place() {
    let s = ready(
        ServerConfig::default()
            .min_body_rate_grace(Duration::from_secs(1))
            .upload_timeout(Duration::from_secs(100)),
    )
    .await;
    let answers: Vec<String> =
        futures::future::join_all((0..MAX_UPLOADS_PER_CLIENT).map(|_| trickling_edit(&s)))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    for answer in &answers {
        // Cut by the rate (16 KiB/s), long before the 100 s upload timeout.
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("too slowly"), "{answer}");
    }
    // Their places are free again: this client's next edit is read.
    let png = rgba_png(64, 64, |_, _| [1, 2, 3, 255]);
    let r = s
        .edit_with(
            &s.http,
            &[],
            &[("prompt", "a fox"), ("size", "256x256"), ("steps", "1")],
            &[("image", &png)],
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_body_declared_too_long_is_refused_before_it_is_sent() {
    let s = ready(ServerConfig::default()).await;
    for (path, content_type) in [
        ("/v1/images/edits", "multipart/form-data; boundary=x"),
        ("/v1/images/generations", "application/json"),
    ] {
        let mut stream = TcpStream::connect(s.addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\nContent-Length: 60000000\r\nExpect: 100-continue\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf))
            .await
            .expect("no answer")
            .unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(answer.starts_with("HTTP/1.1 413"), "{path}: {answer}");
    }
}
