//! Prometheus metrics. Histograms live for the whole process and are fed where
//! things happen (a probe, a plugin call, a service turning ready); gauges are made
//! fresh at each scrape from the supervisor's statuses and `/proc/self`.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabel {
    plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    service: String,
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AnswerLabel {
    service: String,
    model: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabel {
    service: String,
    model: String,
    /// `in` (prompt) or `out` (completion).
    direction: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// The daemon's histograms and counters.
struct Timings {
    time_to_ready: Histograms<ServiceLabel>,
    probe_latency: Histograms<ServiceLabel>,
    plugin_call: Histograms<PluginLabel>,
    /// Gateway requests by answer.
    requests: Family<AnswerLabel, Counter>,
    first_byte: Histograms<RouteLabel>,
    request_duration: Histograms<RouteLabel>,
    tokens: Family<TokenLabel, Counter>,
    /// Switches of the GPUs to a service, and how long each took.
    swaps: Family<ServiceLabel, Counter>,
    swap_duration: Histograms<ServiceLabel>,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            time_to_ready: Family::new_with_constructor(seconds_from_100ms),
            probe_latency: Family::new_with_constructor(seconds_from_100us),
            plugin_call: Family::new_with_constructor(seconds_from_100us),
            requests: Family::default(),
            first_byte: Family::new_with_constructor(seconds_from_100us),
            request_duration: Family::new_with_constructor(seconds_from_100us),
            tokens: Family::default(),
            swaps: Family::default(),
            swap_duration: Family::new_with_constructor(seconds_from_100ms),
        }
    }
}

/// One gateway request, as it ended.
#[derive(Debug, Clone, Default)]
pub struct RequestFigures {
    pub service: String,
    pub model: String,
    /// The answer's status code (`499`: the client went away first).
    pub code: u16,
    pub first_byte: Option<Duration>,
    pub duration: Duration,
    pub tokens_in: Option<u64>,
    pub tokens_out: Option<u64>,
}

fn seconds_from_100us() -> Histogram {
    // 100 µs … ~3.3 s
    Histogram::new(exponential_buckets(0.000_1, 2.0, 16))
}

fn seconds_from_100ms() -> Histogram {
    // 100 ms … ~27 min: model loads take minutes.
    Histogram::new(exponential_buckets(0.1, 2.0, 15))
}

/// What `/metrics` shows of the moment: counted by whoever asks, from their own
/// state, so this module depends on nobody.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Every state name with how many services are in it (zeros included).
    pub services_by_state: Vec<(&'static str, usize)>,
    /// Gateway requests in flight, by service.
    pub in_flight: Vec<(String, usize)>,
    /// Gateway requests waiting for a slot.
    pub queued: usize,
    /// (service, lifetime restarts).
    pub restarts: Vec<(String, u32)>,
    pub gpus: Vec<GpuFigures>,
    /// In a cluster: (connected to etcd, other nodes in view).
    pub cluster: Option<(bool, usize)>,
}

/// One device as `/metrics` shows it.
#[derive(Debug, Clone)]
pub struct GpuFigures {
    pub index: u32,
    pub uuid: String,
    pub memory_total_mib: u64,
    pub memory_used_mib: u64,
    pub leases: usize,
}

/// The handle whoever records passes around; clones share the same figures.
#[derive(Clone, Default)]
pub struct Metrics {
    timings: Arc<Timings>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// From launch to ready, once per launch.
    pub fn observe_time_to_ready(&self, service: &str, took: Duration) {
        observe(
            &self.timings.time_to_ready,
            ServiceLabel {
                service: service.into(),
            },
            took,
        );
    }

    /// One readiness or liveness probe, answered or not.
    pub fn observe_probe(&self, service: &str, took: Duration) {
        observe(
            &self.timings.probe_latency,
            ServiceLabel {
                service: service.into(),
            },
            took,
        );
    }

    /// One call into a plugin, on its session's thread.
    pub fn observe_plugin_call(&self, plugin: &str, took: Duration) {
        observe(
            &self.timings.plugin_call,
            PluginLabel {
                plugin: plugin.into(),
            },
            took,
        );
    }

