//! `nanny mock-backend`: a fake OpenAI-compatible server that plays the failures a
//! supervisor must survive — slow loading, crashes, failing health, refusing to stop.

mod routes;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

/// The behaviour of one mock server, from its command line.
#[derive(Debug, Clone, clap::Args)]
pub struct MockOptions {
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// The port to listen on.
    #[arg(long)]
    pub port: u16,
    /// A model id to serve (repeatable); default `mock`.
    #[arg(long = "model")]
    pub models: Vec<String>,
    /// Pretend to load for this long before listening, printing progress.
    #[arg(long, default_value_t = 0)]
    pub startup_delay_ms: u64,
    /// How fast streamed completions produce tokens.
    #[arg(long, default_value_t = 50.0)]
    pub tokens_per_second: f64,
    /// Exit with code 3 this many seconds after listening.
    #[arg(long)]
    pub crash_after_secs: Option<f64>,
    /// Exit with code 3 on this request (counting every request).
    #[arg(long)]
    pub crash_after_requests: Option<u64>,
    /// Answer /health with 503 from this many seconds after listening.
    #[arg(long)]
    pub unhealthy_after_secs: Option<f64>,
    /// Keep running on SIGTERM (only SIGKILL stops it).
    #[arg(long)]
    pub ignore_sigterm: bool,
}

/// What the routes share.
pub(crate) struct MockState {
    pub options: MockOptions,
    pub models: Vec<String>,
    pub started: Instant,
    pub requests: AtomicU64,
    /// Streamed answers whose client went away before the end.
    pub cancelled: AtomicU64,
    /// Streamed answers sent to their end.
    pub completed: AtomicU64,
    /// Woken whenever a stream is cancelled or completed.
    pub streams_changed: tokio::sync::Notify,
}

impl MockState {
    /// Counts a request; exits the process when it is the one to crash on.
    pub fn count_request(&self) {
        let seen = self.requests.fetch_add(1, Ordering::SeqCst) + 1;
        if self
            .options
            .crash_after_requests
            .is_some_and(|limit| seen >= limit)
        {
            println!("mock-backend crashing after {seen} requests");
            std::process::exit(3);
        }
    }

    pub fn healthy(&self) -> bool {
        self.options
            .unhealthy_after_secs
            .is_none_or(|after| self.started.elapsed() < Duration::from_secs_f64(after))
    }
}

/// Runs the mock server until SIGTERM or SIGINT (or a planned crash).
pub async fn run(options: MockOptions) -> anyhow::Result<()> {
    let mut stdout = tokio::io::stdout();
    if options.startup_delay_ms > 0 {
        let step = Duration::from_millis(options.startup_delay_ms) / 10;
        for percent in (0..100).step_by(10) {
            stdout
                .write_all(format!("mock-backend loading {percent}%\n").as_bytes())
                .await?;
            stdout.flush().await?;
            tokio::time::sleep(step).await;
        }
    }
    let address: SocketAddr = format!("{}:{}", options.host, options.port).parse()?;
    let listener = tokio::net::TcpListener::bind(address).await?;
    let models = if options.models.is_empty() {
        vec!["mock".to_string()]
    } else {
        options.models.clone()
    };
    let state = Arc::new(MockState {
        options: options.clone(),
        models,
        started: Instant::now(),
        requests: AtomicU64::new(0),
        cancelled: AtomicU64::new(0),
        completed: AtomicU64::new(0),
        streams_changed: tokio::sync::Notify::new(),
    });
    if let Some(after) = options.crash_after_secs {
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs_f64(after)).await;
            println!("mock-backend crashing after {after} seconds");
            std::process::exit(3);
        });
    }
    stdout
        .write_all(
            format!(
                "mock-backend listening on http://{}\n",
                listener.local_addr()?
            )
            .as_bytes(),
        )
        .await?;
    stdout.flush().await?;
    // Like real servers (uvicorn, llama-server), no Nagle delay on small writes.
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|stream| {
        let _ = stream.set_nodelay(true);
    });
    axum::serve(listener, routes::router(state))
        .with_graceful_shutdown(stop_signal(options.ignore_sigterm))
        .await?;
    println!("mock-backend stopped");
    Ok(())
}

async fn stop_signal(ignore_sigterm: bool) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).expect("install a SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("install a SIGINT handler");
    loop {
        tokio::select! {
            _ = terminate.recv() => {
                if !ignore_sigterm {
                    break;
                }
                println!("mock-backend ignoring SIGTERM");
            }
            _ = interrupt.recv() => break,
        }
    }
    println!("mock-backend stopping");
}
