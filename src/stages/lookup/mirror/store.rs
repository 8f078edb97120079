//! The mirror on disk: `state_dir/mirror.sqlite`, one SQLite database
//! (WAL journal) for every server.
//!
//! Why SQLite: a sync is many rows changed at once that must land whole or
//! not at all, a restart must not download everything again, and the
//! `mirror status` and `lookup` commands read it while the daemon writes.
//! SQLite's transactions give the first, its file the second, and WAL
//! readers in other processes the third; redb and fjall lock the file to
//! one process.
//!
//! Consistency: every sync's writes and its cursor commit in one
//! transaction per page; a full sync writes a new generation beside the
//! live one and makes it live in one transaction at the end, so a `kill
//! -9` at any point leaves the last complete state (a half-written
//! generation is deleted at the next start). The schema is versioned in
//! `meta`; an unreadable, corrupt or newer file is set aside and the
//! mirror rebuilt by a full sync.

use crate::ops::sqlite;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::{Path, PathBuf};

pub const FILE: &str = "mirror.sqlite";
/// The schema this code writes; a file of another version is set aside.
pub const SCHEMA_VERSION: &str = "1";

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS servers(
        name TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, generation INTEGER NOT NULL,
        complete INTEGER NOT NULL, cursor INTEGER NOT NULL, last_sync INTEGER,
        last_full_sync INTEGER, last_error TEXT, attributes INTEGER NOT NULL DEFAULT 0,
        networks INTEGER NOT NULL DEFAULT 0);
    CREATE TABLE IF NOT EXISTS attributes(
        server TEXT NOT NULL, generation INTEGER NOT NULL, uuid TEXT NOT NULL,
        id TEXT NOT NULL, event_id TEXT NOT NULL, type TEXT NOT NULL, category TEXT NOT NULL,
        value TEXT NOT NULL, to_ids INTEGER NOT NULL, timestamp INTEGER NOT NULL,
        tags TEXT NOT NULL, event_uuid TEXT NOT NULL, event_info TEXT NOT NULL,
        network INTEGER NOT NULL,
        PRIMARY KEY(server, generation, uuid)) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS pending_hunts(
        server TEXT NOT NULL, uuid TEXT NOT NULL, value TEXT NOT NULL, type TEXT NOT NULL,
        timestamp INTEGER NOT NULL, found_at INTEGER NOT NULL,
        PRIMARY KEY(server, uuid, value)) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS attributes_by_value ON attributes(server, generation, value);
    CREATE INDEX IF NOT EXISTS attributes_by_second_half
        ON attributes(server, generation, substr(value, instr(value, '|') + 1))
        WHERE instr(value, '|') > 0;
    CREATE TABLE IF NOT EXISTS skipped(
        server TEXT NOT NULL, generation INTEGER NOT NULL, uuid TEXT NOT NULL, reason TEXT NOT NULL,
        PRIMARY KEY(server, generation, uuid)) WITHOUT ROWID;";

/// What the store knows of one server's sync.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ServerState {
    pub name: String,
    /// The url and filters the mirror was synced with: when they change,
    /// the mirror is rebuilt.
    #[serde(skip)]
    pub fingerprint: String,
    #[serde(skip)]
    pub generation: i64,
    /// A full sync has completed for this fingerprint.
    #[serde(skip)]
    pub complete: bool,
    /// MISP's clock (its `Date` header) when the last sync started: the
    /// next incremental sync asks from it, less `misp.sync_overlap_secs`.
    pub cursor: i64,
    pub last_sync: Option<i64>,
    pub last_full_sync: Option<i64>,
    pub last_error: Option<String>,
    pub attributes: i64,
    pub networks: i64,
    /// Attributes that pass the filters but are not mirrored, by reason
    /// (see [`super::sync::Skip`]).
    pub skipped: std::collections::BTreeMap<String, i64>,
}

