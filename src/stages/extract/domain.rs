//! Domains: which names are real public domains, and their canonical text.
//!
//! "Real" is decided by the Public Suffix List (the `psl` crate, ICANN and
//! private sections, compiled in), never by a hand-written list of TLDs:
//! free text and host fields are full of names that look like domains
//! (`auth.log`, `config.php`, `wpad`, `dc01.corp.local`) and only the list
//! tells which end in a suffix anyone can register under.

/// Longest domain name, in bytes (RFC 1035 without the root's dot).
const MAX_NAME: usize = 253;
const MAX_LABEL: usize = 63;

/// The canonical text of a host name: lowercase ASCII, an internationalised
/// name converted to punycode (`idna`), one trailing dot dropped. `None`
/// when it is not a syntactically valid name (a character other than
/// letters, digits, `-` and `.`, an empty or overlong label, over 253
/// bytes). Says nothing about whether the name is public ([`is_real`]).
pub fn normalise(name: &str) -> Option<Box<str>> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return None;
    }
    let ascii: Box<str> = if name.is_ascii() {
        if !name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.')
        {
            return None;
        }
        name.to_ascii_lowercase().into()
    } else {
        let converted = idna::domain_to_ascii(name).ok()?;
        if !converted
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.')
        {
            return None;
        }
        converted.into()
    };
    let labels_ok = ascii
        .split('.')
        .all(|l| !l.is_empty() && l.len() <= MAX_LABEL);
    (labels_ok && ascii.len() <= MAX_NAME).then_some(ascii)
}

/// Whether a canonical name is a public domain: it ends in a suffix of
/// the Public Suffix List and has at least one label more than the ICANN
/// suffix under it, and it is not under `arpa` (reverse-lookup names:
/// `in-addr.arpa` is itself a listed suffix, `home.arpa` is not listed).
pub fn is_real(name: &str) -> bool {
    if name.rsplit('.').next() == Some("arpa")
        || name.bytes().all(|c| c.is_ascii_digit() || c == b'.')
    {
        return false;
    }
    let Some(suffix) = psl::suffix(name.as_bytes()) else {
        return false;
    };
    match suffix.typ() {
        // A private suffix (`github.io`) lies under an ICANN one (`io`)
        // and has a label more than it: a name ending in it qualifies.
        Some(psl::Type::Private) => true,
        Some(psl::Type::Icann) => suffix.as_bytes().len() < name.len(),
        // The list's implicit `*` rule: an unknown TLD (`corp`, `local`).
        None => false,
    }
}

/// The canonical text of `candidate` if it is a real public domain.
pub fn real(candidate: &str) -> Option<Box<str>> {
    normalise(candidate).filter(|d| is_real(d))
}

/// `name` and each parent of it that is still a real domain, longest
/// first: `a.b.evil.co.uk` → itself, `b.evil.co.uk`, `evil.co.uk`.
pub fn with_parents(name: &str) -> impl Iterator<Item = &str> {
    let registrable = psl::domain(name.as_bytes()).map_or(name.len(), |d| d.as_bytes().len());
    let mut rest = Some(name);
    std::iter::from_fn(move || {
        let current = rest?;
        rest = current
            .split_once('.')
            .map(|(_, parent)| parent)
            .filter(|p| p.len() >= registrable);
        Some(current)
    })
}

/// Whether `name` is `excluded` or under it (`www.example.org` is under
/// `example.org`).
pub fn is_under(name: &str, excluded: &str) -> bool {
    name == excluded
        || (name.len() > excluded.len()
            && name.ends_with(excluded)
            && name.as_bytes()[name.len() - excluded.len() - 1] == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_domains_and_traps() {
        let cases: &[(&str, Option<&str>)] = &[
            ("evil.com", Some("evil.com")),
            ("CDN.Evil.COM", Some("cdn.evil.com")),
            ("evil.com.", Some("evil.com")),
            ("login-verify.top", Some("login-verify.top")),
            ("bbc.co.uk", Some("bbc.co.uk")),
            ("user.github.io", Some("user.github.io")),
            ("bücher.de", Some("xn--bcher-kva.de")),
            ("xn--bcher-kva.de", Some("xn--bcher-kva.de")),
            ("auth.log", None),
            ("config.php", None),
            ("index.html", None),
            ("localhost", None),
            ("wpad", None),
            ("dc01.corp.local", None),
            ("router.lan", None),
            ("svc.internal", None),
            ("fs.corp", None),
            ("nas.home.arpa", None),
            ("17.85.215.91.in-addr.arpa", None),
            ("b.a.9.8.ip6.arpa", None),
            ("co.uk", None),
            ("com", None),
            ("1.2.3.4", None),
            ("evil_underscore.com", None),
            ("a..b.com", None),
            ("", None),
        ];
        for (input, want) in cases {
            assert_eq!(real(input).as_deref(), *want, "input: {input:?}");
        }
        let long_label = format!("{}.com", "a".repeat(64));
        assert_eq!(real(&long_label), None);
        let long_name = format!("{}com", "abcdefghi.".repeat(26));
        assert!(long_name.len() > 253);
        assert_eq!(real(&long_name), None);
    }

    #[test]
    fn parents_stop_at_the_registrable_domain() {
        let all: Vec<&str> = with_parents("a.b.evil.co.uk").collect();
        assert_eq!(all, ["a.b.evil.co.uk", "b.evil.co.uk", "evil.co.uk"]);
        assert_eq!(with_parents("evil.com").collect::<Vec<_>>(), ["evil.com"]);
    }

    #[test]
    fn under_is_by_whole_labels() {
        assert!(is_under("www.example.org", "example.org"));
        assert!(is_under("example.org", "example.org"));
        assert!(!is_under("badexample.org", "example.org"));
    }
}
