//! The verbs that talk to a running daemon: `ps`, `start|stop|restart`, `logs`,
//! `events`, `info`. `--json` prints what the daemon said, unchanged.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::client::{Client, ClientError};
use super::table::table;
use crate::api::views::{EventView, InfoView, LogLineView, LogTail, ServiceView, StateName};
use crate::gpu::GpuSnapshot;

fn print_json(value: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `95s` → `1m35s`: the two largest units.
fn human(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        0..=59 => format!("{seconds}s"),
        60..=3599 => format!("{}m{}s", seconds / 60, seconds % 60),
        3600..=86_399 => format!("{}h{}m", seconds / 3600, seconds % 3600 / 60),
        _ => format!("{}d{}h", seconds / 86_400, seconds % 86_400 / 3600),
    }
}

fn state_text(service: &ServiceView) -> String {
    let name = serde_json::to_value(service.state)
        .ok()
        .and_then(|value| value.as_str().map(str::to_string))
        .unwrap_or_default();
    match service.state {
        StateName::Starting => match service.loading_percent {
            Some(percent) => format!("{name} {percent}%"),
            None => name,
        },
        StateName::Backoff => match service.next_retry_unix_ms {
            Some(at) => {
                let wait = Duration::from_millis(at.saturating_sub(now_ms()));
                format!("{name} (retry in {})", human(wait))
            }
            None => name,
        },
        _ => name,
    }
}

fn or_dash(text: String) -> String {
    if text.is_empty() {
        "-".into()
    } else {
        text
    }
}

/// `/v1/services/NAME`, for a valid name only: nothing typed becomes another path.
fn service_path(name: &str) -> Result<String, ClientError> {
    if crate::names::is_valid(name) {
        Ok(format!("/v1/services/{name}"))
    } else {
        Err(ClientError::Refused {
            status: 400,
            message: format!("`{name}` is not a service name"),
        })
    }
}

