//! One server's sync: the task that keeps its mirror (index and store) up
//! to date with MISP.
//!
//! - At start, the index is rebuilt from the store, if a full sync of the
//!   same url and filters had completed: no download.
//! - **Full sync** (first, then every `misp.full_sync_interval_secs`):
//!   every page of `restSearch` with the filters, written into a new
//!   generation of the store and a new index beside the live ones; both
//!   become live at the end, at once. This is how deletions and
//!   attributes that stopped passing the filters leave: a normal API key
//!   never sees them go.
//! - **Incremental sync** (every `misp.sync_interval_secs`): what changed
//!   since the cursor minus `misp.sync_overlap_secs`, by each of MISP's
//!   clocks in turn ([`Window`]: the attribute's timestamp, the publish
//!   timestamp, and the event's when the filters read the event's state),
//!   merged by uuid into a copy of
//!   the index that then replaces it. Soft-deleted attributes and those
//!   that stopped passing the filters come back flagged and leave.
//! - **The cursor** is MISP's clock at the start of the sync (its `Date`
//!   header), never an attribute's timestamp: an attribute dated in the
//!   future cannot move it ahead, and when MISP's clock steps back the
//!   sync asks again from the new clock.
//! - **Paging** ends on the page where the attributes returned plus those
//!   MISP dropped after its `LIMIT` (`X-Skipped-Elements-Count`: its
//!   warninglists filter rows after paging, `MispAttribute::fetchAttributes`)
//!   fall below the page size: a short or even empty page is no end.
//!
//! Pages are streamed: one page is held at a time, so memory is the
//! mirror plus one page however large MISP's set is. A failing request is
//! retried with backoff; a sync that still fails leaves the last good
//! mirror in force, records the error, and is tried again next interval.

use super::index::{uuid_bytes, Index, Key, Record};
use super::store::{Row, Store};
use super::{Mirror, ServerMirror};
use crate::config::SyncFilters;
use crate::lookup::client::{MispClient, MispError, SyncPage, SyncQuery, Window};
use crate::lookup::model::Attribute;
use crate::stats::Stats;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct SyncSettings {
    pub interval: Duration,
    pub overlap: Duration,
    pub full_interval: Duration,
    pub page_size: u32,
    pub max_indicators: u64,
    pub retries: u32,
    pub filters: SyncFilters,
    pub guards: Guards,
}

/// What a real MISP can hold that the mirror refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guards {
    /// `misp.min_network_prefix_v4` / `_v6`: broader networks are skipped.
    pub min_prefix_v4: u8,
    pub min_prefix_v6: u8,
}

impl Default for Guards {
    /// The config's defaults.
    fn default() -> Self {
        SyncSettings::from_config(&crate::config::MispConfig::default()).guards
    }
}

/// Why an attribute that passes the filters is not mirrored: `mirror
/// status` counts each under `skipped`, so none silently disappears.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Skip {
    /// A `url` whose value names no host (`igfxtray.exe`).
    NotAUrl,
    /// A value the mirror cannot read for its type.
    Unreadable,
    /// A network broader than the guards allow.
    BroadNetwork,
    /// New in an incremental sync while the mirror already held
    /// `misp.max_indicators`.
    OverMaxIndicators,
}

impl Skip {
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::NotAUrl => "not_a_url",
            Skip::Unreadable => "unreadable_value",
            Skip::BroadNetwork => "broad_network",
            Skip::OverMaxIndicators => "over_max_indicators",
        }
    }
}

/// A page of MISP's attributes sorted for the mirror.
#[derive(Debug, Default)]
pub struct Sorted {
    pub rows: Vec<Row>,
    /// The uuids to drop from the mirror: soft-deleted, failing the
    /// filters, or skipped.
    pub leaving: Vec<String>,
    /// Attributes that pass the filters but are not mirrored, and why.
    pub skipped: Vec<(String, Skip)>,
}

impl SyncSettings {
    pub fn from_config(m: &crate::config::MispConfig) -> SyncSettings {
        SyncSettings {
            interval: Duration::from_secs(*m.sync_interval_secs),
            overlap: Duration::from_secs(*m.sync_overlap_secs),
            full_interval: Duration::from_secs(*m.full_sync_interval_secs),
            page_size: *m.sync_page_size,
            max_indicators: *m.max_indicators,
            retries: m.retries,
            filters: (*m.sync).clone(),
            guards: Guards {
                min_prefix_v4: *m.min_network_prefix_v4,
                min_prefix_v6: *m.min_network_prefix_v6,
            },
        }
    }
}

