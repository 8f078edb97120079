//! The real binary: config errors, `enrich`, `demo`.

mod common;

use common::*;
use serde_json::Value;
use std::process::{Command, Stdio};
use wazuh_misp::sim::SimData;

const BIN: &str = env!("CARGO_BIN_EXE_wazuh-misp");

fn write_config(dir: &std::path::Path, body: &str) -> std::path::PathBuf {
    let p = dir.join("wazuh-misp.toml");
    std::fs::write(&p, body).unwrap();
    p
}

#[test]
fn a_bad_config_is_refused_and_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[misp]\nurl = \"https://m.example\"\napi_key = \"k\"\n[input]\nmax_line_byte = 5\n", "input.max_line_byte"),
        ("[misp]\nurl = \"https://m.example\"\napi_key = \"k\"\ntimeout_secs = \"ten\"\n", "misp.timeout_secs"),
        ("[misp]\nurl = \"m.example\"\napi_key = \"k\"\n", "misp.url"),
        ("[misp]\nurl = \"https://m.example\"\n", "misp.api_key"),
        ("[misp]\nurl = \"https://m.example\"\napi_key = \"k\"\n[filter]\nexclude_ips = [\"10.0.0.0/40\"]\n", "filter.exclude_ips"),
    ];
    for (body, key) in cases {
        let cfg = write_config(dir.path(), body);
        for sub in ["run", "check-config"] {
            let out = Command::new(BIN)
                .args([sub, "--config"])
                .arg(&cfg)
                .stdin(Stdio::null())
                .output()
                .unwrap();
            assert!(!out.status.success(), "{sub} accepted {body:?}");
            let text = String::from_utf8_lossy(&out.stderr).to_string()
                + &String::from_utf8_lossy(&out.stdout);
            assert!(text.contains(key), "{sub}: {key} not named in: {text}");
        }
    }
}

/// `enrich` at trace level against an unreachable MISP given by the
/// `[misp]` lines: it retries, logging at every level. Its stderr up to the
/// first retry.
fn logs_against_unreachable_misp(dir: &std::path::Path, misp: &str) -> String {
    let cfg = write_config(
        dir,
        &format!("[misp]\n{misp}\ntimeout_secs = 1\n[log]\nlevel = \"trace\"\n"),
    );
    let alerts = dir.join("alerts.jsonl");
    std::fs::write(&alerts, format!("{}\n", sshd_alert(1, "185.1.2.3", "001"))).unwrap();
    let child = Command::new(BIN)
        .args(["enrich", "--config"])
        .arg(&cfg)
        .arg(&alerts)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let text = stderr_until(child, "MISP lookup failed");
    assert!(
        text.contains("MISP lookup failed"),
        "expected retry logs, got: {text}"
    );
    text
}

#[test]
fn the_api_key_never_appears_in_debug_logs() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "SUPERSECRETKEY0123456789abcdef";
    let text = logs_against_unreachable_misp(
        dir.path(),
        &format!("url = \"http://127.0.0.1:9\"\napi_key = \"{secret}\""),
    );
    assert!(!text.contains(secret), "the key leaked into the output");
}

/// Reads `child`'s stderr until a line contains `until`, then stops it.
fn stderr_until(mut child: std::process::Child, until: &str) -> String {
    use std::io::BufRead;
    let mut text = String::new();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    for line in stderr.lines() {
        let line = line.unwrap();
        text.push_str(&line);
        text.push('\n');
        if line.contains(until) {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    text
}

#[test]
fn a_url_password_never_appears_and_piped_logs_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let password = "Pa55w0rdInTheUrl";
    let misp = format!("url = \"http://admin:{password}@127.0.0.1:9\"\napi_key = \"k3y-k3y-k3y\"");
    let text = logs_against_unreachable_misp(dir.path(), &misp);
    let cfg = dir.path().join("wazuh-misp.toml");
    assert!(
        !text.contains(password),
        "the url's password leaked: {text}"
    );
    assert!(
        !text.contains('\x1b'),
        "colour codes in piped logs: {text:?}"
    );

    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&cfg)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("127.0.0.1:9"),
        "check-config names the server: {text}"
    );
    assert!(
        !text.contains(password),
        "check-config printed the url's password: {text}"
    );

    let bad = write_config(
        dir.path(),
        &format!("[misp]\nurl = \"ftp://admin:{password}@misp\"\napi_key = \"k\"\n"),
    );
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&bad)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(text.contains("misp.url"), "{text}");
    assert!(
        !text.contains(password),
        "a config error printed the url's password: {text}"
    );
}

