//! HTTP routing shared by every adapter: which request is which, who the client is, and
//! (in [`answer`]) the exact answer to every request (see the route table in `PROTOCOL.md`).

pub mod answer;

use std::net::{IpAddr, Ipv4Addr};

use serde::Deserialize;

use crate::ids::{self, IdError, IdSecret, Namespace, ObjectId};
use crate::protocol::{self, MessageText, UserName};

/// Longest room name (in the path), counted as JavaScript counts `string.length`.
pub const ROOM_NAME_LEN_MAX: usize = 32;
/// Default page size of the history endpoint.
pub const HISTORY_PAGE_LEN_DEFAULT: usize = 50;
/// Largest page size of the history endpoint.
pub const HISTORY_PAGE_LEN_MAX: usize = 100;
/// Largest publish body the adapters read, in bytes.
pub const PUBLISH_BODY_LEN_MAX_BYTES: usize = 4 * 1024;
/// The sender name of a publish that names none.
pub const PUBLISH_NAME_DEFAULT: &str = "system";

/// The request methods the routes distinguish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET (and HEAD).
    Get,
    /// POST.
    Post,
    /// Anything else.
    Other,
}

impl Method {
    /// Classifies a method name.
    pub fn parse(name: &str) -> Method {
        match name {
            "GET" | "HEAD" => Method::Get,
            "POST" => Method::Post,
            _ => Method::Other,
        }
    }
}

/// A room, as addressed in a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomAddress {
    /// The room's object id.
    pub id: ObjectId,
    /// The room's name, when it was addressed by name (not by a private id): adapters show
    /// it to operators, since an id does not give its name back.
    pub name: Option<String>,
}

/// Largest moderation request body the adapters read, in bytes.
pub const MODERATE_BODY_LEN_MAX_BYTES: usize = protocol::CLIENT_FRAME_LEN_MAX_BYTES;

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Route {
    /// `GET /`: the chat page.
    Page,
    /// `GET /edgechat.js`: the JavaScript client module (`clients/js/edgechat.js`), which the
    /// page imports and other pages of the origin may too.
    ClientModule,
    /// `GET /page.js`: the chat page's script (`transports/web/page.js`).
    PageScript,
    /// `GET /page.css`: the chat page's style sheet (`transports/web/page.css`).
    PageStyle,
    /// `GET /admin`: the admin page (`transports/web/admin.html`). Static and public: a
    /// browser sends no Bearer header on navigation, so the page asks for the admin token and
    /// every API call it makes carries it.
    AdminPage,
    /// `GET /admin.js`: the admin page's script (`transports/web/admin.js`).
    AdminScript,
    /// `GET /admin.css`: the admin page's style sheet (`transports/web/admin.css`).
    AdminStyle,
    /// `POST /api/room`: mint a private room id.
    CreateRoom,
    /// `/api/room/<room>/websocket` with an upgrade: join the room.
    RoomWebSocket(RoomAddress),
    /// `GET /api/room/<room>/history`.
    RoomHistory(RoomAddress, HistoryQuery),
    /// `GET /api/room/<room>/presence`.
    RoomPresence(RoomAddress),
    /// `POST /api/room/<room>/messages`.
    RoomPublish(RoomAddress),
    /// `POST /api/room/<room>/moderate` (admin token): one moderation action
    /// ([`crate::moderation`]).
    RoomModerate(RoomAddress),
    /// `GET /api/room/<room>/admin` (admin token): members, bans, mutes, settings.
    RoomAdmin(RoomAddress),
    /// `GET /api/admin/rooms` (admin token): the rooms in memory or with open sockets.
    AdminRooms,
    /// `/api/counter/<name>[/increment|/decrement]`.
    Counter(ObjectId, crate::counter::CounterOp),
    /// `GET /metrics`.
    Metrics,
    /// `GET /healthz`.
    Health,
    /// `POST /admin/hibernate` (admin token): every room hibernates now, an operations hook
    /// that lets tests force hibernation deterministically.
    AdminHibernate,
}

/// A refused request: the status and the exact plain-text body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status.
    pub status: u16,
    /// Plain-text body.
    pub body: &'static str,
}

/// The client IP of requests whose client is unknown (no trusted header, no peer address):
/// they all share one rate limiter.
pub const UNKNOWN_CLIENT_IP: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

