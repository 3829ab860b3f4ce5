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
use crate::store::tracking::{ClickJudge, TrackingFacts};
use crate::store::Store;
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

/// Settings of the rules only the store's facts can feed.
#[derive(Debug, Clone, Copy)]
pub struct StoreRules {
    pub machine_click_window_ms: i64,
}

/// The rules only the store's facts can feed, judged as each click is
/// written (so the same on every node: the facts are the shared store's):
/// - a burst of different links of one copy (see [`classify::click_burst`]);
/// - a click before the reader can have had the message (see
///   [`classify::too_soon_after_delivery`]).
///
/// The burst comes first: that is the reason a scanner following every
/// link on delivery has had since the listener judged bursts itself.
#[derive(Debug, Clone, Copy)]
pub struct Judge {
    pub machine_click_window_ms: i64,
    pub burst_window_ms: i64,
}

impl From<StoreRules> for Judge {
    fn from(r: StoreRules) -> Judge {
        Judge {
            machine_click_window_ms: r.machine_click_window_ms,
            burst_window_ms: classify::BURST_WINDOW.as_millis() as i64,
        }
    }
}

impl ClickJudge for Judge {
    fn burst_window_ms(&self) -> i64 {
        self.burst_window_ms
    }

    fn judge(&self, ev: &NewEvent, facts: &TrackingFacts<'_>) -> Option<&'static str> {
        if ev.kind != EventType::Clicked {
            return None;
        }
        let others = facts
            .nearby_clicks
            .iter()
            .map(|c| (c.at, c.link.as_deref()));
        if classify::click_burst(ev.link.as_deref(), ev.at, others, self.burst_window_ms) {
            return Some(classify::reason::BURST_OF_CLICKS);
        }
        let r = facts.recipient?;
        let delivery = Delivery {
            delivered_at_ms: r.delivered_at,
            attempt_started_at_ms: r.attempt_started_at,
            in_progress: r.sending,
        };
        classify::too_soon_after_delivery(ev.at, &delivery, self.machine_click_window_ms)
            .then_some(classify::reason::TOO_SOON_AFTER_DELIVERY)
    }
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
            Ok(_) => return,
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
    let events: Arc<[NewEvent]> = events.into();
    let judge: Arc<dyn ClickJudge> = Arc::new(Judge::from(rules));
    for attempt in 0..=RETRIES {
        let result = store.insert_tracking(events.clone(), judge.clone()).await;
        match result {
            Ok(_) => return,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tracking::{NearbyClick, RecipientDelivery};

    const T: i64 = 1_800_000_000_000;
    const JUDGE: Judge = Judge {
        machine_click_window_ms: 10_000,
        burst_window_ms: 1_000,
    };

    fn click(link: &str, at: i64) -> NewEvent {
        let mut ev = NewEvent::new("e", EventType::Clicked, at);
        ev.rcpt_idx = Some(0);
        ev.link = Some(link.into());
        ev
    }

    fn delivered(at: i64) -> RecipientDelivery {
        RecipientDelivery {
            address: "a@example.net".into(),
            delivered_at: Some(at),
            attempt_started_at: Some(at - 100),
            sending: false,
        }
    }

    fn nearby(link: &str, at: i64) -> NearbyClick {
        NearbyClick {
            at,
            link: Some(link.into()),
        }
    }

    #[test]
    fn a_burst_outranks_the_delivery_window_and_opens_are_not_judged() {
        let rcpt = delivered(T - 1_000);
        let others = [nearby("https://a.example/", T - 300)];
        let facts = TrackingFacts {
            recipient: Some(&rcpt),
            nearby_clicks: &others,
        };
        assert_eq!(
            JUDGE.judge(&click("https://b.example/", T), &facts),
            Some(classify::reason::BURST_OF_CLICKS)
        );
        assert_eq!(
            JUDGE.judge(&click("https://a.example/", T), &facts),
            Some(classify::reason::TOO_SOON_AFTER_DELIVERY),
            "a double click is no burst, but still too soon"
        );
        let mut open = click("https://b.example/", T);
        open.kind = EventType::Opened;
        assert_eq!(JUDGE.judge(&open, &facts), None);
    }

    #[test]
    fn unknown_recipients_are_judged_by_their_clicks_alone() {
        let others = [nearby("https://a.example/", T + 500)];
        let facts = TrackingFacts {
            recipient: None,
            nearby_clicks: &others,
        };
        assert_eq!(
            JUDGE.judge(&click("https://b.example/", T), &facts),
            Some(classify::reason::BURST_OF_CLICKS)
        );
        let alone = TrackingFacts {
            recipient: None,
            nearby_clicks: &[],
        };
        assert_eq!(JUDGE.judge(&click("https://b.example/", T), &alone), None);
        let rcpt = delivered(T - 60_000);
        let later = TrackingFacts {
            recipient: Some(&rcpt),
            nearby_clicks: &[],
        };
        assert_eq!(JUDGE.judge(&click("https://b.example/", T), &later), None);
    }
}
