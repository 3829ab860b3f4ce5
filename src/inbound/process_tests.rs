//! Linking and apply decisions without a network; the task over a store
//! file. (What the store does with a plan is tested in
//! store/sqlite/feedback.rs and tests/store_feedback.rs.)

use super::*;
use crate::store::feedback::NewReport;
use uuid::Uuid;

fn keys() -> TokenKeys {
    TokenKeys::new([3u8; 32], vec![])
}

fn id() -> Uuid {
    Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001)
}

fn rcpt(status: &str, complained: bool) -> LinkedRecipient {
    LinkedRecipient {
        address: "Someone@Example.net".into(),
        status: status.into(),
        complained,
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
    let Effect::Bounce(b) = decide(&r, false, &rcpt("delivered", false)) else {
        panic!("a bounce")
    };
    assert!(b.suppress);
    assert_eq!(b.status.as_deref(), Some("5.1.1"));
    assert!(b.message.contains("said no"), "{}", b.message);
    assert_eq!(b.reporting_mta.as_deref(), Some("mx.example.net"));
    assert!(matches!(
        decide(&r, false, &rcpt("deferred", false)),
        Effect::Bounce(_)
    ));
    assert_eq!(
        decide(&r, false, &rcpt("bounced", false)),
        Effect::Nothing(Outcome::Bounced, "already bounced".into())
    );
    assert!(matches!(
        decide(&r, false, &rcpt("suppressed", false)),
        Effect::Nothing(Outcome::Ignored, _)
    ));
    // Mail to the unsubscribe mailbox is never a bounce.
    assert_eq!(
        decide(&r, true, &rcpt("delivered", false)),
        Effect::Unsubscribe
    );
}

#[test]
fn policy_bounce_is_not_suppressed_and_delays_keep_the_status() {
    let r = dsn(&[("someone@example.net", "failed", "5.7.1")]);
    let Effect::Bounce(b) = decide(&r, false, &rcpt("delivered", false)) else {
        panic!("a bounce")
    };
    assert!(!b.suppress);
    let r = dsn(&[("someone@example.net", "delayed", "4.4.7")]);
    let Effect::Delay(b) = decide(&r, false, &rcpt("delivered", false)) else {
        panic!("a delay")
    };
    assert_eq!(b.kind, feedback::bounce::BounceType::Transient);
    assert!(matches!(
        decide(&r, false, &rcpt("bounced", false)),
        Effect::Nothing(Outcome::Delayed, _)
    ));
    let r = dsn(&[("someone@example.net", "delivered", "2.0.0")]);
    assert_eq!(
        decide(&r, false, &rcpt("delivered", false)),
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
        decide(&arf, false, &rcpt("delivered", false)),
        Effect::Complaint(_)
    ));
    assert!(matches!(
        decide(&arf, false, &rcpt("delivered", true)),
        Effect::Nothing(Outcome::Complained, _)
    ));
    assert_eq!(
        decide(&Report::AutoReply, true, &rcpt("delivered", false)),
        Effect::Drop(Outcome::AutoReply)
    );
    assert_eq!(
        decide(&Report::Unknown, false, &rcpt("delivered", false)),
        Effect::Drop(Outcome::Ignored)
    );
}

/// A store file with one email to `someone@example.net`, queued.
fn store_with_email(dir: &std::path::Path) -> (Store, Uuid) {
    let store = store::Store::open(&dir.join("t.sqlite3"), store::StoreOptions::default()).unwrap();
    let email = Uuid::now_v7();
    let row = store::queue::NewEmail {
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
        body: b"\r\n".to_vec().into(),
        recipients: vec!["someone@example.net".into()],
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(store.accept(row)).unwrap();
    (store, email)
}

/// A delayed DSN to the return path `to`, as the listener stores it.
fn delay_report(to: &str, at: i64, diag: &str) -> NewReport {
    NewReport {
        received_at: at,
        peer_ip: "127.0.0.1".into(),
        helo: "mx".into(),
        mail_from: String::new(),
        rcpt_to: vec![to.into()],
        raw: format!(
            "From: MAILER-DAEMON@mx.example.net\r\nSubject: Delayed Mail\r\nMIME-Version: 1.0\r\n\
             Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n\
             --b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\n\
             Final-Recipient: rfc822; someone@example.net\r\nAction: delayed\r\nStatus: 4.4.7\r\n\
             Diagnostic-Code: smtp; {diag}\r\n\r\n--b--\r\n"
        )
        .into_bytes(),
    }
}

/// The event a processed report caused, from its kept outcome.
fn event_of(rt: &tokio::runtime::Runtime, store: &Store, id: i64) -> Option<i64> {
    let r = rt.block_on(store.report(id)).unwrap()?;
    r.processed_at?;
    r.outcome?["event_id"].as_i64()
}

/// The processor task over a real store file: it reads what is pending at
/// start, and a report stored later as soon as it is woken (the inbound
/// listener's notify), long before its 30 s safety net.
#[test]
fn the_processor_runs_at_start_and_when_woken() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let k = Arc::new(keys());
    let (store, email) = store_with_email(dir.path());
    let to = return_path::address(&k, "bounces", "bounces.example.com", email, 0).unwrap();
    let first = rt
        .block_on(store.insert_report(delay_report(&to, 100, "451 4.4.7 first")))
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
    let wait = |id: i64| {
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while event_of(&rt, &store, id).is_none() {
            assert!(std::time::Instant::now() < until, "waiting for report {id}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait(first);
    let second = rt
        .block_on(store.insert_report(delay_report(&to, 100, "451 4.4.7 second")))
        .unwrap();
    wake.notify_one();
    wait(second);
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
    let (store, email) = store_with_email(dir.path());
    let to = return_path::address(&k, "bounces", "bounces.example.com", email, 0).unwrap();
    let n = 2 * BATCH + 5;
    let ids: Vec<i64> = (0..n)
        .map(|i| {
            rt.block_on(store.insert_report(delay_report(
                &to,
                100 + i as i64,
                &format!("451 4.4.7 try {i}"),
            )))
            .unwrap()
        })
        .collect();
    let processor = Processor {
        store: store.clone(),
        keys: k,
        rules: Arc::new(Rules::default()),
        metrics: Arc::new(Metrics::default()),
        wake: Arc::new(Notify::new()),
    };
    let (_stop, shutdown) = watch::channel(false);
    rt.block_on(processor.pass(&shutdown));
    let pending = rt.block_on(store.pending_reports(0, 100)).unwrap();
    assert!(pending.is_empty(), "one pass leaves nothing pending");
    // One delay per report, their events in the reports' arrival order.
    let events: Vec<i64> = ids
        .iter()
        .map(|id| event_of(&rt, &store, *id).expect("a delay event"))
        .collect();
    assert!(events.windows(2).all(|w| w[0] < w[1]), "{events:?}");
    assert_eq!(processor.metrics.inbound_reports[1].get(), n as u64);
    store.close();
}
