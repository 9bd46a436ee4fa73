//! One user's membership of one room: reconnect, resume, de-duplication, acknowledged sends.
//!
//! A task (the actor) owns the WebSocket and all delivery state; [`Room`] handles talk to it
//! over a channel and read a snapshot of its state, and [`Events`] receives what it emits.
//! The rules are the JavaScript client's (`clients/js/edgechat.js`), line for line where
//! they matter:
//!
//! - Delivery: every chat frame carries the room's gap-free id. The actor remembers the
//!   highest id it delivered, rejoins with `since` set to it, and drops any frame at or
//!   below it, so the application sees each message once, in id order. When the server
//!   cannot fill the gap it says `recovered: false`; that is an [`Event::Gap`].
//! - Acknowledgement: at most one chat frame is in flight per connection. The server answers
//!   a session's frames in order, but a refusal is sent at once while an accepted message is
//!   broadcast only after its storage write, so with several frames in flight a later
//!   frame's refusal could overtake an earlier frame's echo. With one, the first error after
//!   the frame is its refusal, and its echo is the first chat message from our own name (as
//!   the server spelled it in our `joined`) with the same text and an id above every id seen
//!   when it was sent. A frame in flight when the socket drops is looked for in the resume
//!   replay; if it is not there, it is sent again.
//! - Idempotency: each message carries a random `key`, the same in every resend
//!   (PROTOCOL.md, "Idempotent sends"). The frame from a socket given up on may still reach
//!   the room after the replay (a server that stalled); the room then stores it once and
//!   answers the resend with it. Against a server that echoes keys, the echo is the message
//!   from our name with our key.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::http::HttpClient;
use crate::raw::{Event as RawEvent, Session, SessionOptions};
use crate::token::{refresh_delay, token_expiry};
use crate::url::{encode_component, BaseUrl};
use crate::{ChatMessage, ConnectOptions, Event, State};

/// The server's refusal while a session's rate limiter holds it back (PROTOCOL.md).
pub const ERROR_RATE_LIMITED: &str = "Your IP is being rate-limited, please try again later.";
/// The server's refusal while too many messages wait for storage.
pub const ERROR_ROOM_BUSY: &str = "Room is busy, please try again later.";
/// The close code for a name the server refuses (while joining) or a frame over its limit.
const CLOSE_TOO_BIG: u16 = 1009;
/// The close code of a connection whose token expired without a refresh.
pub const CLOSE_TOKEN_EXPIRED: u16 = 4001;

/// A handle on a room membership; cheap to clone, all clones drive the same connection.
///
/// Dropping every handle closes the membership as [`Room::close`] does.
#[derive(Debug, Clone)]
pub struct Room {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    commands: mpsc::UnboundedSender<Command>,
    shared: Arc<Mutex<Snapshot>>,
    http: HttpClient,
    token_provider: Option<crate::TokenProvider>,
    room: String,
    /// Where [`Room::load_older`] goes on; held across the request so pages come in turn.
    older: tokio::sync::Mutex<Older>,
}

/// The stream of [`Event`]s of one [`Room`], in the order they happened.
///
/// Unbounded on purpose: a bounded queue would have to either stall the socket (and the
/// server closes clients that fall behind) or drop messages, and this client promises every
/// message. Read it, or drop it to discard events.
#[derive(Debug)]
pub struct Events {
    receiver: mpsc::UnboundedReceiver<Event>,
}

impl Events {
    /// The next event; `None` once the room is closed and every event has been read.
    pub async fn next(&mut self) -> Option<Event> {
        self.receiver.recv().await
    }

    /// The next event if one is waiting.
    pub fn try_next(&mut self) -> Option<Event> {
        self.receiver.try_recv().ok()
    }
}

/// A page from [`Room::load_older`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OlderPage {
    /// The messages, oldest first.
    pub messages: Vec<ChatMessage>,
    /// Whether older messages remain in the server's retained history.
    pub has_more: bool,
}

#[derive(Debug, Clone, Copy)]
enum Older {
    NotStarted,
    Before(u64),
    Done,
}

#[derive(Debug)]
enum Command {
    Send {
        text: String,
        reply: oneshot::Sender<Result<u64>>,
    },
    Close {
        done: oneshot::Sender<()>,
    },
    ReconnectNow,
}

/// What the handles can read without asking the actor.
#[derive(Debug, Clone)]
struct Snapshot {
    state: State,
    roster: Vec<(String, usize)>,
    last_id: u64,
    oldest_id: Option<u64>,
    recovered: Option<bool>,
    pending_sends: usize,
    join_name: Option<String>,
}

