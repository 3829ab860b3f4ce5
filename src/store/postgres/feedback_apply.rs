//! Applying received reports on PostgreSQL: the same steps as
//! sqlite/feedback.rs `apply` and `apply_batch`, in one transaction with a
//! savepoint per report.
//!
//! Several nodes may apply reports at once. A report is claimed by an
//! UPDATE of its pending row that skips a row another node holds
//! (`SKIP LOCKED`), so a report read by two nodes is applied by one; if
//! that one's batch fails, the report is still pending for the next pass.
//! The linked recipient is read `FOR UPDATE`: two reports about one
//! recipient, on two nodes, are applied one after the other, and the
//! second sees what the first did (one bounce event, not two). Two
//! batches locking two recipients in opposite orders may deadlock; the
//! server then fails one of them, and that whole batch is rolled back and
//! read again later, rather than its report kept with the error.

use super::{events, PgCtx, Postgres};
use crate::events::{EventType, NewEvent};
use crate::store::feedback::{
    linked_outcome, scope, unsubscribe_detail, unsubscribe_outcome, Action, Applied,
    LinkedRecipient, Outcome, Plan, Reason, ReportWork, Suppression,
};
use crate::store::sqlite::rollups::bit;
use crate::store::{Result, StoreError};
use deadpool_postgres::{GenericClient, Transaction};
use serde_json::{json, Value};

/// Applies `batch` in order, each report under its own savepoint: a report
/// whose effects fail is rolled back alone and kept, processed, with the
/// error. Only a failing savepoint statement fails the whole batch.
pub async fn apply_batch(
    tx: &mut Transaction<'_>,
    pg: &Postgres,
    batch: &[ReportWork],
    now: i64,
) -> Result<Vec<Applied>> {
    let mut out = Vec::with_capacity(batch.len());
    for w in batch {
        let sp = tx.savepoint("report").await.ctx("opening a savepoint")?;
        let error = match apply(&sp, pg, w, now).await {
            Ok(outcome) => {
                sp.commit().await.ctx("releasing a savepoint")?;
                out.push((w.id, Ok(outcome)));
                continue;
            }
            Err(e) if retry_later(&e) => {
                return Err(StoreError::msg(format!(
                    "{} (the batch is rolled back, to be applied again later)",
                    describe(&e)
                )))
            }
            Err(e) => describe(&e),
        };
        sp.rollback().await.ctx("rolling back a failed report")?;
        if claim(tx, w.id, now).await? {
            set_outcome(tx, w.id, w.kind, &json!({ "error": error })).await?;
        }
        out.push((w.id, Err(error)));
    }
    Ok(out)
}

/// The error as stored with a report (the server's message included: see
/// `PgError`).
fn describe(e: &StoreError) -> String {
    e.to_string()
}

/// Whether `e` is the server refusing this transaction for now (a
/// deadlock, a serialization failure): the batch is worth running again,
/// and the report must not be marked failed for it.
fn retry_later(e: &StoreError) -> bool {
    super::is_transient(e)
}

