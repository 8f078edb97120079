//! The MISP client and lookup service against the simulator over real HTTP.

mod common;

use common::*;
use std::sync::Arc;
use std::time::Duration;
use wazuh_misp::config::{MispConfig, Secret};
use wazuh_misp::lookup::{Lookup, MispClient, MispError, Recent};
use wazuh_misp::observable::Observable;
use wazuh_misp::runtime::{Engine, Rules};
use wazuh_misp::sim::{Fault, MispSim, SimData};
use wazuh_misp::stats::Stats;

fn ips(n: usize) -> Vec<String> {
    (0..n).map(pool_ip).collect()
}

async fn sim_with(n: usize) -> (MispSim, Vec<String>) {
    let ips = ips(n);
    let sim = MispSim::start(&SimData::from_events([event_with_ips(1, &ips)]), KEY)
        .await
        .unwrap();
    (sim, ips)
}

fn cfg(sim: &MispSim) -> MispConfig {
    MispConfig {
        url: sim.url(),
        api_key: Some(Secret::new(KEY)),
        batch_window_ms: 5,
        timeout_secs: 2,
        ..MispConfig::default()
    }
}

fn client(c: &MispConfig) -> MispClient {
    MispClient::new(c, c.api_key.as_ref().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_lookups_are_batched() {
    let (sim, ips) = sim_with(50).await;
    let c = cfg(&sim);
    let lookup = Lookup::start(client(&c), &c, Arc::new(Stats::default()));
    let results = futures::future::join_all(ips.iter().map(|ip| {
        let lookup = lookup.clone();
        let o: Observable = ip.parse().unwrap();
        async move { lookup.get(&o).await }
    }))
    .await;
    for (ip, r) in ips.iter().zip(&results) {
        let hits = r.as_ref().unwrap();
        assert_eq!(hits.len(), 1);
        assert_eq!(&hits[0].value, ip);
    }
    assert_eq!(sim.values_asked(), 50);
    assert!(
        sim.requests() <= 8,
        "{} requests for 50 values",
        sim.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_ip_asked_concurrently_is_one_request() {
    let (sim, ips) = sim_with(1).await;
    let c = cfg(&sim);
    let lookup = Lookup::start(client(&c), &c, Arc::new(Stats::default()));
    let ip: Observable = ips[0].parse().unwrap();
    let results = futures::future::join_all((0..20).map(|_| lookup.get(&ip))).await;
    assert!(results.iter().all(|r| r.as_ref().unwrap().len() == 1));
    assert_eq!(sim.requests(), 1);
    assert_eq!(sim.values_asked(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_ips_are_cached_too() {
    let (sim, _) = sim_with(1).await;
    let c = cfg(&sim);
    let stats = Arc::new(Stats::default());
    let lookup = Lookup::start(client(&c), &c, stats.clone());
    let clean: Observable = "93.184.216.34".parse().unwrap();
    assert!(lookup.get(&clean).await.unwrap().is_empty());
    assert!(lookup.get(&clean).await.unwrap().is_empty());
    assert_eq!(sim.requests(), 1);
    assert_eq!(Stats::get(&stats.cache_hits), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workers_memo_serves_hits_and_forgets_them_when_misp_is_reconfigured() {
    let (sim, ips) = sim_with(3).await;
    let c = cfg(&sim);
    let lookup = Lookup::start(client(&c), &c, Arc::new(Stats::default()));
    let ip: Observable = ips[0].parse().unwrap();
    let mut recent = Recent::default();
    assert!(
        lookup.cached_recent(&ip, &mut recent).is_none(),
        "nothing cached yet"
    );
    lookup.get(&ip).await.unwrap();
    let hits = lookup.cached_recent(&ip, &mut recent).unwrap();
    assert_eq!(hits[0].value, ips[0]);
    assert_eq!(recent.len(), 1, "remembered");
    assert!(Arc::ptr_eq(
        &hits,
        &lookup.cached_recent(&ip, &mut recent).unwrap()
    ));

    // A new server (here: the same one with another key) empties the cache,
    // and with it every memo, even one that is not stale yet.
    lookup.reconfigure(client(&c), &c);
    assert!(lookup.cached_recent(&ip, &mut recent).is_none());
    assert!(recent.is_empty());

    // A memo used with another lookup service starts over.
    let other = Lookup::start(client(&c), &c, Arc::new(Stats::default()));
    lookup.get(&ip).await.unwrap();
    lookup.cached_recent(&ip, &mut recent).unwrap();
    assert!(other.cached_recent(&ip, &mut recent).is_none());
    assert!(recent.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_class_is_recognised() {
    let (mut sim, ips) = sim_with(1).await;
    let c = cfg(&sim);
    let ok = client(&c);
    let values = vec![ips[0].clone()];

    let bad_key = MispClient::new(&c, &Secret::new("wrong")).unwrap();
    match bad_key.search(&values).await {
        Err(MispError::Auth {
            status: 403,
            message,
        }) => assert!(message.contains("Authentication failed"), "{message}"),
        other => panic!("expected auth error, got {other:?}"),
    }
    sim.inject(
        Fault::RateLimited {
            retry_after_secs: 7,
        },
        1,
    );
    assert_eq!(
        ok.search(&values).await,
        Err(MispError::RateLimited {
            retry_after: Some(Duration::from_secs(7))
        })
    );
    sim.inject(Fault::Status(503), 1);
    assert_eq!(
        ok.search(&values).await,
        Err(MispError::Server { status: 503 })
    );
    for fault in [Fault::Html, Fault::Truncated, Fault::WrongShape] {
        sim.inject(fault.clone(), 1);
        let r = ok.search(&values).await;
        assert!(
            matches!(r, Err(MispError::BadBody(_))),
            "{fault:?} gave {r:?}"
        );
    }
    sim.inject(Fault::Slow(Duration::from_secs(5)), 1);
    assert_eq!(ok.search(&values).await, Err(MispError::Timeout));
    let tiny = MispConfig {
        max_response_bytes: 100,
        ..c.clone()
    };
    let r = client(&tiny).search(&values).await;
    assert!(
        matches!(&r, Err(MispError::BadBody(m)) if m.contains("max_response_bytes")),
        "{r:?}"
    );
    assert_eq!(ok.search(&values).await.unwrap().len(), 1);
    sim.stop().await;
    let r = ok.search(&values).await;
    assert!(matches!(r, Err(MispError::Unreachable(_))), "{r:?}");
}

/// A 403 whose body echoes the Authorization header: the error that goes
/// to logs and into the `misp_error` event holds no key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_echoed_key_is_scrubbed_from_the_error() {
    let (sim, ips) = sim_with(1).await;
    let c = cfg(&sim);
    sim.inject(Fault::EchoAuth, 1);
    match client(&c).search(&[ips[0].clone()]).await {
        Err(e @ MispError::Auth { status: 403, .. }) => {
            let text = format!("{e} {e:?}");
            assert!(text.contains("Forbidden"), "{text}");
            assert!(!text.contains(KEY), "the key is in the error: {text}");
        }
        other => panic!("expected an auth error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_until_misp_answers() {
    let (sim, ips) = sim_with(1).await;
    let c = cfg(&sim);
    let lookup = Lookup::start(client(&c), &c, Arc::new(Stats::default()));
    sim.inject(Fault::Status(500), 2);
    sim.inject(Fault::Html, 1);
    let hits = lookup.get(&ips[0].parse().unwrap()).await.unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(sim.requests(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_then_probes_until_misp_is_back() {
    let (mut sim, ips) = sim_with(1).await;
    let c = MispConfig {
        retries: 0,
        breaker_failures: 2,
        ..cfg(&sim)
    };
    let lookup = Lookup::start_with_probe(
        client(&c),
        &c,
        Arc::new(Stats::default()),
        Duration::from_millis(100),
    );
    sim.stop().await;
    let ip: Observable = ips[0].parse().unwrap();
    let waiting = tokio::spawn({
        let lookup = lookup.clone();
        async move { lookup.get(&ip).await }
    });
    eventually("breaker open", Duration::from_secs(20), || {
        lookup.breaker().is_open()
    })
    .await;
    assert!(!waiting.is_finished(), "the lookup waits, it does not fail");
    sim.restart().await.unwrap();
    let hits = waiting.await.unwrap().unwrap();
    assert_eq!(hits.len(), 1);
    assert!(!lookup.breaker().is_open());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_alerts_over_fifty_ips_ask_misp_about_fifty_values() {
    let (sim, ips) = sim_with(50).await;
    let h = Harness::new(&SimData::from_events([])).await;
    let mut cfg_all = h.cfg.clone();
    cfg_all.misp = cfg(&sim);
    let stats = Arc::new(Stats::default());
    let engine = Engine::new(
        Rules::from_config(&cfg_all).unwrap(),
        Lookup::start(client(&cfg_all.misp), &cfg_all.misp, stats.clone()),
        Some(wazuh_misp::dedup::Dedup::new(
            Duration::from_secs(3600),
            10_000,
        )),
        stats,
    );
    let lines: Vec<String> = (0..1000)
        .map(|i| sshd_alert(i, &ips[i % 50], "001"))
        .collect();
    let produced =
        futures::future::join_all(lines.iter().map(|l| engine.process(l.as_bytes(), None))).await;
    let events: usize = produced
        .iter()
        .map(|p| p.as_ref().unwrap().datagrams.len())
        .sum();
    assert_eq!(events, 50, "one event per IP within the dedup window");
    assert!(
        sim.values_asked() <= 50,
        "asked about {} values",
        sim.values_asked()
    );
    assert!(sim.requests() <= 5, "{} requests", sim.requests());
}

/// A url with `user:password@` (a proxy's basic auth): the API key still
/// goes in the Authorization header MISP reads, and nothing of the
/// password shows in the client's debug output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_with_userinfo_still_sends_the_api_key() {
    let (sim, ips) = sim_with(1).await;
    let url = sim.url().replace("http://", "http://proxyuser:Pr0xyPass@");
    let c = MispConfig { url, ..cfg(&sim) };
    let client = client(&c);
    assert!(!format!("{client:?}").contains("Pr0xyPass"));
    let found = client.search(&[ips[0].clone()]).await.unwrap();
    assert_eq!(found.len(), 1);
}
