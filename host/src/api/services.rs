//! `/v1/services…`: read services, steer them, and take their ready callbacks.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use tokio::sync::broadcast::{self, error::RecvError};

use super::error::{ApiError, ErrorBody};
use super::views::{ActionQuery, ListQuery, ModelList, ModelView, OpenAiModel, ServiceView};
use super::ApiState;
use crate::supervise::{State as ServiceState, StateChange};

type Api = State<Arc<ApiState>>;

/// The name from the path, if it is a name at all.
pub(super) fn checked(name: &str) -> Result<&str, ApiError> {
    crate::names::checked(name).map_err(ApiError::bad_request)
}

fn view(api: &ApiState, name: &str) -> Result<ServiceView, ApiError> {
    let view = ServiceView::from(&*api.supervisor.watch(name)?.borrow());
    Ok(with_mcp(api, view))
}

/// The view, with where nanny serves the service's MCP tools if it has any.
fn with_mcp(api: &ApiState, mut view: ServiceView) -> ServiceView {
    if api.supervisor.offers_mcp(&view.name) {
        view.mcp = Some(format!("/mcp/services/{}", view.name));
    }
    view
}

/// Every service, in dependency order; with `all=true`, then every other
/// node's (by node).
#[utoipa::path(get, path = "/v1/services", tag = "services", params(ListQuery),
    responses((status = 200, body = [ServiceView]), (status = 400, body = ErrorBody)))]
pub async fn list(State(api): Api, Query(query): Query<ListQuery>) -> Json<Vec<ServiceView>> {
    let statuses = api.supervisor.statuses();
    let mut listed: Vec<ServiceView> = statuses
        .iter()
        .map(|status| with_mcp(&api, ServiceView::from(status)))
        .collect();
    if let (Some(true), Some(cluster)) = (query.all, &api.cluster) {
        for node in cluster.others() {
            let name = &node.record.node;
            listed.extend(
                node.services
                    .iter()
                    .map(|service| ServiceView::elsewhere(name, service)),
            );
        }
    }
    Json(listed)
}

/// One service.
#[utoipa::path(get, path = "/v1/services/{name}", tag = "services",
    params(("name" = String, Path, description = "The service's name", pattern = r"^[a-z0-9][a-z0-9_.-]{0,62}$")),
    responses((status = 200, body = ServiceView),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn one(State(api): Api, Path(name): Path<String>) -> Result<Json<ServiceView>, ApiError> {
    Ok(Json(view(&api, checked(&name)?)?))
}

/// How a service was configured, as nanny resolved it: defaults filled in,
/// its port assigned; environment values and the backend's key hidden.
#[utoipa::path(get, path = "/v1/services/{name}/config", tag = "services",
    params(("name" = String, Path, description = "The service's name", pattern = r"^[a-z0-9][a-z0-9_.-]{0,62}$")),
    responses((status = 200, description = "The resolved configuration", body = Object),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn config(
    State(api): Api,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(api.supervisor.resolved_config(checked(&name)?)?))
}

/// The models a ready service serves, as its plugin read them.
#[utoipa::path(get, path = "/v1/services/{name}/models", tag = "services",
    params(("name" = String, Path, description = "The service's name", pattern = r"^[a-z0-9][a-z0-9_.-]{0,62}$")),
    responses((status = 200, body = [ModelView]),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn models(
    State(api): Api,
    Path(name): Path<String>,
) -> Result<Json<Vec<ModelView>>, ApiError> {
    Ok(Json(view(&api, checked(&name)?)?.models))
}

/// Every model clients can ask the gateway for, running or not, in OpenAI's
/// list shape (`owned_by` is the service; `status` its state); the catalog's
/// models no service claims are `available`, owned by `catalog`.
#[utoipa::path(get, path = "/v1/models", tag = "models",
    responses((status = 200, body = ModelList)))]
