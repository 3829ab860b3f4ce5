//! Linking and apply decisions without a network; `apply` against an
//! in-memory store; the task over a store file.

use super::*;
use uuid::Uuid;

fn keys() -> TokenKeys {
    TokenKeys::new([3u8; 32], vec![])
}

fn id() -> Uuid {
    Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001)
}

fn rcpt(status: &str, counted: i64) -> LinkedRecipient {
    LinkedRecipient {
        address: "Someone@Example.net".into(),
        status: status.into(),
        counted,
        domain: "example.com".into(),
    }
}

fn dsn(groups: &[(&str, &str, &str)]) -> Report {
    let body: String = groups
        .iter()
        .map(|(addr, action, status)| {
            format!(
                "Final-Recipient: rfc822; {addr}\r\nAction: {action}\r\nStatus: {status}\r\n\
                 Diagnostic-Code: smtp; 550 {status} said no\r\n\r\n"
            )
        })
        .collect();
    let raw = format!(
        "From: MAILER-DAEMON@mx.example.net\r\nSubject: Undelivered Mail\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: text/plain\r\n\r\nsorry\r\n\
         --b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\n{body}\
         --b--\r\n"
    );
    feedback::classify(raw.as_bytes())
}

#[test]
fn envelope_token_links_and_a_forged_one_is_never_rescued_by_the_body() {
    let k = keys();
    let good = return_path::address(&k, "bounces", "bounces.example.com", id(), 2).unwrap();
    let other = TokenKeys::new([9u8; 32], vec![]);
    let forged = return_path::address(&other, "bounces", "bounces.example.com", id(), 2).unwrap();
    // The body quotes a good token, as a forger who saw one would.
    let raw = format!("Subject: x\r\nTo: {good}\r\n\r\nhi\r\n");
    let r = feedback::classify(raw.as_bytes());
    let rp = ReturnPath {
        email_id: id(),
        rcpt_index: 2,
    };
    assert_eq!(
        link(&r, raw.as_bytes(), &[good.to_uppercase()], &k),
        Link::Found(rp, Via::Envelope)
    );
    assert_eq!(link(&r, raw.as_bytes(), &[forged], &k), Link::Forged);
    // Sent to a plain mailbox of the return-path domain: the quote links.
    assert_eq!(
        link(&r, raw.as_bytes(), &["fbl@bounces.example.com".into()], &k),
        Link::Found(rp, Via::Quoted)
    );
    let plain = b"Subject: x\r\n\r\nnothing here\r\n";
    let r = feedback::classify(plain);
    assert_eq!(
        link(&r, plain, &["fbl@bounces.example.com".into()], &k),
        Link::Missing
    );
}

#[test]
fn a_redacted_report_links_through_the_ref_header_only() {
    let k = keys();
    let token = return_path::encode(&k, id(), 7);
    let raw = format!(
        "From: fbl@isp.example\r\nSubject: x\r\n\r\nOriginal-Rcpt-To: xxxxxx@example.net\r\n\
         x-trackrelay-ref: {token}\r\n"
    );
    let r = feedback::classify(raw.as_bytes());
    assert_eq!(
        link(&r, raw.as_bytes(), &["fbl@bounces.example.com".into()], &k),
        Link::Found(
            ReturnPath {
                email_id: id(),
                rcpt_index: 7
            },
            Via::RefHeader
        )
    );
    let wrong = raw.replace(
        &token,
        &return_path::encode(&TokenKeys::new([1; 32], vec![]), id(), 7),
    );
    assert_eq!(
        link(
            &r,
            wrong.as_bytes(),
            &["fbl@bounces.example.com".into()],
            &k
        ),
        Link::Missing
    );
}

#[test]
fn unsubscribe_mailbox_is_recognised_in_any_case() {
    assert!(to_unsubscribe_mailbox(&[
        "<UNSUBSCRIBE+abc@b.example.com>".into()
    ]));
    assert!(!to_unsubscribe_mailbox(&[
        "bounces+abc@b.example.com".into()
    ]));
    assert!(!to_unsubscribe_mailbox(&["unsub@b.example.com".into()]));
}

