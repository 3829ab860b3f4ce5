//! Hourly per-domain rollups: what `stats` and `/v1/stats` read, so a
//! window of 30 days costs a few hundred rows however many recipients and
//! events the store holds.
//!
//! A rollup row is keyed by the hour its emails were *accepted* and their
//! sending domain, and counts recipients: how many were sent, delivered,
//! delayed at least once, bounced, failed, complained, opened, clicked. So
//! a late open of last week's newsletter adds to last week's row, and the
//! rates (`opened / delivered`) compare like with like.
//!
//! Unique per recipient: `recipients.counted` holds a bit per counter; an
//! event adds 1 to a counter only when it sets that recipient's bit. The
//! first open (any) is the one that sets `opened_at`; `opened_human` counts
//! recipients with at least one open not flagged as machine (a recipient
//! whose image proxy prefetched first and who then opened for real counts
//! once in `opened`, once in `opened_human` and once in `opened_machine`).
//! Clicks the same. Counters and bits change in the event's transaction
//! (`events::insert`), so rollups never disagree with the events.
//!
//! Windows: whole hours inside `[since, until)` come from rollups; the
//! partial hours at either edge are counted from the recipients of the
//! emails accepted in them (their `counted` bits), at most an hour of
//! emails each. The answer is exact for any window.

use super::sql::Where;
use super::stats::Stats;
use super::Tx;
use crate::events::{EventType, NewEvent};
use rusqlite::{params, Connection, OptionalExtension};

pub use crate::store::queries::{hour_of, HOUR_MS};

/// `recipients.counted` bits, one per rollup counter.
pub mod bit {
    pub const SENT: i64 = 1;
    pub const DELIVERED: i64 = 2;
    pub const DELAYED: i64 = 4;
    pub const BOUNCED: i64 = 8;
    pub const FAILED: i64 = 16;
    /// `email.complained` (feedback loops).
    pub const COMPLAINED: i64 = 32;
    pub const OPENED: i64 = 64;
    pub const OPENED_HUMAN: i64 = 128;
    pub const OPENED_MACHINE: i64 = 256;
    pub const CLICKED: i64 = 512;
    pub const CLICKED_HUMAN: i64 = 1024;
    pub const CLICKED_MACHINE: i64 = 2048;
    pub const SUPPRESSED: i64 = 4096;
    pub const UNSUBSCRIBED: i64 = 8192;
}

/// The rollup columns and their bits, in the order `Stats` is read.
pub(crate) const COUNTERS: [(&str, i64); 14] = [
    ("sent", bit::SENT),
    ("delivered", bit::DELIVERED),
    ("delayed", bit::DELAYED),
    ("bounced", bit::BOUNCED),
    ("failed", bit::FAILED),
    ("complained", bit::COMPLAINED),
    ("opened", bit::OPENED),
    ("opened_human", bit::OPENED_HUMAN),
    ("opened_machine", bit::OPENED_MACHINE),
    ("clicked", bit::CLICKED),
    ("clicked_human", bit::CLICKED_HUMAN),
    ("clicked_machine", bit::CLICKED_MACHINE),
    ("suppressed", bit::SUPPRESSED),
    ("unsubscribed", bit::UNSUBSCRIBED),
];

/// The counters an event of this kind puts its recipient in.
pub fn bits_for(ev: &NewEvent) -> i64 {
    let machine = ev.machine == Some(true);
    match ev.kind {
        EventType::Sent => bit::SENT,
        EventType::Delivered => bit::DELIVERED,
        EventType::DeliveryDelayed => bit::DELAYED,
        EventType::Bounced => bit::BOUNCED,
        EventType::Failed => bit::FAILED,
        EventType::Opened if machine => bit::OPENED | bit::OPENED_MACHINE,
        EventType::Opened => bit::OPENED | bit::OPENED_HUMAN,
        EventType::Clicked if machine => bit::CLICKED | bit::CLICKED_MACHINE,
        EventType::Clicked => bit::CLICKED | bit::CLICKED_HUMAN,
        EventType::Complained => bit::COMPLAINED,
        EventType::Suppressed => bit::SUPPRESSED,
        EventType::Unsubscribed => bit::UNSUBSCRIBED,
        // About a domain, not a recipient: counted nowhere.
        EventType::DomainUpdated => 0,
    }
}

