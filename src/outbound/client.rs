//! The outbound SMTP client: several messages over one connection, each its
//! own MAIL/RCPT/DATA transaction, under a TLS policy.
//!
//! Decisions worth knowing (see also DESIGN.md, "Outbound"):
//! - AUTH credentials are only sent over TLS, or to a loopback address (a
//!   local stunnel or test relay: the bytes never leave the host). Otherwise
//!   every message fails temporarily; credentials are never exposed.
//! - Credentials configured but no AUTH PLAIN/LOGIN offered, or AUTH
//!   rejected: temporary failure, like Postfix's `smtp_sasl_auth_soft_bounce`;
//!   a credentials problem must not bounce mail.
//! - `needs_8bitmime` to a server without 8BITMIME: sent as is, without the
//!   BODY parameter. Converting to 7 bit would break the DKIM signature, and
//!   servers without 8BITMIME that reject 8-bit data are practically extinct.
//! - Any failure between STARTTLS and the second EHLO counts as a failed
//!   handshake: opportunistic delivery then reconnects in plaintext.
//! - A connection lost after the data but before the final reply leaves the
//!   message's fate unknown; it is a temporary failure (at least once).

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::ServerCertVerifier;

use super::protocol::{self, Capabilities};
use super::session::{ConnError, Connection};
use super::tls::TlsMemory;
use super::tls_policy::{
    classify_certificate_error, Applied, RecordingVerifier, ResultType, SessionResult,
};
use super::transaction;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsPolicy {
    /// STARTTLS when offered; plaintext when not, or when the handshake fails.
    #[default]
    Opportunistic,
    /// STARTTLS must be offered and succeed with TLS 1.2+; never plaintext.
    Enforced,
}

/// Per-step limits. Defaults follow RFC 5321 section 4.5.3.2 where it names
/// one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    /// RFC 5321 has none; 30 s is what a reachable host needs, and a dead
    /// one should not hold a delivery slot for minutes.
    pub connect: Duration,
    pub greeting: Duration,
    /// EHLO, STARTTLS, AUTH, RSET.
    pub command: Duration,
    pub tls_handshake: Duration,
    pub mail: Duration,
    pub rcpt: Duration,
    pub data_init: Duration,
    /// Each 64 KiB block of the message.
    pub data_block: Duration,
    /// The reply to the final ".".
    pub data_term: Duration,
    /// QUIT is a courtesy; outcomes are known by then.
    pub quit: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        let min = |m: u64| Duration::from_secs(60 * m);
        Timeouts {
            connect: Duration::from_secs(30),
            greeting: min(5),
            command: min(5),
            tls_handshake: min(1),
            mail: min(5),
            rcpt: min(5),
            data_init: min(2),
            data_block: min(3),
            data_term: min(10),
            quit: Duration::from_secs(10),
        }
    }
}

