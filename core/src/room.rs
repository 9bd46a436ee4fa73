//! The chat room: one single-threaded state machine that owns its sessions, orders and
//! stores messages, and decides every frame its connections receive.
//!
//! # Contract
//! After every `handle_*` call (or [`Room::handle_input`]), drain [`Room::poll_output`] until
//! it returns `None` and carry out each [`Output`] in order. A [`Output::Persist`] batch must be
//! committed atomically; when it is durable, call [`Room::handle_durable`]. The room keeps at
//! most one batch in flight and gathers everything accepted meanwhile into the next one, so
//! handling several inputs before polling groups their writes into one commit.
//!
//! # Durability before visibility
//! A chat message is broadcast only after [`Room::handle_durable`] confirms the batch that
//! holds it, so no client ever sees a message that a crash could take back.
//!
//! # Hibernation
//! Everything a session needs survives in its attachment (see [`Output::SetAttachment`]);
//! everything else is in storage. [`Room::restore`] rebuilds an identical room from both.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::auth::Identity;
use crate::limiter::{SessionLimiter, SessionLimiterState, VerdictRequest};
use crate::moderation::Restrictions;
use crate::protocol::{
    self, record_id_and_time, ClientFrame, Expecting, Frame, FrameError, MessageText, SendKey,
    UserName, CLOSE_INTERNAL_ERROR, CLOSE_NAME_TOO_LONG, CLOSE_REASON_STATE_LOST,
    ERROR_NAME_TOO_LONG, ERROR_RATE_LIMITED, ERROR_STORAGE_UNAVAILABLE,
};
use crate::storage::{keys, BatchId, ListQuery, Value, Write, WriteBatch};
use crate::time::Timestamp;

use crate::planted::PlantedBug;

mod auth;
mod dedupe;
mod moderation;
mod pipeline;
mod unavailable;

pub use auth::{RoomAuth, CLOSE_REASON_TOKEN_EXPIRED, CLOSE_TOKEN_EXPIRED};
pub use moderation::{Actor, Member};
pub use pipeline::{PIPELINED_BYTES_MAX, PIPELINED_FRAMES_MAX, PIPELINE_WAIT_MAX_MS};
pub use unavailable::close_after_restore_failure;

use dedupe::RecentKeys;
use moderation::{ChatRecord, MessageChange, PendingState};
use pipeline::{HeldFrames, Incoming};

/// A connection's id, chosen by the adapter and unique within a room for the room's life
/// (including across hibernation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ConnId(pub u64);

/// Correlates an HTTP request (a publish or a moderation action) with its confirmation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublishId(pub u64);

/// Room settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomConfig {
    /// How many of the newest messages the room keeps in storage (and memory) for replay.
    pub history_retained_max: usize,
    /// How many messages a join without `since` replays.
    pub join_replay_max: usize,
    /// The most connections a room holds; more are closed with [`CLOSE_ROOM_FULL`].
    pub connections_max: usize,
    /// The most accepted messages waiting for storage; more are refused with
    /// [`ERROR_ROOM_BUSY`] rather than queued without bound.
    pub pending_messages_max: usize,
    /// Whether the rate limiter can ever make a client wait. `false` when it is configured
    /// never to ([`RateLimiterConfig::never_waits`](crate::limiter::RateLimiterConfig::never_waits)):
    /// then the room asks it nothing at all, and every frame is decided at once.
    pub limiter_may_wait: bool,
    /// The access policy, for checking tokens a connection refreshes (`None`: auth off).
    pub auth: Option<RoomAuth>,
    /// The bug to plant in this room, for the simulator's self-test.
    #[cfg(feature = "planted-bugs")]
    pub planted_bug: Option<PlantedBug>,
}

impl Default for RoomConfig {
    fn default() -> Self {
        RoomConfig {
            history_retained_max: 1_000,
            join_replay_max: 100,
            connections_max: 32_768,
            pending_messages_max: 10_000,
            limiter_may_wait: true,
            auth: None,
            #[cfg(feature = "planted-bugs")]
            planted_bug: None,
        }
    }
}

impl RoomConfig {
    /// The storage reads that [`Room::restore`] needs, answered in this order and passed
    /// to it concatenated: the room's moderation state, then the newest retained messages.
    pub fn restore_queries(&self) -> [ListQuery; 2] {
        [
            ListQuery {
                prefix: keys::ROOM_STATE_PREFIX,
                // Settings, plus every ban and mute.
                limit: crate::moderation::RESTRICTIONS_MAX + 1,
            },
            ListQuery {
                prefix: keys::MESSAGE_PREFIX,
                limit: self.history_retained_max,
            },
        ]
    }

    /// Whether this room runs with `bug` planted (always `false` without `planted-bugs`).
    #[inline(always)]
    fn planted(&self, bug: PlantedBug) -> bool {
        #[cfg(feature = "planted-bugs")]
        return self.planted_bug == Some(bug);
        #[cfg(not(feature = "planted-bugs"))]
        {
            let _ = bug;
            false
        }
    }
}

/// Close code for a connection beyond [`RoomConfig::connections_max`] ("try again later").
pub const CLOSE_ROOM_FULL: u16 = 1013;
/// Close reason for a connection beyond [`RoomConfig::connections_max`].
pub const CLOSE_REASON_ROOM_FULL: &str = "Room is full.";
/// The error text when more than [`RoomConfig::pending_messages_max`] messages wait for storage.
pub const ERROR_ROOM_BUSY: &str = "Room is busy, please try again later.";

