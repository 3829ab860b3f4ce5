//! Pebble, Let's Encrypt's test ACME server (Debian package `pebble`),
//! with its mock DNS `pebble-challtestsrv`, in a temp directory on
//! loopback, stopped by PID on drop.
//!
//! Pebble validates HTTP-01 by connecting to `httpPort` at the address its
//! DNS gives (challtestsrv answers 127.0.0.1 for every name), so the
//! relay's tracking listener must be up first: [`Pebble::prepare`] picks
//! the CA's ports and starts the DNS, the test starts the relay with
//! [`Pebble::directory`], then [`Pebble::start`] starts the CA with
//! `httpPort` = the relay's port. Ports are random tries: a bind failure
//! makes `start` return Err and the caller retries with a fresh `prepare`.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PEBBLE: &str = "/usr/bin/pebble";
const CHALLTESTSRV: &str = "/usr/bin/pebble-challtestsrv";

/// Whether Pebble is installed. CI installs it (.ci/run); elsewhere a test
/// that needs it says loudly that it skipped, and CI refuses to skip.
pub fn available(test: &str) -> bool {
    let ok = Path::new(PEBBLE).exists() && Path::new(CHALLTESTSRV).exists();
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: Pebble is required in CI (apt-get install pebble)"
        );
        eprintln!("SKIPPED {test}: needs Pebble (apt-get install pebble)");
    }
    ok
}

pub struct Pebble {
    pub dir: tempfile::TempDir,
    /// The ACME directory URL, for `[acme] directory`.
    pub directory: String,
    /// Trust for Pebble's own HTTPS, for `[acme] ca_file`.
    pub ca_file: PathBuf,
    listen: SocketAddr,
    management: SocketAddr,
    dns: SocketAddr,
    validity_secs: Option<u64>,
    tls: Arc<rustls::ClientConfig>,
    challtestsrv: Child,
    pebble: Option<Child>,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in self
            .pebble
            .iter_mut()
            .chain(std::iter::once(&mut self.challtestsrv))
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn random_port(attempt: u32) -> u16 {
    super::postfix::random_port(attempt.wrapping_mul(31).wrapping_add(17))
}

/// Appending, so stdout and stderr do not overwrite each other.
fn log_file(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Waits until `addr` accepts TCP; Err (with the log) if `child` exits.
fn wait_listening(child: &mut Child, addr: SocketAddr, log: &Path) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "exited ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            ));
        }
        if Instant::now() > deadline {
            return Err(format!("{addr} not listening after 30s"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Pebble {
    /// Makes Pebble's HTTPS certificate and starts the mock DNS. With
    /// `validity_secs`, issued certificates live that long (Pebble's
    /// `certificateValidityPeriod`).
    pub fn prepare(validity_secs: Option<u64>) -> Pebble {
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        std::fs::write(&ca_file, ca_cert.pem()).unwrap();
        std::fs::write(&cert, leaf.pem()).unwrap();
        std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_cert.der().clone()).unwrap();
        let tls = Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
        );

        let mut last = String::new();
        for attempt in 0..8 {
            let dns = loopback(random_port(attempt * 3));
            let mgmt = loopback(random_port(attempt * 3 + 1));
            let log_path = dir.path().join(format!("challtestsrv-{attempt}.log"));
            let mut child = Command::new(CHALLTESTSRV)
                .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
                .args(["-dns01", &dns.to_string(), "-management", &mgmt.to_string()])
                .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                .stdout(Stdio::from(log_file(&log_path)))
                .stderr(Stdio::from(log_file(&log_path)))
                .spawn()
                .expect("start pebble-challtestsrv");
            match wait_listening(&mut child, mgmt, &log_path) {
                Ok(()) => {
                    return Pebble {
                        directory: String::new(),
                        ca_file,
                        listen: loopback(0),
                        management: loopback(0),
                        dns,
                        validity_secs,
                        tls,
                        challtestsrv: child,
                        pebble: None,
                        dir,
                    }
                    .with_ports(attempt)
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last = e;
                }
            }
        }
        panic!("pebble-challtestsrv did not start on any of 8 port pairs; last: {last}");
    }

    fn with_ports(mut self, attempt: u32) -> Pebble {
        self.listen = loopback(random_port(attempt * 5 + 101));
        self.management = loopback(random_port(attempt * 5 + 102));
        self.directory = format!("https://{}/dir", self.listen);
        self
    }

    /// Starts the CA, validating HTTP-01 on `http_port` and TLS-ALPN-01 on
    /// `tls_port`. Err when it could not bind its ports (then prepare
    /// again: the directory URL changes).
    pub fn start(&mut self, http_port: u16, tls_port: u16) -> Result<(), String> {
        let d = self.dir.path();
        let mut pebble = serde_json::json!({
            "listenAddress": self.listen.to_string(),
            "managementListenAddress": self.management.to_string(),
            "certificate": d.join("cert.pem"),
            "privateKey": d.join("key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        });
        if let Some(v) = self.validity_secs {
            pebble["certificateValidityPeriod"] = v.into();
        }
        let config = d.join("pebble.json");
        std::fs::write(&config, serde_json::json!({ "pebble": pebble }).to_string()).unwrap();
        let log_path = d.join("pebble.log");
        let mut child = Command::new(PEBBLE)
            .arg("-config")
            .arg(&config)
            .args(["-dnsserver", &self.dns.to_string()])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .stdout(Stdio::from(log_file(&log_path)))
            .stderr(Stdio::from(log_file(&log_path)))
            .spawn()
            .expect("start pebble");
        let up = wait_listening(&mut child, self.listen, &log_path)
            .and_then(|_| wait_listening(&mut child, self.management, &log_path));
        self.pebble = Some(child);
        up
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }

    /// The root that issued certificates chain to (new at every start),
    /// from the management API.
    pub fn root_der(&self) -> rustls::pki_types::CertificateDer<'static> {
        let pem = self.get(self.management, "/roots/0");
        let mut reader = pem.as_slice();
        let root = rustls_pemfile::certs(&mut reader)
            .next()
            .expect("a root")
            .expect("PEM root");
        root
    }

    /// One HTTPS GET (trusting Pebble's own certificate): the body.
    fn get(&self, addr: SocketAddr, path: &str) -> Vec<u8> {
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let conn = rustls::ClientConnection::new(self.tls.clone(), name).unwrap();
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut s = rustls::StreamOwned::new(conn, tcp);
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = Vec::new();
        // Go closes without close_notify at times: take what arrived.
        let _ = s.read_to_end(&mut out);
        let split = out
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("an HTTP answer");
        let head = String::from_utf8_lossy(&out[..split]).to_string();
        assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
        out[split + 4..].to_vec()
    }
}
