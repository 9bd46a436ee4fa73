//! Every HTTP answer the server gives, each built by one small function as a plain value.
//!
//! Stand-in for the core's `edgechat_core::http::answer` (same names and shapes), so that
//! switching to it is an import change; [`crate::http`] turns an [`Answer`] into a response.

use std::borrow::Cow;

use edgechat_core::http::{HistoryQuery, Refusal};
use edgechat_core::ids::ObjectId;
use edgechat_core::protocol::{ChatMessage, Frame};
use edgechat_core::room::PublishError;

const TEXT: &str = "text/plain;charset=UTF-8";
const JSON: &str = "application/json";
const HTML: &str = "text/html;charset=UTF-8";
const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A status, headers and a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    pub status: u16,
    pub headers: Vec<(&'static str, Cow<'static, str>)>,
    pub body: Cow<'static, str>,
}

fn with_type(
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
    with_type(status, TEXT, body)
}

fn json(body: String) -> Answer {
    with_type(200, JSON, body)
}

/// A request the core's router refused.
pub(crate) fn refused(refusal: Refusal) -> Answer {
    text(refusal.status, refusal.body)
}

/// A publish body that did not parse (the core's reason).
pub(crate) fn bad_publish_body(why: &'static str) -> Answer {
    text(400, why)
}

/// The chat page.
pub(crate) fn page(html: &'static str) -> Answer {
    with_type(200, HTML, html)
}

/// A freshly minted private room id (callable from any origin, as in the demo).
pub(crate) fn room_created(id: &ObjectId) -> Answer {
    let mut answer = text(200, id.to_hex());
    answer
        .headers
        .push(("access-control-allow-origin", Cow::Borrowed("*")));
    answer
}

/// A page of history, newest first; `next_before` is set when the page is full (older
/// messages may follow).
pub(crate) fn history(frames: &[Frame], query: HistoryQuery) -> Answer {
    let next_before = if frames.len() == query.limit {
        frames
            .last()
            .and_then(|frame| ChatMessage::decode(frame).ok())
            .map(|message| message.id)
    } else {
        None
    };
    // The frames are JSON objects already: splice them in as they were broadcast.
    let mut body = String::with_capacity(64 + frames.iter().map(|f| f.len() + 1).sum::<usize>());
    body.push_str("{\"messages\":[");
    for (index, frame) in frames.iter().enumerate() {
        if index > 0 {
            body.push(',');
        }
        body.push_str(frame);
    }
    body.push_str("],\"next_before\":");
    match next_before {
        Some(id) => body.push_str(&id.to_string()),
        None => body.push_str("null"),
    }
    body.push('}');
    json(body)
}

/// The joined users' names.
pub(crate) fn presence<S: AsRef<str>>(users: &[S]) -> Answer {
    let users: Vec<&str> = users.iter().map(AsRef::as_ref).collect();
    json(serde_json::json!({ "users": users }).to_string())
}

/// A published message's id.
pub(crate) fn published(id: u64) -> Answer {
    json(serde_json::json!({ "id": id }).to_string())
}

/// A publish the room refused.
pub(crate) fn publish_failed(error: &PublishError) -> Answer {
    let status = match error {
        PublishError::Busy => 503,
        _ => 400,
    };
    text(status, error.to_string())
}

/// A counter's value.
pub(crate) fn counter(value: i64) -> Answer {
    json(serde_json::json!({ "counter": value }).to_string())
}

/// How many rooms were asked to hibernate, and how many did.
pub(crate) fn hibernated(rooms: usize, hibernated: usize) -> Answer {
    json(serde_json::json!({ "rooms": rooms, "hibernated": hibernated }).to_string())
}

/// The metrics in Prometheus' text format.
pub(crate) fn metrics(rendered: String) -> Answer {
    with_type(200, PROMETHEUS, rendered)
}

/// The health check.
pub(crate) fn health() -> Answer {
    text(200, "ok")
}

/// An admin request without the admin token.
pub(crate) fn unauthorized() -> Answer {
    let mut answer = text(401, "Unauthorized");
    answer
        .headers
        .push(("www-authenticate", Cow::Borrowed("Bearer")));
    answer
}

/// An admin route asked with the wrong method.
pub(crate) fn method_not_allowed() -> Answer {
    text(405, "Method not allowed")
}

/// An object could not answer (storage failing, shutting down, no randomness).
pub(crate) fn unavailable() -> Answer {
    text(503, "Unavailable, please try again later.")
}

/// A request body that could not be read.
pub(crate) fn body_unreadable() -> Answer {
    text(400, "Could not read the body.")
}

/// A WebSocket route with `Upgrade: websocket` but the rest of the handshake missing.
pub(crate) fn expected_websocket() -> Answer {
    text(400, "expected websocket")
}

/// A WebSocket upgrade during shutdown.
pub(crate) fn shutting_down() -> Answer {
    text(503, "Server shutting down")
}

/// A WebSocket upgrade beyond the connection limit.
pub(crate) fn too_many_connections() -> Answer {
    text(503, "Too many connections")
}
