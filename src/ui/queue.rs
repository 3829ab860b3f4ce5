//! The queue page: waiting recipients grouped by destination domain and
//! last reply ("example.net: 421 4.7.0 try later, 312 recipients"), the
//! waiting recipients themselves, and retry / delete (POST + CSRF).

use super::html::{csrf_field, esc, esc_opt, time};
use super::{redirect, Page, PageError, Req};
use crate::api::reply::Reply;
use crate::store;
use std::fmt::Write;

const GROUPS: usize = 200;
const ROWS: usize = 200;

pub async fn page(p: &Page<'_>, req: &Req<'_>) -> Result<Reply, PageError> {
    // The groups are a dashboard view (the queries area's); the rows are
    // the queue's own listing.
    let groups = p
        .answer("the queue", p.store().queue_groups(GROUPS))
        .await?;
    let rows = p.store().list(false, None, ROWS).await.map_err(|e| {
        tracing::error!("dashboard: reading the queue: {e}");
        PageError::Internal(format!("Reading the queue from the store failed: {e}"))
    })?;
    let f = req.query_fields();
    let mut b = String::new();
    // Only a number is taken from the query: nothing of it is echoed.
    for (k, what) in [
        ("retried", "made due now"),
        ("deleted", "removed from the queue"),
    ] {
        if let Some(n) = f.get(k).and_then(|v| v.parse::<u64>().ok()) {
            let _ = write!(
                b,
                "<p class=\"notice\" role=\"status\">{n} recipient(s) {what}.</p>"
            );
        }
    }
    let csrf = csrf_field(p.csrf());
    b.push_str("<h2>By destination and reason</h2>");
    if groups.is_empty() {
        b.push_str("<p class=\"empty\">Nothing is waiting.</p>");
    } else {
        b.push_str(
            "<div class=\"scroll\"><table class=\"groups stack\"><thead><tr><th scope=\"col\">Destination</th>\
             <th scope=\"col\">Last reply</th><th scope=\"col\">Recipients</th><th scope=\"col\">Next attempt (UTC)</th>\
             <th scope=\"col\">Action</th></tr></thead><tbody>",
        );
        for g in &groups {
            let reason_field = match &g.reason {
                Some(r) => format!(
                    "<input type=\"hidden\" name=\"reason\" value=\"{}\">",
                    esc(r)
                ),
                None => "<input type=\"hidden\" name=\"never_tried\" value=\"1\">".into(),
            };
            let _ = write!(
                b,
                "<tr><td data-label=\"Destination\">{}</td><td data-label=\"Last reply\">{}</td>\
                 <td class=\"n\" data-label=\"Recipients\">{}</td><td data-label=\"Next attempt (UTC)\">{}</td><td>\
                 <form method=\"post\" action=\"/queue/retry-group\">{csrf}\
                 <input type=\"hidden\" name=\"destination\" value=\"{}\">{reason_field}\
                 <button type=\"submit\">Retry {} now</button></form></td></tr>",
                esc(&g.destination),
                g.reason
                    .as_deref()
                    .map(|r| esc(r).to_string())
                    .unwrap_or_else(|| "<em>not tried yet</em>".into()),
                g.recipients,
                g.next_attempt_at.map(time).unwrap_or_default(),
                esc(&g.destination),
                if g.recipients == 1 { "it" } else { "all" }
            );
        }
        b.push_str("</tbody></table></div>");
    }
    let _ = write!(b, "<h2>Waiting recipients</h2>");
    if rows.is_empty() {
        b.push_str("<p class=\"empty\">None.</p>");
    } else {
        b.push_str(
            "<div class=\"scroll\"><table class=\"rows stack\"><thead><tr><th scope=\"col\">Recipient</th>\
             <th scope=\"col\">Status</th><th scope=\"col\">Attempts</th><th scope=\"col\">Next attempt (UTC)</th>\
             <th scope=\"col\">Last reply</th><th scope=\"col\">Email</th><th scope=\"col\">Actions</th></tr></thead><tbody>",
        );
        for r in &rows {
            let _ = write!(
                b,
                "<tr><td data-label=\"Recipient\">{rcpt}</td><td data-label=\"Status\"><span class=\"st st-{st}\">{st}</span></td>\
                 <td class=\"n\" data-label=\"Attempts\">{}</td><td data-label=\"Next attempt (UTC)\">{}</td>\
                 <td data-label=\"Last reply\">{}</td><td><a href=\"/emails/{id}\">details</a></td><td class=\"actions\">\
                 <form method=\"post\" action=\"/queue/retry\">{csrf}<input type=\"hidden\" name=\"email_id\" value=\"{id}\">\
                 <button type=\"submit\" aria-label=\"Retry {rcpt} now\">Retry</button></form>\
                 <form method=\"post\" action=\"/queue/delete\">{csrf}<input type=\"hidden\" name=\"email_id\" value=\"{id}\">\
                 <button type=\"submit\" class=\"danger\" aria-label=\"Delete every waiting recipient of the email to {rcpt}\">Delete email</button></form></td></tr>",
                r.attempts,
                r.next_attempt_at.map(time).unwrap_or_default(),
                esc_opt(&r.last_response),
                rcpt = esc(&r.recipient),
                st = esc(&r.status),
                id = esc(&r.email_id),
            );
        }
        b.push_str("</tbody></table></div>");
        if rows.len() == ROWS {
            let _ = write!(
                b,
                "<p class=\"note\">The first {ROWS}; `trackrelay queue list` shows them all.</p>"
            );
        }
    }
    b.push_str(
        "<p class=\"note\">Retry and delete act on the email's waiting recipients \
         (as <code>trackrelay queue retry|delete ID</code> do). A deleted recipient is recorded as \
         <code>email.failed</code>.</p>",
    );
    Ok(p.render("Queue", "/queue", &b))
}

/// `POST /queue/retry|delete|retry-group`, then back to the queue page.
pub async fn act(p: &Page<'_>, req: &Req<'_>) -> Result<Reply, PageError> {
    let f = req.fields();
    let now = store::now_ms();
    let email_id = || -> Result<String, PageError> {
        let raw = f.get("email_id").map(String::as_str).unwrap_or("");
        uuid::Uuid::try_parse(raw)
            .map(|u| u.hyphenated().to_string())
            .map_err(|_| PageError::BadRequest(format!("{raw:?} is not an email id.")))
    };
    let write_err = |e: store::StoreError| {
        tracing::error!("dashboard: queue action: {e}");
        PageError::Internal(format!("The store refused the change: {e}"))
    };
    let (key, n) = match req.path {
        "/queue/retry" => {
            let id = email_id()?;
            let n = p.store().retry(&id, now).await.map_err(write_err)?;
            ("retried", n)
        }
        "/queue/retry-group" => {
            let dest = f.get("destination").cloned().unwrap_or_default();
            if dest.is_empty() {
                return Err(PageError::BadRequest("No destination given.".into()));
            }
            let reason = if f.contains_key("never_tried") {
                None
            } else {
                Some(f.get("reason").cloned().unwrap_or_default())
            };
            let n = p
                .store()
                .retry_group(&dest, reason.as_deref(), now)
                .await
                .map_err(write_err)?;
            ("retried", n)
        }
        _ => {
            let id = email_id()?;
            let n = p.store().delete(&id, now).await.map_err(write_err)?;
            ("deleted", n)
        }
    };
    if key == "retried" && n > 0 {
        if let Some(w) = &p.ui.queue_wake {
            w.notify_one();
        }
    }
    tracing::info!("dashboard: {n} recipient(s) {key} from the queue page");
    Ok(redirect(&format!("/queue?{key}={n}")))
}
