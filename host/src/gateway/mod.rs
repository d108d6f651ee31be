//! The gateway: one OpenAI-compatible address for every model. A request is
//! routed by its `model` to the service that serves it; a stopped service is
//! started first (concurrent requests join the same start), and a service
//! nobody asked anything for `idle_timeout` is stopped again. The supervisor
//! does the starting and stopping; the gateway decides when, and forwards.

mod error;
mod proxy;
pub mod routes;
mod swap;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

pub use error::GatewayError;
pub use proxy::{client, Client};

use axum::http::StatusCode;
use serde::Serialize;

use crate::config::GatewayConfig;
use crate::locks::lock;
use crate::runtime::{OutputLine, Stream};
use crate::supervise::{unix_ms, Routable, ServiceStatus, State, SuperviseError, Supervisor};

/// How often idle services are looked for.
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// Beyond a service's own start deadline, what a request waits for it at most.
const START_SLACK: Duration = Duration::from_secs(10);

/// One service's requests through the gateway.
#[derive(Debug, Default, Clone, Copy)]
struct Traffic {
    in_flight: usize,
    /// When the last request ended (its response body finished or was dropped).
    last_end_unix_ms: u64,
}

pub struct Gateway {
    supervisor: Arc<Supervisor>,
    settings: GatewayConfig,
    client: proxy::Client,
    traffic: Mutex<BTreeMap<String, Traffic>>,
    /// Wakes whoever waits for a service's requests to finish.
    traffic_changed: tokio::sync::Notify,
    /// Which waiting request for a GPU service goes next.
    scheduler: Mutex<swap::Scheduler>,
    /// Requests waiting for the scheduler, by id.
    waiting: Mutex<BTreeMap<u64, Waiter>>,
    next_request: std::sync::atomic::AtomicU64,
    /// Each service's `max_concurrent` slots: (the limit they were made for, slots).
    slots: Mutex<BTreeMap<String, (usize, Arc<tokio::sync::Semaphore>)>>,
    /// Requests waiting for a slot now, all services together.
    queued: Arc<std::sync::atomic::AtomicUsize>,
    /// Makes a service for a model nobody configured (the catalog's), when
    /// it can: `Ok(true)` made, `Ok(false)` not a model it knows.
    on_demand: Option<OnDemand>,
    /// The other nodes, when this one is in a cluster: a model no local
    /// service serves is forwarded to one of theirs.
    cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// See [`Gateway::build`].
pub type OnDemand = Arc<
    dyn Fn(String) -> futures_util::future::BoxFuture<'static, Result<bool, String>> + Send + Sync,
>;

/// A request waiting for the scheduler: its service, and where its admission goes.
type Waiter = (
    String,
    tokio::sync::oneshot::Sender<Result<InFlight, String>>,
);

/// The world as the scheduler sees it at one moment, read off the async
/// workers (a GPU check may ask the driver).
struct Snapshot {
    services: BTreeMap<String, Seen>,
}

struct Seen {
    wants_gpus: bool,
    running: bool,
    blockers: Vec<String>,
    in_flight: usize,
}

impl swap::View for Snapshot {
    fn wants_gpus(&self, service: &str) -> bool {
        self.services
            .get(service)
            .is_some_and(|seen| seen.wants_gpus)
    }

    fn running(&self, service: &str) -> bool {
        self.services.get(service).is_some_and(|seen| seen.running)
    }

    fn blockers(&self, service: &str) -> Vec<String> {
        self.services
            .get(service)
            .map(|seen| seen.blockers.clone())
            .unwrap_or_default()
    }

    fn in_flight(&self, service: &str) -> usize {
        self.services.get(service).map_or(0, |seen| seen.in_flight)
    }
}

/// Where a request for a model goes: a service here, or other nodes'
/// services (in the order to try them).
#[derive(Debug)]
pub enum Target {
    Here(Box<Route>),
    Elsewhere(Vec<crate::cluster::Replica>),
}

/// Where a request goes.
#[derive(Debug, Clone)]
pub struct Route {
    pub service: String,
    pub routable: Routable,
}

/// One model as `GET /v1/models` lists it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ListedModel {
    pub id: String,
    pub service: String,
    /// The service's state: `ready`, `stopped`, `starting`, …
    pub status: String,
    /// The node serving it, when another node does.
    pub node: Option<String>,
}

