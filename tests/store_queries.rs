//! `QueryStore` through the trait: a small fixed data set (three emails,
//! five recipients: delivered, bounced, deferred; opens and clicks, human
//! and machine; a webhook endpoint; two suppressions), then every read the
//! API, dashboard and CLI make, the dashboard's retry and retention, with
//! the answers the data set implies.
//!
//! The scenario takes a `&Store` so that it runs unchanged on both
//! backends. The data set is written to SQLite through the store's
//! transitional closure interface; PostgreSQL gets it through `trackrelay
//! store copy` (`store::copy::sqlite_to_postgres`), the operator's own way
//! there, never through INSERTs of this test's. (When the queue, tracking
//! and feedback traits are merged, `seed` can write through them on each
//! backend instead.)

mod support;

use std::ops::ControlFlow;
use support::postgres;
use trackrelay::events::{EventType, NewEvent, StoredEvent};
use trackrelay::store::postgres::{PgOptions, Postgres};
use trackrelay::store::queries::{EmailInfo, EmailSearch, EventFilter, PruneBatch, Pruned, Stats};
use trackrelay::store::sqlite::emails::NewEmail;
use trackrelay::store::sqlite::queue::{Attempt, Outcome};
use trackrelay::store::sqlite::suppressions::Suppression;
use trackrelay::store::{self, Durability, Store, StoreOptions, Subscription};

/// 2026-01-01T00:00:00Z
const T0: i64 = 1_767_225_600_000;
const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;

const A: &str = "01900000-0000-7000-8000-00000000000a";
const B: &str = "01900000-0000-7000-8000-00000000000b";
const C: &str = "01900000-0000-7000-8000-00000000000c";
const LATER: &str = "451 4.7.1 try later";
const BODY: &[u8] = b"Subject: hi\r\n\r\nhello\r\n";

fn email(
    id: &str,
    domain: &str,
    created_at: i64,
    rcpts: &[&str],
    subject: &str,
    tags: &[&str],
) -> NewEmail {
    NewEmail {
        id: id.to_string(),
        created_at,
        domain: domain.to_string(),
        mail_from: format!("news@{domain}"),
        header_from: Some(format!("News <news@{domain}>")),
        to_header: None,
        subject: Some(subject.to_string()),
        message_id: None,
        tags: tags.iter().map(|t| t.to_string()).collect(),
        auth_user: None,
        client_ip: None,
        smtputf8: false,
        received: Vec::new(),
        body: BODY.to_vec().into(),
        recipients: rcpts.iter().map(|r| r.to_string()).collect(),
    }
}

/// What the seeding knows about what it wrote.
struct Seeded {
    /// The `email.bounced` event of A's second recipient.
    bounce_event: i64,
}

