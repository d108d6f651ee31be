//! The process runtime against real processes: stop means nothing left, output
//! arrives as lines, and a tree that escapes its process group is still caught.

use std::time::Duration;

use nanny::runtime::cgroup::{self, Cgroup};
use nanny::runtime::{spawn, OutputLine, ProcessSpec, Stream};
use nanny_tests::is_running;
use tokio::sync::mpsc;

fn shell(script: &str) -> ProcessSpec {
    ProcessSpec {
        program: "sh".into(),
        args: vec!["-c".into(), script.into()],
        env: vec![],
        work_dir: None,
    }
}

fn group_empty(pgid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::killpg(pgid, 0) != 0 }
}

async fn next_line(lines: &mut mpsc::Receiver<OutputLine>) -> OutputLine {
    lines.recv().await.expect("a line")
}

fn test_cgroup(name: &str) -> Option<Cgroup> {
    let root = cgroup::nanny_root()?;
    Cgroup::create(root.join(format!("test-{}-{name}", std::process::id()))).ok()
}

#[tokio::test]
async fn a_tree_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let (sender, mut lines) = mpsc::channel(16);
    let script = r#"trap "" TERM; sleep 1000 & echo "child $!"; while true; do sleep 1; done"#;
    let mut process = spawn(&shell(script), None, sender.into()).unwrap();
    let child: i32 = next_line(&mut lines)
        .await
        .text
        .strip_prefix("child ")
        .unwrap()
        .parse()
        .unwrap();
    assert!(is_running(child));

    let exit = process
        .stop(libc::SIGTERM, Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(
        exit.signal,
        Some(libc::SIGKILL),
        "SIGTERM was ignored, so SIGKILL ended it: {exit}"
    );
    assert!(
        group_empty(process.pid()),
        "stop returned with the group still populated"
    );
    assert!(!is_running(child));
}

#[tokio::test]
async fn a_polite_backend_stops_on_its_signal() {
    let (sender, mut lines) = mpsc::channel(16);
    let mut process = spawn(
        &shell(r#"trap "echo bye; exit 0" TERM; echo up; while true; do sleep 0.05; done"#),
        None,
        sender.into(),
    )
    .unwrap();
    assert_eq!(next_line(&mut lines).await.text, "up");
    let exit = process
        .stop(libc::SIGTERM, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(exit.code, Some(0), "{exit}");
    // The signal reaches the script's `sleep` too, and the shell may report that on
    // stderr first: stdout and stderr have no order between them.
    let mut stdout = Vec::new();
    while let Some(line) = lines.recv().await {
        if line.stream == Stream::Stdout {
            stdout.push(line.text);
        }
    }
    assert_eq!(stdout, ["bye"]);
}

#[tokio::test]
async fn output_arrives_as_tagged_lines_and_long_lines_are_cut() {
    let (sender, mut lines) = mpsc::channel(16);
    let script = "echo one; echo two >&2; head -c 100000 /dev/zero | tr '\\0' x; echo; echo three";
    let mut process = spawn(&shell(script), None, sender.into()).unwrap();
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    while let Some(line) = lines.recv().await {
        match line.stream {
            Stream::Stdout => stdout.push(line.text),
            Stream::Stderr => stderr.push(line.text),
        }
    }
    assert_eq!(process.wait().await.unwrap().code, Some(0));
    assert_eq!(stderr, ["two"]);
    assert_eq!(stdout.len(), 3);
    assert_eq!(stdout[0], "one");
    assert_eq!(stdout[1].len(), nanny::runtime::process::MAX_LINE_BYTES);
    assert_eq!(stdout[2], "three");
}

#[tokio::test]
async fn a_setsid_grandchild_is_caught_by_the_cgroup() {
    let Some(cgroup) = test_cgroup("setsid") else {
        eprintln!(
            "no writable cgroup v2 here; the process-group fallback cannot reach setsid trees"
        );
        return;
    };
    let path = cgroup.path().to_path_buf();
    let (sender, mut lines) = mpsc::channel(16);
    let script = r#"setsid sh -c 'sleep 1000' & echo "escaped $!"; while true; do sleep 1; done"#;
    let mut process = spawn(&shell(script), Some(cgroup), sender.into()).unwrap();
    let escaped: i32 = next_line(&mut lines)
        .await
        .text
        .strip_prefix("escaped ")
        .unwrap()
        .parse()
        .unwrap();
    assert!(is_running(escaped));
    process
        .stop(libc::SIGTERM, Duration::from_secs(2))
        .await
        .unwrap();
    assert!(
        !is_running(escaped),
        "the setsid grandchild outlived the stop"
    );
    assert!(!path.exists(), "the cgroup is removed after the stop");
}

#[tokio::test]
async fn leftovers_of_a_main_process_that_exits_are_removed() {
    let (sender, mut lines) = mpsc::channel(16);
    let mut process = spawn(
        &shell(r#"sleep 1000 & echo "left $!""#),
        None,
        sender.into(),
    )
    .unwrap();
    let left: i32 = next_line(&mut lines)
        .await
        .text
        .strip_prefix("left ")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(process.wait().await.unwrap().code, Some(0));
    assert!(!is_running(left), "the main process's child outlived it");
}

/// A reader that never reads (a plugin stuck in a slow call) must not stop the
/// backend: every line is recorded, the reader's copies are dropped and counted,
/// and the process runs to its end.
#[tokio::test]
async fn a_reader_that_falls_behind_never_blocks_the_backend() {
    let recorded = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = recorded.clone();
    let (sender, _never_read) = mpsc::channel(1);
    let sink = nanny::runtime::LineSink::new(
        move |_| {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        },
        sender,
    );
    // 20,000 lines of 100 bytes: far more than a pipe and a channel of one hold.
    let script = "i=0; while [ $i -lt 20000 ]; do printf '%0100d\\n' $i; i=$((i+1)); done";
    let mut process = spawn(&shell(script), None, sink.clone()).unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(120), process.wait())
        .await
        .expect("the backend ran to its end instead of blocking on its stdout")
        .unwrap();
    assert_eq!(exit.code, Some(0));
    // The pipe is drained after the exit: wait for the last lines to be recorded.
    let all_recorded = async {
        while recorded.load(std::sync::atomic::Ordering::Relaxed) < 20_000 {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), all_recorded)
        .await
        .expect("every line recorded");
    assert!(sink.dropped() >= 19_000, "dropped {}", sink.dropped());
}
