//! What the room does with one hibernatable WebSocket: its tag, its attachment, and sends.
//!
//! Each socket carries a tag `conn:<id>` that names the core's [`ConnId`], and an attachment
//! that holds the core's attachment bytes. Frames are converted to JavaScript strings once
//! and the same string is handed to every recipient's `send`.

use edgechat_core::ids::ObjectId;
use edgechat_core::protocol::{CLOSE_INTERNAL_ERROR, CLOSE_REASON_STATE_LOST};
use edgechat_core::room::ConnId;
use serde::{Deserialize, Serialize};
use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::{JsCast, JsValue};
use worker::{web_sys, Result, State, WebSocket};

/// Prefix of the socket tag that carries the connection id.
pub(crate) const CONN_TAG_PREFIX: &str = "conn:";
/// Prefix of the socket tag that carries the room's core id (hex).
pub(crate) const ROOM_TAG_PREFIX: &str = "room:";
/// The version of [`SocketAttachment`].
const ATTACHMENT_VERSION: u8 = 1;

/// What each hibernatable socket carries (at most 16 KiB on Workers; this is about 100 B).
#[derive(Debug, Serialize, Deserialize)]
struct SocketAttachment {
    /// [`ATTACHMENT_VERSION`].
    v: u8,
    /// The core's attachment bytes, hex-encoded.
    core: String,
}

#[wasm_bindgen]
extern "C" {
    /// A WebSocket seen as what has `send(data)`, so that one JavaScript string can be sent
    /// to many sockets (`web_sys` only offers `send(&str)`, which converts it every time).
    type SendTarget;

    #[wasm_bindgen(method, catch, js_name = send)]
    fn send_value(this: &SendTarget, data: &JsValue) -> std::result::Result<(), JsValue>;
}

/// Sends an already converted text frame. A socket that broke is reported by its own close
/// event, so a failed send is not an error here.
pub(crate) fn send(ws: &WebSocket, frame: &JsValue) {
    let raw: &web_sys::WebSocket = ws.as_ref();
    let _ = raw.unchecked_ref::<SendTarget>().send_value(frame);
}

/// The connection id in a socket's tag.
pub(crate) fn conn_of(state: &State, ws: &WebSocket) -> Option<ConnId> {
    state
        .get_tags(ws)
        .iter()
        .find_map(|tag| tag.strip_prefix(CONN_TAG_PREFIX)?.parse().ok())
        .map(ConnId)
}

/// The room id in a socket's tag.
pub(crate) fn room_of(state: &State, ws: &WebSocket) -> Option<ObjectId> {
    state
        .get_tags(ws)
        .iter()
        .find_map(|tag| ObjectId::parse_hex(tag.strip_prefix(ROOM_TAG_PREFIX)?).ok())
}

/// The core's attachment bytes that `ws` carries, if readable.
pub(crate) fn read_attachment(ws: &WebSocket) -> Option<Vec<u8>> {
    ws.deserialize_attachment::<SocketAttachment>()
        .ok()
        .flatten()
        .filter(|a| a.v == ATTACHMENT_VERSION)
        .and_then(|a| from_hex(&a.core))
}

/// Replaces the attachment of `ws` with the core's `bytes`.
pub(crate) fn write_attachment(ws: &WebSocket, bytes: &[u8]) -> Result<()> {
    ws.serialize_attachment(SocketAttachment {
        v: ATTACHMENT_VERSION,
        core: to_hex(bytes),
    })
}

/// Closes a socket whose session state cannot be found.
pub(crate) fn close_lost(ws: &WebSocket) {
    let _ = ws.close(Some(CLOSE_INTERNAL_ERROR), Some(CLOSE_REASON_STATE_LOST));
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0xf)] as char);
    }
    out
}

fn from_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    hex.as_bytes()
        .chunks_exact(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect()
}
