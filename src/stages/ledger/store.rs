//! The ledger on disk: `state_dir/ledger.sqlite` (WAL), written by the
//! runtime's ledger thread once a second, read by hunts.
//!
//! SQLite for the reasons the mirror's store gives (a flush lands whole,
//! a crash leaves the last flush, `wazuh-misp hunt` reads it beside the
//! daemon), and because a hunt is a range scan: `seen` is keyed by
//! [`super::key_of`], so a network's members and a domain's subdomains
//! are one `BETWEEN` on the primary key. The schema is versioned in
//! `meta`; a file of another version or that fails `quick_check` is set
//! aside (`ledger.sqlite.unreadable-<time>`) and the ledger starts empty.

use super::{key_of, Pending};
use crate::ops::sqlite;
use rusqlite::{params, Connection};
use std::path::{Path, PathBuf};

pub const FILE: &str = "ledger.sqlite";
pub const SCHEMA_VERSION: &str = "1";

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS seen(
        key BLOB PRIMARY KEY, value TEXT NOT NULL, first_seen INTEGER NOT NULL,
        last_seen INTEGER NOT NULL, count INTEGER NOT NULL, refs TEXT NOT NULL) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS seen_by_last ON seen(last_seen);
    CREATE TABLE IF NOT EXISTS hunted(key BLOB PRIMARY KEY, at INTEGER NOT NULL) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS hunted_by_at ON hunted(at);
    CREATE TABLE IF NOT EXISTS hunted_by_value(
        value_key BLOB NOT NULL, key BLOB NOT NULL, PRIMARY KEY(value_key, key)) WITHOUT ROWID;";

/// A value as the ledger holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Canonical text.
    pub value: String,
    pub first_seen: i64,
    pub last_seen: i64,
    pub count: u64,
    /// JSON objects ([`super::reference()`]): the first alert, then the
    /// latest ones.
    pub refs: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("ledger {path}: {source}")]
pub struct LedgerError {
    path: String,
    #[source]
    source: rusqlite::Error,
}

type Result<T> = std::result::Result<T, LedgerError>;

pub struct LedgerStore {
    conn: Connection,
    path: PathBuf,
}

/// What one flush changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub added: u64,
    pub updated: u64,
    pub evicted: u64,
    pub expired: u64,
}

impl LedgerStore {
    /// Opens (creating) the ledger in `dir`; an unusable file is set aside.
    pub fn open(dir: &Path) -> Result<LedgerStore> {
        let path = dir.join(FILE);
        let err = |source| LedgerError {
            path: path.display().to_string(),
            source,
        };
        let conn = sqlite::open_or_set_aside(
            &path,
            SCHEMA,
            SCHEMA_VERSION,
            "the retro ledger",
            "starting an empty one",
        )
        .map_err(err)?;
        // 8 MiB of page cache: the ledger's memory, whatever its size.
        conn.pragma_update(None, "cache_size", -8192).map_err(err)?;
        Ok(LedgerStore { conn, path })
    }

