//! The reporter: flushes the counter, decides each finished day once, and
//! sends the reports (RFC 8460 section 5) with bounded retries.

use super::{build_report, check_day, day_of, gzip, now_ms, report_id, Counter, ReportMeta, Rua};
use crate::config::Config;
use crate::store::domains::{ReportClaim, ReportRow};
use crate::store::{self, Store};
use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mail_auth::hickory_resolver::proto::rr::{Name, RData, RecordType};
use mail_auth::MessageAuthenticator;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

type HttpsClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

/// How often the counter is written to the store.
const FLUSH_EVERY: Duration = Duration::from_secs(5);
/// How often finished days and due retries are looked for.
const CHECK_EVERY: Duration = Duration::from_secs(300);
/// After the first attempt, the waits before each retry; then `failed`.
const RETRY: [Duration; 4] = [
    Duration::from_secs(15 * 60),
    Duration::from_secs(60 * 60),
    Duration::from_secs(4 * 3600),
    Duration::from_secs(12 * 3600),
];
const POST_TIMEOUT: Duration = Duration::from_secs(30);
/// How many days a finished day's `_smtp._tls` lookup may keep failing.
const LOOKUP_DAYS: i64 = 3;
/// How long a sending round owns the reports it claimed: longer than a
/// round takes (a few destinations, each at most POST_TIMEOUT). A node
/// that dies mid-round leaves them due again after this.
const SEND_LEASE: Duration = Duration::from_secs(600);
/// Most reports one sending round takes.
const ROUND_LIMIT: usize = 100;

/// Who the reports come from (see the module comment of `tls_report`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sender {
    pub organization_name: String,
    /// The `[[domains]]` entry the mail goes out as (DKIM-signed with its keys).
    pub domain: String,
    pub address: String,
    pub hostname: String,
}

impl Sender {
    /// `None` without a configured domain: there is nothing to send as.
    pub fn from_config(config: &Config) -> Option<Sender> {
        let domain = config.domains.first()?.name.to_ascii_lowercase();
        Some(Sender {
            organization_name: config.server.hostname.clone(),
            address: format!("tlsrpt-noreply@{domain}"),
            domain,
            hostname: config.server.hostname.clone(),
        })
    }

    pub fn meta(&self, policy_domain: &str, day: &str) -> ReportMeta {
        ReportMeta {
            organization_name: self.organization_name.clone(),
            contact_info: self.address.clone(),
            report_id: report_id(day, policy_domain, &self.hostname),
            day: day.to_string(),
        }
    }
}

pub struct Reporter {
    store: Store,
    counter: Arc<Counter>,
    resolver: Arc<MessageAuthenticator>,
    sender: Option<Sender>,
    client: HttpsClient,
    /// Wakes the queue runner when a report mail is queued.
    queue_wake: Arc<Notify>,
    /// Counts and reports are kept as long as events (`store.retain_events`).
    retain: Duration,
}

impl Reporter {
    pub fn new(
        config: &Config,
        store: Store,
        resolver: Arc<MessageAuthenticator>,
        queue_wake: Arc<Notify>,
    ) -> Result<Reporter, String> {
        let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS report client: {e}"))?
            .with_root_certificates(crate::outbound::tls::root_store(
                config.delivery.extra_ca(),
            )?)
            .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        Ok(Reporter {
            store,
            counter: Arc::new(Counter::new(config.delivery.tls_reports)),
            resolver,
            sender: Sender::from_config(config),
            client: Client::builder(TokioExecutor::new()).build(https),
            queue_wake,
            retain: config.store.retain_events,
        })
    }

    /// Where the runner reports each session.
    pub fn counter(&self) -> Arc<Counter> {
        self.counter.clone()
    }

