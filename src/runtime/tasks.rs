//! The daemon's background tasks: the state saver, the error reporter and
//! the metrics publisher. Each runs until the shutdown token is cancelled.

use super::daemon::save_dedup;
use crate::dedup::Dedup;
use crate::enrich;
use crate::input::{bookmark, Bookmark, Checkpointer};
use crate::lookup::Source;
use crate::output::{self, Outgoing};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The reporter's settings, which a reload changes in place.
#[derive(Debug)]
pub struct ReportSettings {
    pub after_secs: AtomicU64,
    pub every_secs: AtomicU64,
}

impl ReportSettings {
    pub fn new(after_secs: u64, every_secs: u64) -> Self {
        ReportSettings {
            after_secs: AtomicU64::new(after_secs),
            every_secs: AtomicU64::new(every_secs),
        }
    }

    pub fn set(&self, after_secs: u64, every_secs: u64) {
        self.after_secs.store(after_secs, Ordering::Relaxed);
        self.every_secs.store(every_secs, Ordering::Relaxed);
    }
}

/// Tells Wazuh when MISP has been failing (lookups, or a mirror's syncs)
/// for `output.error_event_after_secs`,
/// at most once per `output.error_event_interval_secs`, and names each
/// value given up on: the SOC then sees the integration's own trouble as
/// an alert.
pub async fn report_errors(
    source: Source,
    out: mpsc::Sender<Outgoing>,
    settings: Arc<ReportSettings>,
    stop: CancellationToken,
) {
    let mut last_sent: Option<std::time::Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        for failed in source.primary().take_given_up() {
            let payload =
                enrich::lookup_failed_event(&failed.value, &failed.message, chrono::Utc::now());
            if let Some(msg) = manager_event(&payload) {
                if out.send(msg).await.is_err() {
                    return;
                }
            }
        }
        let Some((since, error)) = source.failing() else {
            continue;
        };
        let after = Duration::from_secs(settings.after_secs.load(Ordering::Relaxed));
        let every = Duration::from_secs(settings.every_secs.load(Ordering::Relaxed));
        let failing_for = since.elapsed().unwrap_or_default();
        if failing_for < after || last_sent.is_some_and(|t| t.elapsed() < every) {
            continue;
        }
        let payload = enrich::error_event(error.kind, &error.message, since.into());
        let Some(msg) = manager_event(&payload) else {
            continue;
        };
        tracing::warn!(
            kind = error.kind,
            failing_secs = failing_for.as_secs(),
            "sending an integration error event to Wazuh"
        );
        if out.send(msg).await.is_err() {
            return;
        }
        last_sent = Some(std::time::Instant::now());
    }
}

/// One event of the integration's own, from the manager; `None` when it
/// does not fit one datagram.
fn manager_event(payload: &[u8]) -> Option<Outgoing> {
    let mut msg = Outgoing::default();
    msg.datagrams
        .push(output::MANAGER_HEADER, payload)
        .then_some(msg)
}

/// How often the bookmark is saved when it moved. After a `kill -9`, what
/// was sent in the last interval is sent again; 200 ms keeps that small for
/// five fsyncs a second.
pub const BOOKMARK_EVERY: Duration = Duration::from_millis(200);

/// Saves the bookmark every [`BOOKMARK_EVERY`] when it moved, and the dedup
/// table every `dedup_every`. A save in progress is always finished before
/// this returns, so the final save at shutdown never races it.
pub async fn save_periodically(
    state_dir: PathBuf,
    streams: Vec<(String, Arc<Checkpointer>)>,
    dedup: Dedup,
    dedup_every: Duration,
    sightings: Option<Arc<crate::sightings::Sightings>>,
    stop: CancellationToken,
) {
    let mut last = vec![None; streams.len()];
    let mut tick = tokio::time::interval(BOOKMARK_EVERY);
    let mut since_dedup = Duration::ZERO;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let current: Vec<_> = streams.iter().map(|(_, c)| c.committed()).collect();
        since_dedup += BOOKMARK_EVERY;
        let save_dedup_now = since_dedup >= dedup_every;
        if save_dedup_now {
            since_dedup = Duration::ZERO;
        }
        // Each stream's bookmark that moved.
        let moved: Vec<(String, Bookmark)> = streams
            .iter()
            .zip(current.iter().zip(&last))
            .filter(|(_, (now, before))| now != before)
            .filter_map(|((name, _), (now, _))| Some((name.clone(), now.clone()?)))
            .collect();
        if let Some(s) = &sightings {
            let (dir, s) = (state_dir.clone(), s.clone());
            let _ = tokio::task::spawn_blocking(move || {
                super::feedback::save_sightings(&dir, &s, false)
            })
            .await;
        }
        if moved.is_empty() && !save_dedup_now {
            continue;
        }
        // fsync (and a million-entry dedup table) would stall a runtime
        // thread and every alert queued behind it.
        let (dir, dedup) = (state_dir.clone(), dedup.clone());
        let _ = tokio::task::spawn_blocking(move || {
            for (stream, b) in moved {
                if let Err(e) = bookmark::save(&dir, &stream, &b) {
                    tracing::error!(error = %e, "cannot save bookmark");
                }
            }
            if save_dedup_now {
                save_dedup(&dir, &dedup);
            }
        })
        .await;
        for (before, now) in last.iter_mut().zip(current) {
            if now.is_some() {
                *before = now;
            }
        }
    }
}

/// How often `false_positives.json` is checked for a change.
pub const FALSE_POSITIVES_EVERY: Duration = Duration::from_secs(2);

/// Swaps in the false-positive list whenever its file changes (what
/// `wazuh-misp false-positive` writes), checked every
/// [`FALSE_POSITIVES_EVERY`].
pub async fn watch_false_positives<I: crate::lookup::Intelligence>(
    engine: Arc<super::Engine<I>>,
    state_dir: PathBuf,
    stop: CancellationToken,
) {
    let mut seen = None;
    let mut tick = tokio::time::interval(FALSE_POSITIVES_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = crate::false_positives::version(&state_dir);
        if now == seen {
            continue;
        }
        seen = now;
        reload_false_positives(&engine, &state_dir);
    }
}

/// Reads `false_positives.json` into the engine now.
pub fn reload_false_positives<I: crate::lookup::Intelligence>(
    engine: &super::Engine<I>,
    state_dir: &std::path::Path,
) {
    let entries = crate::false_positives::load(state_dir);
    let list = crate::false_positives::suppressed(&entries);
    if list.len() != engine.suppressed.load().len() {
        tracing::info!(values = list.len(), "false positives loaded");
    }
    engine.suppressed.store(Arc::new(list));
}

/// Publishes the counters and gauges every second, when metrics are on.
pub async fn publish_metrics(src: crate::metrics::Sources, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => crate::metrics::publish_once(&src),
        }
    }
}
