//! Lifecycle defects a new user hits, each with the test that caught it: names in
//! any order, restarts counted in a window, failed dependencies said out loud,
//! stopping what requires a stopped service, queued starts shown and cancelled.

use std::time::Duration;

use nanny::supervise::{
    BackoffPolicy, Condition, RestartMode, RestartPolicy, ServiceSpec, State, Supervisor,
    SupervisorOptions,
};
use nanny_tests::{script_spec as script, until};
use proptest::prelude::*;

const SERVE: &str = "echo READY; exec sleep 1000";

fn is_failed(status: &nanny::supervise::ServiceStatus) -> bool {
    matches!(status.state, State::Failed { .. })
}

fn waiting_reason(status: &nanny::supervise::ServiceStatus) -> Option<&str> {
    match &status.state {
        State::Waiting { reason } => Some(reason),
        _ => None,
    }
}

#[tokio::test]
async fn a_service_may_depend_on_one_whose_name_sorts_before_it() {
    let cache = script("cache", SERVE);
    let mut router = script("router", SERVE);
    router.depends_on = vec![("cache".into(), Condition::Ready)];
    let supervisor = Supervisor::launch(vec![cache, router], SupervisorOptions::in_memory(4))
        .expect("no panic, no error");
    let mut status = supervisor.watch("router").unwrap();
    until(&mut status, "ready", |s| s.state == State::Ready).await;
    supervisor.shutdown().await;
}

