//! The dashboard's reads (src/ui): a time series from the hourly rollups,
//! the email search, an email's webhook deliveries, and the queue grouped
//! by destination and reason. Writes reuse `queue`.

use super::rollups::HOUR_MS;
use super::sql::Where;
use super::stats::Stats;
pub use crate::store::queries::{
    EmailRow, EmailSearch, Found, QueueGroup, SuppressionWhy, WebhookSent, SCAN_BUDGET,
};
use rusqlite::{params, Connection};

/// Rollup counters per bucket of `bucket` ms (a multiple of an hour) over
/// the whole hours `[from, to)`, oldest first; empty buckets are included
/// so a chart's x axis is even. Reads only `rollups`.
pub fn series(
    conn: &Connection,
    domain: Option<&str>,
    from: i64,
    to: i64,
    bucket: i64,
) -> rusqlite::Result<Vec<(i64, Stats)>> {
    let bucket = bucket.max(HOUR_MS);
    let mut w = Where::default();
    w.and("hour >= ?", from);
    w.and("hour < ?", to);
    if let Some(d) = domain {
        w.and("domain = ?", d.to_ascii_lowercase());
    }
    let q = w.wrap(
        &format!(
            "SELECT (hour - {from}) / {bucket}, SUM(sent), SUM(delivered), SUM(delayed), SUM(bounced),
                    SUM(complained), SUM(opened_human), SUM(opened_machine), SUM(clicked_human),
                    SUM(clicked_machine), SUM(opened), SUM(clicked) FROM rollups"
        ),
        "GROUP BY 1 ORDER BY 1",
    );
    let n = ((to - from).max(0) + bucket - 1) / bucket;
    let mut out: Vec<(i64, Stats)> = (0..n)
        .map(|i| (from + i * bucket, Stats::default()))
        .collect();
    let mut stmt = conn.prepare(q.sql())?;
    let mut rows = stmt.query(q.params())?;
    while let Some(r) = rows.next()? {
        let i: i64 = r.get(0)?;
        let Some((_, s)) = out.get_mut(i as usize) else {
            continue;
        };
        s.sent = r.get(1)?;
        s.delivered = r.get(2)?;
        s.delayed = r.get(3)?;
        s.bounced = r.get(4)?;
        s.complained = r.get(5)?;
        s.opened_human = r.get(6)?;
        s.opened_machine = r.get(7)?;
        s.clicked_human = r.get(8)?;
        s.clicked_machine = r.get(9)?;
        s.opened = r.get(10)?;
        s.clicked = r.get(11)?;
    }
    Ok(out)
}

/// `%` and `_` in a user's text are literal in the LIKE pattern.
pub(crate) fn like_pattern(s: &str) -> String {
    let mut p = String::from("%");
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// The emails of the time window, newest first (for the budgeted scan).
fn window_sql(s: &EmailSearch, w: &mut Where, limit: Option<i64>) -> String {
    let mut clauses = Vec::new();
    if let Some(t) = s.since {
        clauses.push("created_at >= ?");
        w.bind(t);
    }
    if let Some(t) = s.until {
        clauses.push("created_at < ?");
        w.bind(t);
    }
    let filter = if clauses.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", clauses.join(" AND "))
    };
    if let Some(n) = limit {
        w.bind(n);
    }
    format!(
        "SELECT id, created_at, header_from, mail_from, subject, tags FROM emails{filter}
         ORDER BY created_at DESC, id DESC{}",
        if limit.is_some() { " LIMIT ?" } else { "" }
    )
}

/// The search statement: only the filters given appear in it.
pub fn search_query(s: &EmailSearch) -> Where {
    let mut w = Where::default();
    let from = if s.is_scan() {
        format!("({}) e", window_sql(s, &mut w, Some(SCAN_BUDGET)))
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
            "e.id IN (SELECT email_id FROM recipients WHERE address = ? COLLATE NOCASE)",
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
        w.and("e.subject LIKE ? ESCAPE '\\'", like_pattern(sub));
    }
    if let Some(t) = EmailSearch::given(&s.tag) {
        w.and(
            "EXISTS (SELECT 1 FROM json_each(e.tags) WHERE value = ?)",
            t.to_string(),
        );
    }
    w.bind(s.limit.clamp(1, 500) as i64);
    w.wrap(
        &format!(
            "SELECT e.id, e.created_at, COALESCE(e.header_from, e.mail_from), e.subject, e.tags FROM {from}"
        ),
        "ORDER BY e.created_at DESC, e.id DESC LIMIT ?",
    )
}

