//! Retention's SQLite side: one batch of pruning, in one short write (the
//! loop that repeats it is `store::retention`).

use super::Tx;
use crate::store::queries::{PruneBatch, Pruned};
use rusqlite::params;

/// Bodies, events, finished webhook deliveries and processed inbound
/// reports, at most `p.batch` of each, in the caller's transaction.
pub fn prune(tx: &Tx<'_>, p: PruneBatch) -> rusqlite::Result<Pruned> {
    collect_segments(tx)?;
    let bodies = super::emails::prune_bodies(tx, p.bodies_before, p.now, p.batch)?;
    let events = super::events::prune(tx, p.events_before, p.batch)?;
    let webhooks = tx.execute(
        "DELETE FROM webhook_outbox WHERE id IN (SELECT id FROM webhook_outbox
         WHERE status != 'pending' AND created_at < ?1 LIMIT ?2)",
        params![p.events_before, p.batch as i64],
    )?;
    let reports = super::reports::prune(tx, p.events_before, p.batch)?;
    Ok(Pruned {
        bodies,
        events,
        webhooks,
        reports,
    })
}

/// Deletes the body segments no row points into any more. It runs before
/// this batch's pruning, so it only ever acts on what earlier, committed
/// prunes emptied: a segment is never deleted by a transaction that could
/// still roll back the rows that stopped using it. A segment that cannot
/// be deleted now is tried again next time.
fn collect_segments(tx: &Tx<'_>) -> rusqlite::Result<()> {
    let Some(spool) = tx.spool else {
        return Ok(());
    };
    let oldest = super::emails::oldest_segment(tx)?;
    match spool.borrow_mut().collect(oldest) {
        Ok(0) => {}
        Ok(n) => tracing::info!("retention: deleted {n} emptied message body segment(s)"),
        Err(e) => tracing::warn!("retention: deleting emptied message body segments: {e}"),
    }
    Ok(())
}
