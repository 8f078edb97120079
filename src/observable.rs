//! What an alert is matched on: an [`Observable`] (an IP today; domains,
//! URLs and file hashes are its other kinds), and an [`Occurrence`], an
//! observable with where in the alert it was found.
//!
//! These are the domain types every stage after extraction speaks:
//! dedup keys on an occurrence's text, intelligence answers about an
//! observable, enrichment renders an occurrence with that answer. None of
//! them knows how the observable was found, and none but `enrich` knows
//! the event format.

use serde::Serialize;
use std::net::IpAddr;

/// Something intelligence can know about.
///
/// Invariant: values are canonical, so that equal observables are equal
/// values: an IP is never IPv4-mapped or NAT64 (see
/// [`crate::extract::canonical`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Observable {
    Ip(IpAddr),
}

impl Observable {
    pub fn as_ip(&self) -> Option<IpAddr> {
        match self {
            Observable::Ip(ip) => Some(*ip),
        }
    }

    /// The observable as MISP stores it, without allocating.
    pub fn text(&self) -> ObservableText {
        match self {
            Observable::Ip(ip) => ObservableText::Ip(IpText::new(*ip)),
        }
    }
}

impl std::fmt::Display for Observable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.text().as_str())
    }
}

/// Text as MISP would hold it: an IP address (canonical, so
/// `::ffff:1.2.3.4` is `1.2.3.4`).
impl std::str::FromStr for Observable {
    type Err = std::net::AddrParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ip: IpAddr = s.trim().parse()?;
        Ok(Observable::Ip(crate::extract::canonical(ip)))
    }
}

/// An observable's text, on the stack where it can be.
#[derive(Clone, Copy)]
pub enum ObservableText {
    Ip(IpText),
}

impl ObservableText {
    pub fn as_str(&self) -> &str {
        match self {
            ObservableText::Ip(t) => t.as_str(),
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
    pub fn text(&self) -> ObservableText {
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
