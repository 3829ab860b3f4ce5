//! The feedback processor over the real binary: real mail is delivered to
//! a sink MX, which records the per-recipient return path
//! (`bounces+{token}@bounces.example.com`); bounce and complaint reports
//! naming those tokens are then written into `inbound_reports` of the
//! real store, as the return-path MX stores them, and the relay is
//! restarted, so that its processor reads them at start. What it did is
//! read back from the store, the CLI, the admin API and a webhook endpoint.

mod harness;
mod support;

use harness::*;
use std::collections::HashMap;
use std::time::Duration;
use support::mx::{MxConfig, Script, TestMx};
use support::webhook::Receiver;
use trackrelay::store::feedback::NewReport;
use trackrelay::store::Store;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const WAIT: Duration = Duration::from_secs(30);

fn start(mx: &TestMx, hooks: &Receiver) -> Relay {
    Relay::start(Options {
        submission: "trusted_networks = [\"127.0.0.0/8\"]".into(),
        delivery: format!("routes = {{ \"example.net\" = \"{}\" }}", mx.addr()),
        domain: "return_path = \"bounces\"\nlist_unsubscribe = true".into(),
        api_token: true,
        extra: format!(
            "[[webhooks]]\nurl = \"{}\"\nsecret = \"{SECRET}\"\nevents = [\"*\"]\nretry = [\"1s\"]",
            hooks.url()
        ),
        ..Options::default()
    })
}

fn status(relay: &Relay, id: &str, rcpt: &str) -> String {
    relay
        .db()
        .query_row(
            "SELECT status FROM recipients WHERE email_id = ?1 AND address = ?2",
            [id, rcpt],
            |r| r.get(0),
        )
        .unwrap()
}

/// Every event of `kind` for a recipient: (id, detail).
fn events(relay: &Relay, id: &str, rcpt: &str, kind: &str) -> Vec<(i64, serde_json::Value)> {
    let db = relay.db();
    let mut st = db
        .prepare(
            "SELECT id, COALESCE(detail, 'null') FROM events
             WHERE email_id = ?1 AND recipient = ?2 AND type = ?3 ORDER BY id",
        )
        .unwrap();
    st.query_map([id, rcpt, kind], |r| {
        Ok((r.get(0)?, r.get::<_, String>(1)?))
    })
    .unwrap()
    .map(|r| {
        let (i, d) = r.unwrap();
        (i, serde_json::from_str(&d).unwrap())
    })
    .collect()
}

/// The suppression of `address`: (scope, reason, event_id).
fn suppression(relay: &Relay, address: &str) -> Option<(String, String, Option<i64>)> {
    relay
        .db()
        .query_row(
            "SELECT scope, reason, event_id FROM suppressions WHERE address = ?1",
            [address],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .ok()
}

/// Writes a report as the inbound listener stores it (through the store
/// the relay's config names, whichever backend); returns its id.
fn store_report(relay: &Relay, rcpt_to: &str, raw: &[u8]) -> i64 {
    let config = trackrelay::config::Config::load(&relay.config_path)
        .unwrap_or_else(|e| panic!("the relay's config: {e}"));
    let report = NewReport {
        received_at: trackrelay::store::now_ms(),
        peer_ip: "127.0.0.9".into(),
        helo: "mx.example.net".into(),
        mail_from: String::new(),
        rcpt_to: vec![rcpt_to.into()],
        raw: raw.to_vec(),
    };
    // Its own thread and runtime: tests call this from inside theirs.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let store = Store::open_existing(&config).await?;
            let id = store.insert_report(report).await;
            store.close();
            id
        })
    })
    .join()
    .unwrap()
    .unwrap()
}

