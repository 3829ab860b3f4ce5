//! The dashboard, through the real binary: raw HTTP for the headers and
//! the refusals, then a real headless Chromium (Playwright driving the
//! system's /usr/bin/chromium, tests/helpers/ui_browser.py) that logs in,
//! reads the overview's charts, finds an email and its timeline, and
//! retries a deferred recipient, after which the MX sees the next attempt.
//!
//! Without Chromium or Playwright the browser part is skipped, loudly;
//! under `CI=true` it fails instead.

mod harness;
mod support;

use harness::*;
use std::process::Command;
use std::time::Duration;
use support::mx::{MxConfig, Script, TestMx};

const READER: &str = "reader@example.net";
const SLOW: &str = "slow@example.net";
const GONE: &str = "gone@example.net";
/// A remote reply with markup in it: shown as text on every page.
const DEFER: &str = "451 4.7.1 <b>greylisted</b> & come back later";
const SUBJECT: &str = "<script>alert(\"s\")</script> Welcome & hello";
const HOSTILE_UA: &str = "<img src=x onerror=alert(1)> Evil/1.0";
const LINK: &str = "https://example.org/welcome?a=1&b=2";
const THUNDERBIRD: &str =
    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.3.1";

fn html_message(to: &str, subject: &str) -> Vec<u8> {
    format!(
        "From: News <news@example.com>\r\nTo: {to}\r\nSubject: {subject}\r\nX-Tags: welcome\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n\
         <html><body><p>Hi</p><a href=\"https://example.org/welcome?a=1&amp;b=2\">go</a></body></html>\r\n"
    )
    .into_bytes()
}

/// The first tracking path of `kind` ("open" or "click") in a delivered copy.
fn tracking_path(data: &[u8], kind: &str) -> String {
    let text = String::from_utf8_lossy(data);
    let prefix = format!("http://links.example.com/v1/track/{kind}/");
    let i = text
        .find(&prefix)
        .unwrap_or_else(|| panic!("no {kind} link in {text}"));
    let tail = &text[i + "http://links.example.com".len()..];
    let end = tail.find(['"', '\'', ' ', '>']).unwrap_or(tail.len());
    tail[..end].to_string()
}

fn count(relay: &Relay, sql: &str) -> i64 {
    relay.db().query_row(sql, [], |r| r.get(0)).unwrap()
}

fn start_relay(mx: &TestMx) -> Relay {
    Relay::start(Options {
        submission: "trusted_networks = [\"127.0.0.0/8\"]".into(),
        domain: "open_tracking = true\nclick_tracking = true\ntracking_subdomain = \"links\""
            .into(),
        tracking: "machine_click_window = \"0s\"".into(),
        // A deferred recipient waits an hour unless someone retries it.
        delivery: format!(
            "routes = {{ \"example.net\" = \"{}\" }}\nretry = [\"1h\"]",
            mx.addr()
        ),
        api_token: true,
        // An endpoint that is never up: the email page lists the webhooks
        // queued for its events, with their errors.
        extra: format!(
            "[[webhooks]]\nurl = \"http://127.0.0.1:{}/hook\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\nevents = [\"*\"]",
            closed_port()
        ),
        ..Options::default()
    })
}

/// The port of the (closed) webhook endpoint in the relay's config.
fn hook_port(relay: &Relay) -> u16 {
    let config = std::fs::read_to_string(&relay.config_path).unwrap();
    between(&config, "url = \"http://127.0.0.1:", "/hook")
        .parse()
        .unwrap()
}

/// `name=value` of the `Set-Cookie` headers named `name`.
fn set_cookie<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .filter(|(k, _)| k == "set-cookie")
        .map(|(_, v)| v.as_str())
        .find(|v| v.starts_with(&format!("{name}=")))
}

fn cookie_value(set_cookie: &str) -> &str {
    set_cookie
        .split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1
}

