//! Moderation cases: the admin API's actions, what every client sees of them, and what
//! stays true across hibernation (see PROTOCOL.md, "Moderation").
//!
//! Every case needs the admin token; the IP ban needs distinct client IPs too.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

use super::http::Response;
use super::ws::{Client, Event, Frame};
use super::{unique_name, Case, Target};

/// How long "nothing arrives" is watched for.
const SILENCE: Duration = Duration::from_millis(500);

/// Every moderation case.
pub fn cases() -> Vec<Case> {
    vec![
        case!(moderate_refused_without_token),
        case!(moderate_bad_requests_are_explained),
        case!(moderate_delete_erases_the_text_everywhere),
        case!(moderate_edit_replaces_the_text_in_place),
        case!(moderate_kick_closes_4010),
        case!(moderate_ban_closes_and_keeps_out),
        case!(moderate_ban_ip_refuses_connections),
        case!(moderate_mute_makes_read_only),
        case!(moderate_settings_topic_read_only_members),
        case!(moderate_admin_views),
    ]
}

impl Target {
    /// `POST /api/room/<room>/moderate` with `action`, with the admin token if given.
    ///
    /// # Errors
    /// On connection failures (any status is an `Ok`).
    pub async fn moderate_with(
        &self,
        room: &str,
        token: Option<&str>,
        action: &str,
    ) -> Result<Response> {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(bearer) = &bearer {
            headers.push(("Authorization", bearer.as_str()));
        }
        let path = format!("/api/room/{room}/moderate");
        self.http("POST", &path, &headers, action.as_bytes()).await
    }

