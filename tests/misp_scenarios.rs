//! The mirror's, query mode's and the feedback loop's scenarios, each run
//! twice from one definition: against the in-repo simulator and against
//! a real MISP 2.5 (`../shared/real-misp`; SKIPPED without it). Both are
//! populated through MISP's own API, and each scenario asserts the same
//! outcome on both: a difference is a bug in the simulator.

mod common;

use common::misp::{Misp, PUBLIC_DNS_V4};
use common::*;
use serde_json::{json, Value};
use std::time::Duration;
use wazuh_misp::config::{Config, MispMode};
use wazuh_misp::runtime::Daemon;

const WAIT: Duration = Duration::from_secs(60);

/// Defines `<name>_on_simulator` and `<name>_on_real_misp` from one
/// `async fn <name>(misp: Misp)`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod on_simulator {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let misp = crate::common::misp::Misp::of(crate::common::misp::Backend::Sim, stringify!($name)).await.unwrap();
                    super::$name(misp).await;
                }
            )*
        }
        mod on_real_misp {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(misp) = crate::common::misp::Misp::of(crate::common::misp::Backend::Real, stringify!($name)).await else {
                        return;
                    };
                    super::$name(misp).await;
                }
            )*
        }
    };
}

on_both_backends!(
    the_first_sync_holds_what_misp_counts_though_warninglisted_rows_sit_on_many_pages,
    soft_deletes_and_ids_flags_switched_off_leave_within_the_sync_interval,
    a_later_publish_and_event_tag_changes_reach_the_mirror,
    attributes_that_arrive_with_old_timestamps_are_mirrored_once_published,
    a_hard_delete_leaves_at_the_full_reconciliation,
    query_mode_enriches_a_known_ip_and_misp_drops_a_warninglisted_one,
    a_mirror_hit_is_sighted_on_its_attribute_by_uuid,
    a_hit_whose_attribute_stopped_passing_the_filters_gives_no_event_before_the_next_sync,
    what_a_real_misp_can_hold_is_guarded_and_every_skip_counted,
    max_indicators_holds_for_incremental_syncs_too,
    an_attribute_dated_in_the_future_does_not_stall_the_incremental_sync,
);

/// A daemon's files and configuration against `misp`.
struct Setup {
    _dir: tempfile::TempDir,
    alerts: std::path::PathBuf,
    socket: std::path::PathBuf,
    cfg: Config,
}

impl Setup {
    fn new(misp: &Misp, mode: MispMode) -> Setup {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::in_dir(dir.path(), &misp.url, &misp.key);
        cfg.misp.mode = mode.into();
        cfg.misp.sync_interval_secs = 1.into();
        cfg.misp.sync_page_size = 4.into();
        cfg.misp.batch_window_ms = 2;
        cfg.pipeline.workers = 2.into();
        cfg.pipeline.channel_capacity = 64.into();
        let (alerts, socket) = (
            cfg.input.alerts_file.to_path_buf(),
            cfg.output.queue_socket.to_path_buf(),
        );
        std::fs::write(&alerts, b"").unwrap();
        Setup {
            _dir: dir,
            alerts,
            socket,
            cfg,
        }
    }

    fn start(&self) -> Daemon {
        let client = wazuh_misp::lookup::MispClient::new(
            &self.cfg.misp,
            &self.cfg.resolve_api_key().unwrap(),
        )
        .unwrap();
        Daemon::start(self.cfg.clone(), client).unwrap()
    }

    fn append(&self, text: &str) {
        append(&self.alerts, text);
    }
}

fn ip(value: &str) -> Value {
    json!({"type": "ip-dst", "category": "Network activity", "value": value, "to_ids": true})
}

fn typed(kind: &str, value: &str) -> Value {
    json!({"type": kind, "category": "Payload delivery", "value": value, "to_ids": true})
}

/// An event of `values` as ip-dst attributes, and a mirror-mode setup.
async fn ips_event(misp: &Misp, info: &str, values: &[String]) -> (common::misp::Event, Setup) {
    let event = misp
        .add_event(info, true, &[], values.iter().map(|v| ip(v)).collect())
        .await;
    (event, Setup::new(misp, MispMode::Mirror))
}

