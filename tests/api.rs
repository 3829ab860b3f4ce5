//! The admin API over a real TCP socket, against a real SQLite store seeded
//! through the store's own write paths, called with hyper's HTTP/1 client.

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use trackrelay::api::{serve, Api};
use trackrelay::config::Config;
use trackrelay::events::{EventType, NewEvent};
use trackrelay::metrics::Metrics;
use trackrelay::store::queue::{Attempt, NewEmail, Outcome};
use trackrelay::store::sqlite::webhooks::Subscription;
use trackrelay::store::{self, Durability, Store, StoreOptions};

const TOKEN: &str = "admin-token-for-tests";
/// 2026-01-01T00:00:00Z
const T0: i64 = 1_767_225_600_000;
const MIN: i64 = 60_000;

// ---------------------------------------------------------------------------
// The server under test.
// ---------------------------------------------------------------------------

struct Server {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

fn config(dir: &Path, token_hash: Option<&str>) -> Config {
    let mut text = format!(
        "[server]\nhostname = \"relay.test\"\ndata_dir = {:?}\n[api]\nlisten = [\"127.0.0.1:0\"]\n",
        dir.display().to_string()
    );
    if let Some(h) = token_hash {
        text.push_str(&format!("token_hash = {h:?}\n"));
    }
    Config::parse(&text, &dir.join("config.toml")).expect("test config is valid")
}

fn token_hash() -> String {
    trackrelay::submission::auth::hash_password(TOKEN).unwrap()
}

async fn start(dir: tempfile::TempDir, store: Store, token_hash: Option<&str>) -> Server {
    let metrics = Arc::new(Metrics::default());
    let api = Api::new(&config(dir.path(), token_hash), store, metrics.clone()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(serve(Arc::new(api), vec![listener], rx));
    Server {
        addr,
        metrics,
        stop,
        task,
        _dir: dir,
    }
}

fn open_store(dir: &Path) -> Store {
    let options = StoreOptions {
        webhooks: vec![Subscription {
            url: "https://hooks.example.test/mail".into(),
            events: vec!["email.bounced".into()],
            domains: vec![],
        }],
        ..StoreOptions::default()
    };
    Store::open(&dir.join("trackrelay.db"), options).unwrap()
}

// ---------------------------------------------------------------------------
// Seeding, through the same write paths the relay uses.
// ---------------------------------------------------------------------------

struct Seeded {
    a: String,
    b: String,
    c: String,
}

fn email(id: &str, domain: &str, created_at: i64, rcpts: &[&str]) -> NewEmail {
    NewEmail {
        id: id.to_string(),
        created_at,
        domain: domain.to_string(),
        mail_from: format!("news@{domain}"),
        header_from: Some(format!("News <news@{domain}>")),
        to_header: Some(rcpts.join(", ")),
        subject: Some(format!("Hello from {domain}")),
        message_id: Some(format!("<{id}@{domain}>")),
        tags: vec!["launch".into()],
        auth_user: Some("app".into()),
        client_ip: Some("127.0.0.1".into()),
        smtputf8: false,
        received: b"Received: test\r\n".to_vec(),
        body: b"Subject: hi\r\n\r\nhello\r\n".to_vec().into(),
        recipients: rcpts.iter().map(|r| r.to_string()).collect(),
    }
}

fn attempt(email_id: &str, idx: u32, at: i64, outcome: Outcome, response: &str) -> Attempt {
    Attempt {
        email_id: email_id.to_string(),
        idx,
        lease_id: String::new(),
        at,
        outcome,
        response: response.to_string(),
        tls: Some("TLSv1.3".into()),
        mx: Some("mx.example.net".into()),
        tls_policy: None,
    }
}

fn track(email_id: &str, idx: u32, kind: EventType, at: i64, machine: Option<&str>) -> NewEvent {
    let mut ev = NewEvent::new(email_id, kind, at);
    ev.rcpt_idx = Some(idx);
    ev.ip = Some("198.51.100.7".into());
    ev.user_agent = Some("Mozilla/5.0 (test)".into());
    ev.machine = Some(machine.is_some());
    ev.machine_reason = machine.map(str::to_string);
    if kind == EventType::Clicked {
        ev.link = Some("https://example.com/?a=1&b=2".into());
    }
    ev
}

/// example.com, email A at T0: a0 delivered, opened twice and clicked (a
/// person); a1 delivered, opened and clicked by machines; a2 bounced; a3
/// delivered and never opened.
/// example.org, email B at T0+1h: b0 delivered and opened; b1 deferred.
/// example.net, email C at T0+2h: c0 still queued.
async fn seed(store: &Store) -> Seeded {
    let ids = Seeded {
        a: uuid::Uuid::now_v7().to_string(),
        b: uuid::Uuid::now_v7().to_string(),
        c: uuid::Uuid::now_v7().to_string(),
    };
    let rcpts_a = ["a0@x.test", "a1@x.test", "a2@x.test", "a3@x.test"];
    for e in [
        email(&ids.a, "example.com", T0, &rcpts_a),
        email(
            &ids.b,
            "example.org",
            T0 + 60 * MIN,
            &["b0@y.test", "b1@y.test"],
        ),
    ] {
        store.accept(e).await.unwrap();
    }
    let claimed = store.claim_due(store::now_ms(), 60_000, 100).await.unwrap();
    assert_eq!(claimed.len(), 6);
    let (a, b) = (ids.a.clone(), ids.b.clone());
    let ok = "250 2.0.0 Ok";
    let mut attempts = vec![
        attempt(&a, 0, T0 + MIN, Outcome::Delivered, ok),
        attempt(&a, 1, T0 + MIN, Outcome::Delivered, ok),
        attempt(&a, 2, T0 + MIN, Outcome::Bounced, "550 5.1.1 No such user"),
        attempt(&a, 3, T0 + MIN, Outcome::Delivered, ok),
        attempt(&b, 0, T0 + 61 * MIN, Outcome::Delivered, ok),
        attempt(
            &b,
            1,
            T0 + 61 * MIN,
            Outcome::Deferred {
                next_attempt_at: T0 + 66 * MIN,
            },
            "451 4.7.1 Try again later",
        ),
    ];
    // Recorded by the owner of the lease, as the runner does.
    for at in &mut attempts {
        at.lease_id = claimed[0].lease_id.clone();
    }
    store.record(attempts, &Default::default()).await.unwrap();
    let events = vec![
        track(&a, 0, EventType::Opened, T0 + 30 * MIN, None),
        track(&a, 0, EventType::Opened, T0 + 90 * MIN, None),
        track(&a, 0, EventType::Clicked, T0 + 31 * MIN, None),
        track(&a, 1, EventType::Opened, T0 + 2 * MIN, Some("apple_mpp")),
        track(
            &a,
            1,
            EventType::Clicked,
            T0 + MIN + 2_000,
            Some("too_soon_after_delivery"),
        ),
        track(&b, 0, EventType::Opened, T0 + 70 * MIN, None),
    ];
    store
        .write(Durability::Normal, move |tx| {
            for ev in &events {
                store::sqlite::events::insert(tx, ev)?;
            }
            Ok(())
        })
        .await
        .unwrap();
    let c = email(&ids.c, "example.net", T0 + 120 * MIN, &["c0@z.test"]);
    store.accept(c).await.unwrap();
    ids
}

async fn seeded_server() -> (Server, Seeded) {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let ids = seed(&store).await;
    let hash = token_hash();
    (start(dir, store, Some(&hash)).await, ids)
}

// ---------------------------------------------------------------------------
// A real HTTP/1.1 client.
// ---------------------------------------------------------------------------

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error field: {}", self.body))
            .to_string()
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(addr: SocketAddr) -> Sender {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn send(sender: &mut Sender, method: Method, path: &str, token: Option<&str>) -> Answer {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "127.0.0.1");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    sender.ready().await.expect("the connection is open");
    let resp = tokio::time::timeout(
        Duration::from_secs(20),
        sender.send_request(req.body(Empty::new()).unwrap()),
    )
    .await
    .expect("the API answers")
    .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

async fn request(server: &Server, method: Method, path: &str, token: Option<&str>) -> Answer {
    let mut sender = connect(server.addr).await;
    send(&mut sender, method, path, token).await
}

async fn get(server: &Server, path: &str) -> Answer {
    request(server, Method::GET, path, Some(TOKEN)).await
}

async fn get_ok(server: &Server, path: &str) -> Value {
    let a = get(server, path).await;
    assert_eq!(a.status, StatusCode::OK, "{path}: {}", a.body);
    assert_eq!(a.headers["content-type"], "application/json");
    a.json()
}

// ---------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_required_and_checked() {
    let (server, ids) = seeded_server().await;
    for path in [
        "/v1/events".to_string(),
        "/v1/stats".into(),
        format!("/v1/emails/{}", ids.a),
        "/metrics".into(),
        "/no/such/path".into(),
    ] {
        let none = request(&server, Method::GET, &path, None).await;
        assert_eq!(none.status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(
            none.headers["www-authenticate"],
            "Bearer realm=\"trackrelay\""
        );
        assert!(none.error().contains("Bearer"), "{}", none.body);

        let wrong = request(&server, Method::GET, &path, Some("not-the-token")).await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "{path}");
        assert!(wrong.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token"));
        assert!(!wrong.body.contains(TOKEN));
    }
    // Another scheme is no token.
    let mut sender = connect(server.addr).await;
    let basic = Request::builder()
        .uri("/v1/events")
        .header("host", "x")
        .header("authorization", "Basic YWRtaW46YWRtaW4=")
        .body(Empty::new())
        .unwrap();
    let resp = sender.send_request(basic).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Bearer realm=\"trackrelay\""
    );

    // The right token, twice: the second is answered from the cache.
    assert_eq!(get(&server, "/v1/events").await.status, StatusCode::OK);
    let started = std::time::Instant::now();
    assert_eq!(get(&server, "/v1/events").await.status, StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_configured_token_everything_but_healthz_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let server = start(dir, store, None).await;
    let a = request(&server, Method::GET, "/v1/stats", Some(TOKEN)).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(a.error().contains("api.token_hash"), "{}", a.body);
    assert!(a.headers.contains_key("www-authenticate"));
    let h = request(&server, Method::GET, "/healthz", None).await;
    assert_eq!(h.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_with_its_recipients() {
    let (server, ids) = seeded_server().await;
    let e = get_ok(&server, &format!("/v1/emails/{}", ids.a)).await;
    assert_eq!(e["id"], ids.a.as_str());
    assert_eq!(e["domain"], "example.com");
    assert_eq!(e["created_at"], "2026-01-01T00:00:00.000Z");
    assert_eq!(e["mail_from"], "news@example.com");
    assert_eq!(e["from"], "News <news@example.com>");
    assert_eq!(e["subject"], "Hello from example.com");
    assert_eq!(e["tags"], serde_json::json!(["launch"]));
    assert_eq!(e["body_pruned"], false);
    let r = e["recipients"].as_array().unwrap();
    assert_eq!(r.len(), 4);
    assert_eq!(r[0]["index"], 0);
    assert_eq!(r[0]["recipient"], "a0@x.test");
    assert_eq!(r[0]["status"], "delivered");
    assert_eq!(r[0]["attempts"], 1);
    assert_eq!(r[0]["tls"], "TLSv1.3");
    assert_eq!(r[0]["last_response"], "250 2.0.0 Ok");
    assert_eq!(r[0]["delivered_at"], "2026-01-01T00:01:00.000Z");
    assert_eq!(
        r[0]["opened_at"], "2026-01-01T00:30:00.000Z",
        "the first open"
    );
    assert_eq!(r[0]["clicked_at"], "2026-01-01T00:31:00.000Z");
    assert_eq!(r[0]["next_attempt_at"], Value::Null);
    assert_eq!(r[2]["status"], "bounced");
    assert_eq!(r[2]["bounced_at"], "2026-01-01T00:01:00.000Z");
    assert_eq!(r[2]["last_response"], "550 5.1.1 No such user");
    assert_eq!(r[3]["opened_at"], Value::Null);

    let b = get_ok(&server, &format!("/v1/emails/{}", ids.b)).await;
    assert_eq!(b["recipients"][1]["status"], "deferred");
    assert_eq!(
        b["recipients"][1]["next_attempt_at"],
        "2026-01-01T01:06:00.000Z"
    );
    let c = get_ok(&server, &format!("/v1/emails/{}", ids.c.to_uppercase())).await;
    assert_eq!(c["id"], ids.c.as_str(), "ids are accepted in any case");
    assert_eq!(c["recipients"][0]["status"], "queued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_malformed_email_ids() {
    let (server, _) = seeded_server().await;
    let unknown = uuid::Uuid::now_v7();
    for path in [
        format!("/v1/emails/{unknown}"),
        format!("/v1/emails/{unknown}/events"),
    ] {
        let a = get(&server, &path).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{path}");
        assert!(a.error().contains(&unknown.to_string()), "{}", a.body);
    }
    let a = get(&server, "/v1/emails/not-a-uuid").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.error().contains("not-a-uuid"), "{}", a.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emails_events() {
    let (server, ids) = seeded_server().await;
    let v = get_ok(&server, &format!("/v1/emails/{}/events", ids.a)).await;
    let data = v["data"].as_array().unwrap();
    // 4 sent, 4 outcomes, 3 opens, 2 clicks.
    assert_eq!(data.len(), 13, "{v}");
    assert_eq!(v["next_after"], Value::Null);
    assert!(data.iter().all(|e| e["email_id"] == ids.a.as_str()));
    let click = data
        .iter()
        .find(|e| e["type"] == "email.clicked" && e["machine"] == true)
        .unwrap();
    for field in [
        "id",
        "email_id",
        "type",
        "recipient",
        "at",
        "ip",
        "user_agent",
        "referer",
        "link",
        "machine",
        "machine_reason",
    ] {
        assert!(click.get(field).is_some(), "{field} missing in {click}");
    }
    assert_eq!(click["recipient"], "a1@x.test");
    assert_eq!(click["link"], "https://example.com/?a=1&b=2");
    assert_eq!(click["machine_reason"], "too_soon_after_delivery");
    assert_eq!(click["at"], "2026-01-01T00:01:02.000Z");
    let bounce = data.iter().find(|e| e["type"] == "email.bounced").unwrap();
    assert_eq!(bounce["detail"]["response"], "550 5.1.1 No such user");

    let opens = get_ok(&server, &format!("/v1/emails/{}/events?type=opened", ids.a)).await;
    assert_eq!(opens["data"].as_array().unwrap().len(), 3);

    // An email with no events in the window is known, so 200 and empty.
    let none = get_ok(
        &server,
        &format!("/v1/emails/{}/events?since=2030-01-01", ids.a),
    )
    .await;
    assert_eq!(none["data"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_paged_with_after() {
    let (server, _) = seeded_server().await;
    let all = get_ok(&server, "/v1/events?limit=1000").await;
    let all: Vec<i64> = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    // 7 sent, 6 outcomes, 4 opens, 2 clicks.
    assert_eq!(all.len(), 19);

    let mut seen = Vec::new();
    let mut after: Option<i64> = None;
    let mut pages = 0;
    loop {
        let path = match after {
            Some(a) => format!("/v1/events?limit=5&after={a}"),
            None => "/v1/events?limit=5".to_string(),
        };
        let page = get_ok(&server, &path).await;
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= 5);
        seen.extend(data.iter().map(|e| e["id"].as_i64().unwrap()));
        pages += 1;
        match page["next_after"].as_i64() {
            Some(n) => {
                assert_eq!(Some(n), seen.last().copied());
                after = Some(n);
            }
            None => break,
        }
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(pages, 4);
    assert_eq!(seen, all, "every event once, in id order");

    // Filters.
    let opens = get_ok(&server, "/v1/events?type=email.opened").await;
    assert_eq!(opens["data"].as_array().unwrap().len(), 4);
    let window = get_ok(
        &server,
        "/v1/events?type=opened&since=2026-01-01T00:30:00Z&until=2026-01-01T01:30:00Z",
    )
    .await;
    let ats: Vec<&str> = window["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["at"].as_str().unwrap())
        .collect();
    assert_eq!(
        ats,
        ["2026-01-01T00:30:00.000Z", "2026-01-01T01:10:00.000Z"],
        "since is inclusive, until exclusive"
    );
    // Empty parameters are not given.
    let empty = get_ok(&server, "/v1/events?type=&since=&until=&limit=&after=").await;
    assert_eq!(empty["data"].as_array().unwrap().len(), 19);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_are_400_and_named() {
    let (server, _) = seeded_server().await;
    for (path, name) in [
        ("/v1/events?since=last-tuesday", "since"),
        ("/v1/events?until=2026-13-45", "until"),
        ("/v1/events?limit=0", "limit"),
        ("/v1/events?limit=1001", "limit"),
        ("/v1/events?after=abc", "after"),
        ("/v1/events?type=email.nope", "type"),
        ("/v1/events?sinse=1h", "sinse"),
        ("/v1/stats?since=soon", "since"),
        ("/v1/stats?domain=a&domain=b", "domain"),
    ] {
        let a = get(&server, path).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{path}: {}", a.body);
        assert!(a.error().contains(name), "{path}: {}", a.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_unique_recipients_humans_and_machines_apart() {
    let (server, _) = seeded_server().await;
    let s = get_ok(&server, "/v1/stats?domain=example.com").await;
    let expect = serde_json::json!({
        "sent": 4, "delivered": 3, "delayed": 0, "bounced": 1, "failed": 0,
        "opened": 2, "opened_human": 1, "clicked": 2, "clicked_human": 1,
        "open_rate": 0.6667, "click_rate": 0.6667,
        "open_rate_human": 0.3333, "click_rate_human": 0.3333,
        "complained": 0, "complaint_rate": 0.0, "unsubscribed": 0, "suppressed": 0,
        "domain": "example.com", "since": null, "until": null,
    });
    assert_eq!(s, expect);

    let all = get_ok(&server, "/v1/stats").await;
    for (k, v) in [
        ("sent", 7.0),
        ("delivered", 4.0),
        ("delayed", 1.0),
        ("bounced", 1.0),
        ("opened", 3.0),
        ("opened_human", 2.0),
        ("clicked", 2.0),
        ("clicked_human", 1.0),
        ("open_rate", 0.75),
        ("click_rate", 0.5),
        ("open_rate_human", 0.5),
        ("click_rate_human", 0.25),
    ] {
        assert_eq!(all[k].as_f64(), Some(v), "{k} in {all}");
    }

    // Emails accepted in [since, until): only B.
    let b = get_ok(
        &server,
        "/v1/stats?since=2026-01-01T00:30:00Z&until=2026-01-01T01:30:00Z",
    )
    .await;
    assert_eq!(b["sent"], 2);
    assert_eq!(b["delivered"], 1);
    assert_eq!(b["delayed"], 1);
    assert_eq!(b["opened"], 1);
    assert_eq!(b["open_rate"], 1.0);
    assert_eq!(b["since"], "2026-01-01T00:30:00.000Z");
    assert_eq!(b["until"], "2026-01-01T01:30:00.000Z");

    let nothing = get_ok(&server, "/v1/stats?domain=nowhere.test").await;
    assert_eq!(nothing["sent"], 0);
    assert_eq!(nothing["open_rate"], 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_have_counters_histograms_and_store_gauges() {
    let (server, _) = seeded_server().await;
    server.metrics.opens.add(3);
    server.metrics.event_queue_overflow.inc();
    get_ok(&server, "/v1/stats").await;
    let a = get(&server, "/metrics").await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let line = |name: &str| -> f64 {
        a.body
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("{name} missing:\n{}", a.body))
            .parse()
            .unwrap()
    };
    assert_eq!(line("trackrelay_opens_total"), 3.0);
    assert_eq!(line("trackrelay_event_queue_overflow_total"), 1.0);
    assert_eq!(line("trackrelay_delivered_total"), 0.0);
    // b1 deferred and c0 queued.
    assert_eq!(line("trackrelay_queue_depth"), 2.0);
    // The bounce's webhook is waiting in the outbox.
    assert_eq!(line("trackrelay_webhook_outbox_pending"), 1.0);
    assert_eq!(line("trackrelay_webhook_outbox_failed"), 0.0);
    assert_eq!(line("trackrelay_store_up"), 1.0);
    assert!(a.body.contains("# TYPE trackrelay_queue_depth gauge"));
    // The earlier requests' latencies.
    assert!(line("trackrelay_api_request_seconds_count") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_needs_no_token_and_tells_when_the_store_is_gone() {
    let (server, _) = seeded_server().await;
    let a = request(&server, Method::GET, "/healthz", None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body, "ok\n");
    let head = request(&server, Method::HEAD, "/healthz", None).await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.body, "");

    // A store whose database has gone: no connection can be opened.
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.path().join(format!("trackrelay.db{suffix}")));
    }
    let hash = token_hash();
    let broken = start(dir, store, Some(&hash)).await;
    let a = request(&broken, Method::GET, "/healthz", None).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.body);
    // /metrics still serves the counters, and says the store is down.
    let m = get(&broken, "/metrics").await;
    assert_eq!(m.status, StatusCode::OK);
    assert!(m.body.contains("trackrelay_store_up 0"), "{}", m.body);
    assert!(!m.body.contains("trackrelay_queue_depth"));
    // The others say what failed.
    let e = get(&broken, "/v1/events").await;
    assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(e.error().contains("store"), "{}", e.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_methods_and_paths() {
    let (server, _) = seeded_server().await;
    for method in [Method::POST, Method::DELETE, Method::PUT] {
        let a = request(&server, method.clone(), "/v1/events", Some(TOKEN)).await;
        assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(a.headers["allow"], "GET, HEAD");
        assert!(!a.error().is_empty());
    }
    let a = request(&server, Method::POST, "/healthz", None).await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    let a = get(&server, "/v1/nothing").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(a.error().contains("/v1/nothing"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_garbage_and_graceful_shutdown() {
    let (server, ids) = seeded_server().await;
    // Several requests on one connection.
    let mut sender = connect(server.addr).await;
    for path in ["/v1/stats", "/v1/events?limit=1", "/healthz"] {
        let a = send(&mut sender, Method::GET, path, Some(TOKEN)).await;
        assert_eq!(a.status, StatusCode::OK, "{path}");
    }
    let a = send(
        &mut sender,
        Method::GET,
        &format!("/v1/emails/{}", ids.a),
        Some(TOKEN),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);

    // Garbage gets a 400 from the HTTP layer, and the server carries on.
    let mut raw = TcpStream::connect(server.addr).await.unwrap();
    raw.write_all(b"\x16\x03\x01 this is not HTTP\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut buf)).await;
    assert!(
        buf.is_empty() || buf.starts_with(b"HTTP/1.1 400"),
        "{buf:?}"
    );
    // Oversized headers too.
    let mut raw = TcpStream::connect(server.addr).await.unwrap();
    let huge = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let _ = raw.write_all(huge.as_bytes()).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut buf)).await;
    assert!(!buf.starts_with(b"HTTP/1.1 200"));
    assert_eq!(
        request(&server, Method::GET, "/healthz", None).await.status,
        StatusCode::OK
    );

    // Shutdown with an idle keep-alive connection open: serve returns.
    assert!(!sender.is_closed());
    server.stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server.task)
        .await
        .expect("serve returns after shutdown")
        .unwrap();
    assert!(
        TcpStream::connect(server.addr).await.is_err(),
        "no longer accepting"
    );
}
