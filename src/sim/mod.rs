//! An in-process MISP that answers `POST /attributes/restSearch` the way
//! MISP 2.4/2.5 does, from MISP events in their real JSON export format.
//!
//! Used by the tests, the benchmarks and `wazuh-misp demo`. It implements the
//! parts of MISP's semantics the daemon depends on:
//! - the `{"response":{"Attribute":[...]}}` shape, ids as strings;
//! - `value` as a string or a list (OR), matched against both halves of
//!   composite values (`ip-dst|port`, `domain|ip`); `type` as a filter;
//! - event tags copied into each attribute's `Tag[]` with `"inherited": 1`
//!   (`includeEventTags`), the event block with `Orgc` and `Tag`
//!   (`includeContext`), `Sighting[]` (`includeSightings`),
//!   `RelatedAttribute[]` (`includeCorrelations`), `decay_score[]`
//!   (`includeDecayScore`, NIDS simple model), and warninglists
//!   (`enforceWarninglist`);
//! - 403 with MISP's JSON error on a bad key, the login page (HTML) without
//!   `Accept: application/json`, 200 with an empty list on no match;
//! - fault injection: latency, 5xx, HTML bodies, truncated bodies, 429.

pub mod api;
pub mod engine;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use ipnet::IpNet;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The `i`-th of a pool of public IPs (185.100.0.1 on), distinct for
/// i < 9 750 000: alerts and MISP data for tests and benchmarks.
pub fn pool_ip(i: usize) -> String {
    format!(
        "185.{}.{}.{}",
        100 + i / 62500,
        (i / 250) % 250,
        i % 250 + 1
    )
}

/// One injected misbehaviour, applied to the next `times` requests.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    Status(u16),
    Html,
    Truncated,
    RateLimited {
        retry_after_secs: u64,
    },
    /// Answers correctly, but only after this delay.
    Slow(Duration),
    /// A valid JSON document of the wrong shape.
    WrongShape,
    /// 403 whose body echoes the request's Authorization header, as some
    /// proxies and misconfigured servers do.
    EchoAuth,
}

#[derive(Default)]
struct Control {
    latency: Duration,
    faults: Vec<(Fault, u32)>,
    /// Faults for every request that asks about a value, until cleared.
    value_faults: HashMap<String, Fault>,
    /// A fault for every request that names no value (a mirror's sync).
    sync_fault: Option<Fault>,
    requests: Vec<Vec<String>>,
    /// Every authenticated request's body.
    bodies: Vec<Value>,
    /// A fault for every `/sightings/add`, until cleared.
    sighting_fault: Option<Fault>,
    /// Every authenticated `/sightings/add` body, with the status answered.
    sightings: Vec<(u16, Value)>,
}

struct Dataset {
    /// Every attribute rendered once, with its event's index.
    attributes: Vec<(usize, Value)>,
    events: Vec<Value>,
    /// Lowercased value (and each half of a composite) -> attribute indexes.
    by_value: HashMap<String, Vec<usize>>,
    by_uuid: HashMap<String, usize>,
    /// Attribute indexes by event index.
    by_event: Vec<Vec<usize>>,
    /// Attribute ids rise with their index: id order is index order.
    ids_ascending: bool,
    /// Seconds the simulated MISP's clock is off ours (its `time()` and
    /// `Date` header both).
    clock_offset: i64,
    /// Hard-deleted attributes (indexes stay stable; these are skipped).
    gone: std::collections::HashSet<usize>,
    warninglists: Vec<Warninglist>,
    next_attr_id: u64,
    next_event_id: u64,
    /// Bumped at every change.
    version: u64,
    /// Attribute timestamp -> attribute indexes.
    by_timestamp: std::collections::BTreeMap<i64, Vec<usize>>,
}

struct Inner {
    key: String,
    /// Behind a lock so that tests can add, edit and delete attributes
    /// while it serves, as MISP users do.
    data: std::sync::RwLock<Dataset>,
    control: Mutex<Control>,
    request_count: AtomicU64,
    value_count: AtomicU64,
    /// Where the last page of a search over everything ended: (the search
    /// without its page, that page, the next attribute index, the data's
    /// version).
    resume: Mutex<Option<(String, usize, usize, u64)>>,
}

/// A running simulator. Dropping it does not stop it; call [`MispSim::stop`].
pub struct MispSim {
    inner: Arc<Inner>,
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// A loaded event set, reusable across simulator restarts.
#[derive(Clone)]
pub struct SimData {
    events: Vec<Value>,
    warninglists: Vec<Warninglist>,
}

/// A cidr warninglist as MISP loads it (`Warninglist::update`): every list
/// is there, and none is enabled until `/warninglists/toggleEnable`.
#[derive(Clone, Debug)]
struct Warninglist {
    name: String,
    networks: Vec<IpNet>,
    enabled: bool,
}

impl SimData {
    /// Events in MISP's export format: `{"Event": {...}}`, a bare event
    /// object, or a list of either.
    pub fn from_events(events: impl IntoIterator<Item = Value>) -> Self {
        let mut out = Vec::new();
        for e in events {
            match e {
                Value::Array(items) => out.extend(items.into_iter().map(unwrap_event)),
                other => out.push(unwrap_event(other)),
            }
        }
        SimData {
            events: out,
            warninglists: Vec::new(),
        }
    }

