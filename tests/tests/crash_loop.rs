//! A thousand crash/restart cycles leave no zombie and leak neither file
//! descriptors nor memory. A test binary of its own: it measures its own process.

use std::sync::Arc;
use std::time::Duration;

use nanny::plugin::{Catalog, Limits, PluginEngine, Service, Setting};
use nanny::supervise::{
    BackoffPolicy, RestartMode, RestartPolicy, ServiceSpec, Supervisor, SupervisorOptions,
};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn zombie_children() -> Vec<i32> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let fields: Vec<&str> = stat
                .rsplit(") ")
                .next()
                .unwrap_or_default()
                .split(' ')
                .collect();
            fields.first() == Some(&"Z") && fields.get(1) == Some(&me.as_str())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_crashes_leak_nothing() {
    let engine = PluginEngine::new(Limits::default(), None).unwrap();
    let catalog = Catalog::load(&engine, &[], &Default::default());
    let settings = vec![
        Setting::list("command", &["sh", "-c", "exit 1"]),
        Setting::text("health_path", ""),
    ];
    let mut spec = ServiceSpec::new(
        Service::local("crashy", 1, settings),
        Arc::clone(catalog.get("command").unwrap()),
    );
    spec.restart = RestartPolicy {
        mode: RestartMode::Always,
        max_restarts: None,
        backoff: BackoffPolicy {
            initial: Duration::ZERO,
            max: Duration::ZERO,
            reset_after: Duration::from_secs(600),
        },
    };
    let supervisor = Supervisor::launch(vec![spec], SupervisorOptions::in_memory(1)).unwrap();
    let mut status = supervisor.watch("crashy").unwrap();
    // Let allocators and caches settle before the baseline.
    status.wait_for(|s| s.restarts >= 100).await.unwrap();
    let (fds_before, rss_before) = (open_fds(), rss_kib());
    status.wait_for(|s| s.restarts >= 1_100).await.unwrap();
    supervisor.shutdown().await;
    let (fds_after, rss_after) = (open_fds(), rss_kib());
    println!("fds {fds_before} → {fds_after}; RSS {rss_before} KiB → {rss_after} KiB");

    assert!(
        zombie_children().is_empty(),
        "zombies: {:?}",
        zombie_children()
    );
    assert!(
        fds_after * 100 <= fds_before * 105,
        "fds grew from {fds_before} to {fds_after}"
    );
    assert!(
        rss_after * 100 <= rss_before * 105,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
}
