//! Hand-made seed inputs: the interesting cases a fuzzer would take long to find.
//!
//! `cargo test -p edgechat-fuzz-logic -- --ignored write_seeds` writes them to
//! `fuzz/corpus/<target>/seed-<name>`; the replay test runs them either way.

use edgechat_core::room::{ConnId, Output, Room, RoomConfig};
use edgechat_core::Timestamp;

/// A seed: its target, its name and its bytes.
#[derive(Debug, Clone)]
pub struct Seed {
    /// The target it feeds.
    pub target: &'static str,
    /// A file-name-safe name.
    pub name: String,
    /// The input.
    pub data: Vec<u8>,
}

/// Every hand-made seed.
pub fn all() -> Vec<Seed> {
    let mut seeds = Vec::new();
    for (name, phase, text) in frames() {
        let mut data = vec![phase];
        data.extend_from_slice(&text);
        seeds.push(Seed {
            target: "client_frame",
            name: name.into(),
            data,
        });
    }
    for (name, data) in attachments() {
        seeds.push(Seed {
            target: "attachment",
            name,
            data,
        });
    }
    seeds
}

/// (name, 0 = join / 1 = message, frame bytes).
fn frames() -> Vec<(&'static str, u8, Vec<u8>)> {
    let name32 = format!(r#"{{"name":"😀{}\u202eשלום"}}"#, "x".repeat(25));
    let name33 = format!(r#"{{"name":"😀{}\u202eשלום"}}"#, "x".repeat(26));
    let msg256 = format!(r#"{{"message":"{}😀\u0000"}}"#, "م".repeat(253));
    let escaped = format!(r#"{{"message":"{}"}}"#, r"\ud83d\ude00".repeat(128));
    vec![
        ("join", 0, br#"{"name":"alice"}"#.to_vec()),
        (
            "join-since",
            0,
            br#"{"name":"bob","since":18446744073709551615}"#.to_vec(),
        ),
        (
            "join-since-negative",
            0,
            br#"{"name":"bob","since":-1}"#.to_vec(),
        ),
        ("join-since-float", 0, br#"{"since":1e3}"#.to_vec()),
        ("join-empty", 0, br#"{"name":""}"#.to_vec()),
        ("join-null", 0, br#"{"name":null}"#.to_vec()),
        ("join-array", 0, br#"["alice"]"#.to_vec()),
        ("join-duplicate", 0, br#"{"name":"a","name":"b"}"#.to_vec()),
        ("join-32", 0, name32.into_bytes()),
        ("join-33", 0, name33.into_bytes()),
        ("join-lone-surrogate", 0, br#"{"name":"\ud800"}"#.to_vec()),
        (
            "join-control",
            0,
            b"{\"name\":\"\\u0000\\u001b[31m\\r\\n\"}".to_vec(),
        ),
        (
            "join-traversal",
            0,
            br#"{"name":"../../etc/passwd"}"#.to_vec(),
        ),
        ("message", 1, br#"{"message":"hi"}"#.to_vec()),
        ("message-256", 1, msg256.into_bytes()),
        ("message-escaped-emoji", 1, escaped.into_bytes()),
        (
            "message-nested",
            1,
            format!("{}1{}", "[".repeat(200), "]".repeat(200)).into_bytes(),
        ),
        (
            "message-deep-object",
            1,
            br#"{"message":"x","a":{"b":{"c":[1,{"d":null}]}}}"#.to_vec(),
        ),
        ("message-number", 1, br#"{"message":1e999}"#.to_vec()),
        (
            "message-invalid-utf8",
            1,
            b"{\"message\":\"\xff\xfe\"}".to_vec(),
        ),
        (
            "message-bom",
            1,
            "\u{feff}{\"message\":\"x\"}".as_bytes().to_vec(),
        ),
        (
            "message-whitespace",
            1,
            b" \t\r\n{\"message\" : \"x\" } \n".to_vec(),
        ),
        (
            "message-too-large",
            1,
            format!(r#"{{"message":"{}"}}"#, "a".repeat(4100)).into_bytes(),
        ),
    ]
}

/// Real attachments, written by a room for sessions in each phase and limiter state, and
/// damaged copies of them.
fn attachments() -> Vec<(String, Vec<u8>)> {
    let now = Timestamp(1_700_000_000_000);
    let mut room = Room::new(RoomConfig::default());
    let mut last = Vec::new();
    let mut captured = Vec::new();
    let mut capture = |room: &mut Room, label: &str, wait: Option<u64>| {
        while let Some(output) = room.poll_output() {
            match output {
                Output::SetAttachment { attachment, .. } => last = attachment,
                Output::AskRateLimiter { request, .. } => {
                    if let Some(wait) = wait {
                        room.handle_rate_limit_verdict(request, wait, now);
                    }
                }
                Output::Persist(batch) => room.handle_durable(batch.id, now).expect("in flight"),
                _ => {}
            }
        }
        captured.push((label.to_owned(), last.clone()));
    };
    let ip = "2001:db8::1".parse().expect("an IP");
    room.handle_connect(ConnId(1), ip, now).expect("new");
    capture(&mut room, "unnamed", None);
    room.handle_text(ConnId(1), r#"{"name":"😀\u202eשלום"}"#, now)
        .expect("open");
    capture(&mut room, "waiting", None);
    room.handle_text(ConnId(1), r#"{"message":"x"}"#, now.plus_millis(20_000))
        .expect("open");
    capture(&mut room, "joined-cooldown", Some(u64::MAX));
    room.handle_connect(ConnId(2), "10.0.0.1".parse().expect("an IP"), now)
        .expect("new");
    room.handle_text(
        ConnId(2),
        &format!(r#"{{"name":"{}"}}"#, "n".repeat(33)),
        now,
    )
    .expect("open");
    capture(&mut room, "closing", Some(0));

    let mut seeds = Vec::new();
    for (label, bytes) in captured {
        let mut truncated = bytes.clone();
        truncated.truncate(bytes.len() / 2);
        let mut version = bytes.clone();
        version[0] = 2;
        let mut padded = bytes.clone();
        padded.extend_from_slice(&[0; 3]);
        seeds.push((format!("{label}-truncated"), truncated));
        seeds.push((format!("{label}-version-2"), version));
        seeds.push((format!("{label}-trailing"), padded));
        seeds.push((label, bytes));
    }
    seeds.push(("empty".into(), Vec::new()));
    seeds.push(("too-long".into(), vec![1; 2049]));
    // Version 1, then a string length that claims far more bytes than follow.
    seeds.push((
        "huge-length".into(),
        vec![1, 0, 127, 0, 0, 1, 1, 0xff, 0xff, 0xff, 0xff, 0x0f],
    ));
    seeds
}
