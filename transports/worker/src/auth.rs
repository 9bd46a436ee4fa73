//! Identity and access on Workers: the core's [`AuthConfig`] built from the Worker's
//! environment, and the origin allow-list.
//!
//! The settings mirror the standalone server's `EDGECHAT_*` variables without the prefix
//! (see README.md, "Identity and access"). Keys are secrets (`wrangler secret put`); the
//! rest are plain `[vars]`:
//!
//! | name                | server equivalent                  | value |
//! |---------------------|------------------------------------|-------|
//! | `AUTH_MODE`         | `EDGECHAT_AUTH_MODE`               | `off` (default), `optional`, `required` |
//! | `AUTH_HS256_SECRET` | `EDGECHAT_AUTH_HS256_SECRET_FILE`  | the shared secret itself |
//! | `AUTH_PUBLIC_KEY`   | `EDGECHAT_AUTH_PUBLIC_KEY_FILE`    | `ALG:PEM` (RS256, ES256 or EdDSA) |
//! | `AUTH_JWKS`         | `EDGECHAT_AUTH_JWKS_FILE`          | the JWKS document itself |
//! | `AUTH_ISSUER`       | `EDGECHAT_AUTH_ISSUER`             | |
//! | `AUTH_AUDIENCE`     | `EDGECHAT_AUTH_AUDIENCE`           | |
//! | `AUTH_TOKEN_ROOMS`  | `EDGECHAT_AUTH_TOKEN_ROOMS`        | comma-separated rooms |
//! | `ALLOWED_ORIGINS`   | `EDGECHAT_ALLOWED_ORIGINS`         | comma-separated origins |
//!
//! The settings are read once per isolate (they only change with a deploy, which starts new
//! isolates). A setting that cannot work is kept as core's 500 answer, given to every request
//! that needs the policy: a Worker must not panic, and must not quietly run without the
//! checks it was configured to make. No setting's value (a secret) is ever logged.

use std::cell::OnceCell;
use std::rc::Rc;
use std::sync::Arc;

use edgechat_core::auth::{
    upgrade_origin_allowed, Access, Algorithm, AuthConfig, AuthError, AuthMode, PageScheme,
    TokenVerifier, VerifyingKeys,
};
use edgechat_core::http::answer::{self, Answer};
use edgechat_core::ids::{is_lower_hex_id, Namespace, ObjectId};
use edgechat_core::Timestamp;
use worker::Env;

use crate::env_string;

const MODE: &str = "AUTH_MODE";
const HS256_SECRET: &str = "AUTH_HS256_SECRET";
const PUBLIC_KEY: &str = "AUTH_PUBLIC_KEY";
const JWKS: &str = "AUTH_JWKS";
const ISSUER: &str = "AUTH_ISSUER";
const AUDIENCE: &str = "AUTH_AUDIENCE";
const TOKEN_ROOMS: &str = "AUTH_TOKEN_ROOMS";
const ALLOWED_ORIGINS: &str = "ALLOWED_ORIGINS";

/// The access policy of this deployment.
#[derive(Debug)]
pub(crate) struct Policy {
    /// Who may connect where (shared with every room of the isolate).
    pub auth: Arc<AuthConfig>,
    /// Web origins whose pages may open WebSockets; empty: any.
    pub allowed_origins: Vec<String>,
}

thread_local! {
    /// The policy, read from the environment on first use.
    static POLICY: OnceCell<Result<Rc<Policy>, Answer>> = const { OnceCell::new() };
}

/// The deployment's policy.
///
/// # Errors
/// Core's 500 answer naming the setting that cannot work and why.
pub(crate) fn policy(env: &Env) -> Result<Rc<Policy>, Answer> {
    POLICY.with(|cell| {
        cell.get_or_init(|| {
            load(env).map(Rc::new).inspect_err(|answer| {
                // The body names the setting and the reason, never a value.
                worker::console_error!("identity settings refused: {}", answer.body);
            })
        })
        .clone()
    })
}

impl Policy {
    /// Who a client presenting `token` is in `room` at `now` (core's decision).
    ///
    /// # Errors
    /// Core's refusal (401 or 403).
    pub(crate) fn admit(
        &self,
        room: &ObjectId,
        token: Option<&str>,
        now: Timestamp,
    ) -> Result<Access, Answer> {
        self.auth
            .admit(room, token, now)
            .map_err(|error: AuthError| answer::auth_refused(error))
    }