/// The client's IP from a trusted proxy header, else the TCP peer.
///
/// `header_value` is the value of the header the adapter trusts (`X-Forwarded-For` style:
/// `client, proxy1, proxy2`, whose first entry is the client; `CF-Connecting-IP` is the
/// one-entry case). A missing or unparsable first entry falls back to `peer`. `None` means
/// the client is unknown: an adapter without a peer address (a Worker) refuses the request
/// with [`answer::client_unknown`], because no limiter could count its actions fairly.
pub fn client_ip(header_value: Option<&str>, peer: Option<IpAddr>) -> Option<IpAddr> {
    header_value
        .and_then(|value| value.split(',').next())
        .and_then(|first| first.trim().parse().ok())
        .or(peer)
}

const NOT_FOUND: Refusal = Refusal {
    status: 404,
    body: "Not found",
};
const METHOD_NOT_ALLOWED: Refusal = Refusal {
    status: 405,
    body: "Method not allowed",
};
const EXPECTED_WEBSOCKET: Refusal = Refusal {
    status: 400,
    body: "expected websocket",
};
const NAME_TOO_LONG: Refusal = Refusal {
    status: 404,
    body: "Name too long",
};
const INVALID_ROOM_ID: Refusal = Refusal {
    status: 404,
    body: "Invalid room id",
};
const INVALID_QUERY: Refusal = Refusal {
    status: 400,
    body: "Invalid query: use before=<id>&limit=<1-100>",
};

/// The parameters of a history page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Only messages with ids below this.
    pub before: Option<u64>,
    /// At most this many (1 to [`HISTORY_PAGE_LEN_MAX`]).
    pub limit: usize,
}

impl HistoryQuery {
    /// Parses `before=<id>&limit=<n>` (both optional; unknown keys are ignored).
    ///
    /// # Errors
    /// A 400 [`Refusal`] for values that are not numbers or out of range.
    pub fn parse(query: Option<&str>) -> Result<HistoryQuery, Refusal> {
        let mut parsed = HistoryQuery {
            before: None,
            limit: HISTORY_PAGE_LEN_DEFAULT,
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "before" => parsed.before = Some(value.parse().map_err(|_| INVALID_QUERY)?),
                "limit" => {
                    let limit: usize = value.parse().map_err(|_| INVALID_QUERY)?;
                    if !(1..=HISTORY_PAGE_LEN_MAX).contains(&limit) {
                        return Err(INVALID_QUERY);
                    }
                    parsed.limit = limit;
                }
                _ => {}
            }
        }
        Ok(parsed)
    }
}

/// Routes a request.
///
/// `path` is the raw path without the query; `is_upgrade` says whether the request carries
/// `Upgrade: websocket`; `secret` verifies private room ids.
///
/// # Errors
/// The [`Refusal`] to answer with.
pub fn route(
    method: Method,
    path: &str,
    query: Option<&str>,
    is_upgrade: bool,
    secret: &IdSecret,
) -> Result<Route, Refusal> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(NOT_FOUND);
    };
    let segments: Vec<&str> = rest.split('/').collect();
    match segments.as_slice() {
        [""] => match method {
            Method::Get => Ok(Route::Page),
            _ => Err(METHOD_NOT_ALLOWED),
        },
        // The page's own files: separate, so that its policy can forbid inline script and style.
        ["edgechat.js"] => get_only(method, Route::ClientModule),
        ["page.js"] => get_only(method, Route::PageScript),
        ["page.css"] => get_only(method, Route::PageStyle),
        ["admin"] => get_only(method, Route::AdminPage),
        ["admin.js"] => get_only(method, Route::AdminScript),
        ["admin.css"] => get_only(method, Route::AdminStyle),
        ["metrics"] => Ok(Route::Metrics),
        ["admin", "hibernate"] => match method {
            Method::Post => Ok(Route::AdminHibernate),
            _ => Err(METHOD_NOT_ALLOWED),
        },
        ["healthz"] => Ok(Route::Health),
        // `/api/room` and `/api/room/`: the demo treats an empty room segment as none.
        ["api", "room"] | ["api", "room", ""] => match method {
            Method::Post => Ok(Route::CreateRoom),
            _ => Err(METHOD_NOT_ALLOWED),
        },
        ["api", "room", room, rest @ ..] => {
            let room = RoomAddress {
                id: room_id(room, secret)?,
                name: (!ids::is_lower_hex_id(room)).then(|| (*room).to_owned()),
            };
            match (rest, method) {
                (["websocket"], _) if is_upgrade => Ok(Route::RoomWebSocket(room)),
                (["websocket"], _) => Err(EXPECTED_WEBSOCKET),
                (["history"], Method::Get) => {
                    Ok(Route::RoomHistory(room, HistoryQuery::parse(query)?))
                }
                (["presence"], Method::Get) => Ok(Route::RoomPresence(room)),
                (["messages"], Method::Post) => Ok(Route::RoomPublish(room)),
                (["moderate"], Method::Post) => Ok(Route::RoomModerate(room)),
                (["admin"], Method::Get) => Ok(Route::RoomAdmin(room)),
                (["history" | "presence" | "messages" | "moderate" | "admin"], _) => {
                    Err(METHOD_NOT_ALLOWED)
                }
                _ => Err(NOT_FOUND),
            }
        }
        ["api", "admin", "rooms"] => get_only(method, Route::AdminRooms),
        ["api", "counter", name, rest @ ..] if !name.is_empty() => {
            check_name_len(name)?;
            let id = ObjectId::from_name(Namespace::Counter, name);
            use crate::counter::CounterOp;
            match (rest, method) {
                ([], Method::Get) => Ok(Route::Counter(id, CounterOp::Get)),
                (["increment"], Method::Post) => Ok(Route::Counter(id, CounterOp::Increment)),
                (["decrement"], Method::Post) => Ok(Route::Counter(id, CounterOp::Decrement)),
                ([] | ["increment"] | ["decrement"], _) => Err(METHOD_NOT_ALLOWED),
                _ => Err(NOT_FOUND),
            }
        }
        _ => Err(NOT_FOUND),
    }
}

