//! Stage 3c, the retro ledger: what was seen, so that an indicator MISP
//! learns later can be matched against the past.
//!
//! For every public observable extracted (after false positives are
//! dropped) the ledger keeps its first and last time seen, a count, and up
//! to `retro.refs_per_value` references: the compact context of an alert it
//! came from (the part of the alert an enriched event carries), enough to
//! build that alert's event again without the alert ([`hunt`]).
//!
//! The hot path only touches [`Ledger::note`]: one lock of an in-memory
//! map of what was seen since the last flush, where a value already
//! holding its references costs a lookup and two adds. The runtime's
//! ledger thread takes the map every second and writes it to the
//! [`store`], SQLite on disk, which is what bounds memory: the ledger's
//! size is on disk, and in memory only the page cache and one second of
//! new values.

pub mod hunt;
pub mod store;

use crate::alert::{self, Fields, Json, Node};
use crate::observable::{Kind, Observable, Occurrence};
use crate::stats::Stats;
use foldhash::fast::RandomState;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// The alert's `data` keys a reference keeps: Wazuh's static fields,
/// which rules and active responses read from an event's top level.
pub const REF_DATA_FIELDS: &[&str] = &[
    "srcip",
    "dstip",
    "srcport",
    "dstport",
    "protocol",
    "action",
    "srcuser",
    "dstuser",
    "status",
    "system_name",
    "url",
];

/// A reference longer than this keeps no `data` keys (a static field
/// can be as long as the alert line).
const MAX_REF_BYTES: usize = 4096;

/// What one flush period saw of a value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Seen {
    pub first: i64,
    pub last: i64,
    pub count: u64,
    /// JSON objects ([`reference()`]), oldest first.
    pub refs: Vec<String>,
}

/// Values seen since the last flush.
pub type Pending = HashMap<Observable, Seen, RandomState>;

/// The hot path's side of the ledger. Bounded: beyond `max_pending`
/// values not yet flushed, new values are dropped and counted (the
/// flush is woken at half of it, so this is an overload, not a steady
/// state).
pub struct Ledger {
    pending: Mutex<Pending>,
    flush: Condvar,
    /// A hunt asked for what was noted so far to be on disk.
    requested: std::sync::atomic::AtomicBool,
    /// Flushes written so far, and their signal.
    flushed: Mutex<u64>,
    flushed_signal: Condvar,
    refs_per_value: usize,
    max_pending: usize,
    /// `ledger_dropped` is counted here.
    stats: Arc<Stats>,
}

impl Ledger {
    pub fn new(refs_per_value: usize, max_pending: usize, stats: Arc<Stats>) -> Ledger {
        Ledger {
            pending: Mutex::new(Pending::default()),
            flush: Condvar::new(),
            requested: std::sync::atomic::AtomicBool::new(false),
            flushed: Mutex::new(0),
            flushed_signal: Condvar::new(),
            refs_per_value,
            max_pending: max_pending.max(2),
            stats,
        }
    }

