//! The suppression list: addresses that are accepted but never delivered
//! to, for every sending domain or for one.
//!
//! Addresses and domains are stored lowercased, so a lookup is one primary
//! key probe per scope whatever case a client or a remote MTA used. The
//! scope of "every domain" is stored as '' (not NULL) so that the primary
//! key keeps one row per (address, scope).

use rusqlite::{params, Connection, OptionalExtension};

pub use crate::store::feedback::{
    check_address, check_domain, check_reason, is_bad_address, scope, Reason, Suppression,
};

/// Adds `s` unless the address is already suppressed in that scope (the
/// first reason, and the event that caused it, are kept). Returns whether
/// a row was added.
pub fn add(conn: &Connection, s: &Suppression) -> rusqlite::Result<bool> {
    let n = conn
        .prepare_cached(
            "INSERT INTO suppressions (address, scope, reason, event_id, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (address, scope) DO NOTHING",
        )?
        .execute(params![
            s.address.to_lowercase(),
            scope(s.domain.as_deref()),
            s.reason,
            s.event_id,
            s.created_at,
            s.expires_at,
        ])?;
    Ok(n == 1)
}

/// Removes the address from one scope (None: the every-domain entry).
/// Returns whether there was one.
pub fn remove(conn: &Connection, address: &str, domain: Option<&str>) -> rusqlite::Result<bool> {
    let n = conn.execute(
        "DELETE FROM suppressions WHERE address = ?1 AND scope = ?2",
        params![address.to_lowercase(), scope(domain)],
    )?;
    Ok(n == 1)
}

/// The reason and the time `address` was suppressed for mail from
/// `sending_domain` (an every-domain entry, or one for that domain), if an
/// entry applies that has not expired at `now`.
const LOOKUP: &str = "SELECT reason, created_at FROM suppressions
    WHERE address = ?1 AND scope IN ('', ?2) AND (expires_at IS NULL OR expires_at > ?3)";

pub fn lookup(
    conn: &Connection,
    address: &str,
    sending_domain: &str,
    now: i64,
) -> rusqlite::Result<Option<(String, i64)>> {
    // At most two rows (the every-domain entry and this domain's); the
    // older is picked here, not by ORDER BY ... LIMIT 1: with those, the
    // planner marks the statement as one a new `now` may plan differently,
    // and rusqlite's statement cache, clearing the bindings of each
    // statement it takes back, made SQLite parse and plan it again on every
    // claim (sqlite3Reprepare, ~10 µs a message in bench/relay.sh).
    let mut oldest: Option<(String, i64)> = None;
    let mut stmt = conn.prepare_cached(LOOKUP)?;
    let rows = stmt.query_map(
        params![address.to_lowercase(), sending_domain.to_lowercase(), now],
        |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
    )?;
    for row in rows {
        let row = row?;
        if oldest.as_ref().is_none_or(|o| row.1 < o.1) {
            oldest = Some(row);
        }
    }
    Ok(oldest)
}

/// The address of a recipient and its email's sending domain (both
/// lowercased), to scope a suppression the recipient caused.
pub fn recipient_scope(
    conn: &Connection,
    email_id: &str,
    idx: u32,
) -> rusqlite::Result<Option<(String, String)>> {
    conn.prepare_cached(
        "SELECT lower(r.address), lower(e.domain) FROM recipients r JOIN emails e ON e.id = r.email_id
         WHERE r.email_id = ?1 AND r.idx = ?2",
    )?
    .query_row(params![email_id, idx], |r| Ok((r.get(0)?, r.get(1)?)))
    .optional()
}

