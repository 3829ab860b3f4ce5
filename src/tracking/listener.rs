//! The tracking listener: answers the open pixel and the click redirect
//! from the token alone (no database read), hands the event to the
//! recorder (or folds a repeated hit, see [`super::aggregate`]), and serves
//! nothing else.

use super::aggregate::{self, Aggregator};
use super::classify::{self, Kind};
use super::recorder::Recorder;
use crate::events::{EventType, NewEvent};
use crate::metrics::Metrics;
use crate::prepare::{Token, TokenKeys};
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{
    HeaderValue, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, EXPIRES, LOCATION, PRAGMA,
};
use hyper::{Method, Request, Response, StatusCode};
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The 43-byte transparent 1x1 GIF89a.
pub const PIXEL: &[u8; 43] = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff\x21\xf9\x04\x01\x00\x00\x00\x00\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x44\x01\x00\x3b";

pub struct Tracker {
    keys: Arc<TokenKeys>,
    recorder: Recorder,
    trusted_proxies: Vec<IpNet>,
    flood: Aggregator,
    metrics: Arc<Metrics>,
    /// The List-Unsubscribe URL's handler (it reads the request body,
    /// which nothing else here does).
    unsubscriber: Option<super::unsubscribe::Unsubscriber>,
}

/// Repeated hits of one token by one client within this are one event
/// (README "Repeated hits").
pub const AGGREGATE_WINDOW: Duration = Duration::from_secs(10);
/// Clients × tokens remembered for that, at most (about 40 bytes each, in
/// two generations).
const AGGREGATE_CAPACITY: usize = 200_000;

type Body = Full<Bytes>;

impl Tracker {
    pub fn new(
        keys: Arc<TokenKeys>,
        recorder: Recorder,
        trusted_proxies: Vec<IpNet>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Tracker {
            keys,
            recorder,
            trusted_proxies,
            flood: Aggregator::new(AGGREGATE_WINDOW, AGGREGATE_CAPACITY),
            metrics,
            unsubscriber: None,
        }
    }

    pub fn with_unsubscriber(mut self, u: super::unsubscribe::Unsubscriber) -> Self {
        self.unsubscriber = Some(u);
        self
    }

    pub fn unsubscriber(&self) -> Option<&super::unsubscribe::Unsubscriber> {
        self.unsubscriber.as_ref()
    }

