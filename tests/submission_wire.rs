//! Wire correctness of the submission port against the real binary over
//! real TCP: what a hostile or careless client sends is refused with a
//! clear reply, the session goes on, and nothing refused reaches the store.

mod harness;

use base64::Engine;
use harness::*;
use std::time::Duration;

/// Loopback may submit without AUTH (and AUTH in the clear, for the log test).
fn relay(extra: &str) -> Relay {
    Relay::start(Options {
        submission: format!(
            "trusted_networks = [\"127.0.0.0/8\"]\nplaintext_auth_networks = [\"127.0.0.0/8\"]\n{extra}"
        ),
        ..Options::default()
    })
}

fn session(relay: &Relay) -> RawSmtp {
    let mut c = RawSmtp::connect(relay.smtp);
    assert!(c.reply().starts_with("220"));
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    c
}

/// MAIL, RCPT, DATA, the message, the final dot; the final reply.
fn send(c: &mut RawSmtp, mail_params: &str, message: &[u8]) -> String {
    let r = c.cmd(&format!("MAIL FROM:<a@example.com>{mail_params}"));
    assert!(r.starts_with("250"), "{r}");
    let r = c.cmd("RCPT TO:<rcpt@example.net>");
    assert!(r.starts_with("250"), "{r}");
    let r = c.cmd("DATA");
    assert!(r.starts_with("354"), "{r}");
    c.send(message);
    c.cmd(".")
}

fn emails(relay: &Relay) -> i64 {
    relay
        .db()
        .query_row("SELECT COUNT(*) FROM emails", [], |r| r.get(0))
        .unwrap()
}

const GOOD: &[u8] =
    b"From: App <a@example.com>\r\nTo: rcpt@example.net\r\nSubject: ok\r\n\r\nhello\r\n";

#[test]
fn header_with_bare_cr_or_nul_is_refused() {
    let relay = relay("");
    let mut c = session(&relay);
    let r = send(
        &mut c,
        "",
        b"X-A: x\rFrom: ceo@evil.test\r\nFrom: a@example.com\r\nSubject: s\r\n\r\nbody\r\n",
    );
    assert!(
        r.starts_with("550 5.6.0 Message refused: its header section contains a bare CR"),
        "{r}"
    );
    let r = send(
        &mut c,
        "",
        b"From: a@example.com\r\nSubject: a\0b\r\n\r\nbody\r\n",
    );
    assert!(
        r.starts_with("550 5.6.0 Message refused: its header section contains a NUL"),
        "{r}"
    );
    // A line that is not a field: parsers disagree about what it hides.
    let r = send(
        &mut c,
        "",
        b"From: a@example.com\r\n: From: ceo@evil.test\r\n\r\nbody\r\n",
    );
    assert!(
        r.starts_with(
            "550 5.6.0 Message refused: its header section has a line that is not a header field"
        ),
        "{r}"
    );
    // The session goes on, and only the good message is stored.
    assert!(queued_id(&send(&mut c, "", GOOD)).is_some());
    assert_eq!(emails(&relay), 1);
}

