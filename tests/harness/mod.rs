//! Starts the real `trackrelay` binary on loopback ports with a config in a
//! temporary directory, and talks to it. Shared by the integration tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

// Also `support::postgres` in the tests that load `support`: two copies,
// each starting its own server on first use, which only those tests pay.
#[allow(clippy::duplicate_mod)]
#[path = "../support/postgres.rs"]
pub mod pg;

/// `TRACKRELAY_TEST_BACKEND=postgres` runs the relays of this test process
/// on a real PostgreSQL server (a new database each) instead of SQLite.
pub fn on_postgres() -> bool {
    std::env::var("TRACKRELAY_TEST_BACKEND").is_ok_and(|b| b == "postgres")
}

pub const USER: &str = "app";
pub const PASSWORD: &str = "correct horse battery staple";

/// argon2 takes a while even optimised: hash once per test process.
pub fn password_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| trackrelay::submission::auth::hash_password(PASSWORD).unwrap())
}

pub const API_TOKEN: &str = "test-api-token-7f3a";

pub fn api_token_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| trackrelay::submission::auth::hash_password(API_TOKEN).unwrap())
}

/// A loopback port with nothing listening, for as long as the test process
/// lives: a socket bound to it that never listens, so connections are
/// refused and the system gives the port to nobody else.
pub fn closed_port() -> u16 {
    use std::mem::{size_of, zeroed};
    // SAFETY: plain socket calls on a local sockaddr_in of the right size.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let mut addr: libc::sockaddr_in = zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let sa = &mut addr as *mut libc::sockaddr_in as *mut libc::sockaddr;
        assert_eq!(
            libc::bind(fd, sa, len),
            0,
            "bind: {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(libc::getsockname(fd, sa, &mut len), 0);
        // The descriptor is never closed: the port stays ours, and closed.
        u16::from_be(addr.sin_port)
    }
}

/// The addresses `serve --ready-file` reports.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct Bound {
    pub submission: Vec<SocketAddr>,
    pub submission_tls: Vec<SocketAddr>,
    pub tracking: Vec<SocketAddr>,
    pub tracking_tls: Vec<SocketAddr>,
    pub api: Vec<SocketAddr>,
    /// Absent from the file when `[inbound]` has no listener.
    #[serde(default)]
    pub inbound: Vec<SocketAddr>,
}

/// Waits for `serve --ready-file` to appear (it is written whole, by a
/// rename) and reads it; panics with the log if the process exits first.
pub fn wait_ready(child: &mut Child, ready_file: &Path, log_path: &Path) -> Bound {
    try_wait_ready(child, ready_file, log_path).unwrap_or_else(|e| panic!("{e}"))
}

/// Like `wait_ready`, but an exit before ready is an `Err` with the status
/// and the log.
pub fn try_wait_ready(
    child: &mut Child,
    ready_file: &Path,
    log_path: &Path,
) -> Result<Bound, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(text) = std::fs::read_to_string(ready_file) {
            return Ok(
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("ready file {text:?}: {e}"))
            );
        }
        let log = || std::fs::read_to_string(log_path).unwrap_or_default();
        if let Some(status) = child.try_wait().unwrap() {
            return Err(format!(
                "trackrelay exited ({status}) before it was ready:\n{}",
                log()
            ));
        }
        assert!(
            Instant::now() < deadline,
            "trackrelay not ready in 60s:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub struct Relay {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub smtp: SocketAddr,
    pub smtps: SocketAddr,
    pub tracking: SocketAddr,
    pub api: SocketAddr,
    /// The return-path MX (`[inbound]`), when configured.
    pub inbound: Option<SocketAddr>,
    /// Every address of the last start, as `serve` reported it.
    pub bound: Bound,
    child: Option<Child>,
    starts: u32,
    /// The relay's PostgreSQL database, when it runs on one.
    pub pg_url: Option<String>,
}

