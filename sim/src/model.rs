//! The oracle's reference model of a room, written from docs/PROTOCOL.md with no product
//! type reused: frames are parsed here with `serde_json`, and what the room must answer is
//! computed from what the room has acknowledged (the world's `acked` ids, confirmed by the
//! host or found by a restore) and the room's settings.
//!
//! What it claims, and where it is checked:
//! - a join (host side, [`JoinWatch`]): `recovered` is present exactly when the join gave
//!   `since`, and `true` exactly when the room still holds everything after `since` (its
//!   retained history, the newest `history_retained_max` acknowledged ids or fewer under the
//!   room's retention settings, reaches down to `since + 1`, and `since` is not beyond the newest); a recovered join replays exactly the
//!   ids `since + 1 ..= newest`, in order; any other join replays exactly the newest
//!   `join_replay_max` ids as of its socket's connection (however long it stayed unnamed,
//!   across evictions), and every id since, within the retained window;
//! - errors (client side, [`ErrorBook`]): every error a client gets answers something that
//!   the protocol says must be refused: a message over 256 UTF-16 units, a binary or
//!   malformed frame (each with its own documented error), a frame during a cooldown, a
//!   storage failure, a token or moderation refusal; never "Room is busy" (the sim never
//!   gets near the 10,000 messages waiting for storage), never "Message too long." for a
//!   message within the limit.

use crate::json::Object;

/// The errors the protocol documents, spelled as docs/PROTOCOL.md spells them.
pub mod errors {
    /// A message over 256 UTF-16 units.
    pub const TOO_LONG: &str = "Message too long.";
    /// A binary frame.
    pub const BINARY: &str = "Binary frames are not supported.";
    /// A text frame that is not a JSON object.
    pub const NOT_OBJECT: &str = "Malformed frame: expected a JSON object.";
    /// A joined session's frame without a string `message`.
    pub const NOT_MESSAGE: &str = "Malformed frame: expected {\"message\": string}.";
    /// A text frame over 4 KiB.
    pub const TOO_LARGE: &str = "Frame too large.";
    /// The errors that answer a frame the room decoded (each frame one limiter action).
    pub const FRAME_ERRORS: [&str; 5] = [TOO_LONG, BINARY, NOT_OBJECT, NOT_MESSAGE, TOO_LARGE];
    /// More messages waiting for storage than the room holds.
    pub const BUSY: &str = "Room is busy, please try again later.";
}

/// The longest message, in UTF-16 units (as JavaScript counts a string's length).
pub const MESSAGE_UNITS_MAX: usize = 256;

/// A message's length as the protocol counts it: UTF-16 units (a character outside the
/// Basic Multilingual Plane counts 2).
pub fn utf16_units(text: &str) -> usize {
    text.chars().map(char::len_utf16).sum()
}

/// The close of a socket whose session cannot be rebuilt after an eviction.
pub const CLOSE_STATE_LOST: (u16, &str) = (1011, "Session state lost.");

/// `attachment` (a version-2 attachment of an anonymous session) as version 1 wrote it:
/// version 1 is version 2 without the trailing `identity`, postcard-encoded field by field,
/// so an absent identity is one trailing zero byte. `None` for a session with an identity
/// (version 1 had none) or bytes that are not version 2.
pub fn attachment_v1(attachment: &[u8]) -> Option<Vec<u8>> {
    match attachment {
        [2, middle @ .., 0] => Some([&[1u8][..], middle].concat()),
        _ => None,
    }
}

/// `attachment` corrupted in one of four ways: empty, a newer version than any, cut short,
/// or longer than any attachment may be.
pub fn corrupt_attachment(attachment: &[u8], how: u32) -> Vec<u8> {
    match how {
        0 => Vec::new(),
        1 => [&[200u8][..], attachment.get(1..).unwrap_or_default()].concat(),
        2 => attachment.iter().take(2).copied().collect(),
        _ => [attachment, &[7u8; 4096][..]].concat(),
    }
}

/// What a frame from the room is, as far as the model cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// `{"ready":true, "recovered"?: bool}`.
    Ready {
        /// The `recovered` field, if present.
        recovered: Option<bool>,
    },
    /// A history record (a chat message or a change record) with its id.
    Record(u64),
    /// `{"error": ...}`.
    Error(String),
    /// Anything else (`joined`, `quit`, a topic, a refresh answer).
    Other,
}

/// Parses a frame the room sent.
pub fn parse(frame: &str) -> Seen {
    let Some(json) = Object::parse(frame) else {
        return Seen::Other;
    };
    if let Some(error) = json.str("error") {
        return Seen::Error(error.to_owned());
    }
    if json.get("ready").is_some() {
        let recovered = json.bool("recovered");
        return Seen::Ready { recovered };
    }
    match json.u64("id") {
        Some(id) => Seen::Record(id),
        None => Seen::Other,
    }
}

/// The `since` of a join frame (`Some(None)` for a join without it), `None` if `text` is
/// not a join.
pub fn join_since(text: &str) -> Option<Option<u64>> {
    let json = Object::parse(text)?;
    json.get("name")?;
    Some(json.u64("since"))
}

/// One socket's join as the host watches it: what it asked, what it was sent before
/// `ready`.
#[derive(Debug, Clone, Default)]
pub struct JoinWatch {
    /// The latest join frame's `since` (outer `None`: no join frame yet).
    pub since: Option<Option<u64>>,
    /// Ids sent to the socket before its `ready`.
    pub replay: Vec<u64>,
    /// `ready` was sent: the join is over.
    pub ready: bool,
    /// The newest acknowledged id when the socket connected (a join without a usable
    /// `since` replays the newest `join_replay_max` messages as of connecting, and all
    /// after).
    pub connect_last: u64,
}

