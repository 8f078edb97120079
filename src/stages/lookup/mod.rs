//! Stage 5, MISP lookup: what MISP knows about one IP.
//!
//! Three layers spare MISP:
//! - a cache (moka): hits live `misp.cache_ttl_secs`, misses
//!   `misp.negative_cache_ttl_secs`, so a clean IP is asked about once per
//!   TTL, not once per alert;
//! - single flight: concurrent lookups of one IP share one request (moka's
//!   `try_get_with` runs one initialiser per key);
//! - batching: lookups arriving within `misp.batch_window_ms` become one
//!   restSearch whose `value` is a list, up to `misp.batch_max_values`.
//!
//! Failures never drop a lookup: requests are retried with backoff and,
//! behind an open circuit breaker, wait for MISP to come back.
//!
//! - [`client`]: one HTTP request and its error classes.
//! - [`model`]: the response, parsed tolerantly.
//! - [`breaker`]: the circuit breaker and 429 hold.
//! - [`recent`]: a worker's memo in front of the cache.

pub mod breaker;
pub mod client;
pub mod model;
pub mod recent;

pub use client::{MispClient, MispError};
pub use model::Attribute;
pub use recent::Recent;

use crate::config::{MatchTypes, MispConfig};
use crate::extract::{canonical, Direction};
use crate::ratelog::RateLimitedLog;
use crate::stats::Stats;
use breaker::{Breaker, LastError};
use moka::Expiry;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, Semaphore};

/// What MISP knows about one IP, shared by every alert that names it while
/// it is cached.
#[derive(Debug, Default)]
pub struct LookupResult {
    pub attributes: Vec<Attribute>,
    /// The event's MISP part, built on first use (see [`crate::enrich::Prepared`]).
    prepared: std::sync::OnceLock<Option<crate::enrich::Prepared>>,
}

impl LookupResult {
    pub fn new(attributes: Vec<Attribute>) -> Self {
        LookupResult {
            attributes,
            prepared: std::sync::OnceLock::new(),
        }
    }

    /// The serialised MISP part for events about this IP; `None` when MISP
    /// knows nothing.
    pub fn prepared(&self) -> Option<&crate::enrich::Prepared> {
        self.prepared
            .get_or_init(|| crate::enrich::prepare(&self.attributes))
            .as_ref()
    }
}

impl std::ops::Deref for LookupResult {
    type Target = Vec<Attribute>;
    fn deref(&self) -> &Vec<Attribute> {
        &self.attributes
    }
}

pub type Hits = Arc<LookupResult>;

/// The lookup could not finish because the daemon is stopping. The alert
/// must then not be counted as done.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("lookup abandoned: shutting down")]
pub struct Abandoned;

/// Settings that a reload can change.
#[derive(Debug, Clone)]
pub struct LiveSettings {
    pub batch_window: Duration,
    pub batch_max_values: usize,
    pub retries: u32,
}

impl LiveSettings {
    pub fn from_config(c: &MispConfig) -> Self {
        LiveSettings {
            batch_window: Duration::from_millis(c.batch_window_ms),
            batch_max_values: c.batch_max_values.max(1),
            retries: c.retries,
        }
    }
}

struct Ttls {
    hit_secs: AtomicU64,
    miss_secs: AtomicU64,
}

struct TtlExpiry(Arc<Ttls>);

impl Expiry<IpAddr, Hits> for TtlExpiry {
    fn expire_after_create(&self, _k: &IpAddr, v: &Hits, _at: Instant) -> Option<Duration> {
        let secs = if v.is_empty() {
            &self.0.miss_secs
        } else {
            &self.0.hit_secs
        };
        Some(Duration::from_secs(secs.load(Ordering::Relaxed)))
    }
}

struct Ask {
    ip: IpAddr,
    reply: oneshot::Sender<Hits>,
}

struct Shared {
    client: RwLock<Arc<MispClient>>,
    settings: RwLock<LiveSettings>,
    breaker: Breaker,
    stats: Arc<Stats>,
    log: RateLimitedLog,
    /// Times the cache was emptied: a worker's [`Recent`] memo filled
    /// before the last of them is stale.
    invalidations: AtomicU64,
}

/// The lookup service. Cheap to clone; clones share cache and batcher.
#[derive(Clone)]
pub struct Lookup {
    cache: moka::future::Cache<IpAddr, Hits>,
    ttls: Arc<Ttls>,
    asks: mpsc::Sender<Ask>,
    shared: Arc<Shared>,
}

/// How long an open breaker waits between probes.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(5);

impl Lookup {
    /// Starts the batcher task on the current runtime.
    pub fn start(client: MispClient, cfg: &MispConfig, stats: Arc<Stats>) -> Self {
        Self::start_with_probe(client, cfg, stats, PROBE_INTERVAL)
    }

