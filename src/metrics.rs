//! Process-wide counters for `/metrics` (Prometheus text format). Plain
//! atomics: the hot paths only ever add.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A latency histogram with fixed buckets (seconds).
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_micros: AtomicU64,
}

const LATENCY_BOUNDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            bounds: LATENCY_BOUNDS,
            buckets: LATENCY_BOUNDS.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, name: &str, labels: &str, out: &mut String) {
        use std::fmt::Write;
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (b, n) in self.bounds.iter().zip(&self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

#[derive(Default)]
pub struct Metrics {
    /// This node's name and store backend, for `trackrelay_node_info`:
    /// several nodes' metrics tell themselves apart by it.
    pub node: std::sync::OnceLock<(String, &'static str)>,
    pub smtp_sessions: Counter,
    pub smtp_rejected_connections: Counter,
    pub messages_accepted: Counter,
    pub recipients_accepted: Counter,
    pub messages_store_failed: Counter,
    pub auth_failures: Counter,
    pub delivered: Counter,
    pub deferred: Counter,
    pub bounced: Counter,
    pub failed: Counter,
    pub opens: Counter,
    pub clicks: Counter,
    pub tracking_invalid: Counter,
    pub event_queue_overflow: Counter,
    pub tracking_hits_aggregated: Counter,
    pub events_store_failed: Counter,
    pub webhooks_delivered: Counter,
    pub webhooks_retried: Counter,
    pub webhooks_failed: Counter,
    pub tracking_latency: Histogram,
    pub api_latency: Histogram,
    pub delivery_latency: Histogram,
    /// The inbound listener (return-path MX).
    pub inbound_sessions: Counter,
    pub inbound_rejected_connections: Counter,
    pub inbound_accepted: Counter,
    pub inbound_store_failed: Counter,
    pub inbound_recipients_refused: Counter,
    /// Feedback reports processed, by outcome (indexed like `INBOUND_OUTCOMES`).
    pub inbound_reports: [Counter; INBOUND_OUTCOMES.len()],
    /// Outbound TLS policy outcomes (issue 13).
    pub tls_policy: TlsPolicyMetrics,
    /// notAfter per tracking host certificate issued by ACME.
    pub certificate_expiry: crate::acme::ExpiryGauges,
}

/// `policy` label values of `trackrelay_tls_policy_sessions_total`.
pub const TLS_POLICIES: [&str; 4] = ["dane", "mta-sts", "enforced", "opportunistic"];
/// `result` label values of `trackrelay_tls_policy_sessions_total`:
/// verified or accepted TLS, a failure that stopped delivery, a failure
/// only recorded (MTA-STS testing), a host refused before connecting.
pub const TLS_SESSION_RESULTS: [&str; 4] = ["success", "failure", "report_only_failure", "refused"];
/// `result` label values of `trackrelay_tls_policy_sts_lookups_total`.
/// `refreshed`: fetched again ahead of expiry by the background refresh;
/// `dropped`: removed from the cache, unused and long expired.
pub const STS_LOOKUP_RESULTS: [&str; 7] = [
    "none",
    "fetched",
    "cached",
    "kept_cached",
    "failed",
    "refreshed",
    "dropped",
];

#[derive(Default)]
pub struct TlsPolicyMetrics {
    sessions: [[Counter; TLS_SESSION_RESULTS.len()]; TLS_POLICIES.len()],
    sts_lookups: [Counter; STS_LOOKUP_RESULTS.len()],
}

impl TlsPolicyMetrics {
    /// `policy` from `TLS_POLICIES`, `result` from `TLS_SESSION_RESULTS`.
    pub fn session(&self, policy: &str, result: &str) {
        let p = TLS_POLICIES.iter().position(|x| *x == policy);
        let r = TLS_SESSION_RESULTS.iter().position(|x| *x == result);
        if let (Some(p), Some(r)) = (p, r) {
            self.sessions[p][r].inc();
        }
    }

    /// `result` from `STS_LOOKUP_RESULTS`.
    pub fn sts_lookup(&self, result: &str) {
        if let Some(i) = STS_LOOKUP_RESULTS.iter().position(|x| *x == result) {
            self.sts_lookups[i].inc();
        }
    }

    /// Adds `n` to the `result` series of the MTA-STS lookups.
    pub fn sts_lookups_add(&self, result: &str, n: u64) {
        if let Some(i) = STS_LOOKUP_RESULTS.iter().position(|x| *x == result) {
            self.sts_lookups[i].add(n);
        }
    }

    fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let name = "trackrelay_tls_policy_sessions_total";
        let _ = writeln!(
            out,
            "# HELP {name} outbound TLS sessions by the policy that governed them and how they ended\n# TYPE {name} counter"
        );
        for (policy, row) in TLS_POLICIES.iter().zip(&self.sessions) {
            for (result, c) in TLS_SESSION_RESULTS.iter().zip(row) {
                let _ = writeln!(
                    out,
                    "{name}{{policy=\"{policy}\",result=\"{result}\"}} {}",
                    c.get()
                );
            }
        }
        let name = "trackrelay_tls_policy_sts_lookups_total";
        let _ = writeln!(
            out,
            "# HELP {name} MTA-STS policy lookups: none published, fetched, from the cache, cached kept after a failed fetch, failed; refreshed in the background, dropped from the cache\n# TYPE {name} counter"
        );
        for (result, c) in STS_LOOKUP_RESULTS.iter().zip(&self.sts_lookups) {
            let _ = writeln!(out, "{name}{{result=\"{result}\"}} {}", c.get());
        }
    }
}

/// The `outcome` label values of `trackrelay_inbound_reports_total`.
pub const INBOUND_OUTCOMES: [&str; 8] = [
    "bounced",
    "delayed",
    "complained",
    "unsubscribe",
    "auto_reply",
    "unlinked",
    "forged",
    "ignored",
];

impl Metrics {
    /// Counts a processed feedback report; `outcome` is one of `INBOUND_OUTCOMES`.
    pub fn inbound_report(&self, outcome: &str) {
        if let Some(i) = INBOUND_OUTCOMES.iter().position(|o| *o == outcome) {
            self.inbound_reports[i].inc();
        }
    }

    /// Counters and histograms in the Prometheus text format; gauges read
    /// from the store are appended by the caller.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        if let Some((node, store)) = self.node.get() {
            let _ =
                writeln!(
                out,
                "# HELP trackrelay_node_info this node (server.node_id) and its store backend\n\
                 # TYPE trackrelay_node_info gauge\n\
                 trackrelay_node_info{{node=\"{}\",store=\"{store}\"}} 1",
                node.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
            );
        }
        let counters: [(&str, &str, &Counter); 19] = [
            (
                "trackrelay_smtp_sessions_total",
                "SMTP submission sessions opened",
                &self.smtp_sessions,
            ),
            (
                "trackrelay_smtp_rejected_connections_total",
                "connections refused by connection limits",
                &self.smtp_rejected_connections,
            ),
            (
                "trackrelay_messages_accepted_total",
                "messages accepted (250 after DATA)",
                &self.messages_accepted,
            ),
            (
                "trackrelay_recipients_accepted_total",
                "recipients of accepted messages",
                &self.recipients_accepted,
            ),
            (
                "trackrelay_messages_store_failed_total",
                "messages refused with 451 because the store failed",
                &self.messages_store_failed,
            ),
            (
                "trackrelay_auth_failures_total",
                "failed AUTH attempts",
                &self.auth_failures,
            ),
            (
                "trackrelay_delivered_total",
                "recipients delivered",
                &self.delivered,
            ),
            (
                "trackrelay_deferred_total",
                "delivery attempts deferred (temporary failure)",
                &self.deferred,
            ),
            (
                "trackrelay_bounced_total",
                "recipients bounced",
                &self.bounced,
            ),
            (
                "trackrelay_failed_total",
                "recipients failed for a local reason",
                &self.failed,
            ),
            (
                "trackrelay_opens_total",
                "open pixel requests with a valid token",
                &self.opens,
            ),
            (
                "trackrelay_clicks_total",
                "click requests with a valid token",
                &self.clicks,
            ),
            (
                "trackrelay_tracking_invalid_total",
                "tracking requests with a token that failed verification",
                &self.tracking_invalid,
            ),
            (
                "trackrelay_event_queue_overflow_total",
                "tracking events dropped because the event queue was full",
                &self.event_queue_overflow,
            ),
            (
                "trackrelay_tracking_hits_aggregated_total",
                "repeated tracking hits folded into an earlier event (same token and client within the window)",
                &self.tracking_hits_aggregated,
            ),
            (
                "trackrelay_events_store_failed_total",
                "tracking events lost because the store failed",
                &self.events_store_failed,
            ),
            (
                "trackrelay_webhooks_delivered_total",
                "webhook deliveries answered 2xx",
                &self.webhooks_delivered,
            ),
            (
                "trackrelay_webhooks_retried_total",
                "webhook attempts that failed and will be retried",
                &self.webhooks_retried,
            ),
            (
                "trackrelay_webhooks_failed_total",
                "webhook deliveries given up",
                &self.webhooks_failed,
            ),
        ];
        for (name, help, c) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                c.get()
            );
        }
        self.render_inbound(&mut out);
        self.certificate_expiry.render(&mut out);
        let name = "trackrelay_inbound_reports_total";
        let _ = writeln!(
            out,
            "# HELP {name} reports received at the return path, by what the feedback processor did\n# TYPE {name} counter"
        );
        for (label, c) in INBOUND_OUTCOMES.iter().zip(&self.inbound_reports) {
            let _ = writeln!(out, "{name}{{outcome=\"{label}\"}} {}", c.get());
        }
        self.tls_policy.render(&mut out);
        for (name, help, h) in [
            (
                "trackrelay_tracking_request_seconds",
                "tracking listener response time",
                &self.tracking_latency,
            ),
            (
                "trackrelay_api_request_seconds",
                "admin API response time",
                &self.api_latency,
            ),
            (
                "trackrelay_delivery_attempt_seconds",
                "time per delivery attempt (one connection)",
                &self.delivery_latency,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            h.render(name, "", &mut out);
        }
        out
    }

    fn render_inbound(&self, out: &mut String) {
        use std::fmt::Write;
        let name = "trackrelay_inbound_messages_total";
        let _ = writeln!(
            out,
            "# HELP {name} messages at the inbound listener: accepted (stored) or store_failed (451)\n\
             # TYPE {name} counter\n{name}{{result=\"accepted\"}} {}\n{name}{{result=\"store_failed\"}} {}",
            self.inbound_accepted.get(),
            self.inbound_store_failed.get()
        );
        for (name, help, c) in [
            (
                "trackrelay_inbound_sessions_total",
                "inbound listener sessions opened",
                &self.inbound_sessions,
            ),
            (
                "trackrelay_inbound_rejected_connections_total",
                "inbound connections refused by connection limits (421)",
                &self.inbound_rejected_connections,
            ),
            (
                "trackrelay_inbound_recipients_refused_total",
                "inbound RCPTs refused with 550 5.7.1 (not a return-path domain)",
                &self.inbound_recipients_refused,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                c.get()
            );
        }
    }
}

