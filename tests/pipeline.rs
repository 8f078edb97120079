//! The daemon end to end, in process: a real alerts file, real rotation, a
//! real datagram socket, real HTTP to the MISP simulator.

mod common;

use common::*;
use std::collections::HashSet;
use std::time::Duration;
use wazuh_misp::demo;
use wazuh_misp::stats::Stats;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_and_manager_alerts_arrive_in_the_right_location_form() {
    let (data, ips) = pool(3);
    let h = Harness::new(&data).await;
    let q = QueueSocket::bind(&h.socket, Received::default());
    let daemon = h.start();
    h.append(&format!(
        "{}\n{}\n{}\n",
        sshd_alert(1, &ips[0], "001"),
        sshd_alert(2, &ips[1], "000"),
        // Clean IP: MISP knows nothing, so nothing is sent.
        sshd_alert(3, "93.184.216.34", "002"),
    ));
    q.received.wait_for(2, WAIT).await;
    all_handled(&daemon, 3, WAIT).await;
    daemon.shutdown(Duration::from_secs(5)).await;
    q.drain().await;
    let mut events = q.received.events();
    events.sort_by_key(|(_, e)| e["detected_ip"]["value"].as_str().unwrap().to_owned());
    assert_eq!(events.len(), 2);
    let (loc, ev) = &events[0];
    assert_eq!(loc, "[001] (host-001) 10.0.1.50->misp");
    assert_eq!(ev["integration"], "misp");
    assert_eq!(ev["detected_ip"]["value"], ips[0]);
    assert_eq!(ev["detected_ip"]["direction"], "source");
    // full_log comes first and says "from", but the keyed direction wins.
    assert_eq!(ev["detected_ip"]["field_path"], "data.srcip");
    assert_eq!(ev["misp_data"]["attributes"][0]["value"], ips[0]);
    assert_eq!(ev["srcip"], ips[0]);
    let (loc, ev) = &events[1];
    assert_eq!(loc, "misp");
    assert_eq!(ev["detected_ip"]["value"], ips[1]);
}

