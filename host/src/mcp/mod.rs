//! nanny as an MCP server (with `rmcp`, the official SDK): tools and resources
//! that an assistant uses to see and steer services. Every tool is one or two
//! calls of the control API, through a [`Daemon`]: in the daemon itself the
//! API's router answers in-process (`/mcp`), in `nanny mcp` (stdio) a running
//! daemon answers over HTTP. Either way a tool says what the API says, its
//! error messages included.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, ContentBlock, ListResourceTemplatesResult, ListResourcesResult,
    PaginatedRequestParams, ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult,
    Resource, ResourceContents, ResourceTemplate, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{schemars, tool, tool_handler, tool_router, ErrorData, RoleServer, ServerHandler};
use serde::Deserialize;
use serde_json::Value;

use crate::names::checked;

/// One answer of the control API.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// The control API, wherever it answers. `path` includes the query.
pub trait Daemon: Send + Sync + 'static {
    fn call(&self, post: bool, path: String) -> BoxFuture<'static, Result<Answer, String>>;
}

/// The MCP server: its tools and resources over a [`Daemon`].
#[derive(Clone)]
pub struct NannyMcp {
    daemon: Arc<dyn Daemon>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ServiceFilter {
    /// Only services in this state: `ready`, `stopped`, `starting`, `failed`, `backoff`, `waiting`, …
    pub state: Option<String>,
    /// Only services of this backend: `vllm`, `llama-cpp`, `command`, `container`, `mock`, …
    pub backend: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ServiceName {
    /// The service's name, as `list_services` gives it.
    pub name: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct StartRequest {
    /// The service's name.
    pub name: String,
    /// Take its GPUs even from the services that hold them (they are stopped).
    pub force: Option<bool>,
    /// Answer once it is ready (or has failed) rather than at once; default true.
    pub wait: Option<bool>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct StopRequest {
    /// The service's name.
    pub name: String,
    /// Answer once its processes are gone rather than at once; default true.
    pub wait: Option<bool>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct LogsRequest {
    /// The service's name.
    pub name: String,
    /// How many of the last lines to read (default 100, at most 10000).
    pub tail: Option<u32>,
    /// Only lines containing this text (case-insensitive).
    pub grep: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct EventsRequest {
    /// Only changes at or after this time (Unix milliseconds).
    pub since_unix_ms: Option<u64>,
    /// Only this service's changes.
    pub service: Option<String>,
    /// At most this many, the latest (default 50).
    pub last: Option<u32>,
}

/// What a tool answers: the API's JSON, or its error as a tool error.
fn answered(outcome: Result<Value, String>) -> CallToolResult {
    match outcome {
        Ok(value) => CallToolResult::success(vec![ContentBlock::text(
            serde_json::to_string_pretty(&value).unwrap_or_else(|_| value.to_string()),
        )]),
        Err(message) => CallToolResult::error(vec![ContentBlock::text(message)]),
    }
}

impl NannyMcp {
    pub fn new(daemon: Arc<dyn Daemon>) -> Self {
        Self { daemon }
    }

    /// The API's answer when it is a success; else its error message.
    async fn body(&self, post: bool, path: String) -> Result<Vec<u8>, String> {
        let answer = self.daemon.call(post, path).await?;
        if (200..300).contains(&answer.status) {
            return Ok(answer.body);
        }
        let message = serde_json::from_slice::<Value>(&answer.body)
            .ok()
            .and_then(|value| value["error"]["message"].as_str().map(str::to_string));
        Err(message.unwrap_or_else(|| format!("the daemon answered {}", answer.status)))
    }

    /// The API's JSON answer, or its error message.
    async fn json(&self, post: bool, path: String) -> Result<Value, String> {
        let body = self.body(post, path).await?;
        serde_json::from_slice(&body)
            .map_err(|error| format!("the daemon's answer made no sense: {error}"))
    }

    /// A tool on one service: its API path made from the checked name.
    async fn on_service(
        &self,
        name: &str,
        post: bool,
        path: impl FnOnce(&str) -> String,
    ) -> CallToolResult {
        answered(match checked(name) {
            Ok(name) => self.json(post, path(name)).await,
            Err(error) => Err(error),
        })
    }

    /// The state changes the daemon remembers, as `/v1/events` sends them
    /// (`follow=false`: the stream ends after them).
    async fn events(&self, request: &EventsRequest) -> Result<Value, String> {
        let last = request.last.unwrap_or(50).min(1000);
        let mut path = format!(
            "/v1/events?follow=false&last={}",
            if request.service.is_some() {
                1000
            } else {
                last
            }
        );
        if let Some(since) = request.since_unix_ms {
            path.push_str(&format!("&since_unix_ms={since}"));
        }
        let service = match &request.service {
            Some(name) => Some(checked(name)?.to_string()),
            None => None,
        };
        let body = self.body(false, path).await?;
        let text = String::from_utf8_lossy(&body);
        let mut events: Vec<Value> = text
            .lines()
            .filter_map(|line| line.strip_prefix("data:"))
            .filter_map(|data| serde_json::from_str(data.trim()).ok())
            .filter(|event: &Value| {
                service
                    .as_deref()
                    .is_none_or(|service| event["service"] == service)
            })
            .collect();
        let keep = events.len().saturating_sub(last as usize);
        events.drain(..keep);
        Ok(Value::Array(events))
    }

    /// Why a service is in its state, in a sentence or two: its reason, last
    /// failure and back-off, and who holds the GPUs it waits for.
    async fn explanation(&self, name: &str) -> Result<Value, String> {
        let name = checked(name)?;
        let service = self.json(false, format!("/v1/services/{name}")).await?;
        let state = service["state"].as_str().unwrap_or("unknown").to_string();
        let mut why = vec![format!("`{name}` is {state}")];
        if let Some(reason) = service["reason"].as_str() {
            why.push(format!("because {reason}"));
        }
        if let Some(failure) = service["last_failure"].as_str() {
            why.push(format!("its last failure: {failure}"));
        }
        if let Some(retry) = service["next_retry_unix_ms"].as_u64() {
            let now = crate::supervise::unix_ms(std::time::SystemTime::now());
            why.push(format!(
                "it retries in {:.1}s (restart {} so far)",
                retry.saturating_sub(now) as f64 / 1000.0,
                service["restarts"]
            ));
        }
        // A service that waits for GPUs learns who has them.
        let mut holders = Vec::new();
        if let Ok(gpus) = self.json(false, "/v1/gpus".into()).await {
            for gpu in gpus["devices"].as_array().into_iter().flatten() {
                for lease in gpu["leases"].as_array().into_iter().flatten() {
                    if let Some(holder) = lease["service"].as_str() {
                        if holder != name {
                            holders.push(format!("GPU {} is held by `{holder}`", gpu["index"]));
                        }
                    }
                }
            }
        }
        if matches!(state.as_str(), "waiting" | "failed" | "backoff") && !holders.is_empty() {
            why.push(format!(
                "{}; `start_service` with `force: true` takes the GPUs from their holders",
                holders.join(", ")
            ));
        }
        Ok(
            serde_json::json!({ "service": name, "state": state, "explanation": why.join("; "), "status": service }),
        )
    }
}

#[tool_router]
impl NannyMcp {
    #[tool(
        description = "List the services nanny supervises with their state, port, GPUs, restarts and models, and the MCP endpoint of those that are MCP servers themselves. Optionally only those in one state or of one backend.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn list_services(&self, Parameters(filter): Parameters<ServiceFilter>) -> CallToolResult {
        let listed = self
            .json(false, "/v1/services".into())
            .await
            .map(|services| {
                let kept = services
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|service| {
                        filter
                            .state
                            .as_deref()
                            .is_none_or(|state| service["state"] == state)
                    })
                    .filter(|service| {
                        filter
                            .backend
                            .as_deref()
                            .is_none_or(|backend| service["backend"] == backend)
                    })
                    .cloned()
                    .collect();
                Value::Array(kept)
            });
        answered(listed)
    }

    #[tool(
        description = "One service in detail: state and since when, pid or container, port, GPUs, restarts, last failure, the reason for a waiting/failed/backoff state, loading progress, models.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn get_service(
        &self,
        Parameters(ServiceName { name }): Parameters<ServiceName>,
    ) -> CallToolResult {
        self.on_service(&name, false, |name| format!("/v1/services/{name}"))
            .await
    }

    #[tool(
        description = "Start a service (and what it depends on). By default waits until it is ready or has failed. When its GPUs are held by others this fails naming the holder; `force: true` stops the holder and takes them.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn start_service(&self, Parameters(request): Parameters<StartRequest>) -> CallToolResult {
        let (wait, force) = (request.wait.unwrap_or(true), request.force.unwrap_or(false));
        self.on_service(&request.name, true, |name| {
            format!("/v1/services/{name}/start?wait={wait}&force={force}")
        })
        .await
    }

    #[tool(
        description = "Stop a service: its processes (or container) are stopped gracefully, then killed after its grace period. By default answers once they are gone.",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn stop_service(&self, Parameters(request): Parameters<StopRequest>) -> CallToolResult {
        let wait = request.wait.unwrap_or(true);
        self.on_service(&request.name, true, |name| {
            format!("/v1/services/{name}/stop?wait={wait}")
        })
        .await
    }

    #[tool(
        description = "Restart a service (stop, then start with what it depends on); by default answers once it is ready again or has failed. Requests in flight to it are cut.",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn restart_service(
        &self,
        Parameters(request): Parameters<StopRequest>,
    ) -> CallToolResult {
        let wait = request.wait.unwrap_or(true);
        self.on_service(&request.name, true, |name| {
            format!("/v1/services/{name}/restart?wait={wait}")
        })
        .await
    }

    #[tool(
        description = "A service's recent output (stdout and stderr, and nanny's own notes), newest last; `grep` keeps the lines containing a text.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn get_logs(&self, Parameters(request): Parameters<LogsRequest>) -> CallToolResult {
        let lines = async {
            let name = checked(&request.name)?;
            let tail = request.tail.unwrap_or(100).min(10_000);
            let logs = self
                .json(false, format!("/v1/services/{name}/logs?tail={tail}"))
                .await?;
            let needle = request.grep.as_deref().map(str::to_lowercase);
            let kept: Vec<Value> = logs["lines"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|line| {
                    needle.as_deref().is_none_or(|needle| {
                        line["text"]
                            .as_str()
                            .is_some_and(|text| text.to_lowercase().contains(needle))
                    })
                })
                .cloned()
                .collect();
            Ok(serde_json::json!({ "service": name, "lines": kept }))
        };
        answered(lines.await)
    }

    #[tool(
        description = "Every model the gateway routes, running or not, with the service that serves it and that service's state. Any of them can be asked for at the gateway's OpenAI address; a stopped one is started by its first request.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn list_models(&self) -> CallToolResult {
        answered(self.json(false, "/v1/models".into()).await)
    }

