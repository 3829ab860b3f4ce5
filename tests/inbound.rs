//! The return-path MX (`[inbound]`) against the real binary over real TCP
//! and TLS: what it stores, what it refuses, and that abuse leaves it
//! serving.

mod harness;

use harness::*;
use lettre::address::Envelope;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use std::io::{BufRead, Read};
use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::time::Duration;

const BOUNCES: &str = "bounces+anything@bounces.example.com";

/// example.com has the return path `bounces`; example.org has none. The
/// feedback processor is off: these tests read what the listener stored,
/// which the processor would delete at once (their reports name no email;
/// tests/feedback_apply.rs has the two together).
fn inbound(keys: &str) -> Options {
    Options {
        domain: "return_path = \"bounces\"".into(),
        extra: format!("[inbound]\nlisten = [\"127.0.0.1:0\"]\nprocess = false\n{keys}\n"),
        ..Options::default()
    }
}

fn mx(relay: &Relay) -> SocketAddr {
    relay
        .inbound
        .expect("the inbound listener is in the ready file")
}

/// Postfix's bounce from the fixtures, with CRLF line ends and a line that
/// starts with a dot (stuffed on the wire, stored without the extra dot).
fn dsn() -> Vec<u8> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/feedback/postfix_user_unknown.eml"
    );
    let text = std::fs::read_to_string(path).unwrap().replace("\r\n", "\n");
    let text = text.replace(
        "be delivered to one or more recipients.\n",
        "be delivered to one or more recipients.\n.a line that starts with a dot\n",
    );
    assert!(text.contains("\n.a line"));
    text.replace('\n', "\r\n").into_bytes()
}

fn dot_stuffed(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in data.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    out
}

/// Every line of one reply (EHLO's are several).
fn reply_lines(c: &mut RawSmtp) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if c.reader.read_line(&mut line).unwrap_or(0) == 0 {
            return lines;
        }
        let done = line.len() < 4 || line.as_bytes()[3] != b'-';
        lines.push(line.trim_end().to_string());
        if done {
            return lines;
        }
    }
}

/// The report id out of `250 2.0.0 Ok: stored as report <id>`.
fn report_id(reply: &str) -> i64 {
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    reply
        .rsplit(' ')
        .next()
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no report id in {reply}"))
}

