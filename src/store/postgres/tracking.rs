//! The PostgreSQL side of `TrackingStore`: batches of opens and clicks
//! judged on the shared store's facts, and unsubscribes. The outbox is in
//! `webhooks`.
//!
//! Several nodes write tracking batches at once. A click is judged against
//! the clicks of its recipient's copy that are in the store, whichever node
//! took them; two batches with clicks of the same copy take a transaction
//! advisory lock per copy first, so the second sees the first's clicks
//! committed, as one SQLite writer would. The locks are taken in one
//! statement in key order, before any row lock, so batches never deadlock
//! on them. Then the batch's recipient rows, which the shared event insert
//! locks one event at a time (its first-open/click counters), are locked
//! at once in key order: two nodes' batches sharing recipients queue up
//! instead of each holding some and waiting for the other's.

use super::{begin, webhooks, Durability, PgCtx, Postgres};
use crate::events::{EventType, NewEvent};
use crate::store::tracking::{
    ClickJudge, NearbyClick, OutboxCounts, OutboxItem, OutboxRow, RecipientDelivery, Recorded,
    TrackingFacts, UnsubscribeOutcome, UnsubscribeRequest,
};
use crate::store::Result;
use deadpool_postgres::Transaction;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// The first key of the advisory locks on a recipient's copy (the two-key
/// form, a space of its own): issue 14, tracking.
const COPY_LOCK_CLASS: i32 = 1414;
/// Most stored clicks per copy read for a batch: a burst shows within a few.
const NEARBY_CLICKS: i64 = 64;

type Copy = (String, u32);

#[async_trait::async_trait]
impl crate::store::tracking::TrackingStore for Postgres {
    async fn insert_tracking(
        &self,
        events: Arc<[NewEvent]>,
        judge: Arc<dyn ClickJudge>,
    ) -> Result<Vec<Recorded>> {
        let mut client = self.client().await?;
        let tx = begin(&mut client, Durability::Normal).await?;
        let out = insert_tracking(&tx, self, &events, &*judge).await?;
        tx.commit().await.ctx("committing tracking events")?;
        Ok(out)
    }

    async fn unsubscribe(
        &self,
        req: UnsubscribeRequest,
        suppressing: Arc<HashSet<String>>,
    ) -> Result<UnsubscribeOutcome> {
        let mut client = self.client().await?;
        let tx = begin(&mut client, Durability::Full).await?;
        let out = unsubscribe(&tx, self, &req, &suppressing).await?;
        tx.commit().await.ctx("committing an unsubscribe")?;
        Ok(out)
    }

    async fn webhook_claim_due(
        &self,
        endpoint: &str,
        now: i64,
        lease_ms: i64,
        limit: usize,
    ) -> Result<Vec<OutboxItem>> {
        webhooks::claim_due(self, endpoint, now, lease_ms, limit).await
    }

    async fn webhook_delivered(&self, id: &str, at: i64) -> Result<()> {
        webhooks::mark_delivered(self, id, at).await
    }

    async fn webhook_failed(&self, id: &str, error: &str, next: Option<i64>) -> Result<()> {
        webhooks::mark_failed(self, id, error, next).await
    }

    async fn webhook_list(&self, failed_only: bool, limit: usize) -> Result<Vec<OutboxRow>> {
        webhooks::list(self, failed_only, limit).await
    }

    async fn webhook_counts(&self) -> Result<OutboxCounts> {
        webhooks::counts(self).await
    }

    async fn webhook_replay_one(&self, id: &str, now: i64) -> Result<u64> {
        webhooks::replay(self, Some(id), None, now).await
    }

    async fn webhook_replay_since(&self, since: i64, now: i64) -> Result<u64> {
        webhooks::replay(self, None, Some(since), now).await
    }
}

