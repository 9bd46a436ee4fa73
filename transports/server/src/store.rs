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
//! `locking_mode=EXCLUSIVE`, set before the first access: the process holds the file's lock
//! for its whole life, so a second server (or any other writer) on the same file is refused
//! at its startup rather than sharing it, and SQLite keeps the WAL index in heap memory
//! instead of a memory-mapped `-shm` file (no `-shm` file exists, so nothing can make one
//! unwritable under the process and crash it with SIGBUS).
//!
//! # When storage fails
//! Every write batch is settled exactly once, by this thread: committed (and confirmed) or
//! rolled back (and refused). A batch that is refused is dropped here, so it can never land
//! later. While healthy, a failing commit is retried until the storage timeout; once storage
//! is known to fail, each new group is tried once, so objects hear of the failure at once.
//! A group that fails is retried one object batch at a time, so a failure confined to one
//! object's records takes only that object out; when no batch of the group commits, a
//! tiny write of the thread's own (the probe) tells a failing file (every write refused,
//! `/healthz` 503) from failing objects (their writes refused, logged at a bounded rate,
//! the file healthy). While failing, an idle thread probes the
//! file with a tiny write every [`PROBE_INTERVAL`] so that recovery (space freed) is noticed
//! without traffic. [`StorageHealth`] carries the state to `/healthz`; the log says it once
//! per change and then at most every [`FAILING_LOG_INTERVAL`].
//!
//! A write that blocks inside the kernel (a hung network filesystem) cannot be bounded
//! from here: the batches behind it wait; SIGTERM still exits, bounded by the runtime.
//!
//! The job channel is unbounded, but bounded by construction: each object has at most one
//! batch in flight (the core's contract) and reads are request/reply.

use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use edgechat_core::ids::{IdSecret, ObjectId};
use edgechat_core::storage::{ListQuery, Value, Write, WriteBatch};
use rusqlite::{params, Connection, ErrorCode, OptionalExtension as _, MAIN_DB};
use tokio::sync::oneshot;

use crate::error::OpenError;
use crate::metrics::{inc, Metrics};

/// Most jobs taken into one group commit; bounds one transaction's size and latency.
const GROUP_JOBS_MAX: usize = 4_096;
/// Pause before retrying a failed commit (while healthy, within the storage timeout).
const COMMIT_RETRY_MS: u64 = 100;
/// While failing and idle, how often the file is probed for recovery.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// While failing, the longest the log stays silent about it.
const FAILING_LOG_INTERVAL: Duration = Duration::from_secs(30);
/// How long startup waits for another process's lock before refusing the file.
const STARTUP_BUSY_TIMEOUT: Duration = Duration::from_secs(1);
/// Length of the generated id secret.
const ID_SECRET_LEN_BYTES: usize = 32;
/// The tables of an edgechat database; a file with any other table is someone else's.
const TABLES: [&str; 2] = ["kv", "meta"];

/// Called once with the batch's fate: `true` once durable, `false` once refused (rolled
/// back: nothing of it was written, and nothing of it ever will be).
pub(crate) type OnSettled = Box<dyn FnOnce(bool) + Send>;

/// Whether storage currently fails, shared with whoever reports health.
#[derive(Debug, Default)]
pub(crate) struct StorageHealth {
    /// The failure (file and error) while writes fail; `None` while they succeed.
    failing: Mutex<Option<String>>,
}

impl StorageHealth {
    /// The failure, while storage fails.
    pub(crate) fn failing(&self) -> Option<String> {
        self.failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set(&self, failing: Option<String>) {
        *self
            .failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = failing;
    }
}

/// What the storage thread says when it stops.
#[derive(Debug, Clone, Default)]
pub(crate) struct StopReport {
    /// The failure, if storage was failing when it stopped.
    pub failing: Option<String>,
    /// Write batches refused since it began failing (never acknowledged to anyone).
    pub batches_refused: u64,
}

enum Job {
    Write {
        object: ObjectId,
        batch: WriteBatch,
        done: OnSettled,
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
        done: oneshot::Sender<StopReport>,
    },
}

/// The handle objects use to reach the storage thread.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    jobs: std_mpsc::Sender<Job>,
    health: Arc<StorageHealth>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job")
    }
}

