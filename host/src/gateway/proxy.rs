//! Forwarding one request to a backend and its answer back, streamed both ways
//! through a pooled connection.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use axum::response::Response;
use futures_util::StreamExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::error::GatewayError;

pub type Client = hyper_util::client::legacy::Client<HttpConnector, Body>;

/// Shorter than the backends' own keep-alive (vLLM closes idle connections
/// after 5 s), so a pooled connection is never one the backend just closed.
const POOL_IDLE: Duration = Duration::from_secs(4);

pub fn client() -> Client {
    let mut connector = HttpConnector::new();
    // A request goes out as headers then body: without this, Nagle's algorithm
    // holds the body until the backend's delayed ACK (40 ms on Linux).
    connector.set_nodelay(true);
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE)
        .build(connector)
}

/// Headers that belong to one connection, not to the request or answer.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// What goes upstream.
pub struct Upstream<'a> {
    pub host: &'a str,
    pub port: u16,
    pub method: Method,
    /// Path and query, as the client sent them (or the proxy route's rest).
    pub target: &'a str,
    pub headers: &'a HeaderMap,
    pub body: Body,
    /// Set when the body was rewritten (or read whole): its exact length.
    pub length: Option<usize>,
    /// The backend's own key, sent as its bearer token.
    pub api_key: Option<&'a str>,
    /// `on_disconnect = "drain"`: how long a cut answer may run on.
    pub drain: Option<Duration>,
}

/// A request read whole, as it goes to another node.
pub struct Outgoing {
    pub model: String,
    pub method: Method,
    pub target: String,
    pub headers: HeaderMap,
    pub body: axum::body::Bytes,
}

/// The code of a forward that reached nobody (so nothing was sent).
pub const UNREACHABLE: &str = "backend_unreachable";

/// What keeps a request counted (in flight, a slot) until its answer ends.
pub type Held = Box<dyn Send + 'static>;

/// One forwarded request's figures, recorded when its answer ends (or is
/// dropped: the client went away, a 499).
pub struct Recorder {
    pub metrics: crate::metrics::Metrics,
    pub figures: crate::metrics::RequestFigures,
    pub started: tokio::time::Instant,
    /// The answer's end, where a final `usage` is.
    tail: Vec<u8>,
    finished: bool,
    /// The answer's `Content-Length`: once that much went by, it is finished
    /// (the server need not poll the stream to its end).
    expected: Option<u64>,
    seen: u64,
}

/// How much of an answer's end is kept to find its `usage` in.
const TAIL_BYTES: usize = 8 * 1024;

impl Recorder {
    pub fn new(metrics: crate::metrics::Metrics, service: &str, model: &str) -> Self {
        Self {
            metrics,
            figures: crate::metrics::RequestFigures {
                service: service.to_string(),
                model: model.to_string(),
                ..Default::default()
            },
            started: tokio::time::Instant::now(),
            tail: Vec::new(),
            finished: false,
            expected: None,
            seen: 0,
        }
    }

    /// The answer ended as it should.
    fn finish(&mut self) {
        self.finished = true;
    }

