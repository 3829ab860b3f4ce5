//! Sending statistics, unique per recipient: a recipient who opened five
//! times counts once. Machine activity (image proxies that prefetch,
//! scanners) is counted apart from human activity. Read from the hourly
//! rollups (`rollups`), never from the events.

use rusqlite::Connection;

pub use crate::store::queries::{complaint_warning, Stats};

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
