//! Every HTTP answer an adapter sends, as a plain value: status, headers and body.
//!
//! The adapters only copy an [`Answer`] onto their response type, so the server and the
//! Worker cannot drift apart on a status, a header or a byte of a body. Header names are
//! lowercase; the content type is one of the headers.

use std::borrow::Cow;

use serde::Serialize;

use super::{HistoryQuery, Refusal, EXPECTED_WEBSOCKET, NOT_FOUND};
use crate::auth::AuthError;
use crate::ids::ObjectId;
use crate::moderation::{ModError, RoomSummary, RoomView};
use crate::protocol::record_id_and_time;
use crate::room::PublishError;

/// The content type of plain-text answers.
pub const CONTENT_TYPE_TEXT: &str = "text/plain;charset=UTF-8";
/// The content type of JSON answers.
pub const CONTENT_TYPE_JSON: &str = "application/json";
/// The content type of the chat page.
pub const CONTENT_TYPE_HTML: &str = "text/html;charset=UTF-8";
/// The content type of JavaScript: the client module and the page's script.
pub const CONTENT_TYPE_JAVASCRIPT: &str = "text/javascript;charset=UTF-8";
/// The content type of the page's style sheet.
pub const CONTENT_TYPE_CSS: &str = "text/css;charset=UTF-8";
/// The content type of `/metrics` (Prometheus text exposition format 0.0.4).
pub const CONTENT_TYPE_METRICS: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One HTTP answer, ready to be written as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// Headers in the order to send them; names are lowercase.
    pub headers: Vec<(&'static str, Cow<'static, str>)>,
    /// The body (UTF-8 text for every answer edgechat gives).
    pub body: Cow<'static, str>,
}

impl Answer {
    /// The value of header `name` (lowercase), if the answer has it.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, value)| value.as_ref())
    }

    fn with_content_type(
        status: u16,
        content_type: &'static str,
        body: impl Into<Cow<'static, str>>,
    ) -> Answer {
        Answer {
            status,
            headers: vec![("content-type", Cow::Borrowed(content_type))],
            body: body.into(),
        }
    }

    fn text(status: u16, body: impl Into<Cow<'static, str>>) -> Answer {
        Answer::with_content_type(status, CONTENT_TYPE_TEXT, body)
    }

    fn json(body: String) -> Answer {
        Answer::with_content_type(200, CONTENT_TYPE_JSON, body)
    }

    fn with_header(mut self, name: &'static str, value: &'static str) -> Answer {
        self.headers.push((name, Cow::Borrowed(value)));
        self
    }
}

/// A JSON body of plain values; serializing one to a `String` cannot fail.
fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("answer bodies always serialize")
}

/// A refused request: its status and plain-text body.
pub fn refused(refusal: Refusal) -> Answer {
    Answer::text(refusal.status, refusal.body)
}

/// 404 `Not found`, for a route an adapter does not serve.
pub fn not_found() -> Answer {
    refused(NOT_FOUND)
}

/// 400 `expected websocket`: the request asked to upgrade but the handshake is incomplete.
pub fn expected_websocket() -> Answer {
    refused(EXPECTED_WEBSOCKET)
}

/// Where the next page of a history read starts: a full page may have older records behind
/// it, so the id of its last (oldest) record, chat message or change record alike (a page
/// that ends in a deletion still pages on); `None` after a short page.
pub fn history_next_before<S: AsRef<str>>(frames: &[S], query: HistoryQuery) -> Option<u64> {
    if frames.len() != query.limit {
        return None;
    }
    frames
        .last()
        .and_then(|frame| record_id_and_time(frame.as_ref()))
        .map(|(id, _)| id)
}

/// A history page: `{"messages":[..],"next_before":id|null}`, newest first.
///
/// `frames` are stored records as broadcast (JSON objects), spliced in unchanged; the client
/// pages on with `before=<next_before>` ([`history_next_before`]) until it is `null`.
pub fn history<S: AsRef<str>>(frames: &[S], query: HistoryQuery) -> Answer {
    let next_before = history_next_before(frames, query);
    let frames_len: usize = frames.iter().map(|frame| frame.as_ref().len() + 1).sum();
    let mut body = String::with_capacity(48 + frames_len);
    body.push_str("{\"messages\":[");
    for (index, frame) in frames.iter().enumerate() {
        if index > 0 {
            body.push(',');
        }
        body.push_str(frame.as_ref());
    }
    body.push_str("],\"next_before\":");
    match next_before {
        Some(id) => body.push_str(&id.to_string()),
        None => body.push_str("null"),
    }
    body.push('}');
    Answer::json(body)
}

