//! Each delivery attempt's duration, through the real binary: stored in the
//! event's detail and shown on the dashboard's email page. Only lower bounds
//! are asserted (the MX's known delay), never how fast anything was.

mod harness;
mod support;

use harness::*;
use std::net::Ipv4Addr;
use std::time::Duration;
use support::dns::DnsStub;
use support::mx::{MxConfig, Script, TestMx};
use support::webhook::Receiver;

const RCPT: &str = "slow@example.net";
const LATER: &str = "later@example.net";
const GONE: &str = "gone@example.net";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// The harness's `server.hostname`, which tracking CNAMEs point at.
const RELAY: &str = "relay.test";
/// How long the MX sits on the DATA reply.
const DATA_DELAY: Duration = Duration::from_millis(1200);

fn between(s: &str, start: &str, end: &str) -> String {
    let i = s.find(start).unwrap_or_else(|| panic!("no {start} in {s}")) + start.len();
    s[i..i + s[i..].find(end).unwrap()].to_string()
}

/// `name=value` of the first `Set-Cookie` named `name`.
fn cookie(headers: &[(String, String)], name: &str) -> String {
    headers
        .iter()
        .filter(|(k, _)| k == "set-cookie")
        .map(|(_, v)| v.split(';').next().unwrap().to_string())
        .find(|v| v.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} cookie in {headers:?}"))
}

/// A raw form POST (the harness's `http` sends no body): status and headers.
fn post_form(
    addr: std::net::SocketAddr,
    path: &str,
    cookie: &str,
    body: &str,
) -> (u16, Vec<(String, String)>) {
    let host = addr.to_string();
    let headers = [
        ("Host", host.as_str()),
        ("Cookie", cookie),
        ("Content-Type", "application/x-www-form-urlencoded"),
    ];
    let (status, headers, _) =
        harness::http_with_body(addr, "POST", path, &headers, body.as_bytes());
    (status, headers)
}

/// Logs in to the dashboard over raw HTTP; returns the session cookie.
fn login(relay: &Relay) -> String {
    let host = relay.api.to_string();
    let (status, headers, body) = http(relay.api, "GET", "/login", &[("Host", &host)]);
    assert_eq!(status, 200);
    let csrf = between(
        &String::from_utf8(body).unwrap(),
        "name=\"csrf\" value=\"",
        "\"",
    );
    let (status, headers) = post_form(
        relay.api,
        "/login",
        &cookie(&headers, "trackrelay_login"),
        &format!("csrf={csrf}&token={API_TOKEN}"),
    );
    assert_eq!(status, 303, "the admin token logs in");
    cookie(&headers, "trackrelay_session")
}

/// The timeline entry of `class` (e.g. "ev-delivered") on an email page,
/// and the duration it shows, in seconds.
fn shown_duration(page: &str, class: &str) -> (String, f64) {
    let entry = between(page, &format!("<li class=\"ev {class}\">"), "</li>");
    let shown = between(&entry, "<dt>Duration</dt><dd>", "</dd>");
    let secs = seconds(&shown)
        .unwrap_or_else(|| panic!("{shown:?} is not a duration in seconds or minutes"));
    (shown, secs)
}

