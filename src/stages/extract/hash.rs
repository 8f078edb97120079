//! File hashes: only from fields that name them, never from free text
//! (commit ids, session ids and GUIDs without dashes are hex too).

use crate::observable::{Kind, Observable};

/// The hashes of empty input: a file that is empty says nothing.
const EMPTY_INPUT: &[&str] = &[
    "d41d8cd98f00b204e9800998ecf8427e",
    "da39a3ee5e6b4b0d3255bfef95601890afd80709",
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
];

/// What a key says about its value's hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashKey {
    /// The key names one hash kind (`sha256`, `fileHashSha256`,
    /// `TargetSha1`): the value is that hash or nothing.
    One(Kind),
    /// Sysmon's `Hashes` (`Hash` in Sysmon 15): `ALG=hex,ALG=hex,…`.
    Sysmon,
}

/// The hash kind a key names: lowercased with `_` and `-` removed, it is
/// or ends with `md5`, `sha1` or `sha256`; or it is `hashes` or `hash`.
pub fn key(normalised_key: &[u8]) -> Option<HashKey> {
    if normalised_key == b"hashes" || normalised_key == b"hash" {
        return Some(HashKey::Sysmon);
    }
    [
        (&b"sha256"[..], Kind::Sha256),
        (b"sha1", Kind::Sha1),
        (b"md5", Kind::Md5),
    ]
    .into_iter()
    .find(|(suffix, _)| normalised_key.ends_with(suffix))
    .map(|(_, k)| HashKey::One(k))
}

/// `value` as a hash of `kind`: exactly its number of hex digits (either
/// case), lowercased. `None` for the hashes of empty input and all-zero
/// values.
pub fn of(kind: Kind, value: &str) -> Option<Observable> {
    let len = kind.hex_len()?;
    if value.len() != len || !value.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let lower = value.to_ascii_lowercase();
    if lower.bytes().all(|c| c == b'0') || EMPTY_INPUT.contains(&lower.as_str()) {
        return None;
    }
    Observable::named(kind, lower.into())
}

/// The `MD5`, `SHA1` and `SHA256` parts of a Sysmon `Hashes` value, in
/// their order. `IMPHASH`, `SHA384` and anything else are not file hashes
/// of our kinds.
pub fn sysmon(value: &str) -> impl Iterator<Item = Observable> + '_ {
    value.split(',').filter_map(|part| {
        let (alg, hex) = part.split_once('=')?;
        let kind = match alg.trim().to_ascii_lowercase().as_str() {
            "md5" => Kind::Md5,
            "sha1" => Kind::Sha1,
            "sha256" => Kind::Sha256,
            _ => return None,
        };
        of(kind, hex.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(k: &str) -> Vec<u8> {
        k.bytes()
            .filter(|c| *c != b'_' && *c != b'-')
            .map(|c| c.to_ascii_lowercase())
            .collect()
    }

    #[test]
    fn keys() {
        let cases: &[(&str, Option<HashKey>)] = &[
            ("sha256", Some(HashKey::One(Kind::Sha256))),
            ("SHA256", Some(HashKey::One(Kind::Sha256))),
            ("fileHashSha256", Some(HashKey::One(Kind::Sha256))),
            ("TargetSha1", Some(HashKey::One(Kind::Sha1))),
            ("md5", Some(HashKey::One(Kind::Md5))),
            ("file_md5", Some(HashKey::One(Kind::Md5))),
            ("Hashes", Some(HashKey::Sysmon)),
            ("Hash", Some(HashKey::Sysmon)),
            ("md5sum", None),
            ("checksum", None),
            ("hashValue", None),
            ("imphash", None),
            ("md5_after", None),
            ("sha1_before", None),
        ];
        for (k, want) in cases {
            assert_eq!(key(&norm(k)), *want, "key {k:?}");
        }
    }

    #[test]
    fn values() {
        let md5 = "5D41402ABC4B2A76B9719D911017C592";
        assert_eq!(
            of(Kind::Md5, md5),
            Some(Observable::Md5(md5.to_ascii_lowercase().into()))
        );
        assert_eq!(of(Kind::Sha1, md5), None, "an md5 is no sha1");
        assert_eq!(of(Kind::Md5, "d41d8cd98f00b204e9800998ecf8427e"), None);
        assert_eq!(
            of(Kind::Sha1, "da39a3ee5e6b4b0d3255bfef95601890afd80709"),
            None
        );
        assert_eq!(
            of(
                Kind::Sha256,
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
            ),
            None
        );
        assert_eq!(of(Kind::Md5, &"0".repeat(32)), None);
        assert_eq!(of(Kind::Md5, "5d41402abc4b2a76b9719d911017c59g"), None);
        assert_eq!(of(Kind::Md5, " 5d41402abc4b2a76b9719d911017c592"), None);
    }

    #[test]
    fn sysmon_hashes() {
        let v = "SHA1=A94A8FE5CCB19BA61C4C0873D391E987982FBBD3,MD5=5D41402ABC4B2A76B9719D911017C592,SHA256=2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824,IMPHASH=00000000000000000000000000000000";
        let got: Vec<String> = sysmon(v).map(|h| h.to_string()).collect();
        assert_eq!(
            got,
            [
                "a94a8fe5ccb19ba61c4c0873d391e987982fbbd3",
                "5d41402abc4b2a76b9719d911017c592",
                "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
            ]
        );
        let none: Vec<Observable> =
            sysmon("IMPHASH=F34D5F2D4577ED6D9CEEC516C1F5A744,SHA384=ab").collect();
        assert!(none.is_empty());
    }
}