impl Timeouts {
    /// The same limit for every step (QUIT gets at most 2 s): for tests and
    /// tools that want failures fast rather than RFC-patient.
    pub fn uniform(t: Duration) -> Self {
        Timeouts {
            connect: t,
            greeting: t,
            command: t,
            tls_handshake: t,
            mail: t,
            rcpt: t,
            data_init: t,
            data_block: t,
            data_term: t,
            quit: t.min(Duration::from_secs(2)),
        }
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct ClientConfig {
    pub ehlo_name: String,
    pub tls_policy: TlsPolicy,
    /// TLS from the first byte (smarthost on port 465). A failed handshake
    /// is a temporary failure whatever the policy: there is no plaintext
    /// service to fall back to.
    pub implicit_tls: bool,
    /// Smarthost AUTH (PLAIN, else LOGIN): user name and password.
    pub auth: Option<(String, String)>,
    pub timeouts: Timeouts,
}

impl ClientConfig {
    /// Opportunistic TLS, no AUTH, default timeouts.
    pub fn new(ehlo_name: impl Into<String>) -> Self {
        ClientConfig {
            ehlo_name: ehlo_name.into(),
            tls_policy: TlsPolicy::Opportunistic,
            implicit_tls: false,
            auth: None,
            timeouts: Timeouts::default(),
        }
    }
}

impl fmt::Debug for ClientConfig {
    // The password stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("ehlo_name", &self.ehlo_name)
            .field("tls_policy", &self.tls_policy)
            .field("implicit_tls", &self.implicit_tls)
            .field("auth_user", &self.auth.as_ref().map(|(u, _)| u))
            .field("timeouts", &self.timeouts)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// Envelope sender without angle brackets; empty for the null sender.
    pub mail_from: String,
    pub rcpt_to: String,
    /// The exact message bytes (CRLF line ends), already signed.
    pub data: Vec<u8>,
    /// Non-ASCII envelope addresses set this implicitly.
    pub needs_smtputf8: bool,
    pub needs_8bitmime: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `response` is the final reply, e.g. "250 2.0.0 Ok: queued as X".
    Delivered {
        response: String,
        tls: Option<String>,
    },
    /// Retry later: 4xx, connection or TLS-policy problems.
    TempFail { reason: String, tls: Option<String> },
    /// Bounce: 5xx, or a message this server can never take.
    PermFail { reason: String, tls: Option<String> },
}

impl Outcome {
    /// The TLS version the attempt ran under ("TLSv1.3"), if any.
    pub fn tls(&self) -> Option<&str> {
        match self {
            Outcome::Delivered { tls, .. }
            | Outcome::TempFail { tls, .. }
            | Outcome::PermFail { tls, .. } => tls.as_deref(),
        }
    }

    pub fn is_delivered(&self) -> bool {
        matches!(self, Outcome::Delivered { .. })
    }

    /// The server's reply or the reason for the failure.
    pub fn text(&self) -> &str {
        match self {
            Outcome::Delivered { response, .. } => response,
            Outcome::TempFail { reason, .. } | Outcome::PermFail { reason, .. } => reason,
        }
    }
}

pub(super) fn temp(reason: impl Into<String>, tls: Option<String>) -> Outcome {
    Outcome::TempFail {
        reason: reason.into(),
        tls,
    }
}

fn all_temp(n: usize, reason: &str, tls: Option<String>) -> Vec<Outcome> {
    (0..n).map(|_| temp(reason, tls.clone())).collect()
}

/// Where one connection gets its messages, one at a time, and where it
/// reports each outcome as that message's transaction ends. The queue
/// runner prepares and signs each copy only when `next` is called, so
/// nothing is built before the connection is up. Every message `next`
/// returns gets exactly one outcome, in the same order; to a pipelining
/// server the connection asks for the next message while the last one's
/// reply is outstanding, so two can be waiting for theirs.
pub trait MessageSource: Send {
    /// The next message to send; `None` when there are no more.
    fn next(&mut self) -> impl Future<Output = Option<OutgoingMessage>> + Send;
    /// The outcome of the oldest message `next` returned that has none yet.
    fn outcome(&mut self, outcome: Outcome) -> impl Future<Output = ()> + Send;
    /// How TLS went on a connection that is about to carry messages
    /// (before the first `next` there): the runner notes it in each
    /// attempt's record.
    fn tls_session(&mut self, _result: &SessionResult) {}
}

/// Why the messages still in the source were not attempted (with the TLS
/// version of the session, if it got that far).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotAttempted {
    pub reason: String,
    pub tls: Option<String>,
}

/// A slice as a [`MessageSource`], outcomes collected in order.
struct SliceSource<'a> {
    msgs: &'a [OutgoingMessage],
    /// How many `next` has returned.
    given: usize,
    outcomes: Vec<Outcome>,
}

impl MessageSource for SliceSource<'_> {
    async fn next(&mut self) -> Option<OutgoingMessage> {
        let msg = self.msgs.get(self.given)?.clone();
        self.given += 1;
        Some(msg)
    }

    async fn outcome(&mut self, outcome: Outcome) {
        self.outcomes.push(outcome);
    }
}

/// Delivers `msgs` over one connection to `addr`, returning one outcome per
/// message, in order. See [`deliver_each`].
pub async fn deliver(
    addr: SocketAddr,
    server_name: &str,
    cfg: &ClientConfig,
    msgs: &[OutgoingMessage],
    tls_memory: &TlsMemory,
) -> Vec<Outcome> {
    let mut source = SliceSource {
        msgs,
        given: 0,
        outcomes: Vec::with_capacity(msgs.len()),
    };
    if msgs.is_empty() {
        return Vec::new();
    }
    let rest = deliver_each(addr, server_name, cfg, &mut source, tls_memory).await;
    let mut outcomes = source.outcomes;
    if let Err(NotAttempted { reason, tls }) = rest {
        outcomes.extend(all_temp(msgs.len() - outcomes.len(), &reason, tls));
    }
    outcomes
}

