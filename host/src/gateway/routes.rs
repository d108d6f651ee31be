//! The gateway's routes on the daemon's listener: OpenAI's paths routed by the
//! body's `model` (JSON, or the form field of a multipart upload), and
//! `/v1/services/{name}/proxy/…` for anything else a backend serves.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use axum::Router;

use super::error::GatewayError;
use super::proxy::{forward, Upstream};
use super::{Gateway, Route};
use crate::supervise::ServiceStatus;

/// Routed by a JSON body's `model`.
const JSON_ROUTES: [&str; 13] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/rerank",
    "/rerank",
    "/v2/rerank",
    "/v1/score",
    "/v1/audio/speech",
    "/v1/images/generations",
    "/v1/messages",
    "/tokenize",
    "/detokenize",
];

/// Routed by the `model` field of a multipart form.
const FORM_ROUTES: [&str; 3] = [
    "/v1/audio/transcriptions",
    "/v1/audio/translations",
    "/v1/images/edits",
];

/// Whether `path` is one of the gateway's routes (which API keys open).
pub fn is_gateway_path(path: &str) -> bool {
    if JSON_ROUTES.contains(&path) || FORM_ROUTES.contains(&path) {
        return true;
    }
    path.strip_prefix("/v1/services/")
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(_, rest)| rest == "proxy" || rest.starts_with("proxy/"))
}

pub fn router(gateway: Arc<Gateway>) -> Router {
    let mut router = Router::new();
    for path in JSON_ROUTES.into_iter().chain(FORM_ROUTES) {
        router = router.route(path, post(by_model));
    }
    router
        .route("/v1/services/{name}/proxy", any(by_name))
        .route("/v1/services/{name}/proxy/{*rest}", any(by_name))
        .route("/mcp/services/{name}", any(by_mcp))
        // Bodies are read against `[gateway] max_body`, answering 413 in OpenAI's shape.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(gateway)
}

async fn by_model(
    State(gateway): State<Arc<Gateway>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let target = uri
        .path_and_query()
        .map_or_else(|| uri.path().to_string(), |target| target.to_string());
    let served = async {
        let bytes = read_body(body, gateway.max_body()).await?;
        let form = Form::of(&headers);
        let model = match &form {
            Some(form) => form.model(&bytes),
            None => json_model(&bytes),
        }?;
        let forwarded = headers.contains_key(crate::cluster::FORWARDED_BY);
        let route = match gateway.target(&model, forwarded).await? {
            super::Target::Here(route) => *route,
            super::Target::Elsewhere(replicas) => {
                let outgoing = super::proxy::Outgoing {
                    model,
                    method,
                    target,
                    headers,
                    body: bytes,
                };
                return gateway.forward_elsewhere(replicas, outgoing).await;
            }
        };
        let slot = gateway.slot(&route).await?;
        let in_flight = gateway.admit(&route).await?.holding(slot);
        let request = Request {
            gateway: gateway.clone(),
            route,
            model,
            form,
            bytes,
            method,
            target,
            headers,
        };
        let loading = request.route.routable.status.state != crate::supervise::State::Ready
            && request.form.is_none()
            && wants_stream(&request.bytes);
        if loading {
            // Streaming clients hear from nanny while the model loads.
            return Ok(streamed_while_loading(request, in_flight));
        }
        request.send(in_flight).await
    };
    served.await.unwrap_or_else(IntoResponse::into_response)
}

/// A routed request, ready to go once its service is.
struct Request {
    gateway: Arc<Gateway>,
    route: Route,
    model: String,
    form: Option<Form>,
    bytes: Bytes,
    method: Method,
    target: String,
    headers: HeaderMap,
}

impl Request {
    /// Waits for the service, rewrites `model` to the backend's name where they
    /// differ, and forwards.
    async fn send(self, in_flight: super::InFlight) -> Result<Response, GatewayError> {
        let status = self.gateway.ready(&self.route).await?;
        let bytes = match backend_name(&self.model, &status) {
            None => self.bytes,
            Some(name) => match &self.form {
                Some(form) => form.with_model(&self.bytes, name),
                None => json_with_model(&self.bytes, name)?,
            },
        };
        let upstream = Upstream {
            host: &self.route.routable.host,
            port: status.port,
            method: self.method,
            target: &self.target,
            headers: &self.headers,
            length: Some(bytes.len()),
            body: Body::from(bytes),
            api_key: self.route.routable.api_key.as_deref(),
            drain: self.gateway.drain_on_disconnect(&self.route),
        };
        let recorder = self.gateway.recorder(&self.route.service, &self.model);
        forward(
            &self.gateway.client,
            upstream,
            Box::new(in_flight),
            recorder,
        )
        .await
    }
}

