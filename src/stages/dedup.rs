//! Stage 4, dedup: an IP seen under the same rule and direction within the
//! window is not reported again (the original's `rule_id:ip:direction` key).
//!
//! A key is *claimed* when a worker starts on it, so concurrent alerts with
//! the same key do not both go to MISP and both produce an event, and
//! *marked* when its event has actually been sent, which restarts the window
//! from the send time. A claim that produces nothing (MISP knows nothing) is
//! released. Entries carry their wall-clock expiry, so the table can be saved
//! and reloaded across restarts with each key's remaining time.
//!
//! Why not moka, which the lookup cache uses: a busy manager keeps a million
//! live keys, and moka spends a few hundred bytes on each (the key string,
//! timer-wheel node, deque nodes), several hundred MB in all. Here an entry
//! is a 64-bit digest of the key and a deadline, 16 bytes in a hash table,
//! and a claim is one lock of one shard, so it is also exact: two concurrent
//! claims of one key cannot both win.

use md5::{Digest, Md5};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A dedup key: the first 8 bytes of the MD5 of the original's
/// `rule_id:ip:direction` text. Stable across versions and platforms, so
/// saved tables stay valid after an upgrade; a collision between two live
/// keys needs about 4 billion of them. Computed once per IP hit and carried
/// to the writer, so claiming, releasing and marking never hash again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key(u64);

impl Key {
    /// The key of `rule_id:ip:direction`, hashed in pieces (no string built).
    pub fn new(rule_id: &str, ip: &str, direction: &str) -> Key {
        let mut h = Md5::new();
        for (i, part) in [rule_id, ip, direction].into_iter().enumerate() {
            if i > 0 {
                h.update(b":");
            }
            h.update(part.as_bytes());
        }
        Key::from_digest(&h.finalize())
    }

    /// An occurrence's key: `rule_id:ip:direction` for an IP (the form
    /// persisted windows hold), `rule_id:kind:value` for other kinds.
    pub fn of(rule_id: &str, hit: &crate::observable::Occurrence) -> Key {
        let text = hit.text();
        match hit.observable.kind() {
            crate::observable::Kind::Ip => Key::new(rule_id, text.as_str(), hit.direction.as_str()),
            kind => Key::new(rule_id, kind.as_str(), text.as_str()),
        }
    }

    fn from_digest(d: &[u8]) -> Key {
        Key(u64::from_le_bytes(
            d[..8].try_into().expect("md5 has 16 bytes"),
        ))
    }
}

/// Any text as a key; `Key::new(r, i, d)` is `Key::from("r:i:d")`.
impl From<&str> for Key {
    fn from(text: &str) -> Key {
        Key::from_digest(&Md5::digest(text.as_bytes()))
    }
}

impl From<&String> for Key {
    fn from(text: &String) -> Key {
        Key::from(text.as_str())
    }
}

const SHARDS: usize = 16;
/// Set on the deadline of a key claimed but not yet sent. Such a key blocks
/// concurrent duplicates, but is never saved: after a restart the alert is
/// read again and must not find itself already "reported".
const PENDING: u64 = 1 << 63;
const SWEEP_EVERY_MS: u64 = 60_000;

/// Whether an entry still holds its key. A pending claim does until it is
/// marked sent or released, however long MISP takes to answer: its window
/// only starts when the event is sent.
fn live(deadline: u64, now: u64) -> bool {
    deadline & PENDING != 0 || deadline > now
}

/// Keys are already MD5 digests, uniformly spread: hashing them again (std's
/// SipHash) would only cost time on every claim and mark.
#[derive(Default, Clone, Copy)]
struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed here; any other input still hashes.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type DigestMap = HashMap<u64, u64, std::hash::BuildHasherDefault<DigestHasher>>;

#[derive(Default)]
struct Shard {
    /// Digest → deadline (Unix ms).
    deadlines: DigestMap,
    next_sweep_ms: u64,
}

impl Shard {
    fn sweep(&mut self, now: u64) {
        self.deadlines.retain(|_, &mut d| live(d, now));
        self.next_sweep_ms = now + SWEEP_EVERY_MS;
    }

