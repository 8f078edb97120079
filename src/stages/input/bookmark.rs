//! `state_dir/bookmark.json`: the file being read and the offset below
//! which every alert is fully handled, written atomically, with the one
//! saved before it kept as `bookmark.prev.json`.
//!
//! At start the bookmark is matched against alerts.json, then against the
//! rotated files Wazuh keeps beside it (`YYYY/Mon/ossec-alerts-DD*.json` on
//! 4.x, `YYYY/Mon/wazuh-<channel>-DD*.json` on 5), by inode and
//! fingerprint, or by fingerprint alone for a file gzipped since.
//!
//! An unreadable bookmark must not skip alerts: the previous one is used
//! instead (it lags by one save, and the dedup window suppresses what is
//! read twice). When neither can be read, reading starts at the beginning
//! of the current alerts.json, whatever `input.start_position` says.

use super::checkpoint::Bookmark;
use super::tail::Start;
use crate::config::StartPosition;
use crate::state::{read_versioned, write_atomic, Read};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const FILE_NAME: &str = "bookmark.json";
pub const PREVIOUS_FILE_NAME: &str = "bookmark.prev.json";

/// `bookmark.json` on disk: `{"version": "1", "file": {..}, "offset": N}`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "version")]
enum OnDisk {
    #[serde(rename = "1")]
    V1(Bookmark),
}

/// The bookmark files of a stream: `bookmark.json` and
/// `bookmark.prev.json` for `input.alerts_file` (stream `""`), and
/// `bookmark-<stream>.json` and `bookmark-<stream>.prev.json` for the
/// other spaces' streams on Wazuh 5, named by their channel.
fn files(state_dir: &Path, stream: &str) -> (PathBuf, PathBuf) {
    if stream.is_empty() {
        return (
            state_dir.join(FILE_NAME),
            state_dir.join(PREVIOUS_FILE_NAME),
        );
    }
    (
        state_dir.join(format!("bookmark-{stream}.json")),
        state_dir.join(format!("bookmark-{stream}.prev.json")),
    )
}

/// Saves `b`, keeping the bookmark it replaces as the previous one.
pub fn save(state_dir: &Path, stream: &str, b: &Bookmark) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(&OnDisk::V1(b.clone())).expect("bookmark serialises");
    let (current, previous) = files(state_dir, stream);
    match std::fs::rename(&current, previous) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    write_atomic(&current, &bytes)
}

/// What was found in `state_dir`.
#[derive(Debug, PartialEq, Eq)]
pub enum Loaded {
    Found(Bookmark),
    /// No bookmark at all: a first start.
    None,
    /// Bookmark files exist, but none could be read.
    Unreadable,
}

impl Loaded {
    pub fn bookmark(&self) -> Option<&Bookmark> {
        match self {
            Loaded::Found(b) => Some(b),
            _ => None,
        }
    }
}

fn read(path: &Path) -> Read<Bookmark> {
    match read_versioned(path, OnDisk::V1) {
        Read::Found(OnDisk::V1(b)) => Read::Found(b),
        Read::Absent => Read::Absent,
        Read::Unreadable => Read::Unreadable,
    }
}

pub fn load(state_dir: &Path, stream: &str) -> Loaded {
    let (current_path, previous_path) = files(state_dir, stream);
    let current = read(&current_path);
    if let Read::Found(b) = current {
        return Loaded::Found(b);
    }
    match (current, read(&previous_path)) {
        (_, Read::Found(b)) => {
            tracing::warn!(
                offset = b.offset,
                "bookmark.json is missing or unreadable; resuming from the previous bookmark (alerts since then are read again, the dedup window suppresses repeats)"
            );
            Loaded::Found(b)
        }
        (Read::Absent, Read::Absent) => Loaded::None,
        _ => Loaded::Unreadable,
    }
}

