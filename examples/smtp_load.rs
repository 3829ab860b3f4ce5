//! SMTP load generator for trackrelay's benchmarks (bench/relay.sh).
//!
//!   cargo run --release --example smtp_load -- --addr 127.0.0.1:2587 \
//!       [--sessions 20] [--messages 5000] [--per-conn 1] [--size 50000] [--links 30]
//!       [--from news@example.com] [--to user@example.net] [--file msg.eml]
//!       [--starttls --user U --pass P] [--sink-counter FILE] [--timeout 600]
//!
//! S sessions share N messages; each connection sends `--per-conn` messages
//! (then QUIT and reconnect). Real SMTP, one command at a time: every reply
//! is awaited, and a message counts as accepted only when the reply to the
//! end of DATA is 250; anything else (or a dropped connection) is a failure.
//!
//! The message is generated (a ~50 KB newsletter: multipart/alternative,
//! text + quoted-printable HTML with `--links` links, From: `--from`,
//! a unique Message-ID each) or read from `--file` (LF or CRLF; sent as is,
//! dot-stuffed).
//!
//! `--sink-counter FILE`: a file a sink keeps rewriting or appending with
//! `mesg=N` counters (Postfix's `smtp-sink -c` stdout, or examples/smtp_sink.rs
//! `--counter`); the tool then also waits until the counter has grown by the
//! number of accepted messages and reports the end-to-end time.
//!
//! Prints one JSON line: accepted, failed, seconds, rate (accepted/seconds),
//! latency percentiles of the end-of-DATA reply, and e2e_seconds/e2e_rate
//! when --sink-counter is given. Exit 0 when every message was accepted
//! (and, with --sink-counter, has arrived), else 1.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

const IO_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Clone)]
struct Opts {
    addr: String,
    sessions: usize,
    messages: usize,
    per_conn: usize,
    size: usize,
    links: usize,
    from: String,
    to: String,
    file: Option<String>,
    starttls: bool,
    user: Option<String>,
    pass: Option<String>,
    helo: String,
    sink_counter: Option<String>,
    timeout: Duration,
}

fn usage() -> ! {
    eprintln!(
        "usage: smtp_load --addr HOST:PORT [--sessions 20] [--messages 5000] [--per-conn 1] \
         [--size 50000] [--links 30] [--from news@example.com] [--to user@example.net] \
         [--file MSG.eml] [--starttls] [--user U --pass P] [--helo NAME] \
         [--sink-counter FILE] [--timeout SECS]"
    );
    std::process::exit(2)
}

fn parse_args() -> Opts {
    let mut o = Opts {
        addr: String::new(),
        sessions: 20,
        messages: 5000,
        per_conn: 1,
        size: 50_000,
        links: 30,
        from: "news@example.com".into(),
        to: "user@example.net".into(),
        file: None,
        starttls: false,
        user: None,
        pass: None,
        helo: "load.example.com".into(),
        sink_counter: None,
        timeout: Duration::from_secs(600),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        let num = |s: String| s.parse::<usize>().unwrap_or_else(|_| usage());
        match a.as_str() {
            "--addr" => o.addr = val(),
            "--sessions" | "-s" => o.sessions = num(val()).max(1),
            "--messages" | "-m" => o.messages = num(val()),
            "--per-conn" => o.per_conn = num(val()).max(1),
            "--size" => o.size = num(val()),
            "--links" => o.links = num(val()),
            "--from" => o.from = val(),
            "--to" => o.to = val(),
            "--file" => o.file = Some(val()),
            "--starttls" => o.starttls = true,
            "--user" => o.user = Some(val()),
            "--pass" => o.pass = Some(val()),
            "--helo" => o.helo = val(),
            "--sink-counter" => o.sink_counter = Some(val()),
            "--timeout" => o.timeout = Duration::from_secs(num(val()) as u64),
            "-h" | "--help" => usage(),
            _ => {
                eprintln!("unknown argument {a}");
                usage()
            }
        }
    }
    if o.addr.is_empty() || o.user.is_some() != o.pass.is_some() {
        usage()
    }
    o
}

// ---------------------------------------------------------------- message

