//! Domains: each configured domain's status, and one page per domain with
//! its DNS records expected against found, the tracking host in use and
//! why, its certificate's expiry, its settings and its status history.
//!
//! The pages render `domains::view::domain_json`, the same shape
//! `GET /v1/domains/{name}` returns, so the page and the API never
//! disagree. Found records come from DNS, i.e. from whoever controls the
//! zone: every one goes through `esc`.

use super::html::{esc, time};
use super::{Page, PageError, Req};
use crate::api::reply::Reply;
use crate::config::{DomainConfig, TlsPolicy};
use crate::domains::view::domain_json;
use serde_json::Value;
use std::fmt::Write;
use std::path::Path;

const HISTORY: usize = 100;

/// The page's answer when the store does not answer (the cause is logged).
fn failed(what: &str, e: crate::store::StoreError) -> PageError {
    tracing::error!("dashboard: reading {what}: {e}");
    PageError::Internal(format!("Reading {what} from the store failed: {e}"))
}

fn badge(status: &str) -> String {
    format!("<span class=\"st st-{0}\">{0}</span>", esc(status))
}

/// An RFC 3339 string from the JSON as the pages show times, or a dash.
fn when(v: &Value) -> String {
    match v.as_str() {
        Some(s) => esc(&s.get(..19).unwrap_or(s).replace('T', " ")).to_string(),
        None => "–".into(),
    }
}