/// A state gauge (one series per state, 1 for the current one), e.g.
/// `trackrelay_domain_status{domain="example.com",status="verified"} 1`.
/// `labels`: the item's and the state's label names; `items`: (item,
/// current state). Label values are escaped as the text format says.
pub fn render_state_gauge(
    out: &mut String,
    name: &str,
    help: &str,
    labels: (&str, &str),
    states: &[&str],
    items: &[(String, &str)],
) {
    use std::fmt::Write;
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
    for (item, current) in items {
        let item = escape_label(item);
        for s in states {
            let v = u8::from(s == current);
            let _ = writeln!(
                out,
                "{name}{{{}=\"{item}\",{}=\"{s}\"}} {v}",
                labels.0, labels.1
            );
        }
    }
}

/// Backslash, double quote and newline, escaped for a label value.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_gauge_has_one_series_per_state() {
        let mut out = String::new();
        render_state_gauge(
            &mut out,
            "x_status",
            "help",
            ("domain", "status"),
            &["a", "b"],
            &[("d\"1".to_string(), "b")],
        );
        assert_eq!(
            out,
            "# HELP x_status help\n# TYPE x_status gauge\n\
             x_status{domain=\"d\\\"1\",status=\"a\"} 0\n\
             x_status{domain=\"d\\\"1\",status=\"b\"} 1\n"
        );
    }
}