/// `route` for a GET, 405 for any other method.
fn get_only(method: Method, route: Route) -> Result<Route, Refusal> {
    match method {
        Method::Get => Ok(route),
        _ => Err(METHOD_NOT_ALLOWED),
    }
}

/// Resolves a room path segment: a private id this server minted, or a name.
///
/// # Errors
/// 404 `Invalid room id` for a 64-hex id this server did not mint; 404 `Name too long` for a
/// name over [`ROOM_NAME_LEN_MAX`].
pub fn room_id(segment: &str, secret: &IdSecret) -> Result<ObjectId, Refusal> {
    if ids::is_lower_hex_id(segment) {
        return ObjectId::parse_private(Namespace::Room, segment, secret).map_err(
            |error| match error {
                IdError::Format | IdError::Forged => INVALID_ROOM_ID,
            },
        );
    }
    check_name_len(segment)?;
    Ok(ObjectId::from_name(Namespace::Room, segment))
}

/// The one length rule of object names in paths (rooms and counters).
fn check_name_len(name: &str) -> Result<(), Refusal> {
    if protocol::utf16_len(name) > ROOM_NAME_LEN_MAX {
        return Err(NAME_TOO_LONG);
    }
    Ok(())
}

/// A publish request's body: `{"name": "...", "message": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PublishBody {
    /// The system user's name ([`PUBLISH_NAME_DEFAULT`] if absent).
    #[serde(default)]
    pub name: Option<String>,
    /// The message.
    pub message: String,
}

impl PublishBody {
    /// Parses and checks a publish body: the sender (defaulted to [`PUBLISH_NAME_DEFAULT`])
    /// and the message.
    ///
    /// # Errors
    /// A message for a 400 answer ([`answer::publish_rejected`]).
    pub fn parse(body: &[u8]) -> Result<(UserName, MessageText), &'static str> {
        if body.len() > PUBLISH_BODY_LEN_MAX_BYTES {
            return Err("Body too large.");
        }
        let body: PublishBody = serde_json::from_slice(body)
            .map_err(|_| "Expected a JSON body {\"name\": string, \"message\": string}.")?;
        let name = body
            .name
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| PUBLISH_NAME_DEFAULT.to_owned());
        // Not empty here, so too long is the only way the name can fail.
        let name = UserName::try_from(name).map_err(|_| "Name too long.")?;
        let message = MessageText::try_from(body.message).map_err(|_| "Message too long.")?;
        Ok((name, message))
    }
}

