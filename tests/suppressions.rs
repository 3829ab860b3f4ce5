//! The suppression list through the real binary: CLI, delivery (manual
//! entries, 5.1.x bounces, domain scope), webhooks.

mod harness;
mod support;

use harness::*;
use std::time::Duration;
use support::mx::{MxConfig, Script, TestMx};
use support::webhook::Receiver;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn trusted() -> String {
    "trusted_networks = [\"127.0.0.0/8\"]".into()
}

fn status(relay: &Relay, id: &str, rcpt: &str) -> Option<String> {
    relay
        .db()
        .query_row(
            "SELECT status FROM recipients WHERE email_id = ?1 AND address = ?2",
            [id, rcpt],
            |r| r.get(0),
        )
        .ok()
}

fn wait_status(relay: &Relay, id: &str, rcpt: &str, want: &str) {
    wait_for(&format!("{rcpt} {want}"), Duration::from_secs(30), || {
        status(relay, id, rcpt).as_deref() == Some(want)
    });
}

/// The event of `kind` for one recipient, with its detail.
fn event_detail(relay: &Relay, id: &str, rcpt: &str, kind: &str) -> Option<serde_json::Value> {
    relay
        .db()
        .query_row(
            "SELECT COALESCE(detail, 'null') FROM events WHERE email_id = ?1 AND recipient = ?2 AND type = ?3",
            [id, rcpt, kind],
            |r| r.get::<_, String>(0),
        )
        .ok()
        .map(|d| serde_json::from_str(&d).unwrap())
}

