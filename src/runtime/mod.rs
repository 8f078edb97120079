//! The one place where the stages are wired together.
//!
//! ```text
//! tailer thread ──Batch──▶ [bounded channel] ──▶ workers (N tasks) ──Outgoing──▶ [bounded] ──▶ writer thread
//!  (input)                                      filter → extract → dedup →                     (output)
//!                                               lookup → enrich → frame                          │
//!        ▲                                                                                       │ ack
//!        └──────────────── checkpointer ◀────────────────────────────────────────────────────────┘
//! ```
//!
//! Backpressure runs end to end: a slow MISP or a missing socket fills the
//! bounded channels, the tailer blocks on its send, and alerts.json is the
//! buffer. Nothing is dropped to keep up.

use crate::alert::{self, Fields, Node};
use crate::config::{Config, MatchTypes};
use crate::dedup::{self, Dedup};
use crate::enrich::{self, AlertContext};
use crate::extract::{Extractor, IpHit, Scratch};
use crate::filter::{self, AlertFilter};
use crate::input::tail::{self, Waker, BATCH_LINES};
use crate::input::{bookmark, Ack, Batch, Checkpointer, TailOptions, Tailer};
use crate::lookup::{self, Abandoned, Hits, Lookup, LookupError, MispClient, Recent};
use crate::output::{self, Outgoing, Writer};
use crate::ratelog::RateLimitedLog;
use crate::state::{read_versioned, write_atomic};
use crate::stats::Stats;
use anyhow::Context as _;
use arc_swap::ArcSwap;
use futures::stream::{FuturesUnordered, StreamExt};
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// The per-alert rules a reload can replace.
#[derive(Debug, Clone)]
pub struct Rules {
    pub filter: AlertFilter,
    pub extractor: Extractor,
    pub match_types: MatchTypes,
}

impl Rules {
    pub fn from_config(cfg: &Config) -> anyhow::Result<Self> {
        Ok(Rules {
            filter: AlertFilter {
                min_level: cfg.filter.min_level,
                exclude_rule_ids: cfg.filter.exclude_rule_ids.clone(),
            },
            extractor: Extractor::new(
                &cfg.filter.skip_fields,
                &cfg.filter.scan_fields,
                cfg.filter.exclude_nets()?,
            ),
            match_types: cfg.misp.match_types,
        })
    }
}

/// A line whose IPs are not all cached: what [`Engine::begin`] found, for
/// [`Engine::finish`] to complete once MISP has answered.
pub struct Waiting {
    /// The line, parsed again once MISP has answered: its tree borrows from
    /// the batch's buffer, and a copy of one line is smaller to hold than
    /// the tree. Only lines whose IPs were not cached pay the second parse.
    line: Box<str>,
    rules: Arc<Rules>,
    claimed: Vec<(IpHit, dedup::Key)>,
    /// Per claimed hit, the cached answer if there was one.
    found: Vec<Option<Hits>>,
}

/// Stages 2–6 for alert lines. Shared by the daemon's workers and the
/// `enrich` and `integratord` commands.
///
/// [`Engine::begin`] is synchronous and does everything when every IP is
/// cached (the common case on a busy manager); only lines that must wait
/// on MISP go on to the async [`Engine::finish`].
pub struct Engine {
    pub rules: ArcSwap<Rules>,
    pub lookup: Lookup,
    pub dedup: Option<Dedup>,
    pub stats: Arc<Stats>,
    skips: RateLimitedLog,
}

/// An agent's (id, name, ip) and its datagram header.
type RememberedHeader = (String, String, Option<String>, Rc<str>);

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
    static PARSER: RefCell<alert::Parser> = RefCell::new(alert::Parser::default());
    static CLOCK: RefCell<(i64, Rc<str>)> = RefCell::new((i64::MIN, Rc::from("")));
    /// The last agent's (id, name, ip) and its header; see [`header_for`].
    static HEADER: RefCell<Option<RememberedHeader>> =
        const { RefCell::new(None) };
}

/// Now, and now in Wazuh's format. Formatting a time is slow next to the
/// rest of an event, and at thousands of events per millisecond the text
/// only changes once a millisecond.
fn clock() -> (chrono::DateTime<chrono::Utc>, Rc<str>) {
    let now = chrono::Utc::now();
    let ms = now.timestamp_millis();
    let text = CLOCK.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != ms {
            *c = (ms, Rc::from(enrich::wazuh_time(now)));
        }
        c.1.clone()
    });
    (now, text)
}

