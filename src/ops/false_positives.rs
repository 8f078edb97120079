//! `state_dir/false_positives.json`: the values analysts marked as false
//! positives, written by `wazuh-misp false-positive` and read by the
//! running daemon, which checks the file every two seconds and on SIGHUP.
//!
//! `{"version": "1", "entries": [{"value", "type", "added", "reason"}]}`,
//! written atomically. Changes from two commands at once are serialised by
//! an advisory lock on `false_positives.lock`, so neither is lost.

use crate::observable::Observable;
use crate::state::{read_versioned, write_atomic_as, Read};
use crate::suppress::Suppressed;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

pub const FILE: &str = "false_positives.json";
const LOCK: &str = "false_positives.lock";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Canonical text.
    pub value: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// When it was marked, in Wazuh's time format.
    pub added: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct List {
    entries: Vec<Entry>,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "version")]
enum ListFile {
    #[serde(rename = "1")]
    V1(List),
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// The entries on disk (none when the file is absent or unreadable).
pub fn load(state_dir: &Path) -> Vec<Entry> {
    match read_versioned(&path(state_dir), ListFile::V1) {
        Read::Found(ListFile::V1(l)) => l.entries,
        _ => Vec::new(),
    }
}

/// The entries as the matcher the pipeline uses. An entry that no longer
/// parses (edited by hand) is skipped with a warning.
pub fn suppressed(entries: &[Entry]) -> Suppressed {
    Suppressed::new(entries.iter().filter_map(|e| match e.value.parse() {
        Ok(o) => Some(o),
        Err(_) => {
            tracing::warn!(value = %e.value, "false_positives.json holds a value that is not an observable; ignored");
            None
        }
    }))
}

/// What a change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    Added(Entry),
    /// Already listed: the entry as it was.
    AlreadyListed(Entry),
    Removed(Entry),
    NotListed,
}

/// Adds `value` (any observable, put in canonical form).
pub fn add(state_dir: &Path, value: &Observable, reason: Option<&str>) -> io::Result<Changed> {
    change(state_dir, |entries| {
        let text = value.to_string();
        if let Some(e) = entries.iter().find(|e| e.value == text) {
            return Changed::AlreadyListed(e.clone());
        }
        let entry = Entry {
            value: text,
            kind: value.kind().as_str().to_owned(),
            added: crate::enrich::wazuh_time(chrono::Utc::now()),
            reason: reason.map(str::to_owned),
        };
        entries.push(entry.clone());
        Changed::Added(entry)
    })
}

pub fn remove(state_dir: &Path, value: &Observable) -> io::Result<Changed> {
    change(state_dir, |entries| {
        let text = value.to_string();
        match entries.iter().position(|e| e.value == text) {
            Some(i) => Changed::Removed(entries.remove(i)),
            None => Changed::NotListed,
        }
    })
}

fn change(state_dir: &Path, f: impl FnOnce(&mut Vec<Entry>) -> Changed) -> io::Result<Changed> {
    std::fs::create_dir_all(state_dir)?;
    let lock = open_lock(&state_dir.join(LOCK))?;
    // SAFETY: flock on a descriptor we own; released when `lock` closes.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut entries = load(state_dir);
    let changed = f(&mut entries);
    if matches!(changed, Changed::Added(_) | Changed::Removed(_)) {
        let bytes = serde_json::to_vec_pretty(&ListFile::V1(List { entries }))
            .expect("the list serialises");
        // Readable by the daemon's user, who owns state_dir: the command
        // may run as root.
        write_atomic_as(&path(state_dir), &bytes, Some(0o640))?;
    }
    drop(lock);
    Ok(changed)
}

/// The lock file, opened without following a symlink and without
/// truncating: a command run as root in a directory the daemon's user
/// owns must not be steered into another file.
fn open_lock(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("{}: {e} (a symlink is refused)", path.display()),
            )
        })
}

/// A cheap token that changes when the file does (length and mtime), for
/// the daemon's poll.
pub fn version(state_dir: &Path) -> Option<(u64, std::time::SystemTime)> {
    let m = std::fs::metadata(path(state_dir)).ok()?;
    Some((m.len(), m.modified().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_added_once_listed_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let ip: Observable = "185.220.101.4".parse().unwrap();
        let domain: Observable = "Evil.Example.COM.".parse().unwrap();
        assert!(matches!(
            add(dir.path(), &ip, Some("scanner we run")).unwrap(),
            Changed::Added(_)
        ));
        assert!(matches!(
            add(dir.path(), &ip, None).unwrap(),
            Changed::AlreadyListed(_)
        ));
        assert!(matches!(
            add(dir.path(), &domain, None).unwrap(),
            Changed::Added(_)
        ));
        let entries = load(dir.path());
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].reason.as_deref(), Some("scanner we run"));
        assert_eq!(entries[1].value, "evil.example.com");
        assert_eq!(entries[1].kind, "domain");
        assert!(suppressed(&entries).covers(&"www.evil.example.com".parse().unwrap()));
        assert!(matches!(
            remove(dir.path(), &ip).unwrap(),
            Changed::Removed(_)
        ));
        assert_eq!(remove(dir.path(), &ip).unwrap(), Changed::NotListed);
        let text = std::fs::read_to_string(path(dir.path())).unwrap();
        assert!(text.contains("\"version\": \"1\""), "{text}");
        assert!(!suppressed(&load(dir.path())).covers(&ip));
    }
}

#[cfg(test)]
mod symlink_tests {
    use super::*;

    #[test]
    fn a_symlinked_lock_or_list_in_the_state_dir_steers_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::os::unix::fs::symlink(&victim, state.join(LOCK)).unwrap();
        let ip: Observable = "185.220.101.7".parse().unwrap();
        let e = add(&state, &ip, Some("fp")).unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        assert_eq!(
            std::fs::read(&victim).unwrap(),
            b"precious",
            "not truncated"
        );
        // The list itself replaced by a symlink: the new list takes the
        // name, the target is untouched.
        std::fs::remove_file(state.join(LOCK)).unwrap();
        std::os::unix::fs::symlink(&victim, path(&state)).unwrap();
        add(&state, &ip, Some("fp")).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(!std::fs::symlink_metadata(path(&state))
            .unwrap()
            .file_type()
            .is_symlink());
    }
}
