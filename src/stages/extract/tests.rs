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
fn a_keyed_direction_wins_over_an_earlier_free_text_one() {
    let alert = json!({"rule":{"id":"5716"},"full_log":"Failed password for x from 49.88.112.73 port 22","data":{"srcip":"49.88.112.73"}});
    assert_eq!(
        run(&alert),
        vec![hit("49.88.112.73", "source", "data.srcip")]
    );
}

#[test]
fn a_free_text_direction_wins_over_an_earlier_unknown_one() {
    let alert = json!({"data":{"peer":"49.88.112.73"},"full_log":"Failed password for x from 49.88.112.73 port 22"});
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

/// (kind, value, field_path) of one observable.
type Found = (&'static str, String, String);

/// (kind, value, field_path) of every observable an alert yields.
fn kinds(alert: &Value) -> Vec<Found> {
    let ex = Extractor::with_defaults();
    let mut out = Vec::new();
    ex.extract(node(alert), &mut Scratch::default(), &mut out);
    out.into_iter()
        .map(|h| {
            (
                h.observable.kind().as_str(),
                h.observable.to_string(),
                h.field_path,
            )
        })
        .collect()
}

fn k(kind: &'static str, v: &str, p: &str) -> Found {
    (kind, v.to_string(), p.to_string())
}

#[test]
fn every_kind_by_its_rules() {
    let md5 = "5d41402abc4b2a76b9719d911017c592";
    let sha1 = "a94a8fe5ccb19ba61c4c0873d391e987982fbbd3";
    let sha256 = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
    let cases: Vec<(Value, Vec<Found>)> = vec![
        // Sysmon 22: the query name is a domain.
        (
            json!({"data":{"win":{"eventdata":{"queryName":"Cdn.Evil-Domain.com","queryResults":"type: 5 x;::ffff:185.220.101.9;"}}}}),
            vec![
                k(
                    "domain",
                    "cdn.evil-domain.com",
                    "data.win.eventdata.queryName",
                ),
                k("ip", "185.220.101.9", "data.win.eventdata.queryResults"),
            ],
        ),
        // Traps: private names, reverse lookups, filenames.
        (json!({"data":{"queryName":"wpad"}}), vec![]),
        (json!({"data":{"queryName":"dc01.corp.local"}}), vec![]),
        (json!({"data":{"hostname":"nas.home.arpa"}}), vec![]),
        (
            json!({"data":{"query":"17.85.215.91.in-addr.arpa"}}),
            vec![],
        ),
        (json!({"data":{"query":"localhost"}}), vec![]),
        (
            json!({"full_log":"reading auth.log and config.php from index.html"}),
            vec![],
        ),
        (
            json!({"full_log":"commit 5d41402abc4b2a76b9719d911017c592a94a8fe5 merged"}),
            vec![],
        ),
        (json!({"full_log":format!("md5={md5}")}), vec![]),
        (
            json!({"data":{"fileVersion":"1.0.0.1","os":{"version":"8.8.8.8"}}}),
            vec![],
        ),
        // Domain keys: trailing dot and Host-header port dropped.
        (
            json!({"data":{"rrname":"evil.com."}}),
            vec![k("domain", "evil.com", "data.rrname")],
        ),
        (
            json!({"data":{"http":{"host":"evil.com:8080"}}}),
            vec![k("domain", "evil.com", "data.http.host")],
        ),
        (
            json!({"data":{"tls":{"sni":"bücher.de"}}}),
            vec![k("domain", "xn--bcher-kva.de", "data.tls.sni")],
        ),
        (
            json!({"data":{"server_name":"x.evil.co.uk"}}),
            vec![k("domain", "x.evil.co.uk", "data.server_name")],
        ),
        // domain|ip values.
        (
            json!({"data":{"pair":"evil.com|185.220.101.7"}}),
            vec![
                k("ip", "185.220.101.7", "data.pair"),
                k("domain", "evil.com", "data.pair"),
            ],
        ),
        // Hashes by key, either case, empty-input and zero values dropped.
        (
            json!({"data":{"virustotal":{"source":{"md5":md5.to_uppercase(),"sha1":sha1}},"fileHashSha256":sha256}}),
            vec![
                k("md5", md5, "data.virustotal.source.md5"),
                k("sha1", sha1, "data.virustotal.source.sha1"),
                k("sha256", sha256, "data.fileHashSha256"),
            ],
        ),
        (
            json!({"data":{"md5":"d41d8cd98f00b204e9800998ecf8427e","sha1":"0000000000000000000000000000000000000000"}}),
            vec![],
        ),
        (
            json!({"data":{"md5sum":md5,"checksum":sha1,"hashValue":sha256,"imphash":md5}}),
            vec![],
        ),
        // Sysmon Hashes.
        (
            json!({"data":{"win":{"eventdata":{"hashes":format!("SHA1={},MD5={},SHA256={},IMPHASH={}", sha1.to_uppercase(), md5.to_uppercase(), sha256.to_uppercase(), md5.to_uppercase())}}}}),
            vec![
                k("sha1", sha1, "data.win.eventdata.hashes"),
                k("md5", md5, "data.win.eventdata.hashes"),
                k("sha256", sha256, "data.win.eventdata.hashes"),
            ],
        ),
        // syscheck: only the _after hashes, the rest of syscheck skipped.
        (
            json!({"syscheck":{"path":"/tmp/185.1.1.1","md5_before":md5,"md5_after":"e4d909c290d0fb1ca068ffaddf22cbd0","sha256_after":sha256}}),
            vec![
                k(
                    "md5",
                    "e4d909c290d0fb1ca068ffaddf22cbd0",
                    "syscheck.md5_after",
                ),
                k("sha256", sha256, "syscheck.sha256_after"),
            ],
        ),
        // URLs in free text, with their hosts.
        (
            json!({"full_log":"GET hxxp://evil[.]com/a.sh?x=1 (see http://10.0.0.5/x)."}),
            vec![
                k("url", "http://evil.com/a.sh?x=1", "full_log"),
                k("domain", "evil.com", "full_log"),
                k("url", "http://10.0.0.5/x", "full_log"),
            ],
        ),
        (
            json!({"data":{"url":"http://wpad.corp.local/wpad.dat"}}),
            vec![k("url", "http://wpad.corp.local/wpad.dat", "data.url")],
        ),
        (
            json!({"data":{"url":"https://accounts.google.com@login-verify.top/s"}}),
            vec![
                k(
                    "url",
                    "https://accounts.google.com@login-verify.top/s",
                    "data.url",
                ),
                k("domain", "login-verify.top", "data.url"),
            ],
        ),
        // Split fields: Suricata and Zeek.
        (
            json!({"data":{"http":{"hostname":"evil.com","url":"/gate.php?id=1","status":200}}}),
            vec![
                k("domain", "evil.com", "data.http.hostname"),
                k("url", "http://evil.com/gate.php?id=1", "data.http.url"),
            ],
        ),
        (
            json!({"data":{"uri":"/x.exe","host":"dl.evil.com"}}),
            vec![
                k("url", "http://dl.evil.com/x.exe", "data.uri"),
                k("domain", "dl.evil.com", "data.uri"),
            ],
        ),
        (
            json!({"data":{"http":{"hostname":"proxy.example.com","url":"http://evil.com/p"}}}),
            vec![
                k("domain", "proxy.example.com", "data.http.hostname"),
                k("url", "http://evil.com/p", "data.http.url"),
                k("domain", "evil.com", "data.http.url"),
            ],
        ),
        // Skip paths hold for every kind.
        (
            json!({"agent":{"name":"evil.com"},"predecoder":{"hostname":"evil.com"},"location":"http://evil.com/x"}),
            vec![],
        ),
    ];
    for (alert, want) in cases {
        assert_eq!(kinds(&alert), want, "alert: {alert}");
    }
}

#[test]
fn excluded_domains_cover_subdomains_and_url_hosts() {
    let ex = Extractor::with_defaults().excluding_domains(&["Example.org".into()]);
    let alert = json!({"data":{"query":"www.example.org","url":"http://example.org/x","other":"http://evil.com/y"}});
    let mut out = Vec::new();
    ex.extract(node(&alert), &mut Scratch::default(), &mut out);
    let got: Vec<String> = out.iter().map(|h| h.observable.to_string()).collect();
    assert_eq!(got, ["http://evil.com/y", "evil.com"]);
}

#[test]
fn other_kinds_have_no_direction() {
    let alert = json!({"data":{"srcdomain":"x","dsthost":"evil.com"}});
    let ex = Extractor::with_defaults();
    let mut out = Vec::new();
    ex.extract(node(&alert), &mut Scratch::default(), &mut out);
    assert!(out.iter().all(|h| h.direction == Direction::Unknown));
}

mod domains {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any name under a real suffix, in a field with a domain key, is
        /// found; under a private (unlisted) suffix it is not.
        #[test]
        fn a_domain_key_yields_exactly_the_real_names(
            labels in prop::collection::vec("[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", 1..4),
            real in prop::sample::select(vec!["com", "net", "org", "co.uk", "de", "io", "top", "com.br"]),
            private in prop::sample::select(vec!["local", "lan", "internal", "corp", "home.arpa", "localdomain", "intranet"]),
            key in prop::sample::select(DOMAIN_KEYS.to_vec()),
        ) {
            let name = labels.join(".");
            let public = format!("{name}.{real}");
            let alert = json!({"data": {key: public.clone()}});
            prop_assert_eq!(kinds(&alert), vec![k("domain", &public, &format!("data.{key}"))]);
            let hidden = format!("{name}.{private}");
            let alert = json!({"data": {key: hidden}});
            prop_assert_eq!(kinds(&alert), vec![]);
        }
    }
}

#[test]
fn every_named_key_passes_the_last_byte_filter() {
    let hash_keys = [
        "md5",
        "sha1",
        "sha256",
        "hash",
        "hashes",
        "fileHashSha256",
        "TargetSha1",
        "MD5",
    ];
    for k in DOMAIN_KEYS.iter().copied().chain(hash_keys).chain([
        "version",
        "fileVersion",
        "server_name",
    ]) {
        assert!(super::may_name_a_kind(k), "{k}");
    }
}
