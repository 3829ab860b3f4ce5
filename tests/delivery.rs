//! Delivery through the real binary: submitted over SMTP, prepared, signed
//! and delivered to test MX servers on loopback.

mod harness;
mod support;

use harness::*;
use std::time::Duration;
use support::mx::{BrokenTls, MxConfig, Script, TestMx};

const HTML_MESSAGE: &str = "From: News <news@example.com>\r\n\
To: <someone@example.net>\r\n\
Subject: Tracked\r\n\
Message-ID: <m1@example.com>\r\n\
X-Tags: welcome, onboarding\r\n\
X-Track-Opens: true\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/alternative; boundary=\"b1\"\r\n\
\r\n\
--b1\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
\r\n\
Visit https://example.org/x?a=1&b=2\r\n\
--b1\r\n\
Content-Type: text/html; charset=utf-8\r\n\
\r\n\
<html><body><p><a href=\"https://example.org/x?a=1&amp;b=2#top\">link</a> <a href=\"mailto:a@example.com\">mail</a></p></body></html>\r\n\
--b1--\r\n";

fn trusted() -> String {
    "trusted_networks = [\"127.0.0.0/8\"]".into()
}

fn event_types(relay: &Relay, id: &str) -> Vec<(String, String)> {
    relay
        .db()
        .prepare("SELECT type, COALESCE(recipient, '') FROM events WHERE email_id = ?1 ORDER BY id")
        .unwrap()
        .query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
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

fn wait_status(relay: &Relay, id: &str, rcpt: &str, want: &str, secs: u64) {
    wait_for(&format!("{rcpt} {want}"), Duration::from_secs(secs), || {
        status(relay, id, rcpt) == want
    });
}

/// Splits a received message into its leading DKIM-Signature fields and the rest.
fn split_signatures(data: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let text = data;
    let mut pos = 0;
    while text[pos..].starts_with(b"DKIM-Signature:") {
        // The field runs until a line that does not start with white space.
        let mut end = pos;
        loop {
            let nl = text[end..].iter().position(|&b| b == b'\n').unwrap() + end + 1;
            end = nl;
            if !(text[end..].starts_with(b" ") || text[end..].starts_with(b"\t")) {
                break;
            }
        }
        pos = end;
    }
    (text[..pos].to_vec(), text[pos..].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_copy_is_tracked_signed_and_verifies() {
    let mx = TestMx::start(MxConfig::default()).await;
    let keydir = tempfile::tempdir().unwrap();
    // dkim-keygen, as an operator would run it: RSA (the default) and Ed25519.
    let mut records = Vec::new();
    let mut entries = Vec::new();
    for (sel, alg) in [("rsa1", "rsa"), ("ed1", "ed25519")] {
        let path = keydir.path().join(format!("{sel}.pem"));
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_trackrelay"))
            .args([
                "dkim-keygen",
                "--domain",
                "example.com",
                "--selector",
                sel,
                "--algorithm",
                alg,
                "--out",
            ])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let mut lines = text.lines();
        let name = lines.next().unwrap().to_string();
        let value = lines.next().unwrap().to_string();
        assert_eq!(name, format!("{sel}._domainkey.example.com"));
        assert!(
            value.starts_with(&format!("v=DKIM1; k={alg}; p=")),
            "{value}"
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        records.push((name, value));
        entries.push(format!(
            "{{ selector = \"{sel}\", private_key = \"{}\" }}",
            path.display()
        ));
    }
    let relay = Relay::start(Options {
        submission: trusted(),
        domain: format!(
            "open_tracking = false\nclick_tracking = true\ntracking_subdomain = \"links\"\ndkim = [{}]",
            entries.join(", ")
        ),
        delivery: format!("routes = {{ \"example.net\" = \"{}\" }}", mx.addr()),
        ..Options::default()
    });
    let id = submit(
        &relay,
        "news@example.com",
        &["someone@example.net"],
        HTML_MESSAGE.as_bytes(),
    );
    assert!(
        mx.wait_for(1, Duration::from_secs(30)).await,
        "delivered:\n{}",
        relay.log()
    );
    let got = mx.received().remove(0);
    assert_eq!(got.rcpt_to, ["someone@example.net"]);
    assert_eq!(got.mail_from, "news@example.com");
    assert_eq!(
        got.tls.as_deref(),
        Some("TLSv1.3"),
        "opportunistic STARTTLS was used"
    );

    // Both signatures verify, with mail-auth and with dkimpy.
    let results = support::dkim::mail_auth_verify(&got.data, &records).await;
    assert_eq!(results.len(), 2);
    for r in &results {
        assert_eq!(*r, mail_auth::DkimResult::Pass, "{results:?}");
    }
    match support::dkim::dkimpy_verify(&got.data, &records) {
        Some(Ok(_)) => {}
        Some(Err(report)) => panic!("dkimpy: {report}"),
        None => support::dkim::skip_dkimpy("delivered_copy_is_tracked_signed_and_verifies"),
    }

    // What arrived is exactly the prepared copy (after our trace header),
    // recomputed here from the stored message and the relay's token key.
    let (signatures, rest) = split_signatures(&got.data);
    assert_eq!(
        String::from_utf8_lossy(&signatures)
            .matches("DKIM-Signature:")
            .count(),
        2
    );
    let (received, body) = trackrelay::store::sqlite::emails::body(&relay.db(), &id)
        .unwrap()
        .expect("a stored body");
    let keys =
        trackrelay::prepare::TokenKeys::load_or_create(&relay.data_dir().join("tracking.key"), &[])
            .unwrap();
    let prepared = trackrelay::prepare::prepare(
        &body,
        &trackrelay::prepare::TrackingOptions {
            email_id: uuid::Uuid::parse_str(&id).unwrap(),
            rcpt_index: 0,
            scheme: "http",
            tracking_host: Some("links.example.com"),
            other_tracking_hosts: &[],
            open_tracking: false,
            click_tracking: true,
            // The runner adds the feedback reference wherever there is a
            // tracking host; list_unsubscribe is off by default.
            feedback: Some(trackrelay::prepare::Feedback {
                token: &trackrelay::feedback::return_path::encode(
                    &keys,
                    uuid::Uuid::parse_str(&id).unwrap(),
                    0,
                ),
                return_path_domain: None,
                list_unsubscribe: false,
            }),
        },
        &keys,
    );
    let mut expected = received.clone();
    expected.extend_from_slice(&prepared.message);
    assert_eq!(
        String::from_utf8_lossy(&rest),
        String::from_utf8_lossy(&expected)
    );
    let text = String::from_utf8_lossy(&rest);
    // X-Track-Opens: true turned the pixel on for this message; the control
    // headers themselves are gone; the link points at the tracking host.
    assert!(
        text.contains("http://links.example.com/v1/track/click/"),
        "{text}"
    );
    assert!(
        text.contains("http://links.example.com/v1/track/open/"),
        "{text}"
    );
    assert!(
        !text.contains("X-Track-Opens") && !text.contains("X-Tags"),
        "{text}"
    );
    assert!(
        text.contains("href=\"mailto:a@example.com\""),
        "mailto is left alone"
    );

    wait_status(&relay, &id, "someone@example.net", "delivered", 10);
    let types: Vec<String> = event_types(&relay, &id)
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    assert_eq!(types, ["email.sent", "email.delivered"]);
    let detail: String = relay
        .db()
        .query_row(
            "SELECT detail FROM events WHERE email_id = ?1 AND type = 'email.delivered'",
            [&id],
            |r| r.get(0),
        )
        .unwrap();
    let detail: serde_json::Value = serde_json::from_str(&detail).unwrap();
    assert_eq!(detail["tls"], "TLSv1.3");
    assert!(
        detail["response"]
            .as_str()
            .unwrap()
            .contains("queued as TEST1"),
        "{detail}"
    );
    let tags: String = relay
        .db()
        .query_row("SELECT tags FROM emails WHERE id = ?1", [&id], |r| r.get(0))
        .unwrap();
    assert_eq!(tags, "[\"welcome\",\"onboarding\"]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_policies_opportunistic_and_enforced() {
    let with_tls = TestMx::start(MxConfig::default()).await;
    let without = TestMx::start(MxConfig {
        starttls: false,
        ..MxConfig::default()
    })
    .await;
    let broken = TestMx::start(MxConfig {
        broken_tls: Some(BrokenTls::Close),
        ..MxConfig::default()
    })
    .await;
    let relay = Relay::start(Options {
        submission: trusted(),
        domain: "tls = \"opportunistic\"".into(),
        domain_org: "tls = \"enforced\"".into(),
        delivery: format!(
            "routes = {{ \"tls.test\" = \"{}\", \"plain.test\" = \"{}\", \"broken.test\" = \"{}\" }}\nretry = [\"1s\"]\nexpire_after = \"5s\"",
            with_tls.addr(),
            without.addr(),
            broken.addr()
        ),
        ..Options::default()
    });
    let msg = message("news@example.com", "x@tls.test", "opportunistic", "hi");
    let opp = submit(
        &relay,
        "news@example.com",
        &["a@tls.test", "b@plain.test", "c@broken.test"],
        &msg,
    );
    for r in ["a@tls.test", "b@plain.test", "c@broken.test"] {
        wait_status(&relay, &opp, r, "delivered", 30);
    }
    assert_eq!(with_tls.received()[0].tls.as_deref(), Some("TLSv1.3"));
    assert_eq!(
        without.received()[0].tls,
        None,
        "no STARTTLS offered: plaintext"
    );
    assert_eq!(
        broken.received()[0].tls,
        None,
        "broken handshake: plaintext on a new connection"
    );
    assert!(broken.connections().iter().any(|c| c.tls_failed));

    let msg = message("news@example.org", "x@plain.test", "enforced", "hi");
    let enf = submit(
        &relay,
        "news@example.org",
        &["d@tls.test", "e@plain.test", "f@broken.test"],
        &msg,
    );
    wait_status(&relay, &enf, "d@tls.test", "delivered", 30);
    wait_for(
        "a delay event for each refused host",
        Duration::from_secs(30),
        || {
            event_types(&relay, &enf)
                .iter()
                .filter(|(t, _)| t == "email.delivery_delayed")
                .map(|(_, r)| r.clone())
                .collect::<std::collections::HashSet<_>>()
                .len()
                == 2
        },
    );
    let reasons: Vec<String> = relay
        .db()
        .prepare("SELECT json_extract(detail, '$.response') FROM events WHERE email_id = ?1 AND type = 'email.delivery_delayed'")
        .unwrap()
        .query_map([&enf], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        reasons.iter().any(|r| r.contains("STARTTLS")),
        "{reasons:?}"
    );
    // After expire_after, the two that never got TLS bounce.
    wait_status(&relay, &enf, "e@plain.test", "bounced", 30);
    wait_status(&relay, &enf, "f@broken.test", "bounced", 30);
    assert_eq!(
        without.received().len(),
        1,
        "nothing of the enforced domain went in plaintext"
    );
    assert_eq!(broken.received().len(), 1);
    let bounced = event_types(&relay, &enf)
        .iter()
        .filter(|(t, _)| t == "email.bounced")
        .count();
    assert_eq!(bounced, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_bounces_and_dropped_connections() {
    let mx = TestMx::start(
        MxConfig::default()
            .script(
                "later@example.net",
                Script::first(1, "451 4.7.1 try again later"),
            )
            .script(
                "nobody@example.net",
                Script::always("550 5.1.1 no such user"),
            ),
    )
    .await;
    let dropper = TestMx::start(MxConfig {
        drop_mid_data_once: true,
        ..MxConfig::default()
    })
    .await;
    let relay = Relay::start(Options {
        submission: trusted(),
        delivery: format!(
            "routes = {{ \"example.net\" = \"{}\", \"drop.test\" = \"{}\" }}\nretry = [\"1s\"]",
            mx.addr(),
            dropper.addr()
        ),
        ..Options::default()
    });
    let msg = message("news@example.com", "x@example.net", "retries", "hello");
    let id = submit(
        &relay,
        "news@example.com",
        &["ok@example.net", "later@example.net", "nobody@example.net"],
        &msg,
    );
    wait_status(&relay, &id, "nobody@example.net", "bounced", 30);
    wait_status(&relay, &id, "ok@example.net", "delivered", 30);
    wait_status(&relay, &id, "later@example.net", "delivered", 30);
    let events = event_types(&relay, &id);
    let of = |r: &str| -> Vec<String> {
        events
            .iter()
            .filter(|(_, x)| x == r)
            .map(|(t, _)| t.clone())
            .collect()
    };
    assert_eq!(
        of("nobody@example.net"),
        ["email.sent", "email.bounced"],
        "550 bounces at once"
    );
    assert_eq!(
        of("ok@example.net"),
        ["email.sent", "email.delivered"],
        "the 550 of another RCPT does not touch it"
    );
    assert_eq!(
        of("later@example.net"),
        ["email.sent", "email.delivery_delayed", "email.delivered"],
        "451, then delivered on retry"
    );
    let delivered: Vec<String> = mx
        .received()
        .iter()
        .flat_map(|r| r.rcpt_to.clone())
        .collect();
    assert_eq!(delivered.len(), 2);
    assert!(!delivered.contains(&"nobody@example.net".to_string()));
    let bounce: String = relay
        .db()
        .query_row(
            "SELECT json_extract(detail, '$.response') FROM events WHERE email_id = ?1 AND type = 'email.bounced'",
            [&id],
            |r| r.get(0),
        )
        .unwrap();
    assert!(bounce.contains("550 5.1.1 no such user"), "{bounce}");

    // A connection dropped mid-DATA is retried.
    let msg = message("news@example.com", "x@drop.test", "dropped", "hello");
    let id = submit(&relay, "news@example.com", &["x@drop.test"], &msg);
    wait_status(&relay, &id, "x@drop.test", "delivered", 30);
    let types: Vec<String> = event_types(&relay, &id)
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    assert_eq!(
        types,
        ["email.sent", "email.delivery_delayed", "email.delivered"]
    );
    assert_eq!(dropper.received().len(), 1);
    assert!(dropper.connections().len() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_in_the_middle_of_a_delivery() {
    let mx = TestMx::start(MxConfig {
        stall_mid_data_once: true,
        ..MxConfig::default()
    })
    .await;
    let mut relay = Relay::start(Options {
        submission: trusted(),
        // Only an expired lease is taken back: keep it short.
        delivery: format!(
            "routes = {{ \"example.net\" = \"{}\" }}\nretry = [\"1s\"]\nlease_time = \"2s\"",
            mx.addr()
        ),
        ..Options::default()
    });
    let msg = message("news@example.com", "x@example.net", "restart", "hello");
    let id = submit(&relay, "news@example.com", &["r@example.net"], &msg);
    wait_for(
        "the delivery to be caught mid-DATA",
        Duration::from_secs(30),
        || mx.stalled() == 1,
    );
    assert_eq!(status(&relay, &id, "r@example.net"), "sending");
    relay.kill();
    assert_eq!(
        status(&relay, &id, "r@example.net"),
        "sending",
        "in flight when killed"
    );
    relay.spawn();
    wait_status(&relay, &id, "r@example.net", "delivered", 30);
    assert_eq!(mx.received().len(), 1);
    assert!(
        relay.log().contains("queued again"),
        "the restart says what it recovered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smarthost_with_auth_over_starttls() {
    let mx = TestMx::start(MxConfig {
        auth: Some(("relayuser".into(), "relay secret".into())),
        ..MxConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("relay.pass");
    std::fs::write(&pw, "relay secret\n").unwrap();
    let relay = Relay::start(Options {
        submission: trusted(),
        delivery: format!(
            "relay = {{ host = \"127.0.0.1\", port = {}, username = \"relayuser\", password_file = \"{}\", tls = \"enforced\" }}",
            mx.addr().port(),
            pw.display()
        ),
        ..Options::default()
    });
    let msg = message("news@example.com", "x@anywhere.test", "smarthost", "hello");
    let id = submit(
        &relay,
        "news@example.com",
        &["x@anywhere.test", "y@elsewhere.test"],
        &msg,
    );
    wait_status(&relay, &id, "x@anywhere.test", "delivered", 30);
    wait_status(&relay, &id, "y@elsewhere.test", "delivered", 30);
    let got = mx.received();
    assert_eq!(got.len(), 2);
    for g in &got {
        assert_eq!(g.auth_user.as_deref(), Some("relayuser"));
        assert_eq!(g.tls.as_deref(), Some("TLSv1.3"));
    }
    assert_eq!(
        got[0].connection, got[1].connection,
        "one connection carries both"
    );
    assert!(!relay.log().contains("relay secret"), "no secret in logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn return_path_managed_key_and_preview() {
    let mx = TestMx::start(MxConfig::default()).await;
    let relay = Relay::start(Options {
        submission: trusted(),
        domain: "return_path = \"bounces\"\nclick_tracking = true\ntracking_subdomain = \"t\"\ndkim = [{ selector = \"auto\" }]".into(),
        delivery: format!("routes = {{ \"example.net\" = \"{}\" }}", mx.addr()),
        ..Options::default()
    });
    let msg = message("news@example.com", "x@example.net", "rp", "hello");
    let id = submit(&relay, "news@example.com", &["x@example.net"], &msg);
    assert!(mx.wait_for(1, Duration::from_secs(30)).await);
    // The envelope sender carries an authenticated token for this email
    // and recipient, within the 64-character local part.
    let mail_from = mx.received()[0].mail_from.clone();
    let (local, rp_domain) = mail_from.split_once('@').unwrap();
    assert_eq!(rp_domain, "bounces.example.com");
    assert!(
        local.starts_with("bounces+") && local.len() <= 64,
        "{local}"
    );
    let keys =
        trackrelay::prepare::TokenKeys::load_or_create(&relay.data_dir().join("tracking.key"), &[])
            .unwrap();
    let verified = trackrelay::feedback::return_path::verify_address(&keys, &mail_from)
        .expect("the return-path token verifies with the relay's key");
    assert_eq!(verified.email_id, uuid::Uuid::parse_str(&id).unwrap());
    assert_eq!(verified.rcpt_index, 0);
    let forged = trackrelay::prepare::TokenKeys::new([1; 32], vec![]);
    assert!(trackrelay::feedback::return_path::verify_address(&forged, &mail_from).is_none());
    // The managed key was generated at first start and its record logged.
    assert!(relay.data_dir().join("dkim/example.com.auto.pem").exists());
    assert!(
        relay.log().contains("auto._domainkey.example.com"),
        "{}",
        relay.log()
    );
    let out = relay.cli_with_stdin(
        &["preview", "--rcpt", "someone@example.net"],
        HTML_MESSAGE.as_bytes(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("email_id: "), "{err}");
    assert!(text.starts_with("DKIM-Signature:"), "{text}");
    assert!(
        text.contains("http://t.example.com/v1/track/click/"),
        "{text}"
    );
    assert!(!text.contains("X-Tags:"));
    // --no-sign leaves the signature out.
    // (The feedback reference goes first, as the runner adds it.)
    let out = relay.cli_with_stdin(&["preview", "--no-sign"], HTML_MESSAGE.as_bytes());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("X-Trackrelay-Ref: "), "{text}");
    assert!(!text.contains("DKIM-Signature:") && text.contains("\r\nFrom: News"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mx_routing_through_dns() {
    let mx = TestMx::start(MxConfig::default()).await;
    let dns = support::dns::DnsStub::start().await;
    // example.net: the preferred MX answers nowhere, the second one is ours.
    dns.mx("example.net", 10, "mx1.example.net")
        .mx("example.net", 20, "mx2.example.net")
        .a("mx1.example.net", "127.0.0.2".parse().unwrap())
        .a("mx2.example.net", "127.0.0.1".parse().unwrap())
        // implicit.test has no MX: its own address is the implicit MX.
        .a("implicit.test", "127.0.0.1".parse().unwrap())
        // nullmx.test takes no mail (RFC 7505).
        .mx("nullmx.test", 0, ".");
    let relay = Relay::start(Options {
        submission: trusted(),
        delivery: format!(
            "resolver = \"{}\"\nmx_port = {}",
            dns.resolver(),
            mx.addr().port()
        ),
        ..Options::default()
    });
    let msg = message("news@example.com", "x@example.net", "mx", "hello");
    let id = submit(
        &relay,
        "news@example.com",
        &[
            "a@example.net",
            "b@implicit.test",
            "c@nullmx.test",
            "d@nxdomain.test",
        ],
        &msg,
    );
    wait_status(&relay, &id, "a@example.net", "delivered", 30);
    wait_status(&relay, &id, "b@implicit.test", "delivered", 30);
    wait_status(&relay, &id, "c@nullmx.test", "bounced", 30);
    wait_status(&relay, &id, "d@nxdomain.test", "bounced", 30);
    let responses: Vec<(String, String)> = relay
        .db()
        .prepare("SELECT address, COALESCE(last_response, '') || ' @' || COALESCE(mx, '') FROM recipients WHERE email_id = ?1 ORDER BY idx")
        .unwrap()
        .query_map([&id], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        responses[0].1.ends_with("@mx2.example.net"),
        "{responses:?}"
    );
    assert!(responses[1].1.ends_with("@implicit.test"), "{responses:?}");
    assert!(responses[2].1.contains("null MX"), "{responses:?}");
    assert!(responses[3].1.contains("does not exist"), "{responses:?}");
    assert_eq!(mx.received().len(), 2);
}

#[test]
fn config_errors_name_the_key_and_stop_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nhostname = \"relay.test\"\ndata_dir = \"./data\"\n[submission]\nlisten = [\"127.0.0.1:notaport\"]\n\
             tls_cert = \"/nonexistent/cert.pem\"\ntls_key = \"/nonexistent/key.pem\"\n\
             [[submission.users]]\nname = \"app\"\npassword_hash = \"{}\"\ndomains = [\"example.org\"]\n\
             [[domains]]\nname = \"example.com\"\n",
            password_hash()
        ),
    )
    .unwrap();
    for cmd in ["check-config", "serve"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_trackrelay"))
            .args([cmd, "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{cmd} must fail");
        let err = String::from_utf8_lossy(&out.stderr);
        for key in [
            "submission.listen",
            "submission.tls_cert",
            "submission.tls_key",
            "submission.users[0].domains: \"example.org\" is not a configured [[domains]] entry",
        ] {
            assert!(err.contains(key), "{cmd}: {key} not named in:\n{err}");
        }
    }
    std::fs::write(
        &path,
        "[server]\nhostname = \"relay.test\"\nhostnme = \"typo\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trackrelay"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("hostnme"));
}
