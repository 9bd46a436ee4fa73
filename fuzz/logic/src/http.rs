//! HTTP routes and room-id parsing.

use arbitrary::{Arbitrary, Unstructured};
use edgechat_core::http::{
    is_authorized, room_id, route, HistoryQuery, Method, PublishBody, Route, HISTORY_PAGE_LEN_MAX,
    ROOM_NAME_LEN_MAX,
};
use edgechat_core::ids::{is_lower_hex_id, IdSecret, Namespace, ObjectId};
use edgechat_core::protocol::{utf16_len, MESSAGE_LEN_MAX_UTF16, NAME_LEN_MAX_UTF16};

/// The secret the fuzzed server mints private ids with.
const SECRET: &[u8] = b"edgechat fuzz secret";

#[derive(Debug, Arbitrary)]
enum Segment {
    /// Any text.
    Raw(String),
    /// A private id minted with the server's secret.
    Minted([u8; 16]),
    /// A minted id with one hex digit changed.
    Forged([u8; 16], u8, u8),
    /// A minted id in upper case.
    Upper([u8; 16]),
    /// `len` copies of `text` (names at and around the length limit).
    Repeat(String, u8),
}

#[derive(Debug, Arbitrary)]
struct Request {
    method: u8,
    other_method: String,
    /// `/api/room/<segment>/<rest>` if set, else `raw_path`.
    segment: Option<Segment>,
    rest: String,
    raw_path: String,
    query: Option<String>,
    upgrade: bool,
    body: Vec<u8>,
    authorization: Option<String>,
    token: Option<String>,
}

/// Routes an arbitrary request.
///
/// `route` never panics. A 64-lowercase-hex room segment is accepted only if this server
/// minted it (a forged one gets 404 `Invalid room id`); any other segment over 32 UTF-16
/// units gets 404 `Name too long`; a WebSocket route needs the upgrade header. History
/// queries and publish bodies that are accepted are within their bounds.
pub fn http_route(data: &[u8]) {
    let Ok(request) = Request::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let secret = IdSecret::new(SECRET.to_vec());
    let method = match request.method % 4 {
        0 => Method::Get,
        1 => Method::Post,
        2 => Method::Other,
        _ => Method::parse(&request.other_method),
    };
    let query = request.query.as_deref();

    let mut minted = None;
    let path = match &request.segment {
        None => request.raw_path.clone(),
        Some(segment) => {
            let text = match segment {
                Segment::Raw(text) => text.clone(),
                Segment::Minted(random) => {
                    let id = ObjectId::mint_private(Namespace::Room, *random, &secret);
                    minted = Some(id);
                    id.to_hex()
                }
                Segment::Forged(random, at, digit) => {
                    let mut hex = ObjectId::mint_private(Namespace::Room, *random, &secret)
                        .to_hex()
                        .into_bytes();
                    let at = usize::from(*at) % hex.len();
                    let replacement = b"0123456789abcdef"[usize::from(digit % 15)];
                    // Always a different digit: skip the one already there.
                    hex[at] = if replacement >= hex[at] {
                        b"0123456789abcdef"[usize::from(digit % 15) + 1]
                    } else {
                        replacement
                    };
                    String::from_utf8(hex).expect("hex is ASCII")
                }
                Segment::Upper(random) => ObjectId::mint_private(Namespace::Room, *random, &secret)
                    .to_hex()
                    .to_uppercase(),
                Segment::Repeat(text, len) => text.repeat(usize::from(*len % 40)),
            };
            check_room_id(&text, &secret, minted);
            format!("/api/room/{text}/{}", request.rest)
        }
    };

    let routed = route(method, &path, query, request.upgrade, &secret);
    if let Ok(Route::RoomWebSocket(_)) = routed {
        assert!(request.upgrade, "a websocket route without an upgrade");
    }
    if let Some(rest) = path.strip_prefix("/api/room/") {
        let segment = rest.split('/').next().unwrap_or("");
        let refused = |body: &str| matches!(&routed, Err(r) if r.status == 404 && r.body == body);
        if rest.contains('/') && !segment.is_empty() {
            if is_lower_hex_id(segment) {
                let genuine = ObjectId::parse_private(Namespace::Room, segment, &secret).is_ok();
                assert!(
                    genuine != refused("Invalid room id"),
                    "id {segment}: genuine {genuine}, routed {routed:?}"
                );
            } else if utf16_len(segment) > ROOM_NAME_LEN_MAX {
                assert!(refused("Name too long"), "{segment:?} routed {routed:?}");
            }
        }
    }

    if let Ok(history) = HistoryQuery::parse(query) {
        assert!((1..=HISTORY_PAGE_LEN_MAX).contains(&history.limit));
    }
    if let Ok((name, message)) = PublishBody::parse(&request.body) {
        assert!(!name.is_empty() && utf16_len(&name) <= NAME_LEN_MAX_UTF16);
        assert!(utf16_len(&message) <= MESSAGE_LEN_MAX_UTF16);
    }
    let authorized = is_authorized(request.authorization.as_deref(), request.token.as_deref());
    if authorized {
        let token = request.token.as_deref().unwrap_or_default();
        assert!(!token.is_empty());
        assert_eq!(
            request.authorization.as_deref(),
            Some(format!("Bearer {token}").as_str())
        );
    }
}

fn check_room_id(segment: &str, secret: &IdSecret, minted: Option<ObjectId>) {
    let resolved = room_id(segment, secret);
    if let Some(id) = minted {
        assert_eq!(resolved, Ok(id), "a minted id must resolve to itself");
        return;
    }
    if is_lower_hex_id(segment) {
        let genuine = ObjectId::parse_private(Namespace::Room, segment, secret).is_ok();
        match &resolved {
            Ok(_) => assert!(genuine, "forged id {segment} accepted"),
            Err(refusal) => {
                assert!(!genuine);
                assert_eq!((refusal.status, refusal.body), (404, "Invalid room id"));
            }
        }
    } else if utf16_len(segment) > ROOM_NAME_LEN_MAX {
        let refusal = resolved.expect_err("a name over 32 units must be refused");
        assert_eq!((refusal.status, refusal.body), (404, "Name too long"));
    } else {
        assert_eq!(resolved, Ok(ObjectId::from_name(Namespace::Room, segment)));
    }
}