    /// Loads every `*.json` event file in `dir`, in name order.
    pub fn from_dir(dir: &Path) -> std::io::Result<Self> {
        let mut paths: Vec<_> = std::fs::read_dir(dir)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        paths.sort();
        let mut events = Vec::new();
        for p in paths {
            let v: Value = serde_json::from_slice(&std::fs::read(&p)?).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", p.display()),
                )
            })?;
            events.push(v);
        }
        Ok(Self::from_events(events))
    }

    /// A warninglist in MISP's `list.json` format (type `cidr`), enabled.
    pub fn with_warninglist(mut self, list: &Value) -> Self {
        self.warninglists.push(Warninglist::of(list, true));
        self
    }

    /// A warninglist loaded but not enabled, as MISP holds every list it
    /// ships: a test enables it with `/warninglists/toggleEnable`.
    pub fn with_available_warninglist(mut self, list: &Value) -> Self {
        self.warninglists.push(Warninglist::of(list, false));
        self
    }

    pub fn events(&self) -> &[Value] {
        &self.events
    }
}

impl Warninglist {
    fn of(list: &Value, enabled: bool) -> Warninglist {
        let networks = list
            .get("list")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter_map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .ok()
            })
            .collect();
        Warninglist {
            name: s(list.get("name")),
            networks,
            enabled,
        }
    }
}

fn unwrap_event(v: Value) -> Value {
    match v {
        Value::Object(mut m) if m.contains_key("Event") => m.remove("Event").unwrap_or(Value::Null),
        other => other,
    }
}

fn s(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        _ => String::new(),
    }
}

const ATTRIBUTE_FIELDS: &[&str] = &[
    "id",
    "event_id",
    "object_id",
    "object_relation",
    "category",
    "type",
    "to_ids",
    "uuid",
    "timestamp",
    "distribution",
    "sharing_group_id",
    "comment",
    "deleted",
    "disable_correlation",
    "first_seen",
    "last_seen",
    "value",
];

/// An attribute as restSearch renders it: MISP's fields (null when
/// absent), its event, `deleted` and `disable_correlation` false unless
/// set, and its own tags and sightings.
fn rendered(a: &Value, event_id: &str, object_id: &str) -> Map<String, Value> {
    let mut out = Map::new();
    for f in ATTRIBUTE_FIELDS {
        out.insert((*f).into(), a.get(*f).cloned().unwrap_or(Value::Null));
    }
    out.insert("event_id".into(), json!(event_id));
    if out.get("object_id").is_none_or(Value::is_null) {
        out.insert("object_id".into(), json!(object_id));
    }
    for f in ["deleted", "disable_correlation"] {
        if out[f].is_null() {
            out.insert(f.into(), json!(false));
        }
    }
    for f in ["Tag", "Sighting"] {
        if let Some(v) = a.get(f) {
            out.insert(f.into(), v.clone());
        }
    }
    out
}

impl Dataset {
    fn build(data: &SimData) -> Self {
        let mut attributes = Vec::new();
        let mut events = Vec::new();
        let mut next_attr_id = 900_000u64;
        for (ei, raw) in data.events.iter().enumerate() {
            let mut event = raw.clone();
            // Exports without ids (PyMISP test files) get stable synthetic ones.
            if s(event.get("id")).is_empty() {
                event["id"] = json!((ei + 1).to_string());
            }
            let event_id = s(event.get("id"));
            let mut push = |a: &Value, object_id: &str| {
                let mut out = rendered(a, &event_id, object_id);
                if s(a.get("id")).is_empty() {
                    next_attr_id += 1;
                    out.insert("id".into(), json!(next_attr_id.to_string()));
                }
                attributes.push((ei, Value::Object(out)));
            };
            for a in event
                .get("Attribute")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                push(a, "0");
            }
            for o in event
                .get("Object")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let oid = s(o.get("id"));
                for a in o
                    .get("Attribute")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    push(a, if oid.is_empty() { "0" } else { &oid });
                }
            }
            // Rendered above; the event keeps only its own fields.
            if let Some(o) = event.as_object_mut() {
                o.remove("Attribute");
                o.remove("Object");
            }
            events.push(event);
        }
        let next_event_id = events
            .iter()
            .filter_map(|e| s(e.get("id")).parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        let mut d = Dataset {
            by_event: vec![Vec::new(); events.len()],
            attributes,
            events,
            by_value: HashMap::new(),
            by_uuid: HashMap::new(),
            gone: Default::default(),
            ids_ascending: true,
            clock_offset: 0,
            warninglists: data.warninglists.clone(),
            next_attr_id,
            next_event_id,
            version: 0,
            by_timestamp: Default::default(),
        };
        for i in 0..d.attributes.len() {
            d.index(i);
            let ei = d.attributes[i].0;
            d.by_event[ei].push(i);
        }
        let ids: Vec<u64> = d
            .attributes
            .iter()
            .map(|(_, a)| s(a.get("id")).parse().unwrap_or(0))
            .collect();
        d.ids_ascending = ids.windows(2).all(|w| w[0] < w[1]);
        d
    }

    /// Makes attribute `i` findable by its value (each half of a
    /// composite too) and its uuid.
    fn index(&mut self, i: usize) {
        self.version += 1;
        let a = &self.attributes[i].1;
        let v = s(a.get("value")).to_lowercase();
        let mut keys = vec![v.clone()];
        if v.contains('|') {
            keys.extend(v.split('|').map(str::to_owned));
        }
        keys.dedup();
        for k in keys {
            self.by_value.entry(normalise(&k)).or_default().push(i);
        }
        if let Ok(ts) = s(a.get("timestamp")).parse::<i64>() {
            self.by_timestamp.entry(ts).or_default().push(i);
        }
        let uuid = s(a.get("uuid"));
        if !uuid.is_empty() {
            self.by_uuid.insert(uuid, i);
        }
    }

    fn unindex(&mut self, i: usize) {
        for list in self.by_value.values_mut() {
            list.retain(|&j| j != i);
        }
    }

    /// MISP's enabled cidr warninglists catch an IP inside a listed
    /// network, and a network value inside one.
    fn warninglisted(&self, value: &str) -> bool {
        value
            .split('|')
            .filter_map(|h| {
                h.parse::<IpAddr>()
                    .map(IpNet::from)
                    .or_else(|_| h.parse::<IpNet>())
                    .ok()
            })
            .any(|v| {
                self.warninglists
                    .iter()
                    .filter(|w| w.enabled)
                    .any(|w| w.networks.iter().any(|n| n.contains(&v)))
            })
    }
}

