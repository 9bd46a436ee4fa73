//! `edgechat-bench`: a load generator for any server speaking edgechat's PROTOCOL.md.
//!
//! Scenarios (subcommands): `load` (R rooms × C clients, S senders, open or closed loop),
//! its presets `fanout` (1 room × 1,000) and `rooms` (1,000 rooms × 10), `join-storm`
//! (joins per second with a 100-message replay each) and `idle` (server RSS per idle
//! connection and per hibernated room). `--protocol` speaks socket.io or Centrifuge instead
//! (bench/peers, same room semantics) for the load and idle scenarios. Every run is bounded in time and count, targets
//! loopback unless `--allow-remote`, prints a table and optionally writes JSON.
//!
//! ```text
//! edgechat-bench --url http://127.0.0.1:8787 --spread-ips 250 fanout --duration 10
//! edgechat-bench rooms --rate 20000 --json bench-results/rooms.json
//! ```

mod client;
mod hist;
mod idle;
mod load;
mod proto;
mod storm;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::client::Target;

/// Longest run any scenario may be asked for.
const DURATION_MAX_SECS: f64 = 120.0;
/// Most messages one run may send.
const COUNT_MAX: u64 = 50_000_000;
/// Most connections one run may open.
const CONNECTIONS_MAX: u64 = 100_000;

#[derive(Debug, Parser)]
#[command(
    name = "edgechat-bench",
    version,
    about = "Load generator for edgechat servers."
)]
struct Cli {
    /// Base URL of the server (http:// or ws://).
    #[arg(long, global = true, default_value = "http://127.0.0.1:8787")]
    url: String,
    /// Allow a non-loopback server address.
    #[arg(long, global = true)]
    allow_remote: bool,
    /// Spread client source addresses over this many addresses in 127.0.0.0/8 (bind before
    /// connect), to dodge ephemeral-port exhaustion and per-IP rate limits (0: off).
    #[arg(long, global = true, default_value_t = 0)]
    spread_ips: u32,
    /// Send each client a distinct fake IP (10.x.y.z) in this header, for a server that
    /// trusts it (`edgechat serve --trust-proxy-header NAME`).
    #[arg(long, global = true)]
    ip_header: Option<String>,
    /// Also write the report as JSON to this file.
    #[arg(long, global = true)]
    json: Option<std::path::PathBuf>,
    /// Worker threads of the generator's one tokio runtime.
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    /// Room name prefix (default: unique per run, so rooms start empty).
    #[arg(long, global = true)]
    prefix: Option<String>,
    /// The server's process id (same machine): report its CPU time over the run.
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    /// The server's protocol: edgechat (and the seed demo), or a peer of bench/peers.
    #[arg(long, global = true, value_enum, default_value = "edgechat")]
    protocol: proto::Protocol,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// R rooms × C clients per room, S senders per room.
    Load(LoadArgs),
    /// Preset: 1 room, 1,000 clients, 100 senders, closed loop (override any flag).
    Fanout(LoadArgs),
    /// Preset: 1,000 rooms × 10 clients, 1 sender per room, closed loop.
    Rooms(LoadArgs),
    /// Joins per second, each replaying the room's history.
    JoinStorm(StormArgs),
    /// Server RSS per idle connection, resident and hibernated.
    Idle(IdleArgs),
}

#[derive(Debug, Args)]
struct LoadArgs {
    /// Rooms.
    #[arg(long)]
    rooms: Option<u64>,
    /// Clients per room (senders included).
    #[arg(long)]
    clients: Option<u64>,
    /// Senders per room.
    #[arg(long)]
    senders: Option<u64>,
    /// Message text length in bytes (16..=256).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Seconds to send.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Stop after this many messages in all (0: duration only).
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Open loop: total messages per second (0: closed loop).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Closed loop: unacknowledged messages per sender.
    #[arg(long, default_value_t = 1)]
    window: u64,
    /// Seconds to wait for outstanding deliveries after sending stops.
    #[arg(long, default_value_t = 5.0)]
    drain: f64,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
}

#[derive(Debug, Args)]
struct StormArgs {
    /// Rooms the joins are spread over.
    #[arg(long, default_value_t = 10)]
    rooms: u64,
    /// Messages in each room's history before the storm.
    #[arg(long, default_value_t = 100)]
    history: u64,
    /// Joins in all.
    #[arg(long, default_value_t = 5_000)]
    count: u64,
    /// Target joins per second (0: as fast as the concurrency allows).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Joins in progress at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Upper bound in seconds.
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
}

#[derive(Debug, Args)]
struct IdleArgs {
    /// Connections in all.
    #[arg(long, default_value_t = 10_000)]
    connections: u64,
    /// Rooms they are spread over.
    #[arg(long, default_value_t = 100)]
    rooms: u64,
    /// The server's process id (or the global --server-pid).
    #[arg(long = "pid")]
    server_pid: Option<u32>,
    /// Force hibernation with this admin token (else wait --hibernate-wait).
    #[arg(long, env = "EDGECHAT_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Seconds to wait for idle eviction without a token.
    #[arg(long, default_value_t = 10.0)]
    hibernate_wait: f64,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
    /// Open the connections in this many waves, hibernating every room after each (needs
    /// --admin-token): the steady state of many hibernated rooms and a few resident ones.
    #[arg(long, default_value_t = 1)]
    waves: u64,
    /// Seconds to let the server settle before each RSS reading.
    #[arg(long, default_value_t = 2.0)]
    settle: f64,
    /// Seconds to keep every connection open after the last reading (every room
    /// hibernated), so that a heap profiler can look at the server in that state.
    #[arg(long, default_value_t = 0.0)]
    hold: f64,
}

