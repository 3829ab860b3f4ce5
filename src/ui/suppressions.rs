//! The suppression list: search by address, why each one is there (its
//! reason and the event and email that caused it), add and remove.

use super::html::{csrf_field, esc, time};
use super::{redirect, Page, PageError, Req};
use crate::api::reply::Reply;
use crate::store;
use crate::store::feedback::{self as sup, check_address, check_domain};
use std::fmt::Write;

const ROWS: usize = 200;

pub async fn page(p: &Page<'_>, req: &Req<'_>) -> Result<Reply, PageError> {
    let f = req.query_fields();
    let prefix = f
        .get("address")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let rows = p
        .answer(
            "the suppression list",
            p.store().suppressions_view(&prefix, ROWS),
        )
        .await?;
    let csrf = csrf_field(p.csrf());
    let mut b = String::new();
    for (k, what) in [("added", "added"), ("removed", "removed")] {
        if let Some(n) = f.get(k).and_then(|v| v.parse::<u8>().ok()) {
            let _ = write!(
                b,
                "<p class=\"notice\" role=\"status\">{}</p>",
                if n == 1 {
                    format!("Address {what}.")
                } else {
                    format!(
                        "Nothing {what}: it was already {}.",
                        if k == "added" {
                            "suppressed there"
                        } else {
                            "gone"
                        }
                    )
                }
            );
        }
    }
    let _ = write!(
        b,
        "<form method=\"get\" action=\"/suppressions\" class=\"filters\" role=\"search\">\
         <label>Address starts with <input name=\"address\" value=\"{}\"></label>\
         <button type=\"submit\">Search</button></form>",
        esc(&prefix)
    );
    if rows.is_empty() {
        b.push_str("<p class=\"empty\">No suppressed address matches.</p>");
    } else {
        b.push_str(
            "<div class=\"scroll\"><table class=\"sup stack\"><thead><tr><th scope=\"col\">Address</th>\
             <th scope=\"col\">For mail from</th><th scope=\"col\">Why</th><th scope=\"col\">Since (UTC)</th>\
             <th scope=\"col\">Expires</th><th scope=\"col\">Action</th></tr></thead><tbody>",
        );
        for s in &rows {
            let e = &s.entry;
            let cause = match (&s.event_type, &s.email_id) {
                (Some(t), Some(id)) => format!(" — <a href=\"/emails/{}\">{}</a>", esc(id), esc(t)),
                _ => String::new(),
            };
            let domain_field = e
                .domain
                .as_deref()
                .map(|d| {
                    format!(
                        "<input type=\"hidden\" name=\"domain\" value=\"{}\">",
                        esc(d)
                    )
                })
                .unwrap_or_default();
            let _ = write!(
                b,
                "<tr><td data-label=\"Address\">{addr}</td><td data-label=\"For mail from\">{}</td>\
                 <td data-label=\"Why\">{}{cause}</td><td data-label=\"Since (UTC)\">{}</td>\
                 <td data-label=\"Expires\">{}</td><td><form method=\"post\" action=\"/suppressions/remove\">{csrf}\
                 <input type=\"hidden\" name=\"address\" value=\"{addr}\">{domain_field}\
                 <button type=\"submit\" class=\"danger\" aria-label=\"Remove {addr}\">Remove</button></form></td></tr>",
                e.domain.as_deref().map(|d| esc(d).to_string()).unwrap_or_else(|| "every domain".into()),
                esc(&e.reason),
                time(e.created_at),
                e.expires_at.map(time).unwrap_or_else(|| "never".into()),
                addr = esc(&e.address),
            );
        }
        b.push_str("</tbody></table></div>");
        if rows.len() == ROWS {
            let _ = write!(
                b,
                "<p class=\"note\">The first {ROWS}; narrow the search, or use <code>trackrelay suppressions list</code>.</p>"
            );
        }
    }
    let _ = write!(
        b,
        "<h2>Suppress an address</h2><form method=\"post\" action=\"/suppressions/add\" class=\"filters\">{csrf}\
         <label>Address <input name=\"address\" type=\"email\" required></label>\
         <label>Only for mail from (empty: every domain) <input name=\"domain\"></label>\
         <button type=\"submit\">Suppress</button></form>"
    );
    Ok(p.render("Suppressions", "/suppressions", &b))
}

/// `POST /suppressions/add|remove`, then back to the list.
pub async fn act(p: &Page<'_>, req: &Req<'_>) -> Result<Reply, PageError> {
    let f = req.fields();
    let address = check_address(f.get("address").map(String::as_str).unwrap_or(""))
        .map_err(PageError::BadRequest)?;
    let domain = match f.get("domain").map(|d| d.trim()).filter(|d| !d.is_empty()) {
        Some(d) => Some(check_domain(d).map_err(PageError::BadRequest)?),
        None => None,
    };
    let add = req.path == "/suppressions/add";
    let changed = if add {
        p.store()
            .add_suppression(sup::Suppression {
                address: address.clone(),
                domain,
                reason: sup::Reason::Manual.as_str().into(),
                event_id: None,
                created_at: store::now_ms(),
                expires_at: None,
            })
            .await
    } else {
        p.store()
            .remove_suppression(&address, domain.as_deref())
            .await
    };
    let changed = changed.map_err(|e| {
        tracing::error!("dashboard: suppression change: {e}");
        PageError::Internal(format!("The store refused the change: {e}"))
    })?;
    let key = if add { "added" } else { "removed" };
    tracing::info!(
        "dashboard: {} {key} the suppression list",
        crate::text::printable(&address)
    );
    Ok(redirect(&format!(
        "/suppressions?{key}={}",
        u8::from(changed)
    )))
}
