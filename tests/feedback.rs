//! The feedback loop with the real binary: sightings back to MISP (by
//! uuid, aggregated, persistent, paused on 403), false positives from the
//! SOC, and retro-hunting of past alerts when MISP learns an indicator.

mod common;

use common::process::{Daemon, BIN};
use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use wazuh_misp::ledger::store::LedgerStore;
use wazuh_misp::observable::Observable;
use wazuh_misp::sim::{Fault, SimData};

const WAIT: Duration = Duration::from_secs(60);
const KNOWN: &str = "185.220.101.4";
const OTHER: &str = "185.220.101.9";

/// A mirror-mode config with a sync every second, and `extra` appended
/// (whole sections: `[misp]` keys go in `misp_extra`).
fn write_config(h: &Harness, misp_extra: &str, extra: &str) -> PathBuf {
    let path = h.dir.path().join("wazuh-misp.toml");
    let text = format!(
        "[input]\nalerts_file = {:?}\nstate_dir = {:?}\nstart_position = \"beginning\"\n\
         [misp]\nmode = \"mirror\"\nurl = {:?}\napi_key = {:?}\nsync_interval_secs = 1\n\
         timeout_secs = 10\n{misp_extra}\n\
         [output]\nqueue_socket = {:?}\n\
         [pipeline]\nworkers = 2\nchannel_capacity = 64\n{extra}",
        h.alerts,
        h.cfg.input.state_dir,
        h.sim.url(),
        KEY,
        h.socket
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// An sshd alert from `ip` under rule `rule` (distinct rules escape the
/// dedup window, as distinct detections of one IP do).
fn alert(n: usize, ip: &str, rule: usize) -> String {
    let mut v: Value = serde_json::from_str(&sshd_alert(n, ip, "001")).unwrap();
    v["rule"]["id"] = rule.to_string().into();
    v.to_string()
}

/// A Sysmon event 22 (DNS query) for `domain` from agent 004.
fn dns_alert(n: usize, domain: &str) -> String {
    json!({"timestamp": "2026-11-22T10:03:02.311+0000",
        "rule": {"level": 8, "description": "Sysmon - Event 22: DNS query", "id": "92650", "firedtimes": n,
                 "mail": false, "groups": ["sysmon", "sysmon_event_22", "windows"]},
        "agent": {"id": "004", "name": "WS-FIN-022", "ip": "10.0.4.22"}, "manager": {"name": "wazuh-manager"},
        "id": format!("1763805782.{n}"), "decoder": {"name": "windows_eventchannel"},
        "data": {"win": {"system": {"eventID": "22", "channel": "Microsoft-Windows-Sysmon/Operational"},
                 "eventdata": {"queryName": domain, "queryStatus": "0", "image": "C:\\Windows\\System32\\rundll32.exe"}}},
        "location": "EventChannel"})
    .to_string()
}

fn run(args: &[&str], config: &Path) -> Vec<Value> {
    let out = Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The sightings MISP accepted, as (uuid, type, source, timestamp).
fn sighted(h: &Harness) -> Vec<(String, String, String, i64)> {
    h.sim
        .sightings_added()
        .into_iter()
        .map(|b| {
            (
                b["uuid"].as_str().unwrap().to_owned(),
                b["type"].as_str().unwrap().to_owned(),
                b["source"].as_str().unwrap().to_owned(),
                b["timestamp"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn events_for<'a>(q: &'a QueueSocket, value: &'a str) -> impl Iterator<Item = Value> + 'a {
    q.received
        .events()
        .into_iter()
        .map(|(_, e)| e)
        .filter(move |e| {
            e["detected_ip"]["value"] == value || e["detected_observable"]["value"] == value
        })
}

/// Two events hold attributes with the known IP; MISP must be told of
/// both, by uuid, whatever the number of alerts.
fn two_events_with_known() -> SimData {
    SimData::from_events([
        event_with_ips(1, &[KNOWN.to_owned()]),
        event_with_ips(2, &[KNOWN.to_owned(), OTHER.to_owned()]),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sightings_go_by_uuid_at_most_once_per_attribute_per_interval() {
    let data = two_events_with_known();
    let h = Harness::new(&data).await;
    let q = QueueSocket::bind(&h.socket, Received::default());
    let config = write_config(&h, "sightings = true\nsightings_per_minute = 6000\n", "");
    let mut daemon = Daemon::spawn(&config);
    daemon.wait_log("mirror full sync done", 1).await;
    // Five detections of the known IP: five events, two attributes.
    for n in 0..5 {
        h.append(&format!("{}\n", alert(n, KNOWN, 5700 + n)));
    }
    q.received.wait_for(5, WAIT).await;
    // The queue is sent in order: once the other IP's sighting is in,
    // every sighting queued before it has been sent.
    h.append(&format!("{}\n", alert(9, OTHER, 5712)));
    let other_uuid = h.sim.uuids_of(OTHER)[0].clone();
    eventually("the other IP's sighting", WAIT, || {
        sighted(&h).iter().any(|s| s.0 == other_uuid)
    })
    .await;
    daemon.signal(libc::SIGTERM);
    assert!(daemon.exit_status(WAIT).await.success());
    let s = sighted(&h);
    let mut known: Vec<String> = s
        .iter()
        .filter(|x| x.0 != other_uuid)
        .map(|x| x.0.clone())
        .collect();
    known.sort();
    let mut expected = h.sim.uuids_of(KNOWN);
    expected.sort();
    assert_eq!(known, expected, "one sighting per attribute: {s:?}");
    for (_, kind, source, timestamp) in &s {
        assert_eq!(kind, "0");
        assert_eq!(source, "wazuh-wazuh-manager");
        // The alert's own time (2026-11-22T09:58:02.114+0000).
        assert_eq!(*timestamp, 1_795_341_482);
    }
    // No request by value: a sighting by value would sight every event.
    assert!(h
        .sim
        .sighting_requests()
        .iter()
        .all(|(_, b)| b.get("value").is_none() && b.get("values").is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_sightings_survive_a_kill_and_are_sent_after_the_restart() {
    let data = two_events_with_known();
    let h = Harness::new(&data).await;
    let q = QueueSocket::bind(&h.socket, Received::default());
    h.sim.fail_sightings(Some(Fault::Status(503)));
    let config = write_config(&h, "sightings = true\nsightings_per_minute = 6000\n", "");
    let daemon = Daemon::spawn(&config);
    daemon.wait_log("mirror full sync done", 1).await;
    h.append(&format!("{}\n", alert(1, OTHER, 5712)));
    q.received.wait_for(1, WAIT).await;
    let uuid = h.sim.uuids_of(OTHER)[0].clone();
    // Tried, refused with a 503, and on disk.
    eventually("a sighting tried", WAIT, || {
        !h.sim.sighting_requests().is_empty()
    })
    .await;
    let saved = h.cfg.input.state_dir.join("sightings.json");
    eventually("the queue saved", WAIT, || {
        std::fs::read_to_string(&saved).is_ok_and(|t| t.contains(&uuid))
    })
    .await;
    daemon.kill9();
    assert!(h.sim.sightings_added().is_empty());
    h.sim.fail_sightings(None);
    let mut daemon = Daemon::spawn(&config);
    eventually("the queued sighting sent after the restart", WAIT, || {
        sighted(&h).iter().any(|s| s.0 == uuid)
    })
    .await;
    daemon.signal(libc::SIGTERM);
    assert!(daemon.exit_status(WAIT).await.success());
    // A kill can come before the bookmark's save: the alert may be read
    // and sent again (at least once), but its sighting is not doubled,
    // since the interval table came back with the queue.
    assert!(q.received.len() >= 1);
    assert_eq!(sighted(&h).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_may_not_sight_is_reported_once_and_sightings_pause() {
    let data = two_events_with_known();
    let h = Harness::new(&data).await;
    let q = QueueSocket::bind(&h.socket, Received::default());
    h.sim.fail_sightings(Some(Fault::Status(403)));
    let config = write_config(
        &h,
        "sightings = true\nsightings_per_minute = 6000\nsightings_pause_secs = 1\n",
        "",
    );
    let mut daemon = Daemon::spawn(&config);
    daemon.wait_log("mirror full sync done", 1).await;
    h.append(&format!("{}\n", alert(1, OTHER, 5712)));
    q.received.wait_for(1, WAIT).await;
    // Tried again once per pause, not in a loop.
    eventually("three tries, a pause apart", WAIT, || {
        h.sim.sighting_requests().len() >= 3
    })
    .await;
    assert_eq!(
        daemon.log().matches("perm_sighting").count(),
        1,
        "{}",
        daemon.log()
    );
    h.sim.fail_sightings(None);
    daemon.wait_log("MISP accepts sightings again", 1).await;
    assert_eq!(sighted(&h).len(), 1);
    daemon.signal(libc::SIGTERM);
    assert!(daemon.exit_status(WAIT).await.success());
    assert!(!daemon.log().contains(KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_false_positive_is_never_enriched_again_and_is_sighted_as_one() {
    let data = two_events_with_known();
    let h = Harness::new(&data).await;
    let q = QueueSocket::bind(&h.socket, Received::default());
    let config = write_config(&h, "sightings = true\nsightings_per_minute = 6000\n", "");
    let mut daemon = Daemon::spawn(&config);
    daemon.wait_log("mirror full sync done", 1).await;
    h.append(&format!("{}\n", alert(1, KNOWN, 5712)));
    q.received.wait_for(1, WAIT).await;

    let out = run(
        &["false-positive", KNOWN, "--reason", "our own scanner"],
        &config,
    );
    assert_eq!(out[0]["value"], KNOWN);
    assert_eq!(out[0]["false_positive"], "added");
    let sent: Vec<&str> = out[0]["sightings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["result"].as_str().unwrap())
        .collect();
    assert_eq!(sent, ["added", "added"], "{out:?}");
    let fp: Vec<String> = sighted(&h)
        .into_iter()
        .filter(|s| s.1 == "1")
        .map(|s| s.0)
        .collect();
    let mut expected = h.sim.uuids_of(KNOWN);
    expected.sort();
    let mut fp_sorted = fp.clone();
    fp_sorted.sort();
    assert_eq!(fp_sorted, expected);
    let listed = run(&["false-positive", "--list"], &config);
    assert_eq!(listed[0]["value"], KNOWN);
    assert_eq!(listed[0]["reason"], "our own scanner");
    assert!(listed[0]["added"].as_str().is_some());

    daemon.wait_log("false positives loaded", 1).await;
    // The suppressed IP under a new rule, then a sentinel: once the
    // sentinel's event is in, the suppressed one would have been too.
    h.append(&format!(
        "{}\n{}\n",
        alert(2, KNOWN, 5713),
        alert(3, OTHER, 5713)
    ));
    q.received.wait_for(2, WAIT).await;
    assert_eq!(events_for(&q, KNOWN).count(), 1, "only the event before");

    let removed = run(&["false-positive", "--remove", KNOWN], &config);
    assert_eq!(removed[0]["removed"], true);
    daemon.wait_log("false positives loaded", 2).await;
    h.append(&format!("{}\n", alert(4, KNOWN, 5714)));
    q.received.wait_for(3, WAIT).await;
    assert_eq!(events_for(&q, KNOWN).count(), 2);
    daemon.signal(libc::SIGTERM);
    assert!(daemon.exit_status(WAIT).await.success());
}

/// Whether the ledger on disk holds `value`.
fn in_ledger(state_dir: &Path, value: &str) -> bool {
    let Ok(Some(s)) = LedgerStore::open_read_only(state_dir) else {
        return false;
    };
    let key = wazuh_misp::ledger::key_of(&value.parse::<Observable>().unwrap());
    s.range(&key, &key, 1).is_ok_and(|e| !e.is_empty())
}

const PAST_IP: &str = "45.133.1.23";
const IN_NETWORK: &str = "91.240.118.77";
const NETWORK: &str = "91.240.118.0/24";
const SUBDOMAIN: &str = "cdn.evil-new.example.com";
const PARENT: &str = "evil-new.example.com";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_alerts_come_back_as_retro_events_once_when_misp_learns_their_indicators() {
    let data = SimData::from_events([event_with_ips(1, &[KNOWN.to_owned()])]);
    let h = Harness::new(&data).await;
    let q = QueueSocket::bind(&h.socket, Received::default());
    let config = write_config(
        &h,
        "full_sync_interval_secs = 3\nsightings = true\nsightings_per_minute = 6000\n",
        "",
    );
    let mut daemon = Daemon::spawn(&config);
    daemon.wait_log("mirror full sync done", 1).await;
    // Nothing of these is known yet: the past IP in two alerts, an IP of
    // a network, a subdomain.
    h.append(&format!(
        "{}\n{}\n{}\n{}\n",
        alert(1, PAST_IP, 5710),
        alert(2, PAST_IP, 5711),
        alert(3, IN_NETWORK, 5710),
        dns_alert(4, SUBDOMAIN),
    ));
    let state_dir = h.cfg.input.state_dir.to_path_buf();
    eventually("the ledger holds what was seen", WAIT, || {
        [PAST_IP, IN_NETWORK, SUBDOMAIN]
            .iter()
            .all(|v| in_ledger(&state_dir, v))
    })
    .await;
    // A restart between the alerts and the sync: the ledger persists.
    daemon.signal(libc::SIGTERM);
    assert!(daemon.exit_status(WAIT).await.success());
    assert_eq!(q.received.len(), 0);
    let past_uuid = h
        .sim
        .add_attribute(0, json!({"type": "ip-dst", "value": PAST_IP}));
    h.sim
        .add_attribute(0, json!({"type": "ip-dst", "value": NETWORK}));
    h.sim.add_attribute(
        0,
        json!({"type": "domain", "value": PARENT, "category": "Network activity"}),
    );
    let mut daemon = Daemon::spawn(&config);
    q.received.wait_for(4, WAIT).await;
    // Full syncs after the hunt find nothing new, and a hunted
    // (value, indicator, alert) is never sent again.
    let full = daemon.log().matches("mirror full sync done").count();
    daemon.wait_log("mirror full sync done", full + 2).await;
    h.append(&format!("{}\n", alert(5, KNOWN, 5712)));
    q.received.wait_for(5, WAIT).await;
    // The retro events sighted the new indicator, once, at the past
    // alert's time, as their live events would have.
    eventually("the retro sighting", WAIT, || {
        sighted(&h).iter().any(|s| s.0 == past_uuid)
    })
    .await;
    daemon.signal(libc::SIGTERM);
    assert!(daemon.exit_status(WAIT).await.success());
    let events: Vec<Value> = q.received.events().into_iter().map(|(_, e)| e).collect();
    let retro: Vec<&Value> = events
        .iter()
        .filter(|e| e.get("retro_hunt").is_some())
        .collect();
    assert_eq!(retro.len(), 4, "{events:#?}");
    let past: Vec<&&Value> = retro
        .iter()
        .filter(|e| e["detected_ip"]["value"] == PAST_IP)
        .collect();
    assert_eq!(past.len(), 2, "one per alert");
    let mut rules: Vec<&str> = past
        .iter()
        .map(|e| e["rule"]["id"].as_str().unwrap())
        .collect();
    rules.sort();
    assert_eq!(rules, ["5710", "5711"]);
    for e in &past {
        assert_eq!(e["agent"]["id"], "001");
        assert_eq!(e["agent"]["name"], "host-001");
        assert_eq!(e["manager"]["name"], "wazuh-manager");
        assert_eq!(e["location"], "/var/log/auth.log");
        assert_eq!(e["wazuh_alert_timestamp"], "2026-11-22T09:58:02.114+0000");
        assert_eq!(e["detected_ip"]["field_path"], "data.srcip");
        assert_eq!(e["detected_ip"]["direction"], "source");
        assert_eq!(e["srcip"], PAST_IP, "the data keys are static fields again");
        assert_eq!(e["retro_hunt"]["indicator_uuid"], past_uuid.as_str());
        assert_eq!(e["retro_hunt"]["count"], 2);
        assert!(e["retro_hunt"]["first_seen"]
            .as_str()
            .unwrap()
            .ends_with("+0000"));
        assert!(e["retro_hunt"]["indicator_added"].as_str().is_some());
        assert_eq!(e["misp_data"]["attributes"][0]["value"], PAST_IP);
    }
    let net = retro
        .iter()
        .find(|e| e["detected_ip"]["value"] == IN_NETWORK)
        .expect("the network member");
    assert_eq!(net["detected_ip"]["matched_network"], NETWORK);
    let dom = retro
        .iter()
        .find(|e| e["detected_observable"]["value"] == SUBDOMAIN)
        .expect("the subdomain");
    assert_eq!(dom["detected_observable"]["matched_domain"], PARENT);
    assert_eq!(dom["agent"]["id"], "004");
    assert_eq!(
        dom["detected_observable"]["field_path"],
        "data.win.eventdata.queryName"
    );
    // Sent as the alert's agent's event.
    let locations: Vec<String> = q
        .received
        .events()
        .into_iter()
        .filter(|(_, e)| e.get("retro_hunt").is_some())
        .map(|(l, _)| l)
        .collect();
    assert!(
        locations.iter().any(|l| l.contains("[001] (host-001)")),
        "{locations:?}"
    );
    assert!(
        locations.iter().any(|l| l.contains("[004] (WS-FIN-022)")),
        "{locations:?}"
    );
    // The live event for the known IP is no retro event.
    assert!(events
        .iter()
        .any(|e| e["detected_ip"]["value"] == KNOWN && e.get("retro_hunt").is_none()));
    let past_sightings: Vec<_> = sighted(&h)
        .into_iter()
        .filter(|s| s.0 == past_uuid)
        .collect();
    assert_eq!(past_sightings.len(), 1, "{past_sightings:?}");
    assert_eq!(past_sightings[0].3, 1_795_341_482);
    // An on-demand hunt finds nothing left to send.
    let again = run(&["hunt"], &config);
    assert!(again.is_empty(), "{again:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_sync_of_a_fresh_install_hunts_nothing() {
    // MISP already knows the IP the past alerts carry.
    let data = SimData::from_events([event_with_ips(1, &[KNOWN.to_owned()])]);
    let h = Harness::new(&data).await;
    let q = QueueSocket::bind(&h.socket, Received::default());
    // The alerts are there before the daemon's first start.
    h.append(&format!(
        "{}\n{}\n",
        alert(1, KNOWN, 5710),
        alert(2, PAST_IP, 5710)
    ));
    let config = write_config(&h, "", "");
    let mut daemon = Daemon::spawn(&config);
    daemon.wait_log("mirror full sync done", 1).await;
    let state_dir = h.cfg.input.state_dir.to_path_buf();
    eventually("the ledger holds both", WAIT, || {
        in_ledger(&state_dir, KNOWN) && in_ledger(&state_dir, PAST_IP)
    })
    .await;
    // A sentinel: an indicator learnt later for the other past IP. Hunts
    // run in the order syncs find them, so once its retro event is in, a
    // hunt of the first sync would have been sent before it.
    h.sim
        .add_attribute(0, json!({"type": "ip-dst", "value": PAST_IP}));
    eventually("the sentinel's retro event", WAIT, || {
        events_for(&q, PAST_IP).any(|e| e.get("retro_hunt").is_some())
    })
    .await;
    daemon.signal(libc::SIGTERM);
    assert!(daemon.exit_status(WAIT).await.success());
    let known: Vec<Value> = events_for(&q, KNOWN).collect();
    assert!(
        known.iter().all(|e| e.get("retro_hunt").is_none()),
        "{known:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hunt_over_the_cap_sends_a_summary_and_the_hunt_command_sends_the_rest() {
    let data = SimData::from_events([event_with_ips(1, &[KNOWN.to_owned()])]);
    let h = Harness::new(&data).await;
    let q = QueueSocket::bind(&h.socket, Received::default());
    let config = write_config(&h, "", "[retro]\nmax_events_per_sync = 2\n");
    let mut daemon = Daemon::spawn(&config);
    daemon.wait_log("mirror full sync done", 1).await;
    let ips: Vec<String> = (0..4).map(|i| format!("45.133.1.{}", 30 + i)).collect();
    for (n, ip) in ips.iter().enumerate() {
        h.append(&format!("{}\n", alert(n, ip, 5710)));
    }
    let state_dir = h.cfg.input.state_dir.to_path_buf();
    eventually("the ledger holds the four", WAIT, || {
        ips.iter().all(|ip| in_ledger(&state_dir, ip))
    })
    .await;
    h.sim
        .add_attribute(0, json!({"type": "ip-dst", "value": "45.133.1.0/24"}));
    // Two retro events and the summary.
    q.received.wait_for(3, WAIT).await;
    daemon.signal(libc::SIGTERM);
    assert!(daemon.exit_status(WAIT).await.success());
    let events: Vec<(String, Value)> = q.received.events();
    let summary = events
        .iter()
        .find(|(_, e)| e["retro_hunt"]["summary"] == true)
        .expect("a summary event");
    assert_eq!(summary.0, "misp", "from the manager: {events:#?}");
    assert_eq!(summary.1["retro_hunt"]["events_sent"], 2, "{events:#?}");
    assert_eq!(summary.1["retro_hunt"]["events_left_out"], 2);
    let sent: Vec<String> = events
        .iter()
        .filter_map(|(_, e)| e["detected_ip"]["value"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(sent.len(), 2);
    // What the cap left out, on demand.
    let rest = run(&["hunt"], &config);
    let mut found: Vec<String> = rest
        .iter()
        .map(|e| e["detected_ip"]["value"].as_str().unwrap().to_owned())
        .chain(sent.clone())
        .collect();
    found.sort();
    assert_eq!(found, ips);
    let sent_now = run(&["hunt", "--send"], &config);
    assert_eq!(sent_now.len(), 2);
    q.received.wait_for(5, WAIT).await;
    assert!(run(&["hunt"], &config).is_empty(), "sent once");
    assert!(run(&["hunt", "--since", "1s"], &config).is_empty());
}

#[test]
fn the_dashboards_cdb_list_is_applied_by_the_shipped_script() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = dir.path().join("wazuh-misp.toml");
    std::fs::write(
        &config,
        format!(
            "[input]\nstate_dir = {state:?}\n[misp]\nurl = \"https://misp.example\"\napi_key = \"k\"\n"
        ),
    )
    .unwrap();
    let list = dir.path().join("misp-false-positives");
    std::fs::write(
        &list,
        "185.220.101.4:our own scanner\n\"2001:db8:10::5\":\"the proxy\"\n\"http://dl.example.com/a\":\n\n# a comment\nEvil.Example.COM\n",
    )
    .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/wazuh/misp-false-positives.sh");
    for _ in 0..2 {
        let out = Command::new("sh")
            .arg(&script)
            .env("WAZUH_MISP_LIST", &list)
            .env("WAZUH_MISP_CONFIG", &config)
            .env("WAZUH_MISP_BIN", BIN)
            .env("WAZUH_MISP_USER", "")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let listed = run(&["false-positive", "--list"], &config);
    let got: Vec<(String, Option<String>)> = listed
        .iter()
        .map(|e| {
            (
                e["value"].as_str().unwrap().to_owned(),
                e["reason"].as_str().map(str::to_owned),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                "185.220.101.4".to_owned(),
                Some("our own scanner".to_owned())
            ),
            ("2001:db8:10::5".to_owned(), Some("the proxy".to_owned())),
            ("http://dl.example.com/a".to_owned(), None),
            ("evil.example.com".to_owned(), None),
        ],
        "each value once, in canonical form"
    );
}

/// The new indicators a sync finds are written with the page that brought
/// them: a `kill -9` while the hunt waits on the writer loses none, and
/// the next start hunts them. Two attributes of one value make one retro
/// event per alert, not two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_indicators_survive_a_kill_during_the_hunt_and_count_once_per_alert() {
    let data = SimData::from_events([event_with_ips(1, &[KNOWN.to_owned()])]);
    let h = Harness::new(&data).await;
    let config = write_config(&h, "", "");
    // No queue socket yet: the hunt's events cannot leave.
    let daemon = Daemon::spawn(&config);
    daemon.wait_log("mirror full sync done", 1).await;
    h.append(&format!(
        "{}\n{}\n",
        alert(1, PAST_IP, 5710),
        alert(2, PAST_IP, 5711)
    ));
    let state_dir = h.cfg.input.state_dir.to_path_buf();
    eventually("the ledger holds the past IP", WAIT, || {
        in_ledger(&state_dir, PAST_IP)
    })
    .await;
    for _ in 0..2 {
        h.sim
            .add_attribute(0, json!({"type": "ip-dst", "value": PAST_IP}));
    }
    daemon
        .wait_log(
            "the mirror learnt new indicators; hunting them in the ledger",
            1,
        )
        .await;
    daemon.kill9();
    let q = QueueSocket::bind(&h.socket, Received::default());
    let mut daemon = Daemon::spawn(&config);
    eventually("the retro events after the restart", WAIT, || {
        events_for(&q, PAST_IP)
            .filter(|e| e.get("retro_hunt").is_some())
            .count()
            >= 2
    })
    .await;
    daemon.wait_log("retro-hunt done", 1).await;
    daemon.signal(libc::SIGTERM);
    assert!(daemon.exit_status(WAIT).await.success());
    q.drain().await;
    let retro: Vec<Value> = events_for(&q, PAST_IP)
        .filter(|e| e.get("retro_hunt").is_some())
        .collect();
    assert_eq!(retro.len(), 2, "one per alert: {retro:#?}");
}
