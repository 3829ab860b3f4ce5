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
    pub complained: i64,
    /// Skipped because of the suppression list.
    pub suppressed: i64,
    pub unsubscribed: i64,
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

    /// Complaints per delivered recipient, what the mailbox providers'
    /// bulk-sender rules measure.
    pub fn complaint_rate(&self) -> f64 {
        Self::rate(self.complained, self.delivered)
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
            "complained": self.complained,
            "complaint_rate": self.complaint_rate(),
            "unsubscribed": self.unsubscribed,
            "suppressed": self.suppressed,
        })
    }
}

/// The warning `stats` prints when a domain's complaints pass the bulk
/// sender thresholds of Gmail and Yahoo: 0.1 % of delivered recipients (a
/// warning) and 0.3 % (the limit past which they throttle or reject).
/// Compared on the counts, not on the rounded rate.
pub fn complaint_warning(domain: &str, st: &Stats) -> Option<String> {
    let (c, d) = (st.complained, st.delivered);
    if c == 0 || d == 0 {
        return None;
    }
    let pct = c as f64 * 100.0 / d as f64;
    let (level, what) = if c * 1000 > 3 * d {
        (
            "limit",
            "over the 0.3 % limit of Gmail's and Yahoo's bulk-sender rules",
        )
    } else if c * 1000 > d {
        (
            "warning",
            "over the 0.1 % Gmail and Yahoo ask senders to stay under",
        )
    } else {
        return None;
    };
    Some(format!(
        "{level}: {domain}: complaint rate {pct:.2} % ({c} of {d} delivered) is {what}"
    ))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn st(complained: i64, delivered: i64) -> Stats {
        Stats {
            complained,
            delivered,
            ..Stats::default()
        }
    }

    #[test]
    fn complaint_thresholds() {
        assert_eq!(complaint_warning("d", &st(0, 0)), None);
        assert_eq!(complaint_warning("d", &st(1, 1000)), None);
        let w = complaint_warning("d", &st(2, 1000)).unwrap();
        assert!(w.starts_with("warning: d: complaint rate 0.20 %"), "{w}");
        assert!(complaint_warning("d", &st(3, 1000))
            .unwrap()
            .starts_with("warning"));
        let l = complaint_warning("d", &st(4, 1000)).unwrap();
        assert!(l.starts_with("limit: d:"), "{l}");
        assert_eq!(st(4, 1000).to_json()["complaint_rate"], 0.004);
    }
}
