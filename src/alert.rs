//! The parsed alert, shared by stages 2–6: a JSON tape whose strings point
//! into (a copy of) the line and whose objects keep their keys in order.
//!
//! Parsing is the floor of the hot path, so its form matters. serde_json's
//! `Value` with `preserve_order` makes every object an `IndexMap` (a SipHash
//! per key) and every string an allocation. A tree of Vec-backed objects
//! borrowing from the line still costs about twenty allocations and moves
//! per alert. simd-json parses into a flat tape: one node per value, in
//! document order, in a Vec and scratch buffers that a [`Parser`] keeps
//! from line to line, so an alert costs no allocation once the buffers
//! have grown.
//!
//! Key order is kept, which extraction needs ("first occurrence") and events
//! show (`data` keys in the alert's order); duplicate keys are kept and a
//! lookup finds the first. Lookups by key are linear scans, which is what
//! alerts with a handful of keys per object want anyway.

use serde::ser::{SerializeMap, SerializeSeq};
use simd_json::prelude::{TypedValue, ValueAsScalar, ValueIntoString, ValueType};
use std::borrow::Cow;

/// One value of a parsed alert (a view into its tape; `Copy`).
pub type Node<'a> = simd_json::tape::Value<'a, 'a>;
/// An object of a parsed alert.
pub type Object<'a> = simd_json::tape::Object<'a, 'a>;
/// An array of a parsed alert.
pub type Array<'a> = simd_json::tape::Array<'a, 'a>;
/// A parsed alert: [`Tape::as_value`] is its root.
pub use simd_json::tape::Tape;

/// Why a line is not JSON, worded for the operator's log: simd-json's kind
/// of error and the byte it stopped at.
#[derive(Debug)]
pub struct Error(simd_json::Error);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use simd_json::ErrorType as E;
        let what = match self.0.error() {
            E::Eof => "the line ends inside a value".to_owned(),
            E::DepthLimitExceeded => format!("nested deeper than {MAX_DEPTH}"),
            // simd-json reports a misplaced or trailing token this way.
            E::InternalError | E::Syntax => "unexpected token".to_owned(),
            other => format!("{other:?}"),
        };
        write!(f, "not valid JSON: {what} at byte {}", self.0.index())
    }
}

impl std::error::Error for Error {}

/// serde_json's recursion limit, kept so what parses did not change.
const MAX_DEPTH: usize = 128;