/// The users in a room: `{"users":[..]}`, in roster order.
pub fn presence<S: AsRef<str>>(users: &[S]) -> Answer {
    #[derive(Serialize)]
    struct Presence<'a> {
        users: Vec<&'a str>,
    }
    Answer::json(to_json(&Presence {
        users: users.iter().map(AsRef::as_ref).collect(),
    }))
}

/// A publish that is durable and broadcast: `{"id":n}`.
pub fn published(id: u64) -> Answer {
    Answer::json(format!("{{\"id\":{id}}}"))
}

/// A publish the room refused: 503 while it is busy or its storage fails (worth retrying),
/// else 400; the body is the error's text.
pub fn publish_failed(error: &PublishError) -> Answer {
    let status = match error {
        PublishError::Busy | PublishError::StorageUnavailable => 503,
        _ => 400,
    };
    Answer::text(status, error.to_string())
}

/// A moderation action that is done: `{"ok":true}`.
pub fn moderated() -> Answer {
    Answer::json("{\"ok\":true}".to_owned())
}

/// A moderation action the room refused (or that did not parse): the error's status and text.
pub fn moderation_refused(error: &ModError) -> Answer {
    Answer::text(error.status(), error.to_string())
}

/// One room for the admin API.
pub fn room_view(view: &RoomView) -> Answer {
    Answer::json(to_json(view))
}

/// The live rooms for the admin API: `{"rooms":[..]}`.
pub fn room_summaries(rooms: &[RoomSummary]) -> Answer {
    #[derive(Serialize)]
    struct Rooms<'a> {
        rooms: &'a [RoomSummary],
    }
    Answer::json(to_json(&Rooms { rooms }))
}

/// 501: this adapter cannot list its rooms (a Worker cannot enumerate its Durable Objects).
pub fn rooms_not_listed() -> Answer {
    Answer::text(
        501,
        "This deployment cannot list its rooms; open one by name.",
    )
}

/// A publish body that did not parse (see [`PublishBody::parse`](super::PublishBody::parse)):
/// 400 with the parser's text.
pub fn publish_rejected(why: &'static str) -> Answer {
    Answer::text(400, why)
}

/// A minted private room: its hex id as text, readable by pages of any origin (the demo's
/// page may be served from elsewhere).
pub fn room_created(id: &ObjectId) -> Answer {
    Answer::text(200, id.to_hex()).with_header("access-control-allow-origin", "*")
}

/// A counter's value: `{"counter":v}`.
pub fn counter(value: i64) -> Answer {
    Answer::json(format!("{{\"counter\":{value}}}"))
}

/// 401 `Unauthorized`, with the scheme the admin routes take.
pub fn unauthorized() -> Answer {
    Answer::text(401, "Unauthorized").with_header("www-authenticate", "Bearer")
}

/// A request refused for its token (see [`AuthConfig::admit`](crate::auth::AuthConfig::admit)).
///
/// 401 with `WWW-Authenticate: Bearer` for a missing or invalid token (with
/// `error="invalid_token"` when one was presented, RFC 6750 §3.1), 403 with
/// `error="insufficient_scope"` for a good token that does not grant what was asked. The
/// body is the error's text, which never contains the token.
pub fn auth_refused(error: AuthError) -> Answer {
    let challenge = match error {
        AuthError::Missing => "Bearer",
        _ if error.status() == 403 => "Bearer error=\"insufficient_scope\"",
        _ => "Bearer error=\"invalid_token\"",
    };
    Answer::text(error.status(), error.to_string()).with_header("www-authenticate", challenge)
}

/// 403: a browser upgrade from an origin not on the allow-list
/// (see [`origin_allowed`](crate::auth::origin_allowed)).
pub fn origin_refused() -> Answer {
    Answer::text(403, "Origin not allowed.")
}

/// The Content-Security-Policy of the chat page, which carries no inline script or style:
/// scripts, styles and connections from its own origin only (`connect-src 'self'` covers
/// `ws:`/`wss:` to the same host in current browsers), and no framing.
pub const PAGE_CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
form-action 'self'; frame-ancestors 'none'";

/// 503: the object that should answer could not (it is restarting or overloaded).
pub fn unavailable() -> Answer {
    Answer::text(503, "Unavailable, please try again later.")
}

/// 200 `ok`, for health checks.
pub fn health() -> Answer {
    Answer::text(200, "ok")
}

/// 503 for health checks while the adapter's storage fails: `Storage failing: <reason>`,
/// where `reason` is the adapter's description of the failure (the file and the storage
/// engine's error). Load balancers take the instance out; it answers [`health`] again once
/// a write succeeds.
pub fn health_failing(reason: &str) -> Answer {
    Answer::text(503, format!("Storage failing: {reason}"))
}

