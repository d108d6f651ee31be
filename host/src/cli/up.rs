//! `nanny up [CONFIG]`: the daemon in the foreground.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, SignalKind};

use crate::runtime::cgroup;
use crate::runtime::orphans::{self, LaunchRecords};

/// `println!` for the daemon: a closed stdout (the terminal went away) must not
/// bring it down.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}
use tokio::sync::broadcast::error::RecvError;

use tokio::sync::watch;

use super::config::Checked;
use crate::api::{self, Access, ApiState};
use crate::gateway::Gateway;
use crate::gpu::{GpuBroker, Inventory};
use crate::metrics::Metrics;
use crate::supervise::{ReloadReport, State, StateChange, Supervisor, SupervisorOptions};

pub fn run(path: &Path) -> anyhow::Result<ExitCode> {
    if !path.exists() {
        eprintln!(
            "nanny: no configuration at `{}`. Pass one (`nanny up path/to/nanny.toml`), start from examples/quickstart.toml, or supervise one backend without a file: `nanny run BACKEND --model M`",
            path.display()
        );
        return Ok(ExitCode::from(2));
    }
    let metrics = Metrics::default();
    let Checked {
        config,
        catalog,
        specs,
    } = match super::config::load_checked(path, &metrics) {
        Ok(checked) => checked,
        Err(code) => return Ok(code),
    };
    if let Err(error) = config.remember_ports(&specs) {
        tracing::warn!("cannot remember the ports picked: {error}");
    }
    let token = match read_token(config.daemon.token_file.as_deref()) {
        Ok(token) => token,
        Err(message) => {
            eprintln!("nanny: {message}");
            return Ok(ExitCode::from(2));
        }
    };
    let _state_lock = match crate::daemon::StateLock::acquire(&config.daemon.state_dir) {
        Ok(lock) => lock,
        Err(error) => {
            eprintln!("nanny: {error}");
            return Ok(ExitCode::from(2));
        }
    };
    match crate::daemon::raise_fd_limit() {
        Ok((soft, _)) => tracing::debug!("file descriptor limit {soft}"),
        Err(error) => tracing::warn!("cannot raise the file descriptor limit: {error}"),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listen = config.daemon.listen;
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(listener) => listener,
            Err(error) => {
                eprintln!("nanny: cannot listen on {listen}: {error} (is another nanny running?)");
                return Ok(ExitCode::from(2));
            }
        };
        let bound = listener.local_addr()?;
        let api_keys = match api::ApiKeys::new(&config.gateway.api_keys) {
            Ok(keys) => keys,
            Err(message) => {
                eprintln!("nanny: gateway.api_keys: {message}");
                return Ok(ExitCode::from(2));
            }
        };
        let access = Access {
            token,
            listen: bound,
            api_keys,
            cluster_token: config
                .cluster
                .as_ref()
                .and_then(|cluster| cluster.token.clone()),
        };
        if let Err(message) = access.check() {
            eprintln!("nanny: {message}");
            return Ok(ExitCode::from(2));
        }
        say!("nanny: API on http://{bound}");
        let containment = Containment::set_up(&config.daemon.state_dir).await;
        let options = SupervisorOptions {
            max_concurrent_starts: config.daemon.max_concurrent_starts,
            cgroup_root: containment.cgroup.clone(),
            metrics: metrics.clone(),
            launch_records: Some(containment.launches.clone()),
            state_file: Some(config.daemon.state_dir.join("services.json")),
            log_dir: Some(config.daemon.state_dir.join("logs")),
            log_ring_bytes: config.daemon.log_ring_bytes,
            ready_url: Some(format!("http://{}", reachable(bound))),
            instance: instance_of(&config.daemon.state_dir),
            containers_at_start: true,
            gpus: Some(Arc::new(GpuBroker::new(
                Inventory::discover(&config.declared_gpus),
                Some(config.daemon.state_dir.join("gpu-leases.json")),
            ))),
        };
        let supervisor = Arc::new(Supervisor::launch(specs, options)?);
        let count = supervisor.statuses().len();
        tokio::spawn(report(supervisor.events()));
        let (closing, closed) = watch::channel(false);
        let shelf = crate::catalog::Shelf::new(|found| {
            say!("nanny: the catalog has {found} model(s) (`nanny models`)");
        });
        // Only a node in a cluster says what it is (it asks the driver once).
        let local_node = config
            .cluster
            .is_some()
            .then(|| super::node::LocalNode::new(supervisor.clone()));
        let cluster =
            config
                .cluster
                .clone()
                .zip(local_node.clone())
                .map(|(mut settings, local_node)| {
                    if settings.advertise.is_empty() {
                        settings.advertise = format!("http://{bound}");
                    }
                    crate::cluster::Cluster::new(settings, local_node)
                });
        let gateway = Gateway::build(
            supervisor.clone(),
            config.gateway.clone(),
            Some(from_catalog(
                shelf.clone(),
                &catalog,
                supervisor.clone(),
                config.daemon.port_range,
            )),
            cluster.clone(),
        );
        if let Some(local_node) = &local_node {
            local_node.serve_through(&gateway);
        }
        let registry = cluster.clone().map(|cluster| {
            say!(
                "nanny: node `{}` joins the cluster at {} (advertised as {})",
                cluster.node(),
                cluster.info().etcd.join(", "),
                cluster.info().advertise
            );
            tokio::spawn(publish_state_changes(supervisor.events(), cluster.clone()));
            tokio::spawn(crate::cluster::run(cluster, closed.clone()))
        });
        tokio::spawn(gateway.clone().stop_idle_services());
        let catalog_config = config.catalog.clone();
        shelf
            .follow(catalog_config.places, catalog_config.templates)
            .await;
        let api = Arc::new(ApiState {
            supervisor: supervisor.clone(),
            plugins: catalog
                .plugins()
                .map(|plugin| plugin.info.clone())
                .collect(),
            started: Instant::now(),
            listen: bound,
            access,
            closing: closed.clone(),
            ready_calls: api::RateLimit::default(),
            reload: Some(reload_hook(
                supervisor.clone(),
                shelf.clone(),
                path.to_path_buf(),
            )),
            gateway,
            catalog: shelf.clone(),
            cluster,
        });
        let limits = api::ConnectionLimits {
            max_connections: config.daemon.max_connections,
            ..api::ConnectionLimits::default()
        };
        let server = tokio::spawn(api::serve(listener, api::router(api), limits, closed));
        say!(
            "nanny: supervising {count} service(s) from {}; Ctrl-C stops them all",
            path.display()
        );
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        // A closed terminal sends SIGHUP: it must not take the daemon (and so
        // every backend) down, the way systemd daemons treat it.
        let mut hangup = signal(SignalKind::hangup())?;
        loop {
            tokio::select! {
                _ = interrupt.recv() => break,
                _ = terminate.recv() => break,
                _ = hangup.recv() => {
                    say!("nanny: SIGHUP: reloading {}", path.display());
                    match reload_from(&supervisor, &shelf, path).await {
                        Ok(report) => say!("nanny: {}", describe_reload(&report)),
                        Err(message) => say!("nanny: reload refused, nothing changed:\n{message}"),
                    }
                }
            }
        }
        say!("nanny: stopping every service (a second signal forces)");
        let forced = tokio::select! {
            _ = supervisor.shutdown() => false,
            _ = interrupt.recv() => true,
            _ = terminate.recv() => true,
        };
        let _ = closing.send(true);
        // Open requests get a moment to finish; streams end on `closing`.
        let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
        if let Some(registry) = registry {
            // The lease is revoked: the other nodes see this one leave now.
            let _ = tokio::time::timeout(Duration::from_secs(5), registry).await;
        }
        containment.tear_down().await;
        say!(
            "nanny: {}",
            if forced {
                "forced down"
            } else {
                "all services stopped"
            }
        );
        Ok(if forced {
            ExitCode::from(130)
        } else {
            ExitCode::SUCCESS
        })
    })
}

