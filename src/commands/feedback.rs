//! `wazuh-misp false-positive` and `wazuh-misp hunt`: the SOC's side of the
//! feedback loop, as one-shot commands beside the running daemon.

use super::mirror::Opened;
use crate::config::Config;
use crate::false_positives::{self, Changed};
use crate::ledger::hunt::{alert_id_of, hunt_key};
use crate::ledger::store::LedgerStore;
use crate::observable::Observable;
use crate::sightings::FALSE_POSITIVE;
use serde_json::{json, Value};

/// What `false-positive` is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FalsePositive {
    Add {
        value: String,
        reason: Option<String>,
    },
    Remove {
        value: String,
    },
    List,
}

/// This host's name, for the sighting source when `misp.sighting_source`
/// is empty (a manager's `manager.name` is its host name).
fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is ours and its length is passed.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if r != 0 {
        return "manager".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Runs `false-positive`; the JSON lines it prints.
pub async fn false_positive(cfg: &Config, what: FalsePositive) -> anyhow::Result<Vec<Value>> {
    let dir = &*cfg.input.state_dir;
    let parse = |v: &str| -> anyhow::Result<Observable> {
        v.parse()
            .map_err(|_| anyhow::anyhow!("{v:?} is not an IP, domain, URL or file hash"))
    };
    match what {
        FalsePositive::List => Ok(false_positives::load(dir)
            .into_iter()
            .map(|e| serde_json::to_value(e).unwrap_or_default())
            .collect()),
        FalsePositive::Remove { value } => {
            let o = parse(&value)?;
            let removed = matches!(false_positives::remove(dir, &o)?, Changed::Removed(_));
            Ok(vec![json!({
                "value": o.to_string(),
                "type": o.kind().as_str(),
                "removed": removed,
            })])
        }
        FalsePositive::Add { value, reason } => {
            let o = parse(&value)?;
            let added = matches!(
                false_positives::add(dir, &o, reason.as_deref())?,
                Changed::Added(_)
            );
            let mut out = json!({
                "value": o.to_string(),
                "type": o.kind().as_str(),
                "false_positive": if added { "added" } else { "already listed" },
            });
            // Once: marking a value again (a script re-applying a list)
            // does not sight it again.
            if *cfg.misp.sightings && added {
                out["sightings"] = send_false_positive(cfg, &o).await?.into();
            }
            Ok(vec![out])
        }
    }
}

/// A type-1 sighting for each attribute MISP (or the mirror) matches `o`
/// with, sent now to the server each comes from.
async fn send_false_positive(cfg: &Config, o: &Observable) -> anyhow::Result<Vec<Value>> {
    let opened = Opened::open(cfg).await?;
    let hits = opened.answer(o).await?;
    let source = if cfg.misp.sighting_source.is_empty() {
        format!("wazuh-{}", host_name())
    } else {
        cfg.misp.sighting_source.to_string()
    };
    let now = chrono::Utc::now().timestamp();
    let mut out = Vec::new();
    for part in hits.parts() {
        let server = part
            .server
            .as_deref()
            .unwrap_or(opened.lookups[0].0.name.as_str());
        let lookup = opened
            .lookups
            .iter()
            .find(|(s, _)| s.name == server)
            .unwrap_or(&opened.lookups[0]);
        for a in &part.attributes {
            let result = lookup
                .1
                .client()
                .add_sighting(&a.uuid, FALSE_POSITIVE, &source, now)
                .await;
            out.push(json!({
                "server": server,
                "uuid": a.uuid,
                "attribute_type": a.kind,
                "attribute_value": a.value,
                "result": match result {
                    Ok(crate::lookup::SightingOutcome::Added) => "added".to_owned(),
                    Ok(crate::lookup::SightingOutcome::Refused(m)) => m,
                    Err(e) => e.to_string(),
                },
            }));
        }
    }
    Ok(out)
}

/// `--since 7d`, `12h`, `30m` or seconds.
pub fn parse_since(text: &str) -> anyhow::Result<i64> {
    let text = text.trim();
    let (digits, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: i64 = digits.parse().map_err(|_| {
        anyhow::anyhow!("--since {text:?}: expected a number and d, h, m or s (e.g. 7d)")
    })?;
    let unit = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        other => anyhow::bail!("--since {text:?}: unknown unit {other:?} (d, h, m or s)"),
    };
    Ok(n * unit)
}

/// Runs `hunt`: every ledger value seen within `since_secs` that the mirror
/// matches now, one retro event per reference not yet hunted for the
/// matching attributes. Returns the events (and with `send`, sends them to
/// the queue socket and records them as hunted).
pub async fn hunt(
    cfg: &Config,
    since_secs: i64,
    send: bool,
    limit: usize,
) -> anyhow::Result<Vec<Value>> {
    let dir = &*cfg.input.state_dir;
    let store = if send {
        Some(LedgerStore::open(dir)?)
    } else {
        LedgerStore::open_read_only(dir)?
    };
    let Some(mut store) = store else {
        anyhow::bail!(
            "no ledger in {} (the daemon keeps it in mirror mode with retro.enabled)",
            dir.display()
        );
    };
    let opened = Opened::open(cfg).await?;
    if opened.mirror.is_none() {
        anyhow::bail!(
            "hunt needs the mirror: misp.mode = \"mirror\" and a completed sync in input.state_dir"
        );
    }
    let suppressed = false_positives::suppressed(&false_positives::load(dir));
    let mut entries = Vec::new();
    let since = chrono::Utc::now().timestamp() - since_secs;
    store.each_since(since, |e| {
        entries.push(e);
        true
    })?;
    let match_types = cfg.misp.match_types;
    let mut out = Vec::new();
    for entry in entries {
        let Ok(o) = entry.value.parse::<Observable>() else {
            continue;
        };
        if suppressed.covers(&o) || !opened.may_know(&o) {
            continue;
        }
        let answer = opened.answer(&o).await?;
        // Only indicators newer than the value's first sighting: an older
        // one was in MISP when the alert came, and the live path matched
        // it then (or the sync lag hid it, which the daemon's own hunt at
        // that sync covered).
        let uuids: Vec<(&str, &str, i64)> = answer
            .parts()
            .flat_map(|p| &p.attributes)
            .map(|a| {
                (
                    a.uuid.as_str(),
                    a.kind.as_str(),
                    a.timestamp.parse().unwrap_or(0),
                )
            })
            .filter(|(_, _, ts)| *ts > entry.first_seen)
            .collect();
        for r in &entry.refs {
            if out.len() >= limit {
                return Ok(out);
            }
            let alert = alert_id_of(r);
            let key = hunt_key(&entry.value, &alert);
            if store.hunted(&key).unwrap_or(false) {
                continue;
            }
            let Some((uuid, kind, ts)) = uuids.first() else {
                continue;
            };
            let candidate = crate::runtime::feedback::Candidate {
                indicator: crate::ledger::hunt::Indicator {
                    server: "".into(),
                    uuid: (*uuid).to_owned(),
                    kind: (*kind).to_owned(),
                    value: String::new(),
                    timestamp: *ts,
                },
                entry: entry.clone(),
                reference: r.clone(),
                key,
            };
            let added = chrono::DateTime::from_timestamp(*ts, 0).unwrap_or_else(chrono::Utc::now);
            let events = crate::runtime::feedback::render_candidate(
                &candidate,
                &o,
                &answer,
                match_types,
                added,
            )
            .map_err(|e| anyhow::anyhow!(e))?;
            for (header, payload) in &events {
                if send {
                    let mut datagram = header.as_bytes().to_vec();
                    datagram.extend_from_slice(payload);
                    super::integratord::send(&cfg.output.queue_socket, &datagram)?;
                }
                out.push(serde_json::from_slice(payload).unwrap_or_default());
            }
            if send {
                store.mark_hunted(
                    &[(crate::ledger::key_of(&o), key)],
                    chrono::Utc::now().timestamp(),
                )?;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_days_hours_minutes_and_seconds() {
        assert_eq!(parse_since("7d").unwrap(), 7 * 86400);
        assert_eq!(parse_since("12h").unwrap(), 12 * 3600);
        assert_eq!(parse_since("30m").unwrap(), 1800);
        assert_eq!(parse_since("45").unwrap(), 45);
        assert!(parse_since("7w").is_err());
        assert!(parse_since("d").is_err());
    }
}