    fn saw(&mut self, chunk: &[u8]) {
        self.seen += chunk.len() as u64;
        if self.expected.is_some_and(|expected| self.seen >= expected) {
            self.finished = true;
        }
        self.tail.extend_from_slice(chunk);
        if self.tail.len() > TAIL_BYTES {
            self.tail.drain(..self.tail.len() - TAIL_BYTES);
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if !self.finished {
            self.figures.code = 499;
        }
        self.figures.duration = self.started.elapsed();
        if let Some(at) = rfind(&self.tail, b"\"usage\"") {
            let usage = &self.tail[at..];
            self.figures.tokens_in = count_after(usage, b"\"prompt_tokens\"");
            self.figures.tokens_out = count_after(usage, b"\"completion_tokens\"");
        }
        self.metrics.observe_request(&self.figures);
    }
}

/// Where `needle` last occurs in `haystack`.
fn rfind(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .rposition(|window| window == needle)
}

/// The number after `"key":` in `json` (a `usage` object's text).
fn count_after(json: &[u8], key: &[u8]) -> Option<u64> {
    let at = json.windows(key.len()).position(|window| window == key)? + key.len();
    let rest = json[at..]
        .trim_ascii_start()
        .strip_prefix(b":")?
        .trim_ascii_start();
    let digits = rest.iter().take_while(|byte| byte.is_ascii_digit()).count();
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

/// Sends `upstream` and streams the answer back; the request counts as in
/// flight until the answer's body is finished or dropped.
pub async fn forward(
    client: &Client,
    upstream: Upstream<'_>,
    in_flight: Held,
    mut recorder: Recorder,
) -> Result<Response, GatewayError> {
    let host = if upstream.host.contains(':') {
        format!("[{}]", upstream.host)
    } else {
        upstream.host.to_string()
    };
    let uri = format!("http://{host}:{}{}", upstream.port, upstream.target);
    let mut request = Request::builder().method(upstream.method).uri(&uri);
    for (name, value) in upstream.headers {
        // The daemon's token is nanny's, not the backend's; the length is ours to set.
        if is_hop_by_hop(name)
            || name == header::HOST
            || name == header::AUTHORIZATION
            || name == header::CONTENT_LENGTH
        {
            continue;
        }
        request = request.header(name, value);
    }
    if let Some(length) = upstream.length {
        request = request.header(header::CONTENT_LENGTH, length);
    }
    if let Some(key) = upstream.api_key {
        request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    let request = request
        .body(upstream.body)
        .map_err(|error| GatewayError::bad_request(format!("cannot forward: {error}")))?;
    let answer = client.request(request).await.map_err(|error| {
        if error.is_connect() {
            GatewayError::new(
                StatusCode::BAD_GATEWAY,
                UNREACHABLE,
                format!("the backend at {uri} could not be reached: {error}"),
            )
        } else {
            GatewayError::new(
                StatusCode::BAD_GATEWAY,
                "backend_failed",
                format!("the backend at {uri} failed before answering: {error}"),
            )
        }
    })?;
    let (mut parts, body) = answer.into_parts();
    recorder.figures.code = parts.status.as_u16();
    recorder.expected = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|length| length.to_str().ok()?.parse().ok());
    recorder.figures.first_byte = Some(recorder.started.elapsed());
    let hop_by_hop: Vec<HeaderName> = parts
        .headers
        .keys()
        .filter(|name| is_hop_by_hop(name))
        .cloned()
        .collect();
    for name in hop_by_hop {
        parts.headers.remove(name);
    }
    let streaming = parts
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"text/event-stream"));
    if streaming {
        // Proxies in front of nanny must not hold tokens back.
        parts.headers.insert(
            HeaderName::from_static("x-accel-buffering"),
            HeaderValue::from_static("no"),
        );
        parts
            .headers
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    // The guard and the recorder ride with the body: the request ends when
    // the stream does.
    let riding = Riding {
        body: Some(Body::new(body).into_data_stream()),
        in_flight: Some(in_flight),
        recorder: Some(recorder),
        drain: upstream.drain,
    };
    let chunks = futures_util::stream::unfold(riding, |mut riding| async move {
        let chunk = riding.body.as_mut()?.next().await;
        match chunk {
            Some(chunk) => {
                if let (Ok(bytes), Some(recorder)) = (&chunk, riding.recorder.as_mut()) {
                    recorder.saw(bytes);
                }
                Some((chunk, riding))
            }
            None => {
                riding.ended();
                None
            }
        }
    });
    Ok(Response::from_parts(parts, Body::from_stream(chunks)))
}

/// What travels with an answer's body to the client.
struct Riding {
    /// `None` once it ended.
    body: Option<axum::body::BodyDataStream>,
    in_flight: Option<Held>,
    recorder: Option<Recorder>,
    /// `on_disconnect = "drain"`: a client gone mid-answer leaves the backend
    /// to finish it (read and thrown away, for at most this long).
    drain: Option<Duration>,
}

impl Riding {
    /// The answer ended as it should: nothing is left to drain.
    fn ended(&mut self) {
        if let Some(recorder) = self.recorder.as_mut() {
            recorder.finish();
        }
        self.body = None;
    }
}

impl Drop for Riding {
    fn drop(&mut self) {
        let (Some(mut body), Some(drain)) = (self.body.take(), self.drain) else {
            return;
        };
        // Some servers break a whole batch when one request is cut: let this
        // one run out, still counted in flight until it has.
        let (in_flight, recorder) = (self.in_flight.take(), self.recorder.take());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = tokio::time::timeout(drain, async {
                    while let Some(Ok(_)) = body.next().await {}
                })
                .await;
                drop((in_flight, recorder));
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_are_read_from_the_end_of_an_answer() {
        let answer = br#"data: {"usage": null}

data: {"choices": [], "usage": {"prompt_tokens" : 12, "completion_tokens":7, "total_tokens": 19}}

data: [DONE]"#;
        let at = rfind(answer, b"\"usage\"").unwrap();
        assert_eq!(count_after(&answer[at..], b"\"prompt_tokens\""), Some(12));
        assert_eq!(
            count_after(&answer[at..], b"\"completion_tokens\""),
            Some(7)
        );
        assert_eq!(
            count_after(b"{\"prompt_tokens\": \"x\"}", b"\"prompt_tokens\""),
            None
        );
        assert_eq!(rfind(b"short", b"\"usage\""), None);
    }
}
