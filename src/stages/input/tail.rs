//! The tailer: follows alerts.json across Wazuh's rotations and hands
//! complete lines to the workers.
//!
//! It runs on its own OS thread with plain blocking reads: a file read never
//! benefits from async, and a blocking `send` on the bounded channel is
//! exactly the backpressure we want (when workers are behind, we stop
//! reading and alerts.json itself is the buffer).
//!
//! Rotation. analysisd writes `logs/alerts/YYYY/Mon/ossec-alerts-DD.json`
//! and keeps `alerts.json` as a hard link to it. At rotation it unlinks the
//! link and links the new file: the inode behind the path changes while
//! nothing is truncated, and for a moment the path may not exist. We notice
//! at EOF by comparing the path's inode with the open file's, read the old
//! file to its end, then open the new one at offset 0. logrotate's
//! rename+create looks the same. copytruncate keeps the inode but the size
//! drops below our offset: then we start again at 0.

use super::checkpoint::{Ack, Checkpointer, LinePos};
use super::fingerprint::{FileId, FINGERPRINT_BYTES};
use super::source::{Opened, Source};
use crate::config::StartPosition;
use crate::ratelog::RateLimitedLog;
use crate::stats::Stats;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::Duration;

/// Complete alert lines read together, back to back without their
/// newlines, under one acknowledgement. Handing lines over in batches is
/// what keeps the cost per line low: one channel hand-off, one wake-up and
/// one checkpoint update per read, not per line.
#[derive(Debug)]
pub struct Batch {
    pub ack: Ack,
    /// Checked as UTF-8 once, here, so the parser need not check again.
    data: String,
    /// Per line: where it ends in `data`, and where it starts in the file.
    lines: Vec<(usize, u64)>,
}

/// A batch is handed over at the end of every read, or sooner at this many
/// lines, so workers share a backlog evenly. `pipeline.channel_capacity`
/// (in lines) is divided by it to size the channel in batches.
pub const BATCH_LINES: usize = 64;

impl Batch {
    /// `(offset in the file, line)` for each line, in file order.
    pub fn lines(&self) -> impl Iterator<Item = (u64, &str)> {
        let mut start = 0;
        self.lines.iter().map(move |&(end, offset)| {
            let line = &self.data[start..end];
            start = end;
            (offset, line)
        })
    }

    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}

/// The batch being filled.
#[derive(Default)]
struct Filling {
    data: String,
    lines: Vec<(usize, u64)>,
    /// Where the last line ends in the file (where the first starts is
    /// in `lines`).
    end: u64,
}

/// Where to begin.
#[derive(Debug, Clone)]
pub enum Start {
    /// No bookmark: follow `input.start_position`.
    Fresh(StartPosition),
    /// Resume the current alerts.json at this offset.
    At(u64),
    /// Finish this rotated file from `offset`, then read alerts.json from 0.
    Rotated { path: PathBuf, offset: u64 },
}

pub struct TailOptions {
    pub path: PathBuf,
    pub start: Start,
    pub max_line_bytes: usize,
    /// The safety-net stat interval; inotify wakes us sooner.
    pub poll: Duration,
}

/// Wakes the tailer: from inotify, and at shutdown.
#[derive(Clone)]
pub struct Waker(SyncSender<()>);

impl Waker {
    pub fn wake(&self) {
        // A full slot already means "wake up"; nothing is lost.
        let _ = self.0.try_send(());
    }
}

pub fn waker() -> (Waker, Receiver<()>) {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    (Waker(tx), rx)
}

struct Open {
    file: Source,
    id: FileId,
    generation: u64,
    /// Bytes consumed so far (complete lines plus any held-back partial line).
    offset: u64,
}

pub struct Tailer {
    opts: TailOptions,
    tx: async_channel::Sender<Batch>,
    checkpoints: Arc<Checkpointer>,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    open: Option<Open>,
    /// The file to open, and where, when none is open.
    next: Option<(PathBuf, u64)>,
    next_generation: u64,
    /// The partial line carried over between reads.
    partial: Vec<u8>,
    partial_start: u64,
    /// Drop bytes until the next newline, and why.
    discarding: Option<Discard>,
    skips: RateLimitedLog,
    buf: Vec<u8>,
    filling: Filling,
}

