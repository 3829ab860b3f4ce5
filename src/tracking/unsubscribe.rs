//! `GET|HEAD|POST /v1/unsubscribe/{token}` on the tracking host: the URL of
//! the List-Unsubscribe header (RFC 2369, one-click per RFC 8058).
//!
//! - The token is the return-path token (src/feedback/return_path.rs). One
//!   that does not verify gets 404 and never reaches the database, as for
//!   tracking tokens.
//! - `GET`/`HEAD` only show a confirmation page whose button POSTs the
//!   one-click body to the same URL: link scanners and prefetchers follow
//!   every URL in a message, so a GET must never unsubscribe anyone.
//! - `POST` with the body `List-Unsubscribe=One-Click` (form-urlencoded or
//!   multipart/form-data, as RFC 8058 allows) unsubscribes, durably, before
//!   the 200. Any other body: 400, nothing written.

use crate::feedback::return_path;
use crate::prepare::TokenKeys;
use crate::store::tracking::{UnsubscribeOutcome as Outcome, UnsubscribeRequest, Via};
use crate::store::Store;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use ipnet::IpNet;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub const PREFIX: &str = "/v1/unsubscribe/";
/// The one-click body is 26 bytes, 300 or so as multipart; anything much
/// larger is not a mail client's request.
const MAX_BODY: usize = 4096;
/// A body that has not arrived by then is not coming.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

type Body = Full<Bytes>;

pub struct Unsubscriber {
    keys: Arc<TokenKeys>,
    store: Store,
    trusted_proxies: Vec<IpNet>,
    /// Sending domains (lowercased) whose `suppress_on` has `unsubscribe`.
    suppressing: Arc<HashSet<String>>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Unsubscriber {
    pub fn new(
        keys: Arc<TokenKeys>,
        store: Store,
        trusted_proxies: Vec<IpNet>,
        suppressing: HashSet<String>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        Unsubscriber {
            keys,
            store,
            trusted_proxies,
            suppressing: Arc::new(suppressing),
            metrics,
        }
    }

    /// Answers a request whose path starts with [`PREFIX`].
    pub async fn handle<B>(&self, req: Request<B>, peer: SocketAddr) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let token = req.uri().path().strip_prefix(PREFIX).unwrap_or_default();
        let Some(rp) = return_path::verify(&self.keys, token) else {
            self.metrics.tracking_invalid.inc();
            return page(StatusCode::NOT_FOUND, Page::NotFound);
        };
        match *req.method() {
            Method::GET | Method::HEAD => page(StatusCode::OK, Page::Confirm),
            Method::POST => self.post(req, peer, rp).await,
            _ => {
                let mut r = page(StatusCode::METHOD_NOT_ALLOWED, Page::BadRequest);
                r.headers_mut()
                    .insert("allow", HeaderValue::from_static("GET, HEAD, POST"));
                r
            }
        }
    }

