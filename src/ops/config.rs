//! Configuration: a TOML file, overridable by `WAZUH_MISP__<SECTION>__<KEY>`
//! environment variables.
//!
//! Every key is a public contract, documented with its default in
//! `config/wazuh-misp.toml`. Unknown keys are refused, and every error names
//! the key and the reason, because a daemon that starts with a typo in its
//! config silently does the wrong thing for weeks.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/wazuh-misp/wazuh-misp.toml";
const ENV_PREFIX: &str = "WAZUH_MISP";

/// A value that must never be printed: not in logs, errors or `{:?}`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// `url` with any `user:password@` taken out, for logs, errors and
/// `check-config`. Text that is not a URL is shown up to its `@`, if any.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url.trim()) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        Ok(_) => url.trim().to_owned(),
        Err(_) => match url.rfind('@') {
            Some(at) => format!("<redacted>@{}", &url[at + 1..]),
            None => url.to_owned(),
        },
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Serialised only for "which keys changed" comparisons; a digest
        // tells a change without revealing the key.
        use md5::{Digest, Md5};
        let digest = Md5::digest(self.0.as_bytes());
        s.serialize_str(&format!("<redacted:{:x}>", digest))
    }
}

/// A key read once at start: its type says that a reload does not apply
/// it. [`Config::changes`] reports a change of such a key as
/// [`Applies::AfterRestart`]; every other key applies live on SIGHUP.
#[derive(Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Restart<T>(pub T);

impl<T: fmt::Debug> fmt::Debug for Restart<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<T> std::ops::Deref for Restart<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: AsRef<U>, U: ?Sized> AsRef<U> for Restart<T> {
    fn as_ref(&self) -> &U {
        self.0.as_ref()
    }
}

impl<T> From<T> for Restart<T> {
    fn from(v: T) -> Self {
        Restart(v)
    }
}

thread_local! {
    /// Set while [`Config::changes`] serialises: [`Restart`] values then
    /// wrap themselves in a marker, so the walk can tell them apart.
    static MARK_RESTART: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}
const RESTART_MARK: &str = "\u{0}restart";

impl<T: Serialize> Serialize for Restart<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if MARK_RESTART.with(|m| m.get()) {
            use serde::ser::SerializeMap;
            let mut m = s.serialize_map(Some(1))?;
            m.serialize_entry(RESTART_MARK, &self.0)?;
            m.end()
        } else {
            self.0.serialize(s)
        }
    }
}

/// When a changed key takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applies {
    /// On SIGHUP.
    Live,
    /// At the next start: the key's type is [`Restart`].
    AfterRestart,
}

/// One key whose value differs between two configs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The dotted name, e.g. `filter.min_level`.
    pub key: String,
    pub applies: Applies,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub input: InputConfig,
    pub filter: FilterConfig,
    pub misp: MispConfig,
    pub dedup: DedupConfig,
    pub output: OutputConfig,
    pub pipeline: PipelineConfig,
    pub log: LogConfig,
    pub metrics: MetricsConfig,
    pub retro: RetroConfig,
    pub wazuh: WazuhConfig,
}

/// Which Wazuh line the manager runs.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum WazuhVersion {
    /// 5 when `/var/wazuh-manager` exists and `/var/ossec` does not.
    #[default]
    #[serde(rename = "auto")]
    Auto,
    #[serde(rename = "4")]
    V4,
    #[serde(rename = "5")]
    V5,
}

/// A resolved [`WazuhVersion`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WazuhLine {
    /// alerts.json in, analysisd's datagram socket out.
    V4,
    /// The engine's event stream in, its HTTP ingestion socket out.
    V5,
}

impl WazuhLine {
    pub fn as_str(self) -> &'static str {
        match self {
            WazuhLine::V4 => "4",
            WazuhLine::V5 => "5",
        }
    }
}

/// Wazuh 4's install root, and Wazuh 5's.
pub const WAZUH4_ROOT: &str = "/var/ossec";
pub const WAZUH5_ROOT: &str = "/var/wazuh-manager";
/// The defaults of `input.alerts_file` and `output.queue_socket` on 4.
pub const WAZUH4_ALERTS: &str = "/var/ossec/logs/alerts/alerts.json";
pub const WAZUH4_QUEUE: &str = "/var/ossec/queue/sockets/queue";
/// The same on 5: the engine's event stream (the stable name, a hard link
/// to the active file) and its HTTP ingestion socket.
pub const WAZUH5_EVENTS: &str =
    "/var/wazuh-manager/logs/standard-wazuh-events-v5/standard-wazuh-events-v5.json";
