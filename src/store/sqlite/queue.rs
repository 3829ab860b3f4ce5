//! The delivery queue: one row per recipient of each accepted email.
//!
//! A row is `queued` (never tried), `sending` (leased by a delivery worker
//! until `lease_until`), `deferred` (waiting for its next attempt), or done:
//! `delivered`, `bounced`, `failed`, `suppressed` (on the suppression
//! list when claimed: never attempted).

use super::Tx;
use crate::store::queue::{
    attempt_event, deleted_event, outcome_columns, suppressed_event, LeaseKeys, NewEmail,
    QueueStore, StoredBody, DELETED,
};
use crate::store::{Backend, Durability, Result};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashSet;

pub use crate::store::queue::{Attempt, Claimed, Outcome, QueueEntry, TlsPolicyNote};

/// The statement behind `page`. Email ids are UUIDv7, so the primary
/// key's order is acceptance order: `all` walks the table in key order with
/// no sort, and the waiting rows come from the two partial indexes (due,
/// leased), so only they are read and sorted. Each page starts after the
/// last key of the one before, so a queue of any length is listed in
/// constant memory without rereading what was shown.
pub fn list_sql(all: bool) -> &'static str {
    if all {
        "SELECT email_id, idx, address, status, attempts, next_attempt_at, last_response
         FROM recipients WHERE (email_id, idx) > (?2, ?3) ORDER BY email_id, idx LIMIT ?1"
    } else {
        "SELECT * FROM (
             SELECT email_id, idx, address, status, attempts, next_attempt_at, last_response
             FROM recipients WHERE status IN ('queued', 'deferred') AND (email_id, idx) > (?2, ?3)
             UNION ALL
             SELECT email_id, idx, address, status, attempts, next_attempt_at, last_response
             FROM recipients WHERE status = 'sending' AND (email_id, idx) > (?2, ?3)
         ) ORDER BY email_id, idx LIMIT ?1"
    }
}

/// Up to `limit` recipients still to be delivered (or every row, with
/// `all`) after the key `after`, in acceptance order.
pub fn page(
    conn: &Connection,
    all: bool,
    after: Option<&(String, u32)>,
    limit: usize,
) -> rusqlite::Result<Vec<QueueEntry>> {
    let limit = limit.min(i64::MAX as usize) as i64;
    // Every email id is a non-empty UUID, so ("", -1) is before them all.
    let (id, idx) = after.map_or(("", -1), |(id, idx)| (id.as_str(), *idx as i64));
    conn.prepare_cached(list_sql(all))?
        .query_map(params![limit, id, idx], |r| {
            Ok(QueueEntry {
                email_id: r.get(0)?,
                idx: r.get::<_, i64>(1)? as u32,
                recipient: r.get(2)?,
                status: r.get(3)?,
                attempts: r.get::<_, i64>(4)? as u32,
                next_attempt_at: r.get(5)?,
                last_response: r.get(6)?,
            })
        })?
        .collect()
}

/// Number of recipients waiting or in flight, for metrics.
pub fn depth(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT COUNT(*) FROM recipients WHERE status IN ('queued', 'deferred', 'sending')",
        [],
        |r| r.get(0),
    )
}

/// Up to `limit` recipients due at `now`, oldest due first, skipping those
/// whose recipient domain is in `skip_domains` (their destination has no
/// free slot). Reads only: [`claim`] takes them.
pub fn due(
    conn: &Connection,
    now: i64,
    limit: usize,
    skip_domains: &[String],
) -> rusqlite::Result<Vec<Claimed>> {
    // The skipped domains travel as one JSON array, so the statement text
    // (and its cached plan) stays the same whatever their number.
    let skip = serde_json::to_string(skip_domains).unwrap_or_else(|_| "[]".into());
    // The limit is written into the statement, not bound: SQLite plans
    // ORDER BY ... LIMIT by the limit's value, so with `LIMIT ?` every call
    // with a new binding parsed and planned the statement again
    // (sqlite3Reprepare, ~2 % of the relay's CPU in bench/relay.sh). The
    // runner always asks for the same number, so the cached text is one.
    let sql = format!(
        "SELECT r.email_id, r.idx, r.address, r.attempts, e.created_at, e.domain, e.mail_from, e.smtputf8
         FROM recipients r JOIN emails e ON e.id = r.email_id
         WHERE r.status IN ('queued', 'deferred') AND r.next_attempt_at <= ?1
           AND lower(substr(r.address, instr(r.address, '@') + 1))
               NOT IN (SELECT value FROM json_each(?2))
         ORDER BY r.next_attempt_at LIMIT {}",
        limit.min(i64::MAX as usize)
    );
    conn.prepare_cached(&sql)?
        .query_map(params![now, skip], |r| {
            Ok(Claimed {
                email_id: r.get(0)?,
                idx: r.get::<_, i64>(1)? as u32,
                address: r.get(2)?,
                attempts: r.get::<_, i64>(3)? as u32,
                email_created_at: r.get(4)?,
                domain: r.get(5)?,
                mail_from: r.get(6)?,
                smtputf8: r.get(7)?,
                lease_id: String::new(),
            })
        })?
        .collect()
}

