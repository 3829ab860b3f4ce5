//! The feedback processor: turns what the return-path MX stored
//! (`inbound_reports`) into recipient states, events and suppressions.
//!
//! Each report is read, classified (`feedback::classify`), linked to the
//! recipient its verified return-path token names, and applied in the
//! transaction that also marks it processed (reports are read in batches of
//! `BATCH`, oldest first, and a batch is one write, each report under its
//! own savepoint): a crash before the commit leaves it pending with nothing
//! applied, after it nothing is applied twice. A report that names no email (no token, a forged one, an
//! auto-reply, something unrecognised) is deleted in that same write and
//! only counted (`trackrelay_inbound_reports_total{outcome}`); a linked one
//! is kept, with its kind and outcome, for `retain_events`.
//!
//! Linking, first match wins:
//! 1. the envelope recipient, `bounces+{token}@…` (or `unsubscribe+{token}`).
//!    A token-shaped local part that does not verify is a forgery: the
//!    report is dropped whatever its body quotes, since a forger may copy a
//!    real token into it;
//! 2. tokens quoted in the report or its returned message (`Report::tokens`);
//! 3. the `X-Trackrelay-Ref:` header of the returned message (redacted
//!    complaints).
//!
//! What a report does to the recipient it names ([`decide`]):
//! - a failed DSN or a plain-text bounce: `bounced`, even after a 250
//!   (`delivered_at` kept), with `email.bounced` carrying the same `bounce`
//!   object as a refusal during delivery, plus `async: true` and
//!   `report_id`. A recipient still queued or deferred (a receiver that
//!   took an earlier attempt and then gave up: our side saw the connection
//!   fail after the data) is bounced too and leaves the queue: retrying
//!   would deliver a copy the receiver already refused. A recipient
//!   already bounced gets no second event; a suppressed one was never sent
//!   and is left alone. Suppressed (sending domain scope) when
//!   `Bounce::suppress` and the domain's `suppress_on` has `hard_bounce`.
//! - a delayed DSN: one `email.delivery_delayed` per report, status kept.
//! - delivered / relayed / expanded: nothing but the outcome.
//! - an ARF complaint: `email.complained` once per recipient, and a
//!   `complaint` suppression where `suppress_on` has `complaint`.
//! - mail to `unsubscribe+{token}@…`: an unsubscribe (as by the one-click POST),
//!   never a bounce.
//!
//! The store carries the plan out (`FeedbackStore::apply_reports`); what
//! a report does is decided here.

use crate::config::Config;
use crate::events::EventType;
use crate::feedback::{self, return_path, Action, Dsn, RecipientStatus, Report, ReturnPath};
use crate::metrics::Metrics;
use crate::prepare::TokenKeys;
use crate::store::feedback::{
    self as fb, Change, LinkedRecipient, Pending, Plan, Reason, ReportWork,
};
use crate::store::{self, Store};
use serde_json::json;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// Reports read per store read (raw messages may be megabytes each).
const BATCH: usize = 16;
/// The safety net: pending reports are looked for this often even when
/// nobody wakes the processor (a notify lost at a crash, another node's
/// listener).
const PERIOD: Duration = Duration::from_secs(30);

pub use crate::store::feedback::Outcome;

/// Where the token that linked a report was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Envelope,
    Quoted,
    RefHeader,
}

impl Via {
    fn as_str(self) -> &'static str {
        match self {
            Via::Envelope => "envelope",
            Via::Quoted => "quoted_token",
            Via::RefHeader => "ref_header",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Found(ReturnPath, Via),
    Forged,
    Missing,
}

/// Whether the report came to the unsubscribe mailbox
/// (`unsubscribe+{token}@{return-path domain}`, the mailto of
/// `List-Unsubscribe`).
pub fn to_unsubscribe_mailbox(rcpt_to: &[String]) -> bool {
    rcpt_to.iter().any(|r| {
        r.trim()
            .trim_start_matches('<')
            .get(..12)
            .is_some_and(|l| l.eq_ignore_ascii_case("unsubscribe+"))
    })
}

/// Finds the recipient a report is about. Only a token that verifies
/// under our keys links.
pub fn link(report: &Report, raw: &[u8], rcpt_to: &[String], keys: &TokenKeys) -> Link {
    if let Some(rp) = rcpt_to
        .iter()
        .find_map(|r| return_path::verify_address(keys, r))
    {
        return Link::Found(rp, Via::Envelope);
    }
    if rcpt_to
        .iter()
        .any(|r| return_path::looks_like_token_address(r))
    {
        return Link::Forged;
    }
    if let Some(rp) = report.tokens(raw, keys).first() {
        return Link::Found(*rp, Via::Quoted);
    }
    if let Some(rp) = report.ref_tokens(raw, keys).first() {
        return Link::Found(*rp, Via::RefHeader);
    }
    Link::Missing
}

/// The `kind` column.
pub fn kind(report: &Report, unsubscribe: bool) -> &'static str {
    match report {
        Report::AutoReply => "auto_reply",
        _ if unsubscribe => "unsubscribe",
        Report::Dsn(_) => "dsn",
        Report::Arf(_) => "arf",
        Report::PlainBounce(_) => "plain_bounce",
        Report::Unknown => "unknown",
    }
}