/// Called by `events::insert` for an event about one recipient, in its
/// transaction: sets the recipient's new bits (and `opened_at` /
/// `clicked_at` on the first open / click) and adds them to the rollup of
/// its email's hour. Nothing for a recipient the store does not know.
pub fn record(tx: &Tx<'_>, email_id: &str, idx: u32, ev: &NewEvent) -> rusqlite::Result<()> {
    let counted: Option<i64> = tx
        .prepare_cached("SELECT counted FROM recipients WHERE email_id = ?1 AND idx = ?2")?
        .query_row(params![email_id, idx], |r| r.get(0))
        .optional()?;
    let Some(counted) = counted else {
        return Ok(());
    };
    let new = bits_for(ev) & !counted;
    if new == 0 {
        return Ok(());
    }
    let opened_at = (new & bit::OPENED != 0).then_some(ev.at);
    let clicked_at = (new & bit::CLICKED != 0).then_some(ev.at);
    tx.prepare_cached(
        "UPDATE recipients SET counted = counted | ?3,
                opened_at = COALESCE(opened_at, ?4), clicked_at = COALESCE(clicked_at, ?5)
         WHERE email_id = ?1 AND idx = ?2",
    )?
    .execute(params![email_id, idx, new, opened_at, clicked_at])?;
    let email: Option<(i64, String)> = tx
        .prepare_cached("SELECT created_at, lower(domain) FROM emails WHERE id = ?1")?
        .query_row(params![email_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((created_at, domain)) = email else {
        return Ok(());
    };
    let v = |b: i64| i64::from(new & b != 0);
    tx.prepare_cached(
        "INSERT INTO rollups (hour, domain, sent, delivered, delayed, bounced, failed, complained,
                              opened, opened_human, opened_machine, clicked, clicked_human, clicked_machine,
                              suppressed, unsubscribed)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)
         ON CONFLICT (hour, domain) DO UPDATE SET
            sent = sent + excluded.sent, delivered = delivered + excluded.delivered,
            delayed = delayed + excluded.delayed, bounced = bounced + excluded.bounced,
            failed = failed + excluded.failed, complained = complained + excluded.complained,
            opened = opened + excluded.opened, opened_human = opened_human + excluded.opened_human,
            opened_machine = opened_machine + excluded.opened_machine,
            clicked = clicked + excluded.clicked, clicked_human = clicked_human + excluded.clicked_human,
            clicked_machine = clicked_machine + excluded.clicked_machine,
            suppressed = suppressed + excluded.suppressed,
            unsubscribed = unsubscribed + excluded.unsubscribed",
    )?
    .execute(params![
        hour_of(created_at),
        domain,
        v(bit::SENT),
        v(bit::DELIVERED),
        v(bit::DELAYED),
        v(bit::BOUNCED),
        v(bit::FAILED),
        v(bit::COMPLAINED),
        v(bit::OPENED),
        v(bit::OPENED_HUMAN),
        v(bit::OPENED_MACHINE),
        v(bit::CLICKED),
        v(bit::CLICKED_HUMAN),
        v(bit::CLICKED_MACHINE),
        v(bit::SUPPRESSED),
        v(bit::UNSUBSCRIBED),
    ])?;
    Ok(())
}

/// How a window splits: whole hours read from rollups, and the partial
/// hours at its edges counted from recipients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// `[from, to)` in whole hours (`None`: unbounded on that side).
    pub hours: Option<(Option<i64>, Option<i64>)>,
    /// Accepted-at ranges `[a, b)` counted from recipients.
    pub edges: Vec<(i64, i64)>,
}

pub fn plan(since: Option<i64>, until: Option<i64>) -> Plan {
    let ceil = |t: i64| hour_of(t + HOUR_MS - 1);
    let from = since.map(ceil);
    let to = until.map(hour_of);
    match (since, until, from, to) {
        (Some(s), Some(u), Some(f), Some(t)) if f >= t => Plan {
            // Within one hour (or across one boundary with no whole hour).
            hours: None,
            edges: if f == t {
                [(s, f), (t, u)]
                    .into_iter()
                    .filter(|(a, b)| a < b)
                    .collect()
            } else if s < u {
                vec![(s, u)]
            } else {
                vec![]
            },
        },
        _ => {
            let mut edges = Vec::new();
            if let (Some(s), Some(f)) = (since, from) {
                if s < f {
                    edges.push((s, f));
                }
            }
            if let (Some(u), Some(t)) = (until, to) {
                if t < u {
                    edges.push((t, u));
                }
            }
            Plan {
                hours: Some((from, to)),
                edges,
            }
        }
    }
}

/// The rollup query for whole hours `[from, to)`, optionally one domain.
pub fn hours_sql(domain: Option<&str>, from: Option<i64>, to: Option<i64>) -> Where {
    let mut w = Where::default();
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
        .map(|(c, _)| format!("COALESCE(SUM({c}), 0)"))
        .collect();
    w.wrap(&format!("SELECT {} FROM rollups", sums.join(", ")), "")
}

