//! A test MX: a real SMTP server on 127.0.0.1, built on smtp-proto's
//! `RequestReceiver`/`DataReceiver`, with real TLS (rcgen self-signed cert).
//!
//! Use from an integration test with `#[path = "support/mx.rs"] mod mx;`
//! (or `mod support;` and `support::mx`). Everything is configured through
//! [`MxConfig`]; what arrived is read back with [`TestMx::received`] and
//! [`TestMx::connections`].
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use smtp_proto::request::receiver::{DataReceiver, RequestReceiver};
use smtp_proto::Request;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// How a "broken TLS" server fails after answering 220 to STARTTLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokenTls {
    /// Closes the connection instead of handshaking.
    Close,
    /// Answers the ClientHello with bytes that are not TLS, then closes.
    Garbage,
}

/// A scripted reply for one recipient: `reply` (e.g. "451 4.7.1 later")
/// the first `times` times (`None`: always), then the normal answer.
#[derive(Debug, Clone)]
pub struct Script {
    pub reply: String,
    pub times: Option<usize>,
    /// Answer at the end of DATA instead of at RCPT.
    pub at_data: bool,
}

impl Script {
    pub fn always(reply: &str) -> Self {
        Script {
            reply: reply.into(),
            times: None,
            at_data: false,
        }
    }

    pub fn first(times: usize, reply: &str) -> Self {
        Script {
            reply: reply.into(),
            times: Some(times),
            at_data: false,
        }
    }

    pub fn at_data(mut self) -> Self {
        self.at_data = true;
        self
    }
}

#[derive(Debug, Clone)]
pub struct MxConfig {
    pub hostname: String,
    pub starttls: bool,
    /// TLS from the first byte (port 465 style).
    pub implicit_tls: bool,
    /// Advertise STARTTLS, answer 220, then fail the handshake.
    pub broken_tls: Option<BrokenTls>,
    /// Advertise STARTTLS but answer it with this reply (e.g. "454 ...").
    pub starttls_refusal: Option<String>,
    /// Offer only TLS 1.2 (to see the version reported).
    pub tls12_only: bool,
    pub pipelining: bool,
    pub smtputf8: bool,
    pub eight_bit_mime: bool,
    pub size_limit: Option<usize>,
    /// Require AUTH with these credentials before MAIL.
    pub auth: Option<(String, String)>,
    /// Mechanisms advertised when `auth` is set.
    pub auth_mechanisms: String,
    /// Advertise AUTH before TLS too (normally only after).
    pub auth_without_tls: bool,
    /// Keyed by lowercased recipient.
    pub scripts: HashMap<String, Script>,
    /// Close the connection halfway through the first DATA it receives.
    pub drop_mid_data_once: bool,
    /// Stop answering halfway through the first DATA it receives and hold
    /// the connection open (a delivery caught in flight).
    pub stall_mid_data_once: bool,
    /// Answer EHLO with 502, like a pre-ESMTP server (HELO still works).
    pub reject_ehlo: bool,
    /// Replaces "220 {hostname} ESMTP".
    pub greeting: Option<String>,
    /// Store message bytes (off: a sink that only counts).
    pub keep_data: bool,
    /// Record command lines in [`ConnLog::commands`] (off for long runs).
    pub log_commands: bool,
    /// Time taken over each message before its final reply (a slow MX).
    pub data_delay: Option<std::time::Duration>,
    /// Hold the final reply to each of the first N messages until the
    /// client's next command line has arrived: only a client pipelining
    /// past the end of data (RFC 2920) gets its replies; one waiting in
    /// lockstep runs into its timeout.
    pub hold_data_reply: usize,
    /// Keep each connection waiting before its greeting until
    /// [`TestMx::release_greetings`]: the client has connected, and sends
    /// nothing yet.
    pub hold_greetings: bool,
    /// The certificate chain and key (PEM) to present; a fresh self-signed
    /// one for `hostname` otherwise.
    pub certificate: Option<(String, String)>,
}

