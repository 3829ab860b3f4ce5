//! The PostgreSQL side of `QueueStore`: the statements of
//! sqlite/queue.rs and sqlite/emails.rs, with claims that take rows with
//! `FOR UPDATE SKIP LOCKED` (so nodes claiming at once never wait for, or
//! take, each other's rows) and batched where SQLite loops.

use super::{begin, events, PgCtx, Postgres, QUEUE_CHANNEL};
use crate::store::queue::{
    attempt_event, deleted_event, outcome_columns, suppressed_event, Attempt, Claimed, LeaseKeys,
    NewEmail, QueueEntry, QueueStore, StoredBody, DELETED,
};
use crate::store::sqlite::suppressions::{is_bad_address, Reason};
use crate::store::{Durability, Result};
use deadpool_postgres::Transaction;
use std::collections::{HashMap, HashSet};

fn keys_arrays(keys: &[(String, u32)]) -> (Vec<&str>, Vec<i64>) {
    keys.iter()
        .map(|(id, idx)| (id.as_str(), *idx as i64))
        .unzip()
}

fn lim(n: usize) -> i64 {
    n.min(i64::MAX as usize) as i64
}

impl Postgres {
    /// A claimed row on the suppression list: done without an attempt.
    async fn settle_suppressed(
        &self,
        tx: &Transaction<'_>,
        c: &Claimed,
        reason: &str,
        since: i64,
        now: i64,
    ) -> Result<()> {
        let (response, ev) = suppressed_event(c, reason, since, now);
        let stmt = tx
            .prepare_cached(
                "UPDATE recipients SET status = 'suppressed', lease_until = NULL, lease_id = NULL,
                        lease_node = NULL, next_attempt_at = NULL, last_response = $3
                 WHERE email_id = $1 AND idx = $2",
            )
            .await
            .ctx("preparing the suppressed update")?;
        tx.execute(&stmt, &[&c.email_id, &(c.idx as i64), &response])
            .await
            .ctx("settling a suppressed recipient")?;
        events::insert(tx, self, &ev).await?;
        Ok(())
    }

    /// The hard-bounce suppression of `record` (see sqlite/queue.rs
    /// `suppress_bounced`). True when it added an entry.
    async fn suppress_bounced(
        &self,
        tx: &Transaction<'_>,
        a: &Attempt,
        event_id: i64,
        domains: &HashSet<String>,
    ) -> Result<bool> {
        if !matches!(a.outcome, crate::store::queue::Outcome::Bounced)
            || !is_bad_address(&a.response)
        {
            return Ok(false);
        }
        let stmt = tx
            .prepare_cached(
                "SELECT r.address, e.domain FROM recipients r JOIN emails e ON e.id = r.email_id
                 WHERE r.email_id = $1 AND r.idx = $2",
            )
            .await
            .ctx("preparing the recipient scope")?;
        let Some(row) = tx
            .query_opt(&stmt, &[&a.email_id, &(a.idx as i64)])
            .await
            .ctx("reading a bounced recipient's scope")?
        else {
            return Ok(false);
        };
        // Lowercased here, as SQLite's side binds Rust's lowercase: the
        // same key whichever backend wrote it.
        let address = row.get::<_, String>(0).to_lowercase();
        let domain = row.get::<_, String>(1).to_lowercase();
        if !domains.contains(&domain) {
            return Ok(false);
        }
        let stmt = tx
            .prepare_cached(
                "INSERT INTO suppressions (address, scope, reason, event_id, created_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5, NULL)
                 ON CONFLICT (address, scope) DO NOTHING",
            )
            .await
            .ctx("preparing the suppression insert")?;
        let n = tx
            .execute(
                &stmt,
                &[
                    &address,
                    &domain,
                    &Reason::HardBounce.as_str(),
                    &event_id,
                    &a.at,
                ],
            )
            .await
            .ctx("suppressing a hard-bounced address")?;
        Ok(n == 1)
    }
}