/// The result of `POST /admin/hibernate`: rooms asked, and how many of them hibernated.
///
/// The keys come in alphabetical order, the order the server has always sent them in.
pub fn hibernated(rooms: usize, hibernated: usize) -> Answer {
    Answer::json(format!("{{\"hibernated\":{hibernated},\"rooms\":{rooms}}}"))
}

/// Metrics in the Prometheus text format.
pub fn metrics(text: String) -> Answer {
    Answer::with_content_type(200, CONTENT_TYPE_METRICS, text)
}

/// The chat page.
pub fn page(html: &'static str) -> Answer {
    Answer::with_content_type(200, CONTENT_TYPE_HTML, html)
}

/// The chat page with its security headers: [`PAGE_CONTENT_SECURITY_POLICY`], `nosniff`, no
/// referrer beyond the origin, and no framing.
///
/// Only for a page without inline script or style: the CSP forbids both. The chat page loads
/// its script ([`page_script`]), the client module ([`client_module`]) and its style sheet
/// ([`page_style`]) from its own origin.
pub fn page_with_security_headers(html: &'static str) -> Answer {
    page(html)
        .with_header("content-security-policy", PAGE_CONTENT_SECURITY_POLICY)
        .with_header("x-content-type-options", "nosniff")
        .with_header("referrer-policy", "strict-origin-when-cross-origin")
        .with_header("x-frame-options", "DENY")
}

/// The JavaScript client module (`clients/js/edgechat.js`), an ES module.
pub fn client_module(js: &'static str) -> Answer {
    Answer::with_content_type(200, CONTENT_TYPE_JAVASCRIPT, js)
}

/// The chat page's script (`transports/web/page.js`), an ES module.
pub fn page_script(js: &'static str) -> Answer {
    Answer::with_content_type(200, CONTENT_TYPE_JAVASCRIPT, js)
}

/// The chat page's style sheet (`transports/web/page.css`).
pub fn page_style(css: &'static str) -> Answer {
    Answer::with_content_type(200, CONTENT_TYPE_CSS, css)
}

/// 400: the request body could not be read off the connection.
pub fn body_unreadable() -> Answer {
    Answer::text(400, "Could not read the body.")
}

/// 503: the server is shutting down and accepts no new connection.
pub fn shutting_down() -> Answer {
    Answer::text(503, "Server shutting down")
}

/// 503: the server holds as many connections as it is configured to.
pub fn too_many_connections() -> Answer {
    Answer::text(503, "Too many connections")
}

/// 400: the client's address is unknown, so no rate limiter can count its actions. An
/// adapter that has no peer address to fall back to (a Worker without `CF-Connecting-IP`)
/// refuses rather than let every such client share one limiter, or none.
pub fn client_unknown() -> Answer {
    Answer::text(400, "Client address unknown.")
}

/// 500: a setting the server cannot run without is missing (named in the body; never its
/// value).
pub fn misconfigured(setting: &'static str) -> Answer {
    Answer::text(500, format!("Server misconfigured: {setting} is not set."))
}

/// 500: a setting is present but unusable (an invalid key, a mode without a key): the body
/// names the setting and gives core's reason (a [`KeyError`](crate::auth::KeyError) or
/// [`ConfigError`](crate::auth::ConfigError)), never the setting's value.
pub fn misconfigured_setting(setting: &str, reason: &dyn std::fmt::Display) -> Answer {
    Answer::text(500, format!("Server misconfigured: {setting}: {reason}."))
}