/// A raw HTTP POST with a form body (the harness's `http` sends no body).
fn post(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    let host = addr.to_string();
    let mut all = vec![
        ("Host", host.as_str()),
        ("Content-Type", "application/x-www-form-urlencoded"),
    ];
    all.extend_from_slice(headers);
    let (status, headers, body) =
        harness::http_with_body(addr, "POST", path, &all, body.as_bytes());
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// Logs in over raw HTTP: (session cookie header value, CSRF token).
fn login(relay: &Relay) -> (String, String) {
    let host = relay.api.to_string();
    let (status, headers, body) = http(relay.api, "GET", "/login", &[("Host", &host)]);
    assert_eq!(status, 200);
    let login_cookie = set_cookie(&headers, "trackrelay_login").expect("a login cookie");
    let body = String::from_utf8(body).unwrap();
    let csrf = between(&body, "name=\"csrf\" value=\"", "\"");
    let cookie = format!("trackrelay_login={}", cookie_value(login_cookie));
    let (status, headers, _) = post(
        relay.api,
        "/login",
        &[("Cookie", &cookie)],
        &format!("csrf={csrf}&token={API_TOKEN}"),
    );
    assert_eq!(status, 303);
    let session = set_cookie(&headers, "trackrelay_session").expect("a session cookie");
    let session = format!("trackrelay_session={}", cookie_value(session));
    let (status, _, body) = http(
        relay.api,
        "GET",
        "/queue",
        &[("Host", &host), ("Cookie", &session)],
    );
    assert_eq!(status, 200);
    let body = String::from_utf8(body).unwrap();
    let csrf = between(&body, "name=\"csrf\" value=\"", "\"");
    (session, csrf)
}

fn between(s: &str, start: &str, end: &str) -> String {
    let i = s.find(start).unwrap_or_else(|| panic!("no {start} in {s}")) + start.len();
    s[i..i + s[i..].find(end).unwrap()].to_string()
}

/// Headers, cookies and refusals over raw HTTP (no browser needed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_sessions_csrf_and_headers() {
    let mx = TestMx::start(MxConfig::default()).await;
    let relay = start_relay(&mx);
    let host = relay.api.to_string();

    // Pages need a session; the JSON API keeps its own answers.
    let (status, headers, _) = http(relay.api, "GET", "/", &[("Host", &host)]);
    assert_eq!(status, 303);
    assert_eq!(header(&headers, "location"), Some("/login"));
    assert_eq!(
        http(relay.api, "GET", "/no/such/path", &[("Host", &host)]).0,
        401
    );
    assert_eq!(
        http(relay.api, "GET", "/v1/stats", &[("Host", &host)]).0,
        401
    );

    let (status, headers, body) = http(relay.api, "GET", "/login", &[("Host", &host)]);
    assert_eq!(status, 200);
    let csp = header(&headers, "content-security-policy").expect("a CSP");
    assert!(
        csp.contains("default-src 'self'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(header(&headers, "x-frame-options"), Some("DENY"));
    let body = String::from_utf8(body).unwrap();
    assert!(body.contains("name=\"token\""));
    assert!(!body.contains("<script"), "no script at all");
    // The stylesheet: immutable under a hashed name, with an ETag.
    let css = between(&body, "rel=\"stylesheet\" href=\"", "\"");
    let (status, headers, _) = http(relay.api, "GET", &css, &[("Host", &host)]);
    assert_eq!(status, 200);
    assert!(header(&headers, "cache-control")
        .unwrap()
        .contains("immutable"));
    let etag = header(&headers, "etag").unwrap().to_string();
    let (status, _, _) = http(
        relay.api,
        "GET",
        &css,
        &[("Host", &host), ("If-None-Match", &etag)],
    );
    assert_eq!(status, 304);

    let (session, csrf) = login(&relay);
    let (status, headers, _) = post(relay.api, "/login", &[], "token=x");
    assert_eq!(status, 403, "a login form without its token is refused");
    assert!(set_cookie(&headers, "trackrelay_session").is_none());

    // Session cookie flags: HttpOnly, SameSite=Strict, Path=/, and Secure
    // only when a trusted proxy says the browser used HTTPS.
    let (_, headers, body) = http(relay.api, "GET", "/login", &[("Host", &host)]);
    let lc = cookie_value(set_cookie(&headers, "trackrelay_login").unwrap()).to_string();
    let lcsrf = between(
        &String::from_utf8(body).unwrap(),
        "name=\"csrf\" value=\"",
        "\"",
    );
    let (status, headers, _) = post(
        relay.api,
        "/login",
        &[
            ("Cookie", &format!("trackrelay_login={lc}")),
            ("X-Forwarded-Proto", "https"),
        ],
        &format!("csrf={lcsrf}&token={API_TOKEN}"),
    );
    assert_eq!(status, 303);
    let sc = set_cookie(&headers, "trackrelay_session").unwrap();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/", "Secure"] {
        assert!(sc.contains(flag), "{sc}");
    }
    assert!(!session.is_empty());

    // Email ids of a waiting recipient to aim the forged POSTs at.
    let id = submit(
        &relay,
        "news@example.com",
        &[READER],
        &html_message(READER, "x"),
    );
    let form = format!("email_id={id}&csrf={csrf}");
    let with_session = [("Cookie", session.as_str())];
    let (status, _, body) = post(
        relay.api,
        "/queue/retry",
        &with_session,
        &format!("email_id={id}"),
    );
    assert_eq!(status, 403, "no CSRF token: {body}");
    let (status, _, _) = post(
        relay.api,
        "/queue/retry",
        &with_session,
        &format!("email_id={id}&csrf=AAAA{csrf}"),
    );
    assert_eq!(status, 403, "a wrong CSRF token");
    let (status, _, body) = post(
        relay.api,
        "/queue/retry",
        &[("Cookie", &session), ("Origin", "http://evil.example")],
        &form,
    );
    assert_eq!(status, 403, "a foreign Origin: {body}");
    let (status, _, _) = post(
        relay.api,
        "/queue/retry",
        &[("Cookie", &session), ("Sec-Fetch-Site", "cross-site")],
        &form,
    );
    assert_eq!(status, 403, "Sec-Fetch-Site: cross-site");
    let (status, _, _) = post(relay.api, "/queue/retry", &[], &form);
    assert_eq!(status, 403, "no session");
    let (status, headers, _) = post(
        relay.api,
        "/queue/retry",
        &[
            ("Cookie", &session),
            ("Origin", &format!("http://{host}")),
            ("Sec-Fetch-Site", "same-origin"),
        ],
        &form,
    );
    assert_eq!(status, 303, "the real form is accepted");
    assert!(header(&headers, "location")
        .unwrap()
        .starts_with("/queue?retried="));
    // Behind a proxy that rewrites Host, its X-Forwarded-Host names the
    // origin (loopback is a trusted proxy in the harness's config).
    let (status, _, _) = post(
        relay.api,
        "/queue/retry",
        &[
            ("Cookie", &session),
            ("Origin", "https://admin.example.com"),
            ("X-Forwarded-Host", "admin.example.com"),
        ],
        &form,
    );
    assert_eq!(status, 303, "the origin a trusted proxy forwarded");
    // A logged-in visit to the login form goes to the overview.
    let (status, headers, _) = http(
        relay.api,
        "GET",
        "/login",
        &[("Host", &host), ("Cookie", &session)],
    );
    assert_eq!((status, header(&headers, "location")), (303, Some("/")));

    // Logout ends the session on the server, whatever the browser keeps.
    let (status, _, _) = post(relay.api, "/logout", &with_session, &format!("csrf={csrf}"));
    assert_eq!(status, 303);
    let (status, headers, _) = http(
        relay.api,
        "GET",
        "/queue",
        &[("Host", &host), ("Cookie", &session)],
    );
    assert_eq!(status, 303);
    assert_eq!(header(&headers, "location"), Some("/login"));

    // Wrong tokens are throttled as on the API: after a run of them even
    // the right one waits.
    let mut throttled = false;
    for _ in 0..40 {
        let (_, headers, body) = http(relay.api, "GET", "/login", &[("Host", &host)]);
        let lc = cookie_value(set_cookie(&headers, "trackrelay_login").unwrap()).to_string();
        let lcsrf = between(
            &String::from_utf8(body).unwrap(),
            "name=\"csrf\" value=\"",
            "\"",
        );
        let (status, _, _) = post(
            relay.api,
            "/login",
            &[("Cookie", &format!("trackrelay_login={lc}"))],
            &format!("csrf={lcsrf}&token=wrong-token"),
        );
        if status == 429 {
            throttled = true;
            break;
        }
        assert_eq!(status, 401);
    }
    assert!(throttled, "40 wrong tokens in a row were never throttled");
}

/// A DMARC record as whoever controls the zone may publish it.
const HOSTILE_DMARC: &str = "v=DMARC1; p=none; rua=mailto:<img src=x onerror=alert(1)>@example.com";

/// A page over raw HTTP with the session: (status, body).
fn ui_get(relay: &Relay, session: &str, path: &str) -> (u16, String) {
    let host = relay.api.to_string();
    let (status, _, body) = http(
        relay.api,
        "GET",
        path,
        &[("Host", &host), ("Cookie", session)],
    );
    (status, String::from_utf8(body).unwrap())
}

/// The Domains pages against a stub DNS: the list with each domain's
/// status as the API has it, and example.com's page with every record the
/// checker stored (names, expected, found), the hostile DMARC record
/// shown as text, the tracking host in use and the previous one, the
/// certificate's expiry read from `tracking_tls_cert`, the settings and
/// the history; an unconfigured name is a 404 page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domains_pages_show_records_certificate_and_escape_dns() {
    let dns = support::dns::DnsStub::start().await;
    dns.txt("_dmarc.example.com", HOSTILE_DMARC)
        .txt("example.com", "v=spf1 ip4:127.0.0.1 -all");
    let certs = tempfile::tempdir().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["links.example.com".into()]).unwrap();
    params.not_after = rcgen::date_time_ymd(2031, 5, 17);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (
        certs.path().join("links.pem"),
        certs.path().join("links.key"),
    );
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let relay = Relay::start(Options {
        domain: format!(
            "click_tracking = true\ntracking_subdomain = \"links\"\n\
             previous_tracking_subdomains = [\"t-old\"]\nreturn_path = \"bounces\"\n\
             tracking_tls_cert = \"{}\"\ntracking_tls_key = \"{}\"\n\
             dkim = [{{ selector = \"s1\" }}]",
            cert_path.display(),
            key_path.display()
        ),
        delivery: format!("resolver = \"{}\"", dns.resolver()),
        extra: "[domain_checks]\ninterval = \"200ms\"\nverified_interval = \"200ms\"".into(),
        api_token: true,
        ..Options::default()
    });
    let (session, _) = login(&relay);
    let auth = format!("Bearer {API_TOKEN}");
    let api = |path: &str| -> serde_json::Value {
        let (status, _, body) = http(relay.api, "GET", path, &[("Authorization", &auth)]);
        assert_eq!(status, 200);
        serde_json::from_slice(&body).unwrap()
    };
    wait_for("example.com's first check", Duration::from_secs(30), || {
        !api("/v1/domains/example.com")["checked_at"].is_null()
            && ui_get(&relay, &session, "/domains/example.com")
                .1
                .contains("onerror")
    });
    // Read the API after the page so the page is never newer than it.
    let (status, page) = ui_get(&relay, &session, "/domains/example.com");
    let v = api("/v1/domains/example.com");
    assert_eq!(status, 200);
    assert!(page.contains("<a href=\"/domains\" aria-current=\"page\">Domains</a>"));
    let st = v["status"].as_str().unwrap();
    assert!(
        page.contains(&format!("<span class=\"st st-{st}\">{st}</span>")),
        "{st}: {page}"
    );
    let records = v["records"].as_array().unwrap();
    assert!(records.len() >= 4, "{v:#}");
    for r in records {
        let name = r["name"].as_str().unwrap();
        // Each record's row shows its name, expected value and status.
        let kind = r["record"].as_str().unwrap();
        let row_at = page
            .find(&format!("<td data-label=\"Record\">{kind} "))
            .unwrap_or_else(|| panic!("no {kind} row: {page}"));
        let row = &page[row_at..row_at + page[row_at..].find("</tr>").unwrap()];
        if !name.is_empty() {
            assert!(row.contains(&format!("<code>{name}</code>")), "{row}");
        }
        let st = r["status"].as_str().unwrap();
        assert!(row.contains(&format!("st-{st}\">{st}<")), "{row}");
    }
    // The hostile found record lands as text, never as markup.
    assert!(
        page.contains("rua=mailto:&lt;img src=x onerror=alert(1)&gt;@example.com"),
        "{page}"
    );
    assert!(!page.contains("<img"), "{page}");
    assert!(
        page.contains("<code>v=DMARC1; p=none</code>"),
        "the expected DMARC"
    );
    assert!(page.contains("required") && page.contains("recommended"));
    // Tracking: what the API says is in use, and why; the old host.
    let in_use = v["tracking"]["in_use"].as_str().unwrap();
    assert!(
        page.contains(&format!("<dt>In use</dt><dd><code>{in_use}</code>")),
        "{page}"
    );
    let why = v["tracking"]["reason"].as_str().unwrap();
    assert!(!why.is_empty());
    assert!(page.contains("<code>t-old.example.com</code>"), "{page}");
    assert!(page.contains("expires 2031-05-17 00:00:00 UTC"), "{page}");
    // Settings and history (newest first, as the API lists it).
    assert!(page.contains("<dt>Click tracking</dt><dd>on</dd>"));
    assert!(page.contains("<dt>Open tracking</dt><dd>off</dd>"));
    assert!(page.contains("<dt>Return path</dt><dd><code>bounces</code></dd>"));
    assert!(page.contains("<dt>DKIM selectors</dt><dd><code>s1</code></dd>"));
    let history = v["history"].as_array().unwrap();
    assert!(!history.is_empty(), "{v:#}");
    let newest = history[0]["to"].as_str().unwrap();
    let h = &page[page.find("Status history").unwrap()..];
    assert!(h.contains(&format!("st-{newest}")), "{h}");

    // The list: every configured domain, with the status the API has.
    let (status, list) = ui_get(&relay, &session, "/domains");
    assert_eq!(status, 200);
    for d in api("/v1/domains")["data"].as_array().unwrap() {
        let name = d["name"].as_str().unwrap();
        let st = d["status"].as_str().unwrap();
        assert!(
            list.contains(&format!("<a href=\"/domains/{name}\">{name}</a>")),
            "{list}"
        );
        assert!(list.contains(&format!("st-{st}")), "{list}");
    }
    assert!(list.contains("example.org"));

    let (status, missing) = ui_get(&relay, &session, "/domains/%3Cb%3Enope.example");
    assert_eq!(status, 404);
    assert!(missing.contains("is not a configured domain"), "{missing}");
    assert!(!missing.contains("<b>"));
}