    /// Writes what the counter holds (also called once the runner has
    /// stopped, so the last sessions are not lost).
    pub async fn flush(&self) {
        self.counter.flush(&self.store).await;
    }

    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        if !self.counter.enabled() {
            return;
        }
        let mut next_check = tokio::time::Instant::now();
        loop {
            self.flush().await;
            if tokio::time::Instant::now() >= next_check {
                next_check = tokio::time::Instant::now() + CHECK_EVERY;
                self.check().await;
            }
            tokio::select! {
                _ = tokio::time::sleep(FLUSH_EVERY) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }

    /// Decides every finished day not yet decided, then sends what is due.
    pub async fn check(&self) {
        let now = now_ms(self.counter.skew_ms);
        let oldest = day_of(now.saturating_sub(self.retain.as_millis() as i64));
        match self.store.prune_tls_reports(&oldest).await {
            Ok(0) => {}
            Ok(n) => tracing::info!("TLS reports: {n} row(s) past store.retain_events removed"),
            Err(e) => tracing::warn!("TLS reports: pruning: {e}"),
        }
        let today = day_of(now);
        let days = match self.store.tls_unreported_days(&today).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("TLS reports: reading finished days: {e}");
                Vec::new()
            }
        };
        for (domain, day) in days {
            self.decide(&domain, &day).await;
        }
        let due = self
            .store
            .claim_tls_reports(claim(store::now_ms(), None, None))
            .await
            .unwrap_or_else(|e| {
                tracing::warn!("TLS reports: claiming due reports: {e}");
                Vec::new()
            });
        for row in due {
            self.send(row).await;
        }
    }

    /// `tls-reports send`: decides `day` now (whether or not it is over)
    /// for every domain with counts that day (or only `domain`), then makes
    /// one sending round for that day's pending reports. A day already
    /// decided is left as it is: each (domain, day) is sent once.
    pub async fn send_day(&self, day: &str, domain: Option<&str>) -> Result<(), String> {
        let summaries = self
            .store
            .tls_report_list(Some(day), domain, 100_000)
            .await
            .map_err(|e| format!("reading the store: {e}"))?;
        for s in summaries.iter().filter(|s| s.report.is_none()) {
            self.decide(&s.policy_domain, &s.day).await;
        }
        // Due or not: the operator asked for now. A claim's lease looks
        // like a retry time, so a round a server has under way for the
        // same report at this very moment is not excluded (as before the
        // claims); the destinations it reached are not sent again only once
        // it has recorded them.
        let due = self
            .store
            .claim_tls_reports(claim(i64::MAX, Some(day), domain))
            .await
            .map_err(|e| format!("reading the store: {e}"))?;
        for row in due {
            self.send(row).await;
        }
        Ok(())
    }

    /// Looks up the domain's `_smtp._tls` record and creates the day's
    /// report row: pending with the report, or no_policy. A lookup that
    /// fails is tried again at the next check.
    async fn decide(&self, domain: &str, day: &str) {
        let now = store::now_ms();
        let Some(sender) = self.sender.clone() else {
            return;
        };
        let (status, rua, why) = match self.lookup(domain).await {
            // Asked again at each check, but not forever: a day whose
            // lookups have failed for LOOKUP_DAYS is given up on.
            Err(e)
                if day
                    < day_of(now_ms(self.counter.skew_ms) - LOOKUP_DAYS * 86_400_000).as_str() =>
            {
                (
                    "failed",
                    Vec::new(),
                    Some(format!("no answer for _smtp._tls.{domain}: {e}")),
                )
            }
            Err(e) => {
                tracing::info!(
                    domain,
                    day,
                    "TLS report: _smtp._tls lookup failed, trying later: {e}"
                );
                return;
            }
            Ok(Ok(Some(rua))) => ("pending", rua, None),
            Ok(Ok(None)) => ("no_policy", Vec::new(), None),
            Ok(Err(bad)) => ("no_policy", Vec::new(), Some(bad)),
        };
        let report = if status == "pending" {
            match self.store.tls_counts(domain, day).await {
                Ok(rows) => Some(build_report(&sender.meta(domain, day), &rows).to_string()),
                Err(e) => {
                    tracing::warn!(domain, day, "TLS report: reading counts: {e}");
                    return;
                }
            }
        } else {
            None
        };
        let row = ReportRow {
            policy_domain: domain.to_string(),
            day: day.to_string(),
            status: status.to_string(),
            report_id: sender.meta(domain, day).report_id,
            report,
            rua: rua.iter().map(Rua::uri).collect(),
            done: Vec::new(),
            attempts: 0,
            next_attempt_at: (status == "pending").then_some(now),
            last_error: why,
            created_at: now,
            sent_at: None,
        };
        if let Err(e) = self.store.insert_tls_report(row).await {
            tracing::warn!(domain, day, "TLS report: storing the report: {e}");
        }
    }

    /// `Err`: no answer (try later); `Ok(Err)`: a malformed record.
    async fn lookup(&self, domain: &str) -> Result<Result<Option<Vec<Rua>>, String>, String> {
        let name = Name::from_str_relaxed(format!("_smtp._tls.{domain}."))
            .map_err(|e| format!("{domain:?} is not a DNS name: {e}"))?;
        let txts: Vec<String> = match self.resolver.resolver().lookup(name, RecordType::TXT).await {
            Ok(l) => l
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TXT(t) => {
                        let bytes: Vec<u8> = t.txt_data.iter().flatten().copied().collect();
                        Some(String::from_utf8_lossy(&bytes).into_owned())
                    }
                    _ => None,
                })
                .collect(),
            Err(e) if e.is_no_records_found() => Vec::new(),
            Err(e) => return Err(e.to_string()),
        };
        Ok(super::parse_records(&txts))
    }

    /// One round for a pending report: every destination not yet reached.
    async fn send(&self, mut row: ReportRow) {
        let Some(sender) = self.sender.clone() else {
            return;
        };
        let Some(json) = row.report.clone() else {
            return;
        };
        let gz = gzip(json.as_bytes());
        let mut errors = Vec::new();
        for uri in row.rua.clone() {
            if row.done.contains(&uri) {
                continue;
            }
            let sent = match super::record::destination(&uri) {
                Some(Rua::Mailto(addr)) => self.mail(&sender, &row, &addr, &gz).await,
                Some(Rua::Https(url)) => self.post(&url, &gz).await,
                None => Err("not a usable destination".into()),
            };
            match sent {
                Ok(()) => {
                    tracing::info!(domain = %row.policy_domain, day = %row.day, rua = %uri, "TLS report sent");
                    row.done.push(uri);
                }
                Err(e) => {
                    tracing::warn!(domain = %row.policy_domain, day = %row.day, rua = %uri, "TLS report not sent: {e}");
                    errors.push(format!("{uri}: {e}"));
                }
            }
        }
        settle(&mut row, &errors, store::now_ms());
        if let Err(e) = self.store.record_tls_attempt(row).await {
            tracing::warn!("TLS report: recording the attempt: {e}");
        }
    }

    /// Queues the report as an email through our own outbound.
    async fn mail(
        &self,
        sender: &Sender,
        row: &ReportRow,
        to: &str,
        gz: &[u8],
    ) -> Result<(), String> {
        let now = store::now_ms();
        let id = uuid::Uuid::now_v7().to_string();
        let message_id = format!("{id}@{}", sender.hostname);
        let body = report_message(sender, row, to, gz, &message_id, now);
        let received = format!(
            "Received: by {} (trackrelay) with local (TLS report)\r\n\tid {id}; {}\r\n",
            sender.hostname,
            crate::time::rfc5322(now)
        );
        let email = store::queue::NewEmail {
            id: id.clone(),
            created_at: now,
            domain: sender.domain.clone(),
            mail_from: sender.address.clone(),
            header_from: Some(sender.address.clone()),
            to_header: Some(to.to_string()),
            subject: Some(subject(sender, row)),
            message_id: Some(format!("<{message_id}>")),
            tags: vec!["tlsrpt".into()],
            auth_user: None,
            client_ip: None,
            smtputf8: false,
            received: received.into_bytes(),
            body: body.into(),
            recipients: vec![to.to_string()],
        };
        self.store
            .accept(email)
            .await
            .map_err(|e| format!("queueing the report: {e}"))?;
        self.queue_wake.notify_one();
        Ok(())
    }

    async fn post(&self, url: &str, gz: &[u8]) -> Result<(), String> {
        let req = hyper::Request::post(url)
            .header(hyper::header::CONTENT_TYPE, "application/tlsrpt+gzip")
            .header(
                hyper::header::USER_AGENT,
                concat!("trackrelay/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::copy_from_slice(gz)))
            .map_err(|e| format!("building the request: {e}"))?;
        let send = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("request failed: {}", crate::text::error_chain(&e)))?;
            let status = resp.status();
            let _ = http_body_util::BodyExt::collect(http_body_util::Limited::new(
                resp.into_body(),
                64 * 1024,
            ))
            .await;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("HTTP {status}"))
            }
        };
        tokio::time::timeout(POST_TIMEOUT, send)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {POST_TIMEOUT:?}")))
    }
}