/// Joins `options.room` and keeps the membership alive until [`Room::close`].
///
/// Returns at once; the connection is opened by a task on the current tokio runtime, and
/// its progress shows as [`Event::State`] and [`Event::Ready`].
///
/// # Errors
/// [`Error::InvalidUrl`] if `options.url` does not parse, or is `https`/`wss` without
/// [`ConnectOptions::tls`].
///
/// # Panics
/// Outside a tokio runtime.
pub fn connect(options: ConnectOptions) -> Result<(Room, Events)> {
    let base = BaseUrl::parse(&options.url)?;
    let http =
        HttpClient::new(&options.url, options.tls.clone())?.with_token(options.token.clone());
    let (commands, command_receiver) = mpsc::unbounded_channel();
    let (events, receiver) = mpsc::unbounded_channel();
    let last_id = options.since.unwrap_or(0);
    let shared = Arc::new(Mutex::new(Snapshot {
        state: State::Connecting,
        roster: Vec::new(),
        last_id,
        oldest_id: None,
        recovered: None,
        pending_sends: 0,
        join_name: None,
    }));
    let (fresh_tokens_sender, fresh_tokens) = mpsc::unbounded_channel();
    let actor = Actor {
        base,
        fresh_tokens,
        fresh_tokens_sender,
        generation: 0,
        session_token: None,
        commands: command_receiver,
        events,
        shared: shared.clone(),
        queue: VecDeque::new(),
        state: State::Connecting,
        last_id,
        oldest_id: None,
        ever_ready: last_id > 0,
        attempt: 0,
        rate_limit_streak: 0,
        join_name: None,
        recovered: None,
        retry_at: None,
        close_waiters: Vec::new(),
        options: options.clone(),
    };
    tokio::spawn(actor.run());
    let room = Room {
        inner: Arc::new(Inner {
            commands,
            shared,
            http,
            token_provider: options.token_provider,
            room: options.room,
            older: tokio::sync::Mutex::new(Older::NotStarted),
        }),
    };
    Ok((room, Events { receiver }))
}

impl Room {
    fn snapshot(&self) -> MutexGuard<'_, Snapshot> {
        self.inner
            .shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sends a chat message; returns its id once the server broadcast it (it is durable then).
    ///
    /// Queued while not connected; retried while rate limited or the room is busy.
    ///
    /// # Errors
    /// [`Error::Server`] with the server's refusal (`Message too long.`, or the close reason
    /// of a frame over its size limit); [`Error::Closed`] if the client is (or gets) closed
    /// first; [`Error::QueueFull`] past [`ConnectOptions::max_queued_sends`].
    pub async fn send(&self, text: impl Into<String>) -> Result<u64> {
        let (reply, answer) = oneshot::channel();
        let text = text.into();
        self.inner
            .commands
            .send(Command::Send { text, reply })
            .map_err(|_| Error::Closed("The client is closed.".into()))?;
        answer
            .await
            .unwrap_or_else(|_| Err(Error::Closed("The client is closed.".into())))
    }

    /// Leaves the room: rejects unacknowledged sends and closes the socket, waiting for the
    /// closing handshake at most [`ConnectOptions::close_timeout`].
    pub async fn close(&self) {
        let (done, closed) = oneshot::channel();
        if self.inner.commands.send(Command::Close { done }).is_ok() {
            let _ = closed.await;
        }
    }

    /// Skips the reconnect wait if the client is waiting to reconnect (say, when the
    /// network comes back).
    pub fn reconnect_now(&self) {
        let _ = self.inner.commands.send(Command::ReconnectNow);
    }

    /// The page of messages before the oldest this client has delivered (or before the
    /// previous page), oldest first, from the history route.
    ///
    /// Calls made at once are answered one page after the other.
    ///
    /// # Errors
    /// [`Error::Http`] with the server's answer if it refuses; transport errors.
    pub async fn load_older(&self, limit: u32) -> Result<OlderPage> {
        let mut cursor = self.inner.older.lock().await;
        let before = match *cursor {
            Older::Done => {
                return Ok(OlderPage {
                    messages: Vec::new(),
                    has_more: false,
                })
            }
            Older::Before(id) => Some(id),
            Older::NotStarted => {
                let snapshot = self.snapshot();
                snapshot
                    .oldest_id
                    .or((snapshot.last_id > 0).then(|| snapshot.last_id + 1))
            }
        };
        let page = self
            .http_now()
            .await
            .history(&self.inner.room, before, limit)
            .await?;
        *cursor = match page.next_before {
            Some(id) => Older::Before(id),
            None => Older::Done,
        };
        let mut messages = page.messages;
        messages.reverse();
        Ok(OlderPage {
            messages,
            has_more: page.next_before.is_some(),
        })
    }

