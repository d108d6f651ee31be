//! Each service's output: the recent lines in memory (for `logs?tail=N`), bounded
//! by bytes; a live feed (for `follow`); and size-rotated files under
//! `<state_dir>/logs`, written by one thread for all services so that a slow
//! disk stalls neither a service nor the API.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::broadcast;

use super::lock;
use super::state::unix_ms;
use crate::runtime::{OutputLine, Stream};

/// Lines kept in memory per service, at most (the byte bound usually comes first).
pub const RING_LINES: usize = 10_000;
/// A log file is rotated when it would grow past this.
pub const MAX_FILE_BYTES: u64 = 16 << 20;
/// Rotated files kept: `<name>.log.1` … `<name>.log.3`.
pub const KEEP_FILES: u32 = 3;
/// Lines on their way to the files; beyond this they are counted, not written.
const WRITER_BACKLOG: usize = 16_384;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogLine {
    pub at_unix_ms: u64,
    pub stream: &'static str,
    /// Shared, so a `tail` request copies pointers rather than text.
    pub text: Arc<str>,
}

/// The recent lines and their size.
#[derive(Default)]
struct Ring {
    lines: VecDeque<LogLine>,
    bytes: usize,
}

/// One service's log.
pub struct LogBook {
    ring: Mutex<Ring>,
    ring_bytes: usize,
    feed: broadcast::Sender<LogLine>,
    file: Option<(Arc<Path>, LogWriter)>,
    /// Lines the writer could not take, not yet reported in the file.
    unwritten: AtomicU64,
}

impl LogBook {
    /// A log kept in memory (at most `ring_bytes` of text), and in
    /// `dir/<service>.log` through `writer` when one is given.
    pub fn new(service: &str, ring_bytes: usize, file: Option<(&Path, &LogWriter)>) -> Self {
        Self {
            ring: Mutex::new(Ring::default()),
            ring_bytes,
            feed: broadcast::channel(1024).0,
            file: file.map(|(dir, writer)| {
                (
                    Arc::from(dir.join(format!("{service}.log"))),
                    writer.clone(),
                )
            }),
            unwritten: AtomicU64::new(0),
        }
    }

    pub fn push(&self, line: &OutputLine) {
        let entry = LogLine {
            at_unix_ms: unix_ms(SystemTime::now()),
            stream: match line.stream {
                Stream::Stdout => "stdout",
                Stream::Stderr => "stderr",
            },
            text: Arc::from(line.text.as_str()),
        };
        if let Some((path, writer)) = &self.file {
            self.write(path, writer, &entry.text);
        }
        {
            let mut ring = lock(&self.ring);
            ring.bytes += entry.text.len();
            ring.lines.push_back(entry.clone());
            while ring.lines.len() > RING_LINES
                || (ring.bytes > self.ring_bytes && ring.lines.len() > 1)
            {
                if let Some(old) = ring.lines.pop_front() {
                    ring.bytes -= old.text.len();
                }
            }
        }
        let _ = self.feed.send(entry);
    }

    fn write(&self, path: &Arc<Path>, writer: &LogWriter, text: &str) {
        let missed = self.unwritten.swap(0, Ordering::Relaxed);
        if missed > 0 {
            let note = format!("nanny: {missed} line(s) not written here: the disk was too slow");
            if !writer.offer(path, note) {
                self.unwritten.fetch_add(missed, Ordering::Relaxed);
            }
        }
        if !writer.offer(path, text.to_string()) {
            self.unwritten.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The last `count` lines, oldest first (their text shared with the ring).
    pub fn tail(&self, count: usize) -> Vec<LogLine> {
        let ring = lock(&self.ring);
        ring.lines
            .iter()
            .skip(ring.lines.len().saturating_sub(count))
            .cloned()
            .collect()
    }

    /// Every line from now on.
    pub fn follow(&self) -> broadcast::Receiver<LogLine> {
        self.feed.subscribe()
    }
}

/// The one thread that writes every service's log file, through a bounded
/// channel; files are buffered and flushed whenever the channel runs dry.
#[derive(Clone)]
pub struct LogWriter {
    lines: SyncSender<ToWriter>,
}

enum ToWriter {
    Line(Arc<Path>, String),
    /// Answered once everything sent before it is in the files.
    Flush(std::sync::mpsc::Sender<()>),
}

impl LogWriter {
    /// Starts the writer thread; it ends when the last handle is dropped.
    pub fn start() -> std::io::Result<Self> {
        let (lines, incoming) = sync_channel(WRITER_BACKLOG);
        std::thread::Builder::new()
            .name("nanny-logs".into())
            .spawn(move || write_until_closed(incoming))?;
        Ok(Self { lines })
    }

    /// Queues a line for `path`; false when the writer is behind (or gone).
    fn offer(&self, path: &Arc<Path>, text: String) -> bool {
        match self.lines.try_send(ToWriter::Line(path.clone(), text)) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }

    /// Blocks until every line queued so far is in its file (at shutdown, so
    /// the last words of a backend are not lost).
    pub fn flush(&self) {
        let (done, flushed) = std::sync::mpsc::channel();
        if self.lines.send(ToWriter::Flush(done)).is_ok() {
            let _ = flushed.recv();
        }
    }
}

fn write_until_closed(incoming: Receiver<ToWriter>) {
    let mut files: HashMap<Arc<Path>, RotatingFile> = HashMap::new();
    let take = |message: ToWriter, files: &mut HashMap<Arc<Path>, RotatingFile>| match message {
        ToWriter::Line(path, text) => files
            .entry(path.clone())
            .or_insert_with(|| RotatingFile::new(path.to_path_buf(), MAX_FILE_BYTES))
            .append(&text),
        ToWriter::Flush(done) => {
            files.values_mut().for_each(RotatingFile::flush);
            let _ = done.send(());
        }
    };
    while let Ok(first) = incoming.recv() {
        take(first, &mut files);
        loop {
            match incoming.try_recv() {
                Ok(next) => take(next, &mut files),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    files.values_mut().for_each(RotatingFile::flush);
                    return;
                }
            }
        }
        // Nothing more for now: what was written reaches the file.
        files.values_mut().for_each(RotatingFile::flush);
    }
}

/// Appends lines to a file, rotating it to `.1`, `.2`, … when it grows too big.
/// A log that cannot be written is reported once, never fatal.
struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    file: Option<BufWriter<File>>,
    written: u64,
    broken: bool,
}

