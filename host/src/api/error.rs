//! Errors as values: every failure is `{"error": {"code", "message"}}` with its status.

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::supervise::SuperviseError;

/// What every error response carries.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable word for programs: `not_found`, `bad_request`, `unauthorized`,
    /// `forbidden`, `conflict`, `dependency_failed`, `shutting_down`, …
    pub code: String,
    /// A sentence for people.
    pub message: String,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }
}

/// The `code` for a status.
fn code_of(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::CONFLICT => "conflict",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::SERVICE_UNAVAILABLE => "shutting_down",
        StatusCode::FAILED_DEPENDENCY => "dependency_failed",
        StatusCode::TOO_MANY_REQUESTS => "too_many_requests",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid_configuration",
        StatusCode::URI_TOO_LONG => "uri_too_long",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "headers_too_large",
        status if status.is_client_error() => "bad_request",
        _ => "internal",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: code_of(self.status).into(),
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<SuperviseError> for ApiError {
    fn from(error: SuperviseError) -> Self {
        let status = match error {
            SuperviseError::UnknownService(_) => StatusCode::NOT_FOUND,
            SuperviseError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            SuperviseError::GpuConflict(_) => StatusCode::CONFLICT,
            SuperviseError::Cycle(_) | SuperviseError::UnknownDependency { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let mut message = error.to_string();
        if let SuperviseError::GpuConflict(conflict) = &error {
            if !conflict.holders.is_empty() {
                let holders: Vec<String> = conflict
                    .holders
                    .iter()
                    .map(|holder| format!("`{holder}`"))
                    .collect();
                message.push_str(&format!(
                    "; held by {}: `force` (`nanny start --force`, `?force=true`) stops them and takes the GPUs",
                    holders.join(", ")
                ));
            }
        }
        Self::new(status, message)
    }
}

/// axum's own rejections (a bad query, a wrong method, an unknown route) come as
/// text; this turns every error that is not JSON yet into the JSON shape.
pub async fn as_json(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_string())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_string()
    } else {
        text
    };
    let mut json = ApiError::new(status, message).into_response();
    // Keep what axum said beside the body (`Allow` on a 405, say).
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            json.headers_mut().insert(name.clone(), value.clone());
        }
    }
    json.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let (parts, body) = json.into_parts();
    Response::from_parts(parts, Body::new(body))
}
