//! `wazuh-misp demo`: the whole pipeline, offline, with no setup.
//!
//! Starts the MISP simulator with a small event set (shipped inside the
//! binary, in MISP's export format), writes sample alerts (analysisd's
//! format) into a temporary alerts.json, runs the real daemon against a
//! temporary queue socket it reads itself, and prints what came out.

use crate::config::Config;
use crate::lookup::MispClient;
use crate::output::frame;
use crate::runtime::Daemon;
use crate::sim::{MispSim, SimData};
use crate::stats::Stats;
use serde_json::Value;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const DEMO_EVENTS: &[&str] = &[
    include_str!("../../config/demo/misp-events/01-emotet-c2.json"),
    include_str!("../../config/demo/misp-events/02-apt28-phishing.json"),
    include_str!("../../config/demo/misp-events/03-ssh-scanners.json"),
    include_str!("../../config/demo/misp-events/04-tor-exit-ranges.json"),
    include_str!("../../config/demo/misp-events/05-fin7-loader.json"),
];
pub const DEMO_WARNINGLIST: &str = include_str!("../../config/demo/warninglist-public-dns-v4.json");
pub const DEMO_ALERTS: &str = include_str!("../../config/demo/alerts.jsonl");
const DEMO_KEY: &str = "demo0000000000000000000000000000000000000";

/// The demo's MISP data set.
pub fn demo_data() -> SimData {
    let events = DEMO_EVENTS
        .iter()
        .map(|t| serde_json::from_str::<Value>(t).expect("demo events are valid JSON"));
    let wl: Value = serde_json::from_str(DEMO_WARNINGLIST).expect("demo warninglist is valid JSON");
    SimData::from_events(events).with_warninglist(&wl)
}

pub struct DemoOutcome {
    pub datagrams: Vec<Vec<u8>>,
    pub stats: Arc<Stats>,
    /// Requests for the details of hits (the sync's not counted).
    pub misp_requests: u64,
    pub misp_values: u64,
    /// Requests of the mirror's first sync.
    pub sync_requests: u64,
    /// Attributes and networks the mirror held.
    pub mirrored: (u64, usize),
    /// Sightings MISP accepted.
    pub sightings_sent: usize,
    pub elapsed: Duration,
}

