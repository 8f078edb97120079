//! Nothing lost, nothing doubled: bad input, outages, restarts, rotations.
//! In-process daemon with a real file, socket and HTTP.

mod common;

use common::*;
use std::collections::HashSet;
use std::time::Duration;
use wazuh_misp::stats::Stats;

const WAIT: Duration = Duration::from_secs(60);

fn ips_of(q: &QueueSocket) -> Vec<String> {
    q.received
        .events()
        .iter()
        .map(|(_, e)| e["detected_ip"]["value"].as_str().unwrap().to_owned())
        .collect()
}

/// Every kind of garbage, interleaved with good alerts: every good alert
/// comes out once, every bad line is counted under its reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_skipped_with_a_reason_and_good_alerts_still_flow() {
    let (data, ips) = pool(12);
    let mut h = Harness::new(&data).await;
    h.cfg.input.max_line_bytes = (1024 * 1024).into();
    let q = QueueSocket::bind(&h.socket, Received::default());
    let daemon = h.start();
    let good = |i: usize| sshd_alert(i, &ips[i], "001");
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let wrong_types = [
        // rule.level as a string, rule.id as a number, data as an array.
        good(6).replace("\"level\":10", "\"level\":\"10\""),
        good(7).replace("\"id\":\"5712\"", "\"id\":5712"),
        good(8)
            .replacen("\"data\":{", "\"data\":[{", 1)
            .replace("\"srcuser\":\"test\"}", "\"srcuser\":\"test\"}]"),
    ];
    let mut file: Vec<u8> = Vec::new();
    let push = |file: &mut Vec<u8>, b: &[u8]| {
        file.extend_from_slice(b);
        file.push(b'\n');
    };
    push(&mut file, good(0).as_bytes());
    push(
        &mut file,
        b"{\"timestamp\":\"2026-11-22T09:58:02.114+0000\",:{\"level\":10}}",
    ); // malformed
    push(&mut file, good(1).as_bytes());
    push(&mut file, &good(9).as_bytes()[..200]); // cut off mid-way
    push(&mut file, b"\xff\xfe{\"rule\":\xc3\x28}"); // not UTF-8
    push(&mut file, good(2).as_bytes());
    push(&mut file, &vec![b'x'; 10 * 1024 * 1024]); // 10 MB
    push(&mut file, good(3).as_bytes());
    push(&mut file, deep.as_bytes()); // deeper than serde_json's recursion limit
    push(&mut file, b"");
    push(&mut file, b"   ");
    push(&mut file, good(4).as_bytes());
    file.extend_from_slice(&[0u8; 4096]); // a NUL run, as copytruncate leaves
    push(&mut file, good(5).as_bytes());
    for w in &wrong_types {
        push(&mut file, w.as_bytes());
    }
    push(&mut file, b"null");
    push(&mut file, b"[1,2,3]");
    push(&mut file, good(10).as_bytes());
    push(&mut file, good(11).as_bytes());
    append_bytes(&h.alerts, &file);
    eventually("all lines handled", WAIT, || {
        daemon
            .checkpoints
            .committed()
            .is_some_and(|b| b.offset == file.len() as u64)
    })
    .await;
    let skipped = daemon.stats.skipped();
    let repaired = Stats::get(&daemon.stats.lines_repaired);
    daemon.shutdown(Duration::from_secs(5)).await;
    q.drain().await;
    let mut got = ips_of(&q);
    got.sort();
    // ips[9] only ever appears cut off.
    let mut want: Vec<String> = ips[..12]
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 9)
        .map(|(_, ip)| ip.clone())
        .collect();
    want.sort();
    assert_eq!(
        got, want,
        "every good alert once (including the wrong-typed ones)"
    );
    // Malformed, cut off, too deep, and the bad bytes line: decoded
    // lossily, it is still not JSON.
    assert_eq!(skipped.get("invalid_json"), Some(&4), "{skipped:?}");
    assert_eq!(repaired, 1);
    assert_eq!(skipped.get("line_too_long"), Some(&1), "{skipped:?}");
    assert_eq!(skipped.get("empty_line"), Some(&2), "{skipped:?}");
    assert_eq!(skipped.get("not_an_object"), Some(&2), "{skipped:?}");
}

