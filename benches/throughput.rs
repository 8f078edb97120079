//! End-to-end throughput: the real pipeline on a real file, the MISP
//! simulator over HTTP with a set latency, and a real receiving socket.
//!
//! `cargo bench --bench throughput [-- SCENARIO...]` prints one JSON line per
//! scenario: `{scenario, alerts, secs, alerts_per_sec, offered_per_sec,
//! misp_requests, misp_values, misp_values_per_sec, events_sent, p50_ms,
//! p99_ms, p999_ms, max_ms, peak_rss_mb}`. Latency is per alert, from its
//! line's append returning to its datagram being received.
//!
//! Scenarios: `hot` (offered at `BENCH_HOT_RATE`, default 105 000 alerts/s:
//! latency below saturation), `hot_max` (the same mix as fast as it can be
//! appended: the ceiling), `hot_mixed` (as `hot_max`, with a third each of
//! sshd IP alerts, Sysmon DNS queries and syscheck changes: IPs, domains
//! and hashes), `cold`, `noip`, `burst` (query mode, as before the
//! mirror), `mirror_hot` (mirror mode, the default: `hot`'s traffic, with
//! the retro ledger recording every observable) and `mirror_cold` (mirror
//! mode: `cold`'s traffic with 1 % of the IPs known), `wazuh5_mirror_hot`
//! (`mirror_hot` on Wazuh 5: engine events in, NDJSON batches over HTTP
//! out, to a receiver standing in for `queue-http.sock`). `BENCH_SCALE=0.1` runs a
//! tenth of the alerts (for profiling); `BENCH_TIMELINE=1` prints the worst
//! latency per 20 ms of append time (where a stall happened);
//! `BENCH_WORKERS=N` sets `pipeline.workers`, `BENCH_THREADS=N` the
//! runtime's threads (default: as the daemon sizes its own).

use serde_json::{json, Value};
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wazuh_misp::config::{Config, MispMode};
use wazuh_misp::lookup::MispClient;
use wazuh_misp::runtime::Daemon;
use wazuh_misp::sim::{pool_ip, MispSim, SimData};
use wazuh_misp::stats::Stats;

mod common;
use common::{alert, dns_alert, event, peak_rss_mb, syscheck_alert, KEY};

