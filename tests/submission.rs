//! SMTP submission against the real binary over real TCP and TLS.

mod harness;

use harness::*;
use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn mailer(
    relay: &Relay,
    implicit: bool,
    mechanism: Mechanism,
    password: &str,
) -> AsyncSmtpTransport<Tokio1Executor> {
    let params = TlsParameters::builder("relay.test".into())
        .dangerous_accept_invalid_certs(true)
        .build_rustls()
        .unwrap();
    let (port, tls) = if implicit {
        (relay.smtps.port(), Tls::Wrapper(params))
    } else {
        (relay.smtp.port(), Tls::Required(params))
    };
    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(port)
        .tls(tls)
        .credentials(Credentials::new(USER.into(), password.into()))
        .authentication(vec![mechanism])
        .timeout(Some(Duration::from_secs(30)))
        .build()
}

fn envelope(from: &str, to: &[&str]) -> Envelope {
    Envelope::new(
        Some(from.parse().unwrap()),
        to.iter().map(|t| t.parse().unwrap()).collect(),
    )
    .unwrap()
}

fn stored_body(relay: &Relay, id: &str) -> Vec<u8> {
    trackrelay::store::sqlite::emails::body(&relay.db(), id)
        .unwrap()
        .expect("a stored body")
        .1
}

