//! Room behaviour tests: each rule of `PROTOCOL.md` driven through the [`Harness`], which
//! also checks every invariant after every step, plus property tests over arbitrary input
//! sequences and clocks.

use proptest::prelude::*;

use crate::limiter::{RateLimiter, RateLimiterConfig};
#[cfg(feature = "planted-bugs")]
use crate::planted::PlantedBug;
use crate::protocol::ERROR_RATE_LIMITED;
use crate::room::{
    ConnId, Output, PublishId, Room, RoomConfig, PIPELINED_BYTES_MAX, PIPELINED_FRAMES_MAX,
    PIPELINE_WAIT_MAX_MS,
};
use crate::storage::{keys, MemoryStore};
use crate::testkit::{Harness, Step};
use crate::Timestamp;

fn harness() -> Harness {
    Harness::new(RoomConfig::default(), RateLimiterConfig::default())
}

/// A harness whose limiter never makes anyone wait, for tests about other rules.
fn unlimited() -> Harness {
    unlimited_with(RoomConfig::default())
}

/// [`unlimited`] around a room with `config`.
fn unlimited_with(config: RoomConfig) -> Harness {
    Harness::new(
        config,
        RateLimiterConfig {
            cost_ms: 1,
            grace_ms: 1_000_000,
        },
    )
}

fn text(conn: u8, text: &str) -> Step {
    Step::Text {
        conn,
        text: text.to_owned(),
    }
}