impl RotatingFile {
    fn new(path: PathBuf, max_bytes: u64) -> Self {
        Self {
            path,
            max_bytes,
            file: None,
            written: 0,
            broken: false,
        }
    }

    fn append(&mut self, text: &str) {
        if let Err(error) = self.try_append(text) {
            self.fail(error);
        }
    }

    /// A log that cannot be written is reported once, never fatal.
    fn fail(&mut self, error: std::io::Error) {
        if !self.broken {
            tracing::warn!(path = %self.path.display(), "cannot write the service log: {error}");
        }
        self.broken = true;
        self.file = None;
    }

    fn try_append(&mut self, text: &str) -> std::io::Result<()> {
        let needed = text.len() as u64 + 1;
        if self.file.is_some() && self.written + needed > self.max_bytes {
            self.rotate()?;
        }
        if self.file.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.written = file.metadata()?.len();
            self.file = Some(BufWriter::new(file));
            if self.written + needed > self.max_bytes && self.written > 0 {
                self.rotate()?;
                return self.try_append(text);
            }
        }
        let Some(file) = self.file.as_mut() else {
            return Err(std::io::Error::other("the log file is not open"));
        };
        file.write_all(text.as_bytes())?;
        file.write_all(b"\n")?;
        self.written += needed;
        Ok(())
    }

    fn flush(&mut self) {
        if let Some(file) = self.file.as_mut() {
            if let Err(error) = file.flush() {
                self.fail(error);
            }
        }
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        if let Some(mut file) = self.file.take() {
            file.flush()?;
        }
        let numbered = |n: u32| PathBuf::from(format!("{}.{n}", self.path.display()));
        for n in (1..KEEP_FILES).rev() {
            if numbered(n).exists() {
                std::fs::rename(numbered(n), numbered(n + 1))?;
            }
        }
        std::fs::rename(&self.path, numbered(1))?;
        self.written = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str) -> OutputLine {
        OutputLine {
            stream: Stream::Stdout,
            text: text.to_string(),
        }
    }

    #[test]
    fn the_ring_keeps_the_newest_lines() {
        let book = LogBook::new("svc", usize::MAX, None);
        for n in 0..(RING_LINES + 5) {
            book.push(&line(&n.to_string()));
        }
        let tail = book.tail(3);
        let texts: Vec<&str> = tail.iter().map(|l| &*l.text).collect();
        assert_eq!(texts, ["10002", "10003", "10004"]);
        assert_eq!(book.tail(usize::MAX).len(), RING_LINES);
    }

    #[test]
    fn the_ring_is_bounded_by_bytes_and_keeps_at_least_the_newest_line() {
        let book = LogBook::new("svc", 64 * 1024, None);
        let big = "x".repeat(16 * 1024);
        for _ in 0..100 {
            book.push(&line(&big));
        }
        let kept = book.tail(usize::MAX);
        assert_eq!(kept.len(), 4, "64 KiB holds four 16 KiB lines");
        let tiny = LogBook::new("svc", 10, None);
        tiny.push(&line(&big));
        assert_eq!(
            tiny.tail(usize::MAX).len(),
            1,
            "the newest line always stays"
        );
    }

    #[test]
    fn the_writer_thread_writes_every_line_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let writer = LogWriter::start().unwrap();
        let book = LogBook::new("svc", usize::MAX, Some((dir.path(), &writer)));
        for n in 0..1000 {
            book.push(&line(&format!("line {n}")));
        }
        writer.flush();
        let text = std::fs::read_to_string(dir.path().join("svc.log")).unwrap();
        let expected: String = (0..1000).map(|n| format!("line {n}\n")).collect();
        assert_eq!(text, expected);
    }

    #[test]
    fn files_rotate_by_size_and_keep_three() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("svc.log");
        let mut file = RotatingFile::new(path.clone(), 20);
        for n in 0..10 {
            file.append(&format!("line {n:04}")); // 10 bytes with the newline
        }
        file.flush();
        let read =
            |suffix: &str| std::fs::read_to_string(format!("{}{suffix}", path.display())).unwrap();
        assert_eq!(read(""), "line 0008\nline 0009\n");
        assert_eq!(read(".1"), "line 0006\nline 0007\n");
        assert_eq!(read(".3"), "line 0002\nline 0003\n");
        assert!(!PathBuf::from(format!("{}.4", path.display())).exists());
    }
}
