//! `FeedbackStore` on both backends, through the trait only: the same
//! scenario against a SQLite store in a temporary directory and against a
//! real PostgreSQL database. Reports are real DSN and ARF messages,
//! classified and planned by the feedback processor's own code
//! (`inbound::process::{classify, plan}`), so what is checked is what the
//! processor gets from each backend.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use support::postgres;
use trackrelay::feedback::return_path;
use trackrelay::inbound::process::{classify, plan, Rules};
use trackrelay::prepare::TokenKeys;
use trackrelay::store::feedback::{
    Action, Applied, NewReport, Outcome, Plan, ReportWork, Suppression,
};
use trackrelay::store::Store;
use uuid::Uuid;

const NOW: i64 = 1_000_000;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn keys() -> TokenKeys {
    TokenKeys::new([5u8; 32], vec![])
}

/// The fixed emails the reports name. Seeded with the same SQL on both
/// backends.
// TODO(merge): seed through `QueueStore::accept` once the queue area's
// PostgreSQL implementation is merged.
struct Emails {
    /// From example.com (suppresses on hard_bounce and complaint): two
    /// recipients, delivered.
    news: Uuid,
    /// From other.example (suppresses on unsubscribe only): one recipient,
    /// delivered.
    other: Uuid,
}

fn seed_sql(e: &Emails) -> String {
    format!(
        "INSERT INTO emails (id, created_at, domain, mail_from, size)
           VALUES ('{n}', 1, 'Example.COM', 'news@example.com', 0),
                  ('{o}', 1, 'other.example', 'a@other.example', 0);
         INSERT INTO recipients (email_id, idx, address, status, delivered_at)
           VALUES ('{n}', 0, 'Someone@Example.net', 'delivered', 5),
                  ('{n}', 1, 'second@example.net', 'delivered', 5),
                  ('{o}', 0, 'third@example.net', 'delivered', 5);",
        n = e.news,
        o = e.other
    )
}

fn rules() -> Arc<Rules> {
    let set = |d: &[&str]| d.iter().map(|s| s.to_string()).collect::<HashSet<_>>();
    Arc::new(Rules {
        hard_bounce: set(&["example.com"]),
        complaint: set(&["example.com"]),
        unsubscribe: set(&["other.example"]),
    })
}

fn report(to: &str, raw: String) -> NewReport {
    NewReport {
        received_at: 500,
        peer_ip: "127.0.0.9".into(),
        helo: "mx.example.net".into(),
        mail_from: String::new(),
        rcpt_to: vec![to.into()],
        raw: raw.into_bytes(),
    }
}

fn dsn(rcpt: &str, action: &str, status: &str) -> String {
    format!(
        "From: MAILER-DAEMON@mx.example.net\r\nSubject: Undelivered Mail\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\n\
         Final-Recipient: rfc822; {rcpt}\r\nAction: {action}\r\nStatus: {status}\r\n\
         Diagnostic-Code: smtp; 550 {status} no such user\r\n\r\n--b--\r\n"
    )
}

fn arf() -> String {
    "From: fbl@isp.example\r\nMIME-Version: 1.0\r\n\
     Content-Type: multipart/report; report-type=feedback-report; boundary=\"b\"\r\n\r\n\
     --b\r\nContent-Type: text/plain\r\n\r\nreport\r\n\
     --b\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nUser-Agent: isp/1\r\n\
     --b--\r\n"
        .into()
}

struct Ctx<'a> {
    rt: &'a tokio::runtime::Runtime,
    store: &'a Store,
    keys: TokenKeys,
}

impl Ctx<'_> {
    fn to(&self, local: &str, email: Uuid, idx: u32) -> String {
        return_path::address(&self.keys, local, "bounces.example.com", email, idx).unwrap()
    }

    /// Stores a report as the listener does, reads it back as the
    /// processor does, and applies it alone; returns its id and result.
    fn receive(&self, r: NewReport) -> (i64, Applied) {
        let id = self.rt.block_on(self.store.insert_report(r)).unwrap();
        let pending = self
            .rt
            .block_on(self.store.pending_reports(id - 1, 1))
            .unwrap();
        assert_eq!(pending[0].id, id);
        let work = plan(&classify(&pending[0], &self.keys), &rules());
        let mut out = self.apply(vec![work]);
        assert_eq!(out.len(), 1);
        (id, out.remove(0))
    }

    fn apply(&self, work: Vec<ReportWork>) -> Vec<Applied> {
        self.rt
            .block_on(self.store.apply_reports(work, NOW))
            .unwrap()
    }

    fn outcome(&self, id: i64) -> serde_json::Value {
        let r = self.rt.block_on(self.store.report(id)).unwrap().unwrap();
        assert_eq!(r.processed_at, Some(NOW));
        r.outcome.unwrap()
    }

    fn lookup(&self, address: &str, domain: &str, now: i64) -> Option<(String, i64)> {
        self.rt
            .block_on(self.store.suppression_lookup(address, domain, now))
            .unwrap()
    }

    fn list(&self, domain: Option<&str>) -> Vec<Suppression> {
        self.rt
            .block_on(self.store.suppressions(domain, None, 0))
            .unwrap()
    }
}

