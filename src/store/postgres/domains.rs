//! The PostgreSQL side of `DomainStore`: sqlite/domains.rs, mta_sts.rs and
//! tls_reports.rs statement for statement, plus what several nodes on one
//! database need (see each method's comment in `store::domains`):
//! - a domain status change is decided under a transaction-scoped advisory
//!   lock on the domain, so two nodes storing the same change record it
//!   once, even for a domain without a row yet;
//! - TLS report counts are added in one `UNNEST` upsert per batch, in key
//!   order (two nodes flushing the same keys wait for each other instead
//!   of deadlocking);
//! - pending reports are claimed with `FOR UPDATE SKIP LOCKED`.
//!
//! Text is ordered `COLLATE "C"` where SQLite's byte order shows (lists,
//! the report's rows), whatever the database's collation.

use super::{begin, events, PgCtx, Postgres};
use crate::events::{EmailSummary, EventType, NewEvent};
use crate::store::domains::{
    CachedPolicy, Change, CountKey, DomainRow, DomainStore, HistoryRow, ReportClaim, ReportRow,
    Summary,
};
use crate::store::{Durability, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use tokio_postgres::Row;

const DOMAIN_COLUMNS: &str = "domain, status, status_at, since, lost_since, checked_at, \
                              next_check_at, records, reason, tracking_host, tracking_reason";

fn domain_row(r: &Row) -> DomainRow {
    let records: String = r.get(7);
    DomainRow {
        domain: r.get(0),
        status: r.get(1),
        status_at: r.get(2),
        since: r.get(3),
        lost_since: r.get(4),
        checked_at: r.get(5),
        next_check_at: r.get(6),
        // Written here as JSON; anything else reads as no records.
        records: serde_json::from_str(&records).unwrap_or(Value::Array(Vec::new())),
        reason: r.get(8),
        tracking_host: r.get(9),
        tracking_reason: r.get(10),
    }
}

const STS_COLUMNS: &str = "domain, policy_id, policy, fetched_at, expires_at, used_at";

fn sts_row(r: &Row) -> CachedPolicy {
    CachedPolicy {
        domain: r.get(0),
        policy_id: r.get(1),
        policy: r.get(2),
        fetched_at: r.get(3),
        expires_at: r.get(4),
        used_at: r.get(5),
    }
}

const REPORT_COLUMNS: &str = "policy_domain, day, status, report_id, report, rua, done, attempts, \
                              next_attempt_at, last_error, created_at, sent_at";

fn strings(raw: &str) -> Vec<String> {
    serde_json::from_str(raw).unwrap_or_default()
}

fn to_json_text(v: &[String]) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}

/// The report columns of `r` from column `at` on.
fn report_row(r: &Row, at: usize) -> ReportRow {
    ReportRow {
        policy_domain: r.get(at),
        day: r.get(at + 1),
        status: r.get(at + 2),
        report_id: r.get(at + 3),
        report: r.get(at + 4),
        rua: strings(r.get(at + 5)),
        done: strings(r.get(at + 6)),
        attempts: r.get(at + 7),
        next_attempt_at: r.get(at + 8),
        last_error: r.get(at + 9),
        created_at: r.get(at + 10),
        sent_at: r.get(at + 11),
    }
}

fn count_key(r: &Row) -> CountKey {
    CountKey {
        day: r.get(0),
        policy_domain: r.get(1),
        policy_type: r.get(2),
        policy_strings: r.get(3),
        mx_host: r.get(4),
        result_type: r.get(5),
        sending_ip: r.get(6),
        receiving_mx: r.get(7),
        receiving_ip: r.get(8),
    }
}

