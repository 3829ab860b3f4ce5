//! The socket side of an SMTP listener, shared by submission and the
//! return-path MX (src/inbound): connection slots, the read/feed/write
//! loop around the sans-IO [`Session`], its timeouts and a graceful stop.
//! What differs between the two listeners is only what they do for the
//! session's [`Action`]s, given through [`Actions`].

use super::session::{Action, Envelope, Session};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

/// How many sessions may run at once, in all and from one address.
pub(crate) struct Slots {
    all: Arc<Semaphore>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    max_per_ip: usize,
}

/// Holds a connection slot (global and per IP) for as long as it lives.
pub(crate) struct Slot<'a> {
    _permit: OwnedSemaphorePermit,
    ip: IpAddr,
    owner: &'a Slots,
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

impl Slots {
    pub fn new(max: usize, max_per_ip: usize) -> Slots {
        Slots {
            all: Arc::new(Semaphore::new(max)),
            per_ip: Mutex::new(HashMap::new()),
            max_per_ip,
        }
    }

    /// A slot for a session from `ip`, or `None` when either limit is
    /// reached (the caller answers 421).
    pub fn try_slot(&self, ip: IpAddr) -> Option<Slot<'_>> {
        let permit = self.all.clone().try_acquire_owned().ok()?;
        let ip = ip.to_canonical();
        let mut map = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return None;
        }
        *n += 1;
        Some(Slot {
            _permit: permit,
            ip,
            owner: self,
        })
    }

    /// A permit for the whole of `max`, once every session has ended.
    pub async fn wait_idle(&self, max: usize) {
        let _ = self.all.acquire_many(max as u32).await;
    }
}

/// How a [`drive`] ended.
pub(crate) enum End {
    Closed,
    /// The client asked for STARTTLS: do the handshake and drive again.
    StartTls,
}

/// What only the listener can do for its session; each method reports
/// back to the session (`auth_result`, `recipient_checked`, `queued`).
pub(crate) trait Actions {
    async fn authenticate(
        &self,
        session: &mut Session,
        peer: SocketAddr,
        username: String,
        password: String,
    );
    async fn check_recipient(
        &self,
        session: &mut Session,
        peer: SocketAddr,
        address: String,
        sending_domain: String,
    );
    async fn queue(&self, session: &mut Session, peer: SocketAddr, envelope: Envelope);
}

/// Room made for each read from the client.
const READ_CHUNK: usize = 64 * 1024;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    /// A whole command must arrive within this of the last reply.
    pub command: Duration,
    /// A whole message must arrive within this of DATA/BDAT.
    pub data: Duration,
}

/// Feeds what the client sends into `session` and writes what it answers,
/// doing its actions through `actions`, until the session ends, the client
/// goes, a timeout passes, or `shutdown` comes outside a transaction.
pub(crate) async fn drive<S: AsyncRead + AsyncWrite + Unpin, A: Actions>(
    actions: &A,
    stream: &mut S,
    session: &mut Session,
    peer: SocketAddr,
    timeouts: Timeouts,
    mut shutdown: watch::Receiver<bool>,
) -> End {
    // Reads land straight in `pending` (no zeroed buffer per connection,
    // no copy from one buffer to the other: issue 15).
    let mut pending: Vec<u8> = Vec::new();
    let mut data_started: Option<Instant> = None;
    // Each command must arrive whole within the command timeout of the
    // last reply: a per-read timeout would let a client trickle one byte
    // at a time and hold the session for good.
    let mut command_deadline = Instant::now() + timeouts.command;
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
                Some(Action::Authenticate { username, password }) => {
                    actions
                        .authenticate(session, peer, username, password)
                        .await
                }
                Some(Action::CheckRecipient {
                    address,
                    sending_domain,
                }) => {
                    actions
                        .check_recipient(session, peer, address, sending_domain)
                        .await
                }
                Some(Action::Queue(envelope)) => actions.queue(session, peer, *envelope).await,
            }
        }
        if session.has_output() {
            if write_out(stream, session).await.is_err() {
                return End::Closed;
            }
            command_deadline = Instant::now() + timeouts.command;
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
            match timeouts.data.checked_sub(started.elapsed()) {
                Some(left) => left.min(timeouts.command),
                None => Duration::ZERO,
            }
        } else {
            data_started = None;
            command_deadline.saturating_duration_since(Instant::now())
        };
        if pending.capacity() - pending.len() < READ_CHUNK / 2 {
            pending.reserve(READ_CHUNK);
        }
        let read = tokio::select! {
            r = tokio::time::timeout(wait, stream.read_buf(&mut pending)) => r,
            _ = shutdown.changed(), if !session.in_transaction() => continue,
        };
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => return End::Closed,
            Ok(Ok(_)) => {}
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

/// Writes the session's pending output.
pub(crate) async fn write_out<S: AsyncWrite + Unpin>(
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
