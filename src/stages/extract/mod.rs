//! Stage 3, extraction: every observable in an alert (public IPs,
//! domains, URLs, file hashes), once, with the field it was found in and,
//! for IPs, the direction.
//!
//! One depth-first pass over the parsed alert in document order (object
//! keys keep the order of the line). Strings under the configured skip
//! paths (our own hosts, ids, the rule) are not scanned, for any kind; the
//! one exception is syscheck's `_after` hashes. Where each kind may come
//! from:
//! - IPs: any string ([`token`]), with the direction from the key, else
//!   from the text before it;
//! - URLs: any string, by scheme ([`url`]); and rebuilt from a host field
//!   and a path field of one object ([`SPLIT_URLS`]);
//! - domains: the value of a domain key ([`DOMAIN_KEYS`]), a URL's host,
//!   the domain half of a `domain|ip` value; only real public domains
//!   ([`domain::is_real`]);
//! - hashes: the value of a key that names the hash ([`hash::key`]),
//!   never free text.
//!
//! Each (kind, value) is reported once. For an IP, the occurrence kept is
//! the first whose direction came from its key; else the first whose
//! direction came from the text; else the first. For other kinds, the
//! first.

mod direction;
pub mod domain;
pub mod hash;
mod public;
mod token;
pub mod url;

pub use crate::observable::{Direction, IpText, Kind, Observable, Occurrence};
pub use public::{canonical, is_public};
pub use token::{scan, Token};

/// A URL in canonical form ([`url::normalise`]).
pub fn normalise_url(text: &str) -> Option<Box<str>> {
    url::normalise(text).map(|u| u.text)
}

/// A MISP `url` attribute's value in canonical form. Real feeds often
/// leave the scheme out (`www.evil.top`, `evil.top/dl/x.exe`): such a
/// value is an `http://` URL when its host is a public domain or an IP.
/// A value that names no host (`igfxtray.exe`, `Data/dtl.dat`) is `None`.
pub fn normalise_url_attribute(text: &str) -> Option<Box<str>> {
    let text = text.trim();
    if let Some(u) = url::normalise(text) {
        return Some(u.text);
    }
    if text.contains("://") || text.starts_with('/') {
        return None;
    }
    let u = url::normalise(&format!("http://{text}"))?;
    match &u.host {
        url::Host::Name(name) if domain::is_real(name) => Some(u.text),
        url::Host::Ip(_) => Some(u.text),
        url::Host::Name(_) => None,
    }
}

/// Keys whose value is a host name, compared lowercased with `_` and `-`
/// removed.
pub const DOMAIN_KEYS: &[&str] = &[
    "queryname",
    "query",
    "rrname",
    "hostname",
    "host",
    "domain",
    "sni",
    "servername",
    "dnsname",
    "fqdn",
    "destinationhostname",
    "targetdomain",
];

/// Decoders that split a URL into a host field and a path field of one
/// object: Suricata's `http.hostname` + `http.url`, Zeek's `host` + `uri`.
/// With both present and a path that starts with `/`, the URL is rebuilt
/// as `http://host` + path, found where the path is.
pub const SPLIT_URLS: &[(&str, &str)] = &[("hostname", "url"), ("host", "uri")];

/// syscheck's hashes of the file as it is now (its `_before` values
/// describe content that is gone).
const SYSCHECK_HASHES: &[(&str, Kind)] = &[
    ("md5_after", Kind::Md5),
    ("sha1_after", Kind::Sha1),
    ("sha256_after", Kind::Sha256),
];

use crate::alert::{self, Node, Object};
use ipnet::IpNet;
use std::net::IpAddr;

/// Longest `raw_context` we copy out of the alert, in characters.
pub const RAW_CONTEXT_CHARS: usize = 256;

/// The paths never scanned by default; `rule.description` is re-included by
/// [`DEFAULT_SCAN_FIELDS`].
pub const DEFAULT_SKIP_FIELDS: &[&str] = &[
    "agent",
    "manager",
    "cluster",
    "id",
    "timestamp",
    "decoder",
    "predecoder",
    "location",
    "syscheck",
    "rule",
    "wazuh",
];
pub const DEFAULT_SCAN_FIELDS: &[&str] = &["rule.description"];

/// The extraction stage, built once from the config and shared by workers.
#[derive(Debug, Clone)]
pub struct Extractor {
    rules: PathRules,
    exclude: Vec<IpNet>,
    /// Canonical names: neither they nor their subdomains are observables,
    /// as domains or as URL hosts (`filter.exclude_domains`).
    exclude_domains: Vec<Box<str>>,
}

