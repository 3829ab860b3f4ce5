//! Event types and their JSON shapes, shared by the store, the webhooks, the
//! admin API and the CLI. Names follow the hosted providers (Resend).

use serde_json::{json, Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    Sent,
    Delivered,
    DeliveryDelayed,
    Bounced,
    Failed,
    Opened,
    Clicked,
    /// A recipient skipped because it is on the suppression list.
    Suppressed,
    Complained,
    Unsubscribed,
    /// A configured domain's verification status changed (not about an
    /// email: stored with `email_id` '' and the domain in the detail).
    DomainUpdated,
}

impl EventType {
    pub const ALL: [EventType; 11] = [
        EventType::Sent,
        EventType::Delivered,
        EventType::DeliveryDelayed,
        EventType::Bounced,
        EventType::Failed,
        EventType::Opened,
        EventType::Clicked,
        EventType::Suppressed,
        EventType::Complained,
        EventType::Unsubscribed,
        EventType::DomainUpdated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Sent => "email.sent",
            EventType::Delivered => "email.delivered",
            EventType::DeliveryDelayed => "email.delivery_delayed",
            EventType::Bounced => "email.bounced",
            EventType::Failed => "email.failed",
            EventType::Opened => "email.opened",
            EventType::Clicked => "email.clicked",
            EventType::Suppressed => "email.suppressed",
            EventType::Complained => "email.complained",
            EventType::Unsubscribed => "email.unsubscribed",
            EventType::DomainUpdated => "domain.updated",
        }
    }

    /// Accepts `email.opened`, the short `opened`, and `domain.updated`.
    pub fn parse(s: &str) -> Option<EventType> {
        let full = if s.starts_with("email.") || s.starts_with("domain.") {
            s.to_string()
        } else {
            format!("email.{s}")
        };
        EventType::ALL.into_iter().find(|t| t.as_str() == full)
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event about to be stored.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub email_id: String,
    pub rcpt_idx: Option<u32>,
    /// Filled from the queue row by the store when only the index is known
    /// (tracking requests carry the index, not the address).
    pub recipient: Option<String>,
    pub kind: EventType,
    pub at: i64,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub referer: Option<String>,
    pub link: Option<String>,
    pub machine: Option<bool>,
    pub machine_reason: Option<String>,
    /// Delivery details: remote reply, TLS version, host, attempt.
    pub detail: Option<Value>,
}

impl NewEvent {
    pub fn new(email_id: impl Into<String>, kind: EventType, at: i64) -> Self {
        NewEvent {
            email_id: email_id.into(),
            rcpt_idx: None,
            recipient: None,
            kind,
            at,
            ip: None,
            user_agent: None,
            referer: None,
            link: None,
            machine: None,
            machine_reason: None,
            detail: None,
        }
    }
}

/// A stored event, as the CLI, API and exports show it.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub id: i64,
    pub email_id: String,
    pub kind: String,
    pub recipient: Option<String>,
    pub at: i64,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub referer: Option<String>,
    pub link: Option<String>,
    pub machine: Option<bool>,
    pub machine_reason: Option<String>,
    pub detail: Option<Value>,
}

impl StoredEvent {
    /// The contract's field names: `id, email_id, type, recipient, at, ip,
    /// user_agent, referer, link, machine, machine_reason` (+ `detail` when
    /// there is one).
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("id".into(), json!(self.id));
        m.insert("email_id".into(), json!(self.email_id));
        m.insert("type".into(), json!(self.kind));
        m.insert("recipient".into(), json!(self.recipient));
        m.insert("at".into(), json!(crate::store::rfc3339(self.at)));
        m.insert("ip".into(), json!(self.ip));
        m.insert("user_agent".into(), json!(self.user_agent));
        m.insert("referer".into(), json!(self.referer));
        m.insert("link".into(), json!(self.link));
        m.insert("machine".into(), json!(self.machine));
        m.insert("machine_reason".into(), json!(self.machine_reason));
        if let Some(d) = &self.detail {
            m.insert("detail".into(), d.clone());
        }
        Value::Object(m)
    }
}

/// What a webhook payload says about the email besides the event itself.
#[derive(Debug, Clone, Default)]
pub struct EmailSummary {
    pub created_at: i64,
    pub domain: String,
    pub from: String,
    pub subject: Option<String>,
    pub tags: Vec<String>,
}