/// The datagram header for `agent`, remembered for the last agent seen:
/// consecutive alerts mostly come from one agent (a burst is one host's),
/// and building the header is a format and an escape pass.
fn header_for(agent: &enrich::AgentContext<'_>) -> Rc<str> {
    HEADER.with(|h| {
        let mut h = h.borrow_mut();
        match &*h {
            Some((id, name, ip, header))
                if id == &agent.id
                    && name == &agent.name
                    && ip.as_deref() == agent.ip.as_deref() =>
            {
                header.clone()
            }
            _ => {
                let header: Rc<str> = Rc::from(output::header(agent));
                *h = Some((
                    agent.id.to_string(),
                    agent.name.to_string(),
                    agent.ip.as_deref().map(str::to_owned),
                    header.clone(),
                ));
                header
            }
        }
    })
}

impl Engine {
    pub fn new(rules: Rules, lookup: Lookup, dedup: Option<Dedup>, stats: Arc<Stats>) -> Self {
        Engine {
            rules: ArcSwap::from_pointee(rules),
            lookup,
            dedup,
            stats,
            skips: RateLimitedLog::new(Duration::from_secs(60), 20),
        }
    }

    fn skip_line(&self, reason: &'static str, offset: Option<u64>, detail: &dyn std::fmt::Display) {
        self.stats.skip(reason);
        self.skips.log(reason, |suppressed| {
            tracing::warn!(reason, offset, detail = %detail, suppressed, "skipped alert line");
        });
    }

    /// Parses, filters, extracts and dedups one line, then enriches it into
    /// `out` if MISP's answer for every IP is cached. Returns what is left
    /// to do when some answer is not.
    pub fn begin(
        &self,
        line: &str,
        offset: Option<u64>,
        recent: &mut Recent,
        out: &mut Outgoing,
    ) -> Option<Waiting> {
        let begin = |line: &str, recent: &mut Recent, out: &mut Outgoing| {
            PARSER.with(|p| {
                p.borrow_mut().with(line, |alert| {
                    self.begin_parsed(line, alert, offset, recent, out)
                })
            })
        };
        let error = match begin(line, recent, out) {
            Ok(waiting) => return waiting,
            Err(e) => e,
        };
        // A lone surrogate escape costs one character, not the alert.
        if let Some(repaired) = alert::repair_lone_surrogates(line) {
            if let Ok(waiting) = begin(&repaired, recent, out) {
                self.stats.lines_repaired.fetch_add(1, Ordering::Relaxed);
                return waiting;
            }
        }
        self.skip_line("invalid_json", offset, &error);
        None
    }

    fn begin_parsed(
        &self,
        line: &str,
        alert: Node<'_>,
        offset: Option<u64>,
        recent: &mut Recent,
        out: &mut Outgoing,
    ) -> Option<Waiting> {
        let rules = self.rules.load();
        let fields = Fields::of(alert);
        if let Err(reason) = rules.filter.check(&fields) {
            self.stats.skip(reason.as_str());
            tracing::trace!(
                reason = reason.as_str(),
                offset,
                alert_id = %alert::text(fields.id),
                "alert filtered out"
            );
            return None;
        }
        self.stats.alerts_processed.fetch_add(1, Ordering::Relaxed);
        let mut hits: Vec<IpHit> = Vec::new();
        SCRATCH.with(|s| {
            rules
                .extractor
                .extract(alert, &mut s.borrow_mut(), &mut hits)
        });
        if hits.is_empty() {
            return None;
        }
        self.stats
            .ips_extracted
            .fetch_add(hits.len() as u64, Ordering::Relaxed);
        let rule_id = filter::rule_id(&fields).unwrap_or_default();
        let mut claimed: Vec<(IpHit, dedup::Key)> = Vec::with_capacity(hits.len());
        for hit in hits {
            let key = dedup::Key::new(&rule_id, hit.ip_text().as_str(), hit.direction.as_str());
            match &self.dedup {
                Some(d) if !d.try_claim(key) => {
                    self.stats.dedup_hits.fetch_add(1, Ordering::Relaxed);
                }
                _ => claimed.push((hit, key)),
            }
        }
        if claimed.is_empty() {
            return None;
        }
        let found: Vec<Option<Hits>> = claimed
            .iter()
            .map(|(h, _)| self.lookup.cached_recent(h.ip, recent))
            .collect();
        if found.iter().all(Option::is_some) {
            let answers = found.into_iter().flatten().collect();
            self.produce(&rules, &fields, claimed, answers, out);
            return None;
        }
        Some(Waiting {
            line: line.into(),
            rules: arc_swap::Guard::into_inner(rules),
            claimed,
            found,
        })
    }

