//! What each node writes to etcd, where, and the view of the cluster that a
//! node builds from those keys. Pure data: the registry does the I/O.
//!
//! ```text
//! {prefix}/nodes/{node}                    NodeRecord, under the node's lease
//! {prefix}/nodes/{node}/services/{name}    ServiceRecord, under the same lease
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One node as it describes itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodeRecord {
    pub node: String,
    /// Where its API and gateway are (`http://10.0.0.5:7878`).
    pub advertise: String,
    /// nanny's version on it.
    pub version: String,
    /// Which process wrote it: a second daemon with the same node name is refused.
    pub instance: String,
    pub started_unix_ms: u64,
    #[serde(default)]
    pub gpus: Vec<GpuRecord>,
    #[serde(default)]
    pub capabilities: Capabilities,
}

/// One GPU of a node, and who holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GpuRecord {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub memory_mib: u64,
    /// The services holding a lease on it.
    #[serde(default)]
    pub holders: Vec<String>,
}

/// What a node can run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Capabilities {
    pub cpus: usize,
    /// The NVIDIA driver's version, when there is one.
    pub driver: Option<String>,
    /// The CUDA version the driver supports.
    pub cuda: Option<String>,
    /// Backend programs found on its PATH (`vllm`, `llama-server`, `docker`, …).
    #[serde(default)]
    pub programs: Vec<String>,
}

/// One service of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServiceRecord {
    pub name: String,
    pub backend: String,
    /// Its state, as `GET /v1/services` names it (`ready`, `stopped`, …).
    pub state: String,
    pub port: u16,
    /// The names its gateway routes to it.
    #[serde(default)]
    pub models: Vec<String>,
    /// Requests its node's gateway has in flight to it.
    #[serde(default)]
    pub in_flight: usize,
}

/// Which key a node's key is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    Node(String),
    Service { node: String, service: String },
}

/// Where node keys start: `{prefix}/nodes/`.
pub fn nodes_prefix(prefix: &str) -> String {
    format!("{prefix}/nodes/")
}

impl Key {
    pub fn path(&self, prefix: &str) -> String {
        match self {
            Self::Node(node) => format!("{prefix}/nodes/{node}"),
            Self::Service { node, service } => format!("{prefix}/nodes/{node}/services/{service}"),
        }
    }

    /// The key at `path`, when it is one of ours with valid names.
    pub fn parse(prefix: &str, path: &str) -> Option<Self> {
        let rest = path.strip_prefix(&nodes_prefix(prefix))?;
        let valid = crate::names::is_valid;
        match rest.split('/').collect::<Vec<_>>().as_slice() {
            [node] if valid(node) => Some(Self::Node(node.to_string())),
            [node, "services", service] if valid(node) && valid(service) => Some(Self::Service {
                node: node.to_string(),
                service: service.to_string(),
            }),
            _ => None,
        }
    }
}

/// One other node, as its keys say.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Remote {
    /// `None` until its node key is seen (a service key may come first).
    pub record: Option<NodeRecord>,
    pub services: BTreeMap<String, ServiceRecord>,
    /// When any of its keys last changed (Unix milliseconds, this node's clock).
    pub changed_unix_ms: u64,
}

/// Every other node, kept from one listing and the watch after it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    nodes: BTreeMap<String, Remote>,
}

/// One change to a key under the prefix.
#[derive(Debug, Clone)]
pub enum Change<'a> {
    Put { key: &'a str, value: &'a [u8] },
    Delete { key: &'a str },
}

impl View {
    /// Applies one change; `me` (this node's own keys) and keys that are not
    /// ours or do not parse are left out. Whether anything changed.
    pub fn apply(&mut self, prefix: &str, me: &str, change: Change<'_>, now_unix_ms: u64) -> bool {
        let path = match &change {
            Change::Put { key, .. } | Change::Delete { key } => *key,
        };
        let Some(key) = Key::parse(prefix, path) else {
            return false;
        };
        let node = match &key {
            Key::Node(node) | Key::Service { node, .. } => node.clone(),
        };
        if node == me {
            return false;
        }
        match change {
            Change::Put { value, .. } => {
                let remote = self.nodes.entry(node.clone()).or_default();
                remote.changed_unix_ms = now_unix_ms;
                match key {
                    Key::Node(_) => match serde_json::from_slice::<NodeRecord>(value) {
                        Ok(record) if record.node == node => remote.record = Some(record),
                        _ => {
                            tracing::warn!(node = %node, "ignoring a node record that does not parse");
                            return false;
                        }
                    },
                    Key::Service { service, .. } => {
                        match serde_json::from_slice::<ServiceRecord>(value) {
                            Ok(record) if record.name == service => {
                                remote.services.insert(service, record);
                            }
                            _ => {
                                tracing::warn!(node = %node, service = %service, "ignoring a service record that does not parse");
                                return false;
                            }
                        }
                    }
                }
            }
            Change::Delete { .. } => {
                let Some(remote) = self.nodes.get_mut(&node) else {
                    return false;
                };
                remote.changed_unix_ms = now_unix_ms;
                match key {
                    Key::Node(_) => {
                        // The node left: its services went with its lease.
                        self.nodes.remove(&node);
                    }
                    Key::Service { service, .. } => {
                        remote.services.remove(&service);
                    }
                }
            }
        }
        true
    }

