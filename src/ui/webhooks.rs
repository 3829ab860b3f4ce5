//! Webhooks: the configured endpoints, recent deliveries with their
//! status and time to deliver, failures, and replay (POST + CSRF).

use super::html::{csrf_field, esc, esc_opt, time};
use super::{redirect, Page, PageError, Req};
use crate::api::reply::Reply;
use crate::store::{self, tracking::OutboxCounts};
use std::fmt::Write;

const ROWS: usize = 100;

pub async fn page(p: &Page<'_>, req: &Req<'_>) -> Result<Reply, PageError> {
    let f = req.query_fields();
    let failed_only = f.get("failed").is_some_and(|v| v == "1");
    let unreadable = |e: store::StoreError| {
        tracing::error!("dashboard: reading the webhook outbox: {e}");
        PageError::Internal(format!(
            "Reading the webhook outbox from the store failed: {e}"
        ))
    };
    let rows = p
        .store()
        .webhook_list(failed_only, ROWS)
        .await
        .map_err(unreadable)?;
    let OutboxCounts {
        pending,
        delivered,
        failed,
    } = p.store().webhook_counts().await.map_err(unreadable)?;
    let mut b = String::new();
    if f.get("replayed").is_some_and(|v| v == "1") {
        b.push_str("<p class=\"notice\" role=\"status\">Queued again; it is sent now.</p>");
    }
    b.push_str("<h2>Endpoints</h2>");
    if p.ui.webhooks.is_empty() {
        b.push_str("<p class=\"empty\">No <code>[[webhooks]]</code> are configured.</p>");
    } else {
        b.push_str("<ul class=\"endpoints\">");
        for (url, events) in &p.ui.webhooks {
            let _ = write!(
                b,
                "<li><code>{}</code> <span class=\"muted\">{}</span></li>",
                esc(url),
                esc(&events.join(", "))
            );
        }
        b.push_str("</ul>");
    }
    let _ = write!(
        b,
        "<section class=\"cards\" aria-label=\"Outbox\"><div class=\"card\"><span class=\"label\">Pending</span>\
         <span class=\"num\">{pending}</span></div><div class=\"card\"><span class=\"label\">Delivered</span>\
         <span class=\"num\">{delivered}</span></div><div class=\"card\"><span class=\"label\">Given up</span>\
         <span class=\"num\">{failed}</span></div></section>"
    );
    let _ = write!(
        b,
        "<h2>{}</h2><p class=\"quick\"><a href=\"/webhooks\">All</a> · <a href=\"/webhooks?failed=1\">Given up only</a></p>",
        if failed_only { "Deliveries given up" } else { "Recent deliveries" }
    );
    if rows.is_empty() {
        b.push_str("<p class=\"empty\">None.</p>");
    } else {
        let csrf = csrf_field(p.csrf());
        b.push_str(
            "<div class=\"scroll\"><table class=\"hooks stack\"><thead><tr><th scope=\"col\">Queued (UTC)</th>\
             <th scope=\"col\">Event</th><th scope=\"col\">Endpoint</th><th scope=\"col\">Status</th>\
             <th scope=\"col\">Attempts</th><th scope=\"col\">Time to deliver</th><th scope=\"col\">Last error</th>\
             <th scope=\"col\">Action</th></tr></thead><tbody>",
        );
        for r in &rows {
            let latency = r
                .delivered_at
                .map(|d| format!("{:.1} s", (d - r.created_at).max(0) as f64 / 1000.0))
                .unwrap_or_default();
            let _ = write!(
                b,
                "<tr><td data-label=\"Queued (UTC)\">{}</td><td data-label=\"Event\">{} <a href=\"/emails/{}\">email</a></td>\
                 <td data-label=\"Endpoint\">{}</td><td data-label=\"Status\"><span class=\"st st-{st}\">{st}</span></td>\
                 <td class=\"n\" data-label=\"Attempts\">{}</td><td data-label=\"Time to deliver\">{latency}</td>\
                 <td data-label=\"Last error\">{}</td><td><form method=\"post\" action=\"/webhooks/replay\">{csrf}\
                 <input type=\"hidden\" name=\"id\" value=\"{}\"><button type=\"submit\">Replay</button></form></td></tr>",
                time(r.created_at),
                esc(&r.event_type),
                esc(&r.email_id),
                esc(&r.endpoint),
                r.attempts,
                esc_opt(&r.last_error),
                esc(&r.id),
                st = esc(&r.status),
            );
        }
        b.push_str("</tbody></table></div>");
    }
    b.push_str(
        "<p class=\"note\">Time to deliver runs from the event to the endpoint's 2xx, retries included. \
         A replay sends the same body with the same <code>webhook-id</code>.</p>",
    );
    Ok(p.render("Webhooks", "/webhooks", &b))
}

/// `POST /webhooks/replay` with `id`: that delivery is due again now.
pub async fn replay(p: &Page<'_>, req: &Req<'_>) -> Result<Reply, PageError> {
    let id = req.fields().remove("id").unwrap_or_default();
    if id.is_empty() || id.len() > 200 {
        return Err(PageError::BadRequest(
            "No webhook delivery id given.".into(),
        ));
    }
    // The store wakes the senders (of every node) itself.
    let n = p
        .store()
        .webhook_replay_one(&id, store::now_ms())
        .await
        .map_err(|e| PageError::Internal(format!("The store refused the replay: {e}")))?;
    if n == 0 {
        return Err(PageError::NotFound(
            "There is no such webhook delivery.".into(),
        ));
    }
    Ok(redirect("/webhooks?replayed=1"))
}