fn join(h: &mut Harness, conn: u8, name: &str) {
    h.step(Step::Connect { conn, ip: conn }).unwrap();
    h.step(text(conn, &format!(r#"{{"name":"{name}"}}"#)))
        .unwrap();
    h.settle().unwrap();
}

fn say(h: &mut Harness, conn: u8, message: &str) {
    h.step(text(conn, &format!(r#"{{"message":"{message}"}}"#)))
        .unwrap();
    h.settle().unwrap();
}

/// Frames from index `from` on, as text.
fn since(h: &Harness, conn: u8, from: usize) -> Vec<String> {
    h.frames(conn)[from..].to_vec()
}

#[test]
fn nothing_is_sent_before_the_first_frame() {
    let mut h = unlimited();
    join(&mut h, 1, "ada");
    h.step(Step::Connect { conn: 2, ip: 2 }).unwrap();
    say(&mut h, 1, "hello");
    assert!(h.frames(2).is_empty());
}

#[test]
fn the_join_sequence_is_roster_history_own_joined_ready() {
    let mut h = unlimited();
    join(&mut h, 1, "ada");
    say(&mut h, 1, "one");
    say(&mut h, 1, "two");
    join(&mut h, 2, "bob");
    let frames = h.frames(2);
    assert_eq!(frames.len(), 5, "{frames:?}");
    assert_eq!(frames[0], r#"{"joined":"ada"}"#);
    assert!(frames[1].contains(r#""message":"one""#) && frames[1].contains(r#""id":1"#));
    assert!(frames[2].contains(r#""message":"two""#) && frames[2].contains(r#""id":2"#));
    assert_eq!(frames[3], r#"{"joined":"bob"}"#);
    assert_eq!(frames[4], r#"{"ready":true}"#);
    // The others see the newcomer's joined, too.
    assert_eq!(h.frames(1).last().unwrap(), r#"{"joined":"bob"}"#);
}

#[test]
fn missing_or_empty_names_are_anonymous() {
    for first in [r#"{}"#, r#"{"name":""}"#, r#"{"name":null}"#] {
        let mut h = unlimited();
        h.step(Step::Connect { conn: 1, ip: 1 }).unwrap();
        h.step(text(1, first)).unwrap();
        assert_eq!(h.frames(1)[0], r#"{"joined":"anonymous"}"#, "{first}");
    }
}

#[test]
fn a_broadcast_reaches_everyone_including_the_sender_only_once_durable() {
    let mut h = unlimited();
    join(&mut h, 1, "ada");
    join(&mut h, 2, "bob");
    let (a, b) = (h.frames(1).len(), h.frames(2).len());
    h.step(text(1, r#"{"message":"hi"}"#)).unwrap();
    h.step(Step::Answer).unwrap();
    assert_eq!(since(&h, 1, a), Vec::<String>::new(), "not before durable");
    h.step(Step::Commit).unwrap();
    assert_eq!(
        since(&h, 1, a),
        Vec::<String>::new(),
        "not before confirmed"
    );
    h.step(Step::Confirm).unwrap();
    let got = since(&h, 1, a);
    assert_eq!(got.len(), 1);
    assert!(got[0].starts_with(r#"{"name":"ada","message":"hi","timestamp":"#));
    assert_eq!(since(&h, 2, b), got);
}

#[test]
fn messages_accepted_together_are_committed_in_one_batch() {
    let mut room = Room::new(RoomConfig::default());
    let now = Timestamp(1_000);
    for conn in 1..=3 {
        room.handle_connect(ConnId(conn), "127.0.0.1".parse().unwrap(), now)
            .unwrap();
        room.handle_text(ConnId(conn), r#"{"name":"x"}"#, now)
            .unwrap();
    }
    while room.poll_output().is_some() {}
    for conn in 1..=3 {
        // Answer each session's join question with "no wait" so it may chat.
        let request = crate::limiter::VerdictRequest {
            conn: ConnId(conn),
            seq: 1,
        };
        room.handle_rate_limit_verdict(request, 0, now);
        room.handle_text(ConnId(conn), r#"{"message":"m"}"#, now)
            .unwrap();
    }
    let batches: Vec<_> = std::iter::from_fn(|| room.poll_output())
        .filter_map(|output| match output {
            Output::Persist(batch) => Some(batch),
            _ => None,
        })
        .collect();
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].writes.len(), 3);
}

#[test]
fn outputs_carried_out_within_a_turn_leave_its_messages_one_batch() {
    let mut room = Room::new(RoomConfig::default());
    let now = Timestamp(1_000);
    let ip = "127.0.0.1".parse().unwrap();
    room.handle_connect(ConnId(1), ip, now).unwrap();
    room.handle_text(ConnId(1), r#"{"name":"x"}"#, now).unwrap();
    while room.poll_output().is_some() {}
    // Each frame's question is answered between the inputs (as an adapter whose limiter is
    // in its own process does), so no frame waits; the batch starts only at the turn's end.
    for seq in 1..=3 {
        let request = crate::limiter::VerdictRequest {
            conn: ConnId(1),
            seq,
        };
        room.handle_rate_limit_verdict(request, 0, now);
        room.handle_text(ConnId(1), r#"{"message":"m"}"#, now)
            .unwrap();
        let within: Vec<_> = std::iter::from_fn(|| room.poll_output_within_turn()).collect();
        assert!(within
            .iter()
            .all(|output| !matches!(output, Output::Persist(_))));
        assert!(within
            .iter()
            .any(|output| matches!(output, Output::AskRateLimiter { .. })));
    }
    let batches: Vec<_> = std::iter::from_fn(|| room.poll_output())
        .filter_map(|output| match output {
            Output::Persist(batch) => Some(batch),
            _ => None,
        })
        .collect();
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].writes.len(), 3, "the turn's three messages");
}

#[test]
fn timestamps_strictly_increase_when_the_clock_steps_back() {
    let mut h = unlimited();
    join(&mut h, 1, "ada");
    say(&mut h, 1, "a");
    h.step(Step::StepBack { ms: 60_000 }).unwrap();
    say(&mut h, 1, "b");
    say(&mut h, 1, "c");
    let stamps: Vec<u64> = h
        .frames(1)
        .iter()
        .filter_map(|f| serde_json::from_str::<serde_json::Value>(f).ok())
        .filter_map(|v| v["timestamp"].as_u64())
        .collect();
    assert_eq!(stamps.len(), 3);
    assert!(stamps[0] < stamps[1] && stamps[1] < stamps[2], "{stamps:?}");
    assert_eq!(stamps[1], stamps[0] + 1);
}

#[test]
fn timestamps_and_ids_continue_after_a_crash_with_the_clock_behind() {
    let mut h = unlimited();
    join(&mut h, 1, "ada");
    say(&mut h, 1, "a");
    h.step(Step::Crash).unwrap();
    h.step(Step::StepBack { ms: 3_600_000 }).unwrap();
    join(&mut h, 2, "bob");
    say(&mut h, 2, "b");
    let last = h.frames(2).last().unwrap().clone();
    let first = &h.frames(2)[0];
    let ts = |f: &str| serde_json::from_str::<serde_json::Value>(f).unwrap()["timestamp"].as_u64();
    assert!(last.contains(r#""id":2"#), "{last}");
    assert!(ts(&last) > ts(first));
}

#[test]
fn names_and_messages_are_limited_in_utf16_units() {
    let mut h = unlimited();
    h.step(Step::Connect { conn: 1, ip: 1 }).unwrap();
    // 16 emoji are 32 UTF-16 units: exactly at the limit.
    let name = "😀".repeat(16);
    h.step(text(1, &format!(r#"{{"name":"{name}"}}"#))).unwrap();
    h.settle().unwrap();
    assert_eq!(h.frames(1).last().unwrap(), r#"{"ready":true}"#);
    let at_limit = "ש".repeat(256);
    say(&mut h, 1, &at_limit);
    assert!(h.frames(1).last().unwrap().contains(&at_limit));
    let over = format!("{}😀", "a".repeat(255));
    say(&mut h, 1, &over);
    assert_eq!(
        h.frames(1).last().unwrap(),
        r#"{"error":"Message too long."}"#
    );
    assert!(h.store.get(&keys::message(2)).is_none(), "not stored");

    h.step(Step::Connect { conn: 2, ip: 2 }).unwrap();
    let long = "😀".repeat(16) + "a";
    h.step(text(2, &format!(r#"{{"name":"{long}"}}"#))).unwrap();
    assert_eq!(h.frames(2), vec![r#"{"error":"Name too long."}"#]);
}

#[test]
fn a_too_long_name_closes_with_1009() {
    let mut room = Room::new(RoomConfig::default());
    let now = Timestamp(1);
    room.handle_connect(ConnId(1), "::1".parse().unwrap(), now)
        .unwrap();
    let name = "n".repeat(33);
    room.handle_text(ConnId(1), &format!(r#"{{"name":"{name}"}}"#), now)
        .unwrap();
    let outputs: Vec<Output> = std::iter::from_fn(|| room.poll_output()).collect();
    assert!(outputs.contains(&Output::Close {
        conn: ConnId(1),
        code: 1009,
        reason: "Name too long."
    }));
    // Whatever it sends next is ignored.
    room.handle_text(ConnId(1), r#"{"message":"x"}"#, now)
        .unwrap();
    assert!(std::iter::from_fn(|| room.poll_output()).all(|o| !matches!(o, Output::Send { .. })));
}

#[test]
fn malformed_and_binary_frames_get_clear_errors_and_the_socket_stays() {
    let mut h = unlimited();
    join(&mut h, 1, "ada");
    for (frame, error) in [
        (
            "not json",
            r#"{"error":"Malformed frame: expected a JSON object."}"#,
        ),
        (
            r#"{"message":5}"#,
            r#"{"error":"Malformed frame: expected {\"message\": string}."}"#,
        ),
    ] {
        h.step(text(1, frame)).unwrap();
        h.settle().unwrap();
        assert_eq!(h.frames(1).last().unwrap(), error);
    }
    h.step(Step::Binary { conn: 1 }).unwrap();
    h.settle().unwrap();
    assert_eq!(
        h.frames(1).last().unwrap(),
        r#"{"error":"Binary frames are not supported."}"#
    );
    say(&mut h, 1, "still here");
    assert!(h.frames(1).last().unwrap().contains("still here"));
}

#[test]
fn quit_is_broadcast_when_a_joined_socket_closes() {
    let mut h = unlimited();
    join(&mut h, 1, "ada");
    join(&mut h, 2, "bob");
    h.step(Step::Close { conn: 2 }).unwrap();
    assert_eq!(h.frames(1).last().unwrap(), r#"{"quit":"bob"}"#);
    // An unnamed socket leaves silently.
    h.step(Step::Connect { conn: 3, ip: 3 }).unwrap();
    let count = h.frames(1).len();
    h.step(Step::Close { conn: 3 }).unwrap();
    assert_eq!(h.frames(1).len(), count);
}

#[test]
fn the_rate_limit_lets_a_burst_through_then_rejects_until_the_cooldown_ends() {
    let mut h = harness();
    join(&mut h, 1, "ada"); // action 1
    for n in 2..=4 {
        say(&mut h, 1, &format!("m{n}")); // actions 2..4: no wait
    }
    say(&mut h, 1, "m5"); // action 5: accepted, then a 5 s cooldown
    assert!(h.frames(1).last().unwrap().contains("m5"));
    say(&mut h, 1, "m6");
    let rejected = format!(r#"{{"error":"{ERROR_RATE_LIMITED}"}}"#);
    assert_eq!(h.frames(1).last().unwrap(), &rejected);
    h.step(Step::Advance { ms: 5_000 }).unwrap();
    say(&mut h, 1, "m7");
    assert!(h.frames(1).last().unwrap().contains("m7"));
}

#[test]
fn frames_sent_while_the_answer_is_outstanding_are_decided_in_order() {
    let mut h = unlimited();
    join(&mut h, 1, "ada");
    join(&mut h, 2, "bob");
    let from = h.frames(2).len();
    for message in ["a", "b", "c"] {
        h.step(text(1, &format!(r#"{{"message":"{message}"}}"#)))
            .unwrap();
    }
    assert!(
        h.frames(1).iter().all(|frame| !frame.contains("error")),
        "nothing is refused while answers are on their way: {:?}",
        h.frames(1)
    );
    h.settle().unwrap();
    let texts: Vec<String> = since(&h, 2, from)
        .iter()
        .map(|frame| {
            serde_json::from_str::<serde_json::Value>(frame).unwrap()["message"].to_string()
        })
        .collect();
    assert_eq!(texts, [r#""a""#, r#""b""#, r#""c""#]);
}

#[test]
fn frames_beyond_the_pipeline_bound_are_refused_at_once() {
    let mut h = unlimited();
    join(&mut h, 1, "ada");
    let sent = 1 + PIPELINED_FRAMES_MAX + 2;
    for n in 0..sent {
        h.step(text(1, &format!(r#"{{"message":"m{n}"}}"#)))
            .unwrap();
    }
    let rejected = format!(r#"{{"error":"{ERROR_RATE_LIMITED}"}}"#);
    let refused_now = h.frames(1).iter().filter(|f| **f == rejected).count();
    assert_eq!(
        refused_now, 2,
        "one decided, {PIPELINED_FRAMES_MAX} held, the rest refused"
    );
    h.settle().unwrap();
    let echoed = h
        .frames(1)
        .iter()
        .filter(|f| f.contains(r#""message":"m"#))
        .count();
    assert_eq!(echoed, 1 + PIPELINED_FRAMES_MAX);
    assert_eq!(h.frames(1).iter().filter(|f| **f == rejected).count(), 2);
}

#[test]
fn held_bytes_are_bounded_too() {
    let mut h = unlimited();
    join(&mut h, 1, "ada");
    h.step(text(1, r#"{"message":"first"}"#)).unwrap();
    // Frames far longer than any chat frame: only what fits in the byte bound is held.
    let long = format!(r#"{{"message":"{}"}}"#, "x".repeat(3_000));
    for _ in 0..4 {
        h.step(text(1, &long)).unwrap();
    }
    let rejected = format!(r#"{{"error":"{ERROR_RATE_LIMITED}"}}"#);
    let held = PIPELINED_BYTES_MAX / long.len();
    assert_eq!(
        h.frames(1).iter().filter(|f| **f == rejected).count(),
        4 - held
    );
}

#[test]
fn a_cooldown_refuses_held_frames_exactly_as_the_limiter_would() {
    // Join + four messages make five actions: the fifth is accepted and starts a 5 s
    // cooldown (as when each waited for its answer), so the sixth and seventh are refused.
    let mut h = harness();
    join(&mut h, 1, "ada");
    for n in 1..=6 {
        h.step(text(1, &format!(r#"{{"message":"m{n}"}}"#)))
            .unwrap();
    }
    h.settle().unwrap();
    let rejected = format!(r#"{{"error":"{ERROR_RATE_LIMITED}"}}"#);
    let echoed: Vec<String> = h
        .frames(1)
        .iter()
        .filter(|f| f.contains(r#""message":"m"#))
        .cloned()
        .collect();
    assert_eq!(echoed.len(), 4, "{echoed:?}");
    assert!(echoed[3].contains("m4"));
    assert_eq!(h.frames(1).iter().filter(|f| **f == rejected).count(), 2);
    h.step(Step::Advance { ms: 5_000 }).unwrap();
    say(&mut h, 1, "after");
    assert!(h.frames(1).last().unwrap().contains("after"));
}

/// A bare room (no harness) at `t`: `ada` joined on connection 1 and one message sent right
/// after the join, so that (when the limiter may wait) it is held while the join's answer is
/// outstanding. Nothing has been taken from its outputs.
fn room_with_ada_and_one_message(config: RoomConfig, t: Timestamp) -> Room {
    let mut room = Room::new(config);
    room.handle_connect(ConnId(1), "127.0.0.1".parse().unwrap(), t)
        .unwrap();
    room.handle_text(ConnId(1), r#"{"name":"ada"}"#, t).unwrap();
    room.handle_text(ConnId(1), r#"{"message":"held"}"#, t)
        .unwrap();
    room
}

/// What a bare room put out since last asked.
#[derive(Debug, Default)]
struct Taken {
    questions: Vec<crate::limiter::VerdictRequest>,
    /// Frames to one connection with an `error`, and those with the rate-limit error.
    errors: usize,
    refused: usize,
    attachments: usize,
}

fn take_outputs(room: &mut Room) -> Taken {
    let mut taken = Taken::default();
    while let Some(output) = room.poll_output() {
        match output {
            Output::AskRateLimiter { request, .. } => taken.questions.push(request),
            Output::Send { frame, .. } if frame.contains("error") => {
                taken.errors += 1;
                if frame.contains(ERROR_RATE_LIMITED) {
                    taken.refused += 1;
                }
            }
            Output::SetAttachment { .. } => taken.attachments += 1,
            _ => {}
        }
    }
    taken
}

/// Questions asked and frames refused since last asked.
fn asked_and_refused(room: &mut Room) -> (usize, usize) {
    let taken = take_outputs(room);
    (taken.questions.len(), taken.refused)
}

#[test]
fn a_limiter_that_never_waits_is_never_asked() {
    let config = RoomConfig {
        limiter_may_wait: false,
        ..RoomConfig::default()
    };
    let t = Timestamp(1_000);
    let mut room = room_with_ada_and_one_message(config, t);
    for n in 0..20 {
        room.handle_text(ConnId(1), &format!(r#"{{"message":"m{n}"}}"#), t)
            .unwrap();
    }
    let taken = take_outputs(&mut room);
    assert_eq!((taken.questions.len(), taken.errors), (0, 0));
}

#[test]
fn a_clock_stepping_back_does_not_stretch_a_held_frame_s_wait() {
    let t = Timestamp(100_000);
    let mut room = room_with_ada_and_one_message(RoomConfig::default(), t);
    take_outputs(&mut room);
    // The host's timer fires after the wait, but its clock has meanwhile stepped back 15 s.
    room.handle_timeout(Timestamp(t.0 - 15_000));
    assert_eq!(take_outputs(&mut room).refused, 1);
}

#[test]
fn an_answer_and_the_next_question_write_one_attachment() {
    let t = Timestamp(1_000);
    let mut room = room_with_ada_and_one_message(RoomConfig::default(), t);
    let asked = take_outputs(&mut room).questions;
    let [join_question] = asked[..] else {
        panic!("one question, about the join: {asked:?}")
    };
    // The answer makes the session idle, and the held frame makes it wait again at once.
    room.handle_rate_limit_verdict(join_question, 0, t);
    let taken = take_outputs(&mut room);
    assert_eq!((taken.attachments, taken.questions.len()), (1, 1));
}

#[test]
fn held_frames_are_refused_when_the_answer_is_late() {
    let t = Timestamp(1_000);
    let conn = ConnId(1);
    let mut room = room_with_ada_and_one_message(RoomConfig::default(), t);
    assert_eq!(
        asked_and_refused(&mut room),
        (1, 0),
        "only the join was asked about"
    );
    assert!(
        !room.is_quiescent(),
        "a held frame keeps the room from eviction"
    );
    // The answer does not come: at the deadline the held frame is refused, as the demo
    // would have refused it at once.
    let deadline = room.poll_timeout().expect("a deadline for the held frame");
    assert_eq!(deadline, t.plus_millis(PIPELINE_WAIT_MAX_MS));
    room.handle_timeout(Timestamp(deadline.0 - 1));
    assert_eq!(
        asked_and_refused(&mut room),
        (0, 0),
        "not before the deadline"
    );
    room.handle_timeout(deadline);
    assert_eq!(asked_and_refused(&mut room), (0, 1));
    assert_eq!(room.poll_timeout(), None);
    assert!(room.is_quiescent());
    // A frame arriving while the answer is still outstanding is held again, for as long.
    room.handle_text(conn, r#"{"message":"late"}"#, deadline)
        .unwrap();
    assert_eq!(asked_and_refused(&mut room), (0, 0));
    room.handle_timeout(deadline.plus_millis(PIPELINE_WAIT_MAX_MS));
    assert_eq!(asked_and_refused(&mut room), (0, 1));
    // Once the limiter is given up on, the session asks again.
    let retry = t.plus_millis(crate::limiter::VERDICT_TIMEOUT_MS);
    room.handle_text(conn, r#"{"message":"again"}"#, retry)
        .unwrap();
    assert_eq!(asked_and_refused(&mut room), (1, 0));
}

#[test]
fn one_ip_shares_its_limiter_across_connections() {
    let mut h = harness();
    for conn in 1..=5 {
        h.step(Step::Connect { conn, ip: 9 }).unwrap();
        h.step(text(conn, r#"{"name":"x"}"#)).unwrap();
        h.settle().unwrap();
    }
    // Five actions by one IP: the fifth connection is cooling down.
    h.step(text(5, r#"{"message":"m"}"#)).unwrap();
    assert_eq!(
        h.frames(5).last().unwrap(),
        &format!(r#"{{"error":"{ERROR_RATE_LIMITED}"}}"#)
    );
}

#[test]
fn join_replays_the_newest_100() {
    let mut h = unlimited();
    join(&mut h, 1, "ada");
    for n in 1..=150 {
        say(&mut h, 1, &format!("m{n}"));
    }
    join(&mut h, 2, "bob");
    let frames = h.frames(2);
    // joined ada, 100 messages, joined bob, ready
    assert_eq!(frames.len(), 103);
    assert!(frames[1].contains(r#""id":51"#));
    assert!(frames[100].contains(r#""id":150"#));
}

#[test]
fn since_replays_exactly_what_was_missed() {
    let mut h = unlimited();
    join(&mut h, 1, "ada");
    for n in 1..=5 {
        say(&mut h, 1, &format!("m{n}"));
    }
    h.step(Step::Connect { conn: 2, ip: 2 }).unwrap();
    h.step(text(2, r#"{"name":"bob","since":3}"#)).unwrap();
    let frames = h.frames(2);
    assert_eq!(frames.len(), 5, "{frames:?}");
    assert!(frames[1].contains(r#""id":4"#) && frames[2].contains(r#""id":5"#));
    assert_eq!(frames[4], r#"{"ready":true,"recovered":true}"#);

    // Up to date: nothing to replay, still recovered.
    h.step(Step::Connect { conn: 3, ip: 3 }).unwrap();
    h.step(text(3, r#"{"name":"cy","since":5}"#)).unwrap();
    assert_eq!(
        h.frames(3).last().unwrap(),
        r#"{"ready":true,"recovered":true}"#
    );
    assert!(h.frames(3).iter().all(|f| !f.contains(r#""id""#)));
}

#[test]
fn since_falls_back_when_the_gap_is_not_held() {
    let config = RoomConfig {
        history_retained_max: 120,
        ..RoomConfig::default()
    };
    let mut h = unlimited_with(config);
    join(&mut h, 1, "ada");
    for n in 1..=150 {
        say(&mut h, 1, &format!("m{n}"));
    }
    for (conn, since) in [(2u8, 10u64), (3, 999)] {
        h.step(Step::Connect { conn, ip: conn }).unwrap();
        h.step(text(conn, &format!(r#"{{"name":"x","since":{since}}}"#)))
            .unwrap();
        let frames = h.frames(conn);
        assert_eq!(
            frames.last().unwrap(),
            r#"{"ready":true,"recovered":false}"#
        );
        assert!(frames.iter().any(|f| f.contains(r#""id":51}"#)));
        assert!(!frames.iter().any(|f| f.contains(r#""id":50}"#)));
    }
}

#[test]
fn storage_keeps_exactly_the_retained_history() {
    let config = RoomConfig {
        history_retained_max: 10,
        ..RoomConfig::default()
    };
    let mut h = unlimited_with(config);
    join(&mut h, 1, "ada");
    for n in 1..=25 {
        say(&mut h, 1, &format!("m{n}"));
    }
    assert_eq!(h.store.len(), 10);
    assert!(h.store.get(&keys::message(15)).is_none());
    assert!(h.store.get(&keys::message(16)).is_some());
}

#[test]
fn eviction_changes_nothing_observable() {
    let mut h = unlimited();
    join(&mut h, 1, "ada");
    say(&mut h, 1, "before");
    h.step(Step::Connect { conn: 2, ip: 2 }).unwrap(); // not yet named
    h.step(Step::Evict).unwrap();
    assert!(!h.host.is_resident());
    say(&mut h, 1, "after");
    h.step(text(2, r#"{"name":"bob"}"#)).unwrap();
    let frames = h.frames(2);
    assert_eq!(frames[0], r#"{"joined":"ada"}"#);
    assert!(frames[1].contains("before") && frames[1].contains(r#""id":1"#));
    assert!(frames[2].contains("after") && frames[2].contains(r#""id":2"#));
    assert_eq!(frames[3], r#"{"joined":"bob"}"#);
}

#[test]
fn eviction_waits_for_the_write_in_flight() {
    let mut h = unlimited();
    join(&mut h, 1, "ada");
    h.step(text(1, r#"{"message":"m"}"#)).unwrap();
    h.step(Step::Evict).unwrap();
    assert!(h.host.is_resident(), "a batch is in flight");
    h.step(Step::Answer).unwrap();
    h.step(Step::Commit).unwrap();
    assert!(h.host.is_resident(), "committed but not yet confirmed");
    h.step(Step::Confirm).unwrap();
    assert!(!h.host.is_resident(), "evicted once quiescent");
}

#[test]
fn a_cooldown_survives_eviction() {
    let mut h = harness();
    join(&mut h, 1, "ada");
    for n in 2..=5 {
        say(&mut h, 1, &format!("m{n}"));
    }
    h.step(Step::Evict).unwrap();
    h.step(text(1, r#"{"message":"x"}"#)).unwrap();
    assert_eq!(
        h.frames(1).last().unwrap(),
        &format!(r#"{{"error":"{ERROR_RATE_LIMITED}"}}"#)
    );
}

#[test]
fn a_corrupt_attachment_closes_only_its_socket() {
    let stored = [];
    let room = Room::restore(
        RoomConfig::default(),
        &stored,
        [(ConnId(1), &b"\x01garbage"[..]), (ConnId(2), &b""[..])],
    );
    let mut room = room.unwrap();
    let closes: Vec<Output> = std::iter::from_fn(|| room.poll_output()).collect();
    assert_eq!(closes.len(), 2);
    assert_eq!(room.connection_count(), 0);
}

#[test]
fn corrupt_storage_is_an_error_not_a_panic() {
    for record in [
        (keys::message(1), "not json"),
        (
            keys::message(2),
            r#"{"name":"a","message":"b","timestamp":1,"id":1}"#,
        ),
        (
            "msg/x".to_owned(),
            r#"{"name":"a","message":"b","timestamp":1,"id":1}"#,
        ),
        // Found by fuzzing: records that leave no room for a next message.
        (
            keys::message(0),
            r#"{"name":"a","message":"b","timestamp":1,"id":0}"#,
        ),
        (
            keys::message(u64::MAX),
            r#"{"name":"a","message":"b","timestamp":1,"id":18446744073709551615}"#,
        ),
        (
            keys::message(1),
            r#"{"name":"a","message":"b","timestamp":18446744073709551615,"id":1}"#,
        ),
    ] {
        let stored = [(record.0, record.1.into())];
        assert!(Room::restore(RoomConfig::default(), &stored, []).is_err());
    }
    // Id 0 used to slip past the gap check: 0 then 5 was accepted as consecutive.
    let gap = [
        (
            keys::message(0),
            r#"{"name":"a","message":"b","timestamp":1,"id":0}"#.into(),
        ),
        (
            keys::message(5),
            r#"{"name":"a","message":"b","timestamp":2,"id":5}"#.into(),
        ),
    ];
    assert!(Room::restore(RoomConfig::default(), &gap, []).is_err());
}

#[test]
fn publish_is_broadcast_once_durable_and_reports_its_id() {
    let mut room = Room::new(RoomConfig::default());
    let mut store = MemoryStore::new();
    let now = Timestamp(5);
    room.handle_publish(PublishId(7), "ops", "maintenance at noon", now)
        .unwrap();
    assert!(room.handle_publish(PublishId(8), "", "x", now).is_err());
    assert!(room
        .handle_publish(PublishId(8), "ops", &"x".repeat(257), now)
        .is_err());
    let Some(Output::Persist(batch)) = room.poll_output() else {
        panic!("expected a batch");
    };
    store.apply(&batch);
    room.handle_durable(batch.id, now).unwrap();
    assert_eq!(
        room.poll_output(),
        Some(Output::Published {
            request: PublishId(7),
            id: 1
        })
    );
    assert_eq!(room.history_page(None, 10).len(), 1);
}

#[test]
fn history_pages_go_newest_first() {
    let mut h = unlimited();
    join(&mut h, 1, "ada");
    for n in 1..=7 {
        say(&mut h, 1, &format!("m{n}"));
    }
    let room = h.host.room().unwrap();
    let page = room.history_page(Some(6), 3);
    assert_eq!(page.len(), 3);
    assert!(page[0].contains(r#""id":5"#) && page[2].contains(r#""id":3"#));
    assert_eq!(room.presence().collect::<Vec<_>>(), vec!["ada"]);
}

#[test]
fn attachments_stay_small() {
    let mut room = Room::new(RoomConfig::default());
    room.handle_connect(ConnId(1), "2001:db8::1".parse().unwrap(), Timestamp(1))
        .unwrap();
    let name = "\u{10FFFF}".repeat(16);
    room.handle_text(ConnId(1), &format!(r#"{{"name":"{name}"}}"#), Timestamp(1))
        .unwrap();
    for output in std::iter::from_fn(|| room.poll_output()) {
        if let Output::SetAttachment { attachment, .. } = output {
            assert!(attachment.len() < 200, "{} bytes", attachment.len());
            crate::room::validate_attachment(&attachment).unwrap();
        }
    }
}

#[test]
fn attachments_check_the_joined_name_again() {
    let mut room = Room::new(RoomConfig::default());
    room.handle_connect(ConnId(1), "192.0.2.1".parse().unwrap(), Timestamp(1))
        .unwrap();
    room.handle_text(ConnId(1), r#"{"name":"ada"}"#, Timestamp(1))
        .unwrap();
    let joined = std::iter::from_fn(|| room.poll_output())
        .filter_map(|output| match output {
            Output::SetAttachment { attachment, .. } => Some(attachment),
            _ => None,
        })
        .last()
        .expect("the join stores an attachment");
    // The name is stored as a postcard string: a one-byte length, then the bytes.
    let at = joined
        .windows(4)
        .position(|w| w == b"\x03ada")
        .expect("the name in the attachment");
    let with_name = |name: &str| {
        let mut bytes = joined[..at].to_vec();
        bytes.push(u8::try_from(name.len()).unwrap());
        bytes.extend_from_slice(name.as_bytes());
        bytes.extend_from_slice(&joined[at + 4..]);
        crate::room::validate_attachment(&bytes)
    };
    use crate::room::AttachmentError;
    let cases: Vec<(String, Result<(), AttachmentError>)> = vec![
        ("ada".into(), Ok(())),
        ("n".repeat(32), Ok(())),
        ("n".repeat(33), Err(AttachmentError::Malformed)),
        (String::new(), Err(AttachmentError::Malformed)),
    ];
    for (name, expected) in cases {
        assert_eq!(with_name(&name), expected, "{name:?}");
    }
}

#[cfg(feature = "planted-bugs")]
#[test]
fn the_harness_catches_a_planted_broadcast_before_durable() {
    let config = RoomConfig {
        planted_bug: Some(PlantedBug::BroadcastBeforeDurable),
        ..RoomConfig::default()
    };
    let mut h = Harness::new(config, RateLimiterConfig::default());
    h.step(Step::Connect { conn: 1, ip: 1 }).unwrap();
    h.step(text(1, r#"{"name":"a"}"#)).unwrap();
    h.settle().unwrap();
    assert!(h.step(text(1, r#"{"message":"m"}"#)).is_err());
}

// ---------------------------------------------------------------------------------------
// Properties

fn arb_frame() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z😀ש]{0,6}".prop_map(|m| format!(r#"{{"message":"{m}"}}"#)),
        2 => "[a-z]{0,4}".prop_map(|n| format!(r#"{{"name":"{n}"}}"#)),
        1 => (0u64..12).prop_map(|s| format!(r#"{{"name":"r","since":{s}}}"#)),
        1 => Just(format!(r#"{{"message":"{}"}}"#, "x".repeat(257))),
        1 => Just(format!(r#"{{"name":"{}"}}"#, "n".repeat(33))),
        1 => Just("{oops".to_owned()),
    ]
}

fn arb_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0u8..5, 0u8..3).prop_map(|(conn, ip)| Step::Connect { conn, ip }),
        8 => (0u8..5, arb_frame()).prop_map(|(conn, text)| Step::Text { conn, text }),
        1 => (0u8..5).prop_map(|conn| Step::Binary { conn }),
        2 => (0u8..5).prop_map(|conn| Step::Close { conn }),
        4 => Just(Step::Commit),
        4 => Just(Step::Confirm),
        4 => Just(Step::Answer),
        2 => Just(Step::Evict),
        1 => Just(Step::Crash),
        3 => (0u32..10_000).prop_map(|ms| Step::Advance { ms }),
        1 => (0u32..100_000).prop_map(|ms| Step::StepBack { ms }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Ids gap-free and unique per client, timestamps strictly increasing under arbitrary
    /// clocks, nothing before a join except its replay, rosters consistent, every seen
    /// message stored, and eviction invisible: the harness checks all of it every step.
    #[test]
    fn the_room_keeps_its_invariants_under_any_input_sequence(
        steps in proptest::collection::vec(arb_step(), 1..200),
        retained in 3usize..8,
    ) {
        let config = RoomConfig {
            history_retained_max: retained,
            join_replay_max: 2,
            ..RoomConfig::default()
        };
        let mut h = Harness::new(config, RateLimiterConfig { cost_ms: 100, grace_ms: 300 });
        for step in steps {
            h.step(step).map_err(|v| TestCaseError::fail(v.to_string()))?;
        }
        h.settle().map_err(|v| TestCaseError::fail(v.to_string()))?;
    }

    /// The limiter never answers "no wait" more often than its burst allows, over any
    /// window and any clock (including steps backwards).
    #[test]
    fn the_limiter_never_passes_more_than_its_burst(
        moves in proptest::collection::vec(-20_000i64..20_000, 1..300),
        cost_ms in 1u64..10_000,
        grace_ms in 0u64..30_000,
    ) {
        let config = RateLimiterConfig { cost_ms, grace_ms };
        let mut limiter = RateLimiter::new(config);
        let mut clock: i64 = 1_000_000_000;
        let mut monotonic = 0u64;
        let mut passed: Vec<u64> = Vec::new();
        for delta in moves {
            clock = (clock + delta).max(0);
            monotonic = monotonic.max(clock as u64);
            if limiter.handle_action(Timestamp(clock as u64)) == 0 {
                passed.push(monotonic);
            }
        }
        for (i, start) in passed.iter().enumerate() {
            for (j, end) in passed.iter().enumerate().skip(i) {
                let count = (j - i + 1) as u64;
                prop_assert!(count <= config.burst_max(end - start).max(1),
                    "{count} passes within {} ms", end - start);
            }
        }
    }

    /// Pipelining changes no limiter guarantee: however frames, answers, lost answers and
    /// time interleave, the frames one session gets decided (each asked about once) within
    /// any window never exceed the limiter's burst plus the one frame decided before an
    /// answer ordered a cooldown; and while every answer says "no wait", no frame within the
    /// queue's bound is refused.
    #[test]
    fn pipelining_never_lets_more_through_than_the_limiter(
        moves in proptest::collection::vec((0u8..4, 0u32..3_000), 1..300),
        cost_ms in 1u64..5_000,
        grace_ms in 0u64..20_000,
    ) {
        let config = RateLimiterConfig { cost_ms, grace_ms };
        let mut limiter = RateLimiter::new(config);
        let mut room = Room::new(RoomConfig::default());
        let conn = ConnId(1);
        let mut now = Timestamp(1_000_000);
        let mut questions = std::collections::VecDeque::new();
        let mut decided_at: Vec<u64> = Vec::new();
        let mut drain = |room: &mut Room, now: Timestamp, questions: &mut std::collections::VecDeque<_>| {
            while let Some(output) = room.poll_output() {
                match output {
                    Output::AskRateLimiter { request, .. } => {
                        questions.push_back(request);
                        decided_at.push(now.0);
                    }
                    Output::Persist(batch) => room.handle_durable(batch.id, now).unwrap(),
                    _ => {}
                }
            }
        };
        room.handle_connect(conn, "127.0.0.1".parse().unwrap(), now).unwrap();
        room.handle_text(conn, r#"{"name":"ada"}"#, now).unwrap();
        drain(&mut room, now, &mut questions);
        for (kind, ms) in moves {
            match kind {
                0 | 1 => room.handle_text(conn, r#"{"message":"m"}"#, now).unwrap(),
                2 => {
                    if let Some(request) = questions.pop_front() {
                        let wait_ms = limiter.handle_action(now);
                        room.handle_rate_limit_verdict(request, wait_ms, now);
                    }
                }
                _ => {
                    now = now.plus_millis(u64::from(ms));
                    room.handle_timeout(now);
                }
            }
            drain(&mut room, now, &mut questions);
        }
        for (i, start) in decided_at.iter().enumerate() {
            for (j, end) in decided_at.iter().enumerate().skip(i) {
                let count = (j - i + 1) as u64;
                prop_assert!(count <= config.burst_max(end - start) + 1,
                    "{count} frames decided within {} ms", end - start);
            }
        }
    }

    /// With a limiter that always answers "no wait", a sender that never has more than the
    /// queue's bound outstanding has nothing refused, whatever the answers' delays.
    #[test]
    fn pipelined_frames_within_the_bound_are_all_accepted(
        moves in proptest::collection::vec(0u8..3, 1..300),
    ) {
        let mut h = unlimited();
        join(&mut h, 1, "ada");
        let mut outstanding = 0usize;
        let mut sent = 0usize;
        for kind in moves {
            if kind == 0 && outstanding <= PIPELINED_FRAMES_MAX {
                h.step(text(1, r#"{"message":"m"}"#)).map_err(|v| TestCaseError::fail(v.to_string()))?;
                outstanding += 1;
                sent += 1;
            } else if kind == 1 {
                h.step(Step::Answer).map_err(|v| TestCaseError::fail(v.to_string()))?;
                outstanding = outstanding.saturating_sub(1);
            } else {
                h.step(Step::Commit).map_err(|v| TestCaseError::fail(v.to_string()))?;
                h.step(Step::Confirm).map_err(|v| TestCaseError::fail(v.to_string()))?;
            }
        }
        h.settle().map_err(|v| TestCaseError::fail(v.to_string()))?;
        let echoed = h.frames(1).iter().filter(|f| f.contains(r#""message":"m""#)).count();
        prop_assert!(h.frames(1).iter().all(|f| !f.contains("error")), "{:?}", h.frames(1));
        prop_assert_eq!(echoed, sent);
    }

    /// Restoring from attachments and storage reproduces presence and history exactly.
    #[test]
    fn restore_reproduces_roster_and_history(
        names in proptest::collection::vec("[a-z]{1,5}", 1..6),
        messages in 0usize..30,
    ) {
        let mut h = unlimited();
        for (conn, name) in names.iter().enumerate() {
            join(&mut h, conn as u8, name);
        }
        for n in 0..messages {
            say(&mut h, (n % names.len()) as u8, &format!("m{n}"));
        }
        let room = h.host.room().unwrap();
        let before: (Vec<String>, Vec<_>) =
            (room.presence().map(str::to_owned).collect(), room.history_page(None, usize::MAX));
        h.step(Step::Evict).map_err(|v| TestCaseError::fail(v.to_string()))?;
        prop_assert!(!h.host.is_resident());
        h.step(Step::Connect { conn: 99, ip: 99 }).map_err(|v| TestCaseError::fail(v.to_string()))?;
        let room = h.host.room().unwrap();
        prop_assert_eq!(before.0, room.presence().map(str::to_owned).collect::<Vec<_>>());
        prop_assert_eq!(before.1, room.history_page(None, usize::MAX));
    }
}

#[test]
fn stats_count_durable_messages_and_rate_limited_frames_across_evictions() {
    let mut h = unlimited();
    join(&mut h, 1, "ada");
    say(&mut h, 1, "one");
    h.step(text(1, r#"{"message":"two"}"#)).unwrap();
    for n in 0..=PIPELINED_FRAMES_MAX {
        h.step(text(1, &format!(r#"{{"message":"held {n}"}}"#)))
            .unwrap();
    }
    h.settle().unwrap();
    h.step(Step::Evict).unwrap();
    assert!(!h.host.is_resident());
    let stats = h.host.take_stats();
    // "one", "two" and the held frames are durable; the frame beyond the bound is refused.
    assert_eq!(stats.messages_durable, 2 + PIPELINED_FRAMES_MAX as u64);
    assert_eq!(stats.frames_rate_limited, 1);
    assert_eq!(h.host.take_stats(), Default::default());
}

/// What a room sent while [`drive`] carried out its outputs.
#[derive(Default)]
struct Driven {
    sends: Vec<(ConnId, String)>,
    broadcasts: Vec<String>,
    failed_publishes: Vec<PublishId>,
}

/// Carries out `room`'s outputs like an adapter whose limiter never makes anyone wait and
/// whose storage fails every write if `writes_fail`.
fn drive(room: &mut Room, now: Timestamp, writes_fail: bool) -> Driven {
    let mut driven = Driven::default();
    loop {
        let mut asks = Vec::new();
        while let Some(output) = room.poll_output() {
            match output {
                Output::Send { conn, frame } => driven.sends.push((conn, frame.to_string())),
                Output::Broadcast { frame, .. } => driven.broadcasts.push(frame.to_string()),
                Output::AskRateLimiter { request, .. } => asks.push(request),
                Output::Persist(batch) if writes_fail => driven
                    .failed_publishes
                    .extend(room.handle_write_failed(batch.id, now).unwrap()),
                Output::Persist(batch) => room.handle_durable(batch.id, now).unwrap(),
                _ => {}
            }
        }
        if asks.is_empty() {
            return driven;
        }
        for request in asks {
            room.handle_rate_limit_verdict(request, 0, now);
        }
    }
}

#[test]
fn a_failed_write_tells_only_its_senders_and_its_ids_are_reused() {
    use crate::protocol::ERROR_STORAGE_UNAVAILABLE;
    let mut room = Room::new(RoomConfig::default());
    let t = Timestamp(1_000_000);
    let (ada, bob) = (ConnId(1), ConnId(2));
    for (conn, name) in [(ada, "ada"), (bob, "bob")] {
        room.handle_connect(conn, [10, 0, 0, conn.0 as u8].into(), t)
            .unwrap();
        room.handle_text(conn, &format!(r#"{{"name":"{name}"}}"#), t)
            .unwrap();
    }
    drive(&mut room, t, false);

    room.handle_text(ada, r#"{"message":"lost"}"#, t).unwrap();
    room.handle_publish(PublishId(7), "ops", "also lost", t)
        .unwrap();
    let failed = drive(&mut room, t, true);
    let error = format!(r#"{{"error":"{ERROR_STORAGE_UNAVAILABLE}"}}"#);
    assert_eq!(
        failed.sends,
        vec![(ada, error)],
        "only the sender hears of it"
    );
    assert!(failed.broadcasts.is_empty(), "{:?}", failed.broadcasts);
    assert_eq!(failed.failed_publishes, vec![PublishId(7)]);
    assert_eq!(room.last_durable_id(), 0);
    assert_eq!(room.take_stats().messages_refused_storage, 2);

    // The sender is not held back (no rate-limit error), and the next message takes id 1.
    room.handle_text(ada, r#"{"message":"kept"}"#, t.plus_millis(1))
        .unwrap();
    let kept = drive(&mut room, t.plus_millis(1), false);
    assert!(kept.sends.is_empty(), "{:?}", kept.sends);
    assert_eq!(kept.broadcasts.len(), 1);
    assert!(
        kept.broadcasts[0].contains(r#""message":"kept""#)
            && kept.broadcasts[0].contains(r#""id":1"#),
        "{}",
        kept.broadcasts[0]
    );
}

/// A bare room whose limiter never waits, with `ada` joined on connection 1 and every output
/// taken.
fn quiet_room_with_ada(config: RoomConfig, t: Timestamp) -> Room {
    let mut room = Room::new(RoomConfig {
        limiter_may_wait: false,
        ..config
    });
    room.handle_connect(ConnId(1), [10, 0, 0, 1].into(), t)
        .unwrap();
    room.handle_text(ConnId(1), r#"{"name":"ada"}"#, t).unwrap();
    drive(&mut room, t, false);
    room
}

/// The next batch a room puts out, leaving it in flight (other outputs are dropped).
fn next_batch(room: &mut Room) -> crate::storage::WriteBatch {
    std::iter::from_fn(|| room.poll_output())
        .find_map(|output| match output {
            Output::Persist(batch) => Some(batch),
            _ => None,
        })
        .expect("a batch")
}

#[test]
fn a_confirmation_or_failure_of_another_batch_is_refused() {
    use crate::room::RoomError;
    let t = Timestamp(1_000);
    let mut room = quiet_room_with_ada(RoomConfig::default(), t);
    room.handle_text(ConnId(1), r#"{"message":"one"}"#, t)
        .unwrap();
    let first = next_batch(&mut room);
    room.handle_durable(first.id, t).unwrap();
    room.handle_text(ConnId(1), r#"{"message":"two"}"#, t)
        .unwrap();
    let second = next_batch(&mut room);
    assert_ne!(first.id, second.id, "each batch has an id of its own");
    // A stale or duplicated answer from storage changes nothing.
    assert_eq!(
        room.handle_durable(first.id, t),
        Err(RoomError::UnknownBatch(first.id))
    );
    assert_eq!(
        room.handle_write_failed(first.id, t),
        Err(RoomError::UnknownBatch(first.id))
    );
    assert_eq!(room.last_durable_id(), 1);
    assert!(room.poll_output().is_none(), "nothing sent or broadcast");
    room.handle_durable(second.id, t).unwrap();
    assert_eq!(room.last_durable_id(), 2);
}

#[test]
fn a_sender_gone_before_its_write_fails_is_not_written_to() {
    let t = Timestamp(1_000);
    let mut room = quiet_room_with_ada(RoomConfig::default(), t);
    room.handle_text(ConnId(1), r#"{"message":"lost"}"#, t)
        .unwrap();
    let batch = next_batch(&mut room);
    room.handle_close(ConnId(1), t).unwrap();
    drive(&mut room, t, false);
    room.handle_write_failed(batch.id, t).unwrap();
    let after: Vec<Output> = std::iter::from_fn(|| room.poll_output()).collect();
    assert!(
        !after
            .iter()
            .any(|output| matches!(output, Output::Send { conn, .. } if *conn == ConnId(1))),
        "{after:?}"
    );
}

#[test]
fn restore_accepts_a_history_whose_oldest_messages_were_trimmed() {
    let record = |id: u64| {
        (
            keys::message(id),
            format!(r#"{{"name":"a","message":"m{id}","timestamp":{id},"id":{id}}}"#).into(),
        )
    };
    let stored = [record(5), record(6), record(7)];
    let room = Room::restore(RoomConfig::default(), &stored, []).unwrap();
    assert_eq!(room.last_durable_id(), 7);
    assert_eq!(room.history_page(None, 10).len(), 3);
    let gap = [record(5), record(7)];
    assert!(Room::restore(RoomConfig::default(), &gap, []).is_err());
}

#[test]
fn a_room_counts_its_connections_and_keeps_its_config() {
    let config = RoomConfig {
        history_retained_max: 7,
        join_replay_max: 3,
        ..RoomConfig::default()
    };
    let t = Timestamp(1_000);
    let mut room = Room::new(config.clone());
    assert_eq!(room.config(), &config);
    assert_eq!(room.connection_count(), 0);
    room.handle_connect(ConnId(1), [10, 0, 0, 1].into(), t)
        .unwrap();
    room.handle_connect(ConnId(2), [10, 0, 0, 2].into(), t)
        .unwrap();
    room.handle_text(ConnId(2), r#"{"name":"bob"}"#, t).unwrap();
    assert_eq!(room.connection_count(), 2, "named or not");
    room.handle_close(ConnId(1), t).unwrap();
    assert_eq!(room.connection_count(), 1);
}

#[test]
fn each_connection_gets_its_own_attachment_and_a_restore_keeps_them_all() {
    let t = Timestamp(1_000);
    let mut room = Room::new(RoomConfig::default());
    // Two connections within one turn, before the adapter takes any output.
    room.handle_connect(ConnId(1), [10, 0, 0, 1].into(), t)
        .unwrap();
    room.handle_connect(ConnId(2), [10, 0, 0, 2].into(), t)
        .unwrap();
    let attachments: Vec<(ConnId, Vec<u8>)> = std::iter::from_fn(|| room.poll_output())
        .filter_map(|output| match output {
            Output::SetAttachment { conn, attachment } => Some((conn, attachment)),
            _ => None,
        })
        .collect();
    let conns: Vec<ConnId> = attachments.iter().map(|(conn, _)| *conn).collect();
    assert_eq!(conns, vec![ConnId(1), ConnId(2)]);
    let restored = Room::restore(
        RoomConfig::default(),
        &[],
        attachments
            .iter()
            .map(|(conn, bytes)| (*conn, bytes.as_slice())),
    );
    assert_eq!(restored.unwrap().connection_count(), 2);
}

#[test]
fn attachments_up_to_the_length_limit_restore_and_longer_ones_close() {
    use crate::room::ATTACHMENT_LEN_MAX_BYTES;
    let t = Timestamp(1_000);
    let mut room = Room::new(RoomConfig::default());
    room.handle_connect(ConnId(1), [10, 0, 0, 1].into(), t)
        .unwrap();
    let attachment = std::iter::from_fn(|| room.poll_output())
        .find_map(|output| match output {
            Output::SetAttachment { attachment, .. } => Some(attachment),
            _ => None,
        })
        .unwrap();
    // The limit is on the stored bytes, whatever follows the encoding.
    let padded = |len: usize| {
        let mut bytes = attachment.clone();
        bytes.resize(len, 0);
        bytes
    };
    let (at_limit, beyond) = (
        padded(ATTACHMENT_LEN_MAX_BYTES),
        padded(ATTACHMENT_LEN_MAX_BYTES + 1),
    );
    let mut restored = Room::restore(
        RoomConfig::default(),
        &[],
        [(ConnId(1), &at_limit[..]), (ConnId(2), &beyond[..])],
    )
    .unwrap();
    let closed: Vec<ConnId> = std::iter::from_fn(|| restored.poll_output())
        .filter_map(|output| match output {
            Output::Close { conn, .. } => Some(conn),
            _ => None,
        })
        .collect();
    assert_eq!(closed, vec![ConnId(2)]);
    assert_eq!(restored.connection_count(), 1);
}

#[test]
fn messages_beyond_the_pending_bound_are_refused_as_busy() {
    use crate::room::ERROR_ROOM_BUSY;
    let t = Timestamp(1_000);
    let config = RoomConfig {
        pending_messages_max: 2,
        ..RoomConfig::default()
    };
    let mut room = quiet_room_with_ada(config, t);
    room.handle_text(ConnId(1), r#"{"message":"in flight"}"#, t)
        .unwrap();
    let batch = next_batch(&mut room);
    room.handle_text(ConnId(1), r#"{"message":"waiting"}"#, t)
        .unwrap();
    room.handle_text(ConnId(1), r#"{"message":"one too many"}"#, t)
        .unwrap();
    let busy = format!(r#"{{"error":"{ERROR_ROOM_BUSY}"}}"#);
    let sends: Vec<String> = std::iter::from_fn(|| room.poll_output())
        .filter_map(|output| match output {
            Output::Send { frame, .. } => Some(frame.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(sends, vec![busy]);
    room.handle_durable(batch.id, t).unwrap();
    let driven = drive(&mut room, t, false);
    let said: Vec<bool> = ["in flight", "waiting"]
        .iter()
        .map(|m| driven.broadcasts.iter().any(|f| f.contains(m)))
        .collect();
    assert_eq!(said, vec![true, true], "{:?}", driven.broadcasts);
    assert_eq!(driven.broadcasts.len(), 2, "{:?}", driven.broadcasts);
    assert_eq!(room.last_durable_id(), 2);
}

#[test]
fn frames_refused_during_a_cooldown_are_counted() {
    let mut h = harness();
    join(&mut h, 1, "ada");
    for n in 0..8 {
        say(&mut h, 1, &format!("m{n}"));
    }
    let refused = h
        .frames(1)
        .iter()
        .filter(|frame| frame.contains(ERROR_RATE_LIMITED))
        .count();
    assert!(refused > 1, "the burst is over and the cooldown refuses");
    assert_eq!(h.host.take_stats().frames_rate_limited, refused as u64);
}

#[test]
fn since_just_inside_the_retained_history_recovers_and_just_outside_falls_back() {
    let config = RoomConfig {
        history_retained_max: 5,
        ..RoomConfig::default()
    };
    let mut h = unlimited_with(config);
    join(&mut h, 1, "ada");
    for n in 1..=8 {
        say(&mut h, 1, &format!("m{n}"));
    }
    // Messages 4..=8 are held: `since: 3` misses nothing that is not held.
    for (conn, since, recovered) in [(2u8, 3u64, true), (3, 2, false)] {
        h.step(Step::Connect { conn, ip: conn }).unwrap();
        h.step(text(conn, &format!(r#"{{"name":"x","since":{since}}}"#)))
            .unwrap();
        let frames = h.frames(conn);
        assert_eq!(
            frames.last().unwrap(),
            &format!(r#"{{"ready":true,"recovered":{recovered}}}"#)
        );
        assert!(frames.iter().any(|f| f.contains(r#""id":4"#)), "{frames:?}");
    }
}

/// A text frame of exactly `len` bytes: a chat message padded with JSON whitespace.
fn padded_message(message: &str, len: usize) -> String {
    let frame = format!(r#"{{"message":"{message}"}}"#);
    format!("{frame}{}", " ".repeat(len - frame.len()))
}

#[test]
fn held_frames_may_fill_the_byte_bound_exactly_and_it_frees_as_they_are_decided() {
    let t = Timestamp(1_000);
    // Eight frames of 1 KiB: exactly the documented bound of 8 KiB.
    let frame_len = 1024;
    assert_eq!(frame_len * PIPELINED_FRAMES_MAX, 8 * 1024);
    let mut room = room_with_ada_and_one_message(RoomConfig::default(), t);
    drive(&mut room, t, false);
    let mut sends = Vec::new();
    for round in 0..2 {
        // Ada's next question is outstanding while these arrive: all are held.
        room.handle_text(ConnId(1), &padded_message("ask", 32), t)
            .unwrap();
        for n in 0..PIPELINED_FRAMES_MAX {
            let frame = padded_message(&format!("r{round} m{n}"), frame_len);
            room.handle_text(ConnId(1), &frame, t).unwrap();
        }
        sends.extend(drive(&mut room, t, false).sends);
    }
    assert!(sends.is_empty(), "nothing refused: {sends:?}");
    assert_eq!(
        room.last_durable_id(),
        2 * (1 + PIPELINED_FRAMES_MAX as u64) + 1
    );
}

#[test]
fn held_frames_refused_as_late_are_counted() {
    let t = Timestamp(1_000);
    let mut room = room_with_ada_and_one_message(RoomConfig::default(), t);
    take_outputs(&mut room);
    assert_eq!(room.take_stats().frames_rate_limited, 0);
    room.handle_timeout(t.plus_millis(PIPELINE_WAIT_MAX_MS));
    assert_eq!(asked_and_refused(&mut room), (0, 1));
    assert_eq!(room.take_stats().frames_rate_limited, 1);
}

#[test]
fn held_frames_are_decided_as_soon_as_their_limiter_answer_is_given_up_on() {
    use crate::limiter::VERDICT_TIMEOUT_MS;
    let t = Timestamp(1_000);
    let mut room = Room::new(RoomConfig::default());
    room.handle_connect(ConnId(1), "127.0.0.1".parse().unwrap(), t)
        .unwrap();
    // The join asks the limiter; the question is never answered.
    room.handle_text(ConnId(1), r#"{"name":"ada"}"#, t).unwrap();
    let first = take_outputs(&mut room);
    assert_eq!(first.questions.len(), 1);
    // A frame arriving just before the question is given up on is held
    // (and would be late only PIPELINE_WAIT_MAX_MS after it arrived).
    let arrives = t.plus_millis(VERDICT_TIMEOUT_MS - PIPELINE_WAIT_MAX_MS / 2);
    room.handle_text(ConnId(1), r#"{"message":"held"}"#, arrives)
        .unwrap();
    let held = take_outputs(&mut room);
    assert_eq!(
        (held.questions.len(), held.errors),
        (0, 0),
        "{first:?} {held:?}"
    );
    // Once the answer is given up on, the held frame is decided at the next timeout, not
    // when it would turn late.
    room.handle_timeout(t.plus_millis(VERDICT_TIMEOUT_MS));
    let decided = take_outputs(&mut room);
    assert_eq!(
        decided.questions.len() + decided.errors,
        1,
        "{first:?} {decided:?}"
    );
}