/// Something the adapter must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send `frame` to one connection.
    Send {
        /// The recipient.
        conn: ConnId,
        /// The frame.
        frame: Frame,
    },
    /// Send one frame, serialized once, to every connection in `recipients`.
    Broadcast {
        /// Every joined connection, in roster order; shared until the roster changes.
        recipients: Arc<[ConnId]>,
        /// The frame.
        frame: Frame,
    },
    /// Close a connection (after sending what was queued before this output).
    Close {
        /// The connection.
        conn: ConnId,
        /// The WebSocket close code.
        code: u16,
        /// The close reason.
        reason: &'static str,
    },
    /// Commit these writes atomically, then call [`Room::handle_durable`] with the batch id.
    Persist(WriteBatch),
    /// Store this as the connection's attachment, replacing the previous one.
    SetAttachment {
        /// The connection.
        conn: ConnId,
        /// The encoded attachment (versioned postcard, well under 2 KiB).
        attachment: Vec<u8>,
    },
    /// Count one action against `ip`'s rate limiter and answer with
    /// [`Room::handle_rate_limit_verdict`].
    AskRateLimiter {
        /// Echo this back with the answer.
        request: VerdictRequest,
        /// Whose limiter.
        ip: IpAddr,
    },
    /// A published message is durable and broadcast with this id.
    Published {
        /// The publish this confirms.
        request: PublishId,
        /// The message's id.
        id: u64,
    },
    /// A moderation action of the admin API ([`Room::handle_moderate`]) is done: durable
    /// and in force.
    Moderated {
        /// The request this confirms.
        request: PublishId,
    },
}

/// Caller misuse: an input that cannot happen if the adapter follows the contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RoomError {
    /// The connection is not in this room (never opened, or already closed).
    #[error("unknown connection {0:?}")]
    UnknownConnection(ConnId),
    /// The connection id is already in use.
    #[error("connection {0:?} is already open")]
    DuplicateConnection(ConnId),
    /// A durability confirmation for a batch that is not in flight.
    #[error("batch {0:?} is not in flight")]
    UnknownBatch(BatchId),
}

/// Why a publish was refused. The `Display` text is meant for the HTTP caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The name is not a [`UserName`] (empty or too long).
    #[error("Name must be 1 to 32 characters.")]
    BadName,
    /// The message is not a [`MessageText`] (too long).
    #[error("Message too long.")]
    MessageTooLong,
    /// Too many messages are waiting for storage.
    #[error("Room is busy, please try again later.")]
    Busy,
    /// The write that held the message failed: it was not stored and nobody received it
    /// (the text is [`ERROR_STORAGE_UNAVAILABLE`]).
    #[error("Message not sent: storage unavailable.")]
    StorageUnavailable,
}

/// Why stored state could not be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    /// A stored message record does not decode, or its id disagrees with its key.
    #[error("corrupt message record at key {key:?}")]
    CorruptRecord {
        /// The record's key.
        key: String,
    },
    /// A moderation record (`room/…`) does not decode.
    #[error("corrupt moderation record at key {key:?}")]
    CorruptState {
        /// The record's key.
        key: String,
    },
    /// Stored message ids are not consecutive.
    #[error("message ids are not consecutive at key {key:?}")]
    Gap {
        /// The key after the gap.
        key: String,
    },
}

/// One input, as an owned value (for drivers that queue inputs, such as the simulator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A WebSocket connection was accepted; see [`Room::handle_connect`].
    Connect {
        /// Its id.
        conn: ConnId,
        /// The client's IP, whose limiter it shares.
        ip: IpAddr,
    },
    /// A text frame; see [`Room::handle_text`].
    Text {
        /// From whom.
        conn: ConnId,
        /// The frame.
        text: String,
    },
    /// A binary frame; see [`Room::handle_binary`].
    Binary {
        /// From whom.
        conn: ConnId,
    },
    /// The connection closed or broke; see [`Room::handle_close`].
    Closed {
        /// Which.
        conn: ConnId,
    },
    /// A limiter's answer; see [`Room::handle_rate_limit_verdict`].
    Verdict {
        /// The question answered.
        request: VerdictRequest,
        /// How long the session must wait.
        wait_ms: u64,
    },
    /// A batch is durable; see [`Room::handle_durable`].
    Durable {
        /// Which.
        batch: BatchId,
    },
    /// Publish a message as a named system user; see [`Room::handle_publish`].
    Publish {
        /// Correlates the confirmation.
        request: PublishId,
        /// The sender's name.
        name: String,
        /// The text.
        message: String,
    },
}

/// A durable message in the room's retained history.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StoredMessage {
    id: u64,
    timestamp: Timestamp,
    frame: Frame,
}

/// A record accepted but not yet durable: a message, or a change that takes the next id.
#[derive(Debug, Clone)]
struct PendingMessage {
    message: StoredMessage,
    /// The connection that sent it (`None` for a publish or a change).
    sender: Option<ConnId>,
    /// Other connections that sent it again with the same key while it waited; they hear
    /// if its write fails (see `dedupe`).
    duplicate_senders: Vec<ConnId>,
    publish: Option<PublishId>,
    /// The admin request that made this change.
    moderation: Option<PublishId>,
    /// What the record changes in an earlier message (a deletion or an edit).
    change: Option<MessageChange>,
}

/// Something waiting for storage, in the order it was accepted.
#[derive(Debug, Clone)]
enum PendingEntry {
    /// A record with an id.
    Message(PendingMessage),
    /// A ban, a mute or new settings.
    State(PendingState),
}

impl PendingEntry {
    /// The admin or publish request answered when it settles.
    fn request(&self) -> Option<PublishId> {
        match self {
            PendingEntry::Message(pending) => pending.publish.or(pending.moderation),
            PendingEntry::State(state) => state.request,
        }
    }
}

/// A session's lifecycle.
///
/// ```text
///   connect ──► Unnamed ──join frame, name ok──► Joined ──socket closes──► (gone, quit)
///                  │                                          
///                  └──name too long──► Closing ──socket closes──► (gone)
/// ```
/// An unnamed session keeps only the last durable id it could have seen when it connected,
/// so its join replay is the same whenever (and after however many evictions) it joins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Phase {
    Unnamed { connect_last_id: u64 },
    Joined { name: UserName },
    Closing,
}

