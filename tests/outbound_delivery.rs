//! SMTP transactions against a real server on loopback: replies, failures,
//! byte fidelity, extensions.

#[path = "support/mx.rs"]
mod mx;

use std::time::Duration;

use mx::{MxConfig, Script, TestMx};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trackrelay::outbound::{deliver, ClientConfig, Outcome, OutgoingMessage, Timeouts, TlsMemory};

fn config() -> ClientConfig {
    let t = Duration::from_secs(10);
    ClientConfig {
        timeouts: Timeouts::uniform(t),
        ..ClientConfig::new("relay.test")
    }
}

fn message(rcpt: &str) -> OutgoingMessage {
    OutgoingMessage {
        mail_from: "sender@example.com".into(),
        rcpt_to: rcpt.into(),
        data: format!(
            "From: sender@example.com\r\nTo: {rcpt}\r\nSubject: test\r\n\r\nhello {rcpt}\r\n"
        )
        .into_bytes(),
        needs_smtputf8: false,
        needs_8bitmime: false,
    }
}

fn messages(rcpts: &[&str]) -> Vec<OutgoingMessage> {
    rcpts.iter().map(|r| message(r)).collect()
}

async fn send(mx: &TestMx, msgs: &[OutgoingMessage]) -> Vec<Outcome> {
    deliver(mx.addr(), "mx.test", &config(), msgs, &TlsMemory::default()).await
}

fn plain() -> MxConfig {
    // Plaintext keeps these tests about SMTP, not TLS.
    MxConfig {
        starttls: false,
        ..Default::default()
    }
}

#[tokio::test]
async fn received_bytes_equal_sent_bytes_including_dot_lines() {
    let body: &[u8] = b"From: sender@example.com\r\nTo: a@example.net\r\nSubject: dots\r\n\r\n\
        .leading dot\r\n..two dots\r\n.\r\nline\r\n. \r\n.\r\n\r\n\
        8-bit: \xc3\xa9\xff\x00 and a bare\nLF line\r\nlast line\r\n";
    for tls in [false, true] {
        let mx = TestMx::start(MxConfig {
            starttls: tls,
            ..Default::default()
        })
        .await;
        let mut msg = message("a@example.net");
        msg.data = body.to_vec();
        msg.needs_8bitmime = true;
        let out = send(&mx, &[msg]).await;
        assert!(out[0].is_delivered(), "{out:?}");
        // Unchanged but for the bare LF, which goes out as CRLF (issue 10:
        // no receiver may read a line end the sender did not mean).
        let expected = body
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .collect::<Vec<_>>()
            .join(&b"\r\n"[..]);
        assert_eq!(
            mx.received()[0].data,
            expected,
            "bytes changed (tls: {tls})"
        );
        assert!(mx.received()[0].body_8bitmime);
    }
}

#[tokio::test]
async fn missing_final_crlf_is_the_only_thing_added() {
    let mx = TestMx::start(plain()).await;
    let mut msg = message("a@example.net");
    msg.data = b"From: s@example.com\r\n\r\nno final newline".to_vec();
    let out = send(&mx, &[msg.clone()]).await;
    assert!(out[0].is_delivered());
    let mut expected = msg.data.clone();
    expected.extend_from_slice(b"\r\n");
    assert_eq!(mx.received()[0].data, expected);

    msg.data = b"From: s@example.com\r\n\r\nends with a dot line\r\n.".to_vec();
    send(&mx, &[msg.clone()]).await;
    let mut expected = msg.data.clone();
    expected.extend_from_slice(b"\r\n");
    assert_eq!(mx.received()[1].data, expected);
}

