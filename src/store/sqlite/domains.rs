//! Domain verification statuses (see `crate::domains`): one row per
//! configured domain with its last check, and the history of its status
//! changes. A change is written with its `domain.updated` event and that
//! event's webhook outbox rows, in one transaction.
//!
//! Statuses are plain strings here (the store does not interpret them).
//! The dashboard reads through [`list`], [`get`] and [`history`].

use super::Tx;
use crate::events::{EmailSummary, EventType, NewEvent};
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde_json::Value;

pub use crate::store::domains::{Change, DomainRow, HistoryRow};

const COLUMNS: &str = "domain, status, status_at, since, lost_since, checked_at, next_check_at, \
                       records, reason, tracking_host, tracking_reason";

fn from_row(r: &Row<'_>) -> rusqlite::Result<DomainRow> {
    let records: String = r.get(7)?;
    Ok(DomainRow {
        domain: r.get(0)?,
        status: r.get(1)?,
        status_at: r.get(2)?,
        since: r.get(3)?,
        lost_since: r.get(4)?,
        checked_at: r.get(5)?,
        next_check_at: r.get(6)?,
        // Written by this module as JSON; anything else reads as no records.
        records: serde_json::from_str(&records).unwrap_or(Value::Array(Vec::new())),
        reason: r.get(8)?,
        tracking_host: r.get(9)?,
        tracking_reason: r.get(10)?,
    })
}

/// Every stored domain, by name. Domains removed from the config keep
/// their rows; callers show the configured ones.
pub fn list(conn: &Connection) -> rusqlite::Result<Vec<DomainRow>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM domain_status ORDER BY domain"
    ))?;
    let rows = stmt.query_map([], from_row)?;
    rows.collect()
}

pub fn get(conn: &Connection, domain: &str) -> rusqlite::Result<Option<DomainRow>> {
    conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM domain_status WHERE domain = ?1"
    ))?
    .query_row(params![domain.to_ascii_lowercase()], from_row)
    .optional()
}

/// A domain's status changes, newest first, at most `limit`.
pub fn history(conn: &Connection, domain: &str, limit: usize) -> rusqlite::Result<Vec<HistoryRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, domain, from_status, to_status, at, reason FROM domain_history
         WHERE domain = ?1 ORDER BY id DESC LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![domain.to_ascii_lowercase(), limit as i64], |r| {
        Ok(HistoryRow {
            id: r.get(0)?,
            domain: r.get(1)?,
            from: r.get(2)?,
            to: r.get(3)?,
            at: r.get(4)?,
            reason: r.get(5)?,
        })
    })?;
    rows.collect()
}

