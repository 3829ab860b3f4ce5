//! The delivery queue: one row per recipient of each accepted email.
//!
//! A row is `queued` (never tried), `sending` (leased by a delivery worker
//! until `lease_until`), `deferred` (waiting for its next attempt), or done:
//! `delivered`, `bounced`, `failed`.

use super::Tx;
use crate::events::{EventType, NewEvent};
use rusqlite::{params, Connection};
use serde_json::json;

#[derive(Debug, Clone)]
pub struct QueueEntry {
    pub email_id: String,
    pub recipient: String,
    pub status: String,
    pub attempts: u32,
    pub next_attempt_at: Option<i64>,
    pub last_response: Option<String>,
}

impl QueueEntry {
    /// The contract's fields: `email_id, recipient, status, attempts,
    /// next_attempt_at, last_response`.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "email_id": self.email_id,
            "recipient": self.recipient,
            "status": self.status,
            "attempts": self.attempts,
            "next_attempt_at": self.next_attempt_at.map(super::rfc3339),
            "last_response": self.last_response,
        })
    }
}

/// Recipients still to be delivered (or every row, with `all`).
pub fn list(conn: &Connection, all: bool, limit: usize) -> rusqlite::Result<Vec<QueueEntry>> {
    let limit = if limit == 0 { i64::MAX } else { limit as i64 };
    let mut stmt = conn.prepare(
        "SELECT r.email_id, r.address, r.status, r.attempts, r.next_attempt_at, r.last_response
         FROM recipients r JOIN emails e ON e.id = r.email_id
         WHERE ?1 OR r.status IN ('queued', 'deferred', 'sending')
         ORDER BY e.created_at, r.email_id, r.idx LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![all, limit], |r| {
        Ok(QueueEntry {
            email_id: r.get(0)?,
            recipient: r.get(1)?,
            status: r.get(2)?,
            attempts: r.get::<_, i64>(3)? as u32,
            next_attempt_at: r.get(4)?,
            last_response: r.get(5)?,
        })
    })?;
    rows.collect()
}

/// Number of recipients waiting or in flight, for metrics.
pub fn depth(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT COUNT(*) FROM recipients WHERE status IN ('queued', 'deferred', 'sending')",
        [],
        |r| r.get(0),
    )
}

/// A recipient taken for delivery.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub email_id: String,
    pub idx: u32,
    pub address: String,
    pub attempts: u32,
    pub email_created_at: i64,
    pub domain: String,
    pub mail_from: String,
    pub smtputf8: bool,
}

