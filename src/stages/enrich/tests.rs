use super::*;
use crate::extract::Direction;
use crate::lookup::model::parse_response;
use crate::observable::Occurrence;
use crate::sim::{MispSim, SimData};
use serde_json::json;

fn hit(ip: &str) -> Occurrence {
    Occurrence {
        observable: crate::observable::Observable::Ip(ip.parse().unwrap()),
        direction: Direction::Source,
        field_path: "data.srcip".into(),
        raw_context: ip.into(),
    }
}

/// The alert as the pipeline parses it (from a line, not a `Value`).
fn alert() -> Node<'static> {
    let line = json!({"timestamp":"2026-11-22T09:58:02.114+0000","rule":{"level":10,"description":"sshd: brute force","id":"5712","groups":["sshd"]},
           "agent":{"id":"001","name":"web-01","ip":"10.0.1.50"},"manager":{"name":"wazuh-manager"},"id":"1763805482.104312",
           "decoder":{"name":"sshd"},"data":{"srcip":"49.88.112.73","srcuser":"test","rule":"x"},"location":"/var/log/auth.log"})
        .to_string();
    // Leaked so the borrowed tape can outlive this call; a few hundred bytes per test.
    alert::parse_leaked(&line).unwrap()
}

fn event(id: &str, info: &str, date: &str, tags: Value, attrs: Value) -> Value {
    json!({"Event": {"id": id, "uuid": format!("uuid-{id}"), "info": info, "date": date, "analysis": "2", "threat_level_id": "1",
        "orgc_id": "2", "org_id": "1", "Orgc": {"id": "2", "name": "CIRCL"}, "Tag": tags, "Attribute": attrs}})
}

fn ip_attr(id: &str, kind: &str, value: &str, ts: &str) -> Value {
    json!({"id": id, "type": kind, "category": "Network activity", "to_ids": true, "uuid": format!("a-{id}"),
           "timestamp": ts, "distribution": "5", "comment": "", "deleted": false, "value": value})
}

/// What the simulator answers for `ip`, parsed as the daemon parses it.
fn lookup(data: &SimData, ip: &str) -> Vec<Attribute> {
    lookup_with(data, ip, true)
}

fn lookup_with(data: &SimData, ip: &str, correlations: bool) -> Vec<Attribute> {
    let body = json!({"returnFormat": "json", "value": [ip], "includeEventTags": true, "includeContext": true,
                      "includeSightings": true, "includeCorrelations": correlations});
    parse_response(MispSim::answer(data, &body).to_string().as_bytes()).unwrap()
}

fn tlp_green() -> Value {
    json!([{"id": "4", "name": "tlp:green", "colour": "#339900"}])
}

/// The strictest colour wins, whatever order the tags come in.
#[test]
fn the_summary_names_the_most_restrictive_tlp() {
    let tags = json!([{"id": "5", "name": "tlp:amber", "colour": "#FFC000"},
                      {"id": "4", "name": "tlp:green", "colour": "#339900"}]);
    let data = SimData::from_events([
        event(
            "1",
            "a",
            "2026-01-02",
            tlp_green(),
            json!([ip_attr("1", "ip-dst", "185.1.1.1", "1700000300")]),
        ),
        event(
            "2",
            "b",
            "2026-01-03",
            tags,
            json!([ip_attr("2", "ip-dst", "185.1.1.1", "1700000100")]),
        ),
    ]);
    let attrs = lookup(&data, "185.1.1.1");
    let parsed = alert();
    let ctx = AlertContext::from_alert(parsed);
    let ev = enrich(&ctx, &hit("185.1.1.1"), &attrs, chrono::Utc::now()).unwrap();
    assert_eq!(ev.misp_data.summary.tlp.as_deref(), Some("amber"));
}