/// MISP's `time()`: the simulator's clock, which a test may step
/// ([`MispSim::set_clock_offset`]). Two edits in one second share it, as
/// they do in MISP.
fn next_timestamp(d: &Dataset) -> i64 {
    chrono::Utc::now().timestamp() + d.clock_offset
}

/// IPs compare in canonical form, as MISP does for ip types.
fn normalise(v: &str) -> String {
    v.parse::<IpAddr>()
        .map_or_else(|_| v.to_owned(), |ip| ip.to_string())
}

fn truthy(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
        Some(Value::String(s)) => matches!(s.as_str(), "1" | "true"),
        _ => false,
    }
}

fn string_list(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(a)) => a.iter().map(|x| s(Some(x))).collect(),
        Some(Value::Object(m)) => m
            .get("OR")
            .map(|x| string_list(Some(x)))
            .unwrap_or_default(),
        Some(x @ (Value::String(_) | Value::Number(_))) => vec![s(Some(x))],
        _ => Vec::new(),
    }
}

/// MISP's polynomial decay: `base * (1 - (t / lifetime) ^ (1 / speed))`,
/// with the NIDS simple model's parameters (lifetime 120 days, speed 2, base 80).
fn decay_score(timestamp: i64, now: i64) -> Value {
    let (lifetime_days, speed, base) = (120.0f64, 2.0f64, 80.0f64);
    let t_days = ((now - timestamp).max(0) as f64) / 86400.0;
    let score = if t_days >= lifetime_days {
        0.0
    } else {
        base * (1.0 - (t_days / lifetime_days).powf(1.0 / speed))
    };
    json!([{
        "score": (score * 100.0).round() / 100.0,
        "base_score": base,
        "decayed": score < 30.0,
        "DecayingModel": {"id": "1", "name": "NIDS Simple Decaying Model"}
    }])
}

/// restSearch's filters on the attribute and its event, as MISP's
/// `buildFilterConditions` applies them.
struct Filters {
    /// `timestamp`: the attribute's, at or after (or within `[from, to]`).
    timestamp: Option<(i64, i64)>,
    /// `event_timestamp`: the event's (`Event.timestamp`).
    event_timestamp: Option<(i64, i64)>,
    /// `publish_timestamp`: the event's `publish_timestamp`.
    publish_timestamp: Option<(i64, i64)>,
    to_ids: Option<bool>,
    published: Option<bool>,
    deleted: Deleted,
    /// `tags`: any of these on the attribute or its event.
    tags_any: Vec<String>,
    /// `tags` given as `!name`: on neither the attribute nor its event
    /// (`MispAttribute::set_filter_tags` runs for the Attribute scope,
    /// `Attribute.id NOT IN`, and the Event scope, `Event.id NOT IN`).
    tags_not: Vec<String>,
    uuids: Vec<String>,
}

/// restSearch's `deleted` (`Event::set_filter_deleted`, then
/// `fetchAttributes`): absent, `0` or `false` hides soft-deleted
/// attributes; `1`, `true` or `"only"` shows only them; `[0, 1]` both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deleted {
    Live,
    Only,
    Both,
}

impl Deleted {
    fn of(v: Option<&Value>) -> Deleted {
        let one = |v: &Value| match v {
            Value::String(x) if x == "only" => true,
            other => truthy(Some(other)),
        };
        match v {
            None | Some(Value::Null) => Deleted::Live,
            Some(Value::Array(items)) => {
                let (gone, live) = (items.iter().any(one), items.iter().any(|x| !one(x)));
                match (gone, live) {
                    (true, true) => Deleted::Both,
                    (true, false) => Deleted::Only,
                    _ => Deleted::Live,
                }
            }
            Some(x) if one(x) => Deleted::Only,
            Some(_) => Deleted::Live,
        }
    }

    fn keeps(self, deleted: bool) -> bool {
        match self {
            Deleted::Live => !deleted,
            Deleted::Only => deleted,
            Deleted::Both => true,
        }
    }
}

fn tag_names(v: Option<&Value>) -> impl Iterator<Item = String> + '_ {
    v.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|t| s(t.get("name")).to_lowercase())
}

/// Tags restSearch shows: not those marked non-exportable
/// (`MispAttribute::attachTagsToAttributes` asks `Tag.exportable = 1`).
fn exportable(tags: Option<&Value>) -> Vec<Value> {
    tags.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|t| {
            t.get("exportable")
                .is_none_or(|e| e.is_null() || truthy(Some(e)))
        })
        .cloned()
        .collect()
}

