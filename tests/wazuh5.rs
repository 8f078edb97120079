//! Wazuh 5's output edge: events go to a stand-in for the engine's HTTP
//! ingestion socket (`wazuh_misp::sim::engine`, parsing as
//! `ndJsonParser.hpp` does) in valid batches of one agent each, with 413
//! splitting a batch and 5xx or a missing socket losing nothing.

mod common;

use common::*;
use std::collections::HashMap;
use std::time::Duration;
use wazuh_misp::config::WazuhVersion;
use wazuh_misp::sim::engine::EngineSim;

const WAIT: Duration = Duration::from_secs(30);

async fn harness(ips: &[String]) -> Harness {
    let data = wazuh_misp::sim::SimData::from_events([event_with_ips(1, ips)]);
    let mut h = Harness::new(&data).await;
    h.cfg.wazuh.version = WazuhVersion::V5.into();
    h.cfg.output.queue_socket = h.dir.path().join("queue-http.sock").into();
    h
}

/// Six alerts of three agents (the manager's among them), each naming a
/// known IP.
fn alerts(ips: &[String]) -> String {
    (0..6)
        .map(|n| sshd_alert(n, &ips[n], ["001", "002", "000"][n % 3]) + "\n")
        .collect()
}

async fn until_events(engine: &EngineSim, n: usize) {
    eventually(&format!("{n} events at the engine"), WAIT, || {
        engine.events().len() >= n
    })
    .await;
}

