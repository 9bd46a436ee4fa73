//! How the sim reads a room's records (chat messages and change records), with its own parser
//! rather than core's types.

use crate::json::Object;

/// One record of a room's sequence, as the sim reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its id.
    pub id: u64,
    /// Its timestamp (`at` for a change record).
    pub ts: u64,
    /// What it is.
    pub kind: Kind,
}

/// The kinds of record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A chat message (edited or not).
    Chat {
        /// Sender's name.
        name: String,
        /// Its text.
        text: String,
        /// Whether it says it was edited.
        edited: bool,
    },
    /// Message `target` is deleted (at `target` itself: its tombstone).
    Deleted {
        /// The deleted message.
        target: u64,
    },
    /// Message `target` now says `text`.
    Edited {
        /// The edited message.
        target: u64,
        /// The new text.
        text: String,
    },
}

impl Record {
    /// Parses a stored or received record (`None`: not a record of the sequence).
    pub fn parse(frame: &str) -> Option<Record> {
        let json = Object::parse(frame)?;
        let id = json.u64("id")?;
        let text = |key: &str| json.str(key).map(str::to_owned);
        if let Some(target) = json.u64("deleted") {
            let ts = json.u64("at")?;
            return Some(Record {
                id,
                ts,
                kind: Kind::Deleted { target },
            });
        }
        if let Some(target) = json.u64("edited") {
            let ts = json.u64("at")?;
            let text = text("message")?;
            return Some(Record {
                id,
                ts,
                kind: Kind::Edited { target, text },
            });
        }
        let ts = json.u64("timestamp")?;
        let edited = json.bool("edited").unwrap_or(false);
        Some(Record {
            id,
            ts,
            kind: Kind::Chat {
                name: text("name")?,
                text: text("message")?,
                edited,
            },
        })
    }

    /// The chat text it carries (a message's or an edit's).
    pub fn text(&self) -> Option<&str> {
        match &self.kind {
            Kind::Chat { text, .. } | Kind::Edited { text, .. } => Some(text),
            Kind::Deleted { .. } => None,
        }
    }
}
