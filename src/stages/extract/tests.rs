use super::*;
use serde_json::{json, Value};

fn node(alert: &Value) -> Node<'static> {
    crate::alert::parse_leaked(&alert.to_string()).unwrap()
}

fn run(alert: &Value) -> Vec<(String, &'static str, String)> {
    let ex = Extractor::with_defaults();
    let mut out = Vec::new();
    ex.extract(node(alert), &mut Scratch::default(), &mut out);
    out.into_iter()
        .map(|h| (h.observable.to_string(), h.direction.as_str(), h.field_path))
        .collect()
}

fn hit(ip: &str, d: &'static str, p: &str) -> (String, &'static str, String) {
    (ip.to_string(), d, p.to_string())
}

#[test]
fn sshd_prefers_structured_direction_over_earlier_full_log() {
    let alert: Value = serde_json::from_str(
        r#"{"timestamp":"2020-04-17T00:17:53.159+0000","rule":{"level":10,"description":"sshd: brute force trying to get access to the system.","id":"5712"},
        "agent":{"id":"001","name":"web","ip":"52.1.1.1"},"manager":{"name":"m"},"id":"1.2",
        "full_log":"Apr 17 sshd[1]: Failed password for root 49.88.112.73 port 22",
        "decoder":{"name":"sshd"},"data":{"srcip":"49.88.112.73","srcuser":"root"},"location":"/var/log/secure"}"#,
    )
    .unwrap();
    assert_eq!(
        run(&alert),
        vec![hit("49.88.112.73", "source", "data.srcip")]
    );
}

#[test]
fn free_text_from_gives_source_before_structured_field() {
    let alert = json!({"rule":{"id":"5716"},"full_log":"Failed password for x from 49.88.112.73 port 22","data":{"srcip":"49.88.112.73"}});
    assert_eq!(run(&alert), vec![hit("49.88.112.73", "source", "full_log")]);
}

#[test]
fn skip_paths_are_whole_segments() {
    let alert = json!({
        "agent": {"ip": "8.8.4.4"},
        "manager": {"name": "9.9.9.9"},
        "cluster": {"node": "1.0.0.1"},
        "location": "93.184.216.34",
        "syscheck": {"path": "/x/185.1.1.1"},
        "rule": {"id": "1", "groups": ["185.2.2.2"], "description": "scan from 185.3.3.3"},
        "rules": "185.4.4.4",
        "data": {"id": "185.5.5.5"},
    });
    assert_eq!(
        run(&alert),
        vec![
            hit("185.3.3.3", "source", "rule.description"),
            hit("185.4.4.4", "unknown", "rules"),
            hit("185.5.5.5", "unknown", "data.id"),
        ]
    );
}

#[test]
fn generic_keys_use_parent() {
    let alert = json!({"data":{
        "source":{"ip":"185.220.101.1"},
        "destination":{"address":"185.220.101.2"},
        "aws":{"service":{"action":{"networkConnectionAction":{"remoteIpDetails":{"ipAddressV4":"185.220.101.3"}}}}},
        "id":{"orig_h":"185.220.101.4","resp_h":"185.220.101.5"},
        "aws2":{"resource":{"instanceDetails":{"networkInterfaces":[{"publicIp":"185.220.101.6"}]}}},
    }});
    assert_eq!(
        run(&alert),
        vec![
            hit("185.220.101.1", "source", "data.source.ip"),
            hit("185.220.101.2", "destination", "data.destination.address"),
            hit(
                "185.220.101.3",
                "unknown",
                "data.aws.service.action.networkConnectionAction.remoteIpDetails.ipAddressV4"
            ),
            hit("185.220.101.4", "source", "data.id.orig_h"),
            hit("185.220.101.5", "destination", "data.id.resp_h"),
            hit(
                "185.220.101.6",
                "unknown",
                "data.aws2.resource.instanceDetails.networkInterfaces[0].publicIp"
            ),
        ]
    );
}

#[test]
fn private_and_excluded_are_dropped_and_mapped_unwrapped() {
    let ex = Extractor::new(
        &[],
        &[],
        vec!["45.0.0.0/8".parse().unwrap(), "1.1.1.1/32".parse().unwrap()],
    );
    let alert = json!({"a":"10.0.0.1 192.168.1.1 45.1.2.3 1.1.1.1 ::ffff:185.9.9.9 64:ff9b::185.9.9.8 2001:db8::1 2606:4700::1111"});
    let mut out = Vec::new();
    ex.extract(node(&alert), &mut Scratch::default(), &mut out);
    let ips: Vec<_> = out.iter().map(|h| h.observable.to_string()).collect();
    assert_eq!(ips, ["185.9.9.9", "185.9.9.8", "2606:4700::1111"]);
}

