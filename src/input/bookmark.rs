//! `state_dir/bookmark.json`: the file being read and the offset below
//! which every alert is fully handled, written atomically.
//!
//! At start the bookmark is matched against alerts.json, then against the
//! rotated files analysisd keeps beside it
//! (`logs/alerts/YYYY/Mon/ossec-alerts-DD*.json`), by inode and fingerprint.

use super::checkpoint::Bookmark;
use super::tail::Start;
use crate::config::StartPosition;
use crate::state::{read_state, write_atomic};
use std::fs::File;
use std::path::Path;

pub const FILE_NAME: &str = "bookmark.json";

pub fn save(state_dir: &Path, b: &Bookmark) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(b).expect("bookmark serialises");
    write_atomic(&state_dir.join(FILE_NAME), &bytes)
}

pub fn load(state_dir: &Path) -> Option<Bookmark> {
    read_state(&state_dir.join(FILE_NAME))
}

fn matches(path: &Path, b: &Bookmark) -> bool {
    File::open(path)
        .and_then(|mut f| b.file.matches(&mut f))
        .unwrap_or(false)
}

/// Decides where the tailer starts, from the saved bookmark if any.
pub fn resolve_start(
    alerts_file: &Path,
    bookmark: Option<&Bookmark>,
    fallback: StartPosition,
) -> Start {
    let Some(b) = bookmark else {
        return Start::Fresh(fallback);
    };
    if matches(alerts_file, b) {
        tracing::info!(offset = b.offset, "resuming alerts.json from the bookmark");
        return Start::At(b.offset);
    }
    if let Some(path) = super::rotated::chronological(alerts_file)
        .into_iter()
        .rev()
        .find(|p| matches(p, b))
    {
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
