//! A chat client over a real WebSocket that keeps every frame it receives, in order, as text.
//!
//! The WebSocket is edgechat-client's frame-level [`Session`]; this module adds what the
//! cases check with: the log of every frame, a backlog for frames read ahead, and joins and
//! chats that expect exact sequences.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use edgechat_client::raw::{Event as RawEvent, Session, SessionOptions};
use serde_json::{json, Value};

/// The exact text of the rate-limit error (PROTOCOL.md).
pub const ERROR_RATE_LIMITED: &str = edgechat_client::ERROR_RATE_LIMITED;
/// How long a client waits for an expected frame.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// One text frame from the server: the exact text and its JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// The text exactly as received.
    pub raw: String,
    /// The parsed JSON (`Null` if the text is not JSON).
    pub json: Value,
}

impl Frame {
    fn new(raw: String) -> Frame {
        let json = serde_json::from_str(&raw).unwrap_or(Value::Null);
        Frame { raw, json }
    }

    /// The string under `key`, if there is one.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.json.get(key).and_then(Value::as_str)
    }

    /// The unsigned integer under `key`, if there is one.
    pub fn u64(&self, key: &str) -> Option<u64> {
        self.json.get(key).and_then(Value::as_u64)
    }

    /// Whether this is a chat message (`name`, `message` and `timestamp`).
    pub fn is_chat(&self) -> bool {
        self.str("name").is_some()
            && self.str("message").is_some()
            && self.u64("timestamp").is_some()
    }

    /// The name in a `{"joined": name}` frame.
    pub fn joined(&self) -> Option<&str> {
        self.str("joined")
    }

    /// The name in a `{"quit": name}` frame.
    pub fn quit(&self) -> Option<&str> {
        self.str("quit")
    }

    /// The text of an `{"error": text}` frame.
    pub fn error(&self) -> Option<&str> {
        self.str("error")
    }

    /// Whether this is a `ready` frame.
    pub fn is_ready(&self) -> bool {
        self.json.get("ready") == Some(&Value::Bool(true))
    }
}

impl fmt::Display for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// Anything a client can observe on its socket.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A text frame.
    Text(Frame),
    /// A binary frame (the protocol never sends one).
    Binary(Vec<u8>),
    /// A close frame, with its code and reason if it had them.
    Close(Option<(u16, String)>),
    /// The connection ended; the text says how.
    Ended(String),
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Text(frame) => write!(f, "text {}", frame.raw),
            Event::Binary(bytes) => write!(f, "binary frame of {} bytes", bytes.len()),
            Event::Close(Some((code, reason))) => write!(f, "close {code} {reason:?}"),
            Event::Close(None) => write!(f, "close without a code"),
            Event::Ended(how) => write!(f, "connection ended ({how})"),
        }
    }
}

/// What a join produced: every frame before `ready`, and `ready`.
#[derive(Debug, Clone)]
pub struct Joined {
    /// Every frame after the join frame and before `ready`; the last is the user's own `joined`.
    pub frames: Vec<Frame>,
    /// The `ready` frame.
    pub ready: Frame,
}

impl Joined {
    /// The leading `joined` frames (the users already in the room), own `joined` excluded.
    pub fn roster(&self) -> Vec<String> {
        let before_own = &self.frames[..self.frames.len() - 1];
        before_own
            .iter()
            .map_while(|frame| frame.joined().map(str::to_owned))
            .collect()
    }

    /// The chat messages replayed, in order.
    pub fn history(&self) -> Vec<Frame> {
        self.frames
            .iter()
            .filter(|frame| frame.is_chat())
            .cloned()
            .collect()
    }
}

/// A frame to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// A text frame.
    Text(String),
    /// A binary frame.
    Binary(Vec<u8>),
}

/// A WebSocket chat client.
#[derive(Debug)]
pub struct Client {
    session: Session,
    /// Events received but not yet handed out (read by [`Client::chat`] while it waited).
    backlog: VecDeque<Event>,
    name: Option<String>,
    /// Who this client is in error messages.
    pub label: String,
    /// Every text frame received so far, in arrival order.
    pub log: Vec<Frame>,
}

