//! The room's side of moderation: who may act, what each action writes, and what clients
//! see once it is durable.
//!
//! ```text
//!   delete / edit ──► a change record (next id) + the target's new record ──durable──► broadcast
//!   ban / mute / settings ──► a room/… record ──durable──► in force (a ban closes sockets)
//!   kick ──► at once: the user's sockets close (nothing is stored)
//! ```
//! A change waits for storage like a message: nothing is visible, and no ban is in force,
//! before the write that holds it is durable; a failed write changes nothing.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{ConnId, Output, PendingEntry, PendingMessage, Phase, Room, StoredMessage};
use crate::auth::Role;
use crate::moderation::{
    self, keys as mod_keys, BanTarget, ChangeRecord, ModAction, ModError, Restriction,
    RestrictionView, Restrictions, RoomSettings, RoomView, CLOSE_BANNED, CLOSE_KICKED,
    CLOSE_REASON_BANNED, CLOSE_REASON_KICKED, ERROR_MUTED, ERROR_READ_ONLY, RESTRICTIONS_MAX,
};
use crate::planted::PlantedBug;
use crate::protocol::{self, Frame};
use crate::room::PublishId;
use crate::storage::{Value, Write};
use crate::time::Timestamp;

/// Who takes a moderation action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    /// The admin API (the admin token): may do everything.
    Admin,
    /// A session of this room: a `moderator` may do everything, an author may delete and
    /// edit their own messages.
    Session(ConnId),
}

/// A chat record as stored, with what moderation needs (the author) and what it adds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ChatRecord {
    pub name: String,
    pub message: String,
    pub timestamp: Timestamp,
    pub id: u64,
    /// The author's token subject, for messages from verified users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The idempotency key the sender gave the message (see `dedupe`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Set once a message has been edited.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub edited: bool,
}

impl ChatRecord {
    pub(super) fn encode(&self) -> Frame {
        Frame::from(serde_json::to_string(self).expect("chat records always serialize"))
    }
}

/// What a record that changes an earlier message does to it once durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MessageChange {
    /// The changed message.
    pub target: u64,
    /// Its new record (a tombstone, or the edited message).
    pub target_frame: Frame,
    /// Whether it is a deletion (earlier edit records of the target become tombstones too).
    pub deletes: bool,
    /// Earlier records rewritten with it (a deleted message's edit records), filled in when
    /// the batch is built.
    pub rewrites: Vec<(u64, Frame)>,
}

/// A change without an id of its own (a ban, a mute, settings), waiting for storage.
#[derive(Debug, Clone)]
pub(super) struct PendingState {
    pub writes: Vec<Write>,
    pub effect: StateEffect,
    pub request: Option<PublishId>,
}

/// What a [`PendingState`] does once durable.
#[derive(Debug, Clone)]
pub(super) enum StateEffect {
    Ban(BanTarget, Restriction),
    Unban(BanTarget),
    Mute(String, Restriction),
    Unmute(String),
    Settings(RoomSettings),
    /// Expired bans and mutes, forgotten to make room for a new one.
    Forget(Vec<BanTarget>, Vec<String>),
}

/// One member of the room, as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    /// The connection.
    pub conn: u64,
    /// The joined name (`None` before the join frame).
    pub name: Option<String>,
    /// Who the session is for bans, mutes and kicks (token subject, else the name).
    pub user: Option<String>,
    /// The client's IP.
    pub ip: IpAddr,
    /// Whether its token grants `moderator`.
    pub moderator: bool,
    /// Whether it is muted now.
    pub muted: bool,
}

/// The keys of a frame that may be a moderation request: a chat frame naming one of them
/// (as a key, so quoted) is parsed once more to tell.
const ACTION_KEY_PATTERNS: [&str; 10] = [
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
];

impl Room {
    /// A moderation action from the admin API. `Ok`: [`Output::Moderated`] follows (at once
    /// for a kick, once durable for anything stored).
    ///
    /// # Errors
    /// Why it was refused; nothing changed.
    pub fn handle_moderate(
        &mut self,
        request: PublishId,
        action: ModAction,
        now: Timestamp,
    ) -> Result<(), ModError> {
        self.moderate(Actor::Admin, Some(request), action, now)
    }

    /// The room's bans, mutes and settings.
    pub fn restrictions(&self) -> &Restrictions {
        &self.restrictions
    }

