//! A counting SMTP sink for trackrelay's benchmarks (bench/relay.sh): accepts
//! every message, counts it, and saves the first few to a directory so a
//! script can check what a relay delivered (DKIM-Signature, tracked links).
//!
//!   cargo run --release --example smtp_sink -- --listen 127.0.0.1:2627 \
//!       [--save-dir DIR] [--save-max 5]
//!
//! Prints `mesg=N` lines on stdout (flushed, at most every 5 ms, only when
//! N changed): the same counter format as Postfix's `smtp-sink -c`, so
//! `smtp_load --sink-counter` can follow either. Advertises PIPELINING and
//! 8BITMIME (no STARTTLS, no CHUNKING). Saved files are the message as
//! received, with the dot-stuffing undone. Runs until killed.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

struct Opts {
    listen: String,
    save_dir: Option<std::path::PathBuf>,
    save_max: u64,
}

fn usage() -> ! {
    eprintln!("usage: smtp_sink --listen 127.0.0.1:PORT [--save-dir DIR] [--save-max 5]");
    std::process::exit(2)
}

async fn session(
    s: TcpStream,
    o: Arc<Opts>,
    count: Arc<AtomicU64>,
    saved: Arc<AtomicU64>,
) -> std::io::Result<()> {
    let _ = s.set_nodelay(true);
    let (r, mut w) = s.into_split();
    let mut r = BufReader::with_capacity(64 * 1024, r);
    w.write_all(b"220 sink.example ESMTP bench sink\r\n")
        .await?;
    let mut line = Vec::with_capacity(1024);
    let mut out = Vec::with_capacity(256);
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let verb = line
            .iter()
            .take_while(|c| c.is_ascii_alphabetic())
            .map(|c| c.to_ascii_uppercase())
            .collect::<Vec<u8>>();
        match verb.as_slice() {
            b"EHLO" => out.extend_from_slice(
                b"250-sink.example\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 104857600\r\n250 ENHANCEDSTATUSCODES\r\n",
            ),
            b"HELO" => out.extend_from_slice(b"250 sink.example\r\n"),
            b"MAIL" | b"RCPT" | b"RSET" | b"NOOP" => out.extend_from_slice(b"250 2.0.0 Ok\r\n"),
            b"QUIT" => {
                out.extend_from_slice(b"221 2.0.0 Bye\r\n");
                w.write_all(&out).await?;
                return Ok(());
            }
            b"DATA" => {
                out.extend_from_slice(b"354 End data with <CR><LF>.<CR><LF>\r\n");
                w.write_all(&out).await?;
                out.clear();
                let keep = o.save_dir.is_some() && saved.load(Ordering::Relaxed) < o.save_max;
                let mut msg = Vec::new();
                loop {
                    line.clear();
                    if r.read_until(b'\n', &mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == b".\r\n" || line == b".\n" {
                        break;
                    }
                    if keep {
                        let l = if line.starts_with(b"..") { &line[1..] } else { &line[..] };
                        msg.extend_from_slice(l);
                    }
                }
                let n = count.fetch_add(1, Ordering::Relaxed) + 1;
                if keep {
                    let i = saved.fetch_add(1, Ordering::Relaxed);
                    if i < o.save_max {
                        let p = o.save_dir.as_ref().unwrap().join(format!("msg-{:04}.eml", i + 1));
                        tokio::fs::write(p, &msg).await?;
                    }
                }
                out.extend_from_slice(format!("250 2.0.0 Ok: queued as sink{n}\r\n").as_bytes());
            }
            _ => out.extend_from_slice(b"502 5.5.2 Command not implemented\r\n"),
        }
        // Pipelining: answer once the client has nothing more buffered.
        if r.buffer().is_empty() {
            w.write_all(&out).await?;
            out.clear();
        }
    }
}

#[tokio::main]
async fn main() {
    let mut o = Opts {
        listen: String::new(),
        save_dir: None,
        save_max: 5,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--listen" => o.listen = val(),
            "--save-dir" => o.save_dir = Some(val().into()),
            "--save-max" => o.save_max = val().parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    if o.listen.is_empty() {
        usage()
    }
    if let Some(d) = &o.save_dir {
        std::fs::create_dir_all(d).expect("--save-dir");
    }
    let listener = TcpListener::bind(&o.listen).await.unwrap_or_else(|e| {
        eprintln!("cannot listen on {}: {e}", o.listen);
        std::process::exit(1)
    });
    let o = Arc::new(o);
    let count = Arc::new(AtomicU64::new(0));
    let saved = Arc::new(AtomicU64::new(0));
    {
        let count = count.clone();
        tokio::spawn(async move {
            let mut last = u64::MAX;
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            loop {
                tick.tick().await;
                let n = count.load(Ordering::Relaxed);
                if n != last {
                    let mut so = std::io::stdout().lock();
                    let _ = writeln!(so, "mesg={n}");
                    let _ = so.flush();
                    last = n;
                }
            }
        });
    }
    loop {
        let Ok((s, _)) = listener.accept().await else {
            continue;
        };
        let (o, c, sv) = (o.clone(), count.clone(), saved.clone());
        tokio::spawn(async move {
            let _ = session(s, o, c, sv).await;
        });
    }
}