pub async fn all_models(State(api): Api) -> Json<ModelList> {
    let data = api
        .gateway
        .models()
        .into_iter()
        .map(|model| OpenAiModel {
            id: model.id,
            object: "model".into(),
            created: 0,
            owned_by: model.service,
            status: model.status,
            node: None,
        })
        .collect::<Vec<_>>();
    // Catalog models no service claims: servable, not served yet.
    let mut data = data;
    for id in api.catalog.ids() {
        if !data.iter().any(|listed| listed.id == id) {
            data.push(OpenAiModel {
                id,
                object: "model".into(),
                created: 0,
                owned_by: "catalog".into(),
                status: "available".into(),
                node: None,
            });
        }
    }
    // Then what other nodes serve, as the gateway routes: here first.
    for model in api.gateway.models_elsewhere() {
        if !data.iter().any(|listed| listed.id == model.id) {
            data.push(OpenAiModel {
                id: model.id,
                object: "model".into(),
                created: 0,
                owned_by: model.service,
                status: model.status,
                node: model.node,
            });
        }
    }
    Json(ModelList {
        object: "list".into(),
        data,
    })
}

/// The models the catalog found on this machine's disks (`[catalog]`), with
/// what their GGUF headers say, and what it could not read, per entry.
#[utoipa::path(get, path = "/v1/catalog", tag = "models",
    responses((status = 200, description = "`models` and `problems`", body = Object)))]
pub async fn catalog(State(api): Api) -> Json<crate::catalog::ModelCatalog> {
    Json(api.catalog.read().clone())
}

/// What a `?wait=true` action waits for.
#[derive(Clone, Copy)]
enum Target {
    /// Ready, or failed.
    Up,
    /// Launched anew, then ready or failed.
    Relaunched,
}

/// Waits on the event stream (a watch would coalesce the states in between).
/// A dependency that fails meanwhile ends the wait with 424, naming it: the
/// service would otherwise wait for it forever.
async fn wait_for(
    api: &ApiState,
    events: &mut broadcast::Receiver<StateChange>,
    name: &str,
    target: Target,
) -> Result<(), ApiError> {
    let requirements = api.supervisor.requirements(name);
    let mut relaunched = matches!(target, Target::Up);
    let settled =
        |state: &ServiceState| matches!(state, ServiceState::Ready | ServiceState::Failed { .. });
    if relaunched {
        if let Ok(status) = api.supervisor.watch(name) {
            if status.borrow().state == ServiceState::Ready {
                return Ok(());
            }
        }
    }
    loop {
        match events.recv().await {
            Ok(change) if change.service == name => {
                if matches!(change.to, ServiceState::Starting { .. }) {
                    relaunched = true;
                } else if relaunched && settled(&change.to) {
                    return Ok(());
                }
            }
            Ok(StateChange {
                service,
                to: ServiceState::Failed { reason },
                ..
            }) if requirements.contains(&service) => {
                return Err(ApiError::new(
                    StatusCode::FAILED_DEPENDENCY,
                    format!("`{name}` is waiting for {service}, which failed: {reason}"),
                ));
            }
            Ok(_) => {}
            Err(RecvError::Lagged(_)) => {
                let settled_now = api
                    .supervisor
                    .watch(name)
                    .is_ok_and(|status| settled(&status.borrow().state));
                if settled_now {
                    return Ok(());
                }
            }
            Err(RecvError::Closed) => return Ok(()),
        }
    }
}

/// Starts a service (and, first, what it depends on).
#[utoipa::path(post, path = "/v1/services/{name}/start", tag = "services",
    params(("name" = String, Path, description = "The service's name", pattern = r"^[a-z0-9][a-z0-9_.-]{0,62}$"), ActionQuery),
    responses((status = 200, description = "Asked (or, with wait, done); the service now", body = ServiceView),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 424, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn start(
    State(api): Api,
    Path(name): Path<String>,
    Query(query): Query<ActionQuery>,
) -> Result<Json<ServiceView>, ApiError> {
    bring_up(&api, &name, query, Target::Up).await
}

/// Stops a service and waits until its processes are gone (unless `wait=false`).
#[utoipa::path(post, path = "/v1/services/{name}/stop", tag = "services",
    params(("name" = String, Path, description = "The service's name", pattern = r"^[a-z0-9][a-z0-9_.-]{0,62}$"), ActionQuery),
    responses((status = 200, description = "Asked (or, with wait, done); the service now", body = ServiceView),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 415, body = ErrorBody)))]
