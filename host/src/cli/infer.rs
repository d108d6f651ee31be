//! `nanny infer MODEL PROMPT`: one chat through the gateway — its service
//! started if need be, with its progress shown — streamed to the terminal as the
//! tokens come, then one line of figures.

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::time::Instant;

use serde_json::{json, Value};

use super::client::{Client, ClientError};

#[derive(Debug, clap::Args)]
pub struct InferArgs {
    /// A model name as `nanny models` / `GET /v1/models` lists it.
    pub model: String,
    /// What to ask; `-` reads it from standard input.
    pub prompt: String,
    #[arg(long)]
    pub max_tokens: Option<u32>,
    #[arg(long)]
    pub temperature: Option<f32>,
    /// The whole answer as JSON, not streamed.
    #[arg(long)]
    pub json: bool,
}

pub fn infer(client: &Client, args: &InferArgs) -> Result<ExitCode, ClientError> {
    let prompt = if args.prompt == "-" {
        let mut prompt = String::new();
        std::io::stdin()
            .read_to_string(&mut prompt)
            .map_err(|error| ClientError::Garbled(format!("cannot read the prompt: {error}")))?;
        prompt
    } else {
        args.prompt.clone()
    };
    let mut body = json!({
        "model": args.model,
        "messages": [{"role": "user", "content": prompt}],
        "stream": !args.json,
    });
    if let Some(max_tokens) = args.max_tokens {
        body["max_tokens"] = json!(max_tokens);
    }
    if let Some(temperature) = args.temperature {
        body["temperature"] = json!(temperature);
    }
    if args.json {
        let answer = client.post_json("/v1/chat/completions", &body)?;
        println!(
            "{}",
            serde_json::to_string_pretty(&answer).unwrap_or_default()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let asked = Instant::now();
    let mut figures = Figures::default();
    let terminal = std::io::stderr().is_terminal();
    let mut stdout = std::io::stdout().lock();
    client.post_streaming("/v1/chat/completions", &body, |line| {
        if let Some(loading) = line.strip_prefix(": nanny: loading ") {
            // `qwen 40%` → `starting qwen… 40%`, over itself on a terminal.
            let (service, percent) = loading.split_once(' ').unwrap_or((loading, ""));
            if terminal {
                eprint!("\r\x1b[2Kstarting {service}… {percent}");
            } else if figures.said_loading != Some(percent.to_string()) {
                eprintln!("starting {service}… {percent}");
            }
            figures.said_loading = Some(percent.to_string());
            return Ok(true);
        }
        let Some(data) = line.strip_prefix("data:").map(str::trim) else {
            return Ok(true);
        };
        if data == "[DONE]" {
            return Ok(false);
        }
        let event: Value =
            serde_json::from_str(data).map_err(|error| ClientError::Garbled(error.to_string()))?;
        if let Some(message) = event["error"]["message"].as_str() {
            return Err(ClientError::Refused {
                status: 503,
                message: message.to_string(),
            });
        }
        if figures.said_loading.take().is_some() && terminal {
            eprint!("\r\x1b[2K");
        }
        if let Some(text) = event["choices"][0]["delta"]["content"].as_str() {
            figures.first.get_or_insert_with(|| asked.elapsed());
            figures.chunks += 1;
            let _ = stdout.write_all(text.as_bytes());
            let _ = stdout.flush();
        }
        if let Some(tokens) = event["usage"]["completion_tokens"].as_u64() {
            figures.tokens = Some(tokens);
        }
        Ok(true)
    })?;
    let _ = writeln!(stdout);
    let total = asked.elapsed();
    let tokens = figures.tokens.unwrap_or(figures.chunks);
    let first = figures.first.unwrap_or(total);
    let generating = (total - first).as_secs_f64();
    let rate = if generating > 0.0 && tokens > 1 {
        format!("{:.1} tokens/s", (tokens - 1) as f64 / generating)
    } else {
        "-".to_string()
    };
    eprintln!(
        "{tokens} tokens in {:.2}s; first after {:.2}s; {rate}",
        total.as_secs_f64(),
        first.as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// What the summary line says.
#[derive(Default)]
struct Figures {
    /// Time to the first token.
    first: Option<std::time::Duration>,
    /// Chunks with text: the token count when the server reports no usage.
    chunks: u64,
    /// The server's own count, from a final `usage`.
    tokens: Option<u64>,
    /// The last loading progress shown.
    said_loading: Option<String>,
}
