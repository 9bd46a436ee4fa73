//! Arbitrary sequences of room inputs, checked by the testkit harness after every step.

use arbitrary::{Arbitrary, Unstructured};
use edgechat_core::limiter::RateLimiterConfig;
use edgechat_core::room::RoomConfig;
use edgechat_core::testkit::{Harness, Step};

/// The most steps one input runs, so that every input runs in bounded time.
pub const STEPS_MAX: usize = 400;

/// Room and limiter settings, kept small so that trimming, full rooms, busy rooms and rate
/// limits are all reached by short inputs.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub struct FuzzConfig {
    /// Retained history: 1 to 8.
    pub retained: u8,
    /// Join replay: 0 to 5.
    pub replay: u8,
    /// Connections per room: 1 to 8.
    pub connections: u8,
    /// Messages waiting for storage: 1 to 8.
    pub pending: u8,
    /// Limiter cost: 1 to 10 000 ms.
    pub cost: u16,
    /// Limiter grace: 0 to 29 999 ms.
    pub grace: u16,
}

impl FuzzConfig {
    /// The room settings.
    // `RoomConfig` has one more field when another crate in the build turns on the core's
    // `planted-bugs` feature; the update keeps it at its default (no bug) either way.
    #[allow(clippy::needless_update)]
    pub fn room(&self) -> RoomConfig {
        RoomConfig {
            history_retained_max: 1 + usize::from(self.retained % 8),
            join_replay_max: usize::from(self.replay % 6),
            connections_max: 1 + usize::from(self.connections % 8),
            pending_messages_max: 1 + usize::from(self.pending % 8),
            ..RoomConfig::default()
        }
    }

    /// The limiter settings.
    pub fn limiter(&self) -> RateLimiterConfig {
        RateLimiterConfig {
            cost_ms: 1 + u64::from(self.cost % 10_000),
            grace_ms: u64::from(self.grace % 30_000),
        }
    }
}

/// A user name, biased towards the limits.
#[derive(Debug, Clone, Arbitrary)]
pub enum FuzzName {
    /// `u<n>` (a handful of distinct users, so names collide).
    Short(u8),
    /// No name at all (`anonymous`).
    Missing,
    /// The empty string (`anonymous`).
    Empty,
    /// Exactly 32 UTF-16 units, with an emoji (2 units) and right-to-left text.
    Exact,
    /// 33 UTF-16 units: one over.
    OneOver,
    /// Anything.
    Raw(String),
}

/// A chat text, biased towards the limits.
#[derive(Debug, Clone, Arbitrary)]
pub enum FuzzText {
    /// A short message.
    Short(u8),
    /// Exactly 256 UTF-16 units.
    Exact,
    /// 257 UTF-16 units.
    OneOver,
    /// Anything.
    Raw(String),
}

/// One step, as the fuzzer chooses it; see [`Step`].
#[derive(Debug, Clone, Arbitrary)]
pub enum FuzzStep {
    /// Connect client `conn % 8` from IP `ip % 4`.
    Connect {
        /// Client.
        conn: u8,
        /// IP's last octet.
        ip: u8,
    },
    /// A join frame (or whatever it means in the session's phase).
    Join {
        /// Client.
        conn: u8,
        /// Name.
        name: FuzzName,
        /// Resume point.
        since: Option<u8>,
    },
    /// A chat frame.
    Chat {
        /// Client.
        conn: u8,
        /// Text.
        text: FuzzText,
    },
    /// Any text frame.
    Raw {
        /// Client.
        conn: u8,
        /// Frame.
        text: String,
    },
    /// A binary frame.
    Binary {
        /// Client.
        conn: u8,
    },
    /// The socket closes.
    Close {
        /// Client.
        conn: u8,
    },
    /// See [`Step::Commit`].
    Commit,
    /// See [`Step::Confirm`].
    Confirm,
    /// See [`Step::Answer`].
    Answer,
    /// Commit, confirm and answer everything queued.
    Settle,
    /// See [`Step::Evict`].
    Evict,
    /// See [`Step::Crash`].
    Crash,
    /// The clock moves forward a little.
    Advance(u16),
    /// The clock moves forward a lot.
    Jump(u32),
    /// The clock steps back.
    StepBack(u32),
}