/// Why a WebSocket handshake was refused: the HTTP status and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The status.
    pub status: u16,
    /// The body as text.
    pub body: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "handshake refused: {} {:?}", self.status, self.body)
    }
}

impl std::error::Error for Refused {}

impl Client {
    /// Opens a WebSocket to `url`, sending `headers` with the upgrade request.
    ///
    /// # Errors
    /// A [`Refused`] if the server answers the upgrade with an HTTP error; other errors for
    /// connection failures and timeouts.
    pub async fn connect(url: &str, headers: &[(&str, &str)], label: &str) -> Result<Client> {
        let options = SessionOptions {
            headers: headers
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                .collect(),
            handshake_timeout: FRAME_TIMEOUT,
            ..SessionOptions::default()
        };
        let session = match Session::connect(url, &options).await {
            Ok(session) => session,
            Err(edgechat_client::Error::Refused { status, body }) => {
                return Err(anyhow::Error::new(Refused { status, body }))
            }
            Err(error) => return Err(anyhow!("{label}: connecting to {url}: {error}")),
        };
        Ok(Client {
            session,
            backlog: VecDeque::new(),
            name: None,
            label: label.to_owned(),
            log: Vec::new(),
        })
    }

    /// The name this client joined with, once it has joined.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Sends a text frame as is.
    ///
    /// # Errors
    /// If the socket is broken.
    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        self.session
            .send_text(text)
            .await
            .with_context(|| format!("{}: sending {text:?}", self.label))
    }

    /// Sends a JSON value as a text frame.
    ///
    /// # Errors
    /// If the socket is broken.
    pub async fn send_json(&mut self, value: &Value) -> Result<()> {
        self.send_text(&value.to_string()).await
    }

    /// Sends a binary frame.
    ///
    /// # Errors
    /// If the socket is broken.
    pub async fn send_binary(&mut self, bytes: &[u8]) -> Result<()> {
        self.session
            .send_binary(bytes)
            .await
            .with_context(|| format!("{}: sending a binary frame", self.label))
    }

    /// Starts the closing handshake with `code` and `reason`.
    ///
    /// # Errors
    /// If the socket is broken.
    pub async fn send_close(&mut self, code: u16, reason: &str) -> Result<()> {
        self.session
            .send_close(code, reason)
            .await
            .with_context(|| format!("{}: sending close", self.label))
    }

    /// The next event, waiting at most `timeout`; `None` if nothing came.
    ///
    /// # Errors
    /// Never for a closed connection (that is an [`Event`]); only for misuse.
    pub async fn next_event_within(&mut self, timeout: Duration) -> Result<Option<Event>> {
        if let Some(event) = self.backlog.pop_front() {
            return Ok(Some(event));
        }
        self.read_socket(timeout).await
    }

    async fn read_socket(&mut self, timeout: Duration) -> Result<Option<Event>> {
        let event = match self.session.next_within(timeout).await {
            None => return Ok(None),
            Some(RawEvent::Text(text)) => {
                let frame = Frame::new(text);
                self.log.push(frame.clone());
                Event::Text(frame)
            }
            Some(RawEvent::Binary(bytes)) => Event::Binary(bytes),
            Some(RawEvent::Close(close)) => Event::Close(close),
            Some(RawEvent::Ended(how)) => Event::Ended(how),
        };
        Ok(Some(event))
    }

    /// The next event, waiting at most [`FRAME_TIMEOUT`].
    ///
    /// # Errors
    /// If nothing arrives in time.
    pub async fn next_event(&mut self) -> Result<Event> {
        self.next_event_within(FRAME_TIMEOUT)
            .await?
            .ok_or_else(|| anyhow!("{}: nothing received within {FRAME_TIMEOUT:?}", self.label))
    }

    /// The next text frame.
    ///
    /// # Errors
    /// If something else or nothing arrives.
    pub async fn next(&mut self) -> Result<Frame> {
        match self.next_event().await? {
            Event::Text(frame) => Ok(frame),
            other => bail!("{}: expected a text frame, got {other}", self.label),
        }
    }

    /// Fails if anything new arrives on the socket within `timeout` (frames already received
    /// and queued do not count; what arrives is queued for [`Client::next`]).
    ///
    /// # Errors
    /// Names the unexpected event.
    pub async fn expect_silence(&mut self, timeout: Duration, why: &str) -> Result<()> {
        match self.read_socket(timeout).await? {
            None => Ok(()),
            Some(event) => {
                let text = event.to_string();
                self.backlog.push_back(event);
                bail!("{}: expected nothing ({why}), got {text}", self.label)
            }
        }
    }

    /// Joins with the frame `{"name": name}` and reads the join sequence through `ready`.
    ///
    /// # Errors
    /// If the sequence does not end with this user's own `joined` and then `ready`.
    pub async fn join(&mut self, name: &str) -> Result<Joined> {
        self.join_with(&json!({ "name": name }), name).await
    }

    /// Joins with an arbitrary join frame, expecting to be called `expected_name`.
    ///
    /// # Errors
    /// If the sequence does not end with `{"joined": expected_name}` (then the room's
    /// `topic`, if it has one) and then `ready`, or contains an error frame.
    pub async fn join_with(&mut self, join_frame: &Value, expected_name: &str) -> Result<Joined> {
        self.send_json(join_frame).await?;
        let mut frames: Vec<Frame> = Vec::new();
        loop {
            let frame = self
                .next()
                .await
                .with_context(|| format!("{}: reading the join sequence", self.label))?;
            if let Some(error) = frame.error() {
                bail!("{}: error during join: {error:?}", self.label);
            }
            if frame.is_ready() {
                // A room with a topic says it last, right before ready (an extension).
                let own = frames
                    .iter()
                    .rev()
                    .find(|f| f.str("topic").is_none())
                    .and_then(Frame::joined);
                if own != Some(expected_name) {
                    bail!(
                        "{}: the frame before ready must be {{\"joined\":{expected_name:?}}}, got {:?}",
                        self.label,
                        frames.last().map(|f| f.raw.as_str())
                    );
                }
                self.name = Some(expected_name.to_owned());
                return Ok(Joined {
                    frames,
                    ready: frame,
                });
            }
            frames.push(frame);
        }
    }

    /// Sends a chat message and waits for its own echo, which it returns.
    ///
    /// Frames from others that arrive meanwhile stay queued for [`Client::next`]. Callers
    /// keep within the burst (four actions per IP): a frame sent while the limiter's answer
    /// to the previous one is outstanding waits for it (PROTOCOL.md), so any error is a
    /// failure.
    ///
    /// # Errors
    /// On an error frame, a close, or no echo.
    pub async fn chat(&mut self, text: &str) -> Result<Frame> {
        let name = self
            .name
            .clone()
            .ok_or_else(|| anyhow!("{}: chat before join", self.label))?;
        self.send_json(&json!({ "message": text })).await?;
        loop {
            let event = self.read_socket(FRAME_TIMEOUT).await?.ok_or_else(|| {
                anyhow!(
                    "{}: no echo of {text:?} within {FRAME_TIMEOUT:?}",
                    self.label
                )
            })?;
            let Event::Text(frame) = event else {
                bail!(
                    "{}: waiting for the echo of {text:?}, got {event}",
                    self.label
                );
            };
            if let Some(error) = frame.error() {
                bail!("{}: sending {text:?} got error {error:?}", self.label);
            }
            if frame.is_chat()
                && frame.str("name") == Some(&name)
                && frame.str("message") == Some(text)
            {
                return Ok(frame);
            }
            self.backlog.push_back(Event::Text(frame));
        }
    }

    /// Fails if a chat message arrives within `timeout`; other frames are queued.
    ///
    /// # Errors
    /// Names the unexpected message.
    pub async fn expect_no_chat(&mut self, timeout: Duration, why: &str) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read_socket(left).await? {
                None => return Ok(()),
                Some(Event::Text(frame)) if frame.is_chat() => {
                    bail!("{}: expected no message ({why}), got {frame}", self.label)
                }
                Some(event) => self.backlog.push_back(event),
            }
        }
    }

    /// Sends `outgoing` and returns the text of the error frame it draws.
    ///
    /// Non-error frames that arrive meanwhile stay queued. The rate-limit error is a failure
    /// unless `expected` accepts it: a frame sent while the limiter's answer to the previous
    /// one is outstanding waits for it (PROTOCOL.md), so only a spent burst draws it.
    ///
    /// # Errors
    /// If no error frame arrives, the socket closes first, or it is an unexpected rate-limit
    /// error.
    pub async fn error_reply(
        &mut self,
        outgoing: &Outgoing,
        expected: impl Fn(&str) -> bool,
    ) -> Result<String> {
        match outgoing {
            Outgoing::Text(text) => self.send_text(text).await?,
            Outgoing::Binary(bytes) => self.send_binary(bytes).await?,
        }
        loop {
            let event = self.read_socket(FRAME_TIMEOUT).await?.ok_or_else(|| {
                anyhow!(
                    "{}: no error in answer to {outgoing:?} within {FRAME_TIMEOUT:?}",
                    self.label
                )
            })?;
            let Event::Text(frame) = event else {
                bail!(
                    "{}: waiting for an error answering {outgoing:?}, got {event}",
                    self.label
                );
            };
            match frame.error() {
                Some(ERROR_RATE_LIMITED) if !expected(ERROR_RATE_LIMITED) => bail!(
                    "{}: {outgoing:?} was refused as rate limited within the burst",
                    self.label
                ),
                Some(error) => return Ok(error.to_owned()),
                None => self.backlog.push_back(Event::Text(frame)),
            }
        }
    }

    /// Reads the socket until `done(log)` holds, keeping what it read queued for
    /// [`Client::next`].
    ///
    /// # Errors
    /// If the socket closes or `done` does not hold in time.
    pub async fn wait_for_log(
        &mut self,
        what: &str,
        done: impl Fn(&[Frame]) -> bool,
    ) -> Result<()> {
        while !done(&self.log) {
            match self.read_socket(FRAME_TIMEOUT).await? {
                Some(event @ Event::Text(_)) => self.backlog.push_back(event),
                Some(other) => bail!("{}: waiting for {what}, got {other}", self.label),
                None => bail!(
                    "{}: waiting for {what}: nothing within {FRAME_TIMEOUT:?}",
                    self.label
                ),
            }
        }
        Ok(())
    }

    /// The chat messages received so far, in order.
    pub fn chats(&self) -> Vec<Frame> {
        self.log.iter().filter(|f| f.is_chat()).cloned().collect()
    }

    /// Reads text frames until one satisfies `matches`, returning the frames before it too.
    ///
    /// # Errors
    /// If the socket closes or nothing matching arrives in time.
    pub async fn until(
        &mut self,
        what: &str,
        matches: impl Fn(&Frame) -> bool,
    ) -> Result<(Vec<Frame>, Frame)> {
        let mut before = Vec::new();
        loop {
            let frame = self
                .next()
                .await
                .with_context(|| format!("{}: waiting for {what}", self.label))?;
            if matches(&frame) {
                return Ok((before, frame));
            }
            before.push(frame);
        }
    }

    /// Drops the connection without a closing handshake (the TCP connection is shut down).
    pub async fn drop_abruptly(self) {
        self.session.abort().await;
    }

    /// Closes politely (1000) and waits briefly for the server's close frame.
    pub async fn close(self) {
        self.session.close(1000, "bye").await;
    }
}
