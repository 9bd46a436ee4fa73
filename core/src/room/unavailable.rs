//! Taking one room out of service when its stored state cannot be read.
//!
//! A failed restore (a storage read error, a corrupt record) leaves no room to hand inputs
//! to, so its open sockets cannot be served: the adapter closes each with this code and
//! reason, and restores again on the next connection. Other rooms are not concerned.

use super::{ConnId, Output};
use crate::protocol::{CLOSE_INTERNAL_ERROR, CLOSE_REASON_ROOM_UNAVAILABLE};

/// The outputs that close `conns`, the open sockets of a room that could not be restored.
pub fn close_after_restore_failure(conns: impl IntoIterator<Item = ConnId>) -> Vec<Output> {
    conns
        .into_iter()
        .map(|conn| Output::Close {
            conn,
            code: CLOSE_INTERNAL_ERROR,
            reason: CLOSE_REASON_ROOM_UNAVAILABLE,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_socket_of_the_room_is_closed_with_the_unavailable_code() {
        let outputs = close_after_restore_failure([ConnId(3), ConnId(7)]);
        let closed: Vec<_> = outputs
            .iter()
            .map(|output| match output {
                Output::Close { conn, code, reason } => (*conn, *code, *reason),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            closed,
            [
                (ConnId(3), 1011, "Room unavailable."),
                (ConnId(7), 1011, "Room unavailable."),
            ]
        );
    }
}
