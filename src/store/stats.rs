//! Sending statistics, unique per recipient: a recipient who opened five
//! times counts once. Machine activity (image proxies that prefetch,
//! scanners) is counted apart from human activity.

use rusqlite::{params, Connection};
use serde_json::json;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    pub sent: i64,
    pub delivered: i64,
    pub delayed: i64,
    pub bounced: i64,
    pub failed: i64,
    pub opened: i64,
    pub opened_human: i64,
    pub clicked: i64,
    pub clicked_human: i64,
}

impl Stats {
    fn rate(n: i64, d: i64) -> f64 {
        if d == 0 {
            0.0
        } else {
            // Four decimals: enough for a percentage with two.
            ((n as f64 / d as f64) * 10_000.0).round() / 10_000.0
        }
    }

    /// Opens (any) per delivered recipient.
    pub fn open_rate(&self) -> f64 {
        Self::rate(self.opened, self.delivered)
    }

    pub fn click_rate(&self) -> f64 {
        Self::rate(self.clicked, self.delivered)
    }

    /// The contract's fields, plus the human-only rates and `failed`.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "sent": self.sent,
            "delivered": self.delivered,
            "delayed": self.delayed,
            "bounced": self.bounced,
            "failed": self.failed,
            "opened": self.opened,
            "opened_human": self.opened_human,
            "clicked": self.clicked,
            "clicked_human": self.clicked_human,
            "open_rate": self.open_rate(),
            "click_rate": self.click_rate(),
            "open_rate_human": Self::rate(self.opened_human, self.delivered),
            "click_rate_human": Self::rate(self.clicked_human, self.delivered),
        })
    }
}

/// Over the emails accepted in `[since, until)`, optionally of one sending domain.
pub fn compute(
    conn: &Connection,
    domain: Option<&str>,
    since: Option<i64>,
    until: Option<i64>,
) -> rusqlite::Result<Stats> {
    conn.query_row(
        "SELECT
            COUNT(*),
            COALESCE(SUM(r.status = 'delivered'), 0),
            COALESCE(SUM(EXISTS (SELECT 1 FROM events v WHERE v.email_id = r.email_id AND v.rcpt_idx = r.idx
                                 AND v.type = 'email.delivery_delayed')), 0),
            COALESCE(SUM(r.status = 'bounced'), 0),
            COALESCE(SUM(r.status = 'failed'), 0),
            COALESCE(SUM(EXISTS (SELECT 1 FROM events v WHERE v.email_id = r.email_id AND v.rcpt_idx = r.idx
                                 AND v.type = 'email.opened')), 0),
            COALESCE(SUM(EXISTS (SELECT 1 FROM events v WHERE v.email_id = r.email_id AND v.rcpt_idx = r.idx
                                 AND v.type = 'email.opened' AND NOT COALESCE(v.machine, 0))), 0),
            COALESCE(SUM(EXISTS (SELECT 1 FROM events v WHERE v.email_id = r.email_id AND v.rcpt_idx = r.idx
                                 AND v.type = 'email.clicked')), 0),
            COALESCE(SUM(EXISTS (SELECT 1 FROM events v WHERE v.email_id = r.email_id AND v.rcpt_idx = r.idx
                                 AND v.type = 'email.clicked' AND NOT COALESCE(v.machine, 0))), 0)
         FROM recipients r JOIN emails e ON e.id = r.email_id
         WHERE (?1 IS NULL OR e.domain = ?1 COLLATE NOCASE)
           AND (?2 IS NULL OR e.created_at >= ?2)
           AND (?3 IS NULL OR e.created_at < ?3)",
        params![domain, since, until],
        |r| {
            Ok(Stats {
                sent: r.get(0)?,
                delivered: r.get(1)?,
                delayed: r.get(2)?,
                bounced: r.get(3)?,
                failed: r.get(4)?,
                opened: r.get(5)?,
                opened_human: r.get(6)?,
                clicked: r.get(7)?,
                clicked_human: r.get(8)?,
            })
        },
    )
}
