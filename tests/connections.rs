//! How connections to one destination share the work, through the real
//! binary: an open connection takes on mail queued while it works instead
//! of leaving it to a new connection, and one that runs dry takes half of
//! what a sibling has not started, so the end of a burst is not one
//! connection sending message after message while the others have closed.

mod harness;
mod support;

use harness::*;
use std::collections::HashMap;
use std::time::Duration;
use support::mx::{MxConfig, TestMx};

fn count(relay: &Relay, sql: &str) -> i64 {
    relay.db().query_row(sql, [], |r| r.get(0)).unwrap()
}

/// A relay taking mail from loopback and delivering example.net to `mx`,
/// with `delivery` added under [delivery].
fn relay_to(mx: &TestMx, delivery: &str) -> Relay {
    Relay::start(Options {
        submission: "trusted_networks = [\"127.0.0.0/8\"]".into(),
        delivery: format!(
            "routes = {{ \"example.net\" = \"{}\" }}\n{delivery}",
            mx.addr()
        ),
        ..Options::default()
    })
}

/// Messages the MX received, by connection.
fn by_connection(mx: &TestMx) -> HashMap<usize, Vec<String>> {
    let mut seen: HashMap<usize, Vec<String>> = HashMap::new();
    for r in mx.received() {
        seen.entry(r.connection).or_default().extend(r.rcpt_to);
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_connection_takes_on_mail_queued_while_it_works() {
    // Each message takes the MX 0.7 s, so the four take 2.8 s: longer than
    // the 2 s lease, which only renewal keeps, also for what the
    // connection leased after it started.
    let mx = TestMx::start(MxConfig {
        hold_greetings: true,
        data_delay: Some(Duration::from_millis(700)),
        ..MxConfig::default()
    })
    .await;
    let relay = relay_to(
        &mx,
        "max_per_destination = 1\nmax_messages_per_connection = 10\nlease_time = \"2s\"",
    );
    let msg = message("news@example.com", "a@example.net", "first", "hello");
    submit(&relay, "news@example.com", &["a@example.net"], &msg);
    wait_for(
        "the connection for the first",
        Duration::from_secs(30),
        || mx.waiting_for_greeting() == 1,
    );
    // Queued while the only slot is taken.
    let later = ["b@example.net", "c@example.net", "d@example.net"];
    for to in later {
        let msg = message("news@example.com", to, "later", "hello");
        submit(&relay, "news@example.com", &[to], &msg);
    }
    mx.release_greetings();
    wait_for("all four delivered", Duration::from_secs(60), || {
        count(
            &relay,
            "SELECT COUNT(*) FROM recipients WHERE status = 'delivered'",
        ) == 4
    });
    let seen = by_connection(&mx);
    assert_eq!(mx.connections().len(), 1, "{seen:?}");
    let mut got = seen.into_values().next().unwrap_or_default();
    got.sort();
    assert_eq!(
        got,
        [
            "a@example.net",
            "b@example.net",
            "c@example.net",
            "d@example.net"
        ]
    );
    // Every outcome was recorded under a lease still held.
    let events = count(
        &relay,
        "SELECT COUNT(*) FROM events WHERE type = 'email.delivered'",
    );
    assert_eq!(events, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_runs_dry_takes_half_of_a_siblings_recipients() {
    let mx = TestMx::start(MxConfig {
        hold_greetings: true,
        data_delay: Some(Duration::from_millis(300)),
        ..MxConfig::default()
    })
    .await;
    let relay = relay_to(
        &mx,
        "max_per_destination = 2\nmax_messages_per_connection = 20",
    );
    let msg = message("news@example.com", "solo@example.net", "one", "hello");
    submit(&relay, "news@example.com", &["solo@example.net"], &msg);
    wait_for("the first connection", Duration::from_secs(30), || {
        mx.waiting_for_greeting() == 1
    });
    // Ten recipients of one message: the second connection leases them all.
    let many: Vec<String> = (0..10).map(|i| format!("m{i}@example.net")).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let msg = message("news@example.com", "list@example.net", "many", "hello");
    submit(&relay, "news@example.com", &refs, &msg);
    wait_for("the second connection", Duration::from_secs(30), || {
        mx.waiting_for_greeting() == 2
    });
    assert_eq!(
        count(
            &relay,
            "SELECT COUNT(*) FROM recipients WHERE status = 'sending'"
        ),
        11,
        "both connections hold their leases"
    );
    mx.release_greetings();
    wait_for("all eleven delivered", Duration::from_secs(60), || {
        count(
            &relay,
            "SELECT COUNT(*) FROM recipients WHERE status = 'delivered'",
        ) == 11
    });
    let seen = by_connection(&mx);
    assert_eq!(seen.len(), 2, "{seen:?}");
    // The first connection sent its one message in a fraction of the
    // 3 s the second needs for ten, then took some of the ten.
    let solo = seen
        .values()
        .find(|rcpts| rcpts.iter().any(|r| r == "solo@example.net"))
        .expect("solo delivered");
    assert!(solo.len() >= 3, "{seen:?}");
    let mut all: Vec<&String> = seen.values().flatten().collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 11, "each recipient once: {seen:?}");
    assert_eq!(
        count(
            &relay,
            "SELECT COUNT(*) FROM events WHERE type = 'email.delivered'",
        ),
        11
    );
}
