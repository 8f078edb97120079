//! SIGHUP for every key: each config key is changed alone on a running
//! daemon, and the test checks whether it took effect. A key whose type is
//! `Restart<T>` must be reported as pending a restart, and documented
//! "(restart)" in the shipped config; every other key must change what the
//! running daemon does. A key added without a probe here fails the test.

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use wazuh_misp::config::{Applies, Config, LogFormat, MatchTypes, Secret, StartPosition};
use wazuh_misp::lookup::{MispClient, MispError};
use wazuh_misp::runtime::Daemon;
use wazuh_misp::sim::{MispSim, SimData};

/// Every leaf key of the config, dotted.
fn all_keys() -> Vec<String> {
    fn walk(prefix: &str, v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            _ => out.push(prefix.to_owned()),
        }
    }
    let mut out = Vec::new();
    walk(
        "",
        &serde_json::to_value(Config::default()).unwrap(),
        &mut out,
    );
    out
}

/// The comment lines above each key of the shipped config.
fn documented() -> Vec<(String, String)> {
    let text = include_str!("../config/wazuh-misp.toml");
    let mut out = Vec::new();
    let (mut section, mut comment) = (String::new(), String::new());
    for line in text.lines() {
        let line = line.trim();
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_owned();
            comment.clear();
        } else if let Some(c) = line.strip_prefix('#') {
            let c = c.trim();
            // A commented-out example key: its own documentation so far.
            if let Some((k, _)) = c.split_once(" = ") {
                if !k.contains(' ') {
                    out.push((format!("{section}.{k}"), comment.clone()));
                    continue;
                }
            }
            comment.push_str(c);
            comment.push(' ');
        } else if let Some((k, _)) = line.split_once(" = ") {
            out.push((format!("{section}.{}", k.trim()), comment.clone()));
            // A key's comment may run on to the next ("...of at most").
            if !comment.trim_end().ends_with("...") {
                comment.clear();
            }
        } else if line.is_empty() {
            comment.clear();
        }
    }
    out
}

struct Probe<'a> {
    daemon: &'a Daemon,
    next_ip: &'a mut usize,
}

impl Probe<'_> {
    /// An sshd alert from a public IP the main simulator knows, never used
    /// before (so dedup and the cache play no part), through the daemon's
    /// own engine: whether it yields an event.
    async fn enriched(&mut self, edit: impl Fn(String) -> String) -> bool {
        *self.next_ip += 1;
        let n = *self.next_ip;
        let line = edit(sshd_alert(n, &pool_ip(n), "001"));
        let out = self
            .daemon
            .engine
            .process(line.as_bytes(), None)
            .await
            .unwrap();
        !out.datagrams.is_empty()
    }
}