/// What a node holds, for matching on.
pub enum Kind<'a> {
    Str(&'a str),
    Object(Object<'a>),
    Array(Array<'a>),
    Number(serde_json::Number),
    Bool(bool),
    Null,
}

pub fn kind(node: Node<'_>) -> Kind<'_> {
    match node.value_type() {
        ValueType::String => Kind::Str(as_str(node).unwrap_or_default()),
        ValueType::Object => node.as_object().map_or(Kind::Null, Kind::Object),
        ValueType::Array => node.as_array().map_or(Kind::Null, Kind::Array),
        ValueType::Bool => Kind::Bool(node.as_bool().unwrap_or_default()),
        ValueType::U64 => Kind::Number(node.as_u64().unwrap_or_default().into()),
        ValueType::I64 => Kind::Number(node.as_i64().unwrap_or_default().into()),
        // A JSON number is finite, so `from_f64` holds it.
        ValueType::F64 => node
            .as_f64()
            .and_then(serde_json::Number::from_f64)
            .map_or(Kind::Null, Kind::Number),
        _ => Kind::Null,
    }
}

/// An alert line as text: bad UTF-8 sequences become U+FFFD (`Owned` then),
/// so that one bad byte costs a character and not the alert. `from_utf8`
/// first: its check is much faster than the lossy decoder's on the valid
/// lines that are nearly all of them.
pub fn decode_line(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// `line` with every lone UTF-16 surrogate escape (`\ud800` without its
/// pair, or a stray low half) replaced by `\ufffd`, as a lossy decoder
/// does for bad bytes; `None` when it has none. JSON allows such escapes
/// but no Rust string can hold them, so the parser refuses the line, and
/// one bad character would cost the whole alert.
pub fn repair_lone_surrogates(line: &str) -> Option<String> {
    let b = line.as_bytes();
    let hex4 = |at: usize| -> Option<u16> {
        let h = b.get(at..at + 4)?;
        u16::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()
    };
    let escape_at = |at: usize| -> Option<u16> {
        (b.get(at) == Some(&b'\\') && b.get(at + 1) == Some(&b'u'))
            .then(|| hex4(at + 2))
            .flatten()
    };
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            i += 1;
            continue;
        }
        let Some(unit) = escape_at(i) else {
            // Any other escape: skip the escaped character with it.
            i += 2;
            continue;
        };
        let high = (0xD800..0xDC00).contains(&unit);
        let low = (0xDC00..0xE000).contains(&unit);
        if high && escape_at(i + 6).is_some_and(|u| (0xDC00..0xE000).contains(&u)) {
            i += 12;
        } else if high || low {
            let o = out.get_or_insert_with(|| String::with_capacity(line.len()));
            o.push_str(&line[copied..i]);
            o.push_str("\\ufffd");
            i += 6;
            copied = i;
        } else {
            i += 6;
        }
    }
    let mut o = out?;
    o.push_str(&line[copied..]);
    Some(o)
}

/// Parses alert lines, keeping its buffers from one line to the next.
///
/// simd-json unescapes strings in place, so the line is copied into
/// `input` first: the caller's line stays as it was (a line that waits on
/// MISP is parsed again later, and the batch buffer is shared). All three
/// buffers grow to the longest line seen, which `input.max_line_bytes`
/// bounds.
#[derive(Default)]
pub struct Parser {
    input: Vec<u8>,
    buffers: Option<simd_json::Buffers>,
    spare: Option<Tape<'static>>,
}

impl Parser {
    /// Parses one alert line into a fresh tape (the buffers are reused).
    pub fn parse<'p>(&'p mut self, line: &str) -> Result<Tape<'p>, Error> {
        let mut tape = Tape::null().reset();
        Self::fill(&mut self.input, &mut self.buffers, line, &mut tape)?;
        Ok(tape)
    }

    /// Parses one alert line and hands its root to `f`, reusing the tape's
    /// allocation too: the form for the hot path.
    pub fn with<R>(&mut self, line: &str, f: impl FnOnce(Node<'_>) -> R) -> Result<R, Error> {
        let mut tape = self.spare.take().unwrap_or_else(Tape::null).reset();
        let parsed = Self::fill(&mut self.input, &mut self.buffers, line, &mut tape);
        let result = parsed.map(|()| f(tape.as_value()));
        self.spare = Some(tape.reset());
        result
    }

    fn fill<'p>(
        input: &'p mut Vec<u8>,
        buffers: &mut Option<simd_json::Buffers>,
        line: &str,
        tape: &mut Tape<'p>,
    ) -> Result<(), Error> {
        input.clear();
        input.extend_from_slice(line.as_bytes());
        // The padding lets simd-json's vector loads run past the end
        // without a second, padded copy of its own.
        input.resize(line.len() + simd_json::INPUT_PADDING, b' ');
        let buffers = buffers
            .get_or_insert_with(|| simd_json::Buffers::with_max_depth(line.len(), MAX_DEPTH));
        simd_json::fill_tape_padded(input, line.len(), buffers, tape).map_err(Error)
    }
}

/// Parses `line` into a root that lives as long as the program: for tests,
/// where leaking a few hundred bytes per alert does not matter.
#[cfg(test)]
pub(crate) fn parse_leaked(line: &str) -> Result<Node<'static>, Error> {
    let parser = Box::leak(Box::new(Parser::default()));
    let tape = Box::leak(Box::new(parser.parse(line)?));
    Ok(tape.as_value())
}

/// The string `node` holds, borrowed from the line (not from the node).
pub fn as_str(node: Node<'_>) -> Option<&str> {
    node.into_string()
}

