//! Stage 3b, false positives: the values a SOC analyst said are not
//! threats (`wazuh-misp false-positive`). They are dropped after
//! extraction, so they are never enriched, sighted or hunted again.
//!
//! Pure: the list comes in whole ([`crate::ops::false_positives`] reads
//! it from `state_dir`, the runtime swaps it in when the file changes).

use crate::extract::domain;
use crate::observable::Observable;
use std::collections::HashSet;

/// The suppressed values, in canonical form.
#[derive(Debug, Clone, Default)]
pub struct Suppressed {
    values: HashSet<Observable>,
}

impl Suppressed {
    pub fn new(values: impl IntoIterator<Item = Observable>) -> Self {
        Suppressed {
            values: values.into_iter().collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether `o` is suppressed: listed itself, or, for a domain, under a
    /// listed domain (marking `evil.example` covers `cdn.evil.example`,
    /// as a MISP `domain` attribute does).
    pub fn covers(&self, o: &Observable) -> bool {
        if self.values.is_empty() {
            return false;
        }
        if self.values.contains(o) {
            return true;
        }
        match o {
            Observable::Domain(name) => domain::with_parents(name)
                .skip(1)
                .any(|parent| self.values.contains(&Observable::Domain(parent.into()))),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(s: &str) -> Observable {
        s.parse().unwrap()
    }

    #[test]
    fn a_listed_value_and_the_subdomains_of_a_listed_domain_are_covered() {
        let s = Suppressed::new(
            [
                "evil.example.com",
                "185.220.101.4",
                "http://a.example.org/x",
            ]
            .map(obs),
        );
        assert!(s.covers(&obs("evil.example.com")));
        assert!(s.covers(&obs("cdn.evil.example.com")));
        assert!(!s.covers(&obs("example.com")));
        assert!(!s.covers(&obs("notevil.example.com")));
        assert!(s.covers(&obs("185.220.101.4")));
        assert!(!s.covers(&obs("185.220.101.5")));
        assert!(s.covers(&obs("http://a.example.org/x")));
        assert!(!s.covers(&obs("http://a.example.org/y")));
        assert!(!Suppressed::default().covers(&obs("185.220.101.4")));
    }
}