impl Default for MxConfig {
    fn default() -> Self {
        MxConfig {
            hostname: "mx.test".into(),
            starttls: true,
            implicit_tls: false,
            broken_tls: None,
            starttls_refusal: None,
            tls12_only: false,
            pipelining: true,
            smtputf8: true,
            eight_bit_mime: true,
            size_limit: None,
            auth: None,
            auth_mechanisms: "PLAIN LOGIN".into(),
            auth_without_tls: false,
            scripts: HashMap::new(),
            drop_mid_data_once: false,
            stall_mid_data_once: false,
            reject_ehlo: false,
            greeting: None,
            keep_data: true,
            log_commands: true,
            hold_data_reply: 0,
            hold_greetings: false,
            data_delay: None,
            certificate: None,
        }
    }
}

impl MxConfig {
    pub fn script(mut self, rcpt: &str, script: Script) -> Self {
        self.scripts.insert(rcpt.to_ascii_lowercase(), script);
        self
    }
}

/// One accepted message.
#[derive(Debug, Clone)]
pub struct Received {
    pub connection: usize,
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// Exactly the bytes between DATA and the final ".", un-stuffed.
    pub data: Vec<u8>,
    pub len: usize,
    /// "TLSv1.3" etc.
    pub tls: Option<String>,
    pub auth_user: Option<String>,
    /// MAIL arrived together with the commands after it.
    pub pipelined: bool,
    pub smtputf8: bool,
    pub body_8bitmime: bool,
    pub size_param: Option<usize>,
}

/// One connection's story.
#[derive(Debug, Clone, Default)]
pub struct ConnLog {
    pub id: usize,
    /// Command lines as received (AUTH secrets replaced by "***").
    pub commands: Vec<String>,
    pub tls: Option<String>,
    pub sni: Option<String>,
    pub tls_failed: bool,
}

#[derive(Default)]
struct State {
    received: Vec<Received>,
    conns: Vec<ConnLog>,
    script_uses: HashMap<String, usize>,
    dropped_once: bool,
    stalled_once: bool,
    /// Final replies held so far by `hold_data_reply`.
    held: usize,
    /// Connections currently held by `stall_mid_data_once`.
    stalled: usize,
    /// Connections currently held by `hold_greetings`.
    at_greeting: usize,
}

pub struct TestMx {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    greetings: Arc<tokio::sync::watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestMx {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

impl TestMx {
    pub async fn start(cfg: MxConfig) -> TestMx {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::serve(cfg, listener)
    }

    /// On a given address, e.g. another loopback address on the port of
    /// a first server, so two MX hosts share `delivery.mx_port`.
    pub async fn start_on(cfg: MxConfig, addr: SocketAddr) -> std::io::Result<TestMx> {
        Ok(Self::serve(cfg, TcpListener::bind(addr).await?))
    }