fn reports_scenario(c: &Ctx, e: &Emails) {
    // Stored and read back as received, oldest first.
    let someone = c.to("bounces", e.news, 0);
    let first =
        c.rt.block_on(c.store.insert_report(report(
            &someone,
            dsn("someone@example.net", "failed", "5.1.1"),
        )))
        .unwrap();
    let pending = c.rt.block_on(c.store.pending_reports(0, 10)).unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].rcpt_to, [someone.as_str()]);
    assert_eq!(pending[0].received_at, 500);
    assert!(c
        .rt
        .block_on(c.store.pending_reports(first, 10))
        .unwrap()
        .is_empty());
    let info = c.rt.block_on(c.store.report(first)).unwrap().unwrap();
    assert_eq!(info.processed_at, None);
    assert_eq!(info.size, info.raw.len() as i64);
    assert_eq!(info.peer_ip, "127.0.0.9");

    // A failed DSN: bounced, suppressed (example.com suppresses on
    // hard_bounce), the outcome kept with the event.
    let work = plan(&classify(&pending[0], &c.keys), &rules());
    assert_eq!(c.apply(vec![work]), [(first, Ok(Some(Outcome::Bounced)))]);
    let o = c.outcome(first);
    assert_eq!(o["outcome"], "bounced");
    assert_eq!(o["changed"], true);
    assert_eq!(o["previous_status"], "delivered");
    assert_eq!(o["suppressed"], true);
    assert_eq!(o["linked_by"], "envelope");
    assert_eq!(o["recipient"], "Someone@Example.net");
    assert_eq!(o["bounce"]["type"], "permanent");
    assert_eq!(o["bounce"]["report_id"], first);
    let bounce_event = o["event_id"].as_i64().expect("an event id");
    assert_eq!(
        c.lookup("SOMEONE@example.net", "example.com", NOW),
        Some(("hard_bounce".into(), 500))
    );
    assert_eq!(c.lookup("someone@example.net", "other.example", NOW), None);
    let listed = c.list(None);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].event_id, Some(bounce_event));
    assert_eq!(listed[0].domain.as_deref(), Some("example.com"));

    // The same row again (another pass, another node): nothing happens.
    let again = plan(&classify(&pending[0], &c.keys), &rules());
    assert_eq!(c.apply(vec![again]), [(first, Ok(None))]);
    // The same bounce as a new report: no second event, kept as such.
    let (id, r) = c.receive(report(
        &someone,
        dsn("someone@example.net", "failed", "5.1.1"),
    ));
    assert_eq!(r, (id, Ok(Some(Outcome::Bounced))));
    let o = c.outcome(id);
    assert_eq!(
        (o["changed"].clone(), o["why"].clone()),
        (false.into(), "already bounced".into())
    );
    // A later delay for a bounced recipient changes nothing either.
    let (id, r) = c.receive(report(
        &someone,
        dsn("someone@example.net", "delayed", "4.4.7"),
    ));
    assert_eq!(r, (id, Ok(Some(Outcome::Delayed))));
    assert_eq!(c.outcome(id)["changed"], false);

    // A complaint: once per recipient, suppressed with reason complaint.
    let second = c.to("bounces", e.news, 1);
    let (id, r) = c.receive(report(&second, arf()));
    assert_eq!(r, (id, Ok(Some(Outcome::Complained))));
    let o = c.outcome(id);
    assert_eq!(o["changed"], true);
    assert_eq!(o["suppressed"], true);
    assert_eq!(o["feedback_type"], "abuse");
    assert_eq!(
        c.lookup("second@example.net", "example.com", NOW),
        Some(("complaint".into(), 500))
    );
    let (id, r) = c.receive(report(&second, arf()));
    assert_eq!(r, (id, Ok(Some(Outcome::Complained))));
    assert_eq!(c.outcome(id)["why"], "already complained");

    // A hard bounce from a domain that does not suppress on hard_bounce:
    // bounced, not suppressed.
    let third = c.to("bounces", e.other, 0);
    let (id, r) = c.receive(report(&third, dsn("third@example.net", "failed", "5.1.1")));
    assert_eq!(r, (id, Ok(Some(Outcome::Bounced))));
    assert_eq!(c.outcome(id)["suppressed"], false);
    assert_eq!(c.lookup("third@example.net", "other.example", NOW), None);

    // Mail to the unsubscribe mailbox: one unsubscribe, suppressed there
    // (other.example suppresses on unsubscribe); a repeat adds nothing.
    let unsub = c.to("unsubscribe", e.other, 0);
    let (id, r) = c.receive(report(
        &unsub,
        "Subject: unsubscribe\r\n\r\nplease\r\n".into(),
    ));
    assert_eq!(r, (id, Ok(Some(Outcome::Unsubscribe))));
    let o = c.outcome(id);
    assert_eq!(
        (o["changed"].clone(), o["suppressed"].clone()),
        (true.into(), true.into())
    );
    let unsub_event = o["event_id"].as_i64().unwrap();
    assert_eq!(
        c.lookup("third@example.net", "other.example", NOW),
        Some(("unsubscribe".into(), 500))
    );
    let (id, r) = c.receive(report(
        &unsub,
        "Subject: unsubscribe\r\n\r\nagain\r\n".into(),
    ));
    assert_eq!(r, (id, Ok(Some(Outcome::Unsubscribe))));
    let o = c.outcome(id);
    assert_eq!(o["why"], "unsubscribed before");
    assert_eq!(o["event_id"], unsub_event);
    assert_eq!(o["suppressed"], false);

    // Forged and unknown tokens: deleted, nothing changed.
    let other_keys = TokenKeys::new([9u8; 32], vec![]);
    let forged =
        return_path::address(&other_keys, "bounces", "bounces.example.com", e.news, 0).unwrap();
    let (id, r) = c.receive(report(&forged, dsn("x@example.net", "failed", "5.1.1")));
    assert_eq!(r, (id, Ok(Some(Outcome::Forged))));
    assert!(c.rt.block_on(c.store.report(id)).unwrap().is_none());
    let stranger = c.to("bounces", Uuid::now_v7(), 0);
    let (id, r) = c.receive(report(&stranger, dsn("x@example.net", "failed", "5.1.1")));
    assert_eq!(r, (id, Ok(Some(Outcome::Unlinked))));
    assert!(c.rt.block_on(c.store.report(id)).unwrap().is_none());

    // One batch: a parser failure kept with its error, a report whose
    // effects fail (here: the decision panics) rolled back alone and kept
    // with the error, and the next one applied all the same.
    let ids: Vec<i64> = (0..3)
        .map(|_| {
            c.rt.block_on(c.store.insert_report(report(&someone, arf())))
                .unwrap()
        })
        .collect();
    let work = vec![
        ReportWork {
            id: ids[0],
            kind: "unknown",
            received_at: 500,
            plan: Plan::Error("the parser failed".into()),
        },
        ReportWork {
            id: ids[1],
            kind: "arf",
            received_at: 500,
            plan: Plan::Linked {
                email_id: e.other.to_string(),
                idx: 0,
                linked_by: "envelope",
                decide: Box::new(|_| panic!("a bug in the decision")),
            },
        },
        ReportWork {
            id: ids[2],
            kind: "arf",
            received_at: 500,
            plan: Plan::Linked {
                email_id: e.other.to_string(),
                idx: 0,
                linked_by: "quoted_token",
                decide: Box::new(|r| {
                    Action::Nothing(Outcome::Ignored, format!("saw {}", r.status))
                }),
            },
        },
    ];
    let out = c.apply(work);
    assert_eq!(out[0], (ids[0], Ok(Some(Outcome::Ignored))));
    assert_eq!(out[1].0, ids[1]);
    assert!(
        out[1].1.as_ref().is_err_and(|e| e.contains("panicked")),
        "{out:?}"
    );
    assert_eq!(out[2], (ids[2], Ok(Some(Outcome::Ignored))));
    assert_eq!(c.outcome(ids[0])["error"], "the parser failed");
    assert!(c.outcome(ids[1])["error"]
        .as_str()
        .unwrap()
        .contains("panicked"));
    assert_eq!(c.outcome(ids[2])["why"], "saw bounced");
    assert!(c
        .rt
        .block_on(c.store.pending_reports(0, 100))
        .unwrap()
        .is_empty());
}

