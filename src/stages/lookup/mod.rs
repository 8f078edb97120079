//! Stage 5, lookup: what threat intelligence knows about an observable,
//! behind the [`Intelligence`] port ([`port`]); [`Lookup`], MISP queried
//! per value, is its implementation today.
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
//! An outage never drops a lookup: requests are retried with backoff and,
//! behind an open circuit breaker, wait for MISP to come back. A batch that
//! keeps failing in a way one value can cause is split until that value is
//! alone (see [`resolve`]).
//!
//! - [`client`]: one HTTP request and its error classes.
//! - [`model`]: the response, parsed tolerantly.
//! - [`breaker`]: the circuit breaker and 429 hold.
//! - [`recent`]: a worker's memo in front of the cache.

pub mod breaker;
pub mod client;
pub mod mirror;
pub mod model;
pub mod port;
pub mod recent;
pub mod source;

pub use client::{MispClient, MispError, SightingOutcome};
pub use model::Attribute;
pub use port::Intelligence;
pub use recent::Recent;
pub use source::Source;

use crate::config::MispConfig;
use crate::observable::Observable;
use crate::ratelog::RateLimitedLog;
use crate::stats::Stats;
use breaker::{Breaker, LastError};
use futures::stream::{FuturesUnordered, StreamExt};
use moka::Expiry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// What one restSearch `value` asks about: an observable from an alert,
/// or a network as MISP stores it (the mirror asks for the details of a
/// network an alert's IP fell in).
///
/// Invariant: a network keeps its text's host bits (`10.0.0.5/24` stays
/// that), because MISP matches `value` on the stored text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    Observable(Observable),
    Network(ipnet::IpNet),
    /// An observable asked for by the text MISP stores it under, where
    /// that is not its canonical text (`HTTP://Evil.com:80/x`): MISP
    /// matches `value` on the stored text. Answered as the observable.
    Stored {
        observable: Observable,
        text: Box<str>,
    },
}

impl Subject {
    /// The subject MISP's text for a value (or one half of a composite)
    /// stands for.
    pub fn parse(text: &str) -> Option<Subject> {
        if let Ok(o) = text.parse::<Observable>() {
            return Some(Subject::Observable(o));
        }
        text.trim().parse().ok().map(Subject::Network)
    }

    /// The subject an answer about this one is filed under: a stored
    /// text's answer is its observable's.
    pub fn answered_as(&self) -> Subject {
        match self {
            Subject::Stored { observable, .. } => Subject::Observable(observable.clone()),
            other => other.clone(),
        }
    }

    /// The subject one half of an attribute's value of `misp_type` stands
    /// for ([`Observable::from_misp`], or a network).
    pub fn of_misp(misp_type: &str, half: &str) -> Option<Subject> {
        if let Some(o) = Observable::from_misp(misp_type, half) {
            return Some(Subject::Observable(o));
        }
        half.trim().parse().ok().map(Subject::Network)
    }
}

/// Whether a MISP attribute of this type matches the subdomains of its
/// domain (a `hostname` matches only itself).
pub fn covers_subdomains(misp_type: &str) -> bool {
    matches!(misp_type, "domain" | "domain|ip")
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::Observable(o) => o.fmt(f),
            Subject::Network(n) => n.fmt(f),
            Subject::Stored { text, .. } => f.write_str(text),
        }
    }
}

impl From<Observable> for Subject {
    fn from(o: Observable) -> Self {
        Subject::Observable(o)
    }
}

/// What MISP knows about one observable, shared by every alert that names
/// it while it is cached.
#[derive(Debug, Default)]
pub struct LookupResult {
    pub attributes: Vec<Attribute>,
    /// MISP's answer was over `misp.max_response_bytes`, so this is its
    /// first page only.
    pub truncated: bool,
    /// The MISP server that answered (`misp_data.server`).
    pub server: Option<Arc<str>>,
    /// That server's position among those configured: events from any
    /// but the first carry its name in their id, so that two servers'
    /// events for one IP differ.
    pub server_position: usize,
    /// The mirrored network the IP fell in, when one did.
    pub matched_network: Option<ipnet::IpNet>,
    /// The MISP `domain` attribute's value a subdomain matched under,
    /// when the match was by a parent domain.
    pub matched_domain: Option<Box<str>>,
    /// Built from the mirror because MISP did not give the details in time.
    pub partial: bool,
    /// The next server's answer for the same observable.
    pub more: Option<Hits>,
    /// What a consumer derives from this answer, built once and kept as
    /// long as the answer (enrichment keeps the event's serialised MISP
    /// part here). Intelligence neither builds nor reads it.
    derived: std::sync::OnceLock<Box<dyn std::any::Any + Send + Sync>>,
}