/// One bad byte or one lone surrogate escape costs a character, not the
/// alert: each of these alerts still has its public srcip enriched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bytes_and_lone_surrogates_cost_a_character_not_the_alert() {
    let (data, ips) = pool(6);
    let h = Harness::new(&data).await;
    let q = QueueSocket::bind(&h.socket, Received::default());
    let daemon = h.start();
    let with_user = |i: usize, user: &str| {
        sshd_alert(i, &ips[i], "001")
            .replace("\"srcuser\":\"test\"", &format!("\"srcuser\":\"{user}\""))
    };
    let mut file: Vec<u8> = Vec::new();
    let lines: [Vec<u8>; 6] = [
        with_user(0, "ok").into_bytes(),
        with_user(1, "bad\u{1}byte")
            .into_bytes()
            .into_iter()
            .map(|b| if b == 1 { 0xff } else { b })
            .collect(),
        with_user(2, "lone\\ud800high").into_bytes(),
        with_user(3, "stray\\udc00low").into_bytes(),
        with_user(4, "pair\\ud83d\\ude00ok").into_bytes(),
        with_user(5, "end\\ud800").into_bytes(),
    ];
    for l in &lines {
        file.extend_from_slice(l);
        file.push(b'\n');
    }
    assert!(
        std::str::from_utf8(&lines[1]).is_err(),
        "line 1 has a raw bad byte"
    );
    append_bytes(&h.alerts, &file);
    q.received.wait_for(6, WAIT).await;
    let repaired = Stats::get(&daemon.stats.lines_repaired);
    daemon.shutdown(Duration::from_secs(5)).await;
    q.drain().await;
    let mut got = ips_of(&q);
    got.sort();
    let mut want = ips.clone();
    want.sort();
    assert_eq!(got, want, "every alert enriched");
    assert_eq!(repaired, 4, "the bad byte and three lone surrogates");
    let users: Vec<String> = q
        .received
        .events()
        .iter()
        .map(|(_, e)| e["srcuser"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(users.contains(&"lone\u{fffd}high".to_owned()), "{users:?}");
    assert!(users.contains(&"pair\u{1f600}ok".to_owned()), "{users:?}");
}

/// One sshd alert per IP, as one text to append at once.
fn sshd_alerts(ips: &[String]) -> String {
    ips.iter()
        .enumerate()
        .map(|(i, ip)| format!("{}\n", sshd_alert(i, ip, "001")))
        .collect()
}

fn append_bytes(path: &std::path::Path, b: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(b).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misp_down_then_back_loses_nothing() {
    let (data, ips) = pool(200);
    let mut h = Harness::new(&data).await;
    h.cfg.misp.retries = 1;
    h.cfg.misp.breaker_failures = 2;
    let q = QueueSocket::bind(&h.socket, Received::default());
    let daemon = h.start();
    for (i, ip) in ips[..50].iter().enumerate() {
        h.append(&format!("{}\n", sshd_alert(i, ip, "001")));
    }
    q.received.wait_for(50, WAIT).await;
    h.sim.stop().await;
    for (i, ip) in ips[50..].iter().enumerate() {
        h.append(&format!("{}\n", sshd_alert(50 + i, ip, "001")));
    }
    eventually("MISP failures seen", WAIT, || {
        Stats::get(&daemon.stats.misp_errors) >= 2
    })
    .await;
    h.sim.restart().await.unwrap();
    q.received.wait_for(200, WAIT).await;
    eventually("all handled", WAIT, || daemon.checkpoints.in_flight() == 0).await;
    daemon.shutdown(Duration::from_secs(5)).await;
    q.drain().await;
    let got = ips_of(&q);
    assert_eq!(got.len(), 200);
    assert_eq!(got.iter().collect::<HashSet<_>>().len(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_removed_and_recreated_loses_nothing_and_keeps_order() {
    let (data, ips) = pool(100);
    let mut h = Harness::new(&data).await;
    // One worker: lines finish in file order, so order can be checked.
    h.cfg.pipeline.workers = (1).into();
    let q = QueueSocket::bind(&h.socket, Received::default());
    let daemon = h.start();
    for (i, ip) in ips[..30].iter().enumerate() {
        h.append(&format!("{}\n", sshd_alert(i, ip, "001")));
    }
    q.received.wait_for(30, WAIT).await;
    q.drain().await;
    let before = ips_of(&q);
    q.close();
    for (i, ip) in ips[30..].iter().enumerate() {
        h.append(&format!("{}\n", sshd_alert(30 + i, ip, "001")));
    }
    eventually("the writer noticed", WAIT, || {
        Stats::get(&daemon.stats.socket_errors) > 0
    })
    .await;
    let q2 = QueueSocket::bind(&h.socket, Received::default());
    q2.received.wait_for(70, WAIT).await;
    daemon.shutdown(Duration::from_secs(5)).await;
    q2.drain().await;
    let after = ips_of(&q2);
    let all: Vec<String> = before.into_iter().chain(after).collect();
    assert_eq!(all.len(), 100);
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), 100);
}

/// A clean stop saves the bookmark and the dedup window: a restart neither
/// re-reads handled alerts nor re-reports a deduplicated IP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_from_the_bookmark_and_remembers_dedup() {
    let (data, ips) = pool(40);
    let mut h = Harness::new(&data).await;
    h.cfg.input.start_position = (wazuh_misp::config::StartPosition::Beginning).into();
    let q = QueueSocket::bind(&h.socket, Received::default());
    let daemon = h.start();
    for (i, ip) in ips[..20].iter().enumerate() {
        h.append(&format!("{}\n", sshd_alert(i, ip, "001")));
    }
    q.received.wait_for(20, WAIT).await;
    eventually("all handled", WAIT, || daemon.checkpoints.in_flight() == 0).await;
    daemon.shutdown(Duration::from_secs(5)).await;
    assert!(h.cfg.input.state_dir.join("bookmark.json").exists());
    assert!(h.cfg.input.state_dir.join("dedup.json").exists());

    // Written while stopped: must be read after the restart.
    for (i, ip) in ips[20..].iter().enumerate() {
        h.append(&format!("{}\n", sshd_alert(20 + i, ip, "001")));
    }
    // Same rule, IP and direction as an already reported alert: a duplicate.
    h.append(&format!("{}\n", sshd_alert(999, &ips[0], "001")));
    let daemon = h.start();
    q.received.wait_for(40, WAIT).await;
    eventually("all handled", WAIT, || {
        daemon.checkpoints.in_flight() == 0 && Stats::get(&daemon.stats.lines_read) == 21
    })
    .await;
    assert_eq!(Stats::get(&daemon.stats.dedup_hits), 1);
    daemon.shutdown(Duration::from_secs(5)).await;
    q.drain().await;
    let got = ips_of(&q);
    assert_eq!(got.len(), 40, "nothing re-read, nothing doubled");
}

/// bookmark.json (and in the second round its previous copy too) made
/// unreadable while the daemon is down, with `start_position = "end"`:
/// the alerts written meanwhile are still enriched, and those already
/// reported are not reported again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_bookmark_across_a_restart_loses_nothing() {
    for both in [false, true] {
        let (data, ips) = pool(20);
        let mut h = Harness::new(&data).await;
        h.cfg.input.start_position = (wazuh_misp::config::StartPosition::End).into();
        let q = QueueSocket::bind(&h.socket, Received::default());
        // An empty alerts.json: "end" is its start.
        let daemon = h.start();
        eventually("reading", WAIT, || daemon.checkpoints.committed().is_some()).await;
        for (i, ip) in ips[..10].iter().enumerate() {
            h.append(&format!("{}\n", sshd_alert(i, ip, "001")));
        }
        q.received.wait_for(10, WAIT).await;
        eventually("all handled", WAIT, || daemon.checkpoints.in_flight() == 0).await;
        daemon.shutdown(Duration::from_secs(5)).await;
        let state = &h.cfg.input.state_dir;
        std::fs::write(state.join("bookmark.json"), b"{\"version\":\"1\",\"fi").unwrap();
        if both {
            std::fs::write(state.join("bookmark.prev.json"), b"\x00garbage").unwrap();
        }
        for (i, ip) in ips[10..].iter().enumerate() {
            h.append(&format!("{}\n", sshd_alert(10 + i, ip, "001")));
        }
        let daemon = h.start();
        q.received.wait_for(20, WAIT).await;
        eventually("all handled", WAIT, || {
            daemon.checkpoints.in_flight() == 0
                && daemon.checkpoints.committed().map(|b| b.offset)
                    == Some(std::fs::metadata(&h.alerts).unwrap().len())
        })
        .await;
        daemon.shutdown(Duration::from_secs(5)).await;
        q.drain().await;
        let mut got = ips_of(&q);
        got.sort();
        let mut want = ips.clone();
        want.sort();
        assert_eq!(got, want, "both previous bookmarks unreadable: {both}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_state_file_is_set_aside_and_never_stops_the_daemon() {
    let (data, ips) = pool(1);
    let h = Harness::new(&data).await;
    std::fs::create_dir_all(&h.cfg.input.state_dir).unwrap();
    std::fs::write(h.cfg.input.state_dir.join("bookmark.json"), b"{not json").unwrap();
    std::fs::write(h.cfg.input.state_dir.join("dedup.json"), b"\x00\x01").unwrap();
    let q = QueueSocket::bind(&h.socket, Received::default());
    let daemon = h.start();
    h.append(&format!("{}\n", sshd_alert(1, &ips[0], "001")));
    q.received.wait_for(1, WAIT).await;
    daemon.shutdown(Duration::from_secs(5)).await;
    assert!(h.cfg.input.state_dir.join("bookmark.json.corrupt").exists());
    assert!(h.cfg.input.state_dir.join("dedup.json.corrupt").exists());
}

/// The alerts file missing for a while (Wazuh stopped): wait, never exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_alerts_file_is_waited_for() {
    let (data, ips) = pool(2);
    let h = Harness::new(&data).await;
    std::fs::remove_file(&h.alerts).unwrap();
    let q = QueueSocket::bind(&h.socket, Received::default());
    let daemon = h.start();
    std::fs::write(&h.alerts, format!("{}\n", sshd_alert(1, &ips[0], "001"))).unwrap();
    q.received.wait_for(1, WAIT).await;
    std::fs::remove_file(&h.alerts).unwrap();
    std::fs::write(&h.alerts, format!("{}\n", sshd_alert(2, &ips[1], "001"))).unwrap();
    q.received.wait_for(2, WAIT).await;
    daemon.shutdown(Duration::from_secs(5)).await;
}

/// copytruncate: same inode, size drops below our offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copytruncate_is_read_again_from_the_start() {
    let (data, ips) = pool(3);
    let h = Harness::new(&data).await;
    let q = QueueSocket::bind(&h.socket, Received::default());
    let daemon = h.start();
    h.append(&format!(
        "{}\n{}\n",
        sshd_alert(1, &ips[0], "001"),
        sshd_alert(2, &ips[1], "001")
    ));
    q.received.wait_for(2, WAIT).await;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&h.alerts)
        .unwrap()
        .set_len(0)
        .unwrap();
    h.append(&format!("{}\n", sshd_alert(3, &ips[2], "001")));
    q.received.wait_for(3, WAIT).await;
    daemon.shutdown(Duration::from_secs(5)).await;
    q.drain().await;
    assert_eq!(ips_of(&q).len(), 3);
}

