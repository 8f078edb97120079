//! config/wazuh/misp_rules.xml: well-formed, ids unique and in our block,
//! and every field it names exists in the events we send.

use serde_json::Value;
use std::collections::HashSet;
use wazuh_misp::demo;
use wazuh_misp::output::frame;

const RULES: &str = include_str!("../config/wazuh/misp_rules.xml");

/// Dotted paths of every scalar (or array of scalars) in an event, as
/// Wazuh's JSON decoder would name them.
fn fields(v: &Value, prefix: &str, out: &mut HashSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                fields(x, &p, out);
            }
        }
        Value::Array(items) if items.iter().any(|i| i.is_object()) => {}
        _ => {
            out.insert(prefix.to_owned());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_parse_ids_are_unique_and_fields_exist() {
    let doc = roxmltree::Document::parse(RULES).expect("rules XML parses");
    let rules: Vec<roxmltree::Node> = doc
        .descendants()
        .filter(|n| n.has_tag_name("rule"))
        .collect();
    assert!(rules.len() >= 5);
    let mut ids = HashSet::new();
    for r in &rules {
        let id: u32 = r.attribute("id").unwrap().parse().unwrap();
        assert!(
            (100_000..=120_000).contains(&id),
            "{id} outside Wazuh's custom range"
        );
        assert!(
            !(100_620..=100_629).contains(&id),
            "{id} clashes with community MISP rules"
        );
        assert!((100_800..=100_829).contains(&id), "{id} outside our block");
        assert!(ids.insert(id), "duplicate id {id}");
        let level: u32 = r.attribute("level").unwrap().parse().unwrap();
        assert!(level <= 16);
    }
    for r in &rules {
        for parent in r.descendants().filter(|n| n.has_tag_name("if_sid")) {
            for p in parent.text().unwrap().split(',') {
                let p: u32 = p.trim().parse().unwrap();
                assert!(ids.contains(&p), "if_sid {p} is not one of ours");
            }
        }
    }
    let levels: Vec<(String, u32)> = rules
        .iter()
        .filter_map(|r| {
            let f = r.descendants().find(|n| {
                n.has_tag_name("field") && n.attribute("name") == Some("recommendations.priority")
            })?;
            Some((f.text()?.to_owned(), r.attribute("level")?.parse().ok()?))
        })
        .collect();
    assert_eq!(
        levels,
        [
            ("^high$".into(), 12),
            ("^medium$".into(), 10),
            ("^low$".into(), 7),
            ("^high$".into(), 12),
            ("^high$".into(), 12)
        ]
    );
    // Retro events take their own rules: above the live ones' level among
    // 100800's children, since Wazuh tries siblings by decreasing level.
    let level_of = |id: &str| -> u32 {
        rules
            .iter()
            .find(|r| r.attribute("id") == Some(id))
            .and_then(|r| r.attribute("level")?.parse().ok())
            .unwrap()
    };
    for (retro, live) in [("100817", "100801"), ("100818", "100812")] {
        assert!(
            level_of(retro) > level_of(live),
            "{retro} must be tried before {live}"
        );
    }
    // A child for each kind of observable, naming it.
    for kind in ["domain", "url", "md5", "sha1", "sha256"] {
        let rule = rules
            .iter()
            .find(|r| {
                r.descendants().any(|n| {
                    n.has_tag_name("field")
                        && n.attribute("name") == Some("detected_observable.type")
                        && n.text()
                            .is_some_and(|t| t.split('|').any(|a| a == format!("^{kind}$")))
                })
            })
            .unwrap_or_else(|| panic!("no rule for {kind}"));
        let description = rule
            .descendants()
            .find(|n| n.has_tag_name("description"))
            .and_then(|n| n.text())
            .unwrap();
        assert!(
            description.contains("$(detected_observable.value)"),
            "{kind}: {description}"
        );
    }

    // Every field the rules name exists in a real enriched event or error event.
    let outcome = demo::run_demo(demo::DEMO_ALERTS).await.unwrap();
    let mut known = HashSet::new();
    for d in &outcome.datagrams {
        let (_, _, msg) = frame::parse(d).unwrap();
        fields(&serde_json::from_slice(msg).unwrap(), "", &mut known);
    }
    let err: Value = serde_json::from_slice(&wazuh_misp::enrich::error_event(
        "auth",
        "denied",
        chrono::Utc::now(),
    ))
    .unwrap();
    fields(&err, "", &mut known);
    let summary: Value = serde_json::from_slice(&wazuh_misp::enrich::retro_summary_event(
        "misp",
        3,
        1000,
        12,
        chrono::Utc::now(),
    ))
    .unwrap();
    fields(&summary, "", &mut known);
    assert!(
        known.contains("retro_hunt.indicator_added"),
        "the demo shows a retro event"
    );
    let mut named = HashSet::new();
    for n in doc.descendants() {
        if n.has_tag_name("field") {
            named.insert(n.attribute("name").unwrap().to_owned());
        }
        if n.has_tag_name("description") {
            let text = n.text().unwrap_or("");
            for part in text.split("$(").skip(1) {
                named.insert(part.split(')').next().unwrap().to_owned());
            }
        }
    }
    for f in &named {
        assert!(
            known.contains(f),
            "rules name {f:?}, which no event carries"
        );
    }
}
