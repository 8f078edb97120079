//! Files in `state_dir`: written atomically, read forgivingly.
//!
//! A crash must never leave a half-written state file, and a corrupt one must
//! never stop the daemon: it is set aside as `<name>.corrupt` for a human to
//! look at, and we start as if it were absent.

use serde::de::DeserializeOwned;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

/// Temp file, fsync, rename over the target, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Reads and parses a state file. Missing: `None`. Unreadable or corrupt:
/// logged, renamed to `.corrupt`, `None`.
pub fn read_state<T: DeserializeOwned>(path: &Path) -> Option<T> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "cannot read state file; starting without it");
            set_aside(path);
            return None;
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "corrupt state file; set aside as .corrupt, starting without it");
            set_aside(path);
            None
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
}