#[derive(Debug, Clone)]
struct Session {
    ip: IpAddr,
    phase: Phase,
    limiter: SessionLimiter,
    /// `{"joined": name}`, serialized once for the roster replays of later joiners.
    joined_frame: Option<Frame>,
    /// Who the token says this is; `None` for an anonymous client.
    identity: Option<Identity>,
    /// Frames that arrived while the limiter's answer was outstanding, oldest first.
    held: HeldFrames,
}

/// The version of [`Attachment`]'s encoding; bump on any change and keep decoding old ones.
const ATTACHMENT_VERSION: u8 = 2;

/// What survives hibernation for one connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Attachment {
    version: u8,
    ip: IpAddr,
    phase: Phase,
    limiter: SessionLimiter,
    /// Since version 2; version 1 attachments restore as anonymous.
    identity: Option<Identity>,
}

/// Version 1 of [`Attachment`] (before identities), still restored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct AttachmentV1 {
    version: u8,
    ip: IpAddr,
    phase: Phase,
    limiter: SessionLimiter,
}

/// How many of the newest outputs not yet taken are searched for an attachment to replace
/// (see `Room::push_attachment`): enough for a verdict and the next question, bounded so
/// that a long output queue is never scanned.
const ATTACHMENT_COALESCE_LOOKBACK: usize = 4;

/// Largest encoded attachment the room produces (Workers allow 16 KiB; we stay far below).
pub const ATTACHMENT_LEN_MAX_BYTES: usize = 2 * 1024;

/// Why an attachment did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AttachmentError {
    /// Not a postcard-encoded attachment.
    #[error("attachment does not decode")]
    Malformed,
    /// Written by a newer version of edgechat.
    #[error("unsupported attachment version {0}")]
    Version(u8),
    /// Longer than [`ATTACHMENT_LEN_MAX_BYTES`].
    #[error("attachment too long")]
    TooLong,
}

impl Attachment {
    fn encode(&self) -> Vec<u8> {
        let bytes = postcard::to_allocvec(self).expect("attachments always serialize");
        debug_assert!(bytes.len() <= ATTACHMENT_LEN_MAX_BYTES);
        bytes
    }

    fn decode(bytes: &[u8]) -> Result<Attachment, AttachmentError> {
        if bytes.len() > ATTACHMENT_LEN_MAX_BYTES {
            return Err(AttachmentError::TooLong);
        }
        // A joined name is a `UserName`, so decoding checks its length rule again.
        match bytes.first() {
            Some(&ATTACHMENT_VERSION) => {
                postcard::from_bytes(bytes).map_err(|_| AttachmentError::Malformed)
            }
            Some(1) => {
                let old: AttachmentV1 =
                    postcard::from_bytes(bytes).map_err(|_| AttachmentError::Malformed)?;
                Ok(Attachment {
                    version: ATTACHMENT_VERSION,
                    ip: old.ip,
                    phase: old.phase,
                    limiter: old.limiter,
                    identity: None,
                })
            }
            Some(&other) => Err(AttachmentError::Version(other)),
            None => Err(AttachmentError::Malformed),
        }
    }
}

/// Checks that `bytes` is an attachment this version can restore.
///
/// # Errors
/// Returns why it cannot (used by fuzzing and by adapters that validate early).
pub fn validate_attachment(bytes: &[u8]) -> Result<(), AttachmentError> {
    Attachment::decode(bytes).map(|_| ())
}

/// What a room has done since its stats were last taken, for an adapter's metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoomStats {
    /// Chat messages (including publishes) that became durable and were broadcast.
    pub messages_durable: u64,
    /// Frames refused because the session's rate limiter held it back.
    pub frames_rate_limited: u64,
    /// Accepted messages (including publishes) refused because their write failed
    /// ([`Room::handle_write_failed`]): never stored, never broadcast.
    pub messages_refused_storage: u64,
}

/// A batch handed to storage and not yet confirmed.
#[derive(Debug, Clone)]
struct InFlight {
    batch: BatchId,
    entries: Vec<PendingEntry>,
    /// The lowest message id storage may hold once this batch is durable.
    stored_from: u64,
}

/// A chat room. See the [module documentation](self) for the contract.
#[derive(Debug)]
pub struct Room {
    config: RoomConfig,
    /// Boxed: a map's node holds 11 entries, so a room with one session would otherwise
    /// carry room for 11 whole sessions (about 2 KB) while it is resident.
    sessions: BTreeMap<ConnId, Box<Session>>,
    /// Joined connections in roster order; `None` after the roster changed.
    roster_cache: Option<Arc<[ConnId]>>,
    /// Durable, broadcast messages, oldest first; consecutive ids.
    history: VecDeque<StoredMessage>,
    /// The last id assigned (durable or not).
    last_id: u64,
    /// The last id whose batch is durable (and so broadcast).
    durable_id: u64,
    /// The last timestamp assigned (durable or not).
    last_timestamp: Timestamp,
    /// Accepted, waiting for the next batch.
    pending: Vec<PendingEntry>,
    /// The lowest message id storage may still hold (older ones were deleted).
    stored_from: u64,
    /// Bans, mutes and the room's settings, as durable.
    restrictions: Restrictions,
    in_flight: Option<InFlight>,
    next_batch: u64,
    outputs: VecDeque<Output>,
    stats: RoomStats,
    /// Connections with held frames (see [`PIPELINED_FRAMES_MAX`]), for the timeout that
    /// releases them when a limiter's answer is lost.
    held_conns: BTreeSet<ConnId>,
    /// The idempotency keys of retained and waiting messages.
    recent_keys: RecentKeys,
}

impl Room {
    /// A new, empty room.
    pub fn new(config: RoomConfig) -> Room {
        Room {
            config,
            sessions: BTreeMap::new(),
            roster_cache: None,
            history: VecDeque::new(),
            last_id: 0,
            durable_id: 0,
            last_timestamp: Timestamp::ZERO,
            pending: Vec::new(),
            stored_from: 1,
            restrictions: Restrictions::default(),
            in_flight: None,
            next_batch: 1,
            outputs: VecDeque::new(),
            stats: RoomStats::default(),
            held_conns: BTreeSet::new(),
            recent_keys: RecentKeys::default(),
        }
    }

