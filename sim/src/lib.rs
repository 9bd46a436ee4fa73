//! The deterministic simulator: edgechat's core under madsim's virtual time, with seeded
//! faults and invariants checked during and after every run.
//!
//! One run ([`run_seed`]) builds a small world in a fresh madsim runtime: room hosts (each a
//! madsim node driving [`edgechat_core::host::RoomHost`] exactly as the server does), a rate
//! limiter node, and one node per client IP whose tasks are chat clients. Everything the
//! nodes say to each other goes through a simulated network ([`world`]) with latency, loss
//! and partitions; storage is a [`MemoryStore`](edgechat_core::storage::MemoryStore) per room
//! that survives host crashes. The seed decides the world's shape, which fault kinds are on
//! (swarm testing: a random subset per run), and every fault's timing.
//!
//! Half of the runs also put the rooms under auth, with tokens that expire mid-session under
//! clock faults ([`tokens`]). Half of the others have a moderator deleting, editing,
//! kicking, banning and muting under the same faults ([`moderation`]).
//!
//! A run has two phases: faults, then settling (faults off, network healed), after which
//! every connected client must have converged. See `sim/README.md` for the invariants and
//! how to replay a seed.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod counters;
pub mod json;
pub mod mailbox;
pub mod model;
pub mod moderation;
mod nodes;
pub mod publish;
pub mod retention;
pub mod shadow;
pub mod tokens;
pub mod world;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgechat_core::planted::PlantedBug;

pub use world::{FaultKind, HostBug, Scenario, Violation};

/// What a caller may choose about a run besides its seed.
#[derive(Debug, Clone, Default)]
pub struct SimOptions {
    /// Plant this bug in every room (the simulator's self-test).
    pub planted: Option<PlantedBug>,
    /// Plant this bug in every room host (the simulator's self-test of host-level
    /// invariants, such as storage isolation, that core alone cannot break).
    pub host_bug: Option<HostBug>,
    /// Keep the whole trace in the report (otherwise only its hash and last lines).
    pub keep_trace: bool,
}

/// The outcome of one seed.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The seed.
    pub seed: u64,
    /// The world the seed drew.
    pub scenario: Scenario,
    /// FNV-1a hash of the whole trace: equal for equal seeds.
    pub trace_hash: u64,
    /// The trace lines kept (all with [`SimOptions::keep_trace`], else the last few hundred).
    pub trace: Vec<String>,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, u64>,
    /// Chat messages that became durable, over all rooms.
    pub messages_durable: u64,
    /// The first broken invariant, if any.
    pub violation: Option<Violation>,
    /// The host bug planted, if any (for the replay command).
    pub host_bug: Option<HostBug>,
}

impl RunReport {
    /// The shell command that replays this run.
    pub fn replay_command(&self, planted: Option<PlantedBug>) -> String {
        let bug = match (planted, self.host_bug) {
            (Some(bug), _) => format!(" --bug {bug:?}"),
            (None, Some(bug)) => format!(" --bug {bug:?}"),
            (None, None) => String::new(),
        };
        format!(
            "SIM_SEED={seed} cargo test -p sim --test sim replay -- --nocapture   # or: cargo run -p sim --release -- --seed {seed}{bug} --trace",
            seed = self.seed
        )
    }
}

/// Runs one seed in a fresh madsim runtime and checks every invariant.
///
/// The same seed and options always give the same report, byte for byte. A panic inside the
/// simulation (a broken `assert!` in core, say) is reported as a violation, not propagated.
pub fn run_seed(seed: u64, options: &SimOptions) -> RunReport {
    let host_bug = options.host_bug;
    let options = options.clone();
    let result = std::thread::spawn(move || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_inner(seed, &options)))
    })
    .join();
    match result {
        Ok(Ok(report)) => report,
        Ok(Err(panic)) | Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "unknown panic".into());
            RunReport {
                seed,
                scenario: Scenario::default(),
                trace_hash: 0,
                trace: Vec::new(),
                faults: BTreeMap::new(),
                messages_durable: 0,
                host_bug,
                violation: Some(Violation {
                    invariant: "no-panic",
                    detail: what,
                    at_ms: 0,
                }),
            }
        }
    }
}

fn run_inner(seed: u64, options: &SimOptions) -> RunReport {
    let mut runtime =
        madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
    // Fault phase ≤ 180 s, settling 300 s: a run that is still going after this is stuck.
    runtime.set_time_limit(Duration::from_secs(3_600));
    let options = options.clone();
    runtime.block_on(async move {
        let world = Arc::new(Mutex::new(world::World::new(seed, &options)));
        nodes::supervise(world.clone()).await;
        let mut w = world.lock().expect("world lock");
        let report = w.report(seed);
        w.teardown();
        report
    })
}

/// Runs `seeds` until one breaks an invariant; returns that report, or `None`.
pub fn find_violation(
    seeds: impl IntoIterator<Item = u64>,
    options: &SimOptions,
) -> Option<RunReport> {
    seeds
        .into_iter()
        .map(|seed| run_seed(seed, options))
        .find(|report| report.violation.is_some())
}

/// The seed to replay from the environment: `SIM_SEED`, else madsim's `MADSIM_TEST_SEED`.
pub fn seed_from_env() -> Option<u64> {
    ["SIM_SEED", "MADSIM_TEST_SEED"]
        .iter()
        .find_map(|name| std::env::var(name).ok()?.trim().parse().ok())
}

/// Parses a planted bug's name as printed by `Debug` (e.g. `HistoryTrimOffByOne`).
pub fn parse_bug(name: &str) -> Option<PlantedBug> {
    PlantedBug::ALL
        .into_iter()
        .find(|bug| format!("{bug:?}").eq_ignore_ascii_case(name))
}

/// Parses a planted host bug's name as printed by `Debug` (e.g. `SharedStorageQueue`).
pub fn parse_host_bug(name: &str) -> Option<HostBug> {
    HostBug::ALL
        .into_iter()
        .find(|bug| format!("{bug:?}").eq_ignore_ascii_case(name))
}

/// FNV-1a, 64 bits: a stable hash for traces (std's hashers are not stable across releases).
pub(crate) fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The FNV-1a offset basis.
pub(crate) const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
