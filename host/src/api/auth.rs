//! Who may talk to the daemon: a Host header naming this machine when it listens
//! on loopback (DNS rebinding), and the bearer token once there is one.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::ApiState;

/// The daemon's token and where it listens.
#[derive(Debug, Clone)]
pub struct Access {
    pub token: Option<String>,
    pub listen: SocketAddr,
}

impl Access {
    /// Beyond loopback a token is required: refuse to run without one.
    pub fn check(&self) -> Result<(), String> {
        if !self.listen.ip().is_loopback() && self.token.is_none() {
            return Err(format!(
                "refusing to listen on {} without a token: set `daemon.token_file` or NANNY_TOKEN, or listen on 127.0.0.1",
                self.listen
            ));
        }
        Ok(())
    }
}

/// The token in `Authorization: Bearer …`.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Names a browser may use for this machine; anything else on a loopback daemon
/// is a page elsewhere that re-pointed its DNS at us.
fn is_local_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    matches!(name, "localhost" | "127.0.0.1" | "::1") || name.ends_with(".localhost")
}

pub async fn guard(State(api): State<Arc<ApiState>>, request: Request, next: Next) -> Response {
    let access = &api.access;
    if access.listen.ip().is_loopback() {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|host| host.to_str().ok());
        // HTTP/1.0 clients may leave Host out; browsers never do.
        if let Some(host) = host.filter(|host| !is_local_host(host)) {
            let message =
                format!("Host `{host}` is not this machine; nanny answers to localhost only");
            return ApiError::new(StatusCode::FORBIDDEN, message).into_response();
        }
    }
    let path = request.uri().path();
    // /health is open; a ready callback carries its own per-launch token.
    let open = path == "/health" || (path.starts_with("/v1/services/") && path.ends_with("/ready"));
    if let (Some(token), false) = (&access.token, open) {
        match bearer(request.headers()) {
            None => {
                let message = "this daemon needs its token: `Authorization: Bearer …` (the CLI reads NANNY_TOKEN)";
                return ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
            }
            Some(given) if !crate::secrets::same(given, token) => {
                return ApiError::new(StatusCode::FORBIDDEN, "wrong token").into_response();
            }
            Some(_) => {}
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::is_local_host;

    #[test]
    fn only_local_names_pass_on_loopback() {
        for good in [
            "localhost",
            "localhost:7878",
            "127.0.0.1:7878",
            "[::1]:7878",
            "[::1]",
            "app.localhost:80",
        ] {
            assert!(is_local_host(good), "{good}");
        }
        for bad in [
            "evil.example:7878",
            "127.0.0.2",
            "localhost.evil.example",
            "[::2]:7878",
        ] {
            assert!(!is_local_host(bad), "{bad}");
        }
    }
}
