//! Room objects: one task per room drives a core [`RoomHost`] and keeps the socket table.
//!
//! # The loop
//! ```text
//!   select (biased) ─┬─ a reply (storage confirmed a batch)
//!                    ├─ an input, plus up to 64 more already queued, so that their writes
//!                    │  group into one batch (after each, its outputs but a new batch are
//!                    │  carried out: a limiter question is answered before the next input)
//!                    └─ the host's timeout (idle eviction)
//!   then drain every output: frames into the connections' shared writers, batches to the
//!   storage thread (the confirmation comes back as a reply; the loop never waits for it),
//!   questions to the rate limiters (answered at once, in this process: the verdict goes
//!   straight back into the room, whose new outputs this same drain carries out),
//!   attachments into the socket table; then flush every
//!   connection that got frames this turn, once: one `writev` per connection per turn,
//!   straight from this task (a burst of inputs batches itself, a lone message goes out at
//!   once).
//! ```
//! The socket table outlives the core room: on eviction (hibernation) the [`RoomHost`]
//! drops the room and, once nothing is in flight (no storage batch or publish), the task
//! itself retires, leaving the table (each connection's writer and
//! attachment) in the registry as a [`DormantRoom`]. The next event starts a task that
//! restores the room from storage and those attachments. A room with no sockets is simply
//! forgotten.
//!
//! Storage confirmations arrive on an unbounded channel that is bounded by construction: one
//! batch in flight per room.
//!
//! A room task gets what it needs through [`Rooms`] (its registry and a [`RoomContext`]:
//! storage, metrics, the rate limiters, its settings), not the whole runtime.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use edgechat_core::auth::{AuthConfig, Identity};
use edgechat_core::host::{HostOutput, RoomHost};
use edgechat_core::http::HistoryQuery;
use edgechat_core::ids::ObjectId;
use edgechat_core::limiter::limiter_id_for;
use edgechat_core::moderation::{ModAction, ModError, RoomSummary, RoomView};
use edgechat_core::protocol::Frame;
use edgechat_core::room::{
    close_after_restore_failure, ConnId, Input, Output, PublishError, PublishId, RoomAuth,
    RoomConfig,
};
use edgechat_core::storage::BatchId;
use tokio::sync::{mpsc, oneshot};

use crate::clock::{now, sleep_until};
use crate::conn::{
    flush_all, text_frame, ConnWriter, Queued, BATCH_WRITERS_MIN, CLOSE_REASON_TOO_SLOW,
    CLOSE_TOO_SLOW,
};
use crate::limiter::Limiters;
use crate::metrics::{dec, inc, Metrics};
use crate::objects::{HibernatingRegistry, Route, Start};
use crate::store::Store;

/// Inbox size of one room.
const ROOM_INBOX_LEN: usize = 1_024;
/// Most queued inputs handled before the outputs are drained (bounds one turn's latency
/// while letting a burst of messages share one storage batch).
const INPUTS_PER_TURN_MAX: usize = 64;

/// A message to a room task.
///
/// Kept small (the rarer, larger messages are boxed): a room's inbox allocates room for 32
/// messages when it opens, so every resident room pays for the size 32 times.
#[derive(Debug)]
pub(crate) enum RoomMsg {
    /// A WebSocket was accepted; `ack` answers once the room holds it.
    Connect(Box<Connect>),
    /// A text frame from `conn`.
    Text { conn: ConnId, text: String },
    /// A binary frame from `conn`.
    Binary { conn: ConnId },
    /// `conn` closed or broke.
    Closed { conn: ConnId },
    /// Publish as a system user; answered with the id once durable.
    Publish(Box<Publish>),
    /// A page of history, newest first.
    History {
        query: HistoryQuery,
        reply: oneshot::Sender<Vec<Frame>>,
    },
    /// The joined users' names.
    Presence { reply: oneshot::Sender<Vec<String>> },
    /// A moderation action of the admin API; answered once it is durable and in force.
    Moderate(Box<Moderate>),
    /// Everything the admin API shows of the room.
    Inspect { reply: oneshot::Sender<RoomView> },
    /// The room's figures for the admin API's list, without restoring it if evicted.
    Summarize { reply: oneshot::Sender<RoomFigures> },
    /// Evict now (admin); answers whether the room is now evicted.
    Hibernate { reply: oneshot::Sender<bool> },
    /// Finish outstanding writes, then answer and stop.
    Shutdown { reply: oneshot::Sender<()> },
    /// Something was due when the room was evicted (a token expiry, see
    /// `RoomHost::wake_at`): restore it and let it act.
    Wake,
}