/// What a linked report does to its recipient.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Bounce(feedback::bounce::Bounce),
    Delay(feedback::bounce::Bounce),
    Complaint(feedback::Complaint),
    Unsubscribe,
    /// Kept and recorded, nothing changed; says why.
    Nothing(Outcome, String),
    /// Not about a recipient at all: dropped, only counted.
    Drop(Outcome),
}

/// The per-recipient group of a DSN about `address`: the one naming it,
/// else the most final one (failed, then delayed), else the first.
fn status_for<'a>(d: &'a Dsn, address: &str) -> Option<&'a RecipientStatus> {
    let names = |r: &&RecipientStatus| {
        [&r.original_recipient, &r.final_recipient].iter().any(|a| {
            a.as_deref()
                .is_some_and(|a| a.eq_ignore_ascii_case(address))
        })
    };
    d.recipients
        .iter()
        .find(names)
        .or_else(|| d.recipients.iter().find(|r| r.action == Action::Failed))
        .or_else(|| d.recipients.iter().find(|r| r.action == Action::Delayed))
        .or_else(|| d.recipients.first())
}

/// Sans-IO: the effect of `report` on a recipient in state `rcpt`.
pub fn decide(report: &Report, unsubscribe: bool, rcpt: &LinkedRecipient) -> Effect {
    let final_state = matches!(rcpt.status.as_str(), "bounced" | "suppressed" | "failed");
    let bounce = |b: feedback::bounce::Bounce| match rcpt.status.as_str() {
        "bounced" => Effect::Nothing(Outcome::Bounced, "already bounced".into()),
        "suppressed" => Effect::Nothing(
            Outcome::Ignored,
            "never sent: the recipient was suppressed".into(),
        ),
        _ => Effect::Bounce(b),
    };
    match report {
        Report::AutoReply => Effect::Drop(Outcome::AutoReply),
        _ if unsubscribe => Effect::Unsubscribe,
        Report::Unknown => Effect::Drop(Outcome::Ignored),
        Report::PlainBounce(p) => bounce(p.bounce.clone()),
        Report::Arf(_) if rcpt.complained => {
            Effect::Nothing(Outcome::Complained, "already complained".into())
        }
        Report::Arf(c) => Effect::Complaint(c.clone()),
        Report::Dsn(d) => {
            let Some(rs) = status_for(d, &rcpt.address) else {
                return Effect::Nothing(Outcome::Ignored, "no per-recipient status".into());
            };
            let b = rs.bounce(d.reporting_mta.as_deref());
            match (&rs.action, b) {
                (Action::Failed, Some(b)) => bounce(b),
                (Action::Delayed, Some(_)) if final_state => Effect::Nothing(
                    Outcome::Delayed,
                    format!("delay reported for a recipient already {}", rcpt.status),
                ),
                (Action::Delayed, Some(b)) => Effect::Delay(b),
                (a, _) => Effect::Nothing(Outcome::Ignored, format!("action {}", action_str(a))),
            }
        }
    }
}

fn action_str(a: &Action) -> &str {
    match a {
        Action::Failed => "failed",
        Action::Delayed => "delayed",
        Action::Delivered => "delivered",
        Action::Relayed => "relayed",
        Action::Expanded => "expanded",
        Action::Other(s) if s.is_empty() => "(none)",
        Action::Other(s) => s,
    }
}

/// Which sending domains (lowercased) suppress on what.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub hard_bounce: HashSet<String>,
    pub complaint: HashSet<String>,
    pub unsubscribe: HashSet<String>,
}