    fn serve(cfg: MxConfig, listener: TcpListener) -> TestMx {
        let addr = listener.local_addr().expect("local addr");
        let acceptor = tls_acceptor(&cfg);
        let state = Arc::new(Mutex::new(State::default()));
        let greetings = Arc::new(tokio::sync::watch::Sender::new(!cfg.hold_greetings));
        let cfg = Arc::new(cfg);
        let task = {
            let state = state.clone();
            let greetings = greetings.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let id = {
                        let mut s = lock(&state);
                        let id = s.conns.len();
                        s.conns.push(ConnLog {
                            id,
                            ..Default::default()
                        });
                        id
                    };
                    let session = Session {
                        io: None,
                        buf: Vec::new(),
                        id,
                        cfg: cfg.clone(),
                        state: state.clone(),
                        acceptor: acceptor.clone(),
                        greetings: greetings.subscribe(),
                        tls: None,
                        helo: false,
                        auth_user: None,
                        tx: None,
                    };
                    tokio::spawn(session.run(tcp));
                }
            })
        };
        TestMx {
            addr,
            state,
            greetings,
            task,
        }
    }

    /// Lets every connection held by `hold_greetings` (and every later
    /// one) have its greeting.
    pub fn release_greetings(&self) {
        self.greetings.send_replace(true);
    }

    /// Connections waiting for their greeting (`hold_greetings`).
    pub fn waiting_for_greeting(&self) -> usize {
        lock(&self.state).at_greeting
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many copies arrived of each trackrelay email, by the email id in
    /// trackrelay's Received: header (`id <email id>;`).
    pub fn copies_by_email_id(&self) -> std::collections::HashMap<String, usize> {
        let mut seen = std::collections::HashMap::new();
        for r in self.received() {
            let text = String::from_utf8_lossy(&r.data);
            if let Some(id) = text.split("\tid ").nth(1).and_then(|t| t.split(';').next()) {
                *seen.entry(id.to_string()).or_default() += 1;
            }
        }
        seen
    }

    /// Waits until a copy of every email in `ids` has arrived (panicking
    /// after `timeout`), then returns how many arrived beyond one each.
    pub fn wait_each_delivered(&self, ids: &[String], timeout: std::time::Duration) -> usize {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let seen = self.copies_by_email_id();
            let missing = ids.iter().filter(|id| !seen.contains_key(*id)).count();
            if missing == 0 {
                return ids.iter().map(|id| seen[id] - 1).sum();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{missing} of {} acknowledged emails never reached the MX",
                ids.len()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    pub fn received(&self) -> Vec<Received> {
        lock(&self.state).received.clone()
    }

    pub fn connections(&self) -> Vec<ConnLog> {
        lock(&self.state).conns.clone()
    }

    /// Connections held open mid-DATA by `stall_mid_data_once`.
    pub fn stalled(&self) -> usize {
        lock(&self.state).stalled
    }

    pub fn message_count(&self) -> usize {
        lock(&self.state).received.len()
    }

    /// Waits until `n` messages have been accepted; false on timeout.
    pub async fn wait_for(&self, n: usize, timeout: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.message_count() < n {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        true
    }

    /// Every command line received, over all connections.
    pub fn commands(&self) -> Vec<String> {
        lock(&self.state)
            .conns
            .iter()
            .flat_map(|c| c.commands.clone())
            .collect()
    }
}

fn tls_acceptor(cfg: &MxConfig) -> TlsAcceptor {
    let (chain, key) = match &cfg.certificate {
        Some((chain, key)) => (
            rustls_pemfile::certs(&mut chain.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("certificate PEM"),
            rustls_pemfile::private_key(&mut key.as_bytes())
                .expect("key PEM")
                .expect("a key"),
        ),
        None => {
            let cert =
                rcgen::generate_simple_self_signed(vec![cfg.hostname.clone()]).expect("rcgen");
            let chain = vec![CertificateDer::from(cert.cert.der().to_vec())];
            let key =
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
            (chain, key)
        }
    };
    let versions: &[&rustls::SupportedProtocolVersion] = if cfg.tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(versions)
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("cert");
    TlsAcceptor::from(Arc::new(config))
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Tx {
    mail_from: String,
    smtputf8: bool,
    body_8bitmime: bool,
    size_param: Option<usize>,
    pipelined: bool,
    rcpts: Vec<String>,
}

struct Session {
    io: Option<Box<dyn Io>>,
    buf: Vec<u8>,
    id: usize,
    cfg: Arc<MxConfig>,
    state: Arc<Mutex<State>>,
    acceptor: TlsAcceptor,
    greetings: tokio::sync::watch::Receiver<bool>,
    tls: Option<String>,
    helo: bool,
    auth_user: Option<String>,
    tx: Option<Tx>,
}

/// The session ends (connection closed) when a step returns this.
struct Closed;

impl Session {
    async fn run(mut self, tcp: TcpStream) {
        let _ = tcp.set_nodelay(true);
        if !*self.greetings.borrow() {
            lock(&self.state).at_greeting += 1;
            let released = self.greetings.wait_for(|open| *open).await.is_ok();
            lock(&self.state).at_greeting -= 1;
            if !released {
                return;
            }
        }
        if self.cfg.implicit_tls {
            if self.handshake(Box::new(tcp)).await.is_err() {
                return;
            }
        } else {
            self.io = Some(Box::new(tcp));
        }
        let greeting = self
            .cfg
            .greeting
            .clone()
            .unwrap_or_else(|| format!("220 {} ESMTP test MX", self.cfg.hostname));
        if self.reply(&greeting).await.is_err() || !greeting.starts_with('2') {
            return;
        }
        while let Ok(Some(line)) = self.read_line().await {
            if self.command(line).await.is_err() {
                return;
            }
        }
    }

    fn log(&self, f: impl FnOnce(&mut ConnLog)) {
        let mut s = lock(&self.state);
        if let Some(c) = s.conns.get_mut(self.id) {
            f(c);
        }
    }

    async fn read_more(&mut self) -> Result<usize, Closed> {
        let mut chunk = [0u8; 16384];
        let io = self.io.as_mut().ok_or(Closed)?;
        match io.read(&mut chunk).await {
            Ok(0) | Err(_) => Err(Closed),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(n)
            }
        }
    }

    async fn read_line(&mut self) -> Result<Option<Vec<u8>>, Closed> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                return Ok(Some(self.buf.drain(..=pos).collect()));
            }
            if self.buf.len() > 8192 {
                return Err(Closed);
            }
            if self.read_more().await.is_err() {
                return Ok(None);
            }
        }
    }

    async fn reply(&mut self, text: &str) -> Result<(), Closed> {
        let io = self.io.as_mut().ok_or(Closed)?;
        let mut bytes = text.as_bytes().to_vec();
        bytes.extend_from_slice(b"\r\n");
        io.write_all(&bytes).await.map_err(|_| Closed)?;
        io.flush().await.map_err(|_| Closed)
    }

    async fn close(&mut self) -> Closed {
        if let Some(mut io) = self.io.take() {
            let _ = io.shutdown().await;
        }
        Closed
    }

    async fn handshake(&mut self, io: Box<dyn Io>) -> Result<(), Closed> {
        match self.acceptor.accept(io).await {
            Ok(stream) => {
                let conn = stream.get_ref().1;
                let version = match conn.protocol_version() {
                    Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
                    Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
                    other => format!("{other:?}"),
                };
                let sni = conn.server_name().map(str::to_string);
                self.log(|c| {
                    c.tls = Some(version.clone());
                    c.sni = sni;
                });
                self.tls = Some(version);
                self.io = Some(Box::new(stream));
                Ok(())
            }
            Err(_) => {
                self.log(|c| c.tls_failed = true);
                Err(Closed)
            }
        }
    }

    fn ehlo_lines(&self) -> Vec<String> {
        let cfg = &self.cfg;
        let mut ext = Vec::new();
        if cfg.pipelining {
            ext.push("PIPELINING".to_string());
        }
        if let Some(limit) = cfg.size_limit {
            ext.push(format!("SIZE {limit}"));
        }
        if cfg.eight_bit_mime {
            ext.push("8BITMIME".into());
        }
        if cfg.smtputf8 {
            ext.push("SMTPUTF8".into());
        }
        ext.push("ENHANCEDSTATUSCODES".into());
        if self.tls.is_none() && self.offers_starttls() {
            ext.push("STARTTLS".into());
        }
        if cfg.auth.is_some() && (self.tls.is_some() || cfg.auth_without_tls) {
            ext.push(format!("AUTH {}", cfg.auth_mechanisms));
        }
        let mut lines = vec![format!("250-{} greets you", cfg.hostname)];
        let last = ext.len();
        for (i, e) in ext.into_iter().enumerate() {
            lines.push(format!("250{}{e}", if i + 1 == last { ' ' } else { '-' }));
        }
        if last == 0 {
            lines[0].replace_range(3..4, " ");
        }
        lines
    }

    async fn command(&mut self, line: Vec<u8>) -> Result<(), Closed> {
        let shown = String::from_utf8_lossy(&line).trim_end().to_string();
        let logged = if shown.to_ascii_uppercase().starts_with("AUTH PLAIN ") {
            "AUTH PLAIN ***".to_string()
        } else {
            shown
        };
        if self.cfg.log_commands {
            self.log(|c| c.commands.push(logged));
        }
        let mut receiver = RequestReceiver::default();
        let request = match receiver.ingest(&mut line.iter()) {
            Ok(r) => r.into_owned(),
            Err(smtp_proto::Error::UnknownCommand) => {
                return self.reply("500 5.5.1 unknown command").await;
            }
            Err(_) => return self.reply("501 5.5.4 syntax error").await,
        };
        match request {
            Request::Ehlo { .. } if self.cfg.reject_ehlo => {
                self.reply("502 5.5.1 EHLO not implemented").await
            }
            Request::Ehlo { .. } => {
                self.helo = true;
                self.tx = None;
                let lines = self.ehlo_lines().join("\r\n");
                self.reply(&lines).await
            }
            Request::Helo { .. } => {
                self.helo = true;
                self.tx = None;
                let text = format!("250 {}", self.cfg.hostname);
                self.reply(&text).await
            }
            Request::StartTls => self.starttls().await,
            Request::Auth {
                mechanism,
                initial_response,
            } => self.auth(mechanism, initial_response).await,
            Request::Mail { from } => {
                if !self.helo {
                    return self.reply("503 5.5.1 EHLO first").await;
                }
                if self.cfg.auth.is_some() && self.auth_user.is_none() {
                    return self.reply("530 5.7.0 authentication required").await;
                }
                if self.tx.is_some() {
                    return self.reply("503 5.5.1 nested MAIL").await;
                }
                let smtputf8 = from.flags & smtp_proto::MAIL_SMTPUTF8 != 0;
                if smtputf8 && !self.cfg.smtputf8 {
                    return self.reply("555 5.5.4 SMTPUTF8 not supported").await;
                }
                if let (Some(limit), true) = (self.cfg.size_limit, from.size > 0) {
                    if from.size > limit {
                        return self.reply("552 5.3.4 message too big").await;
                    }
                }
                self.tx = Some(Tx {
                    mail_from: from.address,
                    smtputf8,
                    body_8bitmime: from.flags & smtp_proto::MAIL_BODY_8BITMIME != 0,
                    size_param: (from.size > 0).then_some(from.size),
                    pipelined: !self.buf.is_empty(),
                    rcpts: Vec::new(),
                });
                self.reply("250 2.1.0 sender ok").await
            }
            Request::Rcpt { to } => {
                if self.tx.is_none() {
                    return self.reply("503 5.5.1 MAIL first").await;
                }
                let rcpt = to.address;
                if let Some(reply) = self.scripted(&rcpt, false) {
                    return self.reply(&reply).await;
                }
                if let Some(tx) = self.tx.as_mut() {
                    tx.rcpts.push(rcpt);
                }
                self.reply("250 2.1.5 recipient ok").await
            }
            Request::Data => self.data().await,
            Request::Rset => {
                self.tx = None;
                self.reply("250 2.0.0 reset").await
            }
            Request::Noop { .. } => self.reply("250 2.0.0 ok").await,
            Request::Quit => {
                let _ = self.reply("221 2.0.0 bye").await;
                Err(self.close().await)
            }
            _ => self.reply("502 5.5.1 not implemented").await,
        }
    }

    /// The scripted reply for `rcpt` at this stage, if one is still due.
    fn scripted(&self, rcpt: &str, at_data: bool) -> Option<String> {
        let key = rcpt.to_ascii_lowercase();
        let script = self.cfg.scripts.get(&key)?;
        if script.at_data != at_data {
            return None;
        }
        let mut s = lock(&self.state);
        let uses = s.script_uses.entry(key).or_default();
        if script.times.is_some_and(|n| *uses >= n) {
            return None;
        }
        *uses += 1;
        Some(script.reply.clone())
    }

    fn offers_starttls(&self) -> bool {
        self.cfg.starttls || self.cfg.broken_tls.is_some() || self.cfg.starttls_refusal.is_some()
    }

    async fn starttls(&mut self) -> Result<(), Closed> {
        if self.tls.is_some() || !self.offers_starttls() {
            return self.reply("503 5.5.1 TLS not available").await;
        }
        if let Some(refusal) = self.cfg.starttls_refusal.clone() {
            return self.reply(&refusal).await;
        }
        self.reply("220 2.0.0 ready to start TLS").await?;
        match self.cfg.broken_tls {
            Some(BrokenTls::Close) => {
                self.log(|c| c.tls_failed = true);
                return Err(self.close().await);
            }
            Some(BrokenTls::Garbage) => {
                self.log(|c| c.tls_failed = true);
                let _ = self.read_more().await;
                if let Some(io) = self.io.as_mut() {
                    let _ = io.write_all(b"this is not a TLS record\r\n").await;
                }
                return Err(self.close().await);
            }
            None => {}
        }
        // Plaintext sent after STARTTLS is discarded (RFC 3207 section 4.2).
        self.buf.clear();
        let io = self.io.take().ok_or(Closed)?;
        self.handshake(io).await?;
        self.helo = false;
        self.auth_user = None;
        self.tx = None;
        Ok(())
    }

    async fn auth(&mut self, mechanism: u64, initial: String) -> Result<(), Closed> {
        let Some((want_user, want_pass)) = self.cfg.auth.clone() else {
            return self.reply("503 5.5.1 AUTH not available").await;
        };
        if self.tls.is_none() && !self.cfg.auth_without_tls {
            return self.reply("538 5.7.11 encryption required").await;
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        let decode = |s: &str| {
            b64.decode(s.trim())
                .ok()
                .and_then(|v| String::from_utf8(v).ok())
        };
        let (user, pass) = if mechanism == smtp_proto::AUTH_PLAIN {
            let token = if initial.is_empty() {
                self.reply("334 ").await?;
                let line = self.read_line().await?.ok_or(Closed)?;
                String::from_utf8_lossy(&line).to_string()
            } else {
                initial
            };
            let Some(decoded) = decode(&token) else {
                return self.reply("501 5.5.2 bad base64").await;
            };
            let mut parts = decoded.split('\0').skip(1);
            (
                parts.next().unwrap_or_default().to_string(),
                parts.next().unwrap_or_default().to_string(),
            )
        } else if mechanism == smtp_proto::AUTH_LOGIN {
            self.reply("334 VXNlcm5hbWU6").await?;
            let user = self.read_line().await?.ok_or(Closed)?;
            self.reply("334 UGFzc3dvcmQ6").await?;
            let pass = self.read_line().await?.ok_or(Closed)?;
            (
                decode(&String::from_utf8_lossy(&user)).unwrap_or_default(),
                decode(&String::from_utf8_lossy(&pass)).unwrap_or_default(),
            )
        } else {
            return self.reply("504 5.5.4 mechanism not supported").await;
        };
        if user == want_user && pass == want_pass {
            self.auth_user = Some(user);
            self.reply("235 2.7.0 authenticated").await
        } else {
            self.reply("535 5.7.8 bad credentials").await
        }
    }

    async fn data(&mut self) -> Result<(), Closed> {
        let ok = self.tx.as_ref().is_some_and(|tx| !tx.rcpts.is_empty());
        if !ok {
            return self.reply("503 5.5.1 no valid recipients").await;
        }
        self.reply("354 end with <CRLF>.<CRLF>").await?;
        let mut receiver = DataReceiver::new();
        let mut data = Vec::new();
        // DataReceiver only un-stuffs dots that follow a CRLF it has seen;
        // the CRLF ending the DATA command counts, so feed it one.
        receiver.ingest(&mut b"\r\n".iter(), &mut data);
        data.clear();
        let drop_now = self.cfg.drop_mid_data_once && {
            let mut s = lock(&self.state);
            !std::mem::replace(&mut s.dropped_once, true)
        };
        let stall_now = self.cfg.stall_mid_data_once && {
            let mut s = lock(&self.state);
            !std::mem::replace(&mut s.stalled_once, true)
        };
        loop {
            let mut iter = self.buf.iter();
            let done = receiver.ingest(&mut iter, &mut data);
            let used = self.buf.len() - iter.len();
            self.buf.drain(..used);
            // Dropped once some data arrived, before the final reply: the
            // client cannot know whether the message was taken.
            if drop_now && !data.is_empty() {
                return Err(self.close().await);
            }
            if stall_now && !data.is_empty() {
                lock(&self.state).stalled += 1;
                std::future::pending::<()>().await;
            }
            if done {
                break;
            }
            self.read_more().await?;
        }
        let Some(tx) = self.tx.take() else {
            return Err(Closed);
        };
        if let Some(delay) = self.cfg.data_delay {
            tokio::time::sleep(delay).await;
        }
        let hold = {
            let mut s = lock(&self.state);
            let hold = s.held < self.cfg.hold_data_reply;
            s.held += usize::from(hold);
            hold
        };
        while hold && !self.buf.contains(&b'\n') {
            self.read_more().await?;
        }
        let first_rcpt = tx.rcpts.first().cloned().unwrap_or_default();
        if let Some(reply) = self.scripted(&first_rcpt, true) {
            return self.reply(&reply).await;
        }
        let queued = {
            let mut s = lock(&self.state);
            let len = data.len();
            s.received.push(Received {
                connection: self.id,
                mail_from: tx.mail_from,
                rcpt_to: tx.rcpts,
                data: if self.cfg.keep_data { data } else { Vec::new() },
                len,
                tls: self.tls.clone(),
                auth_user: self.auth_user.clone(),
                pipelined: tx.pipelined,
                smtputf8: tx.smtputf8,
                body_8bitmime: tx.body_8bitmime,
                size_param: tx.size_param,
            });
            s.received.len()
        };
        self.reply(&format!("250 2.0.0 Ok: queued as TEST{queued}"))
            .await
    }
}