/// [`RoomMsg::Connect`]: a WebSocket was accepted; `ack` answers once the room holds it.
#[derive(Debug)]
pub(crate) struct Connect {
    pub conn: ConnId,
    pub ip: IpAddr,
    /// The verified user, when the upgrade carried a valid token.
    pub identity: Option<Identity>,
    pub writer: Arc<ConnWriter>,
    pub ack: oneshot::Sender<()>,
}

/// [`RoomMsg::Publish`]: publish as a system user; answered with the id once durable.
#[derive(Debug)]
pub(crate) struct Publish {
    pub name: String,
    pub message: String,
    pub reply: oneshot::Sender<Result<u64, PublishError>>,
}

/// [`RoomMsg::Moderate`]: an admin API action; answered once it is durable and in force.
#[derive(Debug)]
pub(crate) struct Moderate {
    pub action: ModAction,
    pub reply: oneshot::Sender<Result<(), ModError>>,
}

/// A room's figures for the admin API's list of rooms.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RoomFigures {
    pub connections: usize,
    /// Joined members and the newest id, when the room is resident.
    pub resident: Option<(usize, u64)>,
}

/// An answer to something the room asked for.
#[derive(Debug)]
enum RoomReply {
    /// Storage settled this batch: committed (`true`) or refused (`false`).
    Settled(BatchId, bool),
}

/// The settings of every room (a slice of the runtime's).
#[derive(Debug, Clone)]
pub(crate) struct RoomSettings {
    pub room: RoomConfig,
    /// The access policy, when auth is on: each room checks refreshed tokens with it.
    pub auth: Option<Arc<AuthConfig>>,
    /// How long a room stays in memory without events before it hibernates.
    pub idle_ms: u64,
    /// Most frames from earlier turns a connection may leave unwritten after a flush.
    pub outbound_queue_len: usize,
    /// A turn's socket writes go to io_uring in one submission.
    pub io_uring: bool,
}

/// What a room task needs besides its own state, shared by every room.
#[derive(Debug)]
pub(crate) struct RoomContext {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    /// Where rooms ask whether a session may act (answered synchronously).
    pub limiters: Arc<Limiters>,
    pub settings: RoomSettings,
}

/// A room without a task: evicted, nothing in flight, its sockets kept open.
#[derive(Debug, Default)]
pub(crate) struct DormantRoom {
    /// Each socket's writer and the core's attachment for it.
    pub sockets: Vec<(ConnId, Arc<ConnWriter>, Box<[u8]>)>,
}

/// How a room task starts.
type RoomStart = Start<RoomMsg, DormantRoom>;

/// The rooms: their registry and their tasks' context.
#[derive(Debug)]
pub(crate) struct Rooms {
    registry: HibernatingRegistry<RoomMsg, DormantRoom>,
    context: RoomContext,
    /// The names rooms were last joined by, for the admin API (ids are one-way hashes).
    labels: std::sync::Mutex<BTreeMap<ObjectId, Box<str>>>,
}

/// Most room names remembered for the admin API; beyond it, names of rooms the registry no
/// longer holds are forgotten.
const LABELS_MAX: usize = 65_536;

impl Rooms {
    pub(crate) fn new(context: RoomContext) -> Arc<Rooms> {
        Arc::new(Rooms {
            registry: HibernatingRegistry::new(ROOM_INBOX_LEN),
            context,
            labels: std::sync::Mutex::new(BTreeMap::new()),
        })
    }

    /// Remembers that room `id` is called `name`.
    pub(crate) fn remember_label(&self, id: ObjectId, name: &str) {
        let mut labels = self.labels.lock().expect("labels lock poisoned");
        if labels.get(&id).is_some_and(|known| **known == *name) {
            return;
        }
        if labels.len() >= LABELS_MAX {
            let held: std::collections::BTreeSet<ObjectId> = self
                .registry
                .survey(|_| ())
                .into_iter()
                .map(|(id, _, _)| id)
                .collect();
            labels.retain(|id, _| held.contains(id));
            if labels.len() >= LABELS_MAX {
                return;
            }
        }
        labels.insert(id, name.into());
    }