/// Leases up to `limit` due recipients until `now + lease_ms`.
pub fn claim_due(
    tx: &Tx<'_>,
    now: i64,
    lease_ms: i64,
    limit: usize,
) -> rusqlite::Result<Vec<Claimed>> {
    let claimed: Vec<Claimed> = tx
        .prepare_cached(
            "SELECT r.email_id, r.idx, r.address, r.attempts, e.created_at, e.domain, e.mail_from, e.smtputf8
             FROM recipients r JOIN emails e ON e.id = r.email_id
             WHERE r.status IN ('queued', 'deferred') AND r.next_attempt_at <= ?1
             ORDER BY r.next_attempt_at LIMIT ?2",
        )?
        .query_map(params![now, limit as i64], |r| {
            Ok(Claimed {
                email_id: r.get(0)?,
                idx: r.get::<_, i64>(1)? as u32,
                address: r.get(2)?,
                attempts: r.get::<_, i64>(3)? as u32,
                email_created_at: r.get(4)?,
                domain: r.get(5)?,
                mail_from: r.get(6)?,
                smtputf8: r.get(7)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut lease = tx.prepare_cached(
        "UPDATE recipients SET status = 'sending', lease_until = ?3, next_attempt_at = NULL,
                attempt_started_at = ?4
         WHERE email_id = ?1 AND idx = ?2",
    )?;
    for c in &claimed {
        lease.execute(params![c.email_id, c.idx, now + lease_ms, now])?;
    }
    Ok(claimed)
}

/// When the next recipient falls due, if any is waiting.
pub fn next_due(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    conn.query_row(
        "SELECT MIN(next_attempt_at) FROM recipients WHERE status IN ('queued', 'deferred')",
        [],
        |r| r.get(0),
    )
}

/// Rows left `sending` by a process that died (or whose lease ran out) go
/// back to the queue, due now: delivery is at least once, never stranded.
pub fn recover_leases(conn: &Connection, now: i64, everything: bool) -> rusqlite::Result<usize> {
    conn.execute(
        "UPDATE recipients SET status = CASE WHEN attempts = 0 THEN 'queued' ELSE 'deferred' END,
                lease_until = NULL, next_attempt_at = ?1
         WHERE status = 'sending' AND (?2 OR lease_until < ?1)",
        params![now, everything],
    )
}

/// The result of one delivery attempt for one recipient.
#[derive(Debug, Clone)]
pub enum Outcome {
    Delivered,
    /// Retry at the given time.
    Deferred {
        next_attempt_at: i64,
    },
    /// Permanently refused by the receiver (or expired): a bounce.
    Bounced,
    /// Could not be sent for a local reason (or removed by the operator).
    Failed,
}

#[derive(Debug, Clone)]
pub struct Attempt {
    pub email_id: String,
    pub idx: u32,
    pub at: i64,
    pub outcome: Outcome,
    pub response: String,
    pub tls: Option<String>,
    pub mx: Option<String>,
}

/// Records an attempt's outcome and its event, in one transaction.
pub fn record(tx: &Tx<'_>, a: &Attempt) -> rusqlite::Result<()> {
    let (status, next, kind) = match a.outcome {
        Outcome::Delivered => ("delivered", None, EventType::Delivered),
        Outcome::Deferred { next_attempt_at } => (
            "deferred",
            Some(next_attempt_at),
            EventType::DeliveryDelayed,
        ),
        Outcome::Bounced => ("bounced", None, EventType::Bounced),
        Outcome::Failed => ("failed", None, EventType::Failed),
    };
    let changed = tx
        .prepare_cached(
            "UPDATE recipients SET status = ?3, attempts = attempts + 1, next_attempt_at = ?4, lease_until = NULL,
                    last_response = ?5, tls = ?6, mx = ?7,
                    delivered_at = CASE WHEN ?3 = 'delivered' THEN ?8 ELSE delivered_at END,
                    bounced_at = CASE WHEN ?3 = 'bounced' THEN ?8 ELSE bounced_at END
             WHERE email_id = ?1 AND idx = ?2 AND status = 'sending'",
        )?
        .execute(params![a.email_id, a.idx, status, next, a.response, a.tls, a.mx, a.at])?;
    if changed == 0 {
        // The operator deleted it meanwhile, or the lease was recovered by
        // another run: the row is no longer ours to change.
        return Ok(());
    }
    let attempts: i64 = tx.query_row(
        "SELECT attempts FROM recipients WHERE email_id = ?1 AND idx = ?2",
        params![a.email_id, a.idx],
        |r| r.get(0),
    )?;
    let mut ev = NewEvent::new(a.email_id.clone(), kind, a.at);
    ev.rcpt_idx = Some(a.idx);
    let mut detail = json!({
        "response": a.response,
        "tls": a.tls,
        "mx": a.mx,
        "attempt": attempts,
    });
    if let Some(next) = next {
        detail["next_attempt_at"] = json!(super::rfc3339(next));
    }
    ev.detail = Some(detail);
    super::events::insert(tx, &ev)?;
    Ok(())
}

/// `queue retry ID`: the email's waiting recipients (by email id, or one
/// recipient as `ID:index`) become due now.
pub fn retry(conn: &Connection, email_id: &str, now: i64) -> rusqlite::Result<usize> {
    conn.execute(
        "UPDATE recipients SET next_attempt_at = ?2 WHERE email_id = ?1 AND status IN ('queued', 'deferred')",
        params![email_id, now],
    )
}

/// `queue delete ID`: the email's waiting recipients leave the queue as
/// `failed` with an `email.failed` event, so stats and webhooks say so.
pub fn delete(tx: &Tx<'_>, email_id: &str, now: i64) -> rusqlite::Result<usize> {
    let idxs: Vec<i64> = tx
        .prepare("SELECT idx FROM recipients WHERE email_id = ?1 AND status IN ('queued', 'deferred', 'sending')")?
        .query_map(params![email_id], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for idx in &idxs {
        tx.execute(
            "UPDATE recipients SET status = 'failed', next_attempt_at = NULL, lease_until = NULL,
                    last_response = 'deleted from the queue by the operator'
             WHERE email_id = ?1 AND idx = ?2",
            params![email_id, idx],
        )?;
        let mut ev = NewEvent::new(email_id.to_string(), EventType::Failed, now);
        ev.rcpt_idx = Some(*idx as u32);
        ev.detail = Some(json!({ "response": "deleted from the queue by the operator" }));
        super::events::insert(tx, &ev)?;
    }
    Ok(idxs.len())
}