/// One sshd alert per IP; the events that came of them once every line
/// is handled and the daemon has stopped.
async fn events_for_alerts(
    setup: &Setup,
    daemon: Daemon,
    q: &QueueSocket,
    ips: &[&str],
) -> Vec<(String, Value)> {
    let lines: String = ips
        .iter()
        .enumerate()
        .map(|(n, ip)| sshd_alert(n + 1, ip, "001") + "\n")
        .collect();
    setup.append(&lines);
    q.received.wait_for(1, WAIT).await;
    all_handled(&daemon, ips.len() as u64, WAIT).await;
    daemon.shutdown(Duration::from_secs(5)).await;
    q.drain().await;
    q.received.events()
}

fn mirrored(d: &Daemon) -> u64 {
    let m = d.engine.lookup.mirror().unwrap();
    m.servers()[0]
        .attributes
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// What MISP says it holds under the default sync filters, unpaged.
async fn misp_count(misp: &Misp) -> usize {
    misp.search(json!({"to_ids": 1, "enforceWarninglist": 1, "type": wazuh_misp::observable::all_misp_types()}))
        .await
        .len()
}

/// MISP's own defaults (`enforce_warninglist` on, pages of a few rows):
/// public resolvers spread over many pages make MISP answer short and
/// empty pages long before the last one.
async fn the_first_sync_holds_what_misp_counts_though_warninglisted_rows_sit_on_many_pages(
    misp: Misp,
) {
    misp.enable_warninglist(PUBLIC_DNS_V4).await;
    let resolvers = ["8.8.8.8", "1.1.1.1", "9.9.9.9", "8.8.4.4", "1.0.0.1"];
    let known: Vec<String> = (0..24).map(pool_ip).collect();
    let mut attributes = Vec::new();
    for (i, k) in known.iter().enumerate() {
        attributes.push(ip(k));
        // Resolvers in runs, so that whole pages of 4 hold nothing else.
        if i % 5 == 0 {
            for r in resolvers {
                attributes.push(ip(r));
            }
        }
    }
    attributes.push(ip("185.220.101.0/24"));
    attributes.push(typed("domain", "evil-mirror.top"));
    attributes.push(typed("url", "http://dl.evil-mirror.top/x.exe"));
    attributes.push(typed("md5", "5d41402abc4b2a76b9719d911017c592"));
    misp.add_event("warninglisted rows on many pages", true, &[], attributes)
        .await;
    let expected = misp_count(&misp).await;
    assert_eq!(expected, known.len() + 4, "MISP drops the resolvers itself");
    let setup = Setup::new(&misp, MispMode::Mirror);
    let daemon = setup.start();
    ready(&daemon).await;
    assert_eq!(mirrored(&daemon) as usize, expected, "{:?}", misp.backend);
    for k in &known {
        assert!(hit(&daemon, k), "{k} is not mirrored");
    }
    for value in [
        "185.220.101.77",
        "evil-mirror.top",
        "http://dl.evil-mirror.top/x.exe",
        "5d41402abc4b2a76b9719d911017c592",
    ] {
        assert!(hit(&daemon, value), "{value} is not mirrored");
    }
    for r in resolvers {
        assert!(!hit(&daemon, r), "{r} is warninglisted");
    }
    daemon.shutdown(Duration::from_secs(5)).await;
}

/// MISP moves an attribute's timestamp when it is soft-deleted
/// (`MispAttribute::deleteAttribute`) or edited: with `deleted: [0, 1]`
/// and no `to_ids` filter, the incremental sync sees both. The full
/// reconciliation is a day away here, so only the incremental can do it.
async fn soft_deletes_and_ids_flags_switched_off_leave_within_the_sync_interval(misp: Misp) {
    let values: Vec<String> = (100..104).map(pool_ip).collect();
    let (event, setup) = ips_event(&misp, "soft deletes", &values).await;
    let daemon = setup.start();
    ready(&daemon).await;
    assert!(values.iter().all(|v| hit(&daemon, v)));
    misp.soft_delete(event.attribute(&values[0])).await;
    misp.edit(event.attribute(&values[1]), json!({"to_ids": false}))
        .await;
    eventually(
        "the soft delete and the IDS flag reach the mirror",
        WAIT,
        || !hit(&daemon, &values[0]) && !hit(&daemon, &values[1]),
    )
    .await;
    assert!(hit(&daemon, &values[2]) && hit(&daemon, &values[3]));
    // And back: the flag on again is an edit like any other.
    misp.edit(event.attribute(&values[1]), json!({"to_ids": true}))
        .await;
    eventually("the IDS flag on again", WAIT, || hit(&daemon, &values[1])).await;
    assert_eq!(mirrored(&daemon), 3);
    daemon.shutdown(Duration::from_secs(5)).await;
}

/// `Event::publish` moves only `publish_timestamp`; a tag on the event
/// moves only the event's timestamp and unpublishes it
/// (`TagsController`, `Event::unpublishEvent`).
async fn a_later_publish_and_event_tag_changes_reach_the_mirror(misp: Misp) {
    let value = pool_ip(200);
    let other = pool_ip(201);
    let event = misp
        .add_event("published later", false, &[], vec![ip(&value)])
        .await;
    let kept = misp
        .add_event("published at once", true, &[], vec![ip(&other)])
        .await;
    let mut setup = Setup::new(&misp, MispMode::Mirror);
    setup.cfg.misp.sync.0.published_only = true;
    setup.cfg.misp.sync.0.exclude_tags = vec!["tlp:red".into()];
    let daemon = setup.start();
    ready(&daemon).await;
    assert!(!hit(&daemon, &value), "not published yet");
    assert!(hit(&daemon, &other));
    misp.publish(&event).await;
    eventually("the publish reaches the mirror", WAIT, || {
        hit(&daemon, &value)
    })
    .await;
    misp.attach_tag(&kept.uuid, "tlp:red").await;
    eventually("an excluded tag on the event", WAIT, || {
        !hit(&daemon, &other)
    })
    .await;
    misp.remove_tag(&kept.uuid, "tlp:red").await;
    // Removing it unpublished the event: published_only keeps it out
    // until it is published again.
    misp.publish(&kept).await;
    eventually("the tag removed and the event published", WAIT, || {
        hit(&daemon, &other)
    })
    .await;
    assert!(hit(&daemon, &value));
    daemon.shutdown(Duration::from_secs(5)).await;
}

/// A pull, a feed or an API client keeps the origin's timestamps
/// (`MispAttribute` sets one only when it is empty): the attribute window
/// never sees them, the publish does.
async fn attributes_that_arrive_with_old_timestamps_are_mirrored_once_published(misp: Misp) {
    let old = pool_ip(300);
    let setup = Setup::new(&misp, MispMode::Mirror);
    let anchor = misp
        .add_event("anchor", true, &[], vec![ip(&pool_ip(301))])
        .await;
    let daemon = setup.start();
    ready(&daemon).await;
    let mut a = ip(&old);
    a["timestamp"] = "1600000000".into();
    let event = misp.add_event("from a pull", false, &[], vec![a]).await;
    misp.publish(&event).await;
    eventually("the old-dated attribute mirrored", WAIT, || {
        hit(&daemon, &old)
    })
    .await;
    assert!(hit(&daemon, &anchor.attributes[0].value));
    daemon.shutdown(Duration::from_secs(5)).await;
}

/// A hard delete leaves no row to see: MISP gives the mirror no signal
/// for that attribute, and the full reconciliation removes it.
async fn a_hard_delete_leaves_at_the_full_reconciliation(misp: Misp) {
    let values: Vec<String> = (400..403).map(pool_ip).collect();
    let (event, mut setup) = ips_event(&misp, "hard deletes", &values).await;
    setup.cfg.misp.full_sync_interval_secs = 2.into();
    let daemon = setup.start();
    ready(&daemon).await;
    misp.hard_delete(event.attribute(&values[0])).await;
    eventually("the hard delete reconciled", WAIT, || {
        !hit(&daemon, &values[0])
    })
    .await;
    assert!(hit(&daemon, &values[1]) && hit(&daemon, &values[2]));
    daemon.shutdown(Duration::from_secs(5)).await;
}

/// Query mode asks per value; MISP's warninglists drop a resolver the
/// event lists, so an alert about it gets no event.
async fn query_mode_enriches_a_known_ip_and_misp_drops_a_warninglisted_one(misp: Misp) {
    misp.enable_warninglist(PUBLIC_DNS_V4).await;
    let known = pool_ip(500);
    misp.add_event(
        "query mode",
        true,
        &["tlp:green"],
        vec![ip(&known), ip("8.8.8.8")],
    )
    .await;
    let setup = Setup::new(&misp, MispMode::Query);
    let q = QueueSocket::bind(&setup.socket, Received::default());
    let daemon = setup.start();
    let events = events_for_alerts(&setup, daemon, &q, &["8.8.8.8", &known]).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0].1;
    assert_eq!(e["detected_ip"]["value"], known);
    assert_eq!(e["misp_data"]["events"][0]["info"], "query mode");
    assert_eq!(e["misp_data"]["attributes"][0]["value"], known);
}