#[async_trait::async_trait]
impl QueueStore for Postgres {
    async fn accept(&self, e: NewEmail) -> Result<()> {
        let mut client = self.client().await?;
        // synchronous_commit stays on: the commit is on disk before 250.
        let tx = begin(&mut client, Durability::Full).await?;
        let tags = serde_json::to_string(&e.tags).unwrap_or_else(|_| "[]".into());
        let stmt = tx
            .prepare_cached(
                "INSERT INTO emails (id, created_at, domain, mail_from, header_from, to_header, subject,
                                     message_id, tags, auth_user, client_ip, smtputf8, size, received, body)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
            )
            .await
            .ctx("preparing the email insert")?;
        tx.execute(
            &stmt,
            &[
                &e.id,
                &e.created_at,
                &e.domain,
                &e.mail_from,
                &e.header_from,
                &e.to_header,
                &e.subject,
                &e.message_id,
                &tags,
                &e.auth_user,
                &e.client_ip,
                &(e.smtputf8 as i64),
                &(e.body.len() as i64),
                &e.received,
                &&e.body[..],
            ],
        )
        .await
        .ctx("storing an email")?;
        // Every recipient in one statement: the index is its position.
        let stmt = tx
            .prepare_cached(
                "INSERT INTO recipients (email_id, idx, address, status, next_attempt_at)
                 SELECT $1, t.n - 1, t.address, 'queued', $2
                 FROM UNNEST($3::text[]) WITH ORDINALITY AS t(address, n)",
            )
            .await
            .ctx("preparing the recipients insert")?;
        tx.execute(&stmt, &[&e.id, &e.created_at, &e.recipients])
            .await
            .ctx("queueing the recipients")?;
        for (idx, rcpt) in e.recipients.iter().enumerate() {
            let mut ev = crate::events::NewEvent::new(
                e.id.clone(),
                crate::events::EventType::Sent,
                e.created_at,
            );
            ev.rcpt_idx = Some(idx as u32);
            ev.recipient = Some(rcpt.clone());
            events::insert(&tx, self, &ev).await?;
        }
        // Delivered at commit, to every node listening: their runners wake.
        tx.execute("SELECT pg_notify($1, '')", &[&QUEUE_CHANNEL])
            .await
            .ctx("notifying the other nodes")?;
        tx.commit().await.ctx("committing an accepted email")?;
        Ok(())
    }

    async fn body(&self, email_id: &str) -> Result<Option<StoredBody>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT received, body FROM emails WHERE id = $1 AND body IS NOT NULL")
            .await
            .ctx("preparing the body read")?;
        let row = client
            .query_opt(&stmt, &[&email_id])
            .await
            .ctx("reading a message body")?;
        Ok(row.map(|r| StoredBody {
            received: r.get::<_, Option<Vec<u8>>>(0).unwrap_or_default(),
            body: r.get::<_, Vec<u8>>(1).into(),
        }))
    }

    async fn due(&self, now: i64, limit: usize, skip_domains: &[String]) -> Result<Vec<Claimed>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT r.email_id, r.idx, r.address, r.attempts, e.created_at, e.domain, e.mail_from,
                        e.smtputf8
                 FROM recipients r JOIN emails e ON e.id = r.email_id
                 WHERE r.status IN ('queued', 'deferred') AND r.next_attempt_at <= $1
                   AND lower(substring(r.address from position('@' in r.address) + 1))
                       <> ALL($2::text[])
                 ORDER BY r.next_attempt_at LIMIT $3",
            )
            .await
            .ctx("preparing the due query")?;
        let rows = client
            .query(&stmt, &[&now, &skip_domains, &lim(limit)])
            .await
            .ctx("reading due recipients")?;
        Ok(rows
            .iter()
            .map(|r| Claimed {
                email_id: r.get(0),
                idx: r.get::<_, i64>(1) as u32,
                address: r.get(2),
                attempts: r.get::<_, i64>(3) as u32,
                email_created_at: r.get(4),
                domain: r.get(5),
                mail_from: r.get(6),
                smtputf8: r.get::<_, i64>(7) != 0,
                lease_id: String::new(),
            })
            .collect())
    }

    async fn claim(&self, wanted: Vec<Claimed>, now: i64, lease_ms: i64) -> Result<Vec<Claimed>> {
        if wanted.is_empty() {
            return Ok(wanted);
        }
        let lease_id = uuid::Uuid::now_v7().to_string();
        let mut client = self.client().await?;
        let tx = begin(&mut client, Durability::Normal).await?;
        // Rows another node holds locked (claiming them right now) are
        // skipped, not waited for; rows it claimed and committed since they
        // were read fail the status test when re-checked under the lock.
        let stmt = tx
            .prepare_cached(
                "WITH take AS (
                     SELECT r.email_id, r.idx FROM recipients r
                     JOIN UNNEST($1::text[], $2::bigint[]) AS w(email_id, idx)
                       ON r.email_id = w.email_id AND r.idx = w.idx
                     WHERE r.status IN ('queued', 'deferred') AND r.next_attempt_at <= $5
                     FOR UPDATE OF r SKIP LOCKED
                 )
                 UPDATE recipients r SET status = 'sending', lease_id = $3, lease_node = $4,
                        lease_until = $5::bigint + $6::bigint, next_attempt_at = NULL, attempt_started_at = $5
                 FROM take WHERE r.email_id = take.email_id AND r.idx = take.idx
                 RETURNING r.email_id, r.idx",
            )
            .await
            .ctx("preparing the claim")?;
        let keys: Vec<(String, u32)> = wanted.iter().map(|c| (c.email_id.clone(), c.idx)).collect();
        let (ids, idxs) = keys_arrays(&keys);
        let taken: HashSet<(String, u32)> = tx
            .query(
                &stmt,
                &[&ids, &idxs, &lease_id, &self.node_id, &now, &lease_ms],
            )
            .await
            .ctx("claiming due recipients")?
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u32))
            .collect();
        let mut got: Vec<Claimed> = wanted
            .into_iter()
            .filter(|c| taken.contains(&(c.email_id.clone(), c.idx)))
            .collect();
        if got.is_empty() {
            tx.commit().await.ctx("committing a claim")?;
            return Ok(got);
        }
        // The suppression list, in the claim's own transaction (as on
        // SQLite): one statement for the whole batch, the earliest entry
        // per recipient.
        let stmt = tx
            .prepare_cached(
                "SELECT DISTINCT ON (w.n) w.n, s.reason, s.created_at
                 FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS w(address, domain, n)
                 JOIN suppressions s ON s.address = w.address AND s.scope IN ('', w.domain)
                      AND (s.expires_at IS NULL OR s.expires_at > $3)
                 ORDER BY w.n, s.created_at",
            )
            .await
            .ctx("preparing the suppression lookup")?;
        let addresses: Vec<String> = got.iter().map(|c| c.address.to_lowercase()).collect();
        let domains: Vec<String> = got.iter().map(|c| c.domain.to_lowercase()).collect();
        let suppressed: HashMap<usize, (String, i64)> = tx
            .query(&stmt, &[&addresses, &domains, &now])
            .await
            .ctx("looking up suppressions")?
            .iter()
            .map(|r| ((r.get::<_, i64>(0) - 1) as usize, (r.get(1), r.get(2))))
            .collect();
        if !suppressed.is_empty() {
            let mut kept = Vec::with_capacity(got.len());
            for (i, c) in got.into_iter().enumerate() {
                match suppressed.get(&i) {
                    Some((reason, since)) => {
                        self.settle_suppressed(&tx, &c, reason, *since, now).await?
                    }
                    None => kept.push(c),
                }
            }
            got = kept;
        }
        tx.commit().await.ctx("committing a claim")?;
        for c in &mut got {
            c.lease_id = lease_id.clone();
        }
        Ok(got)
    }

    async fn claim_due(&self, now: i64, lease_ms: i64, limit: usize) -> Result<Vec<Claimed>> {
        let wanted = self.due(now, limit, &[]).await?;
        self.claim(wanted, now, lease_ms).await
    }

    async fn renew(&self, lease_id: &str, keys: &[(String, u32)], until: i64) -> Result<usize> {
        if keys.is_empty() {
            return Ok(0);
        }
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE recipients r SET lease_until = $4
                 FROM UNNEST($1::text[], $2::bigint[]) AS w(email_id, idx)
                 WHERE r.email_id = w.email_id AND r.idx = w.idx AND r.lease_id = $3
                   AND r.status = 'sending'",
            )
            .await
            .ctx("preparing the lease renewal")?;
        let (ids, idxs) = keys_arrays(keys);
        let n = client
            .execute(&stmt, &[&ids, &idxs, &lease_id, &until])
            .await
            .ctx("renewing a lease")?;
        Ok(n as usize)
    }

    async fn release(&self, leases: &[LeaseKeys], now: i64) -> Result<usize> {
        let mut lease_ids = Vec::new();
        let mut ids = Vec::new();
        let mut idxs = Vec::new();
        for (lease_id, keys) in leases {
            for (id, idx) in keys {
                lease_ids.push(lease_id.as_str());
                ids.push(id.as_str());
                idxs.push(*idx as i64);
            }
        }
        if ids.is_empty() {
            return Ok(0);
        }
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE recipients r
                 SET status = CASE WHEN r.attempts = 0 THEN 'queued' ELSE 'deferred' END,
                     lease_until = NULL, lease_id = NULL, lease_node = NULL, next_attempt_at = $4
                 FROM UNNEST($1::text[], $2::text[], $3::bigint[]) AS w(lease_id, email_id, idx)
                 WHERE r.email_id = w.email_id AND r.idx = w.idx AND r.lease_id = w.lease_id
                   AND r.status = 'sending'",
            )
            .await
            .ctx("preparing the lease release")?;
        let n = client
            .execute(&stmt, &[&lease_ids, &ids, &idxs, &now])
            .await
            .ctx("releasing leases")?;
        Ok(n as usize)
    }

    async fn recover_expired(&self, now: i64) -> Result<usize> {
        let client = self.client().await?;
        // Only expired leases, whichever node held them: a live node
        // renews its own well before they run out.
        let stmt = client
            .prepare_cached(
                "UPDATE recipients
                 SET status = CASE WHEN attempts = 0 THEN 'queued' ELSE 'deferred' END,
                     lease_until = NULL, lease_id = NULL, lease_node = NULL, next_attempt_at = $1
                 WHERE status = 'sending' AND lease_until < $1",
            )
            .await
            .ctx("preparing the lease recovery")?;
        let n = client
            .execute(&stmt, &[&now])
            .await
            .ctx("recovering expired leases")?;
        Ok(n as usize)
    }

    async fn next_due(&self) -> Result<Option<i64>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT MIN(next_attempt_at) FROM recipients WHERE status IN ('queued', 'deferred')",
            )
            .await
            .ctx("preparing next_due")?;
        let row = client
            .query_one(&stmt, &[])
            .await
            .ctx("reading the next due time")?;
        Ok(row.get(0))
    }

    async fn depth(&self) -> Result<i64> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT COUNT(*) FROM recipients WHERE status IN ('queued', 'deferred', 'sending')",
            )
            .await
            .ctx("preparing the queue depth")?;
        let row = client
            .query_one(&stmt, &[])
            .await
            .ctx("reading the queue depth")?;
        Ok(row.get(0))
    }

    async fn record(
        &self,
        attempts: Vec<Attempt>,
        suppress_hard_bounce: &HashSet<String>,
    ) -> Result<Vec<(String, u32)>> {
        if attempts.is_empty() {
            return Ok(Vec::new());
        }
        let mut client = self.client().await?;
        // A lost record means a resend after the lease runs out (at least
        // once), never a lost message: synchronous_commit may be off.
        let tx = begin(&mut client, Durability::Normal).await?;
        let stmt = tx
            .prepare_cached(
                "UPDATE recipients SET status = $3, attempts = attempts + 1, next_attempt_at = $4,
                        lease_until = NULL, lease_id = NULL, lease_node = NULL,
                        last_response = $5, tls = $6, mx = $7,
                        delivered_at = CASE WHEN $3 = 'delivered' THEN $8 ELSE delivered_at END,
                        bounced_at = CASE WHEN $3 = 'bounced' THEN $8 ELSE bounced_at END,
                        tls_policy = $10
                 WHERE email_id = $1 AND idx = $2 AND status = 'sending' AND lease_id = $9
                 RETURNING attempts, attempt_started_at, address",
            )
            .await
            .ctx("preparing the attempt record")?;
        let mut suppressed = Vec::new();
        for a in &attempts {
            let (status, next, _) = outcome_columns(&a.outcome);
            let row = tx
                .query_opt(
                    &stmt,
                    &[
                        &a.email_id,
                        &(a.idx as i64),
                        &status,
                        &next,
                        &a.response,
                        &a.tls,
                        &a.mx,
                        &a.at,
                        &a.lease_id,
                        &a.tls_policy.as_ref().map(|p| p.applied.as_str()),
                    ],
                )
                .await
                .ctx("recording an attempt")?;
            // None: deleted meanwhile, or the lease ran out and the row
            // went to another attempt: no longer ours to change.
            let Some(row) = row else { continue };
            let ev = attempt_event(a, row.get(0), row.get(1), row.get(2));
            let event_id = events::insert(&tx, self, &ev).await?;
            if self
                .suppress_bounced(&tx, a, event_id, suppress_hard_bounce)
                .await?
            {
                suppressed.push((a.email_id.clone(), a.idx));
            }
        }
        tx.commit().await.ctx("committing attempt outcomes")?;
        Ok(suppressed)
    }

    async fn list(
        &self,
        all: bool,
        after: Option<(String, u32)>,
        limit: usize,
    ) -> Result<Vec<QueueEntry>> {
        let client = self.client().await?;
        let sql = if all {
            "SELECT email_id, idx, address, status, attempts, next_attempt_at, last_response
             FROM recipients WHERE (email_id, idx) > ($2, $3) ORDER BY email_id, idx LIMIT $1"
        } else {
            // As on SQLite: the waiting rows from the two partial indexes
            // (due, leased), so the done ones are never read.
            "SELECT * FROM (
                 SELECT email_id, idx, address, status, attempts, next_attempt_at, last_response
                 FROM recipients WHERE status IN ('queued', 'deferred') AND (email_id, idx) > ($2, $3)
                 UNION ALL
                 SELECT email_id, idx, address, status, attempts, next_attempt_at, last_response
                 FROM recipients WHERE status = 'sending' AND (email_id, idx) > ($2, $3)
             ) w ORDER BY email_id, idx LIMIT $1"
        };
        let stmt = client
            .prepare_cached(sql)
            .await
            .ctx("preparing the queue listing")?;
        let (id, idx) = after.map_or((String::new(), -1), |(id, idx)| (id, idx as i64));
        let rows = client
            .query(&stmt, &[&lim(limit), &id, &idx])
            .await
            .ctx("listing the queue")?;
        Ok(rows
            .iter()
            .map(|r| QueueEntry {
                email_id: r.get(0),
                idx: r.get::<_, i64>(1) as u32,
                recipient: r.get(2),
                status: r.get(3),
                attempts: r.get::<_, i64>(4) as u32,
                next_attempt_at: r.get(5),
                last_response: r.get(6),
            })
            .collect())
    }

    async fn retry(&self, email_id: &str, now: i64) -> Result<usize> {
        let client = self.client().await?;
        let n = client
            .execute(
                "UPDATE recipients SET next_attempt_at = $2
                 WHERE email_id = $1 AND status IN ('queued', 'deferred')",
                &[&email_id, &now],
            )
            .await
            .ctx("making recipients due")?;
        Ok(n as usize)
    }

    async fn delete(&self, email_id: &str, now: i64) -> Result<usize> {
        let mut client = self.client().await?;
        let tx = begin(&mut client, Durability::Full).await?;
        let idxs: Vec<i64> = tx
            .query(
                "UPDATE recipients SET status = 'failed', next_attempt_at = NULL, lease_until = NULL,
                        lease_id = NULL, lease_node = NULL, last_response = $2
                 WHERE email_id = $1 AND status IN ('queued', 'deferred', 'sending')
                 RETURNING idx",
                &[&email_id, &DELETED],
            )
            .await
            .ctx("deleting from the queue")?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut sorted = idxs.clone();
        sorted.sort_unstable();
        for idx in &sorted {
            events::insert(&tx, self, &deleted_event(email_id, *idx as u32, now)).await?;
        }
        tx.commit().await.ctx("committing a queue delete")?;
        Ok(idxs.len())
    }
}