    /// The nodes whose node key is known, by name.
    pub fn nodes(&self) -> impl Iterator<Item = (&NodeRecord, &Remote)> {
        self.nodes
            .values()
            .filter_map(|remote| Some((remote.record.as_ref()?, remote)))
    }

    pub fn node(&self, name: &str) -> Option<&NodeRecord> {
        self.nodes.get(name)?.record.as_ref()
    }

    /// Every service on a known node that serves `model`, with its node.
    pub fn serving<'a>(
        &'a self,
        model: &'a str,
    ) -> impl Iterator<Item = (&'a NodeRecord, &'a ServiceRecord)> + 'a {
        self.nodes().flat_map(move |(record, remote)| {
            remote
                .services
                .values()
                .filter(move |service| service.models.iter().any(|name| name == model))
                .map(move |service| (record, service))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PREFIX: &str = "/nanny/v1";

    fn node(name: &str) -> Vec<u8> {
        serde_json::to_vec(&NodeRecord {
            node: name.into(),
            advertise: format!("http://{name}:7878"),
            version: "0".into(),
            instance: "1".into(),
            started_unix_ms: 0,
            gpus: Vec::new(),
            capabilities: Capabilities::default(),
        })
        .unwrap()
    }

    fn service(name: &str, model: &str) -> Vec<u8> {
        serde_json::to_vec(&ServiceRecord {
            name: name.into(),
            backend: "mock".into(),
            state: "ready".into(),
            port: 1,
            models: vec![model.into()],
            in_flight: 0,
        })
        .unwrap()
    }

    #[test]
    fn keys_round_trip_and_strangers_are_ignored() {
        for key in [
            Key::Node("gpu-a".into()),
            Key::Service {
                node: "gpu-a".into(),
                service: "chat".into(),
            },
        ] {
            assert_eq!(Key::parse(PREFIX, &key.path(PREFIX)), Some(key));
        }
        for stranger in [
            "/nanny/v1/nodes/",
            "/nanny/v1/nodes/Gpu",
            "/nanny/v1/nodes/a/services/",
            "/nanny/v1/nodes/a/jobs/b",
            "/nanny/v1/nodes/a/services/b/c",
            "/other/nodes/a",
            "/nanny/v1/nodes/../x",
        ] {
            assert_eq!(Key::parse(PREFIX, stranger), None, "{stranger}");
        }
    }

    #[test]
    fn a_node_leaving_takes_its_services_and_self_is_left_out() {
        let mut view = View::default();
        let put = |key: &str, value: &[u8], view: &mut View| {
            view.apply(PREFIX, "me", Change::Put { key, value }, 1)
        };
        assert!(put(
            "/nanny/v1/nodes/b/services/chat",
            &service("chat", "qwen"),
            &mut view
        ));
        assert_eq!(view.serving("qwen").count(), 0, "no node record yet");
        assert!(put("/nanny/v1/nodes/b", &node("b"), &mut view));
        assert_eq!(view.serving("qwen").count(), 1);
        assert!(!put("/nanny/v1/nodes/me", &node("me"), &mut view));
        assert!(!put("/nanny/v1/nodes/c", b"garbage", &mut view));
        assert!(
            !put("/nanny/v1/nodes/c", &node("d"), &mut view),
            "a record under another's name"
        );
        assert!(view.apply(
            PREFIX,
            "me",
            Change::Delete {
                key: "/nanny/v1/nodes/b"
            },
            2
        ));
        assert_eq!(view.nodes().count(), 0);
        assert_eq!(view.serving("qwen").count(), 0);
    }

    proptest! {
        /// Whatever order puts and deletes arrive in, the view is what the
        /// last change to each key says.
        #[test]
        fn the_view_follows_the_last_change_to_each_key(
            changes in proptest::collection::vec((0usize..3, 0usize..4, any::<bool>()), 0..40)
        ) {
            let nodes = ["a", "b", "c"];
            let mut view = View::default();
            let mut alive: BTreeMap<(usize, usize), bool> = BTreeMap::new();
            for (node_index, slot, put) in changes {
                let name = nodes[node_index];
                // slot 0 is the node key, others are services s1..s3.
                let key = if slot == 0 {
                    Key::Node(name.into())
                } else {
                    Key::Service { node: name.into(), service: format!("s{slot}") }
                };
                let path = key.path(PREFIX);
                if put {
                    let value = if slot == 0 { node(name) } else { service(&format!("s{slot}"), "m") };
                    view.apply(PREFIX, "me", Change::Put { key: &path, value: &value }, 0);
                    alive.insert((node_index, slot), true);
                } else {
                    view.apply(PREFIX, "me", Change::Delete { key: &path }, 0);
                    if slot == 0 {
                        alive.retain(|(n, _), _| *n != node_index);
                    } else {
                        alive.insert((node_index, slot), false);
                    }
                }
            }
            for (node_index, name) in nodes.iter().enumerate() {
                let listed = view.node(name).is_some();
                prop_assert_eq!(listed, alive.get(&(node_index, 0)).copied().unwrap_or(false));
                for slot in 1..4 {
                    let expected = listed && alive.get(&(node_index, slot)).copied().unwrap_or(false);
                    let serving = view
                        .serving("m")
                        .any(|(record, svc)| record.node == *name && svc.name == format!("s{slot}"));
                    prop_assert_eq!(serving, expected);
                }
            }
        }
    }
}