impl Gateway {
    pub fn new(supervisor: Arc<Supervisor>, settings: GatewayConfig) -> Arc<Self> {
        Self::build(supervisor, settings, None, None)
    }

    /// The gateway, asking `on_demand` for a service when a request names a
    /// model no service serves (the daemon's catalog answers), and else
    /// forwarding it to another node of `cluster` that serves it.
    pub fn build(
        supervisor: Arc<Supervisor>,
        settings: GatewayConfig,
        on_demand: Option<OnDemand>,
        cluster: Option<Arc<crate::cluster::Cluster>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            supervisor,
            client: proxy::client(),
            traffic: Mutex::default(),
            traffic_changed: tokio::sync::Notify::new(),
            scheduler: Mutex::new(swap::Scheduler::new(settings.max_wait)),
            waiting: Mutex::default(),
            next_request: std::sync::atomic::AtomicU64::new(1),
            slots: Mutex::default(),
            queued: Arc::default(),
            on_demand,
            cluster,
            settings,
        })
    }

    /// A slot under the service's `max_concurrent`: at once; or after waiting
    /// in line (`queue = true`, while `[gateway] max_queue` has room: else 503);
    /// or 429 (`queue = false`). Decided before any byte is sent.
    pub async fn slot(
        &self,
        route: &Route,
    ) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, GatewayError> {
        use std::sync::atomic::Ordering;
        let concurrency = route.routable.concurrency;
        let Some(max) = concurrency.max else {
            return Ok(None);
        };
        let slots = {
            let mut slots = lock(&self.slots);
            let entry = slots
                .entry(route.service.clone())
                .or_insert_with(|| (max, Arc::new(tokio::sync::Semaphore::new(max))));
            if entry.0 != max {
                // A reload changed the limit: new requests count against the new one.
                *entry = (max, Arc::new(tokio::sync::Semaphore::new(max)));
            }
            entry.1.clone()
        };
        if let Ok(permit) = slots.clone().try_acquire_owned() {
            return Ok(Some(permit));
        }
        let service = &route.service;
        if !concurrency.queue {
            let mut refused = GatewayError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                format!("`{service}` has its {max} request(s) in flight (`max_concurrent`, `queue = false`)"),
            );
            refused.retry_after = Some(1);
            return Err(refused);
        }
        if self.queued.fetch_add(1, Ordering::SeqCst) >= self.settings.max_queue {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            let mut full = GatewayError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "queue_full",
                format!(
                    "{} request(s) wait already (`[gateway] max_queue`)",
                    self.settings.max_queue
                ),
            );
            full.retry_after = Some(1);
            return Err(full);
        }
        // Out of the line however the wait ends (a client gone included).
        struct Unqueue(Arc<std::sync::atomic::AtomicUsize>);
        impl Drop for Unqueue {
            fn drop(&mut self) {
                self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let _in_line = Unqueue(self.queued.clone());
        Ok(slots.acquire_owned().await.ok())
    }

    /// A request may go to `service` now: at once for a service without GPUs;
    /// for one with, when the scheduler says (after a switch, if it needs one).
    /// The request is in flight from the moment it is admitted.
    pub async fn admit(self: &Arc<Self>, route: &Route) -> Result<InFlight, GatewayError> {
        let service = route.service.as_str();
        if !route.routable.wants_gpus {
            return Ok(self.in_flight(service));
        }
        let id = self
            .next_request
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (admitted, admission) = tokio::sync::oneshot::channel();
        lock(&self.waiting).insert(id, (service.to_string(), admitted));
        // In line by arrival, before anything is awaited.
        lock(&self.scheduler).enqueue(id, service);
        // If the client goes away while waiting, its place in line goes too.
        let _place = Place {
            gateway: self.clone(),
            id,
        };
        let snapshot = self.snapshot().await;
        let effects = lock(&self.scheduler).changed(&snapshot);
        self.perform(effects);
        let _deadline = tokio::spawn(self.clone().decide_at_deadline());
        match admission.await {
            Ok(Ok(in_flight)) => Ok(in_flight),
            Ok(Err(reason)) => Err(GatewayError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                format!("`{service}` could not be switched to: {reason}"),
            )),
            Err(_) => Err(GatewayError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                "nanny is shutting down",
            )),
        }
    }

    /// Decides again once the oldest waiter's `max_wait` is up (it may go
    /// next then, whoever is busy).
    async fn decide_at_deadline(self: Arc<Self>) {
        let deadline = lock(&self.scheduler).next_deadline();
        if let Some(deadline) = deadline {
            tokio::time::sleep_until(deadline).await;
            self.reschedule().await;
        }
    }

    /// Something changed (a request ended, time passed): decide again.
    async fn reschedule(self: &Arc<Self>) {
        if lock(&self.waiting).is_empty() {
            return;
        }
        let snapshot = self.snapshot().await;
        let effects = lock(&self.scheduler).changed(&snapshot);
        self.perform(effects);
    }

    async fn snapshot(self: &Arc<Self>) -> Snapshot {
        let gateway = self.clone();
        let read = tokio::task::spawn_blocking(move || {
            let traffic = lock(&gateway.traffic).clone();
            let services = gateway
                .supervisor
                .routable()
                .into_iter()
                .map(|(name, routable)| {
                    let running = routable.status.state.is_started();
                    let blockers = if routable.wants_gpus && !running {
                        gateway.supervisor.gpu_blockers(&name)
                    } else {
                        Vec::new()
                    };
                    let seen = Seen {
                        wants_gpus: routable.wants_gpus,
                        running,
                        blockers,
                        in_flight: traffic.get(&name).map_or(0, |t| t.in_flight),
                    };
                    (name, seen)
                })
                .collect();
            Snapshot { services }
        });
        read.await.unwrap_or(Snapshot {
            services: BTreeMap::new(),
        })
    }

    /// Carries out what the scheduler decided.
    fn perform(self: &Arc<Self>, effects: Vec<swap::Effect>) {
        for effect in effects {
            match effect {
                swap::Effect::Admit(id) => {
                    let Some((service, waiter)) = lock(&self.waiting).remove(&id) else {
                        continue;
                    };
                    // In flight from now: the scheduler counts on it.
                    let _ = waiter.send(Ok(self.in_flight(&service)));
                }
                swap::Effect::Reject(id, reason) => {
                    if let Some((_, waiter)) = lock(&self.waiting).remove(&id) {
                        let _ = waiter.send(Err(reason));
                    }
                }
                swap::Effect::Switch { to, evict } => {
                    tokio::spawn(self.clone().switch(to, evict));
                }
            }
        }
    }

    pub fn max_body(&self) -> usize {
        self.settings.max_body
    }

    /// How long an answer whose client went away may run on (`on_disconnect =
    /// "drain"`, bounded by `drain_timeout`); `None`: it is cut with the client.
    fn drain_on_disconnect(&self, route: &Route) -> Option<Duration> {
        route
            .routable
            .drain_on_disconnect
            .then_some(self.settings.drain_timeout)
    }

    /// Where one forwarded request's figures go.
    fn recorder(&self, service: &str, model: &str) -> proxy::Recorder {
        proxy::Recorder::new(self.supervisor.metrics().clone(), service, model)
    }

    /// Requests in flight by service, and how many wait for a slot: for `/metrics`.
    pub fn load(&self) -> (Vec<(String, usize)>, usize) {
        let in_flight = lock(&self.traffic)
            .iter()
            .map(|(service, traffic)| (service.clone(), traffic.in_flight))
            .collect();
        let queued = self.queued.load(std::sync::atomic::Ordering::SeqCst);
        (in_flight, queued)
    }

    /// Every model clients can ask for, running or not: each service's names,
    /// then what it reported when ready.
    pub fn models(&self) -> Vec<ListedModel> {
        let mut listed: Vec<ListedModel> = Vec::new();
        for (service, routable) in self.supervisor.routable() {
            for id in routable.model_names() {
                if listed.iter().any(|model| model.id == id) {
                    continue;
                }
                listed.push(ListedModel {
                    id,
                    service: service.clone(),
                    status: routable.status.state.name().to_string(),
                    node: None,
                });
            }
        }
        listed
    }

    /// The models other nodes serve, each once (the first node's).
    pub fn models_elsewhere(&self) -> Vec<ListedModel> {
        let mut listed: Vec<ListedModel> = Vec::new();
        let others = self.cluster.as_ref().map(|cluster| cluster.others());
        for node in others.into_iter().flatten() {
            for service in &node.services {
                for id in &service.models {
                    if listed.iter().any(|model| &model.id == id) {
                        continue;
                    }
                    listed.push(ListedModel {
                        id: id.clone(),
                        service: service.name.clone(),
                        status: service.state.clone(),
                        node: Some(node.record.node.clone()),
                    });
                }
            }
        }
        listed
    }

    /// Where a request for `model` goes: a service here (started on demand,
    /// made from the catalog), else — unless another node forwarded it —
    /// the other nodes that serve it.
    pub async fn target(&self, model: &str, forwarded: bool) -> Result<Target, GatewayError> {
        if let Some(route) = self.route_here(model).await? {
            return Ok(Target::Here(Box::new(route)));
        }
        if let (Some(cluster), false) = (&self.cluster, forwarded) {
            let replicas = cluster.replicas(model);
            if !replicas.is_empty() {
                return Ok(Target::Elsewhere(replicas));
            }
        }
        Err(self.no_such_model(model))
    }

    /// Sends a request to the first of `replicas` that answers: one that
    /// cannot be reached (nothing was sent) is passed over for the next, and
    /// for a while after; an answer, or a failure once sent, is the client's.
    pub async fn forward_elsewhere(
        &self,
        replicas: Vec<crate::cluster::Replica>,
        request: proxy::Outgoing,
    ) -> Result<axum::response::Response, GatewayError> {
        let Some(cluster) = &self.cluster else {
            return Err(GatewayError::new(
                StatusCode::NOT_FOUND,
                "model_not_found",
                "this node is in no cluster",
            ));
        };
        let mut headers = request.headers.clone();
        if let Ok(node) = axum::http::HeaderValue::from_str(cluster.node()) {
            headers.insert(crate::cluster::FORWARDED_BY, node);
        }
        let mut missed = Vec::new();
        for replica in replicas {
            let upstream = proxy::Upstream {
                host: &replica.host,
                port: replica.port,
                method: request.method.clone(),
                target: &request.target,
                headers: &headers,
                length: Some(request.body.len()),
                body: axum::body::Body::from(request.body.clone()),
                api_key: cluster.token(),
                drain: None,
            };
            let recorder = self.recorder(
                &format!("{}/{}", replica.node, replica.service),
                &request.model,
            );
            let held = Box::new(cluster.forwarding(&replica));
            match proxy::forward(&self.client, upstream, held, recorder).await {
                Err(error) if error.code == proxy::UNREACHABLE => {
                    tracing::warn!(node = %replica.node, "cluster: forward failed: {}", error.message);
                    cluster.unreachable(&replica.node);
                    missed.push(replica.node);
                }
                answered => return answered,
            }
        }
        let mut error = GatewayError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            format!(
                "`{}` is served on node(s) {} but none answered",
                request.model,
                missed.join(", ")
            ),
        );
        error.retry_after = Some(1);
        Err(error)
    }

    /// The service here that serves `model` — configured names first, then
    /// the models backends reported, then one made from the catalog when it
    /// can be; `None` when none does.
    async fn route_here(&self, model: &str) -> Result<Option<Route>, GatewayError> {
        if let Some((service, routable)) = self.supervisor.routable_for(model) {
            return Ok(Some(Route { service, routable }));
        }
        // A model nobody configured may be one the catalog can serve.
        if let Some(make) = &self.on_demand {
            match make(model.to_string()).await {
                // Made now, or by a request a moment earlier.
                Ok(_) => {
                    if let Some((service, routable)) = self.supervisor.routable_for(model) {
                        return Ok(Some(Route { service, routable }));
                    }
                }
                Err(message) => {
                    return Err(GatewayError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "service_unavailable",
                        format!("`{model}` is in the catalog but cannot be served: {message}"),
                    ))
                }
            }
        }
        Ok(None)
    }

    /// The 404 for a model nobody serves, naming close names.
    fn no_such_model(&self, model: &str) -> GatewayError {
        let known: Vec<String> = self.models().into_iter().map(|model| model.id).collect();
        let hint = crate::config::did_you_mean(model, known.iter().map(String::as_str))
            .map_or_else(
                || {
                    if known.is_empty() {
                        "; nanny serves no model yet".to_string()
                    } else {
                        format!("; known models: {}", known.join(", "))
                    }
                },
                |close| format!("; did you mean `{close}`?"),
            );
        GatewayError::new(
            StatusCode::NOT_FOUND,
            "model_not_found",
            format!("The model `{model}` does not exist{hint}"),
        )
    }

    /// The service called `name`, whatever it serves; else a 404.
    pub fn route_named(&self, name: &str) -> Result<Route, GatewayError> {
        let routable = self.supervisor.routable_named(name).ok_or_else(|| {
            GatewayError::new(
                StatusCode::NOT_FOUND,
                "service_not_found",
                format!("no service named `{name}`"),
            )
        })?;
        Ok(Route {
            service: name.to_string(),
            routable,
        })
    }

    /// The service ready to take a request: started (with what it depends on)
    /// when it is not, and waited for; a start that fails answers 503 with why.
    pub async fn ready(&self, route: &Route) -> Result<ServiceStatus, GatewayError> {
        let service = &route.service;
        let unavailable = |message: String| {
            GatewayError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                message,
            )
        };
        let mut status = self
            .supervisor
            .watch(service)
            .map_err(|error| unavailable(error.to_string()))?;
        let before = {
            let now = status.borrow_and_update();
            if now.state == State::Ready {
                return Ok(now.clone());
            }
            now.since_unix_ms
        };
        self.supervisor
            .start(service)
            .await
            .map_err(|error| match error {
                SuperviseError::ShuttingDown => unavailable("nanny is shutting down".into()),
                other => unavailable(other.to_string()),
            })?;
        // The start counts as activity: a service started for a request that
        // never comes is stopped after its idle time, not at once.
        self.touch(service);
        let settled = |s: &ServiceStatus| match &s.state {
            State::Ready => true,
            State::Failed { .. } | State::Backoff { .. } | State::Stopped => {
                s.since_unix_ms != before
            }
            State::Waiting { reason } => reason.contains("which failed"),
            _ => false,
        };
        let budget = route.routable.startup_timeout + START_SLACK;
        let settled = tokio::time::timeout(budget, status.wait_for(settled)).await;
        let now = match settled {
            Ok(Ok(now)) => now.clone(),
            Ok(Err(_)) => return Err(unavailable(format!("`{service}` went away"))),
            Err(_) => {
                return Err(unavailable(format!(
                    "`{service}` did not become ready within {}s",
                    budget.as_secs()
                )))
            }
        };
        match &now.state {
            State::Ready => Ok(now),
            State::Failed { reason } | State::Waiting { reason } => Err(unavailable(format!(
                "`{service}` could not start: {reason}"
            ))),
            _ => Err(unavailable(format!(
                "`{service}` could not start: {}",
                now.last_failure.as_deref().unwrap_or(now.state.name())
            ))),
        }
    }

    /// Switches the GPUs to `to`: waits (bounded by `drain_timeout`) for the
    /// requests of the services it must evict to finish — a stream in progress
    /// is never cut — stops them, starts `to` and tells the scheduler.
    async fn switch(self: Arc<Self>, to: String, evict: Vec<String>) {
        let began = tokio::time::Instant::now();
        let drain = tokio::time::sleep(self.settings.drain_timeout);
        tokio::pin!(drain);
        for service in &evict {
            loop {
                let idle = self.traffic_changed.notified();
                if lock(&self.traffic)
                    .get(service)
                    .is_none_or(|t| t.in_flight == 0)
                {
                    break;
                }
                tokio::select! {
                    _ = idle => {}
                    _ = &mut drain => {
                        tracing::warn!(service = %service, "evicted for `{to}` with requests still in flight after the drain timeout");
                        break;
                    }
                }
            }
            let reason = format!("evicted for `{to}`, which a request needs on its GPUs");
            tracing::info!(service = %service, "{reason}");
            if let Err(error) = self.supervisor.stop_because(service, reason).await {
                tracing::warn!(service = %service, "eviction: {error}");
            }
        }
        let routable = self.supervisor.routable().remove(&to);
        let outcome = match routable {
            Some(routable) => {
                let route = Route {
                    service: to.clone(),
                    routable,
                };
                self.ready(&route)
                    .await
                    .map(|_| ())
                    .map_err(|error| error.message)
            }
            None => Err(format!("`{to}` is no longer configured")),
        };
        if outcome.is_ok() {
            self.supervisor.metrics().observe_swap(&to, began.elapsed());
        }
        let snapshot = self.snapshot().await;
        let effects = lock(&self.scheduler).switched(&to, outcome, &snapshot);
        self.perform(effects);
    }

    /// Counts a request in flight until the guard is dropped.
    pub fn in_flight(self: &Arc<Self>, service: &str) -> InFlight {
        lock(&self.traffic)
            .entry(service.to_string())
            .or_default()
            .in_flight += 1;
        self.load_changed();
        InFlight {
            gateway: self.clone(),
            service: service.to_string(),
            _slot: None,
        }
    }

    /// The other nodes see each service's requests in flight.
    fn load_changed(&self) {
        if let Some(cluster) = &self.cluster {
            cluster.load_changed();
        }
    }

    fn touch(&self, service: &str) {
        let now = unix_ms(SystemTime::now());
        lock(&self.traffic)
            .entry(service.to_string())
            .or_default()
            .last_end_unix_ms = now;
    }

    /// Stops services idle past their `idle_timeout`, for as long as the daemon runs.
    pub async fn stop_idle_services(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(IDLE_CHECK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if self.supervisor.is_shutting_down() {
                return;
            }
            for (service, idle_for) in self.idle_services() {
                let said = format!(
                    "nanny: stopping `{service}`: idle for {}",
                    crate::config::duration::describe(idle_for)
                );
                tracing::info!("{said}");
                if let Ok(logs) = self.supervisor.logs(&service) {
                    logs.push(&OutputLine {
                        stream: Stream::Stderr,
                        text: said,
                    });
                }
                let reason = format!("idle for {}", crate::config::duration::describe(idle_for));
                if let Err(error) = self.supervisor.stop_because(&service, reason).await {
                    tracing::warn!(service = %service, "idle stop: {error}");
                }
                // One made for a catalog model goes with it (until asked for again).
                if let Ok(true) = self.supervisor.forget(&service).await {
                    lock(&self.traffic).remove(&service);
                    tracing::info!(service = %service, "forgotten: made on demand, stopped for idleness");
                }
            }
        }
    }

    /// Ready services with no request in flight whose last one ended (or whose
    /// start began) longer ago than their idle timeout, with that timeout.
    fn idle_services(&self) -> Vec<(String, Duration)> {
        let now = unix_ms(SystemTime::now());
        let traffic = lock(&self.traffic).clone();
        self.supervisor
            .routable()
            .into_iter()
            .filter_map(|(service, routable)| {
                let idle_timeout = routable.idle_timeout?;
                if routable.status.state != State::Ready {
                    return None;
                }
                let seen = traffic.get(&service).copied().unwrap_or_default();
                let last = seen.last_end_unix_ms.max(routable.status.since_unix_ms);
                let idle = now.saturating_sub(last);
                (seen.in_flight == 0 && u128::from(idle) >= idle_timeout.as_millis())
                    .then_some((service, idle_timeout))
            })
            .collect()
    }
}

