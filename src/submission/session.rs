//! The SMTP submission session as a state machine over bytes (sans-IO).
//!
//! The driver feeds received bytes with [`Session::feed`] and writes what
//! [`Session::take_output`] returns. When the session needs something only
//! the driver can do (a TLS handshake, a password check, a durable commit),
//! `feed` stops and returns an [`Action`]; the driver does it, reports back
//! (`tls_started`, `auth_result`, `queued`), and feeds the rest. Commands are
//! parsed by smtp-proto; framing (lines, DATA, BDAT) is done here so that a
//! bad line can never desynchronise a pipelined stream of replies.

use super::budget::{DataBudget, Reservation};
use super::policy::{HeaderInfo, Identity, Policy};
use super::reply::Reply;
use base64::Engine;
use smtp_proto::request::receiver::{BdatReceiver, DataReceiver};
use smtp_proto::{Error as ProtoError, Request};
use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

/// Longest command or AUTH line accepted (RFC 5321 asks for 512; SASL
/// responses and parameters need more).
pub const MAX_LINE: usize = 4096;

#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub hostname: String,
    pub max_message_size: usize,
    pub max_recipients: usize,
    pub max_errors: u32,
    /// STARTTLS can be offered (a certificate is configured).
    pub starttls: bool,
    pub require_tls_for_auth: bool,
    /// Shared by every session of the server: message data held in RAM.
    pub data_budget: Arc<DataBudget>,
}

/// A message ready to be made durable.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub mail_from: String,
    pub recipients: Vec<String>,
    pub data: Vec<u8>,
    pub smtputf8: bool,
    pub identity: Identity,
    pub helo: String,
    pub header: HeaderInfo,
}

#[derive(Debug)]
pub enum Action {
    /// The 220 is in the output; flush it, drop any bytes the client sent
    /// after STARTTLS, do the handshake, then call `tls_started`.
    StartTls,
    /// Check these credentials, then call `auth_result`.
    Authenticate { username: String, password: String },
    /// Make this message durable, then call `queued`.
    Queue(Box<Envelope>),
    /// Look this recipient up in the suppression list (for mail from
    /// `sending_domain`), then call `recipient_checked`.
    CheckRecipient {
        address: String,
        sending_domain: String,
    },
    /// Flush the output and close the connection.
    Close,
}

/// What the suppression list says about a recipient at RCPT.
#[derive(Debug)]
pub enum RcptCheck {
    Clear,
    /// Suppressed, for this reason.
    Suppressed(String),
    /// The store did not answer.
    Unavailable,
    /// Refused with this reply (the inbound listener: not a local domain).
    Refused(Reply),
}

enum Mode {
    Command,
    /// Discarding the rest of an overlong line.
    SkipLine,
    AuthPlain,
    AuthLoginUser,
    AuthLoginPass {
        username: String,
    },
    Data {
        rx: DataReceiver,
    },
    Bdat {
        rx: BdatReceiver,
        /// Read and thrown away (no transaction, or the message is refused).
        discard: bool,
    },
}

/// Why a message being received will be refused once it has been read to
/// its end (RFC 5321 and RFC 3030 both read the rest before answering).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// Over `max_message_size`: permanent.
    TooBig,
    /// The shared in-flight budget has no room now: temporary.
    NoRoom,
}

struct Transaction {
    mail_from: String,
    smtputf8: bool,
    recipients: Vec<String>,
    data: Vec<u8>,
    /// What `data` holds of the shared budget.
    reservation: Reservation,
    refused: Option<Refusal>,
    /// A BDAT chunk was sent: DATA may no longer end this transaction.
    bdat_seen: bool,
}

impl Transaction {
    /// From now on the message is only read, not kept.
    fn refuse(&mut self, why: Refusal) {
        self.refused.get_or_insert(why);
        self.data = Vec::new();
        self.reservation.release();
    }