#[tokio::test]
async fn starttls_plain_and_implicit_tls_login_store_exact_bytes() {
    let relay = Relay::start(Options::default());
    for (implicit, mech) in [(false, Mechanism::Plain), (true, Mechanism::Login)] {
        let raw = message(
            "news@example.com",
            "rcpt@example.net",
            "Hello",
            "Line one\r\n.starts with a dot\r\n\r\nbye",
        );
        let reply = mailer(&relay, implicit, mech, PASSWORD)
            .send_raw(
                &envelope(
                    "news@example.com",
                    &["rcpt@example.net", "other@example.org"],
                ),
                &raw,
            )
            .await
            .expect("accepted");
        let first = reply.message().next().unwrap().to_string();
        assert!(reply.is_positive(), "{first}");
        let id = queued_id(&first).expect("reply names the id");
        assert!(
            uuid::Uuid::parse_str(&id).unwrap().get_version_num() == 7,
            "{id} is a UUIDv7"
        );
        // lettre ends DATA with "\r\n.\r\n" after the message whatever its
        // last bytes are (async_connection.rs), so the message it carried
        // over SMTP is `raw` plus one empty line; that is what must be stored.
        let mut carried = raw.clone();
        carried.extend_from_slice(b"\r\n");
        assert_eq!(
            stored_body(&relay, &id),
            carried,
            "stored bytes equal the sent bytes"
        );
        let rcpts: Vec<(String, String)> = relay
            .db()
            .prepare("SELECT address, status FROM recipients WHERE email_id = ?1 ORDER BY idx")
            .unwrap()
            .query_map([&id], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let addresses: Vec<&str> = rcpts.iter().map(|(a, _)| a.as_str()).collect();
        assert_eq!(addresses, ["rcpt@example.net", "other@example.org"]);
        for (_, status) in &rcpts {
            // The queue runner may already be at it (the test routes go nowhere).
            assert!(
                ["queued", "sending", "deferred"].contains(&status.as_str()),
                "{status}"
            );
        }
        let sent: i64 = relay
            .db()
            .query_row(
                "SELECT COUNT(*) FROM events WHERE email_id = ?1 AND type = 'email.sent'",
                [&id],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(sent, 2, "one email.sent event per recipient");
        let with: String = relay
            .db()
            .query_row("SELECT received FROM emails WHERE id = ?1", [&id], |r| {
                r.get::<_, Vec<u8>>(0)
            })
            .map(|b| String::from_utf8(b).unwrap())
            .unwrap();
        assert!(
            with.contains("with ESMTPSA") && with.contains(&id),
            "{with}"
        );
    }
}

#[tokio::test]
async fn wrong_password_foreign_sender_and_foreign_from() {
    let relay = Relay::start(Options::default());
    let raw = message("news@example.com", "r@example.net", "x", "x");
    let err = mailer(&relay, false, Mechanism::Plain, "wrong")
        .send_raw(&envelope("news@example.com", &["r@example.net"]), &raw)
        .await
        .unwrap_err();
    assert_eq!(err.status().map(u16::from), Some(535), "{err}");

    let good = mailer(&relay, false, Mechanism::Plain, PASSWORD);
    // example.org is a configured domain, but not one of this user's.
    let err = good
        .send_raw(&envelope("news@example.org", &["r@example.net"]), &raw)
        .await
        .unwrap_err();
    assert_eq!(err.status().map(u16::from), Some(550), "{err}");
    assert!(
        err.to_string().contains("may not send as example.org"),
        "{err}"
    );

    let spoofed = message("ceo@elsewhere.test", "r@example.net", "x", "x");
    let err = good
        .send_raw(&envelope("news@example.com", &["r@example.net"]), &spoofed)
        .await
        .unwrap_err();
    assert_eq!(err.status().map(u16::from), Some(550), "{err}");
    assert!(err.to_string().contains("ceo@elsewhere.test"), "{err}");

    let count: i64 = relay
        .db()
        .query_row("SELECT COUNT(*) FROM emails", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, 0, "nothing refused was stored");
}

#[test]
fn no_auth_means_no_relay_and_no_auth_before_tls() {
    let relay = Relay::start(Options::default());
    let mut c = RawSmtp::connect(relay.smtp);
    assert!(c.reply().starts_with("220 "));
    assert!(c.cmd("EHLO client.test").starts_with("250 "));
    assert!(c
        .cmd("MAIL FROM:<news@example.com>")
        .starts_with("530 5.7.0"));
    assert!(c
        .cmd("RCPT TO:<victim@example.net>")
        .starts_with("530 5.7.0"));
    // "\0app\0correct horse battery staple"
    let auth = c.cmd("AUTH PLAIN AGFwcABjb3JyZWN0IGhvcnNlIGJhdHRlcnkgc3RhcGxl");
    assert!(auth.starts_with("538 5.7.11"), "{auth}");
    assert!(c.cmd("VRFY someone").starts_with("252 "));
    assert!(c.cmd("QUIT").starts_with("221 "));
}

#[test]
fn plaintext_auth_networks_exempt_loopback() {
    let relay = Relay::start(Options {
        submission: "plaintext_auth_networks = [\"127.0.0.0/8\"]".into(),
        ..Options::default()
    });
    let mut c = RawSmtp::connect(relay.smtp);
    c.reply();
    c.cmd("EHLO client.test");
    let auth = c.cmd("AUTH PLAIN AGFwcABjb3JyZWN0IGhvcnNlIGJhdHRlcnkgc3RhcGxl");
    assert!(auth.starts_with("235 2.7.0"), "{auth}");
    assert!(c.cmd("MAIL FROM:<news@example.com>").starts_with("250 "));
    assert!(c.cmd("RCPT TO:<r@example.net>").starts_with("250 "));
}

fn trusted() -> Options {
    Options {
        submission:
            "trusted_networks = [\"127.0.0.0/8\"]\nmax_message_size = 100000\nmax_recipients = 5\n\
                     command_timeout = \"2s\"\nmax_connections_per_ip = 8\nmax_errors = 5"
                .into(),
        ..Options::default()
    }
}

#[tokio::test]
async fn limits_answer_clearly_while_a_normal_client_still_gets_through() {
    let relay = Relay::start(trusted());
    let addr = relay.smtp;
    let abusers = std::thread::spawn(move || {
        // SIZE= over the limit is refused at MAIL.
        let mut c = RawSmtp::connect(addr);
        c.reply();
        c.cmd("EHLO a");
        assert!(c
            .cmd("MAIL FROM:<n@example.com> SIZE=200000")
            .starts_with("552 5.3.4"));
        // DATA over the limit is answered 552 after it ends.
        assert!(c.cmd("MAIL FROM:<n@example.com>").starts_with("250"));
        assert!(c.cmd("RCPT TO:<r@example.net>").starts_with("250"));
        assert!(c.cmd("DATA").starts_with("354"));
        let mut big = b"From: n@example.com\r\n\r\n".to_vec();
        for _ in 0..3000 {
            big.extend_from_slice(&[b'x'; 78]);
            big.extend_from_slice(b"\r\n");
        }
        big.extend_from_slice(b".\r\n");
        c.send(&big);
        assert!(c.reply().starts_with("552 5.3.4"));
        // Too many recipients.
        assert!(c.cmd("MAIL FROM:<n@example.com>").starts_with("250"));
        for i in 0..5 {
            assert!(c
                .cmd(&format!("RCPT TO:<r{i}@example.net>"))
                .starts_with("250"));
        }
        assert!(c.cmd("RCPT TO:<r9@example.net>").starts_with("452 4.5.3"));
        // A 10 KB command line.
        let long = format!("NOOP {}", "a".repeat(10_000));
        assert!(c.cmd(&long).starts_with("500 5.5.2"));
        assert!(c.cmd("NOOP").starts_with("250"), "the session survives");

        // Garbage: answered, then the connection is dropped.
        let mut g = RawSmtp::connect(addr);
        g.reply();
        let mut junk = Vec::new();
        for i in 0..20u8 {
            junk.extend_from_slice(&[0x16, 0x03, 0x01, i, 0xff, b'\r', b'\n']);
        }
        g.send(&junk);
        let mut last = String::new();
        for _ in 0..10 {
            last = g.reply();
            if last.starts_with("421") || last == "EOF" {
                break;
            }
        }
        assert!(last.starts_with("421 4.7.0"), "{last}");
        assert!(g.closed());

        // A client that goes silent is disconnected after command_timeout.
        let mut s = RawSmtp::connect(addr);
        s.reply();
        let started = std::time::Instant::now();
        let r = s.reply();
        assert!(r.starts_with("421 4.4.2"), "{r}");
        assert!(started.elapsed() >= Duration::from_millis(1500));
        assert!(s.closed());
    });
    // Meanwhile an ordinary authenticated client submits.
    for _ in 0..3 {
        let raw = message("news@example.com", "r@example.net", "normal", "hello");
        let reply = mailer(&relay, false, Mechanism::Plain, PASSWORD)
            .send_raw(&envelope("news@example.com", &["r@example.net"]), &raw)
            .await
            .expect("a normal client gets through");
        assert!(reply.is_positive());
    }
    abusers.join().unwrap();
}

#[test]
fn connection_limit_per_ip() {
    let relay = Relay::start(trusted());
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut c = RawSmtp::connect(relay.smtp);
        assert!(c.reply().starts_with("220"));
        held.push(c);
    }
    let mut extra = RawSmtp::connect(relay.smtp);
    let r = extra.reply();
    assert!(r.starts_with("421 4.7.0"), "{r}");
    drop(held.pop());
    // The server frees the slot when it sees the close; until then a new
    // connection is still refused with 421.
    wait_for(
        "a freed slot to be usable again",
        Duration::from_secs(10),
        || RawSmtp::connect(relay.smtp).reply().starts_with("220"),
    );
}

#[test]
fn bdat_is_accepted() {
    let relay = Relay::start(trusted());
    let mut c = RawSmtp::connect(relay.smtp);
    c.reply();
    c.cmd("EHLO a");
    let msg = message("n@example.com", "r@example.net", "chunked", "body");
    c.cmd("MAIL FROM:<n@example.com>");
    c.cmd("RCPT TO:<r@example.net>");
    let (a, b) = msg.split_at(30);
    c.send(format!("BDAT {}\r\n", a.len()).as_bytes());
    c.send(a);
    assert!(c.reply().starts_with("250"));
    c.send(format!("BDAT {} LAST\r\n", b.len()).as_bytes());
    c.send(b);
    let r = c.reply();
    let id = queued_id(&r).expect(&r);
    assert_eq!(stored_body(&relay, &id), msg);
}

#[test]
fn store_failure_is_451_and_leaves_nothing_half_written() {
    // The failure is made by holding SQLite's write lock from outside:
    // this test is about that backend whatever the suite runs on.
    let relay = Relay::start(Options {
        store: "backend = \"sqlite\"\nbusy_timeout = \"1s\"".into(),
        ..trusted()
    });
    let send = |c: &mut RawSmtp| -> String {
        c.cmd("MAIL FROM:<n@example.com>");
        c.cmd("RCPT TO:<r@example.net>");
        c.cmd("DATA");
        c.send(&message("n@example.com", "r@example.net", "s", "b"));
        c.cmd(".")
    };
    let mut c = RawSmtp::connect(relay.smtp);
    c.reply();
    c.cmd("EHLO a");
    assert!(send(&mut c).starts_with("250"));
    // Another process (a backup, an sqlite3 shell) holds the write lock.
    let locker = rusqlite::Connection::open(relay.db_path()).unwrap();
    locker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let r = send(&mut c);
    assert!(r.starts_with("451 4.3.0"), "{r}");
    locker.execute_batch("ROLLBACK").unwrap();
    drop(locker);
    let db = relay.db();
    let emails: i64 = db
        .query_row("SELECT COUNT(*) FROM emails", [], |r| r.get(0))
        .unwrap();
    let rcpts: i64 = db
        .query_row("SELECT COUNT(*) FROM recipients", [], |r| r.get(0))
        .unwrap();
    // Only email.sent: the queue runner may meanwhile have recorded a
    // delivery attempt of the first message.
    let events: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM events WHERE type = 'email.sent'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        (emails, rcpts, events),
        (1, 1, 1),
        "the refused message left no rows"
    );
    assert!(
        send(&mut c).starts_with("250"),
        "the same session works again"
    );
}

