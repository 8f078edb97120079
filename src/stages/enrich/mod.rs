//! Stage 6, enrichment: one enriched event for one observable of one alert.
//!
//! Pure: the MISP attributes and the clock come in as arguments. The event's
//! field names are a public contract (Wazuh rules and dashboards key on
//! them); README.md lists every field.

mod retro;
mod score;

pub use retro::{retro_events, retro_summary_event, RetroHunt, RetroSource};
pub use score::threat_score;

use crate::alert::{self, member, text, Fields, Json, Node, Object};
use crate::config::MatchTypes;
use crate::lookup::model::{Attribute, Related, Tag};
use crate::lookup::LookupResult;
use crate::observable::{Direction, Kind, Occurrence};
use crate::output::Datagrams;
use md5::{Digest, Md5};
use serde::Serialize;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};

/// Top-level names of the enriched event; a key of the alert's `data` with
/// one of these names is not copied up.
const OWN_KEYS: &[&str] = &[
    "integration",
    "event_id",
    "timestamp",
    "detected_ip",
    "detected_observable",
    "misp_data",
    "recommendations",
    "rule",
    "agent",
    "manager",
    "location",
    "wazuh_alert_timestamp",
    "decoder",
    "misp_error",
    "retro_hunt",
];

#[derive(Debug, Clone, Serialize)]
pub struct EnrichedEvent<'a> {
    pub integration: &'static str,
    pub event_id: String,
    pub timestamp: String,
    /// For an IP; other kinds have `detected_observable` instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detected_ip: Option<DetectedIp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detected_observable: Option<DetectedObservable>,
    /// Only on a retro event: the alert is from the past, the indicator new.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retro_hunt: Option<RetroHunt>,
    pub misp_data: MispData,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recommendations: Option<Recommendations>,
    /// `rule`, `agent`, `manager`, `location`, `wazuh_alert_timestamp` and
    /// `decoder`, at the top level of the event.
    #[serde(flatten)]
    pub context: AlertContext<'a>,
    /// The alert's `data` keys, copied to the top level so that `srcip` and
    /// friends become Wazuh static fields an active response can use.
    #[serde(flatten)]
    pub data: Map<String, Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DetectedIp {
    pub value: String,
    pub direction: &'static str,
    pub field_path: String,
    pub raw_context: String,
    /// The mirrored network the IP fell in (absent for an exact match).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matched_network: Option<String>,
}

/// A domain, URL or file hash, and where the alert had it.
#[derive(Debug, Clone, Serialize)]
pub struct DetectedObservable {
    /// `domain`, `url`, `md5`, `sha1` or `sha256`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub value: String,
    /// Always `unknown`: direction is an IP's.
    pub direction: &'static str,
    pub field_path: String,
    pub raw_context: String,
    /// The MISP `domain` attribute a subdomain matched under (absent for
    /// an exact match).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matched_domain: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MispData {
    pub attributes: Vec<AggregatedAttribute>,
    pub events: Vec<EventSummary>,
    pub summary: Summary,
    /// The MISP server these attributes come from (`misp.name`, or a
    /// `[[misp.servers]]` name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AggregatedAttribute {
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
    pub category: String,
    pub to_ids: bool,
    pub threat_score: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decay_score: Option<f64>,
    pub tags: Vec<TagOut>,
    pub related_attributes: Vec<RelatedOut>,
    pub sightings: Sightings,
    pub associated_misp_event_ids: Vec<String>,
    pub attribute_timestamps: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TagOut {
    pub name: String,
    pub color: Option<String>,
    pub level: &'static str,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelatedOut {
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
    pub category: String,
    pub relation: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq, Hash, Default)]
