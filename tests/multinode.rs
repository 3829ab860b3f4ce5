//! Several relay nodes on one PostgreSQL store (`[store] backend =
//! "postgres"`): any node accepts, any node delivers, any node answers
//! tracking requests.
//!
//! - 20 clients submit 2,000 messages across two nodes; one node is
//!   SIGKILLed mid-load and stays down; the survivor delivers every
//!   acknowledged message, taking over only the dead node's expired
//!   leases; duplicates are counted and reported; every webhook id arrives.
//! - A click answered by node A for mail accepted by node B is recorded
//!   and attributed to B's email and recipient, with `detail.node` = A.
//!
//! Run alone with the counts shown:
//! `cargo test --release --test multinode -- --nocapture`

mod harness;
mod support;

use harness::*;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::mx::{MxConfig, TestMx};
use support::webhook::Receiver;

const MESSAGES: usize = 2000;
const CLIENTS: usize = 20;
const RECIPIENTS: usize = 40;
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn message(n: usize) -> Vec<u8> {
    format!(
        "From: News <news@example.com>\r\nTo: r{r}@example.net\r\nSubject: two nodes {n}\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n\
         <html><body><p>Message {n}</p><a href=\"https://example.org/item/{n}\">item</a>\
         </body></html>\r\n",
        r = n % RECIPIENTS,
    )
    .into_bytes()
}

/// Message `n`, to its recipient, on an open session.
fn send_one(c: &mut RawSmtp, n: usize) -> Option<String> {
    let to = format!("r{}@example.net", n % RECIPIENTS);
    load_send(c, "news@example.com", &to, &message(n))
}

/// A node on the shared database `url`; `secret_of` shares the first
/// node's tracking key (every node must verify every node's links).
fn node(name: &str, url: &str, secret_of: Option<&Relay>, delivery: &str, extra: &str) -> Relay {
    Relay::start(Options {
        server: format!("node_id = \"{name}\""),
        store: format!("backend = \"postgres\"\nurl = \"{url}\"\npool_size = 8"),
        submission: "trusted_networks = [\"127.0.0.0/8\"]\nmax_connections_per_ip = 100".into(),
        domain: "click_tracking = true\nopen_tracking = true\ntracking_subdomain = \"links\""
            .into(),
        tracking: secret_of
            .map(|r| {
                format!(
                    "secret_file = \"{}\"",
                    r.data_dir().join("tracking.key").display()
                )
            })
            .unwrap_or_default(),
        delivery: delivery.to_string(),
        extra: extra.to_string(),
        ..Options::default()
    })
}

