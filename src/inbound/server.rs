//! The return-path MX: sockets, connection limits, TLS and timeouts around
//! the submission session in its inbound mode, and the durable commit of
//! each report behind its `250`.
//!
//! It never relays: a recipient is accepted only at a return-path domain
//! (`{return_path}.{domain}` of a configured `[[domains]]` entry), with any
//! local part (`bounces+token`, `unsubscribe+token`, `fbl`...). What is
//! accepted goes to `inbound_reports` unread; the feedback processor
//! (woken through `new_reports`) makes events and suppressions of it.

use crate::metrics::Metrics;
use crate::store::{self, Durability, Store};
use crate::submission::budget::DataBudget;
use crate::submission::policy::Policy;
use crate::submission::reply::Reply;
use crate::submission::session::{Action, Envelope, RcptCheck, Session, SessionConfig};
use crate::text::printable;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

/// Recipients per message: a report goes to one return path; a few more
/// allow for an MTA that batches, and no more keep a relay probe short.
pub const MAX_RECIPIENTS: usize = 50;

pub struct Inbound {
    session: Arc<SessionConfig>,
    /// Unused in inbound mode (no AUTH, no sender policy) but the session
    /// type needs one.
    policy: Arc<Policy>,
    /// Lowercase `{return_path}.{domain}` names.
    domains: Vec<String>,
    store: Store,
    tls: Option<TlsAcceptor>,
    metrics: Arc<Metrics>,
    command_timeout: Duration,
    data_timeout: Duration,
    max_connections: usize,
    max_connections_per_ip: usize,
    connections: Arc<Semaphore>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Woken after each stored report: the feedback processor waits on it.
    new_reports: Arc<Notify>,
}

/// Holds a connection slot (global and per IP) for as long as it lives.
struct Slot<'a> {
    _permit: OwnedSemaphorePermit,
    ip: IpAddr,
    owner: &'a Inbound,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut map = self.owner.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

enum End {
    Closed,
    StartTls,
}

/// Whether `address` is at one of `domains` (lowercase), whatever its
/// local part. Address literals and anything else are foreign.
pub fn is_local(domains: &[String], address: &str) -> bool {
    let Some((local, domain)) = address.rsplit_once('@') else {
        return false;
    };
    !local.is_empty() && domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
}

impl Inbound {
    pub fn new(
        config: &crate::config::Config,
        store: Store,
        tls: Option<Arc<rustls::ServerConfig>>,
        metrics: Arc<Metrics>,
        new_reports: Arc<Notify>,
    ) -> Self {
        let c = &config.inbound;
        let session = SessionConfig {
            hostname: config.server.hostname.clone(),
            max_message_size: c.max_message_size,
            max_recipients: MAX_RECIPIENTS,
            max_errors: config.submission.max_errors.max(1),
            starttls: tls.is_some(),
            require_tls_for_auth: true,
            data_budget: DataBudget::new(c.max_data_in_flight),
        };
        Inbound {
            session: Arc::new(session),
            policy: Arc::new(Policy::from_config(config)),
            domains: config.inbound_domains(),
            store,
            tls: tls.map(TlsAcceptor::from),
            metrics,
            command_timeout: config.submission.command_timeout,
            data_timeout: config.submission.data_timeout,
            max_connections: c.max_connections,
            max_connections_per_ip: c.max_connections_per_ip,
            connections: Arc::new(Semaphore::new(c.max_connections)),
            per_ip: Mutex::new(HashMap::new()),
            new_reports,
        }
    }

