//! The endpoints: each asks the store (`QueryStore`) and shapes the answer
//! as the contract names it.

use super::params::Params;
use super::reply::{self, ApiError, Reply};
use super::Api;
use crate::events::StoredEvent;
use crate::store::queries::{EmailInfo, EventFilter};
use crate::time::rfc3339;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;

/// Longest a health check waits for the store before calling it down.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// The authenticated endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint<'a> {
    Metrics,
    Events,
    Stats,
    Email(&'a str),
    EmailEvents(&'a str),
    Suppressions,
    /// The address as it appears in the path (percent-encoded or not).
    Suppression(&'a str),
    /// An inbound report, by id (as it appears in the path).
    Report(&'a str),
    Domains,
    /// A domain name as it appears in the path.
    Domain(&'a str),
    /// TLS reports (RFC 8460) of outbound deliveries.
    TlsReports,
}

impl<'a> Endpoint<'a> {
    /// `None`: no such path.
    pub fn resolve(path: &'a str) -> Option<Endpoint<'a>> {
        match path {
            "/metrics" => Some(Endpoint::Metrics),
            "/v1/events" => Some(Endpoint::Events),
            "/v1/stats" => Some(Endpoint::Stats),
            "/v1/suppressions" => Some(Endpoint::Suppressions),
            "/v1/domains" => Some(Endpoint::Domains),
            "/v1/tls-reports" => Some(Endpoint::TlsReports),
            _ if path.starts_with("/v1/domains/") => {
                let d = path.strip_prefix("/v1/domains/")?;
                (!d.is_empty() && !d.contains('/')).then_some(Endpoint::Domain(d))
            }
            _ if path.starts_with("/v1/reports/") => {
                let id = path.strip_prefix("/v1/reports/")?;
                (!id.is_empty() && !id.contains('/')).then_some(Endpoint::Report(id))
            }
            _ if path.starts_with("/v1/suppressions/") => {
                let a = path.strip_prefix("/v1/suppressions/")?;
                (!a.is_empty() && !a.contains('/')).then_some(Endpoint::Suppression(a))
            }
            _ => match path.strip_prefix("/v1/emails/")?.split_once('/') {
                None => Some(Endpoint::Email(path.strip_prefix("/v1/emails/")?)),
                Some((id, "events")) => Some(Endpoint::EmailEvents(id)),
                Some(_) => None,
            },
        }
    }

    /// The methods this endpoint serves, as an `Allow` header says them.
    fn allow(self) -> &'static str {
        match self {
            Endpoint::Suppressions => "GET, HEAD, POST",
            Endpoint::Suppression(_) => "DELETE",
            _ => "GET, HEAD",
        }
    }

    /// A 405 when this endpoint does not serve `method`.
    pub fn refuses(self, method: &Method) -> Option<Reply> {
        let allow = self.allow();
        if allow.split(", ").any(|m| m == method.as_str()) {
            return None;
        }
        let mut r = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("this endpoint serves {allow} only"),
        )
        .reply();
        r.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static(allow),
        );
        Some(r)
    }

    pub async fn run(
        self,
        api: &Api,
        method: &Method,
        query: Option<&str>,
        body: &[u8],
    ) -> Result<Reply, ApiError> {
        match self {
            Endpoint::Suppressions if method == Method::POST => {
                super::suppressions::add(api, query, body).await
            }
            Endpoint::Suppressions => super::suppressions::list(api, query).await,
            Endpoint::Suppression(raw) => super::suppressions::remove(api, raw, query).await,
            Endpoint::Report(id) => super::reports::show(api, id, query).await,
            Endpoint::Domains => super::domains::list(api, query).await,
            Endpoint::TlsReports => super::tls_reports::list(api, query).await,
            Endpoint::Domain(name) => super::domains::show(api, name, query).await,
            Endpoint::Metrics => metrics(api, query).await,
            Endpoint::Events => events(api, query).await,
            Endpoint::Stats => stats(api, query).await,
            Endpoint::Email(id) => email(api, id, query).await,
            Endpoint::EmailEvents(id) => email_events(api, id, query).await,
        }
    }
}

/// Email ids are UUIDs, stored hyphenated in lower case; any spelling the
/// uuid crate reads is accepted.
fn email_id(raw: &str) -> Result<String, ApiError> {
    uuid::Uuid::try_parse(raw)
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| ApiError::bad_request(format!("{raw:?} is not an email id (a UUID)")))
}

fn no_such_email(id: &str) -> ApiError {
    ApiError::not_found(format!("no email with id {id}"))
}

/// The store's answer, or a 500 saying what could not be read.
pub(super) async fn answer<T>(
    what: &str,
    reading: impl std::future::Future<Output = crate::store::Result<T>>,
) -> Result<T, ApiError> {
    reading
        .await
        .map_err(|e| ApiError::internal(&format!("reading {what} from the store"), e))
}

/// `GET /v1/emails/{id}`: the email and its recipients' delivery state.
async fn email(api: &Api, raw_id: &str, query: Option<&str>) -> Result<Reply, ApiError> {
    Params::parse(query, &[])?;
    let id = email_id(raw_id)?;
    match answer("the email", api.store.email(&id)).await? {
        Some(e) => Ok(reply::ok(&email_json(&e))),
        None => Err(no_such_email(&id)),
    }
}

pub fn email_json(e: &EmailInfo) -> Value {
    let t = |v: Option<i64>| v.map(rfc3339);
    let recipients: Vec<Value> = e
        .recipients
        .iter()
        .map(|r| {
            json!({
                "index": r.idx,
                "recipient": r.address,
                "status": r.status,
                "attempts": r.attempts,
                "next_attempt_at": t(r.next_attempt_at),
                "last_response": r.last_response,
                "tls": r.tls,
                "tls_policy": r.tls_policy,
                "delivered_at": t(r.delivered_at),
                "bounced_at": t(r.bounced_at),
                "opened_at": t(r.opened_at),
                "clicked_at": t(r.clicked_at),
            })
        })
        .collect();
    json!({
        "id": e.id,
        "created_at": rfc3339(e.created_at),
        "domain": e.domain,
        "mail_from": e.mail_from,
        "from": e.header_from,
        "to": e.to_header,
        "subject": e.subject,
        "message_id": e.message_id,
        "tags": e.tags,
        "size": e.size,
        "body_pruned": e.pruned,
        "recipients": recipients,
    })
}

const EVENT_PARAMS: &[&str] = &["type", "since", "until", "limit", "after"];

fn event_filter(p: &Params, email_id: Option<String>) -> Result<EventFilter, ApiError> {
    let limit = p.limit()?;
    Ok(EventFilter {
        email_id,
        kind: p.event_type()?,
        since: p.time("since")?,
        until: p.time("until")?,
        after_id: p.after()?,
        // One more than asked, to know whether another page follows.
        limit: limit + 1,
    })
}

/// `{"data": [...], "next_after": id|null}`: `next_after` is set when more
/// events follow, and is what the next request passes as `after`.
fn page(mut rows: Vec<StoredEvent>, limit: usize) -> Value {
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next_after = if more {
        rows.last().map(|e| e.id)
    } else {
        None
    };
    json!({
        "data": rows.iter().map(StoredEvent::to_json).collect::<Vec<_>>(),
        "next_after": next_after,
    })
}

/// `GET /v1/events?type=&since=&until=&limit=&after=`: events in id order.
async fn events(api: &Api, query: Option<&str>) -> Result<Reply, ApiError> {
    let p = Params::parse(query, EVENT_PARAMS)?;
    let filter = event_filter(&p, None)?;
    let limit = filter.limit - 1;
    let rows = answer("events", api.store.events(&filter)).await?;
    Ok(reply::ok(&page(rows, limit)))
}

/// `GET /v1/emails/{id}/events`: the same, for one email. Events of an id
/// the store has no email for (pruned, or tokens from `preview`) are still
/// shown; an id with neither is 404.
async fn email_events(api: &Api, raw_id: &str, query: Option<&str>) -> Result<Reply, ApiError> {
    let p = Params::parse(query, EVENT_PARAMS)?;
    let id = email_id(raw_id)?;
    let filter = event_filter(&p, Some(id.clone()))?;
    let limit = filter.limit - 1;
    let rows = answer("events", api.store.events(&filter)).await?;
    if rows.is_empty() && !answer("the email", api.store.email_known(&id)).await? {
        return Err(no_such_email(&id));
    }
    Ok(reply::ok(&page(rows, limit)))
}

/// `GET /v1/stats?domain=&since=&until=`: over the emails accepted in
/// `[since, until)`, unique per recipient, human and machine apart.
async fn stats(api: &Api, query: Option<&str>) -> Result<Reply, ApiError> {
    let p = Params::parse(query, &["domain", "since", "until"])?;
    let domain = p.text("domain").map(str::to_string);
    let (since, until) = (p.time("since")?, p.time("until")?);
    let st = answer("stats", api.store.stats(domain.as_deref(), since, until)).await?;
    let mut v = st.to_json();
    if let Value::Object(m) = &mut v {
        // Echoed resolved, so "since=24h" says which window it was.
        m.insert("domain".into(), json!(domain));
        m.insert("since".into(), json!(since.map(rfc3339)));
        m.insert("until".into(), json!(until.map(rfc3339)));
    }
    Ok(reply::ok(&v))
}

/// `GET /metrics`: the process's counters and histograms, and gauges read
/// from the store. When the store does not answer, the counters are still
/// served and `trackrelay_store_up` says 0.
async fn metrics(api: &Api, query: Option<&str>) -> Result<Reply, ApiError> {
    use std::fmt::Write;
    Params::parse(query, &[])?;
    let mut out = api.metrics.render();
    let gauges = api.store.gauges().await;
    // Up means what /healthz means: the writer answers and the file is ours.
    let healthy = matches!(
        tokio::time::timeout(HEALTH_TIMEOUT, api.store.health()).await,
        Ok(Ok(_))
    );
    let mut domain_rows = None;
    let mut gauge = |name: &str, help: &str, v: i64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    };
    match gauges {
        Ok(g) => {
            domain_rows = Some(g.domain_statuses);
            gauge(
                "trackrelay_store_up",
                "1 when the store answered this scrape and passed its health check",
                healthy as i64,
            );
            gauge(
                "trackrelay_queue_depth",
                "recipients queued, deferred or being delivered",
                g.queue_depth,
            );
            gauge(
                "trackrelay_webhook_outbox_pending",
                "webhook deliveries waiting to be sent or retried",
                g.webhooks_pending,
            );
            gauge(
                "trackrelay_webhook_outbox_failed",
                "webhook deliveries given up",
                g.webhooks_failed,
            );
        }
        Err(e) => {
            tracing::warn!("admin API: /metrics: the store did not answer: {e}");
            gauge(
                "trackrelay_store_up",
                "1 when the store answered this scrape and passed its health check",
                0,
            );
        }
    }
    if let Some(rows) = domain_rows {
        domain_gauges(api, &rows, &mut out);
    }
    Ok(reply::text(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        out,
    ))
}