/// The webhook body: `{"type", "created_at", "data": {...}}`, shaped like
/// the hosted providers' payloads.
pub fn webhook_payload(ev: &NewEvent, email: Option<&EmailSummary>) -> Value {
    if ev.kind == EventType::DomainUpdated {
        // Resend's shape: the domain itself is the data (name, status,
        // previous_status, records), stored whole in the detail.
        return json!({
            "type": ev.kind.as_str(),
            "created_at": crate::store::rfc3339(ev.at),
            "data": ev.detail.clone().unwrap_or_else(|| json!({})),
        });
    }
    let mut data = Map::new();
    data.insert("email_id".into(), json!(ev.email_id));
    if let Some(e) = email {
        data.insert(
            "created_at".into(),
            json!(crate::store::rfc3339(e.created_at)),
        );
        data.insert("from".into(), json!(e.from));
        data.insert("subject".into(), json!(e.subject));
        data.insert("tags".into(), json!(e.tags));
    }
    data.insert("to".into(), json!(ev.recipient.iter().collect::<Vec<_>>()));
    let at = crate::store::rfc3339(ev.at);
    match ev.kind {
        EventType::Clicked => {
            data.insert(
                "click".into(),
                json!({
                    "link": ev.link,
                    "ip_address": ev.ip,
                    "user_agent": ev.user_agent,
                    "referer": ev.referer,
                    "timestamp": at,
                    "machine": ev.machine.unwrap_or(false),
                    "machine_reason": ev.machine_reason,
                }),
            );
        }
        EventType::Opened => {
            data.insert(
                "open".into(),
                json!({
                    "ip_address": ev.ip,
                    "user_agent": ev.user_agent,
                    "timestamp": at,
                    "machine": ev.machine.unwrap_or(false),
                    "machine_reason": ev.machine_reason,
                }),
            );
        }
        // One `bounce` object for refusals during delivery and bounce
        // reports received later: the store puts it in the detail.
        EventType::Bounced if ev.detail.as_ref().is_some_and(|d| d["bounce"].is_object()) => {
            let d = ev.detail.as_ref().map(|d| d["bounce"].clone());
            data.insert("bounce".into(), d.unwrap_or(Value::Null));
        }
        EventType::Bounced | EventType::Failed => {
            let d = ev.detail.clone().unwrap_or(Value::Null);
            data.insert(
                "bounce".into(),
                json!({
                    "type": if ev.kind == EventType::Bounced { "Permanent" } else { "Failed" },
                    "message": d.get("response").cloned().unwrap_or(Value::Null),
                    "timestamp": at,
                }),
            );
        }
        EventType::Delivered | EventType::DeliveryDelayed => {
            let mut d = ev.detail.clone().unwrap_or_else(|| json!({}));
            if let Value::Object(m) = &mut d {
                m.insert("timestamp".into(), json!(at));
            }
            data.insert("delivery".into(), d);
        }
        EventType::Suppressed => {
            let d = ev.detail.clone().unwrap_or(Value::Null);
            data.insert(
                "suppressed".into(),
                json!({
                    "reason": d.get("reason").cloned().unwrap_or(Value::Null),
                    "suppressed_since": d.get("suppressed_since").cloned().unwrap_or(Value::Null),
                    "timestamp": at,
                }),
            );
        }
        EventType::Complained => {
            let d = ev.detail.clone().unwrap_or(Value::Null);
            data.insert(
                "complaint".into(),
                json!({
                    "feedback_type": d.get("feedback_type").cloned().unwrap_or(Value::Null),
                    "user_agent": d.get("user_agent").cloned().unwrap_or(Value::Null),
                    "reporting_mta": d.get("reporting_mta").cloned().unwrap_or(Value::Null),
                    "timestamp": at,
                }),
            );
        }
        EventType::Unsubscribed => {
            let d = ev.detail.clone().unwrap_or(Value::Null);
            data.insert(
                "unsubscribe".into(),
                json!({
                    "via": d.get("via").cloned().unwrap_or(Value::Null),
                    "ip_address": ev.ip,
                    "user_agent": ev.user_agent,
                    "timestamp": at,
                }),
            );
        }
        EventType::Sent | EventType::DomainUpdated => {}
    }
    json!({
        "type": ev.kind.as_str(),
        "created_at": at,
        "data": Value::Object(data),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
        }
        assert_eq!(EventType::parse("clicked"), Some(EventType::Clicked));
        assert_eq!(EventType::parse("email.nope"), None);
        assert_eq!(EventType::parse("domain.nope"), None);
    }

    #[test]
    fn click_payload_has_the_click() {
        let mut ev = NewEvent::new("e1", EventType::Clicked, 0);
        ev.link = Some("https://example.org/?a=1&b=2".into());
        ev.ip = Some("127.0.0.1".into());
        ev.recipient = Some("r@example.net".into());
        let p = webhook_payload(&ev, None);
        assert_eq!(p["type"], "email.clicked");
        assert_eq!(p["data"]["click"]["link"], "https://example.org/?a=1&b=2");
        assert_eq!(p["data"]["to"][0], "r@example.net");
        assert_eq!(p["created_at"], "1970-01-01T00:00:00.000Z");
    }
}