/// The data set, on SQLite: A (example.com, 00:10) to ann (delivered,
/// opened by a person and by a proxy, clicked by a scanner) and Bob
/// (bounced); B (Example.org, 02:05) to carl and C (example.com, 03:30) to
/// dan and eve, all three deferred with the same reply; Bob suppressed by
/// his bounce, ann by hand for example.com.
async fn seed_sqlite(store: &Store) -> Seeded {
    let a = email(
        A,
        "example.com",
        T0 + 10 * MIN,
        &["ann@x.test", "Bob@Y.test"],
        "Spring sale 50% off",
        &["news", "spring"],
    );
    let bounce_event = store
        .write(Durability::Full, move |tx| {
            store::sqlite::emails::insert(tx, &a)?;
            let claimed =
                store::sqlite::queue::claim_due(tx, "test", T0 + 10 * MIN + 1, HOUR, 100)?;
            assert_eq!(claimed.len(), 2);
            let mut bounce = None;
            for c in &claimed {
                let (outcome, response) = if c.idx == 0 {
                    (Outcome::Delivered, "250 ok")
                } else {
                    (Outcome::Bounced, "550 5.1.1 no such user")
                };
                let id = store::sqlite::queue::record(
                    tx,
                    &attempt(A, c.idx, &c.lease_id, T0 + 11 * MIN, outcome, response),
                )?;
                if c.idx == 1 {
                    bounce = id;
                }
            }
            for (kind, at, machine) in [
                (EventType::Opened, T0 + HOUR, false),
                (EventType::Opened, T0 + HOUR + 1, true),
                (EventType::Clicked, T0 + 2 * HOUR, true),
            ] {
                let mut ev = NewEvent::new(A.to_string(), kind, at);
                ev.rcpt_idx = Some(0);
                ev.machine = Some(machine);
                if kind == EventType::Clicked {
                    ev.link = Some("https://example.com/a".into());
                }
                store::sqlite::events::insert(tx, &ev)?;
            }
            Ok(bounce.expect("the bounce has an event"))
        })
        .await
        .unwrap();
    let b = email(
        B,
        "Example.org",
        T0 + 2 * HOUR + 5 * MIN,
        &["carl@z.test"],
        "Receipt",
        &["billing"],
    );
    let c = email(
        C,
        "example.com",
        T0 + 3 * HOUR + 30 * MIN,
        &["dan@z.test", "eve@w.test"],
        "Digest",
        &["news"],
    );
    store
        .write(Durability::Full, move |tx| {
            store::sqlite::emails::insert(tx, &b)?;
            store::sqlite::emails::insert(tx, &c)?;
            let now = T0 + 3 * HOUR + 31 * MIN;
            let claimed = store::sqlite::queue::claim_due(tx, "test", now, HOUR, 100)?;
            assert_eq!(claimed.len(), 3);
            for cl in &claimed {
                let deferred = Outcome::Deferred {
                    next_attempt_at: T0 + 100 * HOUR,
                };
                store::sqlite::queue::record(
                    tx,
                    &attempt(&cl.email_id, cl.idx, &cl.lease_id, now, deferred, LATER),
                )?;
            }
            for (address, domain, reason, event_id) in [
                ("Bob@Y.test", None, "hard_bounce", Some(bounce_event)),
                (
                    "ann@x.test",
                    Some("example.com".to_string()),
                    "manual",
                    None,
                ),
            ] {
                store::sqlite::suppressions::add(
                    tx,
                    &Suppression {
                        address: address.into(),
                        domain,
                        reason: reason.into(),
                        event_id,
                        created_at: now,
                        expires_at: None,
                    },
                )?;
            }
            Ok(())
        })
        .await
        .unwrap();
    Seeded { bounce_event }
}

fn attempt(
    email_id: &str,
    idx: u32,
    lease_id: &str,
    at: i64,
    outcome: Outcome,
    response: &str,
) -> Attempt {
    Attempt {
        lease_id: lease_id.to_string(),
        email_id: email_id.to_string(),
        idx,
        at,
        outcome,
        response: response.to_string(),
        tls: None,
        mx: None,
        tls_policy: None,
    }
}

fn options() -> StoreOptions {
    StoreOptions {
        webhooks: vec![Subscription {
            url: "https://hooks.test/all".into(),
            events: vec!["*".into()],
            domains: vec![],
        }],
        ..StoreOptions::default()
    }
}

fn kinds(events: &[StoredEvent]) -> Vec<&str> {
    events.iter().map(|e| e.kind.as_str()).collect()
}

fn ids(rows: &[trackrelay::store::queries::EmailRow]) -> Vec<&str> {
    rows.iter().map(|r| r.id.as_str()).collect()
}

async fn search(store: &Store, s: EmailSearch) -> Vec<String> {
    let found = store.search(&EmailSearch { limit: 10, ..s }).await.unwrap();
    assert_eq!(
        found.scanned_back_to, None,
        "three emails never reach the scan budget"
    );
    found.rows.into_iter().map(|r| r.id).collect()
}

