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
//! - mail to `unsubscribe+{token}@…`: an unsubscribe (store::sqlite::unsubscribe),
//!   never a bounce.

use crate::config::Config;
use crate::events::{EventType, NewEvent};
use crate::feedback::{self, return_path, Action, Dsn, RecipientStatus, Report, ReturnPath};
use crate::metrics::Metrics;
use crate::prepare::TokenKeys;
use crate::store::sqlite::feedback::LinkedRecipient;
use crate::store::{self, sqlite::rollups::bit, sqlite::suppressions, Durability, Store, Tx};
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
        Report::Arf(_) if rcpt.counted & bit::COMPLAINED != 0 => {
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
pub fn classify(p: &store::sqlite::reports::Pending, keys: &TokenKeys) -> Classified {
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
    if !store::sqlite::reports::claim(tx, c.id, now)? {
        return Ok(None);
    }
    if let Some(e) = &c.error {
        store::sqlite::reports::set_outcome(tx, c.id, c.kind, &json!({ "error": e }))?;
        return Ok(Some(Outcome::Ignored));
    }
    let dropped = |outcome: Outcome| -> rusqlite::Result<Option<Outcome>> {
        store::sqlite::reports::delete(tx, c.id)?;
        Ok(Some(outcome))
    };
    let (rp, via) = match (&c.report, c.link) {
        (Report::AutoReply, _) => return dropped(Outcome::AutoReply),
        (_, Link::Forged) => return dropped(Outcome::Forged),
        (_, Link::Missing) => return dropped(Outcome::Unlinked),
        (_, Link::Found(rp, via)) => (rp, via),
    };
    let email_id = rp.email_id.hyphenated().to_string();
    let Some(rcpt) = store::sqlite::feedback::recipient(tx, &email_id, rp.rcpt_index)? else {
        // A token of ours for an email this store does not have (another
        // store's, or a `preview`): nothing to change.
        return dropped(Outcome::Unlinked);
    };
    let target = Target {
        email_id,
        idx: rp.rcpt_index,
        rcpt,
        report_id: c.id,
        at: c.received_at,
    };
    let (outcome, mut detail) = match decide(&c.report, c.unsubscribe, &target.rcpt) {
        Effect::Drop(outcome) => return dropped(outcome),
        Effect::Bounce(b) => (Outcome::Bounced, bounce(tx, &target, &b, rules)?),
        Effect::Delay(b) => (Outcome::Delayed, delay(tx, &target, &b)?),
        Effect::Complaint(comp) => (Outcome::Complained, complaint(tx, &target, &comp, rules)?),
        Effect::Unsubscribe => (
            Outcome::Unsubscribe,
            unsubscribe_by_mail(tx, &target, rules)?,
        ),
        Effect::Nothing(outcome, why) => (outcome, json!({ "changed": false, "why": why })),
    };
    if let Value::Object(m) = &mut detail {
        m.insert("outcome".into(), outcome.as_str().into());
        m.insert("email_id".into(), target.email_id.clone().into());
        m.insert("rcpt_idx".into(), target.idx.into());
        m.insert("recipient".into(), target.rcpt.address.clone().into());
        m.insert("linked_by".into(), via.as_str().into());
    }
    store::sqlite::reports::set_outcome(tx, c.id, c.kind, &detail)?;
    Ok(Some(outcome))
}

/// What one report of a batch came to: its id, and its outcome or why it
/// could not be applied.
type BatchResult = Vec<(i64, Result<Option<Outcome>, String>)>;

/// Applies `batch` in order in one transaction, each report under its own
/// savepoint: a report whose effects fail (or panic) is rolled back alone
/// and marked processed with the error, so it is kept for the operator to
/// read and never blocks or loops the queue. Only a failing savepoint
/// statement fails the whole write (nothing applied, read again later).
pub fn apply_batch(
    tx: &Tx<'_>,
    batch: &[Classified],
    rules: &Rules,
    now: i64,
) -> rusqlite::Result<BatchResult> {
    let mut out = Vec::with_capacity(batch.len());
    for c in batch {
        tx.execute_batch("SAVEPOINT report")?;
        let applied =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| apply(tx, c, rules, now)));
        let error = match applied {
            Ok(Ok(outcome)) => {
                tx.execute_batch("RELEASE report")?;
                out.push((c.id, Ok(outcome)));
                continue;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "internal error: applying the report panicked".to_string(),
        };
        tx.execute_batch("ROLLBACK TO report; RELEASE report")?;
        if store::sqlite::reports::claim(tx, c.id, now)? {
            store::sqlite::reports::set_outcome(tx, c.id, c.kind, &json!({ "error": error }))?;
        }
        out.push((c.id, Err(error)));
    }
    Ok(out)
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
    store::sqlite::feedback::set_bounced(tx, &t.email_id, t.idx, t.at, &b.message)?;
    let mut object = b.event_json(t.at, true);
    object["report_id"] = t.report_id.into();
    let event_id = store::sqlite::events::insert(
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
    let event_id = store::sqlite::events::insert(tx, &t.event(EventType::DeliveryDelayed, detail))?;
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
    let event_id = store::sqlite::events::insert(tx, &t.event(EventType::Complained, detail))?;
    let suppressed = rules.complaint.contains(&t.rcpt.domain)
        && t.suppress(tx, suppressions::Reason::Complaint, event_id)?;
    Ok(json!({
        "changed": true,
        "event_id": event_id,
        "suppressed": suppressed,
        "feedback_type": c.feedback_type,
    }))
}

/// Mail to `unsubscribe+{token}@…`, the mailto of `List-Unsubscribe`: the
/// same unsubscribe as the one-click POST (`email.unsubscribed` once per
/// recipient, and a suppression where `suppress_on` has `unsubscribe`),
/// never a bounce, whatever the mail looks like.
fn unsubscribe_by_mail(tx: &Tx<'_>, t: &Target, rules: &Rules) -> rusqlite::Result<Value> {
    use store::sqlite::unsubscribe::{self as unsub, Outcome as U};
    let req = unsub::Request {
        email_id: t.email_id.clone(),
        rcpt_idx: t.idx,
        via: unsub::Via::Mailto,
        at: t.at,
        // The peer is the user's mail server, not the user.
        ip: None,
        user_agent: None,
    };
    Ok(
        match unsub::unsubscribe(tx, &req, &|d| rules.unsubscribe.contains(d))? {
            U::Unsubscribed {
                event_id,
                suppression_added,
                ..
            } => json!({ "changed": true, "event_id": event_id, "suppressed": suppression_added }),
            U::Repeated {
                event_id,
                suppression_added,
            } => json!({
                "changed": suppression_added,
                "why": "unsubscribed before",
                "event_id": event_id,
                "suppressed": suppression_added,
            }),
            U::UnknownRecipient => json!({ "changed": false, "why": "no such recipient" }),
        },
    )
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
        let rows = match self
            .store
            .read(move |c| store::sqlite::reports::pending(c, after, BATCH))
            .await
        {
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
    /// under its own savepoint (see `apply_batch`). Returns whether the
    /// write committed.
    async fn write(&self, classified: Vec<Classified>) -> bool {
        let rules = self.rules.clone();
        let done = self
            .store
            .write(Durability::Normal, move |tx| {
                apply_batch(tx, &classified, &rules, store::now_ms())
            })
            .await;
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