    /// Asks MISP what the cache did not know, then enriches into `out`.
    /// `Err(Abandoned)` only when shutting down mid-lookup: the line is then
    /// not done and will be read again after the restart.
    pub async fn finish(&self, w: Waiting, out: &mut Outgoing) -> Result<(), Abandoned> {
        let looked_up = futures::future::join_all(w.claimed.iter().zip(&w.found).map(
            |((hit, _), found)| async move {
                match found {
                    Some(hits) => Ok(hits.clone()),
                    None => self.lookup.get(hit.ip).await,
                }
            },
        ))
        .await;
        if looked_up
            .iter()
            .any(|r| matches!(r, Err(LookupError::Abandoned(_))))
        {
            self.release(w.claimed.iter().map(|(_, k)| *k));
            return Err(Abandoned);
        }
        let Waiting {
            line,
            rules,
            claimed: all_claimed,
            ..
        } = w;
        // A value MISP kept failing on alone is let go: no event for it,
        // the rest of the alert goes on.
        let mut claimed = Vec::with_capacity(all_claimed.len());
        let mut answers = Vec::with_capacity(all_claimed.len());
        for (claim, result) in all_claimed.into_iter().zip(looked_up) {
            match result {
                Ok(hits) => {
                    claimed.push(claim);
                    answers.push(hits);
                }
                Err(_) => self.release([claim.1]),
            }
        }
        // Taken by `produce` only if the line parses.
        let mut claimed = Some(claimed);
        let produced = PARSER.with(|p| {
            p.borrow_mut().with(&line, |alert| {
                let claimed = claimed.take().unwrap_or_default();
                self.produce(&rules, &Fields::of(alert), claimed, answers, out)
            })
        });
        if let (Err(_), Some(claimed)) = (produced, claimed) {
            // It parsed in `begin`; parsing is deterministic. Should that
            // ever change, the claims must not stay pending.
            self.release(claimed.into_iter().map(|(_, k)| k));
        }
        Ok(())
    }