impl Filters {
    fn of(body: &Value, now: i64) -> Filters {
        // MISP's resolveTimeDelta: a number, or "1d", "2h", "30m", "10s";
        // anything else is `time() + 1`, which matches nothing.
        let time = |v: &Value| -> i64 {
            let t = s(Some(v));
            let t = t.trim();
            if let Ok(n) = t.parse::<i64>() {
                return n;
            }
            let parsed = t.len().checked_sub(1).and_then(|at| {
                let (num, unit) = t.split_at(at);
                let n: i64 = num.parse().ok()?;
                let secs = match unit {
                    "d" => 86400,
                    "h" => 3600,
                    "m" => 60,
                    "s" => 1,
                    _ => return None,
                };
                Some(now - n * secs)
            });
            parsed.unwrap_or(now + 1)
        };
        let window = |k: &str| match body.get(k) {
            Some(Value::Array(pair)) if pair.len() == 2 => {
                let (a, b) = (time(&pair[0]), time(&pair[1]));
                Some((a.min(b), a.max(b)))
            }
            Some(v) if !v.is_null() && v != &Value::Bool(false) => Some((time(v), i64::MAX)),
            _ => None,
        };
        let flag = |k: &str| match body.get(k) {
            None | Some(Value::Null) => None,
            Some(Value::Array(_)) => None,
            v => Some(truthy(v)),
        };
        let mut tags_any = Vec::new();
        let mut tags_not = Vec::new();
        let tags = match body.get("tags") {
            Some(Value::Object(m)) => {
                tags_not.extend(
                    string_list(m.get("NOT"))
                        .into_iter()
                        .map(|t| t.to_lowercase()),
                );
                string_list(m.get("OR"))
            }
            other => string_list(other),
        };
        for t in tags {
            match t.strip_prefix('!') {
                Some(n) => tags_not.push(n.to_lowercase()),
                None => tags_any.push(t.to_lowercase()),
            }
        }
        Filters {
            timestamp: window("timestamp"),
            event_timestamp: window("event_timestamp"),
            publish_timestamp: window("publish_timestamp"),
            to_ids: flag("to_ids"),
            published: flag("published"),
            deleted: Deleted::of(body.get("deleted")),
            tags_any,
            tags_not,
            uuids: string_list(body.get("uuid")),
        }
    }

    /// Whether an event passes the event-level windows.
    fn keeps_event(&self, event: &Value) -> bool {
        let within = |w: Option<(i64, i64)>, field: &str| {
            w.is_none_or(|(from, to)| {
                let ts = s(event.get(field)).parse::<i64>().unwrap_or(0);
                ts >= from && ts <= to
            })
        };
        within(self.event_timestamp, "timestamp")
            && within(self.publish_timestamp, "publish_timestamp")
    }

    fn keeps(&self, attr: &Value, event: &Value) -> bool {
        if let Some((from, to)) = self.timestamp {
            let ts = s(attr.get("timestamp")).parse::<i64>().unwrap_or(0);
            if ts < from || ts > to {
                return false;
            }
        }
        if !self.deleted.keeps(truthy(attr.get("deleted"))) || !self.keeps_event(event) {
            return false;
        }
        if self
            .to_ids
            .is_some_and(|want| truthy(attr.get("to_ids")) != want)
        {
            return false;
        }
        if self
            .published
            .is_some_and(|want| truthy(event.get("published")) != want)
        {
            return false;
        }
        if !self.uuids.is_empty() && !self.uuids.contains(&s(attr.get("uuid"))) {
            return false;
        }
        if !self.tags_any.is_empty()
            && !tag_names(attr.get("Tag"))
                .chain(tag_names(event.get("Tag")))
                .any(|t| self.tags_any.contains(&t))
        {
            return false;
        }
        if tag_names(attr.get("Tag"))
            .chain(tag_names(event.get("Tag")))
            .any(|t| self.tags_not.contains(&t))
        {
            return false;
        }
        true
    }
}

/// What restSearch's headers say of an answer (`AppController::restSearch`
/// from `MispAttribute::__iteratedFetch`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SearchCounts {
    /// `X-Result-Count`: the database rows of the page, plus 1 when a
    /// paged answer came back full or empty.
    pub result_count: usize,
    /// `X-Skipped-Elements-Count`: rows dropped after the `LIMIT`
    /// (warninglists).
    pub skipped: usize,
}

