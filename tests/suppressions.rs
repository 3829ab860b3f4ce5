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