impl Rules {
    pub fn from_config(config: &Config) -> Rules {
        let with = |reason: &str| {
            config
                .domains
                .iter()
                .filter(|d| d.suppresses_on(reason))
                .map(|d| d.name.to_ascii_lowercase())
                .collect()
        };
        Rules {
            hard_bounce: with("hard_bounce"),
            complaint: with("complaint"),
            unsubscribe: with("unsubscribe"),
        }
    }
}

/// A report read and classified, ready to apply.
#[derive(Debug, Clone)]
pub struct Classified {
    pub id: i64,
    pub received_at: i64,
    pub report: Report,
    pub kind: &'static str,
    pub unsubscribe: bool,
    pub link: Link,
    /// Set when the parser failed (a bug): the row is kept to be looked at.
    pub error: Option<String>,
}

/// Classifies and links one pending report. A parser panic (a bug; the
/// parser is fuzzed) is caught so that one report never stops the queue.
pub fn classify(p: &Pending, keys: &TokenKeys) -> Classified {
    let unsubscribe = to_unsubscribe_mailbox(&p.rcpt_to);
    let parsed = std::panic::catch_unwind(|| {
        let report = feedback::classify(&p.raw);
        let link = link(&report, &p.raw, &p.rcpt_to, keys);
        (report, link)
    });
    match parsed {
        Ok((report, link)) => Classified {
            id: p.id,
            received_at: p.received_at,
            kind: kind(&report, unsubscribe),
            report,
            unsubscribe,
            link,
            error: None,
        },
        Err(_) => Classified {
            id: p.id,
            received_at: p.received_at,
            report: Report::Unknown,
            kind: "unknown",
            unsubscribe,
            link: Link::Missing,
            error: Some("the report could not be parsed (parser failure; see the log)".into()),
        },
    }
}

/// What the store is to do with one classified report: dropped or kept
/// with an error right away, or, once linked, what `decide` says for the
/// recipient's state in the applying transaction.
pub fn plan(c: &Classified, rules: &Arc<Rules>) -> ReportWork {
    let plan = match (&c.error, &c.report, c.link) {
        (Some(e), _, _) => Plan::Error(e.clone()),
        (None, Report::AutoReply, _) => Plan::Drop(Outcome::AutoReply),
        (None, _, Link::Forged) => Plan::Drop(Outcome::Forged),
        (None, _, Link::Missing) => Plan::Drop(Outcome::Unlinked),
        (None, _, Link::Found(rp, via)) => {
            let (report, unsubscribe, rules) = (c.report.clone(), c.unsubscribe, rules.clone());
            let (id, at) = (c.id, c.received_at);
            Plan::Linked {
                email_id: rp.email_id.hyphenated().to_string(),
                idx: rp.rcpt_index,
                linked_by: via.as_str(),
                decide: Box::new(move |rcpt: &LinkedRecipient| {
                    action(decide(&report, unsubscribe, rcpt), rcpt, &rules, id, at)
                }),
            }
        }
    };
    ReportWork {
        id: c.id,
        kind: c.kind,
        received_at: c.received_at,
        plan,
    }
}

/// The store's changes for an effect on `rcpt`, with the domain's
/// `suppress_on` applied. `report_id` and `at` are the report's.
pub fn action(
    effect: Effect,
    rcpt: &LinkedRecipient,
    rules: &Rules,
    report_id: i64,
    at: i64,
) -> fb::Action {
    let suppress =
        |on: &HashSet<String>, reason: Reason| on.contains(&rcpt.domain).then_some(reason);
    match effect {
        Effect::Drop(outcome) => fb::Action::Drop(outcome),
        Effect::Nothing(outcome, why) => fb::Action::Nothing(outcome, why),
        Effect::Unsubscribe => fb::Action::Unsubscribe {
            suppress: rules.unsubscribe.contains(&rcpt.domain),
        },
        Effect::Bounce(b) => {
            let mut object = b.event_json(at, true);
            object["report_id"] = report_id.into();
            fb::Action::Change(
                Outcome::Bounced,
                Change {
                    bounce: Some(b.message.clone()),
                    event: EventType::Bounced,
                    detail: json!({ "response": b.message, "bounce": object }),
                    suppress: if b.suppress {
                        suppress(&rules.hard_bounce, Reason::HardBounce)
                    } else {
                        None
                    },
                    outcome: json!({
                        "changed": true,
                        "previous_status": rcpt.status,
                        "suppressed": false,
                        "bounce": object,
                    }),
                },
            )
        }
        Effect::Delay(b) => fb::Action::Change(
            Outcome::Delayed,
            Change {
                bounce: None,
                event: EventType::DeliveryDelayed,
                detail: json!({
                    "response": b.message,
                    "status": b.status,
                    "reporting_mta": b.reporting_mta,
                    "async": true,
                    "report_id": report_id,
                }),
                suppress: None,
                outcome: json!({ "changed": true, "status": b.status }),
            },
        ),
        Effect::Complaint(c) => fb::Action::Change(
            Outcome::Complained,
            Change {
                bounce: None,
                event: EventType::Complained,
                detail: json!({
                    "feedback_type": c.feedback_type,
                    "user_agent": c.user_agent,
                    "reporting_mta": c.reporting_mta,
                    "report_id": report_id,
                }),
                suppress: suppress(&rules.complaint, Reason::Complaint),
                outcome: json!({
                    "changed": true,
                    "suppressed": false,
                    "feedback_type": c.feedback_type,
                }),
            },
        ),
    }
}

