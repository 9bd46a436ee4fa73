//! Server-to-client frames, encoded once for the wire and shared by every recipient.
//!
//! The header comes from tungstenite's own formatter ([`FrameHeader::format`]); the payload
//! is copied once, right behind it, into one buffer. (`Frame::format` would want the
//! payload as `Bytes` first: one copy more per broadcast, so it is not used.)

use bytes::{BufMut as _, Bytes, BytesMut};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

/// Longest close reason that fits a control frame (125 bytes less the 2-byte code).
const CLOSE_REASON_LEN_MAX_BYTES: usize = 123;

/// A final, unmasked (as RFC 6455 requires of a server) frame of `opcode` carrying `payload`.
fn encode(opcode: OpCode, payload: &[u8]) -> Bytes {
    let header = FrameHeader {
        opcode,
        ..FrameHeader::default()
    };
    let len = payload.len() as u64;
    let wire = BytesMut::with_capacity(header.len(len) + payload.len());
    let mut writer = wire.writer();
    // Writing into memory cannot fail.
    header
        .format(len, &mut writer)
        .expect("formatting into a buffer");
    let mut wire = writer.into_inner();
    wire.put_slice(payload);
    wire.freeze()
}

/// A text frame carrying `text`, ready to be written to any number of connections.
pub(crate) fn text_frame(text: &str) -> Bytes {
    encode(OpCode::Data(Data::Text), text.as_bytes())
}

/// A close frame with `code` and `reason` (cut at 123 bytes, as the protocol bounds it;
/// every reason here is shorter).
pub(crate) fn close_frame(code: u16, reason: &str) -> Bytes {
    let reason = &reason.as_bytes()[..reason.len().min(CLOSE_REASON_LEN_MAX_BYTES)];
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason);
    encode(OpCode::Control(Control::Close), &payload)
}

/// An empty ping frame.
pub(crate) fn ping_frame() -> Bytes {
    encode(OpCode::Control(Control::Ping), &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The encoder this module replaced, kept as the reference the bytes must match.
    fn hand_written(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut wire = vec![0x80 | opcode];
        match payload.len() {
            len @ 0..=125 => wire.push(len as u8),
            len @ 126..=0xFFFF => {
                wire.push(126);
                wire.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                wire.push(127);
                wire.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        wire.extend_from_slice(payload);
        wire
    }

    #[test]
    fn text_frames_match_the_hand_written_encoding_at_every_length_form() {
        for len in [0, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
            let text = "x".repeat(len);
            let wire = text_frame(&text);
            assert_eq!(
                &wire[..],
                &hand_written(0x1, text.as_bytes())[..],
                "length {len}"
            );
        }
    }

    #[test]
    fn control_frames_match_the_hand_written_encoding() {
        let wire = close_frame(1008, "Too slow");
        assert_eq!(&wire[..4], &[0x88, 10, 0x03, 0xF0]);
        assert_eq!(&wire[4..], b"Too slow");
        assert_eq!(&wire[..], &hand_written(0x8, b"\x03\xF0Too slow")[..]);
        assert_eq!(&ping_frame()[..], &[0x89, 0]);
        assert_eq!(&ping_frame()[..], &hand_written(0x9, &[])[..]);
    }

    #[test]
    fn a_close_reason_is_cut_to_fit_a_control_frame() {
        let wire = close_frame(1000, &"r".repeat(300));
        assert_eq!(wire.len(), 2 + 125);
        assert_eq!(wire[1], 125);
    }

    #[test]
    fn lengths_use_the_smallest_form() {
        assert_eq!(&text_frame("hi")[..], &[0x81, 2, b'h', b'i']);
        let wire = text_frame(&"x".repeat(300));
        assert_eq!(&wire[..4], &[0x81, 126, 0x01, 0x2C]);
        let wire = text_frame(&"y".repeat(70_000));
        assert_eq!(&wire[..2], &[0x81, 127]);
        assert_eq!(u64::from_be_bytes(wire[2..10].try_into().unwrap()), 70_000);
        assert_eq!(wire.len(), 10 + 70_000);
    }
}
