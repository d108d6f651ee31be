//! Supervision figures, printed as a table: `cargo bench -p nanny --bench supervise`.
//!
//! - readiness lag: from the backend printing its ready line to the `ready` state;
//! - 200 mock services under a real `nanny up` (max_concurrent_starts = 8): time
//!   until all are ready, the daemon's RSS, its CPU while idle.
//!
//! `NANNY_BENCH_IDLE_SECS` shortens the idle measurement (default 60).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nanny::plugin::{Catalog, Limits, PluginEngine, Service, Setting};
use nanny::supervise::{ServiceSpec, State, Supervisor, SupervisorOptions};

fn main() {
    println!("| {:<52} | {:>12} | {:<10} |", "what", "measured", "target");
    println!("|{:-<54}|{:-<14}|{:-<12}|", "", "", "");
    readiness_lag();
    two_hundred_services();
}

fn row(what: &str, measured: String, target: &str) {
    println!("| {what:<52} | {measured:>12} | {target:<10} |");
}

fn readiness_lag() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let engine = PluginEngine::new(Limits::default(), None).unwrap();
    let catalog = Catalog::load(&engine, &[], &Default::default());
    let mut lags = Vec::new();
    for round in 0..50 {
        let fifo = dir.path().join(format!("ready-{round}"));
        let status = Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(status.success());
        // The backend relays whatever the bench writes into the FIFO, so the bench
        // holds both ends of the measurement on one clock.
        let settings = vec![
            Setting::list("command", &["cat", &fifo.display().to_string()]),
            Setting::text("ready_line", "^READY"),
            Setting::text("health_path", ""),
        ];
        let plugin = Arc::clone(catalog.get("command").unwrap());
        let spec = ServiceSpec::new(Service::local(&format!("lag{round}"), 1, settings), plugin);
        let lag = runtime.block_on(async {
            let supervisor =
                Supervisor::launch(vec![spec], SupervisorOptions::in_memory(1)).unwrap();
            let mut status = supervisor.watch(&format!("lag{round}")).unwrap();
            status
                .wait_for(|s| matches!(s.state, State::Starting { .. }))
                .await
                .unwrap();
            let mut writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
            let printed = Instant::now();
            writer.write_all(b"READY\n").unwrap();
            status.wait_for(|s| s.state == State::Ready).await.unwrap();
            let lag = printed.elapsed();
            drop(writer);
            supervisor.shutdown().await;
            lag
        });
        lags.push(lag);
    }
    lags.sort();
    row(
        "readiness lag, ready line → ready (p50 of 50)",
        format!("{:.2?}", lags[lags.len() / 2]),
        "< 5 ms",
    );
    row(
        "readiness lag (p99 of 50)",
        format!("{:.2?}", lags[lags.len() * 99 / 100]),
        "< 5 ms",
    );
}

fn two_hundred_services() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nanny.toml");
    let mut text =
        String::from("[daemon]\nmax_concurrent_starts = 8\nport_range = [30000, 30999]\n");
    for n in 0..200 {
        text.push_str(&format!("\n[services.mock{n:03}]\nbackend = \"mock\"\n"));
    }
    std::fs::write(&config, text).unwrap();
    let nanny = env!("CARGO_BIN_EXE_nanny");
    let started = Instant::now();
    let mut daemon = Command::new(nanny)
        .arg("up")
        .arg(&config)
        .env("NANNY_STATE_DIR", dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start nanny up");
    let mut ready = 0;
    for line in BufReader::new(daemon.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
    {
        if line.contains("] ready on ") {
            ready += 1;
            if ready == 200 {
                break;
            }
        }
    }
    let all_ready = started.elapsed();
    let pid = daemon.id();
    let rss_kib: u64 = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap();
    let idle_secs: u64 = std::env::var("NANNY_BENCH_IDLE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let ticks_before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(idle_secs));
    let ticks = cpu_ticks(pid) - ticks_before;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let idle_cpu = ticks as f64 / hz / idle_secs as f64 * 100.0;
    row(
        "200 mock services: all ready (from `nanny up`)",
        format!("{all_ready:.2?}"),
        "< 10 s",
    );
    row(
        "200 mock services: daemon RSS",
        format!("{:.1} MB", rss_kib as f64 / 1024.0),
        "< 100 MB",
    );
    row(
        &format!("200 mock services: daemon CPU idle over {idle_secs} s"),
        format!("{idle_cpu:.2} %"),
        "< 2 %",
    );
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let _ = daemon.wait();
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit(") ").next().unwrap().split(' ').collect();
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after the command name.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}
