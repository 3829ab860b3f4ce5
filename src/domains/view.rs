//! A domain as the API (and the dashboard) shows it. One function, so
//! every place that shows a domain says the same.

use super::rules::DomainStatus;
use super::tracking;
use crate::config::DomainConfig;
use crate::store::domains::{DomainRow, HistoryRow};
use crate::time::rfc3339;
use serde_json::{json, Value};

/// `row`: what the checker stored (None: never checked). `history`: the
/// status changes to include, newest first (None: leave the field out).
pub fn domain_json(
    d: &DomainConfig,
    row: Option<&DomainRow>,
    history: Option<&[HistoryRow]>,
) -> Value {
    let configured = super::monitor::configured_host(d);
    let previous = super::monitor::previous_hosts(d);
    // Never checked: what the checker will start from.
    let fallback = tracking::choose(configured.as_deref(), &previous, None, None);
    let (in_use, why) = match row {
        Some(r) if r.tracking_reason.is_some() => {
            (r.tracking_host.clone(), r.tracking_reason.clone())
        }
        _ => (fallback.host, Some(fallback.reason)),
    };
    let t = |v: Option<i64>| v.map(rfc3339);
    let status = row.map_or(DomainStatus::NotStarted, |r| DomainStatus::parse(&r.status));
    let mut v = json!({
        "name": d.name.to_ascii_lowercase(),
        "status": status.as_str(),
        "status_reason": row.and_then(|r| r.reason.clone()),
        "status_since": row.map(|r| rfc3339(r.status_at)),
        "checked_at": t(row.and_then(|r| r.checked_at)),
        "next_check_at": t(row.and_then(|r| r.next_check_at)),
        "records": row.map_or(Value::Array(Vec::new()), |r| r.records.clone()),
        "tracking": {
            "in_use": in_use,
            "reason": why,
            "configured": configured,
            "previous": previous,
        },
    });
    if let (Some(h), Value::Object(m)) = (history, &mut v) {
        m.insert(
            "history".into(),
            Value::Array(h.iter().map(history_json).collect()),
        );
    }
    v
}

pub fn history_json(h: &HistoryRow) -> Value {
    json!({
        "from": h.from,
        "to": h.to,
        "at": rfc3339(h.at),
        "reason": h.reason,
    })
}
