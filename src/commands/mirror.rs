//! `wazuh-misp mirror status` and `wazuh-misp lookup IP...`: the mirror as
//! an operator sees it, read from the store on disk (the daemon may be
//! running: SQLite's WAL lets it write while these read).

use crate::config::{Config, MispMode};
use crate::enrich;
use crate::lookup::mirror::store::{ServerState, Store};
use crate::lookup::mirror::sync::{SyncSettings, Syncer};
use crate::lookup::mirror::Mirror;
use crate::lookup::{Intelligence, Lookup, MispClient, Recent};
use crate::observable::Observable;
use crate::stats::Stats;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn time(t: Option<i64>) -> Value {
    t.and_then(|t| chrono::DateTime::from_timestamp(t, 0))
        .map_or(Value::Null, |d| enrich::wazuh_time(d).into())
}

/// `{"servers":[{"name","attributes","networks","last_sync",
/// "last_full_sync","stale_secs","last_error",...}]}`, for every server
/// the config names (and any other the store holds).
pub fn status(cfg: &Config) -> anyhow::Result<Value> {
    let store = Store::open_read_only(&cfg.input.state_dir)?;
    let stored: Vec<ServerState> = match &store {
        Some(s) => s.servers()?,
        None => Vec::new(),
    };
    let now = chrono::Utc::now().timestamp();
    let configured: Vec<String> = cfg.servers().into_iter().map(|s| s.name).collect();
    let mut names = configured.clone();
    for s in &stored {
        if !names.contains(&s.name) {
            names.push(s.name.clone());
        }
    }
    let servers: Vec<Value> = names
        .iter()
        .map(|name| {
            let st = stored.iter().find(|s| &s.name == name);
            json!({
                "name": name,
                "configured": configured.contains(name),
                "complete": st.is_some_and(|s| s.complete),
                "attributes": st.map_or(0, |s| s.attributes),
                "networks": st.map_or(0, |s| s.networks),
                "last_sync": time(st.and_then(|s| s.last_sync)),
                "last_full_sync": time(st.and_then(|s| s.last_full_sync)),
                "stale_secs": st.and_then(|s| s.last_sync).map(|t| (now - t).max(0)),
                "cursor": st.map_or(0, |s| s.cursor),
                "skipped": st.map(|s| s.skipped.clone()).unwrap_or_default(),
                "last_error": st.and_then(|s| s.last_error.clone()),
            })
        })
        .collect();
    Ok(json!({
        "mode": match *cfg.misp.mode { MispMode::Mirror => "mirror", MispMode::Query => "query" },
        "store": cfg.input.state_dir.join(crate::lookup::mirror::store::FILE),
        "servers": servers,
    }))
}

/// The intelligence a one-shot command asks: every server's query-mode
/// lookup, and in mirror mode the mirror loaded from the store.
pub struct Opened {
    pub lookups: Vec<(crate::config::Server, Lookup)>,
    pub mirror: Option<Mirror>,
    /// How long one answer may take before the command gives up.
    pub patience: Duration,
}

impl Opened {
    pub async fn open(cfg: &Config) -> anyhow::Result<Opened> {
        let stats = Arc::new(Stats::default());
        let mut lookups = Vec::new();
        for server in cfg.servers() {
            let client = MispClient::new(&server.misp, &server.api_key()?)?;
            lookups.push((server, Lookup::start(client, &cfg.misp, stats.clone())));
        }
        let mirror = match (*cfg.misp.mode, Store::open_read_only(&cfg.input.state_dir)?) {
            (MispMode::Mirror, Some(store)) => {
                // One store for every server, as in the daemon.
                let store = Arc::new(Mutex::new(store));
                let mut servers = Vec::new();
                let mut settings = Vec::new();
                for (server, lookup) in lookups.iter() {
                    settings.push(SyncSettings::from_config(&server.misp));
                    servers.push((
                        server.name.clone(),
                        server.misp.clone(),
                        lookup.clone(),
                        store.clone(),
                    ));
                }
                let mirror = Mirror::new(&cfg.misp, servers);
                for (server, settings) in mirror.servers().iter().zip(settings) {
                    Syncer {
                        mirror: mirror.clone(),
                        server: server.clone(),
                        settings,
                        stats: stats.clone(),
                        hunts: None,
                    }
                    .load()
                    .await?;
                }
                Some(mirror)
            }
            _ => None,
        };
        // A lookup that MISP keeps unanswered (query mode, or a server not
        // synced yet) must not hang a triage command.
        let patience = Duration::from_secs(
            cfg.misp.timeout_secs * u64::from(cfg.misp.retries + 1) + *cfg.misp.detail_timeout_secs,
        );
        Ok(Opened {
            lookups,
            mirror,
            patience,
        })
    }