    async fn post<B>(
        &self,
        req: Request<B>,
        peer: SocketAddr,
        rp: return_path::ReturnPath,
    ) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let ip = super::listener::client_ip(&req, peer, &self.trusted_proxies);
        let header = |name: HeaderName| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let content_type = header(hyper::header::CONTENT_TYPE);
        let user_agent =
            header(hyper::header::USER_AGENT).map(|s| s.chars().take(1024).collect::<String>());
        let via = if from_a_browser(&req) {
            Via::Page
        } else {
            Via::OneClick
        };
        let collected = tokio::time::timeout(
            BODY_TIMEOUT,
            Limited::new(req.into_body(), MAX_BODY).collect(),
        )
        .await;
        let body = match collected {
            Ok(Ok(c)) => c.to_bytes(),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                return page(StatusCode::PAYLOAD_TOO_LARGE, Page::BadRequest)
            }
            // The client went away or broke the framing: nobody to answer.
            Ok(Err(_)) => return page(StatusCode::BAD_REQUEST, Page::BadRequest),
            Err(_) => return page(StatusCode::REQUEST_TIMEOUT, Page::BadRequest),
        };
        if !is_one_click(content_type.as_deref(), &body) {
            return page(StatusCode::BAD_REQUEST, Page::BadRequest);
        }
        let request = UnsubscribeRequest {
            email_id: rp.email_id.to_string(),
            rcpt_idx: rp.rcpt_index,
            via,
            at: crate::time::now_ms(),
            ip: Some(ip.to_string()),
            user_agent,
        };
        let written = self
            .store
            .unsubscribe(request, self.suppressing.clone())
            .await;
        match written {
            Ok(Outcome::Unsubscribed { .. }) => {
                tracing::info!(email_id = %rp.email_id, rcpt = rp.rcpt_index, via = via.as_str(), "recipient unsubscribed");
                page(StatusCode::OK, Page::Done)
            }
            Ok(Outcome::Repeated { .. }) => page(StatusCode::OK, Page::Done),
            Ok(Outcome::UnknownRecipient) => {
                tracing::info!(email_id = %rp.email_id, rcpt = rp.rcpt_index, "unsubscribe for a recipient this store does not have");
                page(StatusCode::NOT_FOUND, Page::NotFound)
            }
            Err(e) => {
                tracing::error!(email_id = %rp.email_id, "recording an unsubscribe: {e}");
                let mut r = page(StatusCode::SERVICE_UNAVAILABLE, Page::TryLater);
                r.headers_mut()
                    .insert("retry-after", HeaderValue::from_static("60"));
                r
            }
        }
    }
}

/// Whether a POST comes from our page in a browser rather than from a mail
/// provider's one-click request (server to server, which sends none of
/// these). Only for `detail.via`: both unsubscribe alike.
fn from_a_browser<B>(req: &Request<B>) -> bool {
    let h = req.headers();
    let is = |name: &str, want: &str| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case(want))
    };
    is("sec-fetch-mode", "navigate") || is("sec-fetch-dest", "document") || h.contains_key("origin")
}

/// Whether `body` says exactly `List-Unsubscribe=One-Click`, in one of the
/// encodings RFC 8058 allows: `application/x-www-form-urlencoded` (also
/// assumed when the type is missing or text/plain, which some clients
/// send), percent-encoded or not, with a trailing line end tolerated; or
/// `multipart/form-data` with that one field.
pub fn is_one_click(content_type: Option<&str>, body: &[u8]) -> bool {
    let media = content_type
        .and_then(|c| c.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase())
        .unwrap_or_default();
    match media.as_str() {
        "" | "application/x-www-form-urlencoded" | "text/plain" => {
            let body = body.trim_ascii_end();
            let mut fields = url::form_urlencoded::parse(body);
            matches!(fields.next(), Some((k, v)) if k == "List-Unsubscribe" && v == "One-Click")
                && fields.next().is_none()
        }
        "multipart/form-data" => content_type.is_some_and(|ct| one_click_multipart(ct, body)),
        _ => false,
    }
}

/// mail-parser reads MIME multiparts; form-data is one.
fn one_click_multipart(content_type: &str, body: &[u8]) -> bool {
    use mail_parser::MimeHeaders;
    if content_type.contains(['\r', '\n']) {
        return false;
    }
    let mut mime = format!("Content-Type: {content_type}\r\n\r\n").into_bytes();
    mime.extend_from_slice(body);
    let Some(msg) = mail_parser::MessageParser::default().parse(&mime) else {
        return false;
    };
    let mut fields = msg
        .parts
        .iter()
        .filter(|p| !matches!(p.body, mail_parser::PartType::Multipart(_)));
    let one = fields.next().is_some_and(|p| {
        let name = p
            .content_disposition()
            .filter(|d| d.ctype().eq_ignore_ascii_case("form-data"))
            .and_then(|d| d.attribute("name"));
        let value = match &p.body {
            mail_parser::PartType::Text(t) => t.as_bytes(),
            mail_parser::PartType::Binary(b) | mail_parser::PartType::InlineBinary(b) => b,
            _ => return false,
        };
        name == Some("List-Unsubscribe") && value.trim_ascii() == b"One-Click"
    });
    one && fields.next().is_none()
}