/// Every state change is something the cluster should hear of.
async fn publish_state_changes(
    mut events: tokio::sync::broadcast::Receiver<StateChange>,
    cluster: Arc<crate::cluster::Cluster>,
) {
    loop {
        match events.recv().await {
            Ok(_) | Err(RecvError::Lagged(_)) => cluster.state_changed(),
            Err(RecvError::Closed) => return,
        }
    }
}

/// What the gateway asks when a request names a model no service serves: a
/// service for it, made from the catalog's template and added stopped (the
/// gateway then starts it as any other).
fn from_catalog(
    shelf: crate::catalog::Shelf,
    plugins: &crate::plugin::Catalog,
    supervisor: Arc<Supervisor>,
    port_range: [u16; 2],
) -> crate::gateway::OnDemand {
    let plugins: std::collections::BTreeMap<String, Arc<crate::plugin::Plugin>> = plugins
        .plugins()
        .map(|plugin| (plugin.name().to_string(), plugin.clone()))
        .collect();
    Arc::new(move |model: String| {
        let (shelf, plugins, supervisor) = (shelf.clone(), plugins.clone(), supervisor.clone());
        Box::pin(async move {
            let Some((found, template)) = shelf.find(&model) else {
                return Ok(false);
            };
            let plugin = plugins
                .get(&template.backend)
                .cloned()
                .ok_or_else(|| format!("no backend named `{}`", template.backend))?;
            let taken: Vec<u16> = supervisor.statuses().iter().map(|s| s.port).collect();
            let port = crate::catalog::free_port(port_range, &taken)
                .ok_or("no free port left in `daemon.port_range`")?;
            let spec = crate::catalog::service_for(&found, &template, plugin, port);
            supervisor
                .adopt(spec, template.keep)
                .await
                .map_err(|error| error.to_string())
        })
    })
}