/// Config pieces a test can change; everything else is the harness default.
#[derive(Default)]
pub struct Options {
    /// Extra keys under [server] (e.g. node_id).
    pub server: String,
    /// Extra keys appended under [submission].
    pub submission: String,
    /// Whole extra sections appended at the end (e.g. [[webhooks]]).
    pub extra: String,
    /// Extra keys for the example.com [[domains]] entry.
    pub domain: String,
    /// Extra keys under [delivery].
    pub delivery: String,
    /// Extra keys under [tracking].
    pub tracking: String,
    /// Extra keys under [store].
    pub store: String,
    /// Extra keys for the example.org [[domains]] entry.
    pub domain_org: String,
    /// Give the admin API the token `API_TOKEN`.
    pub api_token: bool,
}

impl Relay {
    pub fn start(opts: Options) -> Relay {
        let dir = tempfile::tempdir().unwrap();
        let pg_url = (on_postgres() && !opts.store.contains("backend")).then(pg::url);
        let store = match &pg_url {
            Some(url) => format!("backend = \"postgres\"\nurl = \"{url}\"\n{}", opts.store),
            None => opts.store,
        };
        let config = format!(
            r#"
[server]
hostname = "relay.test"
data_dir = "./data"
shutdown_grace = "10s"
{server}

[submission]
listen = ["127.0.0.1:0"]
listen_tls = ["127.0.0.1:0"]
require_tls_for_auth = true
{submission}

[[submission.users]]
name = "{USER}"
password_hash = "{hash}"
domains = ["example.com"]

[tracking]
listen = ["127.0.0.1:0"]
scheme = "http"
{tracking}

[[domains]]
name = "example.com"
{domain}

[[domains]]
name = "example.org"
{domain_org}

[delivery]
{delivery}

[store]
{store}

[api]
listen = ["127.0.0.1:0"]
{api}

{extra}
"#,
            server = opts.server,
            hash = password_hash(),
            submission = opts.submission,
            tracking = opts.tracking,
            domain = opts.domain,
            // Without a route of the test's own, mail goes nowhere fast (a
            // closed loopback port) instead of to DNS.
            delivery = if opts.delivery.is_empty() {
                format!("routes = {{ \"example.net\" = \"127.0.0.1:{p}\", \"example.org\" = \"127.0.0.1:{p}\" }}", p = shared_closed_port())
            } else {
                opts.delivery
            },
            domain_org = opts.domain_org,
            api = if opts.api_token {
                format!("token_hash = \"{}\"", api_token_hash())
            } else {
                String::new()
            },
            extra = opts.extra,
        );
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config).unwrap();
        let mut relay = Relay {
            dir,
            config_path,
            // Filled in by `spawn` from what the relay reports.
            smtp: unbound(),
            smtps: unbound(),
            tracking: unbound(),
            api: unbound(),
            inbound: None,
            bound: Bound::default(),
            child: None,
            starts: 0,
            pg_url,
        };
        relay.spawn();
        relay
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("relay-{}.log", self.starts))
    }

    /// Where the next `spawn` will write its log.
    pub fn next_log_path(&self) -> PathBuf {
        self.dir
            .path()
            .join(format!("relay-{}.log", self.starts + 1))
    }

    pub fn log(&self) -> String {
        let mut all = String::new();
        for i in 1..=self.starts {
            let p = self.dir.path().join(format!("relay-{i}.log"));
            all.push_str(&std::fs::read_to_string(p).unwrap_or_default());
        }
        all
    }

    /// Starts the binary and waits until it says it is ready. The listeners
    /// bind port 0, so each start has new ports: the address fields are
    /// updated here.
    pub fn spawn(&mut self) {
        self.spawn_with(&[], &[]).unwrap_or_else(|e| panic!("{e}"));
    }

    /// `spawn` with extra `serve` arguments and environment; an exit before
    /// ready is an `Err` with the status and the log.
    pub fn spawn_with(&mut self, args: &[&str], envs: &[(&str, &str)]) -> Result<(), String> {
        assert!(self.child.is_none(), "already running");
        self.starts += 1;
        let log = std::fs::File::create(self.log_path()).unwrap();
        let ready_file = self.dir.path().join(format!("ready-{}.json", self.starts));
        let mut child = Command::new(env!("CARGO_BIN_EXE_trackrelay"))
            .arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .arg("--ready-file")
            .arg(&ready_file)
            .args(args)
            .env("TRACKRELAY_LOG", "info,trackrelay=debug")
            .envs(envs.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start trackrelay");
        let bound = try_wait_ready(&mut child, &ready_file, &self.log_path())?;
        self.child = Some(child);
        let first = |v: &[SocketAddr]| v.first().copied().unwrap_or_else(unbound);
        self.smtp = first(&bound.submission);
        self.smtps = first(&bound.submission_tls);
        self.tracking = first(&bound.tracking);
        self.api = first(&bound.api);
        self.inbound = bound.inbound.first().copied();
        self.bound = bound;
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits for the exit.
    pub fn stop(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("trackrelay did not exit within 30s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("data/trackrelay.sqlite3")
    }

    /// The status of the email's (single) recipient.
    pub fn recipient_status(&self, email_id: &str) -> String {
        self.db()
            .query_row(
                "SELECT status FROM recipients WHERE email_id = ?1",
                [email_id],
                |r| r.get(0),
            )
            .unwrap()
    }

    /// The email's delivery events after `email.sent`, oldest first, with
    /// their detail.
    pub fn delivery_events(&self, email_id: &str) -> Vec<(String, serde_json::Value)> {
        self.db()
            .prepare(
                "SELECT type, COALESCE(detail, 'null') FROM events
                 WHERE email_id = ?1 AND type != 'email.sent' ORDER BY id",
            )
            .unwrap()
            .query_map([email_id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })
            .unwrap()
            .map(|r| {
                let (t, d) = r.unwrap();
                (t, serde_json::from_str(&d).unwrap())
            })
            .collect()
    }

    /// A read-only connection on the relay's store. On PostgreSQL, on a
    /// SQLite snapshot of it taken now (`store copy` the other way), so
    /// the same assertions read what the PostgreSQL backend wrote.
    pub fn db(&self) -> rusqlite::Connection {
        if let Some(url) = &self.pg_url {
            return self.pg_snapshot(url);
        }
        let c = rusqlite::Connection::open_with_flags(
            self.db_path(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        c.busy_timeout(Duration::from_secs(10)).unwrap();
        c
    }

    fn pg_snapshot(&self, url: &str) -> rusqlite::Connection {
        static SNAPSHOTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SNAPSHOTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = self.dir.path().join(format!("snapshot-{n}.sqlite3"));
        let (url, p) = (url.to_string(), path.clone());
        // Its own thread: the copy runs a runtime of its own, and tests
        // call this from inside theirs.
        std::thread::spawn(move || {
            trackrelay::store::copy::postgres_to_sqlite(&url, None, &p, |_, _| {})
        })
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("snapshot of the PostgreSQL store: {e}"));
        let c = rusqlite::Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        // Unlinked at once: the open connection keeps reading it.
        let _ = std::fs::remove_file(&path);
        c
    }

    /// Runs one statement (literal values, no parameters) on the relay's
    /// store, whichever backend it is: a test's own fixture rows.
    pub fn execute(&self, sql: &str) {
        match &self.pg_url {
            Some(url) => {
                pg::query(url, sql);
            }
            None => {
                let c = rusqlite::Connection::open(self.db_path()).unwrap();
                c.busy_timeout(Duration::from_secs(10)).unwrap();
                c.execute_batch(sql).unwrap();
            }
        }
    }

    /// Runs a CLI subcommand against this relay's config.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_trackrelay"))
            .args(args)
            .arg("--config")
            .arg(&self.config_path)
            .output()
            .unwrap()
    }

    /// Runs a CLI subcommand with `input` on its stdin.
    pub fn cli_with_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = Command::new(env!("CARGO_BIN_EXE_trackrelay"))
            .args(args)
            .arg("--config")
            .arg(&self.config_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

/// Stands for a listener the config does not have: connecting to port 0
/// is refused.
fn unbound() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// One closed port for every relay of the test process (each `closed_port`
/// holds a descriptor for good).
fn shared_closed_port() -> u16 {
    static PORT: OnceLock<u16> = OnceLock::new();
    *PORT.get_or_init(closed_port)
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A plain SMTP conversation, line by line, to check exact replies.
pub struct RawSmtp {
    pub reader: BufReader<TcpStream>,
    pub stream: TcpStream,
}

impl RawSmtp {
    pub fn connect(addr: SocketAddr) -> RawSmtp {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        RawSmtp { reader, stream }
    }

    /// Reads one whole reply (all its lines); returns its last line.
    pub fn reply(&mut self) -> String {
        let mut last = String::new();
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).unwrap_or(0);
            if n == 0 {
                return if last.is_empty() { "EOF".into() } else { last };
            }
            let done = line.len() < 4 || line.as_bytes()[3] != b'-';
            last = line.trim_end().to_string();
            if done {
                return last;
            }
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    pub fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// True when the server has closed the connection.
    pub fn closed(&mut self) -> bool {
        let mut buf = [0u8; 1];
        matches!(self.reader.read(&mut buf), Ok(0) | Err(_))
    }
}

pub fn message(from: &str, to: &str, subject: &str, body: &str) -> Vec<u8> {
    format!(
        "From: Sender <{from}>\r\nTo: <{to}>\r\nSubject: {subject}\r\nMessage-ID: <{}@example.com>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n",
        uuid::Uuid::new_v4()
    )
    .into_bytes()
}

/// Submits over plain SMTP (the test relay trusts loopback when the test
/// says so); returns the email id of the `250 ... queued as`.
pub fn submit(relay: &Relay, from: &str, to: &[&str], data: &[u8]) -> String {
    let mut c = RawSmtp::connect(relay.smtp);
    c.reply();
    c.cmd("EHLO test.client");
    assert!(c.cmd(&format!("MAIL FROM:<{from}>")).starts_with("250"));
    for t in to {
        assert!(c.cmd(&format!("RCPT TO:<{t}>")).starts_with("250"));
    }
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(data);
    let r = c.cmd(".");
    c.cmd("QUIT");
    queued_id(&r).unwrap_or_else(|| panic!("not queued: {r}"))
}

/// A session for a load test's client, or None while the relay is down:
/// bounded connect and read times, greeting and EHLO done.
pub fn load_session(addr: SocketAddr) -> Option<RawSmtp> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    let reader = BufReader::new(stream.try_clone().ok()?);
    let mut c = RawSmtp { reader, stream };
    if !c.reply().starts_with("220") || !c.cmd("EHLO load.client").starts_with("250") {
        return None;
    }
    Some(c)
}

/// One message on an open session, the envelope pipelined; Some(email id)
/// on 250, None on any other reply or a broken session.
pub fn load_send(c: &mut RawSmtp, from: &str, to: &str, data: &[u8]) -> Option<String> {
    c.send(format!("MAIL FROM:<{from}>\r\nRCPT TO:<{to}>\r\nDATA\r\n").as_bytes());
    let (a, b, d) = (c.reply(), c.reply(), c.reply());
    if !(a.starts_with("250") && b.starts_with("250") && d.starts_with("354")) {
        return None;
    }
    c.send(data);
    c.send(b".\r\n");
    queued_id(&c.reply())
}

/// The email id out of `250 2.0.0 Ok: queued as <id>`.
pub fn queued_id(reply: &str) -> Option<String> {
    reply
        .split("queued as ")
        .nth(1)
        .map(|s| s.trim().to_string())
}

pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn path_exists(p: &Path) -> bool {
    p.exists()
}

/// One HTTP/1.1 request on a fresh connection: (status, headers with
/// lowercased names, body).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    http_with_body(addr, method, path, headers, b"")
}

/// [`http`] with a request body; `Content-Length` is sent whenever there
/// is a body or the method is POST.
pub fn http_with_body(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header block");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect();
    (status, headers, body)
}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}
