//! Moderation under faults (issues 14 and 18): a moderator deletes and edits retained
//! messages, kicks, bans (by name or IP), mutes, unbans and unmutes clients, and sets the
//! room read-only or not and its topic, through the admin API of the room's host, in a
//! quarter of the runs (those without auth), while every other fault goes on.
//!
//! The oracle is the sim's own: it parses records itself (not with core's types), knows
//! every text it made a moderator write, and learns that a deletion is durable from the
//! records the host confirms (or a restore finds), and that a ban is in force from the
//! admin API's confirmation (or a restore that finds it stored). Invariants:
//! - `deleted-never-reappears`: once a deletion is durable, no text the message ever had
//!   (its own or an edit's) is sent to any client (broadcast or replay), written, or held
//!   in storage.
//! - `edits-never-reorder`: a record rewritten in place (an edit, a tombstone) keeps its id
//!   and timestamp and is the same message's next state; ids stay gap-free (the existing
//!   `ids-gap-free`, `gap-free` and `stored-history` checks see change records as ids).
//! - `banned-no-frames`: while a ban holds, no frame but the ban's own error reaches a
//!   connection of the banned user, or from the banned IP.
//! - `unbanned-may-join`: nobody whose name and IP are surely unbanned (never banned, or an
//!   unban after the newest ban confirmed) is closed as banned (4011).
//! - `muted-not-written`: a chat message that reaches the room while its sender's mute
//!   holds (and will hold for longer than the room may keep the frame waiting) is never
//!   written.
//! - `banned-ip-refused`: a connection from an IP whose ban surely holds is closed at once.
//! - `unmuted-may-chat`: once an unmute is confirmed (and no mute of the user asked since),
//!   the user never gets the mute's error.
//! - `read-only-not-written` / `read-only-deserved`: a chat message that reaches a room
//!   surely read-only is never written; the read-only error never comes while the room is
//!   surely not read-only.
//! - `topic-current`: a join gets `{"topic": T}` right before `ready` exactly when the
//!   room's topic is surely `T`; when a topic change is confirmed, every joined socket was
//!   last sent it; once settled, every client's last topic frame on its connection is the
//!   room's topic.
//!
//! Unbans count for `liveness`: a client is left out only while a ban of its name or IP
//! asked for may still hold (no confirmed unban after it).
//!
//! In token runs, sessions moderate over their sockets instead (`mod_sessions`): see
//! [`session_attempt`]. Checks: `only-moderators-moderate` (a frame docs/PROTOCOL.md says
//! must be refused gets `Only moderators may do that.` and changes nothing) and
//! `moderators-not-refused` (a moderator is never refused as not allowed, nor as
//! read-only). What their bans and mutes put in force is learned from the durable writes
//! ([`state_durable`]). The admin moderator also sets `members_max`: `members-max`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use edgechat_core::moderation::{BanTarget, ModAction, SettingsPatch};
use edgechat_core::protocol::{Frame, MessageText};
use edgechat_core::room::ConnId;
use madsim::rand::{thread_rng, Rng};
use madsim::time::sleep;
use serde_json::Value as Json;

use crate::json::Object;

use crate::world::{HostEvent, Shared, World};

/// One record of a room's sequence, as the sim reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its id.
    pub id: u64,
    /// Its timestamp (`at` for a change record).
    pub ts: u64,
    /// What it is.
    pub kind: Kind,
}

/// The kinds of record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A chat message (edited or not).
    Chat {
        /// Sender's name.
        name: String,
        /// Its text.
        text: String,
        /// Whether it says it was edited.
        edited: bool,
    },
    /// Message `target` is deleted (at `target` itself: its tombstone).
    Deleted {
        /// The deleted message.
        target: u64,
    },
    /// Message `target` now says `text`.
    Edited {
        /// The edited message.
        target: u64,
        /// The new text.
        text: String,
    },
}

impl Record {
    /// Parses a stored or received record (`None`: not a record of the sequence).
    pub fn parse(frame: &str) -> Option<Record> {
        let json = Object::parse(frame)?;
        let id = json.u64("id")?;
        let text = |key: &str| json.str(key).map(str::to_owned);
        if let Some(target) = json.u64("deleted") {
            let ts = json.u64("at")?;
            return Some(Record {
                id,
                ts,
                kind: Kind::Deleted { target },
            });
        }
        if let Some(target) = json.u64("edited") {
            let ts = json.u64("at")?;
            let text = text("message")?;
            return Some(Record {
                id,
                ts,
                kind: Kind::Edited { target, text },
            });
        }
        let ts = json.u64("timestamp")?;
        let edited = json.bool("edited").unwrap_or(false);
        Some(Record {
            id,
            ts,
            kind: Kind::Chat {
                name: text("name")?,
                text: text("message")?,
                edited,
            },
        })
    }

    /// The chat text it carries (a message's or an edit's).
    pub fn text(&self) -> Option<&str> {
        match &self.kind {
            Kind::Chat { text, .. } | Kind::Edited { text, .. } => Some(text),
            Kind::Deleted { .. } => None,
        }
    }
}

/// The ban's error and close reason, as docs/PROTOCOL.md spells them.
const BANNED: &str = "Banned from this room.";
/// The mute's error.
const MUTED: &str = "You are muted in this room.";
/// The read-only room's error.
const READ_ONLY: &str = "This room is read-only.";
/// The refusal of a join beyond `members_max`.
const ROOM_FULL: &str = "Room is full.";
/// The ban's close code.
const CLOSE_BANNED: u16 = 4011;

/// Whom a ban names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Banned {
    /// A user (here: its joined name).
    User(String),
    /// An IP.
    Ip(IpAddr),
}

