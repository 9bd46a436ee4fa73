//! The admin API's read routes, read as the server reads them and judged by the oracle.
//!
//! After a share of a host's inputs (with the history and presence reads, in every run), an
//! operator reads:
//! - `GET /api/room/<room>/admin`: the room's [`Room::admin_view`] at the host's `now`,
//!   encoded by core's answer encoder (`http::answer::room_view`, what the route answers),
//!   then parsed here as plain JSON (no core type is used to judge it);
//! - `GET /api/admin/rooms`: the figures a room gives the server's list (`RoomMsg::Summarize`
//!   in `transports/server/src/room.rs`: `member_count` and `last_durable_id` of a resident
//!   room, nothing of a hibernated one, which is not woken), for every room of the host,
//!   encoded by `http::answer::room_summaries`. The list itself (which rooms, their ids and
//!   labels, the socket count) is the server adapter's own; here the host's sockets stand for
//!   its count.
//!
//! Claims (each judged only when the oracle knows the answer surely):
//! - `admin-read-last-id`: `last_id` is the newest acknowledged id (what `history-read`
//!   also relies on: the model's acknowledged records are exactly the durable ones).
//! - `admin-read-members`: `connections` is the number of sockets the host holds for the
//!   room; `members` lists them all (joined or not) in connection order, each with its
//!   client's `ip`; a joined one (not closing) with the name it must show and its user key
//!   (`user-<c>` for a token holder, else the name), one still joining with no name;
//!   `moderator` where the oracle knows the role (no token: false; sessions' runs: the
//!   fixed moderators; a read grant: false); `muted` exactly when a mute of its `user` in
//!   force holds at `now`.
//! - `admin-read-restrictions`: `bans` and `mutes` are exactly the restrictions in force
//!   (what the oracle learned from confirmations, durable writes and restores) that hold at
//!   the read's `now` (`now < until`, the boundary included), users then IPs, with their
//!   `until`; IP bans by `ip`. At the boundary too: a timed ban and a timed mute in force
//!   are listed by a view at `until - 1` and not by one at `until`.
//! - `admin-read-settings`: `read_only`, `topic`, `members_max`, `history_max` and
//!   `history_max_age_ms` each equal what the newest request that set it made them, when
//!   that request was confirmed (none asked: the default); a room whose settings a session
//!   may have changed makes no `read_only` or topic claim.
//! - `admin-summary`: a resident room reports `members` = its joined sockets (not
//!   closing), `last_id` = the newest acknowledged id, `resident: true`; a hibernated one
//!   `members: null`, `last_id: null`, `resident: false` and is still hibernated after.

use std::net::IpAddr;

use edgechat_core::http::answer;
use edgechat_core::moderation::{ModAction, RoomSummary, SettingsPatch};
use edgechat_core::room::{ConnId, Room};
use edgechat_core::Timestamp;
use serde_json::Value as Json;

use super::{user_key, Banned, ModOracle};
use crate::world::World;

/// A socket the host holds for a room, as the host knows it.
#[derive(Debug, Clone, Copy)]
pub struct HeldSocket {
    /// The connection.
    pub conn: ConnId,
    /// Its join completed (`ready` sent) and the room has not closed it.
    pub joined: bool,
    /// The room closed it (still held until the close comes back).
    pub closing: bool,
}

/// The figures a room of the host gives the rooms list (`None`: hibernated).
#[derive(Debug, Clone, Copy)]
pub struct Figures {
    /// The room.
    pub room: usize,
    /// `(member_count, last_durable_id)` of a resident room.
    pub resident: Option<(usize, u64)>,
    /// Sockets the host holds for it (the adapter's own count).
    pub connections: usize,
    /// Joined sockets, not closing.
    pub joined: usize,
    /// Still hibernated after the figures were taken.
    pub still_dormant: bool,
}