/// The skip and scan paths as a tree of keys, walked down along with the
/// alert: a key's status is then one look among its siblings' keys, where
/// checking every rule against the whole path for every key costs about
/// thirty string compares per top-level key with the defaults.
#[derive(Debug, Clone, Default)]
struct PathRules {
    /// A scan rule ends at this node.
    scan: bool,
    /// A skip rule ends at this node.
    skip: bool,
    /// A scan rule ends below this node.
    scan_below: bool,
    children: Vec<(String, PathRules)>,
}

impl PathRules {
    fn insert(&mut self, path: &[String], scan: bool) {
        let Some((first, rest)) = path.split_first() else {
            if scan {
                self.scan = true;
            } else {
                self.skip = true;
            }
            return;
        };
        self.scan_below |= scan;
        let at = match self.children.iter().position(|(k, _)| k == first) {
            Some(at) => at,
            None => {
                self.children.push((first.clone(), PathRules::default()));
                self.children.len() - 1
            }
        };
        self.children[at].1.insert(rest, scan);
    }

    fn child(&self, key: &str) -> Option<&PathRules> {
        self.children.iter().find(|(k, _)| k == key).map(|(_, r)| r)
    }
}

/// Where the walk is among the rules: the status of the current node,
/// whether a scan rule covers it (a scan rule wins over a skip rule on the
/// same path), and the rules below it, if any.
#[derive(Clone, Copy)]
struct RuleCursor<'r> {
    status: Status,
    scanned_above: bool,
    below: Option<&'r PathRules>,
}

impl<'r> RuleCursor<'r> {
    fn root(rules: &'r PathRules) -> Self {
        RuleCursor {
            status: if rules.skip && !rules.scan {
                Status::Skip
            } else {
                Status::Scan
            },
            scanned_above: rules.scan,
            below: Some(rules),
        }
    }

