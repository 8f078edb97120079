//! The writer: the one thread that owns the analysisd queue socket.
//!
//! Events arrive in messages (a batch's ready events, or one line's after a
//! lookup). They are sent in order; only then are their dedup keys marked
//! and their lines acknowledged. When the socket is missing or refuses
//! (analysisd restarting), the writer retries with backoff and never drops
//! an event; meanwhile its bounded inbox fills, workers wait, and the
//! tailer stops reading.
//!
//! Why a plain thread with blocking sends rather than a task: analysisd's
//! socket is unconnected, so the kernel holds at most
//! `net.unix.max_dgram_qlen` (10 by default) datagrams for it and a fast
//! sender spends its time waiting for room. A blocking send waits in the
//! kernel and is woken directly by analysisd's receive; through tokio each
//! wait is an EAGAIN, an epoll round and a task wake-up.

use super::Datagrams;
use crate::dedup::{Dedup, Key};
use crate::input::Ack;
use crate::ratelog::RateLimitedLog;
use crate::stats::Stats;
use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Events ready to send: framed datagrams, the dedup keys to mark once
/// they are out, and the acknowledgement of the lines they came from.
#[derive(Debug, Default)]
pub struct Outgoing {
    pub datagrams: Datagrams,
    pub dedup_keys: Vec<Key>,
    pub ack: Option<Ack>,
    /// Told once every datagram is out (retro events: only then are they
    /// recorded as hunted). Dropped unsent when abandoned.
    pub sent: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Outgoing {
    /// Every event in it is out: its dedup keys are marked sent, its
    /// lines' ack finished, and whoever waits on `sent` told.
    pub fn delivered(self, dedup: Option<&Dedup>) {
        if let Some(dedup) = dedup {
            for &k in &self.dedup_keys {
                dedup.mark_sent(k);
            }
        }
        if let Some(ack) = self.ack {
            ack.finish();
        }
        if let Some(sent) = self.sent {
            let _ = sent.send(());
        }
    }
}

pub struct Writer {
    path: PathBuf,
    socket: Option<UnixDatagram>,
    stats: Arc<Stats>,
    dedup: Option<Dedup>,
    log: RateLimitedLog,
    /// Set when shutdown gives up waiting: stop retrying a missing socket.
    abandon: Arc<AtomicBool>,
}

const MAX_BACKOFF: Duration = Duration::from_secs(5);
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

impl Writer {
    pub fn new(
        path: PathBuf,
        stats: Arc<Stats>,
        dedup: Option<Dedup>,
        abandon: Arc<AtomicBool>,
    ) -> Self {
        Writer {
            path,
            socket: None,
            stats,
            dedup,
            abandon,
            log: RateLimitedLog::new(Duration::from_secs(60), 1),
        }
    }

    /// Runs until every sender is dropped and the inbox is empty, or until
    /// `abandon` is set while a send is being retried.
    pub fn run(mut self, mut inbox: mpsc::Receiver<Outgoing>) {
        while let Some(out) = inbox.blocking_recv() {
            crate::runtime::fault::inject(crate::runtime::fault::Component::Writer);
            let datagrams: Vec<&[u8]> = out.datagrams.iter().collect();
            let mut next = 0;
            while next < datagrams.len() {
                match self.send(&datagrams[next..]) {
                    Some(sent) => next += sent,
                    // Abandoned at shutdown: the ack is dropped unfinished,
                    // so these lines are read again at the next start.
                    None => return,
                }
            }
            out.delivered(self.dedup.as_ref());
        }
    }

    fn connect(&self) -> io::Result<UnixDatagram> {
        let s = UnixDatagram::unbound()?;
        s.connect(&self.path)?;
        // Bounded waits, so that shutdown can abandon a stuck analysisd.
        s.set_write_timeout(Some(SEND_TIMEOUT))?;
        Ok(s)
    }

