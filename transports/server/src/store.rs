//! SQLite storage: one file, one ordered key-value table for every object, group commit.
//!
//! One thread owns the connection. Objects hand it write batches over a channel; it takes
//! everything queued, commits it in ONE transaction (one fsync for many batches, from many
//! objects), and only then confirms each batch to its object. Reads (restores) go through the
//! same thread, after the writes queued with them, so a read never misses a confirmed write.
//!
//! # Durability settings
//! `journal_mode=WAL` with `synchronous=FULL`: every commit fsyncs the WAL before the batch
//! is confirmed, so a message a client has seen survives not only `kill -9` (which `NORMAL`
//! would also survive, the WAL being in the page cache) but also a power cut or kernel panic,
//! which `NORMAL` may roll back. That fsync is what group commit amortizes: under load one
//! fsync covers every batch that queued up during the previous one.
//!
//! The job channel is unbounded, but bounded by construction: each object has at most one
//! batch in flight (the core's contract) and reads are request/reply.

use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use edgechat_core::ids::{IdSecret, ObjectId};
use edgechat_core::storage::{ListQuery, Value, Write, WriteBatch};
use rusqlite::{params, Connection, OptionalExtension as _};
use tokio::sync::oneshot;

use crate::error::OpenError;
use crate::metrics::{inc, Metrics};

/// Most jobs taken into one group commit; bounds one transaction's size and latency.
const GROUP_JOBS_MAX: usize = 4_096;
/// Pause before retrying a failed commit.
const COMMIT_RETRY_MS: u64 = 100;
/// Length of the generated id secret.
const ID_SECRET_LEN_BYTES: usize = 32;

/// Called once a batch is durable.
pub(crate) type OnDurable = Box<dyn FnOnce() + Send>;

enum Job {
    Write {
        object: ObjectId,
        batch: WriteBatch,
        done: OnDurable,
    },
    List {
        object: ObjectId,
        query: ListQuery,
        reply: oneshot::Sender<rusqlite::Result<Vec<(String, Value)>>>,
    },
    Get {
        object: ObjectId,
        key: &'static str,
        reply: oneshot::Sender<rusqlite::Result<Option<Value>>>,
    },
    Stop {
        done: oneshot::Sender<()>,
    },
}

/// The handle objects use to reach the storage thread.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    jobs: std_mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job")
    }
}

impl Store {
    /// Opens (or creates) the database at `path` and starts the storage thread.
    ///
    /// # Errors
    /// If the file cannot be opened or initialized.
    pub(crate) fn open_path(
        path: &Path,
        metrics: Arc<Metrics>,
    ) -> Result<(Store, IdSecret, JoinHandle<()>), OpenError> {
        let conn = Connection::open(path).map_err(|source| OpenError::Open {
            path: path.to_owned(),
            source,
        })?;
        Store::open(conn, metrics)
    }

    /// Initializes the schema on `conn` (a file in WAL mode, or an in-memory database),
    /// loads (or creates) the id secret and starts the storage thread.
    ///
    /// # Errors
    /// If the database refuses WAL mode or cannot be initialized, or the OS has no randomness.
    pub(crate) fn open(
        mut conn: Connection,
        metrics: Arc<Metrics>,
    ) -> Result<(Store, IdSecret, JoinHandle<()>), OpenError> {
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))
            .map_err(OpenError::Schema)?;
        // An in-memory database (tests, examples) keeps its journal in memory; a file must
        // be in WAL mode for the durability settings below to mean what they say.
        let in_memory = conn.path().is_none_or(str::is_empty);
        if !(mode.eq_ignore_ascii_case("wal") || in_memory && mode.eq_ignore_ascii_case("memory")) {
            return Err(OpenError::NotWal {
                path: conn.path().unwrap_or_default().into(),
                mode,
            });
        }
        conn.execute_batch(
            "PRAGMA synchronous=FULL;
             PRAGMA busy_timeout=5000;
             CREATE TABLE IF NOT EXISTS kv(
                 object BLOB NOT NULL,
                 key TEXT NOT NULL,
                 value TEXT NOT NULL,
                 PRIMARY KEY(object, key)
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS meta(
                 key TEXT PRIMARY KEY NOT NULL,
                 value BLOB NOT NULL
             ) WITHOUT ROWID;",
        )
        .map_err(OpenError::Schema)?;
        let secret = load_or_create_secret(&mut conn)?;
        let (jobs, rx) = std_mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("edgechat-storage".into())
            .spawn(move || run(conn, rx, &metrics))
            .map_err(OpenError::Thread)?;
        Ok((Store { jobs }, secret, thread))
    }

    /// Queues `batch` for `object`; `done` runs on the storage thread once it is durable.
    pub(crate) fn write(&self, object: ObjectId, batch: WriteBatch, done: OnDurable) {
        // A send error means the storage thread has stopped (shutdown); the batch is then
        // never confirmed, exactly as if the process had stopped before committing it.
        let _ = self.jobs.send(Job::Write {
            object,
            batch,
            done,
        });
    }

    /// The newest `query.limit` keys under `query.prefix`, in ascending key order.
    pub(crate) async fn list(
        &self,
        object: ObjectId,
        query: ListQuery,
    ) -> anyhow::Result<Vec<(String, Value)>> {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Job::List {
                object,
                query,
                reply,
            })
            .map_err(|_| anyhow::anyhow!("storage has stopped"))?;
        Ok(rx.await.context("storage has stopped")??)
    }

    /// The value at `key`.
    pub(crate) async fn get(
        &self,
        object: ObjectId,
        key: &'static str,
    ) -> anyhow::Result<Option<Value>> {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Job::Get { object, key, reply })
            .map_err(|_| anyhow::anyhow!("storage has stopped"))?;
        Ok(rx.await.context("storage has stopped")??)
    }

    /// Commits everything queued so far, checkpoints the WAL and stops the thread.
    pub(crate) async fn stop(&self) {
        let (done, rx) = oneshot::channel();
        if self.jobs.send(Job::Stop { done }).is_ok() {
            let _ = rx.await;
        }
    }
}

