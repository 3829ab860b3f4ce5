//! The dashboard: server-rendered pages on the admin listener
//! (`api.listen`), for a browser, beside the JSON API.
//!
//! ```text
//! GET  /login, POST /login, POST /logout
//! GET  /                  overview: counts, rates and a chart from the rollups
//! GET  /emails            search by recipient, subject, tag, status, time
//! GET  /emails/{id}       an email and each recipient's timeline
//! GET  /queue             waiting recipients grouped by destination and reply
//! POST /queue/retry, /queue/delete, /queue/retry-group
//! GET  /suppressions      search by address, why, add, remove (POST /suppressions/add|remove)
//! GET  /webhooks          endpoints, recent deliveries, replay (POST /webhooks/replay)
//! GET  /domains           each configured domain's status; /domains/{name} its records, tracking host, settings, history
//! GET  /assets/...        the stylesheet (embedded; immutable, hashed URL)
//! ```
//!
//! Security: the admin API token logs in (the same argon2 check and the
//! same throttle as the API); a session is a random id in an `HttpOnly;
//! SameSite=Strict` cookie (`Secure` when a trusted proxy says the
//! request came over HTTPS). There is one token and it is the admin's, so
//! a session may view and act. Every POST needs the session's CSRF token
//! in its form and is refused when `Origin` or `Sec-Fetch-Site` says it
//! came from another site. Pages send a strict Content-Security-Policy:
//! the dashboard has no script at all, and charts are SVG drawn here.

mod domains;
mod emails;
pub mod html;
mod overview;
mod queue;
pub mod session;
mod suppressions;
mod webhooks;

use crate::api::auth::{Outcome, TokenCheck};
use crate::api::reply::Reply;
use crate::store::Store;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::{HeaderMap, Method, Response, StatusCode};
use ipnet::IpNet;
use session::{Session, Sessions};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use tokio::sync::Notify;

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

const CSS: &[u8] = include_bytes!("../../assets/ui.css");

pub struct Ui {
    store: Store,
    sessions: Sessions,
    trusted_proxies: Vec<IpNet>,
    /// Wakes the delivery runner after a retry, so it happens now rather
    /// than at the runner's next look at the queue.
    queue_wake: Option<Arc<Notify>>,
    /// `/assets/ui.<hash>.css`: a new build's stylesheet has a new URL, so
    /// the old one may be cached for ever.
    css_path: String,
    css_etag: String,
    /// The configured endpoints: (url, events). Never their secrets.
    webhooks: Vec<(String, Vec<String>)>,
    /// The configured sending domains, lower case, for the overview's filter.
    domains: Vec<String>,
    /// The configured domains, for the domain pages.
    domain_configs: Vec<crate::config::DomainConfig>,
}

/// What a handler needs of the request.
pub struct Req<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub peer: IpAddr,
    pub body: Bytes,
}

impl Req<'_> {
    /// The form fields of a POST body (or the query of a GET). A field
    /// given twice keeps its first value.
    fn fields(&self) -> HashMap<String, String> {
        let raw: &[u8] = if self.method == Method::POST {
            &self.body
        } else {
            self.query.unwrap_or("").as_bytes()
        };
        let mut out = HashMap::new();
        for (k, v) in url::form_urlencoded::parse(raw) {
            out.entry(k.into_owned()).or_insert_with(|| v.into_owned());
        }
        out
    }

    /// The query's fields, for GET pages.
    fn query_fields(&self) -> HashMap<String, String> {
        let mut out = HashMap::new();
        for (k, v) in url::form_urlencoded::parse(self.query.unwrap_or("").as_bytes()) {
            out.entry(k.into_owned()).or_insert_with(|| v.into_owned());
        }
        out
    }
}

