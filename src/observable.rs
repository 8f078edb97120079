//! What an alert is matched on: an [`Observable`] (an IP, a domain, a
//! URL or a file hash, its [`Kind`]), and an [`Occurrence`], an
//! observable with where in the alert it was found.
//!
//! These are the domain types every stage after extraction speaks:
//! dedup keys on an occurrence's text, intelligence answers about an
//! observable, enrichment renders an occurrence with that answer. None of
//! them knows how the observable was found, and none but `enrich` knows
//! the event format.

use serde::Serialize;
use std::net::IpAddr;

/// The kinds of observable, as the event's `detected_observable.type`
/// and the dedup key name them. Adding a kind starts here: its MISP types
/// ([`Kind::misp_types`]), its parsing from MISP's text
/// ([`Observable::from_misp`]) and its extraction (`stages/extract`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Ip,
    Domain,
    Url,
    Md5,
    Sha1,
    Sha256,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Ip,
        Kind::Domain,
        Kind::Url,
        Kind::Md5,
        Kind::Sha1,
        Kind::Sha256,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Ip => "ip",
            Kind::Domain => "domain",
            Kind::Url => "url",
            Kind::Md5 => "md5",
            Kind::Sha1 => "sha1",
            Kind::Sha256 => "sha256",
        }
    }

    /// The MISP attribute types whose value (or one half of it) is an
    /// observable of this kind.
    pub fn misp_types(self) -> &'static [&'static str] {
        match self {
            Kind::Ip => &[
                "ip-src",
                "ip-dst",
                "ip-src|port",
                "ip-dst|port",
                "domain|ip",
            ],
            Kind::Domain => &["domain", "hostname", "domain|ip"],
            Kind::Url => &["url"],
            Kind::Md5 => &["md5", "filename|md5"],
            Kind::Sha1 => &["sha1", "filename|sha1"],
            Kind::Sha256 => &["sha256", "filename|sha256"],
        }
    }

    /// The hex length of a hash kind.
    pub fn hex_len(self) -> Option<usize> {
        match self {
            Kind::Md5 => Some(32),
            Kind::Sha1 => Some(40),
            Kind::Sha256 => Some(64),
            _ => None,
        }
    }
}

/// Every MISP type any kind is matched against, each once.
pub fn all_misp_types() -> Vec<&'static str> {
    let mut types: Vec<&'static str> = Vec::new();
    for k in Kind::ALL {
        for t in k.misp_types() {
            if !types.contains(t) {
                types.push(t);
            }
        }
    }
    types
}

/// Something intelligence can know about.
///
/// Invariant: values are canonical, so that equal observables are equal
/// values: an IP is never IPv4-mapped or NAT64 (see
/// [`crate::extract::canonical`]); a domain is lowercase ASCII (punycode)
/// without a trailing dot; a URL is normalised as
/// [`crate::extract::normalise_url`] says; a hash is lowercase hex of its
/// kind's length.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Observable {
    Ip(IpAddr),
    Domain(Box<str>),
    Url(Box<str>),
    Md5(Box<str>),
    Sha1(Box<str>),
    Sha256(Box<str>),
}

impl Observable {
    pub fn as_ip(&self) -> Option<IpAddr> {
        match self {
            Observable::Ip(ip) => Some(*ip),
            _ => None,
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Observable::Ip(_) => Kind::Ip,
            Observable::Domain(_) => Kind::Domain,
            Observable::Url(_) => Kind::Url,
            Observable::Md5(_) => Kind::Md5,
            Observable::Sha1(_) => Kind::Sha1,
            Observable::Sha256(_) => Kind::Sha256,
        }
    }

    /// The observable of `kind` with the canonical text `text` (which the
    /// caller has normalised). `None` for an IP kind: an IP is parsed.
    pub fn named(kind: Kind, text: Box<str>) -> Option<Observable> {
        Some(match kind {
            Kind::Ip => return None,
            Kind::Domain => Observable::Domain(text),
            Kind::Url => Observable::Url(text),
            Kind::Md5 => Observable::Md5(text),
            Kind::Sha1 => Observable::Sha1(text),
            Kind::Sha256 => Observable::Sha256(text),
        })
    }