/// `GET /api/room/<room>/admin` at `now`: the view core gives, encoded as the route encodes
/// it, judged against the oracle.
pub fn read_admin(w: &mut World, room: usize, r: &Room, now: Timestamp, sockets: &[HeldSocket]) {
    let body = answer::room_view(&r.admin_view(now)).body.into_owned();
    w.count_fault("admin-reads");
    let Ok(json) = serde_json::from_str::<Json>(&body) else {
        w.violate(
            "admin-read-members",
            format!("room {room}: not JSON: {body}"),
        );
        return;
    };
    let newest = w.rooms[room].newest_acked();
    if json.get("last_id").and_then(Json::as_u64) != Some(newest) {
        let detail = format!("room {room}: admin view {body}, newest acknowledged {newest}");
        w.violate("admin-read-last-id", detail);
        return;
    }
    if let Err(why) = check_members(w, room, now, &json, sockets) {
        w.violate(
            "admin-read-members",
            format!("room {room}: {why}; view {body}"),
        );
        return;
    }
    if let Err(why) = check_restrictions(w, room, now, &json) {
        w.violate(
            "admin-read-restrictions",
            format!("room {room} at {}: {why}; view {body}", now.0),
        );
        return;
    }
    if let Err(why) = check_boundary(w, room, r, now) {
        w.violate("admin-read-restrictions", format!("room {room}: {why}"));
        return;
    }
    if let Err(why) = check_settings(w, room, &json) {
        w.violate(
            "admin-read-settings",
            format!("room {room}: {why}; view {body}"),
        );
    }
}

fn check_members(
    w: &mut World,
    room: usize,
    now: Timestamp,
    json: &Json,
    sockets: &[HeldSocket],
) -> Result<(), String> {
    if json.get("connections").and_then(Json::as_u64) != Some(sockets.len() as u64) {
        return Err(format!("the host holds {} sockets", sockets.len()));
    }
    let members = json.get("members").and_then(Json::as_array);
    let members = members.ok_or("no members array")?;
    let conns: Vec<u64> = members
        .iter()
        .filter_map(|m| m.get("conn")?.as_u64())
        .collect();
    let held: Vec<u64> = sockets.iter().map(|s| s.conn.0).collect();
    if conns != held || members.len() != held.len() {
        return Err(format!("members {conns:?}, the host holds {held:?}"));
    }
    for (member, socket) in members.iter().zip(sockets) {
        let Some(client) = w.conns.get(&socket.conn).map(|info| info.client) else {
            continue;
        };
        let conn = socket.conn.0;
        let ip = member.get("ip").and_then(Json::as_str);
        let ip = ip.and_then(|ip| ip.parse::<IpAddr>().ok());
        if ip != Some(w.clients[client].ip) {
            return Err(format!("conn {conn}: ip {ip:?}, u{client}'s"));
        }
        let name = member.get("name").and_then(Json::as_str);
        let user = member.get("user").and_then(Json::as_str);
        if socket.joined {
            w.count_fault("admin-read-members-judged");
            let shown = crate::tokens::shown_name(w, client, Some(socket.conn));
            let key = user_key(w, client);
            if name != Some(shown.as_str()) || user != Some(key.as_str()) {
                return Err(format!(
                    "conn {conn}: name {name:?} user {user:?}, joined as {shown} ({key})"
                ));
            }
            let moderator = member.get("moderator").and_then(Json::as_bool);
            if let Some(expected) = moderator_role(w, client, socket.conn) {
                if moderator != Some(expected) {
                    return Err(format!("conn {conn}: moderator {moderator:?}"));
                }
            }
        } else if !socket.closing && name.is_some() {
            return Err(format!("conn {conn} still joining has name {name:?}"));
        }
        if let Some(user) = user {
            let muted = member.get("muted").and_then(Json::as_bool);
            let until = w.moderation.mutes.get(&(room, user.to_owned())).copied();
            let expected = until.is_some_and(|until| holds(until, now));
            if muted != Some(expected) {
                return Err(format!(
                    "conn {conn}: {user} muted {muted:?}, mute {until:?}"
                ));
            }
        }
    }
    Ok(())
}

/// Whether `client`'s session on `conn` is a moderator, when the oracle knows its role.
fn moderator_role(w: &World, client: usize, conn: ConnId) -> Option<bool> {
    let Some(tokens) = w.tokens.as_ref() else {
        return Some(false);
    };
    let Some(access) = tokens.conns.get(&conn) else {
        return Some(false); // anonymous
    };
    if w.sc.mod_sessions {
        Some(tokens.is_moderator(client))
    } else if !access.may_send {
        Some(false)
    } else {
        None // `write` is spelled `moderator` in some tokens of these runs
    }
}

