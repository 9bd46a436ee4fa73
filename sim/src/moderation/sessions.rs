//! Moderator sessions (token runs): clients moderate over their own sockets, moderators and
//! verified authors allowed, everyone else refused (`only-moderators-moderate`,
//! `moderators-not-refused`).

use std::net::IpAddr;

use edgechat_core::room::ConnId;
use madsim::rand::{thread_rng, Rng};

use super::{edit_asked, user_key, Banned, Kind, Record};
use crate::json::Object;
use crate::shadow::RATE_LIMITED;
use crate::world::World;

/// The refusal of a session's moderation frame without the right to it.
pub const NOT_ALLOWED: &str = "Only moderators may do that.";

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

/// Whether a frame is one of the moderation frames sessions send here. The action names are
/// spelled from docs/PROTOCOL.md, not taken from core (whose `ACTION_KEY_PATTERNS` lists the
/// same keys): the oracle is written independently of the code it checks.
pub(super) fn session_action(text: &str) -> bool {
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
                w.moderation.session_banned.insert((room, target.clone()));
                let asked = w.moderation.ban_requests.entry((room, target));
                asked.or_default().0 = Some(request);
            }
            (frame, moderator)
        }
        (_, Some((user, _))) if roll < 0.67 => {
            w.count_fault("session-mod-mute");
            if moderator {
                w.moderation.session_muted.insert((room, user.clone()));
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
pub fn session_overdue(w: &mut World, index: usize, conn: ConnId, seq: u64) {
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