impl JoinWatch {
    /// Judges the `ready` frame: the room's acknowledged ids end at `newest` (0: none) and
    /// the run it holds starts at some id in `held` (`lo..=hi`, at most `newest + 1`; one id
    /// when the retention in force is known, see [`crate::retention`]): the answer must be
    /// right for one of them. `Err` says what is wrong.
    pub fn judge_ready(
        &mut self,
        recovered: Option<bool>,
        newest: u64,
        held: (u64, u64),
        replay_max: u64,
    ) -> Result<(), String> {
        self.ready = true;
        let Some(since) = self.since else {
            return Ok(()); // not a join frame we saw (cannot happen; claim nothing)
        };
        let (lo, hi) = held;
        // Surely held when `since + 1` reaches the highest possible start, surely not when
        // it is below the lowest; in between the answer itself says which start it was.
        let surely = since.map(|since| since <= newest && since + 1 >= hi);
        let maybe = since.map(|since| since <= newest && since + 1 >= lo);
        if recovered != surely && recovered != maybe {
            return Err(format!(
                "join since {since:?} answered recovered {recovered:?}; the room holds ids \
                 {lo}..={newest} (at most) to {hi}..={newest} (at least), so it must be \
                 {surely:?}"
            ));
        }
        let replay = std::mem::take(&mut self.replay);
        match (since, recovered) {
            (Some(since), Some(true)) => {
                let want: Vec<u64> = (since + 1..=newest).collect();
                if replay != want {
                    return Err(format!(
                        "join since {since} (recovered) replayed {replay:?}, not {}..={newest}",
                        since + 1
                    ));
                }
            }
            _ => {
                // Not recovered although `since` is not beyond the newest: the run starts
                // above `since + 1`.
                let lo = match since {
                    Some(since) if since <= newest => lo.max(since + 2).min(hi),
                    _ => lo,
                };
                let base = self.connect_last.saturating_sub(replay_max) + 1;
                let clamp = |oldest: u64| base.max(oldest).min(newest + 1);
                let from = replay.first().copied().unwrap_or(newest + 1);
                let want: Vec<u64> = (from..=newest).collect();
                if replay != want || !(clamp(lo) <= from && from <= clamp(hi)) {
                    return Err(format!(
                        "join since {since:?} (connected at id {}) replayed {replay:?}, not \
                         {}..={newest} (from at most {})",
                        self.connect_last,
                        clamp(lo),
                        clamp(hi)
                    ));
                }
            }
        }
        Ok(())
    }
}

/// What one connection sent that the room must refuse, and what it was refused: each error
/// must answer a frame that deserves it.
#[derive(Debug, Clone, Default)]
pub struct ErrorBook {
    /// Messages over the limit sent, and "Message too long." errors received.
    pub too_long: (u32, u32),
    /// Binary frames sent, and their errors received.
    pub binary: (u32, u32),
    /// Text frames that are not JSON objects sent, and their errors received.
    pub not_object: (u32, u32),
    /// JSON objects without a string `message` sent (when joined), and their errors.
    pub not_message: (u32, u32),
    /// Text frames over 4 KiB sent, and their errors received.
    pub too_large: (u32, u32),
}

impl ErrorBook {
    /// An error arrived on a joined connection: `Err` if nothing sent deserves it. Errors the
    /// model does not judge (rate limit, storage, tokens, moderation) are `Ok`: other
    /// invariants judge those.
    pub fn received(&mut self, error: &str) -> Result<(), String> {
        let count = match error {
            errors::TOO_LONG => &mut self.too_long,
            errors::BINARY => &mut self.binary,
            errors::NOT_OBJECT => &mut self.not_object,
            errors::NOT_MESSAGE => &mut self.not_message,
            errors::TOO_LARGE => &mut self.too_large,
            errors::BUSY => {
                return Err("a message within the limits was refused: room busy".into());
            }
            _ => return Ok(()),
        };
        count.1 += 1;
        if count.1 > count.0 {
            return Err(format!(
                "{error:?} received {} times for {} frames that deserve it",
                count.1, count.0
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf16_counts_surrogate_pairs_twice() {
        assert_eq!(utf16_units("a\u{1F600}"), 3);
        assert_eq!(utf16_units("é"), 1);
    }

    #[test]
    fn recovered_exactly_when_held() {
        // Newest 10, retaining 4: ids 7..=10 are held.
        let judge = |since: Option<u64>, recovered: Option<bool>, replay: Vec<u64>| {
            let mut watch = JoinWatch {
                since: Some(since),
                replay,
                ready: false,
                connect_last: 9,
            };
            watch.judge_ready(recovered, 10, (7, 7), 2)
        };
        assert!(judge(Some(6), Some(true), vec![7, 8, 9, 10]).is_ok());
        assert!(judge(Some(6), Some(false), vec![8, 9, 10]).is_err(), "held");
        assert!(judge(Some(5), Some(false), vec![8, 9, 10]).is_ok());
        assert!(
            judge(Some(5), Some(false), vec![9, 10]).is_err(),
            "as of connecting"
        );
        assert!(judge(Some(5), Some(true), vec![6, 7, 8, 9, 10]).is_err());
        assert!(judge(Some(10), Some(true), vec![]).is_ok());
        assert!(judge(Some(11), Some(false), vec![8, 9, 10]).is_ok());
        assert!(
            judge(Some(7), Some(true), vec![7, 8, 9, 10]).is_err(),
            "duplicate"
        );
        assert!(judge(None, None, vec![8, 10]).is_err(), "gap");
        assert!(judge(None, None, vec![8, 9, 10]).is_ok());
    }
}
