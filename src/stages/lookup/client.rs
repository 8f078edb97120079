//! One `POST /attributes/restSearch` to MISP, with every failure classified.

use super::model::{parse_response, Attribute, ParseError};
use crate::config::{MispConfig, Secret};
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MispError {
    #[error("MISP refused the API key (HTTP {status}): {message}")]
    Auth { status: u16, message: String },
    #[error("MISP rate limit hit (HTTP 429); retry after {retry_after:?}")]
    RateLimited { retry_after: Option<Duration> },
    #[error("MISP server error (HTTP {status})")]
    Server { status: u16 },
    #[error("MISP did not answer within the timeout")]
    Timeout,
    #[error("cannot reach MISP: {0}")]
    Unreachable(String),
    #[error("MISP sent an unusable body: {0}")]
    BadBody(String),
}

impl MispError {
    /// MISP's HTTP status, when it answered at all.
    pub fn status(&self) -> Option<u16> {
        match self {
            MispError::Auth { status, .. } | MispError::Server { status } => Some(*status),
            MispError::RateLimited { .. } => Some(429),
            _ => None,
        }
    }

    /// The coarser class the integration's error events report.
    pub fn event_kind(&self) -> &'static str {
        match self {
            MispError::Auth { .. } => "auth",
            MispError::RateLimited { .. } => "rate_limited",
            MispError::Timeout | MispError::Unreachable(_) => "unreachable",
            MispError::Server { .. } | MispError::BadBody(_) => "server",
        }
    }

    /// The class, as used in logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            MispError::Auth { .. } => "auth",
            MispError::RateLimited { .. } => "rate_limited",
            MispError::Server { .. } => "server",
            MispError::Timeout => "timeout",
            MispError::Unreachable(_) => "unreachable",
            MispError::BadBody(_) => "bad_body",
        }
    }
}

impl MispError {
    /// The same error with every occurrence of a secret replaced: MISP, or a
    /// proxy in front of it, may echo the request's Authorization header or
    /// URL in its error body, and that body goes to logs and to Wazuh.
    fn scrubbed(self, secrets: &[String]) -> MispError {
        let scrub = |mut m: String| {
            for s in secrets {
                if m.contains(s.as_str()) {
                    m = m.replace(s.as_str(), "<redacted>");
                }
            }
            m
        };
        match self {
            MispError::Auth { status, message } => MispError::Auth {
                status,
                message: scrub(message),
            },
            MispError::Unreachable(m) => MispError::Unreachable(scrub(m)),
            MispError::BadBody(m) => MispError::BadBody(scrub(m)),
            other => other,
        }
    }
}

/// What MISP did with one sighting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SightingOutcome {
    Added,
    /// Answered, but not added: the reason MISP gave.
    Refused(String),
}

#[derive(Clone)]
pub struct MispClient {
    http: reqwest::Client,
    endpoint: reqwest::Url,
    settings: QuerySettings,
    max_response_bytes: usize,
    /// What must never appear in an error: the key, and the url's password
    /// and userinfo, when it has them.
    secrets: std::sync::Arc<[String]>,
    timeout: Duration,
    verify_tls: bool,
    ca_file: Option<std::path::PathBuf>,
}

/// One page of a mirror sync.
#[derive(Debug, Clone)]
pub struct SyncQuery<'a> {
    pub filters: &'a crate::config::SyncFilters,
    /// From 1.
    pub page: u32,
    pub limit: u32,
    /// Only attributes changed, by the window's clock, at or after this
    /// (Unix seconds).
    pub since: Option<(Window, i64)>,
}

/// Which of MISP's clocks a sync window reads (`Event::set_filter_timestamp`):
/// each kind of change moves one of them, and none moves all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// `timestamp`, on `Attribute.timestamp`: an attribute added, edited,
    /// soft-deleted or tagged (`MispAttribute::deleteAttribute`, `touch`).
    Attribute,
    /// `event_timestamp`, on `Event.timestamp`: anything that unpublishes
    /// the event (`Event::unpublishEvent`): an event tag added or removed,
    /// an attribute hard-deleted.
    Event,
    /// `publish_timestamp`: the event published (`Event::publish` saves
    /// only `published` and `publish_timestamp`), which also brings
    /// attributes whose timestamps came old from a pull, a feed or an API
    /// client.
    Published,
}

