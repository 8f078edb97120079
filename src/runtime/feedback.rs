//! The feedback loop's components: the sightings sender, the ledger's
//! writer thread and the retro hunter. What they work on is in
//! [`crate::sightings`] and [`crate::ledger`]; here is only their running.

use super::engine::Engine;
use crate::config::{Config, MatchTypes};
use crate::enrich::{self, RetroSource};
use crate::ledger::hunt::{self, Found, Indicator};
use crate::ledger::store::LedgerStore;
use crate::ledger::Ledger;
use crate::lookup::{Lookup, MispError, SightingOutcome, Source};
use crate::observable::Observable;
use crate::output::{self, Outgoing};
use crate::ratelog::RateLimitedLog;
use crate::sightings::Sightings;
use crate::state::{read_versioned, write_atomic};
use crate::stats::Stats;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The side outputs the engine feeds, when on.
#[derive(Default, Clone)]
pub struct Feedback {
    pub ledger: Option<Arc<Ledger>>,
    pub sightings: Option<Arc<Sightings>>,
}

pub const SIGHTINGS_FILE: &str = "sightings.json";

pub fn load_sightings(state_dir: &Path, s: &Sightings) -> usize {
    read_versioned(
        &state_dir.join(SIGHTINGS_FILE),
        crate::sightings::SavedFile::V1,
    )
    .found()
    .map_or(0, |crate::sightings::SavedFile::V1(saved)| {
        s.restore(saved, chrono::Utc::now().timestamp())
    })
}

/// Saves the queue if it changed (or always, with `force`).
pub fn save_sightings(state_dir: &Path, s: &Sightings, force: bool) {
    let Some(saved) = s.saved(force) else {
        return;
    };
    let bytes = serde_json::to_vec(&saved).expect("the sightings queue serialises");
    if let Err(e) = write_atomic(&state_dir.join(SIGHTINGS_FILE), &bytes) {
        tracing::error!(error = %e, "cannot save the sightings queue");
    }
}

/// Where sightings go: each server's lookup, whose client a reload may
/// replace (the first server is also the one for an empty name).
#[derive(Clone)]
pub struct SightingTargets(pub Vec<(Arc<str>, Lookup)>);

impl SightingTargets {
    pub fn of(source: &Source, first_name: &str) -> SightingTargets {
        match source {
            Source::Query(l) => SightingTargets(vec![(first_name.into(), l.clone())]),
            Source::Mirror(m) => SightingTargets(
                m.servers()
                    .iter()
                    .map(|s| (s.name.clone(), s.query.clone()))
                    .collect(),
            ),
        }
    }

    fn for_server(&self, name: &str) -> Option<&Lookup> {
        self.0
            .iter()
            .find(|(n, _)| &**n == name)
            .or(self.0.first())
            .map(|(_, l)| l)
    }
}

