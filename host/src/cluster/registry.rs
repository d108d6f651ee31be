//! The registry's lifecycle, top to bottom: connect to etcd, take a lease,
//! put this node and its services under it, list everyone, watch from that
//! revision, keep the lease alive at a third of its TTL and put what changes.
//! Any failure ends the session; the loop reports `disconnected`, backs off
//! and starts a new one (etcd-client's keep-alive and watch streams do not
//! reconnect by themselves, and a lease etcd forgot must be granted anew).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use etcd_client::{
    Client, ConnectOptions, EventType, GetOptions, LeaseKeeper, PutOptions, WatchOptions,
    WatchStream,
};
use tokio::sync::watch;
use tokio::time::Instant;

use super::records::{nodes_prefix, Change, Key, NodeRecord, ServiceRecord};
use super::{Cluster, LinkState};
use crate::locks::lock;
use crate::supervise::unix_ms;

/// Back-off between sessions: doubling from the first to the last.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// A change only in load (requests in flight) waits this long after the
/// last put, so a busy gateway puts a few times a second, not per request.
const LOAD_GAP: Duration = Duration::from_millis(250);
/// Every etcd call but the streams gives up after this.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("{0}")]
    Lost(String),
    #[error("the node name `{node}` is taken by another nanny at {advertise}; give this one another `cluster.node` (if that was this node before a crash, its lease runs out within `lease_ttl` and this one registers then)")]
    Taken { node: String, advertise: String },
}

/// Runs sessions until `closing` turns true; a clean end revokes the lease
/// so that the other nodes see this one leave at once.
pub async fn run(cluster: Arc<Cluster>, mut closing: watch::Receiver<bool>) {
    let mut retry = RETRY_FIRST;
    // When this outage began: past a lease's length, the view of the others
    // is older than their own leases.
    let mut outage: Option<Instant> = None;
    loop {
        let began = Instant::now();
        let error = match session(&cluster, &mut closing).await {
            Ok(()) => return,
            Err(error) => error.to_string(),
        };
        tracing::warn!("cluster: {error}");
        let was_connected = cluster.link.borrow().state == LinkState::Connected;
        if was_connected || outage.is_none() {
            outage = Some(Instant::now());
        }
        if was_connected && began.elapsed() > RETRY_MAX * 2 {
            // It was up a while: a new outage starts its back-off afresh.
            retry = RETRY_FIRST;
        }
        cluster.set_link(LinkState::Disconnected, Some(error));
        tokio::select! {
            _ = tokio::time::sleep(retry) => {}
            _ = closed(&mut closing) => return,
        }
        if outage.is_some_and(|since| since.elapsed() >= cluster.config.lease_ttl) {
            // The others may be gone by now: route to none of them.
            *lock(&cluster.view) = Default::default();
        }
        retry = (retry * 2).min(RETRY_MAX);
    }
}

/// One connection's life. `Ok` only when the daemon closes.
async fn session(
    cluster: &Arc<Cluster>,
    closing: &mut watch::Receiver<bool>,
) -> Result<(), SessionError> {
    let config = &cluster.config;
    let options = ConnectOptions::new()
        .with_connect_timeout(CALL_TIMEOUT)
        .with_timeout(CALL_TIMEOUT)
        // Finds a dead etcd behind a connection that never said so.
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
        .with_keep_alive_while_idle(true);
    let mut client = Client::connect(&config.etcd, Some(options)).await?;
    let node_key = Key::Node(config.node.clone()).path(&config.prefix);
    refuse_if_taken(&mut client, &node_key, cluster).await?;
    let ttl = i64::try_from(config.lease_ttl.as_secs()).unwrap_or(i64::MAX);
    let lease = client.lease_grant(ttl, None).await?;
    let (lease_id, granted) = (lease.id(), lease.ttl().max(1));
    // A new session puts everything: etcd may have lost it all.
    let mut published = Published::default();
    published
        .put_changed(&mut client, cluster, lease_id, &node_key)
        .await?;
    let (mut keeper, mut alive) = client.lease_keep_alive(lease_id).await?;
    let mut watching = list_and_watch(&mut client, cluster).await?;
    cluster.set_link(LinkState::Connected, None);
    tracing::info!(node = %config.node, "cluster: registered in etcd (lease {lease_id:x}, {granted}s)");
    let every = Duration::from_millis(u64::try_from(granted).unwrap_or(1) * 1000 / 3);
    let mut beat = tokio::time::interval(every);
    let mut answered = Instant::now();
    let mut put_due: Option<Instant> = None;
    loop {
        let due = put_due.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = closed(closing) => {
                let _ = tokio::time::timeout(CALL_TIMEOUT, client.lease_revoke(lease_id)).await;
                tracing::info!("cluster: left (lease revoked)");
                return Ok(());
            }
            _ = beat.tick() => {
                if answered.elapsed() > Duration::from_secs(u64::try_from(granted).unwrap_or(1)) {
                    return Err(SessionError::Lost("etcd stopped answering keep-alives".into()));
                }
                keep_alive(&mut keeper).await?;
            }
            answer = alive.message() => {
                answered = Instant::now();
                match answer? {
                    Some(answer) if answer.ttl() > 0 => {}
                    // etcd forgot the lease (it expired while we were away).
                    Some(_) => return Err(SessionError::Lost("the lease expired".into())),
                    None => return Err(SessionError::Lost("the keep-alive stream ended".into())),
                }
            }
            message = watching.message() => {
                match message? {
                    Some(answer) if answer.canceled() => {
                        // Compacted past our revision (or etcd cancelled it): list again.
                        tracing::info!("cluster: watch cancelled ({}); listing again", answer.cancel_reason());
                        watching = list_and_watch(&mut client, cluster).await?;
                    }
                    Some(answer) => apply(cluster, &answer),
                    None => return Err(SessionError::Lost("the watch stream ended".into())),
                }
            }
            _ = cluster.state_changed.notified() => {
                put_due = Some(Instant::now());
            }
            _ = cluster.load_changed.notified() => {
                // A change only in load waits for the gap after the last put.
                let after_gap = published.last_put.map_or_else(Instant::now, |last| {
                    (last + LOAD_GAP).max(Instant::now())
                });
                put_due.get_or_insert(after_gap);
            }
            _ = tokio::time::sleep_until(due), if put_due.is_some() => {
                put_due = None;
                published.put_changed(&mut client, cluster, lease_id, &node_key).await?;
            }
        }
    }
}