impl Window {
    /// The windows an incremental sync reads under `filters`. The event's
    /// own timestamp moves with every attribute added to it, so reading
    /// that window re-reads the whole event: only filters on the event's
    /// state (published, tags) need it.
    pub fn needed(filters: &crate::config::SyncFilters) -> &'static [Window] {
        let on_event = filters.published_only
            || !filters.include_tags.is_empty()
            || !filters.exclude_tags.is_empty();
        if on_event {
            &[Window::Attribute, Window::Event, Window::Published]
        } else {
            &[Window::Attribute, Window::Published]
        }
    }

    fn filter(self) -> &'static str {
        match self {
            Window::Attribute => "timestamp",
            Window::Event => "event_timestamp",
            Window::Published => "publish_timestamp",
        }
    }
}

/// One page of a sync as MISP answered it.
#[derive(Debug, Clone, Default)]
pub struct SyncPage {
    pub attributes: Vec<Attribute>,
    /// The size of the answer, in bytes.
    pub bytes: usize,
    /// `X-Skipped-Elements-Count`: rows of this page that MISP dropped
    /// after its SQL `LIMIT` (warninglists, proposal blocking): a page
    /// short by these is not the last (`AppController::restSearch`).
    pub skipped: u64,
    /// MISP's clock when it answered (the `Date` header), Unix seconds.
    pub date: Option<i64>,
}

#[derive(Clone, Debug)]
pub struct QuerySettings {
    pub decay: bool,
    pub enforce_warninglist: bool,
}

impl std::fmt::Debug for MispClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the client's default headers: they hold the key.
        f.debug_struct("MispClient")
            .field(
                "endpoint",
                &crate::config::redact_url(self.endpoint.as_str()),
            )
            .finish_non_exhaustive()
    }
}

impl MispClient {
    pub fn new(cfg: &MispConfig, key: &Secret) -> anyhow::Result<Self> {
        let mut auth = HeaderValue::from_str(key.expose()).map_err(|_| {
            anyhow::anyhow!(
                "config key `misp.api_key`: contains characters not allowed in an HTTP header"
            )
        })?;
        // Keeps the value out of reqwest's and hyper's debug output.
        auth.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, auth);
        // Without it MISP treats us as a browser and answers with its login page.
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let mut b = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(Duration::from_secs(cfg.timeout_secs))
            .connect_timeout(Duration::from_secs(cfg.timeout_secs.min(10)))
            .pool_max_idle_per_host(*cfg.max_concurrent_requests)
            .user_agent(concat!("wazuh-misp/", env!("CARGO_PKG_VERSION")));
        if !cfg.verify_tls {
            tracing::warn!("misp.verify_tls = false: the MISP server's certificate is not checked");
            b = b.danger_accept_invalid_certs(true);
        }
        if let Some(ca) = &cfg.ca_file {
            let pem = std::fs::read(ca).map_err(|e| {
                anyhow::anyhow!(
                    "config key `misp.ca_file`: cannot read {}: {e}",
                    ca.display()
                )
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                anyhow::anyhow!(
                    "config key `misp.ca_file`: {} is not PEM: {e}",
                    ca.display()
                )
            })?;
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        let given = reqwest::Url::parse(cfg.url.trim())
            .map_err(|e| anyhow::anyhow!("config key `misp.url`: {e}"))?;
        let mut secrets = vec![key.expose().to_owned()];
        if let Some(password) = given.password() {
            secrets.push(password.to_owned());
            if let Ok(decoded) = percent_encoding::percent_decode_str(password).decode_utf8() {
                secrets.push(decoded.into_owned());
            }
        }
        if !given.username().is_empty() {
            secrets.push(format!("{}:", given.username()));
        }
        if !given.username().is_empty() || given.password().is_some() {
            // MISP reads the API key from the Authorization header, which
            // the url's userinfo would take over as basic auth (and every
            // request would be refused). Credentials for a proxy go in
            // HTTPS_PROXY, which reqwest sends as Proxy-Authorization.
            tracing::warn!(
                "misp.url carries user:password, which is not sent: MISP takes its API key from the Authorization header; put proxy credentials in HTTPS_PROXY instead"
            );
        }
        secrets.retain(|s| s.len() >= 3);
        let base = crate::config::redact_url(&cfg.url);
        let endpoint = reqwest::Url::parse(&format!(
            "{}/attributes/restSearch",
            base.trim_end_matches('/')
        ))
        .map_err(|e| anyhow::anyhow!("config key `misp.url`: {e}"))?;
        Ok(MispClient {
            http: b.build()?,
            endpoint,
            settings: QuerySettings {
                decay: cfg.decay,
                enforce_warninglist: cfg.enforce_warninglist,
            },
            max_response_bytes: cfg.max_response_bytes,
            secrets: secrets.into(),
            timeout: Duration::from_secs(cfg.timeout_secs),
            verify_tls: cfg.verify_tls,
            ca_file: cfg.ca_file.clone(),
        })
    }

