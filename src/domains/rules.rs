//! The status rules, pure: (stored state, this check's records, now) →
//! the new state and why. No I/O and no clock of their own, so every
//! transition and the 72-hour window are unit-tested with chosen times.
//!
//! Records are grouped by what they are for:
//! - sending: DKIM, and SPF at the domain when it is required (no
//!   `return_path`). These make mail authenticate: with them verified,
//!   receivers see aligned DKIM and DMARC passes.
//! - return path (MX and SPF at `{return_path}.{domain}`) and tracking
//!   (the CNAME of `tracking_subdomain`): needed for bounces and for
//!   tracked links, not for mail to be accepted.
//! - advisory: DMARC (recommended, not required), and SPF at the domain
//!   when a return path carries the envelope. Shown, never part of a status.
//!
//! Statuses (Resend's):
//! - `not_started`: never checked, or a sending record has nothing to
//!   check yet (no DKIM entry, or the managed key not generated).
//! - `pending`: a sending record is not verified, less than 72 h after the
//!   first check; `failed` once 72 h have passed.
//! - `verified`: every required record verified.
//! - `partially_verified`: sending records verified, a return-path or
//!   tracking record not (yet); `partially_failed` once that has lasted
//!   72 h.
//! - `temporary_failure`: a sending record of a domain whose sending
//!   records were verified is no longer verified; `failed` after 72 h
//!   without it, `verified` (or partially) as soon as it is back.
//!
//! A lookup that fails (timeout, SERVFAIL) counts as not verified: the
//! record cannot be shown to be there.

use crate::dnscheck::{RecordCheck, RecordKind, Status};
use serde::Serialize;

/// How long a record may stay missing before the status says failed.
pub const WINDOW_MS: i64 = 72 * 3600 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DomainStatus {
    NotStarted,
    Pending,
    Verified,
    Failed,
    TemporaryFailure,
    PartiallyVerified,
    PartiallyFailed,
}

impl DomainStatus {
    pub const ALL: [DomainStatus; 7] = [
        DomainStatus::NotStarted,
        DomainStatus::Pending,
        DomainStatus::Verified,
        DomainStatus::Failed,
        DomainStatus::TemporaryFailure,
        DomainStatus::PartiallyVerified,
        DomainStatus::PartiallyFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DomainStatus::NotStarted => "not_started",
            DomainStatus::Pending => "pending",
            DomainStatus::Verified => "verified",
            DomainStatus::Failed => "failed",
            DomainStatus::TemporaryFailure => "temporary_failure",
            DomainStatus::PartiallyVerified => "partially_verified",
            DomainStatus::PartiallyFailed => "partially_failed",
        }
    }

    /// An unknown name (a newer binary's store) reads as not started.
    pub fn parse(s: &str) -> DomainStatus {
        DomainStatus::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .unwrap_or(DomainStatus::NotStarted)
    }

    /// Whether the sending records were verified in this status: losing
    /// one then is a temporary failure, not a pending domain.
    fn sending_was_verified(self) -> bool {
        matches!(
            self,
            DomainStatus::Verified
                | DomainStatus::PartiallyVerified
                | DomainStatus::PartiallyFailed
                | DomainStatus::TemporaryFailure
        )
    }
}

impl std::fmt::Display for DomainStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the rules remember between checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DomainState {
    pub status: DomainStatus,
    /// Not fully verified since (unix ms): the first check, or when a
    /// verified domain lost a record. None while verified or not started.
    pub since: Option<i64>,
    /// A sending record missing since (unix ms), after the sending records
    /// had been verified: the start of a temporary failure.
    pub lost_since: Option<i64>,
}

impl Default for DomainState {
    fn default() -> Self {
        DomainState {
            status: DomainStatus::NotStarted,
            since: None,
            lost_since: None,
        }
    }
}

/// What one check found, as far as the status is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A sending record has nothing to check yet.
    NothingToCheck,
    AllVerified,
    /// Sending records verified, a return-path or tracking record not.
    SendingOnly,
    /// A sending record is not verified.
    NotSending,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    Sending,
    ReturnPath,
    Tracking,
    Advisory,
}

