//! The PostgreSQL side of `QueryStore`: the SQLite queries (sqlite/emails,
//! events, rollups, dashboard) ported statement for statement. Text is
//! ordered `COLLATE "C"` (bytes, as SQLite's BINARY) so both backends list
//! in the same order whatever the database's locale; `SUM` of a BIGINT is
//! NUMERIC in PostgreSQL, hence the casts back. The streaming readers read
//! in pages by key (memory: one page), batching recipients per page.

use super::{begin, PgCtx, Postgres};
use crate::events::StoredEvent;
use crate::store::queries::Suppression;
use crate::store::queries::{
    Each, EmailInfo, EmailRow, EmailSearch, EventFilter, Found, Gauges, PruneBatch, Pruned,
    QueueGroup, RecipientInfo, Stats, SuppressionWhy, WebhookSent, EVENT_FIELDS, HOUR_MS,
    SCAN_BUDGET,
};
use crate::store::sqlite::dashboard::like_pattern;
use crate::store::sqlite::rollups::{plan, COUNTERS};
use crate::store::{Durability, Result};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

/// Rows a streaming reader fetches per round trip.
const PAGE: i64 = 500;

type Param = Box<dyn ToSql + Sync + Send>;

/// A statement's `WHERE` clause from the filters given, with `$n`
/// placeholders numbered as values are bound (see sqlite/sql.rs `Where`
/// for why only the given filters appear).
#[derive(Default)]
struct Filters {
    clauses: Vec<String>,
    params: Vec<Param>,
}

impl Filters {
    /// Binds a value; returns its placeholder.
    fn bind(&mut self, v: impl ToSql + Sync + Send + 'static) -> String {
        self.params.push(Box::new(v));
        format!("${}", self.params.len())
    }

    /// Adds `clause`, its one `?` standing for `v`.
    fn and(&mut self, clause: &str, v: impl ToSql + Sync + Send + 'static) {
        let p = self.bind(v);
        self.clauses.push(clause.replacen('?', &p, 1));
    }