#[async_trait::async_trait]
impl DomainStore for Postgres {
    async fn domain_statuses(&self) -> Result<Vec<DomainRow>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {DOMAIN_COLUMNS} FROM domain_status ORDER BY domain COLLATE \"C\""
            ))
            .await
            .ctx("preparing the domain list")?;
        let rows = client
            .query(&stmt, &[])
            .await
            .ctx("reading the domain statuses")?;
        Ok(rows.iter().map(domain_row).collect())
    }

    async fn domain_status(&self, domain: &str) -> Result<Option<DomainRow>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {DOMAIN_COLUMNS} FROM domain_status WHERE domain = $1"
            ))
            .await
            .ctx("preparing the domain lookup")?;
        let row = client
            .query_opt(&stmt, &[&domain.to_ascii_lowercase()])
            .await
            .ctx("reading a domain status")?;
        Ok(row.as_ref().map(domain_row))
    }

    async fn domain_history(&self, domain: &str, limit: usize) -> Result<Vec<HistoryRow>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT id, domain, from_status, to_status, at, reason FROM domain_history
                 WHERE domain = $1 ORDER BY id DESC LIMIT $2",
            )
            .await
            .ctx("preparing the domain history")?;
        let rows = client
            .query(&stmt, &[&domain.to_ascii_lowercase(), &(limit as i64)])
            .await
            .ctx("reading a domain's history")?;
        Ok(rows
            .iter()
            .map(|r| HistoryRow {
                id: r.get(0),
                domain: r.get(1),
                from: r.get(2),
                to: r.get(3),
                at: r.get(4),
                reason: r.get(5),
            })
            .collect())
    }

    async fn save_domain_status(
        &self,
        row: DomainRow,
        change: Option<Change>,
    ) -> Result<Option<i64>> {
        let domain = row.domain.to_ascii_lowercase();
        let mut client = self.client().await?;
        let tx = begin(&mut client, Durability::Normal).await?;
        // Held to the commit: the nodes saving this domain take turns, so
        // each sees the status the one before stored.
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('trackrelay.domain_status:' || $1, 0))",
            &[&domain],
        )
        .await
        .ctx("locking the domain status")?;
        let stored: Option<String> = tx
            .query_opt(
                "SELECT status FROM domain_status WHERE domain = $1",
                &[&domain],
            )
            .await
            .ctx("reading the stored domain status")?
            .map(|r| r.get(0));
        let stmt = tx
            .prepare_cached(&format!(
                "INSERT INTO domain_status ({DOMAIN_COLUMNS})
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                 ON CONFLICT (domain) DO UPDATE SET status = excluded.status,
                     status_at = excluded.status_at, since = excluded.since,
                     lost_since = excluded.lost_since, checked_at = excluded.checked_at,
                     next_check_at = excluded.next_check_at, records = excluded.records,
                     reason = excluded.reason, tracking_host = excluded.tracking_host,
                     tracking_reason = excluded.tracking_reason"
            ))
            .await
            .ctx("preparing the domain status upsert")?;
        tx.execute(
            &stmt,
            &[
                &domain,
                &row.status,
                &row.status_at,
                &row.since,
                &row.lost_since,
                &row.checked_at,
                &row.next_check_at,
                &row.records.to_string(),
                &row.reason,
                &row.tracking_host,
                &row.tracking_reason,
            ],
        )
        .await
        .ctx("storing a domain status")?;
        let change = change.filter(|c| stored.as_ref().is_none_or(|s| *s == c.from));
        let mut event_id = None;
        if let Some(c) = change {
            tx.execute(
                "INSERT INTO domain_history (domain, from_status, to_status, at, reason)
                 VALUES ($1, $2, $3, $4, $5)",
                &[&domain, &c.from, &c.to, &c.at, &c.reason],
            )
            .await
            .ctx("storing a domain status change")?;
            if let Some(data) = c.event {
                let mut ev = NewEvent::new("", EventType::DomainUpdated, c.at);
                ev.detail = Some(data);
                let about = EmailSummary {
                    domain: domain.clone(),
                    ..EmailSummary::default()
                };
                event_id = Some(events::insert_about(&tx, self, &ev, Some(&about)).await?);
            }
        }
        tx.commit().await.ctx("committing a domain status")?;
        Ok(event_id)
    }

    async fn sts_policy(&self, domain: &str) -> Result<Option<CachedPolicy>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {STS_COLUMNS} FROM mta_sts_policies WHERE domain = $1"
            ))
            .await
            .ctx("preparing the MTA-STS lookup")?;
        let row = client
            .query_opt(&stmt, &[&domain.to_ascii_lowercase()])
            .await
            .ctx("reading an MTA-STS policy")?;
        Ok(row.as_ref().map(sts_row))
    }

    async fn put_sts_policy(&self, p: CachedPolicy) -> Result<()> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO mta_sts_policies AS m (domain, policy_id, policy, fetched_at, expires_at, used_at)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (domain) DO UPDATE SET policy_id = excluded.policy_id,
                     policy = excluded.policy, fetched_at = excluded.fetched_at,
                     expires_at = excluded.expires_at,
                     used_at = GREATEST(m.used_at, excluded.used_at)",
            )
            .await
            .ctx("preparing the MTA-STS upsert")?;
        client
            .execute(
                &stmt,
                &[
                    &p.domain.to_ascii_lowercase(),
                    &p.policy_id,
                    &p.policy,
                    &p.fetched_at,
                    &p.expires_at,
                    &p.used_at,
                ],
            )
            .await
            .ctx("storing an MTA-STS policy")?;
        Ok(())
    }

    async fn mark_sts_used(&self, domain: &str, now: i64) -> Result<()> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE mta_sts_policies SET used_at = GREATEST(used_at, $2) WHERE domain = $1",
            )
            .await
            .ctx("preparing the MTA-STS use mark")?;
        client
            .execute(&stmt, &[&domain.to_ascii_lowercase(), &now])
            .await
            .ctx("marking an MTA-STS policy used")?;
        Ok(())
    }

    async fn sts_refresh_due(&self, now: i64, limit: usize) -> Result<Vec<CachedPolicy>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {STS_COLUMNS} FROM mta_sts_policies
                 WHERE $1 >= fetched_at + (expires_at - fetched_at) / 4 * 3
                   AND used_at >= $1 - (expires_at - fetched_at)
                 ORDER BY expires_at LIMIT $2"
            ))
            .await
            .ctx("preparing the MTA-STS refresh query")?;
        let rows = client
            .query(&stmt, &[&now, &(limit as i64)])
            .await
            .ctx("reading the MTA-STS policies due a refresh")?;
        Ok(rows.iter().map(sts_row).collect())
    }

    async fn drop_stale_sts(&self, now: i64) -> Result<usize> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "DELETE FROM mta_sts_policies WHERE expires_at + (expires_at - fetched_at) < $1",
            )
            .await
            .ctx("preparing the MTA-STS expiry")?;
        let n = client
            .execute(&stmt, &[&now])
            .await
            .ctx("dropping stale MTA-STS policies")?;
        Ok(n as usize)
    }

    async fn add_tls_counts(&self, counts: Vec<(CountKey, i64)>) -> Result<()> {
        // One row per key (an upsert may not touch a row twice), in key
        // order (see the module comment).
        let mut merged: BTreeMap<CountKey, i64> = BTreeMap::new();
        for (k, n) in counts {
            *merged.entry(k).or_insert(0) += n;
        }
        if merged.is_empty() {
            return Ok(());
        }
        let mut cols: [Vec<&str>; 9] = Default::default();
        let mut ns = Vec::with_capacity(merged.len());
        for (k, n) in &merged {
            let fields = [
                &k.day,
                &k.policy_domain,
                &k.policy_type,
                &k.policy_strings,
                &k.mx_host,
                &k.result_type,
                &k.sending_ip,
                &k.receiving_mx,
                &k.receiving_ip,
            ];
            for (col, f) in cols.iter_mut().zip(fields) {
                col.push(f.as_str());
            }
            ns.push(*n);
        }
        let mut client = self.client().await?;
        let tx = begin(&mut client, Durability::Normal).await?;
        let stmt = tx
            .prepare_cached(
                "INSERT INTO tls_report_counts AS t (day, policy_domain, policy_type, policy_strings,
                     mx_host, result_type, sending_ip, receiving_mx, receiving_ip, count)
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                                      $6::text[], $7::text[], $8::text[], $9::text[], $10::bigint[])
                 ON CONFLICT (day, policy_domain, policy_type, policy_strings, mx_host,
                              result_type, sending_ip, receiving_mx, receiving_ip)
                 DO UPDATE SET count = t.count + excluded.count",
            )
            .await
            .ctx("preparing the TLS count upsert")?;
        tx.execute(
            &stmt,
            &[
                &cols[0], &cols[1], &cols[2], &cols[3], &cols[4], &cols[5], &cols[6], &cols[7],
                &cols[8], &ns,
            ],
        )
        .await
        .ctx("adding TLS report counts")?;
        tx.commit().await.ctx("committing TLS report counts")?;
        Ok(())
    }

    async fn tls_counts(&self, policy_domain: &str, day: &str) -> Result<Vec<(CountKey, i64)>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT day, policy_domain, policy_type, policy_strings, mx_host, result_type,
                        sending_ip, receiving_mx, receiving_ip, count
                 FROM tls_report_counts WHERE policy_domain = $1 AND day = $2
                 ORDER BY policy_type COLLATE \"C\", policy_strings COLLATE \"C\",
                          mx_host COLLATE \"C\", result_type COLLATE \"C\",
                          receiving_mx COLLATE \"C\", receiving_ip COLLATE \"C\",
                          sending_ip COLLATE \"C\"",
            )
            .await
            .ctx("preparing the TLS count query")?;
        let rows = client
            .query(&stmt, &[&policy_domain, &day])
            .await
            .ctx("reading TLS report counts")?;
        Ok(rows.iter().map(|r| (count_key(r), r.get(9))).collect())
    }

    async fn tls_unreported_days(&self, today: &str) -> Result<Vec<(String, String)>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT policy_domain, day FROM
                   (SELECT DISTINCT c.policy_domain, c.day FROM tls_report_counts c
                    WHERE c.day < $1 AND NOT EXISTS
                      (SELECT 1 FROM tls_reports r
                       WHERE r.policy_domain = c.policy_domain AND r.day = c.day)) days
                 ORDER BY day, policy_domain COLLATE \"C\"",
            )
            .await
            .ctx("preparing the unreported days query")?;
        let rows = client
            .query(&stmt, &[&today])
            .await
            .ctx("reading the unreported TLS report days")?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn prune_tls_reports(&self, before_day: &str) -> Result<usize> {
        let mut client = self.client().await?;
        let tx = begin(&mut client, Durability::Normal).await?;
        let counts = tx
            .execute(
                "DELETE FROM tls_report_counts WHERE day < $1",
                &[&before_day],
            )
            .await
            .ctx("pruning TLS report counts")?;
        let reports = tx
            .execute("DELETE FROM tls_reports WHERE day < $1", &[&before_day])
            .await
            .ctx("pruning TLS reports")?;
        tx.commit().await.ctx("committing the TLS report pruning")?;
        Ok((counts + reports) as usize)
    }

    async fn insert_tls_report(&self, r: ReportRow) -> Result<bool> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "INSERT INTO tls_reports ({REPORT_COLUMNS})
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                 ON CONFLICT (policy_domain, day) DO NOTHING"
            ))
            .await
            .ctx("preparing the TLS report insert")?;
        let n = client
            .execute(
                &stmt,
                &[
                    &r.policy_domain,
                    &r.day,
                    &r.status,
                    &r.report_id,
                    &r.report,
                    &to_json_text(&r.rua),
                    &to_json_text(&r.done),
                    &r.attempts,
                    &r.next_attempt_at,
                    &r.last_error,
                    &r.created_at,
                    &r.sent_at,
                ],
            )
            .await
            .ctx("storing a TLS report")?;
        Ok(n == 1)
    }

    async fn claim_tls_reports(&self, c: ReportClaim) -> Result<Vec<ReportRow>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "UPDATE tls_reports t SET next_attempt_at = $2
                 FROM (SELECT policy_domain, day FROM tls_reports
                       WHERE status = 'pending' AND next_attempt_at <= $1
                         AND ($3::text IS NULL OR day = $3)
                         AND ($4::text IS NULL OR policy_domain = $4)
                       ORDER BY next_attempt_at LIMIT $5
                       FOR UPDATE SKIP LOCKED) due
                 WHERE t.policy_domain = due.policy_domain AND t.day = due.day
                 RETURNING {}",
                REPORT_COLUMNS
                    .split(',')
                    .map(|c| format!("t.{}", c.trim()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .await
            .ctx("preparing the TLS report claim")?;
        let rows = client
            .query(
                &stmt,
                &[
                    &c.due_by,
                    &c.lease_until,
                    &c.day,
                    &c.domain,
                    &(c.limit as i64),
                ],
            )
            .await
            .ctx("claiming due TLS reports")?;
        Ok(rows.iter().map(|r| report_row(r, 0)).collect())
    }

    async fn record_tls_attempt(&self, r: ReportRow) -> Result<()> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE tls_reports SET status = $3, done = $4, attempts = $5, next_attempt_at = $6,
                                        last_error = $7, sent_at = $8
                 WHERE policy_domain = $1 AND day = $2 AND status = 'pending'",
            )
            .await
            .ctx("preparing the TLS report update")?;
        client
            .execute(
                &stmt,
                &[
                    &r.policy_domain,
                    &r.day,
                    &r.status,
                    &to_json_text(&r.done),
                    &r.attempts,
                    &r.next_attempt_at,
                    &r.last_error,
                    &r.sent_at,
                ],
            )
            .await
            .ctx("recording a TLS report attempt")?;
        Ok(())
    }

    async fn tls_report(&self, policy_domain: &str, day: &str) -> Result<Option<ReportRow>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {REPORT_COLUMNS} FROM tls_reports WHERE policy_domain = $1 AND day = $2"
            ))
            .await
            .ctx("preparing the TLS report lookup")?;
        let row = client
            .query_opt(&stmt, &[&policy_domain, &day])
            .await
            .ctx("reading a TLS report")?;
        Ok(row.map(|r| report_row(&r, 0)))
    }

    async fn tls_report_list(
        &self,
        day: Option<&str>,
        domain: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Summary>> {
        let client = self.client().await?;
        // One query where SQLite reads each day's report apart: a round
        // trip here costs more than a join.
        let stmt = client
            .prepare_cached(&format!(
                "SELECT c.policy_domain, c.day, c.ok, c.failed, r.status IS NOT NULL, {}
                 FROM (SELECT policy_domain, day,
                              SUM(CASE WHEN result_type = '' THEN count ELSE 0 END)::bigint AS ok,
                              SUM(CASE WHEN result_type <> '' THEN count ELSE 0 END)::bigint AS failed
                       FROM tls_report_counts
                       WHERE ($1::text IS NULL OR day = $1)
                         AND ($2::text IS NULL OR policy_domain = $2)
                       GROUP BY policy_domain, day
                       ORDER BY day DESC, policy_domain COLLATE \"C\"
                       LIMIT $3) c
                 LEFT JOIN tls_reports r ON r.policy_domain = c.policy_domain AND r.day = c.day
                 ORDER BY c.day DESC, c.policy_domain COLLATE \"C\"",
                REPORT_COLUMNS
                    .split(',')
                    .map(|c| format!("r.{}", c.trim()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .await
            .ctx("preparing the TLS report list")?;
        let rows = client
            .query(&stmt, &[&day, &domain, &(limit as i64)])
            .await
            .ctx("listing TLS reports")?;
        Ok(rows
            .iter()
            .map(|r| Summary {
                policy_domain: r.get(0),
                day: r.get(1),
                successful: r.get(2),
                failed: r.get(3),
                report: r.get::<_, bool>(4).then(|| report_row(r, 5)),
            })
            .collect())
    }
}