    /// Rebuilds a room after eviction or a crash.
    ///
    /// `stored` is the answer to [`RoomConfig::restore_queries`], in ascending key order.
    /// `attachments` are the open connections with their last attachment (none after a
    /// crash). A connection whose attachment cannot be decoded is closed with
    /// [`CLOSE_INTERNAL_ERROR`] (in the outputs), since its session cannot be trusted.
    ///
    /// # Errors
    /// Returns [`RestoreError`] if the stored history is corrupt.
    pub fn restore<'a>(
        config: RoomConfig,
        stored: &[(String, Value)],
        attachments: impl IntoIterator<Item = (ConnId, &'a [u8])>,
    ) -> Result<Room, RestoreError> {
        let mut room = Room::new(config);
        for (key, value) in stored {
            if key.starts_with(keys::ROOM_STATE_PREFIX) {
                room.restore_state(key, value)
                    .map_err(|()| RestoreError::CorruptState { key: key.clone() })?;
                continue;
            }
            let corrupt = || RestoreError::CorruptRecord { key: key.clone() };
            let id = keys::parse_message(key).ok_or_else(corrupt)?;
            let (record_id, timestamp) = record_id_and_time(value).ok_or_else(corrupt)?;
            // Ids start at 1, and a record must leave room for a successor: id 0 would slip
            // past the gap check below, and id or timestamp `u64::MAX` would make the next
            // message overflow its id or repeat its timestamp (found by fuzzing).
            if record_id != id || id == 0 || id == u64::MAX || timestamp == Timestamp(u64::MAX) {
                return Err(corrupt());
            }
            if room.last_id != 0 && id != room.last_id + 1 {
                return Err(RestoreError::Gap { key: key.clone() });
            }
            room.last_id = id;
            room.durable_id = id;
            room.last_timestamp = room.last_timestamp.max(timestamp);
            room.restore_key(id, value);
            room.history.push_back(StoredMessage {
                id,
                timestamp,
                frame: value.clone(),
            });
        }
        room.stored_from = room.history.front().map_or(1, |message| message.id);
        // The settings may keep fewer messages than were read (by age: see `RoomHost::restore`).
        room.trim_history(Timestamp::ZERO);
        let forget_first = room.config.planted(PlantedBug::RestoreForgetsAttachment);
        for (index, (conn, bytes)) in attachments.into_iter().enumerate() {
            if forget_first && index == 0 {
                continue;
            }
            match Attachment::decode(bytes) {
                Ok(attachment) => {
                    let mut limiter = attachment.limiter;
                    if room.config.planted(PlantedBug::LimiterResetOnRestore) {
                        limiter.state = SessionLimiterState::Idle;
                    }
                    let phase = match attachment.phase {
                        // Storage can only have moved forward since the attachment was written.
                        Phase::Unnamed { connect_last_id } => Phase::Unnamed {
                            connect_last_id: connect_last_id.min(room.last_id),
                        },
                        phase => phase,
                    };
                    let joined_frame = match &phase {
                        Phase::Joined { name } => Some(protocol::encode_joined(name.as_str())),
                        _ => None,
                    };
                    room.sessions.insert(
                        conn,
                        Box::new(Session {
                            ip: attachment.ip,
                            phase,
                            limiter,
                            joined_frame,
                            identity: attachment.identity,
                            held: HeldFrames::default(),
                        }),
                    );
                }
                Err(_) => room.outputs.push_back(Output::Close {
                    conn,
                    code: CLOSE_INTERNAL_ERROR,
                    reason: CLOSE_REASON_STATE_LOST,
                }),
            }
        }
        Ok(room)
    }

    /// Handles any [`Input`].
    ///
    /// # Errors
    /// As the specific `handle_*` method.
    pub fn handle_input(&mut self, input: Input, now: Timestamp) -> Result<(), RoomError> {
        match input {
            Input::Connect { conn, ip } => self.handle_connect(conn, ip, now),
            Input::Text { conn, text } => self.handle_text(conn, &text, now),
            Input::Binary { conn } => self.handle_binary(conn, now),
            Input::Closed { conn } => self.handle_close(conn, now),
            Input::Verdict { request, wait_ms } => {
                self.handle_rate_limit_verdict(request, wait_ms, now);
                Ok(())
            }
            Input::Durable { batch } => self.handle_durable(batch, now),
            Input::Publish {
                request,
                name,
                message,
            } => {
                // A refused publish has no effect; the caller of `handle_publish` sees why.
                let _ = self.handle_publish(request, &name, &message, now);
                Ok(())
            }
        }
    }

    /// A WebSocket was accepted. Nothing is sent until the client's first frame.
    ///
    /// # Errors
    /// [`RoomError::DuplicateConnection`] if `conn` is already open.
    pub fn handle_connect(
        &mut self,
        conn: ConnId,
        ip: IpAddr,
        now: Timestamp,
    ) -> Result<(), RoomError> {
        if self.sessions.contains_key(&conn) {
            return Err(RoomError::DuplicateConnection(conn));
        }
        if self.sessions.len() >= self.config.connections_max {
            self.outputs.push_back(Output::Close {
                conn,
                code: CLOSE_ROOM_FULL,
                reason: CLOSE_REASON_ROOM_FULL,
            });
            return Ok(());
        }
        let session = Session {
            ip,
            phase: Phase::Unnamed {
                connect_last_id: self.last_durable_id(),
            },
            limiter: SessionLimiter::default(),
            joined_frame: None,
            identity: None,
            held: HeldFrames::default(),
        };
        self.sessions.insert(conn, Box::new(session));
        self.push_attachment(conn);
        self.refuse_banned_ip(conn, ip, now);
        Ok(())
    }