pub const WAZUH5_QUEUE: &str = "/var/wazuh-manager/queue/sockets/queue-http.sock";

impl WazuhVersion {
    /// The line this setting means on a host where `exists` tells which
    /// install roots there are.
    pub fn resolve(self, exists: impl Fn(&Path) -> bool) -> WazuhLine {
        match self {
            WazuhVersion::V4 => WazuhLine::V4,
            WazuhVersion::V5 => WazuhLine::V5,
            WazuhVersion::Auto
                if exists(Path::new(WAZUH5_ROOT)) && !exists(Path::new(WAZUH4_ROOT)) =>
            {
                WazuhLine::V5
            }
            WazuhVersion::Auto => WazuhLine::V4,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WazuhConfig {
    /// `"auto"`, `"4"` or `"5"`.
    pub version: Restart<WazuhVersion>,
}

/// The ledger of observables seen, and retro-hunting when the mirror
/// learns a new indicator (mirror mode).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RetroConfig {
    pub enabled: Restart<bool>,
    pub window_days: Restart<u64>,
    pub refs_per_value: Restart<usize>,
    pub max_values: Restart<u64>,
    pub on_first_sync: Restart<bool>,
    pub max_events_per_sync: Restart<usize>,
}

impl Default for RetroConfig {
    fn default() -> Self {
        RetroConfig {
            enabled: Restart(true),
            window_days: Restart(7),
            refs_per_value: Restart(3),
            max_values: Restart(2_000_000),
            on_first_sync: Restart(false),
            max_events_per_sync: Restart(1000),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address for the Prometheus endpoint (`/metrics`), e.g.
    /// "127.0.0.1:9464". Empty: off.
    pub listen: Restart<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StartPosition {
    Beginning,
    End,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct InputConfig {
    pub alerts_file: Restart<PathBuf>,
    pub state_dir: Restart<PathBuf>,
    /// Only consulted when there is no bookmark, at start.
    pub start_position: Restart<StartPosition>,
    pub max_line_bytes: Restart<usize>,
    /// Wazuh 5: also follow the other spaces' event channels beside
    /// `alerts_file` (`<logs>/<space>-wazuh-events-v5/`).
    pub follow_spaces: Restart<bool>,
}

impl Default for InputConfig {
    fn default() -> Self {
        InputConfig {
            alerts_file: Restart(WAZUH4_ALERTS.into()),
            state_dir: Restart("/var/lib/wazuh-misp".into()),
            start_position: Restart(StartPosition::End),
            max_line_bytes: Restart(1_048_576),
            follow_spaces: Restart(true),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FilterConfig {
    pub min_level: u32,
    pub exclude_rule_ids: Vec<String>,
    pub exclude_ips: Vec<String>,
    pub exclude_domains: Vec<String>,
    pub skip_fields: Vec<String>,
    pub scan_fields: Vec<String>,
    /// Unset: true on Wazuh 4, false on 5 ([`FilterConfig::requires_rule`]).
    pub require_rule: Option<bool>,
    pub include_integrations: Vec<String>,
    pub exclude_integrations: Vec<String>,
    /// `informational`, `low`, `medium`, `high` or `critical`.
    pub min_level_5x: String,
}

/// Wazuh 5's categorical levels (its rules' `level`), lowest first.
pub const LEVELS_5X: [&str; 5] = ["informational", "low", "medium", "high", "critical"];

impl Default for FilterConfig {
    fn default() -> Self {
        let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        FilterConfig {
            min_level: 6,
            exclude_rule_ids: vec!["31530".into(), "31531".into()],
            exclude_ips: Vec::new(),
            exclude_domains: Vec::new(),
            skip_fields: own(crate::extract::DEFAULT_SKIP_FIELDS),
            scan_fields: own(crate::extract::DEFAULT_SCAN_FIELDS),
            require_rule: None,
            include_integrations: Vec::new(),
            exclude_integrations: Vec::new(),
            min_level_5x: "medium".to_owned(),
        }
    }
}

impl FilterConfig {
    /// Whether an event needs a rule on `line`.
    pub fn requires_rule(&self, line: WazuhLine) -> bool {
        self.require_rule.unwrap_or(line == WazuhLine::V4)
    }

    /// `min_level_5x`'s rank in [`LEVELS_5X`].
    pub fn min_level_5x_rank(&self) -> Result<u8, ConfigError> {
        LEVELS_5X
            .iter()
            .position(|l| l.eq_ignore_ascii_case(self.min_level_5x.trim()))
            .map(|i| i as u8)
            .ok_or_else(|| {
                ConfigError::key(
                    "filter.min_level_5x",
                    format!(
                        "{:?} is not a level: informational, low, medium, high or critical",
                        self.min_level_5x
                    ),
                )
            })
    }

    /// `exclude_domains`, each a host name.
    pub fn check_exclude_domains(&self) -> Result<(), ConfigError> {
        for d in &self.exclude_domains {
            if crate::extract::domain::normalise(d.trim()).is_none() {
                return Err(ConfigError::key(
                    "filter.exclude_domains",
                    format!("{d:?} is not a domain name (letters, digits, '-' and '.')"),
                ));
            }
        }
        Ok(())
    }

    /// `exclude_ips` as networks; a bare address is a /32 or /128.
    pub fn exclude_nets(&self) -> Result<Vec<IpNet>, ConfigError> {
        self.exclude_ips
            .iter()
            .map(|s| {
                let s = s.trim();
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        ConfigError::key(
                            "filter.exclude_ips",
                            format!("{s:?} is neither an IP address nor a CIDR"),
                        )
                    })
            })
            .collect()
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MatchTypes {
    /// Keep every IP attribute type MISP matched.
    All,
    /// The original script: ip-src types for a source, ip-dst types for a destination.
    Direction,
}

/// How the daemon asks MISP about an alert's observables.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MispMode {
    /// Every lookup is local, against a synced copy of MISP's indicators;
    /// MISP is asked only for the details of hits.
    Mirror,
    /// Every distinct value is a restSearch (cached and batched).
    Query,
}

/// Which attributes the mirror copies (`[misp.sync]`, and per server).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SyncFilters {
    /// Only attributes with the IDS flag (MISP's "use for detection").
    pub to_ids_only: bool,
    /// Only attributes of published events.
    pub published_only: bool,
    /// Only attributes whose event or self carries one of these tags.
    pub include_tags: Vec<String>,
    /// No attribute whose event or self carries one of these tags.
    pub exclude_tags: Vec<String>,
    /// Attributes older than this (by timestamp) are not hits. 0: off.
    pub max_age_days: u64,
}

impl Default for SyncFilters {
    fn default() -> Self {
        SyncFilters {
            to_ids_only: true,
            published_only: false,
            include_tags: Vec::new(),
            exclude_tags: Vec::new(),
            max_age_days: 0,
        }
    }
}

/// One more MISP server for the mirror (`[[misp.servers]]`). A key left
/// out takes its value from `[misp]`.
#[derive(Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub name: String,
    pub url: String,
    pub api_key: Option<Secret>,
    pub api_key_file: Option<PathBuf>,
    pub verify_tls: Option<bool>,
    pub ca_file: Option<PathBuf>,
    pub enforce_warninglist: Option<bool>,
    pub sync: Option<SyncFilters>,
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = serde_json::to_value(self).unwrap_or_default();
        shown["url"] = redact_url(&self.url).into();
        write!(f, "ServerConfig {shown}")
    }
}

/// A MISP server as the daemon uses it: `[misp]` with one server's own
/// keys laid over it.
#[derive(Debug, Clone)]
pub struct Server {
    pub name: String,
    /// Where it is configured, for errors: `misp` or `misp.servers[i]`.
    pub table: String,
    pub misp: MispConfig,
}

impl Server {
    /// Its API key; only the first server falls back to the systemd
    /// credential.
    pub fn api_key(&self) -> Result<Secret, ConfigError> {
        self.misp.resolve_api_key(&self.table, self.table == "misp")
    }
}

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MispConfig {
    pub mode: Restart<MispMode>,
    /// The first server's name, in events (`misp_data.server`) and status.
    pub name: Restart<String>,
    pub url: String,
    pub api_key: Option<Secret>,
    pub api_key_file: Option<PathBuf>,
    pub verify_tls: bool,
    pub ca_file: Option<PathBuf>,
    pub timeout_secs: u64,
    pub max_concurrent_requests: Restart<usize>,
    pub match_types: MatchTypes,
    /// A MISP `domain` attribute also matches its subdomains.
    pub match_subdomains: Restart<bool>,
    pub decay: bool,
    pub enforce_warninglist: bool,
    pub cache_ttl_secs: u64,
    pub negative_cache_ttl_secs: u64,
    pub cache_max_entries: Restart<u64>,
    pub batch_window_ms: u64,
    pub batch_max_values: usize,
    pub retries: u32,
    pub breaker_failures: u32,
    pub max_response_bytes: usize,
    pub isolated_retry_secs: u64,
    pub sync_interval_secs: Restart<u64>,
    pub sync_overlap_secs: Restart<u64>,
    pub full_sync_interval_secs: Restart<u64>,
    pub sync_page_size: Restart<u32>,
    pub detail_timeout_secs: Restart<u64>,
    pub max_indicators: Restart<u64>,
    /// A network broader than this (IPv4 prefix length) is not mirrored:
    /// `0.0.0.0/0` in MISP would make every IP a hit.
    pub min_network_prefix_v4: Restart<u8>,
    /// The same for IPv6.
    pub min_network_prefix_v6: Restart<u8>,
    pub sync: Restart<SyncFilters>,
    pub servers: Restart<Vec<ServerConfig>>,
    /// Send MISP a sighting for each matched attribute (off: it writes).
    pub sightings: Restart<bool>,
    /// The sightings' `source`; empty: `wazuh-<manager.name>`.
    pub sighting_source: Restart<String>,
    pub sighting_interval_secs: Restart<u64>,
    pub sightings_per_minute: Restart<u32>,
    pub sightings_pause_secs: Restart<u64>,
    /// Pending sightings kept (the oldest dropped beyond).
    pub sightings_queue_max: Restart<usize>,
}

impl fmt::Debug for MispConfig {
    /// The url may carry a password; the key is a [`Secret`] already.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = serde_json::to_value(self).unwrap_or_default();
        shown["url"] = redact_url(&self.url).into();
        write!(f, "MispConfig {shown}")
    }
}

impl MispConfig {
    /// This server's API key; `table` names it in errors (`misp`, or
    /// `misp.servers[name]`). Only the first server falls back to the
    /// systemd credential.
    pub fn resolve_api_key(&self, table: &str, credential: bool) -> Result<Secret, ConfigError> {
        if let Some(k) = &self.api_key {
            return Ok(k.clone());
        }
        let file_key = format!("{table}.api_key_file");
        let path = match (
            &self.api_key_file,
            std::env::var_os("CREDENTIALS_DIRECTORY"),
        ) {
            (Some(p), _) => p.clone(),
            (None, Some(dir)) if credential => Path::new(&dir).join("misp-api-key"),
            _ => {
                return Err(ConfigError::key(
                    format!("{table}.api_key"),
                    if credential {
                        "no API key: set misp.api_key or misp.api_key_file (or the systemd credential misp-api-key)".to_owned()
                    } else {
                        format!("no API key: set {table}.api_key or {table}.api_key_file (or misp.api_key for every server)")
                    },
                ))
            }
        };
        let text = std::fs::read_to_string(&path).map_err(|e| {
            ConfigError::key(&file_key, format!("cannot read {}: {e}", path.display()))
        })?;
        let k = text.trim();
        if k.is_empty() {
            return Err(ConfigError::key(
                file_key,
                format!("{} is empty", path.display()),
            ));
        }
        Ok(Secret::new(k))
    }
}

impl Default for MispConfig {
    fn default() -> Self {
        MispConfig {
            mode: Restart(MispMode::Mirror),
            name: Restart("misp".to_owned()),
            url: String::new(),
            api_key: None,
            api_key_file: None,
            verify_tls: true,
            ca_file: None,
            timeout_secs: 10,
            max_concurrent_requests: Restart(8),
            match_types: MatchTypes::All,
            match_subdomains: Restart(true),
            decay: false,
            enforce_warninglist: true,
            cache_ttl_secs: 600,
            negative_cache_ttl_secs: 300,
            cache_max_entries: Restart(100_000),
            batch_window_ms: 5,
            batch_max_values: 100,
            retries: 3,
            breaker_failures: 5,
            max_response_bytes: 32 * 1024 * 1024,
            isolated_retry_secs: 600,
            sync_interval_secs: Restart(60),
            sync_overlap_secs: Restart(300),
            full_sync_interval_secs: Restart(86400),
            sync_page_size: Restart(5000),
            detail_timeout_secs: Restart(10),
            max_indicators: Restart(5_000_000),
            min_network_prefix_v4: Restart(8),
            min_network_prefix_v6: Restart(32),
            sync: Restart(SyncFilters::default()),
            servers: Restart(Vec::new()),
            sightings: Restart(false),
            sighting_source: Restart(String::new()),
            sighting_interval_secs: Restart(3600),
            sightings_per_minute: Restart(120),
            sightings_pause_secs: Restart(600),
            sightings_queue_max: Restart(10_000),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DedupConfig {
    pub window_secs: u64,
    pub max_entries: Restart<u64>,
    pub persist_secs: Restart<u64>,
}

impl Default for DedupConfig {
    fn default() -> Self {
        DedupConfig {
            window_secs: 3600,
            max_entries: Restart(1_000_000),
            persist_secs: Restart(60),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OutputConfig {
    pub queue_socket: Restart<PathBuf>,
    /// MISP failing (or refusing the key) this long sends an error event.
    pub error_event_after_secs: u64,
    /// At most one error event per this many seconds.
    pub error_event_interval_secs: u64,
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            queue_socket: Restart(WAZUH4_QUEUE.into()),
            error_event_after_secs: 60,
            error_event_interval_secs: 600,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// 0 means one per runtime thread ([`runtime_threads`]).
    pub workers: Restart<usize>,
    pub channel_capacity: Restart<usize>,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            workers: Restart(0),
            channel_capacity: Restart(1024),
        }
    }
}

impl PipelineConfig {
    pub fn worker_count(&self) -> usize {
        if *self.workers == 0 {
            runtime_threads()
        } else {
            *self.workers
        }
    }
}

/// Threads for the async runtime: one per CPU but one, and at least one.
///
/// Why not one per CPU: the tailer and the writer are threads of their own
/// that are busy whenever alerts flow, and analysisd shares the machine.
/// With a runtime thread per CPU as well, its threads and those contend
/// for the cores and hand tasks back and forth (docs/perf-log.md has the
/// measurement).
pub fn runtime_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .saturating_sub(1)
        .max(1)
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
    /// Structured fields straight to journald (`journalctl -o json` can
    /// filter on REASON, IP, KIND, OFFSET...).
    Journald,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub level: String,
    pub format: Restart<LogFormat>,
    /// How often the counters are logged at info level (0: never).
    pub stats_interval_secs: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: Restart(LogFormat::Text),
            stats_interval_secs: 60,
        }
    }
}

/// A config problem, always naming the key at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub reason: String,
}

impl ConfigError {
    pub fn key(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "config: {}", self.reason)
        } else {
            write!(f, "config key `{}`: {}", self.key, self.reason)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Keys whose value is a list, so the environment can give them as
/// comma-separated text.
const LIST_KEYS: &[&str] = &[
    "filter.exclude_rule_ids",
    "filter.exclude_ips",
    "filter.exclude_domains",
    "filter.skip_fields",
    "filter.scan_fields",
    "filter.include_integrations",
    "filter.exclude_integrations",
];

/// Reads the file at `path` (it must exist) and the environment.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let cfg = load_unvalidated(path)?;
    cfg.validate()?;
    Ok(cfg)
}

/// Reads the file and the environment without the cross-key checks, for
/// callers that supply some keys themselves (integratord passes the MISP url
/// and key as arguments) and validate afterwards. Unknown keys and wrong
/// types are still refused.
pub fn load_unvalidated(path: &Path) -> Result<Config, ConfigError> {
    if !path.exists() {
        return Err(ConfigError::key(
            "",
            format!("config file {} does not exist", path.display()),
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::key("", format!("cannot read {}: {e}", path.display())))?;
    parse(&text, std::env::vars())
}

/// Parses TOML text plus environment overrides, then validates.
pub fn load_str(
    toml_text: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let cfg = parse(toml_text, env)?;
    cfg.validate()?;
    Ok(cfg)
}

fn parse(
    toml_text: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let env_map: config::Map<String, String> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")))
        .collect();
    let mut env_source = config::Environment::with_prefix(ENV_PREFIX)
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true)
        .list_separator(",")
        .source(Some(env_map));
    for k in LIST_KEYS {
        env_source = env_source.with_list_parse_key(k);
    }
    let raw = config::Config::builder()
        .add_source(config::File::from_str(toml_text, config::FileFormat::Toml))
        .add_source(env_source)
        .build()
        .map_err(from_config_error)?;
    let mut cfg: Config = raw.try_deserialize().map_err(from_config_error)?;
    cfg.apply_line_defaults(cfg.wazuh_line());
    Ok(cfg)
}

/// Turns the `config` crate's message into one that leads with the key.
fn from_config_error(e: config::ConfigError) -> ConfigError {
    let msg = e.to_string();
    // The crate reports "unknown field `x`, expected one of ... for key `misp`"
    // and "invalid type: ... for key `misp.timeout_secs`".
    let key_in = |m: &str| {
        m.rfind("for key `")
            .and_then(|i| m[i + 9..].split('`').next().map(str::to_owned))
    };
    if let Some(start) = msg.find("unknown field `") {
        let field = msg[start + 15..].split('`').next().unwrap_or("");
        let section = key_in(&msg).unwrap_or_default();
        let key = if section.is_empty() {
            field.to_owned()
        } else {
            format!("{section}.{field}")
        };
        return ConfigError::key(
            key,
            "unknown key (check the spelling against config/wazuh-misp.toml)",
        );
    }
    if let Some(key) = key_in(&msg) {
        let reason = msg.split(" for key `").next().unwrap_or(&msg).to_owned();
        return ConfigError::key(key, reason);
    }
    ConfigError::key("", msg)
}

/// A MISP url at `key`: http(s), and parseable.
fn check_url(key: &str, url: &str) -> Result<(), ConfigError> {
    let shown = redact_url(url);
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(ConfigError::key(
            key,
            format!("{shown:?} must start with https:// or http://"),
        ));
    }
    if reqwest::Url::parse(url).is_err() {
        return Err(ConfigError::key(
            key,
            format!("{shown:?} is not a valid URL"),
        ));
    }
    Ok(())
}

fn check_ca_file(key: &str, ca: Option<&Path>) -> Result<(), ConfigError> {
    match ca {
        Some(ca) if !ca.is_file() => Err(ConfigError::key(
            key,
            format!("{} is not a readable file", ca.display()),
        )),
        _ => Ok(()),
    }
}

impl Config {
    /// The Wazuh line this config runs against (`wazuh.version`).
    pub fn wazuh_line(&self) -> WazuhLine {
        self.wazuh.version.resolve(Path::exists)
    }

    /// On Wazuh 5, `input.alerts_file` and `output.queue_socket` left at
    /// their 4.x defaults mean 5's: the keys keep their names, so that one
    /// file serves both lines.
    pub fn apply_line_defaults(&mut self, line: WazuhLine) {
        if line != WazuhLine::V5 {
            return;
        }
        if self.input.alerts_file.as_path() == Path::new(WAZUH4_ALERTS) {
            self.input.alerts_file = Restart(WAZUH5_EVENTS.into());
        }
        if self.output.queue_socket.as_path() == Path::new(WAZUH4_QUEUE) {
            self.output.queue_socket = Restart(WAZUH5_QUEUE.into());
        }
    }

    /// A config for a self-contained run in one directory (the demo, the
    /// benchmarks, tests): alerts.json, the state dir and the queue socket
    /// under `dir`, reading from the beginning, talking to `misp_url`.
    pub fn in_dir(dir: &Path, misp_url: &str, api_key: &str) -> Config {
        let mut cfg = Config::default();
        cfg.input.alerts_file = dir.join("alerts.json").into();
        cfg.input.state_dir = dir.join("state").into();
        cfg.input.start_position = StartPosition::Beginning.into();
        cfg.output.queue_socket = dir.join("queue").into();
        cfg.misp.url = misp_url.to_owned();
        cfg.misp.api_key = Some(Secret::new(api_key));
        cfg
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let url = self.misp.url.trim();
        if url.is_empty() {
            return Err(ConfigError::key(
                "misp.url",
                "is required (e.g. \"https://misp.example.org\")",
            ));
        }
        check_url("misp.url", url)?;
        if self.misp.api_key.is_some() && self.misp.api_key_file.is_some() {
            return Err(ConfigError::key(
                "misp.api_key",
                "set either misp.api_key or misp.api_key_file, not both",
            ));
        }
        if self.misp.api_key.as_ref().is_some_and(Secret::is_empty) {
            return Err(ConfigError::key("misp.api_key", "is empty"));
        }
        let positive = [
            ("misp.timeout_secs", self.misp.timeout_secs as usize),
            (
                "misp.max_concurrent_requests",
                *self.misp.max_concurrent_requests,
            ),
            ("misp.batch_max_values", self.misp.batch_max_values),
            ("misp.max_response_bytes", self.misp.max_response_bytes),
            (
                "misp.cache_max_entries",
                *self.misp.cache_max_entries as usize,
            ),
            ("misp.breaker_failures", self.misp.breaker_failures as usize),
            ("input.max_line_bytes", *self.input.max_line_bytes),
            ("dedup.window_secs", self.dedup.window_secs as usize),
            ("dedup.max_entries", *self.dedup.max_entries as usize),
            ("pipeline.channel_capacity", *self.pipeline.channel_capacity),
            (
                "misp.sighting_interval_secs",
                *self.misp.sighting_interval_secs as usize,
            ),
            (
                "misp.sightings_per_minute",
                *self.misp.sightings_per_minute as usize,
            ),
            ("misp.sightings_queue_max", *self.misp.sightings_queue_max),
            ("retro.window_days", *self.retro.window_days as usize),
            ("retro.refs_per_value", *self.retro.refs_per_value),
            ("retro.max_values", *self.retro.max_values as usize),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(ConfigError::key(key, "must be greater than 0"));
            }
        }
        if *self.input.max_line_bytes < 1024 {
            return Err(ConfigError::key(
                "input.max_line_bytes",
                "must be at least 1024",
            ));
        }
        check_ca_file("misp.ca_file", self.misp.ca_file.as_deref())?;
        self.validate_servers()?;
        self.filter.exclude_nets()?;
        self.filter.check_exclude_domains()?;
        self.filter.min_level_5x_rank()?;
        if !self.metrics.listen.is_empty()
            && self.metrics.listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(ConfigError::key(
                "metrics.listen",
                format!(
                    "{:?} is not an address:port (e.g. \"127.0.0.1:9464\")",
                    self.metrics.listen
                ),
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level).map_err(|e| {
            ConfigError::key(
                "log.level",
                format!("{:?} is not a valid level or filter: {e}", self.log.level),
            )
        })?;
        Ok(())
    }

    /// The API key from `api_key`, `api_key_file`, or the systemd credential
    /// `misp-api-key`, in that order.
    pub fn resolve_api_key(&self) -> Result<Secret, ConfigError> {
        self.misp.resolve_api_key("misp", true)
    }

    fn validate_servers(&self) -> Result<(), ConfigError> {
        let m = &self.misp;
        for (key, v) in [
            ("misp.sync_interval_secs", *m.sync_interval_secs),
            ("misp.full_sync_interval_secs", *m.full_sync_interval_secs),
            ("misp.sync_page_size", u64::from(*m.sync_page_size)),
            ("misp.detail_timeout_secs", *m.detail_timeout_secs),
            ("misp.max_indicators", *m.max_indicators),
        ] {
            if v == 0 {
                return Err(ConfigError::key(key, "must be greater than 0"));
            }
        }
        for (key, v, max) in [
            ("misp.min_network_prefix_v4", *m.min_network_prefix_v4, 32),
            ("misp.min_network_prefix_v6", *m.min_network_prefix_v6, 128),
        ] {
            if v > max {
                return Err(ConfigError::key(
                    key,
                    format!("{v} is not a prefix length (0 to {max})"),
                ));
            }
        }
        if !m.servers.is_empty() && *m.mode != MispMode::Mirror {
            return Err(ConfigError::key(
                "misp.servers",
                "more servers need misp.mode = \"mirror\" (query mode asks one server)",
            ));
        }
        let valid_name = |n: &str| {
            !n.is_empty()
                && n.len() <= 64
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        let mut names = vec![m.name.as_str()];
        if !valid_name(&m.name) {
            return Err(ConfigError::key(
                "misp.name",
                format!(
                    "{:?} must be 1 to 64 letters, digits, '-', '_' or '.'",
                    *m.name
                ),
            ));
        }
        for (i, s) in m.servers.iter().enumerate() {
            let table = format!("misp.servers[{i}]");
            if !valid_name(&s.name) {
                return Err(ConfigError::key(
                    format!("{table}.name"),
                    format!(
                        "{:?} must be 1 to 64 letters, digits, '-', '_' or '.'",
                        s.name
                    ),
                ));
            }
            if names.contains(&s.name.as_str()) {
                return Err(ConfigError::key(
                    format!("{table}.name"),
                    format!("{:?} is already the name of another server", s.name),
                ));
            }
            names.push(&s.name);
            check_url(&format!("{table}.url"), s.url.trim())?;
            if s.api_key.is_some() && s.api_key_file.is_some() {
                return Err(ConfigError::key(
                    format!("{table}.api_key"),
                    "set either api_key or api_key_file, not both",
                ));
            }
            check_ca_file(&format!("{table}.ca_file"), s.ca_file.as_deref())?;
        }
        Ok(())
    }

    /// Every MISP server: `[misp]` first, then each `[[misp.servers]]`
    /// with the keys it leaves out taken from `[misp]`.
    pub fn servers(&self) -> Vec<Server> {
        let mut out = vec![Server {
            name: self.misp.name.to_string(),
            table: "misp".to_owned(),
            misp: self.misp.clone(),
        }];
        for (i, s) in self.misp.servers.iter().enumerate() {
            let mut m = self.misp.clone();
            m.servers = Restart(Vec::new());
            m.name = Restart(s.name.clone());
            m.url = s.url.clone();
            if s.api_key.is_some() || s.api_key_file.is_some() {
                m.api_key = s.api_key.clone();
                m.api_key_file = s.api_key_file.clone();
            }
            if let Some(v) = s.verify_tls {
                m.verify_tls = v;
            }
            if s.ca_file.is_some() {
                m.ca_file = s.ca_file.clone();
            }
            if let Some(v) = s.enforce_warninglist {
                m.enforce_warninglist = v;
            }
            if let Some(f) = &s.sync {
                m.sync = Restart(f.clone());
            }
            out.push(Server {
                name: s.name.clone(),
                table: format!("misp.servers[{i}]"),
                misp: m,
            });
        }
        out
    }

    /// Every leaf key whose value differs between two configs, and when
    /// its change takes effect: decided by its type ([`Restart`] or not).
    pub fn changes(&self, other: &Config) -> Vec<Change> {
        fn walk(
            prefix: &str,
            a: &serde_json::Value,
            b: &serde_json::Value,
            restart: bool,
            out: &mut Vec<Change>,
        ) {
            use serde_json::Value::Object;
            match (a, b) {
                (Object(x), _) if x.len() == 1 && x.contains_key(RESTART_MARK) => {
                    let inner =
                        |v: &serde_json::Value| v.get(RESTART_MARK).cloned().unwrap_or_default();
                    walk(prefix, &inner(a), &inner(b), true, out);
                }
                (Object(x), Object(y)) => {
                    for (k, va) in x {
                        let key = if prefix.is_empty() {
                            k.clone()
                        } else {
                            format!("{prefix}.{k}")
                        };
                        walk(
                            &key,
                            va,
                            y.get(k).unwrap_or(&serde_json::Value::Null),
                            restart,
                            out,
                        );
                    }
                }
                _ if a != b => out.push(Change {
                    key: prefix.to_owned(),
                    applies: if restart {
                        Applies::AfterRestart
                    } else {
                        Applies::Live
                    },
                }),
                _ => {}
            }
        }
        let marked = |c: &Config| {
            MARK_RESTART.with(|m| m.set(true));
            let v = serde_json::to_value(c).unwrap_or_default();
            MARK_RESTART.with(|m| m.set(false));
            v
        };
        let mut out = Vec::new();
        walk("", &marked(self), &marked(other), false, &mut out);
        out
    }

    /// Dotted names of the leaf keys whose values differ between two configs.
    pub fn changed_keys(&self, other: &Config) -> Vec<String> {
        self.changes(other).into_iter().map(|c| c.key).collect()
    }
}

#[cfg(test)]
mod tests;
