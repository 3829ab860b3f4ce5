//! config.toml.example runs as-is on a fresh machine: loopback listeners,
//! state in ./data next to the file, a self-signed certificate and a DKIM
//! key generated at first start (and said so in the log).

mod harness;

use harness::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn the_example_config_runs_as_is() {
    let dir = tempfile::tempdir().unwrap();
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml.example");
    let config = dir.path().join("config.toml");
    std::fs::copy(&example, &config).unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_trackrelay"))
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    let log_path = dir.path().join("serve.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_trackrelay"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log_path).unwrap()))
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let log = loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if log.contains("trackrelay ready") {
            break log;
        }
        if let Some(s) = child.try_wait().unwrap() {
            panic!("exited {s}:\n{log}");
        }
        assert!(Instant::now() < deadline, "not ready:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let data = dir.path().join("data");
    assert!(data.join("tls/selfsigned-cert.pem").exists());
    assert!(data.join("dkim/example.com.s1.pem").exists());
    assert!(data.join("tracking.key").exists());
    assert!(log.contains("self-signed certificate"), "{log}");
    assert!(
        log.contains("s1._domainkey.example.com") && log.contains("v=DKIM1; k=rsa; p="),
        "{log}"
    );

    // The example trusts loopback, so a local tool can submit right away.
    let mut c = RawSmtp::connect("127.0.0.1:2587".parse().unwrap());
    assert!(c.reply().starts_with("220 relay.example.com"));
    assert!(c.cmd("EHLO localhost").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<news@example.com>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<someone@example.net>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(&message(
        "news@example.com",
        "someone@example.net",
        "hello",
        "first message",
    ));
    let reply = c.cmd(".");
    assert!(queued_id(&reply).is_some(), "{reply}");
    c.cmd("QUIT");

    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "SIGTERM exits 0, got {status}");
}
