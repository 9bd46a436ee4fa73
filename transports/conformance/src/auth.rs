//! Identity and access cases (`auth_*`): signed tokens on the WebSocket URL and as bearer
//! tokens, roles, refresh and expiry, the origin allow-list.
//!
//! The cases mint their own HS256 tokens with the target's shared secret
//! ([`AuthSetup::hs256_secret`]) and expect what the target's mode ([`AuthSetup::mode`])
//! makes of them, so the same cases run against a target in every mode: run the suite once
//! per configuration, telling it the configuration (`--auth-mode`, `--auth-hs256-secret`,
//! `--allowed-origins`). A case that needs what the target lacks (a secret, a mode, an
//! allow-list) skips.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, ensure, Result};
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};

use super::http::Response;
use super::ws::{Client, Event, Outgoing, Refused, ERROR_RATE_LIMITED};
use super::{unique_name, Case, Skip, Target, VERDICT_SETTLE};

/// How a target checks identities (its `--auth-mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AuthMode {
    /// Tokens are ignored (the default).
    #[default]
    Off,
    /// A token, when present, must be valid and fixes the identity.
    Optional,
    /// No valid token, no connection.
    Required,
}

impl AuthMode {
    /// The mode called `name` (`off`, `optional`, `required`).
    pub fn from_name(name: &str) -> Option<AuthMode> {
        match name {
            "off" => Some(AuthMode::Off),
            "optional" => Some(AuthMode::Optional),
            "required" => Some(AuthMode::Required),
            _ => None,
        }
    }
}

/// The target's identity settings, as far as the cases need to know them.
#[derive(Debug, Clone, Default)]
pub struct AuthSetup {
    /// The target's mode.
    pub mode: AuthMode,
    /// The HS256 secret the target verifies tokens with (the cases sign with it). With auth
    /// off, any secret works: tokens are ignored.
    pub hs256_secret: Option<String>,
    /// The target's origin allow-list (empty: it has none).
    pub allowed_origins: Vec<String>,
    /// Rooms (names) the target marks token-only (`--auth-token-rooms`).
    pub token_rooms: Vec<String>,
}

/// The exact texts of PROTOCOL.md, "Identity and access".
const TOKEN_REQUIRED: &str = "A token is required.";
const MALFORMED: &str = "Malformed token.";
const BAD_SIGNATURE: &str = "Invalid token signature.";
const EXPIRED: &str = "Token expired.";
const NOT_GRANTED: &str = "Token does not grant this room.";
const READ_ONLY: &str = "Token grants read-only access to this room.";
const SUBJECT_CHANGED: &str = "A refreshed token must name the same user.";
const ORIGIN_REFUSED: &str = "Origin not allowed.";
/// Close code and reason of a connection whose token expired.
const CLOSE_TOKEN_EXPIRED: u16 = 4001;
/// A secret the target does not know.
const WRONG_SECRET: &str = "not the target's secret, but 32 bytes long or more";
/// How far in the past the `exp` of a token that is about to expire lies: within the
/// default leeway of 30 s, so the token is accepted and runs out a few seconds later.
const NEARLY_EXPIRED_SECS: i64 = 25;
/// Longer than a nearly expired token lives (the leeway's rest), with margin.
const OUTLIVE_NEARLY_EXPIRED: Duration = Duration::from_secs(8);
/// How long a socket is watched for the expiry close.
const EXPIRY_CLOSE_WITHIN: Duration = Duration::from_secs(30);

/// The identity and access cases.
pub fn cases() -> Vec<Case> {
    vec![
        case!(auth_token_fixes_name_unless_off),
        case!(auth_anonymous_by_mode),
        case!(auth_bad_tokens_refused_unless_off),
        case!(auth_room_not_granted_403),
        case!(auth_read_only_cannot_send),
        case!(auth_refresh_keeps_connection),
        case!(auth_expiry_closes_4001),
        case!(auth_expiry_closes_4001_after_hibernation),
        case!(auth_bearer_on_history_and_presence),
        case!(auth_admin_token_reads_in_every_mode),
        case!(auth_token_only_room),
        case!(auth_user_limited_across_ips),
        case!(auth_origin_allow_list),
    ]
}

