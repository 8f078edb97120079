//! The running daemon: starts every component under one [`Supervisor`],
//! applies reloads, and shuts down in order.

use super::engine::{Engine, Rules};
use super::feedback;
use super::supervisor::{Death, Supervisor};
use super::tasks::{self, ReportSettings};
use super::worker;
use crate::config::{Applies, Change, Config};
use crate::dedup::Dedup;
use crate::input::spaces::{self, Stream};
use crate::input::tail::{self, Waker, BATCH_LINES};
use crate::input::{bookmark, Checkpointer, TailOptions, Tailer};
use crate::ledger::store::LedgerStore;
use crate::ledger::Ledger;
use crate::lookup::mirror::sync::HuntTrigger;
use crate::lookup::mirror::{self, sync::Syncer, Mirror};
use crate::lookup::{Lookup, MispClient, Source, PROBE_INTERVAL};
use crate::output::{HttpWriter, Writer};
use crate::sightings::Sightings;
use crate::state::{read_versioned, write_atomic};
use crate::stats::Stats;
use anyhow::Context as _;
use futures::FutureExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

const DEDUP_FILE: &str = "dedup.json";

/// Values the ledger holds in memory between flushes: about 730 bytes
/// each with one reference (12 MB full; more with three), and a flush is
/// woken at half of it, so a burst of new values is written in steps the
/// ledger thread keeps up with (about 50 000 values a second).
const LEDGER_PENDING: usize = 16_384;

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
    // An unnamed temp file (O_EXCL, removed at once): no path in the
    // directory is opened, so a planted symlink cannot be followed.
    tempfile::tempfile_in(dir)
        .map(drop)
        .map_err(|e| err(format!("{} is not writable: {e}", dir.display())))
}

/// The intelligence `misp.mode` asks for, with its tasks (each server's
/// batcher, and in mirror mode its sync) running under `supervisor`.
/// `client` is the first server's.
fn start_intelligence(
    cfg: &Config,
    client: MispClient,
    stats: &Arc<Stats>,
    supervisor: &Supervisor,
    hunts: Option<HuntTrigger>,
) -> anyhow::Result<Source> {
    let lookup_for = |client: MispClient, misp: &crate::config::MispConfig| {
        let (lookup, batcher) = Lookup::new(
            client,
            misp,
            stats.clone(),
            PROBE_INTERVAL,
            supervisor.shutdown_token(),
        );
        supervisor.spawn("batcher", async move {
            batcher.await;
            Ok(())
        });
        lookup
    };
    if *cfg.misp.mode == crate::config::MispMode::Query {
        return Ok(Source::Query(lookup_for(client, &cfg.misp)));
    }
    stats
        .mirror_mode
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let store = Arc::new(std::sync::Mutex::new(
        mirror::store::Store::open(&cfg.input.state_dir)
            .context("cannot open the mirror store in input.state_dir")?,
    ));
    let mut servers = Vec::new();
    let mut first = Some(client);
    for server in cfg.servers() {
        let client = match first.take() {
            Some(c) => c,
            None => MispClient::new(&server.misp, &server.api_key()?)
                .with_context(|| format!("{} ({})", server.table, server.name))?,
        };
        let lookup = lookup_for(client, &server.misp);
        servers.push((server.name, server.misp, lookup, store.clone()));
    }
    let settings: Vec<_> = servers
        .iter()
        .map(|(_, m, _, _)| mirror::sync::SyncSettings::from_config(m))
        .collect();
    let mirror = Mirror::new(&cfg.misp, servers);
    for (server, settings) in mirror.servers().iter().zip(settings) {
        let syncer = Syncer {
            mirror: mirror.clone(),
            server: server.clone(),
            settings,
            stats: stats.clone(),
            hunts: hunts.clone(),
        };
        let stop = supervisor.shutdown_token();
        supervisor.spawn("mirror sync", async move {
            syncer.run(stop).await;
            Ok(())
        });
    }
    Ok(Source::Mirror(mirror))
}

/// A running daemon.
pub struct Daemon {
    pub stats: Arc<Stats>,
    pub engine: Arc<Engine<Source>>,
    pub checkpoints: Arc<Checkpointer>,
    /// The config the daemon started with: its restart-only keys are the
    /// ones in force.
    started: Config,
    /// The config last applied: its live keys are the ones in force.
    current: Config,
    report: Arc<ReportSettings>,
    supervisor: Supervisor,
    deaths: mpsc::UnboundedReceiver<Death>,
    stop_reading: Arc<AtomicBool>,
    /// One per tailer.
    wakers: Vec<Waker>,
    /// Each followed stream's bookmark name and checkpointer (the first is
    /// `input.alerts_file`'s, [`Daemon::checkpoints`]).
    followed: Vec<(String, Arc<Checkpointer>)>,
    abandon: Arc<AtomicBool>,
    saver: tokio::task::JoinHandle<()>,
}