/// `trackrelay_domain_status{domain,status}`: every configured domain, in
/// every status, 1 for the one it is in (not_started before its first check).
/// `rows`: `(domain, status)` as stored.
fn domain_gauges(api: &Api, rows: &[(String, String)], out: &mut String) {
    use crate::domains::DomainStatus;
    let statuses: Vec<(String, &str)> = api
        .domains
        .iter()
        .map(|d| {
            let row = rows
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(&d.name));
            let status = row.map_or(DomainStatus::NotStarted, |(_, s)| DomainStatus::parse(s));
            (d.name.to_ascii_lowercase(), status.as_str())
        })
        .collect();
    let names = DomainStatus::ALL.map(|s| s.as_str());
    crate::metrics::render_state_gauge(
        out,
        "trackrelay_domain_status",
        "1 for each configured domain's current verification status, 0 for the others",
        ("domain", "status"),
        &names,
        &statuses,
    );
}

/// `GET /healthz` (no token): 200 when the store can take writes (its
/// writer answers, its file is the one opened, real pages read back).
pub async fn healthz(api: &Api) -> Reply {
    let probe = api.store.health();
    let (status, body) = match tokio::time::timeout(HEALTH_TIMEOUT, probe).await {
        Ok(Ok(_)) => (StatusCode::OK, "ok\n".to_string()),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}\n")),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store: no answer within {}s\n", HEALTH_TIMEOUT.as_secs()),
        ),
    };
    reply::text(status, "text/plain; charset=utf-8", body)
}

