//! Extraction over the corpus alerts, for profiling (`valgrind --tool=callgrind`).
use wazuh_misp::extract::{Extractor, Scratch};

fn main() {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "../shared/corpus/alerts/dashboard-sample.jsonl".into());
    let text = std::fs::read_to_string(path).expect("alerts file");
    let lines: Vec<&str> = text.lines().collect();
    // A parser per line: each tape borrows its parser's copy of the line.
    let mut parsers: Vec<wazuh_misp::alert::Parser> =
        lines.iter().map(|_| Default::default()).collect();
    let tapes: Vec<wazuh_misp::alert::Tape> = parsers
        .iter_mut()
        .zip(&lines)
        .filter_map(|(p, l)| p.parse(l).ok())
        .collect();
    let alerts: Vec<wazuh_misp::alert::Node> = tapes.iter().map(|t| t.as_value()).collect();
    let ex = Extractor::with_defaults();
    let mut scratch = Scratch::default();
    let mut hits = Vec::new();
    let mut n = 0;
    for _ in 0..20 {
        for a in &alerts {
            hits.clear();
            ex.extract(*a, &mut scratch, &mut hits);
            n += hits.len();
        }
    }
    println!("{n} hits");
}