/// One sending round's claim: pending reports due by `due_by`, held for
/// [`SEND_LEASE`] from now.
fn claim(due_by: i64, day: Option<&str>, domain: Option<&str>) -> ReportClaim {
    ReportClaim {
        due_by,
        lease_until: store::now_ms().saturating_add(SEND_LEASE.as_millis() as i64),
        day: day.map(str::to_string),
        domain: domain.map(str::to_string),
        limit: ROUND_LIMIT,
    }
}

/// After one sending round: sent when every destination was reached;
/// otherwise pending until the next retry, and once the retries are used
/// up, `sent` if some destination got it, else `failed`.
fn settle(row: &mut ReportRow, errors: &[String], now: i64) {
    row.attempts += 1;
    if errors.is_empty() {
        row.status = "sent".into();
        row.sent_at = Some(now);
        row.next_attempt_at = None;
        row.last_error = None;
        return;
    }
    row.last_error = Some(errors.join("; "));
    match RETRY.get(row.attempts as usize - 1) {
        Some(wait) => row.next_attempt_at = Some(now + wait.as_millis() as i64),
        None => {
            let some = !row.done.is_empty();
            row.status = if some { "sent" } else { "failed" }.into();
            row.sent_at = some.then_some(now);
            row.next_attempt_at = None;
        }
    }
}