/// One report: claimed, its plan carried out, its outcome kept or the row
/// deleted. `None` when it was no longer pending.
async fn apply(
    tx: &Transaction<'_>,
    pg: &Postgres,
    w: &ReportWork,
    now: i64,
) -> Result<Option<Outcome>> {
    if !claim(tx, w.id, now).await? {
        return Ok(None);
    }
    let (email_id, idx, linked_by, decide) = match &w.plan {
        Plan::Error(e) => {
            set_outcome(tx, w.id, w.kind, &json!({ "error": e })).await?;
            return Ok(Some(Outcome::Ignored));
        }
        Plan::Drop(outcome) => return dropped(tx, w.id, *outcome).await,
        Plan::Linked {
            email_id,
            idx,
            linked_by,
            decide,
        } => (email_id, *idx, *linked_by, decide),
    };
    let Some(rcpt) = recipient(tx, email_id, idx).await? else {
        // A token of ours for an email this store does not have.
        return dropped(tx, w.id, Outcome::Unlinked).await;
    };
    // The decision is pure; a panic in it is a bug, kept with the report.
    let action = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decide(&rcpt)))
        .map_err(|_| StoreError::msg("internal error: deciding the report's effect panicked"))?;
    let (outcome, detail) = match action {
        Action::Drop(outcome) => return dropped(tx, w.id, outcome).await,
        Action::Nothing(outcome, why) => (outcome, json!({ "changed": false, "why": why })),
        Action::Change(outcome, c) => {
            if let Some(response) = &c.bounce {
                set_bounced(tx, email_id, idx, w.received_at, response).await?;
            }
            let mut ev = NewEvent::new(email_id.clone(), c.event, w.received_at);
            ev.rcpt_idx = Some(idx);
            ev.recipient = Some(rcpt.address.clone());
            ev.detail = Some(c.detail);
            let event_id = events::insert(tx, pg, &ev).await?;
            let mut detail = c.outcome;
            detail["event_id"] = event_id.into();
            if let Some(reason) = c.suppress {
                let added = add_suppression(
                    tx,
                    &entry(&rcpt.address, &rcpt.domain, reason, event_id, w.received_at),
                )
                .await?;
                if added {
                    tracing::info!(%email_id, rcpt = idx, reason = reason.as_str(), "recipient suppressed after a feedback report");
                }
                detail["suppressed"] = added.into();
            }
            (outcome, detail)
        }
        Action::Unsubscribe { suppress } => (
            Outcome::Unsubscribe,
            unsubscribe_by_mail(tx, pg, email_id, idx, w.received_at, suppress).await?,
        ),
    };
    let detail = linked_outcome(detail, outcome, email_id, idx, &rcpt.address, linked_by);
    set_outcome(tx, w.id, w.kind, &detail).await?;
    Ok(Some(outcome))
}

fn entry(address: &str, domain: &str, reason: Reason, event_id: i64, at: i64) -> Suppression {
    Suppression {
        address: address.to_lowercase(),
        domain: Some(domain.to_string()),
        reason: reason.as_str().into(),
        event_id: Some(event_id),
        created_at: at,
        expires_at: None,
    }
}

async fn dropped(tx: &Transaction<'_>, id: i64, outcome: Outcome) -> Result<Option<Outcome>> {
    let stmt = tx
        .prepare_cached("DELETE FROM inbound_reports WHERE id = $1")
        .await
        .ctx("preparing the report delete")?;
    tx.execute(&stmt, &[&id]).await.ctx("deleting a report")?;
    Ok(Some(outcome))
}

/// Takes a pending report: false when it is no longer pending, or
/// another node's transaction holds it.
async fn claim(tx: &Transaction<'_>, id: i64, at: i64) -> Result<bool> {
    let stmt = tx
        .prepare_cached(
            "UPDATE inbound_reports SET processed_at = $2
             WHERE id = (SELECT id FROM inbound_reports
                         WHERE id = $1 AND processed_at IS NULL FOR UPDATE SKIP LOCKED)",
        )
        .await
        .ctx("preparing the report claim")?;
    let n = tx
        .execute(&stmt, &[&id, &at])
        .await
        .ctx("claiming a report")?;
    Ok(n == 1)
}

async fn set_outcome(tx: &Transaction<'_>, id: i64, kind: &str, outcome: &Value) -> Result<()> {
    let stmt = tx
        .prepare_cached("UPDATE inbound_reports SET kind = $2, outcome = $3 WHERE id = $1")
        .await
        .ctx("preparing the report outcome")?;
    tx.execute(&stmt, &[&id, &kind, &outcome.to_string()])
        .await
        .ctx("keeping a report's outcome")?;
    Ok(())
}

/// The recipient a token names, locked until the commit.
async fn recipient(
    tx: &Transaction<'_>,
    email_id: &str,
    idx: u32,
) -> Result<Option<LinkedRecipient>> {
    let stmt = tx
        .prepare_cached(
            "SELECT r.address, r.status, r.counted, lower(e.domain)
             FROM recipients r JOIN emails e ON e.id = r.email_id
             WHERE r.email_id = $1 AND r.idx = $2 FOR UPDATE OF r",
        )
        .await
        .ctx("preparing the linked recipient read")?;
    let row = tx
        .query_opt(&stmt, &[&email_id, &i64::from(idx)])
        .await
        .ctx("reading the linked recipient")?;
    Ok(row.map(|r| LinkedRecipient {
        address: r.get(0),
        status: r.get(1),
        complained: r.get::<_, i64>(2) & bit::COMPLAINED != 0,
        domain: r.get(3),
    }))
}