impl LookupResult {
    pub fn new(attributes: Vec<Attribute>) -> Self {
        LookupResult {
            attributes,
            ..LookupResult::default()
        }
    }

    /// This answer and every other server's after it.
    pub fn parts(&self) -> impl Iterator<Item = &LookupResult> {
        std::iter::successors(Some(self), |p| p.more.as_deref())
    }

    /// The value `build` derives from this answer, built on first use.
    /// `None` if another type was derived first (one consumer per answer).
    pub fn derived<T: std::any::Any + Send + Sync>(
        &self,
        build: impl FnOnce(&Self) -> T,
    ) -> Option<&T> {
        self.derived
            .get_or_init(|| Box::new(build(self)))
            .downcast_ref::<T>()
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("lookup abandoned: shutting down")]
pub struct Abandoned;

/// A value MISP kept failing on by itself, let go after
/// `misp.isolated_retry_secs` so that its alert does not hold the bookmark
/// forever.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("MISP kept failing for {value} alone ({message}); gave up on it")]
pub struct LookupFailed {
    pub value: String,
    pub message: String,
}

/// Why a lookup has no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error(transparent)]
    Abandoned(#[from] Abandoned),
    #[error(transparent)]
    Failed(#[from] LookupFailed),
}

type Answer = Result<Hits, LookupFailed>;

/// Settings that a reload can change.
#[derive(Debug, Clone)]
pub struct LiveSettings {
    pub batch_window: Duration,
    pub batch_max_values: usize,
    pub retries: u32,
    pub isolated_retry: Duration,
}

impl LiveSettings {
    pub fn from_config(c: &MispConfig) -> Self {
        LiveSettings {
            batch_window: Duration::from_millis(c.batch_window_ms),
            batch_max_values: c.batch_max_values.max(1),
            retries: c.retries,
            isolated_retry: Duration::from_secs(c.isolated_retry_secs),
        }
    }
}

struct Ttls {
    hit_secs: AtomicU64,
    miss_secs: AtomicU64,
}

struct TtlExpiry(Arc<Ttls>);

impl Expiry<Subject, Hits> for TtlExpiry {
    fn expire_after_create(&self, _k: &Subject, v: &Hits, _at: Instant) -> Option<Duration> {
        let secs = if v.is_empty() {
            &self.0.miss_secs
        } else {
            &self.0.hit_secs
        };
        Some(Duration::from_secs(secs.load(Ordering::Relaxed)))
    }
}

struct Ask {
    subject: Subject,
    reply: oneshot::Sender<Answer>,
}

/// At most this many given-up values wait for the reporter's error events.
const GIVEN_UP_QUEUE: usize = 64;

struct Shared {
    client: RwLock<Arc<MispClient>>,
    settings: RwLock<LiveSettings>,
    breaker: Breaker,
    stats: Arc<Stats>,
    log: RateLimitedLog,
    /// Times the cache was emptied: a worker's [`Recent`] memo filled
    /// before the last of them is stale.
    invalidations: AtomicU64,
    /// When MISP last answered a request: a value failing alone is only
    /// given up on while MISP answers others (otherwise it is an outage).
    last_success: std::sync::Mutex<Option<Instant>>,
    /// Values given up on, for the reporter to tell Wazuh about.
    given_up: std::sync::Mutex<std::collections::VecDeque<LookupFailed>>,
    /// `misp.match_subdomains`: a domain is asked about with its parents,
    /// and a parent's `domain` attribute is part of its answer.
    subdomains: bool,
}

impl Shared {
    fn client(&self) -> Arc<MispClient> {
        self.client
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn answered(&self) {
        *self.last_success.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    /// Gives up on `values` (one value) if it has failed on its own for
    /// `misp.isolated_retry_secs` since `started` while MISP answered
    /// other requests.
    fn give_up(
        &self,
        values: &[String],
        err: &MispError,
        started: Instant,
    ) -> Option<LookupFailed> {
        let after = self
            .settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .isolated_retry;
        let answered_since = self
            .last_success
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|t| t > started);
        if started.elapsed() < after || !answered_since {
            return None;
        }
        let failed = LookupFailed {
            value: values.join(","),
            message: err.to_string(),
        };
        self.stats.lookups_failed.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            value = %failed.value,
            error = %err,
            failing_secs = started.elapsed().as_secs(),
            "MISP keeps failing for this value alone while it answers others; its alerts are let go without enrichment"
        );
        let mut q = self.given_up.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= GIVEN_UP_QUEUE {
            q.pop_front();
        }
        q.push_back(failed.clone());
        Some(failed)
    }
}

/// The lookup service. Cheap to clone; clones share cache and batcher.
#[derive(Clone)]
pub struct Lookup {
    cache: moka::future::Cache<Subject, Hits>,
    ttls: Arc<Ttls>,
    asks: mpsc::Sender<Ask>,
    shared: Arc<Shared>,
}

/// How long an open breaker waits between probes.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(5);

impl Lookup {
    /// The lookup service and its batcher, which the caller must run
    /// (the daemon's runtime supervises it): until it runs, lookups that
    /// miss the cache wait.
    ///
    /// The batcher ends when every clone of the lookup is gone, or once
    /// `stop` is cancelled and it has nothing left to ask or answer.
    pub fn new(
        client: MispClient,
        cfg: &MispConfig,
        stats: Arc<Stats>,
        probe: Duration,
        stop: CancellationToken,
    ) -> (Self, Batcher) {
        let ttls = Arc::new(Ttls {
            hit_secs: AtomicU64::new(cfg.cache_ttl_secs),
            miss_secs: AtomicU64::new(cfg.negative_cache_ttl_secs),
        });
        let cache = moka::future::Cache::builder()
            .max_capacity(*cfg.cache_max_entries)
            .expire_after(TtlExpiry(ttls.clone()))
            .build();
        let shared = Arc::new(Shared {
            client: RwLock::new(Arc::new(client)),
            settings: RwLock::new(LiveSettings::from_config(cfg)),
            breaker: Breaker::new(cfg.breaker_failures, probe),
            stats,
            log: RateLimitedLog::new(Duration::from_secs(60), 1),
            invalidations: AtomicU64::new(0),
            last_success: std::sync::Mutex::new(None),
            given_up: std::sync::Mutex::new(std::collections::VecDeque::new()),
            subdomains: *cfg.match_subdomains,
        });
        let in_flight = cfg.max_concurrent_requests.max(1);
        // Bounded: when MISP is slow, asks queue here and workers wait.
        let (asks, rx) = mpsc::channel(cfg.batch_max_values.max(1) * in_flight * 2);
        let lookup = Lookup {
            cache,
            ttls,
            asks,
            shared: shared.clone(),
        };
        (lookup, Box::pin(batcher(rx, shared, in_flight, stop)))
    }

    /// [`Lookup::new`] with its batcher running on the current runtime,
    /// unsupervised: for one-shot commands and tests.
    pub fn start(client: MispClient, cfg: &MispConfig, stats: Arc<Stats>) -> Self {
        Self::start_with_probe(client, cfg, stats, PROBE_INTERVAL)
    }

    pub fn start_with_probe(
        client: MispClient,
        cfg: &MispConfig,
        stats: Arc<Stats>,
        probe: Duration,
    ) -> Self {
        let (lookup, batcher) = Self::new(client, cfg, stats, probe, CancellationToken::new());
        crate::runtime::detached(batcher);
        lookup
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
        self.shared.breaker.set_threshold(cfg.breaker_failures);
        // The new server or key may know different things.
        self.cache.invalidate_all();
        self.shared.invalidations.fetch_add(1, Ordering::Relaxed);
    }

    pub fn breaker(&self) -> &Breaker {
        &self.shared.breaker
    }

    /// The settings in force (batching, retries), for checks and tests.
    pub fn settings(&self) -> LiveSettings {
        self.shared
            .settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The client in force.
    pub fn client(&self) -> Arc<MispClient> {
        self.shared.client()
    }

    /// The cache's time to live for answers with and without attributes.
    pub fn ttls(&self) -> (Duration, Duration) {
        (
            Duration::from_secs(self.ttls.hit_secs.load(Ordering::Relaxed)),
            Duration::from_secs(self.ttls.miss_secs.load(Ordering::Relaxed)),
        )
    }

    /// Values given up on since the last call (see [`LookupFailed`]).
    pub fn take_given_up(&self) -> Vec<LookupFailed> {
        self.shared
            .given_up
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect()
    }

    /// The cached answer for `observable`, without waiting: the hot path,
    /// where nearly every value is cached, stays synchronous. `None` (not
    /// cached, or the cache would have to wait on its own housekeeping)
    /// sends the caller to [`Lookup::get`].
    pub fn cached(&self, observable: &Observable) -> Option<Hits> {
        self.cached_subject(&Subject::Observable(observable.clone()))
    }

    /// [`Lookup::cached`] for any subject.
    pub fn cached_subject(&self, subject: &Subject) -> Option<Hits> {
        use futures::FutureExt;
        let hits = self.cache.get(subject).now_or_never().flatten()?;
        self.shared.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
        Some(hits)
    }

    /// [`Lookup::cached`] through a worker's memo of what it read lately
    /// (see [`recent`]).
    pub fn cached_recent(&self, observable: &Observable, recent: &mut Recent) -> Option<Hits> {
        let owner = (
            Arc::as_ptr(&self.shared) as usize,
            self.shared.invalidations.load(Ordering::Relaxed),
        );
        let recent = recent.current(owner, Instant::now());
        if let Some(hits) = recent.get(observable) {
            self.shared.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Some(hits.clone());
        }
        let hits = self.cached(observable)?;
        recent.remember(observable, &hits);
        Some(hits)
    }

    /// Every attribute MISP holds for `observable`. A failure is not
    /// cached: the next alert naming the value asks again.
    pub async fn get(&self, observable: &Observable) -> Result<Hits, LookupError> {
        self.get_subject(&Subject::Observable(observable.clone()))
            .await
    }

    /// Drops a cached "MISP knows nothing of `subject`": the mirror says
    /// otherwise (it learnt the indicator after the value was asked about
    /// before the first sync), and the negative answer would hide the hit
    /// for `misp.negative_cache_ttl_secs`.
    pub async fn forget_miss(&self, subject: &Subject) {
        if self.cache.get(subject).await.is_some_and(|h| h.is_empty()) {
            self.cache.invalidate(subject).await;
        }
    }

    /// [`Lookup::get`] for any subject.
    pub async fn get_subject(&self, subject: &Subject) -> Result<Hits, LookupError> {
        let asks = self.asks.clone();
        let key = subject.clone();
        let entry = self
            .cache
            .entry(subject.clone())
            .or_try_insert_with(async move {
                let (reply, rx) = oneshot::channel();
                asks.send(Ask {
                    subject: key,
                    reply,
                })
                .await
                .map_err(|_| Abandoned)?;
                Ok::<_, LookupError>(rx.await.map_err(|_| Abandoned)??)
            })
            .await
            .map_err(|e: Arc<LookupError>| (*e).clone())?;
        let counter = if entry.is_fresh() {
            &self.shared.stats.cache_misses
        } else {
            &self.shared.stats.cache_hits
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(entry.into_value())
    }
}

impl Intelligence for Lookup {
    type Memo = Recent;

    fn known(&self, observable: &Observable, memo: &mut Recent) -> Option<Hits> {
        self.cached_recent(observable, memo)
    }

    fn lookup(
        &self,
        observable: &Observable,
    ) -> impl std::future::Future<Output = Result<Hits, LookupError>> + Send {
        self.get(observable)
    }
}

/// The task that turns asks into batched restSearch requests. It ends
/// when every [`Lookup`] clone is gone and its requests are answered.
pub type Batcher = futures::future::BoxFuture<'static, ()>;

/// The batch being gathered: asks that arrived within one window.
struct Gathering {
    asks: Vec<Ask>,
    until: tokio::time::Instant,
}

/// Gathers asks into batches and runs up to `max_in_flight` requests at
/// once, all within this one task. A batch starts gathering only when a
/// request slot is free: while all are busy, asks pile up in the channel
/// and the next batch is as full as it can be.
async fn batcher(
    mut rx: mpsc::Receiver<Ask>,
    shared: Arc<Shared>,
    max_in_flight: usize,
    stop: CancellationToken,
) {
    async fn run(shared: Arc<Shared>, batch: Vec<Ask>) {
        execute(&shared, batch).await;
    }
    let mut in_flight = FuturesUnordered::new();
    let mut gathering: Option<Gathering> = None;
    let mut open = true;
    loop {
        let idle = in_flight.is_empty() && gathering.is_none() && rx.is_empty();
        if idle && stop.is_cancelled() {
            return;
        }
        let until = gathering.as_ref().map(|g| g.until);
        let may_gather = gathering.is_some() || in_flight.len() < max_in_flight;
        tokio::select! {
            _ = stop.cancelled(), if idle => return,
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            ask = rx.recv(), if open && may_gather => match ask {
                Some(ask) => {
                    let (window, max) = {
                        let s = shared.settings.read().unwrap_or_else(|e| e.into_inner());
                        (s.batch_window, s.batch_max_values)
                    };
                    let g = gathering.get_or_insert_with(|| Gathering {
                        asks: Vec::new(),
                        until: tokio::time::Instant::now() + window,
                    });
                    g.asks.push(ask);
                    if g.asks.len() >= max {
                        let batch = gathering.take().map(|g| g.asks).unwrap_or_default();
                        in_flight.push(run(shared.clone(), batch));
                    }
                }
                None => {
                    open = false;
                    if let Some(g) = gathering.take() {
                        in_flight.push(run(shared.clone(), g.asks));
                    }
                }
            },
            _ = tokio::time::sleep_until(until.unwrap_or_else(tokio::time::Instant::now)), if until.is_some() => {
                if let Some(g) = gathering.take() {
                    in_flight.push(run(shared.clone(), g.asks));
                }
            }
            else => return,
        }
    }
}

async fn execute(shared: &Shared, batch: Vec<Ask>) {
    let mut values: Vec<String> = Vec::with_capacity(batch.len());
    let mut waiting: HashMap<Subject, Vec<oneshot::Sender<Answer>>> = HashMap::new();
    for a in batch {
        let v = a.subject.to_string();
        let answered_as = a.subject.answered_as();
        if shared.subdomains {
            if let Subject::Observable(Observable::Domain(d)) = &answered_as {
                for parent in crate::extract::domain::with_parents(d).skip(1) {
                    if !values.iter().any(|v| v == parent) {
                        values.push(parent.to_owned());
                    }
                }
            }
        }
        if !values.contains(&v) {
            values.push(v);
        }
        waiting.entry(answered_as).or_default().push(a.reply);
    }
    let subdomains = shared.subdomains;
    let waiting = std::sync::Mutex::new(waiting);
    // Each part of the batch is answered as soon as it resolves: while one
    // value is being isolated, the alerts of the others go on.
    let answer = |(asked, outcome): Resolved| {
        let answers = per_value(&asked, outcome, subdomains);
        let mut waiting = waiting.lock().unwrap_or_else(|e| e.into_inner());
        for (subject, answer) in answers {
            for reply in waiting.remove(&subject).into_iter().flatten() {
                let _ = reply.send(answer.clone());
            }
        }
    };
    resolve(shared, values, Level::Batch, &answer).await;
}

/// One request's outcome, per value asked: the attributes naming it (a
/// composite value such as `ip|port` names its IP half), and with
/// `subdomains` the `domain` attributes naming a parent of a domain.
fn per_value(
    asked: &[String],
    outcome: Result<(Vec<Attribute>, bool), LookupFailed>,
    subdomains: bool,
) -> Vec<(Subject, Answer)> {
    let observables: Vec<Subject> = asked.iter().filter_map(|v| Subject::parse(v)).collect();
    let (attributes, truncated) = match outcome {
        Ok(found) => found,
        Err(failed) => {
            return observables
                .into_iter()
                .map(|o| (o, Err(failed.clone())))
                .collect()
        }
    };
    let mut found: HashMap<Subject, Vec<Attribute>> = HashMap::new();
    let mut under: HashMap<Subject, Box<str>> = HashMap::new();
    let mut file = |o: &Subject, attr: &Attribute| {
        let list = found.entry(o.clone()).or_default();
        if !list.contains(attr) {
            list.push(attr.clone());
        }
    };
    for attr in attributes {
        for half in attr.value.split('|') {
            let Some(o) = Subject::of_misp(&attr.kind, half) else {
                continue;
            };
            if observables.contains(&o) {
                file(&o, &attr);
            }
            let Subject::Observable(Observable::Domain(parent)) = &o else {
                continue;
            };
            if !subdomains || !covers_subdomains(&attr.kind) {
                continue;
            }
            for asked in &observables {
                let Subject::Observable(Observable::Domain(d)) = asked else {
                    continue;
                };
                if d != parent && crate::extract::domain::is_under(d, parent) {
                    file(asked, &attr);
                    let longest = under.entry(asked.clone()).or_insert_with(|| parent.clone());
                    if parent.len() > longest.len() {
                        *longest = parent.clone();
                    }
                }
            }
        }
    }
    observables
        .into_iter()
        .map(|o| {
            let mut result = LookupResult::new(found.remove(&o).unwrap_or_default());
            result.truncated = truncated;
            result.matched_domain = under.remove(&o);
            (o, Ok(Arc::new(result)))
        })
        .collect()
}

/// What one request's values came to: the attributes (and whether MISP's
/// answer was cut to its first page), or the failure they were let go with.
type Resolved = (Vec<String>, Result<(Vec<Attribute>, bool), LookupFailed>);

/// Asks MISP about `values` until it answers, isolating a value that fails
/// on its own: a batch that keeps failing in a way one value can cause (a
/// 5xx, an unusable or oversized body, a timeout) is split in halves, so
/// that one poison value holds up nobody else's alerts.
fn resolve<'a>(
    shared: &'a Shared,
    values: Vec<String>,
    level: Level,
    out: &'a (dyn Fn(Resolved) + Sync),
) -> futures::future::BoxFuture<'a, ()> {
    Box::pin(async move {
        match fetch(shared, &values, level).await {
            Ok(attributes) => out((values, Ok((attributes, level == Level::FirstPage)))),
            Err(Isolate::Split) => {
                let second = values[values.len() / 2..].to_vec();
                let mut first = values;
                first.truncate(first.len() / 2);
                tracing::info!(
                    values = first.len() + second.len(),
                    "a MISP request keeps failing; splitting it to find the value that fails"
                );
                // Both halves at once: the healthy one is answered while
                // the other is split further.
                futures::join!(
                    resolve(shared, first, Level::Isolating, out),
                    resolve(shared, second, Level::Isolating, out)
                );
            }
            Err(Isolate::TooLarge) => {
                // What the event's size guard would keep anyway; the event
                // is marked truncated.
                tracing::warn!(value = %values.join(","), "MISP's answer for this value is over misp.max_response_bytes; asking for its first page (the event is marked truncated)");
                resolve(shared, values, Level::FirstPage, out).await;
            }
            Err(Isolate::GaveUp(failed)) => out((values, Err(failed))),
        }
    })
}

fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(200) * 2u32.saturating_pow(attempt.min(6));
    let capped = base.min(Duration::from_secs(10));
    // Full jitter on half the delay, so many waiting requests spread out.
    capped / 2 + capped.mul_f64(fastrand::f64() / 2.0)
}

/// Whether a request is a batch as the batcher made it, part of one being
/// split to isolate a failing value, or the first page of one value's
/// answer that is too large whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Batch,
    Isolating,
    FirstPage,
}