    #[tool(
        description = "The GPUs: memory used and total, and which service leases each.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn list_gpus(&self) -> CallToolResult {
        answered(self.json(false, "/v1/gpus".into()).await)
    }

    #[tool(
        description = "Recent state changes of services (started, ready, failed, stopped by idleness, evicted for a swap…), each with its reason, oldest first.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn recent_events(
        &self,
        Parameters(request): Parameters<EventsRequest>,
    ) -> CallToolResult {
        answered(self.events(&request).await)
    }

    #[tool(
        description = "Why a service is in its state: its reason, last failure, back-off, and who holds the GPUs it waits for, with what to do about it.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn explain(
        &self,
        Parameters(ServiceName { name }): Parameters<ServiceName>,
    ) -> CallToolResult {
        answered(self.explanation(&name).await)
    }
}

/// Resources by URI: what each reads from the API.
fn resource_path(uri: &str) -> Result<String, String> {
    let rest = uri
        .strip_prefix("nanny://")
        .ok_or_else(|| format!("`{}` is not a nanny:// resource", uri.escape_default()))?;
    match rest.split('/').collect::<Vec<_>>().as_slice() {
        ["services"] => Ok("/v1/services".into()),
        ["services", name] => Ok(format!("/v1/services/{}", checked(name)?)),
        ["services", name, "logs"] => Ok(format!("/v1/services/{}/logs?tail=200", checked(name)?)),
        ["gpus"] => Ok("/v1/gpus".into()),
        ["events"] => Ok(String::new()),
        _ => Err(format!("no resource `{}`", uri.escape_default())),
    }
}