/// `nanny ps [--all]`.
pub fn ps(client: &Client, json: bool, all: bool) -> Result<ExitCode, ClientError> {
    let path = if all {
        "/v1/services?all=true"
    } else {
        "/v1/services"
    };
    let services: Vec<ServiceView> = client.get(path)?;
    if json {
        print_json(&services);
        return Ok(ExitCode::SUCCESS);
    }
    let mut services = services;
    // This node's first, then each other node's, by name.
    services.sort_by(|a, b| (&a.node, &a.name).cmp(&(&b.node, &b.name)));
    let here = if all {
        let info: InfoView = client.get("/v1/info")?;
        info.cluster
            .map_or_else(|| "-".to_string(), |cluster| cluster.node)
    } else {
        String::new()
    };
    let rows: Vec<[String; 9]> = services
        .iter()
        .map(|service| {
            let uptime = service.launched_unix_ms.map_or("-".into(), |launched| {
                human(Duration::from_millis(now_ms().saturating_sub(launched)))
            });
            let models: Vec<&str> = service.models.iter().map(|m| m.id.as_str()).collect();
            let reason = match service.state {
                StateName::Failed | StateName::Waiting => service.reason.clone(),
                StateName::Backoff => service.last_failure.clone(),
                _ => None,
            };
            [
                service.name.clone(),
                service.backend.clone(),
                state_text(service),
                uptime,
                service.port.to_string(),
                or_dash(service.gpus.join(",")),
                service.restarts.to_string(),
                or_dash(models.join(",")),
                reason.unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let header = [
        "NAME", "BACKEND", "STATE", "UPTIME", "PORT", "GPUS", "RESTARTS", "MODELS", "REASON",
    ];
    if !all {
        print!("{}", table(header, &rows));
        return Ok(ExitCode::SUCCESS);
    }
    let with_node: Vec<[String; 10]> = services
        .iter()
        .zip(rows)
        .map(|(service, row)| {
            let node = service.node.clone().unwrap_or_else(|| here.clone());
            let [a, b, c, d, e, f, g, h, i] = row;
            [node, a, b, c, d, e, f, g, h, i]
        })
        .collect();
    let [a, b, c, d, e, f, g, h, i] = header;
    print!("{}", table(["NODE", a, b, c, d, e, f, g, h, i], &with_node));
    Ok(ExitCode::SUCCESS)
}

/// `nanny nodes`.
pub fn nodes(client: &Client, json: bool) -> Result<ExitCode, ClientError> {
    let nodes: Vec<crate::cluster::NodeView> = client.get("/v1/nodes")?;
    if json {
        print_json(&nodes);
        return Ok(ExitCode::SUCCESS);
    }
    if nodes.is_empty() {
        println!("this nanny is in no cluster (set `[cluster] etcd` in its nanny.toml)");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<[String; 6]> = nodes
        .iter()
        .map(|node| {
            let record = &node.record;
            let gpus: Vec<String> = record
                .gpus
                .iter()
                .map(|gpu| match gpu.holders.as_slice() {
                    [] => format!("{}:{}MiB", gpu.index, gpu.memory_mib),
                    holders => {
                        format!("{}:{}MiB({})", gpu.index, gpu.memory_mib, holders.join("+"))
                    }
                })
                .collect();
            let ready = node.services.iter().filter(|s| s.state == "ready").count();
            let ago = now_ms().saturating_sub(node.last_seen_unix_ms);
            let seen = if node.local {
                "this node".to_string()
            } else if ago < 1000 {
                "now".to_string()
            } else {
                format!("{} ago", human(Duration::from_millis(ago)))
            };
            [
                record.node.clone(),
                record.advertise.clone(),
                or_dash(gpus.join(" ")),
                format!("{}/{} ready", ready, node.services.len()),
                or_dash(record.capabilities.programs.join(",")),
                seen,
            ]
        })
        .collect();
    let header = [
        "NODE",
        "ADDRESS",
        "GPUS",
        "SERVICES",
        "PROGRAMS",
        "LAST SEEN",
    ];
    print!("{}", table(header, &rows));
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Clone, Copy)]
pub enum Verb {
    Start,
    /// Start, evicting GPU holders in the way.
    ForceStart,
    Stop,
    Restart,
}

impl Verb {
    fn word(self) -> &'static str {
        match self {
            Verb::Start | Verb::ForceStart => "start",
            Verb::Stop => "stop",
            Verb::Restart => "restart",
        }
    }

    fn target(self) -> StateName {
        match self {
            Verb::Stop => StateName::Stopped,
            Verb::Start | Verb::ForceStart | Verb::Restart => StateName::Ready,
        }
    }
}

/// Where and how `nanny start|stop|restart` acts.
pub struct On<'a> {
    /// Another node's services (through this daemon): `--node`.
    pub node: Option<&'a str>,
    pub wait: bool,
    pub json: bool,
}

/// `nanny start|stop|restart NAME... [--node N]`: success when every service got there.
pub fn act(
    client: &Client,
    verb: Verb,
    names: &[String],
    on: On<'_>,
) -> Result<ExitCode, ClientError> {
    let On { node, wait, json } = on;
    // `/v1/services/NAME`, or `/v1/nodes/NODE/services/NAME`.
    let node_path = match node {
        None => "/v1".to_string(),
        Some(node) if crate::names::is_valid(node) => format!("/v1/nodes/{node}"),
        Some(node) => {
            return Err(ClientError::Refused {
                status: 400,
                message: format!("`{node}` is not a node name"),
            })
        }
    };
    let mut all_there = true;
    let mut answers = Vec::new();
    for name in names {
        let force = matches!(verb, Verb::ForceStart);
        let path = format!(
            "{node_path}{}/{}?wait={wait}&force={force}",
            service_path(name)?.trim_start_matches("/v1"),
            verb.word()
        );
        let service: ServiceView = {
            let _spinner =
                (wait && !json).then(|| Spinner::show(format!("{}ing {name}", verb.word())));
            client.post(&path)?
        };
        let there = !wait || service.state == verb.target();
        all_there &= there;
        if !json {
            let detail = service
                .reason
                .clone()
                .or_else(|| service.last_failure.clone().filter(|_| !there))
                .map_or(String::new(), |reason| format!(": {reason}"));
            let mark = if there { "ok" } else { "FAILED" };
            if wait {
                println!("{name}: {} {mark}{detail}", state_text(&service));
            } else {
                println!("{name}: asked to {}", verb.word());
            }
        }
        answers.push(service);
    }
    if json {
        print_json(&answers);
    }
    Ok(if all_there {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `nanny logs NAME [-f] [-n N]`.
pub fn logs(
    client: &Client,
    name: &str,
    follow: bool,
    lines: u64,
    json: bool,
) -> Result<ExitCode, ClientError> {
    if follow {
        let path = format!("{}/logs?tail={lines}&follow=true", service_path(name)?);
        client.stream(&path, |value| {
            if json {
                println!("{value}");
            } else if let Ok(line) = serde_json::from_value::<LogLineView>(value) {
                println!("{}", line.text);
            }
            true
        })?;
        return Ok(ExitCode::SUCCESS);
    }
    let tail: LogTail = client.get(&format!("{}/logs?tail={lines}", service_path(name)?))?;
    if json {
        print_json(&tail);
    } else {
        for line in tail.lines {
            println!("{}", line.text);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `nanny events`: every state change until the daemon goes away.
pub fn events(
    client: &Client,
    last: Option<u32>,
    since: Option<Duration>,
    json: bool,
) -> Result<ExitCode, ClientError> {
    let mut path = String::from("/v1/events?");
    if let Some(last) = last {
        path.push_str(&format!("last={last}&"));
    }
    if let Some(since) = since {
        let since_ms = now_ms().saturating_sub(since.as_millis() as u64);
        path.push_str(&format!("since_unix_ms={since_ms}"));
    }
    client.stream(path.trim_end_matches(['?', '&']), |value: Value| {
        if json {
            println!("{value}");
        } else if let Ok(event) = serde_json::from_value::<EventView>(value) {
            let to = serde_json::to_value(event.to).unwrap_or_default();
            let reason = match (event.reason, event.loading_percent) {
                (Some(reason), _) => format!(": {reason}"),
                (None, Some(percent)) => format!(" {percent}%"),
                (None, None) => String::new(),
            };
            println!(
                "[{}] {} → {}{reason}",
                event.service,
                event.from,
                to.as_str().unwrap_or_default()
            );
        }
        true
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `nanny reload`.
pub fn reload(client: &Client, json: bool) -> Result<ExitCode, ClientError> {
    let report: crate::api::views::ReloadView = client.post("/v1/reload")?;
    if json {
        print_json(&report);
        return Ok(ExitCode::SUCCESS);
    }
    for (what, names) in [
        ("added", &report.added),
        ("removed", &report.removed),
        ("changed", &report.changed),
    ] {
        if !names.is_empty() {
            println!("{what}: {}", names.join(", "));
        }
    }
    println!("{} unchanged", report.unchanged.len());
    Ok(ExitCode::SUCCESS)
}

/// `nanny gpus`.
pub fn gpus(client: &Client, json: bool) -> Result<ExitCode, ClientError> {
    let snapshot: GpuSnapshot = client.get("/v1/gpus")?;
    if json {
        print_json(&snapshot);
        return Ok(ExitCode::SUCCESS);
    }
    if snapshot.devices.is_empty() {
        println!("no GPUs (nvidia-smi did not answer and none are declared in [[gpus]])");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<[String; 5]> = snapshot
        .devices
        .iter()
        .map(|device| {
            let leases: Vec<String> = device
                .leases
                .iter()
                .map(|lease| format!("{} ({}, {} MiB)", lease.service, lease.mode, lease.vram_mib))
                .collect();
            let held = if device.held_by_stopped_pids.is_empty() {
                String::new()
            } else {
                format!(" held by stopped pid(s) {:?}", device.held_by_stopped_pids)
            };
            [
                device.index.to_string(),
                device.name.clone(),
                device.uuid.clone(),
                format!("{}/{} MiB", device.memory_used_mib, device.memory_total_mib),
                format!("{}{held}", or_dash(leases.join(", "))),
            ]
        })
        .collect();
    print!(
        "{}",
        table(["GPU", "NAME", "UUID", "MEMORY", "LEASES"], &rows)
    );
    Ok(ExitCode::SUCCESS)
}

/// `nanny info`.
pub fn info(client: &Client, json: bool) -> Result<ExitCode, ClientError> {
    let info: InfoView = client.get("/v1/info")?;
    if json {
        print_json(&info);
    } else {
        println!(
            "nanny {} (plugins speak nanny:backend@{})\nlistening on {}, up {}\n{} service(s): {} ready, {} failed; {} plugin(s)",
            info.version,
            info.wit_version,
            info.listen,
            human(Duration::from_secs_f64(info.uptime_s)),
            info.services,
            info.ready,
            info.failed,
            info.plugins
        );
        if let Some(cluster) = &info.cluster {
            let since = human(Duration::from_millis(
                now_ms().saturating_sub(cluster.since_unix_ms),
            ));
            let state = serde_json::to_value(&cluster.state)
                .ok()
                .and_then(|value| value.as_str().map(str::to_string))
                .unwrap_or_default();
            let why = cluster
                .error
                .as_ref()
                .map_or(String::new(), |error| format!(": {error}"));
            println!(
                "cluster: node `{}` {state} since {since} ago ({} other node(s) in view; etcd {}){why}",
                cluster.node,
                cluster.nodes,
                cluster.etcd.join(",")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A spinner on stderr while waiting, when stderr is a terminal.
struct Spinner {
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Spinner {
    fn show(label: String) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let thread = std::io::stderr().is_terminal().then(|| {
            let done = done.clone();
            std::thread::spawn(move || {
                let frames = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
                let mut frame = 0;
                while !done.load(Ordering::Relaxed) {
                    eprint!("\r{} {label}…", frames[frame % frames.len()]);
                    frame += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                eprint!("\r\x1b[2K");
            })
        });
        Self { done, thread }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `nanny models`: the catalog's models as a table, or (`--errors`) what it
/// could not read.
pub fn models(client: &Client, json: bool, errors: bool) -> Result<ExitCode, ClientError> {
    let catalog: serde_json::Value = client.get("/v1/catalog")?;
    if json {
        print_json(&catalog);
        return Ok(ExitCode::SUCCESS);
    }
    let text = |value: &serde_json::Value| match value {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    if errors {
        for problem in catalog["problems"].as_array().into_iter().flatten() {
            println!("{}: {}", text(&problem["path"]), text(&problem["problem"]));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<[String; 8]> = catalog["models"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|model| {
            let gguf = &model["gguf"];
            let size = model["size_bytes"].as_u64().unwrap_or(0);
            let parameters = gguf["parameters"].as_u64().map_or_else(
                || "-".to_string(),
                |count| format!("{:.2}B", count as f64 / 1e9),
            );
            [
                text(&model["id"]),
                format!("{:.1} GiB", size as f64 / f64::from(1u32 << 30)),
                text(&model["template"]),
                text(&gguf["architecture"]),
                parameters,
                text(&gguf["quantisation"]),
                model["vram_estimate_mib"]
                    .as_u64()
                    .map_or_else(|| "-".to_string(), |mib| format!("{mib} MiB")),
                text(&model["path"]),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            ["ID", "SIZE", "TEMPLATE", "ARCH", "PARAMS", "QUANT", "VRAM", "PATH"],
            &rows
        )
    );
    let problems = catalog["problems"].as_array().map_or(0, Vec::len);
    if problems > 0 {
        eprintln!("{problems} entr(ies) could not be read: `nanny models --errors`");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::human;
    use std::time::Duration;

    #[test]
    fn durations_read_like_ps() {
        assert_eq!(human(Duration::from_secs(5)), "5s");
        assert_eq!(human(Duration::from_secs(95)), "1m35s");
        assert_eq!(human(Duration::from_secs(7_260)), "2h1m");
        assert_eq!(human(Duration::from_secs(90_000)), "1d1h");
    }
}
