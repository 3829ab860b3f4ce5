//! The MTA-STS policy cache (RFC 8461 section 5.1): one policy per
//! recipient domain, kept until its max_age runs out, refreshed ahead of
//! expiry while deliveries use it, dropped once long unused.

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
    /// When a delivery last asked for it (unix ms, coarse: see `mark_used`).
    pub used_at: i64,
}

const COLUMNS: &str = "domain, policy_id, policy, fetched_at, expires_at, used_at";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CachedPolicy> {
    Ok(CachedPolicy {
        domain: r.get(0)?,
        policy_id: r.get(1)?,
        policy: r.get(2)?,
        fetched_at: r.get(3)?,
        expires_at: r.get(4)?,
        used_at: r.get(5)?,
    })
}

pub fn get(conn: &Connection, domain: &str) -> rusqlite::Result<Option<CachedPolicy>> {
    conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM mta_sts_policies WHERE domain = ?1"
    ))?
    .query_row(params![domain.to_ascii_lowercase()], row)
    .optional()
}

/// Stores a freshly fetched policy, replacing the domain's previous one.
pub fn put(tx: &Tx<'_>, p: &CachedPolicy) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO mta_sts_policies (domain, policy_id, policy, fetched_at, expires_at, used_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT(domain) DO UPDATE SET policy_id = excluded.policy_id, policy = excluded.policy,
             fetched_at = excluded.fetched_at, expires_at = excluded.expires_at,
             used_at = MAX(used_at, excluded.used_at)",
    )?
    .execute(params![
        p.domain.to_ascii_lowercase(),
        p.policy_id,
        p.policy,
        p.fetched_at,
        p.expires_at,
        p.used_at
    ])?;
    Ok(())
}

/// Records that a delivery used the domain's policy at `now`.
pub fn mark_used(tx: &Tx<'_>, domain: &str, now: i64) -> rusqlite::Result<()> {
    tx.prepare_cached("UPDATE mta_sts_policies SET used_at = MAX(used_at, ?2) WHERE domain = ?1")?
        .execute(params![domain.to_ascii_lowercase(), now])?;
    Ok(())
}

/// Policies to fetch again ahead of expiry, soonest to expire first, at
/// most `limit`: three quarters of their max_age have passed, and a
/// delivery used them within their max_age (the others are left to expire).
pub fn due(conn: &Connection, now: i64, limit: usize) -> rusqlite::Result<Vec<CachedPolicy>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM mta_sts_policies
         WHERE ?1 >= fetched_at + (expires_at - fetched_at) / 4 * 3
           AND used_at >= ?1 - (expires_at - fetched_at)
         ORDER BY expires_at LIMIT ?2"
    ))?;
    let rows = stmt.query_map(params![now, limit as i64], row)?;
    rows.collect()
}

/// Drops the policies expired for longer than their max_age: nothing has
/// used them for that long, and a fresh fetch is what the next delivery
/// needs anyway. Returns how many went.
pub fn drop_stale(tx: &Tx<'_>, now: i64) -> rusqlite::Result<usize> {
    tx.prepare_cached(
        "DELETE FROM mta_sts_policies WHERE expires_at + (expires_at - fetched_at) < ?1",
    )?
    .execute(params![now])
}
