//! Identity and access under faults (issue 13): rooms that run with auth, clients holding
//! tokens the simulator mints, and the oracle that judges every auth decision.
//!
//! In a run with auth (half of them), the rooms verify HS256 tokens in mode `optional` or
//! `required` with a leeway of 0–30 s. Each client has a fixed plan: whether it carries a
//! token (always in `required`), the grant its tokens give in its room (write, read, or
//! none), how long its tokens live (most 3–60 s, so they expire mid-session; some an hour),
//! and when it refreshes them (`early`, `late` — around the expiry, sometimes within the
//! leeway, sometimes beyond — or `never`). Tokens are issued on true time; the room judges
//! them on its host's clock, which the `clock-skew` and `clock-step` faults move.
//!
//! The oracle is written from the issue's rules, not from core's `Grants`/`Role` code: it
//! knows what each token it minted says ([`Minted`]) and decides on its own what the room
//! must do at each connection, refresh, message and close:
//! - `auth-admission`: a connection is admitted exactly when its token is valid on the
//!   room's clock (`now < exp + leeway`) and grants the room, or it has no token and the
//!   mode is `optional`; nobody is refused while their token is valid.
//! - `auth-grant`: no message sent on a connection whose grant is `read` is ever written or
//!   seen by a client.
//! - `auth-valid-not-cut-off`: no connection is closed 4001 while its newest accepted token
//!   is valid on the room's clock, and no valid refresh is refused (but for the rate limit).
//! - `auth-expired-closed`: a connection whose token expired (beyond the leeway) without a
//!   refresh is closed 4001 within [`EXPIRY_CLOSE_BOUND_MS`] of the room's clock reaching
//!   the expiry.
//! - `auth-name`: messages and rosters show a token holder under the token's name, never
//!   the name the client asked for.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use edgechat_core::auth::{Access, AuthConfig, AuthError, AuthMode, TokenVerifier, VerifyingKeys};
use edgechat_core::ids::{Namespace, ObjectId};
use edgechat_core::room::{ConnId, RoomAuth};
use edgechat_core::Timestamp;
use jsonwebtoken::{encode, EncodingKey, Header};
use madsim::rand::{GlobalRng, Rng};
use serde_json::{json, Value};

use crate::world::{Shared, World, EPOCH_MS};

/// How long after the room's clock reaches a token's expiry (plus the leeway) its
/// connection must be closed. The sim's host wakes a room at that deadline on its own clock
/// (also after a clock step, and restoring a hibernated room to do it), so the close comes
/// at once; the bound only absorbs tasks that run at the same instant.
pub const EXPIRY_CLOSE_BOUND_MS: u64 = 1_000;
/// The lifetime of tokens issued once the world settles: long enough that no clock offset
/// reached in a run makes them expire before the final checks.
pub const SETTLED_TOKEN_LIFETIME_MS: u64 = 2 * 3_600_000;

/// The run's auth settings, drawn from its seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthScenario {
    /// `required` (else `optional`).
    pub required: bool,
    /// The verifier's leeway on `exp`.
    pub leeway_ms: u64,
}

/// What a client's tokens grant in its room, in the oracle's own terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// May join, read and send (`write`, `moderator`, or the wildcard `*` granting either).
    Send,
    /// May join and read (`read`, also when a wildcard grants more: the room's own entry wins).
    Read,
    /// The room is not granted at all.
    Nothing,
}

/// How soon (true ms) a settled client's token must expire for it to let it lapse.
const LAPSE_WITHIN_MS: i64 = 60_000;

/// When a client refreshes its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    /// Well before `exp`.
    Early,
    /// Around `exp`: sometimes within the leeway, sometimes beyond.
    Late,
    /// Never (while faults last).
    Never,
}

/// A client's token habits, fixed for the run.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Whether it connects with a token (always in `required`).
    pub carries_token: bool,
    /// Its grant in its room.
    pub grant: Grant,
    /// How long its tokens live while faults last.
    pub lifetime_ms: u64,
    /// When it refreshes.
    pub refresh: Refresh,
}

/// What the simulator put in a token it minted: all the oracle needs to judge it.
#[derive(Debug, Clone)]
pub struct Minted {
    /// The client it was minted for (`sub` is `user-<client>`).
    pub client: usize,
    /// Its `name` claim.
    pub name: String,
    /// Its grant in the client's room.
    pub grant: Grant,
    /// Its `exp`, in seconds.
    pub exp_secs: u64,
}