    /// Every room in memory or with open sockets, for the admin API. Resident rooms are
    /// asked for their figures; hibernated ones are not woken.
    pub(crate) async fn summaries(&self) -> Vec<RoomSummary> {
        let survey = self.registry.survey(|dormant| dormant.sockets.len());
        let mut summaries = Vec::with_capacity(survey.len());
        for (id, inbox, dormant_sockets) in survey {
            let mut figures = RoomFigures {
                connections: dormant_sockets.unwrap_or(0),
                resident: None,
            };
            if let Some(inbox) = inbox {
                let (reply, answer) = oneshot::channel();
                if inbox.send(RoomMsg::Summarize { reply }).await.is_ok() {
                    if let Ok(answered) = answer.await {
                        figures = answered;
                    }
                }
            }
            let room = self
                .labels
                .lock()
                .expect("labels lock poisoned")
                .get(&id)
                .map(|label| label.to_string());
            summaries.push(RoomSummary {
                id: id.to_hex(),
                room,
                connections: figures.connections,
                members: figures.resident.map(|(members, _)| members),
                last_id: figures.resident.map(|(_, last_id)| last_id),
                resident: figures.resident.is_some(),
            });
        }
        summaries
    }

    /// Routes `msg` to room `id`, starting its task if needed.
    pub(crate) fn route(self: &Arc<Self>, id: ObjectId, msg: RoomMsg) -> Route<RoomMsg> {
        self.registry
            .route(id, msg, |start| spawn(self.clone(), id, start))
    }

    /// Sends `msg` to room `id`, following the room across a retirement.
    ///
    /// # Errors
    /// Gives the message back if no task would take it (only during shutdown).
    pub(crate) async fn send(self: &Arc<Self>, id: ObjectId, msg: RoomMsg) -> Result<(), RoomMsg> {
        self.registry
            .send(id, msg, |start| spawn(self.clone(), id, start))
            .await
    }

    /// Every live room's inbox (dormant rooms have nothing in flight).
    pub(crate) fn inboxes(&self) -> Vec<mpsc::Sender<RoomMsg>> {
        self.registry.inboxes()
    }
}

/// Where a room task's replies arrive.
struct Replies {
    /// Storage's confirmations; opened with the room's first batch (a room that only sees
    /// joins and leaves never writes, and a channel is most of a kilobyte).
    durable: Option<mpsc::UnboundedReceiver<(BatchId, bool)>>,
}

impl Replies {
    /// The next confirmation; never ready while no batch was ever written.
    async fn durable(&mut self) -> Option<(BatchId, bool)> {
        match &mut self.durable {
            Some(durable) => durable.recv().await,
            None => std::future::pending().await,
        }
    }
}

/// One open connection, as the room task sees it.
#[derive(Debug)]
struct Socket {
    writer: Arc<ConnWriter>,
    /// The core's last attachment for this connection (what survives hibernation).
    attachment: Vec<u8>,
    /// Frames queued this turn (more than none: the connection is in `RoomTask::dirty`).
    queued_this_turn: usize,
}

/// The core settings of room `id`: the shared ones, with the access policy aimed at it.
fn room_config(settings: &RoomSettings, id: ObjectId) -> RoomConfig {
    let mut config = settings.room.clone();
    if let Some(auth) = &settings.auth {
        config.auth = Some(RoomAuth {
            config: auth.clone(),
            room: id,
        });
    }
    config
}

