//! Signed tokens on the client side: where fresh ones come from ([`TokenProvider`]) and
//! when to ask for one ([`token_expiry`], read only to schedule a refresh; the server alone
//! judges a token).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;

/// The soonest a refresh is tried again, whatever the token's lifetime: a provider that
/// hands out tokens about to expire cannot make the client spin.
pub const REFRESH_MIN: Duration = Duration::from_secs(1);

/// Longest token payload decoded to find its `exp` (a token is at most a few KiB).
const PAYLOAD_LEN_MAX_BYTES: usize = 16 * 1024;

type ProviderFn = dyn Fn() -> Pin<Box<dyn Future<Output = Option<String>> + Send>> + Send + Sync;

/// Supplies fresh tokens: asked before every (re)connect and every history or presence
/// request, and before the open connection's token expires (see
/// [`ConnectOptions::refresh_before`](crate::ConnectOptions::refresh_before)). `None`
/// means "nothing newer now": the client keeps what it has and asks again later.
///
/// ```
/// use edgechat_client::TokenProvider;
/// let provider = TokenProvider::new(|| async {
///     // e.g. ask your backend, which signs a short-lived JWT for the user
///     Some("eyJ...".to_owned())
/// });
/// ```
#[derive(Clone)]
pub struct TokenProvider(Arc<ProviderFn>);

impl TokenProvider {
    /// A provider calling `provider` for each fresh token.
    pub fn new<F, Fut>(provider: F) -> TokenProvider
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Option<String>> + Send + 'static,
    {
        TokenProvider(Arc::new(move || Box::pin(provider())))
    }

    /// A fresh token, or `None` if the provider has none or takes longer than `limit`.
    pub(crate) async fn fresh(&self, limit: Duration) -> Option<String> {
        tokio::time::timeout(limit, (self.0)())
            .await
            .ok()
            .flatten()
            .filter(|token| !token.is_empty())
    }
}

impl fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenProvider(..)")
    }
}

/// A JWT's `exp`, read from its payload without verifying anything: only to schedule a
/// refresh. `None` for a token without one, or anything that is not a JWT.
pub fn token_expiry(token: &str) -> Option<SystemTime> {
    let payload = token.split('.').nth(1)?;
    if payload.len() > PAYLOAD_LEN_MAX_BYTES {
        return None;
    }
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&json).ok()?;
    let exp = claims
        .get("exp")?
        .as_f64()
        .filter(|exp| exp.is_finite() && *exp >= 0.0)?;
    UNIX_EPOCH.checked_add(Duration::try_from_secs_f64(exp).ok()?)
}

/// How long to wait before refreshing a token that expires in `left`: `before` ahead of
/// the expiry, or at half the remaining life if that is shorter; never sooner than
/// [`REFRESH_MIN`].
pub(crate) fn refresh_delay(left: Duration, before: Duration) -> Duration {
    let wanted = if left > before.saturating_mul(2) {
        left - before
    } else {
        left / 2
    };
    wanted.max(REFRESH_MIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            engine.encode(r#"{"alg":"HS256"}"#),
            engine.encode(payload)
        )
    }

    #[test]
    fn expiry_is_read_from_the_payload_and_garbage_has_none() {
        let at = |secs| Some(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(
            token_expiry(&jwt(r#"{"sub":"a","exp":1700000000}"#)),
            at(1_700_000_000)
        );
        for bad in [
            String::new(),
            "abc".into(),
            "a.b.c".into(),
            "a.!!!.c".into(),
            jwt(r#"{"sub":"a"}"#),
            jwt(r#"{"exp":"soon"}"#),
            jwt(r#"{"exp":-1}"#),
            jwt(r#"{"exp":1e300}"#),
            jwt("not json"),
            format!("a.{}.c", "A".repeat(PAYLOAD_LEN_MAX_BYTES + 1)),
        ] {
            assert_eq!(token_expiry(&bad), None, "{bad:.40}");
        }
    }

    #[test]
    fn refresh_comes_before_the_expiry_and_never_too_often() {
        let s = Duration::from_secs;
        let cases = [
            (s(600), s(60), s(540)),
            (s(120), s(60), s(60)),
            (s(100), s(60), s(50)),
            (s(4), s(60), s(2)),
            (s(1), s(60), REFRESH_MIN),
            (Duration::ZERO, s(60), REFRESH_MIN),
            (s(10), Duration::ZERO, s(10)),
        ];
        for (left, before, expected) in cases {
            assert_eq!(refresh_delay(left, before), expected, "{left:?} {before:?}");
        }
    }
}