/// The oracle's view of one admitted connection.
#[derive(Debug, Clone)]
pub struct ConnAccess {
    /// Whose.
    pub client: usize,
    /// On which host (whose clock the room reads).
    pub host: usize,
    /// Whether it may send.
    pub may_send: bool,
    /// The name its messages must show.
    pub shown_name: String,
    /// With a token: the first instant, on the room's clock, its newest accepted token is
    /// no longer valid (`exp` + leeway).
    pub valid_until: Option<Timestamp>,
    /// Bumped when `valid_until` changes, so that an older watchdog stops.
    pub generation: u64,
    /// Closed 4001 by the room.
    pub closed_expired: bool,
}

/// A client's token state.
#[derive(Debug, Clone, Default)]
pub struct Held {
    /// True ms (since the run started) at which to refresh, if ever.
    pub refresh_at_ms: Option<u64>,
    /// Whether the current token is a short one from the fault phase.
    pub short: bool,
    /// A refresh sent and not yet answered.
    pub refresh_outstanding: bool,
    /// True ms before which it does not connect again (after a refusal).
    pub retry_at_ms: u64,
    /// When the latest token minted stops being valid, on the room's clock (ms).
    pub valid_until_ms: u64,
}

/// Auth in one run: the policy the rooms run with, what was minted, and the oracle's state.
#[derive(Debug)]
pub struct Tokens {
    /// The settings.
    pub scenario: AuthScenario,
    secret: Vec<u8>,
    /// The policy every room gets.
    pub config: Arc<AuthConfig>,
    /// Per client.
    pub plans: Vec<Plan>,
    /// Per client.
    pub held: Vec<Held>,
    /// Every token minted.
    pub minted: BTreeMap<String, Minted>,
    /// Admitted connections.
    pub conns: BTreeMap<ConnId, ConnAccess>,
    /// Per chat text sent: whether its connection may send, and the name it must show.
    pub senders: BTreeMap<String, (bool, String)>,
    /// Sessions send moderation frames (then only [`Tokens::moderators`] get `moderator`).
    pub sessions_moderate: bool,
    /// Clients (granted `Send`) whose tokens grant their room `moderator`.
    pub moderators: BTreeSet<usize>,
}

impl Tokens {
    /// Draws the auth settings and every client's plan.
    pub fn draw(rng: &mut GlobalRng, clients: usize) -> Tokens {
        let scenario = AuthScenario {
            required: rng.gen_bool(0.5),
            leeway_ms: if rng.gen_bool(0.3) {
                0
            } else {
                rng.gen_range(0..=30_000)
            },
        };
        let secret: Vec<u8> = (0..32).map(|_| rng.gen()).collect();
        let mut verifier =
            TokenVerifier::new(VerifyingKeys::hs256(&secret).expect("a 32-byte secret"));
        verifier.leeway_ms = scenario.leeway_ms;
        let mode = if scenario.required {
            AuthMode::Required
        } else {
            AuthMode::Optional
        };
        let config = AuthConfig::new(mode, Some(verifier), []).expect("a valid policy");
        let plans = (0..clients)
            .map(|_| Plan {
                carries_token: scenario.required || rng.gen_bool(0.7),
                grant: match rng.gen_range(0..10) {
                    0..=5 => Grant::Send,
                    6..=8 => Grant::Read,
                    _ => Grant::Nothing,
                },
                lifetime_ms: if rng.gen_bool(0.8) {
                    rng.gen_range(3_000..=60_000)
                } else {
                    3_600_000
                },
                refresh: match rng.gen_range(0..3) {
                    0 => Refresh::Early,
                    1 => Refresh::Late,
                    _ => Refresh::Never,
                },
            })
            .collect();
        Tokens {
            scenario,
            secret,
            config: Arc::new(config),
            plans,
            held: vec![Held::default(); clients],
            minted: BTreeMap::new(),
            conns: BTreeMap::new(),
            senders: BTreeMap::new(),
            sessions_moderate: false,
            moderators: BTreeSet::new(),
        }
    }

    /// The auth a room gets (grants name rooms by id; room `r` is named `r<r>`).
    pub fn room_auth(&self, room: usize) -> RoomAuth {
        RoomAuth {
            config: self.config.clone(),
            room: room_id(room),
        }
    }

    /// Whether `client`'s sessions are moderators of its room (it always carries a token
    /// granting `moderator`), when sessions moderate.
    pub fn is_moderator(&self, client: usize) -> bool {
        self.sessions_moderate
            && self.plans[client].carries_token
            && self.moderators.contains(&client)
    }

