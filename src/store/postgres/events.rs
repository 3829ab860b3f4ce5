//! The one way an event enters the PostgreSQL store: its row, the
//! recipient's first open/click and rollup bits, and its webhook outbox
//! rows, in the caller's transaction (see sqlite/events.rs, which this
//! follows statement for statement).

use super::{PgCtx, Postgres, OUTBOX_CHANNEL};
use crate::events::{EmailSummary, NewEvent};
use crate::store::sqlite::rollups::{bit, bits_for, hour_of};
use crate::store::Result;
use deadpool_postgres::Transaction;

/// Stores an event and returns its id. Fills in the recipient address from
/// the queue when only its index is known. `detail.node` names the node
/// that stored it.
pub async fn insert(tx: &Transaction<'_>, pg: &Postgres, ev: &NewEvent) -> Result<i64> {
    insert_about(tx, pg, ev, None).await
}

/// [`insert`], with the webhooks' summary given for an event about no
/// email (`domain.updated`: the subscriptions' `domains` filter applies to
/// the domain itself).
pub async fn insert_about(
    tx: &Transaction<'_>,
    pg: &Postgres,
    ev: &NewEvent,
    about: Option<&EmailSummary>,
) -> Result<i64> {
    let idx = ev.rcpt_idx.map(i64::from);
    // Copied only when the address has to be filled in; the webhook
    // payload below names the recipient too.
    let mut ev = std::borrow::Cow::Borrowed(ev);
    if let (None, Some(idx)) = (&ev.recipient, idx) {
        let stmt = tx
            .prepare_cached("SELECT address FROM recipients WHERE email_id = $1 AND idx = $2")
            .await
            .ctx("preparing the recipient lookup")?;
        ev.to_mut().recipient = tx
            .query_opt(&stmt, &[&ev.email_id, &idx])
            .await
            .ctx("looking up an event's recipient")?
            .map(|r| r.get(0));
    }
    let ev: &NewEvent = &ev;
    let recipient = &ev.recipient;
    let detail =
        crate::store::detail_with_node(ev.detail.as_ref(), &pg.node_id).map(|d| d.to_string());
    let stmt = tx
        .prepare_cached(
            "INSERT INTO events (email_id, rcpt_idx, recipient, type, at, ip, user_agent, referer,
                                 link, machine, machine_reason, detail)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id",
        )
        .await
        .ctx("preparing the event insert")?;
    let machine = ev.machine.map(i64::from);
    let id: i64 = tx
        .query_one(
            &stmt,
            &[
                &ev.email_id,
                &idx,
                &recipient,
                &ev.kind.as_str(),
                &ev.at,
                &ev.ip,
                &ev.user_agent,
                &ev.referer,
                &ev.link,
                &machine,
                &ev.machine_reason,
                &detail,
            ],
        )
        .await
        .ctx("storing an event")?
        .get(0);
    if let Some(idx) = idx {
        rollup(tx, &ev.email_id, idx, ev).await?;
    }
    if !pg.hooks.is_empty() {
        let summary = match about {
            Some(a) => Some(a.clone()),
            None => summary(tx, &ev.email_id).await?,
        };
        enqueue(tx, pg, id, ev, summary.as_ref()).await?;
    }
    Ok(id)
}

/// Sets the recipient's new counter bits (and first `opened_at` /
/// `clicked_at`) and appends them to its email's hourly rollup (see
/// `ROLLUPS`). The row lock taken by `FOR UPDATE` makes two nodes counting
/// the same recipient at once count it once.
async fn rollup(tx: &Transaction<'_>, email_id: &str, idx: i64, ev: &NewEvent) -> Result<()> {
    let stmt = tx
        .prepare_cached(
            "SELECT r.counted, e.created_at, lower(e.domain)
             FROM recipients r JOIN emails e ON e.id = r.email_id
             WHERE r.email_id = $1 AND r.idx = $2 FOR UPDATE OF r",
        )
        .await
        .ctx("preparing the rollup lookup")?;
    let Some(row) = tx
        .query_opt(&stmt, &[&email_id, &idx])
        .await
        .ctx("reading a recipient's counters")?
    else {
        return Ok(());
    };
    let (counted, created_at, domain): (i64, i64, String) = (row.get(0), row.get(1), row.get(2));
    let new = bits_for(ev) & !counted;
    if new == 0 {
        return Ok(());
    }
    let opened_at = (new & bit::OPENED != 0).then_some(ev.at);
    let clicked_at = (new & bit::CLICKED != 0).then_some(ev.at);
    let stmt = tx
        .prepare_cached(
            "UPDATE recipients SET counted = counted | $3,
                    opened_at = COALESCE(opened_at, $4), clicked_at = COALESCE(clicked_at, $5)
             WHERE email_id = $1 AND idx = $2",
        )
        .await
        .ctx("preparing the counters update")?;
    tx.execute(&stmt, &[&email_id, &idx, &new, &opened_at, &clicked_at])
        .await
        .ctx("updating a recipient's counters")?;
    let v = |b: i64| i64::from(new & b != 0);
    let stmt = tx
        .prepare_cached(
            "INSERT INTO rollup_deltas (hour, domain, sent, delivered, delayed, bounced, failed,
                                        complained, opened, opened_human, opened_machine, clicked,
                                        clicked_human, clicked_machine, suppressed, unsubscribed)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
        )
        .await
        .ctx("preparing the rollup increment")?;
    tx.execute(
        &stmt,
        &[
            &hour_of(created_at),
            &domain,
            &v(bit::SENT),
            &v(bit::DELIVERED),
            &v(bit::DELAYED),
            &v(bit::BOUNCED),
            &v(bit::FAILED),
            &v(bit::COMPLAINED),
            &v(bit::OPENED),
            &v(bit::OPENED_HUMAN),
            &v(bit::OPENED_MACHINE),
            &v(bit::CLICKED),
            &v(bit::CLICKED_HUMAN),
            &v(bit::CLICKED_MACHINE),
            &v(bit::SUPPRESSED),
            &v(bit::UNSUBSCRIBED),
        ],
    )
    .await
    .ctx("adding to the hourly rollup")?;
    Ok(())
}