/// Whether the browser part can run: `Some(reason)` when it cannot.
fn browser_missing() -> Option<String> {
    let chromium = std::env::var("TRACKRELAY_CHROMIUM").unwrap_or("/usr/bin/chromium".into());
    if !std::path::Path::new(&chromium).exists() {
        return Some(format!("{chromium} is missing (apt-get install chromium)"));
    }
    match Command::new("python3")
        .args(["-c", "import playwright"])
        .output()
    {
        Ok(o) if o.status.success() => None,
        _ => Some("python3 with playwright is missing (pip install playwright)".into()),
    }
}

fn screenshot_dir() -> std::path::PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("ui-screenshots")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_browser_logs_in_reads_and_retries() {
    if let Some(why) = browser_missing() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI=true and the browser test cannot run: {why}");
        }
        eprintln!("SKIPPED a_real_browser_logs_in_reads_and_retries: {why}");
        return;
    }
    let mx = TestMx::start(
        MxConfig::default()
            .script(SLOW, Script::first(1, DEFER))
            .script(GONE, Script::always("550 5.1.1 no such user")),
    )
    .await;
    let relay = start_relay(&mx);
    let hook_port = hook_port(&relay);
    let id = submit(
        &relay,
        "news@example.com",
        &[READER],
        &html_message(READER, SUBJECT),
    );
    let slow_id = submit(
        &relay,
        "news@example.com",
        &[SLOW],
        &html_message(SLOW, "Greylisted"),
    );
    submit(
        &relay,
        "news@example.com",
        &[GONE],
        &html_message(GONE, "Bounces"),
    );
    assert!(
        mx.wait_for(1, Duration::from_secs(30)).await,
        "the reader's copy arrives"
    );
    wait_for(
        "the slow recipient deferred, the gone one bounced and suppressed",
        Duration::from_secs(30),
        || {
            count(
                &relay,
                "SELECT COUNT(*) FROM recipients WHERE status = 'deferred'",
            ) == 1
                && count(
                    &relay,
                    "SELECT COUNT(*) FROM recipients WHERE status = 'bounced'",
                ) == 1
                && count(&relay, "SELECT COUNT(*) FROM suppressions") == 1
        },
    );
    let copy = mx
        .received()
        .into_iter()
        .find(|r| r.rcpt_to[0] == READER)
        .unwrap();
    let (open, click) = (
        tracking_path(&copy.data, "open"),
        tracking_path(&copy.data, "click"),
    );
    let host = ("Host", "links.example.com");
    // A person opens (a mail client), a link checker HEADs the pixel (a
    // machine), and someone with a hostile User-Agent clicks.
    assert_eq!(
        http(
            relay.tracking,
            "GET",
            &open,
            &[host, ("User-Agent", THUNDERBIRD)]
        )
        .0,
        200
    );
    assert_eq!(
        http(
            relay.tracking,
            "HEAD",
            &open,
            &[host, ("User-Agent", "curl/8.0")]
        )
        .0,
        200
    );
    assert_eq!(
        http(
            relay.tracking,
            "GET",
            &click,
            &[host, ("User-Agent", HOSTILE_UA)]
        )
        .0,
        302
    );
    wait_for(
        "opens and the click recorded",
        Duration::from_secs(30),
        || {
            count(
                &relay,
                "SELECT COUNT(*) FROM events WHERE type IN ('email.opened', 'email.clicked')",
            ) == 3
        },
    );

    let params = serde_json::json!({
        "base": format!("http://{}", relay.api),
        "token": API_TOKEN,
        "reader": READER,
        "slow": SLOW,
        "gone": GONE,
        "hook_url": format!("http://127.0.0.1:{hook_port}/hook"),
        "email_id": id,
        "slow_email_id": slow_id,
        "subject": SUBJECT,
        "hostile_ua": HOSTILE_UA,
        "link": LINK,
        "defer_reason": DEFER,
        "expect": {
            "sent": 3, "delivered": 1, "delayed": 1, "bounced": 1,
            "opened_human": 1, "opened_machine": 1, "clicked_human": 1,
        },
        "shots": screenshot_dir(),
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/helpers/ui_browser.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .arg(params.to_string())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "browser run failed ({}):\n{stderr}\n{stdout}",
        out.status
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).expect("the script's JSON");
    assert_eq!(seen["wrong_token_status"], 401);
    assert_eq!(seen["no_csrf_status"], 403);
    assert_eq!(seen["cross_origin_status"], 403);
    assert_eq!(seen["cross_site_form_status"], 403);
    let auth = format!("Bearer {API_TOKEN}");
    let (_, _, body) = http(
        relay.api,
        "GET",
        "/v1/domains/example.com",
        &[("Authorization", &auth)],
    );
    let api: serde_json::Value = serde_json::from_slice(&body).unwrap();
    // The checker may have moved on since the page was drawn: the
    // status shown is the API's now or one in its history.
    let shown = &seen["domain_status"];
    assert!(
        *shown == api["status"]
            || api["history"]
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h["from"] == *shown || h["to"] == *shown),
        "shown {shown}, API {api}"
    );
    assert_eq!(seen["cookie"]["httpOnly"], true);
    assert_eq!(
        seen["cookie"]["secure"], false,
        "plain HTTP without a proxy"
    );

    // The retry clicked in the browser: the next attempt happens now (the
    // schedule alone would wait an hour), and the MX takes the copy.
    assert!(
        mx.wait_for(2, Duration::from_secs(30)).await,
        "the retried attempt reaches the MX"
    );
    wait_for(
        "the slow recipient delivered",
        Duration::from_secs(30),
        || {
            count(
            &relay,
            &format!("SELECT COUNT(*) FROM recipients WHERE email_id = '{slow_id}' AND status = 'delivered'"),
        ) == 1
        },
    );
    let dir = screenshot_dir();
    assert_eq!(seen["suppressions_after"], 1, "only the bounce remains");
    for page in [
        "login",
        "overview",
        "emails",
        "email",
        "queue",
        "suppressions",
        "webhooks",
    ] {
        for width in ["desktop", "phone"] {
            let f = dir.join(format!("{page}-{width}.png"));
            assert!(
                f.metadata().map(|m| m.len() > 1000).unwrap_or(false),
                "{}",
                f.display()
            );
        }
    }
}