    /// Makes room for one more entry: expired ones go first, then, if the
    /// table is still full, the tenth of the sent keys closest to expiry.
    /// Pending claims are never evicted: they are bounded by the lines in
    /// flight, and evicting one would let a second alert with the same key
    /// produce an event too.
    fn make_room(&mut self, now: u64, cap: usize) {
        if self.deadlines.len() < cap {
            return;
        }
        self.sweep(now);
        if self.deadlines.len() < cap {
            return;
        }
        let mut sent: Vec<u64> = self
            .deadlines
            .values()
            .copied()
            .filter(|d| d & PENDING == 0)
            .collect();
        if sent.is_empty() {
            return;
        }
        let cut = (sent.len() / 10).max(1);
        let (_, threshold, _) = sent.select_nth_unstable(cut - 1);
        let threshold = *threshold;
        self.deadlines
            .retain(|_, &mut d| d & PENDING != 0 || d > threshold);
    }
}

#[derive(Clone)]
pub struct Dedup {
    shards: Arc<[Mutex<Shard>; SHARDS]>,
    window_ms: Arc<AtomicU64>,
    shard_cap: usize,
}

impl Dedup {
    pub fn new(window: Duration, max_entries: u64) -> Self {
        Dedup {
            shards: Arc::new(std::array::from_fn(|_| Mutex::new(Shard::default()))),
            window_ms: Arc::new(AtomicU64::new(window.as_millis() as u64)),
            shard_cap: (max_entries as usize).div_ceil(SHARDS).max(1),
        }
    }

