//! Between the tracking listener and the store: a bounded queue and a
//! batching writer. The listener never waits for the database: it hands an
//! event over and answers. Only when the queue is full does it wait, at
//! most `QUEUE_WAIT`, for room (so a burst beyond the writer's pace slows
//! the answers down instead of losing events); past that the event is
//! counted as overflow. The writer commits what has gathered every
//! `FLUSH_EVERY` or `MAX_BATCH` events, with `synchronous=NORMAL`: a crash
//! loses at most the events of the last fraction of a second.

use super::classify::{self, Delivery};
use crate::events::{EventType, NewEvent};
use crate::metrics::Metrics;
use crate::store::sqlite::tracking::{RecipientCache, RecipientDelivery};
use crate::store::{self, Durability, Store};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::{self, error::TrySendError};

const FLUSH_EVERY: Duration = Duration::from_millis(100);
const MAX_BATCH: usize = 5000;
/// How long a hit waits for room in a full queue. The writer frees room
/// every commit (a few tens of milliseconds); a queue still full after this
/// means the store is stuck, and answers must not hang on it.
const QUEUE_WAIT: Duration = Duration::from_secs(1);
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

    /// Queues an event; when the queue is full, waits up to `QUEUE_WAIT`
    /// for room, then drops the event and counts it.
    pub async fn record(&self, ev: NewEvent) {
        let ev = match self.tx.try_send(ev) {
            Ok(()) => return,
            Err(TrySendError::Full(ev)) => ev,
            Err(TrySendError::Closed(_)) => {
                self.metrics.event_queue_overflow.inc();
                return;
            }
        };
        // The wait runs in a task of its own: a client that hangs up while
        // its hit waits (wrk stopping, a browser moving on) has had its
        // answer counted, and its event must still be queued, not dropped
        // with the request.
        let (tx, metrics) = (self.tx.clone(), self.metrics.clone());
        let waiter = tokio::spawn(async move {
            match tokio::time::timeout(QUEUE_WAIT, tx.send(ev)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => metrics.event_queue_overflow.inc(),
            }
        });
        let _ = waiter.await;
    }
}

/// The rule only the store's facts can feed: a click before the reader can
/// have had the message (see [`classify::too_soon_after_delivery`]).
fn judge(ev: &NewEvent, r: &RecipientDelivery, window_ms: i64) -> Option<&'static str> {
    let delivery = Delivery {
        delivered_at_ms: r.delivered_at,
        attempt_started_at_ms: r.attempt_started_at,
        in_progress: r.sending,
    };
    (ev.kind == EventType::Clicked
        && classify::too_soon_after_delivery(ev.at, &delivery, window_ms))
    .then_some(classify::reason::TOO_SOON_AFTER_DELIVERY)
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
                let window_ms = rules.machine_click_window_ms;
                let judge = |ev: &NewEvent, r: &RecipientDelivery| judge(ev, r, window_ms);
                let mut recipients = RecipientCache::default();
                for ev in evs.iter() {
                    store::sqlite::events::insert_tracking(tx, ev, &mut recipients, &judge)?;
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
