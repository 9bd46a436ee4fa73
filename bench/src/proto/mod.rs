//! The wire protocols the generator speaks: edgechat's (PROTOCOL.md, which the seed demo
//! also speaks), socket.io 4 (Engine.IO v4 over a plain WebSocket) and Centrifuge's JSON
//! protocol. The room semantics are the same for all three: every member of a room
//! receives every message sent into it, the sender included, so a receipt's latency and
//! the sender's own echo (its acceptance) are measured the same way.
//!
//! Each protocol module knows four things: the WebSocket path of a room, how to join,
//! how to wrap a message's text into a frame, and what a received frame is ([`Kind`]).

mod centrifuge;
mod edgechat;
mod socketio;

use anyhow::{bail, Context as _};
use edgechat_client::raw::Event;

use crate::client::{Joined, Ws};

/// Which server protocol to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// edgechat's PROTOCOL.md (also the seed demo's).
    Edgechat,
    /// socket.io 4 (bench/peers/socketio.mjs): Engine.IO v4, WebSocket transport only.
    Socketio,
    /// Centrifuge's JSON protocol (bench/peers/centrifuge).
    Centrifuge,
}

/// What one received protocol message is, as far as the generator cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Kind {
    /// A chat message (its text carries the generator's token).
    Chat,
    /// Another member's join (edgechat's roster and socket.io's `joined` event).
    Joined,
    /// The end of the join: the client is a member and sees every later message.
    Ready,
    /// A protocol step of the join that is not yet `Ready` (handshakes, connect replies).
    Handshake,
    /// A refusal.
    Error,
    /// A keep-alive the client must answer with [`Protocol::pong`].
    Ping,
    /// Anything else.
    Other,
}

impl Protocol {
    /// The WebSocket path (with query) of `room`.
    pub fn path(self, room: &str) -> String {
        match self {
            Protocol::Edgechat => edgechat::path(room),
            Protocol::Socketio => socketio::path(room),
            Protocol::Centrifuge => centrifuge::path(room),
        }
    }

    /// The frame that sends `text` into `room` as `name`.
    pub fn message(self, room: &str, name: &str, text: &str) -> String {
        match self {
            Protocol::Edgechat => edgechat::message(text),
            Protocol::Socketio => socketio::message(text),
            Protocol::Centrifuge => centrifuge::message(room, name, text),
        }
    }

    /// The protocol messages in one received frame (Centrifuge batches several, one per
    /// line; the others send one per frame).
    pub fn split(self, frame: &str) -> impl Iterator<Item = &str> {
        let lines = self == Protocol::Centrifuge;
        let (one, many) = if lines {
            (None, Some(frame.lines().filter(|line| !line.is_empty())))
        } else {
            (Some(frame), None)
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    /// Classifies one protocol message from its first bytes, without parsing the JSON.
    pub fn classify(self, item: &str) -> Kind {
        match self {
            Protocol::Edgechat => edgechat::classify(item),
            Protocol::Socketio => socketio::classify(item),
            Protocol::Centrifuge => centrifuge::classify(item),
        }
    }

    /// The answer to a [`Kind::Ping`].
    pub fn pong(self) -> &'static str {
        match self {
            Protocol::Socketio => socketio::PONG,
            Protocol::Edgechat | Protocol::Centrifuge => "",
        }
    }

    /// Joins `room` as `name` on a freshly opened WebSocket and reads until ready.
    ///
    /// # Errors
    /// On a refusal, a close or a transport error.
    pub async fn join(self, ws: &mut Ws, room: &str, name: &str) -> anyhow::Result<Joined> {
        match self {
            Protocol::Edgechat => edgechat::join(ws, name).await,
            Protocol::Socketio => socketio::join(ws, name).await,
            Protocol::Centrifuge => centrifuge::join(ws, room, name).await,
        }
    }

    /// Reads until a message of kind `want`, counting the chat and roster messages on the
    /// way (a join's replay), answering keep-alives and failing on a refusal.
    async fn read_until(self, ws: &mut Ws, want: Kind) -> anyhow::Result<Joined> {
        let mut joined = Joined::default();
        while let Some(event) = ws.next().await {
            let text = match event {
                Event::Text(text) => text,
                Event::Binary(_) => continue,
                Event::Close(close) => bail!("closed while joining: {close:?}"),
                Event::Ended(how) => bail!("connection ended while joining: {how}"),
            };
            for item in self.split(&text) {
                match self.classify(item) {
                    kind if kind == want => return Ok(joined),
                    Kind::Chat => joined.messages += 1,
                    Kind::Joined => joined.roster += 1,
                    Kind::Error => bail!("refused while joining: {item}"),
                    Kind::Ping => ws
                        .send_text(self.pong())
                        .await
                        .context("answering a ping")?,
                    Kind::Ready | Kind::Handshake | Kind::Other => {}
                }
            }
        }
        bail!("connection ended while joining")
    }
}

/// JSON string literal of `text` (quotes included).
fn quoted(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn centrifuge_frames_split_into_lines_and_others_do_not() {
        let frame = "{\"id\":3,\"result\":{}}\n{\"result\":{\"channel\":\"r\"}}\n";
        assert_eq!(Protocol::Centrifuge.split(frame).count(), 2);
        assert_eq!(Protocol::Edgechat.split("{\"a\":1}\n{\"b\":2}").count(), 1);
        assert_eq!(Protocol::Socketio.split("2").collect::<Vec<_>>(), ["2"]);
    }

    #[test]
    fn every_protocol_carries_the_token_where_the_receiver_finds_it() {
        for protocol in [Protocol::Edgechat, Protocol::Socketio, Protocol::Centrifuge] {
            let frame = protocol.message("room", "u1", "B1:2:3:xx\"y");
            assert!(frame.contains("\"message\":\"B1:2:3:xx\\\"y\""), "{frame}");
        }
    }
}
