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
    /// The data file cannot serve: another process holds its lock, it cannot be written, it
    /// is not an SQLite database, or it is corrupt (`why` says which, in words).
    #[error("refusing data file {}: {why}", path.display())]
    Refused {
        /// The file.
        path: PathBuf,
        /// The cause, for the operator.
        why: &'static str,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// The data file exists but cannot be opened for writing (read-only filesystem,
    /// permissions).
    #[error("refusing data file {}: it cannot be written", path.display())]
    Unwritable {
        /// The file.
        path: PathBuf,
        /// The OS's reason.
        source: std::io::Error,
    },
    /// The data file is an SQLite database of some other application.
    #[error("refusing data file {}: it is not an edgechat database (it has a table {table:?})", path.display())]
    Foreign {
        /// The file.
        path: PathBuf,
        /// A table edgechat does not have.
        table: String,
    },
    /// The database file refused WAL mode.
    #[error("database {path:?} refused WAL mode (got {mode})")]
    NotWal {
        /// The file.
        path: String,
        /// The journal mode it kept.
        mode: String,
    },
    /// The OS gave no randomness for the id secret (no weaker source is used instead).
    #[error("no OS randomness for the id secret: {0}")]
    Randomness(getrandom::Error),
    /// The storage thread could not start.
    #[error("starting the storage thread")]
    Thread(#[source] std::io::Error),
}