/// Starts the task of room `id`.
fn spawn(rooms: Arc<Rooms>, id: ObjectId, start: RoomStart) {
    let RoomStart {
        inbox,
        dormant,
        pending,
    } = start;
    // A new task starts evicted; it restores on its first event. A dormant room is counted
    // as hibernated already.
    let context = &rooms.context;
    if dormant.is_none() {
        inc(&context.metrics.rooms_hibernated);
    }
    inc(&context.metrics.room_tasks);
    let sockets = dormant
        .unwrap_or_default()
        .sockets
        .into_iter()
        .map(|(conn, writer, attachment)| {
            let socket = Socket {
                writer,
                attachment: attachment.into_vec(),
                queued_this_turn: 0,
            };
            (conn, socket)
        })
        .collect();
    let settings = &context.settings;
    let task = RoomTask {
        backlog_max: settings.outbound_queue_len.max(1),
        batch_writes: settings.io_uring,
        dirty: Vec::new(),
        host: RoomHost::new(room_config(settings, id), settings.idle_ms),
        rooms,
        id,
        sockets,
        durable: None,
        durable_opened: None,
        publishes: BTreeMap::new(),
        moderations: BTreeMap::new(),
        next_publish: 1,
        counted_resident: false,
        stopping: Vec::new(),
    };
    let replies = Replies { durable: None };
    // Boxed: the task's future then holds a pointer, not the whole state (which an async
    // fn's arguments would otherwise occupy twice), in every resident room.
    tokio::spawn(Box::new(task).run(inbox, replies, pending));
}

struct RoomTask {
    rooms: Arc<Rooms>,
    id: ObjectId,
    host: RoomHost,
    sockets: BTreeMap<ConnId, Socket>,
    /// Connections with frames queued this turn, flushed once at its end.
    dirty: Vec<ConnId>,
    /// Most frames from earlier turns a connection may leave unwritten after a flush (a
    /// turn's own frames, such as a join's roster and history, never count against it).
    backlog_max: usize,
    /// [`RoomSettings::io_uring`].
    batch_writes: bool,
    /// Storage settles batches here (opened with the first batch).
    durable: Option<mpsc::UnboundedSender<(BatchId, bool)>>,
    /// Its receiving end, just opened, for the loop to take into its [`Replies`].
    durable_opened: Option<mpsc::UnboundedReceiver<(BatchId, bool)>>,
    publishes: BTreeMap<PublishId, oneshot::Sender<Result<u64, PublishError>>>,
    /// Moderation requests waiting for storage (their ids share `next_publish`).
    moderations: BTreeMap<PublishId, oneshot::Sender<Result<(), ModError>>>,
    next_publish: u64,
    /// Whether the gauges count this room as resident.
    counted_resident: bool,
    stopping: Vec<oneshot::Sender<()>>,
}

impl RoomTask {
    async fn run(
        mut self: Box<Self>,
        mut inbox: mpsc::Receiver<RoomMsg>,
        mut replies: Replies,
        pending: Vec<RoomMsg>,
    ) {
        // What arrived while the previous task handed over comes first, in order.
        for msg in pending {
            self.handle_msg(msg).await;
        }
        self.drain_outputs();
        loop {
            if let Some(opened) = self.durable_opened.take() {
                replies.durable = Some(opened);
            }
            // While a deferred eviction waits for a batch, the confirmation will wake the
            // loop; re-arming an already past deadline would only spin.
            let timeout = match self.host.room() {
                Some(room) if !room.is_quiescent() => None,
                _ => self.host.poll_timeout(),
            };
            tokio::select! {
                biased;
                Some((batch, durable)) = replies.durable() => {
                    self.handle_reply(RoomReply::Settled(batch, durable)).await;
                    while let Some(Ok((batch, durable))) =
                        replies.durable.as_mut().map(mpsc::UnboundedReceiver::try_recv)
                    {
                        self.handle_reply(RoomReply::Settled(batch, durable)).await;
                    }
                }
                msg = inbox.recv() => {
                    let Some(msg) = msg else { break };
                    self.handle_msg(msg).await;
                    self.carry_out_within_turn();
                    for _ in 0..INPUTS_PER_TURN_MAX {
                        match inbox.try_recv() {
                            Ok(msg) => self.handle_msg(msg).await,
                            Err(_) => break,
                        }
                        self.carry_out_within_turn();
                    }
                }
                () = sleep_until(timeout) => self.host.handle_timeout(now()),
            }
            self.drain_outputs();
            self.count_residency();
            if self.finish_stopping() {
                break;
            }
            if !self.host.is_resident()
                && self.publishes.is_empty()
                && self.moderations.is_empty()
                && self.stopping.is_empty()
            {
                tracing::debug!(room = %self.id, sockets = self.sockets.len(), "evicted room: task retires");
                break;
            }
        }
        self.retire(inbox).await;
    }

