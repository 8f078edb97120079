//! Counters the pipeline keeps about itself: for the periodic stats line,
//! the demo's closing summary, and tests that assert exact counts.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Default, Debug)]
pub struct Stats {
    pub lines_read: AtomicU64,
    pub alerts_processed: AtomicU64,
    pub ips_extracted: AtomicU64,
    pub dedup_hits: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub misp_requests: AtomicU64,
    pub misp_values: AtomicU64,
    pub misp_errors: AtomicU64,
    pub events_sent: AtomicU64,
    pub socket_errors: AtomicU64,
    skipped: Mutex<BTreeMap<&'static str, u64>>,
}

impl Stats {
    pub fn skip(&self, reason: &'static str) {
        *self
            .skipped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(reason)
            .or_default() += 1;
    }

    pub fn skipped(&self) -> BTreeMap<&'static str, u64> {
        self.skipped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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
