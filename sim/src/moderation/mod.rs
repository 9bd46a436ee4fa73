//! Moderation under faults (issues 14 and 18): a moderator deletes and edits retained
//! messages, kicks, bans (by name or IP), mutes, unbans and unmutes clients, and sets the
//! room read-only or not and its topic, through the admin API of the room's host, in half
//! of the runs (with auth or without), while every other fault goes on.
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
//!   unban after the newest ban confirmed, and never a moderator session's ban target) is
//!   closed as banned (4011).
//! - `muted-not-written`: a chat message that reaches the room while its sender's mute
//!   holds (and will hold for longer than the room may keep the frame waiting) is never
//!   written.
//! - `banned-ip-refused`: a connection from an IP whose ban surely holds is closed at once.
//! - `unmuted-may-chat`: once an unmute is confirmed (and no mute of the user asked since,
//!   nor ever by a moderator session), the user never gets the mute's error.
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
//! In token runs, sessions may moderate over their sockets too (`mod_sessions`): see
//! [`session_attempt`]. Checks: `only-moderators-moderate` (a frame docs/PROTOCOL.md says
//! must be refused gets `Only moderators may do that.` and changes nothing) and
//! `moderators-not-refused` (a moderator is never refused as not allowed, nor as
//! read-only). What their bans and mutes put in force is learned from the durable writes
//! ([`state_durable`]). The admin moderator also sets `members_max`: `members-max`, and
//! the retention (`history_max`, `history_max_age_ms`), which [`crate::retention`] models
//! from the confirmations and restores (the checks of the held history follow it).
//!
//! The admin API's read routes are read and judged in `reads.rs` (`admin-read-*`,
//! `admin-summary`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use edgechat_core::moderation::{BanTarget, ModAction};
use edgechat_core::protocol::Frame;
use edgechat_core::room::ConnId;
use serde_json::Value as Json;

use crate::world::World;

mod admin;
mod reads;
mod record;
mod sessions;

pub(crate) use admin::moderator_main;
pub use reads::{read_admin, read_summaries, Figures, HeldSocket};
pub use record::{Kind, Record};
use sessions::session_action;
pub use sessions::{session_answered, session_attempt, session_overdue, Attempt, NOT_ALLOWED};

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
    /// Targets a moderator session asked to ban, per room: never surely unbanned again. A
    /// session's frame may reach the room after an unban the admin asked later was
    /// confirmed (it waits in flight or for its limiter), so request order says nothing.
    session_banned: BTreeSet<(usize, Banned)>,
    /// Users a moderator session asked to mute, per room: never surely unmuted again (as
    /// for bans).
    session_muted: BTreeSet<(usize, String)>,
    /// The newest settings request handled that sets `members_max`, per room.
    members_requests: BTreeMap<usize, (u64, Option<u32>)>,
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
    /// newest ban asked for was confirmed, and no moderator session ever asked to ban it.
    fn surely_unbanned(&self, room: usize, target: Banned) -> bool {
        if self.session_banned.contains(&(room, target.clone())) {
            return false;
        }
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
        let session_muted = w.moderation.session_muted.contains(&(room, user.clone()));
        if !session_muted
            && unmuted.is_some_and(|(request, unmute)| {
                *unmute && w.moderation.confirmed.contains(request)
            })
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
    if w.moderation.read_only(room) == Some(true) && !may_moderate(w, conn) {
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

/// Whether the session on `conn` may be a moderator (exempt from read-only): a token
/// holder that may send, unless sessions moderate (then the moderators are known; in other
/// token runs some tokens spell `write` as `moderator`).
fn may_moderate(w: &World, conn: ConnId) -> bool {
    let Some(tokens) = w.tokens.as_ref() else {
        return false;
    };
    match tokens.conns.get(&conn) {
        None => false,
        Some(access) if w.sc.mod_sessions => tokens.is_moderator(access.client),
        Some(access) => access.may_send,
    }
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
            if patch.history_max.is_some() || patch.history_max_age_ms.is_some() {
                w.count_fault("retention-confirmed");
            }
            let retained = w.sc.room.history_retained_max as u64;
            let oracle = &mut w.rooms[room];
            oracle.retention.confirmed(
                &oracle.acked,
                retained,
                request,
                patch.history_max,
                patch.history_max_age_ms,
            );
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
    let settings = stored
        .iter()
        .find(|(key, _)| key == "room/settings")
        .map_or((None, None), |(_, value)| {
            crate::retention::stored_settings(value)
        });
    let retained = w.sc.room.history_retained_max as u64;
    let oracle = &mut w.rooms[room];
    oracle.retention.restored(&oracle.acked, retained, settings);
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
            let retention = &mut w.rooms[room].retention;
            retention.asked(request, patch.history_max, patch.history_max_age_ms);
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
