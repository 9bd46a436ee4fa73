//! Centrifuge's JSON protocol (the v1 protocol of Debian's centrifuge 0.15 and
//! centrifugal/protocol 0.3), against bench/peers/centrifuge:
//!
//! ```text
//!   GET /connection/websocket
//!   ► {"id":1,"params":{"name":..}}                          connect (method 0)
//!   ◄ {"id":1,"result":{"client":..}}
//!   ► {"id":2,"method":1,"params":{"channel":<room>}}       subscribe
//!   ◄ {"id":2,"result":{}}                                  ready
//!   ► {"id":3,"method":3,"params":{"channel":..,"data":{"name":..,"message":..}}}  publish
//!   ◄ {"id":3,"result":{}}
//!   ◄ {"result":{"channel":..,"data":{"data":{"name":..,"message":..},..}}}  to all
//! ```
//! The server batches replies and pushes, one JSON document per line, into one frame.
//! Every publish uses id 3: the generator matches deliveries by their token, not by
//! reply, and Centrifuge only echoes the id.

use super::{quoted, Kind};
use crate::client::{Joined, Ws};

/// The JSON WebSocket endpoint (one connection serves any number of channels).
pub fn path(_room: &str) -> String {
    String::from("/connection/websocket")
}

/// A publish command carrying `{"name":..,"message":..}` (Centrifuge adds no name).
pub fn message(room: &str, name: &str, text: &str) -> String {
    format!(
        "{{\"id\":3,\"method\":3,\"params\":{{\"channel\":{},\"data\":{{\"name\":{},\"message\":{}}}}}}}",
        quoted(room),
        quoted(name),
        quoted(text)
    )
}

/// Classifies one line of a frame.
pub fn classify(line: &str) -> Kind {
    if line.starts_with("{\"result\":{\"channel\"") {
        // A push; publications carry data, joins and leaves a type.
        if line.contains("\"message\":") {
            Kind::Chat
        } else {
            Kind::Other
        }
    } else if line.starts_with("{\"id\":") && line.contains("\"error\":") {
        Kind::Error
    } else if line.starts_with("{\"id\":1,") {
        Kind::Handshake
    } else if line.starts_with("{\"id\":2,") {
        Kind::Ready
    } else {
        Kind::Other
    }
}

/// Connect, then subscribe to the room's channel.
pub async fn join(ws: &mut Ws, room: &str, name: &str) -> anyhow::Result<Joined> {
    let protocol = super::Protocol::Centrifuge;
    ws.send_text(format!(
        "{{\"id\":1,\"params\":{{\"name\":{}}}}}",
        quoted(name)
    ))
    .await?;
    protocol.read_until(ws, Kind::Handshake).await?;
    ws.send_text(format!(
        "{{\"id\":2,\"method\":1,\"params\":{{\"channel\":{}}}}}",
        quoted(room)
    ))
    .await?;
    protocol.read_until(ws, Kind::Ready).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_told_apart() {
        assert_eq!(
            classify("{\"id\":1,\"result\":{\"client\":\"c\"}}"),
            Kind::Handshake
        );
        assert_eq!(classify("{\"id\":2,\"result\":{}}"), Kind::Ready);
        assert_eq!(classify("{\"id\":3,\"result\":{}}"), Kind::Other);
        assert_eq!(
            classify("{\"id\":3,\"error\":{\"code\":103,\"message\":\"permission denied\"}}"),
            Kind::Error
        );
        assert_eq!(
            classify("{\"result\":{\"channel\":\"r\",\"data\":{\"data\":{\"name\":\"u\",\"message\":\"B1\"}}}}"),
            Kind::Chat
        );
        assert_eq!(
            classify("{\"result\":{\"type\":1,\"channel\":\"r\",\"data\":{}}}"),
            Kind::Other
        );
    }
}