    /// The cursor for `key` under this node, and whether anything at or
    /// below it can be scanned (if not, the walk skips its subtree).
    fn step(self, key: &str) -> (Self, bool) {
        let Some(node) = self.below.and_then(|r| r.child(key)) else {
            let inherited = RuleCursor {
                below: None,
                ..self
            };
            return (inherited, self.status == Status::Scan);
        };
        let scanned_above = self.scanned_above || node.scan;
        let status = if scanned_above {
            Status::Scan
        } else if node.skip || self.status == Status::Skip {
            Status::Skip
        } else {
            Status::Scan
        };
        let cursor = RuleCursor {
            status,
            scanned_above,
            below: (!node.children.is_empty()).then_some(node),
        };
        (cursor, status == Status::Scan || node.scan_below)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Status {
    Scan,
    Skip,
}

/// Scratch space reused across alerts so the hot path does not allocate
/// per string.
#[derive(Default)]
pub struct Scratch {
    path: String,
    tokens: Vec<Token>,
    urls: Vec<url::Found>,
    /// For each occurrence of this alert, how its direction was found
    /// (which occurrence of an IP is kept).
    ranks: Vec<Rank>,
}

/// How an occurrence's direction was found; a higher rank replaces an
/// earlier occurrence of the same IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Rank {
    Unknown,
    FromText,
    FromKey,
}

fn segments(path: &str) -> Vec<String> {
    path.split('.')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

impl Extractor {
    pub fn new(skip_fields: &[String], scan_fields: &[String], exclude: Vec<IpNet>) -> Self {
        let mut rules = PathRules::default();
        for path in skip_fields {
            rules.insert(&segments(path), false);
        }
        for path in scan_fields {
            rules.insert(&segments(path), true);
        }
        Extractor {
            rules,
            exclude,
            exclude_domains: Vec::new(),
        }
    }

    /// This extractor, also leaving out `domains` and their subdomains
    /// (each a host name; one that is not valid is ignored, the config
    /// refuses it first).
    pub fn excluding_domains(mut self, domains: &[String]) -> Self {
        self.exclude_domains = domains
            .iter()
            .filter_map(|d| domain::normalise(d.trim()))
            .collect();
        self
    }

    pub fn with_defaults() -> Self {
        let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Self::new(
            &own(DEFAULT_SKIP_FIELDS),
            &own(DEFAULT_SCAN_FIELDS),
            Vec::new(),
        )
    }

    /// Appends the alert's observables to `out`, in order of first
    /// occurrence.
    pub fn extract(&self, alert: Node<'_>, scratch: &mut Scratch, out: &mut Vec<Occurrence>) {
        scratch.path.clear();
        scratch.ranks.clear();
        let first = out.len();
        let mut walk = Walk {
            ex: self,
            scratch,
            out,
            first,
        };
        walk.value(alert, None, None, RuleCursor::root(&self.rules));
    }

    fn excluded(&self, ip: IpAddr) -> bool {
        self.exclude.iter().any(|n| n.contains(&ip))
    }

    /// Whether `name` (canonical) is left out by `filter.exclude_domains`.
    pub fn excluded_domain(&self, name: &str) -> bool {
        self.exclude_domains
            .iter()
            .any(|e| domain::is_under(name, e))
    }

    /// `candidate` as a domain observable, if it is a real public domain
    /// not excluded.
    fn domain(&self, candidate: &str) -> Option<Observable> {
        domain::real(candidate)
            .filter(|d| !self.excluded_domain(d))
            .map(Observable::Domain)
    }
}

/// A key lowercased with `_` and `-` removed, on the stack (of a longer
/// key, its last bytes, which is what suffix rules read).
struct NormalisedKey {
    buf: [u8; 48],
    len: usize,
}

impl NormalisedKey {
    fn of(key: &str) -> NormalisedKey {
        let mut k = NormalisedKey {
            buf: [0; 48],
            len: 0,
        };
        let tail = &key.as_bytes()[key.len().saturating_sub(k.buf.len())..];
        for &c in tail {
            if c != b'_' && c != b'-' {
                k.buf[k.len] = c.to_ascii_lowercase();
                k.len += 1;
            }
        }
        k
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    fn is_domain_key(&self) -> bool {
        DOMAIN_KEYS.iter().any(|d| d.as_bytes() == self.as_bytes())
    }
}

/// Keys that hold a domain under one parent only: ECS's (Wazuh 5's WCS)
/// `dns.question.name`, where `name` alone means nothing.
const DOMAIN_KEYS_UNDER: &[(&str, &str)] = &[("question", "name")];

fn is_domain_in(key: &[u8], parent: Option<&str>) -> bool {
    parent.is_some_and(|p| {
        DOMAIN_KEYS_UNDER
            .iter()
            .any(|(under, k)| k.as_bytes() == key && p.eq_ignore_ascii_case(under))
    })
}

/// Whether a key can be a hash, domain or version key at all, by its last
/// byte (each of those ends in one of these): a key that cannot is not
/// normalised, and most are not.
fn may_name_a_kind(key: &str) -> bool {
    matches!(
        key.as_bytes().last().map(u8::to_ascii_lowercase),
        Some(b'5' | b'1' | b'6' | b'h' | b's' | b'e' | b'y' | b't' | b'n' | b'i' | b'_' | b'-')
    )
}

/// A domain key's value as a host name: a trailing `.` and a trailing
/// `:port` (the HTTP `Host` header's) dropped.
fn host_of_field(value: &str) -> &str {
    let v = value.trim();
    let v = match v.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|c| c.is_ascii_digit()) => host,
        _ => v,
    };
    v.strip_suffix('.').unwrap_or(v)
}

struct Walk<'e, 's, 'o> {
    ex: &'e Extractor,
    scratch: &'s mut Scratch,
    out: &'o mut Vec<Occurrence>,
    /// Where this alert's occurrences start in `out`.
    first: usize,
}