/// A hit goes back to MISP as a sighting on the attribute, by its uuid.
async fn a_mirror_hit_is_sighted_on_its_attribute_by_uuid(misp: Misp) {
    let known = pool_ip(600);
    let event = misp.add_event("sighted", true, &[], vec![ip(&known)]).await;
    let uuid = event.attribute(&known).uuid.clone();
    let mut setup = Setup::new(&misp, MispMode::Mirror);
    setup.cfg.misp.sightings = true.into();
    setup.cfg.misp.sightings_per_minute = 6000.into();
    let q = QueueSocket::bind(&setup.socket, Received::default());
    let daemon = setup.start();
    ready(&daemon).await;
    setup.append(&format!("{}\n", sshd_alert(1, &known, "001")));
    q.received.wait_for(1, WAIT).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let sightings = loop {
        let s = misp.sightings_of(&uuid).await;
        if !s.is_empty() || tokio::time::Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    daemon.shutdown(Duration::from_secs(5)).await;
    assert_eq!(sightings.len(), 1, "{sightings:?}");
    assert_eq!(sightings[0]["type"], "0");
}

/// The mirror still holds the attribute (the next sync is an hour away),
/// but MISP's details, asked with the sync's filters, no longer pass.
async fn a_hit_whose_attribute_stopped_passing_the_filters_gives_no_event_before_the_next_sync(
    misp: Misp,
) {
    let (stale, fresh) = (pool_ip(700), pool_ip(701));
    let event = misp
        .add_event("details filtered", true, &[], vec![ip(&stale), ip(&fresh)])
        .await;
    let mut setup = Setup::new(&misp, MispMode::Mirror);
    setup.cfg.misp.sync_interval_secs = 3600.into();
    let q = QueueSocket::bind(&setup.socket, Received::default());
    let daemon = setup.start();
    ready(&daemon).await;
    misp.edit(event.attribute(&stale), json!({"to_ids": false}))
        .await;
    assert!(hit(&daemon, &stale), "the mirror has not synced since");
    let events = events_for_alerts(&setup, daemon, &q, &[&stale, &fresh]).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].1["detected_ip"]["value"], fresh);
}

