//! `DomainStore` through the trait, the same scenarios on both backends (a
//! SQLite file in a temp dir, a fresh database on a real PostgreSQL
//! server): domain statuses and their history, the MTA-STS policy cache,
//! TLS report counts and reports. Then what several nodes sharing one
//! PostgreSQL database rely on: counts from two nodes add up, one of two
//! concurrent report claims wins, a status change seen by two nodes is
//! recorded once.

mod support;

use serde_json::json;
use support::postgres;
use trackrelay::store::domains::{
    CachedPolicy, Change, CountKey, DomainRow, ReportClaim, ReportRow,
};
use trackrelay::store::postgres::{PgOptions, Postgres};
use trackrelay::store::sqlite::StoreOptions;
use trackrelay::store::Store;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn pg_store(rt: &tokio::runtime::Runtime, url: &str, node: &str) -> Store {
    let options = PgOptions {
        url: url.to_string(),
        pool_size: 4,
        ca_file: None,
        node_id: node.to_string(),
        webhooks: Vec::new(),
    };
    Store::from_postgres(rt.block_on(Postgres::connect(options)).unwrap())
}

/// Runs `scenario` on a SQLite store, then on a PostgreSQL one (when the
/// server is installed; CI requires it).
fn on_both<F>(name: &str, scenario: F)
where
    F: for<'a> Fn(&'a Store) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + 'a>>,
{
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.sqlite3"), StoreOptions::default()).unwrap();
    rt.block_on(scenario(&store));
    store.close();
    if postgres::available(name) {
        let store = pg_store(&rt, &postgres::url(), "node-a");
        rt.block_on(scenario(&store));
        store.close();
    }
}

fn row(domain: &str, status: &str, at: i64) -> DomainRow {
    DomainRow {
        domain: domain.into(),
        status: status.into(),
        status_at: at,
        since: Some(at),
        lost_since: None,
        checked_at: Some(at),
        next_check_at: Some(at + 1000),
        records: json!([{"record": "dkim", "status": status}]),
        reason: Some(format!("why {status}")),
        tracking_host: Some(format!("links.{domain}")),
        tracking_reason: Some("because".into()),
    }
}

fn change(from: &str, to: &str, at: i64, event: bool) -> Change {
    Change {
        from: from.into(),
        to: to.into(),
        at,
        reason: format!("{from} to {to}"),
        event: event.then(|| json!({"name": "x", "status": to, "previous_status": from})),
    }
}