/// Why a data file is refused at startup, in an operator's words.
fn refusal(error: &rusqlite::Error) -> &'static str {
    match error.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            "it is locked by another process (another edgechat server on the same file?)"
        }
        Some(ErrorCode::NotADatabase) => "it is not an SQLite database",
        Some(ErrorCode::DatabaseCorrupt) => "it is corrupt",
        Some(ErrorCode::ReadOnly | ErrorCode::CannotOpen | ErrorCode::PermissionDenied) => {
            "it cannot be written"
        }
        Some(ErrorCode::DiskFull) => "its disk is full",
        _ => "it cannot be used",
    }
}

impl Store {
    /// Opens (or creates) the database at `path` and starts the storage thread.
    ///
    /// # Errors
    /// If the file cannot be opened, written, locked for this process alone, or is not an
    /// intact edgechat database ([`OpenError::Refused`] names the file and the cause).
    pub(crate) fn open_path(
        path: &Path,
        metrics: Arc<Metrics>,
        timeout: Duration,
    ) -> Result<(Store, IdSecret, JoinHandle<()>), OpenError> {
        // SQLite would quietly fall back to read-only; the operator should hear why instead.
        if path.exists() {
            if let Err(source) = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
            {
                return Err(OpenError::Unwritable {
                    path: path.to_owned(),
                    source,
                });
            }
        }
        let conn = Connection::open(path).map_err(|source| OpenError::Open {
            path: path.to_owned(),
            source,
        })?;
        Store::open(conn, metrics, timeout)
    }

    /// Checks and initializes `conn` (a file in WAL mode, or an in-memory database), loads
    /// (or creates) the id secret and starts the storage thread; commits that cannot be
    /// made durable within `timeout` are refused.
    ///
    /// # Errors
    /// As [`Store::open_path`]; also if the OS has no randomness.
    pub(crate) fn open(
        conn: Connection,
        metrics: Arc<Metrics>,
        timeout: Duration,
    ) -> Result<(Store, IdSecret, JoinHandle<()>), OpenError> {
        let path = PathBuf::from(conn.path().unwrap_or_default());
        let refused = |error: rusqlite::Error| OpenError::Refused {
            path: path.clone(),
            why: refusal(&error),
            source: error,
        };
        check(&conn).map_err(&refused)?;
        if conn.is_readonly(MAIN_DB).map_err(&refused)? {
            return Err(OpenError::Refused {
                path,
                why: "it cannot be written",
                source: rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_READONLY),
                    Some("opened read-only".into()),
                ),
            });
        }
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))
            .map_err(&refused)?;
        // An in-memory database (tests, examples) keeps its journal in memory; a file must
        // be in WAL mode for the durability settings below to mean what they say.
        let in_memory = path.as_os_str().is_empty();
        if !(mode.eq_ignore_ascii_case("wal") || in_memory && mode.eq_ignore_ascii_case("memory")) {
            return Err(OpenError::NotWal {
                path: path.display().to_string(),
                mode,
            });
        }
        foreign_tables(&conn)
            .map_err(&refused)?
            .map_or(Ok(()), |table| {
                Err(OpenError::Foreign {
                    path: path.clone(),
                    table,
                })
            })?;
        conn.execute_batch(
            "PRAGMA synchronous=FULL;
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
        .map_err(&refused)?;
        // Every page must read back (`quick_check` reads them all once: proportional to the
        // file's size), the file must take a write (which also takes the exclusive lock for
        // the process's life), and the WAL starts empty.
        let integrity: String = conn
            .query_row("PRAGMA quick_check(1)", [], |row| row.get(0))
            .map_err(&refused)?;
        if integrity != "ok" {
            return Err(OpenError::Refused {
                path,
                why: "it is corrupt",
                source: rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                    Some(integrity),
                ),
            });
        }
        // Drawn before it is known to be needed, so that a missing OS source of randomness
        // is reported as such (no weaker source is used instead).
        let mut fresh_secret = [0u8; ID_SECRET_LEN_BYTES];
        getrandom::fill(&mut fresh_secret).map_err(OpenError::Randomness)?;
        let secret = load_or_create_secret(&conn, fresh_secret).map_err(&refused)?;
        probe(&conn).map_err(&refused)?;
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .map_err(&refused)?;
        conn.busy_timeout(timeout).map_err(&refused)?;
        let health = Arc::new(StorageHealth::default());
        let (jobs, rx) = std_mpsc::channel();
        let worker = Worker {
            conn,
            metrics,
            health: health.clone(),
            file: path.display().to_string(),
            timeout,
            failing: None,
            objects_logged_at: None,
            objects_refused_unlogged: 0,
        };
        let thread = std::thread::Builder::new()
            .name("edgechat-storage".into())
            .spawn(move || worker.run(&rx))
            .map_err(OpenError::Thread)?;
        Ok((Store { jobs, health }, secret, thread))
    }

    /// Whether storage fails now (for `/healthz`).
    pub(crate) fn health(&self) -> &StorageHealth {
        &self.health
    }

    /// Queues `batch` for `object`; `done` runs on the storage thread once it is settled.
    pub(crate) fn write(&self, object: ObjectId, batch: WriteBatch, done: OnSettled) {
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

    /// Settles everything queued so far, checkpoints the WAL (if storage works) and stops
    /// the thread; `None` if the thread had already stopped.
    pub(crate) async fn stop(&self) -> Option<StopReport> {
        let (done, rx) = oneshot::channel();
        self.jobs.send(Job::Stop { done }).ok()?;
        rx.await.ok()
    }
}

