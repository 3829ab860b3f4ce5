//! Events: one row per thing that happened to a recipient's copy.

use super::Tx;
use crate::events::{EventType, NewEvent, StoredEvent};
use rusqlite::{params, Connection, OptionalExtension, Row};

/// Stores an event (and its webhook outbox rows). Fills in the recipient
/// address from the queue when only its index is known, and sets the
/// recipient's first `opened_at` / `clicked_at`.
pub fn insert(tx: &Tx<'_>, ev: &NewEvent) -> rusqlite::Result<i64> {
    // Copied only when the address has to be filled in.
    let mut ev = std::borrow::Cow::Borrowed(ev);
    if let (None, Some(idx)) = (&ev.recipient, ev.rcpt_idx) {
        let address: Option<String> = tx
            .prepare_cached("SELECT address FROM recipients WHERE email_id = ?1 AND idx = ?2")?
            .query_row(params![ev.email_id, idx], |r| r.get(0))
            .optional()?;
        ev.to_mut().recipient = address;
    }
    let detail = ev.detail.as_ref().map(|d| d.to_string());
    tx.prepare_cached(
        "INSERT INTO events (email_id, rcpt_idx, recipient, type, at, ip, user_agent, referer, link, machine, machine_reason, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?
    .execute(params![
        ev.email_id,
        ev.rcpt_idx,
        ev.recipient,
        ev.kind.as_str(),
        ev.at,
        ev.ip,
        ev.user_agent,
        ev.referer,
        ev.link,
        ev.machine,
        ev.machine_reason,
        detail,
    ])?;
    let id = tx.last_insert_rowid();
    if let Some(idx) = ev.rcpt_idx {
        let column = match ev.kind {
            EventType::Opened => Some("opened_at"),
            EventType::Clicked => Some("clicked_at"),
            _ => None,
        };
        if let Some(col) = column {
            tx.prepare_cached(&format!(
                "UPDATE recipients SET {col} = ?3 WHERE email_id = ?1 AND idx = ?2 AND {col} IS NULL"
            ))?
            .execute(params![ev.email_id, idx, ev.at])?;
        }
    }
    if !tx.hooks.is_empty() {
        let summary = super::emails::summary(tx, &ev.email_id)?;
        super::webhooks::enqueue(tx, id, &ev, summary.as_ref())?;
    }
    Ok(id)
}

/// Filters for `trackrelay events` and `GET /v1/events`.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub email_id: Option<String>,
    pub kind: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    /// Only events with an id above this (paging).
    pub after_id: Option<i64>,
    pub limit: usize,
}

const COLUMNS: &str =
    "id, email_id, type, recipient, at, ip, user_agent, referer, link, machine, machine_reason, detail";

fn row_to_event(r: &Row<'_>) -> rusqlite::Result<StoredEvent> {
    let detail: Option<String> = r.get(11)?;
    Ok(StoredEvent {
        id: r.get(0)?,
        email_id: r.get(1)?,
        kind: r.get(2)?,
        recipient: r.get(3)?,
        at: r.get(4)?,
        ip: r.get(5)?,
        user_agent: r.get(6)?,
        referer: r.get(7)?,
        link: r.get(8)?,
        machine: r.get(9)?,
        machine_reason: r.get(10)?,
        detail: detail.and_then(|d| serde_json::from_str(&d).ok()),
    })
}

/// Events in id order (oldest first).
pub fn list(conn: &Connection, f: &EventFilter) -> rusqlite::Result<Vec<StoredEvent>> {
    let limit = if f.limit == 0 {
        i64::MAX
    } else {
        f.limit as i64
    };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM events
         WHERE (?1 IS NULL OR email_id = ?1)
           AND (?2 IS NULL OR type = ?2)
           AND (?3 IS NULL OR at >= ?3)
           AND (?4 IS NULL OR at < ?4)
           AND (?5 IS NULL OR id > ?5)
         ORDER BY id LIMIT ?6"
    ))?;
    let rows = stmt.query_map(
        params![f.email_id, f.kind, f.since, f.until, f.after_id, limit],
        row_to_event,
    )?;
    rows.collect()
}

/// Removes events older than `before`, at most `batch` rows, so pruning
/// never holds the writer for long. Returns how many went.
pub fn prune(conn: &Connection, before: i64, batch: usize) -> rusqlite::Result<usize> {
    conn.execute(
        "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE at < ?1 ORDER BY at LIMIT ?2)",
        params![before, batch as i64],
    )
}

/// Stores an open or click from the tracking listener (through
/// [`insert`], like every event), with the recipient's address filled in.
/// `judge` sees the event and the recipient's delivery times, which the
/// listener never reads, and may return a machine reason for it; the rule
/// is the caller's (the store does not know what makes a click a
/// scanner's). Events already flagged are not judged again.
pub fn insert_tracking(
    tx: &Tx<'_>,
    ev: &NewEvent,
    recipients: &mut super::tracking::RecipientCache,
    judge: &dyn Fn(&NewEvent, &super::tracking::RecipientDelivery) -> Option<&'static str>,
) -> rusqlite::Result<i64> {
    let (Some(idx), None) = (ev.rcpt_idx, &ev.recipient) else {
        return insert(tx, ev);
    };
    let Some(rcpt) = recipients.get(tx, &ev.email_id, idx)? else {
        // An email the store never saw (a `preview` token) or one pruned.
        return insert(tx, ev);
    };
    let mut ev = ev.clone();
    if ev.machine != Some(true) {
        if let Some(reason) = judge(&ev, rcpt) {
            ev.machine = Some(true);
            ev.machine_reason = Some(reason.to_string());
        }
    }
    ev.recipient = Some(rcpt.address.clone());
    insert(tx, &ev)
}