/// "1.2 s" or, on a machine slow enough to take a minute, "2 min 5 s".
fn seconds(shown: &str) -> Option<f64> {
    let rest = shown.strip_suffix(" s")?;
    match rest.split_once(" min ") {
        Some((m, s)) => Some(m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?),
        None => rest.parse().ok(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_attempts_record_and_show_their_duration() {
    // Every transaction waits DATA_DELAY before its final reply: delivered,
    // deferred (451) or refused (550) at the end of DATA.
    let mx = TestMx::start(
        MxConfig {
            data_delay: Some(DATA_DELAY),
            ..MxConfig::default()
        }
        .script(LATER, Script::always("451 4.3.0 try later").at_data())
        .script(GONE, Script::always("550 5.1.1 no such user").at_data()),
    )
    .await;
    let hooks = Receiver::start(SECRET).await;
    let relay = Relay::start(Options {
        submission: "trusted_networks = [\"127.0.0.0/8\"]".into(),
        delivery: format!(
            "routes = {{ \"example.net\" = \"{}\" }}\nretry = [\"1h\"]",
            mx.addr()
        ),
        api_token: true,
        extra: format!(
            "[[webhooks]]\nurl = \"{}\"\nsecret = \"{SECRET}\"\nevents = [\"*\"]",
            hooks.url()
        ),
        ..Options::default()
    });
    let msg = message("news@example.com", RCPT, "slow", "hello");
    let id = submit(&relay, "news@example.com", &[RCPT, LATER, GONE], &msg);
    let detail = |kind: &str| -> Option<serde_json::Value> {
        relay
            .db()
            .query_row(
                "SELECT detail FROM events WHERE email_id = ?1 AND type = ?2",
                [id.as_str(), kind],
                |r| r.get::<_, String>(0),
            )
            .ok()
            .map(|s| serde_json::from_str(&s).unwrap())
    };
    let kinds = ["email.delivered", "email.delivery_delayed", "email.bounced"];
    wait_for("the three outcomes", Duration::from_secs(60), || {
        kinds.iter().all(|k| detail(k).is_some())
    });
    let mut stored = Vec::new();
    for kind in kinds {
        let d = detail(kind).unwrap();
        let ms = d["duration_ms"]
            .as_i64()
            .unwrap_or_else(|| panic!("no duration_ms in {kind}: {d}"));
        assert!(
            ms >= DATA_DELAY.as_millis() as i64,
            "{kind}: {ms} ms is less than the MX's own delay"
        );
        // The fields the detail (and so the webhook's `delivery`) had before.
        for k in ["response", "tls", "mx", "attempt"] {
            assert!(d.get(k).is_some(), "{k} missing from {kind}: {d}");
        }
        assert_eq!(d["attempt"], 1, "{kind}");
        stored.push(ms);
    }
    assert!(detail("email.delivery_delayed").unwrap()["next_attempt_at"].is_string());
    assert!(detail("email.bounced").unwrap()["bounce"].is_object());

    // Webhooks: `delivery` carries it beside the fields it had.
    for kind in ["email.delivered", "email.delivery_delayed"] {
        wait_for(
            &format!("the {kind} webhook"),
            Duration::from_secs(30),
            || hooks.accepted().iter().any(|h| h.body["type"] == kind),
        );
        let hook = hooks
            .accepted()
            .into_iter()
            .find(|h| h.body["type"] == kind)
            .unwrap();
        let delivery = &hook.body["data"]["delivery"];
        assert!(
            delivery["duration_ms"].as_i64().unwrap_or(0) >= DATA_DELAY.as_millis() as i64,
            "{delivery}"
        );
        for k in ["response", "tls", "mx", "attempt", "timestamp"] {
            assert!(delivery.get(k).is_some(), "{k} missing from {delivery}");
        }
    }

    // The email page shows each in its timeline entry.
    let session = login(&relay);
    let host = relay.api.to_string();
    let (status, _, body) = http(
        relay.api,
        "GET",
        &format!("/emails/{id}"),
        &[("Host", &host), ("Cookie", &session)],
    );
    assert_eq!(status, 200);
    let page = String::from_utf8(body).unwrap();
    for (class, ms) in ["ev-delivered", "ev-delivery_delayed", "ev-bounced"]
        .into_iter()
        .zip(stored)
    {
        let (shown, secs) = shown_duration(&page, class);
        assert!(
            secs + 1e-9 >= DATA_DELAY.as_secs_f64(),
            "{shown} shown for {ms} ms"
        );
        if ms < 60_000 {
            assert_eq!(shown, format!("{:.1} s", ms as f64 / 1000.0));
        }
    }
}

const TEMPLATE: &str = "From: News <news@example.com>\r\nTo: a@example.net\r\nSubject: t\r\n\
MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n\
<html><body><a href=\"https://example.org/x\">go</a></body></html>\r\n";

/// The host of the first tracked click link in `preview`'s output.
fn preview_host(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let i = text.find("http://").expect("a tracked link") + "http://".len();
    let url = &text[i..];
    let rest = &url[..url.find('"').unwrap()];
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    assert!(path.starts_with("/v1/track/click/"), "{rest}");
    host.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_uses_the_tracking_host_serve_uses() {
    let dns = DnsStub::start().await;
    dns.a(RELAY, Ipv4Addr::LOCALHOST)
        .cname("links.example.com", RELAY);
    let mut relay = Relay::start(Options {
        domain: "click_tracking = true\ntracking_subdomain = \"t2\"\n\
                 previous_tracking_subdomains = [\"links\"]"
            .into(),
        delivery: format!("resolver = \"{}\"", dns.resolver()),
        extra: "[domain_checks]\ninterval = \"200ms\"\nverified_interval = \"200ms\"".into(),
        ..Options::default()
    });
    let in_use = |relay: &Relay| -> Option<String> {
        relay
            .db()
            .query_row(
                "SELECT tracking_host FROM domain_status WHERE domain = 'example.com'",
                [],
                |r| r.get(0),
            )
            .ok()
            .flatten()
    };
    let wait_in_use = |relay: &Relay, host: &str| {
        wait_for(&format!("{host} in use"), Duration::from_secs(30), || {
            in_use(relay).as_deref() == Some(host)
        })
    };
    // t2 is configured but its record is missing: links keep the old host.
    wait_in_use(&relay, "links.example.com");
    let out = relay.cli_with_stdin(&["preview", "--no-sign"], TEMPLATE.as_bytes());
    assert_eq!(preview_host(&out), "links.example.com");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("t2.example.com is not verified yet"), "{err}");

    // Verified: serve switches, and so does preview, also once stopped.
    dns.cname("t2.example.com", RELAY);
    wait_in_use(&relay, "t2.example.com");
    relay.stop();
    let out = relay.cli_with_stdin(&["preview", "--no-sign"], TEMPLATE.as_bytes());
    assert_eq!(preview_host(&out), "t2.example.com");

    // No store at all (the same config elsewhere): the configured host.
    let elsewhere = tempfile::tempdir().unwrap();
    let config = elsewhere.path().join("config.toml");
    std::fs::copy(&relay.config_path, &config).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trackrelay"))
        .args(["preview", "--no-sign", "--config"])
        .arg(&config)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(TEMPLATE.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(!elsewhere.path().join("data/trackrelay.sqlite3").exists());
    assert_eq!(preview_host(&out), "t2.example.com");
}
