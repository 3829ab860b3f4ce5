//! Smarthost mode: AUTH PLAIN/LOGIN over STARTTLS and over implicit TLS.

#[path = "support/mx.rs"]
mod mx;

use std::time::Duration;

use mx::{MxConfig, TestMx};
use trackrelay::outbound::{
    deliver, ClientConfig, Outcome, OutgoingMessage, Timeouts, TlsMemory, TlsPolicy,
};

fn creds() -> Option<(String, String)> {
    Some(("relay-user".into(), "s3cret pass".into()))
}

fn smarthost(
    policy: TlsPolicy,
    implicit_tls: bool,
    auth: Option<(String, String)>,
) -> ClientConfig {
    let t = Duration::from_secs(10);
    ClientConfig {
        tls_policy: policy,
        implicit_tls,
        auth,
        timeouts: Timeouts::uniform(t),
        ..ClientConfig::new("relay.test")
    }
}

fn message() -> OutgoingMessage {
    OutgoingMessage {
        mail_from: "app@example.com".into(),
        rcpt_to: "someone@example.org".into(),
        data: b"From: app@example.com\r\nTo: someone@example.org\r\nSubject: via smarthost\r\n\r\nhi\r\n".to_vec(),
        needs_smtputf8: false,
        needs_8bitmime: false,
    }
}

#[tokio::test]
async fn auth_plain_over_starttls() {
    let mx = TestMx::start(MxConfig {
        auth: creds(),
        ..Default::default()
    })
    .await;
    let cfg = smarthost(TlsPolicy::Enforced, false, creds());
    let out = deliver(
        mx.addr(),
        "smarthost.test",
        &cfg,
        &[message(), message()],
        &TlsMemory::default(),
    )
    .await;
    assert!(
        out.iter()
            .all(|o| matches!(o, Outcome::Delivered { tls: Some(_), .. })),
        "{out:?}"
    );
    let got = mx.received();
    assert_eq!(got.len(), 2);
    assert!(got
        .iter()
        .all(|r| r.auth_user.as_deref() == Some("relay-user") && r.tls.is_some()));
    let commands = mx.commands();
    let starttls = commands.iter().position(|c| c == "STARTTLS").unwrap();
    let auth = commands
        .iter()
        .position(|c| c.starts_with("AUTH PLAIN"))
        .unwrap();
    assert!(starttls < auth, "credentials only after TLS: {commands:?}");
    assert_eq!(
        commands.iter().filter(|c| c.starts_with("AUTH")).count(),
        1,
        "one AUTH per connection"
    );
}

#[tokio::test]
async fn auth_login_over_implicit_tls() {
    let mx = TestMx::start(MxConfig {
        implicit_tls: true,
        starttls: false,
        auth: creds(),
        auth_mechanisms: "LOGIN".into(),
        ..Default::default()
    })
    .await;
    let cfg = smarthost(TlsPolicy::Enforced, true, creds());
    let out = deliver(
        mx.addr(),
        "smarthost.test",
        &cfg,
        &[message()],
        &TlsMemory::default(),
    )
    .await;
    assert!(
        matches!(&out[0], Outcome::Delivered { tls: Some(v), .. } if v == "TLSv1.3"),
        "{out:?}"
    );
    let got = mx.received();
    assert_eq!(got[0].auth_user.as_deref(), Some("relay-user"));
    assert_eq!(got[0].tls.as_deref(), Some("TLSv1.3"));
    assert!(mx.commands().iter().any(|c| c == "AUTH LOGIN"));
    assert_eq!(mx.connections()[0].sni.as_deref(), Some("smarthost.test"));
}

#[tokio::test]
async fn auth_plain_over_implicit_tls_opportunistic_policy() {
    let mx = TestMx::start(MxConfig {
        implicit_tls: true,
        starttls: false,
        auth: creds(),
        ..Default::default()
    })
    .await;
    let cfg = smarthost(TlsPolicy::Opportunistic, true, creds());
    let out = deliver(
        mx.addr(),
        "smarthost.test",
        &cfg,
        &[message()],
        &TlsMemory::default(),
    )
    .await;
    assert!(
        matches!(&out[0], Outcome::Delivered { tls: Some(_), .. }),
        "{out:?}"
    );
}

