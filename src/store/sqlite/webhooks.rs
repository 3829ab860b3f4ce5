//! The webhook outbox: one row per (event, endpoint), written in the same
//! transaction as the event, so a webhook outage or a crash loses nothing.

use super::Tx;
use crate::events::{EmailSummary, NewEvent};
use rusqlite::{params, Connection, OptionalExtension};

pub use crate::store::tracking::{OutboxItem, OutboxRow, Subscription};

/// Adds the outbox rows for a just-stored event.
pub(super) fn enqueue(
    tx: &Tx<'_>,
    event_id: i64,
    ev: &NewEvent,
    email: Option<&EmailSummary>,
) -> rusqlite::Result<()> {
    let domain = email.map(|e| e.domain.as_str());
    let mut payload: Option<String> = None;
    for sub in tx
        .hooks
        .iter()
        .filter(|s| s.wants(ev.kind.as_str(), domain))
    {
        let body =
            payload.get_or_insert_with(|| crate::events::webhook_payload(ev, email).to_string());
        let id = format!("msg_{}", uuid::Uuid::now_v7().simple());
        tx.execute(
            "INSERT INTO webhook_outbox (id, endpoint, event_id, payload, status, attempts, next_attempt_at, created_at)
             VALUES (?1, ?2, ?3, ?4, 'pending', 0, ?5, ?5)",
            params![id, sub.url, event_id, body.as_str(), ev.at.max(super::now_ms())],
        )?;
        tx.outbox_added.set(true);
    }
    Ok(())
}

/// Pending deliveries due now for one endpoint, oldest first.
pub fn due(
    conn: &Connection,
    endpoint: &str,
    now: i64,
    limit: usize,
) -> rusqlite::Result<Vec<OutboxItem>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, endpoint, payload, attempts, created_at FROM webhook_outbox
         WHERE status = 'pending' AND endpoint = ?1 AND next_attempt_at <= ?2
         ORDER BY next_attempt_at, created_at LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![endpoint, now, limit as i64], |r| {
        Ok(OutboxItem {
            id: r.get(0)?,
            endpoint: r.get(1)?,
            payload: r.get(2)?,
            attempts: r.get::<_, i64>(3)? as u32,
            created_at: r.get(4)?,
        })
    })?;
    rows.collect()
}

/// Leases up to `limit` due deliveries of one endpoint until `now + lease_ms`.
pub fn claim_due(
    tx: &Tx<'_>,
    endpoint: &str,
    now: i64,
    lease_ms: i64,
    limit: usize,
) -> rusqlite::Result<Vec<OutboxItem>> {
    let items = due(tx, endpoint, now, limit)?;
    let mut lease =
        tx.prepare_cached("UPDATE webhook_outbox SET next_attempt_at = ?2 WHERE id = ?1")?;
    for item in &items {
        lease.execute(params![item.id, now + lease_ms])?;
    }
    Ok(items)
}

/// When the next pending delivery for an endpoint is due, if any.
pub fn next_due(conn: &Connection, endpoint: &str) -> rusqlite::Result<Option<i64>> {
    conn.query_row(
        "SELECT MIN(next_attempt_at) FROM webhook_outbox WHERE status = 'pending' AND endpoint = ?1",
        params![endpoint],
        |r| r.get(0),
    )
    .optional()
    .map(Option::flatten)
}

pub fn mark_delivered(conn: &Connection, id: &str, at: i64) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE webhook_outbox SET status = 'delivered', attempts = attempts + 1, delivered_at = ?2, last_error = NULL WHERE id = ?1",
        params![id, at],
    )?;
    Ok(())
}

/// Records a failed attempt: retried at `next` or, when `next` is None, given up.
pub fn mark_failed(
    conn: &Connection,
    id: &str,
    error: &str,
    next: Option<i64>,
) -> rusqlite::Result<()> {
    match next {
        Some(at) => conn.execute(
            "UPDATE webhook_outbox SET attempts = attempts + 1, last_error = ?2, next_attempt_at = ?3 WHERE id = ?1",
            params![id, error, at],
        )?,
        None => conn.execute(
            "UPDATE webhook_outbox SET status = 'failed', attempts = attempts + 1, last_error = ?2 WHERE id = ?1",
            params![id, error],
        )?,
    };
    Ok(())
}

/// For `webhooks list`: newest first.
pub fn list(
    conn: &Connection,
    failed_only: bool,
    limit: usize,
) -> rusqlite::Result<Vec<OutboxRow>> {
    let mut stmt = conn.prepare(
        "SELECT w.id, w.endpoint, e.type, e.email_id, w.status, w.attempts, w.next_attempt_at,
                w.last_error, w.created_at, w.delivered_at
         FROM webhook_outbox w LEFT JOIN events e ON e.id = w.event_id
         WHERE (?1 = 0 OR w.status = 'failed')
         ORDER BY w.created_at DESC LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![failed_only as i64, limit as i64], |r| {
        Ok(OutboxRow {
            id: r.get(0)?,
            endpoint: r.get(1)?,
            event_type: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
            email_id: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
            status: r.get(4)?,
            attempts: r.get::<_, i64>(5)? as u32,
            next_attempt_at: r.get(6)?,
            last_error: r.get(7)?,
            created_at: r.get(8)?,
            delivered_at: r.get(9)?,
        })
    })?;
    rows.collect()
}

/// Puts one delivery (any status) back in the queue, due now. Same webhook-id.
pub fn replay_one(conn: &Connection, id: &str, now: i64) -> rusqlite::Result<usize> {
    conn.execute(
        "UPDATE webhook_outbox SET status = 'pending', next_attempt_at = ?2 WHERE id = ?1",
        params![id, now],
    )
}

/// Puts every delivery created since `since` back in the queue.
pub fn replay_since(conn: &Connection, since: i64, now: i64) -> rusqlite::Result<usize> {
    conn.execute(
        "UPDATE webhook_outbox SET status = 'pending', next_attempt_at = ?2 WHERE created_at >= ?1",
        params![since, now],
    )
}

/// Counts by status, for metrics.
pub fn counts(conn: &Connection) -> rusqlite::Result<(i64, i64, i64)> {
    conn.query_row(
        "SELECT COALESCE(SUM(status = 'pending'), 0), COALESCE(SUM(status = 'delivered'), 0), COALESCE(SUM(status = 'failed'), 0) FROM webhook_outbox",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
}