/// Returns once the daemon closes (the watch's guard is not held past it).
async fn closed(closing: &mut watch::Receiver<bool>) {
    let _ = closing.wait_for(|closing| *closing).await;
}

async fn keep_alive(keeper: &mut LeaseKeeper) -> Result<(), SessionError> {
    tokio::time::timeout(CALL_TIMEOUT, keeper.keep_alive())
        .await
        .map_err(|_| SessionError::Lost("a keep-alive could not be sent".into()))??;
    Ok(())
}

/// A node key that another process of the same name holds is not ours to
/// take; one this process wrote (before etcd lost it) or one written for the
/// same address (this node, restarted) is.
async fn refuse_if_taken(
    client: &mut Client,
    node_key: &str,
    cluster: &Cluster,
) -> Result<(), SessionError> {
    let found = client.get(node_key, None).await?;
    let Some(kv) = found.kvs().first() else {
        return Ok(());
    };
    match serde_json::from_slice::<NodeRecord>(kv.value()) {
        Ok(record)
            if record.instance != cluster.instance
                && record.advertise != cluster.config.advertise =>
        {
            Err(SessionError::Taken {
                node: record.node,
                advertise: record.advertise,
            })
        }
        _ => Ok(()),
    }
}

/// Lists every node's keys into a fresh view, then watches from the revision
/// after that listing.
async fn list_and_watch(
    client: &mut Client,
    cluster: &Cluster,
) -> Result<WatchStream, SessionError> {
    let config = &cluster.config;
    let prefix = nodes_prefix(&config.prefix);
    let listing = client
        .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
        .await?;
    let revision = listing.header().map_or(0, |header| header.revision());
    let now = unix_ms(SystemTime::now());
    let mut view = super::records::View::default();
    for kv in listing.kvs() {
        if let Ok(key) = kv.key_str() {
            let change = Change::Put {
                key,
                value: kv.value(),
            };
            view.apply(&config.prefix, &config.node, change, now);
        }
    }
    *lock(&cluster.view) = view;
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1);
    Ok(client.watch(prefix.as_str(), Some(options)).await?)
}

fn apply(cluster: &Cluster, answer: &etcd_client::WatchResponse) {
    let config = &cluster.config;
    let now = unix_ms(SystemTime::now());
    let mut view = lock(&cluster.view);
    for event in answer.events() {
        let Some(kv) = event.kv() else { continue };
        let Ok(key) = kv.key_str() else { continue };
        let change = match event.event_type() {
            EventType::Put => Change::Put {
                key,
                value: kv.value(),
            },
            EventType::Delete => Change::Delete { key },
        };
        view.apply(&config.prefix, &config.node, change, now);
    }
}

/// What this session has put, to put only what changed and delete what went.
#[derive(Default)]
struct Published {
    node: Option<NodeRecord>,
    services: BTreeMap<String, ServiceRecord>,
    last_put: Option<Instant>,
}

impl Published {
    async fn put_changed(
        &mut self,
        client: &mut Client,
        cluster: &Arc<Cluster>,
        lease: i64,
        node_key: &str,
    ) -> Result<(), SessionError> {
        let config = &cluster.config;
        let (record, services) = (cluster.record(), cluster.local.services());
        let with_lease = || Some(PutOptions::new().with_lease(lease));
        if self.node.as_ref() != Some(&record) {
            let value = serde_json::to_vec(&record).unwrap_or_default();
            client.put(node_key, value, with_lease()).await?;
            self.node = Some(record);
        }
        let mut current = BTreeMap::new();
        for service in services {
            let key = Key::Service {
                node: config.node.clone(),
                service: service.name.clone(),
            }
            .path(&config.prefix);
            if self.services.get(&service.name) != Some(&service) {
                let value = serde_json::to_vec(&service).unwrap_or_default();
                client.put(key, value, with_lease()).await?;
            }
            current.insert(service.name.clone(), service);
        }
        for gone in self
            .services
            .keys()
            .filter(|name| !current.contains_key(*name))
        {
            let key = Key::Service {
                node: config.node.clone(),
                service: gone.clone(),
            }
            .path(&config.prefix);
            client.delete(key, None).await?;
        }
        self.services = current;
        self.last_put = Some(Instant::now());
        Ok(())
    }
}
