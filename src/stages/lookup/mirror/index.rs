//! The mirror's matcher: which mirrored indicators an observable hits: an
//! IP exactly or by the longest network prefix that holds it, a domain
//! exactly or by a parent `domain` attribute, a URL or hash exactly.
//!
//! Pure and synchronous. It is read on every alert's every IP, so it holds
//! no strings: a record is an attribute's uuid (to merge and remove by),
//! the time its age counts from, and a link to the next record filed under
//! the same key. What an event shows about an attribute comes from MISP
//! (or, when MISP is away, from the store), never from here.
//!
//! Exact IPs are hash lookups (IPv4 and IPv6 in their own maps, keyed by
//! the address as an integer). Networks are one map per prefix length
//! ([`super::prefixes`]), searched from the longest length down. Domains,
//! hostnames, URLs and hashes are keyed by the MD5 of their kind and
//! canonical text ([`Key::name`]): 16 bytes whatever the text's length, and
//! no text a crafted name could collide with by accident.

use super::exact::ExactSet;
use super::prefixes::Prefixes;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::collections::HashMap;
use std::net::IpAddr;

type Fast = foldhash::fast::FixedState;

/// Where an attribute's value is filed: one address, or one network
/// (its prefix, host bits cleared).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key {
    V4(u32),
    V6(u128),
    Net4(Ipv4Net),
    Net6(Ipv6Net),
    /// A domain, hostname, URL or hash ([`Key::name`]).
    Name(u128),
}

/// What a named key files: the kind of text, as the key's hash reads it.
/// A `domain` attribute matches its subdomains, a `hostname` only itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    Domain,
    Hostname,
    Url,
    Hash(crate::observable::Kind),
}

/// The named kind an attribute of `misp_type` is filed under, if any.
fn named_kind(misp_type: &str) -> Option<NameKind> {
    use crate::observable::Kind;
    Some(match misp_type {
        "domain" | "domain|ip" => NameKind::Domain,
        "hostname" => NameKind::Hostname,
        "url" => NameKind::Url,
        "md5" | "filename|md5" => NameKind::Hash(Kind::Md5),
        "sha1" | "filename|sha1" => NameKind::Hash(Kind::Sha1),
        "sha256" | "filename|sha256" => NameKind::Hash(Kind::Sha256),
        _ => return None,
    })
}

/// The named kind of an attribute and the part of its value it names (a
/// `domain|ip`'s first half, a `filename|hash`'s last; a URL whole).
fn named_half<'v>(misp_type: &str, value: &'v str) -> Option<(NameKind, &'v str)> {
    let kind = named_kind(misp_type)?;
    let half = match misp_type {
        "domain|ip" => value.split('|').next().unwrap_or(value),
        t if t.starts_with("filename|") => value.rsplit('|').next().unwrap_or(value),
        _ => value,
    };
    Some((kind, half.trim()))
}

/// A named value's canonical text, as extraction writes it.
fn canonical_name(kind: NameKind, text: &str) -> Option<Box<str>> {
    use crate::observable::Observable;
    match kind {
        NameKind::Domain | NameKind::Hostname => crate::extract::domain::normalise(text),
        NameKind::Url => crate::extract::normalise_url_attribute(text),
        NameKind::Hash(k) => match crate::extract::hash::of(k, text)? {
            Observable::Md5(t) | Observable::Sha1(t) | Observable::Sha256(t) => Some(t),
            _ => None,
        },
    }
}

/// The texts, other than the canonical one, that MISP stores one key's
/// value under, each with the number of attributes using it: at most
/// [`MAX_STORED_TEXTS`] per key (the details of a hit are asked by the
/// canonical text and these), removed with the last attribute using them.
#[derive(Debug, Clone, Default)]
struct StoredTexts(Vec<(Box<str>, u32)>);

/// Distinct stored forms kept per key: beyond, a hit's details are asked
/// by the canonical text and the first ones.
pub const MAX_STORED_TEXTS: usize = 16;

impl StoredTexts {
    fn add(&mut self, text: &str) {
        if let Some((_, n)) = self.0.iter_mut().find(|(t, _)| &**t == text) {
            *n += 1;
        } else if self.0.len() < MAX_STORED_TEXTS {
            self.0.push((text.into(), 1));
        }
    }

    /// One attribute less uses `text`; true when none is left at all.
    fn take(&mut self, text: &str) -> bool {
        if let Some(i) = self.0.iter().position(|(t, _)| &**t == text) {
            self.0[i].1 -= 1;
            if self.0[i].1 == 0 {
                self.0.swap_remove(i);
            }
        }
        self.0.is_empty()
    }