    /// Records `hits`, found in the alert `fields` describes, as seen now.
    pub fn note(&self, fields: &Fields<'_>, hits: &[Occurrence]) {
        let now = chrono::Utc::now().timestamp();
        let mut wake = false;
        {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            for hit in hits {
                let full = pending.len() >= self.max_pending;
                let seen = match pending.get_mut(&hit.observable) {
                    Some(s) => s,
                    None if full => {
                        self.stats.ledger_dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    None => pending
                        .entry(hit.observable.clone())
                        .or_insert_with(|| Seen {
                            first: now,
                            ..Seen::default()
                        }),
                };
                seen.last = now;
                seen.count += 1;
                if seen.refs.len() < self.refs_per_value {
                    seen.refs.push(reference(fields, hit));
                }
            }
            wake |= pending.len() >= self.max_pending / 2;
        }
        if wake {
            self.flush.notify_one();
        }
    }

    /// What was seen since the last call: waits up to `wait` (less when
    /// the map fills), then takes it.
    pub fn take(&self, wait: Duration) -> Pending {
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let (mut pending, _) = self
            .flush
            .wait_timeout_while(pending, wait, |p| {
                p.len() < self.max_pending / 2 && !self.requested.load(Ordering::Acquire)
            })
            .unwrap_or_else(|e| e.into_inner());
        self.requested.store(false, Ordering::Release);
        std::mem::take(&mut *pending)
    }

    /// The writer's side: what [`Ledger::take`] returned is on disk.
    pub fn flushed(&self) {
        *self.flushed.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.flushed_signal.notify_all();
    }

    /// Waits (at most `timeout`) until everything noted before this call
    /// is on disk: a hunt must see the alerts that came just before the
    /// sync. False if the writer did not get to it in time.
    pub fn flush_and_wait(&self, timeout: Duration) -> bool {
        let flushed = self.flushed.lock().unwrap_or_else(|e| e.into_inner());
        // The flush after the one in progress, which may have taken the
        // map before this call's notes.
        let target = *flushed + 2;
        self.request();
        let (flushed, _) = self
            .flushed_signal
            .wait_timeout_while(flushed, timeout, |n| {
                if *n + 1 == target {
                    // The one in progress ended: ask for the next now.
                    self.request();
                }
                *n < target
            })
            .unwrap_or_else(|e| e.into_inner());
        *flushed >= target
    }

    /// Asks the writer for a flush now. Set under the map's lock, so that a
    /// writer between its check and its wait cannot miss it.
    fn request(&self) {
        let guard = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        self.requested.store(true, Ordering::Release);
        drop(guard);
        self.flush.notify_all();
    }
}

/// One reference: the part of the alert an enriched event carries, as a
/// small alert of its own (`id`, `timestamp`, `location`, `rule` (id,
/// description, level, groups), `agent` (id, name, ip), `manager.name`,
/// `decoder.name` and the static fields of `data`), and where in it the
/// value was. Serialised straight from the parsed alert.
pub fn reference(f: &Fields<'_>, hit: &Occurrence) -> String {
    let make = |data: bool| {
        serde_json::to_string(&Reference {
            alert: AlertRef {
                id: f.id.map(Json),
                timestamp: f.timestamp.map(Json),
                location: f.location.map(Json),
                rule: Picked::of(f.rule, &["id", "description", "level", "groups"]),
                agent: Picked::of(f.agent, &["id", "name", "ip"]),
                manager: Picked::of(f.manager, &["name"]),
                decoder: Picked::of(f.decoder, &["name"]),
                data: if data {
                    Picked::of(f.data, REF_DATA_FIELDS)
                } else {
                    None
                },
            },
            field_path: &hit.field_path,
            direction: hit.direction.as_str(),
            raw_context: &hit.raw_context,
        })
        .expect("a parsed alert serialises")
    };
    let text = make(true);
    if text.len() <= MAX_REF_BYTES {
        return text;
    }
    make(false)
}

#[derive(serde::Serialize)]
struct Reference<'a> {
    alert: AlertRef<'a>,
    field_path: &'a str,
    direction: &'static str,
    raw_context: &'a str,
}

#[derive(serde::Serialize)]
struct AlertRef<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<Json<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<Json<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    location: Option<Json<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<Picked<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    agent: Option<Picked<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    manager: Option<Picked<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    decoder: Option<Picked<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Picked<'a>>,
}

/// The members `keys` of an object, in the object's order.
struct Picked<'a> {
    object: alert::Object<'a>,
    keys: &'static [&'static str],
}

impl<'a> Picked<'a> {
    fn of(node: Option<Node<'a>>, keys: &'static [&'static str]) -> Option<Picked<'a>> {
        Some(Picked {
            object: node?.as_object()?,
            keys,
        })
    }
}

impl serde::Serialize for Picked<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        let mut seen: u32 = 0;
        for (k, v) in self.object.iter() {
            // The first occurrence of a key wins, as everywhere else.
            if let Some(i) = self.keys.iter().position(|x| *x == k) {
                if seen & (1 << i) == 0 {
                    seen |= 1 << i;
                    m.serialize_entry(k, &Json(v))?;
                }
            }
        }
        m.end()
    }
}

/// The ledger's key for `o`, ordered so that what a hunt asks for is a
/// range: IPs as their bytes after a family tag (a network is the range
/// of its first to last address), domains as their labels reversed
/// (`com.example.www.`: a domain and its subdomains share a prefix), the
/// other kinds as their canonical text after a kind tag.
pub fn key_of(o: &Observable) -> Vec<u8> {
    match o {
        Observable::Ip(std::net::IpAddr::V4(a)) => [&[b'4'][..], &a.octets()].concat(),
        Observable::Ip(std::net::IpAddr::V6(a)) => [&[b'6'][..], &a.octets()].concat(),
        Observable::Domain(d) => domain_prefix(d),
        other => {
            let tag = match other.kind() {
                Kind::Url => b'u',
                Kind::Md5 => b'm',
                Kind::Sha1 => b's',
                _ => b'S',
            };
            let mut k = vec![tag];
            k.extend_from_slice(other.to_string().as_bytes());
            k
        }
    }
}