fn entry(address: &str, domain: Option<&str>, reason: &str, created: i64) -> Suppression {
    Suppression {
        address: address.into(),
        domain: domain.map(Into::into),
        reason: reason.into(),
        event_id: None,
        created_at: created,
        expires_at: None,
    }
}

fn suppressions_scenario(c: &Ctx) {
    let add = |s: Suppression| c.rt.block_on(c.store.add_suppression(s)).unwrap();
    let remove =
        |a: &str, d: Option<&str>| c.rt.block_on(c.store.remove_suppression(a, d)).unwrap();
    // Case-insensitive, idempotent: the first reason is kept.
    assert!(add(entry("Bob@Example.NET", None, "manual", 100)));
    assert!(!add(entry("bob@example.net", None, "complaint", 200)));
    assert_eq!(
        c.lookup("BOB@example.net", "any.example", 300),
        Some(("manual".into(), 100))
    );
    // Scoped to one sending domain (stored lowercased).
    assert!(add(entry(
        "ann@x.test",
        Some("Example.ORG"),
        "unsubscribe",
        100
    )));
    assert!(c.lookup("ann@x.test", "example.org", 300).is_some());
    assert!(c.lookup("ann@x.test", "example.net", 300).is_none());
    // Expiry: applies before, not at or after.
    let mut e = entry("cat@x.test", None, "manual", 100);
    e.expires_at = Some(150);
    assert!(add(e));
    assert!(c.lookup("cat@x.test", "example.org", 149).is_some());
    assert!(c.lookup("cat@x.test", "example.org", 150).is_none());
    // Removal per scope.
    assert!(!remove("ann@x.test", None), "no every-domain entry");
    assert!(remove("ANN@x.test", Some("example.org")));
    assert!(!remove("ann@x.test", Some("example.org")));
    assert!(c.lookup("ann@x.test", "example.org", 300).is_none());

    // Lists: in address order; a domain filter keeps that domain's entries
    // and the every-domain ones; pages join up to the whole list.
    assert!(add(entry("dan@x.test", Some("example.org"), "manual", 100)));
    assert!(add(entry("dan@x.test", Some("example.com"), "manual", 100)));
    let all = c.list(None);
    let keys: Vec<(String, Option<String>)> = all
        .iter()
        .map(|s| (s.address.clone(), s.domain.clone()))
        .collect();
    let mut sorted = keys.clone();
    sorted.sort_by(|a, b| {
        (a.0.as_str(), a.1.as_deref().unwrap_or(""))
            .cmp(&(b.0.as_str(), b.1.as_deref().unwrap_or("")))
    });
    assert_eq!(keys, sorted);
    assert!(keys.contains(&("bob@example.net".into(), None)));
    let org: Vec<String> = c
        .list(Some("Example.ORG"))
        .iter()
        .map(|s| format!("{}/{}", s.address, s.domain.as_deref().unwrap_or("*")))
        .collect();
    assert!(
        org.contains(&"dan@x.test/example.org".to_string()),
        "{org:?}"
    );
    assert!(
        !org.contains(&"dan@x.test/example.com".to_string()),
        "{org:?}"
    );
    assert!(org.contains(&"bob@example.net/*".to_string()), "{org:?}");
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page =
            c.rt.block_on(c.store.suppressions(None, after.take(), 2))
                .unwrap();
        assert!(page.len() <= 2);
        paged.extend(page.iter().cloned());
        match page.last() {
            Some(last) if page.len() == 2 => after = Some(last.cursor()),
            _ => break,
        }
    }
    assert_eq!(paged, all);

    // Export, clear, import: the same list back; importing again adds
    // nothing; a new row among old ones is the only one added.
    for s in &all {
        assert!(remove(&s.address, s.domain.as_deref()));
    }
    assert!(c.list(None).is_empty());
    let n =
        c.rt.block_on(c.store.import_suppressions(all.clone()))
            .unwrap();
    assert_eq!(n, all.len());
    assert_eq!(c.list(None), all);
    let mut more = all.clone();
    more.push(entry("eve@x.test", None, "manual", 400));
    let n = c.rt.block_on(c.store.import_suppressions(more)).unwrap();
    assert_eq!(n, 1);
    assert_eq!(c.list(None).len(), all.len() + 1);
}