/// The top-level members stages 2–6 read, found in one pass over the
/// alert. A lookup by key is a scan along the tape, and the stages read
/// about thirty paths per alert; with these, each is a step into one small
/// object. As with [`at`], the first occurrence of a key wins.
#[derive(Clone, Copy, Debug, Default)]
pub struct Fields<'a> {
    pub is_object: bool,
    pub id: Option<Node<'a>>,
    pub timestamp: Option<Node<'a>>,
    pub location: Option<Node<'a>>,
    pub rule: Option<Node<'a>>,
    pub agent: Option<Node<'a>>,
    pub manager: Option<Node<'a>>,
    pub decoder: Option<Node<'a>>,
    pub data: Option<Node<'a>>,
    /// Wazuh 5's (WCS) `wazuh` object: the agent, the location, the
    /// integration and the cluster of an engine event.
    pub wazuh: Option<Node<'a>>,
}

impl<'a> Fields<'a> {
    pub fn of(alert: Node<'a>) -> Self {
        let mut f = Fields::default();
        let mut at_timestamp = None;
        let Some(members) = alert.as_object() else {
            return f;
        };
        f.is_object = true;
        for (key, value) in members.iter() {
            let slot = match key {
                "id" => &mut f.id,
                "timestamp" => &mut f.timestamp,
                "location" => &mut f.location,
                "rule" => &mut f.rule,
                "agent" => &mut f.agent,
                "manager" => &mut f.manager,
                "decoder" => &mut f.decoder,
                "data" => &mut f.data,
                "wazuh" => &mut f.wazuh,
                "@timestamp" => &mut at_timestamp,
                _ => continue,
            };
            slot.get_or_insert(value);
        }
        // A Wazuh 5 event (WCS) has no 4.x context: its agent is
        // `wazuh.agent`, its location `wazuh.protocol.location`, its time
        // `@timestamp` and its id `wazuh.event.id`. Every stage then reads
        // it as it reads an alert.
        if f.wazuh.is_some() {
            f.agent = f.agent.or_else(|| member(f.wazuh, "agent"));
            f.location = f
                .location
                .or_else(|| member(member(f.wazuh, "protocol"), "location"));
            f.id = f.id.or_else(|| member(member(f.wazuh, "event"), "id"));
            f.timestamp = f.timestamp.or(at_timestamp);
        }
        f
    }

    /// A Wazuh 5 event's integration (`wazuh.integration.name`) and
    /// category.
    pub fn integration(&self) -> (Option<&'a str>, Option<&'a str>) {
        let i = member(self.wazuh, "integration");
        (
            member(i, "name").and_then(as_str),
            member(i, "category").and_then(as_str),
        )
    }
}

/// `node[key]`, when `node` is an object that has it.
pub fn member<'a>(node: Option<Node<'a>>, key: &str) -> Option<Node<'a>> {
    node?.as_object()?.get(key)
}

/// A node's string or number as text (`rule.id` is a string from Wazuh, a
/// number from some hand-written alerts); empty otherwise.
pub fn text(node: Option<Node<'_>>) -> Cow<'_, str> {
    match node.map(kind) {
        Some(Kind::Str(s)) => Cow::Borrowed(s),
        Some(Kind::Number(n)) => Cow::Owned(n.to_string()),
        _ => Cow::Borrowed(""),
    }
}

/// The node at `path` (object keys), if every step is there.
pub fn at<'a>(node: Node<'a>, path: &[&str]) -> Option<Node<'a>> {
    path.iter()
        .try_fold(node, |n, key| n.as_object()?.get(*key))
}

/// The string at `path`.
pub fn str_at<'a>(node: Node<'a>, path: &[&str]) -> Option<&'a str> {
    as_str(at(node, path)?)
}

/// An owned serde_json copy, for the parts of an alert an owned event keeps.
pub fn to_json(node: Node<'_>) -> serde_json::Value {
    serde_json::to_value(Json(node)).expect("a parsed value converts")
}

/// Serialises a node as serde_json writes the same value (numbers through
/// `serde_json::Number`, so `1.0` stays `1.0`). Recursion is bounded by the
/// parser's depth limit.
#[derive(Clone, Copy)]
pub struct Json<'a>(pub Node<'a>);

