//! The logic of edgechat's fuzz targets, one function per target, each taking the raw fuzz
//! input.
//!
//! Each function panics exactly when it finds a bug: a panic inside the core, or an
//! invariant the core promises that does not hold. The cargo-fuzz targets in
//! `fuzz/fuzz_targets/` only call these functions; the test `tests/replay_corpus.rs` replays
//! every file under `fuzz/corpus/<target>/` through them on stable, so CI checks the corpus
//! without nightly. Long runs are `fuzz/run.sh SECONDS`.
//!
//! | target | what it drives |
//! |---|---|
//! | [`client_frame`] | `decode_client_frame` on any text, in both session phases |
//! | [`attachment`] | `validate_attachment` and `Room::restore` from any attachment bytes |
//! | [`stored_records`] | `Room::restore` from any key/value records, `Counter::restore` |
//! | [`room_steps`] | any sequence of `testkit::Step`s, invariants checked after each |
//! | [`rate_limiter`] | the per-IP limiter and the session limiter under any clock |
//! | [`http_route`] | `route`, `room_id`, `HistoryQuery`, `PublishBody` on any request |

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod frame;
mod http;
mod limiter;
pub mod seeds;
mod steps;
mod stored;

pub use frame::client_frame;
pub use http::http_route;
pub use limiter::rate_limiter;
pub use steps::{room_steps, run_steps, FuzzConfig, FuzzName, FuzzStep, FuzzText};
pub use stored::{attachment, stored_records};

/// A target's logic: panics exactly when the input exposes a bug.
pub type Target = fn(&[u8]);

/// Every target by name, as `fuzz/fuzz_targets/<name>.rs` and `fuzz/corpus/<name>/` call it.
pub const TARGETS: &[(&str, Target)] = &[
    ("client_frame", client_frame),
    ("attachment", attachment),
    ("stored_records", stored_records),
    ("room_steps", room_steps),
    ("rate_limiter", rate_limiter),
    ("http_route", http_route),
];
