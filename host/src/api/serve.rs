//! The listener: HTTP/1 connections with a cap on how many are open at once and
//! a deadline for each request's headers, so idle or slow sockets can neither
//! exhaust the daemon's file descriptors nor hold connections forever.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

/// How many connections the API serves at once, and how long a client has to
/// send a request's headers.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 512,
            header_timeout: Duration::from_secs(30),
        }
    }
}

/// Serves `router` on `listener` until `closing` turns true, then lets open
/// requests finish. Beyond `max_connections` the daemon stops accepting: new
/// sockets wait in the kernel's backlog and take none of its descriptors.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    mut closing: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut connections = JoinSet::new();
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot,
            _ = closed(&mut closing) => break,
        };
        let Ok(slot) = slot else { break };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of descriptors, most likely: wait for some to come back
                    // rather than spin.
                    tracing::warn!("cannot accept a connection: {error}");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
            },
            _ = closed(&mut closing) => break,
        };
        // Answers go out in small writes (headers, then each streamed chunk):
        // Nagle's algorithm would hold the second until the client's delayed ACK.
        let _ = stream.set_nodelay(true);
        // Reap finished connections as we go.
        while connections.try_join_next().is_some() {}
        let service = TowerToHyperService::new(router.clone());
        let mut closing = closing.clone();
        connections.spawn(async move {
            let _slot = slot;
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                // Above nanny's own limits, so those answer (in JSON) first.
                .max_headers(super::auth::MAX_HEADERS * 2);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = closed(&mut closing) => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    while connections.join_next().await.is_some() {}
}

/// Until `closing` turns true (or its sender goes), holding no guard across awaits.
async fn closed(closing: &mut watch::Receiver<bool>) {
    let _ = closing.wait_for(|closing| *closing).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn serving(limits: ConnectionLimits) -> (std::net::SocketAddr, watch::Sender<bool>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let router = Router::new().route("/", get(|| async { "hello" }));
        let (close, closing) = watch::channel(false);
        tokio::spawn(serve(listener, router, limits, closing));
        (address, close)
    }

    /// Reads until the server closes the connection; what it said.
    async fn read_to_close(stream: &mut TcpStream) -> String {
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[tokio::test]
    async fn a_client_that_never_finishes_its_headers_is_cut_off() {
        let (address, _close) = serving(ConnectionLimits {
            max_connections: 4,
            header_timeout: Duration::from_millis(200),
        })
        .await;
        let mut slow = TcpStream::connect(address).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            .await
            .unwrap();
        // The server closes it (with a 408 or nothing): read_to_end returns.
        let answer = read_to_close(&mut slow).await;
        assert!(!answer.contains("hello"), "{answer}");
    }

    #[tokio::test]
    async fn beyond_the_cap_a_connection_waits_for_a_slot() {
        let (address, _close) = serving(ConnectionLimits {
            max_connections: 1,
            header_timeout: Duration::from_secs(30),
        })
        .await;
        let request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
        // The first connection takes the only slot and keeps it.
        let mut first = TcpStream::connect(address).await.unwrap();
        first
            .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();
        let mut greeting = [0u8; 12];
        first.read_exact(&mut greeting).await.unwrap();
        assert_eq!(&greeting, b"HTTP/1.1 200");
        // The second is accepted by the kernel but not served while the first is open.
        let mut second = TcpStream::connect(address).await.unwrap();
        second.write_all(request).await.unwrap();
        let mut byte = [0u8; 1];
        let early = tokio::time::timeout(Duration::from_millis(300), second.read(&mut byte)).await;
        assert!(early.is_err(), "served beyond the cap: {early:?}");
        drop(first);
        let answer = read_to_close(&mut second).await;
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("hello"),
            "{answer}"
        );
    }
}
