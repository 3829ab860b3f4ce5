//! Between the tracking listener and the store: a bounded queue and a
//! batching writer. The listener never waits for the database: it hands an
//! event over (or, when the queue is full, counts it as overflow) and
//! answers at once. The writer commits what has gathered every
//! `FLUSH_EVERY` or `MAX_BATCH` events, with `synchronous=NORMAL`: a crash
//! loses at most the events of the last fraction of a second.

use crate::events::NewEvent;
use crate::metrics::Metrics;
use crate::store::{self, Durability, Store};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

const FLUSH_EVERY: Duration = Duration::from_millis(100);
const MAX_BATCH: usize = 5000;
/// A failed batch is retried this many times (a lock held by another
/// process, a full disk that an operator frees) before it is given up.
const RETRIES: u32 = 5;

#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<NewEvent>,
    metrics: Arc<Metrics>,
}

/// Settings the store needs to classify clicks it can only judge against
/// the delivery time (which the listener never reads).
#[derive(Clone, Copy)]
pub struct StoreRules {
    pub machine_click_window_ms: i64,
}

impl Recorder {
    /// Starts the writer task; it ends (after a last flush) when every
    /// `Recorder` clone is dropped.
    pub fn start(
        store: Store,
        metrics: Arc<Metrics>,
        capacity: usize,
        rules: StoreRules,
    ) -> (Recorder, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let task = tokio::spawn(writer(store, rx, metrics.clone(), rules));
        (Recorder { tx, metrics }, task)
    }

    /// Never blocks: a full queue drops the event and counts it.
    pub fn record(&self, ev: NewEvent) {
        if self.tx.try_send(ev).is_err() {
            self.metrics.event_queue_overflow.inc();
        }
    }
}

async fn writer(
    store: Store,
    mut rx: mpsc::Receiver<NewEvent>,
    metrics: Arc<Metrics>,
    rules: StoreRules,
) {
    let mut batch: Vec<NewEvent> = Vec::with_capacity(1024);
    loop {
        let Some(first) = rx.recv().await else { break };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + FLUSH_EVERY;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(ev)) => batch.push(ev),
                Ok(None) | Err(_) => break,
            }
        }
        flush(&store, &mut batch, &metrics, rules).await;
    }
    // Senders are gone (shutdown): whatever is left has been received.
    if !batch.is_empty() {
        flush(&store, &mut batch, &metrics, rules).await;
    }
}

async fn flush(store: &Store, batch: &mut Vec<NewEvent>, metrics: &Metrics, rules: StoreRules) {
    let events = std::mem::take(batch);
    let n = events.len();
    let events = Arc::new(events);
    for attempt in 0..=RETRIES {
        let evs = events.clone();
        let result = store
            .write(Durability::Normal, move |tx| {
                for ev in evs.iter() {
                    store::events::insert_tracking(tx, ev, rules.machine_click_window_ms)?;
                }
                Ok(())
            })
            .await;
        match result {
            Ok(()) => return,
            Err(e) if attempt < RETRIES => {
                tracing::warn!("storing {n} tracking event(s) failed (retrying): {e}");
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
            Err(e) => {
                metrics.events_store_failed.add(n as u64);
                tracing::error!("gave up storing {n} tracking event(s): {e}");
            }
        }
    }
}
