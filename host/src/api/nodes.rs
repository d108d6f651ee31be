//! `/v1/nodes…`: the cluster as this node sees it, and acting on another
//! node's services through that node's own API.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::views::ActionQuery;
use super::ApiState;
use crate::cluster::{NodeCallError, NodeView};

type Api = State<Arc<ApiState>>;

/// Every node of the cluster: this one first, then the others as etcd last
/// said; none when this node is in no cluster.
#[utoipa::path(get, path = "/v1/nodes", tag = "cluster",
    responses((status = 200, body = [NodeView])))]
pub async fn list(State(api): Api) -> Json<Vec<NodeView>> {
    Json(
        api.cluster
            .as_ref()
            .map(|cluster| cluster.nodes())
            .unwrap_or_default(),
    )
}

/// What can be done to a service.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Start,
    Stop,
    Restart,
}

/// Starts, stops or restarts a service on any node: this one's directly,
/// another's through that node's API (with the cluster's token); the answer
/// is that node's.
#[utoipa::path(post, path = "/v1/nodes/{node}/services/{name}/{action}", tag = "cluster",
    params(
        ("node" = String, Path, description = "The node's name", pattern = r"^[a-z0-9][a-z0-9_.-]{0,62}$"),
        ("name" = String, Path, description = "The service's name", pattern = r"^[a-z0-9][a-z0-9_.-]{0,62}$"),
        ("action" = Action, Path, description = "What to do"),
        ActionQuery),
    responses((status = 200, description = "The service now, as its node says", body = super::views::ServiceView),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 424, body = ErrorBody), (status = 502, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn act(
    State(api): Api,
    Path((node, name, action)): Path<(String, String, Action)>,
    Query(query): Query<ActionQuery>,
) -> Result<Response, ApiError> {
    let node = crate::names::checked(&node).map_err(ApiError::bad_request)?;
    let name = super::services::checked(&name)?;
    let Some(cluster) = &api.cluster else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "this nanny is in no cluster (`[cluster] etcd` is not set)",
        ));
    };
    let verb = match action {
        Action::Start => "start",
        Action::Stop => "stop",
        Action::Restart => "restart",
    };
    if node == cluster.node() {
        let (name, state) = (Path(name.to_string()), State(api.clone()));
        let here = match action {
            Action::Start => super::services::start(state, name, Query(query)).await,
            Action::Stop => super::services::stop(state, name, Query(query)).await,
            Action::Restart => super::services::restart(state, name, Query(query)).await,
        };
        return here.map(IntoResponse::into_response);
    }
    let mut path = format!("/v1/services/{name}/{verb}");
    let flags: Vec<String> = [("wait", query.wait), ("force", query.force)]
        .into_iter()
        .filter_map(|(flag, value)| Some(format!("{flag}={}", value?)))
        .collect();
    if !flags.is_empty() {
        path = format!("{path}?{}", flags.join("&"));
    }
    let (status, body) = cluster
        .call_node(node, Method::POST, &path)
        .await
        .map_err(|error| match error {
            NodeCallError::Unknown(_) => ApiError::new(StatusCode::NOT_FOUND, error.to_string()),
            NodeCallError::Unreachable(..) => {
                ApiError::new(StatusCode::BAD_GATEWAY, error.to_string())
            }
        })?;
    Ok((status, [(header::CONTENT_TYPE, "application/json")], body).into_response())
}