    async fn handle_msg(&mut self, msg: RoomMsg) {
        match msg {
            RoomMsg::Connect(connect) => {
                let Connect {
                    conn,
                    ip,
                    identity,
                    writer,
                    ack,
                } = *connect;
                // Restore first: the new connection is not part of the hibernated state.
                if !self.ensure_resident().await {
                    return; // dropping `ack` tells the connection the room is unavailable
                }
                self.sockets.insert(
                    conn,
                    Socket {
                        writer,
                        attachment: Vec::new(),
                        queued_this_turn: 0,
                    },
                );
                match identity {
                    None => self.input(Input::Connect { conn, ip }),
                    Some(identity) => self.connect_as(conn, ip, identity),
                }
                let _ = ack.send(());
            }
            RoomMsg::Text { conn, text } => {
                if self.sockets.contains_key(&conn) && self.ensure_resident().await {
                    self.input(Input::Text { conn, text });
                }
            }
            RoomMsg::Binary { conn } => {
                if self.sockets.contains_key(&conn) && self.ensure_resident().await {
                    self.input(Input::Binary { conn });
                }
            }
            RoomMsg::Closed { conn } => {
                // Unknown: already closed by the room (slow consumer), nothing to do.
                if self.sockets.contains_key(&conn) {
                    // Restore before removing: the restored room must know the session to
                    // broadcast its `quit`.
                    let resident = self.ensure_resident().await;
                    self.sockets.remove(&conn);
                    if resident {
                        self.input(Input::Closed { conn });
                    }
                }
            }
            RoomMsg::Publish(publish) => {
                let Publish {
                    name,
                    message,
                    reply,
                } = *publish;
                if !self.ensure_resident().await {
                    return;
                }
                let request = self.next_request();
                let at = now();
                let room = self.host.room_mut(at).expect("restored above");
                match room.handle_publish(request, &name, &message, at) {
                    Ok(()) => {
                        self.publishes.insert(request, reply);
                    }
                    Err(error) => {
                        let _ = reply.send(Err(error));
                    }
                }
            }
            RoomMsg::Moderate(moderate) => {
                let Moderate { action, reply } = *moderate;
                if !self.ensure_resident().await {
                    return;
                }
                let request = self.next_request();
                let at = now();
                let room = self.host.room_mut(at).expect("restored above");
                match room.handle_moderate(request, action, at) {
                    Ok(()) => {
                        self.moderations.insert(request, reply);
                    }
                    Err(error) => {
                        let _ = reply.send(Err(error));
                    }
                }
            }
            RoomMsg::Inspect { reply } => {
                if self.ensure_resident().await {
                    let room = self.host.room().expect("restored above");
                    let _ = reply.send(room.admin_view(now()));
                }
            }
            RoomMsg::Summarize { reply } => {
                let resident = self
                    .host
                    .room()
                    .map(|room| (room.member_count(), room.last_durable_id()));
                let _ = reply.send(RoomFigures {
                    connections: self.sockets.len(),
                    resident,
                });
            }
            RoomMsg::History { query, reply } => {
                if self.ensure_resident().await {
                    let room = self.host.room().expect("restored above");
                    let _ = reply.send(room.history_page(query.before, query.limit));
                }
            }
            RoomMsg::Presence { reply } => {
                if self.ensure_resident().await {
                    let room = self.host.room().expect("restored above");
                    let _ = reply.send(room.presence().map(str::to_owned).collect());
                }
            }
            RoomMsg::Hibernate { reply } => {
                self.host.request_eviction();
                self.drain_outputs();
                let _ = reply.send(!self.host.is_resident());
            }
            RoomMsg::Shutdown { reply } => self.stopping.push(reply),
            RoomMsg::Wake => {
                if self.ensure_resident().await {
                    self.host.handle_timeout(now());
                }
            }
        }
    }