#[test]
fn domain_statuses_history_and_a_change_recorded_once() {
    on_both("domain_statuses_history_and_a_change_recorded_once", |s| {
        Box::pin(async move {
            assert!(s.domain_statuses().await.unwrap().is_empty());
            assert_eq!(s.domain_status("example.com").await.unwrap(), None);
            // First check: quiet (history, no event).
            let first = s
                .save_domain_status(
                    row("Example.COM", "pending", 1),
                    Some(change("not_started", "pending", 1, false)),
                )
                .await
                .unwrap();
            assert_eq!(first, None, "a change without event data stores no event");
            // A later check without a change only refreshes the row.
            let mut same = row("example.com", "pending", 1);
            same.checked_at = Some(5);
            assert_eq!(s.save_domain_status(same, None).await.unwrap(), None);
            let verified = s
                .save_domain_status(
                    row("example.com", "verified", 10),
                    Some(change("pending", "verified", 10, true)),
                )
                .await
                .unwrap();
            assert!(verified.is_some(), "the change's domain.updated event id");
            // Another node, still believing "pending", arrives with the same
            // change: its row is stored, the change is not recorded again.
            let mut late = row("example.com", "verified", 11);
            late.checked_at = Some(11);
            let again = s
                .save_domain_status(late.clone(), Some(change("pending", "verified", 11, true)))
                .await
                .unwrap();
            assert_eq!(again, None, "no second event for the same change");
            s.save_domain_status(
                row("a.example", "failed", 12),
                Some(change("not_started", "failed", 12, true)),
            )
            .await
            .unwrap();

            let all = s.domain_statuses().await.unwrap();
            let names: Vec<&str> = all.iter().map(|r| r.domain.as_str()).collect();
            assert_eq!(names, ["a.example", "example.com"], "by name, lowercased");
            assert_eq!(s.domain_status("EXAMPLE.com").await.unwrap(), Some(late));
            let h = s.domain_history("Example.com", 10).await.unwrap();
            let moves: Vec<(&str, &str, i64)> = h
                .iter()
                .map(|h| (h.from.as_str(), h.to.as_str(), h.at))
                .collect();
            assert_eq!(
                moves,
                [("pending", "verified", 10), ("not_started", "pending", 1)],
                "newest first, the stale node's change not recorded"
            );
            assert_eq!(h[0].reason, "pending to verified");
            assert_eq!(h[0].domain, "example.com");
            assert!(h[0].id > h[1].id);
            assert_eq!(s.domain_history("example.com", 1).await.unwrap().len(), 1);
            assert!(s.domain_history("other.test", 10).await.unwrap().is_empty());
        })
    });
}

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
fn mta_sts_cache_follows_max_age_and_use() {
    on_both("mta_sts_cache_follows_max_age_and_use", |s| {
        Box::pin(async move {
            let due = |now| async move {
                let rows = s.sts_refresh_due(now, 10).await.unwrap();
                rows.into_iter().map(|r| r.domain).collect::<Vec<_>>()
            };
            s.put_sts_policy(policy("Used.test", 0)).await.unwrap();
            s.put_sts_policy(policy("unused.test", -5000))
                .await
                .unwrap();
            assert_eq!(
                s.sts_policy("USED.test").await.unwrap(),
                Some(policy("used.test", 0)),
                "stored lowercased, found in any case"
            );
            assert_eq!(s.sts_policy("none.test").await.unwrap(), None);
            // Three quarters of max_age are gone at 3000.
            assert!(due(2999).await.is_empty());
            assert_eq!(due(3000).await, ["used.test"]);
            // Used within max_age of now: still due past expiry.
            assert_eq!(due(4000).await, ["used.test"]);
            assert!(due(4001).await.is_empty(), "used 4001 ms ago");
            s.mark_sts_used("UNUSED.test", 3500).await.unwrap();
            s.mark_sts_used("unused.test", 100).await.unwrap();
            assert_eq!(
                s.sts_policy("unused.test").await.unwrap().unwrap().used_at,
                3500,
                "a use never moves back"
            );
            assert_eq!(due(4001).await, ["unused.test"]);
            // A refresh (used_at 0) replaces the policy, keeps the use.
            let refreshed = CachedPolicy {
                policy_id: "2".into(),
                fetched_at: 3600,
                expires_at: 7600,
                ..policy("unused.test", 0)
            };
            s.put_sts_policy(refreshed).await.unwrap();
            let got = s.sts_policy("unused.test").await.unwrap().unwrap();
            assert_eq!(
                (got.policy_id.as_str(), got.fetched_at, got.used_at),
                ("2", 3600, 3500)
            );
            assert_eq!(s.sts_refresh_due(3000, 1).await.unwrap().len(), 1);
            // Dropped once expired for longer than max_age (4000 + 4000).
            assert_eq!(s.drop_stale_sts(8000).await.unwrap(), 0);
            assert_eq!(s.drop_stale_sts(8001).await.unwrap(), 1);
            assert_eq!(s.sts_policy("used.test").await.unwrap(), None);
            assert!(s.sts_policy("unused.test").await.unwrap().is_some());
        })
    });
}

fn key(day: &str, domain: &str, result: &str) -> CountKey {
    CountKey {
        day: day.into(),
        policy_domain: domain.into(),
        policy_type: "sts".into(),
        policy_strings: "[]".into(),
        mx_host: "[]".into(),
        result_type: result.into(),
        sending_ip: String::new(),
        receiving_mx: if result.is_empty() { "" } else { "mx.test" }.into(),
        receiving_ip: String::new(),
    }
}

fn pending(domain: &str, day: &str, at: i64) -> ReportRow {
    ReportRow {
        policy_domain: domain.into(),
        day: day.into(),
        status: "pending".into(),
        report_id: format!("{day}_{domain}"),
        report: Some("{}".into()),
        rua: vec!["mailto:a@b.test".into(), "https://r.test/x".into()],
        done: vec![],
        attempts: 0,
        next_attempt_at: Some(at),
        last_error: None,
        created_at: at,
        sent_at: None,
    }
}

fn claim(due_by: i64, lease_until: i64) -> ReportClaim {
    ReportClaim {
        due_by,
        lease_until,
        day: None,
        domain: None,
        limit: 100,
    }
}

