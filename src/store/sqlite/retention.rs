//! Retention's SQLite side: one batch of pruning, in one short write (the
//! loop that repeats it is `store::retention`).

use super::Tx;
use crate::store::queries::{PruneBatch, Pruned};
use rusqlite::params;

/// Bodies, events, finished webhook deliveries and processed inbound
/// reports, at most `p.batch` of each, in the caller's transaction.
pub fn prune(tx: &Tx<'_>, p: PruneBatch) -> rusqlite::Result<Pruned> {
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