#[test]
fn same_ip_in_several_events_aggregates_into_one_entry() {
    let data = SimData::from_events([
        event(
            "10",
            "first",
            "2026-01-02",
            tlp_green(),
            json!([ip_attr("1", "ip-dst", "185.1.1.1", "1700000300")]),
        ),
        event(
            "11",
            "second",
            "2026-03-04",
            tlp_green(),
            json!([ip_attr("2", "ip-dst", "185.1.1.1", "1700000100")]),
        ),
        event(
            "12",
            "third",
            "2025-12-31",
            tlp_green(),
            json!([ip_attr("3", "ip-dst", "185.1.1.1", "1700000200")]),
        ),
    ]);
    let attrs = lookup(&data, "185.1.1.1");
    assert_eq!(attrs.len(), 3);
    let parsed = alert();
    let ctx = AlertContext::from_alert(parsed);
    let now = chrono::DateTime::from_timestamp(1_795_341_600, 123_000_000).unwrap();
    let ev = enrich(&ctx, &hit("185.1.1.1"), &attrs, now).unwrap();
    let agg = &ev.misp_data.attributes;
    // Each sees the other two as correlations: the same (type, value,
    // category) twice, so the groups' keys are equal.
    assert_eq!(agg.len(), 1);
    assert_eq!(agg[0].associated_misp_event_ids, ["10", "11", "12"]);
    assert_eq!(
        agg[0].attribute_timestamps,
        ["1700000100", "1700000200", "1700000300"]
    );
    assert_eq!(agg[0].threat_score, 3 + 2 + 2);
    assert_eq!(agg[0].related_attributes.len(), 2);
    // A different category is a different group.
    let mut other = attrs.clone();
    other[1].category = "External analysis".into();
    assert_eq!(aggregate(&other).len(), 2);
    assert_eq!(ev.misp_data.events.len(), 3);
    let s = &ev.misp_data.summary;
    assert_eq!(s.earliest_event_date.as_deref(), Some("2025-12-31"));
    assert_eq!(s.latest_event_date.as_deref(), Some("2026-03-04"));
    assert_eq!(s.latest_event_info.as_deref(), Some("second"));
    assert_eq!(s.threat_types, ["green"]);
    assert_eq!(s.tlp.as_deref(), Some("green"));
    assert!(s.latest_event_uuid.is_some());
    assert_eq!(
        s.latest_event_uuid,
        ev.misp_data
            .events
            .iter()
            .find(|e| e.info == "second")
            .map(|e| e.uuid.clone())
    );
    assert_eq!(s.max_threat_score, 7);
    assert_eq!(ev.recommendations.as_ref().unwrap().priority, "medium");
    assert_eq!(ev.timestamp, "2026-11-22T10:00:00.123+0000");
    assert_eq!(
        ev.event_id,
        format!(
            "{:x}",
            Md5::digest(b"185.1.1.1|5712|2026-11-22T09:58:02.114+0000|1763805482.104312")
        )
    );
    // data keys are copied up, except ones that clash with ours.
    let v = serde_json::to_value(&ev).unwrap();
    assert_eq!(v["srcip"], "49.88.112.73");
    assert_eq!(v["srcuser"], "test");
    assert_eq!(v["rule"]["id"], "5712");
    assert_eq!(v["detected_ip"]["direction"], "source");
}

#[test]
fn tag_levels_prefer_attribute_and_dedupe() {
    let mut a = ip_attr("1", "ip-src", "185.2.2.2", "1700000000");
    a["Tag"] =
        json!([{"name": "malware", "colour": "#f00"}, {"name": "tlp:amber", "colour": "#FFC000"}]);
    let data = SimData::from_events([event(
        "20",
        "x",
        "2026-01-01",
        json!([{"name": "tlp:amber", "colour": "#FFC000"}, {"name": "misp-galaxy:threat-actor=\"Sofacy\"", "colour": "#0088cc"}]),
        json!([a]),
    )]);
    let attrs = lookup(&data, "185.2.2.2");
    let agg = aggregate(&attrs);
    let levels: Vec<(&str, &str)> = agg[0]
        .tags
        .iter()
        .map(|t| (t.name.as_str(), t.level))
        .collect();
    assert_eq!(
        levels,
        [
            ("malware", "attribute"),
            ("tlp:amber", "attribute"),
            ("misp-galaxy:threat-actor=\"Sofacy\"", "event")
        ]
    );
    // 3 (network) + 7 (malware) + 5 (amber, once) + 2 (to_ids) = 17, capped at 10.
    assert_eq!(agg[0].threat_score, 10);
    let s = summarise(&agg, &events_of(&attrs));
    assert_eq!(s.attribution, ["Sofacy"]);
    assert_eq!(s.threat_types, ["amber", "malware"]);
}