#[test]
fn failed_dsn_bounces_a_delivered_recipient_once() {
    let r = dsn(&[
        ("other@example.net", "delayed", "4.4.1"),
        ("someone@example.net", "failed", "5.1.1"),
    ]);
    let Effect::Bounce(b) = decide(&r, false, &rcpt("delivered", bit::DELIVERED)) else {
        panic!("a bounce")
    };
    assert!(b.suppress);
    assert_eq!(b.status.as_deref(), Some("5.1.1"));
    assert!(b.message.contains("said no"), "{}", b.message);
    assert_eq!(b.reporting_mta.as_deref(), Some("mx.example.net"));
    assert!(matches!(
        decide(&r, false, &rcpt("deferred", 0)),
        Effect::Bounce(_)
    ));
    assert_eq!(
        decide(&r, false, &rcpt("bounced", 0)),
        Effect::Nothing(Outcome::Bounced, "already bounced".into())
    );
    assert!(matches!(
        decide(&r, false, &rcpt("suppressed", 0)),
        Effect::Nothing(Outcome::Ignored, _)
    ));
    // Mail to the unsubscribe mailbox is never a bounce.
    assert_eq!(decide(&r, true, &rcpt("delivered", 0)), Effect::Unsubscribe);
}

#[test]
fn policy_bounce_is_not_suppressed_and_delays_keep_the_status() {
    let r = dsn(&[("someone@example.net", "failed", "5.7.1")]);
    let Effect::Bounce(b) = decide(&r, false, &rcpt("delivered", 0)) else {
        panic!("a bounce")
    };
    assert!(!b.suppress);
    let r = dsn(&[("someone@example.net", "delayed", "4.4.7")]);
    let Effect::Delay(b) = decide(&r, false, &rcpt("delivered", 0)) else {
        panic!("a delay")
    };
    assert_eq!(b.kind, feedback::bounce::BounceType::Transient);
    assert!(matches!(
        decide(&r, false, &rcpt("bounced", 0)),
        Effect::Nothing(Outcome::Delayed, _)
    ));
    let r = dsn(&[("someone@example.net", "delivered", "2.0.0")]);
    assert_eq!(
        decide(&r, false, &rcpt("delivered", 0)),
        Effect::Nothing(Outcome::Ignored, "action delivered".into())
    );
}

#[test]
fn complaints_count_once_and_auto_replies_and_unknown_are_dropped() {
    let arf = feedback::classify(
        b"From: fbl@isp.example\r\nMIME-Version: 1.0\r\n\
          Content-Type: multipart/report; report-type=feedback-report; boundary=\"b\"\r\n\r\n\
          --b\r\nContent-Type: text/plain\r\n\r\nreport\r\n\
          --b\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nUser-Agent: isp/1\r\n\
          --b--\r\n",
    );
    assert!(matches!(
        decide(&arf, false, &rcpt("delivered", 0)),
        Effect::Complaint(_)
    ));
    assert!(matches!(
        decide(&arf, false, &rcpt("delivered", bit::COMPLAINED)),
        Effect::Nothing(Outcome::Complained, _)
    ));
    assert_eq!(
        decide(&Report::AutoReply, true, &rcpt("delivered", 0)),
        Effect::Drop(Outcome::AutoReply)
    );
    assert_eq!(
        decide(&Report::Unknown, false, &rcpt("delivered", 0)),
        Effect::Drop(Outcome::Ignored)
    );
}

/// A store with one email to `someone@example.net`, delivered.
fn store_with_delivered() -> (rusqlite::Connection, Uuid) {
    let mut conn = rusqlite::Connection::open_in_memory().unwrap();
    store::sqlite::schema::migrate(&mut conn).unwrap();
    let email = Uuid::now_v7();
    let t = conn.transaction().unwrap();
    store::sqlite::emails::insert(
        &Tx::new(&t, &[]),
        &store::sqlite::emails::NewEmail {
            id: email.to_string(),
            created_at: 1,
            domain: "Example.com".into(),
            mail_from: "a@example.com".into(),
            header_from: None,
            to_header: None,
            subject: None,
            message_id: None,
            tags: vec![],
            auth_user: None,
            client_ip: None,
            smtputf8: false,
            received: vec![],
            body: b"\r\n".to_vec(),
            recipients: vec!["Someone@Example.net".into()],
        },
    )
    .unwrap();
    t.execute(
        "UPDATE recipients SET status = 'delivered', delivered_at = 5",
        [],
    )
    .unwrap();
    t.commit().unwrap();
    (conn, email)
}