/// True for the dashboard's paths; every other one stays the JSON API's
/// (so an unknown path still answers as the API always has).
pub fn owns(path: &str) -> bool {
    matches!(
        path,
        "/" | "/login"
            | "/logout"
            | "/emails"
            | "/queue"
            | "/suppressions"
            | "/webhooks"
            | "/domains"
    ) || [
        "/emails/",
        "/queue/",
        "/assets/",
        "/suppressions/",
        "/webhooks/",
        "/domains/",
    ]
    .iter()
    .any(|p| path.starts_with(p))
}

impl Ui {
    pub fn new(config: &crate::config::Config, store: Store) -> Ui {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, CSS);
        let hash = data_encoding::HEXLOWER.encode(&digest.as_ref()[..8]);
        Ui {
            store,
            sessions: Sessions::default(),
            trusted_proxies: config.tracking.trusted_proxies.clone(),
            webhooks: config
                .webhooks
                .iter()
                .map(|w| (w.url.clone(), w.events.clone()))
                .collect(),
            domains: config
                .domains
                .iter()
                .map(|d| d.name.to_ascii_lowercase())
                .collect(),
            domain_configs: config.domains.clone(),
            queue_wake: None,
            css_path: format!("/assets/ui.{hash}.css"),
            css_etag: format!("\"{hash}\""),
        }
    }

    /// Whether a POST's body is worth reading: the login form's, or one
    /// from a browser with a live session (others are refused unread).
    pub fn may_post(&self, path: &str, headers: &HeaderMap) -> bool {
        path == "/login"
            || session::cookie(headers, session::COOKIE)
                .is_some_and(|id| self.sessions.get(id).is_some())
    }

    pub fn set_queue_wake(&mut self, wake: Arc<Notify>) {
        self.queue_wake = Some(wake);
    }

    pub async fn handle(&self, req: Req<'_>, tokens: &TokenCheck) -> Reply {
        let get = req.method == Method::GET || req.method == Method::HEAD;
        let post = req.method == Method::POST;
        if req.path.starts_with("/assets/") && get {
            return self.asset(&req);
        }
        let sid = session::cookie(req.headers, session::COOKIE).map(str::to_string);
        let live = sid.and_then(|id| self.sessions.get(&id).map(|s| (id, s)));
        match req.path {
            "/login" if get && live.is_some() => return redirect("/"),
            "/login" if get => return self.login_form(&req, None, StatusCode::OK),
            "/login" if post => return self.login(&req, tokens).await,
            "/login" => return method_not_allowed("GET, HEAD, POST"),
            _ => {}
        }
        let Some((sid, sess)) = live else {
            return if get {
                redirect("/login")
            } else {
                self.refuse("You are not logged in (or your session ended). Log in again.")
            };
        };
        if post {
            if let Err(why) = self.check_post(&req, Some(&sess.csrf)) {
                return self.refuse(why);
            }
        } else if !get {
            return method_not_allowed("GET, HEAD, POST");
        }
        let page = Page {
            ui: self,
            sess: &sess,
        };
        let result = match (req.path, post) {
            ("/logout", true) => {
                self.sessions.remove(&sid);
                let mut r = redirect("/login");
                set_cookie(
                    &mut r,
                    &session::set_cookie(session::COOKIE, "", 0, self.secure(&req)),
                );
                return r;
            }
            ("/", false) => overview::page(&page, &req).await,
            ("/emails", false) => emails::search(&page, &req).await,
            ("/queue", false) => queue::page(&page, &req).await,
            ("/queue/retry", true) | ("/queue/retry-group", true) | ("/queue/delete", true) => {
                queue::act(&page, &req).await
            }
            ("/suppressions", false) => suppressions::page(&page, &req).await,
            ("/suppressions/add", true) | ("/suppressions/remove", true) => {
                suppressions::act(&page, &req).await
            }
            ("/webhooks", false) => webhooks::page(&page, &req).await,
            ("/webhooks/replay", true) => webhooks::replay(&page, &req).await,
            ("/domains", false) => domains::list(&page, &req).await,
            (p, false) if p.starts_with("/domains/") => {
                domains::show(&page, &req, &p["/domains/".len()..]).await
            }
            (p, false) if p.starts_with("/emails/") => {
                emails::show(&page, &req, &p["/emails/".len()..]).await
            }
            _ => Err(PageError::NotFound(format!(
                "There is no page at {}.",
                req.path
            ))),
        };
        result.unwrap_or_else(|e| page.error(e))
    }

    /// Whether the browser reached us over HTTPS: only a trusted proxy's
    /// `X-Forwarded-Proto` is believed (the listener itself is plain HTTP).
    fn secure(&self, req: &Req<'_>) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(&req.peer))
            && req
                .headers
                .get("x-forwarded-proto")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
    }

    /// A POST is refused when the browser says it came from another site
    /// (`Sec-Fetch-Site`, or an `Origin` naming another host), or when
    /// its form does not carry `csrf` (the session's token, or for the
    /// login form the login cookie's).
    fn check_post(&self, req: &Req<'_>, expected: Option<&str>) -> Result<(), &'static str> {
        if let Some(site) = req.headers.get("sec-fetch-site") {
            let site = site.to_str().unwrap_or("");
            if !(site.eq_ignore_ascii_case("same-origin") || site.eq_ignore_ascii_case("none")) {
                return Err("This form was sent from another site; refused.");
            }
        }
        if let Some(origin) = req.headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("null");
            let origin_host = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"));
            let ours = |name: header::HeaderName| {
                req.headers
                    .get(name)
                    .and_then(|h| h.to_str().ok())
                    .is_some_and(|h| origin_host.is_some_and(|o| o.eq_ignore_ascii_case(h.trim())))
            };
            // Behind a proxy that rewrites Host, the name the browser used
            // is in X-Forwarded-Host, believed from a trusted proxy only.
            let forwarded = self.trusted_proxies.iter().any(|n| n.contains(&req.peer))
                && ours(header::HeaderName::from_static("x-forwarded-host"));
            if !(ours(header::HOST) || forwarded) {
                return Err("This form was sent from another origin; refused.");
            }
        }
        let fields = req.fields();
        let sent = fields.get("csrf").map(String::as_str).unwrap_or("");
        match expected {
            Some(e) if !sent.is_empty() && session::same(sent, e) => Ok(()),
            _ => Err("This form is missing its security token or it has expired; reload the page and try again."),
        }
    }

    fn asset(&self, req: &Req<'_>) -> Reply {
        if req.path != self.css_path {
            return html_reply(StatusCode::NOT_FOUND, "not found".into());
        }
        let mut r = if req
            .headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim() == self.css_etag))
        {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::NOT_MODIFIED;
            r
        } else {
            let mut r = Response::new(Full::new(Bytes::from_static(CSS)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/css; charset=utf-8"),
            );
            r
        };
        let h = r.headers_mut();
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=31536000, immutable"),
        );
        if let Ok(v) = HeaderValue::from_str(&self.css_etag) {
            h.insert(header::ETAG, v);
        }
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        r
    }

    fn login_form(&self, req: &Req<'_>, error: Option<&str>, status: StatusCode) -> Reply {
        let token = session::random_token();
        let err = error
            .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", html::esc(e)))
            .unwrap_or_default();
        let body = format!(
            "{err}<form method=\"post\" action=\"/login\" class=\"login\">{}\
             <label for=\"token\">Admin API token</label>\
             <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"current-password\" required autofocus>\
             <button type=\"submit\">Log in</button></form>\
             <p class=\"hint\">The token whose hash is <code>api.token_hash</code> in the config.</p>",
            html::csrf_field(&token)
        );
        let mut r = html_reply(status, html::bare("Log in", &self.css_path, &body));
        set_cookie(
            &mut r,
            &session::set_cookie(session::LOGIN_COOKIE, &token, 3600, self.secure(req)),
        );
        r
    }

    async fn login(&self, req: &Req<'_>, tokens: &TokenCheck) -> Reply {
        let expected = session::cookie(req.headers, session::LOGIN_COOKIE);
        if let Err(why) = self.check_post(req, expected) {
            return self.refuse(why);
        }
        let token = req.fields().remove("token").unwrap_or_default();
        match tokens.check_token(&token, req.peer).await {
            Outcome::Allowed => {}
            Outcome::Throttled => {
                return self.login_form(
                    req,
                    Some("Too many wrong tokens from this address; try again in a minute."),
                    StatusCode::TOO_MANY_REQUESTS,
                )
            }
            Outcome::NotConfigured => {
                return self.login_form(
                    req,
                    Some("No api.token_hash is configured, so nobody can log in."),
                    StatusCode::UNAUTHORIZED,
                )
            }
            Outcome::Invalid | Outcome::Missing => {
                return self.login_form(
                    req,
                    Some("That is not the admin token."),
                    StatusCode::UNAUTHORIZED,
                )
            }
        }
        let (id, _) = self.sessions.create();
        let secure = self.secure(req);
        let mut r = redirect("/");
        set_cookie(
            &mut r,
            &session::set_cookie(session::COOKIE, &id, session::LIFETIME.as_secs(), secure),
        );
        set_cookie(
            &mut r,
            &session::set_cookie(session::LOGIN_COOKIE, "", 0, secure),
        );
        r
    }

    fn refuse(&self, why: &str) -> Reply {
        let body = format!(
            "<p class=\"error\" role=\"alert\">{}</p><p><a href=\"/login\">Log in</a></p>",
            html::esc(why)
        );
        html_reply(
            StatusCode::FORBIDDEN,
            html::bare("Refused", &self.css_path, &body),
        )
    }
}

