//! socket.io 4 over a plain WebSocket (Engine.IO v4, socket.io protocol v5, no polling),
//! against bench/peers/socketio.mjs:
//!
//! ```text
//!   GET /socket.io/?EIO=4&transport=websocket&room=<room>
//!   ◄ 0{"sid":..,"pingInterval":..}   Engine.IO open
//!   ► 40                              connect to the main namespace
//!   ◄ 40{"sid":..}
//!   ► 42["join",{"name":..}]
//!   ◄ 42["message",{..}] × history, 42["ready",{}]
//!   ► 42["message",{"message":..}]    ◄ 42["message",{"name":..,"message":..,..}] to all
//!   ◄ 2 (ping)  ► 3 (pong)
//! ```

use super::{quoted, Kind};
use crate::client::{Joined, Ws};

/// Engine.IO's answer to the server's ping.
pub const PONG: &str = "3";

/// The Engine.IO WebSocket endpoint, the room in the query.
pub fn path(room: &str) -> String {
    format!("/socket.io/?EIO=4&transport=websocket&room={room}")
}

/// `42["message",{"message":"<text>"}]`.
pub fn message(text: &str) -> String {
    format!("42[\"message\",{{\"message\":{}}}]", quoted(text))
}

/// Classifies an Engine.IO packet (one per frame).
pub fn classify(text: &str) -> Kind {
    if text.starts_with("42[\"message\"") {
        Kind::Chat
    } else if text.starts_with("42[\"joined\"") {
        Kind::Joined
    } else if text.starts_with("42[\"ready\"") {
        Kind::Ready
    } else if text.starts_with("42[\"failure\"") || text.starts_with("44") {
        // An application refusal, or a namespace connect error.
        Kind::Error
    } else if text == "2" {
        Kind::Ping
    } else if text.starts_with("0{") || text.starts_with("40") {
        Kind::Handshake
    } else {
        Kind::Other
    }
}

/// Engine.IO open, namespace connect, then the join event up to `ready`.
pub async fn join(ws: &mut Ws, name: &str) -> anyhow::Result<Joined> {
    let protocol = super::Protocol::Socketio;
    protocol.read_until(ws, Kind::Handshake).await?;
    ws.send_text("40").await?;
    protocol.read_until(ws, Kind::Handshake).await?;
    ws.send_text(format!("42[\"join\",{{\"name\":{}}}]", quoted(name)))
        .await?;
    protocol.read_until(ws, Kind::Ready).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_are_told_apart() {
        assert_eq!(
            classify("0{\"sid\":\"x\",\"pingInterval\":25000}"),
            Kind::Handshake
        );
        assert_eq!(classify("40{\"sid\":\"y\"}"), Kind::Handshake);
        assert_eq!(classify("42[\"message\",{\"name\":\"a\"}]"), Kind::Chat);
        assert_eq!(classify("42[\"ready\",{}]"), Kind::Ready);
        assert_eq!(classify("42[\"failure\",\"too long\"]"), Kind::Error);
        assert_eq!(classify("2"), Kind::Ping);
        assert_eq!(classify("42[\"quit\",\"a\"]"), Kind::Other);
    }
}