    /// Answers a request. The request is read before the returned future
    /// runs, so the future holds no borrow of it; awaiting it hands the
    /// event to the recorder (waiting briefly when its queue is full: a
    /// slower answer rather than a lost event) before the answer goes out.
    pub fn handle<B>(
        &self,
        req: &Request<B>,
        peer: SocketAddr,
    ) -> impl std::future::Future<Output = Response<Body>> + Send + '_ {
        let started = Instant::now();
        let (response, event) = self.route(req, peer);
        async move {
            if let Some(ev) = event {
                self.recorder.record(ev).await;
            }
            self.metrics.tracking_latency.observe(started.elapsed());
            response
        }
    }

    fn route<B>(&self, req: &Request<B>, peer: SocketAddr) -> (Response<Body>, Option<NewEvent>) {
        let head = req.method() == Method::HEAD;
        if req.method() != Method::GET && !head {
            return (plain(StatusCode::NOT_FOUND, "not found\n"), None);
        }
        let path = req.uri().path();
        if let Some(token) = path.strip_prefix("/v1/track/open/") {
            return self.open(req, peer, token);
        }
        if let Some(token) = path.strip_prefix("/v1/track/click/") {
            return self.click(req, peer, token);
        }
        if path == "/healthz" {
            return (plain(StatusCode::OK, "ok\n"), None);
        }
        (plain(StatusCode::NOT_FOUND, "not found\n"), None)
    }

    /// True when this hit repeats one just stored (and is counted as such).
    fn folded<B>(&self, req: &Request<B>, ip: IpAddr, token: &str) -> bool {
        let client = aggregate::Client {
            ip,
            user_agent: req
                .headers()
                .get(hyper::header::USER_AGENT)
                .map(|v| v.as_bytes()),
            head: req.method() == Method::HEAD,
        };
        let folded = self.flood.fold(token, client, crate::time::now_ms());
        if folded {
            self.metrics.tracking_hits_aggregated.inc();
        }
        folded
    }

    fn open<B>(
        &self,
        req: &Request<B>,
        peer: SocketAddr,
        token: &str,
    ) -> (Response<Body>, Option<NewEvent>) {
        let mut event = None;
        match self.keys.verify(token) {
            Some(Token::Open {
                email_id,
                rcpt_index,
            }) => {
                self.metrics.opens.inc();
                let ip = client_ip(req, peer, &self.trusted_proxies);
                if !self.folded(req, ip, token) {
                    let hit = Hit {
                        kind: Kind::Open,
                        email_id,
                        rcpt_index,
                        link: None,
                    };
                    event = Some(self.event(req, ip, hit));
                }
            }
            _ => self.metrics.tracking_invalid.inc(),
        }
        // Whatever the token, the image loads: a broken image in a mail
        // client helps nobody.
        let mut r = Response::new(Full::new(Bytes::from_static(PIXEL)));
        let h = r.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("image/gif"));
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("43"));
        h.insert(
            CACHE_CONTROL,
            HeaderValue::from_static("no-store, no-cache, must-revalidate, max-age=0"),
        );
        h.insert(PRAGMA, HeaderValue::from_static("no-cache"));
        h.insert(EXPIRES, HeaderValue::from_static("0"));
        (r, event)
    }

    fn click<B>(
        &self,
        req: &Request<B>,
        peer: SocketAddr,
        token: &str,
    ) -> (Response<Body>, Option<NewEvent>) {
        let Some(Token::Click {
            email_id,
            rcpt_index,
            link_index: _,
            url,
        }) = self.keys.verify(token)
        else {
            // Never redirect on a token we did not sign: no open redirect.
            self.metrics.tracking_invalid.inc();
            return (plain(StatusCode::NOT_FOUND, "not found\n"), None);
        };
        let Ok(location) = HeaderValue::from_str(&location_value(&url)) else {
            // A URL that cannot be a header value was never one we tracked.
            self.metrics.tracking_invalid.inc();
            return (plain(StatusCode::NOT_FOUND, "not found\n"), None);
        };
        self.metrics.clicks.inc();
        let ip = client_ip(req, peer, &self.trusted_proxies);
        // A folded repeat is not a click of its own: it is not stored, so
        // it neither makes nor joins a burst (which the store judges from
        // the clicks it has, whatever node took them).
        let event = (!self.folded(req, ip, token)).then(|| {
            let hit = Hit {
                kind: Kind::Click,
                email_id,
                rcpt_index,
                link: Some(url),
            };
            self.event(req, ip, hit)
        });
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::FOUND;
        let h = r.headers_mut();
        h.insert(LOCATION, location);
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        (r, event)
    }

    fn event<B>(&self, req: &Request<B>, ip: IpAddr, hit: Hit) -> NewEvent {
        let header = |name: hyper::header::HeaderName| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.chars().take(1024).collect::<String>())
        };
        let user_agent = header(hyper::header::USER_AGENT);
        let at = crate::time::now_ms();
        // The delivery time and the recipient's other clicks are the
        // store's to know; the recorder's judge applies the timing and burst
        // rules when the click is stored.
        let verdict = classify::classify(
            &classify::Request {
                kind: hit.kind,
                method_head: req.method() == Method::HEAD,
                ip: Some(ip),
                user_agent: user_agent.as_deref(),
                at_ms: at,
                delivery: classify::Delivery::default(),
            },
            &classify::Context::default(),
        );
        let kind = match hit.kind {
            Kind::Open => EventType::Opened,
            Kind::Click => EventType::Clicked,
        };
        let mut ev = NewEvent::new(hit.email_id.to_string(), kind, at);
        ev.rcpt_idx = Some(hit.rcpt_index);
        ev.ip = Some(ip.to_string());
        ev.user_agent = user_agent;
        ev.referer = header(hyper::header::REFERER);
        ev.link = hit.link;
        ev.machine = Some(verdict.machine);
        ev.machine_reason = verdict.reason.map(str::to_string);
        ev
    }
}