impl Inner {
    fn search(&self, body: &Value) -> (Value, SearchCounts) {
        let values = string_list(body.get("value"));
        let types = string_list(body.get("type"));
        let event_tags = truthy(body.get("includeEventTags"));
        let context = truthy(body.get("includeContext"));
        let sightings = truthy(body.get("includeSightings"));
        let correlations = truthy(body.get("includeCorrelations"));
        let decay = truthy(body.get("includeDecayScore"));
        let all_tags = truthy(body.get("includeAllTags"));
        let warninglist = truthy(body.get("enforceWarninglist"));
        let limit = body
            .get("limit")
            .and_then(|l| s(Some(l)).parse::<usize>().ok())
            .filter(|&l| l > 0);
        // MISP's pages count from 1; `page` without `limit` is ignored.
        let page = body
            .get("page")
            .and_then(|p| s(Some(p)).parse::<usize>().ok());
        let mut skip = match (limit, page) {
            (Some(l), Some(p)) if p > 1 => l * (p - 1),
            _ => 0,
        };
        let d = self.data.read().unwrap_or_else(|e| e.into_inner());
        let now = next_timestamp(&d);
        let filters = Filters::of(body, now);
        // A search over everything (a sync) asking for the page after the
        // one it just got resumes where that one ended, as a database's
        // index would: scanning from the start for every page of a
        // million attributes would make the simulator, not the daemon,
        // what a sync benchmark measures.
        let query_key = {
            let mut b = body.clone();
            if let Some(o) = b.as_object_mut() {
                o.remove("page");
            }
            b.to_string()
        };
        let mut start = 0;
        if values.is_empty() && skip > 0 {
            let c = self.resume.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((key, last_page, next, version)) = &*c {
                if *key == query_key && Some(last_page + 1) == page && *version == d.version {
                    start = *next;
                    skip = 0;
                }
            }
        }
        let mut ended_at = None;
        let event_window = filters.event_timestamp.is_some() || filters.publish_timestamp.is_some();
        // Candidates in attribute id order, as MariaDB scans the primary
        // key when no `order` is asked (`fetchAttributes` sets
        // `order = []`); an `order` on the id gives the same.
        let mut hits: Vec<usize> = if !values.is_empty() {
            values
                .iter()
                .flat_map(|v| {
                    d.by_value
                        .get(&normalise(&v.to_lowercase()))
                        .into_iter()
                        .flatten()
                        .copied()
                })
                .collect()
        } else if event_window {
            d.events
                .iter()
                .enumerate()
                .filter(|(_, e)| filters.keeps_event(e))
                .flat_map(|(ei, _)| d.by_event[ei].iter().copied())
                .filter(|&i| i >= start)
                .collect()
        } else if let Some((from, to)) = filters.timestamp {
            // MISP answers a timestamp filter from an index on it; so does
            // the simulator, or an incremental sync of a million
            // attributes would measure its scan.
            d.by_timestamp
                .range(from..=to)
                .flat_map(|(_, ids)| ids.iter().copied())
                .filter(|&i| i >= start)
                .collect()
        } else {
            (start..d.attributes.len()).collect()
        };
        hits.sort_unstable();
        hits.dedup();
        if body.get("order").is_some() && !d.ids_ascending {
            hits.sort_by_key(|&i| s(d.attributes[i].1.get("id")).parse::<u64>().unwrap_or(0));
        }
        let mut out = Vec::new();
        let (mut rows, mut skipped, mut passed) = (0usize, 0usize, 0usize);
        for i in hits {
            if d.gone.contains(&i) {
                continue;
            }
            let (ei, attr) = &d.attributes[i];
            let kind = s(attr.get("type"));
            if !types.is_empty() && !types.contains(&kind) {
                continue;
            }
            if !filters.keeps(attr, &d.events[*ei]) {
                continue;
            }
            // The SQL set ends here: the page is cut from it, and what
            // follows drops rows from the page already cut.
            if passed < skip {
                passed += 1;
                continue;
            }
            rows += 1;
            if limit.is_some_and(|l| rows >= l) {
                ended_at = Some(i + 1);
            }
            if warninglist && d.warninglisted(&s(attr.get("value"))) {
                skipped += 1;
                if ended_at.is_some() {
                    break;
                }
                continue;
            }
            let event = &d.events[*ei];
            let mut a = attr.clone();
            let obj = a.as_object_mut().expect("rendered as object");
            let own = if all_tags {
                obj.get("Tag")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
            } else {
                exportable(obj.get("Tag"))
            };
            let mut tags = own;
            if event_tags {
                for mut t in exportable(event.get("Tag")) {
                    t["inherited"] = json!(1);
                    tags.push(t);
                }
            }
            obj.insert("Tag".into(), Value::Array(tags));
            if !sightings {
                obj.remove("Sighting");
            } else if !obj.contains_key("Sighting") {
                obj.insert("Sighting".into(), json!([]));
            }
            if correlations {
                let value = s(attr.get("value")).to_lowercase();
                let related: Vec<Value> = d.by_value[&normalise(&value)]
                    .iter()
                    .filter(|&&j| d.attributes[j].0 != *ei && !d.gone.contains(&j))
                    .map(|&j| {
                        let (ej, other) = &d.attributes[j];
                        let ev = &d.events[*ej];
                        let mut r = other.clone();
                        let r_obj = r.as_object_mut().expect("object");
                        r_obj.remove("Tag");
                        r_obj.remove("Sighting");
                        r_obj.insert(
                            "Event".into(),
                            json!({
                                "id": s(ev.get("id")), "uuid": s(ev.get("uuid")), "threat_level_id": s(ev.get("threat_level_id")),
                                "analysis": s(ev.get("analysis")), "info": s(ev.get("info")), "date": s(ev.get("date")),
                                "orgc_id": s(ev.get("orgc_id")), "org_id": s(ev.get("org_id")),
                            }),
                        );
                        r
                    })
                    .collect();
                obj.insert("RelatedAttribute".into(), Value::Array(related));
            }
            if decay {
                let ts = s(attr.get("timestamp")).parse::<i64>().unwrap_or(now);
                obj.insert("decay_score".into(), decay_score(ts, now));
            }
            // restSearch's `fields` add the event's distribution and
            // publish_timestamp to `fetchAttributes`' id, info, org_id,
            // orgc_id and uuid.
            let mut ev = json!({
                "org_id": s(event.get("org_id")), "distribution": s(event.get("distribution")),
                "publish_timestamp": s(event.get("publish_timestamp")),
                "id": s(event.get("id")), "info": s(event.get("info")),
                "orgc_id": s(event.get("orgc_id")), "uuid": s(event.get("uuid")),
            });
            if context {
                for f in [
                    "date",
                    "threat_level_id",
                    "published",
                    "analysis",
                    "timestamp",
                    "publish_timestamp",
                    "sharing_group_id",
                    "extends_uuid",
                ] {
                    if let Some(v) = event.get(f) {
                        ev[f] = v.clone();
                    }
                }
                ev["published"] = json!(truthy(event.get("published")));
                ev["Tag"] = Value::Array(exportable(event.get("Tag")));
                ev["Orgc"] = event.get("Orgc").cloned().unwrap_or(json!({}));
            }
            obj.insert("Event".into(), ev);
            out.push(a);
            if ended_at.is_some() {
                break;
            }
        }
        if let (true, Some(next), Some(p)) = (values.is_empty(), ended_at, page) {
            *self.resume.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((query_key, p, next, d.version));
        }
        let returned = out.len();
        let full_or_empty = limit.is_some_and(|l| returned == 0 || returned >= l);
        let counts = SearchCounts {
            result_count: rows + usize::from(full_or_empty),
            skipped,
        };
        (json!({"response": {"Attribute": out}}), counts)
    }
}