#[test]
fn tls_report_counts_reports_claims_and_pruning() {
    on_both("tls_report_counts_reports_claims_and_pruning", |s| {
        Box::pin(async move {
            let batch = vec![
                (key("2026-11-23", "a.test", ""), 2),
                (key("2026-11-23", "a.test", "starttls-not-supported"), 1),
                (key("2026-11-24", "a.test", ""), 5),
                (key("2026-11-23", "b.test", ""), 7),
            ];
            s.add_tls_counts(batch.clone()).await.unwrap();
            s.add_tls_counts(batch[..1].to_vec()).await.unwrap();
            s.add_tls_counts(Vec::new()).await.unwrap();
            let counts = s.tls_counts("a.test", "2026-11-23").await.unwrap();
            assert_eq!(
                counts,
                [
                    (key("2026-11-23", "a.test", ""), 4),
                    (key("2026-11-23", "a.test", "starttls-not-supported"), 1)
                ],
                "added up, successes first"
            );
            assert_eq!(
                s.tls_unreported_days("2026-11-24").await.unwrap(),
                [
                    ("a.test".to_string(), "2026-11-23".to_string()),
                    ("b.test".into(), "2026-11-23".into())
                ],
                "finished days only"
            );

            // A day is decided once.
            assert!(s
                .insert_tls_report(pending("a.test", "2026-11-23", 100))
                .await
                .unwrap());
            let mut other = pending("a.test", "2026-11-23", 100);
            other.status = "no_policy".into();
            assert!(!s.insert_tls_report(other).await.unwrap());
            let mut no_policy = pending("b.test", "2026-11-23", 100);
            no_policy.status = "no_policy".into();
            no_policy.next_attempt_at = None;
            assert!(s.insert_tls_report(no_policy).await.unwrap());
            assert!(s
                .tls_unreported_days("2026-11-24")
                .await
                .unwrap()
                .is_empty());

            let list = s.tls_report_list(None, None, 10).await.unwrap();
            let shown: Vec<(&str, &str, i64, i64, Option<&str>)> = list
                .iter()
                .map(|x| {
                    (
                        x.day.as_str(),
                        x.policy_domain.as_str(),
                        x.successful,
                        x.failed,
                        x.report.as_ref().map(|r| r.status.as_str()),
                    )
                })
                .collect();
            assert_eq!(
                shown,
                [
                    ("2026-11-24", "a.test", 5, 0, None),
                    ("2026-11-23", "a.test", 4, 1, Some("pending")),
                    ("2026-11-23", "b.test", 7, 0, Some("no_policy")),
                ]
            );
            assert_eq!(list[0].to_json()["status"], "counting");
            assert_eq!(list[1].report, Some(pending("a.test", "2026-11-23", 100)));
            let one = s
                .tls_report_list(Some("2026-11-23"), Some("b.test"), 10)
                .await
                .unwrap();
            assert_eq!(one.len(), 1);
            assert_eq!(s.tls_report_list(None, None, 1).await.unwrap().len(), 1);

            // Claims: not before it is due; then once until the lease ends.
            assert!(s
                .claim_tls_reports(claim(99, 1000))
                .await
                .unwrap()
                .is_empty());
            let got = s.claim_tls_reports(claim(100, 1000)).await.unwrap();
            assert_eq!(got.len(), 1, "only the pending report");
            assert_eq!(got[0].next_attempt_at, Some(1000));
            assert!(
                s.claim_tls_reports(claim(999, 2000))
                    .await
                    .unwrap()
                    .is_empty(),
                "held until the lease ends"
            );
            let mut only = claim(i64::MAX, 3000);
            only.day = Some("2026-11-22".into());
            assert!(s.claim_tls_reports(only).await.unwrap().is_empty());
            let mut only = claim(i64::MAX, 3000);
            only.domain = Some("a.test".into());
            only.day = Some("2026-11-23".into());
            let mut row = s.claim_tls_reports(only).await.unwrap().remove(0);

            // A round: one destination reached, the other retried later.
            row.attempts = 1;
            row.done = vec!["mailto:a@b.test".into()];
            row.next_attempt_at = Some(5000);
            row.last_error = Some("https://r.test/x: HTTP 503".into());
            s.record_tls_attempt(row.clone()).await.unwrap();
            assert_eq!(
                s.tls_report("a.test", "2026-11-23").await.unwrap(),
                Some(row.clone())
            );
            row.status = "sent".into();
            row.sent_at = Some(6000);
            row.next_attempt_at = None;
            s.record_tls_attempt(row.clone()).await.unwrap();
            let mut late = row.clone();
            late.status = "failed".into();
            s.record_tls_attempt(late).await.unwrap();
            assert_eq!(
                s.tls_report("a.test", "2026-11-23").await.unwrap(),
                Some(row),
                "a settled report does not change"
            );
            assert!(s
                .claim_tls_reports(claim(i64::MAX, i64::MAX))
                .await
                .unwrap()
                .is_empty());
            assert_eq!(s.tls_report("c.test", "2026-11-23").await.unwrap(), None);

            // Retention: days before 2026-11-24 go, counts and reports.
            assert_eq!(s.prune_tls_reports("2026-11-24").await.unwrap(), 5);
            let left = s.tls_report_list(None, None, 10).await.unwrap();
            assert_eq!(left.len(), 1);
            assert_eq!(left[0].day, "2026-11-24");
            assert_eq!(s.tls_report("a.test", "2026-11-23").await.unwrap(), None);
        })
    });
}

