//! The parsed alert, shared by stages 2–6: a JSON tree that borrows its
//! strings from the line and keeps object keys in order.
//!
//! Parsing is the floor of the hot path, so its form matters. serde_json's
//! `Value` with `preserve_order` makes every object an `IndexMap` (a SipHash
//! per key) and every string an allocation; profiled on the hot scenario,
//! building and dropping it was the largest single cost. serde_json_borrow
//! parses with serde_json into Vec-backed objects whose strings point into
//! the line (only strings with escapes are copied). Key order is kept,
//! which extraction needs ("first occurrence") and events show (`data` keys
//! in the alert's order). Lookups by key are linear scans, which is what
//! alerts with a handful of keys per object want anyway.

use std::borrow::Cow;

pub use serde_json_borrow::{ObjectAsVec as Object, Value as Node};

/// Parses one alert line. serde_json's recursion limit (128) applies.
/// Taking `&str` matters: the tailer has checked the line as UTF-8, and
/// from a `&str` serde_json does not check every string again.
pub fn parse(line: &str) -> Result<Node<'_>, serde_json::Error> {
    serde_json::from_str(line)
}

/// The node at `path` (object keys), if every step is there.
pub fn at<'v, 'a>(node: &'v Node<'a>, path: &[&str]) -> Option<&'v Node<'a>> {
    path.iter().try_fold(node, |n, key| n.as_object()?.get(key))
}

/// The string at `path`.
pub fn str_at<'v>(node: &'v Node<'_>, path: &[&str]) -> Option<&'v str> {
    at(node, path)?.as_str()
}

/// The string or number at `path` as text (`rule.id` is a string from
/// Wazuh, a number from some hand-written alerts); empty otherwise.
pub fn text_at<'v>(node: &'v Node<'_>, path: &[&str]) -> Cow<'v, str> {
    match at(node, path) {
        Some(Node::Str(s)) => Cow::Borrowed(s),
        Some(Node::Number(n)) => Cow::Owned(n.to_string()),
        _ => Cow::Borrowed(""),
    }
}

/// An owned serde_json copy, for the parts of an alert an owned event keeps.
pub fn to_json(node: &Node<'_>) -> serde_json::Value {
    serde_json::Value::from(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn borrows_order_and_paths() {
        let line =
            r#"{"rule":{"id":"5712","level":10},"data":{"z":"1.2.3.4","a":"x\"y"},"n":5712}"#;
        let alert = parse(line).unwrap();
        assert_eq!(str_at(&alert, &["rule", "id"]), Some("5712"));
        assert_eq!(text_at(&alert, &["n"]), "5712");
        assert_eq!(text_at(&alert, &["rule", "missing"]), "");
        assert!(at(&alert, &["rule", "id", "deeper"]).is_none());
        let keys: Vec<&str> = at(&alert, &["data"])
            .and_then(Node::as_object)
            .unwrap()
            .keys()
            .collect();
        assert_eq!(keys, ["z", "a"], "key order is the alert's");
        assert!(matches!(
            at(&alert, &["data", "z"]),
            Some(Node::Str(Cow::Borrowed(_)))
        ));
        assert_eq!(str_at(&alert, &["data", "a"]), Some("x\"y"));
        // Serialises back to the same JSON, order included.
        assert_eq!(serde_json::to_string(&alert).unwrap(), line);
        assert_eq!(to_json(&alert)["rule"]["level"], 10);
    }

    #[test]
    fn depth_limit_is_serde_jsons() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(parse(&deep).is_err());
    }
}
