//! An alert line as the workers see it: JSON parse, filter, IP extraction.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wazuh_misp::extract::{is_public, Extractor, Scratch};
use wazuh_misp::filter::AlertFilter;

fuzz_target!(|data: &[u8]| {
    // As the tailer does: only UTF-8 lines reach the parser.
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    let mut parser = wazuh_misp::alert::Parser::default();
    let Ok(tape) = parser.parse(line) else {
        return;
    };
    let alert = tape.as_value();
    let filter = AlertFilter { min_level: 0, exclude_rule_ids: vec![] };
    let _ = filter.check(&wazuh_misp::alert::Fields::of(alert));
    let mut hits = Vec::new();
    Extractor::with_defaults().extract(alert, &mut Scratch::default(), &mut hits);
    for (i, h) in hits.iter().enumerate() {
        assert!(is_public(h.as_ip().unwrap()));
        assert!(hits[..i].iter().all(|o| o.as_ip().unwrap() != h.as_ip().unwrap()), "an IP is reported once");
        assert!(h.raw_context.chars().count() <= 256);
    }
});
