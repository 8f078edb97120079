//! Mirror mode end to end, in process: the daemon syncs from the MISP
//! simulator over real HTTP, matches alerts locally, and asks MISP only
//! about hits.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;
use wazuh_misp::config::MispMode;
use wazuh_misp::sim::SimData;

const WAIT: Duration = Duration::from_secs(30);
const NETWORK: &str = "185.220.101.0/24";
const INSIDE: &str = "185.220.101.7";
const OUTSIDE: &str = "93.184.216.34";

fn data(exact: &[String]) -> SimData {
    SimData::from_events([
        event_with_ips(1, exact),
        event_with_networks(2, &[NETWORK, "2a0b:f4c0:bad::/48"]),
    ])
}

async fn mirror_harness(data: &SimData) -> Harness {
    let mut h = Harness::new(data).await;
    h.cfg.misp.mode = MispMode::Mirror.into();
    h.cfg.misp.sync_interval_secs = 1.into();
    h.cfg.misp.sync_page_size = 2.into();
    h
}

fn values_asked(h: &Harness) -> Vec<String> {
    h.sim.request_log().into_iter().flatten().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_indicator_matches_every_ip_inside_and_misp_hears_only_of_hits() {
    let exact = vec![pool_ip(1)];
    let h = mirror_harness(&data(&exact)).await;
    let q = QueueSocket::bind(&h.socket, Received::default());
    let daemon = h.start();
    ready(&daemon).await;
    let before = h.sim.requests();
    h.append(&format!(
        "{}\n{}\n{}\n{}\n",
        sshd_alert(1, INSIDE, "001"),
        sshd_alert(2, &exact[0], "001"),
        sshd_alert(3, OUTSIDE, "001"),
        sshd_alert(4, "2a0b:f4c0:bad:1::5", "001"),
    ));
    q.received.wait_for(3, WAIT).await;
    all_handled(&daemon, 4, WAIT).await;
    daemon.shutdown(Duration::from_secs(5)).await;
    q.drain().await;
    let events = q.received.events();
    assert_eq!(events.len(), 3, "{events:?}");
    let by_ip = |ip: &str| {
        events
            .iter()
            .map(|(_, e)| e)
            .find(|e| e["detected_ip"]["value"] == ip)
            .unwrap_or_else(|| panic!("no event for {ip}"))
            .clone()
    };
    let inside = by_ip(INSIDE);
    assert_eq!(inside["detected_ip"]["matched_network"], NETWORK);
    assert_eq!(inside["misp_data"]["attributes"][0]["value"], NETWORK);
    assert_eq!(inside["misp_data"]["events"][0]["info"], "Tor exit nodes");
    assert_eq!(inside["misp_data"]["server"], "misp");
    assert!(inside["misp_data"]["summary"].get("partial").is_none());
    let v6 = by_ip("2a0b:f4c0:bad:1::5");
    assert_eq!(v6["detected_ip"]["matched_network"], "2a0b:f4c0:bad::/48");
    let exact_ev = by_ip(&exact[0]);
    assert!(exact_ev["detected_ip"].get("matched_network").is_none());
    assert_eq!(exact_ev["misp_data"]["attributes"][0]["value"], exact[0]);
    // Details for the hits only: the networks and the exact IP, never an
    // alert's clean IP nor the IPs inside a network.
    let asked = values_asked(&h);
    for clean in [OUTSIDE, INSIDE, "2a0b:f4c0:bad:1::5"] {
        assert!(
            !asked.iter().any(|v| v == clean),
            "{clean} asked: {asked:?}"
        );
    }
    assert!(asked.iter().any(|v| v == NETWORK), "{asked:?}");
    assert!(h.sim.requests() > before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attribute_added_in_misp_matches_after_the_next_incremental_sync() {
    let started = chrono::Utc::now().timestamp();
    let h = mirror_harness(&data(&[pool_ip(1)])).await;
    let q = QueueSocket::bind(&h.socket, Received::default());
    let daemon = h.start();
    ready(&daemon).await;
    let new_ip = pool_ip(77);
    assert!(!hit(&daemon, &new_ip));
    h.sim.add_attribute(
        0,
        json!({"type": "ip-src", "value": new_ip, "to_ids": true}),
    );
    // Not a flag of its own: an attribute without the IDS flag is left out.
    h.sim.add_attribute(
        0,
        json!({"type": "ip-src", "value": pool_ip(78), "to_ids": false}),
    );
    eventually("the new attribute synced", WAIT, || hit(&daemon, &new_ip)).await;
    assert!(!hit(&daemon, &pool_ip(78)), "to_ids_only keeps it out");
    h.append(&format!("{}\n", sshd_alert(1, &new_ip, "001")));
    q.received.wait_for(1, WAIT).await;
    daemon.shutdown(Duration::from_secs(5)).await;
    let (_, ev) = q.received.events().remove(0);
    assert_eq!(ev["detected_ip"]["value"], new_ip);
    // The incremental syncs asked by the attribute's and the publish
    // clocks (no filter reads the event's state), from
    // MISP's clock at the previous sync's start (its Date header) minus
    // misp.sync_overlap_secs: never from the attributes' own timestamps
    // (the fixtures' 1763164800).
    let bodies = h.sim.request_bodies();
    assert!(bodies.iter().all(|b| b.get("event_timestamp").is_none()));
    for window in ["timestamp", "publish_timestamp"] {
        let since: Vec<i64> = bodies
            .iter()
            .filter_map(|b| b.get(window).and_then(Value::as_i64))
            .collect();
        assert!(!since.is_empty(), "no {window} window asked");
        assert!(
            since
                .iter()
                .all(|&t| (started - 300 - 2..=started).contains(&t)),
            "{window}: {since:?}, test started at {started}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attribute_deleted_in_misp_stops_matching_after_the_full_reconciliation() {
    let exact = vec![pool_ip(1), pool_ip(2)];
    let mut h = mirror_harness(&data(&exact)).await;
    h.cfg.misp.full_sync_interval_secs = 2.into();
    let q = QueueSocket::bind(&h.socket, Received::default());
    let daemon = h.start();
    ready(&daemon).await;
    assert!(hit(&daemon, &exact[0]) && hit(&daemon, INSIDE));
    for uuid in h
        .sim
        .uuids_of(&exact[0])
        .into_iter()
        .chain(h.sim.uuids_of(NETWORK))
    {
        assert!(h.sim.delete_attribute(&uuid));
    }
    eventually("the deletions reconciled", WAIT, || {
        !hit(&daemon, &exact[0]) && !hit(&daemon, INSIDE)
    })
    .await;
    assert!(hit(&daemon, &exact[1]), "the others stay");
    h.append(&format!(
        "{}\n{}\n{}\n",
        sshd_alert(1, &exact[0], "001"),
        sshd_alert(2, INSIDE, "001"),
        sshd_alert(3, &exact[1], "001"),
    ));
    q.received.wait_for(1, WAIT).await;
    all_handled(&daemon, 3, WAIT).await;
    daemon.shutdown(Duration::from_secs(5)).await;
    q.drain().await;
    let events = q.received.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].1["detected_ip"]["value"], exact[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_misp_stopped_after_the_first_sync_known_indicators_are_still_enriched() {
    let exact: Vec<String> = (1..=3).map(pool_ip).collect();
    let mut h = mirror_harness(&data(&exact)).await;
    h.cfg.misp.detail_timeout_secs = 1.into();
    h.cfg.misp.timeout_secs = 1;
    let q = QueueSocket::bind(&h.socket, Received::default());
    let daemon = h.start();
    ready(&daemon).await;
    // One hit's details are fetched (and cached) while MISP is up.
    h.append(&format!("{}\n", sshd_alert(1, &exact[0], "001")));
    q.received.wait_for(1, WAIT).await;
    h.sim.stop().await;
    // Another rule, so that dedup does not take it for the first.
    let again = sshd_alert(2, &exact[0], "002").replace("\"5712\"", "\"5710\"");
    h.append(&format!(
        "{}\n{}\n{}\n{}\n",
        again,
        sshd_alert(3, &exact[1], "001"),
        sshd_alert(4, INSIDE, "001"),
        sshd_alert(5, OUTSIDE, "001"),
    ));
    q.received.wait_for(4, WAIT).await;
    all_handled(&daemon, 5, WAIT).await;
    daemon.shutdown(Duration::from_secs(5)).await;
    q.drain().await;
    let events = q.received.events();
    assert_eq!(events.len(), 4, "{events:?}");
    let find = |ip: &str, agent: &str| {
        events
            .iter()
            .map(|(_, e)| e)
            .find(|e| e["detected_ip"]["value"] == ip && e["agent"]["id"] == agent)
            .unwrap_or_else(|| panic!("no event for {ip} from {agent}"))
            .clone()
    };
    // Cached details: a full event.
    let cached = find(&exact[0], "002");
    assert!(cached["misp_data"]["summary"].get("partial").is_none());
    assert_eq!(cached["misp_data"]["events"][0]["org_name"], "TEST-ORG");
    // No details to be had: built from the mirror.
    let partial = find(&exact[1], "001");
    assert_eq!(partial["misp_data"]["summary"]["partial"], true);
    assert_eq!(partial["misp_data"]["attributes"][0]["value"], exact[1]);
    assert_eq!(partial["misp_data"]["attributes"][0]["type"], "ip-src");
    assert_eq!(partial["misp_data"]["events"][0]["info"], "test event 1");
    let net = find(INSIDE, "001");
    assert_eq!(net["misp_data"]["summary"]["partial"], true);
    assert_eq!(net["detected_ip"]["matched_network"], NETWORK);
    assert_eq!(net["misp_data"]["attributes"][0]["value"], NETWORK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_on_two_servers_gives_one_event_per_server() {
    let first = mirror_harness(&data(&[pool_ip(1)])).await;
    let second = wazuh_misp::sim::MispSim::start(
        &SimData::from_events([event_with_ips(5, &[pool_ip(1), pool_ip(2)])]),
        KEY,
    )
    .await
    .unwrap();
    let mut h = first;
    h.cfg.misp.servers = vec![wazuh_misp::config::ServerConfig {
        name: "partner".into(),
        url: second.url(),
        ..Default::default()
    }]
    .into();
    let q = QueueSocket::bind(&h.socket, Received::default());
    let daemon = h.start();
    ready(&daemon).await;
    h.append(&format!(
        "{}\n{}\n",
        sshd_alert(1, &pool_ip(1), "001"),
        sshd_alert(2, &pool_ip(2), "001")
    ));
    q.received.wait_for(3, WAIT).await;
    daemon.shutdown(Duration::from_secs(5)).await;
    q.drain().await;
    let mut seen: Vec<(String, String, String)> = q
        .received
        .events()
        .into_iter()
        .map(|(_, e)| {
            (
                e["detected_ip"]["value"].as_str().unwrap().to_owned(),
                e["misp_data"]["server"].as_str().unwrap().to_owned(),
                e["event_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(
        (seen[0].0.as_str(), seen[0].1.as_str()),
        (pool_ip(1).as_str(), "misp")
    );
    assert_eq!(
        (seen[1].0.as_str(), seen[1].1.as_str()),
        (pool_ip(1).as_str(), "partner")
    );
    assert_ne!(
        seen[0].2, seen[1].2,
        "the two servers' events have their own ids"
    );
    assert_eq!(
        (seen[2].0.as_str(), seen[2].1.as_str()),
        (pool_ip(2).as_str(), "partner")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn until_the_first_sync_completes_lookups_ask_misp_per_value() {
    let h = mirror_harness(&data(&[pool_ip(1)])).await;
    // Every sync request fails, so the first sync never completes.
    h.sim.fail_sync(Some(wazuh_misp::sim::Fault::Status(500)));
    let q = QueueSocket::bind(&h.socket, Received::default());
    let daemon = h.start();
    h.append(&format!("{}\n", sshd_alert(1, &pool_ip(1), "001")));
    q.received.wait_for(1, WAIT).await;
    assert!(daemon.engine.lookup.mirror().unwrap().servers()[0]
        .index()
        .is_none());
    assert!(values_asked(&h).contains(&pool_ip(1)));
    daemon.shutdown(Duration::from_secs(5)).await;
    let (_, ev) = q.received.events().remove(0);
    assert_eq!(ev["misp_data"]["server"], "misp");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_syncs_are_reported_to_wazuh_as_an_error_event() {
    let mut h = mirror_harness(&data(&[pool_ip(1)])).await;
    h.cfg.output.error_event_after_secs = 1;
    h.cfg.misp.timeout_secs = 1;
    let q = QueueSocket::bind(&h.socket, Received::default());
    let daemon = h.start();
    ready(&daemon).await;
    // No alert at all: only the syncs can notice that MISP is gone.
    h.sim.stop().await;
    q.received.wait_for(1, WAIT).await;
    daemon.shutdown(Duration::from_secs(5)).await;
    let (loc, ev) = q.received.events().remove(0);
    assert_eq!(loc, "misp");
    assert_eq!(ev["misp_error"]["kind"], "unreachable");
    assert!(
        ev["misp_error"]["message"]
            .as_str()
            .unwrap()
            .contains("mirror sync of misp"),
        "{ev}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_page_over_the_response_limit_is_asked_for_in_halves() {
    let ips: Vec<String> = (0..300).map(pool_ip).collect();
    let mut h = mirror_harness(&data(&ips)).await;
    h.cfg.misp.sync_page_size = 256.into();
    // 256 attributes are about 100 KB; a quarter of them fits.
    h.cfg.misp.max_response_bytes = 40_000;
    let daemon = h.start();
    ready(&daemon).await;
    for ip in &ips {
        assert!(hit(&daemon, ip), "{ip} mirrored");
    }
    assert!(hit(&daemon, INSIDE));
    let limits: Vec<u64> = h
        .sim
        .request_bodies()
        .iter()
        .filter(|b| b.get("value").is_none())
        .filter_map(|b| b["limit"].as_u64())
        .collect();
    assert_eq!(limits.first(), Some(&256));
    assert!(limits.iter().any(|l| *l < 256), "{limits:?}");
    daemon.shutdown(Duration::from_secs(5)).await;
}

/// A Sysmon-like alert carrying `data` (the observables to find).
fn alert_with(n: usize, data: Value) -> String {
    json!({"timestamp": "2026-11-22T10:00:00.000+0000",
        "rule": {"level": 8, "description": "test", "id": "92650", "groups": ["sysmon"]},
        "agent": {"id": "004", "name": "ws", "ip": "10.0.4.22"}, "manager": {"name": "m"},
        "id": format!("1763805600.{n}"), "decoder": {"name": "windows_eventchannel"},
        "data": data, "location": "EventChannel"})
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domains_urls_and_hashes_are_mirrored_and_matched_locally() {
    let md5 = "5d41402abc4b2a76b9719d911017c592";
    let sha256 = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
    let attrs: Vec<(String, String)> = [
        ("domain", "Evil.com"),
        ("hostname", "c2.other.org"),
        ("url", "HTTP://Dl.Evil.com:80/a.exe#top"),
        ("filename|md5", &format!("a.exe|{}", md5.to_uppercase())),
        ("sha256", sha256),
    ]
    .iter()
    .map(|(t, v)| (t.to_string(), v.to_string()))
    .collect();
    let h = mirror_harness(&SimData::from_events([event_with(3, &attrs)])).await;
    let q = QueueSocket::bind(&h.socket, Received::default());
    let daemon = h.start();
    ready(&daemon).await;
    let is_hit = |v: &str| hit(&daemon, v);
    assert!(
        is_hit("cdn.evil.com") && is_hit("evil.com"),
        "a domain covers its subdomains"
    );
    assert!(
        is_hit("c2.other.org") && !is_hit("x.c2.other.org"),
        "a hostname only itself"
    );
    assert!(
        is_hit("http://dl.evil.com/a.exe"),
        "URLs compare normalised"
    );
    assert!(is_hit(md5) && is_hit(sha256));
    assert!(!is_hit("notevil.com") && !is_hit("http://dl.evil.com/b.exe"));
    let before = values_asked(&h).len();
    h.append(&format!(
        "{}\n{}\n{}\n{}\n",
        alert_with(1, json!({"win": {"eventdata": {"queryName": "cdn.evil.com"}}})),
        alert_with(2, json!({"win": {"eventdata": {"queryName": "x.c2.other.org", "hashes": format!("MD5={md5}")}}})),
        alert_with(3, json!({"http": {"hostname": "dl.evil.com", "url": "/a.exe"}, "sha256": sha256})),
        alert_with(4, json!({"query": "clean.example.net"})),
    ));
    all_handled(&daemon, 4, WAIT).await;
    daemon.shutdown(Duration::from_secs(5)).await;
    q.drain().await;
    let mut got: Vec<(String, String, Option<String>)> = q
        .received
        .events()
        .iter()
        .map(|(_, e)| {
            let d = &e["detected_observable"];
            (
                d["type"].as_str().unwrap().to_owned(),
                d["value"].as_str().unwrap().to_owned(),
                d["matched_domain"].as_str().map(str::to_owned),
            )
        })
        .collect();
    got.sort();
    let owned =
        |k: &str, v: &str, m: Option<&str>| (k.to_owned(), v.to_owned(), m.map(str::to_owned));
    assert_eq!(
        got,
        vec![
            owned("domain", "cdn.evil.com", Some("evil.com")),
            owned("domain", "dl.evil.com", Some("evil.com")),
            owned("md5", md5, None),
            owned("sha256", sha256, None),
            owned("url", "http://dl.evil.com/a.exe", None),
        ]
    );
    // MISP heard only of the hits' details: the parent domain once, never
    // the alerts' subdomains, the hostname's subdomain or the clean name.
    let asked: Vec<String> = values_asked(&h).into_iter().skip(before).collect();
    for never in ["cdn.evil.com", "x.c2.other.org", "clean.example.net"] {
        assert!(
            !asked.iter().any(|v| v == never),
            "{never} asked: {asked:?}"
        );
    }
    assert!(asked.iter().any(|v| v == "evil.com"), "{asked:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_asked_about_before_the_first_sync_matches_once_the_mirror_learns_it() {
    let h = mirror_harness(&data(&[pool_ip(1)])).await;
    let q = QueueSocket::bind(&h.socket, Received::default());
    // No sync yet: lookups go to MISP per value, and MISP does not know
    // the IP, an answer the query cache keeps.
    h.sim.fail_sync(Some(wazuh_misp::sim::Fault::Status(500)));
    let daemon = h.start();
    let later = pool_ip(55);
    h.append(&format!("{}\n", sshd_alert(1, &later, "001")));
    all_handled(&daemon, 1, WAIT).await;
    assert_eq!(q.received.len(), 0);
    h.sim
        .add_attribute(0, json!({"type": "ip-src", "value": later, "to_ids": true}));
    h.sim.fail_sync(None);
    eventually("the mirror learnt it", WAIT, || hit(&daemon, &later)).await;
    // The mirror's hit is not hidden by the cached "unknown".
    let mut again: Value = serde_json::from_str(&sshd_alert(2, &later, "001")).unwrap();
    again["rule"]["id"] = "5710".into();
    h.append(&format!("{again}\n"));
    q.received.wait_for(1, WAIT).await;
    daemon.shutdown(Duration::from_secs(5)).await;
    let (_, ev) = q.received.events().remove(0);
    assert_eq!(ev["detected_ip"]["value"], later);
    assert_eq!(ev["misp_data"]["attributes"][0]["value"], later);
}

/// An attribute the mirror leaves out (no IDS flag) comes back in every
/// incremental sync's overlap: it must not make each sync copy and swap
/// the whole index (which also drops every cached answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmirrored_attribute_in_the_overlap_does_not_swap_the_index() {
    let h = mirror_harness(&data(&[pool_ip(1)])).await;
    h.sim.add_attribute(
        0,
        json!({"type": "ip-src", "value": pool_ip(79), "to_ids": false}),
    );
    let daemon = h.start();
    ready(&daemon).await;
    let server = daemon.engine.lookup.mirror().unwrap().servers()[0].clone();
    let before = server.index().unwrap();
    // Two more incremental syncs (two windows each) see it again.
    let asked = h.sim.requests();
    eventually("two incremental syncs", WAIT, || {
        h.sim.requests() >= asked + 4
    })
    .await;
    assert!(
        std::sync::Arc::ptr_eq(&before, &server.index().unwrap()),
        "nothing changed, yet the index was replaced"
    );
    assert!(!hit(&daemon, &pool_ip(79)));
    daemon.shutdown(Duration::from_secs(5)).await;
}