    async fn handle_reply(&mut self, reply: RoomReply) {
        match reply {
            RoomReply::Settled(batch, true) => {
                // The host never evicts with a batch in flight, so the room is resident.
                if self.host.is_resident() {
                    self.input(Input::Durable { batch });
                } else {
                    tracing::error!(room = %self.id, ?batch, "confirmation for an evicted room");
                }
            }
            RoomReply::Settled(batch, false) => {
                // Nothing of the batch was written: the core tells each sender and reuses
                // the ids; failed publishes get the core's refusal (HTTP 503).
                let at = now();
                let failed = self
                    .host
                    .room_mut(at)
                    .map(|room| room.handle_write_failed(batch, at));
                match failed {
                    Some(Ok(requests)) => {
                        for request in requests {
                            if let Some(reply) = self.publishes.remove(&request) {
                                let _ = reply.send(Err(PublishError::StorageUnavailable));
                            }
                            if let Some(reply) = self.moderations.remove(&request) {
                                let _ = reply.send(Err(ModError::StorageUnavailable));
                            }
                        }
                    }
                    Some(Err(error)) => {
                        tracing::error!(room = %self.id, %error, "refusal for a batch not in flight");
                    }
                    None => {
                        tracing::error!(room = %self.id, ?batch, "refusal for an evicted room");
                    }
                }
            }
        }
    }

    /// A fresh id for an HTTP request the room answers later (a publish or a moderation).
    fn next_request(&mut self) -> PublishId {
        let request = PublishId(self.next_publish);
        self.next_publish += 1;
        request
    }

    /// Restores the room if it is evicted; `false` if storage could not be read.
    async fn ensure_resident(&mut self) -> bool {
        if self.host.is_resident() {
            return true;
        }
        let mut stored = Vec::new();
        for query in self.host.config().restore_queries() {
            match self.rooms.context.store.list(self.id, query).await {
                Ok(records) => stored.extend(records),
                Err(error) => {
                    tracing::error!(room = %self.id, %error, "reading a room failed");
                    return false;
                }
            }
        }
        let attachments = self
            .sockets
            .iter()
            .map(|(conn, socket)| (*conn, socket.attachment.as_slice()));
        match self.host.restore(&stored, attachments, now()) {
            Ok(()) => {
                inc(&self.rooms.context.metrics.restores);
                tracing::debug!(
                    room = %self.id,
                    messages = stored.len(),
                    sockets = self.sockets.len(),
                    "room restored"
                );
                true
            }
            Err(error) => {
                tracing::error!(room = %self.id, %error, "room storage is corrupt");
                // Core's close for a room out of service (the simulator uses the same).
                for output in close_after_restore_failure(self.sockets.keys().copied()) {
                    self.carry_out(output);
                }
                false
            }
        }
    }

    /// Connects a verified user (the caller has restored the room).
    fn connect_as(&mut self, conn: ConnId, ip: IpAddr, identity: Identity) {
        let now = now();
        let Some(room) = self.host.room_mut(now) else {
            return;
        };
        if let Err(error) = room.handle_connect_as(conn, ip, Some(identity), now) {
            tracing::error!(room = %self.id, %error, "room refused a connection");
        }
    }

    /// Hands the resident room an input (the caller has restored it).
    fn input(&mut self, input: Input) {
        if let Err(error) = self.host.handle_input(input, now()) {
            // Only a broken adapter invariant gets here; the room's state is unchanged.
            tracing::error!(room = %self.id, %error, "room refused an input");
        }
    }

    /// Carries out what the room has to do after one input of a turn, except starting a
    /// storage batch and writing to sockets, which wait for the turn's end (the turn's
    /// messages share one batch, each connection one `writev`). What this answers at once is
    /// the limiter: the connection's next frame, in the same turn, finds its verdict in.
    fn carry_out_within_turn(&mut self) {
        while let Some(output) = self.host.poll_output_within_turn() {
            self.carry_out(output);
        }
    }

    fn drain_outputs(&mut self) {
        loop {
            while let Some(output) = self.host.poll_output() {
                match output {
                    HostOutput::Room(output) => self.carry_out(output),
                    HostOutput::Hibernated => {
                        inc(&self.rooms.context.metrics.hibernations);
                        tracing::info!(room = %self.id, sockets = self.sockets.len(), "room hibernated");
                    }
                }
            }
            // Closing a slow consumer tells the room, which has more to say (its `quit`).
            if !self.flush_dirty() {
                break;
            }
        }
        let stats = self.host.take_stats();
        let metrics = &self.rooms.context.metrics;
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        metrics.messages.fetch_add(stats.messages_durable, relaxed);
        metrics
            .rate_limited
            .fetch_add(stats.frames_rate_limited, relaxed);
        metrics
            .messages_refused_storage
            .fetch_add(stats.messages_refused_storage, relaxed);
    }

