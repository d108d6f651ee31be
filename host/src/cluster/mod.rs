//! Several machines, one endpoint: this node registers itself and its services
//! in etcd under one lease (the heartbeat), watches everyone else's keys (the
//! discovery), and tells the gateway which node to forward a model's requests
//! to when no local service serves it. The registry task does the etcd I/O;
//! this handle owns the view it builds and the node's link state.

mod records;
mod registry;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::http::{header, Method, Request, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};
use utoipa::ToSchema;

pub use records::{Capabilities, GpuRecord, NodeRecord, ServiceRecord};
pub use registry::run;

use crate::config::ClusterConfig;
use crate::locks::lock;
use crate::supervise::unix_ms;

/// The header a forwarded request carries (the node it came through): such a
/// request is served locally or not at all, so a request crosses at most once.
pub const FORWARDED_BY: &str = "x-nanny-forwarded-by";

/// What this node publishes about itself, read from the supervisor, the
/// gateway and the GPU broker by whoever wires the daemon together.
pub trait Local: Send + Sync {
    fn gpus(&self) -> Vec<GpuRecord>;
    fn capabilities(&self) -> Capabilities;
    fn services(&self) -> Vec<ServiceRecord>;
}

/// The node's connection to etcd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    Connecting,
    Connected,
    Disconnected,
}

#[derive(Debug, Clone)]
struct Link {
    state: LinkState,
    since_unix_ms: u64,
    error: Option<String>,
}

/// `cluster` in `GET /v1/info`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClusterInfo {
    pub node: String,
    pub advertise: String,
    pub etcd: Vec<String>,
    pub state: LinkState,
    /// Since when it is in that state (Unix milliseconds).
    pub since_unix_ms: u64,
    /// Why it is disconnected.
    pub error: Option<String>,
    /// Other nodes in view.
    pub nodes: usize,
}

/// One node as `GET /v1/nodes` lists it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeView {
    #[serde(flatten)]
    pub record: NodeRecord,
    /// Whether it is the node that answered.
    pub local: bool,
    /// When it was last known alive (Unix milliseconds, by the answering
    /// node's clock): now while its lease holds and this node hears etcd;
    /// else when this node lost etcd.
    pub last_seen_unix_ms: u64,
    /// When its keys last changed (its state, its services).
    pub changed_unix_ms: u64,
    pub services: Vec<ServiceRecord>,
}

/// A service on another node that serves a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    pub node: String,
    pub host: String,
    pub port: u16,
    pub service: String,
}

pub struct Cluster {
    config: ClusterConfig,
    /// This process, so that a second daemon under the same node name is told apart.
    instance: String,
    started_unix_ms: u64,
    local: Arc<dyn Local>,
    view: Mutex<records::View>,
    link: watch::Sender<Link>,
    /// A service's state changed here: put at once.
    state_changed: Notify,
    /// Only the requests in flight changed: put within `LOAD_GAP`.
    load_changed: Notify,
    /// Requests this node forwards now, by (node, service): spreads a burst
    /// before the replicas' own counts come back through etcd.
    forwards: Mutex<BTreeMap<(String, String), usize>>,
    /// Nodes a forward could not reach, and until when they are passed over.
    unreachable: Mutex<BTreeMap<String, tokio::time::Instant>>,
    /// Takes turns between equally loaded replicas.
    turn: AtomicUsize,
    client: crate::gateway::Client,
}

/// How coarsely other nodes' published requests in flight count.
const PUBLISHED_STEP: usize = 4;

/// How much of another node's API answer is relayed.
const NODE_ANSWER_LIMIT: usize = 16 << 20;

impl Cluster {
    pub fn new(config: ClusterConfig, local: Arc<dyn Local>) -> Arc<Self> {
        let now = unix_ms(SystemTime::now());
        let (link, _) = watch::channel(Link {
            state: LinkState::Connecting,
            since_unix_ms: now,
            error: None,
        });
        Arc::new(Self {
            instance: format!("{}-{now}", std::process::id()),
            started_unix_ms: now,
            config,
            local,
            view: Mutex::default(),
            link,
            state_changed: Notify::new(),
            load_changed: Notify::new(),
            forwards: Mutex::default(),
            unreachable: Mutex::default(),
            turn: AtomicUsize::new(0),
            client: crate::gateway::client(),
        })
    }

    pub fn node(&self) -> &str {
        &self.config.node
    }

    /// The cluster's shared token, sent on every node-to-node call.
    pub fn token(&self) -> Option<&str> {
        self.config.token.as_deref()
    }

    /// A service's state changed here: the registry puts it at once.
    pub fn state_changed(&self) {
        self.state_changed.notify_one();
    }

    /// Requests in flight here changed: the registry puts them soon (a busy
    /// gateway puts a few times a second, not per request).
    pub fn load_changed(&self) {
        self.load_changed.notify_one();
    }

    /// This node's own record, as it is now.
    fn record(&self) -> NodeRecord {
        NodeRecord {
            node: self.config.node.clone(),
            advertise: self.config.advertise.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            instance: self.instance.clone(),
            started_unix_ms: self.started_unix_ms,
            gpus: self.local.gpus(),
            capabilities: self.local.capabilities(),
        }
    }