    pub fn start_with_probe(
        client: MispClient,
        cfg: &MispConfig,
        stats: Arc<Stats>,
        probe: Duration,
    ) -> Self {
        let ttls = Arc::new(Ttls {
            hit_secs: AtomicU64::new(cfg.cache_ttl_secs),
            miss_secs: AtomicU64::new(cfg.negative_cache_ttl_secs),
        });
        let cache = moka::future::Cache::builder()
            .max_capacity(cfg.cache_max_entries)
            .expire_after(TtlExpiry(ttls.clone()))
            .build();
        let shared = Arc::new(Shared {
            client: RwLock::new(Arc::new(client)),
            settings: RwLock::new(LiveSettings::from_config(cfg)),
            breaker: Breaker::new(cfg.breaker_failures, probe),
            stats,
            log: RateLimitedLog::new(Duration::from_secs(60), 1),
            invalidations: AtomicU64::new(0),
        });
        // Bounded: when MISP is slow, asks queue here and workers wait.
        let (asks, rx) =
            mpsc::channel(cfg.batch_max_values.max(1) * cfg.max_concurrent_requests.max(1) * 2);
        tokio::spawn(batcher(
            rx,
            shared.clone(),
            Arc::new(Semaphore::new(cfg.max_concurrent_requests.max(1))),
        ));
        Lookup {
            cache,
            ttls,
            asks,
            shared,
        }
    }

    /// Applies a reloaded config's MISP settings (url, key, TLS, TTLs,
    /// batching). In-flight requests finish with the old client.
    pub fn reconfigure(&self, client: MispClient, cfg: &MispConfig) {
        *self
            .shared
            .client
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(client);
        *self
            .shared
            .settings
            .write()
            .unwrap_or_else(|e| e.into_inner()) = LiveSettings::from_config(cfg);
        self.ttls
            .hit_secs
            .store(cfg.cache_ttl_secs, Ordering::Relaxed);
        self.ttls
            .miss_secs
            .store(cfg.negative_cache_ttl_secs, Ordering::Relaxed);
        // The new server or key may know different things.
        self.cache.invalidate_all();
        self.shared.invalidations.fetch_add(1, Ordering::Relaxed);
    }

    pub fn breaker(&self) -> &Breaker {
        &self.shared.breaker
    }

    /// The cached answer for `ip`, without waiting: the hot path, where
    /// nearly every IP is cached, stays synchronous. `None` (not cached, or
    /// the cache would have to wait on its own housekeeping) sends the
    /// caller to [`Lookup::get`].
    pub fn cached(&self, ip: IpAddr) -> Option<Hits> {
        use futures::FutureExt;
        let hits = self.cache.get(&ip).now_or_never().flatten()?;
        self.shared.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
        Some(hits)
    }

    /// [`Lookup::cached`] through a worker's memo of what it read lately
    /// (see [`recent`]).
    pub fn cached_recent(&self, ip: IpAddr, recent: &mut Recent) -> Option<Hits> {
        let owner = (
            Arc::as_ptr(&self.shared) as usize,
            self.shared.invalidations.load(Ordering::Relaxed),
        );
        let recent = recent.current(owner, Instant::now());
        if let Some(hits) = recent.get(&ip) {
            self.shared.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Some(hits.clone());
        }
        let hits = self.cached(ip)?;
        recent.remember(ip, &hits);
        Some(hits)
    }

