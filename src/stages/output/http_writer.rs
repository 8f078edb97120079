//! The writer for Wazuh 5: the one thread that owns the connection to the
//! engine's HTTP ingestion socket (`queue/sockets/queue-http.sock`), with
//! the datagram writer's guarantees: events in order per agent, their
//! lines acknowledged only once the engine answered 200, and nothing
//! dropped while the socket is missing or the engine answers 5xx.
//!
//! HTTP/1.1 by hand over a blocking `UnixStream`, keep-alive: one request
//! at a time from one thread, a fixed method, path and headers, and a
//! response of which only the status line and `Content-Length` matter
//! (`httparse` reads them). A client crate would add an async runtime or a
//! connection pool to a thread that sends one request after the other.
//!
//! Replies (`api/event/src/handlers.cpp`): 200 accepted, 400 malformed
//! (events before the fault were already taken), 500 when the engine's
//! orchestrator is down. The engine sets no payload limit today; a 413
//! (a proxy, a later version) splits the batch in halves.

use super::ndjson::{self, Event};
use super::writer::Outgoing;
use crate::dedup::Dedup;
use crate::ratelog::RateLimitedLog;
use crate::stats::Stats;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Events per batch at most (the engine's docs advise 100–500).
pub const MAX_BATCH_EVENTS: usize = 500;
/// Bytes per batch at most.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Bytes of a response read at most (the engine's are a few dozen).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const IO_TIMEOUT: Duration = Duration::from_secs(30);

pub struct HttpWriter {
    path: PathBuf,
    stream: Option<UnixStream>,
    stats: Arc<Stats>,
    dedup: Option<Dedup>,
    log: RateLimitedLog,
    abandon: Arc<AtomicBool>,
}

/// What one POST came to.
enum Posted {
    Accepted,
    /// 413: the batch must be split.
    TooLarge,
    /// 400: the engine refused the batch's content.
    Refused(String),
    /// Shutdown gave up while the engine was unreachable.
    Abandoned,
}

impl HttpWriter {
    pub fn new(
        path: PathBuf,
        stats: Arc<Stats>,
        dedup: Option<Dedup>,
        abandon: Arc<AtomicBool>,
    ) -> Self {
        HttpWriter {
            path,
            stream: None,
            stats,
            dedup,
            abandon,
            log: RateLimitedLog::new(Duration::from_secs(60), 1),
        }
    }

    /// Runs until every sender is dropped and the inbox is empty, or until
    /// `abandon` is set while a send is being retried.
    pub fn run(mut self, mut inbox: mpsc::Receiver<Outgoing>) {
        while let Some(first) = inbox.blocking_recv() {
            crate::runtime::fault::inject(crate::runtime::fault::Component::Writer);
            // Each worker hands over one read's events; what else is
            // already waiting goes in the same requests (never waited
            // for), up to a batch's worth: one round trip per batch, not
            // per worker hand-off.
            let mut group = vec![first];
            let mut queued = group[0].datagrams.len();
            while queued < MAX_BATCH_EVENTS {
                match inbox.try_recv() {
                    Ok(more) => {
                        queued += more.datagrams.len();
                        group.push(more);
                    }
                    Err(_) => break,
                }
            }
            let events: Vec<Event> = group
                .iter()
                .flat_map(|out| out.datagrams.iter())
                .filter_map(Event::of_datagram)
                .collect();
            for (header, lines) in by_agent(&events) {
                for chunk in chunks(&lines) {
                    if !self.send(&header, chunk) {
                        // Abandoned: the acks are dropped unfinished, so
                        // these lines are read again at the next start.
                        return;
                    }
                }
            }
            for out in group {
                out.delivered(self.dedup.as_ref());
            }
        }
    }

    /// Sends `lines` as one batch (halves on 413; a refused batch is
    /// halved until the event the engine refuses is alone, which is then
    /// logged and let go). False only if abandoned.
    fn send(&mut self, header: &str, lines: &[&[u8]]) -> bool {
        let body = ndjson::batch(header, lines.iter().copied());
        match self.post(&body) {
            Posted::Accepted => {
                self.stats
                    .events_sent
                    .fetch_add(lines.len() as u64, Ordering::Relaxed);
                true
            }
            Posted::Abandoned => false,
            Posted::TooLarge | Posted::Refused(_) if lines.len() > 1 => {
                let (a, b) = lines.split_at(lines.len() / 2);
                self.send(header, a) && self.send(header, b)
            }
            Posted::TooLarge => {
                tracing::error!(
                    bytes = body.len(),
                    "the engine refuses one event as too large (HTTP 413); not sent"
                );
                true
            }
            Posted::Refused(reason) => {
                self.stats.socket_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(reason = %reason, event = %String::from_utf8_lossy(&lines[0][..lines[0].len().min(200)]), "the engine refuses an event (HTTP 400); not sent");
                true
            }
        }
    }

    /// POSTs `body` until the engine answers something other than 5xx,
    /// reconnecting and backing off while the socket is missing.
    fn post(&mut self, body: &[u8]) -> Posted {
        let mut delay = Duration::from_millis(50);
        loop {
            match self.try_post(body) {
                Ok((200..=299, _)) => return Posted::Accepted,
                Ok((413, _)) => return Posted::TooLarge,
                Ok((400, reply)) => {
                    return Posted::Refused(String::from_utf8_lossy(&reply).into_owned())
                }
                Ok((status, reply)) => {
                    self.stats.socket_errors.fetch_add(1, Ordering::Relaxed);
                    self.log.log("engine", |suppressed| {
                        tracing::warn!(status, reply = %String::from_utf8_lossy(&reply), suppressed, "the engine did not take a batch; retrying");
                    });
                }
                Err(e) => {
                    self.stream = None;
                    self.stats.socket_errors.fetch_add(1, Ordering::Relaxed);
                    self.log.log("socket", |suppressed| {
                        tracing::warn!(socket = %self.path.display(), error = %e, suppressed, "cannot reach the engine's ingestion socket; retrying (is wazuh-manager running?)");
                    });
                }
            }
            if self.abandon.load(Ordering::Relaxed) {
                return Posted::Abandoned;
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(MAX_BACKOFF);
        }
    }

    /// One request on the kept-alive connection (a new one if there is
    /// none, or the engine closed it). The status and the body.
    fn try_post(&mut self, body: &[u8]) -> io::Result<(u16, Vec<u8>)> {
        if self.stream.is_none() {
            let s = UnixStream::connect(&self.path)?;
            s.set_read_timeout(Some(IO_TIMEOUT))?;
            s.set_write_timeout(Some(IO_TIMEOUT))?;
            tracing::info!(socket = %self.path.display(), "connected to the engine's ingestion socket");
            self.stream = Some(s);
        }
        let stream = self.stream.as_mut().expect("connected above");
        let head = format!(
            "POST /events/enriched HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        let (status, reply, close) = read_response(stream)?;
        if close {
            self.stream = None;
        }
        Ok((status, reply))
    }
}

/// The events grouped by agent (one batch carries one agent's events, the
/// header being merged into each), in the order each agent first appears,
/// each agent's events in their order.
fn by_agent(events: &[Event]) -> Vec<(String, Vec<&[u8]>)> {
    let mut out: Vec<(String, &str, Vec<&[u8]>)> = Vec::new();
    for e in events {
        match out.iter_mut().find(|(_, id, _)| *id == e.agent_id) {
            Some((_, _, lines)) => lines.push(&e.line),
            None => out.push((
                ndjson::header(&e.agent_id, e.agent_name.as_deref()),
                &e.agent_id,
                vec![&e.line],
            )),
        }
    }
    out.into_iter().map(|(h, _, l)| (h, l)).collect()
}

/// `lines` cut into batches of at most [`MAX_BATCH_EVENTS`] and
/// [`MAX_BATCH_BYTES`].
fn chunks<'a, 'b>(lines: &'b [&'a [u8]]) -> impl Iterator<Item = &'b [&'a [u8]]> {
    let mut rest = lines;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = 0;
        let mut n = 0;
        while n < rest.len() && n < MAX_BATCH_EVENTS {
            bytes += rest[n].len() + 3;
            if n > 0 && bytes > MAX_BATCH_BYTES {
                break;
            }
            n += 1;
        }
        let (now, later) = rest.split_at(n);
        rest = later;
        Some(now)
    })
}

