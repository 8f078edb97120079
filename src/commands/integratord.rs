//! `wazuh-misp integratord <alert-file> <api-key> [hook-url] ...`: a drop-in
//! for integratord's `custom-*` integrations, for users who keep integratord.
//!
//! integratord runs the integration once per alert with the path of a file
//! holding the alert, the `<api_key>` and the `<hook_url>` of its
//! `<integration>` block. We enrich that one alert with the same config,
//! rules and dedup window (state_dir/dedup.json) as the daemon, send the
//! events to the queue socket, and exit.

use crate::config::{self, Config, Secret};
use crate::dedup::Dedup;
use crate::lookup::{Lookup, MispClient};
use crate::runtime::{self, Engine, Rules};
use crate::stats::Stats;
use anyhow::Context;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Builds the config: the file if it exists, then integratord's arguments
/// (a non-empty api key and an http(s) hook url override it).
pub fn effective_config(
    path: &Path,
    api_key: Option<&str>,
    hook_url: Option<&str>,
) -> anyhow::Result<Config> {
    // The arguments may supply the url and key the file lacks: validate
    // only after applying them.
    let mut cfg = if path.exists() {
        config::load_unvalidated(path)?
    } else {
        Config::default()
    };
    if let Some(k) = api_key.filter(|k| !k.trim().is_empty()) {
        cfg.misp.api_key = Some(Secret::new(k.trim()));
        cfg.misp.api_key_file = None;
    }
    if let Some(u) = hook_url.filter(|u| u.starts_with("http://") || u.starts_with("https://")) {
        cfg.misp.url = u.to_owned();
    }
    cfg.validate()?;
    Ok(cfg)
}

pub async fn run(
    config_path: &Path,
    alert_file: &Path,
    api_key: Option<&str>,
    hook_url: Option<&str>,
) -> anyhow::Result<usize> {
    let cfg = effective_config(config_path, api_key, hook_url)?;
    let alert = std::fs::read(alert_file)
        .with_context(|| format!("cannot read alert file {}", alert_file.display()))?;
    let key = cfg.resolve_api_key()?;
    let client = MispClient::new(&cfg.misp, &key)?;
    let stats = Arc::new(Stats::default());
    let dedup = Dedup::new(
        Duration::from_secs(cfg.dedup.window_secs),
        *cfg.dedup.max_entries,
    );
    let state_ok = runtime::prepare_state_dir(&cfg.input.state_dir).is_ok();
    if state_ok {
        runtime::load_dedup(&cfg.input.state_dir, &dedup);
    } else {
        tracing::warn!(dir = %cfg.input.state_dir.display(), "state dir not writable; dedup window not kept between runs");
    }
    let engine = Engine::new(
        Rules::from_config(&cfg)?,
        Lookup::start(client, &cfg.misp, stats),
        Some(dedup.clone()),
        Arc::new(Stats::default()),
    );
    // One alert per file; tolerate a trailing newline or several lines.
    let mut sent = 0;
    for line in alert
        .split(|&b| b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
    {
        let produced = match tokio::time::timeout(
            Duration::from_secs(cfg.misp.timeout_secs * 3),
            engine.process(line, None),
        )
        .await
        {
            Ok(Ok(p)) => p,
            Ok(Err(_)) | Err(_) => anyhow::bail!("MISP did not answer in time; alert not enriched"),
        };
        for datagram in produced.datagrams.iter() {
            send(&cfg.output.queue_socket, datagram)?;
            sent += 1;
        }
        for &k in &produced.dedup_keys {
            dedup.mark_sent(k);
        }
    }
    if state_ok {
        runtime::save_dedup(&cfg.input.state_dir, &dedup);
    }
    Ok(sent)
}

/// One datagram, retried for a few seconds while analysisd restarts.
pub fn send(socket: &Path, datagram: &[u8]) -> anyhow::Result<()> {
    let mut last = None;
    for attempt in 0..20 {
        let result = std::os::unix::net::UnixDatagram::unbound().and_then(|s| {
            s.connect(socket)?;
            s.send(datagram)
        });
        match result {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(100 * (attempt + 1)));
    }
    Err(anyhow::anyhow!(
        "cannot send to {}: {}",
        socket.display(),
        last.expect("an error")
    ))
}
