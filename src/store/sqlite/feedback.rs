//! The SQLite side of `FeedbackStore`: what the feedback processor
//! (src/inbound/process.rs) reads and changes for a report that names a
//! recipient, the received reports (`reports`) and the suppression list
//! (`suppressions`). Events and suppressions go through `events::insert`
//! and `suppressions::add` like every other.

use super::{reports, suppressions, Sqlite, Tx};
use crate::events::NewEvent;
use crate::store::feedback::{
    linked_outcome, unsubscribe_outcome, Action, Applied, LinkedRecipient, NewReport, Outcome,
    Pending, Plan, ReportInfo, ReportWork, Suppression,
};
use crate::store::{Durability, Result};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::json;

pub fn recipient(
    conn: &Connection,
    email_id: &str,
    idx: u32,
) -> rusqlite::Result<Option<LinkedRecipient>> {
    conn.prepare_cached(
        "SELECT r.address, r.status, r.counted, lower(e.domain)
         FROM recipients r JOIN emails e ON e.id = r.email_id
         WHERE r.email_id = ?1 AND r.idx = ?2",
    )?
    .query_row(params![email_id, idx], |r| {
        Ok(LinkedRecipient {
            address: r.get(0)?,
            status: r.get(1)?,
            complained: r.get::<_, i64>(2)? & super::rollups::bit::COMPLAINED != 0,
            domain: r.get(3)?,
        })
    })
    .optional()
}

/// A bounce report: the recipient becomes `bounced` whatever it was
/// (`delivered_at` is kept: the receiver did say 250), and leaves the
/// queue if it was still in it. A copy in flight keeps going, but its
/// lease is gone, so its outcome is not recorded over the bounce. Nothing
/// changes for a recipient already bounced, or never sent (suppressed).
/// Returns whether it changed.
pub fn set_bounced(
    conn: &Connection,
    email_id: &str,
    idx: u32,
    at: i64,
    response: &str,
) -> rusqlite::Result<bool> {
    let n = conn
        .prepare_cached(
            "UPDATE recipients SET status = 'bounced', bounced_at = ?3, last_response = ?4,
                    next_attempt_at = NULL, lease_until = NULL, lease_id = NULL
             WHERE email_id = ?1 AND idx = ?2 AND status NOT IN ('bounced', 'suppressed')",
        )?
        .execute(params![email_id, idx, at, response])?;
    Ok(n == 1)
}

/// Applies one report in the writer's transaction: claims the row
/// (nothing happens if another pass took it), then its plan, then its
/// outcome or its deletion. Returns the outcome, or `None` when the row
/// was no longer pending.
pub fn apply(tx: &Tx<'_>, w: &ReportWork, now: i64) -> rusqlite::Result<Option<Outcome>> {
    if !reports::claim(tx, w.id, now)? {
        return Ok(None);
    }
    let dropped = |outcome: Outcome| -> rusqlite::Result<Option<Outcome>> {
        reports::delete(tx, w.id)?;
        Ok(Some(outcome))
    };
    let (email_id, idx, linked_by, decide) = match &w.plan {
        Plan::Error(e) => {
            reports::set_outcome(tx, w.id, w.kind, &json!({ "error": e }))?;
            return Ok(Some(Outcome::Ignored));
        }
        Plan::Drop(outcome) => return dropped(*outcome),
        Plan::Linked {
            email_id,
            idx,
            linked_by,
            decide,
        } => (email_id, *idx, *linked_by, decide),
    };
    let Some(rcpt) = recipient(tx, email_id, idx)? else {
        // A token of ours for an email this store does not have (another
        // store's, or a `preview`): nothing to change.
        return dropped(Outcome::Unlinked);
    };
    let (outcome, detail) = match decide(&rcpt) {
        Action::Drop(outcome) => return dropped(outcome),
        Action::Nothing(outcome, why) => (outcome, json!({ "changed": false, "why": why })),
        Action::Change(outcome, c) => {
            if let Some(response) = &c.bounce {
                set_bounced(tx, email_id, idx, w.received_at, response)?;
            }
            let mut ev = NewEvent::new(email_id.clone(), c.event, w.received_at);
            ev.rcpt_idx = Some(idx);
            ev.recipient = Some(rcpt.address.clone());
            ev.detail = Some(c.detail);
            let event_id = super::events::insert(tx, &ev)?;
            let mut detail = c.outcome;
            detail["event_id"] = event_id.into();
            if let Some(reason) = c.suppress {
                let added = suppressions::add(
                    tx,
                    &Suppression {
                        address: rcpt.address.to_lowercase(),
                        domain: Some(rcpt.domain.clone()),
                        reason: reason.as_str().into(),
                        event_id: Some(event_id),
                        created_at: w.received_at,
                        expires_at: None,
                    },
                )?;
                if added {
                    tracing::info!(%email_id, rcpt = idx, reason = reason.as_str(), "recipient suppressed after a feedback report");
                }
                detail["suppressed"] = added.into();
            }
            (outcome, detail)
        }
        Action::Unsubscribe { suppress } => (
            Outcome::Unsubscribe,
            unsubscribe_by_mail(tx, email_id, idx, w.received_at, suppress)?,
        ),
    };
    let detail = linked_outcome(detail, outcome, email_id, idx, &rcpt.address, linked_by);
    reports::set_outcome(tx, w.id, w.kind, &detail)?;
    Ok(Some(outcome))
}

