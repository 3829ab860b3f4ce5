//! Domains that keep verifying themselves, over the real binary: `serve`
//! re-checks example.com's records through a stub DNS server
//! (tests/support/dns.rs) every 200 ms; the statuses, their history, the
//! `domain.updated` webhooks, `/v1/domains`, the metrics gauge, dns-check,
//! and the tracking subdomain switch are read from outside.

mod harness;
mod support;

use harness::*;
use serde_json::Value;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;
use support::dns::DnsStub;
use support::mx::{MxConfig, TestMx};
use support::webhook::Receiver;
use trackrelay::outbound::{generate_key, DkimAlgorithm, DkimKey};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// The harness's `server.hostname`.
const RELAY: &str = "relay.test";
const WAIT: Duration = Duration::from_secs(30);

struct Setup {
    relay: Relay,
    dns: DnsStub,
    key: DkimKey,
    hooks: Receiver,
    mx: TestMx,
    _keys: tempfile::TempDir,
}

/// example.com with a DKIM key, click tracking on `tracking` (TOML lines
/// for its subdomain keys), SPF at the domain, the relay's address, and
/// what `publish` adds, published; a webhook endpoint for domain.updated.
async fn setup(tracking: &str, publish: impl FnOnce(&DnsStub, &DkimKey)) -> Setup {
    let keys = tempfile::tempdir().unwrap();
    let key = new_key(keys.path());
    let dns = DnsStub::start().await;
    dns.a(RELAY, Ipv4Addr::LOCALHOST)
        .txt("example.com", "v=spf1 ip4:127.0.0.1 -all");
    publish(&dns, &key);
    let hooks = Receiver::start(SECRET).await;
    let mx = TestMx::start(MxConfig::default()).await;
    let relay = Relay::start(Options {
        submission: "trusted_networks = [\"127.0.0.0/8\"]".into(),
        domain: format!(
            "click_tracking = true\n{tracking}\ndkim = [{{ selector = \"s1\", private_key = \"{}\" }}]",
            keys.path().join("s1.pem").display()
        ),
        delivery: format!(
            "resolver = \"{}\"\nroutes = {{ \"example.net\" = \"{}\" }}",
            dns.resolver(),
            mx.addr()
        ),
        extra: format!(
            "[domain_checks]\ninterval = \"200ms\"\nverified_interval = \"200ms\"\n\n\
             [[webhooks]]\nurl = \"{}\"\nsecret = \"{SECRET}\"\nevents = [\"domain.updated\"]\nretry = [\"1s\"]",
            hooks.url()
        ),
        api_token: true,
        ..Options::default()
    });
    Setup {
        relay,
        dns,
        key,
        hooks,
        mx,
        _keys: keys,
    }
}

fn new_key(dir: &Path) -> DkimKey {
    generate_key(
        "example.com",
        "s1",
        DkimAlgorithm::Ed25519,
        &dir.join("s1.pem"),
    )
    .unwrap()
}

fn publish_dkim(dns: &DnsStub, key: &DkimKey) {
    dns.txt(&key.dns_name(), &key.dns_record());
}

fn get(relay: &Relay, path: &str) -> (u16, Value) {
    let auth = format!("Bearer {API_TOKEN}");
    let (status, _, body) = http(relay.api, "GET", path, &[("Authorization", &auth)]);
    let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status, v)
}

fn domain(relay: &Relay) -> Value {
    let (status, v) = get(relay, "/v1/domains/example.com");
    assert_eq!(status, 200, "{v}");
    v
}

