//! A worker's memo of the answers it recently took from the shared cache.
//!
//! Reading moka is the one shared-structure read on the hot path: hashing,
//! an epoch pin, a read recorded for its eviction policy, now and then its
//! housekeeping. Profiled, that was about a sixth of what an alert whose
//! IPs are cached costs a worker. A worker sees the same IPs again and
//! again (a brute force names one source thousands of times), so it keeps
//! what it read for a second and only then asks the cache again.
//!
//! What that changes: an answer can be served up to [`RECENT_FOR`] after
//! the cache dropped it (its TTL ran out, or it was evicted); against TTLs
//! of minutes to hours that is noise. A reconfiguration that empties the
//! cache (new MISP server or key) also empties every memo, on its next use.
//! And the cache's eviction policy sees one read per IP per second per
//! worker rather than every read: still enough to tell hot IPs from cold.

use super::Hits;
use crate::observable::Observable;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long a memo serves what it read from the cache.
pub const RECENT_FOR: Duration = Duration::from_secs(1);

/// Entries a memo holds at most; when full it starts over (bounded memory,
/// and a memo that full is not saving much anyway).
pub const RECENT_MAX: usize = 4096;

/// One worker's memo. Belongs to one [`super::Lookup`]: used with another,
/// it empties itself first.
#[derive(Default)]
pub struct Recent {
    /// Which lookup service filled it, and that service's invalidation
    /// count at the time.
    owner: Option<(usize, u64)>,
    /// When everything in it goes stale.
    until: Option<Instant>,
    /// foldhash rather than std's SipHash: the keys are addresses from
    /// alerts, and this is read once per IP hit; a HashDoS on a map that
    /// holds at most RECENT_MAX entries for a second costs little.
    map: HashMap<Observable, Hits, foldhash::fast::RandomState>,
}

impl Recent {
    /// The memo, checked against `owner` and the clock: emptied when it
    /// belongs to another service or generation, or has gone stale.
    pub(super) fn current(&mut self, owner: (usize, u64), now: Instant) -> &mut Self {
        let stale = self.until.is_none_or(|until| now >= until);
        if self.owner != Some(owner) || stale {
            self.map.clear();
            self.owner = Some(owner);
            self.until = Some(now + RECENT_FOR);
        }
        self
    }

    pub(super) fn get(&self, o: &Observable) -> Option<&Hits> {
        self.map.get(o)
    }

    pub(super) fn remember(&mut self, o: &Observable, hits: &Hits) {
        if self.map.len() >= RECENT_MAX {
            self.map.clear();
        }
        self.map.insert(o.clone(), hits.clone());
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lookup::LookupResult;
    use std::sync::Arc;

    fn hits() -> Hits {
        Arc::new(LookupResult::new(Vec::new()))
    }

    #[test]
    fn serves_for_a_second_then_starts_over() {
        let ip = Observable::Ip("185.1.1.1".parse().unwrap());
        let t0 = Instant::now();
        let mut r = Recent::default();
        r.current((1, 0), t0).remember(&ip, &hits());
        let later = t0 + RECENT_FOR - Duration::from_millis(1);
        assert!(r.current((1, 0), later).get(&ip).is_some());
        assert!(r.current((1, 0), t0 + RECENT_FOR).get(&ip).is_none());
    }

    #[test]
    fn another_owner_or_generation_empties_it() {
        let ip = Observable::Ip("185.1.1.1".parse().unwrap());
        let t0 = Instant::now();
        let mut r = Recent::default();
        r.current((1, 0), t0).remember(&ip, &hits());
        assert!(
            r.current((1, 1), t0).get(&ip).is_none(),
            "cache emptied since"
        );
        r.current((1, 1), t0).remember(&ip, &hits());
        assert!(r.current((2, 1), t0).get(&ip).is_none(), "another service");
    }

    #[test]
    fn bounded() {
        let t0 = Instant::now();
        let mut r = Recent::default();
        for i in 0..RECENT_MAX as u32 + 10 {
            r.current((1, 0), t0).remember(
                &Observable::Ip(std::net::IpAddr::from(i.to_be_bytes())),
                &hits(),
            );
        }
        assert!(r.len() <= RECENT_MAX);
        assert!(!r.is_empty());
    }
}
