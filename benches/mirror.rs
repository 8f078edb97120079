//! The mirror at scale, against the MISP simulator over real HTTP and the
//! real SQLite store: first sync, lookups, an incremental sync, and a
//! restart (in a child process, so that its memory is its own).
//!
//! `cargo bench --bench mirror` prints one JSON line per measure:
//! - `first_sync`: `{attributes, networks, pages, secs, peak_rss_mb}`
//! - `lookup`: ns per lookup for exact hits, network hits and misses
//! - `incremental_sync`: `{changes, secs}`
//! - `restart`: `{attributes, ready_secs, rss_bytes_per_indicator}`
//! - `partial_rows`: `{attributes, us_per_value}`, the store's rows for a
//!   value, as an event built during a MISP outage reads them
//! - `one_value`: `{attributes, first_sync_secs, full_sync_secs,
//!   incremental_secs}`, `BENCH_MIRROR_SAME` attributes (default 100 000)
//!   sharing one value, as feeds repeat a popular IP: a first sync, a full
//!   sync telling new from known, and an incremental of 1 000 edits
//!
//! `BENCH_MIRROR_N` indicators (default 1 000 000, a tenth of them
//! networks); `BENCH_MIRROR_PAGE` attributes per page (default 10 000).

use serde_json::{json, Value};
use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use wazuh_misp::config::{Config, MispMode};
use wazuh_misp::lookup::mirror::store::Store;
use wazuh_misp::lookup::mirror::sync::{Kind, SyncSettings, Syncer};
use wazuh_misp::lookup::mirror::Mirror;
use wazuh_misp::lookup::{Lookup, MispClient};
use wazuh_misp::observable::Observable;
use wazuh_misp::sim::{pool_ip, MispSim, SimData};
use wazuh_misp::stats::Stats;

mod common;
use common::{peak_rss_mb, rss_bytes, KEY};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `k`-th network indicator: /24s mostly, some /16, /20 and /28, in
/// 60.0.0.0-61.255.255.255 and 2a0b::/16.
fn network(k: usize) -> String {
    if k % 10 == 9 {
        return format!("2a0b:{:x}:{:x}::/48", (k / 65536) % 65536, k % 65536);
    }
    let len = [24, 24, 24, 16, 20, 28, 24, 24, 24][k % 9];
    let a = 60 + (k / 65536) % 2;
    format!(
        "{a}.{}.{}.{}/{len}",
        (k / 256) % 256,
        k % 256,
        if len == 28 { 16 } else { 0 }
    )
}

/// An address inside network `k`.
fn inside(k: usize) -> String {
    let n: ipnet::IpNet = network(k).parse().unwrap();
    match n {
        ipnet::IpNet::V4(n) => std::net::Ipv4Addr::from(n.network().to_bits() + 3).to_string(),
        ipnet::IpNet::V6(n) => std::net::Ipv6Addr::from(n.network().to_bits() + 3).to_string(),
    }
}

const T0: i64 = 1_764_000_000;

fn data(n: usize) -> SimData {
    let networks = n / 10;
    let per_event = 10_000;
    let events = (0..n.div_ceil(per_event)).map(|e| {
        let attrs: Vec<Value> = (e * per_event..((e + 1) * per_event).min(n))
            .map(|i| {
                let (kind, value) = if i < networks {
                    ("ip-dst", network(i))
                } else {
                    ("ip-src", pool_ip(i))
                };
                // Timestamps spread over the last n seconds, as a real
                // MISP's are: an incremental sync's overlap then holds a
                // few hundred, not everything.
                json!({"id": (i + 1).to_string(), "type": kind, "category": "Network activity", "to_ids": true,
                       "uuid": format!("00000000-0000-4000-8000-{i:012}"), "timestamp": (T0 - (n - i) as i64).to_string(),
                       "value": value})
            })
            .collect();
        json!({"Event": {"id": (e + 1).to_string(), "info": format!("bench event {e}"), "date": "2026-11-15",
            "threat_level_id": "2", "analysis": "2", "published": true, "uuid": format!("10000000-0000-4000-8000-{e:012}"),
            "Orgc": {"name": "BENCH"}, "Tag": [{"name": "tlp:green"}], "Attribute": attrs}})
    });
    SimData::from_events(events)
}

fn config(state_dir: &std::path::Path, url: &str) -> Config {
    let mut cfg = Config::in_dir(state_dir, url, KEY);
    cfg.input.state_dir = state_dir.to_path_buf().into();
    cfg.misp.mode = MispMode::Mirror.into();
    cfg.misp.sync_page_size = (env("BENCH_MIRROR_PAGE", 10_000) as u32).into();
    cfg.misp.max_indicators = 10_000_000.into();
    cfg
}