#[test]
fn one_hit_per_ip_and_first_known_direction() {
    let alert = json!({"full_log":"185.1.1.1 then 185.1.1.1","data":{"x":"185.1.1.1","dstip":"185.1.1.1","srcip":"185.1.1.1"}});
    assert_eq!(
        run(&alert),
        vec![hit("185.1.1.1", "destination", "data.dstip")]
    );
}

#[test]
fn raw_context_is_cut_to_256_chars() {
    let long = format!("from 185.1.1.1 {}", "é".repeat(400));
    let ex = Extractor::with_defaults();
    let mut out = Vec::new();
    ex.extract(
        node(&json!({ "full_log": long })),
        &mut Scratch::default(),
        &mut out,
    );
    assert_eq!(out[0].raw_context.chars().count(), RAW_CONTEXT_CHARS);
}

#[test]
fn arrays_keep_their_key() {
    let alert = json!({"data":{"srcips":["8.8.8.8","10.0.0.1","9.9.9.9"]}});
    assert_eq!(
        run(&alert),
        vec![
            hit("8.8.8.8", "source", "data.srcips[0]"),
            hit("9.9.9.9", "source", "data.srcips[2]")
        ]
    );
}

/// The rule check before the rule tree: every rule against the whole path.
/// The tree must decide exactly as it did.
fn reference_status(skip: &[Vec<&str>], scan: &[Vec<&str>], keys: &[&str]) -> (Status, bool, bool) {
    let is_prefix =
        |r: &Vec<&str>| r.len() <= keys.len() && r.iter().zip(keys).all(|(a, b)| a == b);
    let extends = |r: &Vec<&str>| r.len() > keys.len() && r.iter().zip(keys).all(|(a, b)| a == b);
    let deeper_scan = scan.iter().any(extends);
    let deeper = deeper_scan || skip.iter().any(extends);
    if scan.iter().any(is_prefix) {
        return (Status::Scan, true, deeper);
    }
    if skip.iter().any(is_prefix) {
        return (Status::Skip, deeper_scan, deeper);
    }
    (Status::Scan, true, deeper)
}

#[test]
fn rule_tree_decides_as_checking_every_rule() {
    let alphabet = ["a", "b", "c"];
    let mut paths: Vec<Vec<&str>> = Vec::new();
    for len in 1..=3 {
        for n in 0..3usize.pow(len) {
            paths.push((0..len).map(|d| alphabet[n / 3usize.pow(d) % 3]).collect());
        }
    }
    // A small LCG: the same rule sets on every run.
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = |m: usize| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) as usize % m
    };
    for _ in 0..300 {
        let skip: Vec<Vec<&str>> = (0..next(5))
            .map(|_| paths[next(paths.len())].clone())
            .collect();
        let scan: Vec<Vec<&str>> = (0..next(4))
            .map(|_| paths[next(paths.len())].clone())
            .collect();
        let own =
            |rules: &[Vec<&str>]| -> Vec<String> { rules.iter().map(|r| r.join(".")).collect() };
        let ex = Extractor::new(&own(&skip), &own(&scan), Vec::new());
        for path in &paths {
            // The old walk: the rules are asked only while some rule reaches
            // deeper; below that, a node inherits its parent's status.
            let (mut status, mut below) = (Status::Scan, true);
            let mut cursor = RuleCursor::root(&ex.rules);
            for depth in 1..=path.len() {
                let (want_status, want_reachable, deeper) = if below {
                    reference_status(&skip, &scan, &path[..depth])
                } else {
                    (status, status == Status::Scan, false)
                };
                let (next_cursor, reachable) = cursor.step(path[depth - 1]);
                assert!(
                    next_cursor.status == want_status && reachable == want_reachable,
                    "skip {skip:?} scan {scan:?} at {:?}",
                    &path[..depth]
                );
                if !reachable {
                    break;
                }
                (status, below, cursor) = (want_status, deeper, next_cursor);
            }
        }
    }
}
