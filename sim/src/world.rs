//! The simulated world: its shape ([`Scenario`]), the network between nodes, per-node
//! clocks, storage, and the oracle that checks invariants.
//!
//! Everything lives in one [`World`] behind a mutex that no task holds across an `.await`;
//! madsim runs one task at a time, so the order of every access is fixed by the seed.
//!
//! The network. A WebSocket is an ordered, reliable stream: frames on one connection are
//! delivered in order after a random latency, or the connection breaks (both ends are told).
//! "Loss" between a client and its host therefore breaks the connection, as a TCP reset or
//! timeout would; a partition breaks every connection across it and refuses new ones until
//! it heals. Between a host and the limiter, messages are datagrams: each may be delayed
//! (reordered), lost, or dropped by a partition; the room asks again after
//! [`VERDICT_TIMEOUT_MS`](edgechat_core::limiter::VERDICT_TIMEOUT_MS).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgechat_core::limiter::{RateLimiterConfig, VerdictRequest};
use edgechat_core::moderation::ModAction;
use edgechat_core::planted::PlantedBug;
use edgechat_core::protocol::Frame;
use edgechat_core::room::{ConnId, RoomConfig, PIPELINE_WAIT_MAX_MS};
use edgechat_core::storage::{keys, BatchId, ListQuery, MemoryStore, Write, WriteBatch};
use edgechat_core::Timestamp;
use madsim::rand::{thread_rng, Rng};

use crate::mailbox::Mailbox;
use crate::moderation::{self, ModOracle, Record};
use crate::tokens::{self, AuthScenario, Tokens};
use crate::{fnv1a, RunReport, SimOptions, FNV_OFFSET};

/// The wall-clock time at which every run starts (virtual time zero).
pub const EPOCH_MS: u64 = 1_700_000_000_000;
/// How long the world settles, faults off, before the final checks.
pub const SETTLE_MS: u64 = 300_000;
/// Trace lines kept for a failure report when the whole trace is not asked for.
const TRACE_TAIL_LINES: usize = 400;

/// The world shared by every node of a run.
pub type Shared = Arc<Mutex<World>>;

/// A kind of fault; each run switches a random subset on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// The platform evicts a room (hibernation) at random points, after any input.
    Evict,
    /// A room host's process crashes and restarts later.
    Crash,
    /// Clients close their socket and reconnect, usually with `since`.
    Disconnect,
    /// A client IP is cut off from the hosts for a while.
    PartitionClient,
    /// The hosts are cut off from the limiter for a while.
    PartitionLimiter,
    /// Latency up to hundreds of milliseconds, with spikes.
    Latency,
    /// Client connections break at random.
    LossClient,
    /// Limiter questions and answers are lost at random.
    LossLimiter,
    /// Host and limiter clocks are skewed from each other.
    ClockSkew,
    /// Host and limiter clocks step backwards and forwards.
    ClockStep,
    /// Some commits of the rooms on faulty storage fail (nothing is written).
    CommitFail,
    /// The faulty storage hangs for a while: commits take longer than
    /// [`COMMIT_BOUND_MS`], the host gives up at the bound and the late write is rolled back.
    CommitHang,
    /// The faulty storage fails every commit for a while, then commits again.
    CommitFlaky,
    /// The faulty storage fails every restore (read) for a while.
    RestoreFail,
}

impl FaultKind {
    /// Every kind.
    pub const ALL: [FaultKind; 14] = [
        FaultKind::Evict,
        FaultKind::Crash,
        FaultKind::Disconnect,
        FaultKind::PartitionClient,
        FaultKind::PartitionLimiter,
        FaultKind::Latency,
        FaultKind::LossClient,
        FaultKind::LossLimiter,
        FaultKind::ClockSkew,
        FaultKind::ClockStep,
        FaultKind::CommitFail,
        FaultKind::CommitHang,
        FaultKind::CommitFlaky,
        FaultKind::RestoreFail,
    ];

    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Evict => "evict",
            FaultKind::Crash => "crash",
            FaultKind::Disconnect => "disconnect",
            FaultKind::PartitionClient => "partition-client",
            FaultKind::PartitionLimiter => "partition-limiter",
            FaultKind::Latency => "latency",
            FaultKind::LossClient => "loss-client",
            FaultKind::LossLimiter => "loss-limiter",
            FaultKind::ClockSkew => "clock-skew",
            FaultKind::ClockStep => "clock-step",
            FaultKind::CommitFail => "commit-fail",
            FaultKind::CommitHang => "commit-hang",
            FaultKind::CommitFlaky => "commit-flaky",
            FaultKind::RestoreFail => "restore-fail",
        }
    }

    /// Whether this kind is a storage fault (it concerns only the rooms on faulty storage).
    pub fn is_storage(self) -> bool {
        matches!(
            self,
            FaultKind::CommitFail
                | FaultKind::CommitHang
                | FaultKind::CommitFlaky
                | FaultKind::RestoreFail
        )
    }
}

/// A deliberately wrong room host, for the invariants that only a host can break (core's
/// rooms are independent of each other by construction).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HostBug {
    /// A host commits all its rooms' batches one at a time, so a hanging commit of one
    /// room holds up every other room on the host (as the server's storage thread did).
    SharedStorageQueue,
    /// A host ignores `RoomHost::wake_at`: it sets no timer for an evicted room's token
    /// expiries, so an expired connection of a quiet room stays open until the room's next
    /// event (the server's behaviour before it used `wake_at`).
    NoExpiryWakeWhileHibernated,
}

impl HostBug {
    /// Every host bug.
    pub const ALL: [HostBug; 2] = [
        HostBug::SharedStorageQueue,
        HostBug::NoExpiryWakeWhileHibernated,
    ];
}

/// The shape of one run, drawn from its seed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scenario {
    /// Rooms.
    pub rooms: usize,
    /// Room hosts (room `r` lives on host `r % hosts`).
    pub hosts: usize,
    /// Client IPs (each its own node and its own rate limit).
    pub ips: usize,
    /// Clients.
    pub clients: usize,
    /// The fault kinds switched on.
    pub faults: BTreeSet<FaultKind>,
    /// How long faults are injected.
    pub fault_ms: u64,
    /// A room's idle time before eviction.
    pub idle_ms: u64,
    /// The rooms' settings.
    pub room: RoomConfig,
    /// Rooms whose storage has faults (empty unless a storage fault kind is on); the
    /// others are healthy and must not notice.
    pub faulty_rooms: BTreeSet<usize>,
    /// The rooms run with auth (see [`crate::tokens`]), in half of the runs.
    pub auth: Option<AuthScenario>,
    /// The admin moderator acts (see [`crate::moderation`]), in half of the runs (with auth
    /// or without).
    pub moderation: bool,
    /// Sessions send moderation frames over their sockets (some with a `moderator` grant),
    /// in half of the runs with auth.
    pub mod_sessions: bool,
}

/// A broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Which invariant (a short stable name).
    pub invariant: &'static str,
    /// What was observed.
    pub detail: String,
    /// Virtual time of the finding, in ms since the run started.
    pub at_ms: u64,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}] at {} ms: {}",
            self.invariant, self.at_ms, self.detail
        )
    }
}