    /// The observable as MISP stores it, without allocating.
    pub fn text(&self) -> ObservableText<'_> {
        match self {
            Observable::Ip(ip) => ObservableText::Ip(IpText::new(*ip)),
            Observable::Domain(t)
            | Observable::Url(t)
            | Observable::Md5(t)
            | Observable::Sha1(t)
            | Observable::Sha256(t) => ObservableText::Str(t),
        }
    }

    /// The observable one half of a MISP attribute value of type
    /// `misp_type` stands for, normalised as extraction normalises (so
    /// that `Example.COM.` in MISP is `example.com`). `None` for a half
    /// that is no observable of ours (a port, a filename).
    pub fn from_misp(misp_type: &str, half: &str) -> Option<Observable> {
        let half = half.trim();
        match misp_type {
            "domain" | "hostname" => {
                crate::extract::domain::normalise(half).map(Observable::Domain)
            }
            "url" => crate::extract::normalise_url_attribute(half).map(Observable::Url),
            "md5" | "filename|md5" => crate::extract::hash::of(Kind::Md5, half),
            "sha1" | "filename|sha1" => crate::extract::hash::of(Kind::Sha1, half),
            "sha256" | "filename|sha256" => crate::extract::hash::of(Kind::Sha256, half),
            "domain|ip" => half
                .parse()
                .ok()
                .or_else(|| crate::extract::domain::normalise(half).map(Observable::Domain)),
            _ => half.parse().ok(),
        }
    }
}

impl std::fmt::Display for Observable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.text().as_str())
    }
}

/// Text as MISP would hold it, of whichever kind it reads as: an IP
/// address (canonical, so `::ffff:1.2.3.4` is `1.2.3.4`), a hash (hex of
/// 32, 40 or 64 digits), a URL (with a scheme), else a domain.
impl std::str::FromStr for Observable {
    type Err = NotAnObservable;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Observable::Ip(crate::extract::canonical(ip)));
        }
        let hash = [Kind::Md5, Kind::Sha1, Kind::Sha256]
            .into_iter()
            .find_map(|k| crate::extract::hash::of(k, s));
        if let Some(h) = hash {
            return Ok(h);
        }
        if s.contains("://") {
            return crate::extract::normalise_url(s)
                .map(Observable::Url)
                .ok_or(NotAnObservable);
        }
        if s.contains('.') && !s.contains('/') {
            if let Some(d) = crate::extract::domain::normalise(s) {
                return Ok(Observable::Domain(d));
            }
        }
        Err(NotAnObservable)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not an IP, domain, URL or file hash")]
pub struct NotAnObservable;

/// An observable's text, on the stack where it can be.
#[derive(Clone, Copy)]
pub enum ObservableText<'a> {
    Ip(IpText),
    Str(&'a str),
}

impl ObservableText<'_> {
    pub fn as_str(&self) -> &str {
        match self {
            ObservableText::Ip(t) => t.as_str(),
            ObservableText::Str(s) => s,
        }
    }
}

/// Which way an observable travelled, as far as the alert says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Source,
    Destination,
    Unknown,
}

impl Direction {
    /// The direction [`Direction::as_str`] names; anything else is unknown.
    pub fn parse(s: &str) -> Direction {
        match s {
            "source" => Direction::Source,
            "destination" => Direction::Destination,
            _ => Direction::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Source => "source",
            Direction::Destination => "destination",
            Direction::Unknown => "unknown",
        }
    }
}

/// One observable found in an alert, and where: what flows from
/// extraction through dedup and intelligence to enrichment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Occurrence {
    pub observable: Observable,
    pub direction: Direction,
    /// Dotted path from the alert root, array indices as `[i]`.
    pub field_path: String,
    /// The string the observable was found in, cut to
    /// [`crate::extract::RAW_CONTEXT_CHARS`] characters.
    pub raw_context: String,
}

impl Occurrence {
    /// The address, when the observable is an IP.
    pub fn as_ip(&self) -> Option<IpAddr> {
        self.observable.as_ip()
    }

    /// The observable as text (the dedup key's and the event's value).
    pub fn text(&self) -> ObservableText<'_> {
        self.observable.text()
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