/// Re-reads `path` (and its services directory) and applies it; the daemon's
/// own settings (address, state directory, token) take effect at the next start.
async fn reload_from(
    supervisor: &Supervisor,
    shelf: &crate::catalog::Shelf,
    path: &Path,
) -> Result<ReloadReport, String> {
    let owned = path.to_path_buf();
    let metrics = supervisor.metrics().clone();
    let checked =
        tokio::task::spawn_blocking(move || super::config::load_for_reload(&owned, &metrics))
            .await
            .map_err(|error| error.to_string())??;
    if let Err(error) = checked.config.remember_ports(&checked.specs) {
        tracing::warn!("cannot remember the ports picked: {error}");
    }
    let catalog = checked.config.catalog.clone();
    shelf.follow(catalog.places, catalog.templates).await;
    supervisor
        .reload(checked.specs)
        .await
        .map_err(|error| error.to_string())
}

fn reload_hook(
    supervisor: Arc<Supervisor>,
    shelf: crate::catalog::Shelf,
    path: PathBuf,
) -> api::ReloadHook {
    Arc::new(move || {
        let (supervisor, shelf, path) = (supervisor.clone(), shelf.clone(), path.clone());
        Box::pin(async move { reload_from(&supervisor, &shelf, &path).await })
    })
}

fn describe_reload(report: &ReloadReport) -> String {
    let list = |names: &[String]| {
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    };
    format!(
        "reloaded: added {}; removed {}; changed {}; {} unchanged",
        list(&report.added),
        list(&report.removed),
        list(&report.changed),
        report.unchanged.len()
    )
}

/// The daemon's token: `NANNY_TOKEN`, else the first line of `token_file`.
fn read_token(token_file: Option<&Path>) -> Result<Option<String>, String> {
    if let Some(token) = std::env::var("NANNY_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
    {
        return Ok(Some(token.trim().to_string()));
    }
    let Some(file) = token_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(file)
        .map_err(|error| format!("cannot read the token file {}: {error}", file.display()))?;
    let token = text.lines().next().unwrap_or_default().trim();
    if token.is_empty() {
        return Err(format!("the token file {} is empty", file.display()));
    }
    Ok(Some(token.to_string()))
}

/// This daemon's name on Docker labels: its state directory's, so the daemon
/// that comes after it finds what it left.
fn instance_of(state_dir: &Path) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(state_dir.as_os_str().as_encoded_bytes());
    digest
        .iter()
        .take(4)
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Where a backend on this machine reaches the daemon: a wildcard bind answers on loopback.
fn reachable(bound: SocketAddr) -> SocketAddr {
    let ip = match bound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, bound.port())
}

