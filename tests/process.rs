//! The real binary as a process: kill -9 and restart, SIGHUP, SIGTERM.

mod common;

use common::process::{Daemon, BIN};
use common::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wazuh_misp::sim::SimData;

const WAIT: Duration = Duration::from_secs(60);

fn write_config(h: &Harness, extra: &str) -> PathBuf {
    let path = h.dir.path().join("wazuh-misp.toml");
    let text = format!(
        "[input]\nalerts_file = {:?}\nstate_dir = {:?}\nstart_position = \"beginning\"\n\
         [misp]\nurl = {:?}\napi_key = {:?}\nbatch_window_ms = 2\n\
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

fn count_by_id(q: &QueueSocket) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for (_, e) in q.received.events() {
        *m.entry(e["event_id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_twice_mid_stream_loses_nothing() {
    const N: usize = 3000;
    let ips: Vec<String> = (0..N).map(pool_ip).collect();
    let h = Harness::new(&SimData::from_events([event_with_ips(1, &ips)])).await;
    h.sim.set_latency(Duration::from_millis(5));
    let q = QueueSocket::bind(&h.socket, Received::default());
    let config = write_config(&h, "");
    let alerts = h.alerts.clone();
    let writer = std::thread::spawn(move || {
        for (i, ip) in ips.iter().enumerate() {
            append(&alerts, &format!("{}\n", sshd_alert(i, ip, "001")));
        }
    });
    let d = Daemon::spawn(&config);
    q.received.wait_for(N / 4, WAIT).await;
    d.kill9();
    let d = Daemon::spawn(&config);
    q.received.wait_for(N / 2, WAIT).await;
    d.kill9();
    writer.join().unwrap();
    let d = Daemon::spawn(&config);
    eventually("every alert enriched at least once", WAIT, || {
        count_by_id(&q).len() == N
    })
    .await;
    drop(d);
    q.drain().await;
    let counts = count_by_id(&q);
    assert_eq!(counts.len(), N, "nothing lost");
    let duplicates: usize = counts.values().map(|c| c - 1).sum();
    // In flight at a kill: both channels (64 lines together, in batches)
    // and the batches the workers hold (~200 lines), plus what was sent
    // since the last bookmark save: 200 ms, up to ~600 alerts at the rate
    // this test reaches on a fast machine.
    assert!(
        duplicates <= 2 * 800,
        "{duplicates} duplicates after two kills"
    );
    eprintln!("duplicates after two kill -9: {duplicates}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_valid_config_and_keeps_the_old_one_when_invalid() {
    let ips: Vec<String> = (0..6).map(pool_ip).collect();
    let h = Harness::new(&SimData::from_events([event_with_ips(1, &ips)])).await;
    let q = QueueSocket::bind(&h.socket, Received::default());
    let config = write_config(&h, "[filter]\nmin_level = 6\n");
    let d = Daemon::spawn(&config);
    let level = |i: usize, l: u32| {
        sshd_alert(i, &ips[i], "001").replace("\"level\":10", &format!("\"level\":{l}"))
    };
    h.append(&format!("{}\n", level(0, 7)));
    q.received.wait_for(1, WAIT).await;

    write_config(&h, "[filter]\nmin_level = 9\n");
    d.signal(libc::SIGHUP);
    d.wait_log("reload applied", 1).await;
    assert!(
        d.log().contains("filter.min_level"),
        "changed key named:\n{}",
        d.log()
    );
    h.append(&format!("{}\n{}\n", level(1, 7), level(2, 10)));
    q.received.wait_for(2, WAIT).await;

    std::fs::write(&config, "[filter]\nmin_levle = 3\n").unwrap();
    d.signal(libc::SIGHUP);
    d.wait_log("reload refused", 1).await;
    assert!(
        d.log().contains("filter.min_levle"),
        "bad key named:\n{}",
        d.log()
    );
    // Still running, still with min_level 9.
    h.append(&format!("{}\n{}\n", level(3, 7), level(4, 12)));
    q.received.wait_for(3, WAIT).await;
    drop(d);
    q.drain().await;
    let got: Vec<String> = q
        .received
        .events()
        .iter()
        .map(|(_, e)| e["detected_ip"]["value"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(got, [ips[0].clone(), ips[2].clone(), ips[4].clone()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_and_exits_zero_with_a_bookmark() {
    let ips: Vec<String> = (0..10).map(pool_ip).collect();
    let h = Harness::new(&SimData::from_events([event_with_ips(1, &ips)])).await;
    let q = QueueSocket::bind(&h.socket, Received::default());
    let config = write_config(&h, "");
    let mut d = Daemon::spawn(&config);
    for (i, ip) in ips.iter().enumerate() {
        h.append(&format!("{}\n", sshd_alert(i, ip, "001")));
    }
    q.received.wait_for(10, WAIT).await;
    d.signal(libc::SIGTERM);
    let status = d.exit_status(Duration::from_secs(12)).await;
    assert!(status.success(), "exit status {status}");
    let bookmark: serde_json::Value = serde_json::from_slice(
        &std::fs::read(h.cfg.input.state_dir.join("bookmark.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        bookmark["offset"].as_u64().unwrap(),
        std::fs::metadata(&h.alerts).unwrap().len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_serves_the_counters() {
    let ips: Vec<String> = (0..2).map(pool_ip).collect();
    let h = Harness::new(&SimData::from_events([event_with_ips(1, &ips)])).await;
    let q = QueueSocket::bind(&h.socket, Received::default());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = write_config(&h, &format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    let d = Daemon::spawn(&config);
    h.append(&format!(
        "{}\n{}\n",
        sshd_alert(1, &ips[0], "001"),
        sshd_alert(2, "10.0.0.1", "001")
    ));
    q.received.wait_for(1, WAIT).await;
    let url = format!("http://127.0.0.1:{port}/metrics");
    let mut body = String::new();
    // The publisher runs every second; wait for it to show the send.
    for _ in 0..100 {
        if let Ok(r) = reqwest::get(&url).await {
            body = r.text().await.unwrap_or_default();
            if body.contains("wazuh_misp_events_sent_total 1")
                && body.contains("wazuh_misp_mirror_attributes")
            {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for needle in [
        "wazuh_misp_events_sent_total 1",
        "wazuh_misp_alerts_read_total 2",
        "wazuh_misp_misp_requests_total",
        "wazuh_misp_misp_request_duration_seconds_bucket",
        "wazuh_misp_lag_bytes 0",
        // Mirror mode (the default): the mirror and requests by purpose.
        "wazuh_misp_mirror_attributes{server=\"misp\"} 2",
        "wazuh_misp_mirror_networks{server=\"misp\"} 0",
        "wazuh_misp_mirror_stale_seconds{server=\"misp\"}",
        "wazuh_misp_mirror_sync_duration_seconds",
        "wazuh_misp_misp_requests_by_purpose_total{purpose=\"sync\"}",
        "wazuh_misp_misp_requests_by_purpose_total{purpose=\"detail\"}",
    ] {
        assert!(body.contains(needle), "{needle} missing from:\n{body}");
    }
    drop(d);
}

/// A daemon whose component `fault` panics on its first unit of work
/// (`WAZUH_MISP_FAULT`, debug builds): it exits non-zero, logs which
/// component died, and pings the watchdog no more once it has begun to
/// stop, so systemd restarts it from the bookmark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_component_means_a_non_zero_exit_and_no_more_watchdog_pings() {
    for component in ["writer", "tailer", "worker"] {
        let ips: Vec<String> = (0..1).map(pool_ip).collect();
        let h = Harness::new(&SimData::from_events([event_with_ips(1, &ips)])).await;
        let _q = QueueSocket::bind(&h.socket, Received::default());
        let notify_path = h.dir.path().join("notify");
        let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
        // Read as systemd does, all the time: a notify socket nobody reads
        // fills up, and the daemon's next notification would block.
        let messages = Arc::new(Mutex::new(Vec::<String>::new()));
        let reader = {
            let messages = messages.clone();
            notify
                .set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let stop = done.clone();
            let thread = std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Ok(n) = notify.recv(&mut buf) {
                        let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                        messages.lock().unwrap().push(m);
                    }
                }
            });
            (done, thread)
        };
        let config = write_config(&h, "");
        let child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(&config)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("WATCHDOG_USEC", "100000")
            .env("WAZUH_MISP_FAULT", component)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut d = Daemon::from_child(child);
        // Running and pinging before the fault.
        eventually("a watchdog ping", WAIT, || {
            messages
                .lock()
                .unwrap()
                .iter()
                .any(|m| m.contains("WATCHDOG=1"))
        })
        .await;
        h.append(&format!("{}\n", sshd_alert(1, &ips[0], "001")));
        let status = d.exit_status(WAIT).await;
        assert!(!status.success(), "{component}: exit status {status}");
        // Whatever the daemon sent before it exited is read by now or soon.
        eventually("STOPPING=1", WAIT, || {
            messages
                .lock()
                .unwrap()
                .iter()
                .any(|m| m.contains("STOPPING=1"))
        })
        .await;
        reader.0.store(true, std::sync::atomic::Ordering::Relaxed);
        reader.1.join().unwrap();
        let messages = messages.lock().unwrap().clone();
        let stopping = messages
            .iter()
            .position(|m| m.contains("STOPPING=1"))
            .unwrap_or_else(|| panic!("{component}: no STOPPING=1 in {messages:?}"));
        assert!(
            !messages[stopping..]
                .iter()
                .any(|m| m.contains("WATCHDOG=1")),
            "{component}: watchdog pinged after the death: {messages:?}"
        );
        // The log names the component that died.
        d.wait_log(&format!("the {component} panicked: injected fault"), 1)
            .await;
    }
}

/// `log.level` and `log.stats_interval_secs` are applied by the process
/// itself on SIGHUP: debug lines and stats lines start to appear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_the_log_level_and_the_stats_interval() {
    let ips: Vec<String> = (0..2).map(pool_ip).collect();
    let h = Harness::new(&SimData::from_events([event_with_ips(1, &ips)])).await;
    let q = QueueSocket::bind(&h.socket, Received::default());
    let config = write_config(&h, "[log]\nlevel = \"info\"\nstats_interval_secs = 0\n");
    let d = Daemon::spawn(&config);
    h.append(&format!("{}\n", sshd_alert(0, &ips[0], "001")));
    q.received.wait_for(1, WAIT).await;
    assert!(!d.log().contains("DEBUG"), "{}", d.log());
    write_config(&h, "[log]\nlevel = \"debug\"\nstats_interval_secs = 1\n");
    d.signal(libc::SIGHUP);
    d.wait_log("reload applied", 1).await;
    h.append(&format!("{}\n", sshd_alert(1, &ips[1], "001")));
    q.received.wait_for(2, WAIT).await;
    d.wait_log("DEBUG", 1).await;
    d.wait_log(" stats ", 1).await;
}

/// A config for mirror mode: small sync pages, a sync every second.
fn write_mirror_config(h: &Harness) -> PathBuf {
    let path = h.dir.path().join("wazuh-misp.toml");
    let text = format!(
        "[input]\nalerts_file = {:?}\nstate_dir = {:?}\nstart_position = \"beginning\"\n\
         [misp]\nmode = \"mirror\"\nurl = {:?}\napi_key = {:?}\nsync_page_size = 100\n\
         sync_interval_secs = 1\ntimeout_secs = 30\n\
         [output]\nqueue_socket = {:?}\n",
        h.alerts,
        h.cfg.input.state_dir,
        h.sim.url(),
        KEY,
        h.socket
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn mirror_status(config: &Path) -> serde_json::Value {
    let out = Command::new(BIN)
        .args(["mirror", "status", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_syncs_leaves_a_consistent_mirror_and_no_second_full_download() {
    let ips: Vec<String> = (0..1500).map(pool_ip).collect();
    let net = event_with_networks(2, &["185.220.101.0/24"]);
    let h = Harness::new(&SimData::from_events([event_with_ips(1, &ips), net])).await;
    let config = write_mirror_config(&h);
    let held = h.sim.attribute_count() as i64;

    // Killed in the middle of the first full sync (15 pages, 100 ms each).
    h.sim.set_latency(Duration::from_millis(100));
    let d = Daemon::spawn(&config);
    eventually("a few pages synced", WAIT, || h.sim.requests() >= 5).await;
    d.kill9();
    let status = mirror_status(&config);
    assert_eq!(status["servers"][0]["complete"], false, "{status}");
    assert_eq!(status["servers"][0]["attributes"], 0, "{status}");

    // Restarted: the first full sync is done again, whole.
    h.sim.set_latency(Duration::ZERO);
    let d = Daemon::spawn(&config);
    d.wait_log("mirror full sync done", 1).await;
    let status = mirror_status(&config);
    let server = &status["servers"][0];
    assert_eq!(server["attributes"], held, "{status}");
    assert_eq!(server["networks"], 1, "{status}");
    assert!(server["last_sync"].is_string() && server["stale_secs"].is_number());

    // Killed in the middle of an incremental sync of 300 changes.
    for i in 0..300 {
        h.sim.add_attribute(
            0,
            serde_json::json!({"type": "ip-dst", "value": pool_ip(5000 + i)}),
        );
    }
    let before = h.sim.requests();
    h.sim.set_latency(Duration::from_millis(300));
    eventually("incremental pages answered", WAIT, || {
        h.sim.requests() >= before + 2
    })
    .await;
    d.kill9();

    // Restarted: loaded from the store, then incremental syncs only.
    h.sim.set_latency(Duration::ZERO);
    let asked_before = h.sim.request_bodies().len();
    let d = Daemon::spawn(&config);
    d.wait_log("mirror loaded from its store", 1).await;
    eventually("the 300 changes synced", WAIT, || {
        mirror_status(&config)["servers"][0]["attributes"] == held + 300
    })
    .await;
    drop(d);
    let after: Vec<serde_json::Value> = h.sim.request_bodies()[asked_before..].to_vec();
    assert!(!after.is_empty());
    assert!(
        after
            .iter()
            .all(|b| b.get("timestamp").is_some() || b.get("publish_timestamp").is_some()),
        "no full download after the restart: {after:?}"
    );
}