/// Reads one HTTP/1.1 response: its status, its body (by
/// `Content-Length`), and whether the connection closes after it.
fn read_response(stream: &mut UnixStream) -> io::Result<(u16, Vec<u8>, bool)> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the engine closed the connection before answering",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let parsed = resp.parse(&buf).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("not an HTTP response: {e}"),
            )
        })?;
        if let httparse::Status::Complete(head) = parsed {
            let status = resp.code.unwrap_or(0);
            let header = |name: &str| {
                resp.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .and_then(|h| std::str::from_utf8(h.value).ok())
                    .map(str::trim)
            };
            let length: usize = header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"))
                || resp.version == Some(0);
            if length > MAX_RESPONSE_BYTES {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "response body too large",
                ));
            }
            let mut body = buf[head..].to_vec();
            while body.len() < length {
                let n = stream.read(&mut chunk)?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "response body cut off",
                    ));
                }
                body.extend_from_slice(&chunk[..n]);
            }
            body.truncate(length);
            return Ok((status, body, close));
        }
        if buf.len() > MAX_RESPONSE_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "response head too large",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_batched_per_agent_in_order() {
        let datagrams: [&[u8]; 4] = [
            b"1:[001] (a) 10.0.0.1->misp:{\"n\":1}",
            b"1:[002] (b) 10.0.0.2->misp:{\"n\":2}",
            b"1:[001] (a) 10.0.0.1->misp:{\"n\":3}",
            b"1:misp:{\"n\":4}",
        ];
        let events: Vec<Event> = datagrams
            .iter()
            .filter_map(|d| Event::of_datagram(d))
            .collect();
        let groups = by_agent(&events);
        let got: Vec<(String, usize)> = groups.iter().map(|(h, l)| (h.clone(), l.len())).collect();
        assert_eq!(
            got,
            [
                (
                    r#"{"wazuh":{"agent":{"id":"001","name":"a"}}}"#.to_owned(),
                    2
                ),
                (
                    r#"{"wazuh":{"agent":{"id":"002","name":"b"}}}"#.to_owned(),
                    1
                ),
                (r#"{"wazuh":{"agent":{"id":"000"}}}"#.to_owned(), 1),
            ]
        );
        assert!(groups[0].1[1].ends_with(b"{\"n\":3}"));
    }

    #[test]
    fn batches_respect_the_count_and_size_limits() {
        let small = vec![&b"x"[..]; MAX_BATCH_EVENTS * 2 + 1];
        let sizes: Vec<usize> = chunks(&small).map(<[_]>::len).collect();
        assert_eq!(sizes, [MAX_BATCH_EVENTS, MAX_BATCH_EVENTS, 1]);
        let big = vec![0u8; MAX_BATCH_BYTES / 2];
        let large = vec![&big[..]; 3];
        let sizes: Vec<usize> = chunks(&large).map(<[_]>::len).collect();
        assert_eq!(sizes, [1, 1, 1]);
    }
}