fn mirror_for(cfg: &Config) -> (Mirror, Syncer) {
    let stats = Arc::new(Stats::default());
    let client = MispClient::new(&cfg.misp, &cfg.resolve_api_key().unwrap()).unwrap();
    let lookup = Lookup::start(client, &cfg.misp, stats.clone());
    let store = Store::open(&cfg.input.state_dir).unwrap();
    let mirror = Mirror::new(
        &cfg.misp,
        vec![(
            "misp".into(),
            cfg.misp.clone(),
            lookup,
            Arc::new(Mutex::new(store)),
        )],
    );
    let syncer = Syncer {
        mirror: mirror.clone(),
        server: mirror.servers()[0].clone(),
        settings: SyncSettings::from_config(&cfg.misp),
        stats,
        hunts: None,
    };
    (mirror, syncer)
}

/// The child: loads the persisted mirror in `dir` and reports how long
/// until it is ready and the memory it took.
async fn restart(dir: &str, url: &str, n: usize) {
    // The same url as the run that synced: a mirror of another is rebuilt.
    let cfg = config(std::path::Path::new(dir), url);
    let before = rss_bytes();
    let started = Instant::now();
    let (mirror, syncer) = mirror_for(&cfg);
    syncer.load().await.unwrap();
    let secs = started.elapsed().as_secs_f64();
    let index = mirror.servers()[0].index().expect("loaded");
    let after = rss_bytes();
    let round = |x: f64| (x * 1000.0).round() / 1000.0;
    lookups(&mirror, &index, n);
    println!(
        "{}",
        json!({
            "measure": "restart",
            "attributes": n,
            "records": index.len(),
            "ready_secs": round(secs),
            "rss_bytes_per_indicator": round((after.saturating_sub(before)) as f64 / n as f64),
            "index_bytes_per_indicator": round(index.memory_bytes() as f64 / n as f64),
        })
    );
}

/// ns per lookup, by kind of answer, over random probes (no locality: each
/// one is a cache miss, the worst case). `hit` is the hot path's question
/// (is it a hit at all, stopping at the first); `match` is the full answer
/// a hit's event is built from (exact and longest network).
fn lookups(mirror: &Mirror, index: &wazuh_misp::lookup::mirror::index::Index, n: usize) {
    let probes = 1_000_000;
    let networks = n / 10;
    let mut rng = fastrand::Rng::with_seed(7);
    type Gen = Box<dyn Fn(&mut fastrand::Rng) -> String>;
    let kinds: [(&str, Gen); 3] = [
        ("exact", Box::new(move |r| pool_ip(r.usize(networks..n)))),
        ("network", Box::new(move |r| inside(r.usize(0..networks)))),
        (
            "miss",
            Box::new(|r| format!("198.51.{}.{}", r.u8(..), r.u8(1..))),
        ),
    ];
    let server = &mirror.servers()[0];
    let round = |x: f64| (x * 1000.0).round() / 1000.0;
    let mut out = serde_json::Map::new();
    out.insert("measure".into(), "lookup".into());
    out.insert("indicators".into(), n.into());
    for (name, gen) in &kinds {
        let ips: Vec<Observable> = (0..probes)
            .map(|_| gen(&mut rng).parse().unwrap())
            .collect();
        let started = Instant::now();
        let mut hits = 0usize;
        for ip in &ips {
            hits += usize::from(black_box(mirror.hit_on(server, index, ip)));
        }
        let hit_ns = started.elapsed().as_nanos() as f64 / probes as f64;
        let started = Instant::now();
        for ip in &ips {
            black_box(mirror.matches_on(server, index, ip));
        }
        let match_ns = started.elapsed().as_nanos() as f64 / probes as f64;
        assert!(
            (*name == "miss") == (hits == 0),
            "{name}: {hits} of {probes} hit"
        );
        out.insert(format!("{name}_hit_ns"), round(hit_ns).into());
        out.insert(format!("{name}_match_ns"), round(match_ns).into());
    }
    println!("{}", Value::Object(out));
}