/// Rows of `sql` on the shared database, one string per line.
fn rows(url: &str, sql: &str) -> Vec<String> {
    pg::query(url, sql)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_one_killed_the_other_delivers_everything_acknowledged() {
    if !pg::available("two_nodes_one_killed_the_other_delivers_everything_acknowledged") {
        return;
    }
    let started = Instant::now();
    let url = pg::url();
    let hooks = Receiver::start(SECRET).await;
    let mx = TestMx::start(MxConfig {
        keep_data: true,
        log_commands: false,
        ..MxConfig::default()
    })
    .await;
    // A short lease: the survivor takes the dead node's work back once it
    // expires, and not before.
    let delivery = format!(
        "routes = {{ \"example.net\" = \"{}\" }}\nretry = [\"1s\"]\nlease_time = \"5s\"",
        mx.addr()
    );
    let webhooks = format!(
        "[[webhooks]]\nurl = \"{}\"\nsecret = \"{SECRET}\"\nevents = [\"email.sent\", \"email.delivered\"]\n\
         retry = [\"1s\", \"1s\", \"1s\", \"1s\", \"1s\"]\ntimeout = \"2s\"",
        hooks.url()
    );
    let mut a = node("node-a", &url, None, &delivery, &webhooks);
    let b = node("node-b", &url, Some(&a), &delivery, &webhooks);

    let next = Arc::new(AtomicUsize::new(0));
    let acked: Arc<Mutex<HashMap<String, usize>>> = Arc::new(Mutex::new(HashMap::new()));
    let client_errors = Arc::new(AtomicUsize::new(0));
    // Half the clients start on each node; when A dies they move to B.
    let a_alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (next, acked, errors, a_alive) = (
            next.clone(),
            acked.clone(),
            client_errors.clone(),
            a_alive.clone(),
        );
        let (addr_a, addr_b) = (a.smtp, b.smtp);
        clients.push(std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(300);
            let mut session: Option<RawSmtp> = None;
            loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= MESSAGES {
                    break;
                }
                loop {
                    assert!(Instant::now() < deadline, "client gave up");
                    if session.is_none() {
                        let on_a = c % 2 == 0 && a_alive.load(Ordering::SeqCst);
                        session = load_session(if on_a { addr_a } else { addr_b });
                        if session.is_none() {
                            errors.fetch_add(1, Ordering::SeqCst);
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
    wait_for("a third acknowledged", Duration::from_secs(240), || {
        acked.lock().unwrap().len() >= MESSAGES / 3
    });
    // Node A dies holding leases, mid-delivery, and stays down.
    a.kill();
    let killed_at = Instant::now();
    a_alive.store(false, Ordering::SeqCst);
    let a_leases: usize = rows(
        &url,
        "SELECT count(*) FROM recipients WHERE status = 'sending' AND lease_node = 'node-a'",
    )[0]
    .parse()
    .unwrap_or(0);
    for c in clients {
        c.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert_eq!(
        acked.len(),
        MESSAGES,
        "every message acknowledged in the end"
    );

    let ids: Vec<String> = acked.keys().cloned().collect();
    let duplicates = mx.wait_each_delivered(&ids, Duration::from_secs(240));
    wait_for("the store settled", Duration::from_secs(120), || {
        rows(
            &url,
            "SELECT count(*) FROM recipients WHERE status != 'delivered'",
        )[0] == "0"
    });
    // Both nodes delivered (B took over A's work), and each delivery event
    // names its node.
    let by_node = rows(
        &url,
        "SELECT n || ' ' || c FROM (SELECT COALESCE(detail::json->>'node', '?') AS n, count(*) AS c
         FROM events WHERE type = 'email.delivered' GROUP BY 1) x ORDER BY 1",
    );
    assert!(
        by_node.iter().any(|l| l.starts_with("node-b ")),
        "{by_node:?}"
    );
    let events: HashMap<String, HashSet<String>> = {
        let mut m: HashMap<String, HashSet<String>> = HashMap::new();
        for l in rows(
            &url,
            "SELECT email_id || ' ' || type FROM events WHERE type IN ('email.sent', 'email.delivered')",
        ) {
            let (id, t) = l.split_once(' ').unwrap();
            m.entry(id.to_string()).or_default().insert(t.to_string());
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
    // A webhook id may arrive twice only if node A posted it and died
    // before recording the answer; never because both nodes sent it.
    let deliveries = hooks.accepted();
    let mut per_id: HashMap<&str, usize> = HashMap::new();
    for d in &deliveries {
        *per_id.entry(d.id.as_str()).or_default() += 1;
    }
    let repeated = per_id.values().filter(|&&n| n > 1).count();
    let outbox_rows: usize = rows(&url, "SELECT count(*) FROM webhook_outbox")[0]
        .parse()
        .unwrap();
    assert_eq!(per_id.len(), outbox_rows, "every webhook id arrived");
    println!(
        "multinode: {MESSAGES} messages from {CLIENTS} clients over 2 nodes, node A SIGKILLed after {} acks \
         holding {a_leases} lease(s); acknowledged {}, delivered {} (duplicates {duplicates}), \
         deliveries by node {by_node:?}, client retries {}, webhooks {} for {} ids ({repeated} repeated), in {:.1}s \
         ({:.1}s after the kill)",
        MESSAGES / 3,
        acked.len(),
        ids.len(),
        client_errors.load(Ordering::SeqCst),
        deliveries.len(),
        per_id.len(),
        started.elapsed().as_secs_f64(),
        killed_at.elapsed().as_secs_f64(),
    );
    assert!(
        repeated <= a_leases.max(1) * 2 + 20,
        "{repeated} webhook ids arrived twice: more than node A can have had in flight"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_click_answered_by_one_node_is_attributed_to_mail_the_other_accepted() {
    if !pg::available("a_click_answered_by_one_node_is_attributed_to_mail_the_other_accepted") {
        return;
    }
    let url = pg::url();
    let mx = TestMx::start(MxConfig {
        keep_data: true,
        ..MxConfig::default()
    })
    .await;
    let delivery = format!("routes = {{ \"example.net\" = \"{}\" }}", mx.addr());
    let a = node("node-a", &url, None, &delivery, "");
    let b = node("node-b", &url, Some(&a), &delivery, "");
    let id = submit(&b, "news@example.com", &["r1@example.net"], &message(1));
    wait_for("delivered", Duration::from_secs(60), || {
        mx.message_count() >= 1
    });
    // The rewritten link: http://links.example.com/v1/track/click/{token}.
    let data = String::from_utf8_lossy(&mx.received()[0].data).into_owned();
    const HOST: &str = "http://links.example.com";
    let start = data
        .find(&format!("{HOST}/v1/track/click/"))
        .expect("a tracked link in the delivered copy")
        + HOST.len();
    let tail = &data[start..];
    let path = &tail[..tail.find(['"', '\'', ' ', '>']).unwrap_or(tail.len())];
    let (status, headers, _) = http(
        a.tracking,
        "GET",
        path,
        &[("Host", "links.example.com"), ("User-Agent", "Thunderbird")],
    );
    assert_eq!(status, 302, "node A answers B's link");
    assert_eq!(
        header(&headers, "location"),
        Some("https://example.org/item/1")
    );
    wait_for("the click stored", Duration::from_secs(30), || {
        !rows(
            &url,
            &format!("SELECT id FROM events WHERE type = 'email.clicked' AND email_id = '{id}'"),
        )
        .is_empty()
    });
    let click = rows(
        &url,
        &format!(
            "SELECT recipient || ' ' || (detail::json->>'node') || ' ' || (SELECT count(*) FROM emails WHERE id = '{id}')
             FROM events WHERE type = 'email.clicked' AND email_id = '{id}'"
        ),
    );
    assert_eq!(click, vec!["r1@example.net node-a 1".to_string()]);
    let accepted_by = rows(
        &url,
        &format!("SELECT detail::json->>'node' FROM events WHERE type = 'email.sent' AND email_id = '{id}'"),
    );
    assert_eq!(
        accepted_by,
        vec!["node-b".to_string()],
        "accepted and sent by B"
    );
    let clicked_at = rows(
        &url,
        &format!(
            "SELECT count(*) FROM recipients WHERE email_id = '{id}' AND clicked_at IS NOT NULL"
        ),
    );
    assert_eq!(
        clicked_at,
        vec!["1".to_string()],
        "the recipient row shows the click"
    );
}