/// Two stores on one PostgreSQL database stand for two relay nodes.
fn two_nodes(name: &str) -> Option<(tokio::runtime::Runtime, Store, Store)> {
    if !postgres::available(name) {
        return None;
    }
    let rt = rt();
    let url = postgres::url();
    let a = pg_store(&rt, &url, "node-a");
    let b = pg_store(&rt, &url, "node-b");
    Some((rt, a, b))
}

#[test]
fn two_nodes_counts_add_up_and_one_claim_wins() {
    let Some((rt, a, b)) = two_nodes("two_nodes_counts_add_up_and_one_claim_wins") else {
        return;
    };
    rt.block_on(async {
        // Both nodes flush the same keys at once, in opposite orders.
        let keys = [
            key("2026-11-23", "a.test", ""),
            key("2026-11-23", "a.test", "certificate-expired"),
            key("2026-11-23", "b.test", ""),
        ];
        let flush = |s: Store, reverse: bool| {
            let mut batch: Vec<(CountKey, i64)> = keys.iter().map(|k| (k.clone(), 1)).collect();
            if reverse {
                batch.reverse();
            }
            tokio::spawn(async move {
                for _ in 0..40 {
                    s.add_tls_counts(batch.clone()).await.unwrap();
                }
            })
        };
        let (x, y) = (flush(a.clone(), false), flush(b.clone(), true));
        x.await.unwrap();
        y.await.unwrap();
        let mut total = a.tls_counts("a.test", "2026-11-23").await.unwrap();
        total.extend(b.tls_counts("b.test", "2026-11-23").await.unwrap());
        let n: Vec<i64> = total.iter().map(|(_, n)| *n).collect();
        assert_eq!(n, [80, 80, 80], "every increment of both nodes counted");

        // Both decide the same days; both try to claim each at once.
        for i in 0..20 {
            let day = format!("2026-10-{:02}", i + 1);
            let (ia, ib) = tokio::join!(
                a.insert_tls_report(pending("a.test", &day, 100)),
                b.insert_tls_report(pending("a.test", &day, 100)),
            );
            assert_eq!(
                [ia.unwrap(), ib.unwrap()].iter().filter(|c| **c).count(),
                1,
                "one report row per day"
            );
            let mut only = claim(1000, 10_000);
            only.day = Some(day.clone());
            let (ca, cb) =
                tokio::join!(a.claim_tls_reports(only.clone()), b.claim_tls_reports(only));
            let (ca, cb) = (ca.unwrap(), cb.unwrap());
            assert_eq!(ca.len() + cb.len(), 1, "{day}: exactly one node sends it");
        }
        // A claim whose node died is taken over once its lease is over.
        let after = b.claim_tls_reports(claim(10_000, 20_000)).await.unwrap();
        assert_eq!(after.len(), 20);
    });
    a.close();
    b.close();
}

#[test]
fn two_nodes_record_a_status_change_once() {
    let Some((rt, a, b)) = two_nodes("two_nodes_record_a_status_change_once") else {
        return;
    };
    rt.block_on(async {
        for i in 0..10 {
            let domain = format!("d{i}.example");
            // Both check a new domain at once, then both see it verified.
            let (x, y) = tokio::join!(
                a.save_domain_status(
                    row(&domain, "pending", 1),
                    Some(change("not_started", "pending", 1, false))
                ),
                b.save_domain_status(
                    row(&domain, "pending", 2),
                    Some(change("not_started", "pending", 2, false))
                ),
            );
            x.unwrap();
            y.unwrap();
            let (x, y) = tokio::join!(
                a.save_domain_status(
                    row(&domain, "verified", 3),
                    Some(change("pending", "verified", 3, true))
                ),
                b.save_domain_status(
                    row(&domain, "verified", 4),
                    Some(change("pending", "verified", 4, true))
                ),
            );
            let events = [x.unwrap(), y.unwrap()];
            assert_eq!(
                events.iter().filter(|e| e.is_some()).count(),
                1,
                "{domain}: one domain.updated"
            );
            let h = a.domain_history(&domain, 10).await.unwrap();
            let moves: Vec<(&str, &str)> =
                h.iter().map(|h| (h.from.as_str(), h.to.as_str())).collect();
            assert_eq!(
                moves,
                [("pending", "verified"), ("not_started", "pending")],
                "{domain}: each change once"
            );
        }
    });
    a.close();
    b.close();
}
