//! Stage 3, IP extraction: every public IP in an alert, once, with the
//! direction and field it was found in.
//!
//! One depth-first pass over the parsed alert in document order (the alert
//! is parsed with `serde_json`'s `preserve_order`, so object keys keep the
//! order of the line). Strings under the configured skip paths (our own
//! hosts, ids, the rule) are not scanned. For each IP the first occurrence
//! whose direction is known wins; if none is known, the first occurrence.

mod direction;
mod public;
mod token;

pub use direction::Direction;
pub use public::{canonical, is_public};
pub use token::{scan, Token};

use crate::alert::{self, Node};
use ipnet::IpNet;
use std::net::IpAddr;

/// Longest `raw_context` we copy out of the alert, in characters.
pub const RAW_CONTEXT_CHARS: usize = 256;

/// One IP to look up, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpHit {
    /// The address looked up (IPv4-mapped and NAT64 unwrapped).
    pub ip: IpAddr,
    pub direction: Direction,
    /// Dotted path from the alert root, array indices as `[i]`.
    pub field_path: String,
    /// The string the IP was found in, cut to 256 characters.
    pub raw_context: String,
}

impl IpHit {
    /// The address as text, as `Display` writes it.
    pub fn ip_text(&self) -> IpText {
        IpText::new(self.ip)
    }
}

/// An address as text, on the stack. Every event needs its IP as text
/// twice (dedup key, event); IPv4 is written digit by digit because going
/// through `fmt` (a `Formatter` per octet) cost more than the hash it feeds.
/// IPv6, rarer and with its `::` rules, still goes through `Display`.
#[derive(Clone, Copy)]
pub struct IpText {
    buf: [u8; 45],
    len: u8,
}

impl IpText {
    pub fn new(ip: IpAddr) -> IpText {
        let mut text = IpText {
            buf: [0; 45],
            len: 0,
        };
        match ip {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        text.push(b'.');
                    }
                    if octet >= 100 {
                        text.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        text.push(b'0' + octet / 10 % 10);
                    }
                    text.push(b'0' + octet % 10);
                }
            }
            IpAddr::V6(v6) => {
                use std::io::Write;
                let mut rest = &mut text.buf[..];
                write!(rest, "{v6}").expect("an IPv6 address is at most 45 bytes");
                let left = rest.len();
                text.len = (45 - left) as u8;
            }
        }
        text
    }

    fn push(&mut self, b: u8) {
        self.buf[usize::from(self.len)] = b;
        self.len += 1;
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..usize::from(self.len)])
            .expect("digits, dots, hex and colons")
    }
}

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
];
pub const DEFAULT_SCAN_FIELDS: &[&str] = &["rule.description"];

/// The extraction stage, built once from the config and shared by workers.
#[derive(Debug, Clone)]
pub struct Extractor {
    skip: Vec<Vec<String>>,
    scan: Vec<Vec<String>>,
    exclude: Vec<IpNet>,
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
}

fn segments(path: &str) -> Vec<String> {
    path.split('.')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

impl Extractor {
    pub fn new(skip_fields: &[String], scan_fields: &[String], exclude: Vec<IpNet>) -> Self {
        let skip: Vec<_> = skip_fields.iter().map(|s| segments(s)).collect();
        let scan: Vec<_> = scan_fields.iter().map(|s| segments(s)).collect();
        Extractor {
            skip,
            scan,
            exclude,
        }
    }

    pub fn with_defaults() -> Self {
        let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Self::new(
            &own(DEFAULT_SKIP_FIELDS),
            &own(DEFAULT_SCAN_FIELDS),
            Vec::new(),
        )
    }

    /// Status of the node at `keys`, whether anything below it could still
    /// be scanned, and whether any rule reaches deeper below it (if none,
    /// its whole subtree inherits the status without further checks).
    fn status(&self, keys: &[&str]) -> (Status, bool, bool) {
        let is_prefix = |rule: &[String], of: &[&str]| {
            rule.len() <= of.len() && rule.iter().zip(of).all(|(a, b)| a == b)
        };
        let extends =
            |r: &Vec<String>| r.len() > keys.len() && r.iter().zip(keys).all(|(a, b)| a == b);
        let deeper_scan = self.scan.iter().any(extends);
        let deeper = deeper_scan || self.skip.iter().any(extends);
        if self.scan.iter().any(|r| is_prefix(r, keys)) {
            return (Status::Scan, true, deeper);
        }
        if self.skip.iter().any(|r| is_prefix(r, keys)) {
            return (Status::Skip, deeper_scan, deeper);
        }
        (Status::Scan, true, deeper)
    }

    /// Appends the alert's public IPs to `out`, in order of first occurrence.
    pub fn extract(&self, alert: Node<'_>, scratch: &mut Scratch, out: &mut Vec<IpHit>) {
        scratch.path.clear();
        let mut keys: Vec<&str> = Vec::with_capacity(8);
        let mut walk = Walk {
            ex: self,
            scratch,
            out,
        };
        walk.value(alert, &mut keys, None, None, Status::Scan, true);
    }

    fn excluded(&self, ip: IpAddr) -> bool {
        self.exclude.iter().any(|n| n.contains(&ip))
    }
}

struct Walk<'e, 's, 'o> {
    ex: &'e Extractor,
    scratch: &'s mut Scratch,
    out: &'o mut Vec<IpHit>,
}