/// `insert_tracking` in the caller's transaction: as sqlite/events.rs
/// `insert_tracking`, with the lookups of the whole batch made up front
/// (one statement each, not one per event).
async fn insert_tracking(
    tx: &Transaction<'_>,
    pg: &Postgres,
    events: &[NewEvent],
    judge: &dyn ClickJudge,
) -> Result<Vec<Recorded>> {
    let window = judge.burst_window_ms();
    // The copies whose recipient row is needed, and the time span around
    // the clicks to be judged of each copy.
    let mut copies: HashSet<Copy> = HashSet::new();
    let mut spans: HashMap<Copy, (i64, i64)> = HashMap::new();
    for ev in events.iter() {
        let Some(idx) = ev.rcpt_idx else { continue };
        let copy = (ev.email_id.clone(), idx);
        copies.insert(copy.clone());
        if ev.machine != Some(true) && ev.kind == EventType::Clicked {
            let span = spans.entry(copy).or_insert((ev.at, ev.at));
            span.0 = span.0.min(ev.at);
            span.1 = span.1.max(ev.at);
        }
    }
    lock_copies(tx, spans.keys()).await?;
    let recipients = recipient_rows(tx, &copies).await?;
    let mut clicks = stored_clicks(tx, &spans, window).await?;

    let mut out = Vec::with_capacity(events.len());
    for ev in events.iter() {
        let Some(idx) = ev.rcpt_idx else {
            let id = super::events::insert(tx, pg, ev).await?;
            out.push(recorded(id, ev));
            continue;
        };
        let copy = (ev.email_id.clone(), idx);
        let rcpt = match &ev.recipient {
            None => recipients.get(&copy),
            Some(_) => None,
        };
        let mut ev = std::borrow::Cow::Borrowed(ev);
        if ev.machine != Some(true) {
            let nearby: Vec<NearbyClick> = match (ev.kind, clicks.get(&copy)) {
                (EventType::Clicked, Some(stored)) => stored
                    .iter()
                    .filter(|c| c.link != ev.link && c.at.abs_diff(ev.at) < window.unsigned_abs())
                    .cloned()
                    .collect(),
                _ => Vec::new(),
            };
            let facts = TrackingFacts {
                recipient: rcpt,
                nearby_clicks: &nearby,
            };
            if let Some(reason) = judge.judge(&ev, &facts) {
                let ev = ev.to_mut();
                ev.machine = Some(true);
                ev.machine_reason = Some(reason.to_string());
            }
        }
        if let Some(r) = rcpt {
            ev.to_mut().recipient = Some(r.address.clone());
        }
        let id = super::events::insert(tx, pg, &ev).await?;
        if ev.kind == EventType::Clicked {
            // Later clicks of the batch see this one, as they would
            // in the store.
            clicks.entry(copy).or_default().push(NearbyClick {
                at: ev.at,
                link: ev.link.clone(),
            });
        }
        out.push(recorded(id, &ev));
    }
    Ok(out)
}

fn recorded(event_id: i64, ev: &NewEvent) -> Recorded {
    Recorded {
        event_id,
        recipient: ev.recipient.clone(),
        machine: ev.machine == Some(true),
        machine_reason: ev.machine_reason.clone(),
    }
}

/// Takes the advisory lock of each copy, in key order, until the
/// transaction ends.
async fn lock_copies<'a>(
    tx: &Transaction<'_>,
    copies: impl Iterator<Item = &'a Copy>,
) -> Result<()> {
    let (ids, idxs): (Vec<&str>, Vec<i64>) = copies
        .map(|(id, idx)| (id.as_str(), i64::from(*idx)))
        .unzip();
    if ids.is_empty() {
        return Ok(());
    }
    let stmt = tx
        .prepare_cached(
            "SELECT count(pg_advisory_xact_lock($1, k)) FROM (
                 SELECT DISTINCT hashtext(e || '/' || i) AS k
                 FROM unnest($2::text[], $3::bigint[]) AS u(e, i) ORDER BY k) s",
        )
        .await
        .ctx("preparing the copy locks")?;
    tx.query_one(&stmt, &[&COPY_LOCK_CLASS, &ids, &idxs])
        .await
        .ctx("locking the clicked copies")?;
    Ok(())
}

/// The recipients' rows, locked in key order until the transaction ends.
async fn recipient_rows(
    tx: &Transaction<'_>,
    copies: &HashSet<Copy>,
) -> Result<HashMap<Copy, RecipientDelivery>> {
    let (ids, idxs): (Vec<&str>, Vec<i64>) = copies
        .iter()
        .map(|(id, idx)| (id.as_str(), i64::from(*idx)))
        .unzip();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let stmt = tx
        .prepare_cached(
            "SELECT r.email_id, r.idx, r.address, r.delivered_at, r.attempt_started_at,
                    r.status = 'sending'
             FROM unnest($1::text[], $2::bigint[]) AS u(email_id, idx)
             JOIN recipients r ON r.email_id = u.email_id AND r.idx = u.idx
             ORDER BY r.email_id, r.idx FOR UPDATE OF r",
        )
        .await
        .ctx("preparing the recipients lookup")?;
    let rows = tx
        .query(&stmt, &[&ids, &idxs])
        .await
        .ctx("reading the tracked recipients")?;
    Ok(rows
        .iter()
        .map(|r| {
            let idx: i64 = r.get(1);
            (
                (r.get(0), idx as u32),
                RecipientDelivery {
                    address: r.get(2),
                    delivered_at: r.get(3),
                    attempt_started_at: r.get(4),
                    sending: r.get(5),
                },
            )
        })
        .collect())
}

