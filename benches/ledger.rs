//! The retro ledger at scale: the hot path's note, flushes into SQLite,
//! the memory it takes at a million values, and a hunt of new indicators.
//!
//! `cargo bench --bench ledger` prints one JSON line per measure:
//! - `note`: ns per observable noted on the hot path (values already
//!   holding their references, and new ones), and per reference built;
//! - `fill`: values written per second by the ledger thread's flushes;
//! - `rss`: bytes of RSS per value with the ledger at `BENCH_LEDGER_N`
//!   values (default 1 000 000, one reference each), and the file's size;
//! - `pending_peak`: the RSS of a full pending map (16 384 new values in
//!   one second, one reference each);
//! - `hunt`: seconds to hunt 10 000 new indicators (exact IPs, half of
//!   them in the ledger, domains with subdomains, /28 networks).

use serde_json::json;
use std::time::{Duration, Instant};
use wazuh_misp::alert::{Fields, Parser};
use wazuh_misp::ledger::hunt::Indicator;
use wazuh_misp::ledger::store::LedgerStore;
use wazuh_misp::ledger::{reference, Ledger, Pending, Seen};
use wazuh_misp::observable::{Direction, Observable, Occurrence};
use wazuh_misp::suppress::Suppressed;

mod common;
use common::rss_bytes;

const ALERT: &str = r#"{"timestamp":"2026-11-22T09:58:02.114+0000","rule":{"level":10,"description":"sshd: brute force trying to get access to the system. Non existent user.","id":"5712","firedtimes":3,"mail":false,"groups":["syslog","sshd","authentication_failures"]},"agent":{"id":"001","name":"web-01","ip":"10.0.1.50"},"manager":{"name":"wazuh-manager"},"id":"1763805482.1","cluster":{"name":"wazuh","node":"node01"},"full_log":"Nov 22 09:58:01 web-01 sshd[22108]: Invalid user test from 45.1.2.3 port 41220","decoder":{"parent":"sshd","name":"sshd"},"data":{"srcip":"45.1.2.3","srcport":"41220","srcuser":"test"},"location":"/var/log/auth.log"}"#;

/// The `i`-th value: 90 % IPs in 45.0.0.0/8 and 46.0.0.0/8, 10 % domains.
fn value(i: usize) -> Observable {
    if i % 10 == 9 {
        format!("h{}.d{}.example.com", i % 7, i / 70)
            .parse()
            .unwrap()
    } else {
        Observable::Ip(std::net::Ipv4Addr::from(0x2d00_0000 + i as u32).into())
    }
}

fn occurrence(o: Observable) -> Occurrence {
    Occurrence {
        observable: o,
        direction: Direction::Source,
        field_path: "data.srcip".into(),
        raw_context: "45.1.2.3".into(),
    }
}