/// Whether an `Authorization` header carries the admin token (`Bearer <token>`), compared in
/// constant time. With no token configured, nothing is authorized.
pub fn is_authorized(authorization: Option<&str>, admin_token: Option<&str>) -> bool {
    let (Some(header), Some(token)) = (authorization, admin_token) else {
        return false;
    };
    let presented = header.strip_prefix("Bearer ").unwrap_or("");
    !token.is_empty() && ids::constant_time_eq(presented.as_bytes(), token.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counter::CounterOp;

    fn secret() -> IdSecret {
        IdSecret::new(b"route test secret".to_vec())
    }

    fn r(method: Method, path: &str, upgrade: bool) -> Result<Route, Refusal> {
        route(method, path, None, upgrade, &secret())
    }

    fn refusal(result: Result<Route, Refusal>) -> (u16, &'static str) {
        let refusal = result.expect_err("expected a refusal");
        (refusal.status, refusal.body)
    }

    #[test]
    fn methods_are_classified_by_name() {
        assert_eq!(Method::parse("GET"), Method::Get);
        assert_eq!(Method::parse("HEAD"), Method::Get);
        assert_eq!(Method::parse("POST"), Method::Post);
        assert_eq!(Method::parse("PUT"), Method::Other);
        assert_eq!(
            Method::parse("get"),
            Method::Other,
            "method names are case-sensitive"
        );
    }

    #[test]
    fn a_counter_needs_a_name() {
        for path in ["/api/counter/", "/api/counter//increment"] {
            assert_eq!(
                refusal(r(Method::Get, path, false)),
                (404, "Not found"),
                "{path}"
            );
            assert_eq!(
                refusal(r(Method::Post, path, false)),
                (404, "Not found"),
                "{path}"
            );
        }
    }

    #[test]
    fn a_publish_body_of_exactly_the_length_limit_is_read_and_a_longer_one_is_too_large() {
        let body = |len: usize| {
            let json = r#"{"name":"ops","message":"hi"}"#;
            format!("{json:<len$}")
        };
        let exact = body(PUBLISH_BODY_LEN_MAX_BYTES);
        assert_eq!(exact.len(), 4096);
        let (name, message) = PublishBody::parse(exact.as_bytes()).unwrap();
        assert_eq!((name.as_str(), message.as_str()), ("ops", "hi"));
        let over = body(PUBLISH_BODY_LEN_MAX_BYTES + 1);
        assert_eq!(PublishBody::parse(over.as_bytes()), Err("Body too large."));
    }

    #[test]
    fn routes_the_demos_paths() {
        let lobby = RoomAddress {
            name: Some("lobby".into()),
            id: ObjectId::from_name(Namespace::Room, "lobby"),
        };
        assert_eq!(r(Method::Get, "/", false), Ok(Route::Page));
        assert_eq!(r(Method::Post, "/api/room", false), Ok(Route::CreateRoom));
        assert_eq!(r(Method::Post, "/api/room/", false), Ok(Route::CreateRoom));
        assert_eq!(
            refusal(r(Method::Get, "/api/room", false)),
            (405, "Method not allowed")
        );
        assert_eq!(
            r(Method::Get, "/api/room/lobby/websocket", true),
            Ok(Route::RoomWebSocket(lobby.clone()))
        );
        assert_eq!(
            refusal(r(Method::Get, "/api/room/lobby/websocket", false)),
            (400, "expected websocket")
        );
        assert_eq!(
            refusal(r(Method::Get, "/api/room/lobby", false)),
            (404, "Not found")
        );
        assert_eq!(
            refusal(r(Method::Get, "/api/room/lobby/x", false)),
            (404, "Not found")
        );
        assert_eq!(refusal(r(Method::Get, "/api", false)), (404, "Not found"));
        assert_eq!(
            refusal(r(Method::Get, "/api/other", false)),
            (404, "Not found")
        );
        assert_eq!(
            refusal(r(Method::Get, "/favicon.ico", false)),
            (404, "Not found")
        );
        assert_eq!(refusal(r(Method::Get, "", false)), (404, "Not found"));
        let long = format!("/api/room/{}/websocket", "n".repeat(33));
        assert_eq!(refusal(r(Method::Get, &long, true)), (404, "Name too long"));
        let ok32 = format!("/api/room/{}/websocket", "n".repeat(32));
        assert!(r(Method::Get, &ok32, true).is_ok());
    }

    #[test]
    fn private_ids_must_be_minted_here() {
        let minted = ObjectId::mint_private(Namespace::Room, [1; 16], &secret());
        let path = format!("/api/room/{minted}/websocket");
        assert_eq!(
            r(Method::Get, &path, true),
            Ok(Route::RoomWebSocket(RoomAddress {
                id: minted,
                name: None
            }))
        );
        let forged = format!("/api/room/{}/websocket", "ab".repeat(32));
        assert_eq!(
            refusal(r(Method::Get, &forged, true)),
            (404, "Invalid room id")
        );
        // Upper case is not an id; at 64 characters it is a name that is too long.
        let upper = format!("/api/room/{}/websocket", minted.to_hex().to_uppercase());
        assert_eq!(
            refusal(r(Method::Get, &upper, true)),
            (404, "Name too long")
        );
        // Path-traversal-looking names are just names.
        assert!(r(Method::Get, "/api/room/../websocket", true).is_ok());
        assert!(r(Method::Get, "/api/room/%2e%2e/websocket", true).is_ok());
    }

    #[test]
    fn routes_the_extensions() {
        let id = ObjectId::from_name(Namespace::Room, "lobby");
        let room = RoomAddress {
            id,
            name: Some("lobby".into()),
        };
        assert_eq!(
            route(
                Method::Get,
                "/api/room/lobby/history",
                Some("before=10&limit=5"),
                false,
                &secret()
            ),
            Ok(Route::RoomHistory(
                room.clone(),
                HistoryQuery {
                    before: Some(10),
                    limit: 5
                }
            ))
        );
        assert_eq!(
            refusal(route(
                Method::Get,
                "/api/room/lobby/history",
                Some("limit=0"),
                false,
                &secret()
            ))
            .0,
            400
        );
        assert_eq!(
            refusal(route(
                Method::Get,
                "/api/room/lobby/history",
                Some("before=x"),
                false,
                &secret()
            ))
            .0,
            400
        );
        assert_eq!(
            r(Method::Get, "/api/room/lobby/presence", false),
            Ok(Route::RoomPresence(room.clone()))
        );
        assert_eq!(
            r(Method::Post, "/api/room/lobby/messages", false),
            Ok(Route::RoomPublish(room.clone()))
        );
        assert_eq!(
            refusal(r(Method::Get, "/api/room/lobby/messages", false)).0,
            405
        );
        assert_eq!(
            r(Method::Post, "/api/room/lobby/moderate", false),
            Ok(Route::RoomModerate(room.clone()))
        );
        assert_eq!(
            r(Method::Get, "/api/room/lobby/admin", false),
            Ok(Route::RoomAdmin(room.clone()))
        );
        assert_eq!(
            refusal(r(Method::Get, "/api/room/lobby/moderate", false)).0,
            405
        );
        assert_eq!(
            refusal(r(Method::Post, "/api/room/lobby/admin", false)).0,
            405
        );
        assert_eq!(
            r(Method::Get, "/api/admin/rooms", false),
            Ok(Route::AdminRooms)
        );
        assert_eq!(refusal(r(Method::Post, "/api/admin/rooms", false)).0, 405);
        let counter = ObjectId::from_name(Namespace::Counter, "c");
        assert_eq!(
            r(Method::Get, "/api/counter/c", false),
            Ok(Route::Counter(counter, CounterOp::Get))
        );
        assert_eq!(
            r(Method::Post, "/api/counter/c/increment", false),
            Ok(Route::Counter(counter, CounterOp::Increment))
        );
        assert_eq!(
            r(Method::Post, "/api/counter/c/decrement", false),
            Ok(Route::Counter(counter, CounterOp::Decrement))
        );
        assert_eq!(
            refusal(r(Method::Get, "/api/counter/c/increment", false)).0,
            405
        );
        assert_eq!(r(Method::Get, "/metrics", false), Ok(Route::Metrics));
        assert_eq!(r(Method::Get, "/healthz", false), Ok(Route::Health));
    }

    #[test]
    fn routes_the_pages_files() {
        let files = [
            ("/edgechat.js", Route::ClientModule),
            ("/page.js", Route::PageScript),
            ("/page.css", Route::PageStyle),
            ("/admin", Route::AdminPage),
            ("/admin.js", Route::AdminScript),
            ("/admin.css", Route::AdminStyle),
        ];
        for (path, expected) in files {
            assert_eq!(r(Method::Get, path, false), Ok(expected), "{path}");
            for method in [Method::Post, Method::Other] {
                assert_eq!(
                    refusal(r(method, path, false)),
                    (405, "Method not allowed"),
                    "{path}"
                );
            }
        }
        for path in [
            "/edgechat.js/",
            "/js/edgechat.js",
            "/page.js/x",
            "/page.mjs",
            "/admin/",
            "/admin/x",
            "/admin.js/x",
            "/admin.html",
        ] {
            assert_eq!(
                refusal(r(Method::Get, path, false)),
                (404, "Not found"),
                "{path}"
            );
        }
    }

    #[test]
    fn routes_the_admin_hook() {
        assert_eq!(
            r(Method::Post, "/admin/hibernate", false),
            Ok(Route::AdminHibernate)
        );
        for method in [Method::Get, Method::Other] {
            assert_eq!(
                refusal(r(method, "/admin/hibernate", false)),
                (405, "Method not allowed")
            );
        }
        // `/admin` itself is the admin page (GET only, see `routes_the_pages_files`).
        for path in ["/admin/", "/admin/hibernate/", "/admin/other"] {
            assert_eq!(
                refusal(r(Method::Post, path, false)),
                (404, "Not found"),
                "{path}"
            );
        }
    }

    #[test]
    fn client_ip_is_the_first_forwarded_entry_else_the_peer() {
        let peer: IpAddr = "192.0.2.1".parse().unwrap();
        let cases: &[(Option<&str>, Option<IpAddr>, Option<&str>)] = &[
            (Some("203.0.113.7"), Some(peer), Some("203.0.113.7")),
            (Some(" 203.0.113.7 "), None, Some("203.0.113.7")),
            (
                Some("203.0.113.7, 10.0.0.1, 10.0.0.2"),
                Some(peer),
                Some("203.0.113.7"),
            ),
            (Some("2001:db8::1"), None, Some("2001:db8::1")),
            (Some("garbage, 10.0.0.1"), Some(peer), Some("192.0.2.1")),
            (Some(""), Some(peer), Some("192.0.2.1")),
            (Some("[2001:db8::1]"), None, None),
            (None, Some(peer), Some("192.0.2.1")),
            (None, None, None),
        ];
        for (header, peer, expected) in cases {
            let expected = expected.map(|ip| ip.parse::<IpAddr>().unwrap());
            assert_eq!(client_ip(*header, *peer), expected, "{header:?} {peer:?}");
        }
        assert_eq!(UNKNOWN_CLIENT_IP.to_string(), "0.0.0.0");
    }

    #[test]
    fn publish_bodies_and_tokens() {
        const NOT_JSON: &str = "Expected a JSON body {\"name\": string, \"message\": string}.";
        let ok = |name: &str, message: &str| {
            Ok((
                UserName::parse(name).unwrap(),
                MessageText::parse(message).unwrap(),
            ))
        };
        type Parsed = Result<(UserName, MessageText), &'static str>;
        let cases: Vec<(String, Parsed)> = vec![
            (r#"{"message":"hi"}"#.into(), ok("system", "hi")),
            (r#"{"name":"","message":"hi"}"#.into(), ok("system", "hi")),
            (r#"{"name":null,"message":""}"#.into(), ok("system", "")),
            (r#"{"name":"ops","message":"hi"}"#.into(), ok("ops", "hi")),
            ("{}".into(), Err(NOT_JSON)),
            ("not json".into(), Err(NOT_JSON)),
            (
                format!(r#"{{"name":"{}","message":"hi"}}"#, "n".repeat(32)),
                ok(&"n".repeat(32), "hi"),
            ),
            (
                format!(r#"{{"name":"{}","message":"hi"}}"#, "n".repeat(33)),
                Err("Name too long."),
            ),
            (
                format!(r#"{{"message":"{}"}}"#, "x".repeat(256)),
                ok("system", &"x".repeat(256)),
            ),
            (
                format!(r#"{{"message":"{}"}}"#, "x".repeat(257)),
                Err("Message too long."),
            ),
            // The name is checked before the message.
            (
                format!(
                    r#"{{"name":"{}","message":"{}"}}"#,
                    "n".repeat(33),
                    "x".repeat(257)
                ),
                Err("Name too long."),
            ),
            (
                format!(
                    r#"{{"message":"{}"}}"#,
                    "x".repeat(PUBLISH_BODY_LEN_MAX_BYTES)
                ),
                Err("Body too large."),
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(PublishBody::parse(body.as_bytes()), expected, "{body}");
        }
        assert!(is_authorized(Some("Bearer s3cret"), Some("s3cret")));
        assert!(!is_authorized(Some("Bearer s3cre"), Some("s3cret")));
        assert!(!is_authorized(Some("s3cret"), Some("s3cret")));
        assert!(!is_authorized(None, Some("s3cret")));
        assert!(!is_authorized(Some("Bearer "), Some("")));
        assert!(!is_authorized(Some("Bearer x"), None));
    }
}