fn load_or_create_secret(conn: &mut Connection) -> Result<IdSecret, OpenError> {
    let stored: Option<Vec<u8>> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'id_secret'",
            [],
            |row| row.get(0),
        )
        .optional()
        .map_err(OpenError::Schema)?;
    if let Some(secret) = stored {
        return Ok(IdSecret::new(secret));
    }
    let mut secret = [0u8; ID_SECRET_LEN_BYTES];
    getrandom::fill(&mut secret).map_err(OpenError::Randomness)?;
    conn.execute(
        "INSERT INTO meta(key, value) VALUES('id_secret', ?1)",
        params![&secret[..]],
    )
    .map_err(OpenError::Schema)?;
    Ok(IdSecret::new(secret.to_vec()))
}

fn run(mut conn: Connection, jobs: std_mpsc::Receiver<Job>, metrics: &Metrics) {
    // Ends when every `Store` is dropped or on `Stop`.
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < GROUP_JOBS_MAX {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let mut writes = Vec::new();
        let mut others = Vec::new();
        for job in group {
            match job {
                Job::Write {
                    object,
                    batch,
                    done,
                } => writes.push((object, batch, done)),
                other => others.push(other),
            }
        }
        if !writes.is_empty() {
            commit_until_done(&mut conn, &writes, metrics);
            for (_, _, done) in writes {
                done();
            }
        }
        let mut stop = None;
        for job in others {
            match job {
                Job::List {
                    object,
                    query,
                    reply,
                } => {
                    let _ = reply.send(list(&conn, object, query));
                }
                Job::Get { object, key, reply } => {
                    let _ = reply.send(get(&conn, object, key));
                }
                Job::Stop { done } => stop = Some(done),
                Job::Write { .. } => unreachable!("writes were taken out above"),
            }
        }
        if let Some(done) = stop {
            // Fold the WAL back into the main file so a stopped server leaves one file.
            if let Err(error) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);") {
                tracing::warn!(%error, "final WAL checkpoint failed");
            }
            drop(conn);
            tracing::info!("storage flushed and closed");
            let _ = done.send(());
            return;
        }
    }
}

/// Commits every batch in one transaction, retrying until it succeeds.
///
/// Nothing is confirmed before the commit, so while storage fails (disk full, IO error)
/// clients stall rather than see messages that could be lost.
fn commit_until_done(
    conn: &mut Connection,
    writes: &[(ObjectId, WriteBatch, OnDurable)],
    metrics: &Metrics,
) {
    loop {
        let started = Instant::now();
        match commit(conn, writes) {
            Ok(()) => {
                metrics.storage_commit_latency.observe(started.elapsed());
                inc(&metrics.storage_commits);
                metrics
                    .storage_batches
                    .fetch_add(writes.len() as u64, std::sync::atomic::Ordering::Relaxed);
                return;
            }
            Err(error) => {
                inc(&metrics.storage_errors);
                tracing::error!(%error, batches = writes.len(), "commit failed; retrying");
                std::thread::sleep(Duration::from_millis(COMMIT_RETRY_MS));
            }
        }
    }
}

