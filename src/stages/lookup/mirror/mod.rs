//! The mirror: a local, synced copy of every MISP server's IP indicators,
//! behind the [`Intelligence`] port.
//!
//! Every lookup is local ([`index`]): exact IPs by hash, networks by the
//! longest prefix holding the IP. MISP is asked only about hits, for the
//! details an event shows (full context, through each server's own
//! [`Lookup`], so cached, batched and retried as in query mode). When MISP
//! cannot give them within `misp.detail_timeout_secs`, the event is built
//! from what the store holds and marked `partial`. Until a server's first
//! sync completes, its lookups are plain query-mode ones.
//!
//! - [`index`]: the in-memory matcher ([`prefixes`]: its networks;
//!   [`exact`]: its IPv4 addresses, packed for the hot path).
//! - [`store`]: the SQLite file it is rebuilt from at start.
//! - [`sync`]: the task per server that keeps both up to date.

pub mod exact;
pub mod index;
pub mod prefixes;
pub mod store;
pub mod sync;

use super::model::{Attribute, EventInfo, Tag};
use super::{Hits, Intelligence, Lookup, LookupError, LookupResult, Recent, Subject};
use crate::config::MispConfig;
use crate::observable::Observable;
use arc_swap::ArcSwapOption;
use index::Index;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// MISP's NIDS Simple Decaying Model (polynomial): lifetime, decay speed,
/// threshold and base score. An indicator is decayed once
/// `base * (1 - (age / lifetime)^(1 / speed)) < threshold`, that is once
/// its age passes `lifetime * (1 - threshold / base)^speed`.
pub const DECAY_MODEL: DecayModel = DecayModel {
    lifetime_days: 120.0,
    decay_speed: 2.0,
    threshold: 30.0,
    base_score: 80.0,
};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecayModel {
    pub lifetime_days: f64,
    pub decay_speed: f64,
    pub threshold: f64,
    pub base_score: f64,
}

impl DecayModel {
    /// The age at which an indicator's score falls under the threshold.
    pub fn expires_after(&self) -> Duration {
        let ratio = (1.0 - self.threshold / self.base_score).clamp(0.0, 1.0);
        let days = self.lifetime_days * ratio.powf(self.decay_speed);
        Duration::from_secs_f64(days * 86400.0)
    }
}

/// The hit policy: how old an indicator may be and still be a hit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// `misp.sync.max_age_days` and, with `misp.decay`, the decay model's
    /// expiry: the shorter one. `None`: any age.
    pub max_age: Option<Duration>,
    /// With `misp.decay`: attributes MISP scores under this are dropped
    /// from the details.
    pub min_score: Option<f64>,
    /// `misp.match_subdomains`.
    pub subdomains: bool,
}

impl Policy {
    pub fn from_config(m: &MispConfig) -> Policy {
        let age =
            (m.sync.max_age_days > 0).then(|| Duration::from_secs(m.sync.max_age_days * 86400));
        let decay = m.decay.then(|| DECAY_MODEL.expires_after());
        let max_age = match (age, decay) {
            (Some(a), Some(d)) => Some(a.min(d)),
            (a, d) => a.or(d),
        };
        Policy {
            max_age,
            min_score: m.decay.then_some(DECAY_MODEL.threshold),
            subdomains: *m.match_subdomains,
        }
    }

    /// The oldest `seen` that is still a hit at `now` (0: any).
    fn cutoff(&self, now: i64) -> u32 {
        self.max_age.map_or(0, |a| {
            (now - a.as_secs() as i64).clamp(0, i64::from(u32::MAX)) as u32
        })
    }
}

