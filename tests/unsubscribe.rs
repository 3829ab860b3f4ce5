//! One-click unsubscribe (RFC 8058) through the real binary: the headers
//! on the delivered, DKIM-signed copy; the confirmation page that never
//! unsubscribes; the POST that does, once, with its suppression, event and
//! webhook; and the next message that is not sent.

mod harness;
mod support;

use harness::*;
use std::net::SocketAddr;
use std::time::Duration;
use support::mx::{MxConfig, TestMx};
use support::webhook::Receiver;
use trackrelay::feedback::return_path;
use trackrelay::prepare::TokenKeys;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const ONE_CLICK: &str = "List-Unsubscribe=One-Click";

fn relay_with(mx: &TestMx, domain_extra: &str, extra: String) -> Relay {
    Relay::start(Options {
        submission: "trusted_networks = [\"127.0.0.0/8\"]".into(),
        domain: format!(
            "return_path = \"bounces\"\ntracking_subdomain = \"links\"\nlist_unsubscribe = true\n{domain_extra}"
        ),
        delivery: format!("routes = {{ \"example.net\" = \"{}\" }}", mx.addr()),
        extra,
        ..Options::default()
    })
}

fn webhook(hooks: &Receiver) -> String {
    format!(
        "[[webhooks]]\nurl = \"{}\"\nsecret = \"{SECRET}\"\nevents = [\"email.unsubscribed\"]\nretry = [\"1s\"]",
        hooks.url()
    )
}

fn relay_keys(relay: &Relay) -> TokenKeys {
    TokenKeys::load_or_create(&relay.data_dir().join("tracking.key"), &[]).unwrap()
}

/// The unfolded values of every field `name` in the header block.
fn fields(data: &[u8], name: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(data);
    let head = text
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .replace("\r\n ", " ")
        .replace("\r\n\t", " ");
    head.split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_string())
        .collect()
}

/// The one delivered copy for `rcpt`.
fn delivered_to(mx: &TestMx, rcpt: &str) -> Vec<u8> {
    let mut copies: Vec<_> = mx
        .received()
        .into_iter()
        .filter(|r| r.rcpt_to.iter().any(|t| t == rcpt))
        .collect();
    assert_eq!(copies.len(), 1, "one copy for {rcpt}");
    copies.remove(0).data
}

/// The token out of `<http://links.example.com/v1/unsubscribe/{token}>`.
fn url_token(list_unsubscribe: &str) -> String {
    let start = list_unsubscribe
        .find("<http://links.example.com/v1/unsubscribe/")
        .expect("the URL")
        + "<http://links.example.com/v1/unsubscribe/".len();
    let end = list_unsubscribe[start..].find('>').unwrap() + start;
    list_unsubscribe[start..end].to_string()
}