/// Events a room host handles.
#[derive(Debug)]
pub enum HostEvent {
    /// A client opened a WebSocket to `room`.
    Connect {
        /// The connection.
        conn: ConnId,
        /// Its room.
        room: usize,
        /// The client's IP.
        ip: IpAddr,
        /// The token on the upgrade URL, if any (runs with auth).
        token: Option<String>,
    },
    /// A text frame.
    Text {
        /// From.
        conn: ConnId,
        /// The frame.
        text: String,
    },
    /// A binary frame (its bytes do not matter: the protocol is text).
    Binary {
        /// From.
        conn: ConnId,
    },
    /// The socket closed (either end) or broke.
    Closed {
        /// Which.
        conn: ConnId,
    },
    /// The limiter answered.
    Verdict {
        /// For which room.
        room: usize,
        /// The question.
        request: VerdictRequest,
        /// The answer.
        wait_ms: u64,
    },
    /// A storage commit failed, or the host gave up on it at [`COMMIT_BOUND_MS`] (and the
    /// write is rolled back): nothing of it was written.
    WriteFailed {
        /// Whose.
        room: usize,
        /// Which.
        batch: BatchId,
    },
    /// A storage commit finished.
    Durable {
        /// Whose.
        room: usize,
        /// Which.
        batch: BatchId,
    },
    /// A timer the host set for `room`.
    Wake {
        /// Which.
        room: usize,
    },
    /// The platform asks to evict `room`.
    Evict {
        /// Which.
        room: usize,
    },
    /// The end-of-run check: make `room` resident and publish its state.
    Probe {
        /// Which.
        room: usize,
    },
    /// The HTTP publish route asks `room` to publish `message` (as the publisher).
    Publish {
        /// Which.
        room: usize,
        /// The request's id.
        request: u64,
        /// The text.
        message: String,
    },
    /// The admin API asks `room` to moderate.
    Moderate {
        /// Which.
        room: usize,
        /// The request's id.
        request: u64,
        /// What to do.
        action: ModAction,
    },
}

/// Events a client handles.
#[derive(Debug)]
pub enum ClientEvent {
    /// A frame on `conn`.
    Frame {
        /// The connection.
        conn: ConnId,
        /// The frame.
        frame: Frame,
    },
    /// `conn` closed or broke.
    Closed {
        /// The connection.
        conn: ConnId,
    },
    /// Time to act.
    Tick,
    /// The fault injector tells the client to drop its connection.
    Disconnect,
}

/// Questions to the limiter.
#[derive(Debug)]
pub struct LimiterAsk {
    /// The host to answer.
    pub host: usize,
    /// The room to answer.
    pub room: usize,
    /// The question.
    pub request: VerdictRequest,
    /// Whose budget.
    pub ip: IpAddr,
}

/// A host slot: its inbox while it runs, and its incarnation (bumped by each crash).
#[derive(Default)]
pub struct HostSlot {
    /// The running incarnation's inbox; `None` while crashed.
    pub inbox: Option<Mailbox<HostEvent>>,
    /// Bumped at each crash, so that nothing addressed to a dead process arrives.
    pub incarnation: u64,
    /// The madsim node.
    pub node: Option<madsim::runtime::NodeHandle>,
}

impl fmt::Debug for HostSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostSlot")
            .field("up", &self.inbox.is_some())
            .field("incarnation", &self.incarnation)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for World {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("World")
            .field("seed", &self.seed)
            .field("scenario", &self.sc)
            .finish_non_exhaustive()
    }
}

/// One connection, as the network sees it.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client.
    pub client: usize,
    /// The host (and the incarnation it was opened to).
    pub host: usize,
    /// The host incarnation.
    pub incarnation: u64,
    /// Whether the network still carries it.
    pub open: bool,
    pub(crate) last_to_host: Duration,
    pub(crate) last_to_client: Duration,
}

/// A client's view of its current connection.
#[derive(Debug, Clone, Default)]
pub struct ClientConn {
    /// The connection.
    pub conn: Option<ConnId>,
    /// What it sent that must be refused, and what was (the room model's error check).
    pub errors: crate::model::ErrorBook,
    /// Its join is held back until this true ms (the socket stays unnamed until then).
    pub join_at_ms: Option<u64>,
    /// The `since` it joined with.
    pub since: Option<u64>,
    /// Whether `ready` arrived.
    pub ready: bool,
    /// The first chat id on this connection.
    pub first_id: Option<u64>,
    /// The last chat id on this connection.
    pub last_id: Option<u64>,
    /// Names per `joined` minus `quit`.
    pub roster: Vec<String>,
    /// Its join was rate limited, so it must be sent again.
    pub join_rejected: bool,
    /// Chat frames sent on this connection (each expects exactly one answer).
    pub sent: u64,
    /// Answers received: an echo of a message sent on this connection, or an error.
    pub answers: u64,
    /// Storage errors received.
    pub storage_errors: u64,
    /// Storage errors owed: messages of this connection in batches that failed.
    pub storage_errors_owed: u64,
    /// Resends on this connection awaiting their answer: key -> (original text, resent text).
    pub resending: BTreeMap<String, (String, String)>,
    /// Resends whose original's broadcast reached this connection first (which may or may
    /// not have been the room's answer to the resend; a stored copy may follow).
    pub resend_broadcast: BTreeSet<String>,
    /// Until this true ms, nothing follows the newest resend (its answer may still come).
    pub resend_until_ms: u64,
    /// The latest topic frame's topic on this connection (`None`: none, or cleared).
    pub topic: Option<String>,
    /// A moderation frame sent on this connection, awaiting its answer (sent alone, and
    /// nothing follows it until an error comes or the answer bound passes).
    pub mod_pending: Option<moderation::Attempt>,
    /// Moderation frames sent on this connection.
    pub mod_sent: u64,
}

/// A client's state, shared so the oracle can read it.
#[derive(Debug, Clone)]
pub struct ClientSlot {
    /// Its inbox.
    pub inbox: Mailbox<ClientEvent>,
    /// Its IP.
    pub ip: IpAddr,
    /// Its room.
    pub room: usize,
    /// Its user name.
    pub name: String,
    /// Its current connection.
    pub current: ClientConn,
    /// The newest chat id it ever saw (for `since`).
    pub last_seen: Option<u64>,
    /// Messages sent.
    pub sent: u64,
    /// Messages left in the current burst.
    pub burst_left: u32,
    /// Connections opened.
    pub connects: u64,
    /// The connection each chat message (by text) was sent on.
    pub sent_on: BTreeMap<String, ConnId>,
    /// Keyed messages sent, in order: (text, key).
    pub keyed: Vec<(String, String)>,
    /// Keys of its own messages it saw (on any connection).
    pub keys_seen: BTreeSet<String>,
    /// Resends sent (numbers each resend's text).
    pub resends: u64,
}