fn reset_peak_rss() {
    // Linux: writing 5 to clear_refs resets VmHWM to the current RSS.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

struct Scenario {
    name: &'static str,
    alerts: usize,
    lines: Box<dyn Fn(usize) -> String + Send + Sync>,
    expected_events: usize,
    /// The values MISP knows (IPs, domains, sha256s).
    known: Vec<String>,
    misp_latency: Duration,
    /// Lines appended before the clock starts (to warm the cache).
    warmup: Vec<String>,
    /// Append as fast as possible in big writes, instead of small ones.
    burst: bool,
    /// Alerts per second the writer holds to (0: as fast as it can).
    rate: u64,
    /// `misp.mode = "mirror"` (synced before the clock starts), else query.
    mirror: bool,
    /// Wazuh 5: the lines are engine events (WCS), and the events go in
    /// NDJSON batches over HTTP to a receiver standing in for the
    /// engine's `queue-http.sock`.
    wazuh5: bool,
}

/// An engine event (WCS, as the file output writes it) from sshd naming
/// `ip`, of integration `bench-<integration>` (the dedup key on 5 is the
/// integration, so it varies as the rule id does on 4). The sequence
/// number rides in the location, which the enriched event copies.
fn wcs_event(seq: usize, integration: usize, ip: &str) -> String {
    format!(
        concat!(
            r#"{{"@timestamp":"2026-11-22T09:58:02.114Z","wazuh":{{"agent":{{"id":"001","name":"web-01","host":{{"ip":"10.0.1.50"}}}},"#,
            r#""protocol":{{"queue":49,"location":"/var/log/bench_seq/{seq}"}},"integration":{{"name":"bench-{integration}","category":"system-activity","decoders":["decoder/sshd/0"]}},"#,
            r#""event":{{"id":"ev-{seq}"}},"cluster":{{"name":"wazuh","node":"manager-1"}},"space":{{"name":"standard"}}}},"#,
            r#""event":{{"original":"Nov 22 09:58:01 web-01 sshd[22108]: Invalid user test from {ip} port 41220","category":["authentication"],"outcome":"failure","kind":"event"}},"#,
            r#""source":{{"ip":"{ip}","port":41220}},"user":{{"name":"test"}},"process":{{"name":"sshd","pid":22108}},"host":{{"name":"web-01"}}}}"#
        ),
        seq = seq,
        integration = integration,
        ip = ip
    )
}

/// Stands in for the engine's ingestion socket as cheaply as it can: reads
/// each `POST /events/enriched`, answers 200 on the kept-alive connection,
/// and notes when each event (`\nE ` line) arrived by the sequence number
/// in its location.
fn http_receiver(
    path: &std::path::Path,
    clock: Instant,
    received: Arc<AtomicU64>,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<(usize, u64)>> {
    use std::io::Read;
    let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::Builder::new()
        .name("bench-recv".into())
        .spawn(move || {
            let mut arrivals = Vec::new();
            let finder = memchr::memmem::Finder::new(b"/bench_seq/");
            let events = memchr::memmem::Finder::new(b"\nE ");
            while !stop.load(Ordering::Relaxed) {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                };
                conn.set_nonblocking(false).unwrap();
                conn.set_read_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
                let mut chunk = vec![0u8; 1 << 16];
                'conn: while !stop.load(Ordering::Relaxed) {
                    // One request: headers, then Content-Length bytes.
                    let (head, len) = loop {
                        if let Some(end) = memchr::memmem::find(&buf, b"\r\n\r\n") {
                            let text = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                            let len = text
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            break (end + 4, len);
                        }
                        match conn.read(&mut chunk) {
                            Ok(0) => break 'conn,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            Err(_) if !stop.load(Ordering::Relaxed) => continue,
                            Err(_) => break 'conn,
                        }
                    };
                    while buf.len() < head + len {
                        match conn.read(&mut chunk) {
                            Ok(0) => break 'conn,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            Err(_) if !stop.load(Ordering::Relaxed) => continue,
                            Err(_) => break 'conn,
                        }
                    }
                    let now = clock.elapsed().as_nanos() as u64;
                    let body = &buf[head..head + len];
                    let n = events.find_iter(body).count();
                    received.fetch_add(n as u64, Ordering::Relaxed);
                    if measuring.load(Ordering::Relaxed) {
                        for at in finder.find_iter(body) {
                            let seq = body[at + 11..]
                                .iter()
                                .take_while(|b| b.is_ascii_digit())
                                .fold(0usize, |acc, b| acc * 10 + usize::from(b - b'0'));
                            arrivals.push((seq, now));
                        }
                    }
                    buf.drain(..head + len);
                    if conn
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                        .is_err()
                    {
                        break;
                    }
                }
            }
            arrivals
        })
        .unwrap()
}

/// Receives up to `slots` datagrams per system call (recvmmsg): the
/// receiver stands in for analysisd, and a call per datagram would make the
/// harness, not the daemon, the bigger user of the two cores.
struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    lens: Vec<usize>,
}

impl RecvBatch {
    fn new(slots: usize, size: usize) -> Self {
        RecvBatch {
            bufs: vec![vec![0; size]; slots],
            lens: vec![0; slots],
        }
    }