/// Why a sync round stopped short.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Misp(#[from] MispError),
    #[error(transparent)]
    Store(#[from] super::store::StoreError),
    #[error("shutting down")]
    Stopped,
}

impl SyncError {
    fn kind(&self) -> &'static str {
        match self {
            SyncError::Misp(e) => e.kind(),
            SyncError::Store(_) => "store",
            SyncError::Stopped => "stopped",
        }
    }
}

/// What the url and filters a mirror was built with come to: a mirror
/// built with others is rebuilt.
pub fn fingerprint(client: &MispClient, s: &SyncSettings) -> String {
    serde_json::json!({
        "url": client.endpoint().as_str(),
        "warninglist": client.query_settings().enforce_warninglist,
        "to_ids_only": s.filters.to_ids_only,
        "published_only": s.filters.published_only,
        "include_tags": s.filters.include_tags,
        "exclude_tags": s.filters.exclude_tags,
        "types": crate::observable::all_misp_types(),
    })
    .to_string()
}

pub struct Syncer {
    pub mirror: Mirror,
    pub server: Arc<ServerMirror>,
    pub settings: SyncSettings,
    pub stats: Arc<Stats>,
    /// Where the indicators a sync finds new go, for retro-hunting.
    pub hunts: Option<HuntTrigger>,
}

/// Retro-hunting's side of a sync: which new attributes to keep for the
/// hunter, and how to wake it.
#[derive(Debug, Clone)]
pub struct HuntTrigger {
    /// Woken after a sync that kept new indicators; never waited on, so a
    /// slow hunt cannot stall a sync (the indicators wait in the store's
    /// `pending_hunts`).
    pub wake: Arc<tokio::sync::Notify>,
    /// An attribute whose timestamp is older than this (seconds) is not
    /// new intelligence.
    pub window_secs: i64,
    /// Report the first full sync of an empty mirror too.
    pub on_first_sync: bool,
}

/// How a sync tells an attribute new to the mirror.
#[derive(Clone)]
enum Novelty {
    /// Not collecting.
    Off,
    /// An incremental sync: a uuid the live generation did not hold, or
    /// one whose value changed.
    Incremental,
    /// A full sync: not in the generation it replaces, with this value
    /// (`None`: a first sync, everything is new). The store answers by
    /// its primary key: O(log n) a row, however many attributes share a
    /// value (a walk of the index's chain would cost their square).
    Full(Option<i64>),
}

/// Which rows a sync keeps as pending hunts.
#[derive(Clone)]
struct Collecting {
    novelty: Novelty,
    /// Older attributes (by MISP's timestamp) are no new intelligence.
    floor: i64,
}

impl Collecting {
    /// The generation whose rows tell what is new, when not the one
    /// written.
    fn compared_with(&self) -> Option<i64> {
        match self.novelty {
            Novelty::Full(previous) => previous,
            _ => None,
        }
    }

    /// Whether `row` is new, given the (type, value) it had `before`: in
    /// the generation written, or in [`Self::compared_with`].
    fn is_new(&self, row: &Row, before: Option<&(String, String)>) -> bool {
        if row.timestamp < self.floor {
            return false;
        }
        let changed =
            || before.is_none_or(|(kind, value)| *value != row.value || *kind != row.kind);
        match &self.novelty {
            Novelty::Off => false,
            Novelty::Incremental | Novelty::Full(Some(_)) => changed(),
            Novelty::Full(None) => true,
        }
    }
}

/// A full or incremental sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Full,
    Incremental,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Full => "full",
            Kind::Incremental => "incremental",
        }
    }
}

impl Syncer {
    fn client(&self) -> Arc<MispClient> {
        self.server.query.client()
    }

