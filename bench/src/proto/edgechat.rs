//! edgechat's protocol (docs/PROTOCOL.md), which the seed demo speaks too: join with
//! `{"name":..}`, read the roster and history up to `{"ready":..}`, send `{"message":..}`;
//! every member receives `{"name":..,"message":..,..}`.

use super::{quoted, Kind};
use crate::client::{Joined, Ws};

/// `/api/room/<room>/websocket`.
pub fn path(room: &str) -> String {
    format!("/api/room/{room}/websocket")
}

/// `{"message":"<text>"}`.
pub fn message(text: &str) -> String {
    format!("{{\"message\":{}}}", quoted(text))
}

/// Classifies a server frame by its first key.
pub fn classify(text: &str) -> Kind {
    if text.starts_with("{\"name\"") {
        Kind::Chat
    } else if text.starts_with("{\"joined\"") {
        Kind::Joined
    } else if text.starts_with("{\"ready\"") {
        Kind::Ready
    } else if text.starts_with("{\"error\"") {
        Kind::Error
    } else {
        Kind::Other
    }
}

/// Sends the join frame and reads until `ready`.
pub async fn join(ws: &mut Ws, name: &str) -> anyhow::Result<Joined> {
    ws.send_text(format!("{{\"name\":{}}}", quoted(name)))
        .await?;
    super::Protocol::Edgechat.read_until(ws, Kind::Ready).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_told_apart_by_their_first_key() {
        assert_eq!(classify("{\"name\":\"a\",\"message\":\"m\"}"), Kind::Chat);
        assert_eq!(classify("{\"joined\":\"a\"}"), Kind::Joined);
        assert_eq!(classify("{\"ready\":true}"), Kind::Ready);
        assert_eq!(classify("{\"error\":\"slow down\"}"), Kind::Error);
        assert_eq!(classify("{\"quit\":\"a\"}"), Kind::Other);
    }
}