    fn texts(&self) -> Vec<String> {
        self.0.iter().map(|(t, _)| t.to_string()).collect()
    }
}

/// A text an attribute's value is stored under that is not its key's
/// canonical one.
enum StoredText<'v> {
    Name(u128, &'v str),
    Network(IpNet, &'v str),
}

/// The stored texts of an attribute of `misp_type` with `value`: a named
/// half not written canonically (`HTTP://Evil.com:80/x`, an upper-case
/// hash), a network not written as its canonical text (`10.0.0.5/24`).
fn stored_texts<'v>(misp_type: &str, value: &'v str) -> Vec<StoredText<'v>> {
    let mut out = Vec::new();
    if let Some((kind, half)) = named_half(misp_type, value) {
        if let Some(canonical) = canonical_name(kind, half).filter(|c| &**c != half) {
            if let Key::Name(h) = Key::name(kind, &canonical) {
                out.push(StoredText::Name(h, half));
            }
        }
    }
    for half in value.split('|') {
        let half = half.trim();
        if let (Ok(net), Err(_)) = (half.parse::<IpNet>(), half.parse::<IpAddr>()) {
            let canonical = net.trunc();
            if net.prefix_len() < net.max_prefix_len() && canonical.to_string() != half {
                out.push(StoredText::Network(canonical, half));
            }
        }
    }
    out
}

impl NameKind {
    fn tag(self) -> &'static str {
        match self {
            NameKind::Domain => "domain",
            NameKind::Hostname => "hostname",
            NameKind::Url => "url",
            NameKind::Hash(k) => k.as_str(),
        }
    }
}

impl Key {
    /// The key of a canonical name of `kind`.
    pub fn name(kind: NameKind, canonical: &str) -> Key {
        use md5::Digest;
        let mut h = md5::Md5::new();
        h.update(kind.tag().as_bytes());
        h.update(b":");
        h.update(canonical.as_bytes());
        Key::Name(u128::from_le_bytes(h.finalize().into()))
    }

    /// The keys a MISP attribute of `misp_type` is filed under: by type,
    /// its domain, URL or hash (a composite's matching half), its IP or
    /// network halves. A type we do not match has none.
    pub fn of_attribute(misp_type: &str, value: &str) -> Vec<Key> {
        let named = named_half(misp_type, value)
            .and_then(|(kind, half)| Some(Key::name(kind, &canonical_name(kind, half)?)));
        match misp_type {
            "domain|ip" => {
                let ip = value.split_once('|').map_or("", |(_, ip)| ip);
                named.into_iter().chain(Key::of_text(ip)).collect()
            }
            t if named_kind(t).is_some() => named.into_iter().collect(),
            _ => Key::of_value(value).collect(),
        }
    }

    /// The IP keys of an attribute value: its IP or network, or for a
    /// composite value (`ip|port`, `domain|ip`) its IP half. A value that
    /// holds none (a domain) has none.
    pub fn of_value(value: &str) -> impl Iterator<Item = Key> + '_ {
        let mut seen: Option<Key> = None;
        value.split('|').filter_map(move |half| {
            let k = Key::of_text(half)?;
            // `1.2.3.4|1.2.3.4` files once.
            if seen == Some(k) {
                return None;
            }
            seen = Some(k);
            Some(k)
        })
    }

    fn of_text(text: &str) -> Option<Key> {
        let text = text.trim();
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Some(Key::of_ip(ip));
        }
        let net: IpNet = text.parse().ok()?;
        // `::ffff:a.b.c.0/120` is the IPv4 network a.b.c.0/24: alerts carry
        // the IPv4 address, canonical.
        let net = match net {
            IpNet::V6(n) if n.prefix_len() >= 96 => match n.addr().to_ipv4_mapped() {
                Some(v4) => IpNet::V4(Ipv4Net::new(v4, n.prefix_len() - 96).ok()?),
                None => net,
            },
            other => other,
        };
        Some(match net {
            IpNet::V4(n) if n.prefix_len() == 32 => Key::of_ip(IpAddr::V4(n.addr())),
            IpNet::V6(n) if n.prefix_len() == 128 => Key::of_ip(IpAddr::V6(n.addr())),
            IpNet::V4(n) => Key::Net4(n.trunc()),
            IpNet::V6(n) => Key::Net6(n.trunc()),
        })
    }

    pub fn of_ip(ip: IpAddr) -> Key {
        match crate::extract::canonical(ip) {
            IpAddr::V4(v4) => Key::V4(v4.to_bits()),
            IpAddr::V6(v6) => Key::V6(v6.to_bits()),
        }
    }

    pub fn is_network(&self) -> bool {
        matches!(self, Key::Net4(_) | Key::Net6(_))
    }
}