fn scenario(rt: &tokio::runtime::Runtime, store: &Store, seed: impl Fn(&str)) {
    let e = Emails {
        news: Uuid::now_v7(),
        other: Uuid::now_v7(),
    };
    seed(&seed_sql(&e));
    let c = Ctx {
        rt,
        store,
        keys: keys(),
    };
    reports_scenario(&c, &e);
    // The scenario above left three suppressions; start the list afresh.
    for s in c.list(None) {
        assert!(rt
            .block_on(store.remove_suppression(&s.address, s.domain.as_deref()))
            .unwrap());
    }
    suppressions_scenario(&c);
}

#[test]
fn feedback_store_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.sqlite3");
    let store = Store::open(&path, Default::default()).unwrap();
    let rt = rt();
    scenario(&rt, &store, |sql| {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .unwrap();
        conn.execute_batch(sql).unwrap();
    });
    store.close();
}

fn pg_store(rt: &tokio::runtime::Runtime, url: &str, node: &str) -> Store {
    let pg = rt
        .block_on(trackrelay::store::postgres::Postgres::connect(
            trackrelay::store::postgres::PgOptions {
                url: url.to_string(),
                pool_size: 4,
                ca_file: None,
                node_id: node.into(),
                webhooks: Vec::new(),
            },
        ))
        .unwrap();
    Store::from_postgres(pg)
}

