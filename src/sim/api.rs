//! The part of MISP's REST API that a user (or a test) writes with:
//! events, attributes, tags, publishing and warninglists, with the side
//! effects MISP gives each of them. A scenario populates the simulator
//! through these exactly as it populates a real MISP, so that one
//! scenario runs against both.
//!
//! What each endpoint does, and where MISP 2.5 says so:
//! - `POST /events/add`: a new event, unpublished unless `published` is
//!   given; its attributes keep a `timestamp` they come with (MISP sets it
//!   only when it is empty, `MispAttribute::beforeValidate`).
//! - `POST /events/publish/<id>`: `published` and `publish_timestamp`
//!   only; no attribute or event timestamp moves (`Event::publish`).
//! - `POST /events/delete/<id>`: the event and its attributes, for good.
//! - `POST /attributes/add/<event id>`, `POST /attributes/edit/<id>`: the
//!   attribute's timestamp moves to now unless one is given (an edit with
//!   one not newer is refused, `MispAttribute::editAttribute`), and the
//!   event is unpublished with its timestamp moved (`Event::unpublishEvent`).
//! - `POST /attributes/delete/<id>`: a soft delete (`deleted`, the
//!   timestamp moved); `/attributes/delete/<id>/1` a hard one. Both
//!   unpublish the event (`MispAttribute::deleteAttribute`).
//! - `POST /tags/attachTagToObject`, `/tags/removeTagFromObject`: on an
//!   event, it is unpublished (`TagsController`); on an attribute, the
//!   attribute is touched and its event unpublished at that timestamp
//!   (`MispAttribute::touch`).
//! - `POST /warninglists/toggleEnable`: a list enabled or disabled by name.

use super::{json, next_timestamp, rendered, respond, s, truthy, Dataset, Inner, Value};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use std::sync::Arc;

fn refused(inner: &Inner, headers: &HeaderMap, url: &str) -> Option<Response> {
    let ok = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|k| k == inner.key);
    (!ok).then(|| {
        respond(
            403,
            "application/json",
            json!({"name": "Authentication failed.", "message": "Authentication failed.", "url": url})
                .to_string(),
        )
    })
}

fn not_found(url: &str, what: &str) -> Response {
    respond(
        404,
        "application/json",
        json!({"name": format!("Invalid {what}"), "message": format!("Invalid {what}"), "url": url})
            .to_string(),
    )
}

fn ok(v: Value) -> Response {
    respond(200, "application/json", v.to_string())
}

fn body_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or(Value::Null)
}

fn uuid4() -> String {
    let r = fastrand::u128(..);
    let b = r.to_be_bytes();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        u16::from_be_bytes([b[4], b[5]]),
        u16::from_be_bytes([b[6], b[7]]) & 0x0fff,
        (u16::from_be_bytes([b[8], b[9]]) & 0x3fff) | 0x8000,
        r & 0xffff_ffff_ffff
    )
}

impl Dataset {
    fn event_by_id(&self, id: &str) -> Option<usize> {
        self.events.iter().position(|e| s(e.get("id")) == id)
    }

    fn attribute_by_id(&self, id: &str) -> Option<usize> {
        self.attributes
            .iter()
            .position(|(_, a)| s(a.get("id")) == id)
            .filter(|i| !self.gone.contains(i))
    }

    /// `Event::unpublishEvent`: `published` off, the event's timestamp
    /// moved to `ts`.
    pub(super) fn unpublish(&mut self, event: usize, ts: i64) {
        let e = &mut self.events[event];
        e["published"] = json!(false);
        e["timestamp"] = json!(ts.to_string());
        self.version += 1;
    }

    /// Moves attribute `i`'s timestamp to `ts`, keeping the timestamp
    /// index right.
    pub(super) fn stamp(&mut self, i: usize, ts: i64) {
        if let Ok(old) = s(self.attributes[i].1.get("timestamp")).parse::<i64>() {
            if let Some(list) = self.by_timestamp.get_mut(&old) {
                list.retain(|&j| j != i);
            }
        }
        self.attributes[i].1["timestamp"] = json!(ts.to_string());
        self.by_timestamp.entry(ts).or_default().push(i);
        self.version += 1;
    }