/// Leases `wanted` to `lease_id`, held by `node`, until `now + lease_ms`,
/// and returns those it got: a row another runner claimed since it was
/// read stays theirs. `attempt_started_at` is set here, as the attempt
/// starts.
pub fn claim(
    tx: &Tx<'_>,
    wanted: Vec<Claimed>,
    lease_id: &str,
    node: &str,
    now: i64,
    lease_ms: i64,
) -> rusqlite::Result<Vec<Claimed>> {
    let mut lease = tx.prepare_cached(
        "UPDATE recipients SET status = 'sending', lease_id = ?3, lease_until = ?4,
                next_attempt_at = NULL, attempt_started_at = ?5, lease_node = ?6
         WHERE email_id = ?1 AND idx = ?2 AND status IN ('queued', 'deferred')
           AND next_attempt_at <= ?5",
    )?;
    let mut got = Vec::with_capacity(wanted.len());
    for mut c in wanted {
        if lease.execute(params![
            c.email_id,
            c.idx,
            lease_id,
            now + lease_ms,
            now,
            node
        ])? == 1
        {
            // Checked here, in the claim's own transaction, so the list
            // costs no extra round trip and an entry added while the row
            // waited still applies.
            if let Some((reason, since)) =
                super::suppressions::lookup(tx, &c.address, &c.domain, now)?
            {
                settle_suppressed(tx, &c, &reason, since, now)?;
                continue;
            }
            c.lease_id = lease_id.to_string();
            got.push(c);
        }
    }
    Ok(got)
}

/// A claimed recipient on the suppression list: done without an attempt,
/// as `suppressed`, with an `email.suppressed` event saying why.
fn settle_suppressed(
    tx: &Tx<'_>,
    c: &Claimed,
    reason: &str,
    since: i64,
    now: i64,
) -> rusqlite::Result<()> {
    let (response, ev) = suppressed_event(c, reason, since, now);
    tx.prepare_cached(
        "UPDATE recipients SET status = 'suppressed', lease_until = NULL, lease_id = NULL, lease_node = NULL,
                next_attempt_at = NULL, last_response = ?3
         WHERE email_id = ?1 AND idx = ?2",
    )?
    .execute(params![c.email_id, c.idx, response])?;
    super::events::insert(tx, &ev)?;
    Ok(())
}

/// Leases up to `limit` due recipients until `now + lease_ms`, under one
/// new lease id (for tools and tests; the runner claims per destination).
pub fn claim_due(
    tx: &Tx<'_>,
    node: &str,
    now: i64,
    lease_ms: i64,
    limit: usize,
) -> rusqlite::Result<Vec<Claimed>> {
    let wanted = due(tx, now, limit, &[])?;
    claim(
        tx,
        wanted,
        &uuid::Uuid::now_v7().to_string(),
        node,
        now,
        lease_ms,
    )
}

/// Extends to `until` the leases `lease_id` still holds among `keys`
/// (email id, recipient index); returns how many. By key, so that a
/// renewal reads a few rows, not the whole table.
pub fn renew(
    conn: &Connection,
    lease_id: &str,
    keys: &[(String, u32)],
    until: i64,
) -> rusqlite::Result<usize> {
    let mut stmt = conn.prepare_cached(
        "UPDATE recipients SET lease_until = ?4
         WHERE email_id = ?1 AND idx = ?2 AND lease_id = ?3 AND status = 'sending'",
    )?;
    let mut renewed = 0;
    for (email_id, idx) in keys {
        renewed += stmt.execute(params![email_id, idx, lease_id, until])?;
    }
    Ok(renewed)
}

