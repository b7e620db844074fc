//! The LocalChain database: one SQLite file in WAL mode, shared by the processes on a machine.

use rusqlite::Connection;

use crate::types::ChainError;

/// `registrations` keeps every holder a uid has had, so that the subnet as of a past block
/// names the hotkey that held each uid then, even after the uid was pruned and taken again.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS accounts (
    account BLOB PRIMARY KEY, balance INTEGER NOT NULL DEFAULT 0, nonce INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS neurons (
    uid INTEGER PRIMARY KEY, hotkey BLOB NOT NULL UNIQUE, coldkey BLOB NOT NULL,
    registered_at INTEGER NOT NULL, last_update INTEGER NOT NULL,
    validator_permit INTEGER NOT NULL DEFAULT 0,
    rank REAL NOT NULL DEFAULT 0, trust REAL NOT NULL DEFAULT 0, consensus REAL NOT NULL DEFAULT 0,
    incentive REAL NOT NULL DEFAULT 0, dividends REAL NOT NULL DEFAULT 0,
    validator_trust REAL NOT NULL DEFAULT 0, emission INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS stakes (
    hotkey BLOB NOT NULL, coldkey BLOB NOT NULL, amount INTEGER NOT NULL,
    PRIMARY KEY (hotkey, coldkey));
CREATE TABLE IF NOT EXISTS weights (
    uid INTEGER NOT NULL, target INTEGER NOT NULL, weight INTEGER NOT NULL,
    PRIMARY KEY (uid, target));
CREATE TABLE IF NOT EXISTS bonds (
    uid INTEGER NOT NULL, target INTEGER NOT NULL, bond REAL NOT NULL,
    PRIMARY KEY (uid, target));
CREATE TABLE IF NOT EXISTS commitments (
    hotkey BLOB PRIMARY KEY, data BLOB NOT NULL, block INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS epoch_history (
    block INTEGER NOT NULL, uid INTEGER NOT NULL, validator_permit INTEGER NOT NULL,
    rank REAL NOT NULL, trust REAL NOT NULL, consensus REAL NOT NULL, incentive REAL NOT NULL,
    dividends REAL NOT NULL, validator_trust REAL NOT NULL, emission INTEGER NOT NULL,
    PRIMARY KEY (block, uid));
CREATE TABLE IF NOT EXISTS commitment_history (
    hotkey BLOB NOT NULL, block INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (hotkey, block));
CREATE TABLE IF NOT EXISTS weight_commits (
    hotkey BLOB NOT NULL, hash BLOB NOT NULL, block INTEGER NOT NULL, PRIMARY KEY (hotkey, hash));
CREATE TABLE IF NOT EXISTS registrations (
    uid INTEGER NOT NULL, hotkey BLOB NOT NULL, coldkey BLOB NOT NULL,
    registered_at INTEGER NOT NULL, pruned_at INTEGER, PRIMARY KEY (uid, registered_at));
CREATE TABLE IF NOT EXISTS extrinsics (
    id INTEGER PRIMARY KEY AUTOINCREMENT, block INTEGER NOT NULL, signer BLOB NOT NULL,
    nonce INTEGER NOT NULL, call TEXT NOT NULL);
";

/// Chains made before `registrations` existed: their current neurons are their history. A
/// file that an older binary went on writing may hold a holder it replaced: closed at the
/// registration that replaced it, so that no uid has two holders at once.
pub const BACKFILL: &str = "
UPDATE registrations SET pruned_at =
    (SELECT n.registered_at FROM neurons n WHERE n.uid = registrations.uid)
WHERE pruned_at IS NULL
    AND EXISTS (SELECT 1 FROM neurons n WHERE n.uid = registrations.uid)
    AND NOT EXISTS (SELECT 1 FROM neurons n
                    WHERE n.uid = registrations.uid AND n.hotkey = registrations.hotkey);
INSERT OR IGNORE INTO registrations (uid, hotkey, coldkey, registered_at)
    SELECT uid, hotkey, coldkey, registered_at FROM neurons;
";

/// Opens the file with the settings that make sharing it between processes safe: WAL so
/// readers never block the writer, a generous busy timeout so writers queue instead of failing.
pub fn connect(path: &std::path::Path) -> Result<Connection, ChainError> {
    let connection = Connection::open(path)?;
    connection.busy_timeout(std::time::Duration::from_secs(30))?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "NORMAL")?;
    connection.pragma_update(None, "foreign_keys", "ON")?;
    Ok(connection)
}