#[tokio::test]
async fn wrong_password_is_tempfail_and_sends_nothing() {
    let mx = TestMx::start(MxConfig {
        auth: creds(),
        ..Default::default()
    })
    .await;
    let cfg = smarthost(
        TlsPolicy::Enforced,
        false,
        Some(("relay-user".into(), "wrong".into())),
    );
    let out = deliver(
        mx.addr(),
        "smarthost.test",
        &cfg,
        &[message(), message()],
        &TlsMemory::default(),
    )
    .await;
    for o in &out {
        assert!(
            matches!(o, Outcome::TempFail { reason, .. } if reason.contains("535")),
            "{out:?}"
        );
    }
    assert!(mx.received().is_empty());
    assert!(
        !format!("{out:?}").contains("wrong"),
        "the password never appears in outcomes"
    );
}

#[tokio::test]
async fn implicit_tls_to_a_plaintext_server_is_tempfail() {
    let mx = TestMx::start(MxConfig {
        starttls: false,
        ..Default::default()
    })
    .await;
    let cfg = smarthost(TlsPolicy::Opportunistic, true, creds());
    let out = deliver(
        mx.addr(),
        "smarthost.test",
        &cfg,
        &[message()],
        &TlsMemory::default(),
    )
    .await;
    assert!(
        matches!(&out[0], Outcome::TempFail { reason, .. } if reason.contains("implicit TLS")),
        "{out:?}"
    );
    // The MX logs the ClientHello as a garbled line; no SMTP command follows.
    let commands = mx.commands();
    assert!(
        !commands
            .iter()
            .any(|c| ["EHLO", "AUTH", "MAIL"].iter().any(|k| c.starts_with(k))),
        "no plaintext fallback on an implicit-TLS port: {commands:?}"
    );
}

#[tokio::test]
async fn credentials_without_an_auth_offer_are_tempfail() {
    // AUTH is only advertised after TLS, and this server has no TLS.
    let mx = TestMx::start(MxConfig {
        starttls: false,
        auth: creds(),
        ..Default::default()
    })
    .await;
    let cfg = smarthost(TlsPolicy::Opportunistic, false, creds());
    let out = deliver(
        mx.addr(),
        "smarthost.test",
        &cfg,
        &[message()],
        &TlsMemory::default(),
    )
    .await;
    assert!(
        matches!(&out[0], Outcome::TempFail { reason, .. } if reason.contains("neither AUTH PLAIN nor LOGIN")),
        "{out:?}"
    );
    assert!(!mx
        .commands()
        .iter()
        .any(|c| c.starts_with("AUTH") || c.starts_with("MAIL")));
}

#[tokio::test]
async fn plaintext_auth_is_allowed_to_loopback_only() {
    // Documented choice: over loopback the credentials never leave the host.
    let mx = TestMx::start(MxConfig {
        starttls: false,
        auth: creds(),
        auth_without_tls: true,
        ..Default::default()
    })
    .await;
    let cfg = smarthost(TlsPolicy::Opportunistic, false, creds());
    let out = deliver(
        mx.addr(),
        "smarthost.test",
        &cfg,
        &[message()],
        &TlsMemory::default(),
    )
    .await;
    assert!(
        matches!(&out[0], Outcome::Delivered { tls: None, .. }),
        "{out:?}"
    );
    assert_eq!(mx.received()[0].auth_user.as_deref(), Some("relay-user"));
}

#[tokio::test]
async fn config_debug_hides_the_password() {
    let cfg = smarthost(TlsPolicy::Enforced, false, creds());
    let shown = format!("{cfg:?}");
    assert!(shown.contains("relay-user"));
    assert!(!shown.contains("s3cret"), "{shown}");
}