/// How often a streaming client waiting for a model hears that it loads.
const LOADING_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// A `"stream": true` request for a service that is not ready: answered at
/// once as an event stream carrying SSE comments (`: nanny: loading qwen 40%`,
/// which clients ignore and proxies take as life) until the backend answers,
/// then the backend's own events; a start that fails ends it with one
/// OpenAI-shaped `error` event.
fn streamed_while_loading(request: Request, in_flight: super::InFlight) -> Response {
    use futures_util::StreamExt;
    let (events, stream) = tokio::sync::mpsc::channel::<Bytes>(16);
    let service = request.route.service.clone();
    let status = request.gateway.supervisor.watch(&service).ok();
    tokio::spawn(async move {
        let answer = request.send(in_flight);
        tokio::pin!(answer);
        let mut ticker = tokio::time::interval(LOADING_EVERY);
        let answer = loop {
            tokio::select! {
                answer = &mut answer => break answer,
                _ = ticker.tick() => {
                    let percent = status.as_ref().and_then(|status| match status.borrow().state {
                        crate::supervise::State::Starting { loading_percent } => loading_percent,
                        _ => None,
                    });
                    let line = match percent {
                        Some(percent) => format!(": nanny: loading {service} {percent}%\n\n"),
                        None => format!(": nanny: loading {service}\n\n"),
                    };
                    if events.send(Bytes::from(line)).await.is_err() {
                        // The client went away: dropping `answer` cancels the rest.
                        return;
                    }
                }
            }
        };
        match answer {
            Ok(response) if response.status().is_success() => {
                let mut body = response.into_body().into_data_stream();
                while let Some(Ok(chunk)) = body.next().await {
                    if events.send(chunk).await.is_err() {
                        return;
                    }
                }
            }
            Ok(response) => {
                // Too late for a status: the backend's refusal becomes an event.
                let code = response.status().as_u16();
                let text = axum::body::to_bytes(response.into_body(), 64 * 1024)
                    .await
                    .unwrap_or_default();
                let error = GatewayError::new(
                    StatusCode::BAD_GATEWAY,
                    "backend_error",
                    format!(
                        "the backend answered {code}: {}",
                        String::from_utf8_lossy(&text)
                    ),
                );
                let _ = events.send(error_event(&error)).await;
            }
            Err(error) => {
                let _ = events.send(error_event(&error)).await;
            }
        }
    });
    let body = Body::from_stream(
        tokio_stream::wrappers::ReceiverStream::new(stream).map(Ok::<_, std::convert::Infallible>),
    );
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// One OpenAI-shaped `error` event.
fn error_event(error: &GatewayError) -> Bytes {
    Bytes::from(format!("data: {}\n\n", error.body()))
}

/// Whether a JSON body asks for a stream.
fn wants_stream(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .is_ok_and(|value| value.get("stream") == Some(&serde_json::Value::Bool(true)))
}

/// `/v1/services/{name}/proxy/{rest}`: the service by name, started when it is
/// not running, whatever the method and path.
async fn by_name(
    State(gateway): State<Arc<Gateway>>,
    Path(params): Path<Vec<(String, String)>>,
    request: axum::extract::Request,
) -> Response {
    to_named(gateway, &params, request, |name, _, uri| {
        // Everything after `/proxy`, query included.
        let prefix = format!("/v1/services/{name}/proxy");
        let rest = uri.path().strip_prefix(&prefix).unwrap_or_default();
        Ok(with_query(if rest.is_empty() { "/" } else { rest }, uri))
    })
    .await
}

/// `/mcp/services/{name}`: a service that is an MCP server, at its `mcp.path`
/// (Streamable HTTP passed through, streams intact), started on demand and
/// stopped after its `idle_timeout` like any the gateway serves.
async fn by_mcp(
    State(gateway): State<Arc<Gateway>>,
    Path(params): Path<Vec<(String, String)>>,
    request: axum::extract::Request,
) -> Response {
    to_named(gateway, &params, request, |name, route, uri| {
        let path = route.routable.mcp_path.as_deref().ok_or_else(|| {
            GatewayError::new(
                StatusCode::NOT_FOUND,
                "not_an_mcp_server",
                format!("`{name}` is no MCP server (it sets no `mcp = {{ path = \"/mcp\" }}`)"),
            )
        })?;
        Ok(with_query(path, uri))
    })
    .await
}

/// A request for the service named in the path, forwarded as it came to where
/// `target` says in that service.
async fn to_named(
    gateway: Arc<Gateway>,
    params: &[(String, String)],
    request: axum::extract::Request,
    target: impl FnOnce(&str, &Route, &Uri) -> Result<String, GatewayError>,
) -> Response {
    let served = async {
        let name = service_param(params)?;
        let route = gateway.route_named(&name)?;
        let (parts, body) = request.into_parts();
        let target = target(&name, &route, &parts.uri)?;
        to_service(&gateway, route, parts.method, &target, parts.headers, body).await
    };
    served.await.unwrap_or_else(IntoResponse::into_response)
}

/// The `{name}` of a path, checked to be a service name.
fn service_param(params: &[(String, String)]) -> Result<String, GatewayError> {
    let name = params
        .iter()
        .find(|(key, _)| key == "name")
        .map_or("", |(_, value)| value.as_str());
    crate::names::checked(name)
        .map(str::to_string)
        .map_err(GatewayError::bad_request)
}

/// `path` with the request's query, if it has one.
fn with_query(path: &str, uri: &Uri) -> String {
    match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_string(),
    }
}