#[test]
fn feedback_store_on_postgres() {
    if !postgres::available("feedback_store_on_postgres") {
        return;
    }
    let url = postgres::url();
    let rt = rt();
    let store = pg_store(&rt, &url, "node-a");
    scenario(&rt, &store, |sql| {
        postgres::query(&url, sql);
    });
    store.close();
}

/// Two nodes on one database read the same pending reports and apply them
/// at once: each report is applied by one node, and a recipient named by
/// several reports gets one bounce and one complaint.
#[test]
fn two_nodes_apply_each_report_once() {
    if !postgres::available("two_nodes_apply_each_report_once") {
        return;
    }
    let url = postgres::url();
    let rt = rt();
    let (a, b) = (pg_store(&rt, &url, "node-a"), pg_store(&rt, &url, "node-b"));
    let e = Emails {
        news: Uuid::now_v7(),
        other: Uuid::now_v7(),
    };
    postgres::query(&url, &seed_sql(&e));
    let c = Ctx {
        rt: &rt,
        store: &a,
        keys: keys(),
    };
    let (bounce_to, arf_to) = (c.to("bounces", e.news, 0), c.to("bounces", e.news, 1));
    let mut ids = Vec::new();
    for i in 0..40 {
        let r = if i % 2 == 0 {
            report(&bounce_to, dsn("someone@example.net", "failed", "5.1.1"))
        } else {
            report(&arf_to, arf())
        };
        ids.push(rt.block_on(a.insert_report(r)).unwrap());
    }
    let pending = rt.block_on(b.pending_reports(0, 100)).unwrap();
    assert_eq!(pending.len(), ids.len());
    // Each node in batches of 8, as the processor does, the two at once.
    // A batch the server fails for a deadlock (two batches locking the two
    // recipients in opposite orders) was rolled back whole: it is planned
    // and applied again, as the processor's next pass would.
    let run = |store: Store, pending: Vec<trackrelay::store::feedback::Pending>| async move {
        let keys = keys();
        let mut out = Vec::new();
        for batch in pending.chunks(8) {
            for attempt in 1.. {
                assert!(attempt <= 20, "a batch deadlocked 20 times");
                let work = batch
                    .iter()
                    .map(|p| plan(&classify(p, &keys), &rules()))
                    .collect();
                match store.apply_reports(work, NOW).await {
                    Ok(done) => {
                        out.extend(done);
                        break;
                    }
                    Err(e) if e.to_string().contains("deadlock") => {}
                    Err(e) => panic!("applying a batch: {e}"),
                }
            }
        }
        out
    };
    let (ra, rb) = rt.block_on(async {
        let ta = tokio::spawn(run(a.clone(), pending.clone()));
        let tb = tokio::spawn(run(b.clone(), pending.clone()));
        (ta.await.unwrap(), tb.await.unwrap())
    });
    let mut applied = 0;
    for (x, y) in ra.iter().zip(&rb) {
        assert_eq!(x.0, y.0);
        match (&x.1, &y.1) {
            (Ok(Some(_)), Ok(None)) | (Ok(None), Ok(Some(_))) => applied += 1,
            other => panic!("report {}: {other:?}", x.0),
        }
    }
    assert_eq!(applied, ids.len(), "every report applied by one node");
    let changed = |id: &i64| c.outcome(*id)["changed"] == true;
    let bounces = ids.iter().step_by(2).filter(|id| changed(id)).count();
    let complaints = ids
        .iter()
        .skip(1)
        .step_by(2)
        .filter(|id| changed(id))
        .count();
    assert_eq!((bounces, complaints), (1, 1));
    assert_eq!(
        c.lookup("someone@example.net", "example.com", NOW),
        Some(("hard_bounce".into(), 500))
    );
    a.close();
    b.close();
}