/// What the moderation oracle knows (all per room).
#[derive(Debug, Clone, Default)]
pub struct ModOracle {
    /// Whether this run has a moderator.
    pub on: bool,
    next_request: u64,
    /// Requests handed to a room: (room, action, host clock ms when handled).
    requests: BTreeMap<u64, (usize, ModAction, u64)>,
    /// Every text a chat record at (room, id) ever had, and every edit text asked for it.
    texts: BTreeMap<(usize, u64), BTreeSet<String>>,
    /// Durable deletions: (room, target).
    deleted: BTreeSet<(usize, u64)>,
    /// Texts that must never be seen again, per room, with the deleted id.
    forbidden: BTreeMap<usize, BTreeMap<String, u64>>,
    /// Requests the room confirmed (durable and in force).
    confirmed: BTreeSet<u64>,
    /// The newest ban and unban requests handled, by (room, target).
    ban_requests: BTreeMap<(usize, Banned), (Option<u64>, Option<u64>)>,
    /// Bans in force, by (room, target).
    bans: BTreeMap<(usize, Banned), Option<u64>>,
    /// The newest mute or unmute request handled, by (room, user): (request, an unmute).
    mute_requests: BTreeMap<(usize, String), (u64, bool)>,
    /// The newest settings request handled that sets `read_only`, per room.
    read_only_requests: BTreeMap<usize, (u64, bool)>,
    /// The newest settings request handled that sets the topic, per room.
    topic_requests: BTreeMap<usize, (u64, Option<String>)>,
    /// Chat texts that reached a room while it was surely read-only: never written.
    read_only_texts: BTreeMap<usize, BTreeSet<String>>,
    /// Connections whose latest frame was a topic frame, with its topic.
    topic_before: BTreeMap<ConnId, String>,
    /// The latest topic frame sent to each connection.
    topic_sent: BTreeMap<ConnId, String>,
    /// Mutes in force, by (room, user).
    mutes: BTreeMap<(usize, String), Option<u64>>,
    /// Chat texts that reached the room while their sender's mute held, with the sender:
    /// never written (unless another mute of the sender replaces that one meanwhile).
    muted_texts: BTreeMap<usize, BTreeMap<String, String>>,
    /// Deletions sessions allowed to make them asked for: (room, target).
    session_deletes: BTreeSet<(usize, u64)>,
    /// Edit texts of session frames that must be refused, per room: never written or sent.
    refused_edits: BTreeMap<usize, BTreeSet<String>>,
    /// Rooms whose settings a session may have changed (the oracle claims nothing about
    /// their read-only state or topic: it learns no confirmation of a session's request).
    session_settings: BTreeSet<usize>,
    /// Edit texts made for sessions so far.
    session_edits: u64,
    /// Bans moderator sessions asked for so far (at most six per run).
    session_bans: u32,
    /// The newest settings request handled that sets `members_max`, per room.
    members_requests: BTreeMap<usize, (u64, Option<u32>)>,
}

/// The refusal of a session's moderation frame without the right to it.
pub const NOT_ALLOWED: &str = "Only moderators may do that.";
/// The rate limiter's refusal, as docs/PROTOCOL.md spells it.
const RATE_LIMITED: &str = "Your IP is being rate-limited, please try again later.";

/// A moderation frame a session sent, awaiting its answer.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// Its number on the connection.
    pub seq: u64,
    /// The frame.
    pub frame: String,
    /// Sent on a session whose token grants `moderator`: never refused as not allowed.
    pub moderator: bool,
    /// docs/PROTOCOL.md says it must be refused (not a moderator, and not a verified
    /// author deleting or editing its own message).
    pub must_refuse: bool,
}

impl ModOracle {
    /// Whether the moderator asked to delete message `id` of `room`.
    pub fn delete_asked(&self, room: usize, id: u64) -> bool {
        self.session_deletes.contains(&(room, id))
            || self.requests.values().any(|(r, action, _)| {
                *r == room && matches!(action, ModAction::Delete { id: target } if *target == id)
            })
    }

    /// Whether a ban of `name` or `ip` in `room` may still hold (left out of liveness: it
    /// may be refused until the end): a ban was asked for and no unban after it was
    /// confirmed.
    pub fn may_stay_banned(&self, room: usize, name: &str, ip: IpAddr) -> bool {
        !self.surely_unbanned(room, Banned::User(name.to_owned()))
            || !self.surely_unbanned(room, Banned::Ip(ip))
    }

    /// Whether `target` is surely not banned in `room`: never asked, or an unban after the
    /// newest ban asked for was confirmed.
    fn surely_unbanned(&self, room: usize, target: Banned) -> bool {
        match self.ban_requests.get(&(room, target)) {
            Some((Some(ban), unban)) => {
                unban.is_some_and(|u| u > *ban && self.confirmed.contains(&u))
            }
            _ => true,
        }
    }

    /// Whether `room` is surely read-only (`Some`), or surely not, as of the requests
    /// handled: the newest that sets it was confirmed (none: never read-only).
    fn read_only(&self, room: usize) -> Option<bool> {
        if self.session_settings.contains(&room) {
            return None;
        }
        match self.read_only_requests.get(&room) {
            None => Some(false),
            Some((request, value)) => self.confirmed.contains(request).then_some(*value),
        }
    }

    /// The room's `members_max`, if surely known (`Some(None)`: none): the newest request
    /// that sets it was confirmed (none asked: none).
    fn members_max(&self, room: usize) -> Option<Option<u32>> {
        match self.members_requests.get(&room) {
            None => Some(None),
            Some((request, max)) => self.confirmed.contains(request).then_some(*max),
        }
    }

    /// The room's topic, if surely known (`Some(None)`: none).
    fn topic(&self, room: usize) -> Option<Option<String>> {
        if self.session_settings.contains(&room) {
            return None;
        }
        match self.topic_requests.get(&room) {
            None => Some(None),
            Some((request, topic)) => self.confirmed.contains(request).then(|| topic.clone()),
        }
    }

    /// Whether rewriting `old` (a record at some id) as `new` is the same message's next
    /// state: a tombstone in place, an edit the moderator asked for, or a deleted message's
    /// edit record turned tombstone; never a new id or timestamp.
    pub fn same_record(&self, room: usize, old: &str, new: &str) -> bool {
        if old == new {
            return true;
        }
        let (Some(o), Some(n)) = (Record::parse(old), Record::parse(new)) else {
            return false;
        };
        if o.id != n.id || o.ts != n.ts {
            return false;
        }
        match (&o.kind, &n.kind) {
            (Kind::Chat { .. }, Kind::Deleted { target }) => *target == n.id,
            (
                Kind::Chat { name: a, .. },
                Kind::Chat {
                    name: b,
                    text,
                    edited,
                },
            ) => {
                *edited
                    && a == b
                    && self
                        .texts
                        .get(&(room, n.id))
                        .is_some_and(|texts| texts.contains(text))
            }
            (Kind::Edited { target: a, .. }, Kind::Deleted { target: b }) => a == b,
            _ => false,
        }
    }
}