/// `wazuh-misp enrich --config CFG -` with `input` on its stdin, run off
/// the test's runtime (the simulator it talks to runs on it).
async fn enrich_stdin(cfg: std::path::PathBuf, input: String) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = Command::new(BIN)
            .args(["enrich", "--config"])
            .arg(&cfg)
            .arg("-")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrich_prints_one_json_line_per_event() {
    let ips: Vec<String> = (0..3).map(pool_ip).collect();
    let data = SimData::from_events([event_with_ips(7, &ips)]);
    let h = Harness::new(&data).await;
    let cfg = write_config(
        h.dir.path(),
        &format!(
            "[misp]\nurl = \"{}\"\napi_key = \"{KEY}\"\n[log]\nlevel = \"warn\"\n",
            h.sim.url()
        ),
    );
    let input = format!(
        "{}\nnot json\n{}\n{}\n",
        sshd_alert(1, &ips[0], "001"),
        sshd_alert(2, "93.184.216.34", "001"),
        sshd_alert(3, &ips[2], "000")
    );
    let out = enrich_stdin(cfg, input).await;
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["detected_ip"]["value"], ips[0]);
    assert_eq!(lines[1]["detected_ip"]["value"], ips[2]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("offset=") || stderr.contains("offset"),
        "bad line logged with its offset: {stderr}"
    );
}

/// The labelled alerts of every source (tests/fixtures/observables)
/// through `enrich`, against a MISP that knows every observable they
/// carry: one event per (alert, kind, value), each with its field, and a
/// MISP `domain` attribute matching its subdomains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrich_matches_every_kind_against_a_misp_that_knows_them() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/observables");
    let alerts = std::fs::read_to_string(dir.join("alerts.json")).unwrap();
    let labels: std::collections::BTreeMap<String, Vec<(String, String, String)>> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("labels.json")).unwrap()).unwrap();
    let mut known: Vec<(String, String)> = Vec::new();
    for (kind, value, _) in labels.values().flatten() {
        let misp_type = match kind.as_str() {
            "ip" => "ip-dst",
            other => other,
        };
        let a = (misp_type.to_owned(), value.clone());
        if !known.contains(&a) {
            known.push(a);
        }
    }
    known.push(("domain".into(), "evil-cdn.com".into()));
    let data = SimData::from_events([event_with(9, &known)]);
    let h = Harness::new(&data).await;
    let cfg = write_config(
        h.dir.path(),
        &format!(
            "[misp]\nurl = \"{}\"\napi_key = \"{KEY}\"\nenforce_warninglist = false\n[filter]\nmin_level = 0\n[log]\nlevel = \"warn\"\n",
            h.sim.url()
        ),
    );
    let out = enrich_stdin(cfg, alerts.clone()).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut got: Vec<(String, String, String)> = Vec::new();
    let mut by_parent = 0;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let ev: Value = serde_json::from_str(line).unwrap();
        let (kind, detected) = match ev.get("detected_ip") {
            Some(d) => ("ip".to_owned(), d),
            None => (
                ev["detected_observable"]["type"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                &ev["detected_observable"],
            ),
        };
        if detected["matched_domain"] == "evil-cdn.com" {
            by_parent += 1;
        }
        got.push((
            ev["wazuh_alert_timestamp"].as_str().unwrap().to_owned(),
            kind,
            detected["value"].as_str().unwrap().to_owned(),
        ));
    }
    let timestamps: std::collections::HashMap<String, String> = alerts
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["id"].as_str().unwrap().to_owned(),
                v["timestamp"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut want: Vec<(String, String, String)> = labels
        .iter()
        .flat_map(|(id, found)| {
            found
                .iter()
                .map(|(kind, value, _)| (timestamps[id].clone(), kind.clone(), value.clone()))
        })
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    // update., payload. and dl.evil-cdn.com (the last in two alerts).
    assert_eq!(by_parent, 4, "subdomains of the MISP domain evil-cdn.com");
}