    fn where_sql(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.clauses.join(" AND "))
        }
    }

    fn values(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

fn event_from_row(r: &Row) -> StoredEvent {
    let detail: Option<String> = r.get(11);
    StoredEvent {
        id: r.get(0),
        email_id: r.get(1),
        kind: r.get(2),
        recipient: r.get(3),
        at: r.get(4),
        ip: r.get(5),
        user_agent: r.get(6),
        referer: r.get(7),
        link: r.get(8),
        machine: r.get::<_, Option<i64>>(9).map(|m| m != 0),
        machine_reason: r.get(10),
        detail: detail.and_then(|d| serde_json::from_str(&d).ok()),
    }
}

fn tags(json: &str) -> Vec<String> {
    serde_json::from_str(json).unwrap_or_default()
}

const EMAIL_COLUMNS: &str = "id, created_at, domain, mail_from, header_from, to_header, subject,
     message_id, tags, size, body IS NULL";

fn email_from_row(r: &Row) -> EmailInfo {
    EmailInfo {
        id: r.get(0),
        created_at: r.get(1),
        domain: r.get(2),
        mail_from: r.get(3),
        header_from: r.get(4),
        to_header: r.get(5),
        subject: r.get(6),
        message_id: r.get(7),
        tags: tags(r.get(8)),
        size: r.get(9),
        pruned: r.get(10),
        recipients: Vec::new(),
    }
}

const RECIPIENT_COLUMNS: &str = "email_id, idx, address, status, attempts, next_attempt_at,
     last_response, tls, delivered_at, bounced_at, opened_at, clicked_at, tls_policy";

fn recipient_from_row(r: &Row) -> RecipientInfo {
    RecipientInfo {
        idx: r.get::<_, i64>(1) as u32,
        address: r.get(2),
        status: r.get(3),
        attempts: r.get::<_, i64>(4) as u32,
        next_attempt_at: r.get(5),
        last_response: r.get(6),
        tls: r.get(7),
        delivered_at: r.get(8),
        bounced_at: r.get(9),
        opened_at: r.get(10),
        clicked_at: r.get(11),
        tls_policy: r.get(12),
    }
}

/// Adds a row of the 14 counters, in `COUNTERS` order, to `st`.
fn add_counters(st: &mut Stats, r: &Row) {
    let v = |i: usize| r.get::<_, i64>(i);
    st.sent += v(0);
    st.delivered += v(1);
    st.delayed += v(2);
    st.bounced += v(3);
    st.failed += v(4);
    st.complained += v(5);
    st.opened += v(6);
    st.opened_human += v(7);
    st.opened_machine += v(8);
    st.clicked += v(9);
    st.clicked_human += v(10);
    st.clicked_machine += v(11);
    st.suppressed += v(12);
    st.unsubscribed += v(13);
}

/// The lowercased destination domain of `address`, as the queue groups it.
const DESTINATION: &str = "lower(substr(address, strpos(address, '@') + 1))";

impl Postgres {
    /// Fills in the recipients of `emails` in one round trip.
    async fn with_recipients(
        &self,
        client: &deadpool_postgres::Object,
        emails: &mut [EmailInfo],
    ) -> Result<()> {
        if emails.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = emails.iter().map(|e| e.id.as_str()).collect();
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE email_id = ANY($1)
                 ORDER BY email_id, idx"
            ))
            .await
            .ctx("preparing the recipients query")?;
        for r in client
            .query(&stmt, &[&ids])
            .await
            .ctx("reading recipients")?
        {
            let id: String = r.get(0);
            if let Some(e) = emails.iter_mut().find(|e| e.id == id) {
                e.recipients.push(recipient_from_row(&r));
            }
        }
        Ok(())
    }

    /// A page of events after `after` (by id), at most `limit`.
    async fn event_page(
        &self,
        client: &deadpool_postgres::Object,
        f: &EventFilter,
        after: Option<i64>,
        limit: i64,
    ) -> Result<Vec<StoredEvent>> {
        let mut w = Filters::default();
        if let Some(id) = &f.email_id {
            w.and("email_id = ?", id.clone());
        }
        if let Some(kind) = &f.kind {
            w.and("type = ?", kind.clone());
        }
        if let Some(t) = f.since {
            w.and("at >= ?", t);
        }
        if let Some(t) = f.until {
            w.and("at < ?", t);
        }
        if let Some(id) = after {
            w.and("id > ?", id);
        }
        let lim = w.bind(limit);
        let sql = format!(
            "SELECT {}, detail FROM events{} ORDER BY id LIMIT {lim}",
            EVENT_FIELDS.join(", "),
            w.where_sql()
        );
        let stmt = client
            .prepare_cached(&sql)
            .await
            .ctx("preparing the events query")?;
        let rows = client
            .query(&stmt, &w.values())
            .await
            .ctx("reading events")?;
        Ok(rows.iter().map(event_from_row).collect())
    }
}