/// The stored clicks of each copy within `window` of its span, the latest
/// [`NEARBY_CLICKS`] of each (index `events_clicks`).
async fn stored_clicks(
    tx: &Transaction<'_>,
    spans: &HashMap<Copy, (i64, i64)>,
    window: i64,
) -> Result<HashMap<Copy, Vec<NearbyClick>>> {
    if spans.is_empty() {
        return Ok(HashMap::new());
    }
    let mut ids = Vec::with_capacity(spans.len());
    let (mut idxs, mut los, mut his) = (Vec::new(), Vec::new(), Vec::new());
    for ((id, idx), (first, last)) in spans {
        ids.push(id.as_str());
        idxs.push(i64::from(*idx));
        los.push(first.saturating_sub(window));
        his.push(last.saturating_add(window));
    }
    let stmt = tx
        .prepare_cached(
            "SELECT email_id, rcpt_idx, at, link FROM (
                 SELECT e.email_id, e.rcpt_idx, e.at, e.link, row_number() OVER (
                     PARTITION BY e.email_id, e.rcpt_idx ORDER BY e.at DESC) AS n
                 FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[])
                      AS u(email_id, idx, lo, hi)
                 JOIN events e ON e.email_id = u.email_id AND e.rcpt_idx = u.idx
                      AND e.type = 'email.clicked' AND e.at > u.lo AND e.at < u.hi) c
             WHERE n <= $5",
        )
        .await
        .ctx("preparing the clicks lookup")?;
    let rows = tx
        .query(&stmt, &[&ids, &idxs, &los, &his, &NEARBY_CLICKS])
        .await
        .ctx("reading the copies' clicks")?;
    let mut out: HashMap<Copy, Vec<NearbyClick>> = HashMap::new();
    for r in rows {
        let idx: i64 = r.get(1);
        out.entry((r.get(0), idx as u32))
            .or_default()
            .push(NearbyClick {
                at: r.get(2),
                link: r.get(3),
            });
    }
    Ok(out)
}

/// As sqlite/unsubscribe.rs `unsubscribe`. The recipient's row is locked
/// first, so two nodes taking requests of one recipient at once store one
/// event.
async fn unsubscribe(
    tx: &Transaction<'_>,
    pg: &Postgres,
    req: &UnsubscribeRequest,
    suppressing: &HashSet<String>,
) -> Result<UnsubscribeOutcome> {
    let idx = i64::from(req.rcpt_idx);
    let stmt = tx
        .prepare_cached(
            "SELECT r.address, e.domain FROM recipients r JOIN emails e ON e.id = r.email_id
             WHERE r.email_id = $1 AND r.idx = $2 FOR UPDATE OF r",
        )
        .await
        .ctx("preparing the unsubscribe lookup")?;
    let Some(row) = tx
        .query_opt(&stmt, &[&req.email_id, &idx])
        .await
        .ctx("reading the unsubscribing recipient")?
    else {
        return Ok(UnsubscribeOutcome::UnknownRecipient);
    };
    // As SQLite's lower() (ASCII) and the suppression list's own lowercasing.
    let address: String = row.get::<_, String>(0).to_lowercase();
    let domain: String = row.get::<_, String>(1).to_ascii_lowercase();
    let suppress = suppressing.contains(&domain);
    let stmt = tx
        .prepare_cached(
            "SELECT id FROM events WHERE email_id = $1 AND rcpt_idx = $2 AND type = $3
             ORDER BY id LIMIT 1",
        )
        .await
        .ctx("preparing the earlier unsubscribe lookup")?;
    let earlier: Option<i64> = tx
        .query_opt(
            &stmt,
            &[&req.email_id, &idx, &EventType::Unsubscribed.as_str()],
        )
        .await
        .ctx("looking for an earlier unsubscribe")?
        .map(|r| r.get(0));
    if let Some(event_id) = earlier {
        let suppression_added =
            suppress && add_suppression(tx, &address, &domain, event_id, req.at).await?;
        return Ok(UnsubscribeOutcome::Repeated {
            event_id,
            suppression_added,
        });
    }
    let mut ev = NewEvent::new(req.email_id.clone(), EventType::Unsubscribed, req.at);
    ev.rcpt_idx = Some(req.rcpt_idx);
    ev.ip = req.ip.clone();
    ev.user_agent = req.user_agent.clone();
    ev.detail = Some(json!({
        "via": req.via.as_str(),
        "domain": domain,
        "suppressed": suppress,
    }));
    let event_id = super::events::insert(tx, pg, &ev).await?;
    let suppression_added =
        suppress && add_suppression(tx, &address, &domain, event_id, req.at).await?;
    Ok(UnsubscribeOutcome::Unsubscribed {
        event_id,
        address,
        domain,
        suppression_added,
    })
}

/// An `unsubscribe` entry for the sending domain, unless the address is on
/// its list already. Returns whether a row was added.
async fn add_suppression(
    tx: &Transaction<'_>,
    address: &str,
    domain: &str,
    event_id: i64,
    at: i64,
) -> Result<bool> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO suppressions (address, scope, reason, event_id, created_at, expires_at)
             VALUES ($1, $2, 'unsubscribe', $3, $4, NULL)
             ON CONFLICT (address, scope) DO NOTHING",
        )
        .await
        .ctx("preparing the suppression insert")?;
    let n = tx
        .execute(&stmt, &[&address, &domain, &event_id, &at])
        .await
        .ctx("adding an unsubscribe suppression")?;
    Ok(n == 1)
}