/// Sends the queue's sightings, oldest first, at most `per_minute`. A
/// failure MISP as a whole causes (5xx, timeout, unreachable, 429) leaves
/// the sighting queued and backs off; a 401/403 (the key may not add
/// sightings) is reported once and pauses sightings for `pause`, then one
/// is tried again; a sighting MISP refuses by itself (no such attribute)
/// is dropped.
pub async fn send_sightings(
    queue: Arc<Sightings>,
    targets: SightingTargets,
    per_minute: u32,
    pause: Duration,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    let gap = Duration::from_secs_f64(60.0 / f64::from(per_minute.max(1)));
    let mut backoff = Duration::from_secs(1);
    let mut refused_reported = false;
    let refusals = RateLimitedLog::new(Duration::from_secs(60), 5);
    let sleep = |d: Duration| {
        let stop = stop.clone();
        async move {
            tokio::select! {
                _ = stop.cancelled() => false,
                _ = tokio::time::sleep(d) => true,
            }
        }
    };
    loop {
        let Some(s) = queue.front() else {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = queue.wake.notified() => continue,
            }
        };
        let Some(lookup) = targets.for_server(&s.server) else {
            return;
        };
        let client = lookup.client();
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = client.add_sighting(&s.uuid, s.kind, &s.source, s.timestamp) => r,
        };
        match result {
            Ok(SightingOutcome::Added) => {
                queue.done(&s);
                stats.sightings_sent.fetch_add(1, Ordering::Relaxed);
                backoff = Duration::from_secs(1);
                if refused_reported {
                    tracing::info!("MISP accepts sightings again");
                    refused_reported = false;
                }
            }
            Ok(SightingOutcome::Refused(reason)) => {
                queue.done(&s);
                stats.sightings_failed.fetch_add(1, Ordering::Relaxed);
                stats.sightings_dropped.fetch_add(1, Ordering::Relaxed);
                refusals.log("sighting refused", |suppressed| {
                    tracing::warn!(uuid = %s.uuid, server = %s.server, reason = %reason, suppressed, "MISP did not add a sighting (the attribute may be deleted or not visible to this key); dropped");
                });
            }
            Err(MispError::Auth { status, message }) => {
                stats.sightings_failed.fetch_add(1, Ordering::Relaxed);
                if !refused_reported {
                    tracing::error!(
                        status,
                        message = %message,
                        server = %s.server,
                        pause_secs = pause.as_secs(),
                        pending = queue.len(),
                        "MISP refuses this API key's sightings: give the key's user a role with the sighting permission (perm_sighting), or set misp.sightings = false. Sightings stay queued and are tried again after misp.sightings_pause_secs"
                    );
                    refused_reported = true;
                }
                if !sleep(pause).await {
                    return;
                }
                continue;
            }
            Err(e @ MispError::BadBody(_)) if e.to_string().contains("unexpected HTTP 4") => {
                queue.done(&s);
                stats.sightings_failed.fetch_add(1, Ordering::Relaxed);
                stats.sightings_dropped.fetch_add(1, Ordering::Relaxed);
                refusals.log("sighting rejected", |suppressed| {
                    tracing::warn!(uuid = %s.uuid, error = %e, suppressed, "MISP rejected a sighting; dropped");
                });
            }
            Err(e) => {
                stats.sightings_failed.fetch_add(1, Ordering::Relaxed);
                let wait = match &e {
                    MispError::RateLimited {
                        retry_after: Some(d),
                    } => (*d).min(Duration::from_secs(300)),
                    _ => backoff,
                };
                tracing::debug!(error = %e, wait_secs = wait.as_secs_f64(), "sighting not sent; kept queued");
                backoff = (backoff * 2).min(Duration::from_secs(60));
                if !sleep(wait).await {
                    return;
                }
                continue;
            }
        }
        if !sleep(gap).await {
            return;
        }
    }
}

/// The ledger's settings.
#[derive(Debug, Clone)]
pub struct LedgerSettings {
    pub state_dir: PathBuf,
    pub window_secs: i64,
    pub max_values: u64,
    pub refs_per_value: usize,
}

impl LedgerSettings {
    pub fn from_config(cfg: &Config) -> LedgerSettings {
        LedgerSettings {
            state_dir: cfg.input.state_dir.to_path_buf(),
            window_secs: (*cfg.retro.window_days * 86400) as i64,
            max_values: *cfg.retro.max_values,
            refs_per_value: *cfg.retro.refs_per_value,
        }
    }
}

/// The ledger thread: every second (sooner when the pending map fills)
/// writes what the workers noted, then expires and evicts. Ends after a
/// last flush once `stop` is cancelled.
pub fn write_ledger(
    ledger: Arc<Ledger>,
    mut store: LedgerStore,
    settings: LedgerSettings,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    let errors = RateLimitedLog::new(Duration::from_secs(60), 1);
    loop {
        let stopping = stop.is_cancelled();
        let pending = ledger.take(if stopping {
            Duration::ZERO
        } else {
            Duration::from_secs(1)
        });
        let now = chrono::Utc::now().timestamp();
        match store.apply(
            pending,
            settings.refs_per_value,
            now,
            settings.window_secs,
            settings.max_values,
        ) {
            Ok(a) => {
                stats
                    .ledger_evicted
                    .fetch_add(a.evicted, Ordering::Relaxed);
                if a.evicted > 0 {
                    tracing::debug!(evicted = a.evicted, "ledger over retro.max_values; the least recently seen values evicted");
                }
            }
            Err(e) => errors.log("ledger", |suppressed| {
                tracing::error!(error = %e, suppressed, "cannot write the retro ledger; what was seen in the last second is not recorded");
            }),
        }
        // Also after a failure: a hunt waiting for this flush goes on
        // with what the ledger has.
        ledger.flushed();
        if stopping {
            return;
        }
    }
}

