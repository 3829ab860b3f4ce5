//! `TrackingStore` through the trait, the same scenarios against a SQLite
//! store in a temporary directory and a real PostgreSQL server: tracking
//! batches judged on the store's facts, unsubscribes, and the webhook
//! outbox (claims, settling, listing, replay), including two nodes
//! claiming one outbox at once.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use support::postgres;
use trackrelay::events::{EventType, NewEvent};
use trackrelay::store::postgres::{PgOptions, Postgres};
use trackrelay::store::sqlite::StoreOptions;
use trackrelay::store::tracking::{
    ClickJudge, OutboxCounts, Recorded, Subscription, UnsubscribeOutcome, UnsubscribeRequest, Via,
};
use trackrelay::store::Store;
use trackrelay::tracking::recorder::Judge;

const HOOK: &str = "http://127.0.0.1:9/hook";
const WINDOW_MS: i64 = 10_000;

fn hooks() -> Vec<Subscription> {
    vec![Subscription {
        url: HOOK.into(),
        events: vec!["*".into()],
        domains: vec![],
    }]
}

fn judge() -> Arc<dyn ClickJudge> {
    Arc::new(Judge {
        machine_click_window_ms: WINDOW_MS,
        burst_window_ms: 1_000,
    })
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Where the scenario's rows live, for seeding and for reading back what
/// the store wrote (rows as `a|b|c`, NULL as empty, like psql's output).
enum Db {
    Sqlite(std::path::PathBuf),
    Postgres(String),
}

impl Db {
    fn exec(&self, sql: &str) {
        match self {
            Db::Sqlite(path) => rusqlite::Connection::open(path)
                .unwrap()
                .execute_batch(sql)
                .unwrap(),
            Db::Postgres(url) => {
                postgres::query(url, sql);
            }
        }
    }

    fn rows(&self, sql: &str) -> Vec<String> {
        match self {
            Db::Sqlite(path) => {
                let conn = rusqlite::Connection::open(path).unwrap();
                let mut stmt = conn.prepare(sql).unwrap();
                let n = stmt.column_count();
                stmt.query_map([], |r| {
                    let cols: Vec<String> = (0..n)
                        .map(|i| match r.get::<_, rusqlite::types::Value>(i).unwrap() {
                            rusqlite::types::Value::Null => String::new(),
                            rusqlite::types::Value::Integer(v) => v.to_string(),
                            rusqlite::types::Value::Text(s) => s,
                            other => panic!("{other:?}"),
                        })
                        .collect();
                    Ok(cols.join("|"))
                })
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
            }
            Db::Postgres(url) => postgres::query(url, sql)
                .lines()
                .map(str::to_string)
                .collect(),
        }
    }

    fn count(&self, sql: &str) -> i64 {
        self.rows(sql)[0].parse().unwrap()
    }
}

/// One email (domain `Example.COM`) with three recipients: 0 delivered an
/// hour before `t`, 1 delivered two seconds before `t`, 2 being sent.
fn seed(db: &Db, t: i64) {
    db.exec(&format!(
        "INSERT INTO emails (id, created_at, domain, mail_from, size)
           VALUES ('e1', {t}, 'Example.COM', 'news@example.com', 0);
         INSERT INTO recipients (email_id, idx, address, status, delivered_at, attempt_started_at)
           VALUES ('e1', 0, 'Bob@Example.NET', 'delivered', {d0}, {a0}),
                  ('e1', 1, 'amy@example.net', 'delivered', {d1}, {a1}),
                  ('e1', 2, 'cy@example.net', 'sending', NULL, {a2});",
        d0 = t - 3_600_000,
        a0 = t - 3_601_000,
        d1 = t - 2_000,
        a1 = t - 3_000,
        a2 = t - 500,
    ));
}

fn click(email: &str, idx: u32, link: &str, at: i64) -> NewEvent {
    let mut ev = NewEvent::new(email, EventType::Clicked, at);
    ev.rcpt_idx = Some(idx);
    ev.link = Some(format!("https://example.org/{link}"));
    ev.machine = Some(false);
    ev.user_agent = Some("Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0".into());
    ev
}

fn verdict(r: &Recorded) -> (bool, Option<&str>) {
    (r.machine, r.machine_reason.as_deref())
}

/// Opens and clicks: `a` and `b` are two nodes on one store (the same
/// store for SQLite).
async fn tracking_batches(a: &Store, b: &Store, db: &Db, t: i64) {
    let mut open = NewEvent::new("e1", EventType::Opened, t);
    open.rcpt_idx = Some(0);
    open.machine = Some(false);
    let mut flagged = click("e1", 0, "d", t + 5_100);
    flagged.machine = Some(true);
    flagged.machine_reason = Some("known_bot".into());
    let batch: Arc<[NewEvent]> = vec![
        open,
        click("e1", 0, "a", t),
        click("e1", 0, "b", t + 300),
        // The same link as the first, but another link 50 ms before.
        click("e1", 0, "a", t + 350),
        click("e1", 1, "a", t),
        click("e1", 2, "a", t),
        click("e1", 0, "c", t + 5_000),
        flagged,
        // A `preview` token: no such email in the store.
        click("preview", 0, "a", t),
        click("preview", 0, "b", t + 100),
    ]
    .into();
    let out = a.insert_tracking(batch, judge()).await.unwrap();
    let verdicts: Vec<_> = out.iter().map(verdict).collect();
    assert_eq!(
        verdicts,
        vec![
            (false, None),
            (false, None),
            (true, Some("burst_of_clicks")),
            (true, Some("burst_of_clicks")),
            (true, Some("too_soon_after_delivery")),
            (true, Some("too_soon_after_delivery")),
            (false, None),
            (true, Some("known_bot")),
            (false, None),
            (true, Some("burst_of_clicks")),
        ]
    );
    let recipients: Vec<_> = out.iter().map(|r| r.recipient.as_deref()).collect();
    assert_eq!(recipients[..3], [Some("Bob@Example.NET"); 3]);
    assert_eq!(recipients[4], Some("amy@example.net"));
    assert_eq!(recipients[8], None);
    let ids: Vec<i64> = out.iter().map(|r| r.event_id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    // What the store kept is what it said.
    let stored = db.rows(
        "SELECT id, COALESCE(recipient, ''), machine, COALESCE(machine_reason, '')
         FROM events ORDER BY id",
    );
    let said: Vec<String> = out
        .iter()
        .map(|r| {
            format!(
                "{}|{}|{}|{}",
                r.event_id,
                r.recipient.as_deref().unwrap_or(""),
                r.machine as i64,
                r.machine_reason.as_deref().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(stored, said);

    // Later batches, from either node, judge against what is stored: a
    // click 500 ms after the stored one on link c is a burst, whichever
    // node took either; one two seconds later is not.
    let out = b
        .insert_tracking(vec![click("e1", 0, "e", t + 5_500)].into(), judge())
        .await
        .unwrap();
    assert_eq!(verdict(&out[0]), (true, Some("burst_of_clicks")));
    let out = a
        .insert_tracking(vec![click("e1", 0, "f", t + 7_600)].into(), judge())
        .await
        .unwrap();
    assert_eq!(verdict(&out[0]), (false, None));
    // The copy's first click set the recipient's clicked_at.
    assert_eq!(
        db.rows("SELECT clicked_at FROM recipients WHERE email_id = 'e1' AND idx = 0"),
        vec![t.to_string()]
    );
}

async fn unsubscribes(a: &Store, b: &Store, db: &Db, t: i64) {
    let req = |idx: u32, via: Via, at: i64| UnsubscribeRequest {
        email_id: "e1".into(),
        rcpt_idx: idx,
        via,
        at,
        ip: Some("127.0.0.1".into()),
        user_agent: None,
    };
    let suppressing = Arc::new(HashSet::from(["example.com".to_string()]));
    let first = a
        .unsubscribe(req(0, Via::OneClick, t), suppressing.clone())
        .await
        .unwrap();
    let UnsubscribeOutcome::Unsubscribed {
        event_id,
        ref address,
        ref domain,
        suppression_added: true,
    } = first
    else {
        panic!("{first:?}");
    };
    assert_eq!(
        (address.as_str(), domain.as_str()),
        ("bob@example.net", "example.com")
    );
    assert_eq!(
        db.rows("SELECT address, scope, reason, event_id FROM suppressions"),
        vec![format!(
            "bob@example.net|example.com|unsubscribe|{event_id}"
        )]
    );
    let detail = db.rows(&format!(
        "SELECT recipient, detail FROM events WHERE id = {event_id}"
    ));
    let (recipient, detail) = detail[0].split_once('|').unwrap();
    assert_eq!(recipient, "Bob@Example.NET");
    let detail: serde_json::Value = serde_json::from_str(detail).unwrap();
    assert_eq!(
        (&detail["via"], &detail["suppressed"]),
        (&"one_click".into(), &true.into())
    );
    // A repeat, from the other node: no event, nothing added.
    assert_eq!(
        b.unsubscribe(req(0, Via::Mailto, t + 1), suppressing.clone())
            .await
            .unwrap(),
        UnsubscribeOutcome::Repeated {
            event_id,
            suppression_added: false
        }
    );
    // Removed by the operator, asked again: back on the list.
    db.exec("DELETE FROM suppressions");
    assert_eq!(
        a.unsubscribe(req(0, Via::Page, t + 2), suppressing.clone())
            .await
            .unwrap(),
        UnsubscribeOutcome::Repeated {
            event_id,
            suppression_added: true
        }
    );
    // A domain that does not suppress on unsubscribe: only the event.
    let out = a
        .unsubscribe(req(1, Via::Page, t + 3), Arc::new(HashSet::new()))
        .await
        .unwrap();
    assert!(
        matches!(
            out,
            UnsubscribeOutcome::Unsubscribed {
                suppression_added: false,
                ..
            }
        ),
        "{out:?}"
    );
    assert_eq!(
        a.unsubscribe(req(9, Via::OneClick, t), suppressing.clone())
            .await
            .unwrap(),
        UnsubscribeOutcome::UnknownRecipient
    );
    assert_eq!(
        db.count("SELECT count(*) FROM events WHERE type = 'email.unsubscribed'"),
        2
    );
    assert_eq!(db.count("SELECT count(*) FROM suppressions"), 1);
}

/// The outbox the events above filled: one row per event.
async fn outbox(a: &Store, db: &Db) {
    let total = db.count("SELECT count(*) FROM events");
    assert_eq!(db.count("SELECT count(*) FROM webhook_outbox"), total);
    assert_eq!(
        a.webhook_counts().await.unwrap(),
        OutboxCounts {
            pending: total,
            delivered: 0,
            failed: 0
        }
    );
    let now = trackrelay::store::now_ms() + 1_000;
    let lease = 60_000;
    let first = a.webhook_claim_due(HOOK, now, lease, 3).await.unwrap();
    assert_eq!(first.len(), 3);
    assert!(first.windows(2).all(|w| w[0].created_at <= w[1].created_at));
    assert!(first.iter().all(|i| i.endpoint == HOOK && i.attempts == 0));
    let body: serde_json::Value = serde_json::from_str(&first[0].payload).unwrap();
    assert!(
        body["type"].as_str().unwrap().starts_with("email."),
        "{body}"
    );
    // Leased: not handed out again until the lease runs out.
    let rest = a.webhook_claim_due(HOOK, now, lease, 1000).await.unwrap();
    assert_eq!(rest.len() as i64, total - 3);
    let ids = |v: &[trackrelay::store::tracking::OutboxItem]| {
        v.iter().map(|i| i.id.clone()).collect::<HashSet<_>>()
    };
    assert!(ids(&first).is_disjoint(&ids(&rest)));
    assert!(a
        .webhook_claim_due(HOOK, now, lease, 1000)
        .await
        .unwrap()
        .is_empty());
    assert!(a
        .webhook_claim_due("http://other.invalid/", now + lease, lease, 10)
        .await
        .unwrap()
        .is_empty());

    a.webhook_delivered(&first[0].id, now).await.unwrap();
    a.webhook_failed(&first[1].id, "HTTP 500", Some(now + 10))
        .await
        .unwrap();
    a.webhook_failed(&first[2].id, "HTTP 410", None)
        .await
        .unwrap();
    assert_eq!(
        a.webhook_counts().await.unwrap(),
        OutboxCounts {
            pending: total - 2,
            delivered: 1,
            failed: 1
        }
    );
    // The retry is due at its own time, with its attempt counted; the rest
    // come back when their lease runs out.
    let retry = a
        .webhook_claim_due(HOOK, now + 10, lease, 10)
        .await
        .unwrap();
    assert_eq!(retry.len(), 1);
    assert_eq!(
        (retry[0].id.as_str(), retry[0].attempts),
        (first[1].id.as_str(), 1)
    );
    let expired = a
        .webhook_claim_due(HOOK, now + lease, lease, 1000)
        .await
        .unwrap();
    assert_eq!(ids(&expired), ids(&rest));

    let failed = a.webhook_list(true, 100).await.unwrap();
    assert_eq!(failed.len(), 1);
    let f = &failed[0];
    assert_eq!(
        (
            f.id.as_str(),
            f.status.as_str(),
            f.attempts,
            f.last_error.as_deref(),
            f.endpoint.as_str()
        ),
        (first[2].id.as_str(), "failed", 1, Some("HTTP 410"), HOOK)
    );
    assert!(["e1", "preview"].contains(&f.email_id.as_str()), "{f:?}");
    assert!(f.event_type.starts_with("email."));
    let all = a.webhook_list(false, 1000).await.unwrap();
    assert_eq!(all.len() as i64, total);
    assert!(all.windows(2).all(|w| w[0].created_at >= w[1].created_at));
    let delivered = all.iter().find(|r| r.id == first[0].id).unwrap();
    assert_eq!(
        (delivered.status.as_str(), delivered.delivered_at),
        ("delivered", Some(now))
    );
    assert_eq!(a.webhook_list(false, 2).await.unwrap().len(), 2);

    // Replays: the same id, due now, whatever its status.
    assert_eq!(a.webhook_replay_one(&first[2].id, now).await.unwrap(), 1);
    assert_eq!(a.webhook_replay_one("msg_nope", now).await.unwrap(), 0);
    let again = a.webhook_claim_due(HOOK, now, lease, 1000).await.unwrap();
    assert_eq!(ids(&again), HashSet::from([first[2].id.clone()]));
    assert_eq!(
        a.webhook_replay_since(i64::MAX, now).await.unwrap(),
        0,
        "nothing created in the future"
    );
    assert_eq!(a.webhook_replay_since(0, now).await.unwrap() as i64, total);
    assert_eq!(
        a.webhook_counts().await.unwrap(),
        OutboxCounts {
            pending: total,
            delivered: 0,
            failed: 0
        }
    );
}

/// Two nodes claim one outbox at once until it is empty: every row is
/// handed to exactly one of them.
async fn concurrent_claims(a: &Store, b: &Store, db: &Db, t: i64) {
    let opens: Vec<NewEvent> = (0..300)
        .map(|i| {
            let mut ev = NewEvent::new("e1", EventType::Opened, t + i);
            ev.rcpt_idx = Some(0);
            ev.machine = Some(false);
            ev
        })
        .collect();
    a.insert_tracking(opens.into(), judge()).await.unwrap();
    let pending = a.webhook_counts().await.unwrap().pending;
    assert!(pending >= 300, "{pending}");
    let now = trackrelay::store::now_ms() + 1_000;
    let drain = |s: Store| {
        tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let items = s.webhook_claim_due(HOOK, now, 60_000, 7).await.unwrap();
                if items.is_empty() {
                    return got;
                }
                for i in items {
                    s.webhook_delivered(&i.id, now).await.unwrap();
                    got.push(i.id);
                }
            }
        })
    };
    let (x, y) = (drain(a.clone()), drain(b.clone()));
    let (x, y) = (x.await.unwrap(), y.await.unwrap());
    let mut all: Vec<&String> = x.iter().chain(y.iter()).collect();
    let claimed = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), claimed, "a delivery was claimed twice");
    assert_eq!(claimed as i64, pending);
    assert_eq!(
        db.count("SELECT count(*) FROM webhook_outbox WHERE status = 'delivered'"),
        pending
    );
}