/// Delivers the messages of `source` over one connection to `addr`,
/// reporting each outcome to the source as its transaction ends.
/// `server_name` is the host name (for SNI and messages). `Err` says why
/// the messages left in the source were not attempted.
///
/// Opportunistic TLS: when the STARTTLS handshake fails, the host is noted
/// in `tls_memory` (see [`TlsMemory::broken_reason`]) and the messages go
/// out in plaintext on a new connection; while remembered, the host is
/// not offered STARTTLS again. Enforced TLS: anything short of a TLS 1.2+
/// session makes every message a TempFail; nothing is sent in plaintext.
pub async fn deliver_each<S: MessageSource>(
    addr: SocketAddr,
    server_name: &str,
    cfg: &ClientConfig,
    source: &mut S,
    tls_memory: &TlsMemory,
) -> Result<(), NotAttempted> {
    let tls = SessionTls::from_policy(cfg.tls_policy);
    deliver_each_tls(addr, server_name, cfg, &tls, source, tls_memory)
        .await
        .0
}

/// What a TLS policy asks of one session (see `tls_policy::HostDecision`).
#[derive(Clone)]
pub struct SessionTls {
    /// STARTTLS must be offered and succeed with TLS 1.2+; never plaintext.
    pub require_tls: bool,
    /// The certificate check; `None` accepts any certificate.
    pub verifier: Option<Arc<dyn ServerCertVerifier>>,
    /// Certificate failures are only recorded (MTA-STS `testing`).
    pub report_only: bool,
    /// The policy behind it, for naming certificate failures (RFC 8460).
    pub applied: Applied,
}

impl SessionTls {
    pub fn from_policy(policy: TlsPolicy) -> Self {
        SessionTls {
            require_tls: policy == TlsPolicy::Enforced,
            verifier: None,
            report_only: false,
            applied: match policy {
                TlsPolicy::Enforced => Applied::Enforced,
                TlsPolicy::Opportunistic => Applied::Opportunistic,
            },
        }
    }
}

impl fmt::Debug for SessionTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionTls")
            .field("require_tls", &self.require_tls)
            .field("verifies", &self.verifier.is_some())
            .field("report_only", &self.report_only)
            .field("applied", &self.applied)
            .finish()
    }
}

/// [`deliver_each`] under an explicit TLS policy, also saying how TLS went
/// (for TLS-RPT and the `testing` mode of MTA-STS).
pub async fn deliver_each_tls<S: MessageSource>(
    addr: SocketAddr,
    server_name: &str,
    cfg: &ClientConfig,
    tls: &SessionTls,
    source: &mut S,
    tls_memory: &TlsMemory,
) -> (Result<(), NotAttempted>, SessionResult) {
    if let Err(e) = protocol::check_ehlo_name(&cfg.ehlo_name) {
        let stop = NotAttempted {
            reason: e,
            tls: None,
        };
        return (Err(stop), SessionResult::NotApplicable);
    }
    let opportunistic = !tls.require_tls;
    let known_broken = opportunistic
        .then(|| tls_memory.broken_reason(addr))
        .flatten();
    let starttls = !cfg.implicit_tls && known_broken.is_none();
    let mut trace = Trace::new(tls);
    if let Some(why) = &known_broken {
        if tls.verifier.is_some() {
            trace.result = SessionResult::Failure(
                ResultType::ValidationFailure,
                format!("TLS with this host failed recently ({why}); sent in plaintext"),
            );
        }
    }
    // A failed STARTTLS happens before any message is taken from the source.
    let rest = match attempt(addr, server_name, cfg, &mut trace, source, starttls).await {
        Attempt::Done(rest) => rest,
        Attempt::TlsFailed(reason) if opportunistic => {
            tracing::warn!(%addr, server_name, %reason, "STARTTLS failed; retrying in plaintext");
            tls_memory.mark_broken(addr, reason.clone());
            let mut plain = Trace::new(&SessionTls::from_policy(TlsPolicy::Opportunistic));
            // What the messages are told is how TLS went, not the plaintext.
            plain.result = trace.result.clone();
            match attempt(addr, server_name, cfg, &mut plain, source, false).await {
                Attempt::Done(rest) => rest,
                // Unreachable without STARTTLS; kept total rather than panicking.
                Attempt::TlsFailed(again) => Err(NotAttempted {
                    reason: again,
                    tls: None,
                }),
            }
        }
        Attempt::TlsFailed(reason) => Err(NotAttempted {
            reason: format!(
                "TLS required, but STARTTLS with {server_name} [{addr}] failed: {reason}"
            ),
            tls: None,
        }),
    };
    (rest, trace.result)
}

/// How TLS went in one session, with the verifier that saw the certificate.
struct Trace {
    result: SessionResult,
    recorder: Option<Arc<RecordingVerifier>>,
    config: Option<Arc<rustls::ClientConfig>>,
    config_error: Option<String>,
    required: bool,
    applied: Applied,
}