/// The hunter's settings.
#[derive(Debug, Clone)]
pub struct HuntSettings {
    pub state_dir: PathBuf,
    pub max_events: usize,
    pub subdomains: bool,
    /// `retro.window_days` in seconds: a pending hunt older than this is
    /// given up (its alerts have left the ledger).
    pub window_secs: i64,
}

/// Pending hunts taken from the store at a time.
const HUNT_BATCH: usize = 1000;

/// How often pending hunts that could not finish (MISP gave no answer)
/// are tried again when no sync wakes the hunter.
const RETRY_EVERY: Duration = Duration::from_secs(60);

/// A retro event to send: its datagrams and the hunt key it settles.
pub struct Candidate {
    pub indicator: Indicator,
    pub entry: crate::ledger::store::Entry,
    pub reference: String,
    pub key: [u8; 16],
}

/// Ledger entries read per indicator at most (a wide network can hold
/// most of the ledger): the bound of a hunt's time, and of what it counts
/// as left out.
pub const MAX_SCANNED: usize = 1_000_000;

/// Reads the ledger for `indicators`: every (value, reference) not hunted
/// for that indicator yet and not a false positive, at most `limit`, and
/// how many more there were.
pub fn candidates(
    store: &LedgerStore,
    indicators: &[Indicator],
    subdomains: bool,
    suppressed: &crate::suppress::Suppressed,
    limit: usize,
) -> Result<(Vec<Candidate>, usize), crate::ledger::store::LedgerError> {
    let mut out = Vec::new();
    let mut more = 0;
    // One retro event per (value, alert), however many indicators name it.
    let mut taken = std::collections::HashSet::new();
    for ind in indicators {
        let mut scanned = 0;
        for probe in hunt::probes(&ind.kind, &ind.value, subdomains) {
            store.each_in_range(&probe.low, &probe.high, |entry| {
                scanned += 1;
                let Ok(o) = entry.value.parse::<Observable>() else {
                    return Ok(true);
                };
                if suppressed.covers(&o) {
                    return Ok(true);
                }
                for r in &entry.refs {
                    let key = hunt::hunt_key(&entry.value, &hunt::alert_id_of(r));
                    if taken.contains(&key) || store.hunted(&key)? {
                        continue;
                    }
                    taken.insert(key);
                    if out.len() >= limit {
                        more += 1;
                        continue;
                    }
                    out.push(Candidate {
                        indicator: ind.clone(),
                        entry: entry.clone(),
                        reference: r.clone(),
                        key,
                    });
                }
                Ok(scanned < MAX_SCANNED)
            })?;
        }
    }
    Ok((out, more))
}

