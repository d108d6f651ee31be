//! What must survive a daemon restart: each service's restart count, last
//! failure and the models it last reported, in `<state_dir>/services.json`, written atomically.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use super::state::{ServiceStatus, StateChange};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remembered {
    pub restarts: u32,
    pub last_failure: Option<String>,
    /// The model ids the backend reported when last ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
}

/// Reads what an earlier daemon remembered; a missing or unreadable file is an
/// empty memory (the reason is logged), never a reason not to start.
pub fn load(path: &Path) -> BTreeMap<String, Remembered> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|error| {
            tracing::warn!(path = %path.display(), "ignoring unreadable state: {error}");
            BTreeMap::new()
        }),
        Err(_) => BTreeMap::new(),
    }
}

fn save(path: &Path, statuses: &[watch::Receiver<ServiceStatus>]) -> std::io::Result<()> {
    let memory: BTreeMap<String, Remembered> = statuses
        .iter()
        .map(|status| {
            let status = status.borrow();
            (
                status.name.clone(),
                Remembered {
                    restarts: status.restarts,
                    last_failure: status.last_failure.clone(),
                    models: status.last_models.clone(),
                },
            )
        })
        .collect();
    let bytes = serde_json::to_vec_pretty(&memory).map_err(std::io::Error::other)?;
    crate::files::write_atomically(path, &bytes)
}

/// Saves after every burst of state changes until the supervisor is gone.
pub async fn keep_saving(
    path: PathBuf,
    mut events: broadcast::Receiver<StateChange>,
    statuses: Vec<watch::Receiver<ServiceStatus>>,
) {
    loop {
        match events.recv().await {
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                while events.try_recv().is_ok() {}
                if let Err(error) = save(&path, &statuses) {
                    tracing::warn!(path = %path.display(), "cannot save service state: {error}");
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