    /// An existing ledger, read-only (for `wazuh-misp hunt` beside the
    /// daemon). `None` if there is none.
    pub fn open_read_only(dir: &Path) -> Result<Option<LedgerStore>> {
        let path = dir.join(FILE);
        let conn = sqlite::open_read_only(&path).map_err(|source| LedgerError {
            path: path.display().to_string(),
            source,
        })?;
        Ok(conn.map(|conn| LedgerStore { conn, path }))
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> LedgerError + '_ {
        |source| LedgerError {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// Values the ledger holds.
    pub fn values(&self) -> Result<u64> {
        self.conn
            .query_row("SELECT count(*) FROM seen", [], |r| r.get::<_, i64>(0))
            .map(|n| n.max(0) as u64)
            .map_err(self.err())
    }

    /// Writes one flush in one transaction: new values inserted, known
    /// ones' last time, count and references updated (the first reference
    /// kept, then the latest, `refs_per_value` in all). Then drops what was
    /// last seen before `now - window_secs`, and the least recently seen
    /// beyond `max_values`.
    pub fn apply(
        &mut self,
        pending: Pending,
        refs_per_value: usize,
        now: i64,
        window_secs: i64,
        max_values: u64,
    ) -> Result<Applied> {
        let err = |source| LedgerError {
            path: self.path.display().to_string(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        let mut applied = Applied::default();
        {
            let mut bump = tx
                .prepare_cached(
                    "UPDATE seen SET last_seen = max(last_seen, ?2), count = count + ?3 WHERE key = ?1",
                )
                .map_err(err)?;
            let mut get = tx
                .prepare_cached("SELECT refs FROM seen WHERE key = ?1")
                .map_err(err)?;
            let mut set_refs = tx
                .prepare_cached("UPDATE seen SET refs = ?2 WHERE key = ?1")
                .map_err(err)?;
            let mut put = tx
                .prepare_cached(
                    "INSERT INTO seen(key, value, first_seen, last_seen, count, refs) VALUES(?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(err)?;
            for (observable, mut seen) in pending {
                let key = key_of(&observable);
                // An alert read again (after a kill -9, the bookmark is
                // behind what was noted) adds no reference and no count.
                let known: Vec<String> = match get.query_row([&key], |r| r.get::<_, String>(0)) {
                    Ok(old) => split(&old),
                    Err(rusqlite::Error::QueryReturnedNoRows) => Vec::new(),
                    Err(e) => return Err(err(e)),
                };
                let again = drop_known_alerts(&mut seen.refs, &known);
                seen.count = seen.count.saturating_sub(again);
                let changed = bump
                    .execute(params![key, seen.last, seen.count as i64])
                    .map_err(err)?;
                if changed == 0 {
                    let mut refs = seen.refs;
                    keep_first_and_latest(&mut refs, refs_per_value);
                    put.execute(params![
                        key,
                        observable.to_string(),
                        seen.first,
                        seen.last,
                        seen.count as i64,
                        join(&refs)
                    ])
                    .map_err(err)?;
                    applied.added += 1;
                    continue;
                }
                applied.updated += 1;
                if seen.refs.is_empty() {
                    continue;
                }
                let mut refs = known;
                refs.extend(seen.refs);
                keep_first_and_latest(&mut refs, refs_per_value);
                set_refs.execute(params![key, join(&refs)]).map_err(err)?;
            }
        }
        applied.expired = tx
            .execute("DELETE FROM seen WHERE last_seen < ?1", [now - window_secs])
            .map_err(err)? as u64;
        // Markers without a value (written before they were tied to one)
        // expire with the window, as they did.
        tx.execute(
            "DELETE FROM hunted WHERE at < ?1 AND key NOT IN (SELECT key FROM hunted_by_value)",
            [now - window_secs],
        )
        .map_err(err)?;
        let count: i64 = tx
            .query_row("SELECT count(*) FROM seen", [], |r| r.get(0))
            .map_err(err)?;
        let over = (count.max(0) as u64).saturating_sub(max_values);
        if over > 0 {
            applied.evicted = tx
                .execute(
                    "DELETE FROM seen WHERE key IN (SELECT key FROM seen ORDER BY last_seen LIMIT ?1)",
                    [over as i64],
                )
                .map_err(err)? as u64;
        }
        if applied.expired + applied.evicted > 0 {
            // The markers of values that left go with them.
            tx.execute(
                "DELETE FROM hunted WHERE key IN (SELECT key FROM hunted_by_value
                   WHERE value_key NOT IN (SELECT key FROM seen))",
                [],
            )
            .map_err(err)?;
            tx.execute(
                "DELETE FROM hunted_by_value WHERE value_key NOT IN (SELECT key FROM seen)",
                [],
            )
            .map_err(err)?;
        }
        tx.commit().map_err(err)?;
        Ok(applied)
    }

    /// The values whose keys lie in `[low, high]`, at most `limit`.
    pub fn range(&self, low: &[u8], high: &[u8], limit: usize) -> Result<Vec<Entry>> {
        let mut q = self
            .conn
            .prepare_cached(
                "SELECT value, first_seen, last_seen, count, refs FROM seen
                 WHERE key BETWEEN ?1 AND ?2 ORDER BY key LIMIT ?3",
            )
            .map_err(self.err())?;
        let rows = q
            .query_map(params![low, high, limit as i64], entry_of)
            .map_err(self.err())?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.err())
    }

    /// The values whose keys lie in `[low, high]`, in key order, one at a
    /// time (a wide network can match most of the ledger); `f` returns
    /// false to stop.
    pub fn each_in_range(
        &self,
        low: &[u8],
        high: &[u8],
        mut f: impl FnMut(Entry) -> Result<bool>,
    ) -> Result<()> {
        let mut q = self
            .conn
            .prepare_cached(
                "SELECT value, first_seen, last_seen, count, refs FROM seen
                 WHERE key BETWEEN ?1 AND ?2 ORDER BY key",
            )
            .map_err(self.err())?;
        let mut rows = q.query(params![low, high]).map_err(self.err())?;
        while let Some(r) = rows.next().map_err(self.err())? {
            if !f(entry_of(r).map_err(self.err())?)? {
                break;
            }
        }
        Ok(())
    }

    /// Values last seen at or after `since`, in key order, for a hunt of
    /// the whole mirror; `f` returns false to stop.
    pub fn each_since(&self, since: i64, mut f: impl FnMut(Entry) -> bool) -> Result<()> {
        let mut q = self
            .conn
            .prepare(
                "SELECT value, first_seen, last_seen, count, refs FROM seen WHERE last_seen >= ?1 ORDER BY key",
            )
            .map_err(self.err())?;
        let mut rows = q.query([since]).map_err(self.err())?;
        while let Some(r) = rows.next().map_err(self.err())? {
            if !f(entry_of(r).map_err(self.err())?) {
                break;
            }
        }
        Ok(())
    }

    /// Whether the hunt key (value, alert) was sent already.
    pub fn hunted(&self, key: &[u8; 16]) -> Result<bool> {
        self.conn
            .prepare_cached("SELECT 1 FROM hunted WHERE key = ?1")
            .and_then(|mut q| q.exists([&key[..]]))
            .map_err(self.err())
    }

    /// Records hunt keys as sent, each with the ledger key of the value
    /// it covers: a marker lives as long as its value's entry (and so its
    /// references), never less, so nothing is sent twice.
    pub fn mark_hunted(&mut self, marks: &[(Vec<u8>, [u8; 16])], now: i64) -> Result<()> {
        let err = |source| LedgerError {
            path: self.path.display().to_string(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        {
            let mut put = tx
                .prepare_cached("INSERT OR REPLACE INTO hunted(key, at) VALUES(?1, ?2)")
                .map_err(err)?;
            let mut by_value = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO hunted_by_value(value_key, key) VALUES(?1, ?2)",
                )
                .map_err(err)?;
            for (value_key, k) in marks {
                put.execute(params![&k[..], now]).map_err(err)?;
                by_value.execute(params![value_key, &k[..]]).map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }
}

fn entry_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    Ok(Entry {
        value: r.get(0)?,
        first_seen: r.get(1)?,
        last_seen: r.get(2)?,
        count: r.get::<_, i64>(3)?.max(0) as u64,
        refs: split(&r.get::<_, String>(4)?),
    })
}

/// Drops from `refs` the references of alerts `known` already holds, or
/// that `refs` holds twice. Returns how many it dropped.
fn drop_known_alerts(refs: &mut Vec<String>, known: &[String]) -> u64 {
    let mut seen: std::collections::HashSet<String> = known
        .iter()
        .map(|r| super::hunt::alert_id_of(r))
        .filter(|id| !id.is_empty())
        .collect();
    let before = refs.len();
    refs.retain(|r| {
        let id = super::hunt::alert_id_of(r);
        id.is_empty() || seen.insert(id)
    });
    (before - refs.len()) as u64
}

/// References kept: the first, then the latest, `n` in all.
fn keep_first_and_latest(refs: &mut Vec<String>, n: usize) {
    if refs.len() <= n {
        return;
    }
    if n == 0 {
        refs.clear();
        return;
    }
    let cut = refs.len() - (n - 1);
    refs.drain(1..cut);
}

fn join(refs: &[String]) -> String {
    format!("[{}]", refs.join(","))
}

fn split(text: &str) -> Vec<String> {
    serde_json::from_str::<Vec<&serde_json::value::RawValue>>(text)
        .map(|v| v.into_iter().map(|r| r.get().to_owned()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::super::{key_of, Seen};
    use super::*;
    use crate::observable::Observable;

    fn obs(s: &str) -> Observable {
        s.parse().unwrap()
    }

    fn pending(items: &[(&str, i64, &[&str])]) -> Pending {
        items
            .iter()
            .map(|(v, t, refs)| {
                (
                    obs(v),
                    Seen {
                        first: *t,
                        last: *t,
                        count: 1,
                        refs: refs.iter().map(|r| format!("{{\"n\":{r}}}")).collect(),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn flushes_merge_counts_and_keep_the_first_and_latest_references() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = LedgerStore::open(dir.path()).unwrap();
        let a = s
            .apply(
                pending(&[("185.220.101.4", 100, &["1", "2"])]),
                3,
                100,
                1000,
                10,
            )
            .unwrap();
        assert_eq!(a.added, 1);
        s.apply(
            pending(&[("185.220.101.4", 200, &["3", "4"])]),
            3,
            200,
            1000,
            10,
        )
        .unwrap();
        let key = key_of(&obs("185.220.101.4"));
        let e = &s.range(&key, &key, 10).unwrap()[0];
        assert_eq!((e.first_seen, e.last_seen, e.count), (100, 200, 2));
        assert_eq!(e.refs, ["{\"n\":1}", "{\"n\":3}", "{\"n\":4}"]);
        drop(s);
        // Reopened: what was flushed is there.
        let s = LedgerStore::open(dir.path()).unwrap();
        assert_eq!(s.values().unwrap(), 1);
    }

    #[test]
    fn the_least_recently_seen_are_evicted_and_the_old_expire() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = LedgerStore::open(dir.path()).unwrap();
        s.apply(
            pending(&[
                ("1.1.1.1", 10, &[]),
                ("1.1.1.2", 20, &[]),
                ("1.1.1.3", 30, &[]),
            ]),
            3,
            30,
            1000,
            2,
        )
        .map(|a| assert_eq!(a.evicted, 1))
        .unwrap();
        let all = s.range(b"4", &[b'4', 255, 255, 255, 255], 10).unwrap();
        let values: Vec<_> = all.iter().map(|e| e.value.as_str()).collect();
        assert_eq!(values, ["1.1.1.2", "1.1.1.3"]);
        let a = s.apply(Pending::default(), 3, 1025, 1000, 10).unwrap();
        assert_eq!(a.expired, 1);
        assert_eq!(s.values().unwrap(), 1);
    }

    #[test]
    fn a_network_and_a_domain_are_ranges_over_the_keys() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = LedgerStore::open(dir.path()).unwrap();
        s.apply(
            pending(&[
                ("203.0.113.7", 1, &[]),
                ("203.0.114.1", 1, &[]),
                ("cdn.evil.example", 1, &[]),
                ("evil.example", 1, &[]),
                ("notevil.example", 1, &[]),
            ]),
            3,
            1,
            1000,
            100,
        )
        .unwrap();
        let net: ipnet::IpNet = "203.0.113.0/24".parse().unwrap();
        let (lo, hi) = (
            key_of(&Observable::Ip(net.network())),
            key_of(&Observable::Ip(net.broadcast())),
        );
        let found = s.range(&lo, &hi, 10).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].value, "203.0.113.7");
        let p = crate::ledger::domain_prefix("evil.example");
        let mut end = p.clone();
        end.push(0xff);
        let found: Vec<_> = s
            .range(&p, &end, 10)
            .unwrap()
            .into_iter()
            .map(|e| e.value)
            .collect();
        assert_eq!(found, ["evil.example", "cdn.evil.example"]);
    }

    #[test]
    fn hunted_keys_are_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = LedgerStore::open(dir.path()).unwrap();
        assert!(!s.hunted(&[1; 16]).unwrap());
        s.mark_hunted(&[(key_of(&obs("1.2.3.4")), [1; 16])], 5)
            .unwrap();
        assert!(s.hunted(&[1; 16]).unwrap());
        assert!(!s.hunted(&[2; 16]).unwrap());
    }

    fn seen_by_alerts(t: i64, alerts: &[&str]) -> Seen {
        Seen {
            first: t,
            last: t,
            count: alerts.len() as u64,
            refs: alerts
                .iter()
                .map(|a| format!("{{\"alert\":{{\"id\":\"{a}\"}}}}"))
                .collect(),
        }
    }

    #[test]
    fn an_alert_read_again_adds_no_reference_and_no_count() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = LedgerStore::open(dir.path()).unwrap();
        let v = obs("45.133.1.23");
        s.apply(
            Pending::from_iter([(v.clone(), seen_by_alerts(100, &["a1", "a2"]))]),
            8,
            100,
            86400,
            100,
        )
        .unwrap();
        // After a kill -9 the bookmark was behind: a2 comes again, with a3,
        // and a3 twice in one flush.
        s.apply(
            Pending::from_iter([(v.clone(), seen_by_alerts(101, &["a2", "a3", "a3"]))]),
            8,
            101,
            86400,
            100,
        )
        .unwrap();
        let key = key_of(&v);
        let e = s.range(&key, &key, 1).unwrap().remove(0);
        assert_eq!(e.count, 3, "a1, a2 and a3 once each");
        let ids: Vec<String> = e
            .refs
            .iter()
            .map(|r| super::super::hunt::alert_id_of(r))
            .collect();
        assert_eq!(ids, ["a1", "a2", "a3"]);
        // A new value whose first flush holds one alert twice.
        let w = obs("45.133.1.24");
        s.apply(
            Pending::from_iter([(w.clone(), seen_by_alerts(102, &["b1", "b1"]))]),
            8,
            102,
            86400,
            100,
        )
        .unwrap();
        let key = key_of(&w);
        let e = s.range(&key, &key, 1).unwrap().remove(0);
        assert_eq!((e.count, e.refs.len()), (1, 1));
    }

    #[test]
    fn a_hunted_marker_lives_as_long_as_its_value() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = LedgerStore::open(dir.path()).unwrap();
        let (v, window) = (obs("45.133.1.23"), 100);
        s.apply(
            Pending::from_iter([(v.clone(), seen_by_alerts(1000, &["a1"]))]),
            8,
            1000,
            window,
            100,
        )
        .unwrap();
        s.mark_hunted(&[(key_of(&v), [7; 16])], 1000).unwrap();
        // Seen again and again: the value (and its first reference, the
        // hunted alert) stays past the window after the marker was set.
        for t in [1050, 1100, 1150, 1200] {
            s.apply(
                Pending::from_iter([(v.clone(), seen_by_alerts(t, &[]))]),
                8,
                t,
                window,
                100,
            )
            .unwrap();
        }
        assert!(
            s.hunted(&[7; 16]).unwrap(),
            "the marker outlives the window while its value stays"
        );
        // The value leaves: its marker with it.
        s.apply(
            Pending::from_iter([(obs("1.1.1.2"), seen_by_alerts(1400, &[]))]),
            8,
            1400,
            window,
            100,
        )
        .unwrap();
        assert!(s.range(&key_of(&v), &key_of(&v), 1).unwrap().is_empty());
        assert!(!s.hunted(&[7; 16]).unwrap());
    }
}
