//! Helpers shared by the client's integration tests: a data directory, a server config with a
//! limiter that never bites, fast-reconnecting options, and waiting for an event.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use edgechat_client::{ConnectOptions, Event, Events};
use edgechat_core::limiter::RateLimiterConfig;
use edgechat_server::Config;

/// Generous bound for anything a test waits for; never a pass/fail timing.
pub const WAIT: Duration = Duration::from_secs(30);
pub const ADMIN_TOKEN: &str = "client-test-admin";

/// A data directory removed when dropped.
pub struct DataDir(pub PathBuf);

impl DataDir {
    pub fn new(tag: &str) -> DataDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "edgechat-client-test-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("a temporary data directory");
        DataDir(path)
    }

    pub fn db(&self) -> PathBuf {
        self.0.join("chat.db")
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A server on `listen` storing in `db`, with the admin token and a limiter that never bites
/// (it still answers every frame).
pub fn config(db: &Path, listen: SocketAddr) -> Config {
    Config {
        listen,
        data_path: db.to_owned(),
        admin_token: Some(ADMIN_TOKEN.into()),
        rate_limit: RateLimiterConfig {
            cost_ms: 1,
            grace_ms: 600_000,
        },
        ..Config::default()
    }
}

/// Fast reconnects, so that tests spend their time on what they check.
pub fn options(url: &str, room: &str, name: &str) -> ConnectOptions {
    ConnectOptions {
        reconnect_initial: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(500),
        ..ConnectOptions::new(url, room, name)
    }
}

/// Reads events until `done` returns a value, within [`WAIT`].
pub async fn until<T>(events: &mut Events, what: &str, done: impl FnMut(&Event) -> Option<T>) -> T {
    until_logged(events, &mut Vec::new(), what, done).await
}

/// As [`until`], keeping every event read in `seen` (shown if the wait fails).
pub async fn until_logged<T>(
    events: &mut Events,
    seen: &mut Vec<Event>,
    what: &str,
    mut done: impl FnMut(&Event) -> Option<T>,
) -> T {
    let found = tokio::time::timeout(WAIT, async {
        while let Some(event) = events.next().await {
            let value = done(&event);
            seen.push(event);
            if value.is_some() {
                return value;
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(value)) => value,
        Ok(None) => panic!("events ended while waiting for {what}: {seen:?}"),
        Err(_) => panic!("no {what} within {WAIT:?}: {seen:?}"),
    }
}