    /// Every IP attribute MISP holds for `ip`.
    pub async fn get(&self, ip: IpAddr) -> Result<Hits, Abandoned> {
        let asks = self.asks.clone();
        let entry = self
            .cache
            .entry(ip)
            .or_try_insert_with(async move {
                let (reply, rx) = oneshot::channel();
                asks.send(Ask { ip, reply }).await.map_err(|_| Abandoned)?;
                rx.await.map_err(|_| Abandoned)
            })
            .await
            .map_err(|e: Arc<Abandoned>| *e)?;
        let counter = if entry.is_fresh() {
            &self.shared.stats.cache_misses
        } else {
            &self.shared.stats.cache_hits
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(entry.into_value())
    }
}

/// Keeps the attributes `misp.match_types` asks for, given the direction
/// the IP was seen in. `"direction"` is the original script's behaviour.
pub fn select(hits: &[Attribute], mode: MatchTypes, direction: Direction) -> Vec<Attribute> {
    hits.iter()
        .filter(|a| match (mode, direction) {
            (MatchTypes::All, _) => true,
            (MatchTypes::Direction, Direction::Source) => a.kind.starts_with("ip-src"),
            (MatchTypes::Direction, Direction::Destination) => a.kind.starts_with("ip-dst"),
            (MatchTypes::Direction, Direction::Unknown) => a.kind.starts_with("ip-"),
        })
        .cloned()
        .collect()
}

async fn batcher(mut rx: mpsc::Receiver<Ask>, shared: Arc<Shared>, slots: Arc<Semaphore>) {
    loop {
        // Take a request slot first: while all are busy, asks pile up in the
        // channel and the next batch is as full as it can be.
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let (window, max) = {
            let s = shared.settings.read().unwrap_or_else(|e| e.into_inner());
            (s.batch_window, s.batch_max_values)
        };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + window;
        while batch.len() < max {
            tokio::select! {
                biased;
                next = rx.recv() => match next {
                    Some(a) => batch.push(a),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        let shared = shared.clone();
        tokio::spawn(async move {
            execute(&shared, batch).await;
            drop(permit);
        });
    }
}

async fn execute(shared: &Shared, batch: Vec<Ask>) {
    let mut values: Vec<String> = Vec::with_capacity(batch.len());
    for a in &batch {
        let v = a.ip.to_string();
        if !values.contains(&v) {
            values.push(v);
        }
    }
    let attributes = fetch(shared, &values).await;
    let mut per_ip: HashMap<IpAddr, Vec<Attribute>> = HashMap::new();
    for attr in attributes {
        for half in attr.value.split('|') {
            if let Ok(ip) = half.trim().parse::<IpAddr>() {
                let ip = canonical(ip);
                if batch.iter().any(|a| a.ip == ip) {
                    let list = per_ip.entry(ip).or_default();
                    if list.last() != Some(&attr) {
                        list.push(attr.clone());
                    }
                }
            }
        }
    }
    let mut shared_hits: HashMap<IpAddr, Hits> = HashMap::new();
    for ask in batch {
        let hits = shared_hits
            .entry(ask.ip)
            .or_insert_with(|| {
                Arc::new(LookupResult::new(
                    per_ip.remove(&ask.ip).unwrap_or_default(),
                ))
            })
            .clone();
        let _ = ask.reply.send(hits);
    }
}

fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(200) * 2u32.saturating_pow(attempt.min(6));
    let capped = base.min(Duration::from_secs(10));
    // Full jitter on half the delay, so many waiting requests spread out.
    capped / 2 + capped.mul_f64(fastrand::f64() / 2.0)
}

/// Asks MISP until it answers. Retries `misp.retries` times with backoff,
/// then reports the failure and keeps trying at the breaker's pace.
async fn fetch(shared: &Shared, values: &[String]) -> Vec<Attribute> {
    let mut attempt = 0u32;
    loop {
        let pass = shared.breaker.pass().await;
        let client = shared
            .client
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let started = Instant::now();
        shared.stats.misp_requests.fetch_add(1, Ordering::Relaxed);
        shared
            .stats
            .misp_values
            .fetch_add(values.len() as u64, Ordering::Relaxed);
        let result = client.search(values).await;
        metrics::histogram!(crate::metrics::MISP_REQUEST_SECONDS)
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!(crate::metrics::MISP_VALUES_PER_REQUEST).record(values.len() as f64);
        tracing::debug!(
            values = values.len(),
            ms = started.elapsed().as_millis() as u64,
            ok = result.is_ok(),
            "MISP restSearch"
        );
        let err = match result {
            Ok(a) => {
                shared.breaker.success();
                return a;
            }
            Err(e) => e,
        };
        shared.stats.misp_errors.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(crate::metrics::MISP_ERRORS, "kind" => err.kind()).increment(1);
        let retries = shared
            .settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .retries;
        let last = LastError {
            kind: err.event_kind(),
            message: err.to_string(),
        };
        let delay = match &err {
            MispError::RateLimited { retry_after } => {
                let d = retry_after
                    .unwrap_or_else(|| backoff(attempt))
                    .min(Duration::from_secs(300));
                shared.breaker.hold(d, last.clone());
                d
            }
            // A wrong key does not fix itself in milliseconds.
            MispError::Auth { .. } => shared.breaker.probe_interval(),
            _ if attempt < retries => backoff(attempt),
            _ => shared.breaker.probe_interval(),
        };
        if !matches!(err, MispError::RateLimited { .. }) {
            shared.breaker.failure(pass, last);
        }
        let kind = err.kind();
        let gave_up_retrying = attempt >= retries;
        shared.log.log(kind, |suppressed| {
            tracing::warn!(
                kind,
                status = err.status(),
                error = %err,
                attempt = attempt + 1,
                values = values.len(),
                retry_in_ms = delay.as_millis() as u64,
                suppressed,
                "MISP lookup failed{}",
                if gave_up_retrying { "; retries used up, waiting for MISP to recover (no alert is dropped)" } else { "; retrying" }
            );
        });
        attempt += 1;
        tokio::time::sleep(delay).await;
    }
}