    /// Whether the mirror (if loaded) matches `o` on any server at once;
    /// true without a mirror (only MISP can tell).
    pub fn may_know(&self, o: &Observable) -> bool {
        match &self.mirror {
            Some(m) => m
                .servers()
                .iter()
                .any(|s| s.index().is_some_and(|ix| m.hit_on(s, &ix, o))),
            None => true,
        }
    }

    /// Every server's answer for `o`.
    pub async fn answer(&self, o: &Observable) -> anyhow::Result<crate::lookup::Hits> {
        let unanswered =
            || anyhow::anyhow!("MISP did not answer within {} s", self.patience.as_secs());
        Ok(match &self.mirror {
            Some(m) => match m.known(o, &mut Recent::default()) {
                Some(h) => h,
                None => tokio::time::timeout(self.patience, m.answer(o))
                    .await
                    .map_err(|_| unanswered())??,
            },
            None => tokio::time::timeout(self.patience, self.lookups[0].1.get(o))
                .await
                .map_err(|_| unanswered())??,
        })
    }
}

/// For each IP: what the mirror matches on every server, and the
/// `misp_data` an alert naming it would carry (one per server).
pub async fn lookup(cfg: &Config, ips: &[String]) -> anyhow::Result<Vec<Value>> {
    let opened = Opened::open(cfg).await?;
    let (lookups, mirror) = (&opened.lookups, &opened.mirror);
    let mut out = Vec::new();
    for text in ips {
        let Ok(observable) = text.parse::<Observable>() else {
            out.push(json!({"value": text, "error": "not an IP, domain, URL or file hash"}));
            continue;
        };
        let (matched, hits) = match mirror {
            Some(m) => {
                let matched: Vec<Value> = m
                    .servers()
                    .iter()
                    .map(|s| {
                        let found = s.index().map(|ix| m.matches_on(s, &ix, &observable));
                        let found = found.as_ref();
                        json!({
                            "server": &*s.name,
                            "synced": found.is_some(),
                            "exact": found.is_some_and(|f| f.exact),
                            "network": found.and_then(|f| f.network).map(|n| n.to_string()),
                            "domain": found.and_then(|f| f.parent_domain.as_deref()),
                        })
                    })
                    .collect();
                (Value::from(matched), opened.answer(&observable).await?)
            }
            None => (Value::Null, opened.answer(&observable).await?),
        };
        let events: Vec<Value> = hits
            .parts()
            .filter_map(|part| {
                let prepared = enrich::prepare(part)?;
                Some(json!({
                    "server": part.server.as_deref().unwrap_or(lookups[0].0.name.as_str()),
                    "matched_network": part.matched_network.map(|n| n.to_string()),
                    "matched_domain": part.matched_domain.as_deref(),
                    "misp_data": serde_json::from_str::<Value>(prepared.misp_data.get()).unwrap_or_default(),
                }))
            })
            .collect();
        let mut answer = json!({
            "value": observable.to_string(),
            "type": observable.kind().as_str(),
            "mirror": matched,
            "events": events,
        });
        if observable.kind() == crate::observable::Kind::Ip {
            answer["ip"] = observable.to_string().into();
        }
        out.push(answer);
    }
    Ok(out)
}