/// analysisd's rotation: alerts.json is a hard link to
/// `YYYY/Mon/ossec-alerts-DD.json`, replaced by unlink + link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wazuh_rotation_under_continuous_writes_loses_and_doubles_nothing() {
    const ALERTS: usize = 3000;
    const ROTATIONS: usize = 10;
    let (data, ips) = pool(ALERTS);
    let h = Harness::new(&data).await;
    let q = QueueSocket::bind(&h.socket, Received::default());
    let month = h.dir.path().join("2026/Nov");
    std::fs::create_dir_all(&month).unwrap();
    let daily = move |d: usize| month.join(format!("ossec-alerts-{:02}.json", d + 1));
    std::fs::remove_file(&h.alerts).unwrap();
    std::fs::write(daily(0), b"").unwrap();
    std::fs::hard_link(daily(0), &h.alerts).unwrap();
    let daemon = h.start();

    let alerts_path = h.alerts.clone();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let mut day = 0;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(daily(0))
            .unwrap();
        for (i, ip) in ips.iter().enumerate() {
            f.write_all(format!("{}\n", sshd_alert(i, ip, "001")).as_bytes())
                .unwrap();
            if i > 0 && i % (ALERTS / (ROTATIONS + 1)) == 0 && day < ROTATIONS {
                day += 1;
                let next = daily(day);
                f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&next)
                    .unwrap();
                std::fs::remove_file(&alerts_path).unwrap();
                std::fs::hard_link(&next, &alerts_path).unwrap();
            }
        }
    });
    q.received.wait_for(ALERTS, Duration::from_secs(60)).await;
    writer.join().unwrap();
    eventually("all lines handled", WAIT, || {
        daemon.checkpoints.in_flight() == 0
    })
    .await;
    daemon.shutdown(Duration::from_secs(5)).await;
    q.drain().await;
    let events = q.received.events();
    let ids: HashSet<String> = events
        .iter()
        .map(|(_, e)| e["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(events.len(), ALERTS, "exactly one event per alert");
    assert_eq!(ids.len(), ALERTS, "no duplicates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_line_is_held_back_until_its_newline() {
    let (data, ips) = pool(2);
    let h = Harness::new(&data).await;
    let q = QueueSocket::bind(&h.socket, Received::default());
    let daemon = h.start();
    let second = sshd_alert(2, &ips[1], "001");
    let (head, tail) = second.split_at(second.len() / 2);
    // One write holding a complete line and half of the next, as a buffered
    // stdio flush can leave it.
    h.append(&format!("{}\n{head}", sshd_alert(1, &ips[0], "001")));
    q.received.wait_for(1, WAIT).await;
    eventually("first line handled", WAIT, || {
        daemon.checkpoints.in_flight() == 0
    })
    .await;
    assert_eq!(q.received.len(), 1);
    assert_eq!(
        daemon.stats.skipped_total(),
        0,
        "the half line was not parsed"
    );
    h.append(&format!("{tail}\n"));
    q.received.wait_for(2, WAIT).await;
    assert_eq!(daemon.stats.skipped_total(), 0);
    daemon.shutdown(Duration::from_secs(5)).await;
    let events = q.received.events();
    assert_eq!(events[1].1["detected_ip"]["value"], ips[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_missing_at_first_still_gets_every_event() {
    let (data, ips) = pool(20);
    let h = Harness::new(&data).await;
    let daemon = h.start();
    for (i, ip) in ips.iter().enumerate() {
        h.append(&format!("{}\n", sshd_alert(i, ip, "001")));
    }
    eventually("the writer tried and failed", WAIT, || {
        Stats::get(&daemon.stats.socket_errors) > 0
    })
    .await;
    let q = QueueSocket::bind(&h.socket, Received::default());
    q.received.wait_for(ips.len(), WAIT).await;
    eventually("all lines handled", WAIT, || {
        daemon.checkpoints.in_flight() == 0
    })
    .await;
    daemon.shutdown(Duration::from_secs(5)).await;
    q.drain().await;
    let got: HashSet<String> = q
        .received
        .events()
        .iter()
        .map(|(_, e)| e["detected_ip"]["value"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(got, ips.into_iter().collect());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_pipeline_produces_the_expected_events() {
    let outcome = demo::run_demo(demo::DEMO_ALERTS).await.unwrap();
    let mut seen: Vec<(String, String, String)> = outcome
        .datagrams
        .iter()
        .map(|d| {
            let (_, loc, msg) = wazuh_misp::output::frame::parse(d).unwrap();
            let v: serde_json::Value = serde_json::from_slice(msg).unwrap();
            let detected = v.get("detected_ip").unwrap_or(&v["detected_observable"]);
            (
                detected["value"].as_str().unwrap().to_owned(),
                detected["direction"].as_str().unwrap().to_owned(),
                loc,
            )
        })
        .collect();
    seen.sort();
    let want = [
        (
            "057fc9341aa394da646eae5eda486dc2",
            "unknown",
            "[004] (WS-FIN-022) 10.0.4.22->misp",
        ),
        (
            "908756aa5bb77921a566f72e0424b7761fa1b15138dde01c702dbffb06ac6ad6",
            "unknown",
            "[004] (WS-FIN-022) 10.0.4.22->misp",
        ),
        ("162.247.74.201", "source", "[001] (web-01) 10.0.1.50->misp"),
        (
            "185.220.101.42",
            "source",
            "[002] (proxy|edge:1) 2001:db8:10::5->misp",
        ),
        ("222.186.30.76", "source", "misp"),
        (
            "2a03:b0c0:3:d0::1a51:c001",
            "source",
            "[005] (mail-gw) 10.0.5.2->misp",
        ),
        (
            "45.95.147.236",
            "destination",
            "[004] (WS-FIN-022) 10.0.4.22->misp",
        ),
        ("49.88.112.73", "source", "[001] (web-01) 10.0.1.50->misp"),
        (
            "91.240.118.50",
            "destination",
            "[003] (nids-01) 10.0.3.7->misp",
        ),
        (
            "cdn.fin7-loader.top",
            "unknown",
            "[004] (WS-FIN-022) 10.0.4.22->misp",
        ),
        (
            "dl.fin7-loader.top",
            "unknown",
            "[003] (nids-01) 10.0.3.7->misp",
        ),
        (
            "http://dl.fin7-loader.top/gate.php?id=7",
            "unknown",
            "[003] (nids-01) 10.0.3.7->misp",
        ),
        // The retro event: MISP learnt relay-7f3a.top after the query.
        (
            "sync.relay-7f3a.top",
            "unknown",
            "[004] (WS-FIN-022) 10.0.4.22->misp",
        ),
    ];
    let mut want: Vec<(String, String, String)> = want
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    want.sort();
    assert_eq!(seen, want);
    // The network hit: the alert's IP, the network as MISP stores it.
    let tor = outcome
        .datagrams
        .iter()
        .map(|d| {
            let (_, _, msg) = wazuh_misp::output::frame::parse(d).unwrap();
            serde_json::from_slice::<serde_json::Value>(msg).unwrap()
        })
        .find(|v| v["detected_ip"]["value"] == "162.247.74.201")
        .unwrap();
    assert_eq!(tor["detected_ip"]["matched_network"], "162.247.74.0/24");
    assert_eq!(
        tor["misp_data"]["attributes"][0]["value"],
        "162.247.74.0/24"
    );
    // A subdomain hit names the MISP domain it matched under.
    let events: Vec<serde_json::Value> = outcome
        .datagrams
        .iter()
        .map(|d| {
            let (_, _, msg) = wazuh_misp::output::frame::parse(d).unwrap();
            serde_json::from_slice(msg).unwrap()
        })
        .collect();
    let dns = events
        .iter()
        .find(|v| v["detected_observable"]["value"] == "cdn.fin7-loader.top")
        .unwrap();
    assert_eq!(dns["detected_observable"]["type"], "domain");
    assert_eq!(
        dns["detected_observable"]["matched_domain"],
        "fin7-loader.top"
    );
    assert_eq!(
        dns["detected_observable"]["field_path"],
        "data.win.eventdata.queryName"
    );
    let md5 = events
        .iter()
        .find(|v| v["detected_observable"]["type"] == "md5")
        .unwrap();
    assert_eq!(
        md5["detected_observable"]["field_path"],
        "data.win.eventdata.hashes"
    );
    // Matching is local: MISP is asked for the details of the 11 hits
    // (6 IPs, 1 network, 1 parent domain, 1 URL, 2 hashes) once each, and
    // of the retro-hunt's (the late parent domain), never about 8.8.8.8
    // (warninglisted, so not mirrored), the clean 93.184.216.34 or the
    // syscheck hashes MISP does not know.
    assert_eq!(outcome.misp_values, 12, "each hit's details asked once");
    assert!(outcome.misp_requests >= 1 && outcome.misp_requests <= outcome.misp_values);
    assert_eq!(outcome.mirrored.1, 2, "two networks mirrored");
    assert_eq!(Stats::get(&outcome.stats.dedup_hits), 1);
}

/// An alert whose `data` is ~70 KB (a PowerShell script block, well under
/// `max_line_bytes`) still yields its event: the copied `data` fields are
/// cut, largest first, never `srcip`, and named in the summary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_with_a_large_data_still_gets_its_event() {
    let (data, ips) = pool(1);
    let h = Harness::new(&data).await;
    let q = QueueSocket::bind(&h.socket, Received::default());
    let daemon = h.start();
    let mut alert: serde_json::Value =
        serde_json::from_str(&sshd_alert(1, &ips[0], "001")).unwrap();
    alert["data"]["scriptBlockText"] = "Invoke-Expression ".repeat(4000).into();
    alert["data"]["small"] = "kept".into();
    let line = alert.to_string();
    assert!(line.len() > 70_000);
    h.append(&format!("{line}\n"));
    q.received.wait_for(1, WAIT).await;
    daemon.shutdown(Duration::from_secs(5)).await;
    q.drain().await;
    let (_, ev) = &q.received.events()[0];
    assert_eq!(ev["srcip"], ips[0]);
    assert_eq!(ev["small"], "kept");
    assert!(ev.get("scriptBlockText").is_none());
    assert_eq!(ev["misp_data"]["summary"]["truncated"], true);
    assert_eq!(
        ev["misp_data"]["summary"]["omitted_fields"],
        serde_json::json!(["scriptBlockText"])
    );
}

/// An agent name too long for any datagram (only possible through
/// `enrich` and integratord input) skips that alert with an error, and the
/// next alert is enriched as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_name_over_a_datagram_skips_only_its_alert() {
    let (data, ips) = pool(2);
    let h = Harness::new(&data).await;
    let stats = std::sync::Arc::new(Stats::default());
    let engine = wazuh_misp::runtime::Engine::new(
        wazuh_misp::runtime::Rules::from_config(&h.cfg).unwrap(),
        wazuh_misp::lookup::Lookup::start(
            wazuh_misp::lookup::MispClient::new(&h.cfg.misp, &h.cfg.resolve_api_key().unwrap())
                .unwrap(),
            &h.cfg.misp,
            stats.clone(),
        ),
        None,
        stats,
    );
    let long = sshd_alert(1, &ips[0], "001").replace("host-001", &"n".repeat(70_000));
    let out = engine.process(long.as_bytes(), Some(0)).await.unwrap();
    assert!(out.datagrams.is_empty());
    let out = engine
        .process(sshd_alert(2, &ips[1], "001").as_bytes(), Some(0))
        .await
        .unwrap();
    assert_eq!(out.datagrams.len(), 1);
}

/// `wazuh-misp enrich` as a library call: one JSON line per event, and a
/// reader that goes away ends the run without an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrich_lines_writes_one_event_per_line_and_stops_on_a_closed_output() {
    let (data, ips) = pool(3);
    let h = Harness::new(&data).await;
    let client = || {
        wazuh_misp::lookup::MispClient::new(&h.cfg.misp, &h.cfg.resolve_api_key().unwrap()).unwrap()
    };
    let input: String = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| format!("{}\n", sshd_alert(i, ip, "001")))
        .collect();
    let mut out = Vec::new();
    let written = wazuh_misp::enrich_lines::run(&h.cfg, client(), input.as_bytes(), &mut out)
        .await
        .unwrap();
    assert_eq!(written, 3);
    let values: Vec<String> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["detected_ip"]["value"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(values, ips);

    struct Closed;
    impl std::io::Write for Closed {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let before = h.sim.requests();
    let written = wazuh_misp::enrich_lines::run(&h.cfg, client(), input.as_bytes(), Closed)
        .await
        .unwrap();
    assert_eq!(written, 0);
    assert!(
        h.sim.requests() - before <= 1,
        "no lookups after the first write failed"
    );
}
