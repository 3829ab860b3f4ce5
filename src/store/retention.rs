//! Retention: message bodies go after `retain_messages` (links keep working,
//! the tokens carry everything a redirect needs), events and delivered
//! webhook rows, and the inbound reports they came from, after
//! `retain_events`. Pruned in small batches, each its own short write
//! (`QueryStore::prune`), so accepting mail never waits behind a big
//! delete.

use super::queries::{PruneBatch, Pruned};
use super::Store;
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

/// One pass, batch after batch until a batch finds less than a full one of
/// everything: returns what went.
pub async fn prune_once(
    store: &Store,
    retain_messages: Duration,
    retain_events: Duration,
    shutdown: &watch::Receiver<bool>,
) -> super::Result<Pruned> {
    let now = super::now_ms();
    let batch = PruneBatch {
        bodies_before: now - retain_messages.as_millis() as i64,
        events_before: now - retain_events.as_millis() as i64,
        now,
        batch: BATCH,
    };
    let mut totals = Pruned::default();
    loop {
        if *shutdown.borrow() {
            break;
        }
        let p = store.prune(batch).await?;
        totals.bodies += p.bodies;
        totals.events += p.events;
        totals.webhooks += p.webhooks;
        totals.reports += p.reports;
        if p.bodies < BATCH && p.events < BATCH && p.webhooks < BATCH && p.reports < BATCH {
            break;
        }
        // Let waiting writers in between batches.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if totals != Pruned::default() {
        tracing::info!(
            "retention: dropped {} message bodies, {} events, {} webhook deliveries, {} inbound reports",
            totals.bodies,
            totals.events,
            totals.webhooks,
            totals.reports
        );
    }
    Ok(totals)
}
