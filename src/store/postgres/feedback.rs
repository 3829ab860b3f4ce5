//! The PostgreSQL side of `FeedbackStore`: received reports and the
//! suppression list (statement for statement as sqlite/reports.rs and
//! sqlite/suppressions.rs); applying reports is in `feedback_apply`.

use super::{feedback_apply, PgCtx, Postgres};
use crate::store::feedback::{
    scope, Applied, FeedbackStore, NewReport, Pending, ReportInfo, ReportWork, Suppression,
};
use crate::store::{Durability, Result};
use tokio_postgres::Row;

/// Rows per statement when importing: one round trip carries many.
const IMPORT_CHUNK: usize = 2000;

fn suppression(r: &Row) -> Suppression {
    let scope: String = r.get(1);
    Suppression {
        address: r.get(0),
        domain: (!scope.is_empty()).then_some(scope),
        reason: r.get(2),
        event_id: r.get(3),
        created_at: r.get(4),
        expires_at: r.get(5),
    }
}

#[async_trait::async_trait]
impl FeedbackStore for Postgres {
    async fn insert_report(&self, r: NewReport) -> Result<i64> {
        let client = self.client().await?;
        let rcpt = serde_json::to_string(&r.rcpt_to).unwrap_or_else(|_| "[]".into());
        let stmt = client
            .prepare_cached(
                "INSERT INTO inbound_reports (received_at, peer_ip, helo, mail_from, rcpt_to, size, raw)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            )
            .await
            .ctx("preparing the report insert")?;
        // One statement, committed with synchronous_commit on (the
        // server's default): durable before the sender hears 250.
        let row = client
            .query_one(
                &stmt,
                &[
                    &r.received_at,
                    &r.peer_ip,
                    &r.helo,
                    &r.mail_from,
                    &rcpt,
                    &(r.raw.len() as i64),
                    &r.raw,
                ],
            )
            .await
            .ctx("storing a received report")?;
        Ok(row.get(0))
    }

    async fn pending_reports(&self, after: i64, limit: usize) -> Result<Vec<Pending>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT id, received_at, mail_from, rcpt_to, raw FROM inbound_reports
                 WHERE processed_at IS NULL AND id > $1 ORDER BY id LIMIT $2",
            )
            .await
            .ctx("preparing the pending reports read")?;
        let rows = client
            .query(&stmt, &[&after, &(limit as i64)])
            .await
            .ctx("reading pending reports")?;
        Ok(rows
            .iter()
            .map(|r| {
                let rcpt: String = r.get(3);
                Pending {
                    id: r.get(0),
                    received_at: r.get(1),
                    mail_from: r.get(2),
                    rcpt_to: serde_json::from_str(&rcpt).unwrap_or_default(),
                    raw: r.get(4),
                }
            })
            .collect())
    }

    async fn apply_reports(&self, batch: Vec<ReportWork>, now: i64) -> Result<Vec<Applied>> {
        let mut client = self.client().await?;
        let mut tx = super::begin(&mut client, Durability::Normal).await?;
        let out = feedback_apply::apply_batch(&mut tx, self, &batch, now).await?;
        tx.commit().await.ctx("committing applied reports")?;
        Ok(out)
    }

    async fn report(&self, id: i64) -> Result<Option<ReportInfo>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT id, received_at, peer_ip, helo, mail_from, rcpt_to, size, processed_at,
                        kind, outcome, raw
                 FROM inbound_reports WHERE id = $1",
            )
            .await
            .ctx("preparing the report read")?;
        let row = client
            .query_opt(&stmt, &[&id])
            .await
            .ctx("reading a report")?;
        Ok(row.map(|r| {
            let rcpt: String = r.get(5);
            let outcome: Option<String> = r.get(9);
            ReportInfo {
                id: r.get(0),
                received_at: r.get(1),
                peer_ip: r.get(2),
                helo: r.get(3),
                mail_from: r.get(4),
                rcpt_to: serde_json::from_str(&rcpt).unwrap_or_default(),
                size: r.get(6),
                processed_at: r.get(7),
                kind: r.get(8),
                outcome: outcome.and_then(|o| serde_json::from_str(&o).ok()),
                raw: r.get(10),
            }
        }))
    }

    async fn suppression_lookup(
        &self,
        address: &str,
        sending_domain: &str,
        now: i64,
    ) -> Result<Option<(String, i64)>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT reason, created_at FROM suppressions
                 WHERE address = $1 AND scope IN ('', $2)
                   AND (expires_at IS NULL OR expires_at > $3)
                 ORDER BY created_at LIMIT 1",
            )
            .await
            .ctx("preparing the suppression lookup")?;
        let row = client
            .query_opt(
                &stmt,
                &[
                    &address.to_lowercase(),
                    &sending_domain.to_lowercase(),
                    &now,
                ],
            )
            .await
            .ctx("looking up the suppression list")?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    async fn add_suppression(&self, s: Suppression) -> Result<bool> {
        let client = self.client().await?;
        feedback_apply::add_suppression(&client, &s).await
    }

    async fn import_suppressions(&self, rows: Vec<Suppression>) -> Result<usize> {
        let mut client = self.client().await?;
        let tx = super::begin(&mut client, Durability::Full).await?;
        let stmt = tx
            .prepare_cached(
                "INSERT INTO suppressions (address, scope, reason, event_id, created_at, expires_at)
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[],
                                      $5::bigint[], $6::bigint[])
                 ON CONFLICT (address, scope) DO NOTHING",
            )
            .await
            .ctx("preparing the suppressions import")?;
        let mut added = 0;
        for chunk in rows.chunks(IMPORT_CHUNK) {
            let address: Vec<String> = chunk.iter().map(|s| s.address.to_lowercase()).collect();
            let scopes: Vec<String> = chunk.iter().map(|s| scope(s.domain.as_deref())).collect();
            let reason: Vec<&str> = chunk.iter().map(|s| s.reason.as_str()).collect();
            let event: Vec<Option<i64>> = chunk.iter().map(|s| s.event_id).collect();
            let created: Vec<i64> = chunk.iter().map(|s| s.created_at).collect();
            let expires: Vec<Option<i64>> = chunk.iter().map(|s| s.expires_at).collect();
            added += tx
                .execute(
                    &stmt,
                    &[&address, &scopes, &reason, &event, &created, &expires],
                )
                .await
                .ctx("importing suppressions")? as usize;
        }
        tx.commit().await.ctx("committing the import")?;
        Ok(added)
    }

    async fn remove_suppression(&self, address: &str, domain: Option<&str>) -> Result<bool> {
        let client = self.client().await?;
        let n = client
            .execute(
                "DELETE FROM suppressions WHERE address = $1 AND scope = $2",
                &[&address.to_lowercase(), &scope(domain)],
            )
            .await
            .ctx("removing a suppression")?;
        Ok(n == 1)
    }

    async fn suppressions(
        &self,
        domain: Option<&str>,
        after: Option<(String, String)>,
        limit: usize,
    ) -> Result<Vec<Suppression>> {
        let client = self.client().await?;
        let (after_addr, after_scope) = after.unwrap_or_default();
        // LIMIT NULL is no limit.
        let limit = (limit > 0).then_some(limit as i64);
        let stmt = client
            .prepare_cached(
                "SELECT address, scope, reason, event_id, created_at, expires_at FROM suppressions
                 WHERE ($1::text IS NULL OR scope IN ('', $1)) AND (address, scope) > ($2, $3)
                 ORDER BY address, scope LIMIT $4",
            )
            .await
            .ctx("preparing the suppressions list")?;
        let rows = client
            .query(
                &stmt,
                &[
                    &domain.map(str::to_lowercase),
                    &after_addr,
                    &after_scope,
                    &limit,
                ],
            )
            .await
            .ctx("listing suppressions")?;
        Ok(rows.iter().map(suppression).collect())
    }
}