/// Prints every state change as it happens.
async fn report(mut events: tokio::sync::broadcast::Receiver<StateChange>) {
    loop {
        match events.recv().await {
            Ok(change) => say!("{}", describe(&change)),
            Err(RecvError::Lagged(missed)) => say!("nanny: ({missed} state changes not shown)"),
            Err(RecvError::Closed) => return,
        }
    }
}

fn describe(change: &StateChange) -> String {
    let detail = match &change.to {
        State::Starting {
            loading_percent: Some(percent),
        } => format!(" ({percent}%)"),
        State::Ready => format!(" on {}", change.port),
        State::Failed { reason } | State::Waiting { reason } => format!(": {reason}"),
        State::Backoff { .. } => format!(
            " after {}",
            change.last_failure.as_deref().unwrap_or("a failure")
        ),
        _ => change
            .reason
            .as_ref()
            .map(|reason| format!(": {reason}"))
            .unwrap_or_default(),
    };
    format!("[{}] {}{detail}", change.service, change.to.name())
}

/// What removes a daemon's backends if the daemon dies without doing it (kill -9
/// included): its cgroup directory when the machine allows one, the record of
/// its launches, and the guardian process that empties both once the daemon's
/// end of its stdin closes. The daemon is a child subreaper meanwhile, so what
/// escapes a launch's process group comes back to it rather than to init.
struct Containment {
    cgroup: Option<PathBuf>,
    launches: LaunchRecords,
    _guardian: Option<tokio::process::Child>,
}

impl Containment {
    async fn set_up(state_dir: &Path) -> Self {
        if let Err(error) = orphans::become_subreaper() {
            tracing::warn!("not a child subreaper: {error}");
        }
        tokio::spawn(orphans::reap_forever());
        let launches = LaunchRecords::new(state_dir);
        if let Some(report) = launches.sweep().await.report() {
            say!("nanny: {report}");
        }
        let cgroup = Self::cgroup_dir().await;
        let guardian = std::env::current_exe().and_then(|nanny| {
            let mut guardian = tokio::process::Command::new(nanny);
            guardian.arg("guardian").arg(launches.dir());
            if let Some(dir) = &cgroup {
                guardian.arg("--cgroup").arg(dir);
            }
            guardian.stdin(Stdio::piped()).process_group(0).spawn()
        });
        let guardian = guardian
            .map_err(|error| tracing::warn!("no guardian: {error}"))
            .ok();
        Self {
            cgroup,
            launches,
            _guardian: guardian,
        }
    }

    /// This daemon's cgroup directory, after sweeping what earlier daemons left.
    async fn cgroup_dir() -> Option<PathBuf> {
        if std::env::var_os("NANNY_CGROUPS").is_some_and(|value| value == "off") {
            return None;
        }
        // Hybrid machines keep some controllers (cpu, memory) in v1 hierarchies.
        for root in cgroup::v1_roots() {
            cgroup::sweep_stale(&root).await;
        }
        let root = cgroup::nanny_root()?;
        let swept = cgroup::sweep_stale(&root).await;
        if swept > 0 {
            say!("nanny: removed what {swept} earlier daemon(s) left running");
        }
        let dir = root.join(std::process::id().to_string());
        std::fs::create_dir_all(&dir).ok()?;
        Some(dir)
    }

    async fn tear_down(self) {
        if let Some(dir) = &self.cgroup {
            cgroup::kill_daemon_tree(dir).await;
        }
        if let Some(report) = self.launches.sweep().await.report() {
            say!("nanny: {report}");
        }
    }
}

/// `nanny guardian LAUNCHES [--cgroup DIR]`: waits for its stdin to close (the
/// daemon is gone), then kills what the daemon's launches left.
pub fn guardian(launches: &Path, cgroup: Option<&Path>) -> anyhow::Result<ExitCode> {
    // SAFETY: ignoring SIGINT so a Ctrl-C meant for the daemon leaves the guardian be.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    // What the daemon's descendants leave as they die comes here, to be reaped.
    let _ = orphans::become_subreaper();
    let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    runtime.block_on(async {
        if let Some(dir) = cgroup {
            cgroup::kill_daemon_tree(dir).await;
        }
        let records = LaunchRecords::from_dir(launches.to_path_buf());
        if let Some(report) = records.sweep().await.report() {
            eprintln!("nanny guardian: {report}");
        }
    });
    Ok(ExitCode::SUCCESS)
}
