//! The cases, each an `async fn(Target) -> Result<()>` that fails with what it saw.
//!
//! Every case uses rooms of its own (see [`unique_name`]) and gives each connection its own
//! client IP when the target allows it, so cases are independent and can run in any order.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::{json, Value};

use super::ws::{Event, Frame, Outgoing, Refused, ERROR_RATE_LIMITED};
use super::{unique_name, Case, Skip, Target, VERDICT_SETTLE};

/// How long "nothing arrives" is watched for.
const SILENCE: Duration = Duration::from_millis(500);
/// The exact error frames of PROTOCOL.md.
const NAME_TOO_LONG_FRAME: &str = r#"{"error":"Name too long."}"#;
const MESSAGE_TOO_LONG_FRAME: &str = r#"{"error":"Message too long."}"#;

/// Every case, in a sensible reading order.
pub fn cases() -> Vec<Case> {
    vec![
        case!(page_is_html),
        case!(page_files_and_policy),
        case!(create_room_mints_private_id),
        case!(room_route_other_methods_405),
        case!(websocket_route_without_upgrade_400),
        case!(unknown_paths_404),
        case!(room_name_length_limit),
        case!(forged_private_id_refused),
        case!(uppercase_private_id_is_a_long_name),
        case!(private_room_create_and_join),
        case!(room_names_are_case_sensitive),
        case!(nothing_before_first_frame),
        case!(join_sequence),
        case!(broadcast_reaches_everyone_in_order),
        case!(anonymous_default_name),
        case!(name_length_limit),
        case!(message_length_limit),
        case!(malformed_frames_get_short_errors),
        case!(binary_frames_get_short_errors),
        case!(quit_when_joined_socket_closes),
        case!(close_handshake_completed),
        case!(rate_limit_rapid_frames),
        case!(frames_sent_back_to_back_within_the_burst_are_all_accepted),
        case!(rate_limit_shared_across_rooms_and_connections),
        case!(history_replays_newest_100),
        case!(since_resumes_exactly),
        case!(since_in_future_falls_back),
        case!(since_too_old_falls_back),
        case!(hibernation_changes_nothing),
        case!(hibernation_keeps_unnamed_socket_join_sequence),
        case!(hibernation_keeps_rate_limits),
        case!(history_endpoint_pages),
        case!(presence_endpoint),
        case!(publish_refused_without_token),
        case!(publish_with_token),
        case!(counter),
        case!(health_and_metrics),
        case!(answer_bodies_and_content_types_are_exact),
        case!(history_next_before_reaches_the_oldest),
        case!(publish_unauthorized_is_exact),
        case!(publish_answers_are_exact),
        case!(admin_hibernate_other_methods_405),
        case!(admin_hibernate_refused_without_token),
        case!(counter_named_like_an_operation),
        case!(client_ip_is_the_first_header_entry),
    ]
    .into_iter()
    .chain(super::auth::cases())
    .chain(super::moderation::cases())
    .chain(super::resend::cases())
    .collect()
}

// ---------------------------------------------------------------------------------------
// Helpers

/// Fails unless `result` is a refused handshake with this status, and the same upgrade sent
/// as plain HTTP gets exactly `status` and `body` (a WebSocket client sees only part of a
/// refusal's body).
async fn expect_refused<T>(
    t: &Target,
    room: &str,
    result: Result<T>,
    status: u16,
    body: &str,
    what: &str,
) -> Result<()> {
    match result {
        Ok(_) => bail!(
            "{what}: expected the upgrade to be refused with {status} {body:?}, it was accepted"
        ),
        Err(error) => match error.downcast_ref::<Refused>() {
            Some(refused) if refused.status == status => {}
            Some(refused) => bail!(
                "{what}: expected {status} {body:?}, got {} {:?}",
                refused.status,
                refused.body
            ),
            None => return Err(error.context(format!("{what}: expected a refused handshake"))),
        },
    }
    t.upgrade_raw(room).await?.expect(status, body, what)
}

/// Checks a run of chat frames from one room: gap-free ids, strictly increasing timestamps
/// close to now, keys in the demo's order.
fn check_chat_run(frames: &[Frame], what: &str) -> Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    for frame in frames {
        ensure!(frame.is_chat(), "{what}: not a chat frame: {frame}");
        let id = frame
            .u64("id")
            .ok_or_else(|| anyhow!("{what}: chat frame without a numeric id: {frame}"))?;
        ensure!(id >= 1, "{what}: ids start at 1: {frame}");
        let ts = frame.u64("timestamp").unwrap_or_default();
        ensure!(
            ts.abs_diff(now) < 24 * 3600 * 1000,
            "{what}: timestamp {ts} is not milliseconds near now ({now}): {frame}"
        );
        let positions: Vec<Option<usize>> = ["\"name\"", "\"message\"", "\"timestamp\""]
            .iter()
            .map(|key| frame.raw.find(key))
            .collect();
        ensure!(
            positions.windows(2).all(|w| w[0] < w[1]) && frame.raw.starts_with("{\"name\""),
            "{what}: keys must come as name, message, timestamp: {frame}"
        );
    }
    for pair in frames.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        ensure!(
            b.u64("id") == a.u64("id").map(|id| id + 1),
            "{what}: ids are not consecutive: {a} then {b}"
        );
        ensure!(
            b.u64("timestamp") > a.u64("timestamp"),
            "{what}: timestamps are not strictly increasing: {a} then {b}"
        );
    }
    Ok(())
}

/// Fails unless two runs of frames are byte-identical.
fn same_frames(got: &[Frame], want: &[Frame], what: &str) -> Result<()> {
    let got: Vec<&str> = got.iter().map(|f| f.raw.as_str()).collect();
    let want: Vec<&str> = want.iter().map(|f| f.raw.as_str()).collect();
    ensure!(
        got == want,
        "{what}:\n  expected {} frames {want:?}\n  got      {} frames {got:?}",
        want.len(),
        got.len()
    );
    Ok(())
}

/// Fails unless `text` reads like a short, clear error: one line, no stack trace.
fn short_error(text: &str, what: &str) -> Result<()> {
    let looks_like_trace = [
        "panicked",
        ".rs:",
        "\n",
        "    at ",
        "Traceback",
        "stack backtrace",
    ]
    .iter()
    .any(|marker| text.contains(marker));
    ensure!(
        !text.is_empty() && text.len() <= 160 && !looks_like_trace,
        "{what}: expected a short, clear error, got {text:?}"
    );
    Ok(())
}

fn set(names: impl IntoIterator<Item = impl Into<String>>) -> BTreeSet<String> {
    names.into_iter().map(Into::into).collect()
}

/// Puts `count` messages `m1`..`m<count>` into `room`, in order: through the publish
/// endpoint if there is an admin token, otherwise from many clients with their own IPs.
/// Returns the name they carry.
async fn fill_room(t: &Target, room: &str, count: usize) -> Result<String> {
    if let Some(token) = t.admin_token.as_deref() {
        for i in 1..=count {
            let response = t
                .publish(
                    room,
                    Some(token),
                    &json!({"name": "filler", "message": format!("m{i}")}),
                )
                .await?;
            ensure!(
                (200..300).contains(&response.status),
                "publishing m{i}: {} {:?}",
                response.status,
                response.text()
            );
        }
        return Ok("filler".into());
    }
    t.require_distinct_ips()?;
    let mut i = 1;
    while i <= count {
        let (mut client, _) = t.join(room, "filler").await?;
        // The join is one action; four chats stay within the burst of a fresh IP.
        for _ in 0..4 {
            if i > count {
                break;
            }
            client.chat(&format!("m{i}")).await?;
            i += 1;
        }
        client.close().await;
    }
    Ok("filler".into())
}

/// The array of items in a JSON answer: the value itself, or its first array-valued field.
fn json_list(value: &Value, what: &str) -> Result<Vec<Value>> {
    if let Some(list) = value.as_array() {
        return Ok(list.clone());
    }
    if let Some(object) = value.as_object() {
        for key in ["messages", "history", "users", "names", "presence"] {
            if let Some(list) = object.get(key).and_then(Value::as_array) {
                return Ok(list.clone());
            }
        }
        if let Some(list) = object.values().find_map(Value::as_array) {
            return Ok(list.clone());
        }
    }
    bail!("{what}: expected a JSON list, got {value}")
}