fn commit(
    conn: &mut Connection,
    writes: &[(ObjectId, WriteBatch, OnDurable)],
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut put = tx.prepare_cached(
            "INSERT INTO kv(object, key, value) VALUES(?1, ?2, ?3)
             ON CONFLICT(object, key) DO UPDATE SET value = excluded.value",
        )?;
        let mut delete = tx.prepare_cached("DELETE FROM kv WHERE object = ?1 AND key = ?2")?;
        for (object, batch, _) in writes {
            let object = &object.as_bytes()[..];
            for write in &batch.writes {
                match write {
                    Write::Put { key, value } => {
                        put.execute(params![object, key, &**value])?;
                    }
                    Write::Delete { key } => {
                        delete.execute(params![object, key])?;
                    }
                }
            }
        }
    }
    tx.commit()
}

fn list(
    conn: &Connection,
    object: ObjectId,
    query: ListQuery,
) -> rusqlite::Result<Vec<(String, Value)>> {
    let mut statement = conn.prepare_cached(
        "SELECT key, value FROM kv WHERE object = ?1 AND key >= ?2 AND key < ?3
         ORDER BY key DESC LIMIT ?4",
    )?;
    let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
    let rows = statement.query_map(
        params![
            &object.as_bytes()[..],
            query.prefix,
            prefix_upper_bound(query.prefix),
            limit
        ],
        |row| {
            let key: String = row.get(0)?;
            let value: String = row.get(1)?;
            Ok((key, Value::from(value)))
        },
    )?;
    let mut newest = rows.collect::<rusqlite::Result<Vec<_>>>()?;
    newest.reverse();
    Ok(newest)
}

fn get(conn: &Connection, object: ObjectId, key: &str) -> rusqlite::Result<Option<Value>> {
    conn.prepare_cached("SELECT value FROM kv WHERE object = ?1 AND key = ?2")?
        .query_row(params![&object.as_bytes()[..], key], |row| {
            row.get::<_, String>(0)
        })
        .optional()
        .map(|value| value.map(Value::from))
}

/// The smallest string greater than every string that starts with `prefix`.
fn prefix_upper_bound(prefix: &str) -> String {
    // The core's key prefixes are ASCII constants whose last byte is below 0x7f.
    let mut bytes = prefix.as_bytes().to_vec();
    let last = bytes.last_mut().expect("key prefixes are not empty");
    assert!(*last < 0x7f, "key prefixes are ASCII");
    *last += 1;
    String::from_utf8(bytes).expect("ASCII prefix")
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgechat_core::ids::Namespace;
    use edgechat_core::storage::{keys, BatchId};

    #[tokio::test]
    async fn writes_group_commit_and_read_back_per_object() {
        let dir = std::env::temp_dir().join(format!("edgechat-store-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("unit.db");
        let _ = std::fs::remove_file(&path);
        let metrics = Arc::new(Metrics::default());
        let (store, secret, thread) = Store::open_path(&path, metrics.clone()).unwrap();
        let a = ObjectId::from_name(Namespace::Room, "a");
        let b = ObjectId::from_name(Namespace::Room, "b");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for (object, id) in [(a, 1), (a, 2), (b, 1)] {
            let tx = tx.clone();
            let batch = WriteBatch {
                id: BatchId(id),
                writes: vec![Write::Put {
                    key: keys::message(id),
                    value: Value::from(format!("{object:?}{id}")),
                }],
            };
            store.write(
                object,
                batch,
                Box::new(move || {
                    let _ = tx.send(id);
                }),
            );
        }
        for _ in 0..3 {
            rx.recv().await.unwrap();
        }
        let query = ListQuery {
            prefix: keys::MESSAGE_PREFIX,
            limit: 1,
        };
        let newest_a = store.list(a, query).await.unwrap();
        assert_eq!(newest_a.len(), 1);
        assert_eq!(newest_a[0].0, keys::message(2));
        assert_eq!(store.list(b, query).await.unwrap()[0].0, keys::message(1));
        assert_eq!(store.get(a, keys::COUNTER_VALUE).await.unwrap(), None);
        store.stop().await;
        thread.join().unwrap();
        // The secret survives a reopen.
        let (store, again, thread) = Store::open_path(&path, metrics).unwrap();
        let minted = ObjectId::mint_private(Namespace::Room, [3; 16], &secret);
        assert!(ObjectId::parse_private(Namespace::Room, &minted.to_hex(), &again).is_ok());
        store.stop().await;
        thread.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
