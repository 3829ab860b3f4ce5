//! The email search and an email's page: each recipient's timeline from
//! its events (accepted, every attempt, delivered or bounced, opens and
//! clicks, complaints and unsubscribes) and the webhooks sent for it.

use super::html::{esc, esc_opt, q, time};
use super::{Page, PageError, Req};
use crate::api::reply::Reply;
use crate::events::StoredEvent;
use crate::store::queries::{EmailSearch, EventFilter, SCAN_BUDGET};
use serde_json::Value;
use std::fmt::Write;

const STATUSES: [&str; 7] = [
    "queued",
    "sending",
    "deferred",
    "delivered",
    "bounced",
    "failed",
    "suppressed",
];
const PAGE_SIZE: usize = 50;
/// Events shown on an email's page (a newsletter to one person has a few
/// dozen; a flood of machine opens is cut here, and said so).
const MAX_EVENTS: usize = 2000;

pub async fn search(p: &Page<'_>, req: &Req<'_>) -> Result<Reply, PageError> {
    let f = req.query_fields();
    let get = |k: &str| f.get(k).map(|s| s.trim()).unwrap_or("");
    let time_of = |k: &str, name: &str| -> Result<Option<i64>, PageError> {
        let v = get(k);
        if v.is_empty() {
            return Ok(None);
        }
        crate::time::parse_time(v).map(Some).ok_or_else(|| {
            PageError::BadRequest(format!(
                "{name}: {v:?} is not a date (2026-11-24), a time (RFC 3339) or a duration back (24h)"
            ))
        })
    };
    let status = get("status");
    if !status.is_empty() && !STATUSES.contains(&status) {
        return Err(PageError::BadRequest(format!("Unknown status {status:?}.")));
    }
    let s = EmailSearch {
        recipient: Some(get("recipient").to_string()),
        subject: Some(get("subject").to_string()),
        tag: Some(get("tag").to_string()),
        status: Some(status.to_string()),
        since: time_of("since", "From")?,
        until: time_of("until", "To")?,
        limit: PAGE_SIZE,
    };
    let found = p.answer("emails", p.store().search(&s)).await?;
    let rows = found.rows;
    let mut b = String::new();
    let _ = write!(
        b,
        "<form method=\"get\" action=\"/emails\" class=\"filters\" role=\"search\">\
         <label>Recipient <input name=\"recipient\" type=\"email\" value=\"{}\" placeholder=\"someone@example.net\"></label>\
         <label>Subject contains <input name=\"subject\" value=\"{}\"></label>\
         <label>Tag <input name=\"tag\" value=\"{}\"></label>\
         <label>Status <select name=\"status\"><option value=\"\">Any</option>",
        esc(get("recipient")),
        esc(get("subject")),
        esc(get("tag"))
    );
    for st in STATUSES {
        let sel = if st == status { " selected" } else { "" };
        let _ = write!(b, "<option{sel}>{st}</option>");
    }
    let _ = write!(
        b,
        "</select></label><label>From <input name=\"since\" value=\"{}\" placeholder=\"24h or 2026-11-24\"></label>\
         <label>To <input name=\"until\" value=\"{}\"></label><button type=\"submit\">Search</button></form>",
        esc(get("since")),
        esc(get("until"))
    );
    if let Some(t) = found.scanned_back_to {
        // Continue where the scan stopped: the same search, older emails.
        let mut more: Vec<(String, String)> = f
            .iter()
            .filter(|(k, v)| k.as_str() != "until" && !v.trim().is_empty())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        more.sort();
        more.push(("until".into(), crate::time::rfc3339(t)));
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(more)
            .finish();
        let _ = write!(
            b,
            "<p class=\"note\" role=\"status\">Subject, tag and status are searched in the newest {} emails \
             of the window at a time; this search reached back to {} UTC. \
             <a href=\"/emails?{}\">Search older emails</a></p>",
            SCAN_BUDGET,
            time(t),
            esc(&query)
        );
    }
    if rows.is_empty() {
        b.push_str("<p class=\"empty\">No email matches.</p>");
    } else {
        let _ = write!(
            b,
            "<p>{} email{}, newest first{}.</p><div class=\"scroll\"><table class=\"emails stack\"><thead><tr>\
             <th scope=\"col\">Accepted (UTC)</th><th scope=\"col\">Subject</th><th scope=\"col\">From</th>\
             <th scope=\"col\">Recipients</th><th scope=\"col\">Tags</th></tr></thead><tbody>",
            rows.len(),
            if rows.len() == 1 { "" } else { "s" },
            if rows.len() == PAGE_SIZE {
                " (the first 50: narrow the search for older ones)"
            } else {
                ""
            }
        );
        for e in &rows {
            let rcpts: Vec<String> = e
                .recipients
                .iter()
                .map(|(a, s)| {
                    format!(
                        "{} <span class=\"st st-{}\">{}</span>",
                        esc(a),
                        esc(s),
                        esc(s)
                    )
                })
                .collect();
            let tags: Vec<String> = e
                .tags
                .iter()
                .map(|t| format!("<a href=\"/emails?tag={}\">{}</a>", q(t), esc(t)))
                .collect();
            let subject = e.subject.as_deref().unwrap_or("(no subject)");
            let _ = write!(
                b,
                "<tr><td data-label=\"Accepted (UTC)\">{}</td><td data-label=\"Subject\"><a href=\"/emails/{}\">{}</a></td>\
                 <td data-label=\"From\">{}</td><td data-label=\"Recipients\">{}</td><td data-label=\"Tags\">{}</td></tr>",
                time(e.created_at),
                esc(&e.id),
                esc(subject),
                esc(&e.from),
                rcpts.join("<br>"),
                tags.join(" ")
            );
        }
        b.push_str("</tbody></table></div>");
    }
    Ok(p.render("Emails", "/emails", &b))
}