/// Many attributes of one value: each costs O(1) to file and O(log n) to
/// tell new from known, never a walk of the value's chain.
async fn one_value(n: usize) {
    if n == 0 {
        return;
    }
    let attrs: Vec<Value> = (0..n)
        .map(|i| {
            json!({"id": (i + 1).to_string(), "type": "ip-dst", "category": "Network activity", "to_ids": true,
                   "uuid": format!("00000000-0000-4000-8000-{i:012}"), "timestamp": (T0 - (n - i) as i64).to_string(),
                   "value": "185.220.101.7"})
        })
        .collect();
    let data = SimData::from_events([
        json!({"Event": {"id": "1", "info": "one value", "published": true,
        "uuid": "10000000-0000-4000-8000-000000000001", "Orgc": {"name": "BENCH"}, "Attribute": attrs}}),
    ]);
    let sim = MispSim::start(&data, KEY).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &sim.url());
    let (_mirror, mut syncer) = mirror_for(&cfg);
    syncer.hunts = Some(wazuh_misp::lookup::mirror::sync::HuntTrigger {
        wake: Arc::new(tokio::sync::Notify::new()),
        window_secs: i64::MAX / 4,
        on_first_sync: false,
    });
    let time = |started: Instant| (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
    let started = Instant::now();
    syncer.sync(Kind::Full).await.unwrap();
    let first = time(started);
    let started = Instant::now();
    syncer.sync(Kind::Full).await.unwrap();
    let full = time(started);
    for i in 0..1000 {
        let uuid = format!("00000000-0000-4000-8000-{:012}", i * 97 % n);
        sim.edit_attribute(&uuid, |a| {
            a.insert("comment".into(), "edited".into());
        });
    }
    let started = Instant::now();
    syncer.sync(Kind::Incremental).await.unwrap();
    let incremental = time(started);
    println!(
        "{}",
        json!({"measure": "one_value", "attributes": n, "first_sync_secs": first,
               "full_sync_secs": full, "incremental_secs": incremental})
    );
}

fn main() {
    let n = env("BENCH_MIRROR_N", 1_000_000);
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(wazuh_misp::config::runtime_threads())
        .enable_all()
        .build()
        .unwrap();
    if let Some(i) = args.iter().position(|a| a == "--restart") {
        for _ in 0..env("BENCH_MIRROR_REPEAT", 1) {
            rt.block_on(restart(&args[i + 1], &args[i + 2], n));
        }
        return;
    }
    rt.block_on(one_value(env("BENCH_MIRROR_SAME", 100_000)));
    if std::env::var_os("BENCH_ONLY_ONE_VALUE").is_some() {
        return;
    }
    rt.block_on(async {
        let built = Instant::now();
        let sim = MispSim::start(&data(n), KEY).await.unwrap();
        eprintln!(
            "simulator holds {n} attributes ({:.1} s to build)",
            built.elapsed().as_secs_f64()
        );
        let dir = tempfile::tempdir().unwrap();
        if std::env::var_os("BENCH_MIRROR_KEEP").is_some() {
            eprintln!("keeping the mirror in {}", dir.path().display());
        }
        let cfg = config(dir.path(), &sim.url());
        let (mirror, syncer) = mirror_for(&cfg);
        let round = |x: f64| (x * 1000.0).round() / 1000.0;

        let rss0 = peak_rss_mb();
        let before = sim.requests();
        let started = Instant::now();
        syncer.sync(Kind::Full).await.unwrap();
        let secs = started.elapsed().as_secs_f64();
        let index = mirror.servers()[0].index().unwrap();
        println!(
            "{}",
            json!({"measure": "first_sync", "attributes": n, "networks": index.networks(),
                   "pages": sim.requests() - before, "secs": round(secs),
                   "peak_rss_mb": round(peak_rss_mb()), "rss_before_mb": round(rss0)})
        );

        // An incremental sync of 1 000 edits.
        let changes = 1000;
        for i in 0..changes {
            let uuid = format!("00000000-0000-4000-8000-{:012}", n / 10 + i * 7);
            assert!(sim.edit_attribute(&uuid, |a| {
                a.insert("comment".into(), "edited".into());
            }));
        }
        let started = Instant::now();
        syncer.sync(Kind::Incremental).await.unwrap();
        println!(
            "{}",
            json!({"measure": "incremental_sync", "indicators": n, "changes": changes,
                   "secs": round(started.elapsed().as_secs_f64())})
        );
        // Rows for a value, as partial events read them during an outage.
        let store = mirror.servers()[0].store.clone();
        let probes: Vec<String> = (0..1000)
            .map(|i| pool_ip(n / 10 + i * 97 % (n - n / 10)))
            .collect();
        let started = Instant::now();
        let mut found = 0;
        for p in &probes {
            found += store
                .lock()
                .unwrap()
                .rows_for("misp", std::slice::from_ref(p))
                .unwrap()
                .len();
        }
        let per = started.elapsed().as_secs_f64() * 1e6 / probes.len() as f64;
        assert_eq!(found, probes.len(), "every probe is a mirrored value");
        println!(
            "{}",
            json!({"measure": "partial_rows", "attributes": n, "us_per_value": round(per)})
        );
        drop(store);
        drop(mirror);
        drop(syncer);
        // Restart from the store, in a process of its own.
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .arg("--restart")
            .arg(dir.path())
            .arg(sim.url())
            .env("BENCH_MIRROR_N", n.to_string())
            .output()
            .unwrap();
        print!("{}", String::from_utf8_lossy(&out.stdout));
        if !out.status.success() {
            eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        }
        if std::env::var_os("BENCH_MIRROR_KEEP").is_some() {
            let _ = dir.keep();
        }
    });
}
