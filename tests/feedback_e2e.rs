//! The feedback loop end to end with a real MTA: trackrelay delivers to a
//! Postfix that accepts with 250 and bounces afterwards; Postfix's RFC 3464
//! report reaches the inbound listener by SMTP; the recipient becomes
//! bounced with the receiver's diagnostic, the webhook hears it, the
//! address is suppressed, and the next message to it is not sent.

mod harness;
mod support;

use harness::*;
use std::time::Duration;
use support::postfix::{self, Postfix};
use support::webhook::Receiver;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn status(relay: &Relay, id: &str) -> Option<String> {
    relay
        .db()
        .query_row(
            "SELECT status FROM recipients WHERE email_id = ?1",
            [id],
            |r| r.get(0),
        )
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postfix_bounce_after_250_bounces_suppresses_and_stops_the_next_message() {
    let test = "a_postfix_bounce_after_250_bounces_suppresses_and_stops_the_next_message";
    if !postfix::available(test) {
        return;
    }
    let hooks = Receiver::start(SECRET).await;
    // The relay's route must name Postfix's port before Postfix can bind
    // it (Postfix in turn needs the relay's inbound address): a taken
    // port costs a restart of both.
    let mut started = None;
    let mut last = String::new();
    for attempt in 0..8 {
        let port = postfix::random_port(attempt);
        let relay = Relay::start(Options {
            submission: "trusted_networks = [\"127.0.0.0/8\"]".into(),
            domain: "return_path = \"bounces\"".into(),
            delivery: format!("routes = {{ \"pf.example.net\" = \"127.0.0.1:{port}\" }}"),
            extra: format!(
                "[inbound]\nlisten = [\"127.0.0.1:0\"]\n\n\
                 [[webhooks]]\nurl = \"{}\"\nsecret = \"{SECRET}\"\n\
                 events = [\"email.bounced\", \"email.suppressed\"]\nretry = [\"1s\"]",
                hooks.url()
            ),
            ..Options::default()
        });
        match Postfix::start_on(
            port,
            "pf.example.net",
            "5.1.1 Mailbox does not exist",
            "bounces.example.com",
            relay.inbound.expect("the inbound listener"),
        ) {
            Ok(pf) => {
                started = Some((relay, pf));
                break;
            }
            Err(e) => last = e,
        }
    }
    let (relay, pf) = started.unwrap_or_else(|| panic!("no port for Postfix: {last}"));

    let msg = message("news@example.com", "gone@pf.example.net", "s", "hello");
    let first = submit(&relay, "news@example.com", &["gone@pf.example.net"], &msg);
    wait_for("the asynchronous bounce", Duration::from_secs(60), || {
        status(&relay, &first).as_deref() == Some("bounced")
    });
    // It was accepted with a 250 first: Postfix's log says so, and so does
    // the recipient's delivery time.
    assert!(pf.log().contains("status=bounced"), "{}", pf.log());
    let delivered_at: Option<i64> = relay
        .db()
        .query_row(
            "SELECT delivered_at FROM recipients WHERE email_id = ?1",
            [&first],
            |r| r.get(0),
        )
        .unwrap();
    assert!(delivered_at.is_some(), "bounced after a 250");

    let (event_id, detail): (i64, String) = relay
        .db()
        .query_row(
            "SELECT id, detail FROM events WHERE email_id = ?1 AND type = 'email.bounced'",
            [&first],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let detail: serde_json::Value = serde_json::from_str(&detail).unwrap();
    let bounce = &detail["bounce"];
    assert_eq!(bounce["type"], "permanent", "{detail}");
    assert_eq!(bounce["sub_type"], "no_email", "{detail}");
    assert!(
        bounce["message"].as_str().unwrap().contains("Mailbox does not exist"),
        "{detail}"
    );
    assert!(
        bounce["reporting_mta"].as_str().unwrap().contains(&format!("pf{}.test", pf.addr.port())),
        "{detail}"
    );

    wait_for("the email.bounced webhook", Duration::from_secs(30), || {
        hooks.accepted().iter().any(|h| h.body["type"] == "email.bounced")
    });
    let h = hooks.accepted();
    let h = h.iter().find(|h| h.body["type"] == "email.bounced").unwrap();
    assert!(h.signature_ok);
    assert_eq!(h.body["data"]["email_id"], first.as_str());
    assert!(
        h.body["data"]["bounce"]["message"].as_str().unwrap().contains("Mailbox does not exist"),
        "{}",
        h.body
    );

    let out = relay.cli(&["suppressions", "list", "--json"]);
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["address"], "gone@pf.example.net");
    assert_eq!(rows[0]["reason"], "hard_bounce");
    assert_eq!(rows[0]["event_id"], event_id);

    let second = submit(&relay, "news@example.com", &["gone@pf.example.net"], &msg);
    wait_for("the next message suppressed", Duration::from_secs(30), || {
        status(&relay, &second).as_deref() == Some("suppressed")
    });
    wait_for("the email.suppressed webhook", Duration::from_secs(30), || {
        hooks.accepted().iter().any(|h| h.body["type"] == "email.suppressed")
    });
    // Postfix saw the address once.
    let log = pf.log();
    assert_eq!(log.matches("to=<gone@pf.example.net>").count(), 1, "{log}");
}
