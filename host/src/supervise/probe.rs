//! The HTTP GET behind readiness and liveness probes. HTTP/1.0 with
//! `Connection: close`, so every server answers with a plain body to read to the end.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The most of a body handed to a plugin.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// A probe's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResponse {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

/// GETs `path` from `host:port`; `None` when nothing answered in `timeout`.
pub async fn get(host: &str, port: u16, path: &str, timeout: Duration) -> Option<ProbeResponse> {
    tokio::time::timeout(timeout, exchange(host, port, path))
        .await
        .ok()
        .flatten()
}

async fn exchange(host: &str, port: u16, path: &str) -> Option<ProbeResponse> {
    let mut stream = TcpStream::connect((host, port)).await.ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nUser-Agent: nanny-probe\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    stream
        .take((MAX_HEAD_BYTES + MAX_BODY_BYTES) as u64)
        .read_to_end(&mut raw)
        .await
        .ok()?;
    parse(&raw)
}

fn parse(raw: &[u8]) -> Option<ProbeResponse> {
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..head_end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let content_type = lines.find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-type")
            .then(|| value.trim().to_string())
    });
    let mut body = raw[head_end + 4..].to_vec();
    body.truncate(MAX_BODY_BYTES);
    Some(ProbeResponse {
        status,
        content_type,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn parses_status_content_type_and_body() {
        let raw = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 7\r\ncontent-type: application/json\r\n\r\n{\"a\":1}";
        let response = parse(raw).unwrap();
        assert_eq!(response.status, 503);
        assert_eq!(response.content_type.as_deref(), Some("application/json"));
        assert_eq!(response.body, b"{\"a\":1}");
    }

    #[test]
    fn garbage_is_no_answer() {
        assert!(parse(b"SSH-2.0-OpenSSH\r\n").is_none());
        assert!(parse(b"HTTP/1.1 abc\r\n\r\n").is_none());
    }
}