    /// One gateway request, once its answer ended.
    pub fn observe_request(&self, figures: &RequestFigures) {
        let route = RouteLabel {
            service: figures.service.clone(),
            model: figures.model.clone(),
        };
        self.timings
            .requests
            .get_or_create(&AnswerLabel {
                service: route.service.clone(),
                model: route.model.clone(),
                code: figures.code.to_string(),
            })
            .inc();
        if let Some(first_byte) = figures.first_byte {
            observe(&self.timings.first_byte, route.clone(), first_byte);
        }
        observe(
            &self.timings.request_duration,
            route.clone(),
            figures.duration,
        );
        for (direction, count) in [("in", figures.tokens_in), ("out", figures.tokens_out)] {
            if let Some(count) = count {
                self.timings
                    .tokens
                    .get_or_create(&TokenLabel {
                        service: route.service.clone(),
                        model: route.model.clone(),
                        direction: direction.into(),
                    })
                    .inc_by(count);
            }
        }
    }

    /// A switch of the GPUs to `service`, and how long it took.
    pub fn observe_swap(&self, service: &str, took: Duration) {
        let label = ServiceLabel {
            service: service.into(),
        };
        self.timings.swaps.get_or_create(&label).inc();
        observe(&self.timings.swap_duration, label, took);
    }

    /// Every metric in Prometheus' text format.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        let mut registry = Registry::with_prefix("nanny");
        let timings = &self.timings;
        registry.register_with_unit(
            "time_to_ready",
            "From launch to ready",
            Unit::Seconds,
            timings.time_to_ready.clone(),
        );
        registry.register_with_unit(
            "probe_duration",
            "Readiness and liveness probes",
            Unit::Seconds,
            timings.probe_latency.clone(),
        );
        registry.register_with_unit(
            "plugin_call_duration",
            "Calls into backend plugins",
            Unit::Seconds,
            timings.plugin_call.clone(),
        );

        let by_state = Family::<StateLabel, Gauge>::default();
        for (state, count) in &snapshot.services_by_state {
            by_state
                .get_or_create(&StateLabel {
                    state: (*state).into(),
                })
                .set(*count as i64);
        }
        registry.register("services", "Services by state", by_state);
        let restarts = Family::<ServiceLabel, Counter>::default();
        for (service, count) in &snapshot.restarts {
            restarts
                .get_or_create(&ServiceLabel {
                    service: service.clone(),
                })
                .inc_by(u64::from(*count));
        }
        registry.register("service_restarts", "Restarts of each service", restarts);
        self.register_gateway(&mut registry, snapshot);
        register_gpus(&mut registry, &snapshot.gpus);
        let mut text = String::new();
        let _ = encode_without_eof(&mut text, &registry);
        let _ = encode(&mut text, &process_registry());
        text
    }
}

impl Metrics {
    fn register_gateway(&self, registry: &mut Registry, snapshot: &Snapshot) {
        let timings = &self.timings;
        registry.register(
            "gateway_requests",
            "Gateway requests by service, model and answer",
            timings.requests.clone(),
        );
        registry.register_with_unit(
            "gateway_first_byte",
            "From a gateway request to its answer's first byte",
            Unit::Seconds,
            timings.first_byte.clone(),
        );
        registry.register_with_unit(
            "gateway_request_duration",
            "From a gateway request to its answer's end",
            Unit::Seconds,
            timings.request_duration.clone(),
        );
        registry.register(
            "gateway_tokens",
            "Tokens in and out, from the answers' usage",
            timings.tokens.clone(),
        );
        registry.register(
            "gateway_swaps",
            "Switches of shared GPUs to a service",
            timings.swaps.clone(),
        );
        registry.register_with_unit(
            "gateway_swap_duration",
            "How long a switch took, eviction and start",
            Unit::Seconds,
            timings.swap_duration.clone(),
        );
        let in_flight = Family::<ServiceLabel, Gauge>::default();
        for (service, count) in &snapshot.in_flight {
            in_flight
                .get_or_create(&ServiceLabel {
                    service: service.clone(),
                })
                .set(*count as i64);
        }
        registry.register("gateway_in_flight", "Gateway requests in flight", in_flight);
        let queued = Gauge::<i64>::default();
        queued.set(snapshot.queued as i64);
        registry.register(
            "gateway_queued",
            "Gateway requests waiting for a slot",
            queued,
        );
        if let Some((connected, nodes)) = snapshot.cluster {
            let link = Gauge::<i64>::default();
            link.set(i64::from(connected));
            registry.register(
                "cluster_connected",
                "1 while this node is registered in etcd, 0 while it is cut off",
                link,
            );
            let others = Gauge::<i64>::default();
            others.set(nodes as i64);
            registry.register("cluster_nodes", "Other nodes in this node's view", others);
        }
    }
}