/// What the oracle knows of a room.
#[derive(Debug, Clone, Default)]
pub struct RoomOracle {
    /// Every chat frame any client saw, with its timestamp: the room's one total order.
    pub seen: BTreeMap<u64, (Frame, u64)>,
    /// Acknowledged messages: confirmed durable, or found in storage by a restore.
    pub acked: BTreeMap<u64, Frame>,
    /// Presence the last time the room was resident.
    pub presence: Vec<String>,
    /// Texts of acknowledged messages.
    pub acked_texts: BTreeSet<String>,
    /// Texts of every chat frame a client saw, with its id.
    pub seen_texts: BTreeMap<String, u64>,
    /// Texts of messages in batches that failed: never to be seen or stored.
    pub refused: BTreeSet<String>,
    /// The id each (sender, key) was last written under (`send-once`).
    pub stored_keys: BTreeMap<(usize, String), u64>,
    /// The retention in force (`history_max`, `history_max_age_ms`), as far as known.
    pub retention: crate::retention::Retention,
}

impl RoomOracle {
    /// The newest acknowledged id (0: none).
    pub fn newest_acked(&self) -> u64 {
        self.acked.keys().next_back().copied().unwrap_or(0)
    }
}

/// How long a room host waits for a commit before it gives up, reports the write failed
/// (so the senders are told) and rolls the write back.
pub const COMMIT_BOUND_MS: u64 = 5_000;
/// The longest a client link delays a frame (the `latency` fault's maximum).
pub const CLIENT_LATENCY_MAX_MS: u64 = 1_000;
/// The longest a commit takes when it is neither hanging nor failing.
pub const COMMIT_LATENCY_MAX_MS: u64 = 300;
/// A chat frame in a healthy room is answered within this (there and back, held at most
/// [`PIPELINE_WAIT_MAX_MS`] for its connection's limiter answers, behind at most one other
/// commit, then its own).
pub const ANSWER_BOUND_HEALTHY_MS: u64 =
    2 * CLIENT_LATENCY_MAX_MS + PIPELINE_WAIT_MAX_MS + 2 * COMMIT_LATENCY_MAX_MS + 50;
/// A chat frame in a room on faulty storage is answered within this (there and back, held
/// at most [`PIPELINE_WAIT_MAX_MS`], behind at most one other commit, then its own, each
/// ending by the bound).
pub const ANSWER_BOUND_FAULTY_MS: u64 =
    2 * CLIENT_LATENCY_MAX_MS + PIPELINE_WAIT_MAX_MS + 2 * COMMIT_BOUND_MS + 50;

/// Storage faults of one room's storage, as they stand.
#[derive(Debug, Clone, Default)]
pub struct StorageFaults {
    /// Probability that a commit fails (`commit-fail`).
    pub commit_fail_p: f64,
    /// Commits started before this (virtual ms) hang (`commit-hang`).
    pub hang_until_ms: u64,
    /// Commits started before this fail (`commit-flaky`).
    pub fail_until_ms: u64,
    /// Restores before this fail (`restore-fail`).
    pub restore_fail_until_ms: u64,
}

/// How a commit will end, decided when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Durable after this long.
    Commit(Duration),
    /// Fails after this long (nothing written).
    Fail(Duration, &'static str),
    /// Would take this long (more than [`COMMIT_BOUND_MS`]): the host gives up at the bound.
    Hang(Duration),
}

/// The world.
pub struct World {
    /// The seed.
    pub seed: u64,
    /// Its shape.
    pub sc: Scenario,
    /// The limiters' settings.
    pub limiter_config: RateLimiterConfig,
    start: madsim::time::Instant,
    /// The runtime's clock, read directly: `Instant::now()` goes through madsim's
    /// `clock_gettime` override, and reading the time was 5 % of a seed's instructions.
    clock: madsim::time::TimeHandle,
    /// The clock's reading at `start`.
    start_elapsed: Duration,
    /// Per host clock offsets from true time.
    pub host_offset_ms: Vec<i64>,
    /// The limiter's clock offset.
    pub limiter_offset_ms: i64,
    /// Whether any clock stepped (the per-IP window bound assumes steady clocks).
    pub clock_stepped: bool,
    /// Whether limiter messages were ever lost (the window bound assumes answers arrive).
    pub limiter_lossy: bool,
    /// Client link latency range.
    pub client_latency_ms: (u64, u64),
    /// Limiter link latency range.
    pub limiter_latency_ms: (u64, u64),
    /// Probability that sending a frame breaks its connection.
    pub client_break_p: f64,
    /// Probability that a limiter message is lost.
    pub limiter_loss_p: f64,
    /// Client IPs cut off from the hosts.
    pub cut_ips: BTreeSet<IpAddr>,
    /// Whether hosts and limiter are cut off from each other.
    pub limiter_cut: bool,
    /// Whether faults are over.
    pub settling: bool,
    /// Room hosts.
    pub hosts: Vec<HostSlot>,
    /// The limiter's inbox.
    pub limiter: Option<Mailbox<LimiterAsk>>,
    /// Clients.
    pub clients: Vec<ClientSlot>,
    /// Connections.
    pub conns: BTreeMap<ConnId, ConnInfo>,
    /// Frames in flight to hosts, per connection, oldest first.
    pub to_host_queue: BTreeMap<ConnId, VecDeque<HostEvent>>,
    /// Frames in flight to clients, per connection, oldest first.
    pub to_client_queue: BTreeMap<ConnId, VecDeque<ClientEvent>>,
    next_conn: u64,
    /// Committed storage, per room; survives host crashes.
    pub stores: Vec<MemoryStore>,
    /// Storage faults, per room.
    pub storage_faults: Vec<StorageFaults>,
    /// The host bug planted, if any.
    pub host_bug: Option<HostBug>,
    /// With [`HostBug::SharedStorageQueue`]: when each host's storage is next free.
    pub storage_free_at: Vec<Duration>,
    /// What the oracle knows, per room.
    pub rooms: Vec<RoomOracle>,
    /// Publishes asked, by request id: the room and the text.
    pub publishes: BTreeMap<u64, (usize, String)>,
    /// Frames accepted per IP (virtual ms, connection), for the window bound.
    pub accepts: BTreeMap<IpAddr, Vec<(u64, ConnId)>>,
    /// Zero-wait answers per IP, in the limiter's clamped clock.
    pub zero_answers: BTreeMap<IpAddr, Vec<u64>>,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, u64>,
    /// The first violation.
    pub violation: Option<Violation>,
    trace_hash: u64,
    trace: VecDeque<String>,
    keep_trace: bool,
    durable_messages: u64,
    /// Auth, in runs with it.
    pub tokens: Option<Tokens>,
    /// The moderation oracle.
    pub moderation: ModOracle,
}

