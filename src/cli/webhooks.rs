//! `trackrelay webhooks`: the outbox, and replaying it.

use super::{out, time_arg, CliResult};
use crate::config::Config;
use crate::store;
use std::io::Write;

/// `webhooks list [--failed]`: newest first.
pub fn webhooks_list(config: &Config, failed: bool, limit: usize, json: bool) -> CliResult {
    let (rt, store) = super::open_store(config)?;
    let limit = if limit == 0 { 100 } else { limit };
    let rows = rt.block_on(store.webhook_list(failed, limit));
    store.close();
    let rows = rows.map_err(|e| e.to_string())?;
    let mut w = out();
    for r in &rows {
        if json {
            let v = serde_json::json!({
                "id": r.id,
                "endpoint": r.endpoint,
                "type": r.event_type,
                "email_id": r.email_id,
                "status": r.status,
                "attempts": r.attempts,
                "next_attempt_at": (r.status == "pending").then(|| store::rfc3339(r.next_attempt_at)),
                "last_error": r.last_error,
                "created_at": store::rfc3339(r.created_at),
                "delivered_at": r.delivered_at.map(store::rfc3339),
            });
            let _ = writeln!(w, "{v}");
        } else {
            let _ = writeln!(
                w,
                "{}  {:<9}  {:<22}  {}  attempts={}  {}  {}",
                r.id,
                r.status,
                r.event_type,
                r.email_id,
                r.attempts,
                r.endpoint,
                r.last_error.as_deref().unwrap_or("")
            );
        }
    }
    Ok(())
}

/// `webhooks replay ID|--since TIME`: back in the queue, due now, same webhook-id.
pub fn webhooks_replay(config: &Config, id: Option<&str>, since: &Option<String>) -> CliResult {
    let since = time_arg("since", since)?;
    if id.is_some() == since.is_some() {
        return Err("webhooks replay: give a webhook id or --since TIME (not both)".into());
    }
    let (rt, store) = super::open_store_rw(config)?;
    let now = store::now_ms();
    let n = rt.block_on(async {
        match (id, since) {
            (Some(id), _) => store.webhook_replay_one(id, now).await,
            (None, Some(t)) => store.webhook_replay_since(t, now).await,
            (None, None) => unreachable!("checked above"),
        }
    });
    store.close();
    let n = n.map_err(|e| e.to_string())?;
    if n == 0 {
        return Err("nothing to replay".into());
    }
    println!("{n} webhook delivery(ies) queued again; a running `trackrelay serve` sends them within a second");
    Ok(())
}