/// Gives back, due now, the rows `lease_id` still holds among `keys`: a
/// runner stopping with deliveries unfinished, so that they need not wait
/// out the lease after a restart. A transaction cut off after the data may
/// have been taken by the receiver: sent again (at least once).
pub fn release(
    conn: &Connection,
    lease_id: &str,
    keys: &[(String, u32)],
    now: i64,
) -> rusqlite::Result<usize> {
    let mut stmt = conn.prepare_cached(
        "UPDATE recipients SET status = CASE WHEN attempts = 0 THEN 'queued' ELSE 'deferred' END,
                lease_until = NULL, lease_id = NULL, lease_node = NULL, next_attempt_at = ?4
         WHERE email_id = ?1 AND idx = ?2 AND lease_id = ?3 AND status = 'sending'",
    )?;
    let mut released = 0;
    for (email_id, idx) in keys {
        released += stmt.execute(params![email_id, idx, lease_id, now])?;
    }
    Ok(released)
}

/// When the next recipient falls due, if any is waiting.
pub fn next_due(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    conn.query_row(
        "SELECT MIN(next_attempt_at) FROM recipients WHERE status IN ('queued', 'deferred')",
        [],
        |r| r.get(0),
    )
}

/// Rows whose lease ran out (their runner died, here or on another node)
/// go back to the queue, due now: at least once, never stranded. A lease
/// still running is left alone, whoever holds it.
pub fn recover_leases(conn: &Connection, now: i64) -> rusqlite::Result<usize> {
    conn.execute(
        "UPDATE recipients SET status = CASE WHEN attempts = 0 THEN 'queued' ELSE 'deferred' END,
                lease_until = NULL, lease_id = NULL, lease_node = NULL, next_attempt_at = ?1
         WHERE status = 'sending' AND lease_until < ?1",
        params![now],
    )
}