/// What a domain hits: itself (a `domain` or `hostname` attribute), or
/// the longest parent a `domain` attribute holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NameMatch<'d> {
    pub exact: bool,
    pub parent: Option<&'d str>,
}

impl NameMatch<'_> {
    pub fn is_hit(&self) -> bool {
        self.exact || self.parent.is_some()
    }
}

/// One mirrored attribute, as the matcher needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub uuid: [u8; 16],
    /// Unix seconds its age counts from: its last sighting, else its
    /// timestamp. An indicator older than the hit policy's cutoff is not a
    /// hit (decay, maximum age) without waiting for the next full sync.
    pub seen: u32,
    /// The next record under the same key, or [`END`].
    next: u32,
}

impl Record {
    pub fn new(uuid: [u8; 16], seen: u32) -> Record {
        Record {
            uuid,
            seen,
            next: END,
        }
    }
}

const END: u32 = u32::MAX;

/// What an observable hits in the mirror.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Match {
    /// A live attribute holds this very value.
    pub exact: bool,
    /// For an IP, the longest live network holding it (host bits cleared).
    pub network: Option<IpNet>,
    /// For a domain, the longest parent a live `domain` attribute holds.
    pub parent_domain: Option<Box<str>>,
}

impl Match {
    pub fn is_hit(&self) -> bool {
        self.exact || self.network.is_some() || self.parent_domain.is_some()
    }
}

/// The matcher. Cloned whole for a change (a clone is a few memcpys), so
/// that lookups read a complete one while the next is being prepared.
#[derive(Clone, Default)]
pub struct Index {
    records: Vec<Record>,
    free: Vec<u32>,
    v4: HashMap<u32, u32, Fast>,
    v6: HashMap<u128, u32, Fast>,
    names: HashMap<u128, u32, Fast>,
    n4: Prefixes<u32>,
    n6: Prefixes<u128>,
    /// Records filed under a network key.
    networks: usize,
    /// A network's text as MISP stores it, where that is not the
    /// network's canonical text (`10.0.0.5/24`, a long-form IPv6): the
    /// details of a hit are asked for by the stored text. Rare, so kept
    /// apart from the records.
    texts: HashMap<IpNet, StoredTexts, Fast>,
    /// The same for a domain, URL or hash whose stored text is not its
    /// canonical one (`HTTP://Evil.com:80/x`, an upper-case hash).
    name_texts: HashMap<u128, StoredTexts, Fast>,
    /// `v4`'s keys packed for the hot path, when current ([`Index::seal`]).
    sealed: Option<ExactSet>,
}

impl Index {
    pub fn with_capacity(exact: usize) -> Index {
        Index {
            records: Vec::with_capacity(exact),
            v4: HashMap::with_capacity_and_hasher(exact, Fast::default()),
            ..Index::default()
        }
    }