/// Mail to `unsubscribe+{token}@…`: the same unsubscribe as the one-click
/// POST (see `unsubscribe`), by `mailto`.
fn unsubscribe_by_mail(
    tx: &Tx<'_>,
    email_id: &str,
    idx: u32,
    at: i64,
    suppress: bool,
) -> rusqlite::Result<serde_json::Value> {
    use super::unsubscribe::{self as unsub, Outcome as U};
    let req = unsub::Request {
        email_id: email_id.to_string(),
        rcpt_idx: idx,
        via: unsub::Via::Mailto,
        at,
        // The peer is the user's mail server, not the user.
        ip: None,
        user_agent: None,
    };
    Ok(match unsub::unsubscribe(tx, &req, &|_| suppress)? {
        U::Unsubscribed {
            event_id,
            suppression_added,
            ..
        } => unsubscribe_outcome(Some(event_id), true, suppression_added),
        U::Repeated {
            event_id,
            suppression_added,
        } => unsubscribe_outcome(Some(event_id), false, suppression_added),
        U::UnknownRecipient => unsubscribe_outcome(None, false, false),
    })
}

/// Applies `batch` in order in the caller's transaction, each report
/// under its own savepoint: a report whose effects fail (or panic) is
/// rolled back alone and marked processed with the error, so it is kept
/// for the operator to read and never blocks or loops the queue. Only a
/// failing savepoint statement fails the whole write (nothing applied,
/// read again later).
pub fn apply_batch(tx: &Tx<'_>, batch: &[ReportWork], now: i64) -> rusqlite::Result<Vec<Applied>> {
    let mut out = Vec::with_capacity(batch.len());
    for w in batch {
        tx.execute_batch("SAVEPOINT report")?;
        let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| apply(tx, w, now)));
        let error = match applied {
            Ok(Ok(outcome)) => {
                tx.execute_batch("RELEASE report")?;
                out.push((w.id, Ok(outcome)));
                continue;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "internal error: applying the report panicked".to_string(),
        };
        tx.execute_batch("ROLLBACK TO report; RELEASE report")?;
        if reports::claim(tx, w.id, now)? {
            reports::set_outcome(tx, w.id, w.kind, &json!({ "error": error }))?;
        }
        out.push((w.id, Err(error)));
    }
    Ok(out)
}

#[async_trait::async_trait]
impl crate::store::feedback::FeedbackStore for Sqlite {
    async fn insert_report(&self, r: NewReport) -> Result<i64> {
        self.write(Durability::Full, move |tx| reports::insert(tx, &r))
            .await
    }

    async fn pending_reports(&self, after: i64, limit: usize) -> Result<Vec<Pending>> {
        self.read(move |c| reports::pending(c, after, limit)).await
    }

    async fn apply_reports(&self, batch: Vec<ReportWork>, now: i64) -> Result<Vec<Applied>> {
        self.write(Durability::Normal, move |tx| apply_batch(tx, &batch, now))
            .await
    }

    async fn report(&self, id: i64) -> Result<Option<ReportInfo>> {
        self.read(move |c| reports::get(c, id)).await
    }

    async fn suppression_lookup(
        &self,
        address: &str,
        sending_domain: &str,
        now: i64,
    ) -> Result<Option<(String, i64)>> {
        let (a, d) = (address.to_string(), sending_domain.to_string());
        self.read(move |c| suppressions::lookup(c, &a, &d, now))
            .await
    }

    async fn add_suppression(&self, s: Suppression) -> Result<bool> {
        self.write(Durability::Full, move |tx| suppressions::add(tx, &s))
            .await
    }

    async fn import_suppressions(&self, rows: Vec<Suppression>) -> Result<usize> {
        self.write(Durability::Full, move |tx| {
            let mut added = 0;
            for r in &rows {
                added += usize::from(suppressions::add(tx, r)?);
            }
            Ok(added)
        })
        .await
    }