/// Two nodes store, at the same time, one click on each of many copies
/// (another link each): whichever commits second sees the other's click,
/// so exactly one of each pair is a burst, never neither.
async fn concurrent_bursts(a: &Store, b: &Store, t: i64) {
    const COPIES: u32 = 400;
    let batch = |link: &str, at: i64| -> Arc<[NewEvent]> {
        (0..COPIES)
            .map(|k| click(&format!("burst-{k}"), 0, link, at))
            .collect::<Vec<_>>()
            .into()
    };
    let (x, y) = (batch("x", t), batch("y", t + 1));
    let (sa, sb) = (a.clone(), b.clone());
    let x = tokio::spawn(async move { sa.insert_tracking(x, judge()).await.unwrap() });
    let y = tokio::spawn(async move { sb.insert_tracking(y, judge()).await.unwrap() });
    let (x, y) = (x.await.unwrap(), y.await.unwrap());
    for (k, (x, y)) in x.iter().zip(&y).enumerate() {
        let flagged = [x, y]
            .iter()
            .filter(|r| r.machine_reason.as_deref() == Some("burst_of_clicks"))
            .count();
        assert_eq!(flagged, 1, "copy {k}: {x:?} {y:?}");
    }
}

/// Two nodes store, at the same time, first opens of the same recipients
/// in opposite orders: neither waits for the other forever (PostgreSQL
/// would abort one as a deadlock), and each recipient is counted once.
async fn batches_sharing_recipients(a: &Store, b: &Store, db: &Db, t: i64) {
    const N: u32 = 60;
    let rows: Vec<String> = (0..N)
        .map(|i| {
            format!(
                "('e2', {i}, 'r{i}@example.net', 'delivered', {})",
                t - 3_600_000
            )
        })
        .collect();
    db.exec(&format!(
        "INSERT INTO emails (id, created_at, domain, mail_from, size)
           VALUES ('e2', {t}, 'shared.example', 'news@shared.example', 0);
         INSERT INTO recipients (email_id, idx, address, status, delivered_at) VALUES {};",
        rows.join(", ")
    ));
    let opens = |order: Vec<u32>| -> Arc<[NewEvent]> {
        order
            .into_iter()
            .map(|i| {
                let mut ev = NewEvent::new("e2", EventType::Opened, t + i64::from(i));
                ev.rcpt_idx = Some(i);
                ev.machine = Some(false);
                ev
            })
            .collect::<Vec<_>>()
            .into()
    };
    let (x, y) = (opens((0..N).collect()), opens((0..N).rev().collect()));
    let (sa, sb) = (a.clone(), b.clone());
    let x = tokio::spawn(async move { sa.insert_tracking(x, judge()).await });
    let y = tokio::spawn(async move { sb.insert_tracking(y, judge()).await });
    let (x, y) = (x.await.unwrap(), y.await.unwrap());
    assert_eq!(x.expect("node a's batch").len(), N as usize);
    assert_eq!(y.expect("node b's batch").len(), N as usize);
    assert_eq!(
        db.count("SELECT count(*) FROM recipients WHERE email_id = 'e2' AND opened_at IS NOT NULL"),
        i64::from(N)
    );
    // PostgreSQL appends rollup increments (rollup_deltas) and folds them
    // later; the counts are the sum of both.
    let rollups = match db {
        Db::Sqlite(_) => "rollups",
        Db::Postgres(_) => "(SELECT * FROM rollups UNION ALL SELECT * FROM rollup_deltas)",
    };
    assert_eq!(
        db.rows(&format!(
            "SELECT sum(opened), sum(opened_human) FROM {rollups} r WHERE domain = 'shared.example'"
        )),
        vec![format!("{N}|{N}")]
    );
}