#[tool_handler]
impl ServerHandler for NannyMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .build(),
        )
        .with_instructions(
            "nanny supervises model servers (vLLM, llama.cpp, …) on this machine: list, start and stop services, read their logs and events, see GPUs, and find out why a service is not ready.",
        )
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let json = |uri: &str, name: &str, description: &str| {
            Resource::new(uri, name)
                .with_description(description)
                .with_mime_type("application/json")
        };
        let mut resources = vec![
            json(
                "nanny://services",
                "services",
                "Every service and its state",
            ),
            json("nanny://gpus", "gpus", "The GPUs and their leases"),
            json(
                "nanny://events",
                "events",
                "The latest state changes, with reasons",
            ),
        ];
        if let Ok(services) = self.json(false, "/v1/services".into()).await {
            for name in services
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s["name"].as_str())
            {
                resources.push(json(
                    &format!("nanny://services/{name}"),
                    name,
                    "One service",
                ));
                resources.push(json(
                    &format!("nanny://services/{name}/logs"),
                    &format!("{name} logs"),
                    "Its last 200 lines of output",
                ));
            }
        }
        Ok(ListResourcesResult::with_all_items(resources))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        Ok(ListResourceTemplatesResult::with_all_items(vec![
            ResourceTemplate::new("nanny://services/{name}", "service")
                .with_description("One service")
                .with_mime_type("application/json"),
            ResourceTemplate::new("nanny://services/{name}/logs", "service logs")
                .with_description("A service's last 200 lines of output")
                .with_mime_type("application/json"),
        ]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let uri = request.uri;
        let path =
            resource_path(&uri).map_err(|message| ErrorData::invalid_params(message, None))?;
        let read = if path.is_empty() {
            self.events(&EventsRequest {
                since_unix_ms: None,
                service: None,
                last: Some(100),
            })
            .await
        } else {
            self.json(false, path).await
        };
        let value = read.map_err(|message| ErrorData::invalid_params(message, None))?;
        let text = serde_json::to_string_pretty(&value).unwrap_or_else(|_| value.to_string());
        let contents = ResourceContents::TextResourceContents {
            uri,
            mime_type: Some("application/json".into()),
            text,
            meta: None,
        };
        Ok(ReadResourceResult::new(vec![contents]).into())
    }
}

