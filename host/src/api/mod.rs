//! The control API: axum routes over the supervisor, with auth, JSON errors and a
//! generated OpenAPI document. Handlers are small; the supervisor does the work.

mod auth;
mod error;
mod nodes;
mod openapi;
mod serve;
mod services;
mod streams;
mod system;
mod ui;
pub mod views;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::watch;

pub use auth::{Access, ApiKeys, CLIENT_HEADER};
pub use error::{ApiError, ErrorBody};
pub use openapi::ApiDoc;
pub use serve::{serve, ConnectionLimits};

use crate::plugin::PluginInfo;
use crate::supervise::Supervisor;

/// The most a request body may hold; no route takes more than a few bytes.
const BODY_LIMIT: usize = 64 * 1024;

/// What every handler sees.
pub struct ApiState {
    pub supervisor: Arc<Supervisor>,
    pub plugins: Vec<PluginInfo>,
    pub started: Instant,
    pub listen: SocketAddr,
    pub access: Access,
    /// Turns true when the daemon shuts down: event streams end then.
    pub closing: watch::Receiver<bool>,
    /// The ready callback needs no daemon token: it is rate-limited instead.
    pub ready_calls: RateLimit,
    /// Re-reads the configuration and applies it (`POST /v1/reload`); `None`
    /// where the supervisor was not made from a file.
    pub reload: Option<ReloadHook>,
    /// The OpenAI-compatible routes on the same listener.
    pub gateway: Arc<crate::gateway::Gateway>,
    /// The models on this machine's disks (`[catalog]`).
    pub catalog: crate::catalog::Shelf,
    /// The other nodes, when this one is in a cluster.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// How the API asks for a reload: the daemon knows where its configuration is.
pub type ReloadHook = Arc<
    dyn Fn() -> futures_util::future::BoxFuture<
            'static,
            Result<crate::supervise::ReloadReport, String>,
        > + Send
        + Sync,
>;

/// The ready callback's limit, shared by every request.
pub struct RateLimit(std::sync::Mutex<crate::rate::TokenBucket>);

impl RateLimit {
    /// Whether one more call may go through now.
    pub fn allow(&self) -> bool {
        crate::locks::lock(&self.0).take()
    }
}

impl Default for RateLimit {
    /// The ready callback's: a backend calls it once per launch.
    fn default() -> Self {
        Self(std::sync::Mutex::new(crate::rate::TokenBucket::new(40, 20)))
    }
}

/// Every route, behind the auth guard: the control routes with errors as JSON,
/// and the gateway's, whose backends' own answers pass through untouched.
pub fn router(state: Arc<ApiState>) -> Router {
    let gateway = crate::gateway::routes::router(state.gateway.clone());
    let control = Router::new()
        .route("/health", get(system::health))
        .route("/metrics", get(system::metrics))
        .route("/openapi.json", get(system::openapi))
        .route("/v1/info", get(system::info))
        .route("/v1/plugins", get(system::plugins))
        .route("/v1/gpus", get(system::gpus))
        .route("/v1/reload", post(system::reload))
        .route("/v1/models", get(services::all_models))
        .route("/v1/catalog", get(services::catalog))
        .route("/v1/events", get(streams::events))
        .route("/v1/services", get(services::list))
        .route("/v1/services/{name}", get(services::one))
        .route("/v1/services/{name}/start", post(services::start))
        .route("/v1/services/{name}/stop", post(services::stop))
        .route("/v1/services/{name}/restart", post(services::restart))
        .route("/v1/services/{name}/ready", post(services::ready))
        .route("/v1/services/{name}/logs", get(streams::logs))
        .route("/v1/services/{name}/models", get(services::models))
        .route("/v1/services/{name}/config", get(services::config))
        .route("/v1/nodes", get(nodes::list))
        .route(
            "/v1/nodes/{node}/services/{name}/{action}",
            post(nodes::act),
        )
        .merge(ui::router())
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::map_response(error::as_json))
        .with_state(state.clone());
    // The MCP server's tools call the control routes in-process (they are
    // past the guard already: `/mcp` itself is behind it).
    let mcp = crate::mcp::http_service(
        Arc::new(InProcess(control.clone())),
        state.listen,
        state.closing.clone(),
    );
    control
        .merge(gateway)
        .route_service("/mcp", mcp)
        .layer(axum::middleware::from_fn_with_state(state, auth::guard))
}

/// The control routes answering the MCP server's calls without a socket.
struct InProcess(Router);

/// The most of one in-process answer the MCP server reads.
const MCP_ANSWER_LIMIT: usize = 16 << 20;

impl crate::mcp::Daemon for InProcess {
    fn call(
        &self,
        post: bool,
        path: String,
    ) -> futures_util::future::BoxFuture<'static, Result<crate::mcp::Answer, String>> {
        use tower_service::Service;
        let mut router = self.0.clone();
        Box::pin(async move {
            let method = if post {
                axum::http::Method::POST
            } else {
                axum::http::Method::GET
            };
            let request = axum::http::Request::builder()
                .method(method)
                .uri(&path)
                .body(axum::body::Body::empty())
                .map_err(|error| format!("`{}` is no request: {error}", path.escape_default()))?;
            let response = router
                .call(request)
                .await
                .map_err(|error| error.to_string())?;
            let status = response.status().as_u16();
            let body = axum::body::to_bytes(response.into_body(), MCP_ANSWER_LIMIT)
                .await
                .map_err(|error| format!("the answer could not be read: {error}"))?;
            Ok(crate::mcp::Answer {
                status,
                body: body.to_vec(),
            })
        })
    }
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::NOT_FOUND,
        format!(
            "no route `{}`; GET /openapi.json lists them",
            uri.path().escape_default()
        ),
    )
}