    /// Whether `client` can ever get in (the final liveness check leaves out those who
    /// cannot).
    pub fn can_join(&self, client: usize) -> bool {
        let plan = &self.plans[client];
        !plan.carries_token || plan.grant != Grant::Nothing
    }

    /// Mints a token for `client` in `room`, issued at true time `now_ms` (since the run
    /// started), and plans its refresh. The grant is written in one of the ways the issue's
    /// rules allow for it, chosen at random.
    pub fn mint(
        &mut self,
        rng: &mut GlobalRng,
        client: usize,
        room: usize,
        now_ms: u64,
        settling: bool,
    ) -> String {
        let plan = self.plans[client];
        let lifetime_ms = if settling {
            SETTLED_TOKEN_LIFETIME_MS
        } else {
            plan.lifetime_ms
        };
        let exp_secs = (EPOCH_MS + now_ms + lifetime_ms) / 1_000;
        let own = format!("r{room}");
        let other = format!("r{}", room + 1);
        let moderator = self.moderators.contains(&client);
        let rooms = match (plan.grant, rng.gen_range(0..3)) {
            // When sessions moderate, the role is the client's, fixed for the run.
            (Grant::Send, 1) if moderator => json!({ "*": "moderator", other: "read" }),
            (Grant::Send, _) if moderator => json!({ own: "moderator" }),
            (Grant::Send, 2) if self.sessions_moderate => json!({ own: "write" }),
            (Grant::Send, 0) => json!({ own: "write" }),
            (Grant::Send, 1) => json!({ "*": "write", other: "read" }),
            (Grant::Send, _) => json!({ own: "moderator" }),
            (Grant::Read, 0) => json!({ own: "read" }),
            (Grant::Read, 1) => json!({ "*": "write", own: "read" }),
            (Grant::Read, _) => json!({ "*": "read" }),
            (Grant::Nothing, 0) => json!({}),
            (Grant::Nothing, _) => json!({ other: "write" }),
        };
        let name = format!("T{client}");
        let claims = json!({
            "sub": format!("user-{client}"),
            "name": name,
            "exp": exp_secs,
            "rooms": rooms,
        });
        let token = encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(&self.secret),
        )
        .expect("HS256 signs");
        self.minted.insert(
            token.clone(),
            Minted {
                client,
                name,
                grant: plan.grant,
                exp_secs,
            },
        );
        let held = &mut self.held[client];
        held.valid_until_ms = exp_secs * 1_000 + self.scenario.leeway_ms;
        held.short = !settling;
        held.refresh_outstanding = false;
        held.refresh_at_ms = match plan.refresh {
            _ if settling => None,
            Refresh::Early => Some(now_ms + lifetime_ms * rng.gen_range(3..=8) / 10),
            Refresh::Late => {
                Some(now_ms + lifetime_ms + rng.gen_range(0..=2 * self.scenario.leeway_ms + 1_000))
            }
            Refresh::Never => None,
        };
        token
    }

    /// `client` lost a connection before it was ready (refused, most likely): it waits
    /// before trying again, as a real client backs off, so that a client whose token
    /// grants nothing does not flood its room.
    pub fn back_off(&mut self, client: usize, now_ms: u64) {
        self.held[client].retry_at_ms =
            now_ms + madsim::rand::thread_rng().gen_range(2_000..=10_000);
    }

    /// Whether `client`, joined, should send a refresh now (true ms `now_ms`).
    pub fn refresh_due(&self, client: usize, now_ms: u64, settling: bool) -> bool {
        let held = &self.held[client];
        if held.refresh_outstanding || !self.plans[client].carries_token {
            return false;
        }
        if settling {
            return held.short;
        }
        held.refresh_at_ms.is_some_and(|at| now_ms >= at)
    }

    /// Whether `client`, once settled, lets its fault-phase token lapse instead of
    /// refreshing it: a client that never refreshes, whose token expires on its room's clock
    /// (offset `offset_ms` from true time, steady: the caller checks no clock stepped)
    /// within a minute of true time `now_ms`. Its room, quiet and often hibernated by then,
    /// must wake to close it 4001 (`auth-expired-closed`); it reconnects with a fresh token
    /// long before the run ends.
    pub fn lets_lapse(&self, client: usize, offset_ms: i64, now_ms: u64) -> bool {
        let held = &self.held[client];
        let until_true = held.valid_until_ms as i64 - EPOCH_MS as i64 - offset_ms;
        self.plans[client].refresh == Refresh::Never
            && held.short
            && until_true <= now_ms as i64 + LAPSE_WITHIN_MS
    }

    /// The first instant `token` is invalid on the room's clock, by the issue's rule.
    fn valid_until(&self, minted: &Minted) -> Timestamp {
        Timestamp(minted.exp_secs * 1_000 + self.scenario.leeway_ms)
    }
}