/// The hourly rollups as readers see them: the folded rows and the
/// increments not folded yet (`FROM {ROLLUPS} r`); sums over it are exact.
pub const ROLLUPS: &str = "(SELECT * FROM rollups UNION ALL SELECT * FROM rollup_deltas)";

/// Folds the appended increments into `rollups`, in one statement: the
/// increments it moves are deleted as they are added, so two nodes folding
/// at once never count one twice.
pub async fn fold_rollups(client: &deadpool_postgres::Object) -> Result<u64> {
    let cols = "sent, delivered, delayed, bounced, failed, complained, opened, opened_human, \
                opened_machine, clicked, clicked_human, clicked_machine, suppressed, unsubscribed";
    let sums: Vec<String> = cols
        .split(", ")
        .map(|c| format!("SUM({c})::BIGINT"))
        .collect();
    let updates: Vec<String> = cols
        .split(", ")
        .map(|c| format!("{c} = r.{c} + excluded.{c}"))
        .collect();
    let sql = format!(
        "WITH moved AS (DELETE FROM rollup_deltas RETURNING *)
         INSERT INTO rollups AS r (hour, domain, {cols})
         SELECT hour, domain, {} FROM moved GROUP BY hour, domain ORDER BY hour, domain
         ON CONFLICT (hour, domain) DO UPDATE SET {}",
        sums.join(", "),
        updates.join(", ")
    );
    client
        .execute(&sql, &[])
        .await
        .ctx("folding the rollup increments")
}

/// What a webhook payload says about the email.
pub async fn summary(tx: &Transaction<'_>, email_id: &str) -> Result<Option<EmailSummary>> {
    let stmt = tx
        .prepare_cached(
            "SELECT created_at, domain, COALESCE(header_from, mail_from), subject, tags
             FROM emails WHERE id = $1",
        )
        .await
        .ctx("preparing the email summary")?;
    let row = tx
        .query_opt(&stmt, &[&email_id])
        .await
        .ctx("reading an email's summary")?;
    Ok(row.map(|r| {
        let tags: String = r.get(4);
        EmailSummary {
            created_at: r.get(0),
            domain: r.get(1),
            from: r.get(2),
            subject: r.get(3),
            tags: serde_json::from_str(&tags).unwrap_or_default(),
        }
    }))
}

/// The outbox rows for a just-stored event, and a NOTIFY (delivered at
/// commit) that wakes every node's webhook senders.
async fn enqueue(
    tx: &Transaction<'_>,
    pg: &Postgres,
    event_id: i64,
    ev: &NewEvent,
    email: Option<&EmailSummary>,
) -> Result<()> {
    let domain = email.map(|e| e.domain.as_str());
    let mut payload: Option<String> = None;
    let mut added = false;
    for sub in pg
        .hooks
        .iter()
        .filter(|s| s.wants(ev.kind.as_str(), domain))
    {
        let body =
            payload.get_or_insert_with(|| crate::events::webhook_payload(ev, email).to_string());
        let id = format!("msg_{}", uuid::Uuid::now_v7().simple());
        let stmt = tx
            .prepare_cached(
                "INSERT INTO webhook_outbox (id, endpoint, event_id, payload, status, attempts,
                                             next_attempt_at, created_at)
                 VALUES ($1, $2, $3, $4, 'pending', 0, $5, $5)",
            )
            .await
            .ctx("preparing the outbox insert")?;
        let at = ev.at.max(crate::store::now_ms());
        tx.execute(&stmt, &[&id, &sub.url, &event_id, &body.as_str(), &at])
            .await
            .ctx("adding a webhook outbox row")?;
        added = true;
    }
    if added {
        tx.execute("SELECT pg_notify($1, '')", &[&OUTBOX_CHANNEL])
            .await
            .ctx("notifying the webhook senders")?;
    }
    Ok(())
}