pub fn group(c: &RecordCheck) -> Group {
    match c.record {
        _ if !c.required => Group::Advisory,
        RecordKind::Dkim | RecordKind::Spf => Group::Sending,
        RecordKind::ReturnPathMx | RecordKind::ReturnPathSpf => Group::ReturnPath,
        RecordKind::Tracking => Group::Tracking,
        RecordKind::Dmarc => Group::Advisory,
        RecordKind::Caa | RecordKind::Certificate => Group::Advisory,
    }
}

pub fn outcome(checks: &[RecordCheck]) -> Outcome {
    let sending = || checks.iter().filter(|c| group(c) == Group::Sending);
    if sending().any(|c| c.status == Status::NotStarted) {
        return Outcome::NothingToCheck;
    }
    if !sending().all(|c| c.status == Status::Verified) {
        return Outcome::NotSending;
    }
    let rest_ok = checks
        .iter()
        .filter(|c| matches!(group(c), Group::ReturnPath | Group::Tracking))
        .all(|c| c.status == Status::Verified);
    if rest_ok {
        Outcome::AllVerified
    } else {
        Outcome::SendingOnly
    }
}

/// The new state after a check with this outcome at `now`.
pub fn next_state(prev: &DomainState, outcome: Outcome, now: i64) -> DomainState {
    let since = prev.since.unwrap_or(now);
    let past = |t: i64| now.saturating_sub(t) >= WINDOW_MS;
    match outcome {
        Outcome::NothingToCheck => DomainState::default(),
        Outcome::AllVerified => DomainState {
            status: DomainStatus::Verified,
            since: None,
            lost_since: None,
        },
        Outcome::SendingOnly => DomainState {
            // Partially failed stays so until everything is verified.
            status: if prev.status == DomainStatus::PartiallyFailed || past(since) {
                DomainStatus::PartiallyFailed
            } else {
                DomainStatus::PartiallyVerified
            },
            since: Some(since),
            lost_since: None,
        },
        Outcome::NotSending if prev.status.sending_was_verified() => {
            let lost = match prev.status {
                DomainStatus::TemporaryFailure => prev.lost_since.unwrap_or(now),
                _ => now,
            };
            DomainState {
                status: if past(lost) {
                    DomainStatus::Failed
                } else {
                    DomainStatus::TemporaryFailure
                },
                since: Some(since),
                lost_since: Some(lost),
            }
        }
        Outcome::NotSending => DomainState {
            status: if prev.status == DomainStatus::Failed || past(since) {
                DomainStatus::Failed
            } else {
                DomainStatus::Pending
            },
            since: Some(since),
            lost_since: prev.lost_since,
        },
    }
}

/// The outcome of `checks`, the new state, and a sentence saying why.
pub fn next(prev: &DomainState, checks: &[RecordCheck], now: i64) -> (DomainState, String) {
    let o = outcome(checks);
    let state = next_state(prev, o, now);
    (state, reason(&state, checks))
}

fn listed(checks: &[RecordCheck], groups: &[Group], bad: impl Fn(Status) -> bool) -> String {
    let items: Vec<String> = checks
        .iter()
        .filter(|c| groups.contains(&group(c)) && bad(c.status))
        .map(|c| {
            let at = if c.name.is_empty() { "-" } else { &c.name };
            format!("{} {at} {}", c.record.as_str(), c.status)
        })
        .collect();
    items.join(", ")
}