pub struct Sightings {
    pub count: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_seen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
    pub sources: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EventSummary {
    pub id: String,
    pub uuid: String,
    pub info: String,
    pub date: String,
    pub analysis: String,
    pub threat_level_id: String,
    pub org_name: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    pub total_attributes: usize,
    pub total_events: usize,
    pub earliest_event_date: Option<String>,
    pub latest_event_date: Option<String>,
    /// `info` of the most recent event: a scalar, because Wazuh's JSON
    /// decoder does not extract arrays of objects, so rules cannot reach
    /// `events[].info`.
    pub latest_event_info: Option<String>,
    /// `uuid` of that event, for a link back (`/events/view/<uuid>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest_event_uuid: Option<String>,
    /// The most restrictive TLP among the attributes' tags (`clear`,
    /// `white`, `green`, `amber`, `amber+strict`, `red`), as tagged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tlp: Option<String>,
    pub attribution: Vec<String>,
    pub threat_types: Vec<String>,
    pub max_threat_score: u32,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub omitted_attributes: Option<usize>,
    /// The alert's `data` fields left out of the event's top level to fit
    /// one datagram, largest first (see [`serialize_within`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub omitted_fields: Vec<String>,
    /// MISP did not give the details in time: the attributes are what the
    /// mirror holds (type, value, category, to_ids, event id and info,
    /// tags), without sightings, correlations or event context.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Recommendations {
    pub priority: &'static str,
    pub actions: Vec<&'static str>,
}

/// The alert's rule, borrowed from the parsed alert: copying it into
/// every event would cost an allocation per field per alert.
#[derive(Debug, Clone, Serialize, Default)]
pub struct RuleContext<'a> {
    pub id: Cow<'a, str>,
    pub description: Cow<'a, str>,
    /// `rule.level` as the alert has it; null when missing.
    #[serde(serialize_with = "node_or_null")]
    pub level: Option<Node<'a>>,
    /// `rule.groups`, an array; serialised empty when missing or not one.
    #[serde(serialize_with = "array_or_empty")]
    pub groups: Option<Node<'a>>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct AgentContext<'a> {
    pub id: Cow<'a, str>,
    pub name: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<Cow<'a, str>>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct ManagerContext<'a> {
    pub name: Cow<'a, str>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct DecoderContext<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
}

/// Wazuh's time format: `2026-11-22T10:00:00.123+0000`.
pub const WAZUH_TIME_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.3f%z";

/// A time in [`WAZUH_TIME_FORMAT`].
pub fn wazuh_time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format(WAZUH_TIME_FORMAT).to_string()
}

/// `md5(ip|rule.id|alert.timestamp|alert.id)`, lowercase hex. Deterministic,
/// so a replay after a crash carries the same id.
pub fn event_id(ip: &str, ctx: &AlertContext<'_>) -> String {
    event_id_from(ip, ctx, None)
}

/// [`event_id`], with `|server` appended for the events of every server
/// but the first: one IP's events from two servers differ.
pub fn event_id_from(ip: &str, ctx: &AlertContext<'_>, server: Option<&str>) -> String {
    let mut h = Md5::new();
    h.update(ip.as_bytes());
    h.update(b"|");
    h.update(ctx.rule.id.as_bytes());
    h.update(b"|");
    h.update(ctx.timestamp.as_bytes());
    h.update(b"|");
    h.update(ctx.alert_id.as_bytes());
    if let Some(s) = server {
        h.update(b"|");
        h.update(s.as_bytes());
    }
    // By hand rather than `format!("{:x}")`, which goes through the
    // formatter once per byte: this runs for every event.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(32);
    for b in h.finalize() {
        id.push(char::from(HEX[usize::from(b >> 4)]));
        id.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    id
}

/// The alert's `data` keys that go to the top level of an event: all but
/// those whose names the event already uses. Serialises straight from the
/// parsed alert, without copying it.
pub struct TopLevelData<'a>(pub Option<Object<'a>>);

impl<'a> TopLevelData<'a> {
    pub fn of(ctx: &AlertContext<'a>) -> Self {
        TopLevelData(ctx.data.and_then(|d| d.as_object()))
    }

    fn entries(&self) -> impl Iterator<Item = (&'a str, Node<'a>)> + '_ {
        self.0
            .iter()
            .flat_map(|data| data.iter())
            .filter(|(k, _)| !OWN_KEYS.contains(k))
    }

    pub fn to_map(&self) -> Map<String, Value> {
        self.entries()
            .map(|(k, v)| (k.to_owned(), alert::to_json(v)))
            .collect()
    }
}

/// The alert's context, copied into every event made from it.
#[derive(Debug, Clone, Serialize)]
pub struct AlertContext<'a> {
    pub rule: RuleContext<'a>,
    pub agent: AgentContext<'a>,
    pub manager: ManagerContext<'a>,
    pub location: Cow<'a, str>,
    /// The alert's own `timestamp`; the event has one of its own.
    #[serde(rename = "wazuh_alert_timestamp")]
    pub timestamp: Cow<'a, str>,
    pub decoder: DecoderContext<'a>,
    /// The alert's `id`, for `event_id`; not a field of the event.
    #[serde(skip)]
    pub alert_id: Cow<'a, str>,
    /// The alert's `data`, whose keys go to the event's top level
    /// ([`TopLevelData`]).
    #[serde(skip)]
    pub data: Option<Node<'a>>,
}

impl<'a> AlertContext<'a> {
    pub fn from_alert(alert: Node<'a>) -> Self {
        Self::from_fields(&Fields::of(alert))
    }