/// Renders `c`, whose value is `value`, against the intelligence's answer
/// for it now.
pub fn render_candidate(
    c: &Candidate,
    value: &Observable,
    answer: &crate::lookup::LookupResult,
    match_types: MatchTypes,
    added: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<(String, Vec<u8>)>, String> {
    enrich::retro_events(
        &RetroSource {
            reference: &c.reference,
            value,
            first_seen: c.entry.first_seen,
            last_seen: c.entry.last_seen,
            count: c.entry.count,
            indicator_added: added,
            indicator_uuid: &c.indicator.uuid,
            indicator_type: &c.indicator.kind,
        },
        answer,
        match_types,
        chrono::Utc::now(),
    )
}

/// Sightings for a retro event's attributes, at the past alert's time and
/// from its manager, as its live event would have sent them.
fn offer_retro_sightings(
    s: &Sightings,
    c: &Candidate,
    value: &Observable,
    answer: &crate::lookup::LookupResult,
    match_types: MatchTypes,
) {
    let r: serde_json::Value = serde_json::from_str(&c.reference).unwrap_or_default();
    let alert = &r["alert"];
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("").to_owned();
    let hit = crate::observable::Occurrence {
        observable: value.clone(),
        direction: crate::observable::Direction::parse(r["direction"].as_str().unwrap_or("")),
        field_path: String::new(),
        raw_context: String::new(),
    };
    let ctx = enrich::AlertContext {
        manager: enrich::ManagerContext {
            name: text(&alert["manager"]["name"]).into(),
        },
        timestamp: text(&alert["timestamp"]).into(),
        rule: Default::default(),
        agent: Default::default(),
        location: Default::default(),
        decoder: Default::default(),
        alert_id: Default::default(),
        data: None,
    };
    super::engine::offer_sightings(
        s,
        &ctx,
        &hit,
        answer,
        match_types,
        chrono::Utc::now().timestamp(),
    );
}

/// Hunts the mirror's pending new indicators (`pending_hunts`, written by
/// the sync with the page that brought them) in the ledger and sends one
/// retro event per matching (value, alert), each recorded as hunted once
/// the writer has sent it. A hunt leaves the store only when it is done:
/// one cut short (a crash, a shutdown, MISP giving no answer) is taken up
/// again at the next round, which a sync's wake-up, the start, or
/// [`RETRY_EVERY`] begins.
pub async fn hunt(
    wake: Arc<tokio::sync::Notify>,
    engine: Arc<Engine<Source>>,
    out: mpsc::Sender<Outgoing>,
    settings: HuntSettings,
    stop: CancellationToken,
) {
    let Some(mirror) = engine.lookup.mirror().cloned() else {
        stop.cancelled().await;
        return;
    };
    let store = {
        let dir = settings.state_dir.clone();
        match tokio::task::spawn_blocking(move || LedgerStore::open(&dir)).await {
            Ok(Ok(s)) => Arc::new(std::sync::Mutex::new(s)),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot open the retro ledger; no retro-hunting");
                stop.cancelled().await;
                return;
            }
            Err(_) => return,
        }
    };
    loop {
        for server in mirror.servers() {
            let round = hunt_pending(server, &engine, &out, &store, &settings);
            let done = tokio::select! {
                _ = stop.cancelled() => return,
                r = round => r,
            };
            if let Err(e) = done {
                tracing::error!(server = %server.name, error = %e, "retro-hunt failed; its indicators wait for the next round");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(RETRY_EVERY) => {}
        }
    }
}

/// Hunts `server`'s pending indicators, a batch at a time, until none is
/// left or only ones to try again later.
async fn hunt_pending(
    server: &Arc<crate::lookup::mirror::ServerMirror>,
    engine: &Arc<Engine<Source>>,
    out: &mpsc::Sender<Outgoing>,
    store: &Arc<std::sync::Mutex<LedgerStore>>,
    settings: &HuntSettings,
) -> anyhow::Result<()> {
    let name = server.name.clone();
    // Hunts kept for a later round: skipped over in this one.
    let mut later = std::collections::HashSet::new();
    let stopping = || anyhow::anyhow!("shutting down");
    loop {
        let want = HUNT_BATCH + later.len();
        let pending = server
            .on_store(move |s, name| s.pending_hunts(name, want))
            .await
            .ok_or_else(stopping)??;
        let fresh: Vec<_> = pending
            .into_iter()
            .filter(|p| !later.contains(&(p.uuid.clone(), p.value.clone())))
            .collect();
        if fresh.is_empty() {
            return Ok(());
        }
        let now = chrono::Utc::now().timestamp();
        let (stale, live): (Vec<_>, Vec<_>) = fresh
            .into_iter()
            .partition(|p| p.found_at < now - settings.window_secs);
        let found = Found {
            server: name.clone(),
            indicators: live
                .iter()
                .map(|p| Indicator {
                    server: name.clone(),
                    uuid: p.uuid.clone(),
                    kind: p.kind.clone(),
                    value: p.value.clone(),
                    timestamp: p.timestamp,
                })
                .collect(),
            at: live
                .first()
                .and_then(|p| chrono::DateTime::from_timestamp(p.found_at, 0))
                .unwrap_or_else(chrono::Utc::now),
        };
        let retry = if found.indicators.is_empty() {
            Default::default()
        } else {
            tracing::info!(
                server = %name,
                new_indicators = found.indicators.len(),
                "the mirror learnt new indicators; hunting them in the ledger"
            );
            let (sent, left_out, retry) = hunt_once(&found, engine, out, store, settings).await?;
            tracing::info!(
                server = %name,
                indicators = found.indicators.len(),
                retro_events = sent,
                left_out,
                to_retry = retry.len(),
                "retro-hunt done"
            );
            retry
        };
        let mut done: Vec<(String, String)> = stale
            .iter()
            .map(|p| (p.uuid.clone(), p.value.clone()))
            .collect();
        for p in &live {
            let k = (p.uuid.clone(), p.value.clone());
            if retry.contains(&p.uuid) {
                later.insert(k);
            } else {
                done.push(k);
            }
        }
        server
            .on_store(move |s, name| s.hunted(name, &done))
            .await
            .ok_or_else(stopping)??;
    }
}

async fn hunt_once(
    f: &Found,
    engine: &Arc<Engine<Source>>,
    out: &mpsc::Sender<Outgoing>,
    store: &Arc<std::sync::Mutex<LedgerStore>>,
    settings: &HuntSettings,
) -> anyhow::Result<(usize, usize, std::collections::HashSet<String>)> {
    // The alerts of the last moments are in the ledger's pending map: a
    // sync can find an indicator within the second its alert came.
    if let Some(ledger) = engine.feedback.ledger.clone() {
        let written =
            tokio::task::spawn_blocking(move || ledger.flush_and_wait(Duration::from_secs(10)))
                .await
                .unwrap_or(false);
        if !written {
            tracing::warn!("the ledger did not flush within 10 s; hunting what it holds");
        }
    }
    let (candidates, more) = {
        let store = store.clone();
        let indicators = f.indicators.clone();
        let suppressed = engine.suppressed.load_full();
        let (limit, subdomains) = (settings.max_events, settings.subdomains);
        tokio::task::spawn_blocking(move || {
            let store = store.lock().unwrap_or_else(|e| e.into_inner());
            candidates(&store, &indicators, subdomains, &suppressed, limit)
        })
        .await??
    };
    let match_types = engine.rules.load().match_types;
    let mut sent = 0usize;
    let mut left_out = more;
    // Indicators to hunt again: MISP gave no answer for one of their
    // matches, or the mirror does not hold them yet (the sync that found
    // them has not made its index live).
    let mut retry = std::collections::HashSet::new();
    for c in &candidates {
        if sent >= settings.max_events {
            left_out += 1;
            continue;
        }
        let value: Observable = match c.entry.value.parse() {
            Ok(v) => v,
            Err(_) => continue,
        };
        let answer = match crate::lookup::Intelligence::lookup(&engine.lookup, &value).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(value = %value, error = %e, "no answer for a retro-hunt match; tried again at the next round");
                retry.insert(c.indicator.uuid.clone());
                continue;
            }
        };
        if answer.is_empty() {
            retry.insert(c.indicator.uuid.clone());
            continue;
        }
        let events = match render_candidate(c, &value, &answer, match_types, f.at) {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(value = %value, error = %e, "cannot build a retro event");
                continue;
            }
        };
        if events.is_empty() {
            continue;
        }
        let mut msg = Outgoing::default();
        for (header, payload) in &events {
            msg.datagrams.push(header, payload);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        msg.sent = Some(tx);
        if out.send(msg).await.is_err() || rx.await.is_err() {
            anyhow::bail!("the writer is gone");
        }
        // Sightings first: whoever sees the count has them queued.
        if let Some(s) = &engine.feedback.sightings {
            offer_retro_sightings(s, c, &value, &answer, match_types);
        }
        engine
            .stats
            .retro_events
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        sent += events.len();
        let mark = (crate::ledger::key_of(&value), c.key);
        let store = store.clone();
        tokio::task::spawn_blocking(move || {
            store
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .mark_hunted(&[mark], chrono::Utc::now().timestamp())
        })
        .await??;
    }
    if left_out > 0 {
        engine
            .stats
            .retro_capped
            .fetch_add(left_out as u64, Ordering::Relaxed);
        let payload = enrich::retro_summary_event(
            &f.server,
            f.indicators.len(),
            sent,
            left_out,
            chrono::Utc::now(),
        );
        let mut msg = Outgoing::default();
        if msg.datagrams.push(output::MANAGER_HEADER, &payload) {
            let _ = out.send(msg).await;
        }
        tracing::warn!(
            server = %f.server,
            sent,
            left_out,
            "retro-hunt stopped at retro.max_events_per_sync; the rest is not sent (wazuh-misp hunt --send sends it)"
        );
    }
    Ok((sent, left_out, retry))
}