/// 500: the runtime offers no secure randomness, so no private room id can be minted
/// (there is deliberately no weaker fallback).
pub fn no_secure_randomness() -> Answer {
    Answer::text(500, "No secure randomness: cannot mint a private room id.")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{IdSecret, Namespace};
    use crate::protocol::ChatMessage;

    const TEXT: (&str, &str) = ("content-type", CONTENT_TYPE_TEXT);
    const JSON: (&str, &str) = ("content-type", CONTENT_TYPE_JSON);

    /// An answer as comparable plain data: status, headers, body.
    type Bytes<'a> = (u16, Vec<(&'a str, &'a str)>, &'a str);

    fn bytes(answer: &Answer) -> Bytes<'_> {
        let headers = answer
            .headers
            .iter()
            .map(|(name, value)| (*name, value.as_ref()))
            .collect();
        (answer.status, headers, answer.body.as_ref())
    }

    fn frame(id: u64) -> String {
        ChatMessage {
            name: "n".into(),
            message: format!("m{id}"),
            timestamp: crate::Timestamp(1_700_000_000_000 + id),
            id,
        }
        .encode()
        .to_string()
    }

    #[test]
    fn every_answer_is_exact() {
        let secret = IdSecret::new(b"answer test secret".to_vec());
        let minted = ObjectId::mint_private(Namespace::Room, [7; 16], &secret);
        let minted_hex = minted.to_hex();
        let cases: Vec<(&str, Answer, Bytes)> = vec![
            (
                "refused",
                refused(Refusal {
                    status: 405,
                    body: "Method not allowed",
                }),
                (405, vec![TEXT], "Method not allowed"),
            ),
            ("not_found", not_found(), (404, vec![TEXT], "Not found")),
            (
                "expected_websocket",
                expected_websocket(),
                (400, vec![TEXT], "expected websocket"),
            ),
            (
                "presence empty",
                presence::<&str>(&[]),
                (200, vec![JSON], r#"{"users":[]}"#),
            ),
            (
                "presence",
                presence(&["ada", "b\"o"]),
                (200, vec![JSON], r#"{"users":["ada","b\"o"]}"#),
            ),
            (
                "published",
                published(42),
                (200, vec![JSON], r#"{"id":42}"#),
            ),
            (
                "publish_failed busy",
                publish_failed(&PublishError::Busy),
                (503, vec![TEXT], "Room is busy, please try again later."),
            ),
            (
                "publish_failed storage",
                publish_failed(&PublishError::StorageUnavailable),
                (503, vec![TEXT], "Message not sent: storage unavailable."),
            ),
            (
                "health_failing",
                health_failing("disk full"),
                (503, vec![TEXT], "Storage failing: disk full"),
            ),
            (
                "publish_failed name",
                publish_failed(&PublishError::BadName),
                (400, vec![TEXT], "Name must be 1 to 32 characters."),
            ),
            (
                "publish_failed message",
                publish_failed(&PublishError::MessageTooLong),
                (400, vec![TEXT], "Message too long."),
            ),
            (
                "publish_rejected",
                publish_rejected("Body too large."),
                (400, vec![TEXT], "Body too large."),
            ),
            (
                "room_created",
                room_created(&minted),
                (
                    200,
                    vec![TEXT, ("access-control-allow-origin", "*")],
                    &minted_hex,
                ),
            ),
            (
                "counter",
                counter(-3),
                (200, vec![JSON], r#"{"counter":-3}"#),
            ),
            (
                "counter max",
                counter(i64::MAX),
                (200, vec![JSON], r#"{"counter":9223372036854775807}"#),
            ),
            (
                "unauthorized",
                unauthorized(),
                (
                    401,
                    vec![TEXT, ("www-authenticate", "Bearer")],
                    "Unauthorized",
                ),
            ),
            (
                "unavailable",
                unavailable(),
                (503, vec![TEXT], "Unavailable, please try again later."),
            ),
            ("health", health(), (200, vec![TEXT], "ok")),
            (
                "hibernated",
                hibernated(3, 2),
                (200, vec![JSON], r#"{"hibernated":2,"rooms":3}"#),
            ),
            (
                "metrics",
                metrics("a_total 1\n".into()),
                (
                    200,
                    vec![("content-type", "text/plain; version=0.0.4; charset=utf-8")],
                    "a_total 1\n",
                ),
            ),
            (
                "page",
                page("<!doctype html>"),
                (
                    200,
                    vec![("content-type", "text/html;charset=UTF-8")],
                    "<!doctype html>",
                ),
            ),
            (
                "auth_refused missing",
                auth_refused(AuthError::Missing),
                (
                    401,
                    vec![TEXT, ("www-authenticate", "Bearer")],
                    "A token is required.",
                ),
            ),
            (
                "auth_refused expired",
                auth_refused(AuthError::Expired),
                (
                    401,
                    vec![TEXT, ("www-authenticate", "Bearer error=\"invalid_token\"")],
                    "Token expired.",
                ),
            ),
            (
                "auth_refused not granted",
                auth_refused(AuthError::RoomNotGranted),
                (
                    403,
                    vec![
                        TEXT,
                        ("www-authenticate", "Bearer error=\"insufficient_scope\""),
                    ],
                    "Token does not grant this room.",
                ),
            ),
            (
                "origin_refused",
                origin_refused(),
                (403, vec![TEXT], "Origin not allowed."),
            ),
            (
                "page_with_security_headers",
                page_with_security_headers("<!doctype html>"),
                (
                    200,
                    vec![
                        ("content-type", "text/html;charset=UTF-8"),
                        ("content-security-policy", PAGE_CONTENT_SECURITY_POLICY),
                        ("x-content-type-options", "nosniff"),
                        ("referrer-policy", "strict-origin-when-cross-origin"),
                        ("x-frame-options", "DENY"),
                    ],
                    "<!doctype html>",
                ),
            ),
            (
                "client_module",
                client_module("export {};"),
                (
                    200,
                    vec![("content-type", "text/javascript;charset=UTF-8")],
                    "export {};",
                ),
            ),
            (
                "page_script",
                page_script("import \"/edgechat.js\";"),
                (
                    200,
                    vec![("content-type", "text/javascript;charset=UTF-8")],
                    "import \"/edgechat.js\";",
                ),
            ),
            (
                "page_style",
                page_style("body { margin: 0 }"),
                (
                    200,
                    vec![("content-type", "text/css;charset=UTF-8")],
                    "body { margin: 0 }",
                ),
            ),
            (
                "body_unreadable",
                body_unreadable(),
                (400, vec![TEXT], "Could not read the body."),
            ),
            (
                "shutting_down",
                shutting_down(),
                (503, vec![TEXT], "Server shutting down"),
            ),
            (
                "too_many_connections",
                too_many_connections(),
                (503, vec![TEXT], "Too many connections"),
            ),
        ];
        for (what, answer, expected) in &cases {
            assert_eq!(&bytes(answer), expected, "{what}");
        }
    }

    #[test]
    fn history_pages_carry_next_before() {
        const DELETION_2: &str = r#"{"deleted":2,"id":2,"at":1700000000000}"#;
        let query = |limit| HistoryQuery {
            before: None,
            limit,
        };
        let (f3, f2, f1) = (frame(3), frame(2), frame(1));
        let cases: Vec<(&str, Vec<&str>, usize, String)> = vec![
            (
                "empty",
                vec![],
                50,
                r#"{"messages":[],"next_before":null}"#.into(),
            ),
            (
                "short page: nothing older",
                vec![&f3, &f2],
                3,
                format!(r#"{{"messages":[{f3},{f2}],"next_before":null}}"#),
            ),
            (
                "full page: page on before its oldest",
                vec![&f3, &f2],
                2,
                format!(r#"{{"messages":[{f3},{f2}],"next_before":2}}"#),
            ),
            (
                "full page of one",
                vec![&f1],
                1,
                format!(r#"{{"messages":[{f1}],"next_before":1}}"#),
            ),
            (
                "a full page ending in a change record pages on before it",
                vec![&f3, DELETION_2],
                2,
                format!(r#"{{"messages":[{f3},{DELETION_2}],"next_before":2}}"#),
            ),
            (
                "a frame that is not a stored record ends paging",
                vec!["{}"],
                1,
                r#"{"messages":[{}],"next_before":null}"#.into(),
            ),
        ];
        for (what, frames, limit, body) in cases {
            let answer = history(&frames, query(limit));
            assert_eq!(bytes(&answer), (200, vec![JSON], body.as_str()), "{what}");
            assert!(
                serde_json::from_str::<serde_json::Value>(&answer.body).is_ok(),
                "{what}: the body is JSON"
            );
        }
    }

    #[test]
    fn refusals_without_a_client_or_a_setting_are_exact() {
        let cases: Vec<(Answer, Bytes)> = vec![
            (
                client_unknown(),
                (400, vec![TEXT], "Client address unknown."),
            ),
            (
                misconfigured("ID_SECRET"),
                (
                    500,
                    vec![TEXT],
                    "Server misconfigured: ID_SECRET is not set.",
                ),
            ),
            (
                no_secure_randomness(),
                (
                    500,
                    vec![TEXT],
                    "No secure randomness: cannot mint a private room id.",
                ),
            ),
        ];
        for (answer, expected) in &cases {
            assert_eq!(&bytes(answer), expected);
        }
    }

    #[test]
    fn the_page_policy_forbids_inline_script_and_framing() {
        let csp = PAGE_CONTENT_SECURITY_POLICY;
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
        assert!(csp.contains("script-src 'self'"));
        assert!(csp.contains("frame-ancestors 'none'"));
        assert!(
            !csp.contains("  "),
            "no doubled spaces from line continuations"
        );
    }

    #[test]
    fn header_lookup() {
        let answer = unauthorized();
        assert_eq!(answer.header("www-authenticate"), Some("Bearer"));
        assert_eq!(answer.header("content-type"), Some(CONTENT_TYPE_TEXT));
        assert_eq!(answer.header("access-control-allow-origin"), None);
    }
}
