//! The daemon itself: health, info, plugins, metrics and the OpenAPI document.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use utoipa::OpenApi;

use super::error::{ApiError, ErrorBody};
use super::views::{HealthView, InfoView, PluginView, ReloadView};
use super::ApiState;
use crate::gpu::GpuSnapshot;
use crate::supervise::State as ServiceState;

/// Whether the daemon answers; no token needed.
#[utoipa::path(get, path = "/health", tag = "daemon", security(()),
    responses((status = 200, body = HealthView),
        (status = 503, description = "Shutting down", body = HealthView)))]
pub async fn health(State(api): State<Arc<ApiState>>) -> impl IntoResponse {
    if api.supervisor.is_shutting_down() {
        let view = HealthView {
            status: "shutting_down".into(),
        };
        (StatusCode::SERVICE_UNAVAILABLE, Json(view))
    } else {
        (
            StatusCode::OK,
            Json(HealthView {
                status: "ok".into(),
            }),
        )
    }
}

/// Version, uptime and counts.
#[utoipa::path(get, path = "/v1/info", tag = "daemon", responses((status = 200, body = InfoView)))]
pub async fn info(State(api): State<Arc<ApiState>>) -> Json<InfoView> {
    let statuses = api.supervisor.statuses();
    let count = |wanted: fn(&ServiceState) -> bool| {
        statuses.iter().filter(|s| wanted(&s.state)).count() as u32
    };
    Json(InfoView {
        version: env!("CARGO_PKG_VERSION").into(),
        wit_version: crate::plugin::WIT_VERSION.into(),
        uptime_s: api.started.elapsed().as_secs_f64(),
        listen: api.listen.to_string(),
        instance: api.supervisor.instance().to_string(),
        services: statuses.len() as u32,
        ready: count(|state| *state == ServiceState::Ready),
        failed: count(|state| matches!(state, ServiceState::Failed { .. })),
        plugins: api.plugins.len() as u32,
        cluster: api.cluster.as_ref().map(|cluster| cluster.info()),
    })
}

/// The backend plugins this daemon loaded.
#[utoipa::path(get, path = "/v1/plugins", tag = "daemon",
    responses((status = 200, body = [PluginView])))]
pub async fn plugins(State(api): State<Arc<ApiState>>) -> Json<Vec<PluginView>> {
    Json(api.plugins.iter().map(PluginView::from).collect())
}

/// Re-reads the configuration file and the services directory and applies
/// them: new services added, removed ones stopped, changed ones restarted,
/// the rest untouched. A configuration with errors changes nothing.
#[utoipa::path(post, path = "/v1/reload", tag = "daemon",
    responses((status = 200, body = ReloadView),
        (status = 409, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn reload(State(api): State<Arc<ApiState>>) -> Result<Json<ReloadView>, ApiError> {
    let Some(reload) = &api.reload else {
        return Err(ApiError::conflict(
            "this daemon was not started from a configuration file",
        ));
    };
    if api.supervisor.is_shutting_down() {
        return Err(crate::supervise::SuperviseError::ShuttingDown.into());
    }
    match reload().await {
        Ok(report) => Ok(Json(ReloadView::from(report))),
        Err(message) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("the configuration was not applied: {message}"),
        )),
    }
}

/// The GPUs: memory used and total, leases and their holders, memory that
/// stopped services have not given back.
#[utoipa::path(get, path = "/v1/gpus", tag = "daemon",
    responses((status = 200, body = GpuSnapshot)))]
pub async fn gpus(State(api): State<Arc<ApiState>>) -> Json<GpuSnapshot> {
    Json(gpu_snapshot(&api).await)
}

async fn gpu_snapshot(api: &ApiState) -> GpuSnapshot {
    let Some(broker) = api.supervisor.gpus().cloned() else {
        return GpuSnapshot {
            source: "none".into(),
            devices: Vec::new(),
        };
    };
    // nvidia-smi takes a while to answer; not on the async threads.
    tokio::task::spawn_blocking(move || broker.snapshot())
        .await
        .unwrap_or(GpuSnapshot {
            source: "none".into(),
            devices: Vec::new(),
        })
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "daemon",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(State(api): State<Arc<ApiState>>) -> impl IntoResponse {
    let gpus = gpu_snapshot(&api).await;
    let statuses = api.supervisor.statuses();
    let (in_flight, queued) = api.gateway.load();
    let snapshot = crate::metrics::Snapshot {
        in_flight,
        queued,
        services_by_state: ServiceState::NAMES
            .iter()
            .map(|name| {
                (
                    *name,
                    statuses.iter().filter(|s| s.state.name() == *name).count(),
                )
            })
            .collect(),
        restarts: statuses
            .iter()
            .map(|s| (s.name.clone(), s.restarts))
            .collect(),
        gpus: gpus
            .devices
            .iter()
            .map(|device| crate::metrics::GpuFigures {
                index: device.index,
                uuid: device.uuid.clone(),
                memory_total_mib: device.memory_total_mib,
                memory_used_mib: device.memory_used_mib,
                leases: device.leases.len(),
            })
            .collect(),
        cluster: api.cluster.as_ref().map(|cluster| {
            let info = cluster.info();
            (
                info.state == crate::cluster::LinkState::Connected,
                info.nodes,
            )
        }),
    };
    let text = api.supervisor.metrics().render(&snapshot);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "daemon",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn openapi() -> impl IntoResponse {
    let document = super::openapi::ApiDoc::openapi();
    (
        [(header::CONTENT_TYPE, "application/json")],
        document.to_json().unwrap_or_default(),
    )
}