    /// Checks the data received so far against both limits.
    fn check_limits(&mut self, max: usize) {
        if self.refused.is_some() {
            return;
        }
        if self.data.len() > max {
            self.refuse(Refusal::TooBig);
        } else if !self.reservation.cover(self.data.len()) {
            self.refuse(Refusal::NoRoom);
        }
    }
}

pub struct Session {
    cfg: Arc<SessionConfig>,
    policy: Arc<Policy>,
    peer: IpAddr,
    tls: bool,
    trusted: bool,
    plaintext_auth_ok: bool,
    helo: Option<String>,
    identity: Option<Identity>,
    tx: Option<Transaction>,
    /// The budget held by a message handed to the driver, until `queued`.
    queuing: Option<Reservation>,
    mode: Mode,
    line: Vec<u8>,
    out: Vec<u8>,
    errors: u32,
    waiting: bool,
    closing: bool,
    reject_suppressed: bool,
    /// The recipient waiting for `recipient_checked`.
    checking: Option<String>,
    /// The return-path MX (src/inbound): see `set_inbound`.
    inbound: bool,
}

fn reply(out: &mut Vec<u8>, code: u16, status: &'static str, text: impl Into<String>) {
    Reply::new(code, status, text).write_to(out);
}

impl Session {
    pub fn new(
        cfg: Arc<SessionConfig>,
        policy: Arc<Policy>,
        peer: IpAddr,
        implicit_tls: bool,
    ) -> Self {
        let trusted = policy.is_trusted(peer);
        let plaintext_auth_ok = policy.plaintext_auth_allowed(peer);
        Session {
            cfg,
            policy,
            peer,
            tls: implicit_tls,
            trusted,
            plaintext_auth_ok,
            helo: None,
            identity: None,
            tx: None,
            queuing: None,
            mode: Mode::Command,
            line: Vec::new(),
            out: Vec::new(),
            errors: 0,
            waiting: false,
            closing: false,
            reject_suppressed: false,
            checking: None,
            inbound: false,
        }
    }

    /// The banner, sent once at connect (after the handshake on implicit TLS).
    pub fn greeting(&mut self) {
        let text = format!("{} ESMTP trackrelay", self.cfg.hostname);
        reply(&mut self.out, 220, "", text);
    }

    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// In the middle of a message (between MAIL and its final reply).
    pub fn in_transaction(&self) -> bool {
        self.tx.is_some() || matches!(self.mode, Mode::Data { .. } | Mode::Bdat { .. })
    }

    /// Reading message content (the data timeout applies, not the command one).
    pub fn in_data(&self) -> bool {
        matches!(self.mode, Mode::Data { .. } | Mode::Bdat { .. })
    }