    fn try_slot(&self, ip: IpAddr) -> Option<Slot<'_>> {
        let permit = self.connections.clone().try_acquire_owned().ok()?;
        let ip = ip.to_canonical();
        let mut map = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= self.max_connections_per_ip {
            return None;
        }
        *n += 1;
        Some(Slot {
            _permit: permit,
            ip,
            owner: self,
        })
    }

    /// Accepts connections until shutdown, then waits (up to `grace`) for
    /// the sessions in flight.
    pub async fn serve(
        self: Arc<Self>,
        listeners: Vec<TcpListener>,
        shutdown: watch::Receiver<bool>,
        grace: Duration,
    ) {
        let mut tasks = Vec::new();
        for listener in listeners {
            let this = self.clone();
            let rx = shutdown.clone();
            let shutdown = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                crate::net::accept_loop("inbound", listener, shutdown, None, || {}, {
                    move |tcp, peer| {
                        let this = this.clone();
                        let shutdown = rx.clone();
                        async move { this.connection(tcp, peer, shutdown).await }
                    }
                })
                .await
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        let all = self.max_connections as u32;
        if tokio::time::timeout(grace, self.connections.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!("inbound sessions still open after {grace:?}; exiting anyway");
        }
    }

    async fn connection(
        &self,
        mut tcp: TcpStream,
        peer: SocketAddr,
        shutdown: watch::Receiver<bool>,
    ) {
        let Some(_slot) = self.try_slot(peer.ip()) else {
            self.metrics.inbound_rejected_connections.inc();
            let msg = format!(
                "421 4.7.0 {} Too many connections from your address, try again later\r\n",
                self.session.hostname
            );
            let _ =
                tokio::time::timeout(Duration::from_secs(5), tcp.write_all(msg.as_bytes())).await;
            return;
        };
        self.metrics.inbound_sessions.inc();
        let mut session = Session::new(self.session.clone(), self.policy.clone(), peer.ip(), false);
        session.set_inbound();
        session.greeting();
        if let End::StartTls = self
            .drive(&mut tcp, &mut session, peer, shutdown.clone())
            .await
        {
            let Some(acceptor) = &self.tls else { return };
            let mut tls =
                match tokio::time::timeout(self.command_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, "inbound STARTTLS handshake failed: {e}");
                        return;
                    }
                    Err(_) => return,
                };
            session.tls_started();
            self.drive(&mut tls, &mut session, peer, shutdown).await;
            let _ = tls.shutdown().await;
        }
    }

    async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        session: &mut Session,
        peer: SocketAddr,
        mut shutdown: watch::Receiver<bool>,
    ) -> End {
        let mut buf = vec![0u8; 64 * 1024];
        let mut pending: Vec<u8> = Vec::new();
        let mut data_started: Option<Instant> = None;
        // A whole command must arrive within `command_timeout` of the last
        // reply, so a byte-at-a-time client cannot hold a slot for good.
        let mut command_deadline = Instant::now() + self.command_timeout;
        loop {
            while !pending.is_empty() {
                let (used, action) = session.feed(&pending);
                pending.drain(..used);
                match action {
                    None => break,
                    Some(Action::StartTls) => {
                        // Bytes pipelined after STARTTLS were sent in the
                        // clear and must not count as sent under TLS.
                        let _ = write_out(stream, session).await;
                        return End::StartTls;
                    }
                    Some(Action::Close) => {
                        let _ = write_out(stream, session).await;
                        return End::Closed;
                    }
                    // Inbound mode refuses AUTH before asking; answer
                    // anyway rather than stall if that ever changes.
                    Some(Action::Authenticate { .. }) => session.auth_result(None),
                    Some(Action::CheckRecipient { address, .. }) => {
                        session.recipient_checked(self.check_recipient(&address));
                    }
                    Some(Action::Queue(envelope)) => {
                        let result = self.store_report(*envelope, peer).await;
                        session.queued(result);
                    }
                }
            }
            if session.has_output() {
                if write_out(stream, session).await.is_err() {
                    return End::Closed;
                }
                command_deadline = Instant::now() + self.command_timeout;
            }
            if session.is_closing() {
                return End::Closed;
            }
            if *shutdown.borrow() && !session.in_transaction() {
                session.close_with(421, "4.3.2", "Service shutting down, closing connection");
                let _ = write_out(stream, session).await;
                return End::Closed;
            }
            let wait = if session.in_data() {
                let started = *data_started.get_or_insert_with(Instant::now);
                match self.data_timeout.checked_sub(started.elapsed()) {
                    Some(left) => left.min(self.command_timeout),
                    None => Duration::ZERO,
                }
            } else {
                data_started = None;
                command_deadline.saturating_duration_since(Instant::now())
            };
            let read = tokio::select! {
                r = tokio::time::timeout(wait, stream.read(&mut buf)) => r,
                _ = shutdown.changed(), if !session.in_transaction() => continue,
            };
            match read {
                Ok(Ok(0)) | Ok(Err(_)) => return End::Closed,
                Ok(Ok(n)) => pending.extend_from_slice(&buf[..n]),
                Err(_) => {
                    session.close_with(
                        421,
                        "4.4.2",
                        "Timeout waiting for client, closing connection",
                    );
                    let _ = write_out(stream, session).await;
                    return End::Closed;
                }
            }
        }
    }

    fn check_recipient(&self, address: &str) -> RcptCheck {
        if is_local(&self.domains, address) {
            return RcptCheck::Clear;
        }
        self.metrics.inbound_recipients_refused.inc();
        RcptCheck::Refused(Reply::new(
            550,
            "5.7.1",
            format!(
                "Relaying denied: <{address}> is not a mailbox here; this server only receives \
                 bounces and feedback for its return-path domains"
            ),
        ))
    }

    /// Stores the report durably; the id once committed, or why not.
    async fn store_report(&self, env: Envelope, peer: SocketAddr) -> Result<String, String> {
        let size = env.data.len();
        let rcpt_count = env.recipients.len();
        let from = format!("<{}>", printable(&env.mail_from));
        let report = store::reports::NewReport {
            received_at: store::now_ms(),
            peer_ip: peer.ip().to_canonical().to_string(),
            helo: env.helo,
            mail_from: env.mail_from,
            rcpt_to: env.recipients,
            raw: env.data,
        };
        match self
            .store
            .write(Durability::Full, move |tx| {
                store::reports::insert(tx, &report)
            })
            .await
        {
            Ok(id) => {
                self.metrics.inbound_accepted.inc();
                self.new_reports.notify_one();
                tracing::info!(report_id = id, %peer, from = %from, size, recipients = rcpt_count, "inbound report stored");
                Ok(id.to_string())
            }
            Err(e) => {
                self.metrics.inbound_store_failed.inc();
                tracing::error!(%peer, "could not store an inbound report: {e}");
                Err("the report store is unavailable".into())
            }
        }
    }
}

async fn write_out<S: AsyncWrite + Unpin>(
    stream: &mut S,
    session: &mut Session,
) -> std::io::Result<()> {
    let out = session.take_output();
    if out.is_empty() {
        return Ok(());
    }
    // A client that stops reading must not hold a session forever.
    match tokio::time::timeout(Duration::from_secs(300), async {
        stream.write_all(&out).await?;
        stream.flush().await
    })
    .await
    {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "write timeout",
        )),
    }
}