/// A restriction until `until` holds at `now` (core's rule: `now < until`).
fn holds(until: Option<u64>, now: Timestamp) -> bool {
    until.is_none_or(|until| now.0 < until)
}

fn check_restrictions(
    w: &mut World,
    room: usize,
    now: Timestamp,
    json: &Json,
) -> Result<(), String> {
    let in_force: Vec<(Banned, Option<u64>)> = w
        .moderation
        .bans
        .iter()
        .filter(|((r, _), until)| *r == room && holds(**until, now))
        .map(|((_, target), until)| (target.clone(), *until))
        .collect();
    let shown = listed(json, "bans")?;
    if shown != in_force {
        return Err(format!("bans listed {shown:?}, in force {in_force:?}"));
    }
    if !shown.is_empty() {
        w.count_fault("admin-read-bans-listed");
    }
    let in_force: Vec<(Banned, Option<u64>)> = w
        .moderation
        .mutes
        .iter()
        .filter(|((r, _), until)| *r == room && holds(**until, now))
        .map(|((_, user), until)| (Banned::User(user.clone()), *until))
        .collect();
    let shown = listed(json, "mutes")?;
    if shown != in_force {
        return Err(format!("mutes listed {shown:?}, in force {in_force:?}"));
    }
    if !shown.is_empty() {
        w.count_fault("admin-read-mutes-listed");
    }
    w.count_fault("admin-read-restrictions-judged");
    Ok(())
}

/// The expiry boundary: the first timed ban and mute in force that still hold at `now`
/// must be listed by a view at their last instant (`until - 1`) and not by one at `until`
/// (a read landing exactly there; the view depends on `now` alone).
fn check_boundary(w: &mut World, room: usize, r: &Room, now: Timestamp) -> Result<(), String> {
    let o = &w.moderation;
    let timed = |until: &Option<u64>| until.filter(|until| now.0 < *until);
    let ban = o.bans.iter().find_map(|((r, target), until)| {
        Some((target.clone(), timed(until).filter(|_| *r == room)?))
    });
    let mute = o.mutes.iter().find_map(|((r, user), until)| {
        Some((
            Banned::User(user.clone()),
            timed(until).filter(|_| *r == room)?,
        ))
    });
    for (key, probe) in [("bans", ban), ("mutes", mute)] {
        let Some((target, until)) = probe else {
            continue;
        };
        w.count_fault("admin-read-boundary-judged");
        for (at, listed_then) in [(until - 1, true), (until, false)] {
            let body = answer::room_view(&r.admin_view(Timestamp(at)))
                .body
                .into_owned();
            let json = serde_json::from_str::<Json>(&body).map_err(|e| e.to_string())?;
            let shown = listed(&json, key)?;
            if shown.iter().any(|(t, _)| *t == target) != listed_then {
                return Err(format!(
                    "{key}: {target:?} until {until}, a view at {at} lists {shown:?}"
                ));
            }
        }
    }
    Ok(())
}

/// The `bans` or `mutes` of a view: `{"user": u}` or `{"ip": ip}`, with `until`.
fn listed(json: &Json, key: &str) -> Result<Vec<(Banned, Option<u64>)>, String> {
    let items = json.get(key).and_then(Json::as_array);
    let items = items.ok_or_else(|| format!("no {key} array"))?;
    items
        .iter()
        .map(|item| {
            let until = match item.get("until") {
                Some(Json::Null) => None,
                Some(until) => Some(until.as_u64().ok_or("until not a number")?),
                None => return Err(format!("{key}: {item} has no until")),
            };
            let target = match (item.get("user"), item.get("ip")) {
                (Some(Json::String(user)), None) => Banned::User(user.clone()),
                (None, Some(Json::String(ip))) => {
                    Banned::Ip(ip.parse().map_err(|_| format!("{key}: bad ip {ip}"))?)
                }
                _ => return Err(format!("{key}: {item} names neither one user nor one ip")),
            };
            Ok((target, until))
        })
        .collect()
}

