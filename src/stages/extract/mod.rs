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

pub use crate::observable::{Direction, IpText, Observable, Occurrence};
pub use public::{canonical, is_public};
pub use token::{scan, Token};

use crate::alert::{self, Node};
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
];
pub const DEFAULT_SCAN_FIELDS: &[&str] = &["rule.description"];

/// The extraction stage, built once from the config and shared by workers.
#[derive(Debug, Clone)]
pub struct Extractor {
    rules: PathRules,
    exclude: Vec<IpNet>,
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
        Extractor { rules, exclude }
    }

    pub fn with_defaults() -> Self {
        let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Self::new(
            &own(DEFAULT_SKIP_FIELDS),
            &own(DEFAULT_SCAN_FIELDS),
            Vec::new(),
        )
    }

    /// Appends the alert's public IPs to `out`, in order of first occurrence.
    pub fn extract(&self, alert: Node<'_>, scratch: &mut Scratch, out: &mut Vec<Occurrence>) {
        scratch.path.clear();
        let mut walk = Walk {
            ex: self,
            scratch,
            out,
        };
        walk.value(alert, None, None, RuleCursor::root(&self.rules));
    }

    fn excluded(&self, ip: IpAddr) -> bool {
        self.exclude.iter().any(|n| n.contains(&ip))
    }
}

struct Walk<'e, 's, 'o> {
    ex: &'e Extractor,
    scratch: &'s mut Scratch,
    out: &'o mut Vec<Occurrence>,
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
            for (k, child) in map.iter() {
                let (child_rules, reachable) = rules.step(k);
                if reachable {
                    let mark = self.scratch.path.len();
                    if !self.scratch.path.is_empty() {
                        self.scratch.path.push('.');
                    }
                    self.scratch.path.push_str(k);
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
            match self
                .out
                .iter_mut()
                .find(|h| h.observable == Observable::Ip(ip))
            {
                Some(h) if h.direction == Direction::Unknown && dir != Direction::Unknown => {
                    h.direction = dir;
                    h.field_path.clone_from(&self.scratch.path);
                    h.raw_context = cut(s);
                }
                Some(_) => {}
                None => self.out.push(Occurrence {
                    observable: Observable::Ip(ip),
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
    // No more bytes than the limit means no more chars: most strings, and
    // counting their chars one by one is the cost.
    if s.len() <= RAW_CONTEXT_CHARS {
        return s.to_owned();
    }
    match s.char_indices().nth(RAW_CONTEXT_CHARS) {
        Some((end, _)) => s[..end].to_owned(),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests;
