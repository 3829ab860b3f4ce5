//! Opens and clicks through the real binary: a message is submitted,
//! delivered to a test MX, and the pixel and links in what arrived are
//! fetched over real HTTP from the tracking listener.

mod harness;
mod support;

use harness::*;
use std::time::Duration;
use support::mx::{MxConfig, TestMx};

const LINK_AMP: &str = "https://example.org/x?a=1&b=2#top";
const LINK_PCT: &str = "https://example.org/caf%C3%A9?q=a%20b&x=%2F";
const LINK_UTF8: &str = "https://example.org/café/ü?x=ä";
const LINK_UTF8_WIRE: &str = "https://example.org/caf%C3%A9/%C3%BC?x=%C3%A4";

fn html_message() -> Vec<u8> {
    format!(
        "From: News <news@example.com>\r\nTo: list@example.net\r\nSubject: links\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
         <html><body>\r\n<a href=\"https://example.org/x?a=1&amp;b=2#top\">amp</a>\r\n\
         <a href='{LINK_PCT}'>pct</a>\r\n<a href=\"{LINK_UTF8}\">utf8</a>\r\n\
         <a href=\"mailto:hi@example.com\">mail</a>\r\n</body></html>\r\n"
    )
    .into_bytes()
}

/// Every tracking URL path in a delivered copy, in order: (kind, path).
fn tracking_paths(data: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(data);
    let mut out = Vec::new();
    let prefix = "http://links.example.com/v1/track/";
    let mut rest = text.as_ref();
    while let Some(i) = rest.find(prefix) {
        let tail = &rest[i + "http://links.example.com".len()..];
        let end = tail.find(['"', '\'', ' ', '>']).unwrap_or(tail.len());
        let path = tail[..end].to_string();
        let kind = if path.starts_with("/v1/track/open/") {
            "open"
        } else {
            "click"
        };
        out.push((kind.to_string(), path));
        rest = &tail[end..];
    }
    out
}

fn count(relay: &Relay, sql: &str) -> i64 {
    relay.db().query_row(sql, [], |r| r.get(0)).unwrap()
}

/// type, recipient, ip, user_agent, referer, link, machine
type EventRow = (
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    bool,
);