/// One HTTP/1.1 request with a body: (status, lowercased headers, body).
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, String) {
    let mut all = vec![("Host", "links.example.com")];
    all.extend_from_slice(headers);
    let (status, headers, body) = harness::http_with_body(addr, method, path, &all, body);
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

fn post(relay: &Relay, token: &str, extra: &[(&str, &str)], body: &str) -> u16 {
    let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded")];
    headers.extend_from_slice(extra);
    request(
        relay.tracking,
        "POST",
        &format!("/v1/unsubscribe/{token}"),
        &headers,
        body.as_bytes(),
    )
    .0
}

fn count(relay: &Relay, sql: &str) -> i64 {
    relay.db().query_row(sql, [], |r| r.get(0)).unwrap()
}

fn unsubscribed_events(relay: &Relay) -> i64 {
    count(
        relay,
        "SELECT count(*) FROM events WHERE type = 'email.unsubscribed'",
    )
}

fn suppressions(relay: &Relay) -> i64 {
    count(relay, "SELECT count(*) FROM suppressions")
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delivered_copy_carries_both_headers_dkim_signed() {
    let mx = TestMx::start(MxConfig::default()).await;
    let relay = relay_with(&mx, "dkim = [{ selector = \"auto\" }]", String::new());
    let id = submit(
        &relay,
        "news@example.com",
        &["someone@example.net"],
        &message("news@example.com", "someone@example.net", "news", "hello"),
    );
    assert!(
        mx.wait_for(1, Duration::from_secs(30)).await,
        "delivered:\n{}",
        relay.log()
    );
    let data = delivered_to(&mx, "someone@example.net");
    let keys = relay_keys(&relay);

    let lu = fields(&data, "List-Unsubscribe");
    assert_eq!(lu.len(), 1, "{lu:?}");
    let token = url_token(&lu[0]);
    let rp = return_path::verify(&keys, &token).expect("the URL token verifies");
    assert_eq!(rp.email_id.to_string(), id);
    assert_eq!(rp.rcpt_index, 0);
    assert_eq!(
        lu[0],
        format!(
            "<http://links.example.com/v1/unsubscribe/{token}>, <mailto:unsubscribe+{token}@bounces.example.com>"
        )
    );
    assert_eq!(
        fields(&data, "List-Unsubscribe-Post"),
        [ONE_CLICK.to_string()]
    );
    assert_eq!(
        fields(&data, "X-Trackrelay-Ref"),
        std::slice::from_ref(&token)
    );
    // The envelope sender carries the same token.
    assert_eq!(
        mx.received()[0].mail_from,
        format!("bounces+{token}@bounces.example.com")
    );

    // Both names are in the signature's h= list...
    let sig = fields(&data, "DKIM-Signature");
    assert_eq!(sig.len(), 1);
    let h: Vec<String> = sig[0]
        .split(';')
        .map(str::trim)
        .find_map(|t| t.strip_prefix("h="))
        .map(|h| h.replace([' ', '\t'], ""))
        .expect("an h= tag")
        .split(':')
        .map(|n| n.trim().to_ascii_lowercase())
        .collect();
    assert!(h.contains(&"list-unsubscribe".to_string()), "{h:?}");
    assert!(h.contains(&"list-unsubscribe-post".to_string()), "{h:?}");
    // ... and the signature verifies, with mail-auth and with dkimpy.
    let key = trackrelay::outbound::DkimKey::load(
        "example.com",
        "auto",
        &relay.data_dir().join("dkim/example.com.auto.pem"),
    )
    .unwrap();
    let records = vec![(key.dns_name(), key.dns_record())];
    let results = support::dkim::mail_auth_verify(&data, &records).await;
    assert_eq!(results, [mail_auth::DkimResult::Pass]);
    match support::dkim::dkimpy_verify(&data, &records) {
        Some(Ok(_)) => {}
        Some(Err(report)) => panic!("dkimpy: {report}"),
        None => support::dkim::skip_dkimpy("the_delivered_copy_carries_both_headers_dkim_signed"),
    }
    // Changing the header breaks the signature: it is covered, not merely listed.
    let text = String::from_utf8(data.clone()).unwrap();
    let tampered = text.replacen(
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
        "List-Unsubscribe-Post: List-Unsubscribe=Two-Click",
        1,
    );
    assert_ne!(tampered, text);
    let results = support::dkim::mail_auth_verify(tampered.as_bytes(), &records).await;
    assert_ne!(results, [mail_auth::DkimResult::Pass]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_header_turns_it_off_and_a_message_keeps_its_own() {
    let mx = TestMx::start(MxConfig::default()).await;
    let relay = relay_with(&mx, "", String::new());
    let off = [
        b"X-Track-Unsubscribe: false\r\n".to_vec(),
        message("news@example.com", "off@example.net", "s", "hello"),
    ]
    .concat();
    submit(&relay, "news@example.com", &["off@example.net"], &off);
    let own = [
        b"List-Unsubscribe: <mailto:leave@example.com>\r\nX-Trackrelay-Ref: forged\r\n".to_vec(),
        message("news@example.com", "own@example.net", "s", "hello"),
    ]
    .concat();
    submit(&relay, "news@example.com", &["own@example.net"], &own);
    assert!(
        mx.wait_for(2, Duration::from_secs(30)).await,
        "{}",
        relay.log()
    );

    let data = delivered_to(&mx, "off@example.net");
    assert!(fields(&data, "List-Unsubscribe").is_empty());
    assert!(fields(&data, "List-Unsubscribe-Post").is_empty());
    assert!(
        fields(&data, "X-Track-Unsubscribe").is_empty(),
        "control header removed"
    );
    assert_eq!(
        fields(&data, "X-Trackrelay-Ref").len(),
        1,
        "the reference is always there"
    );

    let data = delivered_to(&mx, "own@example.net");
    assert_eq!(
        fields(&data, "List-Unsubscribe"),
        ["<mailto:leave@example.com>".to_string()]
    );
    assert!(fields(&data, "List-Unsubscribe-Post").is_empty());
    let refs = fields(&data, "X-Trackrelay-Ref");
    assert_eq!(refs.len(), 1, "{refs:?}");
    assert_ne!(refs[0], "forged");
    assert!(return_path::verify(&relay_keys(&relay), &refs[0]).is_some());
    // The sender's own header is kept byte for byte.
    assert!(String::from_utf8_lossy(&data)
        .contains("\r\nList-Unsubscribe: <mailto:leave@example.com>\r\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_never_unsubscribes_one_click_post_does_once_and_the_next_message_is_suppressed() {
    let hooks = Receiver::start(SECRET).await;
    let mx = TestMx::start(MxConfig::default()).await;
    let relay = relay_with(&mx, "", webhook(&hooks));
    let rcpts = ["a@example.net", "b@example.net"];
    let first = submit(
        &relay,
        "news@example.com",
        &rcpts,
        &message("news@example.com", "a@example.net", "s", "hello"),
    );
    assert!(
        mx.wait_for(2, Duration::from_secs(30)).await,
        "{}",
        relay.log()
    );
    let token_a = url_token(&fields(&delivered_to(&mx, "a@example.net"), "List-Unsubscribe")[0]);
    let token_b = url_token(&fields(&delivered_to(&mx, "b@example.net"), "List-Unsubscribe")[0]);
    let path_a = format!("/v1/unsubscribe/{token_a}");

    // GET and HEAD: the confirmation page, and nothing else.
    let (code, headers, body) = request(relay.tracking, "GET", &path_a, &[], b"");
    assert_eq!(code, 200);
    assert!(body.contains("<form method=\"post\">"), "{body}");
    assert!(
        body.contains("name=\"List-Unsubscribe\" value=\"One-Click\""),
        "{body}"
    );
    assert!(!body.contains("<script"));
    let csp = header(&headers, "content-security-policy").unwrap();
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(header(&headers, "cache-control"), Some("no-store"));
    assert_eq!(header(&headers, "x-robots-tag"), Some("noindex"));
    assert!(header(&headers, "content-type")
        .unwrap()
        .starts_with("text/html"));
    let (code, _, body) = request(relay.tracking, "HEAD", &path_a, &[], b"");
    assert_eq!(code, 200);
    assert!(body.is_empty());
    // Another body: refused, nothing written.
    assert_eq!(post(&relay, &token_a, &[], "List-Unsubscribe=Maybe"), 400);
    assert_eq!(post(&relay, &token_a, &[], ""), 400);
    assert_eq!(unsubscribed_events(&relay), 0);
    assert_eq!(suppressions(&relay), 0);

    // The one-click POST.
    assert_eq!(
        post(&relay, &token_a, &[], &format!("{ONE_CLICK}\r\n")),
        200
    );
    let (event_id, detail): (i64, String) = relay
        .db()
        .query_row(
            "SELECT id, detail FROM events WHERE type = 'email.unsubscribed' AND email_id = ?1 AND recipient = 'a@example.net'",
            [&first],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let detail: serde_json::Value = serde_json::from_str(&detail).unwrap();
    assert_eq!(detail["via"], "one_click");
    let (address, scope, reason, linked): (String, String, String, i64) = relay
        .db()
        .query_row(
            "SELECT address, scope, reason, event_id FROM suppressions",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!(
        (address.as_str(), scope.as_str(), reason.as_str(), linked),
        ("a@example.net", "example.com", "unsubscribe", event_id)
    );
    // A retry (here multipart, as RFC 8058 prefers) adds nothing.
    let multipart = "--b0undary\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\nOne-Click\r\n--b0undary--\r\n";
    let (code, _, _) = request(
        relay.tracking,
        "POST",
        &path_a,
        &[("Content-Type", "multipart/form-data; boundary=b0undary")],
        multipart.as_bytes(),
    );
    assert_eq!(code, 200);
    assert_eq!(unsubscribed_events(&relay), 1);
    assert_eq!(suppressions(&relay), 1);

    // The page's button, from a browser, for the other recipient.
    assert_eq!(
        post(
            &relay,
            &token_b,
            &[
                ("Origin", "http://links.example.com"),
                ("Sec-Fetch-Mode", "navigate")
            ],
            ONE_CLICK
        ),
        200
    );
    let via_b: String = relay
        .db()
        .query_row(
            "SELECT json_extract(detail, '$.via') FROM events WHERE type = 'email.unsubscribed' AND recipient = 'b@example.net'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(via_b, "page");
    assert_eq!(unsubscribed_events(&relay), 2);
    // Counted in the stats, once per recipient.
    let out = relay.cli(&["stats", "--json", "--domain", "example.com"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["unsubscribed"], 2, "{stats}");

    // The webhook for each.
    wait_for("two unsubscribe webhooks", Duration::from_secs(30), || {
        hooks.accepted().len() >= 2
    });
    let got = hooks.accepted();
    assert_eq!(got.len(), 2, "{got:?}");
    for h in &got {
        assert!(h.signature_ok);
        assert_eq!(h.body["type"], "email.unsubscribed");
        assert_eq!(h.body["data"]["email_id"], first.as_str());
    }
    let a = got
        .iter()
        .find(|h| h.body["data"]["to"][0] == "a@example.net")
        .expect("a's webhook");
    assert_eq!(a.body["data"]["unsubscribe"]["via"], "one_click");

    // The next message from example.com to a is not sent; from example.org it is.
    let second = submit(
        &relay,
        "news@example.com",
        &["a@example.net"],
        &message("news@example.com", "a@example.net", "again", "hello"),
    );
    wait_for(
        "the second message suppressed",
        Duration::from_secs(30),
        || status(&relay, &second, "a@example.net").as_deref() == Some("suppressed"),
    );
    let reason: String = relay
        .db()
        .query_row(
            "SELECT json_extract(detail, '$.reason') FROM events WHERE type = 'email.suppressed' AND email_id = ?1",
            [&second],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(reason, "unsubscribe");
    let other = submit(
        &relay,
        "news@example.org",
        &["a@example.net"],
        &message("news@example.org", "a@example.net", "other", "hello"),
    );
    wait_for(
        "example.org's message delivered",
        Duration::from_secs(30),
        || status(&relay, &other, "a@example.net").as_deref() == Some("delivered"),
    );
    assert_eq!(mx.received().len(), 3, "first (2 copies) and example.org's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_invalid_and_unknown_tokens_are_404_and_write_nothing() {
    let mx = TestMx::start(MxConfig::default()).await;
    let relay = relay_with(&mx, "", String::new());
    let id = submit(
        &relay,
        "news@example.com",
        &["x@example.net"],
        &message("news@example.com", "x@example.net", "s", "hello"),
    );
    assert!(mx.wait_for(1, Duration::from_secs(30)).await);
    let keys = relay_keys(&relay);
    let email = uuid::Uuid::parse_str(&id).unwrap();
    let good = return_path::encode(&keys, email, 0);
    let forged = return_path::encode(&TokenKeys::new([9; 32], vec![]), email, 0);
    let mut flipped = good.clone().into_bytes();
    flipped[30] = if flipped[30] == b'a' { b'b' } else { b'a' };
    let flipped = String::from_utf8(flipped).unwrap();
    for token in [
        forged.as_str(),
        flipped.as_str(),
        "x",
        "",
        &good[..51],
        "%00%0d%0a",
    ] {
        let path = format!("/v1/unsubscribe/{token}");
        assert_eq!(
            request(relay.tracking, "GET", &path, &[], b"").0,
            404,
            "{token}"
        );
        assert_eq!(post(&relay, token, &[], ONE_CLICK), 404, "{token}");
    }
    // Signed by us, but for a recipient this store never had.
    let unknown = return_path::encode(&keys, email, 5);
    assert_eq!(post(&relay, &unknown, &[], ONE_CLICK), 404);
    assert_eq!(unsubscribed_events(&relay), 0);
    assert_eq!(suppressions(&relay), 0);
    // Upper case is the same token (MTAs and people may change case).
    assert_eq!(
        post(&relay, &good.to_ascii_uppercase(), &[], ONE_CLICK),
        200
    );
    assert_eq!(unsubscribed_events(&relay), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_unsubscribe_in_suppress_on_only_the_event_is_recorded() {
    let mx = TestMx::start(MxConfig::default()).await;
    let relay = relay_with(&mx, "suppress_on = [\"hard_bounce\"]", String::new());
    let msg = message("news@example.com", "keep@example.net", "s", "hello");
    submit(&relay, "news@example.com", &["keep@example.net"], &msg);
    assert!(mx.wait_for(1, Duration::from_secs(30)).await);
    let token = url_token(&fields(&delivered_to(&mx, "keep@example.net"), "List-Unsubscribe")[0]);
    assert_eq!(post(&relay, &token, &[], ONE_CLICK), 200);
    assert_eq!(unsubscribed_events(&relay), 1);
    assert_eq!(suppressions(&relay), 0);
    let suppressed: bool = relay
        .db()
        .query_row(
            "SELECT json_extract(detail, '$.suppressed') FROM events WHERE type = 'email.unsubscribed'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(!suppressed);
    // The application decides: its next message is delivered.
    let next = submit(&relay, "news@example.com", &["keep@example.net"], &msg);
    wait_for(
        "the next message delivered",
        Duration::from_secs(30),
        || status(&relay, &next, "keep@example.net").as_deref() == Some("delivered"),
    );
}