/// What a valid tracking request says, before it becomes an event.
struct Hit {
    kind: Kind,
    email_id: uuid::Uuid,
    rcpt_index: u32,
    link: Option<String>,
}

/// The URL as a Location header: exactly as written when it is printable
/// ASCII; otherwise bytes a header cannot carry (non-ASCII, spaces,
/// controls) are percent-encoded, as a browser encodes them when it follows
/// such an href, and an internationalised host name becomes its punycode.
pub fn location_value(url: &str) -> String {
    if url.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return url.to_string();
    }
    let host_is_ascii = url::Url::parse(url).ok().and_then(|u| {
        let raw_host = url.split("://").nth(1)?.split(['/', '?', '#']).next()?;
        Some((u, raw_host.is_ascii()))
    });
    match host_is_ascii {
        Some((parsed, false)) => parsed.to_string(),
        _ => {
            let mut out = String::with_capacity(url.len() + 16);
            for b in url.bytes() {
                if (0x21..0x7f).contains(&b) {
                    out.push(b as char);
                } else {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
            out
        }
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The client's address: the peer's, unless the peer is a trusted proxy;
/// then the rightmost `X-Forwarded-For` entry that is not itself a trusted
/// proxy (entries further left are whatever the client chose to send).
pub fn client_ip<B>(req: &Request<B>, peer: SocketAddr, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(&ip.to_canonical()));
    let peer_ip = peer.ip().to_canonical();
    if !is_trusted(&peer_ip) {
        return peer_ip;
    }
    let mut chain: Vec<IpAddr> = Vec::new();
    for value in req.headers().get_all("x-forwarded-for") {
        let Ok(s) = value.to_str() else {
            return peer_ip;
        };
        for part in s.split(',') {
            match parse_forwarded_ip(part.trim()) {
                Some(ip) => chain.push(ip.to_canonical()),
                None => return peer_ip,
            }
        }
    }
    chain
        .into_iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .unwrap_or(peer_ip)
}

/// `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]:443`.
fn parse_forwarded_ip(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    s.parse::<SocketAddr>().ok().map(|sa| sa.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(xff: &[&str]) -> Request<()> {
        let mut b = Request::builder().uri("/");
        for v in xff {
            b = b.header("x-forwarded-for", *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec![
            "127.0.0.1/32".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ];
        let proxy: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let stranger: SocketAddr = "192.0.2.7:4000".parse().unwrap();
        assert_eq!(
            client_ip(&req(&["198.51.100.1"]), stranger, &trusted).to_string(),
            "192.0.2.7"
        );
        assert_eq!(
            client_ip(&req(&["198.51.100.1"]), proxy, &trusted).to_string(),
            "198.51.100.1"
        );
        // The client may prepend anything; only the entries our proxies added count.
        assert_eq!(
            client_ip(&req(&["6.6.6.6, 198.51.100.1, 10.1.1.1"]), proxy, &trusted).to_string(),
            "198.51.100.1"
        );
        assert_eq!(
            client_ip(&req(&["6.6.6.6", "198.51.100.2"]), proxy, &trusted).to_string(),
            "198.51.100.2"
        );
        assert_eq!(
            client_ip(&req(&["garbage"]), proxy, &trusted).to_string(),
            "127.0.0.1"
        );
        assert_eq!(
            client_ip(&req(&[]), proxy, &trusted).to_string(),
            "127.0.0.1"
        );
        assert_eq!(
            client_ip(&req(&["[2001:db8::1]:443"]), proxy, &trusted).to_string(),
            "2001:db8::1"
        );
    }

    #[test]
    fn location_keeps_the_url_and_encodes_what_headers_cannot_carry() {
        assert_eq!(
            location_value("https://example.org/a?b=1&c=%20#f"),
            "https://example.org/a?b=1&c=%20#f"
        );
        assert_eq!(
            location_value("https://example.org/café?q=ü x"),
            "https://example.org/caf%C3%A9?q=%C3%BC%20x"
        );
    }

    #[test]
    fn pixel_is_a_43_byte_gif() {
        assert_eq!(PIXEL.len(), 43);
        assert!(PIXEL.starts_with(b"GIF89a"));
        assert_eq!(PIXEL[42], b';');
    }
}
