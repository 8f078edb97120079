//! Stages 2–6 for one alert line: the synchronous part ([`Engine::begin`])
//! that finishes every line whose observables are all known, and the async
//! rest ([`Engine::finish`]) for lines that wait on intelligence.
//!
//! Shared by the daemon's workers and the `enrich` and `integratord`
//! commands, so that every way in gives the same events.

use super::feedback::Feedback;
use crate::alert::{self, Fields, Node};
use crate::config::{Config, MatchTypes};
use crate::dedup::{self, Dedup};
use crate::enrich::{self, AlertContext};
use crate::extract::{Extractor, Scratch};
use crate::filter::{self, AlertFilter};
use crate::lookup::{Abandoned, Hits, Intelligence, Lookup, LookupError};
use crate::observable::Occurrence;
use crate::output::{self, Outgoing};
use crate::ratelog::RateLimitedLog;
use crate::stats::Stats;
use crate::suppress::Suppressed;
use arc_swap::ArcSwap;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// The per-alert rules a reload can replace.
#[derive(Debug, Clone)]
pub struct Rules {
    pub filter: AlertFilter,
    pub extractor: Extractor,
    pub match_types: MatchTypes,
}

impl Rules {
    pub fn from_config(cfg: &Config) -> anyhow::Result<Self> {
        Ok(Rules {
            filter: AlertFilter {
                min_level: cfg.filter.min_level,
                exclude_rule_ids: cfg.filter.exclude_rule_ids.clone(),
                require_rule: cfg.filter.requires_rule(cfg.wazuh_line()),
                include_integrations: cfg.filter.include_integrations.clone(),
                exclude_integrations: cfg.filter.exclude_integrations.clone(),
                min_level_5x: cfg.filter.min_level_5x_rank()?,
            },
            extractor: Extractor::new(
                &cfg.filter.skip_fields,
                &cfg.filter.scan_fields,
                cfg.filter.exclude_nets()?,
            )
            .excluding_domains(&cfg.filter.exclude_domains),
            match_types: cfg.misp.match_types,
        })
    }
}

/// A line whose IPs are not all cached: what [`Engine::begin`] found, for
/// [`Engine::finish`] to complete once MISP has answered.
pub struct Waiting {
    /// The line, parsed again once MISP has answered: its tree borrows from
    /// the batch's buffer, and a copy of one line is smaller to hold than
    /// the tree. Only lines whose IPs were not cached pay the second parse.
    line: Box<str>,
    rules: Arc<Rules>,
    claimed: Vec<(Occurrence, dedup::Key)>,
    /// Per claimed hit, the cached answer if there was one.
    found: Vec<Option<Hits>>,
}

/// Stages 2–6 for alert lines. Shared by the daemon's workers and the
/// `enrich` and `integratord` commands.
///
/// [`Engine::begin`] is synchronous and does everything when every IP is
/// cached (the common case on a busy manager); only lines that must wait
/// on MISP go on to the async [`Engine::finish`].
pub struct Engine<I: Intelligence = Lookup> {
    pub rules: ArcSwap<Rules>,
    /// Stage 3b: the false positives, swapped in when their file changes.
    pub suppressed: ArcSwap<Suppressed>,
    /// The side outputs: sightings back to MISP, the retro ledger.
    pub feedback: Feedback,
    /// Stage 5, behind the intelligence port.
    pub lookup: I,
    pub dedup: Option<Dedup>,
    pub stats: Arc<Stats>,
    skips: RateLimitedLog,
}

/// An agent's (id, name, ip) and its datagram header.
type RememberedHeader = (String, String, Option<String>, Rc<str>);

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
    static PARSER: RefCell<alert::Parser> = RefCell::new(alert::Parser::default());
    static CLOCK: RefCell<(i64, Rc<str>)> = RefCell::new((i64::MIN, Rc::from("")));
    /// The last agent's (id, name, ip) and its header; see [`header_for`].
    static HEADER: RefCell<Option<RememberedHeader>> =
        const { RefCell::new(None) };
}

/// Now, and now in Wazuh's format. Formatting a time is slow next to the
/// rest of an event, and at thousands of events per millisecond the text
/// only changes once a millisecond.
fn clock() -> (chrono::DateTime<chrono::Utc>, Rc<str>) {
    let now = chrono::Utc::now();
    let ms = now.timestamp_millis();
    let text = CLOCK.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != ms {
            *c = (ms, Rc::from(enrich::wazuh_time(now)));
        }
        c.1.clone()
    });
    (now, text)
}