fn by_id(engine: &EngineSim) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for (_, e) in engine.events() {
        *m.entry(e["event_id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_in_a_valid_batch_of_one_agent() {
    let ips: Vec<String> = (0..6).map(pool_ip).collect();
    let h = harness(&ips).await;
    let mut engine = EngineSim::start(&h.cfg.output.queue_socket).await.unwrap();
    let daemon = h.start();
    h.append(&alerts(&ips));
    until_events(&engine, 6).await;
    all_handled(&daemon, 6, WAIT).await;
    daemon.shutdown(Duration::from_secs(5)).await;
    for b in engine.batches() {
        let agent = b.header["wazuh"]["agent"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(agent.bytes().all(|c| c.is_ascii_digit()), "{agent}");
        for e in &b.events {
            let (_, location, message) = wazuh_misp::output::frame::parse(e.as_bytes()).unwrap();
            let v: serde_json::Value = serde_json::from_slice(message).unwrap();
            assert_eq!(v["agent"]["id"], agent.as_str(), "one agent per batch: {e}");
            assert!(location.ends_with("misp"), "{location}");
        }
    }
    let events = engine.events();
    assert_eq!(events.len(), 6);
    let manager = events.iter().filter(|(a, _)| a == "000").count();
    assert_eq!(manager, 2);
    assert!(by_id(&engine).values().all(|&n| n == 1));
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_413_splits_the_batch_and_5xx_or_no_socket_lose_nothing() {
    let ips: Vec<String> = (0..12).map(pool_ip).collect();
    let h = harness(&ips).await;
    // No engine yet: the daemon waits for the socket.
    let daemon = h.start();
    // One alert naming six known IPs: six events of one agent, one batch.
    let mut many: serde_json::Value = serde_json::from_str(&sshd_alert(0, &ips[0], "001")).unwrap();
    many["full_log"] = format!("blocked {}", ips[1..6].join(", ")).into();
    h.append(&format!("{many}\n"));
    eventually("the line read", WAIT, || {
        wazuh_misp::stats::Stats::get(&daemon.stats.lines_read) == 1
    })
    .await;
    assert!(
        daemon.checkpoints.in_flight() > 0,
        "not acknowledged without the engine"
    );
    let mut engine = EngineSim::start(&h.cfg.output.queue_socket).await.unwrap();
    engine.respond(503, 2);
    engine.respond(413, 1);
    until_events(&engine, 6).await;
    all_handled(&daemon, 1, WAIT).await;
    let sizes: Vec<usize> = engine.batches().iter().map(|b| b.events.len()).collect();
    assert_eq!(sizes, [3, 3], "the 413 split the batch");
    assert_eq!(engine.requests(), 5, "two 503s, a 413, two halves");
    // Then the engine goes away and comes back.
    engine.stop().await;
    let later: String = (6..12)
        .map(|n| sshd_alert(n, &ips[n], "001") + "\n")
        .collect();
    h.append(&later);
    eventually("the later lines read", WAIT, || {
        wazuh_misp::stats::Stats::get(&daemon.stats.lines_read) == 7
    })
    .await;
    let mut again = EngineSim::start(&h.cfg.output.queue_socket).await.unwrap();
    until_events(&again, 6).await;
    all_handled(&daemon, 7, WAIT).await;
    daemon.shutdown(Duration::from_secs(5)).await;
    let mut seen = by_id(&engine);
    for (id, n) in by_id(&again) {
        *seen.entry(id).or_default() += n;
    }
    assert_eq!(seen.len(), 12, "{seen:?}");
    assert!(seen.values().all(|&n| n == 1), "each once: {seen:?}");
    again.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_events_are_enriched_with_their_wcs_context_and_our_own_are_skipped() {
    let known = [
        ("ip-src", "185.220.101.42"),
        ("domain", "fin7-loader.top"),
        ("ip-dst", "91.240.118.50"),
        ("url", "http://dl.fin7-loader.top/gate.php?id=7"),
    ]
    .map(|(t, v)| (t.to_owned(), v.to_owned()));
    let data = wazuh_misp::sim::SimData::from_events([event_with(1, &known)]);
    let mut h = Harness::new(&data).await;
    h.cfg.wazuh.version = WazuhVersion::V5.into();
    h.cfg.output.queue_socket = h.dir.path().join("queue-http.sock").into();
    let mut engine = EngineSim::start(&h.cfg.output.queue_socket).await.unwrap();
    let daemon = h.start();
    let stream = include_str!("fixtures/wazuh5/events.ndjson");
    h.append(stream);
    all_handled(&daemon, stream.lines().count() as u64, WAIT).await;
    until_events(&engine, 5).await;
    daemon.shutdown(Duration::from_secs(5)).await;
    assert_eq!(daemon_skipped_own(&engine), 0);
    let events = engine.events();
    let find = |value: &str| {
        events
            .iter()
            .find(|(_, e)| {
                e["detected_ip"]["value"] == value || e["detected_observable"]["value"] == value
            })
            .unwrap_or_else(|| panic!("no event for {value}: {events:#?}"))
            .clone()
    };
    let (agent, ssh) = find("185.220.101.42");
    assert_eq!(agent, "001");
    assert_eq!(ssh["agent"]["id"], "001");
    assert_eq!(ssh["agent"]["name"], "web-01");
    assert_eq!(ssh["agent"]["ip"], "10.0.1.50");
    assert_eq!(ssh["location"], "/var/log/auth.log");
    assert_eq!(ssh["wazuh_alert_timestamp"], "2026-11-22T09:58:02.114Z");
    assert_eq!(ssh["manager"]["name"], "manager-1");
    assert_eq!(ssh["detected_ip"]["field_path"], "source.ip");
    assert_eq!(ssh["detected_ip"]["direction"], "source");
    let (agent, dns) = find("cdn.fin7-loader.top");
    assert_eq!(agent, "004");
    assert_eq!(
        dns["detected_observable"]["field_path"],
        "dns.question.name"
    );
    assert_eq!(
        dns["detected_observable"]["matched_domain"],
        "fin7-loader.top"
    );
    let (_, dst) = find("91.240.118.50");
    assert_eq!(dst["detected_ip"]["direction"], "destination");
    assert_eq!(dst["detected_ip"]["field_path"], "destination.ip");
    find("http://dl.fin7-loader.top/gate.php?id=7");
    find("dl.fin7-loader.top");
    // The fourth line is one of our own events: nothing came of it.
    assert_eq!(events.len(), 5, "{events:#?}");
    // What the shipped decoder reads of our events is in them.
    let sent: Vec<&serde_json::Value> = events.iter().map(|(_, e)| e).collect();
    for path in decoder_reads() {
        let rare = ["retro_hunt", "misp_error"]
            .iter()
            .any(|p| path.starts_with(p));
        let present = sent.iter().any(|e| {
            path.split('.')
                .try_fold(*e, |v, k| v.get(k))
                .is_some_and(|v| !v.is_null())
        });
        assert!(
            present || rare,
            "the decoder reads {path}, which no event has"
        );
    }
    engine.stop().await;
}

/// The paths of our event (`_tmp_json.<path>`) that
/// `config/wazuh5/decoders/wazuh-misp.yml` checks or maps.
fn decoder_reads() -> Vec<String> {
    let text = include_str!("../config/wazuh5/decoders/wazuh-misp.yml");
    let mut paths: Vec<String> = text
        .split(|c: char| c.is_whitespace() || "(),".contains(c))
        .filter_map(|w| w.trim_start_matches('$').strip_prefix("_tmp_json."))
        .map(|p| p.trim_end_matches([':', '.']).to_owned())
        .filter(|p| !p.is_empty())
        .collect();
    paths.sort();
    paths.dedup();
    assert!(paths.len() > 10, "{paths:?}");
    paths
}

/// Events at the engine that are ours about our own events.
fn daemon_skipped_own(engine: &EngineSim) -> usize {
    engine
        .events()
        .iter()
        .filter(|(_, e)| {
            e["location"]
                .as_str()
                .is_some_and(|l| l.ends_with("->misp"))
        })
        .count()
}

/// The engine's rotation (`streamlog/src/channel.cpp`): the stable name is
/// a hard link to the active file; at rotation the engine opens a new
/// file, removes the link and links the new file, then compresses the old
/// one and deletes it. Lines written to the old file up to the rotation
/// are all read, from the open file, even once it is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_is_followed_through_the_engines_rotation() {
    let ips: Vec<String> = (0..8).map(pool_ip).collect();
    let mut h = harness(&ips).await;
    let channel = h.dir.path().join("standard-wazuh-events-v5");
    let day = channel.join("2026/Nov");
    std::fs::create_dir_all(&day).unwrap();
    let first = day.join("standard-wazuh-events-v5-22.json");
    let stable = channel.join("standard-wazuh-events-v5.json");
    std::fs::write(&first, b"").unwrap();
    std::fs::hard_link(&first, &stable).unwrap();
    h.cfg.input.alerts_file = stable.clone().into();
    let mut engine = EngineSim::start(&h.cfg.output.queue_socket).await.unwrap();
    let daemon = h.start();
    let event = |n: usize| stream_event(n, &ips[n]);
    for n in 0..3 {
        append(&first, &event(n));
    }
    until_events(&engine, 3).await;
    // Written just before the rotation, maybe not read yet.
    append(&first, &event(3));
    // The rotation: a new file, the link moved, and the old one deleted
    // once compressed (the `.gz` is not modelled: a running daemon reads
    // the old file through the descriptor it holds).
    let second = day.join("standard-wazuh-events-v5-23.json");
    std::fs::write(&second, b"").unwrap();
    std::fs::remove_file(&stable).unwrap();
    std::fs::hard_link(&second, &stable).unwrap();
    std::fs::remove_file(&first).unwrap();
    for n in 4..8 {
        append(&second, &event(n));
    }
    until_events(&engine, 8).await;
    daemon.shutdown(Duration::from_secs(5)).await;
    let mut got: Vec<String> = engine
        .events()
        .into_iter()
        .map(|(_, e)| e["detected_ip"]["value"].as_str().unwrap().to_owned())
        .collect();
    got.sort();
    let mut want = ips.clone();
    want.sort();
    assert_eq!(got, want, "every event once, across the rotation");
    engine.stop().await;
}

/// The first event of the fixture, naming `ip`, with its own event id.
fn stream_event(n: usize, ip: &str) -> String {
    let mut v: serde_json::Value = serde_json::from_str(
        include_str!("fixtures/wazuh5/events.ndjson")
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    v["source"]["ip"] = ip.into();
    v["event"]["original"] = format!("Invalid user test from {ip} port 41220").into();
    v["wazuh"]["event"]["id"] = format!("e{n}").into();
    v.to_string() + "\n"
}

/// As the engine's compressor does (`compressLogFile`): `<file>.gz`, then
/// the original removed.
fn gzip_and_delete(path: &std::path::Path) {
    use std::io::Write;
    let gz = std::fs::File::create(format!("{}.gz", path.display())).unwrap();
    let mut e = flate2::write::GzEncoder::new(gz, flate2::Compression::new(5));
    e.write_all(&std::fs::read(path).unwrap()).unwrap();
    e.finish().unwrap();
    std::fs::remove_file(path).unwrap();
}

/// Stopped while the engine rotated twice, the daemon finds its bookmarked
/// file only as a `.gz` (the original deleted), and the file after it
/// gzipped too: it reads the rest of both, decompressed, then the live
/// file, and every event arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_across_rotations_already_gzipped_loses_nothing() {
    let ips: Vec<String> = (0..9).map(pool_ip).collect();
    let mut h = harness(&ips).await;
    let channel = h.dir.path().join("standard-wazuh-events-v5");
    let day = channel.join("2026/Dec");
    std::fs::create_dir_all(&day).unwrap();
    let file = |d: &str| day.join(format!("wazuh-standard-wazuh-events-v5-{d}.json"));
    let stable = channel.join("standard-wazuh-events-v5.json");
    let rotate_to = |next: &std::path::Path| {
        std::fs::write(next, b"").unwrap();
        let _ = std::fs::remove_file(&stable);
        std::fs::hard_link(next, &stable).unwrap();
    };
    rotate_to(&file("01"));
    h.cfg.input.alerts_file = stable.clone().into();
    let mut engine = EngineSim::start(&h.cfg.output.queue_socket).await.unwrap();

    let daemon = h.start();
    for (n, ip) in ips.iter().enumerate().take(3) {
        append(&file("01"), &stream_event(n, ip));
    }
    until_events(&engine, 3).await;
    daemon.shutdown(Duration::from_secs(5)).await;

    // While it is stopped: more events in the bookmarked file, two
    // rotations, and both rotated files compressed and deleted.
    append(&file("01"), &stream_event(3, &ips[3]));
    append(&file("01"), &stream_event(4, &ips[4]));
    rotate_to(&file("02"));
    append(&file("02"), &stream_event(5, &ips[5]));
    append(&file("02"), &stream_event(6, &ips[6]));
    rotate_to(&file("02-1"));
    append(&file("02-1"), &stream_event(7, &ips[7]));
    gzip_and_delete(&file("01"));
    gzip_and_delete(&file("02"));

    let daemon = h.start();
    append(&file("02-1"), &stream_event(8, &ips[8]));
    until_events(&engine, 9).await;
    all_handled(&daemon, 6, WAIT).await;
    daemon.shutdown(Duration::from_secs(5)).await;
    let counts = by_id(&engine);
    assert_eq!(counts.len(), 9, "every event: {counts:?}");
    assert!(counts.values().all(|&c| c == 1), "none twice: {counts:?}");
    engine.stop().await;
}

/// Each space has its own channel (`{space}-wazuh-events-v5`): the daemon
/// follows the custom space's beside the standard one, with a bookmark of
/// its own, so that a restart reads neither again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spaces_event_channel_is_followed_with_its_own_bookmark() {
    let ips: Vec<String> = (0..4).map(pool_ip).collect();
    let mut h = harness(&ips).await;
    let logs = h.dir.path().join("logs");
    let channel = |space: &str| {
        let name = format!("{space}-wazuh-events-v5");
        let dir = logs.join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.json"));
        std::fs::write(&path, b"").unwrap();
        path
    };
    let standard = channel("standard");
    let custom = channel("custom");
    h.cfg.input.alerts_file = standard.clone().into();
    let mut engine = EngineSim::start(&h.cfg.output.queue_socket).await.unwrap();

    let daemon = h.start();
    append(&standard, &stream_event(0, &ips[0]));
    append(&custom, &stream_event(1, &ips[1]));
    until_events(&engine, 2).await;
    daemon.shutdown(Duration::from_secs(5)).await;
    let state = &*h.cfg.input.state_dir;
    assert!(state.join("bookmark.json").exists());
    assert!(state.join("bookmark-custom-wazuh-events-v5.json").exists());

    append(&standard, &stream_event(2, &ips[2]));
    append(&custom, &stream_event(3, &ips[3]));
    let daemon = h.start();
    until_events(&engine, 4).await;
    // Only the two new lines were read after the restart.
    eventually("the two new lines read", WAIT, || {
        wazuh_misp::stats::Stats::get(&daemon.stats.lines_read) == 2
    })
    .await;
    daemon.shutdown(Duration::from_secs(5)).await;
    let counts = by_id(&engine);
    assert_eq!(counts.len(), 4, "{counts:?}");
    assert!(counts.values().all(|&c| c == 1), "{counts:?}");
    engine.stop().await;
}

/// What is already queued when the writer takes a worker's hand-off goes
/// out with it: ten hand-offs of one agent's events, queued before the
/// writer starts, cost one request, and every one is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_offs_already_queued_share_a_request() {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use wazuh_misp::output::{Datagrams, HttpWriter, Outgoing};
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("queue-http.sock");
    let mut engine = EngineSim::start(&sock).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let mut told = Vec::new();
    for n in 0..10 {
        let mut datagrams = Datagrams::default();
        assert!(datagrams.push(
            "1:[001] (web-01) 10.0.1.50->misp:",
            format!(r#"{{"integration":"misp","event_id":"e{n}"}}"#).as_bytes(),
        ));
        let (sent, rx) = tokio::sync::oneshot::channel();
        told.push(rx);
        tx.send(Outgoing {
            datagrams,
            dedup_keys: Vec::new(),
            ack: None,
            sent: Some(sent),
        })
        .await
        .unwrap();
    }
    drop(tx);
    let writer = HttpWriter::new(
        sock,
        Arc::new(wazuh_misp::stats::Stats::default()),
        None,
        Arc::new(AtomicBool::new(false)),
    );
    tokio::task::spawn_blocking(move || writer.run(rx))
        .await
        .unwrap();
    for rx in told {
        rx.await.expect("every hand-off is acknowledged");
    }
    assert_eq!(engine.events().len(), 10);
    assert_eq!(engine.requests(), 1, "{:?}", engine.batches());
    engine.stop().await;
}