/// Forwards a request as it came to `target` on the route's service, which
/// is started (and waited for) when it is not running.
async fn to_service(
    gateway: &Arc<Gateway>,
    route: Route,
    method: Method,
    target: &str,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, GatewayError> {
    let slot = gateway.slot(&route).await?;
    let in_flight = gateway.admit(&route).await?.holding(slot);
    let status = gateway.ready(&route).await?;
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse().ok());
    let upstream = Upstream {
        host: &route.routable.host,
        port: status.port,
        method,
        target,
        headers: &headers,
        body,
        length,
        api_key: route.routable.api_key.as_deref(),
        drain: gateway.drain_on_disconnect(&route),
    };
    let recorder = gateway.recorder(&route.service, "");
    forward(&gateway.client, upstream, Box::new(in_flight), recorder).await
}

/// What is read and thrown away of a body over the limit, so the client gets
/// to read the 413 instead of a broken pipe (nginx's lingering close, bounded).
const DRAIN_BYTES: usize = 64 << 20;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// The body, whole, or 413 past `limit`.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, GatewayError> {
    use futures_util::StreamExt;
    let mut chunks = body.into_data_stream();
    let mut parts: Vec<Bytes> = Vec::new();
    let mut read = 0;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|error| {
            GatewayError::bad_request(format!("the request body could not be read: {error}"))
        })?;
        read += chunk.len();
        if read > limit {
            let mut drained = 0;
            let drain = async {
                while let Some(Ok(chunk)) = chunks.next().await {
                    drained += chunk.len();
                    if drained > DRAIN_BYTES {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
            return Err(GatewayError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_too_large",
                format!("the request body is over the gateway's limit of {limit} bytes (`[gateway] max_body`)"),
            ));
        }
        parts.push(chunk);
    }
    // A small body comes in one chunk, kept as it is; more are joined.
    Ok(match parts.len() {
        1 => parts.swap_remove(0),
        _ => Bytes::from(parts.concat()),
    })
}

fn json_model(body: &[u8]) -> Result<String, GatewayError> {
    /// Only `model` is kept: the rest is checked to be JSON and skipped.
    #[derive(serde::Deserialize)]
    struct Named {
        model: Option<serde_json::Value>,
    }
    let named: Named = serde_json::from_slice(body).map_err(|error| {
        GatewayError::bad_request(format!("the body is not a JSON object: {error}"))
    })?;
    match named.model {
        Some(serde_json::Value::String(model)) => Ok(model),
        Some(_) => Err(GatewayError::bad_request("`model` must be a string")),
        None => Err(GatewayError::bad_request(
            "the body names no `model`; GET /v1/models lists them",
        )),
    }
}

/// The backend's own name for what the client called `model`, when they differ:
/// a backend that reported models and not this one gets its first.
fn backend_name<'a>(model: &str, status: &'a ServiceStatus) -> Option<&'a str> {
    let reported = &status.models;
    if reported.is_empty() || reported.iter().any(|known| known.id == model) {
        return None;
    }
    reported.first().map(|known| known.id.as_str())
}

/// The JSON body with only its `model` changed.
fn json_with_model(body: &[u8], model: &str) -> Result<Bytes, GatewayError> {
    let mut value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|error| GatewayError::bad_request(format!("the body is not JSON: {error}")))?;
    if let Some(object) = value.as_object_mut() {
        object.insert("model".into(), serde_json::Value::String(model.into()));
    }
    serde_json::to_vec(&value)
        .map(Bytes::from)
        .map_err(|error| GatewayError::bad_request(error.to_string()))
}