#[test]
fn no_attributes_no_event_and_recommendation_bands() {
    let parsed = alert();
    let ctx = AlertContext::from_alert(parsed);
    assert!(enrich(&ctx, &hit("185.3.3.3"), &[], chrono::Utc::now()).is_none());
    assert_eq!(recommendations(0), None);
    assert_eq!(recommendations(1).unwrap().priority, "low");
    assert_eq!(recommendations(4).unwrap().priority, "low");
    assert_eq!(recommendations(5).unwrap().priority, "medium");
    assert_eq!(recommendations(7).unwrap().priority, "medium");
    assert_eq!(recommendations(8).unwrap().priority, "high");
    assert_eq!(recommendations(10).unwrap().priority, "high");
}

#[test]
fn sightings_summarised() {
    let mut a = ip_attr("1", "ip-dst", "185.4.4.4", "1700000000");
    a["Sighting"] = json!([
        {"date_sighting": "1700000500", "source": "", "Organisation": {"name": "ORGNAME"}},
        {"date_sighting": "1700000100", "source": "honeypot"},
        {"date_sighting": "1700000900", "source": "honeypot"}
    ]);
    let data = SimData::from_events([event("30", "x", "2026-01-01", json!([]), json!([a]))]);
    let agg = aggregate(&lookup(&data, "185.4.4.4"));
    let s = &agg[0].sightings;
    assert_eq!(s.count, 3);
    assert_eq!(s.sources, ["ORGNAME", "honeypot"]);
    assert_eq!(
        s.first_seen.as_deref(),
        Some("2023-11-14T22:15:00.000+0000")
    );
    assert_eq!(s.last_seen.as_deref(), Some("2023-11-14T22:28:20.000+0000"));
}