impl ModOracle {
    /// [`ModOracle::same_record`] either way round (a client may see an older state after
    /// a newer one: a broadcast in flight while another client's replay shows the change).
    pub fn same_either(&self, room: usize, a: &str, b: &str) -> bool {
        self.same_record(room, a, b) || self.same_record(room, b, a)
    }
}

/// `frame` mentions `text` as a JSON string.
fn mentions(frame: &str, text: &str) -> bool {
    frame.contains(&format!("\"{text}\""))
}

/// A record at `id` of `room` is durable (confirmed, or found by a restore).
pub fn durable_record(w: &mut World, room: usize, id: u64, frame: &str) {
    let Some(record) = Record::parse(frame) else {
        return;
    };
    match &record.kind {
        Kind::Chat { text, .. } if !w.moderation.deleted.contains(&(room, id)) => {
            let texts = w.moderation.texts.entry((room, id)).or_default();
            texts.insert(text.clone());
        }
        Kind::Deleted { target } if *target != id => deleted(w, room, *target),
        _ => {}
    }
}

/// The deletion of `target` in `room` is durable: its texts are forbidden from now on.
fn deleted(w: &mut World, room: usize, target: u64) {
    if !w.moderation.deleted.insert((room, target)) {
        return;
    }
    w.count_fault("mod-deleted-durable");
    if !w.moderation.delete_asked(room, target) {
        let detail = format!("room {room}: message {target} deleted, nobody allowed asked to");
        w.violate("only-moderators-moderate", detail);
        return;
    }
    let texts = w
        .moderation
        .texts
        .get(&(room, target))
        .cloned()
        .unwrap_or_default();
    let forbidden = w.moderation.forbidden.entry(room).or_default();
    for text in texts {
        forbidden.insert(text, target);
    }
    check_storage(w, room);
}

/// Storage holds no forbidden text (after every commit, and whenever a deletion becomes
/// durable).
pub fn check_storage(w: &mut World, room: usize) {
    let Some(forbidden) = w.moderation.forbidden.get(&room) else {
        return;
    };
    let stored = w.stores[room].list(edgechat_core::storage::ListQuery {
        prefix: edgechat_core::storage::keys::MESSAGE_PREFIX,
        limit: usize::MAX,
    });
    for (key, value) in &stored {
        if let Some((text, target)) = forbidden.iter().find(|(text, _)| mentions(value, text)) {
            let detail = format!(
                "room {room}: {key} holds {value}: text {text} of deleted message {target}"
            );
            w.violate("deleted-never-reappears", detail);
            return;
        }
    }
}

/// A batch about to be written mentions no forbidden text, and no muted message.
pub fn check_write(w: &mut World, room: usize, key: &str, value: &str) {
    // Muted texts were taken while no clock had stepped; a step since may have ended the
    // mute on the room's clock before it decided.
    let text = Record::parse(value)
        .filter(|_| !w.clock_stepped)
        .and_then(|r| Some(r.text()?.to_owned()));
    let read_only_text = Record::parse(value)
        .and_then(|r| Some(r.text()?.to_owned()))
        .filter(|t| {
            w.moderation
                .read_only_texts
                .get(&room)
                .is_some_and(|texts| texts.contains(t))
        });
    if let Some(text) = refused_edit(w, room, value) {
        let detail = format!("room {room} writes {key} = {value}: {text} must have been refused");
        w.violate("only-moderators-moderate", detail);
        return;
    }
    if let Some(text) = read_only_text {
        let detail =
            format!("room {room} writes {key} = {value}: {text} came while the room was read-only");
        w.violate("read-only-not-written", detail);
        return;
    }
    if let Some(text) = text.filter(|t| {
        w.moderation
            .muted_texts
            .get(&room)
            .is_some_and(|m| m.contains_key(t))
    }) {
        let detail =
            format!("room {room} writes {key} = {value}: {text} came while its sender was muted");
        w.violate("muted-not-written", detail);
        return;
    }
    let Some(forbidden) = w.moderation.forbidden.get(&room) else {
        return;
    };
    if let Some((text, target)) = forbidden.iter().find(|(text, _)| mentions(value, text)) {
        let detail =
            format!("room {room} writes {key} = {value}: text {text} of deleted message {target}");
        w.violate("deleted-never-reappears", detail);
    }
}

/// Who `client` is for bans and mutes (docs/PROTOCOL.md's `<user>`): its token's subject
/// (`user-<n>`, the sim mints it) when it carries a token, else the name it joins with.
pub fn user_key(w: &World, client: usize) -> String {
    match w.tokens.as_ref().filter(|t| t.plans[client].carries_token) {
        Some(_) => format!("user-{client}"),
        None => w.clients[client].name.clone(),
    }
}

