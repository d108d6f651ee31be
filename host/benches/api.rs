//! Control API figures, printed as a table: `cargo bench -p nanny --bench api`.
//!
//! - `GET /v1/services` with 500 services, over loopback with keep-alive;
//! - one state change fanned out to 100 `/v1/events` subscribers: time until the
//!   last of them has it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use nanny::api::{self, Access, ApiState};
use nanny::plugin::{Catalog, Limits, PluginEngine, Service, Setting};
use nanny::supervise::{ServiceSpec, Supervisor, SupervisorOptions};
use tokio::sync::watch;

fn main() {
    println!("| {:<58} | {:>10} | {:<9} |", "what", "measured", "target");
    println!("|{:-<60}|{:-<12}|{:-<11}|", "", "", "");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let engine = PluginEngine::new(Limits::default(), None).unwrap();
    let catalog = Catalog::load(&engine, &[], &Default::default());
    let plugin = Arc::clone(catalog.get("command").unwrap());
    let specs = (0..500)
        .map(|index| {
            let settings = vec![
                Setting::list("command", &["sleep", "1000"]),
                Setting::text("health_path", ""),
                Setting::text("ready_line", "^never"),
            ];
            let mut spec = ServiceSpec::new(
                Service::local(&format!("svc-{index:03}"), 30_000 + index, settings),
                plugin.clone(),
            );
            spec.autostart = false;
            spec
        })
        .collect();
    let (address, supervisor, _closing) = runtime.block_on(async {
        let supervisor =
            Arc::new(Supervisor::launch(specs, SupervisorOptions::in_memory(8)).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (closing, closed) = watch::channel(false);
        let state = Arc::new(ApiState {
            supervisor: supervisor.clone(),
            plugins: Vec::new(),
            started: Instant::now(),
            listen: address,
            access: Access {
                token: None,
                listen: address,
                api_keys: Default::default(),
                cluster_token: None,
            },
            closing: closed,
            ready_calls: api::RateLimit::default(),
            reload: None,
            gateway: nanny::gateway::Gateway::new(supervisor.clone(), Default::default()),
            catalog: Default::default(),
            cluster: None,
        });
        tokio::spawn(async move { axum::serve(listener, api::router(state)).await });
        (address, supervisor, closing)
    });

    list_latency(address);
    fan_out(address, &runtime, &supervisor);
    runtime.block_on(supervisor.shutdown());
}

fn row(what: &str, measured: String, target: &str) {
    println!("| {what:<58} | {measured:>10} | {target:<9} |");
}

fn percentile(sorted: &[Duration], percent: usize) -> Duration {
    sorted[(sorted.len() * percent / 100).min(sorted.len() - 1)]
}

/// One keep-alive connection, 2000 GETs, each read to the end of its body.
fn list_latency(address: SocketAddr) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut timings = Vec::new();
    let mut size = 0;
    for round in 0..2_200 {
        let began = Instant::now();
        stream
            .write_all(b"GET /v1/services HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .unwrap();
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        // The first 200 warm the connection and the allocator.
        if round >= 200 {
            timings.push(began.elapsed());
        }
        size = length;
    }
    timings.sort();
    row(
        &format!("GET /v1/services, 500 services ({} KiB), p50", size / 1024),
        format!("{:.2?}", percentile(&timings, 50)),
        "-",
    );
    row(
        "GET /v1/services, 500 services, p99",
        format!("{:.2?}", percentile(&timings, 99)),
        "< 2 ms",
    );
}

/// 100 subscribers; each start or stop of one service is one event for all.
fn fan_out(address: SocketAddr, runtime: &tokio::runtime::Runtime, supervisor: &Supervisor) {
    let (arrivals, arrived) = mpsc::channel::<Instant>();
    let (subscribed, ready) = mpsc::channel::<()>();
    for _ in 0..100 {
        let arrivals = arrivals.clone();
        let subscribed = subscribed.clone();
        std::thread::spawn(move || {
            let mut stream = TcpStream::connect(address).unwrap();
            stream
                .write_all(b"GET /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                .unwrap();
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            let mut announced = false;
            while reader.read_line(&mut line).is_ok_and(|read| read > 0) {
                if line == "\r\n" && !announced {
                    announced = true;
                    let _ = subscribed.send(());
                } else if line.starts_with("data:") && line.contains("\"svc-000\"") {
                    let _ = arrivals.send(Instant::now());
                }
                line.clear();
            }
        });
    }
    for _ in 0..100 {
        ready.recv().unwrap();
    }
    // The headers arrive before the stream subscribes to the supervisor's events.
    std::thread::sleep(Duration::from_millis(200));
    let mut lasts = Vec::new();
    for round in 0..40 {
        let began = Instant::now();
        runtime.block_on(async {
            if round % 2 == 0 {
                supervisor.start("svc-000").await.unwrap();
            } else {
                supervisor.stop("svc-000").await.unwrap();
            }
        });
        // A start is one event (starting); a stop is two (stopping, stopped).
        let events = if round % 2 == 0 { 100 } else { 200 };
        let mut last = began;
        for _ in 0..events {
            last = last.max(arrived.recv_timeout(Duration::from_secs(10)).unwrap());
        }
        if round % 2 == 0 {
            lasts.push(last - began);
        }
    }
    lasts.sort();
    row(
        "one state change → the last of 100 SSE subscribers, p50",
        format!("{:.2?}", percentile(&lasts, 50)),
        "-",
    );
    row(
        "one state change → the last of 100 SSE subscribers, p99",
        format!("{:.2?}", percentile(&lasts, 99)),
        "-",
    );
}