    /// Every open connection, in connection order, for the admin API.
    pub fn members(&self, now: Timestamp) -> Vec<Member> {
        self.sessions
            .iter()
            .map(|(conn, session)| {
                let user = self.user_key(*conn);
                Member {
                    conn: conn.0,
                    name: match &session.phase {
                        Phase::Joined { name } => Some(name.to_string()),
                        _ => None,
                    },
                    muted: user
                        .as_deref()
                        .is_some_and(|user| self.restrictions.is_muted(user, now)),
                    user,
                    ip: session.ip,
                    moderator: self.is_moderator(*conn),
                }
            })
            .collect()
    }

    /// Everything the admin API shows of the room at `now` (restrictions that expired are
    /// left out).
    pub fn admin_view(&self, now: Timestamp) -> RoomView {
        let view = |user: Option<String>, ip: Option<IpAddr>, r: &Restriction| RestrictionView {
            user,
            ip,
            until: r.until,
        };
        let expired_too = self.config.planted(PlantedBug::AdminViewListsExpiredBans);
        let bans = self
            .restrictions
            .bans
            .iter()
            .filter(|(_, r)| r.holds(now) || expired_too);
        let mutes = self.restrictions.mutes.iter().filter(|(_, r)| r.holds(now));
        RoomView {
            last_id: self.durable_id,
            connections: self.sessions.len(),
            members: self.members(now),
            bans: bans
                .map(|(target, r)| match target {
                    BanTarget::User(user) => view(Some(user.clone()), None, r),
                    BanTarget::Ip(ip) => view(None, Some(*ip), r),
                })
                .collect(),
            mutes: mutes
                .map(|(user, r)| view(Some(user.clone()), None, r))
                .collect(),
            settings: RoomSettings {
                topic: self
                    .restrictions
                    .settings
                    .topic
                    .clone()
                    .filter(|_| !self.config.planted(PlantedBug::AdminViewDropsTopic)),
                ..self.restrictions.settings.clone()
            },
        }
    }

    /// How many sessions have joined.
    pub fn member_count(&self) -> usize {
        self.roster_len()
    }

    /// A joined session's frame that may be a moderation request: `true` if it was one
    /// (and has been handled).
    pub(super) fn handle_moderation_frame(
        &mut self,
        conn: ConnId,
        text: &str,
        now: Timestamp,
    ) -> bool {
        if !ACTION_KEY_PATTERNS.iter().any(|key| text.contains(key)) {
            return false;
        }
        let Ok(serde_json::Value::Object(object)) = serde_json::from_str(text) else {
            return false;
        };
        if !moderation::is_action(&object) {
            return false;
        }
        let result = moderation::decode_object(&object)
            .and_then(|action| self.moderate(Actor::Session(conn), None, action, now));
        if let Err(error) = result {
            self.send_error(conn, &error.to_string());
        }
        true
    }

    /// Whether `conn` may chat under the room's settings and its restrictions (sends the
    /// error if not).
    pub(super) fn check_restrictions(&mut self, conn: ConnId, now: Timestamp) -> bool {
        let muted = self
            .user_key(conn)
            .is_some_and(|user| self.restrictions.is_muted(&user, now));
        let error = if muted {
            ERROR_MUTED
        } else if self.restrictions.settings.read_only
            && (!self.is_moderator(conn)
                || self
                    .config
                    .planted(PlantedBug::ModeratorNotExemptFromReadOnly))
        {
            ERROR_READ_ONLY
        } else {
            return true;
        };
        self.send_error(conn, error);
        false
    }

    /// Whether a new connection from `ip` is banned: then it is closed at once.
    pub(super) fn refuse_banned_ip(&mut self, conn: ConnId, ip: IpAddr, now: Timestamp) -> bool {
        if !self.restrictions.is_banned(None, ip, now) {
            return false;
        }
        self.close_session(conn, CLOSE_BANNED, CLOSE_REASON_BANNED);
        true
    }