impl Tailer {
    pub fn new(
        opts: TailOptions,
        tx: async_channel::Sender<Batch>,
        checkpoints: Arc<Checkpointer>,
        stats: Arc<Stats>,
        stop: Arc<AtomicBool>,
    ) -> Self {
        Tailer {
            opts,
            tx,
            checkpoints,
            stats,
            stop,
            open: None,
            next: None,
            next_generation: 0,
            partial: Vec::new(),
            partial_start: 0,
            discarding: None,
            skips: RateLimitedLog::new(Duration::from_secs(60), 20),
            buf: vec![0; 64 * 1024],
            filling: Filling::default(),
        }
    }

    /// Runs until `stop` is set. Returns when the last line has been handed over.
    pub fn run(mut self, waker: Waker, wake: Receiver<()>) {
        let dir = self
            .opts
            .path
            .parent()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        let mut watcher = None;
        let alerts = self.opts.path.clone();
        // What to open next: from the start request, later always a whole file.
        self.next = Some(match &self.opts.start {
            Start::Fresh(StartPosition::Beginning) => (alerts.clone(), 0),
            Start::Fresh(StartPosition::End) => (alerts.clone(), u64::MAX),
            Start::At(offset) => (alerts.clone(), *offset),
            Start::Rotated { path, offset } => (path.clone(), *offset),
        });
        loop {
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            if watcher.is_none() {
                watcher = watch(&dir, waker.clone());
            }
            if self.open.is_none() {
                let (path, offset) = self.next.take().unwrap_or_else(|| (alerts.clone(), 0));
                if let Err(e) = self.open_file(&path, offset) {
                    let gone = e.kind() == io::ErrorKind::NotFound;
                    if gone {
                        tracing::debug!(path = %path.display(), "alerts file not there yet; waiting");
                    } else {
                        // Permissions, most likely: say so, the operator must act.
                        self.stats.open_errors.fetch_add(1, Ordering::Relaxed);
                        let shown = path.display().to_string();
                        self.skips.log("open_failed", |suppressed| {
                            tracing::warn!(path = shown, error = %e, suppressed,
                                "cannot open the alerts file (the daemon must be in group wazuh: alerts.json is wazuh:wazuh 0640); retrying");
                        });
                    }
                    // A file that cannot be opened yet (permissions) is the same
                    // file once it can: keep its place. A file that is gone is
                    // waited for as alerts.json, read from its start when it
                    // appears, except at first start, where the requested
                    // position still applies.
                    if !gone || (path == alerts && offset == u64::MAX) {
                        self.next = Some((path, offset));
                    }
                }
            }
            let progressed = match self.read_available() {
                Ok(n) if n > 0 => {
                    crate::runtime::fault::inject(crate::runtime::fault::Component::Tailer);
                    true
                }
                Ok(_) => false,
                Err(Closed) => break,
            };
            if progressed {
                continue;
            }
            match self.at_eof() {
                Ok(true) => continue,
                Ok(false) => {}
                Err(Closed) => break,
            }
            match wake.recv_timeout(self.opts.poll) {
                Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        drop(watcher);
    }

    /// Opens `path` at `offset` (`u64::MAX`: at its end) as a new generation.
    fn open_file(&mut self, path: &Path, offset: u64) -> io::Result<()> {
        let Opened {
            source: file,
            id,
            offset,
            mid_line,
        } = Source::open(path, offset)?;
        // Starting mid-line, the rest of this line is a fragment (expected
        // at start "end", when Wazuh is mid-write) and must not be parsed.
        self.discarding = mid_line.then_some(Discard::Fragment);
        let generation = self.next_generation;
        self.next_generation += 1;
        self.checkpoints.opened(generation, id.clone(), offset);
        tracing::info!(path = %path.display(), offset, inode = id.ino, "reading alerts file");
        self.partial.clear();
        self.partial_start = offset;
        self.open = Some(Open {
            file,
            id,
            generation,
            offset,
        });
        Ok(())
    }

    /// Reads what is there now. `Ok(bytes read)`, or `Err(Closed)` when the
    /// workers are gone.
    fn read_available(&mut self) -> Result<usize, Closed> {
        let mut total = 0;
        loop {
            let Some(open) = self.open.as_mut() else {
                return Ok(total);
            };
            let n = match open.file.read(&mut self.buf) {
                Ok(0) => return Ok(total),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "read error on alerts file; reopening");
                    self.open = None;
                    return Ok(total);
                }
            };
            let base = open.offset;
            open.offset += n as u64;
            total += n;
            let chunk = std::mem::take(&mut self.buf);
            let r = self.consume(&chunk[..n], base);
            self.buf = chunk;
            r?;
            self.refresh_fingerprint();
            if self.stop.load(Ordering::Relaxed) {
                return Ok(total);
            }
        }
    }