    /// Writes every connection that got frames this turn, once each (all in one
    /// submission with `--io-uring`: `conn::flush_all`); closes those whose queue is still
    /// over its limit afterwards. Returns whether any was closed.
    fn flush_dirty(&mut self) -> bool {
        let mut dirty = std::mem::take(&mut self.dirty);
        let closed_any = if self.batch_writes && dirty.len() >= BATCH_WRITERS_MIN {
            self.flush_dirty_batched(&mut dirty)
        } else {
            // The default path allocates nothing per turn.
            let mut closed_any = false;
            for conn in dirty.iter().copied() {
                let Some(socket) = self.sockets.get_mut(&conn) else {
                    continue;
                };
                let fresh = std::mem::take(&mut socket.queued_this_turn);
                if socket.writer.flush() > self.backlog_max + fresh {
                    self.close_slow_consumer(conn);
                    closed_any = true;
                }
            }
            closed_any
        };
        // Keep the allocation for the next turn.
        dirty.clear();
        self.dirty = dirty;
        closed_any
    }

    /// [`RoomTask::flush_dirty`] through one io_uring submission.
    fn flush_dirty_batched(&mut self, dirty: &mut Vec<ConnId>) -> bool {
        let mut fresh = Vec::with_capacity(dirty.len());
        dirty.retain(|conn| match self.sockets.get_mut(conn) {
            Some(socket) => {
                fresh.push(std::mem::take(&mut socket.queued_this_turn));
                true
            }
            None => false,
        });
        let writers: Vec<&ConnWriter> = dirty
            .iter()
            .filter_map(|conn| self.sockets.get(conn).map(|socket| &*socket.writer))
            .collect();
        let still_queued = flush_all(&writers);
        drop(writers);
        let mut closed_any = false;
        for ((conn, queued), fresh) in dirty.iter().zip(still_queued).zip(fresh) {
            if queued > self.backlog_max + fresh {
                self.close_slow_consumer(*conn);
                closed_any = true;
            }
        }
        closed_any
    }

    fn carry_out(&mut self, output: Output) {
        match output {
            Output::Send { conn, frame } => self.deliver(conn, text_frame(&frame)),
            Output::Broadcast { recipients, frame } => {
                // Encoded for the wire once per broadcast; a recipient costs a reference.
                let frame = text_frame(&frame);
                for conn in recipients.iter() {
                    self.deliver(*conn, frame.clone());
                }
            }
            Output::Close { conn, code, reason } => {
                // After the frames queued before it.
                if let Some(socket) = self.sockets.get(&conn) {
                    socket.writer.close(code, reason, false);
                }
            }
            Output::Persist(batch) => {
                let opened = &mut self.durable_opened;
                let durable = self
                    .durable
                    .get_or_insert_with(|| {
                        let (durable, receiver) = mpsc::unbounded_channel();
                        *opened = Some(receiver);
                        durable
                    })
                    .clone();
                let id = batch.id;
                self.rooms.context.store.write(
                    self.id,
                    batch,
                    Box::new(move |committed| {
                        let _ = durable.send((id, committed));
                    }),
                );
            }
            Output::SetAttachment { conn, attachment } => {
                if let Some(socket) = self.sockets.get_mut(&conn) {
                    socket.attachment = attachment;
                }
            }
            Output::AskRateLimiter { request, ip } => {
                // A known user's actions count against the user's limiter, wherever from.
                let user = self
                    .host
                    .room()
                    .and_then(|room| room.identity(request.conn));
                let limiter = limiter_id_for(user.map(|identity| identity.sub.as_str()), ip);
                // Answered now, within this turn. The room is resident: it just gave this
                // output, and a room with outputs left is never evicted. The verdict's own
                // outputs (held frames decided) are carried out by the same drain.
                let at = now();
                if let Some(wait_ms) = self.rooms.context.limiters.decide(limiter, at) {
                    if let Err(error) = self
                        .host
                        .handle_input(Input::Verdict { request, wait_ms }, at)
                    {
                        tracing::error!(room = %self.id, %error, "room refused a verdict");
                    }
                }
            }
            Output::Published { request, id } => {
                if let Some(reply) = self.publishes.remove(&request) {
                    let _ = reply.send(Ok(id));
                }
            }
            Output::Moderated { request } => {
                if let Some(reply) = self.moderations.remove(&request) {
                    let _ = reply.send(Ok(()));
                }
            }
        }
    }