fn main() {
    let n: usize = std::env::var("BENCH_LEDGER_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let mut parser = Parser::default();

    let one_ref = parser
        .with(ALERT, |a| reference(&Fields::of(a), &occurrence(value(1))))
        .unwrap();
    let batch = |from: usize, to: usize| -> Pending {
        (from..to)
            .map(|i| {
                (
                    value(i),
                    Seen {
                        first: 1_795_000_000,
                        last: 1_795_000_000 + (i % 3600) as i64,
                        count: 1,
                        refs: vec![one_ref.clone()],
                    },
                )
            })
            .collect()
    };

    // First, while the heap is fresh: the peak of the pending map: a second with 262 144 new values.
    let before = rss_bytes();
    let peak = batch(0, 16_384);
    let pending_peak = rss_bytes().saturating_sub(before);
    drop(peak);
    println!(
        "{}",
        json!({"measure": "pending_peak", "values": 16_384, "rss_mb": (pending_peak as f64 / 1048576.0).round(),
               "bytes_per_value": pending_peak / 16_384})
    );

    // The hot path: 1000 values noted again and again (their references
    // are taken in the first second only), then new values.
    let ledger = Ledger::new(3, 1 << 30, Default::default());
    let hot: Vec<Occurrence> = (0..1000).map(|i| occurrence(value(i))).collect();
    let rounds = 2000;
    let mut started = Instant::now();
    parser
        .with(ALERT, |a| {
            let f = Fields::of(a);
            // Every value holds its references before the clock starts.
            for _ in 0..3 {
                for h in &hot {
                    ledger.note(&f, std::slice::from_ref(h));
                }
            }
            started = Instant::now();
            for r in 0..rounds {
                ledger.note(&f, std::slice::from_ref(&hot[r % 1000]));
                for h in hot.iter().skip(r % 7).step_by(97) {
                    ledger.note(&f, std::slice::from_ref(h));
                }
            }
        })
        .unwrap();
    let noted = rounds
        + (0..rounds)
            .map(|r| (1000 - r % 7).div_ceil(97))
            .sum::<usize>();
    let repeat_ns = started.elapsed().as_nanos() as f64 / noted as f64;
    let fresh: Vec<Occurrence> = (0..100_000)
        .map(|i| occurrence(value(2_000_000 + i)))
        .collect();
    let started = Instant::now();
    parser
        .with(ALERT, |a| {
            let f = Fields::of(a);
            for o in &fresh {
                ledger.note(&f, std::slice::from_ref(o));
            }
        })
        .unwrap();
    let fresh_ns = started.elapsed().as_nanos() as f64 / fresh.len() as f64;
    let started = Instant::now();
    parser
        .with(ALERT, |a| {
            let f = Fields::of(a);
            for o in fresh.iter().take(10_000) {
                std::hint::black_box(reference(&f, o));
            }
        })
        .unwrap();
    let reference_ns = started.elapsed().as_nanos() as f64 / 10_000.0;
    println!(
        "{}",
        json!({"measure": "note", "repeat_ns": repeat_ns.round(), "new_value_ns": fresh_ns.round(),
               "reference_ns": reference_ns.round()})
    );
    drop(ledger);

    let dir = tempfile::tempdir().unwrap();
    let base = rss_bytes();
    let mut store = LedgerStore::open(dir.path()).unwrap();
    let started = Instant::now();
    let step = 50_000;
    let mut at = 0;
    let mut flush = Duration::ZERO;
    while at < n {
        let p = batch(at, (at + step).min(n));
        let t = Instant::now();
        store
            .apply(p, 3, 1_795_003_600, 7 * 86400, 2_000_000)
            .unwrap();
        flush += t.elapsed();
        at += step;
    }
    let rss = rss_bytes().saturating_sub(base);
    let file: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!(
        "{}",
        json!({"measure": "fill", "values": n, "secs": started.elapsed().as_secs_f64(),
               "values_per_sec": (n as f64 / flush.as_secs_f64()).round()})
    );
    println!(
        "{}",
        json!({"measure": "rss", "values": store.values().unwrap(), "rss_bytes_per_value": rss as f64 / n as f64,
               "file_bytes_per_value": file as f64 / n as f64})
    );

    // 10 000 new indicators: 8 000 exact IPs (every other one in the
    // ledger), 1 500 domains (subdomains in the ledger), 500 /28 networks.
    let mut indicators = Vec::new();
    for k in 0..8000 {
        let i = k * 113 % n;
        let ip = if k % 2 == 0 && i % 10 != 9 {
            value(i).to_string()
        } else {
            format!("47.{}.{}.{}", k % 256, (k / 256) % 256, 1 + k % 200)
        };
        indicators.push(("ip-dst", ip));
    }
    for k in 0..1500 {
        indicators.push((
            "domain",
            format!("d{}.example.com", k * 37 % (n / 70).max(1)),
        ));
    }
    for k in 0..500 {
        let i = (k * 7919 % n) as u32 & !0xf;
        indicators.push((
            "ip-src",
            format!("{}/28", std::net::Ipv4Addr::from(0x2d00_0000 + i)),
        ));
    }
    let indicators: Vec<Indicator> = indicators
        .into_iter()
        .enumerate()
        .map(|(k, (kind, value))| Indicator {
            server: "misp".into(),
            uuid: format!("5a1e0000-0000-4000-8000-{k:012x}"),
            kind: kind.into(),
            value,
            timestamp: 1_795_003_600,
        })
        .collect();
    let started = Instant::now();
    let (found, more) = wazuh_misp::runtime::feedback::candidates(
        &store,
        &indicators,
        true,
        &Suppressed::default(),
        usize::MAX,
    )
    .unwrap();
    println!(
        "{}",
        json!({"measure": "hunt", "indicators": indicators.len(), "ledger_values": n,
               "retro_events": found.len() + more, "secs": started.elapsed().as_secs_f64()})
    );
}