pub async fn stop(
    State(api): Api,
    Path(name): Path<String>,
    Query(query): Query<ActionQuery>,
) -> Result<Json<ServiceView>, ApiError> {
    let name = checked(&name)?;
    let current = view(&api, name)?;
    if query.wait.unwrap_or(false) {
        api.supervisor.stop(name).await?;
    } else {
        let supervisor = api.supervisor.clone();
        let owned = name.to_string();
        tokio::spawn(async move { supervisor.stop(&owned).await });
        return Ok(Json(current));
    }
    Ok(Json(view(&api, name)?))
}

/// Stops and starts a service again (and starts what it depends on, if down).
#[utoipa::path(post, path = "/v1/services/{name}/restart", tag = "services",
    params(("name" = String, Path, description = "The service's name", pattern = r"^[a-z0-9][a-z0-9_.-]{0,62}$"), ActionQuery),
    responses((status = 200, description = "Asked (or, with wait, done); the service now", body = ServiceView),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 424, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn restart(
    State(api): Api,
    Path(name): Path<String>,
    Query(query): Query<ActionQuery>,
) -> Result<Json<ServiceView>, ApiError> {
    bring_up(&api, &name, query, Target::Relaunched).await
}

/// `start` and `restart`: ask, then (with `wait`) follow the events to the end.
async fn bring_up(
    api: &ApiState,
    name: &str,
    query: ActionQuery,
    target: Target,
) -> Result<Json<ServiceView>, ApiError> {
    let name = checked(name)?;
    let verb = match target {
        Target::Up => "start",
        Target::Relaunched => "restart",
    };
    if api.supervisor.watch(name)?.borrow().state == ServiceState::Stopping {
        return Err(ApiError::conflict(format!(
            "`{name}` is stopping; {verb} it once it has stopped"
        )));
    }
    let mut events = api.supervisor.subscribe();
    match target {
        Target::Up if query.force.unwrap_or(false) => {
            api.supervisor.start_evicting(name).await?;
        }
        Target::Up => api.supervisor.start(name).await?,
        Target::Relaunched => api.supervisor.restart(name).await?,
    }
    if query.wait.unwrap_or(false) {
        wait_for(api, &mut events, name, target).await?;
    }
    Ok(Json(view(api, name)?))
}

/// A backend announcing that it is ready: `POST $NANNY_READY_URL` with
/// `Authorization: Bearer $NANNY_READY_TOKEN`.
#[utoipa::path(post, path = "/v1/services/{name}/ready", tag = "services",
    params(("name" = String, Path, description = "The service's name", pattern = r"^[a-z0-9][a-z0-9_.-]{0,62}$")),
    security(("ready_token" = [])),
    responses((status = 204, description = "Marked ready"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn ready(
    State(api): Api,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let name = checked(&name)?;
    if !api.ready_calls.allow() {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too many ready callbacks; a backend calls once per launch",
        ));
    }
    let Some(token) = super::auth::bearer(&headers) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "send `Authorization: Bearer $NANNY_READY_TOKEN`",
        ));
    };
    // An unknown service gets the same answer as a wrong token: the open route
    // must not tell which services exist.
    match api.supervisor.mark_ready(name, token).await {
        Ok(true) => Ok(StatusCode::NO_CONTENT),
        Ok(false) | Err(crate::supervise::SuperviseError::UnknownService(_)) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "that is not the ready token of a current launch",
        )),
        Err(error) => Err(error.into()),
    }
}