fn client_for(cfg: &Config) -> MispClient {
    MispClient::new(&cfg.misp, &cfg.resolve_api_key().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_takes_effect_on_sighup_or_is_reported_as_restart_only() {
    let (data, _) = pool(400);
    let h = Harness::new(&data).await;
    // A second MISP that knows only pool IP 1000, for misp.url.
    let other = MispSim::start(
        &SimData::from_events([event_with_ips(9, &[pool_ip(1000)])]),
        KEY,
    )
    .await
    .unwrap();
    let key_file = h.dir.path().join("misp.key");
    std::fs::write(&key_file, "not-the-key\n").unwrap();
    let ca = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/test-ca.pem");
    let base = h.cfg.clone();
    let mut daemon = h.start();
    let mut next_ip = 0;
    let docs = documented();
    let mut restart_only = Vec::new();

    for key in all_keys() {
        let mut new = base.clone();
        match key.as_str() {
            "input.alerts_file" => new.input.alerts_file = h.dir.path().join("other.json").into(),
            "input.state_dir" => new.input.state_dir = h.dir.path().join("other-state").into(),
            "input.start_position" => new.input.start_position = StartPosition::End.into(),
            "input.max_line_bytes" => new.input.max_line_bytes = 4096.into(),
            "input.follow_spaces" => new.input.follow_spaces = false.into(),
            "filter.min_level" => new.filter.min_level = 12,
            "filter.exclude_rule_ids" => new.filter.exclude_rule_ids = vec!["5712".into()],
            "filter.exclude_ips" => new.filter.exclude_ips = vec!["185.100.0.0/16".into()],
            "filter.exclude_domains" => new.filter.exclude_domains = vec!["example.org".into()],
            "filter.require_rule" => new.filter.require_rule = Some(false),
            "filter.include_integrations" => {
                new.filter.include_integrations = vec!["windows".into()]
            }
            "filter.exclude_integrations" => {
                new.filter.exclude_integrations = vec!["windows".into()]
            }
            "filter.min_level_5x" => new.filter.min_level_5x = "high".into(),
            "filter.skip_fields" => new
                .filter
                .skip_fields
                .extend(["data".into(), "full_log".into()]),
            "filter.scan_fields" => new.filter.scan_fields = vec![],
            "misp.url" => new.misp.url = other.url(),
            "misp.api_key" => new.misp.api_key = Some(Secret::new("another-key")),
            "misp.api_key_file" => {
                new.misp.api_key = None;
                new.misp.api_key_file = Some(key_file.clone());
            }
            "misp.verify_tls" => new.misp.verify_tls = false,
            "misp.ca_file" => new.misp.ca_file = Some(ca.clone()),
            "misp.timeout_secs" => new.misp.timeout_secs = 3,
            "misp.max_concurrent_requests" => new.misp.max_concurrent_requests = 2.into(),
            "misp.match_types" => new.misp.match_types = MatchTypes::Direction,
            "misp.match_subdomains" => new.misp.match_subdomains = false.into(),
            "misp.decay" => new.misp.decay = true,
            "misp.enforce_warninglist" => new.misp.enforce_warninglist = false,
            "misp.cache_ttl_secs" => new.misp.cache_ttl_secs = 7,
            "misp.negative_cache_ttl_secs" => new.misp.negative_cache_ttl_secs = 8,
            "misp.cache_max_entries" => new.misp.cache_max_entries = 10.into(),
            "misp.batch_window_ms" => new.misp.batch_window_ms = 9,
            "misp.batch_max_values" => new.misp.batch_max_values = 11,
            "misp.retries" => new.misp.retries = 1,
            "misp.breaker_failures" => new.misp.breaker_failures = 13,
            "misp.max_response_bytes" => new.misp.max_response_bytes = 4096,
            "misp.isolated_retry_secs" => new.misp.isolated_retry_secs = 5,
            "misp.mode" => new.misp.mode = wazuh_misp::config::MispMode::Mirror.into(),
            "misp.name" => new.misp.name = "other".to_owned().into(),
            "misp.sync_interval_secs" => new.misp.sync_interval_secs = 5.into(),
            "misp.sync_overlap_secs" => new.misp.sync_overlap_secs = 5.into(),
            "misp.full_sync_interval_secs" => new.misp.full_sync_interval_secs = 5.into(),
            "misp.sync_page_size" => new.misp.sync_page_size = 5.into(),
            "misp.detail_timeout_secs" => new.misp.detail_timeout_secs = 5.into(),
            "misp.max_indicators" => new.misp.max_indicators = 5.into(),
            "misp.min_network_prefix_v4" => new.misp.min_network_prefix_v4 = 16.into(),
            "misp.min_network_prefix_v6" => new.misp.min_network_prefix_v6 = 48.into(),
            "misp.sync.to_ids_only" => new.misp.sync.0.to_ids_only = false,
            "misp.sync.published_only" => new.misp.sync.0.published_only = true,
            "misp.sync.include_tags" => new.misp.sync.0.include_tags = vec!["tlp:white".into()],
            "misp.sync.exclude_tags" => new.misp.sync.0.exclude_tags = vec!["tlp:red".into()],
            "misp.sync.max_age_days" => new.misp.sync.0.max_age_days = 5,
            "misp.servers" => {
                new.misp.servers = vec![wazuh_misp::config::ServerConfig {
                    name: "second".into(),
                    url: other.url(),
                    ..Default::default()
                }]
                .into()
            }
            "misp.sightings" => new.misp.sightings = true.into(),
            "misp.sighting_source" => new.misp.sighting_source = "soc".to_owned().into(),
            "misp.sighting_interval_secs" => new.misp.sighting_interval_secs = 5.into(),
            "misp.sightings_per_minute" => new.misp.sightings_per_minute = 5.into(),
            "misp.sightings_pause_secs" => new.misp.sightings_pause_secs = 5.into(),
            "misp.sightings_queue_max" => new.misp.sightings_queue_max = 5.into(),
            "retro.enabled" => new.retro.enabled = false.into(),
            "retro.window_days" => new.retro.window_days = 5.into(),
            "retro.refs_per_value" => new.retro.refs_per_value = 5.into(),
            "retro.max_values" => new.retro.max_values = 5.into(),
            "retro.on_first_sync" => new.retro.on_first_sync = true.into(),
            "retro.max_events_per_sync" => new.retro.max_events_per_sync = 5.into(),
            "wazuh.version" => new.wazuh.version = wazuh_misp::config::WazuhVersion::V5.into(),
            "dedup.window_secs" => new.dedup.window_secs = 17,
            "dedup.max_entries" => new.dedup.max_entries = 100.into(),
            "dedup.persist_secs" => new.dedup.persist_secs = 5.into(),
            "output.queue_socket" => {
                new.output.queue_socket = h.dir.path().join("other-queue").into()
            }
            "output.error_event_after_secs" => new.output.error_event_after_secs = 19,
            "output.error_event_interval_secs" => new.output.error_event_interval_secs = 23,
            "pipeline.workers" => new.pipeline.workers = 1.into(),
            "pipeline.channel_capacity" => new.pipeline.channel_capacity = 32.into(),
            "log.level" => new.log.level = "debug".into(),
            "log.format" => new.log.format = LogFormat::Json.into(),
            "log.stats_interval_secs" => new.log.stats_interval_secs = 1,
            "metrics.listen" => new.metrics.listen = "127.0.0.1:1".to_owned().into(),
            other => panic!("no probe for config key {other}: add one to this test"),
        }
        let changes = daemon.reload(new.clone(), client_for(&new)).unwrap();
        let change = changes
            .iter()
            .find(|c| c.key == key)
            .unwrap_or_else(|| panic!("{key}: not reported as changed: {changes:?}"));
        let live_changed: Vec<&str> = changes
            .iter()
            .filter(|c| c.applies == Applies::Live)
            .map(|c| c.key.as_str())
            .collect();
        let doc = docs
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, d)| d.clone())
            .unwrap_or_else(|| panic!("{key} is not documented in config/wazuh-misp.toml"));
        let d = &daemon;
        let mut p = Probe {
            daemon: d,
            next_ip: &mut next_ip,
        };
        let lookup = d.engine.lookup.primary();
        let rules = d.engine.rules.load();
        if change.applies == Applies::AfterRestart {
            assert!(
                doc.contains("(restart)"),
                "{key} is restart-only but documented as live: {doc}"
            );
            restart_only.push(key.clone());
            // Still running as it started: the daemon's own probe works.
            assert!(
                p.enriched(|l| l).await,
                "{key}: the running daemon still enriches"
            );
        } else {
            assert!(
                !doc.contains("(restart)"),
                "{key} applies live but is documented (restart): {doc}"
            );
            // api_key_file replaces api_key: the two cannot both be set.
            let expected: &[&str] = match key.as_str() {
                "misp.api_key_file" => &["misp.api_key", "misp.api_key_file"],
                k => &[k][..],
            };
            assert_eq!(live_changed, expected, "{key}: exactly this key changed");
            let took_effect = match key.as_str() {
                "filter.min_level"
                | "filter.exclude_rule_ids"
                | "filter.exclude_ips"
                | "filter.skip_fields" => !p.enriched(|l| l).await,
                "filter.scan_fields" => {
                    // The IP only in rule.description, which scan_fields listed.
                    let only_in_description = |l: String| {
                        let mut v: Value = serde_json::from_str(&l).unwrap();
                        let ip = v["data"]["srcip"].as_str().unwrap().to_owned();
                        v["rule"]["description"] = format!("blocked {ip}").into();
                        v["data"] = serde_json::json!({});
                        v["full_log"] = "x".into();
                        v.to_string()
                    };
                    !p.enriched(only_in_description).await
                }
                "misp.url" => {
                    let n = 1000;
                    let line = sshd_alert(n, &pool_ip(n), "001");
                    let out = d.engine.process(line.as_bytes(), None).await.unwrap();
                    !out.datagrams.is_empty()
                }
                "misp.api_key" | "misp.api_key_file" => matches!(
                    lookup.client().search(&[pool_ip(1)]).await,
                    Err(MispError::Auth { .. })
                ),
                "misp.verify_tls" => !lookup.client().verifies_tls(),
                "misp.ca_file" => lookup.client().ca_file() == Some(ca.as_path()),
                "misp.timeout_secs" => lookup.client().timeout() == Duration::from_secs(3),
                "misp.match_types" => rules.match_types == MatchTypes::Direction,
                "filter.exclude_domains" => rules.extractor.excluded_domain("www.example.org"),
                "filter.require_rule" => !rules.filter.require_rule,
                "filter.include_integrations" => rules.filter.include_integrations == ["windows"],
                "filter.exclude_integrations" => rules.filter.exclude_integrations == ["windows"],
                "filter.min_level_5x" => rules.filter.min_level_5x == 3,
                "misp.decay" => {
                    lookup.client().request_body(&[], None)["includeDecayScore"] == true
                }
                "misp.enforce_warninglist" => {
                    lookup.client().request_body(&[], None)["enforceWarninglist"] == false
                }
                "misp.cache_ttl_secs" => lookup.ttls().0 == Duration::from_secs(7),
                "misp.negative_cache_ttl_secs" => lookup.ttls().1 == Duration::from_secs(8),
                "misp.batch_window_ms" => {
                    lookup.settings().batch_window == Duration::from_millis(9)
                }
                "misp.batch_max_values" => lookup.settings().batch_max_values == 11,
                "misp.retries" => lookup.settings().retries == 1,
                "misp.breaker_failures" => lookup.breaker().threshold() == 13,
                "misp.max_response_bytes" => lookup.client().max_response_bytes() == 4096,
                "misp.isolated_retry_secs" => {
                    lookup.settings().isolated_retry == Duration::from_secs(5)
                }
                "dedup.window_secs" => {
                    d.engine.dedup.as_ref().unwrap().window() == Duration::from_secs(17)
                }
                "output.error_event_after_secs" => d.error_event_settings().0 == 19,
                "output.error_event_interval_secs" => d.error_event_settings().1 == 23,
                // Applied by `wazuh-misp run` itself (the log filter and the
                // stats timer are the process's): tests/process.rs checks
                // them through a real SIGHUP. Here, the daemon keeps them.
                "log.level" | "log.stats_interval_secs" => d.config().log == new.log,
                other => panic!("{other} applies live but has no probe: add one"),
            };
            assert!(took_effect, "{key} was reloaded but did not take effect");
        }
        drop(rules);
        // Back to the base config before the next key.
        daemon.reload(base.clone(), client_for(&base)).unwrap();
    }
    restart_only.sort();
    assert_eq!(
        restart_only,
        [
            "dedup.max_entries",
            "dedup.persist_secs",
            "input.alerts_file",
            "input.follow_spaces",
            "input.max_line_bytes",
            "input.start_position",
            "input.state_dir",
            "log.format",
            "metrics.listen",
            "misp.cache_max_entries",
            "misp.detail_timeout_secs",
            "misp.full_sync_interval_secs",
            "misp.match_subdomains",
            "misp.max_concurrent_requests",
            "misp.max_indicators",
            "misp.min_network_prefix_v4",
            "misp.min_network_prefix_v6",
            "misp.mode",
            "misp.name",
            "misp.servers",
            "misp.sighting_interval_secs",
            "misp.sighting_source",
            "misp.sightings",
            "misp.sightings_pause_secs",
            "misp.sightings_per_minute",
            "misp.sightings_queue_max",
            "misp.sync.exclude_tags",
            "misp.sync.include_tags",
            "misp.sync.max_age_days",
            "misp.sync.published_only",
            "misp.sync.to_ids_only",
            "misp.sync_interval_secs",
            "misp.sync_overlap_secs",
            "misp.sync_page_size",
            "output.queue_socket",
            "pipeline.channel_capacity",
            "pipeline.workers",
            "retro.enabled",
            "retro.max_events_per_sync",
            "retro.max_values",
            "retro.on_first_sync",
            "retro.refs_per_value",
            "retro.window_days",
            "wazuh.version",
        ]
    );
    daemon.shutdown(Duration::from_secs(5)).await;
}