#[tokio::test]
async fn several_messages_share_one_pipelined_connection() {
    let mx = TestMx::start(plain()).await;
    let msgs = messages(&["a@example.net", "b@example.net", "c@example.net"]);
    let out = send(&mx, &msgs).await;
    assert!(out.iter().all(Outcome::is_delivered), "{out:?}");
    assert!(
        out[0].text().starts_with("250 2.0.0 Ok: queued as"),
        "{}",
        out[0].text()
    );
    let got = mx.received();
    assert_eq!(got.len(), 3);
    for (r, m) in got.iter().zip(&msgs) {
        assert_eq!(r.connection, 0);
        assert_eq!(
            r.rcpt_to,
            vec![m.rcpt_to.clone()],
            "one RCPT per transaction"
        );
        assert_eq!(r.data, m.data);
        assert!(r.pipelined, "MAIL, RCPT and DATA in one write");
        assert_eq!(r.size_param, None, "no SIZE advertised, none sent");
    }
    assert_eq!(mx.connections().len(), 1);
    assert_eq!(mx.commands().last().map(String::as_str), Some("QUIT"));
}

#[tokio::test]
async fn the_next_envelope_goes_out_before_the_last_reply() {
    // The MX answers each of the first two messages only once the next
    // command has arrived: a client waiting in lockstep would time out.
    let mx = TestMx::start(MxConfig {
        hold_data_reply: 2,
        ..plain()
    })
    .await;
    let msgs = messages(&["a@example.net", "b@example.net", "c@example.net"]);
    let out = send(&mx, &msgs).await;
    for (i, o) in out.iter().enumerate() {
        // Each outcome is its own message's reply, in order.
        let queued = format!("queued as TEST{}", i + 1);
        assert!(o.is_delivered() && o.text().contains(&queued), "{out:?}");
    }
    let got = mx.received();
    let rcpts: Vec<_> = got.iter().map(|r| r.rcpt_to[0].as_str()).collect();
    assert_eq!(rcpts, ["a@example.net", "b@example.net", "c@example.net"]);
    assert_eq!(mx.connections().len(), 1);
    assert!(
        !mx.commands().iter().any(|c| c == "RSET"),
        "the end of data ends the transaction: {:?}",
        mx.commands()
    );
}

#[tokio::test]
async fn a_421_after_the_data_leaves_the_pipelined_message_not_attempted() {
    let mx = TestMx::start(MxConfig {
        hold_data_reply: 1,
        ..plain().script(
            "a@example.net",
            Script::always("421 4.3.2 shutting down").at_data(),
        )
    })
    .await;
    let out = send(
        &mx,
        &messages(&["a@example.net", "b@example.net", "c@example.net"]),
    )
    .await;
    assert!(
        matches!(&out[0], Outcome::TempFail { reason, .. } if reason.contains("421 4.3.2")),
        "{out:?}"
    );
    for o in &out[1..] {
        assert!(
            matches!(o, Outcome::TempFail { reason, .. }
                if reason.starts_with("not attempted: server closed the session: end of DATA: 421")),
            "{out:?}"
        );
    }
    assert!(mx.received().is_empty());
}

#[tokio::test]
async fn a_refusal_decided_here_keeps_its_place_among_the_outcomes() {
    let mx = TestMx::start(MxConfig {
        smtputf8: false,
        ..plain()
    })
    .await;
    let out = send(
        &mx,
        &messages(&["a@example.net", "jos\u{e9}@example.net", "c@example.net"]),
    )
    .await;
    assert!(out[0].is_delivered(), "{out:?}");
    assert!(
        matches!(&out[1], Outcome::PermFail { reason, .. } if reason.contains("SMTPUTF8")),
        "{out:?}"
    );
    assert!(out[2].is_delivered(), "{out:?}");
    let rcpts: Vec<_> = mx.received().iter().map(|r| r.rcpt_to[0].clone()).collect();
    assert_eq!(rcpts, ["a@example.net", "c@example.net"]);
}

#[tokio::test]
async fn no_pipelining_when_not_offered() {
    let mx = TestMx::start(MxConfig {
        pipelining: false,
        ..plain()
    })
    .await;
    let out = send(&mx, &[message("a@example.net"), message("b@example.net")]).await;
    assert!(out.iter().all(Outcome::is_delivered), "{out:?}");
    assert!(mx.received().iter().all(|r| !r.pipelined));
}