/// The datagram header for `agent`, remembered for the last agent seen:
/// consecutive alerts mostly come from one agent (a burst is one host's),
/// and building the header is a format and an escape pass.
fn header_for(agent: &enrich::AgentContext<'_>) -> Rc<str> {
    HEADER.with(|h| {
        let mut h = h.borrow_mut();
        match &*h {
            Some((id, name, ip, header))
                if id == &agent.id
                    && name == &agent.name
                    && ip.as_deref() == agent.ip.as_deref() =>
            {
                header.clone()
            }
            _ => {
                let header: Rc<str> = Rc::from(output::header(agent));
                *h = Some((
                    agent.id.to_string(),
                    agent.name.to_string(),
                    agent.ip.as_deref().map(str::to_owned),
                    header.clone(),
                ));
                header
            }
        }
    })
}

impl<I: Intelligence> Engine<I> {
    pub fn new(rules: Rules, lookup: I, dedup: Option<Dedup>, stats: Arc<Stats>) -> Self {
        Engine {
            rules: ArcSwap::from_pointee(rules),
            suppressed: ArcSwap::from_pointee(Suppressed::default()),
            feedback: Feedback::default(),
            lookup,
            dedup,
            stats,
            skips: RateLimitedLog::new(Duration::from_secs(60), 20),
        }
    }

    fn skip_line(&self, reason: &'static str, offset: Option<u64>, detail: &dyn std::fmt::Display) {
        self.stats.skip(reason);
        self.skips.log(reason, |suppressed| {
            tracing::warn!(reason, offset, detail = %detail, suppressed, "skipped alert line");
        });
    }

    /// Parses, filters, extracts and dedups one line, then enriches it into
    /// `out` if MISP's answer for every IP is cached. Returns what is left
    /// to do when some answer is not.
    pub fn begin(
        &self,
        line: &str,
        offset: Option<u64>,
        memo: &mut I::Memo,
        out: &mut Outgoing,
    ) -> Option<Waiting> {
        let begin = |line: &str, memo: &mut I::Memo, out: &mut Outgoing| {
            PARSER.with(|p| {
                p.borrow_mut().with(line, |alert| {
                    self.begin_parsed(line, alert, offset, memo, out)
                })
            })
        };
        let error = match begin(line, memo, out) {
            Ok(waiting) => return waiting,
            Err(e) => e,
        };
        // A lone surrogate escape costs one character, not the alert.
        if let Some(repaired) = alert::repair_lone_surrogates(line) {
            if let Ok(waiting) = begin(&repaired, memo, out) {
                self.stats.lines_repaired.fetch_add(1, Ordering::Relaxed);
                return waiting;
            }
        }
        self.skip_line("invalid_json", offset, &error);
        None
    }

    fn begin_parsed(
        &self,
        line: &str,
        alert: Node<'_>,
        offset: Option<u64>,
        memo: &mut I::Memo,
        out: &mut Outgoing,
    ) -> Option<Waiting> {
        let rules = self.rules.load();
        let fields = Fields::of(alert);
        if let Err(reason) = rules.filter.check(&fields) {
            self.stats.skip(reason.as_str());
            tracing::trace!(
                reason = reason.as_str(),
                offset,
                alert_id = %alert::text(fields.id),
                "alert filtered out"
            );
            return None;
        }
        self.stats.alerts_processed.fetch_add(1, Ordering::Relaxed);
        let mut hits: Vec<Occurrence> = Vec::new();
        SCRATCH.with(|s| {
            rules
                .extractor
                .extract(alert, &mut s.borrow_mut(), &mut hits)
        });
        if hits.is_empty() {
            return None;
        }
        self.stats
            .ips_extracted
            .fetch_add(hits.len() as u64, Ordering::Relaxed);
        let suppressed = self.suppressed.load();
        if !suppressed.is_empty() {
            let before = hits.len();
            hits.retain(|h| !suppressed.covers(&h.observable));
            let dropped = before - hits.len();
            if dropped > 0 {
                self.stats
                    .suppressed
                    .fetch_add(dropped as u64, Ordering::Relaxed);
            }
            if hits.is_empty() {
                return None;
            }
        }
        if let Some(ledger) = &self.feedback.ledger {
            ledger.note(&fields, &hits);
        }
        // Wazuh 5's engine events have no rule: the window is then per
        // integration, so that one source's repeats are folded, not all.
        let rule_id = filter::rule_id(&fields)
            .or_else(|| fields.integration().0.map(std::borrow::Cow::Borrowed))
            .unwrap_or_default();
        let mut claimed: Vec<(Occurrence, dedup::Key)> = Vec::with_capacity(hits.len());
        for hit in hits {
            let key = dedup::Key::of(&rule_id, &hit);
            match &self.dedup {
                Some(d) if !d.try_claim(key) => {
                    self.stats.dedup_hits.fetch_add(1, Ordering::Relaxed);
                }
                _ => claimed.push((hit, key)),
            }
        }
        if claimed.is_empty() {
            return None;
        }
        let found: Vec<Option<Hits>> = claimed
            .iter()
            .map(|(h, _)| self.lookup.known(&h.observable, memo))
            .collect();
        if found.iter().all(Option::is_some) {
            let answers = found.into_iter().flatten().collect();
            self.produce(&rules, &fields, claimed, answers, out);
            return None;
        }
        Some(Waiting {
            line: line.into(),
            rules: arc_swap::Guard::into_inner(rules),
            claimed,
            found,
        })
    }