    /// Records held (an attribute with two IP halves counts twice).
    pub fn len(&self) -> usize {
        self.records.len() - self.free.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn networks(&self) -> usize {
        self.networks
    }

    fn head(&self, key: &Key) -> Option<u32> {
        match key {
            Key::V4(a) => self.v4.get(a).copied(),
            Key::V6(a) => self.v6.get(a).copied(),
            Key::Net4(n) => self.n4.get(n.addr().to_bits(), n.prefix_len()),
            Key::Net6(n) => self.n6.get(n.addr().to_bits(), n.prefix_len()),
            Key::Name(h) => self.names.get(h).copied(),
        }
    }

    /// Packs what the hot path reads; done before the index is swapped in.
    /// Any change afterwards unseals it (lookups then read the map).
    pub fn seal(&mut self) {
        self.sealed = Some(ExactSet::build(self.v4.keys().copied()));
    }

    pub fn is_sealed(&self) -> bool {
        self.sealed.is_some()
    }

    fn set_head(&mut self, key: Key, head: u32) {
        if matches!(key, Key::V4(_)) {
            self.sealed = None;
        }
        if head == END {
            match key {
                Key::V4(a) => drop(self.v4.remove(&a)),
                Key::V6(a) => drop(self.v6.remove(&a)),
                Key::Net4(n) => self.n4.remove(n.addr().to_bits(), n.prefix_len()),
                Key::Net6(n) => self.n6.remove(n.addr().to_bits(), n.prefix_len()),
                Key::Name(h) => drop(self.names.remove(&h)),
            }
            return;
        }
        match key {
            Key::V4(a) => drop(self.v4.insert(a, head)),
            Key::V6(a) => drop(self.v6.insert(a, head)),
            Key::Net4(n) => self.n4.insert(n.addr().to_bits(), n.prefix_len(), head),
            Key::Net6(n) => self.n6.insert(n.addr().to_bits(), n.prefix_len(), head),
            Key::Name(h) => drop(self.names.insert(h, head)),
        }
    }

    /// Files `record` under `key`, replacing a record with the same uuid
    /// there.
    pub fn insert(&mut self, key: Key, record: Record) {
        self.remove(key, &record.uuid);
        self.insert_new(key, record);
    }

    /// Files `record` under `key`, which holds none with its uuid (the
    /// store said the attribute is new): O(1), where a replacement walks
    /// the key's chain, and a value that 100 000 attributes share would
    /// cost their square.
    fn insert_new(&mut self, key: Key, mut record: Record) {
        record.next = self.head(&key).unwrap_or(END);
        let slot = match self.free.pop() {
            Some(s) => {
                self.records[s as usize] = record;
                s
            }
            None => {
                self.records.push(record);
                (self.records.len() - 1) as u32
            }
        };
        self.set_head(key, slot);
        if key.is_network() {
            self.networks += 1;
        }
    }

    /// Files `record` under every key of an attribute of `misp_type`
    /// with `value` (see [`Key::of_attribute`]).
    pub fn file(&mut self, misp_type: &str, value: &str, record: Record) {
        self.file_as(misp_type, value, record, true);
    }

    /// [`Self::file`] for an attribute the index does not hold.
    pub fn file_new(&mut self, misp_type: &str, value: &str, record: Record) {
        self.file_as(misp_type, value, record, false);
    }

    fn file_as(&mut self, misp_type: &str, value: &str, record: Record, replacing: bool) {
        for key in Key::of_attribute(misp_type, value) {
            if replacing {
                self.insert(key, record);
            } else {
                self.insert_new(key, record);
            }
        }
        for text in stored_texts(misp_type, value) {
            match text {
                StoredText::Name(h, t) => self.name_texts.entry(h).or_default().add(t),
                StoredText::Network(n, t) => self.texts.entry(n).or_default().add(t),
            }
        }
    }

    /// Takes the record with `uuid` out from under every key of an
    /// attribute of `misp_type` with `value`.
    pub fn unfile(&mut self, misp_type: &str, value: &str, uuid: &[u8; 16]) {
        for key in Key::of_attribute(misp_type, value) {
            self.remove(key, uuid);
        }
        // Its stored texts go with it, once no other attribute uses them.
        for text in stored_texts(misp_type, value) {
            match text {
                StoredText::Name(h, t) => {
                    if self.name_texts.get_mut(&h).is_some_and(|s| s.take(t)) {
                        self.name_texts.remove(&h);
                    }
                }
                StoredText::Network(n, t) => {
                    if self.texts.get_mut(&n).is_some_and(|s| s.take(t)) {
                        self.texts.remove(&n);
                    }
                }
            }
        }
    }

    fn name_live(&self, key: Key, cutoff: u32) -> bool {
        !self.names.is_empty() && self.head(&key).is_some_and(|h| self.any_live(h, cutoff))
    }

    /// What a canonical name of a hash or URL `kind` hits.
    pub fn name_hit(&self, kind: NameKind, canonical: &str, cutoff: u32) -> bool {
        self.name_live(Key::name(kind, canonical), cutoff)
    }

    /// What a canonical domain hits: a `domain` or `hostname` attribute
    /// holding it, and with `subdomains` the longest parent a `domain`
    /// attribute holds.
    pub fn domain_match<'d>(
        &self,
        domain: &'d str,
        subdomains: bool,
        cutoff: u32,
    ) -> NameMatch<'d> {
        if self.names.is_empty() {
            return NameMatch::default();
        }
        let exact = self.name_live(Key::name(NameKind::Domain, domain), cutoff)
            || self.name_live(Key::name(NameKind::Hostname, domain), cutoff);
        let parent = if subdomains {
            crate::extract::domain::with_parents(domain)
                .skip(1)
                .find(|p| self.name_live(Key::name(NameKind::Domain, p), cutoff))
        } else {
            None
        };
        NameMatch { exact, parent }
    }

    /// The texts other than `canonical` that MISP stores a name of `kind`
    /// under.
    pub fn name_texts(&self, kind: NameKind, canonical: &str) -> Vec<String> {
        let Key::Name(h) = Key::name(kind, canonical) else {
            return Vec::new();
        };
        self.name_texts
            .get(&h)
            .map(StoredTexts::texts)
            .unwrap_or_default()
    }

    /// The texts MISP stores a matched network under: its canonical one,
    /// and any other an attribute used.
    pub fn network_texts(&self, network: &IpNet) -> Vec<String> {
        let mut out = vec![network.to_string()];
        out.extend(
            self.texts
                .get(network)
                .map(StoredTexts::texts)
                .unwrap_or_default(),
        );
        out
    }

    /// Takes the record with `uuid` out from under `key`; false if it was
    /// not there.
    pub fn remove(&mut self, key: Key, uuid: &[u8; 16]) -> bool {
        let Some(head) = self.head(&key) else {
            return false;
        };
        let mut prev: Option<u32> = None;
        let mut at = head;
        while at != END {
            let r = self.records[at as usize];
            if &r.uuid == uuid {
                match prev {
                    Some(p) => self.records[p as usize].next = r.next,
                    None => self.set_head(key, r.next),
                }
                self.free.push(at);
                if key.is_network() {
                    self.networks -= 1;
                }
                return true;
            }
            prev = Some(at);
            at = r.next;
        }
        false
    }

    /// Whether a record from `at` on was seen at or after `cutoff` (0:
    /// any record is live, and none is read: the common case, no age
    /// limit, costs no memory access past the map).
    fn any_live(&self, mut at: u32, cutoff: u32) -> bool {
        if cutoff == 0 {
            return at != END;
        }
        while at != END {
            let r = &self.records[at as usize];
            if r.seen >= cutoff {
                return true;
            }
            at = r.next;
        }
        false
    }

    /// Whether `ip` hits at all, exactly or in a network, among the
    /// records seen at or after `cutoff`: the hot path, which stops at the
    /// first hit.
    pub fn hit(&self, ip: IpAddr, cutoff: u32) -> bool {
        let ip = crate::extract::canonical(ip);
        let exact = match (&self.sealed, ip) {
            // Without an age limit, holding the address is the answer.
            (Some(set), IpAddr::V4(a)) if cutoff == 0 => set.contains(a.to_bits()),
            _ => self
                .head(&Key::of_ip(ip))
                .is_some_and(|h| self.any_live(h, cutoff)),
        };
        exact || self.network_of(ip, cutoff).is_some()
    }

    /// What `ip` hits among the records seen at or after `cutoff` (the
    /// hit policy: age and decay; 0: any age).
    pub fn matches(&self, ip: IpAddr, cutoff: u32) -> Match {
        let ip = crate::extract::canonical(ip);
        let exact = self
            .head(&Key::of_ip(ip))
            .is_some_and(|h| self.any_live(h, cutoff));
        Match {
            exact,
            network: self.network_of(ip, cutoff),
            parent_domain: None,
        }
    }

    fn network_of(&self, ip: IpAddr, cutoff: u32) -> Option<IpNet> {
        if self.networks == 0 {
            return None;
        }
        let live = |head| self.any_live(head, cutoff);
        match ip {
            IpAddr::V4(a) => self.n4.longest(a.to_bits(), live).and_then(|(n, len)| {
                Ipv4Net::new(std::net::Ipv4Addr::from_bits(n), len)
                    .ok()
                    .map(IpNet::V4)
            }),
            IpAddr::V6(a) => self.n6.longest(a.to_bits(), live).and_then(|(n, len)| {
                Ipv6Net::new(std::net::Ipv6Addr::from_bits(n), len)
                    .ok()
                    .map(IpNet::V6)
            }),
        }
    }

    /// Bytes held, roughly (what a `mirror status` reports per server).
    pub fn memory_bytes(&self) -> usize {
        self.records.capacity() * std::mem::size_of::<Record>()
            + self.free.capacity() * 4
            + self.v4.capacity() * 9
            + self.v6.capacity() * 21
            + self.names.capacity() * 21
            + self.n4.memory_bytes()
            + self.n6.memory_bytes()
            + self.sealed.as_ref().map_or(0, ExactSet::memory_bytes)
    }
}

