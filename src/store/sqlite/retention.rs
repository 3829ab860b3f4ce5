//! Retention: message bodies go after `retain_messages` (links keep working,
//! the tokens carry everything a redirect needs), events and delivered
//! webhook rows, and the inbound reports they came from, after
//! `retain_events`. Pruned in small batches, each its
//! own short write, so accepting mail never waits behind a big delete.

use super::{Durability, Store};
use rusqlite::params;
use std::time::Duration;
use tokio::sync::watch;

const BATCH: usize = 500;
const EVERY: Duration = Duration::from_secs(600);

pub async fn run(
    store: Store,
    retain_messages: Duration,
    retain_events: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        if let Err(e) = prune_once(&store, retain_messages, retain_events, &shutdown).await {
            tracing::warn!("retention: {e}");
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// One pass: returns how many bodies, events, webhook rows and inbound
/// reports went.
pub async fn prune_once(
    store: &Store,
    retain_messages: Duration,
    retain_events: Duration,
    shutdown: &watch::Receiver<bool>,
) -> super::Result<(usize, usize, usize, usize)> {
    let now = super::now_ms();
    let body_cutoff = now - retain_messages.as_millis() as i64;
    let event_cutoff = now - retain_events.as_millis() as i64;
    let mut totals = (0, 0, 0, 0);
    loop {
        if *shutdown.borrow() {
            break;
        }
        let (b, e, w, r) = store
            .write(Durability::Normal, move |tx| {
                let b = super::emails::prune_bodies(tx, body_cutoff, now, BATCH)?;
                let e = super::events::prune(tx, event_cutoff, BATCH)?;
                let w = tx.execute(
                    "DELETE FROM webhook_outbox WHERE id IN (SELECT id FROM webhook_outbox
                     WHERE status != 'pending' AND created_at < ?1 LIMIT ?2)",
                    params![event_cutoff, BATCH as i64],
                )?;
                let r = super::reports::prune(tx, event_cutoff, BATCH)?;
                Ok((b, e, w, r))
            })
            .await?;
        totals.0 += b;
        totals.1 += e;
        totals.2 += w;
        totals.3 += r;
        if b < BATCH && e < BATCH && w < BATCH && r < BATCH {
            break;
        }
        // Let waiting writers in between batches.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if totals != (0, 0, 0, 0) {
        tracing::info!(
            "retention: dropped {} message bodies, {} events, {} webhook deliveries, {} inbound reports",
            totals.0,
            totals.1,
            totals.2,
            totals.3
        );
    }
    Ok(totals)
}
