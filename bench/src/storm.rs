//! The join-storm scenario: connections per second, each with its history replay.
//!
//! Each room is first filled with `history` messages by one client; then new clients
//! connect on a schedule (open loop), join, receive the replay up to `ready`, and leave.
//! The figure of merit is completed joins per second and connect-to-ready latency.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgechat_client::raw::Event;
use tokio::sync::Semaphore;

use crate::client::Target;
use crate::hist::Histogram;
use crate::proto::Kind;

/// Settings of one join storm.
#[derive(Debug, Clone)]
pub struct StormConfig {
    /// Rooms the joins are spread over.
    pub rooms: u64,
    /// Messages each room holds before the storm.
    pub history: u64,
    /// Joins to attempt in all.
    pub count: u64,
    /// Target joins per second (0: as fast as `concurrency` allows).
    pub rate: f64,
    /// Joins in progress at once at most.
    pub concurrency: usize,
    /// Upper bound of the storm's duration.
    pub duration: Duration,
    /// Room name prefix.
    pub prefix: String,
}

/// Fills `room` with `count` messages from one client, one at a time.
async fn prefill(target: &Target, room: &str, count: u64, index: u64) -> anyhow::Result<()> {
    let mut ws = target.open(room, index).await?;
    target.join(&mut ws, room, "filler").await?;
    for seq in 0..count {
        ws.send_text(format!("{{\"message\":\"history {seq}\"}}"))
            .await?;
        loop {
            match ws.next().await {
                Some(Event::Text(text)) => match target.protocol.classify(&text) {
                    Kind::Chat => break,
                    Kind::Error => anyhow::bail!("prefill refused: {text} (relax the rate limit)"),
                    _ => {}
                },
                Some(Event::Binary(_)) => {}
                _ => anyhow::bail!("prefill connection ended"),
            }
        }
    }
    ws.close(1000, "").await;
    Ok(())
}

/// Runs the storm and returns its report.
///
/// # Errors
/// If the prefill fails.
pub async fn run(target: Arc<Target>, config: StormConfig) -> anyhow::Result<serde_json::Value> {
    let fill_started = Instant::now();
    let mut fills = Vec::new();
    for room in 0..config.rooms {
        let target = target.clone();
        let name = format!("{}{room}", config.prefix);
        let history = config.history;
        fills.push(tokio::spawn(async move {
            prefill(&target, &name, history, 1_000_000 + room).await
        }));
    }
    for fill in fills {
        fill.await??;
    }
    let fill_secs = fill_started.elapsed().as_secs_f64();
    eprintln!(
        "prefilled {} rooms with {} messages in {fill_secs:.1} s",
        config.rooms, config.history
    );

    let latency = Arc::new(Histogram::default());
    let replayed = Arc::new(AtomicU64::new(0));
    let short_replays = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let completed = Arc::new(AtomicU64::new(0));
    let slots = Arc::new(Semaphore::new(config.concurrency.max(1)));
    let started = Instant::now();
    let deadline = started + config.duration;
    let mut tasks = Vec::new();
    for index in 0..config.count {
        if config.rate > 0.0 {
            let due = started + Duration::from_secs_f64(index as f64 / config.rate);
            tokio::time::sleep_until(due.into()).await;
        }
        if Instant::now() >= deadline {
            break;
        }
        let permit = slots.clone().acquire_owned().await?;
        let target = target.clone();
        let room = format!("{}{}", config.prefix, index % config.rooms);
        let (latency, replayed, short_replays, errors, completed) = (
            latency.clone(),
            replayed.clone(),
            short_replays.clone(),
            errors.clone(),
            completed.clone(),
        );
        let history = config.history;
        tasks.push(tokio::spawn(async move {
            let began = Instant::now();
            let result = async {
                let mut ws = target.open(&room, index).await?;
                let joined = target.join(&mut ws, &room, &format!("s{index}")).await?;
                anyhow::Ok((ws, joined))
            }
            .await;
            match result {
                Ok((ws, joined)) => {
                    latency.record(began.elapsed().as_micros() as u64);
                    replayed.fetch_add(joined.messages, Ordering::Relaxed);
                    if joined.messages < history {
                        short_replays.fetch_add(1, Ordering::Relaxed);
                    }
                    completed.fetch_add(1, Ordering::Relaxed);
                    // Leave at once: a storm of joins, not a growing room.
                    drop(ws);
                }
                Err(error) => {
                    if errors.fetch_add(1, Ordering::Relaxed) < 5 {
                        eprintln!("join {index}: {error:#}");
                    }
                }
            }
            drop(permit);
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let completed = completed.load(Ordering::Relaxed);
    Ok(serde_json::json!({
        "rooms": config.rooms,
        "history_per_room": config.history,
        "target_rate": config.rate,
        "concurrency": config.concurrency,
        "joins_completed": completed,
        "elapsed_secs": elapsed,
        "joins_per_sec": completed as f64 / elapsed,
        "replayed_messages": replayed.load(Ordering::Relaxed),
        "replayed_frames_per_sec": replayed.load(Ordering::Relaxed) as f64 / elapsed,
        "short_replays": short_replays.load(Ordering::Relaxed),
        "connect_to_ready": latency.to_json_ms(),
        "errors": { "connect_or_join": errors.load(Ordering::Relaxed) },
    }))
}