impl Walk<'_, '_, '_> {
    fn value<'v>(
        &mut self,
        v: Node<'v>,
        keys: &mut Vec<&'v str>,
        key: Option<&'v str>,
        parent: Option<&'v str>,
        status: Status,
        rules_below: bool,
    ) {
        // Tested in this order, not through `alert::kind`: only these three
        // kinds matter here, and most nodes are strings.
        if let Some(s) = alert::as_str(v) {
            if status == Status::Scan {
                self.string(s, key, parent);
            }
        } else if let Some(map) = v.as_object() {
            for (k, child) in map.iter() {
                keys.push(k);
                let (child_status, reachable, deeper) = if rules_below {
                    self.ex.status(keys)
                } else {
                    (status, status == Status::Scan, false)
                };
                if reachable {
                    let mark = self.scratch.path.len();
                    if !self.scratch.path.is_empty() {
                        self.scratch.path.push('.');
                    }
                    self.scratch.path.push_str(k);
                    self.value(child, keys, Some(k), key, child_status, deeper);
                    self.scratch.path.truncate(mark);
                }
                keys.pop();
            }
        } else if let Some(items) = v.as_array() {
            for (i, child) in items.iter().enumerate() {
                let mark = self.scratch.path.len();
                push_index(&mut self.scratch.path, i);
                self.value(child, keys, key, parent, status, rules_below);
                self.scratch.path.truncate(mark);
            }
        }
    }

    fn string(&mut self, s: &str, key: Option<&str>, parent: Option<&str>) {
        self.scratch.tokens.clear();
        token::scan(s, &mut self.scratch.tokens);
        if self.scratch.tokens.is_empty() {
            return;
        }
        let key_direction = key.map_or(Direction::Unknown, |k| {
            let d = direction::from_key(k);
            if d == Direction::Unknown && direction::is_generic_key(k) {
                parent.map_or(Direction::Unknown, direction::from_key)
            } else {
                d
            }
        });
        for t in 0..self.scratch.tokens.len() {
            let tok = self.scratch.tokens[t];
            let ip = canonical(tok.addr);
            if !is_public(ip) || self.ex.excluded(ip) {
                continue;
            }
            let dir = if key_direction != Direction::Unknown {
                key_direction
            } else {
                direction::from_text(s, tok.start)
            };
            match self.out.iter_mut().find(|h| h.ip == ip) {
                Some(h) if h.direction == Direction::Unknown && dir != Direction::Unknown => {
                    h.direction = dir;
                    h.field_path.clone_from(&self.scratch.path);
                    h.raw_context = cut(s);
                }
                Some(_) => {}
                None => self.out.push(IpHit {
                    ip,
                    direction: dir,
                    field_path: self.scratch.path.clone(),
                    raw_context: cut(s),
                }),
            }
        }
    }
}

fn push_index(path: &mut String, i: usize) {
    use std::fmt::Write;
    let _ = write!(path, "[{i}]");
}

fn cut(s: &str) -> String {
    match s.char_indices().nth(RAW_CONTEXT_CHARS) {
        Some((end, _)) => s[..end].to_owned(),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests;
