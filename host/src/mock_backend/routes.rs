//! The OpenAI-shaped routes of the mock server.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_stream::wrappers::ReceiverStream;

use super::MockState;

type Shared = State<Arc<MockState>>;

pub(super) fn router(state: Arc<MockState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/stats", get(stats))
        .with_state(state)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"message": message, "type": "invalid_request_error"}})),
    )
        .into_response()
}

async fn health(State(state): Shared) -> Response {
    state.count_request();
    if state.healthy() {
        Json(json!({"status": "ok"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unhealthy"})),
        )
            .into_response()
    }
}

/// `/stats?cancelled=N&completed=M`: answer once the counts have reached
/// these (at most 30 s), so a test awaits them instead of polling.
#[derive(Deserialize)]
struct StatsWait {
    cancelled: Option<u64>,
    completed: Option<u64>,
}

/// What the tests count: requests, and streams cut short by their client or
/// sent to their end.
async fn stats(
    State(state): Shared,
    axum::extract::Query(wait): axum::extract::Query<StatsWait>,
) -> Json<Value> {
    use std::sync::atomic::Ordering;
    let reached = || {
        wait.cancelled
            .is_none_or(|n| state.cancelled.load(Ordering::SeqCst) >= n)
            && wait
                .completed
                .is_none_or(|n| state.completed.load(Ordering::SeqCst) >= n)
    };
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let changed = state.streams_changed.notified();
            if reached() {
                return;
            }
            changed.await;
        }
    })
    .await;
    Json(json!({
        "requests": state.requests.load(Ordering::SeqCst),
        "cancelled": state.cancelled.load(Ordering::SeqCst),
        "completed": state.completed.load(Ordering::SeqCst),
    }))
}

async fn models(State(state): Shared) -> Json<Value> {
    state.count_request();
    let data: Vec<Value> = state
        .models
        .iter()
        .map(|id| json!({"id": id, "object": "model", "created": now(), "owned_by": "nanny-mock", "context_length": 4096}))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

#[derive(Deserialize)]
struct CompletionRequest {
    model: Option<String>,
    #[serde(default)]
    stream: bool,
    max_tokens: Option<usize>,
}

/// Resolves the requested model, or says which ones there are.
fn pick_model(state: &MockState, requested: Option<String>) -> Result<String, String> {
    match requested {
        None => Ok(state.models[0].clone()),
        Some(model) if state.models.contains(&model) => Ok(model),
        Some(model) => Err(format!(
            "model `{model}` not found; this server has {:?}",
            state.models
        )),
    }
}

fn reply_words(model: &str, max_tokens: Option<usize>) -> Vec<String> {
    let text = format!("This is a mock reply from {model}, served by nanny mock-backend.");
    let words: Vec<String> = text.split(' ').map(str::to_string).collect();
    let take = max_tokens.unwrap_or(words.len()).min(words.len());
    words[..take]
        .iter()
        .enumerate()
        .map(|(i, w)| if i == 0 { w.clone() } else { format!(" {w}") })
        .collect()
}

async fn chat(state: Shared, Json(request): Json<CompletionRequest>) -> Response {
    complete(state, request, "chat.completion").await
}

async fn completions(state: Shared, Json(request): Json<CompletionRequest>) -> Response {
    complete(state, request, "text_completion").await
}

async fn complete(
    State(state): Shared,
    request: CompletionRequest,
    object: &'static str,
) -> Response {
    state.count_request();
    let model = match pick_model(&state, request.model) {
        Ok(model) => model,
        Err(message) => return error(StatusCode::NOT_FOUND, &message),
    };
    let words = reply_words(&model, request.max_tokens);
    let id = format!("mock-{}", now());
    let chat = object == "chat.completion";
    if !request.stream {
        let text = words.concat();
        let choice = if chat {
            json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"})
        } else {
            json!({"index": 0, "text": text, "finish_reason": "stop"})
        };
        let usage = json!({"prompt_tokens": 1, "completion_tokens": words.len(), "total_tokens": words.len() + 1});
        return Json(json!({"id": id, "object": object, "created": now(), "model": model, "choices": [choice], "usage": usage})).into_response();
    }
    let pause = Duration::from_secs_f64(1.0 / state.options.tokens_per_second.max(0.001));
    let (events, stream) = tokio::sync::mpsc::channel::<Result<Event, Infallible>>(4);
    let counts = state.clone();
    tokio::spawn(async move {
        let chunk_object = if chat {
            "chat.completion.chunk"
        } else {
            "text_completion"
        };
        let last = words.len();
        for (index, word) in words.into_iter().enumerate() {
            let finish = (index + 1 == last).then_some("stop");
            let choice = if chat {
                json!({"index": 0, "delta": {"content": word}, "finish_reason": finish})
            } else {
                json!({"index": 0, "text": word, "finish_reason": finish})
            };
            let chunk = json!({"id": id, "object": chunk_object, "created": now(), "model": model, "choices": [choice]});
            if events
                .send(Ok(Event::default().data(chunk.to_string())))
                .await
                .is_err()
            {
                counts
                    .cancelled
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                counts.streams_changed.notify_waiters();
                return;
            }
            tokio::time::sleep(pause).await;
        }
        if events
            .send(Ok(Event::default().data("[DONE]")))
            .await
            .is_ok()
        {
            counts
                .completed
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            counts.streams_changed.notify_waiters();
        }
    });
    Sse::new(ReceiverStream::new(stream)).into_response()
}

#[derive(Deserialize)]
struct EmbeddingRequest {
    model: Option<String>,
    input: Value,
}

async fn embeddings(State(state): Shared, Json(request): Json<EmbeddingRequest>) -> Response {
    state.count_request();
    let model = match pick_model(&state, request.model) {
        Ok(model) => model,
        Err(message) => return error(StatusCode::NOT_FOUND, &message),
    };
    let inputs: Vec<String> = match request.input {
        Value::String(text) => vec![text],
        Value::Array(items) => items
            .iter()
            .map(|item| item.as_str().unwrap_or_default().to_string())
            .collect(),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "`input` must be a string or a list of strings",
            )
        }
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, text)| json!({"object": "embedding", "index": index, "embedding": embed(text)}))
        .collect();
    Json(json!({"object": "list", "model": model, "data": data, "usage": {"prompt_tokens": inputs.len(), "total_tokens": inputs.len()}}))
        .into_response()
}

/// A deterministic 8-dimensional unit vector from the text's bytes.
fn embed(text: &str) -> Vec<f32> {
    let mut vector = [0f32; 8];
    for (i, byte) in text.bytes().enumerate() {
        vector[i % 8] += f32::from(byte);
    }
    let norm = vector
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    vector.iter().map(|x| x / norm).collect()
}