    /// The names of the users joined now, from the presence route.
    ///
    /// # Errors
    /// [`Error::Http`] with the server's answer if it refuses; transport errors.
    pub async fn presence(&self) -> Result<Vec<String>> {
        self.http_now().await.presence(&self.inner.room).await
    }

    /// The HTTP client with the provider's fresh token, if there is a provider.
    async fn http_now(&self) -> std::borrow::Cow<'_, HttpClient> {
        let http = &self.inner.http;
        match &self.inner.token_provider {
            Some(provider) => {
                let token = provider.fresh(http.timeout).await;
                std::borrow::Cow::Owned(http.clone().with_token(token))
            }
            None => std::borrow::Cow::Borrowed(http),
        }
    }

    /// Publishes `message` as `name` in this room over HTTP with the admin token; returns
    /// its id once durable.
    ///
    /// # Errors
    /// [`Error::Http`] with the server's answer (`401 Unauthorized`...).
    pub async fn publish(&self, admin_token: &str, name: &str, message: &str) -> Result<u64> {
        self.inner
            .http
            .publish(&self.inner.room, admin_token, name, message)
            .await
    }

    /// The HTTP client for this server (with the token, if any).
    pub fn http(&self) -> &HttpClient {
        &self.inner.http
    }

    /// The room this client is in.
    pub fn room(&self) -> &str {
        &self.inner.room
    }

    /// connecting, live, reconnecting or closed.
    pub fn state(&self) -> State {
        self.snapshot().state
    }

    /// The name the server knows us by, once joined.
    pub fn name(&self) -> Option<String> {
        self.snapshot().join_name.clone()
    }

    /// The highest message id delivered so far (0 if none): resume from here.
    pub fn last_id(&self) -> u64 {
        self.snapshot().last_id
    }

    /// The last join's `recovered` flag: `Some(false)` if messages were missed.
    pub fn recovered(&self) -> Option<bool> {
        self.snapshot().recovered
    }

    /// The names in the room now, in roster order, each once.
    pub fn roster(&self) -> Vec<String> {
        self.snapshot()
            .roster
            .iter()
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// The names in the room now, with how many connections each has.
    pub fn roster_counts(&self) -> Vec<(String, usize)> {
        self.snapshot().roster.clone()
    }

    /// Sends waiting for their acknowledgement.
    pub fn pending_sends(&self) -> usize {
        self.snapshot().pending_sends
    }
}

/// A send not yet acknowledged; only the head of the queue is ever in flight.
#[derive(Debug)]
struct Pending {
    text: String,
    /// The idempotency key, the same in every resend (`None` without OS randomness).
    key: Option<String>,
    reply: oneshot::Sender<Result<u64>>,
    /// Sent on the current connection, no answer yet.
    in_flight: bool,
    /// The highest id delivered when it was sent: its echo has a higher one.
    id_at_send: u64,
    /// In flight when a connection dropped: maybe stored, look for it in the replay.
    maybe_stored: bool,
}

/// One connection, from the upgrade to its end.
struct Conn {
    session: Session,
    /// What the join has gathered so far; `None` once `ready` came.
    joining: Option<Joining>,
    join_deadline: Instant,
    send_deadline: Option<Instant>,
    /// When to ask the provider for a fresh token.
    refresh_at: Option<Instant>,
    /// A fresh token waiting to be sent: it goes out when no chat frame is in flight.
    refresh_pending: Option<String>,
    /// A token frame sent and not answered yet: no chat frame goes out meanwhile, so that
    /// the server's answer (`refreshed`, or an error) cannot be taken for a send's.
    refresh_in_flight: Option<String>,
}

/// One record of the room's id sequence: a message, or a change to an earlier one.
enum Record {
    Message(ChatMessage),
    /// `{"deleted": target, "id": id}`, or `{"edited": target, "message": .., "id": id}`.
    Change {
        id: u64,
        event: Event,
    },
}

#[derive(Default)]
struct Joining {
    roster: Vec<(String, usize)>,
    records: Vec<Record>,
    /// The last `joined` before `ready` is our own, spelled as the server has it.
    last_joined: Option<String>,
}

/// What the actor does next.
enum Flow {
    Reconnect,
    Stop,
}

