//! TLS reporting (RFC 8460): session counts per policy domain and UTC day,
//! and the daily reports built from them (src/outbound/tls_report.rs).
//!
//! Counts arrive in batches from the in-memory counter, never one write
//! per delivery. A report row is created once per (policy domain, day) and
//! only ever moves forward (pending -> sent | failed), so a day is sent
//! once however often the reporter runs.

use super::Tx;
use rusqlite::{params, Connection, OptionalExtension};

pub use crate::store::domains::{CountKey, ReportClaim, ReportRow, Summary};

/// Adds a batch of counts (one transaction for the whole batch).
pub fn add_counts(tx: &Tx<'_>, counts: &[(CountKey, i64)]) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO tls_report_counts (day, policy_domain, policy_type, policy_strings, mx_host,
                                        result_type, sending_ip, receiving_mx, receiving_ip, count)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT DO UPDATE SET count = count + excluded.count",
    )?;
    for (k, n) in counts {
        stmt.execute(params![
            k.day,
            k.policy_domain,
            k.policy_type,
            k.policy_strings,
            k.mx_host,
            k.result_type,
            k.sending_ip,
            k.receiving_mx,
            k.receiving_ip,
            n
        ])?;
    }
    Ok(())
}

/// Every count of one policy domain's day.
pub fn counts(
    conn: &Connection,
    policy_domain: &str,
    day: &str,
) -> rusqlite::Result<Vec<(CountKey, i64)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT day, policy_domain, policy_type, policy_strings, mx_host, result_type,
                sending_ip, receiving_mx, receiving_ip, count
         FROM tls_report_counts WHERE policy_domain = ?1 AND day = ?2
         ORDER BY policy_type, policy_strings, mx_host, result_type, receiving_mx, receiving_ip, sending_ip",
    )?;
    let rows = stmt.query_map(params![policy_domain, day], |r| {
        Ok((
            CountKey {
                day: r.get(0)?,
                policy_domain: r.get(1)?,
                policy_type: r.get(2)?,
                policy_strings: r.get(3)?,
                mx_host: r.get(4)?,
                result_type: r.get(5)?,
                sending_ip: r.get(6)?,
                receiving_mx: r.get(7)?,
                receiving_ip: r.get(8)?,
            },
            r.get(9)?,
        ))
    })?;
    rows.collect()
}

/// (policy domain, day) pairs with counts from before `today` and no
/// report row yet: the days the reporter still has to decide about.
pub fn unreported_days(conn: &Connection, today: &str) -> rusqlite::Result<Vec<(String, String)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT DISTINCT c.policy_domain, c.day FROM tls_report_counts c
         WHERE c.day < ?1 AND NOT EXISTS
           (SELECT 1 FROM tls_reports r WHERE r.policy_domain = c.policy_domain AND r.day = c.day)
         ORDER BY c.day, c.policy_domain",
    )?;
    let rows = stmt.query_map([today], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

/// Forgets counts and reports of days before `before_day` (retention, as
/// `store.retain_events`). Returns the rows deleted.
pub fn prune(tx: &Tx<'_>, before_day: &str) -> rusqlite::Result<usize> {
    let counts = tx
        .prepare_cached("DELETE FROM tls_report_counts WHERE day < ?1")?
        .execute([before_day])?;
    let reports = tx
        .prepare_cached("DELETE FROM tls_reports WHERE day < ?1")?
        .execute([before_day])?;
    Ok(counts + reports)
}

fn strings(raw: &str) -> Vec<String> {
    serde_json::from_str(raw).unwrap_or_default()
}

fn to_json_text(v: &[String]) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}

const REPORT_COLUMNS: &str = "policy_domain, day, status, report_id, report, rua, done, attempts,
     next_attempt_at, last_error, created_at, sent_at";

fn report_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ReportRow> {
    Ok(ReportRow {
        policy_domain: r.get(0)?,
        day: r.get(1)?,
        status: r.get(2)?,
        report_id: r.get(3)?,
        report: r.get(4)?,
        rua: strings(&r.get::<_, String>(5)?),
        done: strings(&r.get::<_, String>(6)?),
        attempts: r.get(7)?,
        next_attempt_at: r.get(8)?,
        last_error: r.get(9)?,
        created_at: r.get(10)?,
        sent_at: r.get(11)?,
    })
}