/// Runs the demo pipeline and returns what reached the socket.
pub async fn run_demo(alerts: &str) -> anyhow::Result<DemoOutcome> {
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    let mut sim = MispSim::start(&demo_data(), DEMO_KEY).await?;

    let socket_path = dir.path().join("queue");
    let receiver = tokio::net::UnixDatagram::bind(&socket_path)?;
    // The reader ends at this datagram, which the demo sends itself once
    // the daemon has stopped: datagrams arrive in order, so by then it has
    // read every event.
    const SENTINEL: &[u8] = b"--end of demo--";
    let reader = tokio::spawn(async move {
        let mut received = Vec::new();
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = receiver.recv(&mut buf).await {
            if &buf[..n] == SENTINEL {
                break;
            }
            received.push(buf[..n].to_vec());
        }
        received
    });

    let mut cfg = Config::in_dir(dir.path(), &sim.url(), DEMO_KEY);
    // The honeypot event flags its IPs to_ids = false, as honeypot feeds
    // often do; the demo mirrors them too, to show every kind of match.
    cfg.misp.sync.0.to_ids_only = false;
    // Syncs every second, so that the indicator the demo adds later is
    // learnt at once; sightings on, to show what MISP is told.
    cfg.misp.sync_interval_secs = 1.into();
    cfg.misp.sightings = true.into();
    cfg.misp.sightings_per_minute = 60_000.into();
    let state_dir = cfg.input.state_dir.to_path_buf();
    let alerts_path = cfg.input.alerts_file.clone();
    std::fs::File::create(&alerts_path)?;
    let client = MispClient::new(&cfg.misp, &cfg.resolve_api_key()?)?;
    let daemon = Daemon::start(cfg, client)?;
    // The mirror's first sync, so that every lookup is local (before it,
    // lookups would ask MISP per value, and networks would not match).
    let mirror = daemon
        .engine
        .lookup
        .mirror()
        .expect("the demo runs in mirror mode")
        .clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    while mirror.servers().iter().any(|s| s.index().is_none()) {
        if Instant::now() > deadline {
            anyhow::bail!("the demo's mirror did not sync within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sync_requests = sim.requests();
    let mirrored = mirror.servers()[0].index().map_or((0, 0), |ix| {
        (
            mirror.servers()[0]
                .attributes
                .load(std::sync::atomic::Ordering::Relaxed),
            ix.networks(),
        )
    });
    // Appended as analysisd appends (one write per line), all at once, so
    // that the details of their hits reach the batcher together.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&alerts_path)?;
    let mut text = Vec::new();
    for line in alerts.lines().filter(|l| !l.trim().is_empty()) {
        text.extend_from_slice(line.as_bytes());
        text.push(b'\n');
    }
    f.write_all(&text)?;
    f.flush()?;
    let total = std::fs::metadata(&alerts_path)?.len();

    // Done when the checkpointer says every byte is handled: by then every
    // event has been sent to our socket.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let handled = daemon.checkpoints.committed().map_or(0, |b| b.offset);
        if handled >= total {
            break;
        }
        if Instant::now() > deadline {
            anyhow::bail!("demo did not finish within 60 s (handled {handled} of {total} bytes)");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Retro-hunting: MISP learns an indicator after the alert that carried
    // it (a DNS query two days earlier), and the next sync hunts it.
    let past = RETRO_VALUE.parse().expect("an observable");
    let ledger_key = crate::ledger::key_of(&past);
    wait_for("the ledger to record the past alert", || {
        crate::ledger::store::LedgerStore::open_read_only(&state_dir)
            .ok()
            .flatten()
            .is_some_and(|l| {
                l.range(&ledger_key, &ledger_key, 1)
                    .is_ok_and(|e| !e.is_empty())
            })
    })
    .await?;
    sim.add_attribute(
        FIN7_EVENT,
        serde_json::json!({"type": "domain", "value": RETRO_INDICATOR, "category": "Network activity",
            "to_ids": true, "comment": "C2 relay, reported two days after the DNS query"}),
    );
    let stats = daemon.stats.clone();
    wait_for("the retro event", || Stats::get(&stats.retro_events) > 0).await?;
    let sightings = daemon.engine.feedback.sightings.clone();
    wait_for("the sightings to reach MISP", || {
        sightings.as_ref().is_none_or(|s| s.is_empty())
    })
    .await?;
    let sightings_sent = sim.sightings_added().len();
    daemon.shutdown(Duration::from_secs(5)).await;
    let misp_requests = sim.requests() - sync_requests;
    let misp_values = sim.values_asked();
    sim.stop().await;
    std::os::unix::net::UnixDatagram::unbound()?.send_to(SENTINEL, &socket_path)?;
    let datagrams = reader.await?;
    Ok(DemoOutcome {
        datagrams,
        stats,
        misp_requests,
        misp_values,
        sync_requests,
        mirrored,
        sightings_sent,
        elapsed: started.elapsed(),
    })
}

/// The past alert's value the demo's late indicator matches, and that
/// indicator (a parent domain), added to the FIN7 event.
const RETRO_VALUE: &str = "sync.relay-7f3a.top";
const RETRO_INDICATOR: &str = "relay-7f3a.top";
const FIN7_EVENT: usize = 4;

/// Polls `done` every 10 ms for at most 30 s: the demo watches another
/// component's progress, which has no event to await.
async fn wait_for(what: &str, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        if Instant::now() > deadline {
            anyhow::bail!("the demo waited 30 s for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// "ip 8 (1 by network), domain 2 (2 by parent domain), …": what the
/// events matched on.
fn matches_by_kind(datagrams: &[Vec<u8>]) -> String {
    let mut counts: std::collections::BTreeMap<String, (usize, usize)> = Default::default();
    for d in datagrams {
        let Some((_, _, payload)) = frame::parse(d) else {
            continue;
        };
        let Ok(event) = serde_json::from_slice::<Value>(payload) else {
            continue;
        };
        if event.get("retro_hunt").is_some() {
            continue;
        }
        let (kind, wide) = if let Some(ip) = event.get("detected_ip") {
            ("ip".to_owned(), ip.get("matched_network").is_some())
        } else if let Some(o) = event.get("detected_observable") {
            (
                o["type"].as_str().unwrap_or("?").to_owned(),
                o.get("matched_domain").is_some(),
            )
        } else {
            continue;
        };
        let c = counts.entry(kind).or_default();
        c.0 += 1;
        c.1 += usize::from(wide);
    }
    counts
        .iter()
        .map(|(kind, (n, wide))| match kind.as_str() {
            "ip" if *wide > 0 => format!("ip {n} ({wide} by network)"),
            "domain" if *wide > 0 => format!("domain {n} ({wide} by parent domain)"),
            _ => format!("{kind} {n}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Each retro event in a line: the value, the past alert, what it
/// matched under and when the mirror learnt it.
fn retro_events(datagrams: &[Vec<u8>]) -> Vec<String> {
    datagrams
        .iter()
        .filter_map(|d| {
            let (_, _, payload) = frame::parse(d)?;
            let e: Value = serde_json::from_slice(payload).ok()?;
            let r = e.get("retro_hunt")?;
            let d = e.get("detected_ip").or_else(|| e.get("detected_observable"))?;
            let kind = d.get("type").and_then(Value::as_str).unwrap_or("ip");
            let under = d
                .get("matched_domain")
                .or_else(|| d.get("matched_network"))
                .and_then(Value::as_str)
                .map(|m| format!(" under {m}"))
                .unwrap_or_default();
            Some(format!(
                "{kind} {} from alert {} of {} matched{under}, an indicator the mirror learnt at {}",
                d["value"].as_str().unwrap_or(""),
                e["rule"]["id"].as_str().unwrap_or(""),
                e["wazuh_alert_timestamp"].as_str().unwrap_or(""),
                r["indicator_added"].as_str().unwrap_or(""),
            ))
        })
        .collect()
}

/// Prints each event and a closing summary.
pub fn print(outcome: &DemoOutcome, out: &mut impl Write) -> std::io::Result<()> {
    for d in &outcome.datagrams {
        let Some((queue, location, payload)) = frame::parse(d) else {
            writeln!(out, "malformed datagram: {}", String::from_utf8_lossy(d))?;
            continue;
        };
        let event: Value = serde_json::from_slice(payload).unwrap_or(Value::Null);
        writeln!(
            out,
            "── datagram: queue {queue}, location {location:?}, {} bytes",
            d.len()
        )?;
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&event).unwrap_or_default()
        )?;
    }
    let s = &outcome.stats;
    let g = Stats::get;
    writeln!(out, "── summary")?;
    writeln!(
        out,
        "matches by kind:    {}",
        matches_by_kind(&outcome.datagrams)
    )?;
    for retro in retro_events(&outcome.datagrams) {
        writeln!(out, "retro-hunt:         {retro}")?;
    }
    writeln!(out, "alerts read:        {}", g(&s.lines_read))?;
    writeln!(
        out,
        "alerts processed:   {} (skipped: {:?})",
        g(&s.alerts_processed),
        s.skipped()
    )?;
    writeln!(
        out,
        "observables found:  {} (dedup hits {}, cache hits {})",
        g(&s.ips_extracted),
        g(&s.dedup_hits),
        g(&s.cache_hits)
    )?;
    writeln!(
        out,
        "mirror:             {} attributes ({} networks), first sync in {} request(s)",
        outcome.mirrored.0, outcome.mirrored.1, outcome.sync_requests
    )?;
    writeln!(
        out,
        "MISP requests:      {} for the details of hits ({} values; misses are never asked about)",
        outcome.misp_requests, outcome.misp_values
    )?;
    writeln!(out, "events sent:        {}", g(&s.events_sent))?;
    writeln!(
        out,
        "sightings to MISP:  {} sent by attribute uuid ({} folded into one already sent)",
        outcome.sightings_sent,
        g(&s.sightings_aggregated)
    )?;
    writeln!(
        out,
        "elapsed:            {:.3} s",
        outcome.elapsed.as_secs_f64()
    )?;
    Ok(())
}
