//! Shared test harness: a real alerts file, a real datagram socket that
//! parses what arrives the way analysisd does, and the MISP simulator over
//! real HTTP.

#![allow(dead_code)]

pub mod misp;
pub mod process;

use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UnixDatagram;
use tokio::sync::Notify;
use wazuh_misp::config::Config;
use wazuh_misp::output::frame;
pub use wazuh_misp::sim::pool_ip;
use wazuh_misp::sim::{MispSim, SimData};

pub const KEY: &str = "testkey0000000000000000000000000000000000";
/// Message the test sends itself to mark "everything before has been read".
const SENTINEL: &[u8] = b"--sentinel--";

/// A MISP event (real export shape) listing `ips` as ip-src attributes.
pub fn event_with_ips(id: usize, ips: &[String]) -> Value {
    let attrs: Vec<Value> = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            json!({"id": format!("{}", id * 100_000 + i), "type": "ip-src", "category": "Network activity", "to_ids": true,
                   "uuid": format!("00000000-0000-4000-8000-{:012}", id * 100_000 + i), "event_id": id.to_string(),
                   "distribution": "5", "timestamp": "1763164800", "comment": "", "sharing_group_id": "0",
                   "deleted": false, "disable_correlation": false, "object_id": "0", "object_relation": null,
                   "first_seen": null, "last_seen": null, "value": ip})
        })
        .collect();
    json!({"Event": {"id": id.to_string(), "orgc_id": "1", "org_id": "1", "date": "2026-11-15", "threat_level_id": "2",
        "info": format!("test event {id}"), "published": true, "uuid": format!("10000000-0000-4000-8000-{id:012}"),
        "analysis": "2", "timestamp": "1763164800", "distribution": "3", "sharing_group_id": "0",
        "Orgc": {"id": "1", "name": "TEST-ORG", "uuid": "5c9a1c17-9550-483e-809a-28eab44af9f7"},
        "Tag": [{"id": "4", "name": "tlp:green", "colour": "#339900", "exportable": true}],
        "Attribute": attrs, "Object": []}})
}

/// A MISP event with one attribute per `(type, value)`.
#[allow(dead_code)]
pub fn event_with(id: usize, attributes: &[(String, String)]) -> Value {
    let values: Vec<String> = attributes.iter().map(|(_, v)| v.clone()).collect();
    let mut e = event_with_ips(id, &values);
    for (a, (kind, _)) in e["Event"]["Attribute"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .zip(attributes)
    {
        a["type"] = kind.as_str().into();
        if !kind.starts_with("ip-") {
            a["category"] = "Payload delivery".into();
        }
    }
    e
}

/// A MISP event whose attributes are networks (ip-dst), as MISP stores
/// a Tor exit range.
pub fn event_with_networks(id: usize, nets: &[&str]) -> Value {
    let mut e = event_with_ips(id, &nets.iter().map(|n| n.to_string()).collect::<Vec<_>>());
    for a in e["Event"]["Attribute"].as_array_mut().unwrap() {
        a["type"] = "ip-dst".into();
    }
    e["Event"]["info"] = "Tor exit nodes".into();
    e
}

/// An sshd alert (corpus shape) from `ip`, for agent `agent` ("000" = manager).
pub fn sshd_alert(n: usize, ip: &str, agent: &str) -> String {
    let agent_obj = if agent == "000" {
        json!({"id": "000", "name": "wazuh-manager"})
    } else {
        json!({"id": agent, "name": format!("host-{agent}"), "ip": "10.0.1.50"})
    };
    json!({"timestamp": "2026-11-22T09:58:02.114+0000",
        "rule": {"level": 10, "description": "sshd: brute force trying to get access to the system. Non existent user.", "id": "5712",
                 "firedtimes": n, "mail": false, "groups": ["syslog", "sshd", "authentication_failures"]},
        "agent": agent_obj, "manager": {"name": "wazuh-manager"}, "id": format!("1763805482.{n}"),
        "cluster": {"name": "wazuh", "node": "node01"},
        "full_log": format!("Nov 22 09:58:01 web-01 sshd[22108]: Invalid user test from {ip} port 41220"),
        "decoder": {"parent": "sshd", "name": "sshd"}, "data": {"srcip": ip, "srcport": "41220", "srcuser": "test"},
        "location": "/var/log/auth.log"})
    .to_string()
}

/// What arrived on the queue socket.
#[derive(Clone, Default)]
pub struct Received {
    inner: Arc<(Mutex<Vec<Vec<u8>>>, Notify)>,
}

impl Received {
    pub fn datagrams(&self) -> Vec<Vec<u8>> {
        self.inner.0.lock().unwrap().clone()
    }

    pub fn len(&self) -> usize {
        self.inner.0.lock().unwrap().len()
    }

    /// `(location, event)` for each datagram, parsed as analysisd does.
    pub fn events(&self) -> Vec<(String, Value)> {
        self.datagrams()
            .iter()
            .map(|d| {
                assert!(
                    d.len() <= frame::MAX_DATAGRAM,
                    "datagram of {} bytes",
                    d.len()
                );
                let (q, loc, msg) = frame::parse(d).expect("datagram parses");
                assert_eq!(q, '1');
                assert!(!msg.contains(&b'\n'), "payload is one line");
                (loc, serde_json::from_slice(msg).expect("payload is JSON"))
            })
            .collect()
    }

    /// Waits until at least `n` datagrams arrived.
    pub async fn wait_for(&self, n: usize, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.inner.1.notified();
            if self.len() >= n {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("timed out waiting for {n} datagrams; got {}", self.len());
            }
        }
    }
}

