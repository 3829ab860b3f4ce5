//! `trackrelay webhooks`: the outbox, and replaying it.

use super::{out, reader, time_arg, CliResult};
use crate::config::Config;
use crate::store;
use std::io::Write;

/// `webhooks list [--failed]`: newest first.
pub fn webhooks_list(config: &Config, failed: bool, limit: usize, json: bool) -> CliResult {
    let conn = reader(config)?;
    let limit = if limit == 0 { 100 } else { limit };
    let rows = store::sqlite::webhooks::list(&conn, failed, limit).map_err(|e| e.to_string())?;
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
    let conn = store::open_writer(&config.database_path()).map_err(|e| e.to_string())?;
    let now = store::now_ms();
    let n = match (id, time_arg("since", since)?) {
        (Some(id), None) => store::sqlite::webhooks::replay_one(&conn, id, now),
        (None, Some(t)) => store::sqlite::webhooks::replay_since(&conn, t, now),
        _ => return Err("webhooks replay: give a webhook id or --since TIME (not both)".into()),
    }
    .map_err(|e| e.to_string())?;
    if n == 0 {
        return Err("nothing to replay".into());
    }
    println!("{n} webhook delivery(ies) queued again; a running `trackrelay serve` sends them within a second");
    Ok(())
}
