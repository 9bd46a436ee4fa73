//! A deterministic harness that drives a [`RoomHost`] like an adapter would and checks the
//! room's invariants after every step (feature `testkit`; always on in this crate's tests).
//!
//! The harness owns the world around one room: a virtual clock, a [`MemoryStore`], per-IP
//! [`RateLimiter`]s, and clients that record every frame they receive. Storage commits,
//! durability confirmations and limiter answers are queued and delivered only by explicit
//! [`Step`]s, so property tests and fuzzers explore every interleaving, including evictions
//! and crashes between a write and its confirmation.
//!
//! Checked after every step (a failure is a [`Violation`]):
//! - every client sees chat ids gap-free, in order, each exactly once, with strictly
//!   increasing timestamps, and every client sees the same frame for the same id;
//! - a client receives nothing but error frames before it names itself, and its join replay
//!   arrives whole, ending in `ready`;
//! - every message a client saw is in storage (unless trimmed as older than the retained
//!   history), storage holds the retained history gap-free, and so survives crashes;
//! - each client's roster (its `joined` minus `quit` frames) equals the room's presence;
//! - an eviction and restore changes neither presence nor history.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};

use serde::Deserialize;

use crate::host::{HostOutput, RoomHost};
use crate::limiter::{RateLimiter, RateLimiterConfig, VerdictRequest};
use crate::protocol::Frame;
use crate::room::{ConnId, Input, Output, RoomConfig};
use crate::storage::{keys, BatchId, MemoryStore, WriteBatch};
use crate::Timestamp;

/// One thing that can happen to the room's world.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Client `conn` connects from IP `127.0.0.<ip>` (ignored if already connected).
    Connect {
        /// Which client.
        conn: u8,
        /// Its IP's last octet.
        ip: u8,
    },
    /// Client `conn` sends a text frame (ignored if not connected).
    Text {
        /// Which client.
        conn: u8,
        /// The frame.
        text: String,
    },
    /// Client `conn` sends a binary frame.
    Binary {
        /// Which client.
        conn: u8,
    },
    /// Client `conn`'s socket closes.
    Close {
        /// Which client.
        conn: u8,
    },
    /// Storage commits the oldest uncommitted batch (its confirmation is queued).
    Commit,
    /// The oldest queued durability confirmation reaches the room.
    Confirm,
    /// The oldest outstanding limiter question is answered.
    Answer,
    /// The platform asks for eviction (deferred until quiescent).
    Evict,
    /// The host crashes: memory, uncommitted batches, queued confirmations and every socket
    /// are lost; committed storage survives.
    Crash,
    /// The clock moves forward.
    Advance {
        /// By this many milliseconds.
        ms: u32,
    },
    /// The clock steps backwards.
    StepBack {
        /// By this many milliseconds.
        ms: u32,
    },
}

/// A broken invariant, with what was observed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invariant broken after step {step}: {what}")]
pub struct Violation {
    /// The number of the step after which it was found (from 0).
    pub step: usize,
    /// What was wrong.
    pub what: String,
}

/// A client as the harness sees it.
#[derive(Debug, Clone, Default)]
pub struct Client {
    attachment: Vec<u8>,
    /// Every frame received, in order.
    pub frames: Vec<Frame>,
    /// Whether it has sent its first frame.
    sent_first: bool,
    /// Whether it has received `ready`.
    ready: bool,
    /// The last chat id it saw.
    last_id: Option<u64>,
    /// Names per its `joined`/`quit` frames.
    roster: Vec<String>,
    /// Closed by the server.
    closed: bool,
}

/// Any server frame, as a client-side checker reads it (every key optional). Shared by
/// this harness and the simulator's clients.
#[derive(Debug, Deserialize)]
pub struct ServerFrameView {
    /// `{"joined": name}`.
    #[serde(default)]
    pub joined: Option<String>,
    /// `{"quit": name}`.
    #[serde(default)]
    pub quit: Option<String>,
    /// `{"ready": true}`.
    #[serde(default)]
    pub ready: Option<bool>,
    /// `recovered` on `ready` after a resume.
    #[serde(default)]
    pub recovered: Option<bool>,
    /// A chat message's id.
    #[serde(default)]
    pub id: Option<u64>,
    /// A chat message's timestamp.
    #[serde(default)]
    pub timestamp: Option<u64>,
    /// `{"error": text}`.
    #[serde(default)]
    pub error: Option<String>,
}

/// Presence and retained history, as compared across an eviction.
type RoomView = (Vec<String>, Vec<Frame>);

