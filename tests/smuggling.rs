//! SMTP smuggling through bare CR and bare LF, end to end: a submitted
//! message whose body hides a second SMTP transaction behind `\r.\r\n`
//! (and `\r.\n`, `\n.\r`) reaches the MX as one message with CRLF line
//! ends only, the hidden commands still inside its data, and its DKIM
//! signature verifies.

mod harness;
mod support;

use harness::*;
use std::time::Duration;
use support::mx::{MxConfig, TestMx};

const SMUGGLING: &[u8] = b"From: News <news@example.com>\r\n\
To: <someone@example.net>\r\n\
Subject: smuggling\r\n\
Message-ID: <smuggle1@example.com>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
\r\n\
line1\r.\r\n\
MAIL FROM:<a@example.com>\r\n\
RCPT TO:<victim@example.net>\r\n\
DATA\r\n\
From: ceo@evil.test\r\n\
\r\n\
second message\r.\n\
QUIT\r\n\
bare\nlf\r\n\
x\n.\rend\r\n";

/// RSA key from `dkim-keygen`, as an operator makes it: (config entry,
/// (record name, TXT value)).
fn keygen(dir: &std::path::Path) -> (String, (String, String)) {
    let path = dir.join("k.pem");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trackrelay"))
        .args([
            "dkim-keygen",
            "--domain",
            "example.com",
            "--selector",
            "s1",
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
    let record = (
        lines.next().unwrap().to_string(),
        lines.next().unwrap().to_string(),
    );
    let entry = format!(
        "{{ selector = \"s1\", private_key = \"{}\" }}",
        path.display()
    );
    (entry, record)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_cr_and_lf_are_made_crlf_before_signing_and_nothing_is_smuggled() {
    let mx = TestMx::start(MxConfig::default()).await;
    let keydir = tempfile::tempdir().unwrap();
    let (entry, record) = keygen(keydir.path());
    let relay = Relay::start(Options {
        submission: "trusted_networks = [\"127.0.0.0/8\"]".into(),
        domain: format!("open_tracking = false\nclick_tracking = false\ndkim = [{entry}]"),
        delivery: format!("routes = {{ \"example.net\" = \"{}\" }}", mx.addr()),
        ..Options::default()
    });
    submit(
        &relay,
        "news@example.com",
        &["someone@example.net"],
        SMUGGLING,
    );
    assert!(
        mx.wait_for(1, Duration::from_secs(30)).await,
        "delivered:\n{}",
        relay.log()
    );
    // Only the one transaction reached the MX: the hidden commands were
    // never read as commands.
    wait_for("the session to end", Duration::from_secs(10), || {
        mx.commands().iter().any(|c| c == "QUIT")
    });
    let got = mx.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].rcpt_to, ["someone@example.net"]);
    assert_eq!(got[0].mail_from, "news@example.com");
    let commands = mx.commands();
    assert!(
        !commands.iter().any(|c| c.contains("victim")),
        "{commands:?}"
    );

    // CRLF only, each bare CR and LF made a line end of its own.
    let data = &got[0].data;
    for (i, &b) in data.iter().enumerate() {
        if b == b'\r' {
            assert_eq!(data.get(i + 1), Some(&b'\n'), "bare CR at {i}");
        }
        if b == b'\n' {
            assert!(i > 0 && data[i - 1] == b'\r', "bare LF at {i}");
        }
    }
    let text = String::from_utf8_lossy(data);
    assert!(
        text.contains("line1\r\n.\r\nMAIL FROM:<a@example.com>\r\n"),
        "{text}"
    );
    assert!(
        text.contains("second message\r\n.\r\nQUIT\r\nbare\r\nlf\r\nx\r\n.\r\nend\r\n"),
        "{text}"
    );

    // And the signature over exactly those bytes verifies.
    let records = vec![record];
    let results = support::dkim::mail_auth_verify(data, &records).await;
    assert_eq!(results, [mail_auth::DkimResult::Pass], "{text}");
    match support::dkim::dkimpy_verify(data, &records) {
        Some(Ok(_)) => {}
        Some(Err(report)) => panic!("dkimpy: {report}"),
        None => support::dkim::skip_dkimpy("bare_cr_and_lf_are_made_crlf_before_signing"),
    }
}
