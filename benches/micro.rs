//! Microbenchmarks of the pure stages: where the time goes per alert.
//!
//! Uses `../shared/corpus/alerts` when present, else the demo alerts that
//! ship in the repo. `hot_path` runs the engine's synchronous step on
//! alerts whose IPs are all cached: a worker's whole cost per alert.

mod common;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use serde_json::{json, Value};
use std::hint::black_box;
use wazuh_misp::alert::{self, Node};
use wazuh_misp::enrich::{enrich, serialize_within, AlertContext};
use wazuh_misp::extract::{Direction, Extractor, Occurrence, Scratch};
use wazuh_misp::filter::AlertFilter;
use wazuh_misp::lookup::model::{parse_response, Attribute};
use wazuh_misp::output::{frame, header, MAX_DATAGRAM};
use wazuh_misp::sim::{MispSim, SimData};

fn alert_lines() -> Vec<String> {
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus/alerts");
    let mut lines = Vec::new();
    for name in ["dashboard-sample.jsonl", "wazuh-doc-samples.jsonl"] {
        if let Ok(text) = std::fs::read_to_string(corpus.join(name)) {
            lines.extend(text.lines().map(str::to_owned));
        }
    }
    if lines.is_empty() {
        eprintln!("../shared/corpus not found; benchmarking the demo alerts");
        lines = wazuh_misp::demo::DEMO_ALERTS
            .lines()
            .map(str::to_owned)
            .collect();
    }
    lines
}

fn attributes(n: usize) -> Vec<Attribute> {
    let events: Vec<Value> = (0..n.div_ceil(10).max(1))
        .map(|e| {
            let attrs: Vec<Value> = (0..10.min(n - e * 10))
                .map(|i| json!({"id": format!("{e}{i}"), "type": if i % 2 == 0 { "ip-dst" } else { "ip-src" }, "category": "Network activity",
                    "to_ids": i % 3 == 0, "timestamp": format!("{}", 1_700_000_000 + i), "value": "185.220.101.42",
                    "Tag": [{"name": format!("tag-{}", i % 4)}]}))
                .collect();
            json!({"Event": {"id": format!("{}", 100 + e), "info": format!("event {e}"), "date": "2026-01-01", "Orgc": {"name": "CIRCL"},
                "Tag": [{"name": "tlp:amber"}, {"name": "misp-galaxy:botnet=\"Emotet\""}], "Attribute": attrs}})
        })
        .collect();
    let body = json!({"value": ["185.220.101.42"], "includeEventTags": true, "includeContext": true, "includeSightings": true});
    let answer = MispSim::answer(&SimData::from_events(events), &body);
    parse_response(answer.to_string().as_bytes()).unwrap()
}

/// Extraction of every alert of `alerts`, one iteration per pass.
fn extract_all(b: &mut criterion::Bencher<'_>, ex: &Extractor, alerts: &[Node<'_>]) {
    let mut scratch = Scratch::default();
    let mut hits = Vec::new();
    b.iter(|| {
        for a in alerts {
            hits.clear();
            ex.extract(black_box(*a), &mut scratch, &mut hits);
        }
        black_box(hits.len())
    })
}

