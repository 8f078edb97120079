//! Alert and MISP event shapes shared by the benchmarks: corpus-shaped, so
//! the numbers are about the data the daemon really sees.

use serde_json::{json, Value};

pub const KEY: &str = "benchkey000000000000000000000000000000000";

/// A corpus-shaped sshd alert; `bench_seq` rides along in `data` and comes
/// back at the top level of the enriched event. Built by formatting rather
/// than through `serde_json::Value`, so the writer thread stays cheap and
/// does not steal CPU from the pipeline it measures.
#[allow(dead_code)] // Not every bench uses every shape.
pub fn alert(seq: usize, rule: usize, ip: &str, level: u32) -> String {
    format!(
        concat!(
            r#"{{"timestamp":"2026-11-22T09:58:02.114+0000","rule":{{"level":{level},"description":"sshd: brute force trying to get access to the system. Non existent user.","id":"{rule}","firedtimes":{seq},"mail":false,"groups":["syslog","sshd","authentication_failures"]}},"#,
            r#""agent":{{"id":"001","name":"web-01","ip":"10.0.1.50"}},"manager":{{"name":"wazuh-manager"}},"id":"1763805482.{seq}","cluster":{{"name":"wazuh","node":"node01"}},"#,
            r#""full_log":"Nov 22 09:58:01 web-01 sshd[22108]: Invalid user test from {ip} port 41220","decoder":{{"parent":"sshd","name":"sshd"}},"#,
            r#""data":{{"srcip":"{ip}","srcport":"41220","srcuser":"test","bench_seq":{seq}}},"location":"/var/log/auth.log"}}"#
        ),
        level = level,
        rule = 5712 + rule,
        seq = seq,
        ip = ip
    )
}

#[allow(dead_code)]
pub fn event(ips: &[String]) -> Value {
    let attrs: Vec<Value> = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| json!({"id": i.to_string(), "type": "ip-src", "category": "Network activity", "to_ids": true,
            "timestamp": "1763164800", "value": ip, "uuid": format!("u{i}")}))
        .collect();
    json!({"Event": {"id": "1", "info": "bench", "date": "2026-11-15", "threat_level_id": "2", "analysis": "2",
        "Orgc": {"name": "BENCH"}, "Tag": [{"name": "tlp:green"}], "Attribute": attrs}})
}

/// The process's peak RSS (VmHWM), in MB.
#[allow(dead_code)]
pub fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}
