//! Real storage faults against the real `edgechat` binary over real sockets: a full
//! filesystem (a small tmpfs, filled), a read-only filesystem, the file locked by another
//! process, a corrupt page, a corrupt record in one room; SIGTERM during each.
//!
//! The filesystem faults need `mount` (root, as in the project's containers). Without it
//! those tests say so on stderr and pass vacuously; the others need nothing special.
//!
//! Every wait is bounded by a generous limit ([`WAIT`]); nothing asserts a tight timing.
//! The times printed (`measured:` lines, see `--nocapture`) are what the report quotes.

#![cfg(unix)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{admin_post, full_history, get, metric, DataDir, Event, TcpClient, WAIT};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

const STORAGE_UNAVAILABLE: &str = "Message not sent: storage unavailable.";
/// The storage timeout the tests run the server with (short, so that tests are quick).
const STORAGE_TIMEOUT_MS: &str = "1000";
/// Exit code of a data file refused at startup.
const EXIT_STORAGE_REFUSED: i32 = 4;
/// Exit code of a stop that could not write everything.
const EXIT_UNWRITTEN: i32 = 3;

/// A small tmpfs mounted for one test, unmounted when dropped.
struct TmpFs {
    dir: DataDir,
}

impl TmpFs {
    /// `None` (with a note on stderr) where `mount` is not allowed.
    fn mount(tag: &str, size: &str) -> Option<TmpFs> {
        let dir = DataDir::new(tag);
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir.0)
            .stderr(Stdio::null())
            .status();
        if status.is_ok_and(|status| status.success()) {
            Some(TmpFs { dir })
        } else {
            eprintln!("SKIPPED: cannot mount a tmpfs here (needs root); {tag} not exercised");
            None
        }
    }

    fn db(&self) -> PathBuf {
        self.dir.db()
    }

    fn remount(&self, mode: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(&self.dir.0)
            .status()
            .expect("run mount");
        assert!(status.success(), "remount {mode}");
    }

    /// Fills the filesystem to the last byte with a file; returns it (delete it to free).
    fn fill(&self) -> PathBuf {
        use std::io::Write as _;
        let path = self.dir.0.join("filler");
        let mut file = std::fs::File::create(&path).expect("create the filler");
        let chunk = vec![0u8; 4096];
        while file.write_all(&chunk).is_ok() {}
        // The last partial chunk: byte by byte, until not even one fits.
        while file.write_all(&[0]).is_ok() {}
        let _ = file.sync_all();
        path
    }
}

impl Drop for TmpFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir.0)
            .status();
    }
}

/// The server binary, its address and everything it logs.
struct Server {
    child: Child,
    addr: std::net::SocketAddr,
    log: Arc<Mutex<String>>,
}

