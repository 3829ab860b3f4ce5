//! The SQLite side of `TrackingStore`, and what the tracking recorder reads
//! while it writes opens and clicks: a recipient's address and delivery
//! times, and its other clicks. The rule that judges a click by those facts
//! lives in `crate::tracking`; the store only hands them over.

use super::{unsubscribe, webhooks, Durability, Sqlite};
use crate::events::NewEvent;
use crate::store::tracking::{
    ClickJudge, NearbyClick, OutboxCounts, OutboxItem, OutboxRow, Recorded, UnsubscribeOutcome,
    UnsubscribeRequest,
};
use crate::store::Result;
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

pub use crate::store::tracking::RecipientDelivery;

pub fn recipient_delivery(
    conn: &Connection,
    email_id: &str,
    idx: u32,
) -> rusqlite::Result<Option<RecipientDelivery>> {
    conn.prepare_cached(
        "SELECT address, delivered_at, attempt_started_at, status = 'sending'
         FROM recipients WHERE email_id = ?1 AND idx = ?2",
    )?
    .query_row(params![email_id, idx], |r| {
        Ok(RecipientDelivery {
            address: r.get(0)?,
            delivered_at: r.get(1)?,
            attempt_started_at: r.get(2)?,
            sending: r.get(3)?,
        })
    })
    .optional()
}

/// A click of one recipient's copy on another link than `link`, strictly
/// within `window_ms` of `at` (index `events_clicks`): the first found, as
/// one is all the burst rule needs.
pub fn nearby_clicks(
    conn: &Connection,
    email_id: &str,
    idx: u32,
    link: Option<&str>,
    at: i64,
    window_ms: i64,
) -> rusqlite::Result<Vec<NearbyClick>> {
    let mut stmt = conn.prepare_cached(
        "SELECT at, link FROM events
         WHERE email_id = ?1 AND rcpt_idx = ?2 AND type = 'email.clicked' AND at > ?3 AND at < ?4
           AND link IS NOT ?5
         LIMIT 1",
    )?;
    let rows = stmt.query_map(
        params![
            email_id,
            idx,
            at.saturating_sub(window_ms),
            at.saturating_add(window_ms),
            link
        ],
        |r| {
            Ok(NearbyClick {
                at: r.get(0)?,
                link: r.get(1)?,
            })
        },
    )?;
    rows.collect()
}

/// Lookups made within one write job, so a batch of hits on one message
/// reads each recipient once. Valid only inside the transaction it was
/// filled in (the rows may change after it commits); the recorder makes a
/// new one per batch, which also bounds it by the batch size.
#[derive(Default)]
pub struct RecipientCache {
    rows: HashMap<(String, u32), Option<RecipientDelivery>>,
}

impl RecipientCache {
    pub fn get(
        &mut self,
        conn: &Connection,
        email_id: &str,
        idx: u32,
    ) -> rusqlite::Result<Option<&RecipientDelivery>> {
        use std::collections::hash_map::Entry;
        let row = match self.rows.entry((email_id.to_string(), idx)) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(recipient_delivery(conn, email_id, idx)?),
        };
        Ok(row.as_ref())
    }
}

/// The clicks a write job has stored so far, per copy: a click whose burst
/// partner came earlier in the same batch (a scanner's clicks arrive
/// together) is judged without probing the index, which keeps the writer's
/// cost per click close to what it was before the rule read the store.
/// Bounded by the batch, like [`RecipientCache`].
#[derive(Default)]
pub struct BatchClicks {
    by_copy: HashMap<(String, u32), Vec<NearbyClick>>,
}

impl BatchClicks {
    /// A click of this batch on another link than `link`, strictly within
    /// `window_ms` of `at`.
    pub fn other_link(
        &self,
        email_id: &str,
        idx: u32,
        link: Option<&str>,
        at: i64,
        window_ms: i64,
    ) -> Option<NearbyClick> {
        self.by_copy
            .get(&(email_id.to_string(), idx))?
            .iter()
            .rev()
            .find(|c| c.link.as_deref() != link && c.at.abs_diff(at) < window_ms.unsigned_abs())
            .cloned()
    }

