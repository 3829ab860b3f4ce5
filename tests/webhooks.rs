//! Webhooks through the whole path: SMTP in, delivery to a test MX, the
//! pixel and a link fetched, and every event signed and delivered to a
//! test endpoint that checks the signatures with its own implementation.

mod harness;
mod support;

use harness::*;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use support::mx::{MxConfig, Script, TestMx};
use support::webhook::{verify, Receiver};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[test]
fn the_receivers_verifier_agrees_with_the_specification_example() {
    let (id, ts, body) = (
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "1614265330",
        br#"{"test": 2432232314}"#,
    );
    let good = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    assert!(verify(SECRET, id, ts, body, good));
    assert!(verify(
        SECRET,
        id,
        ts,
        body,
        &format!("v1,bm9ldGhpcw== {good}")
    ));
    assert!(!verify(SECRET, id, "1614265331", body, good));
    assert!(!verify(SECRET, id, ts, br#"{"test": 2432232315}"#, good));
}

fn html(subject: &str) -> Vec<u8> {
    format!(
        "From: News <news@example.com>\r\nTo: x@example.net\r\nSubject: {subject}\r\nX-Tags: launch\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n\
         <html><body><a href=\"https://example.org/landing?a=1&amp;b=2\">go</a></body></html>\r\n"
    )
    .into_bytes()
}

fn links(data: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(data);
    let find = |kind: &str| {
        let p = format!("http://links.example.com/v1/track/{kind}/");
        let i = text.find(&p).unwrap() + "http://links.example.com".len();
        let end = text[i..].find('"').unwrap() + i;
        text[i..end].to_string()
    };
    (find("open"), find("click"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_type_arrives_signed_through_the_whole_path() {
    let hooks = Receiver::start(SECRET).await;
    let mx = TestMx::start(
        MxConfig::default()
            .script(
                "later@example.net",
                Script::first(1, "451 4.7.1 greylisted"),
            )
            .script("gone@example.net", Script::always("550 5.1.1 no such user")),
    )
    .await;
    let mut relay = Relay::start(Options {
        submission: "trusted_networks = [\"127.0.0.0/8\"]".into(),
        domain: "open_tracking = true\nclick_tracking = true\ntracking_subdomain = \"links\"".into(),
        tracking: "machine_click_window = \"0s\"".into(),
        delivery: format!(
            "routes = {{ \"example.net\" = \"{}\", \"stuck.test\" = \"127.0.0.1:{}\" }}\nretry = [\"1s\", \"1h\"]",
            mx.addr(),
            closed_port()
        ),
        extra: format!("[[webhooks]]\nurl = \"{}\"\nsecret = \"{SECRET}\"\nevents = [\"*\"]\nretry = [\"1s\", \"2s\"]", hooks.url()),
        ..Options::default()
    });
    let id = submit(
        &relay,
        "news@example.com",
        &[
            "ok@example.net",
            "later@example.net",
            "gone@example.net",
            "x@stuck.test",
        ],
        &html("all events"),
    );
    assert!(mx.wait_for(2, Duration::from_secs(30)).await);
    let copy = mx
        .received()
        .into_iter()
        .find(|r| r.rcpt_to[0] == "ok@example.net")
        .unwrap();
    let (open, click) = links(&copy.data);
    let host = ("Host", "links.example.com");
    assert_eq!(
        http(
            relay.tracking,
            "GET",
            &open,
            &[host, ("User-Agent", "Thunderbird")]
        )
        .0,
        200
    );
    assert_eq!(
        http(
            relay.tracking,
            "GET",
            &click,
            &[host, ("User-Agent", "Thunderbird")]
        )
        .0,
        302
    );
    // The stuck recipient is removed by the operator: email.failed.
    wait_for(
        "the stuck recipient deferred",
        Duration::from_secs(20),
        || {
            relay
                .db()
                .query_row(
                    "SELECT status FROM recipients WHERE address = 'x@stuck.test'",
                    [],
                    |r| r.get::<_, String>(0),
                )
                .unwrap()
                == "deferred"
        },
    );
    // `queue delete` runs beside the server; stop the server first so the
    // runner cannot pick the row up between the two.
    relay.stop();
    let out = relay.cli(&["queue", "delete", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    relay.spawn();

    let want: HashSet<&str> = [
        "email.sent",
        "email.delivered",
        "email.delivery_delayed",
        "email.bounced",
        "email.failed",
        "email.opened",
        "email.clicked",
    ]
    .into();
    wait_for(
        "every event type at the endpoint",
        Duration::from_secs(60),
        || {
            let got: HashSet<String> = hooks
                .accepted()
                .iter()
                .map(|d| d.body["type"].as_str().unwrap_or("").to_string())
                .collect();
            want.iter().all(|t| got.contains(*t))
        },
    );
    let all = hooks.deliveries();
    assert!(
        all.iter().all(|d| d.signature_ok),
        "every signature verifies"
    );
    let mut by_type: HashMap<String, Vec<serde_json::Value>> = HashMap::new();
    for d in &all {
        by_type
            .entry(d.body["type"].as_str().unwrap().to_string())
            .or_default()
            .push(d.body.clone());
    }
    for (t, bodies) in &by_type {
        for b in bodies {
            assert_eq!(b["data"]["email_id"], id.as_str(), "{t}");
            assert_eq!(b["data"]["from"], "News <news@example.com>", "{t}");
            assert_eq!(b["data"]["subject"], "all events", "{t}");
            assert_eq!(b["data"]["tags"][0], "launch", "{t}");
            assert!(b["created_at"].as_str().unwrap().ends_with('Z'));
        }
    }
    let clicked = &by_type["email.clicked"][0]["data"];
    assert_eq!(clicked["to"][0], "ok@example.net");
    assert_eq!(
        clicked["click"]["link"],
        "https://example.org/landing?a=1&b=2"
    );
    assert_eq!(clicked["click"]["ip_address"], "127.0.0.1");
    assert_eq!(clicked["click"]["user_agent"], "Thunderbird");
    assert_eq!(clicked["click"]["machine"], false);
    assert!(by_type["email.opened"][0]["data"]["open"]["timestamp"].is_string());
    let bounced = &by_type["email.bounced"][0]["data"];
    assert_eq!(bounced["to"][0], "gone@example.net");
    assert!(bounced["bounce"]["message"]
        .as_str()
        .unwrap()
        .contains("550 5.1.1"));
    assert_eq!(by_type["email.failed"][0]["data"]["to"][0], "x@stuck.test");
    assert_eq!(by_type["email.sent"].len(), 4);
    let delayed_to: HashSet<String> = by_type["email.delivery_delayed"]
        .iter()
        .map(|b| b["data"]["to"][0].as_str().unwrap().to_string())
        .collect();
    assert!(delayed_to.contains("later@example.net"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_outage_loses_nothing_and_duplicates_nothing() {
    let hooks = Receiver::start(SECRET).await;
    hooks.set_answer(503);
    let mx = TestMx::start(MxConfig::default()).await;
    let relay = Relay::start(Options {
        submission: "trusted_networks = [\"127.0.0.0/8\"]".into(),
        delivery: format!("routes = {{ \"example.net\" = \"{}\" }}", mx.addr()),
        extra: format!(
            "[[webhooks]]\nurl = \"{}\"\nsecret = \"{SECRET}\"\nevents = [\"email.sent\", \"email.delivered\"]\nretry = [\"1s\", \"1s\", \"1s\", \"1s\", \"1s\", \"1s\", \"1s\", \"1s\"]",
            hooks.url()
        ),
        ..Options::default()
    });
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(submit(
            &relay,
            "news@example.com",
            &["a@example.net", "b@example.net"],
            &html(&format!("outage {i}")),
        ));
    }
    assert!(mx.wait_for(20, Duration::from_secs(30)).await);
    // Down for a while: attempts fail and are retried.
    wait_for("failed attempts", Duration::from_secs(20), || {
        hooks.deliveries().len() >= 40
    });
    assert!(hooks.accepted().is_empty());
    hooks.set_answer(200);
    // 10 emails x 2 recipients x (sent + delivered).
    wait_for("every event once accepted", Duration::from_secs(60), || {
        hooks.accepted().len() >= 40
    });
    // Duplicates would come from a row sent again: wait until the store has
    // every row delivered, after which nothing sends them any more.
    wait_for(
        "every outbox row delivered",
        Duration::from_secs(30),
        || {
            let out = relay.cli(&["webhooks", "list", "--json"]);
            let rows: Vec<serde_json::Value> = String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            rows.len() == 40 && rows.iter().all(|r| r["status"] == "delivered")
        },
    );
    let accepted = hooks.accepted();
    let unique: HashSet<&str> = accepted.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(accepted.len(), 40, "no webhook-id accepted twice");
    assert_eq!(unique.len(), 40);
    for d in &hooks.deliveries() {
        assert!(d.signature_ok);
    }
    // The failed attempts were retries of the same ids.
    let all = hooks.deliveries();
    let attempted: HashSet<&str> = all.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(attempted, unique, "retries reuse the webhook-id");
    let out = relay.cli(&["webhooks", "list", "--json"]);
    let rows: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 40);
    assert!(rows
        .iter()
        .all(|r| r["status"] == "delivered" && r["attempts"].as_u64().unwrap() >= 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_up_deliveries_are_listed_and_can_be_replayed() {
    let hooks = Receiver::start(SECRET).await;
    hooks.set_answer(500);
    let relay = Relay::start(Options {
        submission: "trusted_networks = [\"127.0.0.0/8\"]".into(),
        extra: format!(
            "[[webhooks]]\nurl = \"{}\"\nsecret = \"{SECRET}\"\nevents = [\"email.sent\"]\nretry = [\"1s\"]",
            hooks.url()
        ),
        ..Options::default()
    });
    submit(
        &relay,
        "news@example.com",
        &["a@example.net"],
        &html("replay"),
    );
    wait_for("the delivery given up", Duration::from_secs(20), || {
        let out = relay.cli(&["webhooks", "list", "--failed", "--json"]);
        !out.stdout.is_empty()
    });
    let out = relay.cli(&["webhooks", "list", "--failed", "--json"]);
    let row: serde_json::Value = serde_json::from_str(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(row["attempts"], 2);
    assert_eq!(row["last_error"], "HTTP 500 Internal Server Error");
    let webhook_id = row["id"].as_str().unwrap().to_string();
    hooks.set_answer(204);
    let out = relay.cli(&["webhooks", "replay", &webhook_id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        "the replayed delivery accepted",
        Duration::from_secs(20),
        || !hooks.accepted().is_empty(),
    );
    assert_eq!(
        hooks.accepted()[0].id,
        webhook_id,
        "replays keep the webhook-id"
    );
}