async fn scenario(a: &Store, b: &Store, db: &Db) {
    let t = trackrelay::store::now_ms() - 60_000;
    seed(db, t);
    tracking_batches(a, b, db, t).await;
    unsubscribes(a, b, db, t).await;
    outbox(a, db).await;
    concurrent_claims(a, b, db, t).await;
    concurrent_bursts(a, b, t).await;
    batches_sharing_recipients(a, b, db, t).await;
}

#[test]
fn sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite3");
    let rt = rt();
    rt.block_on(async {
        let options = StoreOptions {
            webhooks: hooks(),
            ..StoreOptions::default()
        };
        let store = Store::open(&path, options).unwrap();
        scenario(&store, &store, &Db::Sqlite(path.clone())).await;
        store.close();
    });
}

#[test]
fn postgres_two_nodes() {
    if !postgres::available("postgres_two_nodes") {
        return;
    }
    let url = postgres::url();
    let rt = rt();
    rt.block_on(async {
        let node = |name: &str| {
            Postgres::connect(PgOptions {
                url: url.clone(),
                pool_size: 4,
                ca_file: None,
                node_id: name.to_string(),
                webhooks: hooks(),
            })
        };
        let a = Store::from_postgres(node("node-a").await.unwrap());
        let b = Store::from_postgres(node("node-b").await.unwrap());
        scenario(&a, &b, &Db::Postgres(url.clone())).await;
        a.close();
        b.close();
    });
}