/// The harness. See the [module documentation](self).
#[derive(Debug)]
pub struct Harness {
    /// The hosted room.
    pub host: RoomHost,
    /// Committed storage.
    pub store: MemoryStore,
    /// The virtual clock.
    pub now: Timestamp,
    limiter_config: RateLimiterConfig,
    limiters: BTreeMap<IpAddr, RateLimiter>,
    clients: BTreeMap<ConnId, Client>,
    uncommitted: VecDeque<WriteBatch>,
    unconfirmed: VecDeque<BatchId>,
    questions: VecDeque<(VerdictRequest, IpAddr)>,
    /// Presence and history just before an eviction, to compare after the restore.
    view_before_eviction: Option<RoomView>,
    /// The frame first seen for each chat id, with its timestamp.
    seen: BTreeMap<u64, (Frame, u64)>,
    steps: usize,
}

impl Harness {
    /// A harness around a fresh room.
    pub fn new(config: RoomConfig, limiter_config: RateLimiterConfig) -> Harness {
        Harness {
            host: RoomHost::new(config, u64::MAX),
            store: MemoryStore::new(),
            now: Timestamp(1_700_000_000_000),
            limiter_config,
            limiters: BTreeMap::new(),
            clients: BTreeMap::new(),
            uncommitted: VecDeque::new(),
            unconfirmed: VecDeque::new(),
            questions: VecDeque::new(),
            view_before_eviction: None,
            seen: BTreeMap::new(),
            steps: 0,
        }
    }

    /// The client `conn`, if it ever connected.
    pub fn client(&self, conn: u8) -> Option<&Client> {
        self.clients.get(&ConnId(u64::from(conn)))
    }

    /// Frames received by client `conn`, as text.
    pub fn frames(&self, conn: u8) -> Vec<String> {
        self.client(conn)
            .map(|c| c.frames.iter().map(|f| f.to_string()).collect())
            .unwrap_or_default()
    }

    /// Delivers every queued commit, confirmation and limiter answer until none is left.
    ///
    /// # Errors
    /// The first [`Violation`].
    pub fn settle(&mut self) -> Result<(), Violation> {
        while !self.uncommitted.is_empty()
            || !self.unconfirmed.is_empty()
            || !self.questions.is_empty()
        {
            self.step(Step::Commit)?;
            self.step(Step::Confirm)?;
            self.step(Step::Answer)?;
        }
        Ok(())
    }