    /// Where restSearch goes (never with userinfo: it is taken out).
    pub fn endpoint(&self) -> &reqwest::Url {
        &self.endpoint
    }

    pub fn query_settings(&self) -> &QuerySettings {
        &self.settings
    }

    pub fn max_response_bytes(&self) -> usize {
        self.max_response_bytes
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn verifies_tls(&self) -> bool {
        self.verify_tls
    }

    /// The extra CA certificates it trusts, if any.
    pub fn ca_file(&self) -> Option<&std::path::Path> {
        self.ca_file.as_deref()
    }

    pub fn request_body(&self, values: &[String], limit: Option<u32>) -> serde_json::Value {
        let mut body = serde_json::json!({
            "returnFormat": "json",
            "value": values,
            "type": crate::observable::all_misp_types(),
            "includeEventTags": true,
            "includeContext": true,
            "includeSightings": true,
            "includeCorrelations": true,
            "enforceWarninglist": self.settings.enforce_warninglist,
            "deleted": false,
        });
        if self.settings.decay {
            body["includeDecayScore"] = true.into();
        }
        if let Some(l) = limit {
            body["limit"] = l.into();
            body["page"] = 1.into();
        }
        body
    }

    /// Searches for any of `values` (MISP reads a list as OR).
    pub async fn search(&self, values: &[String]) -> Result<Vec<Attribute>, MispError> {
        self.search_with(values, None).await
    }

    pub async fn search_with(
        &self,
        values: &[String],
        limit: Option<u32>,
    ) -> Result<Vec<Attribute>, MispError> {
        self.post(&self.request_body(values, limit))
            .await
            .map(|(attributes, _)| attributes)
            .map_err(|e| e.scrubbed(&self.secrets))
    }

    /// The body of one page of a mirror sync: every attribute of the
    /// matched types that passes `q`'s filters, without context (light for
    /// MISP).
    /// The restSearch body of a sync page.
    ///
    /// It asks for every attribute of the mirrored types, soft-deleted ones
    /// too (`deleted: [0, 1]`), with no `to_ids`, `published` or tag
    /// filter, in attribute id order: then a row never leaves the searched
    /// set while a sync pages through it (offset paging would shift and
    /// skip one), and an attribute that stops passing the filters comes
    /// back flagged, so that the mirror drops it within the sync interval
    /// instead of at the next full reconciliation. The filters are applied
    /// locally ([`crate::lookup::mirror::sync::rows_of`]).
    pub fn sync_body(&self, q: &SyncQuery<'_>) -> serde_json::Value {
        let mut body = serde_json::json!({
            "returnFormat": "json",
            "type": crate::observable::all_misp_types(),
            "page": q.page,
            "limit": q.limit,
            "deleted": [0, 1],
            "order": "Attribute.id ASC",
            "enforceWarninglist": self.settings.enforce_warninglist,
        });
        let f = q.filters;
        if !f.include_tags.is_empty() || !f.exclude_tags.is_empty() {
            // The event's tags as well as the attribute's own.
            body["includeEventTags"] = true.into();
        }
        if f.published_only {
            // The event block carries `published` only with the context.
            body["includeContext"] = true.into();
        }
        if let Some((window, since)) = q.since {
            body[window.filter()] = since.into();
        }
        body
    }

    /// One page of a mirror sync, with what MISP's headers say of it.
    pub async fn sync_page(&self, q: &SyncQuery<'_>) -> Result<SyncPage, MispError> {
        let (body, headers) = self
            .post_json_with_headers(self.endpoint.clone(), &self.sync_body(q))
            .await
            .map_err(|e| e.scrubbed(&self.secrets))?;
        let attributes = parse_body(&body)?;
        let skipped = headers
            .get("x-skipped-elements-count")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let date = headers
            .get(reqwest::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| chrono::DateTime::parse_from_rfc2822(v).ok())
            .map(|d| d.timestamp());
        Ok(SyncPage {
            attributes,
            bytes: body.len(),
            skipped,
            date,
        })
    }

    async fn post(
        &self,
        request: &serde_json::Value,
    ) -> Result<(Vec<Attribute>, usize), MispError> {
        let body = self.post_json(self.endpoint.clone(), request).await?;
        let attributes = parse_body(&body)?;
        Ok((attributes, body.len()))
    }

    /// POSTs `request` to `url` and returns the body of a 2xx JSON answer;
    /// every other answer is classified.
    async fn post_json(
        &self,
        url: reqwest::Url,
        request: &serde_json::Value,
    ) -> Result<Vec<u8>, MispError> {
        Ok(self.post_json_with_headers(url, request).await?.0)
    }

    /// [`Self::post_json`], with the answer's headers.
    async fn post_json_with_headers(
        &self,
        url: reqwest::Url,
        request: &serde_json::Value,
    ) -> Result<(Vec<u8>, HeaderMap), MispError> {
        let resp = self
            .http
            .post(url)
            .json(request)
            .send()
            .await
            .map_err(classify_transport)?;
        let status = resp.status().as_u16();
        let retry_after = retry_after(resp.headers());
        let is_html = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/html"));
        let headers = resp.headers().clone();
        let body = self.read_capped(resp).await?;
        match status {
            200..=299 => {}
            401 | 403 => {
                return Err(MispError::Auth {
                    status,
                    message: misp_message(&body),
                })
            }
            429 => return Err(MispError::RateLimited { retry_after }),
            500..=599 => return Err(MispError::Server { status }),
            _ => {
                return Err(MispError::BadBody(format!(
                    "unexpected HTTP {status}: {}",
                    misp_message(&body)
                )))
            }
        }
        if is_html || body.first() == Some(&b'<') {
            return Err(MispError::BadBody(
                "HTML instead of JSON (a login page: check misp.url and that the key belongs to an API-enabled user)".into(),
            ));
        }
        Ok((body, headers))
    }

    /// `POST /sightings/add` for one attribute, by uuid. MISP answers a
    /// sighting it cannot add (no such attribute, or one this key cannot
    /// see) with HTTP 200 and `{"message": "Could not add the Sighting.
    /// Reason: ..."}` (`SightingsController::add`): that is
    /// [`SightingOutcome::Refused`], final for this sighting.
    pub async fn add_sighting(
        &self,
        uuid: &str,
        kind: u8,
        source: &str,
        timestamp: i64,
    ) -> Result<SightingOutcome, MispError> {
        let url = self
            .endpoint
            .join("../sightings/add")
            .map_err(|e| MispError::Unreachable(format!("cannot build the sightings URL: {e}")))?;
        let body = serde_json::json!({
            "uuid": uuid,
            "type": kind.to_string(),
            "source": source,
            "timestamp": timestamp,
        });
        let answer = self
            .post_json(url, &body)
            .await
            .map_err(|e| e.scrubbed(&self.secrets))?;
        let v: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
        if v.get("Sighting").is_some() {
            return Ok(SightingOutcome::Added);
        }
        match v
            .get("message")
            .or_else(|| v.get("errors"))
            .and_then(|m| m.as_str())
        {
            Some(m) if m.contains("Could not add") => Ok(SightingOutcome::Refused(m.to_owned())),
            _ => Ok(SightingOutcome::Added),
        }
    }

    async fn read_capped(&self, mut resp: reqwest::Response) -> Result<Vec<u8>, MispError> {
        let cap = self.max_response_bytes;
        if resp.content_length().is_some_and(|l| l as usize > cap) {
            return Err(too_large(cap));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(classify_transport)? {
            if body.len() + chunk.len() > cap {
                return Err(too_large(cap));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

fn too_large(cap: usize) -> MispError {
    MispError::BadBody(format!(
        "response larger than misp.max_response_bytes ({cap} bytes)"
    ))
}

fn classify_transport(e: reqwest::Error) -> MispError {
    if e.is_timeout() {
        return MispError::Timeout;
    }
    if e.is_connect() {
        return MispError::Unreachable(root_cause(&e));
    }
    if e.is_body() || e.is_decode() {
        return MispError::BadBody(format!("body cut off: {}", root_cause(&e)));
    }
    MispError::Unreachable(root_cause(&e))
}

/// The innermost error's message: reqwest's own top-level text repeats the
/// URL, which is fine, but the cause (refused, TLS, DNS) is what helps.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// `Retry-After` (seconds) or MISP's `X-Rate-Limit-Reset` (seconds until reset).
fn parse_body(body: &[u8]) -> Result<Vec<Attribute>, MispError> {
    parse_response(body).map_err(|e| match e {
        ParseError::NotJson(m) => MispError::BadBody(format!("not JSON or truncated: {m}")),
        ParseError::WrongShape(m) => MispError::BadBody(format!("unexpected JSON shape: {m}")),
    })
}

fn retry_after(h: &HeaderMap) -> Option<Duration> {
    ["retry-after", "x-rate-limit-reset"]
        .iter()
        .filter_map(|n| h.get(*n)?.to_str().ok()?.trim().parse::<u64>().ok())
        .next()
        .map(Duration::from_secs)
}

/// MISP's error JSON carries `message` (and `name`); fall back to a short
/// prefix of the body.
fn misp_message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        for k in ["message", "name", "errors"] {
            if let Some(s) = v.get(k).and_then(|m| m.as_str()) {
                return s.to_owned();
            }
        }
    }
    String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned()
}
