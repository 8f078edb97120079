//! Stage 4, dedup: an IP seen under the same rule and direction within the
//! window is not reported again (the original's `rule_id:ip:direction` key).
//!
//! A key is *claimed* when a worker starts on it, so concurrent alerts with
//! the same key do not both go to MISP and both produce an event, and
//! *marked* when its event has actually been sent, which restarts the window
//! from the send time. A claim that produces nothing (MISP knows nothing) is
//! released. Entries carry their wall-clock expiry, so the table can be saved
//! and reloaded across restarts with each key's remaining time.

use moka::sync::Cache;
use moka::Expiry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

struct UntilDeadline;

impl Expiry<String, u64> for UntilDeadline {
    fn expire_after_create(
        &self,
        _k: &String,
        deadline_ms: &u64,
        _at: Instant,
    ) -> Option<Duration> {
        Some(Duration::from_millis(deadline_ms.saturating_sub(now_ms())))
    }
    fn expire_after_update(
        &self,
        _k: &String,
        deadline_ms: &u64,
        _at: Instant,
        _d: Option<Duration>,
    ) -> Option<Duration> {
        Some(Duration::from_millis(deadline_ms.saturating_sub(now_ms())))
    }
}

#[derive(Clone)]
pub struct Dedup {
    cache: Cache<String, u64>,
    window_ms: Arc<AtomicU64>,
}

pub fn key(rule_id: &str, ip: &str, direction: &str) -> String {
    format!("{rule_id}:{ip}:{direction}")
}

impl Dedup {
    pub fn new(window: Duration, max_entries: u64) -> Self {
        Dedup {
            cache: Cache::builder()
                .max_capacity(max_entries)
                .expire_after(UntilDeadline)
                .build(),
            window_ms: Arc::new(AtomicU64::new(window.as_millis() as u64)),
        }
    }

    /// Applies to keys claimed or marked from now on.
    pub fn set_window(&self, window: Duration) {
        self.window_ms
            .store(window.as_millis() as u64, Ordering::Relaxed);
    }

    fn deadline(&self) -> u64 {
        now_ms() + self.window_ms.load(Ordering::Relaxed)
    }

    /// True if the key was free and is now ours; false if it is a duplicate.
    ///
    /// `and_compute_with` runs one compute per key at a time. (`entry()
    /// .or_insert()` is not enough: under contention two callers can both
    /// see a fresh entry; the stress test below catches that.)
    pub fn try_claim(&self, key: &str) -> bool {
        use moka::ops::compute::{CompResult, Op};
        let deadline = self.deadline();
        let result = self.cache.entry_by_ref(key).and_compute_with(|existing| {
            if existing.is_some() {
                Op::Nop
            } else {
                Op::Put(deadline)
            }
        });
        matches!(result, CompResult::Inserted(_))
    }

    pub fn release(&self, key: &str) {
        self.cache.invalidate(key);
    }

    pub fn mark_sent(&self, key: &str) {
        self.cache.insert(key.to_owned(), self.deadline());
    }

    /// Live entries with their wall-clock expiry (Unix ms), for saving.
    pub fn snapshot(&self) -> Vec<(String, u64)> {
        let now = now_ms();
        self.cache
            .iter()
            .filter(|(_, deadline)| *deadline > now)
            .map(|(k, d)| ((*k).clone(), d))
            .collect()
    }

    /// Loads saved entries; expired ones are dropped.
    pub fn restore(&self, entries: impl IntoIterator<Item = (String, u64)>) -> usize {
        let now = now_ms();
        let mut n = 0;
        for (k, deadline) in entries {
            if deadline > now {
                self.cache.insert(k, deadline);
                n += 1;
            }
        }
        n
    }

    pub fn len(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_release_mark() {
        let d = Dedup::new(Duration::from_secs(60), 100);
        let k = key("5712", "1.2.3.4", "source");
        assert!(d.try_claim(&k));
        assert!(!d.try_claim(&k));
        d.release(&k);
        assert!(d.try_claim(&k));
        d.mark_sent(&k);
        assert!(!d.try_claim(&k));
        assert!(d.try_claim(&key("5712", "1.2.3.4", "destination")));
    }

    #[test]
    fn snapshot_restore_drops_expired() {
        let d = Dedup::new(Duration::from_secs(60), 100);
        d.mark_sent("a");
        let snap = d.snapshot();
        assert_eq!(snap.len(), 1);
        let e = Dedup::new(Duration::from_secs(60), 100);
        assert_eq!(
            e.restore(snap.into_iter().chain([("old".to_string(), 1)])),
            1
        );
        assert!(!e.try_claim("a"));
        assert!(e.try_claim("old"));
    }
}

#[cfg(test)]
mod stress {
    use super::*;

    /// Many threads racing to claim the same keys: each key is won once.
    #[test]
    fn concurrent_claims_have_one_winner() {
        for round in 0..20 {
            let d = Dedup::new(Duration::from_secs(60), 1_000_000);
            let wins: Vec<usize> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..8)
                    .map(|_| {
                        let d = d.clone();
                        s.spawn(move || {
                            (0..2000)
                                .filter(|k| d.try_claim(&format!("{round}:{k}")))
                                .count()
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            assert_eq!(wins.iter().sum::<usize>(), 2000, "round {round}: {wins:?}");
        }
    }

    /// A key marked sent stays a duplicate while other keys churn.
    #[test]
    fn marked_keys_stay_claimed_under_churn() {
        let d = Dedup::new(Duration::from_secs(60), 1_000_000);
        assert!(d.try_claim("k"));
        d.mark_sent("k");
        std::thread::scope(|s| {
            for t in 0..4 {
                let d = d.clone();
                s.spawn(move || {
                    for i in 0..20_000 {
                        let key = format!("{t}:{i}");
                        d.try_claim(&key);
                        d.mark_sent(&key);
                    }
                });
            }
            for _ in 0..20_000 {
                assert!(!d.try_claim("k"));
            }
        });
    }
}
