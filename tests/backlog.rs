//! The queue behind a backlog, through the real binary: a slow MX, many
//! more recipients than delivery slots, and a lease shorter than one
//! connection's work. Every recipient arrives once, and every outcome is
//! recorded as its transaction ends. Also: SIGTERM while the runner waits
//! for a slot.

mod harness;
mod support;

use harness::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use support::mx::{MxConfig, TestMx};

const EMAILS: usize = 5;
const PER_EMAIL: usize = 10;
/// Two connections at a time: the backlog is 25 times the concurrency.
const CONCURRENCY: usize = 2;
const PER_CONNECTION: usize = 10;

fn count(relay: &Relay, sql: &str) -> i64 {
    relay.db().query_row(sql, [], |r| r.get(0)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_mx_long_backlog_short_lease_delivers_each_recipient_once() {
    let mx = TestMx::start(MxConfig {
        data_delay: Some(Duration::from_millis(500)),
        keep_data: false,
        log_commands: false,
        ..MxConfig::default()
    })
    .await;
    // A connection works for about 5 s (10 messages at 0.5 s): longer than
    // the lease, which only renewal keeps.
    let relay = Relay::start(Options {
        submission: "trusted_networks = [\"127.0.0.0/8\"]".into(),
        delivery: format!(
            "routes = {{ \"example.net\" = \"{}\" }}\nretry = [\"1s\"]\n\
             max_concurrency = {CONCURRENCY}\nmax_per_destination = {CONCURRENCY}\n\
             max_messages_per_connection = {PER_CONNECTION}\nlease_time = \"2s\"",
            mx.addr()
        ),
        ..Options::default()
    });
    let mut addresses = Vec::new();
    for e in 0..EMAILS {
        let to: Vec<String> = (0..PER_EMAIL)
            .map(|r| format!("r{e}-{r}@example.net"))
            .collect();
        let refs: Vec<&str> = to.iter().map(String::as_str).collect();
        let msg = message("news@example.com", "list@example.net", "backlog", "hello");
        submit(&relay, "news@example.com", &refs, &msg);
        addresses.extend(to);
    }
    let total = addresses.len();
    assert!(total >= 20 * CONCURRENCY);

    // While it runs: never more leased than the free slots can send, and
    // outcomes appear one by one, not a connection's worth at a time.
    let mut most_leased = 0;
    let mut partial_batch_seen = false;
    wait_for("every recipient settled", Duration::from_secs(50), || {
        let leased = count(
            &relay,
            "SELECT COUNT(*) FROM recipients WHERE status = 'sending'",
        );
        let delivered = count(
            &relay,
            "SELECT COUNT(*) FROM recipients WHERE status = 'delivered'",
        );
        most_leased = most_leased.max(leased);
        if delivered > 0 && delivered < PER_CONNECTION as i64 {
            partial_batch_seen = true;
        }
        count(
            &relay,
            "SELECT COUNT(*) FROM recipients WHERE status IN ('queued', 'deferred', 'sending')",
        ) == 0
    });
    assert!(
        most_leased <= (CONCURRENCY * PER_CONNECTION) as i64,
        "{most_leased} leased at once; the slots can send {}",
        CONCURRENCY * PER_CONNECTION
    );
    assert!(
        partial_batch_seen,
        "outcomes were recorded only when whole connections ended"
    );

    // Exactly once at the sink.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for r in mx.received() {
        for to in r.rcpt_to {
            *seen.entry(to).or_default() += 1;
        }
    }
    for a in &addresses {
        assert_eq!(
            seen.get(a),
            Some(&1),
            "{a} delivered {:?} times",
            seen.get(a)
        );
    }
    assert_eq!(mx.message_count(), total, "no duplicates");

    // Every outcome recorded, once, by the attempt that made it.
    let db = relay.db();
    let (delivered, with_time, one_attempt, unleased): (i64, i64, i64, i64) = db
        .query_row(
            "SELECT COUNT(*), COUNT(delivered_at), SUM(attempts = 1), SUM(lease_id IS NULL)
             FROM recipients WHERE status = 'delivered'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!(
        (delivered, with_time, one_attempt, unleased),
        (total as i64, total as i64, total as i64, total as i64)
    );
    let events = count(
        &relay,
        "SELECT COUNT(*) FROM events WHERE type = 'email.delivered'",
    );
    assert_eq!(events, total as i64);
    let started = count(
        &relay,
        "SELECT COUNT(*) FROM recipients WHERE attempt_started_at IS NOT NULL",
    );
    assert_eq!(started, total as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_the_runner_waits_for_a_slot_exits_within_the_grace() {
    // One delivery slot, held by a delivery the MX stalls mid-DATA; eight
    // destinations with mail due behind it.
    let mut mxs = Vec::new();
    for _ in 0..8 {
        mxs.push(
            TestMx::start(MxConfig {
                stall_mid_data_once: true,
                ..MxConfig::default()
            })
            .await,
        );
    }
    let routes: Vec<String> = mxs
        .iter()
        .enumerate()
        .map(|(i, mx)| format!("\"d{i}.test\" = \"{}\"", mx.addr()))
        .collect();
    let mut relay = Relay::start(Options {
        submission: "trusted_networks = [\"127.0.0.0/8\"]".into(),
        delivery: format!(
            "routes = {{ {} }}\nmax_concurrency = 1\nmax_messages_per_connection = 2",
            routes.join(", ")
        ),
        ..Options::default()
    });
    let to: Vec<String> = (0..8).map(|i| format!("r@d{i}.test")).collect();
    let refs: Vec<&str> = to.iter().map(String::as_str).collect();
    let msg = message("news@example.com", "r@d0.test", "stuck", "hello");
    submit(&relay, "news@example.com", &refs, &msg);
    wait_for(
        "one delivery caught mid-DATA",
        Duration::from_secs(30),
        || mxs.iter().map(|m| m.stalled()).sum::<usize>() == 1,
    );
    assert_eq!(
        count(
            &relay,
            "SELECT COUNT(*) FROM recipients WHERE status = 'queued'"
        ),
        7,
        "the others wait for the slot"
    );
    let sent = Instant::now();
    // The harness gives up (and fails the test) 30 s after SIGTERM.
    let status = relay.stop();
    let took = sent.elapsed();
    assert!(status.success(), "{status}");
    // shutdown_grace is 10 s in the harness; the rest is slack for a busy
    // machine, far below the minutes the stalled delivery could take.
    assert!(took < Duration::from_secs(20), "exit took {took:?}");
    assert!(
        relay
            .log()
            .contains("deliveries still in flight at shutdown"),
        "{}",
        relay.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_gives_back_unfinished_leases() {
    let mx = TestMx::start(MxConfig {
        data_delay: Some(Duration::from_millis(500)),
        keep_data: false,
        log_commands: false,
        ..MxConfig::default()
    })
    .await;
    // One connection of 40 messages takes about 20 s, longer than the
    // harness's shutdown_grace (10 s); the lease is the default 45 minutes.
    let mut relay = Relay::start(Options {
        submission: "trusted_networks = [\"127.0.0.0/8\"]".into(),
        delivery: format!(
            "routes = {{ \"example.net\" = \"{}\" }}\nmax_concurrency = 1\n\
             max_messages_per_connection = 40",
            mx.addr()
        ),
        ..Options::default()
    });
    let to: Vec<String> = (0..40).map(|i| format!("g{i}@example.net")).collect();
    let refs: Vec<&str> = to.iter().map(String::as_str).collect();
    let msg = message("news@example.com", "list@example.net", "stop", "hello");
    submit(&relay, "news@example.com", &refs, &msg);
    assert!(mx.wait_for(1, Duration::from_secs(30)).await);
    assert!(relay.stop().success());
    assert!(mx.message_count() < to.len(), "stopped mid-connection");
    assert_eq!(
        count(
            &relay,
            "SELECT COUNT(*) FROM recipients WHERE status = 'sending'"
        ),
        0,
        "no lease outlives a graceful stop"
    );
    relay.spawn();
    wait_for("every recipient delivered", Duration::from_secs(60), || {
        count(
            &relay,
            "SELECT COUNT(*) FROM recipients WHERE status = 'delivered'",
        ) == to.len() as i64
    });
    let mut seen: HashMap<String, usize> = HashMap::new();
    for r in mx.received() {
        for t in r.rcpt_to {
            *seen.entry(t).or_default() += 1;
        }
    }
    // At most the one in its transaction when the grace ran out is sent
    // twice (at least once).
    assert!(to.iter().all(|a| seen.contains_key(a)));
    assert!(seen.values().filter(|n| **n > 1).count() <= 1, "{seen:?}");
}
