//! The streaming routes: a service's log (`follow=true`) and every state change,
//! as Server-Sent Events that end when the daemon shuts down.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
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
        text: line.text.to_string(),
    }
}

/// Lines serialized per body chunk of a `tail` answer.
const LINES_PER_CHUNK: usize = 256;

/// A `LogTail` document written a chunk at a time, so a large tail costs the
/// daemon one chunk of JSON at once rather than the whole answer (the lines
/// themselves share their text with the ring).
fn streamed_tail(service: &str, lines: Vec<LogLine>) -> Response {
    let head = serde_json::json!(service).to_string();
    let opening = format!("{{\"service\":{head},\"lines\":[");
    let total = lines.len();
    let chunks = stream::iter(0..total.div_ceil(LINES_PER_CHUNK)).map(move |chunk| {
        let start = chunk * LINES_PER_CHUNK;
        let mut text = String::new();
        for (index, line) in lines[start..(start + LINES_PER_CHUNK).min(total)]
            .iter()
            .enumerate()
        {
            if start + index > 0 {
                text.push(',');
            }
            // A LogLine serializes as its LogLineView.
            text.push_str(&serde_json::to_string(line).unwrap_or_else(|_| "null".into()));
        }
        Ok::<_, Infallible>(Bytes::from(text))
    });
    let body = stream::once(async move { Ok(Bytes::from(opening)) })
        .chain(chunks)
        .chain(stream::once(async { Ok(Bytes::from_static(b"]}")) }));
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(body),
    )
        .into_response()
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
    let recent = book.tail(tail);
    if !query.follow.unwrap_or(false) {
        return Ok(streamed_tail(name, recent));
    }
    let lines = stream::iter(recent)
        .chain(live(&api, feed))
        .map(|line| line_view(&line));
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
    if !query.follow.unwrap_or(true) {
        return Ok(sse("state", stream::iter(past)).into_response());
    }
    let changes = stream::iter(past).chain(live(&api, feed).map(|change| EventView::from(&change)));
    Ok(sse("state", changes).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{OutputLine, Stream as Output};
    use crate::supervise::LogBook;

    /// Chunk edges, escapes and the empty tail all make one valid document with
    /// every line, in order.
    #[tokio::test]
    async fn a_streamed_tail_is_the_whole_document() {
        for count in [
            0,
            1,
            LINES_PER_CHUNK,
            LINES_PER_CHUNK + 1,
            3 * LINES_PER_CHUNK - 7,
        ] {
            let book = LogBook::new("chat", 1 << 20, None);
            for n in 0..count {
                book.push(&OutputLine {
                    stream: if n % 2 == 0 {
                        Output::Stdout
                    } else {
                        Output::Stderr
                    },
                    text: format!("line {n} \"quoted\" \\ ünïcode\t"),
                });
            }
            let response = streamed_tail("chat", book.tail(count));
            assert!(response.headers().get(header::CONTENT_LENGTH).is_none());
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            let document: LogTail = serde_json::from_slice(&body).unwrap();
            assert_eq!(document.service, "chat");
            let texts: Vec<String> = document.lines.into_iter().map(|l| l.text).collect();
            let expected: Vec<String> = (0..count)
                .map(|n| format!("line {n} \"quoted\" \\ ünïcode\t"))
                .collect();
            assert_eq!(texts, expected);
        }
    }
}