    fn set_link(&self, state: LinkState, error: Option<String>) {
        self.link.send_if_modified(|link| {
            if link.state == state && link.error == error {
                return false;
            }
            if link.state != state {
                link.since_unix_ms = unix_ms(SystemTime::now());
            }
            link.state = state;
            link.error = error;
            true
        });
    }

    pub fn info(&self) -> ClusterInfo {
        let link = self.link.borrow().clone();
        ClusterInfo {
            node: self.config.node.clone(),
            advertise: self.config.advertise.clone(),
            etcd: self.config.etcd.clone(),
            state: link.state,
            since_unix_ms: link.since_unix_ms,
            error: link.error,
            nodes: lock(&self.view).nodes().count(),
        }
    }

    /// Every node: this one first (as it is now), then the others.
    pub fn nodes(&self) -> Vec<NodeView> {
        let now = unix_ms(SystemTime::now());
        let mut nodes = vec![NodeView {
            record: self.record(),
            local: true,
            last_seen_unix_ms: now,
            changed_unix_ms: now,
            services: self.local.services(),
        }];
        nodes.extend(self.others());
        nodes
    }

    /// The other nodes, as etcd last said.
    pub fn others(&self) -> Vec<NodeView> {
        let link = self.link.borrow().clone();
        let seen = match link.state {
            LinkState::Connected => unix_ms(SystemTime::now()),
            LinkState::Connecting | LinkState::Disconnected => link.since_unix_ms,
        };
        let view = lock(&self.view);
        view.nodes()
            .map(|(record, remote)| NodeView {
                record: record.clone(),
                local: false,
                last_seen_unix_ms: seen,
                changed_unix_ms: remote.changed_unix_ms,
                services: remote.services.values().cloned().collect(),
            })
            .collect()
    }

    /// The other nodes' services serving `model`, in the order to try them:
    /// ready ones first, then the least loaded, taking turns between equals;
    /// nodes a forward just failed to reach go last. The load is what this
    /// node forwards to each now, plus their published count read coarsely
    /// (in steps of `PUBLISHED_STEP`): that count arrives up to a put's gap
    /// late and includes this node's own forwards, so a stale one or two must
    /// not swing a client's requests to one replica; a replica other gateways
    /// keep busy is still passed over.
    pub fn replicas(&self, model: &str) -> Vec<Replica> {
        let now = tokio::time::Instant::now();
        let unreachable: Vec<String> = {
            let mut unreachable = lock(&self.unreachable);
            unreachable.retain(|_, until| *until > now);
            unreachable.keys().cloned().collect()
        };
        let forwards = lock(&self.forwards);
        let mut found: Vec<((bool, bool, usize), Replica)> = {
            let view = lock(&self.view);
            view.serving(model)
                .filter_map(|(node, service)| {
                    let (host, port) = crate::config::host_and_port(&node.advertise).ok()?;
                    let ours = forwards
                        .get(&(node.node.clone(), service.name.clone()))
                        .copied()
                        .unwrap_or(0);
                    let rank = (
                        unreachable.contains(&node.node),
                        service.state != "ready",
                        ours + service.in_flight / PUBLISHED_STEP,
                    );
                    let replica = Replica {
                        node: node.node.clone(),
                        host,
                        port,
                        service: service.name.clone(),
                    };
                    Some((rank, replica))
                })
                .collect()
        };
        found.sort_by_key(|(rank, _)| *rank);
        // Equals at the front take turns.
        let equals = found
            .iter()
            .take_while(|(rank, _)| *rank == found[0].0)
            .count();
        if equals > 1 {
            let turn = self.turn.fetch_add(1, Ordering::Relaxed) % equals;
            found[..equals].rotate_left(turn);
        }
        found.into_iter().map(|(_, replica)| replica).collect()
    }

    /// Counts a request forwarded to `replica` until the guard is dropped.
    pub fn forwarding(self: &Arc<Self>, replica: &Replica) -> Forwarding {
        let key = (replica.node.clone(), replica.service.clone());
        *lock(&self.forwards).entry(key.clone()).or_default() += 1;
        Forwarding {
            cluster: self.clone(),
            key,
        }
    }

    /// A forward to `node` found nobody there: pass it over for a lease's
    /// length (by then etcd has dropped it, or it is back).
    pub fn unreachable(&self, node: &str) {
        let until = tokio::time::Instant::now() + self.config.lease_ttl;
        lock(&self.unreachable).insert(node.to_string(), until);
    }

