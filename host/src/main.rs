use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

/// Every proxied request allocates a little (headers, buffers, labels) on
/// whichever worker thread runs it; glibc's allocator spent an eighth of the
/// gateway's time on that, mimalloc a fraction of it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NANNY_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into a log file.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = nanny::cli::Cli::parse();
    use nanny::cli::Command;
    let prints_for_a_person = matches!(
        cli.command,
        Command::Plugins { .. }
            | Command::Ps { .. }
            | Command::Nodes { .. }
            | Command::Logs { .. }
            | Command::Events { .. }
            | Command::Models { .. }
            | Command::Gpus { .. }
            | Command::Info { .. }
            | Command::Config { .. }
            | Command::Infer(_)
    );
    if prints_for_a_person {
        // Its output piped into `head` ends it quietly, as any Unix tool (it
        // panicked on the closed pipe). Servers and the guardian keep
        // ignoring SIGPIPE: a reader going away must not end them.
        // SAFETY: signal(2) before any thread of ours starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match nanny::cli::run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
