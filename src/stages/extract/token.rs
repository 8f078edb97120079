//! Finding IP tokens inside one string.
//!
//! The boundary rules come from real logs: each one exists because a looser
//! rule turns ordinary text into "IPs" (SNMP OIDs, `Chrome/120.0.0.0`,
//! Windows build numbers, Zeek's `Notice::ACTION_LOG`, MAC addresses) or
//! loses real ones. A hand-written scanner is used rather than a regex
//! because the rules look at neighbouring characters in ways a regex without
//! look-around cannot express, and because this runs on every string of
//! every alert.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One IP found in a string, with where it sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    /// The address as written (zone stripped), before any v4-mapped unwrapping.
    pub addr: IpAddr,
    /// Byte offset where the token starts (the opening `[` for a bracketed IPv6).
    pub start: usize,
}

/// Appends every IP token of `s` to `out`, in order of position.
pub fn scan(s: &str, out: &mut Vec<Token>) {
    scan_after_colon(s, memchr::memchr(b':', s.as_bytes()), out)
}

/// [`scan`], given where the string's first colon is (the caller has
/// looked for it already).
pub fn scan_after_colon(s: &str, first_colon: Option<usize>, out: &mut Vec<Token>) {
    let first = out.len();
    // An IPv6 token has at least two colons; most strings have none.
    let two_colons =
        first_colon.is_some_and(|c| memchr::memchr(b':', &s.as_bytes()[c + 1..]).is_some());
    let v6_spans = if two_colons {
        scan_v6(s, out)
    } else {
        Vec::new()
    };
    scan_v4(s, &v6_spans, out);
    if out.len() > first + 1 && !v6_spans.is_empty() {
        out[first..].sort_by_key(|t| t.start);
    }
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn char_before(s: &str, i: usize) -> Option<char> {
    s[..i].chars().next_back()
}

fn char_at(s: &str, i: usize) -> Option<char> {
    s.get(i..).and_then(|r| r.chars().next())
}

/// A CIDR suffix is `/`, a prefix length up to `max`, and then the end of the
/// string or a character that cannot continue a path or a word. `/8.sh` and
/// `/443` are therefore not CIDRs, `/24,` is.
fn is_cidr_suffix(s: &str, at: usize, max: u32) -> bool {
    let b = s.as_bytes();
    if b.get(at) != Some(&b'/') {
        return false;
    }
    let digits = b[at + 1..]
        .iter()
        .take_while(|c| c.is_ascii_digit())
        .count();
    if digits == 0 || digits > 3 {
        return false;
    }
    let n: u32 = s[at + 1..at + 1 + digits].parse().unwrap_or(u32::MAX);
    if n > max {
        return false;
    }
    match char_at(s, at + 1 + digits) {
        None => true,
        Some(c) => !(c.is_alphanumeric() || matches!(c, '.' | '/' | '-' | '_')),
    }
}

/// Parses one octet at `i`: 1–3 digits, no leading zero, at most 255.
fn octet(b: &[u8], i: usize) -> Option<(u8, usize)> {
    let n = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
    if n == 0 || n > 3 || (n > 1 && b[i] == b'0') {
        return None;
    }
    let v = b[i..i + n]
        .iter()
        .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
    u8::try_from(v).ok().map(|v| (v, i + n))
}

fn dotted_quad(b: &[u8], start: usize) -> Option<(Ipv4Addr, usize)> {
    let mut parts = [0u8; 4];
    let mut i = start;
    for (k, part) in parts.iter_mut().enumerate() {
        if k > 0 {
            if b.get(i) != Some(&b'.') {
                return None;
            }
            i += 1;
        }
        let (v, next) = octet(b, i)?;
        *part = v;
        i = next;
    }
    Some((Ipv4Addr::from(parts), i))
}

/// The runs of bytes satisfying `part` that contain a `sep` byte, each once,
/// as `[start, end)`, found by hopping between separators (SIMD `memchr`).
fn runs_around<'b>(
    b: &'b [u8],
    sep: u8,
    part: impl Fn(u8) -> bool + 'b,
) -> impl Iterator<Item = (usize, usize)> + 'b {
    let mut covered = 0;
    memchr::memchr_iter(sep, b).filter_map(move |at| {
        if at < covered {
            return None;
        }
        let mut start = at;
        while start > 0 && part(b[start - 1]) {
            start -= 1;
        }
        let mut end = at;
        while end < b.len() && part(b[end]) {
            end += 1;
        }
        covered = end;
        Some((start, end))
    })
}