fn respond(status: u16, content_type: &str, body: impl Into<Body>) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(body.into())
        .expect("valid response")
}

const LOGIN_PAGE: &str = "<!DOCTYPE html>\n<html><head><title>MISP - Login</title></head><body><form action=\"/users/login\" method=\"post\"><input name=\"data[User][email]\"><input type=\"password\" name=\"data[User][password]\"></form></body></html>";

async fn rest_search(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (latency, fault) = {
        let mut c = inner.control.lock().unwrap_or_else(|e| e.into_inner());
        let fault = match c.faults.first_mut() {
            Some((f, n)) => {
                let f = f.clone();
                *n -= 1;
                if *n == 0 {
                    c.faults.remove(0);
                }
                Some(f)
            }
            None => None,
        };
        (c.latency, fault)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let wants_json = headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"));
    if !wants_json {
        return respond(200, "text/html; charset=UTF-8", LOGIN_PAGE);
    }
    let key_ok = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|k| k == inner.key);
    if !key_ok {
        return respond(
            403,
            "application/json",
            json!({
                "name": "Authentication failed. Please make sure you pass the API key of an API enabled user along in the Authorization header.",
                "message": "Authentication failed. Please make sure you pass the API key of an API enabled user along in the Authorization header.",
                "url": "/attributes/restSearch"
            })
            .to_string(),
        );
    }
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => {
            return respond(
                400,
                "application/json",
                json!({"name": "Invalid request body", "message": "Invalid request body", "url": "/attributes/restSearch"}).to_string(),
            )
        }
    };
    let values = string_list(request.get("value"));
    let fault = fault.or_else(|| {
        let c = inner.control.lock().unwrap_or_else(|e| e.into_inner());
        if values.is_empty() {
            return c.sync_fault.clone();
        }
        values.iter().find_map(|v| c.value_faults.get(v).cloned())
    });
    inner.request_count.fetch_add(1, Ordering::Relaxed);
    inner
        .value_count
        .fetch_add(values.len() as u64, Ordering::Relaxed);
    {
        let mut c = inner.control.lock().unwrap_or_else(|e| e.into_inner());
        c.requests.push(values);
        c.bodies.push(request.clone());
    }
    match fault {
        Some(Fault::Status(code)) => {
            return respond(code, "application/json", json!({"name": "Internal error", "message": "Internal error", "url": "/attributes/restSearch"}).to_string())
        }
        Some(Fault::Html) => return respond(200, "text/html; charset=UTF-8", LOGIN_PAGE),
        Some(Fault::RateLimited { retry_after_secs }) => {
            return Response::builder()
                .status(StatusCode::TOO_MANY_REQUESTS)
                .header("content-type", "application/json")
                .header("x-rate-limit-reset", retry_after_secs.to_string())
                .body(Body::from(json!({"name": "Rate limit exceeded.", "message": "Rate limit exceeded.", "url": "/attributes/restSearch"}).to_string()))
                .expect("valid response")
        }
        Some(Fault::WrongShape) => return respond(200, "application/json", r#"{"saved":true,"success":true}"#),
        Some(Fault::EchoAuth) => {
            let sent = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
            let message = format!("Forbidden: Authorization: {sent} is not allowed from this address");
            return respond(403, "application/json", json!({"name": message, "message": message, "url": "/attributes/restSearch"}).to_string());
        }
        Some(Fault::Slow(d)) => tokio::time::sleep(d).await,
        Some(Fault::Truncated) | None => {}
    }
    let (answer, counts) = inner.search(&request);
    let clock = {
        let d = inner.data.read().unwrap_or_else(|e| e.into_inner());
        next_timestamp(&d)
    };
    let date = chrono::DateTime::from_timestamp(clock, 0)
        .unwrap_or_default()
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    let mut text = answer.to_string();
    if fault == Some(Fault::Truncated) {
        text.truncate(text.len() / 2);
    }
    Response::builder()
        .status(200)
        .header("content-type", "application/json; charset=UTF-8")
        .header("date", date)
        .header("x-result-count", counts.result_count.to_string())
        .header("x-export-module-used", "json")
        .header("x-response-format", "json")
        .header("x-skipped-elements-count", counts.skipped.to_string())
        .body(Body::from(text))
        .expect("valid response")
}

