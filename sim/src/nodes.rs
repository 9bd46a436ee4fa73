//! The nodes of a run (room hosts, the limiter, clients), the network helpers that carry
//! their messages, and the supervisor that injects faults.

use std::cmp::max;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use edgechat_core::auth::{Access, AuthError, Identity};
use edgechat_core::host::{HostOutput, RoomHost};
use edgechat_core::limiter::{RateLimiter, VerdictRequest};
use edgechat_core::protocol::{Frame, ERROR_RATE_LIMITED, ERROR_STORAGE_UNAVAILABLE};
use edgechat_core::room::{
    close_after_restore_failure, ConnId, Input, Output, PublishId, CLOSE_TOKEN_EXPIRED,
};
use edgechat_core::storage::{keys, WriteBatch};
use edgechat_core::testkit::ServerFrameView;
use edgechat_core::Timestamp;
use madsim::rand::{thread_rng, Rng};
use madsim::time::{sleep, sleep_until};

use crate::mailbox::Mailbox;
use crate::model::{self, JoinWatch};
use crate::shadow::SessionModel;
use crate::world::{
    client_ip, newest_id, ClientConn, ClientEvent, CommitOutcome, FaultKind, HostBug, HostEvent,
    LimiterAsk, Shared, World, CLIENT_LATENCY_MAX_MS, COMMIT_BOUND_MS, SETTLE_MS,
};
use crate::{moderation, publish, shadow, tokens};

/// The room's answer to a refresh it took.
const REFRESHED_FRAME: &str = r#"{"refreshed":true}"#;

/// Presence and retained history: what an eviction must not change.
type RoomView = (Vec<String>, Vec<Frame>);

/// How often a socket's attachment is found written by the previous version at a restore.
const OLD_ATTACHMENT_P: f64 = 0.2;

/// How often an unnamed socket's attachment is found corrupt at a restore (fault phase
/// only).
const CORRUPT_ATTACHMENT_P: f64 = 0.1;

/// How often an operator reads a room's history and presence right after an input.
const READ_AFTER_INPUT_P: f64 = 0.02;

/// How often a host evicts a room right after an input, when evictions are on.
const EVICT_AFTER_INPUT_P: f64 = 0.08;

fn lock(world: &Shared) -> std::sync::MutexGuard<'_, World> {
    world.lock().expect("world lock")
}

fn random_ms(range: (u64, u64)) -> Duration {
    Duration::from_millis(thread_rng().gen_range(range.0..=range.1))
}

// ---------------------------------------------------------------------------------------
// The network.

/// Sends `event` from a client to its host over connection `conn` (ordered, reliable, or
/// the connection breaks).
fn to_host(shared: &Shared, w: &mut World, conn: ConnId, event: HostEvent) {
    let Some(info) = w.conns.get(&conn).cloned() else {
        return;
    };
    if !info.open {
        return;
    }
    let slot = &w.hosts[info.host];
    if slot.incarnation != info.incarnation || slot.inbox.is_none() {
        w.break_conn(conn, "host down");
        return;
    }
    if let Some(why) = link_breaks(w, info.client) {
        w.break_conn(conn, why);
        return;
    }
    let latency = random_ms(w.client_latency_ms);
    let at = w.elapsed() + latency;
    let info = w.conns.get_mut(&conn).expect("exists");
    let at = max(at, info.last_to_host + Duration::from_micros(1));
    info.last_to_host = at;
    let deadline = w.instant(at);
    // Tasks woken at the same instant run in any order, so each delivery takes the oldest
    // frame of its connection rather than its own: the stream stays in order.
    w.to_host_queue.entry(conn).or_default().push_back(event);
    let shared = shared.clone();
    madsim::task::spawn(async move {
        sleep_until(deadline).await;
        let mut w = lock(&shared);
        let Some(event) = w.to_host_queue.get_mut(&conn).and_then(|q| q.pop_front()) else {
            return;
        };
        let Some(info) = w.conns.get(&conn) else {
            return;
        };
        let slot = &w.hosts[info.host];
        if info.open && slot.incarnation == info.incarnation {
            if let Some(inbox) = &slot.inbox {
                inbox.push(event);
            }
        }
    });
}

/// Sends `event` from a host to the client of `conn`.
fn to_client(shared: &Shared, w: &mut World, conn: ConnId, event: ClientEvent) {
    let Some(info) = w.conns.get(&conn).cloned() else {
        return;
    };
    if !info.open {
        return;
    }
    if let Some(why) = link_breaks(w, info.client) {
        w.break_conn(conn, why);
        return;
    }
    let latency = random_ms(w.client_latency_ms);
    let at = w.elapsed() + latency;
    let info = w.conns.get_mut(&conn).expect("exists");
    let at = max(at, info.last_to_client + Duration::from_micros(1));
    info.last_to_client = at;
    let client = info.client;
    let deadline = w.instant(at);
    w.to_client_queue.entry(conn).or_default().push_back(event);
    let shared = shared.clone();
    madsim::task::spawn(async move {
        sleep_until(deadline).await;
        let mut w = lock(&shared);
        if let Some(event) = w.to_client_queue.get_mut(&conn).and_then(|q| q.pop_front()) {
            w.clients[client].inbox.push(event);
        }
    });
}

/// Whether sending on a client's connection breaks it now, and why.
fn link_breaks(w: &mut World, client: usize) -> Option<&'static str> {
    if w.cut_ips.contains(&w.clients[client].ip) {
        return Some("partition");
    }
    if w.client_break_p > 0.0 && thread_rng().gen_bool(w.client_break_p) {
        w.count_fault(FaultKind::LossClient.name());
        return Some("loss");
    }
    None
}

/// Whether a datagram between a host and the limiter is dropped now.
fn limiter_link_drops(w: &mut World) -> bool {
    if w.limiter_cut {
        return true;
    }
    if w.limiter_loss_p > 0.0 && thread_rng().gen_bool(w.limiter_loss_p) {
        w.count_fault(FaultKind::LossLimiter.name());
        return true;
    }
    false
}

fn to_limiter(shared: &Shared, w: &mut World, ask: LimiterAsk) {
    if limiter_link_drops(w) {
        w.trace(format_args!("drop ask {:?}", ask.request));
        return;
    }
    let latency = random_ms(w.limiter_latency_ms);
    let shared = shared.clone();
    madsim::task::spawn(async move {
        sleep(latency).await;
        if let Some(inbox) = lock(&shared).limiter.clone() {
            inbox.push(ask);
        }
    });
}

fn verdict_to_host(shared: &Shared, w: &mut World, ask: &LimiterAsk, wait_ms: u64) {
    if limiter_link_drops(w) {
        w.trace(format_args!("drop verdict {:?}", ask.request));
        return;
    }
    let latency = random_ms(w.limiter_latency_ms);
    let shared = shared.clone();
    let (host, room, request) = (ask.host, ask.room, ask.request);
    madsim::task::spawn(async move {
        sleep(latency).await;
        if let Some(inbox) = lock(&shared).hosts[host].inbox.clone() {
            inbox.push(HostEvent::Verdict {
                room,
                request,
                wait_ms,
            });
        }
    });
}

// ---------------------------------------------------------------------------------------
// The room host.

/// An open WebSocket as the host process holds it: it outlives the room's eviction.
#[derive(Debug)]
struct Socket {
    room: usize,
    attachment: Vec<u8>,
    /// The session's limiter as the rules say it must be (the oracle's own model), to check
    /// that no frame is processed during a cooldown or while an answer is outstanding, and
    /// that none is refused while the limiter is open.
    shadow: SessionModel,
    /// The socket's join as the room model judges it.
    join: JoinWatch,
    /// The room closed it (its session is closing, out of presence).
    closing: bool,
}

/// One incarnation of a host process: everything here is lost in a crash.
struct Host {
    world: Shared,
    index: usize,
    inbox: Mailbox<HostEvent>,
    incarnation: u64,
    rooms: BTreeMap<usize, RoomHost>,
    sockets: BTreeMap<ConnId, Socket>,
    in_flight: BTreeMap<usize, WriteBatch>,
    views: BTreeMap<usize, RoomView>,
    /// Rooms whose eviction may be pending in their `RoomHost` (asked for, directly or by
    /// `handle_timeout`, and no `Hibernated` seen since): only these can hibernate in a
    /// drain, so only these need the view taken for `eviction-invisible`.
    eviction_asked: BTreeSet<usize>,
    /// The view of a room taken just before it was asked to hibernate (see `evict`).
    view_before_eviction: Option<RoomView>,
    wakes: BTreeMap<usize, madsim::time::Instant>,
    /// The token of a refresh frame handed to its room and not yet answered, per
    /// connection, to judge the answer (the room may hold the frame for its limiter's answer
    /// and decide it in a later event). A client sends nothing else while one is out.
    refreshing: BTreeMap<ConnId, String>,
    /// Sockets whose attachment the host corrupted before a restore: core must close them.
    corrupted: BTreeSet<ConnId>,
    /// Sockets closed for a lost session and forgotten.
    lost: BTreeSet<ConnId>,
    /// A read drawn after a durability input, done once the oracle has learned the batch.
    read_after_durable: Option<usize>,
}

async fn host_main(world: Shared, index: usize) {
    let inbox = Mailbox::new();
    let (incarnation, rooms) = {
        let mut w = lock(&world);
        w.hosts[index].inbox = Some(inbox.clone());
        let line = format!(
            "host {index} up (incarnation {})",
            w.hosts[index].incarnation
        );
        w.trace(line);
        let rooms = (0..w.sc.rooms)
            .filter(|room| room % w.sc.hosts == index)
            .map(|room| {
                let mut config = w.sc.room.clone();
                config.auth = w.tokens.as_ref().map(|t| t.room_auth(room));
                (room, RoomHost::new(config, w.sc.idle_ms))
            })
            .collect();
        (w.hosts[index].incarnation, rooms)
    };
    let mut host = Host {
        world,
        index,
        inbox,
        incarnation,
        rooms,
        sockets: BTreeMap::new(),
        in_flight: BTreeMap::new(),
        views: BTreeMap::new(),
        eviction_asked: BTreeSet::new(),
        view_before_eviction: None,
        wakes: BTreeMap::new(),
        refreshing: BTreeMap::new(),
        corrupted: BTreeSet::new(),
        lost: BTreeSet::new(),
        read_after_durable: None,
    };
    while let Some(event) = host.inbox.recv().await {
        host.handle(event);
    }
}