/// The rows holding a value: itself, a composite's first half (a range
/// on the value index) and its second half (a partial expression index):
/// never a scan, however large the mirror (partial events during a MISP
/// outage read it once per hit). The indexes are named: without
/// statistics the planner would take the primary key's (server,
/// generation) prefix, a scan of the whole generation.
const ROWS_FOR_VALUE: &str = "WITH live AS (SELECT generation AS g FROM servers WHERE name = ?1)
                 SELECT uuid, id, event_id, type, category, value, to_ids, timestamp, tags,
                        event_uuid, event_info FROM attributes INDEXED BY attributes_by_value, live
                 WHERE server = ?1 AND generation = live.g AND value = ?2
                 UNION ALL
                 SELECT uuid, id, event_id, type, category, value, to_ids, timestamp, tags,
                        event_uuid, event_info FROM attributes INDEXED BY attributes_by_value, live
                 WHERE server = ?1 AND generation = live.g AND value >= ?2 || '|' AND value < ?2 || '}'
                 UNION ALL
                 SELECT uuid, id, event_id, type, category, value, to_ids, timestamp, tags,
                        event_uuid, event_info FROM attributes INDEXED BY attributes_by_second_half, live
                 WHERE server = ?1 AND generation = live.g AND instr(value, '|') > 0
                   AND substr(value, instr(value, '|') + 1) = ?2";

/// The most new indicators waiting to be hunted, per server (a first sync
/// with `retro.on_first_sync` can bring millions).
pub const MAX_PENDING_HUNTS: i64 = 1_000_000;

/// A new indicator waiting for the retro hunter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingHunt {
    pub uuid: String,
    pub value: String,
    pub kind: String,
    /// MISP's attribute timestamp.
    pub timestamp: i64,
    /// When the sync found it (Unix seconds).
    pub found_at: i64,
}

/// One mirrored attribute as stored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row {
    pub uuid: String,
    pub id: String,
    pub event_id: String,
    pub kind: String,
    pub category: String,
    pub value: String,
    pub to_ids: bool,
    pub timestamp: i64,
    /// Tag names (the attribute's, and its event's when synced).
    pub tags: Vec<String>,
    pub event_uuid: String,
    pub event_info: String,
}

impl Row {
    /// Whether its value is a network (files under a prefix).
    pub fn is_network(&self) -> bool {
        is_network(&self.value)
    }
}