/// `wazuh-misp enrich … | head -1`: once stdout is closed, no more MISP
/// lookups are made for the rest of the input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrich_stops_when_its_output_is_closed() {
    const N: usize = 300;
    let ips: Vec<String> = (0..N).map(pool_ip).collect();
    let data = SimData::from_events([event_with_ips(7, &ips)]);
    let h = Harness::new(&data).await;
    let cfg = write_config(
        h.dir.path(),
        &format!(
            "[misp]\nurl = \"{}\"\napi_key = \"{KEY}\"\n[log]\nlevel = \"warn\"\n",
            h.sim.url()
        ),
    );
    let input = h.dir.path().join("many.jsonl");
    let lines: String = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| format!("{}\n", sshd_alert(i, ip, "001")))
        .collect();
    std::fs::write(&input, lines).unwrap();
    let status = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut child = Command::new(BIN)
            .args(["enrich", "--config"])
            .arg(&cfg)
            .arg(&input)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut first = String::new();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        stdout.read_line(&mut first).unwrap();
        assert!(first.contains("detected_ip"), "{first}");
        drop(stdout);
        child.wait().unwrap()
    })
    .await
    .unwrap();
    assert!(status.success(), "{status}");
    assert!(
        h.sim.requests() < N as u64 / 2,
        "{} lookups after the reader went away",
        h.sim.requests()
    );
}

#[test]
fn demo_runs_offline_and_prints_a_summary() {
    let out = Command::new(BIN)
        .arg("demo")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("events sent:        13"), "{text}");
    assert!(
        text.contains("retro-hunt:         domain sync.relay-7f3a.top from alert 92650 of 2026-11-20T16:41:07.532+0000 matched under relay-7f3a.top"),
        "the demo shows a retro-hunt: {text}"
    );
    // One per attribute of the twelve live events (one folded into
    // another's), and the retro event's new indicator.
    assert!(text.contains("sightings to MISP:  14 sent"), "{text}");
    assert!(text.contains("\"integration\": \"misp\""));
    assert!(
        text.contains("\"matched_network\": \"162.247.74.0/24\""),
        "the demo shows a network match"
    );
    assert!(
        text.contains("matches by kind:    domain 2 (2 by parent domain), ip 7 (1 by network), md5 1, sha256 1, url 1"),
        "the demo shows a match of every kind: {text}"
    );
}

/// integratord's calling convention: `<alert-file> <api-key> <hook-url>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integratord_drop_in_enriches_one_alert_and_exits() {
    let ips: Vec<String> = (0..1).map(pool_ip).collect();
    let h = Harness::new(&SimData::from_events([event_with_ips(3, &ips)])).await;
    let q = QueueSocket::bind(&h.socket, Received::default());
    // The config names the socket and state dir; url and key come from integratord.
    let cfg = write_config(
        h.dir.path(),
        &format!(
            "[input]\nstate_dir = {:?}\n[output]\nqueue_socket = {:?}\n",
            h.cfg.input.state_dir, h.socket
        ),
    );
    let alert = h.dir.path().join("alert-1.json");
    std::fs::write(&alert, sshd_alert(1, &ips[0], "001")).unwrap();
    let url = h.sim.url();
    let run = move |alert: std::path::PathBuf| {
        let (cfg, url) = (cfg.clone(), url.clone());
        tokio::task::spawn_blocking(move || {
            Command::new(BIN)
                .args(["integratord", "--config"])
                .arg(&cfg)
                .arg(&alert)
                .args([KEY, &url, "extra-arg"])
                .stdin(Stdio::null())
                .output()
                .unwrap()
        })
    };
    let out = run(alert.clone()).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    q.received
        .wait_for(1, std::time::Duration::from_secs(10))
        .await;
    let (loc, ev) = q.received.events().remove(0);
    assert_eq!(loc, "[001] (host-001) 10.0.1.50->misp");
    assert_eq!(ev["detected_ip"]["value"], ips[0]);
    // The same alert again is within the dedup window kept in state_dir.
    let out = run(alert).await.unwrap();
    assert!(out.status.success());
    q.drain().await;
    assert_eq!(q.received.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_reports_each_broken_item() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("misp.key");
    std::fs::write(&key, "k").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"").unwrap();
    let cfg = write_config(
        dir.path(),
        &format!(
            "[input]\nalerts_file = {:?}\nstate_dir = {:?}\n[misp]\nurl = \"http://127.0.0.1:9\"\napi_key_file = {:?}\ntimeout_secs = 1\n[output]\nqueue_socket = {:?}\n",
            dir.path().join("missing/alerts.json"),
            blocker.join("state"),
            key,
            dir.path().join("no-socket"),
        ),
    );
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["check-config", "--config"])
            .arg(&cfg)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    for item in [
        "is not world-readable",
        "answers an authenticated restSearch",
        "is readable",
        "exists",
        "is writable",
    ] {
        let line = text
            .lines()
            .find(|l| l.contains(item))
            .unwrap_or_else(|| panic!("no line for {item}:\n{text}"));
        assert!(line.starts_with('✗'), "{item} should fail:\n{text}");
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("✓ MISP API key is present")),
        "{text}"
    );
    assert_eq!(text.matches("    fix: ").count(), 5, "{text}");
}