/// A Postfix-style RFC 3464 report about `rcpt`, to our return path
/// `to`, quoting the returned headers with the return path `quoted`.
fn dsn(to: &str, quoted: &str, rcpt: &str, action: &str, status: &str, diag: &str) -> Vec<u8> {
    format!(
        "Return-Path: <>\r\n\
         From: MAILER-DAEMON@mx.example.net (Mail Delivery System)\r\n\
         Subject: Undelivered Mail Returned to Sender\r\n\
         To: {to}\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=\"B1\"\r\n\
         \r\n\
         --B1\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         \r\n\
         I'm sorry to have to inform you that your message could not be delivered.\r\n\
         \r\n\
         --B1\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         Reporting-MTA: dns; mx.example.net\r\n\
         Arrival-Date: Tue, 24 Nov 2026 10:00:00 +0000\r\n\
         \r\n\
         Final-Recipient: rfc822; {rcpt}\r\n\
         Original-Recipient: rfc822;{rcpt}\r\n\
         Action: {action}\r\n\
         Status: {status}\r\n\
         Remote-MTA: dns; mailstore.example.net\r\n\
         Diagnostic-Code: smtp; {diag}\r\n\
         \r\n\
         --B1\r\n\
         Content-Type: text/rfc822-headers\r\n\
         \r\n\
         Return-Path: <{quoted}>\r\n\
         From: News <news@example.com>\r\n\
         To: <{rcpt}>\r\n\
         Subject: feedback\r\n\
         \r\n\
         --B1--\r\n"
    )
    .into_bytes()
}

/// An RFC 5965 complaint; `returned` is the header block sent back.
fn arf(rcpt_field: &str, returned: &str) -> Vec<u8> {
    format!(
        "From: <fbl@isp.example>\r\n\
         To: <fbl@bounces.example.com>\r\n\
         Subject: complaint about message from 127.0.0.1\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=feedback-report; boundary=\"F1\"\r\n\
         \r\n\
         --F1\r\n\
         Content-Type: text/plain\r\n\
         \r\n\
         This is an email abuse report.\r\n\
         \r\n\
         --F1\r\n\
         Content-Type: message/feedback-report\r\n\
         \r\n\
         Feedback-Type: abuse\r\n\
         User-Agent: ExampleFBL/2.1\r\n\
         Version: 1\r\n\
         Original-Rcpt-To: {rcpt_field}\r\n\
         Reporting-MTA: dns; fbl.isp.example\r\n\
         \r\n\
         --F1\r\n\
         Content-Type: text/rfc822-headers\r\n\
         \r\n\
         {returned}\r\n\
         --F1--\r\n"
    )
    .into_bytes()
}