/// Why the domain is in this status, naming the records that put it there.
pub fn reason(state: &DomainState, checks: &[RecordCheck]) -> String {
    let not_verified = |s: Status| s != Status::Verified;
    let sending = || listed(checks, &[Group::Sending], not_verified);
    let rest = || listed(checks, &[Group::ReturnPath, Group::Tracking], not_verified);
    match state.status {
        DomainStatus::NotStarted => format!(
            "nothing to check yet: {}",
            listed(checks, &[Group::Sending], |s| s == Status::NotStarted)
        ),
        DomainStatus::Verified => "every required record is verified".into(),
        DomainStatus::Pending => format!("not verified yet: {}", sending()),
        DomainStatus::PartiallyVerified => {
            format!("sending records verified; not yet: {}", rest())
        }
        DomainStatus::PartiallyFailed => format!(
            "sending records verified, but still not after 72 hours: {}",
            rest()
        ),
        DomainStatus::TemporaryFailure => format!(
            "a sending record of this verified domain is no longer verified: {}",
            sending()
        ),
        DomainStatus::Failed if state.lost_since.is_some() => format!(
            "a sending record has been missing for 72 hours: {}",
            sending()
        ),
        DomainStatus::Failed => format!(
            "still not verified 72 hours after the first check: {}",
            sending()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DomainStatus::*;

    const H: i64 = 3600 * 1000;
    const T0: i64 = 1_800_000_000_000;

    /// A state of `status` whose windows started at T0.
    fn at_t0(status: DomainStatus) -> DomainState {
        DomainState {
            status,
            since: (!matches!(status, NotStarted | Verified)).then_some(T0),
            lost_since: matches!(status, TemporaryFailure).then_some(T0),
        }
    }

    /// Every (status, outcome) pair, within the window and past it.
    #[test]
    fn every_transition() {
        use Outcome::*;
        // (from, outcome, status within 72 h, status past 72 h)
        let table = [
            (NotStarted, NothingToCheck, NotStarted, NotStarted),
            (NotStarted, AllVerified, Verified, Verified),
            (
                NotStarted,
                SendingOnly,
                PartiallyVerified,
                PartiallyVerified,
            ),
            (NotStarted, NotSending, Pending, Pending),
            (Pending, NothingToCheck, NotStarted, NotStarted),
            (Pending, AllVerified, Verified, Verified),
            (Pending, SendingOnly, PartiallyVerified, PartiallyFailed),
            (Pending, NotSending, Pending, Failed),
            (Verified, NothingToCheck, NotStarted, NotStarted),
            (Verified, AllVerified, Verified, Verified),
            (Verified, SendingOnly, PartiallyVerified, PartiallyVerified),
            (Verified, NotSending, TemporaryFailure, TemporaryFailure),
            (Failed, NothingToCheck, NotStarted, NotStarted),
            (Failed, AllVerified, Verified, Verified),
            (Failed, SendingOnly, PartiallyVerified, PartiallyFailed),
            (Failed, NotSending, Failed, Failed),
            (TemporaryFailure, NothingToCheck, NotStarted, NotStarted),
            (TemporaryFailure, AllVerified, Verified, Verified),
            (
                TemporaryFailure,
                SendingOnly,
                PartiallyVerified,
                PartiallyFailed,
            ),
            (TemporaryFailure, NotSending, TemporaryFailure, Failed),
            (PartiallyVerified, NothingToCheck, NotStarted, NotStarted),
            (PartiallyVerified, AllVerified, Verified, Verified),
            (
                PartiallyVerified,
                SendingOnly,
                PartiallyVerified,
                PartiallyFailed,
            ),
            (
                PartiallyVerified,
                NotSending,
                TemporaryFailure,
                TemporaryFailure,
            ),
            (PartiallyFailed, NothingToCheck, NotStarted, NotStarted),
            (PartiallyFailed, AllVerified, Verified, Verified),
            (
                PartiallyFailed,
                SendingOnly,
                PartiallyFailed,
                PartiallyFailed,
            ),
            (
                PartiallyFailed,
                NotSending,
                TemporaryFailure,
                TemporaryFailure,
            ),
        ];
        assert_eq!(table.len(), DomainStatus::ALL.len() * 4);
        for (from, o, within, past) in table {
            let prev = at_t0(from);
            let a = next_state(&prev, o, T0 + H);
            assert_eq!(a.status, within, "{from} + {o:?} after 1 h");
            let b = next_state(&prev, o, T0 + 72 * H);
            assert_eq!(b.status, past, "{from} + {o:?} after 72 h");
        }
    }

    #[test]
    fn the_window_is_exactly_72_hours_from_the_first_check() {
        let first = next_state(&DomainState::default(), Outcome::NotSending, T0);
        assert_eq!((first.status, first.since), (Pending, Some(T0)));
        let before = next_state(&first, Outcome::NotSending, T0 + 72 * H - 1);
        assert_eq!(before.status, Pending);
        assert_eq!(before.since, Some(T0), "the window does not move");
        let at = next_state(&before, Outcome::NotSending, T0 + 72 * H);
        assert_eq!(at.status, Failed);
        // Found later: verified, and the windows are forgotten.
        let v = next_state(&at, Outcome::AllVerified, T0 + 100 * H);
        assert_eq!(
            v,
            DomainState {
                status: Verified,
                since: None,
                lost_since: None
            }
        );
    }

    #[test]
    fn a_temporary_failure_counts_from_the_loss_not_the_first_check() {
        let verified = DomainState {
            status: Verified,
            since: None,
            lost_since: None,
        };
        let lost = next_state(&verified, Outcome::NotSending, T0);
        assert_eq!((lost.status, lost.lost_since), (TemporaryFailure, Some(T0)));
        let still = next_state(&lost, Outcome::NotSending, T0 + 71 * H);
        assert_eq!(
            (still.status, still.lost_since),
            (TemporaryFailure, Some(T0))
        );
        let back = next_state(&still, Outcome::AllVerified, T0 + 71 * H);
        assert_eq!(back.status, Verified);
        // Lost again later: a new window.
        let again = next_state(&back, Outcome::NotSending, T0 + 200 * H);
        assert_eq!(
            (again.status, again.lost_since),
            (TemporaryFailure, Some(T0 + 200 * H))
        );
        let failed = next_state(&again, Outcome::NotSending, T0 + 272 * H);
        assert_eq!(failed.status, Failed);
        // Failed stays failed while the record is missing, however long.
        assert_eq!(
            next_state(&failed, Outcome::NotSending, T0 + 999 * H).status,
            Failed
        );
    }

    fn check(record: RecordKind, status: Status, required: bool) -> RecordCheck {
        RecordCheck {
            domain: "example.com".into(),
            record,
            name: format!("{}.example.com", record.as_str()),
            record_type: "TXT",
            expected: String::new(),
            found: Vec::new(),
            status,
            required,
            note: None,
        }
    }

    #[test]
    fn outcomes_from_records() {
        use RecordKind::*;
        use Status as S;
        let all = |dkim, spf_root, rp, track, dmarc| {
            vec![
                check(Dkim, dkim, true),
                check(Spf, spf_root, false),
                check(ReturnPathMx, rp, true),
                check(ReturnPathSpf, rp, true),
                check(Dmarc, dmarc, false),
                check(Tracking, track, true),
            ]
        };
        let v = S::Verified;
        assert_eq!(
            outcome(&all(v, S::Pending, v, v, S::Pending)),
            Outcome::AllVerified,
            "advisory records do not count"
        );
        assert_eq!(outcome(&all(v, v, S::Pending, v, v)), Outcome::SendingOnly);
        assert_eq!(outcome(&all(v, v, v, S::Failed, v)), Outcome::SendingOnly);
        assert_eq!(outcome(&all(S::Pending, v, v, v, v)), Outcome::NotSending);
        assert_eq!(outcome(&all(S::Failed, v, v, v, v)), Outcome::NotSending);
        assert_eq!(
            outcome(&all(S::NotStarted, v, v, v, v)),
            Outcome::NothingToCheck
        );
        // Without a return path, SPF at the domain is a sending record.
        let no_rp = vec![
            check(Dkim, v, true),
            check(Spf, S::Pending, true),
            check(Dmarc, v, false),
        ];
        assert_eq!(outcome(&no_rp), Outcome::NotSending);
        // Tracking on without a subdomain: advisory (not required).
        let untracked = vec![
            check(Dkim, v, true),
            check(Spf, v, true),
            check(Tracking, S::NotStarted, false),
        ];
        assert_eq!(outcome(&untracked), Outcome::AllVerified);
    }

    #[test]
    fn reasons_name_the_records() {
        let checks = vec![
            check(RecordKind::Dkim, Status::Verified, true),
            check(RecordKind::Tracking, Status::Pending, true),
        ];
        let (state, why) = next(&DomainState::default(), &checks, T0);
        assert_eq!(state.status, PartiallyVerified);
        assert_eq!(
            why,
            "sending records verified; not yet: tracking tracking.example.com pending"
        );
        let checks = vec![check(RecordKind::Dkim, Status::Failed, true)];
        let (state, why) = next(&at_t0(Verified), &checks, T0);
        assert_eq!(state.status, TemporaryFailure);
        assert!(why.contains("dkim dkim.example.com failed"), "{why}");
    }

    #[test]
    fn names_round_trip() {
        for s in DomainStatus::ALL {
            assert_eq!(DomainStatus::parse(s.as_str()), s);
        }
        assert_eq!(DomainStatus::parse("nonsense"), NotStarted);
    }
}
