//! What the tailer reads: the live file, or a rotated file that Wazuh has
//! since gzipped.
//!
//! Wazuh 5's streamlog compresses each rotated file and deletes the
//! original; Wazuh 4's analysisd gzips the previous day's alert files. A
//! daemon that was stopped across such a rotation finds its bookmarked file
//! only as `<name>.json.gz`, and catches up by reading it decompressed.
//! Offsets in a compressed file count decompressed bytes, so a bookmark
//! taken in the original stays valid in its `.gz`, and a `.gz` is
//! recognised by the fingerprint of its first decompressed bytes.

use super::fingerprint::{FileId, FINGERPRINT_BYTES};
use flate2::read::MultiGzDecoder;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

pub enum Source {
    Plain(File),
    /// Finished by definition: nothing is appended to a compressed file.
    Gzip(Box<MultiGzDecoder<BufReader<File>>>),
}

/// An opened file, positioned at the requested offset.
pub struct Opened {
    pub source: Source,
    pub id: FileId,
    /// The offset actually reached (a file shorter than asked ends early).
    pub offset: u64,
    /// The byte before `offset` is not a newline: the rest of this line is a
    /// fragment and must not be parsed.
    pub mid_line: bool,
}

pub fn is_compressed(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "gz")
}

impl Source {
    /// Opens `path` at `offset` (`u64::MAX`: at its end).
    pub fn open(path: &Path, offset: u64) -> io::Result<Opened> {
        if is_compressed(path) {
            return open_gzip(path, offset);
        }
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        let offset = offset.min(len);
        let mut mid_line = false;
        if offset > 0 {
            file.seek(SeekFrom::Start(offset - 1))?;
            let mut b = [0u8; 1];
            file.read_exact(&mut b)?;
            mid_line = b[0] != b'\n';
        }
        file.seek(SeekFrom::Start(offset))?;
        let id = FileId::of(&mut file)?;
        Ok(Opened {
            source: Source::Plain(file),
            id,
            offset,
            mid_line,
        })
    }

    pub fn is_compressed(&self) -> bool {
        matches!(self, Source::Gzip(_))
    }

    /// The plain file, for what only a growing file has (length, inode,
    /// a fingerprint retaken as it grows).
    pub fn plain(&mut self) -> Option<&mut File> {
        match self {
            Source::Plain(f) => Some(f),
            Source::Gzip(_) => None,
        }
    }
}

impl Read for Source {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Source::Plain(f) => f.read(buf),
            Source::Gzip(d) => d.read(buf),
        }
    }
}

fn decoder(path: &Path) -> io::Result<(MultiGzDecoder<BufReader<File>>, std::fs::Metadata)> {
    let file = File::open(path)?;
    let meta = file.metadata()?;
    Ok((MultiGzDecoder::new(BufReader::new(file)), meta))
}

/// Up to `len` first decompressed bytes of `path`, and its metadata.
fn gzip_prefix(path: &Path, len: u64) -> io::Result<(Vec<u8>, std::fs::Metadata)> {
    let (d, meta) = decoder(path)?;
    let mut prefix = Vec::with_capacity(len as usize);
    d.take(len).read_to_end(&mut prefix)?;
    Ok((prefix, meta))
}

fn open_gzip(path: &Path, offset: u64) -> io::Result<Opened> {
    let id = gzip_id(path)?;
    let (mut d, _) = decoder(path)?;
    let mut mid_line = false;
    let mut reached = 0;
    if offset > 0 {
        let before = offset - 1;
        reached = io::copy(&mut d.by_ref().take(before), &mut io::sink())?;
        let mut b = [0u8; 1];
        // Shorter than the bookmark, the file is read to its end.
        if reached == before && d.read(&mut b)? == 1 {
            reached += 1;
            mid_line = b[0] != b'\n';
        }
    }
    Ok(Opened {
        source: Source::Gzip(Box::new(d)),
        id,
        offset: reached,
        mid_line,
    })
}

/// A compressed file's identity: its own inode, and the digest of its
/// first decompressed bytes (what the original's fingerprint covered).
pub fn gzip_id(path: &Path) -> io::Result<FileId> {
    use std::os::unix::fs::MetadataExt;
    let (prefix, meta) = gzip_prefix(path, FINGERPRINT_BYTES)?;
    Ok(FileId {
        dev: meta.dev(),
        ino: meta.ino(),
        fingerprint: super::fingerprint::digest(&prefix),
        fingerprint_len: prefix.len() as u64,
    })
}

/// Whether the compressed file at `path` holds what `id` fingerprinted:
/// the same first decompressed bytes, over the fingerprint's length. The
/// inode is not compared: the original is gone. A file that cannot be
/// decompressed (still being written, damaged) does not match.
pub fn gzip_holds(path: &Path, id: &FileId) -> bool {
    gzip_prefix(path, id.fingerprint_len).is_ok_and(|(prefix, _)| {
        prefix.len() as u64 == id.fingerprint_len
            && super::fingerprint::digest(&prefix) == id.fingerprint
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn gzip(path: &Path, bytes: &[u8]) {
        let mut e = GzEncoder::new(File::create(path).unwrap(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap();
    }

    /// The fingerprint taken on the original is found in its `.gz`, and
    /// reading resumes at the same decompressed offset.
    #[test]
    fn a_bookmark_in_the_original_resumes_in_its_gzip() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("a.json");
        let text: Vec<u8> = (0..200)
            .flat_map(|i| format!("{{\"n\":{i}}}\n").into_bytes())
            .collect();
        std::fs::write(&plain, &text).unwrap();
        let original = FileId::of(&mut File::open(&plain).unwrap()).unwrap();
        assert_eq!(original.fingerprint_len, FINGERPRINT_BYTES);
        let gz = dir.path().join("a.json.gz");
        gzip(&gz, &text);
        std::fs::remove_file(&plain).unwrap();

        assert!(gzip_holds(&gz, &original));
        let at = text.iter().position(|&b| b == b'\n').unwrap() as u64 + 1;
        let mut opened = Source::open(&gz, at).unwrap();
        assert_eq!(opened.offset, at);
        assert!(!opened.mid_line);
        assert_eq!(opened.id.fingerprint, original.fingerprint);
        let mut rest = Vec::new();
        opened.source.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, &text[at as usize..]);

        let mid = Source::open(&gz, at + 2).unwrap();
        assert!(mid.mid_line);
        let past = Source::open(&gz, u64::MAX).unwrap();
        assert_eq!(past.offset, text.len() as u64, "at its end");
    }

    #[test]
    fn another_files_gzip_or_a_damaged_one_does_not_match() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("a.json");
        std::fs::write(&plain, b"{\"day\":1}\n").unwrap();
        let id = FileId::of(&mut File::open(&plain).unwrap()).unwrap();
        let other = dir.path().join("b.json.gz");
        gzip(&other, b"{\"day\":2}\n");
        assert!(!gzip_holds(&other, &id));
        let damaged = dir.path().join("c.json.gz");
        std::fs::write(&damaged, b"\x1f\x8b\x08 not really").unwrap();
        assert!(!gzip_holds(&damaged, &id));
        assert!(Source::open(&damaged, 0).is_err());
    }
}