/// MISP refusing the key for longer than error_event_after_secs: Wazuh gets
/// one error event, and the alert is still enriched once the key is fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_key_becomes_an_error_event_for_wazuh() {
    let (data, ips) = pool(1);
    let mut h = Harness::new(&data).await;
    h.cfg.misp.api_key = Some(wazuh_misp::config::Secret::new("wrong-key"));
    h.cfg.output.error_event_after_secs = 0;
    let q = QueueSocket::bind(&h.socket, Received::default());
    let daemon = h.start();
    h.append(&format!("{}\n", sshd_alert(1, &ips[0], "001")));
    q.received.wait_for(1, WAIT).await;
    let (loc, ev) = q.received.events().remove(0);
    assert_eq!(loc, "misp");
    assert_eq!(ev["integration"], "misp");
    assert_eq!(ev["misp_error"]["kind"], "auth");
    assert!(ev["misp_error"]["message"]
        .as_str()
        .unwrap()
        .contains("Authentication failed"));
    assert!(ev["misp_error"]["since"]
        .as_str()
        .unwrap()
        .ends_with("+0000"));
    assert_eq!(
        daemon.checkpoints.in_flight(),
        1,
        "the alert waits, it is not dropped"
    );
    daemon.shutdown(Duration::from_millis(200)).await;
}