#[async_trait::async_trait]
impl crate::store::queries::QueryStore for Postgres {
    async fn email(&self, id: &str) -> Result<Option<EmailInfo>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!("SELECT {EMAIL_COLUMNS} FROM emails WHERE id = $1"))
            .await
            .ctx("preparing the email query")?;
        let Some(row) = client
            .query_opt(&stmt, &[&id])
            .await
            .ctx("reading an email")?
        else {
            return Ok(None);
        };
        let mut email = [email_from_row(&row)];
        self.with_recipients(&client, &mut email).await?;
        let [email] = email;
        Ok(Some(email))
    }

    async fn email_known(&self, id: &str) -> Result<bool> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM emails WHERE id = $1)
                     OR EXISTS (SELECT 1 FROM events WHERE email_id = $1)",
            )
            .await
            .ctx("preparing the email lookup")?;
        Ok(client
            .query_one(&stmt, &[&id])
            .await
            .ctx("looking up an email id")?
            .get(0))
    }

    async fn events(&self, filter: &EventFilter) -> Result<Vec<StoredEvent>> {
        let mut out = Vec::new();
        self.each_event(filter, &mut |e| {
            out.push(e);
            std::ops::ControlFlow::Continue(())
        })
        .await?;
        Ok(out)
    }

    async fn each_event(&self, filter: &EventFilter, on: Each<'_, StoredEvent>) -> Result<()> {
        let client = self.client().await?;
        let mut after = filter.after_id;
        let mut left = (filter.limit > 0).then_some(filter.limit as i64);
        loop {
            let n = left.map_or(PAGE, |l| l.min(PAGE));
            if n == 0 {
                return Ok(());
            }
            let page = self.event_page(&client, filter, after, n).await?;
            let got = page.len() as i64;
            after = page.last().map(|e| e.id).or(after);
            for e in page {
                if on(e).is_break() {
                    return Ok(());
                }
            }
            if got < n {
                return Ok(());
            }
            left = left.map(|l| l - got);
        }
    }

    async fn each_email(
        &self,
        since: Option<i64>,
        until: Option<i64>,
        on: Each<'_, EmailInfo>,
    ) -> Result<()> {
        let client = self.client().await?;
        let mut after: Option<(i64, String)> = None;
        loop {
            let mut w = Filters::default();
            if let Some(t) = since {
                w.and("created_at >= ?", t);
            }
            if let Some(t) = until {
                w.and("created_at < ?", t);
            }
            if let Some((t, id)) = &after {
                let (t, id) = (w.bind(*t), w.bind(id.clone()));
                w.clauses.push(format!(
                    "(created_at > {t} OR (created_at = {t} AND id COLLATE \"C\" > {id}))"
                ));
            }
            let lim = w.bind(PAGE);
            let sql = format!(
                "SELECT {EMAIL_COLUMNS} FROM emails{} ORDER BY created_at, id COLLATE \"C\" LIMIT {lim}",
                w.where_sql()
            );
            let stmt = client
                .prepare_cached(&sql)
                .await
                .ctx("preparing the emails query")?;
            let rows = client
                .query(&stmt, &w.values())
                .await
                .ctx("reading emails")?;
            let mut page: Vec<EmailInfo> = rows.iter().map(email_from_row).collect();
            self.with_recipients(&client, &mut page).await?;
            let got = page.len() as i64;
            after = page.last().map(|e| (e.created_at, e.id.clone()));
            for e in page {
                if on(e).is_break() {
                    return Ok(());
                }
            }
            if got < PAGE {
                return Ok(());
            }
        }
    }

    async fn stats(
        &self,
        domain: Option<&str>,
        since: Option<i64>,
        until: Option<i64>,
    ) -> Result<Stats> {
        let client = self.client().await?;
        let p = plan(since, until);
        let mut st = Stats::default();
        if let Some((from, to)) = p.hours {
            let mut w = Filters::default();
            if let Some(f) = from {
                w.and("hour >= ?", f);
            }
            if let Some(t) = to {
                w.and("hour < ?", t);
            }
            if let Some(d) = domain {
                w.and("domain = ?", d.to_ascii_lowercase());
            }
            let sums: Vec<String> = COUNTERS
                .iter()
                .map(|(c, _)| format!("COALESCE(SUM({c}), 0)::BIGINT"))
                .collect();
            let sql = format!(
                "SELECT {} FROM {} rollups{}",
                sums.join(", "),
                super::events::ROLLUPS,
                w.where_sql()
            );
            let row = client
                .query_one(&sql, &w.values())
                .await
                .ctx("reading the hourly rollups")?;
            add_counters(&mut st, &row);
        }
        for (a, b) in p.edges {
            let mut w = Filters::default();
            w.and("e.created_at >= ?", a);
            w.and("e.created_at < ?", b);
            if let Some(d) = domain {
                w.and("lower(e.domain) = ?", d.to_ascii_lowercase());
            }
            let sums: Vec<String> = COUNTERS
                .iter()
                .map(|(_, b)| format!("COUNT(*) FILTER (WHERE r.counted & {b} <> 0)"))
                .collect();
            let sql = format!(
                "SELECT {} FROM emails e JOIN recipients r ON r.email_id = e.id{}",
                sums.join(", "),
                w.where_sql()
            );
            let row = client
                .query_one(&sql, &w.values())
                .await
                .ctx("counting the recipients of a partial hour")?;
            add_counters(&mut st, &row);
        }
        Ok(st)
    }

    async fn series(
        &self,
        domain: Option<&str>,
        from: i64,
        to: i64,
        bucket: i64,
    ) -> Result<Vec<(i64, Stats)>> {
        let bucket = bucket.max(HOUR_MS);
        let mut w = Filters::default();
        let (f, b) = (w.bind(from), w.bind(bucket));
        w.and("hour >= ?", from);
        w.and("hour < ?", to);
        if let Some(d) = domain {
            w.and("domain = ?", d.to_ascii_lowercase());
        }
        let sql = format!(
            "SELECT (hour - {f}) / {b}, SUM(sent)::BIGINT, SUM(delivered)::BIGINT,
                    SUM(delayed)::BIGINT, SUM(bounced)::BIGINT, SUM(complained)::BIGINT,
                    SUM(opened_human)::BIGINT, SUM(opened_machine)::BIGINT,
                    SUM(clicked_human)::BIGINT, SUM(clicked_machine)::BIGINT,
                    SUM(opened)::BIGINT, SUM(clicked)::BIGINT
             FROM {} rollups{} GROUP BY 1 ORDER BY 1",
            super::events::ROLLUPS,
            w.where_sql()
        );
        let n = ((to - from).max(0) + bucket - 1) / bucket;
        let mut out: Vec<(i64, Stats)> = (0..n)
            .map(|i| (from + i * bucket, Stats::default()))
            .collect();
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&sql)
            .await
            .ctx("preparing the series query")?;
        for r in client
            .query(&stmt, &w.values())
            .await
            .ctx("reading the rollup series")?
        {
            let i: i64 = r.get(0);
            let Some((_, s)) = usize::try_from(i).ok().and_then(|i| out.get_mut(i)) else {
                continue;
            };
            s.sent = r.get(1);
            s.delivered = r.get(2);
            s.delayed = r.get(3);
            s.bounced = r.get(4);
            s.complained = r.get(5);
            s.opened_human = r.get(6);
            s.opened_machine = r.get(7);
            s.clicked_human = r.get(8);
            s.clicked_machine = r.get(9);
            s.opened = r.get(10);
            s.clicked = r.get(11);
        }
        Ok(out)
    }

    async fn search(&self, s: &EmailSearch) -> Result<Found> {
        let mut w = Filters::default();
        // The window's newest emails, for a scan within the budget.
        let window = |w: &mut Filters| {
            let mut clauses = Vec::new();
            if let Some(t) = s.since {
                clauses.push(format!("created_at >= {}", w.bind(t)));
            }
            if let Some(t) = s.until {
                clauses.push(format!("created_at < {}", w.bind(t)));
            }
            let filter = if clauses.is_empty() {
                String::new()
            } else {
                format!(" WHERE {}", clauses.join(" AND "))
            };
            format!(
                "SELECT id, created_at, header_from, mail_from, subject, tags FROM emails{filter}
                 ORDER BY created_at DESC, id COLLATE \"C\" DESC LIMIT {}",
                w.bind(SCAN_BUDGET)
            )
        };
        let from = if s.is_scan() {
            format!("({}) e", window(&mut w))
        } else {
            if let Some(t) = s.since {
                w.and("e.created_at >= ?", t);
            }
            if let Some(t) = s.until {
                w.and("e.created_at < ?", t);
            }
            "emails e".to_string()
        };
        if let Some(r) = EmailSearch::given(&s.recipient) {
            w.and(
                "e.id IN (SELECT email_id FROM recipients WHERE lower(address) = lower(?))",
                r.to_string(),
            );
        }
        if let Some(st) = EmailSearch::given(&s.status) {
            w.and(
                "EXISTS (SELECT 1 FROM recipients r WHERE r.email_id = e.id AND r.status = ?)",
                st.to_string(),
            );
        }
        if let Some(sub) = EmailSearch::given(&s.subject) {
            w.and("e.subject ILIKE ? ESCAPE '\\'", like_pattern(sub));
        }
        if let Some(t) = EmailSearch::given(&s.tag) {
            w.and(
                "EXISTS (SELECT 1 FROM jsonb_array_elements_text(e.tags::jsonb) t(v) WHERE t.v = ?)",
                t.to_string(),
            );
        }
        let lim = w.bind(s.limit.clamp(1, 500) as i64);
        let sql = format!(
            "SELECT e.id, e.created_at, COALESCE(e.header_from, e.mail_from), e.subject, e.tags
             FROM {from}{} ORDER BY e.created_at DESC, e.id COLLATE \"C\" DESC LIMIT {lim}",
            w.where_sql()
        );
        let client = self.client().await?;
        let rows = client
            .query(&sql, &w.values())
            .await
            .ctx("searching emails")?;
        let mut out: Vec<EmailRow> = rows
            .iter()
            .map(|r| EmailRow {
                id: r.get(0),
                created_at: r.get(1),
                from: r.get(2),
                subject: r.get(3),
                tags: tags(r.get(4)),
                recipients: Vec::new(),
            })
            .collect();
        if !out.is_empty() {
            let ids: Vec<&str> = out.iter().map(|e| e.id.as_str()).collect();
            let stmt = client
                .prepare_cached(
                    "SELECT email_id, address, status FROM (
                        SELECT email_id, idx, address, status,
                               row_number() OVER (PARTITION BY email_id ORDER BY idx) AS n
                        FROM recipients WHERE email_id = ANY($1)) r
                     WHERE n <= 20 ORDER BY email_id, idx",
                )
                .await
                .ctx("preparing the search's recipients query")?;
            for r in client
                .query(&stmt, &[&ids])
                .await
                .ctx("reading the found emails' recipients")?
            {
                let id: String = r.get(0);
                if let Some(e) = out.iter_mut().find(|e| e.id == id) {
                    e.recipients.push((r.get(1), r.get(2)));
                }
            }
        }
        let mut scanned_back_to = None;
        if s.is_scan() && out.len() < s.limit {
            let mut w = Filters::default();
            let inner = window(&mut w);
            let row = client
                .query_one(
                    &format!("SELECT COUNT(*), MIN(created_at) FROM ({inner}) w"),
                    &w.values(),
                )
                .await
                .ctx("measuring the search's scan")?;
            let (n, oldest): (i64, Option<i64>) = (row.get(0), row.get(1));
            if n >= SCAN_BUDGET {
                scanned_back_to = oldest;
            }
        }
        Ok(Found {
            rows: out,
            scanned_back_to,
        })
    }

    async fn webhooks_for_email(&self, email_id: &str) -> Result<Vec<WebhookSent>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT w.event_id, w.endpoint, w.status, w.attempts, w.last_error, w.created_at,
                        w.delivered_at
                 FROM events e JOIN webhook_outbox w ON w.event_id = e.id
                 WHERE e.email_id = $1 ORDER BY w.created_at, w.id COLLATE \"C\" LIMIT 1000",
            )
            .await
            .ctx("preparing the email's webhooks query")?;
        Ok(client
            .query(&stmt, &[&email_id])
            .await
            .ctx("reading an email's webhook deliveries")?
            .iter()
            .map(|r| WebhookSent {
                event_id: r.get(0),
                endpoint: r.get(1),
                status: r.get(2),
                attempts: r.get::<_, i64>(3) as u32,
                last_error: r.get(4),
                created_at: r.get(5),
                delivered_at: r.get(6),
            })
            .collect())
    }

    async fn queue_groups(&self, limit: usize) -> Result<Vec<QueueGroup>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {DESTINATION} COLLATE \"C\" AS dest, last_response, COUNT(*),
                        MIN(next_attempt_at)
                 FROM recipients WHERE status IN ('queued', 'deferred')
                 GROUP BY dest, last_response ORDER BY 3 DESC, dest LIMIT $1"
            ))
            .await
            .ctx("preparing the queue groups query")?;
        Ok(client
            .query(&stmt, &[&(limit as i64)])
            .await
            .ctx("grouping the queue")?
            .iter()
            .map(|r| QueueGroup {
                destination: r.get(0),
                reason: r.get(1),
                recipients: r.get(2),
                next_attempt_at: r.get(3),
            })
            .collect())
    }

    async fn retry_group(
        &self,
        destination: &str,
        reason: Option<&str>,
        now: i64,
    ) -> Result<usize> {
        let mut client = self.client().await?;
        let tx = begin(&mut client, Durability::Normal).await?;
        let n = tx
            .execute(
                &format!(
                    "UPDATE recipients SET next_attempt_at = $1
                     WHERE status IN ('queued', 'deferred') AND {DESTINATION} = $2
                       AND last_response IS NOT DISTINCT FROM $3"
                ),
                &[&now, &destination.to_ascii_lowercase(), &reason],
            )
            .await
            .ctx("making a queue group due")?;
        tx.commit().await.ctx("committing a queue group's retry")?;
        Ok(n as usize)
    }

    async fn suppressions_view(&self, prefix: &str, limit: usize) -> Result<Vec<SuppressionWhy>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT s.address, s.scope, s.reason, s.event_id, s.created_at, s.expires_at,
                        e.type, e.email_id
                 FROM suppressions s LEFT JOIN events e ON e.id = s.event_id
                 WHERE starts_with(s.address, $1)
                 ORDER BY s.address COLLATE \"C\", s.scope COLLATE \"C\" LIMIT $2",
            )
            .await
            .ctx("preparing the suppressions query")?;
        let lo = prefix.trim().to_lowercase();
        Ok(client
            .query(&stmt, &[&lo, &(limit as i64)])
            .await
            .ctx("reading suppressions")?
            .iter()
            .map(|r| {
                let scope: String = r.get(1);
                SuppressionWhy {
                    entry: Suppression {
                        address: r.get(0),
                        domain: (!scope.is_empty()).then_some(scope),
                        reason: r.get(2),
                        event_id: r.get(3),
                        created_at: r.get(4),
                        expires_at: r.get(5),
                    },
                    event_type: r.get(6),
                    email_id: r.get(7),
                }
            })
            .collect())
    }

    async fn gauges(&self) -> Result<Gauges> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT (SELECT COUNT(*) FROM recipients
                         WHERE status IN ('queued', 'deferred', 'sending')),
                        (SELECT COUNT(*) FROM webhook_outbox WHERE status = 'pending'),
                        (SELECT COUNT(*) FROM webhook_outbox WHERE status = 'failed')",
                &[],
            )
            .await
            .ctx("reading the gauges")?;
        let domains = client
            .query(
                "SELECT domain, status FROM domain_status ORDER BY domain COLLATE \"C\"",
                &[],
            )
            .await
            .ctx("reading the domain statuses")?;
        Ok(Gauges {
            queue_depth: row.get(0),
            webhooks_pending: row.get(1),
            webhooks_failed: row.get(2),
            domain_statuses: domains.iter().map(|r| (r.get(0), r.get(1))).collect(),
        })
    }

    async fn prune(&self, p: PruneBatch) -> Result<Pruned> {
        let mut client = self.client().await?;
        // Retention's pass is also when the rollup increments are folded.
        super::events::fold_rollups(&client).await?;
        let tx = begin(&mut client, Durability::Normal).await?;
        let batch = p.batch as i64;
        let bodies = tx
            .execute(
                "UPDATE emails SET body = NULL, pruned_at = $2
                 WHERE id IN (
                    SELECT e.id FROM emails e
                    WHERE e.created_at < $1 AND e.body IS NOT NULL
                      AND NOT EXISTS (SELECT 1 FROM recipients r WHERE r.email_id = e.id
                                      AND r.status IN ('queued', 'deferred', 'sending'))
                    ORDER BY e.created_at LIMIT $3)",
                &[&p.bodies_before, &p.now, &batch],
            )
            .await
            .ctx("pruning message bodies")?;
        let events = tx
            .execute(
                "DELETE FROM events WHERE id IN
                    (SELECT id FROM events WHERE at < $1 ORDER BY at LIMIT $2)",
                &[&p.events_before, &batch],
            )
            .await
            .ctx("pruning events")?;
        let webhooks = tx
            .execute(
                "DELETE FROM webhook_outbox WHERE id IN (SELECT id FROM webhook_outbox
                 WHERE status <> 'pending' AND created_at < $1 LIMIT $2)",
                &[&p.events_before, &batch],
            )
            .await
            .ctx("pruning webhook deliveries")?;
        let reports = tx
            .execute(
                "DELETE FROM inbound_reports WHERE id IN (SELECT id FROM inbound_reports
                 WHERE received_at < $1 AND processed_at IS NOT NULL ORDER BY received_at LIMIT $2)",
                &[&p.events_before, &batch],
            )
            .await
            .ctx("pruning inbound reports")?;
        tx.commit().await.ctx("committing a retention batch")?;
        Ok(Pruned {
            bodies: bodies as usize,
            events: events as usize,
            webhooks: webhooks as usize,
            reports: reports as usize,
        })
    }
}
