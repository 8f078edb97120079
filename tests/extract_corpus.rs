//! Extraction on real alerts (`../shared/corpus/alerts`) and a property test
//! of the token boundary rules.

mod common;

use proptest::prelude::*;
use std::net::IpAddr;
use wazuh_misp::extract::{is_public, scan, Extractor, IpText, Scratch};
use wazuh_misp::filter::AlertFilter;

#[test]
fn every_corpus_alert_is_processed_and_its_ips_check_out() {
    let Some(corpus) = common::corpus() else {
        return;
    };
    let ex = Extractor::with_defaults();
    let filter = AlertFilter {
        min_level: 0,
        exclude_rule_ids: vec![],
        ..AlertFilter::default()
    };
    let mut scratch = Scratch::default();
    let mut parser = wazuh_misp::alert::Parser::default();
    let (mut alerts, mut with_srcip, mut hits_total) = (0, 0, 0);
    let mut kinds = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(corpus.join("alerts")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for line in text.lines() {
            // The invalid sample is not JSON on purpose.
            let Ok(tape) = parser.parse(line) else {
                continue;
            };
            let alert = tape.as_value();
            alerts += 1;
            let _ = filter.check(&wazuh_misp::alert::Fields::of(alert));
            let mut hits = Vec::new();
            ex.extract(alert, &mut scratch, &mut hits);
            hits_total += hits.len();
            let mut seen = std::collections::HashSet::new();
            for h in &hits {
                *kinds.entry(h.observable.kind().as_str()).or_insert(0usize) += 1;
                if let Some(ip) = h.as_ip() {
                    assert!(
                        is_public(ip),
                        "{}: non-public {ip} in {}",
                        path.display(),
                        h.field_path
                    );
                }
                assert!(
                    seen.insert(h.observable.clone()),
                    "{}: {} reported twice",
                    path.display(),
                    h.observable
                );
                let syscheck_hash = h.field_path.starts_with("syscheck.")
                    && h.field_path.ends_with("_after")
                    && h.as_ip().is_none();
                for skipped in [
                    "agent",
                    "manager",
                    "cluster",
                    "location",
                    "syscheck",
                    "decoder",
                    "predecoder",
                ] {
                    assert!(
                        syscheck_hash
                            || (h.field_path != skipped
                                && !h.field_path.starts_with(&format!("{skipped}."))),
                        "{}: {} found under skipped {}",
                        path.display(),
                        h.observable,
                        h.field_path
                    );
                }
            }
            // A public data.srcip is always found, as a source.
            if let Some(src) = wazuh_misp::alert::str_at(alert, &["data", "srcip"]) {
                if let Ok(ip) = src.parse::<IpAddr>() {
                    if is_public(ip) {
                        with_srcip += 1;
                        let h = hits
                            .iter()
                            .find(|h| h.as_ip() == Some(ip))
                            .unwrap_or_else(|| panic!("{src} not found in {line}"));
                        assert_eq!(h.direction.as_str(), "source", "{src} in {line}");
                    }
                }
            }
            // The agent's own address is never reported unless the event
            // itself mentions it elsewhere.
            if let Some(agent_ip) = wazuh_misp::alert::str_at(alert, &["agent", "ip"]) {
                let elsewhere = {
                    let mut a = wazuh_misp::alert::to_json(alert);
                    a.as_object_mut().unwrap().remove("agent");
                    a.to_string().contains(agent_ip)
                };
                if !elsewhere {
                    assert!(
                        hits.iter().all(|h| h.observable.to_string() != agent_ip),
                        "agent ip reported: {line}"
                    );
                }
            }
        }
    }
    assert!(alerts > 3000, "read {alerts} alerts");
    assert!(with_srcip > 100, "{with_srcip} alerts with a public srcip");
    assert!(hits_total > 1000);
    // The corpus has VirusTotal's file hashes and Office 365's site URLs.
    for kind in ["ip", "url", "domain", "md5", "sha1"] {
        assert!(
            kinds.get(kind).is_some_and(|n| *n > 0),
            "no {kind} found: {kinds:?}"
        );
    }
}

/// The doc samples are real sshd alerts with real attacker addresses.
#[test]
fn doc_samples_yield_the_attackers_as_sources() {
    let Some(corpus) = common::corpus() else {
        return;
    };
    let text = std::fs::read_to_string(corpus.join("alerts/wazuh-doc-samples.jsonl")).unwrap();
    let ex = Extractor::with_defaults();
    let mut got = Vec::new();
    let mut parser = wazuh_misp::alert::Parser::default();
    for line in text.lines() {
        let tape = parser.parse(line).unwrap();
        let alert = tape.as_value();
        let mut hits = Vec::new();
        ex.extract(alert, &mut Scratch::default(), &mut hits);
        for h in hits {
            got.push((h.observable.to_string(), h.direction.as_str().to_owned()));
        }
    }
    got.sort();
    got.dedup();
    let want: Vec<(String, String)> = [
        "123.20.109.89",
        "198.98.60.141",
        "200.31.19.206",
        "222.186.30.76",
        "49.88.112.73",
        "49.88.112.76",
        "89.163.153.41",
    ]
    .iter()
    .map(|ip| (ip.to_string(), "source".to_string()))
    .collect();
    assert_eq!(got, want);
}

fn ipv4() -> impl Strategy<Value = String> {
    any::<[u8; 4]>().prop_map(|o| format!("{}.{}.{}.{}", o[0], o[1], o[2], o[3]))
}