/// Records an attempt's outcome and its event, in one transaction, if the
/// attempt's lease still owns the row; otherwise changes nothing. Returns
/// the event's id when it recorded one.
pub fn record(tx: &Tx<'_>, a: &Attempt) -> rusqlite::Result<Option<i64>> {
    let (status, next, _) = outcome_columns(&a.outcome);
    // One statement for the update and what the event needs (the attempt
    // number, when it started, the address): the outcome of every copy
    // passes here, and each separate point query cost a statement step.
    let row: Option<(i64, Option<i64>, String)> = tx
        .prepare_cached(
            "UPDATE recipients SET status = ?3, attempts = attempts + 1, next_attempt_at = ?4,
                    lease_until = NULL, lease_id = NULL, lease_node = NULL,
                    last_response = ?5, tls = ?6, mx = ?7,
                    delivered_at = CASE WHEN ?3 = 'delivered' THEN ?8 ELSE delivered_at END,
                    bounced_at = CASE WHEN ?3 = 'bounced' THEN ?8 ELSE bounced_at END,
                    tls_policy = ?10
             WHERE email_id = ?1 AND idx = ?2 AND status = 'sending' AND lease_id = ?9
             RETURNING attempts, attempt_started_at, address",
        )?
        .query_row(
            params![
                a.email_id,
                a.idx,
                status,
                next,
                a.response,
                a.tls,
                a.mx,
                a.at,
                a.lease_id,
                a.tls_policy.as_ref().map(|p| p.applied.as_str())
            ],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((attempts, started, address)) = row else {
        // The operator deleted it meanwhile, or the lease ran out and the
        // row went to another attempt: it is no longer ours to change.
        return Ok(None);
    };
    super::events::insert(tx, &attempt_event(a, attempts, started, address)).map(Some)
}

/// `queue retry ID`: the email's waiting recipients (by email id, or one
/// recipient as `ID:index`) become due now.
pub fn retry(conn: &Connection, email_id: &str, now: i64) -> rusqlite::Result<usize> {
    conn.execute(
        "UPDATE recipients SET next_attempt_at = ?2 WHERE email_id = ?1 AND status IN ('queued', 'deferred')",
        params![email_id, now],
    )
}

/// `queue delete ID`: the email's waiting recipients leave the queue as
/// `failed` with an `email.failed` event, so stats and webhooks say so.
pub fn delete(tx: &Tx<'_>, email_id: &str, now: i64) -> rusqlite::Result<usize> {
    let idxs: Vec<i64> = tx
        .prepare("SELECT idx FROM recipients WHERE email_id = ?1 AND status IN ('queued', 'deferred', 'sending')")?
        .query_map(params![email_id], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for idx in &idxs {
        tx.execute(
            "UPDATE recipients SET status = 'failed', next_attempt_at = NULL, lease_until = NULL, lease_id = NULL, lease_node = NULL,
                    last_response = ?3
             WHERE email_id = ?1 AND idx = ?2",
            params![email_id, idx, DELETED],
        )?;
        super::events::insert(tx, &deleted_event(email_id, *idx as u32, now))?;
    }
    Ok(idxs.len())
}

/// A permanent 5.1.x refusal puts the address on the sending domain's
/// suppression list, linked to its bounce event, where the domain's
/// `suppress_on` has `hard_bounce`. True when it added an entry.
fn suppress_bounced(
    tx: &Tx<'_>,
    a: &Attempt,
    event_id: Option<i64>,
    domains: &HashSet<String>,
) -> rusqlite::Result<bool> {
    use super::suppressions::{self, Reason, Suppression};
    if !matches!(a.outcome, Outcome::Bounced) || !suppressions::is_bad_address(&a.response) {
        return Ok(false);
    }
    let Some((address, domain)) = suppressions::recipient_scope(tx, &a.email_id, a.idx)? else {
        return Ok(false);
    };
    if !domains.contains(&domain) {
        return Ok(false);
    }
    suppressions::add(
        tx,
        &Suppression {
            address,
            domain: Some(domain),
            reason: Reason::HardBounce.as_str().into(),
            event_id,
            created_at: a.at,
            expires_at: None,
        },
    )
}

#[async_trait::async_trait]
impl QueueStore for super::Sqlite {
    async fn accept(&self, email: NewEmail) -> Result<()> {
        // Freed here, not on the writer thread: the 50 KB body was
        // allocated on this thread's malloc arena, and freeing it from
        // another thread takes that arena's lock against this one
        // (`__lll_lock_wait_private` under free, ~1 % of the CPU per
        // message in bench/relay.sh).
        let email = std::sync::Arc::new(email);
        let job = email.clone();
        let done = self
            .write(Durability::Full, move |tx| super::emails::insert(tx, &job))
            .await;
        drop(email);
        done
    }

    async fn body(&self, email_id: &str) -> Result<Option<StoredBody>> {
        let id = email_id.to_string();
        let found = self.read(move |c| super::emails::body(c, &id)).await?;
        Ok(found.map(|(received, body)| StoredBody {
            received,
            body: body.into(),
        }))
    }

    async fn due(&self, now: i64, limit: usize, skip_domains: &[String]) -> Result<Vec<Claimed>> {
        let skip = skip_domains.to_vec();
        self.read(move |c| due(c, now, limit, &skip)).await
    }

    async fn claim(&self, wanted: Vec<Claimed>, now: i64, lease_ms: i64) -> Result<Vec<Claimed>> {
        let lease_id = uuid::Uuid::now_v7().to_string();
        let node = Backend::node_id(self).to_string();
        self.write(Durability::Normal, move |tx| {
            claim(tx, wanted, &lease_id, &node, now, lease_ms)
        })
        .await
    }

    async fn claim_due(&self, now: i64, lease_ms: i64, limit: usize) -> Result<Vec<Claimed>> {
        let node = Backend::node_id(self).to_string();
        self.write(Durability::Normal, move |tx| {
            claim_due(tx, &node, now, lease_ms, limit)
        })
        .await
    }

    async fn renew(&self, lease_id: &str, keys: &[(String, u32)], until: i64) -> Result<usize> {
        let id = lease_id.to_string();
        let keys = keys.to_vec();
        self.write(Durability::Normal, move |tx| renew(tx, &id, &keys, until))
            .await
    }

    async fn release(&self, leases: &[LeaseKeys], now: i64) -> Result<usize> {
        let leases = leases.to_vec();
        self.write(Durability::Normal, move |tx| {
            let mut n = 0;
            for (lease_id, keys) in &leases {
                n += release(tx, lease_id, keys, now)?;
            }
            Ok(n)
        })
        .await
    }

    async fn recover_expired(&self, now: i64) -> Result<usize> {
        self.write(Durability::Normal, move |tx| recover_leases(tx, now))
            .await
    }

    async fn next_due(&self) -> Result<Option<i64>> {
        self.read(next_due).await
    }

    async fn depth(&self) -> Result<i64> {
        self.read(depth).await
    }

    async fn record(
        &self,
        attempts: Vec<Attempt>,
        suppress_hard_bounce: &HashSet<String>,
    ) -> Result<Vec<(String, u32)>> {
        if attempts.is_empty() {
            return Ok(Vec::new());
        }
        // Only a batch with a 5.1.x bounce needs the domains (rare): the
        // set is not copied for the others.
        let domains = if attempts.iter().any(|a| {
            matches!(a.outcome, Outcome::Bounced)
                && super::suppressions::is_bad_address(&a.response)
        }) {
            suppress_hard_bounce.clone()
        } else {
            HashSet::new()
        };
        // A lost record means a resend after the lease runs out (at least
        // once), never a lost message, so NORMAL durability is enough.
        self.write(Durability::Normal, move |tx| {
            let mut suppressed = Vec::new();
            for a in &attempts {
                let event_id = record(tx, a)?;
                if suppress_bounced(tx, a, event_id, &domains)? {
                    suppressed.push((a.email_id.clone(), a.idx));
                }
            }
            Ok(suppressed)
        })
        .await
    }

    async fn list(
        &self,
        all: bool,
        after: Option<(String, u32)>,
        limit: usize,
    ) -> Result<Vec<QueueEntry>> {
        self.read(move |c| page(c, all, after.as_ref(), limit))
            .await
    }

    async fn retry(&self, email_id: &str, now: i64) -> Result<usize> {
        let id = email_id.to_string();
        self.write(Durability::Normal, move |tx| retry(tx, &id, now))
            .await
    }

    async fn delete(&self, email_id: &str, now: i64) -> Result<usize> {
        let id = email_id.to_string();
        self.write(Durability::Full, move |tx| delete(tx, &id, now))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::emails::{self, NewEmail};

    fn db() -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::store::sqlite::schema::migrate(&mut conn).unwrap();
        conn
    }

    /// Runs `f` in a committed transaction, as the store writer would.
    fn write<T>(conn: &mut Connection, f: impl FnOnce(&Tx<'_>) -> rusqlite::Result<T>) -> T {
        let t = conn.transaction().unwrap();
        let out = f(&Tx::new(&t, &[])).unwrap();
        t.commit().unwrap();
        out
    }

    fn email(conn: &mut Connection, rcpts: &[&str]) -> String {
        let id = uuid::Uuid::now_v7().to_string();
        let e = NewEmail {
            id: id.clone(),
            created_at: 1,
            domain: "example.com".into(),
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
            recipients: rcpts.iter().map(|r| r.to_string()).collect(),
        };
        write(conn, |tx| emails::insert(tx, &e));
        id
    }

    fn status(conn: &Connection, id: &str, idx: u32) -> (String, Option<String>) {
        conn.query_row(
            "SELECT status, lease_id FROM recipients WHERE email_id = ?1 AND idx = ?2",
            params![id, idx],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    }

    fn delivered(c: &Claimed, lease_id: &str) -> Attempt {
        Attempt {
            email_id: c.email_id.clone(),
            idx: c.idx,
            lease_id: lease_id.into(),
            at: 10,
            outcome: Outcome::Delivered,
            response: "250 ok".into(),
            tls: None,
            mx: None,
            tls_policy: None,
        }
    }

    #[test]
    fn only_the_lease_owner_records_and_a_claim_is_taken_once() {
        let mut conn = db();
        let id = email(&mut conn, &["x@example.net"]);
        let now = crate::store::now_ms();
        let wanted = due(&conn, now, 10, &[]).unwrap();
        assert_eq!(wanted.len(), 1);
        let first = write(&mut conn, |tx| {
            claim(tx, wanted.clone(), "lease-a", "node-a", now, 1000)
        });
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].lease_id, "lease-a");
        // A second runner that read the same row gets nothing.
        let second = write(&mut conn, |tx| {
            claim(tx, wanted.clone(), "lease-b", "node-b", now, 1000)
        });
        assert!(second.is_empty());
        let keys = vec![(id.clone(), 0)];
        assert_eq!(renew(&conn, "lease-b", &keys, now + 5000).unwrap(), 0);
        assert_eq!(renew(&conn, "lease-a", &keys, now + 5000).unwrap(), 1);

        // Released by its owner only.
        assert_eq!(release(&conn, "lease-b", &keys, now).unwrap(), 0);
        assert_eq!(status(&conn, &id, 0).0, "sending");
        // Still valid: recovery leaves it alone.
        assert_eq!(recover_leases(&conn, now + 4000).unwrap(), 0);
        // Expired: queued again, and then leased to another owner.
        assert_eq!(recover_leases(&conn, now + 6000).unwrap(), 1);
        assert_eq!(status(&conn, &id, 0), ("queued".into(), None));
        let again = due(&conn, now + 6000, 10, &[]).unwrap();
        let b = write(&mut conn, |tx| {
            claim(tx, again, "lease-b", "node-b", now + 6000, 1000)
        });
        assert_eq!(b.len(), 1);

        // The late owner's outcome changes nothing, the current one's does.
        write(&mut conn, |tx| record(tx, &delivered(&first[0], "lease-a")));
        assert_eq!(
            status(&conn, &id, 0),
            ("sending".into(), Some("lease-b".into()))
        );
        write(&mut conn, |tx| record(tx, &delivered(&b[0], "lease-b")));
        assert_eq!(status(&conn, &id, 0), ("delivered".into(), None));
        let events: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM events WHERE type = 'email.delivered'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(events, 1);
    }

    #[test]
    fn a_suppressed_recipient_is_settled_at_claim() {
        let mut conn = db();
        let id = email(&mut conn, &["Gone@Example.net", "ok@example.net"]);
        write(&mut conn, |tx| {
            crate::store::sqlite::suppressions::add(
                tx,
                &crate::store::sqlite::suppressions::Suppression {
                    address: "gone@example.net".into(),
                    domain: Some("example.com".into()),
                    reason: "hard_bounce".into(),
                    event_id: None,
                    created_at: 5,
                    expires_at: None,
                },
            )
        });
        let now = crate::store::now_ms();
        let wanted = due(&conn, now, 10, &[]).unwrap();
        let got = write(&mut conn, |tx| {
            claim(tx, wanted, "lease-a", "node-a", now, 1000)
        });
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].address, "ok@example.net");
        assert_eq!(status(&conn, &id, 0), ("suppressed".into(), None));
        let detail: String = conn
            .query_row(
                "SELECT detail FROM events WHERE type = 'email.suppressed' AND rcpt_idx = 0",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(detail.contains("\"reason\":\"hard_bounce\""), "{detail}");
        assert!(due(&conn, now, 10, &[]).unwrap().is_empty());
    }

    #[test]
    fn each_outcome_records_the_time_since_its_claim() {
        let mut conn = db();
        let id = email(&mut conn, &["a@example.net", "b@example.net"]);
        let now = crate::store::now_ms();
        let wanted = due(&conn, now, 10, &[]).unwrap();
        let got = write(&mut conn, |tx| {
            claim(tx, wanted, "lease-a", "node-a", now, 60_000)
        });
        assert_eq!(got.len(), 2);
        let mut delivered_a = delivered(&got[0], "lease-a");
        delivered_a.at = now + 1234;
        let mut deferred_b = delivered(&got[1], "lease-a");
        deferred_b.at = now + 2500;
        deferred_b.outcome = Outcome::Deferred {
            next_attempt_at: now + 60_000,
        };
        deferred_b.response = "421 try later".into();
        write(&mut conn, |tx| record(tx, &delivered_a));
        write(&mut conn, |tx| record(tx, &deferred_b));
        let detail = |kind: &str| -> serde_json::Value {
            let s: String = conn
                .query_row(
                    "SELECT detail FROM events WHERE email_id = ?1 AND type = ?2",
                    params![id, kind],
                    |r| r.get(0),
                )
                .unwrap();
            serde_json::from_str(&s).unwrap()
        };
        let d = detail("email.delivered");
        assert_eq!(d["duration_ms"], 1234);
        // The fields that were there before stay.
        assert_eq!(d["response"], "250 ok");
        assert_eq!(d["attempt"], 1);
        let d = detail("email.delivery_delayed");
        assert_eq!(d["duration_ms"], 2500);
        assert_eq!(d["response"], "421 try later");
        assert!(d["next_attempt_at"].is_string());
    }

    #[test]
    fn due_skips_domains_without_a_free_slot() {
        let mut conn = db();
        email(&mut conn, &["a@busy.test", "b@Busy.Test", "c@free.test"]);
        let now = crate::store::now_ms();
        let got = due(&conn, now, 10, &["busy.test".into()]).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].address, "c@free.test");
        assert_eq!(due(&conn, now, 10, &[]).unwrap().len(), 3);
    }
}