/// Reads pending reports at start, whenever woken, and every `PERIOD`.
pub struct Processor {
    store: Store,
    keys: Arc<TokenKeys>,
    rules: Arc<Rules>,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
}

impl Processor {
    pub fn new(
        config: &Config,
        store: Store,
        keys: Arc<TokenKeys>,
        metrics: Arc<Metrics>,
        wake: Arc<Notify>,
    ) -> Processor {
        Processor {
            store,
            keys,
            rules: Arc::new(Rules::from_config(config)),
            metrics,
            wake,
        }
    }

    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            self.pass(&shutdown).await;
            tokio::select! {
                _ = tokio::time::sleep(PERIOD) => {}
                _ = self.wake.notified() => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }

    /// Every report pending now, once: a report whose write fails waits
    /// for the next pass instead of being read again at once.
    ///
    /// The next batch is read and classified while the current one is
    /// written: the store writer, not the hand-offs between read, parse and
    /// write, sets the pace. Batches are still written one after the other,
    /// in arrival order, and the batch read ahead has only ids above the one
    /// being written, so the two never touch the same report.
    pub async fn pass(&self, shutdown: &watch::Receiver<bool>) {
        let Some(mut batch) = self.fetch(0).await else {
            return;
        };
        while !*shutdown.borrow() {
            let after = batch.last().map_or(0, |c| c.id);
            let (written, next) = tokio::join!(self.write(batch), self.fetch(after));
            // Nothing of a failed batch was applied, and what was read
            // ahead is still pending: both wait for the next pass.
            if !written {
                return;
            }
            match next {
                Some(b) => batch = b,
                None => return,
            }
        }
    }

    /// Reads up to `BATCH` pending reports with ids above `after` and
    /// classifies them; `None` when there are none or the read failed.
    async fn fetch(&self, after: i64) -> Option<Vec<Classified>> {
        let rows = match self.store.pending_reports(after, BATCH).await {
            Ok(rows) if rows.is_empty() => return None,
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!("feedback: reading pending reports: {e}");
                return None;
            }
        };
        let keys = self.keys.clone();
        // Parsing is CPU work on untrusted megabytes: off the async threads.
        match tokio::task::spawn_blocking(move || {
            rows.iter().map(|p| classify(p, &keys)).collect::<Vec<_>>()
        })
        .await
        {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!("feedback: classifying reports failed: {e}");
                None
            }
        }
    }

    /// One write for the batch, the reports applied in arrival order, each
    /// on its own (see `FeedbackStore::apply_reports`). Returns whether the
    /// write committed.
    async fn write(&self, classified: Vec<Classified>) -> bool {
        let work = classified.iter().map(|c| plan(c, &self.rules)).collect();
        let done = self.store.apply_reports(work, store::now_ms()).await;
        let done = match done {
            Ok(d) => d,
            Err(e) => {
                tracing::error!("feedback: applying reports failed (retried later): {e}");
                return false;
            }
        };
        for (id, outcome) in done {
            match outcome {
                Ok(Some(outcome)) => {
                    self.metrics.inbound_report(outcome.as_str());
                    tracing::debug!(
                        report_id = id,
                        outcome = outcome.as_str(),
                        "feedback report processed"
                    );
                }
                Ok(None) => {}
                Err(e) => tracing::error!(
                    report_id = id,
                    "feedback: a report could not be applied; kept with the error: {e}"
                ),
            }
        }
        true
    }
}

#[cfg(test)]
#[path = "process_tests.rs"]
mod tests;