    /// Queues `frame` for `conn`; the end of the turn writes it.
    fn deliver(&mut self, conn: ConnId, frame: Bytes) {
        let Some(socket) = self.sockets.get_mut(&conn) else {
            return;
        };
        // A closing connection drops it; its reader reports `Closed` on its own.
        if socket.writer.queue(frame) == Queued::Yes {
            if socket.queued_this_turn == 0 {
                self.dirty.push(conn);
            }
            socket.queued_this_turn += 1;
        }
    }

    /// Closes a connection that does not read fast enough, rather than buffer without limit.
    fn close_slow_consumer(&mut self, conn: ConnId) {
        let Some(socket) = self.sockets.remove(&conn) else {
            return;
        };
        inc(&self.rooms.context.metrics.slow_consumers_closed);
        tracing::warn!(room = %self.id, conn = conn.0, "closing a slow consumer");
        socket
            .writer
            .close(CLOSE_TOO_SLOW, CLOSE_REASON_TOO_SLOW, true);
        // The room is resident: outputs only come from a resident room.
        self.input(Input::Closed { conn });
    }

    /// Keeps the resident/hibernated gauges in step with the host.
    fn count_residency(&mut self) {
        let resident = self.host.is_resident();
        if resident != self.counted_resident {
            let metrics = &self.rooms.context.metrics;
            if resident {
                inc(&metrics.rooms_resident);
                dec(&metrics.rooms_hibernated);
            } else {
                dec(&metrics.rooms_resident);
                inc(&metrics.rooms_hibernated);
            }
            self.counted_resident = resident;
        }
    }

    /// During shutdown: once nothing waits for storage, answer and stop.
    fn finish_stopping(&mut self) -> bool {
        if self.stopping.is_empty() {
            return false;
        }
        let quiescent = self.host.room().is_none_or(|room| room.is_quiescent());
        if !quiescent || !self.publishes.is_empty() || !self.moderations.is_empty() {
            return false;
        }
        for reply in self.stopping.drain(..) {
            let _ = reply.send(());
        }
        true
    }

    /// Hands over: messages that raced with the retirement, and any that arrive meanwhile,
    /// go to a new task in order; the sockets stay in the registry as a dormant room.
    async fn retire(self: Box<Self>, mut inbox: mpsc::Receiver<RoomMsg>) {
        let wake_at = self.host.wake_at().filter(|_| !self.sockets.is_empty());
        self.rooms.registry.begin_retiring(self.id, &mut inbox);
        let mut leftovers = Vec::new();
        while let Some(msg) = inbox.recv().await {
            leftovers.push(msg);
        }
        // No await from here on: the unboxed state never enters the future.
        let this = *self;
        let metrics = &this.rooms.context.metrics;
        dec(&metrics.room_tasks);
        if this.counted_resident {
            dec(&metrics.rooms_resident);
        } else {
            dec(&metrics.rooms_hibernated);
        }
        let dormant = (!this.sockets.is_empty()).then(|| {
            // A dormant room counts as hibernated (until a task wakes from it).
            inc(&metrics.rooms_hibernated);
            DormantRoom {
                sockets: this
                    .sockets
                    .into_iter()
                    .map(|(conn, socket)| (conn, socket.writer, socket.attachment.into()))
                    .collect(),
            }
        });
        let rooms = this.rooms.clone();
        let id = this.id;
        rooms
            .registry
            .finish_retiring(id, dormant, leftovers, |start| {
                spawn(rooms.clone(), id, start);
            });
        if let Some(at) = wake_at {
            // A dormant room has no task, so a timer wakes it when a token it holds expires.
            // It holds the rooms weakly: a server shutting down is not kept alive by it.
            let rooms = Arc::downgrade(&rooms);
            tokio::spawn(async move {
                sleep_until(Some(at)).await;
                if let Some(rooms) = rooms.upgrade() {
                    let _ = rooms.send(id, RoomMsg::Wake).await;
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A room's inbox allocates 32 messages' worth when it opens: a message that grows
    /// (a new variant carrying more than a pointer and a `String`) grows every resident room.
    #[test]
    fn a_room_message_stays_small() {
        assert!(std::mem::size_of::<RoomMsg>() <= 40);
    }
}
