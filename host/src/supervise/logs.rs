//! Each service's output: the last lines in memory (for `logs?tail=N`), a live
//! feed (for `follow`), and size-rotated files under `<state_dir>/logs`.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::broadcast;

use super::state::unix_ms;
use crate::runtime::{OutputLine, Stream};

/// Lines kept in memory per service.
pub const RING_LINES: usize = 10_000;
/// A log file is rotated when it would grow past this.
pub const MAX_FILE_BYTES: u64 = 16 << 20;
/// Rotated files kept: `<name>.log.1` … `<name>.log.3`.
pub const KEEP_FILES: u32 = 3;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogLine {
    pub at_unix_ms: u64,
    pub stream: &'static str,
    pub text: String,
}

/// One service's log.
pub struct LogBook {
    ring: Mutex<VecDeque<LogLine>>,
    feed: broadcast::Sender<LogLine>,
    file: Option<Mutex<RotatingFile>>,
}

impl LogBook {
    /// A log kept in memory, and in `dir/<service>.log` when a directory is given.
    pub fn new(service: &str, dir: Option<&Path>) -> Self {
        let file = dir.map(|dir| {
            Mutex::new(RotatingFile::new(
                dir.join(format!("{service}.log")),
                MAX_FILE_BYTES,
            ))
        });
        Self {
            ring: Mutex::new(VecDeque::new()),
            feed: broadcast::channel(1024).0,
            file,
        }
    }

    pub fn push(&self, line: &OutputLine) {
        let entry = LogLine {
            at_unix_ms: unix_ms(SystemTime::now()),
            stream: match line.stream {
                Stream::Stdout => "stdout",
                Stream::Stderr => "stderr",
            },
            text: line.text.clone(),
        };
        if let Some(file) = &self.file {
            file.lock()
                .unwrap_or_else(|e| e.into_inner())
                .append(&entry.text);
        }
        {
            let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
            if ring.len() == RING_LINES {
                ring.pop_front();
            }
            ring.push_back(entry.clone());
        }
        let _ = self.feed.send(entry);
    }

    /// The last `count` lines, oldest first.
    pub fn tail(&self, count: usize) -> Vec<LogLine> {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.iter()
            .skip(ring.len().saturating_sub(count))
            .cloned()
            .collect()
    }

    /// Every line from now on.
    pub fn follow(&self) -> broadcast::Receiver<LogLine> {
        self.feed.subscribe()
    }
}

/// Appends lines to a file, rotating it to `.1`, `.2`, … when it grows too big.
/// A log that cannot be written is reported once, never fatal.
struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    file: Option<File>,
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
            if !self.broken {
                tracing::warn!(path = %self.path.display(), "cannot write the service log: {error}");
            }
            self.broken = true;
            self.file = None;
        }
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
            self.file = Some(file);
            if self.written + needed > self.max_bytes && self.written > 0 {
                self.rotate()?;
                return self.try_append(text);
            }
        }
        let file = self.file.as_mut().expect("opened above");
        file.write_all(format!("{text}\n").as_bytes())?;
        self.written += needed;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file = None;
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
        let book = LogBook::new("svc", None);
        for n in 0..(RING_LINES + 5) {
            book.push(&line(&n.to_string()));
        }
        let tail = book.tail(3);
        let texts: Vec<&str> = tail.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["10002", "10003", "10004"]);
        assert_eq!(book.tail(usize::MAX).len(), RING_LINES);
    }

    #[test]
    fn files_rotate_by_size_and_keep_three() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("svc.log");
        let mut file = RotatingFile::new(path.clone(), 20);
        for n in 0..10 {
            file.append(&format!("line {n:04}")); // 10 bytes with the newline
        }
        let read =
            |suffix: &str| std::fs::read_to_string(format!("{}{suffix}", path.display())).unwrap();
        assert_eq!(read(""), "line 0008\nline 0009\n");
        assert_eq!(read(".1"), "line 0006\nline 0007\n");
        assert_eq!(read(".3"), "line 0002\nline 0003\n");
        assert!(!PathBuf::from(format!("{}.4", path.display())).exists());
    }
}