    pub fn from_fields(f: &Fields<'a>) -> Self {
        let string = |node: Option<Node<'a>>| node.and_then(alert::as_str);
        AlertContext {
            rule: RuleContext {
                id: text(member(f.rule, "id")),
                description: text(member(f.rule, "description")),
                level: member(f.rule, "level"),
                groups: member(f.rule, "groups").filter(|g| g.is_array()),
            },
            agent: AgentContext {
                id: Cow::Borrowed(string(member(f.agent, "id")).unwrap_or("000")),
                name: text(member(f.agent, "name")),
                // WCS: `wazuh.agent.host.ip`.
                ip: string(member(f.agent, "ip"))
                    .or_else(|| string(member(member(f.agent, "host"), "ip")))
                    .map(Cow::Borrowed),
            },
            manager: ManagerContext {
                // WCS has no manager: the cluster node the event came through.
                name: text(
                    member(f.manager, "name")
                        .or_else(|| member(member(f.wazuh, "cluster"), "node")),
                ),
            },
            location: text(f.location),
            timestamp: text(f.timestamp),
            decoder: DecoderContext {
                name: string(member(f.decoder, "name")),
            },
            alert_id: text(f.id),
            data: f.data,
        }
    }
}

fn tags_of(a: &Attribute) -> Vec<TagOut> {
    // Attribute-level wins when a name appears at both levels.
    let mut out: Vec<TagOut> = Vec::new();
    let mut push = |t: &Tag, level: &'static str| {
        if t.name.is_empty() {
            return;
        }
        match out.iter_mut().find(|o| o.name == t.name) {
            Some(o) => {
                if level == "attribute" {
                    o.level = "attribute";
                }
            }
            None => out.push(TagOut {
                name: t.name.clone(),
                color: t.colour.clone(),
                level,
            }),
        }
    };
    for t in &a.tags {
        push(t, if t.inherited { "event" } else { "attribute" });
    }
    if let Some(e) = &a.event {
        for t in &e.tags {
            push(t, "event");
        }
    }
    out
}

fn related_of(r: &[Related]) -> Vec<RelatedOut> {
    r.iter()
        .map(|r| RelatedOut {
            kind: r.kind.clone(),
            value: r.value.clone(),
            category: r.category.clone(),
            relation: r.relation.clone(),
        })
        .collect()
}

fn sightings_of(a: &Attribute) -> Sightings {
    let dates: Vec<i64> = a.sightings.iter().filter_map(|s| s.date).collect();
    let fmt = |t: i64| chrono::DateTime::from_timestamp(t, 0).map(wazuh_time);
    let mut sources: Vec<String> = Vec::new();
    for s in a.sightings.iter().filter_map(|s| s.source.as_ref()) {
        if !sources.contains(s) {
            sources.push(s.clone());
        }
    }
    Sightings {
        count: a.sightings.len(),
        first_seen: dates.iter().min().and_then(|&t| fmt(t)),
        last_seen: dates.iter().max().and_then(|&t| fmt(t)),
        sources,
    }
}

