//! What the SQLite files in `state_dir` share (the mirror's store, the
//! retro ledger): WAL, a `quick_check` at open, a schema version in a
//! `meta` table, an unusable file set aside rather than misread, and
//! read-only opens for the commands that read beside the daemon.

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use std::path::Path;
use std::time::Duration;

/// Opens `path` (creating it), checks it, creates `schema` (idempotent
/// `CREATE ... IF NOT EXISTS`) and the `meta` table, and records or checks
/// `version`. A corrupt file or another version is an error.
pub fn open_checked(path: &Path, schema: &str, version: &str) -> rusqlite::Result<Connection> {
    let c = Connection::open(path)?;
    c.busy_timeout(Duration::from_secs(10))?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    // In WAL mode, NORMAL loses no committed transaction to a process
    // kill, only (possibly) the last ones to a power cut, and the file
    // stays consistent either way.
    c.pragma_update(None, "synchronous", "NORMAL")?;
    let ok: String = c.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    if ok != "ok" {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
            Some(format!("quick_check: {ok}")),
        ));
    }
    c.execute_batch("CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);")?;
    c.execute_batch(schema)?;
    let found: Option<String> = c
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    match found.as_deref() {
        None => {
            c.execute(
                "INSERT INTO meta(key, value) VALUES('schema_version', ?1)",
                [version],
            )?;
        }
        Some(v) if v == version => {}
        Some(other) => {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_MISMATCH),
                Some(format!(
                    "schema version {other:?}, this build reads {version:?}"
                )),
            ))
        }
    }
    Ok(c)
}

/// Whether `e` says the file itself is unusable: corrupt, not a database,
/// or of another schema version. Every other error (busy, I/O, a full
/// disk, permissions) is the moment's, and the file must stay as it is.
pub fn is_unusable_file(e: &rusqlite::Error) -> bool {
    use rusqlite::ffi::ErrorCode;
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase | ErrorCode::TypeMismatch)
    )
}

/// [`open_checked`]; a file it refuses as unusable ([`is_unusable_file`])
/// is renamed `<name>.unreadable-<unix time>` (its WAL and shared-memory
/// files removed), logged as `"{what} is unreadable; set aside, {then}"`,
/// and a new one created. Any other error is returned with the file left
/// alone: a busy file, a full disk or a refused permission is no reason to
/// lose it (the caller logs it, and the supervisor's restart retries).
pub fn open_or_set_aside(
    path: &Path,
    schema: &str,
    version: &str,
    what: &str,
    then: &str,
) -> rusqlite::Result<Connection> {
    match open_checked(path, schema, version) {
        Ok(c) => Ok(c),
        Err(e) if !is_unusable_file(&e) => Err(e),
        Err(e) => {
            if path.exists() {
                let name = path
                    .file_name()
                    .map_or_else(|| "store".into(), |n| n.to_string_lossy().into_owned());
                let aside = path.with_file_name(format!(
                    "{name}.unreadable-{}",
                    chrono::Utc::now().timestamp()
                ));
                tracing::error!(error = %e, set_aside = %aside.display(), "{what} is unreadable; set aside, {then}");
                let _ = std::fs::rename(path, &aside);
                for ext in ["-wal", "-shm"] {
                    let _ = std::fs::remove_file(path.with_file_name(format!("{name}{ext}")));
                }
            }
            open_checked(path, schema, version)
        }
    }
}

/// An existing file, read-only; `None` if there is none.
pub fn open_read_only(path: &Path) -> rusqlite::Result<Option<Connection>> {
    if !path.exists() {
        return Ok(None);
    }
    let c = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    c.busy_timeout(Duration::from_secs(10))?;
    Ok(Some(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS t(x INTEGER);";

    #[test]
    fn only_a_file_that_is_no_database_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.sqlite");
        std::fs::write(&garbage, vec![0x5a; 8192]).unwrap();
        open_or_set_aside(&garbage, SCHEMA, "1", "the test store", "rebuilt").unwrap();
        let aside = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("garbage.sqlite.unreadable-")
            })
            .count();
        assert_eq!(aside, 1, "a file that is no database is set aside");
    }

    #[test]
    fn an_ordinary_error_leaves_the_file_alone() {
        let dir = tempfile::tempdir().unwrap();
        // Cannot be opened as a file at all (SQLITE_CANTOPEN): an error of
        // the moment, like EACCES or ENOSPC, not a corrupt store.
        let path = dir.path().join("store.sqlite");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("keep"), b"x").unwrap();
        let e = open_or_set_aside(&path, SCHEMA, "1", "the test store", "rebuilt").unwrap_err();
        assert!(!is_unusable_file(&e), "{e}");
        assert!(path.join("keep").exists(), "nothing renamed or removed");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