/// A bound queue socket with a reader task.
pub struct QueueSocket {
    pub path: PathBuf,
    pub received: Received,
    task: tokio::task::JoinHandle<()>,
    done: Arc<Notify>,
}

impl QueueSocket {
    pub fn bind(path: &Path, received: Received) -> QueueSocket {
        let _ = std::fs::remove_file(path);
        let sock = UnixDatagram::bind(path).expect("bind queue socket");
        let r = received.clone();
        let done = Arc::new(Notify::new());
        let done2 = done.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 70_000];
            while let Ok(n) = sock.recv(&mut buf).await {
                if &buf[..n] == SENTINEL {
                    done2.notify_one();
                    continue;
                }
                r.inner.0.lock().unwrap().push(buf[..n].to_vec());
                r.inner.1.notify_waiters();
            }
        });
        QueueSocket {
            path: path.to_owned(),
            received,
            task,
            done,
        }
    }

    /// Returns once every datagram sent before this call has been read.
    pub async fn drain(&self) {
        let s = std::os::unix::net::UnixDatagram::unbound().unwrap();
        let notified = self.done.notified();
        s.send_to(SENTINEL, &self.path).unwrap();
        tokio::time::timeout(Duration::from_secs(10), notified)
            .await
            .expect("sentinel came back");
    }

    /// Unbinds: the socket file disappears, as when analysisd stops.
    pub fn close(self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub alerts: PathBuf,
    pub socket: PathBuf,
    pub sim: MispSim,
    pub cfg: Config,
}

impl Harness {
    pub async fn new(data: &SimData) -> Harness {
        // RUST_LOG=debug shows the daemon's logs when a test misbehaves.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().unwrap();
        let sim = MispSim::start(data, KEY).await.unwrap();
        let mut cfg = Config::in_dir(dir.path(), &sim.url(), KEY);
        let (alerts, socket) = (
            cfg.input.alerts_file.to_path_buf(),
            cfg.output.queue_socket.to_path_buf(),
        );
        std::fs::write(&alerts, b"").unwrap();
        cfg.misp.batch_window_ms = 2;
        // The tests of query mode's own behaviour (batching, caching,
        // isolation) ask MISP per value; mirror tests set it back.
        cfg.misp.mode = wazuh_misp::config::MispMode::Query.into();
        cfg.pipeline.workers = (2).into();
        cfg.pipeline.channel_capacity = (64).into();
        Harness {
            dir,
            alerts,
            socket,
            sim,
            cfg,
        }
    }

    pub fn append(&self, text: &str) {
        append(&self.alerts, text);
    }

    /// The daemon, in process, on this harness's file, socket and MISP.
    pub fn start(&self) -> wazuh_misp::runtime::Daemon {
        let client = wazuh_misp::lookup::MispClient::new(
            &self.cfg.misp,
            &self.cfg.resolve_api_key().unwrap(),
        )
        .unwrap();
        wazuh_misp::runtime::Daemon::start(self.cfg.clone(), client).unwrap()
    }
}

/// A MISP data set knowing `n` pool IPs, and those IPs.
pub fn pool(n: usize) -> (SimData, Vec<String>) {
    let ips: Vec<String> = (0..n).map(pool_ip).collect();
    (SimData::from_events([event_with_ips(1, &ips)]), ips)
}

pub fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// Polls `cond` every 10 ms until it holds; for state that has no event to
/// await (counters inside the daemon).
pub async fn eventually(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !cond() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the daemon has read `lines` lines and has none in flight.
pub async fn all_handled(daemon: &wazuh_misp::runtime::Daemon, lines: u64, timeout: Duration) {
    eventually("all lines handled", timeout, || {
        daemon.checkpoints.in_flight() == 0
            && wazuh_misp::stats::Stats::get(&daemon.stats.lines_read) == lines
    })
    .await;
}

/// The path to `../shared/corpus`, if present.
pub fn corpus() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus");
    if p.is_dir() {
        Some(p)
    } else {
        eprintln!("SKIPPED: {} not found; corpus tests need ../shared beside the checkout (CI always has it)", p.display());
        None
    }
}

/// Waits for the first sync of every mirror server.
pub async fn ready(d: &wazuh_misp::runtime::Daemon) {
    let mirror = d.engine.lookup.mirror().expect("mirror mode").clone();
    eventually("the first sync", Duration::from_secs(60), || {
        mirror.servers().iter().all(|s| s.index().is_some())
    })
    .await;
}

/// Whether `value` hits on any server's mirror now.
pub fn hit(d: &wazuh_misp::runtime::Daemon, value: &str) -> bool {
    let m = d.engine.lookup.mirror().unwrap();
    let o: wazuh_misp::observable::Observable = value.parse().unwrap();
    m.servers()
        .iter()
        .filter_map(|s| s.index().map(|ix| m.matches_on(s, &ix, &o)))
        .any(|x| x.is_hit())
}
