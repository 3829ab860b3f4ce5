//! `serve --ready-file`: with port 0 everywhere, the file names the ports
//! the system chose, each one answering its protocol, and a file left by an
//! earlier run never passes for the new one's.

mod harness;

use harness::*;
use std::time::Duration;

#[test]
fn the_ready_file_names_every_bound_listener() {
    let relay = Relay::start(Options::default());
    let b = &relay.bound;
    // The harness's config has no tracking.listen_tls: an empty list.
    assert!(b.tracking_tls.is_empty(), "{b:?}");
    for (what, addrs) in [
        ("submission", &b.submission),
        ("submission_tls", &b.submission_tls),
        ("tracking", &b.tracking),
        ("api", &b.api),
    ] {
        assert_eq!(addrs.len(), 1, "{what}: {addrs:?}");
        assert_ne!(addrs[0].port(), 0, "{what}: a real port");
    }
    let mut c = RawSmtp::connect(relay.smtp);
    assert!(c.reply().starts_with("220 relay.test"));
    assert_eq!(http(relay.api, "GET", "/healthz", &[]).0, 200);
    assert_eq!(http(relay.tracking, "GET", "/healthz", &[]).0, 200);
    // The TLS listener accepts (the handshake is other tests' business).
    std::net::TcpStream::connect(relay.smtps).unwrap();
    // The ready line carries the same addresses.
    let log = relay.log();
    let line = log
        .lines()
        .find(|l| l.contains("trackrelay ready"))
        .unwrap();
    assert!(line.contains(&relay.smtp.to_string()), "{line}");
    assert!(line.contains(&relay.api.to_string()), "{line}");
}

#[test]
fn a_stale_ready_file_is_removed_before_the_start() {
    let mut relay = Relay::start(Options::default());
    relay.stop();
    let ready = relay.dir.path().join("stale-ready.json");
    std::fs::write(&ready, "{\"submission\":[\"127.0.0.1:1\"]}").unwrap();
    let log = relay.dir.path().join("stale.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_trackrelay"))
        .args(["serve", "--config"])
        .arg(&relay.config_path)
        .arg("--ready-file")
        .arg(&ready)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // Gone first (removed at start), then written with this run's ports.
    wait_for("the stale file removed", Duration::from_secs(30), || {
        !std::fs::read_to_string(&ready)
            .unwrap_or_default()
            .contains("127.0.0.1:1\"")
    });
    let bound = wait_ready(&mut child, &ready, &log);
    assert_ne!(bound.submission[0].port(), 1);
    let _ = child.kill();
    let _ = child.wait();
}
