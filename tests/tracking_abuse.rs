//! Tracking under abuse, through the real binary over real HTTP: a gateway
//! that clicks while the message is still being delivered, one URL fetched
//! in a loop, and the accounting that says no answered hit went missing
//! (stored + aggregated = answered).

mod harness;
mod support;

use harness::*;
use std::time::{Duration, Instant};
use support::mx::{MxConfig, TestMx};
use support::webhook::Receiver;
use trackrelay::prepare::TokenKeys;

const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
const HOST: (&str, &str) = ("Host", "links.example.com");
/// README "Repeated hits": the window of the flood rule.
const AGGREGATE_WINDOW: Duration = Duration::from_secs(10);

fn count(relay: &Relay, sql: &str) -> i64 {
    relay.db().query_row(sql, [], |r| r.get(0)).unwrap()
}

/// The relay's own tracking key (created at its first start), to make the
/// tokens its messages would carry.
fn keys(relay: &Relay) -> TokenKeys {
    TokenKeys::load_or_create(&relay.data_dir().join("tracking.key"), &[]).unwrap()
}

fn metric(relay: &Relay, name: &str) -> u64 {
    let bearer = format!("Bearer {API_TOKEN}");
    let (status, _, body) = http(
        relay.api,
        "GET",
        "/metrics",
        &[("Authorization", bearer.as_str())],
    );
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

fn click(relay: &Relay, path: &str, ua: &str) {
    let (status, _, _) = http(relay.tracking, "GET", path, &[HOST, ("User-Agent", ua)]);
    assert_eq!(status, 302, "{path}");
}

/// Waits until the recorder has written everything answered before: a
/// sentinel hit of a fresh token goes through the same FIFO queue and
/// batches, so once it is stored, every earlier event is too.
fn flush(relay: &Relay, keys: &TokenKeys) {
    let id = uuid::Uuid::now_v7();
    let path = format!("/v1/track/open/{}", keys.open_token(id, 0));
    assert_eq!(http(relay.tracking, "GET", &path, &[HOST]).0, 200);
    wait_for("the sentinel stored", Duration::from_secs(30), || {
        count(
            relay,
            &format!("SELECT COUNT(*) FROM events WHERE email_id = '{id}'"),
        ) == 1
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_click_while_the_message_is_being_delivered_is_a_machine_click() {
    // The receiver takes part of the message and holds the connection: the
    // delivery is in progress, `delivered_at` still empty.
    let mx = TestMx::start(MxConfig {
        stall_mid_data_once: true,
        ..MxConfig::default()
    })
    .await;
    let relay = Relay::start(Options {
        submission: "trusted_networks = [\"127.0.0.0/8\"]".into(),
        domain: "click_tracking = true\ntracking_subdomain = \"links\"".into(),
        // No window after delivery at all: only the attempt in progress
        // can make this click a machine's.
        tracking: "machine_click_window = \"0s\"".into(),
        delivery: format!("routes = {{ \"example.net\" = \"{}\" }}", mx.addr()),
        ..Options::default()
    });
    let message = "From: News <news@example.com>\r\nTo: one@example.net\r\nSubject: scan me\r\n\
        MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n\
        <html><body><a href=\"https://example.org/offer\">offer</a></body></html>\r\n";
    let id = submit(
        &relay,
        "news@example.com",
        &["one@example.net"],
        message.as_bytes(),
    );
    wait_for(
        "the delivery held mid-DATA",
        Duration::from_secs(30),
        || mx.stalled() == 1,
    );
    assert_eq!(
        count(
            &relay,
            &format!(
                "SELECT COUNT(*) FROM recipients WHERE email_id = '{id}' AND status = 'sending'
                 AND attempt_started_at IS NOT NULL AND delivered_at IS NULL"
            )
        ),
        1,
        "the attempt is in progress"
    );
    // A gateway behind the receiver follows the link with a browser's face.
    let email: uuid::Uuid = id.parse().unwrap();
    let token = keys(&relay).click_token(email, 0, 0, "https://example.org/offer");
    click(&relay, &format!("/v1/track/click/{token}"), CHROME);
    wait_for("the click stored", Duration::from_secs(10), || {
        count(
            &relay,
            &format!(
                "SELECT COUNT(*) FROM events WHERE email_id = '{id}' AND type = 'email.clicked'"
            ),
        ) == 1
    });
    let (recipient, machine, reason): (String, bool, Option<String>) = relay
        .db()
        .query_row(
            "SELECT recipient, machine, machine_reason FROM events WHERE email_id = ?1 AND type = 'email.clicked'",
            [&id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(recipient, "one@example.net");
    assert!(machine, "a click during delivery is no reader's");
    assert_eq!(reason.as_deref(), Some("too_soon_after_delivery"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_url_fetched_in_a_loop_is_one_event_and_one_webhook() {
    let hooks = Receiver::start("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").await;
    let relay = Relay::start(Options {
        api_token: true,
        extra: format!(
            "[[webhooks]]\nurl = \"{}\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\nevents = [\"email.clicked\"]",
            hooks.url()
        ),
        ..Options::default()
    });
    let keys = keys(&relay);
    let email = uuid::Uuid::now_v7();
    let path = format!(
        "/v1/track/click/{}",
        keys.click_token(email, 0, 0, "https://example.org/a")
    );
    let started = Instant::now();
    for _ in 0..50 {
        click(&relay, &path, FIREFOX);
    }
    // Another client (another browser on the same address) is someone else.
    click(&relay, &path, CHROME);
    assert!(
        started.elapsed() < AGGREGATE_WINDOW,
        "51 requests took {:?}: too slow a machine for this test",
        started.elapsed()
    );
    flush(&relay, &keys);

    let clicks: Vec<(String, Option<String>)> = relay
        .db()
        .prepare("SELECT type, user_agent FROM events WHERE email_id = ?1 ORDER BY id")
        .unwrap()
        .query_map([email.to_string()], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        clicks,
        [
            ("email.clicked".to_string(), Some(FIREFOX.to_string())),
            ("email.clicked".to_string(), Some(CHROME.to_string())),
        ]
    );
    assert_eq!(
        count(&relay, "SELECT COUNT(*) FROM webhook_outbox"),
        2,
        "one webhook per stored click, not per hit"
    );
    assert_eq!(metric(&relay, "trackrelay_clicks_total"), 51);
    assert_eq!(
        metric(&relay, "trackrelay_tracking_hits_aggregated_total"),
        49
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answered_hit_is_stored_or_aggregated() {
    let relay = Relay::start(Options {
        api_token: true,
        // A queue of one: every hit that comes while the recorder commits
        // finds it full, and must wait for room rather than be dropped.
        tracking: "event_queue = 1".into(),
        ..Options::default()
    });
    let keys = keys(&relay);
    // 8 tokens (opens and clicks of 4 emails), 3 clients, 4 threads at once.
    let paths: Vec<String> = (0..4)
        .flat_map(|_| {
            let email = uuid::Uuid::now_v7();
            [
                format!("/v1/track/open/{}", keys.open_token(email, 0)),
                format!(
                    "/v1/track/click/{}",
                    keys.click_token(email, 0, 1, "https://example.org/b")
                ),
            ]
        })
        .collect();
    let agents = [CHROME, FIREFOX, "curl/8.5.0"];
    std::thread::scope(|s| {
        for t in 0..4 {
            let (relay, paths) = (&relay, &paths);
            s.spawn(move || {
                for i in 0..60 {
                    let path = &paths[(t + i) % paths.len()];
                    let ua = agents[(t * 7 + i) % agents.len()];
                    let status = http(relay.tracking, "GET", path, &[HOST, ("User-Agent", ua)]).0;
                    assert!(status == 200 || status == 302, "{status} for {path}");
                }
            });
        }
    });
    flush(&relay, &keys);
    let answered =
        metric(&relay, "trackrelay_clicks_total") + metric(&relay, "trackrelay_opens_total");
    let aggregated = metric(&relay, "trackrelay_tracking_hits_aggregated_total");
    let stored = count(
        &relay,
        "SELECT COUNT(*) FROM events WHERE type IN ('email.opened', 'email.clicked')",
    ) as u64;
    // 240 hits plus the sentinel.
    assert_eq!(answered, 241);
    assert_eq!(stored + aggregated, answered);
    // At most one event per token and client (24) plus the sentinel, unless
    // the run outlasted the window.
    assert!(stored >= 2, "{stored}");
    assert!(aggregated > 0, "{aggregated}");
    assert_eq!(metric(&relay, "trackrelay_event_queue_overflow_total"), 0);
    assert_eq!(metric(&relay, "trackrelay_events_store_failed_total"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_whose_client_hangs_up_while_it_waits_is_still_stored() {
    let relay = Relay::start(Options {
        api_token: true,
        // A queue of one: hits that come while the recorder commits wait.
        tracking: "event_queue = 1".into(),
        ..Options::default()
    });
    let keys = keys(&relay);
    let email = uuid::Uuid::now_v7();
    let path = format!(
        "/v1/track/click/{}",
        keys.click_token(email, 0, 0, "https://example.org/c")
    );
    // Clients that send their request and go away without reading the
    // answer (a browser moving on, a load tool stopping), each a client of
    // its own so that nothing is folded. The server answers some of them
    // (it may see the hang-up before it reads the request).
    std::thread::scope(|s| {
        for t in 0..8 {
            let (relay, path) = (&relay, &path);
            s.spawn(move || {
                use std::io::Write;
                for i in 0..40 {
                    let mut c = std::net::TcpStream::connect(relay.tracking).unwrap();
                    let req = format!(
                        "GET {path} HTTP/1.1\r\nHost: links.example.com\r\nUser-Agent: client {t}-{i}\r\n\r\n"
                    );
                    c.write_all(req.as_bytes()).unwrap();
                }
            });
        }
    });
    // Every hit the server counted is stored, whether or not its client
    // stayed for the answer (a lost one would keep them apart for good).
    let stored = || {
        count(
            &relay,
            &format!("SELECT COUNT(*) FROM events WHERE email_id = '{email}'"),
        ) as u64
    };
    wait_for("every answered hit stored", Duration::from_secs(30), || {
        let answered = metric(&relay, "trackrelay_clicks_total");
        answered > 0 && stored() == answered
    });
    assert_eq!(
        metric(&relay, "trackrelay_tracking_hits_aggregated_total"),
        0
    );
    assert_eq!(metric(&relay, "trackrelay_event_queue_overflow_total"), 0);
}
