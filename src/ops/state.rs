//! Files in `state_dir`: versioned, written atomically, read forgivingly.
//!
//! A crash must never leave a half-written state file, and a corrupt one must
//! never stop the daemon: it is set aside as `<name>.corrupt` for a human to
//! look at, and we start as if it were absent.
//!
//! Every file carries `"version"` beside its fields, as Vector's
//! checkpoints do (`#[serde(tag = "version")]` on an enum with a variant
//! per version). A file without it is from before versioning and is read
//! as version 1's fields. A version this build does not know is refused
//! like a corrupt file rather than misread.

use serde::de::DeserializeOwned;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// A temp file of its own in the same directory, fsync, rename over the
/// target, fsync the directory.
///
/// The temp name is unique per call: two writers of one state file (a
/// periodic save still running on the blocking pool and the final save at
/// shutdown) must never write through the same temp file, or the one that
/// renames first can publish the other's half-written bytes.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_as(path, bytes, None)
}

/// [`write_atomic`], the file given `mode` and the owner of its directory
/// through its own descriptor before it takes its name: a command run as
/// root in a directory another user owns never changes a file by path,
/// so a symlink planted there cannot steer it.
pub fn write_atomic_as(path: &Path, bytes: &[u8], mode: Option<u32>) -> io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let prefix = format!(
        ".{}.",
        path.file_name()
            .map_or("state".into(), |n| n.to_string_lossy())
    );
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    if let Some(mode) = mode {
        let f = tmp.as_file();
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        let owner = fs::metadata(dir)?;
        let me = f.metadata()?;
        if (me.uid(), me.gid()) != (owner.uid(), owner.gid()) {
            // Only root may give a file away; anyone else already wrote it
            // as a user the directory lets write.
            let _ = std::os::unix::fs::fchown(f, Some(owner.uid()), Some(owner.gid()));
        }
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// What reading a state file found.
#[derive(Debug, PartialEq, Eq)]
pub enum Read<T> {
    Found(T),
    Absent,
    /// It was there but could not be read or parsed (now set aside).
    Unreadable,
}

impl<T> Read<T> {
    pub fn found(self) -> Option<T> {
        match self {
            Read::Found(v) => Some(v),
            _ => None,
        }
    }
}

/// Reads and parses an unversioned file (the tests' simple case of
/// [`read_versioned`]). Missing: `None`. Unreadable or corrupt: logged,
/// renamed to `.corrupt`, `None`.
#[cfg(test)]
pub fn read_state<T: DeserializeOwned>(path: &Path) -> Option<T> {
    read_state_with(path, |bytes| serde_json::from_slice(bytes)).found()
}

/// [`read_state`] for a versioned file: `V` is the enum tagged by
/// `version`; a file without `version` is parsed as `L` and converted.
pub fn read_versioned<V: DeserializeOwned, L: DeserializeOwned>(
    path: &Path,
    from_legacy: impl FnOnce(L) -> V,
) -> Read<V> {
    #[derive(serde::Deserialize)]
    struct Probe {
        version: Option<serde::de::IgnoredAny>,
    }
    read_state_with(path, |bytes| {
        match serde_json::from_slice::<Probe>(bytes)?.version {
            Some(_) => serde_json::from_slice::<V>(bytes),
            None => serde_json::from_slice::<L>(bytes).map(from_legacy),
        }
    })
}

fn read_state_with<T>(path: &Path, parse: impl FnOnce(&[u8]) -> serde_json::Result<T>) -> Read<T> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Read::Absent,
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "cannot read state file; set aside as .corrupt");
            set_aside(path);
            return Read::Unreadable;
        }
    };
    match parse(&bytes) {
        Ok(v) => Read::Found(v),
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "corrupt state file; set aside as .corrupt");
            set_aside(path);
            Read::Unreadable
        }
    }
}

fn set_aside(path: &Path) {
    let mut aside = path.as_os_str().to_owned();
    aside.push(".corrupt");
    if let Err(e) = fs::rename(path, &aside) {
        tracing::error!(path = %path.display(), error = %e, "cannot set corrupt state file aside");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_roundtrip_and_corrupt_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.json");
        write_atomic(&p, b"[1,2]").unwrap();
        assert_eq!(read_state::<Vec<u32>>(&p), Some(vec![1, 2]));
        fs::write(&p, b"{garbage").unwrap();
        assert_eq!(read_state::<Vec<u32>>(&p), None);
        assert!(!p.exists());
        assert!(dir.path().join("s.json.corrupt").exists());
        assert_eq!(read_state::<Vec<u32>>(&p), None);
    }

    /// Two savers of one file at once (a periodic save on the blocking pool
    /// and the final save at shutdown) each publish a whole file of their
    /// own, never a mix, and neither fails.
    #[test]
    fn concurrent_writers_never_publish_a_torn_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bookmark.json");
        std::thread::scope(|s| {
            for writer in 0..4u32 {
                let p = &p;
                s.spawn(move || {
                    let body = serde_json::to_vec(&vec![writer; 20_000]).unwrap();
                    for _ in 0..40 {
                        write_atomic(p, &body).expect("every save succeeds");
                    }
                });
            }
        });
        let saved: Vec<u32> = read_state(&p).expect("the file parses");
        assert_eq!(saved.len(), 20_000);
        assert!(
            saved.iter().all(|&w| w == saved[0]),
            "one writer's bytes only"
        );
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n != "bookmark.json")
            .collect();
        assert!(leftovers.is_empty(), "no temp files left: {leftovers:?}");
    }
}
