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
    /// Wazuh 5: an integration not included, or excluded.
    ExcludedIntegration,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::NotAnObject => "not_an_object",
            SkipReason::NoRuleId => "no_rule_id",
            SkipReason::LevelBelowMinimum => "level_below_minimum",
            SkipReason::ExcludedRule => "excluded_rule",
            SkipReason::OwnEvent => "own_event",
            SkipReason::ExcludedIntegration => "excluded_integration",
        }
    }
}

#[derive(Debug, Clone)]
pub struct AlertFilter {
    pub min_level: u32,
    pub exclude_rule_ids: Vec<String>,
    /// Skip events without a rule (Wazuh 4's alerts all have one; Wazuh 5's
    /// engine events none).
    pub require_rule: bool,
    /// Wazuh 5: integration names or categories to keep (empty: all), and
    /// to skip.
    pub include_integrations: Vec<String>,
    pub exclude_integrations: Vec<String>,
    /// Wazuh 5: the lowest categorical level kept, a rank in
    /// [`crate::config::LEVELS_5X`].
    pub min_level_5x: u8,
}

impl Default for AlertFilter {
    fn default() -> Self {
        AlertFilter {
            min_level: 6,
            exclude_rule_ids: Vec::new(),
            require_rule: true,
            include_integrations: Vec::new(),
            exclude_integrations: Vec::new(),
            // "medium".
            min_level_5x: 2,
        }
    }
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
        if is_own(fields) {
            return Err(SkipReason::OwnEvent);
        }
        if fields.wazuh.is_some() {
            self.check_integration(fields)?;
        }
        let categorical = level_5x(fields);
        if categorical.is_some_and(|rank| rank < self.min_level_5x) {
            return Err(SkipReason::LevelBelowMinimum);
        }
        let Some(id) = rule_id(fields) else {
            return if self.require_rule {
                Err(SkipReason::NoRuleId)
            } else {
                Ok(())
            };
        };
        if categorical.is_none() && rule_level(fields).unwrap_or(0) < u64::from(self.min_level) {
            return Err(SkipReason::LevelBelowMinimum);
        }
        if self.exclude_rule_ids.iter().any(|x| x == id.as_ref()) {
            return Err(SkipReason::ExcludedRule);
        }
        Ok(())
    }

    fn check_integration(&self, fields: &Fields<'_>) -> Result<(), SkipReason> {
        let (name, category) = fields.integration();
        let named = |list: &[String]| {
            list.iter()
                .any(|x| Some(x.as_str()) == name || Some(x.as_str()) == category)
        };
        if !self.include_integrations.is_empty() && !named(&self.include_integrations) {
            return Err(SkipReason::ExcludedIntegration);
        }
        if named(&self.exclude_integrations) {
            return Err(SkipReason::ExcludedIntegration);
        }
        Ok(())
    }
}

/// Our own events, come back: on 4.x as alerts (location `misp`, or an
/// agent's `...->misp`, `data.integration: misp`), on 5 through the event
/// stream (the same location, or our integration's name).
fn is_own(fields: &Fields<'_>) -> bool {
    let location = fields.location.and_then(alert::as_str);
    location.is_some_and(|l| l == "misp" || l.ends_with("->misp"))
        || member(fields.data, "integration").and_then(alert::as_str) == Some("misp")
        || fields.integration().0 == Some(OUR_INTEGRATION)
}

/// The name of the Wazuh 5 integration that decodes our events.
pub const OUR_INTEGRATION: &str = "wazuh-misp";

/// A categorical level's rank (Wazuh 5's findings: `rule.level` or
/// `wazuh.rule.level` is `informational` … `critical`, as 5.x rules grade).
fn level_5x(fields: &Fields<'_>) -> Option<u8> {
    fields.wazuh?;
    let level = member(fields.rule, "level")
        .or_else(|| member(member(fields.wazuh, "rule"), "level"))
        .and_then(alert::as_str)?;
    crate::config::LEVELS_5X
        .iter()
        .position(|l| l.eq_ignore_ascii_case(level))
        .map(|i| i as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn f() -> AlertFilter {
        AlertFilter {
            min_level: 6,
            exclude_rule_ids: vec!["31530".into(), "31531".into()],
            ..AlertFilter::default()
        }
    }

    #[test]
    fn wazuh_5_events_are_kept_without_a_rule_and_filtered_by_integration() {
        let on5 = AlertFilter {
            require_rule: false,
            include_integrations: vec!["windows".into(), "system".into()],
            exclude_integrations: vec!["sysmon-noisy".into()],
            min_level_5x: 2,
            ..AlertFilter::default()
        };
        let event = |integration: serde_json::Value, extra: serde_json::Value| {
            let mut v = json!({"wazuh": {"agent": {"id": "001"}, "protocol": {"location": "EventChannel"},
                                "integration": integration}, "source": {"ip": "185.220.101.4"}});
            if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
                o.extend(e.clone());
            }
            v
        };
        let cases = [
            (
                event(json!({"name": "windows", "category": "os"}), json!({})),
                Ok(()),
            ),
            (
                event(json!({"name": "x", "category": "system"}), json!({})),
                Ok(()),
            ),
            (
                event(json!({"name": "suricata", "category": "ids"}), json!({})),
                Err(SkipReason::ExcludedIntegration),
            ),
            (
                event(
                    json!({"name": "sysmon-noisy", "category": "windows"}),
                    json!({}),
                ),
                Err(SkipReason::ExcludedIntegration),
            ),
            (
                event(
                    json!({"name": "windows"}),
                    json!({"rule": {"level": "low"}}),
                ),
                Err(SkipReason::LevelBelowMinimum),
            ),
            (
                json!({"wazuh": {"integration": {"name": "windows"}, "rule": {"level": "high"}}}),
                Ok(()),
            ),
            (
                json!({"wazuh": {"integration": {"name": "windows"}, "rule": {"level": "Low"}}}),
                Err(SkipReason::LevelBelowMinimum),
            ),
            (
                event(json!({"name": "wazuh-misp"}), json!({})),
                Err(SkipReason::OwnEvent),
            ),
        ];
        let mut parser = alert::Parser::default();
        for (v, want) in cases {
            let text = v.to_string();
            let got = parser.with(&text, |a| on5.check(&Fields::of(a))).unwrap();
            assert_eq!(got, want, "{text}");
        }
        // Our own events come back with our location, on either line.
        let own = json!({"wazuh": {"protocol": {"location": "[001] (web-01) 10.0.1.50->misp"}}});
        let text = own.to_string();
        let got = parser.with(&text, |a| on5.check(&Fields::of(a))).unwrap();
        assert_eq!(got, Err(SkipReason::OwnEvent));
        // A 4.x filter still wants its rule.
        let text = event(json!({"name": "windows"}), json!({})).to_string();
        let got = parser
            .with(&text, |a| AlertFilter::default().check(&Fields::of(a)))
            .unwrap();
        assert_eq!(got, Err(SkipReason::NoRuleId));
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