    /// [`ServerMirror::on_store`], its errors as a sync's.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store, &str) -> Result<T, super::store::StoreError> + Send + 'static,
    ) -> Result<T, SyncError> {
        self.server
            .on_store(f)
            .await
            .ok_or(SyncError::Stopped)?
            .map_err(SyncError::from)
    }

    /// Syncs until `stop`. Returns only then.
    pub async fn run(self, stop: CancellationToken) {
        let name = self.server.name.to_string();
        if let Err(e) = self.blocking(|s, name| s.drop_stale(name)).await {
            tracing::warn!(server = %name, error = %e, "cannot drop what an interrupted full sync left in the store");
        }
        if let Err(e) = self.load().await {
            tracing::error!(server = %name, error = %e, "cannot load the mirror from its store; a full sync rebuilds it");
        }
        let mut last_full: Option<Instant> = None;
        loop {
            self.server.tick();
            let kind = self.due(&mut last_full).await;
            let started = Instant::now();
            let result = tokio::select! {
                _ = stop.cancelled() => return,
                r = self.sync(kind) => r,
            };
            let secs = started.elapsed().as_secs_f64();
            metrics::histogram!("wazuh_misp_mirror_sync_duration_seconds", "server" => name.clone(), "kind" => kind.as_str())
                .record(secs);
            match result {
                Ok(()) => {
                    self.server.sync_failed(None);
                    if kind == Kind::Full {
                        last_full = Some(Instant::now());
                    }
                    self.server
                        .last_sync
                        .store(chrono::Utc::now().timestamp(), Ordering::Relaxed);
                }
                Err(SyncError::Stopped) => return,
                Err(e) => {
                    if let SyncError::Misp(m) = &e {
                        self.server.sync_failed(Some(m));
                    }
                    metrics::counter!("wazuh_misp_mirror_sync_errors_total", "server" => name.clone(), "kind" => e.kind())
                        .increment(1);
                    tracing::warn!(
                        server = %name,
                        sync = kind.as_str(),
                        error = %e,
                        "mirror sync failed; the last good mirror stays in force, next try in misp.sync_interval_secs"
                    );
                    let message = e.to_string();
                    let _ = self
                        .blocking(move |s, name| s.record_error(name, &message))
                        .await;
                }
            }
            self.publish();
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.settings.interval) => {}
            }
        }
    }

    fn publish(&self) {
        let name = self.server.name.to_string();
        let last = self.server.last_sync.load(Ordering::Relaxed);
        if last > 0 {
            metrics::gauge!("wazuh_misp_mirror_last_sync_timestamp_seconds", "server" => name.clone())
                .set(last as f64);
            metrics::gauge!("wazuh_misp_mirror_stale_seconds", "server" => name.clone())
                .set((chrono::Utc::now().timestamp() - last).max(0) as f64);
        }
        if let Some(ix) = self.server.index() {
            metrics::gauge!("wazuh_misp_mirror_attributes", "server" => name.clone())
                .set(self.server.attributes.load(Ordering::Relaxed) as f64);
            metrics::gauge!("wazuh_misp_mirror_networks", "server" => name)
                .set(ix.networks() as f64);
        }
    }

    /// Which sync is due: a full one when no full sync of these settings
    /// has completed, or the last is `misp.full_sync_interval_secs` old.
    async fn due(&self, last_full: &mut Option<Instant>) -> Kind {
        let fp = fingerprint(&self.client(), &self.settings);
        let state = self.blocking(|s, name| s.server(name)).await.ok().flatten();
        let Some(state) = state else {
            return Kind::Full;
        };
        if !state.complete || state.fingerprint != fp || self.server.index().is_none() {
            return Kind::Full;
        }
        let full_age = match last_full {
            Some(t) => t.elapsed(),
            None => {
                let age = chrono::Utc::now().timestamp() - state.last_full_sync.unwrap_or(0);
                Duration::from_secs(age.max(0) as u64)
            }
        };
        if full_age >= self.settings.full_interval {
            Kind::Full
        } else {
            Kind::Incremental
        }
    }

    /// Rebuilds the index from the store, when a complete mirror of the
    /// same url and filters is there.
    pub async fn load(&self) -> Result<(), SyncError> {
        let fp = fingerprint(&self.client(), &self.settings);
        let loaded = self
            .blocking(move |s, name| {
                let Some(state) = s.server(name)? else {
                    return Ok(None);
                };
                if !state.complete || state.fingerprint != fp {
                    return Ok(None);
                }
                let last_sync = state.last_sync.unwrap_or(0);
                let mut index = Index::with_capacity(state.attributes.max(0) as usize);
                let mut count = 0u64;
                s.each(name, |kind, value, uuid, ts| {
                    count += 1;
                    index.file(kind, value, Record::new(uuid_bytes(uuid), seen(ts)));
                })?;
                Ok(Some((index, count, last_sync)))
            })
            .await?;
        if let Some((index, count, last_sync)) = loaded {
            self.server.last_sync.store(last_sync, Ordering::Relaxed);
            tracing::info!(
                server = %self.server.name,
                attributes = count,
                networks = index.networks(),
                "mirror loaded from its store"
            );
            self.server.attributes.store(count, Ordering::Relaxed);
            self.swap_in(index).await;
            self.publish();
        }
        Ok(())
    }

    /// Makes `index` the live one, sealed on the blocking pool first: for a
    /// million addresses that is tens of milliseconds, too long to hold a
    /// runtime thread.
    async fn swap_in(&self, mut index: Index) {
        let sealed = tokio::task::spawn_blocking(move || {
            index.seal();
            index
        })
        .await;
        match sealed {
            Ok(index) => self.mirror.swap(&self.server, index),
            // Only a panic in seal: the live index stays.
            Err(e) => {
                tracing::error!(server = %self.server.name, error = %e, "cannot prepare the new mirror index; the previous one stays in force")
            }
        }
    }

    pub async fn sync(&self, kind: Kind) -> Result<(), SyncError> {
        match kind {
            Kind::Full => self.full().await,
            Kind::Incremental => self.incremental().await,
        }
    }

    /// The next page at `pager`, retried with backoff `misp.retries` times.
    /// A page over `misp.max_response_bytes` is asked for again in halves.
    async fn page(
        &self,
        pager: &mut Pager,
        since: Option<(Window, i64)>,
    ) -> Result<SyncPage, SyncError> {
        let mut attempt = 0;
        loop {
            let client = self.client();
            let q = SyncQuery {
                filters: &self.settings.filters,
                page: pager.page,
                limit: pager.limit,
                since,
            };
            self.stats.sync_requests.fetch_add(1, Ordering::Relaxed);
            match client.sync_page(&q).await {
                Ok(page) => {
                    pager.advance(page.attributes.len(), page.skipped)?;
                    return Ok(page);
                }
                Err(MispError::BadBody(m)) if m.contains("max_response_bytes") && pager.halve() => {
                    tracing::warn!(
                        server = %self.server.name,
                        limit = pager.limit,
                        "a sync page is over misp.max_response_bytes; asking for smaller pages (lower misp.sync_page_size)"
                    );
                }
                Err(e) if attempt < self.settings.retries => {
                    let delay = match &e {
                        MispError::RateLimited {
                            retry_after: Some(d),
                        } => (*d).min(Duration::from_secs(300)),
                        _ => Duration::from_millis(500) * 2u32.pow(attempt.min(5)),
                    };
                    tracing::debug!(server = %self.server.name, error = %e, page = pager.page, "sync page failed; retrying");
                    attempt += 1;
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The oldest timestamp worth asking for, by `max_age_days`.
    fn age_floor(&self) -> Option<i64> {
        (self.settings.filters.max_age_days > 0).then(|| {
            chrono::Utc::now().timestamp() - (self.settings.filters.max_age_days * 86400) as i64
        })
    }

    async fn full(&self) -> Result<(), SyncError> {
        let started = Instant::now();
        let fp = fingerprint(&self.client(), &self.settings);
        let name = self.server.name.to_string();
        let f = fp.clone();
        let (generation, live_generation) = self
            .blocking(move |s, name| {
                let live = s
                    .server(name)?
                    .filter(|st| st.complete)
                    .map(|st| st.generation);
                Ok((s.begin_full(name, &f)?, live))
            })
            .await?;
        let live = self.server.index();
        let previous = live.as_ref().map_or(0, |i| i.len());
        let collected = self.collecting(match (live, live_generation) {
            (Some(_), Some(g)) => Novelty::Full(Some(g)),
            (Some(_), None) => Novelty::Off,
            (None, _) if self.hunts.as_ref().is_some_and(|h| h.on_first_sync) => {
                Novelty::Full(None)
            }
            (None, _) => Novelty::Off,
        });
        let mut index = Index::with_capacity(previous);
        let mut cursor = None;
        let mut count = 0u64;
        let mut tally = std::collections::BTreeMap::new();
        let since = self.age_floor().map(|floor| (Window::Attribute, floor));
        let mut pager = Pager::new(self.settings.page_size);
        loop {
            let page = self.page(&mut pager, since).await?;
            cursor = cursor.or(Some(misp_clock(&page)));
            let sorted = rows_of(
                page.attributes,
                &self.settings.filters,
                self.settings.guards,
            );
            let rows = sorted.rows;
            self.skip(generation, sorted.skipped, &mut tally).await?;
            count += rows.len() as u64;
            if count > self.settings.max_indicators {
                tracing::error!(
                    server = %name,
                    max = self.settings.max_indicators,
                    "MISP holds more indicators than misp.max_indicators; the mirror keeps the first ones"
                );
                break;
            }
            index = self.write(generation, rows, index, &collected).await?.0;
            if pager.done {
                break;
            }
        }
        self.log_skipped(&tally);
        let now = chrono::Utc::now().timestamp();
        let cursor = cursor.unwrap_or(now);
        self.blocking(move |s, name| s.finish_full(name, &fp, generation, cursor, now))
            .await?;
        let attributes = self.count().await;
        tracing::info!(
            server = %name,
            attributes,
            networks = index.networks(),
            pages = pager.page - 1,
            secs = started.elapsed().as_secs_f64(),
            "mirror full sync done"
        );
        self.swap_in(index).await;
        self.wake_hunter();
        Ok(())
    }

    fn collecting(&self, novelty: Novelty) -> Collecting {
        let (novelty, floor) = match &self.hunts {
            Some(h) => (novelty, chrono::Utc::now().timestamp() - h.window_secs),
            None => (Novelty::Off, i64::MAX),
        };
        Collecting { novelty, floor }
    }

    /// Wakes the hunter, which reads what is pending from the store.
    fn wake_hunter(&self) {
        if let Some(h) = &self.hunts {
            h.wake.notify_one();
        }
    }

    async fn count(&self) -> u64 {
        let n = self
            .blocking(|s, name| Ok(s.server(name)?.map_or(0, |st| st.attributes)))
            .await
            .unwrap_or(0)
            .max(0) as u64;
        self.server.attributes.store(n, Ordering::Relaxed);
        n
    }

    /// Writes `rows` into the store's `generation` and files them in
    /// `index`, moving any whose value changed. Also returns the uuids new
    /// to the generation.
    async fn write(
        &self,
        generation: i64,
        rows: Vec<Row>,
        mut index: Index,
        collecting: &Collecting,
    ) -> Result<(Index, Vec<String>), SyncError> {
        let rule = collecting.clone();
        let found_at = chrono::Utc::now().timestamp();
        let (rows, replaced) = self
            .blocking(move |s, name| {
                let replaced = s.write_noting(
                    name,
                    generation,
                    &rows,
                    rule.compared_with(),
                    |r, before| rule.is_new(r, before),
                    found_at,
                )?;
                Ok((rows, replaced))
            })
            .await?;
        let mut new = Vec::new();
        for (row, old) in rows.iter().zip(replaced) {
            let uuid = uuid_bytes(&row.uuid);
            let record = Record::new(uuid, seen(row.timestamp));
            match old {
                Some((kind, value)) => {
                    index.unfile(&kind, &value, &uuid);
                    index.file(&row.kind, &row.value, record);
                }
                None => {
                    new.push(row.uuid.clone());
                    index.file_new(&row.kind, &row.value, record);
                }
            }
        }
        Ok((index, new))
    }

    /// Records what a page skipped, and counts it for the sync's log line.
    async fn skip(
        &self,
        generation: i64,
        skipped: Vec<(String, Skip)>,
        tally: &mut std::collections::BTreeMap<Skip, u64>,
    ) -> Result<(), SyncError> {
        if skipped.is_empty() {
            return Ok(());
        }
        for (_, why) in &skipped {
            *tally.entry(*why).or_default() += 1;
        }
        self.blocking(move |s, name| {
            let named: Vec<(String, &str)> = skipped
                .into_iter()
                .map(|(uuid, why)| (uuid, why.as_str()))
                .collect();
            s.skip(name, generation, &named)
        })
        .await
    }

    /// Says once per sync what it skipped, and why.
    fn log_skipped(&self, tally: &std::collections::BTreeMap<Skip, u64>) {
        if tally.is_empty() {
            return;
        }
        let counts: Vec<String> = tally
            .iter()
            .map(|(why, n)| format!("{}: {n}", why.as_str()))
            .collect();
        tracing::warn!(
            server = %self.server.name,
            skipped = %counts.join(", "),
            "MISP attributes that pass the filters but are not mirrored (broad_network: broader than misp.min_network_prefix_v4/_v6; not_a_url: a url attribute naming no host; over_max_indicators: beyond misp.max_indicators); mirror status counts them"
        );
    }

    async fn incremental(&self) -> Result<(), SyncError> {
        let name = self.server.name.to_string();
        let Some(state) = self.blocking(|s, name| s.server(name)).await? else {
            return self.full().await;
        };
        let Some(current) = self.server.index() else {
            return self.full().await;
        };
        let overlap = self.settings.overlap.as_secs() as i64;
        let mut from = (state.cursor - overlap).max(0);
        let mut index: Option<Index> = None;
        let collected = self.collecting(Novelty::Incremental);
        let mut cursor = None;
        let mut changes = 0usize;
        let mut held = state.attributes.max(0) as u64;
        let mut tally = std::collections::BTreeMap::new();
        let needed = Window::needed(&self.settings.filters);
        let mut windows = needed.iter();
        while let Some(&window) = windows.next() {
            let since = match (window, self.age_floor()) {
                (Window::Attribute, Some(floor)) => from.max(floor),
                _ => from,
            };
            let mut pager = Pager::new(self.settings.page_size);
            loop {
                let page = self.page(&mut pager, Some((window, since))).await?;
                if cursor.is_none() {
                    let clock = misp_clock(&page);
                    cursor = Some(clock);
                    if clock < state.cursor {
                        // MISP's clock stepped back: what changed since
                        // carries timestamps under the cursor.
                        tracing::warn!(
                            server = %name,
                            cursor = state.cursor,
                            misp_clock = clock,
                            "MISP's clock is behind the mirror's cursor; syncing from MISP's clock"
                        );
                        from = (clock - overlap).max(0);
                        windows = needed.iter();
                        break;
                    }
                }
                let Sorted {
                    rows,
                    mut leaving,
                    mut skipped,
                } = rows_of(
                    page.attributes,
                    &self.settings.filters,
                    self.settings.guards,
                );
                changes += rows.len();
                if !rows.is_empty() {
                    let base = index.take().unwrap_or_else(|| (*current).clone());
                    let (written, new) =
                        self.write(state.generation, rows, base, &collected).await?;
                    index = Some(written);
                    held += new.len() as u64;
                    if held > self.settings.max_indicators {
                        let excess = (held - self.settings.max_indicators) as usize;
                        let over = &new[new.len().saturating_sub(excess)..];
                        held -= over.len() as u64;
                        skipped.extend(over.iter().map(|u| (u.clone(), Skip::OverMaxIndicators)));
                        leaving.extend_from_slice(over);
                    }
                }
                if !leaving.is_empty() {
                    let gone = self
                        .blocking(move |s, name| s.remove(name, state.generation, &leaving))
                        .await?;
                    // Most of what leaves was never mirrored (an attribute
                    // without the IDS flag in the overlap): the index is
                    // copied only when something really left.
                    if !gone.is_empty() {
                        changes += gone.len();
                        let ix = index.get_or_insert_with(|| (*current).clone());
                        for (uuid, kind, value) in gone {
                            ix.unfile(&kind, &value, &uuid_bytes(&uuid));
                        }
                    }
                }
                self.skip(state.generation, skipped, &mut tally).await?;
                if pager.done {
                    break;
                }
            }
        }
        let cursor = cursor.unwrap_or(state.cursor);
        self.log_skipped(&tally);
        let now = chrono::Utc::now().timestamp();
        self.blocking(move |s, name| s.finish_incremental(name, cursor, now))
            .await?;
        self.count().await;
        tracing::debug!(server = %name, changes, "mirror incremental sync done");
        if let Some(ix) = index {
            self.swap_in(ix).await;
        }
        self.wake_hunter();
        Ok(())
    }
}

/// Where a paged sync is. MISP pages by database row before it drops
/// warninglisted ones (`MispAttribute::fetchAttributes`), so pages are
/// counted by index, and the last one is the first whose rows (returned
/// plus skipped) fall short of the page size.
struct Pager {
    /// The next page, from 1.
    page: u32,
    /// The page size in force (halved when a page is too large).
    limit: u32,
    /// The last page has been read.
    done: bool,
}

impl Pager {
    fn new(limit: u32) -> Pager {
        Pager {
            page: 1,
            limit: limit.max(1),
            done: false,
        }
    }

    /// Takes the answer to the current page: `returned` attributes, and
    /// `skipped` rows MISP dropped after paging.
    fn advance(&mut self, returned: usize, skipped: u64) -> Result<(), MispError> {
        let rows = returned as u64 + skipped;
        if returned as u64 > u64::from(self.limit) {
            return Err(MispError::BadBody(format!(
                "MISP answered page {} with {returned} attributes for a limit of {}: it ignores paging, and the sync would never end",
                self.page, self.limit
            )));
        }
        self.done = rows < u64::from(self.limit);
        self.page += 1;
        Ok(())
    }

    /// Halves the page size, keeping the rows already read behind the
    /// next page. False when it cannot be halved.
    fn halve(&mut self) -> bool {
        if self.limit < 2 || self.limit % 2 != 0 {
            return false;
        }
        let read = u64::from(self.page - 1) * u64::from(self.limit);
        self.limit /= 2;
        self.page = (read / u64::from(self.limit)) as u32 + 1;
        true
    }
}

/// MISP's clock when it answered `page`, or ours when it sent no `Date`.
fn misp_clock(page: &SyncPage) -> i64 {
    page.date.unwrap_or_else(|| chrono::Utc::now().timestamp())
}

/// The time an indicator's age counts from, as the index holds it.
fn seen(ts: i64) -> u32 {
    ts.clamp(0, i64::from(u32::MAX)) as u32
}

/// MISP's attributes sorted into rows to mirror, uuids to drop (soft-
/// deleted, failing the filters: the sync asks MISP for everything and
/// filters here, see [`MispClient::sync_body`]) and attributes skipped
/// for what they hold.
pub fn rows_of(attributes: Vec<Attribute>, filters: &SyncFilters, guards: Guards) -> Sorted {
    let mut out = Sorted {
        rows: Vec::with_capacity(attributes.len()),
        ..Sorted::default()
    };
    for a in attributes {
        if a.uuid.is_empty() {
            continue;
        }
        if !passes(&a, filters) {
            out.leaving.push(a.uuid);
            continue;
        }
        let keys = Key::of_attribute(&a.kind, &a.value);
        let skip = if keys.is_empty() {
            Some(if a.kind == "url" {
                Skip::NotAUrl
            } else {
                Skip::Unreadable
            })
        } else if keys.iter().any(|k| too_broad(k, guards)) {
            Some(Skip::BroadNetwork)
        } else {
            None
        };
        if let Some(why) = skip {
            out.leaving.push(a.uuid.clone());
            out.skipped.push((a.uuid, why));
            continue;
        }
        let timestamp = a.timestamp.trim().parse().unwrap_or(0);
        let (event_uuid, event_info) = a
            .event
            .as_ref()
            .map(|e| (e.uuid.clone(), e.info.clone()))
            .unwrap_or_default();
        out.rows.push(Row {
            tags: a
                .tags
                .iter()
                .map(|t| t.name.clone())
                .filter(|n| !n.is_empty())
                .collect(),
            uuid: a.uuid,
            id: a.id,
            event_id: a.event_id,
            kind: a.kind,
            category: a.category,
            value: a.value,
            to_ids: a.to_ids,
            timestamp,
            event_uuid,
            event_info,
        });
    }
    out
}

fn too_broad(key: &Key, guards: Guards) -> bool {
    match key {
        Key::Net4(n) => n.prefix_len() < guards.min_prefix_v4,
        Key::Net6(n) => n.prefix_len() < guards.min_prefix_v6,
        _ => false,
    }
}

/// Whether MISP's attribute `a` passes the sync's filters: not
/// soft-deleted, flagged for IDS, its event published, and tagged as
/// asked (its own tags and, with `includeEventTags`, its event's).
pub fn passes(a: &Attribute, filters: &SyncFilters) -> bool {
    let tagged = |wanted: &[String]| {
        a.tags
            .iter()
            .chain(a.event.iter().flat_map(|e| &e.tags))
            .any(|t| wanted.iter().any(|x| x.eq_ignore_ascii_case(&t.name)))
    };
    !a.deleted
        && (!filters.to_ids_only || a.to_ids)
        // Without the event's context `published` is unknown: MISP sends
        // it whenever it is asked for (`includeContext`).
        && (!filters.published_only || a.event.as_ref().and_then(|e| e.published).unwrap_or(true))
        && (filters.include_tags.is_empty() || tagged(&filters.include_tags))
        && !tagged(&filters.exclude_tags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_short_by_its_warninglisted_rows_is_not_the_last() {
        // MISP 2.5 with two warninglists on, limit 2 (README of
        // ../shared/real-misp): 0 returned and 2 skipped, then 1 and 1.
        let mut p = Pager::new(2);
        p.advance(0, 2).unwrap();
        assert!(!p.done, "an empty page whose rows were all skipped");
        p.advance(1, 1).unwrap();
        assert!(!p.done);
        p.advance(1, 0).unwrap();
        assert!(p.done, "1 row of 2: the last page");
        assert_eq!(p.page, 4);
        let mut p = Pager::new(2);
        p.advance(0, 0).unwrap();
        assert!(p.done, "an empty page with nothing skipped ends it");
    }

    #[test]
    fn a_server_that_ignores_the_limit_is_an_error_not_an_endless_sync() {
        let mut p = Pager::new(2);
        let e = p.advance(3, 0).unwrap_err();
        assert!(e.to_string().contains("limit of 2"), "{e}");
    }

    #[test]
    fn halving_keeps_the_pages_already_read_behind() {
        let mut p = Pager::new(8);
        p.advance(8, 0).unwrap();
        p.advance(6, 2).unwrap();
        assert!(p.halve());
        assert_eq!((p.page, p.limit), (5, 4), "16 rows read: page 5 of 4");
        let mut odd = Pager::new(3);
        assert!(!odd.halve());
    }

    fn attribute(uuid: &str, f: impl FnOnce(&mut Attribute)) -> Attribute {
        let mut a = Attribute {
            uuid: uuid.into(),
            kind: "ip-dst".into(),
            value: "185.1.1.1".into(),
            to_ids: true,
            timestamp: "1".into(),
            ..Attribute::default()
        };
        f(&mut a);
        a
    }

    #[test]
    fn what_stopped_passing_the_filters_leaves_the_mirror() {
        use crate::lookup::model::{EventInfo, Tag};
        let filters = SyncFilters {
            to_ids_only: true,
            published_only: true,
            include_tags: vec![],
            exclude_tags: vec!["tlp:red".into()],
            max_age_days: 0,
        };
        let event = |published| EventInfo {
            published: Some(published),
            ..EventInfo::default()
        };
        let sorted = rows_of(
            vec![
                attribute("kept", |a| a.event = Some(event(true))),
                attribute("deleted", |a| a.deleted = true),
                attribute("not-ids", |a| a.to_ids = false),
                attribute("unpublished", |a| a.event = Some(event(false))),
                attribute("red", |a| {
                    let mut e = event(true);
                    e.tags.push(Tag {
                        name: "TLP:RED".into(),
                        ..Tag::default()
                    });
                    a.event = Some(e);
                }),
                attribute("no-key", |a| {
                    a.kind = "email-src".into();
                    a.value = "a@b.com".into();
                }),
            ],
            &filters,
            Guards::default(),
        );
        let uuids = |rows: &[Row]| rows.iter().map(|r| r.uuid.clone()).collect::<Vec<_>>();
        assert_eq!(uuids(&sorted.rows), ["kept"]);
        assert_eq!(
            sorted.leaving,
            ["deleted", "not-ids", "unpublished", "red", "no-key"]
        );
        assert_eq!(sorted.skipped, [("no-key".to_owned(), Skip::Unreadable)]);
    }

    #[test]
    fn broad_networks_and_values_that_are_no_url_are_skipped_and_counted() {
        let filters = SyncFilters::default();
        let sorted = rows_of(
            vec![
                attribute("any-v4", |a| a.value = "0.0.0.0/0".into()),
                attribute("any-v6", |a| a.value = "::/0".into()),
                attribute("slash-7", |a| a.value = "4.0.0.0/7".into()),
                attribute("slash-8", |a| a.value = "4.0.0.0/8".into()),
                attribute("v6-48", |a| a.value = "2a0b:f4c0::/48".into()),
                attribute("v6-31", |a| a.value = "2a0b::/31".into()),
                attribute("mapped", |a| a.value = "::ffff:0.0.0.0/96".into()),
                attribute("exe", |a| {
                    a.kind = "url".into();
                    a.value = "igfxtray.exe".into();
                }),
                attribute("schemeless", |a| {
                    a.kind = "url".into();
                    a.value = "evil.top/dl/x.exe".into();
                }),
            ],
            &filters,
            Guards::default(),
        );
        let uuids = |rows: &[Row]| rows.iter().map(|r| r.uuid.clone()).collect::<Vec<_>>();
        assert_eq!(uuids(&sorted.rows), ["slash-8", "v6-48", "schemeless"]);
        let skipped: Vec<(&str, Skip)> = sorted
            .skipped
            .iter()
            .map(|(u, s)| (u.as_str(), *s))
            .collect();
        assert_eq!(
            skipped,
            [
                ("any-v4", Skip::BroadNetwork),
                ("any-v6", Skip::BroadNetwork),
                ("slash-7", Skip::BroadNetwork),
                ("v6-31", Skip::BroadNetwork),
                ("mapped", Skip::BroadNetwork),
                ("exe", Skip::NotAUrl),
            ]
        );
    }
}