/// The recipients of the emails accepted in `[a, b)`, counted by their bits.
pub fn edge_sql(domain: Option<&str>, a: i64, b: i64) -> Where {
    let mut w = Where::default();
    w.and("e.created_at >= ?", a);
    w.and("e.created_at < ?", b);
    if let Some(d) = domain {
        w.and("e.domain = ? COLLATE NOCASE", d.to_string());
    }
    let sums: Vec<String> = COUNTERS
        .iter()
        .map(|(_, b)| format!("COALESCE(SUM((r.counted & {b}) != 0), 0)"))
        .collect();
    w.wrap(
        &format!(
            "SELECT {} FROM emails e JOIN recipients r ON r.email_id = e.id",
            sums.join(", ")
        ),
        "",
    )
}

fn add(conn: &Connection, q: &Where, into: &mut Stats) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(q.sql())?;
    let row: [i64; COUNTERS.len()] = stmt.query_row(q.params(), |r| {
        let mut out = [0i64; COUNTERS.len()];
        for (i, v) in out.iter_mut().enumerate() {
            *v = r.get(i)?;
        }
        Ok(out)
    })?;
    into.sent += row[0];
    into.delivered += row[1];
    into.delayed += row[2];
    into.bounced += row[3];
    into.failed += row[4];
    into.complained += row[5];
    into.opened += row[6];
    into.opened_human += row[7];
    into.opened_machine += row[8];
    into.clicked += row[9];
    into.clicked_human += row[10];
    into.clicked_machine += row[11];
    into.suppressed += row[12];
    into.unsubscribed += row[13];
    Ok(())
}

/// Every query a window needs, in order (the test checks their plans).
pub fn window_queries(domain: Option<&str>, since: Option<i64>, until: Option<i64>) -> Vec<Where> {
    let p = plan(since, until);
    let mut out = Vec::new();
    if let Some((from, to)) = p.hours {
        out.push(hours_sql(domain, from, to));
    }
    for (a, b) in p.edges {
        out.push(edge_sql(domain, a, b));
    }
    out
}

/// Stats over the emails accepted in `[since, until)`.
pub fn window(
    conn: &Connection,
    domain: Option<&str>,
    since: Option<i64>,
    until: Option<i64>,
) -> rusqlite::Result<Stats> {
    let mut st = Stats::default();
    for q in window_queries(domain, since, until) {
        add(conn, &q, &mut st)?;
    }
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = HOUR_MS;

    #[test]
    fn windows_split_into_whole_hours_and_edges() {
        assert_eq!(
            plan(None, None),
            Plan {
                hours: Some((None, None)),
                edges: vec![]
            }
        );
        assert_eq!(
            plan(Some(10 * H), Some(20 * H)),
            Plan {
                hours: Some((Some(10 * H), Some(20 * H))),
                edges: vec![]
            }
        );
        assert_eq!(
            plan(Some(10 * H + 5), Some(20 * H + 7)),
            Plan {
                hours: Some((Some(11 * H), Some(20 * H))),
                edges: vec![(10 * H + 5, 11 * H), (20 * H, 20 * H + 7)]
            }
        );
        assert_eq!(
            plan(Some(10 * H + 5), None),
            Plan {
                hours: Some((Some(11 * H), None)),
                edges: vec![(10 * H + 5, 11 * H)]
            }
        );
        // Inside one hour: only the edge.
        assert_eq!(
            plan(Some(10 * H + 5), Some(10 * H + 9)),
            Plan {
                hours: None,
                edges: vec![(10 * H + 5, 10 * H + 9)]
            }
        );
        // Across one boundary with no whole hour between.
        assert_eq!(
            plan(Some(10 * H + 5), Some(11 * H + 9)),
            Plan {
                hours: None,
                edges: vec![(10 * H + 5, 11 * H), (11 * H, 11 * H + 9)]
            }
        );
        // Empty and reversed windows count nothing.
        assert_eq!(plan(Some(10 * H + 5), Some(10 * H + 5)).edges, vec![]);
        assert_eq!(plan(Some(10 * H + 9), Some(10 * H + 5)).edges, vec![]);
        assert_eq!(plan(Some(12 * H), Some(10 * H)).hours, None);
    }

    #[test]
    fn each_event_kind_sets_its_counters() {
        let mut ev = NewEvent::new("e", EventType::Opened, 0);
        assert_eq!(bits_for(&ev), bit::OPENED | bit::OPENED_HUMAN);
        ev.machine = Some(true);
        assert_eq!(bits_for(&ev), bit::OPENED | bit::OPENED_MACHINE);
        ev.kind = EventType::Clicked;
        assert_eq!(bits_for(&ev), bit::CLICKED | bit::CLICKED_MACHINE);
        ev.machine = Some(false);
        assert_eq!(bits_for(&ev), bit::CLICKED | bit::CLICKED_HUMAN);
        let all: i64 = COUNTERS.iter().map(|(_, b)| b).sum();
        assert_eq!(all, 16383, "one distinct bit per counter");
    }
}
