//! The files Wazuh rotated the stream into, in the order it wrote them.
//!
//! Both lines keep a stable name that is a hard link to the newest file of
//! a dated tree beside it:
//! - Wazuh 4's analysisd: `alerts.json` → `YYYY/Mon/ossec-alerts-DD.json`,
//!   and `ossec-alerts-DD-NNN.json` when it rotates within a day;
//! - Wazuh 5's streamlog (pattern `${YYYY}/${MMM}/wazuh-${name}-${DD}`):
//!   `<channel>.json` → `YYYY/Mon/wazuh-<channel>-DD.json`, and
//!   `...-DD-N.json` when it rotates by size.
//!
//! So a rotated file is `YYYY/Mon/<prefix><stem>-<n>[-<n>...].<ext>`, where
//! `<stem>.<ext>` is the stable name, ordered by year, month and the numbers.
//! Either line may have gzipped it since (`.<ext>.gz`, the original
//! deleted); while the compressor runs both exist, and the original is the
//! one to read.
//!
//! When the tailer lags behind by more than one rotation, following the
//! stable name would jump over the files in between; instead we go from
//! each file to its successor in this order.

use super::fingerprint::FileId;
use super::source;
use std::path::{Path, PathBuf};

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

type SortKey = (u32, usize, Vec<u32>);

/// The order of `YYYY/Mon/<file>`, if `file` is a rotated `<stem>.<ext>`.
fn sort_key(year: &str, month: &str, file: &str, stem: &str, ext: &str) -> Option<SortKey> {
    let year: u32 = year.parse().ok()?;
    let month = MONTHS.iter().position(|m| *m == month)?;
    let name = file.strip_suffix(".gz").unwrap_or(file);
    let name = name.strip_suffix(ext)?.strip_suffix('.')?;
    let at = name.rfind(&format!("{stem}-"))?;
    let numbers = name[at + stem.len() + 1..]
        .split('-')
        .map(|n| {
            if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            n.parse().ok()
        })
        .collect::<Option<Vec<u32>>>()?;
    Some((year, month, numbers))
}

/// Every rotated file beside `stable`, oldest first: the original where it
/// still exists, else its `.gz`.
pub fn chronological(stable: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(stem), Some(ext)) = (
        stable.parent(),
        stable.file_stem().and_then(|s| s.to_str()),
        stable.extension().and_then(|s| s.to_str()),
    ) else {
        return Vec::new();
    };
    // analysisd's alerts.json names its files ossec-alerts-*; the rule
    // "<prefix><stem>-<numbers>" covers it with stem "alerts".
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
                if let Some(k) = sort_key(&year, &month, &name, stem, ext) {
                    // The original sorts before its .gz, which it shadows.
                    found.push((k, source::is_compressed(&path), path));
                }
            }
        }
    }
    found.sort();
    found.dedup_by(|later, earlier| later.0 == earlier.0);
    found.into_iter().map(|(_, _, p)| p).collect()
}

/// Whether `path` is the file `id` names: the same inode and first bytes,
/// or, for a compressed file, the same first decompressed bytes (the
/// original, compressed and deleted since).
pub fn holds(path: &Path, id: &FileId) -> bool {
    // Not by inode alone for a compressed file: the compressor's new file
    // may well reuse the inode of an original deleted before it.
    if source::is_compressed(path) {
        return source::gzip_holds(path, id);
    }
    std::fs::File::open(path)
        .and_then(|mut f| id.matches(&mut f))
        .unwrap_or(false)
}

/// The rotated file that holds `id`, searched newest first (a bookmark is
/// almost always in one of the last files).
pub fn find(stable: &Path, id: &FileId) -> Option<PathBuf> {
    chronological(stable)
        .into_iter()
        .rev()
        .find(|p| holds(p, id))
}

