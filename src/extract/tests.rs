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
        .map(|h| (h.ip.to_string(), h.direction.as_str(), h.field_path))
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
    let ips: Vec<_> = out.iter().map(|h| h.ip.to_string()).collect();
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