fn check_settings(w: &mut World, room: usize, json: &Json) -> Result<(), String> {
    let settings = json.get("settings").ok_or("no settings")?;
    let o = &w.moderation;
    let mut judged = false;
    let mut judge = |key: &str, expected: Option<Json>| -> Result<(), String> {
        let Some(expected) = expected else {
            return Ok(());
        };
        judged = true;
        let got = settings.get(key).cloned().unwrap_or(Json::Null);
        if got != expected {
            return Err(format!("{key} is {got}, surely {expected}"));
        }
        Ok(())
    };
    judge("read_only", o.read_only(room).map(Json::from))?;
    judge("topic", o.topic(room).map(Json::from))?;
    judge("members_max", o.members_max(room).map(Json::from))?;
    let history_max = surely_set(o, room, |p| p.history_max);
    judge("history_max", history_max.map(Json::from))?;
    let max_age = surely_set(o, room, |p| p.history_max_age_ms);
    judge("history_max_age_ms", max_age.map(Json::from))?;
    if judged && w.moderation.on {
        w.count_fault("admin-read-settings-judged");
    }
    Ok(())
}

/// A setting's value as surely set (`Some(None)`: cleared or never set): the newest
/// request of `room` that sets it (`pick`) was confirmed, or none did.
fn surely_set<T: Clone>(
    o: &ModOracle,
    room: usize,
    pick: impl Fn(&SettingsPatch) -> Option<Option<T>>,
) -> Option<Option<T>> {
    let newest = o
        .requests
        .iter()
        .rev()
        .find_map(|(request, (r, action, _))| match action {
            ModAction::Settings(patch) if *r == room => Some((request, pick(patch)?)),
            _ => None,
        });
    match newest {
        None => Some(None),
        Some((request, value)) => o.confirmed.contains(request).then_some(value),
    }
}

/// `GET /api/admin/rooms` over the host's rooms: the figures each room gives, encoded as
/// the route encodes the list, judged against the oracle.
pub fn read_summaries(w: &mut World, figures: &[Figures]) {
    let summaries: Vec<RoomSummary> = figures
        .iter()
        .map(|f| RoomSummary {
            id: format!("{:064x}", f.room),
            room: Some(format!("r{}", f.room)),
            connections: f.connections,
            members: f.resident.map(|(members, _)| members),
            last_id: f.resident.map(|(_, last_id)| last_id),
            resident: f.resident.is_some(),
        })
        .collect();
    let body = answer::room_summaries(&summaries).body.into_owned();
    let json = serde_json::from_str::<Json>(&body).ok();
    let rooms = json
        .as_ref()
        .and_then(|j| j.get("rooms")?.as_array().cloned());
    let Some(rooms) = rooms.filter(|rooms| rooms.len() == figures.len()) else {
        w.violate("admin-summary", format!("the rooms list is {body}"));
        return;
    };
    for (f, got) in figures.iter().zip(&rooms) {
        let room = f.room;
        let resident = got.get("resident").and_then(Json::as_bool);
        let members = got.get("members").cloned().unwrap_or(Json::Null);
        let last_id = got.get("last_id").cloned().unwrap_or(Json::Null);
        let connections = got.get("connections").and_then(Json::as_u64);
        let expected = match f.resident {
            Some(_) => {
                w.count_fault("admin-summary-resident");
                (
                    Some(true),
                    Json::from(f.joined),
                    Json::from(w.rooms[room].newest_acked()),
                )
            }
            None => {
                w.count_fault("admin-summary-dormant");
                (Some(false), Json::Null, Json::Null)
            }
        };
        if (resident, members.clone(), last_id.clone()) != expected
            || connections != Some(f.connections as u64)
            || !(f.resident.is_some() || f.still_dormant)
        {
            let detail = format!(
                "room {room}: listed {got}, expected resident {:?} members {} last_id {} \
                 connections {} (still dormant after: {})",
                expected.0, expected.1, expected.2, f.connections, f.still_dormant
            );
            w.violate("admin-summary", detail);
            return;
        }
    }
}