/// What makes two attributes "the same" for aggregation.
#[derive(PartialEq, Eq, Hash)]
struct GroupKey {
    kind: String,
    value: String,
    category: String,
    to_ids: bool,
    threat_score: u32,
    tags: Vec<(String, &'static str)>,
    related: Vec<RelatedOut>,
    sightings: Sightings,
}

/// Merges attributes that share type, value, category, to_ids, score, tags,
/// related attributes and sightings into one entry listing every event id
/// and timestamp of the group. Keeps the order groups were first seen in.
pub fn aggregate(attributes: &[Attribute]) -> Vec<AggregatedAttribute> {
    let mut groups: Vec<AggregatedAttribute> = Vec::new();
    let mut index: HashMap<GroupKey, usize> = HashMap::new();
    for a in attributes {
        let tags = tags_of(a);
        let score = threat_score(&a.category, a.to_ids, tags.iter().map(|t| t.name.as_str()));
        let mut related = related_of(&a.related);
        let sightings = sightings_of(a);
        let mut tag_key: Vec<_> = tags.iter().map(|t| (t.name.clone(), t.level)).collect();
        tag_key.sort();
        related.sort();
        let key = GroupKey {
            kind: a.kind.clone(),
            value: a.value.clone(),
            category: a.category.clone(),
            to_ids: a.to_ids,
            threat_score: score,
            tags: tag_key,
            related: related.clone(),
            sightings: sightings.clone(),
        };
        let event_id = if a.event_id.is_empty() {
            a.event.as_ref().map(|e| e.id.clone()).unwrap_or_default()
        } else {
            a.event_id.clone()
        };
        let slot = *index.entry(key).or_insert_with(|| {
            groups.push(AggregatedAttribute {
                kind: a.kind.clone(),
                value: a.value.clone(),
                category: a.category.clone(),
                to_ids: a.to_ids,
                threat_score: score,
                decay_score: None,
                tags,
                related_attributes: related,
                sightings,
                associated_misp_event_ids: Vec::new(),
                attribute_timestamps: Vec::new(),
            });
            groups.len() - 1
        });
        let g = &mut groups[slot];
        if !event_id.is_empty() && !g.associated_misp_event_ids.contains(&event_id) {
            g.associated_misp_event_ids.push(event_id);
        }
        if !a.timestamp.is_empty() && !g.attribute_timestamps.contains(&a.timestamp) {
            g.attribute_timestamps.push(a.timestamp.clone());
        }
        if let Some(d) = a.decay_score {
            g.decay_score = Some(g.decay_score.map_or(d, |m| m.max(d)));
        }
    }
    for g in &mut groups {
        // Unix times as strings: sort by value, not by text.
        g.attribute_timestamps
            .sort_by_key(|t| (t.parse::<i64>().unwrap_or(i64::MAX), t.clone()));
    }
    groups
}

fn events_of(attributes: &[Attribute]) -> Vec<EventSummary> {
    let mut out: Vec<EventSummary> = Vec::new();
    for e in attributes.iter().filter_map(|a| a.event.as_ref()) {
        if out.iter().any(|o| o.id == e.id) {
            continue;
        }
        out.push(EventSummary {
            id: e.id.clone(),
            uuid: e.uuid.clone(),
            info: e.info.clone(),
            date: e.date.clone(),
            analysis: e.analysis.clone(),
            threat_level_id: e.threat_level_id.clone(),
            org_name: e.org_name.clone(),
        });
    }
    out
}

const THREAT_KEYWORDS: &[&str] = &[
    "malware",
    "ransomware",
    "apt",
    "botnet",
    "phishing",
    "ddos",
    "scan",
];

/// The `X` of `misp-galaxy:threat-actor="X"` or `threat-actor:<any>="X"`.
fn threat_actor(tag: &str) -> Option<String> {
    let rest = tag.strip_prefix("misp-galaxy:threat-actor=").or_else(|| {
        tag.strip_prefix("threat-actor:")
            .and_then(|r| r.split_once('=').map(|(_, v)| v))
    })?;
    let v = rest.trim().trim_matches('"');
    (!v.is_empty()).then(|| v.to_owned())
}

/// How restrictive a TLP colour is; 0 for what is not one.
fn tlp_rank(colour: &str) -> u8 {
    match colour {
        "clear" | "white" => 1,
        "green" => 2,
        "amber" => 3,
        "amber+strict" => 4,
        "red" => 5,
        _ => 0,
    }
}

fn summarise(attrs: &[AggregatedAttribute], events: &[EventSummary]) -> Summary {
    let mut attribution: Vec<String> = Vec::new();
    let mut types = BTreeSet::new();
    let mut tlp: Option<String> = None;
    for t in attrs.iter().flat_map(|a| &a.tags) {
        if let Some(actor) = threat_actor(&t.name) {
            if !attribution.contains(&actor) {
                attribution.push(actor);
            }
        }
        let lower = t.name.to_ascii_lowercase();
        for k in THREAT_KEYWORDS {
            if lower.contains(k) {
                types.insert((*k).to_owned());
            }
        }
        if let Some(colour) = lower.strip_prefix("tlp:") {
            let colour = colour.trim();
            types.insert(colour.to_owned());
            if tlp_rank(colour) > tlp.as_deref().map_or(0, tlp_rank) {
                tlp = Some(colour.to_owned());
            }
        }
    }
    let dates = events
        .iter()
        .map(|e| e.date.as_str())
        .filter(|d| !d.is_empty());
    // Latest by date; among equal dates, the first MISP returned.
    let latest = events
        .iter()
        .fold(None::<&EventSummary>, |best, e| match best {
            Some(b) if b.date >= e.date => Some(b),
            _ => Some(e),
        });
    Summary {
        total_attributes: attrs.len(),
        total_events: events.len(),
        earliest_event_date: dates.clone().min().map(str::to_owned),
        latest_event_date: dates.max().map(str::to_owned),
        latest_event_info: latest.map(|e| e.info.clone()),
        latest_event_uuid: latest.map(|e| e.uuid.clone()).filter(|u| !u.is_empty()),
        tlp,
        attribution,
        threat_types: types.into_iter().collect(),
        max_threat_score: attrs.iter().map(|a| a.threat_score).max().unwrap_or(0),
        truncated: false,
        omitted_attributes: None,
        omitted_fields: Vec::new(),
        partial: false,
    }
}

/// The integration's own failure, as an event for Wazuh:
/// `{"integration":"misp","misp_error":{"kind","message","since"}}`.
pub fn error_event(kind: &str, message: &str, since: chrono::DateTime<chrono::Utc>) -> Vec<u8> {
    misp_error(kind, message, since, None)
}

/// A value MISP kept failing on alone, given up on: an error event of kind
/// `lookup_failed` that also names the value in `misp_error.value`, so a
/// rule can show which indicator went unchecked.
pub fn lookup_failed_event(
    value: &str,
    message: &str,
    since: chrono::DateTime<chrono::Utc>,
) -> Vec<u8> {
    misp_error("lookup_failed", message, since, Some(value))
}

fn misp_error(
    kind: &str,
    message: &str,
    since: chrono::DateTime<chrono::Utc>,
    value: Option<&str>,
) -> Vec<u8> {
    let mut error =
        serde_json::json!({"kind": kind, "message": message, "since": wazuh_time(since)});
    if let Some(v) = value {
        error["value"] = v.into();
    }
    serde_json::to_vec(&serde_json::json!({"integration": "misp", "misp_error": error}))
        .expect("error event serialises")
}

pub fn recommendations(max_score: u32) -> Option<Recommendations> {
    let (priority, actions): (_, &[&'static str]) = match max_score {
        8.. => (
            "high",
            &[
                "Block the IP address at the perimeter",
                "Investigate the systems that communicated with this IP",
                "Preserve evidence (logs, memory, network captures)",
                "Escalate to the incident response team",
            ],
        ),
        5.. => (
            "medium",
            &[
                "Monitor traffic to and from this IP",
                "Consider a temporary block",
                "Review logs for related activity",
            ],
        ),
        1.. => (
            "low",
            &[
                "Watch for unusual patterns involving this IP",
                "Add the IP to a watchlist",
            ],
        ),
        0 => return None,
    };
    Some(Recommendations {
        priority,
        actions: actions.to_vec(),
    })
}

/// What MISP's answer contributes to an event: `misp_data` and the
/// recommendations; `None` when MISP knows nothing.
fn misp_part(attributes: &[Attribute]) -> Option<(MispData, Option<Recommendations>)> {
    if attributes.is_empty() {
        return None;
    }
    let aggregated = aggregate(attributes);
    let events = events_of(attributes);
    let summary = summarise(&aggregated, &events);
    let recommendations = recommendations(summary.max_threat_score);
    Some((
        MispData {
            attributes: aggregated,
            events,
            summary,
            server: None,
        },
        recommendations,
    ))
}

/// Builds the event for `hit`, or `None` when MISP knows nothing about it.
pub fn enrich<'a>(
    ctx: &AlertContext<'a>,
    hit: &Occurrence,
    attributes: &[Attribute],
    now: chrono::DateTime<chrono::Utc>,
) -> Option<EnrichedEvent<'a>> {
    let (misp_data, recommendations) = misp_part(attributes)?;
    let value = hit.observable.to_string();
    let kind = hit.observable.kind();
    Some(EnrichedEvent {
        integration: "misp",
        event_id: event_id(&value, ctx),
        timestamp: wazuh_time(now),
        detected_ip: (kind == Kind::Ip).then(|| DetectedIp {
            value: value.clone(),
            direction: hit.direction.as_str(),
            field_path: hit.field_path.clone(),
            raw_context: hit.raw_context.clone(),
            matched_network: None,
        }),
        detected_observable: (kind != Kind::Ip).then(|| DetectedObservable {
            kind: kind.as_str(),
            value: value.clone(),
            direction: Direction::Unknown.as_str(),
            field_path: hit.field_path.clone(),
            raw_context: hit.raw_context.clone(),
            matched_domain: None,
        }),
        retro_hunt: None,
        recommendations,
        misp_data,
        context: ctx.clone(),
        data: TopLevelData::of(ctx).to_map(),
    })
}