/// The id of room `room` (named `r<room>`).
pub fn room_id(room: usize) -> ObjectId {
    ObjectId::from_name(Namespace::Room, &format!("r{room}"))
}

/// The oracle's admission decision for `client` connecting to its room with `token` at the
/// room's `now`: `None` to refuse, else whether it may send, its name, its validity.
fn expected_admission(
    tokens: &Tokens,
    client: usize,
    token: Option<&str>,
    now: Timestamp,
) -> Option<(bool, String, Option<Timestamp>)> {
    let Some(token) = token else {
        return (!tokens.scenario.required).then(|| (true, format!("u{client}"), None));
    };
    let minted = tokens.minted.get(token)?;
    let valid_until = tokens.valid_until(minted);
    if now >= valid_until || minted.grant == Grant::Nothing {
        return None;
    }
    Some((
        minted.grant == Grant::Send,
        minted.name.clone(),
        Some(valid_until),
    ))
}

/// The room host decided on a connection (`decision`, from `AuthConfig::admit`): judge it,
/// and on admission record what the oracle expects of the connection. Returns the
/// generation to watch if the connection holds a token that will expire.
pub fn judge_admission(
    w: &mut World,
    conn: ConnId,
    host: usize,
    token: Option<&str>,
    now: Timestamp,
    decision: &Result<Access, AuthError>,
) -> Option<u64> {
    let client = w.conns.get(&conn)?.client;
    w.count_fault(match (decision, token) {
        (Err(_), _) => "auth-refused",
        (Ok(_), None) => "auth-anonymous",
        (Ok(_), Some(_)) => "auth-user",
    });
    let tokens = w.tokens.as_mut()?;
    let expected = expected_admission(tokens, client, token, now);
    let problem = match (&expected, decision) {
        (None, Ok(access)) => Some((
            "auth-grant",
            format!(
                "u{client} {conn:?} admitted as {access:?} at {}, the oracle refuses",
                now.0
            ),
        )),
        (Some(_), Err(error)) => Some((
            "auth-admission",
            format!(
                "u{client} {conn:?} refused ({error}) at {}, the oracle admits",
                now.0
            ),
        )),
        (Some((_, _, until)), Ok(access))
            if until.is_some() != matches!(access, Access::User(_)) =>
        {
            Some((
                "auth-admission",
                format!(
                    "u{client} {conn:?} admitted as {access:?}, token {}",
                    until.is_some()
                ),
            ))
        }
        _ => None,
    };
    let (may_send, shown_name, valid_until) = expected?;
    tokens.conns.insert(
        conn,
        ConnAccess {
            client,
            host,
            may_send,
            shown_name,
            valid_until,
            generation: 0,
            closed_expired: false,
        },
    );
    if let Some((invariant, detail)) = problem {
        w.violate(invariant, detail);
    }
    valid_until.map(|_| 0)
}

/// The room answered a refresh of `conn` with `token`: `Ok` it took it, `Err` it refused
/// with this error (never the rate limit's, which says nothing about the token). Returns
/// the generation to watch if the token was taken.
pub fn judge_refresh(
    w: &mut World,
    conn: ConnId,
    token: &str,
    answer: Result<(), &str>,
    now: Timestamp,
) -> Option<u64> {
    w.count_fault(match answer {
        Ok(()) => "auth-refreshed",
        Err(_) => "auth-refresh-refused",
    });
    let tokens = w.tokens.as_mut()?;
    let access = tokens.conns.get(&conn)?;
    let minted = tokens.minted.get(token)?;
    let valid_until = tokens.valid_until(minted);
    let valid =
        now < valid_until && minted.client == access.client && minted.grant != Grant::Nothing;
    let client = access.client;
    match answer {
        Ok(()) if !valid => {
            let detail = format!(
                "u{client} {conn:?} refreshed at {} with a token invalid from {}",
                now.0, valid_until.0
            );
            w.violate("auth-grant", detail);
            None
        }
        Ok(()) => {
            let access = tokens.conns.get_mut(&conn).expect("looked up");
            access.valid_until = Some(valid_until);
            access.generation += 1;
            Some(access.generation)
        }
        Err(error) if valid => {
            let detail = format!(
                "u{client} {conn:?}: refresh valid until {} refused at {} ({error})",
                valid_until.0, now.0
            );
            w.violate("auth-valid-not-cut-off", detail);
            None
        }
        Err(_) => None,
    }
}