const WORDS: &[&str] = &[
    "spring",
    "collection",
    "offer",
    "members",
    "free",
    "shipping",
    "new",
    "arrivals",
    "this",
    "week",
    "our",
    "favourite",
    "picks",
    "for",
    "you",
    "discover",
    "the",
    "latest",
    "styles",
    "and",
    "save",
    "on",
    "everything",
    "you",
    "love",
    "limited",
    "time",
    "only",
    "read",
    "more",
    "about",
    "how",
    "we",
    "make",
    "them",
    "sustainably",
    "in",
    "small",
    "batches",
    "with",
];

fn sentence(seed: &mut u64, n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let w = WORDS[(*seed >> 33) as usize % WORDS.len()];
        if i > 0 {
            s.push(' ');
        }
        s.push_str(w);
    }
    s.push('.');
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => s,
    }
}

/// The body (after the per-message headers): multipart/alternative with a
/// text part and a quoted-printable HTML newsletter of about `size` bytes
/// in all (with the per-message headers), with `links` distinct http(s) links.
fn generated_body(size: usize, links: usize) -> String {
    // Two passes: the text part and the QP overhead are only known afterwards.
    let first = generated_body_with(size * 7 / 10, links);
    let html_target = (size * 7 / 10) as f64 + (size as f64 - first.len() as f64 - 200.0) / 1.06;
    generated_body_with(html_target.max(0.0) as usize, links)
}