    /// Sends the first of `datagrams` and as many more as the kernel takes
    /// in the same call, however long it takes. Returns how many were sent,
    /// `None` only if abandoned.
    fn send(&mut self, datagrams: &[&[u8]]) -> Option<usize> {
        let mut delay = Duration::from_millis(50);
        loop {
            if self.socket.is_none() {
                match self.connect() {
                    Ok(s) => {
                        tracing::info!(socket = %self.path.display(), "connected to the Wazuh queue socket");
                        self.socket = Some(s);
                    }
                    Err(e) => {
                        self.failed(&e, delay);
                        if !self.pause(&mut delay) {
                            return None;
                        }
                        continue;
                    }
                }
            }
            let socket = self.socket.as_ref().expect("connected above");
            match send_many(socket, datagrams) {
                Ok(sent) => {
                    self.stats
                        .events_sent
                        .fetch_add(sent as u64, Ordering::Relaxed);
                    return Some(sent);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // analysisd's queue stayed full for SEND_TIMEOUT: it is busy,
                // not gone. Keep waiting on the same socket.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if self.abandon.load(Ordering::Relaxed) {
                        return None;
                    }
                }
                Err(e) => {
                    // The receiver is gone or was replaced (analysisd restarted
                    // and bound a new socket): reconnect and send again.
                    self.socket = None;
                    self.failed(&e, delay);
                    if !self.pause(&mut delay) {
                        return None;
                    }
                }
            }
        }
    }

    /// Waits `delay` (doubling it for next time) in short steps, so that an
    /// abandoning shutdown is noticed quickly.
    fn pause(&self, delay: &mut Duration) -> bool {
        let until = std::time::Instant::now() + *delay;
        while std::time::Instant::now() < until {
            if self.abandon.load(Ordering::Relaxed) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10).min(*delay));
        }
        *delay = (*delay * 2).min(MAX_BACKOFF);
        !self.abandon.load(Ordering::Relaxed)
    }

    fn failed(&self, e: &io::Error, retry_in: Duration) {
        self.stats.socket_errors.fetch_add(1, Ordering::Relaxed);
        let socket = self.path.display().to_string();
        self.log.log("socket", |suppressed| {
            tracing::warn!(socket, error = %e, retry_in_ms = retry_in.as_millis() as u64, suppressed,
                "cannot send to the Wazuh queue socket (is wazuh-analysisd running?); holding events and retrying");
        });
    }
}

/// At most this many datagrams per `sendmmsg` call.
const SEND_BATCH: usize = 64;