impl Host {
    fn now(&self) -> Timestamp {
        lock(&self.world).host_now(self.index)
    }

    fn handle(&mut self, event: HostEvent) {
        let now = self.now();
        let room = match event {
            HostEvent::Connect {
                conn,
                room,
                ip,
                token,
            } => {
                self.trace(format_args!("h{} r{room} connect {conn:?}", self.index));
                // Admission comes first, as at the server's upgrade.
                let Some(access) = self.admit(conn, room, token.as_deref(), now) else {
                    return;
                };
                if !self.ensure_resident(room) {
                    // The room is out of service: this socket is closed like its others.
                    self.close_sockets(room, vec![conn]);
                    return;
                }
                let connect_last = lock(&self.world).rooms[room].newest_acked();
                self.sockets.insert(
                    conn,
                    Socket {
                        room,
                        attachment: Vec::new(),
                        shadow: SessionModel::default(),
                        join: JoinWatch {
                            connect_last,
                            ..JoinWatch::default()
                        },
                        closing: false,
                    },
                );
                match access {
                    Access::User(identity) => self.connect_as(room, conn, ip, identity),
                    Access::Anonymous => self.input(room, Input::Connect { conn, ip }),
                }
                let closed = self.sockets.get(&conn).is_none_or(|s| s.closing);
                moderation::connected(&mut lock(&self.world), room, conn, ip, closed);
                room
            }
            HostEvent::Text { conn, text } => {
                let Some(room) = self.sockets.get(&conn).map(|s| s.room) else {
                    return;
                };
                self.trace(format_args!("h{} r{room} {conn:?} -> {text}", self.index));
                moderation::text_arrives(&mut lock(&self.world), room, conn, &text);
                if let Some(token) = tokens::refresh_token(&text) {
                    self.refreshing.insert(conn, token);
                }
                if let Some(socket) = self.sockets.get_mut(&conn) {
                    socket.shadow.arrive(now.0);
                    if !socket.join.ready {
                        if let Some(since) = model::join_since(&text) {
                            socket.join.since = Some(since);
                        }
                    }
                }
                self.frame_input(room, conn, Input::Text { conn, text });
                room
            }
            HostEvent::Binary { conn } => {
                let Some(room) = self.sockets.get(&conn).map(|s| s.room) else {
                    return;
                };
                self.trace(format_args!("h{} r{room} {conn:?} -> binary", self.index));
                if let Some(socket) = self.sockets.get_mut(&conn) {
                    socket.shadow.arrive(now.0);
                }
                self.frame_input(room, conn, Input::Binary { conn });
                room
            }
            HostEvent::Closed { conn } => {
                let Some(room) = self.sockets.get(&conn).map(|s| s.room) else {
                    return;
                };
                self.trace(format_args!("h{} r{room} closed {conn:?}", self.index));
                // The runtime wakes a hibernated room with the closing socket still attached.
                if !self.ensure_resident(room) {
                    return; // every socket of the room, this one included, was closed
                }
                self.sockets.remove(&conn);
                self.refreshing.remove(&conn);
                let mut w = lock(&self.world);
                w.conn_closed(conn);
                tokens::forget(&mut w, conn);
                drop(w);
                self.input(room, Input::Closed { conn });
                room
            }
            HostEvent::Verdict {
                room,
                request,
                wait_ms,
            } => {
                self.trace(format_args!(
                    "h{} r{room} verdict {request:?} wait {wait_ms}",
                    self.index
                ));
                if let Some(socket) = self.sockets.get_mut(&request.conn) {
                    socket.shadow.answer(request.seq, wait_ms, now.0);
                }
                self.input(room, Input::Verdict { request, wait_ms });
                room
            }
            HostEvent::WriteFailed { room, batch } => {
                self.trace(format_args!(
                    "h{} r{room} write failed {batch:?}",
                    self.index
                ));
                let checks = match self.in_flight.remove(&room) {
                    Some(in_flight) if in_flight.id == batch => {
                        lock(&self.world).refused(room, &in_flight)
                    }
                    other => {
                        lock(&self.world).violate(
                            "host-contract",
                            format!("write failed {batch:?} for room {room}, in flight {other:?}"),
                        );
                        Vec::new()
                    }
                };
                let host = self.rooms.get_mut(&room).expect("room on this host");
                let failed = match host.room_mut(now) {
                    Some(r) => r
                        .handle_write_failed(batch, now)
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    None => Err("the room is not resident".to_owned()),
                };
                if let Err(error) = failed {
                    lock(&self.world).violate(
                        "host-contract",
                        format!("room {room} refused the failure of {batch:?}: {error}"),
                    );
                }
                self.drain(room);
                // Each sender still connected must have its error within the link's latency.
                let world = self.world.clone();
                madsim::task::spawn(async move {
                    sleep(Duration::from_millis(CLIENT_LATENCY_MAX_MS + 50)).await;
                    let mut w = lock(&world);
                    for (client, conn, owed) in checks {
                        w.check_told(client, conn, owed);
                    }
                });
                room
            }
            HostEvent::Durable { room, batch } => {
                self.trace(format_args!("h{} r{room} durable {batch:?}", self.index));
                let mut durable = None;
                match self.in_flight.remove(&room) {
                    Some(in_flight) if in_flight.id == batch => {
                        lock(&self.world).acknowledge(room, &in_flight);
                        durable = Some(in_flight);
                    }
                    other => lock(&self.world).violate(
                        "host-contract",
                        format!("durable {batch:?} for room {room}, in flight {other:?}"),
                    ),
                }
                self.input(room, Input::Durable { batch });
                if let Some(durable) = durable {
                    moderation::state_durable(&mut lock(&self.world), room, &durable.writes);
                }
                if let Some(room) = self.read_after_durable.take() {
                    self.read_views(room);
                }
                room
            }
            HostEvent::Wake { room } => {
                self.wakes.remove(&room);
                // An evicted room with something due (a token expiry) is restored for it.
                let due = self.rooms[&room].wake_at().is_some_and(|at| at <= now);
                if due && !self.ensure_resident(room) {
                    return;
                }
                let host = self.rooms.get_mut(&room).expect("room on this host");
                self.eviction_asked.insert(room);
                host.handle_timeout(now);
                self.drain(room);
                room
            }
            HostEvent::Evict { room } => {
                self.evict(room);
                room
            }
            HostEvent::Probe { room } => {
                if self.ensure_resident(room) {
                    self.drain(room);
                }
                room
            }
            HostEvent::Publish {
                room,
                request,
                message,
            } => {
                self.trace(format_args!("h{} r{room} publish #{request}", self.index));
                let input = Input::Publish {
                    request: PublishId(request),
                    name: publish::PUBLISHER.into(),
                    message,
                };
                self.input(room, input);
                room
            }
            HostEvent::Moderate {
                room,
                request,
                action,
            } => {
                if !self.ensure_resident(room) {
                    return;
                }
                moderation::handling(&mut lock(&self.world), room, request, &action, now.0);
                let host = self.rooms.get_mut(&room).expect("room on this host");
                let room_now = host.room_mut(now).expect("restored above");
                if let Err(error) = room_now.handle_moderate(PublishId(request), action, now) {
                    self.trace(format_args!(
                        "h{} r{room} #{request} refused: {error}",
                        self.index
                    ));
                }
                self.drain(room);
                room
            }
        };
        let evict_now = {
            let w = lock(&self.world);
            w.fault_on(FaultKind::Evict) && thread_rng().gen_bool(EVICT_AFTER_INPUT_P)
        };
        if evict_now {
            self.evict(room);
        }
        self.schedule_wakes(now);
    }

    /// The platform asks for eviction. It is deferred until the room is quiescent (no batch
    /// awaiting confirmation), as a Durable Object is not hibernated with storage IO
    /// outstanding; the sim asks at any point, including mid-join and between a write and
    /// its confirmation, and checks that nothing observable changes.
    fn evict(&mut self, room: usize) {
        let host = self.rooms.get_mut(&room).expect("room on this host");
        if !host.is_resident() {
            return;
        }
        let mut w = lock(&self.world);
        w.count_fault(FaultKind::Evict.name());
        w.trace(format_args!("h{} r{room} eviction requested", self.index));
        drop(w);
        self.eviction_asked.insert(room);
        let host = self.rooms.get_mut(&room).expect("room on this host");
        // A quiescent room is evicted at once, inside `request_eviction`, before any drain
        // could take its view: take it here, or such evictions go unchecked.
        self.view_before_eviction = host
            .room()
            .is_some_and(|r| r.is_quiescent())
            .then(|| view(host))
            .flatten();
        host.request_eviction();
        self.drain(room);
    }

    fn trace(&self, line: std::fmt::Arguments<'_>) {
        lock(&self.world).trace(line);
    }

