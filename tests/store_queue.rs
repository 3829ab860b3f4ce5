//! The queue's store methods (`QueueStore`), the same scenario against both
//! backends: a SQLite file in a temp dir and a real PostgreSQL server.
//! Then the multi-node rules on one PostgreSQL database: two nodes claiming
//! at once never get the same recipient, and a node recovers only expired
//! leases.

mod support;

use std::collections::HashSet;
use std::path::PathBuf;
use support::postgres;
use trackrelay::store::postgres::{PgOptions, Postgres};
use trackrelay::store::queue::{Attempt, Claimed, NewEmail, Outcome, StoredBody};
use trackrelay::store::{Store, StoreOptions};

/// Where to look behind the trait, to check what it wrote (the events, the
/// lease's node), with each backend's own client.
enum Peek {
    Sqlite(PathBuf),
    Postgres(String),
}

impl Peek {
    /// The first column of the first row, as text ("" for none or NULL).
    fn scalar(&self, sql: &str) -> String {
        match self {
            Peek::Sqlite(path) => {
                let conn = rusqlite::Connection::open(path).unwrap();
                conn.query_row(sql, [], |r| {
                    Ok(match r.get_ref(0)? {
                        rusqlite::types::ValueRef::Null => String::new(),
                        rusqlite::types::ValueRef::Integer(i) => i.to_string(),
                        rusqlite::types::ValueRef::Text(t) => {
                            String::from_utf8_lossy(t).into_owned()
                        }
                        v => format!("{v:?}"),
                    })
                })
                .unwrap_or_default()
            }
            Peek::Postgres(url) => postgres::query(url, sql).trim().to_string(),
        }
    }
}

fn sqlite_store(dir: &std::path::Path, node: &str) -> (Store, Peek) {
    let path = dir.join("queue.db");
    let store = Store::open(
        &path,
        StoreOptions {
            node_id: node.into(),
            ..StoreOptions::default()
        },
    )
    .unwrap();
    (store, Peek::Sqlite(path))
}

async fn pg_store(url: &str, node: &str) -> Store {
    Store::from_postgres(
        Postgres::connect(PgOptions {
            url: url.to_string(),
            pool_size: 4,
            ca_file: None,
            node_id: node.into(),
            webhooks: Vec::new(),
        })
        .await
        .unwrap(),
    )
}

fn email(id: &str, created_at: i64, recipients: &[&str]) -> NewEmail {
    NewEmail {
        id: id.into(),
        created_at,
        domain: "Example.com".into(),
        mail_from: "news@example.com".into(),
        header_from: Some("News <news@example.com>".into()),
        to_header: None,
        subject: Some("hello".into()),
        message_id: None,
        tags: vec!["t".into()],
        auth_user: None,
        client_ip: Some("127.0.0.1".into()),
        smtputf8: true,
        received: b"Received: by test\r\n".to_vec(),
        body: b"Subject: hello\r\n\r\nbody \xff bytes\r\n".to_vec().into(),
        recipients: recipients.iter().map(|r| r.to_string()).collect(),
    }
}

fn attempt(c: &Claimed, at: i64, outcome: Outcome, response: &str) -> Attempt {
    Attempt {
        email_id: c.email_id.clone(),
        idx: c.idx,
        lease_id: c.lease_id.clone(),
        at,
        outcome,
        response: response.into(),
        tls: Some("TLSv1.3".into()),
        mx: Some("mx.dest.test".into()),
        tls_policy: None,
    }
}

fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// accept -> due -> claim -> renew -> record (delivered, deferred,
/// bounced + suppression) -> recover only expired leases; then the
/// suppression at claim, retry, list pages, delete.
async fn scenario(store: &Store, peek: &Peek) {
    let now = trackrelay::store::now_ms();
    let a = new_id();
    let e = email(
        &a,
        now - 1_000,
        &[
            "ok@dest.test",
            "later@dest.test",
            "Gone@Dest.Test",
            "slow@other.test",
        ],
    );
    let sent_body = StoredBody {
        received: e.received.clone(),
        body: e.body.clone(),
    };
    store.accept(e).await.unwrap();
    assert_eq!(store.body(&a).await.unwrap(), Some(sent_body));
    assert_eq!(store.body(&new_id()).await.unwrap(), None);
    assert_eq!(store.depth().await.unwrap(), 4);
    assert_eq!(store.next_due().await.unwrap(), Some(now - 1_000));
    assert_eq!(
        peek.scalar(&format!(
            "SELECT COUNT(*) FROM events WHERE email_id = '{a}' AND type = 'email.sent'"
        )),
        "4"
    );

    // Not yet due; due; a busy destination's recipients left out, whatever
    // the case of their domain.
    assert!(store.due(now - 2_000, 10, &[]).await.unwrap().is_empty());
    let due = store.due(now, 10, &[]).await.unwrap();
    assert_eq!(due.len(), 4);
    assert!(due.iter().all(|c| c.domain == "Example.com" && c.smtputf8));
    let skipped = store.due(now, 10, &["dest.test".into()]).await.unwrap();
    assert_eq!(
        skipped
            .iter()
            .map(|c| c.address.as_str())
            .collect::<Vec<_>>(),
        ["slow@other.test"]
    );

    // Claimed once, under one lease naming this node.
    let got = store.claim(due.clone(), now, 60_000).await.unwrap();
    assert_eq!(got.len(), 4);
    let lease = got[0].lease_id.clone();
    assert!(!lease.is_empty());
    assert!(got.iter().all(|c| c.lease_id == lease));
    assert!(store.claim(due, now, 60_000).await.unwrap().is_empty());
    assert_eq!(
        peek.scalar(&format!(
            "SELECT COUNT(*) FROM recipients WHERE email_id = '{a}' AND lease_node = 'node-a'"
        )),
        "4"
    );
    assert!(store.due(now, 10, &[]).await.unwrap().is_empty());
    assert_eq!(store.depth().await.unwrap(), 4);

    // Renewed by its owner only.
    let keys: Vec<(String, u32)> = got.iter().map(|c| (c.email_id.clone(), c.idx)).collect();
    assert_eq!(store.renew("not-ours", &keys, now + 1).await.unwrap(), 0);
    assert_eq!(store.renew(&lease, &keys, now + 120_000).await.unwrap(), 4);
    // Past the first expiry but not the renewed one: nothing recovered.
    assert_eq!(store.recover_expired(now + 90_000).await.unwrap(), 0);

    // Outcomes: delivered, deferred, a 5.1.1 bounce (suppressed for the
    // sending domain, lower case), and one under a stale lease (ignored).
    let by_idx = |i: u32| got.iter().find(|c| c.idx == i).unwrap().clone();
    let mut stale = attempt(&by_idx(3), now + 10, Outcome::Delivered, "250 ok");
    stale.lease_id = "stale".into();
    let suppress: HashSet<String> = ["example.com".to_string()].into();
    let suppressed = store
        .record(
            vec![
                attempt(&by_idx(0), now + 10, Outcome::Delivered, "250 2.0.0 ok"),
                attempt(
                    &by_idx(1),
                    now + 10,
                    Outcome::Deferred {
                        next_attempt_at: now + 3_600_000,
                    },
                    "451 4.7.1 try later",
                ),
                attempt(
                    &by_idx(2),
                    now + 10,
                    Outcome::Bounced,
                    "RCPT TO: 550 5.1.1 no such user",
                ),
                stale,
            ],
            &suppress,
        )
        .await
        .unwrap();
    assert_eq!(suppressed, vec![(a.clone(), 2)]);
    assert_eq!(
        peek.scalar(
            "SELECT reason || ' ' || scope FROM suppressions WHERE address = 'gone@dest.test'"
        ),
        "hard_bounce example.com"
    );
    assert_eq!(
        peek.scalar(&format!(
            "SELECT COUNT(*) FROM suppressions s JOIN events e ON e.id = s.event_id
             WHERE e.email_id = '{a}' AND e.type = 'email.bounced'"
        )),
        "1"
    );
    let all = store.list(true, None, 100).await.unwrap();
    let status: Vec<(&str, u32, Option<i64>)> = all
        .iter()
        .map(|r| (r.status.as_str(), r.attempts, r.next_attempt_at))
        .collect();
    assert_eq!(
        status,
        [
            ("delivered", 1, None),
            ("deferred", 1, Some(now + 3_600_000)),
            ("bounced", 1, None),
            ("sending", 0, None),
        ]
    );
    assert_eq!(all[1].last_response.as_deref(), Some("451 4.7.1 try later"));
    for (kind, n) in [
        ("email.delivered", "1"),
        ("email.delivery_delayed", "1"),
        ("email.bounced", "1"),
    ] {
        assert_eq!(
            peek.scalar(&format!(
                "SELECT COUNT(*) FROM events WHERE email_id = '{a}' AND type = '{kind}'"
            )),
            n,
            "{kind}"
        );
    }
    assert_eq!(store.next_due().await.unwrap(), Some(now + 3_600_000));

    // Only the expired lease goes back, due at the time of recovery.
    assert_eq!(store.recover_expired(now + 100_000).await.unwrap(), 0);
    assert_eq!(store.recover_expired(now + 130_000).await.unwrap(), 1);
    let rows = store.list(false, None, 100).await.unwrap();
    assert_eq!(
        rows.iter()
            .map(|r| (r.idx, r.status.as_str()))
            .collect::<Vec<_>>(),
        [(1, "deferred"), (3, "queued")]
    );
    assert_eq!(rows[1].next_attempt_at, Some(now + 130_000));
    // Its old lease may no longer renew nor record it.
    assert_eq!(store.renew(&lease, &keys, now + 200_000).await.unwrap(), 0);
    let late = attempt(&by_idx(3), now + 131_000, Outcome::Delivered, "250 ok");
    store.record(vec![late], &suppress).await.unwrap();
    assert_eq!(
        store.list(false, None, 100).await.unwrap()[1].status,
        "queued"
    );

    // The suppressed address is settled at claim, never attempted.
    let b = new_id();
    store
        .accept(email(&b, now + 1, &["GONE@dest.test", "new@dest.test"]))
        .await
        .unwrap();
    let claimed = store.claim_due(now + 140_000, 60_000, 100).await.unwrap();
    let mut addresses: Vec<&str> = claimed.iter().map(|c| c.address.as_str()).collect();
    addresses.sort();
    assert_eq!(addresses, ["new@dest.test", "slow@other.test"]);
    let b_rows: Vec<_> = store
        .list(true, None, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.email_id == b)
        .collect();
    assert_eq!(b_rows[0].status, "suppressed");
    assert_eq!(
        b_rows[0].last_response.as_deref(),
        Some("not sent: the address is suppressed (hard_bounce)")
    );
    assert_eq!(
        peek.scalar(&format!(
            "SELECT COUNT(*) FROM events WHERE email_id = '{b}' AND type = 'email.suppressed'"
        )),
        "1"
    );
    // Released by their lease: due again at once.
    let lease_b = claimed[0].lease_id.clone();
    let released = store
        .release(
            &[(
                lease_b,
                claimed
                    .iter()
                    .map(|c| (c.email_id.clone(), c.idx))
                    .collect(),
            )],
            now + 150_000,
        )
        .await
        .unwrap();
    assert_eq!(released, 2);

    // Retry makes the waiting recipients of one email due now.
    assert_eq!(store.retry(&a, now + 160_000).await.unwrap(), 2);
    assert_eq!(store.retry(&new_id(), now).await.unwrap(), 0);
    assert_eq!(store.next_due().await.unwrap(), Some(now + 150_000));

    // Listed a page at a time, in acceptance order, nothing twice.
    let mut seen = Vec::new();
    let mut after = None;
    for _ in 0..10 {
        let page = store.list(false, after.clone(), 1).await.unwrap();
        let Some(last) = page.last() else { break };
        assert_eq!(page.len(), 1);
        after = Some(last.key());
        seen.push(last.key());
    }
    assert_eq!(
        seen,
        [(a.clone(), 1), (a.clone(), 3), (b.clone(), 1)],
        "waiting rows of a, then b"
    );
    let every = store.list(true, None, 100).await.unwrap();
    assert_eq!(every.len(), 6);
    assert_eq!(every[0].to_json()["email_id"], a.as_str());

    // Delete: the waiting recipients fail, with an event each.
    assert_eq!(store.delete(&a, now + 170_000).await.unwrap(), 2);
    assert_eq!(store.delete(&a, now + 170_000).await.unwrap(), 0);
    let waiting = store.list(false, None, 100).await.unwrap();
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].email_id, b);
    assert_eq!(
        peek.scalar(&format!(
            "SELECT COUNT(*) FROM events WHERE email_id = '{a}' AND type = 'email.failed'"
        )),
        "2"
    );
    let a_rows: Vec<_> = store
        .list(true, None, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.email_id == a && r.status == "failed")
        .collect();
    assert_eq!(a_rows.len(), 2);
    assert_eq!(
        a_rows[0].last_response.as_deref(),
        Some("deleted from the queue by the operator")
    );
    assert_eq!(store.depth().await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_scenario_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let (store, peek) = sqlite_store(dir.path(), "node-a");
    scenario(&store, &peek).await;
    store.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_scenario_on_postgres() {
    if !postgres::available("the_queue_scenario_on_postgres") {
        return;
    }
    let url = postgres::url();
    let store = pg_store(&url, "node-a").await;
    scenario(&store, &Peek::Postgres(url)).await;
    store.close();
}

/// Two nodes on one database read the same due recipients, then claim
/// them at the same moment: every recipient goes to exactly one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_claiming_at_once_never_share_a_recipient() {
    if !postgres::available("two_nodes_claiming_at_once_never_share_a_recipient") {
        return;
    }
    let url = postgres::url();
    let nodes = [
        pg_store(&url, "node-a").await,
        pg_store(&url, "node-b").await,
    ];
    let now = trackrelay::store::now_ms();
    let rcpts: Vec<String> = (0..25).map(|i| format!("r{i}@dest.test")).collect();
    let rcpts: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    for _ in 0..8 {
        nodes[0]
            .accept(email(&new_id(), now - 1_000, &rcpts))
            .await
            .unwrap();
    }
    let total = 8 * 25;
    // Both read, then both claim: each round races the two claims over one
    // set of rows. 200 rows, 30 a round: 7 rounds suffice; 12 are run.
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(2));
    let claims = nodes.iter().map(|store| {
        let store = store.clone();
        let barrier = barrier.clone();
        tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..12 {
                barrier.wait().await;
                let due = store.due(now, 30, &[]).await.unwrap();
                barrier.wait().await;
                for c in store.claim(due, now, 60_000).await.unwrap() {
                    got.push((c.email_id, c.idx));
                }
            }
            got
        })
    });
    let mut per_node = Vec::new();
    for h in claims.collect::<Vec<_>>() {
        per_node.push(h.await.unwrap());
    }
    let a: HashSet<_> = per_node[0].iter().cloned().collect();
    let b: HashSet<_> = per_node[1].iter().cloned().collect();
    assert_eq!(a.len(), per_node[0].len(), "node a claimed a row twice");
    assert_eq!(b.len(), per_node[1].len(), "node b claimed a row twice");
    assert!(a.is_disjoint(&b), "a recipient claimed by both nodes");
    assert_eq!(a.len() + b.len(), total, "every recipient claimed");
    let peek = Peek::Postgres(url.clone());
    assert_eq!(
        peek.scalar("SELECT COUNT(*) FROM recipients WHERE lease_node = 'node-a'"),
        a.len().to_string()
    );
    assert_eq!(
        peek.scalar("SELECT COUNT(*) FROM recipients WHERE lease_node = 'node-b'"),
        b.len().to_string()
    );
    for n in &nodes {
        n.close();
    }
}

