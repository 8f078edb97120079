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
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address for the Prometheus endpoint (`/metrics`), e.g.
    /// "127.0.0.1:9464". Empty: off (restart).
    pub listen: String,
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
    pub alerts_file: PathBuf,
    pub state_dir: PathBuf,
    pub start_position: StartPosition,
    pub max_line_bytes: usize,
}

impl Default for InputConfig {
    fn default() -> Self {
        InputConfig {
            alerts_file: "/var/ossec/logs/alerts/alerts.json".into(),
            state_dir: "/var/lib/wazuh-misp".into(),
            start_position: StartPosition::End,
            max_line_bytes: 1_048_576,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FilterConfig {
    pub min_level: u32,
    pub exclude_rule_ids: Vec<String>,
    pub exclude_ips: Vec<String>,
    pub skip_fields: Vec<String>,
    pub scan_fields: Vec<String>,
}

impl Default for FilterConfig {
    fn default() -> Self {
        let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        FilterConfig {
            min_level: 6,
            exclude_rule_ids: vec!["31530".into(), "31531".into()],
            exclude_ips: Vec::new(),
            skip_fields: own(crate::extract::DEFAULT_SKIP_FIELDS),
            scan_fields: own(crate::extract::DEFAULT_SCAN_FIELDS),
        }
    }
}

impl FilterConfig {
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

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MispConfig {
    pub url: String,
    pub api_key: Option<Secret>,
    pub api_key_file: Option<PathBuf>,
    pub verify_tls: bool,
    pub ca_file: Option<PathBuf>,
    pub timeout_secs: u64,
    pub max_concurrent_requests: usize,
    pub match_types: MatchTypes,
    pub decay: bool,
    pub enforce_warninglist: bool,
    pub cache_ttl_secs: u64,
    pub negative_cache_ttl_secs: u64,
    pub cache_max_entries: u64,
    pub batch_window_ms: u64,
    pub batch_max_values: usize,
    pub retries: u32,
    pub breaker_failures: u32,
    pub max_response_bytes: usize,
    pub isolated_retry_secs: u64,
}

impl fmt::Debug for MispConfig {
    /// The url may carry a password; the key is a [`Secret`] already.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = serde_json::to_value(self).unwrap_or_default();
        shown["url"] = redact_url(&self.url).into();
        write!(f, "MispConfig {shown}")
    }
}

impl Default for MispConfig {
    fn default() -> Self {
        MispConfig {
            url: String::new(),
            api_key: None,
            api_key_file: None,
            verify_tls: true,
            ca_file: None,
            timeout_secs: 10,
            max_concurrent_requests: 8,
            match_types: MatchTypes::All,
            decay: false,
            enforce_warninglist: true,
            cache_ttl_secs: 600,
            negative_cache_ttl_secs: 300,
            cache_max_entries: 100_000,
            batch_window_ms: 5,
            batch_max_values: 100,
            retries: 3,
            breaker_failures: 5,
            max_response_bytes: 32 * 1024 * 1024,
            isolated_retry_secs: 600,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DedupConfig {
    pub window_secs: u64,
    pub max_entries: u64,
    pub persist_secs: u64,
}

impl Default for DedupConfig {
    fn default() -> Self {
        DedupConfig {
            window_secs: 3600,
            max_entries: 1_000_000,
            persist_secs: 60,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OutputConfig {
    pub queue_socket: PathBuf,
    /// MISP failing (or refusing the key) this long sends an error event.
    pub error_event_after_secs: u64,
    /// At most one error event per this many seconds.
    pub error_event_interval_secs: u64,
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            queue_socket: "/var/ossec/queue/sockets/queue".into(),
            error_event_after_secs: 60,
            error_event_interval_secs: 600,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// 0 means one per runtime thread ([`runtime_threads`]).
    pub workers: usize,
    pub channel_capacity: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            workers: 0,
            channel_capacity: 1024,
        }
    }
}

impl PipelineConfig {
    pub fn worker_count(&self) -> usize {
        if self.workers == 0 {
            runtime_threads()
        } else {
            self.workers
        }
    }
}

/// Threads for the async runtime: one per CPU but one, and at least one.
///
/// Why not one per CPU: the tailer and the writer are threads of their own
/// that are busy whenever alerts flow, and analysisd shares the machine.
/// With a runtime thread per CPU as well, its threads and those contend
/// for the cores and hand tasks back and forth. Measured on 2 CPUs
/// (throughput bench, one runtime thread against two): hot_max 195–208k
/// against 166–196k alerts/s, burst as fast or faster, cold lookups 26–29k
/// against 31k a second (the target is 5k).
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
    pub format: LogFormat,
    /// How often the counters are logged at info level (0: never).
    pub stats_interval_secs: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
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
    "filter.skip_fields",
    "filter.scan_fields",
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
    raw.try_deserialize().map_err(from_config_error)
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

impl Config {
    /// A config for a self-contained run in one directory (the demo, the
    /// benchmarks, tests): alerts.json, the state dir and the queue socket
    /// under `dir`, reading from the beginning, talking to `misp_url`.
    pub fn in_dir(dir: &Path, misp_url: &str, api_key: &str) -> Config {
        let mut cfg = Config::default();
        cfg.input.alerts_file = dir.join("alerts.json");
        cfg.input.state_dir = dir.join("state");
        cfg.input.start_position = StartPosition::Beginning;
        cfg.output.queue_socket = dir.join("queue");
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
        let shown = redact_url(url);
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(ConfigError::key(
                "misp.url",
                format!("{shown:?} must start with https:// or http://"),
            ));
        }
        if reqwest::Url::parse(url).is_err() {
            return Err(ConfigError::key(
                "misp.url",
                format!("{shown:?} is not a valid URL"),
            ));
        }
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
                self.misp.max_concurrent_requests,
            ),
            ("misp.batch_max_values", self.misp.batch_max_values),
            ("misp.max_response_bytes", self.misp.max_response_bytes),
            (
                "misp.cache_max_entries",
                self.misp.cache_max_entries as usize,
            ),
            ("misp.breaker_failures", self.misp.breaker_failures as usize),
            ("input.max_line_bytes", self.input.max_line_bytes),
            ("dedup.window_secs", self.dedup.window_secs as usize),
            ("dedup.max_entries", self.dedup.max_entries as usize),
            ("pipeline.channel_capacity", self.pipeline.channel_capacity),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(ConfigError::key(key, "must be greater than 0"));
            }
        }
        if self.input.max_line_bytes < 1024 {
            return Err(ConfigError::key(
                "input.max_line_bytes",
                "must be at least 1024",
            ));
        }
        if let Some(ca) = &self.misp.ca_file {
            if !ca.is_file() {
                return Err(ConfigError::key(
                    "misp.ca_file",
                    format!("{} is not a readable file", ca.display()),
                ));
            }
        }
        self.filter.exclude_nets()?;
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
        if let Some(k) = &self.misp.api_key {
            return Ok(k.clone());
        }
        let (key, path) = match &self.misp.api_key_file {
            Some(p) => ("misp.api_key_file", p.clone()),
            None => match std::env::var_os("CREDENTIALS_DIRECTORY") {
                Some(dir) => ("misp.api_key_file", Path::new(&dir).join("misp-api-key")),
                None => {
                    return Err(ConfigError::key(
                        "misp.api_key",
                        "no API key: set misp.api_key or misp.api_key_file (or the systemd credential misp-api-key)",
                    ))
                }
            },
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| ConfigError::key(key, format!("cannot read {}: {e}", path.display())))?;
        let k = text.trim();
        if k.is_empty() {
            return Err(ConfigError::key(
                key,
                format!("{} is empty", path.display()),
            ));
        }
        Ok(Secret::new(k))
    }

    /// Dotted names of the leaf keys whose values differ between two configs.
    pub fn changed_keys(&self, other: &Config) -> Vec<String> {
        fn walk(prefix: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
            match (a, b) {
                (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
                    for (k, va) in x {
                        let key = if prefix.is_empty() {
                            k.clone()
                        } else {
                            format!("{prefix}.{k}")
                        };
                        walk(&key, va, y.get(k).unwrap_or(&serde_json::Value::Null), out);
                    }
                }
                _ if a != b => out.push(prefix.to_owned()),
                _ => {}
            }
        }
        let a = serde_json::to_value(self).unwrap_or_default();
        let b = serde_json::to_value(other).unwrap_or_default();
        let mut out = Vec::new();
        walk("", &a, &b, &mut out);
        out
    }
}

/// Keys that are read once at start; changing them needs a restart.
pub const RESTART_KEYS: &[&str] = &[
    "input.alerts_file",
    "input.state_dir",
    "pipeline.workers",
    "pipeline.channel_capacity",
    "output.queue_socket",
    "metrics.listen",
];

#[cfg(test)]
mod tests;