    /// Whether `conn`, about to join as `user`, is banned or would overfill the room: then
    /// it gets the error and is closed.
    pub(super) fn refuse_join(&mut self, conn: ConnId, user: &str, now: Timestamp) -> bool {
        let ip = self.sessions[&conn].ip;
        if self.restrictions.is_banned(Some(user), ip, now) {
            self.send_error(conn, CLOSE_REASON_BANNED);
            self.close_session(conn, CLOSE_BANNED, CLOSE_REASON_BANNED);
            return true;
        }
        let members_max = self.restrictions.settings.members_max;
        let joined = self.roster_len();
        if members_max.is_some_and(|max| joined >= max as usize) {
            self.send_error(conn, super::CLOSE_REASON_ROOM_FULL);
            self.close_session(conn, super::CLOSE_ROOM_FULL, super::CLOSE_REASON_ROOM_FULL);
            return true;
        }
        false
    }

    /// The record a chat message is stored and broadcast as.
    pub(super) fn chat_record(&self, conn: Option<ConnId>, record: ChatRecord) -> Frame {
        let user = conn
            .and_then(|conn| self.identity(conn))
            .map(|identity| identity.sub.clone());
        ChatRecord { user, ..record }.encode()
    }

    /// Restores one `room/…` record.
    pub(super) fn restore_state(&mut self, key: &str, value: &Value) -> Result<(), ()> {
        let parsed = mod_keys::parse(key).ok_or(())?;
        match parsed {
            mod_keys::StateKey::Settings => {
                self.restrictions.settings = serde_json::from_str(value).map_err(|_| ())?;
                if self
                    .config
                    .planted(PlantedBug::ReadOnlyNotEnforcedAfterRestore)
                {
                    self.restrictions.settings.read_only = false;
                }
                if self
                    .config
                    .planted(PlantedBug::MembersMaxNotEnforcedAfterRestore)
                {
                    self.restrictions.settings.members_max = None;
                }
                if self
                    .config
                    .planted(PlantedBug::HistoryMaxNotEnforcedAfterRestore)
                {
                    self.restrictions.settings.history_max = None;
                }
                if self
                    .config
                    .planted(PlantedBug::HistoryAgeNotEnforcedAfterRestore)
                {
                    self.restrictions.settings.history_max_age_ms = None;
                }
            }
            mod_keys::StateKey::Ban(target) => {
                let restriction = serde_json::from_str(value).map_err(|_| ())?;
                if !self.config.planted(PlantedBug::BanNotEnforcedAfterRestore) {
                    self.restrictions.bans.insert(target, restriction);
                }
            }
            mod_keys::StateKey::Mute(user) => {
                let restriction = serde_json::from_str(value).map_err(|_| ())?;
                if !self.config.planted(PlantedBug::MuteNotEnforcedAfterRestore) {
                    self.restrictions.mutes.insert(user, restriction);
                }
            }
        }
        Ok(())
    }

    /// Builds the extra writes of a change record as its batch is assembled: the target's
    /// new record and, for a deletion, tombstones over the target's edit records (retained,
    /// or earlier in this batch).
    pub(super) fn change_writes(entries: &mut [PendingEntry], history: &[&StoredMessage]) {
        for index in 0..entries.len() {
            let PendingEntry::Message(PendingMessage {
                change: Some(change),
                ..
            }) = &entries[index]
            else {
                continue;
            };
            if !change.deletes {
                continue;
            }
            let target = change.target;
            let mut rewrites = Vec::new();
            for stored in history {
                if edits_target(&stored.frame, target) {
                    rewrites.push((stored.id, tombstone(target, stored.id, stored.timestamp)));
                }
            }
            for earlier in &mut entries[..index] {
                if let PendingEntry::Message(pending) = earlier {
                    if edits_target(&pending.message.frame, target) {
                        let message = &mut pending.message;
                        message.frame = tombstone(target, message.id, message.timestamp);
                    }
                }
            }
            if let PendingEntry::Message(PendingMessage {
                change: Some(change),
                ..
            }) = &mut entries[index]
            {
                change.rewrites = rewrites;
            }
        }
    }

    /// A durable change record: the target (and its rewrites) change in history.
    pub(super) fn apply_message_change(&mut self, change: MessageChange) {
        let front = self.history.front().map_or(u64::MAX, |message| message.id);
        let rewrites = change
            .rewrites
            .into_iter()
            .chain([(change.target, change.target_frame)]);
        for (id, frame) in rewrites {
            if let Some(stored) = id
                .checked_sub(front)
                .and_then(|index| self.history.get_mut(index as usize))
            {
                stored.frame = frame;
            }
        }
    }

