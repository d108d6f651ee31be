//! The CLI's side of the API: JSON requests and Server-Sent Event streams against
//! the daemon at `--url` / `NANNY_URL`, with `NANNY_TOKEN` as the bearer token.

use std::io::{BufRead, BufReader, Read};
use std::process::ExitCode;

use serde::de::DeserializeOwned;
use serde_json::Value;

/// Where the daemon listens when nobody says otherwise.
pub const DEFAULT_URL: &str = "http://127.0.0.1:7878";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no nanny daemon answers at {url} ({reason}); `nanny up` starts one")]
    Unreachable { url: String, reason: String },
    #[error("{message}")]
    Refused { status: u16, message: String },
    #[error("the daemon's answer made no sense: {0}")]
    Garbled(String),
}

impl ClientError {
    /// 3 when there is no daemon, 1 when it said no.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            ClientError::Unreachable { .. } => ExitCode::from(3),
            _ => ExitCode::FAILURE,
        }
    }
}

pub struct Client {
    url: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(url: &str) -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build();
        Self {
            url: url.trim_end_matches('/').to_string(),
            token: std::env::var("NANNY_TOKEN")
                .ok()
                .filter(|token| !token.trim().is_empty()),
            agent: config.into(),
        }
    }

    fn authorize<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(token) => request.header("Authorization", &format!("Bearer {}", token.trim())),
            None => request,
        }
    }

    fn unreachable(&self, error: ureq::Error) -> ClientError {
        ClientError::Unreachable {
            url: self.url.clone(),
            reason: error.to_string(),
        }
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let request = self.authorize(self.agent.get(format!("{}{path}", self.url)));
        let response = request.call().map_err(|error| self.unreachable(error))?;
        read_json(response)
    }

    pub fn post<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let request = self
            .authorize(self.agent.post(format!("{}{path}", self.url)))
            .header(crate::api::CLIENT_HEADER, "cli");
        let response = request
            .send_empty()
            .map_err(|error| self.unreachable(error))?;
        read_json(response)
    }

    /// A GET, or a POST without a body, answered whatever its status: the
    /// status and the body (at most `limit` bytes).
    pub fn raw(&self, post: bool, path: &str, limit: u64) -> Result<(u16, Vec<u8>), ClientError> {
        let url = format!("{}{path}", self.url);
        let response = if post {
            self.authorize(self.agent.post(url))
                .header(crate::api::CLIENT_HEADER, "mcp")
                .send_empty()
        } else {
            self.authorize(self.agent.get(url)).call()
        }
        .map_err(|error| self.unreachable(error))?;
        let status = response.status().as_u16();
        let mut body = Vec::new();
        response
            .into_body()
            .into_reader()
            .take(limit)
            .read_to_end(&mut body)
            .map_err(|error| ClientError::Garbled(error.to_string()))?;
        Ok((status, body))
    }

    /// POSTs `body` as JSON; the JSON answer.
    pub fn post_json(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        let response = self
            .authorize(self.agent.post(format!("{}{path}", self.url)))
            .header("Content-Type", "application/json")
            .send(body.to_string())
            .map_err(|error| self.unreachable(error))?;
        read_json(response)
    }

    /// POSTs `body` as JSON and hands `each` every line of the event stream that
    /// answers (comments included) until it ends or `each` says stop.
    pub fn post_streaming(
        &self,
        path: &str,
        body: &Value,
        mut each: impl FnMut(&str) -> Result<bool, ClientError>,
    ) -> Result<(), ClientError> {
        let response = self
            .authorize(self.agent.post(format!("{}{path}", self.url)))
            .header("Content-Type", "application/json")
            .send(body.to_string())
            .map_err(|error| self.unreachable(error))?;
        if !response.status().is_success() {
            return Err(refusal(response));
        }
        let reader = BufReader::new(response.into_body().into_reader());
        for line in reader.lines() {
            let line = line.map_err(|error| ClientError::Garbled(error.to_string()))?;
            if !each(&line)? {
                break;
            }
        }
        Ok(())
    }

    /// Calls `each` with every event's data until the stream ends or `each` says stop.
    pub fn stream(
        &self,
        path: &str,
        mut each: impl FnMut(Value) -> bool,
    ) -> Result<(), ClientError> {
        let request = self.authorize(self.agent.get(format!("{}{path}", self.url)));
        let response = request.call().map_err(|error| self.unreachable(error))?;
        if !response.status().is_success() {
            return Err(refusal(response));
        }
        let reader = BufReader::new(response.into_body().into_reader());
        for line in reader.lines() {
            let line = line.map_err(|error| ClientError::Garbled(error.to_string()))?;
            if let Some(data) = line.strip_prefix("data:") {
                let value: Value = serde_json::from_str(data.trim())
                    .map_err(|error| ClientError::Garbled(error.to_string()))?;
                if !each(value) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

fn read_json<T: DeserializeOwned>(
    response: ureq::http::Response<ureq::Body>,
) -> Result<T, ClientError> {
    if !response.status().is_success() {
        return Err(refusal(response));
    }
    let mut body = String::new();
    response
        .into_body()
        .into_reader()
        .read_to_string(&mut body)
        .map_err(|error| ClientError::Garbled(error.to_string()))?;
    serde_json::from_str(&body).map_err(|error| ClientError::Garbled(error.to_string()))
}

/// The message of an error answer (`{"error": {"message"}}`), or its status.
fn refusal(response: ureq::http::Response<ureq::Body>) -> ClientError {
    let status = response.status().as_u16();
    let mut body = String::new();
    let _ = response
        .into_body()
        .into_reader()
        .take(64 * 1024)
        .read_to_string(&mut body);
    let message = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|value| value["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| format!("the daemon answered {status}"));
    ClientError::Refused { status, message }
}