impl Trace {
    fn new(tls: &SessionTls) -> Trace {
        let mut trace = Trace {
            result: SessionResult::NotApplicable,
            recorder: None,
            config: None,
            config_error: None,
            required: tls.require_tls,
            applied: tls.applied,
        };
        if let Some(v) = &tls.verifier {
            let recorder = Arc::new(RecordingVerifier::new(v.clone(), tls.report_only));
            match super::tls::config_with_verifier(recorder.clone()) {
                Ok(c) => trace.config = Some(c),
                Err(e) => trace.config_error = Some(e),
            }
            trace.recorder = Some(recorder);
        }
        trace
    }

    /// The certificate error the verifier saw, classified.
    fn certificate_failure(&self) -> Option<(ResultType, String)> {
        let e = self.recorder.as_ref()?.failure()?;
        let kind = classify_certificate_error(self.applied, &e);
        Some((kind, format!("certificate: {e}")))
    }

    fn failed(&mut self, kind: ResultType, why: impl Into<String>) {
        self.result = SessionResult::Failure(kind, why.into());
    }

    fn handshake_failed(&mut self, why: &str) {
        let (kind, detail) = self
            .certificate_failure()
            .unwrap_or((ResultType::ValidationFailure, why.to_string()));
        self.failed(kind, detail);
    }

    fn established(&mut self) {
        self.result = match self.certificate_failure() {
            Some((kind, why)) => SessionResult::Failure(kind, why),
            None => SessionResult::Success,
        };
    }
}

enum Attempt {
    Done(Result<(), NotAttempted>),
    TlsFailed(String),
}

async fn attempt<S: MessageSource>(
    addr: SocketAddr,
    server_name: &str,
    cfg: &ClientConfig,
    trace: &mut Trace,
    source: &mut S,
    starttls: bool,
) -> Attempt {
    let (mut conn, caps) = match open(addr, server_name, cfg, trace, starttls).await {
        Ok(open) => open,
        Err(Setup::TlsFailed(reason)) => return Attempt::TlsFailed(reason),
        Err(Setup::Failed(reason, tls)) => {
            return Attempt::Done(Err(NotAttempted {
                reason: format!("{server_name} [{addr}]: {reason}"),
                tls,
            }))
        }
    };
    source.tls_session(&trace.result);
    let (rest, alive) = transaction::run(&mut conn, &caps, cfg, source).await;
    if alive {
        conn.quit(cfg.timeouts.quit).await;
    }
    Attempt::Done(rest)
}

enum Setup {
    /// The session cannot be used; all messages fail temporarily.
    Failed(String, Option<String>),
    /// STARTTLS was attempted and did not produce a working TLS session.
    TlsFailed(String),
}

impl From<ConnError> for Setup {
    fn from(e: ConnError) -> Self {
        Setup::Failed(e.0, None)
    }
}

