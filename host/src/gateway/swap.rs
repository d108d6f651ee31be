//! Which waiting request goes next when services share GPUs: a pure state
//! machine, as llama-swap's router — requests, ends and finished swaps go in,
//! effects (admit a request, switch the GPUs to a service) come out, and the
//! gateway performs them. Requests are collated: with A, B, A, B waiting while
//! the GPU holds C, all A's are served, then all B's (two switches, not four),
//! FIFO within a service; a request that has waited `max_wait` goes next
//! regardless, so nobody starves.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// What the scheduler needs to know of the world when it decides.
pub trait View {
    /// Whether `service` needs GPUs at all; others are never held back.
    fn wants_gpus(&self, service: &str) -> bool;
    /// Whether it is running (launched, not stopping).
    fn running(&self, service: &str) -> bool;
    /// The running services it cannot start beside (they hold its GPUs).
    fn blockers(&self, service: &str) -> Vec<String>;
    /// Admitted requests of `service` not finished yet.
    fn in_flight(&self, service: &str) -> usize;
}

/// What the gateway is to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Forward request `id`: its service is running, or may start beside the rest.
    Admit(u64),
    /// Stop `evict` (once their requests finished, bounded) and start `to`.
    Switch { to: String, evict: Vec<String> },
    /// Answer request `id` with why its service could not be switched to.
    Reject(u64, String),
}

#[derive(Debug, Clone)]
struct Waiter {
    id: u64,
    service: String,
    since: Instant,
}

#[derive(Debug)]
pub struct Scheduler {
    max_wait: Duration,
    waiting: VecDeque<Waiter>,
    /// The service being switched to (or cold-started), one at a time.
    switching: Option<String>,
}

impl Scheduler {
    pub fn new(max_wait: Duration) -> Self {
        Self {
            max_wait,
            waiting: VecDeque::new(),
            switching: None,
        }
    }

    /// A request for `service` arrived: in line at once, by arrival.
    pub fn enqueue(&mut self, id: u64, service: &str) {
        self.waiting.push_back(Waiter {
            id,
            service: service.to_string(),
            since: Instant::now(),
        });
    }

    /// A request for `service` arrived, and what follows.
    #[cfg(test)]
    fn arrive(&mut self, id: u64, service: &str, view: &impl View) -> Vec<Effect> {
        self.enqueue(id, service);
        self.decide(view)
    }

    /// A request gave up waiting (its client went away).
    pub fn cancel(&mut self, id: u64) {
        self.waiting.retain(|waiter| waiter.id != id);
    }

    /// A request ended, or time passed: someone may go now.
    pub fn changed(&mut self, view: &impl View) -> Vec<Effect> {
        self.decide(view)
    }

    /// The switch to `service` is done: it runs (`Ok`) or could not start.
    pub fn switched(
        &mut self,
        service: &str,
        outcome: Result<(), String>,
        view: &impl View,
    ) -> Vec<Effect> {
        self.switching = None;
        let mut effects = Vec::new();
        if let Err(reason) = outcome {
            self.waiting.retain(|waiter| {
                let failed = waiter.service == service;
                if failed {
                    effects.push(Effect::Reject(waiter.id, reason.clone()));
                }
                !failed
            });
        }
        effects.extend(self.decide(view));
        effects
    }