/// Newest first, with each email's recipients and their status.
pub fn search(conn: &Connection, s: &EmailSearch) -> rusqlite::Result<Found> {
    let q = search_query(s);
    let mut stmt = conn.prepare(q.sql())?;
    let mut out: Vec<EmailRow> = stmt
        .query_map(q.params(), |r| {
            let tags: String = r.get(4)?;
            Ok(EmailRow {
                id: r.get(0)?,
                created_at: r.get(1)?,
                from: r.get(2)?,
                subject: r.get(3)?,
                tags: serde_json::from_str(&tags).unwrap_or_default(),
                recipients: Vec::new(),
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut rcpts = conn.prepare_cached(
        "SELECT address, status FROM recipients WHERE email_id = ?1 ORDER BY idx LIMIT 20",
    )?;
    for e in &mut out {
        e.recipients = rcpts
            .query_map(params![e.id], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
    }
    let mut scanned_back_to = None;
    if s.is_scan() && out.len() < s.limit {
        let mut w = Where::default();
        let inner = window_sql(s, &mut w, Some(SCAN_BUDGET));
        let w = w.wrap(
            &format!("SELECT COUNT(*), MIN(created_at) FROM ({inner})"),
            "",
        );
        let (n, oldest): (i64, Option<i64>) = conn
            .prepare(w.sql())?
            .query_row(w.params(), |r| Ok((r.get(0)?, r.get(1)?)))?;
        if n >= SCAN_BUDGET {
            scanned_back_to = oldest;
        }
    }
    Ok(Found {
        rows: out,
        scanned_back_to,
    })
}

const WEBHOOKS_FOR_EMAIL: &str =
    "SELECT w.event_id, w.endpoint, w.status, w.attempts, w.last_error, w.created_at, w.delivered_at
     FROM events e JOIN webhook_outbox w ON w.event_id = e.id
     WHERE e.email_id = ?1 ORDER BY w.created_at, w.id LIMIT 1000";

/// The webhook deliveries of one email's events (through the
/// `events_email` and `webhook_outbox_event` indexes).
pub fn webhooks_for_email(conn: &Connection, email_id: &str) -> rusqlite::Result<Vec<WebhookSent>> {
    let mut stmt = conn.prepare_cached(WEBHOOKS_FOR_EMAIL)?;
    let rows = stmt.query_map(params![email_id], |r| {
        Ok(WebhookSent {
            event_id: r.get(0)?,
            endpoint: r.get(1)?,
            status: r.get(2)?,
            attempts: r.get::<_, i64>(3)? as u32,
            last_error: r.get(4)?,
            created_at: r.get(5)?,
            delivered_at: r.get(6)?,
        })
    })?;
    rows.collect()
}

const DESTINATION: &str = "lower(substr(address, instr(address, '@') + 1))";

/// The queue (queued and deferred recipients) grouped by destination
/// domain and last reply, biggest first. Reads the `recipients_due`
/// partial index's rows only.
pub fn queue_groups(conn: &Connection, limit: usize) -> rusqlite::Result<Vec<QueueGroup>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {DESTINATION} AS dest, last_response, COUNT(*), MIN(next_attempt_at)
         FROM recipients WHERE status IN ('queued', 'deferred')
         GROUP BY dest, last_response ORDER BY 3 DESC, dest LIMIT ?1"
    ))?;
    let rows = stmt.query_map(params![limit as i64], |r| {
        Ok(QueueGroup {
            destination: r.get(0)?,
            reason: r.get(1)?,
            recipients: r.get(2)?,
            next_attempt_at: r.get(3)?,
        })
    })?;
    rows.collect()
}

/// Makes a group's recipients due now; returns how many.
pub fn retry_group(
    conn: &Connection,
    destination: &str,
    reason: Option<&str>,
    now: i64,
) -> rusqlite::Result<usize> {
    conn.execute(
        &format!(
            "UPDATE recipients SET next_attempt_at = ?1
             WHERE status IN ('queued', 'deferred') AND {DESTINATION} = ?2
               AND last_response IS ?3"
        ),
        params![now, destination.to_ascii_lowercase(), reason],
    )
}

/// Suppressions whose address starts with `prefix` (lowercased, as the
/// list stores them), in address order: a range on the primary key.
pub fn suppressions(
    conn: &Connection,
    prefix: &str,
    limit: usize,
) -> rusqlite::Result<Vec<SuppressionWhy>> {
    let lo = prefix.trim().to_lowercase();
    let hi = format!("{lo}\u{10FFFF}");
    let mut stmt = conn.prepare_cached(
        "SELECT s.address, s.scope, s.reason, s.event_id, s.created_at, s.expires_at, e.type, e.email_id
         FROM suppressions s LEFT JOIN events e ON e.id = s.event_id
         WHERE s.address >= ?1 AND s.address < ?2 ORDER BY s.address, s.scope LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![lo, hi, limit as i64], |r| {
        let scope: String = r.get(1)?;
        Ok(SuppressionWhy {
            entry: crate::store::queries::Suppression {
                address: r.get(0)?,
                domain: (!scope.is_empty()).then_some(scope),
                reason: r.get(2)?,
                event_id: r.get(3)?,
                created_at: r.get(4)?,
                expires_at: r.get(5)?,
            },
            event_type: r.get(6)?,
            email_id: r.get(7)?,
        })
    })?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suppressions_are_found_by_prefix_with_their_cause() {
        let mut c = Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&mut c).unwrap();
        for a in ["ann@x.test", "bob@x.test", "bobby@y.test"] {
            c.execute(
                "INSERT INTO suppressions (address, scope, reason, event_id, created_at) VALUES (?1, '', 'manual', 7, 1)",
                params![a],
            )
            .unwrap();
        }
        c.execute(
            "INSERT INTO events (id, email_id, type, at) VALUES (7, 'e1', 'email.bounced', 1)",
            [],
        )
        .unwrap();
        let got: Vec<String> = suppressions(&c, "BOB", 10)
            .unwrap()
            .into_iter()
            .map(|s| s.entry.address)
            .collect();
        assert_eq!(got, ["bob@x.test", "bobby@y.test"]);
        let all = suppressions(&c, "", 10).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].email_id.as_deref(), Some("e1"));
        assert_eq!(all[0].event_type.as_deref(), Some("email.bounced"));
    }

    #[test]
    fn scans_stop_at_the_budget_and_say_where() {
        let mut c = Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&mut c).unwrap();
        let t = c.transaction().unwrap();
        for i in 0..(SCAN_BUDGET + 10) {
            t.execute(
                "INSERT INTO emails (id, created_at, domain, mail_from, subject, tags, size)
                 VALUES (?1, ?2, 'example.com', 'a@example.com', ?3, '[\"t\"]', 1)",
                params![format!("e{i:06}"), i, if i < 5 { "needle" } else { "hay" }],
            )
            .unwrap();
        }
        t.commit().unwrap();
        let mut s = EmailSearch {
            subject: Some("needle".into()),
            limit: 50,
            ..Default::default()
        };
        // The needles are the oldest emails: past the budget.
        let f = search(&c, &s).unwrap();
        assert!(f.rows.is_empty());
        assert_eq!(f.scanned_back_to, Some(10));
        // Continuing from there finds them.
        s.until = f.scanned_back_to;
        let f = search(&c, &s).unwrap();
        assert_eq!(f.rows.len(), 5);
        assert_eq!(f.scanned_back_to, None);
        // A search that fills its page does not stop early.
        s.until = None;
        s.subject = Some("hay".into());
        assert_eq!(search(&c, &s).unwrap().rows.len(), 50);
    }

    #[test]
    fn like_patterns_take_the_text_literally() {
        assert_eq!(like_pattern("50%_off"), "%50\\%\\_off%");
    }

    #[test]
    fn only_given_search_filters_reach_the_statement() {
        let q = search_query(&EmailSearch {
            limit: 10,
            ..Default::default()
        });
        assert!(!q.sql().contains("WHERE"), "{}", q.sql());
        let q = search_query(&EmailSearch {
            recipient: Some("a@b.test".into()),
            tag: Some("t".into()),
            limit: 10,
            ..Default::default()
        });
        assert!(q.sql().contains("address = ?"));
        assert!(q.sql().contains("json_each"));
        assert!(!q.sql().contains("LIKE"));
    }

    fn plan(c: &Connection, sql: &str, params: impl rusqlite::Params) -> Vec<String> {
        let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        stmt.query_map(params, |r| r.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn an_emails_webhooks_are_found_through_indexes() {
        let mut c = Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&mut c).unwrap();
        let p = plan(&c, WEBHOOKS_FOR_EMAIL, ["x"]);
        assert!(
            p.iter().any(|l| l.contains("webhook_outbox_event")),
            "{p:?}"
        );
        assert!(p.iter().any(|l| l.contains("events_email")), "{p:?}");
        assert!(webhooks_for_email(&c, "x").unwrap().is_empty());
    }

    #[test]
    fn search_by_recipient_uses_the_address_index() {
        let mut c = Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&mut c).unwrap();
        let q = search_query(&EmailSearch {
            recipient: Some("A@B.test".into()),
            limit: 10,
            ..Default::default()
        });
        let mut stmt = c
            .prepare(&format!("EXPLAIN QUERY PLAN {}", q.sql()))
            .unwrap();
        let plan: Vec<String> = stmt
            .query_map(q.params(), |r| r.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(
            plan.iter().any(|l| l.contains("recipients_address")),
            "{plan:?}"
        );
    }

    #[test]
    fn series_buckets_rollups_and_keeps_empty_buckets() {
        let mut c = Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&mut c).unwrap();
        let h = HOUR_MS;
        for (hour, sent) in [(10 * h, 2), (11 * h, 3), (14 * h, 5)] {
            c.execute(
                "INSERT INTO rollups (hour, domain, sent, opened_human) VALUES (?1, 'example.com', ?2, 1)",
                params![hour, sent],
            )
            .unwrap();
        }
        let s = series(&c, None, 10 * h, 16 * h, 2 * h).unwrap();
        let sent: Vec<i64> = s.iter().map(|(_, st)| st.sent).collect();
        assert_eq!(sent, vec![5, 0, 5]);
        assert_eq!(s[2].0, 14 * h);
        assert_eq!(s[0].1.opened_human, 2);
        let none = series(&c, Some("example.org"), 10 * h, 16 * h, 2 * h).unwrap();
        assert!(none.iter().all(|(_, st)| st.sent == 0));
    }
}