    /// A fingerprint taken while the file was short is weaker; retake it once
    /// the file has enough bytes.
    fn refresh_fingerprint(&mut self) {
        if let Some(open) = self.open.as_mut() {
            if open.id.fingerprint_len < FINGERPRINT_BYTES && open.offset >= FINGERPRINT_BYTES {
                if let Some(Ok(id)) = open.file.plain().map(FileId::of) {
                    open.id = id.clone();
                    self.checkpoints.opened(open.generation, id, open.offset);
                }
            }
        }
    }

    fn consume(&mut self, chunk: &[u8], base: u64) -> Result<(), Closed> {
        let generation = self.open.as_ref().map_or(0, |o| o.generation);
        let mut i = 0;
        while i < chunk.len() {
            // NUL runs (left by copytruncate under a writer without O_APPEND)
            // are not part of any line.
            if self.partial.is_empty() && self.discarding.is_none() {
                while i < chunk.len() && chunk[i] == 0 {
                    i += 1;
                }
                self.partial_start = base + i as u64;
                if i == chunk.len() {
                    break;
                }
            }
            let rest = &chunk[i..];
            let nl = memchr::memchr(b'\n', rest);
            let piece = &rest[..nl.unwrap_or(rest.len())];
            // A line wholly inside this chunk goes straight into the batch;
            // only a line cut by the read is copied into `partial` first.
            let mut whole = None;
            if self.discarding.is_none() {
                if self.partial.len() + piece.len() > self.opts.max_line_bytes {
                    self.discarding = Some(Discard::TooLong);
                    self.partial.clear();
                } else if nl.is_some() && self.partial.is_empty() {
                    whole = Some(piece);
                } else {
                    self.partial.extend_from_slice(piece);
                }
            }
            let Some(nl) = nl else {
                break;
            };
            let end = base + (i + nl + 1) as u64;
            let start = self.partial_start;
            if let Some(why) = self.discarding.take() {
                if why == Discard::TooLong {
                    self.skip("line_too_long", start, end - start);
                }
            } else if let Some(line) = whole {
                self.add_line(generation, start, end, line)?;
            } else {
                let joined = std::mem::take(&mut self.partial);
                let r = self.add_line(generation, start, end, &joined);
                self.partial = joined;
                self.partial.clear();
                r?;
            }
            self.partial_start = end;
            i += nl + 1;
        }
        // The batch is dispatched before the frontier passes it, so the
        // committed position can never jump over lines not yet handed over.
        self.hand_over(generation)?;
        // Everything before the held-back partial line is handed over or skipped.
        self.checkpoints.read_up_to(generation, self.partial_start);
        Ok(())
    }