#[tokio::test]
async fn greylisting_451_is_tempfail_then_delivers_on_retry() {
    let mx = TestMx::start(plain().script(
        "a@example.net",
        Script::first(1, "451 4.7.1 greylisted, come back later"),
    ))
    .await;
    let out = send(&mx, &[message("a@example.net")]).await;
    match &out[0] {
        Outcome::TempFail { reason, .. } => {
            assert!(reason.contains("451 4.7.1 greylisted"), "{reason}");
            assert!(reason.contains("RCPT TO:<a@example.net>"), "{reason}");
        }
        other => panic!("expected TempFail, got {other:?}"),
    }
    assert!(mx.received().is_empty());
    let out = send(&mx, &[message("a@example.net")]).await;
    assert!(out[0].is_delivered(), "{out:?}");
    assert_eq!(mx.received().len(), 1);
}

#[tokio::test]
async fn rejected_recipient_fails_only_its_message() {
    for pipelining in [true, false] {
        let mx = TestMx::start(
            MxConfig {
                pipelining,
                ..plain()
            }
            .script(
                "bad@example.net",
                Script::always("550 5.1.1 <bad@example.net>: no such user"),
            ),
        )
        .await;
        let msgs = [
            message("a@example.net"),
            message("bad@example.net"),
            message("c@example.net"),
        ];
        let out = send(&mx, &msgs).await;
        assert!(out[0].is_delivered(), "{out:?}");
        assert!(
            matches!(&out[1], Outcome::PermFail { reason, .. } if reason.contains("550 5.1.1")),
            "{out:?}"
        );
        assert!(out[2].is_delivered(), "{out:?}");
        let got: Vec<_> = mx.received().iter().map(|r| r.rcpt_to[0].clone()).collect();
        assert_eq!(got, vec!["a@example.net", "c@example.net"]);
        assert_eq!(mx.connections().len(), 1);
        assert!(
            mx.commands().iter().any(|c| c == "RSET"),
            "RSET after the failure"
        );
    }
}

#[tokio::test]
async fn end_of_data_replies_decide_the_outcome() {
    let mx = TestMx::start(
        plain()
            .script(
                "spam@example.net",
                Script::always("554 5.7.1 content rejected").at_data(),
            )
            .script(
                "full@example.net",
                Script::always("452 4.3.1 insufficient storage").at_data(),
            ),
    )
    .await;
    let out = send(
        &mx,
        &messages(&["spam@example.net", "full@example.net", "ok@example.net"]),
    )
    .await;
    assert!(
        matches!(&out[0], Outcome::PermFail { reason, .. } if reason.contains("554 5.7.1")),
        "{out:?}"
    );
    assert!(
        matches!(&out[1], Outcome::TempFail { reason, .. } if reason.contains("452 4.3.1")),
        "{out:?}"
    );
    assert!(out[2].is_delivered());
}

#[tokio::test]
async fn connection_dropped_mid_data_is_tempfail_for_it_and_the_rest() {
    let mx = TestMx::start(MxConfig {
        drop_mid_data_once: true,
        ..plain()
    })
    .await;
    let msgs = [message("a@example.net"), message("b@example.net")];
    let out = send(&mx, &msgs).await;
    assert!(matches!(&out[0], Outcome::TempFail { .. }), "{out:?}");
    assert!(
        matches!(&out[1], Outcome::TempFail { reason, .. } if reason.starts_with("not attempted")),
        "{out:?}"
    );
    assert!(mx.received().is_empty());
    // The caller's retry goes through.
    let out = send(&mx, &msgs).await;
    assert!(out.iter().all(Outcome::is_delivered), "{out:?}");
}

