//! Who may talk to the daemon: a Host header naming this machine when it listens
//! on loopback (DNS rebinding), no state change from another site's page (CSRF),
//! and the bearer token once there is one.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Version};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::ApiState;

/// The daemon's token and where it listens.
#[derive(Debug, Clone)]
pub struct Access {
    pub token: Option<String>,
    pub listen: SocketAddr,
    /// Keys that open the gateway's routes (and only those).
    pub api_keys: ApiKeys,
    /// The cluster's shared token: other nodes' calls carry it, and it opens
    /// what the daemon's token opens.
    pub cluster_token: Option<String>,
}

/// `[gateway] api_keys` and `api_keys_file`, kept as SHA-256 digests: a key
/// written `sha256:<hex>` is never in memory in the clear.
#[derive(Debug, Clone, Default)]
pub struct ApiKeys(Vec<[u8; 32]>);

impl ApiKeys {
    /// From keys as written: `sha256:<64 hex digits>`, or the key itself.
    pub fn new(written: &[String]) -> Result<Self, String> {
        use sha2::{Digest, Sha256};
        let mut digests = Vec::new();
        for key in written {
            let key = key.trim();
            let digest = match key.strip_prefix("sha256:") {
                Some(hex) => parse_digest(hex)
                    .ok_or_else(|| format!("`sha256:{hex}` is not 64 hex digits"))?,
                None => Sha256::digest(key.as_bytes()).into(),
            };
            digests.push(digest);
        }
        Ok(Self(digests))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `given` is one of the keys (compared as digests, in constant time).
    pub fn admits(&self, given: &str) -> bool {
        use sha2::{Digest, Sha256};
        let digest: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        // Every key is compared, so the time says nothing about which matched.
        self.0.iter().fold(false, |found, key| {
            let same = key
                .iter()
                .zip(digest.iter())
                .fold(0u8, |diff, (a, b)| diff | (a ^ b))
                == 0;
            found | same
        })
    }
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (index, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(index * 2..index * 2 + 2)?, 16).ok()?;
    }
    Some(digest)
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

/// Names a browser may use for this machine — and the address the daemon
/// listens on, written as an address (no DNS name can rebind to that); anything
/// else on a loopback daemon is a page elsewhere that re-pointed its DNS at us.
fn is_local_host(host: &str, listen: std::net::IpAddr) -> bool {
    let name = match host.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    matches!(name, "localhost" | "127.0.0.1" | "::1")
        || name.ends_with(".localhost")
        || name.parse::<std::net::IpAddr>() == Ok(listen)
}

/// On a loopback daemon, why the request's Host does not prove a local caller.
/// Fails closed: no Host on HTTP/1.1, two of them, one that is not text, or an
/// absolute-form target naming elsewhere.
fn foreign_host(request: &Request, listen: std::net::IpAddr) -> Option<String> {
    let headers = request.headers();
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => return Some("two Host headers".into()),
        (Some(host), None) => match host.to_str() {
            Ok(host) => Some(host),
            Err(_) => return Some("a Host header that is not ASCII".into()),
        },
        // HTTP/1.0 clients may leave Host out; browsers never do.
        (None, None) if request.version() <= Version::HTTP_10 => None,
        (None, _) => return Some("no Host header".into()),
    };
    if let Some(host) = host.filter(|host| !is_local_host(host, listen)) {
        return Some(format!(
            "Host `{}` is not this machine",
            host.escape_default()
        ));
    }
    let authority = request.uri().authority().map(|a| a.as_str());
    if let Some(authority) = authority.filter(|authority| !is_local_host(authority, listen)) {
        return Some(format!("the target names `{authority}`, not this machine"));
    }
    None
}

/// Why a request that changes something could have come from a web page on
/// another site (cross-site request forgery): refused, since a page may send a
/// "simple" POST anywhere without asking. A request passes when it is
/// same-origin and non-simple, so a browser would have had to preflight it, and
/// nanny answers no preflight.
fn cross_site(request: &Request, must_be_non_simple: bool) -> Option<(StatusCode, String)> {
    if matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) {
        return None;
    }
    let headers = request.headers();
    let text = |name| headers.get(name).map(|v| v.to_str().unwrap_or("?"));
    if let Some(site @ ("cross-site" | "same-site")) = text("sec-fetch-site") {
        let message = format!("a {site} browser request may not change anything here");
        return Some((StatusCode::FORBIDDEN, message));
    }
    if let Some(origin) = text(header::ORIGIN.as_str()) {
        let origin_host = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        if origin_host.is_none() || origin_host != text(header::HOST.as_str()) {
            let message = format!(
                "requests from the page at `{}` may not change anything here",
                origin.escape_default()
            );
            return Some((StatusCode::FORBIDDEN, message));
        }
    }
    let json = text(header::CONTENT_TYPE.as_str())
        .is_some_and(|kind| kind.trim_start().starts_with("application/json"));
    // `Mcp-Session-Id` (an MCP client ending its session) needs a preflight too.
    let non_simple = json
        || headers.contains_key(header::AUTHORIZATION)
        || headers.contains_key(CLIENT_HEADER)
        || headers.contains_key("mcp-session-id");
    if must_be_non_simple && !non_simple {
        let message = format!(
            "{} needs `Content-Type: application/json`, `Authorization` or an `{CLIENT_HEADER}` header, which a web page cannot send unasked",
            request.method()
        );
        return Some((StatusCode::UNSUPPORTED_MEDIA_TYPE, message));
    }
    None
}

