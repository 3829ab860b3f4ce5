//! Events: one row per thing that happened to a recipient's copy.

use super::sql::{event_from_row, Where, EVENT_COLUMNS};
use super::Tx;
use crate::events::{EventType, NewEvent, StoredEvent};
use crate::store::tracking::{ClickJudge, Recorded, TrackingFacts};
use rusqlite::{params, Connection, OptionalExtension};

/// Stores an event (and its webhook outbox rows). Fills in the recipient
/// address from the queue when only its index is known, sets the
/// recipient's first `opened_at` / `clicked_at`, and counts it in the
/// hourly rollups (see `rollups`), all in the caller's transaction.
pub fn insert(tx: &Tx<'_>, ev: &NewEvent) -> rusqlite::Result<i64> {
    // Copied only when the address has to be filled in.
    let mut ev = std::borrow::Cow::Borrowed(ev);
    if let (None, Some(idx)) = (&ev.recipient, ev.rcpt_idx) {
        let address: Option<String> = tx
            .prepare_cached("SELECT address FROM recipients WHERE email_id = ?1 AND idx = ?2")?
            .query_row(params![ev.email_id, idx], |r| r.get(0))
            .optional()?;
        ev.to_mut().recipient = address;
    }
    let detail = if tx.node.is_empty() {
        ev.detail.clone()
    } else {
        crate::store::detail_with_node(ev.detail.as_ref(), tx.node)
    }
    .map(|d| d.to_string());
    tx.prepare_cached(
        "INSERT INTO events (email_id, rcpt_idx, recipient, type, at, ip, user_agent, referer, link, machine, machine_reason, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?
    .execute(params![
        ev.email_id,
        ev.rcpt_idx,
        ev.recipient,
        ev.kind.as_str(),
        ev.at,
        ev.ip,
        ev.user_agent,
        ev.referer,
        ev.link,
        ev.machine,
        ev.machine_reason,
        detail,
    ])?;
    let id = tx.last_insert_rowid();
    if let Some(idx) = ev.rcpt_idx {
        super::rollups::record(tx, &ev.email_id, idx, &ev)?;
    }
    if !tx.hooks.is_empty() {
        let summary = super::emails::summary(tx, &ev.email_id)?;
        super::webhooks::enqueue(tx, id, &ev, summary.as_ref())?;
    }
    Ok(id)
}

pub use crate::store::queries::EventFilter;

impl EventFilter {
    /// The statement for these filters: only the filters given appear in
    /// it, so SQLite can pick an index for each combination. Which index is
    /// chosen here rather than left to the planner, which has no
    /// statistics: a unary `+` keeps a column's index out of the race.
    /// - one email: `events_email (email_id, id)`, pages by id within it;
    /// - one type: `events_type_id (type, id)`, in id order, no sort;
    /// - a window from `since`, first page: ids start at the smallest id
    ///   of an event at or after `since` (read from the covering index
    ///   `events_at`), so the walk in id order starts where the window
    ///   does instead of at the store's first event. Exact: no event of
    ///   the window has a smaller id. Later pages start from `after`.
    /// - `until` alone: the id order walk finds the oldest events first
    ///   and stops at the page size.
    pub fn query(&self) -> Where {
        let mut w = Where::default();
        let by_email = self.email_id.is_some();
        if let Some(id) = &self.email_id {
            w.and("email_id = ?", id.clone());
        }
        if let Some(kind) = &self.kind {
            w.and(
                if by_email { "+type = ?" } else { "type = ?" },
                kind.clone(),
            );
        }
        if let Some(t) = self.since {
            w.and("+at >= ?", t);
            if !by_email && self.after_id.is_none() {
                w.and(
                    "id >= (SELECT min(id) FROM events INDEXED BY events_at WHERE at >= ?)",
                    t,
                );
            }
        }
        if let Some(t) = self.until {
            w.and("+at < ?", t);
        }
        if let Some(id) = self.after_id {
            w.and("id > ?", id);
        }
        let tail = if self.limit == 0 {
            "ORDER BY id"
        } else {
            w.bind(self.limit as i64);
            "ORDER BY id LIMIT ?"
        };
        w.wrap(&format!("SELECT {} FROM events", *EVENT_COLUMNS), tail)
    }
}

/// Events in id order (oldest first). For a page: `limit` bounds the Vec.
pub fn list(conn: &Connection, f: &EventFilter) -> rusqlite::Result<Vec<StoredEvent>> {
    let mut out = Vec::new();
    each(conn, f, |e| {
        out.push(e);
        Ok::<_, rusqlite::Error>(())
    })?;
    Ok(out)
}

/// Events in id order, handed to `on` one at a time as SQLite reads them,
/// so a million events cost one row of memory. Stops at `on`'s first error.
pub fn each<E: From<rusqlite::Error>>(
    conn: &Connection,
    f: &EventFilter,
    mut on: impl FnMut(StoredEvent) -> Result<(), E>,
) -> Result<(), E> {
    let q = f.query();
    let mut stmt = conn.prepare_cached(q.sql())?;
    let mut rows = stmt.query(q.params())?;
    while let Some(row) = rows.next()? {
        on(event_from_row(row)?)?;
    }
    Ok(())
}

/// Whether any event names this email id (events outlive pruned emails).
pub fn exists_for_email(conn: &Connection, email_id: &str) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM events WHERE email_id = ?1)")?
        .query_row(params![email_id], |r| r.get(0))
}

