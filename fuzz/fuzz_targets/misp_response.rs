//! A MISP restSearch body: tolerant parse, aggregation, and the size guard.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wazuh_misp::enrich::{enrich, serialize_within, AlertContext};
use wazuh_misp::extract::{Direction, Occurrence};
use wazuh_misp::lookup::model::parse_response;

fuzz_target!(|data: &[u8]| {
    let Ok(attributes) = parse_response(data) else {
        return;
    };
    let mut parser = wazuh_misp::alert::Parser::default();
    let tape = parser
        .parse(r#"{"rule": {"id": "5712", "level": 10}, "agent": {"id": "001", "name": "a"}}"#)
        .unwrap();
    let alert = tape.as_value();
    let hit = Occurrence {
        observable: wazuh_misp::observable::Observable::Ip("185.1.1.1".parse().unwrap()),
        direction: Direction::Source,
        field_path: "data.srcip".into(),
        raw_context: String::new(),
    };
    let ctx = AlertContext::from_alert(alert);
    if let Some(mut ev) = enrich(&ctx, &hit, &attributes, chrono::DateTime::UNIX_EPOCH) {
        if let Some(bytes) = serialize_within(&mut ev, 65_000) {
            assert!(bytes.len() <= 65_000);
            serde_json::from_slice::<serde_json::Value>(&bytes).expect("we emit valid JSON");
        }
    }
});
