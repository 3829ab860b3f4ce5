//! Sockets for the submission session: listeners, connection limits, TLS,
//! timeouts, and the durable commit behind `250 queued as`.

use super::driver::{drive, Actions, End, Slots, Timeouts};
use super::policy::{Identity, Policy};
use super::session::{Envelope, RcptCheck, Session, SessionConfig};
use crate::auth::{Authenticator, Throttle};
use crate::metrics::Metrics;
use crate::store::{self, Store};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

pub struct Submission {
    pub session: Arc<SessionConfig>,
    pub policy: Arc<Policy>,
    pub auth: Arc<Authenticator>,
    pub throttle: Arc<Throttle>,
    pub store: Store,
    pub tls: Option<TlsAcceptor>,
    pub metrics: Arc<Metrics>,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    slots: Slots,
    /// Tells the queue runner there is new work.
    pub new_mail: Option<Arc<tokio::sync::Notify>>,
    /// Hands the runner what was just queued, saving it a store read.
    pub fresh: Option<Arc<crate::outbound::fresh::FreshBodies>>,
    /// `submission.reject_suppressed`.
    reject_suppressed: bool,
}

enum Checked {
    /// Refused without checking: too many recent failures.
    Throttled,
    /// The user, if the password was right.
    Done(Option<String>),
}

impl Submission {
    pub fn new(
        config: &crate::config::Config,
        store: Store,
        tls: Option<Arc<rustls::ServerConfig>>,
        metrics: Arc<Metrics>,
        new_mail: Option<Arc<tokio::sync::Notify>>,
    ) -> Self {
        let s = &config.submission;
        let session = SessionConfig {
            hostname: config.server.hostname.clone(),
            max_message_size: s.max_message_size,
            max_recipients: s.max_recipients,
            max_errors: s.max_errors.max(1),
            starttls: tls.is_some(),
            require_tls_for_auth: s.require_tls_for_auth,
            data_budget: super::budget::DataBudget::new(s.max_data_in_flight),
        };
        Submission {
            session: Arc::new(session),
            policy: Arc::new(Policy::from_config(config)),
            auth: Arc::new(Authenticator::new(
                s.users
                    .iter()
                    .map(|u| (u.name.clone(), u.password_hash.clone())),
            )),
            throttle: Arc::new(Throttle::smtp()),
            store,
            tls: tls.map(TlsAcceptor::from),
            metrics,
            command_timeout: s.command_timeout,
            data_timeout: s.data_timeout,
            max_connections: s.max_connections,
            max_connections_per_ip: s.max_connections_per_ip,
            reject_suppressed: s.reject_suppressed,
            slots: Slots::new(s.max_connections, s.max_connections_per_ip),
            new_mail,
            fresh: None,
        }
    }

    pub fn with_fresh_bodies(mut self, fresh: Arc<crate::outbound::fresh::FreshBodies>) -> Self {
        self.fresh = Some(fresh);
        self
    }