enum Page {
    Confirm,
    Done,
    NotFound,
    BadRequest,
    TryLater,
}

/// Small, script-free pages; nothing in them comes from the request.
fn page(status: StatusCode, which: Page) -> Response<Body> {
    let (title, text, form) = match which {
        Page::Confirm => (
            "Unsubscribe",
            "Do you want to stop receiving these emails at this address?",
            true,
        ),
        Page::Done => (
            "Unsubscribed",
            "You are unsubscribed. You will not receive these emails any more.",
            false,
        ),
        Page::NotFound => (
            "Link not found",
            "This unsubscribe link is not valid, or no longer known here.",
            false,
        ),
        Page::BadRequest => (
            "Bad request",
            "This request cannot unsubscribe anyone. Use the button on the unsubscribe page.",
            false,
        ),
        Page::TryLater => (
            "Please try again",
            "Your request could not be recorded just now. Please try again in a minute.",
            false,
        ),
    };
    // An empty action posts back to this very URL, so the page needs no
    // copy of the token.
    let form = if form {
        "<form method=\"post\"><button type=\"submit\" name=\"List-Unsubscribe\" value=\"One-Click\">Unsubscribe</button></form>\n"
    } else {
        ""
    };
    let html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"robots\" content=\"noindex\">\n<title>{title}</title>\n</head>\n<body>\n\
         <h1>{title}</h1>\n<p>{text}</p>\n{form}</body>\n</html>\n",
        title = htmlize::escape_text(title),
        text = htmlize::escape_text(text),
    );
    let mut r = Response::new(Full::new(Bytes::from(html)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    let set = |h: &mut hyper::HeaderMap, k: &'static str, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(h, "content-type", "text/html; charset=utf-8");
    set(
        h,
        "content-security-policy",
        "default-src 'none'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(h, "cache-control", "no-store");
    set(h, "x-robots-tag", "noindex");
    // The URL holds the token: no page a link leads to may see it.
    set(h, "referrer-policy", "no-referrer");
    set(h, "x-content-type-options", "nosniff");
    set(h, "x-frame-options", "DENY");
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_click_bodies_that_count() {
        let form = Some("application/x-www-form-urlencoded");
        assert!(is_one_click(form, b"List-Unsubscribe=One-Click"));
        assert!(is_one_click(form, b"List-Unsubscribe=One-Click\r\n"));
        assert!(is_one_click(form, b"List-Unsubscribe=One-Click\n"));
        assert!(is_one_click(form, b"List%2DUnsubscribe=One%2dClick"));
        assert!(is_one_click(
            Some("Application/X-WWW-Form-Urlencoded; charset=UTF-8"),
            b"List-Unsubscribe=One-Click"
        ));
        assert!(is_one_click(None, b"List-Unsubscribe=One-Click"));
        assert!(is_one_click(
            Some("text/plain"),
            b"List-Unsubscribe=One-Click"
        ));
    }

    #[test]
    fn other_bodies_do_not() {
        let form = Some("application/x-www-form-urlencoded");
        for body in [
            &b""[..],
            b"List-Unsubscribe=One-Click&x=1",
            b"x=1&List-Unsubscribe=One-Click",
            b"List-Unsubscribe=one-click",
            b"List-Unsubscribe=One-Click-Please",
            b"List-Unsubscribe",
            b" List-Unsubscribe=One-Click",
            b"List-Unsubscribe=One+Click",
        ] {
            assert!(
                !is_one_click(form, body),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        assert!(!is_one_click(
            Some("application/json"),
            b"List-Unsubscribe=One-Click"
        ));
    }

    fn multipart(fields: &[(&str, &str)]) -> Vec<u8> {
        let mut b = String::new();
        for (name, value) in fields {
            b.push_str(&format!(
                "--XyZ\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            ));
        }
        b.push_str("--XyZ--\r\n");
        b.into_bytes()
    }

    #[test]
    fn multipart_form_data_as_rfc_8058_prefers() {
        let ct = Some("multipart/form-data; boundary=XyZ");
        assert!(is_one_click(
            ct,
            &multipart(&[("List-Unsubscribe", "One-Click")])
        ));
        assert!(!is_one_click(
            ct,
            &multipart(&[("List-Unsubscribe", "Nope")])
        ));
        assert!(!is_one_click(ct, &multipart(&[("Other", "One-Click")])));
        assert!(!is_one_click(
            ct,
            &multipart(&[("List-Unsubscribe", "One-Click"), ("x", "y")])
        ));
        assert!(!is_one_click(ct, b"garbage"));
        assert!(!is_one_click(
            Some("multipart/form-data; boundary=XyZ\r\nX: y"),
            &multipart(&[("List-Unsubscribe", "One-Click")])
        ));
    }

    fn request(method: &str, path: &str, body: &str) -> Request<Full<Bytes>> {
        Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap()
    }

    #[test]
    fn pages_are_locked_down_and_the_form_posts_one_click() {
        let r = page(StatusCode::OK, Page::Confirm);
        let h = r.headers();
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(!csp.contains("unsafe-inline") && csp.contains("default-src 'none'"));
        assert_eq!(h["cache-control"], "no-store");
        assert_eq!(h["x-robots-tag"], "noindex");
        let body = futures_body(r);
        assert!(body.contains("<form method=\"post\">"), "{body}");
        assert!(body.contains("name=\"List-Unsubscribe\" value=\"One-Click\""));
        assert!(!body.contains("<script"));
    }

    fn futures_body(r: Response<Body>) -> String {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let b = rt.block_on(r.into_body().collect()).unwrap().to_bytes();
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[test]
    fn a_token_that_does_not_verify_is_404_without_the_store() {
        // A store that was never opened: any use of it would fail the test
        // with an error page, not a 404.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db.sqlite3"), Default::default()).unwrap();
        store.close();
        let keys = Arc::new(TokenKeys::new([3; 32], vec![]));
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let u = Unsubscriber::new(keys.clone(), store, vec![], HashSet::new(), metrics.clone());
        let good = return_path::encode(&keys, uuid::Uuid::now_v7(), 0);
        let forged = return_path::encode(&TokenKeys::new([4; 32], vec![]), uuid::Uuid::now_v7(), 0);
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            for path in [
                format!("{PREFIX}{forged}"),
                format!("{PREFIX}{}x", good),
                PREFIX.to_string(),
                format!("{PREFIX}{good}/more"),
            ] {
                let r = u
                    .handle(request("POST", &path, "List-Unsubscribe=One-Click"), peer)
                    .await;
                assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
            }
            assert_eq!(metrics.tracking_invalid.get(), 4);
            let r = u
                .handle(request("GET", &format!("{PREFIX}{good}"), ""), peer)
                .await;
            assert_eq!(r.status(), StatusCode::OK);
            // A closed store answers a valid POST with "try again", proving
            // the 404s above never reached it.
            let r = u
                .handle(
                    request(
                        "POST",
                        &format!("{PREFIX}{good}"),
                        "List-Unsubscribe=One-Click",
                    ),
                    peer,
                )
                .await;
            assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
            let r = u
                .handle(request("POST", &format!("{PREFIX}{good}"), "nope=1"), peer)
                .await;
            assert_eq!(r.status(), StatusCode::BAD_REQUEST);
            let big = format!("{}{}", "List-Unsubscribe=One-Click", " ".repeat(MAX_BODY));
            let r = u
                .handle(request("POST", &format!("{PREFIX}{good}"), &big), peer)
                .await;
            assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
            let r = u
                .handle(request("DELETE", &format!("{PREFIX}{good}"), ""), peer)
                .await;
            assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        });
    }
}
