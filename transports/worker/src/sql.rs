//! The core's ordered key-value storage on a Durable Object's SQLite database.
//!
//! One table, `kv(key TEXT PRIMARY KEY, value TEXT)`, holds the core's keys. A
//! [`WriteBatch`] is committed inside `storage.transactionSync`, so it is atomic: either
//! every write lands or (if one throws) none does. The SQL API is synchronous; the runtime's
//! output gate holds every message sent after a write until that write is durable, so
//! sending right after [`commit`] still never shows a client something a crash could take
//! back.

use edgechat_core::storage::{ListQuery, Value, Write, WriteBatch};
use serde::Deserialize;
use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast, JsValue};
use worker::{Error, Result, SqlStorage, Storage};

const CREATE_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID";

#[derive(Deserialize)]
struct Row {
    key: String,
    value: String,
}

/// Creates the table if it does not exist yet (cheap; run on every construction).
pub(crate) fn ensure_schema(storage: &Storage) -> Result<()> {
    storage.sql().exec(CREATE_TABLE, None)?;
    Ok(())
}

/// Answers `query`: the greatest keys under the prefix, in ascending key order.
pub(crate) fn list(storage: &Storage, query: ListQuery) -> Result<Vec<(String, Value)>> {
    let end = prefix_end(query.prefix);
    let rows: Vec<Row> = storage
        .sql()
        .exec(
            "SELECT key, value FROM kv WHERE key >= ? AND key < ? ORDER BY key DESC LIMIT ?",
            vec![
                query.prefix.into(),
                end.into(),
                i64::try_from(query.limit).unwrap_or(i64::MAX).into(),
            ],
        )?
        .to_array()?;
    Ok(rows
        .into_iter()
        .rev()
        .map(|row| (row.key, Value::from(row.value)))
        .collect())
}

/// The value at `key`, if any.
pub(crate) fn get(storage: &Storage, key: &str) -> Result<Option<String>> {
    let rows: Vec<Row> = storage
        .sql()
        .exec("SELECT key, value FROM kv WHERE key = ?", vec![key.into()])?
        .to_array()?;
    Ok(rows.into_iter().next().map(|row| row.value))
}

/// Commits `batch` atomically, in one `transactionSync`.
///
/// `fail_after_writes` is the end-to-end test's way to make a write fail for real: the
/// transaction applies every write, then throws, so the runtime rolls it back.
///
/// # Errors
/// If the runtime refuses a write; then nothing of the batch was applied.
pub(crate) fn commit(storage: &Storage, batch: &WriteBatch, fail_after_writes: bool) -> Result<()> {
    let sql: SqlStorage = storage.sql();
    let writes = batch.writes.clone();
    let body = Closure::once(move || -> std::result::Result<JsValue, JsValue> {
        apply(&sql, &writes).map_err(|e| JsValue::from_str(&e.to_string()))?;
        if fail_after_writes {
            return Err(JsValue::from_str(
                "injected storage failure (end-to-end test)",
            ));
        }
        Ok(JsValue::UNDEFINED)
    });
    let raw: &JsValue = storage.as_raw();
    let transaction_sync = js_sys::Reflect::get(raw, &"transactionSync".into())?
        .dyn_into::<js_sys::Function>()
        .map_err(|_| Error::RustError("storage.transactionSync is missing".into()))?;
    transaction_sync.call1(raw, body.as_ref().unchecked_ref())?;
    Ok(())
}

/// Sets `key` to `value` in one statement (atomic on its own, so no transaction is needed).
pub(crate) fn put(storage: &Storage, key: &str, value: &str) -> Result<()> {
    storage.sql().exec(UPSERT, vec![key.into(), value.into()])?;
    Ok(())
}

const UPSERT: &str = "INSERT INTO kv (key, value) VALUES (?, ?) \
                      ON CONFLICT (key) DO UPDATE SET value = excluded.value";

fn apply(sql: &SqlStorage, writes: &[Write]) -> Result<()> {
    for write in writes {
        match write {
            Write::Put { key, value } => {
                sql.exec(UPSERT, vec![key.as_str().into(), (&**value).into()])?;
            }
            Write::Delete { key } => {
                sql.exec("DELETE FROM kv WHERE key = ?", vec![key.as_str().into()])?;
            }
        }
    }
    Ok(())
}

/// The smallest string greater than every string that starts with `prefix` (the core's
/// prefixes are ASCII and end below `0x7f`).
fn prefix_end(prefix: &str) -> String {
    let mut bytes = prefix.as_bytes().to_vec();
    if let Some(last) = bytes.last_mut() {
        *last += 1;
    }
    String::from_utf8(bytes).unwrap_or_default()
}