    /// Calls another node's control API (`POST /v1/services/chat/start`) with
    /// the cluster's token, and relays its answer.
    pub async fn call_node(
        &self,
        node: &str,
        method: Method,
        path_and_query: &str,
    ) -> Result<(StatusCode, Bytes), NodeCallError> {
        let advertise = lock(&self.view)
            .node(node)
            .map(|record| record.advertise.clone())
            .ok_or_else(|| NodeCallError::Unknown(node.to_string()))?;
        let uri = format!("{advertise}{path_and_query}");
        let mut request = Request::builder()
            .method(method)
            .uri(&uri)
            .header(crate::api::CLIENT_HEADER, "nanny-node")
            .header(FORWARDED_BY, &self.config.node);
        if let Some(token) = self.token() {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Body::empty())
            .map_err(|error| NodeCallError::Unreachable(node.to_string(), error.to_string()))?;
        let unreachable = |error: String| NodeCallError::Unreachable(node.to_string(), error);
        // A start waits for readiness on the other side: as long as a start may take.
        let answer = tokio::time::timeout(NODE_CALL_TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| unreachable(format!("no answer within {}s", NODE_CALL_TIMEOUT.as_secs())))?
            .map_err(|error| unreachable(error.to_string()))?;
        let status = answer.status();
        let body = axum::body::to_bytes(Body::new(answer.into_body()), NODE_ANSWER_LIMIT)
            .await
            .map_err(|error| unreachable(error.to_string()))?;
        Ok((status, body))
    }
}

/// How long a call to another node's API may take (a start waits for ready).
const NODE_CALL_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum NodeCallError {
    #[error("no node named `{0}` is in the cluster (`nanny nodes` lists them)")]
    Unknown(String),
    #[error("node `{0}` did not answer: {1}")]
    Unreachable(String, String),
}

/// A request forwarded to another node, counted until its answer ends.
pub struct Forwarding {
    cluster: Arc<Cluster>,
    key: (String, String),
}

impl Drop for Forwarding {
    fn drop(&mut self) {
        let mut forwards = lock(&self.cluster.forwards);
        if let Some(count) = forwards.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                forwards.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;
    impl Local for Nothing {
        fn gpus(&self) -> Vec<GpuRecord> {
            Vec::new()
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities::default()
        }
        fn services(&self) -> Vec<ServiceRecord> {
            Vec::new()
        }
    }

    fn cluster() -> Arc<Cluster> {
        Cluster::new(
            ClusterConfig {
                etcd: vec!["http://127.0.0.1:2379".into()],
                node: "me".into(),
                advertise: "http://127.0.0.1:7878".into(),
                prefix: "/nanny/v1".into(),
                lease_ttl: Duration::from_secs(10),
                token: None,
            },
            Arc::new(Nothing),
        )
    }

    fn publish(cluster: &Cluster, node: &str, port: u16, state: &str, in_flight: usize) {
        let record = NodeRecord {
            node: node.into(),
            advertise: format!("http://127.0.0.1:{port}"),
            version: "0".into(),
            instance: "1".into(),
            started_unix_ms: 0,
            gpus: Vec::new(),
            capabilities: Capabilities::default(),
        };
        let service = ServiceRecord {
            name: "chat".into(),
            backend: "mock".into(),
            state: state.into(),
            port: 1,
            models: vec!["qwen".into()],
            in_flight,
        };
        let mut view = lock(&cluster.view);
        let prefix = "/nanny/v1";
        let node_key = records::Key::Node(node.into()).path(prefix);
        let service_key = records::Key::Service {
            node: node.into(),
            service: "chat".into(),
        }
        .path(prefix);
        let value = serde_json::to_vec(&record).unwrap();
        view.apply(
            prefix,
            "me",
            records::Change::Put {
                key: &node_key,
                value: &value,
            },
            0,
        );
        let value = serde_json::to_vec(&service).unwrap();
        view.apply(
            prefix,
            "me",
            records::Change::Put {
                key: &service_key,
                value: &value,
            },
            0,
        );
    }

    fn first(cluster: &Cluster) -> String {
        cluster.replicas("qwen")[0].node.clone()
    }

    #[tokio::test(start_paused = true)]
    async fn ready_and_idle_replicas_go_first_and_equals_take_turns() {
        let cluster = cluster();
        assert!(cluster.replicas("qwen").is_empty());
        publish(&cluster, "a", 1001, "stopped", 0);
        publish(&cluster, "b", 1002, "ready", 8);
        assert_eq!(first(&cluster), "b", "ready beats stopped");
        publish(&cluster, "a", 1001, "ready", 0);
        assert_eq!(first(&cluster), "a", "idle beats busy");
        // A stale count of one or two does not swing the choice.
        publish(&cluster, "b", 1002, "ready", 2);
        let mut seen = BTreeMap::<String, usize>::new();
        for _ in 0..10 {
            *seen.entry(first(&cluster)).or_default() += 1;
        }
        assert_eq!(seen.get("a"), Some(&5));
        assert_eq!(seen.get("b"), Some(&5));
        // What this node forwards now counts before etcd says so.
        let replica = cluster.replicas("qwen")[0].clone();
        let held = cluster.forwarding(&replica);
        assert_ne!(first(&cluster), replica.node);
        drop(held);
        // A node that could not be reached goes last, for a lease's length.
        cluster.unreachable("a");
        assert_eq!(first(&cluster), "b");
        assert_eq!(first(&cluster), "b");
        tokio::time::advance(Duration::from_secs(11)).await;
        let firsts: Vec<String> = (0..2).map(|_| first(&cluster)).collect();
        assert!(firsts.contains(&"a".to_string()), "{firsts:?}");
    }
}