fn skipped(setup: &Setup) -> std::collections::BTreeMap<String, i64> {
    let store =
        wazuh_misp::lookup::mirror::store::Store::open_read_only(&setup.cfg.input.state_dir)
            .unwrap()
            .unwrap();
    store.servers().unwrap().remove(0).skipped
}

/// A `0.0.0.0/0` or `::/0` would make every IP a hit; an IPv4-mapped
/// network is the IPv4 network it is; a `url` without a scheme is an
/// http URL, and one that names no host is no URL.
async fn what_a_real_misp_can_hold_is_guarded_and_every_skip_counted(misp: Misp) {
    misp.add_event(
        "guards",
        true,
        &[],
        vec![
            ip("0.0.0.0/0"),
            ip("::/0"),
            ip("4.0.0.0/7"),
            ip("::ffff:10.1.2.0/120"),
            typed("url", "evil-guard.top/dl/x.exe"),
            typed("url", "www.evil-guard.top"),
            typed("url", "igfxtray.exe"),
            typed("url", "Data/dtl.dat"),
        ],
    )
    .await;
    let setup = Setup::new(&misp, MispMode::Mirror);
    let daemon = setup.start();
    ready(&daemon).await;
    assert!(!hit(&daemon, "93.184.216.34"), "no network covers every IP");
    assert!(!hit(&daemon, "2a00:1450::1"));
    assert!(
        !hit(&daemon, "4.1.2.3"),
        "a /7 is broader than the default /8"
    );
    assert!(
        hit(&daemon, "10.1.2.3"),
        "::ffff:10.1.2.0/120 is 10.1.2.0/24"
    );
    assert!(hit(&daemon, "http://evil-guard.top/dl/x.exe"));
    assert!(hit(&daemon, "http://www.evil-guard.top"));
    assert_eq!(mirrored(&daemon), 3, "{:?}", misp.backend);
    daemon.shutdown(Duration::from_secs(5)).await;
    let skipped = skipped(&setup);
    assert_eq!(skipped.get("broad_network"), Some(&3), "{skipped:?}");
    assert_eq!(skipped.get("not_a_url"), Some(&2), "{skipped:?}");
}