impl World {
    /// Draws a world from the runtime's seeded randomness.
    pub fn new(seed: u64, options: &SimOptions) -> World {
        let mut rng = thread_rng();
        let mut faults = BTreeSet::new();
        // Swarm testing: each kind is on with probability 1/2, and the all-off run is
        // replaced by a run with one kind on.
        for kind in FaultKind::ALL {
            if rng.gen_bool(0.5) {
                faults.insert(kind);
            }
        }
        if faults.is_empty() && rng.gen_bool(0.7) {
            faults.insert(FaultKind::ALL[rng.gen_range(0..FaultKind::ALL.len())]);
        }
        let history_retained_max = rng.gen_range(4..=24);
        let rooms = rng.gen_range(1..=3);
        // Storage faults hit a random non-empty subset of the rooms (all of them: a failing
        // file); the others are healthy.
        let mut faulty_rooms = BTreeSet::new();
        if faults.iter().any(|kind| kind.is_storage()) {
            faulty_rooms = (0..rooms).filter(|_| rng.gen_bool(0.5)).collect();
            if faulty_rooms.is_empty() {
                faulty_rooms.insert(rng.gen_range(0..rooms));
            }
        }
        let mut sc = Scenario {
            rooms,
            hosts: rng.gen_range(1..=2),
            ips: rng.gen_range(1..=3),
            clients: rng.gen_range(2..=7),
            faults,
            fault_ms: rng.gen_range(30_000..=120_000),
            idle_ms: rng.gen_range(1_000..=30_000),
            room: RoomConfig {
                history_retained_max,
                join_replay_max: rng.gen_range(1..=history_retained_max),
                planted_bug: options.planted,
                ..RoomConfig::default()
            },
            faulty_rooms,
            auth: None,
            moderation: false,
            mod_sessions: false,
        };
        let on = |kind| sc.faults.contains(&kind);
        let skew = |rng: &mut madsim::rand::GlobalRng| {
            if on(FaultKind::ClockSkew) {
                rng.gen_range(-120_000i64..=120_000)
            } else {
                0
            }
        };
        let host_offset_ms = (0..sc.hosts).map(|_| skew(&mut rng)).collect();
        let limiter_offset_ms = skew(&mut rng);
        let (client_latency_ms, limiter_latency_ms) = if on(FaultKind::Latency) {
            ((1, rng.gen_range(2..=400)), (1, rng.gen_range(2..=2_000)))
        } else {
            ((1, 3), (1, 3))
        };
        let client_break_p = if on(FaultKind::LossClient) {
            rng.gen_range(0.001..0.02)
        } else {
            0.0
        };
        let limiter_loss_p = if on(FaultKind::LossLimiter) {
            rng.gen_range(0.02..0.3)
        } else {
            0.0
        };
        let commit_fail_p = if on(FaultKind::CommitFail) {
            rng.gen_range(0.02..0.3)
        } else {
            0.0
        };
        let storage_faults = (0..sc.rooms)
            .map(|room| StorageFaults {
                commit_fail_p: if sc.faulty_rooms.contains(&room) {
                    commit_fail_p
                } else {
                    0.0
                },
                ..StorageFaults::default()
            })
            .collect();
        let clients = (0..sc.clients)
            .map(|index| {
                let ip_index = rng.gen_range(0..sc.ips);
                ClientSlot {
                    inbox: Mailbox::new(),
                    ip: client_ip(ip_index),
                    room: rng.gen_range(0..sc.rooms),
                    name: format!("u{index}"),
                    current: ClientConn::default(),
                    last_seen: None,
                    sent: 0,
                    burst_left: 0,
                    connects: 0,
                    sent_on: BTreeMap::new(),
                    keyed: Vec::new(),
                    keys_seen: BTreeSet::new(),
                    resends: 0,
                }
            })
            .collect();
        let tokens = rng
            .gen_bool(0.5)
            .then(|| Tokens::draw(&mut rng, sc.clients));
        sc.auth = tokens.as_ref().map(|t| t.scenario);
        sc.moderation = tokens.is_none() && rng.gen_bool(0.5);
        let mut tokens = tokens;
        if let Some(tokens) = tokens.as_mut() {
            sc.mod_sessions = rng.gen_bool(0.7);
            if sc.mod_sessions {
                tokens.sessions_moderate = true;
                // The first client that can be one is a moderator, each other one 40 %.
                for client in 0..sc.clients {
                    let plan = tokens.plans[client];
                    if plan.grant == crate::tokens::Grant::Send
                        && plan.carries_token
                        && (tokens.moderators.is_empty() || rng.gen_bool(0.4))
                    {
                        tokens.moderators.insert(client);
                    }
                }
            }
            // The admin API moderates in half of the token runs too, beside any sessions.
            sc.moderation = rng.gen_bool(0.5);
        }
        let mut moderation = ModOracle::default();
        moderation.on = sc.moderation || sc.mod_sessions;
        World {
            seed,
            // The demo's limiter scaled down five times (same burst of four, then one per
            // second), so that a run of a minute or two carries enough traffic to trim history.
            limiter_config: RateLimiterConfig {
                cost_ms: 1_000,
                grace_ms: 4_000,
            },
            start: madsim::time::Instant::now(),
            clock: madsim::time::TimeHandle::current(),
            start_elapsed: madsim::time::TimeHandle::current().elapsed(),
            host_offset_ms,
            limiter_offset_ms,
            clock_stepped: false,
            limiter_lossy: limiter_loss_p > 0.0,
            client_latency_ms,
            limiter_latency_ms,
            client_break_p,
            limiter_loss_p,
            cut_ips: BTreeSet::new(),
            limiter_cut: false,
            settling: false,
            hosts: (0..sc.hosts).map(|_| HostSlot::default()).collect(),
            limiter: None,
            clients,
            conns: BTreeMap::new(),
            to_host_queue: BTreeMap::new(),
            to_client_queue: BTreeMap::new(),
            next_conn: 1,
            stores: (0..sc.rooms).map(|_| MemoryStore::new()).collect(),
            storage_faults,
            host_bug: options.host_bug,
            storage_free_at: vec![Duration::ZERO; sc.hosts],
            rooms: vec![RoomOracle::default(); sc.rooms],
            accepts: BTreeMap::new(),
            publishes: BTreeMap::new(),
            zero_answers: BTreeMap::new(),
            faults: BTreeMap::new(),
            violation: None,
            trace_hash: FNV_OFFSET,
            trace: VecDeque::new(),
            keep_trace: options.keep_trace,
            durable_messages: 0,
            tokens,
            moderation,
            sc,
        }
    }

    /// Virtual time since the run started.
    pub fn elapsed(&self) -> Duration {
        // The same value as `Instant::now().duration_since(self.start)`, exactly.
        self.clock.elapsed() - self.start_elapsed
    }

    /// Virtual ms since the run started.
    pub fn elapsed_ms(&self) -> u64 {
        self.elapsed().as_millis() as u64
    }

    /// The instant `at` after the start.
    pub fn instant(&self, at: Duration) -> madsim::time::Instant {
        self.start + at
    }

    /// Host `host`'s clock: true time plus its skew.
    pub fn host_now(&self, host: usize) -> Timestamp {
        skewed(EPOCH_MS + self.elapsed_ms(), self.host_offset_ms[host])
    }

    /// Where `room`'s held run of ids may start, `(lo, hi)` (see [`crate::retention`]),
    /// with `newest` its newest id (0: none); `join_now`: the clock of a join that just
    /// trimmed.
    pub fn retained_range(&self, room: usize, newest: u64, join_now: Option<u64>) -> (u64, u64) {
        let oracle = &self.rooms[room];
        let retained = self.sc.room.history_retained_max as u64;
        let now = self.host_now(room % self.sc.hosts).0;
        let hi = oracle
            .retention
            .surely_from(&oracle.acked, newest, retained, now);
        let lo = oracle
            .retention
            .lowest(&oracle.acked, newest, retained, join_now);
        (lo.min(hi), hi)
    }

    /// The limiter's clock.
    pub fn limiter_now(&self) -> Timestamp {
        skewed(EPOCH_MS + self.elapsed_ms(), self.limiter_offset_ms)
    }