/// What a page handler has: the dashboard and the visitor's session.
pub struct Page<'a> {
    ui: &'a Ui,
    sess: &'a Session,
}

impl Page<'_> {
    fn store(&self) -> &Store {
        &self.ui.store
    }

    fn csrf(&self) -> &str {
        &self.sess.csrf
    }

    /// A full page with the navigation.
    fn render(&self, title: &str, current: &str, body: &str) -> Reply {
        html_reply(
            StatusCode::OK,
            html::page(title, current, self.csrf(), &self.ui.css_path, body),
        )
    }

    fn error(&self, e: PageError) -> Reply {
        let (status, msg) = match e {
            PageError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            PageError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            PageError::Internal(m) => (StatusCode::INTERNAL_SERVER_ERROR, m),
        };
        let mut r = self.render(
            status.canonical_reason().unwrap_or("Error"),
            "",
            &format!("<p class=\"error\" role=\"alert\">{}</p>", html::esc(&msg)),
        );
        *r.status_mut() = status;
        r
    }

    /// The store's answer, or the page saying what could not be read.
    async fn answer<T>(
        &self,
        what: &str,
        reading: impl std::future::Future<Output = crate::store::Result<T>>,
    ) -> Result<T, PageError> {
        reading.await.map_err(|e| {
            tracing::error!("dashboard: reading {what}: {e}");
            PageError::Internal(format!("Reading {what} from the store failed: {e}"))
        })
    }
}

#[derive(Debug)]
pub enum PageError {
    NotFound(String),
    BadRequest(String),
    Internal(String),
}

fn html_reply(status: StatusCode, body: String) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    r
}

/// 303: after a POST the browser GETs the target.
fn redirect(to: &str) -> Reply {
    let mut r = html_reply(StatusCode::SEE_OTHER, String::new());
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn set_cookie(r: &mut Reply, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn method_not_allowed(allow: &'static str) -> Reply {
    let mut r = html_reply(StatusCode::METHOD_NOT_ALLOWED, "method not allowed".into());
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}