/// The file Wazuh wrote after the one `current` names, if that is one of
/// its rotated files and a newer one exists.
pub fn successor(stable: &Path, current: &FileId) -> Option<PathBuf> {
    let files = chronological(stable);
    let at = files.iter().rposition(|p| holds(p, current))?;
    files.get(at + 1).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tree(dir: &Path, files: &[&str]) {
        for f in files.iter().rev() {
            let p = dir.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, f).unwrap();
        }
    }

    fn relative(dir: &Path, paths: Vec<PathBuf>) -> Vec<String> {
        paths
            .iter()
            .map(|p| p.strip_prefix(dir).unwrap().display().to_string())
            .collect()
    }

    #[test]
    fn analysisd_files_are_ordered_by_date_and_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let files = [
            "2025/Dec/ossec-alerts-31.json",
            "2026/Jan/ossec-alerts-01.json",
            "2026/Jan/ossec-alerts-01-001.json",
            "2026/Jan/ossec-alerts-01-002.json",
            "2026/Jan/ossec-alerts-02.json",
            "2026/Feb/ossec-alerts-01.json",
        ];
        tree(dir.path(), &files);
        // Not alert files: the day's .log and its checksum.
        std::fs::write(dir.path().join("2026/Jan/ossec-alerts-02.log"), b"").unwrap();
        std::fs::write(dir.path().join("2026/Jan/ossec-alerts-02.json.sum"), b"").unwrap();
        let alerts = dir.path().join("alerts.json");
        assert_eq!(relative(dir.path(), chronological(&alerts)), files);
        let mut f = std::fs::File::open(dir.path().join(files[1])).unwrap();
        let id = FileId::of(&mut f).unwrap();
        assert_eq!(successor(&alerts, &id), Some(dir.path().join(files[2])));
    }

    /// Wazuh 5's default pattern, with the size counter, and the gzipped
    /// files its compressor leaves (the original wins while both exist).
    #[test]
    fn streamlog_files_and_their_gzips_are_ordered() {
        let dir = tempfile::tempdir().unwrap();
        let files = [
            "2026/Nov/wazuh-standard-wazuh-events-v5-30.json.gz",
            "2026/Dec/wazuh-standard-wazuh-events-v5-01.json.gz",
            "2026/Dec/wazuh-standard-wazuh-events-v5-02.json",
            "2026/Dec/wazuh-standard-wazuh-events-v5-02-1.json",
            "2026/Dec/wazuh-standard-wazuh-events-v5-02-10.json",
        ];
        tree(dir.path(), &files);
        // Mid-compression: the original is still there.
        std::fs::write(
            dir.path()
                .join("2026/Dec/wazuh-standard-wazuh-events-v5-02.json.gz"),
            b"",
        )
        .unwrap();
        // Another channel's files in the same tree are not ours.
        std::fs::write(
            dir.path()
                .join("2026/Dec/wazuh-custom-wazuh-events-v5-02.json"),
            b"",
        )
        .unwrap();
        let stable = dir.path().join("standard-wazuh-events-v5.json");
        assert_eq!(relative(dir.path(), chronological(&stable)), files);
    }

    /// The file being read was compressed and deleted under the tailer: its
    /// `.gz` is found by content, and the next file follows it.
    #[test]
    fn a_file_compressed_since_it_was_opened_is_found_by_its_first_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let stable = dir.path().join("standard-wazuh-events-v5.json");
        let first = dir
            .path()
            .join("2026/Dec/wazuh-standard-wazuh-events-v5-01.json");
        let second = dir
            .path()
            .join("2026/Dec/wazuh-standard-wazuh-events-v5-02.json");
        std::fs::create_dir_all(first.parent().unwrap()).unwrap();
        std::fs::write(&first, b"{\"day\":1}\n").unwrap();
        std::fs::write(&second, b"{\"day\":2}\n").unwrap();
        let id = FileId::of(&mut std::fs::File::open(&first).unwrap()).unwrap();
        let gz = first.with_extension("json.gz");
        let mut e = flate2::write::GzEncoder::new(
            std::fs::File::create(&gz).unwrap(),
            flate2::Compression::fast(),
        );
        e.write_all(b"{\"day\":1}\n").unwrap();
        e.finish().unwrap();
        std::fs::remove_file(&first).unwrap();

        assert_eq!(find(&stable, &id), Some(gz));
        assert_eq!(successor(&stable, &id), Some(second));
    }
}