    /// Asks MISP what the cache did not know, then enriches into `out`.
    /// `Err(Abandoned)` only when shutting down mid-lookup: the line is then
    /// not done and will be read again after the restart.
    pub async fn finish(&self, w: Waiting, out: &mut Outgoing) -> Result<(), Abandoned> {
        let looked_up = futures::future::join_all(w.claimed.iter().zip(&w.found).map(
            |((hit, _), found)| async move {
                match found {
                    Some(hits) => Ok(hits.clone()),
                    None => self.lookup.lookup(&hit.observable).await,
                }
            },
        ))
        .await;
        if looked_up
            .iter()
            .any(|r| matches!(r, Err(LookupError::Abandoned(_))))
        {
            self.release(w.claimed.iter().map(|(_, k)| *k));
            return Err(Abandoned);
        }
        let Waiting {
            line,
            rules,
            claimed: all_claimed,
            ..
        } = w;
        // A value MISP kept failing on alone is let go: no event for it,
        // the rest of the alert goes on.
        let mut claimed = Vec::with_capacity(all_claimed.len());
        let mut answers = Vec::with_capacity(all_claimed.len());
        for (claim, result) in all_claimed.into_iter().zip(looked_up) {
            match result {
                Ok(hits) => {
                    claimed.push(claim);
                    answers.push(hits);
                }
                Err(_) => self.release([claim.1]),
            }
        }
        // Taken by `produce` only if the line parses.
        let mut claimed = Some(claimed);
        let produced = PARSER.with(|p| {
            p.borrow_mut().with(&line, |alert| {
                let claimed = claimed.take().unwrap_or_default();
                self.produce(&rules, &Fields::of(alert), claimed, answers, out)
            })
        });
        if let (Err(_), Some(claimed)) = (produced, claimed) {
            // It parsed in `begin`; parsing is deterministic. Should that
            // ever change, the claims must not stay pending.
            self.release(claimed.into_iter().map(|(_, k)| k));
        }
        Ok(())
    }