    /// A durable ban, mute or settings change comes into force.
    pub(super) fn apply_state(&mut self, effect: StateEffect, now: Timestamp) {
        match effect {
            StateEffect::Ban(target, restriction) => {
                self.restrictions.bans.insert(target.clone(), restriction);
                let banned: Vec<ConnId> = self
                    .sessions
                    .iter()
                    .filter(|(conn, session)| match &target {
                        BanTarget::Ip(_) if self.config.planted(PlantedBug::IpBanKeepsSockets) => {
                            false
                        }
                        BanTarget::Ip(ip) => session.ip == *ip,
                        BanTarget::User(user) => {
                            self.user_key(**conn).as_deref() == Some(user.as_str())
                        }
                    })
                    .map(|(conn, _)| *conn)
                    .collect();
                for conn in banned {
                    self.close_session(conn, CLOSE_BANNED, CLOSE_REASON_BANNED);
                }
            }
            StateEffect::Unban(target) => {
                if !self.config.planted(PlantedBug::UnbanNotApplied) {
                    self.restrictions.bans.remove(&target);
                }
            }
            StateEffect::Mute(user, restriction) => {
                self.restrictions.mutes.insert(user, restriction);
            }
            StateEffect::Unmute(user) => {
                if !self.config.planted(PlantedBug::UnmuteNotApplied) {
                    self.restrictions.mutes.remove(&user);
                }
            }
            StateEffect::Forget(bans, mutes) => {
                for target in bans {
                    self.restrictions.bans.remove(&target);
                }
                for user in mutes {
                    self.restrictions.mutes.remove(&user);
                }
            }
            StateEffect::Settings(settings) => {
                let topic_changed = settings.topic != self.restrictions.settings.topic;
                self.restrictions.settings = settings;
                if topic_changed && !self.config.planted(PlantedBug::TopicNotBroadcast) {
                    let frame =
                        moderation::encode_topic(self.restrictions.settings.topic.as_deref());
                    self.broadcast(frame);
                }
                self.trim_history(now);
            }
        }
    }

    /// The history this room keeps under its settings: at most `history_max` messages, none
    /// older than `history_max_age_ms`. Storage follows with the next batch. Hosts call it
    /// after [`Room::restore`] (which cannot know the time); joins and timeouts call it too.
    pub fn trim_history(&mut self, now: Timestamp) {
        let settings = &self.restrictions.settings;
        let count_max = settings
            .history_max
            .map_or(usize::MAX, |max| max as usize)
            .min(self.config.history_retained_max);
        let oldest_kept = settings
            .history_max_age_ms
            .map_or(Timestamp::ZERO, |age| Timestamp(now.0.saturating_sub(age)));
        while let Some(front) = self.history.front() {
            if self.history.len() <= count_max && front.timestamp >= oldest_kept {
                break;
            }
            self.history.pop_front();
        }
        let oldest = self
            .history
            .front()
            .map_or(self.durable_id + 1, |message| message.id);
        self.recent_keys.forget_below(oldest);
    }

    /// When the oldest retained message ages out, if the room keeps messages by age (a
    /// resident room's host wakes it then; an evicted one trims when it is restored).
    pub fn history_age_deadline(&self) -> Option<Timestamp> {
        let age = self.restrictions.settings.history_max_age_ms?;
        let oldest = self.history.front()?;
        Some(oldest.timestamp.plus_millis(age).plus_millis(1))
    }