/// The task that owns the connection.
///
/// ```text
///   connect() ──► connecting ──ready──► live ──socket ends──► reconnecting ──ready──► live
///                     │                                        ▲   │
///                     └──────────socket fails──────────────────┘   └─ backoff, open again
///   any state ──close(), or a join the server refuses──► closed (for good)
/// ```
struct Actor {
    options: ConnectOptions,
    base: BaseUrl,
    commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<Event>,
    shared: Arc<Mutex<Snapshot>>,
    /// Fresh tokens from provider calls, tagged with the connection they were asked for.
    fresh_tokens: mpsc::UnboundedReceiver<(u64, Option<String>)>,
    fresh_tokens_sender: mpsc::UnboundedSender<(u64, Option<String>)>,
    /// Counts connections, so that a token asked for an earlier one is not used.
    generation: u64,
    /// The token the server holds for this connection (the URL's, or the last refreshed).
    session_token: Option<String>,
    queue: VecDeque<Pending>,
    state: State,
    last_id: u64,
    oldest_id: Option<u64>,
    /// Whether the next join asks for messages after `last_id` (after a first join, or `since`).
    ever_ready: bool,
    attempt: u32,
    rate_limit_streak: u32,
    join_name: Option<String>,
    recovered: Option<bool>,
    retry_at: Option<Instant>,
    close_waiters: Vec<oneshot::Sender<()>>,
}

impl Actor {
    async fn run(mut self) {
        while let Flow::Reconnect = self.connection().await {
            if let Flow::Stop = self.backoff().await {
                break;
            }
        }
        self.shutdown("closed");
        for waiter in self.close_waiters.drain(..) {
            let _ = waiter.send(());
        }
    }

    fn emit(&self, event: Event) {
        let _ = self.events.send(event);
    }

    fn shared(&self) -> MutexGuard<'_, Snapshot> {
        self.shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Copies the scalar state for the handles (the roster is written where it changes).
    fn sync(&self) {
        let pending = self.queue.len();
        let mut shared = self.shared();
        shared.state = self.state;
        shared.last_id = self.last_id;
        shared.oldest_id = self.oldest_id;
        shared.recovered = self.recovered;
        shared.pending_sends = pending;
        shared.join_name.clone_from(&self.join_name);
    }

    fn set_state(&mut self, state: State) {
        if state == self.state {
            return;
        }
        let previous = self.state;
        self.state = state;
        self.sync();
        self.emit(Event::State { state, previous });
    }

    /// Opens one connection, joins, and runs it until it ends.
    async fn connection(&mut self) -> Flow {
        let join_deadline = Instant::now() + self.options.join_timeout;
        let session_options = SessionOptions {
            headers: self.options.headers.clone(),
            tls: self.options.tls.clone(),
            websocket: None,
            handshake_timeout: self.options.join_timeout,
        };
        self.generation += 1;
        // The token (the provider's, asked now) is part of connecting, so that commands are
        // still taken while the provider thinks.
        let provider = self.options.token_provider.clone();
        let token = self.options.token.clone();
        let limit = self.options.join_timeout;
        let mut path = BaseUrl::room_path(&self.options.room, "websocket");
        let base = self.base.clone();
        let connect = async move {
            let token = match provider {
                Some(provider) => provider.fresh(limit).await,
                None => token,
            };
            if let Some(token) = &token {
                path.push_str("?token=");
                path.push_str(&encode_component(token));
            }
            let session = Session::connect(&base.ws_url(&path), &session_options).await?;
            Ok::<_, Error>((session, token))
        };
        tokio::pin!(connect);
        let mut session = loop {
            tokio::select! {
                connected = &mut connect => match connected {
                    Ok((session, token)) => {
                        self.session_token = token;
                        break session;
                    }
                    Err(error) => return self.connect_failed(&error),
                },
                command = self.commands.recv() => {
                    if let Some(Flow::Stop) = self.command(command, None).await {
                        return Flow::Stop;
                    }
                }
            }
        };
        let mut join = serde_json::json!({ "name": self.options.name });
        if self.ever_ready {
            join["since"] = self.last_id.into();
        }
        if session.send_text(join.to_string()).await.is_err() {
            return Flow::Reconnect;
        }
        let mut conn = Conn {
            session,
            joining: Some(Joining::default()),
            join_deadline,
            send_deadline: None,
            refresh_at: None,
            refresh_pending: None,
            refresh_in_flight: None,
        };
        let flow = self.connected(&mut conn).await;
        if let Some(head) = self.queue.front_mut() {
            if head.in_flight {
                head.in_flight = false;
                head.maybe_stored = true;
            }
        }
        self.retry_at = None;
        self.sync();
        flow
    }

    fn connect_failed(&mut self, error: &Error) -> Flow {
        // A room name too long or an id this server did not mint: asking again cannot help.
        if let Error::Refused {
            status: 400 | 404,
            body,
        } = error
        {
            let message = if body.is_empty() {
                error.to_string()
            } else {
                body.clone()
            };
            self.emit(Event::Error {
                message: message.clone(),
                fatal: true,
            });
            self.shutdown(&message);
            return Flow::Stop;
        }
        self.emit(Event::Error {
            message: format!("connecting: {error}"),
            fatal: false,
        });
        Flow::Reconnect
    }

