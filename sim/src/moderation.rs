//! Moderation under faults (issue 14): a moderator deletes and edits retained messages,
//! kicks, bans and mutes clients through the admin API of the room's host, in a quarter of
//! the runs (those without auth), while every other fault goes on.
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
//!   connection of the banned user.
//! - `muted-not-written`: a chat message that reaches the room while its sender's mute
//!   holds (and will hold for longer than the room may keep the frame waiting) is never
//!   written.

use std::collections::{BTreeMap, BTreeSet};

use edgechat_core::moderation::{BanTarget, ModAction, CLOSE_REASON_BANNED};
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
    /// Bans asked for, by (room, user).
    bans_asked: BTreeSet<(usize, String)>,
    /// Bans in force, by (room, user).
    bans: BTreeMap<(usize, String), Option<u64>>,
    /// Mutes in force, by (room, user).
    mutes: BTreeMap<(usize, String), Option<u64>>,
    /// Chat texts that reached the room while their sender's mute held, with the sender:
    /// never written (unless another mute of the sender replaces that one meanwhile).
    muted_texts: BTreeMap<usize, BTreeMap<String, String>>,
}

impl ModOracle {
    /// Whether the moderator asked to delete message `id` of `room`.
    pub fn delete_asked(&self, room: usize, id: u64) -> bool {
        self.requests.values().any(|(r, action, _)| {
            *r == room && matches!(action, ModAction::Delete { id: target } if *target == id)
        })
    }

    /// Whether `client` was ever the target of a ban (left out of liveness: it may be
    /// refused until the end).
    pub fn ever_banned(&self, room: usize, name: &str) -> bool {
        self.bans_asked.contains(&(room, name.to_owned()))
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

/// A frame leaves the room for `conn`: no deleted text, nothing for a banned user.
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
    let Some(client) = w.conns.get(&conn).map(|info| info.client) else {
        return;
    };
    let user = w.clients[client].name.clone();
    let Some(until) = w.moderation.bans.get(&(room, user.clone())).copied() else {
        return;
    };
    let holds = surely_holds(w, room, until, 100);
    let ban_error = format!(r#"{{"error":"{CLOSE_REASON_BANNED}"}}"#);
    if holds && **frame != *ban_error {
        let detail = format!("room {room} sends banned {user} on {conn:?}: {frame}");
        w.violate("banned-no-frames", detail);
    }
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
    let user = w.clients[client].name.clone();
    let Some(until) = w.moderation.mutes.get(&(room, user)).copied() else {
        return;
    };
    // The room may hold a frame for its limiter answers before it decides.
    let margin = edgechat_core::room::PIPELINE_WAIT_MAX_MS + 1_000;
    if !surely_holds(w, room, until, margin) {
        return;
    }
    let message = serde_json::from_str::<Json>(text)
        .ok()
        .and_then(|json| Some(json.get("message")?.as_str()?.to_owned()));
    if let Some(message) = message {
        w.count_fault("mod-muted-sent");
        let muted = w.moderation.muted_texts.entry(room).or_default();
        muted.insert(message, w.clients[client].name.clone());
    }
}

/// Another mute of `user` came into force: what the room decides about the user's texts
/// that arrived under the old one is no longer known.
fn forget_muted_texts(w: &mut World, room: usize, user: &str) {
    if let Some(muted) = w.moderation.muted_texts.get_mut(&room) {
        muted.retain(|_, sender| sender != user);
    }
}

/// A room confirmed admin request `request`: durable and in force.
pub fn moderated(w: &mut World, room: usize, request: u64) {
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
    if let ModAction::Ban {
        target: BanTarget::User(user),
        for_ms,
    } = action
    {
        let until = for_ms.map(|ms| asked_at + ms);
        w.moderation.bans.insert((room, user), until);
    } else if let ModAction::Mute { user, for_ms } = action {
        let until = for_ms.map(|ms| asked_at + ms);
        if w.moderation.mutes.insert((room, user.clone()), until) != Some(until) {
            forget_muted_texts(w, room, &user);
        }
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
                w.moderation.bans.insert((room, user.to_owned()), until);
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

/// The host handles request `request` now (its clock: `now_ms`): remember what it asks.
pub fn handling(w: &mut World, room: usize, request: u64, action: &ModAction, now_ms: u64) {
    w.moderation
        .requests
        .insert(request, (room, action.clone(), now_ms));
    match action {
        ModAction::Edit { id, message } => {
            let text: &str = message.as_ref();
            w.moderation
                .texts
                .entry((room, *id))
                .or_default()
                .insert(text.to_owned());
            if w.moderation.deleted.contains(&(room, *id)) {
                let forbidden = w.moderation.forbidden.entry(room).or_default();
                forbidden.insert(text.to_owned(), *id);
            }
        }
        ModAction::Ban {
            target: BanTarget::User(user),
            ..
        } => {
            w.moderation.bans_asked.insert((room, user.clone()));
        }
        _ => {}
    }
}

/// The moderator: acts at random times during the fault phase.
pub(crate) async fn moderator_main(world: Shared, fault_ms: u64) {
    let mut edits = 0u64;
    let mut bans = 0u32;
    loop {
        let pause = thread_rng().gen_range(500..6_000);
        sleep(std::time::Duration::from_millis(pause)).await;
        let mut w = world.lock().expect("world lock");
        if w.violation.is_some() || w.elapsed_ms() >= fault_ms {
            return;
        }
        let mut rng = thread_rng();
        let room = rng.gen_range(0..w.sc.rooms);
        let users: Vec<String> = w
            .clients
            .iter()
            .filter(|c| c.room == room)
            .map(|c| c.name.clone())
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
        let roll: f64 = rng.gen();
        let action = if roll < 0.4 && !ids.is_empty() {
            ModAction::Delete {
                id: ids[rng.gen_range(0..ids.len())],
            }
        } else if roll < 0.75 && !ids.is_empty() {
            edits += 1;
            let message = MessageText::parse(&format!("m{edits}")).expect("a short text");
            ModAction::Edit {
                id: ids[rng.gen_range(0..ids.len())],
                message,
            }
        } else if users.is_empty() {
            continue;
        } else {
            let user = users[rng.gen_range(0..users.len())].clone();
            let for_ms = rng.gen_bool(0.5).then(|| rng.gen_range(1_000..30_000));
            if roll < 0.85 {
                ModAction::Kick { user }
            } else if roll < 0.92 && bans < 2 {
                bans += 1;
                ModAction::Ban {
                    target: BanTarget::User(user),
                    for_ms,
                }
            } else {
                ModAction::Mute { user, for_ms }
            }
        };
        let kind = match &action {
            ModAction::Delete { .. } => "mod-delete",
            ModAction::Edit { .. } => "mod-edit",
            ModAction::Kick { .. } => "mod-kick",
            ModAction::Ban { .. } => "mod-ban",
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