fn is_v4_run_byte(c: u8) -> bool {
    c.is_ascii_digit() || c == b'.'
}

/// IPv4 tokens. A dotted quad has three dots, so the scan hops between
/// dots (SIMD `memchr`) and looks at each run of digits and dots once. Only
/// the start of a run can start a token: every later position follows a
/// digit or a `.`.
fn scan_v4(s: &str, v6_spans: &[(usize, usize)], out: &mut Vec<Token>) {
    let b = s.as_bytes();
    if memchr::memchr_iter(b'.', b).nth(2).is_none() {
        return;
    }
    for (i, _) in runs_around(b, b'.', is_v4_run_byte) {
        if !b[i].is_ascii_digit() {
            continue;
        }
        let start_ok = match b.get(i.wrapping_sub(1)) {
            None => true,
            Some(b'/') => i >= 3 && &b[i - 3..i] == b"://",
            Some(&c) if c.is_ascii() => !(c.is_ascii_alphanumeric() || c == b'_'),
            Some(_) => !char_before(s, i).is_some_and(is_word_char),
        };
        if !start_ok {
            continue;
        }
        let Some((addr, end)) = dotted_quad(b, i) else {
            continue;
        };
        let next_ok = match b.get(end) {
            Some(c) if c.is_ascii_digit() => false,
            Some(b'.') => !b.get(end + 1).is_some_and(u8::is_ascii_digit),
            _ => true,
        };
        let inside_v6 = v6_spans.iter().any(|&(a, z)| i >= a && i < z);
        if next_ok && !inside_v6 && !is_cidr_suffix(s, end, 32) && !begins_reverse_name(b, end) {
            out.push(Token {
                addr: IpAddr::V4(addr),
                start: i,
            });
        }
    }
}

/// Whether the quad that ends at `end` begins a reverse-lookup name
/// (`17.85.215.91.in-addr.arpa`): that is the address reversed, another
/// and unrelated IP.
fn begins_reverse_name(b: &[u8], end: usize) -> bool {
    const SUFFIX: &[u8] = b".in-addr.arpa";
    b.get(end..end + SUFFIX.len())
        .is_some_and(|t| t.eq_ignore_ascii_case(SUFFIX))
}

fn is_v6_run_byte(c: u8) -> bool {
    c.is_ascii_hexdigit() || c == b':' || c == b'.'
}