    /// Runs a connected socket until it ends.
    async fn connected(&mut self, conn: &mut Conn) -> Flow {
        loop {
            let wake = [
                conn.joining.as_ref().map(|_| conn.join_deadline),
                conn.send_deadline,
                self.retry_at,
                conn.refresh_at,
            ]
            .into_iter()
            .flatten()
            .min();
            let flow = tokio::select! {
                event = conn.session.next() => self.socket_event(conn, event).await,
                command = self.commands.recv() => self.command(command, Some(conn)).await,
                Some((generation, token)) = self.fresh_tokens.recv() => {
                    self.fresh_token(conn, generation, token);
                    None
                }
                () = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {
                    self.timers(conn)
                }
            };
            match flow {
                Some(Flow::Stop) => {
                    let session = &mut conn.session;
                    let _ = tokio::time::timeout(self.options.close_timeout, async {
                        let _ = session.send_close(1000, "leaving").await;
                        while let Some(event) = session.next().await {
                            if !matches!(event, RawEvent::Text(_) | RawEvent::Binary(_)) {
                                break;
                            }
                        }
                    })
                    .await;
                    return Flow::Stop;
                }
                Some(Flow::Reconnect) => return Flow::Reconnect,
                None => {}
            }
            self.pump(conn).await;
            self.sync();
        }
    }

    fn timers(&mut self, conn: &mut Conn) -> Option<Flow> {
        let now = Instant::now();
        if conn.joining.is_some() && now >= conn.join_deadline {
            self.emit(Event::Error {
                message: "join timeout".into(),
                fatal: false,
            });
            return Some(Flow::Reconnect);
        }
        if conn.send_deadline.is_some_and(|deadline| now >= deadline) {
            // No answer: the path is dead without a close. Replace it; the resume settles it.
            conn.send_deadline = None;
            self.emit(Event::Error {
                message: "no answer to a send".into(),
                fatal: false,
            });
            return Some(Flow::Reconnect);
        }
        if self.retry_at.is_some_and(|at| now >= at) {
            self.retry_at = None;
        }
        if conn.refresh_at.is_some_and(|at| now >= at) {
            conn.refresh_at = None;
            self.ask_for_token();
        }
        None
    }