/// The operator's commands over the real binary, on a store that exists
/// (SQLite: made by `Store::open`; PostgreSQL: migrated by the first
/// command): add, list, remove, export, import, and `reports show`.
fn cli_scenario(config: &std::path::Path) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_trackrelay"))
            .args(args)
            .arg("--config")
            .arg(config)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let ok = |args: &[&str]| {
        let (ok, out, err) = run(args);
        assert!(ok, "{args:?}: {err}");
        out
    };
    let out = ok(&[
        "suppressions",
        "add",
        "Bob@Example.NET",
        "--reason",
        "complaint",
    ]);
    assert!(
        out.contains("bob@example.net suppressed for every domain (complaint)"),
        "{out}"
    );
    ok(&[
        "suppressions",
        "add",
        "ann@x.test",
        "--domain",
        "Example.ORG",
    ]);
    let out = ok(&["suppressions", "add", "bob@example.net"]);
    assert!(out.contains("already suppressed"), "{out}");
    let listed: Vec<serde_json::Value> = ok(&["suppressions", "list", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["address"], "ann@x.test");
    assert_eq!(listed[0]["domain"], "example.org");
    assert_eq!(listed[1]["reason"], "complaint");
    assert_eq!(listed[1]["domain"], serde_json::Value::Null);
    let out = ok(&["suppressions", "list", "--domain", "example.net"]);
    assert!(out.contains("1 suppressed address(es)"), "{out}");
    let csv = ok(&["suppressions", "export", "--csv"]);
    assert_eq!(csv.lines().count(), 3, "{csv}");
    ok(&["suppressions", "remove", "bob@example.net"]);
    let (removed, _, err) = run(&["suppressions", "remove", "ann@x.test"]);
    assert!(
        !removed && err.contains("not suppressed for every domain"),
        "{err}"
    );
    ok(&[
        "suppressions",
        "remove",
        "ann@x.test",
        "--domain",
        "example.org",
    ]);
    assert_eq!(ok(&["suppressions", "export", "--csv"]).lines().count(), 1);
    let file = config.with_file_name("export.csv");
    std::fs::write(&file, &csv).unwrap();
    let out = ok(&["suppressions", "import", "--csv", file.to_str().unwrap()]);
    assert!(
        out.contains("2 address(es) added, 0 already suppressed"),
        "{out}"
    );
    assert_eq!(ok(&["suppressions", "export", "--csv"]), csv);
    let (found, _, err) = run(&["reports", "show", "999"]);
    assert!(!found && err.contains("no report with id 999"), "{err}");
}

fn cli_config(dir: &std::path::Path, store: &str) -> std::path::PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nhostname = \"relay.test\"\ndata_dir = {:?}\n{store}",
            dir.join("data").display().to_string()
        ),
    )
    .unwrap();
    path
}

#[test]
fn cli_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let config = cli_config(dir.path(), "");
    let (ok, _, err) = {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_trackrelay"))
            .args(["suppressions", "list", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        (
            out.status.success(),
            out.stdout,
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    assert!(!ok && err.contains("no database at"), "{err}");
    assert!(
        !dir.path().join("data").exists(),
        "no store made by a command"
    );
    let parsed = trackrelay::config::Config::load(&config).unwrap();
    Store::open(&parsed.database_path(), Default::default())
        .unwrap()
        .close();
    cli_scenario(&config);
}

#[test]
fn cli_on_postgres() {
    if !postgres::available("cli_on_postgres") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let url = postgres::url();
    let config = cli_config(
        dir.path(),
        &format!("[store]\nbackend = \"postgres\"\nurl = \"{url}\"\n"),
    );
    cli_scenario(&config);
}
