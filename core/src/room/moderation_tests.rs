//! Moderation through a bare room: storage is a [`MemoryStore`] that commits each batch as
//! soon as it is put out, so every step ends settled; `crash` rebuilds the room from storage
//! and the open sockets' attachments, as an adapter does.

use std::collections::BTreeMap;
use std::net::IpAddr;

use proptest::prelude::*;

use super::*;
use crate::auth::{Identity, Role};
use crate::moderation::{decode_action, ERROR_MUTED, ERROR_READ_ONLY, RESTRICTIONS_MAX};
use crate::protocol::UserName;
use crate::room::{PublishId, RoomConfig};
use crate::room::{CLOSE_REASON_ROOM_FULL, CLOSE_ROOM_FULL};
use crate::storage::{MemoryStore, Value};

struct Driver {
    config: RoomConfig,
    room: Room,
    store: MemoryStore,
    now: Timestamp,
    /// Every frame each connection received, as text.
    frames: BTreeMap<u64, Vec<String>>,
    closed: BTreeMap<u64, (u16, &'static str)>,
    attachments: BTreeMap<u64, Vec<u8>>,
    moderated: Vec<PublishId>,
    next_request: u64,
}

fn ip(n: u8) -> IpAddr {
    IpAddr::from([192, 0, 2, n])
}

fn user(sub: &str, name: &str, role: Role) -> Identity {
    Identity {
        sub: sub.into(),
        name: UserName::parse(name).unwrap(),
        role,
        expires_at: None,
    }
}

impl Driver {
    fn new() -> Driver {
        Driver::with(RoomConfig {
            limiter_may_wait: false,
            ..RoomConfig::default()
        })
    }

    fn with(config: RoomConfig) -> Driver {
        Driver {
            room: Room::new(config.clone()),
            config,
            store: MemoryStore::new(),
            now: Timestamp(1_000),
            frames: BTreeMap::new(),
            closed: BTreeMap::new(),
            attachments: BTreeMap::new(),
            moderated: Vec::new(),
            next_request: 1,
        }
    }

    fn tick(&mut self) {
        self.now = self.now.plus_millis(10);
    }

    fn connect(&mut self, conn: u64, from: IpAddr, identity: Option<Identity>) {
        self.tick();
        self.room
            .handle_connect_as(ConnId(conn), from, identity, self.now)
            .unwrap();
        self.settle();
    }