fn command(db: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_edgechat"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(db)
        .args(["--storage-timeout-ms", STORAGE_TIMEOUT_MS])
        .args([
            "--rate-limit-cost-ms",
            "1",
            "--rate-limit-grace-ms",
            "600000",
        ])
        .args(["--admin-token", common::ADMIN_TOKEN])
        .env("EDGECHAT_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Collects a child's stderr in the background (the pipe never fills).
fn collect_log(child: &mut Child) -> Arc<Mutex<String>> {
    let log = Arc::new(Mutex::new(String::new()));
    let stderr = child.stderr.take().unwrap();
    let sink = log.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut log = sink.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    log
}

impl Server {
    async fn start(db: &Path) -> Server {
        let mut child = command(db).spawn().expect("spawn the server binary");
        let log = collect_log(&mut child);
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        let read = tokio::time::timeout(WAIT, BufReader::new(stdout).read_line(&mut line)).await;
        assert!(
            matches!(read, Ok(Ok(n)) if n > 0),
            "the server prints its address; log:\n{}",
            log.lock().unwrap()
        );
        let addr = line.trim().rsplit("://").next().unwrap().parse().unwrap();
        Server { child, addr, log }
    }

    /// SIGTERM; the exit code (within [`WAIT`] plus the shutdown's own bounds) and how long
    /// it took.
    async fn terminate(mut self) -> (i32, Duration, String) {
        let started = Instant::now();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().unwrap().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = tokio::time::timeout(WAIT * 3, self.child.wait())
            .await
            .expect("SIGTERM exits in bounded time")
            .unwrap();
        // Let the log collector read the last lines.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let log = self.log.lock().unwrap().clone();
        (exit.code().expect("an exit code"), started.elapsed(), log)
    }
}

/// Runs the binary on `db` expecting it to refuse to start: its exit code and log.
async fn refused_start(db: &Path) -> (i32, String) {
    let mut child = command(db).spawn().expect("spawn the server binary");
    let log = collect_log(&mut child);
    let exit = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("a refused start exits quickly")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let log = log.lock().unwrap().clone();
    (exit.code().expect("an exit code"), log)
}

/// What became of one message.
enum Fate {
    Acknowledged(Value),
    Refused,
}

/// Sends `text` and reads until its echo or the storage error.
async fn send(client: &mut TcpClient, text: &str) -> Fate {
    client.send(json!({ "message": text })).await;
    loop {
        let frame = client.frame().await;
        if frame.get("error").and_then(Value::as_str) == Some(STORAGE_UNAVAILABLE) {
            return Fate::Refused;
        }
        assert!(frame.get("error").is_none(), "unexpected error {frame}");
        if frame["message"] == text {
            return Fate::Acknowledged(frame);
        }
    }
}

async fn healthz(addr: std::net::SocketAddr) -> (u16, String) {
    let response = get(addr, "/healthz").await;
    (response.status, response.body)
}

/// Waits (bounded) until `/healthz` answers `status`; returns how long it took.
async fn wait_for_health(addr: std::net::SocketAddr, status: u16) -> Duration {
    let started = Instant::now();
    loop {
        if healthz(addr).await.0 == status {
            return started.elapsed();
        }
        assert!(started.elapsed() < WAIT, "/healthz never answered {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The room's history, oldest first, as (id, text).
async fn history(addr: std::net::SocketAddr, room: &str) -> Vec<(u64, String)> {
    let mut messages: Vec<(u64, String)> = full_history(addr, room)
        .await
        .iter()
        .map(|m| {
            (
                m["id"].as_u64().unwrap(),
                m["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    messages.reverse();
    messages
}

fn as_history(acknowledged: &[Value]) -> Vec<(u64, String)> {
    acknowledged
        .iter()
        .map(|m| {
            (
                m["id"].as_u64().unwrap(),
                m["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Ids 1..=n, no gap, no duplicate.
fn assert_consecutive(history: &[(u64, String)]) {
    let ids: Vec<u64> = history.iter().map(|(id, _)| *id).collect();
    let expected: Vec<u64> = (1..=ids.len() as u64).collect();
    assert_eq!(ids, expected, "ids are consecutive from 1");
}

/// Chats in `room` as `name` until a message is refused (at most `max` tries): the
/// acknowledged ones and how long the refused one took to be answered.
async fn chat_until_refused(
    client: &mut TcpClient,
    prefix: &str,
    max: usize,
    acknowledged: &mut Vec<Value>,
) -> Duration {
    for n in 0..max {
        let started = Instant::now();
        match send(client, &format!("{prefix} {n}")).await {
            Fate::Acknowledged(frame) => acknowledged.push(frame),
            Fate::Refused => return started.elapsed(),
        }
    }
    panic!("no message was refused in {max} tries on a full filesystem");
}

#[tokio::test]
async fn full_filesystem_refuses_visibly_and_recovers_without_gaps() {
    let Some(fs) = TmpFs::mount("full", "1m") else {
        return;
    };
    let server = Server::start(&fs.db()).await;
    let addr = server.addr;
    let mut ada = TcpClient::connect(addr, "full").await;
    ada.join("ada").await;
    let mut watcher = TcpClient::connect(addr, "full").await;
    watcher.join("watcher").await;
    let mut acknowledged = Vec::new();
    let Fate::Acknowledged(first) = send(&mut ada, "before").await else {
        panic!("a healthy disk takes the first message");
    };
    acknowledged.push(first);
    assert_eq!(healthz(addr).await.0, 200);

    let filler = fs.fill();
    let refused_after = chat_until_refused(&mut ada, "filling", 500, &mut acknowledged).await;
    println!("measured: full filesystem: first refusal answered in {refused_after:?}");

    // Operators see it: /healthz names the file, the metrics count it.
    let (status, body) = healthz(addr).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("Storage failing: "), "{body}");
    assert!(body.contains(&fs.db().display().to_string()), "{body}");
    assert!(metric(addr, "edgechat_storage_commit_failures_total").await >= 1);
    assert!(metric(addr, "edgechat_messages_refused_storage_total").await >= 1);
    assert_eq!(metric(addr, "edgechat_storage_failing").await, 1);

    // While failing: every message is refused at once, publish is 503, reads still work,
    // a join into a room that was not resident works, and its messages are refused too.
    let started = Instant::now();
    assert!(matches!(send(&mut ada, "while full").await, Fate::Refused));
    println!(
        "measured: full filesystem: refusal while failing in {:?}",
        started.elapsed()
    );
    let publish = admin_post(addr, "/api/room/full/messages", r#"{"message":"pub"}"#).await;
    assert_eq!(
        (publish.status, publish.body.as_str()),
        (503, STORAGE_UNAVAILABLE)
    );
    let counter = common::http(addr, "POST", "/api/counter/c/increment", &[], "").await;
    assert_eq!(counter.status, 503, "{}", counter.body);
    assert_eq!(history(addr, "full").await, as_history(&acknowledged));
    let mut bob = TcpClient::connect(addr, "elsewhere").await;
    bob.join("bob").await;
    assert!(matches!(
        send(&mut bob, "bob while full").await,
        Fate::Refused
    ));

    // Free the space: recovery without traffic (the storage thread probes), then ids go on
    // from the last acknowledged one.
    std::fs::remove_file(filler).unwrap();
    let recovered_in = wait_for_health(addr, 200).await;
    println!("measured: full filesystem: /healthz 200 again {recovered_in:?} after freeing space");
    assert_eq!(metric(addr, "edgechat_storage_failing").await, 0);
    let Fate::Acknowledged(after) = send(&mut ada, "after").await else {
        panic!("recovered storage takes messages");
    };
    assert_eq!(after["id"].as_u64(), Some(acknowledged.len() as u64 + 1));
    acknowledged.push(after);
    let stored = history(addr, "full").await;
    assert_eq!(
        stored,
        as_history(&acknowledged),
        "history is exactly the acknowledged"
    );
    assert_consecutive(&stored);

    // The watcher saw exactly the acknowledged messages, nothing refused.
    let mut seen = Vec::new();
    while seen.len() < acknowledged.len() {
        match watcher.next().await {
            Event::Frame(frame) if frame.get("message").is_some() => seen.push(frame),
            Event::Frame(_) => {}
            Event::Closed(close) => panic!("watcher closed: {close:?}"),
        }
    }
    assert_eq!(as_history(&seen), as_history(&acknowledged));

    drop((ada, bob, watcher));
    let (code, took, log) = server.terminate().await;
    println!("measured: full filesystem (recovered): SIGTERM exit {code} in {took:?}");
    assert_eq!(code, 0, "{log}");
    // Said once per state change, naming the file.
    assert_eq!(log.matches("storage failing").count(), 1, "{log}");
    assert_eq!(log.matches("storage recovered").count(), 1, "{log}");
    assert!(log.contains(&fs.db().display().to_string()));
}

#[tokio::test]
async fn sigterm_while_the_filesystem_is_full_exits_3_and_loses_nothing_acknowledged() {
    let Some(fs) = TmpFs::mount("fullterm", "1m") else {
        return;
    };
    let server = Server::start(&fs.db()).await;
    let mut ada = TcpClient::connect(server.addr, "term").await;
    ada.join("ada").await;
    let mut acknowledged = Vec::new();
    let filler = fs.fill();
    chat_until_refused(&mut ada, "m", 500, &mut acknowledged).await;
    drop(ada);
    let (code, took, log) = server.terminate().await;
    println!("measured: full filesystem: SIGTERM exit {code} in {took:?}");
    assert_eq!(code, EXIT_UNWRITTEN, "{log}");
    assert!(log.contains("not everything could be written"), "{log}");
    assert!(log.contains(&fs.db().display().to_string()), "{log}");

    std::fs::remove_file(filler).unwrap();
    let server = Server::start(&fs.db()).await;
    let stored = history(server.addr, "term").await;
    assert_eq!(stored, as_history(&acknowledged));
    assert_consecutive(&stored);
    let (code, _, log) = server.terminate().await;
    assert_eq!(code, 0, "{log}");
}

#[tokio::test]
async fn a_read_only_filesystem_is_refused_at_startup_naming_the_file() {
    let Some(fs) = TmpFs::mount("readonly", "4m") else {
        return;
    };
    let server = Server::start(&fs.db()).await;
    let mut ada = TcpClient::connect(server.addr, "ro").await;
    ada.join("ada").await;
    let Fate::Acknowledged(kept) = send(&mut ada, "kept").await else {
        panic!("a writable file takes messages");
    };
    drop(ada);
    let (code, _, log) = server.terminate().await;
    assert_eq!(code, 0, "{log}");

    fs.remount("ro");
    let started = Instant::now();
    let (code, log) = refused_start(&fs.db()).await;
    println!(
        "measured: read-only filesystem: refused at startup (exit {code}) in {:?}",
        started.elapsed()
    );
    assert_eq!(code, EXIT_STORAGE_REFUSED, "{log}");
    assert!(log.contains(&fs.db().display().to_string()), "{log}");
    assert!(log.contains("cannot be written"), "{log}");

    fs.remount("rw");
    let server = Server::start(&fs.db()).await;
    assert_eq!(history(server.addr, "ro").await, as_history(&[kept]));
    let (code, _, log) = server.terminate().await;
    assert_eq!(code, 0, "{log}");
}

#[tokio::test]
async fn a_file_locked_by_another_process_or_server_is_refused() {
    let dir = DataDir::new("locked");
    // Another process (this test) holds the database's write lock.
    let holder = rusqlite::Connection::open(dir.db()).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE;").unwrap();
    let started = Instant::now();
    let (code, log) = refused_start(&dir.db()).await;
    println!(
        "measured: file locked by another process: refused at startup (exit {code}) in {:?}",
        started.elapsed()
    );
    assert_eq!(code, EXIT_STORAGE_REFUSED, "{log}");
    assert!(log.contains(&dir.db().display().to_string()), "{log}");
    assert!(log.contains("locked by another process"), "{log}");
    holder.execute_batch("ROLLBACK;").unwrap();
    drop(holder);

    // Released: the server starts; a second server on the same file is refused, and no
    // other process can take the lock while the first runs.
    let server = Server::start(&dir.db()).await;
    let (code, log) = refused_start(&dir.db()).await;
    assert_eq!(code, EXIT_STORAGE_REFUSED, "{log}");
    assert!(log.contains("locked by another process"), "{log}");
    let intruder = rusqlite::Connection::open(dir.db()).unwrap();
    intruder.busy_timeout(Duration::from_millis(200)).unwrap();
    assert!(intruder.execute_batch("BEGIN EXCLUSIVE; COMMIT;").is_err());
    drop(intruder);
    // No -shm file is mapped (the WAL index lives in the process's heap).
    let shm = PathBuf::from(format!("{}-shm", dir.db().display()));
    assert!(!shm.exists(), "{shm:?} exists");

    let mut ada = TcpClient::connect(server.addr, "lock").await;
    ada.join("ada").await;
    let Fate::Acknowledged(kept) = send(&mut ada, "kept").await else {
        panic!("the lock holder's server takes messages");
    };
    assert_eq!(history(server.addr, "lock").await, as_history(&[kept]));
    drop(ada);
    let (code, took, log) = server.terminate().await;
    println!("measured: locked (server holding it): SIGTERM exit {code} in {took:?}");
    assert_eq!(code, 0, "{log}");
}

#[tokio::test]
async fn a_corrupt_page_is_refused_at_startup_naming_the_file() {
    let dir = DataDir::new("corrupt");
    let server = Server::start(&dir.db()).await;
    let mut ada = TcpClient::connect(server.addr, "c").await;
    ada.join("ada").await;
    for n in 0..200 {
        assert!(matches!(
            send(&mut ada, &format!("message {n:0>100}")).await,
            Fate::Acknowledged(_)
        ));
    }
    drop(ada);
    let (code, _, log) = server.terminate().await;
    assert_eq!(code, 0, "{log}");

    // Garbage over the second page (the page of 4 KiB after the header page).
    let mut bytes = std::fs::read(dir.db()).unwrap();
    assert!(bytes.len() > 3 * 4096, "the file has pages to corrupt");
    for (i, byte) in bytes[4096..2 * 4096].iter_mut().enumerate() {
        *byte = (i * 7 + 13) as u8;
    }
    std::fs::write(dir.db(), bytes).unwrap();
    let started = Instant::now();
    let (code, log) = refused_start(&dir.db()).await;
    println!(
        "measured: corrupt page: refused at startup (exit {code}) in {:?}",
        started.elapsed()
    );
    assert_eq!(code, EXIT_STORAGE_REFUSED, "{log}");
    assert!(log.contains(&dir.db().display().to_string()), "{log}");
    assert!(
        log.contains("corrupt") || log.contains("malformed"),
        "{log}"
    );
}

#[tokio::test]
async fn a_corrupt_record_takes_only_its_room_out_of_service() {
    let dir = DataDir::new("record");
    let server = Server::start(&dir.db()).await;
    for room in ["bad", "good"] {
        let mut client = TcpClient::connect(server.addr, room).await;
        client.join("ada").await;
        assert!(matches!(
            send(&mut client, &format!("{room} one")).await,
            Fate::Acknowledged(_)
        ));
    }
    let (code, _, log) = server.terminate().await;
    assert_eq!(code, 0, "{log}");
    let conn = rusqlite::Connection::open(dir.db()).unwrap();
    let changed = conn
        .execute(
            "UPDATE kv SET value = 'not a record' WHERE value LIKE '%bad one%'",
            [],
        )
        .unwrap();
    assert_eq!(changed, 1);
    drop(conn);

    let server = Server::start(&dir.db()).await;
    let addr = server.addr;
    let mut bad = TcpClient::connect(addr, "bad").await;
    let started = Instant::now();
    let close = bad.closed().await;
    println!(
        "measured: corrupt record: join closed {close:?} in {:?}",
        started.elapsed()
    );
    assert_eq!(close, Some((1011, "Room unavailable.".to_owned())));
    let history_bad = get(addr, "/api/room/bad/history").await;
    assert_eq!(history_bad.status, 503);

    let mut good = TcpClient::connect(addr, "good").await;
    good.join("bob").await;
    let Fate::Acknowledged(two) = send(&mut good, "good two").await else {
        panic!("the healthy room keeps chatting");
    };
    assert_eq!(two["id"], 2);
    // The file itself is fine: healthy.
    assert_eq!(healthz(addr).await.0, 200);
    drop(good);
    let (code, took, log) = server.terminate().await;
    println!("measured: corrupt record: SIGTERM exit {code} in {took:?}");
    assert_eq!(code, 0, "{log}");
}

#[tokio::test]
async fn a_write_failure_confined_to_one_room_refuses_only_that_room() {
    use edgechat_core::ids::{Namespace, ObjectId};
    let dir = DataDir::new("oneroom");
    let (code, _, log) = Server::start(&dir.db()).await.terminate().await;
    assert_eq!(code, 0, "{log}");
    // SQLite itself refuses every write of room "bad" (as a damaged index page under its
    // keys would), through a trigger added while the server is stopped.
    let bad_id = ObjectId::from_name(Namespace::Room, "bad");
    let hex: String = bad_id
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let conn = rusqlite::Connection::open(dir.db()).unwrap();
    conn.execute_batch(&format!(
        "CREATE TRIGGER injected_fault BEFORE INSERT ON kv WHEN NEW.object = x'{hex}'
         BEGIN SELECT RAISE(ABORT, 'injected fault'); END;"
    ))
    .unwrap();
    drop(conn);

    let server = Server::start(&dir.db()).await;
    let addr = server.addr;
    let mut good = TcpClient::connect(addr, "good").await;
    good.join("ada").await;
    let mut bad = TcpClient::connect(addr, "bad").await;
    bad.join("bob").await;
    let started = Instant::now();
    assert!(matches!(send(&mut bad, "bad 0").await, Fate::Refused));
    println!(
        "measured: one room's writes fail: refusal in {:?}",
        started.elapsed()
    );
    let mut acknowledged = Vec::new();
    for n in 0..5 {
        // Both rooms' writes in flight together (often in one group commit).
        bad.send(json!({ "message": format!("bad {}", n + 1) }))
            .await;
        let Fate::Acknowledged(frame) = send(&mut good, &format!("good {n}")).await else {
            panic!("the healthy room keeps chatting");
        };
        acknowledged.push(frame);
        loop {
            let frame = bad.frame().await;
            if frame.get("error").and_then(Value::as_str) == Some(STORAGE_UNAVAILABLE) {
                break;
            }
            assert!(
                frame.get("message").is_none(),
                "a refused message was broadcast: {frame}"
            );
        }
    }
    assert_eq!(healthz(addr).await.0, 200, "the file works");
    assert!(metric(addr, "edgechat_storage_commit_failures_total").await >= 6);
    let stored = history(addr, "good").await;
    assert_eq!(stored, as_history(&acknowledged));
    assert_consecutive(&stored);
    assert!(history(addr, "bad").await.is_empty());
    drop((good, bad));
    let (code, took, log) = server.terminate().await;
    println!("measured: one room's writes fail: SIGTERM exit {code} in {took:?}");
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("writes of some objects refused"), "{log}");
    assert!(!log.contains("storage failing"), "{log}");
}
