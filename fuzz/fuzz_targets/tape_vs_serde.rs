//! Differential: the simd-json tape against serde_json, and the spliced
//! event writer against serde's serialisation of the same event.
//!
//! Input: an alert line, then a NUL, then the occurrence's field path and
//! raw context separated by a NUL (both arbitrary text).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wazuh_misp::enrich::{enrich, prepare, serialize_within, wazuh_time, write_spliced, AlertContext};
use wazuh_misp::lookup::model::parse_response;
use wazuh_misp::observable::{Direction, Observable, Occurrence};

const ANSWER: &str = r#"{"response":{"Attribute":[{"id":"1","event_id":"40","type":"ip-src","category":"Network activity","value":"185.6.6.6","to_ids":true,"uuid":"a-1","timestamp":"1700000000","Event":{"id":"40","uuid":"e-40","info":"x","date":"2026-01-01","threat_level_id":"1","analysis":"2","Orgc":{"name":"CIRCL"}},"Tag":[{"name":"tlp:red"}]}]}}"#;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |&b| b == 0);
    let Ok(line) = std::str::from_utf8(parts.next().unwrap_or_default()) else {
        return;
    };
    let text = |b: Option<&[u8]>| String::from_utf8_lossy(b.unwrap_or_default()).into_owned();
    let (field_path, raw_context) = (text(parts.next()), text(parts.next()));

    let mut parser = wazuh_misp::alert::Parser::default();
    let tape = parser.parse(line);
    let serde = serde_json::from_str::<serde_json::Value>(line);
    assert_eq!(
        tape.is_ok(),
        serde.is_ok(),
        "tape {:?} / serde {:?} disagree on {line:?}",
        tape.as_ref().err(),
        serde.as_ref().err()
    );
    let Ok(tape) = tape else {
        return;
    };
    let alert = tape.as_value();
    // Serialised back, the tape is serde's value: key order, duplicates
    // (first wins), numbers.
    let back: serde_json::Value =
        serde_json::from_str(&serde_json::to_string(&wazuh_misp::alert::Json(alert)).unwrap()).unwrap();
    assert_eq!(back, serde.unwrap());

    let attributes = parse_response(ANSWER.as_bytes()).unwrap();
    let prepared = prepare(&attributes, false).unwrap();
    let ctx = AlertContext::from_alert(alert);
    let hit = Occurrence {
        observable: Observable::Ip("185.6.6.6".parse().unwrap()),
        direction: Direction::Source,
        field_path,
        raw_context,
    };
    let now = chrono::DateTime::UNIX_EPOCH;
    let mut full = enrich(&ctx, &hit, &attributes, now).unwrap();
    let Some(full_bytes) = serialize_within(&mut full, 1 << 24) else {
        return;
    };
    let mut spliced = Vec::new();
    assert!(write_spliced(&ctx, &hit, &prepared, &wazuh_time(now), 1 << 24, &mut spliced));
    assert_eq!(
        String::from_utf8_lossy(&full_bytes),
        String::from_utf8_lossy(&spliced),
        "spliced and serde bytes differ"
    );
});