/// A frame leaves the room for `conn`: no deleted text, nothing for a banned user or IP, no
/// mute error after an unmute, no read-only error in a room surely not read-only, and the
/// topic right before `ready`.
pub fn frame_out(w: &mut World, room: usize, conn: ConnId, frame: &Frame) {
    if !w.moderation.on {
        return;
    }
    if let Some(forbidden) = w.moderation.forbidden.get(&room) {
        if let Some((text, target)) = forbidden.iter().find(|(text, _)| mentions(frame, text)) {
            let detail = format!(
                "room {room} sends {conn:?} {frame}: text {text} of deleted message {target}"
            );
            w.violate("deleted-never-reappears", detail);
            return;
        }
    }
    if let Some(text) = refused_edit(w, room, frame) {
        let detail = format!("room {room} sends {conn:?} {frame}: {text} must have been refused");
        w.violate("only-moderators-moderate", detail);
        return;
    }
    watch_topic(w, room, conn, frame);
    let Some(client) = w.conns.get(&conn).map(|info| info.client) else {
        return;
    };
    let moderator = w.tokens.as_ref().is_some_and(|t| t.is_moderator(client));
    if moderator && frame.contains(READ_ONLY) {
        let detail = format!("room {room} sends moderator u{client} on {conn:?} {frame}");
        w.violate("moderators-not-refused", detail);
        return;
    }
    let user = user_key(w, client);
    let ip = w.clients[client].ip;
    let error = frame
        .contains(r#""error""#)
        .then(|| serde_json::from_str::<Json>(frame).ok())
        .flatten()
        .and_then(|json| Some(json.get("error")?.as_str()?.to_owned()));
    if error.as_deref() == Some(ROOM_FULL) {
        w.count_fault("mod-room-full");
    }
    if error.as_deref() == Some(MUTED) {
        let unmuted = w.moderation.mute_requests.get(&(room, user.clone()));
        if unmuted
            .is_some_and(|(request, unmute)| *unmute && w.moderation.confirmed.contains(request))
        {
            let detail = format!("room {room} sends {user} on {conn:?} {frame} after its unmute");
            w.violate("unmuted-may-chat", detail);
            return;
        }
    }
    if error.as_deref() == Some(READ_ONLY) && w.moderation.read_only(room) == Some(false) {
        let detail = format!("room {room} sends {user} on {conn:?} {frame}: not read-only");
        w.violate("read-only-deserved", detail);
        return;
    }
    for target in [Banned::User(user.clone()), Banned::Ip(ip)] {
        let Some(until) = w.moderation.bans.get(&(room, target.clone())).copied() else {
            continue;
        };
        if surely_holds(w, room, until, 100) && error.as_deref() != Some(BANNED) {
            let detail =
                format!("room {room} sends {user} ({target:?} banned) on {conn:?}: {frame}");
            w.violate("banned-no-frames", detail);
            return;
        }
    }
}

/// `room` sends `ready` to `conn` (a join completes) while `others` other sockets of the room
/// are joined: never as many as a `members_max` surely in force (docs/PROTOCOL.md: a join
/// beyond it gets `Room is full.` and 1013).
pub fn joins(w: &mut World, room: usize, conn: ConnId, others: usize) {
    let Some(Some(max)) = w.moderation.members_max(room) else {
        return;
    };
    w.count_fault("mod-members-max-join");
    if others >= max as usize {
        let detail =
            format!("room {room}: {conn:?} joined with {others} joined, members_max {max}");
        w.violate("members-max", detail);
    }
}

/// Remembers a topic frame sent to `conn`; at `ready`, judges the topic the join got.
fn watch_topic(w: &mut World, room: usize, conn: ConnId, frame: &Frame) {
    let before = w.moderation.topic_before.remove(&conn);
    if !frame.contains(r#""topic""#) && !frame.contains(r#""ready""#) {
        return;
    }
    let Ok(json) = serde_json::from_str::<Json>(frame) else {
        return;
    };
    if let Some(topic) = json.get("topic").and_then(Json::as_str) {
        w.moderation.topic_before.insert(conn, topic.to_owned());
        w.moderation.topic_sent.insert(conn, topic.to_owned());
        return;
    }
    if json.get("ready").is_none() {
        return;
    }
    let Some(expected) = w.moderation.topic(room) else {
        return;
    };
    if before != expected {
        let detail = format!(
            "room {room}: {conn:?} joined with topic {before:?}, the room's is {expected:?}"
        );
        w.violate("topic-current", detail);
    }
}

/// A connection from `ip` was handed to `room` (`closed`: the room closed it at once): one
/// from an IP whose ban surely holds must be.
pub fn connected(w: &mut World, room: usize, conn: ConnId, ip: IpAddr, closed: bool) {
    if !w.moderation.on || closed {
        return;
    }
    let Some(until) = w.moderation.bans.get(&(room, Banned::Ip(ip))).copied() else {
        return;
    };
    if surely_holds(w, room, until, 100) {
        let detail = format!("room {room} let {conn:?} from banned {ip} stay open");
        w.violate("banned-ip-refused", detail);
    }
}

/// The room closes `conn` with `code`: never as banned (4011) when neither its user nor its
/// IP may be banned.
pub fn closed(w: &mut World, room: usize, conn: ConnId, code: u16) {
    if !w.moderation.on || code != CLOSE_BANNED {
        return;
    }
    let Some(client) = w.conns.get(&conn).map(|info| info.client) else {
        return;
    };
    let (name, ip) = (user_key(w, client), w.clients[client].ip);
    if !w.moderation.may_stay_banned(room, &name, ip) {
        let detail = format!("room {room} closes {name} ({ip}) on {conn:?} as banned");
        w.violate("unbanned-may-join", detail);
    }
}

/// Once settled: every client in the liveness check (`clients`) saw the room's topic last.
pub fn check_topics(w: &mut World, room: usize, clients: &[usize]) {
    let Some(expected) = w.moderation.topic(room).filter(|_| w.moderation.on) else {
        return;
    };
    for &client in clients {
        let seen = w.clients[client].current.topic.clone();
        if seen != expected {
            let name = &w.clients[client].name;
            let detail =
                format!("room {room}: {name} last saw topic {seen:?}, the room's is {expected:?}");
            w.violate("topic-current", detail);
            return;
        }
    }
}

/// The edit text of a refused session frame that `frame` mentions, if any.
fn refused_edit(w: &World, room: usize, frame: &str) -> Option<String> {
    let texts = w.moderation.refused_edits.get(&room)?;
    texts.iter().find(|text| mentions(frame, text)).cloned()
}

/// Whether a restriction until `until` (room clock ms) surely holds for `margin_ms` more on
/// the room's clock (a timed one never once a clock has stepped: the room may see a later
/// time than the sim assumes).
fn surely_holds(w: &World, room: usize, until: Option<u64>, margin_ms: u64) -> bool {
    match until {
        None => true,
        Some(until) => !w.clock_stepped && w.host_now(room % w.sc.hosts).0 + margin_ms < until,
    }
}

/// A text frame from `conn` reaches `room`'s host: a chat message from a muted sender is
/// remembered, never to be written.
pub fn text_arrives(w: &mut World, room: usize, conn: ConnId, text: &str) {
    if !w.moderation.on {
        return;
    }
    let Some(client) = w.conns.get(&conn).map(|info| info.client) else {
        return;
    };
    if w.sc.mod_sessions && session_action(text) {
        return; // an edit's text is no chat message
    }
    let user = user_key(w, client);
    let sender = user.clone();
    if w.moderation.read_only(room) == Some(true) {
        if let Some(message) = chat_text(text) {
            w.count_fault("mod-read-only-sent");
            let texts = w.moderation.read_only_texts.entry(room).or_default();
            texts.insert(message);
        }
    }
    let Some(until) = w.moderation.mutes.get(&(room, user)).copied() else {
        return;
    };
    // The room may hold a frame for its limiter answers before it decides.
    let margin = edgechat_core::room::PIPELINE_WAIT_MAX_MS + 1_000;
    if !surely_holds(w, room, until, margin) {
        return;
    }
    if let Some(message) = chat_text(text) {
        w.count_fault("mod-muted-sent");
        let muted = w.moderation.muted_texts.entry(room).or_default();
        muted.insert(message, sender);
    }
}

/// Whether a frame is one of the moderation frames sessions send here.
fn session_action(text: &str) -> bool {
    [
        "\"delete\"",
        "\"edit\"",
        "\"kick\"",
        "\"ban\"",
        "\"ban_ip\"",
        "\"unban\"",
        "\"unban_ip\"",
        "\"mute\"",
        "\"unmute\"",
        "\"settings\"",
    ]
    .iter()
    .any(|key| text.contains(key))
}

/// The `message` of a chat frame.
fn chat_text(text: &str) -> Option<String> {
    let json = serde_json::from_str::<Json>(text).ok()?;
    Some(json.get("message")?.as_str()?.to_owned())
}

/// Another mute of `user` came into force: what the room decides about the user's texts
/// that arrived under the old one is no longer known.
fn forget_muted_texts(w: &mut World, room: usize, user: &str) {
    if let Some(muted) = w.moderation.muted_texts.get_mut(&room) {
        muted.retain(|_, sender| sender != user);
    }
}

/// A room confirmed admin request `request`: durable and in force (`joined`: the room's
/// joined sockets, which must have been sent a new topic).
pub fn moderated(w: &mut World, room: usize, request: u64, joined: &[ConnId]) {
    let Some((asked_room, action, asked_at)) = w.moderation.requests.get(&request).cloned() else {
        w.violate(
            "host-contract",
            format!("unknown moderation request {request}"),
        );
        return;
    };
    if asked_room != room {
        w.violate(
            "host-contract",
            format!("request {request} confirmed by room {room}"),
        );
        return;
    }
    w.trace(format_args!("r{room} moderated #{request} {action:?}"));
    w.moderation.confirmed.insert(request);
    match action {
        ModAction::Ban { target, for_ms } => {
            let until = for_ms.map(|ms| asked_at + ms);
            w.moderation.bans.insert((room, banned(&target)), until);
        }
        ModAction::Unban { target } => {
            w.count_fault("mod-unbanned");
            w.moderation.bans.remove(&(room, banned(&target)));
        }
        ModAction::Mute { user, for_ms } => {
            let until = for_ms.map(|ms| asked_at + ms);
            if w.moderation.mutes.insert((room, user.clone()), until) != Some(until) {
                forget_muted_texts(w, room, &user);
            }
        }
        ModAction::Unmute { user } => {
            w.count_fault("mod-unmuted");
            w.moderation.mutes.remove(&(room, user.clone()));
            forget_muted_texts(w, room, &user);
        }
        ModAction::Settings(patch) => {
            if patch.read_only == Some(false) {
                w.moderation.read_only_texts.remove(&room);
            }
            if let Some(topic) = patch.topic {
                for conn in joined {
                    let seen = w.moderation.topic_sent.get(conn).cloned();
                    let seen = seen.filter(|t| !t.is_empty());
                    if seen != topic {
                        let detail = format!(
                            "room {room}: topic {topic:?} in force, joined {conn:?} was last sent \
                             {seen:?}"
                        );
                        w.violate("topic-current", detail);
                        return;
                    }
                }
            }
        }
        _ => {}
    }
}

/// The oracle's name for a ban's target.
fn banned(target: &BanTarget) -> Banned {
    match target {
        BanTarget::User(user) => Banned::User(user.clone()),
        BanTarget::Ip(ip) => Banned::Ip(*ip),
    }
}

/// A restore of `room` found `stored`: the bans and mutes stored (`{"until": ms or null}`)
/// are in force, and no other (a ban's confirmation may have been lost with a crash; a later ban
/// of the same user replaces it).
pub fn restored(w: &mut World, room: usize, stored: &[(String, Frame)]) {
    w.moderation.bans.retain(|(r, _), _| *r != room);
    let before: BTreeMap<_, _> = w
        .moderation
        .mutes
        .iter()
        .filter(|((r, _), _)| *r == room)
        .map(|(key, until)| (key.clone(), *until))
        .collect();
    w.moderation.mutes.retain(|(r, _), _| *r != room);
    // By key first: the messages, most of what is stored, need no parsing here.
    let until = |value: &str| {
        let json = serde_json::from_str::<Json>(value).ok()?;
        Some(json.get("until").and_then(Json::as_u64))
    };
    for (key, value) in stored {
        if let Some(user) = key.strip_prefix("room/ban/user/") {
            if let Some(until) = until(value) {
                let target = Banned::User(user.to_owned());
                w.moderation.bans.insert((room, target), until);
            }
        } else if let Some(ip) = key.strip_prefix("room/ban/ip/") {
            if let (Some(until), Ok(ip)) = (until(value), ip.parse::<IpAddr>()) {
                w.moderation.bans.insert((room, Banned::Ip(ip)), until);
            }
        } else if key == "room/settings" {
            let read_only = serde_json::from_str::<Json>(value)
                .ok()
                .and_then(|json| json.get("read_only")?.as_bool());
            if read_only != Some(true) {
                w.moderation.read_only_texts.remove(&room);
            }
        } else if let Some(user) = key.strip_prefix("room/mute/") {
            if let Some(until) = until(value) {
                w.moderation.mutes.insert((room, user.to_owned()), until);
            }
        }
    }
    // A mute whose confirmation a crash lost may have replaced one.
    let after = &w.moderation.mutes;
    let changed: BTreeSet<String> = after
        .iter()
        .filter(|(key, until)| key.0 == room && before.get(*key) != Some(*until))
        .map(|(key, _)| key.1.clone())
        .chain(
            before
                .keys()
                .filter(|key| !after.contains_key(*key))
                .map(|key| key.1.clone()),
        )
        .collect();
    for user in changed {
        forget_muted_texts(w, room, &user);
    }
}

/// The room of a run where sessions moderate handled the durability of `writes` (a ban,
/// mute or their lifting among them is now in force: the room applies it as it learns the
/// write is durable): what they store is what holds, as a restore would find it.
pub fn state_durable(w: &mut World, room: usize, writes: &[edgechat_core::storage::Write]) {
    use edgechat_core::storage::Write;
    if !w.sc.mod_sessions {
        return;
    }
    let until = |value: &str| {
        let json = serde_json::from_str::<Json>(value).ok()?;
        Some(json.get("until").and_then(Json::as_u64))
    };
    for write in writes {
        let (key, value) = match write {
            Write::Put { key, value } => (key.as_str(), Some(&**value)),
            Write::Delete { key } => (key.as_str(), None),
        };
        let target = if let Some(user) = key.strip_prefix("room/ban/user/") {
            Banned::User(user.to_owned())
        } else if let Some(ip) = key.strip_prefix("room/ban/ip/") {
            let Ok(ip) = ip.parse::<IpAddr>() else {
                continue;
            };
            Banned::Ip(ip)
        } else if let Some(user) = key.strip_prefix("room/mute/") {
            let old = w.moderation.mutes.get(&(room, user.to_owned())).copied();
            match value.and_then(until) {
                Some(until) => {
                    w.moderation.mutes.insert((room, user.to_owned()), until);
                }
                None => {
                    w.moderation.mutes.remove(&(room, user.to_owned()));
                }
            }
            if old != w.moderation.mutes.get(&(room, user.to_owned())).copied() {
                forget_muted_texts(w, room, user);
            }
            continue;
        } else {
            continue;
        };
        match value.and_then(until) {
            Some(until) => {
                w.count_fault("session-mod-ban-durable");
                w.moderation.bans.insert((room, target), until);
            }
            None => {
                w.moderation.bans.remove(&(room, target));
            }
        }
    }
}

/// The host handles request `request` now (its clock: `now_ms`): remember what it asks.
pub fn handling(w: &mut World, room: usize, request: u64, action: &ModAction, now_ms: u64) {
    w.moderation
        .requests
        .insert(request, (room, action.clone(), now_ms));
    match action {
        ModAction::Edit { id, message } => edit_asked(w, room, *id, message.as_ref()),
        ModAction::Ban { target, .. } => {
            let asked = w.moderation.ban_requests.entry((room, banned(target)));
            asked.or_default().0 = Some(request);
        }
        ModAction::Unban { target } => {
            let asked = w.moderation.ban_requests.entry((room, banned(target)));
            asked.or_default().1 = Some(request);
        }
        ModAction::Mute { user, .. } | ModAction::Unmute { user } => {
            let unmute = matches!(action, ModAction::Unmute { .. });
            let key = (room, user.clone());
            w.moderation.mute_requests.insert(key, (request, unmute));
        }
        ModAction::Settings(patch) => {
            if let Some(read_only) = patch.read_only {
                w.moderation
                    .read_only_requests
                    .insert(room, (request, read_only));
            }
            if let Some(topic) = &patch.topic {
                w.moderation
                    .topic_requests
                    .insert(room, (request, topic.clone()));
            }
            if let Some(max) = patch.members_max {
                w.moderation.members_requests.insert(room, (request, max));
            }
        }
        _ => {}
    }
}

/// An edit of message `id` of `room` to `text` was asked for by someone allowed to.
fn edit_asked(w: &mut World, room: usize, id: u64, text: &str) {
    w.moderation
        .texts
        .entry((room, id))
        .or_default()
        .insert(text.to_owned());
    if w.moderation.deleted.contains(&(room, id)) {
        let forbidden = w.moderation.forbidden.entry(room).or_default();
        forbidden.insert(text.to_owned(), id);
    }
}

/// A session of client `index`, ready and quiet, sends a moderation frame (in runs where
/// sessions moderate): it deletes (25 %) or edits (20 %) one of the 30 newest acknowledged
/// chat messages, kicks (7 %), bans by user or IP (8 %, at most six moderator bans a run),
/// mutes (7 %), unbans or unmutes (8 %) a client of its room, or sets the room read-only or
/// not (the rest); a non-moderator tries the same (deleting or editing its own message half
/// the time when it has one). Returns the frame and what the oracle expects of it (`None`
/// in runs without auth).
pub fn session_attempt(w: &mut World, index: usize, seq: u64) -> Option<Attempt> {
    let mut rng = thread_rng();
    let room = w.clients[index].room;
    let tokens = w.tokens.as_ref()?;
    let moderator = tokens.is_moderator(index);
    let verified = tokens.plans[index].carries_token;
    let me = format!("user-{index}");
    // The newest acknowledged chat messages, with their authors (`user`).
    let ids: Vec<(u64, bool)> = w.rooms[room]
        .acked
        .iter()
        .rev()
        .filter_map(|(id, frame)| {
            let record = Record::parse(frame)?;
            if !matches!(record.kind, Kind::Chat { .. }) {
                return None;
            }
            let mine = verified && Object::parse(frame)?.str("user") == Some(me.as_str());
            Some((*id, mine))
        })
        .take(30)
        .collect();
    let mine: Vec<u64> = ids.iter().filter(|(_, m)| *m).map(|(id, _)| *id).collect();
    let members: Vec<(String, IpAddr)> = (0..w.sc.clients)
        .filter(|&c| w.clients[c].room == room)
        .map(|c| (user_key(w, c), w.clients[c].ip))
        .collect();
    let roll: f64 = rng.gen();
    let target = if !mine.is_empty() && !moderator && rng.gen_bool(0.5) {
        Some((mine[rng.gen_range(0..mine.len())], true))
    } else if ids.is_empty() {
        None
    } else {
        Some(ids[rng.gen_range(0..ids.len())])
    };
    // Requests of sessions are never confirmed to the oracle: what they ask only makes it
    // claim less (a ban may hold for ever, an unban or unmute is never sure).
    w.moderation.next_request += 1;
    let request = w.moderation.next_request;
    let member = (!members.is_empty()).then(|| members[rng.gen_range(0..members.len())].clone());
    let for_ms = rng
        .gen_bool(0.5)
        .then(|| rng.gen_range(1_000..30_000u64))
        .map_or(String::new(), |ms| format!(r#","for_ms":{ms}"#));
    let (frame, allowed) = match (target, member) {
        (Some((id, own)), _) if roll < 0.25 => {
            let allowed = moderator || own;
            w.count_fault("session-mod-delete");
            if own && !moderator {
                w.count_fault("session-mod-own");
            }
            if allowed {
                w.moderation.session_deletes.insert((room, id));
            }
            (format!(r#"{{"delete":{id}}}"#), allowed)
        }
        (Some((id, own)), _) if roll < 0.45 => {
            let allowed = moderator || own;
            w.count_fault("session-mod-edit");
            if own && !moderator {
                w.count_fault("session-mod-own");
            }
            w.moderation.session_edits += 1;
            let text = format!("e{index}_{}", w.moderation.session_edits);
            if allowed {
                edit_asked(w, room, id, &text);
            } else {
                let refused = w.moderation.refused_edits.entry(room).or_default();
                refused.insert(text.clone());
            }
            (format!(r#"{{"edit":{id},"message":"{text}"}}"#), allowed)
        }
        (_, Some((user, _))) if roll < 0.52 => {
            w.count_fault("session-mod-kick");
            (format!(r#"{{"kick":"{user}"}}"#), moderator)
        }
        (_, Some((user, ip))) if roll < 0.6 && w.moderation.session_bans < 6 => {
            let (target, frame) = if rng.gen_bool(0.4) {
                w.count_fault("session-mod-ban-ip");
                (Banned::Ip(ip), format!(r#"{{"ban_ip":"{ip}"{for_ms}}}"#))
            } else {
                w.count_fault("session-mod-ban");
                (
                    Banned::User(user.clone()),
                    format!(r#"{{"ban":"{user}"{for_ms}}}"#),
                )
            };
            if moderator {
                w.moderation.session_bans += 1;
                let asked = w.moderation.ban_requests.entry((room, target));
                asked.or_default().0 = Some(request);
            }
            (frame, moderator)
        }
        (_, Some((user, _))) if roll < 0.67 => {
            w.count_fault("session-mod-mute");
            if moderator {
                let key = (room, user.clone());
                w.moderation.mute_requests.insert(key, (request, false));
            }
            (format!(r#"{{"mute":"{user}"{for_ms}}}"#), moderator)
        }
        (_, Some((user, ip))) if roll < 0.75 => {
            let (frame, target) = match rng.gen_range(0..3) {
                0 => (format!(r#"{{"unban_ip":"{ip}"}}"#), Some(Banned::Ip(ip))),
                1 => (
                    format!(r#"{{"unban":"{user}"}}"#),
                    Some(Banned::User(user.clone())),
                ),
                _ => (format!(r#"{{"unmute":"{user}"}}"#), None),
            };
            w.count_fault("session-mod-unban-unmute");
            if moderator {
                match target {
                    Some(target) => {
                        let asked = w.moderation.ban_requests.entry((room, target));
                        asked.or_default().1 = Some(request);
                    }
                    None => {
                        let key = (room, user.clone());
                        w.moderation.mute_requests.insert(key, (request, true));
                    }
                }
            }
            (frame, moderator)
        }
        _ => {
            w.count_fault("session-mod-read-only");
            w.moderation.session_settings.insert(room);
            let read_only = rng.gen_bool(0.75);
            let frame = format!(r#"{{"settings":{{"read_only":{read_only}}}}}"#);
            (frame, moderator)
        }
    };
    if moderator {
        w.count_fault("session-mod-by-moderator");
    } else if !allowed {
        w.count_fault("session-mod-must-refuse");
    }
    Some(Attempt {
        seq,
        frame,
        moderator,
        must_refuse: !allowed,
    })
}

/// The error `error` came while `attempt` awaited its answer on client `index`'s `conn`:
/// a moderator is never refused as not allowed; a frame that must be refused gets that
/// refusal (or the rate limiter's).
pub fn session_answered(w: &mut World, index: usize, attempt: &Attempt, error: &str) {
    if error == NOT_ALLOWED {
        w.count_fault("session-mod-refused");
    }
    if error == NOT_ALLOWED && attempt.moderator {
        let detail = format!("moderator u{index} got {error:?} for {}", attempt.frame);
        w.violate("moderators-not-refused", detail);
    } else if attempt.must_refuse && error != NOT_ALLOWED && error != RATE_LIMITED {
        let detail = format!(
            "u{index} got {error:?} for {}: not the refusal",
            attempt.frame
        );
        w.violate("only-moderators-moderate", detail);
    }
}

/// The answer bound passed since client `index` sent attempt `seq` on `conn`: one that must
/// be refused was (an error came), if the connection is still open.
pub fn session_overdue(w: &mut World, index: usize, conn: edgechat_core::room::ConnId, seq: u64) {
    let current = &w.clients[index].current;
    if current.conn != Some(conn) {
        return;
    }
    let open = w.conns.get(&conn).is_some_and(|info| info.open);
    let Some(attempt) = current.mod_pending.clone().filter(|a| a.seq == seq) else {
        return;
    };
    w.clients[index].current.mod_pending = None;
    if open && attempt.must_refuse {
        let detail = format!("u{index} on {conn:?} got no refusal for {}", attempt.frame);
        w.violate("only-moderators-moderate", detail);
    }
}

/// The moderator: acts at random times during the fault phase.
pub(crate) async fn moderator_main(world: Shared, fault_ms: u64) {
    let mut edits = 0u64;
    let mut topics = 0u64;
    let mut bans = 0u32;
    loop {
        let pause = thread_rng().gen_range(500..6_000);
        sleep(std::time::Duration::from_millis(pause)).await;
        let ended = world.lock().expect("world lock").elapsed_ms() >= fault_ms;
        if ended {
            clear_members_max(&world).await;
            return;
        }
        let mut w = world.lock().expect("world lock");
        if w.violation.is_some() {
            return;
        }
        let mut rng = thread_rng();
        let room = rng.gen_range(0..w.sc.rooms);
        let members: Vec<(String, IpAddr)> = w
            .clients
            .iter()
            .filter(|c| c.room == room)
            .map(|c| (c.name.clone(), c.ip))
            .collect();
        // The newest acknowledged chat messages (not change records, not tombstones).
        let ids: Vec<u64> = w.rooms[room]
            .acked
            .iter()
            .rev()
            .filter(|(_, frame)| {
                Record::parse(frame).is_some_and(|r| matches!(r.kind, Kind::Chat { .. }))
            })
            .take(30)
            .map(|(id, _)| *id)
            .collect();
        // Bans and mutes asked for in this room, to lift.
        let banned: Vec<BanTarget> = w
            .moderation
            .ban_requests
            .iter()
            .filter(|((r, _), (ban, _))| *r == room && ban.is_some())
            .map(|((_, target), _)| match target {
                Banned::User(user) => BanTarget::User(user.clone()),
                Banned::Ip(ip) => BanTarget::Ip(*ip),
            })
            .collect();
        let muted: Vec<String> = w
            .moderation
            .mute_requests
            .keys()
            .filter(|(r, _)| *r == room)
            .map(|(_, user)| user.clone())
            .collect();
        let roll: f64 = rng.gen();
        let action = if roll < 0.3 && !ids.is_empty() {
            ModAction::Delete {
                id: ids[rng.gen_range(0..ids.len())],
            }
        } else if roll < 0.55 && !ids.is_empty() {
            edits += 1;
            let message = MessageText::parse(&format!("m{edits}")).expect("a short text");
            ModAction::Edit {
                id: ids[rng.gen_range(0..ids.len())],
                message,
            }
        } else if roll < 0.67 && !banned.is_empty() && rng.gen_bool(0.7) {
            ModAction::Unban {
                target: banned[rng.gen_range(0..banned.len())].clone(),
            }
        } else if roll < 0.67 && !muted.is_empty() && rng.gen_bool(0.4) {
            ModAction::Unmute {
                user: muted[rng.gen_range(0..muted.len())].clone(),
            }
        } else if roll < 0.8 {
            let mut patch = SettingsPatch::default();
            if rng.gen_bool(0.1) {
                let max = rng.gen_range(2..=5);
                patch.members_max = Some(Some(max).filter(|_| rng.gen_bool(0.6)));
            } else if rng.gen_bool(0.5) {
                patch.read_only = Some(rng.gen_bool(0.5));
            } else if rng.gen_bool(0.75) {
                topics += 1;
                patch.topic = Some(Some(format!("t{topics}")));
            } else {
                patch.topic = Some(None);
            }
            ModAction::Settings(patch)
        } else if members.is_empty() {
            continue;
        } else {
            let (user, ip) = members[rng.gen_range(0..members.len())].clone();
            let for_ms = rng.gen_bool(0.5).then(|| rng.gen_range(1_000..30_000));
            if roll < 0.84 {
                ModAction::Kick { user }
            } else if roll < 0.91 && bans < 6 {
                bans += 1;
                let target = if rng.gen_bool(0.4) {
                    BanTarget::Ip(ip)
                } else {
                    BanTarget::User(user)
                };
                ModAction::Ban { target, for_ms }
            } else {
                ModAction::Mute { user, for_ms }
            }
        };
        let kind = match &action {
            ModAction::Delete { .. } => "mod-delete",
            ModAction::Edit { .. } => "mod-edit",
            ModAction::Kick { .. } => "mod-kick",
            ModAction::Ban {
                target: BanTarget::Ip(_),
                ..
            } => "mod-ban-ip",
            ModAction::Ban { .. } => "mod-ban",
            ModAction::Unban { .. } => "mod-unban",
            ModAction::Unmute { .. } => "mod-unmute",
            ModAction::Settings(patch) if patch.read_only.is_some() => "mod-read-only",
            ModAction::Settings(patch) if patch.members_max.is_some() => "mod-members-max",
            ModAction::Settings(_) => "mod-topic",
            _ => "mod-mute",
        };
        let host = room % w.sc.hosts;
        let Some(inbox) = w.hosts[host].inbox.clone() else {
            continue; // the host is down: the admin API fails
        };
        w.count_fault(kind);
        w.moderation.next_request += 1;
        let request = w.moderation.next_request;
        w.trace(format_args!("moderator r{room} #{request} {action:?}"));
        inbox.push(HostEvent::Moderate {
            room,
            request,
            action,
        });
    }
}

/// Once faults end: the moderator lifts every room's `members_max` (asking again after 6 s
/// while no lifting is confirmed), so that every client can be back for the final checks.
async fn clear_members_max(world: &Shared) {
    let mut asked: BTreeMap<usize, u64> = BTreeMap::new();
    loop {
        {
            let mut w = world.lock().expect("world lock");
            if w.violation.is_some() {
                return;
            }
            let now_ms = w.elapsed_ms();
            let rooms: Vec<usize> = (0..w.sc.rooms)
                .filter(|&room| w.moderation.members_max(room) != Some(None))
                .filter(|room| asked.get(room).is_none_or(|at| now_ms >= at + 6_000))
                .collect();
            for room in rooms {
                let Some(inbox) = w.hosts[room % w.sc.hosts].inbox.clone() else {
                    continue;
                };
                asked.insert(room, now_ms);
                let patch = SettingsPatch {
                    members_max: Some(None),
                    ..SettingsPatch::default()
                };
                w.moderation.next_request += 1;
                let request = w.moderation.next_request;
                w.trace(format_args!(
                    "moderator r{room} #{request} lifts members_max"
                ));
                inbox.push(HostEvent::Moderate {
                    room,
                    request,
                    action: ModAction::Settings(patch),
                });
            }
            if (0..w.sc.rooms).all(|room| w.moderation.members_max(room) == Some(None)) {
                return;
            }
        }
        sleep(std::time::Duration::from_millis(500)).await;
    }
}
