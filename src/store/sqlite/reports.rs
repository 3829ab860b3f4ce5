//! Reports received by the return-path MX (src/inbound), kept raw until the
//! feedback processor has read them, and for `retain_events` after that
//! when they name an email.

use rusqlite::{params, Connection};

pub use crate::store::feedback::{NewReport, Pending, ReportInfo};

/// Stores `r` unprocessed; returns its id. Call through a
/// `Durability::Full` write: the sender hears 250 only after this commits.
pub fn insert(conn: &Connection, r: &NewReport) -> rusqlite::Result<i64> {
    let rcpt = serde_json::to_string(&r.rcpt_to).unwrap_or_else(|_| "[]".into());
    conn.prepare_cached(
        "INSERT INTO inbound_reports (received_at, peer_ip, helo, mail_from, rcpt_to, size, raw)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        r.received_at,
        r.peer_ip,
        r.helo,
        r.mail_from,
        rcpt,
        r.raw.len() as i64,
        r.raw
    ])?;
    Ok(conn.last_insert_rowid())
}

/// Up to `limit` unprocessed reports with an id above `after`, oldest
/// first (ids grow with arrival). The partial index on pending rows keeps
/// this cheap however many processed ones are kept.
pub fn pending(conn: &Connection, after: i64, limit: usize) -> rusqlite::Result<Vec<Pending>> {
    conn.prepare_cached(
        "SELECT id, received_at, mail_from, rcpt_to, raw FROM inbound_reports
         WHERE processed_at IS NULL AND id > ?1 ORDER BY id LIMIT ?2",
    )?
    .query_map(params![after, limit as i64], |r| {
        let rcpt: String = r.get(3)?;
        Ok(Pending {
            id: r.get(0)?,
            received_at: r.get(1)?,
            mail_from: r.get(2)?,
            rcpt_to: serde_json::from_str(&rcpt).unwrap_or_default(),
            raw: r.get(4)?,
        })
    })?
    .collect()
}

/// Takes a pending report for processing, in the transaction that will
/// hold its effects: returns false when it is no longer pending (another
/// pass or node took it), and the caller then changes nothing.
pub fn claim(conn: &Connection, id: i64, at: i64) -> rusqlite::Result<bool> {
    let n = conn
        .prepare_cached(
            "UPDATE inbound_reports SET processed_at = ?2 WHERE id = ?1 AND processed_at IS NULL",
        )?
        .execute(params![id, at])?;
    Ok(n == 1)
}

/// What a claimed report was (`dsn`, `arf`, ...) and what was done.
pub fn set_outcome(
    conn: &Connection,
    id: i64,
    kind: &str,
    outcome: &serde_json::Value,
) -> rusqlite::Result<()> {
    conn.prepare_cached("UPDATE inbound_reports SET kind = ?2, outcome = ?3 WHERE id = ?1")?
        .execute(params![id, kind, outcome.to_string()])?;
    Ok(())
}

/// Drops a report that names no email: only a counter remembers it.
pub fn delete(conn: &Connection, id: i64) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM inbound_reports WHERE id = ?1")?
        .execute(params![id])?;
    Ok(())
}

/// Removes processed reports received before `before`, at most `batch`
/// (retention, with the events they caused). Pending ones stay: they have
/// not been read yet.
pub fn prune(conn: &Connection, before: i64, batch: usize) -> rusqlite::Result<usize> {
    conn.execute(
        "DELETE FROM inbound_reports WHERE id IN (SELECT id FROM inbound_reports
         WHERE received_at < ?1 AND processed_at IS NOT NULL ORDER BY received_at LIMIT ?2)",
        params![before, batch as i64],
    )
}

pub fn get(conn: &Connection, id: i64) -> rusqlite::Result<Option<ReportInfo>> {
    use rusqlite::OptionalExtension;
    conn.prepare_cached(
        "SELECT id, received_at, peer_ip, helo, mail_from, rcpt_to, size, processed_at, kind, outcome, raw
         FROM inbound_reports WHERE id = ?1",
    )?
    .query_row(params![id], |r| {
        let rcpt: String = r.get(5)?;
        let outcome: Option<String> = r.get(9)?;
        Ok(ReportInfo {
            id: r.get(0)?,
            received_at: r.get(1)?,
            peer_ip: r.get(2)?,
            helo: r.get(3)?,
            mail_from: r.get(4)?,
            rcpt_to: serde_json::from_str(&rcpt).unwrap_or_default(),
            size: r.get(6)?,
            processed_at: r.get(7)?,
            kind: r.get(8)?,
            outcome: outcome.and_then(|o| serde_json::from_str(&o).ok()),
            raw: r.get(10)?,
        })
    })
    .optional()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::store::sqlite::schema::migrate(&mut conn).unwrap();
        conn
    }

    fn report(at: i64) -> NewReport {
        NewReport {
            received_at: at,
            peer_ip: "127.0.0.1".into(),
            helo: "mx.example.net".into(),
            mail_from: String::new(),
            rcpt_to: vec!["bounces+x@bounces.example.com".into()],
            raw: b"Subject: x\r\n\r\nbody\r\n".to_vec(),
        }
    }

    #[test]
    fn pending_rows_are_taken_once_in_order_and_only_processed_ones_are_pruned() {
        let conn = db();
        let a = insert(&conn, &report(10)).unwrap();
        let b = insert(&conn, &report(20)).unwrap();
        let c = insert(&conn, &report(30)).unwrap();
        let ids = |after| -> Vec<i64> {
            pending(&conn, after, 10)
                .unwrap()
                .iter()
                .map(|p| p.id)
                .collect()
        };
        assert_eq!(ids(0), [a, b, c]);
        assert_eq!(ids(a), [b, c]);
        let p = &pending(&conn, 0, 1).unwrap()[0];
        assert_eq!(p.rcpt_to, ["bounces+x@bounces.example.com"]);
        assert!(claim(&conn, a, 40).unwrap());
        assert!(!claim(&conn, a, 41).unwrap(), "taken once");
        set_outcome(&conn, a, "dsn", &serde_json::json!({"x": 1})).unwrap();
        assert!(claim(&conn, b, 40).unwrap());
        delete(&conn, b).unwrap();
        assert_eq!(ids(0), [c]);
        let info = get(&conn, a).unwrap().unwrap();
        assert_eq!(info.kind.as_deref(), Some("dsn"));
        assert_eq!(info.outcome.unwrap()["x"], 1);
        assert_eq!(info.processed_at, Some(40));
        // Everything is older than 100, but only the processed row goes.
        assert_eq!(prune(&conn, 100, 10).unwrap(), 1);
        assert!(get(&conn, a).unwrap().is_none());
        assert_eq!(ids(0), [c]);
        assert!(get(&conn, 999).unwrap().is_none());
    }
}
