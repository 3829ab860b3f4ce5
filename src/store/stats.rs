//! Sending statistics, unique per recipient: a recipient who opened five
//! times counts once. Machine activity (image proxies that prefetch,
//! scanners) is counted apart from human activity. Read from the hourly
//! rollups (`rollups`), never from the events.

use rusqlite::Connection;
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
    /// Kept in the rollups for a dashboard; not in the contract's JSON yet.
    pub complained: i64,
    pub opened_machine: i64,
    pub clicked_machine: i64,
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

/// Over the emails accepted in `[since, until)`, optionally of one sending
/// domain, read from the hourly rollups (exact for any window: see
/// `rollups`).
pub fn compute(
    conn: &Connection,
    domain: Option<&str>,
    since: Option<i64>,
    until: Option<i64>,
) -> rusqlite::Result<Stats> {
    super::rollups::window(conn, domain, since, until)
}