    /// Accepts connections until shutdown, then waits (up to `grace`) for
    /// the sessions in flight.
    pub async fn serve(
        self: Arc<Self>,
        listeners: Vec<(TcpListener, bool)>,
        shutdown: watch::Receiver<bool>,
        grace: Duration,
    ) {
        let mut tasks = Vec::new();
        for (listener, implicit_tls) in listeners {
            let this = self.clone();
            let shutdown = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                this.accept_loop(listener, implicit_tls, shutdown).await
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        // Every session holds a permit: having them all back means all ended.
        if tokio::time::timeout(grace, self.slots.wait_idle(self.max_connections))
            .await
            .is_err()
        {
            tracing::warn!("sessions still open after {grace:?}; exiting anyway");
        }
    }

    async fn accept_loop(
        self: Arc<Self>,
        listener: TcpListener,
        implicit_tls: bool,
        shutdown: watch::Receiver<bool>,
    ) {
        // Connection limits are counted per IP in `connection`, which
        // answers 421 at the limit instead of leaving clients waiting.
        let rx = shutdown.clone();
        crate::net::accept_loop(
            "submission",
            listener,
            shutdown,
            None,
            || {},
            move |tcp, peer| {
                let this = self.clone();
                let shutdown = rx.clone();
                async move { this.connection(tcp, peer, implicit_tls, shutdown).await }
            },
        )
        .await
    }

    async fn connection(
        &self,
        mut tcp: TcpStream,
        peer: SocketAddr,
        implicit_tls: bool,
        shutdown: watch::Receiver<bool>,
    ) {
        let Some(_slot) = self.slots.try_slot(peer.ip()) else {
            self.metrics.smtp_rejected_connections.inc();
            if !implicit_tls {
                let msg = format!(
                    "421 4.7.0 {} Too many connections, try again later\r\n",
                    self.session.hostname
                );
                let _ = tokio::time::timeout(Duration::from_secs(5), tcp.write_all(msg.as_bytes()))
                    .await;
            }
            return;
        };
        self.metrics.smtp_sessions.inc();
        let _ = tcp.set_nodelay(true);
        let mut session = Session::new(
            self.session.clone(),
            self.policy.clone(),
            peer.ip(),
            implicit_tls,
        );
        session.set_reject_suppressed(self.reject_suppressed);
        if implicit_tls {
            let Some(acceptor) = &self.tls else { return };
            let tls = match tokio::time::timeout(self.command_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, "TLS handshake failed: {e}");
                    return;
                }
                Err(_) => return,
            };
            let mut tls = tls;
            session.greeting();
            drive(
                self,
                &mut tls,
                &mut session,
                peer,
                self.timeouts(),
                shutdown,
            )
            .await;
            let _ = tls.shutdown().await;
            return;
        }
        session.greeting();
        match drive(
            self,
            &mut tcp,
            &mut session,
            peer,
            self.timeouts(),
            shutdown.clone(),
        )
        .await
        {
            End::Closed => {}
            End::StartTls => {
                let Some(acceptor) = &self.tls else { return };
                let mut tls =
                    match tokio::time::timeout(self.command_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, "STARTTLS handshake failed: {e}");
                            return;
                        }
                        Err(_) => return,
                    };
                session.tls_started();
                drive(
                    self,
                    &mut tls,
                    &mut session,
                    peer,
                    self.timeouts(),
                    shutdown,
                )
                .await;
                let _ = tls.shutdown().await;
            }
        }
    }

    fn timeouts(&self) -> Timeouts {
        Timeouts {
            command: self.command_timeout,
            data: self.data_timeout,
        }
    }

    async fn check_password(&self, ip: IpAddr, username: String, password: String) -> Checked {
        let Some(attempt) = self.throttle.begin(ip, Some(&username)) else {
            self.metrics.auth_failures.inc();
            tracing::info!(%ip, user = ?username, "AUTH refused unchecked: too many recent failures");
            return Checked::Throttled;
        };
        if self.auth.verify(&username, password).await {
            attempt.succeeded();
            Checked::Done(Some(username))
        } else {
            attempt.failed();
            self.metrics.auth_failures.inc();
            // The user name is logged so an operator can see which account is
            // being guessed; never the password.
            let user = super::reply::printable(&username);
            tracing::info!(%ip, %user, "AUTH failed");
            Checked::Done(None)
        }
    }

    async fn queue(&self, env: Envelope, peer: SocketAddr, tls: bool) -> Result<String, String> {
        let id = uuid::Uuid::now_v7().to_string();
        let now = store::now_ms();
        let with = match (&env.identity, tls) {
            (Identity::User(_), true) => "ESMTPSA",
            (Identity::User(_), false) => "ESMTPA",
            (Identity::Trusted, true) => "ESMTPS",
            (Identity::Trusted, false) => "ESMTP",
        };
        let received = format!(
            "Received: from {} ([{}])\r\n\tby {} (trackrelay) with {with}\r\n\tid {id}; {}\r\n",
            sanitize_helo(&env.helo),
            peer.ip().to_canonical(),
            self.session.hostname,
            crate::time::rfc5322(now),
        );
        let recipients = env.recipients.len();
        let email = store::queue::NewEmail {
            id: id.clone(),
            created_at: now,
            domain: env.header.domain,
            mail_from: env.mail_from,
            header_from: Some(env.header.from),
            to_header: env.header.to,
            subject: env.header.subject,
            message_id: env.header.message_id,
            tags: env.header.tags,
            auth_user: env.identity.user_name().map(str::to_string),
            client_ip: Some(peer.ip().to_canonical().to_string()),
            smtputf8: env.smtputf8,
            received: received.into_bytes(),
            body: env.data.into(),
            recipients: env.recipients,
        };
        if let Some(fresh) = &self.fresh {
            // Before the commit, which wakes the runner. The body is
            // shared with the store's job, not copied.
            let copy = store::queue::StoredBody {
                received: email.received.clone(),
                body: email.body.clone(),
            };
            fresh.put(&id, Arc::new(copy));
        }
        match self.store.accept(email).await {
            Ok(()) => {
                self.metrics.messages_accepted.inc();
                self.metrics.recipients_accepted.add(recipients as u64);
                if let Some(n) = &self.new_mail {
                    n.notify_one();
                }
                tracing::info!(email_id = %id, %peer, recipients, "queued");
                Ok(id)
            }
            Err(e) => {
                if let Some(fresh) = &self.fresh {
                    fresh.forget(&id);
                }
                self.metrics.messages_store_failed.inc();
                tracing::error!(%peer, "could not store a message: {e}");
                Err("the queue is unavailable".into())
            }
        }
    }
}

impl Actions for Submission {
    async fn authenticate(
        &self,
        session: &mut Session,
        peer: SocketAddr,
        username: String,
        password: String,
    ) {
        match self.check_password(peer.ip(), username, password).await {
            Checked::Throttled => session.auth_throttled(),
            Checked::Done(user) => session.auth_result(user),
        }
    }

    async fn check_recipient(
        &self,
        session: &mut Session,
        peer: SocketAddr,
        address: String,
        sending_domain: String,
    ) {
        let now = store::now_ms();
        let found = self
            .store
            .suppression_lookup(&address, &sending_domain, now)
            .await;
        session.recipient_checked(match found {
            Ok(None) => RcptCheck::Clear,
            Ok(Some((reason, _))) => RcptCheck::Suppressed(reason),
            Err(e) => {
                tracing::error!(%peer, "reading the suppression list: {e}");
                RcptCheck::Unavailable
            }
        });
    }

    async fn queue(&self, session: &mut Session, peer: SocketAddr, envelope: Envelope) {
        let tls = session.is_tls();
        let result = Submission::queue(self, envelope, peer, tls).await;
        session.queued(result);
    }
}

/// The HELO name goes into a header: keep it to printable ASCII, no spaces.
fn sanitize_helo(helo: &str) -> String {
    let s: String = helo
        .chars()
        .filter(|c| c.is_ascii_graphic() && *c != '(' && *c != ')')
        .take(255)
        .collect();
    if s.is_empty() {
        "unknown".into()
    } else {
        s
    }
}
