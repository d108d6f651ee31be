//! Every state change of every service: a live feed, and a ring of the recent
//! past so that `nanny events` can show what happened before it asked.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::broadcast;

use super::state::StateChange;

/// How many changes the ring remembers.
const REMEMBERED: usize = 1000;

pub struct EventLog {
    recent: Mutex<VecDeque<StateChange>>,
    feed: broadcast::Sender<StateChange>,
}

impl Default for EventLog {
    fn default() -> Self {
        Self {
            recent: Mutex::new(VecDeque::with_capacity(REMEMBERED)),
            feed: broadcast::channel(1024).0,
        }
    }
}

impl EventLog {
    /// Remembers `change` and sends it to every subscriber. Both happen under
    /// one lock, so `replay` sees each change exactly once.
    pub fn publish(&self, change: StateChange) {
        let mut recent = super::lock(&self.recent);
        if recent.len() == REMEMBERED {
            recent.pop_front();
        }
        recent.push_back(change.clone());
        // Nobody listening is fine.
        let _ = self.feed.send(change);
    }

    /// Every change from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<StateChange> {
        self.feed.subscribe()
    }

    /// The remembered changes, oldest first, and a feed of the ones after them:
    /// none lost and none repeated between the two.
    pub fn replay(&self) -> (Vec<StateChange>, broadcast::Receiver<StateChange>) {
        let recent = super::lock(&self.recent);
        (recent.iter().cloned().collect(), self.feed.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervise::State;

    fn change(n: u64) -> StateChange {
        StateChange {
            service: format!("s{n}"),
            from: "stopped",
            to: State::Ready,
            at_unix_ms: n,
            port: 1,
            last_failure: None,
            reason: None,
        }
    }

    #[test]
    fn replay_then_feed_sees_each_change_once_and_the_ring_keeps_the_newest() {
        let log = EventLog::default();
        for n in 0..(REMEMBERED as u64 + 5) {
            log.publish(change(n));
        }
        let (past, mut feed) = log.replay();
        assert_eq!(past.len(), REMEMBERED);
        assert_eq!(past[0].at_unix_ms, 5);
        log.publish(change(9999));
        assert_eq!(feed.try_recv().unwrap().at_unix_ms, 9999);
        assert!(feed.try_recv().is_err());
    }
}
