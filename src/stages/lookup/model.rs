//! MISP's `attributes/restSearch` answer, parsed tolerantly.
//!
//! Real MISP servers differ by version and settings: ids come as strings or
//! numbers, `to_ids` as a bool or `"1"`, `Attribute` as a list or (rarely) a
//! single object, and the answer is wrapped in `{"response": ...}` or not
//! (PyMISP test captures and older versions). Unknown fields are ignored and
//! missing optional ones defaulted; only a document that has no attribute
//! list at all is an error.

use serde::de::{self, Deserializer};
use serde::Deserialize;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Attribute {
    pub id: String,
    pub uuid: String,
    pub event_id: String,
    pub kind: String,
    pub category: String,
    pub to_ids: bool,
    pub value: String,
    pub timestamp: String,
    pub tags: Vec<Tag>,
    pub sightings: Vec<Sighting>,
    pub related: Vec<Related>,
    pub decay_score: Option<f64>,
    /// MISP's own verdict with `includeDecayScore`: every model that
    /// scored the attribute says it decayed (as `excludeDecayed` reads it,
    /// `MispAttribute::fetchAttributes`). `None`: no model scored it.
    pub decayed: Option<bool>,
    pub event: Option<EventInfo>,
    /// Soft-deleted in MISP: only a search with `deleted` shows it.
    pub deleted: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Tag {
    #[serde(default, deserialize_with = "lenient_string")]
    pub name: String,
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub colour: Option<String>,
    #[serde(default, deserialize_with = "lenient_bool")]
    pub inherited: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sighting {
    /// Unix seconds.
    pub date: Option<i64>,
    /// `source`, else the sighting organisation's name.
    pub source: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Related {
    pub kind: String,
    pub value: String,
    pub category: String,
    pub relation: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventInfo {
    pub id: String,
    pub uuid: String,
    pub info: String,
    pub date: String,
    pub analysis: String,
    pub threat_level_id: String,
    pub org_name: String,
    pub tags: Vec<Tag>,
    /// Only with `includeContext`: restSearch's default event block
    /// (`fetchAttributes`' `Event.fields`) has no `published`.
    pub published: Option<bool>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("body is not JSON: {0}")]
    NotJson(String),
    #[error("JSON has no attribute list (expected {{\"response\":{{\"Attribute\":[...]}}}}): {0}")]
    WrongShape(String),
}

pub fn parse_response(body: &[u8]) -> Result<Vec<Attribute>, ParseError> {
    let doc: Envelope = serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            ParseError::WrongShape(e.to_string())
        } else {
            ParseError::NotJson(e.to_string())
        }
    })?;
    let list = match doc {
        Envelope::Wrapped { response } => match response {
            Response::Attributes { attribute } => attribute,
            // MISP answers an empty search with `"response": []` on some versions.
            Response::Empty(v) if v.is_empty() => OneOrMany::Many(Vec::new()),
            Response::Empty(_) => {
                return Err(ParseError::WrongShape(
                    "`response` is a non-empty list".into(),
                ))
            }
        },
        Envelope::Bare { attribute } => attribute,
    };
    Ok(match list {
        OneOrMany::One(a) => vec![(*a).into()],
        OneOrMany::Many(v) => v.into_iter().map(Attribute::from).collect(),
    })
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Envelope {
    Wrapped {
        response: Response,
    },
    Bare {
        #[serde(rename = "Attribute")]
        attribute: OneOrMany<RawAttribute>,
    },
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Response {
    Attributes {
        #[serde(rename = "Attribute")]
        attribute: OneOrMany<RawAttribute>,
    },
    Empty(Vec<serde::de::IgnoredAny>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    Many(Vec<T>),
    One(Box<T>),
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawAttribute {
    #[serde(deserialize_with = "lenient_string")]
    id: String,
    #[serde(deserialize_with = "lenient_string")]
    uuid: String,
    #[serde(deserialize_with = "lenient_string")]
    event_id: String,
    #[serde(rename = "type", deserialize_with = "lenient_string")]
    kind: String,
    #[serde(deserialize_with = "lenient_string")]
    category: String,
    #[serde(deserialize_with = "lenient_bool")]
    to_ids: bool,
    #[serde(deserialize_with = "lenient_string")]
    value: String,
    #[serde(deserialize_with = "lenient_string")]
    timestamp: String,
    #[serde(rename = "Tag", deserialize_with = "lenient_list")]
    tag: Vec<Tag>,
    #[serde(rename = "Sighting", deserialize_with = "lenient_list")]
    sighting: Vec<RawSighting>,
    #[serde(rename = "RelatedAttribute", deserialize_with = "lenient_list")]
    related: Vec<RawRelated>,
    #[serde(deserialize_with = "lenient_list")]
    decay_score: Vec<RawDecay>,
    #[serde(rename = "Event")]
    event: Option<RawEvent>,
    #[serde(deserialize_with = "lenient_bool")]
    deleted: bool,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawSighting {
    #[serde(deserialize_with = "lenient_string")]
    date_sighting: String,
    #[serde(deserialize_with = "lenient_string")]
    source: String,
    #[serde(rename = "Organisation")]
    organisation: Option<RawOrg>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawOrg {
    #[serde(deserialize_with = "lenient_string")]
    name: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawRelated {
    #[serde(rename = "type", deserialize_with = "lenient_string")]
    kind: String,
    #[serde(deserialize_with = "lenient_string")]
    value: String,
    #[serde(deserialize_with = "lenient_string")]
    category: String,
    #[serde(deserialize_with = "lenient_opt_string")]
    relation: Option<String>,
    #[serde(deserialize_with = "lenient_opt_string")]
    object_relation: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawDecay {
    #[serde(deserialize_with = "lenient_f64")]
    score: Option<f64>,
    #[serde(deserialize_with = "lenient_opt_bool")]
    decayed: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawEvent {
    #[serde(deserialize_with = "lenient_string")]
    id: String,
    #[serde(deserialize_with = "lenient_string")]
    uuid: String,
    #[serde(deserialize_with = "lenient_string")]
    info: String,
    #[serde(deserialize_with = "lenient_string")]
    date: String,
    #[serde(deserialize_with = "lenient_string")]
    analysis: String,
    #[serde(deserialize_with = "lenient_string")]
    threat_level_id: String,
    #[serde(deserialize_with = "lenient_string")]
    org_name: String,
    #[serde(rename = "Orgc")]
    orgc: Option<RawOrg>,
    #[serde(rename = "Tag", deserialize_with = "lenient_list")]
    tag: Vec<Tag>,
    #[serde(deserialize_with = "lenient_opt_bool")]
    published: Option<bool>,
}

impl From<RawAttribute> for Attribute {
    fn from(r: RawAttribute) -> Self {
        let event = r.event.map(|e| {
            let org_name = e
                .orgc
                .map(|o| o.name)
                .filter(|n| !n.is_empty())
                .or_else(|| Some(e.org_name).filter(|n| !n.is_empty()))
                .unwrap_or_else(|| "Unknown".to_owned());
            EventInfo {
                id: e.id,
                uuid: e.uuid,
                info: e.info,
                date: e.date,
                analysis: e.analysis,
                threat_level_id: e.threat_level_id,
                org_name,
                tags: e.tag,
                published: e.published,
            }
        });
        Attribute {
            event_id: if r.event_id.is_empty() {
                event.as_ref().map(|e| e.id.clone()).unwrap_or_default()
            } else {
                r.event_id
            },
            id: r.id,
            uuid: r.uuid,
            kind: r.kind,
            category: r.category,
            to_ids: r.to_ids,
            value: r.value,
            timestamp: r.timestamp,
            tags: r.tag,
            sightings: r
                .sighting
                .into_iter()
                .map(|s| Sighting {
                    date: s.date_sighting.trim().parse().ok(),
                    source: Some(s.source)
                        .filter(|x| !x.is_empty())
                        .or_else(|| s.organisation.map(|o| o.name).filter(|x| !x.is_empty())),
                })
                .collect(),
            related: r
                .related
                .into_iter()
                .map(|x| Related {
                    kind: x.kind,
                    value: x.value,
                    category: x.category,
                    relation: x.relation.or(x.object_relation),
                })
                .collect(),
            decayed: {
                let verdicts: Vec<bool> = r.decay_score.iter().filter_map(|d| d.decayed).collect();
                (!verdicts.is_empty()).then(|| verdicts.iter().all(|d| *d))
            },
            decay_score: r
                .decay_score
                .iter()
                .filter_map(|d| d.score)
                .fold(None, |m: Option<f64>, s| Some(m.map_or(s, |m| m.max(s)))),
            event,
            deleted: r.deleted,
        }
    }
}

fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(lenient_opt_string(d)?.unwrap_or_default())
}

fn lenient_opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    })
}

fn lenient_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(lenient_opt_bool(d)?.unwrap_or(false))
}

fn lenient_opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Bool(b) => Some(b),
        serde_json::Value::Number(n) => Some(n.as_f64().is_some_and(|f| f != 0.0)),
        serde_json::Value::String(s) => Some(matches!(s.trim(), "1" | "true" | "True")),
        _ => None,
    })
}

fn lenient_f64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    })
}