/// A random acyclic graph over random valid names, handed over in a random
/// order: each service may depend on those of lower rank, and ranks are a
/// shuffle, so a dependency's name sorts before or after its dependent's.
fn graphs() -> impl Strategy<Value = Vec<(String, Vec<(String, bool)>)>> {
    proptest::collection::btree_set("[a-z0-9][a-z0-9_.-]{0,8}", 1..9).prop_flat_map(|names| {
        let names: Vec<String> = names.into_iter().collect();
        let count = names.len();
        let indices: Vec<usize> = (0..count).collect();
        let edges = proptest::collection::vec(
            proptest::collection::vec((0..count, any::<bool>()), 0..4),
            count,
        );
        (
            Just(names),
            Just(indices.clone()).prop_shuffle(),
            edges,
            Just(indices).prop_shuffle(),
        )
            .prop_map(|(names, rank, edges, handed)| {
                handed
                    .into_iter()
                    .map(|i| {
                        let mut dependencies: Vec<(String, bool)> = edges[i]
                            .iter()
                            .filter(|(j, _)| rank[*j] < rank[i])
                            .map(|(j, ready)| (names[*j].clone(), *ready))
                            .collect();
                        dependencies.sort();
                        dependencies.dedup_by(|a, b| a.0 == b.0);
                        (names[i].clone(), dependencies)
                    })
                    .collect()
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Never a panic; every service comes after what it depends on (the start
    /// order), so the reverse (the stop order) puts dependents first.
    #[test]
    fn any_dependency_graph_launches_in_an_order_that_respects_every_edge(graph in graphs()) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let specs: Vec<ServiceSpec> = graph
                .iter()
                .map(|(name, dependencies)| {
                    let mut spec = script(name, SERVE);
                    spec.autostart = false;
                    spec.depends_on = dependencies
                        .iter()
                        .map(|(dependency, ready)| {
                            let condition = if *ready { Condition::Ready } else { Condition::Started };
                            (dependency.clone(), condition)
                        })
                        .collect();
                    spec
                })
                .collect();
            let edges: Vec<(String, String)> = specs
                .iter()
                .flat_map(|spec| {
                    spec.depends_on
                        .iter()
                        .map(|(d, _)| (spec.service.name.clone(), d.clone()))
                        .collect::<Vec<_>>()
                })
                .collect();
            let supervisor = Supervisor::launch(specs, SupervisorOptions::in_memory(4)).unwrap();
            let order: Vec<String> = supervisor.statuses().into_iter().map(|s| s.name).collect();
            prop_assert_eq!(order.len(), graph.len());
            let position = |name: &str| order.iter().position(|n| n == name).unwrap();
            for (dependent, dependency) in &edges {
                prop_assert!(position(dependency) < position(dependent), "{dependency} before {dependent} in {order:?}");
                prop_assert!(supervisor.dependents(dependency).contains(dependent));
                prop_assert!(supervisor.requirements(dependent).contains(dependency));
            }
            supervisor.shutdown().await;
            Ok(())
        })?;
    }
}

#[tokio::test]
async fn a_crash_now_and_then_after_a_ready_run_never_adds_up_to_giving_up() {
    // Ready, then a crash 300 ms later, forever; with one restart allowed in a
    // window that 200 ms of readiness opens anew, it must keep coming back.
    let mut flaky = script("flaky", "echo READY; sleep 0.3; exit 1");
    flaky.restart = RestartPolicy {
        mode: RestartMode::OnFailure,
        max_restarts: Some(1),
        backoff: BackoffPolicy {
            initial: Duration::ZERO,
            max: Duration::ZERO,
            reset_after: Duration::from_millis(200),
        },
    };
    let supervisor = Supervisor::launch(vec![flaky], SupervisorOptions::in_memory(4)).unwrap();
    let mut status = supervisor.watch("flaky").unwrap();
    let seen = until(&mut status, "restarted four times, or failed", |s| {
        s.restarts >= 4 || is_failed(s)
    })
    .await;
    assert!(!is_failed(&seen), "gave up: {seen:?}");
    supervisor.shutdown().await;
}

#[tokio::test]
async fn an_explicit_start_opens_a_new_restart_window() {
    let mut crashy = script("crashy", "exit 2");
    crashy.restart = RestartPolicy {
        mode: RestartMode::OnFailure,
        max_restarts: Some(1),
        backoff: BackoffPolicy {
            initial: Duration::ZERO,
            max: Duration::ZERO,
            reset_after: Duration::from_secs(600),
        },
    };
    let supervisor = Supervisor::launch(vec![crashy], SupervisorOptions::in_memory(4)).unwrap();
    let mut status = supervisor.watch("crashy").unwrap();
    let failed = until(&mut status, "failed", is_failed).await;
    assert_eq!(failed.restarts, 1);
    supervisor.start("crashy").await.unwrap();
    until(&mut status, "starting again", |s| !is_failed(s)).await;
    let again = until(&mut status, "failed again", is_failed).await;
    assert_eq!(
        again.restarts, 2,
        "one more restart after the start: {again:?}"
    );
    supervisor.shutdown().await;
}

#[tokio::test]
async fn a_service_waiting_for_a_failed_dependency_says_so() {
    let mut broken = script("broken", "echo no config; exit 3");
    broken.restart.mode = RestartMode::Never;
    let mut app = script("app", SERVE);
    app.depends_on = vec![("broken".into(), Condition::Ready)];
    let supervisor =
        Supervisor::launch(vec![app, broken], SupervisorOptions::in_memory(4)).unwrap();
    let mut status = supervisor.watch("app").unwrap();
    let waiting = until(&mut status, "waiting for the failed dependency", |s| {
        waiting_reason(s).is_some_and(|reason| reason.contains("which failed"))
    })
    .await;
    assert_eq!(
        waiting_reason(&waiting).unwrap(),
        "waiting for broken, which failed: exited with exit code 3"
    );
    supervisor.shutdown().await;
}

#[tokio::test]
async fn stopping_a_dependency_stops_what_requires_it_first() {
    let cache = script("cache", SERVE);
    let mut router = script("router", SERVE);
    router.depends_on = vec![("cache".into(), Condition::Started)];
    let mut api = script("api", SERVE);
    api.depends_on = vec![("router".into(), Condition::Ready)];
    let unrelated = script("unrelated", SERVE);
    let supervisor = Supervisor::launch(
        vec![api, router, cache, unrelated],
        SupervisorOptions::in_memory(4),
    )
    .unwrap();
    for name in ["api", "unrelated"] {
        let mut status = supervisor.watch(name).unwrap();
        until(&mut status, "ready", |s| s.state == State::Ready).await;
    }
    let stopped = supervisor.stop("cache").await.unwrap();
    assert_eq!(
        stopped,
        ["api", "router"],
        "dependents first, in stop order"
    );
    for name in ["api", "router", "cache"] {
        let status = supervisor.watch(name).unwrap().borrow().clone();
        assert_eq!(status.state, State::Stopped, "{name}");
        assert_eq!(status.pid, None, "{name}");
    }
    let unrelated = supervisor.watch("unrelated").unwrap().borrow().clone();
    assert_eq!(unrelated.state, State::Ready);
    supervisor.shutdown().await;
}

#[tokio::test]
async fn a_queued_start_says_so_and_a_stop_cancels_it_at_once() {
    // One start slot, held by a service that never gets ready.
    let slow = script("slow", "exec sleep 1000");
    let queued = script("queued", SERVE);
    let supervisor =
        Supervisor::launch(vec![slow, queued], SupervisorOptions::in_memory(1)).unwrap();
    let mut slow_status = supervisor.watch("slow").unwrap();
    let mut queued_status = supervisor.watch("queued").unwrap();
    // Either may take the slot first; the other queues.
    let (holder, waiter) = tokio::select! {
        _ = slow_status.wait_for(|s| waiting_reason(s).is_some()) => ("queued", "slow"),
        _ = queued_status.wait_for(|s| waiting_reason(s).is_some()) => ("slow", "queued"),
    };
    let mut waiter = supervisor.watch(waiter).unwrap();
    let waiting = until(&mut waiter, "queued", |s| waiting_reason(s).is_some()).await;
    assert_eq!(
        waiting_reason(&waiting).unwrap(),
        "queued for a start slot (0 ahead)"
    );
    let name = waiting.name.clone();
    // The stop answers while the slot is still held.
    tokio::time::timeout(Duration::from_secs(10), supervisor.stop(&name))
        .await
        .expect("a queued start is cancelled at once")
        .unwrap();
    assert_eq!(
        supervisor.watch(&name).unwrap().borrow().state,
        State::Stopped
    );
    assert!(supervisor
        .watch(holder)
        .unwrap()
        .borrow()
        .state
        .is_started());
    supervisor.shutdown().await;
}

#[tokio::test]
async fn a_port_held_by_another_program_is_named_and_waited_out() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let mut spec = script("squatted", SERVE);
    spec.service.port = port;
    spec.restart.backoff = BackoffPolicy {
        initial: Duration::from_millis(100),
        max: Duration::from_millis(100),
        reset_after: Duration::from_secs(600),
    };
    let supervisor = Supervisor::launch(vec![spec], SupervisorOptions::in_memory(4)).unwrap();
    let mut status = supervisor.watch("squatted").unwrap();
    let refused = until(&mut status, "refused for its port", |s| {
        s.last_failure.is_some()
    })
    .await;
    let expected = format!("port {port} is in use by pid {} (", std::process::id());
    let reason = refused.last_failure.clone().unwrap();
    assert!(reason.starts_with(&expected), "{reason}");
    assert_eq!(refused.pid, None, "nothing launched onto a taken port");
    drop(holder);
    until(&mut status, "ready once the port is free", |s| {
        s.state == State::Ready
    })
    .await;
    supervisor.shutdown().await;
}

#[tokio::test]
async fn shutdown_cancels_a_queued_start_and_launches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("launched");
    // `slow` holds the only start slot (never ready); `queued` waits for it to
    // be started, then for the slot.
    let slow = script("slow", "exec sleep 1000");
    let mut queued = script("queued", &format!("touch {}; {SERVE}", marker.display()));
    queued.depends_on = vec![("slow".into(), Condition::Started)];
    let supervisor =
        Supervisor::launch(vec![slow, queued], SupervisorOptions::in_memory(1)).unwrap();
    let mut status = supervisor.watch("queued").unwrap();
    until(&mut status, "queued for the slot", |s| {
        waiting_reason(s).is_some_and(|reason| reason.starts_with("queued for a start slot"))
    })
    .await;
    tokio::time::timeout(Duration::from_secs(60), supervisor.shutdown())
        .await
        .expect("shutdown does not wait behind the start queue");
    assert!(!marker.exists(), "nothing launched once shutdown began");
    assert_eq!(
        supervisor.watch("queued").unwrap().borrow().state,
        State::Stopped
    );
}