#[test]
fn address_as_display_name_is_refused_and_quoted_local_part_accepted() {
    let relay = relay("");
    let mut c = session(&relay);
    let r = send(
        &mut c,
        "",
        b"From: ceo@evil.test <a@example.com>\r\nSubject: s\r\n\r\nbody\r\n",
    );
    assert!(r.starts_with("550 5.6.0"), "{r}");
    assert!(r.contains("display name holds an unquoted address"), "{r}");
    assert_eq!(emails(&relay), 0);

    let r = send(
        &mut c,
        "",
        b"From: \"ceo@evil.test\"@example.com\r\nSubject: s\r\n\r\nbody\r\n",
    );
    let id = queued_id(&r).unwrap_or_else(|| panic!("refused: {r}"));
    let (domain, from): (String, String) = relay
        .db()
        .query_row(
            "SELECT domain, header_from FROM emails WHERE id = ?1",
            [&id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(domain, "example.com");
    assert_eq!(from, "\"ceo@evil.test\"@example.com");
}

#[test]
fn eight_bit_headers_need_smtputf8() {
    let relay = relay("");
    let mut c = session(&relay);
    let msg = "From: J\u{f6}rg <a@example.com>\r\nSubject: caf\u{e9}\r\n\r\nbody\r\n";
    let r = send(&mut c, " BODY=8BITMIME", msg.as_bytes());
    assert!(r.starts_with("550 5.6.7"), "{r}");
    assert!(r.contains("need SMTPUTF8"), "{r}");
    assert_eq!(emails(&relay), 0);
    let r = send(&mut c, " BODY=8BITMIME SMTPUTF8", msg.as_bytes());
    assert!(queued_id(&r).is_some(), "{r}");
}

#[test]
fn replies_never_echo_a_nul_or_other_control_bytes() {
    let relay = relay("");
    let mut c = session(&relay);
    c.send(b"MAIL FROM:<a@example.com> X\0Y=\x1b[2J\r\n");
    let r = c.reply();
    assert!(r.starts_with("555 5.5.4"), "{r}");
    assert!(!r.chars().any(char::is_control), "{r:?}");
    assert!(r.contains("X\\0Y=\\u{1b}[2J"), "{r:?}");
    assert!(c.cmd("NOOP").starts_with("250"));
}

#[test]
fn data_after_bdat_is_refused() {
    let relay = relay("");
    let mut c = session(&relay);
    assert!(c.cmd("MAIL FROM:<a@example.com>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<rcpt@example.net>").starts_with("250"));
    let (head, rest) = GOOD.split_at(20);
    c.send(format!("BDAT {}\r\n", head.len()).as_bytes());
    c.send(head);
    assert!(c.reply().starts_with("250"));
    let r = c.cmd("DATA");
    assert!(r.starts_with("503 5.5.1 DATA cannot follow BDAT"), "{r}");
    c.send(format!("BDAT {} LAST\r\n", rest.len()).as_bytes());
    c.send(rest);
    let id = queued_id(&c.reply()).expect("BDAT LAST still ends the message");
    let body = trackrelay::store::sqlite::emails::body(&relay.db(), &id)
        .unwrap()
        .expect("a stored body")
        .1;
    assert_eq!(body, GOOD);
}

#[test]
fn max_errors_counts_only_errors_in_a_row() {
    let relay = relay("max_errors = 3");
    let mut c = session(&relay);
    for _ in 0..5 {
        assert!(c.cmd("FROB").starts_with("500"));
        assert!(c.cmd("FROB").starts_with("500"));
        assert!(c.cmd("NOOP").starts_with("250"), "a good command resets");
    }
    assert!(c.cmd("FROB").starts_with("500"));
    assert!(c.cmd("FROB").starts_with("500"));
    let r = c.cmd("FROB");
    assert!(r.starts_with("500"), "{r}");
    assert!(c.reply().starts_with("421 4.7.0"));
    assert!(c.closed());
}

#[test]
fn control_characters_in_a_user_name_do_not_forge_log_lines() {
    let relay = relay("");
    let mut c = session(&relay);
    let creds = base64::engine::general_purpose::STANDARD
        .encode(b"\0app\r\nFORGED-LOG-LINE admin logged in\0wrong password");
    let r = c.cmd(&format!("AUTH PLAIN {creds}"));
    assert!(r.starts_with("535"), "{r}");
    wait_for(
        "the failed AUTH in the log",
        Duration::from_secs(10),
        || relay.log().contains("AUTH failed"),
    );
    let log = relay.log();
    assert!(
        !log.lines().any(|l| l.starts_with("FORGED-LOG-LINE")),
        "{log}"
    );
    assert!(log.contains(r"app\r\nFORGED-LOG-LINE"), "{log}");
}

/// A message of about `len` bytes from `a@example.com`, in whole lines.
fn message_of(len: usize, subject: &str) -> Vec<u8> {
    let mut m = format!("From: a@example.com\r\nSubject: {subject}\r\n\r\n").into_bytes();
    while m.len() < len {
        m.extend_from_slice(&[b'x'; 78]);
        m.extend_from_slice(b"\r\n");
    }
    m
}

#[test]
fn in_flight_data_has_one_budget_for_all_sessions() {
    let relay = relay("max_message_size = 100000\nmax_data_in_flight = 150000");
    // A holds about 90,000 bytes of a message it has not ended. BDAT is the
    // sync point: its 250 comes only once the relay has read (and so
    // reserved) the chunk, so B below cannot race A's bytes.
    let mut a = session(&relay);
    assert!(a.cmd("MAIL FROM:<a@example.com>").starts_with("250"));
    assert!(a.cmd("RCPT TO:<rcpt@example.net>").starts_with("250"));
    let held = message_of(90_000, "held");
    a.send(format!("BDAT {}\r\n", held.len()).as_bytes());
    a.send(&held);
    let r = a.reply();
    assert!(r.starts_with("250"), "{r}");

    // B's 70,000 bytes do not fit beside them: a temporary refusal, and the
    // session goes on.
    let mut b = session(&relay);
    let refused = send(&mut b, "", &message_of(70_000, "retry"));
    assert!(
        refused.starts_with("452 4.3.1 Insufficient system storage"),
        "{refused}"
    );
    assert!(b.cmd("NOOP").starts_with("250"));

    // Once A's message is stored, there is room again.
    let r = a.cmd("BDAT 0 LAST");
    assert!(queued_id(&r).is_some(), "{r}");
    let r = send(&mut b, "", &message_of(70_000, "after"));
    assert!(queued_id(&r).is_some(), "{r}");
    let stored: i64 = relay
        .db()
        .query_row(
            "SELECT COUNT(*) FROM emails WHERE subject IN ('held', 'after')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stored, 2);
}

#[test]
fn every_x_tags_field_is_read_decoded_and_once() {
    let relay = relay("");
    let mut c = session(&relay);
    let msg = b"From: a@example.com\r\nX-Tags: spring, promo\r\nSubject: s\r\n\
X-Tags: =?UTF-8?Q?caf=C3=A9,_promo?=\r\n\r\nbody\r\n";
    let id = queued_id(&send(&mut c, "", msg)).expect("queued");
    let tags: String = relay
        .db()
        .query_row("SELECT tags FROM emails WHERE id = ?1", [&id], |r| r.get(0))
        .unwrap();
    assert_eq!(tags, "[\"spring\",\"promo\",\"caf\u{e9}\"]");
}
