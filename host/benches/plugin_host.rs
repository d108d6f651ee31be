//! The plugin host's costs, printed as a table:
//! `cargo bench -p nanny --bench plugin_host`.

use std::time::{Duration, Instant};

use nanny::plugin::{
    builtin_wasm, Limits, Output, Plugin, PluginEngine, PluginSession, PluginSource, Service,
    SessionHandle,
};

fn service() -> Service {
    Service {
        name: "bench".into(),
        host: "127.0.0.1".into(),
        port: 8000,
        model: Some("/models/tiny.gguf".into()),
        args: vec![],
        env: vec![],
        work_dir: None,
        gpus: vec![],
        settings: vec![],
    }
}

/// Runs `work` `runs` times and returns the sorted durations.
fn measure(runs: usize, mut work: impl FnMut()) -> Vec<Duration> {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            work();
            start.elapsed()
        })
        .collect();
    times.sort();
    times
}

fn row(what: &str, target: &str, times: &[Duration]) {
    let pick = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    let mean = times.iter().sum::<Duration>() / times.len() as u32;
    println!(
        "| {what:<44} | {:>7} | {:>10.1?} | {:>10.1?} | {:>10.1?} | {target:<8} |",
        times.len(),
        mean,
        pick(0.5),
        pick(0.99)
    );
}

fn main() {
    let wasm = builtin_wasm("llama-cpp").expect("the llama-cpp builtin");
    let cache = tempfile::tempdir().expect("a temp dir");
    println!("plugin: llama-cpp builtin, {} KiB", wasm.len() / 1024);
    println!(
        "| {:<44} | {:>7} | {:>10} | {:>10} | {:>10} | {:<8} |",
        "what", "runs", "mean", "p50", "p99", "target"
    );
    println!(
        "|{:-<46}|{:-<9}|{:-<12}|{:-<12}|{:-<12}|{:-<10}|",
        "", "", "", "", "", ""
    );

    let uncached = PluginEngine::new(Limits::default(), None).expect("engine");
    let times = measure(5, || {
        Plugin::load(&uncached, PluginSource::Builtin, wasm).expect("load");
    });
    row("cold load: compile + describe", "-", &times);

    let engine =
        PluginEngine::new(Limits::default(), Some(cache.path().to_path_buf())).expect("engine");
    Plugin::load(&engine, PluginSource::Builtin, wasm).expect("fill the cache");
    let times = measure(50, || {
        Plugin::load(&engine, PluginSource::Builtin, wasm).expect("load");
    });
    row("cached load: deserialize + describe", "< 5 ms", &times);

    let plugin =
        std::sync::Arc::new(Plugin::load(&engine, PluginSource::Builtin, wasm).expect("load"));
    let times = measure(2_000, || {
        PluginSession::new(plugin.clone(), service())
            .warm()
            .expect("instantiate");
    });
    row("instantiate + construct session", "< 100 µs", &times);

    let mut session = PluginSession::new(plugin.clone(), service());
    session.warm().expect("instantiate");
    let line = "llama_model_loader: loaded meta data with 23 key-value pairs and 201 tensors";
    let times = measure(100_000, || {
        session.on_output(Output::Stderr, line).expect("call");
    });
    row("on-output on a live session", "< 5 µs", &times);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let handle = SessionHandle::spawn(session).expect("spawn");
    let times = runtime.block_on(async {
        let mut times = Vec::with_capacity(20_000);
        for _ in 0..20_000 {
            let start = Instant::now();
            handle
                .call(move |session| session.on_output(Output::Stderr, line))
                .await
                .expect("call");
            times.push(start.elapsed());
        }
        times.sort();
        times
    });
    row(
        "on-output through a SessionHandle (thread hop)",
        "-",
        &times,
    );
}
