//! The wall clock as the core wants it: [`Timestamp`]s in milliseconds since the Unix epoch.
//!
//! The core clamps clocks that step backwards, so the wall clock is safe to pass in.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use edgechat_core::Timestamp;

/// Now, as a core timestamp.
pub(crate) fn now() -> Timestamp {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    Timestamp(u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX))
}

/// How long from now until `deadline` (zero if it has passed).
pub(crate) fn until(deadline: Timestamp) -> Duration {
    Duration::from_millis(deadline.millis_since(now()))
}

/// Sleeps until `deadline`, or forever without one (a `select!` arm that never fires).
pub(crate) async fn sleep_until(deadline: Option<Timestamp>) {
    match deadline {
        Some(deadline) => tokio::time::sleep(until(deadline)).await,
        None => std::future::pending().await,
    }
}
