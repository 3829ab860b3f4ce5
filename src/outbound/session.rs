//! The thin async layer: one TCP connection, optionally upgraded to TLS,
//! with a timeout on every read and write.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::protocol::{Reply, ReplyReader};
use super::tls;

/// Anything that ends the connection: I/O error, timeout, EOF, garbage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConnError(pub String);

impl fmt::Display for ConnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

pub(crate) struct Connection {
    stream: Stream,
    reader: ReplyReader,
    peer: SocketAddr,
    tls_version: Option<String>,
}

async fn timed<T>(
    limit: Duration,
    what: &str,
    fut: impl Future<Output = std::io::Result<T>>,
) -> Result<T, ConnError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ConnError(format!("{what}: {e}"))),
        Err(_) => Err(ConnError(format!("{what}: timed out after {limit:?}"))),
    }
}

/// Writes are cut into blocks so that the RFC 5321 data-block timeout
/// bounds each send, not the whole message.
const WRITE_BLOCK: usize = 64 * 1024;

impl Connection {
    pub(crate) async fn connect(addr: SocketAddr, limit: Duration) -> Result<Self, ConnError> {
        let tcp = timed(
            limit,
            &format!("connect to {addr}"),
            TcpStream::connect(addr),
        )
        .await?;
        // Commands are small and latency-bound; PIPELINING already batches.
        let _ = tcp.set_nodelay(true);
        Ok(Connection {
            stream: Stream::Plain(tcp),
            reader: ReplyReader::default(),
            peer: addr,
            tls_version: None,
        })
    }

    pub(crate) fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// "TLSv1.3" etc. once TLS is up.
    pub(crate) fn tls_version(&self) -> Option<String> {
        self.tls_version.clone()
    }

    pub(crate) fn is_tls(&self) -> bool {
        matches!(self.stream, Stream::Tls(_))
    }

    /// Upgrades the connection (after a 220 to STARTTLS, or at once for
    /// implicit TLS). Consumes it: a failed handshake leaves nothing usable.
    pub(crate) async fn into_tls(
        mut self,
        server_name: &str,
        limit: Duration,
        config: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Self, ConnError> {
        let Stream::Plain(tcp) = self.stream else {
            return Err(ConnError("TLS already active".into()));
        };
        // A policy's own verifier, else the process-wide accept-any one.
        let config = match config {
            Some(c) => c,
            None => tls::client_config().map_err(ConnError)?,
        };
        let name = tls::server_name(server_name, self.peer);
        let tls_stream = timed(
            limit,
            "TLS handshake",
            TlsConnector::from(config).connect(name, tcp),
        )
        .await?;
        let version = tls_stream
            .get_ref()
            .1
            .protocol_version()
            .ok_or_else(|| ConnError("TLS handshake: no protocol version".into()))?;
        if !tls::version_acceptable(version) {
            return Err(ConnError(format!(
                "TLS handshake: {} is below TLS 1.2",
                tls::version_name(version)
            )));
        }
        // Anything the server sent in plaintext after its 220 could be an
        // injection (CVE-2011-0411 style); it must not be read as TLS data.
        self.reader.clear();
        self.tls_version = Some(tls::version_name(version));
        self.stream = Stream::Tls(Box::new(tls_stream));
        Ok(self)
    }

    pub(crate) async fn send(&mut self, bytes: &[u8], limit: Duration) -> Result<(), ConnError> {
        for block in bytes.chunks(WRITE_BLOCK) {
            match &mut self.stream {
                Stream::Plain(s) => timed(limit, "write", s.write_all(block)).await?,
                Stream::Tls(s) => {
                    timed(limit, "write", async {
                        s.write_all(block).await?;
                        // rustls buffers; without a flush nothing leaves.
                        s.flush().await
                    })
                    .await?
                }
            }
        }
        Ok(())
    }

    /// The next reply, waiting at most `limit` for it.
    pub(crate) async fn read_reply(
        &mut self,
        limit: Duration,
        what: &str,
    ) -> Result<(Reply, Vec<u8>), ConnError> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut buf = [0u8; 8192];
        loop {
            if let Some(reply) = self
                .reader
                .next_reply()
                .map_err(|e| ConnError(format!("{what}: {e}")))?
            {
                return Ok(reply);
            }
            let read = async {
                match &mut self.stream {
                    Stream::Plain(s) => s.read(&mut buf).await,
                    Stream::Tls(s) => s.read(&mut buf).await,
                }
            };
            let n = match tokio::time::timeout_at(deadline, read).await {
                Ok(Ok(0)) => return Err(ConnError(format!("{what}: connection closed by server"))),
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(ConnError(format!("{what}: {e}"))),
                Err(_) => return Err(ConnError(format!("{what}: no reply within {limit:?}"))),
            };
            self.reader.feed(&buf[..n]);
        }
    }

    pub(crate) async fn command(
        &mut self,
        bytes: &[u8],
        limit: Duration,
        what: &str,
    ) -> Result<(Reply, Vec<u8>), ConnError> {
        self.send(bytes, limit).await?;
        self.read_reply(limit, what).await
    }

    /// QUIT and close, ignoring errors: every outcome is already decided.
    pub(crate) async fn quit(&mut self, limit: Duration) {
        if self.send(b"QUIT\r\n", limit).await.is_ok() {
            let _ = self.read_reply(limit, "QUIT").await;
        }
        let _ = tokio::time::timeout(limit, async {
            match &mut self.stream {
                Stream::Plain(s) => s.shutdown().await,
                Stream::Tls(s) => s.shutdown().await,
            }
        })
        .await;
    }
}