    /// Appends a line to the trace (hashed; kept in part).
    pub fn trace(&mut self, line: impl fmt::Display) {
        use fmt::Write as _;
        // Once the tail is full, the oldest line's buffer is reused: a run writes thousands
        // of lines and keeps 400, so allocating each anew was a good part of their cost.
        let mut buffer = if !self.keep_trace && self.trace.len() >= TRACE_TAIL_LINES {
            let mut oldest = self.trace.pop_front().unwrap_or_default();
            oldest.clear();
            oldest
        } else {
            String::with_capacity(80)
        };
        let _ = write!(buffer, "{:>9} {line}", self.elapsed().as_micros());
        self.trace_hash = fnv1a(self.trace_hash, buffer.as_bytes());
        self.trace_hash = fnv1a(self.trace_hash, b"\n");
        self.trace.push_back(buffer);
    }

    /// Counts one fault of `kind`.
    pub fn count_fault(&mut self, kind: &'static str) {
        *self.faults.entry(kind).or_default() += 1;
    }

    /// Records a broken invariant (the first one wins).
    pub fn violate(&mut self, invariant: &'static str, detail: String) {
        if self.violation.is_none() {
            let at_ms = self.elapsed_ms();
            self.trace(format_args!("VIOLATION [{invariant}] {detail}"));
            self.violation = Some(Violation {
                invariant,
                detail,
                at_ms,
            });
        }
    }

    /// The report of the run so far.
    pub fn report(&self, seed: u64) -> RunReport {
        RunReport {
            seed,
            scenario: self.sc.clone(),
            trace_hash: self.trace_hash,
            trace: self.trace.iter().cloned().collect(),
            faults: self.faults.clone(),
            messages_durable: self.durable_messages,
            violation: self.violation.clone(),
            host_bug: self.host_bug,
        }
    }

    /// Closes every node's mailbox, so that their loops end.
    pub fn close_mailboxes(&mut self) {
        for slot in &self.hosts {
            if let Some(inbox) = &slot.inbox {
                inbox.close();
            }
        }
        if let Some(inbox) = &self.limiter {
            inbox.close();
        }
        for client in &self.clients {
            client.inbox.close();
        }
    }

    /// Frees what the run's tasks hold on to: a madsim runtime does not drop tasks that
    /// still wait on a mailbox, and each holds the world, so the cycle must be cut here.
    pub fn teardown(&mut self) {
        self.close_mailboxes();
        for slot in &mut self.hosts {
            slot.inbox = None;
            slot.node = None;
        }
        self.limiter = None;
        self.clients.clear();
        self.conns.clear();
        self.to_host_queue.clear();
        self.to_client_queue.clear();
        self.stores.clear();
        self.rooms.clear();
        self.tokens = None;
        self.accepts.clear();
        self.zero_answers.clear();
        self.trace.clear();
    }

    /// Whether `kind` is on in this run (and faults are not over).
    pub fn fault_on(&self, kind: FaultKind) -> bool {
        !self.settling && self.sc.faults.contains(&kind)
    }

    /// A fresh connection id for `client`, to the host of its room.
    pub fn open_conn(&mut self, client: usize) -> ConnId {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        let host = self.clients[client].room % self.sc.hosts;
        self.conns.insert(
            conn,
            ConnInfo {
                client,
                host,
                incarnation: self.hosts[host].incarnation,
                open: true,
                last_to_host: Duration::ZERO,
                last_to_client: Duration::ZERO,
            },
        );
        conn
    }

    /// Breaks `conn`: both ends are told at once; frames still in flight are lost.
    pub fn break_conn(&mut self, conn: ConnId, why: &str) {
        let Some(info) = self.conns.get_mut(&conn) else {
            return;
        };
        if !info.open {
            return;
        }
        info.open = false;
        let info = info.clone();
        self.trace(format_args!("break {conn:?} ({why})"));
        self.clients[info.client]
            .inbox
            .push(ClientEvent::Closed { conn });
        let slot = &self.hosts[info.host];
        if slot.incarnation == info.incarnation {
            if let Some(inbox) = &slot.inbox {
                inbox.push(HostEvent::Closed { conn });
            }
        }
    }

    /// Marks `conn` closed once its host has handled the close.
    pub fn conn_closed(&mut self, conn: ConnId) {
        if let Some(info) = self.conns.get_mut(&conn) {
            info.open = false;
        }
    }