    fn moderate(
        &mut self,
        actor: Actor,
        request: Option<PublishId>,
        action: ModAction,
        now: Timestamp,
    ) -> Result<(), ModError> {
        self.authorize(actor, &action)?;
        if let ModAction::Kick { user } = &action {
            let kicked: Vec<ConnId> = self
                .sessions
                .keys()
                .copied()
                .filter(|conn| self.user_key(*conn).as_deref() == Some(user.as_str()))
                .collect();
            for conn in kicked {
                self.close_session(conn, CLOSE_KICKED, CLOSE_REASON_KICKED);
            }
            if let Some(request) = request {
                self.outputs.push_back(Output::Moderated { request });
            }
            return Ok(());
        }
        if self.pending_len() >= self.config.pending_messages_max {
            return Err(ModError::Busy);
        }
        let restriction = |for_ms: Option<u64>| Restriction {
            until: for_ms.map(|ms| now.plus_millis(ms)),
        };
        let state = |write, effect| PendingState {
            writes: vec![write],
            effect,
            request,
        };
        let put = |key: String, value: String| Write::Put {
            key,
            value: Value::from(value),
        };
        let pending = match action {
            ModAction::Delete { id } => return self.accept_change(id, None, request, now),
            ModAction::Edit { id, message } => {
                return self.accept_change(id, Some(message.into()), request, now)
            }
            ModAction::Kick { .. } => unreachable!("handled above"),
            ModAction::Ban { target, for_ms } => {
                self.make_room_for_restriction(self.restrictions.bans.contains_key(&target), now)?;
                let restriction = restriction(for_ms);
                state(
                    put(mod_keys::ban(&target), to_json(&restriction)),
                    StateEffect::Ban(target, restriction),
                )
            }
            ModAction::Unban { target } => state(
                Write::Delete {
                    key: mod_keys::ban(&target),
                },
                StateEffect::Unban(target),
            ),
            ModAction::Mute { user, for_ms } => {
                self.make_room_for_restriction(self.restrictions.mutes.contains_key(&user), now)?;
                let restriction = restriction(for_ms);
                state(
                    put(mod_keys::mute(&user), to_json(&restriction)),
                    StateEffect::Mute(user, restriction),
                )
            }
            ModAction::Unmute { user } => state(
                Write::Delete {
                    key: mod_keys::mute(&user),
                },
                StateEffect::Unmute(user),
            ),
            ModAction::Settings(patch) => {
                let settings = self.pending_settings().patched(&patch);
                state(
                    put(mod_keys::SETTINGS.to_owned(), to_json(&settings)),
                    StateEffect::Settings(settings),
                )
            }
        };
        self.pending.push(PendingEntry::State(pending));
        Ok(())
    }

    /// Accepts a deletion (`text: None`) or an edit of message `target` as the next record.
    fn accept_change(
        &mut self,
        target: u64,
        text: Option<String>,
        request: Option<PublishId>,
        now: Timestamp,
    ) -> Result<(), ModError> {
        let original = self.live_message(target).ok_or(ModError::NoSuchMessage)?;
        let timestamp = self.next_timestamp(now);
        self.last_id += 1;
        let id = self.last_id;
        let (record, target_frame) = match text {
            None => (
                ChangeRecord::Deleted {
                    deleted: target,
                    id,
                    at: timestamp,
                },
                tombstone(target, target, original.timestamp),
            ),
            Some(text) => (
                ChangeRecord::Edited {
                    edited: target,
                    message: text.clone(),
                    id,
                    at: timestamp,
                },
                ChatRecord {
                    message: text,
                    edited: true,
                    id: if self.config.planted(PlantedBug::EditReordersId) {
                        id
                    } else {
                        original.id
                    },
                    ..original
                }
                .encode(),
            ),
        };
        let deletes = matches!(record, ChangeRecord::Deleted { .. });
        self.pending.push(PendingEntry::Message(PendingMessage {
            message: StoredMessage {
                id,
                timestamp,
                frame: record.encode(),
            },
            sender: None,
            duplicate_senders: Vec::new(),
            publish: None,
            moderation: request,
            change: Some(MessageChange {
                target,
                target_frame,
                deletes,
                rewrites: Vec::new(),
            }),
        }));
        Ok(())
    }

    /// Message `id` as it stands: retained, a chat message, and not deleted (durably or by
    /// a change still waiting for storage).
    pub(super) fn live_message(&self, id: u64) -> Option<ChatRecord> {
        let front = self.history.front()?.id;
        let stored = self
            .history
            .get(usize::try_from(id.checked_sub(front)?).ok()?)?;
        let record: ChatRecord = serde_json::from_str(&stored.frame).ok()?;
        let deleted_meanwhile = self.waiting_entries().any(|entry| {
            matches!(entry, PendingEntry::Message(PendingMessage {
                change: Some(MessageChange { target, deletes: true, .. }),
                ..
            }) if *target == id)
        });
        (!deleted_meanwhile).then_some(record)
    }

    /// The settings as they will be once every change waiting for storage is durable.
    fn pending_settings(&self) -> RoomSettings {
        self.waiting_entries()
            .filter_map(|entry| match entry {
                PendingEntry::State(PendingState {
                    effect: StateEffect::Settings(settings),
                    ..
                }) => Some(settings.clone()),
                _ => None,
            })
            .last()
            .unwrap_or_else(|| self.restrictions.settings.clone())
    }

