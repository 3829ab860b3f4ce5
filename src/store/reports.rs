//! Reports received by the return-path MX (src/inbound), kept raw until the
//! feedback processor has read them, and for `retain_events` after that
//! when they name an email.

use rusqlite::{params, Connection};

/// A message as the inbound listener received it.
#[derive(Debug, Clone)]
pub struct NewReport {
    pub received_at: i64,
    pub peer_ip: String,
    pub helo: String,
    /// Empty for the null sender `<>`.
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    pub raw: Vec<u8>,
}

/// Stores `r` unprocessed; returns its id. Call through a
/// `Durability::Full` write: the sender hears 250 only after this commits.
pub fn insert(conn: &Connection, r: &NewReport) -> rusqlite::Result<i64> {
    let rcpt = serde_json::to_string(&r.rcpt_to).unwrap_or_else(|_| "[]".into());
    conn.prepare_cached(
        "INSERT INTO inbound_reports (received_at, peer_ip, helo, mail_from, rcpt_to, size, raw)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        r.received_at,
        r.peer_ip,
        r.helo,
        r.mail_from,
        rcpt,
        r.raw.len() as i64,
        r.raw
    ])?;
    Ok(conn.last_insert_rowid())
}
