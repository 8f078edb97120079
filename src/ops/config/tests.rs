use super::*;

const MINIMAL: &str = r#"
[misp]
url = "https://misp.example.org"
api_key = "abcdef"
"#;

fn load(text: &str) -> Result<Config, ConfigError> {
    load_str(text, Vec::<(String, String)>::new())
}

#[test]
fn defaults_fill_in() {
    let c = load(MINIMAL).unwrap();
    assert_eq!(
        *c.input.alerts_file,
        PathBuf::from("/var/ossec/logs/alerts/alerts.json")
    );
    assert_eq!(c.filter.min_level, 6);
    assert_eq!(c.filter.exclude_rule_ids, ["31530", "31531"]);
    assert!(c.misp.verify_tls);
    assert_eq!(c.dedup.window_secs, 3600);
    assert_eq!(*c.pipeline.channel_capacity, 1024);
    assert_eq!(*c.input.start_position, StartPosition::End);
}

#[test]
fn unknown_keys_are_named() {
    let e = load(&format!("{MINIMAL}\n[input]\nalerts_fil = \"/x\"\n")).unwrap_err();
    assert_eq!(e.key, "input.alerts_fil", "{e}");
    let e = load(&format!("{MINIMAL}\n[bogus]\nx = 1\n")).unwrap_err();
    assert_eq!(e.key, "bogus", "{e}");
}

#[test]
fn wrong_types_and_values_are_named() {
    let e = load("[misp]\nurl = \"https://m\"\napi_key = \"k\"\ntimeout_secs = \"soon\"\n")
        .unwrap_err();
    assert!(
        e.key.contains("timeout_secs") || e.reason.contains("timeout_secs"),
        "{e}"
    );
    let e = load("[misp]\nurl = \"ftp://x\"\napi_key = \"k\"\n").unwrap_err();
    assert_eq!(e.key, "misp.url");
    let e = load("[misp]\napi_key = \"k\"\n").unwrap_err();
    assert_eq!(e.key, "misp.url");
    let e = load(&format!(
        "{MINIMAL}\n[filter]\nexclude_ips = [\"not-an-ip\"]\n"
    ))
    .unwrap_err();
    assert_eq!(e.key, "filter.exclude_ips");
    let e = load(&format!(
        "{MINIMAL}\n[input]\nstart_position = \"middle\"\n"
    ))
    .unwrap_err();
    assert!(e.to_string().contains("start_position"), "{e}");
    let e = load(&format!("{MINIMAL}\n[pipeline]\nchannel_capacity = 0\n")).unwrap_err();
    assert_eq!(e.key, "pipeline.channel_capacity");
}

#[test]
fn environment_overrides() {
    let env = vec![
        ("WAZUH_MISP__FILTER__MIN_LEVEL".to_string(), "9".to_string()),
        (
            "WAZUH_MISP__FILTER__EXCLUDE_RULE_IDS".to_string(),
            "1,2,3".to_string(),
        ),
        (
            "WAZUH_MISP__MISP__URL".to_string(),
            "https://other.example".to_string(),
        ),
        ("UNRELATED".to_string(), "x".to_string()),
    ];
    let c = load_str(MINIMAL, env).unwrap();
    assert_eq!(c.filter.min_level, 9);
    assert_eq!(c.filter.exclude_rule_ids, ["1", "2", "3"]);
    assert_eq!(c.misp.url, "https://other.example");
}

#[test]
fn secret_never_prints() {
    let c = load(MINIMAL).unwrap();
    let dbg = format!("{c:?}");
    assert!(!dbg.contains("abcdef"), "{dbg}");
    let json = serde_json::to_string(&c).unwrap();
    assert!(!json.contains("abcdef"), "{json}");
}

#[test]
fn changed_keys_lists_leaves() {
    let a = load(MINIMAL).unwrap();
    let mut b = a.clone();
    b.filter.min_level = 3;
    b.misp.api_key = Some(Secret::new("other"));
    assert_eq!(a.changed_keys(&b), ["filter.min_level", "misp.api_key"]);
}

/// The shipped config documents every key with its default: it must parse
/// into exactly `Config::default()` once a URL and key are given.
#[test]
fn shipped_config_matches_defaults() {
    let text = include_str!("../../../config/wazuh-misp.toml").replace(
        "url = \"\"",
        "url = \"https://misp.example.org\"\napi_key = \"k\"",
    );
    let c = load(&text).unwrap();
    let mut want = Config::default();
    want.misp.url = "https://misp.example.org".into();
    want.misp.api_key = Some(Secret::new("k"));
    assert_eq!(c, want);
}

#[test]
fn url_userinfo_is_redacted() {
    use super::redact_url;
    assert_eq!(
        redact_url("https://admin:s3cret@misp.example/"),
        "https://misp.example/"
    );
    assert_eq!(
        redact_url("https://token@misp.example"),
        "https://misp.example/"
    );
    assert_eq!(
        redact_url("https://misp.example:8443/x"),
        "https://misp.example:8443/x"
    );
    assert_eq!(redact_url("not a url:s3cret@host"), "<redacted>@host");
    let cfg = MispConfig {
        url: "https://admin:s3cret@misp.example/".into(),
        ..MispConfig::default()
    };
    assert!(!format!("{cfg:?}").contains("s3cret"));
}

#[test]
fn the_wazuh_line_is_found_and_sets_the_edges_defaults() {
    use super::{WazuhLine, WazuhVersion};
    let hosts: [(&[&str], WazuhLine); 4] = [
        (&["/var/ossec"], WazuhLine::V4),
        (&["/var/wazuh-manager"], WazuhLine::V5),
        (&["/var/ossec", "/var/wazuh-manager"], WazuhLine::V4),
        (&[], WazuhLine::V4),
    ];
    for (roots, line) in hosts {
        let exists = |p: &std::path::Path| roots.iter().any(|r| std::path::Path::new(r) == p);
        assert_eq!(WazuhVersion::Auto.resolve(exists), line, "{roots:?}");
        assert_eq!(WazuhVersion::V5.resolve(exists), WazuhLine::V5);
        assert_eq!(WazuhVersion::V4.resolve(exists), WazuhLine::V4);
    }
    let base = "[misp]\nurl = \"https://m.example\"\napi_key = \"k\"\n";
    let on5 = super::load_str(&format!("{base}[wazuh]\nversion = \"5\"\n"), []).unwrap();
    assert_eq!(
        on5.input.alerts_file.as_path(),
        std::path::Path::new(super::WAZUH5_EVENTS)
    );
    assert_eq!(
        on5.output.queue_socket.as_path(),
        std::path::Path::new(super::WAZUH5_QUEUE)
    );
    // Set by hand, a path stays.
    let set = super::load_str(
        &format!("{base}[wazuh]\nversion = \"5\"\n[output]\nqueue_socket = \"/tmp/q\"\n"),
        [],
    )
    .unwrap();
    assert_eq!(
        set.output.queue_socket.as_path(),
        std::path::Path::new("/tmp/q")
    );
    let on4 = super::load_str(&format!("{base}[wazuh]\nversion = \"4\"\n"), []).unwrap();
    assert_eq!(
        on4.input.alerts_file.as_path(),
        std::path::Path::new(super::WAZUH4_ALERTS)
    );
    let bad = super::load_str(&format!("{base}[wazuh]\nversion = \"6\"\n"), []).unwrap_err();
    assert!(bad.to_string().contains("wazuh.version"), "{bad}");
}