    /// A text frame arrived from `conn`.
    ///
    /// # Errors
    /// [`RoomError::UnknownConnection`] if `conn` is not open.
    pub fn handle_text(
        &mut self,
        conn: ConnId,
        text: &str,
        now: Timestamp,
    ) -> Result<(), RoomError> {
        self.receive_frame(conn, Incoming::Text(text), now)
    }

    /// Decodes and acts on a text frame the limiter let through.
    fn process_text(&mut self, conn: ConnId, expecting: Expecting, text: &str, now: Timestamp) {
        if self.handle_token_frame(conn, text, now) {
            return;
        }
        if expecting == Expecting::Message && self.handle_moderation_frame(conn, text, now) {
            return;
        }
        match protocol::decode_client_frame(text, expecting) {
            Ok(ClientFrame::Join { name, since }) => self.join(conn, name, since, now),
            Ok(ClientFrame::Message { text, key }) => self.chat(conn, text, key, now),
            Err(FrameError::NameTooLong) => self.refuse_name(conn),
            Err(error) => self.send_error(conn, &error.to_string()),
        }
    }

    /// A binary frame arrived from `conn`; the protocol is text, so it is answered with an
    /// error (and still counts against the rate limit, like any frame).
    ///
    /// # Errors
    /// [`RoomError::UnknownConnection`] if `conn` is not open.
    pub fn handle_binary(&mut self, conn: ConnId, now: Timestamp) -> Result<(), RoomError> {
        self.receive_frame(conn, Incoming::Binary, now)
    }

    /// `conn` closed or broke. A joined user's `quit` is broadcast to the others.
    ///
    /// # Errors
    /// [`RoomError::UnknownConnection`] if `conn` is not open.
    pub fn handle_close(&mut self, conn: ConnId, _now: Timestamp) -> Result<(), RoomError> {
        let session = self
            .sessions
            .remove(&conn)
            .ok_or(RoomError::UnknownConnection(conn))?;
        self.held_conns.remove(&conn);
        if let Phase::Joined { name } = session.phase {
            self.roster_cache = None;
            let frame = protocol::encode_quit(&name);
            self.broadcast(frame);
        }
        Ok(())
    }

    /// A limiter answered question `request`: the session must wait `wait_ms`. Answers for
    /// closed connections or stale questions are ignored (they are normal races).
    pub fn handle_rate_limit_verdict(
        &mut self,
        request: VerdictRequest,
        wait_ms: u64,
        now: Timestamp,
    ) {
        let changed = self
            .sessions
            .get_mut(&request.conn)
            .is_some_and(|session| session.limiter.handle_verdict(request.seq, wait_ms, now));
        if changed {
            self.push_attachment(request.conn);
            self.release_held(request.conn, now);
        }
    }

    /// The batch `batch` is durable: its messages become history and are broadcast.
    ///
    /// # Errors
    /// [`RoomError::UnknownBatch`] unless `batch` is the batch in flight.
    pub fn handle_durable(&mut self, batch: BatchId, now: Timestamp) -> Result<(), RoomError> {
        match &self.in_flight {
            Some(in_flight) if in_flight.batch == batch => {}
            _ => return Err(RoomError::UnknownBatch(batch)),
        }
        let in_flight = self.in_flight.take().expect("checked above");
        self.stored_from = in_flight.stored_from;
        let broadcast_now = !self.config.planted(PlantedBug::BroadcastBeforeDurable);
        for entry in in_flight.entries {
            let pending = match entry {
                PendingEntry::Message(pending) => pending,
                PendingEntry::State(state) => {
                    self.apply_state(state.effect, now);
                    if let Some(request) = state.request {
                        self.outputs.push_back(Output::Moderated { request });
                    }
                    continue;
                }
            };
            let message = pending.message;
            if let Some(change) = pending.change {
                self.apply_message_change(change);
            } else {
                self.stats.messages_durable += 1;
            }
            if broadcast_now {
                self.broadcast(message.frame.clone());
            }
            if let Some(request) = pending.publish {
                self.outputs.push_back(Output::Published {
                    request,
                    id: message.id,
                });
            }
            if let Some(request) = pending.moderation {
                self.outputs.push_back(Output::Moderated { request });
            }
            self.durable_id = message.id;
            self.history.push_back(message);
        }
        self.trim_history(now);
        Ok(())
    }

    /// The batch `batch` could not be committed, so none of its writes happened: its
    /// messages, and those accepted after them, do not exist. Each sender still connected
    /// gets [`ERROR_STORAGE_UNAVAILABLE`]; nothing is broadcast; the next message takes the
    /// first id that failed, as it would after a restore. Returns the publishes that failed,
    /// and moderation requests that failed (nothing of them changed), in order, for the
    /// adapter to answer.
    ///
    /// # Errors
    /// [`RoomError::UnknownBatch`] unless `batch` is the batch in flight.
    pub fn handle_write_failed(
        &mut self,
        batch: BatchId,
        _now: Timestamp,
    ) -> Result<Vec<PublishId>, RoomError> {
        match &self.in_flight {
            Some(in_flight) if in_flight.batch == batch => {}
            _ => return Err(RoomError::UnknownBatch(batch)),
        }
        let in_flight = self.in_flight.take().expect("checked above");
        let pending = std::mem::take(&mut self.pending);
        if self.config.planted(PlantedBug::FailedBatchLandsLater) {
            // Tells the senders, yet keeps the messages for the next batch.
            self.pending = in_flight.entries.iter().chain(&pending).cloned().collect();
        }
        let mut failed_publishes = Vec::new();
        for entry in in_flight.entries.into_iter().chain(pending) {
            failed_publishes.extend(entry.request());
            let PendingEntry::Message(message) = entry else {
                continue;
            };
            if message.change.is_none() {
                self.stats.messages_refused_storage += 1;
            }
            for conn in message.sender.iter().chain(&message.duplicate_senders) {
                if self.sessions.contains_key(conn)
                    && !self.config.planted(PlantedBug::FailedWriteSilent)
                {
                    self.send_error(*conn, ERROR_STORAGE_UNAVAILABLE);
                }
            }
        }
        // None of the failed messages exists, so a retry with the same key is a new message.
        self.recent_keys.forget_from(self.durable_id + 1);
        if self.config.planted(PlantedBug::FailedWriteReusesDurableId) {
            self.last_id = self.durable_id.saturating_sub(1);
        } else if !self.config.planted(PlantedBug::FailedBatchLandsLater)
            && !self.config.planted(PlantedBug::FailedWriteSkipsIds)
        {
            self.last_id = self.durable_id;
        }
        if self.config.planted(PlantedBug::FailedWriteStalls) {
            // Still waits for the batch that failed, so never starts another.
            self.in_flight = Some(InFlight {
                batch,
                entries: Vec::new(),
                stored_from: self.stored_from,
            });
        }
        Ok(failed_publishes)
    }

