//! The webhook outbox on PostgreSQL (see sqlite/webhooks.rs). Rows are
//! added by `events::insert`; here they are claimed, settled, listed and
//! replayed.
//!
//! A claim leases rows by pushing `next_attempt_at` past the lease, in one
//! statement whose row selection is `FOR UPDATE SKIP LOCKED`: a row that
//! another node is claiming at that moment is skipped, not waited for, and
//! one claimed a moment ago is no longer due when re-checked, so two nodes
//! never hold the same delivery at once.

use super::{begin, Durability, PgCtx, Postgres, OUTBOX_CHANNEL};
use crate::store::tracking::{OutboxCounts, OutboxItem, OutboxRow};
use crate::store::Result;

pub(super) async fn claim_due(
    pg: &Postgres,
    endpoint: &str,
    now: i64,
    lease_ms: i64,
    limit: usize,
) -> Result<Vec<OutboxItem>> {
    let mut client = pg.client().await?;
    let tx = begin(&mut client, Durability::Normal).await?;
    let stmt = tx
        .prepare_cached(
            "UPDATE webhook_outbox w SET next_attempt_at = $4
             FROM (SELECT id, next_attempt_at FROM webhook_outbox
                   WHERE status = 'pending' AND endpoint = $1 AND next_attempt_at <= $2
                   ORDER BY next_attempt_at, created_at LIMIT $3
                   FOR UPDATE SKIP LOCKED) due
             WHERE w.id = due.id
             RETURNING w.id, w.endpoint, w.payload, w.attempts, w.created_at, due.next_attempt_at",
        )
        .await
        .ctx("preparing the outbox claim")?;
    let rows = tx
        .query(
            &stmt,
            &[
                &endpoint,
                &now,
                &(limit as i64),
                &now.saturating_add(lease_ms),
            ],
        )
        .await
        .ctx("claiming webhook deliveries")?;
    tx.commit().await.ctx("committing a webhook claim")?;
    let mut due: Vec<(i64, OutboxItem)> = rows
        .iter()
        .map(|r| {
            (
                r.get(5),
                OutboxItem {
                    id: r.get(0),
                    endpoint: r.get(1),
                    payload: r.get(2),
                    attempts: r.get::<_, i64>(3) as u32,
                    created_at: r.get(4),
                },
            )
        })
        .collect();
    // RETURNING keeps no order: oldest first, as SQLite hands them out.
    due.sort_by_key(|a| (a.0, a.1.created_at));
    Ok(due.into_iter().map(|(_, item)| item).collect())
}

/// One statement in a transaction that may lose its commit on a server
/// crash (the delivery is then attempted again: at least once).
async fn execute(
    pg: &Postgres,
    what: &str,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<u64> {
    let mut client = pg.client().await?;
    let tx = begin(&mut client, Durability::Normal).await?;
    let stmt = tx.prepare_cached(sql).await.ctx(what)?;
    let n = tx.execute(&stmt, params).await.ctx(what)?;
    tx.commit().await.ctx(what)?;
    Ok(n)
}

pub(super) async fn mark_delivered(pg: &Postgres, id: &str, at: i64) -> Result<()> {
    execute(
        pg,
        "recording a webhook delivery",
        "UPDATE webhook_outbox SET status = 'delivered', attempts = attempts + 1,
                delivered_at = $2, last_error = NULL WHERE id = $1",
        &[&id, &at],
    )
    .await?;
    Ok(())
}

pub(super) async fn mark_failed(
    pg: &Postgres,
    id: &str,
    error: &str,
    next: Option<i64>,
) -> Result<()> {
    match next {
        Some(at) => {
            execute(
                pg,
                "recording a failed webhook attempt",
                "UPDATE webhook_outbox SET attempts = attempts + 1, last_error = $2,
                        next_attempt_at = $3 WHERE id = $1",
                &[&id, &error, &at],
            )
            .await?
        }
        None => {
            execute(
                pg,
                "giving a webhook delivery up",
                "UPDATE webhook_outbox SET status = 'failed', attempts = attempts + 1,
                        last_error = $2 WHERE id = $1",
                &[&id, &error],
            )
            .await?
        }
    };
    Ok(())
}

pub(super) async fn list(pg: &Postgres, failed_only: bool, limit: usize) -> Result<Vec<OutboxRow>> {
    let client = pg.client().await?;
    let stmt = client
        .prepare_cached(
            "SELECT w.id, w.endpoint, e.type, e.email_id, w.status, w.attempts, w.next_attempt_at,
                    w.last_error, w.created_at, w.delivered_at
             FROM webhook_outbox w LEFT JOIN events e ON e.id = w.event_id
             WHERE (NOT $1 OR w.status = 'failed')
             ORDER BY w.created_at DESC LIMIT $2",
        )
        .await
        .ctx("preparing the outbox listing")?;
    let rows = client
        .query(&stmt, &[&failed_only, &(limit as i64)])
        .await
        .ctx("listing webhook deliveries")?;
    Ok(rows
        .iter()
        .map(|r| OutboxRow {
            id: r.get(0),
            endpoint: r.get(1),
            event_type: r.get::<_, Option<String>>(2).unwrap_or_default(),
            email_id: r.get::<_, Option<String>>(3).unwrap_or_default(),
            status: r.get(4),
            attempts: r.get::<_, i64>(5) as u32,
            next_attempt_at: r.get(6),
            last_error: r.get(7),
            created_at: r.get(8),
            delivered_at: r.get(9),
        })
        .collect())
}

pub(super) async fn counts(pg: &Postgres) -> Result<OutboxCounts> {
    let client = pg.client().await?;
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE status = 'pending'),
                    count(*) FILTER (WHERE status = 'delivered'),
                    count(*) FILTER (WHERE status = 'failed')
             FROM webhook_outbox",
            &[],
        )
        .await
        .ctx("counting webhook deliveries")?;
    Ok(OutboxCounts {
        pending: row.get(0),
        delivered: row.get(1),
        failed: row.get(2),
    })
}

/// Puts one delivery (`id`) or those created since `since` back in the
/// queue, due at `now`, and wakes the senders of every node.
pub(super) async fn replay(
    pg: &Postgres,
    id: Option<&str>,
    since: Option<i64>,
    now: i64,
) -> Result<u64> {
    let mut client = pg.client().await?;
    let tx = begin(&mut client, Durability::Full).await?;
    let n = match (id, since) {
        (Some(id), _) => tx
            .execute(
                "UPDATE webhook_outbox SET status = 'pending', next_attempt_at = $2 WHERE id = $1",
                &[&id, &now],
            )
            .await
            .ctx("replaying a webhook delivery")?,
        (None, since) => tx
            .execute(
                "UPDATE webhook_outbox SET status = 'pending', next_attempt_at = $2
                 WHERE created_at >= $1",
                &[&since.unwrap_or(i64::MIN), &now],
            )
            .await
            .ctx("replaying webhook deliveries")?,
    };
    if n > 0 {
        tx.execute("SELECT pg_notify($1, '')", &[&OUTBOX_CHANNEL])
            .await
            .ctx("notifying the webhook senders")?;
    }
    tx.commit().await.ctx("committing a replay")?;
    Ok(n)
}
