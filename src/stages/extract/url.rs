//! URLs: found in any string by their scheme, refanged, normalised.
//!
//! Hand-written rather than through the `url` crate: that crate follows
//! the WHATWG parser, which percent-encodes paths and queries and resolves
//! `..`, so its text would differ from what MISP stores and from what the
//! alert shows. Matching needs the URL as written, with only the parts
//! that carry no meaning (scheme and host case, a default port, the
//! fragment) made canonical.

use super::domain;
use std::net::IpAddr;

/// A URL's host, as the observable it also is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A host name, canonical ([`domain::normalise`]) but not necessarily
    /// a real public domain.
    Name(Box<str>),
    Ip(IpAddr),
}

/// A normalised URL and its host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub text: Box<str>,
    pub host: Host,
}

/// One URL found in a string: where it starts, and the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub start: usize,
    pub url: Url,
}

const SCHEMES: &[(&str, &str)] = &[
    ("https", "https"),
    ("http", "http"),
    ("ftp", "ftp"),
    ("hxxps", "https"),
    ("hxxp", "http"),
];

fn ends_token(c: char) -> bool {
    c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '|' | '`')
}

static SCHEME_END: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"://"));

/// Whether `s` has a `://` at all: most strings have none. A search for
/// the colon (one SIMD `memchr`, cheaper to start than a substring
/// search), then a look at what follows each.
pub fn may_hold_one(s: &str, first_colon: Option<usize>) -> bool {
    let b = s.as_bytes();
    let Some(first) = first_colon else {
        return false;
    };
    b[first + 1..].starts_with(b"//")
        || memchr::memchr_iter(b':', &b[first + 1..]).any(|i| b[first + 2 + i..].starts_with(b"//"))
}

/// Where the URL token that has its `://` at `from` ends: by bytes, as
/// every terminator but Unicode whitespace is ASCII (a non-ASCII byte is
/// looked at as the char it starts).
fn token_end(s: &str, from: usize) -> usize {
    let b = s.as_bytes();
    let mut i = from;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii() {
            if ends_token(char::from(c)) {
                return i;
            }
            i += 1;
        } else {
            let ch = s[i..].chars().next().expect("i is at a char boundary");
            if ch.is_whitespace() {
                return i;
            }
            i += ch.len_utf8();
        }
    }
    b.len()
}

/// Appends every URL of `s` to `out`, in order of position.
pub fn scan(s: &str, out: &mut Vec<Found>) {
    let b = s.as_bytes();
    let mut from = 0;
    for at in SCHEME_END.find_iter(b) {
        if at < from {
            continue;
        }
        let Some(start) = SCHEMES.iter().find_map(|(written, _)| {
            let start = at.checked_sub(written.len())?;
            let ok = b[start..at].eq_ignore_ascii_case(written.as_bytes())
                && !start
                    .checked_sub(1)
                    .is_some_and(|p| b[p].is_ascii_alphanumeric());
            ok.then_some(start)
        }) else {
            continue;
        };
        let end = token_end(s, at);
        from = end;
        if let Some(url) = normalise(&s[start..end]) {
            out.push(Found { start, url });
        }
    }
}

/// The URL a token stands for: defanging undone (`hxxp`, `[.]`, `(.)`),
/// trailing punctuation that belongs to the sentence dropped, then
/// normalised: scheme and host lowercase, an internationalised host in
/// punycode, a default port and the fragment dropped, userinfo, path and
/// query kept as written. `None` when it has no usable host.
pub fn normalise(token: &str) -> Option<Url> {
    let refanged;
    let defanged = memchr::memchr2_iter(b'[', b'(', token.as_bytes()).any(|i| {
        token.as_bytes()[i + 1..].starts_with(b".]") || token.as_bytes()[i + 1..].starts_with(b".)")
    });
    let token = if defanged {
        refanged = token.replace("[.]", ".").replace("(.)", ".");
        refanged.as_str()
    } else {
        token
    };
    let token = trim_trailing(token);
    let sep = SCHEME_END.find(token.as_bytes())?;
    let (written, rest) = (&token[..sep], &token[sep + 3..]);
    let scheme = SCHEMES
        .iter()
        .find(|(w, _)| w.eq_ignore_ascii_case(written))
        .map(|(_, s)| *s)?;
    let rest = memchr::memchr(b'#', rest.as_bytes()).map_or(rest, |at| &rest[..at]);
    let authority_end = memchr::memchr2(b'/', b'?', rest.as_bytes()).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let (userinfo, host_port) = match memchr::memrchr(b'@', authority.as_bytes()) {
        Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
        None => (None, authority),
    };
    let (host_text, port) = split_port(host_port)?;
    let host = if let Some(v6) = host_text
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
    {
        Host::Ip(IpAddr::V6(v6.parse().ok()?))
    } else if let Ok(v4) = host_text.parse::<std::net::Ipv4Addr>() {
        Host::Ip(IpAddr::V4(v4))
    } else {
        Host::Name(domain::normalise(host_text)?)
    };
    let default_port = match scheme {
        "http" => 80,
        "https" => 443,
        _ => 21,
    };
    let mut text = String::with_capacity(token.len());
    text.push_str(scheme);
    text.push_str("://");
    if let Some(u) = userinfo {
        text.push_str(u);
        text.push('@');
    }
    match &host {
        Host::Name(n) => text.push_str(n),
        Host::Ip(IpAddr::V6(v6)) => {
            text.push('[');
            text.push_str(&v6.to_string());
            text.push(']');
        }
        Host::Ip(ip) => text.push_str(&ip.to_string()),
    }
    if let Some(p) = port.filter(|p| *p != default_port) {
        use std::fmt::Write;
        let _ = write!(text, ":{p}");
    }
    text.push_str(tail);
    Some(Url {
        text: text.into(),
        host: match host {
            Host::Ip(ip) => Host::Ip(super::canonical(ip)),
            other => other,
        },
    })
}

