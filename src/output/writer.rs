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
//! wait is an EAGAIN, an epoll round and a task wake-up. Measured on the hot
//! scenario, the thread moves more events per second.

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
            for d in out.datagrams.iter() {
                if !self.send(d) {
                    // Abandoned at shutdown: the ack is dropped unfinished,
                    // so these lines are read again at the next start.
                    return;
                }
            }
            if let Some(dedup) = &self.dedup {
                for &k in &out.dedup_keys {
                    dedup.mark_sent(k);
                }
            }
            if let Some(ack) = out.ack {
                ack.finish();
            }
        }
    }

    fn connect(&self) -> io::Result<UnixDatagram> {
        let s = UnixDatagram::unbound()?;
        s.connect(&self.path)?;
        // Bounded waits, so that shutdown can abandon a stuck analysisd.
        s.set_write_timeout(Some(SEND_TIMEOUT))?;
        Ok(s)
    }

    /// Sends one datagram, however long it takes; false only if abandoned.
    fn send(&mut self, datagram: &[u8]) -> bool {
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
                            return false;
                        }
                        continue;
                    }
                }
            }
            let socket = self.socket.as_ref().expect("connected above");
            match socket.send(datagram) {
                Ok(_) => {
                    self.stats.events_sent.fetch_add(1, Ordering::Relaxed);
                    return true;
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
                        return false;
                    }
                }
                Err(e) => {
                    // The receiver is gone or was replaced (analysisd restarted
                    // and bound a new socket): reconnect and send again.
                    self.socket = None;
                    self.failed(&e, delay);
                    if !self.pause(&mut delay) {
                        return false;
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