const CLIENTS: u8 = 8;
const IPS: u8 = 4;

fn name_text(name: &FuzzName) -> Option<String> {
    Some(match name {
        FuzzName::Short(n) => format!("u{}", n % 6),
        FuzzName::Missing => return None,
        FuzzName::Empty => String::new(),
        // 2 + 26 + 4 = 32 units: emoji (surrogate pair), RTL marks, Hebrew.
        FuzzName::Exact => format!("😀{}\u{202e}שלום", "x".repeat(25)),
        FuzzName::OneOver => format!("😀{}\u{202e}שלום", "x".repeat(26)),
        FuzzName::Raw(s) => s.clone(),
    })
}

fn chat_text(text: &FuzzText) -> String {
    match text {
        FuzzText::Short(n) => format!("m{n}"),
        FuzzText::Exact => format!("{}😀\u{0}", "م".repeat(253)),
        FuzzText::OneOver => format!("{}😀\u{0}", "م".repeat(254)),
        FuzzText::Raw(s) => s.clone(),
    }
}

impl FuzzStep {
    /// The harness steps this stands for.
    pub fn to_steps(&self) -> Vec<Step> {
        let conn = |c: &u8| c % CLIENTS;
        match self {
            FuzzStep::Connect { conn: c, ip } => vec![Step::Connect {
                conn: conn(c),
                ip: 1 + ip % IPS,
            }],
            FuzzStep::Join {
                conn: c,
                name,
                since,
            } => {
                let mut frame = serde_json::Map::new();
                if let Some(name) = name_text(name) {
                    frame.insert("name".into(), name.into());
                }
                if let Some(since) = since {
                    frame.insert("since".into(), (*since).into());
                }
                vec![Step::Text {
                    conn: conn(c),
                    text: serde_json::Value::Object(frame).to_string(),
                }]
            }
            FuzzStep::Chat { conn: c, text } => vec![Step::Text {
                conn: conn(c),
                text: serde_json::json!({ "message": chat_text(text) }).to_string(),
            }],
            FuzzStep::Raw { conn: c, text } => vec![Step::Text {
                conn: conn(c),
                text: text.clone(),
            }],
            FuzzStep::Binary { conn: c } => vec![Step::Binary { conn: conn(c) }],
            FuzzStep::Close { conn: c } => vec![Step::Close { conn: conn(c) }],
            FuzzStep::Commit => vec![Step::Commit],
            FuzzStep::Confirm => vec![Step::Confirm],
            FuzzStep::Answer => vec![Step::Answer],
            FuzzStep::Settle => Vec::new(),
            FuzzStep::Evict => vec![Step::Evict],
            FuzzStep::Crash => vec![Step::Crash],
            FuzzStep::Advance(ms) => vec![Step::Advance { ms: (*ms).into() }],
            FuzzStep::Jump(ms) => vec![Step::Advance { ms: *ms }],
            FuzzStep::StepBack(ms) => vec![Step::StepBack { ms: *ms }],
        }
    }
}

/// Runs `steps` against a fresh room and settles at the end.
///
/// # Panics
/// On the first invariant violation, with the steps that led to it.
pub fn run_steps(config: FuzzConfig, steps: &[FuzzStep]) {
    let mut harness = Harness::new(config.room(), config.limiter());
    for (index, step) in steps.iter().enumerate() {
        let result = match step {
            FuzzStep::Settle => harness.settle(),
            step => step
                .to_steps()
                .into_iter()
                .try_for_each(|step| harness.step(step)),
        };
        if let Err(violation) = result {
            panic!(
                "{violation}\nconfig: {config:?}\nsteps:\n{:#?}",
                &steps[..=index]
            );
        }
    }
    if let Err(violation) = harness.settle() {
        panic!("{violation} (final settle)\nconfig: {config:?}\nsteps:\n{steps:#?}");
    }
}

/// Decodes a room configuration and up to `STEPS_MAX` (400) steps, and runs them.
pub fn room_steps(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(config) = FuzzConfig::arbitrary(&mut u) else {
        return;
    };
    let steps: Vec<FuzzStep> = match u.arbitrary_iter::<FuzzStep>() {
        Ok(iter) => iter.take(STEPS_MAX).map_while(Result::ok).collect(),
        Err(_) => return,
    };
    run_steps(config, &steps);
}