    /// With a provider, when to ask it for a token fresher than the connection's: see
    /// [`refresh_delay`]. The token's `exp` is read only to schedule this.
    fn refresh_time(&self) -> Option<Instant> {
        self.options.token_provider.as_ref()?;
        let expires_at = token_expiry(self.session_token.as_deref()?)?;
        let left = expires_at
            .duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO);
        Some(Instant::now() + refresh_delay(left, self.options.refresh_before))
    }

    /// Asks the provider for a fresh token in a task of its own (the connection goes on
    /// meanwhile); the answer comes back through `fresh_tokens`.
    fn ask_for_token(&self) {
        let Some(provider) = self.options.token_provider.clone() else {
            return;
        };
        let (generation, limit) = (self.generation, self.options.join_timeout);
        let answers = self.fresh_tokens_sender.clone();
        tokio::spawn(async move {
            let _ = answers.send((generation, provider.fresh(limit).await));
        });
    }

    /// A fresh token from the provider: queued for the connection it was asked for.
    fn fresh_token(&mut self, conn: &mut Conn, generation: u64, token: Option<String>) {
        if generation != self.generation || conn.joining.is_some() {
            return;
        }
        match token {
            Some(token) if Some(&token) != self.session_token.as_ref() => {
                conn.refresh_pending = Some(token);
            }
            // Nothing newer yet: ask again later (still before the expiry if there is time).
            _ => conn.refresh_at = self.refresh_time(),
        }
    }

    async fn command(&mut self, command: Option<Command>, conn: Option<&mut Conn>) -> Option<Flow> {
        match command {
            Some(Command::Send { text, reply }) => {
                if self.state == State::Closed {
                    let _ = reply.send(Err(Error::Closed("The client is closed.".into())));
                } else if self.queue.len() >= self.options.max_queued_sends {
                    let _ = reply.send(Err(Error::QueueFull));
                } else {
                    self.queue.push_back(Pending {
                        text,
                        key: send_key(),
                        reply,
                        in_flight: false,
                        id_at_send: 0,
                        maybe_stored: false,
                    });
                    if let Some(conn) = conn {
                        self.pump(conn).await;
                    }
                    self.sync();
                }
                None
            }
            Some(Command::Close { done }) => {
                self.close_waiters.push(done);
                self.shutdown("closed by the application");
                Some(Flow::Stop)
            }
            // Every handle dropped: nobody can send or read any more.
            None => {
                self.shutdown("closed: every handle was dropped");
                Some(Flow::Stop)
            }
            Some(Command::ReconnectNow) => None,
        }
    }

    async fn socket_event(&mut self, conn: &mut Conn, event: Option<RawEvent>) -> Option<Flow> {
        match event {
            Some(RawEvent::Text(text)) => self.frame(conn, &text),
            Some(RawEvent::Binary(_)) => None,
            Some(RawEvent::Close(Some((code, reason)))) => {
                Some(self.closed_by_server(conn, code, reason))
            }
            Some(RawEvent::Close(None) | RawEvent::Ended(_)) | None => Some(Flow::Reconnect),
        }
    }

    /// A close that reconnecting cannot mend: a fatal error with the server's `reason` (or
    /// `fallback` when it gave none), then the client stops.
    fn stop_on_refusal(&mut self, reason: String, fallback: &str) -> Flow {
        let message = if reason.is_empty() {
            fallback.to_owned()
        } else {
            reason
        };
        self.emit(Event::Error {
            message: message.clone(),
            fatal: true,
        });
        self.shutdown(&message);
        Flow::Stop
    }

    fn closed_by_server(&mut self, conn: &Conn, code: u16, reason: String) -> Flow {
        if code == CLOSE_TOKEN_EXPIRED && self.options.token_provider.is_none() {
            // The same token again would be refused: only the application can sign in anew.
            return self.stop_on_refusal(reason, "Token expired.");
        }
        if code != CLOSE_TOO_BIG {
            return Flow::Reconnect;
        }
        if conn.joining.is_some() {
            // 1009 before `ready` refuses the name: rejoining cannot help.
            return self.stop_on_refusal(reason, "The server refused the name.");
        }
        if self.queue.front().is_some_and(|head| head.in_flight) {
            // The frame in flight was over the server's frame size limit: refused, not stored.
            if let Some(head) = self.queue.pop_front() {
                let message = if reason.is_empty() {
                    "Message too big.".to_owned()
                } else {
                    reason
                };
                let _ = head.reply.send(Err(Error::Server(message)));
            }
        }
        Flow::Reconnect
    }

    fn frame(&mut self, conn: &mut Conn, text: &str) -> Option<Flow> {
        let Ok(data) = serde_json::from_str::<Value>(text) else {
            return None;
        };
        if let Some(error) = data.get("error").and_then(Value::as_str) {
            return self.server_error(conn, error.to_owned());
        }
        if data.get("refreshed") == Some(&Value::Bool(true)) {
            if let Some(token) = conn.refresh_in_flight.take() {
                let expires_at = token_expiry(&token);
                self.session_token = Some(token);
                conn.refresh_at = self.refresh_time();
                self.emit(Event::Refreshed { expires_at });
            }
            return None;
        }
        if let Some(name) = data.get("joined").and_then(Value::as_str) {
            match &mut conn.joining {
                Some(joining) => {
                    add_name(&mut joining.roster, name);
                    joining.last_joined = Some(name.to_owned());
                }
                None => {
                    add_name(&mut self.shared().roster, name);
                    self.emit(Event::Join {
                        name: name.to_owned(),
                    });
                    self.emit_roster();
                }
            }
        } else if let Some(name) = data.get("quit").and_then(Value::as_str) {
            match &mut conn.joining {
                Some(joining) => remove_name(&mut joining.roster, name),
                None => {
                    remove_name(&mut self.shared().roster, name);
                    self.emit(Event::Quit {
                        name: name.to_owned(),
                    });
                    self.emit_roster();
                }
            }
        } else if data.get("ready") == Some(&Value::Bool(true)) {
            if let Some(joining) = conn.joining.take() {
                let recovered = data.get("recovered").and_then(Value::as_bool);
                self.ready(conn, joining, recovered);
            }
        } else if let Some(topic) = data.get("topic").and_then(Value::as_str) {
            self.emit(Event::Topic {
                topic: topic.to_owned(),
            });
        } else if let Some(record) = record_of(&data) {
            match &mut conn.joining {
                Some(joining) => joining.records.push(record),
                None => self.deliver(conn, record),
            }
        }
        None
    }

    fn emit_roster(&self) {
        let roster = self.shared().roster.clone();
        self.emit(Event::Roster { roster });
    }

    fn ready(&mut self, conn: &mut Conn, joining: Joining, recovered: Option<bool>) {
        let resumed = self.ever_ready;
        self.ever_ready = true;
        self.attempt = 0;
        self.rate_limit_streak = 0;
        self.recovered = recovered;
        self.shared().roster = joining.roster;
        self.join_name = joining.last_joined;
        if recovered == Some(false) {
            // Messages after our last id are gone from the server; what it sent instead
            // starts a new stretch (after a lost data file its ids may even start again).
            self.emit(Event::Gap {
                since: self.last_id,
            });
            self.last_id = 0;
        }
        for record in joining.records {
            self.deliver(conn, record);
        }
        if let Some(head) = self.queue.front_mut() {
            // In flight when the last socket dropped and not in the replay: sent again, with
            // its key, so that the room stores it once should the first copy still arrive.
            head.maybe_stored = false;
        }
        self.set_state(State::Live);
        self.emit_roster();
        self.emit(Event::Ready { recovered, resumed });
        conn.refresh_at = self.refresh_time();
    }

    fn deliver(&mut self, conn: &mut Conn, record: Record) {
        let message = match record {
            Record::Message(message) => message,
            Record::Change { id, event } => {
                if id > self.last_id {
                    self.last_id = id;
                    self.emit(event);
                }
                return;
            }
        };
        if let Some(id) = message.id {
            if id <= self.last_id {
                return;
            }
            self.last_id = id;
            if self.oldest_id.is_none_or(|oldest| id < oldest) {
                self.oldest_id = Some(id);
            }
        }
        let acknowledges = self.queue.front().is_some_and(|head| {
            let ours = Some(&message.name) == self.join_name.as_ref();
            match (&head.key, &message.key) {
                // Our key is ours alone: the message is the head's, however it reached us.
                (Some(key), Some(echoed)) => ours && key == echoed,
                // A server without keys: our name and text, and an id above those seen.
                _ => {
                    ours && message.message == head.text
                        && (head.in_flight || head.maybe_stored)
                        && message.id.is_none_or(|id| id > head.id_at_send)
                }
            }
        });
        let id = message.id;
        self.emit(Event::Message(message));
        if acknowledges {
            if let Some(head) = self.queue.pop_front() {
                conn.send_deadline = None;
                self.rate_limit_streak = 0;
                let _ = head.reply.send(Ok(id.unwrap_or(0)));
            }
        }
    }

    fn server_error(&mut self, conn: &mut Conn, text: String) -> Option<Flow> {
        let retryable = text == ERROR_RATE_LIMITED || text == ERROR_ROOM_BUSY;
        if conn.joining.is_some() {
            if retryable {
                // A join refused for a passing reason: a new connection after the backoff.
                self.emit(Event::Error {
                    message: text,
                    fatal: false,
                });
                return Some(Flow::Reconnect);
            }
            // Refused to join (a name too long, or worse): rejoining cannot help.
            self.emit(Event::Error {
                message: text.clone(),
                fatal: true,
            });
            self.shutdown(&text);
            return Some(Flow::Stop);
        }
        if conn.refresh_in_flight.take().is_some() {
            // No chat frame is in flight with a token frame: the refusal is the refresh's.
            // The connection lives until its token expires, then reconnects with a fresh one.
            self.emit(Event::Error {
                message: format!("Token refresh refused: {text}"),
                fatal: false,
            });
            return None;
        }
        let in_flight = self.queue.front().is_some_and(|head| head.in_flight);
        if !in_flight {
            self.emit(Event::Error {
                message: text,
                fatal: false,
            });
            return None;
        }
        conn.send_deadline = None;
        if retryable {
            if let Some(head) = self.queue.front_mut() {
                head.in_flight = false;
            }
            let delay = self.rate_limit_delay();
            self.retry_at = Some(Instant::now() + delay);
            self.emit(Event::RateLimited {
                message: text,
                retry_in: delay,
            });
        } else if let Some(head) = self.queue.pop_front() {
            let _ = head.reply.send(Err(Error::Server(text)));
        }
        None
    }

    /// Short first, doubling up to twice the limiter's cost per action, half jittered.
    fn rate_limit_delay(&mut self) -> Duration {
        let doubled = self
            .options
            .rate_limit_first_retry
            .saturating_mul(1 << self.rate_limit_streak.min(20));
        let base = doubled.min(self.options.rate_limit_cost.saturating_mul(2));
        self.rate_limit_streak += 1;
        base / 2 + base.mul_f64(random_unit() / 2.0)
    }

    /// Sends a fresh token if one waits and no chat frame is in flight; else the head of the
    /// queue if the connection is live and nothing is in flight.
    async fn pump(&mut self, conn: &mut Conn) {
        if self.state != State::Live || conn.joining.is_some() || conn.refresh_in_flight.is_some() {
            return;
        }
        let chat_in_flight = self.queue.front().is_some_and(|head| head.in_flight);
        if !chat_in_flight {
            if let Some(token) = conn.refresh_pending.take() {
                let frame = serde_json::json!({ "token": token }).to_string();
                conn.refresh_in_flight = Some(token);
                // A failed write shows as the end of the socket on the next read.
                let _ = conn.session.send_text(frame).await;
                return;
            }
        }
        if self.retry_at.is_some() {
            return;
        }
        let last_id = self.last_id;
        let Some(head) = self.queue.front_mut() else {
            return;
        };
        if head.in_flight || head.maybe_stored {
            return;
        }
        head.in_flight = true;
        head.id_at_send = last_id;
        let frame = match &head.key {
            Some(key) => serde_json::json!({ "message": head.text, "key": key }),
            None => serde_json::json!({ "message": head.text }),
        }
        .to_string();
        conn.send_deadline = Some(Instant::now() + self.options.send_timeout);
        // A failed write shows as the end of the socket on the next read.
        let _ = conn.session.send_text(frame).await;
    }

    /// Waits before the next connection (full jitter), still taking commands.
    async fn backoff(&mut self) -> Flow {
        if self.state == State::Closed {
            return Flow::Stop;
        }
        let cap = self
            .options
            .reconnect_initial
            .saturating_mul(1 << self.attempt.min(30))
            .min(self.options.reconnect_max);
        let delay = cap.mul_f64(random_unit());
        self.attempt += 1;
        self.set_state(State::Reconnecting);
        self.emit(Event::Reconnect {
            attempt: self.attempt,
            delay,
        });
        let until = Instant::now() + delay;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(until) => return Flow::Reconnect,
                command = self.commands.recv() => match command {
                    Some(Command::ReconnectNow) => {
                        self.attempt = 0;
                        return Flow::Reconnect;
                    }
                    other => {
                        if let Some(Flow::Stop) = self.command(other, None).await {
                            return Flow::Stop;
                        }
                    }
                }
            }
        }
    }

    /// Closes for good: every unacknowledged send is rejected.
    fn shutdown(&mut self, reason: &str) {
        self.set_state(State::Closed);
        self.retry_at = None;
        for send in self.queue.drain(..) {
            let _ = send
                .reply
                .send(Err(Error::Closed(format!("Not sent: {reason}"))));
        }
        self.sync();
    }
}

