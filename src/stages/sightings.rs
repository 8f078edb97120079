//! Stage 8, sightings back to MISP: each enriched event tells MISP that
//! its attributes were seen here (type 0), which is how MISP analysts
//! learn what is live in their constituency and what resets an
//! indicator's decay; `wazuh-misp false-positive` sends type 1.
//!
//! This is the queue and its aggregation, plain code: the runtime's
//! sender drains it at `misp.sightings_per_minute`, and the state saver
//! keeps it in `state_dir/sightings.json`, so a restart loses no pending
//! sighting. An alert never waits for it: [`Sightings::offer`] takes one
//! lock and never blocks on MISP.

use crate::stats::Stats;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// MISP's sighting types (`Sighting::TYPE`).
pub const SIGHTING: u8 = 0;
pub const FALSE_POSITIVE: u8 = 1;

/// One sighting for `POST /sightings/add`, by attribute uuid: a sighting
/// by value would sight every attribute with that value in every event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sighting {
    /// The MISP server the attribute came from.
    pub server: String,
    pub uuid: String,
    #[serde(rename = "type")]
    pub kind: u8,
    pub source: String,
    /// The alert's time, Unix seconds.
    pub timestamp: i64,
}

/// `sightings.json`: `{"version": "1", "pending": [...], "recent": [...]}`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Saved {
    pub pending: Vec<Sighting>,
    /// `[aggregation key, when last queued]`: the interval outlives a
    /// restart too.
    pub recent: Vec<(u64, i64)>,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "version")]
pub enum SavedFile {
    #[serde(rename = "1")]
    V1(Saved),
}

#[derive(Debug, Default)]
struct Queue {
    pending: VecDeque<Sighting>,
    /// Aggregation key → when its last sighting was queued.
    recent: HashMap<u64, i64>,
    /// Changed since the last [`Sightings::saved`].
    dirty: bool,
}

/// The queue, shared by the workers (offer), the sender (front, done) and
/// the state saver (snapshot).
#[derive(Debug)]
pub struct Sightings {
    queue: Mutex<Queue>,
    interval_secs: i64,
    max: usize,
    /// `misp.sighting_source`; empty: `wazuh-<manager.name>`.
    source: String,
    hasher: foldhash::quality::FixedState,
    /// `sightings_aggregated` and `sightings_dropped` are counted here.
    stats: Arc<Stats>,
    pub wake: tokio::sync::Notify,
}

impl Sightings {
    pub fn new(interval_secs: u64, max: usize, source: &str, stats: Arc<Stats>) -> Sightings {
        Sightings {
            queue: Mutex::new(Queue::default()),
            interval_secs: interval_secs as i64,
            max: max.max(1),
            source: source.to_owned(),
            hasher: foldhash::quality::FixedState::with_seed(0x5167_4e74),
            stats,
            wake: tokio::sync::Notify::new(),
        }
    }

    /// The source for an alert from `manager`.
    fn source_for(&self, manager: &str) -> String {
        if self.source.is_empty() {
            format!("wazuh-{manager}")
        } else {
            self.source.clone()
        }
    }

    fn key(&self, server: &str, uuid: &str, manager: &str) -> u64 {
        let mut h = self.hasher.build_hasher();
        server.hash(&mut h);
        uuid.hash(&mut h);
        if self.source.is_empty() {
            manager.hash(&mut h);
        }
        h.finish()
    }

    /// Queues a sighting of attribute `uuid` on `server`, unless one for
    /// it and this source was queued within the interval (then it is
    /// counted as aggregated). `timestamp` is called only when one is
    /// queued: parsing the alert's time is not free.
    pub fn offer(
        &self,
        server: &str,
        uuid: &str,
        manager: &str,
        now: i64,
        timestamp: impl FnOnce() -> i64,
    ) {
        if uuid.is_empty() {
            return;
        }
        let key = self.key(server, uuid, manager);
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.recent
            .get(&key)
            .is_some_and(|&at| now - at < self.interval_secs)
        {
            self.stats
                .sightings_aggregated
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        if q.recent.len() >= self.max * 4 {
            let floor = now - self.interval_secs;
            q.recent.retain(|_, at| *at > floor);
            if q.recent.len() >= self.max * 4 {
                // Every entry is within the interval: aggregation loosens
                // rather than memory growing.
                q.recent.clear();
            }
        }
        q.recent.insert(key, now);
        let sighting = Sighting {
            server: server.to_owned(),
            uuid: uuid.to_owned(),
            kind: SIGHTING,
            source: self.source_for(manager),
            timestamp: timestamp(),
        };
        self.push(&mut q, sighting);
        drop(q);
        self.wake.notify_one();
    }

    fn push(&self, q: &mut Queue, s: Sighting) {
        q.pending.push_back(s);
        while q.pending.len() > self.max {
            q.pending.pop_front();
            self.stats.sightings_dropped.fetch_add(1, Ordering::Relaxed);
        }
        q.dirty = true;
    }

    /// The oldest pending sighting, left in the queue until [`Sightings::done`].
    pub fn front(&self) -> Option<Sighting> {
        let q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.pending.front().cloned()
    }

    /// `s`, the front a moment ago, is dealt with (sent, or refused for
    /// good). A no-op if the queue dropped it meanwhile.
    pub fn done(&self, s: &Sighting) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.pending.front() == Some(s) {
            q.pending.pop_front();
            q.dirty = true;
        }
    }