    /// Publishes `message` as `name` (an operator's system user, not rate limited). It is
    /// broadcast once durable, and [`Output::Published`] reports its id.
    ///
    /// # Errors
    /// [`PublishError`] if the name or message is out of bounds or the room is too busy.
    pub fn handle_publish(
        &mut self,
        request: PublishId,
        name: &str,
        message: &str,
        now: Timestamp,
    ) -> Result<(), PublishError> {
        let name = UserName::parse(name).map_err(|_| PublishError::BadName)?;
        let message = MessageText::parse(message).map_err(|_| PublishError::MessageTooLong)?;
        self.handle_publish_checked(request, name, message, now)
    }

    /// [`Room::handle_publish`] for a name and message already checked (as
    /// [`PublishBody::parse`](crate::http::PublishBody::parse) returns them).
    ///
    /// # Errors
    /// [`PublishError::Busy`] if too many messages wait for storage.
    pub fn handle_publish_checked(
        &mut self,
        request: PublishId,
        name: UserName,
        message: MessageText,
        now: Timestamp,
    ) -> Result<(), PublishError> {
        if self.pending_len() >= self.config.pending_messages_max {
            return Err(PublishError::Busy);
        }
        self.accept_message(name.into(), message.into(), None, now, None, Some(request));
        Ok(())
    }

    /// The next thing to do, if any. A pending [`Output::Persist`] comes last, so that every
    /// message accepted since the previous poll lands in the same batch.
    pub fn poll_output(&mut self) -> Option<Output> {
        if let Some(output) = self.outputs.pop_front() {
            return Some(output);
        }
        if self.in_flight.is_none() && !self.pending.is_empty() {
            return Some(self.start_batch());
        }
        None
    }

