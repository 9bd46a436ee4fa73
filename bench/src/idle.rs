//! The idle-memory scenario: many joined, silent connections; the server's RSS before,
//! with the rooms resident, and after they hibernate.
//!
//! Per connection = (RSS hibernated − RSS before) / connections. Per hibernated room is the
//! difference between two runs with the same connections in many rooms and in few rooms
//! (run.sh does both), divided by the difference in rooms.
//!
//! With `waves` > 1 the connections open in that many waves, and every room is hibernated
//! after each wave (needs the admin token). That is the steady state a long-running server
//! sees (many hibernated rooms, a few resident ones): memory a room frees when it
//! hibernates is reused by the next wave, whereas the process's RSS never shrinks below its
//! peak (the allocator keeps freed pages), so one wave would measure the resident peak.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Semaphore};

use edgechat_client::raw::Event;

use crate::client::Target;
use crate::load::rss_kib;
use crate::proto::Kind;

/// Settings of one idle run.
#[derive(Debug, Clone)]
pub struct IdleConfig {
    /// Connections in all.
    pub connections: u64,
    /// Rooms they are spread over (in contiguous blocks).
    pub rooms: u64,
    /// The server's process id (for `/proc/<pid>/status`).
    pub server_pid: u32,
    /// Admin token: force hibernation with `POST /admin/hibernate` instead of waiting.
    pub admin_token: Option<String>,
    /// How long to wait for idle hibernation when there is no token.
    pub hibernate_wait: Duration,
    /// Connections being opened at once.
    pub concurrency: usize,
    /// Pause before each RSS reading, so that freed memory and queued work settle.
    pub settle: Duration,
    /// Room name prefix.
    pub prefix: String,
    /// Waves the connections open in, hibernating every room after each.
    pub waves: u64,
    /// How long the connections stay open after the last reading (for a heap profiler).
    pub hold: Duration,
}

/// Runs the scenario and returns its report.
///
/// # Errors
/// If the server's RSS cannot be read.
pub async fn run(target: Arc<Target>, config: IdleConfig) -> anyhow::Result<serde_json::Value> {
    let pid = config.server_pid;
    let rss_before = rss_kib(pid)?;
    let ready = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let slots = Arc::new(Semaphore::new(config.concurrency.max(1)));
    let waves = config.waves.clamp(1, config.connections.max(1));
    let (hold_tx, hold_rx) = watch::channel(true);
    // Connections with an index below this may open.
    let (wave_tx, wave_rx) = watch::channel(config.connections / waves);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for index in 0..config.connections {
        let (target, ready, errors, slots) =
            (target.clone(), ready.clone(), errors.clone(), slots.clone());
        let mut hold = hold_rx.clone();
        let mut wave_open = wave_rx.clone();
        // Contiguous blocks, so that a wave fills whole rooms (and touches no earlier ones).
        let room_index = index * config.rooms.max(1) / config.connections.max(1);
        let room = format!("{}{}", config.prefix, room_index);
        tasks.push(tokio::spawn(async move {
            let opened = async {
                // Wait for this connection's wave.
                wave_open.wait_for(|open| index < *open).await?;
                let _slot = slots.acquire().await?;
                let mut ws = target.open(&room, index).await?;
                target.join(&mut ws, &room, &format!("i{index}")).await?;
                anyhow::Ok(ws)
            }
            .await;
            let mut ws = match opened {
                Ok(ws) => ws,
                Err(error) => {
                    if errors.fetch_add(1, Ordering::Relaxed) < 5 {
                        eprintln!("connection {index}: {error:#}");
                    }
                    return;
                }
            };
            ready.fetch_add(1, Ordering::Relaxed);
            // Stay silent but keep reading (pings, later joins in the same room).
            let protocol = target.protocol;
            loop {
                let frame = tokio::select! {
                    frame = ws.next() => frame,
                    _ = hold.wait_for(|hold| !*hold) => return,
                };
                match frame {
                    Some(Event::Text(text)) => {
                        let ping = protocol
                            .split(&text)
                            .any(|item| protocol.classify(item) == Kind::Ping);
                        if ping && ws.send_text(protocol.pong()).await.is_err() {
                            return;
                        }
                    }
                    Some(Event::Binary(_)) => {}
                    _ => return,
                }
            }
        }));
    }
    for wave in 1..=waves {
        // The first `connections * wave / waves` connections are open at the end of `wave`.
        let opened = config.connections * wave / waves;
        while ready.load(Ordering::Relaxed) + errors.load(Ordering::Relaxed) < opened {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if wave < waves {
            hibernate(&target, &config).await?;
        }
        // Release the next wave.
        wave_tx.send_replace(config.connections * (wave + 1) / waves);
    }
    let connect_secs = started.elapsed().as_secs_f64();
    let open = ready.load(Ordering::Relaxed);
    eprintln!("{open} connections joined in {connect_secs:.1} s");
    tokio::time::sleep(config.settle).await;
    let rss_resident = rss_kib(pid)?;
    let hibernated = hibernate(&target, &config).await?;
    let rss_hibernated = rss_kib(pid)?;
    let metrics = target
        .http("GET", "/metrics", None)
        .await
        .map(|(_, body)| {
            body.lines()
                .filter(|line| {
                    line.starts_with("edgechat_rooms") || line.starts_with("edgechat_connections ")
                })
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    if !config.hold.is_zero() {
        eprintln!("holding {} connections for {:?}", open, config.hold);
        tokio::time::sleep(config.hold).await;
    }
    hold_tx.send_replace(false);
    for task in tasks {
        let _ = task.await;
    }
    let per = |after: u64| {
        if open == 0 {
            0.0
        } else {
            after.saturating_sub(rss_before) as f64 * 1024.0 / open as f64
        }
    };
    Ok(serde_json::json!({
        "connections": open,
        "rooms": config.rooms,
        "waves": waves,
        "connect_secs": connect_secs,
        "errors": errors.load(Ordering::Relaxed),
        "server_rss_kib": {
            "before": rss_before,
            "resident": rss_resident,
            "hibernated": rss_hibernated,
        },
        "bytes_per_connection_resident": per(rss_resident),
        "bytes_per_connection_hibernated": per(rss_hibernated),
        "hibernate_answer": hibernated.trim(),
        "server_metrics": metrics,
        "generator_rss_kib": rss_kib(std::process::id()).unwrap_or_default(),
    }))
}

/// Hibernates every room (with the admin token) or waits for idle eviction.
async fn hibernate(target: &Target, config: &IdleConfig) -> anyhow::Result<String> {
    match &config.admin_token {
        Some(token) => {
            let (status, body) = target.http("POST", "/admin/hibernate", Some(token)).await?;
            anyhow::ensure!(status == 200, "hibernate answered {status}: {body}");
            tokio::time::sleep(config.settle).await;
            Ok(body)
        }
        None => {
            tokio::time::sleep(config.hibernate_wait).await;
            Ok(String::from("(waited for idle eviction)"))
        }
    }
}
