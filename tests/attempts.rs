//! Each delivery attempt's duration, through the real binary: stored in the
//! event's detail and shown on the dashboard's email page. Only lower bounds
//! are asserted (the MX's known delay), never how fast anything was.

mod harness;
mod support;

use harness::*;
use std::time::Duration;
use support::mx::{MxConfig, TestMx};

const RCPT: &str = "slow@example.net";
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
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nCookie: {cookie}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).to_string();
    let head = text.split("\r\n\r\n").next().unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_delivery_records_and_shows_its_duration() {
    let mx = TestMx::start(MxConfig {
        data_delay: Some(DATA_DELAY),
        ..MxConfig::default()
    })
    .await;
    let relay = Relay::start(Options {
        submission: "trusted_networks = [\"127.0.0.0/8\"]".into(),
        delivery: format!("routes = {{ \"example.net\" = \"{}\" }}", mx.addr()),
        api_token: true,
        ..Options::default()
    });
    let msg = message("news@example.com", RCPT, "slow", "hello");
    let id = submit(&relay, "news@example.com", &[RCPT], &msg);
    let detail = || -> Option<serde_json::Value> {
        relay
            .db()
            .query_row(
                "SELECT detail FROM events WHERE email_id = ?1 AND type = 'email.delivered'",
                [&id],
                |r| r.get::<_, String>(0),
            )
            .ok()
            .map(|s| serde_json::from_str(&s).unwrap())
    };
    wait_for("the delivered event", Duration::from_secs(30), || {
        detail().is_some()
    });
    let d = detail().unwrap();
    let ms = d["duration_ms"]
        .as_i64()
        .unwrap_or_else(|| panic!("no duration_ms in {d}"));
    assert!(
        ms >= DATA_DELAY.as_millis() as i64,
        "{ms} ms is less than the MX's own delay"
    );
    // The fields the detail (and so the webhook's `delivery`) had before.
    for k in ["response", "tls", "mx", "attempt"] {
        assert!(d.get(k).is_some(), "{k} missing from {d}");
    }
    assert_eq!(d["attempt"], 1);

    // The email page shows it in the attempt's timeline entry.
    let session = login(&relay);
    let host = relay.api.to_string();
    let (status, _, body) = http(
        relay.api,
        "GET",
        &format!("/emails/{id}"),
        &[("Host", &host), ("Cookie", &session)],
    );
    assert_eq!(status, 200);
    let body = String::from_utf8(body).unwrap();
    let delivered = between(&body, "<li class=\"ev ev-delivered\">", "</li>");
    let shown = between(&delivered, "<dt>Duration</dt><dd>", "</dd>");
    let secs: f64 = shown
        .strip_suffix(" s")
        .unwrap_or_else(|| panic!("{shown:?} is not in seconds"))
        .parse()
        .unwrap();
    assert!(
        secs + 1e-9 >= DATA_DELAY.as_secs_f64(),
        "{shown} shown for {ms} ms"
    );
    assert_eq!(shown, format!("{:.1} s", ms as f64 / 1000.0));
}