/// `POST /sightings/add` as `SightingsController::add` and
/// `Sighting::saveSightings` implement it for a body naming `uuid` (or
/// `id`): the attribute must exist, `type` must be 0, 1 or 2; an error is
/// HTTP 200 with `{"message": "Could not add the Sighting. Reason: ..."}`,
/// success the new sighting. A key without the sighting permission gets
/// the ACL's 403 (set with [`MispSim::fail_sightings`]).
async fn add_sighting(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let key_ok = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|k| k == inner.key);
    if !key_ok {
        return respond(403, "application/json", json!({"name": "Authentication failed.", "message": "Authentication failed.", "url": "/sightings/add"}).to_string());
    }
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let fault = inner
        .control
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .sighting_fault
        .clone();
    let record = |status: u16| {
        inner
            .control
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sightings
            .push((status, request.clone()));
    };
    match fault {
        Some(Fault::Status(403)) => {
            record(403);
            return respond(403, "application/json", json!({"name": "You do not have permission to use this functionality.", "message": "You do not have permission to use this functionality.", "url": "/sightings/add"}).to_string());
        }
        Some(Fault::Status(code)) => {
            record(code);
            return respond(code, "application/json", json!({"name": "Internal error", "message": "Internal error", "url": "/sightings/add"}).to_string());
        }
        _ => {}
    }
    let error = |reason: &str| {
        json!({"message": format!("Could not add the Sighting. Reason: {reason}")}).to_string()
    };
    let kind = match request.get("type") {
        None | Some(Value::Null) => "0".to_owned(),
        Some(v) => s(Some(v)),
    };
    if !["0", "1", "2"].contains(&kind.as_str()) {
        record(200);
        return respond(
            200,
            "application/json",
            error("Invalid type, please change it before you POST 1000000 sightings."),
        );
    }
    let id = [request.get("uuid"), request.get("id")]
        .into_iter()
        .map(s)
        .find(|v| !v.is_empty());
    let found = {
        let d = inner.data.read().unwrap_or_else(|e| e.into_inner());
        id.and_then(|id| match d.by_uuid.get(&id) {
            Some(&i) => Some(i),
            None => d
                .attributes
                .iter()
                .position(|(_, a)| s(a.get("id")) == id)
                .filter(|i| !d.gone.contains(i)),
        })
    };
    record(200);
    let Some(i) = found else {
        return respond(
            200,
            "application/json",
            error("No valid attributes found that match the criteria."),
        );
    };
    let timestamp = match request.get("timestamp") {
        None | Some(Value::Null) => chrono::Utc::now().timestamp().to_string(),
        Some(v) => s(Some(v)),
    };
    let mut d = inner.data.write().unwrap_or_else(|e| e.into_inner());
    let a = &d.attributes[i].1;
    let sighting = json!({
        "id": inner.control.lock().unwrap_or_else(|e| e.into_inner()).sightings.len().to_string(),
        "attribute_id": s(a.get("id")),
        "event_id": s(a.get("event_id")),
        "org_id": "1",
        "date_sighting": timestamp,
        "uuid": format!("5a1e0000-5167-4000-8000-{:012x}", fastrand::u64(..1 << 48)),
        "source": s(request.get("source")),
        "type": kind,
    });
    // restSearch's includeSightings shows it (`Sighting::attachToEvent`).
    let mut shown = sighting.clone();
    shown["Organisation"] =
        json!({"id": "1", "uuid": "3f42d880-4e24-4d28-bc9c-3542c9ff0a7b", "name": "ORGNAME"});
    let a = &mut d.attributes[i].1;
    if !a.get("Sighting").is_some_and(Value::is_array) {
        a["Sighting"] = json!([]);
    }
    if let Some(list) = a["Sighting"].as_array_mut() {
        list.push(shown);
    }
    d.version += 1;
    respond(
        200,
        "application/json",
        json!({ "Sighting": sighting }).to_string(),
    )
}

/// Signals a server's graceful shutdown and awaits it for a moment: it
/// closes idle keep-alive connections, whose tasks an abort of the
/// server's own task would leave serving. Past the moment, it is aborted.
pub(crate) async fn shut_down(
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
) {
    if let Some(s) = stop {
        let _ = s.send(());
    }
    if let Some(mut t) = task {
        if tokio::time::timeout(Duration::from_secs(2), &mut t)
            .await
            .is_err()
        {
            t.abort();
            let _ = t.await;
        }
    }
}

impl MispSim {
    /// Starts on an ephemeral loopback port.
    pub async fn start(data: &SimData, key: &str) -> std::io::Result<MispSim> {
        Self::start_on(data, key, "127.0.0.1:0".parse().expect("valid addr")).await
    }

    pub async fn start_on(data: &SimData, key: &str, addr: SocketAddr) -> std::io::Result<MispSim> {
        let inner = Arc::new(Inner {
            key: key.to_owned(),
            data: std::sync::RwLock::new(Dataset::build(data)),
            control: Mutex::new(Control::default()),
            request_count: AtomicU64::new(0),
            value_count: AtomicU64::new(0),
            resume: Mutex::new(None),
        });
        Self::serve(inner, addr).await
    }