/// RFC 8460 section 5.3's subject.
fn subject(sender: &Sender, row: &ReportRow) -> String {
    format!(
        "Report Domain: {} Submitter: {} Report-ID: <{}>",
        row.policy_domain, sender.domain, row.report_id
    )
}

/// The report email (RFC 8460 section 5.3): multipart/report with
/// report-type "tlsrpt", a short text part, and the gzipped JSON as an
/// application/tlsrpt+gzip attachment named as section 5.1 suggests.
pub fn report_message(
    sender: &Sender,
    row: &ReportRow,
    to: &str,
    gz: &[u8],
    message_id: &str,
    now: i64,
) -> Vec<u8> {
    let boundary = format!("tlsrpt-{}", message_id.split('@').next().unwrap_or("b"));
    let start = crate::time::parse_time(&row.day).unwrap_or(0) / 1000;
    let end = start + 86400;
    let filename = format!(
        "{}!{}!{start}!{end}.json.gz",
        sender.domain, row.policy_domain
    );
    let b64 = base64::engine::general_purpose::STANDARD.encode(gz);
    let mut m = String::with_capacity(b64.len() + 2048);
    m.push_str(&format!("From: <{}>\r\n", sender.address));
    m.push_str(&format!("To: <{to}>\r\n"));
    m.push_str(&format!("Date: {}\r\n", crate::time::rfc5322(now)));
    m.push_str(&format!("Message-ID: <{message_id}>\r\n"));
    m.push_str(&format!("Subject: {}\r\n", subject(sender, row)));
    m.push_str(&format!("TLS-Report-Domain: {}\r\n", row.policy_domain));
    m.push_str(&format!("TLS-Report-Submitter: {}\r\n", sender.domain));
    m.push_str("MIME-Version: 1.0\r\n");
    m.push_str(&format!(
        "Content-Type: multipart/report; report-type=\"tlsrpt\";\r\n\tboundary=\"{boundary}\"\r\n\r\n"
    ));
    m.push_str("This is a multipart message in MIME format.\r\n\r\n");
    m.push_str(&format!("--{boundary}\r\n"));
    m.push_str("Content-Type: text/plain; charset=us-ascii\r\n\r\n");
    m.push_str(&format!(
        "This is an aggregate TLS report (RFC 8460) from {} for {} on {} (UTC).\r\n\r\n",
        sender.organization_name, row.policy_domain, row.day
    ));
    m.push_str(&format!("--{boundary}\r\n"));
    m.push_str("Content-Type: application/tlsrpt+gzip\r\n");
    m.push_str("Content-Transfer-Encoding: base64\r\n");
    m.push_str(&format!(
        "Content-Disposition: attachment;\r\n\tfilename=\"{filename}\"\r\n\r\n"
    ));
    for chunk in b64.as_bytes().chunks(76) {
        m.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        m.push_str("\r\n");
    }
    m.push_str(&format!("--{boundary}--\r\n"));
    m.into_bytes()
}