    fn shard(&self, digest: u64) -> MutexGuard<'_, Shard> {
        // Middle bits: the table itself uses the low bits for the bucket
        // and the top seven as tags, so those must vary within a shard.
        self.shards[(digest >> 32) as usize % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The window in force.
    pub fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms.load(Ordering::Relaxed))
    }

    /// Applies to keys claimed or marked from now on.
    pub fn set_window(&self, window: Duration) {
        self.window_ms
            .store(window.as_millis() as u64, Ordering::Relaxed);
    }

    fn put(&self, digest: u64, now: u64) {
        let deadline = now + self.window_ms.load(Ordering::Relaxed);
        let mut shard = self.shard(digest);
        if !shard.deadlines.contains_key(&digest) {
            shard.make_room(now, self.shard_cap);
        }
        if now >= shard.next_sweep_ms {
            shard.sweep(now);
        }
        shard.deadlines.insert(digest, deadline);
    }

    /// True if the key was free and is now ours; false if it is a duplicate.
    pub fn try_claim(&self, key: impl Into<Key>) -> bool {
        let Key(d) = key.into();
        let now = now_ms();
        let deadline = now + self.window_ms.load(Ordering::Relaxed);
        let mut shard = self.shard(d);
        if shard
            .deadlines
            .get(&d)
            .is_some_and(|&until| live(until, now))
        {
            return false;
        }
        if !shard.deadlines.contains_key(&d) {
            shard.make_room(now, self.shard_cap);
        }
        if now >= shard.next_sweep_ms {
            shard.sweep(now);
        }
        shard.deadlines.insert(d, deadline | PENDING);
        true
    }

    pub fn release(&self, key: impl Into<Key>) {
        let Key(d) = key.into();
        self.shard(d).deadlines.remove(&d);
    }

    pub fn mark_sent(&self, key: impl Into<Key>) {
        self.put(key.into().0, now_ms());
    }

    /// Sent keys still live, as (key digest in hex, expiry in Unix ms), for
    /// saving. Pending claims are left out.
    pub fn snapshot(&self) -> Vec<(String, u64)> {
        let now = now_ms();
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            out.extend(
                shard
                    .deadlines
                    .iter()
                    .filter(|(_, &d)| d & PENDING == 0 && d > now)
                    .map(|(k, &d)| (format!("{k:016x}"), d)),
            );
        }
        out
    }

    /// Loads saved entries; expired and unreadable ones are dropped.
    pub fn restore(&self, entries: impl IntoIterator<Item = (String, u64)>) -> usize {
        let now = now_ms();
        let mut n = 0;
        for (k, deadline) in entries {
            let Ok(d) = u64::from_str_radix(&k, 16) else {
                continue;
            };
            if deadline & PENDING == 0 && deadline > now {
                let mut shard = self.shard(d);
                shard.make_room(now, self.shard_cap);
                shard.deadlines.insert(d, deadline);
                n += 1;
            }
        }
        n
    }

    /// Entries held, live or not yet swept.
    pub fn len(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).deadlines.len() as u64)
            .sum()
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
        let k = Key::new("5712", "1.2.3.4", "source");
        assert_eq!(
            k,
            Key::from("5712:1.2.3.4:source"),
            "the original's key text"
        );
        assert!(d.try_claim(k));
        assert!(!d.try_claim(k));
        d.release(k);
        assert!(d.try_claim(k));
        d.mark_sent(k);
        assert!(!d.try_claim(k));
        assert!(d.try_claim(Key::new("5712", "1.2.3.4", "destination")));
    }

    #[test]
    fn pending_claims_are_not_saved() {
        let d = Dedup::new(Duration::from_secs(60), 100);
        assert!(d.try_claim("in-flight"));
        assert!(d.try_claim("sent"));
        d.mark_sent("sent");
        let snap = d.snapshot();
        assert_eq!(
            snap,
            vec![(format!("{:016x}", Key::from("sent").0), snap[0].1)]
        );
        let e = Dedup::new(Duration::from_secs(60), 100);
        e.restore(snap);
        assert!(
            e.try_claim("in-flight"),
            "a replayed alert is not a duplicate of itself"
        );
        assert!(!e.try_claim("sent"));
    }

    #[test]
    fn expired_keys_can_be_claimed_again() {
        let d = Dedup::new(Duration::from_millis(0), 100);
        assert!(d.try_claim("k"));
        d.mark_sent("k");
        assert!(d.try_claim("k"), "a zero window expires at once");
    }

    /// A claim waiting on MISP outlives its window: the outage can last
    /// longer than the window, and a second alert with the same key must
    /// still wait for the first one's event.
    #[test]
    fn a_pending_claim_never_expires() {
        let d = Dedup::new(Duration::from_millis(0), 100);
        assert!(d.try_claim("waiting"));
        std::thread::sleep(Duration::from_millis(2));
        assert!(!d.try_claim("waiting"), "still pending");
        // The sweep that a later claim runs keeps it too.
        for i in 0..200 {
            d.try_claim(&format!("other{i}"));
            d.mark_sent(&format!("other{i}"));
        }
        assert!(!d.try_claim("waiting"), "still pending after sweeps");
        d.release("waiting");
        assert!(d.try_claim("waiting"));
    }

    /// A full table makes room among the sent keys only.
    #[test]
    fn pending_claims_are_never_evicted() {
        let d = Dedup::new(Duration::from_secs(60), 160);
        let pending: Vec<String> = (0..100).map(|i| format!("pending{i}")).collect();
        for k in &pending {
            assert!(d.try_claim(k));
        }
        for i in 0..5_000 {
            let k = format!("sent{i}");
            d.try_claim(&k);
            d.mark_sent(&k);
        }
        for k in &pending {
            assert!(!d.try_claim(k), "{k} was evicted");
        }
    }

    #[test]
    fn snapshot_restore_drops_expired() {
        let d = Dedup::new(Duration::from_secs(60), 100);
        d.mark_sent("a");
        let snap = d.snapshot();
        assert_eq!(snap.len(), 1);
        let e = Dedup::new(Duration::from_secs(60), 100);
        let old = (format!("{:016x}", Key::from("old").0), 1);
        assert_eq!(
            e.restore(snap.into_iter().chain([old, ("junk".into(), u64::MAX)])),
            1
        );
        assert!(!e.try_claim("a"));
        assert!(e.try_claim("old"));
    }

    #[test]
    fn bounded_by_max_entries() {
        let d = Dedup::new(Duration::from_secs(60), 1600);
        for i in 0..10_000 {
            d.mark_sent(&format!("k{i}"));
        }
        assert!(d.len() <= 1600, "{} entries", d.len());
        // The newest keys are the ones kept.
        assert!(!d.try_claim("k9999"));
    }

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