    /// A host crashed: it is gone, and every connection to it breaks.
    pub fn host_crashed(&mut self, host: usize) {
        self.hosts[host].inbox = None;
        self.hosts[host].incarnation += 1;
        let conns: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, info)| info.open && info.host == host)
            .map(|(conn, _)| *conn)
            .collect();
        for conn in conns {
            self.break_conn(conn, "host crashed");
        }
        // A connection the host closed whose close had not arrived yet: the close died
        // with the process (its delivery ran there), so the client sees the socket end now.
        let closing: Vec<(ConnId, usize)> = self
            .to_client_queue
            .iter()
            .filter(|(_, queue)| !queue.is_empty())
            .filter_map(|(conn, _)| Some((*conn, self.conns.get(conn)?)))
            .filter(|(_, info)| !info.open && info.host == host)
            .map(|(conn, info)| (conn, info.client))
            .collect();
        for (conn, client) in closing {
            self.to_client_queue.remove(&conn);
            self.trace(format_args!(
                "break {conn:?} (host crashed before its close arrived)"
            ));
            self.clients[client]
                .inbox
                .push(ClientEvent::Closed { conn });
        }
    }

    /// Cuts `ip` off from the hosts, breaking its connections.
    pub fn cut_ip(&mut self, ip: IpAddr) {
        self.cut_ips.insert(ip);
        let conns: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, info)| info.open && self.clients[info.client].ip == ip)
            .map(|(conn, _)| *conn)
            .collect();
        for conn in conns {
            self.break_conn(conn, "partition");
        }
    }

    /// Checks a batch against committed storage just before it commits: the new messages'
    /// timestamps and ids continue the stored ones.
    pub fn check_batch(&mut self, room: usize, batch: &WriteBatch) {
        let stored = self.stores[room].list(ListQuery {
            prefix: keys::MESSAGE_PREFIX,
            limit: 1,
        });
        let mut previous = stored
            .first()
            .and_then(|(key, value)| Some((keys::parse_message(key)?, decode(value)?.ts)));
        for write in &batch.writes {
            let Write::Put { key, value } = write else {
                continue;
            };
            let Some(id) = keys::parse_message(key) else {
                continue; // a ban, a mute, the settings
            };
            moderation::check_write(self, room, key, value);
            let Some(message) = decode(value) else {
                self.violate("storage", format!("undecodable record {key}: {value}"));
                return;
            };
            if message.id != id {
                let detail = format!("room {room} writes {key} as {value}: another id");
                self.violate("edits-never-reorder", detail);
                return;
            }
            if previous.is_some_and(|(newest, _)| id <= newest) {
                // A rewrite in place (an edit, a tombstone): the same message's next state.
                let old = self.stores[room].get(key);
                if let Some(old) = old.filter(|old| !self.moderation.same_record(room, old, value))
                {
                    let detail = format!("room {room} rewrites {key} = {old} as {value}");
                    self.violate("edits-never-reorder", detail);
                    return;
                }
                continue;
            }
            let text = message.text().unwrap_or_default().to_owned();
            let name = match &message.kind {
                moderation::Kind::Chat { name, .. } => name.clone(),
                _ => String::new(),
            };
            let oracle = &self.rooms[room];
            if let Some(acked) = oracle
                .acked
                .get(&message.id)
                .filter(|acked| *acked != value)
            {
                let detail = format!(
                    "room {room} overwrites acknowledged id {} ({acked}) with {value}",
                    message.id
                );
                self.violate("acked-never-lost", detail);
                return;
            }
            if oracle.refused.contains(&text) {
                let detail = format!("room {room} writes {value}, whose sender was told it failed");
                self.violate("refused-never-visible", detail);
                return;
            }
            if let Some((id, timestamp)) = previous {
                if message.id != id + 1 {
                    self.violate(
                        "ids-gap-free",
                        format!("room {room} writes id {} after stored id {id}", message.id),
                    );
                }
                if message.ts <= timestamp {
                    self.violate(
                        "timestamps-increasing",
                        format!(
                            "room {room} id {} has timestamp {} not after {timestamp} of id {id}",
                            message.id, message.ts
                        ),
                    );
                }
            }
            previous = Some((message.id, message.ts));
            tokens::judge_message(self, room, &text, &name, "is written");
            if value.contains(r#""key":"#) {
                self.check_send_once(room, id, &text, value, batch);
            }
        }
    }

    /// `send-once`: a new record `id` carrying a key is the only stored record of its
    /// sender with that key once `batch` commits (a resend of a retained message stores
    /// nothing; one the room trimmed is new, and the batch deletes the original if storage
    /// still held it: the room's retention settings trim memory before storage).
    fn check_send_once(
        &mut self,
        room: usize,
        id: u64,
        text: &str,
        value: &str,
        batch: &WriteBatch,
    ) {
        let key = crate::json::Object::parse(value).and_then(|v| Some(v.str("key")?.to_owned()));
        let (Some(key), Some(client)) = (key, client_of_text(text)) else {
            return;
        };
        let slot = (client, key);
        if let Some(&old) = self.rooms[room].stored_keys.get(&slot) {
            let old_key = keys::message(old);
            // Only under retention settings, for an original the room may have trimmed
            // (without them a trimmed record leaves storage in the batch that pushes it out,
            // so a resend of a retained one is caught even when its own batch pushes the
            // original out).
            let newest = self.rooms[room].newest_acked();
            let deleted = self.rooms[room].retention.changed
                && old < self.retained_range(room, newest, None).1
                && batch
                    .writes
                    .iter()
                    .any(|write| matches!(write, Write::Delete { key } if *key == old_key));
            let still = !deleted
                && self.stores[room]
                    .get(&old_key)
                    .and_then(|old_value| {
                        crate::json::Object::parse(old_value)
                            .and_then(|v| Some(v.str("key")? == slot.1))
                    })
                    .unwrap_or(false);
            if old != id && still {
                let detail = format!(
                    "room {room} writes id {id} = {value}, but id {old} holds the same sender's key {}",
                    slot.1
                );
                self.violate("send-once", detail);
            }
        }
        self.rooms[room].stored_keys.insert(slot, id);
    }

    /// Decides how a commit of `room` that starts now will end.
    pub fn commit_outcome(&mut self, room: usize) -> CommitOutcome {
        let mut rng = thread_rng();
        let max = if self.sc.faults.contains(&FaultKind::Latency) {
            COMMIT_LATENCY_MAX_MS
        } else {
            20
        };
        let latency = Duration::from_millis(rng.gen_range(1..=max));
        if self.settling {
            return CommitOutcome::Commit(latency);
        }
        let now = self.elapsed_ms();
        let faults = &self.storage_faults[room];
        if now < faults.hang_until_ms {
            // Some hangs end just before the bound (slow but durable), most after it.
            let took = rng.gen_range(COMMIT_BOUND_MS / 2..=3 * COMMIT_BOUND_MS);
            let took = Duration::from_millis(took);
            return if took > Duration::from_millis(COMMIT_BOUND_MS) {
                self.count_fault(FaultKind::CommitHang.name());
                CommitOutcome::Hang(took)
            } else {
                CommitOutcome::Commit(took)
            };
        }
        if now < faults.fail_until_ms {
            self.count_fault(FaultKind::CommitFlaky.name());
            return CommitOutcome::Fail(latency, "storage failing");
        }
        if faults.commit_fail_p > 0.0 && rng.gen_bool(faults.commit_fail_p) {
            self.count_fault(FaultKind::CommitFail.name());
            return CommitOutcome::Fail(latency, "commit failed");
        }
        CommitOutcome::Commit(latency)
    }

    /// How long a commit of `room` on `host` that will keep storage busy for `busy` waits
    /// for the host's storage: always zero, but for [`HostBug::SharedStorageQueue`].
    pub fn storage_queue_wait(&mut self, host: usize, busy: Duration) -> Duration {
        if self.host_bug != Some(HostBug::SharedStorageQueue) {
            return Duration::ZERO;
        }
        let now = self.elapsed();
        let start = self.storage_free_at[host].max(now);
        self.storage_free_at[host] = start + busy;
        start - now
    }

    /// Whether a restore of `room` (its storage read) fails now.
    pub fn restore_fails(&mut self, room: usize) -> bool {
        let fails =
            !self.settling && self.elapsed_ms() < self.storage_faults[room].restore_fail_until_ms;
        if fails {
            self.count_fault(FaultKind::RestoreFail.name());
        }
        fails
    }

    /// A batch failed (nothing of it was written) and the host told the room: its messages
    /// must never be seen, and each sender still connected is owed a storage error within
    /// the client link's latency. Returns the checks to run then: (client, conn, errors owed).
    pub fn refused(&mut self, room: usize, batch: &WriteBatch) -> Vec<(usize, ConnId, u64)> {
        let mut checks = Vec::new();
        for write in &batch.writes {
            let Write::Put { value, .. } = write else {
                continue;
            };
            let Some(text) = decode(value).and_then(|m| Some(m.text()?.to_owned())) else {
                continue;
            };
            self.count_fault("storage-refused");
            let oracle = &mut self.rooms[room];
            oracle.refused.insert(text.clone());
            let problem = if let Some(id) = oracle.seen_texts.get(&text) {
                Some(format!(
                    "{} was seen as id {id} before its write failed",
                    text
                ))
            } else if oracle.acked_texts.contains(&text) {
                Some(format!("{} was acknowledged before its write failed", text))
            } else {
                None
            };
            if let Some(problem) = problem {
                self.violate("refused-never-visible", format!("room {room}: {problem}"));
            }
            let Some(client) = client_of_text(&text).filter(|client| *client < self.clients.len())
            else {
                continue;
            };
            let slot = &mut self.clients[client];
            let Some(conn) = slot.sent_on.get(&text).copied() else {
                continue;
            };
            if slot.current.conn == Some(conn) {
                slot.current.storage_errors_owed += 1;
                checks.push((client, conn, slot.current.storage_errors_owed));
            }
        }
        checks
    }

    /// Whether `conn` is still `client`'s open connection.
    fn still_on(&self, client: usize, conn: ConnId) -> bool {
        self.clients[client].current.conn == Some(conn)
            && self.conns.get(&conn).is_some_and(|info| info.open)
    }

    /// The told-within-bound check: `client`, still on `conn`, has had `owed` storage errors.
    pub fn check_told(&mut self, client: usize, conn: ConnId, owed: u64) {
        if !self.still_on(client, conn) {
            return;
        }
        let got = self.clients[client].current.storage_errors;
        if got < owed {
            let detail = format!(
                "u{client} on {conn:?} had {owed} messages in failed writes but got {got} \
                 storage errors within {CLIENT_LATENCY_MAX_MS} ms of the last failure"
            );
            self.violate("told-within-bound", detail);
        }
    }

    /// The answered-within-bound check: `client`, still on `conn`, has had `sent` answers.
    pub fn check_answered(&mut self, client: usize, conn: ConnId, sent: u64) {
        if !self.still_on(client, conn) {
            return;
        }
        let room = self.clients[client].room;
        let got = self.clients[client].current.answers;
        if got < sent {
            let (invariant, bound) = if self.sc.faulty_rooms.contains(&room) {
                ("answered-within-bound", ANSWER_BOUND_FAULTY_MS)
            } else {
                ("healthy-rooms-unaffected", ANSWER_BOUND_HEALTHY_MS)
            };
            let detail = format!(
                "room {room}: u{client} on {conn:?} sent {sent} chat frames but had {got} \
                 answers within {bound} ms of the last"
            );
            self.violate(invariant, detail);
        }
    }

    /// The bound within which a chat frame sent now to `room` must be answered.
    pub fn answer_bound(&self, room: usize) -> Duration {
        Duration::from_millis(if self.sc.faulty_rooms.contains(&room) {
            ANSWER_BOUND_FAULTY_MS
        } else {
            ANSWER_BOUND_HEALTHY_MS
        })
    }

    /// Checks the shape of a room's storage: ids consecutive, exactly the newest retained
    /// (`at_commit`: right after a commit, when storage keeps at most the count the batch
    /// was built under; later a confirmed change may have lowered it, with storage trimmed
    /// only by the next batch).
    pub fn check_store(&mut self, room: usize, at_commit: bool) {
        let retained = self.sc.room.history_retained_max as u64;
        let ids: Vec<u64> = self.stores[room]
            .list(all_messages())
            .iter()
            .filter_map(|(key, _)| keys::parse_message(key))
            .collect();
        if ids.windows(2).any(|pair| pair[1] != pair[0] + 1) {
            self.violate(
                "stored-history",
                format!("room {room} stores non-consecutive ids {ids:?}"),
            );
            return;
        }
        let newest = ids.last().copied().unwrap_or(0);
        if self.rooms[room].retention.changed {
            // At most the largest count possibly in force, at least everything surely held.
            let (_, hi) = self.retained_range(room, newest, None);
            let most = if at_commit {
                self.rooms[room].retention.count_max(retained)
            } else {
                retained
            };
            let first = ids.first().copied().unwrap_or(newest + 1);
            if ids.len() as u64 > newest.min(most) || first > hi {
                self.violate(
                    "stored-history",
                    format!(
                        "room {room} stores ids {ids:?}: at most the newest {most}, and \
                         every id from {hi} (the retention in force keeps those)"
                    ),
                );
            }
            return;
        }
        let expected = newest.min(retained) as usize;
        if ids.len() != expected {
            self.violate(
                "stored-history",
                format!(
                    "room {room} stores {} messages ({ids:?}), expected the newest {expected}",
                    ids.len()
                ),
            );
        }
    }

    /// Records that a batch is confirmed durable: its messages are acknowledged.
    pub fn acknowledge(&mut self, room: usize, batch: &WriteBatch) {
        for write in &batch.writes {
            if let Write::Put { key, value } = write {
                if let Some(id) = keys::parse_message(key) {
                    self.rooms[room].acked.insert(id, value.clone());
                    if let Some(text) = decode(value).and_then(|m| Some(m.text()?.to_owned())) {
                        self.rooms[room].acked_texts.insert(text);
                    }
                    moderation::durable_record(self, room, id, value);
                    self.durable_messages += 1;
                }
            }
        }
    }

    /// A room was restored from storage: what it found is acknowledged (a crash may have
    /// come between a commit and its confirmation), and every message a client saw must be
    /// there.
    pub fn restored(&mut self, room: usize, stored: &[(String, Frame)]) {
        for (key, value) in stored {
            if let Some(id) = keys::parse_message(key) {
                // Storage may hold a later state of an acknowledged record (a rewrite whose
                // confirmation a crash lost).
                let acked = self.rooms[room].acked.get(&id);
                if acked.is_none_or(|acked| self.moderation.same_record(room, acked, value)) {
                    self.rooms[room].acked.insert(id, value.clone());
                }
                if let Some(text) = decode(value).and_then(|m| Some(m.text()?.to_owned())) {
                    self.rooms[room].acked_texts.insert(text);
                }
                moderation::durable_record(self, room, id, value);
            }
        }
        moderation::restored(self, room, stored);
        moderation::check_storage(self, room);
        self.check_seen_stored(room);
    }

    /// Every message a client saw, unless trimmed as older than the retained history, is
    /// in storage with the same frame.
    pub fn check_seen_stored(&mut self, room: usize) {
        let retained = self.sc.room.history_retained_max as u64;
        let newest = newest_id(&self.stores[room]);
        let floor = if self.rooms[room].retention.changed {
            self.retained_range(room, newest, None).1
        } else {
            newest.saturating_sub(retained) + 1
        };
        let mut problem = None;
        for (id, (frame, _)) in self.rooms[room].seen.range(floor..) {
            match self.stores[room].get(&keys::message(*id)) {
                Some(stored) if self.moderation.same_record(room, frame, stored) => {}
                Some(stored) => {
                    problem = Some(format!("id {id} was seen as {frame}, stored as {stored}"))
                }
                None => {
                    problem = Some(format!(
                        "id {id} was seen by a client but is not in storage (newest {newest})"
                    ))
                }
            }
            if problem.is_some() {
                break;
            }
        }
        if let Some(problem) = problem {
            self.violate("seen-is-durable", format!("room {room}: {problem}"));
        }
    }

    /// The end-of-run checks (after settling).
    pub fn check_final(&mut self) {
        for room in 0..self.sc.rooms {
            self.check_store(room, false);
            self.check_seen_stored(room);
            self.check_acked_stored(room);
            self.check_converged(room);
            self.check_rosters(room);
        }
        self.check_rate_limits();
    }

    /// Storage equals the last N acknowledged messages.
    fn check_acked_stored(&mut self, room: usize) {
        let retained = self.sc.room.history_retained_max;
        let stored = self.stores[room].list(all_messages());
        let newest = self.rooms[room].newest_acked();
        // Under retention settings storage keeps at least what is surely held.
        let keep = if self.rooms[room].retention.changed {
            let hi = self.retained_range(room, newest, None).1;
            let surely = (newest + 1 - hi) as usize;
            stored.len().clamp(surely, retained)
        } else {
            retained
        };
        let acked = &self.rooms[room].acked;
        let expected: Vec<(String, Frame)> = acked
            .iter()
            .rev()
            .take(keep)
            .rev()
            .map(|(id, frame)| (keys::message(*id), frame.clone()))
            .collect();
        if stored != expected {
            let ids = |v: &[(String, Frame)]| -> Vec<u64> {
                v.iter()
                    .filter_map(|(k, _)| keys::parse_message(k))
                    .collect()
            };
            self.violate(
                "stored-is-last-acked",
                format!(
                    "room {room} stores ids {:?}, the last {retained} acknowledged are {:?}",
                    ids(&stored),
                    ids(&expected)
                ),
            );
        }
        let mut last_ts = 0;
        for (_, value) in &stored {
            let ts = decode(value).map_or(0, |m| m.ts);
            if ts <= last_ts {
                self.violate(
                    "timestamps-increasing",
                    format!("room {room} stores timestamp {ts} after {last_ts}"),
                );
                break;
            }
            last_ts = ts;
        }
    }

    /// Liveness: every client is connected, joined, and has every message.
    fn check_converged(&mut self, room: usize) {
        let newest = newest_id(&self.stores[room]);
        // Every message may have aged out before a client's last join: then it saw none.
        let all_may_age = self.rooms[room].retention.changed
            && self.retained_range(room, newest, None).1 > newest;
        let mut problem = None;
        let can_join = |client: usize| self.tokens.as_ref().is_none_or(|t| t.can_join(client));
        let mut live = Vec::new();
        for (index, client) in self.clients.iter().enumerate() {
            if client.room != room
                || !can_join(index)
                || self.moderation.may_stay_banned(
                    room,
                    &moderation::user_key(self, index),
                    client.ip,
                )
            {
                continue;
            }
            live.push(index);
            let current = &client.current;
            let connected = current
                .conn
                .is_some_and(|conn| self.conns.get(&conn).is_some_and(|info| info.open));
            if !connected || !current.ready {
                problem = Some(format!(
                    "{} did not get back in (connected {connected}, ready {})",
                    client.name, current.ready
                ));
            } else if newest > 0
                && current.last_id != Some(newest)
                && !(all_may_age && current.last_id.is_none())
            {
                problem = Some(format!(
                    "{} has seen up to {:?}, the room is at {newest}",
                    client.name, current.last_id
                ));
            }
            if problem.is_some() {
                break;
            }
        }
        if let Some(problem) = problem {
            self.violate("liveness", format!("room {room}: {problem}"));
            return;
        }
        moderation::check_topics(self, room, &live);
    }

    /// Once settled, every client's roster and the room's presence are the same multiset.
    fn check_rosters(&mut self, room: usize) {
        let mut expected: Vec<String> = self
            .clients
            .iter()
            .enumerate()
            .filter(|(_, c)| c.room == room && c.current.ready)
            .map(|(index, c)| tokens::shown_name(self, index, c.current.conn))
            .collect();
        expected.sort();
        let mut presence = self.rooms[room].presence.clone();
        presence.sort();
        if presence != expected {
            self.violate(
                "roster",
                format!("room {room} presence {presence:?}, joined clients {expected:?}"),
            );
            return;
        }
        for client in self.clients.iter().filter(|c| c.room == room) {
            let mut roster = client.current.roster.clone();
            roster.sort();
            if client.current.ready && roster != expected {
                let detail = format!(
                    "room {room}: {} believes {roster:?}, joined are {expected:?}",
                    client.name
                );
                self.violate("roster", detail);
                return;
            }
        }
    }

    /// No IP exceeds its rate limit over any window.
    ///
    /// Every frame a room processes is one action on the IP's limiter, and a session only
    /// processes its next frame once the answer's wait has passed (in the host's clock). If
    /// the `i`-th action in a window is followed by another frame of the same session in the
    /// window, its next-allowed time `N_i` satisfies `window start + i * cost ≤ N_i ≤ window
    /// end + grace`, so at most `burst_max(window)` such frames; the rest are each session's
    /// last in the window. Hence: accepted frames ≤ `burst_max(window)` + sessions. This
    /// needs steady clocks and answers that arrive (a session re-asks after a lost answer),
    /// so it is checked only in runs without clock steps and limiter loss or partitions; the
    /// per-session check in the host (the oracle's [`SessionModel`]) holds in every run.
    ///
    /// [`SessionModel`]: crate::shadow::SessionModel
    fn check_rate_limits(&mut self) {
        let config = self.limiter_config;
        for (ip, answers) in &self.zero_answers {
            for i in 0..answers.len() {
                for j in i..answers.len() {
                    let window = answers[j] - answers[i];
                    if (j - i + 1) as u64
                        > crate::shadow::burst_max(config.cost_ms, config.grace_ms, window)
                    {
                        let detail = format!(
                            "limiter gave {ip} {} zero waits within {window} ms",
                            j - i + 1
                        );
                        self.violate("rate-limit", detail);
                        return;
                    }
                }
            }
        }
        if self.clock_stepped || self.limiter_lossy {
            return;
        }
        let mut problem = None;
        'ips: for (ip, accepts) in &self.accepts {
            for i in 0..accepts.len() {
                let mut sessions = BTreeSet::new();
                for j in i..accepts.len() {
                    sessions.insert(accepts[j].1);
                    let window = accepts[j].0 - accepts[i].0;
                    let allowed = crate::shadow::burst_max(config.cost_ms, config.grace_ms, window)
                        + sessions.len() as u64;
                    if (j - i + 1) as u64 > allowed {
                        problem = Some(format!(
                            "{ip} had {} frames accepted within {window} ms over {} sessions \
                             (at most {allowed})",
                            j - i + 1,
                            sessions.len()
                        ));
                        break 'ips;
                    }
                }
            }
        }
        if let Some(problem) = problem {
            self.violate("rate-limit", problem);
        }
    }
}

