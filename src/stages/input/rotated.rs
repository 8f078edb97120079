//! The files analysisd rotated alerts.json into, in the order it wrote them.
//!
//! analysisd keeps every alert file under the alerts directory as
//! `YYYY/Mon/ossec-alerts-DD.json`, and, when it rotates by size or interval
//! within a day, `ossec-alerts-DD-NNN.json`. alerts.json is a hard link to
//! the newest one. When the tailer lags behind by more than one rotation
//! (MISP was down, so we stopped reading), following the path would jump
//! over the files in between; instead we go from each file to its successor
//! in this order.

use super::fingerprint::FileId;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `(year, month, day, sequence)` from `YYYY/Mon/ossec-alerts-DD[-NNN].json`.
fn sort_key(year: &str, month: &str, file: &str) -> Option<(u32, usize, u32, u32)> {
    let year: u32 = year.parse().ok()?;
    let month = MONTHS.iter().position(|m| *m == month)?;
    let stem = file.strip_prefix("ossec-alerts-")?.strip_suffix(".json")?;
    let (day, seq) = match stem.split_once('-') {
        Some((d, s)) => (d.parse().ok()?, s.parse().ok()?),
        None => (stem.parse().ok()?, 0),
    };
    Some((year, month, day, seq))
}

/// Every rotated alerts file beside `alerts_file`, oldest first.
pub fn chronological(alerts_file: &Path) -> Vec<PathBuf> {
    let Some(dir) = alerts_file.parent() else {
        return Vec::new();
    };
    let entries = |d: &Path| -> Vec<(String, PathBuf)> {
        std::fs::read_dir(d)
            .map(|it| {
                it.filter_map(Result::ok)
                    .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut found = Vec::new();
    for (year, ydir) in entries(dir).into_iter().filter(|(_, p)| p.is_dir()) {
        for (month, mdir) in entries(&ydir).into_iter().filter(|(_, p)| p.is_dir()) {
            for (name, path) in entries(&mdir) {
                if let Some(k) = sort_key(&year, &month, &name) {
                    found.push((k, path));
                }
            }
        }
    }
    found.sort();
    found.into_iter().map(|(_, p)| p).collect()
}

/// The file analysisd wrote after `current`, if `current` is one of its
/// rotated files and a newer one exists.
pub fn successor(alerts_file: &Path, current: &FileId) -> Option<PathBuf> {
    let files = chronological(alerts_file);
    let at = files.iter().position(|p| {
        std::fs::metadata(p).is_ok_and(|m| m.dev() == current.dev && m.ino() == current.ino)
    })?;
    files.get(at + 1).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_by_date_and_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let files = [
            "2025/Dec/ossec-alerts-31.json",
            "2026/Jan/ossec-alerts-01.json",
            "2026/Jan/ossec-alerts-01-001.json",
            "2026/Jan/ossec-alerts-01-002.json",
            "2026/Jan/ossec-alerts-02.json",
            "2026/Feb/ossec-alerts-01.json",
        ];
        for f in files.iter().rev() {
            let p = dir.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, f).unwrap();
        }
        std::fs::write(dir.path().join("2026/Jan/ossec-alerts-03.json.gz"), b"").unwrap();
        let alerts = dir.path().join("alerts.json");
        let got: Vec<String> = chronological(&alerts)
            .iter()
            .map(|p| p.strip_prefix(dir.path()).unwrap().display().to_string())
            .collect();
        assert_eq!(got, files);
        let mut f = std::fs::File::open(dir.path().join(files[1])).unwrap();
        let id = FileId::of(&mut f).unwrap();
        assert_eq!(successor(&alerts, &id), Some(dir.path().join(files[2])));
    }
}