/// Connect, greeting, EHLO, STARTTLS per policy, AUTH.
async fn open(
    addr: SocketAddr,
    server_name: &str,
    cfg: &ClientConfig,
    trace: &mut Trace,
    starttls: bool,
) -> Result<(Connection, Capabilities), Setup> {
    let t = &cfg.timeouts;
    if let Some(e) = &trace.config_error {
        return Err(Setup::Failed(e.clone(), None));
    }
    let mut conn = Connection::connect(addr, t.connect).await?;
    if cfg.implicit_tls {
        conn = match conn
            .into_tls(server_name, t.tls_handshake, trace.config.clone())
            .await
        {
            Ok(conn) => conn,
            Err(e) => {
                trace.handshake_failed(&e.0);
                return Err(Setup::Failed(format!("implicit TLS: {e}"), None));
            }
        };
        trace.established();
    }
    let (greeting, _) = conn.read_reply(t.greeting, "greeting").await?;
    if !greeting.is_positive() {
        return Err(refuse(&mut conn, cfg, format!("greeting: {greeting}")).await);
    }
    let mut caps = match hello(&mut conn, cfg).await? {
        Ok(caps) => caps,
        Err(why) => return Err(refuse(&mut conn, cfg, why).await),
    };

    if starttls && !conn.is_tls() {
        let enforced = trace.required;
        if caps.starttls {
            let reply = match conn.command(b"STARTTLS\r\n", t.command, "STARTTLS").await {
                Ok((reply, _)) => reply,
                Err(e) => {
                    trace.failed(ResultType::ValidationFailure, e.0.clone());
                    return Err(Setup::TlsFailed(e.0));
                }
            };
            if reply.code == 220 {
                conn = match conn
                    .into_tls(server_name, t.tls_handshake, trace.config.clone())
                    .await
                {
                    Ok(conn) => conn,
                    Err(e) => {
                        trace.handshake_failed(&e.0);
                        return Err(Setup::TlsFailed(e.0));
                    }
                };
                trace.established();
                // A TLS stack that breaks on the first encrypted exchange is
                // as broken as one that fails the handshake.
                caps = match hello(&mut conn, cfg).await {
                    Ok(Ok(caps)) => caps,
                    Ok(Err(why)) => return Err(refuse(&mut conn, cfg, why).await),
                    Err(e) => {
                        trace.failed(ResultType::ValidationFailure, e.0.clone());
                        return Err(Setup::TlsFailed(e.0));
                    }
                };
            } else if enforced || reply.is_closing() {
                let why = format!("STARTTLS refused: {reply}");
                trace.failed(ResultType::StarttlsNotSupported, why.clone());
                return Err(refuse(&mut conn, cfg, why).await);
            } else {
                // RFC 3207: after a refused STARTTLS the session goes on
                // as before, in plaintext.
                tracing::info!(%addr, server_name, %reply, "STARTTLS refused; continuing in plaintext");
                trace.failed(
                    ResultType::StarttlsNotSupported,
                    format!("STARTTLS refused: {reply}"),
                );
            }
        } else if enforced {
            let why = "STARTTLS not offered, and TLS is required".to_string();
            trace.failed(ResultType::StarttlsNotSupported, why.clone());
            return Err(refuse(&mut conn, cfg, why).await);
        } else {
            trace.failed(ResultType::StarttlsNotSupported, "STARTTLS not offered");
        }
    }

    if let Some((user, pass)) = &cfg.auth {
        authenticate(&mut conn, &caps, cfg, user, pass).await?;
    }
    Ok((conn, caps))
}

/// Ends a session the server (or our policy) will not let us use.
async fn refuse(conn: &mut Connection, cfg: &ClientConfig, reason: String) -> Setup {
    let tls = conn.tls_version();
    conn.quit(cfg.timeouts.quit).await;
    Setup::Failed(reason, tls)
}

/// EHLO (HELO as the fallback). `Err` only when the connection failed;
/// `Ok(Err(reason))` when the server refused us.
async fn hello(
    conn: &mut Connection,
    cfg: &ClientConfig,
) -> Result<Result<Capabilities, String>, ConnError> {
    let t = &cfg.timeouts;
    let (reply, raw) = conn
        .command(&protocol::ehlo(&cfg.ehlo_name), t.command, "EHLO")
        .await?;
    if reply.is_positive() {
        return Ok(Ok(Capabilities::from_ehlo(&raw)));
    }
    if !reply.is_permanent() {
        return Ok(Err(format!("EHLO rejected: {reply}")));
    }
    // RFC 5321 4.1.4: a server that does not know EHLO gets HELO, and with
    // it no extensions.
    let (helo, _) = conn
        .command(&protocol::helo(&cfg.ehlo_name), t.command, "HELO")
        .await?;
    if helo.is_positive() {
        Ok(Ok(Capabilities::default()))
    } else {
        Ok(Err(format!("HELO rejected: {helo}")))
    }
}

async fn authenticate(
    conn: &mut Connection,
    caps: &Capabilities,
    cfg: &ClientConfig,
    user: &str,
    pass: &str,
) -> Result<(), Setup> {
    let t = &cfg.timeouts;
    if !conn.is_tls() && !conn.peer().ip().is_loopback() {
        let why = "not sending AUTH credentials over an unencrypted connection".to_string();
        return Err(refuse(conn, cfg, why).await);
    }
    let final_reply = if caps.auth_plain {
        conn.command(&protocol::auth_plain(user, pass), t.command, "AUTH PLAIN")
            .await?
            .0
    } else if caps.auth_login {
        let mut reply = conn
            .command(b"AUTH LOGIN\r\n", t.command, "AUTH LOGIN")
            .await?
            .0;
        for secret in [user, pass] {
            if reply.code != 334 {
                break;
            }
            reply = conn
                .command(&protocol::auth_login_line(secret), t.command, "AUTH LOGIN")
                .await?
                .0;
        }
        reply
    } else {
        let why = "credentials configured, but the server offers neither AUTH PLAIN nor LOGIN";
        return Err(refuse(conn, cfg, why.to_string()).await);
    };
    if final_reply.code == 235 {
        Ok(())
    } else {
        let why = format!("AUTH as {user:?} failed: {final_reply}");
        Err(refuse(conn, cfg, why).await)
    }
}