impl Daemon {
    /// Starts every component. `client` is built by the caller so that
    /// errors in the MISP settings surface before anything runs.
    pub fn start(cfg: Config, client: MispClient) -> anyhow::Result<Daemon> {
        let state_dir = cfg.input.state_dir.to_path_buf();
        prepare_state_dir(&state_dir)?;
        let (supervisor, deaths) = Supervisor::new();
        let stats = Arc::new(Stats::default());
        let checkpoints = Arc::new(Checkpointer::new());
        let dedup = Dedup::new(
            Duration::from_secs(cfg.dedup.window_secs),
            *cfg.dedup.max_entries,
        );
        let restored = load_dedup(&state_dir, &dedup);
        tracing::info!(entries = restored, "restored dedup window");
        let mirror_mode = *cfg.misp.mode == crate::config::MispMode::Mirror;
        let ledger_store = if mirror_mode && *cfg.retro.enabled {
            match LedgerStore::open(&state_dir) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::error!(error = %e, "cannot open the retro ledger; retro-hunting is off until it can be opened");
                    None
                }
            }
        } else {
            None
        };
        let wake_hunter = Arc::new(tokio::sync::Notify::new());
        let hunts = ledger_store.as_ref().map(|_| HuntTrigger {
            wake: wake_hunter.clone(),
            window_secs: (*cfg.retro.window_days * 86400) as i64,
            on_first_sync: *cfg.retro.on_first_sync,
        });
        let source = start_intelligence(&cfg, client, &stats, &supervisor, hunts)?;
        let mut engine = Engine::new(
            Rules::from_config(&cfg)?,
            source,
            Some(dedup.clone()),
            stats.clone(),
        );
        let sightings = (*cfg.misp.sightings).then(|| {
            let s = Arc::new(Sightings::new(
                *cfg.misp.sighting_interval_secs,
                *cfg.misp.sightings_queue_max,
                &cfg.misp.sighting_source,
                stats.clone(),
            ));
            let pending = feedback::load_sightings(&state_dir, &s);
            tracing::info!(pending, "sightings to MISP are on");
            s
        });
        let ledger = ledger_store.as_ref().map(|_| {
            Arc::new(Ledger::new(
                *cfg.retro.refs_per_value,
                LEDGER_PENDING,
                stats.clone(),
            ))
        });
        engine.feedback = feedback::Feedback {
            ledger: ledger.clone(),
            sightings: sightings.clone(),
        };
        tasks::reload_false_positives(&engine, &state_dir);
        let engine = Arc::new(engine);

        let capacity = *cfg.pipeline.channel_capacity;
        let workers_n = cfg.pipeline.worker_count();
        // Both channels carry batches of up to BATCH_LINES lines' worth;
        // each gets half of `channel_capacity`, so together they hold about
        // that many lines (what a crash can make us read again).
        let batches = (capacity / 2).div_ceil(BATCH_LINES).max(1);
        let (line_tx, line_rx) = async_channel::bounded(batches);
        let (out_tx, out_rx) = mpsc::channel(batches);

        let abandon = Arc::new(AtomicBool::new(false));
        let socket = cfg.output.queue_socket.to_path_buf();
        let line = cfg.wazuh_line();
        tracing::info!(wazuh = line.as_str(), socket = %socket.display(), "writing to Wazuh");
        let started = match line {
            crate::config::WazuhLine::V4 => {
                let writer =
                    Writer::new(socket, stats.clone(), Some(dedup.clone()), abandon.clone());
                supervisor.spawn_thread("writer", move || {
                    writer.run(out_rx);
                    Ok(())
                })
            }
            crate::config::WazuhLine::V5 => {
                let writer =
                    HttpWriter::new(socket, stats.clone(), Some(dedup.clone()), abandon.clone());
                supervisor.spawn_thread("writer", move || {
                    writer.run(out_rx);
                    Ok(())
                })
            }
        };
        started.context("cannot start the writer thread")?;
        let stop = supervisor.shutdown_token();
        let report = Arc::new(ReportSettings::new(
            cfg.output.error_event_after_secs,
            cfg.output.error_event_interval_secs,
        ));
        supervisor.spawn(
            "error reporter",
            tasks::report_errors(
                engine.lookup.clone(),
                out_tx.clone(),
                report.clone(),
                stop.clone(),
            )
            .map(Ok),
        );
        let max_waiting = (capacity / workers_n).max(16);
        for _ in 0..workers_n {
            let run = worker::run(engine.clone(), line_rx.clone(), out_tx.clone(), max_waiting);
            supervisor.spawn("worker", async move {
                run.await
                    .map_err(|_| "the writer is gone, so nothing can be sent".to_owned())
            });
        }
        if let (Some(store), Some(ledger)) = (ledger_store, ledger.clone()) {
            let (settings, thread_stats, thread_stop) = (
                feedback::LedgerSettings::from_config(&cfg),
                stats.clone(),
                supervisor.shutdown_token(),
            );
            supervisor
                .spawn_thread("ledger", move || {
                    feedback::write_ledger(ledger, store, settings, thread_stats, thread_stop);
                    Ok(())
                })
                .context("cannot start the ledger thread")?;
            supervisor.spawn(
                "retro hunter",
                feedback::hunt(
                    wake_hunter,
                    engine.clone(),
                    out_tx.clone(),
                    feedback::HuntSettings {
                        state_dir: state_dir.clone(),
                        max_events: *cfg.retro.max_events_per_sync,
                        subdomains: *cfg.misp.match_subdomains,
                        window_secs: (*cfg.retro.window_days * 86400) as i64,
                    },
                    stop.clone(),
                )
                .map(Ok),
            );
        }
        if let Some(s) = &sightings {
            supervisor.spawn(
                "sightings sender",
                feedback::send_sightings(
                    s.clone(),
                    feedback::SightingTargets::of(&engine.lookup, &cfg.misp.name),
                    *cfg.misp.sightings_per_minute,
                    Duration::from_secs(*cfg.misp.sightings_pause_secs),
                    stats.clone(),
                    stop.clone(),
                )
                .map(Ok),
            );
        }
        supervisor.spawn(
            "false positives",
            tasks::watch_false_positives(engine.clone(), state_dir.clone(), stop.clone()).map(Ok),
        );
        drop(out_tx);
        drop(line_rx);

        // One tailer per stream: input.alerts_file, and on Wazuh 5 the
        // other spaces' channels beside it, each with its own bookmark.
        let mut streams = vec![Stream {
            path: cfg.input.alerts_file.to_path_buf(),
            bookmark: String::new(),
        }];
        if cfg.wazuh_line() == crate::config::WazuhLine::V5 && *cfg.input.follow_spaces {
            streams.extend(spaces::other_channels(&cfg.input.alerts_file));
        }
        let stop_reading = Arc::new(AtomicBool::new(false));
        let mut followed = Vec::new();
        let mut wakers = Vec::new();
        for stream in streams {
            let stream_checkpoints = if stream.bookmark.is_empty() {
                checkpoints.clone()
            } else {
                Arc::new(Checkpointer::new())
            };
            let start = bookmark::resolve_start(
                &stream.path,
                &bookmark::load(&state_dir, &stream.bookmark),
                *cfg.input.start_position,
            );
            tracing::info!(path = %stream.path.display(), "following");
            let (waker, wake_rx) = tail::waker();
            let tailer = Tailer::new(
                TailOptions {
                    path: stream.path.clone(),
                    start,
                    max_line_bytes: *cfg.input.max_line_bytes,
                    poll: Duration::from_secs(1),
                },
                line_tx.clone(),
                stream_checkpoints.clone(),
                stats.clone(),
                stop_reading.clone(),
            );
            let thread_waker = waker.clone();
            supervisor
                .spawn_thread("tailer", move || {
                    tailer.run(thread_waker, wake_rx);
                    Ok(())
                })
                .context("cannot start the tailer thread")?;
            followed.push((stream.bookmark, stream_checkpoints));
            wakers.push(waker);
        }
        drop(line_tx);

        if !cfg.metrics.listen.is_empty() {
            let sources = crate::metrics::Sources {
                stats: stats.clone(),
                checkpoints: checkpoints.clone(),
                alerts_file: cfg.input.alerts_file.to_path_buf(),
                dedup: dedup.clone(),
            };
            supervisor.spawn(
                "metrics publisher",
                tasks::publish_metrics(sources, stop.clone()).map(Ok),
            );
        }
        let saver = supervisor.spawn_unabortable(
            "state saver",
            tasks::save_periodically(
                state_dir,
                followed.clone(),
                dedup,
                Duration::from_secs((*cfg.dedup.persist_secs).max(1)),
                sightings,
                stop,
            )
            .map(Ok),
        );
        Ok(Daemon {
            stats,
            engine,
            checkpoints,
            started: cfg.clone(),
            current: cfg,
            report,
            supervisor,
            deaths,
            stop_reading,
            wakers,
            followed,
            abandon,
            saver,
        })
    }

    /// The config last applied.
    pub fn config(&self) -> &Config {
        &self.current
    }

    /// Waits for a component to end or panic while the daemon runs. The
    /// caller then shuts down and exits non-zero.
    pub async fn died(&mut self) -> Death {
        match self.deaths.recv().await {
            Some(d) => d,
            // The supervisor is ours and lives as long as we do.
            None => std::future::pending().await,
        }
    }

    /// Stops reading, lets in-flight work reach the socket for at most
    /// `grace`, then saves the bookmark and dedup state. Work that did not
    /// finish is not bookmarked, so it is read again on the next start.
    pub async fn shutdown(self, grace: Duration) {
        let Daemon {
            stats,
            engine,
            checkpoints,
            started,
            supervisor,
            mut deaths,
            stop_reading,
            wakers,
            followed,
            abandon,
            saver,
            ..
        } = self;
        stop_reading.store(true, Ordering::Relaxed);
        for waker in &wakers {
            waker.wake();
        }
        // The reporter, publisher and saver stop; the tailer ends, so the
        // workers drain and end, and the writer ends with the last of them.
        supervisor.begin_shutdown();
        let finished = tokio::time::timeout(grace, supervisor.wait()).await.is_ok();
        if !finished {
            abandon.store(true, Ordering::Relaxed);
            supervisor.abort_tasks();
            tracing::warn!(
                in_flight_batches = checkpoints.in_flight(),
                "shutdown grace period over; unfinished alerts will be read again at the next start"
            );
        }
        // A periodic save still writing would race the final one. The
        // saver is never aborted in a save: it stops between saves.
        let _ = saver.await;
        let state_dir = &*started.input.state_dir;
        for (stream, checkpoints) in &followed {
            if let Some(b) = checkpoints.committed() {
                if let Err(e) = bookmark::save(state_dir, stream, &b) {
                    tracing::error!(error = %e, "cannot save bookmark at shutdown");
                }
            }
        }
        if let Some(d) = &engine.dedup {
            save_dedup(state_dir, d);
        }
        if let Some(s) = &engine.feedback.sightings {
            feedback::save_sightings(state_dir, s, true);
        }
        // One death can bring others (a worker ends when the tailer that fed
        // it is gone, before the tailer's own panic is reported): name them
        // all, so the cause is in the log whichever came first.
        while let Ok(death) = deaths.try_recv() {
            tracing::error!(component = death.component, "{death}");
        }
        tracing::info!(stats = %stats.summary(), "stopped");
    }

    /// Applies a new config to a running daemon. Every key whose type is
    /// not [`crate::config::Restart`] takes effect here; restart-only keys
    /// that differ from what the daemon runs with are reported as such.
    /// Returns the live keys that changed and the restart-only keys that
    /// differ from the running ones.
    pub fn reload(&mut self, new: Config, client: MispClient) -> anyhow::Result<Vec<Change>> {
        let rules = Rules::from_config(&new)?;
        let mut changes: Vec<Change> = self
            .current
            .changes(&new)
            .into_iter()
            .filter(|c| c.applies == Applies::Live)
            .collect();
        changes.extend(
            self.started
                .changes(&new)
                .into_iter()
                .filter(|c| c.applies == Applies::AfterRestart),
        );
        for c in &changes {
            match c.applies {
                Applies::Live => tracing::info!(key = %c.key, "changed"),
                Applies::AfterRestart => {
                    tracing::warn!(key = %c.key, "changed, but only takes effect after a restart")
                }
            }
        }
        self.engine.rules.store(Arc::new(rules));
        tasks::reload_false_positives(&self.engine, &self.started.input.state_dir);
        self.engine.lookup.primary().reconfigure(client, &new.misp);
        if let Some(d) = &self.engine.dedup {
            d.set_window(Duration::from_secs(new.dedup.window_secs));
        }
        self.report.set(
            new.output.error_event_after_secs,
            new.output.error_event_interval_secs,
        );
        self.current = new;
        Ok(changes)
    }

    /// The reporter's settings in force: (after, every) in seconds.
    pub fn error_event_settings(&self) -> (u64, u64) {
        (
            self.report.after_secs.load(Ordering::Relaxed),
            self.report.every_secs.load(Ordering::Relaxed),
        )
    }
}
