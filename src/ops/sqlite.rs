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

/// [`open_checked`]; a file it refuses is renamed
/// `<name>.unreadable-<unix time>` (its WAL and shared-memory files
/// removed), logged as `"{what} is unreadable; set aside, {then}"`, and a
/// new one created.
pub fn open_or_set_aside(
    path: &Path,
    schema: &str,
    version: &str,
    what: &str,
    then: &str,
) -> rusqlite::Result<Connection> {
    match open_checked(path, schema, version) {
        Ok(c) => Ok(c),
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