#[cfg(test)]
mod tests {
    use super::Endpoint;

    #[test]
    fn resolves_suppression_paths() {
        assert_eq!(
            Endpoint::resolve("/v1/suppressions"),
            Some(Endpoint::Suppressions)
        );
        assert_eq!(
            Endpoint::resolve("/v1/suppressions/a%40b.test"),
            Some(Endpoint::Suppression("a%40b.test"))
        );
    }

    #[test]
    fn resolves_paths() {
        assert_eq!(Endpoint::resolve("/metrics"), Some(Endpoint::Metrics));
        assert_eq!(Endpoint::resolve("/v1/events"), Some(Endpoint::Events));
        assert_eq!(Endpoint::resolve("/v1/stats"), Some(Endpoint::Stats));
        assert_eq!(Endpoint::resolve("/v1/domains"), Some(Endpoint::Domains));
        assert_eq!(
            Endpoint::resolve("/v1/domains/example.com"),
            Some(Endpoint::Domain("example.com"))
        );
        assert_eq!(
            Endpoint::resolve("/v1/emails/x"),
            Some(Endpoint::Email("x"))
        );
        assert_eq!(
            Endpoint::resolve("/v1/emails/x/events"),
            Some(Endpoint::EmailEvents("x"))
        );
        for none in [
            "/",
            "/v1",
            "/v1/events/",
            "/v1/emails/x/y",
            "/v1/emails/x/events/z",
            "/metricsx",
            "/v1/suppressions/",
            "/v1/suppressions/a/b",
            "/v1/domains/",
            "/v1/domains/a/b",
        ] {
            assert_eq!(Endpoint::resolve(none), None, "{none}");
        }
    }
}
