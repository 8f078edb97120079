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
    Ok(Some(format!("{:x}", Md5::digest(&buf))))
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