fn wait_status(relay: &Relay, status: &str) -> Value {
    let mut last = Value::Null;
    let deadline = std::time::Instant::now() + WAIT;
    while std::time::Instant::now() < deadline {
        last = domain(relay);
        if last["status"] == status {
            return last;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("example.com not {status} within {WAIT:?}: {last:#}");
}

/// The `to` of each history entry, oldest first.
fn history(v: &Value) -> Vec<String> {
    let mut h: Vec<String> = v["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["to"].as_str().unwrap().to_string())
        .collect();
    h.reverse();
    h
}

fn domain_webhooks(hooks: &Receiver) -> Vec<Value> {
    hooks
        .accepted()
        .into_iter()
        .filter(|d| d.signature_ok)
        .map(|d| d.body)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_then_verified_with_webhook_api_metrics_and_dns_check() {
    let s = setup("tracking_subdomain = \"links\"", |dns, _| {
        dns.cname("links.example.com", RELAY);
    })
    .await;
    let pending = wait_status(&s.relay, "pending");
    assert!(
        pending["status_reason"]
            .as_str()
            .unwrap()
            .contains("dkim s1._domainkey.example.com pending"),
        "{pending}"
    );
    assert_eq!(history(&pending), ["pending"]);
    assert_eq!(pending["history"][0]["from"], "not_started");

    publish_dkim(&s.dns, &s.key);
    let v = wait_status(&s.relay, "verified");
    assert_eq!(history(&v), ["pending", "verified"]);
    assert_eq!(v["history"][0]["from"], "pending");
    assert_eq!(v["status_reason"], "every required record is verified");
    let records = v["records"].as_array().unwrap();
    let dkim = records.iter().find(|r| r["record"] == "dkim").unwrap();
    assert_eq!(dkim["name"], "s1._domainkey.example.com");
    assert_eq!(dkim["expected"], s.key.dns_record());
    assert_eq!(dkim["found"][0], s.key.dns_record());
    assert_eq!(dkim["status"], "verified");
    assert_eq!(v["tracking"]["in_use"], "links.example.com");
    assert_eq!(v["tracking"]["configured"], "links.example.com");
    for field in ["status_since", "checked_at", "next_check_at"] {
        assert!(v[field].is_string(), "{field}: {v}");
    }

    // One webhook, for the change that says something: pending → verified
    // (the first check's not_started → pending is history only).
    wait_for("the domain.updated webhook", WAIT, || {
        !domain_webhooks(&s.hooks).is_empty()
    });
    let hook = &domain_webhooks(&s.hooks)[0];
    assert_eq!(hook["type"], "domain.updated");
    assert!(hook["created_at"].is_string());
    assert_eq!(hook["data"]["name"], "example.com");
    assert_eq!(hook["data"]["status"], "verified");
    assert_eq!(hook["data"]["previous_status"], "pending");
    assert_eq!(
        hook["data"]["records"].as_array().unwrap().len(),
        records.len()
    );
    assert_eq!(
        domain_webhooks(&s.hooks).len(),
        1,
        "{:?}",
        domain_webhooks(&s.hooks)
    );

    // The event is listed like any other, about no email.
    let (status, events) = get(&s.relay, "/v1/events?type=domain.updated");
    assert_eq!(status, 200, "{events}");
    let events = events["data"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["email_id"], "");
    assert_eq!(events[0]["detail"]["status"], "verified");

    // The list: every configured domain, example.org never verifiable
    // (no DKIM entry): not_started.
    let (status, list) = get(&s.relay, "/v1/domains");
    assert_eq!(status, 200);
    let data = list["data"].as_array().unwrap();
    let names: Vec<&str> = data.iter().map(|d| d["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["example.com", "example.org"]);
    assert_eq!(data[0]["status"], "verified");
    assert!(
        data[0].get("history").is_none(),
        "history only for one domain"
    );
    assert_eq!(data[1]["status"], "not_started");
    assert_eq!(get(&s.relay, "/v1/domains/example.net").0, 404);
    let (status, _, _) = http(s.relay.api, "GET", "/v1/domains", &[]);
    assert_eq!(status, 401, "behind the token like every other GET");

    let (_, _, body) = http(
        s.relay.api,
        "GET",
        "/metrics",
        &[("Authorization", &format!("Bearer {API_TOKEN}"))],
    );
    let metrics = String::from_utf8(body).unwrap();
    for line in [
        "trackrelay_domain_status{domain=\"example.com\",status=\"verified\"} 1",
        "trackrelay_domain_status{domain=\"example.com\",status=\"pending\"} 0",
        "trackrelay_domain_status{domain=\"example.org\",status=\"not_started\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }

    // dns-check reads the same DNS and says the same status on every line.
    let out = s
        .relay
        .cli(&["dns-check", "--json", "--domain", "example.com"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{text}");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!lines.is_empty());
    for l in &lines {
        assert_eq!(l["domain_status"], "verified", "{l}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_record_is_a_temporary_failure_then_failed_after_72_hours() {
    let mut s = setup("", publish_dkim).await;
    wait_status(&s.relay, "verified");

    // The DKIM record disappears, then comes back.
    s.dns.remove(&s.key.dns_name());
    let v = wait_status(&s.relay, "temporary_failure");
    assert!(
        v["status_reason"]
            .as_str()
            .unwrap()
            .contains("no longer verified: dkim"),
        "{v}"
    );
    publish_dkim(&s.dns, &s.key);
    wait_status(&s.relay, "verified");

    // Gone again, and still gone 72 hours later (the checker's clock moved
    // on by a restart with the test clock skew).
    s.dns.remove(&s.key.dns_name());
    wait_status(&s.relay, "temporary_failure");
    assert!(s.relay.stop().success());
    s.relay
        .spawn_with(&[], &[("TRACKRELAY_TEST_CLOCK_SKEW", "259260")])
        .unwrap();
    let v = wait_status(&s.relay, "failed");
    assert!(
        v["status_reason"]
            .as_str()
            .unwrap()
            .contains("missing for 72 hours"),
        "{v}"
    );
    assert_eq!(
        history(&v),
        [
            "verified",
            "temporary_failure",
            "verified",
            "temporary_failure",
            "failed"
        ]
    );
    // Every change after the first check went out as a webhook, in order.
    wait_for("five webhooks", WAIT, || {
        domain_webhooks(&s.hooks).len() >= 5
    });
    let seen: Vec<(String, String)> = domain_webhooks(&s.hooks)
        .iter()
        .map(|h| {
            (
                h["data"]["previous_status"].as_str().unwrap().to_string(),
                h["data"]["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let pairs = |a: &str, b: &str| (a.to_string(), b.to_string());
    for want in [
        pairs("not_started", "verified"),
        pairs("verified", "temporary_failure"),
        pairs("temporary_failure", "verified"),
        pairs("temporary_failure", "failed"),
    ] {
        assert!(seen.contains(&want), "{want:?} in {seen:?}");
    }

    // Published again: verified, whatever the clock says.
    publish_dkim(&s.dns, &s.key);
    wait_status(&s.relay, "verified");
}

fn html(subject: &str) -> Vec<u8> {
    format!(
        "From: News <news@example.com>\r\nTo: x@example.net\r\nSubject: {subject}\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n\
         <html><body><a href=\"https://example.org/landing\">go</a></body></html>\r\n"
    )
    .into_bytes()
}

/// The click link's path in the copy the MX received for `subject`, and
/// the host it points at.
fn click_link(mx: &TestMx, subject: &str) -> (String, String) {
    let copy = mx
        .received()
        .into_iter()
        .find(|r| String::from_utf8_lossy(&r.data).contains(subject))
        .expect("the copy");
    let text = String::from_utf8_lossy(&copy.data).to_string();
    let start = text.find("http://").expect("a tracked link") + "http://".len();
    let end = start + text[start..].find('"').unwrap();
    let url = &text[start..end];
    let (host, path) = url.split_at(url.find('/').unwrap());
    assert!(path.starts_with("/v1/track/click/"), "{url}");
    (host.to_string(), path.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_tracking_subdomain_is_used_only_once_verified() {
    let s = setup(
        "tracking_subdomain = \"t2\"\nprevious_tracking_subdomains = [\"links\"]",
        |dns, key| {
            publish_dkim(dns, key);
            dns.cname("links.example.com", RELAY);
        },
    )
    .await;
    // Sending verified, the new tracking host not yet.
    let v = wait_status(&s.relay, "partially_verified");
    assert_eq!(v["tracking"]["in_use"], "links.example.com");
    assert_eq!(v["tracking"]["configured"], "t2.example.com");
    assert_eq!(v["tracking"]["previous"][0], "links.example.com");
    let why = v["tracking"]["reason"].as_str().unwrap();
    assert!(why.contains("t2.example.com is not verified yet"), "{why}");

    submit(
        &s.relay,
        "news@example.com",
        &["a@example.net"],
        &html("before"),
    );
    assert!(s.mx.wait_for(1, WAIT).await);
    let (host, old_click) = click_link(&s.mx, "before");
    assert_eq!(host, "links.example.com");

    s.dns.cname("t2.example.com", RELAY);
    let v = wait_status(&s.relay, "verified");
    assert_eq!(v["tracking"]["in_use"], "t2.example.com");
    assert!(
        v["tracking"]["reason"]
            .as_str()
            .unwrap()
            .contains("verified to point at this relay"),
        "{v}"
    );
    submit(
        &s.relay,
        "news@example.com",
        &["b@example.net"],
        &html("after"),
    );
    assert!(s.mx.wait_for(2, WAIT).await);
    let (host, new_click) = click_link(&s.mx, "after");
    assert_eq!(host, "t2.example.com");

    // Both hosts are answered.
    for (host, path) in [
        ("links.example.com", &old_click),
        ("t2.example.com", &new_click),
    ] {
        let (status, _, _) = http(s.relay.tracking, "GET", path, &[("Host", host)]);
        assert_eq!(status, 302, "{host}{path}");
    }
}