    /// [`Engine::begin`] and [`Engine::finish`] in one: everything one line
    /// produced.
    pub async fn process(&self, bytes: &[u8], offset: Option<u64>) -> Result<Outgoing, Abandoned> {
        let mut out = Outgoing::default();
        let line = alert::decode_line(bytes);
        if matches!(line, std::borrow::Cow::Owned(_)) {
            self.stats.lines_repaired.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(waiting) = self.begin(&line, offset, &mut I::Memo::default(), &mut out) {
            self.finish(waiting, &mut out).await?;
        }
        Ok(out)
    }

    /// Stage 6 and framing: one event per claimed IP that MISP knows,
    /// appended to `out` with its dedup key. Claims that produce nothing
    /// are released.
    fn produce(
        &self,
        rules: &Rules,
        fields: &Fields<'_>,
        claimed: Vec<(Occurrence, dedup::Key)>,
        answers: Vec<Hits>,
        out: &mut Outgoing,
    ) {
        let ctx = AlertContext::from_fields(fields);
        let header = header_for(&ctx.agent);
        // The agent's name and ip are in the header; a name of ~64 KiB
        // (possible through `enrich` and integratord input) leaves no room.
        if header.len() >= output::MAX_DATAGRAM {
            tracing::error!(
                alert_id = %ctx.alert_id,
                header_bytes = header.len(),
                "the agent's name and ip leave no room for an event in one datagram; not sent"
            );
            self.release(claimed.into_iter().map(|(_, k)| k));
            return;
        }
        let (now, timestamp) = clock();
        for ((hit, key), answer) in claimed.into_iter().zip(answers) {
            match enrich::render(
                &ctx,
                &hit,
                &answer,
                rules.match_types,
                now,
                &timestamp,
                &header,
                &mut out.datagrams,
            ) {
                enrich::Rendered::Sent => {
                    log_enriched(&ctx, &hit);
                    out.dedup_keys.push(key);
                    if let Some(s) = &self.feedback.sightings {
                        offer_sightings(s, &ctx, &hit, &answer, rules.match_types, now.timestamp());
                    }
                }
                enrich::Rendered::Nothing => self.release([key]),
                enrich::Rendered::TooLarge => {
                    tracing::error!(value = %hit.observable, "enriched event cannot fit one datagram even with one attribute; not sent");
                    self.release([key]);
                }
            }
        }
    }

    fn release(&self, keys: impl IntoIterator<Item = dedup::Key>) {
        if let Some(d) = &self.dedup {
            for k in keys {
                d.release(k);
            }
        }
    }
}

/// A sighting for every attribute the events for `hit` showed, from the
/// server each came from, at the alert's time.
pub fn offer_sightings(
    s: &crate::sightings::Sightings,
    ctx: &AlertContext<'_>,
    hit: &Occurrence,
    answer: &crate::lookup::LookupResult,
    match_types: MatchTypes,
    now: i64,
) {
    // Parsed once, and only if a sighting is queued.
    let parsed = std::cell::OnceCell::new();
    let alert_time = || *parsed.get_or_init(|| alert_time(&ctx.timestamp).unwrap_or(now));
    for part in answer.parts() {
        let server = part.server.as_deref().unwrap_or("");
        for a in part
            .attributes
            .iter()
            .filter(|a| enrich::selects(a, match_types, hit))
        {
            s.offer(server, &a.uuid, &ctx.manager.name, now, alert_time);
        }
    }
}

/// An alert's time in Unix seconds: Wazuh 4's `2026-11-22T09:58:02.114+0000`
/// or Wazuh 5's RFC 3339 `@timestamp` (`2026-11-22T09:58:02.114Z`).
pub fn alert_time(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_str(text, enrich::WAZUH_TIME_FORMAT)
        .or_else(|_| chrono::DateTime::parse_from_rfc3339(text))
        .ok()
        .map(|t| t.timestamp())
}

/// One debug line per event, with the fields journald users filter on.
fn log_enriched(ctx: &AlertContext<'_>, hit: &Occurrence) {
    tracing::debug!(
        alert_id = %ctx.alert_id,
        rule_id = %ctx.rule.id,
        value = %hit.observable,
        direction = hit.direction.as_str(),
        field_path = %hit.field_path,
        "enriched"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use enrich::AgentContext;

    #[test]
    fn an_alerts_time_is_read_on_both_lines() {
        assert_eq!(
            alert_time("2026-11-22T09:58:02.114+0000"),
            Some(1_795_341_482)
        );
        assert_eq!(alert_time("2026-11-22T09:58:02.114Z"), Some(1_795_341_482));
        assert_eq!(alert_time("2026-11-22T10:58:02+01:00"), Some(1_795_341_482));
        assert_eq!(alert_time("yesterday"), None);
    }

    #[test]
    fn the_remembered_header_follows_the_agent() {
        let agent = |id: &'static str, ip: Option<&'static str>| AgentContext {
            id: id.into(),
            name: "web-01".into(),
            ip: ip.map(Into::into),
        };
        let with_ip = agent("001", Some("10.0.1.50"));
        let without_ip = agent("001", None);
        let manager = agent("", None);
        let other = agent("002", Some("10.0.1.50"));
        for a in [
            &with_ip,
            &without_ip,
            &with_ip,
            &manager,
            &other,
            &without_ip,
        ] {
            assert_eq!(*header_for(a), output::header(a));
        }
        assert_ne!(output::header(&with_ip), output::header(&without_ip));
    }
}
