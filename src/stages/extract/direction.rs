//! Direction of an IP occurrence: from the field's key, else from the text
//! right before the token.

use crate::observable::Direction;

/// Keys that only say "this is an address", so the parent key carries the
/// meaning (`source.ip`, `remoteIpDetails.ipAddressV4`).
pub fn is_generic_key(key: &str) -> bool {
    let mut norm = [0u8; 16];
    let mut n = 0;
    for c in key.bytes() {
        if c == b'_' || c == b'-' {
            continue;
        }
        if n == norm.len() {
            return false;
        }
        norm[n] = c.to_ascii_lowercase();
        n += 1;
    }
    matches!(
        &norm[..n],
        b"ip"
            | b"address"
            | b"addr"
            | b"ipaddress"
            | b"ipv4"
            | b"ipv6"
            | b"ipaddressv4"
            | b"ipaddressv6"
            | b"host"
            | b"h"
    )
}

/// Direction a key names, by its words (split on `_`, `-`, `.` and camelCase).
pub fn from_key(key: &str) -> Direction {
    let mut source = false;
    let mut destination = false;
    for_each_word(key, |w| {
        // Bytes, not chars: keys can hold any Unicode (found by fuzzing).
        let starts = |p: &str| {
            w.len() >= p.len() && w.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
        };
        let is = |p: &str| w.eq_ignore_ascii_case(p);
        if ["src", "source", "client", "caller", "attacker"]
            .iter()
            .any(|p| starts(p))
            || is("orig")
            || is("from")
        {
            source = true;
        }
        if ["dst", "dest", "target", "server"]
            .iter()
            .any(|p| starts(p))
            || is("resp")
            || is("to")
        {
            destination = true;
        }
    });
    match (source, destination) {
        (true, false) => Direction::Source,
        (false, true) => Direction::Destination,
        _ => Direction::Unknown,
    }
}

/// Calls `f` with each word of a key. camelCase splits before an upper-case
/// letter that follows a lower-case letter or digit, and before the last
/// upper-case letter of an acronym that is followed by lower case
/// (`sourceIPAddress` → source, IP, Address).
fn for_each_word(key: &str, mut f: impl FnMut(&str)) {
    let b = key.as_bytes();
    let mut start = 0;
    for i in 0..=b.len() {
        let boundary = if i == b.len() {
            true
        } else {
            let c = b[i];
            if matches!(c, b'_' | b'-' | b'.') {
                if i > start {
                    f(&key[start..i]);
                }
                start = i + 1;
                continue;
            }
            i > start
                && c.is_ascii_uppercase()
                && (b[i - 1].is_ascii_lowercase()
                    || b[i - 1].is_ascii_digit()
                    || (b[i - 1].is_ascii_uppercase()
                        && b.get(i + 1).is_some_and(u8::is_ascii_lowercase)))
        };
        if boundary && i > start {
            f(&key[start..i]);
            start = i;
        }
    }
}

/// Direction from free text: the whole word `from` or `to` and one space
/// right before the token (or its opening bracket).
pub fn from_text(s: &str, token_start: usize) -> Direction {
    let b = s.as_bytes();
    let word_before = |word: &[u8]| -> bool {
        let need = word.len() + 1;
        if token_start < need || b[token_start - 1] != b' ' {
            return false;
        }
        let w = token_start - need;
        if !b[w..token_start - 1].eq_ignore_ascii_case(word) {
            return false;
        }
        // Whole word: `into 1.2.3.4` is not `to`.
        !s[..w]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_')
    };
    if word_before(b"from") {
        Direction::Source
    } else if word_before(b"to") {
        Direction::Destination
    } else {
        Direction::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(k: &str) -> Vec<String> {
        let mut v = Vec::new();
        for_each_word(k, |w| v.push(w.to_string()));
        v
    }

    #[test]
    fn splits_words() {
        assert_eq!(words("sourceIPAddress"), ["source", "IP", "Address"]);
        assert_eq!(words("remoteIpDetails"), ["remote", "Ip", "Details"]);
        assert_eq!(words("id.orig_h"), ["id", "orig", "h"]);
        assert_eq!(words("ipAddressV4"), ["ip", "Address", "V4"]);
        assert_eq!(words("src-ip"), ["src", "ip"]);
        assert_eq!(words("ClientIP"), ["Client", "IP"]);
    }

    #[test]
    fn key_directions() {
        use Direction::*;
        let cases = [
            ("srcip", Source),
            ("dstip", Destination),
            ("src_ip", Source),
            ("dest_ip", Destination),
            ("sourceIp", Source),
            ("destinationIp", Destination),
            ("ClientIP", Source),
            ("ActorIpAddress", Unknown),
            ("OriginIP", Unknown),
            ("orig_h", Source),
            ("resp_h", Destination),
            ("callerIp", Source),
            ("attacker_ip", Source),
            ("targetIp", Destination),
            ("server_addr", Destination),
            ("from", Source),
            ("to", Destination),
            ("src_to_dst", Unknown),
            ("publicIp", Unknown),
            ("sourceIPAddress", Source),
            ("ipAddress", Unknown),
            ("_\u{2e0}\u{323}8escription", Unknown),
            ("sr\u{e9}ip", Unknown),
            ("\u{e9}", Unknown),
        ];
        for (k, want) in cases {
            assert_eq!(from_key(k), want, "key {k}");
        }
    }

    #[test]
    fn generic_keys() {
        for k in [
            "ip",
            "IP",
            "address",
            "ip_address",
            "ipAddressV4",
            "host",
            "h",
            "ip-v6",
        ] {
            assert!(is_generic_key(k), "{k}");
        }
        for k in ["srcip", "hostname", "publicIp"] {
            assert!(!is_generic_key(k), "{k}");
        }
    }

    #[test]
    fn text_directions() {
        use Direction::*;
        let t = |s: &str| from_text(s, s.find(|c: char| c.is_ascii_digit() || c == '[').unwrap());
        assert_eq!(t("Failed password for root from 1.2.3.4 port 22"), Source);
        assert_eq!(t("FROM 1.2.3.4"), Source);
        assert_eq!(t("connect to 1.2.3.4"), Destination);
        assert_eq!(t("connect to [2001:db8::1]:80"), Destination);
        assert_eq!(t("into 1.2.3.4"), Unknown);
        assert_eq!(t("onto 1.2.3.4"), Unknown);
        assert_eq!(t("from  1.2.3.4"), Unknown);
        assert_eq!(t("host 1.2.3.4"), Unknown);
        assert_eq!(t("x_from 1.2.3.4"), Unknown);
        assert_eq!(t("(from 1.2.3.4"), Source);
    }
}