/// The room closed `conn` with 4001 at its `now`: the token must have expired.
pub fn judge_expiry_close(w: &mut World, conn: ConnId, now: Timestamp) {
    w.count_fault("auth-expired-close");
    let Some(access) = w.tokens.as_mut().and_then(|t| t.conns.get_mut(&conn)) else {
        return;
    };
    access.closed_expired = true;
    let (client, until) = (access.client, access.valid_until);
    if until.is_none_or(|until| now < until) {
        let detail = format!(
            "u{client} {conn:?} closed 4001 at {} on the room's clock, its token valid until {until:?}",
            now.0
        );
        w.violate("auth-valid-not-cut-off", detail);
    }
}

/// The host let go of `conn` (closed, or refused by a failed restore).
pub fn forget(w: &mut World, conn: ConnId) {
    if let Some(tokens) = w.tokens.as_mut() {
        tokens.conns.remove(&conn);
    }
}

/// A chat message `text` is sent on `conn`: remember what the oracle expects of it.
pub fn sending(w: &mut World, conn: ConnId, text: &str) {
    let Some(tokens) = w.tokens.as_mut() else {
        return;
    };
    if let Some(access) = tokens.conns.get(&conn) {
        let expected = (access.may_send, access.shown_name.clone());
        tokens.senders.insert(text.to_owned(), expected);
    }
}

/// A chat message with `text` under `name` was written or seen (`what`): its sender may
/// send, and it shows the right name.
pub fn judge_message(w: &mut World, room: usize, text: &str, name: &str, what: &str) {
    let Some((may_send, shown)) = w.tokens.as_ref().and_then(|t| t.senders.get(text)).cloned()
    else {
        return;
    };
    if !may_send {
        let detail = format!("room {room}: {text} {what}, sent on a connection granted read");
        w.violate("auth-grant", detail);
    } else if name != shown {
        let detail = format!("room {room}: {text} {what} under {name}, expected {shown}");
        w.violate("auth-name", detail);
    }
}

/// The name `client` must appear under on `conn`.
pub fn shown_name(w: &World, client: usize, conn: Option<ConnId>) -> String {
    conn.and_then(|conn| w.tokens.as_ref()?.conns.get(&conn))
        .map_or_else(|| format!("u{client}"), |access| access.shown_name.clone())
}

/// Watches that `conn`'s token, once expired on the room's clock, gets it closed 4001
/// within [`EXPIRY_CLOSE_BOUND_MS`]. Ends when the connection goes, or a refresh starts a
/// newer generation.
pub async fn expiry_watchdog(world: Shared, conn: ConnId, generation: u64) {
    let mut overdue_since: Option<Duration> = None;
    loop {
        let delay = {
            let mut w = world.lock().expect("world lock");
            if w.violation.is_some() {
                return;
            }
            let Some(access) = w.tokens.as_ref().and_then(|t| t.conns.get(&conn)).cloned() else {
                return;
            };
            let open = w.conns.get(&conn).is_some_and(|info| info.open);
            if access.generation != generation || access.closed_expired || !open {
                return;
            }
            let Some(until) = access.valid_until else {
                return;
            };
            let now = w.host_now(access.host);
            if now < until {
                overdue_since = None;
                Duration::from_millis(until.millis_since(now) + 1)
            } else {
                let elapsed = w.elapsed();
                let since = *overdue_since.get_or_insert(elapsed);
                let overdue = elapsed - since;
                if overdue >= Duration::from_millis(EXPIRY_CLOSE_BOUND_MS) {
                    let detail = format!(
                        "u{} {conn:?}: token expired at {} on the room's clock (now {}), \
                         still open after {} ms",
                        access.client,
                        until.0,
                        now.0,
                        overdue.as_millis()
                    );
                    w.violate("auth-expired-closed", detail);
                    return;
                }
                Duration::from_millis(EXPIRY_CLOSE_BOUND_MS) - overdue
            }
        };
        madsim::time::sleep(delay).await;
    }
}

/// The token in a `{"token": ...}` frame, if `text` is one.
pub fn refresh_token(text: &str) -> Option<String> {
    if !text.starts_with(r#"{"token""#) {
        return None;
    }
    let value: Value = serde_json::from_str(text).ok()?;
    Some(value.get("token")?.as_str()?.to_owned())
}