    /// Makes `room` resident; `false` if its restore failed, in which case every socket of
    /// the room has been closed (the room is out of service until a later restore works).
    fn ensure_resident(&mut self, room: usize) -> bool {
        let now = self.now();
        let host = self.rooms.get_mut(&room).expect("room on this host");
        if host.is_resident() {
            return true;
        }
        let stored = {
            let mut w = lock(&self.world);
            if w.restore_fails(room) {
                None
            } else {
                let stored = w.stores[room].list_each(&host.config().restore_queries());
                w.restored(room, &stored);
                Some(stored)
            }
        };
        let Some(stored) = stored else {
            self.trace(format_args!("h{} r{room} restore failed", self.index));
            // What the room looked like before its eviction is gone with its sockets.
            self.views.remove(&room);
            let conns = self
                .sockets
                .iter()
                .filter(|(_, socket)| socket.room == room)
                .map(|(conn, _)| *conn)
                .collect();
            self.close_sockets(room, conns);
            return false;
        };
        if self.age_attachments(room) {
            // A socket whose session is lost leaves presence: not claimed invisible.
            self.views.remove(&room);
        }
        let host = self.rooms.get_mut(&room).expect("room on this host");
        let attachments: Vec<(ConnId, &[u8])> = self
            .sockets
            .iter()
            .filter(|(_, socket)| socket.room == room)
            .map(|(conn, socket)| (*conn, socket.attachment.as_slice()))
            .collect();
        let restored = host.restore(&stored, attachments, now);
        let mut w = lock(&self.world);
        w.trace(format_args!(
            "h{} r{room} restored ({} stored)",
            self.index,
            stored.len()
        ));
        if let Err(error) = restored {
            w.violate("restore", format!("room {room}: {error}"));
            return false;
        }
        if let Some(before) = self.views.remove(&room) {
            let after = view(host);
            // Records may age out meanwhile (or, the clock stepped back, come back from
            // storage): only the newest run both hold must agree.
            let aged = w.rooms[room].retention.age_ever;
            let same = match (&before, &after) {
                (before, Some(after)) if aged => {
                    let common = before.1.len().min(after.1.len());
                    before.0 == after.0 && before.1[..common] == after.1[..common]
                }
                _ => Some(&before) == after.as_ref(),
            };
            if !same {
                w.violate(
                    "eviction-invisible",
                    format!("room {room}: eviction changed {before:?} into {after:?}"),
                );
            }
        }
        drop(w);
        self.drain(room);
        let lost: Vec<ConnId> = self
            .corrupted
            .iter()
            .filter(|conn| self.sockets.get(conn).is_some_and(|s| s.room == room))
            .copied()
            .collect();
        if !lost.is_empty() {
            let detail = format!("room {room}: corrupt attachments of {lost:?} not closed 1011");
            lock(&self.world).violate("attachment-handling", detail);
        }
        true
    }

    /// Before a restore, during the fault phase: some sockets' attachments are rewritten as
    /// the previous version wrote them (a deploy over hibernated sockets), which must restore
    /// invisibly, and a few are corrupted (garbage, truncated, a newer version, too long),
    /// which core must close 1011 `Session state lost.`, touching no other socket. Returns
    /// whether any was corrupted.
    fn age_attachments(&mut self, room: usize) -> bool {
        let mut w = lock(&self.world);
        if w.settling {
            return false;
        }
        let mut rng = thread_rng();
        let mut corrupted_any = false;
        // Only unnamed sessions are corrupted: a joined one whose state is lost cannot be
        // announced as `quit` (its name is lost with it), so the others' rosters would stay
        // stale; that is a documented limit, not a claim the sim can make.
        for (conn, socket) in self.sockets.iter_mut().filter(|(_, s)| s.room == room) {
            let unnamed = !socket.join.ready;
            let bytes = &mut socket.attachment;
            if unnamed && rng.gen_bool(CORRUPT_ATTACHMENT_P) {
                *bytes = model::corrupt_attachment(bytes, rng.gen_range(0..4));
                self.corrupted.insert(*conn);
                corrupted_any = true;
                w.count_fault("attachment-corrupt");
            } else if rng.gen_bool(OLD_ATTACHMENT_P) {
                if let Some(old) = model::attachment_v1(bytes) {
                    *bytes = old;
                    w.count_fault("attachment-v1");
                }
            }
        }
        corrupted_any
    }

    /// Closes `conns` of `room`, which could not be restored, as core says to.
    fn close_sockets(&mut self, room: usize, conns: Vec<ConnId>) {
        let shared = self.world.clone();
        let mut w = lock(&shared);
        for conn in &conns {
            self.sockets.remove(conn);
            self.refreshing.remove(conn);
            tokens::forget(&mut w, *conn);
        }
        for output in close_after_restore_failure(conns) {
            let Output::Close { conn, code, reason } = output else {
                w.violate(
                    "host-contract",
                    format!("room {room}: {output:?} on a failed restore"),
                );
                continue;
            };
            w.trace(format_args!("r{room} close {conn:?} {code} {reason}"));
            if !w.sc.faulty_rooms.contains(&room) {
                w.violate(
                    "healthy-rooms-unaffected",
                    format!("room {room} on healthy storage closed {conn:?} with {code}"),
                );
            }
            // The network carries the close after what was sent before it; if the host
            // crashes first, the connection breaks instead.
            to_client(&shared, &mut w, conn, ClientEvent::Closed { conn });
        }
    }

    /// Decides on a connection as the server's upgrade does ([`AuthConfig::admit`] on the
    /// host's clock), and has the oracle judge it; `None` if refused (the client is told,
    /// as by a 401 or 403 answer).
    ///
    /// [`AuthConfig::admit`]: edgechat_core::auth::AuthConfig::admit
    fn admit(
        &mut self,
        conn: ConnId,
        room: usize,
        token: Option<&str>,
        now: Timestamp,
    ) -> Option<Access> {
        let shared = self.world.clone();
        let mut w = lock(&shared);
        let Some(config) = w.tokens.as_ref().map(|t| t.config.clone()) else {
            return Some(Access::Anonymous);
        };
        let decision = config.admit(&tokens::room_id(room), token, now);
        let watch = tokens::judge_admission(&mut w, conn, self.index, token, now, &decision);
        if let Some(generation) = watch {
            madsim::task::spawn(tokens::expiry_watchdog(shared.clone(), conn, generation));
        }
        match decision {
            Ok(access) => Some(access),
            Err(error) => {
                w.trace(format_args!(
                    "h{} r{room} refuse {conn:?}: {error}",
                    self.index
                ));
                to_client(&shared, &mut w, conn, ClientEvent::Closed { conn });
                None
            }
        }
    }

    /// Connects a verified user (the room is resident), as the server does.
    fn connect_as(&mut self, room: usize, conn: ConnId, ip: IpAddr, identity: Identity) {
        let now = self.now();
        let host = self.rooms.get_mut(&room).expect("room on this host");
        let connected = host
            .room_mut(now)
            .map(|r| r.handle_connect_as(conn, ip, Some(identity), now));
        if !matches!(connected, Some(Ok(()))) {
            lock(&self.world).violate(
                "host-contract",
                format!("room {room} refused user connection {conn:?}: {connected:?}"),
            );
        }
        self.drain(room);
    }

    /// Hands a frame of `conn` to its room, then tells the shadow limiter the room has
    /// decided it (its arrival was recorded before).
    fn frame_input(&mut self, room: usize, conn: ConnId, input: Input) {
        self.input(room, input);
        if let Some(socket) = self.sockets.get_mut(&conn) {
            socket.shadow.settle();
        }
    }

    fn input(&mut self, room: usize, input: Input) {
        if !self.ensure_resident(room) {
            return; // restore failed: the room's sockets are closed
        }
        let now = self.now();
        let host = self.rooms.get_mut(&room).expect("room on this host");
        // Described only if refused: formatting every input cost a tenth of a seed's CPU.
        let kept = input.clone();
        let from = match &input {
            Input::Text { conn, .. } | Input::Binary { conn } | Input::Closed { conn } => {
                Some(*conn)
            }
            _ => None,
        };
        let result = host.handle_input(input, now);
        // The restore just now may have closed this very socket (its state lost): the room
        // rightly no longer knows it, and the adapter closes it (the Worker's `close_lost`).
        let lost = from.is_some_and(|conn| self.lost.contains(&conn));
        if let Err(error) =
            result
                .map_err(|e| e.to_string())
                .or_else(|e| if lost { Ok(()) } else { Err(e) })
        {
            lock(&self.world).violate(
                "host-contract",
                format!("room {room} refused {kept:?}: {error}"),
            );
        }
        let durable = matches!(kept, Input::Durable { .. });
        self.drain(room);
        if thread_rng().gen_bool(READ_AFTER_INPUT_P) {
            if durable {
                // After the oracle learns what the batch put in force (`state_durable`).
                self.read_after_durable = Some(room);
            } else {
                self.read_views(room);
            }
        }
    }

    /// An operator reads the room's history and presence: both must be what the model says.
    fn read_views(&mut self, room: usize) {
        let Some(r) = self.rooms.get(&room).and_then(|host| host.room()) else {
            return;
        };
        let mut rng = thread_rng();
        let (before, limit) = {
            let w = lock(&self.world);
            let newest = w.rooms[room].newest_acked();
            let held = w.retained_range(room, newest, None).1;
            let reach = (newest + 1 - held).max(w.sc.room.history_retained_max as u64) + 2;
            let before = rng
                .gen_bool(0.5)
                .then(|| (newest + 1).saturating_sub(rng.gen_range(0..=reach)));
            (before, rng.gen_range(1..=publish::HISTORY_LIMIT))
        };
        let page = r.history_page(before, limit);
        let names = r.presence().count();
        let joined = self
            .sockets
            .values()
            .filter(|s| s.room == room && s.join.ready && !s.closing)
            .count();
        let mut w = lock(&self.world);
        w.count_fault("reads");
        publish::check_history(&mut w, room, before, limit, &page);
        publish::check_presence(&mut w, room, names, joined);
        drop(w);
        self.read_admin(room);
    }

    /// An operator reads the admin API's routes: the room's view, and the rooms list's
    /// figures of every room of this host (see [`moderation::read_admin`]).
    fn read_admin(&mut self, room: usize) {
        let held = |room: usize| -> Vec<moderation::HeldSocket> {
            let sockets = self.sockets.iter().filter(|(_, s)| s.room == room);
            sockets
                .map(|(conn, s)| moderation::HeldSocket {
                    conn: *conn,
                    joined: s.join.ready && !s.closing,
                    closing: s.closing,
                })
                .collect()
        };
        let now = self.now();
        let figures: Vec<moderation::Figures> = self
            .rooms
            .iter()
            .map(|(&r, host)| {
                let sockets = held(r);
                moderation::Figures {
                    room: r,
                    resident: host
                        .room()
                        .map(|room| (room.member_count(), room.last_durable_id())),
                    connections: sockets.len(),
                    joined: sockets.iter().filter(|s| s.joined).count(),
                    still_dormant: !host.is_resident(),
                }
            })
            .collect();
        let sockets = held(room);
        let Some(r) = self.rooms.get(&room).and_then(|host| host.room()) else {
            return;
        };
        let mut w = lock(&self.world);
        moderation::read_admin(&mut w, room, r, now, &sockets);
        moderation::read_summaries(&mut w, &figures);
    }