/// The full sync keeps the first `misp.max_indicators`; what an
/// incremental sync brings past it is skipped and counted, not added.
async fn max_indicators_holds_for_incremental_syncs_too(misp: Misp) {
    let first: Vec<String> = (800..803).map(pool_ip).collect();
    let event = misp
        .add_event(
            "at the bound",
            true,
            &[],
            first.iter().map(|v| ip(v)).collect(),
        )
        .await;
    let mut setup = Setup::new(&misp, MispMode::Mirror);
    setup.cfg.misp.max_indicators = 4.into();
    let daemon = setup.start();
    ready(&daemon).await;
    assert_eq!(mirrored(&daemon), 3);
    for v in [pool_ip(803), pool_ip(804), pool_ip(805)] {
        misp.add_attribute(&event, ip(&v)).await;
    }
    let skipped_of = |setup: &Setup| skipped(setup).get("over_max_indicators").copied();
    let deadline = tokio::time::Instant::now() + WAIT;
    while skipped_of(&setup) != Some(2) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            skipped(&setup)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(mirrored(&daemon), 4);
    daemon.shutdown(Duration::from_secs(5)).await;
}

/// An API client may date an attribute in the future (MISP keeps a
/// `timestamp` it is given): the cursor is MISP's clock, never an
/// attribute's timestamp, so what comes after it is still synced.
async fn an_attribute_dated_in_the_future_does_not_stall_the_incremental_sync(misp: Misp) {
    let event = misp
        .add_event("future", true, &[], vec![ip(&pool_ip(900))])
        .await;
    let setup = Setup::new(&misp, MispMode::Mirror);
    let daemon = setup.start();
    ready(&daemon).await;
    let mut future = ip(&pool_ip(901));
    future["timestamp"] = (chrono::Utc::now().timestamp() + 30 * 86400)
        .to_string()
        .into();
    misp.add_attribute(&event, future).await;
    eventually("the future-dated attribute", WAIT, || {
        hit(&daemon, &pool_ip(901))
    })
    .await;
    // Past the sync overlap: the cursor would be 30 days ahead if it were
    // the newest timestamp seen.
    misp.add_attribute(&event, ip(&pool_ip(902))).await;
    eventually("an attribute added after it", WAIT, || {
        hit(&daemon, &pool_ip(902))
    })
    .await;
    let state =
        wazuh_misp::lookup::mirror::store::Store::open_read_only(&setup.cfg.input.state_dir)
            .unwrap()
            .unwrap()
            .servers()
            .unwrap()
            .remove(0);
    assert!(
        state.cursor <= chrono::Utc::now().timestamp() + 5,
        "the cursor ran ahead of MISP's clock: {}",
        state.cursor
    );
    daemon.shutdown(Duration::from_secs(5)).await;
}

/// MISP's clock steps back an hour (an NTP correction, a restored VM):
/// what changes afterwards carries timestamps under the cursor, and the
/// sync asks again from MISP's clock. Simulator only: a real MISP's
/// clock is the machine's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misp_clock_that_steps_back_loses_no_attribute() {
    let misp = Misp::sim().await;
    let event = misp
        .add_event("clock", true, &[], vec![ip(&pool_ip(910))])
        .await;
    let setup = Setup::new(&misp, MispMode::Mirror);
    let daemon = setup.start();
    ready(&daemon).await;
    misp.sim.as_ref().unwrap().set_clock_offset(-3600);
    misp.add_attribute(&event, ip(&pool_ip(911))).await;
    eventually("the attribute added after the step", WAIT, || {
        hit(&daemon, &pool_ip(911))
    })
    .await;
    daemon.shutdown(Duration::from_secs(5)).await;
}