/// `/mcp`: the server over Streamable HTTP. Its allowed `Host`s follow
/// `listen`: loopback names on a loopback listener; that address and the
/// loopback names on another; any on `0.0.0.0`/`[::]`, where the daemon's
/// token guards every request. It ends its sessions when `closing` turns true.
pub fn http_service(
    daemon: Arc<dyn Daemon>,
    listen: std::net::SocketAddr,
    mut closing: tokio::sync::watch::Receiver<bool>,
) -> StreamableHttpService<NannyMcp, LocalSessionManager> {
    let mut config = StreamableHttpServerConfig::default();
    let ip = listen.ip();
    if ip.is_unspecified() {
        config = config.disable_allowed_hosts();
    } else if !ip.is_loopback() {
        let mut hosts = config.allowed_hosts.clone();
        hosts.push(ip.to_string());
        config = config.with_allowed_hosts(hosts);
    }
    let cancel = config.cancellation_token.clone();
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            let _ = closing.wait_for(|closing| *closing).await;
            cancel.cancel();
        });
    }
    StreamableHttpService::new(
        move || Ok(NannyMcp::new(daemon.clone())),
        LocalSessionManager::default().into(),
        config,
    )
}

/// `nanny mcp`: the server on standard input and output, until the client
/// closes them.
pub async fn serve_stdio(daemon: Arc<dyn Daemon>) -> Result<(), String> {
    use rmcp::ServiceExt;
    let running = NannyMcp::new(daemon)
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|error| format!("the MCP session could not begin: {error}"))?;
    running
        .waiting()
        .await
        .map(|_| ())
        .map_err(|error| format!("the MCP session ended badly: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_name_api_paths_and_nothing_else() {
        assert_eq!(resource_path("nanny://services").unwrap(), "/v1/services");
        assert_eq!(
            resource_path("nanny://services/chat/logs").unwrap(),
            "/v1/services/chat/logs?tail=200"
        );
        for bad in [
            "nanny://services/../etc",
            "nanny://services/a/b/c",
            "file:///etc/passwd",
            "nanny://services/A?x",
        ] {
            assert!(resource_path(bad).is_err(), "{bad}");
        }
    }
}