/// One server's part of the mirror.
pub struct ServerMirror {
    pub name: Arc<str>,
    /// Its position among the servers: events from servers after the first
    /// carry the name in their event id.
    pub position: usize,
    /// `None` until the first sync (or the load from the store)
    /// completes: lookups are then query-mode ones.
    index: ArcSwapOption<Index>,
    /// Details of hits (and lookups before the first sync).
    pub query: Lookup,
    pub store: Arc<Mutex<store::Store>>,
    policy: Policy,
    /// The sync's filters, which a hit's details pass too.
    filters: crate::config::SyncFilters,
    /// [`Policy::cutoff`] at the last tick, so that the hot path reads no
    /// clock.
    cutoff: AtomicU32,
    /// The full mirror, for counting it in status and metrics.
    pub attributes: AtomicU64,
    /// Unix seconds of the last sync that completed (0: none yet).
    pub last_sync: std::sync::atomic::AtomicI64,
    /// Since when this server's syncs have been failing, and how: the
    /// error reporter tells Wazuh, as it does for lookups.
    sync_failing: Mutex<Option<(std::time::SystemTime, super::breaker::LastError)>>,
}

impl ServerMirror {
    /// Runs `f` on this server's store, with its name, on the blocking
    /// pool (SQLite work never holds a runtime thread). `None`: the task
    /// was cancelled, which means shutdown.
    pub async fn on_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut store::Store, &str) -> Result<T, store::StoreError> + Send + 'static,
    ) -> Option<Result<T, store::StoreError>> {
        let (store, name) = (self.store.clone(), self.name.clone());
        tokio::task::spawn_blocking(move || {
            f(&mut store.lock().unwrap_or_else(|e| e.into_inner()), &name)
        })
        .await
        .ok()
    }

    pub fn index(&self) -> Option<Arc<Index>> {
        self.index.load_full()
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Records a failed sync (`Some`) or a successful one (`None`).
    pub fn sync_failed(&self, error: Option<&super::MispError>) {
        let mut f = self.sync_failing.lock().unwrap_or_else(|e| e.into_inner());
        match error {
            None => *f = None,
            Some(e) => {
                let since = f
                    .as_ref()
                    .map_or_else(std::time::SystemTime::now, |(t, _)| *t);
                *f = Some((
                    since,
                    super::breaker::LastError {
                        kind: e.event_kind(),
                        message: format!("mirror sync of {}: {e}", self.name),
                    },
                ));
            }
        }
    }

    /// Since when syncs have been failing, and how, if they are.
    pub fn sync_failing(&self) -> Option<(std::time::SystemTime, super::breaker::LastError)> {
        self.sync_failing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Refreshes the age cutoff from the clock.
    pub fn tick(&self) {
        self.cutoff.store(
            self.policy.cutoff(chrono::Utc::now().timestamp()),
            Ordering::Relaxed,
        );
    }

    /// What `observable` hits on `index`, by the hit policy.
    fn matches(&self, index: &Index, observable: &Observable) -> index::Match {
        let cutoff = self.cutoff.load(Ordering::Relaxed);
        match observable {
            Observable::Ip(ip) => index.matches(*ip, cutoff),
            Observable::Domain(d) => {
                let m = index.domain_match(d, self.policy.subdomains, cutoff);
                index::Match {
                    exact: m.exact,
                    parent_domain: m.parent.map(Into::into),
                    ..index::Match::default()
                }
            }
            other => index::Match {
                exact: name_hit(index, other, cutoff),
                ..index::Match::default()
            },
        }
    }

    /// Whether `observable` hits on `index` at all: the hot path's question.
    fn hit(&self, index: &Index, observable: &Observable) -> bool {
        let cutoff = self.cutoff.load(Ordering::Relaxed);
        match observable {
            Observable::Ip(ip) => index.hit(*ip, cutoff),
            Observable::Domain(d) => index
                .domain_match(d, self.policy.subdomains, cutoff)
                .is_hit(),
            other => name_hit(index, other, cutoff),
        }
    }
}

/// The mirror intelligence: every server's mirror, and the answers
/// composed from them.
#[derive(Clone)]
pub struct Mirror {
    inner: Arc<Inner>,
}

struct Inner {
    servers: Vec<Arc<ServerMirror>>,
    /// Answers for IPs that hit (or asked before a first sync), as events
    /// need them: every server's part, chained.
    composed: moka::sync::Cache<Observable, Hits>,
    /// Bumped at every change of a server's index: memos and composed
    /// answers from before are stale.
    generation: AtomicU64,
    detail_timeout: Duration,
    empty: Hits,
}

/// How long a composed answer is kept: a partial one only briefly, so
/// that the details are asked for again once MISP is back.
struct ComposedExpiry {
    hit: Duration,
    miss: Duration,
}

const PARTIAL_FOR: Duration = Duration::from_secs(30);

impl moka::Expiry<Observable, Hits> for ComposedExpiry {
    fn expire_after_create(&self, _: &Observable, v: &Hits, _: Instant) -> Option<Duration> {
        Some(if v.parts().any(|p| p.partial) {
            PARTIAL_FOR
        } else if v.is_empty() && v.more.is_none() {
            self.miss
        } else {
            self.hit
        })
    }
}

impl Mirror {
    /// A mirror over `servers`, each with its detail [`Lookup`] and store.
    pub fn new(
        cfg: &MispConfig,
        servers: Vec<(String, MispConfig, Lookup, Arc<Mutex<store::Store>>)>,
    ) -> Mirror {
        let servers = servers
            .into_iter()
            .enumerate()
            .map(|(position, (name, m, query, store))| {
                let s = ServerMirror {
                    name: name.into(),
                    position,
                    index: ArcSwapOption::empty(),
                    query,
                    store,
                    policy: Policy::from_config(&m),
                    filters: (*m.sync).clone(),
                    cutoff: AtomicU32::new(0),
                    attributes: AtomicU64::new(0),
                    last_sync: std::sync::atomic::AtomicI64::new(0),
                    sync_failing: Mutex::new(None),
                };
                s.tick();
                Arc::new(s)
            })
            .collect();
        Mirror {
            inner: Arc::new(Inner {
                servers,
                composed: moka::sync::Cache::builder()
                    .max_capacity(*cfg.cache_max_entries)
                    .expire_after(ComposedExpiry {
                        hit: Duration::from_secs(cfg.cache_ttl_secs),
                        miss: Duration::from_secs(cfg.negative_cache_ttl_secs),
                    })
                    .build(),
                generation: AtomicU64::new(0),
                detail_timeout: Duration::from_secs(*cfg.detail_timeout_secs),
                empty: Arc::new(LookupResult::default()),
            }),
        }
    }

    pub fn servers(&self) -> &[Arc<ServerMirror>] {
        &self.inner.servers
    }

    /// The first server's detail lookup (its breaker and given-up values
    /// are what the error reporter tells Wazuh about).
    pub fn primary(&self) -> &Lookup {
        &self.inner.servers[0].query
    }

    /// Makes `index` the one `server` matches against. Lookups see the
    /// old one or the new one, whole.
    /// Seals it first if the caller has not (see [`Index::seal`]).
    pub fn swap(&self, server: &ServerMirror, mut index: Index) {
        if !index.is_sealed() {
            index.seal();
        }
        server.index.store(Some(Arc::new(index)));
        self.inner.generation.fetch_add(1, Ordering::Relaxed);
        self.inner.composed.invalidate_all();
    }

    /// Whether `observable` hits on `server`'s `index` at all: the hot
    /// path's question.
    pub fn hit_on(&self, server: &ServerMirror, index: &Index, observable: &Observable) -> bool {
        server.hit(index, observable)
    }

    /// What `observable` hits on `server`'s `index`, by the hit policy.
    pub fn matches_on(
        &self,
        server: &ServerMirror,
        index: &Index,
        observable: &Observable,
    ) -> index::Match {
        server.matches(index, observable)
    }

    fn owner(&self) -> (usize, u64) {
        (
            Arc::as_ptr(&self.inner) as usize,
            self.inner.generation.load(Ordering::Relaxed),
        )
    }

    /// Everything every server knows about `observable`, waiting on MISP
    /// for a hit's details at most `misp.detail_timeout_secs`.
    pub async fn answer(&self, observable: &Observable) -> Result<Hits, LookupError> {
        let mut parts: Vec<LookupResult> = Vec::new();
        for s in &self.inner.servers {
            let part = match s.index() {
                Some(index) => {
                    let m = self.matches_on(s, &index, observable);
                    if !m.is_hit() {
                        continue;
                    }
                    self.details(s, &index, observable, m).await?
                }
                None => {
                    let hits = s.query.get(observable).await?;
                    if hits.is_empty() {
                        continue;
                    }
                    LookupResult {
                        attributes: hits.attributes.clone(),
                        truncated: hits.truncated,
                        ..LookupResult::default()
                    }
                }
            };
            if part.attributes.is_empty() {
                continue;
            }
            parts.push(LookupResult {
                server: Some(s.name.clone()),
                server_position: s.position,
                ..part
            });
        }
        let mut chained: Option<Hits> = None;
        while let Some(mut part) = parts.pop() {
            part.more = chained.take();
            chained = Some(Arc::new(part));
        }
        let hits = chained.unwrap_or_else(|| self.inner.empty.clone());
        self.inner.composed.insert(observable.clone(), hits.clone());
        Ok(hits)
    }

    async fn details(
        &self,
        s: &ServerMirror,
        index: &Index,
        observable: &Observable,
        m: index::Match,
    ) -> Result<LookupResult, LookupError> {
        let mut subjects = Vec::with_capacity(2);
        // Asked by every text MISP stores the value under (MISP compares
        // `value` with the stored text).
        let stored = |kind: index::NameKind, o: &Observable| {
            index
                .name_texts(kind, o.text().as_str())
                .into_iter()
                .map(|text| Subject::Stored {
                    observable: o.clone(),
                    text: text.into(),
                })
                .collect::<Vec<_>>()
        };
        if m.exact {
            subjects.push(Subject::Observable(observable.clone()));
            match observable {
                Observable::Domain(_) => {
                    subjects.extend(stored(index::NameKind::Domain, observable));
                    subjects.extend(stored(index::NameKind::Hostname, observable));
                }
                o => subjects.extend(name_kind(o).map(|k| stored(k, o)).unwrap_or_default()),
            }
        }
        if let Some(n) = m.network {
            subjects.extend(
                index
                    .network_texts(&n)
                    .iter()
                    .filter_map(|t| Subject::parse(t)),
            );
        }
        if let Some(parent) = &m.parent_domain {
            let parent = Observable::Domain(parent.clone());
            subjects.extend(stored(index::NameKind::Domain, &parent));
            subjects.push(Subject::Observable(parent));
        }
        // With MISP known to be down, waiting would only delay the event.
        let wait = if s.query.breaker().is_open() {
            Duration::ZERO
        } else {
            self.inner.detail_timeout
        };
        for sub in &subjects {
            s.query.forget_miss(sub).await;
        }
        let asked = futures::future::join_all(subjects.iter().map(|sub| s.query.get_subject(sub)));
        let answers = tokio::time::timeout(wait, asked).await;
        let mut part = LookupResult {
            matched_network: m.network,
            matched_domain: m.parent_domain.clone(),
            ..LookupResult::default()
        };
        let answers = answers.unwrap_or_default();
        let complete = answers.len() == subjects.len() && answers.iter().all(Result::is_ok);
        if answers
            .iter()
            .any(|a| matches!(a, Err(LookupError::Abandoned(_))))
        {
            return Err(super::Abandoned.into());
        }
        if complete {
            for hits in answers.into_iter().flatten() {
                part.truncated |= hits.truncated;
                for a in &hits.attributes {
                    // MISP's verdict decides where it gives one; its
                    // score against the threshold otherwise.
                    let decayed = s.policy.min_score.is_some()
                        && a.decayed.unwrap_or_else(|| {
                            s.policy
                                .min_score
                                .zip(a.decay_score)
                                .is_some_and(|(min, score)| score < min)
                        });
                    // MISP's answer is newer than the mirror: an attribute
                    // that stopped passing the filters since the last sync
                    // makes no event.
                    if !decayed && sync::passes(a, &s.filters) && !part.attributes.contains(a) {
                        part.attributes.push(a.clone());
                    }
                }
            }
            if m.network.is_some()
                && !part
                    .attributes
                    .iter()
                    .any(|a| index::Key::of_value(&a.value).any(|k| k.is_network()))
            {
                part.matched_network = None;
            }
            if let Some(parent) = &m.parent_domain {
                let covered = part.attributes.iter().any(|a| {
                    super::covers_subdomains(&a.kind)
                        && a.value
                            .split('|')
                            .next()
                            .and_then(crate::extract::domain::normalise)
                            .as_ref()
                            == Some(parent)
                });
                if !covered {
                    part.matched_domain = None;
                }
            }
            return Ok(part);
        }
        // MISP did not give the details in time: what the mirror holds.
        let texts: Vec<String> = subjects.iter().map(ToString::to_string).collect();
        let store = s.store.clone();
        let name = s.name.to_string();
        let rows = tokio::task::spawn_blocking(move || {
            store
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .rows_for(&name, &texts)
        })
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
        part.partial = true;
        part.attributes = rows.into_iter().map(attribute_of_row).collect();
        tracing::warn!(
            server = %s.name,
            value = %observable,
            attributes = part.attributes.len(),
            "MISP did not give a hit's details within misp.detail_timeout_secs; the event is built from the mirror (misp_data.summary.partial)"
        );
        Ok(part)
    }
}

/// Whether a URL or hash observable hits on `index`.
fn name_hit(index: &Index, o: &Observable, cutoff: u32) -> bool {
    name_kind(o).is_some_and(|k| index.name_hit(k, o.text().as_str(), cutoff))
}

/// The named key kind a URL or hash observable is filed under.
fn name_kind(o: &Observable) -> Option<index::NameKind> {
    use crate::observable::Kind;
    match o.kind() {
        Kind::Url => Some(index::NameKind::Url),
        k @ (Kind::Md5 | Kind::Sha1 | Kind::Sha256) => Some(index::NameKind::Hash(k)),
        Kind::Ip | Kind::Domain => None,
    }
}

/// A stored row as the attribute an event shows.
fn attribute_of_row(r: store::Row) -> Attribute {
    Attribute {
        id: r.id,
        uuid: r.uuid,
        event_id: r.event_id.clone(),
        kind: r.kind,
        category: r.category,
        to_ids: r.to_ids,
        value: r.value,
        timestamp: r.timestamp.to_string(),
        tags: r
            .tags
            .into_iter()
            .map(|name| Tag {
                name,
                ..Tag::default()
            })
            .collect(),
        event: Some(EventInfo {
            id: r.event_id,
            uuid: r.event_uuid,
            info: r.event_info,
            org_name: "Unknown".into(),
            ..EventInfo::default()
        }),
        ..Attribute::default()
    }
}

impl Intelligence for Mirror {
    type Memo = Recent;

    /// A miss costs the index lookups only; a hit (or a server not synced
    /// yet) goes through the worker's memo to the composed answers.
    fn known(&self, observable: &Observable, memo: &mut Recent) -> Option<Hits> {
        let mut miss = true;
        for s in &self.inner.servers {
            match s.index.load().as_deref() {
                Some(index) if !s.hit(index, observable) => {}
                _ => miss = false,
            }
        }
        if miss {
            return Some(self.inner.empty.clone());
        }
        let memo = memo.current(self.owner(), Instant::now());
        if let Some(h) = memo.get(observable) {
            return Some(h.clone());
        }
        let hits = self.inner.composed.get(observable)?;
        memo.remember(observable, &hits);
        Some(hits)
    }

    fn lookup(
        &self,
        observable: &Observable,
    ) -> impl std::future::Future<Output = Result<Hits, LookupError>> + Send {
        self.answer(observable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lookup::mirror::index::{Key, Record};

    #[test]
    fn the_decay_model_is_misps_nids_simple_model() {
        // 120 days' lifetime, speed 2, threshold 30 of 80: decayed after
        // 120 * (1 - 30/80)^2 = 46.875 days.
        let days = DECAY_MODEL.expires_after().as_secs_f64() / 86400.0;
        assert!((days - 46.875).abs() < 1e-6, "{days}");
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/corpus/misp/decaying-models/nids-simple-model.json");
        let Ok(text) = std::fs::read_to_string(&path) else {
            eprintln!(
                "SKIPPED: {} not found (../shared is not beside the checkout)",
                path.display()
            );
            return;
        };
        let model: serde_json::Value = serde_json::from_str(&text).unwrap();
        let p = &model["parameters"];
        assert_eq!(p["lifetime"].as_f64(), Some(DECAY_MODEL.lifetime_days));
        assert_eq!(p["decay_speed"].as_f64(), Some(DECAY_MODEL.decay_speed));
        assert_eq!(p["threshold"].as_f64(), Some(DECAY_MODEL.threshold));
        assert_eq!(
            p["default_base_score"].as_f64(),
            Some(DECAY_MODEL.base_score)
        );
    }

    #[test]
    fn the_hit_policy_takes_the_shorter_of_decay_and_maximum_age() {
        let mut m = MispConfig::default();
        assert_eq!(Policy::from_config(&m).max_age, None);
        m.decay = true;
        assert_eq!(
            Policy::from_config(&m).max_age,
            Some(DECAY_MODEL.expires_after())
        );
        m.sync.0.max_age_days = 10;
        let p = Policy::from_config(&m);
        assert_eq!(p.max_age, Some(Duration::from_secs(10 * 86400)));
        assert_eq!(p.cutoff(100 * 86400), 90 * 86400);
        m.decay = false;
        m.sync.0.max_age_days = 400;
        assert_eq!(
            Policy::from_config(&m).max_age,
            Some(Duration::from_secs(400 * 86400))
        );
    }

    fn index_of(ips: impl Iterator<Item = String>) -> Index {
        let mut ix = Index::default();
        for (i, ip) in ips.enumerate() {
            let mut uuid = [0u8; 16];
            uuid[..8].copy_from_slice(&(i as u64).to_be_bytes());
            ix.insert(Key::of_value(&ip).next().unwrap(), Record::new(uuid, 1));
        }
        ix
    }

    /// Lookups running while the index is swapped back and forth see one
    /// index or the other, whole: never a mix of the two.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_swap_under_concurrent_lookups_is_atomic() {
        let cfg = MispConfig {
            url: "http://127.0.0.1:9".into(),
            ..MispConfig::default()
        };
        let client =
            super::super::MispClient::new(&cfg, &crate::config::Secret::new("k3y")).unwrap();
        let lookup = Lookup::start(client, &cfg, Arc::new(crate::stats::Stats::default()));
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Mutex::new(store::Store::open(dir.path()).unwrap()));
        let mirror = Mirror::new(&cfg, vec![("misp".into(), cfg.clone(), lookup, store)]);
        let a: Vec<String> = (0..200)
            .map(|i| format!("185.1.{}.{}", i / 250, i % 250 + 1))
            .collect();
        let b: Vec<String> = (0..200)
            .map(|i| format!("185.2.{}.{}", i / 250, i % 250 + 1))
            .collect();
        let (ia, ib) = (index_of(a.iter().cloned()), index_of(b.iter().cloned()));
        let server = mirror.servers()[0].clone();
        mirror.swap(&server, ia.clone());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let split = a.len();
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (mirror, server, stop) = (mirror.clone(), server.clone(), stop.clone());
                let probes: Vec<Observable> =
                    a.iter().chain(&b).map(|s| s.parse().unwrap()).collect();
                std::thread::spawn(move || {
                    let mut seen = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let ix = server.index().unwrap();
                        let hits: Vec<bool> = probes
                            .iter()
                            .map(|o| mirror.hit_on(&server, &ix, o))
                            .collect();
                        let (in_a, in_b) = hits.split_at(split);
                        let whole_a = in_a.iter().all(|h| *h) && !in_b.iter().any(|h| *h);
                        let whole_b = in_b.iter().all(|h| *h) && !in_a.iter().any(|h| *h);
                        assert!(whole_a || whole_b, "a lookup saw a mix of two indexes");
                        seen += 1;
                    }
                    seen
                })
            })
            .collect();
        for i in 0..200 {
            mirror.swap(&server, if i % 2 == 0 { ib.clone() } else { ia.clone() });
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            assert!(r.join().unwrap() > 0);
        }
    }
}