#[tokio::test]
async fn smtputf8_needed_but_absent_is_permfail_others_still_go() {
    let mx = TestMx::start(MxConfig {
        smtputf8: false,
        ..plain()
    })
    .await;
    let mut intl = message("a@example.net");
    intl.needs_smtputf8 = true;
    let mut intl_addr = message("josé@exämple.net");
    intl_addr.needs_smtputf8 = false; // implied by the address
    let out = send(&mx, &[intl, intl_addr, message("c@example.net")]).await;
    for o in &out[..2] {
        assert!(
            matches!(o, Outcome::PermFail { reason, .. } if reason.contains("SMTPUTF8")),
            "{out:?}"
        );
    }
    assert!(out[2].is_delivered());
    let mails = mx
        .commands()
        .iter()
        .filter(|c| c.starts_with("MAIL"))
        .count();
    assert_eq!(mails, 1, "nothing sent for the messages that cannot go");
}

#[tokio::test]
async fn smtputf8_is_requested_when_offered() {
    let mx = TestMx::start(plain()).await;
    let mut msg = message("josé@exämple.net");
    msg.data = "From: s@example.com\r\nTo: josé@exämple.net\r\n\r\nhé\r\n".into();
    let out = send(&mx, &[msg.clone()]).await;
    assert!(out[0].is_delivered(), "{out:?}");
    let got = &mx.received()[0];
    assert!(got.smtputf8);
    assert_eq!(got.rcpt_to, vec!["josé@exämple.net".to_string()]);
    assert_eq!(got.data, msg.data);
}

#[tokio::test]
async fn size_limit_is_respected() {
    let mx = TestMx::start(MxConfig {
        size_limit: Some(200),
        ..plain()
    })
    .await;
    let mut big = message("big@example.net");
    big.data.extend(std::iter::repeat_n(b'x', 300));
    big.data.extend_from_slice(b"\r\n");
    let small = message("small@example.net");
    let out = send(&mx, &[big, small.clone()]).await;
    assert!(
        matches!(&out[0], Outcome::PermFail { reason, .. } if reason.contains("limit of 200")),
        "{out:?}"
    );
    assert!(out[1].is_delivered());
    assert_eq!(mx.received()[0].size_param, Some(small.data.len()));
}

#[tokio::test]
async fn refused_connection_is_tempfail_for_all() {
    // Bound but never listening: refused, and nobody else can take the port.
    let closed = tokio::net::TcpSocket::new_v4().unwrap();
    closed.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = closed.local_addr().unwrap();
    let out = deliver(
        addr,
        "gone.test",
        &config(),
        &[message("a@example.net"), message("b@example.net")],
        &TlsMemory::default(),
    )
    .await;
    assert_eq!(out.len(), 2);
    assert!(
        out.iter()
            .all(|o| matches!(o, Outcome::TempFail { reason, .. } if reason.contains("connect"))),
        "{out:?}"
    );
}

#[tokio::test]
async fn rejecting_greeting_is_tempfail() {
    let mx = TestMx::start(MxConfig {
        greeting: Some("554 5.7.1 no service for you".into()),
        ..plain()
    })
    .await;
    let out = send(&mx, &[message("a@example.net")]).await;
    assert!(
        matches!(&out[0], Outcome::TempFail { reason, .. } if reason.contains("554 5.7.1")),
        "{out:?}"
    );
}

#[tokio::test]
async fn closing_421_fails_the_message_and_leaves_the_rest_for_later() {
    let mx =
        TestMx::start(plain().script("b@example.net", Script::always("421 4.3.2 shutting down")))
            .await;
    let out = send(
        &mx,
        &messages(&["a@example.net", "b@example.net", "c@example.net"]),
    )
    .await;
    assert!(out[0].is_delivered());
    assert!(
        matches!(&out[1], Outcome::TempFail { reason, .. } if reason.contains("421")),
        "{out:?}"
    );
    assert!(
        matches!(&out[2], Outcome::TempFail { reason, .. } if reason.starts_with("not attempted")),
        "{out:?}"
    );
}

