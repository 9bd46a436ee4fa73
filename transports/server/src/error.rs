//! The error of opening a runtime's storage: defined below both the store, which raises
//! it, and the runtime, which returns it.

use std::path::PathBuf;

/// Why a runtime could not open.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The database file could not be opened.
    #[error("opening database {}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// SQLite's reason.
        source: rusqlite::Error,
    },
    /// The database file refused WAL mode.
    #[error("database {path:?} refused WAL mode (got {mode})")]
    NotWal {
        /// The file.
        path: String,
        /// The journal mode it kept.
        mode: String,
    },
    /// The schema or the id secret could not be set up.
    #[error("initializing the database")]
    Schema(#[source] rusqlite::Error),
    /// The OS gave no randomness for the id secret (no weaker source is used instead).
    #[error("no OS randomness for the id secret: {0}")]
    Randomness(getrandom::Error),
    /// The storage thread could not start.
    #[error("starting the storage thread")]
    Thread(#[source] std::io::Error),
}
