//! An MTA-STS policy host for tests: HTTPS on 127.0.0.1 (port 0) with a
//! certificate from a test CA made by rcgen, answering
//! `GET /.well-known/mta-sts.txt` with a policy the test can change.
//!
//! ```ignore
//! let ca = TestCa::new();
//! let server = PolicyServer::start(&ca, "mta-sts.example.net", POLICY).await;
//! // config: [delivery] extra_ca_file = ca.write_pem(dir)
//! // env:    TRACKRELAY_TEST_MTA_STS_PORT = server.port()
//! ```
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// A certificate authority that exists only for one test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// A certificate chain and its key, both PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "trackrelay test CA");
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        TestCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA certificate, PEM (what `delivery.extra_ca_file` holds).
    pub fn pem(&self) -> &str {
        &self.pem
    }

    pub fn write_pem(&self, dir: &Path) -> PathBuf {
        let path = dir.join("test-ca.pem");
        std::fs::write(&path, &self.pem).expect("write CA");
        path
    }

    /// A server certificate for `names`, signed by this CA.
    pub fn issue(&self, names: &[&str]) -> Issued {
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf");
        Issued {
            chain_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

struct State {
    policy: String,
    content_type: String,
    requests: Vec<String>,
}

/// The policy host. Dropping it (or `stop`) closes the listener, so
/// fetches fail with "connection refused".
pub struct PolicyServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: Option<JoinHandle<()>>,
}

impl PolicyServer {
    pub async fn start(ca: &TestCa, host: &str, policy: &str) -> PolicyServer {
        let issued = ca.issue(&[host]);
        let chain: Vec<CertificateDer<'static>> =
            rustls_pemfile::certs(&mut issued.chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .expect("chain");
        let key = rustls_pemfile::private_key(&mut issued.key_pem.as_bytes())
            .expect("key")
            .unwrap_or_else(|| PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(Vec::new())));
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server certificate");
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(State {
            policy: policy.to_string(),
            content_type: "text/plain".into(),
            requests: Vec::new(),
        }));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let state = shared.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let request = String::from_utf8_lossy(&request).to_string();
                    let (status, content_type, body) = {
                        let mut s = state.lock().unwrap();
                        s.requests.push(request.clone());
                        if request.starts_with("GET /.well-known/mta-sts.txt ") {
                            ("200 OK", s.content_type.clone(), s.policy.clone())
                        } else {
                            ("404 Not Found", "text/plain".into(), "not found\n".into())
                        }
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(response.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        PolicyServer {
            addr,
            state,
            task: Some(task),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn set_policy(&self, policy: &str) {
        self.state.lock().unwrap().policy = policy.to_string();
    }

    /// The raw requests received (request line and headers).
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Closes the listener: the policy host is down from now on.
    pub fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for PolicyServer {
    fn drop(&mut self) {
        self.stop();
    }
}