/// Creates the row unless one exists (then nothing changes: a day is
/// decided once). Returns whether it was created.
pub fn insert_report(tx: &Tx<'_>, r: &ReportRow) -> rusqlite::Result<bool> {
    let n = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO tls_reports (policy_domain, day, status, report_id, report, rua, done,
                                               attempts, next_attempt_at, last_error, created_at, sent_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )?
        .execute(params![
            r.policy_domain,
            r.day,
            r.status,
            r.report_id,
            r.report,
            to_json_text(&r.rua),
            to_json_text(&r.done),
            r.attempts,
            r.next_attempt_at,
            r.last_error,
            r.created_at,
            r.sent_at
        ])?;
    Ok(n == 1)
}

/// Pending reports whose next attempt is due.
pub fn due_reports(conn: &Connection, now: i64) -> rusqlite::Result<Vec<ReportRow>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {REPORT_COLUMNS} FROM tls_reports
         WHERE status = 'pending' AND next_attempt_at <= ?1
         ORDER BY next_attempt_at LIMIT 100"
    ))?;
    let rows = stmt.query_map([now], report_row)?;
    rows.collect()
}

/// Takes the pending reports due by `c.due_by` (optionally of one day
/// and/or domain) and moves their next attempt to `c.lease_until`, so
/// that nobody else sends them meanwhile (one statement in the single
/// writer's transaction: nobody reads between the choice and the update).
pub fn claim(tx: &Tx<'_>, c: &ReportClaim) -> rusqlite::Result<Vec<ReportRow>> {
    let mut stmt = tx.prepare_cached(&format!(
        "UPDATE tls_reports SET next_attempt_at = ?2
         WHERE (policy_domain, day) IN (SELECT policy_domain, day FROM tls_reports
                         WHERE status = 'pending' AND next_attempt_at <= ?1
                           AND (?3 IS NULL OR day = ?3) AND (?4 IS NULL OR policy_domain = ?4)
                         ORDER BY next_attempt_at LIMIT ?5)
         RETURNING {REPORT_COLUMNS}"
    ))?;
    let rows = stmt.query_map(
        params![c.due_by, c.lease_until, c.day, c.domain, c.limit as i64],
        report_row,
    )?;
    rows.collect()
}

/// Records the result of one sending round of a pending report. Only a
/// pending row changes, so a report already settled stays as it was.
pub fn record_attempt(tx: &Tx<'_>, r: &ReportRow) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "UPDATE tls_reports SET status = ?3, done = ?4, attempts = ?5, next_attempt_at = ?6,
                                last_error = ?7, sent_at = ?8
         WHERE policy_domain = ?1 AND day = ?2 AND status = 'pending'",
    )?
    .execute(params![
        r.policy_domain,
        r.day,
        r.status,
        to_json_text(&r.done),
        r.attempts,
        r.next_attempt_at,
        r.last_error,
        r.sent_at
    ])?;
    Ok(())
}

pub fn get(
    conn: &Connection,
    policy_domain: &str,
    day: &str,
) -> rusqlite::Result<Option<ReportRow>> {
    conn.prepare_cached(&format!(
        "SELECT {REPORT_COLUMNS} FROM tls_reports WHERE policy_domain = ?1 AND day = ?2"
    ))?
    .query_row(params![policy_domain, day], report_row)
    .optional()
}