const UA: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.3.1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opens_and_clicks_are_attributed_and_redirect_exactly() {
    let mx = TestMx::start(MxConfig::default()).await;
    let relay = Relay::start(Options {
        submission: "trusted_networks = [\"127.0.0.0/8\"]".into(),
        domain: "open_tracking = true\nclick_tracking = true\ntracking_subdomain = \"links\""
            .into(),
        tracking: "machine_click_window = \"0s\"".into(),
        delivery: format!("routes = {{ \"example.net\" = \"{}\" }}", mx.addr()),
        api_token: true,
        ..Options::default()
    });
    let id = submit(
        &relay,
        "news@example.com",
        &["one@example.net", "two@example.net"],
        &html_message(),
    );
    assert!(mx.wait_for(2, Duration::from_secs(30)).await);
    let mut copies = mx.received();
    copies.sort_by_key(|r| r.rcpt_to[0].clone());
    let one = tracking_paths(&copies[0].data);
    let two = tracking_paths(&copies[1].data);
    assert_eq!(one.len(), 4, "three links and a pixel: {one:?}");
    assert_ne!(one, two, "each recipient has tokens of its own");
    assert!(String::from_utf8_lossy(&copies[0].data).contains("href=\"mailto:hi@example.com\""));
    wait_for("both delivered", Duration::from_secs(10), || {
        count(
            &relay,
            "SELECT COUNT(*) FROM recipients WHERE status = 'delivered'",
        ) == 2
    });

    let host = ("Host", "links.example.com");
    let ua = ("User-Agent", UA);
    // The pixel, twice for the first recipient (from two clients: one
    // client's repeats within seconds are folded into one event).
    let open_one = &one.iter().find(|(k, _)| k == "open").unwrap().1;
    for client in [
        UA,
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) Mobile/15E148",
    ] {
        let (status, headers, body) = http(
            relay.tracking,
            "GET",
            open_one,
            &[host, ("User-Agent", client)],
        );
        assert_eq!(status, 200);
        assert_eq!(body.len(), 43);
        assert!(body.starts_with(b"GIF89a"));
        assert_eq!(header(&headers, "content-type"), Some("image/gif"));
        assert_eq!(
            header(&headers, "cache-control"),
            Some("no-store, no-cache, must-revalidate, max-age=0")
        );
        assert_eq!(header(&headers, "pragma"), Some("no-cache"));
        assert_eq!(header(&headers, "expires"), Some("0"));
    }
    let open_two = &two.iter().find(|(k, _)| k == "open").unwrap().1;
    // Through a trusted proxy (loopback), the forwarded address is the client's.
    http(
        relay.tracking,
        "GET",
        open_two,
        &[host, ua, ("X-Forwarded-For", "198.51.100.23")],
    );

    // Clicks: each redirect goes to the exact original URL.
    let clicks_one: Vec<&String> = one
        .iter()
        .filter(|(k, _)| k == "click")
        .map(|(_, p)| p)
        .collect();
    let clicks_two: Vec<&String> = two
        .iter()
        .filter(|(k, _)| k == "click")
        .map(|(_, p)| p)
        .collect();
    let expected = [LINK_AMP, LINK_PCT, LINK_UTF8_WIRE];
    for (path, want) in clicks_one.iter().zip(expected) {
        let (status, headers, _) = http(
            relay.tracking,
            "GET",
            path,
            &[host, ua, ("Referer", "https://mail.example/")],
        );
        assert_eq!(status, 302);
        assert_eq!(header(&headers, "location"), Some(want));
        assert_eq!(header(&headers, "cache-control"), Some("no-store"));
    }
    // HEAD works, and is flagged as a machine.
    let (status, headers, body) = http(relay.tracking, "HEAD", clicks_two[2], &[host, ua]);
    assert_eq!(status, 302);
    assert_eq!(header(&headers, "location"), Some(LINK_UTF8_WIRE));
    assert!(body.is_empty());
    // Two links of one message within a second is a scanner's pattern; a
    // reader takes longer. A wait for time to pass under the rule, not a
    // synchronisation.
    std::thread::sleep(Duration::from_millis(1100));
    let (status, _, _) = http(relay.tracking, "GET", clicks_two[0], &[host, ua]);
    assert_eq!(status, 302);

    wait_for("events stored", Duration::from_secs(10), || {
        count(
            &relay,
            "SELECT COUNT(*) FROM events WHERE type IN ('email.opened', 'email.clicked')",
        ) == 8
    });
    let this_email = format!(
        "SELECT COUNT(*) FROM events WHERE email_id = '{id}' AND type IN ('email.opened', 'email.clicked')"
    );
    let before = count(&relay, &this_email);

    // A token with one character changed: 404, never a redirect, nothing stored.
    let path = clicks_one[0];
    let mut forged = path.clone().into_bytes();
    let last = forged.len() - 1;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let (status, headers, _) = http(relay.tracking, "GET", &forged, &[host]);
    assert_eq!(status, 404);
    assert_eq!(header(&headers, "location"), None);
    let (status, _, body) = http(
        relay.tracking,
        "GET",
        &forged.replace("/click/", "/open/"),
        &[host],
    );
    assert_eq!(
        (status, body.len()),
        (200, 43),
        "a bad open token still gets the image"
    );
    assert_eq!(http(relay.tracking, "GET", "/v1/other", &[host]).0, 404);
    assert_eq!(http(relay.tracking, "GET", "/", &[host]).0, 404);
    assert_eq!(
        http(
            relay.tracking,
            "POST",
            path,
            &[host, ("Content-Length", "0")]
        )
        .0,
        404
    );
    // A click token on the open path is not an open.
    http(
        relay.tracking,
        "GET",
        &path.replace("/click/", "/open/"),
        &[host],
    );
    // A barrier: an open of another email (a preview's), asked for after
    // the invalid requests. The listener queues an event before it answers
    // and the recorder stores in order, so once this one is stored, anything
    // the invalid requests had queued would be too.
    let out = relay.cli_with_stdin(&["preview", "--no-sign"], &html_message());
    let barrier_id = String::from_utf8(out.stderr)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("email_id: ").map(str::to_string))
        .unwrap();
    let barrier = tracking_paths(&out.stdout);
    let barrier_open = &barrier.iter().find(|(k, _)| k == "open").unwrap().1;
    assert_eq!(http(relay.tracking, "GET", barrier_open, &[host]).0, 200);
    wait_for("the barrier open stored", Duration::from_secs(10), || {
        count(
            &relay,
            &format!("SELECT COUNT(*) FROM events WHERE email_id = '{barrier_id}'"),
        ) == 1
    });
    assert_eq!(
        count(&relay, &this_email),
        before,
        "invalid tokens write nothing"
    );

    // Attribution, IPs, User-Agent, Referer, link.
    let rows: Vec<EventRow> = relay
        .db()
        .prepare(
            "SELECT type, recipient, ip, user_agent, referer, link, machine FROM events
             WHERE email_id = ?1 AND type IN ('email.opened', 'email.clicked') ORDER BY id",
        )
        .unwrap()
        .query_map([&id], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows.len(), 8);
    assert_eq!(rows[0].0, "email.opened");
    assert_eq!(rows[0].1, "one@example.net");
    assert_eq!(rows[0].2, "127.0.0.1");
    assert_eq!(rows[0].3.as_deref(), Some(UA));
    assert_eq!(rows[2].1, "two@example.net");
    assert_eq!(
        rows[2].2, "198.51.100.23",
        "X-Forwarded-For from a trusted proxy"
    );
    let clicks: Vec<_> = rows.iter().filter(|r| r.0 == "email.clicked").collect();
    assert_eq!(clicks[0].1, "one@example.net");
    assert_eq!(
        clicks[0].5.as_deref(),
        Some(LINK_AMP),
        "the stored link has its entities decoded"
    );
    assert_eq!(clicks[0].4.as_deref(), Some("https://mail.example/"));
    assert_eq!(clicks[2].5.as_deref(), Some(LINK_UTF8));
    let head = clicks
        .iter()
        .find(|r| r.1 == "two@example.net" && r.5.as_deref() == Some(LINK_UTF8))
        .unwrap();
    assert!(head.6, "HEAD is a machine");

    // opened_at is the first open's time and is set once.
    let (opened_at, first_open): (i64, i64) = relay
        .db()
        .query_row(
            "SELECT r.opened_at, (SELECT MIN(at) FROM events WHERE email_id = r.email_id AND rcpt_idx = r.idx AND type = 'email.opened')
             FROM recipients r WHERE r.email_id = ?1 AND r.address = 'one@example.net'",
            [&id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(opened_at, first_open);

    // The CLI reads the same.
    let out = relay.cli(&["events", "--email", &id, "--type", "clicked", "--json"]);
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    let keys: Vec<&str> = lines[0]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(
        keys,
        [
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
            "detail"
        ]
    );
    // The node that answered the click (server.node_id: the host name here).
    assert!(lines[0]["detail"]["node"].is_string(), "{}", lines[0]);
    let out = relay.cli(&["stats", "--json"]);
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["sent"], 2);
    assert_eq!(stats["delivered"], 2);
    assert_eq!(stats["opened"], 2);
    assert_eq!(stats["opened_human"], 2);
    assert_eq!(stats["clicked"], 2);
    assert_eq!(stats["clicked_human"], 2);
    assert_eq!(stats["open_rate"], 1.0);

    // The admin API of the running server says the same.
    let bearer = format!("Bearer {API_TOKEN}");
    let auth = ("Authorization", bearer.as_str());
    assert_eq!(
        http(relay.api, "GET", &format!("/v1/emails/{id}"), &[]).0,
        401
    );
    let (status, _, body) = http(relay.api, "GET", &format!("/v1/emails/{id}"), &[auth]);
    assert_eq!(status, 200);
    let email: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(email["recipients"].as_array().unwrap().len(), 2);
    let (status, _, body) = http(relay.api, "GET", "/v1/stats", &[auth]);
    assert_eq!(status, 200);
    let api_stats: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(api_stats["clicked_human"], 2);
    let (status, _, body) = http(relay.api, "GET", "/metrics", &[auth]);
    assert_eq!(status, 200);
    let metrics = String::from_utf8(body).unwrap();
    assert!(metrics.contains("trackrelay_clicks_total 5"), "{metrics}");
    // Three of the email's, and the barrier's.
    assert!(metrics.contains("trackrelay_opens_total 4"), "{metrics}");
    assert!(
        metrics.contains("trackrelay_delivered_total 2"),
        "{metrics}"
    );
    assert_eq!(http(relay.api, "GET", "/healthz", &[]).0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scanners_are_flagged_and_links_outlive_the_message() {
    let mx = TestMx::start(MxConfig::default()).await;
    let mut relay = Relay::start(Options {
        submission: "trusted_networks = [\"127.0.0.0/8\"]".into(),
        domain: "click_tracking = true\ntracking_subdomain = \"links\"".into(),
        tracking: "machine_click_window = \"60s\"".into(),
        delivery: format!("routes = {{ \"example.net\" = \"{}\" }}", mx.addr()),
        store: "retain_messages = \"1s\"".into(),
        ..Options::default()
    });
    let id = submit(
        &relay,
        "news@example.com",
        &["one@example.net"],
        &html_message(),
    );
    assert!(mx.wait_for(1, Duration::from_secs(30)).await);
    wait_for("delivered", Duration::from_secs(10), || {
        count(
            &relay,
            "SELECT COUNT(*) FROM recipients WHERE status = 'delivered'",
        ) == 1
    });
    let paths = tracking_paths(&mx.received()[0].data);
    let host = ("Host", "links.example.com");
    // A scanner follows every link at once, right after delivery.
    for (_, p) in &paths {
        assert_eq!(
            http(relay.tracking, "GET", p, &[host, ("User-Agent", UA)]).0,
            302
        );
    }
    wait_for("clicks stored", Duration::from_secs(10), || {
        count(
            &relay,
            "SELECT COUNT(*) FROM events WHERE type = 'email.clicked'",
        ) == 3
    });
    let reasons: Vec<(bool, Option<String>)> = relay
        .db()
        .prepare(
            "SELECT machine, machine_reason FROM events WHERE type = 'email.clicked' ORDER BY id",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for (machine, reason) in &reasons {
        assert!(machine, "{reasons:?}");
        assert!(reason.is_some());
    }
    assert!(
        reasons
            .iter()
            .any(|(_, r)| r.as_deref() == Some("too_soon_after_delivery")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|(_, r)| r.as_deref() == Some("burst_of_clicks")),
        "{reasons:?}"
    );
    let out = relay.cli(&["stats", "--json"]);
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (stats["clicked"].as_i64(), stats["clicked_human"].as_i64()),
        (Some(1), Some(0))
    );

    // After retention drops the body (at the restart's pruning pass), the
    // links still redirect: the token is enough. The body must first be
    // older than retain_messages (1s): time passing, not a synchronisation.
    std::thread::sleep(Duration::from_millis(1200));
    relay.stop();
    relay.spawn();
    wait_for("body pruned", Duration::from_secs(10), || {
        count(
            &relay,
            &format!(
                "SELECT COUNT(*) FROM emails WHERE id = '{id}' AND body IS NULL AND body_seg IS NULL"
            ),
        ) == 1
    });
    let (status, headers, _) = http(relay.tracking, "GET", &paths[0].1, &[host]);
    assert_eq!(status, 302);
    assert_eq!(header(&headers, "location"), Some(LINK_AMP));
    // A token from `preview` names an email the store never saw: the
    // redirect works and the click is still recorded.
    let out = relay.cli_with_stdin(&["preview", "--no-sign"], &html_message());
    let err = String::from_utf8(out.stderr).unwrap();
    let preview_id = err
        .lines()
        .find_map(|l| l.strip_prefix("email_id: "))
        .unwrap()
        .to_string();
    let preview_paths = tracking_paths(&out.stdout);
    assert_eq!(
        http(
            relay.tracking,
            "GET",
            &preview_paths[0].1,
            &[host, ("User-Agent", UA)]
        )
        .0,
        302
    );
    wait_for("the preview click stored", Duration::from_secs(10), || {
        count(
            &relay,
            &format!("SELECT COUNT(*) FROM events WHERE email_id = '{preview_id}'"),
        ) == 1
    });
    let out = relay.cli(&["export", "events", "--csv"]);
    assert!(out.status.success());
    let csv = String::from_utf8(out.stdout).unwrap();
    assert!(
        csv.starts_with(
            "id,email_id,type,recipient,at,ip,user_agent,referer,link,machine,machine_reason\r\n"
        ),
        "{csv}"
    );
    assert!(csv.contains(&preview_id));
    assert!(
        csv.contains("\"https://example.org/x?a=1&b=2#top\"")
            || csv.contains("https://example.org/x?a=1&b=2#top")
    );
    let out = relay.cli(&["export", "emails", "--csv"]);
    let csv = String::from_utf8(out.stdout).unwrap();
    assert!(csv.lines().nth(1).unwrap().starts_with(&id), "{csv}");
}
