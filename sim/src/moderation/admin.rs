//! The admin moderator (half of the runs, with auth or without): through its host's admin API, at random times
//! of the fault phase, it deletes, edits, kicks, bans, mutes, lifts bans and mutes, and
//! changes settings; once faults end it lifts every `members_max`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use edgechat_core::moderation::{BanTarget, ModAction, SettingsPatch};
use edgechat_core::protocol::MessageText;
use madsim::rand::{thread_rng, Rng};
use madsim::time::sleep;

use super::{Banned, Kind, Record};
use crate::world::{HostEvent, Shared};

/// How often a settings change sets the retention (`history_max`, `history_max_age_ms`).
const RETENTION_P: f64 = 0.3;

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
        // Named as the room keys them: the token's subject in token runs.
        let members: Vec<(String, IpAddr)> = (0..w.clients.len())
            .filter(|&c| w.clients[c].room == room)
            .map(|c| (super::user_key(&w, c), w.clients[c].ip))
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
            if rng.gen_bool(RETENTION_P) {
                // Retention: small counts that really trim, ages on the scale of the chat's
                // cadence; each cleared now and then.
                let which = rng.gen_range(0..3);
                if which != 1 {
                    let max = rng.gen_range(1..=30);
                    patch.history_max = Some(Some(max).filter(|_| rng.gen_bool(0.8)));
                }
                if which != 0 {
                    let age = rng.gen_range(2_000..=60_000);
                    patch.history_max_age_ms = Some(Some(age).filter(|_| rng.gen_bool(0.75)));
                }
            } else if rng.gen_bool(0.1) {
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
            ModAction::Settings(patch)
                if patch.history_max.is_some() || patch.history_max_age_ms.is_some() =>
            {
                "mod-retention"
            }
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
