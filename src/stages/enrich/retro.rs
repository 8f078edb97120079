//! Retro events: the event a past alert would have made had MISP known
//! the indicator then, built from the ledger's reference to that alert
//! (its compact context) and intelligence's answer now, plus
//! `retro_hunt`. Through the full path ([`enrich_answer`] and
//! [`serialize_within`]), so the schema and the size guard are a live
//! event's.

use super::{enrich_answer, event_id_from, select, serialize_within, wazuh_time, AlertContext};
use crate::alert;
use crate::config::MatchTypes;
use crate::lookup::LookupResult;
use crate::observable::{Direction, Observable, Occurrence};
use serde::{Deserialize, Serialize};

/// `retro_hunt` in a retro event: what the ledger knew of the value, and
/// when the indicator reached the mirror. Times in Wazuh's format.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RetroHunt {
    pub first_seen: String,
    pub last_seen: String,
    pub count: u64,
    pub indicator_added: String,
    /// The new attribute's uuid and MISP type.
    pub indicator_uuid: String,
    pub indicator_type: String,
}

/// What a retro event is made from.
#[derive(Debug, Clone)]
pub struct RetroSource<'a> {
    /// A ledger reference (`crate::ledger::reference`).
    pub reference: &'a str,
    pub value: &'a Observable,
    pub first_seen: i64,
    pub last_seen: i64,
    pub count: u64,
    pub indicator_added: chrono::DateTime<chrono::Utc>,
    pub indicator_uuid: &'a str,
    pub indicator_type: &'a str,
}

#[derive(Deserialize)]
struct Reference<'a> {
    #[serde(borrow)]
    alert: &'a serde_json::value::RawValue,
    #[serde(default)]
    field_path: String,
    #[serde(default)]
    direction: String,
    #[serde(default)]
    raw_context: String,
}

/// One retro event per part of `answer` (per server), each as the
/// datagram header for the alert's agent and the payload. Empty when the
/// answer holds nothing the config keeps.
pub fn retro_events(
    src: &RetroSource<'_>,
    answer: &LookupResult,
    match_types: MatchTypes,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<(String, Vec<u8>)>, String> {
    let r: Reference<'_> = serde_json::from_str(src.reference)
        .map_err(|e| format!("a ledger reference is not what this build writes: {e}"))?;
    let hit = Occurrence {
        observable: src.value.clone(),
        direction: Direction::parse(&r.direction),
        field_path: r.field_path,
        raw_context: r.raw_context,
    };
    let time = |t: i64| {
        chrono::DateTime::from_timestamp(t, 0)
            .map(wazuh_time)
            .unwrap_or_default()
    };
    let retro = RetroHunt {
        first_seen: time(src.first_seen),
        last_seen: time(src.last_seen),
        count: src.count,
        indicator_added: wazuh_time(src.indicator_added),
        indicator_uuid: src.indicator_uuid.to_owned(),
        indicator_type: src.indicator_type.to_owned(),
    };
    let mut parser = alert::Parser::default();
    parser
        .with(r.alert.get(), |node| {
            let ctx = AlertContext::from_alert(node);
            let header = crate::output::header(&ctx.agent);
            let limit = crate::output::MAX_DATAGRAM.saturating_sub(header.len());
            let salt = format!("retro|{}", src.indicator_uuid);
            let mut out = Vec::new();
            for part in answer.parts() {
                let selected = select(part, match_types, &hit);
                let Some(mut ev) = enrich_answer(&ctx, &hit, part, &selected, now) else {
                    continue;
                };
                let server = (part.server_position > 0)
                    .then_some(part.server.as_deref())
                    .flatten();
                let salt = match server {
                    Some(s) => format!("{salt}|{s}"),
                    None => salt.clone(),
                };
                ev.event_id = event_id_from(&hit.observable.to_string(), &ctx, Some(&salt));
                ev.retro_hunt = Some(retro.clone());
                if let Some(payload) = serialize_within(&mut ev, limit) {
                    out.push((header.clone(), payload));
                }
            }
            out
        })
        .map_err(|e| format!("a ledger reference's alert does not parse: {e}"))
}

/// The event that says a sync's hunt stopped at
/// `retro.max_events_per_sync`: how many were sent and how many left out.
pub fn retro_summary_event(
    server: &str,
    indicators: usize,
    sent: usize,
    left_out: usize,
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "integration": "misp",
        "timestamp": wazuh_time(now),
        "retro_hunt": {
            "summary": true,
            "server": server,
            "indicators": indicators,
            "events_sent": sent,
            "events_left_out": left_out,
        },
    }))
    .expect("the summary serialises")
}