    async fn remove_suppression(&self, address: &str, domain: Option<&str>) -> Result<bool> {
        let (a, d) = (address.to_string(), domain.map(str::to_string));
        self.write(Durability::Full, move |tx| {
            suppressions::remove(tx, &a, d.as_deref())
        })
        .await
    }

    async fn suppressions(
        &self,
        domain: Option<&str>,
        after: Option<(String, String)>,
        limit: usize,
    ) -> Result<Vec<Suppression>> {
        let d = domain.map(str::to_string);
        self.read(move |c| {
            let mut rows = Vec::new();
            suppressions::each(c, d.as_deref(), after.as_ref(), limit, |s| {
                rows.push(s);
                Ok::<_, rusqlite::Error>(())
            })?;
            Ok(rows)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    //! The processor's plans (src/inbound/process.rs) carried out in an
    //! in-memory store.

    use super::*;
    use crate::feedback::return_path;
    use crate::inbound::process::{classify, plan, Classified, Rules};
    use crate::prepare::TokenKeys;
    use serde_json::Value;
    use std::collections::HashSet;
    use std::sync::Arc;
    use uuid::Uuid;

    fn keys() -> TokenKeys {
        TokenKeys::new([3u8; 32], vec![])
    }

    /// A store with one email to `someone@example.net`, delivered.
    fn store_with_delivered() -> (rusqlite::Connection, Uuid) {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&mut conn).unwrap();
        let email = Uuid::now_v7();
        let t = conn.transaction().unwrap();
        super::super::emails::insert(
            &Tx::new(&t, &[]),
            &super::super::emails::NewEmail {
                id: email.to_string(),
                created_at: 1,
                domain: "Example.com".into(),
                mail_from: "a@example.com".into(),
                header_from: None,
                to_header: None,
                subject: None,
                message_id: None,
                tags: vec![],
                auth_user: None,
                client_ip: None,
                smtputf8: false,
                received: vec![],
                body: b"\r\n".to_vec().into(),
                recipients: vec!["Someone@Example.net".into()],
            },
        )
        .unwrap();
        t.execute(
            "UPDATE recipients SET status = 'delivered', delivered_at = 5",
            [],
        )
        .unwrap();
        t.commit().unwrap();
        (conn, email)
    }

    fn stored(
        conn: &rusqlite::Connection,
        rcpt_to: &str,
        raw: &[u8],
    ) -> super::super::reports::Pending {
        let id = super::super::reports::insert(
            conn,
            &super::super::reports::NewReport {
                received_at: 100,
                peer_ip: "127.0.0.1".into(),
                helo: "mx".into(),
                mail_from: String::new(),
                rcpt_to: vec![rcpt_to.into()],
                raw: raw.to_vec(),
            },
        )
        .unwrap();
        super::super::reports::pending(conn, id - 1, 1)
            .unwrap()
            .remove(0)
    }

    fn run(conn: &mut rusqlite::Connection, c: &Classified, rules: &Rules) -> Option<Outcome> {
        let t = conn.transaction().unwrap();
        let out = apply(&Tx::new(&t, &[]), &plan(c, &Arc::new(rules.clone())), 200).unwrap();
        t.commit().unwrap();
        out
    }

    fn count(conn: &rusqlite::Connection, sql: &str) -> i64 {
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn apply_bounces_suppresses_and_marks_processed_once() {
        let k = keys();
        let (mut conn, email) = store_with_delivered();
        let to = return_path::address(&k, "bounces", "bounces.example.com", email, 0).unwrap();
        let raw = "From: MAILER-DAEMON@mx.example.net\r\nSubject: Undelivered Mail\r\nMIME-Version: 1.0\r\n\
             Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n\
             --b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\n\
             Final-Recipient: rfc822; someone@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\n\
             Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n\r\n--b--\r\n";
        let c = classify(&stored(&conn, &to, raw.as_bytes()), &k);
        let rules = Rules {
            hard_bounce: ["example.com".to_string()].into(),
            complaint: HashSet::new(),
            unsubscribe: HashSet::new(),
        };
        assert_eq!(run(&mut conn, &c, &rules), Some(Outcome::Bounced));
        let (status, delivered_at, last): (String, Option<i64>, String) = conn
            .query_row(
                "SELECT status, delivered_at, last_response FROM recipients",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!((status.as_str(), delivered_at), ("bounced", Some(5)));
        assert!(last.contains("no such user"), "{last}");
        let (event_id, detail): (i64, String) = conn
            .query_row(
                "SELECT id, detail FROM events WHERE type = 'email.bounced'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        let d: Value = serde_json::from_str(&detail).unwrap();
        assert_eq!(d["bounce"]["type"], "permanent");
        assert_eq!(d["bounce"]["sub_type"], "no_email");
        assert_eq!(d["bounce"]["async"], true);
        assert_eq!(d["bounce"]["report_id"], c.id);
        let linked: Option<i64> = conn
            .query_row(
                "SELECT event_id FROM suppressions WHERE address = 'someone@example.net' AND scope = 'example.com'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(linked, Some(event_id));
        let (kind, outcome): (String, String) = conn
            .query_row(
                "SELECT kind, outcome FROM inbound_reports WHERE processed_at IS NOT NULL",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(kind, "dsn");
        assert!(outcome.contains("\"linked_by\":\"envelope\""), "{outcome}");
        // The same row again (a second pass): taken already, nothing happens.
        assert_eq!(run(&mut conn, &c, &rules), None);
        // The same bounce again as a new report: no second event.
        let again = classify(&stored(&conn, &to, raw.as_bytes()), &k);
        assert_eq!(run(&mut conn, &again, &rules), Some(Outcome::Bounced));
        assert_eq!(
            count(
                &conn,
                "SELECT COUNT(*) FROM events WHERE type = 'email.bounced'"
            ),
            1
        );
        // The rollup counts the asynchronous bounce.
        assert_eq!(count(&conn, "SELECT SUM(bounced) FROM rollups"), 1);
    }

    #[test]
    fn forged_and_unknown_reports_are_deleted_and_change_nothing() {
        let k = keys();
        let (mut conn, email) = store_with_delivered();
        let other = TokenKeys::new([9u8; 32], vec![]);
        let forged =
            return_path::address(&other, "bounces", "bounces.example.com", email, 0).unwrap();
        let raw = b"From: MAILER-DAEMON@mx.example.net\r\nSubject: Undelivered Mail\r\n\r\n550 5.1.1 user unknown\r\n";
        let rules = Rules::default();
        let c = classify(&stored(&conn, &forged, raw), &k);
        assert_eq!(run(&mut conn, &c, &rules), Some(Outcome::Forged));
        // A token of ours for an email this store never had.
        let stranger =
            return_path::address(&k, "bounces", "bounces.example.com", Uuid::now_v7(), 0).unwrap();
        let c = classify(&stored(&conn, &stranger, raw), &k);
        assert_eq!(run(&mut conn, &c, &rules), Some(Outcome::Unlinked));
        assert_eq!(count(&conn, "SELECT COUNT(*) FROM inbound_reports"), 0);
        assert_eq!(
            count(
                &conn,
                "SELECT COUNT(*) FROM events WHERE type != 'email.sent'"
            ),
            0
        );
        assert_eq!(
            count(
                &conn,
                "SELECT COUNT(*) FROM recipients WHERE status = 'delivered'"
            ),
            1
        );
    }

    #[test]
    fn a_report_that_fails_to_apply_is_rolled_back_alone_and_kept_with_the_error() {
        let k = keys();
        let (mut conn, email) = store_with_delivered();
        let to = return_path::address(&k, "bounces", "bounces.example.com", email, 0).unwrap();
        let raw = b"From: MAILER-DAEMON@mx.example.net\r\nSubject: Undelivered Mail\r\n\r\n\
                    550 5.1.1 user unknown\r\n";
        let failing = classify(&stored(&conn, &to, raw), &k);
        let other = TokenKeys::new([9u8; 32], vec![]);
        let forged =
            return_path::address(&other, "bounces", "bounces.example.com", email, 0).unwrap();
        let dropped = classify(&stored(&conn, &forged, raw), &k);
        // Every event insert now fails: the bounce cannot be applied.
        conn.execute_batch("DROP TABLE events").unwrap();
        let t = conn.transaction().unwrap();
        let rules = Arc::new(Rules::default());
        let out = apply_batch(
            &Tx::new(&t, &[]),
            &[plan(&failing, &rules), plan(&dropped, &rules)],
            300,
        )
        .unwrap();
        t.commit().unwrap();
        assert_eq!(out[0].0, failing.id);
        assert!(
            out[0].1.as_ref().is_err_and(|e| e.contains("events")),
            "{out:?}"
        );
        assert_eq!(out[1], (dropped.id, Ok(Some(Outcome::Forged))));
        // Its half-done effects are gone; the row is kept, processed, with why.
        assert_eq!(
            count(
                &conn,
                "SELECT COUNT(*) FROM recipients WHERE status = 'delivered'"
            ),
            1
        );
        let (processed, outcome): (Option<i64>, String) = conn
            .query_row(
                "SELECT processed_at, outcome FROM inbound_reports WHERE id = ?1",
                [failing.id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(processed, Some(300));
        assert!(outcome.contains("error"), "{outcome}");
        assert_eq!(count(&conn, "SELECT COUNT(*) FROM inbound_reports"), 1);
    }
}
