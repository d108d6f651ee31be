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
use super::InFlight;

pub type Client = hyper_util::client::legacy::Client<HttpConnector, Body>;

/// Shorter than the backends' own keep-alive (vLLM closes idle connections
/// after 5 s), so a pooled connection is never one the backend just closed.
const POOL_IDLE: Duration = Duration::from_secs(4);

pub fn client() -> Client {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE)
        .build_http()
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
}

/// Sends `upstream` and streams the answer back; the request counts as in
/// flight until the answer's body is finished or dropped.
pub async fn forward(
    client: &Client,
    upstream: Upstream<'_>,
    in_flight: InFlight,
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
        GatewayError::new(
            StatusCode::BAD_GATEWAY,
            "backend_unreachable",
            format!("the backend at {uri} did not answer: {error}"),
        )
    })?;
    let (mut parts, body) = answer.into_parts();
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
    // The guard rides with the body: the request ends when the stream does.
    let chunks = Body::new(body).into_data_stream().map(move |chunk| {
        let _still_in_flight = &in_flight;
        chunk
    });
    Ok(Response::from_parts(parts, Body::from_stream(chunks)))
}