/// A DNS name or value as code; a dash when there is none yet (e.g. DKIM
/// before a selector is configured).
fn code_or_dash(s: &str) -> String {
    if s.is_empty() {
        "<span class=\"muted\">–</span>".into()
    } else {
        format!("<code>{}</code>", esc(s))
    }
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

pub async fn list(p: &Page<'_>, _req: &Req<'_>) -> Result<Reply, PageError> {
    let rows = p
        .store()
        .domain_statuses()
        .await
        .map_err(|e| failed("the domain statuses", e))?;
    let mut b = String::new();
    if p.ui.domain_configs.is_empty() {
        b.push_str("<p class=\"empty\">No <code>[[domains]]</code> are configured.</p>");
        return Ok(p.render("Domains", "/domains", &b));
    }
    b.push_str(
        "<div class=\"scroll\"><table class=\"domains stack\"><thead><tr><th scope=\"col\">Domain</th>\
         <th scope=\"col\">Status</th><th scope=\"col\">Why</th><th scope=\"col\">Last checked (UTC)</th>\
         <th scope=\"col\">Next check (UTC)</th></tr></thead><tbody>",
    );
    for d in &p.ui.domain_configs {
        let name = d.name.to_ascii_lowercase();
        let row = rows.iter().find(|r| r.domain == name);
        let v = domain_json(d, row, None);
        let _ = write!(
            b,
            "<tr><td data-label=\"Domain\"><a href=\"/domains/{}\">{}</a></td>\
             <td data-label=\"Status\">{}</td><td data-label=\"Why\">{}</td>\
             <td data-label=\"Last checked (UTC)\">{}</td><td data-label=\"Next check (UTC)\">{}</td></tr>",
            esc(&super::html::q(&name)),
            esc(&name),
            badge(text(&v["status"])),
            esc(text(&v["status_reason"])),
            when(&v["checked_at"]),
            when(&v["next_check_at"]),
        );
    }
    b.push_str("</tbody></table></div>");
    Ok(p.render("Domains", "/domains", &b))
}

pub async fn show(p: &Page<'_>, _req: &Req<'_>, name: &str) -> Result<Reply, PageError> {
    let Some(d) =
        p.ui.domain_configs
            .iter()
            .find(|d| d.name.eq_ignore_ascii_case(name))
    else {
        return Err(PageError::NotFound(format!(
            "{name} is not a configured domain."
        )));
    };
    let key = d.name.to_ascii_lowercase();
    let what = "the domain's status";
    let store = p.store();
    let row = store
        .domain_status(&key)
        .await
        .map_err(|e| failed(what, e))?;
    let history = store
        .domain_history(&key, HISTORY)
        .await
        .map_err(|e| failed(what, e))?;
    let v = domain_json(d, row.as_ref(), Some(&history));
    let mut b = String::new();
    let _ = write!(
        b,
        "<dl class=\"facts\"><dt>Status</dt><dd>{}</dd><dt>Why</dt><dd>{}</dd>\
         <dt>Since (UTC)</dt><dd>{}</dd><dt>Last checked (UTC)</dt><dd>{}</dd>\
         <dt>Next check (UTC)</dt><dd>{}</dd></dl>",
        badge(text(&v["status"])),
        esc(text(&v["status_reason"])),
        when(&v["status_since"]),
        when(&v["checked_at"]),
        when(&v["next_check_at"]),
    );
    records(&mut b, &v["records"]);
    tracking(&mut b, d, &v["tracking"]).await;
    settings(&mut b, d);
    history_table(&mut b, &v["history"]);
    Ok(p.render(&d.name.to_ascii_lowercase(), "/domains", &b))
}

fn records(b: &mut String, records: &Value) {
    b.push_str("<h2>DNS records</h2>");
    let list = records.as_array().map(Vec::as_slice).unwrap_or_default();
    if list.is_empty() {
        b.push_str(
            "<p class=\"empty\">Not checked yet: the records appear after the first check.</p>",
        );
        return;
    }
    b.push_str(
        "<div class=\"scroll\"><table class=\"records stack\"><thead><tr><th scope=\"col\">Record</th>\
         <th scope=\"col\">Name</th><th scope=\"col\">Expected</th><th scope=\"col\">Found</th>\
         <th scope=\"col\">Status</th><th scope=\"col\">Needed</th><th scope=\"col\">Note</th></tr></thead><tbody>",
    );
    for r in list {
        let found = r["found"]
            .as_array()
            .map(|f| {
                f.iter()
                    .map(|x| format!("<code>{}</code>", esc(text(x))))
                    .collect::<Vec<_>>()
                    .join("<br>")
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "<span class=\"muted\">nothing</span>".into());
        let needed = if r["required"].as_bool().unwrap_or(false) {
            "required"
        } else {
            "recommended"
        };
        let _ = write!(
            b,
            "<tr><td data-label=\"Record\">{} <span class=\"muted\">{}</span></td>\
             <td data-label=\"Name\">{}</td><td data-label=\"Expected\">{}</td>\
             <td data-label=\"Found\">{found}</td><td data-label=\"Status\">{}</td>\
             <td data-label=\"Needed\">{needed}</td><td data-label=\"Note\">{}</td></tr>",
            esc(text(&r["record"])),
            esc(text(&r["type"])),
            code_or_dash(text(&r["name"])),
            code_or_dash(text(&r["expected"])),
            badge(text(&r["status"])),
            esc(text(&r["note"])),
        );
    }
    b.push_str("</tbody></table></div>");
}

async fn tracking(b: &mut String, d: &DomainConfig, t: &Value) {
    b.push_str("<h2>Tracking host</h2><dl class=\"facts\">");
    let in_use = match t["in_use"].as_str() {
        Some(h) => format!("<code>{}</code>", esc(h)),
        None => "none".into(),
    };
    let previous = t["previous"]
        .as_array()
        .map(|p| {
            p.iter()
                .map(|h| format!("<code>{}</code>", esc(text(h))))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "none".into());
    let configured = match t["configured"].as_str() {
        Some(h) => format!("<code>{}</code>", esc(h)),
        None => "none".into(),
    };
    let _ = write!(
        b,
        "<dt>In use</dt><dd>{in_use}</dd><dt>Why</dt><dd>{}</dd><dt>Configured</dt><dd>{configured}</dd>\
         <dt>Previous (still answered)</dt><dd>{previous}</dd><dt>Certificate</dt><dd>{}</dd></dl>",
        esc(text(&t["reason"])),
        certificate(d.tracking_tls_cert.as_deref()).await,
    );
}

/// The tracking certificate's expiry, read from the configured PEM at
/// each view (so a renewed file shows without a restart).
async fn certificate(path: Option<&Path>) -> String {
    let Some(path) = path else {
        return "not configured (<code>tracking_tls_cert</code>): links use plain HTTP or the proxy's certificate".into();
    };
    let shown = esc(&path.display().to_string()).to_string();
    let pem = match tokio::fs::read(path).await {
        Ok(p) => p,
        Err(e) => {
            return format!(
                "<code>{shown}</code>: cannot read it: {}",
                esc(&e.to_string())
            )
        }
    };
    let first = rustls_pemfile::certs(&mut pem.as_slice()).next();
    let Some(Ok(cert)) = first else {
        return format!("<code>{shown}</code>: no certificate in it");
    };
    match crate::cert::not_after(&cert) {
        Ok(ms) => {
            let left = (ms - crate::time::now_ms()) / 86_400_000;
            let state = if left < 0 {
                "<span class=\"st st-failed\">expired</span>".to_string()
            } else {
                format!("{left} days left")
            };
            format!("<code>{shown}</code>: expires {} UTC ({state})", time(ms))
        }
        Err(e) => format!(
            "<code>{shown}</code>: its expiry cannot be read: {}",
            esc(&e)
        ),
    }
}

fn settings(b: &mut String, d: &DomainConfig) {
    let on = |x: bool| if x { "on" } else { "off" };
    let tls = match d.tls {
        TlsPolicy::Opportunistic => "opportunistic",
        TlsPolicy::Enforced => "enforced",
    };
    let selectors = d
        .dkim
        .iter()
        .map(|k| format!("<code>{}</code>", esc(&k.selector)))
        .collect::<Vec<_>>()
        .join(", ");
    let _ = write!(
        b,
        "<h2>Settings</h2><dl class=\"facts\"><dt>Open tracking</dt><dd>{}</dd>\
         <dt>Click tracking</dt><dd>{}</dd><dt>TLS policy</dt><dd>{tls}</dd>\
         <dt>Return path</dt><dd>{}</dd><dt>List-Unsubscribe</dt><dd>{}</dd>\
         <dt>Suppress on</dt><dd>{}</dd><dt>DKIM selectors</dt><dd>{}</dd></dl>",
        on(d.open_tracking),
        on(d.click_tracking),
        d.return_path
            .as_deref()
            .map(|r| format!("<code>{}</code>", esc(r)))
            .unwrap_or_else(|| "none".into()),
        on(d.list_unsubscribe),
        if d.suppress_on.is_empty() {
            "nothing".to_string()
        } else {
            esc(&d.suppress_on.join(", ")).to_string()
        },
        if selectors.is_empty() {
            "none".to_string()
        } else {
            selectors
        },
    );
}

fn history_table(b: &mut String, h: &Value) {
    b.push_str("<h2>Status history</h2>");
    let list = h.as_array().map(Vec::as_slice).unwrap_or_default();
    if list.is_empty() {
        b.push_str("<p class=\"empty\">No status change yet.</p>");
        return;
    }
    b.push_str(
        "<div class=\"scroll\"><table class=\"history stack\"><thead><tr><th scope=\"col\">At (UTC)</th>\
         <th scope=\"col\">From</th><th scope=\"col\">To</th><th scope=\"col\">Why</th></tr></thead><tbody>",
    );
    for e in list {
        let _ = write!(
            b,
            "<tr><td data-label=\"At (UTC)\">{}</td><td data-label=\"From\">{}</td>\
             <td data-label=\"To\">{}</td><td data-label=\"Why\">{}</td></tr>",
            when(&e["at"]),
            badge(text(&e["from"])),
            badge(text(&e["to"])),
            esc(text(&e["reason"])),
        );
    }
    b.push_str("</tbody></table></div>");
}
