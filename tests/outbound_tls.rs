//! TLS policy against a real SMTP server on loopback with real TLS.

#[path = "support/mx.rs"]
mod mx;

use std::time::Duration;

use mx::{BrokenTls, MxConfig, TestMx};
use trackrelay::outbound::{
    deliver, ClientConfig, Outcome, OutgoingMessage, Timeouts, TlsMemory, TlsPolicy,
};

fn config(policy: TlsPolicy) -> ClientConfig {
    let t = Duration::from_secs(10);
    ClientConfig {
        tls_policy: policy,
        timeouts: Timeouts::uniform(t),
        ..ClientConfig::new("relay.test")
    }
}

fn message(rcpt: &str) -> OutgoingMessage {
    OutgoingMessage {
        mail_from: "sender@example.com".into(),
        rcpt_to: rcpt.into(),
        data: format!("From: sender@example.com\r\nTo: {rcpt}\r\nSubject: tls\r\n\r\nhello\r\n")
            .into_bytes(),
        needs_smtputf8: false,
        needs_8bitmime: false,
    }
}

fn assert_no_plaintext_transaction(mx: &TestMx) {
    let commands = mx.commands();
    assert!(
        !commands
            .iter()
            .any(|c| c.starts_with("MAIL") || c.starts_with("RCPT") || c.starts_with("DATA")),
        "a transaction was started: {commands:?}"
    );
    assert!(mx.received().is_empty());
}

#[tokio::test]
async fn opportunistic_uses_starttls_when_offered() {
    let mx = TestMx::start(MxConfig::default()).await;
    let memory = TlsMemory::default();
    let out = deliver(
        mx.addr(),
        "mx.test",
        &config(TlsPolicy::Opportunistic),
        &[message("a@example.net")],
        &memory,
    )
    .await;
    assert!(
        matches!(&out[0], Outcome::Delivered { tls: Some(v), .. } if v == "TLSv1.3"),
        "{out:?}"
    );
    let got = mx.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].tls.as_deref(), Some("TLSv1.3"));
    let conns = mx.connections();
    assert_eq!(conns.len(), 1);
    assert_eq!(
        conns[0].sni.as_deref(),
        Some("mx.test"),
        "SNI is the server name"
    );
    // EHLO again after the handshake, as RFC 3207 requires.
    let ehlos = conns[0]
        .commands
        .iter()
        .filter(|c| c.starts_with("EHLO"))
        .count();
    assert_eq!(ehlos, 2);
}

#[tokio::test]
async fn opportunistic_sends_plaintext_without_starttls() {
    let mx = TestMx::start(MxConfig {
        starttls: false,
        ..Default::default()
    })
    .await;
    let memory = TlsMemory::default();
    let out = deliver(
        mx.addr(),
        "mx.test",
        &config(TlsPolicy::Opportunistic),
        &[message("a@example.net")],
        &memory,
    )
    .await;
    assert!(
        matches!(&out[0], Outcome::Delivered { tls: None, .. }),
        "{out:?}"
    );
    assert_eq!(mx.received()[0].tls, None);
    assert!(
        !memory.is_broken(mx.addr()),
        "no STARTTLS is not broken TLS"
    );
}

async fn broken_tls_falls_back_to_plaintext(mode: BrokenTls) {
    let mx = TestMx::start(MxConfig {
        starttls: false,
        broken_tls: Some(mode),
        ..Default::default()
    })
    .await;
    let memory = TlsMemory::default();
    let cfg = config(TlsPolicy::Opportunistic);
    let msgs = [message("a@example.net"), message("b@example.net")];
    let out = deliver(mx.addr(), "mx.test", &cfg, &msgs, &memory).await;
    assert!(
        out.iter()
            .all(|o| matches!(o, Outcome::Delivered { tls: None, .. })),
        "{out:?}"
    );

    let conns = mx.connections();
    assert_eq!(
        conns.len(),
        2,
        "a new connection after the failed handshake"
    );
    assert!(conns[0].tls_failed);
    assert!(
        !conns[1].commands.iter().any(|c| c == "STARTTLS"),
        "no second STARTTLS"
    );
    let got = mx.received();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|r| r.connection == 1 && r.tls.is_none()));

    // Reported through the memory, and used: the next delivery goes
    // straight to plaintext on one connection.
    let reason = memory
        .broken_reason(mx.addr())
        .expect("host remembered as TLS-broken");
    assert!(!reason.is_empty());
    let out = deliver(
        mx.addr(),
        "mx.test",
        &cfg,
        &[message("c@example.net")],
        &memory,
    )
    .await;
    assert!(out[0].is_delivered(), "{out:?}");
    assert_eq!(mx.connections().len(), 3);
    assert!(!mx.connections()[2].commands.iter().any(|c| c == "STARTTLS"));
}

#[tokio::test]
async fn opportunistic_broken_handshake_close_still_delivers() {
    broken_tls_falls_back_to_plaintext(BrokenTls::Close).await;
}

