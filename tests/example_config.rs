//! config.toml.example runs as-is on a fresh machine: loopback listeners,
//! state in ./data next to the file, a self-signed certificate and a DKIM
//! key generated at first start (and said so in the log).

mod harness;

use harness::*;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The example with every listener on port 0 and the example's test sink
/// route on a closed port, so that a relay (or sink) already running on
/// the example's ports changes nothing. Only those values differ.
fn example_on_free_ports() -> String {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml.example");
    let text = std::fs::read_to_string(example).unwrap();
    let mut listeners = 0;
    let mut out = String::new();
    for line in text.lines() {
        let mut line = line.to_string();
        if line.starts_with("listen = [") || line.starts_with("listen_tls = [") {
            while let Some(at) = line.find("127.0.0.1:").map(|i| i + "127.0.0.1:".len()) {
                let end = at + line[at..].find('"').unwrap();
                if &line[at..end] == "0" {
                    break;
                }
                line.replace_range(at..end, "0");
                listeners += 1;
            }
        }
        if line.starts_with("routes = ") {
            line = line.replace("127.0.0.1:2626", &format!("127.0.0.1:{}", closed_port()));
        }
        out.push_str(&line);
        out.push('\n');
    }
    assert_eq!(listeners, 5, "the example's loopback listeners:\n{out}");
    out
}

#[test]
fn the_example_config_runs_as_is() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, example_on_free_ports()).unwrap();
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
    let ready_file = dir.path().join("ready.json");
    // No NO_COLOR here: stderr is a file, which alone must keep colour out.
    let mut child = Command::new(env!("CARGO_BIN_EXE_trackrelay"))
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--ready-file")
        .arg(&ready_file)
        .env_remove("NO_COLOR")
        .env_remove("JOURNAL_STREAM")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log_path).unwrap()))
        .spawn()
        .unwrap();
    let bound = wait_ready(&mut child, &ready_file, &log_path);
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("trackrelay ready"), "{log}");
    assert!(
        !log.contains('\x1b'),
        "no terminal escapes in a file: {log:?}"
    );
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
    assert_eq!((bound.submission.len(), bound.submission_tls.len()), (1, 1));
    assert_eq!((bound.tracking.len(), bound.api.len()), (1, 1));
    assert_eq!(bound.inbound.len(), 1, "the return-path MX");
    let mut c = RawSmtp::connect(bound.submission[0]);
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
    let mut status = None;
    wait_for("the exit after SIGTERM", Duration::from_secs(30), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    let status = status.unwrap();
    assert!(status.success(), "SIGTERM exits 0, got {status}");
}
