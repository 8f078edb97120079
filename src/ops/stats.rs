//! Counters the pipeline keeps about itself: for the periodic stats line,
//! the demo's closing summary, and tests that assert exact counts.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// Every reason a line or alert is skipped. A fixed list, so counting a
/// skip (every filtered alert, on the hot path) is one atomic add, not a lock.
pub const SKIP_REASONS: [&str; 11] = [
    "empty_line",
    "not_utf8",
    "line_too_long",
    "incomplete_last_line",
    "invalid_json",
    "not_an_object",
    "no_rule_id",
    "level_below_minimum",
    "excluded_rule",
    "own_event",
    "excluded_integration",
];

#[derive(Default, Debug)]
pub struct Stats {
    pub lines_read: AtomicU64,
    pub alerts_processed: AtomicU64,
    /// Observables of every kind (the name, and the metric's, predate
    /// the other kinds).
    pub ips_extracted: AtomicU64,
    pub dedup_hits: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub misp_requests: AtomicU64,
    /// Requests of the mirror's syncs (not counted in `misp_requests`).
    pub sync_requests: AtomicU64,
    /// `misp_requests` are the details of mirror hits (mirror mode), not
    /// per-value queries.
    pub mirror_mode: std::sync::atomic::AtomicBool,
    pub misp_values: AtomicU64,
    pub misp_errors: AtomicU64,
    pub events_sent: AtomicU64,
    pub socket_errors: AtomicU64,
    /// Times the alerts file could not be opened for a reason other than
    /// its absence (permissions, most likely).
    pub open_errors: AtomicU64,
    /// Lines with invalid UTF-8 or lone surrogate escapes, processed with
    /// U+FFFD in place of the bad sequence.
    pub lines_repaired: AtomicU64,
    /// Lookups given up on after `misp.isolated_retry_secs` (a value MISP
    /// keeps failing on alone); their alerts went out unenriched.
    pub lookups_failed: AtomicU64,
    /// Batches handed to the workers and not yet taken.
    pub batches_queued: AtomicU64,
    /// Observables dropped because they are marked as false positives.
    pub suppressed: AtomicU64,
    /// Sightings: sent to MISP, folded into one already sent or queued
    /// within `misp.sighting_interval_secs`, dropped (queue full, or MISP
    /// refused that one sighting), and attempts that failed (retried).
    pub sightings_sent: AtomicU64,
    pub sightings_aggregated: AtomicU64,
    pub sightings_dropped: AtomicU64,
    pub sightings_failed: AtomicU64,
    /// The ledger: values evicted by `retro.max_values`, and retro events
    /// sent (and left out beyond `retro.max_events_per_sync`).
    pub ledger_evicted: AtomicU64,
    /// Values not recorded: the ledger's pending map was full.
    pub ledger_dropped: AtomicU64,
    pub retro_events: AtomicU64,
    pub retro_capped: AtomicU64,
    skipped: [AtomicU64; SKIP_REASONS.len()],
}

impl Stats {
    /// Counts a skip. `reason` must be one of [`SKIP_REASONS`].
    pub fn skip(&self, reason: &'static str) {
        match SKIP_REASONS.iter().position(|r| *r == reason) {
            Some(i) => {
                self.skipped[i].fetch_add(1, Ordering::Relaxed);
            }
            None => debug_assert!(false, "skip reason {reason:?} is not in SKIP_REASONS"),
        }
    }

    /// The reasons seen so far, with their counts.
    pub fn skipped(&self) -> BTreeMap<&'static str, u64> {
        SKIP_REASONS
            .iter()
            .zip(&self.skipped)
            .map(|(r, c)| (*r, c.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    pub fn skipped_total(&self) -> u64 {
        self.skipped().values().sum()
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    /// One line for logs: the main counters.
    pub fn summary(&self) -> String {
        let g = Self::get;
        format!(
            "lines={} processed={} skipped={} ips={} dedup_hits={} cache_hits={} misp_requests={} misp_values={} misp_errors={} sent={}",
            g(&self.lines_read),
            g(&self.alerts_processed),
            self.skipped_total(),
            g(&self.ips_extracted),
            g(&self.dedup_hits),
            g(&self.cache_hits),
            g(&self.misp_requests),
            g(&self.misp_values),
            g(&self.misp_errors),
            g(&self.events_sent),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::SkipReason;

    #[test]
    fn every_filter_reason_is_counted() {
        let s = Stats::default();
        for r in [
            SkipReason::NotAnObject,
            SkipReason::NoRuleId,
            SkipReason::LevelBelowMinimum,
            SkipReason::ExcludedRule,
            SkipReason::OwnEvent,
        ] {
            s.skip(r.as_str());
        }
        s.skip("invalid_json");
        assert_eq!(s.skipped_total(), 6);
        assert_eq!(s.skipped().get("own_event"), Some(&1));
    }
}