/// See sqlite/feedback.rs `set_bounced`.
async fn set_bounced(
    tx: &Transaction<'_>,
    email_id: &str,
    idx: u32,
    at: i64,
    response: &str,
) -> Result<bool> {
    let stmt = tx
        .prepare_cached(
            "UPDATE recipients SET status = 'bounced', bounced_at = $3, last_response = $4,
                    next_attempt_at = NULL, lease_until = NULL, lease_id = NULL
             WHERE email_id = $1 AND idx = $2 AND status NOT IN ('bounced', 'suppressed')",
        )
        .await
        .ctx("preparing the bounce update")?;
    let n = tx
        .execute(&stmt, &[&email_id, &i64::from(idx), &at, &response])
        .await
        .ctx("marking a recipient bounced")?;
    Ok(n == 1)
}

/// Adds `s` unless the address is already suppressed in that scope; see
/// `FeedbackStore::add_suppression`.
pub async fn add_suppression<C: GenericClient>(c: &C, s: &Suppression) -> Result<bool> {
    let stmt = c
        .prepare_cached(
            "INSERT INTO suppressions (address, scope, reason, event_id, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (address, scope) DO NOTHING",
        )
        .await
        .ctx("preparing the suppression insert")?;
    let n = c
        .execute(
            &stmt,
            &[
                &s.address.to_lowercase(),
                &scope(s.domain.as_deref()),
                &s.reason,
                &s.event_id,
                &s.created_at,
                &s.expires_at,
            ],
        )
        .await
        .ctx("adding a suppression")?;
    Ok(n == 1)
}

/// Mail to `unsubscribe+{token}@…`: `email.unsubscribed` once per
/// recipient (via `mailto`), and the address on the sending domain's list
/// when `suppress`, also on a repeat (the recipient asked again). See
/// sqlite/unsubscribe.rs, which this follows.
async fn unsubscribe_by_mail(
    tx: &Transaction<'_>,
    pg: &Postgres,
    email_id: &str,
    idx: u32,
    at: i64,
    suppress: bool,
) -> Result<Value> {
    let idx64 = i64::from(idx);
    let stmt = tx
        .prepare_cached(
            "SELECT lower(r.address), lower(e.domain) FROM recipients r
             JOIN emails e ON e.id = r.email_id WHERE r.email_id = $1 AND r.idx = $2",
        )
        .await
        .ctx("preparing the recipient scope read")?;
    let Some(row) = tx
        .query_opt(&stmt, &[&email_id, &idx64])
        .await
        .ctx("reading the recipient's scope")?
    else {
        return Ok(unsubscribe_outcome(None, false, false));
    };
    let (address, domain): (String, String) = (row.get(0), row.get(1));
    let stmt = tx
        .prepare_cached(
            "SELECT id FROM events WHERE email_id = $1 AND rcpt_idx = $2 AND type = $3
             ORDER BY id LIMIT 1",
        )
        .await
        .ctx("preparing the earlier unsubscribe read")?;
    let earlier: Option<i64> = tx
        .query_opt(
            &stmt,
            &[&email_id, &idx64, &EventType::Unsubscribed.as_str()],
        )
        .await
        .ctx("reading an earlier unsubscribe")?
        .map(|r| r.get(0));
    let (event_id, new) = match earlier {
        Some(id) => (id, false),
        None => {
            let mut ev = NewEvent::new(email_id.to_string(), EventType::Unsubscribed, at);
            ev.rcpt_idx = Some(idx);
            ev.detail = Some(unsubscribe_detail(&domain, suppress));
            (events::insert(tx, pg, &ev).await?, true)
        }
    };
    let added = suppress
        && add_suppression(
            tx,
            &entry(&address, &domain, Reason::Unsubscribe, event_id, at),
        )
        .await?;
    Ok(unsubscribe_outcome(Some(event_id), new, added))
}
