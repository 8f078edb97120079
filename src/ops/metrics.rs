//! Metrics: the pipeline's counters through the `metrics` facade, served by
//! an optional Prometheus endpoint (`metrics.listen`).
//!
//! [`Stats`] stays the single source of truth (the STATUS= line, the stats
//! log line and the tests read it); with an endpoint configured, a task
//! publishes it every second.
//! Histograms (MISP latency, values per request) are recorded where they
//! happen. With no endpoint configured no recorder is installed and every
//! call is a no-op.

use crate::input::Checkpointer;
use crate::stats::Stats;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub const MISP_REQUEST_SECONDS: &str = "wazuh_misp_misp_request_duration_seconds";
pub const MISP_VALUES_PER_REQUEST: &str = "wazuh_misp_misp_values_per_request";
pub const MISP_ERRORS: &str = "wazuh_misp_misp_errors_total";

/// Starts the Prometheus endpoint. Must run inside the tokio runtime.
pub fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(MISP_REQUEST_SECONDS.into()),
            &[
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ],
        )?
        .install()
        .map_err(|e| {
            anyhow::anyhow!("config key `metrics.listen`: cannot serve metrics on {addr}: {e}")
        })?;
    tracing::info!(%addr, "serving Prometheus metrics on /metrics");
    Ok(())
}

/// What the publisher reads: counters and the checkpointer, never a
/// channel end (holding one would keep a channel open that shutdown or a
/// dead component must be able to close).
pub struct Sources {
    pub stats: Arc<Stats>,
    pub checkpoints: Arc<Checkpointer>,
    pub alerts_file: PathBuf,
    pub dedup: crate::dedup::Dedup,
}

/// One round of publishing (the runtime's publisher calls it every second).
pub fn publish_once(src: &Sources) {
    let s = &src.stats;
    let g = Stats::get;
    let counters = [
        ("wazuh_misp_alerts_read_total", g(&s.lines_read)),
        ("wazuh_misp_alerts_processed_total", g(&s.alerts_processed)),
        ("wazuh_misp_ips_extracted_total", g(&s.ips_extracted)),
        ("wazuh_misp_dedup_hits_total", g(&s.dedup_hits)),
        ("wazuh_misp_cache_hits_total", g(&s.cache_hits)),
        ("wazuh_misp_cache_misses_total", g(&s.cache_misses)),
        ("wazuh_misp_misp_requests_total", g(&s.misp_requests)),
        ("wazuh_misp_misp_values_total", g(&s.misp_values)),
        ("wazuh_misp_events_sent_total", g(&s.events_sent)),
        ("wazuh_misp_socket_errors_total", g(&s.socket_errors)),
        ("wazuh_misp_open_errors_total", g(&s.open_errors)),
        ("wazuh_misp_lines_repaired_total", g(&s.lines_repaired)),
        ("wazuh_misp_lookups_failed_total", g(&s.lookups_failed)),
        ("wazuh_misp_suppressed_total", g(&s.suppressed)),
        ("wazuh_misp_sightings_sent_total", g(&s.sightings_sent)),
        (
            "wazuh_misp_sightings_aggregated_total",
            g(&s.sightings_aggregated),
        ),
        (
            "wazuh_misp_sightings_dropped_total",
            g(&s.sightings_dropped),
        ),
        ("wazuh_misp_sightings_failed_total", g(&s.sightings_failed)),
        ("wazuh_misp_ledger_evicted_total", g(&s.ledger_evicted)),
        ("wazuh_misp_ledger_dropped_total", g(&s.ledger_dropped)),
        ("wazuh_misp_retro_events_total", g(&s.retro_events)),
        ("wazuh_misp_retro_left_out_total", g(&s.retro_capped)),
    ];
    for (name, v) in counters {
        metrics::counter!(name).absolute(v);
    }
    let purpose = if s.mirror_mode.load(std::sync::atomic::Ordering::Relaxed) {
        "detail"
    } else {
        "query"
    };
    metrics::counter!("wazuh_misp_misp_requests_by_purpose_total", "purpose" => purpose)
        .absolute(g(&s.misp_requests));
    metrics::counter!("wazuh_misp_misp_requests_by_purpose_total", "purpose" => "sync")
        .absolute(g(&s.sync_requests));
    for (reason, v) in s.skipped() {
        metrics::counter!("wazuh_misp_alerts_skipped_total", "reason" => reason).absolute(v);
    }
    metrics::gauge!("wazuh_misp_queued_batches").set(g(&s.batches_queued) as f64);
    metrics::gauge!("wazuh_misp_in_flight_batches").set(src.checkpoints.in_flight() as f64);
    metrics::gauge!("wazuh_misp_dedup_entries").set(src.dedup.len() as f64);
    if let Some(lag) = lag_bytes(&src.checkpoints, &src.alerts_file) {
        metrics::gauge!("wazuh_misp_lag_bytes").set(lag as f64);
    }
}

/// Bytes of alerts.json not yet handled. When the bookmark is still in a
/// rotated file, that file's rest counts too.
pub fn lag_bytes(checkpoints: &Checkpointer, alerts_file: &std::path::Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let b = checkpoints.committed()?;
    let meta = std::fs::metadata(alerts_file).ok()?;
    if meta.ino() == b.file.ino && meta.dev() == b.file.dev {
        Some(meta.len().saturating_sub(b.offset))
    } else {
        Some(meta.len())
    }
}
