//! Connection load for bench/memory.sh: many idle SMTP sessions, or many
//! AUTH attempts at once from several loopback addresses.
//!
//!   cargo run --release --example conn_load -- idle --addr 127.0.0.1:2587 \
//!       [--count 1000] [--hold 120]
//!   cargo run --release --example conn_load -- auth --addr 127.0.0.1:2587 \
//!       [--count 150] [--sources 50] [--first 127.0.0.2] [--user app] [--pass wrong] \
//!       [--distinct-users] [--timeout 300]
//!
//! `idle`: opens `--count` sessions (banner, EHLO), prints one JSON line
//! `{"open": N, "failed": F}` once all are up, then holds them for at most
//! `--hold` seconds (or until killed).
//!
//! `auth`: opens `--count` sessions, the i-th bound to the address
//! `--first` + (i mod `--sources`); once all have said EHLO they all send
//! `AUTH PLAIN` at once; prints `{"replies": {"535": N, "454": M, ...},
//! "failed": F, "seconds": S}`. `--distinct-users` gives each connection
//! its own user name (`--user` + i), so a per-user limit does not cut the
//! work short: every attempt costs an argon2 check.
//!
//! Bounded: every connection and reply has a timeout; nothing loops.

use base64::Engine;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Barrier;

struct Opts {
    mode: String,
    addr: SocketAddr,
    count: usize,
    hold: u64,
    sources: u32,
    first: Ipv4Addr,
    user: String,
    pass: String,
    distinct_users: bool,
    timeout: Duration,
}

fn usage() -> ! {
    eprintln!(
        "usage: conn_load idle|auth --addr HOST:PORT [--count N] [--hold SECS] \
         [--sources 50] [--first 127.0.0.2] [--user U] [--pass P] [--distinct-users] [--timeout SECS]"
    );
    std::process::exit(2)
}

fn parse_args() -> Opts {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| usage());
    let mut o = Opts {
        addr: "127.0.0.1:0".parse().unwrap(),
        count: if mode == "auth" { 150 } else { 1000 },
        hold: 120,
        sources: 50,
        first: Ipv4Addr::new(127, 0, 0, 2),
        user: "app".into(),
        pass: "wrong".into(),
        distinct_users: false,
        timeout: Duration::from_secs(300),
        mode,
    };
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--addr" => o.addr = val().parse().unwrap_or_else(|_| usage()),
            "--count" => o.count = val().parse().unwrap_or_else(|_| usage()),
            "--hold" => o.hold = val().parse().unwrap_or_else(|_| usage()),
            "--sources" => o.sources = val().parse::<u32>().unwrap_or_else(|_| usage()).max(1),
            "--first" => o.first = val().parse().unwrap_or_else(|_| usage()),
            "--user" => o.user = val(),
            "--pass" => o.pass = val(),
            "--distinct-users" => o.distinct_users = true,
            "--timeout" => {
                o.timeout = Duration::from_secs(val().parse().unwrap_or_else(|_| usage()))
            }
            _ => usage(),
        }
    }
    if o.addr.port() == 0 || !matches!(o.mode.as_str(), "idle" | "auth") {
        usage()
    }
    o
}

type Conn = BufReader<TcpStream>;

async fn connect(local: Option<IpAddr>, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = local {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    socket.connect(addr).await
}

/// Reads one whole reply; returns its code.
async fn reply(c: &mut Conn) -> std::io::Result<String> {
    loop {
        let mut line = String::new();
        if c.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            return Ok(line.get(..3).unwrap_or("???").to_string());
        }
    }
}

async fn open(local: Option<IpAddr>, addr: SocketAddr) -> std::io::Result<Conn> {
    let mut c = BufReader::new(connect(local, addr).await?);
    reply(&mut c).await?;
    c.get_mut().write_all(b"EHLO load.example.com\r\n").await?;
    let code = reply(&mut c).await?;
    if code != "250" {
        return Err(std::io::Error::other(format!("EHLO answered {code}")));
    }
    Ok(c)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let o = Arc::new(parse_args());
    let started = Instant::now();
    let mut tasks = Vec::new();
    let barrier = Arc::new(Barrier::new(o.count + 1));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<bool>(o.count.max(1));
    // Connects in small waves: a burst beyond the server's listen backlog
    // leaves clients that think they are connected and never hear a banner.
    let connecting = Arc::new(tokio::sync::Semaphore::new(64));
    for i in 0..o.count {
        let (o, barrier, ready) = (o.clone(), barrier.clone(), ready_tx.clone());
        let connecting = connecting.clone();
        tasks.push(tokio::spawn(async move {
            let local = (o.mode == "auth")
                .then(|| IpAddr::V4((u32::from(o.first) + i as u32 % o.sources).into()));
            let wave = connecting.acquire().await;
            let conn = tokio::time::timeout(o.timeout, open(local, o.addr)).await;
            drop(wave);
            let mut conn = match conn {
                Ok(Ok(c)) => Some(c),
                _ => None,
            };
            let _ = ready.send(conn.is_some()).await;
            barrier.wait().await;
            if o.mode == "idle" {
                tokio::time::sleep(Duration::from_secs(o.hold)).await;
                return None;
            }
            let c = conn.as_mut()?;
            let user = if o.distinct_users {
                format!("{}{i}", o.user)
            } else {
                o.user.clone()
            };
            let b64 =
                base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{}", o.pass));
            let line = format!("AUTH PLAIN {b64}\r\n");
            let answered = tokio::time::timeout(o.timeout, async {
                c.get_mut().write_all(line.as_bytes()).await?;
                reply(c).await
            })
            .await;
            match answered {
                Ok(Ok(code)) => Some(code),
                _ => None,
            }
        }));
    }
    drop(ready_tx);
    let (mut open_n, mut failed) = (0, 0);
    for _ in 0..o.count {
        let Some(ok) = ready_rx.recv().await else {
            break;
        };
        if ok {
            open_n += 1
        } else {
            failed += 1
        }
    }
    if o.mode == "idle" {
        println!("{{\"open\": {open_n}, \"failed\": {failed}}}");
    }
    barrier.wait().await;
    let mut replies: BTreeMap<String, usize> = BTreeMap::new();
    let mut lost = 0;
    for t in tasks {
        match t.await {
            Ok(Some(code)) => *replies.entry(code).or_default() += 1,
            _ => lost += 1,
        }
    }
    if o.mode == "auth" {
        println!(
            "{{\"replies\": {}, \"failed\": {lost}, \"seconds\": {:.1}}}",
            serde_json::to_string(&replies).unwrap(),
            started.elapsed().as_secs_f64()
        );
    }
}