/// Why [`fetch`] stopped asking for a set of values.
enum Isolate {
    /// It keeps failing in a way one of its values can cause: ask about
    /// each half on its own.
    Split,
    /// One value whose answer is over `misp.max_response_bytes` (never
    /// at [`Level::FirstPage`]).
    TooLarge,
    /// One value that kept failing for `misp.isolated_retry_secs` while
    /// MISP answered other requests.
    GaveUp(LookupFailed),
}

/// Whether one value can cause this error on its own (its answer is huge,
/// or it trips a server bug), rather than MISP or the network being down.
fn value_specific(err: &MispError) -> bool {
    matches!(
        err,
        MispError::Server { .. } | MispError::BadBody(_) | MispError::Timeout
    )
}

fn is_too_large(err: &MispError) -> bool {
    matches!(err, MispError::BadBody(m) if m.contains("max_response_bytes"))
}

/// How many attributes the first page of a too-large answer holds: more
/// than one datagram's event keeps after its size guard.
pub const FIRST_PAGE_ATTRIBUTES: u32 = 50;

/// Asks MISP until it answers. Retries `misp.retries` times with backoff,
/// then, when the failure is of a kind one value can cause, hands the
/// values back to be split ([`resolve`]); otherwise (MISP down, key
/// refused, rate limit) reports the failure and keeps trying at the
/// breaker's pace, as no alert is dropped for an outage.
async fn fetch(
    shared: &Shared,
    values: &[String],
    level: Level,
) -> Result<Vec<Attribute>, Isolate> {
    let mut attempt = 0u32;
    let started = Instant::now();
    loop {
        let pass = shared.breaker.pass().await;
        let client = shared.client();
        let begun = Instant::now();
        shared.stats.misp_requests.fetch_add(1, Ordering::Relaxed);
        shared
            .stats
            .misp_values
            .fetch_add(values.len() as u64, Ordering::Relaxed);
        let limit = (level == Level::FirstPage).then_some(FIRST_PAGE_ATTRIBUTES);
        let result = client.search_with(values, limit).await;
        metrics::histogram!(crate::metrics::MISP_REQUEST_SECONDS)
            .record(begun.elapsed().as_secs_f64());
        metrics::histogram!(crate::metrics::MISP_VALUES_PER_REQUEST).record(values.len() as f64);
        tracing::debug!(
            values = values.len(),
            ms = begun.elapsed().as_millis() as u64,
            ok = result.is_ok(),
            "MISP restSearch"
        );
        let err = match result {
            Ok(a) => {
                shared.breaker.success();
                shared.answered();
                return Ok(a);
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
        // While a batch is split, its failures of the kind one value causes
        // are that value's, not MISP's: counting them would let one poison
        // value open the breaker for every other lookup. A real outage
        // opens it through the batches themselves.
        if level != Level::Batch && value_specific(&err) {
            shared.breaker.neutral(pass);
        } else if !matches!(err, MispError::RateLimited { .. }) {
            shared.breaker.failure(pass, last.clone());
        }
        let retries_used = attempt >= retries;
        if retries_used && value_specific(&err) {
            if values.len() > 1 {
                return Err(Isolate::Split);
            }
            if is_too_large(&err) && level != Level::FirstPage {
                return Err(Isolate::TooLarge);
            }
            if let Some(failed) = shared.give_up(values, &err, started) {
                return Err(Isolate::GaveUp(failed));
            }
        }
        let isolated = values.len() == 1 && value_specific(&err);
        let delay = match &err {
            MispError::RateLimited { retry_after } => {
                let d = retry_after
                    .unwrap_or_else(|| backoff(attempt))
                    .min(Duration::from_secs(300));
                shared.breaker.hold(d, last);
                d
            }
            // A wrong key does not fix itself in milliseconds.
            MispError::Auth { .. } => shared.breaker.probe_interval(),
            _ if !retries_used || isolated => backoff(attempt),
            _ => shared.breaker.probe_interval(),
        };
        let kind = err.kind();
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
                if retries_used { "; retries used up, waiting for MISP to recover (no alert is dropped)" } else { "; retrying" }
            );
        });
        attempt += 1;
        tokio::time::sleep(delay).await;
    }
}
