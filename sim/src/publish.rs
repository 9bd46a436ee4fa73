//! The operator's side of a room: HTTP publish (`POST /api/room/<room>/publish`, the room's
//! `Input::Publish`) and the history and presence reads, each checked against the room model.
//!
//! In half of the runs, every 3–20 s of the fault phase the publisher asks a random room's
//! host to publish a fresh text `p<n>` (one in ten exactly 256 UTF-16 units, with surrogate
//! pairs) as `sys`, as the server does for the publish route. Its answer
//! (`Output::Published`) must name the id under which the room acknowledged that very text
//! (`publish-answer`). A host that is down drops the request (the HTTP call fails; nothing
//! is claimed).
//!
//! Reads (`history-read`, `presence-read`) happen after 2 % of a host's inputs: the room's
//! `history_page(before, limit)` (no `before`, or one around the retained window; a limit
//! of 1–50) must be the acknowledged ids below `before`, newest first, at most `limit`, none
//! older than the retained window (under retention settings, a possible start of the held
//! run: [`crate::retention`]), each the acknowledged frame (or its moderated next
//! state); `presence` must name as many users as the sockets the model saw joined and not
//! yet closing.

use std::time::Duration;

use madsim::rand::{thread_rng, Rng};
use madsim::time::sleep;
use serde_json::Value;

use crate::world::{HostEvent, Shared, World};

/// The name publishes go out under.
pub const PUBLISHER: &str = "sys";

/// Publish requests are numbered from here (the moderator numbers its own from 1).
const FIRST_REQUEST: u64 = 1 << 40;

/// The history page the reads ask for.
pub const HISTORY_LIMIT: usize = 50;

/// Asks random rooms to publish, during the fault phase.
pub(crate) async fn publisher_main(world: Shared, fault_ms: u64) {
    // Half of the runs only (swarm style): a publish restores an evicted room, which would
    // otherwise mask what happens while rooms stay hibernated (a missed expiry wake-up).
    if !thread_rng().gen_bool(0.5) {
        return;
    }
    let mut n = 0u64;
    loop {
        let pause = thread_rng().gen_range(3_000..20_000);
        sleep(Duration::from_millis(pause)).await;
        let mut w = world.lock().expect("world lock");
        if w.violation.is_some() || w.elapsed_ms() >= fault_ms {
            return;
        }
        let mut rng = thread_rng();
        let room = rng.gen_range(0..w.sc.rooms);
        n += 1;
        let mut message = format!("p{n}");
        if rng.gen_bool(0.1) {
            message =
                crate::nodes::pad_to_units(message, crate::model::MESSAGE_UNITS_MAX, &mut rng);
        }
        let request = FIRST_REQUEST + n;
        w.publishes.insert(request, (room, message.clone()));
        w.count_fault("publish");
        let host = room % w.sc.hosts;
        if let Some(inbox) = w.hosts[host].inbox.clone() {
            inbox.push(HostEvent::Publish {
                room,
                request,
                message,
            });
        }
    }
}

/// The room answered publish `request` of `room` with `id`: the acknowledged record at `id`
/// must be that publish's text under [`PUBLISHER`].
pub fn published(w: &mut World, room: usize, request: u64, id: u64) {
    let Some((asked_room, text)) = w.publishes.get(&request).cloned() else {
        w.violate(
            "publish-answer",
            format!("room {room}: unknown publish {request}"),
        );
        return;
    };
    let stored = w.rooms[room].acked.get(&id).cloned();
    let fields = stored.as_deref().and_then(|frame| {
        let json: Value = serde_json::from_str(frame).ok()?;
        let field = |key: &str| json.get(key).and_then(Value::as_str).map(str::to_owned);
        Some((field("name")?, field("message")?))
    });
    let right = asked_room == room
        && fields.is_some_and(|(name, message)| name == PUBLISHER && message == text);
    if right {
        w.count_fault("published");
    } else {
        let detail = format!(
            "room {room}: publish {request} ({text:?} for room {asked_room}) answered id {id}, \
             which holds {stored:?}"
        );
        w.violate("publish-answer", detail);
    }
}

/// A history read of `room` (`before`, `limit`) returned `page` (newest first): it must be
/// the acknowledged records below `before`, newest first, at most `limit`, down to where the
/// room's retained run starts (a range while the retention in force is not surely known:
/// any start in it is taken).
pub fn check_history(
    w: &mut World,
    room: usize,
    before: Option<u64>,
    limit: usize,
    page: &[std::sync::Arc<str>],
) {
    let newest = w.rooms[room].newest_acked();
    // The held run starts somewhere in `held` (one id when the retention is known).
    let held = w.retained_range(room, newest, None);
    let acked = &w.rooms[room].acked;
    let below = before.unwrap_or(u64::MAX).min(newest + 1);
    let got: Vec<Option<u64>> = page
        .iter()
        .map(|frame| match crate::model::parse(frame) {
            crate::model::Seen::Record(id) => Some(id),
            _ => None,
        })
        .collect();
    // The page starts where the held run does, or `limit` below `below`, whichever is newer.
    let start = below.saturating_sub(got.len() as u64);
    let clamp = |oldest: u64| oldest.max(below.saturating_sub(limit as u64)).min(below);
    let fits = crate::retention::start_fits(start, held, clamp);
    let oldest = if fits { start } else { clamp(held.0) };
    let want: Vec<u64> = (oldest..below).rev().take(limit).collect();
    let ids_right = got.len() == want.len() && got.iter().zip(&want).all(|(g, w)| *g == Some(*w));
    let frames_right = ids_right
        && page.iter().zip(&want).all(|(frame, id)| {
            acked
                .get(id)
                .is_some_and(|acked| w.moderation.same_either(room, acked, frame))
        });
    if !frames_right {
        let detail = format!(
            "room {room}: history read before {before:?} limit {limit} gave ids {got:?}, the \
             model {want:?}"
        );
        w.violate("history-read", detail);
    }
}

/// A presence read of `room` named `names`; the model counts `joined` sockets joined and not
/// closing.
pub fn check_presence(w: &mut World, room: usize, names: usize, joined: usize) {
    if names != joined {
        let detail = format!("room {room}: presence names {names} users, {joined} are joined");
        w.violate("presence-read", detail);
    }
}