/// A request's place in the scheduler's line, given up when it is dropped
/// (the client went away before its turn).
struct Place {
    gateway: Arc<Gateway>,
    id: u64,
}

impl Drop for Place {
    fn drop(&mut self) {
        lock(&self.gateway.waiting).remove(&self.id);
        lock(&self.gateway.scheduler).cancel(self.id);
    }
}

/// A request in flight; dropping it ends it (with its response body).
pub struct InFlight {
    gateway: Arc<Gateway>,
    service: String,
    /// Its `max_concurrent` slot, given back with it.
    _slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl InFlight {
    /// The same request, holding `slot` until it ends.
    pub fn holding(mut self, slot: Option<tokio::sync::OwnedSemaphorePermit>) -> Self {
        self._slot = slot;
        self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = unix_ms(SystemTime::now());
        let mut traffic = lock(&self.gateway.traffic);
        let entry = traffic.entry(self.service.clone()).or_default();
        entry.in_flight = entry.in_flight.saturating_sub(1);
        entry.last_end_unix_ms = now;
        drop(traffic);
        self.gateway.traffic_changed.notify_waiters();
        self.gateway.load_changed();
        // Someone waiting for this service's GPUs may go now.
        if !lock(&self.gateway.waiting).is_empty() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let gateway = self.gateway.clone();
                runtime.spawn(async move { gateway.reschedule().await });
            }
        }
    }
}