    /// Like [`Room::poll_output`], but never starts a batch. For an adapter that carries out
    /// outputs between the inputs of one turn (a limiter in its own process then answers
    /// each question before the connection's next frame is decided) and drains
    /// [`Room::poll_output`] at the turn's end, so that the turn's messages still share one
    /// batch.
    pub fn poll_output_within_turn(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Names of joined users, in roster order.
    pub fn presence(&self) -> impl Iterator<Item = &str> {
        self.sessions
            .values()
            .filter_map(|session| match &session.phase {
                Phase::Joined { name } => Some(name.as_str()),
                _ => None,
            })
    }

    /// Up to `limit` retained messages with ids below `before` (all if `None`), newest first.
    pub fn history_page(&self, before: Option<u64>, limit: usize) -> Vec<Frame> {
        let before = before.unwrap_or(u64::MAX);
        self.history
            .iter()
            .rev()
            .filter(|message| message.id < before)
            .take(limit)
            .map(|message| message.frame.clone())
            .collect()
    }

    /// The id of the newest durable message (0 if none).
    pub fn last_durable_id(&self) -> u64 {
        self.durable_id
    }

    /// Open connections, named or not.
    pub fn connection_count(&self) -> usize {
        self.sessions.len()
    }

    /// Whether nothing waits for storage or for a limiter's answer: the room can be evicted
    /// without losing work (held frames live only in memory).
    pub fn is_quiescent(&self) -> bool {
        self.in_flight.is_none()
            && self.pending.is_empty()
            && self.outputs.is_empty()
            && self.held_conns.is_empty()
    }

    /// What the room has done since the last call, resetting the counts.
    pub fn take_stats(&mut self) -> RoomStats {
        std::mem::take(&mut self.stats)
    }

    /// The room's settings.
    pub fn config(&self) -> &RoomConfig {
        &self.config
    }

    /// Checks the connection and its rate limit; `Some(expecting)` if the frame is to be
    /// processed (and one action has been asked of the limiter).
    fn admit_frame(
        &mut self,
        conn: ConnId,
        now: Timestamp,
    ) -> Result<Option<Expecting>, RoomError> {
        let session = self
            .sessions
            .get_mut(&conn)
            .ok_or(RoomError::UnknownConnection(conn))?;
        let expecting = match session.phase {
            Phase::Unnamed { .. } => Expecting::Join,
            Phase::Joined { .. } => Expecting::Message,
            // The socket is closing; anything still in flight from it is moot.
            Phase::Closing => return Ok(None),
        };
        if !self.config.limiter_may_wait {
            return Ok(Some(expecting));
        }
        // Planted: a cooldown holds the session back 1 s longer than its limiter said.
        let overrun = self.config.planted(PlantedBug::CooldownOverrun)
            && matches!(session.limiter.state,
                crate::limiter::SessionLimiterState::Cooldown { until }
                    if now >= until && now < until.plus_millis(1_000));
        if overrun || !session.limiter.try_accept(now) {
            self.stats.frames_rate_limited += 1;
            self.send_error(conn, ERROR_RATE_LIMITED);
            return Ok(None);
        }
        let request = VerdictRequest {
            conn,
            seq: session.limiter.seq,
        };
        let ip = session.ip;
        self.outputs
            .push_back(Output::AskRateLimiter { request, ip });
        self.push_attachment(conn);
        Ok(Some(expecting))
    }

    /// A join whose name is too long: the error, then the close (the demo's behaviour).
    fn refuse_name(&mut self, conn: ConnId) {
        self.send_error(conn, ERROR_NAME_TOO_LONG);
        self.outputs.push_back(Output::Close {
            conn,
            code: CLOSE_NAME_TOO_LONG,
            reason: ERROR_NAME_TOO_LONG,
        });
        self.set_phase(conn, Phase::Closing);
    }

    fn join(&mut self, conn: ConnId, name: UserName, since: Option<u64>, now: Timestamp) {
        let Some(Phase::Unnamed { connect_last_id }) =
            self.sessions.get(&conn).map(|s| s.phase.clone())
        else {
            unreachable!("join is only decoded for unnamed sessions");
        };
        // A verified user is called what its token says, whatever it asked for.
        let name = match self.identity(conn) {
            Some(identity) if !self.config.planted(PlantedBug::TokenNameIgnored) => {
                identity.name.clone()
            }
            _ => name,
        };
        let user = self
            .identity(conn)
            .map_or_else(|| name.to_string(), |identity| identity.sub.clone());
        if self.refuse_join(conn, &user, now) {
            return;
        }
        self.trim_history(now);

        // 1. One `joined` per user already in the room.
        let roster: Vec<Frame> = self
            .sessions
            .values()
            .filter_map(|session| session.joined_frame.clone())
            .collect();
        for frame in roster {
            self.send(conn, frame);
        }

        // 2. History: everything after `since` if the room still holds it, otherwise the
        //    newest messages as of connecting plus everything broadcast since.
        let (replay_after, recovered) = match since {
            Some(since) if self.holds_everything_after(since) => (since, Some(true)),
            Some(_) => (self.default_replay_after(connect_last_id), Some(false)),
            None => (self.default_replay_after(connect_last_id), None),
        };
        let replay_after = if self.config.planted(PlantedBug::SinceReplayDuplicate) {
            replay_after.saturating_sub(1)
        } else {
            replay_after
        };
        let replay: Vec<Frame> = self
            .history
            .iter()
            .filter(|message| message.id > replay_after)
            .map(|message| message.frame.clone())
            .collect();
        for frame in replay {
            self.send(conn, frame);
        }

        // 3. Its own `joined`, to everyone including itself; 4. ready.
        let joined_frame = protocol::encode_joined(name.as_str());
        if let Some(session) = self.sessions.get_mut(&conn) {
            session.joined_frame = Some(joined_frame.clone());
        }
        self.set_phase(conn, Phase::Joined { name });
        self.roster_cache = None;
        self.broadcast(joined_frame);
        // 5. The topic, if the room has one (an extension the demo's page ignores); 6. ready.
        if let Some(topic) = &self.restrictions.settings.topic {
            let frame = crate::moderation::encode_topic(Some(topic));
            self.send(conn, frame);
        }
        self.send(conn, protocol::encode_ready(recovered));
    }

    fn chat(&mut self, conn: ConnId, text: MessageText, key: Option<SendKey>, now: Timestamp) {
        if !self.check_send(conn) || !self.check_restrictions(conn, now) {
            return;
        }
        if key
            .as_ref()
            .is_some_and(|key| self.answer_duplicate(conn, key))
        {
            return;
        }
        // Planted: the room answers "busy" whenever a write is in flight.
        let busy = self.config.planted(PlantedBug::BusyWhileWriting) && self.in_flight.is_some();
        if busy || self.pending_len() >= self.config.pending_messages_max {
            self.send_error(conn, ERROR_ROOM_BUSY);
            return;
        }
        let Some(Phase::Joined { name }) = self.sessions.get(&conn).map(|s| &s.phase) else {
            unreachable!("messages are only decoded for joined sessions");
        };
        let name = name.as_str().to_owned();
        let key_text = key.as_ref().map(|key| key.as_str().to_owned());
        self.accept_message(name, text.into(), key_text, now, Some(conn), None);
        if let Some(key) = key {
            self.remember_key(conn, key, self.last_id);
        }
    }

    /// Orders a message (id and timestamp) and queues it for the next batch.
    fn accept_message(
        &mut self,
        name: String,
        message: String,
        key: Option<String>,
        now: Timestamp,
        sender: Option<ConnId>,
        publish: Option<PublishId>,
    ) {
        let timestamp = self.next_timestamp(now);
        self.last_id += 1;
        let record = ChatRecord {
            name,
            message,
            timestamp,
            id: self.last_id,
            user: None,
            key,
            edited: false,
        };
        let frame = self.chat_record(sender, record);
        if self.config.planted(PlantedBug::BroadcastBeforeDurable) {
            self.broadcast(frame.clone());
        }
        self.pending.push(PendingEntry::Message(PendingMessage {
            message: StoredMessage {
                id: self.last_id,
                timestamp,
                frame,
            },
            sender,
            duplicate_senders: Vec::new(),
            publish,
            moderation: None,
            change: None,
        }));
    }

    /// The next record's timestamp.
    fn next_timestamp(&mut self, now: Timestamp) -> Timestamp {
        let timestamp = if self.config.planted(PlantedBug::TimestampNotClamped) {
            now
        } else {
            // Strictly increasing under any clock: a clock stepping back cannot reorder.
            now.max(self.last_timestamp.plus_millis(1))
        };
        self.last_timestamp = timestamp;
        timestamp
    }

    fn start_batch(&mut self) -> Output {
        let mut entries = std::mem::take(&mut self.pending);
        let retained: Vec<&StoredMessage> = self.history.iter().collect();
        Room::change_writes(&mut entries, &retained);
        let mut writes = Vec::with_capacity(entries.len() * 2);
        for entry in &entries {
            match entry {
                PendingEntry::Message(pending) => {
                    writes.push(Write::Put {
                        key: keys::message(pending.message.id),
                        value: pending.message.frame.clone(),
                    });
                    if let Some(change) = &pending.change {
                        let keeps_text = change.deletes
                            && self.config.planted(PlantedBug::DeleteKeepsStoredText);
                        let rewrites = change.rewrites.iter();
                        for (id, frame) in
                            rewrites.chain([&(change.target, change.target_frame.clone())])
                        {
                            if keeps_text && *id == change.target {
                                continue;
                            }
                            writes.push(Write::Put {
                                key: keys::message(*id),
                                value: frame.clone(),
                            });
                        }
                    }
                }
                PendingEntry::State(state) => writes.extend(state.writes.iter().cloned()),
            }
        }
        // After this batch storage keeps at most the retained count of the newest records,
        // and none the room's settings trimmed from memory: everything below falls off (a
        // rewrite of such a record above is undone by its delete, which comes later).
        let last_id = self.last_id.max(self.durable_id);
        let count_max = self
            .restrictions
            .settings
            .history_max
            .map_or(usize::MAX, |max| max as usize)
            .min(self.config.history_retained_max) as u64;
        let mut stored_from = self
            .stored_from
            .max((last_id + 1).saturating_sub(count_max))
            .max(
                self.history
                    .front()
                    .map_or(self.durable_id + 1, |message| message.id),
            );
        // A rewrite of a record that an earlier batch already trimmed (the change was
        // accepted while that batch was in flight) must not bring its key back; one trimmed
        // by this batch is undone by the deletes below.
        let trimmed_before = self.stored_from;
        writes.retain(|write| match write {
            Write::Put { key, .. } => {
                keys::parse_message(key).is_none_or(|id| id >= trimmed_before)
            }
            Write::Delete { .. } => true,
        });
        // Storage keeps the newest record even when the room's age limit dropped it from
        // memory: it is how a restore knows where ids stand (with no record left, ids would
        // start from 1 again, reusing acknowledged ones). The restore trims it again.
        if last_id > 0 {
            stored_from = stored_from.min(last_id);
        }
        if self.config.planted(PlantedBug::HistoryTrimOffByOne) {
            stored_from += 1;
        }
        for id in self.stored_from..stored_from {
            writes.push(Write::Delete {
                key: keys::message(id),
            });
        }
        let batch = BatchId(self.next_batch);
        self.next_batch += 1;
        self.in_flight = Some(InFlight {
            batch,
            entries,
            stored_from,
        });
        Output::Persist(WriteBatch { id: batch, writes })
    }

    /// Everything accepted and not yet durable: the batch in flight, then the next one.
    fn waiting_entries(&self) -> impl Iterator<Item = &PendingEntry> {
        self.in_flight
            .iter()
            .flat_map(|in_flight| &in_flight.entries)
            .chain(&self.pending)
    }

    /// How many sessions are joined.
    fn roster_len(&self) -> usize {
        self.sessions
            .values()
            .filter(|session| matches!(session.phase, Phase::Joined { .. }))
            .count()
    }

    fn holds_everything_after(&self, since: u64) -> bool {
        let last = self.last_durable_id();
        let oldest = self.history.front().map_or(last + 1, |message| message.id);
        // Planted: an off-by-one that falls back although `since + 1` is still held.
        let edge = u64::from(self.config.planted(PlantedBug::SinceEdgeFallsBack));
        since <= last && since + 1 >= oldest + edge
    }

    /// Replay the newest `join_replay_max` messages as of connecting, and all after.
    fn default_replay_after(&self, connect_last_id: u64) -> u64 {
        connect_last_id.saturating_sub(self.config.join_replay_max as u64)
    }

    fn pending_len(&self) -> usize {
        self.pending.len() + self.in_flight.as_ref().map_or(0, |f| f.entries.len())
    }

    fn roster(&mut self) -> Arc<[ConnId]> {
        if let Some(roster) = &self.roster_cache {
            return roster.clone();
        }
        let roster: Arc<[ConnId]> = self
            .sessions
            .iter()
            .filter(|(_, session)| matches!(session.phase, Phase::Joined { .. }))
            .map(|(conn, _)| *conn)
            .collect();
        self.roster_cache = Some(roster.clone());
        roster
    }

    fn broadcast(&mut self, frame: Frame) {
        let recipients = self.roster();
        if !recipients.is_empty() {
            self.outputs
                .push_back(Output::Broadcast { recipients, frame });
        }
    }

    fn send(&mut self, conn: ConnId, frame: Frame) {
        self.outputs.push_back(Output::Send { conn, frame });
    }

    fn send_error(&mut self, conn: ConnId, text: &str) {
        self.send(conn, protocol::encode_error(text));
    }

    fn set_phase(&mut self, conn: ConnId, phase: Phase) {
        if let Some(session) = self.sessions.get_mut(&conn) {
            session.phase = phase;
        }
        self.push_attachment(conn);
    }

    fn push_attachment(&mut self, conn: ConnId) {
        let Some(session) = self.sessions.get(&conn) else {
            return;
        };
        let attachment = Attachment {
            version: ATTACHMENT_VERSION,
            ip: session.ip,
            phase: session.phase.clone(),
            limiter: session.limiter,
            identity: session.identity.clone(),
        }
        .encode();
        // A connection's attachment often changes twice in one input (a limiter's answer, then
        // the next held frame's question): only the latest matters, so one not yet taken is
        // replaced rather than written twice.
        let unwritten = self
            .outputs
            .iter_mut()
            .rev()
            .take(ATTACHMENT_COALESCE_LOOKBACK)
            .find_map(|output| match output {
                Output::SetAttachment {
                    conn: c,
                    attachment,
                } if *c == conn => Some(attachment),
                _ => None,
            });
        match unwritten {
            Some(previous) => *previous = attachment,
            None => self
                .outputs
                .push_back(Output::SetAttachment { conn, attachment }),
        }
    }
}