    pub fn authenticated_user(&self) -> Option<&str> {
        self.identity.as_ref().and_then(Identity::user_name)
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Processes bytes until they are used up or an action is needed.
    /// Returns how many bytes were used; the driver feeds the rest after
    /// handling the action.
    pub fn feed(&mut self, input: &[u8]) -> (usize, Option<Action>) {
        let mut pos = 0;
        while pos < input.len() && !self.waiting && !self.closing {
            let rest = &input[pos..];
            let (used, action) = match self.mode {
                Mode::Data { .. } => self.feed_data(rest),
                Mode::Bdat { .. } => self.feed_bdat(rest),
                Mode::SkipLine => match rest.iter().position(|&b| b == b'\n') {
                    Some(p) => {
                        self.mode = Mode::Command;
                        (p + 1, None)
                    }
                    None => (rest.len(), None),
                },
                _ => self.feed_line(rest),
            };
            pos += used;
            if action.is_some() {
                return (pos, action);
            }
        }
        if self.closing {
            return (input.len(), Some(Action::Close));
        }
        (pos, None)
    }

    fn feed_line(&mut self, rest: &[u8]) -> (usize, Option<Action>) {
        match rest.iter().position(|&b| b == b'\n') {
            Some(p) if self.line.len() + p < MAX_LINE => {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(&rest[..=p]);
                let action = self.handle_line(&line);
                (p + 1, action)
            }
            Some(p) => {
                self.line.clear();
                self.line_too_long();
                (p + 1, None)
            }
            None => {
                if self.line.len() + rest.len() >= MAX_LINE {
                    self.line.clear();
                    self.line_too_long();
                    self.mode = Mode::SkipLine;
                } else {
                    self.line.extend_from_slice(rest);
                }
                (rest.len(), None)
            }
        }
    }

    fn line_too_long(&mut self) {
        if !matches!(self.mode, Mode::Command | Mode::SkipLine) {
            self.mode = Mode::Command;
        }
        self.error(500, "5.5.2", "Line too long");
    }

    /// A positive completion reply: the errors counted so far were not "in a
    /// row" (`max_errors`).
    fn ok(&mut self, code: u16, status: &'static str, text: impl Into<String>) {
        reply(&mut self.out, code, status, text);
        self.errors = 0;
    }

    /// A negative reply that counts towards `max_errors`.
    fn error(&mut self, code: u16, status: &'static str, text: impl Into<String>) {
        reply(&mut self.out, code, status, text);
        self.errors += 1;
        if self.errors >= self.cfg.max_errors {
            reply(
                &mut self.out,
                421,
                "4.7.0",
                format!("{} Too many errors, closing connection", self.cfg.hostname),
            );
            self.closing = true;
        }
    }

    fn handle_line(&mut self, line: &[u8]) -> Option<Action> {
        match std::mem::replace(&mut self.mode, Mode::Command) {
            Mode::AuthPlain => self.auth_plain_response(trim_crlf(line)),
            Mode::AuthLoginUser => self.auth_login_user(trim_crlf(line)),
            Mode::AuthLoginPass { username } => self.auth_login_pass(username, trim_crlf(line)),
            _ => self.command(line),
        }
    }

    fn command(&mut self, line: &[u8]) -> Option<Action> {
        let parsed = Request::parse(&mut line.iter());
        let request = match parsed {
            Ok(r) => r,
            Err(e) => {
                self.protocol_error(e, line);
                return None;
            }
        };
        match request {
            Request::Ehlo { host } => self.hello(host, true),
            Request::Helo { host } => self.hello(host, false),
            Request::Lhlo { .. } => self.error(500, "5.5.1", "LHLO is for LMTP; this is SMTP"),
            Request::StartTls => return self.starttls(),
            Request::Auth { .. } if self.inbound => self.error(
                502,
                "5.5.1",
                "AUTH is not available here: this server only receives bounces and feedback for its return-path domains",
            ),
            Request::Auth {
                mechanism,
                initial_response,
            } => return self.auth(mechanism, initial_response),
            Request::Mail { from } => self.mail(from),
            Request::Rcpt { to } => return self.rcpt(to),
            Request::Data => self.data(),
            Request::Bdat {
                chunk_size,
                is_last,
            } => return self.bdat(chunk_size, is_last),
            Request::Rset => {
                self.tx = None;
                self.ok(250, "2.0.0", "Ok");
            }
            Request::Noop { .. } => self.ok(250, "2.0.0", "Ok"),
            Request::Vrfy { .. } => self.ok(
                252,
                "2.5.0",
                "Cannot VRFY user, but will accept the message and attempt delivery",
            ),
            Request::Help { .. } if self.inbound => self.ok(
                214,
                "2.0.0",
                "trackrelay return-path MX: EHLO, STARTTLS, MAIL, RCPT, DATA, BDAT, RSET, NOOP, QUIT",
            ),
            Request::Help { .. } => self.ok(
                214,
                "2.0.0",
                "trackrelay submission: EHLO, STARTTLS, AUTH, MAIL, RCPT, DATA, BDAT, RSET, NOOP, QUIT",
            ),
            Request::Quit => {
                reply(&mut self.out, 221, "2.0.0", "Bye");
                self.closing = true;
                return Some(Action::Close);
            }
            Request::Expn { .. } | Request::Etrn { .. } | Request::Atrn { .. } | Request::Burl { .. } => {
                self.error(502, "5.5.1", "Command not implemented")
            }
        }
        None
    }

    fn protocol_error(&mut self, e: ProtoError, line: &[u8]) {
        match e {
            ProtoError::UnknownCommand => self.error(500, "5.5.1", "Command unrecognized"),
            ProtoError::InvalidSenderAddress => {
                self.error(501, "5.1.7", "Bad sender address syntax")
            }
            ProtoError::InvalidRecipientAddress => {
                self.error(501, "5.1.3", "Bad recipient address syntax")
            }
            ProtoError::SyntaxError { syntax } => {
                self.error(501, "5.5.4", format!("Syntax: {syntax}"))
            }
            ProtoError::InvalidParameter { param } => {
                self.error(501, "5.5.4", format!("Invalid parameter {param}"))
            }
            ProtoError::UnsupportedParameter { param } => {
                self.error(555, "5.5.4", format!("Unsupported parameter {param}"))
            }
            ProtoError::ResponseTooLong => self.error(500, "5.5.2", "Line too long"),
            ProtoError::NeedsMoreData { .. } if !line.ends_with(b"\n") => {
                self.error(500, "5.5.2", "Incomplete command")
            }
            _ => self.error(500, "5.5.2", "Syntax error"),
        }
    }

    fn hello(&mut self, host: Cow<'_, str>, extended: bool) {
        if host.is_empty() {
            self.error(501, "5.5.4", "Syntax: EHLO hostname");
            return;
        }
        // The name goes into the Received: header; no host name has these.
        if host.chars().any(char::is_control) {
            self.error(
                501,
                "5.5.4",
                "Syntax: EHLO hostname (control characters are not allowed)",
            );
            return;
        }
        self.helo = Some(host.into_owned());
        self.tx = None;
        let name = self.cfg.hostname.clone();
        if !extended {
            self.ok(250, "", format!("{name} Hello"));
            return;
        }
        let mut lines = vec![
            format!("{name} Hello {}", self.peer),
            "PIPELINING".to_string(),
            format!("SIZE {}", self.cfg.max_message_size),
            "8BITMIME".into(),
            "SMTPUTF8".into(),
            "ENHANCEDSTATUSCODES".into(),
            "CHUNKING".into(),
        ];
        if self.cfg.starttls && !self.tls {
            lines.push("STARTTLS".into());
        }
        if !self.inbound && self.auth_allowed_here() && self.identity.is_none() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        self.ok(250, "", lines.join("\n"));
    }

    fn auth_allowed_here(&self) -> bool {
        self.tls || !self.cfg.require_tls_for_auth || self.plaintext_auth_ok
    }

    fn starttls(&mut self) -> Option<Action> {
        if self.tls {
            self.error(503, "5.5.1", "Already using TLS");
            return None;
        }
        if !self.cfg.starttls {
            self.error(454, "4.7.0", "TLS not available");
            return None;
        }
        reply(&mut self.out, 220, "2.0.0", "Ready to start TLS");
        self.waiting = true;
        Some(Action::StartTls)
    }

    /// After the handshake: RFC 3207 says to forget everything learnt before it.
    pub fn tls_started(&mut self) {
        self.waiting = false;
        self.tls = true;
        self.helo = None;
        self.identity = None;
        self.tx = None;
        self.line.clear();
        self.mode = Mode::Command;
    }

    fn auth(&mut self, mechanism: u64, initial: Cow<'_, str>) -> Option<Action> {
        if self.helo.is_none() {
            self.error(503, "5.5.1", "Send EHLO first");
            return None;
        }
        if self.identity.is_some() {
            self.error(503, "5.5.1", "Already authenticated");
            return None;
        }
        if self.tx.is_some() {
            self.error(
                503,
                "5.5.1",
                "AUTH is not allowed during a mail transaction",
            );
            return None;
        }
        if !self.auth_allowed_here() {
            self.error(
                538,
                "5.7.11",
                "Encryption required for requested authentication mechanism: use STARTTLS first",
            );
            return None;
        }
        match mechanism {
            smtp_proto::AUTH_PLAIN => {
                if initial.is_empty() {
                    reply(&mut self.out, 334, "", "");
                    self.mode = Mode::AuthPlain;
                    None
                } else {
                    self.auth_plain_response(initial.as_bytes())
                }
            }
            smtp_proto::AUTH_LOGIN => {
                if initial.is_empty() {
                    reply(&mut self.out, 334, "", "VXNlcm5hbWU6");
                    self.mode = Mode::AuthLoginUser;
                    None
                } else {
                    self.auth_login_user(initial.as_bytes())
                }
            }
            _ => {
                self.error(
                    504,
                    "5.5.4",
                    "Unrecognized authentication type (PLAIN and LOGIN are offered)",
                );
                None
            }
        }
    }

    fn decode_auth(&mut self, line: &[u8]) -> Option<Vec<u8>> {
        if line == b"*" {
            self.error(501, "5.0.0", "Authentication cancelled");
            return None;
        }
        if line == b"=" {
            return Some(Vec::new());
        }
        match base64::engine::general_purpose::STANDARD.decode(line) {
            Ok(v) => Some(v),
            Err(_) => {
                self.error(
                    501,
                    "5.5.2",
                    "Cannot decode the authentication response (base64 expected)",
                );
                None
            }
        }
    }

    fn auth_plain_response(&mut self, line: &[u8]) -> Option<Action> {
        let decoded = self.decode_auth(line)?;
        let mut parts = decoded.split(|&b| b == 0);
        let (authz, authc, pass) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(z), Some(c), Some(p), None) => (z, c, p),
            _ => {
                self.error(501, "5.5.2", "Malformed AUTH PLAIN response");
                return None;
            }
        };
        if !authz.is_empty() && authz != authc {
            self.error(535, "5.7.8", "Authentication credentials invalid");
            return None;
        }
        match (std::str::from_utf8(authc), std::str::from_utf8(pass)) {
            (Ok(u), Ok(p)) => self.authenticate(u.to_string(), p.to_string()),
            _ => {
                self.error(535, "5.7.8", "Authentication credentials invalid");
                None
            }
        }
    }

    fn auth_login_user(&mut self, line: &[u8]) -> Option<Action> {
        let decoded = self.decode_auth(line)?;
        match String::from_utf8(decoded) {
            Ok(username) => {
                reply(&mut self.out, 334, "", "UGFzc3dvcmQ6");
                self.mode = Mode::AuthLoginPass { username };
            }
            Err(_) => self.error(535, "5.7.8", "Authentication credentials invalid"),
        }
        None
    }

    fn auth_login_pass(&mut self, username: String, line: &[u8]) -> Option<Action> {
        let decoded = self.decode_auth(line)?;
        match String::from_utf8(decoded) {
            Ok(password) => self.authenticate(username, password),
            Err(_) => {
                self.error(535, "5.7.8", "Authentication credentials invalid");
                None
            }
        }
    }

    fn authenticate(&mut self, username: String, password: String) -> Option<Action> {
        self.waiting = true;
        Some(Action::Authenticate { username, password })
    }

    /// The driver's verdict on the credentials of `Action::Authenticate`.
    pub fn auth_result(&mut self, user: Option<String>) {
        self.waiting = false;
        match user {
            Some(name) => {
                self.identity = Some(Identity::User(name));
                self.ok(235, "2.7.0", "Authentication successful");
            }
            None => self.error(535, "5.7.8", "Authentication credentials invalid"),
        }
    }

    /// AUTH refused unchecked: too many recent failures (the throttle).
    pub fn auth_throttled(&mut self) {
        self.waiting = false;
        self.error(
            454,
            "4.7.0",
            "Too many failed authentication attempts, try again later",
        );
    }

    fn who(&self) -> Option<Identity> {
        match &self.identity {
            // Anyone may hand the MX a report; each RCPT is checked instead.
            None if self.inbound => Some(Identity::Trusted),
            Some(i) => Some(i.clone()),
            None if self.trusted => Some(Identity::Trusted),
            None => None,
        }
    }

    fn mail(&mut self, from: smtp_proto::MailFrom<Cow<'_, str>>) {
        if self.helo.is_none() {
            return self.error(503, "5.5.1", "Send EHLO first");
        }
        if self.tx.is_some() {
            return self.error(503, "5.5.1", "Nested MAIL command");
        }
        let Some(identity) = self.who() else {
            return self.error(530, "5.7.0", "Authentication required");
        };
        if from.size > self.cfg.max_message_size {
            return self.error(
                552,
                "5.3.4",
                format!(
                    "Message size exceeds fixed limit of {} bytes",
                    self.cfg.max_message_size
                ),
            );
        }
        if from.flags & smtp_proto::MAIL_BODY_BINARYMIME != 0 {
            return self.error(555, "5.5.4", "BODY=BINARYMIME is not supported");
        }
        let smtputf8 = from.flags & smtp_proto::MAIL_SMTPUTF8 != 0;
        let address = from.address.into_owned();
        if !address.is_ascii() && !smtputf8 {
            return self.error(
                553,
                "5.6.7",
                "Non-ASCII sender address needs the SMTPUTF8 parameter",
            );
        }
        // The return path accepts any sender, including the null one `<>`.
        if !self.inbound {
            if let Err(r) = self.policy.check_mail_from(&identity, &address) {
                return self.error(r.code, r.status, r.text);
            }
        }
        self.tx = Some(Transaction {
            mail_from: address,
            smtputf8,
            recipients: Vec::new(),
            data: Vec::new(),
            reservation: Reservation::new(&self.cfg.data_budget),
            refused: None,
            bdat_seen: false,
        });
        self.ok(250, "2.1.0", "Sender ok");
    }

    fn rcpt(&mut self, to: smtp_proto::RcptTo<Cow<'_, str>>) -> Option<Action> {
        if self.who().is_none() {
            self.error(530, "5.7.0", "Authentication required");
            return None;
        }
        let max = self.cfg.max_recipients;
        let Some(tx) = self.tx.as_mut() else {
            self.error(503, "5.5.1", "Need MAIL before RCPT");
            return None;
        };
        let address = to.address.into_owned();
        if !valid_recipient(&address) {
            self.error(
                501,
                "5.1.3",
                format!("Bad recipient address syntax: <{address}>"),
            );
            return None;
        }
        if !address.is_ascii() && !tx.smtputf8 {
            self.error(
                553,
                "5.6.7",
                "Non-ASCII recipient address needs SMTPUTF8 on MAIL FROM",
            );
            return None;
        }
        if tx
            .recipients
            .iter()
            .any(|r| r.eq_ignore_ascii_case(&address))
        {
            self.ok(250, "2.1.5", "Recipient ok (duplicate, sent once)");
            return None;
        }
        if tx.recipients.len() >= max {
            reply(
                &mut self.out,
                452,
                "4.5.3",
                format!("Too many recipients (at most {max} per message)"),
            );
            return None;
        }
        if self.reject_suppressed || self.inbound {
            let sending_domain = tx
                .mail_from
                .rsplit_once('@')
                .map(|(_, d)| d.to_ascii_lowercase())
                .unwrap_or_default();
            self.waiting = true;
            self.checking = Some(address.clone());
            return Some(Action::CheckRecipient {
                address,
                sending_domain,
            });
        }
        tx.recipients.push(address);
        self.ok(250, "2.1.5", "Recipient ok");
        None
    }

    /// With `reject_suppressed`, every RCPT waits for the driver to look
    /// the address up (`Action::CheckRecipient`, then `recipient_checked`).
    pub fn set_reject_suppressed(&mut self, on: bool) {
        self.reject_suppressed = on;
    }

    /// The return-path MX: no AUTH (refused, not advertised), any sender,
    /// no From: policy, and every RCPT decided by the driver through
    /// `Action::CheckRecipient`.
    pub fn set_inbound(&mut self) {
        self.inbound = true;
    }

    /// The driver's answer to `Action::CheckRecipient`.
    pub fn recipient_checked(&mut self, check: RcptCheck) {
        self.waiting = false;
        let Some(address) = self.checking.take() else {
            return;
        };
        match check {
            RcptCheck::Clear => match self.tx.as_mut() {
                Some(tx) => {
                    tx.recipients.push(address);
                    self.ok(250, "2.1.5", "Recipient ok");
                }
                None => self.error(503, "5.5.1", "Need MAIL before RCPT"),
            },
            // The application asked for the refusal: not the client's
            // error, so not counted towards max_errors.
            RcptCheck::Suppressed(reason) => reply(
                &mut self.out,
                550,
                "5.1.1",
                format!("<{address}> is on the suppression list ({reason})"),
            ),
            RcptCheck::Unavailable => reply(
                &mut self.out,
                451,
                "4.3.0",
                "Cannot check the suppression list now, try again later",
            ),
            RcptCheck::Refused(r) => self.error(r.code, r.status, r.text),
        }
    }

    fn data(&mut self) {
        match &self.tx {
            None => self.error(503, "5.5.1", "Need MAIL and RCPT before DATA"),
            Some(tx) if tx.recipients.is_empty() => self.error(554, "5.5.1", "No valid recipients"),
            // RFC 3030: a message started with BDAT ends with BDAT LAST.
            Some(tx) if tx.bdat_seen => self.error(
                503,
                "5.5.1",
                "DATA cannot follow BDAT in the same transaction: end it with BDAT LAST, or RSET",
            ),
            Some(_) => {
                let mut rx = DataReceiver::new();
                // The receiver recognises "." only after a CRLF; the line
                // that opens DATA counts as one, so an empty message or a
                // dot-stuffed first line is read right.
                let mut primer = Vec::new();
                rx.ingest(&mut b"\r\n".iter(), &mut primer);
                self.mode = Mode::Data { rx };
                reply(&mut self.out, 354, "", "End data with <CR><LF>.<CR><LF>");
            }
        }
    }

    fn feed_data(&mut self, input: &[u8]) -> (usize, Option<Action>) {
        let max = self.cfg.max_message_size;
        let Mode::Data { rx } = &mut self.mode else {
            return (0, None);
        };
        let Some(tx) = self.tx.as_mut() else {
            self.mode = Mode::Command;
            return (0, None);
        };
        let mut iter = input.iter();
        let done = if tx.refused.is_some() {
            rx.ingest(&mut iter, &mut Vec::new())
        } else {
            // One growth per read rather than a doubling every few KB of a
            // byte-at-a-time push (bounded by what arrived, so no guess).
            tx.data.reserve(input.len());
            let done = rx.ingest(&mut iter, &mut tx.data);
            tx.check_limits(max);
            done
        };
        let used = input.len() - iter.as_slice().len();
        if !done {
            return (used, None);
        }
        self.mode = Mode::Command;
        (used, self.finish_message())
    }

    fn bdat(&mut self, size: usize, last: bool) -> Option<Action> {
        let max = self.cfg.max_message_size;
        let rx = BdatReceiver::new(size, last);
        let discard = match self.tx.as_mut() {
            Some(tx) if !tx.recipients.is_empty() => {
                tx.bdat_seen = true;
                let total = tx.data.len().saturating_add(size);
                if tx.refused.is_none() && total > max {
                    tx.refuse(Refusal::TooBig);
                } else if tx.refused.is_none() && !tx.reservation.cover(total) {
                    tx.refuse(Refusal::NoRoom);
                }
                tx.refused.is_some()
            }
            _ => true,
        };
        self.mode = Mode::Bdat { rx, discard };
        if size == 0 {
            // A zero-length chunk (typically `BDAT 0 LAST`) has no bytes to wait for.
            return self.feed_bdat(&[]).1;
        }
        None
    }

    fn feed_bdat(&mut self, input: &[u8]) -> (usize, Option<Action>) {
        let Mode::Bdat { rx, discard } = &mut self.mode else {
            return (0, None);
        };
        let discard = *discard;
        let mut iter = input.iter();
        let done = match self.tx.as_mut() {
            Some(tx) if !discard => rx.ingest(&mut iter, &mut tx.data),
            _ => rx.ingest(&mut iter, &mut Vec::new()),
        };
        let used = input.len() - iter.as_slice().len();
        if !done {
            return (used, None);
        }
        let last = rx.is_last;
        self.mode = Mode::Command;
        let Some(tx) = self.tx.as_ref() else {
            self.error(503, "5.5.1", "Need MAIL and RCPT before BDAT");
            return (used, None);
        };
        if tx.recipients.is_empty() {
            self.tx = None;
            self.error(554, "5.5.1", "No valid recipients");
            return (used, None);
        }
        if last {
            return (used, self.finish_message());
        }
        match tx.refused {
            Some(why) => self.refuse(why),
            None => {
                let n = tx.data.len();
                self.ok(250, "2.0.0", format!("{n} octets received"));
            }
        }
        (used, None)
    }

    fn refuse(&mut self, why: Refusal) {
        match why {
            Refusal::TooBig => self.error(
                552,
                "5.3.4",
                format!(
                    "Message size exceeds fixed limit of {} bytes",
                    self.cfg.max_message_size
                ),
            ),
            // Not the client's doing, so not counted towards max_errors.
            Refusal::NoRoom => reply(
                &mut self.out,
                452,
                "4.3.1",
                "Insufficient system storage: the relay is receiving too much mail at once; please try again later",
            ),
        }
    }

    fn finish_message(&mut self) -> Option<Action> {
        let tx = self.tx.take()?;
        if let Some(why) = tx.refused {
            self.refuse(why);
            return None;
        }
        let Some(identity) = self.who() else {
            self.error(530, "5.7.0", "Authentication required");
            return None;
        };
        let header = if self.inbound {
            HeaderInfo::default()
        } else {
            match self
                .policy
                .check_header_from(&identity, &tx.data, tx.smtputf8)
            {
                Ok(h) => h,
                Err(r) => {
                    self.error(r.code, r.status, r.text);
                    return None;
                }
            }
        };
        self.waiting = true;
        self.queuing = Some(tx.reservation);
        Some(Action::Queue(Box::new(Envelope {
            mail_from: tx.mail_from,
            recipients: tx.recipients,
            data: tx.data,
            smtputf8: tx.smtputf8,
            identity,
            helo: self.helo.clone().unwrap_or_default(),
            header,
        })))
    }

    /// The driver's result for `Action::Queue`: the email id once durable,
    /// or the reason it is not.
    pub fn queued(&mut self, result: Result<String, String>) {
        self.waiting = false;
        // The driver has stored (or dropped) its copy of the data by now.
        self.queuing = None;
        match result {
            Ok(id) if self.inbound => self.ok(250, "2.0.0", format!("Ok: stored as report {id}")),
            Ok(id) => self.ok(250, "2.0.0", format!("Ok: queued as {id}")),
            Err(why) => reply(
                &mut self.out,
                451,
                "4.3.0",
                format!("Temporary failure storing the message ({why}); please try again later"),
            ),
        }
    }

    /// Said when the server shuts down or a timeout fires.
    pub fn close_with(&mut self, code: u16, status: &'static str, text: &str) {
        reply(
            &mut self.out,
            code,
            status,
            format!("{} {text}", self.cfg.hostname),
        );
        self.closing = true;
    }
}

fn trim_crlf(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// `local@domain` with a plausible domain (or address literal).
fn valid_recipient(address: &str) -> bool {
    let Some((local, domain)) = address.rsplit_once('@') else {
        return false;
    };
    if local.is_empty() || address.len() > 254 {
        return false;
    }
    if domain.starts_with('[') && domain.ends_with(']') {
        return true;
    }
    !domain.is_empty()
        && domain.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_alphanumeric() || c == '-')
        })
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