/// Every `QueryStore` method on the seeded data set.
async fn scenario(store: &Store, seeded: &Seeded) {
    // One email with its recipients.
    let a = store.email(A).await.unwrap().expect("A is stored");
    assert_eq!(
        (a.domain.as_str(), a.created_at, a.size),
        ("example.com", T0 + 10 * MIN, BODY.len() as i64)
    );
    assert_eq!(a.subject.as_deref(), Some("Spring sale 50% off"));
    assert_eq!(a.header_from.as_deref(), Some("News <news@example.com>"));
    assert_eq!(a.tags, ["news", "spring"]);
    assert!(!a.pruned);
    let (ann, bob) = (&a.recipients[0], &a.recipients[1]);
    assert_eq!(a.recipients.len(), 2);
    assert_eq!(
        (ann.idx, ann.address.as_str(), ann.status.as_str()),
        (0, "ann@x.test", "delivered")
    );
    assert_eq!(
        (ann.attempts, ann.last_response.as_deref()),
        (1, Some("250 ok"))
    );
    assert_eq!(
        (ann.delivered_at, ann.opened_at, ann.clicked_at),
        (Some(T0 + 11 * MIN), Some(T0 + HOUR), Some(T0 + 2 * HOUR))
    );
    assert_eq!(
        (bob.idx, bob.status.as_str(), bob.bounced_at),
        (1, "bounced", Some(T0 + 11 * MIN))
    );
    let c = store.email(C).await.unwrap().unwrap();
    assert_eq!(c.recipients[1].next_attempt_at, Some(T0 + 100 * HOUR));
    assert_eq!(c.recipients[1].last_response.as_deref(), Some(LATER));
    let unknown = "01900000-0000-7000-8000-0000000000ff";
    assert!(store.email(unknown).await.unwrap().is_none());
    assert!(store.email_known(A).await.unwrap());
    assert!(!store.email_known(unknown).await.unwrap());

    // Events: per email, per type, per window, paged.
    let one = |email: &str| EventFilter {
        email_id: Some(email.into()),
        ..EventFilter::default()
    };
    let a_events = store.events(&one(A)).await.unwrap();
    assert_eq!(
        kinds(&a_events),
        [
            "email.sent",
            "email.sent",
            "email.delivered",
            "email.bounced",
            "email.opened",
            "email.opened",
            "email.clicked"
        ]
    );
    assert_eq!(a_events[3].id, seeded.bounce_event);
    assert_eq!(a_events[3].recipient.as_deref(), Some("Bob@Y.test"));
    assert_eq!(
        (a_events[4].machine, a_events[5].machine),
        (Some(false), Some(true))
    );
    assert_eq!(a_events[6].link.as_deref(), Some("https://example.com/a"));
    let all = store.events(&EventFilter::default()).await.unwrap();
    assert_eq!(
        all.len(),
        13,
        "3 + 2 sent, 2 + 3 attempts, 3 opens and clicks"
    );
    assert!(all.windows(2).all(|w| w[0].id < w[1].id), "id order");
    let opened = EventFilter {
        kind: Some("email.opened".into()),
        ..EventFilter::default()
    };
    assert_eq!(store.events(&opened).await.unwrap().len(), 2);
    let window = EventFilter {
        since: Some(T0 + 2 * HOUR),
        until: Some(T0 + 3 * HOUR),
        ..EventFilter::default()
    };
    let w = store.events(&window).await.unwrap();
    assert_eq!(kinds(&w), ["email.clicked", "email.sent"]);
    assert_eq!(w[1].email_id, B);
    let first = store
        .events(&EventFilter {
            limit: 3,
            ..EventFilter::default()
        })
        .await
        .unwrap();
    let next = EventFilter {
        limit: 3,
        after_id: Some(first[2].id),
        ..EventFilter::default()
    };
    let second = store.events(&next).await.unwrap();
    let paged: Vec<i64> = first.iter().chain(&second).map(|e| e.id).collect();
    let direct: Vec<i64> = all[..6].iter().map(|e| e.id).collect();
    assert_eq!(paged, direct);

    // Streaming: every event once, in order; a break stops it.
    let mut streamed = Vec::new();
    store
        .each_event(&EventFilter::default(), &mut |e| {
            streamed.push(e.id);
            ControlFlow::Continue(())
        })
        .await
        .unwrap();
    assert_eq!(streamed, all.iter().map(|e| e.id).collect::<Vec<_>>());
    let mut calls = 0;
    store
        .each_event(&EventFilter::default(), &mut |_| {
            calls += 1;
            if calls == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .await
        .unwrap();
    assert_eq!(calls, 2);
    let mut emails: Vec<EmailInfo> = Vec::new();
    store
        .each_email(Some(T0 + 2 * HOUR), None, &mut |e| {
            emails.push(e);
            ControlFlow::Continue(())
        })
        .await
        .unwrap();
    assert_eq!(
        emails.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        [B, C]
    );
    assert_eq!(emails[1], c, "each_email hands out what email() reads");
    let mut n = 0;
    store
        .each_email(None, None, &mut |_| {
            n += 1;
            ControlFlow::Break(())
        })
        .await
        .unwrap();
    assert_eq!(n, 1);

    // Stats: from rollups for whole hours, from recipients at the edges.
    let all_stats = store.stats(None, None, None).await.unwrap();
    assert_eq!(
        all_stats,
        Stats {
            sent: 5,
            delivered: 1,
            delayed: 3,
            bounced: 1,
            opened: 1,
            opened_human: 1,
            opened_machine: 1,
            clicked: 1,
            clicked_machine: 1,
            ..Stats::default()
        }
    );
    let com = store.stats(Some("EXAMPLE.com"), None, None).await.unwrap();
    assert_eq!(
        (
            com.sent,
            com.delivered,
            com.bounced,
            com.delayed,
            com.opened
        ),
        (4, 1, 1, 2, 1)
    );
    let later = store
        .stats(None, Some(T0 + 2 * HOUR), Some(T0 + 3 * HOUR + 31 * MIN))
        .await
        .unwrap();
    assert_eq!((later.sent, later.delayed, later.delivered), (3, 3, 0));
    let inside = store
        .stats(None, Some(T0 + 5 * MIN), Some(T0 + 11 * MIN))
        .await
        .unwrap();
    assert_eq!(
        (
            inside.sent,
            inside.delivered,
            inside.bounced,
            inside.clicked
        ),
        (2, 1, 1, 1)
    );
    let none = store
        .stats(None, Some(T0 + 11 * MIN), Some(T0 + 2 * HOUR))
        .await
        .unwrap();
    assert_eq!(none, Stats::default());
    let org = store
        .stats(Some("example.org"), Some(T0), Some(T0 + 3 * HOUR))
        .await
        .unwrap();
    assert_eq!((org.sent, org.delayed), (1, 1));

    // The dashboard's series: two buckets of two hours.
    let series = store
        .series(None, T0, T0 + 4 * HOUR, 2 * HOUR)
        .await
        .unwrap();
    assert_eq!(
        series.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
        [T0, T0 + 2 * HOUR]
    );
    let (first, second) = (&series[0].1, &series[1].1);
    assert_eq!(
        (
            first.sent,
            first.delivered,
            first.bounced,
            first.opened_human,
            first.opened_machine,
            first.clicked_machine
        ),
        (2, 1, 1, 1, 1, 1)
    );
    assert_eq!((second.sent, second.delayed, second.opened), (3, 3, 0));
    let org = store
        .series(Some("Example.ORG"), T0, T0 + 4 * HOUR, HOUR)
        .await
        .unwrap();
    assert_eq!(
        org.iter().map(|(_, s)| s.sent).collect::<Vec<_>>(),
        [0, 0, 1, 0]
    );

    // Search.
    let all_found = store
        .search(&EmailSearch {
            limit: 10,
            ..EmailSearch::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&all_found.rows), [C, B, A], "newest first");
    let row_a = &all_found.rows[2];
    assert_eq!(row_a.from, "News <news@example.com>");
    assert_eq!(
        row_a.recipients,
        [
            ("ann@x.test".to_string(), "delivered".to_string()),
            ("Bob@Y.test".to_string(), "bounced".to_string())
        ]
    );
    let by = |f: fn(&mut EmailSearch, String), v: &str| {
        let mut s = EmailSearch::default();
        f(&mut s, v.to_string());
        s
    };
    assert_eq!(
        search(store, by(|s, v| s.recipient = Some(v), "BOB@y.test")).await,
        [A]
    );
    assert_eq!(
        search(store, by(|s, v| s.subject = Some(v), "50%")).await,
        [A]
    );
    assert_eq!(
        search(store, by(|s, v| s.subject = Some(v), "5_%")).await,
        Vec::<String>::new(),
        "% and _ are literal"
    );
    assert_eq!(
        search(store, by(|s, v| s.subject = Some(v), "SPRING")).await,
        [A]
    );
    assert_eq!(
        search(store, by(|s, v| s.tag = Some(v), "billing")).await,
        [B]
    );
    assert_eq!(
        search(store, by(|s, v| s.tag = Some(v), "bill")).await,
        Vec::<String>::new()
    );
    assert_eq!(
        search(store, by(|s, v| s.status = Some(v), "deferred")).await,
        [C, B]
    );
    assert_eq!(
        search(store, by(|s, v| s.status = Some(v), "  ")).await,
        [C, B, A],
        "blank filters nothing"
    );
    let since = EmailSearch {
        since: Some(T0 + 2 * HOUR),
        tag: Some("news".into()),
        ..EmailSearch::default()
    };
    assert_eq!(search(store, since).await, [C]);
    let until = EmailSearch {
        until: Some(T0 + 2 * HOUR),
        ..EmailSearch::default()
    };
    assert_eq!(search(store, until).await, [A]);
    let two = store
        .search(&EmailSearch {
            limit: 2,
            ..EmailSearch::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&two.rows), [C, B]);

    // Webhook deliveries: one per event of A for the one endpoint.
    let hooks = store.webhooks_for_email(A).await.unwrap();
    let mut hook_events: Vec<i64> = hooks.iter().map(|h| h.event_id).collect();
    hook_events.sort();
    assert_eq!(
        hook_events,
        a_events.iter().map(|e| e.id).collect::<Vec<_>>()
    );
    assert!(hooks.iter().all(|h| h.endpoint == "https://hooks.test/all"
        && h.status == "pending"
        && h.attempts == 0));

    // The queue by destination and reply; the gauges.
    let groups = store.queue_groups(10).await.unwrap();
    let g: Vec<(&str, Option<&str>, i64, Option<i64>)> = groups
        .iter()
        .map(|g| {
            (
                g.destination.as_str(),
                g.reason.as_deref(),
                g.recipients,
                g.next_attempt_at,
            )
        })
        .collect();
    assert_eq!(
        g,
        [
            ("z.test", Some(LATER), 2, Some(T0 + 100 * HOUR)),
            ("w.test", Some(LATER), 1, Some(T0 + 100 * HOUR))
        ]
    );
    assert_eq!(store.queue_groups(1).await.unwrap().len(), 1);
    let gauges = store.gauges().await.unwrap();
    assert_eq!(
        (
            gauges.queue_depth,
            gauges.webhooks_pending,
            gauges.webhooks_failed
        ),
        (3, 13, 0)
    );
    assert!(gauges.domain_statuses.is_empty());

    // Suppressions with their cause.
    let sup = store.suppressions_view(" BO", 10).await.unwrap();
    assert_eq!(sup.len(), 1);
    assert_eq!(
        (
            sup[0].entry.address.as_str(),
            sup[0].entry.domain.as_deref(),
            sup[0].entry.reason.as_str()
        ),
        ("bob@y.test", None, "hard_bounce")
    );
    assert_eq!(
        (sup[0].event_type.as_deref(), sup[0].email_id.as_deref()),
        (Some("email.bounced"), Some(A))
    );
    let every = store.suppressions_view("", 10).await.unwrap();
    let addrs: Vec<(&str, Option<&str>)> = every
        .iter()
        .map(|s| (s.entry.address.as_str(), s.entry.domain.as_deref()))
        .collect();
    assert_eq!(
        addrs,
        [("ann@x.test", Some("example.com")), ("bob@y.test", None)]
    );
    assert_eq!(
        (every[0].event_type.as_deref(), every[0].email_id.as_deref()),
        (None, None)
    );
    assert!(store.suppressions_view("zz", 10).await.unwrap().is_empty());

    // Retry a group now: only its recipients, only with its reply.
    assert_eq!(
        store
            .retry_group("z.test", None, T0 + 5 * HOUR)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .retry_group("Z.TEST", Some(LATER), T0 + 5 * HOUR)
            .await
            .unwrap(),
        2
    );
    let groups = store.queue_groups(10).await.unwrap();
    assert_eq!(groups[0].next_attempt_at, Some(T0 + 5 * HOUR));
    assert_eq!(groups[1].next_attempt_at, Some(T0 + 100 * HOUR));

    // Retention: A's body (all done, old enough), not B's (deferred);
    // the six events before 01:30; webhook rows still pending stay.
    let batch = PruneBatch {
        bodies_before: T0 + 3 * HOUR,
        events_before: T0 + 90 * MIN,
        now: T0 + 10 * HOUR,
        batch: 500,
    };
    let pruned = store.prune(batch).await.unwrap();
    assert_eq!(
        pruned,
        Pruned {
            bodies: 1,
            events: 6,
            webhooks: 0,
            reports: 0
        }
    );
    assert!(store.email(A).await.unwrap().unwrap().pruned);
    assert!(!store.email(B).await.unwrap().unwrap().pruned);
    assert_eq!(
        kinds(&store.events(&one(A)).await.unwrap()),
        ["email.clicked"]
    );
    assert_eq!(
        store.prune(batch).await.unwrap(),
        Pruned::default(),
        "a second pass finds nothing"
    );
    // Batches are bounded.
    let small = PruneBatch {
        events_before: T0 + 4 * HOUR,
        batch: 2,
        ..batch
    };
    assert_eq!(store.prune(small).await.unwrap().events, 2);
    // Stats come from rollups, which retention keeps.
    assert_eq!(store.stats(None, None, None).await.unwrap(), all_stats);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store.db"), options()).unwrap();
    let seeded = seed_sqlite(&store).await;
    scenario(&store, &seeded).await;
    store.close();
}

#[test]
fn queries_on_postgres() {
    if !postgres::available("queries_on_postgres") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let seeded = rt.block_on(async {
        let store = Store::open(&path, options()).unwrap();
        let seeded = seed_sqlite(&store).await;
        store.close();
        seeded
    });
    let url = postgres::url();
    let copied = trackrelay::store::copy::sqlite_to_postgres(&path, &url, None, |_, _| {}).unwrap();
    let rows = |t: &str| copied.iter().find(|(name, _)| name == t).map(|(_, n)| *n);
    assert_eq!((rows("emails"), rows("events")), (Some(3), Some(13)));
    // The CLI's reads on PostgreSQL: the same stats, the export streamed.
    let config_path = dir.path().join("config.toml");
    std::fs::write(
        &config_path,
        format!(
            "[server]\nhostname = \"relay.test\"\ndata_dir = {:?}\n[store]\nbackend = \"postgres\"\nurl = {url:?}\n",
            dir.path().join("nowhere").display().to_string()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_trackrelay"))
            .args(args)
            .arg("--config")
            .arg(&config_path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let st: serde_json::Value = serde_json::from_slice(&run(&["stats", "--json"])).unwrap();
    assert_eq!(
        (
            st["sent"].as_i64(),
            st["delayed"].as_i64(),
            st["opened_human"].as_i64()
        ),
        (Some(5), Some(3), Some(1))
    );
    let csv = run(&["export", "emails", "--csv"]);
    let lines: Vec<&[u8]> = csv
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(lines.len(), 6, "a header and one line per recipient");
    assert!(lines[1].starts_with(A.as_bytes()), "oldest first");
    let events = run(&["events", "--email", A, "--json"]);
    assert_eq!(
        events
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .count(),
        7
    );
    rt.block_on(async {
        let pg = Postgres::connect(PgOptions {
            url,
            pool_size: 4,
            ca_file: None,
            node_id: "node-a".into(),
            webhooks: options().webhooks,
        })
        .await
        .unwrap();
        let store = Store::from_postgres(pg);
        assert_eq!(store.kind(), "postgres");
        scenario(&store, &seeded).await;
        store.close();
    });
}

/// The CLI's read commands open the store read-only: where there is no
/// store they say so and create nothing, and on a store at another schema
/// version (a newer `trackrelay` binary beside an older server) they read
/// without migrating it: no writer, no schema change under a running
/// server.
#[test]
fn cli_reads_never_create_or_migrate_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config_path = dir.path().join("config.toml");
    std::fs::write(
        &config_path,
        format!(
            "[server]\nhostname = \"relay.test\"\ndata_dir = {:?}\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_trackrelay"))
            .args(args)
            .arg("--config")
            .arg(&config_path)
            .output()
            .unwrap()
    };
    let reads: [&[&str]; 4] = [
        &["events"],
        &["stats", "--json"],
        &["export", "events", "--csv"],
        &["export", "emails", "--csv"],
    ];
    for args in reads {
        let out = run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(err.contains("no database at"), "{args:?}: {err}");
        assert!(!data.exists(), "{args:?} created {}", data.display());
    }

    let config = trackrelay::config::Config::parse(
        &std::fs::read_to_string(&config_path).unwrap(),
        &config_path,
    )
    .unwrap();
    let path = config.database_path();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = Store::open(&path, options()).unwrap();
        seed_sqlite(&store).await;
        store.close();
    });
    let older = store::sqlite::schema::version() as i64 - 1;
    let version = || {
        rusqlite::Connection::open(&path)
            .unwrap()
            .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
            .unwrap()
    };
    rusqlite::Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", older)
        .unwrap();
    for args in reads {
        let out = run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(version(), older, "{args:?} migrated the store");
    }
    let out = run(&["stats", "--json"]);
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (st["sent"].as_i64(), st["delayed"].as_i64()),
        (Some(5), Some(3))
    );
    let out = run(&["export", "events", "--csv"]);
    assert_eq!(
        out.stdout
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .count(),
        14,
        "a header and 13 events"
    );
}