/// Calls `on` for each entry (only those scoped to `domain` and the
/// every-domain ones, when given), in address order, one at a time, so a
/// list of any length prints in constant memory.
pub fn each<E: From<rusqlite::Error>>(
    conn: &Connection,
    domain: Option<&str>,
    after: Option<&(String, String)>,
    limit: usize,
    mut on: impl FnMut(Suppression) -> Result<(), E>,
) -> Result<(), E> {
    let limit = if limit == 0 { i64::MAX } else { limit as i64 };
    let (after_addr, after_scope) = after.cloned().unwrap_or_default();
    let mut stmt = conn.prepare(
        "SELECT address, scope, reason, event_id, created_at, expires_at FROM suppressions
         WHERE (?1 IS NULL OR scope IN ('', ?1)) AND (address, scope) > (?2, ?3)
         ORDER BY address, scope LIMIT ?4",
    )?;
    let mut rows = stmt.query(params![
        domain.map(str::to_lowercase),
        after_addr,
        after_scope,
        limit
    ])?;
    while let Some(r) = rows.next()? {
        let scope: String = r.get(1)?;
        on(Suppression {
            address: r.get(0)?,
            domain: (!scope.is_empty()).then_some(scope),
            reason: r.get(2)?,
            event_id: r.get(3)?,
            created_at: r.get(4)?,
            expires_at: r.get(5)?,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::store::sqlite::schema::migrate(&mut conn).unwrap();
        conn
    }

    #[test]
    fn lookup_is_planned_once_and_finds_the_oldest_entry() {
        let conn = db();
        let mut older = entry("a@example.net", Some("example.com"), Reason::Complaint);
        older.created_at = 50;
        for s in [entry("a@example.net", None, Reason::HardBounce), older] {
            add(&conn, &s).unwrap();
        }
        for now in 1..6 {
            let found = lookup(&conn, "A@example.net", "Example.com", now).unwrap();
            assert_eq!(found, Some(("complaint".into(), 50)));
            assert_eq!(
                lookup(&conn, "b@example.net", "example.com", now).unwrap(),
                None
            );
        }
        let replanned = conn
            .prepare_cached(LOOKUP)
            .unwrap()
            .get_status(rusqlite::StatementStatus::RePrepare);
        assert_eq!(replanned, 0, "the cached statement was parsed again");
    }

    fn entry(address: &str, domain: Option<&str>, reason: Reason) -> Suppression {
        Suppression {
            address: address.into(),
            domain: domain.map(Into::into),
            reason: reason.as_str().into(),
            event_id: None,
            created_at: 100,
            expires_at: None,
        }
    }

    fn all(conn: &Connection, domain: Option<&str>) -> Vec<Suppression> {
        let mut v = Vec::new();
        each(conn, domain, None, 0, |s| {
            v.push(s);
            Ok::<_, rusqlite::Error>(())
        })
        .unwrap();
        v
    }

    #[test]
    fn add_is_idempotent_and_case_insensitive() {
        let conn = db();
        assert!(add(&conn, &entry("Bob@Example.NET", None, Reason::Manual)).unwrap());
        assert!(!add(&conn, &entry("bob@example.net", None, Reason::Complaint)).unwrap());
        let rows = all(&conn, None);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].address, "bob@example.net");
        assert_eq!(rows[0].reason, "manual");
        assert_eq!(
            lookup(&conn, "BOB@example.net", "example.com", 200).unwrap(),
            Some(("manual".into(), 100))
        );
        assert!(remove(&conn, "bob@EXAMPLE.net", None).unwrap());
        assert!(!remove(&conn, "bob@example.net", None).unwrap());
        assert_eq!(
            lookup(&conn, "bob@example.net", "example.com", 200).unwrap(),
            None
        );
    }

    #[test]
    fn scope_and_expiry_are_honoured() {
        let conn = db();
        add(
            &conn,
            &entry("a@x.test", Some("Example.com"), Reason::Unsubscribe),
        )
        .unwrap();
        assert!(lookup(&conn, "a@x.test", "example.com", 200)
            .unwrap()
            .is_some());
        assert!(lookup(&conn, "a@x.test", "example.org", 200)
            .unwrap()
            .is_none());
        let mut e = entry("b@x.test", None, Reason::Manual);
        e.expires_at = Some(150);
        add(&conn, &e).unwrap();
        assert!(lookup(&conn, "b@x.test", "example.org", 149)
            .unwrap()
            .is_some());
        assert!(lookup(&conn, "b@x.test", "example.org", 150)
            .unwrap()
            .is_none());
        // A domain filter lists that domain's entries and the global ones.
        assert_eq!(all(&conn, Some("example.org")).len(), 1);
        assert_eq!(all(&conn, Some("example.com")).len(), 2);
        assert_eq!(all(&conn, None).len(), 2);
    }
}