fn stored(
    conn: &rusqlite::Connection,
    rcpt_to: &str,
    raw: &[u8],
) -> store::sqlite::reports::Pending {
    let id = store::sqlite::reports::insert(
        conn,
        &store::sqlite::reports::NewReport {
            received_at: 100,
            peer_ip: "127.0.0.1".into(),
            helo: "mx".into(),
            mail_from: String::new(),
            rcpt_to: vec![rcpt_to.into()],
            raw: raw.to_vec(),
        },
    )
    .unwrap();
    store::sqlite::reports::pending(conn, id - 1, 1)
        .unwrap()
        .remove(0)
}

fn run(conn: &mut rusqlite::Connection, c: &Classified, rules: &Rules) -> Option<Outcome> {
    let t = conn.transaction().unwrap();
    let out = apply(&Tx::new(&t, &[]), c, rules, 200).unwrap();
    t.commit().unwrap();
    out
}

fn count(conn: &rusqlite::Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

#[test]
fn apply_bounces_suppresses_and_marks_processed_once() {
    let k = keys();
    let (mut conn, email) = store_with_delivered();
    let to = return_path::address(&k, "bounces", "bounces.example.com", email, 0).unwrap();
    let raw = "From: MAILER-DAEMON@mx.example.net\r\nSubject: Undelivered Mail\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\n\
         Final-Recipient: rfc822; someone@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\n\
         Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n\r\n--b--\r\n";
    let c = classify(&stored(&conn, &to, raw.as_bytes()), &k);
    let rules = Rules {
        hard_bounce: ["example.com".to_string()].into(),
        complaint: HashSet::new(),
        unsubscribe: HashSet::new(),
    };
    assert_eq!(run(&mut conn, &c, &rules), Some(Outcome::Bounced));
    let (status, delivered_at, last): (String, Option<i64>, String) = conn
        .query_row(
            "SELECT status, delivered_at, last_response FROM recipients",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((status.as_str(), delivered_at), ("bounced", Some(5)));
    assert!(last.contains("no such user"), "{last}");
    let (event_id, detail): (i64, String) = conn
        .query_row(
            "SELECT id, detail FROM events WHERE type = 'email.bounced'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let d: Value = serde_json::from_str(&detail).unwrap();
    assert_eq!(d["bounce"]["type"], "permanent");
    assert_eq!(d["bounce"]["sub_type"], "no_email");
    assert_eq!(d["bounce"]["async"], true);
    assert_eq!(d["bounce"]["report_id"], c.id);
    let linked: Option<i64> = conn
        .query_row(
            "SELECT event_id FROM suppressions WHERE address = 'someone@example.net' AND scope = 'example.com'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(linked, Some(event_id));
    let (kind, outcome): (String, String) = conn
        .query_row(
            "SELECT kind, outcome FROM inbound_reports WHERE processed_at IS NOT NULL",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(kind, "dsn");
    assert!(outcome.contains("\"linked_by\":\"envelope\""), "{outcome}");
    // The same row again (a second pass): taken already, nothing happens.
    assert_eq!(run(&mut conn, &c, &rules), None);
    // The same bounce again as a new report: no second event.
    let again = classify(&stored(&conn, &to, raw.as_bytes()), &k);
    assert_eq!(run(&mut conn, &again, &rules), Some(Outcome::Bounced));
    assert_eq!(
        count(
            &conn,
            "SELECT COUNT(*) FROM events WHERE type = 'email.bounced'"
        ),
        1
    );
    // The rollup counts the asynchronous bounce.
    assert_eq!(count(&conn, "SELECT SUM(bounced) FROM rollups"), 1);
}

#[test]
fn forged_and_unknown_reports_are_deleted_and_change_nothing() {
    let k = keys();
    let (mut conn, email) = store_with_delivered();
    let other = TokenKeys::new([9u8; 32], vec![]);
    let forged = return_path::address(&other, "bounces", "bounces.example.com", email, 0).unwrap();
    let raw = b"From: MAILER-DAEMON@mx.example.net\r\nSubject: Undelivered Mail\r\n\r\n550 5.1.1 user unknown\r\n";
    let rules = Rules::default();
    let c = classify(&stored(&conn, &forged, raw), &k);
    assert_eq!(run(&mut conn, &c, &rules), Some(Outcome::Forged));
    // A token of ours for an email this store never had.
    let stranger =
        return_path::address(&k, "bounces", "bounces.example.com", Uuid::now_v7(), 0).unwrap();
    let c = classify(&stored(&conn, &stranger, raw), &k);
    assert_eq!(run(&mut conn, &c, &rules), Some(Outcome::Unlinked));
    assert_eq!(count(&conn, "SELECT COUNT(*) FROM inbound_reports"), 0);
    assert_eq!(
        count(
            &conn,
            "SELECT COUNT(*) FROM events WHERE type != 'email.sent'"
        ),
        0
    );
    assert_eq!(
        count(
            &conn,
            "SELECT COUNT(*) FROM recipients WHERE status = 'delivered'"
        ),
        1
    );
}

/// The processor task over a real store file: it reads what is pending at
/// start, and a report stored later as soon as it is woken (the inbound
/// listener's notify), long before its 30 s safety net.
#[test]
fn the_processor_runs_at_start_and_when_woken() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.sqlite3");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let k = Arc::new(keys());
    let store = store::Store::open(&path, store::StoreOptions::default()).unwrap();
    let email = Uuid::now_v7();
    let row = store::sqlite::emails::NewEmail {
        id: email.to_string(),
        created_at: 1,
        domain: "example.com".into(),
        mail_from: "a@example.com".into(),
        header_from: None,
        to_header: None,
        subject: None,
        message_id: None,
        tags: vec![],
        auth_user: None,
        client_ip: None,
        smtputf8: false,
        received: vec![],
        body: b"\r\n".to_vec(),
        recipients: vec!["someone@example.net".into()],
    };
    let to = return_path::address(&k, "bounces", "bounces.example.com", email, 0).unwrap();
    let report = |diag: &str| {
        store::sqlite::reports::NewReport {
        received_at: 100,
        peer_ip: "127.0.0.1".into(),
        helo: "mx".into(),
        mail_from: String::new(),
        rcpt_to: vec![to.clone()],
        raw: format!(
            "From: MAILER-DAEMON@mx.example.net\r\nSubject: Undelivered Mail\r\nMIME-Version: 1.0\r\n\
             Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n\
             --b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\n\
             Final-Recipient: rfc822; someone@example.net\r\nAction: delayed\r\nStatus: 4.4.7\r\n\
             Diagnostic-Code: smtp; {diag}\r\n\r\n--b--\r\n"
        )
        .into_bytes(),
    }
    };
    let first = report("451 4.4.7 first");
    rt.block_on(store.write(Durability::Full, move |tx| {
        store::sqlite::emails::insert(tx, &row)?;
        store::sqlite::reports::insert(tx, &first)
    }))
    .unwrap();
    let wake = Arc::new(Notify::new());
    let processor = Arc::new(Processor {
        store: store.clone(),
        keys: k.clone(),
        rules: Arc::new(Rules::default()),
        metrics: Arc::new(Metrics::default()),
        wake: wake.clone(),
    });
    let (stop, shutdown) = watch::channel(false);
    let task = rt.spawn(processor.clone().run(shutdown));
    let delays = |store: &Store| {
        rt.block_on(store.read(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM events WHERE type = 'email.delivery_delayed'",
                [],
                |r| r.get::<_, i64>(0),
            )
        }))
        .unwrap()
    };
    let wait = |n: i64| {
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while delays(&store) != n {
            assert!(std::time::Instant::now() < until, "waiting for {n} delays");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait(1);
    let second = report("451 4.4.7 second");
    rt.block_on(store.write(Durability::Full, move |tx| {
        store::sqlite::reports::insert(tx, &second)
    }))
    .unwrap();
    wake.notify_one();
    wait(2);
    assert_eq!(
        processor.metrics.inbound_reports[1].get(),
        2,
        "two delays counted"
    );
    stop.send(true).unwrap();
    rt.block_on(task).unwrap();
    store.close();
}

#[test]
fn a_report_that_fails_to_apply_is_rolled_back_alone_and_kept_with_the_error() {
    let k = keys();
    let (mut conn, email) = store_with_delivered();
    let to = return_path::address(&k, "bounces", "bounces.example.com", email, 0).unwrap();
    let raw = b"From: MAILER-DAEMON@mx.example.net\r\nSubject: Undelivered Mail\r\n\r\n\
                550 5.1.1 user unknown\r\n";
    let failing = classify(&stored(&conn, &to, raw), &k);
    let other = TokenKeys::new([9u8; 32], vec![]);
    let forged = return_path::address(&other, "bounces", "bounces.example.com", email, 0).unwrap();
    let dropped = classify(&stored(&conn, &forged, raw), &k);
    // Every event insert now fails: the bounce cannot be applied.
    conn.execute_batch("DROP TABLE events").unwrap();
    let t = conn.transaction().unwrap();
    let out = apply_batch(
        &Tx::new(&t, &[]),
        &[failing.clone(), dropped.clone()],
        &Rules::default(),
        300,
    )
    .unwrap();
    t.commit().unwrap();
    assert_eq!(out[0].0, failing.id);
    assert!(
        out[0].1.as_ref().is_err_and(|e| e.contains("events")),
        "{out:?}"
    );
    assert_eq!(out[1], (dropped.id, Ok(Some(Outcome::Forged))));
    // Its half-done effects are gone; the row is kept, processed, with why.
    assert_eq!(
        count(
            &conn,
            "SELECT COUNT(*) FROM recipients WHERE status = 'delivered'"
        ),
        1
    );
    let (processed, outcome): (Option<i64>, String) = conn
        .query_row(
            "SELECT processed_at, outcome FROM inbound_reports WHERE id = ?1",
            [failing.id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(processed, Some(300));
    assert!(outcome.contains("error"), "{outcome}");
    assert_eq!(count(&conn, "SELECT COUNT(*) FROM inbound_reports"), 1);
}

#[test]
fn one_pass_applies_every_batch_in_arrival_order() {
    // More than two batches, so that batches are read ahead while others
    // are written: each report is applied once, in the order it arrived.
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let k = Arc::new(keys());
    let store = store::Store::open(
        &dir.path().join("t.sqlite3"),
        store::StoreOptions::default(),
    )
    .unwrap();
    let email = Uuid::now_v7();
    let row = store::sqlite::emails::NewEmail {
        id: email.to_string(),
        created_at: 1,
        domain: "example.com".into(),
        mail_from: "a@example.com".into(),
        header_from: None,
        to_header: None,
        subject: None,
        message_id: None,
        tags: vec![],
        auth_user: None,
        client_ip: None,
        smtputf8: false,
        received: vec![],
        body: b"\r\n".to_vec(),
        recipients: vec!["someone@example.net".into()],
    };
    let to = return_path::address(&k, "bounces", "bounces.example.com", email, 0).unwrap();
    let n = 2 * BATCH + 5;
    let reports: Vec<_> = (0..n)
        .map(|i| store::sqlite::reports::NewReport {
            received_at: 100 + i as i64,
            peer_ip: "127.0.0.1".into(),
            helo: "mx".into(),
            mail_from: String::new(),
            rcpt_to: vec![to.clone()],
            raw: format!(
                "From: MAILER-DAEMON@mx.example.net\r\nSubject: Delayed Mail\r\nMIME-Version: 1.0\r\n\
                 Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n\
                 --b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\n\
                 Final-Recipient: rfc822; someone@example.net\r\nAction: delayed\r\nStatus: 4.4.7\r\n\
                 Diagnostic-Code: smtp; 451 4.4.7 try {i}\r\n\r\n--b--\r\n"
            )
            .into_bytes(),
        })
        .collect();
    let ids: Vec<i64> = rt
        .block_on(store.write(Durability::Full, move |tx| {
            store::sqlite::emails::insert(tx, &row)?;
            reports
                .iter()
                .map(|r| store::sqlite::reports::insert(tx, r))
                .collect::<rusqlite::Result<Vec<i64>>>()
        }))
        .unwrap();
    let processor = Processor {
        store: store.clone(),
        keys: k,
        rules: Arc::new(Rules::default()),
        metrics: Arc::new(Metrics::default()),
        wake: Arc::new(Notify::new()),
    };
    let (_stop, shutdown) = watch::channel(false);
    rt.block_on(processor.pass(&shutdown));
    let (pending, applied): (i64, Vec<i64>) = rt
        .block_on(store.read(|c| {
            let pending = c.query_row(
                "SELECT COUNT(*) FROM inbound_reports WHERE processed_at IS NULL",
                [],
                |r| r.get(0),
            )?;
            let applied = c
                .prepare(
                    "SELECT json_extract(detail, '$.report_id') FROM events
                     WHERE type = 'email.delivery_delayed' ORDER BY id",
                )?
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<i64>>>()?;
            Ok((pending, applied))
        }))
        .unwrap();
    assert_eq!(pending, 0, "one pass leaves nothing pending");
    assert_eq!(applied, ids, "one delay per report, in arrival order");
    assert_eq!(processor.metrics.inbound_reports[1].get(), n as u64);
    store.close();
}
