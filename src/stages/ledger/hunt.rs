//! Retro-hunting: which ledger entries a new indicator matches, and which
//! of their alerts were already hunted for it.
//!
//! Pure but for the store it reads. An indicator matches the ledger as it
//! would match a live alert: each half of its value exactly (by the same
//! canonical form), a network by the range of its addresses, and a
//! `domain` (with `misp.match_subdomains`) by the prefix its subdomains'
//! keys share.

use super::{domain_prefix, key_of};
use crate::observable::Observable;
use md5::{Digest, Md5};
use std::sync::Arc;

/// An attribute a sync brought that the mirror did not hold before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Indicator {
    pub server: Arc<str>,
    pub uuid: String,
    pub kind: String,
    pub value: String,
    /// MISP's attribute timestamp (Unix seconds).
    pub timestamp: i64,
}

/// What a sync found: the attributes new to the mirror, and when.
#[derive(Debug, Clone)]
pub struct Found {
    pub server: Arc<str>,
    pub indicators: Vec<Indicator>,
    pub at: chrono::DateTime<chrono::Utc>,
}

/// A range of ledger keys, both ends included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub low: Vec<u8>,
    pub high: Vec<u8>,
}

impl Probe {
    fn exact(key: Vec<u8>) -> Probe {
        Probe {
            low: key.clone(),
            high: key,
        }
    }
}

/// What to read in the ledger for an attribute of `misp_type` holding
/// `value`.
pub fn probes(misp_type: &str, value: &str, subdomains: bool) -> Vec<Probe> {
    let mut out = Vec::new();
    let halves: Vec<&str> = if misp_type.contains('|') {
        value.splitn(2, '|').collect()
    } else {
        vec![value]
    };
    for (i, half) in halves.into_iter().enumerate() {
        let half = half.trim();
        if let Some(net) = half
            .contains('/')
            .then(|| half.parse::<ipnet::IpNet>().ok())
            .flatten()
        {
            let net = net.trunc();
            out.push(Probe {
                low: key_of(&Observable::Ip(net.network())),
                high: key_of(&Observable::Ip(net.broadcast())),
            });
            continue;
        }
        let Some(o) = Observable::from_misp(misp_type, half) else {
            continue;
        };
        match &o {
            Observable::Domain(d)
                if subdomains && crate::lookup::covers_subdomains(misp_type) && i == 0 =>
            {
                let low = domain_prefix(d);
                let mut high = low.clone();
                high.push(0xff);
                out.push(Probe { low, high });
            }
            _ => out.push(Probe::exact(key_of(&o))),
        }
    }
    out
}

/// The key a (value, alert) is hunted once under, whichever indicators
/// and however many MISP events name the value.
pub fn hunt_key(value: &str, alert_id: &str) -> [u8; 16] {
    let mut h = Md5::new();
    for part in [value, alert_id] {
        h.update(part.as_bytes());
        h.update(b"|");
    }
    h.finalize().into()
}

/// The alert id a reference carries.
pub fn alert_id_of(reference: &str) -> String {
    serde_json::from_str::<serde_json::Value>(reference)
        .ok()
        .and_then(|v| v["alert"]["id"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(s: &str) -> Observable {
        s.parse().unwrap()
    }

    #[test]
    fn each_kind_of_attribute_probes_what_it_would_match_live() {
        let ip = probes("ip-dst", "185.220.101.4", true);
        assert_eq!(ip, [Probe::exact(key_of(&obs("185.220.101.4")))]);
        let net = probes("ip-src", "203.0.113.9/24", true);
        assert_eq!(net[0].low, key_of(&obs("203.0.113.0")));
        assert_eq!(net[0].high, key_of(&obs("203.0.113.255")));
        let port = probes("ip-dst|port", "185.220.101.4|443", true);
        assert_eq!(port, [Probe::exact(key_of(&obs("185.220.101.4")))]);
        let domain = probes("domain", "Evil.Example.", true);
        assert_eq!(domain[0].low, domain_prefix("evil.example"));
        assert_eq!(
            probes("domain", "evil.example", false),
            [Probe::exact(key_of(&obs("evil.example")))]
        );
        assert_eq!(
            probes("hostname", "evil.example", true),
            [Probe::exact(key_of(&obs("evil.example")))]
        );
        let both = probes("domain|ip", "evil.example|185.220.101.4", true);
        assert_eq!(both.len(), 2);
        let hash = probes(
            "filename|md5",
            "a.exe|D41D8CD98F00B204E9800998ECF8427E",
            true,
        );
        assert_eq!(hash.len(), 0, "the empty file's hash is no observable");
        let hash = probes(
            "filename|md5",
            "a.exe|9E107D9D372BB6826BD81D3542A419D6",
            true,
        );
        assert_eq!(
            hash,
            [Probe::exact(key_of(&obs(
                "9e107d9d372bb6826bd81d3542a419d6"
            )))]
        );
    }

    #[test]
    fn a_hunt_key_differs_by_value_and_alert_only() {
        // Several MISP events holding one value make one retro event per
        // alert, not one per indicator.
        let k = hunt_key("1.2.3.4", "a1");
        assert_eq!(k, hunt_key("1.2.3.4", "a1"));
        assert_ne!(k, hunt_key("1.2.3.4", "a2"));
        assert_ne!(k, hunt_key("1.2.3.5", "a1"));
    }
}