fn observe<L>(family: &Histograms<L>, label: L, took: Duration)
where
    L: Clone + std::hash::Hash + Eq,
{
    family.get_or_create(&label).observe(took.as_secs_f64());
}

/// The daemon's own CPU, memory, threads and descriptors.
fn process_registry() -> Registry {
    let mut process = Registry::default();
    if let Some(stat) = ProcessStat::read() {
        let cpu = Counter::<f64>::default();
        cpu.inc_by(stat.cpu_seconds);
        process.register_with_unit("process_cpu", "CPU time used", Unit::Seconds, cpu);
        let rss = Gauge::<i64>::default();
        rss.set(stat.resident_bytes as i64);
        process.register_with_unit(
            "process_resident_memory",
            "Resident memory",
            Unit::Bytes,
            rss,
        );
        let threads = Gauge::<i64>::default();
        threads.set(stat.threads as i64);
        process.register("process_threads", "Threads", threads);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        let open = Gauge::<i64>::default();
        open.set(fds.count() as i64);
        process.register("process_open_fds", "Open file descriptors", open);
    }
    process
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GpuLabel {
    gpu: String,
    uuid: String,
}

/// Per device: memory total and used, and how many leases it carries.
fn register_gpus(registry: &mut Registry, gpus: &[GpuFigures]) {
    let total = Family::<GpuLabel, Gauge>::default();
    let used = Family::<GpuLabel, Gauge>::default();
    let leases = Family::<GpuLabel, Gauge>::default();
    for device in gpus {
        let label = GpuLabel {
            gpu: device.index.to_string(),
            uuid: device.uuid.clone(),
        };
        let mib = 1024 * 1024;
        total
            .get_or_create(&label)
            .set((device.memory_total_mib * mib) as i64);
        used.get_or_create(&label)
            .set((device.memory_used_mib * mib) as i64);
        leases.get_or_create(&label).set(device.leases as i64);
    }
    registry.register_with_unit("gpu_memory_total", "GPU memory", Unit::Bytes, total);
    registry.register_with_unit("gpu_memory_used", "GPU memory in use", Unit::Bytes, used);
    registry.register("gpu_leases", "Leases on each GPU", leases);
}

/// Two registries in one exposition: only the last may end with `# EOF`.
fn encode_without_eof(text: &mut String, registry: &Registry) -> std::fmt::Result {
    let mut part = String::new();
    encode(&mut part, registry)?;
    text.push_str(part.trim_end().trim_end_matches("# EOF").trim_end());
    text.push('\n');
    Ok(())
}

/// What `/proc/self/stat` says about this process.
struct ProcessStat {
    cpu_seconds: f64,
    resident_bytes: u64,
    threads: u64,
}

impl ProcessStat {
    fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name, which may hold spaces, counted from 3.
        let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
        let field = |number: usize| fields.get(number - 3)?.parse::<u64>().ok();
        // SAFETY: sysconf reads a constant.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        Some(Self {
            cpu_seconds: (field(14)? + field(15)?) as f64 / ticks.max(1) as f64,
            resident_bytes: field(24)? * page.max(1) as u64,
            threads: field(20)?,
        })
    }
}