#[tokio::test]
async fn invalid_addresses_never_reach_the_wire() {
    let mx = TestMx::start(plain()).await;
    let mut evil = message("a@example.net>\r\nRCPT TO:<victim@example.org");
    evil.data = b"From: s@example.com\r\n\r\nx\r\n".to_vec();
    let out = send(&mx, &[evil, message("ok@example.net")]).await;
    assert!(
        matches!(&out[0], Outcome::PermFail { reason, .. } if reason.contains("invalid address")),
        "{out:?}"
    );
    assert!(out[1].is_delivered());
    assert!(!mx.commands().iter().any(|c| c.contains("victim")));
}

/// A server that sends `script` on connect and then whatever it likes.
async fn raw_server(script: &'static [u8]) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = tcp.write_all(script).await;
                let mut buf = [0u8; 1024];
                while let Ok(n) = tcp.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let _ = tcp.write_all(b"\xff\xfe garbage \x00\r\n").await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn garbage_from_the_network_is_a_tempfail_not_a_panic() {
    for script in [
        &b"HTTP/1.1 400 Bad Request\r\n\r\n"[..],
        b"220 fine\r\n",
        b"220-multi\r\n220-line\r\n",
        b"\x16\x03\x03\x00\x02\x02\x28",
        b"999 what\r\n",
    ] {
        let addr = raw_server(script).await;
        let mut cfg = config();
        cfg.timeouts.greeting = Duration::from_millis(500);
        cfg.timeouts.command = Duration::from_millis(500);
        let out = deliver(
            addr,
            "junk.test",
            &cfg,
            &[message("a@example.net")],
            &TlsMemory::default(),
        )
        .await;
        assert!(
            matches!(&out[0], Outcome::TempFail { .. }),
            "{script:?}: {out:?}"
        );
    }
}

#[tokio::test]
async fn silent_server_times_out() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut cfg = config();
    cfg.timeouts.greeting = Duration::from_millis(300);
    let started = std::time::Instant::now();
    let out = deliver(
        addr,
        "silent.test",
        &cfg,
        &[message("a@example.net")],
        &TlsMemory::default(),
    )
    .await;
    assert!(
        matches!(&out[0], Outcome::TempFail { reason, .. } if reason.contains("greeting")),
        "{out:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(listener);
}

#[tokio::test]
async fn helo_fallback_when_ehlo_is_unknown() {
    let mx = TestMx::start(MxConfig {
        reject_ehlo: true,
        ..Default::default()
    })
    .await;
    let out = send(&mx, &[message("a@example.net"), message("b@example.net")]).await;
    assert!(
        out.iter()
            .all(|o| matches!(o, Outcome::Delivered { tls: None, .. })),
        "{out:?}"
    );
    let commands = mx.commands();
    assert!(
        commands.iter().any(|c| c.starts_with("HELO relay.test")),
        "{commands:?}"
    );
    assert!(
        !commands.iter().any(|c| c == "STARTTLS"),
        "no extensions after HELO"
    );
    assert!(mx.received().iter().all(|r| !r.pipelined));
}

#[tokio::test]
async fn empty_batch_does_not_connect() {
    let addr = "127.0.0.1:9".parse().unwrap();
    assert!(deliver(addr, "x", &config(), &[], &TlsMemory::default())
        .await
        .is_empty());
}

#[tokio::test]
async fn sink_mode_counts_without_keeping() {
    let mx = TestMx::start(MxConfig {
        keep_data: false,
        log_commands: false,
        ..plain()
    })
    .await;
    let msgs: Vec<_> = (0..20)
        .map(|i| message(&format!("r{i}@example.net")))
        .collect();
    let out = send(&mx, &msgs).await;
    assert!(out.iter().all(Outcome::is_delivered));
    assert!(mx.wait_for(20, Duration::from_secs(1)).await);
    assert!(mx.received().iter().all(|r| r.data.is_empty() && r.len > 0));
    assert!(mx.commands().is_empty());
}