/// The host and the port of an authority's `host[:port]`. `None` for a
/// port that is not a number.
fn split_port(host_port: &str) -> Option<(&str, Option<u16>)> {
    let colon = if host_port.starts_with('[') {
        host_port
            .find(']')
            .map(|close| close + 1)
            .filter(|&c| c < host_port.len())
    } else {
        host_port.rfind(':')
    };
    let Some(colon) = colon else {
        return Some((host_port, None));
    };
    if host_port.as_bytes()[colon] != b':' {
        return None;
    }
    let digits = &host_port[colon + 1..];
    if digits.is_empty() {
        return Some((&host_port[..colon], None));
    }
    Some((&host_port[..colon], Some(digits.parse().ok()?)))
}

/// Drops what a sentence adds after a URL: `.`, `,`, `;`, `:`, `!`, `?`,
/// and a `)` or `]` without its opener inside the URL.
fn trim_trailing(mut t: &str) -> &str {
    loop {
        let Some(last) = t.chars().next_back() else {
            return t;
        };
        let drop = match last {
            '.' | ',' | ';' | ':' | '!' | '?' => true,
            ')' => t.matches('(').count() < t.matches(')').count(),
            ']' => t.matches('[').count() < t.matches(']').count(),
            _ => false,
        };
        if !drop {
            return t;
        }
        t = &t[..t.len() - last.len_utf8()];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(s: &str) -> Vec<String> {
        let mut out = Vec::new();
        scan(s, &mut out);
        out.into_iter().map(|f| f.url.text.into()).collect()
    }

    #[test]
    fn table() {
        let cases: &[(&str, &[&str])] = &[
            (
                "GET http://evil.com/a.sh HTTP/1.1",
                &["http://evil.com/a.sh"],
            ),
            (
                "see https://Evil.COM:443/Path?Q=1#frag.",
                &["https://evil.com/Path?Q=1"],
            ),
            ("HTTP://EVIL.COM:80/x", &["http://evil.com/x"]),
            ("http://evil.com:8080/x", &["http://evil.com:8080/x"]),
            (
                "ftp://files.example.net:21/pub",
                &["ftp://files.example.net/pub"],
            ),
            ("hxxp://evil[.]com/payload", &["http://evil.com/payload"]),
            (
                "hxxps://bad(.)example(.)org/x",
                &["https://bad.example.org/x"],
            ),
            ("(see http://evil.com/x)", &["http://evil.com/x"]),
            (
                "http://en.wikipedia.org/wiki/Foo_(bar)",
                &["http://en.wikipedia.org/wiki/Foo_(bar)"],
            ),
            ("[http://evil.com/x]", &["http://evil.com/x"]),
            (
                "a http://evil.com/x, b https://good.org/y; c",
                &["http://evil.com/x", "https://good.org/y"],
            ),
            ("url=\"http://evil.com/q\"", &["http://evil.com/q"]),
            ("<http://evil.com/>", &["http://evil.com/"]),
            ("x|http://evil.com/a|y", &["http://evil.com/a"]),
            ("`http://evil.com/a`", &["http://evil.com/a"]),
            (
                "http://accounts.google.com@login-verify.top/s",
                &["http://accounts.google.com@login-verify.top/s"],
            ),
            ("http://user:pw@Evil.com/x", &["http://user:pw@evil.com/x"]),
            (
                "http://[2001:DB8::1]:443/x",
                &["http://[2001:db8::1]:443/x"],
            ),
            ("https://[2001:db8::1]:443/x", &["https://[2001:db8::1]/x"]),
            ("http://bücher.de/x", &["http://xn--bcher-kva.de/x"]),
            ("http://10.0.0.5/x", &["http://10.0.0.5/x"]),
            (
                "http://wpad.corp.local/wpad.dat",
                &["http://wpad.corp.local/wpad.dat"],
            ),
            ("mailto:x@y.com file:///etc/passwd", &[]),
            ("xhttp://evil.com/", &[]),
            ("http://", &[]),
            ("http://$HOST/x", &[]),
            ("http://evil.com:abc/x", &[]),
        ];
        for (input, want) in cases {
            assert_eq!(urls(input), *want, "input: {input:?}");
        }
    }

    #[test]
    fn the_host_follows_the_last_at() {
        let u = normalise("http://accounts.google.com@login-verify.top/s").unwrap();
        assert_eq!(u.host, Host::Name("login-verify.top".into()));
        let ip = normalise("hxxp://91[.]240[.]118[.]50/8.sh").unwrap();
        assert_eq!(ip.host, Host::Ip("91.240.118.50".parse().unwrap()));
        assert_eq!(&*ip.text, "http://91.240.118.50/8.sh");
    }
}