    /// A new attribute of `event` from a user's JSON: an id, a uuid if it
    /// has none, and now as its timestamp unless it brings one.
    pub(super) fn push_attribute(&mut self, event: usize, attribute: &Value) -> usize {
        self.next_attr_id += 1;
        let mut out = rendered(attribute, &s(self.events[event].get("id")), "0");
        out.insert("id".into(), json!(self.next_attr_id.to_string()));
        if out.get("to_ids").is_none_or(Value::is_null) {
            out.insert("to_ids".into(), json!(true));
        }
        if out.get("category").is_none_or(Value::is_null) {
            out.insert("category".into(), json!("Network activity"));
        }
        if s(out.get("uuid")).is_empty() {
            out.insert("uuid".into(), json!(uuid4()));
        }
        if s(out.get("timestamp")).is_empty() {
            out.insert("timestamp".into(), json!(next_timestamp(self).to_string()));
        }
        for f in ["to_ids", "deleted"] {
            let v = truthy(out.get(f));
            out.insert(f.into(), json!(v));
        }
        if let Some(last) = self.attributes.last() {
            let last_id: u64 = s(last.1.get("id")).parse().unwrap_or(0);
            self.ids_ascending &= last_id < self.next_attr_id;
        }
        self.attributes.push((event, Value::Object(out)));
        let i = self.attributes.len() - 1;
        self.index(i);
        self.by_event[event].push(i);
        i
    }

    /// `POST /events/add`.
    fn add_event(&mut self, body: &Value) -> Value {
        let e = body.get("Event").unwrap_or(body);
        let now = next_timestamp(self);
        self.next_event_id += 1;
        let id = self.next_event_id.to_string();
        let uuid = Some(s(e.get("uuid")))
            .filter(|u| !u.is_empty())
            .unwrap_or_else(uuid4);
        let published = truthy(e.get("published"));
        let event = json!({
            "id": id,
            "orgc_id": "1",
            "org_id": "1",
            "date": chrono::Utc::now().format("%Y-%m-%d").to_string(),
            "threat_level_id": Some(s(e.get("threat_level_id"))).filter(|t| !t.is_empty()).unwrap_or_else(|| "4".into()),
            "info": s(e.get("info")),
            "published": published,
            "uuid": uuid,
            "analysis": Some(s(e.get("analysis"))).filter(|t| !t.is_empty()).unwrap_or_else(|| "0".into()),
            "timestamp": now.to_string(),
            "distribution": Some(s(e.get("distribution"))).filter(|t| !t.is_empty()).unwrap_or_else(|| "1".into()),
            "publish_timestamp": if published { now.to_string() } else { "0".into() },
            "sharing_group_id": "0",
            "extends_uuid": "",
            "Orgc": {"id": "1", "name": "ORGNAME", "uuid": "3f42d880-4e24-4d28-bc9c-3542c9ff0a7b", "local": true},
            "Tag": e.get("Tag").cloned().unwrap_or(json!([])),
        });
        self.events.push(event);
        self.by_event.push(Vec::new());
        let ei = self.events.len() - 1;
        let mut shown = Vec::new();
        for a in e
            .get("Attribute")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let i = self.push_attribute(ei, a);
            shown.push(self.attributes[i].1.clone());
        }
        self.version += 1;
        let mut out = self.events[ei].clone();
        out["Attribute"] = Value::Array(shown);
        json!({ "Event": out })
    }
}

pub(super) async fn add_event(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(r) = refused(&inner, &headers, "/events/add") {
        return r;
    }
    let mut d = inner.data.write().unwrap_or_else(|e| e.into_inner());
    ok(d.add_event(&body_of(&body)))
}

pub(super) async fn publish_event(
    State(inner): State<Arc<Inner>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let url = format!("/events/publish/{id}");
    if let Some(r) = refused(&inner, &headers, &url) {
        return r;
    }
    let mut d = inner.data.write().unwrap_or_else(|e| e.into_inner());
    let Some(ei) = d.event_by_id(&id) else {
        return not_found(&url, "event");
    };
    let now = next_timestamp(&d);
    d.events[ei]["published"] = json!(true);
    d.events[ei]["publish_timestamp"] = json!(now.to_string());
    d.version += 1;
    ok(
        json!({"saved": true, "success": true, "name": "Event published without alerts",
        "message": "Event published without alerts", "url": url, "id": id}),
    )
}

