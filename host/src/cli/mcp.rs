//! `nanny mcp`: nanny's MCP server on standard input and output, its tools
//! answered by the daemon at `--url` over the control API.

use std::process::ExitCode;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::client::Client;
use crate::mcp::{Answer, Daemon};

/// The most of one answer read from the daemon.
const ANSWER_LIMIT: u64 = 16 << 20;

/// The daemon over HTTP; each call on a blocking thread (the client is ureq).
struct OverHttp(Arc<Client>);

impl Daemon for OverHttp {
    fn call(&self, post: bool, path: String) -> BoxFuture<'static, Result<Answer, String>> {
        let client = self.0.clone();
        Box::pin(async move {
            let answered =
                tokio::task::spawn_blocking(move || client.raw(post, &path, ANSWER_LIMIT))
                    .await
                    .map_err(|error| error.to_string())?;
            let (status, body) = answered.map_err(|error| error.to_string())?;
            Ok(Answer { status, body })
        })
    }
}

pub fn run(client: Client) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    // Standard output is the protocol's: anything for people goes to stderr.
    match runtime.block_on(crate::mcp::serve_stdio(Arc::new(OverHttp(Arc::new(
        client,
    ))))) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(error) => {
            eprintln!("nanny mcp: {error}");
            Ok(ExitCode::FAILURE)
        }
    }
}
