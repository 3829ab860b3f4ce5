//! Moving from one machine to several: `trackrelay store copy` puts a
//! SQLite store that has lived (mail, events, a suppression) into an empty
//! PostgreSQL database, row for row, and refuses a database that already
//! has data; `trackrelay migrate` brings a PostgreSQL store to this
//! build's schema.

mod harness;

use harness::*;
use std::time::Duration;

fn trusted() -> Options {
    Options {
        submission: "trusted_networks = [\"127.0.0.0/8\"]".into(),
        // Stays SQLite even when the suite runs on PostgreSQL: this test is
        // about leaving SQLite.
        store: "backend = \"sqlite\"".into(),
        ..Options::default()
    }
}

fn count_sqlite(relay: &Relay, table: &str) -> i64 {
    relay
        .db()
        .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

#[test]
fn a_lived_sqlite_store_is_copied_row_for_row_and_only_into_an_empty_database() {
    if !pg::available("a_lived_sqlite_store_is_copied_row_for_row_and_only_into_an_empty_database")
    {
        return;
    }
    let mut relay = Relay::start(trusted());
    let mut ids = Vec::new();
    for i in 0..3 {
        let body = format!("<p>hello {i} <a href=\"https://example.org/{i}\">x</a></p>");
        ids.push(submit(
            &relay,
            "n@example.com",
            &["a@example.net", "b@example.net"],
            &message("n@example.com", "a@example.net", "s", &body),
        ));
    }
    let out = relay.cli(&["suppressions", "add", "gone@example.net"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every recipient has been tried (the route is a closed port), so the
    // store holds deferrals, not only acceptances.
    wait_for("every recipient attempted", Duration::from_secs(30), || {
        count_sqlite(&relay, "events") >= 12
    });
    relay.stop();
    let tables = [
        "emails",
        "recipients",
        "events",
        "rollups",
        "suppressions",
        "webhook_outbox",
    ];
    let before: Vec<i64> = tables.iter().map(|t| count_sqlite(&relay, t)).collect();
    assert!(before[0] == 3 && before[1] == 6, "{before:?}");

    let url = pg::url();
    let db = format!("sqlite:{}", relay.db_path().display());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trackrelay"))
        .args(["store", "copy", "--from", &db, "--to", &url])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("emails: 3 row(s)"), "{stdout}");

    for (t, n) in tables.iter().zip(&before) {
        let got: i64 = pg::query(&url, &format!("SELECT count(*) FROM {t}"))
            .trim()
            .parse()
            .unwrap();
        assert_eq!(got, *n, "rows of {t}");
    }
    // Values, not only counts: the bodies and each recipient's state.
    let sqlite_state: Vec<String> = relay
        .db()
        .prepare("SELECT email_id || ':' || idx || ':' || status || ':' || attempts FROM recipients ORDER BY 1")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    let pg_state = pg::query(
        &url,
        "SELECT email_id || ':' || idx || ':' || status || ':' || attempts FROM recipients ORDER BY 1",
    );
    assert_eq!(pg_state.lines().collect::<Vec<_>>(), sqlite_state);
    // The bodies, byte for byte: SQLite keeps them in its spool files,
    // PostgreSQL in the rows.
    let bodies = sqlite_bodies(&relay.db());
    assert!(!bodies.is_empty());
    let pg_bodies = pg::query(
        &url,
        "SELECT id || ':' || COALESCE(encode(body, 'hex'), 'pruned') FROM emails ORDER BY id",
    );
    assert_eq!(pg_bodies.lines().collect::<Vec<_>>(), bodies);
    // A new event gets an id after the copied ones.
    let max: i64 = pg::query(&url, "SELECT max(id) FROM events")
        .trim()
        .parse()
        .unwrap();
    let next: i64 = pg::query(
        &url,
        "INSERT INTO events (email_id, type, at) VALUES ('x', 'email.sent', 0) RETURNING id",
    )
    .trim()
    .parse()
    .unwrap();
    assert!(next > max, "{next} after {max}");

    // And back: PostgreSQL into a new SQLite file has the same rows.
    let back = relay.dir.path().join("back.sqlite3");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trackrelay"))
        .args(["store", "copy", "--from", &url, "--to"])
        .arg(format!("sqlite:{}", back.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let back_db = rusqlite::Connection::open(&back).unwrap();
    for (t, n) in tables.iter().zip(&before) {
        let got: i64 = back_db
            .query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))
            .unwrap();
        // The event inserted above by hand came along.
        let n = if *t == "events" { n + 1 } else { *n };
        assert_eq!(got, n, "rows of {t} copied back");
    }
    assert_eq!(sqlite_bodies(&back_db), bodies);

    let again = std::process::Command::new(env!("CARGO_BIN_EXE_trackrelay"))
        .args(["store", "copy", "--from", &db, "--to", &url])
        .output()
        .unwrap();
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("already holds trackrelay data"), "{err}");
}

#[test]
fn migrate_brings_an_empty_postgres_database_to_the_schema_and_names_a_bad_url_key() {
    if !pg::available(
        "migrate_brings_an_empty_postgres_database_to_the_schema_and_names_a_bad_url_key",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let url = pg::url();
    let url_file = dir.path().join("pg.url");
    std::fs::write(&url_file, format!("{url}\n")).unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "[server]\nhostname = \"relay.test\"\ndata_dir = \"./data\"\nnode_id = \"relay-1\"\n\n\
         [store]\nbackend = \"postgres\"\nurl_file = \"pg.url\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trackrelay"))
        .args(["migrate", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let version = pg::query(&url, "SELECT max(version) FROM trackrelay_schema");
    assert!(
        stdout.contains(&format!("schema version {}", version.trim())),
        "{stdout}"
    );

    std::fs::write(
        &url_file,
        "postgres://u:s3cret@127.0.0.1:1/db?sslmode=bogus\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trackrelay"))
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("store.url_file"), "{err}");
    assert!(!err.contains("s3cret"), "the password leaked: {err}");
}

/// `id:hex of the body` per email, in id order, however the SQLite store
/// keeps the body (in the row, or in its spool).
fn sqlite_bodies(db: &rusqlite::Connection) -> Vec<String> {
    let ids: Vec<String> = db
        .prepare("SELECT id FROM emails ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    ids.iter()
        .map(|id| {
            let hex = match trackrelay::store::sqlite::emails::body(db, id).unwrap() {
                Some((_, body)) => body.iter().map(|b| format!("{b:02x}")).collect(),
                None => "pruned".to_string(),
            };
            format!("{id}:{hex}")
        })
        .collect()
}
