//! The submission session in inbound mode, sans-IO: what the return-path
//! MX says to a bounce, a relay attempt and an AUTH.

use super::server::is_local;
use crate::submission::budget::DataBudget;
use crate::submission::policy::Policy;
use crate::submission::reply::Reply;
use crate::submission::session::{Action, RcptCheck, Session, SessionConfig};
use std::sync::Arc;

fn session() -> Session {
    let cfg = Arc::new(SessionConfig {
        hostname: "mx.test".into(),
        max_message_size: 1000,
        max_recipients: 2,
        max_errors: 20,
        starttls: true,
        require_tls_for_auth: true,
        data_budget: DataBudget::new(10_000),
    });
    let config = crate::config::Config::parse(
        "[server]\nhostname = \"mx.test\"\n[[domains]]\nname = \"example.com\"\nreturn_path = \"bounces\"\n",
        std::path::Path::new("/t.toml"),
    )
    .unwrap();
    let mut s = Session::new(
        cfg,
        Arc::new(Policy::from_config(&config)),
        "192.0.2.1".parse().unwrap(),
        false,
    );
    s.set_inbound();
    s.greeting();
    s
}

/// Feeds `input`, deciding each RCPT as the server does; returns the
/// replies and the message handed over for storing, if any.
fn run(s: &mut Session, input: &[u8]) -> (String, Option<(String, Vec<u8>)>) {
    let domains = vec!["bounces.example.com".to_string()];
    let mut rest = input;
    let mut stored = None;
    loop {
        let (used, action) = s.feed(rest);
        rest = &rest[used..];
        match action {
            Some(Action::CheckRecipient { address, .. }) => {
                s.recipient_checked(if is_local(&domains, &address) {
                    RcptCheck::Clear
                } else {
                    RcptCheck::Refused(Reply::new(550, "5.7.1", "Relaying denied"))
                })
            }
            Some(Action::Queue(env)) => {
                stored = Some((env.mail_from.clone(), env.data.clone()));
                s.queued(Ok("7".into()));
            }
            Some(Action::Close) | None => break,
            Some(other) => panic!("unexpected action {other:?}"),
        }
        if rest.is_empty() {
            break;
        }
    }
    (String::from_utf8(s.take_output()).unwrap(), stored)
}

#[test]
fn a_bounce_from_the_null_sender_is_accepted_without_auth() {
    let mut s = session();
    let (out, stored) = run(
        &mut s,
        b"EHLO mta.example.net\r\nMAIL FROM:<>\r\nRCPT TO:<bounces+abc@Bounces.Example.COM>\r\n\
          DATA\r\nSubject: x\r\n\r\nbody\r\n.\r\n",
    );
    assert!(!out.contains("AUTH"), "{out}");
    assert!(out.contains("250 STARTTLS\r\n"), "{out}");
    assert!(out.contains("250 2.1.0 Sender ok"), "{out}");
    assert!(out.contains("250 2.1.5 Recipient ok"), "{out}");
    assert!(
        out.ends_with("250 2.0.0 Ok: stored as report 7\r\n"),
        "{out}"
    );
    let (from, data) = stored.unwrap();
    assert_eq!(from, "", "the null sender");
    assert_eq!(data, b"Subject: x\r\n\r\nbody\r\n");
}

#[test]
fn foreign_recipients_and_auth_are_refused() {
    let mut s = session();
    let (out, stored) = run(
        &mut s,
        b"EHLO x\r\nAUTH PLAIN AGFwcABwdw==\r\nMAIL FROM:<a@example.net>\r\n\
          RCPT TO:<victim@example.org>\r\nRCPT TO:<x@example.com>\r\nRCPT TO:<x@sub.bounces.example.com>\r\n\
          RCPT TO:<x@[127.0.0.1]>\r\nDATA\r\nRCPT TO:<fbl@bounces.example.com>\r\nDATA\r\nhi\r\n.\r\n",
    );
    assert!(
        out.contains("502 5.5.1 AUTH is not available here"),
        "{out}"
    );
    assert_eq!(out.matches("550 5.7.1").count(), 3, "{out}");
    // smtp-proto does not parse address literals: refused as syntax.
    assert!(out.contains("501 5.1.3"), "{out}");
    assert!(out.contains("554 5.5.1 No valid recipients"), "{out}");
    assert!(
        out.ends_with("250 2.0.0 Ok: stored as report 7\r\n"),
        "{out}"
    );
    assert!(stored.is_some());
}

#[test]
fn an_oversize_report_is_refused_and_not_handed_over() {
    let mut s = session();
    let mut input =
        b"EHLO x\r\nMAIL FROM:<>\r\nRCPT TO:<b@bounces.example.com>\r\nDATA\r\n".to_vec();
    input.extend(std::iter::repeat_n(b"0123456789abcdef\r\n".as_slice(), 100).flatten());
    input.extend_from_slice(b".\r\nMAIL FROM:<> SIZE=5000\r\n");
    let (out, stored) = run(&mut s, &input);
    assert!(stored.is_none());
    assert_eq!(out.matches("552 5.3.4").count(), 2, "{out}");
}
