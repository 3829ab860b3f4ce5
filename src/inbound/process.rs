//! The feedback processor: turns what the return-path MX stored
//! (`inbound_reports`) into recipient states, events and suppressions.
//!
//! Each report is read, classified (`feedback::classify`), linked to the
//! recipient its verified return-path token names, and applied in one
//! store write that also marks it processed: a crash before the commit
//! leaves it pending with nothing applied, after it nothing is applied
//! twice. A report that names no email (no token, a forged one, an
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

use crate::config::Config;
use crate::events::{EventType, NewEvent};
use crate::feedback::{self, return_path, Action, Dsn, RecipientStatus, Report, ReturnPath};
use crate::metrics::Metrics;
use crate::prepare::TokenKeys;
use crate::store::feedback::LinkedRecipient;
use crate::store::{self, rollups::bit, suppressions, Durability, Store, Tx};
use serde_json::{json, Value};
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

/// What happened to a report, as the metric's `outcome` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Bounced,
    Delayed,
    Complained,
    Unsubscribe,
    AutoReply,
    /// No verified token, or one naming a recipient the store does not have.
    Unlinked,
    /// A token-shaped envelope recipient that does not verify.
    Forged,
    /// Linked but nothing to do (delivered/relayed DSN, duplicate, not a report).
    Ignored,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Bounced => "bounced",
            Outcome::Delayed => "delayed",
            Outcome::Complained => "complained",
            Outcome::Unsubscribe => "unsubscribe",
            Outcome::AutoReply => "auto_reply",
            Outcome::Unlinked => "unlinked",
            Outcome::Forged => "forged",
            Outcome::Ignored => "ignored",
        }
    }
}

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
        Report::Arf(c) if rcpt.counted & bit::COMPLAINED != 0 => {
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
pub fn classify(p: &store::reports::Pending, keys: &TokenKeys) -> Classified {
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

/// Applies one classified report in the writer's transaction: claims the
/// row (nothing happens if another pass took it), then its effects, then
/// its outcome or its deletion. Returns the metric outcome, or `None` when
/// the row was no longer pending.
pub fn apply(
    tx: &Tx<'_>,
    c: &Classified,
    rules: &Rules,
    now: i64,
) -> rusqlite::Result<Option<Outcome>> {
    if !store::reports::claim(tx, c.id, now)? {
        return Ok(None);
    }
    if let Some(e) = &c.error {
        store::reports::set_outcome(tx, c.id, c.kind, &json!({ "error": e }))?;
        return Ok(Some(Outcome::Ignored));
    }
    let early = match (&c.report, c.link) {
        (Report::AutoReply, _) => Some(Outcome::AutoReply),
        (_, Link::Forged) => Some(Outcome::Forged),
        (_, Link::Missing) => Some(Outcome::Unlinked),
        _ => None,
    };
    if let Some(outcome) = early {
        store::reports::delete(tx, c.id)?;
        return Ok(Some(outcome));
    }
    let Link::Found(rp, via) = c.link else {
        unreachable!("every other link returned above")
    };
    let email_id = rp.email_id.hyphenated().to_string();
    let Some(rcpt) = store::feedback::recipient(tx, &email_id, rp.rcpt_index)? else {
        // A token of ours for an email this store does not have (another
        // store's, or a `preview`): nothing to change.
        store::reports::delete(tx, c.id)?;
        return Ok(Some(Outcome::Unlinked));
    };
    let target = Target {
        email_id,
        idx: rp.rcpt_index,
        rcpt,
        report_id: c.id,
        at: c.received_at,
    };
    let (outcome, mut detail) = match decide(&c.report, c.unsubscribe, &target.rcpt) {
        Effect::Drop(outcome) => {
            store::reports::delete(tx, c.id)?;
            return Ok(Some(outcome));
        }
        Effect::Bounce(b) => (Outcome::Bounced, bounce(tx, &target, &b, rules)?),
        Effect::Delay(b) => (Outcome::Delayed, delay(tx, &target, &b)?),
        Effect::Complaint(comp) => (Outcome::Complained, complaint(tx, &target, &comp, rules)?),
        Effect::Unsubscribe => (Outcome::Unsubscribe, unsubscribe_by_mail(tx, &target)?),
        Effect::Nothing(outcome, why) => (outcome, json!({ "changed": false, "why": why })),
    };
    if let Value::Object(m) = &mut detail {
        m.insert("outcome".into(), outcome.as_str().into());
        m.insert("email_id".into(), target.email_id.clone().into());
        m.insert("rcpt_idx".into(), target.idx.into());
        m.insert("recipient".into(), target.rcpt.address.clone().into());
        m.insert("linked_by".into(), via.as_str().into());
    }
    store::reports::set_outcome(tx, c.id, c.kind, &detail)?;
    Ok(Some(outcome))
}

/// The recipient a linked report is applied to.
struct Target {
    email_id: String,
    idx: u32,
    rcpt: LinkedRecipient,
    report_id: i64,
    /// When the report arrived: the time of its events.
    at: i64,
}

impl Target {
    fn event(&self, kind: EventType, detail: Value) -> NewEvent {
        let mut ev = NewEvent::new(self.email_id.clone(), kind, self.at);
        ev.rcpt_idx = Some(self.idx);
        ev.recipient = Some(self.rcpt.address.clone());
        ev.detail = Some(detail);
        ev
    }

    /// Puts the address on the sending domain's list, linked to `event_id`.
    fn suppress(
        &self,
        tx: &Tx<'_>,
        reason: suppressions::Reason,
        event_id: i64,
    ) -> rusqlite::Result<bool> {
        suppressions::add(
            tx,
            &suppressions::Suppression {
                address: self.rcpt.address.to_lowercase(),
                domain: Some(self.rcpt.domain.clone()),
                reason: reason.as_str().into(),
                event_id: Some(event_id),
                created_at: self.at,
                expires_at: None,
            },
        )
    }
}

fn bounce(
    tx: &Tx<'_>,
    t: &Target,
    b: &feedback::bounce::Bounce,
    rules: &Rules,
) -> rusqlite::Result<Value> {
    let was = t.rcpt.status.clone();
    store::feedback::set_bounced(tx, &t.email_id, t.idx, t.at, &b.message)?;
    let mut object = b.event_json(t.at, true);
    object["report_id"] = t.report_id.into();
    let event_id = store::events::insert(
        tx,
        &t.event(
            EventType::Bounced,
            json!({ "response": b.message, "bounce": object }),
        ),
    )?;
    let suppressed = b.suppress
        && rules.hard_bounce.contains(&t.rcpt.domain)
        && t.suppress(tx, suppressions::Reason::HardBounce, event_id)?;
    if suppressed {
        tracing::info!(email_id = %t.email_id, rcpt = t.idx, "recipient suppressed after an asynchronous hard bounce");
    }
    Ok(json!({
        "changed": true,
        "previous_status": was,
        "event_id": event_id,
        "suppressed": suppressed,
        "bounce": object,
    }))
}

fn delay(tx: &Tx<'_>, t: &Target, b: &feedback::bounce::Bounce) -> rusqlite::Result<Value> {
    let detail = json!({
        "response": b.message,
        "status": b.status,
        "reporting_mta": b.reporting_mta,
        "async": true,
        "report_id": t.report_id,
    });
    let event_id = store::events::insert(tx, &t.event(EventType::DeliveryDelayed, detail))?;
    Ok(json!({ "changed": true, "event_id": event_id, "status": b.status }))
}

fn complaint(
    tx: &Tx<'_>,
    t: &Target,
    c: &feedback::Complaint,
    rules: &Rules,
) -> rusqlite::Result<Value> {
    let detail = json!({
        "feedback_type": c.feedback_type,
        "user_agent": c.user_agent,
        "reporting_mta": c.reporting_mta,
        "report_id": t.report_id,
    });
    let event_id = store::events::insert(tx, &t.event(EventType::Complained, detail))?;
    let suppressed = rules.complaint.contains(&t.rcpt.domain)
        && t.suppress(tx, suppressions::Reason::Complaint, event_id)?;
    Ok(json!({
        "changed": true,
        "event_id": event_id,
        "suppressed": suppressed,
        "feedback_type": c.feedback_type,
    }))
}

/// Mail to `unsubscribe+{token}@…`, the mailto of `List-Unsubscribe`. The
/// unsubscribe itself (suppression and `email.unsubscribed`) belongs to
/// the one-click unsubscribe code, which is called from here once merged;
/// on its own this records the request and suppresses nothing, and never
/// treats it as a bounce.
fn unsubscribe_by_mail(_tx: &Tx<'_>, _t: &Target) -> rusqlite::Result<Value> {
    Ok(json!({ "changed": false, "suppressed": false }))
}

/// Reads pending reports at start, whenever woken, and every [`PERIOD`].
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
    pub async fn pass(&self, shutdown: &watch::Receiver<bool>) {
        let mut after = 0;
        while !*shutdown.borrow() {
            let rows = match self
                .store
                .read(move |c| store::reports::pending(c, after, BATCH))
                .await
            {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::error!("feedback: reading pending reports: {e}");
                    return;
                }
            };
            let Some(last) = rows.last() else { return };
            after = last.id;
            let keys = self.keys.clone();
            // Parsing is CPU work on untrusted megabytes: off the async threads.
            let classified = match tokio::task::spawn_blocking(move || {
                rows.iter().map(|p| classify(p, &keys)).collect::<Vec<_>>()
            })
            .await
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!("feedback: classifying reports failed: {e}");
                    return;
                }
            };
            // One write per report, all handed to the writer at once: they
            // share its commit, each under its own savepoint, so one that
            // fails rolls back alone.
            let mut writes = tokio::task::JoinSet::new();
            for c in classified {
                let store = self.store.clone();
                let rules = self.rules.clone();
                writes.spawn(async move {
                    let id = c.id;
                    let r = store
                        .write(Durability::Normal, move |tx| {
                            apply(tx, &c, &rules, store::now_ms())
                        })
                        .await;
                    (id, r)
                });
            }
            while let Some(done) = writes.join_next().await {
                match done {
                    Ok((id, Ok(Some(outcome)))) => {
                        self.metrics.inbound_report(outcome.as_str());
                        tracing::debug!(
                            report_id = id,
                            outcome = outcome.as_str(),
                            "feedback report processed"
                        );
                    }
                    Ok((_, Ok(None))) => {}
                    Ok((id, Err(e))) => {
                        tracing::error!(
                            report_id = id,
                            "feedback: applying a report failed (retried later): {e}"
                        )
                    }
                    Err(e) => tracing::error!("feedback: a report's write task failed: {e}"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn keys() -> TokenKeys {
        TokenKeys::new([3u8; 32], vec![])
    }

    fn id() -> Uuid {
        Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001)
    }

    fn rcpt(status: &str, counted: i64) -> LinkedRecipient {
        LinkedRecipient {
            address: "Someone@Example.net".into(),
            status: status.into(),
            counted,
            domain: "example.com".into(),
        }
    }

    fn dsn(groups: &[(&str, &str, &str)]) -> Report {
        let body: String = groups
            .iter()
            .map(|(addr, action, status)| {
                format!(
                    "Final-Recipient: rfc822; {addr}\r\nAction: {action}\r\nStatus: {status}\r\n\
                     Diagnostic-Code: smtp; 550 {status} said no\r\n\r\n"
                )
            })
            .collect();
        let raw = format!(
            "From: MAILER-DAEMON@mx.example.net\r\nSubject: Undelivered Mail\r\nMIME-Version: 1.0\r\n\
             Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n\
             --b\r\nContent-Type: text/plain\r\n\r\nsorry\r\n\
             --b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\n{body}\
             --b--\r\n"
        );
        feedback::classify(raw.as_bytes())
    }

    #[test]
    fn envelope_token_links_and_a_forged_one_is_never_rescued_by_the_body() {
        let k = keys();
        let good = return_path::address(&k, "bounces", "bounces.example.com", id(), 2).unwrap();
        let other = TokenKeys::new([9u8; 32], vec![]);
        let forged =
            return_path::address(&other, "bounces", "bounces.example.com", id(), 2).unwrap();
        // The body quotes a good token, as a forger who saw one would.
        let raw = format!("Subject: x\r\nTo: {good}\r\n\r\nhi\r\n");
        let r = feedback::classify(raw.as_bytes());
        let rp = ReturnPath {
            email_id: id(),
            rcpt_index: 2,
        };
        assert_eq!(
            link(&r, raw.as_bytes(), &[good.to_uppercase()], &k),
            Link::Found(rp, Via::Envelope)
        );
        assert_eq!(link(&r, raw.as_bytes(), &[forged], &k), Link::Forged);
        // Sent to a plain mailbox of the return-path domain: the quote links.
        assert_eq!(
            link(&r, raw.as_bytes(), &["fbl@bounces.example.com".into()], &k),
            Link::Found(rp, Via::Quoted)
        );
        let plain = b"Subject: x\r\n\r\nnothing here\r\n";
        let r = feedback::classify(plain);
        assert_eq!(
            link(&r, plain, &["fbl@bounces.example.com".into()], &k),
            Link::Missing
        );
    }

    #[test]
    fn a_redacted_report_links_through_the_ref_header_only() {
        let k = keys();
        let token = return_path::encode(&k, id(), 7);
        let raw = format!(
            "From: fbl@isp.example\r\nSubject: x\r\n\r\nOriginal-Rcpt-To: xxxxxx@example.net\r\n\
             x-trackrelay-ref: {token}\r\n"
        );
        let r = feedback::classify(raw.as_bytes());
        assert_eq!(
            link(&r, raw.as_bytes(), &["fbl@bounces.example.com".into()], &k),
            Link::Found(
                ReturnPath {
                    email_id: id(),
                    rcpt_index: 7
                },
                Via::RefHeader
            )
        );
        let wrong = raw.replace(
            &token,
            &return_path::encode(&TokenKeys::new([1; 32], vec![]), id(), 7),
        );
        assert_eq!(
            link(
                &r,
                wrong.as_bytes(),
                &["fbl@bounces.example.com".into()],
                &k
            ),
            Link::Missing
        );
    }

    #[test]
    fn unsubscribe_mailbox_is_recognised_in_any_case() {
        assert!(to_unsubscribe_mailbox(&[
            "<UNSUBSCRIBE+abc@b.example.com>".into()
        ]));
        assert!(!to_unsubscribe_mailbox(&[
            "bounces+abc@b.example.com".into()
        ]));
        assert!(!to_unsubscribe_mailbox(&["unsub@b.example.com".into()]));
    }

    #[test]
    fn failed_dsn_bounces_a_delivered_recipient_once() {
        let r = dsn(&[
            ("other@example.net", "delayed", "4.4.1"),
            ("someone@example.net", "failed", "5.1.1"),
        ]);
        let Effect::Bounce(b) = decide(&r, false, &rcpt("delivered", bit::DELIVERED)) else {
            panic!("a bounce")
        };
        assert!(b.suppress);
        assert_eq!(b.status.as_deref(), Some("5.1.1"));
        assert!(b.message.contains("said no"), "{}", b.message);
        assert_eq!(b.reporting_mta.as_deref(), Some("mx.example.net"));
        assert!(matches!(
            decide(&r, false, &rcpt("deferred", 0)),
            Effect::Bounce(_)
        ));
        assert_eq!(
            decide(&r, false, &rcpt("bounced", 0)),
            Effect::Nothing(Outcome::Bounced, "already bounced".into())
        );
        assert!(matches!(
            decide(&r, false, &rcpt("suppressed", 0)),
            Effect::Nothing(Outcome::Ignored, _)
        ));
        // Mail to the unsubscribe mailbox is never a bounce.
        assert_eq!(decide(&r, true, &rcpt("delivered", 0)), Effect::Unsubscribe);
    }

    #[test]
    fn policy_bounce_is_not_suppressed_and_delays_keep_the_status() {
        let r = dsn(&[("someone@example.net", "failed", "5.7.1")]);
        let Effect::Bounce(b) = decide(&r, false, &rcpt("delivered", 0)) else {
            panic!("a bounce")
        };
        assert!(!b.suppress);
        let r = dsn(&[("someone@example.net", "delayed", "4.4.7")]);
        let Effect::Delay(b) = decide(&r, false, &rcpt("delivered", 0)) else {
            panic!("a delay")
        };
        assert_eq!(b.kind, feedback::bounce::BounceType::Transient);
        assert!(matches!(
            decide(&r, false, &rcpt("bounced", 0)),
            Effect::Nothing(Outcome::Delayed, _)
        ));
        let r = dsn(&[("someone@example.net", "delivered", "2.0.0")]);
        assert_eq!(
            decide(&r, false, &rcpt("delivered", 0)),
            Effect::Nothing(Outcome::Ignored, "action delivered".into())
        );
    }

    #[test]
    fn complaints_count_once_and_auto_replies_and_unknown_are_dropped() {
        let arf = feedback::classify(
            b"From: fbl@isp.example\r\nMIME-Version: 1.0\r\n\
              Content-Type: multipart/report; report-type=feedback-report; boundary=\"b\"\r\n\r\n\
              --b\r\nContent-Type: text/plain\r\n\r\nreport\r\n\
              --b\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nUser-Agent: isp/1\r\n\
              --b--\r\n",
        );
        assert!(matches!(
            decide(&arf, false, &rcpt("delivered", 0)),
            Effect::Complaint(_)
        ));
        assert!(matches!(
            decide(&arf, false, &rcpt("delivered", bit::COMPLAINED)),
            Effect::Nothing(Outcome::Complained, _)
        ));
        assert_eq!(
            decide(&Report::AutoReply, true, &rcpt("delivered", 0)),
            Effect::Drop(Outcome::AutoReply)
        );
        assert_eq!(
            decide(&Report::Unknown, false, &rcpt("delivered", 0)),
            Effect::Drop(Outcome::Ignored)
        );
    }

    /// A store with one email to `someone@example.net`, delivered.
    fn store_with_delivered() -> (rusqlite::Connection, Uuid) {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        store::schema::migrate(&mut conn).unwrap();
        let email = Uuid::now_v7();
        let t = conn.transaction().unwrap();
        store::emails::insert(
            &Tx::new(&t, &[]),
            &store::emails::NewEmail {
                id: email.to_string(),
                created_at: 1,
                domain: "Example.com".into(),
                mail_from: "a@example.com".into(),
                header_from: None,
                to_header: None,
                subject: None,
                message_id: None,
                tags: vec![],
                auth_user: None,
                client_ip: None,
                smtputf8: false,
                received: vec![],
                body: b"\r\n".to_vec(),
                recipients: vec!["Someone@Example.net".into()],
            },
        )
        .unwrap();
        t.execute(
            "UPDATE recipients SET status = 'delivered', delivered_at = 5",
            [],
        )
        .unwrap();
        t.commit().unwrap();
        (conn, email)
    }

    fn stored(conn: &rusqlite::Connection, rcpt_to: &str, raw: &[u8]) -> store::reports::Pending {
        let id = store::reports::insert(
            conn,
            &store::reports::NewReport {
                received_at: 100,
                peer_ip: "127.0.0.1".into(),
                helo: "mx".into(),
                mail_from: String::new(),
                rcpt_to: vec![rcpt_to.into()],
                raw: raw.to_vec(),
            },
        )
        .unwrap();
        store::reports::pending(conn, id - 1, 1).unwrap().remove(0)
    }

    fn run(conn: &mut rusqlite::Connection, c: &Classified, rules: &Rules) -> Option<Outcome> {
        let t = conn.transaction().unwrap();
        let out = apply(&Tx::new(&t, &[]), c, rules, 200).unwrap();
        t.commit().unwrap();
        out
    }

    fn count(conn: &rusqlite::Connection, sql: &str) -> i64 {
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn apply_bounces_suppresses_and_marks_processed_once() {
        let k = keys();
        let (mut conn, email) = store_with_delivered();
        let to = return_path::address(&k, "bounces", "bounces.example.com", email, 0).unwrap();
        let raw = format!(
            "From: MAILER-DAEMON@mx.example.net\r\nSubject: Undelivered Mail\r\nMIME-Version: 1.0\r\n\
             Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n\
             --b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\n\
             Final-Recipient: rfc822; someone@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\n\
             Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n\r\n--b--\r\n"
        );
        let c = classify(&stored(&conn, &to, raw.as_bytes()), &k);
        let rules = Rules {
            hard_bounce: ["example.com".to_string()].into(),
            complaint: HashSet::new(),
        };
        assert_eq!(run(&mut conn, &c, &rules), Some(Outcome::Bounced));
        let (status, delivered_at, last): (String, Option<i64>, String) = conn
            .query_row(
                "SELECT status, delivered_at, last_response FROM recipients",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!((status.as_str(), delivered_at), ("bounced", Some(5)));
        assert!(last.contains("no such user"), "{last}");
        let (event_id, detail): (i64, String) = conn
            .query_row(
                "SELECT id, detail FROM events WHERE type = 'email.bounced'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        let d: Value = serde_json::from_str(&detail).unwrap();
        assert_eq!(d["bounce"]["type"], "permanent");
        assert_eq!(d["bounce"]["sub_type"], "no_email");
        assert_eq!(d["bounce"]["async"], true);
        assert_eq!(d["bounce"]["report_id"], c.id);
        let linked: Option<i64> = conn
            .query_row(
                "SELECT event_id FROM suppressions WHERE address = 'someone@example.net' AND scope = 'example.com'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(linked, Some(event_id));
        let (kind, outcome): (String, String) = conn
            .query_row(
                "SELECT kind, outcome FROM inbound_reports WHERE processed_at IS NOT NULL",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(kind, "dsn");
        assert!(outcome.contains("\"linked_by\":\"envelope\""), "{outcome}");
        // The same row again (a second pass): taken already, nothing happens.
        assert_eq!(run(&mut conn, &c, &rules), None);
        // The same bounce again as a new report: no second event.
        let again = classify(&stored(&conn, &to, raw.as_bytes()), &k);
        assert_eq!(run(&mut conn, &again, &rules), Some(Outcome::Bounced));
        assert_eq!(
            count(
                &conn,
                "SELECT COUNT(*) FROM events WHERE type = 'email.bounced'"
            ),
            1
        );
        // The rollup counts the asynchronous bounce.
        assert_eq!(count(&conn, "SELECT SUM(bounced) FROM rollups"), 1);
    }

    #[test]
    fn forged_and_unknown_reports_are_deleted_and_change_nothing() {
        let k = keys();
        let (mut conn, email) = store_with_delivered();
        let other = TokenKeys::new([9u8; 32], vec![]);
        let forged =
            return_path::address(&other, "bounces", "bounces.example.com", email, 0).unwrap();
        let raw = b"From: MAILER-DAEMON@mx.example.net\r\nSubject: Undelivered Mail\r\n\r\n550 5.1.1 user unknown\r\n";
        let rules = Rules::default();
        let c = classify(&stored(&conn, &forged, raw), &k);
        assert_eq!(run(&mut conn, &c, &rules), Some(Outcome::Forged));
        // A token of ours for an email this store never had.
        let stranger =
            return_path::address(&k, "bounces", "bounces.example.com", Uuid::now_v7(), 0).unwrap();
        let c = classify(&stored(&conn, &stranger, raw), &k);
        assert_eq!(run(&mut conn, &c, &rules), Some(Outcome::Unlinked));
        assert_eq!(count(&conn, "SELECT COUNT(*) FROM inbound_reports"), 0);
        assert_eq!(
            count(
                &conn,
                "SELECT COUNT(*) FROM events WHERE type != 'email.sent'"
            ),
            0
        );
        assert_eq!(
            count(
                &conn,
                "SELECT COUNT(*) FROM recipients WHERE status = 'delivered'"
            ),
            1
        );
    }
}