// ---------------------------------------------------------------------------------------
// Helpers

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// What a case signs with.
fn secret(t: &Target) -> Result<&str> {
    match (&t.auth.hs256_secret, t.auth.mode) {
        (Some(secret), _) => Ok(secret),
        // Tokens are ignored: any signature does.
        (None, AuthMode::Off) => Ok(WRONG_SECRET),
        (None, _) => bail!(Skip(
            "needs the target's HS256 secret (--auth-hs256-secret)".into()
        )),
    }
}

/// Fails with [`Skip`] unless the target checks tokens.
fn require_auth(t: &Target) -> Result<()> {
    if t.auth.mode == AuthMode::Off {
        bail!(Skip("needs --auth-mode optional or required".into()));
    }
    Ok(())
}

/// An HS256 token signed with `secret` for `sub` named `name`, expiring `ttl_secs` from now,
/// granting `rooms`.
fn token_signed(
    secret: &str,
    sub: &str,
    name: &str,
    ttl_secs: i64,
    rooms: Value,
) -> Result<String> {
    let claims = json!({ "sub": sub, "name": name, "exp": now_secs() + ttl_secs, "rooms": rooms });
    Ok(encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// A token of the target's secret, valid for ten minutes, granting `room` with `role`.
fn token(t: &Target, sub: &str, name: &str, room: &str, role: &str) -> Result<String> {
    token_signed(secret(t)?, sub, name, 600, json!({ room: role }))
}

/// The query that carries `token` (tokens are URL-safe base64 and dots).
fn query(token: Option<&str>) -> String {
    token.map_or_else(String::new, |token| format!("?token={token}"))
}

/// Connects with `token` (signed [`NEARLY_EXPIRED_SECS`] in the past, so valid only thanks
/// to the target's leeway) and joins, expecting the token's `name`; skips the case when the
/// target's leeway is too short to admit it.
async fn join_nearly_expired(
    t: &Target,
    room: &str,
    token: &str,
    label: &str,
    name: &str,
) -> Result<Client> {
    let mut client = match connect(t, room, Some(token), &[], label).await {
        Err(error)
            if error
                .downcast_ref::<Refused>()
                .is_some_and(|r| r.body == EXPIRED) =>
        {
            bail!(Skip(format!(
                "the target's token leeway is under {NEARLY_EXPIRED_SECS} s"
            )))
        }
        other => other?,
    };
    client.join_with(&json!({ "name": "x" }), name).await?;
    Ok(client)
}

/// Opens a WebSocket to `room` with `token` on its URL and extra `headers`, from a fresh IP.
async fn connect(
    t: &Target,
    room: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    label: &str,
) -> Result<Client> {
    let url = format!("{}{}", t.ws_url(room)?, query(token));
    let ip = t.fresh_ip();
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    if let (Some(header), Some(ip)) = (&t.client_ip_header, &ip) {
        all.push((header.as_str(), ip.as_str()));
    }
    Client::connect(&url, &all, label).await
}

/// Connects with `token` and joins asking for the name `asked`, expecting to be `expected`.
async fn join(
    t: &Target,
    room: &str,
    token: Option<&str>,
    asked: &str,
    expected: &str,
) -> Result<Client> {
    let mut client = connect(t, room, token, &[], asked).await?;
    client
        .join_with(&json!({ "name": asked }), expected)
        .await?;
    Ok(client)
}

/// The upgrade of `room` with `token` and `headers`, sent as plain HTTP.
async fn upgrade_raw(
    t: &Target,
    room: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
) -> Result<Response> {
    let mut all = vec![
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
    ];
    all.extend_from_slice(headers);
    let path = format!("/api/room/{room}/websocket{}", query(token));
    t.http("GET", &path, &all, b"").await
}

/// Fails unless the upgrade of `room` with `token` and `headers` is refused with exactly
/// `status` and `body`: seen by a WebSocket client, and as plain HTTP (whose whole body a
/// WebSocket client may not see).
async fn expect_refused(
    t: &Target,
    room: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    status: u16,
    body: &str,
    what: &str,
) -> Result<()> {
    match connect(t, room, token, headers, what).await {
        Ok(_) => bail!("{what}: expected {status} {body:?}, the upgrade was accepted"),
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
    let response = upgrade_raw(t, room, token, headers).await?;
    response.expect(status, body, what)?;
    if status == 401 {
        ensure!(
            response
                .header("www-authenticate")
                .is_some_and(|challenge| challenge.starts_with("Bearer")),
            "{what}: a 401 carries a Bearer challenge, got {:?}",
            response.header("www-authenticate")
        );
    }
    Ok(())
}

/// The next event that is not a text frame (frames before it are skipped), within `within`.
async fn close_of(client: &mut Client, within: Duration) -> Result<Event> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match client.next_event_within(left).await? {
            None => bail!("{}: no close within {within:?}", client.label),
            Some(Event::Text(_)) => {}
            Some(other) => return Ok(other),
        }
    }
}

/// `GET path` with `Authorization: Bearer token` when given.
async fn get_bearer(t: &Target, path: &str, token: Option<&str>) -> Result<Response> {
    let bearer = token.map(|token| format!("Bearer {token}"));
    let headers: Vec<(&str, &str)> = bearer
        .as_deref()
        .map(|bearer| vec![("Authorization", bearer)])
        .unwrap_or_default();
    t.http("GET", path, &headers, b"").await
}

// ---------------------------------------------------------------------------------------
// Cases

/// A valid token's `name` replaces the one the client asks for; with auth off the token is
/// ignored and the asked name stands.
async fn auth_token_fixes_name_unless_off(t: Target) -> Result<()> {
    let room = unique_name("auth-name");
    let sub = unique_name("user");
    let token = token(&t, &sub, "Token Name", &room, "write")?;
    let expected = match t.auth.mode {
        AuthMode::Off => "asked-name",
        AuthMode::Optional | AuthMode::Required => "Token Name",
    };
    let mut client = join(&t, &room, Some(&token), "asked-name", expected).await?;
    client.chat("hello with a token").await?;
    client.close().await;
    Ok(())
}

/// Without a token: off and optional admit an anonymous client under its chosen name (and
/// anonymous reads); required refuses it with 401, and its reads too.
async fn auth_anonymous_by_mode(t: Target) -> Result<()> {
    let room = unique_name("auth-anon");
    let history = format!("/api/room/{room}/history");
    let presence = format!("/api/room/{room}/presence");
    if t.auth.mode == AuthMode::Required {
        expect_refused(&t, &room, None, &[], 401, TOKEN_REQUIRED, "no token").await?;
        for path in [&history, &presence] {
            get_bearer(&t, path, None).await?.expect(
                401,
                TOKEN_REQUIRED,
                &format!("{path} without a bearer token"),
            )?;
        }
        return Ok(());
    }
    let mut client = join(&t, &room, None, "anon-chooser", "anon-chooser").await?;
    client.chat("anonymous hello").await?;
    for path in [&history, &presence] {
        let status = get_bearer(&t, path, None).await?.status;
        ensure!(
            status == 200,
            "{path} without a token: expected 200, got {status}"
        );
    }
    client.close().await;
    Ok(())
}

/// A token that is present must be valid (never quietly anonymous): a wrong signature, a
/// malformed token and an expired one each get 401 and their own text. With auth off they
/// are all ignored.
async fn auth_bad_tokens_refused_unless_off(t: Target) -> Result<()> {
    let room = unique_name("auth-bad");
    let sub = unique_name("user");
    let forged = token_signed(WRONG_SECRET, &sub, "Forger", 600, json!({ &room: "write" }))?;
    let expired = token_signed(secret(&t)?, &sub, "Late", -3600, json!({ &room: "write" }))?;
    let bad = [
        (
            forged.as_str(),
            BAD_SIGNATURE,
            "a token with another secret's signature",
        ),
        ("not-a-jwt", MALFORMED, "a malformed token"),
        (expired.as_str(), EXPIRED, "a token expired an hour ago"),
    ];
    for (token, text, what) in bad {
        if t.auth.mode == AuthMode::Off {
            let client = join(&t, &room, Some(token), "ignored", "ignored").await?;
            client.close().await;
        } else {
            expect_refused(&t, &room, Some(token), &[], 401, text, what).await?;
        }
    }
    Ok(())
}

/// A good token that does not grant the room gets 403 (on the upgrade and on reads).
async fn auth_room_not_granted_403(t: Target) -> Result<()> {
    require_auth(&t)?;
    let room = unique_name("auth-403");
    let other = unique_name("auth-other");
    let token = token(&t, &unique_name("user"), "Elsewhere", &other, "write")?;
    expect_refused(
        &t,
        &room,
        Some(&token),
        &[],
        403,
        NOT_GRANTED,
        "a token for another room",
    )
    .await?;
    get_bearer(&t, &format!("/api/room/{room}/history"), Some(&token))
        .await?
        .expect(403, NOT_GRANTED, "history with a token for another room")
}

/// A `read` user joins and reads, but its messages are refused with core's error and reach
/// nobody; a `write` user's messages reach the reader.
async fn auth_read_only_cannot_send(t: Target) -> Result<()> {
    require_auth(&t)?;
    let room = unique_name("auth-read");
    let reader_token = token(&t, &unique_name("reader"), "Reader", &room, "read")?;
    let writer_token = token(&t, &unique_name("writer"), "Writer", &room, "write")?;
    let mut reader = join(&t, &room, Some(&reader_token), "reader", "Reader").await?;
    let mut writer = join(&t, &room, Some(&writer_token), "writer", "Writer").await?;
    let refusal = reader
        .error_reply(
            &Outgoing::Text(json!({ "message": "may I?" }).to_string()),
            |_| false,
        )
        .await?;
    ensure!(
        refusal == READ_ONLY,
        "a reader's message: expected {READ_ONLY:?}, got {refusal:?}"
    );
    writer.chat("writers write").await?;
    reader
        .wait_for_log("the writer's message", |log| {
            log.iter()
                .any(|f| f.is_chat() && f.str("message") == Some("writers write"))
        })
        .await?;
    writer
        .expect_no_chat(Duration::from_millis(500), "the reader's refused message")
        .await?;
    ensure!(
        !reader
            .chats()
            .iter()
            .any(|f| f.str("message") == Some("may I?")),
        "the reader's refused message was broadcast"
    );
    reader.close().await;
    writer.close().await;
    Ok(())
}

/// `{"token": fresh}` on an open connection is acknowledged, and keeps the connection open
/// past the old token's expiry; a token naming another user is refused and changes nothing.
async fn auth_refresh_keeps_connection(t: Target) -> Result<()> {
    require_auth(&t)?;
    let room = unique_name("auth-refresh");
    let sub = unique_name("user");
    let secret = secret(&t)?.to_owned();
    let grant = json!({ &room: "write" });
    // Accepted thanks to the leeway, it runs out within seconds.
    let short = token_signed(
        &secret,
        &sub,
        "Refresher",
        -NEARLY_EXPIRED_SECS,
        grant.clone(),
    )?;
    let mut client = join_nearly_expired(&t, &room, &short, "refresher", "Refresher").await?;
    // The refresh first: the short token runs out within seconds.
    let fresh = token_signed(&secret, &sub, "Refresher", 600, grant.clone())?;
    client.send_json(&json!({ "token": fresh })).await?;
    client
        .until("the refresh acknowledgement", |f| {
            f.json == json!({ "refreshed": true })
        })
        .await?;
    let stranger = token_signed(&secret, &unique_name("other"), "Other", 600, grant)?;
    let refused = client
        .error_reply(
            &Outgoing::Text(json!({ "token": stranger }).to_string()),
            |_| false,
        )
        .await?;
    ensure!(
        refused == SUBJECT_CHANGED,
        "another user's token: expected {SUBJECT_CHANGED:?}, got {refused:?}"
    );
    // Past the old token's expiry, the connection is open and sends.
    tokio::time::sleep(OUTLIVE_NEARLY_EXPIRED).await;
    client.chat("still here after the refresh").await?;
    client.close().await;
    Ok(())
}

/// A token that runs out without a refresh closes its connection with 4001 `Token expired.`,
/// and the other users see its `quit`.
async fn auth_expiry_closes_4001(t: Target) -> Result<()> {
    expiry_closes(t, false).await
}

/// As [`auth_expiry_closes_4001`], with the room hibernated while the token is still valid:
/// the expiry is kept with the sockets, not only in the evicted room's memory.
async fn auth_expiry_closes_4001_after_hibernation(t: Target) -> Result<()> {
    if t.hibernate.is_none() {
        bail!(Skip("needs a hibernate URL (--hibernate-url)".into()));
    }
    expiry_closes(t, true).await
}

async fn expiry_closes(t: Target, hibernate: bool) -> Result<()> {
    require_auth(&t)?;
    let room = unique_name("auth-expiry");
    let secret = secret(&t)?.to_owned();
    let grant = json!({ &room: "write" });
    let short = token_signed(
        &secret,
        &unique_name("user"),
        "Shortlived",
        -NEARLY_EXPIRED_SECS,
        grant.clone(),
    )?;
    let watcher_token = token_signed(&secret, &unique_name("user"), "Watcher", 600, grant)?;
    let mut watcher = join(&t, &room, Some(&watcher_token), "w", "Watcher").await?;
    let mut client = join_nearly_expired(&t, &room, &short, "shortlived", "Shortlived").await?;
    if hibernate {
        t.hibernate().await?;
    }
    match close_of(&mut client, EXPIRY_CLOSE_WITHIN).await? {
        Event::Close(Some((code, reason))) if code == CLOSE_TOKEN_EXPIRED && reason == EXPIRED => {}
        other => bail!("expected close {CLOSE_TOKEN_EXPIRED} {EXPIRED:?}, got {other}"),
    }
    watcher
        .wait_for_log("the expired user's quit", |log| {
            log.iter().any(|f| f.quit() == Some("Shortlived"))
        })
        .await?;
    watcher.close().await;
    Ok(())
}

/// History and presence take the token as `Authorization: Bearer`: a granted one reads (any
/// role), a bad one gets 401. With auth off the header is ignored.
async fn auth_bearer_on_history_and_presence(t: Target) -> Result<()> {
    let room = unique_name("auth-bearer");
    let reader = token(&t, &unique_name("user"), "Reader", &room, "read")?;
    for path in [
        format!("/api/room/{room}/history"),
        format!("/api/room/{room}/presence"),
    ] {
        let status = get_bearer(&t, &path, Some(&reader)).await?.status;
        ensure!(
            status == 200,
            "{path} with a granted bearer token: expected 200, got {status}"
        );
        let response = get_bearer(&t, &path, Some("not-a-jwt")).await?;
        if t.auth.mode == AuthMode::Off {
            ensure!(
                response.status == 200,
                "{path}: auth off ignores bearer tokens, got {}",
                response.status
            );
        } else {
            response.expect(
                401,
                MALFORMED,
                &format!("{path} with a malformed bearer token"),
            )?;
        }
    }
    Ok(())
}

/// The admin token reads a room's history and presence in every mode (the admin page shows
/// recent messages where tokens are required); a wrong admin token is judged as a bearer
/// token and refused unless auth is off.
async fn auth_admin_token_reads_in_every_mode(t: Target) -> Result<()> {
    let room = unique_name("auth-admin-reads");
    let admin = t.require_admin_token()?.to_owned();
    let wrong = format!("{admin}-wrong");
    for path in [
        format!("/api/room/{room}/history"),
        format!("/api/room/{room}/presence"),
    ] {
        let status = get_bearer(&t, &path, Some(&admin)).await?.status;
        ensure!(
            status == 200,
            "{path} with the admin token: expected 200, got {status}"
        );
        let response = get_bearer(&t, &path, Some(&wrong)).await?;
        if t.auth.mode == AuthMode::Off {
            ensure!(
                response.status == 200,
                "{path}: auth off ignores bearer tokens, got {}",
                response.status
            );
        } else {
            response.expect(401, MALFORMED, &format!("{path} with a wrong admin token"))?;
        }
    }
    Ok(())
}

/// With an allow-list, a browser upgrade from another origin gets 403; one from a listed
/// origin, and a client sending no `Origin`, are accepted. Without one, any origin is.
async fn auth_origin_allow_list(t: Target) -> Result<()> {
    let room = unique_name("auth-origin");
    // Anonymous clients where the mode allows them, else a granted token.
    let token = match t.auth.mode {
        AuthMode::Required => Some(token(&t, &unique_name("user"), "Browser", &room, "write")?),
        _ => None,
    };
    let token = token.as_deref();
    let foreign = [("Origin", "https://foreign.example")];
    match t.auth.allowed_origins.first() {
        None => {
            connect(&t, &room, token, &foreign, "any origin")
                .await?
                .close()
                .await;
        }
        Some(allowed) => {
            expect_refused(
                &t,
                &room,
                token,
                &foreign,
                403,
                ORIGIN_REFUSED,
                "a foreign origin",
            )
            .await?;
            connect(
                &t,
                &room,
                token,
                &[("Origin", allowed.as_str())],
                "a listed origin",
            )
            .await
            .map_err(|e| anyhow!("a listed origin {allowed}: {e:#}"))?
            .close()
            .await;
        }
    }
    connect(&t, &room, token, &[], "no origin")
        .await?
        .close()
        .await;
    Ok(())
}

/// In optional mode, a room marked token-only refuses a client without a token (401) and
/// admits one with a token that grants it.
async fn auth_token_only_room(t: Target) -> Result<()> {
    let Some(room) = t
        .auth
        .token_rooms
        .first()
        .filter(|_| t.auth.mode == AuthMode::Optional)
    else {
        bail!(Skip(
            "needs --auth-mode optional and a token-only room (--auth-token-rooms)".into()
        ));
    };
    expect_refused(
        &t,
        room,
        None,
        &[],
        401,
        TOKEN_REQUIRED,
        "a token-only room without a token",
    )
    .await?;
    let token = token(&t, &unique_name("user"), "Member", room, "write")?;
    join(&t, room, Some(&token), "member", "Member")
        .await?
        .close()
        .await;
    Ok(())
}

/// A known user's actions count against the user's limiter wherever they come from: its
/// connections from two IPs share one budget, while another user on the second IP is not
/// throttled with it.
async fn auth_user_limited_across_ips(t: Target) -> Result<()> {
    require_auth(&t)?;
    t.require_distinct_ips()?;
    let (room1, room2) = (unique_name("url1"), unique_name("url2"));
    let sub = unique_name("user");
    let rooms = json!({ &room1: "write", &room2: "write" });
    let ada = token_signed(secret(&t)?, &sub, "Ada", 600, rooms.clone())?;
    let (ip1, ip2) = (t.fresh_ip(), t.fresh_ip());
    let mut first = Client::connect(
        &format!("{}{}", t.ws_url(&room1)?, query(Some(&ada))),
        &ip_header(&t, ip1.as_deref()),
        "ada@ip1",
    )
    .await?;
    first.join_with(&json!({ "name": "x" }), "Ada").await?; // action 1
    first.chat("a1").await?; // 2
    first.chat("a2").await?; // 3
    let mut second = Client::connect(
        &format!("{}{}", t.ws_url(&room2)?, query(Some(&ada))),
        &ip_header(&t, ip2.as_deref()),
        "ada@ip2",
    )
    .await?;
    second.join_with(&json!({ "name": "x" }), "Ada").await?; // 4: within the burst
    second.chat("b1").await?; // 5: passes, and puts the user in a cooldown
    tokio::time::sleep(VERDICT_SETTLE).await;
    // With a limiter per IP, the second connection would have used only 2 actions.
    let error = second
        .error_reply(
            &Outgoing::Text(json!({ "message": "b2" }).to_string()),
            |e| e == ERROR_RATE_LIMITED,
        )
        .await?;
    ensure!(
        error == ERROR_RATE_LIMITED,
        "the user's 6th action from a second IP: expected the rate-limit error, got {error:?}"
    );
    // Another user on the second IP has a budget of its own.
    let bob = token_signed(secret(&t)?, &unique_name("user"), "Bob", 600, rooms)?;
    let mut neighbour = Client::connect(
        &format!("{}{}", t.ws_url(&room2)?, query(Some(&bob))),
        &ip_header(&t, ip2.as_deref()),
        "bob@ip2",
    )
    .await?;
    neighbour.join_with(&json!({ "name": "x" }), "Bob").await?;
    neighbour.chat("not throttled with Ada").await?;
    first.close().await;
    second.close().await;
    neighbour.close().await;
    Ok(())
}

/// The client-IP header claiming `ip`, if the target trusts one.
fn ip_header<'a>(t: &'a Target, ip: Option<&'a str>) -> Vec<(&'a str, &'a str)> {
    match (&t.client_ip_header, ip) {
        (Some(header), Some(ip)) => vec![(header.as_str(), ip)],
        _ => Vec::new(),
    }
}