impl Walk<'_, '_, '_> {
    fn value(
        &mut self,
        v: Node<'_>,
        key: Option<&str>,
        parent: Option<&str>,
        rules: RuleCursor<'_>,
    ) {
        // Tested in this order, not through `alert::kind`: only these three
        // kinds matter here, and most nodes are strings.
        if let Some(s) = alert::as_str(v) {
            if rules.status == Status::Scan {
                self.string(s, key, parent);
            }
        } else if let Some(map) = v.as_object() {
            let at_root = self.scratch.path.is_empty() && key.is_none();
            for (k, child) in map.iter() {
                if at_root && k == "syscheck" {
                    self.syscheck(child);
                }
                let (child_rules, reachable) = rules.step(k);
                if reachable {
                    let mark = self.scratch.path.len();
                    if !self.scratch.path.is_empty() {
                        self.scratch.path.push('.');
                    }
                    self.scratch.path.push_str(k);
                    if child_rules.status == Status::Scan {
                        if let Some((host, path)) = split_url(&map, k, child) {
                            self.rebuilt_url(host, path);
                        }
                    }
                    self.value(child, Some(k), key, child_rules);
                    self.scratch.path.truncate(mark);
                }
            }
        } else if let Some(items) = v.as_array() {
            // An index is not a key: rules see through arrays.
            for (i, child) in items.iter().enumerate() {
                let mark = self.scratch.path.len();
                push_index(&mut self.scratch.path, i);
                self.value(child, key, parent, rules);
                self.scratch.path.truncate(mark);
            }
        }
    }

    fn string(&mut self, s: &str, key: Option<&str>, parent: Option<&str>) {
        if s.is_empty() {
            return;
        }
        // Read only once an IP needs it: most strings have none.
        let mut key_direction = KeyDirection {
            key,
            parent,
            known: None,
        };
        let k = key.filter(|k| may_name_a_kind(k)).map(NormalisedKey::of);
        // One search for a colon serves the IPv6 and the URL scan.
        let first_colon = memchr::memchr(b':', s.as_bytes());
        // A version field's `1.0.0.1` is a file version, never an address.
        if !k
            .as_ref()
            .is_some_and(|k| k.as_bytes().ends_with(b"version"))
        {
            self.ips(s, first_colon, &mut key_direction);
        }
        if url::may_hold_one(s, first_colon) {
            self.urls(s, &mut key_direction);
        }
        if let Some(k) = k {
            match hash::key(k.as_bytes()) {
                Some(hash::HashKey::One(kind)) => {
                    if let Some(h) = hash::of(kind, s.trim()) {
                        self.found(h, Direction::Unknown, Rank::Unknown, s);
                    }
                }
                Some(hash::HashKey::Sysmon) => {
                    for h in hash::sysmon(s) {
                        self.found(h, Direction::Unknown, Rank::Unknown, s);
                    }
                }
                None if k.is_domain_key() || is_domain_in(k.as_bytes(), parent) => {
                    if let Some(d) = self.ex.domain(host_of_field(s)) {
                        self.found(d, Direction::Unknown, Rank::Unknown, s);
                    }
                }
                None => {}
            }
        }
        // A `domain|ip` is short and ends in an address's last digit: most
        // strings are not even searched for the bar.
        let may_pair = s.len() <= 300 && s.as_bytes()[s.len() - 1].is_ascii_hexdigit();
        if let Some(bar) = may_pair
            .then(|| memchr::memchr(b'|', s.as_bytes()))
            .flatten()
        {
            let (name, ip) = (&s[..bar], &s[bar + 1..]);
            if ip.trim().parse::<IpAddr>().is_ok() {
                if let Some(d) = self.ex.domain(name.trim()) {
                    self.found(d, Direction::Unknown, Rank::Unknown, s);
                }
            }
        }
    }

    fn ips(&mut self, s: &str, first_colon: Option<usize>, key_direction: &mut KeyDirection<'_>) {
        self.scratch.tokens.clear();
        token::scan_after_colon(s, first_colon, &mut self.scratch.tokens);
        for t in 0..self.scratch.tokens.len() {
            let tok = self.scratch.tokens[t];
            self.ip(canonical(tok.addr), s, tok.start, key_direction);
        }
    }

    fn ip(&mut self, ip: IpAddr, s: &str, at: usize, key_direction: &mut KeyDirection<'_>) {
        if !is_public(ip) || self.ex.excluded(ip) {
            return;
        }
        let key_direction = key_direction.get();
        let (dir, rank) = if key_direction != Direction::Unknown {
            (key_direction, Rank::FromKey)
        } else {
            match direction::from_text(s, at) {
                Direction::Unknown => (Direction::Unknown, Rank::Unknown),
                d => (d, Rank::FromText),
            }
        };
        self.found(Observable::Ip(ip), dir, rank, s);
    }

    fn urls(&mut self, s: &str, key_direction: &mut KeyDirection<'_>) {
        let mut found = std::mem::take(&mut self.scratch.urls);
        found.clear();
        url::scan(s, &mut found);
        for f in found.drain(..) {
            self.url(f.url, s, f.start, key_direction);
        }
        self.scratch.urls = found;
    }

    /// A URL and its host, unless the host is an excluded domain.
    fn url(&mut self, u: url::Url, s: &str, at: usize, key_direction: &mut KeyDirection<'_>) {
        match &u.host {
            url::Host::Name(name) => {
                if self.ex.excluded_domain(name) {
                    return;
                }
                let host = domain::is_real(name).then(|| Observable::Domain(name.clone()));
                self.found(
                    Observable::Url(u.text),
                    Direction::Unknown,
                    Rank::Unknown,
                    s,
                );
                if let Some(d) = host {
                    self.found(d, Direction::Unknown, Rank::Unknown, s);
                }
            }
            url::Host::Ip(ip) => {
                let ip = *ip;
                self.found(
                    Observable::Url(u.text),
                    Direction::Unknown,
                    Rank::Unknown,
                    s,
                );
                self.ip(ip, s, at, key_direction);
            }
        }
    }

    /// `http://host` + path; the host as the field has it (a `Host`
    /// header's port is part of the URL).
    fn rebuilt_url(&mut self, host: &str, path: &str) {
        let host = host.trim();
        if host.is_empty() || host.contains(['/', '?', '#', '@']) {
            return;
        }
        let text = format!("http://{host}{path}");
        if let Some(u) = url::normalise(&text) {
            let mut unknown = KeyDirection {
                key: None,
                parent: None,
                known: Some(Direction::Unknown),
            };
            self.url(u, path, 0, &mut unknown);
        }
    }

    fn syscheck(&mut self, node: Node<'_>) {
        let Some(map) = node.as_object() else {
            return;
        };
        for (k, v) in map.iter() {
            let Some(kind) = SYSCHECK_HASHES
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, kind)| *kind)
            else {
                continue;
            };
            let Some(s) = alert::as_str(v) else {
                continue;
            };
            if let Some(h) = hash::of(kind, s.trim()) {
                let mark = self.scratch.path.len();
                self.scratch.path.push_str("syscheck.");
                self.scratch.path.push_str(k);
                self.found(h, Direction::Unknown, Rank::Unknown, s);
                self.scratch.path.truncate(mark);
            }
        }
    }

    /// Records `observable` found in `s` at the current path, unless it
    /// was found before with as good a rank.
    fn found(&mut self, observable: Observable, direction: Direction, rank: Rank, s: &str) {
        let mine = &mut self.out[self.first..];
        match mine.iter().position(|h| h.observable == observable) {
            Some(i) => {
                if rank > self.scratch.ranks[i] {
                    self.scratch.ranks[i] = rank;
                    let h = &mut mine[i];
                    h.direction = direction;
                    h.field_path.clone_from(&self.scratch.path);
                    h.raw_context = cut(s);
                }
            }
            None => {
                self.scratch.ranks.push(rank);
                self.out.push(Occurrence {
                    observable,
                    direction,
                    field_path: self.scratch.path.clone(),
                    raw_context: cut(s),
                });
            }
        }
    }
}