fn is_network(value: &str) -> bool {
    super::index::Key::of_value(value).any(|k| k.is_network())
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
#[error("mirror store {path}: {source}")]
pub struct StoreError {
    path: String,
    #[source]
    source: rusqlite::Error,
}

type Result<T> = std::result::Result<T, StoreError>;

impl Store {
    /// Opens (creating) the store in `dir`. A file that is not a usable
    /// store of this version is renamed `mirror.sqlite.unreadable-<unix
    /// time>` and a new one created: the mirror is then rebuilt.
    pub fn open(dir: &Path) -> Result<Store> {
        let path = dir.join(FILE);
        let conn = sqlite::open_or_set_aside(
            &path,
            SCHEMA,
            SCHEMA_VERSION,
            "the mirror store",
            "the mirror is rebuilt by a full sync",
        )
        .map_err(|source| StoreError {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Store { conn, path })
    }

    /// Opens an existing store without writing to it (for `mirror status`
    /// and `lookup` while the daemon runs). `None` if there is none.
    pub fn open_read_only(dir: &Path) -> Result<Option<Store>> {
        let path = dir.join(FILE);
        let conn = sqlite::open_read_only(&path).map_err(|source| StoreError {
            path: path.display().to_string(),
            source,
        })?;
        Ok(conn.map(|conn| Store { conn, path }))
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        self.errors()(source)
    }

    /// Names this store in an error; owns its path, so that it can be
    /// used while a transaction borrows the connection.
    fn errors(&self) -> impl Fn(rusqlite::Error) -> StoreError + 'static {
        let path = self.path.display().to_string();
        move |source| StoreError {
            path: path.clone(),
            source,
        }
    }

    pub fn servers(&self) -> Result<Vec<ServerState>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT name, fingerprint, generation, complete, cursor, last_sync, last_full_sync,
                        last_error, attributes, networks FROM servers ORDER BY name",
            )
            .map_err(|e| self.err(e))?;
        let mut rows = st
            .query_map([], server_state)
            .map_err(|e| self.err(e))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.err(e))?;
        for r in &mut rows {
            r.skipped = self.skipped_counts(&r.name, r.generation)?;
        }
        Ok(rows)
    }

    /// Skipped attributes of `name`'s `generation`, by reason. A file an
    /// older version wrote, opened read-only, has no such table: none.
    fn skipped_counts(
        &self,
        name: &str,
        generation: i64,
    ) -> Result<std::collections::BTreeMap<String, i64>> {
        let exists: bool = self
            .conn
            .query_row(
                "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'skipped'",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        if !exists {
            return Ok(Default::default());
        }
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT reason, COUNT(*) FROM skipped WHERE server = ?1 AND generation = ?2 GROUP BY reason",
            )
            .map_err(|e| self.err(e))?;
        let counts = st
            .query_map(params![name, generation], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.err(e))?
            .collect::<rusqlite::Result<_>>()
            .map_err(|e| self.err(e))?;
        Ok(counts)
    }

    /// Records attributes of `generation` skipped for what they hold.
    pub fn skip(&mut self, name: &str, generation: i64, skipped: &[(String, &str)]) -> Result<()> {
        let err = self.errors();
        let tx = self.conn.transaction().map_err(&err)?;
        {
            let mut put = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO skipped(server, generation, uuid, reason) VALUES(?1, ?2, ?3, ?4)",
                )
                .map_err(&err)?;
            for (uuid, reason) in skipped {
                put.execute(params![name, generation, uuid, reason])
                    .map_err(&err)?;
            }
        }
        tx.commit().map_err(&err)
    }

    /// One server's state, without its `skipped` counts (the sync asks
    /// often; [`Self::servers`] counts them for `mirror status`).
    pub fn server(&self, name: &str) -> Result<Option<ServerState>> {
        self.conn
            .query_row(
                "SELECT name, fingerprint, generation, complete, cursor, last_sync, last_full_sync,
                        last_error, attributes, networks FROM servers WHERE name = ?1",
                [name],
                server_state,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Starts a full sync of `name`: a new generation, empty, beside the
    /// live one. Returns its number.
    pub fn begin_full(&mut self, name: &str, fingerprint: &str) -> Result<i64> {
        let err = self.errors();
        let tx = self.conn.transaction().map_err(&err)?;
        let current: Option<(i64, String)> = tx
            .query_row(
                "SELECT generation, fingerprint FROM servers WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(&err)?;
        let next = current.as_ref().map_or(1, |(g, _)| g + 1);
        if current.is_none() {
            tx.execute(
                "INSERT INTO servers(name, fingerprint, generation, complete, cursor)
                 VALUES(?1, ?2, 0, 0, 0)",
                params![name, fingerprint],
            )
            .map_err(&err)?;
        }
        for table in ["attributes", "skipped"] {
            tx.execute(
                &format!("DELETE FROM {table} WHERE server = ?1 AND generation = ?2"),
                params![name, next],
            )
            .map_err(&err)?;
        }
        tx.commit().map_err(&err)?;
        Ok(next)
    }

    /// Writes one page of rows into `generation`, in one transaction.
    /// For each row, the value it replaced in that generation, if any.
    pub fn write(
        &mut self,
        name: &str,
        generation: i64,
        rows: &[Row],
    ) -> Result<Vec<Option<(String, String)>>> {
        self.write_noting(name, generation, rows, None, |_, _| false, 0)
    }

    /// [`Self::write`], and in the same transaction a pending hunt for
    /// every row `is_new` says is new intelligence, given the (type,
    /// value) it had before: in `generation`, or in `compared_with` (a
    /// full sync's live generation): a crash, a later page failing or a shutdown cannot
    /// lose it (see [`Self::pending_hunts`]). At most [`MAX_PENDING_HUNTS`]
    /// wait; beyond, they are counted in the result and not kept.
    pub fn write_noting(
        &mut self,
        name: &str,
        generation: i64,
        rows: &[Row],
        compared_with: Option<i64>,
        is_new: impl Fn(&Row, Option<&(String, String)>) -> bool,
        found_at: i64,
    ) -> Result<Vec<Option<(String, String)>>> {
        let err = self.errors();
        let tx = self.conn.transaction().map_err(&err)?;
        // Counted at the first new row only: most pages hold none.
        let mut pending: Option<i64> = None;
        let mut replaced = Vec::with_capacity(rows.len());
        let (mut attributes, mut networks) = (0i64, 0i64);
        let mut dropped = 0u64;
        {
            let mut old = tx
                .prepare_cached(
                    "SELECT type, value FROM attributes WHERE server = ?1 AND generation = ?2 AND uuid = ?3",
                )
                .map_err(&err)?;
            let mut unskip = tx
                .prepare_cached(
                    "DELETE FROM skipped WHERE server = ?1 AND generation = ?2 AND uuid = ?3",
                )
                .map_err(&err)?;
            let mut hunt = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO pending_hunts(server, uuid, value, type, timestamp, found_at)
                     VALUES(?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(&err)?;
            let mut put = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO attributes(server, generation, uuid, id, event_id, type,
                        category, value, to_ids, timestamp, tags, event_uuid, event_info, network)
                     VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                )
                .map_err(&err)?;
            for r in rows {
                let was: Option<(String, String)> = old
                    .query_row(params![name, generation, r.uuid], |x| {
                        Ok((x.get(0)?, x.get(1)?))
                    })
                    .optional()
                    .map_err(&err)?;
                let net =
                    |v: &str| i64::from(super::index::Key::of_value(v).any(|k| k.is_network()));
                match &was {
                    None => {
                        attributes += 1;
                        networks += net(&r.value);
                    }
                    Some((_, old)) => networks += net(&r.value) - net(old),
                }
                let before = match compared_with {
                    Some(g) => old
                        .query_row(params![name, g, r.uuid], |x| Ok((x.get(0)?, x.get(1)?)))
                        .optional()
                        .map_err(&err)?,
                    None => was.clone(),
                };
                if is_new(r, before.as_ref()) {
                    let waiting = match pending {
                        Some(n) => n,
                        None => tx
                            .query_row(
                                "SELECT COUNT(*) FROM pending_hunts WHERE server = ?1",
                                [name],
                                |x| x.get(0),
                            )
                            .map_err(&err)?,
                    };
                    if waiting < MAX_PENDING_HUNTS {
                        let added = hunt
                            .execute(params![
                                name,
                                r.uuid,
                                r.value,
                                r.kind,
                                r.timestamp,
                                found_at
                            ])
                            .map_err(&err)?;
                        pending = Some(waiting + added as i64);
                    } else {
                        pending = Some(waiting);
                        dropped += 1;
                    }
                }
                replaced.push(was);
                unskip
                    .execute(params![name, generation, r.uuid])
                    .map_err(&err)?;
                put.execute(params![
                    name,
                    generation,
                    r.uuid,
                    r.id,
                    r.event_id,
                    r.kind,
                    r.category,
                    r.value,
                    r.to_ids,
                    r.timestamp,
                    serde_json::to_string(&r.tags).unwrap_or_else(|_| "[]".into()),
                    r.event_uuid,
                    r.event_info,
                    r.is_network(),
                ])
                .map_err(&err)?;
            }
        }
        // The live generation's counts follow its changes; a new one is
        // counted whole when it becomes live.
        tx.execute(
            "UPDATE servers SET attributes = attributes + ?3, networks = networks + ?4
             WHERE name = ?1 AND generation = ?2",
            params![name, generation, attributes, networks],
        )
        .map_err(&err)?;
        tx.commit().map_err(&err)?;
        if dropped > 0 {
            metrics::counter!("wazuh_misp_retro_pending_dropped_total").increment(dropped);
            tracing::warn!(
                server = name,
                dropped,
                max = MAX_PENDING_HUNTS,
                "new indicators not kept for retro-hunting: the pending hunts are full (the hunter is far behind)"
            );
        }
        Ok(replaced)
    }

    /// Up to `limit` pending hunts of `name`, oldest first.
    pub fn pending_hunts(&self, name: &str, limit: usize) -> Result<Vec<PendingHunt>> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT uuid, value, type, timestamp, found_at FROM pending_hunts WHERE server = ?1
                 ORDER BY found_at LIMIT ?2",
            )
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map(params![name, limit as i64], |r| {
                Ok(PendingHunt {
                    uuid: r.get(0)?,
                    value: r.get(1)?,
                    kind: r.get(2)?,
                    timestamp: r.get(3)?,
                    found_at: r.get(4)?,
                })
            })
            .map_err(|e| self.err(e))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    /// The hunts done: they leave the table.
    pub fn hunted(&mut self, name: &str, done: &[(String, String)]) -> Result<()> {
        let err = self.errors();
        let tx = self.conn.transaction().map_err(&err)?;
        {
            let mut del = tx
                .prepare_cached(
                    "DELETE FROM pending_hunts WHERE server = ?1 AND uuid = ?2 AND value = ?3",
                )
                .map_err(&err)?;
            for (uuid, value) in done {
                del.execute(params![name, uuid, value]).map_err(&err)?;
            }
        }
        tx.commit().map_err(&err)
    }

    /// Removes rows (an attribute that no longer passes the filters, seen
    /// by an incremental sync). Returns the (uuid, value) of each removed.
    pub fn remove(
        &mut self,
        name: &str,
        generation: i64,
        uuids: &[String],
    ) -> Result<Vec<(String, String, String)>> {
        let err = self.errors();
        let tx = self.conn.transaction().map_err(&err)?;
        let mut removed = Vec::new();
        {
            let mut del = tx
                .prepare_cached(
                    "DELETE FROM attributes WHERE server = ?1 AND generation = ?2 AND uuid = ?3 RETURNING type, value",
                )
                .map_err(&err)?;
            let mut unskip = tx
                .prepare_cached(
                    "DELETE FROM skipped WHERE server = ?1 AND generation = ?2 AND uuid = ?3",
                )
                .map_err(&err)?;
            for u in uuids {
                unskip.execute(params![name, generation, u]).map_err(&err)?;
                if let Some((t, v)) = del
                    .query_row(params![name, generation, u], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                    })
                    .optional()
                    .map_err(&err)?
                {
                    removed.push((u.clone(), t, v));
                }
            }
        }
        let networks = removed.iter().filter(|(_, _, v)| is_network(v)).count() as i64;
        tx.execute(
            "UPDATE servers SET attributes = attributes - ?3, networks = networks - ?4
             WHERE name = ?1 AND generation = ?2",
            params![name, generation, removed.len() as i64, networks],
        )
        .map_err(&err)?;
        tx.commit().map_err(&err)?;
        Ok(removed)
    }

    /// Makes `generation` the live one after a full sync, and drops every
    /// other generation of `name`.
    pub fn finish_full(
        &mut self,
        name: &str,
        fingerprint: &str,
        generation: i64,
        cursor: i64,
        now: i64,
    ) -> Result<()> {
        let err = self.errors();
        let tx = self.conn.transaction().map_err(&err)?;
        tx.execute(
            "UPDATE servers SET fingerprint = ?2, generation = ?3, complete = 1, cursor = ?4,
                last_sync = ?5, last_full_sync = ?5, last_error = NULL WHERE name = ?1",
            params![name, fingerprint, generation, cursor, now],
        )
        .map_err(&err)?;
        for table in ["attributes", "skipped"] {
            tx.execute(
                &format!("DELETE FROM {table} WHERE server = ?1 AND generation != ?2"),
                params![name, generation],
            )
            .map_err(&err)?;
        }
        Self::count_in(&tx, name, generation).map_err(&err)?;
        tx.commit().map_err(&err)
    }

    fn count_in(
        tx: &rusqlite::Transaction<'_>,
        name: &str,
        generation: i64,
    ) -> rusqlite::Result<()> {
        tx.execute(
            "UPDATE servers SET
                attributes = (SELECT COUNT(*) FROM attributes WHERE server = ?1 AND generation = ?2),
                networks = (SELECT COUNT(*) FROM attributes WHERE server = ?1 AND generation = ?2 AND network = 1)
             WHERE name = ?1",
            params![name, generation],
        )?;
        Ok(())
    }

    /// Records an incremental sync that completed.
    pub fn finish_incremental(&mut self, name: &str, cursor: i64, now: i64) -> Result<()> {
        let err = self.errors();
        let tx = self.conn.transaction().map_err(&err)?;
        let generation: i64 = tx
            .query_row(
                "SELECT generation FROM servers WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .map_err(&err)?;
        tx.execute(
            "UPDATE servers SET cursor = ?2, last_sync = ?3, last_error = NULL
             WHERE name = ?1",
            params![name, cursor, now],
        )
        .map_err(&err)?;
        Self::count_in(&tx, name, generation).map_err(&err)?;
        tx.commit().map_err(&err)
    }

    pub fn record_error(&mut self, name: &str, message: &str) -> Result<()> {
        self.conn
            .execute(
                "UPDATE servers SET last_error = ?2 WHERE name = ?1",
                params![name, message],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Deletes what a full sync interrupted by a crash left: every
    /// generation of `name` but the live one.
    pub fn drop_stale(&mut self, name: &str) -> Result<()> {
        for table in ["attributes", "skipped"] {
            self.conn
                .execute(
                    &format!(
                        "DELETE FROM {table} WHERE server = ?1
                           AND generation != (SELECT generation FROM servers WHERE name = ?1)"
                    ),
                    [name],
                )
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Calls `visit(type, value, uuid, timestamp)` for every row of the
    /// live generation of `name`.
    pub fn each(&self, name: &str, mut visit: impl FnMut(&str, &str, &str, i64)) -> Result<()> {
        let mut st = self
            .conn
            .prepare(
                "SELECT value, uuid, timestamp, type FROM attributes
                 WHERE server = ?1 AND generation = (SELECT generation FROM servers WHERE name = ?1)",
            )
            .map_err(|e| self.err(e))?;
        let mut rows = st.query([name]).map_err(|e| self.err(e))?;
        while let Some(r) = rows.next().map_err(|e| self.err(e))? {
            let value = r
                .get_ref(0)
                .map_err(|e| self.err(e))?
                .as_str()
                .unwrap_or("");
            let uuid = r
                .get_ref(1)
                .map_err(|e| self.err(e))?
                .as_str()
                .unwrap_or("");
            let ts: i64 = r.get(2).map_err(|e| self.err(e))?;
            let kind = r
                .get_ref(3)
                .map_err(|e| self.err(e))?
                .as_str()
                .unwrap_or("");
            visit(kind, value, uuid, ts);
        }
        Ok(())
    }

    /// The live rows of `name` whose value is `value` or has it as one
    /// half (what a partial event shows).
    pub fn rows_for(&self, name: &str, values: &[String]) -> Result<Vec<Row>> {
        let mut st = self
            .conn
            .prepare_cached(ROWS_FOR_VALUE)
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for v in values {
            let rows = st
                .query_map(params![name, v], |r| {
                    let tags: String = r.get(8)?;
                    Ok(Row {
                        uuid: r.get(0)?,
                        id: r.get(1)?,
                        event_id: r.get(2)?,
                        kind: r.get(3)?,
                        category: r.get(4)?,
                        value: r.get(5)?,
                        to_ids: r.get(6)?,
                        timestamp: r.get(7)?,
                        tags: serde_json::from_str(&tags).unwrap_or_default(),
                        event_uuid: r.get(9)?,
                        event_info: r.get(10)?,
                    })
                })
                .map_err(|e| self.err(e))?;
            for r in rows {
                out.push(r.map_err(|e| self.err(e))?);
            }
        }
        Ok(out)
    }
}

fn server_state(r: &rusqlite::Row<'_>) -> rusqlite::Result<ServerState> {
    Ok(ServerState {
        name: r.get(0)?,
        fingerprint: r.get(1)?,
        generation: r.get(2)?,
        complete: r.get(3)?,
        cursor: r.get(4)?,
        last_sync: r.get(5)?,
        last_full_sync: r.get(6)?,
        last_error: r.get(7)?,
        attributes: r.get(8)?,
        networks: r.get(9)?,
        skipped: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(uuid: &str, value: &str, ts: i64) -> Row {
        Row {
            uuid: uuid.into(),
            value: value.into(),
            kind: "ip-dst".into(),
            timestamp: ts,
            ..Row::default()
        }
    }

    fn live(store: &Store, name: &str) -> Vec<(String, String, i64)> {
        let mut out = Vec::new();
        store
            .each(name, |_, v, u, t| out.push((v.into(), u.into(), t)))
            .unwrap();
        out.sort();
        out
    }

    #[test]
    fn a_full_sync_becomes_live_only_when_finished() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        let g1 = s.begin_full("a", "f").unwrap();
        s.write("a", g1, &[row("u1", "1.2.3.4", 10)]).unwrap();
        s.finish_full("a", "f", g1, 10, 100).unwrap();
        let g2 = s.begin_full("a", "f").unwrap();
        s.write("a", g2, &[row("u2", "10.0.0.0/8", 20)]).unwrap();
        // Not finished (a crash here): the first generation is live.
        drop(s);
        let mut s = Store::open(dir.path()).unwrap();
        assert_eq!(live(&s, "a"), vec![("1.2.3.4".into(), "u1".into(), 10)]);
        s.drop_stale("a").unwrap();
        let g3 = s.begin_full("a", "f").unwrap();
        s.write("a", g3, &[row("u2", "10.0.0.0/8", 20)]).unwrap();
        s.finish_full("a", "f", g3, 20, 200).unwrap();
        assert_eq!(live(&s, "a"), vec![("10.0.0.0/8".into(), "u2".into(), 20)]);
        let st = s.server("a").unwrap().unwrap();
        assert_eq!((st.attributes, st.networks, st.cursor), (1, 1, 20));
        assert!(st.complete);
    }

    #[test]
    fn incremental_writes_merge_by_uuid() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        let g = s.begin_full("a", "f").unwrap();
        s.write(
            "a",
            g,
            &[row("u1", "1.2.3.4", 10), row("u2", "5.6.7.8", 10)],
        )
        .unwrap();
        s.finish_full("a", "f", g, 10, 100).unwrap();
        let replaced = s
            .write(
                "a",
                g,
                &[row("u1", "1.2.3.5", 30), row("u3", "9.9.9.9", 30)],
            )
            .unwrap();
        assert_eq!(
            replaced,
            vec![Some(("ip-dst".into(), "1.2.3.4".into())), None]
        );
        s.finish_incremental("a", 30, 130).unwrap();
        assert_eq!(
            s.remove("a", g, &["u9".into(), "u2".into()]).unwrap(),
            vec![("u2".to_owned(), "ip-dst".to_owned(), "5.6.7.8".to_owned())]
        );
        assert_eq!(
            live(&s, "a"),
            vec![
                ("1.2.3.5".into(), "u1".into(), 30),
                ("9.9.9.9".into(), "u3".into(), 30)
            ]
        );
        let st = s.server("a").unwrap().unwrap();
        assert_eq!((st.cursor, st.last_sync), (30, Some(130)));
        assert_eq!((st.attributes, st.networks), (2, 0));
        // Counts follow changes without a recount: an IP becoming a network.
        s.write("a", g, &[row("u3", "9.9.9.0/24", 40)]).unwrap();
        let st = s.server("a").unwrap().unwrap();
        assert_eq!((st.attributes, st.networks), (2, 1));
    }

    #[test]
    fn a_corrupt_file_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), b"this is not a database, it is text").unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert!(s.servers().unwrap().is_empty());
        let aside = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().contains("unreadable"));
        assert!(aside);
    }

    #[test]
    fn rows_for_a_value_include_composites() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        let g = s.begin_full("a", "f").unwrap();
        s.write(
            "a",
            g,
            &[
                row("u1", "1.2.3.4", 10),
                row("u2", "1.2.3.4|443", 10),
                row("u3", "evil.example|1.2.3.4", 10),
                row("u4", "1.2.3.44", 10),
            ],
        )
        .unwrap();
        s.finish_full("a", "f", g, 10, 100).unwrap();
        let mut got: Vec<String> = s
            .rows_for("a", &["1.2.3.4".into()])
            .unwrap()
            .into_iter()
            .map(|r| r.uuid)
            .collect();
        got.sort();
        assert_eq!(got, vec!["u1", "u2", "u3"]);
        // The stored-value index answers each part: no scan of the table.
        let mut st = s
            .conn
            .prepare(&format!("EXPLAIN QUERY PLAN {ROWS_FOR_VALUE}"))
            .unwrap();
        let plan: Vec<String> = st
            .query_map(params!["a", "1.2.3.4"], |r| r.get::<_, String>(3))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        let on_attributes: Vec<&String> =
            plan.iter().filter(|l| l.contains("attributes")).collect();
        assert_eq!(on_attributes.len(), 3, "{plan:?}");
        assert!(
            on_attributes.iter().all(|l| l.contains("attributes_by_")),
            "a part scans the table: {plan:?}"
        );
    }
}
