//! Plugins that loop, hoard memory, panic, recurse without end, return a flood of
//! text, or speak a future contract: each fails its own call with an error naming
//! it, the host carries on, and the next call gets a fresh instance.

use std::sync::Arc;
use std::time::Duration;

use nanny::plugin::{
    Catalog, Limits, Output, Plugin, PluginEngine, PluginError, PluginSession, PluginSource,
    Progress, SessionHandle,
};
use nanny_tests::plugin_wasm;

fn engine(limits: Limits) -> Arc<PluginEngine> {
    PluginEngine::new(limits, None).expect("start the plugin engine")
}

fn load(engine: &Arc<PluginEngine>, package: &str) -> Arc<Plugin> {
    let path = plugin_wasm(package);
    let wasm = std::fs::read(&path).expect("read the plugin");
    Arc::new(Plugin::load(engine, PluginSource::File(path), &wasm).expect("load the plugin"))
}

fn service(name: &str) -> nanny::plugin::Service {
    nanny::plugin::Service {
        name: name.into(),
        host: "127.0.0.1".into(),
        port: 9000,
        model: None,
        args: vec![],
        env: vec![],
        work_dir: None,
        gpus: vec![],
        settings: vec![],
    }
}

fn hostile_session(limits: Limits) -> PluginSession {
    PluginSession::new(
        load(&engine(limits), "nanny-test-plugin-hostile"),
        service("victim"),
    )
}

/// Feeds `crime`, checks the error, then checks the same session works again.
fn misbehave(crime: &str, limits: Limits) -> PluginError {
    let mut session = hostile_session(limits);
    assert_eq!(
        session.on_output(Output::Stdout, "warm up").unwrap(),
        Progress::Nothing
    );
    let error = session.on_output(Output::Stdout, crime).expect_err(crime);
    assert!(
        error.to_string().contains("plugin `hostile`"),
        "the error names the plugin: {error}"
    );
    assert_eq!(
        session.on_output(Output::Stdout, "hello again").unwrap(),
        Progress::Nothing,
        "a fresh instance after {crime}"
    );
    error
}

#[test]
fn an_endless_loop_hits_the_call_deadline() {
    let limits = Limits::default();
    assert!(limits.call_deadline <= Duration::from_millis(250));
    let error = misbehave("loop", limits);
    assert!(
        matches!(error, PluginError::Timeout { deadline, .. } if deadline == limits.call_deadline),
        "{error}"
    );
}

#[test]
fn endless_memory_growth_stops_at_the_cap() {
    // Time enough to reach the cap on a loaded machine: this is about memory,
    // and a deadline that struck first would be another failure (it did, once).
    let limits = Limits {
        call_deadline: Duration::from_secs(10),
        ..Limits::default()
    };
    let error = misbehave("grow", limits);
    assert!(
        matches!(error, PluginError::MemoryCap { cap_bytes, .. } if cap_bytes == 64 << 20),
        "{error}"
    );
}

#[test]
fn a_panic_is_a_crash_of_that_call_only() {
    let error = misbehave("panic", Limits::default());
    assert!(matches!(error, PluginError::Trap { .. }), "{error}");
    assert!(error.to_string().contains("unreachable"), "{error}");
}

#[test]
fn deep_recursion_overflows_the_wasm_stack_not_the_hosts() {
    let error = misbehave("recurse", Limits::default());
    assert!(
        matches!(&error, PluginError::Trap { message, .. } if message.contains("call stack exhausted")),
        "{error}"
    );
}

#[test]
fn a_huge_reply_is_refused() {
    let error = misbehave("huge", Limits::default());
    assert!(
        matches!(error, PluginError::OversizedReply { size, limit, .. } if size == 32 << 20 && limit == 1 << 20),
        "{error}"
    );
}

#[test]
fn a_plugin_for_a_future_wit_version_is_refused_naming_both() {
    let engine = engine(Limits::default());
    let path = plugin_wasm("nanny-test-plugin-future-wit");
    let wasm = std::fs::read(&path).unwrap();
    let error = Plugin::load(&engine, PluginSource::File(path), &wasm)
        .err()
        .expect("refused");
    let message = error.to_string();
    assert!(
        matches!(error, PluginError::IncompatibleWit { .. }),
        "{message}"
    );
    assert!(
        message.contains("nanny:backend@0.3.0")
            && message.contains("nanny:backend@0.2.0")
            && message.contains("nanny:backend@0.1.0"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_plugins_keep_answering_while_one_loops() {
    // A long deadline so the loop surely outlasts the other plugin's answer.
    let limits = Limits {
        call_deadline: Duration::from_secs(5),
        ..Limits::default()
    };
    let engine = engine(limits);
    let hostile = SessionHandle::spawn(PluginSession::new(
        load(&engine, "nanny-test-plugin-hostile"),
        service("victim"),
    ))
    .unwrap();
    let catalog = Catalog::load(&engine, &[], &Default::default());
    let mock = catalog
        .get("mock")
        .expect("the builtin mock plugin")
        .clone();
    let bystander = SessionHandle::spawn(PluginSession::new(mock, service("bystander"))).unwrap();

    let (started, has_started) = tokio::sync::oneshot::channel();
    let looping = tokio::spawn({
        let hostile = hostile.clone();
        async move {
            hostile
                .call(move |session| {
                    let _ = started.send(());
                    session.on_output(Output::Stdout, "loop")
                })
                .await
        }
    });
    has_started.await.unwrap();
    let answer = bystander
        .call(|session| {
            session.on_output(
                Output::Stdout,
                "mock-backend listening on http://127.0.0.1:9000",
            )
        })
        .await;
    assert_eq!(answer.unwrap(), Progress::Ready);
    assert!(
        !looping.is_finished(),
        "the bystander answered while the hostile plugin was still looping"
    );
    assert!(matches!(
        looping.await.unwrap(),
        Err(PluginError::Timeout { .. })
    ));
    assert_eq!(
        hostile
            .call(|session| session.on_output(Output::Stdout, "ok?"))
            .await
            .unwrap(),
        Progress::Nothing
    );
}