pub(super) async fn delete_event(
    State(inner): State<Arc<Inner>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let url = format!("/events/delete/{id}");
    if let Some(r) = refused(&inner, &headers, &url) {
        return r;
    }
    let mut d = inner.data.write().unwrap_or_else(|e| e.into_inner());
    let Some(ei) = d.event_by_id(&id) else {
        return not_found(&url, "event");
    };
    for i in d.by_event[ei].clone() {
        d.gone.insert(i);
        let uuid = s(d.attributes[i].1.get("uuid"));
        d.by_uuid.remove(&uuid);
    }
    // The event stays in place (indexes are positions) with nothing left.
    d.by_event[ei].clear();
    d.events[ei]["id"] = json!(format!("deleted-{id}"));
    d.version += 1;
    ok(
        json!({"saved": true, "success": true, "name": "Event deleted.", "message": "Event deleted.", "url": url}),
    )
}

pub(super) async fn add_attribute(
    State(inner): State<Arc<Inner>>,
    Path(event_id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let url = format!("/attributes/add/{event_id}");
    if let Some(r) = refused(&inner, &headers, &url) {
        return r;
    }
    let mut d = inner.data.write().unwrap_or_else(|e| e.into_inner());
    let Some(ei) = d.event_by_id(&event_id) else {
        return not_found(&url, "event");
    };
    let body = body_of(&body);
    let i = d.push_attribute(ei, body.get("Attribute").unwrap_or(&body));
    let ts = s(d.attributes[i].1.get("timestamp")).parse().unwrap_or(0);
    let at = next_timestamp(&d).max(ts);
    d.unpublish(ei, at);
    ok(json!({"Attribute": d.attributes[i].1}))
}

pub(super) async fn edit_attribute(
    State(inner): State<Arc<Inner>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let url = format!("/attributes/edit/{id}");
    if let Some(r) = refused(&inner, &headers, &url) {
        return r;
    }
    let mut d = inner.data.write().unwrap_or_else(|e| e.into_inner());
    let Some(i) = d.attribute_by_id(&id) else {
        return not_found(&url, "attribute");
    };
    let body = body_of(&body);
    let changes = body.get("Attribute").unwrap_or(&body).clone();
    let old_ts: i64 = s(d.attributes[i].1.get("timestamp")).parse().unwrap_or(0);
    let ts = match changes.get("timestamp").map(|t| s(Some(t))) {
        Some(t) if !t.is_empty() => {
            let t: i64 = t.parse().unwrap_or(0);
            if t <= old_ts {
                return respond(
                    403,
                    "application/json",
                    json!({"name": "Could not edit attribute", "message": "Could not edit attribute",
                        "url": url, "errors": "Attribute could not be saved: the attribute is not newer than the stored one"})
                    .to_string(),
                );
            }
            t
        }
        _ => next_timestamp(&d),
    };
    if !d.edit(i, ts, |a| {
        if let Some(m) = changes.as_object() {
            for (k, v) in m {
                if matches!(k.as_str(), "id" | "uuid" | "event_id" | "timestamp") {
                    continue;
                }
                let v = if matches!(k.as_str(), "to_ids" | "deleted") {
                    json!(truthy(Some(v)))
                } else {
                    v.clone()
                };
                a.insert(k.clone(), v);
            }
        }
    }) {
        return not_found(&url, "attribute");
    }
    ok(json!({"Attribute": d.attributes[i].1}))
}

pub(super) async fn delete_attribute(
    State(inner): State<Arc<Inner>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    delete(inner, id, false, headers)
}

pub(super) async fn hard_delete_attribute(
    State(inner): State<Arc<Inner>>,
    Path((id, hard)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    delete(inner, id, hard == "1", headers)
}

fn delete(inner: Arc<Inner>, id: String, hard: bool, headers: HeaderMap) -> Response {
    let url = format!("/attributes/delete/{id}");
    if let Some(r) = refused(&inner, &headers, &url) {
        return r;
    }
    let mut d = inner.data.write().unwrap_or_else(|e| e.into_inner());
    let Some(i) = d.attribute_by_id(&id) else {
        return not_found(&url, "attribute");
    };
    let ts = next_timestamp(&d);
    if hard {
        d.remove(i, ts);
    } else {
        d.edit(i, ts, |a| {
            a.insert("deleted".into(), json!(true));
        });
    }
    ok(json!({"message": "Attribute deleted."}))
}

impl Dataset {
    /// An edit as MISP makes it: the attribute changed and stamped `ts`,
    /// its event unpublished at `ts`. False if `i` is gone.
    pub(super) fn edit(
        &mut self,
        i: usize,
        ts: i64,
        edit: impl FnOnce(&mut serde_json::Map<String, Value>),
    ) -> bool {
        if self.gone.contains(&i) {
            return false;
        }
        let before = s(self.attributes[i].1.get("value"));
        if let Some(obj) = self.attributes[i].1.as_object_mut() {
            edit(obj);
        }
        self.stamp(i, ts);
        if s(self.attributes[i].1.get("value")) != before {
            self.unindex(i);
            self.index(i);
        }
        let ei = self.attributes[i].0;
        self.unpublish(ei, ts);
        true
    }

    /// A hard delete: gone from every search; its event unpublished.
    pub(super) fn remove(&mut self, i: usize, ts: i64) {
        self.gone.insert(i);
        let uuid = s(self.attributes[i].1.get("uuid"));
        self.by_uuid.remove(&uuid);
        let ei = self.attributes[i].0;
        self.by_event[ei].retain(|&j| j != i);
        self.unpublish(ei, ts);
    }

    /// Attaches (or detaches) a tag to the event or attribute `uuid`.
    fn tag(&mut self, uuid: &str, tag: &str, attach: bool) -> Option<String> {
        let now = next_timestamp(self);
        let change = |tags: &mut Value| {
            let list = tags.as_array_mut()?;
            let has = list
                .iter()
                .any(|t| s(t.get("name")).eq_ignore_ascii_case(tag));
            match (attach, has) {
                (true, false) => list.push(json!({"id": "0", "name": tag, "colour": "#ffffff", "exportable": true, "local": false})),
                (false, true) => list.retain(|t| !s(t.get("name")).eq_ignore_ascii_case(tag)),
                _ => {}
            }
            Some(())
        };
        if let Some(ei) = self.events.iter().position(|e| s(e.get("uuid")) == uuid) {
            let e = &mut self.events[ei];
            if !e.get("Tag").is_some_and(Value::is_array) {
                e["Tag"] = json!([]);
            }
            change(&mut e["Tag"])?;
            self.unpublish(ei, now);
            return Some("Event".into());
        }
        let i = *self.by_uuid.get(uuid)?;
        let a = &mut self.attributes[i].1;
        if !a.get("Tag").is_some_and(Value::is_array) {
            a["Tag"] = json!([]);
        }
        change(&mut a["Tag"])?;
        self.stamp(i, now);
        let ei = self.attributes[i].0;
        self.unpublish(ei, now);
        Some("Attribute".into())
    }
}

async fn tag_object(inner: Arc<Inner>, headers: HeaderMap, body: &[u8], attach: bool) -> Response {
    let url = if attach {
        "/tags/attachTagToObject"
    } else {
        "/tags/removeTagFromObject"
    };
    if let Some(r) = refused(&inner, &headers, url) {
        return r;
    }
    let body = body_of(body);
    let (uuid, tag) = (s(body.get("uuid")), s(body.get("tag")));
    let mut d = inner.data.write().unwrap_or_else(|e| e.into_inner());
    match d.tag(&uuid, &tag, attach) {
        Some(scope) => {
            let m = format!(
                "Global tag {tag} successfully {} {scope}.",
                if attach {
                    "attached to"
                } else {
                    "removed from"
                }
            );
            ok(json!({"saved": true, "success": true, "name": m, "message": m, "url": url}))
        }
        None => not_found(url, "object"),
    }
}

pub(super) async fn attach_tag(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    tag_object(inner, headers, &body, true).await
}

pub(super) async fn remove_tag(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    tag_object(inner, headers, &body, false).await
}

pub(super) async fn toggle_warninglist(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let url = "/warninglists/toggleEnable";
    if let Some(r) = refused(&inner, &headers, url) {
        return r;
    }
    let body = body_of(&body);
    let names: Vec<String> = match body.get("name") {
        Some(Value::Array(a)) => a.iter().map(|n| s(Some(n))).collect(),
        other => vec![s(other)],
    };
    let enable = body.get("enabled").is_none_or(|e| truthy(Some(e)));
    let mut d = inner.data.write().unwrap_or_else(|e| e.into_inner());
    let mut n = 0;
    for w in d
        .warninglists
        .iter_mut()
        .filter(|w| names.contains(&w.name))
    {
        w.enabled = enable;
        n += 1;
    }
    d.version += 1;
    if n == 0 {
        return ok(json!({"saved": false, "errors": "Warninglist(s) not found."}));
    }
    ok(
        json!({"saved": true, "success": format!("{n} warninglist(s) {}", if enable { "enabled" } else { "disabled" })}),
    )
}