    /// Waits for at least one datagram (up to the socket's read timeout).
    fn recv(&mut self, socket: &UnixDatagram) -> std::io::Result<usize> {
        use std::os::fd::AsRawFd;
        let mut iov: Vec<libc::iovec> = self
            .bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = iov
            .iter_mut()
            .map(|v| {
                // SAFETY: mmsghdr is plain data; all-zero is a valid empty header.
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = v;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        // SAFETY: every header points at one live iovec, each describing a
        // buffer in `self.bufs`, all of which outlive the call.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                msgs.as_mut_ptr(),
                msgs.len() as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        for (len, m) in self.lens.iter_mut().zip(&msgs) {
            *len = m.msg_len as usize;
        }
        Ok(n as usize)
    }

    fn datagrams(&self, n: usize) -> impl Iterator<Item = &[u8]> {
        self.bufs
            .iter()
            .zip(&self.lens)
            .take(n)
            .map(|(b, &l)| &b[..l])
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn run(s: Scenario) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let alerts_path = dir.path().join("alerts.json");
    std::fs::write(&alerts_path, b"").unwrap();
    let socket_path = dir
        .path()
        .join(if s.wazuh5 { "queue-http.sock" } else { "queue" });
    let sim = MispSim::start(&SimData::from_events([event(&s.known)]), KEY)
        .await
        .unwrap();
    sim.set_latency(s.misp_latency);

    let appended: Arc<Vec<AtomicU64>> = Arc::new(
        (0..s.alerts + s.warmup.len())
            .map(|_| AtomicU64::new(0))
            .collect(),
    );
    let clock = Instant::now();
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // Cleared when the clock starts, so warm-up events are not counted.
    let measuring = Arc::new(AtomicBool::new(false));
    let recv_thread = if s.wazuh5 {
        http_receiver(
            &socket_path,
            clock,
            received.clone(),
            measuring.clone(),
            stop.clone(),
        )
    } else {
        // Receiver: records when each sequence number arrived.
        let receiver = UnixDatagram::bind(&socket_path).unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let (received, stop, measuring) = (received.clone(), stop.clone(), measuring.clone());
        let expected = s.expected_events;
        std::thread::Builder::new()
            .name("bench-recv".into())
            .spawn(move || {
                // (sequence number, arrival) kept in a local list, matched with
                // append times after the run: no lock per datagram, and an
                // alert delivered before its writer noted the append time still
                // counts. The receiver stands in for analysisd and should cost
                // the machine as little as it can.
                let mut arrivals: Vec<(usize, u64)> = Vec::with_capacity(expected);
                let mut batch = RecvBatch::new(32, 70_000);
                let finder = memchr::memmem::Finder::new(b"\"bench_seq\":");
                while !stop.load(Ordering::Relaxed) {
                    let Ok(n) = batch.recv(&receiver) else {
                        continue;
                    };
                    let now = clock.elapsed().as_nanos() as u64;
                    received.fetch_add(n as u64, Ordering::Relaxed);
                    if !measuring.load(Ordering::Relaxed) {
                        continue;
                    }
                    for d in batch.datagrams(n) {
                        if let Some(at) = finder.find(d) {
                            let seq = d[at + 12..]
                                .iter()
                                .take_while(|b| b.is_ascii_digit())
                                .fold(0usize, |acc, b| acc * 10 + usize::from(b - b'0'));
                            arrivals.push((seq, now));
                        }
                    }
                }
                arrivals
            })
            .unwrap()
    };

    let mut cfg = Config::in_dir(dir.path(), &sim.url(), KEY);
    cfg.misp.mode = if s.mirror {
        MispMode::Mirror
    } else {
        MispMode::Query
    }
    .into();
    cfg.misp.max_concurrent_requests = (16).into();
    if s.wazuh5 {
        cfg.wazuh.version = wazuh_misp::config::WazuhVersion::V5.into();
        cfg.output.queue_socket = socket_path.clone().into();
    }
    if let Some(w) = std::env::var("BENCH_WORKERS")
        .ok()
        .and_then(|w| w.parse::<usize>().ok())
    {
        cfg.pipeline.workers = (w).into();
    }
    let client = MispClient::new(&cfg.misp, &cfg.resolve_api_key().unwrap()).unwrap();
    let daemon = Daemon::start(cfg, client).unwrap();
    if let Some(m) = daemon.engine.lookup.mirror() {
        while m.servers().iter().any(|s| s.index().is_none()) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&alerts_path)
        .unwrap();
    if !s.warmup.is_empty() {
        let text: String = s.warmup.iter().map(|l| format!("{l}\n")).collect();
        f.write_all(text.as_bytes()).unwrap();
        let len = std::fs::metadata(&alerts_path).unwrap().len();
        while daemon.checkpoints.committed().map_or(0, |b| b.offset) < len {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let received_before = received.load(Ordering::Relaxed);
    let sent_before = Stats::get(&daemon.stats.events_sent);
    let (req0, val0) = (sim.requests(), sim.values_asked());
    let sync0 = Stats::get(&daemon.stats.sync_requests);
    measuring.store(true, Ordering::Relaxed);
    reset_peak_rss();

    let started = Instant::now();
    let base = s.warmup.len();
    let writer = {
        let appended = appended.clone();
        let lines = s.lines;
        let (n, burst, rate) = (s.alerts, s.burst, s.rate);
        std::thread::Builder::new()
            .name("bench-append".into())
            .spawn(move || {
                // Bursts go out in 4 MiB writes; otherwise 64 lines a write,
                // roughly what analysisd's stdio buffer flushes.
                let chunk = if burst { 4096 } else { 64 };
                let mut buf = String::new();
                let mut i = 0;
                let paced_start = Instant::now();
                while i < n {
                    if rate > 0 {
                        // Hold the rate: sleep until this chunk is due.
                        let due = paced_start + Duration::from_secs_f64(i as f64 / rate as f64);
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                    }
                    buf.clear();
                    let end = (i + chunk).min(n);
                    for j in i..end {
                        buf.push_str(&lines(j));
                        buf.push('\n');
                    }
                    f.write_all(buf.as_bytes()).unwrap();
                    // Appended once the write returns: a write stalled by page
                    // cache writeback is the disk's time, not the pipeline's.
                    let now = clock.elapsed().as_nanos() as u64;
                    for j in i..end {
                        appended[base + j].store(now, Ordering::Relaxed);
                    }
                    i = end;
                }
            })
            .unwrap()
    };
    writer.join().unwrap();
    let total = std::fs::metadata(&alerts_path).unwrap().len();
    let give_up = Instant::now() + Duration::from_secs(120);
    while daemon.checkpoints.committed().map_or(0, |b| b.offset) < total
        || received.load(Ordering::Relaxed) - received_before < s.expected_events as u64
    {
        if Instant::now() > give_up {
            panic!(
                "{}: {} of {} events after 120 s (handled {} of {total} bytes, {:?})",
                s.name,
                received.load(Ordering::Relaxed) - received_before,
                s.expected_events,
                daemon.checkpoints.committed().map_or(0, |b| b.offset),
                daemon.stats.skipped()
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let peak = peak_rss_mb();
    let events_sent = Stats::get(&daemon.stats.events_sent) - sent_before;
    let (misp_requests, misp_values) = (sim.requests() - req0, sim.values_asked() - val0);
    let sync_requests = Stats::get(&daemon.stats.sync_requests) - sync0;
    daemon.shutdown(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    let timed: Vec<(u64, f64)> = recv_thread
        .join()
        .unwrap()
        .into_iter()
        .filter_map(|(seq, at)| {
            let t0 = appended.get(seq)?.load(Ordering::Relaxed);
            (t0 > 0).then(|| (t0, at.saturating_sub(t0) as f64 / 1e6))
        })
        .collect();
    if std::env::var_os("BENCH_TIMELINE").is_some() {
        // Worst latency per 20 ms of append time: where a stall happened.
        let first = timed.iter().map(|t| t.0).min().unwrap_or(0);
        let mut worst = std::collections::BTreeMap::<u64, f64>::new();
        for &(t0, l) in &timed {
            let w = worst.entry((t0 - first) / 20_000_000).or_default();
            *w = w.max(l);
        }
        for (bucket, l) in worst.iter().filter(|(_, l)| **l > 5.0) {
            eprintln!("  at {:>5} ms: worst {l:.1} ms", bucket * 20);
        }
    }
    let mut lat: Vec<f64> = timed.into_iter().map(|t| t.1).collect();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let round = |x: f64| (x * 1000.0).round() / 1000.0;
    json!({
        "scenario": s.name,
        "alerts": s.alerts,
        "secs": round(secs),
        "alerts_per_sec": (s.alerts as f64 / secs).round(),
        "offered_per_sec": s.rate,
        "misp_requests": misp_requests,
        "sync_requests": sync_requests,
        "misp_values": misp_values,
        "misp_values_per_sec": (misp_values as f64 / secs).round(),
        "events_sent": events_sent,
        "p50_ms": round(percentile(&lat, 0.50)),
        "p99_ms": round(percentile(&lat, 0.99)),
        "p999_ms": round(percentile(&lat, 0.999)),
        "max_ms": round(lat.last().copied().unwrap_or(0.0)),
        "peak_rss_mb": round(peak),
    })
}

/// `BENCH_SCALE=0.1` runs a tenth of the alerts (for profiling under callgrind).
fn scaled(n: usize) -> usize {
    let scale: f64 = std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    ((n as f64) * scale).max(1.0) as usize
}

fn scenarios() -> Vec<Scenario> {
    let hot_ips: Vec<String> = (0..1000).map(pool_ip).collect();
    let cold_ips: Vec<String> = (0..20_000).map(pool_ip).collect();
    let mut out = Vec::new();
    // Every IP cached; (rule, ip) pairs unique so every alert makes an event.
    // Offered at a set rate above the target: latency means something only
    // below saturation (flat out, every alert waits behind the backlog).
    let hot_rate = std::env::var("BENCH_HOT_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(105_000);
    // The same mix appended as fast as the writer can (`hot_max`) is the
    // ceiling; its latency is the backlog's, not the pipeline's. Rule ids
    // differ between the two, so hot_max's keys are not hot's duplicates.
    // `mirror_hot` is hot's traffic in mirror mode (the default), where
    // the retro ledger records every observable on the hot path.
    for (name, first_rule, rate, mirror) in [
        ("hot", 1, hot_rate, false),
        ("hot_max", 201, 0, false),
        ("mirror_hot", 601, hot_rate, true),
    ] {
        let ips = hot_ips.clone();
        out.push(Scenario {
            name,
            alerts: scaled(200_000),
            lines: Box::new(move |i| {
                alert(1000 + i, first_rule + (i / 1000) % 200, &ips[i % 1000], 10)
            }),
            expected_events: scaled(200_000),
            known: hot_ips.clone(),
            misp_latency: Duration::ZERO,
            warmup: (0..1000).map(|i| alert(i, 0, &hot_ips[i], 10)).collect(),
            burst: false,
            rate,
            mirror,
            wazuh5: false,
        });
    }
    // Wazuh 5: mirror_hot's traffic as engine events, sent in NDJSON
    // batches over HTTP.
    let ips = hot_ips.clone();
    out.push(Scenario {
        name: "wazuh5_mirror_hot",
        alerts: scaled(200_000),
        lines: Box::new(move |i| wcs_event(1000 + i, 801 + (i / 1000) % 200, &ips[i % 1000])),
        expected_events: scaled(200_000),
        known: hot_ips.clone(),
        misp_latency: Duration::ZERO,
        warmup: (0..1000).map(|i| wcs_event(i, 800, &hot_ips[i])).collect(),
        burst: false,
        rate: hot_rate,
        mirror: true,
        wazuh5: true,
    });
    // A third each of IPs, domains and hashes, every one known and cached.
    let domains: Vec<String> = (0..1000)
        .map(|i| format!("cdn{i}.bench-evil.com"))
        .collect();
    let hashes: Vec<String> = (0..1000u64)
        .map(|i| {
            format!(
                "{:032x}{:032x}",
                i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
                i
            )
        })
        .collect();
    let known: Vec<String> = hot_ips
        .iter()
        .chain(&domains)
        .chain(&hashes)
        .cloned()
        .collect();
    let mixed = {
        let (ips, domains, hashes) = (hot_ips.clone(), domains.clone(), hashes.clone());
        move |seq: usize, rule: usize, i: usize| {
            let at = (i / 3) % 1000;
            match i % 3 {
                0 => alert(seq, rule, &ips[at], 10),
                1 => dns_alert(seq, rule, &domains[at]),
                _ => syscheck_alert(seq, rule, &hashes[at]),
            }
        }
    };
    let warm = mixed.clone();
    out.push(Scenario {
        name: "hot_mixed",
        alerts: scaled(200_000),
        lines: Box::new(move |i| mixed(3000 + i, 401 + (i / 3000) % 200, i)),
        expected_events: scaled(200_000),
        known,
        misp_latency: Duration::ZERO,
        warmup: (0..3000).map(|i| warm(i, 0, i)).collect(),
        burst: false,
        rate: 0,
        mirror: false,
        wazuh5: false,
    });
    // 20 000 distinct IPs, 10 % known to MISP, 20 ms per request.
    let ips = cold_ips.clone();
    out.push(Scenario {
        name: "cold",
        alerts: scaled(50_000),
        lines: Box::new(move |i| alert(i, 0, &ips[(i * 7919) % 20_000], 10)),
        expected_events: 0,
        known: cold_ips.iter().step_by(10).cloned().collect(),
        misp_latency: Duration::from_millis(20),
        warmup: Vec::new(),
        burst: false,
        rate: 0,
        mirror: false,
        wazuh5: false,
    });
    // Mirror mode: 20 000 distinct IPs, 1 % known to MISP, 20 ms per
    // request; every lookup local, MISP asked only for hits' details.
    let ips = cold_ips.clone();
    out.push(Scenario {
        name: "mirror_cold",
        alerts: scaled(50_000),
        lines: Box::new(move |i| alert(i, 0, &ips[(i * 7919) % 20_000], 10)),
        expected_events: 0,
        known: cold_ips.iter().step_by(100).cloned().collect(),
        misp_latency: Duration::from_millis(20),
        warmup: Vec::new(),
        burst: false,
        rate: 0,
        mirror: true,
        wazuh5: false,
    });
    // No public IP, or filtered by level.
    out.push(Scenario {
        name: "noip",
        alerts: scaled(200_000),
        lines: Box::new(|i| {
            if i % 2 == 0 {
                alert(
                    i,
                    0,
                    &format!("10.{}.{}.{}", i % 250, (i / 250) % 250, 1 + i % 200),
                    10,
                )
            } else {
                alert(i, 0, "185.100.0.1", 3)
            }
        }),
        expected_events: 0,
        known: Vec::new(),
        misp_latency: Duration::ZERO,
        warmup: Vec::new(),
        burst: false,
        rate: 0,
        mirror: false,
        wazuh5: false,
    });
    // A million lines as fast as they can be written; (rule, ip) unique, so
    // the dedup table ends with a million live entries.
    let ips = hot_ips.clone();
    out.push(Scenario {
        name: "burst",
        alerts: scaled(1_000_000),
        lines: Box::new(move |i| alert(1000 + i, 1 + i / 1000, &ips[i % 1000], 10)),
        expected_events: scaled(1_000_000),
        known: hot_ips.clone(),
        misp_latency: Duration::ZERO,
        warmup: (0..1000).map(|i| alert(i, 0, &hot_ips[i], 10)).collect(),
        burst: true,
        rate: 0,
        mirror: false,
        wazuh5: false,
    });
    out
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument picks scenarios.
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    // Sized as the daemon sizes its own.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(
            std::env::var("BENCH_THREADS")
                .ok()
                .and_then(|t| t.parse().ok())
                .unwrap_or_else(wazuh_misp::config::runtime_threads),
        )
        .enable_all()
        .build()
        .unwrap();
    for s in scenarios() {
        if !wanted.is_empty() && !wanted.iter().any(|w| w == s.name) {
            continue;
        }
        // Write back what is dirty (the build that just linked this bench,
        // the previous scenario's files) now, so the kernel's flusher
        // threads do not take a core in the middle of a measurement.
        // SAFETY: sync(2) takes no arguments and cannot fail.
        unsafe { libc::sync() };
        let line = rt.block_on(run(s));
        println!("{line}");
    }
}
