//! Networks of one address family, for longest-prefix match: one hash
//! map per prefix length present, probed from the longest length down.
//!
//! Why not a trie (`prefix-trie`'s tree bitmap was the first version):
//! with 100 000 networks among a million indicators, its lookup walked
//! several nodes, each a cache miss on random addresses, about 130 ns
//! per network hit (benches/mirror.rs). MISP's networks come in a handful
//! of lengths (/24, /16, /22, /48 ...), so a lookup here is a few probes
//! of small maps that stay in cache. The worst case, every length
//! present, is 33 probes for IPv4; the property test in `index` holds
//! this to a brute force over random networks.

use std::collections::HashMap;
use std::hash::Hash;

type Fast = foldhash::fast::FixedState;

/// An address as an integer, masked to a prefix.
pub trait Bits: Copy + Eq + Hash {
    const WIDTH: u8;
    fn masked(self, len: u8) -> Self;
    /// The top 16 bits.
    fn top(self) -> usize;
}

impl Bits for u32 {
    const WIDTH: u8 = 32;
    fn top(self) -> usize {
        (self >> 16) as usize
    }
    fn masked(self, len: u8) -> u32 {
        match len {
            0 => 0,
            l => self & (u32::MAX << (32 - u32::from(l))),
        }
    }
}

impl Bits for u128 {
    const WIDTH: u8 = 128;
    fn top(self) -> usize {
        (self >> 112) as usize
    }
    fn masked(self, len: u8) -> u128 {
        match len {
            0 => 0,
            l => self & (u128::MAX << (128 - u32::from(l))),
        }
    }
}

/// Invariant: `tables` is sorted by length, longest first, and holds no
/// empty map; keys are masked to their table's length. `tops` counts, per
/// value of an address's top 16 bits, the networks that hold addresses
/// with those bits: most addresses (every miss, on most alerts) are
/// answered by one look at it.
#[derive(Clone)]
pub struct Prefixes<A> {
    tables: Vec<(u8, HashMap<A, u32, Fast>)>,
    tops: Box<[u32]>,
}

impl<A> Default for Prefixes<A> {
    fn default() -> Self {
        Prefixes {
            tables: Vec::new(),
            tops: vec![0; 1 << 16].into_boxed_slice(),
        }
    }
}

impl<A: Bits> Prefixes<A> {
    pub fn get(&self, net: A, len: u8) -> Option<u32> {
        self.tables
            .iter()
            .find(|(l, _)| *l == len)
            .and_then(|(_, t)| t.get(&net.masked(len)).copied())
    }

    pub fn insert(&mut self, net: A, len: u8, value: u32) {
        let at = match self.tables.iter().position(|(l, _)| *l <= len) {
            Some(i) if self.tables[i].0 == len => i,
            Some(i) => {
                self.tables.insert(i, (len, HashMap::default()));
                i
            }
            None => {
                self.tables.push((len, HashMap::default()));
                self.tables.len() - 1
            }
        };
        if self.tables[at].1.insert(net.masked(len), value).is_none() {
            self.count_tops(net, len, true);
        }
    }

    pub fn remove(&mut self, net: A, len: u8) {
        if let Some(i) = self.tables.iter().position(|(l, _)| *l == len) {
            if self.tables[i].1.remove(&net.masked(len)).is_some() {
                self.count_tops(net, len, false);
            }
            if self.tables[i].1.is_empty() {
                self.tables.remove(i);
            }
        }
    }

    /// Counts a network in (or out of) every top-16-bits value it spans.
    fn count_tops(&mut self, net: A, len: u8, add: bool) {
        let first = net.masked(len).top();
        let span = if len >= 16 { 1 } else { 1usize << (16 - len) };
        for t in &mut self.tops[first..first + span] {
            *t = if add { *t + 1 } else { t.saturating_sub(1) };
        }
    }

    /// The longest prefix holding `addr` whose value `keep` accepts, as
    /// (network, length, value).
    pub fn longest(&self, addr: A, keep: impl Fn(u32) -> bool) -> Option<(A, u8)> {
        if self.tops[addr.top()] == 0 {
            return None;
        }
        self.tables.iter().find_map(|(len, t)| {
            let net = addr.masked(*len);
            t.get(&net).filter(|v| keep(**v)).map(|_| (net, *len))
        })
    }

    pub fn memory_bytes(&self) -> usize {
        self.tables
            .iter()
            .map(|(_, t)| t.capacity() * (std::mem::size_of::<A>() + 5))
            .sum::<usize>()
            + self.tops.len() * 4
    }
}