/// Sets the connection up before its first access and makes that access.
fn check(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(STARTUP_BUSY_TIMEOUT)?;
    // Before anything reads the file, so that no `-shm` file is ever mapped.
    let _: String = conn.query_row("PRAGMA locking_mode=EXCLUSIVE", [], |row| row.get(0))?;
    // The first read of the header: a foreign file fails here (`NotADatabase`).
    let _: i64 = conn.query_row("PRAGMA schema_version", [], |row| row.get(0))?;
    Ok(())
}

/// A table that an edgechat database does not have, if the file has one.
fn foreign_tables(conn: &Connection) -> rusqlite::Result<Option<String>> {
    let mut statement =
        conn.prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")?;
    let names = statement.query_map([], |row| row.get::<_, String>(0))?;
    for name in names {
        let name = name?;
        if !TABLES.contains(&name.as_str()) {
            return Ok(Some(name));
        }
    }
    Ok(None)
}

/// One tiny write transaction: whether the file takes writes now.
fn probe(conn: &Connection) -> rusqlite::Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis());
    let result = conn.execute(
        "INSERT INTO meta(key, value) VALUES('probed_at', ?1)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![now.to_string().into_bytes()],
    );
    rollback_leftover(conn);
    result.map(|_| ())
}

/// After a failed statement SQLite may leave a transaction open; nothing of it may land.
fn rollback_leftover(conn: &Connection) {
    if !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
}

fn load_or_create_secret(
    conn: &Connection,
    fresh: [u8; ID_SECRET_LEN_BYTES],
) -> rusqlite::Result<IdSecret> {
    let stored: Option<Vec<u8>> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'id_secret'",
            [],
            |row| row.get(0),
        )
        .optional()?;
    if let Some(secret) = stored {
        return Ok(IdSecret::new(secret));
    }
    conn.execute(
        "INSERT INTO meta(key, value) VALUES('id_secret', ?1)",
        params![&fresh[..]],
    )?;
    Ok(IdSecret::new(fresh.to_vec()))
}

/// While storage fails: since when, and what the log has said.
struct Failing {
    since: Instant,
    logged_at: Instant,
    batches_refused: u64,
}

/// A write job taken off the channel.
type Pending = (ObjectId, WriteBatch, OnSettled);