pub async fn show(p: &Page<'_>, _req: &Req<'_>, raw_id: &str) -> Result<Reply, PageError> {
    let id = uuid::Uuid::try_parse(raw_id)
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| PageError::NotFound(format!("{raw_id:?} is not an email id.")))?;
    let filter = EventFilter {
        email_id: Some(id.clone()),
        limit: MAX_EVENTS + 1,
        ..Default::default()
    };
    let store = p.store();
    let email = p.answer("the email", store.email(&id)).await?;
    let events = p
        .answer("the email's events", store.events(&filter))
        .await?;
    let hooks = p
        .answer("the email's webhooks", store.webhooks_for_email(&id))
        .await?;
    if email.is_none() && events.is_empty() {
        return Err(PageError::NotFound(format!("There is no email {id}.")));
    }
    let mut b = String::new();
    let subject = email
        .as_ref()
        .and_then(|e| e.subject.clone())
        .unwrap_or_else(|| "(no subject)".into());
    if let Some(e) = &email {
        let _ = write!(
            b,
            "<dl class=\"facts\"><dt>Subject</dt><dd>{}</dd><dt>From</dt><dd>{}</dd>\
             <dt>Envelope sender</dt><dd>{}</dd><dt>To</dt><dd>{}</dd><dt>Accepted</dt><dd>{} UTC</dd>\
             <dt>Id</dt><dd><code>{}</code></dd><dt>Message-ID</dt><dd>{}</dd><dt>Tags</dt><dd>{}</dd>\
             <dt>Size</dt><dd>{} bytes{}</dd></dl>",
            esc(&subject),
            esc_opt(&e.header_from),
            esc(&e.mail_from),
            esc_opt(&e.to_header),
            time(e.created_at),
            esc(&e.id),
            esc_opt(&e.message_id),
            esc(&e.tags.join(", ")),
            e.size,
            if e.pruned { " (body pruned)" } else { "" }
        );
    } else {
        b.push_str("<p class=\"note\">The email itself was pruned; its events remain.</p>");
    }
    if events.len() > MAX_EVENTS {
        let _ = write!(
            b,
            "<p class=\"note\">Only the first {MAX_EVENTS} events are shown.</p>"
        );
    }
    // Recipients in index order, then any the events name that the store
    // no longer has.
    let mut names: Vec<String> = email
        .as_ref()
        .map(|e| e.recipients.iter().map(|r| r.address.clone()).collect())
        .unwrap_or_default();
    for ev in &events {
        if let Some(r) = &ev.recipient {
            if !names.contains(r) {
                names.push(r.clone());
            }
        }
    }
    for name in &names {
        let info = email
            .as_ref()
            .and_then(|e| e.recipients.iter().find(|r| &r.address == name));
        let _ = write!(
            b,
            "<section class=\"recipient\" aria-label=\"Recipient {0}\"><h2>{0}",
            esc(name)
        );
        if let Some(r) = info {
            let _ = write!(
                b,
                " <span class=\"st st-{0}\">{0}</span></h2><p class=\"meta\">{1} attempt{2}",
                esc(&r.status),
                r.attempts,
                if r.attempts == 1 { "" } else { "s" }
            );
            if let Some(n) = r.next_attempt_at {
                let _ = write!(b, "; next attempt {} UTC", time(n));
            }
            b.push_str("</p>");
        } else {
            b.push_str("</h2>");
        }
        b.push_str("<ol class=\"timeline\">");
        for ev in events
            .iter()
            .take(MAX_EVENTS)
            .filter(|e| e.recipient.as_deref() == Some(name))
        {
            entry(&mut b, ev);
        }
        b.push_str("</ol></section>");
    }
    let loose: Vec<&StoredEvent> = events
        .iter()
        .take(MAX_EVENTS)
        .filter(|e| e.recipient.is_none())
        .collect();
    if !loose.is_empty() {
        b.push_str("<section><h2>About the whole email</h2><ol class=\"timeline\">");
        for ev in loose {
            entry(&mut b, ev);
        }
        b.push_str("</ol></section>");
    }
    b.push_str("<section class=\"hooks\"><h2>Webhooks sent</h2>");
    if hooks.is_empty() {
        b.push_str("<p class=\"empty\">None (no endpoint wanted these events).</p>");
    } else {
        b.push_str(
            "<div class=\"scroll\"><table><thead><tr><th scope=\"col\">Event</th><th scope=\"col\">Endpoint</th>\
             <th scope=\"col\">Status</th><th scope=\"col\">Attempts</th><th scope=\"col\">Queued (UTC)</th>\
             <th scope=\"col\">Delivered (UTC)</th><th scope=\"col\">Last error</th></tr></thead><tbody>",
        );
        for h in &hooks {
            let kind = events
                .iter()
                .find(|e| e.id == h.event_id)
                .map(|e| e.kind.as_str())
                .unwrap_or("");
            let _ = write!(
                b,
                "<tr><td>{} <span class=\"muted\">#{}</span></td><td>{}</td><td><span class=\"st st-{}\">{}</span></td>\
                 <td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(kind),
                h.event_id,
                esc(&h.endpoint),
                esc(&h.status),
                esc(&h.status),
                h.attempts,
                time(h.created_at),
                h.delivered_at.map(time).unwrap_or_default(),
                esc_opt(&h.last_error)
            );
        }
        b.push_str("</tbody></table></div>");
    }
    b.push_str("</section>");
    let title = format!("Email: {subject}");
    Ok(p.render(&title, "/emails", &b))
}

fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// An attempt's duration as a person reads it: "850 ms", "1.2 s", "2 min 5 s".
fn duration(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{} min {} s", ms / 60_000, ms % 60_000 / 1000)
    }
}

/// One timeline entry, its fields as a small definition list.
fn entry(b: &mut String, ev: &StoredEvent) {
    let label = match ev.kind.as_str() {
        "email.sent" => "Accepted",
        "email.delivered" => "Delivered",
        "email.delivery_delayed" => "Delivery attempt failed (will retry)",
        "email.bounced" => "Bounced",
        "email.failed" => "Failed",
        "email.opened" => "Opened",
        "email.clicked" => "Clicked",
        "email.complained" => "Complaint",
        "email.suppressed" => "Suppressed (not sent)",
        "email.unsubscribed" => "Unsubscribed",
        other => other,
    };
    let _ = write!(
        b,
        "<li class=\"ev ev-{}\"><time>{}</time> <strong>{}</strong>",
        esc(ev.kind.trim_start_matches("email.")),
        time(ev.at),
        esc(label)
    );
    let mut facts: Vec<(&str, String)> = Vec::new();
    let d = ev.detail.as_ref();
    let field = |k: &str| text(d.and_then(|d| d.get(k)));
    if let Some(a) = field("attempt") {
        facts.push(("Attempt", a));
    }
    if let Some(mx) = field("mx") {
        facts.push(("MX", mx));
    }
    if let Some(r) = field("response") {
        facts.push(("Reply", r));
    }
    if matches!(
        ev.kind.as_str(),
        "email.delivered" | "email.delivery_delayed" | "email.bounced"
    ) {
        facts.push((
            "TLS",
            field("tls").unwrap_or_else(|| "none (plaintext)".into()),
        ));
    }
    if let Some(ms) = d.and_then(|d| d.get("duration_ms")).and_then(Value::as_i64) {
        facts.push(("Duration", duration(ms)));
    }
    if let Some(n) = field("next_attempt_at") {
        facts.push(("Next attempt", n));
    }
    if let Some(bounce) = d.and_then(|d| d.get("bounce")) {
        for k in ["type", "sub_type", "message", "reporting_mta"] {
            if let Some(v) = text(bounce.get(k)) {
                facts.push((
                    match k {
                        "type" => "Bounce type",
                        "sub_type" => "Bounce sub-type",
                        "message" => "Bounce message",
                        _ => "Reporting MTA",
                    },
                    v,
                ));
            }
        }
    }
    if let Some(l) = &ev.link {
        facts.push(("Link", l.clone()));
    }
    if let Some(ip) = &ev.ip {
        facts.push(("IP", ip.clone()));
    }
    if let Some(ua) = &ev.user_agent {
        facts.push(("Client", ua.clone()));
    }
    if let Some(r) = &ev.referer {
        facts.push(("Referer", r.clone()));
    }
    if let Some(m) = ev.machine {
        let who = if m {
            format!(
                "machine ({})",
                ev.machine_reason.as_deref().unwrap_or("no reason recorded")
            )
        } else {
            "person".to_string()
        };
        facts.push(("Who", who));
    }
    // Whatever else the event carries (complaint, suppression, unsubscribe
    // details), shown as it is stored.
    if let Some(Value::Object(m)) = d {
        for (k, v) in m {
            if !matches!(
                k.as_str(),
                "attempt"
                    | "mx"
                    | "response"
                    | "tls"
                    | "duration_ms"
                    | "next_attempt_at"
                    | "bounce"
            ) {
                facts.push((
                    "Detail",
                    format!("{k}: {}", text(Some(v)).unwrap_or_default()),
                ));
            }
        }
    }
    if !facts.is_empty() {
        b.push_str("<dl>");
        for (k, v) in facts {
            let _ = write!(b, "<dt>{k}</dt><dd>{}</dd>", esc(&v));
        }
        b.push_str("</dl>");
    }
    b.push_str("</li>");
}

#[cfg(test)]
mod tests {
    use super::duration;

    #[test]
    fn durations_read_in_the_unit_that_fits() {
        assert_eq!(duration(0), "0 ms");
        assert_eq!(duration(850), "850 ms");
        assert_eq!(duration(1234), "1.2 s");
        assert_eq!(duration(59_949), "59.9 s");
        assert_eq!(duration(125_000), "2 min 5 s");
        assert_eq!(duration(-5), "0 ms");
    }
}
