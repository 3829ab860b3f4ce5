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
use crate::store::feedback::NewReport;
use crate::store::{self, Store};
use crate::submission::budget::DataBudget;
use crate::submission::driver::{drive, Actions, End, Slots, Timeouts};
use crate::submission::policy::Policy;
use crate::submission::reply::Reply;
use crate::submission::session::{Envelope, RcptCheck, Session, SessionConfig};
use crate::text::printable;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
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
    slots: Slots,
    /// Woken after each stored report: the feedback processor waits on it.
    new_reports: Arc<Notify>,
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
            slots: Slots::new(c.max_connections, c.max_connections_per_ip),
            new_reports,
        }
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
        if tokio::time::timeout(grace, self.slots.wait_idle(self.max_connections))
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
        let Some(_slot) = self.slots.try_slot(peer.ip()) else {
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
        let timeouts = Timeouts {
            command: self.command_timeout,
            data: self.data_timeout,
        };
        if let End::StartTls = drive(
            self,
            &mut tcp,
            &mut session,
            peer,
            timeouts,
            shutdown.clone(),
        )
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
            drive(self, &mut tls, &mut session, peer, timeouts, shutdown).await;
            let _ = tls.shutdown().await;
        }
    }

    fn recipient(&self, address: &str) -> RcptCheck {
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
        let report = NewReport {
            received_at: store::now_ms(),
            peer_ip: peer.ip().to_canonical().to_string(),
            helo: env.helo,
            mail_from: env.mail_from,
            rcpt_to: env.recipients,
            raw: env.data,
        };
        match self.store.insert_report(report).await {
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

impl Actions for Inbound {
    /// Inbound mode refuses AUTH before asking; answer anyway rather than
    /// stall if that ever changes.
    async fn authenticate(&self, session: &mut Session, _: SocketAddr, _: String, _: String) {
        session.auth_result(None)
    }

    async fn check_recipient(
        &self,
        session: &mut Session,
        _: SocketAddr,
        address: String,
        _: String,
    ) {
        session.recipient_checked(self.recipient(&address));
    }

    async fn queue(&self, session: &mut Session, peer: SocketAddr, envelope: Envelope) {
        let result = self.store_report(envelope, peer).await;
        session.queued(result);
    }
}
