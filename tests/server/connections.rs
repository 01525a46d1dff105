//! The accept loop over real sockets: clients that stop reading, idle or trickling connections, the connection cap, and a bounded shutdown.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use schnell::server::{ServeOptions, ServerConfig};

use crate::support::server::start_with;
use crate::support::tiny_models;

/// Whether the server has closed `stream`, waiting up to `within`.
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {} // a response: keep reading
            }
        }
    };
    tokio::time::timeout(within, read).await.is_ok()
}

/// Whether the server has closed `stream` already (no waiting).
fn closed_now(stream: &tokio::net::TcpStream) -> bool {
    let mut buf = [0u8; 1];
    match stream.try_read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

/// Writes `bytes` one at a time, 100 ms apart, until the server closes the
/// connection (or 60 s pass).
fn trickle(
    mut stream: tokio::net::TcpStream,
    head: &'static str,
    then: u8,
) -> tokio::task::JoinHandle<()> {
    use tokio::io::AsyncWriteExt;
    tokio::spawn(async move {
        if stream.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        for _ in 0..600 {
            if stream.write_all(&[then]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_its_response_is_cut_off() {
    let s = start_with(
        tiny_models(),
        ServerConfig::default(),
        // One place: while the stalled request holds it, no other client is
        // answered, so an answer to another says the stalled one was cut off.
        ServeOptions::default()
            .idle_timeout(Duration::from_millis(500))
            .max_connections(1),
        true,
        |_| {},
    )
    .await;
    // A 7.6 MB file, more than the kernel buffers while nobody reads.
    let path = "/hub/black-forest-labs/FLUX.1-schnell/resolve/main/flux1-schnell.safetensors";
    let size = std::fs::metadata(
        tiny_models().join("black-forest-labs/FLUX.1-schnell/flux1-schnell.safetensors"),
    )
    .unwrap()
    .len() as usize;
    let mut stalled = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    {
        use tokio::io::AsyncWriteExt;
        stalled
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
            .await
            .unwrap();
    }
    // The response has started: the request is in flight, and holds the one
    // place (peeking leaves the bytes in the kernel's buffer, unread).
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(Duration::from_secs(20), stalled.peek(&mut first)).await;
    assert!(
        matches!(peeked, Ok(Ok(1))),
        "no response started: {peeked:?}"
    );
    // Not reading: the server cuts the client off once its writes have been
    // blocked for the idle timeout, which frees the place for this request.
    let health = tokio::time::timeout(Duration::from_secs(20), s.get("/healthz"))
        .await
        .expect("the client that stopped reading was never cut off");
    assert_eq!(health.status(), StatusCode::OK);
    // Now reading: what the kernel had buffered, then the end, well short
    // of the whole file.
    let mut got = 0;
    let drained = tokio::time::timeout(Duration::from_secs(20), async {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match stalled.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got += n,
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the stalled connection stayed open");
    assert!(got < size, "the whole file arrived ({got} of {size} bytes)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let s = start_with(
        tiny_models(),
        ServerConfig::default(),
        ServeOptions::default().idle_timeout(Duration::from_secs(1)),
        false,
        |_| {},
    )
    .await;
    // Never a byte sent.
    let mut silent = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    // One request, then quiet: keep-alive ends too.
    let mut kept = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut seen = Vec::new();
        while !String::from_utf8_lossy(&seen).contains("\"ok\"") {
            let mut buf = [0u8; 1024];
            let n = kept.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before answering");
            seen.extend_from_slice(&buf[..n]);
        }
        assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"));
    }
    assert!(
        closed_within(&mut silent, Duration::from_secs(20)).await,
        "a silent connection stayed open"
    );
    assert!(
        closed_within(&mut kept, Duration::from_secs(20)).await,
        "an idle keep-alive connection stayed open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_trickling_headers_or_a_body_are_cut_off() {
    let s = start_with(
        tiny_models(),
        ServerConfig::default().body_timeout(Duration::from_secs(1)),
        ServeOptions::default()
            .header_timeout(Duration::from_secs(1))
            // Long: what closes the slow ones is not the idle timeout.
            .idle_timeout(Duration::from_secs(120)),
        false,
        |_| {},
    )
    .await;
    let idle = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let mut slow_head = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let writer = trickle(
        slow_head.try_clone_for_test(),
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ",
        b'a',
    );
    assert!(
        closed_within(&mut slow_head, Duration::from_secs(20)).await,
        "a client trickling its headers kept its connection"
    );
    writer.abort();
    assert!(
        !closed_now(&idle),
        "the idle connection was closed too soon"
    );

    // A body one byte at a time: 408 once the body timeout is over.
    let slow_body = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let (mut read, write) = slow_body.into_split();
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let mut write = write;
        let head = "POST /v1/images/generations HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n";
        if write.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        for _ in 0..600 {
            if write.write_all(b" ").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut answer = Vec::new();
    let got = tokio::time::timeout(Duration::from_secs(20), async {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 1024];
        while let Ok(n) = read.read(&mut buf).await {
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    writer.abort();
    assert!(
        got.is_ok(),
        "a client trickling its body kept its connection"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 408") && answer.contains("request_timeout"),
        "{answer}"
    );
}

/// For the tests: a second handle on one socket, for a writer task while
/// the test reads.
trait TryCloneForTest {
    fn try_clone_for_test(&self) -> tokio::net::TcpStream;
}

impl TryCloneForTest for tokio::net::TcpStream {
    fn try_clone_for_test(&self) -> tokio::net::TcpStream {
        use std::os::fd::{AsFd, FromRawFd, IntoRawFd};
        let fd = self.as_fd().try_clone_to_owned().unwrap().into_raw_fd();
        // SAFETY: a fresh duplicate descriptor, owned by the new stream only.
        let std = unsafe { std::net::TcpStream::from_raw_fd(fd) };
        std.set_nonblocking(true).unwrap();
        tokio::net::TcpStream::from_std(std).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_idle_connections_make_room() {
    let s = start_with(
        tiny_models(),
        ServerConfig::default(),
        ServeOptions::default()
            .max_connections(4)
            .idle_timeout(Duration::from_secs(120)),
        false,
        |_| {},
    )
    .await;
    let mut idle = Vec::new();
    for _ in 0..10 {
        idle.push(tokio::net::TcpStream::connect(s.addr).await.unwrap());
    }
    // Far fewer places than connections, all idle: a new client still gets in.
    let health = tokio::time::timeout(Duration::from_secs(20), s.get("/healthz"))
        .await
        .expect("/healthz got no answer with every connection taken");
    assert_eq!(health.status(), StatusCode::OK);
    // 11 connections, 4 places: the 7 idle the longest were closed.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let closed: Vec<bool> = idle.iter().map(closed_now).collect();
        let count = closed.iter().filter(|c| **c).count();
        if count >= 7 {
            assert!(closed[..7].iter().all(|c| *c), "{closed:?}");
            assert!(!closed[9], "the newest idle connection was closed first");
            break;
        }
        assert!(Instant::now() < deadline, "only {count} closed: {closed:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_on_slow_clients_beyond_the_grace_period() {
    let mut s = start_with(
        tiny_models(),
        ServerConfig::default(),
        ServeOptions::default().shutdown_grace(Duration::from_secs(1)),
        false,
        |_| {},
    )
    .await;
    let head = trickle(
        tokio::net::TcpStream::connect(s.addr).await.unwrap(),
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ",
        b'a',
    );
    let body = trickle(
        tokio::net::TcpStream::connect(s.addr).await.unwrap(),
        "POST /v1/images/generations HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n\r\n",
        b' ',
    );
    // Both were accepted before this one was answered.
    assert_eq!(s.get("/healthz").await.status(), StatusCode::OK);
    let stopped = s.shut_down();
    let done = tokio::time::timeout(Duration::from_secs(15), stopped).await;
    head.abort();
    body.abort();
    done.expect("shutdown waited on slow clients")
        .unwrap()
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(s.addr).await.is_err(),
        "still accepting after shutdown"
    );
}
