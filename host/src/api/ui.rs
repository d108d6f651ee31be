//! The dashboard: plain HTML, CSS and JavaScript modules from `host/ui`,
//! embedded in the binary at build time and served at `/ui/` (`/` leads
//! there). The files hold no data (the pages ask the API for everything, with
//! the token), so they are served without one; each carries an ETag, is sent
//! gzipped to browsers that take it, and with a policy that lets a page reach
//! this daemon only.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

#[derive(rust_embed::RustEmbed)]
#[folder = "ui/"]
struct Files;

/// Only this daemon, no inline scripts, never in a frame.
const POLICY: &str = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'";

/// One file, ready to send.
struct Asset {
    kind: &'static str,
    etag: String,
    plain: Vec<u8>,
    gzipped: Option<Vec<u8>>,
}

/// Every file, compressed once when the router is made (a few tens of KiB).
fn assets() -> HashMap<String, Asset> {
    Files::iter()
        .filter_map(|path| {
            let found = Files::get(&path)?;
            let etag: String = found
                .metadata
                .sha256_hash()
                .iter()
                .take(12)
                .map(|byte| format!("{byte:02x}"))
                .collect();
            let kind = kind_of(&path);
            let plain = found.data.into_owned();
            let gzipped = kind.starts_with("text/").then(|| gzip(&plain)).flatten();
            let asset = Asset {
                kind,
                etag: format!("\"{etag}\""),
                plain,
                gzipped,
            };
            Some((path.into_owned(), asset))
        })
        .collect()
}

fn gzip(data: &[u8]) -> Option<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(data).ok()?;
    encoder.finish().ok()
}

fn kind_of(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, extension)| extension) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("png") => "image/png",
        Some("svg") => "image/svg+xml",
        _ => "application/octet-stream",
    }
}

pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let assets = Arc::new(assets());
    let index = assets.clone();
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route(
            "/ui/",
            get(|headers: HeaderMap| async move { send(&index, "index.html", &headers) }),
        )
        .route(
            "/ui/{*file}",
            get(|Path(path): Path<String>, headers: HeaderMap| async move {
                send(&assets, &path, &headers)
            }),
        )
}

/// Whether `path` is the dashboard's (open without the token: no data there).
pub fn is_ui_path(path: &str) -> bool {
    path == "/" || path == "/ui" || path.starts_with("/ui/")
}

fn send(assets: &HashMap<String, Asset>, path: &str, request: &HeaderMap) -> Response {
    let Some(asset) = assets.get(path) else {
        return super::error::ApiError::new(
            StatusCode::NOT_FOUND,
            format!("the dashboard has no `{}`", path.escape_default()),
        )
        .into_response();
    };
    let cached = request
        .get(header::IF_NONE_MATCH)
        .is_some_and(|given| given.as_bytes() == asset.etag.as_bytes());
    let takes_gzip = request
        .get(header::ACCEPT_ENCODING)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|accepted| {
            accepted
                .split(',')
                .any(|coding| coding.trim().starts_with("gzip"))
        });
    let gzipped = asset.gzipped.as_ref().filter(|_| takes_gzip);
    let mut response = match (cached, gzipped) {
        (true, _) => StatusCode::NOT_MODIFIED.into_response(),
        (false, Some(body)) => body.clone().into_response(),
        (false, None) => asset.plain.clone().into_response(),
    };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.kind));
    if gzipped.is_some() && !cached {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    // Revalidated each time (a new nanny may bring new files), cheap with the ETag.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Ok(value) = HeaderValue::from_str(&asset.etag) {
        headers.insert(header::ETAG, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_has_a_type_a_tag_and_text_is_gzipped() {
        let assets = assets();
        let index = assets.get("index.html").expect("index.html is embedded");
        assert_eq!(index.kind, "text/html; charset=utf-8");
        let gzipped = index.gzipped.as_ref().expect("text is gzipped");
        let mut plain = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gzipped[..]), &mut plain)
            .unwrap();
        assert_eq!(plain, index.plain);
        for (path, asset) in &assets {
            assert!(asset.etag.len() > 2, "{path}");
            assert_ne!(asset.kind, "application/octet-stream", "{path}");
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_str(&index.etag).unwrap(),
        );
        assert_eq!(
            send(&assets, "index.html", &headers).status(),
            StatusCode::NOT_MODIFIED
        );
        assert_eq!(
            send(&assets, "../Cargo.toml", &HeaderMap::new()).status(),
            StatusCode::NOT_FOUND
        );
    }
}