    fn join(&mut self, conn: u64, name: &str) {
        self.connect(conn, ip(conn as u8), None);
        self.text(conn, &format!(r#"{{"name":"{name}"}}"#));
    }

    fn join_as(&mut self, conn: u64, identity: Identity) {
        self.connect(conn, ip(conn as u8), Some(identity));
        self.text(conn, r#"{"name":"x"}"#);
    }

    fn text(&mut self, conn: u64, text: &str) {
        self.tick();
        if self.closed.contains_key(&conn) {
            return;
        }
        self.room.handle_text(ConnId(conn), text, self.now).unwrap();
        self.settle();
    }

    fn say(&mut self, conn: u64, message: &str) {
        self.text(conn, &format!(r#"{{"message":"{message}"}}"#));
    }

    fn admin(&mut self, action: &str) -> Result<(), ModError> {
        self.tick();
        let request = PublishId(self.next_request);
        self.next_request += 1;
        let action = decode_action(action)?;
        self.room.handle_moderate(request, action, self.now)?;
        self.settle();
        assert_eq!(self.moderated.last(), Some(&request), "confirmed once done");
        Ok(())
    }

    fn settle(&mut self) {
        while let Some(output) = self.room.poll_output() {
            match output {
                Output::Send { conn, frame } => self.receive(conn, &frame),
                Output::Broadcast { recipients, frame } => {
                    for conn in recipients.iter() {
                        self.receive(*conn, &frame);
                    }
                }
                Output::Close { conn, code, reason } => {
                    self.closed.insert(conn.0, (code, reason));
                    self.attachments.remove(&conn.0);
                    self.room.handle_close(conn, self.now).unwrap();
                }
                Output::Persist(batch) => {
                    self.store.apply(&batch);
                    self.room.handle_durable(batch.id, self.now).unwrap();
                }
                Output::SetAttachment { conn, attachment } => {
                    self.attachments.insert(conn.0, attachment);
                }
                Output::Moderated { request } => self.moderated.push(request),
                Output::AskRateLimiter { .. } | Output::Published { .. } => {}
            }
        }
    }

    fn receive(&mut self, conn: ConnId, frame: &str) {
        assert!(
            !self.closed.contains_key(&conn.0),
            "closed connection {conn:?} got {frame}"
        );
        self.frames
            .entry(conn.0)
            .or_default()
            .push(frame.to_owned());
    }

    /// Loses memory; restores from storage and the open sockets' attachments.
    fn crash(&mut self) {
        let stored = self.store.list_each(&self.config.restore_queries());
        let attachments = self
            .attachments
            .iter()
            .map(|(conn, bytes)| (ConnId(*conn), bytes.as_slice()));
        self.room = Room::restore(self.config.clone(), &stored, attachments).unwrap();
        self.room.trim_history(self.now);
        self.settle();
    }

    fn frames(&self, conn: u64) -> &[String] {
        self.frames.get(&conn).map_or(&[], Vec::as_slice)
    }

    fn last(&self, conn: u64) -> &str {
        self.frames(conn).last().map_or("", String::as_str)
    }

    /// Every stored value, as text.
    fn stored_text(&self) -> String {
        let all = self.store.list_each(&self.config.restore_queries());
        all.iter()
            .map(|(key, value): &(String, Value)| format!("{key}={value}\n"))
            .collect()
    }

    /// A new connection's whole join sequence.
    fn joiner_sees(&mut self, conn: u64, since: Option<u64>) -> Vec<String> {
        self.connect(conn, ip(200), None);
        let join = match since {
            Some(since) => format!(r#"{{"name":"late{conn}","since":{since}}}"#),
            None => format!(r#"{{"name":"late{conn}"}}"#),
        };
        self.text(conn, &join);
        self.frames(conn).to_vec()
    }
}

#[test]
fn a_deleted_message_never_comes_back() {
    let mut d = Driver::new();
    d.join(1, "ada");
    d.join(2, "bob");
    for text in ["one", "secret", "three"] {
        d.say(1, text);
    }
    d.admin(r#"{"delete":2}"#).unwrap();
    let deleted = r#"{"deleted":2,"id":4,"#;
    assert!(d.last(1).starts_with(deleted), "{}", d.last(1));
    assert!(d.last(2).starts_with(deleted));
    assert_eq!(d.admin(r#"{"delete":2}"#), Err(ModError::NoSuchMessage));
    assert_eq!(
        d.admin(r#"{"edit":2,"message":"back"}"#),
        Err(ModError::NoSuchMessage)
    );

    let check = |frames: &[String]| {
        assert!(!frames.iter().any(|f| f.contains("secret")), "{frames:?}");
        let ids: Vec<&String> = frames.iter().filter(|f| f.contains("\"id\"")).collect();
        assert_eq!(ids.len(), 4, "records 1..=4 in order: {ids:?}");
        assert!(ids[1].starts_with(r#"{"deleted":2,"id":2,"#), "{ids:?}");
    };
    check(&d.joiner_sees(3, None));
    check(&d.joiner_sees(4, Some(0)));
    assert!(!d.stored_text().contains("secret"));
    assert!(!d
        .room
        .history_page(None, 100)
        .iter()
        .any(|f| f.contains("secret")));
    d.crash();
    check(&d.joiner_sees(5, None));
    assert!(!d
        .room
        .history_page(None, 100)
        .iter()
        .any(|f| f.contains("secret")));
    // Ids stay gap-free: the next message is 5.
    d.say(1, "after");
    assert!(d.last(1).contains(r#""id":5"#), "{}", d.last(1));
}

#[test]
fn an_edit_changes_the_text_in_place_and_a_later_delete_erases_every_version() {
    let mut d = Driver::new();
    d.join(1, "ada");
    d.say(1, "first");
    d.say(1, "second");
    d.admin(r#"{"edit":1,"message":"corrected"}"#).unwrap();
    assert!(d
        .last(1)
        .starts_with(r#"{"edited":1,"message":"corrected","id":3,"#));
    let seen = d.joiner_sees(2, None);
    let records: Vec<&String> = seen.iter().filter(|f| f.contains("\"id\"")).collect();
    assert!(
        records[0].contains(r#""message":"corrected""#) && records[0].contains(r#""edited":true"#)
    );
    assert!(
        records[0].contains(r#""id":1"#),
        "the edit does not move it"
    );
    assert!(records[1].contains("second"));

    d.admin(r#"{"edit":1,"message":"again"}"#).unwrap();
    d.admin(r#"{"delete":1}"#).unwrap();
    let stored = d.stored_text();
    for text in ["first", "corrected", "again"] {
        assert!(!stored.contains(text), "{text} in {stored}");
    }
    d.crash();
    let seen = d.joiner_sees(3, Some(0)).join("\n");
    for text in ["first", "corrected", "again"] {
        assert!(!seen.contains(text), "{text} in {seen}");
    }
}

#[test]
fn authors_may_change_their_own_messages_and_moderators_any() {
    let mut d = Driver::new();
    d.join_as(1, user("u-ada", "Ada", Role::Write));
    d.join_as(2, user("u-bob", "Bob", Role::Write));
    d.join_as(3, user("u-mod", "Mod", Role::Moderator));
    d.join(4, "anon");
    d.say(1, "by ada");
    d.say(2, "by bob");
    d.say(4, "by anon");
    assert!(d.frames(1).iter().any(|f| f.contains(r#""user":"u-ada""#)));

    d.text(2, r#"{"delete":1}"#);
    assert_eq!(d.last(2), r#"{"error":"Only moderators may do that."}"#);
    d.text(4, r#"{"delete":3}"#);
    assert_eq!(d.last(4), r#"{"error":"Only moderators may do that."}"#);
    d.text(1, r#"{"edit":1,"message":"by ada, fixed"}"#);
    assert!(d.last(2).starts_with(r#"{"edited":1,"#), "{}", d.last(2));
    d.text(3, r#"{"delete":2}"#);
    assert!(d.last(1).starts_with(r#"{"deleted":2,"#), "{}", d.last(1));
    d.text(3, r#"{"kick":"anon"}"#);
    assert_eq!(d.closed[&4], (CLOSE_KICKED, CLOSE_REASON_KICKED));
    assert_eq!(d.last(1), r#"{"quit":"anon"}"#);
    // A message that only mentions an action is still a message.
    d.say(1, "please delete this");
    assert!(d.last(2).contains("please delete this"));
}

#[test]
fn a_ban_closes_the_user_keeps_them_out_and_survives_a_crash() {
    let mut d = Driver::new();
    d.join(1, "ada");
    d.join(2, "troll");
    d.admin(r#"{"ban":"troll"}"#).unwrap();
    assert_eq!(d.closed[&2], (CLOSE_BANNED, CLOSE_REASON_BANNED));
    assert_eq!(d.last(1), r#"{"quit":"troll"}"#);
    d.crash();
    d.join(3, "troll");
    assert_eq!(d.closed[&3], (CLOSE_BANNED, CLOSE_REASON_BANNED));
    d.admin(r#"{"unban":"troll"}"#).unwrap();
    d.join(4, "troll");
    assert!(!d.closed.contains_key(&4));
}

#[test]
fn an_ip_ban_refuses_connections_until_it_expires() {
    let mut d = Driver::new();
    d.join(1, "ada");
    d.admin(r#"{"ban_ip":"192.0.2.9","for_ms":1000}"#).unwrap();
    d.connect(9, ip(9), None);
    assert_eq!(d.closed[&9], (CLOSE_BANNED, CLOSE_REASON_BANNED));
    assert!(d.frames(9).is_empty(), "nothing before the close");
    d.crash();
    d.connect(10, ip(9), None);
    assert!(d.closed.contains_key(&10), "the ban survived the crash");
    d.now = d.now.plus_millis(1_000);
    d.connect(12, ip(9), None);
    assert!(!d.closed.contains_key(&12), "expired");
}

#[test]
fn a_muted_user_reads_but_cannot_write_and_read_only_rooms_take_moderators_only() {
    let mut d = Driver::new();
    d.join(1, "ada");
    d.join_as(2, user("u-mod", "Mod", Role::Moderator));
    d.admin(r#"{"mute":"ada"}"#).unwrap();
    d.say(1, "muted words");
    assert_eq!(d.last(1), format!(r#"{{"error":"{ERROR_MUTED}"}}"#));
    d.crash();
    d.say(1, "still muted");
    assert_eq!(d.last(1), format!(r#"{{"error":"{ERROR_MUTED}"}}"#));
    d.admin(r#"{"unmute":"ada"}"#).unwrap();
    d.say(1, "free");
    assert!(d.last(2).contains("free"));

    d.admin(r#"{"settings":{"read_only":true}}"#).unwrap();
    d.say(1, "not now");
    assert_eq!(d.last(1), format!(r#"{{"error":"{ERROR_READ_ONLY}"}}"#));
    d.say(2, "announcement");
    assert!(d.last(1).contains("announcement"));
    assert!(!d.stored_text().contains("not now") && !d.stored_text().contains("muted words"));
}

#[test]
fn the_topic_is_shown_to_joiners_and_broadcast_when_it_changes() {
    let mut d = Driver::new();
    d.join(1, "ada");
    d.admin(r#"{"settings":{"topic":"Welcome"}}"#).unwrap();
    assert_eq!(d.last(1), r#"{"topic":"Welcome"}"#);
    d.crash();
    let seen = d.joiner_sees(2, None);
    let n = seen.len();
    assert_eq!(seen[n - 2], r#"{"topic":"Welcome"}"#);
    assert_eq!(seen[n - 1], r#"{"ready":true}"#);
    d.admin(r#"{"settings":{"topic":null}}"#).unwrap();
    assert_eq!(d.last(2), r#"{"topic":""}"#);
}

#[test]
fn members_max_refuses_joins_beyond_it() {
    let mut d = Driver::new();
    d.admin(r#"{"settings":{"members_max":1}}"#).unwrap();
    d.join(1, "ada");
    d.join(2, "bob");
    assert_eq!(d.closed[&2], (CLOSE_ROOM_FULL, CLOSE_REASON_ROOM_FULL));
    assert!(!d.frames(1).iter().any(|f| f.contains("bob")));
}

#[test]
fn history_settings_trim_memory_replays_and_storage() {
    let mut d = Driver::new();
    d.join(1, "ada");
    for n in 0..10 {
        d.say(1, &format!("m{n}"));
    }
    d.admin(r#"{"settings":{"history_max":3}}"#).unwrap();
    d.say(1, "m10");
    let replay: Vec<String> = d
        .joiner_sees(2, None)
        .into_iter()
        .filter(|f| f.contains("\"id\""))
        .collect();
    assert_eq!(replay.len(), 3, "{replay:?}");
    assert!(replay[2].contains("m10"));
    let stored_messages = d.store.list(d.config.restore_queries()[1]);
    assert_eq!(stored_messages.len(), 3);

    d.admin(r#"{"settings":{"history_max":null,"history_max_age_ms":100}}"#)
        .unwrap();
    d.now = d.now.plus_millis(1_000);
    d.room.handle_timeout(d.now);
    assert!(d.room.history_page(None, 100).is_empty());
    d.say(1, "fresh");
    assert_eq!(d.room.history_page(None, 100).len(), 1);
    assert_eq!(d.store.list(d.config.restore_queries()[1]).len(), 1);
}

#[test]
fn a_failed_write_changes_nothing() {
    let mut d = Driver::new();
    d.join(1, "ada");
    d.say(1, "keep");
    d.tick();
    let request = PublishId(99);
    d.room
        .handle_moderate(request, decode_action(r#"{"delete":1}"#).unwrap(), d.now)
        .unwrap();
    let Some(Output::Persist(batch)) = d.room.poll_output() else {
        panic!("a batch");
    };
    let failed = d.room.handle_write_failed(batch.id, d.now).unwrap();
    assert_eq!(failed, vec![request]);
    d.settle();
    assert!(d.room.history_page(None, 10)[0].contains("keep"));
    d.say(1, "next");
    assert!(
        d.last(1).contains(r#""id":2"#),
        "the failed id is reused: {:?}",
        d.frames(1)
    );
}

/// A deletion accepted while the batch that trims its target from storage is in flight
/// must not write the target's tombstone back below storage's window (found by the
/// simulator, seed 14 of the moderation workload).
#[test]
fn a_change_to_a_message_trimmed_meanwhile_does_not_bring_its_key_back() {
    let mut d = Driver::with(RoomConfig {
        limiter_may_wait: false,
        history_retained_max: 4,
        ..RoomConfig::default()
    });
    d.join(1, "ada");
    for n in 1..=4 {
        d.say(1, &format!("m{n}"));
    }
    d.tick();
    d.room
        .handle_text(ConnId(1), r#"{"message":"m5"}"#, d.now)
        .unwrap();
    let trims = loop {
        match d.room.poll_output() {
            Some(Output::Persist(batch)) => break batch,
            Some(_) => {}
            None => panic!("a batch"),
        }
    };
    d.room
        .handle_moderate(
            PublishId(7),
            decode_action(r#"{"delete":1}"#).unwrap(),
            d.now,
        )
        .unwrap();
    d.store.apply(&trims);
    d.room.handle_durable(trims.id, d.now).unwrap();
    d.settle();
    let ids: Vec<String> = d
        .store
        .list(crate::storage::ListQuery {
            prefix: crate::storage::keys::MESSAGE_PREFIX,
            limit: usize::MAX,
        })
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    assert_eq!(ids.len(), 4, "storage keeps the newest four: {ids:?}");
    assert!(!d.stored_text().contains("m1"), "{}", d.stored_text());
}

proptest! {
    /// Whatever mix of messages, deletions, edits and crashes: no frame anyone receives after
    /// a deletion, no replay, and no stored value holds any text the deleted message had;
    /// records keep consecutive ids in order.
    #[test]
    fn deleted_texts_never_reappear(ops in proptest::collection::vec((0u8..4, 1u64..12), 1..40)) {
        let mut d = Driver::new();
        d.join(1, "ada");
        let mut originals: BTreeMap<u64, String> = BTreeMap::new();
        let mut gone: Vec<String> = Vec::new();
        let mut seen_before = 0;
        for (step, (op, target)) in ops.into_iter().enumerate() {
            match op {
                0 => {
                    let text = format!("text-{step}-");
                    d.say(1, &text);
                    let value: serde_json::Value = serde_json::from_str(d.last(1)).unwrap();
                    originals.insert(value["id"].as_u64().unwrap(), text);
                }
                1 => {
                    if d.admin(&format!(r#"{{"delete":{target}}}"#)).is_ok() {
                        gone.push(format!("#{target}#"));
                        gone.extend(originals.get(&target).cloned());
                        seen_before = d.frames(1).len();
                    }
                }
                2 => {
                    let _ = d.admin(&format!(r##"{{"edit":{target},"message":"edit #{target}#"}}"##));
                }
                _ => d.crash(),
            }
            let stored = d.stored_text();
            for text in &gone {
                let after = &d.frames(1)[seen_before..];
                prop_assert!(!after.iter().any(|f| f.contains(text.as_str())), "{} after deletion", text);
                prop_assert!(!stored.contains(text.as_str()), "{} in storage", text);
            }
            let history = d.room.history_page(None, 1_000);
            let ids: Vec<u64> = history.iter().rev().map(|frame| {
                let value: serde_json::Value = serde_json::from_str(frame).unwrap();
                value["id"].as_u64().unwrap()
            }).collect();
            prop_assert!(ids.windows(2).all(|pair| pair[1] == pair[0] + 1), "{:?}", ids);
        }
        let replay = d.joiner_sees(50, Some(0)).join("\n");
        for text in &gone {
            prop_assert!(!replay.contains(text.as_str()), "{} replayed", text);
        }
    }
}

#[test]
fn bans_and_mutes_are_bounded_and_expired_ones_make_room() {
    let mut d = Driver::new();
    for n in 0..RESTRICTIONS_MAX {
        d.admin(&format!(r#"{{"ban":"u{n}","for_ms":1000000}}"#))
            .unwrap();
    }
    assert_eq!(
        d.admin(r#"{"mute":"one-more"}"#),
        Err(ModError::TooManyRestrictions)
    );
    // Replacing one is always allowed.
    d.admin(r#"{"ban":"u0"}"#).unwrap();
    d.now = d.now.plus_millis(2_000_000);
    d.admin(r#"{"mute":"one-more"}"#).unwrap();
    assert_eq!(
        d.room.restrictions().len(),
        2,
        "u0 (permanent) and the mute"
    );
    d.crash();
    assert_eq!(
        d.room.restrictions().len(),
        2,
        "storage forgot the expired ones too"
    );
}

#[test]
fn restore_reads_every_restriction_and_the_settings() {
    let mut d = Driver::new();
    d.admin(r#"{"settings":{"topic":"Welcome"}}"#).unwrap();
    for n in 0..RESTRICTIONS_MAX {
        d.admin(&format!(r#"{{"ban":"u{n}"}}"#)).unwrap();
    }
    d.crash();
    let restrictions = d.room.restrictions();
    assert_eq!(restrictions.len(), RESTRICTIONS_MAX);
    assert_eq!(restrictions.settings.topic.as_deref(), Some("Welcome"));
    for n in [0, RESTRICTIONS_MAX - 1] {
        let user = format!("u{n}");
        assert!(restrictions.is_banned(Some(&user), ip(1), d.now), "{user}");
    }
}

/// Hands the room `actions` within one turn (none durable before the next is asked),
/// then settles.
fn moderate_together(d: &mut Driver, actions: &[&str]) -> Vec<Result<(), ModError>> {
    d.tick();
    let results = actions
        .iter()
        .map(|action| {
            let request = PublishId(d.next_request);
            d.next_request += 1;
            d.room
                .handle_moderate(request, decode_action(action).unwrap(), d.now)
        })
        .collect();
    d.settle();
    results
}

#[test]
fn bans_waiting_for_storage_count_towards_the_bound() {
    let mut d = Driver::new();
    assert_eq!(
        moderate_together(&mut d, &[r#"{"ban":"a"}"#, r#"{"mute":"b"}"#]),
        [Ok(()), Ok(())]
    );
    for n in 2..RESTRICTIONS_MAX - 1 {
        d.admin(&format!(r#"{{"ban":"u{n}"}}"#)).unwrap();
    }
    assert_eq!(d.room.restrictions().len(), RESTRICTIONS_MAX - 1);
    assert_eq!(
        moderate_together(&mut d, &[r#"{"ban":"x"}"#, r#"{"mute":"y"}"#]),
        [Ok(()), Err(ModError::TooManyRestrictions)]
    );
    assert_eq!(d.room.restrictions().len(), RESTRICTIONS_MAX);
}

#[test]
fn only_expired_mutes_are_forgotten_to_make_room() {
    let mut d = Driver::new();
    d.admin(r#"{"mute":"keep"}"#).unwrap();
    d.admin(r#"{"mute":"gone","for_ms":1000}"#).unwrap();
    for n in 0..RESTRICTIONS_MAX - 2 {
        d.admin(&format!(r#"{{"ban":"u{n}"}}"#)).unwrap();
    }
    d.now = d.now.plus_millis(2_000);
    d.admin(r#"{"ban":"one-more"}"#).unwrap();
    d.crash();
    let restrictions = d.room.restrictions();
    assert!(restrictions.is_muted("keep", d.now), "still muted");
    assert!(!restrictions.mutes.contains_key("gone"), "forgotten");
    assert!(restrictions.is_banned(Some("one-more"), ip(1), d.now));
    assert_eq!(restrictions.len(), RESTRICTIONS_MAX);
}

#[test]
fn the_admin_view_lists_every_connection_and_counts_the_joined() {
    let mut d = Driver::new();
    assert_eq!(d.room.member_count(), 0);
    d.join(1, "ada");
    d.connect(2, ip(2), None);
    d.join(3, "bob");
    let members: Vec<(u64, Option<String>)> = d
        .room
        .members(d.now)
        .into_iter()
        .map(|member| (member.conn, member.name))
        .collect();
    assert_eq!(
        members,
        [(1, Some("ada".into())), (2, None), (3, Some("bob".into()))]
    );
    assert_eq!(d.room.member_count(), 2, "only joined sessions count");
}

#[test]
fn members_max_admits_exactly_that_many() {
    let mut d = Driver::new();
    d.admin(r#"{"settings":{"members_max":2}}"#).unwrap();
    d.join(1, "ada");
    d.join(2, "bob");
    d.join(3, "cy");
    assert!(!d.closed.contains_key(&1) && !d.closed.contains_key(&2));
    assert_eq!(d.last(2), r#"{"ready":true}"#);
    assert_eq!(d.closed[&3], (CLOSE_ROOM_FULL, CLOSE_REASON_ROOM_FULL));
}

#[test]
fn an_ip_ban_closes_only_the_sockets_from_that_ip() {
    let mut d = Driver::new();
    d.join(1, "ada");
    d.join(2, "bob");
    d.admin(r#"{"ban_ip":"192.0.2.2"}"#).unwrap();
    assert_eq!(d.closed.keys().collect::<Vec<_>>(), [&2]);
    d.say(1, "still here");
    assert!(d.last(1).contains("still here"));
}

#[test]
fn a_room_keeping_messages_by_age_says_when_the_oldest_ages_out() {
    let mut d = Driver::new();
    d.join(1, "ada");
    d.say(1, "old");
    let said_at = d.now;
    assert_eq!(d.room.history_age_deadline(), None, "kept by count");
    d.admin(r#"{"settings":{"history_max_age_ms":100}}"#)
        .unwrap();
    assert_eq!(
        d.room.history_age_deadline(),
        Some(said_at.plus_millis(101))
    );
    d.now = said_at.plus_millis(101);
    d.room.handle_timeout(d.now);
    assert!(d.room.history_page(None, 10).is_empty());
    assert_eq!(d.room.history_age_deadline(), None, "nothing left to age");
}

/// A room where `ada` said m1..m3, then a 100 ms age limit and a second passed: nothing
/// is retained any more.
fn every_message_aged_out() -> Driver {
    let mut d = Driver::new();
    d.join(1, "ada");
    for n in 1..=3 {
        d.say(1, &format!("m{n}"));
    }
    d.admin(r#"{"settings":{"history_max_age_ms":100}}"#)
        .unwrap();
    d.now = d.now.plus_millis(1_000);
    d.room.handle_timeout(d.now);
    assert!(d.room.history_page(None, 10).is_empty());
    d
}

#[test]
fn with_every_message_aged_out_since_recovers_only_when_nothing_was_missed() {
    let mut d = every_message_aged_out();
    let up_to_date = d.joiner_sees(2, Some(3));
    assert_eq!(
        up_to_date.last().unwrap(),
        r#"{"ready":true,"recovered":true}"#
    );
    let missed_one = d.joiner_sees(3, Some(2));
    assert_eq!(
        missed_one.last().unwrap(),
        r#"{"ready":true,"recovered":false}"#
    );
}

/// With every message aged out and the next batch deleting them, storage must still tell a
/// restore where ids stand: a restore that found no message would start ids from 1 again,
/// reusing acknowledged ids (found by the simulator once it changed retention settings).
#[test]
fn ids_continue_after_a_restore_when_every_message_aged_out() {
    let mut d = every_message_aged_out();
    // A batch after the trim: it deletes what memory dropped.
    d.admin(r#"{"settings":{"topic":"t"}}"#).unwrap();
    d.crash();
    assert!(d.room.history_page(None, 10).is_empty(), "still aged out");
    d.join(2, "bob");
    d.say(2, "next");
    assert!(
        d.last(2).contains(r#""id":4"#),
        "ids go on from the newest acknowledged: {:?}",
        d.frames(2)
    );
}

#[test]
fn a_settings_change_keeps_the_settings_it_does_not_name() {
    let mut d = Driver::new();
    d.admin(r#"{"settings":{"topic":"Welcome"}}"#).unwrap();
    d.admin(r#"{"settings":{"members_max":5}}"#).unwrap();
    let settings = &d.room.restrictions().settings;
    assert_eq!(
        (settings.topic.as_deref(), settings.members_max),
        (Some("Welcome"), Some(5))
    );
    // The second change is asked before the first is durable: it builds on the first.
    let together = moderate_together(
        &mut d,
        &[
            r#"{"settings":{"topic":"Hi"}}"#,
            r#"{"settings":{"members_max":7}}"#,
        ],
    );
    assert_eq!(together, [Ok(()), Ok(())]);
    d.crash();
    let settings = &d.room.restrictions().settings;
    assert_eq!(
        (settings.topic.as_deref(), settings.members_max),
        (Some("Hi"), Some(7))
    );
}

#[test]
fn deleting_a_message_leaves_the_others_intact_in_storage() {
    let mut d = Driver::new();
    d.join(1, "ada");
    d.say(1, "one");
    d.say(1, "two");
    d.admin(r#"{"edit":1,"message":"one, corrected"}"#).unwrap();
    d.admin(r#"{"delete":2}"#).unwrap();
    d.crash();
    let history = d.room.history_page(None, 10);
    assert!(
        history
            .iter()
            .any(|f| f.contains(r#""message":"one, corrected""#)),
        "{history:?}"
    );
    let stored = d.stored_text();
    assert!(stored.contains("one, corrected"), "{stored}");
}

/// Found by the simulator (seed 37495, issue 18): a banned session's frames held for the
/// limiter, overdue when the ban came into force, were refused with the rate-limit error
/// after the session's 4011 close, when the host's timeout came before it handled the close.
#[test]
fn a_closing_session_gets_nothing_for_its_held_frames() {
    let mut d = Driver::with(RoomConfig {
        limiter_may_wait: true,
        ..RoomConfig::default()
    });
    d.join(1, "ada");
    d.join(2, "bob");
    d.say(1, "held");
    d.say(1, "held too");
    d.now = d.now.plus_millis(crate::room::PIPELINE_WAIT_MAX_MS + 500);
    let action = decode_action(r#"{"ban":"ada"}"#).unwrap();
    d.room.handle_moderate(PublishId(1), action, d.now).unwrap();
    let batch = loop {
        match d.room.poll_output() {
            Some(Output::Persist(batch)) => break batch,
            Some(_) => {}
            None => panic!("the ban is written"),
        }
    };
    d.store.apply(&batch);
    d.room.handle_durable(batch.id, d.now).unwrap();
    // The host's timer fires before it handles the close (one turn).
    d.room.handle_timeout(d.now);
    let mut closed = false;
    while let Some(output) = d.room.poll_output() {
        match output {
            Output::Close {
                conn: ConnId(1),
                code,
                ..
            } => {
                assert_eq!(code, CLOSE_BANNED);
                closed = true;
            }
            Output::Send {
                conn: ConnId(1),
                frame,
            } => {
                assert!(!closed, "closing connection got {frame}");
            }
            _ => {}
        }
    }
    assert!(closed);
}