/// The IP of client IP number `index`.
pub fn client_ip(index: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 1, index as u8 + 1))
}

fn skewed(true_ms: u64, offset_ms: i64) -> Timestamp {
    Timestamp(true_ms.saturating_add_signed(offset_ms))
}

/// The client that sent a chat text (`u<client>#<n>`).
pub fn client_of_text(text: &str) -> Option<usize> {
    text.strip_prefix('u')?.split('#').next()?.parse().ok()
}

fn decode(value: &Frame) -> Option<Record> {
    Record::parse(value)
}

fn all_messages() -> ListQuery {
    ListQuery {
        prefix: keys::MESSAGE_PREFIX,
        limit: usize::MAX,
    }
}

/// The newest message id in `store` (0 if none).
pub fn newest_id(store: &MemoryStore) -> u64 {
    store
        .list(ListQuery {
            prefix: keys::MESSAGE_PREFIX,
            limit: 1,
        })
        .first()
        .and_then(|(key, _)| keys::parse_message(key))
        .unwrap_or(0)
}

/// Whether the planted bug, if any, is one that only a restore can trigger (for reports).
pub fn needs_restore(bug: PlantedBug) -> bool {
    matches!(
        bug,
        PlantedBug::RestoreForgetsAttachment | PlantedBug::LimiterResetOnRestore
    )
}