/// A number in a counter answer: `n` or `{"counter": n}` (or `{"value": n}`).
fn counter_value(value: &Value, what: &str) -> Result<i64> {
    value
        .as_i64()
        .or_else(|| value.get("counter").and_then(Value::as_i64))
        .or_else(|| value.get("value").and_then(Value::as_i64))
        .ok_or_else(|| anyhow!("{what}: expected a counter value, got {value}"))
}

fn minted_ok(id: &str) -> Result<()> {
    ensure!(
        id.len() == 64
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "expected 64 lowercase hex characters, got {id:?}"
    );
    Ok(())
}

async fn mint(t: &Target) -> Result<String> {
    let response = t.http("POST", "/api/room", &[], b"").await?;
    ensure!(
        response.status == 200,
        "POST /api/room: {} {:?}",
        response.status,
        response.text()
    );
    let id = response.text();
    minted_ok(&id)?;
    Ok(id)
}

// ---------------------------------------------------------------------------------------
// HTTP routes

async fn page_is_html(t: Target) -> Result<()> {
    let response = t.get("/").await?;
    ensure!(response.status == 200, "GET /: status {}", response.status);
    let content_type = response.header("content-type").unwrap_or_default();
    ensure!(
        content_type == "text/html;charset=UTF-8",
        "GET /: content-type must be \"text/html;charset=UTF-8\", got {content_type:?}"
    );
    ensure!(
        response.text().to_ascii_lowercase().contains("<html"),
        "GET /: the body is not an HTML page"
    );
    Ok(())
}

/// The page runs under a policy without inline script, so its script, its style sheet and
/// the client module it imports are served from the same origin.
async fn page_files_and_policy(t: Target) -> Result<()> {
    let page = t.get("/").await?;
    let csp = page
        .header("content-security-policy")
        .unwrap_or_default()
        .to_owned();
    ensure!(
        csp.split(';').any(|d| d.trim() == "script-src 'self'")
            && csp.contains("frame-ancestors 'none'"),
        "GET /: the policy must allow only same-origin scripts and no framing, got {csp:?}"
    );
    ensure!(
        page.header("x-content-type-options") == Some("nosniff"),
        "GET /: x-content-type-options must be nosniff"
    );
    for (path, content_type, needle) in [
        (
            "/edgechat.js",
            "text/javascript;charset=UTF-8",
            "export function connect",
        ),
        ("/page.js", "text/javascript;charset=UTF-8", "edgechat.js"),
        ("/page.css", "text/css;charset=UTF-8", "{"),
    ] {
        let response = t.get(path).await?;
        ensure!(
            response.status == 200,
            "GET {path}: status {}",
            response.status
        );
        let got = response.header("content-type");
        ensure!(
            got == Some(content_type),
            "GET {path}: content-type must be {content_type:?}, got {got:?}"
        );
        ensure!(
            response.text().contains(needle),
            "GET {path}: the body is not the expected file"
        );
    }
    Ok(())
}

async fn create_room_mints_private_id(t: Target) -> Result<()> {
    let response = t.http("POST", "/api/room", &[], b"").await?;
    ensure!(
        response.status == 200,
        "POST /api/room: status {}",
        response.status
    );
    let content_type = response.header("content-type").unwrap_or_default();
    ensure!(
        content_type.starts_with("text/plain"),
        "POST /api/room: content-type must be text/plain, got {content_type:?}"
    );
    ensure!(
        response.header("access-control-allow-origin") == Some("*"),
        "POST /api/room: Access-Control-Allow-Origin must be *, got {:?}",
        response.header("access-control-allow-origin")
    );
    let first = response.text();
    minted_ok(&first)?;
    let second = mint(&t).await?;
    ensure!(
        first != second,
        "two POST /api/room gave the same id {first}"
    );
    Ok(())
}

async fn room_route_other_methods_405(t: Target) -> Result<()> {
    for method in ["GET", "PUT", "DELETE", "PATCH"] {
        t.http(method, "/api/room", &[], b"").await?.expect(
            405,
            "Method not allowed",
            &format!("{method} /api/room"),
        )?;
    }
    Ok(())
}

async fn websocket_route_without_upgrade_400(t: Target) -> Result<()> {
    let room = unique_name("noupg");
    t.get(&format!("/api/room/{room}/websocket"))
        .await?
        .expect(
            400,
            "expected websocket",
            "GET websocket route without Upgrade",
        )?;
    let id = mint(&t).await?;
    t.get(&format!("/api/room/{id}/websocket")).await?.expect(
        400,
        "expected websocket",
        "private room websocket route without Upgrade",
    )?;
    Ok(())
}

async fn unknown_paths_404(t: Target) -> Result<()> {
    let room = unique_name("nf");
    for path in [
        format!("/api/room/{room}"),
        format!("/api/room/{room}/"),
        format!("/api/room/{room}/other"),
        format!("/api/room/{room}/websocket/extra"),
        "/api".to_owned(),
        "/api/".to_owned(),
        "/api/other".to_owned(),
        "/favicon.ico".to_owned(),
        "/index.html".to_owned(),
    ] {
        t.get(&path)
            .await?
            .expect(404, "Not found", &format!("GET {path}"))?;
    }
    Ok(())
}

async fn room_name_length_limit(t: Target) -> Result<()> {
    let long = "n".repeat(33);
    t.get(&format!("/api/room/{long}/websocket"))
        .await?
        .expect(404, "Name too long", "a 33-character room name")?;
    expect_refused(
        &t,
        &long,
        t.connect(&long, "long-room").await,
        404,
        "Name too long",
        "WebSocket to a 33-character room name",
    )
    .await?;
    let mut ok = unique_name("len32");
    while ok.len() < 32 {
        ok.push('x');
    }
    let (mut client, joined) = t
        .join(&ok, "ann")
        .await
        .context("a 32-character room name")?;
    ensure!(joined.history().is_empty(), "a new room has no history");
    client.chat("hello").await?;
    Ok(())
}

async fn forged_private_id_refused(t: Target) -> Result<()> {
    let minted = mint(&t).await?;
    let mut flipped = minted.clone().into_bytes();
    flipped[63] = if flipped[63] == b'0' { b'1' } else { b'0' };
    let flipped = String::from_utf8(flipped)?;
    for forged in ["ab".repeat(32), "0".repeat(64), flipped] {
        expect_refused(
            &t,
            &forged,
            t.connect(&forged, "forger").await,
            404,
            "Invalid room id",
            &format!("WebSocket to forged id {forged}"),
        )
        .await?;
        t.get(&format!("/api/room/{forged}/websocket"))
            .await?
            .expect(404, "Invalid room id", &format!("GET forged id {forged}"))?;
    }
    Ok(())
}

async fn uppercase_private_id_is_a_long_name(t: Target) -> Result<()> {
    let mut minted = mint(&t).await?;
    while !minted.bytes().any(|b| b.is_ascii_alphabetic()) {
        minted = mint(&t).await?;
    }
    let upper = minted.to_ascii_uppercase();
    expect_refused(
        &t,
        &upper,
        t.connect(&upper, "upper").await,
        404,
        "Name too long",
        "WebSocket to an upper-cased private id",
    )
    .await?;
    t.get(&format!("/api/room/{upper}/websocket"))
        .await?
        .expect(404, "Name too long", "GET upper-cased private id")?;
    Ok(())
}

async fn private_room_create_and_join(t: Target) -> Result<()> {
    let id = mint(&t).await?;
    let (mut ann, joined) = t.join(&id, "ann").await.context("joining a minted room")?;
    ensure!(
        joined.frames.len() == 1,
        "a new private room: expected only own joined, got {:?}",
        joined.frames
    );
    let (mut bob, joined) = t.join(&id, "bob").await?;
    ensure!(
        joined.roster() == vec!["ann".to_owned()],
        "roster {:?}",
        joined.roster()
    );
    let echo = ann.chat("private hello").await?;
    bob.wait_for_log("ann's message", |log| log.iter().any(|f| f.raw == echo.raw))
        .await?;
    // Another minted room is a different, empty room.
    let other = mint(&t).await?;
    let (_carl, joined) = t.join(&other, "carl").await?;
    ensure!(
        joined.history().is_empty(),
        "a second private room shares history with the first"
    );
    Ok(())
}