    /// Applies one step, then checks every invariant.
    ///
    /// # Errors
    /// The first [`Violation`].
    pub fn step(&mut self, step: Step) -> Result<(), Violation> {
        match step {
            Step::Connect { conn, ip } => {
                let conn = ConnId(u64::from(conn));
                if self.clients.get(&conn).is_none_or(|c| c.closed) {
                    let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, ip));
                    // Restore first: the new socket has no attachment yet.
                    self.ensure_resident()?;
                    self.clients.insert(conn, Client::default());
                    self.input(Input::Connect { conn, ip })?;
                }
            }
            Step::Text { conn, text } => {
                if let Some(conn) = self.open_client(conn) {
                    self.clients.get_mut(&conn).expect("open").sent_first = true;
                    self.input(Input::Text { conn, text })?;
                }
            }
            Step::Binary { conn } => {
                if let Some(conn) = self.open_client(conn) {
                    self.clients.get_mut(&conn).expect("open").sent_first = true;
                    self.input(Input::Binary { conn })?;
                }
            }
            Step::Close { conn } => {
                if let Some(conn) = self.open_client(conn) {
                    // Restore first: the closing socket's attachment is part of the room.
                    self.ensure_resident()?;
                    self.clients.get_mut(&conn).expect("open").closed = true;
                    self.input(Input::Closed { conn })?;
                }
            }
            Step::Commit => {
                if let Some(batch) = self.uncommitted.pop_front() {
                    self.store.apply(&batch);
                    self.unconfirmed.push_back(batch.id);
                }
            }
            Step::Confirm => {
                if let Some(batch) = self.unconfirmed.pop_front() {
                    self.input(Input::Durable { batch })?;
                }
            }
            Step::Answer => {
                if let Some((request, ip)) = self.questions.pop_front() {
                    let limiter = self
                        .limiters
                        .entry(ip)
                        .or_insert_with(|| RateLimiter::new(self.limiter_config));
                    let wait_ms = limiter.handle_action(self.now);
                    self.input(Input::Verdict { request, wait_ms })?;
                }
            }
            Step::Evict => {
                let before = self.room_view();
                self.host.request_eviction();
                self.drain()?;
                if !self.host.is_resident() && self.view_before_eviction.is_none() {
                    self.view_before_eviction = before;
                }
            }
            Step::Crash => {
                self.host.crash();
                self.view_before_eviction = None;
                self.uncommitted.clear();
                self.unconfirmed.clear();
                self.questions.clear();
                for client in self.clients.values_mut() {
                    client.closed = true;
                }
            }
            Step::Advance { ms } => self.now = self.now.plus_millis(u64::from(ms)),
            Step::StepBack { ms } => self.now = Timestamp(self.now.0.saturating_sub(ms.into())),
        }
        self.check_storage()?;
        self.steps += 1;
        Ok(())
    }

    fn open_client(&self, conn: u8) -> Option<ConnId> {
        let conn = ConnId(u64::from(conn));
        self.clients
            .get(&conn)
            .is_some_and(|c| !c.closed)
            .then_some(conn)
    }

    fn room_view(&self) -> Option<RoomView> {
        let room = self.host.room()?;
        Some((
            room.presence().map(str::to_owned).collect(),
            room.history_page(None, usize::MAX),
        ))
    }

    fn ensure_resident(&mut self) -> Result<(), Violation> {
        if self.host.is_resident() {
            return Ok(());
        }
        let stored = self.store.list_each(&self.host.config().restore_queries());
        let attachments: Vec<(ConnId, Vec<u8>)> = self
            .clients
            .iter()
            .filter(|(_, c)| !c.closed)
            .map(|(conn, c)| (*conn, c.attachment.clone()))
            .collect();
        let result = self.host.restore(
            &stored,
            attachments.iter().map(|(c, a)| (*c, a.as_slice())),
            self.now,
        );
        if let Err(error) = result {
            return self.violation(format!("restore failed: {error}"));
        }
        if let Some(before) = self.view_before_eviction.take() {
            let after = self.room_view();
            if Some(&before) != after.as_ref() {
                return self.violation(format!(
                    "eviction changed the room: {before:?} became {after:?}"
                ));
            }
        }
        self.drain()
    }

    fn input(&mut self, input: Input) -> Result<(), Violation> {
        self.ensure_resident()?;
        if let Err(error) = self.host.handle_input(input, self.now) {
            return self.violation(format!("room refused an input: {error}"));
        }
        self.drain()
    }

    fn drain(&mut self) -> Result<(), Violation> {
        let mut received: BTreeMap<ConnId, Vec<Frame>> = BTreeMap::new();
        let mut closed_by_room = Vec::new();
        while let Some(output) = self.host.poll_output() {
            match output {
                HostOutput::Room(Output::Send { conn, frame }) => {
                    received.entry(conn).or_default().push(frame);
                }
                HostOutput::Room(Output::Broadcast { recipients, frame }) => {
                    for conn in recipients.iter() {
                        received.entry(*conn).or_default().push(frame.clone());
                    }
                }
                HostOutput::Room(Output::Close { conn, .. }) => {
                    if let Some(client) = self.clients.get_mut(&conn) {
                        client.closed = true;
                    }
                    closed_by_room.push(conn);
                }
                HostOutput::Room(Output::Persist(batch)) => self.uncommitted.push_back(batch),
                HostOutput::Room(Output::SetAttachment { conn, attachment }) => {
                    if let Some(client) = self.clients.get_mut(&conn) {
                        client.attachment = attachment;
                    }
                }
                HostOutput::Room(Output::AskRateLimiter { request, ip }) => {
                    self.questions.push_back((request, ip));
                }
                HostOutput::Room(Output::Published { .. } | Output::Moderated { .. })
                | HostOutput::Hibernated => {}
            }
        }
        for (conn, frames) in received {
            self.receive(conn, frames)?;
        }
        // The socket a room closes then reports itself closed, as a real socket would. A
        // socket closed during restore was never part of the room, so it may be unknown.
        for conn in closed_by_room {
            if let Some(room) = self.host.room_mut(self.now) {
                let _ = room.handle_close(conn, self.now);
            }
        }
        self.check_rosters()
    }

    fn receive(&mut self, conn: ConnId, frames: Vec<Frame>) -> Result<(), Violation> {
        let Some(client) = self.clients.get(&conn) else {
            return self.violation(format!("frame for unknown connection {conn:?}"));
        };
        let mut client = client.clone();
        let mut replay_ends_in_ready = true;
        for frame in &frames {
            let Ok(parsed) = serde_json::from_str::<ServerFrameView>(frame) else {
                return self.violation(format!("unparsable frame {frame}"));
            };
            if parsed.error.is_some() {
                client.frames.push(frame.clone());
                continue;
            }
            if !client.sent_first {
                return self.violation(format!("{conn:?} got {frame} before its first frame"));
            }
            if client.closed {
                return self.violation(format!("{conn:?} got {frame} after it closed"));
            }
            replay_ends_in_ready = parsed.ready.is_some();
            if let Some(name) = parsed.joined {
                client.roster.push(name);
            }
            if let Some(name) = parsed.quit {
                match client.roster.iter().position(|n| *n == name) {
                    Some(index) => {
                        client.roster.remove(index);
                    }
                    None => return self.violation(format!("{conn:?} got quit of absent {name}")),
                }
            }
            if parsed.ready.is_some() {
                if client.ready {
                    return self.violation(format!("{conn:?} got ready twice"));
                }
                client.ready = true;
            }
            if let (Some(id), Some(timestamp)) = (parsed.id, parsed.timestamp) {
                if let Some(last) = client.last_id {
                    if id != last + 1 {
                        return self.violation(format!(
                            "{conn:?} saw id {id} after {last}: a gap or a duplicate"
                        ));
                    }
                }
                client.last_id = Some(id);
                match self.seen.get(&id) {
                    Some((seen, _)) if seen != frame => {
                        return self.violation(format!(
                            "id {id} is {frame} for {conn:?} but {seen} for another client"
                        ));
                    }
                    Some(_) => {}
                    None => {
                        if let Some((_, (_, earlier))) = self.seen.range(..id).next_back() {
                            if *earlier >= timestamp {
                                return self.violation(format!(
                                    "timestamp {timestamp} of id {id} is not after {earlier}"
                                ));
                            }
                        }
                        if let Some((_, (_, later))) = self.seen.range(id + 1..).next() {
                            if *later <= timestamp {
                                return self.violation(format!(
                                    "timestamp {timestamp} of id {id} is not before {later}"
                                ));
                            }
                        }
                        self.seen.insert(id, (frame.clone(), timestamp));
                    }
                }
            }
            client.frames.push(frame.clone());
        }
        // A client that has not seen `ready` may only get its whole join replay at once.
        let was_ready = self.clients[&conn].ready;
        if !was_ready && !replay_ends_in_ready {
            return self.violation(format!("{conn:?} got frames before its join completed"));
        }
        self.clients.insert(conn, client);
        Ok(())
    }

    fn check_rosters(&self) -> Result<(), Violation> {
        let Some(room) = self.host.room() else {
            return Ok(());
        };
        let mut presence: Vec<&str> = room.presence().collect();
        presence.sort_unstable();
        for (conn, client) in &self.clients {
            if client.ready && !client.closed {
                let mut roster: Vec<&str> = client.roster.iter().map(String::as_str).collect();
                roster.sort_unstable();
                if roster != presence {
                    return self.violation(format!(
                        "{conn:?} believes the roster is {roster:?}, the room has {presence:?}"
                    ));
                }
            }
        }
        Ok(())
    }

    fn check_storage(&self) -> Result<(), Violation> {
        let retained = self.host.config().history_retained_max as u64;
        let stored = self.store.list(crate::storage::ListQuery {
            prefix: keys::MESSAGE_PREFIX,
            limit: usize::MAX,
        });
        let ids: Vec<u64> = stored
            .iter()
            .filter_map(|(key, _)| keys::parse_message(key))
            .collect();
        if ids.windows(2).any(|pair| pair[1] != pair[0] + 1) {
            return self.violation(format!("stored ids are not consecutive: {ids:?}"));
        }
        let newest = ids.last().copied().unwrap_or(0);
        let expected_len = newest.min(retained) as usize;
        if ids.len() != expected_len {
            return self.violation(format!(
                "storage holds {} messages, expected the newest {expected_len}",
                ids.len()
            ));
        }
        for (id, (frame, _)) in self.seen.range(newest.saturating_sub(retained) + 1..) {
            match self.store.get(&keys::message(*id)) {
                Some(stored) if stored == frame => {}
                Some(stored) => {
                    return self.violation(format!("id {id} was seen as {frame}, stored {stored}"))
                }
                None => return self.violation(format!("id {id} was seen but is not stored")),
            }
        }
        Ok(())
    }

    fn violation<T>(&self, what: String) -> Result<T, Violation> {
        Err(Violation {
            step: self.steps,
            what,
        })
    }
}