/// Writes a domain's row, and with a change its history entry and, when
/// the change has one, its `domain.updated` event (email_id '': the event
/// is about no email; the domain is in the detail) and webhook outbox rows.
/// Returns the event id. The change is recorded only when the stored
/// status is still `change.from` (or there is no row yet): see
/// `DomainStore::save_domain_status`.
pub fn save(
    tx: &Tx<'_>,
    row: &DomainRow,
    change: Option<&Change>,
) -> rusqlite::Result<Option<i64>> {
    let domain = row.domain.to_ascii_lowercase();
    let stored: Option<String> = tx
        .prepare_cached("SELECT status FROM domain_status WHERE domain = ?1")?
        .query_row(params![domain], |r| r.get(0))
        .optional()?;
    tx.prepare_cached(&format!(
        "INSERT OR REPLACE INTO domain_status ({COLUMNS})
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
    ))?
    .execute(params![
        domain,
        row.status,
        row.status_at,
        row.since,
        row.lost_since,
        row.checked_at,
        row.next_check_at,
        row.records.to_string(),
        row.reason,
        row.tracking_host,
        row.tracking_reason,
    ])?;
    let Some(c) = change.filter(|c| stored.as_ref().is_none_or(|s| *s == c.from)) else {
        return Ok(None);
    };
    tx.prepare_cached(
        "INSERT INTO domain_history (domain, from_status, to_status, at, reason)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![domain, c.from, c.to, c.at, c.reason])?;
    let Some(data) = &c.event else {
        return Ok(None);
    };
    let mut ev = NewEvent::new("", EventType::DomainUpdated, c.at);
    ev.detail = Some(data.clone());
    tx.prepare_cached("INSERT INTO events (email_id, type, at, detail) VALUES ('', ?1, ?2, ?3)")?
        .execute(params![ev.kind.as_str(), ev.at, data.to_string()])?;
    let id = tx.last_insert_rowid();
    // The subscriptions' `domains` filter applies to the domain itself.
    let about = EmailSummary {
        domain: domain.clone(),
        ..EmailSummary::default()
    };
    super::webhooks::enqueue(tx, id, &ev, Some(&about))?;
    Ok(Some(id))
}

mod backend {
    //! `DomainStore` for SQLite: each method is the module functions of
    //! `domains`, `mta_sts` and `tls_reports` in one read or one write.

    use super::super::{mta_sts, tls_reports, Sqlite};
    use crate::store::domains::{
        CachedPolicy, Change, CountKey, DomainRow, DomainStore, HistoryRow, ReportClaim, ReportRow,
        Summary,
    };
    use crate::store::{Durability, Result};

    #[async_trait::async_trait]
    impl DomainStore for Sqlite {
        async fn domain_statuses(&self) -> Result<Vec<DomainRow>> {
            self.read(super::list).await
        }

        async fn domain_status(&self, domain: &str) -> Result<Option<DomainRow>> {
            let d = domain.to_string();
            self.read(move |c| super::get(c, &d)).await
        }

        async fn domain_history(&self, domain: &str, limit: usize) -> Result<Vec<HistoryRow>> {
            let d = domain.to_string();
            self.read(move |c| super::history(c, &d, limit)).await
        }

        async fn save_domain_status(
            &self,
            row: DomainRow,
            change: Option<Change>,
        ) -> Result<Option<i64>> {
            self.write(Durability::Normal, move |tx| {
                super::save(tx, &row, change.as_ref())
            })
            .await
        }

        async fn sts_policy(&self, domain: &str) -> Result<Option<CachedPolicy>> {
            let d = domain.to_string();
            self.read(move |c| mta_sts::get(c, &d)).await
        }

        async fn put_sts_policy(&self, policy: CachedPolicy) -> Result<()> {
            self.write(Durability::Normal, move |tx| mta_sts::put(tx, &policy))
                .await
        }

        async fn mark_sts_used(&self, domain: &str, now: i64) -> Result<()> {
            let d = domain.to_string();
            self.write(Durability::Normal, move |tx| {
                mta_sts::mark_used(tx, &d, now)
            })
            .await
        }

        async fn sts_refresh_due(&self, now: i64, limit: usize) -> Result<Vec<CachedPolicy>> {
            self.read(move |c| mta_sts::due(c, now, limit)).await
        }

        async fn drop_stale_sts(&self, now: i64) -> Result<usize> {
            self.write(Durability::Normal, move |tx| mta_sts::drop_stale(tx, now))
                .await
        }

        async fn add_tls_counts(&self, counts: Vec<(CountKey, i64)>) -> Result<()> {
            self.write(Durability::Normal, move |tx| {
                tls_reports::add_counts(tx, &counts)
            })
            .await
        }

        async fn tls_counts(&self, policy_domain: &str, day: &str) -> Result<Vec<(CountKey, i64)>> {
            let (d, y) = (policy_domain.to_string(), day.to_string());
            self.read(move |c| tls_reports::counts(c, &d, &y)).await
        }

        async fn tls_unreported_days(&self, today: &str) -> Result<Vec<(String, String)>> {
            let today = today.to_string();
            self.read(move |c| tls_reports::unreported_days(c, &today))
                .await
        }

        async fn prune_tls_reports(&self, before_day: &str) -> Result<usize> {
            let day = before_day.to_string();
            self.write(Durability::Normal, move |tx| tls_reports::prune(tx, &day))
                .await
        }

        async fn insert_tls_report(&self, report: ReportRow) -> Result<bool> {
            self.write(Durability::Normal, move |tx| {
                tls_reports::insert_report(tx, &report)
            })
            .await
        }

        async fn claim_tls_reports(&self, claim: ReportClaim) -> Result<Vec<ReportRow>> {
            self.write(Durability::Normal, move |tx| tls_reports::claim(tx, &claim))
                .await
        }

        async fn record_tls_attempt(&self, report: ReportRow) -> Result<()> {
            self.write(Durability::Normal, move |tx| {
                tls_reports::record_attempt(tx, &report)
            })
            .await
        }

        async fn tls_report(&self, policy_domain: &str, day: &str) -> Result<Option<ReportRow>> {
            let (d, y) = (policy_domain.to_string(), day.to_string());
            self.read(move |c| tls_reports::get(c, &d, &y)).await
        }

        async fn tls_report_list(
            &self,
            day: Option<&str>,
            domain: Option<&str>,
            limit: usize,
        ) -> Result<Vec<Summary>> {
            let (y, d) = (day.map(str::to_string), domain.map(str::to_string));
            self.read(move |c| tls_reports::list(c, y.as_deref(), d.as_deref(), limit))
                .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::webhooks::Subscription;
    use crate::store::{Durability, Store, StoreOptions};
    use serde_json::json;

    fn row(domain: &str, status: &str, at: i64) -> DomainRow {
        DomainRow {
            domain: domain.into(),
            status: status.into(),
            status_at: at,
            since: Some(at),
            lost_since: None,
            checked_at: Some(at),
            next_check_at: Some(at + 1000),
            records: json!([{"record": "dkim", "status": status}]),
            reason: Some(format!("why {status}")),
            tracking_host: Some(format!("links.{domain}")),
            tracking_reason: Some("because".into()),
        }
    }

    fn change(from: &str, to: &str, at: i64, event: bool) -> Change {
        Change {
            from: from.into(),
            to: to.into(),
            at,
            reason: format!("{from} to {to}"),
            event: event.then(|| json!({"name": "x", "status": to, "previous_status": from})),
        }
    }

    #[test]
    fn rows_history_events_and_webhooks_are_written_together() {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions {
            webhooks: vec![Subscription {
                url: "http://127.0.0.1:1/hooks".into(),
                events: vec!["domain.updated".into()],
                domains: vec!["example.com".into()],
            }],
            ..StoreOptions::default()
        };
        let store = Store::open(&dir.path().join("t.sqlite3"), options).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let writes = [
                (
                    row("example.com", "pending", 1),
                    Some(change("not_started", "pending", 1, false)),
                ),
                (row("example.com", "pending", 1), None),
                (
                    row("example.com", "verified", 2),
                    Some(change("pending", "verified", 2, true)),
                ),
                (
                    row("example.org", "verified", 3),
                    Some(change("pending", "verified", 3, true)),
                ),
            ];
            for (r, c) in writes {
                store
                    .write(Durability::Normal, move |tx| save(tx, &r, c.as_ref()))
                    .await
                    .unwrap();
            }
            let (rows, one, hist, events, outbox) = store
                .read(|c| {
                    let events: Vec<(String, String, i64)> = c
                        .prepare("SELECT email_id, type, at FROM events ORDER BY id")?
                        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                        .collect::<rusqlite::Result<_>>()?;
                    let outbox: Vec<String> = c
                        .prepare("SELECT payload FROM webhook_outbox")?
                        .query_map([], |r| r.get(0))?
                        .collect::<rusqlite::Result<_>>()?;
                    Ok((
                        list(c)?,
                        get(c, "EXAMPLE.com")?,
                        history(c, "example.com", 10)?,
                        events,
                        outbox,
                    ))
                })
                .await
                .unwrap();
            assert_eq!(rows.len(), 2);
            assert_eq!(one, Some(row("example.com", "verified", 2)));
            let h: Vec<(&str, &str)> = hist
                .iter()
                .map(|h| (h.from.as_str(), h.to.as_str()))
                .collect();
            assert_eq!(
                h,
                [("pending", "verified"), ("not_started", "pending")],
                "newest first"
            );
            assert_eq!(
                events,
                [
                    ("".to_string(), "domain.updated".to_string(), 2),
                    ("".into(), "domain.updated".into(), 3)
                ],
                "one event per change that has one, about no email"
            );
            assert_eq!(outbox.len(), 1, "the subscription wants example.com only");
            let body: Value = serde_json::from_str(&outbox[0]).unwrap();
            assert_eq!(body["type"], "domain.updated");
            assert_eq!(body["data"]["status"], "verified");
            assert_eq!(body["data"]["previous_status"], "pending");
        });
        store.close();
    }
}