    /// Whether a read of `room` (history, presence) with this `Authorization` header may go
    /// ahead at `now`: the admin token, or a bearer token that admits the reader (core's
    /// decision).
    ///
    /// # Errors
    /// Core's refusal (401 or 403).
    pub(crate) fn admit_reader(
        &self,
        room: &ObjectId,
        authorization: Option<&str>,
        admin_token: Option<&str>,
        now: Timestamp,
    ) -> Result<(), Answer> {
        self.auth
            .admit_reader(room, authorization, admin_token, now)
            .map_err(answer::auth_refused)
    }

    /// Whether a browser page from `origin` may open a WebSocket (core's rule): the page's own
    /// origin, `scheme://host` of this request's URL, is always allowed.
    ///
    /// # Errors
    /// Core's 403.
    pub(crate) fn check_origin(
        &self,
        origin: Option<&str>,
        host: Option<&str>,
        scheme: PageScheme,
    ) -> Result<(), Answer> {
        if upgrade_origin_allowed(origin, &self.allowed_origins, host, scheme) {
            Ok(())
        } else {
            Err(answer::origin_refused())
        }
    }
}

/// Builds the policy from the environment (the same steps as the server's flags).
fn load(env: &Env) -> Result<Policy, Answer> {
    let bad = |setting: &str, reason: &dyn std::fmt::Display| {
        answer::misconfigured_setting(setting, reason)
    };
    let mode = match env_string(env, MODE).as_deref().map(str::trim) {
        None | Some("off") => AuthMode::Off,
        Some("optional") => AuthMode::Optional,
        Some("required") => AuthMode::Required,
        Some(_) => return Err(bad(MODE, &"expected off, optional or required")),
    };
    let mut keys: Option<VerifyingKeys> = None;
    let mut add = |setting: &str, more: VerifyingKeys| -> Result<(), Answer> {
        keys = Some(match keys.take() {
            Some(keys) => keys.merge(more).map_err(|error| bad(setting, &error))?,
            None => more,
        });
        Ok(())
    };
    if let Some(secret) = env_string(env, HS256_SECRET) {
        // As the server's secret file: a trailing newline is not part of the secret.
        let secret = secret.strip_suffix('\n').unwrap_or(&secret);
        let secret = secret.strip_suffix('\r').unwrap_or(secret);
        let keys = VerifyingKeys::hs256(secret.as_bytes()).map_err(|e| bad(HS256_SECRET, &e))?;
        add(HS256_SECRET, keys)?;
    }
    if let Some(spec) = env_string(env, PUBLIC_KEY) {
        let (alg, pem) = spec
            .split_once(':')
            .ok_or_else(|| bad(PUBLIC_KEY, &"expected ALG:PEM"))?;
        let algorithm = Algorithm::from_name(alg.trim())
            .ok_or_else(|| bad(PUBLIC_KEY, &"unknown algorithm (RS256, ES256 or EdDSA)"))?;
        // PEM text (core bounds its length).
        let keys = VerifyingKeys::from_pem(algorithm, pem.trim().as_bytes())
            .map_err(|e| bad(PUBLIC_KEY, &e))?;
        add(PUBLIC_KEY, keys)?;
    }
    if let Some(json) = env_string(env, JWKS) {
        let keys = VerifyingKeys::from_jwks(&json).map_err(|e| bad(JWKS, &e))?;
        add(JWKS, keys)?;
    }
    let verifier = keys.map(|keys| {
        let mut verifier = TokenVerifier::new(keys);
        verifier.issuer = env_string(env, ISSUER);
        verifier.audience = env_string(env, AUDIENCE);
        verifier
    });
    let rooms = list(env, TOKEN_ROOMS).into_iter().map(|room| {
        // A private id as given (its signature was checked when it was minted), else a name.
        if is_lower_hex_id(&room) {
            ObjectId::parse_hex(&room)
                .unwrap_or_else(|_| ObjectId::from_name(Namespace::Room, &room))
        } else {
            ObjectId::from_name(Namespace::Room, &room)
        }
    });
    let auth = AuthConfig::new(mode, verifier, rooms.collect::<Vec<_>>())
        .map_err(|error| bad(MODE, &error))?;
    Ok(Policy {
        auth: Arc::new(auth),
        allowed_origins: list(env, ALLOWED_ORIGINS),
    })
}

/// A comma-separated setting's entries, trimmed, without empty ones.
fn list(env: &Env, name: &str) -> Vec<String> {
    env_string(env, name)
        .map(|value| {
            value
                .split(',')
                .map(str::trim)
                .filter(|entry| !entry.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}
