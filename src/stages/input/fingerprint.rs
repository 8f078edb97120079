//! Recognising a file again: device, inode, and a digest of its first bytes.
//!
//! Inodes are reused (analysisd unlinks and creates files every day), so an
//! inode alone could resume a bookmark in the wrong file. The digest covers
//! the first `fingerprint_len` bytes (up to [`FINGERPRINT_BYTES`]) that
//! existed when it was taken, and is compared over that same length.

use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;

pub const FINGERPRINT_BYTES: u64 = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    pub fingerprint: String,
    pub fingerprint_len: u64,
}

fn digest_prefix(file: &mut File, len: u64) -> io::Result<Option<String>> {
    let pos = file.stream_position()?;
    file.seek(SeekFrom::Start(0))?;
    let mut buf = Vec::with_capacity(len as usize);
    let read = file.by_ref().take(len).read_to_end(&mut buf);
    file.seek(SeekFrom::Start(pos))?;
    read?;
    if buf.len() as u64 != len {
        return Ok(None);
    }
    Ok(Some(digest(&buf)))
}

/// The fingerprint of a file's first bytes.
pub fn digest(prefix: &[u8]) -> String {
    format!("{:x}", Md5::digest(prefix))
}

impl FileId {
    pub fn of(file: &mut File) -> io::Result<FileId> {
        let meta = file.metadata()?;
        let len = meta.len().min(FINGERPRINT_BYTES);
        Ok(FileId {
            dev: meta.dev(),
            ino: meta.ino(),
            fingerprint: digest_prefix(file, len)?.unwrap_or_default(),
            fingerprint_len: len,
        })
    }

    /// Same device and inode, and the same first bytes.
    pub fn matches(&self, file: &mut File) -> io::Result<bool> {
        let meta = file.metadata()?;
        if meta.dev() != self.dev || meta.ino() != self.ino {
            return Ok(false);
        }
        Ok(digest_prefix(file, self.fingerprint_len)?.as_deref() == Some(&self.fingerprint))
    }

    pub fn same_inode(&self, meta: &std::fs::Metadata) -> bool {
        meta.dev() == self.dev && meta.ino() == self.ino
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(dir: &std::path::Path, name: &str, bytes: &[u8]) -> File {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        File::open(p).unwrap()
    }

    #[test]
    fn the_same_file_matches_and_keeps_its_position() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = file_with(dir.path(), "a", b"{\"a\":1}\n{\"b\":2}\n");
        f.seek(SeekFrom::Start(5)).unwrap();
        let id = FileId::of(&mut f).unwrap();
        assert_eq!(id.fingerprint_len, 16);
        assert_eq!(
            f.stream_position().unwrap(),
            5,
            "taking it does not move the file"
        );
        assert!(id.matches(&mut f).unwrap());
        assert!(id.same_inode(&f.metadata().unwrap()));
    }

    /// An inode reused by a new file with other first bytes (analysisd
    /// unlinks and creates a file a day) is not the bookmarked file.
    #[test]
    fn other_first_bytes_or_another_inode_do_not_match() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a");
        std::fs::write(&p, b"first day\n").unwrap();
        let id = FileId::of(&mut File::open(&p).unwrap()).unwrap();
        // Same inode, rewritten in place.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .write_all(b"other day\n")
            .unwrap();
        assert!(!id.matches(&mut File::open(&p).unwrap()).unwrap());
        let mut other = file_with(dir.path(), "b", b"first day\n");
        assert!(!id.matches(&mut other).unwrap(), "another inode");
    }

    /// Taken on a short file, it compares the bytes that existed then: the
    /// file growing afterwards still matches.
    #[test]
    fn a_short_fingerprint_still_matches_after_the_file_grows() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a");
        std::fs::write(&p, b"{}\n").unwrap();
        let id = FileId::of(&mut File::open(&p).unwrap()).unwrap();
        assert_eq!(id.fingerprint_len, 3);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(&[b'x'; 4096])
            .unwrap();
        let mut f = File::open(&p).unwrap();
        assert!(id.matches(&mut f).unwrap());
        assert_eq!(
            FileId::of(&mut f).unwrap().fingerprint_len,
            FINGERPRINT_BYTES
        );
        // Truncated below the fingerprint: the bytes are gone.
        std::fs::write(&p, b"{").unwrap();
        assert!(!id.matches(&mut File::open(&p).unwrap()).unwrap());
    }
}