/// Decides where the tailer starts, from the saved bookmark if any.
pub fn resolve_start(alerts_file: &Path, loaded: &Loaded, fallback: StartPosition) -> Start {
    let b = match loaded {
        Loaded::Found(b) => b,
        Loaded::None => return Start::Fresh(fallback),
        Loaded::Unreadable => {
            tracing::error!(
                "no bookmark could be read (bookmark.json and bookmark.prev.json set aside as .corrupt); reading the current alerts file from its beginning so that nothing is skipped (the dedup window suppresses repeats)"
            );
            return Start::Fresh(StartPosition::Beginning);
        }
    };
    if super::rotated::holds(alerts_file, &b.file) {
        tracing::info!(offset = b.offset, "resuming alerts.json from the bookmark");
        return Start::At(b.offset);
    }
    if let Some(path) = super::rotated::find(alerts_file, &b.file) {
        tracing::info!(path = %path.display(), offset = b.offset, "bookmark is in a rotated file; finishing it first");
        return Start::Rotated {
            path,
            offset: b.offset,
        };
    }
    tracing::warn!(
        inode = b.file.ino,
        "the bookmarked file is gone (rotated away or replaced); following input.start_position"
    );
    Start::Fresh(fallback)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::fingerprint::FileId;
    use std::fs::File;

    fn bookmark(offset: u64) -> Bookmark {
        Bookmark {
            file: FileId {
                dev: 1,
                ino: 2,
                fingerprint: "abc".into(),
                fingerprint_len: 3,
            },
            offset,
        }
    }

    #[test]
    fn saved_with_a_version_and_unversioned_files_still_load() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), "", &bookmark(7)).unwrap();
        let text = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["version"], "1");
        assert_eq!(v["offset"], 7);
        assert_eq!(load(dir.path(), ""), Loaded::Found(bookmark(7)));
        // As 0.1 wrote it.
        std::fs::write(
            dir.path().join(FILE_NAME),
            r#"{"file":{"dev":1,"ino":2,"fingerprint":"abc","fingerprint_len":3},"offset":9}"#,
        )
        .unwrap();
        assert_eq!(load(dir.path(), ""), Loaded::Found(bookmark(9)));
    }

    #[test]
    fn an_unreadable_bookmark_falls_back_to_the_previous_one() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), "", &bookmark(100)).unwrap();
        save(dir.path(), "", &bookmark(200)).unwrap();
        std::fs::write(dir.path().join(FILE_NAME), b"{\"version\":\"1\",\"fi").unwrap();
        assert_eq!(load(dir.path(), ""), Loaded::Found(bookmark(100)));
        assert!(dir.path().join("bookmark.json.corrupt").exists());

        // Not a file at all.
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), "", &bookmark(100)).unwrap();
        save(dir.path(), "", &bookmark(200)).unwrap();
        std::fs::remove_file(dir.path().join(FILE_NAME)).unwrap();
        std::fs::create_dir(dir.path().join(FILE_NAME)).unwrap();
        assert_eq!(load(dir.path(), ""), Loaded::Found(bookmark(100)));
    }

    #[test]
    fn a_version_from_the_future_is_not_misread() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(FILE_NAME),
            r#"{"version":"9","file":{"dev":1,"ino":2,"fingerprint":"abc","fingerprint_len":3},"offset":9}"#,
        )
        .unwrap();
        assert_eq!(load(dir.path(), ""), Loaded::Unreadable);
    }

    /// With no readable bookmark, the start is the beginning of the current
    /// file, not `input.start_position = "end"`, which would skip every
    /// alert written while the daemon was down.
    #[test]
    fn start_resolution() {
        let dir = tempfile::tempdir().unwrap();
        let alerts = dir.path().join("alerts.json");
        std::fs::write(&alerts, b"{}\n{}\n").unwrap();
        let here = Bookmark {
            file: FileId::of(&mut File::open(&alerts).unwrap()).unwrap(),
            offset: 3,
        };
        let at = |l: &Loaded, f| format!("{:?}", resolve_start(&alerts, l, f));
        assert_eq!(at(&Loaded::Found(here), StartPosition::End), "At(3)");
        assert_eq!(at(&Loaded::None, StartPosition::End), "Fresh(End)");
        assert_eq!(
            at(&Loaded::None, StartPosition::Beginning),
            "Fresh(Beginning)"
        );
        assert_eq!(
            at(&Loaded::Unreadable, StartPosition::End),
            "Fresh(Beginning)"
        );
        assert_eq!(
            at(&Loaded::Found(bookmark(1)), StartPosition::End),
            "Fresh(End)",
            "a file that is gone"
        );
    }
}