/// A uuid's 16 bytes; a uuid MISP sends without dashes or in capitals
/// reads the same. Text that is no uuid hashes to 16 bytes, so that it
/// still identifies its attribute.
pub fn uuid_bytes(text: &str) -> [u8; 16] {
    let hex: Vec<u8> = text
        .bytes()
        .filter(|b| *b != b'-')
        .map(|b| b.to_ascii_lowercase())
        .collect();
    let mut out = [0u8; 16];
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    if hex.len() == 32 {
        let mut ok = true;
        for (i, pair) in hex.chunks(2).enumerate() {
            match (digit(pair[0]), digit(pair[1])) {
                (Some(h), Some(l)) => out[i] = h << 4 | l,
                _ => ok = false,
            }
        }
        if ok {
            return out;
        }
    }
    use md5::Digest;
    out.copy_from_slice(&md5::Md5::digest(text.as_bytes()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn uuid(i: u32) -> [u8; 16] {
        let mut u = [0u8; 16];
        u[..4].copy_from_slice(&i.to_be_bytes());
        u
    }

    #[test]
    fn keys_of_values() {
        let keys = |v: &str| Key::of_value(v).collect::<Vec<_>>();
        assert_eq!(keys("1.2.3.4"), vec![Key::V4(0x01020304)]);
        assert_eq!(keys("1.2.3.4|443"), vec![Key::V4(0x01020304)]);
        assert_eq!(keys("evil.example|1.2.3.4"), vec![Key::V4(0x01020304)]);
        assert_eq!(keys("1.2.3.4/32"), vec![Key::V4(0x01020304)]);
        assert_eq!(
            keys("10.0.0.5/24"),
            vec![Key::Net4("10.0.0.0/24".parse().unwrap())]
        );
        assert_eq!(keys("::ffff:1.2.3.4"), vec![Key::V4(0x01020304)]);
        assert_eq!(
            keys("::ffff:10.1.2.0/120"),
            vec![Key::Net4("10.1.2.0/24".parse().unwrap())],
            "an IPv4-mapped network is the IPv4 network"
        );
        assert!(keys("evil.example").is_empty());
        assert_eq!(keys("1.2.3.4|1.2.3.4").len(), 1);
    }

    #[test]
    fn keys_of_attributes_by_type() {
        let name = Key::name;
        let md5 = "5d41402abc4b2a76b9719d911017c592";
        assert_eq!(
            Key::of_attribute("domain", "Evil.COM."),
            vec![name(NameKind::Domain, "evil.com")]
        );
        assert_eq!(
            Key::of_attribute("hostname", "cdn.evil.com"),
            vec![name(NameKind::Hostname, "cdn.evil.com")]
        );
        assert_eq!(
            Key::of_attribute("domain|ip", "evil.com|1.2.3.4"),
            vec![name(NameKind::Domain, "evil.com"), Key::V4(0x01020304)]
        );
        assert_eq!(
            Key::of_attribute("url", "HTTP://Evil.com:80/A#x"),
            vec![name(NameKind::Url, "http://evil.com/A")]
        );
        assert_eq!(
            Key::of_attribute("filename|md5", &format!("evil.exe|{}", md5.to_uppercase())),
            vec![name(NameKind::Hash(crate::observable::Kind::Md5), md5)]
        );
        assert_eq!(
            Key::of_attribute("md5", "d41d8cd98f00b204e9800998ecf8427e"),
            vec![]
        );
        assert_eq!(
            Key::of_attribute("ip-dst|port", "1.2.3.4|443"),
            vec![Key::V4(0x01020304)]
        );
        assert_eq!(Key::of_attribute("email-src", "a@b.com"), vec![]);
        assert_eq!(
            Key::of_attribute("url", "evil.top/dl/x.exe"),
            vec![name(NameKind::Url, "http://evil.top/dl/x.exe")],
            "a url without a scheme is an http URL"
        );
        assert_eq!(
            Key::of_attribute("url", "www.Evil.top"),
            vec![name(NameKind::Url, "http://www.evil.top")]
        );
        for not_a_url in ["igfxtray.exe", "Data/dtl.dat", "/tmp/x"] {
            assert_eq!(Key::of_attribute("url", not_a_url), vec![], "{not_a_url}");
        }
        assert_ne!(
            name(NameKind::Domain, "evil.com"),
            name(NameKind::Hostname, "evil.com")
        );
    }

    #[test]
    fn a_domain_attribute_covers_subdomains_and_a_hostname_does_not() {
        let mut ix = Index::default();
        ix.file("domain", "evil.com", Record::new(uuid(1), 10));
        ix.file("hostname", "host.other.org", Record::new(uuid(2), 10));
        let m = ix.domain_match("cdn.a.evil.com", true, 0);
        assert_eq!(
            m,
            NameMatch {
                exact: false,
                parent: Some("evil.com")
            }
        );
        assert!(!ix.domain_match("cdn.a.evil.com", false, 0).is_hit());
        assert_eq!(
            ix.domain_match("evil.com", true, 0),
            NameMatch {
                exact: true,
                parent: None
            }
        );
        assert!(ix.domain_match("host.other.org", true, 0).exact);
        assert!(!ix.domain_match("x.host.other.org", true, 0).is_hit());
        assert!(!ix.domain_match("notevil.com", true, 0).is_hit());
        assert!(
            !ix.domain_match("cdn.evil.com", true, 11).is_hit(),
            "too old"
        );
        ix.unfile("domain", "evil.com", &uuid(1));
        assert!(!ix.domain_match("cdn.evil.com", true, 0).is_hit());
    }

    #[test]
    fn insert_replace_remove() {
        let mut ix = Index::default();
        let k = Key::V4(7);
        ix.insert(k, Record::new(uuid(1), 10));
        ix.insert(k, Record::new(uuid(2), 10));
        ix.insert(k, Record::new(uuid(1), 20));
        assert_eq!(ix.len(), 2);
        let ip = IpAddr::V4(std::net::Ipv4Addr::from_bits(7));
        assert!(ix.matches(ip, 0).exact);
        assert!(ix.matches(ip, 20).exact && ix.hit(ip, 20));
        assert!(ix.remove(k, &uuid(1)));
        assert!(!ix.matches(ip, 20).exact && !ix.hit(ip, 20));
        assert!(ix.remove(k, &uuid(2)));
        assert!(!ix.remove(k, &uuid(2)));
        assert!(ix.is_empty());
        assert!(!ix.matches(ip, 0).exact && !ix.hit(ip, 0));
    }

    #[test]
    fn an_expired_longest_network_gives_way_to_a_live_shorter_one() {
        let mut ix = Index::default();
        ix.insert(
            Key::of_value("10.0.0.0/8").next().unwrap(),
            Record::new(uuid(1), 100),
        );
        ix.insert(
            Key::of_value("10.1.0.0/16").next().unwrap(),
            Record::new(uuid(2), 1),
        );
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(
            ix.matches(ip, 0).network,
            Some("10.1.0.0/16".parse().unwrap())
        );
        assert_eq!(
            ix.matches(ip, 50).network,
            Some("10.0.0.0/8".parse().unwrap())
        );
        assert_eq!(ix.matches(ip, 500).network, None);
        assert!(!ix.hit(ip, 500));
    }

    #[test]
    fn a_network_stored_in_another_form_is_asked_for_by_that_form() {
        let mut ix = Index::default();
        ix.file("ip-dst", "10.0.0.5/24", Record::new(uuid(1), 1));
        ix.file(
            "ip-dst",
            "2620:0007:6001:0000::/48",
            Record::new(uuid(2), 1),
        );
        ix.file("ip-src", "192.0.2.0/24", Record::new(uuid(3), 1));
        let n: IpNet = "10.0.0.0/24".parse().unwrap();
        assert_eq!(ix.network_texts(&n), vec!["10.0.0.0/24", "10.0.0.5/24"]);
        let v6: IpNet = "2620:7:6001::/48".parse().unwrap();
        assert_eq!(
            ix.network_texts(&v6),
            vec!["2620:7:6001::/48", "2620:0007:6001:0000::/48"]
        );
        let plain: IpNet = "192.0.2.0/24".parse().unwrap();
        assert_eq!(ix.network_texts(&plain), vec!["192.0.2.0/24"]);
        assert_eq!(ix.matches("10.0.0.77".parse().unwrap(), 0).network, Some(n));
    }

    #[test]
    fn stored_texts_are_bounded_and_leave_with_their_last_attribute() {
        let mut ix = Index::default();
        let n: IpNet = "10.0.0.0/24".parse().unwrap();
        ix.file("ip-dst", "10.0.0.5/24", Record::new(uuid(1), 1));
        ix.file("ip-dst", "10.0.0.5/24", Record::new(uuid(2), 1));
        ix.unfile("ip-dst", "10.0.0.5/24", &uuid(1));
        assert_eq!(
            ix.network_texts(&n),
            vec!["10.0.0.0/24", "10.0.0.5/24"],
            "uuid 2 still uses it"
        );
        ix.unfile("ip-dst", "10.0.0.5/24", &uuid(2));
        assert_eq!(
            ix.network_texts(&n),
            vec!["10.0.0.0/24"],
            "gone with its last attribute"
        );
        assert!(ix.texts.is_empty());
        let md5 = "5d41402abc4b2a76b9719d911017c592";
        ix.file("md5", &md5.to_uppercase(), Record::new(uuid(3), 1));
        ix.unfile("md5", &md5.to_uppercase(), &uuid(3));
        assert!(ix.name_texts.is_empty());
        // Many spellings of one network: at most MAX_STORED_TEXTS kept.
        for host in 1..=40u32 {
            ix.file(
                "ip-dst",
                &format!("10.0.0.{host}/24"),
                Record::new(uuid(100 + host), 1),
            );
        }
        assert_eq!(ix.network_texts(&n).len(), 1 + MAX_STORED_TEXTS);
    }

    #[test]
    fn uuids() {
        let a = uuid_bytes("5a1e0000-0000-4000-8000-0000000000ff");
        assert_eq!(a, uuid_bytes("5A1E00000000400080000000000000FF"));
        assert_eq!(a[15], 0xff);
        assert_ne!(uuid_bytes("not a uuid"), uuid_bytes("not a uuid either"));
    }

    fn net_strategy() -> impl Strategy<Value = IpNet> {
        prop_oneof![
            // Few distinct top bits, so that networks nest and overlap.
            (0u32..4, any::<u32>(), 0u8..=32).prop_map(|(top, rest, len)| {
                let a = (top << 30) | (rest >> 2);
                IpNet::V4(Ipv4Net::new(std::net::Ipv4Addr::from_bits(a), len).unwrap())
            }),
            (0u128..4, any::<u128>(), 0u8..=128).prop_map(|(top, rest, len)| {
                let a = (top << 126) | (rest >> 2);
                IpNet::V6(Ipv6Net::new(std::net::Ipv6Addr::from_bits(a), len).unwrap())
            }),
        ]
    }

    fn ip_strategy() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            (0u32..4, any::<u32>()).prop_map(|(top, rest)| IpAddr::V4(
                std::net::Ipv4Addr::from_bits((top << 30) | (rest >> 2))
            )),
            (0u128..4, any::<u128>()).prop_map(|(top, rest)| IpAddr::V6(
                std::net::Ipv6Addr::from_bits((top << 126) | (rest >> 2))
            )),
        ]
    }

    proptest! {
        /// Against a brute force over every network and address: the exact
        /// hit, and the longest live network holding the IP.
        #[test]
        fn matches_like_brute_force(
            nets in proptest::collection::vec((net_strategy(), 0u32..10), 0..60),
            removed in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
            probes in proptest::collection::vec(ip_strategy(), 1..40),
            cutoff in 0u32..10,
            seal in any::<bool>(),
        ) {
            let mut ix = Index::default();
            let mut model: Vec<(IpNet, [u8; 16], u32)> = Vec::new();
            for (i, (net, seen)) in nets.iter().enumerate() {
                let u = uuid(i as u32);
                ix.insert(Key::of_value(&net.to_string()).next().unwrap(), Record::new(u, *seen));
                model.push((*net, u, *seen));
            }
            for r in removed {
                if model.is_empty() { break; }
                let (net, u, _) = model.remove(r.index(model.len()));
                prop_assert!(ix.remove(Key::of_value(&net.to_string()).next().unwrap(), &u));
            }
            if seal {
                ix.seal();
            }
            // Probe the networks' own addresses too, not only random ones.
            let probes = probes.into_iter().chain(model.iter().map(|(n, _, _)| n.addr()));
            for ip in probes {
                let got = ix.matches(ip, cutoff);
                prop_assert_eq!(ix.hit(ip, cutoff), got.is_hit());
                let holding = model.iter().filter(|(n, _, seen)| *seen >= cutoff && n.contains(&ip));
                let exact = holding.clone().any(|(n, _, _)| n.prefix_len() == n.max_prefix_len());
                let longest = holding
                    .filter(|(n, _, _)| n.prefix_len() < n.max_prefix_len())
                    .map(|(n, _, _)| n.trunc())
                    .max_by_key(|n| n.prefix_len());
                prop_assert_eq!(got.exact, exact, "exact for {}", ip);
                prop_assert_eq!(got.network, longest, "network for {}", ip);
            }
        }
    }
}
