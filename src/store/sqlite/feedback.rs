//! What the feedback processor (src/inbound/process.rs) reads and changes
//! for a report that names a recipient. Its events and suppressions go
//! through `events::insert` and `suppressions::add` like every other.

use rusqlite::{params, Connection, OptionalExtension};

/// The recipient a verified return-path token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkedRecipient {
    pub address: String,
    pub status: String,
    /// `recipients.counted` bits (see `rollups::bit`): which events it
    /// already had, even after retention pruned them.
    pub counted: i64,
    /// The email's sending domain, lowercased: the scope of suppressions.
    pub domain: String,
}

pub fn recipient(
    conn: &Connection,
    email_id: &str,
    idx: u32,
) -> rusqlite::Result<Option<LinkedRecipient>> {
    conn.prepare_cached(
        "SELECT r.address, r.status, r.counted, lower(e.domain)
         FROM recipients r JOIN emails e ON e.id = r.email_id
         WHERE r.email_id = ?1 AND r.idx = ?2",
    )?
    .query_row(params![email_id, idx], |r| {
        Ok(LinkedRecipient {
            address: r.get(0)?,
            status: r.get(1)?,
            counted: r.get(2)?,
            domain: r.get(3)?,
        })
    })
    .optional()
}

/// A bounce report: the recipient becomes `bounced` whatever it was
/// (`delivered_at` is kept: the receiver did say 250), and leaves the
/// queue if it was still in it. A copy in flight keeps going, but its
/// lease is gone, so its outcome is not recorded over the bounce. Nothing
/// changes for a recipient already bounced, or never sent (suppressed).
/// Returns whether it changed.
pub fn set_bounced(
    conn: &Connection,
    email_id: &str,
    idx: u32,
    at: i64,
    response: &str,
) -> rusqlite::Result<bool> {
    let n = conn
        .prepare_cached(
            "UPDATE recipients SET status = 'bounced', bounced_at = ?3, last_response = ?4,
                    next_attempt_at = NULL, lease_until = NULL, lease_id = NULL
             WHERE email_id = ?1 AND idx = ?2 AND status NOT IN ('bounced', 'suppressed')",
        )?
        .execute(params![email_id, idx, at, response])?;
    Ok(n == 1)
}

#[async_trait::async_trait]
impl crate::store::feedback::FeedbackStore for super::Sqlite {}