/// Every (policy domain, day) with counts, newest day first, optionally
/// only one day and/or one domain; at most `limit`.
pub fn list(
    conn: &Connection,
    day: Option<&str>,
    domain: Option<&str>,
    limit: usize,
) -> rusqlite::Result<Vec<Summary>> {
    let mut stmt = conn.prepare_cached(
        "SELECT policy_domain, day,
                SUM(CASE WHEN result_type = '' THEN count ELSE 0 END),
                SUM(CASE WHEN result_type <> '' THEN count ELSE 0 END)
         FROM tls_report_counts
         WHERE (?1 IS NULL OR day = ?1) AND (?2 IS NULL OR policy_domain = ?2)
         GROUP BY policy_domain, day
         ORDER BY day DESC, policy_domain
         LIMIT ?3",
    )?;
    let rows = stmt
        .query_map(params![day, domain, limit as i64], |r| {
            Ok(Summary {
                policy_domain: r.get(0)?,
                day: r.get(1)?,
                successful: r.get(2)?,
                failed: r.get(3)?,
                report: None,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter()
        .map(|mut s| {
            s.report = get(conn, &s.policy_domain, &s.day)?;
            Ok(s)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let mut c = Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&mut c).unwrap();
        c
    }

    fn key(day: &str, domain: &str, result: &str) -> CountKey {
        CountKey {
            day: day.into(),
            policy_domain: domain.into(),
            policy_type: "no-policy-found".into(),
            policy_strings: "[]".into(),
            mx_host: "[]".into(),
            result_type: result.into(),
            sending_ip: String::new(),
            receiving_mx: if result.is_empty() { "" } else { "mx.test" }.into(),
            receiving_ip: String::new(),
        }
    }

    fn write(c: &mut Connection, f: impl FnOnce(&Tx<'_>) -> rusqlite::Result<()>) {
        let t = c.transaction().unwrap();
        f(&Tx::new(&t, &[])).unwrap();
        t.commit().unwrap();
    }

    #[test]
    fn counts_add_up_and_only_finished_days_are_unreported() {
        let mut c = db();
        let batch = vec![
            (key("2026-11-23", "a.test", ""), 2),
            (key("2026-11-23", "a.test", "starttls-not-supported"), 1),
            (key("2026-11-24", "a.test", ""), 5),
        ];
        write(&mut c, |tx| add_counts(tx, &batch));
        write(&mut c, |tx| add_counts(tx, &batch[..1]));
        let rows = counts(&c, "a.test", "2026-11-23").unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows.iter()
                .find(|(k, _)| k.result_type.is_empty())
                .unwrap()
                .1,
            4
        );
        assert_eq!(
            unreported_days(&c, "2026-11-24").unwrap(),
            [("a.test".to_string(), "2026-11-23".to_string())]
        );
        let l = list(&c, None, Some("a.test"), 10).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!((l[1].successful, l[1].failed), (4, 1));
        assert_eq!(l[0].to_json()["status"], "counting");
        let mut deleted = 0;
        write(&mut c, |tx| {
            deleted = prune(tx, "2026-11-24")?;
            Ok(())
        });
        assert_eq!(deleted, 2);
        assert_eq!(list(&c, None, None, 10).unwrap().len(), 1);
    }

    #[test]
    fn a_day_is_decided_once_and_a_settled_report_does_not_change() {
        let mut c = db();
        let mut r = ReportRow {
            policy_domain: "a.test".into(),
            day: "2026-11-23".into(),
            status: "pending".into(),
            report_id: "id".into(),
            report: Some("{}".into()),
            rua: vec!["mailto:a@b.test".into()],
            done: vec![],
            attempts: 0,
            next_attempt_at: Some(0),
            last_error: None,
            created_at: 0,
            sent_at: None,
        };
        let mut created = false;
        write(&mut c, |tx| {
            created = insert_report(tx, &r)?;
            Ok(())
        });
        assert!(created);
        write(&mut c, |tx| {
            created = insert_report(tx, &r)?;
            Ok(())
        });
        assert!(!created, "a second row for the same day");
        assert_eq!(due_reports(&c, 1).unwrap().len(), 1);
        r.status = "sent".into();
        r.done = r.rua.clone();
        write(&mut c, |tx| record_attempt(tx, &r));
        let mut again = r.clone();
        again.status = "failed".into();
        write(&mut c, |tx| record_attempt(tx, &again));
        let got = get(&c, "a.test", "2026-11-23").unwrap().unwrap();
        assert_eq!(got.status, "sent");
        assert_eq!(got.done, ["mailto:a@b.test"]);
        assert!(due_reports(&c, 1).unwrap().is_empty());
    }
}
