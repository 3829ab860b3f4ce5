//! The MTA-STS policy cache (RFC 8461 section 5.1): one policy per
//! recipient domain, kept until its max_age runs out.

use super::Tx;
use rusqlite::{params, Connection, OptionalExtension};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedPolicy {
    pub domain: String,
    pub policy_id: String,
    /// The policy text as fetched; parsed again when read.
    pub policy: String,
    pub fetched_at: i64,
    pub expires_at: i64,
}

pub fn get(conn: &Connection, domain: &str) -> rusqlite::Result<Option<CachedPolicy>> {
    conn.prepare_cached(
        "SELECT domain, policy_id, policy, fetched_at, expires_at FROM mta_sts_policies WHERE domain = ?1",
    )?
    .query_row(params![domain.to_ascii_lowercase()], |r| {
        Ok(CachedPolicy {
            domain: r.get(0)?,
            policy_id: r.get(1)?,
            policy: r.get(2)?,
            fetched_at: r.get(3)?,
            expires_at: r.get(4)?,
        })
    })
    .optional()
}

/// Stores a freshly fetched policy, replacing the domain's previous one.
pub fn put(tx: &Tx<'_>, p: &CachedPolicy) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO mta_sts_policies (domain, policy_id, policy, fetched_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(domain) DO UPDATE SET policy_id = excluded.policy_id, policy = excluded.policy,
             fetched_at = excluded.fetched_at, expires_at = excluded.expires_at",
    )?
    .execute(params![
        p.domain.to_ascii_lowercase(),
        p.policy_id,
        p.policy,
        p.fetched_at,
        p.expires_at
    ])?;
    Ok(())
}