    fn drain(&mut self, room: usize) {
        let now = self.now();
        lock(&self.world).rooms[room].retention.observe_now(now.0);
        let shared = self.world.clone();
        let mut quiescent_view = self.view_before_eviction.take();
        // Copying the room's presence and whole history at every drain was 4 % of a seed's
        // instructions; a room can only hibernate here if its eviction was asked for.
        let may_hibernate = self.eviction_asked.contains(&room);
        loop {
            let host = self.rooms.get_mut(&room).expect("room on this host");
            if may_hibernate
                && quiescent_view.is_none()
                && host.room().is_some_and(|r| r.is_quiescent())
            {
                quiescent_view = view(host);
            }
            let Some(output) = host.poll_output() else {
                break;
            };
            let mut w = lock(&shared);
            match output {
                HostOutput::Room(Output::Send { conn, frame }) => {
                    // Only error frames are parsed for these (a cheap scan first: most frames
                    // sent to one connection are replays and rosters).
                    if frame.contains(r#""error""#) {
                        if shadow::is_rate_limit_error(&frame) {
                            self.check_refusal(&mut w, conn, now);
                        } else {
                            self.check_counted(&mut w, conn, &frame, now);
                        }
                    }
                    if w.moderation.on
                        && frame.contains(r#""ready""#)
                        && self.sockets.get(&conn).is_some_and(|s| !s.join.ready)
                    {
                        let others = self
                            .sockets
                            .iter()
                            .filter(|(c, s)| {
                                **c != conn && s.room == room && s.join.ready && !s.closing
                            })
                            .count();
                        moderation::joins(&mut w, room, conn, others);
                    }
                    self.watch_join(&mut w, room, conn, &frame);
                    moderation::frame_out(&mut w, room, conn, &frame);
                    self.judge_refresh(&shared, &mut w, conn, &frame, now);
                    to_client(&shared, &mut w, conn, ClientEvent::Frame { conn, frame });
                }
                HostOutput::Room(Output::Broadcast { recipients, frame }) => {
                    for conn in recipients.iter() {
                        moderation::frame_out(&mut w, room, *conn, &frame);
                        let event = ClientEvent::Frame {
                            conn: *conn,
                            frame: frame.clone(),
                        };
                        to_client(&shared, &mut w, *conn, event);
                    }
                }
                HostOutput::Room(Output::Close { conn, code, reason }) => {
                    let corrupted = self.corrupted.remove(&conn);
                    if corrupted
                        != (code == model::CLOSE_STATE_LOST.0
                            && reason == model::CLOSE_STATE_LOST.1)
                    {
                        let detail = format!(
                            "room {room}: {conn:?} closed {code} {reason}; its attachment was \
                             {}",
                            if corrupted { "corrupt" } else { "sound" }
                        );
                        w.violate("attachment-handling", detail);
                    }
                    if let Some(socket) = self.sockets.get_mut(&conn) {
                        socket.closing = true;
                    }
                    w.trace(format_args!("r{room} close {conn:?} {code} {reason}"));
                    moderation::closed(&mut w, room, conn, code);
                    if code == CLOSE_TOKEN_EXPIRED {
                        tokens::judge_expiry_close(&mut w, conn, now);
                    }
                    to_client(&shared, &mut w, conn, ClientEvent::Closed { conn });
                    if corrupted {
                        // The room holds no session for it: the adapter forgets the socket
                        // now (a frame or close still in flight finds none, as the Worker's
                        // `close_lost` does).
                        self.sockets.remove(&conn);
                        self.refreshing.remove(&conn);
                        self.lost.insert(conn);
                        w.conn_closed(conn);
                        tokens::forget(&mut w, conn);
                    } else {
                        self.inbox.push(HostEvent::Closed { conn });
                    }
                }
                HostOutput::Room(Output::Persist(batch)) => {
                    w.trace(format_args!(
                        "r{room} persist {:?} ({} writes)",
                        batch.id,
                        batch.writes.len()
                    ));
                    self.in_flight.insert(room, batch.clone());
                    let outcome = w.commit_outcome(room);
                    let busy = match outcome {
                        CommitOutcome::Commit(took)
                        | CommitOutcome::Fail(took, _)
                        | CommitOutcome::Hang(took) => took,
                    };
                    let queued = w.storage_queue_wait(self.index, busy);
                    let (shared, inbox) = (shared.clone(), self.inbox.clone());
                    let (index, incarnation) = (self.index, self.incarnation);
                    madsim::task::spawn(async move {
                        if !queued.is_zero() {
                            sleep(queued).await;
                        }
                        let commit = match outcome {
                            CommitOutcome::Commit(took) => took,
                            CommitOutcome::Fail(took, why) => {
                                sleep(took).await;
                                let mut w = lock(&shared);
                                if w.hosts[index].incarnation == incarnation {
                                    w.trace(format_args!(
                                        "r{room} commit {:?} failed ({why})",
                                        batch.id
                                    ));
                                    inbox.push(HostEvent::WriteFailed {
                                        room,
                                        batch: batch.id,
                                    });
                                }
                                return;
                            }
                            CommitOutcome::Hang(took) => {
                                let bound = Duration::from_millis(COMMIT_BOUND_MS);
                                sleep(bound).await;
                                {
                                    let mut w = lock(&shared);
                                    if w.hosts[index].incarnation != incarnation {
                                        return; // the process died with the write
                                    }
                                    w.trace(format_args!(
                                        "r{room} commit {:?} hangs: host gives up",
                                        batch.id
                                    ));
                                    inbox.push(HostEvent::WriteFailed {
                                        room,
                                        batch: batch.id,
                                    });
                                }
                                // The storage finishes later, and must roll the write back.
                                sleep(took - bound).await;
                                lock(&shared).trace(format_args!(
                                    "r{room} late commit {:?} rolled back",
                                    batch.id
                                ));
                                return;
                            }
                        };
                        sleep(commit).await;
                        let mut w = lock(&shared);
                        if w.hosts[index].incarnation != incarnation {
                            return; // the process died with the write
                        }
                        w.check_batch(room, &batch);
                        w.stores[room].apply(&batch);
                        w.check_store(room, true);
                        moderation::check_storage(&mut w, room);
                        w.trace(format_args!("r{room} committed {:?}", batch.id));
                        inbox.push(HostEvent::Durable {
                            room,
                            batch: batch.id,
                        });
                    });
                }
                HostOutput::Room(Output::SetAttachment { conn, attachment }) => {
                    if let Some(socket) = self.sockets.get_mut(&conn) {
                        socket.attachment = attachment;
                    }
                }
                HostOutput::Room(Output::AskRateLimiter { request, ip }) => {
                    self.check_admission(&mut w, request, ip, now);
                    let ask = LimiterAsk {
                        host: self.index,
                        room,
                        request,
                        ip,
                    };
                    to_limiter(&shared, &mut w, ask);
                }
                HostOutput::Room(Output::Moderated { request }) => {
                    let joined: Vec<ConnId> = self
                        .sockets
                        .iter()
                        .filter(|(_, s)| s.room == room && s.join.ready && !s.closing)
                        .map(|(conn, _)| *conn)
                        .collect();
                    moderation::moderated(&mut w, room, request.0, &joined);
                }
                HostOutput::Room(Output::Published { request, id }) => {
                    publish::published(&mut w, room, request.0, id);
                }
                HostOutput::Hibernated => {
                    w.trace(format_args!("h{} r{room} hibernated", self.index));
                    w.count_fault("hibernated");
                    // The debug build (CI) checks the reasoning behind `may_hibernate`.
                    debug_assert!(may_hibernate, "r{room} hibernated unasked");
                    self.eviction_asked.remove(&room);
                    if let Some(view) = quiescent_view.take() {
                        self.views.insert(room, view);
                    }
                }
            }
        }
        let host = &self.rooms[&room];
        if let Some(r) = host.room() {
            let presence = &mut lock(&shared).rooms[room].presence;
            if !presence.iter().map(String::as_str).eq(r.presence()) {
                *presence = r.presence().map(str::to_owned).collect();
            }
        }
    }

    /// A frame was processed (one limiter action): the session's cooldown must be over.
    fn check_admission(
        &mut self,
        w: &mut World,
        request: VerdictRequest,
        ip: IpAddr,
        now: Timestamp,
    ) {
        let at_ms = w.elapsed_ms();
        w.accepts.entry(ip).or_default().push((at_ms, request.conn));
        let Some(socket) = self.sockets.get_mut(&request.conn) else {
            return;
        };
        if let Err(before) = socket.shadow.asked(request.seq, now.0) {
            w.violate(
                "rate-limit",
                format!(
                    "{:?} had frame {} processed at {} while its limiter was {before}",
                    request.conn, request.seq, now.0
                ),
            );
        }
    }

    /// The room refused a frame of `conn` with the rate-limit error: the session's limiter
    /// must not have been open with nothing pending when the frame arrived.
    fn check_refusal(&mut self, w: &mut World, conn: ConnId, now: Timestamp) {
        let Some(socket) = self.sockets.get_mut(&conn) else {
            return;
        };
        if let Err(before) = socket.shadow.refused() {
            w.violate(
                "open-limiter-admits",
                format!(
                    "{conn:?} had a frame refused as rate-limited at {} while its limiter was open \
                     with nothing pending: {before}",
                    now.0
                ),
            );
        }
    }

    /// The room answered a frame of `conn` with a frame error (binary, malformed, too large
    /// or too long): the frame must have been one action on the limiter, asked just now.
    fn check_counted(&mut self, w: &mut World, conn: ConnId, frame: &Frame, now: Timestamp) {
        let Some(socket) = self.sockets.get(&conn) else {
            return;
        };
        let model::Seen::Error(error) = model::parse(frame) else {
            return;
        };
        if model::errors::FRAME_ERRORS.contains(&error.as_str()) && !socket.shadow.just_asked(now.0)
        {
            w.violate(
                "rate-limit",
                format!(
                    "{conn:?} got {error:?} at {} for a frame its limiter never counted: {:?}",
                    now.0, socket.shadow
                ),
            );
        }
    }

    /// The room sent `frame` to `conn`, not yet joined: the model judges the join's replay
    /// and its `ready`.
    fn watch_join(&mut self, w: &mut World, room: usize, conn: ConnId, frame: &Frame) {
        let Some(socket) = self.sockets.get_mut(&conn).filter(|s| !s.join.ready) else {
            return;
        };
        match model::parse(frame) {
            model::Seen::Record(id) => socket.join.replay.push(id),
            model::Seen::Ready { recovered } => {
                let kind = match recovered {
                    Some(true) => "join-recovered",
                    Some(false) => "join-fell-back",
                    None => "join-fresh",
                };
                w.count_fault(kind);
                let newest = w.rooms[room].newest_acked();
                // The join trimmed by age against this very clock.
                let now = w.host_now(room % w.sc.hosts).0;
                let held = w.retained_range(room, newest, Some(now));
                if w.rooms[room].retention.changed {
                    let exact = held.0 == held.1;
                    w.count_fault(if exact {
                        "join-retention-exact"
                    } else {
                        "join-retention-range"
                    });
                }
                let replay_max = w.sc.room.join_replay_max as u64;
                let judged = socket.join.judge_ready(recovered, newest, held, replay_max);
                if let Err(problem) = judged {
                    w.violate("join-replay", format!("room {room} {conn:?}: {problem}"));
                }
            }
            _ => {}
        }
    }

    /// The room sent `frame` to `conn`: if it answers a refresh of `conn`, the oracle judges
    /// the answer (a refusal for the rate limit says nothing about the token).
    fn judge_refresh(
        &mut self,
        shared: &Shared,
        w: &mut World,
        conn: ConnId,
        frame: &Frame,
        now: Timestamp,
    ) {
        if !self.refreshing.contains_key(&conn) {
            return;
        }
        let answer = if **frame == *REFRESHED_FRAME {
            Ok(())
        } else {
            match serde_json::from_str::<ServerFrameView>(frame)
                .ok()
                .and_then(|f| f.error)
            {
                Some(error) => Err(error),
                None => return, // not an answer
            }
        };
        let token = self.refreshing.remove(&conn).expect("checked");
        if answer
            .as_ref()
            .is_err_and(|error| error == ERROR_RATE_LIMITED)
        {
            return;
        }
        let answer = answer.as_ref().map(|_| ()).map_err(String::as_str);
        if let Some(generation) = tokens::judge_refresh(w, conn, &token, answer, now) {
            madsim::task::spawn(tokens::expiry_watchdog(shared.clone(), conn, generation));
        }
    }

    fn schedule_wakes(&mut self, now: Timestamp) {
        let wake_evicted = lock(&self.world).host_bug != Some(HostBug::NoExpiryWakeWhileHibernated);
        for (room, host) in &self.rooms {
            // A resident room's own timer, or an evicted one's wake-up (a token expiry).
            let wake_at = host.wake_at().filter(|_| wake_evicted);
            let Some(deadline) = host.poll_timeout().or(wake_at) else {
                continue;
            };
            // Compared in simulated real time, not on the host's clock: a wake scheduled
            // before the clock stepped forward fires later than its timestamp says.
            let delay = Duration::from_millis(deadline.millis_since(now).max(1));
            let fire_at = madsim::time::Instant::now() + delay;
            if self.wakes.get(room).is_some_and(|at| *at <= fire_at) {
                continue;
            }
            self.wakes.insert(*room, fire_at);
            let (inbox, room) = (self.inbox.clone(), *room);
            madsim::task::spawn(async move {
                sleep(delay).await;
                inbox.push(HostEvent::Wake { room });
            });
        }
    }
}

fn view(host: &RoomHost) -> Option<RoomView> {
    let room = host.room()?;
    Some((
        room.presence().map(str::to_owned).collect(),
        room.history_page(None, usize::MAX),
    ))
}

// ---------------------------------------------------------------------------------------
// The rate limiter.

async fn limiter_main(world: Shared) {
    let inbox = Mailbox::new();
    lock(&world).limiter = Some(inbox.clone());
    let mut limiters: BTreeMap<IpAddr, RateLimiter> = BTreeMap::new();
    // Each limiter clamps its own clock; mirror that per IP to record answers in its time.
    let mut latest: BTreeMap<IpAddr, Timestamp> = BTreeMap::new();
    while let Some(ask) = inbox.recv().await {
        let mut w = lock(&world);
        let now = w.limiter_now();
        let clamped = latest.entry(ask.ip).or_default();
        *clamped = (*clamped).max(now);
        let clamped = *clamped;
        let config = w.limiter_config;
        let wait_ms = limiters
            .entry(ask.ip)
            .or_insert_with(|| RateLimiter::new(config))
            .handle_action(now);
        if wait_ms == 0 {
            w.zero_answers.entry(ask.ip).or_default().push(clamped.0);
        }
        w.trace(format_args!(
            "limiter {} {:?} wait {wait_ms}",
            ask.ip, ask.request
        ));
        verdict_to_host(&world, &mut w, &ask, wait_ms);
    }
}

// ---------------------------------------------------------------------------------------
// Clients.

fn schedule_tick(inbox: &Mailbox<ClientEvent>, delay: Duration) {
    let inbox = inbox.clone();
    madsim::task::spawn(async move {
        sleep(delay).await;
        inbox.push(ClientEvent::Tick);
    });
}

async fn client_main(world: Shared, index: usize) {
    let inbox = lock(&world).clients[index].inbox.clone();
    schedule_tick(&inbox, random_ms((1, 2_000)));
    while let Some(event) = inbox.recv().await {
        let mut w = lock(&world);
        match event {
            ClientEvent::Tick => {
                client_act(&world, &mut w, index);
                let next = if w.settling {
                    random_ms((500, 3_000))
                } else if w.clients[index].burst_left > 0 {
                    random_ms((1, 400))
                } else {
                    random_ms((100, 6_000))
                };
                schedule_tick(&inbox, next);
            }
            ClientEvent::Disconnect => {
                if let Some(conn) = w.clients[index].current.conn {
                    w.count_fault(FaultKind::Disconnect.name());
                    w.trace(format_args!("u{index} disconnects {conn:?}"));
                    to_host(&world, &mut w, conn, HostEvent::Closed { conn });
                    w.clients[index].current = ClientConn::default();
                }
            }
            ClientEvent::Closed { conn } => {
                w.conn_closed(conn);
                if w.clients[index].current.conn == Some(conn) {
                    w.trace(format_args!("u{index} lost {conn:?}"));
                    let refused = !w.clients[index].current.ready;
                    w.clients[index].current = ClientConn::default();
                    let now_ms = w.elapsed_ms();
                    if let Some(tokens) = w.tokens.as_mut().filter(|_| refused) {
                        tokens.back_off(index, now_ms);
                    }
                }
            }
            ClientEvent::Frame { conn, frame } => {
                if w.clients[index].current.conn == Some(conn) {
                    client_frame(&mut w, index, conn, &frame);
                }
            }
        }
    }
}

fn client_act(shared: &Shared, w: &mut World, index: usize) {
    let mut rng = thread_rng();
    let client = &w.clients[index];
    let Some(conn) = client.current.conn else {
        // Connect (again), usually resuming from the last message seen.
        let mut since = client.last_seen.filter(|_| rng.gen_bool(0.85));
        // Often right at the edge of the room's retained history: one below what it holds
        // (outside), at it (`since + 1` is the oldest held), or one inside; never beyond
        // what this client has seen (it would skip messages).
        let newest = w.rooms[client.room].acked.keys().next_back().copied();
        if let (Some(seen), Some(newest)) = (since, newest) {
            let edge = w.retained_range(client.room, newest, None).1;
            if edge >= 2 && rng.gen_bool(0.4) {
                let pick = edge - 2 + rng.gen_range(0..3);
                since = Some(pick.min(seen));
            }
        }
        let (room, ip, name) = (client.room, client.ip, client.name.clone());
        let (now_ms, settling) = (w.elapsed_ms(), w.settling);
        if w.tokens
            .as_ref()
            .is_some_and(|t| now_ms < t.held[index].retry_at_ms)
        {
            return;
        }
        let token = w
            .tokens
            .as_mut()
            .filter(|t| t.plans[index].carries_token)
            .map(|t| t.mint(&mut rng, index, room, now_ms, settling));
        let conn = w.open_conn(index);
        let slot = &mut w.clients[index];
        slot.connects += 1;
        slot.current = ClientConn {
            conn: Some(conn),
            since,
            ..ClientConn::default()
        };
        w.trace(format_args!("u{index} connects {conn:?} since {since:?}"));
        let connect = HostEvent::Connect {
            conn,
            room,
            ip,
            token,
        };
        to_host(shared, w, conn, connect);
        if !settling && rng.gen_bool(0.15) {
            // Stays unnamed a while (across evictions, crashes, others' chat), then joins.
            w.clients[index].current.join_at_ms = Some(now_ms + rng.gen_range(1_000..20_000));
            w.count_fault("join-delayed");
        } else {
            to_host(shared, w, conn, join_frame(conn, &name, since));
        }
        return;
    };
    if let Some(at) = client.current.join_at_ms {
        if w.elapsed_ms() >= at {
            let (name, since) = (client.name.clone(), client.current.since);
            w.clients[index].current.join_at_ms = None;
            to_host(shared, w, conn, join_frame(conn, &name, since));
        }
        return;
    }
    if !client.current.ready {
        if client.current.join_rejected {
            let (name, since) = (client.name.clone(), client.current.since);
            w.clients[index].current.join_rejected = false;
            to_host(shared, w, conn, join_frame(conn, &name, since));
        }
        return;
    }
    if client.current.mod_pending.is_some() {
        return; // a moderation frame goes out alone: nothing follows until it is answered
    }
    let (now_ms, settling, room) = (w.elapsed_ms(), w.settling, client.room);
    // A refresh goes out alone: after every frame before it is answered, and nothing
    // else is sent until it is answered (so each answer is known to be the refresh's).
    let quiet = client.current.answers == client.current.sent;
    if w.tokens
        .as_ref()
        .is_some_and(|t| t.held[index].refresh_outstanding)
    {
        return;
    }
    let offset_ms = w.host_offset_ms[room % w.sc.hosts];
    let lapse = settling
        && !w.clock_stepped
        && w.tokens
            .as_ref()
            .is_some_and(|t| t.lets_lapse(index, offset_ms, now_ms));
    if let Some(tokens) = w
        .tokens
        .as_mut()
        .filter(|t| quiet && !lapse && t.refresh_due(index, now_ms, settling))
    {
        let token = tokens.mint(&mut rng, index, room, now_ms, settling);
        tokens.held[index].refresh_outstanding = true;
        let text = format!(r#"{{"token":"{token}"}}"#);
        expect_answer(shared, w, index, conn);
        to_host(shared, w, conn, HostEvent::Text { conn, text });
        return;
    }
    if w.settling {
        return;
    }
    // A resend goes out alone on a quiet connection, and nothing follows it until it is
    // answered, so that an error then is its answer.
    let current = &mut w.clients[index].current;
    if current
        .resending
        .keys()
        .any(|key| !current.resend_broadcast.contains(key))
    {
        return;
    }
    if !current.resend_broadcast.is_empty() {
        if now_ms < current.resend_until_ms {
            return;
        }
        // Answered by the original's broadcast: the room took the resend while the
        // original was being written (else its own answer would have come by now).
        let done = std::mem::take(&mut current.resend_broadcast);
        current.resending.retain(|key, _| !done.contains(key));
    }
    if quiet && rng.gen_bool(0.08) && resend(shared, w, index, conn, &mut rng) {
        return;
    }
    let moderator = w.tokens.as_ref().is_some_and(|t| t.is_moderator(index));
    if w.sc.mod_sessions && quiet && rng.gen_bool(if moderator { 0.2 } else { 0.06 }) {
        send_moderation(shared, w, index, conn);
        return;
    }
    let roll: f64 = rng.gen();
    if w.clients[index].burst_left > 0 || roll < 0.55 {
        let slot = &mut w.clients[index];
        slot.burst_left = match slot.burst_left {
            0 => rng.gen_range(0..=8),
            left => left - 1,
        };
        slot.sent += 1;
        let mut message = format!("{}#{}", slot.name, slot.sent);
        let at_limit = rng.gen_bool(0.06);
        if at_limit {
            // Exactly at the limit, characters outside the BMP counting two units.
            message = pad_to_units(message, model::MESSAGE_UNITS_MAX, &mut rng);
        }
        // Most messages carry an idempotency key, which a resend repeats.
        let text = if rng.gen_bool(0.7) {
            let key = random_key(&mut rng, index, slot.sent);
            let text = format!(r#"{{"message":"{message}","key":"{key}"}}"#);
            slot.keyed.push((message.clone(), key));
            text
        } else {
            format!(r#"{{"message":"{message}"}}"#)
        };
        slot.sent_on.insert(message.clone(), conn);
        if at_limit {
            w.count_fault("sent-256-units");
        }
        tokens::sending(w, conn, &message);
        expect_answer(shared, w, index, conn);
        to_host(shared, w, conn, HostEvent::Text { conn, text });
    } else if roll < 0.58 {
        // Over the limit: well over, or by one unit (a surrogate pair may make it so).
        let message = if rng.gen_bool(0.3) {
            "x".repeat(300)
        } else {
            pad_to_units("x".into(), model::MESSAGE_UNITS_MAX + 1, &mut rng)
        };
        let text = format!(r#"{{"message":"{message}"}}"#);
        w.clients[index].current.errors.too_long.0 += 1;
        expect_answer(shared, w, index, conn);
        to_host(shared, w, conn, HostEvent::Text { conn, text });
    } else if roll < 0.66 && w.fault_on(FaultKind::Disconnect) {
        w.clients[index].inbox.push(ClientEvent::Disconnect);
    } else if (0.66..0.69).contains(&roll) {
        send_malformed(shared, w, index, conn, &mut rng);
    }
}

/// A key of 1–64 characters of `[A-Za-z0-9_-]`: `<client>_<message number>_` (so keys are
/// unique, and a frame's key names its sender even once an edit replaced its text), then
/// random characters up to 64 in all (often none).
fn random_key(rng: &mut impl Rng, index: usize, sent: u64) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
    let mut key = format!("{index}_{sent}_");
    let len = match rng.gen_range(0..10) {
        0..=3 => key.len(),
        4 => 64,
        _ => rng.gen_range(key.len()..=32),
    };
    while key.len() < len {
        key.push(char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]));
    }
    key
}

/// Sends a keyed message again with its key, as a client does after a reconnect whose
/// replay did not show it (mostly), or on the same connection (sometimes). The resend's
/// text is the original's `u<n>#<m>` plus `~r<k>`, so that a resend stored as a new message (the
/// original failed, was trimmed, or was deleted before a rebuild) stays unique for the
/// checks that match texts, and a deduplicated one is answered with the original's text.
/// Returns whether it sent one.
fn resend(shared: &Shared, w: &mut World, index: usize, conn: ConnId, rng: &mut impl Rng) -> bool {
    let slot = &w.clients[index];
    let recent = &slot.keyed[slot.keyed.len().saturating_sub(20)..];
    let unseen = recent
        .iter()
        .rev()
        .find(|(text, key)| !slot.keys_seen.contains(key) && slot.sent_on.get(text) != Some(&conn));
    let pick = match unseen {
        Some(pick) => pick,
        None if !recent.is_empty() && rng.gen_bool(0.3) => &recent[rng.gen_range(0..recent.len())],
        None => return false,
    };
    let (original, key) = pick.clone();
    // The original's `u<n>#<m>` (without any padding), so a resend stays within the limit.
    let number = slot.resends + 1;
    let message = format!(
        "{}~r{number}",
        original.split(' ').next().unwrap_or_default()
    );
    let text = format!(r#"{{"message":"{message}","key":"{key}"}}"#);
    let until_ms = w.elapsed_ms() + w.answer_bound(slot.room).as_millis() as u64;
    let slot = &mut w.clients[index];
    slot.current.resend_until_ms = until_ms;
    slot.resends = number;
    slot.sent_on.insert(message.clone(), conn);
    slot.current
        .resending
        .insert(key, (original, message.clone()));
    w.count_fault("resend");
    tokens::sending(w, conn, &message);
    expect_answer(shared, w, index, conn);
    to_host(shared, w, conn, HostEvent::Text { conn, text });
    true
}

/// `message` padded to exactly `units` UTF-16 units with `x` and U+1F600 (two units each).
pub(crate) fn pad_to_units(mut message: String, units: usize, rng: &mut impl Rng) -> String {
    message.push(' ');
    let mut len = model::utf16_units(&message);
    while len < units {
        if units - len >= 2 && rng.gen_bool(0.5) {
            message.push('\u{1F600}');
            len += 2;
        } else {
            message.push('x');
            len += 1;
        }
    }
    message
}

/// A frame the protocol answers with an error of its own: binary, not a JSON object, a
/// message that is not a string, or over 4 KiB. Each is one action and one answer.
fn send_malformed(shared: &Shared, w: &mut World, index: usize, conn: ConnId, rng: &mut impl Rng) {
    w.count_fault("sent-malformed");
    let errors = &mut w.clients[index].current.errors;
    let event = match rng.gen_range(0..8) {
        0..=2 => {
            errors.binary.0 += 1;
            w.count_fault("sent-binary");
            HostEvent::Binary { conn }
        }
        3..=4 => {
            errors.not_object.0 += 1;
            let text = ["hello", "[1,2]", "{", ""][rng.gen_range(0..4)].to_owned();
            HostEvent::Text { conn, text }
        }
        5..=6 => {
            errors.not_message.0 += 1;
            let text = [
                r#"{"message":5}"#,
                r#"{"message":null}"#,
                r#"{"text":"hi"}"#,
            ][rng.gen_range(0..3)]
            .to_owned();
            HostEvent::Text { conn, text }
        }
        _ => {
            errors.too_large.0 += 1;
            let text = format!(r#"{{"message":"{}"}}"#, "y".repeat(4_200));
            HostEvent::Text { conn, text }
        }
    };
    expect_answer(shared, w, index, conn);
    to_host(shared, w, conn, event);
}

/// Sends a session's moderation frame alone on a quiet connection (see
/// [`moderation::session_attempt`]); an error before the answer bound passes is its answer.
fn send_moderation(shared: &Shared, w: &mut World, index: usize, conn: ConnId) {
    let current = &mut w.clients[index].current;
    current.mod_sent += 1;
    let seq = current.mod_sent;
    let Some(attempt) = moderation::session_attempt(w, index, seq) else {
        return;
    };
    let text = attempt.frame.clone();
    w.trace(format_args!("u{index} {conn:?} moderates {text}"));
    w.clients[index].current.mod_pending = Some(attempt);
    let bound = w.answer_bound(w.clients[index].room);
    let timer = shared.clone();
    madsim::task::spawn(async move {
        sleep(bound).await;
        moderation::session_overdue(&mut lock(&timer), index, conn, seq);
    });
    to_host(shared, w, conn, HostEvent::Text { conn, text });
}

/// A chat frame is about to be sent on `conn`: it must be answered (echo or error) within
/// the room's bound while the connection lasts.
fn expect_answer(shared: &Shared, w: &mut World, index: usize, conn: ConnId) {
    let current = &mut w.clients[index].current;
    current.sent += 1;
    let sent = current.sent;
    let bound = w.answer_bound(w.clients[index].room);
    let shared = shared.clone();
    madsim::task::spawn(async move {
        sleep(bound).await;
        lock(&shared).check_answered(index, conn, sent);
    });
}

/// `conn` got an answer to one of its chat frames: never more answers than frames.
fn answered(w: &mut World, index: usize, conn: ConnId) {
    let current = &mut w.clients[index].current;
    current.answers += 1;
    if current.answers > current.sent {
        let detail = format!(
            "u{index} on {conn:?} got {} answers to {} chat frames",
            current.answers, current.sent
        );
        w.violate("one-answer-each", detail);
    }
}

fn join_frame(conn: ConnId, name: &str, since: Option<u64>) -> HostEvent {
    let text = match since {
        Some(since) => format!(r#"{{"name":"{name}","since":{since}}}"#),
        None => format!(r#"{{"name":"{name}"}}"#),
    };
    HostEvent::Text { conn, text }
}

/// A client received `frame` on its current connection: check it against everything seen.
fn client_frame(w: &mut World, index: usize, conn: ConnId, frame: &Frame) {
    let Ok(parsed) = serde_json::from_str::<ServerFrameView>(frame) else {
        w.violate("frames", format!("u{index} got unparsable {frame}"));
        return;
    };
    let room = w.clients[index].room;
    if **frame == *REFRESHED_FRAME {
        w.trace(format_args!("u{index} {conn:?} <- refreshed"));
        if let Some(tokens) = w.tokens.as_mut() {
            tokens.held[index].refresh_outstanding = false;
        }
        answered(w, index, conn);
        return;
    }
    if let Some(error) = parsed.error {
        w.trace(format_args!("u{index} {conn:?} <- error {error}"));
        if let Some(attempt) = w.clients[index].current.mod_pending.take() {
            // Sent alone: this error answers it.
            moderation::session_answered(w, index, &attempt, &error);
            return;
        }
        if let Some(tokens) = w.tokens.as_mut() {
            let held = &mut tokens.held[index];
            // A refresh goes out alone, so this error refuses it (for the rate limit, say):
            // the connection still holds its fault-phase token, which must be refreshed
            // again once settled (minting the refusal's token did not replace it).
            if held.refresh_outstanding {
                held.short = true;
            }
            held.refresh_outstanding = false;
        }
        if error == AuthError::ReadOnly.to_string() {
            w.count_fault("auth-read-only-refused");
        }
        let current = &mut w.clients[index].current;
        if !current.ready {
            if error == ERROR_RATE_LIMITED {
                current.join_rejected = true;
            }
            return;
        }
        if let Err(problem) = current.errors.received(&error) {
            let detail = format!("room {room}: u{index} on {conn:?}: {problem}");
            w.violate("refusals-deserved", detail);
            return;
        }
        let counted = resend_refused(w, index, conn, room, &error);
        let current = &mut w.clients[index].current;
        if error == ERROR_STORAGE_UNAVAILABLE {
            current.storage_errors += 1;
            if !w.sc.faulty_rooms.contains(&room) {
                let detail = format!("room {room} on healthy storage: u{index} got {error}");
                w.violate("healthy-rooms-unaffected", detail);
            }
        }
        if !counted {
            answered(w, index, conn);
        }
        return;
    }
    if frame.contains(r#""topic""#) {
        let topic =
            crate::json::Object::parse(frame).and_then(|json| Some(json.str("topic")?.to_owned()));
        if let Some(topic) = topic {
            w.trace(format_args!("u{index} {conn:?} <- topic {topic:?}"));
            w.clients[index].current.topic = Some(topic).filter(|t| !t.is_empty());
            return;
        }
    }
    if let Some(name) = parsed.joined {
        w.trace(format_args!("u{index} {conn:?} <- joined {name}"));
        w.clients[index].current.roster.push(name);
    }
    if let Some(name) = parsed.quit {
        w.trace(format_args!("u{index} {conn:?} <- quit {name}"));
        let roster = &mut w.clients[index].current.roster;
        match roster.iter().position(|n| *n == name) {
            Some(at) => {
                roster.remove(at);
            }
            None => w.violate("roster", format!("u{index} got quit of absent {name}")),
        }
    }
    if parsed.ready.is_some() {
        w.trace(format_args!(
            "u{index} {conn:?} <- ready recovered {:?}",
            parsed.recovered
        ));
        let current = &mut w.clients[index].current;
        if current.ready {
            w.violate("frames", format!("u{index} got ready twice on {conn:?}"));
            return;
        }
        current.ready = true;
        if let (Some(since), Some(true)) = (current.since, parsed.recovered) {
            match current.first_id {
                Some(first) if first != since + 1 => {
                    let detail = format!(
                        "u{index} resumed since {since} (recovered) but replay began at {first}"
                    );
                    w.violate("since-no-duplicate", detail);
                }
                Some(_) => {}
                None => current.last_id = Some(since),
            }
        }
    }
    // Change records (deletions, edits) carry `at`, not `timestamp`: ids all the same.
    let Some(record) = moderation::Record::parse(frame) else {
        return;
    };
    let (id, timestamp) = (record.id, record.ts);
    w.trace(format_args!("u{index} {conn:?} <- #{id}"));
    let mut problem = None;
    // Storage failures: what was refused is never seen, what was acknowledged never changes.
    let value = crate::json::Object::parse(frame);
    let field = |key: &str| -> String {
        value
            .as_ref()
            .and_then(|value| Some(value.str(key)?.to_owned()))
            .unwrap_or_default()
    };
    let (text, name) = (field("message"), field("name"));
    let key = field("key");
    if key.starts_with(&format!("{index}_")) {
        w.clients[index].keys_seen.insert(key.clone());
        if resend_answer(w, index, conn, room, id, frame, &text, &key) {
            return;
        }
    }
    if model::utf16_units(&text) > model::MESSAGE_UNITS_MAX {
        let detail = format!("room {room}: u{index} saw id {id}, over the length limit");
        w.violate("refusals-deserved", detail);
        return;
    }
    tokens::judge_message(w, room, &text, &name, "is seen");
    let oracle = &mut w.rooms[room];
    if oracle.refused.contains(&text) {
        problem = Some((
            "refused-never-visible",
            format!("u{index} saw id {id}: {frame}, whose sender was told it failed"),
        ));
    }
    if let Some(acked) = oracle
        .acked
        .get(&id)
        .filter(|acked| !w.moderation.same_either(room, acked, frame))
    {
        problem = Some((
            "acked-never-lost",
            format!("u{index} saw id {id} as {frame}, acknowledged as {acked}"),
        ));
    }
    oracle.seen_texts.insert(text.clone(), id);
    if w.clients[index].sent_on.get(&text) == Some(&conn) {
        answered(w, index, conn);
    }
    // One total order: the same frame for the same id everywhere, timestamps increasing.
    match w.rooms[room].seen.get(&id) {
        Some((seen, _)) if !w.moderation.same_either(room, seen, frame) => {
            problem = Some(("one-total-order", format!("id {id} is {frame} and {seen}")));
        }
        Some(_) => {}
        None => {
            let seen = &w.rooms[room].seen;
            if let Some((before, (_, earlier))) = seen.range(..id).next_back() {
                if *earlier >= timestamp {
                    problem = Some((
                        "timestamps-increasing",
                        format!("id {id} at {timestamp} is not after id {before} at {earlier}"),
                    ));
                }
            }
            if let Some((after, (_, later))) = seen.range(id + 1..).next() {
                if *later <= timestamp {
                    problem = Some((
                        "timestamps-increasing",
                        format!("id {id} at {timestamp} is not before id {after} at {later}"),
                    ));
                }
            }
            w.rooms[room].seen.insert(id, (frame.clone(), timestamp));
        }
    }
    // Durability before visibility: what a client sees is committed (unless trimmed since).
    let retained = w.sc.room.history_retained_max as u64;
    let store_newest = newest_id(&w.stores[room]);
    let surely_stored = if w.rooms[room].retention.changed {
        id >= w.retained_range(room, store_newest, None).1
    } else {
        store_newest < id + retained
    };
    let store = &w.stores[room];
    if surely_stored
        && !store
            .get(&keys::message(id))
            .is_some_and(|stored| w.moderation.same_either(room, frame, stored))
    {
        problem = Some((
            "durable-before-visible",
            format!("u{index} saw id {id}, which storage does not hold (not yet committed, or trimmed too soon)"),
        ));
    }
    // Each connection sees a gap-free run of ids.
    let current = &mut w.clients[index].current;
    match current.last_id {
        Some(last) if id != last + 1 => {
            problem = Some((
                "gap-free",
                format!("u{index} on {conn:?} saw id {id} after {last}"),
            ));
        }
        Some(_) => {}
        None => current.first_id = Some(id),
    }
    current.last_id = Some(id);
    let slot = &mut w.clients[index];
    slot.last_seen = max(slot.last_seen, Some(id));
    if let Some((invariant, detail)) = problem {
        w.violate(invariant, format!("room {room}: {detail}"));
    }
}

/// The error a resend of a deleted message gets (docs/PROTOCOL.md, "Idempotent sends").
const RESEND_DELETED: &str = "Message not sent again: a moderator deleted it.";

/// An error reached `conn`: it answers the resend outstanding there, if any (it went out
/// alone, and nothing follows it until it is answered or, once its original's broadcast
/// came, the answer bound passed). Returns whether that broadcast was already counted as
/// its answer. `resend-answer`: one refused as deleted is a resend of a message the moderator
/// asked to delete.
fn resend_refused(w: &mut World, index: usize, conn: ConnId, room: usize, error: &str) -> bool {
    let current = &mut w.clients[index].current;
    let outstanding = current
        .resending
        .keys()
        .find(|key| !current.resend_broadcast.contains(*key))
        .or_else(|| current.resend_broadcast.first())
        .cloned();
    // Its original's broadcast came first and was taken for its answer: this is.
    let counted = outstanding
        .as_ref()
        .is_some_and(|key| current.resend_broadcast.remove(key));
    let entry = outstanding.and_then(|key| Some((current.resending.remove(&key)?, key)));
    if error != RESEND_DELETED {
        return counted;
    }
    let Some(((original, _), key)) = entry else {
        let detail =
            format!("room {room}: u{index} on {conn:?} got {RESEND_DELETED:?} with no resend out");
        w.violate("resend-answer", detail);
        return counted;
    };
    let stored = w.rooms[room]
        .stored_keys
        .get(&(index, key.clone()))
        .copied();
    if !stored.is_some_and(|id| w.moderation.delete_asked(room, id)) {
        let detail = format!(
            "room {room}: u{index}'s resend of {original} (key {key}, stored as {stored:?}) refused as deleted"
        );
        w.violate("resend-answer", detail);
    }
    w.count_fault("resend-deleted");
    counted
}

/// A keyed frame of `index`'s own reached `conn`: if it answers a resend there, check it is
/// the stored message (same id as written under that key) and count the answer. Returns
/// whether it was the room's copy for the resender alone (not part of the stream of ids).
#[allow(clippy::too_many_arguments)]
fn resend_answer(
    w: &mut World,
    index: usize,
    conn: ConnId,
    room: usize,
    id: u64,
    frame: &Frame,
    text: &str,
    key: &str,
) -> bool {
    let current = &mut w.clients[index].current;
    let Some((_, resent)) = current.resending.get(key) else {
        return false;
    };
    if resent == text {
        // Stored as a new message (its original failed, was trimmed, or was deleted before
        // the room was rebuilt): answered as any message is.
        current.resending.remove(key);
        current.resend_broadcast.remove(key);
        return false;
    }
    let in_stream = current.last_id.is_none_or(|last| id > last);
    if in_stream {
        // The original's broadcast: the answer if the room took the resend while it was
        // being written; if it was durable first, a copy follows (below).
        if current.resend_broadcast.insert(key.to_owned()) {
            answered(w, index, conn);
        }
        return false;
    }
    current.resending.remove(key);
    let counted = current.resend_broadcast.remove(key);
    let stored = w.rooms[room]
        .stored_keys
        .get(&(index, key.to_owned()))
        .copied();
    // Compared with what everyone saw for that id, or, when nobody saw it yet (its
    // broadcast lost with every connection, the joins' replays too short), with the record
    // acknowledged under it.
    let known = match w.rooms[room].seen.get(&id) {
        Some((seen, _)) => Some(seen),
        None => w.rooms[room].acked.get(&id),
    };
    let same = known.is_some_and(|known| w.moderation.same_either(room, known, frame));
    if stored != Some(id) || !same {
        let detail = format!(
            "room {room}: u{index}'s resend with key {key} answered with {frame}, stored as {stored:?}"
        );
        w.violate("resend-answer", detail);
    }
    w.trace(format_args!("u{index} {conn:?} <- resend answer #{id}"));
    w.count_fault("resend-answered");
    if !counted {
        answered(w, index, conn);
    }
    true
}

// ---------------------------------------------------------------------------------------
// The supervisor.

/// Builds the world's nodes, injects faults, settles, and runs the final checks.
pub(crate) async fn supervise(world: Shared) {
    let handle = madsim::runtime::Handle::current();
    let (sc, client_ips) = {
        let w = lock(&world);
        let ips: Vec<IpAddr> = w.clients.iter().map(|c| c.ip).collect();
        (w.sc.clone(), ips)
    };
    {
        let w2 = world.clone();
        handle
            .create_node()
            .name("limiter")
            .ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)))
            .init(move || limiter_main(w2.clone()))
            .build();
    }
    for index in 0..sc.hosts {
        let w2 = world.clone();
        let node = handle
            .create_node()
            .name(format!("host-{index}"))
            .ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 10 + index as u8)))
            .init(move || host_main(w2.clone(), index))
            .build();
        lock(&world).hosts[index].node = Some(node);
    }
    for ip_index in 0..sc.ips {
        let ip = client_ip(ip_index);
        let node = handle
            .create_node()
            .name(format!("clients-{ip}"))
            .ip(ip)
            .build();
        for (client, _) in client_ips.iter().enumerate().filter(|(_, c)| **c == ip) {
            node.spawn(client_main(world.clone(), client));
        }
    }
    {
        let mut w = lock(&world);
        let skewed = w.host_offset_ms.iter().filter(|o| **o != 0).count()
            + usize::from(w.limiter_offset_ms != 0);
        for _ in 0..skewed {
            w.count_fault(FaultKind::ClockSkew.name());
        }
        let line = format!("scenario {:?}", w.sc);
        w.trace(line);
    }

