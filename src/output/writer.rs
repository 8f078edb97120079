//! The writer: the one task that owns the analysisd queue socket.
//!
//! Events for one alert line arrive together. They are sent in order; only
//! then are their dedup keys marked and their lines acknowledged. When the socket is missing or refuses (analysisd
//! restarting), the writer retries with backoff and never drops an event;
//! meanwhile its bounded inbox fills, workers wait, and the tailer stops
//! reading.

use super::Datagrams;
use crate::dedup::{Dedup, Key};
use crate::input::Ack;
use crate::ratelog::RateLimitedLog;
use crate::stats::Stats;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UnixDatagram;
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
}

const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Writer {
    pub fn new(path: PathBuf, stats: Arc<Stats>, dedup: Option<Dedup>) -> Self {
        Writer {
            path,
            socket: None,
            stats,
            dedup,
            log: RateLimitedLog::new(Duration::from_secs(60), 1),
        }
    }

    /// Runs until every sender is dropped and the inbox is empty.
    pub async fn run(mut self, mut inbox: mpsc::Receiver<Outgoing>) {
        while let Some(out) = inbox.recv().await {
            for d in out.datagrams.iter() {
                self.send(d).await;
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
        Ok(s)
    }

    /// Sends one datagram, however long it takes.
    async fn send(&mut self, datagram: &[u8]) {
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
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(MAX_BACKOFF);
                        continue;
                    }
                }
            }
            let socket = self.socket.as_ref().expect("connected above");
            match socket.send(datagram).await {
                Ok(_) => {
                    self.stats.events_sent.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(e) => {
                    // The receiver is gone or was replaced (analysisd restarted
                    // and bound a new socket): reconnect and send again.
                    self.socket = None;
                    self.failed(&e, delay);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_BACKOFF);
                }
            }
        }
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