fn cli_ok(relay: &Relay, args: &[&str]) -> Vec<u8> {
    let out = relay.cli(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn api_get(relay: &Relay, path: &str) -> (u16, Vec<u8>) {
    let auth = format!("Bearer {API_TOKEN}");
    let (code, _, body) = http(relay.api, "GET", path, &[("Authorization", &auth)]);
    (code, body)
}

const RCPTS: [&str; 8] = [
    "hard@example.net",
    "policy@example.net",
    "slow@example.net",
    "forged@example.net",
    "auto@example.net",
    "complain@example.net",
    "redacted@example.net",
    "leaver@example.net",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_about_delivered_mail_bounce_delay_complain_and_suppress() {
    let hooks = Receiver::start(SECRET).await;
    let mx = TestMx::start(
        MxConfig::default().script("gone@example.net", Script::always("550 5.1.1 no such user")),
    )
    .await;
    let mut relay = start(&mx, &hooks);
    let msg = message("news@example.com", "hard@example.net", "feedback", "hello");
    let id = submit(&relay, "news@example.com", &RCPTS, &msg);
    // A refusal during delivery, to compare its bounce object with a report's.
    let sync_id = submit(&relay, "news@example.com", &["gone@example.net"], &msg);
    wait_for("the synchronous bounce", WAIT, || {
        status(&relay, &sync_id, "gone@example.net") == "bounced"
    });
    for r in RCPTS {
        wait_for(&format!("{r} delivered"), WAIT, || {
            status(&relay, &id, r) == "delivered"
        });
    }
    // The header block of each delivered copy, as the recipient got it.
    let delivered: HashMap<String, String> = mx
        .received()
        .iter()
        .map(|m| {
            let text = String::from_utf8_lossy(&m.data).to_string();
            let head = text.split("\r\n\r\n").next().unwrap().to_string();
            (m.rcpt_to[0].to_ascii_lowercase(), head)
        })
        .collect();
    // The envelope sender each copy went out with: its return path.
    let sender: HashMap<String, String> = mx
        .received()
        .iter()
        .map(|m| (m.rcpt_to[0].to_ascii_lowercase(), m.mail_from.clone()))
        .collect();
    let rp = |r: &str| {
        let s = sender[r].clone();
        assert!(
            s.starts_with("bounces+") && s.ends_with("@bounces.example.com"),
            "{s}"
        );
        s
    };
    let token = |r: &str| {
        rp(r)["bounces+".len()..]
            .split('@')
            .next()
            .unwrap()
            .to_string()
    };
    // Same layout, a tag no key of ours made: flip the last character.
    let forged = {
        let real = rp("forged@example.net");
        let (local, domain) = real.split_once('@').unwrap();
        let mut b = local.as_bytes().to_vec();
        let last = b.len() - 1;
        b[last] = if b[last] == b'a' { b'b' } else { b'a' };
        format!("{}@{domain}", String::from_utf8(b).unwrap())
    };

    relay.stop();
    // Oldest first: a report nothing can read must not hold up the others.
    let garbage = store_report(
        &relay,
        "fbl@bounces.example.com",
        b"\x00\xff\xfe not mail at all\r\n\r\n\x80\x81",
    );
    let hard_diag = "550 5.1.1 <hard@example.net>: Recipient address rejected: User unknown in virtual mailbox table";
    let hard_raw = dsn(
        &rp("hard@example.net"),
        &rp("hard@example.net"),
        "hard@example.net",
        "failed",
        "5.1.1",
        hard_diag,
    );
    let hard_report = store_report(&relay, &rp("hard@example.net"), &hard_raw);
    // The receiver sends the same bounce twice.
    let hard_again = store_report(&relay, &rp("hard@example.net"), &hard_raw);
    store_report(
        &relay,
        &rp("policy@example.net"),
        &dsn(
            &rp("policy@example.net"),
            &rp("policy@example.net"),
            "policy@example.net",
            "failed",
            "5.7.1",
            "550 5.7.1 Message rejected as spam by content filter",
        ),
    );
    store_report(
        &relay,
        &rp("slow@example.net"),
        &dsn(
            &rp("slow@example.net"),
            &rp("slow@example.net"),
            "slow@example.net",
            "delayed",
            "4.4.7",
            "451 4.4.7 mailbox temporarily unavailable",
        ),
    );
    // Forged envelope token; the body even quotes the real one.
    let forged_report = store_report(
        &relay,
        &forged,
        &dsn(
            &forged,
            &rp("forged@example.net"),
            "forged@example.net",
            "failed",
            "5.1.1",
            "550 5.1.1 user unknown",
        ),
    );
    let auto_report = store_report(
        &relay,
        &rp("auto@example.net"),
        format!(
            "From: Auto <auto@example.net>\r\nTo: {}\r\nSubject: Out of office: feedback\r\n\
             Auto-Submitted: auto-replied\r\nIn-Reply-To: <x@example.com>\r\n\r\n\
             I am away until Monday. 550 5.1.1 is not what this is.\r\n",
            rp("auto@example.net")
        )
        .as_bytes(),
    );
    store_report(
        &relay,
        "fbl@bounces.example.com",
        &arf(
            "<complain@example.net>",
            &format!(
                "Return-Path: <{}>\r\nFrom: News <news@example.com>\r\nTo: <complain@example.net>\r\nSubject: feedback\r\n",
                rp("complain@example.net")
            ),
        ),
    );
    // Redacted by the provider: the recipient's address blotted out of the
    // report and of the returned headers (the delivered copy's own, which
    // never had the return path), and the List-Unsubscribe field, whose
    // mailto holds the token, left out: our reference header is what is left.
    let mut returned = String::new();
    let mut skipping = false;
    for line in delivered["redacted@example.net"].split("\r\n") {
        if !line.starts_with([' ', '\t']) {
            skipping = line.to_ascii_lowercase().starts_with("list-unsubscribe");
        }
        if !skipping {
            returned.push_str(&line.replace("redacted@example.net", "xxxxxxxx@example.net"));
            returned.push_str("\r\n");
        }
    }
    assert!(
        returned.contains(&format!(
            "X-Trackrelay-Ref: {}",
            token("redacted@example.net")
        )),
        "{returned}"
    );
    assert!(
        !returned.contains("@bounces.example.com"),
        "no token left but the reference: {returned}"
    );
    let redacted_report = store_report(
        &relay,
        "fbl@bounces.example.com",
        &arf("xxxxxxxx@example.net", &returned),
    );
    // The List-Unsubscribe mailto of the delivered copy. The mail looks
    // like a bounce, and must not be taken for one.
    let head = &delivered["leaver@example.net"];
    let leaver = head
        .split("<mailto:")
        .nth(1)
        .and_then(|rest| rest.split('>').next())
        .unwrap_or_else(|| panic!("a List-Unsubscribe mailto in {head}"))
        .to_string();
    assert_eq!(
        leaver,
        format!(
            "unsubscribe+{}@bounces.example.com",
            token("leaver@example.net")
        )
    );
    let unsub_report = store_report(
        &relay,
        &leaver,
        format!(
            "From: <leaver@example.net>\r\nTo: <{leaver}>\r\nSubject: Undelivered Mail unsubscribe\r\n\r\n\
             550 5.1.1 please unsubscribe me\r\n"
        )
        .as_bytes(),
    );
    relay.spawn();

    let pending = || -> i64 {
        relay
            .db()
            .query_row(
                "SELECT COUNT(*) FROM inbound_reports WHERE processed_at IS NULL",
                [],
                |r| r.get(0),
            )
            .unwrap()
    };
    wait_for("every report processed at start", WAIT, || pending() == 0);

    // An asynchronous hard bounce after a 250.
    assert_eq!(status(&relay, &id, "hard@example.net"), "bounced");
    let (delivered_at, last): (Option<i64>, String) = relay
        .db()
        .query_row(
            "SELECT delivered_at, last_response FROM recipients WHERE email_id = ?1 AND address = 'hard@example.net'",
            [&id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(delivered_at.is_some(), "delivered_at is kept");
    assert_eq!(last, hard_diag, "the receiver's diagnostic");
    let bounced = events(&relay, &id, "hard@example.net", "email.bounced");
    assert_eq!(
        bounced.len(),
        1,
        "a repeated DSN adds no event: {bounced:?}"
    );
    let (bounce_event, detail) = &bounced[0];
    let b = &detail["bounce"];
    assert_eq!(b["type"], "permanent");
    assert_eq!(b["sub_type"], "no_email");
    assert_eq!(b["status"], "5.1.1");
    assert_eq!(b["message"], hard_diag);
    assert_eq!(b["reporting_mta"], "mx.example.net");
    assert_eq!(b["async"], true);
    assert_eq!(b["report_id"], hard_report);
    assert!(b["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        suppression(&relay, "hard@example.net"),
        Some((
            "example.com".into(),
            "hard_bounce".into(),
            Some(*bounce_event)
        ))
    );

    // A policy refusal bounces but never suppresses.
    assert_eq!(status(&relay, &id, "policy@example.net"), "bounced");
    let policy = events(&relay, &id, "policy@example.net", "email.bounced");
    assert_eq!(policy[0].1["bounce"]["sub_type"], "content_rejected");
    assert_eq!(suppression(&relay, "policy@example.net"), None);

    // A delay: an event, the status unchanged.
    assert_eq!(status(&relay, &id, "slow@example.net"), "delivered");
    let delayed = events(&relay, &id, "slow@example.net", "email.delivery_delayed");
    assert_eq!(delayed.len(), 1);
    assert_eq!(delayed[0].1["status"], "4.4.7");
    assert_eq!(delayed[0].1["async"], true);

    // Mail to the unsubscribe mailbox: an unsubscribe, not a bounce.
    assert_eq!(status(&relay, &id, "leaver@example.net"), "delivered");
    assert!(events(&relay, &id, "leaver@example.net", "email.bounced").is_empty());
    let unsub = events(&relay, &id, "leaver@example.net", "email.unsubscribed");
    assert_eq!(unsub.len(), 1);
    assert_eq!(unsub[0].1["via"], "mailto");
    assert_eq!(
        suppression(&relay, "leaver@example.net"),
        Some(("example.com".into(), "unsubscribe".into(), Some(unsub[0].0)))
    );
    let (code, body) = api_get(&relay, &format!("/v1/reports/{unsub_report}"));
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["kind"], "unsubscribe");
    assert_eq!(v["outcome"]["outcome"], "unsubscribe");
    assert_eq!(v["outcome"]["recipient"], "leaver@example.net");
    let (code, _) = api_get(&relay, &format!("/v1/reports/{garbage}"));
    assert_eq!(code, 404, "the unreadable report is not kept");
    // Forged token and auto-reply: rows gone, nothing changed.
    for (r, report) in [
        ("forged@example.net", forged_report),
        ("auto@example.net", auto_report),
    ] {
        assert_eq!(status(&relay, &id, r), "delivered", "{r}");
        assert!(events(&relay, &id, r, "email.bounced").is_empty(), "{r}");
        assert_eq!(suppression(&relay, r), None, "{r}");
        let (code, _) = api_get(&relay, &format!("/v1/reports/{report}"));
        assert_eq!(code, 404, "{r}: the report is not kept");
    }

    // Complaints, the redacted one linked by X-Trackrelay-Ref.
    for r in ["complain@example.net", "redacted@example.net"] {
        let c = events(&relay, &id, r, "email.complained");
        assert_eq!(c.len(), 1, "{r}");
        assert_eq!(c[0].1["feedback_type"], "abuse");
        assert_eq!(c[0].1["user_agent"], "ExampleFBL/2.1");
        assert_eq!(c[0].1["reporting_mta"], "fbl.isp.example");
        assert_eq!(
            suppression(&relay, r),
            Some(("example.com".into(), "complaint".into(), Some(c[0].0))),
            "{r}"
        );
        assert_eq!(status(&relay, &id, r), "delivered", "{r}");
    }
    let (code, body) = api_get(&relay, &format!("/v1/reports/{redacted_report}"));
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["kind"], "arf");
    assert_eq!(v["outcome"]["linked_by"], "ref_header");

    // Webhooks: the bounce object as consumers see it, and the complaint.
    wait_for("the bounce and complaint webhooks", WAIT, || {
        let got = hooks.accepted();
        got.iter().any(|h| {
            h.body["type"] == "email.bounced" && h.body["data"]["to"][0] == "hard@example.net"
        }) && got
            .iter()
            .filter(|h| h.body["type"] == "email.complained")
            .count()
            == 2
            && got.iter().any(|h| {
                h.body["type"] == "email.bounced" && h.body["data"]["to"][0] == "gone@example.net"
            })
    });
    let got = hooks.accepted();
    let hook = got
        .iter()
        .find(|h| {
            h.body["type"] == "email.bounced" && h.body["data"]["to"][0] == "hard@example.net"
        })
        .unwrap();
    assert!(hook.signature_ok);
    assert_eq!(hook.body["data"]["email_id"], id.as_str());
    assert_eq!(hook.body["data"]["bounce"], *b);
    // One bounce object for both kinds of bounce: the same fields, and
    // `report_id` for the one that came as a report.
    let sync_hook = got
        .iter()
        .find(|h| {
            h.body["type"] == "email.bounced" && h.body["data"]["to"][0] == "gone@example.net"
        })
        .expect("the synchronous bounce's webhook");
    let sb = &sync_hook.body["data"]["bounce"];
    assert_eq!(sb["type"], "permanent");
    assert_eq!(sb["sub_type"], "no_email");
    assert_eq!(sb["async"], false);
    assert!(
        sb["message"].as_str().unwrap().contains("550 5.1.1"),
        "{sb}"
    );
    let keys = |v: &serde_json::Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.retain(|k| k != "report_id");
        k.sort();
        k
    };
    assert_eq!(keys(sb), keys(b));
    let complained = got
        .iter()
        .find(|h| h.body["type"] == "email.complained")
        .unwrap();
    assert_eq!(
        complained.body["data"]["complaint"]["feedback_type"],
        "abuse"
    );

    // Kept: the linked reports; counted: all of them.
    let kept: i64 = relay
        .db()
        .query_row("SELECT COUNT(*) FROM inbound_reports", [], |r| r.get(0))
        .unwrap();
    assert_eq!(kept, 7, "the six linked reports and the unsubscribe");
    let (code, body) = api_get(&relay, "/metrics");
    assert_eq!(code, 200);
    let metrics = String::from_utf8(body).unwrap();
    for (outcome, n) in [
        ("bounced", 3),
        ("delayed", 1),
        ("complained", 2),
        ("forged", 1),
        ("auto_reply", 1),
        ("unlinked", 1),
        ("unsubscribe", 1),
    ] {
        let line = format!("trackrelay_inbound_reports_total{{outcome=\"{outcome}\"}} {n}\n");
        assert!(metrics.contains(&line), "{line}in\n{metrics}");
    }
    let (_, outcome): (i64, String) = relay
        .db()
        .query_row(
            "SELECT id, outcome FROM inbound_reports WHERE id = ?1",
            [hard_again],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(outcome.contains("already bounced"), "{outcome}");

    // Stats count the asynchronous bounces and the complaints.
    let stats: serde_json::Value =
        serde_json::from_slice(&cli_ok(&relay, &["stats", "--json"])).unwrap();
    // hard and policy by report, gone during delivery.
    assert_eq!(stats["bounced"], 3, "{stats}");
    assert_eq!(stats["complained"], 2, "{stats}");

    // The operator reads the raw report: CLI, exactly and escaped, and API.
    let raw = cli_ok(
        &relay,
        &["reports", "show", &hard_report.to_string(), "--raw"],
    );
    assert_eq!(raw, hard_raw);
    let shown = String::from_utf8(cli_ok(
        &relay,
        &["reports", "show", &hard_report.to_string()],
    ))
    .unwrap();
    assert!(
        shown.contains("Diagnostic-Code: smtp; 550 5.1.1"),
        "{shown}"
    );
    assert!(shown.contains("dsn"), "{shown}");
    assert!(!shown.contains('\r'), "control characters are escaped");
    let (code, body) = api_get(&relay, &format!("/v1/reports/{hard_report}"));
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["raw"].as_str().unwrap().as_bytes(), hard_raw.as_slice());
    assert_eq!(v["kind"], "dsn");
    assert_eq!(v["outcome"]["outcome"], "bounced");
    assert_eq!(v["outcome"]["suppressed"], true);
    assert_eq!(v["rcpt_to"][0], rp("hard@example.net"));
    let (code, _) = api_get(&relay, "/v1/reports/nope");
    assert_eq!(code, 400);
    let out = relay.cli(&["reports", "show", "999999"]);
    assert!(!out.status.success());

    // The next message: the hard bounce is suppressed, the policy one is sent.
    let next = submit(
        &relay,
        "news@example.com",
        &["hard@example.net", "policy@example.net"],
        &msg,
    );
    wait_for("the next message settled", WAIT, || {
        status(&relay, &next, "hard@example.net") == "suppressed"
            && status(&relay, &next, "policy@example.net") == "delivered"
    });
    let s = events(&relay, &next, "hard@example.net", "email.suppressed");
    assert_eq!(s[0].1["reason"], "hard_bounce");
    let to_hard = mx
        .received()
        .iter()
        .filter(|m| m.rcpt_to[0].eq_ignore_ascii_case("hard@example.net"))
        .count();
    assert_eq!(to_hard, 1, "never delivered again");
}

/// A bounce report for a recipient still waiting for a retry (the receiver
/// took an attempt our side saw fail, then gave up): bounced, out of the
/// queue, never tried again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounce_report_for_a_deferred_recipient_stops_its_retries() {
    let hooks = Receiver::start(SECRET).await;
    let mx = TestMx::start(MxConfig::default().script(
        "later@example.net",
        support::mx::Script::always("451 4.3.0 try again later"),
    ))
    .await;
    let mut relay = Relay::start(Options {
        submission: "trusted_networks = [\"127.0.0.0/8\"]".into(),
        delivery: format!(
            "routes = {{ \"example.net\" = \"{}\" }}\nretry = [\"1h\"]",
            mx.addr()
        ),
        domain: "return_path = \"bounces\"".into(),
        extra: format!(
            "[[webhooks]]\nurl = \"{}\"\nsecret = \"{SECRET}\"\nevents = [\"*\"]",
            hooks.url()
        ),
        ..Options::default()
    });
    let msg = message("news@example.com", "later@example.net", "s", "hello");
    let id = submit(&relay, "news@example.com", &["later@example.net"], &msg);
    wait_for("deferred", WAIT, || {
        status(&relay, &id, "later@example.net") == "deferred"
    });
    let sender = mx
        .commands()
        .iter()
        .find_map(|c| {
            c.strip_prefix("MAIL FROM:<")
                .map(|r| r.split('>').next().unwrap().to_string())
        })
        .expect("a MAIL FROM");
    relay.stop();
    store_report(
        &relay,
        &sender,
        &dsn(
            &sender,
            &sender,
            "later@example.net",
            "failed",
            "5.2.2",
            "552 5.2.2 mailbox full",
        ),
    );
    relay.spawn();
    wait_for("bounced", WAIT, || {
        status(&relay, &id, "later@example.net") == "bounced"
    });
    let next: Option<i64> = relay
        .db()
        .query_row(
            "SELECT next_attempt_at FROM recipients WHERE email_id = ?1",
            [&id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(next, None, "out of the queue");
    let b = events(&relay, &id, "later@example.net", "email.bounced");
    assert_eq!(b[0].1["bounce"]["sub_type"], "mailbox_full");
    // A full mailbox is not a bad address.
    assert_eq!(suppression(&relay, "later@example.net"), None);
    let queued = String::from_utf8(cli_ok(&relay, &["queue", "list", "--json"])).unwrap();
    assert!(queued.trim().is_empty(), "{queued}");
}

/// The whole loop through the return-path MX: the bounce arrives over SMTP
/// at the inbound listener, which stores it and wakes the processor; no
/// restart, no waiting for the 30 s safety net.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounce_sent_to_the_return_path_mx_suppresses_the_address() {
    let mx = TestMx::start(MxConfig::default()).await;
    let relay = Relay::start(Options {
        submission: "trusted_networks = [\"127.0.0.0/8\"]".into(),
        delivery: format!("routes = {{ \"example.net\" = \"{}\" }}", mx.addr()),
        domain: "return_path = \"bounces\"".into(),
        extra: "[inbound]\nlisten = [\"127.0.0.1:0\"]\n".into(),
        ..Options::default()
    });
    let msg = message("news@example.com", "gone@example.net", "s", "hello");
    let id = submit(&relay, "news@example.com", &["gone@example.net"], &msg);
    wait_for("delivered", WAIT, || {
        status(&relay, &id, "gone@example.net") == "delivered"
    });
    let sender = mx.received()[0].mail_from.clone();
    let diag = "550 5.1.1 <gone@example.net>: Recipient address rejected: User unknown";
    let raw = dsn(
        &sender,
        &sender,
        "gone@example.net",
        "failed",
        "5.1.1",
        diag,
    );

    let mut c = RawSmtp::connect(relay.inbound.expect("the inbound listener"));
    assert!(c.reply().starts_with("220"));
    assert!(c.cmd("EHLO mx.example.net").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<>").starts_with("250"));
    assert!(c.cmd(&format!("RCPT TO:<{sender}>")).starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(&raw);
    let stored = c.cmd(".");
    assert!(stored.starts_with("250"), "{stored}");
    c.cmd("QUIT");
    let report: i64 = stored.rsplit(' ').next().unwrap().parse().unwrap();

    // Well inside the processor's 30 s period: the listener's wake did it.
    wait_for("the bounce applied", Duration::from_secs(10), || {
        status(&relay, &id, "gone@example.net") == "bounced"
    });
    let b = events(&relay, &id, "gone@example.net", "email.bounced");
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].1["bounce"]["message"], diag);
    assert_eq!(b[0].1["bounce"]["report_id"], report);
    assert_eq!(
        suppression(&relay, "gone@example.net"),
        Some(("example.com".into(), "hard_bounce".into(), Some(b[0].0)))
    );
    let raw_back = cli_ok(&relay, &["reports", "show", &report.to_string(), "--raw"]);
    assert_eq!(raw_back, raw, "kept as received");

    let next = submit(&relay, "news@example.com", &["gone@example.net"], &msg);
    wait_for("the next one suppressed", WAIT, || {
        status(&relay, &next, "gone@example.net") == "suppressed"
    });
    assert_eq!(mx.received().len(), 1, "never delivered again");
}