impl serde::Serialize for Json<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match kind(self.0) {
            Kind::Str(v) => s.serialize_str(v),
            Kind::Number(n) => n.serialize(s),
            Kind::Bool(b) => s.serialize_bool(b),
            Kind::Null => s.serialize_unit(),
            Kind::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items.iter() {
                    seq.serialize_element(&Json(item))?;
                }
                seq.end()
            }
            Kind::Object(map) => {
                let mut out = s.serialize_map(Some(map.len()))?;
                for (k, v) in map.iter() {
                    out.serialize_entry(k, &Json(v))?;
                }
                out.end()
            }
        }
    }
}

#[cfg(test)]
mod tests {

    proptest::proptest! {
        /// The tape accepts exactly what serde_json accepts, and holds the
        /// same value (the fuzz target `tape_vs_serde` goes further).
        #[test]
        fn the_tape_agrees_with_serde_json(
            parts in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just("{"), proptest::strategy::Just("}"),
                    proptest::strategy::Just("["), proptest::strategy::Just("]"),
                    proptest::strategy::Just(","), proptest::strategy::Just(":"),
                    proptest::strategy::Just("\"k\""), proptest::strategy::Just("\"\\u00e9\\n\""),
                    proptest::strategy::Just("1"), proptest::strategy::Just("-2.5e3"),
                    proptest::strategy::Just("18446744073709551616"), proptest::strategy::Just("true"),
                    proptest::strategy::Just("null"), proptest::strategy::Just(" "),
                    proptest::strategy::Just("\"\\ud800\""), proptest::strategy::Just("01"),
                ],
                0..24,
            )
        ) {
            let line: String = parts.concat();
            let mut p = Parser::default();
            let tape = p.parse(&line);
            let serde = serde_json::from_str::<serde_json::Value>(&line);
            proptest::prop_assert_eq!(tape.is_ok(), serde.is_ok(), "{:?}", line);
            // Known difference: an integer beyond u64 becomes a float in
            // both, but simd-json's conversion can be one unit off in the
            // last place (118446744073709551616 → ...0957e20, serde
            // ...0955e20). Accepted and rejected alike; only the value of
            // such a number in a copied `data` field can differ.
            if line.contains("18446744073709551616") {
                return Ok(());
            }
            if let (Ok(tape), Ok(serde)) = (tape, serde) {
                let back: serde_json::Value =
                    serde_json::from_str(&serde_json::to_string(&Json(tape.as_value())).unwrap()).unwrap();
                proptest::prop_assert_eq!(back, serde, "{:?}", line);
            }
        }
    }

    #[test]
    fn lone_surrogates_are_replaced_and_pairs_kept() {
        let r = |s: &str| repair_lone_surrogates(s);
        assert_eq!(r(r#"{"a":"x"}"#), None);
        assert_eq!(r(r#"{"a":"\ud83d\ude00"}"#), None, "a pair is fine");
        assert_eq!(
            r(r#"{"a":"\\ud800"}"#),
            None,
            "an escaped backslash, then text"
        );
        assert_eq!(
            r(r#"{"a":"x\ud800y"}"#).as_deref(),
            Some(r#"{"a":"x\ufffdy"}"#)
        );
        assert_eq!(r(r#"{"a":"\udc00"}"#).as_deref(), Some(r#"{"a":"\ufffd"}"#));
        assert_eq!(
            r(r#"{"a":"\ud800\ud800\udc00"}"#).as_deref(),
            Some(r#"{"a":"\ufffd\ud800\udc00"}"#),
            "a high half followed by a pair"
        );
        assert_eq!(r(r#"{"a":"\ud800"#).as_deref(), Some(r#"{"a":"\ufffd"#));
        let mut p = Parser::default();
        for repaired in [r#"{"a":"x\ud800y"}"#, r#"{"a":"\udc00\ud83d"}"#] {
            let fixed = r(repaired).unwrap();
            assert!(p.parse(&fixed).is_ok(), "{fixed} parses");
        }
    }
    use super::*;

    #[test]
    fn borrows_order_and_paths() {
        let line = r#"{"rule":{"id":"5712","level":10},"data":{"z":"1.2.3.4","a":"x\"y"},"n":5712,"f":1.0,"d":[true,null,-3]}"#;
        let mut parser = Parser::default();
        let tape = parser.parse(line).unwrap();
        let alert = tape.as_value();
        assert_eq!(str_at(alert, &["rule", "id"]), Some("5712"));
        assert_eq!(text(at(alert, &["n"])), "5712");
        assert_eq!(text(at(alert, &["rule", "missing"])), "");
        assert!(at(alert, &["rule", "id", "deeper"]).is_none());
        let keys: Vec<&str> = at(alert, &["data"])
            .and_then(|d| d.as_object())
            .unwrap()
            .keys()
            .collect();
        assert_eq!(keys, ["z", "a"], "key order is the alert's");
        assert_eq!(str_at(alert, &["data", "a"]), Some("x\"y"));
        // Serialises back to the same JSON, order and number forms included.
        assert_eq!(serde_json::to_string(&Json(alert)).unwrap(), line);
        assert_eq!(to_json(alert)["rule"]["level"], 10);
    }

    #[test]
    fn parser_reuse_leaves_no_trace_of_the_previous_line() {
        let mut parser = Parser::default();
        let text =
            |p: &mut Parser, line: &str| p.with(line, |n| serde_json::to_string(&Json(n)).unwrap());
        assert_eq!(
            text(&mut parser, r#"{"a":"x\ty","b":[1,2,3]}"#).unwrap(),
            r#"{"a":"x\ty","b":[1,2,3]}"#
        );
        assert!(text(&mut parser, r#"{"a":"#).is_err());
        assert_eq!(text(&mut parser, r#"{"c":"z"}"#).unwrap(), r#"{"c":"z"}"#);
    }

    #[test]
    fn duplicate_keys_kept_and_first_wins() {
        let mut parser = Parser::default();
        let tape = parser.parse(r#"{"k":1,"k":2}"#).unwrap();
        assert_eq!(text(at(tape.as_value(), &["k"])), "1");
        let mut other = Parser::default();
        let nested = other
            .parse(r#"{"rule":{"id":"1"},"x":{"rule":0},"rule":{"id":"2"},"data":[]}"#)
            .unwrap();
        let f = Fields::of(nested.as_value());
        assert!(f.is_object);
        assert_eq!(
            text(member(f.rule, "id")),
            "1",
            "the first `rule`, as `at` finds"
        );
        assert!(f.data.is_some_and(|d| d.is_array()) && f.agent.is_none());
        assert!(!Parser::default()
            .with("[1]", |n| Fields::of(n).is_object)
            .unwrap());
        assert_eq!(
            serde_json::to_string(&Json(tape.as_value())).unwrap(),
            r#"{"k":1,"k":2}"#
        );
    }

    #[test]
    fn depth_limit_is_serde_jsons() {
        let mut parser = Parser::default();
        let deep = |d: usize| format!("{}{}", "[".repeat(d), "]".repeat(d));
        assert!(parser.parse(&deep(100)).is_ok());
        assert!(parser.parse(&deep(200)).is_err());
        // Far deeper than any stack would take, refused without recursing.
        assert!(parser.parse(&deep(100_000)).is_err());
    }

    #[test]
    fn rejects_what_serde_json_rejects() {
        let mut parser = Parser::default();
        let err = parser.parse(r#"{"a":1} x"#).unwrap_err().to_string();
        assert_eq!(err, "not valid JSON: unexpected token at byte 6");
        for bad in [
            "",
            "{",
            r#"{"a":1} x"#,
            r#"{"a":1,}"#,
            r#"{"a":01}"#,
            "{\"a\":\"\u{1}\"}",
            r#"{"a":"\ud800"}"#,
            r#"{"a":1e400}"#,
        ] {
            assert!(parser.parse(bad).is_err(), "{bad:?} parsed");
        }
        // Past u64: a float, as serde_json reads it.
        let tape = parser.parse(r#"{"a":18446744073709551616}"#).unwrap();
        assert!(
            matches!(kind(at(tape.as_value(), &["a"]).unwrap()), Kind::Number(n) if n.is_f64())
        );
    }
}