fn ipv6() -> impl Strategy<Value = String> {
    any::<[u16; 8]>().prop_map(|s| std::net::Ipv6Addr::from(s).to_string())
}

/// Text that ends (or starts) with a character from a known class.
fn filler() -> impl Strategy<Value = String> {
    "[a-z ,;=()\\[\\]\"'-]{0,12}"
}

proptest! {
    /// An address between separators is found; glued to a letter, digit,
    /// `.` or `_` it is not.
    #[test]
    fn ipv4_found_exactly_when_boundaries_allow(
        ip in ipv4(),
        pre in filler(),
        post in filler(),
        left in prop::sample::select(vec![' ', '=', '(', '"', ',', 'a', '7', '.', '_', '/']),
        right in prop::sample::select(vec![' ', ')', '"', ',', ';', '5', 'x']),
    ) {
        let text = format!("{pre}{left}{ip}{right}{post}");
        let mut out = Vec::new();
        scan(&text, &mut out);
        let found = out.iter().any(|t| t.addr.to_string() == ip);
        let left_ok = !(left.is_ascii_alphanumeric() || left == '.' || left == '_' || left == '/');
        let right_ok = !right.is_ascii_digit();
        prop_assert_eq!(found, left_ok && right_ok, "text {:?}", text);
    }

    #[test]
    fn ipv6_found_exactly_when_boundaries_allow(
        ip in ipv6(),
        pre in filler(),
        post in filler(),
        left in prop::sample::select(vec![' ', '=', '(', '"', '[', 'g', '_']),
        right in prop::sample::select(vec![' ', ')', '"', ',', ']', 'z', '_']),
    ) {
        let text = format!("{pre}{left}{ip}{right}{post}");
        let mut out = Vec::new();
        scan(&text, &mut out);
        let want: IpAddr = ip.parse().unwrap();
        let found = out.iter().any(|t| t.addr == want);
        let left_ok = !(left.is_alphanumeric() || left == '_');
        let right_ok = !(right.is_alphanumeric() || right == '_');
        prop_assert_eq!(found, left_ok && right_ok, "text {:?}", text);
    }

    /// `IpText` writes exactly what `Display` writes, for both families
    /// (IPv4-mapped and compressed IPv6 forms included).
    #[test]
    fn ip_text_is_display(v4 in any::<[u8; 4]>(), v6 in any::<[u16; 8]>(), zeros in 0usize..8) {
        let v4 = IpAddr::from(v4);
        let text = IpText::new(v4);
        prop_assert_eq!(text.as_str(), v4.to_string());
        let mut groups = v6;
        groups[zeros..].iter_mut().take(3).for_each(|g| *g = 0);
        let v6 = IpAddr::from(groups);
        let text = IpText::new(v6);
        prop_assert_eq!(text.as_str(), v6.to_string());
    }

    /// Nothing panics, whatever the text.
    #[test]
    fn scan_never_panics(s in ".{0,200}") {
        let mut out = Vec::new();
        scan(&s, &mut out);
    }
}

/// Inputs that once crashed a fuzz target (`fuzz/regressions/`).
#[test]
fn fuzz_regressions_stay_fixed() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/alert_line");
    let ex = Extractor::with_defaults();
    let mut n = 0;
    let mut parser = wazuh_misp::alert::Parser::default();
    for entry in std::fs::read_dir(dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        // As the tailer does: only UTF-8 lines reach the parser.
        let text = std::str::from_utf8(&bytes).unwrap_or_default();
        if let Ok(tape) = parser.parse(text) {
            let alert = tape.as_value();
            let mut hits = Vec::new();
            ex.extract(alert, &mut Scratch::default(), &mut hits);
            n += 1;
        }
    }
    assert!(n > 0);
}

/// Alerts of every source that carries domains, URLs and hashes (Sysmon
/// 1/3/7/22, syscheck, Suricata dns/http/tls/fileinfo, Zeek dns/http/ssl,
/// Squid, a web access log, Office 365, VirusTotal) and the traps, in
/// alerts.json's format, each labelled with exactly the (kind, value,
/// field_path) it must yield (`tests/fixtures/observables/labels.json`).
#[test]
fn labelled_alerts_yield_exactly_their_observables() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/observables");
    let alerts = std::fs::read_to_string(dir.join("alerts.json")).unwrap();
    let labels: std::collections::HashMap<String, Vec<(String, String, String)>> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("labels.json")).unwrap()).unwrap();
    let ex = Extractor::with_defaults();
    let mut scratch = Scratch::default();
    let mut parser = wazuh_misp::alert::Parser::default();
    let mut checked = 0;
    let mut wrong = Vec::new();
    for line in alerts.lines() {
        let tape = parser.parse(line).unwrap();
        let alert = tape.as_value();
        let id = wazuh_misp::alert::str_at(alert, &["id"])
            .unwrap()
            .to_owned();
        let mut hits = Vec::new();
        ex.extract(alert, &mut scratch, &mut hits);
        let mut got: Vec<(String, String, String)> = hits
            .iter()
            .map(|h| {
                (
                    h.observable.kind().as_str().to_owned(),
                    h.observable.to_string(),
                    h.field_path.clone(),
                )
            })
            .collect();
        let mut want = labels[&id].clone();
        got.sort();
        want.sort();
        if got != want {
            let rule = wazuh_misp::alert::str_at(alert, &["rule", "description"]).unwrap_or("");
            wrong.push(format!("{id} ({rule}):\n  got  {got:?}\n  want {want:?}"));
        }
        checked += 1;
    }
    assert_eq!(checked, labels.len());
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