/// [`enrich`] with what `answer` says about itself (server, network,
/// partial, truncated); `selected` are the attributes of it to show.
pub fn enrich_answer<'a>(
    ctx: &AlertContext<'a>,
    hit: &Occurrence,
    answer: &LookupResult,
    selected: &[Attribute],
    now: chrono::DateTime<chrono::Utc>,
) -> Option<EnrichedEvent<'a>> {
    let mut ev = enrich(ctx, hit, selected, now)?;
    mark(&mut ev.misp_data, answer);
    if let Some(d) = &mut ev.detected_ip {
        d.matched_network = answer.matched_network.map(|n| n.to_string());
    }
    if let Some(d) = &mut ev.detected_observable {
        d.matched_domain = answer.matched_domain.as_deref().map(str::to_owned);
    }
    if let Some(salt) = id_salt(answer) {
        ev.event_id = event_id_from(&hit.observable.to_string(), ctx, Some(salt));
    }
    Some(ev)
}

/// The part of an event that depends only on MISP's answer for an IP,
/// serialised once per lookup-cache entry and spliced into every event for
/// that IP: aggregation and its serialisation are most of enrichment's cost,
/// and a hot IP is seen in thousands of alerts.
#[derive(Debug)]
pub struct Prepared {
    pub misp_data: Box<serde_json::value::RawValue>,
    pub recommendations: Option<Box<serde_json::value::RawValue>>,
}

