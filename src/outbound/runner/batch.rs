//! One leased batch as a connection's message source.

use super::shelf::{Leases, Shelf};
use super::{attempt, LastFailure, Runner, Stored};
use crate::outbound::client::{MessageSource, Outcome, OutgoingMessage};
use crate::outbound::tls_policy::SessionResult;
use crate::store::queue::{Claimed, Outcome as QueueOutcome, TlsPolicyNote};
use std::collections::VecDeque;
use std::sync::Arc;

/// One leased batch as a connection's message source: each copy is read,
/// prepared and signed when the connection asks for it, and each outcome
/// recorded when the connection reports it.
pub(super) struct Batch {
    pub(super) runner: Arc<Runner>,
    /// Not yet tried, at the first host: shared with the connection's
    /// siblings (src/outbound/runner/shelf.rs).
    pub(super) shelf: Arc<Shelf>,
    /// The shelf is still shared and may be refilled: the connection is
    /// at its first host.
    pub(super) sharing: bool,
    /// Every lease this connection holds recipients under.
    pub(super) leases: Leases,
    /// Messages handed to the connection so far.
    pub(super) given: usize,
    /// Not yet tried at the current host, past the first.
    pub(super) pending: VecDeque<Claimed>,
    /// Sent or being sent, oldest first, waiting for their outcomes (two
    /// at most, when the connection pipelines).
    pub(super) in_flight: VecDeque<Claimed>,
    /// Temporarily failed at the current host, and why.
    pub(super) failed: Vec<(Claimed, LastFailure)>,
    pub(super) host: String,
    /// The last stored message read (recipients of one email come
    /// together), so a batch holds at most one.
    pub(super) stored: Option<(String, Option<Arc<Stored>>)>,
    /// The TLS policy at the current host, for each attempt's record.
    pub(super) tls_note: Option<TlsPolicyNote>,
    /// The policy only records failures (MTA-STS testing): a failed check
    /// of the session goes into the note.
    pub(super) report_only: bool,
}

impl Batch {
    /// Ends the sharing at the first host: what is left on the shelf is
    /// for this connection to try at the next.
    pub(super) fn unshelve(&mut self) {
        if std::mem::take(&mut self.sharing) {
            let left = self.runner.close_shelf(&self.shelf);
            self.pending.extend(left);
        }
    }

    /// The next recipient to try: the current host's own, then the shelf,
    /// then, while the host takes everything it is given, what a sibling
    /// can spare or the queue has due for the same destination.
    async fn next_recipient(&mut self) -> Option<Claimed> {
        loop {
            if let Some(c) = self.pending.pop_front().or_else(|| self.shelf.pop()) {
                self.given += 1;
                return Some(c);
            }
            if !self.sharing || !self.failed.is_empty() {
                return None;
            }
            let room = self.runner.per_connection.saturating_sub(self.given);
            if !self.runner.refill(&self.shelf, &self.leases, room).await {
                return None;
            }
        }
    }

    /// The stored message: `Ok(None)` once pruned; `Err` when the store
    /// could not be read (a lost body segment, a disk error), which is
    /// retried rather than taken for a pruned message.
    async fn stored_for(&mut self, email_id: &str) -> Result<Option<Arc<Stored>>, String> {
        if let Some((id, stored)) = &self.stored {
            if id == email_id {
                return Ok(stored.clone());
            }
        }
        let fresh = self.runner.fresh.as_ref().and_then(|f| f.take(email_id));
        let stored = match fresh {
            Some(body) => Some(body),
            None => match self.runner.store.body(email_id).await {
                Ok(found) => found.map(Arc::new),
                Err(e) => {
                    tracing::error!(email_id, "reading the message: {e}");
                    return Err(format!("reading the stored message failed: {e}"));
                }
            },
        };
        self.stored = Some((email_id.to_string(), stored.clone()));
        Ok(stored)
    }
}

impl MessageSource for Batch {
    async fn next(&mut self) -> Option<OutgoingMessage> {
        while let Some(c) = self.next_recipient().await {
            let stored = match self.stored_for(&c.email_id).await {
                Ok(Some(stored)) => stored,
                Ok(None) => {
                    let why = "the message body is no longer stored".to_string();
                    let failed = attempt(&c, QueueOutcome::Failed, why, None, None);
                    self.runner.record(vec![failed]).await;
                    continue;
                }
                Err(why) => {
                    let later = self.runner.temp_failure(&c, why, None, None);
                    self.runner.record(vec![later]).await;
                    continue;
                }
            };
            match self.runner.prepare_copy(&c, stored).await {
                Ok(msg) => {
                    self.in_flight.push_back(c);
                    return Some(msg);
                }
                Err(why) => {
                    tracing::error!(email_id = %c.email_id, rcpt = c.idx, "{why}");
                    let note = self.tls_note.clone();
                    self.failed.push((c, (why, None, self.host.clone(), note)));
                }
            }
        }
        None
    }

    async fn outcome(&mut self, outcome: Outcome) {
        let Some(c) = self.in_flight.pop_front() else {
            return;
        };
        let tls = outcome.tls().map(str::to_string);
        let host = Some(self.host.clone());
        let mut done = match outcome {
            Outcome::Delivered { response, .. } => {
                attempt(&c, QueueOutcome::Delivered, response, tls, host)
            }
            Outcome::PermFail { reason, .. } => {
                attempt(&c, QueueOutcome::Bounced, reason, tls, host)
            }
            Outcome::TempFail { reason, .. } => {
                let note = self.tls_note.clone();
                self.failed
                    .push((c, (reason, tls, self.host.clone(), note)));
                return;
            }
        };
        done.tls_policy = self.tls_note.clone();
        self.runner.record(vec![done]).await;
    }

    fn tls_session(&mut self, result: &SessionResult) {
        // Only a check that did not stop delivery is news for the record;
        // one that did is the attempt's reason already.
        if let (true, SessionResult::Failure(kind, why)) = (self.report_only, result) {
            if let Some(note) = &mut self.tls_note {
                note.failure
                    .get_or_insert_with(|| (kind.as_str().to_string(), why.clone()));
            }
        }
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        // Done, or cancelled at shutdown: what is left (only then) keeps
        // its lease, given back or recovered by the runner, but no sibling
        // may take it now.
        self.runner.close_shelf(&self.shelf);
        tracing::debug!(destination = %self.shelf.key().0, messages = self.given, "connection done");
    }
}