/// Finds IPv6 tokens and returns the byte spans they cover, so that the IPv4
/// scan does not report the embedded tail of `::ffff:1.2.3.4` twice. Only
/// runs around a `:` can be candidates, so the scan hops between colons.
fn scan_v6(s: &str, out: &mut Vec<Token>) -> Vec<(usize, usize)> {
    let b = s.as_bytes();
    let mut spans = Vec::new();
    for (i, run_end) in runs_around(b, b':', is_v6_run_byte) {
        let mut end = run_end;
        while end > i && b[end - 1] == b'.' {
            end -= 1;
        }
        let candidate = &s[i..end];
        if memchr::memchr_iter(b':', candidate.as_bytes())
            .nth(1)
            .is_none()
        {
            continue;
        }
        let before_ok = !char_before(s, i).is_some_and(is_word_char);
        let after = char_at(s, end);
        let after_ok = !after.is_some_and(|c| is_word_char(c) || c == ':');
        if !(before_ok && after_ok) {
            continue;
        }
        let Ok(addr) = candidate.parse::<Ipv6Addr>() else {
            continue;
        };
        let mut tail = end;
        if after == Some('%') {
            // A zone id (`fe80::1%eth0`) belongs to the token.
            tail += 1 + s[end + 1..]
                .bytes()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
                .count();
        }
        if !is_cidr_suffix(s, tail, 128) {
            let start = if i > 0 && b[i - 1] == b'[' { i - 1 } else { i };
            out.push(Token {
                addr: IpAddr::V6(addr),
                start,
            });
        }
        spans.push((i, end));
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(s: &str) -> Vec<String> {
        let mut out = Vec::new();
        scan(s, &mut out);
        out.iter().map(|t| t.addr.to_string()).collect()
    }

    #[test]
    fn table() {
        let cases: &[(&str, &[&str])] = &[
            (
                "Failed password from 49.88.112.73 port 22",
                &["49.88.112.73"],
            ),
            ("8.8.8.8", &["8.8.8.8"]),
            ("from 8.8.8.8.", &["8.8.8.8"]),
            ("1.3.6.1.4.1.311", &[]),
            ("10.0.19041.1", &[]),
            ("1.2.3.4.5", &[]),
            ("v1.2.3.4", &[]),
            ("x_1.2.3.4", &[]),
            ("Chrome/120.0.0.0 Safari", &[]),
            ("GET http://91.240.118.50/8.sh", &["91.240.118.50"]),
            ("outside:203.0.113.9/443 to inside", &["203.0.113.9"]),
            ("blocked 185.220.101.0/24, ok", &[]),
            ("blocked 185.220.101.0/24", &[]),
            ("host 1.2.3.4:8080 up", &["1.2.3.4"]),
            ("01.2.3.4", &[]),
            ("256.1.1.1", &[]),
            ("1.2.3.256", &[]),
            ("0.0.0.0", &["0.0.0.0"]),
            ("a 1.2.3.4567 b", &[]),
            ("Notice::ACTION_LOG", &[]),
            ("SNMPv2-MIB::sysDescr.0", &[]),
            ("[Convert]::FromBase64String('AA')", &[]),
            ("mac 00:1a:2b:3c:4d:5e", &[]),
            ("at 12:34:56 ok", &[]),
            ("conn [2001:4860:4860::8888]:443", &["2001:4860:4860::8888"]),
            ("fe80::1%eth0 link", &["fe80::1"]),
            ("2001:DB8:0:0:0:0:0:1", &["2001:db8::1"]),
            (
                "from 2a00:1450:4001:80b::200e.",
                &["2a00:1450:4001:80b::200e"],
            ),
            ("net 2001:db8::/32 ok", &[]),
            ("::ffff:185.220.101.5", &["::ffff:185.220.101.5"]),
            ("x2001:db8::1", &[]),
            ("2001:db8::1g", &[]),
            ("a=1.2.3.4,b=5.6.7.8", &["1.2.3.4", "5.6.7.8"]),
            ("src=1.2.3.4 dst=2001:db8::2", &["1.2.3.4", "2001:db8::2"]),
            ("é1.2.3.4", &[]),
            ("«1.2.3.4»", &["1.2.3.4"]),
            ("17.85.215.91.in-addr.arpa", &[]),
            ("PTR 17.85.215.91.IN-ADDR.ARPA. from 8.8.8.8", &["8.8.8.8"]),
            ("host 91.215.85.17.example.com", &["91.215.85.17"]),
        ];
        for (input, want) in cases {
            assert_eq!(ips(input), *want, "input: {input:?}");
        }
    }

    #[test]
    fn bracketed_v6_starts_at_bracket() {
        let mut out = Vec::new();
        scan("to [2001:db8::1]:443", &mut out);
        assert_eq!(out[0].start, 3);
    }
}