#[test]
fn sigkill_after_250_loses_nothing() {
    let mut relay = Relay::start(trusted());
    let acked: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::new(Mutex::new(HashMap::new()));
    let addr = relay.smtp;
    let mut clients = Vec::new();
    for n in 0..20 {
        let acked = acked.clone();
        clients.push(std::thread::spawn(move || {
            let mut c = RawSmtp::connect(addr);
            if !c.reply().starts_with("220") {
                return;
            }
            c.cmd("EHLO load");
            for i in 0..200 {
                let body = format!("client {n} message {i}\r\n{}", "z".repeat(2000));
                let msg = message("n@example.com", "r@example.net", &format!("{n}-{i}"), &body);
                c.send(b"MAIL FROM:<n@example.com>\r\nRCPT TO:<r@example.net>\r\nDATA\r\n");
                let (a, b, d) = (c.reply(), c.reply(), c.reply());
                if !(a.starts_with("250") && b.starts_with("250") && d.starts_with("354")) {
                    return;
                }
                c.send(&msg);
                c.send(b".\r\n");
                let r = c.reply();
                match queued_id(&r) {
                    Some(id) => {
                        acked.lock().unwrap().insert(id, msg);
                    }
                    None => return,
                }
            }
        }));
    }
    wait_for(
        "300 acknowledged messages",
        Duration::from_secs(120),
        || acked.lock().unwrap().len() >= 300,
    );
    relay.kill();
    for c in clients {
        let _ = c.join();
    }
    let acked = acked.lock().unwrap().clone();
    relay.spawn();
    let db = relay.db();
    let mut missing = 0;
    for (id, bytes) in &acked {
        let row: Option<(Vec<u8>, String)> = db
            .query_row(
                "SELECT r.status FROM emails e JOIN recipients r ON r.email_id = e.id WHERE e.id = ?1",
                [id],
                |r| r.get(0),
            )
            .ok()
            .map(|status| {
                let body = trackrelay::store::sqlite::emails::body(&db, id)
                    .unwrap()
                    .expect("an acknowledged email keeps its body")
                    .1;
                (body, status)
            });
        match row {
            Some((body, status)) => {
                assert_eq!(&body, bytes, "{id} intact");
                assert!(
                    ["queued", "sending", "deferred"].contains(&status.as_str()),
                    "{status}"
                );
            }
            None => missing += 1,
        }
    }
    assert_eq!(
        missing,
        0,
        "{missing} of {} acknowledged messages lost",
        acked.len()
    );
    let out = relay.cli(&["queue", "list", "--json"]);
    assert!(out.status.success());
    let listed = String::from_utf8(out.stdout).unwrap();
    for id in acked.keys().take(20) {
        assert!(listed.contains(id.as_str()), "queue list shows {id}");
    }
}