/// `check-config` in mirror mode reports the first sync page; `mirror
/// status` and `lookup` read the mirror on disk while the daemon runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_status_lookup_and_check_config_read_the_mirror() {
    let ips: Vec<String> = (0..3).map(pool_ip).collect();
    let net = event_with_networks(8, &["185.220.101.0/24"]);
    let h = Harness::new(&SimData::from_events([event_with_ips(7, &ips), net])).await;
    let cfg = write_config(
        h.dir.path(),
        &format!(
            "[input]\nalerts_file = {:?}\nstate_dir = {:?}\n[misp]\nurl = \"{}\"\napi_key = \"{KEY}\"\nsync_page_size = 2\n[output]\nqueue_socket = {:?}\n",
            h.alerts,
            h.cfg.input.state_dir,
            h.sim.url(),
            h.socket,
        ),
    );
    let run = |args: Vec<String>| {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(BIN)
                .args(&args)
                .arg("--config")
                .arg(&cfg)
                .stdin(Stdio::null())
                .output()
                .unwrap()
        })
    };
    let out = run(vec!["check-config".into()]).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.lines().any(
            |l| l.starts_with("✓ mirror sync: the first page holds 2 attributes")
                && l.contains("more pages follow")
        ),
        "{text}"
    );
    let daemon = tokio::task::spawn_blocking({
        let cfg = cfg.clone();
        move || {
            Command::new(BIN)
                .args(["run", "--config"])
                .arg(&cfg)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        }
    })
    .await
    .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _daemon = Kill(daemon);
    let mut status = serde_json::Value::Null;
    eventually(
        "the first sync, seen by mirror status",
        std::time::Duration::from_secs(30),
        || {
            let out = std::process::Command::new(BIN)
                .args(["mirror", "status", "--config"])
                .arg(&cfg)
                .output()
                .unwrap();
            status = serde_json::from_slice(&out.stdout).unwrap_or_default();
            status["servers"][0]["complete"] == true
        },
    )
    .await;
    let server = &status["servers"][0];
    assert_eq!(server["name"], "misp");
    assert_eq!(server["attributes"], 4, "{status}");
    assert_eq!(server["networks"], 1, "{status}");
    assert!(server["last_error"].is_null(), "{status}");
    let out = run(vec![
        "lookup".into(),
        "185.220.101.9".into(),
        ips[0].clone(),
        "93.184.216.34".into(),
    ])
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["mirror"][0]["network"], "185.220.101.0/24");
    assert_eq!(lines[0]["events"][0]["matched_network"], "185.220.101.0/24");
    assert_eq!(
        lines[0]["events"][0]["misp_data"]["attributes"][0]["value"],
        "185.220.101.0/24"
    );
    assert_eq!(lines[1]["mirror"][0]["exact"], true);
    assert_eq!(
        lines[1]["events"][0]["misp_data"]["summary"]["total_attributes"],
        1
    );
    assert_eq!(lines[2]["mirror"][0]["exact"], false);
    assert_eq!(lines[2]["events"], serde_json::json!([]));
    assert!(
        !h.sim
            .request_log()
            .iter()
            .flatten()
            .any(|v| v == "93.184.216.34"),
        "a miss is never asked about"
    );
}