    pub fn push(&mut self, email_id: &str, idx: u32, at: i64, link: Option<&str>) {
        self.by_copy
            .entry((email_id.to_string(), idx))
            .or_default()
            .push(NearbyClick {
                at,
                link: link.map(str::to_string),
            });
    }
}

#[async_trait::async_trait]
impl crate::store::tracking::TrackingStore for Sqlite {
    async fn insert_tracking(
        &self,
        events: Arc<[NewEvent]>,
        judge: Arc<dyn ClickJudge>,
    ) -> Result<Vec<Recorded>> {
        self.write(Durability::Normal, move |tx| {
            let mut recipients = RecipientCache::default();
            let mut clicks = BatchClicks::default();
            events
                .iter()
                .map(|ev| {
                    super::events::insert_tracking(tx, ev, &mut recipients, &mut clicks, &*judge)
                })
                .collect()
        })
        .await
        .map_err(|e| e.within("storing tracking events"))
    }

    async fn unsubscribe(
        &self,
        req: UnsubscribeRequest,
        suppressing: Arc<HashSet<String>>,
    ) -> Result<UnsubscribeOutcome> {
        self.write(Durability::Full, move |tx| {
            unsubscribe::unsubscribe(tx, &req, &|d| suppressing.contains(d))
        })
        .await
        .map_err(|e| e.within("recording an unsubscribe"))
    }

    async fn webhook_claim_due(
        &self,
        endpoint: &str,
        now: i64,
        lease_ms: i64,
        limit: usize,
    ) -> Result<Vec<OutboxItem>> {
        let endpoint = endpoint.to_string();
        self.write(Durability::Normal, move |tx| {
            webhooks::claim_due(tx, &endpoint, now, lease_ms, limit)
        })
        .await
        .map_err(|e| e.within("claiming webhook deliveries"))
    }

    async fn webhook_delivered(&self, id: &str, at: i64) -> Result<()> {
        let id = id.to_string();
        self.write(Durability::Normal, move |tx| {
            webhooks::mark_delivered(tx, &id, at)
        })
        .await
        .map_err(|e| e.within("recording a webhook delivery"))
    }

    async fn webhook_failed(&self, id: &str, error: &str, next: Option<i64>) -> Result<()> {
        let (id, error) = (id.to_string(), error.to_string());
        self.write(Durability::Normal, move |tx| {
            webhooks::mark_failed(tx, &id, &error, next)
        })
        .await
        .map_err(|e| e.within("recording a failed webhook attempt"))
    }

    async fn webhook_list(&self, failed_only: bool, limit: usize) -> Result<Vec<OutboxRow>> {
        self.read(move |c| webhooks::list(c, failed_only, limit))
            .await
            .map_err(|e| e.within("listing webhook deliveries"))
    }

    async fn webhook_counts(&self) -> Result<OutboxCounts> {
        self.read(webhooks::counts)
            .await
            .map(|(pending, delivered, failed)| OutboxCounts {
                pending,
                delivered,
                failed,
            })
            .map_err(|e| e.within("counting webhook deliveries"))
    }

    async fn webhook_replay_one(&self, id: &str, now: i64) -> Result<u64> {
        let id = id.to_string();
        let n = self
            .write(Durability::Normal, move |tx| {
                webhooks::replay_one(tx, &id, now)
            })
            .await
            .map_err(|e| e.within("replaying a webhook delivery"))?;
        self.outbox_wake().notify_waiters();
        Ok(n as u64)
    }

    async fn webhook_replay_since(&self, since: i64, now: i64) -> Result<u64> {
        let n = self
            .write(Durability::Normal, move |tx| {
                webhooks::replay_since(tx, since, now)
            })
            .await
            .map_err(|e| e.within("replaying webhook deliveries"))?;
        self.outbox_wake().notify_waiters();
        Ok(n as u64)
    }
}