    if sc.moderation {
        madsim::task::spawn(moderation::moderator_main(world.clone(), sc.fault_ms));
    }
    madsim::task::spawn(publish::publisher_main(world.clone(), sc.fault_ms));
    madsim::task::spawn(crate::counters::counter_main(world.clone(), sc.fault_ms));

    // Faults.
    let kinds: Vec<FaultKind> = sc
        .faults
        .iter()
        .copied()
        .filter(|kind| {
            !matches!(
                kind,
                FaultKind::LossClient
                    | FaultKind::LossLimiter
                    | FaultKind::ClockSkew
                    | FaultKind::CommitFail
            )
        })
        .collect();
    loop {
        sleep(random_ms((200, 4_000))).await;
        {
            let w = lock(&world);
            if w.violation.is_some() || w.elapsed_ms() >= sc.fault_ms {
                break;
            }
        }
        if kinds.is_empty() {
            continue;
        }
        let kind = kinds[thread_rng().gen_range(0..kinds.len())];
        inject(&world, &handle, kind);
    }

    // Settle: faults off, network healed, crashed hosts back.
    {
        let mut w = lock(&world);
        w.settling = true;
        w.cut_ips.clear();
        w.limiter_cut = false;
        w.client_break_p = 0.0;
        w.limiter_loss_p = 0.0;
        w.client_latency_ms = (1, 3);
        w.limiter_latency_ms = (1, 3);
        w.trace("settling");
    }
    let mut waited = 0;
    while waited < SETTLE_MS {
        sleep(Duration::from_secs(10)).await;
        waited += 10_000;
        if lock(&world).violation.is_some() {
            lock(&world).close_mailboxes();
            sleep(Duration::from_millis(1)).await;
            return;
        }
    }
    {
        let w = lock(&world);
        for room in 0..sc.rooms {
            if let Some(inbox) = &w.hosts[room % sc.hosts].inbox {
                inbox.push(HostEvent::Probe { room });
            }
        }
    }
    sleep(Duration::from_secs(1)).await;
    {
        let mut w = lock(&world);
        if w.violation.is_none() {
            w.check_final();
        }
        w.trace("done");
        w.close_mailboxes();
    }
    // Let every node's loop see its closed mailbox and finish.
    sleep(Duration::from_millis(1)).await;
}