/// One whole transaction from `<>` on a greeted connection; the last reply.
fn send_report(c: &mut RawSmtp, rcpt: &str, data: &[u8]) -> String {
    assert!(c.cmd("EHLO mta.example.net").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<>").starts_with("250"));
    let r = c.cmd(&format!("RCPT TO:<{rcpt}>"));
    assert!(r.starts_with("250"), "{r}");
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(&dot_stuffed(data));
    c.cmd(".")
}

fn count_reports(relay: &Relay) -> i64 {
    relay
        .db()
        .query_row("SELECT COUNT(*) FROM inbound_reports", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn a_dsn_from_the_null_sender_is_in_the_database_when_250_comes() {
    let relay = Relay::start(Options {
        api_token: true,
        ..inbound("")
    });
    let mut c = RawSmtp::connect(mx(&relay));
    assert!(c.reply().starts_with("220 relay.test"));
    let raw = dsn();
    let id = report_id(&send_report(&mut c, BOUNCES, &raw));
    // Read right after the 250, from the file, by another connection.
    let (stored, rcpt_to, mail_from, helo, peer, size, processed): (
        Vec<u8>,
        String,
        String,
        String,
        String,
        i64,
        Option<i64>,
    ) = relay
        .db()
        .query_row(
            "SELECT raw, rcpt_to, mail_from, helo, peer_ip, size, processed_at
             FROM inbound_reports WHERE id = ?1",
            [id],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            },
        )
        .unwrap();
    assert_eq!(stored, raw, "the bytes as sent, dot-stuffing undone");
    assert_eq!(rcpt_to, format!("[\"{BOUNCES}\"]"));
    assert_eq!(mail_from, "", "the null sender");
    assert_eq!(
        (helo.as_str(), peer.as_str()),
        ("mta.example.net", "127.0.0.1")
    );
    assert_eq!(size, raw.len() as i64);
    assert_eq!(processed, None, "waiting for the feedback processor");
    assert!(c.cmd("QUIT").starts_with("221"));
    let log = relay.log();
    assert!(
        log.lines().any(|l| l.contains("inbound report stored")
            && l.contains(&format!("report_id={id}"))
            && l.contains(&format!("size={}", raw.len()))),
        "{log}"
    );
    let (status, _, body) = http(
        relay.api,
        "GET",
        "/metrics",
        &[("Authorization", &format!("Bearer {API_TOKEN}"))],
    );
    let body = String::from_utf8(body).unwrap();
    assert_eq!(status, 200);
    assert!(
        body.contains("trackrelay_inbound_messages_total{result=\"accepted\"} 1\n"),
        "{body}"
    );
}

#[test]
fn foreign_recipients_get_550_and_the_return_path_ones_are_kept() {
    let relay = Relay::start(inbound(""));
    let mut c = RawSmtp::connect(mx(&relay));
    c.reply();
    assert!(c.cmd("EHLO mta.example.net").starts_with("250"));
    assert!(c
        .cmd("MAIL FROM:<postmaster@example.net>")
        .starts_with("250"));
    for foreign in [
        "victim@example.net",              // another domain: an open relay's test
        "bounces+x@example.com",           // the sending domain itself
        "x@links.example.com",             // a subdomain that is not the return path
        "x@deeper.bounces.example.com",    // below the return path
        "bounces+x@bounces.example.org",   // a domain without return_path
        "x@bounces.example.com.evil.test", // a suffix trick
    ] {
        let r = c.cmd(&format!("RCPT TO:<{foreign}>"));
        assert!(r.starts_with("550 5.7.1 "), "{foreign}: {r}");
        assert!(r.contains("not a mailbox here"), "{r}");
    }
    // Any local part at the return-path domain, in any case.
    for good in [
        "fbl@BOUNCES.Example.COM",
        "unsubscribe+tok@bounces.example.com",
    ] {
        let r = c.cmd(&format!("RCPT TO:<{good}>"));
        assert!(r.starts_with("250 2.1.5"), "{good}: {r}");
    }
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: complaint\r\n\r\nbody\r\n");
    let id = report_id(&c.cmd("."));
    let rcpt_to: String = relay
        .db()
        .query_row(
            "SELECT rcpt_to FROM inbound_reports WHERE id = ?1",
            [id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        rcpt_to,
        "[\"fbl@BOUNCES.Example.COM\",\"unsubscribe+tok@bounces.example.com\"]"
    );
    // Only foreign recipients: nothing to accept, nothing stored.
    assert!(c.cmd("MAIL FROM:<>").starts_with("250"));
    assert!(c
        .cmd("RCPT TO:<victim@example.net>")
        .starts_with("550 5.7.1"));
    assert!(c.cmd("DATA").starts_with("554"));
    assert_eq!(count_reports(&relay), 1);
}

#[test]
fn a_hostile_sender_is_stored_as_sent_and_escaped_in_the_log() {
    let relay = Relay::start(inbound(""));
    let mut c = RawSmtp::connect(mx(&relay));
    c.reply();
    assert!(c.cmd("EHLO mta.example.net").starts_with("250"));
    // A quoted local part may carry an escape sequence; smtp-proto takes it.
    let sender = "\"x\x1b[2J\x1b]0;owned\x07\"@example.net";
    assert!(c.cmd(&format!("MAIL FROM:<{sender}>")).starts_with("250"));
    assert!(c.cmd(&format!("RCPT TO:<{BOUNCES}>")).starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: x\r\n\r\nx\r\n");
    let id = report_id(&c.cmd("."));
    let stored: String = relay
        .db()
        .query_row(
            "SELECT mail_from FROM inbound_reports WHERE id = ?1",
            [id],
            |r| r.get(0),
        )
        .unwrap();
    // smtp-proto drops the quotes, keeps the bytes.
    assert_eq!(stored, sender.replace('"', ""));
    let log = relay.log();
    let line = log
        .lines()
        .find(|l| l.contains(&format!("report_id={id} ")))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(!line.contains('\x1b') && !line.contains('\x07'), "{line:?}");
    assert!(line.contains("\\u{1b}[2J"), "{line:?}");
}

#[tokio::test]
async fn no_auth_is_offered_or_accepted_and_starttls_works() {
    let relay = Relay::start(inbound(""));
    let addr = mx(&relay);
    let mut c = RawSmtp::connect(addr);
    c.reply();
    c.send(b"EHLO mta.example.net\r\n");
    let ehlo = reply_lines(&mut c);
    assert!(ehlo.iter().all(|l| !l.contains("AUTH")), "{ehlo:?}");
    assert!(ehlo.iter().any(|l| l.ends_with("STARTTLS")), "{ehlo:?}");
    assert!(
        ehlo.iter().any(|l| l.ends_with("SIZE 10485760")),
        "{ehlo:?}"
    );
    for auth in ["AUTH PLAIN AGFwcABjb3JyZWN0", "AUTH LOGIN", "AUTH CRAM-MD5"] {
        let r = c.cmd(auth);
        assert!(
            r.starts_with("502 5.5.1 AUTH is not available"),
            "{auth}: {r}"
        );
    }
    // Still a working session after the refusals.
    assert!(c.cmd("MAIL FROM:<>").starts_with("250"));
    drop(c);

    let params = TlsParameters::builder("relay.test".into())
        .dangerous_accept_invalid_certs(true)
        .build_rustls()
        .unwrap();
    let mailer = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(addr.port())
        .tls(Tls::Required(params))
        .timeout(Some(Duration::from_secs(30)))
        .build();
    let envelope = Envelope::new(None, vec![BOUNCES.parse().unwrap()]).unwrap();
    let raw = dsn();
    let reply = mailer
        .send_raw(&envelope, &raw)
        .await
        .expect("over STARTTLS");
    let text: Vec<&str> = reply.message().collect();
    let id = report_id(&format!("250 2.0.0 {}", text.join(" ")));
    let stored: Vec<u8> = relay
        .db()
        .query_row("SELECT raw FROM inbound_reports WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .unwrap();
    // lettre always writes CRLF before the final dot, even after a CRLF.
    assert!(
        stored == [raw, b"\r\n".to_vec()].concat(),
        "stored {} bytes",
        stored.len()
    );
}

/// A small deterministic generator: the same "random" bytes every run.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The last line of every reply the server sends until it closes the
/// connection; a silence of 30 s fails the test.
fn replies_until_closed(c: &mut RawSmtp) -> Vec<String> {
    let mut all = Vec::new();
    loop {
        let mut line = String::new();
        match c.reader.read_line(&mut line) {
            Ok(0) => return all,
            Ok(_) if line.len() >= 4 && line.as_bytes()[3] == b'-' => {}
            Ok(_) => all.push(line.trim_end().to_string()),
            // The server closed with our junk still unread: a reset.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return all,
            Err(e) => panic!("no close from the server ({e}); replies so far: {all:?}"),
        }
    }
}

#[test]
fn garbage_gets_error_replies_and_the_next_client_is_served() {
    let relay = Relay::start(inbound(""));
    let addr = mx(&relay);
    let mut junk: Vec<Vec<u8>> = vec![
        // Random bytes, NULs included, no line end for far beyond a line.
        noise(7, 20_000),
        // NULs and bare LFs.
        b"\0\0\0\nHELO\0x\n\0MAIL\0FROM:<>\n".repeat(20),
        // An overlong command, then pipelined nonsense.
        [
            b"EHLO ".to_vec(),
            vec![b'a'; 10_000],
            b"\r\n".to_vec(),
            b"RCPT TO:<a@bounces.example.com>\r\nDATA\r\n..\r\nBDAT x\r\nMAIL FROM:<<>>\r\n"
                .repeat(20),
        ]
        .concat(),
    ];
    // Random bytes cut into lines.
    junk.push(
        noise(99, 20_000)
            .chunks(40)
            .flat_map(|l| [l, b"\r\n"].concat())
            .collect(),
    );
    for (i, bytes) in junk.iter().enumerate() {
        let mut c = RawSmtp::connect(addr);
        assert!(c.reply().starts_with("220"));
        c.send(bytes);
        let replies = replies_until_closed(&mut c);
        assert!(!replies.is_empty(), "junk {i}: no reply at all");
        for r in &replies {
            assert!(
                r.starts_with('5') || r.starts_with("421 4.7.0"),
                "junk {i}: only errors, got {r:?} in {replies:?}"
            );
        }
        // The session was closed for too many errors (its 421 may be lost
        // to the reset when junk was still unread).
    }
    let mut c = RawSmtp::connect(addr);
    assert!(c.reply().starts_with("220"));
    report_id(&send_report(&mut c, BOUNCES, &dsn()));
    assert_eq!(count_reports(&relay), 1, "junk stored nothing");
}

#[test]
fn an_oversize_report_gets_552_and_nothing_is_stored() {
    let relay = Relay::start(inbound("max_message_size = 2000"));
    let mut c = RawSmtp::connect(mx(&relay));
    c.reply();
    c.send(b"EHLO mta.example.net\r\n");
    assert!(reply_lines(&mut c).iter().any(|l| l.ends_with("SIZE 2000")));
    // Announced too big: refused at MAIL.
    let r = c.cmd("MAIL FROM:<> SIZE=5000");
    assert!(r.starts_with("552 5.3.4"), "{r}");
    // Sent too big: read to the end, then refused.
    assert!(c.cmd("MAIL FROM:<>").starts_with("250"));
    assert!(c.cmd(&format!("RCPT TO:<{BOUNCES}>")).starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(&b"0123456789".repeat(600));
    let r = c.cmd("\r\n.");
    assert!(r.starts_with("552 5.3.4"), "{r}");
    // Too big in chunks.
    assert!(c.cmd("MAIL FROM:<>").starts_with("250"));
    assert!(c.cmd(&format!("RCPT TO:<{BOUNCES}>")).starts_with("250"));
    c.send(b"BDAT 3000 LAST\r\n");
    c.send(&[b'x'; 3000]);
    let r = c.reply();
    assert!(r.starts_with("552 5.3.4"), "{r}");
    assert_eq!(count_reports(&relay), 0);
    // The same session still takes a report that fits.
    let small = b"Subject: small\r\n\r\nok\r\n";
    let id = report_id(&send_report(&mut c, BOUNCES, small));
    assert_eq!(count_reports(&relay), 1, "report {id}");
}

#[test]
fn recipients_beyond_fifty_get_452_and_sigterm_ends_cleanly() {
    let mut relay = Relay::start(inbound(""));
    let mut c = RawSmtp::connect(mx(&relay));
    c.reply();
    assert!(c.cmd("EHLO mta.example.net").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<>").starts_with("250"));
    for i in 0..50 {
        let r = c.cmd(&format!("RCPT TO:<bounces+{i}@bounces.example.com>"));
        assert!(r.starts_with("250"), "{i}: {r}");
    }
    let r = c.cmd("RCPT TO:<bounces+50@bounces.example.com>");
    assert!(r.starts_with("452 4.5.3"), "{r}");
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: x\r\n\r\nx\r\n");
    let id = report_id(&c.cmd("."));
    let n: i64 = relay
        .db()
        .query_row(
            "SELECT json_array_length(rcpt_to) FROM inbound_reports WHERE id = ?1",
            [id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 50);
    // An idle session is told 421 and the process exits 0.
    let status = relay.stop();
    assert!(status.success(), "{status}");
    assert!(c.reply().starts_with("421 4.3.2"));
}

#[test]
fn a_store_failure_is_451_and_the_session_goes_on() {
    if harness::on_postgres() {
        // The failure is made with SQLite's write lock, which another
        // process can hold; a PostgreSQL writer would wait, not fail.
        eprintln!("SKIPPED a_store_failure_is_451_and_the_session_goes_on: SQLite's lock only");
        return;
    }
    let relay = Relay::start(Options {
        store: "busy_timeout = \"1s\"".into(),
        ..inbound("")
    });
    let mut c = RawSmtp::connect(mx(&relay));
    c.reply();
    // Another process (a backup, an sqlite3 shell) holds the write lock.
    let locker = rusqlite::Connection::open(relay.db_path()).unwrap();
    locker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let r = send_report(&mut c, BOUNCES, &dsn());
    assert!(r.starts_with("451 4.3.0"), "{r}");
    locker.execute_batch("ROLLBACK").unwrap();
    drop(locker);
    assert_eq!(count_reports(&relay), 0);
    report_id(&send_report(&mut c, BOUNCES, &dsn()));
    assert_eq!(count_reports(&relay), 1);
}

#[test]
fn two_hundred_connections_meet_the_per_ip_cap_and_a_fresh_client_gets_through() {
    const CLIENTS: usize = 200;
    const CAP: usize = 20;
    let relay = Relay::start(inbound(&format!("max_connections_per_ip = {CAP}")));
    let addr = mx(&relay);
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                // Nothing may panic before the barrier, or the others wait.
                let first = match std::net::TcpStream::connect(addr) {
                    Ok(s) => {
                        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                        let mut c = RawSmtp {
                            reader: std::io::BufReader::new(s.try_clone().unwrap()),
                            stream: s,
                        };
                        let r = c.reply();
                        Some((c, r))
                    }
                    Err(_) => None,
                };
                // Every client holds its connection until all have their
                // first reply: the cap is met with all 200 open at once.
                barrier.wait();
                let (mut c, greeting) = first.expect("connect");
                if !greeting.starts_with("220") {
                    return (greeting, None);
                }
                let r = send_report(&mut c, BOUNCES, b"Subject: load\r\n\r\nx\r\n");
                c.cmd("QUIT");
                (greeting, Some(r))
            })
        })
        .collect();
    let results: Vec<(String, Option<String>)> =
        threads.into_iter().map(|t| t.join().unwrap()).collect();
    let greeted = results.iter().filter(|(g, _)| g.starts_with("220")).count();
    let refused = results
        .iter()
        .filter(|(g, _)| g.starts_with("421 4.7.0"))
        .count();
    assert_eq!((greeted, refused), (CAP, CLIENTS - CAP), "{results:?}");
    for (_, r) in &results {
        if let Some(r) = r {
            report_id(r);
        }
    }
    assert_eq!(count_reports(&relay), CAP as i64);
    // The slots come back as the server sees the closes.
    let mut fresh = None;
    wait_for("a free slot", Duration::from_secs(30), || {
        let mut c = RawSmtp::connect(addr);
        let ok = c.reply().starts_with("220");
        if ok {
            fresh = Some(c);
        }
        ok
    });
    let mut c = fresh.unwrap();
    report_id(&send_report(&mut c, BOUNCES, &dsn()));
    assert_eq!(count_reports(&relay), CAP as i64 + 1);
    let log = relay.log();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn without_an_inbound_section_there_is_no_listener() {
    let relay = Relay::start(Options::default());
    assert_eq!(relay.inbound, None);
    let ready = std::fs::read_to_string(relay.dir.path().join("ready-1.json")).unwrap();
    assert!(ready.contains("\"submission\""), "{ready}");
    assert!(!ready.contains("inbound"), "{ready}");
    // With the section, the same file names it.
    let with = Relay::start(inbound(""));
    let ready = std::fs::read_to_string(with.dir.path().join("ready-1.json")).unwrap();
    assert!(
        ready.contains(&format!("\"inbound\":[\"{}\"]", mx(&with))),
        "{ready}"
    );
    let mut buf = [0u8; 3];
    let mut s = std::net::TcpStream::connect(mx(&with)).unwrap();
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"220");
}
