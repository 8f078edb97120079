//! Alert and MISP event shapes shared by the benchmarks: corpus-shaped, so
//! the numbers are about the data the daemon really sees.

use serde_json::{json, Value};

#[allow(dead_code)]
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

/// A Sysmon event 22 (DNS query) alert for `domain`, as Wazuh's
/// eventchannel decoder writes it.
#[allow(dead_code)]
pub fn dns_alert(seq: usize, rule: usize, domain: &str) -> String {
    format!(
        concat!(
            r#"{{"timestamp":"2026-11-22T10:03:02.311+0000","rule":{{"level":8,"description":"Sysmon - Event 22: DNS query","id":"{rule}","firedtimes":{seq},"mail":false,"groups":["sysmon","sysmon_event_22","windows"]}},"#,
            r#""agent":{{"id":"004","name":"WS-FIN-022","ip":"10.0.4.22"}},"manager":{{"name":"wazuh-manager"}},"id":"1763805782.{seq}","cluster":{{"name":"wazuh","node":"node01"}},"decoder":{{"name":"windows_eventchannel"}},"#,
            r#""data":{{"win":{{"system":{{"providerName":"Microsoft-Windows-Sysmon","eventID":"22","version":"5","level":"4","task":"22","channel":"Microsoft-Windows-Sysmon/Operational","computer":"WS-FIN-022.corp.example.local","systemTime":"2026-11-22T10:03:01.9876543Z","eventRecordID":"{seq}","severityValue":"INFORMATION"}},"#,
            r#""eventdata":{{"ruleName":"-","utcTime":"2026-11-22 10:03:01.976","processGuid":"{{4b5c6d7e-8f90-6543-1a00-000000000a00}}","processId":"6112","queryName":"{domain}","queryStatus":"0","queryResults":"::ffff:203.0.113.77;","image":"C:\\Windows\\System32\\rundll32.exe","user":"CORP\\j.doe"}}}},"bench_seq":{seq}}},"location":"EventChannel"}}"#
        ),
        rule = 92650 + rule,
        seq = seq,
        domain = domain
    )
}

/// A syscheck "integrity checksum changed" alert whose new content has
/// `sha256`.
#[allow(dead_code)]
pub fn syscheck_alert(seq: usize, rule: usize, sha256: &str) -> String {
    format!(
        concat!(
            r#"{{"timestamp":"2026-11-22T10:03:09.004+0000","rule":{{"level":7,"description":"Integrity checksum changed.","id":"{rule}","firedtimes":{seq},"mail":false,"groups":["ossec","syscheck","syscheck_entry_modified","syscheck_file"]}},"#,
            r#""agent":{{"id":"001","name":"web-01","ip":"10.0.1.50"}},"manager":{{"name":"wazuh-manager"}},"id":"1763805789.{seq}","cluster":{{"name":"wazuh","node":"node01"}},"#,
            r#""full_log":"File '/usr/local/bin/tool{seq}' modified\nMode: realtime\nChanged attributes: size,mtime,md5,sha1,sha256\n","#,
            r#""syscheck":{{"path":"/usr/local/bin/tool{seq}","mode":"realtime","size_before":"120","size_after":"4096","perm_after":"rwxr-xr-x","md5_before":"0cc175b9c0f1b6a831c399e269772661","md5_after":"92eb5ffee6ae2fec3ad71c777531578f","sha1_before":"86f7e437faa5a7fce15d1ddcb9eaeaea377667b8","sha1_after":"e9d71f5ee7c92d6dc9e92ffdad17b8bd49418f98","sha256_before":"ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb","sha256_after":"{sha256}","changed_attributes":["size","mtime","md5","sha1","sha256"],"event":"modified"}},"#,
            r#""decoder":{{"name":"syscheck_integrity_changed"}},"data":{{"bench_seq":{seq}}},"location":"syscheck"}}"#
        ),
        rule = 550 + rule * 1000,
        seq = seq,
        sha256 = sha256
    )
}

/// The MISP type a benchmark's known value is stored as, by its shape.
fn misp_type_of(value: &str) -> &'static str {
    if value.parse::<std::net::IpAddr>().is_ok() {
        "ip-src"
    } else if value.len() == 64 && value.bytes().all(|c| c.is_ascii_hexdigit()) {
        "sha256"
    } else {
        "domain"
    }
}

/// A MISP event holding every value in `known` (IPs, domains, sha256s).
#[allow(dead_code)]
pub fn event(known: &[String]) -> Value {
    let attrs: Vec<Value> = known
        .iter()
        .enumerate()
        .map(|(i, v)| json!({"id": i.to_string(), "type": misp_type_of(v), "category": "Network activity", "to_ids": true,
            "timestamp": "1763164800", "value": v, "uuid": format!("u{i}")}))
        .collect();
    json!({"Event": {"id": "1", "info": "bench", "date": "2026-11-15", "threat_level_id": "2", "analysis": "2",
        "Orgc": {"name": "BENCH"}, "Tag": [{"name": "tlp:green"}], "Attribute": attrs}})
}

/// The process's resident set now, in bytes.
#[allow(dead_code)]
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
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
