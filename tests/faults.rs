//! The whole path under faults: 20 concurrent clients submit 2,000 tracked
//! messages while the relay is killed with SIGKILL twice and restarted, and
//! the receiving MX answers some RCPTs with 451 and drops one connection
//! mid-DATA. Afterwards every message acknowledged with 250 has been
//! delivered at least once, and its events and webhooks are there.
//!
//! Run alone with the counts shown:
//! `cargo test --release --test faults -- --nocapture`

mod harness;
mod support;

use harness::*;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::mx::{MxConfig, Script, TestMx};
use support::webhook::Receiver;

const MESSAGES: usize = 2000;
const CLIENTS: usize = 20;
const RECIPIENTS: usize = 40;
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn message(n: usize) -> Vec<u8> {
    format!(
        "From: News <news@example.com>\r\nTo: r{r}@example.net\r\nSubject: fault run {n}\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n\
         <html><body><p>Message {n}</p><a href=\"https://example.org/item/{n}?ref=mail&amp;x=1\">item</a>\
         {pad}</body></html>\r\n",
        r = n % RECIPIENTS,
        pad = "<p>lorem ipsum dolor sit amet</p>".repeat(30)
    )
    .into_bytes()
}

/// Message `n`, to its recipient, on an open session.
fn send_one(c: &mut RawSmtp, n: usize) -> Option<String> {
    let to = format!("r{}@example.net", n % RECIPIENTS);
    load_send(c, "news@example.com", &to, &message(n))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sigkills_a_flaky_mx_and_nothing_acknowledged_is_lost() {
    let started = Instant::now();
    let hooks = Receiver::start(SECRET).await;
    let mut mx_config = MxConfig {
        drop_mid_data_once: true,
        keep_data: true,
        log_commands: false,
        ..MxConfig::default()
    };
    // Every fifth recipient is greylisted the first time.
    for r in (0..RECIPIENTS).step_by(5) {
        mx_config = mx_config.script(
            &format!("r{r}@example.net"),
            Script::first(1, "451 4.7.1 greylisted, try again"),
        );
    }
    let mx = TestMx::start(mx_config).await;
    let mut relay = Relay::start(Options {
        submission: "trusted_networks = [\"127.0.0.0/8\"]\nmax_connections_per_ip = 100".into(),
        domain: "click_tracking = true\nopen_tracking = true\ntracking_subdomain = \"links\"".into(),
        // After a SIGKILL, only an expired lease is taken back: keep it short.
        delivery: format!(
            "routes = {{ \"example.net\" = \"{}\" }}\nretry = [\"1s\"]\nlease_time = \"5s\"",
            mx.addr()
        ),
        extra: format!(
            "[[webhooks]]\nurl = \"{}\"\nsecret = \"{SECRET}\"\nevents = [\"email.sent\", \"email.delivered\"]\nretry = [\"1s\", \"1s\", \"1s\", \"1s\", \"1s\"]\ntimeout = \"1s\"",
            hooks.url()
        ),
        ..Options::default()
    });

    let next = Arc::new(AtomicUsize::new(0));
    let acked: Arc<Mutex<HashMap<String, usize>>> = Arc::new(Mutex::new(HashMap::new()));
    let client_errors = Arc::new(AtomicUsize::new(0));
    // Each start listens on a new port (port 0): clients follow the relay.
    let addr = Arc::new(Mutex::new(relay.smtp));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (next, acked, errors) = (next.clone(), acked.clone(), client_errors.clone());
        let addr = addr.clone();
        clients.push(std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(300);
            let mut session: Option<RawSmtp> = None;
            loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= MESSAGES {
                    break;
                }
                // Like an application would: retry the same message until a
                // 250, reconnecting after the relay went away.
                loop {
                    assert!(Instant::now() < deadline, "client gave up");
                    if session.is_none() {
                        let current = *addr.lock().unwrap();
                        session = load_session(current);
                        if session.is_none() {
                            // Retry pace while the relay is down, as a real
                            // client would back off; not a synchronisation.
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        }
                    }
                    match send_one(session.as_mut().unwrap(), n) {
                        Some(id) => {
                            acked.lock().unwrap().insert(id, n);
                            break;
                        }
                        None => {
                            errors.fetch_add(1, Ordering::SeqCst);
                            session = None;
                        }
                    }
                }
            }
        }));
    }
    for threshold in [MESSAGES / 4, MESSAGES * 3 / 5] {
        wait_for("acknowledgements", Duration::from_secs(240), || {
            acked.lock().unwrap().len() >= threshold
        });
        let errors_before = client_errors.load(Ordering::SeqCst);
        relay.kill();
        // Clients must hit the outage, not just the restart.
        wait_for(
            "a client to see the relay gone",
            Duration::from_secs(30),
            || client_errors.load(Ordering::SeqCst) > errors_before,
        );
        relay.spawn();
        *addr.lock().unwrap() = relay.smtp;
    }
    for c in clients {
        c.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert_eq!(
        acked.len(),
        MESSAGES,
        "every message was acknowledged in the end"
    );

    // Every acknowledged message reaches the MX at least once.
    let ids: Vec<String> = acked.keys().cloned().collect();
    let duplicates = mx.wait_each_delivered(&ids, Duration::from_secs(240));

    // Events and webhooks: sent and delivered for each one.
    wait_for("store settled", Duration::from_secs(120), || {
        relay
            .db()
            .query_row(
                "SELECT COUNT(*) FROM recipients WHERE status != 'delivered'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .unwrap()
            == 0
    });
    let events: HashMap<String, HashSet<String>> = {
        let db = relay.db();
        let mut stmt = db
            .prepare(
                "SELECT email_id, type FROM events WHERE type IN ('email.sent', 'email.delivered')",
            )
            .unwrap();
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .unwrap();
        let mut m: HashMap<String, HashSet<String>> = HashMap::new();
        for row in rows {
            let (id, t) = row.unwrap();
            m.entry(id).or_default().insert(t);
        }
        m
    };
    for id in acked.keys() {
        let got = events.get(id).cloned().unwrap_or_default();
        assert!(
            got.contains("email.sent") && got.contains("email.delivered"),
            "{id}: {got:?}"
        );
    }
    let hooked = || hooks.types_by_email_id();
    wait_for("every webhook", Duration::from_secs(180), || {
        let m = hooked();
        acked
            .keys()
            .all(|id| m.get(id).is_some_and(|t| t.len() == 2))
    });
    let deliveries = hooks.accepted();
    let unique_hooks: HashSet<&str> = deliveries.iter().map(|d| d.id.as_str()).collect();
    let mx_connections = mx.connections().len();
    println!(
        "faults: {MESSAGES} messages from {CLIENTS} clients, 2 SIGKILLs; acknowledged {}, delivered {} (duplicates {duplicates}), \
         client retries {}, MX connections {mx_connections}, webhooks accepted {} ({} distinct ids), in {:.1}s",
        acked.len(),
        ids.len(),
        client_errors.load(Ordering::SeqCst),
        deliveries.len(),
        unique_hooks.len(),
        started.elapsed().as_secs_f64()
    );
    let log = relay.log();
    assert!(
        log.matches("trackrelay ready").count() == 3,
        "started three times"
    );
}