fn seconds(value: f64, what: &str) -> anyhow::Result<Duration> {
    anyhow::ensure!(
        value > 0.0 && value <= DURATION_MAX_SECS,
        "{what} must be in (0, {DURATION_MAX_SECS}] seconds"
    );
    Ok(Duration::from_secs_f64(value))
}

/// Runs a load preset: `args` over the preset's `defaults` (rooms, clients, senders).
async fn run_load(
    target: Arc<Target>,
    args: LoadArgs,
    defaults: (u64, u64, u64),
    prefix: String,
    server_pid: Option<u32>,
) -> anyhow::Result<serde_json::Value> {
    load::run(target, args.into_config(defaults, prefix, server_pid)?).await
}

impl LoadArgs {
    fn into_config(
        self,
        defaults: (u64, u64, u64),
        prefix: String,
        server_pid: Option<u32>,
    ) -> anyhow::Result<load::LoadConfig> {
        let rooms = self.rooms.unwrap_or(defaults.0);
        let clients = self.clients.unwrap_or(defaults.1);
        let senders = self.senders.unwrap_or(defaults.2).min(clients);
        anyhow::ensure!(
            rooms > 0 && clients > 0,
            "rooms and clients must be positive"
        );
        anyhow::ensure!(
            rooms * clients <= CONNECTIONS_MAX,
            "at most {CONNECTIONS_MAX} connections"
        );
        anyhow::ensure!(
            (16..=256).contains(&self.size),
            "--size must be in 16..=256"
        );
        anyhow::ensure!(self.count <= COUNT_MAX, "--count at most {COUNT_MAX}");
        anyhow::ensure!(self.window > 0, "--window must be positive");
        Ok(load::LoadConfig {
            rooms,
            clients,
            senders,
            size: self.size,
            duration: seconds(self.duration, "--duration")?,
            count: self.count,
            rate: self.rate.max(0.0),
            window: self.window,
            drain: seconds(self.drain, "--drain")?,
            connect_concurrency: self.connect_concurrency,
            prefix,
            server_pid,
        })
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build()?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let target = Arc::new(Target::parse(
        &cli.url,
        cli.allow_remote,
        cli.spread_ips,
        cli.ip_header.clone(),
        cli.protocol,
    )?);
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
        % 1_000_000_000;
    // Room names are at most 32 characters.
    let prefix = cli.prefix.clone().unwrap_or_else(|| format!("b{stamp}-"));
    let (name, report) = match cli.scenario {
        // The load presets differ only in their defaults (rooms, clients, senders).
        Scenario::Load(args) => (
            "load",
            run_load(target, args, (1, 10, 1), prefix, cli.server_pid).await?,
        ),
        Scenario::Fanout(args) => (
            "fanout",
            run_load(target, args, (1, 1_000, 100), prefix, cli.server_pid).await?,
        ),
        Scenario::Rooms(args) => (
            "rooms",
            run_load(target, args, (1_000, 10, 1), prefix, cli.server_pid).await?,
        ),
        Scenario::JoinStorm(args) => {
            anyhow::ensure!(
                cli.protocol == proto::Protocol::Edgechat,
                "join-storm speaks only the edgechat protocol"
            );
            anyhow::ensure!(args.rooms > 0, "--rooms must be positive");
            anyhow::ensure!(
                args.count <= CONNECTIONS_MAX,
                "--count at most {CONNECTIONS_MAX}"
            );
            let config = storm::StormConfig {
                rooms: args.rooms,
                history: args.history,
                count: args.count,
                rate: args.rate.max(0.0),
                concurrency: args.concurrency,
                duration: seconds(args.duration, "--duration")?,
                prefix,
            };
            ("join-storm", storm::run(target, config).await?)
        }
        Scenario::Idle(args) => {
            anyhow::ensure!(args.rooms > 0, "--rooms must be positive");
            anyhow::ensure!(
                args.connections <= CONNECTIONS_MAX,
                "--connections at most {CONNECTIONS_MAX}"
            );
            let config = idle::IdleConfig {
                connections: args.connections,
                rooms: args.rooms,
                server_pid: args
                    .server_pid
                    .or(cli.server_pid)
                    .context("--server-pid is required")?,
                admin_token: args.admin_token,
                hibernate_wait: seconds(args.hibernate_wait, "--hibernate-wait")?,
                concurrency: args.concurrency,
                settle: seconds(args.settle, "--settle")?,
                hold: if args.hold == 0.0 {
                    Duration::ZERO
                } else {
                    seconds(args.hold, "--hold")?
                },
                prefix,
                waves: args.waves,
            };
            ("idle", idle::run(target, config).await?)
        }
    };
    let report = serde_json::json!({
        "scenario": name,
        "url": cli.url,
        "protocol": format!("{:?}", cli.protocol).to_lowercase(),
        "generator_threads": cli.threads,
        "spread_ips": cli.spread_ips,
        "ip_header": cli.ip_header,
        "result": report,
    });
    print_table(&report);
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Prints every leaf of the report as `key  value`, nested keys joined with dots.
fn print_table(report: &serde_json::Value) {
    fn walk(prefix: &str, value: &serde_json::Value, rows: &mut Vec<(String, String)>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    let path = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    walk(&path, value, rows);
                }
            }
            serde_json::Value::Number(n) => {
                let text = match n.as_f64() {
                    Some(f) if n.is_f64() => format!("{f:.3}"),
                    _ => n.to_string(),
                };
                rows.push((prefix.to_owned(), text));
            }
            serde_json::Value::String(s) => rows.push((prefix.to_owned(), s.clone())),
            other => rows.push((prefix.to_owned(), other.to_string())),
        }
    }
    let mut rows = Vec::new();
    walk("", report, &mut rows);
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (key, value) in rows {
        println!("{key:<width$}  {value}");
    }
}