async fn room_names_are_case_sensitive(t: Target) -> Result<()> {
    let lower = unique_name("case");
    let upper = lower.to_ascii_uppercase();
    let (mut ann, _) = t.join(&upper, "ann").await?;
    ann.chat("in the upper-case room").await?;
    let (_bob, joined) = t.join(&lower, "bob").await?;
    ensure!(
        joined.frames.len() == 1,
        "room {lower:?} must be a different room from {upper:?}, but its join replayed {:?}",
        joined.frames
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The join sequence and chat

async fn nothing_before_first_frame(t: Target) -> Result<()> {
    let room = unique_name("quiet");
    let (mut ann, _) = t.join(&room, "ann").await?;
    ann.chat("before bob").await?;
    let mut bob = t.connect(&room, "bob").await?;
    bob.expect_silence(SILENCE, "nothing is sent before the client's first frame")
        .await?;
    // Activity in the room still reaches nobody who has not joined.
    ann.chat("while bob is silent").await?;
    bob.expect_silence(SILENCE, "an unnamed socket gets nothing until it joins")
        .await?;
    let joined = bob.join("bob").await?;
    ensure!(
        joined.roster() == vec!["ann".to_owned()],
        "roster {:?}",
        joined.roster()
    );
    same_frames(&joined.history(), &ann.chats(), "bob's replay")?;
    Ok(())
}

async fn join_sequence(t: Target) -> Result<()> {
    let room = unique_name("join");
    let (mut ann, joined) = t.join(&room, "ann").await?;
    ensure!(
        joined
            .frames
            .iter()
            .map(|f| f.raw.as_str())
            .collect::<Vec<_>>()
            == [r#"{"joined":"ann"}"#],
        "first user of a new room: expected only {{\"joined\":\"ann\"}}, got {:?}",
        joined.frames
    );
    ensure!(
        joined.ready.raw == r#"{"ready":true}"#,
        "ready frame {}",
        joined.ready
    );

    let (mut bob, joined) = t.join(&room, "bob").await?;
    ensure!(
        joined.roster() == vec!["ann".to_owned()],
        "bob's roster {:?}",
        joined.roster()
    );
    ensure!(
        joined.frames.len() == 2,
        "bob's join sequence {:?}",
        joined.frames
    );
    let (_, seen) = ann
        .until("bob's joined", |f| f.joined() == Some("bob"))
        .await?;
    ensure!(seen.raw == r#"{"joined":"bob"}"#, "joined frame {seen}");

    ann.chat("one").await?;
    ann.chat("two \"quoted\" \\ and\nnewline").await?;
    bob.chat("three ✓ 😀").await?;
    ann.wait_for_log("three messages", |log| {
        log.iter().filter(|f| f.is_chat()).count() == 3
    })
    .await?;
    let history = ann.chats();
    check_chat_run(&history, "room history")?;
    same_frames(&bob.chats(), &history, "bob's view")?;

    let mut carl = t.connect(&room, "carl").await?;
    carl.expect_silence(SILENCE, "before the first frame")
        .await?;
    let joined = carl.join("carl").await?;
    // 1. one joined per user already in the room (in any order), 2. the history oldest first
    // exactly as broadcast, 3. own joined, 4. ready.
    let roster: Vec<&Frame> = joined.frames.iter().take(2).collect();
    ensure!(
        set(roster.iter().filter_map(|f| f.joined())) == set(["ann", "bob"]),
        "carl's join must start with one joined per user in the room, got {:?}",
        joined.frames
    );
    same_frames(&joined.frames[2..5], &history, "carl's replay")?;
    ensure!(
        joined.frames.len() == 6,
        "carl's join sequence has extra frames: {:?}",
        joined.frames
    );
    ensure!(
        joined.frames[5].raw == r#"{"joined":"carl"}"#,
        "own joined {}",
        joined.frames[5]
    );
    ensure!(
        joined.ready.raw == r#"{"ready":true}"#,
        "ready frame {}",
        joined.ready
    );
    for client in [&mut ann, &mut bob] {
        client
            .until("carl's joined", |f| f.joined() == Some("carl"))
            .await?;
    }
    carl.expect_silence(SILENCE, "nothing after ready").await?;
    Ok(())
}

async fn broadcast_reaches_everyone_in_order(t: Target) -> Result<()> {
    let room = unique_name("bcast");
    let mut clients = Vec::new();
    for name in ["ann", "bob", "carl"] {
        clients.push(t.join(&room, name).await?.0);
    }
    for round in 0..2 {
        for client in clients.iter_mut() {
            let text = format!("{} says {round}", client.label);
            let echo = client.chat(&text).await?;
            ensure!(
                echo.str("name") == Some(client.label.as_str()),
                "the sender's own copy names the sender: {echo}"
            );
        }
    }
    for client in clients.iter_mut() {
        client
            .wait_for_log("six messages", |log| {
                log.iter().filter(|f| f.is_chat()).count() >= 6
            })
            .await?;
    }
    for client in clients.iter_mut() {
        client
            .expect_silence(SILENCE, "each message arrives once")
            .await?;
    }
    let reference = clients[0].chats();
    ensure!(
        reference.len() == 6,
        "ann received {} messages, expected 6",
        reference.len()
    );
    check_chat_run(&reference, "broadcast")?;
    ensure!(
        reference[0].u64("id") == Some(1),
        "a new room's first id is 1: {}",
        reference[0]
    );
    for client in &clients[1..] {
        same_frames(
            &client.chats(),
            &reference,
            &format!("{}'s view", client.label),
        )?;
    }
    Ok(())
}

async fn anonymous_default_name(t: Target) -> Result<()> {
    let room = unique_name("anon");
    let mut a = t.connect(&room, "anon1").await?;
    a.join_with(&json!({}), "anonymous")
        .await
        .context("join frame {}")?;
    let echo = a.chat("who am i").await?;
    ensure!(echo.str("name") == Some("anonymous"), "chat frame {echo}");
    let mut b = t.connect(&room, "anon2").await?;
    let joined = b
        .join_with(&json!({"name": ""}), "anonymous")
        .await
        .context("join frame {\"name\":\"\"}")?;
    ensure!(
        joined.roster() == vec!["anonymous".to_owned()],
        "roster {:?}",
        joined.roster()
    );
    Ok(())
}

async fn name_length_limit(t: Target) -> Result<()> {
    let room = unique_name("name");
    let (mut watcher, _) = t.join(&room, "watcher").await?;
    let ok_names = [
        "n".repeat(32),
        "😀".repeat(16),
        format!("{}é", "ש".repeat(31)),
    ];
    let mut keep = Vec::new();
    for name in &ok_names {
        let (client, joined) = t
            .join(&room, name)
            .await
            .with_context(|| format!("name {name:?} (32 UTF-16 units) must be accepted"))?;
        keep.push(client);
        ensure!(joined.ready.is_ready(), "ready");
        let (_, frame) = watcher
            .until("the joined frame", |f| f.joined().is_some())
            .await?;
        ensure!(frame.joined() == Some(name.as_str()), "watcher saw {frame}");
    }
    for name in [
        "n".repeat(33),
        format!("{}a", "😀".repeat(16)),
        "😀".repeat(17),
    ] {
        let mut client = t.connect(&room, "long-name").await?;
        client.send_json(&json!({ "name": name })).await?;
        let frame = client
            .next()
            .await
            .with_context(|| format!("name {name:?}"))?;
        ensure!(
            frame.raw == NAME_TOO_LONG_FRAME,
            "name {name:?}: expected {NAME_TOO_LONG_FRAME}, got {frame}"
        );
        match client.next_event().await? {
            Event::Close(Some((1009, reason))) if reason == "Name too long." => {}
            other => bail!("name {name:?}: expected close 1009 \"Name too long.\", got {other}"),
        }
    }
    watcher
        .expect_silence(SILENCE, "refused names never join")
        .await?;
    Ok(())
}

async fn message_length_limit(t: Target) -> Result<()> {
    let room = unique_name("msglen");
    let (mut watcher, _) = t.join(&room, "watcher").await?;
    let rtl: String = "שלום עולם ".chars().cycle().take(256).collect();
    let accepted = ["a".repeat(256), "😀".repeat(128), rtl, "é".repeat(256)];
    let (mut sender, _) = t.join(&room, "sender").await?;
    for text in &accepted {
        sender.chat(text).await.with_context(|| {
            format!(
                "a message of 256 UTF-16 units ({} chars) must be accepted",
                text.chars().count()
            )
        })?;
    }
    let (mut refused, _) = t.join(&room, "refused").await?;
    let too_long = [
        "a".repeat(257),
        format!("{}😀", "a".repeat(255)),
        format!("{}a", "😀".repeat(128)),
    ];
    for text in &too_long {
        let error = refused
            .error_reply(
                &Outgoing::Text(json!({ "message": text }).to_string()),
                |_| false,
            )
            .await?;
        ensure!(
            error == "Message too long.",
            "a message of 257 UTF-16 units ({} chars): expected {MESSAGE_TOO_LONG_FRAME}, got error {error:?}",
            text.chars().count()
        );
        let raw = refused
            .log
            .last()
            .map(|f| f.raw.clone())
            .unwrap_or_default();
        ensure!(raw == MESSAGE_TOO_LONG_FRAME, "error frame {raw}");
    }
    watcher
        .wait_for_log("the accepted messages", |log| {
            log.iter().filter(|f| f.is_chat()).count() >= 4
        })
        .await?;
    let seen = watcher.chats();
    check_chat_run(&seen, "accepted messages")?;
    let texts: Vec<&str> = seen.iter().filter_map(|f| f.str("message")).collect();
    ensure!(
        texts == accepted.iter().map(String::as_str).collect::<Vec<_>>(),
        "the watcher saw {texts:?}"
    );
    watcher
        .expect_no_chat(SILENCE, "too-long messages are not broadcast")
        .await?;
    let (_late, joined) = t.join(&room, "late").await?;
    same_frames(&joined.history(), &seen, "too-long messages are not stored")?;
    Ok(())
}

async fn malformed_frames_get_short_errors(t: Target) -> Result<()> {
    let room = unique_name("malf");
    // Before joining: the socket stays unnamed and can still join.
    let mut first = t.connect(&room, "first").await?;
    for bad in ["not json", r#"{"name": 5}"#] {
        let error = first
            .error_reply(&Outgoing::Text(bad.into()), |_| false)
            .await?;
        short_error(&error, &format!("join frame {bad:?}"))?;
    }
    first
        .join("first")
        .await
        .context("joining after malformed frames")?;
    first.chat("still here").await?;
    // After joining: the socket stays joined and can still chat.
    let (mut second, _) = t.join(&room, "second").await?;
    for bad in ["{", r#"{"message": 3}"#] {
        let error = second
            .error_reply(&Outgoing::Text(bad.into()), |_| false)
            .await?;
        short_error(&error, &format!("chat frame {bad:?}"))?;
    }
    second.chat("me too").await?;
    let (mut third, _) = t.join(&room, "third").await?;
    for bad in [
        "[1,2]",
        r#""just a string""#,
        "{\"message\": \"unterminated",
    ] {
        let error = third
            .error_reply(&Outgoing::Text(bad.into()), |_| false)
            .await?;
        short_error(&error, &format!("chat frame {bad:?}"))?;
    }
    third.chat("and me").await?;
    Ok(())
}

async fn binary_frames_get_short_errors(t: Target) -> Result<()> {
    let room = unique_name("bin");
    let mut client = t.connect(&room, "bin").await?;
    let error = client
        .error_reply(&Outgoing::Binary(br#"{"name":"bin"}"#.to_vec()), |_| false)
        .await?;
    short_error(&error, "a binary join frame")?;
    client
        .join("bin")
        .await
        .context("joining after a binary frame")?;
    let error = client
        .error_reply(&Outgoing::Binary(vec![0, 159, 146, 150]), |_| false)
        .await?;
    short_error(&error, "a binary chat frame")?;
    client.chat("text still works").await?;
    Ok(())
}

async fn quit_when_joined_socket_closes(t: Target) -> Result<()> {
    let room = unique_name("quit");
    let (mut ann, _) = t.join(&room, "ann").await?;
    let (bob, _) = t.join(&room, "bob").await?;
    let (carl, _) = t.join(&room, "carl").await?;
    ann.until("carl's joined", |f| f.joined() == Some("carl"))
        .await?;
    bob.close().await;
    let frame = ann.next().await.context("after bob closed")?;
    ensure!(
        frame.raw == r#"{"quit":"bob"}"#,
        "expected {{\"quit\":\"bob\"}}, got {frame}"
    );
    carl.drop_abruptly().await;
    let frame = ann
        .next()
        .await
        .context("after carl's connection dropped")?;
    ensure!(
        frame.raw == r#"{"quit":"carl"}"#,
        "expected {{\"quit\":\"carl\"}}, got {frame}"
    );
    let unnamed = t.connect(&room, "unnamed").await?;
    unnamed.close().await;
    ann.expect_silence(SILENCE, "an unnamed socket closing is no quit")
        .await?;
    Ok(())
}

async fn close_handshake_completed(t: Target) -> Result<()> {
    let room = unique_name("close");
    for joined in [true, false] {
        let mut client = t.connect(&room, "closer").await?;
        if joined {
            client.join("closer").await?;
        }
        client.send_close(1000, "bye").await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            match client.next_event_within(remaining).await? {
                Some(Event::Close(_)) => break,
                Some(Event::Text(_)) => continue,
                Some(other) => bail!("joined={joined}: expected the server's close frame, got {other}"),
                None => bail!("joined={joined}: the server did not answer the client's close frame within 5 s"),
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Rate limiting

async fn rate_limit_rapid_frames(t: Target) -> Result<()> {
    t.require_distinct_ips()?;
    let room = unique_name("rapid");
    let (mut watcher, _) = t.join(&room, "watcher").await?;
    let (mut client, _) = t.join(&room, "rapid").await?;
    tokio::time::sleep(VERDICT_SETTLE).await;
    const SENT: usize = 10;
    for i in 0..SENT {
        client
            .send_json(&json!({ "message": format!("rapid {i}") }))
            .await?;
    }
    let (mut echoes, mut errors) = (Vec::new(), 0);
    while echoes.len() + errors < SENT {
        let frame = client.next().await.context("every frame gets an answer")?;
        if frame.is_chat() {
            echoes.push(frame);
        } else if let Some(error) = frame.error() {
            ensure!(
                error == ERROR_RATE_LIMITED,
                "expected the exact rate-limit error, got {frame}"
            );
            ensure!(
                frame.raw == format!(r#"{{"error":"{ERROR_RATE_LIMITED}"}}"#),
                "error frame {frame}"
            );
            errors += 1;
        } else {
            bail!("unexpected frame {frame}");
        }
    }
    // The join was action 1. Rapid 0 is decided at once and 1..=8 wait for answers
    // (PROTOCOL.md: pipelined frames); rapid 9 is beyond that bound. Actions 2 to 4 pass
    // with no wait, action 5 (rapid 3) passes and starts a cooldown, which refuses the
    // held rapid 4..=8: exactly the limiter's arithmetic, whatever the answers' delays.
    let accepted: Vec<&str> = echoes.iter().filter_map(|f| f.str("message")).collect();
    ensure!(
        accepted == ["rapid 0", "rapid 1", "rapid 2", "rapid 3"] && errors == SENT - 4,
        "{SENT} rapid frames: accepted {accepted:?} and {errors} refused; expected the \
         burst (rapid 0 to 3, in order) and the rest refused"
    );
    watcher
        .wait_for_log("the accepted frames", |log| {
            log.iter().filter(|f| f.is_chat()).count() >= echoes.len()
        })
        .await?;
    same_frames(
        &watcher.chats(),
        &echoes,
        "refused frames are not broadcast",
    )?;
    watcher
        .expect_no_chat(SILENCE, "refused frames are not broadcast")
        .await?;
    // The socket stays open: it still answers.
    client
        .send_json(&json!({ "message": "still open?" }))
        .await?;
    let frame = client
        .next()
        .await
        .context("the socket must stay open after rate limiting")?;
    ensure!(
        frame.is_chat() || frame.error() == Some(ERROR_RATE_LIMITED),
        "unexpected {frame}"
    );
    Ok(())
}

/// Frames sent while the limiter's answer about the previous one is still on its way are
/// held and decided in order, not refused (PROTOCOL.md, deliberate differences).
async fn frames_sent_back_to_back_within_the_burst_are_all_accepted(t: Target) -> Result<()> {
    t.require_distinct_ips()?;
    let room = unique_name("pipelined");
    let (mut watcher, _) = t.join(&room, "watcher").await?;
    // No pause after the join: its own answer may still be on its way.
    let (mut client, _) = t.join(&room, "paste").await?;
    let lines = ["line 1", "line 2", "line 3"];
    for line in lines {
        client.send_json(&json!({ "message": line })).await?;
    }
    let mut accepted = Vec::new();
    while accepted.len() < lines.len() {
        let frame = client.next().await.context("every frame gets an answer")?;
        ensure!(frame.is_chat(), "expected each line echoed, got {frame}");
        accepted.push(frame);
    }
    let texts: Vec<&str> = accepted.iter().filter_map(|f| f.str("message")).collect();
    ensure!(texts == lines, "accepted in order: {texts:?}");
    watcher
        .wait_for_log("the three lines", |log| {
            log.iter().filter(|f| f.is_chat()).count() >= lines.len()
        })
        .await?;
    same_frames(&watcher.chats(), &accepted, "everyone sees the same lines")?;
    Ok(())
}

async fn rate_limit_shared_across_rooms_and_connections(t: Target) -> Result<()> {
    t.require_distinct_ips()?;
    let ip = t.fresh_ip().expect("distinct IPs");
    let (room1, room2) = (unique_name("rl1"), unique_name("rl2"));
    let mut ann = t.connect_as(&room1, "ann", Some(&ip)).await?;
    ann.join("ann").await?; // action 1
    ann.chat("a1").await?; // 2
    ann.chat("a2").await?; // 3
    let mut bob = t.connect_as(&room2, "bob", Some(&ip)).await?;
    bob.join("bob").await?; // 4: within the burst
    bob.chat("b1").await?; // 5: passes, and puts this IP in a cooldown
    tokio::time::sleep(VERDICT_SETTLE).await;
    // With a limiter per connection or per room, bob would have used only 2 actions.
    let error = bob
        .error_reply(&Outgoing::Text(json!({"message": "b2"}).to_string()), |e| {
            e == ERROR_RATE_LIMITED
        })
        .await
        .context("the 6th action of one IP, across two rooms")?;
    ensure!(
        error == ERROR_RATE_LIMITED,
        "expected the rate-limit error, got {error:?}"
    );
    let raw = bob.log.last().map(|f| f.raw.clone()).unwrap_or_default();
    ensure!(
        raw == format!(r#"{{"error":"{ERROR_RATE_LIMITED}"}}"#),
        "error frame {raw}"
    );
    // Another IP in the same room is not limited.
    let (mut carl, _) = t.join(&room2, "carl").await?;
    carl.chat("c1")
        .await
        .context("another IP must not be limited")?;
    // The refused frame was dropped, the socket is open, and after the cooldown bob may
    // chat again (one action per 5 s).
    bob.until("carl's message", |f| f.str("message") == Some("c1"))
        .await?;
    ensure!(
        !bob.log.iter().any(|f| f.str("message") == Some("b2")),
        "a rate-limited frame was broadcast"
    );
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    bob.chat("b3").await.context("after the cooldown")?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// History and resume

async fn history_replays_newest_100(t: Target) -> Result<()> {
    let room = unique_name("hist");
    const TOTAL: usize = 105;
    let name = fill_room(&t, &room, TOTAL).await?;
    let (_client, joined) = t.join(&room, "reader").await?;
    let history = joined.history();
    check_chat_run(&history, "replayed history")?;
    let texts: Vec<String> = history
        .iter()
        .filter_map(|f| f.str("message").map(str::to_owned))
        .collect();
    let want: Vec<String> = (TOTAL - 99..=TOTAL).map(|i| format!("m{i}")).collect();
    ensure!(
        texts == want,
        "after {TOTAL} messages, a join must replay exactly the newest 100 oldest first (m6..m105), got {} messages: first {:?}, last {:?}",
        texts.len(),
        texts.first(),
        texts.last()
    );
    ensure!(
        history.iter().all(|f| f.str("name") == Some(name.as_str())),
        "sender names"
    );
    ensure!(
        joined.ready.raw == r#"{"ready":true}"#,
        "ready {}",
        joined.ready
    );
    Ok(())
}

async fn since_resumes_exactly(t: Target) -> Result<()> {
    let room = unique_name("since");
    let (mut ann, _) = t.join(&room, "ann").await?;
    let (mut bob, _) = t.join(&room, "bob").await?;
    ann.chat("a1").await?;
    bob.chat("b1").await?;
    ann.wait_for_log("b1", |log| {
        log.iter().any(|f| f.str("message") == Some("b1"))
    })
    .await?;
    let last_seen = ann
        .chats()
        .last()
        .and_then(|f| f.u64("id"))
        .context("ids")?;
    ann.close().await;
    bob.until("ann's quit", |f| f.quit() == Some("ann")).await?;
    let missed = vec![bob.chat("b2").await?, bob.chat("b3").await?];

    let mut again = t.connect(&room, "ann").await?;
    let joined = again
        .join_with(&json!({"name": "ann", "since": last_seen}), "ann")
        .await?;
    ensure!(
        joined.roster() == vec!["bob".to_owned()],
        "roster {:?}",
        joined.roster()
    );
    same_frames(
        &joined.history(),
        &missed,
        &format!("resume since {last_seen}: exactly the missed messages"),
    )?;
    ensure!(
        joined.frames.len() == 1 + missed.len() + 1,
        "resume: unexpected frames {:?}",
        joined.frames
    );
    ensure!(
        joined.ready.raw == r#"{"ready":true,"recovered":true}"#,
        "expected {{\"ready\":true,\"recovered\":true}}, got {}",
        joined.ready
    );
    again
        .expect_silence(SILENCE, "no duplicates after ready")
        .await?;

    // Resuming from the newest id replays nothing; from 0, everything the room holds.
    let newest = missed.last().and_then(|f| f.u64("id")).context("ids")?;
    let mut up_to_date = t.connect(&room, "carl").await?;
    let joined = up_to_date
        .join_with(&json!({"name": "carl", "since": newest}), "carl")
        .await?;
    ensure!(
        joined.history().is_empty(),
        "since the newest id: replayed {:?}",
        joined.history()
    );
    ensure!(
        joined.ready.json.get("recovered") == Some(&Value::Bool(true)),
        "ready {}",
        joined.ready
    );
    let everything = bob.chats();
    let mut from_zero = t.connect(&room, "dora").await?;
    let joined = from_zero
        .join_with(&json!({"name": "dora", "since": 0}), "dora")
        .await?;
    same_frames(
        &joined.history(),
        &everything,
        "since 0 replays the whole (short) history",
    )?;
    ensure!(
        joined.ready.json.get("recovered") == Some(&Value::Bool(true)),
        "ready {}",
        joined.ready
    );
    Ok(())
}

async fn since_in_future_falls_back(t: Target) -> Result<()> {
    let room = unique_name("future");
    let (mut ann, _) = t.join(&room, "ann").await?;
    for text in ["f1", "f2", "f3"] {
        ann.chat(text).await?;
    }
    let all = ann.chats();
    let mut late = t.connect(&room, "late").await?;
    let joined = late
        .join_with(&json!({"name": "late", "since": 1_000_000}), "late")
        .await?;
    same_frames(
        &joined.history(),
        &all,
        "since in the future: the newest 100",
    )?;
    ensure!(
        joined.ready.raw == r#"{"ready":true,"recovered":false}"#,
        "expected {{\"ready\":true,\"recovered\":false}}, got {}",
        joined.ready
    );
    Ok(())
}

async fn since_too_old_falls_back(t: Target) -> Result<()> {
    let token = t.require_admin_token()?.to_owned();
    let room = unique_name("old");
    // More than the standalone server retains (1000), published concurrently.
    const TOTAL: usize = 1_010;
    let mut next = 1;
    while next <= TOTAL {
        let batch: Vec<_> = (next..(next + 20).min(TOTAL + 1))
            .map(|i| {
                let (t, room, token) = (t.clone(), room.clone(), token.clone());
                async move {
                    let response = t
                        .publish(
                            &room,
                            Some(&token),
                            &json!({"name": "old", "message": format!("o{i}")}),
                        )
                        .await?;
                    ensure!(
                        (200..300).contains(&response.status),
                        "publish: {} {:?}",
                        response.status,
                        response.text()
                    );
                    Ok::<(), anyhow::Error>(())
                }
            })
            .collect();
        for result in futures_util::future::join_all(batch).await {
            result?;
        }
        next += 20;
    }
    let mut late = t.connect(&room, "late").await?;
    let joined = late
        .join_with(&json!({"name": "late", "since": 0}), "late")
        .await?;
    let history = joined.history();
    check_chat_run(&history, "replay")?;
    match joined.ready.json.get("recovered") {
        Some(Value::Bool(false)) => {
            ensure!(
                history.len() == 100
                    && history.last().and_then(|f| f.u64("id")) == Some(TOTAL as u64),
                "recovered:false must come with the newest 100, got {} messages ending at {:?}",
                history.len(),
                history.last().map(|f| f.raw.clone())
            );
        }
        // A target that retains everything may fill the gap, but then completely.
        Some(Value::Bool(true)) => ensure!(
            history.len() == TOTAL && history[0].u64("id") == Some(1),
            "recovered:true must replay everything after 0, got {} messages",
            history.len()
        ),
        _ => bail!(
            "a join with since must answer with \"recovered\", got {}",
            joined.ready
        ),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Hibernation

async fn hibernation_changes_nothing(t: Target) -> Result<()> {
    if t.hibernate.is_none() {
        bail!(Skip("needs a hibernate URL (--hibernate-url)".into()));
    }
    let room = unique_name("hib");
    let (mut ann, _) = t.join(&room, "ann").await?;
    let (mut bob, _) = t.join(&room, "bob").await?;
    ann.chat("before 1").await?;
    bob.chat("before 2").await?;
    ann.wait_for_log("two messages", |log| {
        log.iter().filter(|f| f.is_chat()).count() == 2
    })
    .await?;
    t.hibernate().await?;
    // Chat continues: same ids sequence, increasing timestamps, everyone still gets it.
    ann.chat("after 1")
        .await
        .context("chatting after hibernation")?;
    t.hibernate().await?;
    bob.chat("after 2")
        .await
        .context("chatting after a second hibernation")?;
    for client in [&mut ann, &mut bob] {
        client
            .wait_for_log("four messages", |log| {
                log.iter().filter(|f| f.is_chat()).count() >= 4
            })
            .await?;
    }
    let history = ann.chats();
    check_chat_run(&history, "messages across hibernation")?;
    same_frames(&bob.chats(), &history, "bob's view across hibernation")?;
    // A newcomer sees the same roster and history.
    t.hibernate().await?;
    let (mut carl, joined) = t.join(&room, "carl").await?;
    ensure!(
        set(joined.roster()) == set(["ann", "bob"]),
        "roster after hibernation {:?}",
        joined.roster()
    );
    same_frames(&joined.history(), &history, "history after hibernation")?;
    for client in [&mut ann, &mut bob] {
        client
            .until("carl's joined", |f| f.joined() == Some("carl"))
            .await?;
    }
    // quit still reaches everyone after an eviction.
    t.hibernate().await?;
    bob.close().await;
    for client in [&mut ann, &mut carl] {
        let frame = client
            .next()
            .await
            .context("bob's quit after hibernation")?;
        ensure!(
            frame.raw == r#"{"quit":"bob"}"#,
            "{}: expected bob's quit, got {frame}",
            client.label
        );
    }
    // Resume with since across an eviction.
    t.hibernate().await?;
    let last = history.last().and_then(|f| f.u64("id")).context("ids")?;
    let mut again = t.connect(&room, "ann2").await?;
    let joined = again
        .join_with(&json!({"name": "ann2", "since": last - 1}), "ann2")
        .await?;
    same_frames(
        &joined.history(),
        &history[history.len() - 1..],
        "since after hibernation",
    )?;
    ensure!(
        joined.ready.raw == r#"{"ready":true,"recovered":true}"#,
        "ready {}",
        joined.ready
    );
    Ok(())
}

async fn hibernation_keeps_unnamed_socket_join_sequence(t: Target) -> Result<()> {
    if t.hibernate.is_none() {
        bail!(Skip("needs a hibernate URL (--hibernate-url)".into()));
    }
    let room = unique_name("hibun");
    let (mut ann, _) = t.join(&room, "ann").await?;
    ann.chat("m1").await?;
    let mut quiet = t.connect(&room, "quiet").await?;
    ann.chat("m2").await?;
    t.hibernate().await?;
    ann.chat("m3").await?;
    t.hibernate().await?;
    quiet
        .expect_silence(
            SILENCE,
            "an unnamed socket gets nothing, even across hibernation",
        )
        .await?;
    let joined = quiet
        .join("quiet")
        .await
        .context("joining after hibernation")?;
    ensure!(
        joined.roster() == vec!["ann".to_owned()],
        "roster {:?}",
        joined.roster()
    );
    same_frames(
        &joined.history(),
        &ann.chats(),
        "the unnamed socket's replay after hibernation",
    )?;
    ensure!(
        joined.frames.len() == 5,
        "join sequence {:?}",
        joined.frames
    );
    ann.until("quiet's joined", |f| f.joined() == Some("quiet"))
        .await?;
    let echo = quiet.chat("hello after waking").await?;
    ensure!(
        echo.u64("id") == Some(4),
        "the next id after 3 messages is 4: {echo}"
    );
    Ok(())
}

async fn hibernation_keeps_rate_limits(t: Target) -> Result<()> {
    t.require_distinct_ips()?;
    if t.hibernate.is_none() {
        bail!(Skip("needs a hibernate URL (--hibernate-url)".into()));
    }
    let room = unique_name("hibrl");
    let (mut client, _) = t.join(&room, "eager").await?;
    for i in 0..4 {
        client.chat(&format!("burst {i}")).await?;
    }
    tokio::time::sleep(VERDICT_SETTLE).await;
    t.hibernate().await?;
    let error = client
        .error_reply(
            &Outgoing::Text(json!({"message": "one too many"}).to_string()),
            |e| e == ERROR_RATE_LIMITED,
        )
        .await
        .context("after hibernation")?;
    ensure!(
        error == ERROR_RATE_LIMITED,
        "a cooldown must survive hibernation, got {error:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// HTTP extensions

async fn history_endpoint_pages(t: Target) -> Result<()> {
    let room = unique_name("page");
    fill_room(&t, &room, 7).await?;
    let (_reader, joined) = t.join(&room, "reader").await?;
    let replay = joined.history();
    ensure!(replay.len() == 7, "replay {:?}", replay);
    let ids = |value: &Value| -> Result<Vec<u64>> {
        json_list(value, "history")?
            .iter()
            .map(|item| {
                let item = match item.as_str() {
                    Some(text) => serde_json::from_str(text)?,
                    None => item.clone(),
                };
                item.get("id")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| anyhow!("history item without id: {item}"))
            })
            .collect()
    };
    let path = format!("/api/room/{room}/history");
    let all = t.get(&path).await?;
    ensure!(
        all.status == 200,
        "GET {path}: {} {:?}",
        all.status,
        all.text()
    );
    let all_json = all.json()?;
    ensure!(
        ids(&all_json)? == vec![7, 6, 5, 4, 3, 2, 1],
        "GET {path}: newest first, got {all_json}"
    );
    // Items are the messages as broadcast.
    let newest = json_list(&all_json, "history")?[0].clone();
    let newest = match newest.as_str() {
        Some(text) => serde_json::from_str(text)?,
        None => newest,
    };
    ensure!(
        newest == replay[6].json,
        "history item {newest} differs from the broadcast {}",
        replay[6]
    );
    for (query, want) in [
        ("limit=3", vec![7, 6, 5]),
        ("before=5&limit=3", vec![4, 3, 2]),
        ("before=2", vec![1]),
        ("before=1", vec![]),
        ("limit=100", vec![7, 6, 5, 4, 3, 2, 1]),
    ] {
        let response = t.get(&format!("{path}?{query}")).await?;
        ensure!(
            response.status == 200,
            "?{query}: {} {:?}",
            response.status,
            response.text()
        );
        let got = ids(&response.json()?)?;
        ensure!(got == want, "?{query}: expected ids {want:?}, got {got:?}");
    }
    for query in ["limit=0", "limit=101", "before=x", "limit=-1"] {
        let response = t.get(&format!("{path}?{query}")).await?;
        ensure!(
            response.status == 400,
            "?{query}: expected 400, got {} {:?}",
            response.status,
            response.text()
        );
    }
    Ok(())
}

async fn presence_endpoint(t: Target) -> Result<()> {
    let room = unique_name("pres");
    let path = format!("/api/room/{room}/presence");
    let names = |value: &Value| -> Result<BTreeSet<String>> {
        Ok(json_list(value, "presence")?
            .iter()
            .filter_map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .or_else(|| v.get("name").and_then(Value::as_str).map(str::to_owned))
            })
            .collect())
    };
    let empty = t.get(&path).await?;
    ensure!(
        empty.status == 200,
        "GET {path}: {} {:?}",
        empty.status,
        empty.text()
    );
    ensure!(
        names(&empty.json()?)?.is_empty(),
        "an empty room: {}",
        empty.text()
    );
    let (mut ann, _) = t.join(&room, "ann").await?;
    let (bob, _) = t.join(&room, "bob").await?;
    let _unnamed = t.connect(&room, "unnamed").await?;
    let response = t.get(&path).await?;
    let got = names(&response.json()?)?;
    ensure!(
        got == set(["ann", "bob"]),
        "presence with ann and bob joined (and one unnamed socket): {}",
        response.text()
    );
    bob.close().await;
    ann.until("bob's quit", |f| f.quit() == Some("bob")).await?;
    let response = t.get(&path).await?;
    let got = names(&response.json()?)?;
    ensure!(
        got == set(["ann"]),
        "presence after bob left: {}",
        response.text()
    );
    Ok(())
}

async fn publish_refused_without_token(t: Target) -> Result<()> {
    let room = unique_name("pubno");
    let (mut ann, _) = t.join(&room, "ann").await?;
    let body = json!({"name": "intruder", "message": "let me in"});
    let wrong = format!("{}-wrong", t.admin_token.as_deref().unwrap_or("token"));
    for token in [None, Some(wrong.as_str()), Some("")] {
        let response = t.publish(&room, token, &body).await?;
        ensure!(
            response.status == 401 || response.status == 403,
            "publish with token {token:?}: expected 401 or 403, got {} {:?}",
            response.status,
            response.text()
        );
    }
    ann.expect_no_chat(SILENCE, "a refused publish is not broadcast")
        .await?;
    let (_late, joined) = t.join(&room, "late").await?;
    ensure!(
        joined.history().is_empty(),
        "a refused publish is not stored: {:?}",
        joined.history()
    );
    Ok(())
}

async fn publish_with_token(t: Target) -> Result<()> {
    let token = t.require_admin_token()?.to_owned();
    let room = unique_name("pub");
    let (mut ann, _) = t.join(&room, "ann").await?;
    ann.chat("first").await?;
    let response = t
        .publish(
            &room,
            Some(&token),
            &json!({"name": "ops", "message": "maintenance at noon"}),
        )
        .await?;
    ensure!(
        (200..300).contains(&response.status),
        "publish: {} {:?}",
        response.status,
        response.text()
    );
    let (_, frame) = ann.until("the published message", |f| f.is_chat()).await?;
    ensure!(
        frame.str("name") == Some("ops") && frame.str("message") == Some("maintenance at noon"),
        "published frame {frame}"
    );
    let response = t
        .publish(&room, Some(&token), &json!({"message": "no name"}))
        .await?;
    ensure!(
        (200..300).contains(&response.status),
        "publish without a name: {} {:?}",
        response.status,
        response.text()
    );
    let (_, frame) = ann
        .until("the second published message", |f| f.is_chat())
        .await?;
    ensure!(
        frame.str("name") == Some("system"),
        "a publish without a name is from \"system\": {frame}"
    );
    let history = ann.chats();
    check_chat_run(&history, "chat and published messages")?;
    let (_late, joined) = t.join(&room, "late").await?;
    same_frames(&joined.history(), &history, "published messages are stored")?;
    for bad in [
        json!({"message": "x".repeat(257)}),
        json!({"name": "n".repeat(33), "message": "x"}),
        json!({"nope": 1}),
    ] {
        let response = t.publish(&room, Some(&token), &bad).await?;
        ensure!(
            response.status == 400,
            "publish {bad}: expected 400, got {} {:?}",
            response.status,
            response.text()
        );
    }
    ann.expect_no_chat(SILENCE, "refused publishes are not broadcast")
        .await?;
    Ok(())
}

async fn counter(t: Target) -> Result<()> {
    let name = unique_name("ctr");
    let path = format!("/api/counter/{name}");
    let get = |t: Target, path: String| async move {
        let response = t.get(&path).await?;
        ensure!(
            response.status == 200,
            "GET {path}: {} {:?}",
            response.status,
            response.text()
        );
        let json = response.json()?;
        ensure!(
            json.get("counter").is_some(),
            "GET {path}: expected {{\"counter\": n}}, got {json}"
        );
        counter_value(&json, &path)
    };
    ensure!(
        get(t.clone(), path.clone()).await? == 0,
        "a new counter is 0"
    );
    let post = |t: Target, path: String| async move {
        let response = t.http("POST", &path, &[], b"").await?;
        ensure!(
            response.status == 200,
            "POST {path}: {} {:?}",
            response.status,
            response.text()
        );
        counter_value(&response.json()?, &path)
    };
    ensure!(
        post(t.clone(), format!("{path}/increment")).await? == 1,
        "increment to 1"
    );
    ensure!(
        post(t.clone(), format!("{path}/increment")).await? == 2,
        "increment to 2"
    );
    ensure!(
        post(t.clone(), format!("{path}/decrement")).await? == 1,
        "decrement to 1"
    );
    ensure!(get(t.clone(), path.clone()).await? == 1, "read back 1");
    let concurrent: Vec<_> = (0..10)
        .map(|_| post(t.clone(), format!("{path}/increment")))
        .collect();
    let mut values: Vec<i64> = futures_util::future::join_all(concurrent)
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    values.sort_unstable();
    ensure!(
        values == (2..=11).collect::<Vec<_>>(),
        "10 concurrent increments from 1: each sees its own value, got {values:?}"
    );
    ensure!(get(t.clone(), path.clone()).await? == 11, "read back 11");
    let response = t.get(&format!("{path}/increment")).await?;
    ensure!(
        response.status == 405,
        "GET {path}/increment: expected 405, got {}",
        response.status
    );
    Ok(())
}

async fn health_and_metrics(t: Target) -> Result<()> {
    let health = t.get("/healthz").await?;
    ensure!(
        health.status == 200,
        "GET /healthz: {} {:?}",
        health.status,
        health.text()
    );
    let metrics = t.get("/metrics").await?;
    ensure!(
        metrics.status == 200,
        "GET /metrics: {} {:?}",
        metrics.status,
        metrics.text()
    );
    let text = metrics.text();
    ensure!(
        text.lines().any(|line| line.starts_with("# TYPE ")),
        "GET /metrics: expected Prometheus text format, got {:?}",
        text.chars().take(200).collect::<String>()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Answers built by the core (`edgechat_core::http::answer`): exact bytes on every adapter

/// The content type of plain-text answers.
const TEXT_PLAIN: &str = "text/plain;charset=UTF-8";
/// The content type of JSON answers.
const APPLICATION_JSON: &str = "application/json";

/// Fails unless `response` has exactly this status, content type and body.
fn exact(
    response: &super::http::Response,
    status: u16,
    content_type: &str,
    body: &str,
    what: &str,
) -> Result<()> {
    response.expect(status, body, what)?;
    let got = response.header("content-type");
    ensure!(
        got == Some(content_type),
        "{what}: content-type must be {content_type:?}, got {got:?}"
    );
    Ok(())
}

async fn answer_bodies_and_content_types_are_exact(t: Target) -> Result<()> {
    exact(
        &t.get("/healthz").await?,
        200,
        TEXT_PLAIN,
        "ok",
        "GET /healthz",
    )?;
    exact(
        &t.get("/no/such/path").await?,
        404,
        TEXT_PLAIN,
        "Not found",
        "GET /no/such/path",
    )?;
    let metrics = t.get("/metrics").await?;
    let got = metrics.header("content-type");
    ensure!(
        metrics.status == 200 && got == Some("text/plain; version=0.0.4; charset=utf-8"),
        "GET /metrics: expected 200 in the Prometheus content type, got {} {got:?}",
        metrics.status
    );
    let room = unique_name("exact");
    let path = format!("/api/room/{room}/presence");
    exact(
        &t.get(&path).await?,
        200,
        APPLICATION_JSON,
        r#"{"users":[]}"#,
        &format!("GET {path} of an empty room"),
    )?;
    let (_ann, _) = t.join(&room, "ann").await?;
    exact(
        &t.get(&path).await?,
        200,
        APPLICATION_JSON,
        r#"{"users":["ann"]}"#,
        &format!("GET {path}"),
    )?;
    let counter = format!("/api/counter/{}", unique_name("exact"));
    exact(
        &t.get(&counter).await?,
        200,
        APPLICATION_JSON,
        r#"{"counter":0}"#,
        &format!("GET {counter}"),
    )?;
    exact(
        &t.http("POST", &format!("{counter}/decrement"), &[], b"")
            .await?,
        200,
        APPLICATION_JSON,
        r#"{"counter":-1}"#,
        &format!("POST {counter}/decrement"),
    )?;
    let created = t.http("POST", "/api/room", &[], b"").await?;
    let id = created.text();
    minted_ok(&id)?;
    exact(&created, 200, TEXT_PLAIN, &id, "POST /api/room")?;
    ensure!(
        created.header("access-control-allow-origin") == Some("*"),
        "POST /api/room: Access-Control-Allow-Origin must be *, got {:?}",
        created.header("access-control-allow-origin")
    );
    Ok(())
}

async fn history_next_before_reaches_the_oldest(t: Target) -> Result<()> {
    let room = unique_name("nextb");
    fill_room(&t, &room, 7).await?;
    let (_reader, joined) = t.join(&room, "reader").await?;
    let replay = joined.history();
    ensure!(replay.len() == 7, "replay {:?}", replay);
    // The page with ids `ids` (newest first), exactly as the frames were broadcast.
    let page = |ids: &[usize], next_before: Option<usize>| {
        let frames: Vec<&str> = ids.iter().map(|id| replay[id - 1].raw.as_str()).collect();
        let next_before = next_before.map_or("null".to_owned(), |id| id.to_string());
        format!(
            r#"{{"messages":[{}],"next_before":{next_before}}}"#,
            frames.join(",")
        )
    };
    let path = format!("/api/room/{room}/history");
    // Paging by 3 with `next_before` walks 7..5, 4..2, 1, then stops.
    let mut query = "limit=3".to_owned();
    for (ids, next) in [
        (vec![7, 6, 5], Some(5)),
        (vec![4, 3, 2], Some(2)),
        (vec![1], None),
    ] {
        let response = t.get(&format!("{path}?{query}")).await?;
        exact(
            &response,
            200,
            APPLICATION_JSON,
            &page(&ids, next),
            &format!("GET {path}?{query}"),
        )?;
        let next_before = response.json()?.get("next_before").cloned();
        match next_before.as_ref().and_then(Value::as_u64) {
            Some(before) => query = format!("before={before}&limit=3"),
            None => ensure!(next.is_none(), "?{query}: next_before is {next_before:?}"),
        }
    }
    // A full page that happens to end at the oldest message still says where to go on, and
    // going on there gives an empty page and null.
    exact(
        &t.get(&format!("{path}?limit=7")).await?,
        200,
        APPLICATION_JSON,
        &page(&[7, 6, 5, 4, 3, 2, 1], Some(1)),
        "?limit=7",
    )?;
    exact(
        &t.get(&format!("{path}?before=1&limit=7")).await?,
        200,
        APPLICATION_JSON,
        &page(&[], None),
        "?before=1&limit=7",
    )?;
    exact(
        &t.get(&path).await?,
        200,
        APPLICATION_JSON,
        &page(&[7, 6, 5, 4, 3, 2, 1], None),
        "the default page (50) is not full",
    )?;
    Ok(())
}

async fn publish_unauthorized_is_exact(t: Target) -> Result<()> {
    let room = unique_name("pub401");
    let body = json!({"name": "intruder", "message": "let me in"});
    let wrong = format!("{}-wrong", t.admin_token.as_deref().unwrap_or("token"));
    for token in [None, Some(wrong.as_str()), Some("")] {
        let response = t.publish(&room, token, &body).await?;
        let what = format!("publish with token {token:?}");
        exact(&response, 401, TEXT_PLAIN, "Unauthorized", &what)?;
        ensure!(
            response.header("www-authenticate") == Some("Bearer"),
            "{what}: WWW-Authenticate must be Bearer, got {:?}",
            response.header("www-authenticate")
        );
    }
    Ok(())
}

async fn publish_answers_are_exact(t: Target) -> Result<()> {
    let token = t.require_admin_token()?.to_owned();
    let room = unique_name("pubx");
    let too_large = json!({"message": "x".repeat(5 * 1024)});
    for (body, text) in [
        (json!({"message": "x".repeat(257)}), "Message too long."),
        (
            json!({"name": "n".repeat(33), "message": "x"}),
            "Name too long.",
        ),
        (
            json!({"nope": 1}),
            r#"Expected a JSON body {"name": string, "message": string}."#,
        ),
        (too_large, "Body too large."),
    ] {
        let response = t.publish(&room, Some(&token), &body).await?;
        let shown: String = body.to_string().chars().take(60).collect();
        exact(
            &response,
            400,
            TEXT_PLAIN,
            text,
            &format!("publish {shown}"),
        )?;
    }
    // Nothing was stored, so the first message that passes is id 1.
    let ok = json!({"name": "ops", "message": "x".repeat(256)});
    let response = t.publish(&room, Some(&token), &ok).await?;
    exact(&response, 200, APPLICATION_JSON, r#"{"id":1}"#, "publish")?;
    Ok(())
}

async fn admin_hibernate_other_methods_405(t: Target) -> Result<()> {
    for method in ["GET", "PUT", "DELETE"] {
        exact(
            &t.http(method, "/admin/hibernate", &[], b"").await?,
            405,
            TEXT_PLAIN,
            "Method not allowed",
            &format!("{method} /admin/hibernate"),
        )?;
    }
    Ok(())
}

async fn admin_hibernate_refused_without_token(t: Target) -> Result<()> {
    let wrong = format!(
        "Bearer {}-wrong",
        t.admin_token.as_deref().unwrap_or("token")
    );
    for headers in [vec![], vec![("Authorization", wrong.as_str())]] {
        let response = t.http("POST", "/admin/hibernate", &headers, b"").await?;
        let what = format!("POST /admin/hibernate with {headers:?}");
        exact(&response, 401, TEXT_PLAIN, "Unauthorized", &what)?;
        ensure!(
            response.header("www-authenticate") == Some("Bearer"),
            "{what}: WWW-Authenticate must be Bearer, got {:?}",
            response.header("www-authenticate")
        );
    }
    Ok(())
}

async fn counter_named_like_an_operation(t: Target) -> Result<()> {
    // These counters are shared by every run against a target that keeps its storage, so
    // the case only compares values it reads itself.
    for name in ["increment", "decrement"] {
        let path = format!("/api/counter/{name}");
        let read = |response: super::http::Response| -> Result<i64> {
            ensure!(
                response.status == 200,
                "{path}: {} {:?}",
                response.status,
                response.text()
            );
            counter_value(&response.json()?, &path)
        };
        let before = read(t.get(&path).await?)?;
        let again = read(t.get(&path).await?)?;
        ensure!(
            again == before,
            "GET {path} reads the counter called {name:?}; it must not change it ({before} then {again})"
        );
        let changed = read(t.http("POST", &format!("{path}/{name}"), &[], b"").await?)?;
        let step = if name == "increment" { 1 } else { -1 };
        ensure!(
            changed == before + step,
            "POST {path}/{name}: expected {}, got {changed}",
            before + step
        );
        ensure!(
            read(t.get(&path).await?)? == changed,
            "GET {path} after the change"
        );
    }
    Ok(())
}

async fn client_ip_is_the_first_header_entry(t: Target) -> Result<()> {
    t.require_distinct_ips()?;
    // `X-Forwarded-For` style lists: the client is the first entry, whatever proxies follow.
    let ip = t.fresh_ip().expect("distinct IPs");
    let (proxy1, proxy2) = (t.fresh_ip(), t.fresh_ip());
    let (proxy1, proxy2) = (proxy1.expect("an IP"), proxy2.expect("an IP"));
    let room = unique_name("xff");
    let mut ann = t
        .connect_as(&room, "ann", Some(&format!("{ip}, {proxy1}")))
        .await?;
    ann.join("ann").await?; // action 1
    ann.chat("a1").await?; // 2
    ann.chat("a2").await?; // 3
    let mut bob = t
        .connect_as(&room, "bob", Some(&format!(" {ip} ,{proxy2}")))
        .await?;
    bob.join("bob").await?; // 4: within the burst
    bob.chat("b1").await?; // 5: passes, and puts this IP in a cooldown
    tokio::time::sleep(VERDICT_SETTLE).await;
    let error = bob
        .error_reply(&Outgoing::Text(json!({"message": "b2"}).to_string()), |e| {
            e == ERROR_RATE_LIMITED
        })
        .await
        .context("the 6th action of one client behind two proxies")?;
    ensure!(
        error == ERROR_RATE_LIMITED,
        "expected the rate-limit error, got {error:?}"
    );
    // The same proxy after another client is another client.
    let other = t.fresh_ip().expect("an IP");
    let mut carl = t
        .connect_as(&room, "carl", Some(&format!("{other}, {ip}")))
        .await?;
    carl.join("carl")
        .await
        .context("a client whose list only ends with the limited IP is not limited")?;
    carl.chat("c1").await?;
    Ok(())
}