/// `d` + the labels of `domain` reversed, each followed by a dot: the
/// key of `domain` and the prefix of its subdomains' keys.
pub fn domain_prefix(domain: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(domain.len() + 2);
    k.push(b'd');
    for label in domain.rsplit('.') {
        k.extend_from_slice(label.as_bytes());
        k.push(b'.');
    }
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(s: &str) -> Observable {
        s.parse().unwrap()
    }

    #[test]
    fn keys_order_networks_and_subdomains_as_ranges() {
        assert!(key_of(&obs("10.0.0.255")) < key_of(&obs("10.0.1.0")));
        assert_eq!(key_of(&obs("10.0.0.1")).len(), 5);
        assert_eq!(key_of(&obs("2001:db8::1")).len(), 17);
        let parent = domain_prefix("evil.example");
        assert_eq!(key_of(&obs("evil.example")), parent);
        assert!(key_of(&obs("cdn.evil.example")).starts_with(&parent));
        assert!(!key_of(&obs("notevil.example")).starts_with(&parent));
        assert!(!key_of(&obs("evil.example.org")).starts_with(&parent));
        assert_ne!(
            key_of(&obs("d41d8cd98f00b204e9800998ecf8427f")),
            key_of(&obs("http://d41d8cd98f00b204e9800998ecf8427f.example/"))
        );
    }

    #[test]
    fn a_value_keeps_its_references_up_to_the_limit_and_counts_the_rest() {
        let line = r#"{"id":"1","timestamp":"2026-12-01T10:00:00.000+0000","rule":{"id":"5710","level":5,"description":"sshd","groups":["sshd"],"mail":false},"agent":{"id":"001","name":"web","ip":"10.0.0.5"},"manager":{"name":"wazuh-1"},"decoder":{"name":"sshd"},"location":"/var/log/auth.log","data":{"srcip":"185.220.101.4","other":"x"},"full_log":"Failed password from 185.220.101.4"}"#;
        let ledger = Ledger::new(2, 100, Arc::default());
        let hit = Occurrence {
            observable: obs("185.220.101.4"),
            direction: crate::observable::Direction::Source,
            field_path: "data.srcip".into(),
            raw_context: "185.220.101.4".into(),
        };
        let mut parser = alert::Parser::default();
        for _ in 0..3 {
            parser
                .with(line, |a| {
                    ledger.note(&Fields::of(a), std::slice::from_ref(&hit))
                })
                .unwrap();
        }
        let taken = ledger.take(Duration::ZERO);
        let seen = &taken[&hit.observable];
        assert_eq!(seen.count, 3);
        assert_eq!(seen.refs.len(), 2);
        let r: serde_json::Value = serde_json::from_str(&seen.refs[0]).unwrap();
        assert_eq!(r["field_path"], "data.srcip");
        assert_eq!(r["direction"], "source");
        assert_eq!(r["alert"]["rule"]["id"], "5710");
        assert_eq!(r["alert"]["agent"]["name"], "web");
        assert_eq!(r["alert"]["data"]["srcip"], "185.220.101.4");
        assert!(r["alert"]["data"].get("other").is_none());
        assert!(r["alert"]["rule"].get("mail").is_none());
        assert!(r["alert"].get("full_log").is_none());
        assert!(ledger.take(Duration::ZERO).is_empty());
    }

    #[test]
    fn a_hunt_waits_for_what_was_noted_before_it_to_be_written() {
        let ledger = Arc::new(Ledger::new(1, 100, Arc::default()));
        let written = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (ledger, written, stop) = (ledger.clone(), written.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    // A long wait: only a request makes it flush early.
                    let p = ledger.take(Duration::from_secs(3600));
                    written.lock().unwrap().extend(p.into_keys());
                    ledger.flushed();
                }
            })
        };
        let hit = Occurrence {
            observable: "1.1.1.1".parse().unwrap(),
            direction: crate::observable::Direction::Unknown,
            field_path: "full_log".into(),
            raw_context: String::new(),
        };
        ledger.note(&Fields::default(), std::slice::from_ref(&hit));
        assert!(ledger.flush_and_wait(Duration::from_secs(30)));
        assert_eq!(*written.lock().unwrap(), [hit.observable]);
        stop.store(true, Ordering::Relaxed);
        ledger.request();
        writer.join().unwrap();
    }

    #[test]
    fn beyond_the_pending_bound_new_values_are_dropped_and_counted() {
        let ledger = Ledger::new(1, 2, Arc::default());
        let fields = Fields::default();
        let hit = |ip: &str| Occurrence {
            observable: obs(ip),
            direction: crate::observable::Direction::Unknown,
            field_path: "full_log".into(),
            raw_context: String::new(),
        };
        ledger.note(
            &fields,
            &[
                hit("1.1.1.1"),
                hit("1.1.1.2"),
                hit("1.1.1.3"),
                hit("1.1.1.1"),
            ],
        );
        assert_eq!(ledger.stats.ledger_dropped.load(Ordering::Relaxed), 1);
        let taken = ledger.take(Duration::ZERO);
        assert_eq!(taken.len(), 2);
        assert_eq!(taken[&obs("1.1.1.1")].count, 2);
    }
}