fn benches(c: &mut Criterion) {
    let lines = alert_lines();
    // A parser per line: each tape borrows its parser's copy of the line.
    let mut parsers: Vec<alert::Parser> = lines.iter().map(|_| Default::default()).collect();
    let tapes: Vec<alert::Tape> = parsers
        .iter_mut()
        .zip(&lines)
        .filter_map(|(p, l)| p.parse(l).ok())
        .collect();
    let alerts: Vec<Node> = tapes.iter().map(|t| t.as_value()).collect();

    let mut g = c.benchmark_group("per_alert");
    g.throughput(Throughput::Elements(alerts.len() as u64));
    let ex = Extractor::with_defaults();
    // Every kind of observable: IPs, domains, URLs, hashes.
    g.bench_function("extract", |b| extract_all(b, &ex, &alerts));
    g.finish();
    // The labelled alerts of every source that carries domains, URLs and
    // hashes (Sysmon, syscheck, Suricata, Zeek, proxies, Office 365).
    let fixture = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/observables/alerts.json"),
    )
    .unwrap();
    let mut fixture_parsers: Vec<alert::Parser> =
        fixture.lines().map(|_| Default::default()).collect();
    let fixture_tapes: Vec<alert::Tape> = fixture_parsers
        .iter_mut()
        .zip(fixture.lines())
        .filter_map(|(p, l)| p.parse(l).ok())
        .collect();
    let fixture_alerts: Vec<Node> = fixture_tapes.iter().map(|t| t.as_value()).collect();
    let mut g = c.benchmark_group("per_alert");
    g.throughput(Throughput::Elements(fixture_alerts.len() as u64));
    g.bench_function("extract_every_kind_fixtures", |b| {
        extract_all(b, &ex, &fixture_alerts)
    });
    g.finish();
    let mut g = c.benchmark_group("per_alert");
    g.throughput(Throughput::Elements(alerts.len() as u64));
    let filter = AlertFilter {
        min_level: 6,
        exclude_rule_ids: vec!["31530".into(), "31531".into()],
        ..AlertFilter::default()
    };
    g.throughput(Throughput::Elements(lines.len() as u64));
    g.bench_function("parse_and_filter", |b| {
        let mut parser = alert::Parser::default();
        b.iter(|| {
            let mut kept = 0;
            for l in &lines {
                if let Ok(ok) = parser.with(black_box(l), |v| {
                    filter.check(&alert::Fields::of(v)).is_ok()
                }) {
                    kept += usize::from(ok);
                }
            }
            kept
        })
    });
    g.finish();

    let first = wazuh_misp::demo::DEMO_ALERTS.lines().next().unwrap();
    let mut first_parser = alert::Parser::default();
    let tape = first_parser.parse(first).unwrap();
    let alert = tape.as_value();
    let ctx = AlertContext::from_alert(alert);
    let hit = Occurrence {
        observable: wazuh_misp::observable::Observable::Ip("185.220.101.42".parse().unwrap()),
        direction: Direction::Source,
        field_path: "data.srcip".into(),
        raw_context: "185.220.101.42".into(),
    };
    let mut g = c.benchmark_group("enrich");
    for n in [1, 10, 100, 1000] {
        let attrs = attributes(n);
        g.bench_function(format!("{n}_attributes"), |b| {
            b.iter(|| {
                let mut ev = enrich(&ctx, &hit, black_box(&attrs), chrono::Utc::now()).unwrap();
                serialize_within(&mut ev, MAX_DATAGRAM - 40).unwrap().len()
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("framing");
    let payload = vec![b'x'; 2000];
    g.bench_function("header_and_frame", |b| {
        b.iter(|| {
            let h = header(black_box(&ctx.agent));
            frame(&h, &payload).unwrap().len()
        })
    });
    let big = attributes(3000);
    g.bench_function("size_guard_3000_attributes", |b| {
        b.iter_batched(
            || enrich(&ctx, &hit, &big, chrono::Utc::now()).unwrap(),
            |mut ev| serialize_within(&mut ev, MAX_DATAGRAM - 40).unwrap().len(),
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

/// [`Engine::begin`] on sshd alerts whose IPs MISP knows and the cache
/// holds: parse, filter, extract, cache lookup, enrichment and framing,
/// without the channels and threads around them.
fn hot_path(c: &mut Criterion) {
    use wazuh_misp::config::Config;
    use wazuh_misp::lookup::{Lookup, MispClient};
    use wazuh_misp::output::Outgoing;
    use wazuh_misp::runtime::{Engine, Rules};

    let ips: Vec<String> = (0..1000).map(wazuh_misp::sim::pool_ip).collect();
    let lines: Vec<String> = (0..1000)
        .map(|i| common::alert(i, 1, &ips[i], 10))
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (engine, _sim) = rt.block_on(async {
        let sim = MispSim::start(&SimData::from_events([common::event(&ips)]), common::KEY)
            .await
            .unwrap();
        let cfg = Config::in_dir(dir.path(), &sim.url(), common::KEY);
        let client = MispClient::new(&cfg.misp, &cfg.resolve_api_key().unwrap()).unwrap();
        let stats = std::sync::Arc::new(wazuh_misp::stats::Stats::default());
        let lookup = Lookup::start(client, &cfg.misp, stats.clone());
        // No dedup: every pass makes every event again.
        let engine = Engine::new(Rules::from_config(&cfg).unwrap(), lookup, None, stats);
        for l in &lines {
            let out = engine.process(l.as_bytes(), None).await.unwrap();
            assert_eq!(
                out.datagrams.len(),
                1,
                "warm-up must cache a hit for every IP"
            );
        }
        (engine, sim)
    });
    let mut g = c.benchmark_group("hot_path");
    g.throughput(Throughput::Elements(lines.len() as u64));
    g.bench_function("engine_begin_cached", |b| {
        let _rt = rt.enter();
        let mut out = Outgoing::default();
        let mut recent = wazuh_misp::lookup::Recent::default();
        b.iter(|| {
            out.datagrams.clear();
            out.dedup_keys.clear();
            for l in &lines {
                assert!(engine
                    .begin(black_box(l), None, &mut recent, &mut out)
                    .is_none());
            }
            out.datagrams.len()
        })
    });
    g.finish();
}

criterion_group! {
    name = micro;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(3));
    targets = benches, hot_path
}
criterion_main!(micro);