/// The storage thread's state.
struct Worker {
    conn: Connection,
    metrics: Arc<Metrics>,
    health: Arc<StorageHealth>,
    /// The data file, for the log.
    file: String,
    timeout: Duration,
    failing: Option<Failing>,
    /// When a refusal confined to some objects was last logged.
    objects_logged_at: Option<Instant>,
    /// Such refusals since then.
    objects_refused_unlogged: u64,
}

impl Worker {
    fn run(mut self, jobs: &std_mpsc::Receiver<Job>) {
        loop {
            // Ends when every `Store` is dropped or on `Stop`.
            let first = if self.failing.is_some() {
                match jobs.recv_timeout(PROBE_INTERVAL) {
                    Ok(job) => job,
                    Err(std_mpsc::RecvTimeoutError::Timeout) => {
                        self.probe();
                        continue;
                    }
                    Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
                }
            } else {
                match jobs.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                }
            };
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
                self.settle(writes);
            }
            let mut stop = None;
            for job in others {
                match job {
                    Job::List {
                        object,
                        query,
                        reply,
                    } => {
                        let listed = list(&self.conn, object, query);
                        self.count_error(listed.as_ref().err());
                        let _ = reply.send(listed);
                    }
                    Job::Get { object, key, reply } => {
                        let got = get(&self.conn, object, key);
                        self.count_error(got.as_ref().err());
                        let _ = reply.send(got);
                    }
                    Job::Stop { done } => stop = Some(done),
                    Job::Write { .. } => unreachable!("writes were taken out above"),
                }
            }
            if let Some(done) = stop {
                let report = self.close();
                let _ = done.send(report);
                return;
            }
        }
    }

    /// Commits every batch of the group and tells each object its batch's fate.
    fn settle(&mut self, writes: Vec<Pending>) {
        let started = Instant::now();
        let deadline = started + self.timeout;
        let error = loop {
            match commit(&mut self.conn, &writes) {
                Ok(()) => {
                    self.committed(writes.len(), started);
                    for (_, _, done) in writes {
                        done(true);
                    }
                    self.recovered();
                    return;
                }
                Err(error) => {
                    inc(&self.metrics.storage_errors);
                    rollback_leftover(&self.conn);
                    let retry = Duration::from_millis(COMMIT_RETRY_MS);
                    if self.failing.is_some() || Instant::now() + retry >= deadline {
                        break error;
                    }
                    std::thread::sleep(retry);
                }
            }
        };
        // One object's batch at a time: a failure that only concerns one object's records
        // refuses only that object's batch.
        let mut any_committed = false;
        let mut last_error = error;
        let mut refused = Vec::new();
        if writes.len() > 1 {
            for write in writes {
                let started = Instant::now();
                match commit(&mut self.conn, std::slice::from_ref(&write)) {
                    Ok(()) => {
                        self.committed(1, started);
                        any_committed = true;
                        (write.2)(true);
                    }
                    Err(error) => {
                        inc(&self.metrics.storage_errors);
                        rollback_leftover(&self.conn);
                        refused.push(write);
                        last_error = error;
                    }
                }
            }
        } else {
            refused.extend(writes);
        }
        // Whether the file fails or only these objects' writes do: other writes succeeded,
        // or the file takes a tiny write of its own. Decided before anyone hears of the
        // refusal, so that a sender who then asks `/healthz` sees the failure.
        let refused_objects: Vec<ObjectId> = refused.iter().map(|write| write.0).collect();
        if any_committed || (self.failing.is_none() && probe(&self.conn).is_ok()) {
            self.recovered();
            self.object_refused(&refused_objects, &last_error);
        } else {
            self.failed(&last_error);
        }
        for write in refused {
            self.refuse(write);
        }
    }

    /// Some objects' writes fail while the file works: said at most every
    /// `FAILING_LOG_INTERVAL` (with a count), as a whole-file failure is.
    fn object_refused(&mut self, objects: &[ObjectId], error: &rusqlite::Error) {
        self.objects_refused_unlogged += objects.len() as u64;
        let now = Instant::now();
        let due = self
            .objects_logged_at
            .is_none_or(|at| now.duration_since(at) >= FAILING_LOG_INTERVAL);
        if due && !objects.is_empty() {
            tracing::error!(
                file = %self.file,
                object = %objects[0],
                %error,
                batches_refused = self.objects_refused_unlogged,
                "writes of some objects refused (the file takes other writes)"
            );
            self.objects_logged_at = Some(now);
            self.objects_refused_unlogged = 0;
        }
    }

    fn committed(&self, batches: usize, started: Instant) {
        self.metrics
            .storage_commit_latency
            .observe(started.elapsed());
        inc(&self.metrics.storage_commits);
        self.metrics
            .storage_batches
            .fetch_add(batches as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// The batch was rolled back: its object hears so, and the batch is dropped here.
    fn refuse(&mut self, (_, _, done): Pending) {
        inc(&self.metrics.storage_commit_failures);
        if let Some(failing) = &mut self.failing {
            failing.batches_refused += 1;
        }
        done(false);
    }

    fn count_error(&self, error: Option<&rusqlite::Error>) {
        if let Some(error) = error {
            inc(&self.metrics.storage_errors);
            tracing::warn!(file = %self.file, %error, "storage read failed");
        }
    }

    /// While failing and idle: has the file recovered?
    fn probe(&mut self) {
        match probe(&self.conn) {
            Ok(()) => self.recovered(),
            Err(error) => {
                inc(&self.metrics.storage_errors);
                self.failed(&error);
            }
        }
    }

    /// A write failed: the first time, say so; then at most every `FAILING_LOG_INTERVAL`.
    fn failed(&mut self, error: &rusqlite::Error) {
        let now = Instant::now();
        self.health.set(Some(format!("{}: {error}", self.file)));
        match &mut self.failing {
            None => {
                tracing::error!(
                    file = %self.file,
                    %error,
                    "storage failing: writes are refused (senders are told) until it recovers"
                );
                self.metrics
                    .storage_failing
                    .store(1, std::sync::atomic::Ordering::Relaxed);
                self.failing = Some(Failing {
                    since: now,
                    logged_at: now,
                    batches_refused: 0,
                });
            }
            Some(failing) => {
                if now.duration_since(failing.logged_at) >= FAILING_LOG_INTERVAL {
                    failing.logged_at = now;
                    tracing::error!(
                        file = %self.file,
                        %error,
                        failing_for_s = now.duration_since(failing.since).as_secs(),
                        batches_refused = failing.batches_refused,
                        "storage still failing"
                    );
                }
            }
        }
    }

    /// A write succeeded: if storage was failing, say it recovered.
    fn recovered(&mut self) {
        if let Some(failing) = self.failing.take() {
            self.health.set(None);
            self.metrics
                .storage_failing
                .store(0, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(
                file = %self.file,
                failed_for_ms = failing.since.elapsed().as_millis(),
                batches_refused = failing.batches_refused,
                "storage recovered"
            );
        }
    }

    /// Folds the WAL back into the main file (if storage works) and closes it.
    fn close(self) -> StopReport {
        let report = StopReport {
            failing: self.health.failing(),
            batches_refused: self.failing.as_ref().map_or(0, |f| f.batches_refused),
        };
        if report.failing.is_none() {
            // So that a stopped server leaves one file.
            if let Err(error) = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);") {
                tracing::warn!(file = %self.file, %error, "final WAL checkpoint failed");
            }
        }
        drop(self.conn);
        tracing::info!(file = %self.file, "storage closed");
        report
    }
}

fn commit(conn: &mut Connection, writes: &[Pending]) -> rusqlite::Result<()> {
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
        let timeout = Duration::from_secs(5);
        let (store, secret, thread) = Store::open_path(&path, metrics.clone(), timeout).unwrap();
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
                Box::new(move |durable| {
                    assert!(durable);
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
        let (store, again, thread) = Store::open_path(&path, metrics, timeout).unwrap();
        let minted = ObjectId::mint_private(Namespace::Room, [3; 16], &secret);
        assert!(ObjectId::parse_private(Namespace::Room, &minted.to_hex(), &again).is_ok());
        store.stop().await;
        thread.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
