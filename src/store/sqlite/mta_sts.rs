//! The MTA-STS policy cache (RFC 8461 section 5.1): one policy per
//! recipient domain, kept until its max_age runs out, refreshed ahead of
//! expiry while deliveries use it, dropped once long unused.

use super::Tx;
use rusqlite::{params, Connection, OptionalExtension};

pub use crate::store::domains::CachedPolicy;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Durability, Store, StoreOptions};

    /// Fetched at 0 with a max_age of 4000 ms, used at `used_at`.
    fn policy(domain: &str, used_at: i64) -> CachedPolicy {
        CachedPolicy {
            domain: domain.into(),
            policy_id: "1".into(),
            policy: "version: STSv1\nmode: none\nmax_age: 4\n".into(),
            fetched_at: 0,
            expires_at: 4000,
            used_at,
        }
    }

    #[test]
    fn due_stale_and_use_follow_max_age() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.sqlite3"), StoreOptions::default()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let due = |now| {
                let store = store.clone();
                async move {
                    let rows = store.read(move |c| due(c, now, 10)).await.unwrap();
                    rows.into_iter().map(|r| r.domain).collect::<Vec<_>>()
                }
            };
            let (used, unused) = (policy("used.test", 0), policy("unused.test", -5000));
            store
                .write(Durability::Normal, move |tx| {
                    put(tx, &used)?;
                    put(tx, &unused)
                })
                .await
                .unwrap();
            // Three quarters of max_age are gone at 3000.
            assert!(due(2999).await.is_empty());
            assert_eq!(due(3000).await, vec!["used.test"]);
            // Used within max_age of now, still due past expiry.
            assert_eq!(due(4000).await, vec!["used.test"]);
            assert!(due(4001).await.is_empty(), "used 4001 ms ago");
            store
                .write(Durability::Normal, |tx| mark_used(tx, "UNUSED.test", 3500))
                .await
                .unwrap();
            assert_eq!(due(4001).await, vec!["unused.test"]);
            // A later put (a refresh, used_at 0) keeps the recorded use.
            let refreshed = CachedPolicy {
                fetched_at: 3600,
                expires_at: 7600,
                ..policy("unused.test", 0)
            };
            store
                .write(Durability::Normal, move |tx| put(tx, &refreshed))
                .await
                .unwrap();
            let row = store
                .read(|c| get(c, "unused.test"))
                .await
                .unwrap()
                .unwrap();
            assert_eq!((row.fetched_at, row.used_at), (3600, 3500));
            // Dropped once expired for longer than max_age (4000 + 4000).
            let dropped = store
                .write(Durability::Normal, |tx| drop_stale(tx, 8000))
                .await
                .unwrap();
            assert_eq!(dropped, 0);
            let dropped = store
                .write(Durability::Normal, |tx| drop_stale(tx, 8001))
                .await
                .unwrap();
            assert_eq!(dropped, 1);
            assert!(store.read(|c| get(c, "used.test")).await.unwrap().is_none());
            assert!(store
                .read(|c| get(c, "unused.test"))
                .await
                .unwrap()
                .is_some());
        });
    }
}
