//! Tells opens and clicks made by people from those made by machines: mail
//! providers' image proxies that prefetch, security gateways that follow
//! every link, link checkers and scripts.
//!
//! Pure: the caller gathers the facts (method, client address, User-Agent,
//! times, and the recipient's other clicks) and stores the verdict with the
//! event. Machine events are kept and flagged, never
//! dropped, so an operator can always recount them.
//!
//! The rules run in a fixed order and the first that matches gives the
//! reason. Every table the rules read is in the "Rule tables" section below,
//! so a new scanner is a one-line change. README "Machine opens and clicks"
//! documents the same rules for operators.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Open,
    Click,
}

/// What is known about one tracking request.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub kind: Kind,
    /// `HEAD` rather than `GET`.
    pub method_head: bool,
    /// The client address (after trusted-proxy `X-Forwarded-For` handling).
    pub ip: Option<IpAddr>,
    pub user_agent: Option<&'a str>,
    /// When the request arrived, unix milliseconds.
    pub at_ms: i64,
    /// What is known of this recipient's delivery (nothing, for the
    /// listener: the store fills it in when it records a click).
    pub delivery: Delivery,
}

/// A recipient's delivery as the store knows it when a click is recorded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivery {
    /// When the receiver answered `250` for this copy.
    pub delivered_at_ms: Option<i64>,
    /// When the latest delivery attempt was claimed.
    pub attempt_started_at_ms: Option<i64>,
    /// That attempt is still under way (the recipient is leased for sending).
    pub in_progress: bool,
}

/// Settings and per-request facts gathered outside this module.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    /// Clicks sooner than this after delivery are a gateway's scan
    /// (config `tracking.machine_click_window`).
    pub machine_click_window: Duration,
}