    fn add_line(
        &mut self,
        generation: u64,
        start: u64,
        end: u64,
        line: &[u8],
    ) -> Result<(), Closed> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            self.stats.skip("empty_line");
            return Ok(());
        }
        let line = crate::alert::decode_line(line);
        if matches!(line, std::borrow::Cow::Owned(_)) {
            self.stats.lines_repaired.fetch_add(1, Ordering::Relaxed);
            self.skips.log("not_utf8", |suppressed| {
                tracing::warn!(
                    offset = start,
                    suppressed,
                    "alert line is not valid UTF-8; bad bytes replaced with U+FFFD"
                );
            });
        }
        let f = &mut self.filling;
        f.end = end;
        f.data.push_str(&line);
        f.lines.push((f.data.len(), start));
        if f.lines.len() >= BATCH_LINES {
            self.hand_over(generation)?;
        }
        Ok(())
    }

    /// Sends the batch being filled to the workers (blocking while they are
    /// behind: that is the backpressure). `Err(Closed)` when they are gone;
    /// the batch then stays in flight and is read again after a restart.
    fn hand_over(&mut self, generation: u64) -> Result<(), Closed> {
        if self.filling.lines.is_empty() {
            return Ok(());
        }
        let f = std::mem::take(&mut self.filling);
        self.stats
            .lines_read
            .fetch_add(f.lines.len() as u64, Ordering::Relaxed);
        let pos = LinePos {
            generation,
            start: f.lines[0].1,
            end: f.end,
        };
        let batch = Batch {
            ack: Ack::dispatch(&self.checkpoints, pos),
            data: f.data,
            lines: f.lines,
        };
        self.stats.batches_queued.fetch_add(1, Ordering::Relaxed);
        self.tx.send_blocking(batch).map_err(|_| {
            self.stats.batches_queued.fetch_sub(1, Ordering::Relaxed);
            Closed
        })
    }

    fn skip(&mut self, reason: &'static str, offset: u64, len: u64) {
        self.stats.skip(reason);
        let file = self.opts.path.display().to_string();
        self.skips.log(reason, |suppressed| {
            tracing::warn!(reason, offset, len, file, suppressed, "skipped alert line");
        });
    }

    /// At EOF: has the file been truncated, or is it finished because
    /// analysisd moved on? Returns `Ok(true)` when it switched files, so the
    /// caller reads again at once.
    fn at_eof(&mut self) -> Result<bool, Closed> {
        let Some(open) = self.open.as_mut() else {
            return Ok(false);
        };
        // A compressed file is finished; a plain one is when the stable
        // name has moved on.
        let finished = open.file.is_compressed();
        let meta = match std::fs::metadata(&self.opts.path) {
            Ok(m) => Some(m),
            // Mid-rotation, or Wazuh stopped: keep the old file and wait.
            Err(_) if !finished => return Ok(false),
            Err(_) => None,
        };
        if !finished && meta.as_ref().is_some_and(|m| open.id.same_inode(m)) {
            let size = open
                .file
                .plain()
                .and_then(|f| f.metadata().ok())
                .map_or(open.offset, |m| m.len());
            if size < open.offset {
                tracing::warn!(
                    path = %self.opts.path.display(),
                    size,
                    offset = open.offset,
                    "alerts file shrank (copytruncate?); reading it again from the start"
                );
                let generation = open.generation;
                self.open = None;
                self.discard_partial(generation);
                let path = self.opts.path.clone();
                let _ = self.open_file(&path, 0);
                return Ok(true);
            }
            return Ok(false);
        }
        // The path now names another file: this one is finished. Read what
        // the writer added between our EOF and the link swap.
        self.read_available()?;
        // A read error closes the file; the next round reopens alerts.json.
        let Some((generation, id)) = self.open.as_ref().map(|o| (o.generation, o.id.clone()))
        else {
            return Ok(false);
        };
        self.discard_partial(generation);
        self.open = None;
        // Lagging behind several rotations, the next file is the one
        // Wazuh wrote after this one, not necessarily today's. It may be
        // compressed (and its original deleted) between the listing and
        // the open: then list again.
        for _ in 0..3 {
            let next = super::rotated::successor(&self.opts.path, &id)
                .unwrap_or_else(|| self.opts.path.clone());
            tracing::info!(next = %next.display(), "alerts file rotated; moving on");
            match self.open_file(&next, 0) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound && next != self.opts.path => continue,
                Err(e) => {
                    tracing::warn!(path = %next.display(), error = %e, "cannot open the next alerts file; will retry");
                    if e.kind() != io::ErrorKind::NotFound {
                        self.next = Some((next, 0));
                    }
                    break;
                }
            }
        }
        Ok(true)
    }

    fn discard_partial(&mut self, generation: u64) {
        if !self.partial.is_empty() {
            let len = self.partial.len() as u64;
            let start = self.partial_start;
            self.partial.clear();
            self.skip("incomplete_last_line", start, len);
            self.checkpoints.read_up_to(generation, start + len);
        }
        self.discarding = None;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Discard {
    TooLong,
    Fragment,
}

struct Closed;

/// Inotify on the directory, not the file: the file is replaced at each
/// rotation, the directory stays. `None` (directory missing, inotify limits)
/// leaves the periodic stat to do the work; we try again on the next round.
fn watch(dir: &std::path::Path, waker: Waker) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let mut w =
        notify::recommended_watcher(move |_res: notify::Result<notify::Event>| waker.wake())
            .ok()?;
    w.watch(dir, notify::RecursiveMode::NonRecursive).ok()?;
    Some(w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tailer(
        path: &Path,
        start: Start,
        max_line_bytes: usize,
    ) -> (Tailer, async_channel::Receiver<Batch>) {
        let (tx, rx) = async_channel::unbounded();
        let t = Tailer::new(
            TailOptions {
                path: path.to_owned(),
                start,
                max_line_bytes,
                poll: Duration::from_millis(20),
            },
            tx,
            Arc::new(Checkpointer::new()),
            Arc::new(Stats::default()),
            Arc::new(AtomicBool::new(false)),
        );
        (t, rx)
    }

    /// A bookmark into alerts.json survives a first open that fails for a
    /// reason other than the file being absent (here a symlink loop, as
    /// root cannot be refused by permissions): once the file can be opened,
    /// reading resumes at the bookmark, not at 0.
    #[test]
    fn a_failed_first_open_keeps_the_bookmarked_offset() {
        let dir = tempfile::tempdir().unwrap();
        let alerts = dir.path().join("alerts.json");
        let real = dir.path().join("real.json");
        std::fs::write(&real, "{\"old\":1}\n{\"new\":2}\n").unwrap();
        std::os::unix::fs::symlink(&alerts, &alerts).unwrap();
        let (t, rx) = tailer(&alerts, Start::At(10), 4096);
        let (stop, stats) = (t.stop.clone(), t.stats.clone());
        let (waker, wake) = waker();
        let thread = std::thread::spawn({
            let waker = waker.clone();
            move || t.run(waker, wake)
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while stats.open_errors.load(Ordering::Relaxed) == 0 {
            assert!(std::time::Instant::now() < deadline, "no open attempt");
            std::thread::yield_now();
        }
        // Over the link in one step: a moment without alerts.json would be
        // a file gone, read from its start when it is back.
        std::fs::rename(&real, &alerts).unwrap();
        waker.wake();
        let batch = rx.recv_blocking().unwrap();
        let lines: Vec<(u64, String)> = batch.lines().map(|(o, l)| (o, l.to_owned())).collect();
        assert_eq!(lines, [(10, "{\"new\":2}".to_owned())]);
        stop.store(true, Ordering::Relaxed);
        waker.wake();
        thread.join().unwrap();
    }

    /// The model of framing: whatever sizes the reads come in, the lines
    /// handed over are the file's complete lines, at their offsets, bad
    /// UTF-8 replaced, except those over the limit or blank, and the
    /// partial last line.
    fn expected(text: &[u8], max: usize) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        let mut start = 0usize;
        let mut i = 0usize;
        // Leading NULs before a line are not part of it.
        while i < text.len() {
            if text[i] == b'\n' {
                let mut s = start;
                while s < i && text[s] == 0 {
                    s += 1;
                }
                let line = &text[s..i];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if text[s..i].len() <= max && !line.iter().all(u8::is_ascii_whitespace) {
                    out.push((s as u64, String::from_utf8_lossy(line).as_bytes().to_vec()));
                }
                start = i + 1;
            }
            i += 1;
        }
        out
    }

    proptest! {
        #[test]
        fn framing_does_not_depend_on_how_reads_split_the_file(
            lines in proptest::collection::vec(
                proptest::collection::vec(
                    prop_oneof![Just(b'a'), Just(b'{'), Just(b' '), Just(b'\r'), Just(0u8), Just(0xffu8), Just(b'\n')],
                    0..40,
                ),
                0..12,
            ),
            cuts in proptest::collection::vec(1usize..50, 0..30),
            max in 4usize..30,
        ) {
            let text: Vec<u8> = lines.concat();
            let (mut t, rx) = tailer(Path::new("/nonexistent"), Start::At(0), max);
            let mut at = 0usize;
            let mut cuts = cuts.into_iter();
            while at < text.len() {
                let n = cuts.next().unwrap_or(text.len()).min(text.len() - at);
                if t.consume(&text[at..at + n], at as u64).is_err() {
                    panic!("channel closed");
                }
                at += n;
            }
            drop(t);
            let mut got = Vec::new();
            while let Ok(batch) = rx.try_recv() {
                got.extend(batch.lines().map(|(o, l)| (o, l.as_bytes().to_vec())));
            }
            prop_assert_eq!(got, expected(&text, max));
        }
    }
}