/// `tls-reports show`: the stored report, or (for a day not yet decided)
/// the report as it would be built now from its counts.
pub async fn report_for_show(
    config: &Config,
    store: &Store,
    domain: &str,
    day: &str,
) -> Result<(String, bool), String> {
    let day = check_day(day)?;
    let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    let stored = store
        .tls_report(&domain, &day)
        .await
        .map_err(|e| format!("reading the store: {e}"))?;
    if let Some(report) = stored.as_ref().and_then(|r| r.report.clone()) {
        return Ok((report, true));
    }
    if let Some(r) = stored {
        return Err(format!(
            "{domain} {day}: no report was sent ({}{})",
            r.status,
            r.last_error.map(|e| format!(": {e}")).unwrap_or_default()
        ));
    }
    let rows = store
        .tls_counts(&domain, &day)
        .await
        .map_err(|e| format!("reading the store: {e}"))?;
    if rows.is_empty() {
        return Err(format!("no TLS sessions counted for {domain} on {day}"));
    }
    let sender = Sender::from_config(config).ok_or("no [[domains]] configured")?;
    Ok((
        build_report(&sender.meta(&domain, &day), &rows).to_string(),
        false,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::MimeHeaders;

    fn pending() -> ReportRow {
        ReportRow {
            policy_domain: "example.net".into(),
            day: "2026-11-23".into(),
            status: "pending".into(),
            report_id: "r".into(),
            report: Some("{}".into()),
            rua: vec!["mailto:a@example.net".into(), "https://r.example/x".into()],
            done: vec![],
            attempts: 0,
            next_attempt_at: Some(0),
            last_error: None,
            created_at: 0,
            sent_at: None,
        }
    }

    #[test]
    fn retries_are_bounded_and_a_partial_send_counts_as_sent() {
        let err = vec!["https://r.example/x: HTTP 503".to_string()];
        let mut row = pending();
        let mut waits = Vec::new();
        for _ in 0..RETRY.len() {
            settle(&mut row, &err, 1000);
            assert_eq!(row.status, "pending");
            waits.push(row.next_attempt_at.unwrap() - 1000);
        }
        assert!(waits.windows(2).all(|w| w[0] < w[1]), "{waits:?}");
        settle(&mut row, &err, 2000);
        assert_eq!((row.status.as_str(), row.attempts), ("failed", 5));
        assert_eq!(row.next_attempt_at, None);
        assert_eq!(
            row.last_error.as_deref(),
            Some("https://r.example/x: HTTP 503")
        );

        // One destination reached, the other never: sent, with the error kept.
        let mut row = pending();
        row.done = vec!["mailto:a@example.net".into()];
        for _ in 0..=RETRY.len() {
            settle(&mut row, &err, 3000);
        }
        assert_eq!(row.status, "sent");
        assert_eq!(row.sent_at, Some(3000));

        let mut row = pending();
        settle(&mut row, &[], 4000);
        assert_eq!((row.status.as_str(), row.sent_at), ("sent", Some(4000)));
    }

    #[test]
    fn the_report_mail_has_the_rfc_headers_and_attachment() {
        let sender = Sender {
            organization_name: "relay.test".into(),
            domain: "example.com".into(),
            address: "tlsrpt-noreply@example.com".into(),
            hostname: "relay.test".into(),
        };
        let row = ReportRow {
            policy_domain: "example.net".into(),
            day: "2026-11-23".into(),
            status: "pending".into(),
            report_id: report_id("2026-11-23", "example.net", "relay.test"),
            report: Some("{}".into()),
            rua: vec![],
            done: vec![],
            attempts: 0,
            next_attempt_at: None,
            last_error: None,
            created_at: 0,
            sent_at: None,
        };
        let gz = gzip(b"{\"x\":1}");
        let m = report_message(&sender, &row, "r@example.net", &gz, "id1@relay.test", 0);
        let parsed = mail_parser::MessageParser::default().parse(&m).unwrap();
        assert_eq!(
            parsed.subject().unwrap(),
            "Report Domain: example.net Submitter: example.com Report-ID: <2026-11-23T00:00:00Z_example.net_relay.test>"
        );
        let text = String::from_utf8_lossy(&m);
        assert!(
            text.contains("TLS-Report-Domain: example.net\r\n"),
            "{text}"
        );
        assert!(text.contains("TLS-Report-Submitter: example.com\r\n"));
        let ct = parsed.content_type().unwrap();
        assert_eq!(ct.ctype(), "multipart");
        assert_eq!(ct.subtype(), Some("report"));
        assert_eq!(ct.attribute("report-type"), Some("tlsrpt"));
        let att = parsed.attachment(0).unwrap();
        assert_eq!(att.content_type().unwrap().subtype(), Some("tlsrpt+gzip"));
        assert_eq!(
            att.attachment_name(),
            Some("example.com!example.net!1795392000!1795478400.json.gz")
        );
        assert_eq!(att.contents(), &gz[..]);
    }
}