/// A list, a single object, or null/absent.
fn lenient_list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let v = serde_json::Value::deserialize(d)?;
    match v {
        serde_json::Value::Null => Ok(Vec::new()),
        serde_json::Value::Array(items) => items
            .into_iter()
            .map(|i| serde_json::from_value(i).map_err(de::Error::custom))
            .collect(),
        obj @ serde_json::Value::Object(_) => serde_json::from_value(obj)
            .map(|x| vec![x])
            .map_err(de::Error::custom),
        _ => Ok(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let wrapped = br#"{"response":{"Attribute":[{"id":"1","event_id":2,"type":"ip-dst","value":"1.2.3.4","to_ids":"1","category":"Network activity"}]}}"#;
        let a = parse_response(wrapped).unwrap();
        assert_eq!(a[0].event_id, "2");
        assert!(a[0].to_ids);
        let single = br#"{"response":{"Attribute":{"id":"1","type":"ip-dst","value":"1.2.3.4"}}}"#;
        assert_eq!(parse_response(single).unwrap().len(), 1);
        assert_eq!(parse_response(br#"{"response":[]}"#).unwrap(), vec![]);
        assert_eq!(
            parse_response(br#"{"response":{"Attribute":[]}}"#).unwrap(),
            vec![]
        );
        assert_eq!(parse_response(br#"{"Attribute":[]}"#).unwrap(), vec![]);
        assert!(matches!(
            parse_response(b"<html>login</html>"),
            Err(ParseError::NotJson(_))
        ));
        assert!(matches!(
            parse_response(br#"{"response":{"Attr"#),
            Err(ParseError::NotJson(_))
        ));
        assert!(matches!(
            parse_response(br#"{"name":"x"}"#),
            Err(ParseError::WrongShape(_))
        ));
        assert!(matches!(
            parse_response(br#"[1,2]"#),
            Err(ParseError::WrongShape(_))
        ));
    }

    #[test]
    fn misps_decayed_flag_is_read_and_every_model_must_agree() {
        let body = |flags: &str| {
            format!(
                r#"{{"response":{{"Attribute":[{{"id":"1","type":"ip-dst","value":"1.2.3.4","decay_score":[{flags}]}}]}}}}"#
            )
        };
        let one =
            |d: bool, score: f64| format!(r#"{{"score":{score},"base_score":80,"decayed":{d}}}"#);
        let parsed = |flags: String| parse_response(body(&flags).as_bytes()).unwrap().remove(0);
        let a = parsed(format!("{},{}", one(true, 10.0), one(false, 50.0)));
        assert_eq!(a.decayed, Some(false), "one model still scores it");
        assert_eq!(a.decay_score, Some(50.0));
        // MISP's verdict can differ from the score against our threshold
        // (its model's own threshold): the flag is what it says.
        let a = parsed(format!("{},{}", one(true, 45.0), one(true, 31.0)));
        assert_eq!(a.decayed, Some(true));
        assert_eq!(parsed(String::new()).decayed, None);
    }
}