#[test]
fn sigterm_lets_a_message_in_flight_finish() {
    let mut relay = Relay::start(trusted());
    let mut c = RawSmtp::connect(relay.smtp);
    c.reply();
    c.cmd("EHLO a");
    c.cmd("MAIL FROM:<n@example.com>");
    c.cmd("RCPT TO:<r@example.net>");
    assert!(c.cmd("DATA").starts_with("354"));
    let msg = message("n@example.com", "r@example.net", "in flight", "body");
    c.send(&msg[..40]);
    let pid = relay.pid();
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    // New connections are no longer accepted (once the signal is handled)...
    wait_for(
        "the listener to close",
        Duration::from_secs(10),
        || match std::net::TcpStream::connect(relay.smtp) {
            Err(_) => true,
            Ok(stream) => {
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                let mut n = RawSmtp {
                    reader: std::io::BufReader::new(stream.try_clone().unwrap()),
                    stream,
                };
                n.reply() == "EOF"
            }
        },
    );
    // ...but the message in flight completes.
    c.send(&msg[40..]);
    let r = c.cmd(".");
    assert!(queued_id(&r).is_some(), "{r}");
    let bye = c.reply();
    assert!(bye.starts_with("421 4.3.2"), "{bye}");
    let status = relay.stop();
    assert!(status.success(), "exit status {status}");
}

#[test]
fn queue_list_json_fields() {
    let relay = Relay::start(trusted());
    let mut c = RawSmtp::connect(relay.smtp);
    c.reply();
    c.cmd("EHLO a");
    c.cmd("MAIL FROM:<n@example.com>");
    c.cmd("RCPT TO:<r@example.net>");
    c.cmd("DATA");
    c.send(&message("n@example.com", "r@example.net", "s", "b"));
    let id = queued_id(&c.cmd(".")).unwrap();
    let out = relay.cli(&["queue", "list", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).unwrap();
    let v: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "email_id",
            "recipient",
            "status",
            "attempts",
            "next_attempt_at",
            "last_response"
        ]
    );
    assert_eq!(v["email_id"], id.as_str());
    assert_eq!(v["recipient"], "r@example.net");
    assert!(
        ["queued", "sending", "deferred"].contains(&v["status"].as_str().unwrap()),
        "{v}"
    );
    // A recipient being delivered right now has no next attempt.
    match v["status"].as_str().unwrap() {
        "sending" => assert!(v["next_attempt_at"].is_null(), "{v}"),
        _ => assert!(v["next_attempt_at"].as_str().unwrap().ends_with('Z'), "{v}"),
    }
}
