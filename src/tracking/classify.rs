//! Placeholder rules until the full rule set lands (being written beside).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

pub const REASON_BURST: &str = "burst_of_clicks";
pub const REASON_TOO_SOON: &str = "too_soon_after_delivery";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Open,
    Click,
}

pub struct Request<'a> {
    pub kind: Kind,
    pub method_head: bool,
    pub ip: Option<IpAddr>,
    pub user_agent: Option<&'a str>,
    pub at_ms: i64,
    pub delivered_at_ms: Option<i64>,
}

pub struct Verdict {
    pub machine: bool,
    pub reason: Option<&'static str>,
}

pub fn classify(req: &Request) -> Verdict {
    if req.method_head {
        return Verdict {
            machine: true,
            reason: Some("head_request"),
        };
    }
    Verdict {
        machine: false,
        reason: None,
    }
}

pub fn too_soon_after_delivery(at_ms: i64, delivered_at_ms: Option<i64>, window_ms: i64) -> bool {
    delivered_at_ms.is_some_and(|d| at_ms >= d && at_ms - d < window_ms)
}

pub struct ClickBurst {
    window_ms: i64,
    capacity: usize,
    seen: Mutex<HashMap<(uuid::Uuid, u32), (i64, u32)>>,
}

impl ClickBurst {
    pub fn new(window: Duration, capacity: usize) -> Self {
        ClickBurst {
            window_ms: window.as_millis() as i64,
            capacity,
            seen: Mutex::new(HashMap::new()),
        }
    }

    pub fn observe(&self, email_id: uuid::Uuid, rcpt: u32, link: u32, at_ms: i64) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= self.capacity {
            seen.clear();
        }
        let prev = seen.insert((email_id, rcpt), (at_ms, link));
        matches!(prev, Some((t, l)) if l != link && at_ms - t < self.window_ms)
    }
}