fn generated_body_with(html_target: usize, links: usize) -> String {
    let mut seed = 42u64;
    let mut html = String::from(
        "<!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0 Transitional//EN\" \
         \"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd\">\n\
         <html xmlns=\"http://www.w3.org/1999/xhtml\"><head>\
         <meta http-equiv=\"Content-Type\" content=\"text/html; charset=UTF-8\" />\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1.0\" />\
         <title>Spring newsletter</title>\n<style type=\"text/css\">\
         body{margin:0;padding:0;background:#f4f4f4;font-family:Helvetica,Arial,sans-serif;}\
         .btn{display:inline-block;padding:12px 24px;background:#0a66c2;color:#ffffff;\
         text-decoration:none;border-radius:4px;} td{font-size:15px;line-height:22px;color:#333333;}\
         </style></head>\n<body>\n<table role=\"presentation\" width=\"100%\" cellpadding=\"0\" \
         cellspacing=\"0\" border=\"0\" style=\"background:#f4f4f4;\">\n",
    );
    let mut text = String::from("Spring newsletter\n=================\n\n");
    let links = links.max(1);
    let per_block = (html_target / links).max(200);
    for i in 0..links {
        let url = match i % 5 {
            0 => format!("https://shop.example.org/products/item-{i}?utm_source=newsletter&amp;utm_medium=email&amp;utm_campaign=spring&amp;ref={i}"),
            1 => format!("https://www.example.org/blog/2026/spring-story-{i}#read"),
            2 => format!("https://cdn.example.org/l/{i}?id=a1b2c3&amp;lang=en"),
            3 => format!("http://example.org/offers/{i}/details?color=blue&amp;size=m"),
            _ => format!("https://help.example.org/articles/{i}"),
        };
        let start = html.len();
        html.push_str(&format!(
            "<tr><td style=\"padding:20px 30px;\"><h2 style=\"margin:0 0 10px;font-size:20px;\">{}</h2>\n",
            sentence(&mut seed, 5)
        ));
        while html.len() - start < per_block.saturating_sub(260) {
            html.push_str(&format!(
                "<p style=\"margin:0 0 12px;\">{}</p>\n",
                sentence(&mut seed, 14)
            ));
        }
        html.push_str(&format!(
            "<a class=\"btn\" href=\"{url}\" target=\"_blank\" style=\"color:#ffffff;\">Shop item {i}</a>\n</td></tr>\n"
        ));
        text.push_str(&format!(
            "{}\n{}\n{}\n\n",
            sentence(&mut seed, 5),
            sentence(&mut seed, 20),
            url.replace("&amp;", "&")
        ));
    }
    html.push_str(
        "<tr><td style=\"padding:20px;font-size:12px;color:#888888;\">You receive this because you \
         subscribed. <a href=\"mailto:unsubscribe@example.com\">Unsubscribe</a> \
         &middot; <a href=\"#top\">Back to top</a></td></tr>\n</table>\n</body>\n</html>\n",
    );
    let html_qp = quoted_printable::encode_to_str(html.replace('\n', "\r\n").as_bytes());
    let text_qp = quoted_printable::encode_to_str(text.replace('\n', "\r\n").as_bytes());
    let b = "=_bench_boundary_7f3a9c";
    let mut body = String::new();
    body.push_str(&format!(
        "MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"{b}\"\r\n\r\n\
         This is a multi-part message in MIME format.\r\n\r\n--{b}\r\n\
         Content-Type: text/plain; charset=UTF-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    ));
    body.push_str(&text_qp);
    body.push_str(&format!(
        "\r\n--{b}\r\nContent-Type: text/html; charset=UTF-8\r\n\
         Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    ));
    body.push_str(&html_qp);
    body.push_str(&format!("\r\n--{b}--\r\n"));
    body
}

/// LF or CRLF in, CRLF out, dot-stuffed, ending with CRLF.
fn to_wire(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 40);
    let mut at_line_start = true;
    let mut prev = 0u8;
    for &c in raw {
        if c == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        if at_line_start && c == b'.' {
            out.push(b'.');
        }
        out.push(c);
        at_line_start = c == b'\n';
        prev = c;
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

enum Source {
    File(Vec<u8>),
    Generated { body: Vec<u8> },
}

impl Source {
    fn message(&self, o: &Opts, n: usize) -> Vec<u8> {
        match self {
            Source::File(bytes) => bytes.clone(),
            Source::Generated { body } => {
                let mut m = format!(
                    "From: Example News <{}>\r\nTo: <{}>\r\nSubject: Spring newsletter #{n}\r\n\
                     Date: Sat, 21 Nov 2026 10:00:00 +0000\r\n\
                     Message-ID: <bench-{n}-{}@example.com>\r\n",
                    o.from,
                    o.to,
                    std::process::id()
                )
                .into_bytes();
                m.extend_from_slice(body);
                m
            }
        }
    }
}

// ---------------------------------------------------------------- SMTP

struct Conn {
    io: BufReader<Box<dyn Io>>,
}

impl Conn {
    /// Reads one (possibly multi-line) reply; returns its code and text.
    async fn reply(&mut self) -> Result<(u16, String), String> {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(IO_TIMEOUT, self.io.read_line(&mut line))
                .await
                .map_err(|_| "timeout waiting for a reply".to_string())?
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("connection closed".into());
            }
            all.push_str(&line);
            if line.len() < 4 {
                return Err(format!("bad reply line {line:?}"));
            }
            let code: u16 = line[..3]
                .parse()
                .map_err(|_| format!("bad reply {line:?}"))?;
            if line.as_bytes()[3] != b'-' {
                return Ok((code, all.trim_end().to_string()));
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        let w = self.io.get_mut();
        tokio::time::timeout(IO_TIMEOUT, async {
            w.write_all(bytes).await?;
            w.flush().await
        })
        .await
        .map_err(|_| "timeout writing".to_string())?
        .map_err(|e| format!("write: {e}"))
    }

    async fn cmd(&mut self, line: &str, want: u16) -> Result<String, String> {
        self.send(format!("{line}\r\n").as_bytes()).await?;
        let (code, text) = self.reply().await?;
        if code != want {
            return Err(format!(
                "{}: {text}",
                line.split(' ').next().unwrap_or(line)
            ));
        }
        Ok(text)
    }
}

#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_connector() -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// Connects and gets the session ready for MAIL FROM (EHLO, STARTTLS, AUTH).
async fn open(o: &Opts, tls: &Option<tokio_rustls::TlsConnector>) -> Result<Conn, String> {
    let tcp = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(&o.addr))
        .await
        .map_err(|_| "connect timeout".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let mut c = Conn {
        io: BufReader::new(Box::new(tcp) as Box<dyn Io>),
    };
    let (code, text) = c.reply().await?;
    if code != 220 {
        return Err(format!("banner: {text}"));
    }
    c.cmd(&format!("EHLO {}", o.helo), 250).await?;
    if let Some(connector) = tls {
        c.cmd("STARTTLS", 220).await?;
        let host = o
            .addr
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or("localhost");
        let name =
            rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_string())
                .map_err(|e| format!("server name: {e}"))?;
        let raw = c.io.into_inner();
        let tls = tokio::time::timeout(IO_TIMEOUT, connector.connect(name, raw))
            .await
            .map_err(|_| "TLS handshake timeout".to_string())?
            .map_err(|e| format!("TLS handshake: {e}"))?;
        c = Conn {
            io: BufReader::new(Box::new(tls) as Box<dyn Io>),
        };
        c.cmd(&format!("EHLO {}", o.helo), 250).await?;
    }
    if let (Some(u), Some(p)) = (&o.user, &o.pass) {
        use base64::Engine;
        let cred = base64::engine::general_purpose::STANDARD.encode(format!("\0{u}\0{p}"));
        c.cmd(&format!("AUTH PLAIN {cred}"), 235).await?;
    }
    Ok(c)
}

/// One message on an open session: Ok(true) accepted, Ok(false) refused
/// (session still usable), Err: the session is broken.
async fn transaction(c: &mut Conn, o: &Opts, data: &[u8]) -> Result<Result<(), String>, String> {
    let (code, text) = {
        c.send(format!("MAIL FROM:<{}>\r\n", o.from).as_bytes())
            .await?;
        c.reply().await?
    };
    if code != 250 {
        c.cmd("RSET", 250).await?;
        return Ok(Err(format!("MAIL: {text}")));
    }
    c.send(format!("RCPT TO:<{}>\r\n", o.to).as_bytes()).await?;
    let (code, text) = c.reply().await?;
    if code != 250 && code != 251 {
        c.cmd("RSET", 250).await?;
        return Ok(Err(format!("RCPT: {text}")));
    }
    c.send(b"DATA\r\n").await?;
    let (code, text) = c.reply().await?;
    if code != 354 {
        c.cmd("RSET", 250).await?;
        return Ok(Err(format!("DATA: {text}")));
    }
    let mut buf = Vec::with_capacity(data.len() + 3);
    buf.extend_from_slice(data);
    buf.extend_from_slice(b".\r\n");
    c.send(&buf).await?;
    let (code, text) = c.reply().await?;
    if code != 250 {
        return Ok(Err(format!("end of DATA: {text}")));
    }
    Ok(Ok(()))
}

struct Shared {
    next: AtomicUsize,
    accepted: AtomicU64,
    failed: AtomicU64,
    latencies_us: Mutex<Vec<u64>>,
    errors: Mutex<Vec<String>>,
}

impl Shared {
    fn claim(&self, total: usize) -> Option<usize> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        (n < total).then_some(n)
    }
    fn fail(&self, why: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut e = self.errors.lock().unwrap();
        if e.len() < 5 {
            e.push(why);
        }
    }
}

async fn session(
    o: Arc<Opts>,
    src: Arc<Source>,
    sh: Arc<Shared>,
    tls: Option<tokio_rustls::TlsConnector>,
) {
    let mut connect_failures = 0u32;
    loop {
        let first = match sh.claim(o.messages) {
            Some(n) => n,
            None => return,
        };
        let mut c = match open(&o, &tls).await {
            Ok(c) => {
                connect_failures = 0;
                c
            }
            Err(e) => {
                sh.fail(format!("session setup: {e}"));
                connect_failures += 1;
                if connect_failures >= 5 {
                    // The server is gone: give up this session's share.
                    while sh.claim(o.messages).is_some() {
                        sh.fail("not sent: server unreachable".into());
                    }
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut n = first;
        let mut sent = 0;
        let mut broken = false;
        loop {
            let data = src.message(&o, n);
            let t = Instant::now();
            match transaction(&mut c, &o, &data).await {
                Ok(Ok(())) => {
                    sh.accepted.fetch_add(1, Ordering::Relaxed);
                    sh.latencies_us
                        .lock()
                        .unwrap()
                        .push(t.elapsed().as_micros() as u64);
                }
                Ok(Err(why)) => sh.fail(why),
                Err(e) => {
                    sh.fail(format!("session broke: {e}"));
                    broken = true;
                    break;
                }
            }
            sent += 1;
            if sent >= o.per_conn {
                break;
            }
            match sh.claim(o.messages) {
                Some(next) => n = next,
                None => break,
            }
        }
        if !broken {
            let _ = c.cmd("QUIT", 221).await;
        }
        if sent >= o.per_conn {
            continue;
        }
        if !broken {
            return;
        }
    }
}

/// The last `mesg=N` in the file's tail (or a bare number), 0 when absent.
fn sink_count(path: &str) -> u64 {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return 0;
    };
    let len = f.seek(SeekFrom::End(0)).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(512)));
    let mut tail = Vec::new();
    let _ = f.read_to_end(&mut tail);
    let tail = String::from_utf8_lossy(&tail);
    if let Some(pos) = tail.rfind("mesg=") {
        let digits: String = tail[pos + 5..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        return digits.parse().unwrap_or(0);
    }
    tail.trim()
        .rsplit(|c: char| c.is_whitespace())
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

#[tokio::main]
async fn main() {
    let o = Arc::new(parse_args());
    let src = Arc::new(match &o.file {
        Some(p) => Source::File(to_wire(&std::fs::read(p).unwrap_or_else(|e| {
            eprintln!("{p}: {e}");
            std::process::exit(2)
        }))),
        None => Source::Generated {
            body: to_wire(generated_body(o.size, o.links).as_bytes()),
        },
    });
    let msg_bytes = src.message(&o, 0).len();
    let tls = o.starttls.then(tls_connector);
    let sh = Arc::new(Shared {
        next: AtomicUsize::new(0),
        accepted: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        latencies_us: Mutex::new(Vec::with_capacity(o.messages)),
        errors: Mutex::new(Vec::new()),
    });
    let sink_base = o.sink_counter.as_deref().map(sink_count).unwrap_or(0);

    let t0 = Instant::now();
    let deadline = t0 + o.timeout;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..o.sessions.min(o.messages.max(1)) {
        tasks.spawn(session(o.clone(), src.clone(), sh.clone(), tls.clone()));
    }
    let finished = tokio::time::timeout_at(deadline.into(), async {
        while tasks.join_next().await.is_some() {}
    })
    .await
    .is_ok();
    let seconds = t0.elapsed().as_secs_f64();
    tasks.abort_all();
    let accepted = sh.accepted.load(Ordering::Relaxed);
    let mut failed = sh.failed.load(Ordering::Relaxed);
    if !finished {
        // In flight or never sent: not accepted either.
        failed = (o.messages as u64).saturating_sub(accepted);
        sh.errors
            .lock()
            .unwrap()
            .push(format!("timeout after {}s", o.timeout.as_secs()));
    }

    // End to end: until the sink has counted every accepted message.
    let mut e2e: Option<f64> = None;
    let mut sink_got = None;
    if let Some(path) = &o.sink_counter {
        loop {
            let got = sink_count(path).saturating_sub(sink_base);
            sink_got = Some(got);
            if got >= accepted {
                e2e = Some(t0.elapsed().as_secs_f64());
                break;
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    let mut lat = std::mem::take(&mut *sh.latencies_us.lock().unwrap());
    lat.sort_unstable();
    let errors = sh.errors.lock().unwrap().clone();
    let mut out = serde_json::json!({
        "accepted": accepted,
        "failed": failed,
        "seconds": (seconds * 1000.0).round() / 1000.0,
        "rate": ((accepted as f64 / seconds) * 10.0).round() / 10.0,
        "sessions": o.sessions,
        "per_conn": o.per_conn,
        "msg_bytes": msg_bytes,
        "data_reply_ms_p50": percentile(&lat, 0.5),
        "data_reply_ms_p99": percentile(&lat, 0.99),
    });
    if o.sink_counter.is_some() {
        out["sink_counted"] = serde_json::json!(sink_got);
        out["e2e_seconds"] = serde_json::json!(e2e.map(|s| (s * 1000.0).round() / 1000.0));
        out["e2e_rate"] =
            serde_json::json!(e2e.map(|s| ((accepted as f64 / s) * 10.0).round() / 10.0));
    }
    if !errors.is_empty() {
        out["errors"] = serde_json::json!(errors);
    }
    println!("{out}");
    let ok =
        failed == 0 && accepted == o.messages as u64 && (o.sink_counter.is_none() || e2e.is_some());
    std::process::exit(if ok { 0 } else { 1 });
}
