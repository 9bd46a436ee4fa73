//! The message-load scenario (fan-out and many rooms are presets of it).
//!
//! ```text
//!   connect + join every client (bounded concurrency) ─► all ready ─► run phase:
//!     senders send (open loop: on a schedule; closed loop: a window of unacknowledged
//!     messages each), every client reads and times every chat frame
//!   ─► stop sending (duration or count reached) ─► drain until every delivery arrived
//!      (or the drain time ran out) ─► drop every connection
//! ```
//! A message carries `B<sender>:<seq>:<send ns>:` then padding: the send instant is on the
//! generator's own monotonic clock (`start`), so a receipt's latency is `now - send`, and
//! a sender's own echo is its acceptance (the server makes it durable before anyone sees it).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::Message;

use crate::client::Target;
use crate::hist::Histogram;
use crate::proto::Kind;

/// Settings of one load run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Rooms.
    pub rooms: u64,
    /// Clients per room (senders included).
    pub clients: u64,
    /// Senders per room.
    pub senders: u64,
    /// Message text length in bytes (at least the token; at most 256).
    pub size: usize,
    /// How long to send.
    pub duration: Duration,
    /// Stop after this many messages in all (0: no count limit).
    pub count: u64,
    /// Open loop: total messages per second over every sender (0: closed loop).
    pub rate: f64,
    /// Closed loop: unacknowledged messages each sender may have.
    pub window: u64,
    /// How long to wait for outstanding deliveries after sending stops.
    pub drain: Duration,
    /// Connections being opened at once.
    pub connect_concurrency: usize,
    /// Room name prefix (unique per run so rooms start empty).
    pub prefix: String,
    /// The server's process id, to report its CPU time over the run phase.
    pub server_pid: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    Running,
    Draining,
    Done,
}