    /// Takes `action` in `room` with the admin token; fails unless it answers 200.
    ///
    /// # Errors
    /// [`super::Skip`] without an admin token; the answer if it is not 200.
    pub async fn moderate(&self, room: &str, action: Value) -> Result<()> {
        let token = self.require_admin_token()?.to_owned();
        let response = self
            .moderate_with(room, Some(&token), &action.to_string())
            .await?;
        response.expect(200, r#"{"ok":true}"#, &format!("moderating with {action}"))
    }

    /// `GET path` with the admin token, as JSON.
    ///
    /// # Errors
    /// [`super::Skip`] without an admin token; the answer if it is not 200 JSON.
    pub async fn admin_get(&self, path: &str) -> Result<Value> {
        let bearer = format!("Bearer {}", self.require_admin_token()?);
        let response = self
            .http("GET", path, &[("Authorization", bearer.as_str())], b"")
            .await?;
        ensure!(
            response.status == 200,
            "GET {path}: {} {:?}",
            response.status,
            response.text()
        );
        response.json()
    }
}

/// Waits for the close of `client` and returns its code and reason.
async fn closed(client: &mut Client) -> Result<(u16, String)> {
    loop {
        match client.next_event().await? {
            Event::Close(Some((code, reason))) => return Ok((code, reason)),
            Event::Text(_) => continue,
            other => bail!(
                "{}: expected a close with a code, got {other}",
                client.label
            ),
        }
    }
}

/// The id of the chat message `text` that `client` received.
fn id_of(client: &Client, text: &str) -> Result<u64> {
    client
        .chats()
        .iter()
        .find(|frame| frame.str("message") == Some(text))
        .and_then(|frame| frame.u64("id"))
        .with_context(|| format!("{} never received {text:?}", client.label))
}

async fn moderate_refused_without_token(t: Target) -> Result<()> {
    let room = unique_name("modno");
    let (mut ann, _) = t.join(&room, "ann").await?;
    let id = ann.chat("stays").await?.u64("id").context("an id")?;
    let wrong = format!("{}-wrong", t.admin_token.as_deref().unwrap_or("token"));
    for token in [None, Some(wrong.as_str()), Some("")] {
        let action = json!({ "delete": id }).to_string();
        let response = t.moderate_with(&room, token, &action).await?;
        ensure!(
            response.status == 401 || response.status == 403,
            "moderating with token {token:?}: expected 401 or 403, got {} {:?}",
            response.status,
            response.text()
        );
        let response = t
            .http("GET", &format!("/api/room/{room}/admin"), &[], b"")
            .await?;
        ensure!(
            response.status == 401 || response.status == 403,
            "room view without token: {}",
            response.status
        );
    }
    ann.expect_silence(SILENCE, "a refused action changes nothing")
        .await
}

async fn moderate_bad_requests_are_explained(t: Target) -> Result<()> {
    let token = t.require_admin_token()?.to_owned();
    let room = unique_name("modbad");
    let (mut ann, _) = t.join(&room, "ann").await?;
    ann.chat("hello").await?;
    let cases: &[(&str, u16, &str)] = &[
        (
            "not json",
            400,
            "Malformed moderation request: expected a JSON object",
        ),
        (
            "{}",
            400,
            "Malformed moderation request: name exactly one action",
        ),
        (
            r#"{"delete":1,"kick":"ann"}"#,
            400,
            "Malformed moderation request: name exactly one action",
        ),
        (
            r#"{"delete":0}"#,
            400,
            "Malformed moderation request: a message id must be a positive integer",
        ),
        (
            r#"{"ban_ip":"nope"}"#,
            400,
            "Malformed moderation request: an IP must be an IPv4 or IPv6 address",
        ),
        (r#"{"delete":999}"#, 404, "No such message."),
        (r#"{"edit":999,"message":"x"}"#, 404, "No such message."),
    ];
    for (body, status, text) in cases {
        let response = t.moderate_with(&room, Some(&token), body).await?;
        response.expect(*status, text, &format!("moderating with {body}"))?;
    }
    let long = json!({"edit": 1, "message": "x".repeat(257)}).to_string();
    let response = t.moderate_with(&room, Some(&token), &long).await?;
    response.expect(400, "Message too long.", "an edit too long")?;
    ann.expect_silence(SILENCE, "refused actions change nothing")
        .await
}

async fn moderate_delete_erases_the_text_everywhere(t: Target) -> Result<()> {
    let room = unique_name("moddel");
    let (mut ann, _) = t.join(&room, "ann").await?;
    let (mut bob, _) = t.join(&room, "bob").await?;
    ann.chat("keep me").await?;
    ann.chat("secret words").await?;
    bob.until("ann's second message", |f| {
        f.str("message") == Some("secret words")
    })
    .await?;
    let target = id_of(&ann, "secret words")?;
    t.moderate(&room, json!({ "delete": target })).await?;
    for client in [&mut ann, &mut bob] {
        let (_, frame) = client
            .until("the deletion", |f| f.u64("deleted") == Some(target))
            .await?;
        ensure!(
            frame.u64("id") == Some(target + 1) && frame.str("name").is_none(),
            "the deletion is the next record and no chat message: {frame}"
        );
    }
    let absent = |frames: &[Frame], what: &str| -> Result<()> {
        ensure!(
            !frames.iter().any(|f| f.raw.contains("secret words")),
            "{what} still holds the deleted text: {frames:?}"
        );
        Ok(())
    };
    let (late, _) = t.join(&room, "late").await?;
    absent(&late.log, "a join replay")?;
    ensure!(
        late.log
            .iter()
            .any(|f| f.u64("deleted") == Some(target) && f.u64("id") == Some(target)),
        "the replay holds the tombstone at id {target}: {:?}",
        late.log
    );
    let mut resumed = t.connect(&room, "resumed").await?;
    resumed
        .join_with(&json!({"name": "resumed", "since": target - 1}), "resumed")
        .await?;
    absent(&resumed.log, "a since replay")?;
    let history = t.get(&format!("/api/room/{room}/history")).await?;
    ensure!(
        !history.text().contains("secret words"),
        "history still holds it: {}",
        history.text()
    );
    if t.hibernate.is_some() {
        t.hibernate().await?;
        let (after, _) = t.join(&room, "after").await?;
        absent(&after.log, "a replay after hibernation")?;
        ensure!(after
            .chats()
            .iter()
            .any(|f| f.str("message") == Some("keep me")));
    }
    Ok(())
}

async fn moderate_edit_replaces_the_text_in_place(t: Target) -> Result<()> {
    let room = unique_name("modedit");
    let (mut ann, _) = t.join(&room, "ann").await?;
    ann.chat("tpyo").await?;
    ann.chat("second").await?;
    let target = id_of(&ann, "tpyo")?;
    t.moderate(&room, json!({ "edit": target, "message": "typo" }))
        .await?;
    let (_, frame) = ann
        .until("the edit", |f| f.u64("edited") == Some(target))
        .await?;
    ensure!(
        frame.str("message") == Some("typo") && frame.u64("timestamp").is_none(),
        "the edit record: {frame}"
    );
    let (late, joined) = t.join(&room, "late").await?;
    let chats = joined.history();
    ensure!(
        chats.len() == 2
            && chats[0].str("message") == Some("typo")
            && chats[0].u64("id") == Some(target)
            && chats[0].json.get("edited") == Some(&Value::Bool(true))
            && chats[1].str("message") == Some("second"),
        "the edited message keeps its place: {:?}",
        late.log
    );
    Ok(())
}

async fn moderate_kick_closes_4010(t: Target) -> Result<()> {
    let room = unique_name("modkick");
    let (mut ann, _) = t.join(&room, "ann").await?;
    let (mut bob, _) = t.join(&room, "bob").await?;
    t.moderate(&room, json!({"kick": "bob"})).await?;
    let (code, reason) = closed(&mut bob).await?;
    ensure!(
        code == 4010 && reason == "Removed by a moderator.",
        "kick close: {code} {reason:?}"
    );
    ann.until("bob's quit", |f| f.quit() == Some("bob")).await?;
    // A kick is not a ban.
    let (_again, _) = t.join(&room, "bob").await?;
    Ok(())
}

async fn moderate_ban_closes_and_keeps_out(t: Target) -> Result<()> {
    let room = unique_name("modban");
    let (mut ann, _) = t.join(&room, "ann").await?;
    let (mut bob, _) = t.join(&room, "bob").await?;
    t.moderate(&room, json!({"ban": "bob"})).await?;
    let (code, reason) = closed(&mut bob).await?;
    ensure!(
        code == 4011 && reason == "Banned from this room.",
        "ban close: {code} {reason:?}"
    );
    ann.until("bob's quit", |f| f.quit() == Some("bob")).await?;
    let check_refused = |label: &'static str| {
        let t = t.clone();
        let room = room.clone();
        async move {
            let mut again = t.connect(&room, label).await?;
            again.send_json(&json!({"name": "bob"})).await?;
            let frame = again.next().await?;
            ensure!(
                frame.error() == Some("Banned from this room."),
                "a banned user's join: {frame}"
            );
            let (code, _) = closed(&mut again).await?;
            ensure!(
                code == 4011,
                "a banned user's join closes with 4011, not {code}"
            );
            anyhow::Ok(())
        }
    };
    check_refused("bob again").await?;
    ann.expect_no_chat(SILENCE, "a banned join is not announced")
        .await?;
    if t.hibernate.is_some() {
        t.hibernate().await?;
        check_refused("bob after hibernation").await?;
    }
    t.moderate(&room, json!({"unban": "bob"})).await?;
    let (_bob, _) = t.join(&room, "bob").await?;
    Ok(())
}

async fn moderate_ban_ip_refuses_connections(t: Target) -> Result<()> {
    t.require_distinct_ips()?;
    let room = unique_name("modbanip");
    let ip = t.fresh_ip().expect("distinct IPs");
    let mut bob = t.connect_as(&room, "bob", Some(&ip)).await?;
    bob.join("bob").await?;
    t.moderate(&room, json!({"ban_ip": ip, "for_ms": 600_000}))
        .await?;
    let (code, _) = closed(&mut bob).await?;
    ensure!(code == 4011, "an IP ban closes with 4011, not {code}");
    let mut again = t.connect_as(&room, "bob again", Some(&ip)).await?;
    let (code, _) = closed(&mut again).await?;
    ensure!(
        code == 4011,
        "a banned IP's new socket closes with 4011, not {code}"
    );
    let view = t.admin_get(&format!("/api/room/{room}/admin")).await?;
    ensure!(
        view["bans"].as_array().is_some_and(|bans| bans
            .iter()
            .any(|ban| ban["ip"] == json!(ip) && ban["until"].is_u64())),
        "the room view lists the ban: {view}"
    );
    t.moderate(&room, json!({ "unban_ip": ip })).await?;
    let mut fine = t.connect_as(&room, "bob unbanned", Some(&ip)).await?;
    fine.join("bob").await?;
    Ok(())
}

async fn moderate_mute_makes_read_only(t: Target) -> Result<()> {
    let room = unique_name("modmute");
    let (mut ann, _) = t.join(&room, "ann").await?;
    let (mut bob, _) = t.join(&room, "bob").await?;
    t.moderate(&room, json!({"mute": "bob"})).await?;
    bob.send_json(&json!({"message": "can you hear me"}))
        .await?;
    let (_, frame) = bob.until("the refusal", |f| f.error().is_some()).await?;
    ensure!(
        frame.error() == Some("You are muted in this room."),
        "a muted message: {frame}"
    );
    ann.expect_no_chat(SILENCE, "a muted message is not broadcast")
        .await?;
    t.moderate(&room, json!({"unmute": "bob"})).await?;
    bob.chat("back").await?;
    Ok(())
}

async fn moderate_settings_topic_read_only_members(t: Target) -> Result<()> {
    let token = t.require_admin_token()?.to_owned();
    let room = unique_name("modset");
    let (mut ann, _) = t.join(&room, "ann").await?;
    t.moderate(
        &room,
        json!({"settings": {"topic": "Be kind", "read_only": true, "members_max": 2}}),
    )
    .await?;
    let (_, frame) = ann.until("the topic", |f| f.str("topic").is_some()).await?;
    ensure!(
        frame.raw == r#"{"topic":"Be kind"}"#,
        "topic frame: {frame}"
    );
    let (_bob, joined) = t.join(&room, "bob").await?;
    ensure!(
        joined.frames.last().map(|f| f.raw.as_str()) == Some(r#"{"topic":"Be kind"}"#),
        "the topic comes right before ready: {:?}",
        joined.frames
    );
    ann.send_json(&json!({"message": "may I?"})).await?;
    let (_, frame) = ann.until("the refusal", |f| f.error().is_some()).await?;
    ensure!(
        frame.error() == Some("This room is read-only."),
        "a message in a read-only room: {frame}"
    );
    let published = t
        .publish(
            &room,
            Some(&token),
            &json!({"name": "ops", "message": "announcement"}),
        )
        .await?;
    ensure!(
        published.status == 200,
        "publish into a read-only room: {}",
        published.status
    );
    ann.until("the announcement", |f| {
        f.str("message") == Some("announcement")
    })
    .await?;
    let mut third = t.connect(&room, "carol").await?;
    third.send_json(&json!({"name": "carol"})).await?;
    let frame = third.next().await?;
    ensure!(
        frame.error() == Some("Room is full."),
        "a join beyond members_max: {frame}"
    );
    let (code, _) = closed(&mut third).await?;
    ensure!(
        code == 1013,
        "a join beyond members_max closes with 1013, not {code}"
    );
    let view = t.admin_get(&format!("/api/room/{room}/admin")).await?;
    ensure!(
        view["settings"]
            == json!({"history_max": null, "history_max_age_ms": null, "members_max": 2, "read_only": true, "topic": "Be kind"}),
        "settings in the room view: {view}"
    );
    Ok(())
}

async fn moderate_admin_views(t: Target) -> Result<()> {
    t.require_admin_token()?;
    let room = unique_name("modview");
    let (mut ann, _) = t.join(&room, "ann").await?;
    ann.chat("hi").await?;
    let view = t.admin_get(&format!("/api/room/{room}/admin")).await?;
    let members = view["members"].as_array().context("members")?;
    ensure!(
        members.len() == 1
            && members[0]["name"] == json!("ann")
            && members[0]["user"] == json!("ann")
            && members[0]["moderator"] == json!(false)
            && view["last_id"] == json!(1)
            && view["connections"] == json!(1),
        "room view: {view}"
    );
    let bearer = format!("Bearer {}", t.require_admin_token()?);
    let listed = t
        .http(
            "GET",
            "/api/admin/rooms",
            &[("Authorization", bearer.as_str())],
            b"",
        )
        .await?;
    if listed.status == 501 {
        // A Worker cannot enumerate its Durable Objects; the answer says so.
        return listed.expect(
            501,
            "This deployment cannot list its rooms; open one by name.",
            "the room list",
        );
    }
    let rooms = t.admin_get("/api/admin/rooms").await?;
    ensure!(
        rooms["rooms"].as_array().is_some_and(|rooms| rooms
            .iter()
            .any(|r| r["room"] == json!(room) && r["connections"] == json!(1))),
        "the room list holds {room}: {rooms}"
    );
    Ok(())
}