/// Stopped while an alert waits for MISP: its dedup claim must not be saved
/// as "already reported", or the replay after the restart would be dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_in_flight_at_shutdown_is_enriched_after_restart() {
    let (data, ips) = pool(1);
    let mut h = Harness::new(&data).await;
    h.cfg.misp.retries = 0;
    let q = QueueSocket::bind(&h.socket, Received::default());
    h.sim.stop().await;
    let daemon = h.start();
    h.append(&format!("{}\n", sshd_alert(1, &ips[0], "001")));
    eventually("the lookup is failing", WAIT, || {
        Stats::get(&daemon.stats.misp_errors) > 0
    })
    .await;
    daemon.shutdown(Duration::from_millis(200)).await;
    h.sim.restart().await.unwrap();
    let daemon = h.start();
    q.received.wait_for(1, WAIT).await;
    daemon.shutdown(Duration::from_secs(5)).await;
    assert_eq!(ips_of(&q), [ips[0].clone()]);
}

/// One value MISP answers with a 500 every time it is asked (in a batch or
/// alone): every other alert of its batches is enriched, and after
/// `misp.isolated_retry_secs` the value is given up on, reported to Wazuh
/// by name, and its alert let go so that the bookmark reaches the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_misp_always_fails_on_holds_up_no_other_alert() {
    let (data, ips) = pool(120);
    let mut h = Harness::new(&data).await;
    h.cfg.misp.retries = 1;
    h.cfg.misp.isolated_retry_secs = 1;
    h.cfg.misp.batch_window_ms = 20;
    h.cfg.pipeline.channel_capacity = (256).into();
    let poison = ips[37].clone();
    h.sim
        .fail_value(&poison, Some(wazuh_misp::sim::Fault::Status(500)));
    let q = QueueSocket::bind(&h.socket, Received::default());
    let daemon = h.start();
    let lines = sshd_alerts(&ips);
    h.append(&lines);
    // 119 enriched events and one error event naming the value.
    q.received.wait_for(120, WAIT).await;
    eventually("every line handled", WAIT, || {
        daemon.checkpoints.in_flight() == 0
            && daemon.checkpoints.committed().map(|b| b.offset) == Some(lines.len() as u64)
    })
    .await;
    let failed = Stats::get(&daemon.stats.lookups_failed);
    daemon.shutdown(Duration::from_secs(5)).await;
    q.drain().await;
    let events = q.received.events();
    let mut enriched: Vec<String> = events
        .iter()
        .filter_map(|(_, e)| e["detected_ip"]["value"].as_str().map(str::to_owned))
        .collect();
    enriched.sort();
    let mut want: Vec<String> = ips.iter().filter(|ip| **ip != poison).cloned().collect();
    want.sort();
    assert_eq!(enriched, want, "every other alert enriched, once");
    let errors: Vec<&serde_json::Value> = events
        .iter()
        .map(|(_, e)| e)
        .filter(|e| e["misp_error"]["kind"] == "lookup_failed")
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["misp_error"]["value"], poison.as_str());
    assert_eq!(failed, 1);
}