/// What nanny's own clients send on every POST, so that a browser would need a
/// preflight to send it too.
pub const CLIENT_HEADER: &str = "x-nanny-client";

/// The longest request target and the most header bytes and headers a request
/// may carry: no route needs more, and beyond them the answer is JSON like
/// every other error (hyper's own limits, far higher, answer with no body).
pub const MAX_TARGET_BYTES: usize = 8 * 1024;
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
pub const MAX_HEADERS: usize = 100;

fn oversized(request: &Request) -> Option<ApiError> {
    let target = request.uri().to_string().len();
    if target > MAX_TARGET_BYTES {
        return Some(ApiError::new(
            StatusCode::URI_TOO_LONG,
            format!("the request target is {target} bytes; at most {MAX_TARGET_BYTES}"),
        ));
    }
    let headers = request.headers();
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if bytes > MAX_HEADER_BYTES || headers.len() > MAX_HEADERS {
        return Some(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!(
                "{} headers of {bytes} bytes; at most {MAX_HEADERS} and {MAX_HEADER_BYTES}",
                headers.len()
            ),
        ));
    }
    None
}

pub async fn guard(State(api): State<Arc<ApiState>>, request: Request, next: Next) -> Response {
    if let Some(error) = oversized(&request) {
        return error.into_response();
    }
    let access = &api.access;
    if access.listen.ip().is_loopback() {
        if let Some(problem) = foreign_host(&request, access.listen.ip()) {
            let message = format!("{problem}; nanny answers to localhost only");
            return ApiError::new(StatusCode::FORBIDDEN, message).into_response();
        }
    }
    let path = request.uri().path();
    let ready_callback = path.starts_with("/v1/services/") && path.ends_with("/ready");
    // /health and the dashboard's files (no data) are open; a ready callback
    // carries its own per-launch token.
    let open = path == "/health" || ready_callback || super::ui::is_ui_path(path);
    // The gateway's routes also take the gateway's API keys.
    let gateway = crate::gateway::routes::is_gateway_path(path);
    let keys = gateway && !access.api_keys.is_empty();
    if (access.token.is_some() || keys) && !open {
        let token_fits = |given: &str| {
            [&access.token, &access.cluster_token]
                .into_iter()
                .flatten()
                .any(|token| crate::secrets::same(given, token))
        };
        match bearer(request.headers()) {
            None => {
                let message = if gateway {
                    "this gateway needs an API key: `Authorization: Bearer …`"
                } else {
                    "this daemon needs its token: `Authorization: Bearer …` (the CLI reads NANNY_TOKEN)"
                };
                return ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
            }
            Some(given) if token_fits(given) || (keys && access.api_keys.admits(given)) => {}
            Some(_) => {
                let message = if gateway {
                    "wrong API key"
                } else {
                    "wrong token"
                };
                return ApiError::new(StatusCode::FORBIDDEN, message).into_response();
            }
        }
    }
    // After the token: a caller without credentials learns that first. The
    // ready callback needs `Authorization` (non-simple) and says so itself.
    if let Some((status, message)) = cross_site(&request, !ready_callback) {
        return ApiError::new(status, message).into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod key_tests {
    use super::ApiKeys;

    #[test]
    fn keys_match_written_plainly_or_as_their_digest() {
        let keys = ApiKeys::new(&["sk-plain".to_string()]).unwrap();
        assert!(keys.admits("sk-plain"));
        assert!(!keys.admits("sk-plai"));
        assert!(ApiKeys::new(&["sha256:zz".to_string()]).is_err());
        let hashed = ApiKeys::new(&[format!("sha256:{}", sha2_hex("sk-team"))]).unwrap();
        assert!(hashed.admits("sk-team"));
        assert!(
            !hashed.admits(&format!("sha256:{}", sha2_hex("sk-team"))),
            "the digest is no key"
        );
    }

    fn sha2_hex(text: &str) -> String {
        use sha2::{Digest, Sha256};
        Sha256::digest(text.as_bytes())
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::is_local_host;

    #[test]
    fn only_local_names_pass_on_loopback() {
        let listen: std::net::IpAddr = [127, 0, 0, 3].into();
        let is_local_host = |host: &str| is_local_host(host, listen);
        assert!(is_local_host("127.0.0.3:7878"), "the listen address itself");
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