/// One `sendmmsg(2)`: the first datagram waits for room (up to the socket's
/// send timeout), the others go as long as the kernel takes them. Returns
/// how many were sent (at least one), or the error of the first.
///
/// Why not one `send` each: analysisd's queue holds 10 datagrams, so its
/// reader and we take turns; handing the kernel several per call means
/// fewer system calls here and more datagrams waiting for each of its
/// reads. std has no sendmmsg; this is the one FFI call of the writer.
fn send_many(socket: &UnixDatagram, datagrams: &[&[u8]]) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let batch = &datagrams[..datagrams.len().min(SEND_BATCH)];
    let mut iov: Vec<libc::iovec> = batch
        .iter()
        .map(|d| libc::iovec {
            iov_base: d.as_ptr().cast_mut().cast(),
            iov_len: d.len(),
        })
        .collect();
    let mut headers: Vec<libc::mmsghdr> = iov
        .iter_mut()
        .map(|v| {
            // SAFETY: mmsghdr is plain data; all-zero is a valid empty header
            // (no address: the socket is connected).
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_iov = v;
            h.msg_hdr.msg_iovlen = 1;
            h
        })
        .collect();
    // SAFETY: each header points at one iovec in `iov`, each iovec at one
    // datagram in `batch`; all outlive the call, and the kernel only reads
    // the datagrams. The fd belongs to `socket`, alive for the call.
    let sent = unsafe {
        libc::sendmmsg(
            socket.as_raw_fd(),
            headers.as_mut_ptr(),
            headers.len() as libc::c_uint,
            0,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sent as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::fingerprint::FileId;
    use crate::input::{Checkpointer, LinePos};

    struct Setup {
        _dir: tempfile::TempDir,
        path: PathBuf,
        stats: Arc<Stats>,
        dedup: Dedup,
        checkpoints: Arc<Checkpointer>,
        inbox: mpsc::Sender<Outgoing>,
        thread: std::thread::JoinHandle<()>,
    }

    fn start() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue");
        let stats = Arc::new(Stats::default());
        let dedup = Dedup::new(Duration::from_secs(60), 100);
        let writer = Writer::new(
            path.clone(),
            stats.clone(),
            Some(dedup.clone()),
            Arc::new(AtomicBool::new(false)),
        );
        let (inbox, rx) = mpsc::channel(4);
        let thread = std::thread::spawn(move || writer.run(rx));
        let checkpoints = Arc::new(Checkpointer::new());
        let id = FileId {
            dev: 1,
            ino: 1,
            fingerprint: String::new(),
            fingerprint_len: 0,
        };
        checkpoints.opened(0, id, 0);
        Setup {
            _dir: dir,
            path,
            stats,
            dedup,
            checkpoints,
            inbox,
            thread,
        }
    }

    /// Three events of one batch: the key claimed for them stays pending
    /// and the batch in flight until they are out; then the key is marked
    /// and the batch acknowledged.
    fn batch(s: &Setup) -> Outgoing {
        let mut out = Outgoing::default();
        for i in 0..3 {
            assert!(out
                .datagrams
                .push("misp", format!("{{\"n\":{i}}}").as_bytes()));
        }
        assert!(s.dedup.try_claim("k"));
        out.dedup_keys.push(Key::from("k"));
        out.ack = Some(Ack::dispatch(
            &s.checkpoints,
            LinePos {
                generation: 0,
                start: 0,
                end: 30,
            },
        ));
        s.checkpoints.read_up_to(0, 30);
        out
    }

    #[test]
    fn sends_in_order_then_marks_and_acknowledges() {
        let s = start();
        let rx = UnixDatagram::bind(&s.path).unwrap();
        s.inbox.blocking_send(batch(&s)).unwrap();
        let mut buf = [0u8; 256];
        for i in 0..3 {
            let n = rx.recv(&mut buf).unwrap();
            assert!(String::from_utf8_lossy(&buf[..n]).ends_with(&format!("{{\"n\":{i}}}")));
        }
        let Setup {
            inbox,
            thread,
            checkpoints,
            dedup,
            stats,
            ..
        } = s;
        drop(inbox);
        thread.join().unwrap();
        assert_eq!(checkpoints.committed().unwrap().offset, 30);
        assert!(
            !dedup.try_claim("k"),
            "marked sent, still within the window"
        );
        assert_eq!(stats.events_sent.load(Ordering::Relaxed), 3);
    }

    /// analysisd not there yet: the events wait, nothing is acknowledged,
    /// and they go out once the socket appears.
    #[test]
    fn holds_events_until_the_socket_appears() {
        let s = start();
        s.inbox.blocking_send(batch(&s)).unwrap();
        while s.stats.socket_errors.load(Ordering::Relaxed) == 0 {
            std::thread::yield_now();
        }
        assert_eq!(
            s.checkpoints.committed().unwrap().offset,
            0,
            "not acknowledged"
        );
        let rx = UnixDatagram::bind(&s.path).unwrap();
        let mut buf = [0u8; 256];
        let n = rx.recv(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).ends_with("{\"n\":0}"));
        let Setup {
            inbox,
            thread,
            checkpoints,
            ..
        } = s;
        drop(inbox);
        thread.join().unwrap();
        assert_eq!(checkpoints.committed().unwrap().offset, 30);
    }
}