fn cli_ok(relay: &Relay, args: &[&str]) -> String {
    let out = relay.cli(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn listed(relay: &Relay, extra: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["suppressions", "list", "--json"];
    args.extend_from_slice(extra);
    cli_ok(relay, &args)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// How many times the MX was asked to take mail for `rcpt`.
fn rcpt_tries(mx: &TestMx, rcpt: &str) -> usize {
    let want = format!("<{rcpt}>").to_ascii_lowercase();
    mx.commands()
        .iter()
        .filter(|c| {
            c.to_ascii_uppercase().starts_with("RCPT TO:") && c.to_ascii_lowercase().contains(&want)
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suppressed_address_is_accepted_never_delivered_and_reported() {
    let hooks = Receiver::start(SECRET).await;
    let mx = TestMx::start(MxConfig::default()).await;
    let relay = Relay::start(Options {
        submission: trusted(),
        delivery: format!("routes = {{ \"example.net\" = \"{}\" }}", mx.addr()),
        extra: format!(
            "[[webhooks]]\nurl = \"{}\"\nsecret = \"{SECRET}\"\nevents = [\"email.suppressed\"]\nretry = [\"1s\"]",
            hooks.url()
        ),
        ..Options::default()
    });
    cli_ok(&relay, &["suppressions", "add", "Quiet@Example.NET"]);
    let id = submit(
        &relay,
        "news@example.com",
        &["quiet@example.net", "loud@example.net"],
        &message("news@example.com", "loud@example.net", "s", "hello"),
    );
    wait_status(&relay, &id, "loud@example.net", "delivered");
    wait_status(&relay, &id, "quiet@example.net", "suppressed");
    assert_eq!(rcpt_tries(&mx, "quiet@example.net"), 0);
    assert_eq!(rcpt_tries(&mx, "loud@example.net"), 1);
    let d = event_detail(&relay, &id, "quiet@example.net", "email.suppressed")
        .expect("an email.suppressed event");
    assert_eq!(d["reason"], "manual");
    assert!(
        d["suppressed_since"].as_str().unwrap().ends_with('Z'),
        "{d}"
    );
    wait_for("the webhook", Duration::from_secs(30), || {
        hooks
            .accepted()
            .iter()
            .any(|h| h.body["type"] == "email.suppressed")
    });
    let h = hooks.accepted();
    let h = h
        .iter()
        .find(|h| h.body["type"] == "email.suppressed")
        .unwrap();
    assert!(h.signature_ok);
    assert_eq!(h.body["data"]["email_id"], id.as_str());
    assert_eq!(h.body["data"]["to"][0], "quiet@example.net");
    assert_eq!(h.body["data"]["suppressed"]["reason"], "manual");
    // Only the subscribed type: the delivery did not reach this endpoint.
    assert!(hooks
        .accepted()
        .iter()
        .all(|h| h.body["type"] == "email.suppressed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5_1_1_bounce_suppresses_and_the_next_message_is_not_sent() {
    let mx = TestMx::start(
        MxConfig::default().script("gone@example.net", Script::always("550 5.1.1 no such user")),
    )
    .await;
    let relay = Relay::start(Options {
        submission: trusted(),
        delivery: format!("routes = {{ \"example.net\" = \"{}\" }}", mx.addr()),
        ..Options::default()
    });
    let msg = message("news@example.com", "gone@example.net", "s", "hello");
    let first = submit(&relay, "news@example.com", &["gone@example.net"], &msg);
    wait_status(&relay, &first, "gone@example.net", "bounced");
    let rows = listed(&relay, &[]);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["address"], "gone@example.net");
    assert_eq!(rows[0]["domain"], "example.com");
    assert_eq!(rows[0]["reason"], "hard_bounce");
    // Linked to the bounce that caused it.
    let bounce_id: i64 = relay
        .db()
        .query_row(
            "SELECT id FROM events WHERE email_id = ?1 AND type = 'email.bounced'",
            [&first],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(rows[0]["event_id"], bounce_id);

    let second = submit(&relay, "news@example.com", &["gone@example.net"], &msg);
    wait_status(&relay, &second, "gone@example.net", "suppressed");
    let d = event_detail(&relay, &second, "gone@example.net", "email.suppressed").unwrap();
    assert_eq!(d["reason"], "hard_bounce");
    assert_eq!(rcpt_tries(&mx, "gone@example.net"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_and_temporary_refusals_do_not_suppress() {
    let mx = TestMx::start(
        MxConfig::default()
            .script(
                "blocked@example.net",
                Script::always("550 5.7.1 blocked by policy"),
            )
            .script("busy@example.net", Script::always("450 4.1.1 try later")),
    )
    .await;
    let relay = Relay::start(Options {
        submission: trusted(),
        delivery: format!(
            "routes = {{ \"example.net\" = \"{}\" }}\nretry = [\"1h\"]",
            mx.addr()
        ),
        ..Options::default()
    });
    let msg = message("news@example.com", "blocked@example.net", "s", "hello");
    let id = submit(
        &relay,
        "news@example.com",
        &["blocked@example.net", "busy@example.net"],
        &msg,
    );
    wait_status(&relay, &id, "blocked@example.net", "bounced");
    wait_status(&relay, &id, "busy@example.net", "deferred");
    assert!(listed(&relay, &[]).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suppress_on_without_hard_bounce_keeps_the_address() {
    let mx = TestMx::start(
        MxConfig::default().script("gone@example.net", Script::always("550 5.1.1 no such user")),
    )
    .await;
    let relay = Relay::start(Options {
        submission: trusted(),
        domain: "suppress_on = [\"complaint\"]".into(),
        delivery: format!("routes = {{ \"example.net\" = \"{}\" }}", mx.addr()),
        ..Options::default()
    });
    let msg = message("news@example.com", "gone@example.net", "s", "hello");
    let id = submit(&relay, "news@example.com", &["gone@example.net"], &msg);
    wait_status(&relay, &id, "gone@example.net", "bounced");
    assert!(listed(&relay, &[]).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_scoped_entry_applies_to_that_sending_domain_only() {
    let mx = TestMx::start(MxConfig::default()).await;
    let relay = Relay::start(Options {
        submission: trusted(),
        delivery: format!("routes = {{ \"example.net\" = \"{}\" }}", mx.addr()),
        ..Options::default()
    });
    cli_ok(
        &relay,
        &[
            "suppressions",
            "add",
            "x@example.net",
            "--domain",
            "example.com",
        ],
    );
    let com = submit(
        &relay,
        "news@example.com",
        &["x@example.net"],
        &message("news@example.com", "x@example.net", "s", "hello"),
    );
    let org = submit(
        &relay,
        "news@example.org",
        &["x@example.net"],
        &message("news@example.org", "x@example.net", "s", "hello"),
    );
    wait_status(&relay, &com, "x@example.net", "suppressed");
    wait_status(&relay, &org, "x@example.net", "delivered");
    assert_eq!(rcpt_tries(&mx, "x@example.net"), 1);
    // Counted once, for the domain it was suppressed for.
    let stats = |d: &str| -> serde_json::Value {
        serde_json::from_str(&cli_ok(&relay, &["stats", "--json", "--domain", d])).unwrap()
    };
    assert_eq!(stats("example.com")["suppressed"], 1);
    assert_eq!(stats("example.com")["delivered"], 0);
    assert_eq!(stats("example.org")["suppressed"], 0);
    assert_eq!(stats("example.org")["delivered"], 1);
}

#[test]
fn stats_warn_when_a_domains_complaint_rate_passes_the_thresholds() {
    let relay = Relay::start(Options::default());
    let out = relay.cli(&["stats"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).is_empty());
    // Complaints come from the feedback listener; here the rollups the
    // store keeps for them are written as it would.
    let hour = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        / 3_600_000
        - 2)
        * 3_600_000;
    // The same statement on either backend.
    let sql = format!(
        "INSERT INTO rollups (hour, domain, sent, delivered, complained)
         VALUES ({hour}, 'example.com', 1000, 1000, 2), ({hour}, 'example.org', 1000, 1000, 4)"
    );
    match &relay.pg_url {
        Some(url) => {
            harness::pg::query(url, &sql);
        }
        None => {
            let db = rusqlite::Connection::open(relay.db_path()).unwrap();
            db.busy_timeout(Duration::from_secs(10)).unwrap();
            db.execute_batch(&sql).unwrap();
        }
    }
    let out = relay.cli(&["stats", "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["complained"], 6);
    assert_eq!(v["complaint_rate"], 0.003);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        err.contains("warning: example.com: complaint rate 0.20 %"),
        "{err}"
    );
    assert!(
        err.contains("limit: example.org: complaint rate 0.40 %"),
        "{err}"
    );
}

#[test]
fn cli_add_list_remove_export_import_round_trip() {
    let relay = Relay::start(Options::default());
    cli_ok(&relay, &["suppressions", "add", "A@Example.net"]);
    cli_ok(
        &relay,
        &[
            "suppressions",
            "add",
            "b@example.net",
            "--domain",
            "Example.com",
            "--reason",
            "unsubscribe",
        ],
    );
    // Formula-looking addresses are neutralised in the CSV and come back whole.
    cli_ok(&relay, &["suppressions", "add", "=cmd@example.net"]);
    // Idempotent.
    cli_ok(&relay, &["suppressions", "add", "a@example.net"]);
    let rows = listed(&relay, &[]);
    assert_eq!(rows.len(), 3, "{rows:?}");
    let a = rows
        .iter()
        .find(|r| r["address"] == "a@example.net")
        .unwrap();
    assert_eq!(a["domain"], serde_json::Value::Null);
    assert_eq!(a["reason"], "manual");
    assert_eq!(a["event_id"], serde_json::Value::Null);
    assert_eq!(a["expires_at"], serde_json::Value::Null);
    assert!(a["created_at"].as_str().unwrap().ends_with('Z'));
    // A domain filter keeps that domain's and the every-domain entries.
    assert_eq!(listed(&relay, &["--domain", "example.org"]).len(), 2);
    assert_eq!(listed(&relay, &["--domain", "example.com"]).len(), 3);

    let bad = relay.cli(&["suppressions", "add", "no-at-sign", "--reason", "manual"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not an email address"));
    let bad = relay.cli(&["suppressions", "add", "c@example.net", "--reason", "spite"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a reason"));

    let csv = cli_ok(&relay, &["suppressions", "export", "--csv"]);
    assert!(
        csv.starts_with("address,domain,reason,event_id,created_at,expires_at\r\n"),
        "{csv}"
    );
    assert!(csv.contains("'=cmd@example.net"), "{csv}");
    assert!(
        csv.contains("b@example.net,example.com,unsubscribe,"),
        "{csv}"
    );

    // Removing from the wrong scope fails and changes nothing.
    assert!(!relay
        .cli(&["suppressions", "remove", "b@example.net"])
        .status
        .success());
    for (addr, dom) in [
        ("a@example.net", None),
        ("b@example.net", Some("example.com")),
        ("=cmd@example.net", None),
    ] {
        let mut args = vec!["suppressions", "remove", addr];
        if let Some(d) = dom {
            args.extend(["--domain", d]);
        }
        cli_ok(&relay, &args);
    }
    assert!(listed(&relay, &[]).is_empty());

    let file = relay.dir.path().join("list.csv");
    std::fs::write(&file, &csv).unwrap();
    let out = cli_ok(
        &relay,
        &["suppressions", "import", "--csv", file.to_str().unwrap()],
    );
    assert!(out.contains("3 address(es) added"), "{out}");
    let mut again = listed(&relay, &[]);
    again.sort_by_key(|r| r["address"].as_str().unwrap().to_string());
    let mut before = rows.clone();
    before.sort_by_key(|r| r["address"].as_str().unwrap().to_string());
    assert_eq!(again, before);

    // A file with one bad row imports nothing and says which line.
    let bad = relay.dir.path().join("bad.csv");
    std::fs::write(
        &bad,
        "address,reason\r\nok@example.net,manual\r\nbroken,manual\r\n",
    )
    .unwrap();
    let out = relay.cli(&["suppressions", "import", "--csv", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 3"),
        "{out:?}"
    );
    assert_eq!(listed(&relay, &[]).len(), 3);
}

/// One HTTP/1.1 request with an optional body; status and JSON answer.
fn call(
    relay: &Relay,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(relay.api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or("");
    if method == "POST" {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text.split(' ').nth(1).unwrap().parse().unwrap();
    let (_, b) = text.split_once("\r\n\r\n").unwrap();
    (
        status,
        serde_json::from_str(b).unwrap_or(serde_json::Value::Null),
    )
}

#[test]
fn api_lists_adds_and_removes_with_the_token_only() {
    let relay = Relay::start(Options {
        api_token: true,
        ..Options::default()
    });
    let body = r#"{"address": "Api@Example.net", "domain": "example.com", "reason": "complaint"}"#;
    // Without a token, or with a wrong one: refused, nothing written.
    assert_eq!(
        call(&relay, "POST", "/v1/suppressions", None, Some(body)).0,
        401
    );
    assert_eq!(
        call(
            &relay,
            "POST",
            "/v1/suppressions",
            Some("wrong"),
            Some(body)
        )
        .0,
        401
    );
    assert_eq!(call(&relay, "GET", "/v1/suppressions", None, None).0, 401);
    assert_eq!(
        call(
            &relay,
            "DELETE",
            "/v1/suppressions/x@example.net",
            None,
            None
        )
        .0,
        401
    );
    assert!(listed(&relay, &[]).is_empty());

    let tok = Some(API_TOKEN);
    let (st, v) = call(&relay, "POST", "/v1/suppressions", tok, Some(body));
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["address"], "api@example.net");
    assert_eq!(v["added"], true);
    let (st, v) = call(&relay, "POST", "/v1/suppressions", tok, Some(body));
    assert_eq!((st, v["added"].clone()), (200, serde_json::json!(false)));
    let (st, _) = call(
        &relay,
        "POST",
        "/v1/suppressions",
        tok,
        Some(r#"{"address": "b+tag@example.net"}"#),
    );
    assert_eq!(st, 201);
    for (bad, why) in [
        (r#"{"address": "nope"}"#, "address"),
        (r#"{"address": "a@b.test", "reason": "spite"}"#, "reason"),
        (r#"{"address": "a@b.test", "extra": 1}"#, "extra"),
        ("not json", "JSON"),
    ] {
        let (st, v) = call(&relay, "POST", "/v1/suppressions", tok, Some(bad));
        assert_eq!(st, 400, "{bad}: {v}");
        assert!(v["error"].as_str().unwrap().contains(why), "{bad}: {v}");
    }
    assert_eq!(listed(&relay, &[]).len(), 2);

    // Paged: one row per page, the cursor leads to the second.
    let (st, p1) = call(&relay, "GET", "/v1/suppressions?limit=1", tok, None);
    assert_eq!(st, 200);
    assert_eq!(p1["data"].as_array().unwrap().len(), 1);
    assert_eq!(p1["data"][0]["address"], "api@example.net");
    assert_eq!(p1["data"][0]["domain"], "example.com");
    assert_eq!(p1["data"][0]["reason"], "complaint");
    let after = p1["next_after"].as_str().unwrap();
    let (_, p2) = call(
        &relay,
        "GET",
        &format!("/v1/suppressions?limit=1&after={after}"),
        tok,
        None,
    );
    assert_eq!(p2["data"][0]["address"], "b+tag@example.net");
    assert_eq!(p2["data"][0]["domain"], serde_json::Value::Null);
    assert_eq!(p2["next_after"], serde_json::Value::Null);
    let (_, org) = call(
        &relay,
        "GET",
        "/v1/suppressions?domain=example.org",
        tok,
        None,
    );
    assert_eq!(org["data"].as_array().unwrap().len(), 1);

    // DELETE: the scope must match; '+' and '%40' in the path are literal.
    let (st, _) = call(
        &relay,
        "DELETE",
        "/v1/suppressions/api@example.net",
        tok,
        None,
    );
    assert_eq!(st, 404);
    let (st, v) = call(
        &relay,
        "DELETE",
        "/v1/suppressions/api%40example.net?domain=example.com",
        tok,
        None,
    );
    assert_eq!(st, 200, "{v}");
    let (st, _) = call(
        &relay,
        "DELETE",
        "/v1/suppressions/b+tag@example.net",
        tok,
        None,
    );
    assert_eq!(st, 200);
    assert!(listed(&relay, &[]).is_empty());
    assert_eq!(call(&relay, "PUT", "/v1/suppressions", tok, None).0, 405);
}

#[test]
fn reject_suppressed_refuses_the_address_at_rcpt() {
    let relay = Relay::start(Options {
        submission: format!("{}\nreject_suppressed = true", trusted()),
        ..Options::default()
    });
    cli_ok(
        &relay,
        &[
            "suppressions",
            "add",
            "no@example.net",
            "--domain",
            "example.com",
            "--reason",
            "unsubscribe",
        ],
    );
    let mut c = RawSmtp::connect(relay.smtp);
    c.reply();
    c.cmd("EHLO test.client");
    assert!(c.cmd("MAIL FROM:<news@example.com>").starts_with("250"));
    let r = c.cmd("RCPT TO:<No@Example.net>");
    assert!(r.starts_with("550 5.1.1"), "{r}");
    assert!(r.contains("unsubscribe"), "{r}");
    assert!(c.cmd("RCPT TO:<yes@example.net>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(&message("news@example.com", "yes@example.net", "s", "hi"));
    let id = queued_id(&c.cmd(".")).unwrap();
    let n: i64 = relay
        .db()
        .query_row(
            "SELECT COUNT(*) FROM recipients WHERE email_id = ?1",
            [&id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1);
    // Scoped to example.com: mail from example.org may still go to it.
    c.cmd("RSET");
    assert!(c.cmd("MAIL FROM:<news@example.org>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<no@example.net>").starts_with("250"));
    c.cmd("QUIT");
}
