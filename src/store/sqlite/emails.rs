//! Accepted emails: the message as submitted, and its recipients' queue rows.

use super::spool::{self, Loc};
use super::sql::Where;
use super::Tx;
use crate::events::{EmailSummary, EventType, NewEvent};
use rusqlite::{params, Connection, OptionalExtension};

pub use crate::store::queue::NewEmail;

/// The email row, one queued row per recipient due at once, and an
/// `email.sent` event per recipient: all or nothing, in the caller's
/// transaction.
pub fn insert(tx: &Tx<'_>, e: &NewEmail) -> rusqlite::Result<()> {
    let tags = serde_json::to_string(&e.tags).unwrap_or_else(|_| "[]".into());
    let (inline, loc) = match tx.spool {
        Some(spool) => {
            let loc = spool
                .borrow_mut()
                .append(&e.body)
                .map_err(|err| failure(format!("writing the message body to the spool: {err}")))?;
            (None, Some(loc))
        }
        None => (Some(&e.body[..]), None),
    };
    tx.prepare_cached(
        "INSERT INTO emails (id, created_at, domain, mail_from, header_from, to_header, subject, message_id, tags,
                             auth_user, client_ip, smtputf8, size, received, body, body_seg, body_off)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
    )?
    .execute(params![
        e.id,
        e.created_at,
        e.domain,
        e.mail_from,
        e.header_from,
        e.to_header,
        e.subject,
        e.message_id,
        tags,
        e.auth_user,
        e.client_ip,
        e.smtputf8,
        e.body.len() as i64,
        e.received,
        inline,
        loc.map(|l| l.seg),
        loc.map(|l| l.off),
    ])?;
    for (idx, rcpt) in e.recipients.iter().enumerate() {
        tx.prepare_cached(
            "INSERT INTO recipients (email_id, idx, address, status, next_attempt_at) VALUES (?1, ?2, ?3, 'queued', ?4)",
        )?
        .execute(params![e.id, idx as i64, rcpt, e.created_at])?;
        let mut ev = NewEvent::new(e.id.clone(), EventType::Sent, e.created_at);
        ev.rcpt_idx = Some(idx as u32);
        ev.recipient = Some(rcpt.clone());
        super::events::insert(tx, &ev)?;
    }
    Ok(())
}

pub fn summary(conn: &Connection, email_id: &str) -> rusqlite::Result<Option<EmailSummary>> {
    conn.prepare_cached(
        "SELECT created_at, domain, COALESCE(header_from, mail_from), subject, tags FROM emails WHERE id = ?1",
    )?
    .query_row(params![email_id], |r| {
        let tags: String = r.get(4)?;
        Ok(EmailSummary {
            created_at: r.get(0)?,
            domain: r.get(1)?,
            from: r.get(2)?,
            subject: r.get(3)?,
            tags: serde_json::from_str(&tags).unwrap_or_default(),
        })
    })
    .optional()
}

pub use crate::store::queries::{EmailInfo, RecipientInfo};

