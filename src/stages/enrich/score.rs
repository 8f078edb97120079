//! The original integration's threat score, kept as it was so that existing
//! Wazuh rules and dashboards built on it keep their meaning.

/// Points for a tag containing each keyword (case-insensitive). A tag can
/// match several keywords (`malware:apt-backdoor`), and each match counts.
const TAG_POINTS: &[(&str, u32)] = &[
    ("tlp:red", 8),
    ("tlp:amber", 5),
    ("tlp:green", 2),
    ("malware", 7),
    ("ransomware", 9),
    ("apt", 8),
    ("botnet", 6),
    ("phishing", 5),
    ("scan", 3),
    ("suspicious", 4),
];

pub const MAX_SCORE: u32 = 10;

/// Score of one attribute, 0–10. `tags` must already be unique by name
/// (each tag counts once even if MISP lists it at both levels).
pub fn threat_score<'a>(category: &str, to_ids: bool, tags: impl Iterator<Item = &'a str>) -> u32 {
    let mut score = match category {
        "External analysis" => 5,
        "Network activity" => 3,
        _ => 0,
    };
    for tag in tags {
        let lower = tag.to_ascii_lowercase();
        for (needle, points) in TAG_POINTS {
            if lower.contains(needle) {
                score += points;
            }
        }
    }
    if to_ids {
        score += 2;
    }
    score.min(MAX_SCORE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores() {
        let s = |c: &str, ids: bool, tags: &[&str]| threat_score(c, ids, tags.iter().copied());
        assert_eq!(s("Payload delivery", false, &[]), 0);
        assert_eq!(s("Network activity", false, &[]), 3);
        assert_eq!(s("Network activity", true, &[]), 5);
        assert_eq!(s("External analysis", false, &[]), 5);
        assert_eq!(s("Network activity", false, &["tlp:green"]), 5);
        assert_eq!(s("Other", false, &["TLP:AMBER"]), 5);
        assert_eq!(s("Other", false, &["tlp:white"]), 0);
        assert_eq!(s("Other", false, &["Phishing"]), 5);
        assert_eq!(s("Other", false, &["scanner"]), 3);
        assert_eq!(s("Other", false, &["suspicious"]), 4);
        assert_eq!(s("Other", false, &["tlp:red"]), 8);
        assert_eq!(s("Network activity", true, &["botnet"]), 10);
        assert_eq!(s("Other", false, &["ransomware"]), 9);
        assert_eq!(s("Other", false, &["malware:apt"]), 10);
        assert_eq!(s("Other", false, &["Botnet", "botnet"]), 10);
    }
}
