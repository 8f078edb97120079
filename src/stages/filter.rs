//! Stage 2, alert filter: which alerts are worth looking at.
//!
//! Pure and synchronous. Every rejection has a reason, which the pipeline
//! counts and logs.

use crate::alert::{self, member, Fields, Kind};
use std::borrow::Cow;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipReason {
    NotAnObject,
    NoRuleId,
    LevelBelowMinimum,
    ExcludedRule,
    /// One of our own enriched events, seen again in alerts.json after a
    /// Wazuh rule fired on it. Without this the daemon would feed on itself.
    OwnEvent,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::NotAnObject => "not_an_object",
            SkipReason::NoRuleId => "no_rule_id",
            SkipReason::LevelBelowMinimum => "level_below_minimum",
            SkipReason::ExcludedRule => "excluded_rule",
            SkipReason::OwnEvent => "own_event",
        }
    }
}

#[derive(Debug, Clone)]
pub struct AlertFilter {
    pub min_level: u32,
    pub exclude_rule_ids: Vec<String>,
}

/// `rule.id` as a string. Wazuh writes it as a string; a number is accepted
/// too, because hand-written or third-party alerts do that.
pub fn rule_id<'a>(fields: &Fields<'a>) -> Option<Cow<'a, str>> {
    match alert::kind(member(fields.rule, "id")?) {
        Kind::Str(s) if !s.is_empty() => Some(Cow::Borrowed(s)),
        Kind::Number(n) => Some(Cow::Owned(n.to_string())),
        _ => None,
    }
}

/// `rule.level` as a number, accepting a numeric string.
pub fn rule_level(fields: &Fields<'_>) -> Option<u64> {
    match alert::kind(member(fields.rule, "level")?) {
        Kind::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
        Kind::Str(s) => s.trim().parse().ok(),
        _ => None,
    }
}

impl AlertFilter {
    pub fn check(&self, fields: &Fields<'_>) -> Result<(), SkipReason> {
        if !fields.is_object {
            return Err(SkipReason::NotAnObject);
        }
        let is_misp = |n: Option<alert::Node<'_>>| n.and_then(alert::as_str) == Some("misp");
        if is_misp(fields.location) || is_misp(member(fields.data, "integration")) {
            return Err(SkipReason::OwnEvent);
        }
        let id = rule_id(fields).ok_or(SkipReason::NoRuleId)?;
        // A missing or unreadable level counts as 0, so it is filtered
        // unless min_level is 0.
        if rule_level(fields).unwrap_or(0) < u64::from(self.min_level) {
            return Err(SkipReason::LevelBelowMinimum);
        }
        if self.exclude_rule_ids.iter().any(|x| x == id.as_ref()) {
            return Err(SkipReason::ExcludedRule);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn f() -> AlertFilter {
        AlertFilter {
            min_level: 6,
            exclude_rule_ids: vec!["31530".into(), "31531".into()],
        }
    }

    #[test]
    fn decisions() {
        let cases = [
            (json!({"rule":{"id":"5712","level":10}}), Ok(())),
            (json!({"rule":{"id":"5712","level":"10"}}), Ok(())),
            (json!({"rule":{"id":5712,"level":6}}), Ok(())),
            (
                json!({"rule":{"id":"5712","level":5}}),
                Err(SkipReason::LevelBelowMinimum),
            ),
            (
                json!({"rule":{"id":"5712","level":"high"}}),
                Err(SkipReason::LevelBelowMinimum),
            ),
            (
                json!({"rule":{"id":"5712"}}),
                Err(SkipReason::LevelBelowMinimum),
            ),
            (json!({"rule":{"level":12}}), Err(SkipReason::NoRuleId)),
            (
                json!({"rule":{"id":"","level":12}}),
                Err(SkipReason::NoRuleId),
            ),
            (
                json!({"rule":{"id":"31530","level":12}}),
                Err(SkipReason::ExcludedRule),
            ),
            (
                json!({"rule":{"id":"100200","level":12},"data":{"integration":"misp"}}),
                Err(SkipReason::OwnEvent),
            ),
            (
                json!({"rule":{"id":"100200","level":12},"location":"misp"}),
                Err(SkipReason::OwnEvent),
            ),
            (json!({"rule":{"id":"1","level":12},"data":[1,2]}), Ok(())),
            (json!([1, 2]), Err(SkipReason::NotAnObject)),
        ];
        let mut parser = alert::Parser::default();
        for (alert, want) in cases {
            let tape = parser.parse(&alert.to_string()).unwrap();
            assert_eq!(f().check(&Fields::of(tape.as_value())), want, "{alert}");
        }
    }
}