/// Counters shared by every connection task.
#[derive(Debug, Default)]
pub struct Stats {
    /// Messages sent.
    pub sent: AtomicU64,
    /// Messages whose sender received the echo.
    pub accepted: AtomicU64,
    /// Chat frames received by any client (echoes included) during the run phase.
    pub deliveries: AtomicU64,
    /// Error frames received.
    pub error_frames: AtomicU64,
    /// Connections that failed to open or join.
    pub connect_errors: AtomicU64,
    /// Connections the server closed or that broke during the run.
    pub closed_early: AtomicU64,
    /// Clients joined and ready.
    pub ready: AtomicU64,
    /// Send-to-receipt latency at every receiver (µs).
    pub latency: Histogram,
    /// Send-to-echo latency at the sender (µs): acceptance latency.
    pub ack_latency: Histogram,
    /// Connect-to-ready time (µs).
    pub join_latency: Histogram,
    /// When the last chat frame arrived, in ns since the run's start instant.
    pub last_delivery_ns: AtomicU64,
    /// Error frames by text (rare, so a lock is fine).
    pub error_texts: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The parsed token of a chat frame's message: sender, sequence, send instant in ns.
fn parse_token(frame: &str) -> Option<(u64, u64, u64)> {
    const KEY: &str = "\"message\":\"B";
    let at = frame.find(KEY)? + KEY.len();
    let mut fields = frame[at..].splitn(4, ':');
    let sender = fields.next()?.parse().ok()?;
    let seq = fields.next()?.parse().ok()?;
    let sent_ns = fields.next()?.parse().ok()?;
    Some((sender, seq, sent_ns))
}

/// A message's text: the token, padded to `size` bytes.
fn message_text(sender: u64, seq: u64, sent_ns: u64, size: usize) -> String {
    let mut text = format!("B{sender}:{seq}:{sent_ns}:");
    while text.len() < size {
        text.push('x');
    }
    text
}

/// Runs the scenario and returns its report.
///
/// # Errors
/// If not even one client could join.
pub async fn run(target: Arc<Target>, config: LoadConfig) -> anyhow::Result<serde_json::Value> {
    let config = Arc::new(config);
    let stats = Arc::new(Stats::default());
    let start = Instant::now();
    let (phase_tx, phase_rx) = watch::channel(Phase::Connecting);
    let connect_slots = Arc::new(Semaphore::new(config.connect_concurrency.max(1)));
    let total_clients = config.rooms * config.clients;
    let total_senders = config.rooms * config.senders.min(config.clients);
    let mut tasks = Vec::with_capacity(total_clients as usize);
    // Interleave rooms so that every room fills at the same pace.
    for slot in 0..config.clients {
        for room in 0..config.rooms {
            let index = room * config.clients + slot;
            let sender = (slot < config.senders).then_some(room * config.senders + slot);
            tasks.push(tokio::spawn(client(
                target.clone(),
                config.clone(),
                stats.clone(),
                phase_rx.clone(),
                connect_slots.clone(),
                start,
                room,
                index,
                sender,
                total_senders,
            )));
        }
    }
    // Wait until every client joined or failed.
    let connect_started = Instant::now();
    loop {
        let settled = load(&stats.ready) + load(&stats.connect_errors);
        if settled >= total_clients {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_secs = connect_started.elapsed().as_secs_f64();
    let ready = load(&stats.ready);
    anyhow::ensure!(ready > 0, "no client could join (is the server running?)");
    eprintln!(
        "{ready}/{total_clients} clients ready in {connect_secs:.1} s; running for {:?}",
        config.duration
    );
    // Settle the join broadcasts before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let deliveries_before = load(&stats.deliveries);
    let cpu = |pid: Option<u32>| pid.and_then(|pid| cpu_secs(pid).ok()).unwrap_or(0.0);
    let server_cpu_before = cpu(config.server_pid);
    let own_cpu_before = cpu(Some(std::process::id()));
    let wait = |pid: Option<u32>| pid.map(runqueue_wait_secs).unwrap_or(0.0);
    let server_wait_before = wait(config.server_pid);
    let own_wait_before = wait(Some(std::process::id()));
    let run_started = Instant::now();
    phase_tx.send_replace(Phase::Running);
    let deadline = run_started + config.duration;
    loop {
        if Instant::now() >= deadline || (config.count > 0 && load(&stats.sent) >= config.count) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let send_secs = run_started.elapsed().as_secs_f64();
    phase_tx.send_replace(Phase::Draining);
    let drain_deadline = Instant::now() + config.drain;
    loop {
        // Every message is due at every ready client of its room (rooms fill evenly).
        let expected = load(&stats.sent) * ready / config.rooms;
        let got = load(&stats.deliveries) - deliveries_before;
        if got >= expected || Instant::now() >= drain_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The run ends with its last delivery (not with a drain that waited for nothing).
    let last_delivery = Duration::from_nanos(load(&stats.last_delivery_ns));
    let last_delivery_secs = (start + last_delivery)
        .saturating_duration_since(run_started)
        .as_secs_f64();
    let elapsed = last_delivery_secs.max(send_secs);
    let server_cpu = cpu(config.server_pid) - server_cpu_before;
    let own_cpu = cpu(Some(std::process::id())) - own_cpu_before;
    let server_wait = wait(config.server_pid) - server_wait_before;
    let own_wait = wait(Some(std::process::id())) - own_wait_before;
    phase_tx.send_replace(Phase::Done);
    for task in tasks {
        let _ = task.await;
    }
    let sent = load(&stats.sent);
    let accepted = load(&stats.accepted);
    let deliveries = load(&stats.deliveries) - deliveries_before;
    Ok(serde_json::json!({
        "rooms": config.rooms,
        "clients_per_room": config.clients,
        "senders_per_room": config.senders,
        "message_bytes": config.size,
        "mode": if config.rate > 0.0 { format!("open loop {} msg/s", config.rate) } else { format!("closed loop, window {}", config.window) },
        "clients_ready": ready,
        "connect_secs": connect_secs,
        "send_secs": send_secs,
        "elapsed_secs": elapsed,
        "sent": sent,
        "accepted": accepted,
        "deliveries": deliveries,
        "deliveries_expected": sent * ready / config.rooms,
        "accepted_per_sec": accepted as f64 / elapsed,
        "deliveries_per_sec": deliveries as f64 / elapsed,
        "cpu": {
            "server_secs": server_cpu,
            "generator_secs": own_cpu,
            "server_cores": server_cpu / elapsed,
            "server_runqueue_wait_secs": server_wait,
            "generator_runqueue_wait_secs": own_wait,
            "generator_cores": own_cpu / elapsed,
            "deliveries_per_server_cpu_sec": if server_cpu > 0.0 { deliveries as f64 / server_cpu } else { 0.0 },
            "accepted_per_server_cpu_sec": if server_cpu > 0.0 { accepted as f64 / server_cpu } else { 0.0 },
        },
        "latency": stats.latency.to_json_ms(),
        "ack_latency": stats.ack_latency.to_json_ms(),
        "join_latency": stats.join_latency.to_json_ms(),
        "errors": {
            "connect": load(&stats.connect_errors),
            "error_frames": load(&stats.error_frames),
            "error_texts": stats.error_texts.lock().map(|texts| texts.clone()).unwrap_or_default(),
            "closed_early": load(&stats.closed_early),
        },
    }))
}

#[allow(clippy::too_many_arguments)]
async fn client(
    target: Arc<Target>,
    config: Arc<LoadConfig>,
    stats: Arc<Stats>,
    mut phase: watch::Receiver<Phase>,
    connect_slots: Arc<Semaphore>,
    start: Instant,
    room: u64,
    index: u64,
    sender: Option<u64>,
    total_senders: u64,
) {
    let room_name = format!("{}{room}", config.prefix);
    let name = format!("u{index}");
    let protocol = target.protocol;
    let frame = |text: String| Message::text(protocol.message(&room_name, &name, &text));
    let opened = async {
        let _slot = connect_slots.acquire().await?;
        let began = Instant::now();
        let mut ws = target.open(&room_name, index).await?;
        target.join(&mut ws, &room_name, &name).await?;
        stats
            .join_latency
            .record(began.elapsed().as_micros() as u64);
        anyhow::Ok(ws)
    };
    let ws = match opened.await {
        Ok(ws) => ws,
        Err(error) => {
            if load(&stats.connect_errors) < 5 {
                eprintln!("client {index}: {error:#}");
            }
            bump(&stats.connect_errors);
            return;
        }
    };
    bump(&stats.ready);
    // The hot loop drives the session's tungstenite stream directly, as a sink and a stream.
    let (mut sink, mut stream) = ws.into_stream().split();
    // Open loop: each sender owns an equal share of the rate, phase-shifted so that the
    // senders do not fire together.
    let period = (config.rate > 0.0)
        .then(|| Duration::from_secs_f64(total_senders.max(1) as f64 / config.rate));
    let mut seq = 0u64;
    let mut outstanding = 0u64;
    let mut next_send: Option<Instant> = None;
    let mut running = false;
    'connection: loop {
        let current = *phase.borrow();
        match current {
            Phase::Done => break,
            Phase::Running if !running => {
                running = true;
                if let (Some(sender), Some(period)) = (sender, period) {
                    // Spread over the whole period: sender k of n starts k/n of it late.
                    let offset = period.mul_f64(sender as f64 / total_senders.max(1) as f64);
                    next_send = Some(Instant::now() + offset);
                }
            }
            _ => {}
        }
        let may_send = sender.is_some()
            && current == Phase::Running
            && (config.count == 0 || load(&stats.sent) < config.count);
        // Closed loop: keep the window full.
        if may_send && period.is_none() && outstanding < config.window {
            let sender = sender.unwrap_or_default();
            let text = message_text(sender, seq, start.elapsed().as_nanos() as u64, config.size);
            if sink.send(frame(text)).await.is_err() {
                bump(&stats.closed_early);
                break;
            }
            seq += 1;
            outstanding += 1;
            bump(&stats.sent);
            continue;
        }
        let due = if may_send { next_send } else { None };
        tokio::select! {
            frame = stream.next() => {
                let text = match frame {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                        if current != Phase::Done {
                            bump(&stats.closed_early);
                        }
                        break;
                    }
                    Some(Ok(_)) => continue,
                };
                for item in protocol.split(&text) {
                    match protocol.classify(item) {
                        Kind::Chat => {
                            let Some((from, _seq, sent_ns)) = parse_token(item) else { continue };
                            let micros = (start.elapsed().as_nanos() as u64).saturating_sub(sent_ns) / 1000;
                            // Chat frames only exist from the run phase on (fresh rooms), so every
                            // one counts, even if this task has not yet seen the phase change.
                            bump(&stats.deliveries);
                            stats.latency.record(micros);
                            stats
                                .last_delivery_ns
                                .fetch_max(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
                            if Some(from) == sender {
                                bump(&stats.accepted);
                                stats.ack_latency.record(micros);
                                outstanding = outstanding.saturating_sub(1);
                            }
                        }
                        Kind::Error => {
                            bump(&stats.error_frames);
                            if let Ok(mut texts) = stats.error_texts.lock() {
                                *texts.entry(item.to_owned()).or_default() += 1;
                            }
                            // A refused message never echoes: free its window slot.
                            outstanding = outstanding.saturating_sub(1);
                        }
                        Kind::Ping if sink.send(Message::text(protocol.pong())).await.is_err() => {
                            bump(&stats.closed_early);
                            break 'connection;
                        }
                        _ => {}
                    }
                }
            }
            () = sleep_until(due) => {
                // Open loop: the scheduled instant is the send time, so a late send
                // counts against the server (no coordinated omission).
                let scheduled = due.unwrap_or_else(Instant::now);
                let sent_ns = scheduled.duration_since(start).as_nanos() as u64;
                let text = message_text(sender.unwrap_or_default(), seq, sent_ns, config.size);
                if sink.send(frame(text)).await.is_err() {
                    bump(&stats.closed_early);
                    break;
                }
                seq += 1;
                bump(&stats.sent);
                next_send = period.map(|period| scheduled + period);
            }
            _ = phase.changed() => {}
        }
    }
    drop(sink.close().await);
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// Reads a process's user + system CPU time in seconds from `/proc/<pid>/stat`.
///
/// # Errors
/// If the file cannot be read or parsed.
pub fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the parenthesized command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields.get(i).context("short stat")?.parse::<f64>()?)
    };
    // The kernel's USER_HZ is 100 on every Linux this runs on.
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

/// Sums the time a process's threads spent runnable but waiting for a CPU, in seconds
/// (`/proc/<pid>/task/*/schedstat`, second field): on a shared machine this says how much
/// of the latency is the scheduler's, not the server's.
pub fn runqueue_wait_secs(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    let mut nanos = 0u64;
    for task in tasks.flatten() {
        if let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) {
            nanos += stat
                .split_whitespace()
                .nth(1)
                .and_then(|field| field.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    nanos as f64 / 1e9
}

/// Reads the server's resident set size in KiB from `/proc/<pid>/status`.
///
/// # Errors
/// If the file cannot be read or has no `VmRSS` line.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .context("no VmRSS line")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trips() {
        let text = message_text(12, 34, 5678, 64);
        assert_eq!(text.len(), 64);
        let frame = format!("{{\"name\":\"u1\",\"message\":\"{text}\",\"timestamp\":1,\"id\":2}}");
        assert_eq!(parse_token(&frame), Some((12, 34, 5678)));
        assert_eq!(parse_token("{\"name\":\"u1\",\"message\":\"hello\"}"), None);
    }
}