#[test]
fn size_guard_keeps_highest_scores_within_one_datagram() {
    // One IP in 3000 attributes across 300 events, with correlations.
    let events: Vec<Value> = (0..300)
        .map(|e| {
            let tags = if e % 3 == 0 {
                json!([{"name": "tlp:red"}])
            } else {
                json!([])
            };
            let attrs: Vec<Value> = (0..10)
                .map(|i| {
                    let mut a = ip_attr(
                        &format!("{e}{i:02}"),
                        "ip-dst",
                        "185.5.5.5",
                        &format!("{}", 1_700_000_000 + e * 10 + i),
                    );
                    a["comment"] = json!(format!("sample {e} {i} {}", "x".repeat(40)));
                    a
                })
                .collect();
            event(
                &format!("{}", 1000 + e),
                &format!("event {e} {}", "y".repeat(60)),
                "2026-01-01",
                tags,
                json!(attrs),
            )
        })
        .collect();
    let data = SimData::from_events(events);
    // Correlations among 3000 attributes would be 9 million entries; give
    // each attribute a few so the first shrinking step has work to do.
    let mut attrs = lookup_with(&data, "185.5.5.5", false);
    assert_eq!(attrs.len(), 3000);
    for a in &mut attrs {
        a.related = (0..3)
            .map(|i| crate::lookup::model::Related {
                kind: "ip-dst".into(),
                value: "185.5.5.5".into(),
                category: "Network activity".into(),
                relation: Some(format!("r{i}")),
            })
            .collect();
    }
    let parsed = alert();
    let ctx = AlertContext::from_alert(parsed);
    let mut ev = enrich(&ctx, &hit("185.5.5.5"), &attrs, chrono::Utc::now()).unwrap();
    let total = ev.misp_data.attributes.len();
    let bytes = serialize_within(&mut ev, 65535 - 40).unwrap();
    assert!(bytes.len() <= 65535 - 40);
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    let s = &v["misp_data"]["summary"];
    assert_eq!(s["truncated"], true);
    assert_eq!(s["total_attributes"], total);
    let kept = v["misp_data"]["attributes"].as_array().unwrap();
    assert_eq!(
        s["omitted_attributes"].as_u64().unwrap() as usize,
        total - kept.len()
    );
    assert!(!kept.is_empty());
    assert!(kept
        .iter()
        .all(|a| a["related_attributes"].as_array().unwrap().is_empty()));
    // tlp:red attributes (score 10) go first.
    assert!(kept.iter().all(|a| a["threat_score"] == 10));
    let named: BTreeSet<String> = kept
        .iter()
        .flat_map(|a| {
            a["associated_misp_event_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().unwrap().to_owned())
        })
        .collect();
    let events: BTreeSet<String> = v["misp_data"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(named, events);
}

/// The recorded MISP answer from the corpus: three md5 attributes, same
/// value, three events, with inherited galaxy tags and sightings.
#[test]
fn corpus_reputation_response() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/corpus/misp/restsearch/reputation_command_response.json");
    let Ok(body) = std::fs::read(&path) else {
        eprintln!("SKIPPED corpus_reputation_response: {} not found (../shared is beside the checkout in CI)", path.display());
        return;
    };
    let attrs = parse_response(&body).unwrap();
    assert_eq!(attrs.len(), 3);
    let agg = aggregate(&attrs);
    let ids: Vec<&String> = agg
        .iter()
        .flat_map(|a| &a.associated_misp_event_ids)
        .collect();
    assert_eq!(ids.len(), 3);
    let first = &agg[0];
    assert!(first
        .tags
        .iter()
        .any(|t| t.name == "Test1" && t.level == "attribute"));
    assert!(first
        .tags
        .iter()
        .any(|t| t.name == "misp-galaxy:malpedia=Loki" && t.level == "event"));
    assert_eq!(first.sightings.count, 1);
    assert_eq!(first.sightings.sources, ["ORGNAME"]);
    assert!(!first.related_attributes.is_empty());
    let events = events_of(&attrs);
    assert_eq!(events[0].org_name, "CERT.be");
}

/// The spliced fast path and the full path give the same JSON.
#[test]
fn spliced_event_equals_full_event() {
    let mut a = ip_attr("1", "ip-src", "185.6.6.6", "1700000000");
    a["Sighting"] = json!([{"date_sighting": "1700000500", "source": "s"}]);
    let data = SimData::from_events([
        event(
            "40",
            "x",
            "2026-01-01",
            json!([{"name": "tlp:red"}]),
            json!([a]),
        ),
        event(
            "41",
            "y",
            "2026-02-01",
            json!([]),
            json!([ip_attr("2", "ip-dst|port", "185.6.6.6|443", "1700000001")]),
        ),
    ]);
    let attrs = lookup(&data, "185.6.6.6");
    let plain = crate::lookup::LookupResult::new(attrs.clone());
    // What the mirror adds: a second server, a network, a partial answer.
    let mut marked = crate::lookup::LookupResult::new(attrs.clone());
    marked.server = Some("second".into());
    marked.server_position = 1;
    marked.matched_network = Some("185.6.6.0/24".parse().unwrap());
    marked.matched_domain = Some("evil.com".into());
    marked.partial = true;
    marked.truncated = true;
    let now = chrono::Utc::now();
    let domain = Occurrence {
        observable: crate::observable::Observable::Domain("cdn.evil.com".into()),
        direction: Direction::Unknown,
        field_path: "data.win.eventdata.queryName".into(),
        raw_context: "cdn.evil.com".into(),
    };
    // The written-by-hand path against serde on alerts of every shape:
    // the demo's, a numeric rule id, no agent ip and no decoder, strings
    // that need escaping, and `data` values of every JSON type.
    let odd = json!({"timestamp":"2026-11-22T09:58:02.114+0000","id":"1.2",
        "rule":{"level":3.5,"description":"quote \" back\\slash \u{1} tab\t é ☃","id":5712,"groups":["a",1,null,{"x":[true]}]},
        "agent":{"id":"002","name":"ağent \"x\""},"manager":{"name":"only\ta tab"},"location":"C:\\logs\n",
        "data":{"srcip":"185.6.6.6","n":-1.25e3,"b":false,"z":null,"arr":[1,"2",{"3":4}],"obj":{"k":"\u{1f}"},"rule":"clash","\"q":"k"}})
    .to_string();
    let lines: Vec<String> = std::iter::once(odd)
        .chain(crate::demo::DEMO_ALERTS.lines().map(str::to_owned))
        .collect();
    let mut shapes = 0;
    for (answer, occurrence) in [&plain, &marked]
        .into_iter()
        .flat_map(|a| [(a, hit("185.6.6.6")), (a, domain.clone())])
    {
        let prepared = prepare(answer).unwrap();
        for line in
            std::iter::once(&serde_json::to_string(&alert::Json(alert())).unwrap()).chain(&lines)
        {
            let parsed = crate::alert::parse_leaked(line).unwrap();
            let ctx = AlertContext::from_alert(parsed);
            let mut full = enrich_answer(&ctx, &occurrence, answer, &attrs, now).unwrap();
            let full_bytes = serialize_within(&mut full, 65_000).unwrap();
            let mut out = b"prefix".to_vec();
            assert!(write_spliced(
                &ctx,
                &occurrence,
                answer,
                &prepared,
                &wazuh_time(now),
                65_000,
                &mut out
            ));
            assert_eq!(
                String::from_utf8_lossy(&full_bytes),
                String::from_utf8_lossy(&out[6..]),
                "byte for byte, key order included, for {line}"
            );
            shapes += 1;
        }
    }
    assert!(shapes >= 12);
    let domain_event: serde_json::Value = {
        let ctx = AlertContext::from_alert(alert());
        let ev = enrich_answer(&ctx, &domain, &marked, &attrs, now).unwrap();
        serde_json::to_value(&ev).unwrap()
    };
    assert!(domain_event.get("detected_ip").is_none());
    assert_eq!(
        domain_event["detected_observable"],
        json!({"type": "domain", "value": "cdn.evil.com", "direction": "unknown",
               "field_path": "data.win.eventdata.queryName", "raw_context": "cdn.evil.com",
               "matched_domain": "evil.com"})
    );
    let marked_event: serde_json::Value = {
        let ctx = AlertContext::from_alert(alert());
        let ev = enrich_answer(&ctx, &hit("185.6.6.6"), &marked, &attrs, now).unwrap();
        serde_json::to_value(&ev).unwrap()
    };
    assert_eq!(marked_event["misp_data"]["server"], "second");
    assert_eq!(marked_event["misp_data"]["summary"]["partial"], true);
    assert_eq!(
        marked_event["detected_ip"]["matched_network"],
        "185.6.6.0/24"
    );
    let prepared = prepare(&plain).unwrap();
    let parsed = alert();
    let ctx = AlertContext::from_alert(parsed);
    let mut out = b"prefix".to_vec();
    let before = out.clone();
    assert!(!write_spliced(
        &ctx,
        &hit("185.6.6.6"),
        &plain,
        &prepared,
        &wazuh_time(now),
        100,
        &mut out
    ));
    assert_eq!(out, before, "a declined write leaves the buffer as it was");
}

#[test]
fn needs_escape_finds_every_escaped_byte_at_every_position() {
    // Lengths around the 16-byte blocks: in a block, in the tail, both.
    for len in 0..40 {
        let plain = vec![b'a'; len];
        assert!(!super::needs_escape(&plain), "plain text of {len} bytes");
        for at in 0..len {
            for special in [b'"', b'\\', 0x00, 0x1f, b'\n'] {
                let mut s = plain.clone();
                s[at] = special;
                assert!(super::needs_escape(&s), "{special:#x} at {at} of {len}");
            }
            // Bytes just outside the escaped set, including UTF-8 bytes.
            for fine in [0x20, b'!', b'#', b'[', b']', 0x7f, 0xc3, 0xff] {
                let mut s = plain.clone();
                s[at] = fine;
                assert!(!super::needs_escape(&s), "{fine:#x} at {at} of {len}");
            }
        }
    }
}
