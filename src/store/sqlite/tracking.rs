//! What the tracking recorder reads while it writes opens and clicks: a
//! recipient's address and delivery times. The rule that judges a click by
//! those times lives in `crate::tracking`; the store only hands over facts.

use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;

/// A recipient's row, as far as tracking needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientDelivery {
    pub address: String,
    pub delivered_at: Option<i64>,
    /// Start of the latest delivery attempt (migration 2).
    pub attempt_started_at: Option<i64>,
    /// An attempt is under way: the recipient is leased for sending.
    pub sending: bool,
}

pub fn recipient_delivery(
    conn: &Connection,
    email_id: &str,
    idx: u32,
) -> rusqlite::Result<Option<RecipientDelivery>> {
    conn.prepare_cached(
        "SELECT address, delivered_at, attempt_started_at, status = 'sending'
         FROM recipients WHERE email_id = ?1 AND idx = ?2",
    )?
    .query_row(params![email_id, idx], |r| {
        Ok(RecipientDelivery {
            address: r.get(0)?,
            delivered_at: r.get(1)?,
            attempt_started_at: r.get(2)?,
            sending: r.get(3)?,
        })
    })
    .optional()
}

/// Lookups made within one write job, so a batch of hits on one message
/// reads each recipient once. Valid only inside the transaction it was
/// filled in (the rows may change after it commits); the recorder makes a
/// new one per batch, which also bounds it by the batch size.
#[derive(Default)]
pub struct RecipientCache {
    rows: HashMap<(String, u32), Option<RecipientDelivery>>,
}

impl RecipientCache {
    pub fn get(
        &mut self,
        conn: &Connection,
        email_id: &str,
        idx: u32,
    ) -> rusqlite::Result<Option<&RecipientDelivery>> {
        use std::collections::hash_map::Entry;
        let row = match self.rows.entry((email_id.to_string(), idx)) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(recipient_delivery(conn, email_id, idx)?),
        };
        Ok(row.as_ref())
    }
}

#[async_trait::async_trait]
impl crate::store::tracking::TrackingStore for super::Sqlite {}
