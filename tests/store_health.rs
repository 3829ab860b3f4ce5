//! Losing the store is loud: a database deleted under a running relay
//! makes submissions 451 and /healthz 503 and is logged; a restart refuses
//! to create an empty one in a data directory that was in use unless told
//! to with `--init-store`; the files it makes are private; secrets others
//! can read are warned about; logs to a file or the journal are plain.

mod harness;

use harness::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

fn trusted() -> Options {
    Options {
        submission: "trusted_networks = [\"127.0.0.0/8\"]".into(),
        // These tests delete, replace and inspect the SQLite file itself:
        // they are about that backend whatever the suite runs on.
        store: "backend = \"sqlite\"".into(),
        ..Options::default()
    }
}

/// The last reply to one message submitted on a fresh session.
fn submit_reply(relay: &Relay) -> String {
    let mut c = RawSmtp::connect(relay.smtp);
    c.reply();
    c.cmd("EHLO test.client");
    assert!(c.cmd("MAIL FROM:<n@example.com>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<r@example.net>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(&message("n@example.com", "r@example.net", "s", "b"));
    let r = c.cmd(".");
    c.cmd("QUIT");
    r
}

fn healthz(relay: &Relay) -> (u16, String) {
    let (status, _, body) = http(relay.api, "GET", "/healthz", &[]);
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn a_database_deleted_under_serve_is_refused_reported_and_not_recreated() {
    let mut relay = Relay::start(trusted());
    assert!(submit_reply(&relay).starts_with("250"));
    assert_eq!(healthz(&relay), (200, "ok\n".to_string()));

    std::fs::remove_file(relay.db_path()).unwrap();
    let r = submit_reply(&relay);
    assert!(r.starts_with("451 4.3.0"), "{r}");
    let (status, body) = healthz(&relay);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("was deleted"), "{body}");
    assert!(
        relay.log().contains("refusing every write"),
        "{}",
        relay.log()
    );

    // A restart does not quietly start over with an empty store.
    relay.stop();
    let err = relay
        .spawn_with(&[], &[])
        .expect_err("a start without the database must fail");
    assert!(err.contains("is missing"), "{err}");
    assert!(err.contains("tracking.key"), "says why: {err}");
    assert!(err.contains("--init-store"), "says what to do: {err}");
    assert!(!relay.db_path().exists(), "nothing created");

    // Told to, it starts with an empty one.
    relay.spawn_with(&["--init-store"], &[]).unwrap();
    assert_eq!(healthz(&relay).0, 200);
    assert!(submit_reply(&relay).starts_with("250"));
    let emails: i64 = relay
        .db()
        .query_row("SELECT COUNT(*) FROM emails", [], |r| r.get(0))
        .unwrap();
    assert_eq!(emails, 1);
}

#[test]
fn a_replaced_database_is_refused_too() {
    let relay = Relay::start(trusted());
    assert!(submit_reply(&relay).starts_with("250"));
    let other = relay.dir.path().join("other.sqlite3");
    std::fs::copy(relay.db_path(), &other).unwrap();
    std::fs::rename(&other, relay.db_path()).unwrap();
    let r = submit_reply(&relay);
    assert!(r.starts_with("451 4.3.0"), "{r}");
    let (status, body) = healthz(&relay);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("was replaced"), "{body}");
}

#[test]
fn the_idle_writer_notices_a_deleted_database_by_itself() {
    let relay = Relay::start(trusted());
    std::fs::remove_file(relay.db_path()).unwrap();
    // Nothing is submitted and nobody asks /healthz: the log still says so.
    wait_for("the error in the log", Duration::from_secs(20), || {
        relay.log().contains("was deleted")
    });
}

#[test]
fn the_data_directory_and_database_are_private() {
    // The usual umask, under which the old code made 0755 and 0644.
    unsafe { libc::umask(0o022) };
    let relay = Relay::start(trusted());
    assert!(submit_reply(&relay).starts_with("250"));
    let data = relay.data_dir();
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("tls")), 0o700);
    assert_eq!(mode(&relay.db_path()), 0o600);
    for suffix in ["-wal", "-shm"] {
        let p = data.join(format!("trackrelay.sqlite3{suffix}"));
        assert_eq!(mode(&p), 0o600, "{}", p.display());
    }
    assert_eq!(mode(&data.join("tracking.key")), 0o600);
}

#[test]
fn secrets_others_can_read_are_warned_about() {
    let mut relay = Relay::start(trusted());
    assert!(!relay.log().contains("chmod 600"), "{}", relay.log());
    relay.stop();
    let key = relay.data_dir().join("tracking.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let tls_key = relay.data_dir().join("tls/selfsigned-key.pem");
    std::fs::set_permissions(&tls_key, std::fs::Permissions::from_mode(0o640)).unwrap();
    relay.spawn();
    let log = relay.log();
    assert!(
        log.contains(&format!(
            "tracking secret {} is readable by everyone (mode 0644)",
            key.display()
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "{} is readable by its group (mode 0640)",
            tls_key.display()
        )),
        "{log}"
    );
}

#[test]
fn logs_are_plain_text_off_a_terminal_and_untimed_under_journald() {
    let mut relay = Relay::start(trusted());
    let plain = relay.log();
    assert!(
        !plain.contains('\x1b'),
        "no escape codes in a file: {plain:?}"
    );
    let first = plain.lines().next().unwrap();
    assert!(
        first.starts_with(|c: char| c.is_ascii_digit()),
        "a timestamp off the journal: {first}"
    );
    relay.stop();
    // The variable alone, naming another stream (a unit redirecting
    // stderr to a file keeps it): timestamps stay.
    relay
        .spawn_with(&[], &[("JOURNAL_STREAM", "8:12345")])
        .unwrap();
    relay.stop();
    let redirected = std::fs::read_to_string(relay.log_path()).unwrap();
    assert!(
        redirected.starts_with(|c: char| c.is_ascii_digit()),
        "{redirected}"
    );
    // The variable naming stderr itself, as systemd sets it: no timestamps.
    let next = relay.next_log_path();
    std::fs::File::create(&next).unwrap();
    let meta = std::fs::metadata(&next).unwrap();
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    relay
        .spawn_with(&[], &[("JOURNAL_STREAM", &stream)])
        .unwrap();
    relay.stop();
    let journal = std::fs::read_to_string(relay.log_path()).unwrap();
    assert!(journal.contains("trackrelay ready"), "{journal}");
    assert!(!journal.contains('\x1b'), "{journal:?}");
    for line in journal.lines() {
        assert!(
            !line.starts_with(|c: char| c.is_ascii_digit()),
            "the journal adds its own timestamp: {line}"
        );
    }
}