    pub fn len(&self) -> usize {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pending
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What to save, if anything changed since the last call.
    pub fn saved(&self, force: bool) -> Option<SavedFile> {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if !q.dirty && !force {
            return None;
        }
        q.dirty = false;
        Some(SavedFile::V1(Saved {
            pending: q.pending.iter().cloned().collect(),
            recent: q.recent.iter().map(|(k, v)| (*k, *v)).collect(),
        }))
    }

    /// Restores what a previous run saved (expired aggregation entries
    /// dropped, the queue cut to its bound).
    pub fn restore(&self, saved: Saved, now: i64) -> usize {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.recent = saved
            .recent
            .into_iter()
            .filter(|(_, at)| now - at < self.interval_secs)
            .take(self.max * 4)
            .collect();
        let n = saved.pending.len();
        for s in saved.pending {
            self.push(&mut q, s);
        }
        q.dirty = false;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_sighting_per_attribute_and_source_per_interval() {
        let s = Sightings::new(3600, 10, "", Arc::default());
        for t in [0, 10, 3599] {
            s.offer("misp", "u1", "wazuh-1", t, || 42);
        }
        s.offer("misp", "u2", "wazuh-1", 20, || 43);
        s.offer("misp", "u1", "wazuh-2", 20, || 44);
        s.offer("other", "u1", "wazuh-1", 20, || 45);
        s.offer("misp", "u1", "wazuh-1", 3600, || 46);
        assert_eq!(s.stats.sightings_aggregated.load(Ordering::Relaxed), 2);
        let mut sent = Vec::new();
        while let Some(x) = s.front() {
            s.done(&x);
            sent.push((x.server, x.uuid, x.source, x.timestamp));
        }
        assert_eq!(
            sent,
            [
                ("misp".into(), "u1".into(), "wazuh-wazuh-1".into(), 42),
                ("misp".into(), "u2".into(), "wazuh-wazuh-1".into(), 43),
                ("misp".into(), "u1".into(), "wazuh-wazuh-2".into(), 44),
                ("other".into(), "u1".into(), "wazuh-wazuh-1".into(), 45),
                ("misp".into(), "u1".into(), "wazuh-wazuh-1".into(), 46),
            ]
        );
    }

    #[test]
    fn a_configured_source_aggregates_across_managers() {
        let s = Sightings::new(3600, 10, "soc", Arc::default());
        s.offer("misp", "u1", "m1", 0, || 1);
        s.offer("misp", "u1", "m2", 0, || 1);
        assert_eq!(s.len(), 1);
        assert_eq!(s.front().unwrap().source, "soc");
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts_them() {
        let s = Sightings::new(3600, 2, "", Arc::default());
        for u in ["a", "b", "c"] {
            s.offer("misp", u, "m", 0, || 0);
        }
        assert_eq!(s.stats.sightings_dropped.load(Ordering::Relaxed), 1);
        assert_eq!(s.front().unwrap().uuid, "b");
    }

    #[test]
    fn what_is_saved_is_restored_with_its_intervals() {
        let s = Sightings::new(3600, 10, "", Arc::default());
        s.offer("misp", "u1", "m", 100, || 7);
        let Some(SavedFile::V1(saved)) = s.saved(false) else {
            panic!("dirty")
        };
        assert!(s.saved(false).is_none());
        let text = serde_json::to_string(&SavedFile::V1(saved)).unwrap();
        assert!(text.contains("\"version\":\"1\""), "{text}");
        let SavedFile::V1(saved) = serde_json::from_str(&text).unwrap();
        let again = Sightings::new(3600, 10, "", Arc::default());
        assert_eq!(again.restore(saved, 200), 1);
        assert_eq!(again.front().unwrap().timestamp, 7);
        again.offer("misp", "u1", "m", 300, || 8);
        assert_eq!(
            again.len(),
            1,
            "still within the interval after the restart"
        );
    }
}