fn add_name(roster: &mut Vec<(String, usize)>, name: &str) {
    match roster.iter_mut().find(|(n, _)| n == name) {
        Some((_, count)) => *count += 1,
        None => roster.push((name.to_owned(), 1)),
    }
}

fn remove_name(roster: &mut Vec<(String, usize)>, name: &str) {
    if let Some(at) = roster.iter().position(|(n, _)| n == name) {
        roster[at].1 -= 1;
        if roster[at].1 == 0 {
            roster.remove(at);
        }
    }
}

/// Uniform in [0, 1) from the OS (it is only jitter; 0.5 if the OS has none to give).
/// A fresh idempotency key: 128 random bits from the OS, as hex. `None` if the OS has no
/// randomness to give (never weak randomness): the message then goes without a key.
fn send_key() -> Option<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).ok()?;
    Some(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

fn random_unit() -> f64 {
    getrandom::u64().map_or(0.5, |bits| (bits >> 11) as f64 / (1u64 << 53) as f64)
}

/// The record a frame holds, if it is one: a chat message, or a change record (which has an
/// `id` but no `name`).
fn record_of(data: &Value) -> Option<Record> {
    let id = data.get("id").and_then(Value::as_u64);
    if let (Some(target), Some(id)) = (data.get("deleted").and_then(Value::as_u64), id) {
        return Some(Record::Change {
            id,
            event: Event::Deleted { id: target },
        });
    }
    let message = data.get("message").and_then(Value::as_str)?;
    if let (Some(target), Some(id)) = (data.get("edited").and_then(Value::as_u64), id) {
        return Some(Record::Change {
            id,
            event: Event::Edited {
                id: target,
                message: message.to_owned(),
            },
        });
    }
    let name = data.get("name").and_then(Value::as_str)?;
    Some(Record::Message(ChatMessage {
        name: name.to_owned(),
        message: message.to_owned(),
        timestamp: data.get("timestamp").and_then(Value::as_u64).unwrap_or(0),
        id,
        user: data.get("user").and_then(Value::as_str).map(str::to_owned),
        edited: data.get("edited") == Some(&Value::Bool(true)),
        key: data.get("key").and_then(Value::as_str).map(str::to_owned),
    }))
}