/// Removes events older than `before`, at most `batch` rows, so pruning
/// never holds the writer for long. Returns how many went.
pub fn prune(conn: &Connection, before: i64, batch: usize) -> rusqlite::Result<usize> {
    conn.execute(
        "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE at < ?1 ORDER BY at LIMIT ?2)",
        params![before, batch as i64],
    )
}

/// Stores an open or click from the tracking listener (through
/// [`insert`], like every event), with the recipient's address filled in.
/// `judge` sees the event and the store's facts about its recipient (its
/// delivery times, its other clicks), which the listener never reads, and
/// may return a machine reason for it; the rule is the caller's (the store
/// does not know what makes a click a scanner's). Events already flagged
/// are not judged again.
pub fn insert_tracking(
    tx: &Tx<'_>,
    ev: &NewEvent,
    recipients: &mut super::tracking::RecipientCache,
    clicks: &mut super::tracking::BatchClicks,
    judge: &dyn ClickJudge,
) -> rusqlite::Result<Recorded> {
    let Some(idx) = ev.rcpt_idx else {
        return insert(tx, ev).map(|id| recorded(id, ev));
    };
    let rcpt = match &ev.recipient {
        None => recipients.get(tx, &ev.email_id, idx)?,
        Some(_) => None,
    };
    let mut ev = std::borrow::Cow::Borrowed(ev);
    if ev.machine != Some(true) {
        let window = judge.burst_window_ms();
        let nearby = if ev.kind != EventType::Clicked {
            Vec::new()
        } else if let Some(c) =
            clicks.other_link(&ev.email_id, idx, ev.link.as_deref(), ev.at, window)
        {
            vec![c]
        } else {
            super::tracking::nearby_clicks(
                tx,
                &ev.email_id,
                idx,
                ev.link.as_deref(),
                ev.at,
                window,
            )?
        };
        let facts = TrackingFacts {
            recipient: rcpt,
            nearby_clicks: &nearby,
        };
        if let Some(reason) = judge.judge(&ev, &facts) {
            let ev = ev.to_mut();
            ev.machine = Some(true);
            ev.machine_reason = Some(reason.to_string());
        }
    }
    if let Some(r) = rcpt {
        ev.to_mut().recipient = Some(r.address.clone());
    }
    if ev.kind == EventType::Clicked {
        clicks.push(&ev.email_id, idx, ev.at, ev.link.as_deref());
    }
    insert(tx, &ev).map(|id| recorded(id, &ev))
}

fn recorded(event_id: i64, ev: &NewEvent) -> Recorded {
    Recorded {
        event_id,
        recipient: ev.recipient.clone(),
        machine: ev.machine == Some(true),
        machine_reason: ev.machine_reason.clone(),
    }
}