fn inject(world: &Shared, handle: &madsim::runtime::Handle, kind: FaultKind) {
    let mut rng = thread_rng();
    let mut w = lock(world);
    match kind {
        FaultKind::Evict => {
            let room = rng.gen_range(0..w.sc.rooms);
            if let Some(inbox) = &w.hosts[room % w.sc.hosts].inbox {
                inbox.push(HostEvent::Evict { room });
            }
        }
        FaultKind::Crash => {
            let host = rng.gen_range(0..w.sc.hosts);
            if w.hosts[host].inbox.is_none() {
                return;
            }
            let node = w.hosts[host].node.as_ref().expect("built").id();
            w.count_fault(kind.name());
            w.trace(format_args!("crash host {host}"));
            handle.kill(node);
            w.host_crashed(host);
            let down = random_ms((100, 5_000));
            let (handle, world) = (handle.clone(), world.clone());
            madsim::task::spawn(async move {
                sleep(down).await;
                lock(&world).trace(format_args!("restart host {host}"));
                handle.restart(node);
            });
        }
        FaultKind::Disconnect => {
            let client = rng.gen_range(0..w.clients.len());
            w.clients[client].inbox.push(ClientEvent::Disconnect);
        }
        FaultKind::PartitionClient => {
            let ip = client_ip(rng.gen_range(0..w.sc.ips));
            if w.cut_ips.contains(&ip) {
                return;
            }
            w.count_fault(kind.name());
            w.trace(format_args!("partition {ip} from hosts"));
            w.cut_ip(ip);
            let heal = random_ms((500, 20_000));
            let world = world.clone();
            madsim::task::spawn(async move {
                sleep(heal).await;
                let mut w = lock(&world);
                w.trace(format_args!("heal {ip}"));
                w.cut_ips.remove(&ip);
            });
        }
        FaultKind::PartitionLimiter => {
            if w.limiter_cut {
                return;
            }
            w.count_fault(kind.name());
            w.limiter_lossy = true;
            w.limiter_cut = true;
            w.trace("partition limiter");
            let heal = random_ms((500, 20_000));
            let world = world.clone();
            madsim::task::spawn(async move {
                sleep(heal).await;
                let mut w = lock(&world);
                w.trace("heal limiter");
                if !w.settling {
                    w.limiter_cut = false;
                }
            });
        }
        FaultKind::Latency => {
            w.count_fault(kind.name());
            w.client_latency_ms = (1, rng.gen_range(2..=1_000));
            // Below the verdict timeout, so that answers are late, not lost.
            w.limiter_latency_ms = (1, rng.gen_range(2..=4_000));
            let line = format!(
                "latency {:?} {:?}",
                w.client_latency_ms, w.limiter_latency_ms
            );
            w.trace(line);
        }
        FaultKind::ClockStep => {
            w.count_fault(kind.name());
            w.clock_stepped = true;
            let step = if rng.gen_bool(0.5) {
                -rng.gen_range(1..=60_000i64)
            } else {
                rng.gen_range(1..=60_000i64)
            };
            let target = rng.gen_range(0..=w.sc.hosts);
            if target == w.sc.hosts {
                w.limiter_offset_ms += step;
            } else {
                w.host_offset_ms[target] += step;
                // A token's expiry is a deadline on the host's wall clock (a Durable Object
                // alarm): the host's timers see the step.
                if w.tokens.is_some() {
                    if let Some(inbox) = &w.hosts[target].inbox {
                        for room in (0..w.sc.rooms).filter(|room| room % w.sc.hosts == target) {
                            inbox.push(HostEvent::Wake { room });
                        }
                    }
                }
            }
            w.trace(format_args!("clock step node {target} by {step} ms"));
        }
        FaultKind::CommitHang | FaultKind::CommitFlaky | FaultKind::RestoreFail => {
            let faulty: Vec<usize> = w.sc.faulty_rooms.iter().copied().collect();
            let room = faulty[rng.gen_range(0..faulty.len())];
            let until = w.elapsed_ms() + rng.gen_range(500..=15_000);
            w.trace(format_args!("{} room {room} until {until} ms", kind.name()));
            let faults = &mut w.storage_faults[room];
            match kind {
                FaultKind::CommitHang => faults.hang_until_ms = until,
                FaultKind::CommitFlaky => faults.fail_until_ms = until,
                _ => {
                    faults.restore_fail_until_ms = until;
                    // A resident room needs no restore: ask for its eviction.
                    if let Some(inbox) = &w.hosts[room % w.sc.hosts].inbox {
                        inbox.push(HostEvent::Evict { room });
                    }
                }
            }
        }
        FaultKind::LossClient
        | FaultKind::LossLimiter
        | FaultKind::ClockSkew
        | FaultKind::CommitFail => {}
    }
}