    /// When the next decision is due without any event: the oldest waiter's
    /// `max_wait`.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.waiting
            .front()
            .map(|waiter| waiter.since + self.max_wait)
    }

    fn decide(&mut self, view: &impl View) -> Vec<Effect> {
        let now = Instant::now();
        // Someone who waited too long: what it must evict takes no new requests.
        let starving = self
            .waiting
            .iter()
            .find(|waiter| {
                view.wants_gpus(&waiter.service)
                    && !view.running(&waiter.service)
                    && now.duration_since(waiter.since) >= self.max_wait
            })
            .map(|waiter| view.blockers(&waiter.service))
            .unwrap_or_default();
        let mut effects = Vec::new();
        // Admitted now: in flight from here on, though the view cannot know yet.
        let mut admitted_now: Vec<String> = Vec::new();
        self.waiting.retain(|waiter| {
            let service = &waiter.service;
            let go = !view.wants_gpus(service)
                || (view.running(service)
                    && self.switching.as_deref() != Some(service.as_str())
                    && !starving.contains(service));
            if go {
                effects.push(Effect::Admit(waiter.id));
                admitted_now.push(service.clone());
            }
            !go
        });
        if self.switching.is_some() {
            return effects;
        }
        // The oldest request for a service that is not running decides the next switch.
        let Some(next) = self
            .waiting
            .iter()
            .find(|w| !view.running(&w.service))
            .cloned()
        else {
            return effects;
        };
        let evict = view.blockers(&next.service);
        let waited_enough = now.duration_since(next.since) >= self.max_wait;
        let blockers_idle = evict.iter().all(|blocker| {
            view.in_flight(blocker) == 0
                && !admitted_now.contains(blocker)
                && !self.waiting.iter().any(|w| &w.service == blocker)
        });
        if blockers_idle || waited_enough {
            self.switching = Some(next.service.clone());
            effects.push(Effect::Switch {
                to: next.service,
                evict,
            });
        }
        effects
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    /// Services that all want the one GPU; `running` holds it.
    #[derive(Default)]
    struct OneGpu {
        running: BTreeSet<String>,
        in_flight: BTreeMap<String, usize>,
    }

    impl View for OneGpu {
        fn wants_gpus(&self, service: &str) -> bool {
            service != "cpu"
        }
        fn running(&self, service: &str) -> bool {
            self.running.contains(service)
        }
        fn blockers(&self, service: &str) -> Vec<String> {
            self.running
                .iter()
                .filter(|s| *s != service && *s != "cpu")
                .cloned()
                .collect()
        }
        fn in_flight(&self, service: &str) -> usize {
            self.in_flight.get(service).copied().unwrap_or(0)
        }
    }

    /// Plays `effects` out the way the gateway would: admitted requests run,
    /// switches evict and start. Returns the admitted ids in order.
    fn apply(
        world: &mut OneGpu,
        effects: &[Effect],
        admitted: &mut Vec<u64>,
        switches: &mut Vec<String>,
    ) {
        for effect in effects {
            match effect {
                Effect::Admit(id) => admitted.push(*id),
                Effect::Switch { to, evict } => {
                    for service in evict {
                        world.running.remove(service);
                    }
                    switches.push(to.clone());
                }
                Effect::Reject(..) => {}
            }
        }
    }

    fn arrive(
        scheduler: &mut Scheduler,
        world: &mut OneGpu,
        id: u64,
        service: &str,
    ) -> Vec<Effect> {
        scheduler.arrive(id, service, world)
    }

    #[tokio::test(start_paused = true)]
    async fn a_b_a_b_while_c_holds_the_gpu_is_two_switches_fifo_within_each() {
        let mut world = OneGpu::default();
        world.running.insert("c".into());
        let mut scheduler = Scheduler::new(Duration::from_secs(60));
        let (mut admitted, mut switches) = (Vec::new(), Vec::new());
        for (id, service) in [(1, "a"), (2, "b"), (3, "a"), (4, "b")] {
            let effects = arrive(&mut scheduler, &mut world, id, service);
            apply(&mut world, &effects, &mut admitted, &mut switches);
        }
        assert_eq!(
            switches,
            ["a"],
            "c was idle: the oldest request's service goes first"
        );
        world.running.insert("a".into());
        let effects = scheduler.switched("a", Ok(()), &world);
        apply(&mut world, &effects, &mut admitted, &mut switches);
        assert_eq!(
            admitted,
            [1, 3],
            "every a, in order; b waits for a's requests"
        );
        world.in_flight.insert("a".into(), 1);
        assert!(scheduler.changed(&world).is_empty(), "a is still busy");
        world.in_flight.insert("a".into(), 0);
        let effects = scheduler.changed(&world);
        assert_eq!(
            effects,
            [Effect::Switch {
                to: "b".into(),
                evict: vec!["a".into()]
            }]
        );
        apply(&mut world, &effects, &mut admitted, &mut switches);
        world.running.insert("b".into());
        let effects = scheduler.switched("b", Ok(()), &world);
        apply(&mut world, &effects, &mut admitted, &mut switches);
        assert_eq!(admitted, [1, 3, 2, 4]);
        assert_eq!(switches, ["a", "b"], "two switches, not four");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_waited_max_wait_goes_next_and_the_busy_one_takes_no_more() {
        let mut world = OneGpu::default();
        world.running.insert("a".into());
        world.in_flight.insert("a".into(), 1);
        let mut scheduler = Scheduler::new(Duration::from_secs(30));
        assert_eq!(arrive(&mut scheduler, &mut world, 1, "b"), []);
        tokio::time::sleep(Duration::from_secs(10)).await;
        // a stays busy and its new requests still go through…
        assert_eq!(
            arrive(&mut scheduler, &mut world, 2, "a"),
            [Effect::Admit(2)]
        );
        assert_eq!(
            scheduler.next_deadline(),
            Some(Instant::now() + Duration::from_secs(20))
        );
        tokio::time::sleep(Duration::from_secs(20)).await;
        // …until b has waited 30 s: then b goes next, and new a's wait their turn.
        let effects = arrive(&mut scheduler, &mut world, 3, "a");
        assert_eq!(
            effects,
            [Effect::Switch {
                to: "b".into(),
                evict: vec!["a".into()]
            }]
        );
        // a's admitted requests drained; 3 still waits; b runs now.
        world.running.remove("a");
        world.running.insert("b".into());
        world.in_flight.insert("a".into(), 1);
        assert_eq!(scheduler.switched("b", Ok(()), &world), [Effect::Admit(1)]);
        // b's request done: a (request 3) is next.
        world.in_flight.insert("b".into(), 0);
        let effects = scheduler.changed(&world);
        assert_eq!(
            effects,
            [Effect::Switch {
                to: "a".into(),
                evict: vec!["b".into()]
            }]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_switch_rejects_its_waiters_and_services_without_gpus_never_wait() {
        let mut world = OneGpu::default();
        world.running.insert("a".into());
        let mut scheduler = Scheduler::new(Duration::from_secs(30));
        assert_eq!(
            arrive(&mut scheduler, &mut world, 9, "cpu"),
            [Effect::Admit(9)]
        );
        let effects = arrive(&mut scheduler, &mut world, 1, "b");
        assert!(matches!(&effects[..], [Effect::Switch { to, .. }] if to == "b"));
        assert_eq!(arrive(&mut scheduler, &mut world, 2, "b"), []);
        let effects = scheduler.switched("b", Err("out of memory".into()), &world);
        assert_eq!(
            effects,
            [
                Effect::Reject(1, "out of memory".into()),
                Effect::Reject(2, "out of memory".into())
            ]
        );
    }
}