pub fn get(conn: &Connection, email_id: &str) -> rusqlite::Result<Option<EmailInfo>> {
    let email = conn
        .prepare_cached(
            "SELECT id, created_at, domain, mail_from, header_from, to_header, subject, message_id, tags, size,
                    body IS NULL AND body_seg IS NULL FROM emails WHERE id = ?1",
        )?
        .query_row(params![email_id], |r| {
            let tags: String = r.get(8)?;
            Ok(EmailInfo {
                id: r.get(0)?,
                created_at: r.get(1)?,
                domain: r.get(2)?,
                mail_from: r.get(3)?,
                header_from: r.get(4)?,
                to_header: r.get(5)?,
                subject: r.get(6)?,
                message_id: r.get(7)?,
                tags: serde_json::from_str(&tags).unwrap_or_default(),
                size: r.get(9)?,
                pruned: r.get(10)?,
                recipients: Vec::new(),
            })
        })
        .optional()?;
    let Some(mut email) = email else {
        return Ok(None);
    };
    let mut stmt = conn.prepare_cached(
        "SELECT idx, address, status, attempts, next_attempt_at, last_response, tls, delivered_at, bounced_at,
                opened_at, clicked_at, tls_policy FROM recipients WHERE email_id = ?1 ORDER BY idx",
    )?;
    email.recipients = stmt
        .query_map(params![email_id], |r| {
            Ok(RecipientInfo {
                idx: r.get::<_, i64>(0)? as u32,
                address: r.get(1)?,
                status: r.get(2)?,
                attempts: r.get::<_, i64>(3)? as u32,
                next_attempt_at: r.get(4)?,
                last_response: r.get(5)?,
                tls: r.get(6)?,
                delivered_at: r.get(7)?,
                bounced_at: r.get(8)?,
                opened_at: r.get(9)?,
                clicked_at: r.get(10)?,
                tls_policy: r.get(11)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(Some(email))
}

/// The stored message bytes (`None` once pruned) and its trace header:
/// from the row, or from the spool beside the database the row points
/// into.
pub fn body(conn: &Connection, email_id: &str) -> rusqlite::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let row = conn
        .prepare_cached(
            "SELECT received, body, body_seg, body_off, size FROM emails
             WHERE id = ?1 AND (body IS NOT NULL OR body_seg IS NOT NULL)",
        )?
        .query_row(params![email_id], |r| {
            Ok((
                r.get::<_, Option<Vec<u8>>>(0)?.unwrap_or_default(),
                r.get::<_, Option<Vec<u8>>>(1)?,
                r.get::<_, Option<i64>>(2)?,
                r.get::<_, Option<i64>>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })
        .optional()?;
    let Some((received, inline, seg, off, size)) = row else {
        return Ok(None);
    };
    let body = match (inline, seg, off) {
        (Some(body), _, _) => body,
        (None, Some(seg), Some(off)) => read_spooled(conn, Loc { seg, off }, size)?,
        _ => return Ok(None),
    };
    Ok(Some((received, body)))
}

/// A spooled body of the database `conn` is open on.
pub fn read_spooled(conn: &Connection, loc: Loc, size: i64) -> rusqlite::Result<Vec<u8>> {
    let db = conn
        .path()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| failure("a spooled body needs a database file to find its spool".into()))?;
    spool::read(std::path::Path::new(db), loc, size)
        .map_err(|e| failure(format!("reading a message body: {e}")))
}

/// A spool failure, carried out of a job the way SQLite's are.
fn failure(msg: String) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(msg.into())
}

/// The lowest spool segment a row still points into.
pub fn oldest_segment(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("SELECT MIN(body_seg) FROM emails WHERE body_seg IS NOT NULL")?
        .query_row([], |r| r.get(0))
}

/// Drops the bodies of emails older than `before` whose recipients are all
/// done (delivered, bounced, failed), at most `batch` at a time. Links keep
/// working: the tokens carry everything a redirect needs.
pub fn prune_bodies(
    conn: &Connection,
    before: i64,
    now: i64,
    batch: usize,
) -> rusqlite::Result<usize> {
    conn.execute(
        "UPDATE emails SET body = NULL, body_seg = NULL, body_off = NULL, pruned_at = ?2
         WHERE id IN (
            SELECT e.id FROM emails e
            WHERE e.created_at < ?1 AND (e.body IS NOT NULL OR e.body_seg IS NOT NULL)
              AND NOT EXISTS (SELECT 1 FROM recipients r WHERE r.email_id = e.id
                              AND r.status IN ('queued', 'deferred', 'sending'))
            ORDER BY e.created_at LIMIT ?3)",
        params![before, now, batch as i64],
    )
}

/// The ids of the emails accepted in `[since, until)`, oldest first.
pub fn list_query(since: Option<i64>, until: Option<i64>) -> Where {
    let mut w = Where::default();
    if let Some(t) = since {
        w.and("created_at >= ?", t);
    }
    if let Some(t) = until {
        w.and("created_at < ?", t);
    }
    w.wrap("SELECT id FROM emails", "ORDER BY created_at, id")
}

/// Emails accepted in `[since, until)` with their recipients, for `export
/// emails`, handed to `on` one at a time as they are read: memory stays
/// one email's worth however many the window holds.
pub fn each<E: From<rusqlite::Error>>(
    conn: &Connection,
    since: Option<i64>,
    until: Option<i64>,
    mut on: impl FnMut(EmailInfo) -> Result<(), E>,
) -> Result<(), E> {
    let q = list_query(since, until);
    let mut stmt = conn.prepare(q.sql())?;
    let mut ids = stmt.query(q.params())?;
    while let Some(row) = ids.next()? {
        let id: String = row.get(0)?;
        if let Some(e) = get(conn, &id)? {
            on(e)?;
        }
    }
    Ok(())
}
