//! The streaming routes: a service's log (`follow=true`) and every state change,
//! as Server-Sent Events that end when the daemon shuts down.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::{stream, Stream, StreamExt};
use serde::Serialize;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;

use super::error::{ApiError, ErrorBody};
use super::services::checked;
use super::views::{EventView, EventsQuery, LogLineView, LogTail, LogsQuery, StreamEvent};
use super::ApiState;
use crate::supervise::LogLine;

/// The most lines one request may ask for.
const MAX_TAIL: i32 = 10_000;

fn line_view(line: &LogLine) -> LogLineView {
    LogLineView {
        at_unix_ms: line.at_unix_ms,
        stream: line.stream.to_string(),
        text: line.text.clone(),
    }
}

/// Items from `feed` (missed ones skipped) until the daemon shuts down.
fn live<T: Clone + Send + 'static>(
    api: &ApiState,
    feed: broadcast::Receiver<T>,
) -> impl Stream<Item = T> + Send + 'static {
    let mut closing = api.closing.clone();
    BroadcastStream::new(feed)
        .filter_map(|item| async move { item.ok() })
        .take_until(async move {
            let _ = closing.wait_for(|closing| *closing).await;
        })
}

fn sse<T: Serialize>(
    kind: &'static str,
    items: impl Stream<Item = T> + Send + 'static,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let events = items.map(move |item| {
        Ok(Event::default()
            .event(kind)
            .json_data(item)
            .unwrap_or_else(|_| Event::default().event(kind)))
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}

/// A service's recent output, or (`follow=true`) its output as it comes.
#[utoipa::path(get, path = "/v1/services/{name}/logs", tag = "services",
    params(("name" = String, Path, description = "The service's name", pattern = r"^[a-z0-9][a-z0-9_.-]{0,62}$"), LogsQuery),
    responses((status = 200, description = "The lines, or an event stream of `line` events",
            content((LogTail = "application/json"), (StreamEvent = "text/event-stream"))),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn logs(
    State(api): State<Arc<ApiState>>,
    Path(name): Path<String>,
    Query(query): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let name = checked(&name)?;
    let book = api.supervisor.logs(name)?;
    let tail = match query.tail {
        Some(negative) if negative < 0 => {
            return Err(ApiError::bad_request("`tail` must not be negative"))
        }
        Some(tail) => tail.min(MAX_TAIL) as usize,
        None => 100,
    };
    // Subscribed before the tail is read: a line may come twice, none goes missing.
    let feed = book.follow();
    let recent: Vec<LogLineView> = book.tail(tail).iter().map(line_view).collect();
    if !query.follow.unwrap_or(false) {
        let lines = LogTail {
            service: name.to_string(),
            lines: recent,
        };
        return Ok(Json(lines).into_response());
    }
    let lines = stream::iter(recent).chain(live(&api, feed).map(|line| line_view(&line)));
    Ok(sse("line", lines).into_response())
}

/// Every state change of every service, with reasons, as it happens; first,
/// with `last` or `since_unix_ms`, the ones the daemon remembers.
#[utoipa::path(get, path = "/v1/events", tag = "events",
    params(EventsQuery),
    responses((status = 200, description = "An event stream of `state` events",
        content((StreamEvent = "text/event-stream"))),
        (status = 400, body = ErrorBody)))]
pub async fn events(
    State(api): State<Arc<ApiState>>,
    Query(query): Query<EventsQuery>,
) -> Result<Response, ApiError> {
    if query.last.is_some_and(|last| last < 0) || query.since_unix_ms.is_some_and(|ms| ms < 0) {
        return Err(ApiError::bad_request(
            "`last` and `since_unix_ms` must not be negative",
        ));
    }
    let (mut past, feed) = api.supervisor.replay_events();
    if let Some(since) = query.since_unix_ms {
        past.retain(|change| change.at_unix_ms >= since as u64);
    }
    let wanted = match (query.last, query.since_unix_ms) {
        (Some(last), _) => last as usize,
        (None, Some(_)) => past.len(),
        (None, None) => 0,
    };
    let past: Vec<EventView> = past[past.len().saturating_sub(wanted)..]
        .iter()
        .map(EventView::from)
        .collect();
    let changes = stream::iter(past).chain(live(&api, feed).map(|change| EventView::from(&change)));
    Ok(sse("state", changes).into_response())
}