    async fn serve(inner: Arc<Inner>, addr: SocketAddr) -> std::io::Result<MispSim> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route("/attributes/restSearch", post(rest_search))
            .route("/sightings/add", post(add_sighting))
            .route("/events/add", post(api::add_event))
            .route("/events/publish/{id}", post(api::publish_event))
            .route("/events/delete/{id}", post(api::delete_event))
            .route("/attributes/add/{event_id}", post(api::add_attribute))
            .route("/attributes/edit/{id}", post(api::edit_attribute))
            .route("/attributes/delete/{id}", post(api::delete_attribute))
            .route(
                "/attributes/delete/{id}/{hard}",
                post(api::hard_delete_attribute),
            )
            .route("/tags/attachTagToObject", post(api::attach_tag))
            .route("/tags/removeTagFromObject", post(api::remove_tag))
            .route("/warninglists/toggleEnable", post(api::toggle_warninglist))
            .with_state(inner.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(MispSim {
            inner,
            addr,
            stop: Some(stop),
            task: Some(task),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving ([`shut_down`]): open connections are closed; a
    /// request held by `set_latency` is cut off.
    pub async fn stop(&mut self) {
        shut_down(self.stop.take(), self.task.take()).await;
    }

    /// Serves again on the same address, with the same data and counters.
    pub async fn restart(&mut self) -> std::io::Result<()> {
        self.stop().await;
        let again = Self::serve(self.inner.clone(), self.addr).await?;
        *self = again;
        Ok(())
    }

    /// Steps the simulated MISP's clock `secs` away from ours: the
    /// timestamps it gives and the `Date` it answers with.
    pub fn set_clock_offset(&self, secs: i64) {
        self.inner
            .data
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clock_offset = secs;
    }

    pub fn set_latency(&self, d: Duration) {
        self.inner
            .control
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .latency = d;
    }

    /// Applies `fault` to the next `times` authenticated requests.
    pub fn inject(&self, fault: Fault, times: u32) {
        self.inner
            .control
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .faults
            .push((fault, times));
    }

    /// Applies `fault` to every request whose value list holds `value`, as
    /// a value that makes MISP fail every time does (`None` clears it).
    pub fn fail_value(&self, value: &str, fault: Option<Fault>) {
        let mut c = self.inner.control.lock().unwrap_or_else(|e| e.into_inner());
        match fault {
            Some(f) => c.value_faults.insert(value.to_owned(), f),
            None => c.value_faults.remove(value),
        };
    }

    /// Applies `fault` to every request that names no value, as a sync's
    /// do (`None` clears it).
    pub fn fail_sync(&self, fault: Option<Fault>) {
        self.inner
            .control
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sync_fault = fault;
    }

    /// Applies `fault` to every `/sightings/add` (`Fault::Status(403)`: a
    /// key whose role lacks the sighting permission); `None` clears it.
    pub fn fail_sightings(&self, fault: Option<Fault>) {
        self.inner
            .control
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sighting_fault = fault;
    }

    /// Every authenticated `/sightings/add`: the status answered and the
    /// body.
    pub fn sighting_requests(&self) -> Vec<(u16, Value)> {
        self.inner
            .control
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sightings
            .clone()
    }

    /// The sightings MISP added: the bodies of the requests answered 200
    /// for an attribute that exists.
    pub fn sightings_added(&self) -> Vec<Value> {
        let d = self.inner.data.read().unwrap_or_else(|e| e.into_inner());
        self.sighting_requests()
            .into_iter()
            .filter(|(status, body)| *status == 200 && d.by_uuid.contains_key(&s(body.get("uuid"))))
            .map(|(_, b)| b)
            .collect()
    }

    /// Authenticated restSearch requests answered so far.
    pub fn requests(&self) -> u64 {
        self.inner.request_count.load(Ordering::Relaxed)
    }

    /// Values asked about, summed over requests.
    pub fn values_asked(&self) -> u64 {
        self.inner.value_count.load(Ordering::Relaxed)
    }

    /// The value list of every request, in order.
    pub fn request_log(&self) -> Vec<Vec<String>> {
        self.inner
            .control
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .requests
            .clone()
    }

    /// Every authenticated request's body, in order.
    pub fn request_bodies(&self) -> Vec<Value> {
        self.inner
            .control
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .bodies
            .clone()
    }

    /// Requests that asked about values (enrichment details or query
    /// mode), as opposed to a sync's requests, which name none.
    pub fn value_requests(&self) -> usize {
        self.request_log().iter().filter(|v| !v.is_empty()).count()
    }

    /// Adds `attribute` (MISP's attribute JSON: `type`, `value`, ...) to
    /// the `event_index`-th event, as a user adding it in MISP: it gets an
    /// id, a uuid when it has none, and the current time as its timestamp;
    /// the event is unpublished. Returns its uuid.
    pub fn add_attribute(&self, event_index: usize, mut attribute: Value) -> String {
        let mut d = self.inner.data.write().unwrap_or_else(|e| e.into_inner());
        if let Some(o) = attribute.as_object_mut() {
            o.remove("timestamp");
        }
        let i = d.push_attribute(event_index, &attribute);
        let ts = s(d.attributes[i].1.get("timestamp")).parse().unwrap_or(0);
        d.unpublish(event_index, ts);
        s(d.attributes[i].1.get("uuid"))
    }

    /// Edits an attribute as MISP does: `edit` changes its JSON, its
    /// timestamp moves to now, and its event is unpublished. False if
    /// there is no such uuid.
    pub fn edit_attribute(&self, uuid: &str, edit: impl FnOnce(&mut Map<String, Value>)) -> bool {
        let mut d = self.inner.data.write().unwrap_or_else(|e| e.into_inner());
        let Some(&i) = d.by_uuid.get(uuid) else {
            return false;
        };
        let ts = next_timestamp(&d);
        d.edit(i, ts, edit)
    }

    /// Deletes an attribute as MISP's soft delete does: it is gone from
    /// every search that does not ask for `deleted`.
    pub fn delete_attribute(&self, uuid: &str) -> bool {
        self.edit_attribute(uuid, |a| {
            a.insert("deleted".into(), json!(true));
        })
    }

    /// The uuids of the attributes with this value.
    pub fn uuids_of(&self, value: &str) -> Vec<String> {
        let d = self.inner.data.read().unwrap_or_else(|e| e.into_inner());
        d.by_value
            .get(&normalise(&value.to_lowercase()))
            .into_iter()
            .flatten()
            .map(|&i| s(d.attributes[i].1.get("uuid")))
            .collect()
    }

    /// Attributes a normal key sees (not deleted).
    pub fn attribute_count(&self) -> usize {
        let d = self.inner.data.read().unwrap_or_else(|e| e.into_inner());
        d.attributes
            .iter()
            .enumerate()
            .filter(|(i, (_, a))| !d.gone.contains(i) && !truthy(a.get("deleted")))
            .count()
    }

    /// The response for a search body, without HTTP (for golden tests).
    pub fn answer(data: &SimData, body: &Value) -> Value {
        Inner {
            key: String::new(),
            data: std::sync::RwLock::new(Dataset::build(data)),
            control: Mutex::new(Control::default()),
            request_count: AtomicU64::new(0),
            value_count: AtomicU64::new(0),
            resume: Mutex::new(None),
        }
        .search(body)
        .0
    }
}