#[tokio::test]
async fn opportunistic_broken_handshake_garbage_still_delivers() {
    broken_tls_falls_back_to_plaintext(BrokenTls::Garbage).await;
}

#[tokio::test]
async fn enforced_without_starttls_is_tempfail_and_sends_nothing() {
    let mx = TestMx::start(MxConfig {
        starttls: false,
        ..Default::default()
    })
    .await;
    let memory = TlsMemory::default();
    let msgs = [message("a@example.net"), message("b@example.net")];
    let out = deliver(
        mx.addr(),
        "mx.test",
        &config(TlsPolicy::Enforced),
        &msgs,
        &memory,
    )
    .await;
    assert_eq!(out.len(), 2);
    for o in &out {
        match o {
            Outcome::TempFail { reason, tls: None } => {
                assert!(reason.contains("STARTTLS not offered"), "{reason}")
            }
            other => panic!("expected TempFail, got {other:?}"),
        }
    }
    assert_no_plaintext_transaction(&mx);
    assert_eq!(mx.connections().len(), 1);
}

#[tokio::test]
async fn enforced_broken_handshake_is_tempfail_and_never_plaintext() {
    for mode in [BrokenTls::Close, BrokenTls::Garbage] {
        let mx = TestMx::start(MxConfig {
            starttls: false,
            broken_tls: Some(mode),
            ..Default::default()
        })
        .await;
        let memory = TlsMemory::default();
        let msgs = [message("a@example.net"), message("b@example.net")];
        let out = deliver(
            mx.addr(),
            "mx.test",
            &config(TlsPolicy::Enforced),
            &msgs,
            &memory,
        )
        .await;
        for o in &out {
            match o {
                Outcome::TempFail { reason, .. } => {
                    assert!(reason.contains("TLS required"), "{reason}")
                }
                other => panic!("expected TempFail, got {other:?}"),
            }
        }
        assert_no_plaintext_transaction(&mx);
        assert_eq!(
            mx.connections().len(),
            1,
            "no plaintext reconnection ({mode:?})"
        );
    }
}

#[tokio::test]
async fn enforced_accepts_tls12_and_reports_the_version() {
    let mx = TestMx::start(MxConfig {
        tls12_only: true,
        ..Default::default()
    })
    .await;
    let memory = TlsMemory::default();
    let out = deliver(
        mx.addr(),
        "mx.test",
        &config(TlsPolicy::Enforced),
        &[message("a@example.net")],
        &memory,
    )
    .await;
    assert!(
        matches!(&out[0], Outcome::Delivered { tls: Some(v), .. } if v == "TLSv1.2"),
        "{out:?}"
    );
    assert_eq!(mx.received()[0].tls.as_deref(), Some("TLSv1.2"));
}

#[tokio::test]
async fn enforced_ignores_the_broken_tls_memory() {
    let mx = TestMx::start(MxConfig::default()).await;
    let memory = TlsMemory::default();
    memory.mark_broken(mx.addr(), "stale");
    let out = deliver(
        mx.addr(),
        "mx.test",
        &config(TlsPolicy::Enforced),
        &[message("a@example.net")],
        &memory,
    )
    .await;
    assert!(
        matches!(&out[0], Outcome::Delivered { tls: Some(_), .. }),
        "{out:?}"
    );
}

#[tokio::test]
async fn refused_starttls_continues_in_plaintext_only_when_opportunistic() {
    let refusing = || MxConfig {
        starttls: false,
        starttls_refusal: Some("454 4.7.0 TLS not available now".into()),
        ..Default::default()
    };
    let mx = TestMx::start(refusing()).await;
    let memory = TlsMemory::default();
    let out = deliver(
        mx.addr(),
        "mx.test",
        &config(TlsPolicy::Opportunistic),
        &[message("a@example.net")],
        &memory,
    )
    .await;
    assert!(
        matches!(&out[0], Outcome::Delivered { tls: None, .. }),
        "{out:?}"
    );
    assert_eq!(mx.connections().len(), 1, "same connection, RFC 3207");

    let mx = TestMx::start(refusing()).await;
    let out = deliver(
        mx.addr(),
        "mx.test",
        &config(TlsPolicy::Enforced),
        &[message("a@example.net")],
        &memory,
    )
    .await;
    assert!(
        matches!(&out[0], Outcome::TempFail { reason, .. } if reason.contains("STARTTLS refused: 454")),
        "{out:?}"
    );
    assert_no_plaintext_transaction(&mx);
}

#[tokio::test]
async fn enforced_fails_against_a_helo_only_server() {
    let mx = TestMx::start(MxConfig {
        reject_ehlo: true,
        ..Default::default()
    })
    .await;
    let out = deliver(
        mx.addr(),
        "mx.test",
        &config(TlsPolicy::Enforced),
        &[message("a@example.net")],
        &TlsMemory::default(),
    )
    .await;
    assert!(
        matches!(&out[0], Outcome::TempFail { reason, .. } if reason.contains("STARTTLS not offered")),
        "{out:?}"
    );
    assert_no_plaintext_transaction(&mx);
}