/// One value whose MISP answer is over `misp.max_response_bytes` (an IP
/// in hundreds of events): the rest of its batch is enriched, and it is
/// asked again alone for its first page, its event marked truncated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_with_an_oversized_answer_gets_its_first_page() {
    let ips: Vec<String> = (0..20).map(pool_ip).collect();
    let poison = ips[11].clone();
    let events = std::iter::once(event_with_ips(1, &ips))
        .chain((2..122).map(|id| event_with_ips(id, std::slice::from_ref(&poison))));
    let data = wazuh_misp::sim::SimData::from_events(events);
    let size = |limit: Option<u32>| {
        let mut body = serde_json::json!({"returnFormat": "json", "value": [poison], "includeContext": true,
            "includeEventTags": true, "includeSightings": true, "includeCorrelations": true});
        if let Some(l) = limit {
            body["limit"] = l.into();
        }
        wazuh_misp::sim::MispSim::answer(&data, &body)
            .to_string()
            .len()
    };
    let (full, page) = (
        size(None),
        size(Some(wazuh_misp::lookup::FIRST_PAGE_ATTRIBUTES)),
    );
    assert!(page * 2 < full, "page {page} full {full}");
    let mut h = Harness::new(&data).await;
    h.cfg.misp.retries = 0;
    h.cfg.misp.batch_window_ms = 20;
    h.cfg.misp.max_response_bytes = (page + full) / 2;
    let q = QueueSocket::bind(&h.socket, Received::default());
    let daemon = h.start();
    let lines = sshd_alerts(&ips);
    h.append(&lines);
    q.received.wait_for(20, WAIT).await;
    let failed = Stats::get(&daemon.stats.lookups_failed);
    daemon.shutdown(Duration::from_secs(5)).await;
    q.drain().await;
    let events = q.received.events();
    assert_eq!(events.len(), 20);
    let big = events
        .iter()
        .map(|(_, e)| e)
        .find(|e| e["detected_ip"]["value"] == poison.as_str())
        .unwrap();
    assert_eq!(big["misp_data"]["summary"]["truncated"], true);
    assert!(
        big["misp_data"]["summary"]["total_attributes"]
            .as_u64()
            .unwrap()
            <= u64::from(wazuh_misp::lookup::FIRST_PAGE_ATTRIBUTES)
    );
    assert_eq!(failed, 0);
}