/// `None` when MISP knows nothing (no event is sent then).
pub fn prepare(answer: &LookupResult) -> Option<Prepared> {
    let (mut misp_data, recommendations) = misp_part(&answer.attributes)?;
    mark(&mut misp_data, answer);
    let raw = |v: String| {
        serde_json::value::RawValue::from_string(v).expect("serde_json output is valid JSON")
    };
    Some(Prepared {
        misp_data: raw(serde_json::to_string(&misp_data).expect("serialises")),
        recommendations: recommendations
            .map(|r| raw(serde_json::to_string(&r).expect("serialises"))),
    })
}

/// What the answer says about itself, in its MISP part: cut to a first
/// page, built from the mirror, which server.
fn mark(misp_data: &mut MispData, answer: &LookupResult) {
    misp_data.summary.truncated |= answer.truncated;
    misp_data.summary.partial |= answer.partial;
    misp_data.server = answer.server.as_deref().map(str::to_owned);
}

/// The server name that goes into an event's id: none for the first.
fn id_salt(answer: &LookupResult) -> Option<&str> {
    (answer.server_position > 0)
        .then_some(answer.server.as_deref())
        .flatten()
}

/// The event for `hit` from a [`Prepared`] MISP part, appended to `out`.
/// Returns false (and leaves `out` as it was) when it would exceed `limit`
/// bytes: the caller then takes the full path, whose size guard shrinks it.
///
/// The same bytes as serialising [`EnrichedEvent`] (a test holds the two
/// paths to that), written by hand: this runs once per event, and through
/// serde every one of its ~35 keys was escaped like a value, which cost more
/// than the rest of the writing. Keys are literals here; values go through
/// [`push_str`], which copies strings that need no escaping as they are.
pub fn write_spliced(
    ctx: &AlertContext<'_>,
    hit: &Occurrence,
    answer: &LookupResult,
    prepared: &Prepared,
    timestamp: &str,
    limit: usize,
    out: &mut Vec<u8>,
) -> bool {
    let start = out.len();
    let text = hit.text();
    let value = text.as_str();
    out.extend_from_slice(br#"{"integration":"misp","event_id":"#);
    push_str(out, &event_id_from(value, ctx, id_salt(answer)));
    out.extend_from_slice(br#","timestamp":"#);
    push_str(out, timestamp);
    let kind = hit.observable.kind();
    if kind == Kind::Ip {
        out.extend_from_slice(br#","detected_ip":{"value":"#);
    } else {
        out.extend_from_slice(br#","detected_observable":{"type":"#);
        push_str(out, kind.as_str());
        out.extend_from_slice(br#","value":"#);
    }
    push_str(out, value);
    out.extend_from_slice(br#","direction":"#);
    push_str(out, hit.direction.as_str());
    out.extend_from_slice(br#","field_path":"#);
    push_str(out, &hit.field_path);
    out.extend_from_slice(br#","raw_context":"#);
    push_str(out, &hit.raw_context);
    if kind == Kind::Ip {
        if let Some(n) = &answer.matched_network {
            out.extend_from_slice(br#","matched_network":"#);
            push_str(out, &n.to_string());
        }
    } else if let Some(d) = &answer.matched_domain {
        out.extend_from_slice(br#","matched_domain":"#);
        push_str(out, d);
    }
    out.extend_from_slice(br#"},"misp_data":"#);
    out.extend_from_slice(prepared.misp_data.get().as_bytes());
    if let Some(r) = &prepared.recommendations {
        out.extend_from_slice(br#","recommendations":"#);
        out.extend_from_slice(r.get().as_bytes());
    }
    let rule = &ctx.rule;
    out.extend_from_slice(br#","rule":{"id":"#);
    push_str(out, &rule.id);
    out.extend_from_slice(br#","description":"#);
    push_str(out, &rule.description);
    out.extend_from_slice(br#","level":"#);
    push_node(out, rule.level);
    out.extend_from_slice(br#","groups":["#);
    let groups = rule.groups.and_then(|g| g.as_array());
    for (i, g) in groups.iter().flat_map(|g| g.iter()).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_node(out, Some(g));
    }
    let agent = &ctx.agent;
    out.extend_from_slice(br#"]},"agent":{"id":"#);
    push_str(out, &agent.id);
    out.extend_from_slice(br#","name":"#);
    push_str(out, &agent.name);
    if let Some(ip) = &agent.ip {
        out.extend_from_slice(br#","ip":"#);
        push_str(out, ip);
    }
    out.extend_from_slice(br#"},"manager":{"name":"#);
    push_str(out, &ctx.manager.name);
    out.extend_from_slice(br#"},"location":"#);
    push_str(out, &ctx.location);
    out.extend_from_slice(br#","wazuh_alert_timestamp":"#);
    push_str(out, &ctx.timestamp);
    out.extend_from_slice(br#","decoder":{"#);
    if let Some(name) = ctx.decoder.name {
        out.extend_from_slice(br#""name":"#);
        push_str(out, name);
    }
    out.push(b'}');
    for (k, v) in TopLevelData::of(ctx).entries() {
        out.push(b',');
        push_str(out, k);
        out.push(b':');
        push_node(out, Some(v));
    }
    out.push(b'}');
    if out.len() - start > limit {
        out.truncate(start);
        return false;
    }
    true
}

/// `s` as a JSON string, as serde_json writes it: copied as it is unless it
/// holds a quote, a backslash or a control character (most alert text
/// holds none, and checking is cheaper than escaping).
fn push_str(out: &mut Vec<u8>, s: &str) {
    if !needs_escape(s.as_bytes()) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, s).expect("a string serialises");
    }
}

/// Whether `s` holds a byte JSON must escape. Checked 16 bytes at a time
/// without an early exit inside a block, which the compiler turns into
/// vector compares; a byte-at-a-time `all` cannot be vectorised, and every
/// string of every event goes through here.
fn needs_escape(s: &[u8]) -> bool {
    let escapes = |b: u8| (b < 0x20) | (b == b'"') | (b == b'\\');
    let mut blocks = s.chunks_exact(16);
    for block in &mut blocks {
        if block.iter().fold(false, |any, &b| any | escapes(b)) {
            return true;
        }
    }
    blocks.remainder().iter().any(|&b| escapes(b))
}

/// An alert value as serde_json writes it; `None` is null.
fn push_node(out: &mut Vec<u8>, node: Option<Node<'_>>) {
    match node {
        Some(n) => match alert::as_str(n) {
            Some(s) => push_str(out, s),
            None => serde_json::to_writer(&mut *out, &Json(n)).expect("a parsed value serialises"),
        },
        None => out.extend_from_slice(b"null"),
    }
}

fn node_or_null<S: serde::Serializer>(node: &Option<Node<'_>>, s: S) -> Result<S::Ok, S::Error> {
    node.map(Json).serialize(s)
}

fn array_or_empty<S: serde::Serializer>(node: &Option<Node<'_>>, s: S) -> Result<S::Ok, S::Error> {
    match node.filter(|n| n.is_array()) {
        Some(n) => Json(n).serialize(s),
        None => s.collect_seq(std::iter::empty::<()>()),
    }
}

/// Serialises `ev` into at most `limit` bytes, shrinking it in the
/// documented order when it would not fit: related attributes, then
/// sighting sources, then the lowest-scored attributes, then the events no
/// remaining attribute names. Returns `None` only if even a single attribute
/// does not fit.
pub fn serialize_within(ev: &mut EnrichedEvent, limit: usize) -> Option<Vec<u8>> {
    let to_bytes = |ev: &EnrichedEvent| serde_json::to_vec(ev).expect("event serialises");
    let bytes = to_bytes(ev);
    if bytes.len() <= limit {
        return Some(bytes);
    }
    ev.misp_data.summary.truncated = true;
    for a in &mut ev.misp_data.attributes {
        a.related_attributes.clear();
    }
    let bytes = to_bytes(ev);
    if bytes.len() <= limit {
        return Some(bytes);
    }
    for a in &mut ev.misp_data.attributes {
        a.sightings.sources.clear();
    }
    let bytes = to_bytes(ev);
    if bytes.len() <= limit {
        return Some(bytes);
    }
    // Highest score first (stable, so MISP's order breaks ties), then keep
    // the longest prefix that fits, found by bisection.
    let total = ev.misp_data.attributes.len();
    ev.misp_data
        .attributes
        .sort_by_key(|a| std::cmp::Reverse(a.threat_score));
    let all_attrs = std::mem::take(&mut ev.misp_data.attributes);
    let all_events = std::mem::take(&mut ev.misp_data.events);
    let fit = |ev: &mut EnrichedEvent, keep: usize| -> Vec<u8> {
        ev.misp_data.attributes = all_attrs[..keep].to_vec();
        let named: BTreeSet<&String> = ev
            .misp_data
            .attributes
            .iter()
            .flat_map(|a| &a.associated_misp_event_ids)
            .collect();
        ev.misp_data.events = all_events
            .iter()
            .filter(|e| named.contains(&e.id))
            .cloned()
            .collect();
        ev.misp_data.summary.omitted_attributes = Some(total - keep);
        to_bytes(ev)
    };
    let (mut lo, mut hi) = (0usize, total);
    let mut best = None;
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        let b = fit(ev, mid);
        if b.len() <= limit {
            lo = mid;
            best = Some(b);
        } else {
            hi = mid - 1;
        }
    }
    if lo > 0 {
        return match best {
            Some(b) if ev.misp_data.attributes.len() == lo => Some(b),
            _ => Some(fit(ev, lo)),
        };
    }
    // Even one attribute does not fit: the alert's own `data` is what is
    // large. Its copied fields go, largest first, except those rules and
    // active responses key on; the full alert stays in alerts.json.
    fit(ev, 1);
    let mut by_size: Vec<(usize, String)> = ev
        .data
        .iter()
        .filter(|(k, _)| !KEPT_DATA_FIELDS.contains(&k.as_str()))
        .map(|(k, v)| {
            (
                serde_json::to_vec(v).map_or(0, |b| b.len()) + k.len(),
                k.clone(),
            )
        })
        .collect();
    by_size.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    for (_, key) in by_size {
        ev.data.shift_remove(&key);
        ev.misp_data.summary.omitted_fields.push(key);
        let b = to_bytes(ev);
        if b.len() <= limit {
            return Some(b);
        }
    }
    None
}

/// `data` fields never cut by the size guard: what Wazuh rules, the
/// shipped MISP rules and active responses read.
pub const KEPT_DATA_FIELDS: &[&str] =
    &["srcip", "dstip", "srcport", "dstport", "srcuser", "dstuser"];

/// Keeps the attributes `misp.match_types` asks for, given the direction
/// the observable was seen in. `"direction"` is the original script's
/// behaviour, for IPs; other kinds keep every attribute.
pub fn select(hits: &[Attribute], mode: MatchTypes, hit: &Occurrence) -> Vec<Attribute> {
    hits.iter()
        .filter(|a| selects(a, mode, hit))
        .cloned()
        .collect()
}

/// Whether [`select`] keeps `a`.
pub fn selects(a: &Attribute, mode: MatchTypes, hit: &Occurrence) -> bool {
    if hit.observable.kind() != Kind::Ip {
        return true;
    }
    match (mode, hit.direction) {
        (MatchTypes::All, _) => true,
        (MatchTypes::Direction, Direction::Source) => a.kind.starts_with("ip-src"),
        (MatchTypes::Direction, Direction::Destination) => a.kind.starts_with("ip-dst"),
        (MatchTypes::Direction, Direction::Unknown) => a.kind.starts_with("ip-"),
    }
}

/// What [`render`] did with one occurrence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rendered {
    /// One event appended to the datagrams.
    Sent,
    /// Intelligence knows nothing that the config keeps: no event.
    Nothing,
    /// The event does not fit one datagram even after the size guard.
    TooLarge,
}

/// The one way an occurrence and intelligence's answer become an event:
/// appended to `out` as one datagram under `header`.
///
/// With `match_types = "all"` the MISP part depends only on the answer, so
/// it is serialised once per answer (kept in [`LookupResult::derived`])
/// and spliced into each event ([`write_spliced`]); direction mode, and
/// events the size guard must shrink, take the full path ([`enrich`] and
/// [`serialize_within`]). A test holds both paths to the same bytes.
#[allow(clippy::too_many_arguments)]
pub fn render(
    ctx: &AlertContext<'_>,
    hit: &Occurrence,
    answer: &LookupResult,
    match_types: MatchTypes,
    now: chrono::DateTime<chrono::Utc>,
    timestamp: &str,
    header: &str,
    out: &mut Datagrams,
) -> Rendered {
    let Some(limit) = crate::output::MAX_DATAGRAM.checked_sub(header.len()) else {
        return Rendered::TooLarge;
    };
    let render_one = |answer: &LookupResult, out: &mut Datagrams| -> Rendered {
        if match_types == MatchTypes::All {
            let prepared = answer.derived(prepare);
            let Some(prepared) = prepared.and_then(Option::as_ref) else {
                return Rendered::Nothing;
            };
            if out.push_with(header, |buf| {
                write_spliced(ctx, hit, answer, prepared, timestamp, limit, buf)
            }) {
                return Rendered::Sent;
            }
        }
        let selected = select(answer, match_types, hit);
        let Some(mut ev) = enrich_answer(ctx, hit, answer, &selected, now) else {
            return Rendered::Nothing;
        };
        match serialize_within(&mut ev, limit) {
            Some(payload) if out.push(header, &payload) => {
                let summary = &ev.misp_data.summary;
                if summary.truncated {
                    tracing::info!(
                        value = %hit.observable,
                        omitted = summary.omitted_attributes,
                        omitted_fields = ?summary.omitted_fields,
                        "event shrunk to fit one datagram"
                    );
                }
                Rendered::Sent
            }
            _ => Rendered::TooLarge,
        }
    };
    // One event per server that knows the observable.
    let mut rendered = Rendered::Nothing;
    for part in answer.parts() {
        match render_one(part, out) {
            Rendered::Sent => rendered = Rendered::Sent,
            Rendered::TooLarge if rendered == Rendered::Nothing => rendered = Rendered::TooLarge,
            _ => {}
        }
    }
    rendered
}

#[cfg(test)]
mod tests;