    /// Refuses a new ban or mute beyond [`RESTRICTIONS_MAX`] (counting those waiting for
    /// storage), after forgetting the expired ones in the same batch if that makes room:
    /// restore reads at most that many, so the bound is never crossed.
    fn make_room_for_restriction(
        &mut self,
        replaces: bool,
        now: Timestamp,
    ) -> Result<(), ModError> {
        let waiting = self
            .waiting_entries()
            .filter(|entry| {
                matches!(
                    entry,
                    PendingEntry::State(PendingState {
                        effect: StateEffect::Ban(..) | StateEffect::Mute(..),
                        ..
                    })
                )
            })
            .count();
        if replaces || self.restrictions.len() + waiting < RESTRICTIONS_MAX {
            return Ok(());
        }
        let bans: Vec<BanTarget> = self
            .restrictions
            .bans
            .iter()
            .filter(|(_, r)| !r.holds(now))
            .map(|(t, _)| t.clone())
            .collect();
        let mutes: Vec<String> = self
            .restrictions
            .mutes
            .iter()
            .filter(|(_, r)| !r.holds(now))
            .map(|(u, _)| u.clone())
            .collect();
        let expired = bans.len() + mutes.len();
        if self.restrictions.len() + waiting - expired >= RESTRICTIONS_MAX {
            return Err(ModError::TooManyRestrictions);
        }
        let writes = bans
            .iter()
            .map(mod_keys::ban)
            .chain(mutes.iter().map(|user| mod_keys::mute(user)))
            .map(|key| Write::Delete { key })
            .collect();
        self.pending.push(PendingEntry::State(PendingState {
            writes,
            effect: StateEffect::Forget(bans, mutes),
            request: None,
        }));
        Ok(())
    }

    fn authorize(&self, actor: Actor, action: &ModAction) -> Result<(), ModError> {
        let Actor::Session(conn) = actor else {
            return Ok(());
        };
        if self.is_moderator(conn) || self.config.planted(PlantedBug::AnyoneMayModerate) {
            return Ok(());
        }
        let author = action
            .target_message()
            .and_then(|id| self.live_message(id))
            .and_then(|record| record.user);
        let sub = self.identity(conn).map(|identity| identity.sub.as_str());
        match (author, sub) {
            (Some(author), Some(sub)) if author == sub => Ok(()),
            _ => Err(ModError::NotAllowed),
        }
    }

    fn is_moderator(&self, conn: ConnId) -> bool {
        self.identity(conn)
            .is_some_and(|identity| identity.role >= Role::Moderator)
    }

    /// Who `conn` is for bans, mutes, kicks and idempotency keys: its token subject, else
    /// its joined name.
    pub(super) fn user_key(&self, conn: ConnId) -> Option<String> {
        let session = self.sessions.get(&conn)?;
        if let Some(identity) = &session.identity {
            return Some(identity.sub.clone());
        }
        match &session.phase {
            Phase::Joined { name } => Some(name.to_string()),
            _ => None,
        }
    }

    /// Closes `conn` for the room: it leaves the roster now (others see its `quit`) and gets
    /// nothing more before the close.
    fn close_session(&mut self, conn: ConnId, code: u16, reason: &'static str) {
        let Some(session) = self.sessions.get(&conn) else {
            return;
        };
        if let Phase::Joined { name } = &session.phase {
            let quit = protocol::encode_quit(name);
            self.set_phase(conn, Phase::Closing);
            self.roster_cache = None;
            if let Some(session) = self.sessions.get_mut(&conn) {
                session.joined_frame = None;
            }
            self.broadcast(quit);
        } else {
            self.set_phase(conn, Phase::Closing);
        }
        self.outputs.push_back(Output::Close { conn, code, reason });
    }
}

/// Whether `frame` is an edit record of message `target`.
fn edits_target(frame: &str, target: u64) -> bool {
    matches!(ChangeRecord::decode(frame), Some(ChangeRecord::Edited { edited, .. }) if edited == target)
}

/// The record that replaces record `id` once message `target` is deleted.
fn tombstone(target: u64, id: u64, at: Timestamp) -> Frame {
    ChangeRecord::Deleted {
        deleted: target,
        id,
        at,
    }
    .encode()
}

/// Settings and restrictions as stored (plain structs: serializing cannot fail).
fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("moderation state always serializes")
}

#[cfg(test)]
#[path = "moderation_tests.rs"]
mod tests;