/// Node b recovering leases leaves node a's live ones alone, and takes
/// them back only once they expired (node a stopped renewing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_recovers_only_expired_leases_of_another() {
    if !postgres::available("a_node_recovers_only_expired_leases_of_another") {
        return;
    }
    let url = postgres::url();
    let (node_a, node_b) = (
        pg_store(&url, "node-a").await,
        pg_store(&url, "node-b").await,
    );
    let now = trackrelay::store::now_ms();
    let id = new_id();
    node_a
        .accept(email(&id, now - 1_000, &["x@dest.test", "y@dest.test"]))
        .await
        .unwrap();
    let held = node_a.claim_due(now, 60_000, 10).await.unwrap();
    assert_eq!(held.len(), 2);
    // Node a renews one of its two leases; the other runs out.
    let keys = vec![(id.clone(), held[0].idx)];
    assert_eq!(
        node_a
            .renew(&held[0].lease_id, &keys, now + 600_000)
            .await
            .unwrap(),
        1
    );
    assert_eq!(node_b.recover_expired(now + 30_000).await.unwrap(), 0);
    assert!(node_b
        .claim_due(now + 30_000, 60_000, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(node_b.recover_expired(now + 61_000).await.unwrap(), 1);
    let taken = node_b.claim_due(now + 61_000, 60_000, 10).await.unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].idx, held[1].idx);
    assert_eq!(
        Peek::Postgres(url.clone()).scalar(&format!(
            "SELECT lease_node FROM recipients WHERE email_id = '{id}' AND idx = {}",
            held[0].idx
        )),
        "node-a"
    );
    // Node a's late outcome for the row node b took changes nothing.
    let late = attempt(&held[1], now + 62_000, Outcome::Delivered, "250 ok");
    node_a.record(vec![late], &HashSet::new()).await.unwrap();
    let row = node_b
        .list(true, None, 10)
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.idx == held[1].idx)
        .unwrap();
    assert_eq!((row.status.as_str(), row.attempts), ("sending", 0));
    node_a.close();
    node_b.close();
}