    /// [`Engine::begin`] and [`Engine::finish`] in one: everything one line
    /// produced.
    pub async fn process(&self, bytes: &[u8], offset: Option<u64>) -> Result<Outgoing, Abandoned> {
        let mut out = Outgoing::default();
        let line = String::from_utf8_lossy(bytes);
        if matches!(line, std::borrow::Cow::Owned(_)) {
            self.stats.lines_repaired.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(waiting) = self.begin(&line, offset, &mut Recent::default(), &mut out) {
            self.finish(waiting, &mut out).await?;
        }
        Ok(out)
    }

    /// Stage 6 and framing: one event per claimed IP that MISP knows,
    /// appended to `out` with its dedup key. Claims that produce nothing
    /// are released.
    fn produce(
        &self,
        rules: &Rules,
        fields: &Fields<'_>,
        claimed: Vec<(IpHit, dedup::Key)>,
        answers: Vec<Hits>,
        out: &mut Outgoing,
    ) {
        let ctx = AlertContext::from_fields(fields);
        let header = header_for(&ctx.agent);
        // The agent's name and ip are in the header; a name of ~64 KiB
        // (possible through `enrich` and integratord input) leaves no room.
        let Some(limit) = output::MAX_DATAGRAM.checked_sub(header.len()) else {
            tracing::error!(
                alert_id = %ctx.alert_id,
                header_bytes = header.len(),
                "the agent's name and ip leave no room for an event in one datagram; not sent"
            );
            self.release(claimed.into_iter().map(|(_, k)| k));
            return;
        };
        let (now, timestamp) = clock();
        for ((hit, key), hits) in claimed.into_iter().zip(answers) {
            // Fast path: every match kept, so the MISP part is the cached one.
            if rules.match_types == MatchTypes::All {
                let Some(prepared) = hits.prepared() else {
                    self.release([key]);
                    continue;
                };
                let spliced = out.datagrams.push_with(&header, |buf| {
                    enrich::write_spliced(&ctx, &hit, prepared, &timestamp, limit, buf)
                });
                if spliced {
                    log_enriched(&ctx, &hit);
                    out.dedup_keys.push(key);
                    continue;
                }
            }
            let selected = lookup::select(&hits, rules.match_types, hit.direction);
            let Some(mut ev) = enrich::enrich(&ctx, &hit, &selected, now) else {
                self.release([key]);
                continue;
            };
            ev.misp_data.summary.truncated |= hits.truncated;
            match enrich::serialize_within(&mut ev, limit) {
                Some(payload) if out.datagrams.push(&header, &payload) => {
                    log_enriched(&ctx, &hit);
                    let summary = &ev.misp_data.summary;
                    if summary.truncated {
                        tracing::info!(
                            ip = %hit.ip,
                            omitted = summary.omitted_attributes,
                            omitted_fields = ?summary.omitted_fields,
                            "event shrunk to fit one datagram"
                        );
                    }
                    out.dedup_keys.push(key);
                }
                _ => {
                    tracing::error!(ip = %hit.ip, "enriched event cannot fit one datagram even with one attribute; not sent");
                    self.release([key]);
                }
            }
        }
    }

    fn release(&self, keys: impl IntoIterator<Item = dedup::Key>) {
        if let Some(d) = &self.dedup {
            for k in keys {
                d.release(k);
            }
        }
    }
}

/// One debug line per event, with the fields journald users filter on.
fn log_enriched(ctx: &AlertContext<'_>, hit: &IpHit) {
    tracing::debug!(
        alert_id = %ctx.alert_id,
        rule_id = %ctx.rule.id,
        ip = %hit.ip,
        direction = hit.direction.as_str(),
        field_path = %hit.field_path,
        "enriched"
    );
}

/// Takes batches of lines and runs them through the engine. Lines whose IPs
/// are all cached are finished on the spot and their events go to the
/// writer as one message per batch; lines that wait on MISP run
/// concurrently (up to `max_waiting`), so the batcher can fill its
/// requests while CPU work stays on few threads.
async fn worker(
    engine: Arc<Engine>,
    batches: async_channel::Receiver<Batch>,
    out: mpsc::Sender<Outgoing>,
    max_waiting: usize,
) {
    let finish = |waiting: Waiting, ack: Ack| {
        let engine = engine.clone();
        let out = out.clone();
        async move {
            let mut produced = Outgoing::default();
            if engine.finish(waiting, &mut produced).await.is_ok() {
                send(&out, produced, ack).await;
            }
            // Abandoned: the ack is dropped unfinished, so the line is
            // read again after the restart.
        }
    };
    let mut waiting = FuturesUnordered::new();
    let mut recent = Recent::default();
    let mut out_per_line = 0;
    let mut open = true;
    while open || !waiting.is_empty() {
        tokio::select! {
            next = batches.recv(), if open && waiting.len() < max_waiting => match next {
                Ok(batch) => {
                    let mut ready = Outgoing::default();
                    // Sized from the last batches, so the buffer is not
                    // regrown (and copied) several times per batch.
                    ready.datagrams.reserve((out_per_line * batch.len()).min(1 << 20));
                    for (offset, line) in batch.lines() {
                        if let Some(w) = engine.begin(line, Some(offset), &mut recent, &mut ready) {
                            waiting.push(finish(w, batch.ack.share()));
                        }
                    }
                    let per_line = ready.datagrams.bytes_len() / batch.len().max(1);
                    out_per_line = (out_per_line * 3 + per_line) / 4;
                    send(&out, ready, batch.ack).await;
                }
                Err(_) => open = false,
            },
            Some(()) = waiting.next(), if !waiting.is_empty() => {}
        }
    }
}

/// Hands events to the writer, which finishes `ack` once they are sent;
/// with no events the part is done at once.
async fn send(out: &mpsc::Sender<Outgoing>, mut produced: Outgoing, ack: Ack) {
    if produced.datagrams.is_empty() {
        ack.finish();
        return;
    }
    produced.ack = Some(ack);
    // Fails only when the writer is gone at shutdown; the ack is then
    // dropped unfinished and the lines are replayed on restart.
    let _ = out.send(produced).await;
}

/// A running daemon.
pub struct Daemon {
    pub stats: Arc<Stats>,
    pub engine: Arc<Engine>,
    pub checkpoints: Arc<Checkpointer>,
    cfg: Config,
    stop: Arc<AtomicBool>,
    waker: Waker,
    tail_done: oneshot::Receiver<()>,
    workers: Vec<JoinHandle<()>>,
    writer_done: oneshot::Receiver<()>,
    abandon: Arc<AtomicBool>,
    saver: JoinHandle<()>,
    reporter: JoinHandle<()>,
    publisher: JoinHandle<()>,
}

const DEDUP_FILE: &str = "dedup.json";

#[derive(serde::Serialize, serde::Deserialize)]
struct DedupState {
    /// `[key, expiry in Unix milliseconds]`.
    entries: Vec<(String, u64)>,
}

/// `dedup.json` on disk: `{"version": "1", "entries": [..]}`.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(tag = "version")]
enum DedupFile {
    #[serde(rename = "1")]
    V1(DedupState),
}

/// Loads `state_dir/dedup.json` into `d` (expired entries dropped).
pub fn load_dedup(state_dir: &Path, d: &Dedup) -> usize {
    read_versioned(&state_dir.join(DEDUP_FILE), DedupFile::V1)
        .found()
        .map_or(0, |DedupFile::V1(saved)| d.restore(saved.entries))
}

pub fn save_dedup(state_dir: &Path, d: &Dedup) {
    let state = DedupFile::V1(DedupState {
        entries: d.snapshot(),
    });
    let bytes = serde_json::to_vec(&state).expect("dedup state serialises");
    if let Err(e) = write_atomic(&state_dir.join(DEDUP_FILE), &bytes) {
        tracing::error!(error = %e, "cannot save dedup state");
    }
}

/// Checks that `state_dir` exists (creating it) and is writable.
pub fn prepare_state_dir(dir: &Path) -> Result<(), crate::config::ConfigError> {
    let err = |reason: String| crate::config::ConfigError::key("input.state_dir", reason);
    std::fs::create_dir_all(dir)
        .map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
    let probe = dir.join(".write-test");
    std::fs::write(&probe, b"")
        .map_err(|e| err(format!("{} is not writable: {e}", dir.display())))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

impl Daemon {
    /// Starts every task. `client` is built by the caller so that errors in
    /// the MISP settings surface before anything runs.
    pub fn start(cfg: Config, client: MispClient) -> anyhow::Result<Daemon> {
        let state_dir = cfg.input.state_dir.clone();
        prepare_state_dir(&state_dir)?;
        let stats = Arc::new(Stats::default());
        let checkpoints = Arc::new(Checkpointer::new());
        let dedup = Dedup::new(
            Duration::from_secs(cfg.dedup.window_secs),
            cfg.dedup.max_entries,
        );
        let restored = load_dedup(&state_dir, &dedup);
        tracing::info!(entries = restored, "restored dedup window");
        let lookup = Lookup::start(client, &cfg.misp, stats.clone());
        let engine = Arc::new(Engine::new(
            Rules::from_config(&cfg)?,
            lookup,
            Some(dedup.clone()),
            stats.clone(),
        ));

        let capacity = cfg.pipeline.channel_capacity;
        let workers_n = cfg.pipeline.worker_count();
        // Both channels carry batches of up to BATCH_LINES lines' worth;
        // each gets half of `channel_capacity`, so together they hold about
        // that many lines (what a crash can make us read again).
        let batches = (capacity / 2).div_ceil(BATCH_LINES).max(1);
        let (line_tx, line_rx) = async_channel::bounded(batches);
        let (out_tx, out_rx) = mpsc::channel(batches);

        let abandon = Arc::new(AtomicBool::new(false));
        let writer = Writer::new(
            cfg.output.queue_socket.clone(),
            stats.clone(),
            Some(dedup.clone()),
            abandon.clone(),
        );
        let (writer_done_tx, writer_done) = oneshot::channel();
        std::thread::Builder::new()
            .name("writer".into())
            .spawn(move || {
                writer.run(out_rx);
                let _ = writer_done_tx.send(());
            })
            .context("cannot start the writer thread")?;
        let max_waiting = (capacity / workers_n).max(16);
        let reporter = tokio::spawn(report_errors(
            engine.lookup.clone(),
            out_tx.clone(),
            Duration::from_secs(cfg.output.error_event_after_secs),
            Duration::from_secs(cfg.output.error_event_interval_secs),
        ));
        let workers = (0..workers_n)
            .map(|_| {
                tokio::spawn(worker(
                    engine.clone(),
                    line_rx.clone(),
                    out_tx.clone(),
                    max_waiting,
                ))
            })
            .collect();
        drop(out_tx);

        let start = bookmark::resolve_start(
            &cfg.input.alerts_file,
            &bookmark::load(&state_dir),
            cfg.input.start_position,
        );
        let stop = Arc::new(AtomicBool::new(false));
        let (waker, wake_rx) = tail::waker();
        let tailer = Tailer::new(
            TailOptions {
                path: cfg.input.alerts_file.clone(),
                start,
                max_line_bytes: cfg.input.max_line_bytes,
                poll: Duration::from_secs(1),
            },
            line_tx,
            checkpoints.clone(),
            stats.clone(),
            stop.clone(),
        );
        let (tail_done_tx, tail_done) = oneshot::channel();
        let thread_waker = waker.clone();
        std::thread::Builder::new()
            .name("tailer".into())
            .spawn(move || {
                tailer.run(thread_waker, wake_rx);
                let _ = tail_done_tx.send(());
            })
            .context("cannot start the tailer thread")?;

        let publisher = tokio::spawn(crate::metrics::publish(crate::metrics::Sources {
            stats: stats.clone(),
            checkpoints: checkpoints.clone(),
            alerts_file: cfg.input.alerts_file.clone(),
            line_queue: line_rx.clone(),
            dedup: dedup.clone(),
        }));
        let saver = tokio::spawn(save_periodically(
            state_dir,
            checkpoints.clone(),
            dedup,
            Duration::from_secs(cfg.dedup.persist_secs.max(1)),
        ));
        Ok(Daemon {
            stats,
            engine,
            checkpoints,
            cfg,
            stop,
            waker,
            tail_done,
            workers,
            writer_done,
            abandon,
            saver,
            reporter,
            publisher,
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Stops reading, lets in-flight work reach the socket for at most
    /// `grace`, then saves the bookmark and dedup state. Work that did not
    /// finish is not bookmarked, so it is read again on the next start.
    pub async fn shutdown(self, grace: Duration) {
        self.stop.store(true, Ordering::Relaxed);
        self.waker.wake();
        // It holds a sender to the writer; the writer ends when all are gone.
        self.reporter.abort();
        // It holds a receiver of the line channel.
        self.publisher.abort();
        let Daemon {
            stats,
            engine,
            checkpoints,
            cfg,
            tail_done,
            workers,
            writer_done,
            abandon,
            saver,
            ..
        } = self;
        let drain = async {
            let _ = tail_done.await;
            for w in workers {
                let _ = w.await;
            }
        };
        let finished = tokio::time::timeout(grace, async {
            drain.await;
            // The writer ends once every worker (the last sender) is gone.
            let _ = writer_done.await;
        })
        .await
        .is_ok();
        if !finished {
            abandon.store(true, Ordering::Relaxed);
            tracing::warn!(
                in_flight_batches = checkpoints.in_flight(),
                "shutdown grace period over; unfinished alerts will be read again at the next start"
            );
        }
        saver.abort();
        let state_dir = &cfg.input.state_dir;
        if let Some(b) = checkpoints.committed() {
            if let Err(e) = bookmark::save(state_dir, &b) {
                tracing::error!(error = %e, "cannot save bookmark at shutdown");
            }
        }
        if let Some(d) = &engine.dedup {
            save_dedup(state_dir, d);
        }
        tracing::info!(stats = %stats.summary(), "stopped");
    }

    /// Applies a new config to a running daemon: filters, MISP settings,
    /// dedup window. Returns the keys that changed.
    pub fn reload(&mut self, new: Config, client: MispClient) -> anyhow::Result<Vec<String>> {
        let rules = Rules::from_config(&new)?;
        let changed = self.cfg.changed_keys(&new);
        for k in &changed {
            if crate::config::RESTART_KEYS.contains(&k.as_str()) {
                tracing::warn!(key = %k, "changed, but only takes effect after a restart");
            } else {
                tracing::info!(key = %k, "changed");
            }
        }
        self.engine.rules.store(Arc::new(rules));
        self.engine.lookup.reconfigure(client, &new.misp);
        if let Some(d) = &self.engine.dedup {
            d.set_window(Duration::from_secs(new.dedup.window_secs));
        }
        // Keep the restart-only keys as they run, so a later reload compares
        // against what is actually in force.
        let mut applied = new;
        applied.input = self.cfg.input.clone();
        applied.output = self.cfg.output.clone();
        applied.pipeline = self.cfg.pipeline.clone();
        self.cfg = applied;
        Ok(changed)
    }
}

/// Tells Wazuh when MISP has been failing for `after`, at most once per
/// `every`: the SOC then sees the integration's own trouble as an alert.
async fn report_errors(
    lookup: Lookup,
    out: mpsc::Sender<Outgoing>,
    after: Duration,
    every: Duration,
) {
    let mut last_sent: Option<std::time::Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        for failed in lookup.take_given_up() {
            let payload =
                enrich::lookup_failed_event(&failed.value, &failed.message, chrono::Utc::now());
            let mut msg = Outgoing::default();
            if msg.datagrams.push(output::MANAGER_HEADER, &payload) && out.send(msg).await.is_err()
            {
                return;
            }
        }
        let Some((since, error)) = lookup.breaker().failing() else {
            continue;
        };
        let failing_for = since.elapsed().unwrap_or_default();
        if failing_for < after || last_sent.is_some_and(|t| t.elapsed() < every) {
            continue;
        }
        let payload = enrich::error_event(error.kind, &error.message, since.into());
        let mut msg = Outgoing::default();
        if !msg.datagrams.push(output::MANAGER_HEADER, &payload) {
            continue;
        }
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

/// How often the bookmark is saved when it moved. After a `kill -9`, what
/// was sent in the last interval is sent again; 200 ms keeps that small for
/// five fsyncs a second.
const BOOKMARK_EVERY: Duration = Duration::from_millis(200);

async fn save_periodically(
    state_dir: PathBuf,
    checkpoints: Arc<Checkpointer>,
    dedup: Dedup,
    dedup_every: Duration,
) {
    let mut last = None;
    let mut tick = tokio::time::interval(BOOKMARK_EVERY);
    let mut since_dedup = Duration::ZERO;
    loop {
        tick.tick().await;
        let current = checkpoints.committed();
        since_dedup += BOOKMARK_EVERY;
        let save_dedup_now = since_dedup >= dedup_every;
        if save_dedup_now {
            since_dedup = Duration::ZERO;
        }
        let bookmark = current.clone().filter(|_| current != last);
        if bookmark.is_none() && !save_dedup_now {
            continue;
        }
        // fsync (and a million-entry dedup table) would stall a runtime
        // thread and every alert queued behind it.
        let (dir, dedup) = (state_dir.clone(), dedup.clone());
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(b) = bookmark {
                if let Err(e) = bookmark::save(&dir, &b) {
                    tracing::error!(error = %e, "cannot save bookmark");
                }
            }
            if save_dedup_now {
                save_dedup(&dir, &dedup);
            }
        })
        .await;
        if current.is_some() {
            last = current;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use enrich::AgentContext;

    #[test]
    fn the_remembered_header_follows_the_agent() {
        let agent = |id: &'static str, ip: Option<&'static str>| AgentContext {
            id: id.into(),
            name: "web-01".into(),
            ip: ip.map(Into::into),
        };
        let with_ip = agent("001", Some("10.0.1.50"));
        let without_ip = agent("001", None);
        let manager = agent("", None);
        let other = agent("002", Some("10.0.1.50"));
        for a in [
            &with_ip,
            &without_ip,
            &with_ip,
            &manager,
            &other,
            &without_ip,
        ] {
            assert_eq!(*header_for(a), output::header(a));
        }
        assert_ne!(output::header(&with_ip), output::header(&without_ip));
    }
}