/// A `multipart/form-data` body's boundary.
struct Form {
    boundary: String,
}

impl Form {
    fn of(headers: &HeaderMap) -> Option<Self> {
        let kind = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
        if !kind.trim_start().starts_with("multipart/form-data") {
            return None;
        }
        let boundary = kind.split(';').find_map(|part| {
            part.trim()
                .strip_prefix("boundary=")
                .map(|b| b.trim_matches('"').to_string())
        })?;
        Some(Self { boundary })
    }

    /// The byte range of the `model` field's value.
    fn model_range(&self, body: &[u8]) -> Option<std::ops::Range<usize>> {
        let delimiter = format!("--{}", self.boundary);
        let mut at = find(body, delimiter.as_bytes(), 0)?;
        loop {
            let part = at + delimiter.len();
            let head_end = find(body, b"\r\n\r\n", part)?;
            let head = std::str::from_utf8(&body[part..head_end]).ok()?;
            let next = find(body, format!("\r\n{delimiter}").as_bytes(), head_end)?;
            let is_model = head.lines().any(|line| {
                let line = line.to_ascii_lowercase();
                line.starts_with("content-disposition:") && line.contains("name=\"model\"")
            });
            if is_model {
                return Some(head_end + 4..next);
            }
            at = next + 2;
        }
    }

    fn model(&self, body: &[u8]) -> Result<String, GatewayError> {
        let range = self.model_range(body).ok_or_else(|| {
            GatewayError::bad_request("the form has no `model` field (or is cut short)")
        })?;
        String::from_utf8(body[range].to_vec())
            .map(|model| model.trim().to_string())
            .map_err(|_| GatewayError::bad_request("the form's `model` is not text"))
    }

    fn with_model(&self, body: &[u8], model: &str) -> Bytes {
        let Some(range) = self.model_range(body) else {
            return Bytes::copy_from_slice(body);
        };
        let mut rewritten = Vec::with_capacity(body.len() + model.len());
        rewritten.extend_from_slice(&body[..range.start]);
        rewritten.extend_from_slice(model.as_bytes());
        rewritten.extend_from_slice(&body[range.end..]);
        Bytes::from(rewritten)
    }
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|window| window == needle)
        .map(|at| at + from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(body: &str) -> (Form, Vec<u8>) {
        (
            Form {
                boundary: "XyZ".into(),
            },
            body.replace('\n', "\r\n").into_bytes(),
        )
    }

    #[test]
    fn a_form_names_its_model_and_takes_another() {
        let (form, body) = parsed("--XyZ\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\n\nRIFF..\n--XyZ\nContent-Disposition: form-data; name=\"model\"\n\nwhisper\n--XyZ--\n");
        assert_eq!(form.model(&body).unwrap(), "whisper");
        let rewritten = form.with_model(&body, "openai/whisper-large-v3");
        assert_eq!(form.model(&rewritten).unwrap(), "openai/whisper-large-v3");
        assert!(String::from_utf8_lossy(&rewritten).contains("RIFF.."));
    }

    #[test]
    fn a_form_cut_short_or_without_model_is_a_bad_request() {
        let (form, body) = parsed("--XyZ\nContent-Disposition: form-data; name=\"model\"\n\nwhis");
        assert_eq!(
            form.model(&body).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        let (form, body) =
            parsed("--XyZ\nContent-Disposition: form-data; name=\"file\"\n\nx\n--XyZ--\n");
        assert_eq!(
            form.model(&body).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn json_bodies_name_a_string_model_or_are_refused() {
        assert_eq!(
            json_model(br#"{"model":"qwen","messages":[]}"#).unwrap(),
            "qwen"
        );
        for bad in [
            &b"not json"[..],
            br#"{"messages":[]}"#,
            br#"{"model":7}"#,
            br#"[1,2]"#,
            br#"[]"#,
            br#"{"model":"a","model":"b"}"#,
            br#"{"model":"qwen""#,
        ] {
            assert_eq!(json_model(bad).unwrap_err().status, StatusCode::BAD_REQUEST);
        }
        let rewritten =
            json_with_model(br#"{"model":"qwen","stream":true}"#, "Qwen/Qwen2.5").unwrap();
        let value: serde_json::Value = serde_json::from_slice(&rewritten).unwrap();
        assert_eq!(value["model"], "Qwen/Qwen2.5");
        assert_eq!(value["stream"], true);
    }
}