/// The direction a string's key (or its parent's, for a generic key)
/// names, worked out on first use.
struct KeyDirection<'k> {
    key: Option<&'k str>,
    parent: Option<&'k str>,
    known: Option<Direction>,
}

impl KeyDirection<'_> {
    fn get(&mut self) -> Direction {
        *self.known.get_or_insert_with(|| {
            self.key.map_or(Direction::Unknown, |k| {
                let d = direction::from_key(k);
                if d == Direction::Unknown && direction::is_generic_key(k) {
                    self.parent.map_or(Direction::Unknown, direction::from_key)
                } else {
                    d
                }
            })
        })
    }
}

/// The host and path of a split URL, when `key` is the path key of one
/// of [`SPLIT_URLS`], its value starts with `/` and the object holds the
/// pair's host key. Looked up only at a path key: a lookup by key is a
/// scan of the object.
fn split_url<'a>(map: &Object<'a>, key: &str, value: Node<'a>) -> Option<(&'a str, &'a str)> {
    let &(host_key, _) = SPLIT_URLS.iter().find(|(_, path_key)| *path_key == key)?;
    let path = alert::as_str(value).filter(|p| p.starts_with('/'))?;
    let host = alert::as_str(map.get(host_key)?)?;
    Some((host, path))
}

fn push_index(path: &mut String, i: usize) {
    use std::fmt::Write;
    let _ = write!(path, "[{i}]");
}

fn cut(s: &str) -> String {
    // No more bytes than the limit means no more chars: most strings, and
    // counting their chars one by one is the cost.
    if s.len() <= RAW_CONTEXT_CHARS {
        return s.to_owned();
    }
    // ASCII up to the limit: the limit's byte is its char, no counting.
    if s.as_bytes()[..RAW_CONTEXT_CHARS].is_ascii() {
        return s[..RAW_CONTEXT_CHARS].to_owned();
    }
    match s.char_indices().nth(RAW_CONTEXT_CHARS) {
        Some((end, _)) => s[..end].to_owned(),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests;