impl Default for Context {
    fn default() -> Self {
        Context {
            machine_click_window: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub machine: bool,
    /// A short stable code (see [`reason`]). Set for every machine verdict,
    /// and for human opens that came through a provider's image proxy, so
    /// reports can say how an open was seen.
    pub reason: Option<&'static str>,
}

impl Verdict {
    pub const HUMAN: Verdict = Verdict {
        machine: false,
        reason: None,
    };

    fn machine(reason: &'static str) -> Verdict {
        Verdict {
            machine: true,
            reason: Some(reason),
        }
    }

    /// A person's open, seen through a provider's proxy.
    fn proxied(reason: &'static str) -> Verdict {
        Verdict {
            machine: false,
            reason: Some(reason),
        }
    }
}

/// The `machine_reason` codes. Stable: stored with events, sent in webhooks.
pub mod reason {
    pub const HEAD_REQUEST: &str = "head_request";
    pub const NO_USER_AGENT: &str = "no_user_agent";
    pub const APPLE_MPP: &str = "apple_mpp";
    pub const GOOGLE_IMAGE_PROXY: &str = "google_image_proxy";
    pub const YAHOO_MAIL_PROXY: &str = "yahoo_mail_proxy";
    pub const SECURITY_SCANNER: &str = "security_scanner";
    pub const HEADLESS_BROWSER: &str = "headless_browser";
    pub const KNOWN_BOT: &str = "known_bot";
    pub const TOO_SOON_AFTER_DELIVERY: &str = "too_soon_after_delivery";
    pub const BURST_OF_CLICKS: &str = "burst_of_clicks";
}

// ---------------------------------------------------------------------------
// Rule tables. User-Agent tokens are matched case-insensitively as
// substrings of the User-Agent; write them in lower case.
// ---------------------------------------------------------------------------

/// Apple's networks. Apple holds all of 17.0.0.0/8 (one of the original
/// class A allocations) and 2620:149::/32 at ARIN; Mail Privacy Protection
/// prefetches come from Apple's relay infrastructure. An open from these
/// networks is Apple's machinery, not a reader's device.
const APPLE_NETWORKS: &[Net] = &[
    Net::v4(Ipv4Addr::new(17, 0, 0, 0), 8),
    Net::v6(Ipv6Addr::new(0x2620, 0x149, 0, 0, 0, 0, 0, 0), 32),
];

/// Apple Mail Privacy Protection replaces the User-Agent of its prefetches
/// with exactly this, nothing more (observed since 2021-09-20, reported in
/// ua-parser/uap-core#509). No browser or mail client sends it bare.
const MPP_USER_AGENT: &str = "mozilla/5.0";

/// Providers' image proxies that fetch the pixel when the recipient views
/// the message (not on delivery), so what they report is a person's open
/// whose client and address are hidden behind the proxy.
/// - Gmail rewrites every image to its caching proxy; the first view of a
///   message makes the proxy fetch the pixel, later views are served from
///   its cache (Word to the Wise, "Gmail deploys image proxy servers", 2013;
///   User-Agent `... (via ggpht.com GoogleImageProxy)`).
/// - Yahoo documents YahooMailProxy as the fetch proxy for content embedded
///   in mail to its users (help.yahoo.com SLN28749).
///
/// Proxies fetch images; they do not follow links as a person does, so a
/// click through one is a machine click.
const VIEW_PROXIES: &[(&str, &str)] = &[
    ("googleimageproxy", reason::GOOGLE_IMAGE_PROXY),
    ("yahoomailproxy", reason::YAHOO_MAIL_PROXY),
];

/// Email security gateways and link-protection services that name
/// themselves. Most scanners impersonate a browser (the timing and burst
/// rules catch those); when one does name itself, the vendor's name never
/// appears in a person's browser, so these matches are certain.
const SCANNER_TOKENS: &[&str] = &[
    "barracuda",
    "mimecast",
    "proofpoint",
    "urldefense",
    "ironport",
    "symantec",
    "trendmicro",
    "trend micro",
    "forcepoint",
    "sophos",
    "fortiguard",
    "safelinks",
    "zscaler",
    "bitdefender",
    "kaspersky",
    "mcafee",
    "cloudmark",
    "vadesecure",
    "spamtitan",
];

/// Browsers driven by scripts (sandboxes that "detonate" links use them).
const HEADLESS_TOKENS: &[&str] = &[
    "headlesschrome",
    "phantomjs",
    "puppeteer",
    "playwright",
    "selenium",
    "slimerjs",
];

/// Crawlers, link previewers, link checkers and HTTP libraries: nothing a
/// person reads mail with.
const BOT_TOKENS: &[&str] = &[
    // crawlers and previewers
    "crawl",
    "spider",
    "scrape",
    "slurp",
    "facebookexternalhit",
    "preview",
    "linkcheck",
    "link checker",
    "validator",
    // Office asks whether a link exists before opening the browser.
    "existence discovery",
    // "+http://..." is how crawlers give their info page.
    "+http",
    // HTTP libraries and command-line tools
    "curl/",
    "wget/",
    "python-requests",
    "python-urllib",
    "python-httpx",
    "aiohttp",
    "go-http-client",
    "java/",
    "okhttp",
    "apache-httpclient",
    "libwww-perl",
    "lwp::",
    "node-fetch",
    "axios/",
    "guzzlehttp",
    "ruby",
    "faraday",
    "postmanruntime",
    "insomnia",
    "httpie",
    "windowspowershell",
    "scrapy",
];

// ---------------------------------------------------------------------------
// The rules.
// ---------------------------------------------------------------------------

/// Longer User-Agents are cut: real ones are a few hundred bytes, and this
/// keeps the cost of a request bounded whatever a client sends.
const MAX_UA: usize = 1024;

/// The timing rule on its own, for the recorder: only the store knows the
/// delivery times, so the rule runs when a click is written.
///
/// Gateways follow links while the receiver holds the message and right
/// after its `250`, so the reference is the delivery time when there is
/// one, else the start of the latest attempt: a click while an attempt is
/// under way, or within the window after it started, came before any
/// reader could have seen the message.
pub fn too_soon_after_delivery(at_ms: i64, d: &Delivery, window_ms: i64) -> bool {
    match (d.delivered_at_ms, d.attempt_started_at_ms) {
        (Some(delivered), _) => at_ms < delivered.saturating_add(window_ms),
        (None, Some(_)) if d.in_progress => true,
        (None, Some(started)) => at_ms < started.saturating_add(window_ms),
        (None, None) => false,
    }
}

pub fn classify(req: &Request, ctx: &Context) -> Verdict {
    // Browsers and mail clients load images and follow links with GET;
    // HEAD is a checker asking whether the URL is alive.
    if req.method_head {
        return Verdict::machine(reason::HEAD_REQUEST);
    }
    let ua = req.user_agent.map(str::trim).unwrap_or("");
    if ua.is_empty() {
        return Verdict::machine(reason::NO_USER_AGENT);
    }
    let ua = truncate(ua, MAX_UA).to_ascii_lowercase();

    if req.kind == Kind::Open
        && (ua == MPP_USER_AGENT || req.ip.is_some_and(|ip| in_any(APPLE_NETWORKS, ip)))
    {
        return Verdict::machine(reason::APPLE_MPP);
    }
    if let Some((_, why)) = VIEW_PROXIES.iter().find(|(t, _)| ua.contains(t)) {
        return match req.kind {
            Kind::Open => Verdict::proxied(why),
            Kind::Click => Verdict::machine(why),
        };
    }
    if contains_any(&ua, SCANNER_TOKENS) {
        return Verdict::machine(reason::SECURITY_SCANNER);
    }
    if contains_any(&ua, HEADLESS_TOKENS) {
        return Verdict::machine(reason::HEADLESS_BROWSER);
    }
    // A bare "Mozilla/5.0" on a click is no browser either (MPP's opens
    // were handled above).
    if ua == MPP_USER_AGENT || contains_any(&ua, BOT_TOKENS) || has_bot_word(&ua) {
        return Verdict::machine(reason::KNOWN_BOT);
    }

    if req.kind == Kind::Click {
        // Gateways scan links on delivery, some even before they accept the
        // message (so before our delivered_at): a click earlier than that,
        // or within the window after it, is not a person reading.
        let window = i64::try_from(ctx.machine_click_window.as_millis()).unwrap_or(i64::MAX);
        if too_soon_after_delivery(req.at_ms, &req.delivery, window) {
            return Verdict::machine(reason::TOO_SOON_AFTER_DELIVERY);
        }
    }
    Verdict::HUMAN
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn contains_any(ua: &str, tokens: &[&str]) -> bool {
    tokens.iter().any(|t| ua.contains(t))
}

/// "bot" ending a word (Googlebot, bingbot, Slackbot-LinkExpanding,
/// python-bot_1), except the phone maker Cubot: the same exclusion the
/// isbot project makes (`(?<! cu)bots?(?:\b|_)`).
fn has_bot_word(ua: &str) -> bool {
    let bytes = ua.as_bytes();
    let mut from = 0;
    while let Some(pos) = ua[from..].find("bot") {
        let start = from + pos;
        let mut end = start + 3;
        if bytes.get(end) == Some(&b's') {
            end += 1;
        }
        let word_ends = bytes.get(end).is_none_or(|c| !c.is_ascii_alphanumeric());
        let cubot = start >= 2 && &bytes[start - 2..start] == b"cu";
        if word_ends && !cubot {
            return true;
        }
        from = start + 3;
    }
    false
}

/// An address prefix, checkable without allocating.
#[derive(Debug, Clone, Copy)]
struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl Net {
    const fn v4(addr: Ipv4Addr, prefix: u8) -> Net {
        Net {
            addr: IpAddr::V4(addr),
            prefix,
        }
    }

    const fn v6(addr: Ipv6Addr, prefix: u8) -> Net {
        Net {
            addr: IpAddr::V6(addr),
            prefix,
        }
    }

    fn contains(&self, ip: IpAddr) -> bool {
        // A v4 client seen on a dual-stack socket arrives as ::ffff:a.b.c.d.
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

fn in_any(nets: &[Net], ip: IpAddr) -> bool {
    nets.iter().any(|n| n.contains(ip))
}

// ---------------------------------------------------------------------------
// Bursts of clicks.
// ---------------------------------------------------------------------------

/// How close two clicks on different links of one copy must be to be a
/// burst.
pub const BURST_WINDOW: Duration = Duration::from_secs(1);

/// Whether a click on `link` at `at_ms` is one of several different links
/// of the same recipient's copy clicked less than `window_ms` apart: a
/// scanner following every link, since no reader can go to the browser and
/// back to the next link that fast. (Marketo's bot filter uses the same
/// sign: activities of one recipient less than a second apart.) The same
/// link twice (a double click) is not a burst. `others` are the copy's
/// clicks stored before this one, by whatever node took them: the rule
/// runs when a click is written, so the first click of a burst looks
/// human and the others are flagged. Scanners that click on delivery are
/// caught by the delivery-window rule anyway.
pub fn click_burst<'a>(
    link: Option<&str>,
    at_ms: i64,
    others: impl IntoIterator<Item = (i64, Option<&'a str>)>,
    window_ms: i64,
) -> bool {
    others
        .into_iter()
        .any(|(t, l)| l != link && at_ms.abs_diff(t) < window_ms.unsigned_abs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
    const IPHONE_MAIL: &str =
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148";
    const GMAIL_PROXY: &str =
        "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)";
    const T: i64 = 1_800_000_000_000;

    fn req(kind: Kind, ua: Option<&str>) -> Request<'_> {
        Request {
            kind,
            method_head: false,
            ip: Some("203.0.113.7".parse().unwrap()),
            user_agent: ua,
            at_ms: T,
            delivery: delivered(T - 3_600_000),
        }
    }

    fn delivered(at: i64) -> Delivery {
        Delivery {
            delivered_at_ms: Some(at),
            attempt_started_at_ms: Some(at - 500),
            in_progress: false,
        }
    }

    fn verdict(r: &Request) -> Verdict {
        classify(r, &Context::default())
    }

    fn is_machine(v: Verdict, why: &'static str) {
        assert_eq!(v, Verdict::machine(why), "{v:?}");
    }

    #[test]
    fn people_are_people() {
        for ua in [
            CHROME,
            IPHONE_MAIL,
            "Mozilla/4.0 (compatible; ms-office; MSOffice 16)",
        ] {
            assert_eq!(verdict(&req(Kind::Open, Some(ua))), Verdict::HUMAN, "{ua}");
            assert_eq!(verdict(&req(Kind::Click, Some(ua))), Verdict::HUMAN, "{ua}");
        }
    }

    #[test]
    fn head_requests_are_checkers() {
        let mut r = req(Kind::Click, Some(CHROME));
        r.method_head = true;
        is_machine(verdict(&r), reason::HEAD_REQUEST);
        r.kind = Kind::Open;
        is_machine(verdict(&r), reason::HEAD_REQUEST);
    }

    #[test]
    fn no_user_agent_is_a_machine() {
        is_machine(verdict(&req(Kind::Open, None)), reason::NO_USER_AGENT);
        is_machine(
            verdict(&req(Kind::Click, Some("  "))),
            reason::NO_USER_AGENT,
        );
    }

    #[test]
    fn apple_mpp_by_user_agent() {
        is_machine(
            verdict(&req(Kind::Open, Some("Mozilla/5.0"))),
            reason::APPLE_MPP,
        );
        // Not a browser on a click either, but not MPP's doing.
        is_machine(
            verdict(&req(Kind::Click, Some("Mozilla/5.0"))),
            reason::KNOWN_BOT,
        );
    }

    #[test]
    fn apple_mpp_by_network() {
        for ip in ["17.58.1.2", "::ffff:17.1.2.3", "2620:149:a:b::1"] {
            let mut r = req(Kind::Open, Some(IPHONE_MAIL));
            r.ip = Some(ip.parse().unwrap());
            is_machine(verdict(&r), reason::APPLE_MPP);
            // A person at Apple clicking a link is still a person.
            r.kind = Kind::Click;
            assert_eq!(verdict(&r), Verdict::HUMAN, "{ip}");
        }
        let mut r = req(Kind::Open, Some(IPHONE_MAIL));
        r.ip = Some("18.0.0.1".parse().unwrap());
        assert_eq!(verdict(&r), Verdict::HUMAN);
    }

    #[test]
    fn gmail_proxy_opens_are_human_but_proxied() {
        let v = verdict(&req(Kind::Open, Some(GMAIL_PROXY)));
        assert_eq!(v, Verdict::proxied(reason::GOOGLE_IMAGE_PROXY));
        assert!(!v.machine);
        is_machine(
            verdict(&req(Kind::Click, Some(GMAIL_PROXY))),
            reason::GOOGLE_IMAGE_PROXY,
        );
    }

    #[test]
    fn yahoo_proxy_opens_are_human_but_proxied() {
        let ua = "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html";
        assert_eq!(
            verdict(&req(Kind::Open, Some(ua))),
            Verdict::proxied(reason::YAHOO_MAIL_PROXY)
        );
        is_machine(
            verdict(&req(Kind::Click, Some(ua))),
            reason::YAHOO_MAIL_PROXY,
        );
    }

    #[test]
    fn named_security_scanners() {
        for ua in [
            "Mozilla/5.0 (compatible; Barracuda Sentinel)",
            "Mimecast-URL-Protect/1.0",
            "Proofpoint URL Defense",
            "Mozilla/5.0 (Windows NT; Microsoft Office SafeLinks)",
            "Cisco IronPort WSA",
            "TrendMicro InterScan",
        ] {
            is_machine(
                verdict(&req(Kind::Click, Some(ua))),
                reason::SECURITY_SCANNER,
            );
        }
    }

    #[test]
    fn headless_browsers() {
        let ua = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 Safari/537.36";
        is_machine(
            verdict(&req(Kind::Click, Some(ua))),
            reason::HEADLESS_BROWSER,
        );
        is_machine(
            verdict(&req(Kind::Open, Some("Mozilla/5.0 PhantomJS/2.1.1"))),
            reason::HEADLESS_BROWSER,
        );
    }

    #[test]
    fn bots_crawlers_and_libraries() {
        for ua in [
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            "Mozilla/5.0 (compatible; bingbot/2.0)",
            "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
            "SomeCrawler/1.0",
            "Mozilla/5.0 (compatible; Yahoo! Slurp)",
            "facebookexternalhit/1.1",
            "Mozilla/5.0 (Windows NT 10.0) BingPreview/1.0b",
            "Microsoft Office Existence Discovery",
            "python-requests/2.31.0",
            "curl/8.5.0",
            "Wget/1.21",
            "Go-http-client/1.1",
            "Java/17.0.2",
            "okhttp/4.12.0",
            "Apache-HttpClient/4.5.14 (Java/17)",
            "libwww-perl/6.72",
            "node-fetch/1.0",
            "axios/1.6.0",
        ] {
            is_machine(verdict(&req(Kind::Click, Some(ua))), reason::KNOWN_BOT);
        }
        // The phone maker Cubot is not a bot.
        let cubot = "Mozilla/5.0 (Linux; Android 9; CUBOT X19) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Mobile Safari/537.36";
        assert_eq!(verdict(&req(Kind::Click, Some(cubot))), Verdict::HUMAN);
        assert!(has_bot_word("robots"));
        assert!(has_bot_word("my_bot_1"));
        assert!(!has_bot_word("abbott labs"));
    }

    #[test]
    fn clicks_soon_after_delivery() {
        let mut r = req(Kind::Click, Some(CHROME));
        r.delivery = delivered(T - 9_999);
        is_machine(verdict(&r), reason::TOO_SOON_AFTER_DELIVERY);
        // Scanned inline, before the receiver even answered 250.
        r.delivery = delivered(T + 500);
        is_machine(verdict(&r), reason::TOO_SOON_AFTER_DELIVERY);
        r.delivery = delivered(T - 10_000);
        assert_eq!(verdict(&r), Verdict::HUMAN);
        r.delivery = Delivery::default();
        assert_eq!(verdict(&r), Verdict::HUMAN);
        // The window is the configured one.
        r.delivery = delivered(T - 20_000);
        let ctx = Context {
            machine_click_window: Duration::from_secs(30),
        };
        assert_eq!(
            classify(&r, &ctx),
            Verdict::machine(reason::TOO_SOON_AFTER_DELIVERY)
        );
        // An open right after delivery is a reader watching for it.
        let mut open = req(Kind::Open, Some(IPHONE_MAIL));
        open.delivery = delivered(T - 1_000);
        assert_eq!(verdict(&open), Verdict::HUMAN);
    }

    #[test]
    fn clicks_during_delivery() {
        let mut r = req(Kind::Click, Some(CHROME));
        // The attempt started long ago and is still sending (a slow
        // receiver, a long batch): no reader has the message yet.
        r.delivery = Delivery {
            delivered_at_ms: None,
            attempt_started_at_ms: Some(T - 3_600_000),
            in_progress: true,
        };
        is_machine(verdict(&r), reason::TOO_SOON_AFTER_DELIVERY);
        // The attempt ended without a 250 (deferred) moments ago: a
        // receiver that scanned before answering.
        r.delivery.in_progress = false;
        r.delivery.attempt_started_at_ms = Some(T - 2_000);
        is_machine(verdict(&r), reason::TOO_SOON_AFTER_DELIVERY);
        // Long after a failed attempt, the timing says nothing.
        r.delivery.attempt_started_at_ms = Some(T - 60_000);
        assert_eq!(verdict(&r), Verdict::HUMAN);
        // Once delivered, the delivery time is the reference, however
        // early the attempt began.
        r.delivery = Delivery {
            delivered_at_ms: Some(T - 60_000),
            attempt_started_at_ms: Some(T - 61_000),
            in_progress: false,
        };
        assert_eq!(verdict(&r), Verdict::HUMAN);
    }

    #[test]
    fn huge_user_agents_are_cut_not_feared() {
        // 1024 falls inside a two-byte character.
        let mut ua = format!("a{}", "é".repeat(5_000));
        ua.push_str("bot");
        assert_eq!(verdict(&req(Kind::Click, Some(&ua))), Verdict::HUMAN);
    }

    #[test]
    fn click_burst_flags_different_links_within_the_window() {
        let w = BURST_WINDOW.as_millis() as i64;
        let (a, b) = (Some("https://a.example/"), Some("https://b.example/"));
        assert!(
            !click_burst(a, T, [], w),
            "the first click has nothing to compare with"
        );
        assert!(
            !click_burst(a, T + 200, [(T, a)], w),
            "the same link again is a double click"
        );
        assert!(
            click_burst(b, T + 300, [(T, a)], w),
            "another link 300 ms later"
        );
        // Out of order arrivals (clocks of two nodes) count by distance.
        assert!(click_burst(b, T - 300, [(T, a)], w));
        // Exactly the window apart, or seconds later: the reader's next link.
        assert!(!click_burst(b, T + w, [(T, a)], w));
        assert!(!click_burst(b, T + 5_000, [(T, a), (T + 100, a)], w));
        // Any one of several earlier clicks on another link is enough.
        assert!(click_burst(a, T + 900, [(T, a), (T + 800, b)], w));
        // A link the store has no URL for still differs from one it has.
        assert!(click_burst(a, T + 10, [(T, None)], w));
    }
}
